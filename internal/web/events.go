package web

import (
	"context"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
)

// The cluster's event stream comes from the replicated history
// (Cluster.Events: membership transitions, migrations, votes changing
// hands, each with its log index and the leader's time), so every node
// tells the same story; following it is watching the state machine apply.

func eventToWire(e state.Event, c *state.Cluster) *ssiv1.ClusterEvent {
	out := &ssiv1.ClusterEvent{TimeUnixMs: e.Time.UnixMilli(), Index: e.Index, Node: e.Num,
		From: ssiv1.StateToWire(e.From), To: ssiv1.StateToWire(e.To), Reason: e.Reason}
	if n := c.Nodes[e.Num]; n != nil {
		out.NodeName = n.Name
	}
	switch e.Kind() {
	case state.EventMembership:
		out.Kind = ssiv1.EventKind_EVENT_KIND_MEMBERSHIP
	case state.EventMigration:
		out.Kind = ssiv1.EventKind_EVENT_KIND_MIGRATION
		out.Cpid, out.FromNode, _ = e.Moved()
	case state.EventVoter:
		out.Kind = ssiv1.EventKind_EVENT_KIND_VOTER
	}
	return out
}

// eventsAfter are the events of c after log index after (the last n of
// them when n > 0) and the newest index c's history holds.
func eventsAfter(c *state.Cluster, after uint64, n int) ([]*ssiv1.ClusterEvent, uint64) {
	var out []*ssiv1.ClusterEvent
	newest := after
	for _, e := range c.Events {
		if e.Index > after {
			out = append(out, eventToWire(e, c))
		}
		newest = max(newest, e.Index)
	}
	if n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	return out, newest
}

// Changes is what following the history needs from the state machine
// (*state.FSM).
type Changes interface {
	Cluster() *state.Cluster
	Changed() <-chan struct{}
}

// follow calls send with every event after index after as the state
// machine applies it, until ctx ends or send fails.
func follow(ctx context.Context, fsm Changes, after uint64, send func(*ssiv1.ClusterEvent) error) error {
	for {
		ch := fsm.Changed() // before reading: a change after it wakes us
		evs, newest := eventsAfter(fsm.Cluster(), after, 0)
		for _, e := range evs {
			if err := send(e); err != nil {
				return err
			}
		}
		after = newest
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}
