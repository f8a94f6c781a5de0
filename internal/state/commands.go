package state

import (
	"encoding/json"
	"fmt"
	"time"
)

// CommandType is the first byte of every log entry (entry.go has the
// layout). Types with the IgnoreUnknown bit set may be skipped by an older
// node that does not know them; meeting any other type it does not know (or
// an entry stamped with a newer version) halts a node's state machine, so
// that a mixed-version cluster stops loudly instead of diverging silently
// (docs/UPGRADES.md).
type CommandType byte

// Command types. Never renumber: they are in every log.
const (
	CmdBootstrap       CommandType = 1
	CmdAddNodes        CommandType = 2
	CmdSetState        CommandType = 3
	CmdSetToken        CommandType = 4
	CmdJoin            CommandType = 5
	CmdRemoveNode      CommandType = 6
	CmdClusterShutdown CommandType = 7
	// 8 and 9: CmdSetDHCP, CmdRecordLease (dhcp.go)
	CmdReplaceVoter CommandType = 10

	IgnoreUnknown CommandType = 0x80
)

// Bootstrap creates the cluster with node 1.
type Bootstrap struct {
	Name          string    `json:"name"`
	CAFingerprint string    `json:"ca_fingerprint"`
	Config        Config    `json:"config"`
	Node          NodeSpec  `json:"node"`
	Time          time.Time `json:"time"`
}

// NodeSpec is a node to register. Num 0 takes the next free number; an
// empty Name takes <prefix><num>.
type NodeSpec struct {
	Num          uint32    `json:"num,omitempty"`
	Name         string    `json:"name,omitempty"`
	HWAddr       string    `json:"hwaddr"`
	IPAddr       string    `json:"ipaddr"`
	Xen          bool      `json:"xen,omitempty"`
	TokenHash    string    `json:"token_hash,omitempty"`
	TokenExpires time.Time `json:"token_expires,omitempty"`
}

// AddNodes registers nodes, all or none.
type AddNodes struct {
	Nodes []NodeSpec `json:"nodes"`
	Time  time.Time  `json:"time"`
}

// SetState moves a node to a new state. If From is not empty the
// transition happens only from one of those states (otherwise the command is
// refused with CodeConflict): proposers race, and this keeps them honest.
type SetState struct {
	Num    uint32      `json:"num"`
	To     NodeState   `json:"to"`
	From   []NodeState `json:"from,omitempty"`
	BootID string      `json:"boot_id,omitempty"` // recorded when non-empty
	Reason string      `json:"reason,omitempty"`
	Time   time.Time   `json:"time"`
}

// SetToken replaces a node's join token (the hash of its secret).
type SetToken struct {
	Num     uint32    `json:"num"`
	Hash    string    `json:"hash"`
	Expires time.Time `json:"expires"`
}

// Join consumes a node's join token: the node identified by its MAC becomes
// COMINGUP. The state machine decides whether it will be a Raft voter.
type Join struct {
	HWAddr    string    `json:"hwaddr"`
	TokenHash string    `json:"token_hash"`
	Time      time.Time `json:"time"`
}

// JoinResult is what Join returns.
type JoinResult struct {
	Num   uint32 `json:"num"`
	Voter bool   `json:"voter"`
}

// RemoveNode deletes a node that is not running (NEVERUP or DOWN).
type RemoveNode struct {
	Num uint32 `json:"num"`
}

// ClusterShutdown marks every node DOWN in one entry: the whole cluster is
// stopping.
type ClusterShutdown struct {
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
}

// ReplaceVoter moves a Raft vote from a voter that has been DOWN to a
// node that is UP, so that losing nodes one by one does not lose the
// quorum. The leader then changes Raft's configuration to match.
type ReplaceVoter struct {
	Down   uint32    `json:"down"`
	Up     uint32    `json:"up"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

// Encode turns a command into a log entry stamped with the version that
// introduced its type. A type missing from the version table (entry.go) is
// refused: add its row.
func Encode(t CommandType, cmd any) ([]byte, error) {
	since, ok := Introduced(t)
	if !ok {
		return nil, fmt.Errorf("encode command type %d: it has no row in the version table (internal/state/entry.go); add one", byte(t))
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command %v: %w", t, err)
	}
	return Entry{Type: t, Needs: since, Body: b}.Bytes(), nil
}

// Result is what applying a command returns to its proposer.
type Result struct {
	Err   *Error          `json:"err,omitempty"`
	Value json.RawMessage `json:"value,omitempty"`
}

// Error returns the refusal as an error, or nil.
func (r Result) Error() error {
	if r.Err == nil {
		return nil
	}
	return r.Err
}

// Decode unmarshals the result's value into v.
func (r Result) Decode(v any) error {
	if r.Err != nil {
		return r.Err
	}
	if len(r.Value) == 0 {
		return nil
	}
	return json.Unmarshal(r.Value, v)
}
