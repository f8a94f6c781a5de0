// Package vproc owns cluster process identities and the cluster process
// table's record types: how a cluster PID (CPID) is built, allocated, parsed
// and printed, and how a `ps` listing of the whole cluster looks. It is pure
// logic: no I/O, no clocks (callers pass the time), no knowledge of how
// processes are started or found.
//
// # Cluster PIDs
//
// A CPID is a positive integer that names one process on every node, and
// keeps naming it after it migrates. It is built from the number of the node
// that created the process and a sequence number private to that node:
//
//	CPID = node * 1,000,000 + seq        seq in 1..999,999
//
// so 3000042 is the 42nd process node 3 started: the creating node is
// visible at a glance and the number stays short enough to type after
// `kill`. Two nodes never issue the same CPID because the node number is part
// of it. Like kernel PIDs, a node's sequence wraps after 999,999 and skips
// CPIDs that are still in use (Allocator.Next takes an in-use test); the
// daemon persists the last sequence so a restarted node continues where it
// stopped instead of reissuing recent CPIDs. The CPID does not change when
// the process migrates: the node in it is where the process was created, not
// where it runs (Proc.Node says that).
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
	SeqSpan = 1_000_000   // CPID = node*SeqSpan + seq
	MaxNode = 1<<20 - 1   // highest node number a CPID can carry
	MaxSeq  = SeqSpan - 1 // highest per-node sequence number
)

// ErrInvalidCPID is returned (wrapped) for malformed or out-of-range CPIDs.
var ErrInvalidCPID = errors.New("invalid cluster PID")

// ErrExhausted is returned by Allocator.Next when every sequence number of a
// node is in use.
var ErrExhausted = errors.New("cluster PID sequence exhausted")

// Make builds the CPID of sequence seq created on node.
func Make(node int, seq uint64) (CPID, error) {
	if node < 1 || node > MaxNode {
		return 0, fmt.Errorf("%w: node %d is outside 1..%d", ErrInvalidCPID, node, MaxNode)
	}
	if seq < 1 || seq > MaxSeq {
		return 0, fmt.Errorf("%w: sequence %d is outside 1..%d", ErrInvalidCPID, seq, uint64(MaxSeq))
	}
	return CPID(int64(node)*SeqSpan + int64(seq)), nil
}

// Split returns the creating node and the sequence of c. For a CPID that is
// not Valid the result is meaningless but Split never panics.
func Split(c CPID) (node int, seq uint64) {
	if c <= 0 {
		return 0, 0
	}
	return int(int64(c) / SeqSpan), uint64(int64(c) % SeqSpan)
}

// Valid reports whether c could have been issued by an Allocator.
func (c CPID) Valid() bool {
	node, seq := Split(c)
	return c > 0 && node >= 1 && node <= MaxNode && seq >= 1
}

// Node returns the number of the node that created the process.
func (c CPID) Node() int {
	n, _ := Split(c)
	return n
}

// String returns the decimal form, or "-" for the zero CPID (no process)
// and "invalid(N)" for other invalid values.
func (c CPID) String() string {
	if c == 0 {
		return "-"
	}
	if !c.Valid() {
		return "invalid(" + strconv.FormatInt(int64(c), 10) + ")"
	}
	return strconv.FormatInt(int64(c), 10)
}

// ParseCPID parses the decimal form of a CPID.
func ParseCPID(s string) (CPID, error) {
	t := strings.TrimSpace(s)
	bad := func(why string) (CPID, error) {
		return 0, fmt.Errorf("%w: %q %s (a cluster PID looks like 3000042: node 3, its 42nd process)", ErrInvalidCPID, s, why)
	}
	if t == "" {
		return bad("is empty")
	}
	if !digits(t) {
		return bad("is not a number")
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || !CPID(n).Valid() {
		return bad("is not a valid cluster PID")
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
// The daemon persists the sequence so that a restarted node does not reissue
// recent CPIDs: it reserves ahead (stores Last()+N, issues up to N CPIDs,
// stores again) and, after a restart, passes the stored reservation as last.
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

// Next issues a new CPID, wrapping after MaxSeq and skipping CPIDs for which
// inUse (may be nil) reports true.
func (a *Allocator) Next(inUse func(CPID) bool) (CPID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for range MaxSeq {
		a.last++
		if a.last > MaxSeq {
			a.last = 1
		}
		c, err := Make(a.node, a.last)
		if err != nil {
			return 0, err
		}
		if inUse == nil || !inUse(c) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("%w: node %d has all %d cluster PIDs in use", ErrExhausted, a.node, uint64(MaxSeq))
}

// Last returns the last sequence number issued (the value to persist).
func (a *Allocator) Last() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// Node returns the number of the node the allocator issues CPIDs for.
func (a *Allocator) Node() int { return a.node }
