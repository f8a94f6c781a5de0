package state

import (
	"fmt"
	"strings"

	"github.com/ssi-cluster/ssi/internal/version"
)

// CodeHalted refuses every command once the state machine has halted.
const CodeHalted Code = "halted"

// ErrHalted matches (errors.Is) the refusals of a halted state machine and
// its *HaltError.
var ErrHalted = &Error{Code: CodeHalted}

// HaltError says why the state machine halted: a committed log entry (or a
// snapshot) that this version cannot apply. The node must not go on with a
// state that differs from the other nodes', so it stops applying the log;
// the daemon must exit and be upgraded (docs/UPGRADES.md).
type HaltError struct {
	Index    uint64      // log index of the entry; 0 for a snapshot or from CheckEntry
	Type     CommandType // the entry's command type
	Snapshot bool        // a snapshot, not a log entry, needs the newer version
	Node     version.V   // this node's version
	Needs    version.V   // the version that introduced what the entry holds; zero if it does not say
	Detail   string      // what this version does not understand
}

func (e *HaltError) Error() string {
	var b strings.Builder
	switch {
	case e.Snapshot:
		fmt.Fprintf(&b, "the Raft snapshot cannot be restored by this node, which runs ssi %s", e.Node)
	case e.Index == 0:
		fmt.Fprintf(&b, "a command of type %v cannot be applied by ssi %s, which this node runs", e.Type, e.Node)
	default:
		fmt.Fprintf(&b, "log entry %d (command type %v) cannot be applied by this node, which runs ssi %s", e.Index, e.Type, e.Node)
	}
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	switch {
	case e.Needs.IsZero():
		b.WriteString("; it does not say which ssi version introduced it. Upgrade this node to the ssi version the other nodes run")
	case e.Snapshot:
		fmt.Fprintf(&b, ". Upgrade this node to ssi >= %s", e.Needs)
	default:
		fmt.Fprintf(&b, "; it was introduced in ssi %s. Upgrade this node to ssi >= %s", e.Needs, e.Needs)
	}
	switch {
	case e.Snapshot:
		b.WriteString(" and start it again: it refused the snapshot so that its state does not diverge from the other nodes'")
	case e.Index != 0:
		fmt.Fprintf(&b, " and start it again: it stopped applying the log at entry %d so that its state does not diverge from the other nodes'", e.Index)
	default:
		b.WriteString(": upgrade every node before using the command")
	}
	return b.String()
}

// Is makes errors.Is(err, ErrHalted) true.
func (e *HaltError) Is(target error) bool { return target == ErrHalted }
