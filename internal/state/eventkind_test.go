package state

import (
	"testing"
	"time"
)

func TestEventKinds(t *testing.T) {
	c := &Cluster{Nodes: map[uint32]*Node{2: {Num: 2, State: Up}, 3: {Num: 3, State: Up}}}
	if err := applyMoved(c, Moved{CPID: 2000012, From: 2, To: 3, Record: 3, Why: "load leveling", Time: time.Unix(1, 0)}, 7); err != nil {
		t.Fatal(err)
	}
	if err := applyMoved(c, Moved{CPID: 2000013, From: 0, To: 3, Record: 3, Why: "restart", Time: time.Unix(2, 0)}, 8); err != nil {
		t.Fatal(err)
	}
	transition(c, c.Nodes[2], Down, "no heartbeat for 1s", time.Unix(3, 0), 9)
	c.Events = append(c.Events, Event{Num: 3, From: Up, To: Up, Reason: "takes over the vote of DOWN node 1", Index: 10})
	want := []struct {
		kind EventKind
		cpid int64
		from uint32
	}{{EventMigration, 2000012, 2}, {EventMigration, 2000013, 0}, {EventMembership, 0, 0}, {EventVoter, 0, 0}}
	if len(c.Events) != len(want) {
		t.Fatalf("%d events", len(c.Events))
	}
	for i, e := range c.Events {
		cpid, from, _ := e.Moved()
		if e.Kind() != want[i].kind || cpid != want[i].cpid || from != want[i].from {
			t.Errorf("event %d %+v: kind %v, moved %d from %d; want %+v", i, e, e.Kind(), cpid, from, want[i])
		}
	}
}
