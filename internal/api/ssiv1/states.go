package ssiv1

import (
	"strings"

	"github.com/ssi-cluster/ssi/internal/state"
)

// This file is hand-written: conversions between the replicated state's
// types and their typed wire forms, so that no side compares states as
// strings.

var toWire = map[state.NodeState]NodeState{
	state.NeverUp:   NodeState_NODE_STATE_NEVERUP,
	state.ComingUp:  NodeState_NODE_STATE_COMINGUP,
	state.Up:        NodeState_NODE_STATE_UP,
	state.GoingDown: NodeState_NODE_STATE_GOINGDOWN,
	state.Down:      NodeState_NODE_STATE_DOWN,
}

// StateToWire is a node state on the wire.
func StateToWire(s state.NodeState) NodeState { return toWire[s] }

// Domain is the replicated state's form of a wire state ("" if unspecified).
func (s NodeState) Domain() state.NodeState {
	for k, v := range toWire {
		if v == s {
			return k
		}
	}
	return ""
}

// Label is how commands print a state: UP, COMINGUP, ... as in OpenSSI.
func (s NodeState) Label() string {
	if d := s.Domain(); d != "" {
		return string(d)
	}
	return "UNKNOWN"
}

// Label is how commands print a role: leader, voter or member.
func (r NodeRole) Label() string {
	if r == NodeRole_NODE_ROLE_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "NODE_ROLE_"))
}
