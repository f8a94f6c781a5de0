// Package vproc owns cluster process identities and the cluster process
// table's record types: how a cluster PID (CPID) is built, allocated, parsed
// and printed, and how a `ps` listing of the whole cluster looks. It is pure
// logic: no I/O, no clocks (callers pass the time), no knowledge of how
// processes are started or found.
//
// # Cluster PIDs
//
// A CPID is a positive int64 that names one process for its whole life, on
// every node, including after it migrates. It is built from the number of the
// node that created the process and a sequence number private to that node:
//
//	bit 63      always 0 (CPIDs are positive)
//	bits 62..47 node number, 1..65535 (NodeBits = 16)
//	bits 46..0  sequence,    1..2^47-1 (SeqBits = 47)
//
// Two nodes never issue the same CPID because the node number is part of it,
// and one node never issues the same sequence twice because the daemon
// persists the last sequence it issued (see Allocator). 2^47 is about 1.4e14:
// a node starting 10,000 processes a second runs out after 445 years. The
// CPID does not change when the process migrates: the node in it is where the
// process was created, not where it runs (Proc.Node says that).
//
// CPIDs are written "NODE.SEQ" (e.g. "3.1042"): short enough to type after
// `kill`, and the creating node is visible at a glance. ParseCPID also accepts
// the plain decimal int64 form, which is what APIs and JSON carry.
package vproc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// CPID is a cluster-wide process identifier; see the package comment.
type CPID int64

// Layout of a CPID.
const (
	NodeBits = 16
	SeqBits  = 47
	MaxNode  = 1<<NodeBits - 1 // highest node number a CPID can carry
	MaxSeq   = 1<<SeqBits - 1  // highest per-node sequence number
)

// ErrInvalidCPID is returned (wrapped) for malformed or out-of-range CPIDs.
var ErrInvalidCPID = errors.New("invalid cluster PID")

// ErrExhausted is returned by Allocator.Next when a node has issued its last
// sequence number.
var ErrExhausted = errors.New("cluster PID sequence exhausted")

// Make builds the CPID of sequence seq created on node.
func Make(node int, seq uint64) (CPID, error) {
	if node < 1 || node > MaxNode {
		return 0, fmt.Errorf("%w: node %d is outside 1..%d", ErrInvalidCPID, node, MaxNode)
	}
	if seq < 1 || seq > MaxSeq {
		return 0, fmt.Errorf("%w: sequence %d is outside 1..%d", ErrInvalidCPID, seq, uint64(MaxSeq))
	}
	return CPID(int64(node)<<SeqBits | int64(seq)), nil
}

// Split returns the creating node and the sequence of c. For a CPID that is
// not Valid the result is meaningless but Split never panics.
func Split(c CPID) (node int, seq uint64) {
	u := uint64(c)
	return int(u >> SeqBits & MaxNode), u & MaxSeq
}

// Valid reports whether c could have been issued by an Allocator.
func (c CPID) Valid() bool {
	node, seq := Split(c)
	return c > 0 && node >= 1 && seq >= 1
}

// Node returns the number of the node that created the process.
func (c CPID) Node() int {
	n, _ := Split(c)
	return n
}

// String returns the "NODE.SEQ" form, or "-" for the zero CPID (no process)
// and "invalid(N)" for other invalid values.
func (c CPID) String() string {
	if c == 0 {
		return "-"
	}
	if !c.Valid() {
		return "invalid(" + strconv.FormatInt(int64(c), 10) + ")"
	}
	node, seq := Split(c)
	return strconv.Itoa(node) + "." + strconv.FormatUint(seq, 10)
}

// ParseCPID parses "NODE.SEQ" or the decimal int64 form of a CPID.
func ParseCPID(s string) (CPID, error) {
	t := strings.TrimSpace(s)
	bad := func(why string) (CPID, error) {
		return 0, fmt.Errorf("%w: %q %s (expected NODE.SEQ, e.g. 3.1042)", ErrInvalidCPID, s, why)
	}
	if t == "" {
		return bad("is empty")
	}
	if ns, ss, dotted := strings.Cut(t, "."); dotted {
		if !digits(ns) || !digits(ss) {
			return bad("is not two numbers separated by a dot")
		}
		node, err := strconv.ParseUint(ns, 10, 64)
		if err != nil || node < 1 || node > MaxNode {
			return bad(fmt.Sprintf("has a node number outside 1..%d", MaxNode))
		}
		seq, err := strconv.ParseUint(ss, 10, 64)
		if err != nil || seq < 1 || seq > MaxSeq {
			return bad("has a sequence number out of range")
		}
		return Make(int(node), seq)
	}
	if !digits(t) {
		return bad("is not a number")
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || !CPID(n).Valid() {
		return bad("is not a valid cluster PID number")
	}
	return CPID(n), nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Allocator issues the CPIDs of one node. It is safe for concurrent use.
//
// The daemon persists the sequence so that a restarted node never reissues a
// CPID: it either stores Last() durably before handing out each CPID, or
// reserves ahead (stores Last()+N, issues up to N CPIDs, stores again) and,
// after a restart, passes the stored reservation as last. Reserving ahead only
// skips numbers, which is harmless; reusing one is not.
type Allocator struct {
	mu   sync.Mutex
	node int
	last uint64
}

// NewAllocator returns an allocator for node that continues after sequence
// last (0 for a node that never issued a CPID).
func NewAllocator(node int, last uint64) (*Allocator, error) {
	if node < 1 || node > MaxNode {
		return nil, fmt.Errorf("%w: node %d is outside 1..%d", ErrInvalidCPID, node, MaxNode)
	}
	if last > MaxSeq {
		return nil, fmt.Errorf("%w: last sequence %d is beyond %d (corrupt state?)", ErrInvalidCPID, last, uint64(MaxSeq))
	}
	return &Allocator{node: node, last: last}, nil
}

// Next issues a new CPID.
func (a *Allocator) Next() (CPID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last >= MaxSeq {
		return 0, fmt.Errorf("%w: node %d has issued all %d sequence numbers", ErrExhausted, a.node, uint64(MaxSeq))
	}
	a.last++
	return Make(a.node, a.last)
}

// Last returns the last sequence number issued (the value to persist).
func (a *Allocator) Last() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// Node returns the node number the allocator issues CPIDs for.
func (a *Allocator) Node() int { return a.node }
