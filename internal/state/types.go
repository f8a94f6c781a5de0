// Package state owns the cluster's replicated state: the node table (the
// clustertab), the cluster configuration and the log of membership
// transitions. It is a Raft finite-state machine: typed commands are
// validated and applied deterministically (same log, same state on every
// node), and the whole state can be snapshotted and restored. It does no
// network I/O and reads no clock: every time it records comes in a command.
package state

import (
	"errors"
	"fmt"
	"time"

	"github.com/ssi-cluster/ssi/internal/version"
)

// NodeState is a node's membership state, as in OpenSSI's CLMS.
type NodeState string

// Membership states. A node is registered NEVERUP, becomes COMINGUP when it
// boots (joins) and catches up with the log, UP when it has, GOINGDOWN while
// it shuts down gracefully and DOWN once the cluster agreed it is gone.
const (
	NeverUp   NodeState = "NEVERUP"
	ComingUp  NodeState = "COMINGUP"
	Up        NodeState = "UP"
	GoingDown NodeState = "GOINGDOWN"
	Down      NodeState = "DOWN"
)

// States lists every state, in lifecycle order.
var States = []NodeState{NeverUp, ComingUp, Up, GoingDown, Down}

// ValidState reports whether s names a state.
func ValidState(s NodeState) bool {
	for _, v := range States {
		if v == s {
			return true
		}
	}
	return false
}

// Live reports whether a node in this state is expected to heartbeat.
func (s NodeState) Live() bool { return s == ComingUp || s == Up || s == GoingDown }

// Node is one row of the node table.
type Node struct {
	Num          uint32    `json:"num"`
	Name         string    `json:"name"`
	HWAddr       string    `json:"hwaddr"`
	IPAddr       string    `json:"ipaddr"`
	State        NodeState `json:"state"`
	StateSince   time.Time `json:"state_since"`
	StateIndex   uint64    `json:"state_index"` // log index of the last transition
	Xen          bool      `json:"xen,omitempty"`
	InitNode     bool      `json:"init_node,omitempty"`
	Voter        bool      `json:"voter,omitempty"` // designated Raft voter
	BootID       string    `json:"boot_id,omitempty"`
	TokenHash    string    `json:"token_hash,omitempty"` // sha256 of the join secret; "" when none is valid
	TokenExpires time.Time `json:"token_expires,omitempty"`
}

// Config is the cluster-wide configuration, fixed at init and replicated.
type Config struct {
	Voters            int           `json:"voters"`    // desired Raft voters (odd, 1..7)
	MaxNodes          int           `json:"max_nodes"` // highest node number
	Port              int           `json:"port"`      // TLS port every node listens on
	HeartbeatInterval time.Duration `json:"heartbeat_interval"`
	FailureTimeout    time.Duration `json:"failure_timeout"`
	// VoterReplaceAfter is how long a Raft voter may stay DOWN before its
	// vote goes to an UP non-voter (0: never).
	VoterReplaceAfter time.Duration `json:"voter_replace_after,omitempty"`
	NamePrefix        string        `json:"name_prefix"` // default node names are <prefix><num>
}

// Defaults for Config.
const (
	DefaultVoters            = 3
	MaxVoters                = 7
	DefaultMaxNodes          = 1024
	DefaultPort              = 7470
	DefaultHeartbeatInterval = 200 * time.Millisecond
	DefaultFailureTimeout    = 1000 * time.Millisecond
	DefaultVoterReplaceAfter = 30 * time.Second
	MaxEvents                = 512
)

// Validate checks a configuration.
func (c Config) Validate() error {
	switch {
	case c.Voters < 1 || c.Voters > MaxVoters || c.Voters%2 == 0:
		return Errorf(CodeInvalid, "voters must be odd and between 1 and %d, not %d", MaxVoters, c.Voters)
	case c.MaxNodes < 1 || c.MaxNodes > 1<<16:
		return Errorf(CodeInvalid, "max nodes must be between 1 and %d, not %d", 1<<16, c.MaxNodes)
	case c.Port < 1 || c.Port > 65535:
		return Errorf(CodeInvalid, "port %d is out of range", c.Port)
	case c.VoterReplaceAfter < 0:
		return Errorf(CodeInvalid, "voter replacement delay %v is negative", c.VoterReplaceAfter)
	case c.HeartbeatInterval <= 0 || c.FailureTimeout < 2*c.HeartbeatInterval:
		return Errorf(CodeInvalid, "failure timeout (%v) must be at least twice the heartbeat interval (%v)", c.FailureTimeout, c.HeartbeatInterval)
	}
	return nil
}

// Event is one membership transition, as every node saw it.
type Event struct {
	Time   time.Time `json:"time"`
	Num    uint32    `json:"num"`
	From   NodeState `json:"from"`
	To     NodeState `json:"to"`
	Reason string    `json:"reason,omitempty"`
	Index  uint64    `json:"index"`
}

