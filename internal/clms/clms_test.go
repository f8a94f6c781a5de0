package clms

import (
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/state"
)

var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func cluster(nodes ...*state.Node) *state.Cluster {
	c := &state.Cluster{Nodes: map[uint32]*state.Node{}}
	for _, n := range nodes {
		c.Nodes[n.Num] = n
	}
	return c
}

func decide(d *Detector, c *state.Cluster, at time.Time) map[uint32]state.SetState {
	out := map[uint32]state.SetState{}
	for _, s := range d.Decide(c, at) {
		out[s.Num] = s
	}
	return out
}

func TestSilentNodeGoesDownAfterTimeout(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	c := cluster(&state.Node{Num: 1, State: state.Up, BootID: "a"}, &state.Node{Num: 2, State: state.Up, BootID: "b"})
	d.Observe(Heartbeat{Num: 1, BootID: "a"}, t0.Add(900*time.Millisecond))
	if got := decide(d, c, t0.Add(999*time.Millisecond)); len(got) != 0 {
		t.Fatalf("transitions within the grace period: %v", got)
	}
	got := decide(d, c, t0.Add(1001*time.Millisecond))
	if s, ok := got[2]; !ok || s.To != state.Down || len(s.From) != 1 || s.From[0] != state.Up {
		t.Fatalf("node 2 not proposed DOWN: %v", got)
	}
	if _, ok := got[1]; ok {
		t.Errorf("node 1 heartbeated but was proposed: %v", got[1])
	}
}

func TestPreviousLeaderGetsShortGrace(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 3)
	c := cluster(&state.Node{Num: 3, State: state.Up, BootID: "c"}, &state.Node{Num: 4, State: state.Up, BootID: "d"})
	got := decide(d, c, t0.Add(300*time.Millisecond))
	if got[3].To != state.Down {
		t.Errorf("old leader not DOWN after a quarter timeout: %v", got)
	}
	if _, ok := got[4]; ok {
		t.Errorf("node 4 proposed too early")
	}
}

func TestComingUpBecomesUpWhenCaughtUp(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	c := cluster(&state.Node{Num: 2, State: state.ComingUp, StateIndex: 50})
	d.Observe(Heartbeat{Num: 2, BootID: "x", Applied: 49}, t0)
	if got := decide(d, c, t0); len(got) != 0 {
		t.Fatalf("UP before catching up: %v", got)
	}
	d.Observe(Heartbeat{Num: 2, BootID: "x", Applied: 50}, t0)
	if got := decide(d, c, t0); got[2].To != state.Up || got[2].BootID != "x" {
		t.Fatalf("not UP after catching up: %v", got)
	}
}

func TestDownNodeReturnsOnlyAfterApplyingItsDown(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	c := cluster(&state.Node{Num: 2, State: state.Down, StateIndex: 70, BootID: "x"})
	// A heartbeat still in flight from before the node left.
	d.Observe(Heartbeat{Num: 2, BootID: "x", Applied: 69}, t0)
	if got := decide(d, c, t0); len(got) != 0 {
		t.Fatalf("stale heartbeat revived the node: %v", got)
	}
	d.Observe(Heartbeat{Num: 2, BootID: "y", Applied: 70}, t0)
	if got := decide(d, c, t0); got[2].To != state.ComingUp || got[2].BootID != "y" {
		t.Fatalf("returning node not COMINGUP: %v", got)
	}
}

func TestRestartBehindTheLeadersBack(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	c := cluster(&state.Node{Num: 2, State: state.Up, BootID: "old"})
	d.Observe(Heartbeat{Num: 2, BootID: "new", Applied: 10}, t0)
	if got := decide(d, c, t0); got[2].To != state.ComingUp || got[2].Reason != "node restarted" {
		t.Fatalf("restart not noticed: %v", got)
	}
}

func TestJoinedNodeGetsTimeToStart(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	c := cluster(&state.Node{Num: 5, State: state.ComingUp, StateSince: t0})
	if got := decide(d, c, t0.Add(10*time.Second)); len(got) != 0 {
		t.Fatalf("a freshly joined node was declared DOWN: %v", got)
	}
	if got := decide(d, c, t0.Add(JoinGrace+time.Second)); got[5].To != state.Down {
		t.Fatalf("a joined node that never started is not DOWN after the grace: %v", got)
	}
}

