package state

import "fmt"

// Reading the cluster's history (Cluster.Events): which events are about a
// node's membership and which about a process that moved (applyMoved) or a
// vote that changed hands (CmdReplaceVoter). Not replicated state: a view
// of what the state machine recorded.

// EventKind says what an event is about.
type EventKind int

// Kinds of events.
const (
	EventMembership EventKind = iota // a node changed state
	EventMigration                   // a process moved or was restarted here
	EventVoter                       // the node took over a Raft vote
)

// Kind classifies the event: a transition changes the node's state; the
// others keep it and say why in their reason, which this package wrote.
func (e Event) Kind() EventKind {
	if e.From != e.To {
		return EventMembership
	}
	if _, _, ok := e.Moved(); ok {
		return EventMigration
	}
	return EventVoter
}

// Moved returns the process and the node it came from of a migration
// event (from 0: it was restarted from a checkpoint).
func (e Event) Moved() (cpid int64, from uint32, ok bool) {
	if e.From != e.To {
		return 0, 0, false
	}
	var why string
	if n, _ := fmt.Sscanf(e.Reason, "process %d moved here from node %d (%s", &cpid, &from, &why); n >= 2 {
		return cpid, from, true
	}
	if n, _ := fmt.Sscanf(e.Reason, "process %d restarted here (%s", &cpid, &why); n >= 1 {
		return cpid, 0, true
	}
	return 0, 0, false
}