// Cluster is the whole replicated state.
type Cluster struct {
	Name          string           `json:"name"`
	CAFingerprint string           `json:"ca_fingerprint"`
	Config        Config           `json:"config"`
	Nodes         map[uint32]*Node `json:"nodes"`
	NextNum       uint32           `json:"next_num"` // numbers are never reused silently
	Events        []Event          `json:"events"`

	// The DHCP server (internal/dhcp, run by the daemon): its settings,
	// nil until the first 'ssi dhcp set' (see DHCPSettings), and the leases
	// it granted, by MAC.
	DHCP   *DHCPConfig       `json:"dhcp,omitempty"`
	Leases map[string]*Lease `json:"leases,omitempty"`

	// Locations: where each process that moved runs now, by cluster PID
	// (location.go). A process without a record runs where it was created.
	Locations map[int64]uint32 `json:"locations,omitempty"`

	// LoadLevel: whether the leveler moves jobs off busy nodes
	// (loadlevel.go).
	LoadLevel LoadLevel `json:"load_level"`

	// Blocked: nodes that take no new jobs (loadlevel.go).
	Blocked map[uint32]bool `json:"blocked,omitempty"`

	// CFS: who serves and who replicates the cluster filesystem (cfs.go);
	// nil until the first 'ssi cfs replica'.
	CFS *CFS `json:"cfs,omitempty"`
	// JobRoot: jobs get the cluster filesystem as their / (cfs.go).
	JobRoot bool `json:"job_root,omitempty"`
	// VIPs: the cluster virtual IPs by key (cvip.go).
	VIPs map[string]*VIP `json:"vips,omitempty"`
	// NetPool and NetAddrs: the addresses of --net jobs (jobnet.go).
	NetPool  *NetPool           `json:"net_pool,omitempty"`
	NetAddrs map[int64]*NetAddr `json:"net_addrs,omitempty"`

	// Requests: the outcomes of the last commands that carried a request
	// ID, oldest first (requests.go), so that a retried command returns the
	// first outcome instead of being applied twice.
	Requests []remembered `json:"requests,omitempty"`

	// Requires is the lowest ssi version that understands this state: the
	// newest version that an applied entry needed ("" before the first
	// entry, and in snapshots of versions without stamps). A node older
	// than that refuses a snapshot of it (docs/UPGRADES.md).
	Requires string `json:"requires,omitempty"`

	// SnapshotApplied is the log index of the last command the state
	// holds, set only in a snapshot (FSM.Snapshot), so that a node restored
	// from one knows how far its state reaches: a linearizable read waits
	// until the state machine has applied the leader's read index
	// (consensus.Leader.ReadBarrier). 0 in the live state and in snapshots
	// of versions before 0.3.0.
	SnapshotApplied uint64 `json:"snapshot_applied,omitempty"`
}

// requires parses Requires; "" is the zero version.
func (c *Cluster) requires() (version.V, error) {
	if c.Requires == "" {
		return version.V{}, nil
	}
	v, err := version.Parse(c.Requires)
	if err != nil {
		return version.V{}, fmt.Errorf("cluster state requires: %w", err)
	}
	return v, nil
}

// Clone returns a deep copy.
func (c *Cluster) Clone() *Cluster {
	out := *c
	out.Nodes = make(map[uint32]*Node, len(c.Nodes))
	for k, n := range c.Nodes {
		cp := *n
		out.Nodes[k] = &cp
	}
	out.Events = append([]Event(nil), c.Events...)
	out.DHCP = c.DHCP.clone()
	out.Leases = cloneLeases(c.Leases)
	out.Locations = cloneLocations(c.Locations)
	out.LoadLevel = c.LoadLevel.clone()
	out.Blocked = cloneBlocked(c.Blocked)
	if c.CFS != nil {
		cp := *c.CFS
		out.CFS = &cp
	}
	out.VIPs = cloneVIPs(c.VIPs)
	if c.NetPool != nil {
		cp := *c.NetPool
		out.NetPool = &cp
	}
	out.NetAddrs = cloneNetAddrs(c.NetAddrs)
	out.Requests = append([]remembered(nil), c.Requests...)
	return &out
}

// NodeByMAC finds a node by canonical MAC.
func (c *Cluster) NodeByMAC(mac string) *Node {
	for _, n := range c.Nodes {
		if n.HWAddr == mac {
			return n
		}
	}
	return nil
}

// Code classifies a refused command.
type Code string

// Error codes of refused commands.
const (
	CodeInvalid  Code = "invalid"   // malformed input
	CodeExists   Code = "exists"    // duplicate MAC, IP, name or number
	CodeNotFound Code = "not_found" // unknown node
	CodeFull     Code = "full"      // no free node number
	CodeDenied   Code = "denied"    // bad or expired token
	CodeConflict Code = "conflict"  // the node is not in a state that allows this
)

// Error is a command refused by the state machine; nothing was changed.
type Error struct {
	Code Code   `json:"code"`
	Msg  string `json:"msg"`
}

func (e *Error) Error() string { return e.Msg }

// Is matches errors by code, so errors.Is(err, ErrExists) works.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Msg == "" && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrInvalid  = &Error{Code: CodeInvalid}
	ErrExists   = &Error{Code: CodeExists}
	ErrNotFound = &Error{Code: CodeNotFound}
	ErrFull     = &Error{Code: CodeFull}
	ErrDenied   = &Error{Code: CodeDenied}
	ErrConflict = &Error{Code: CodeConflict}
)

// Errorf returns a refused-command error.
func Errorf(code Code, format string, a ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}