func TestNeverUpAndDownNodesAreLeftAlone(t *testing.T) {
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	c := cluster(&state.Node{Num: 6, State: state.NeverUp}, &state.Node{Num: 7, State: state.Down, BootID: "z"})
	if got := decide(d, c, t0.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("%v", got)
	}
	if d.Alive(6, t0) || len(d.Loads(t0)) != 0 {
		t.Errorf("unheard nodes reported alive")
	}
	d.Observe(Heartbeat{Num: 6, BootID: "q", Load: 1.5}, t0)
	if !d.Alive(6, t0) || d.Loads(t0)[6] != 1.5 || d.Alive(6, t0.Add(2*time.Second)) {
		t.Errorf("liveness/load bookkeeping wrong")
	}
}

// A node that joined long after this leader took over and never
// heartbeats is reported silent since it joined, not since the election.
func TestSilenceOfANodeThatJoinedAfterTheElection(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	joined := t0.Add(13 * time.Minute)
	c := &state.Cluster{Nodes: map[uint32]*state.Node{
		5: {Num: 5, State: state.ComingUp, StateSince: joined},
	}}
	now := joined.Add(JoinGrace + 2*time.Second)
	out := d.Decide(c, now)
	if len(out) != 1 || out[0].To != state.Down {
		t.Fatalf("decisions %+v, want node 5 DOWN", out)
	}
	if want := "no heartbeat for " + (JoinGrace + 2*time.Second).String(); out[0].Reason != want {
		t.Errorf("reason %q, want %q", out[0].Reason, want)
	}
}

// A leader whose own loop did not run for a while (CPU starvation,
// SIGSTOP) credits every node with that time: the heartbeats sent
// meanwhile are still unread, so no live node goes DOWN for the leader's
// stall (issue 10's false DOWNs on a busy machine). A node that stays
// silent after it is still declared DOWN, a stall later.
func TestLeaderStallIsNobodysSilence(t *testing.T) {
	c := cluster(&state.Node{Num: 1, State: state.Up, BootID: "a"}, &state.Node{Num: 2, State: state.Up, BootID: "b"})
	stalled := func(credit bool) map[uint32]state.SetState {
		d := NewDetector(time.Second)
		d.Reset(t0, 0)
		d.Observe(Heartbeat{Num: 1, BootID: "a"}, t0.Add(100*time.Millisecond))
		d.Observe(Heartbeat{Num: 2, BootID: "b"}, t0.Add(100*time.Millisecond))
		// The loop ran last at 150ms and next at 1.9s.
		if credit {
			d.Stalled(1700 * time.Millisecond)
		}
		return decide(d, c, t0.Add(1900*time.Millisecond))
	}
	if got := stalled(false); len(got) != 2 {
		t.Fatalf("without the credit both nodes should look silent (the old behaviour): %v", got)
	}
	if got := stalled(true); len(got) != 0 {
		t.Fatalf("a stall of the leader made nodes DOWN: %v", got)
	}
	d := NewDetector(time.Second)
	d.Reset(t0, 0)
	d.Observe(Heartbeat{Num: 1, BootID: "a"}, t0.Add(100*time.Millisecond))
	d.Observe(Heartbeat{Num: 2, BootID: "b"}, t0.Add(100*time.Millisecond))
	d.Stalled(1700 * time.Millisecond)
	d.Observe(Heartbeat{Num: 1, BootID: "a"}, t0.Add(1950*time.Millisecond)) // node 1's queued heartbeat, read after the stall
	got := decide(d, c, t0.Add(2900*time.Millisecond))
	if s, ok := got[2]; !ok || s.To != state.Down {
		t.Fatalf("node 2, silent a full timeout after the stall, not proposed DOWN: %v", got)
	}
	if _, ok := got[1]; ok {
		t.Errorf("node 1 heartbeated after the stall but was proposed: %v", got[1])
	}
}
