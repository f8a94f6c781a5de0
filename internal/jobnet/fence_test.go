package jobnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// fenceEnv is a Manager on node 1 of a one-node state machine, with a
// pool of one address, whose leader, link and announcement seams the test
// drives and records.
type fenceEnv struct {
	t      *testing.T
	fsm    *state.FSM
	index  uint64
	m      *Manager
	leader bool
	behind error // what caughtUp says
	calls  []string
	pids   map[vproc.CPID]int
}

var fenceT0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newFenceEnv(t *testing.T) *fenceEnv {
	e := &fenceEnv{t: t, fsm: state.NewFSM(slog.New(slog.DiscardHandler)), leader: true, pids: map[vproc.CPID]int{}}
	e.apply(state.CmdBootstrap, state.Bootstrap{Name: "c1", CAFingerprint: "fp", Time: fenceT0,
		Config: state.Config{Voters: 1, MaxNodes: 5, Port: 7470, HeartbeatInterval: 200 * time.Millisecond, FailureTimeout: time.Second},
		Node:   state.NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "10.0.0.1"}})
	e.apply(state.CmdSetNetPool, state.SetNetPool{Pool: state.NetPool{First: netip.MustParseAddr("10.0.1.1"), Last: netip.MustParseAddr("10.0.1.1"), Bits: 16}, Time: fenceT0})
	e.m = New(Config{Self: 1, SelfIP: "10.0.0.1", FSM: e.fsm, InitPid: func(c vproc.CPID) int { return e.pids[c] }, Log: slog.New(slog.DiscardHandler)})
	e.m.leaderKnown = func() bool { return e.leader }
	e.m.caughtUp = func() error { return e.behind }
	e.m.setUp = func(pid int, up bool) error { e.calls = append(e.calls, fmt.Sprintf("up %d %v", pid, up)); return nil }
	e.m.announce = func(pid int, ip netip.Addr) error {
		e.calls = append(e.calls, fmt.Sprintf("announce %d %s", pid, ip))
		return nil
	}
	e.m.leaderSeen = fenceT0
	return e
}

func (e *fenceEnv) apply(typ state.CommandType, cmd any) {
	e.t.Helper()
	b, err := state.Encode(typ, cmd)
	if err != nil {
		e.t.Fatal(err)
	}
	e.index++
	if r := e.fsm.ApplyEntry(e.index, b); r.Err != nil {
		e.t.Fatalf("apply %d: %v", typ, r.Err)
	}
}

// step runs one fence round at t0+at and checks the seams' calls.
func (e *fenceEnv) step(at time.Duration, want ...string) {
	e.t.Helper()
	e.calls = nil
	e.m.fence(fenceT0.Add(at))
	if !reflect.DeepEqual(e.calls, want) && (len(e.calls) != 0 || len(want) != 0) {
		e.t.Errorf("at +%v (leader known: %v): calls %q, want %q", at, e.leader, e.calls, want)
	}
}

// A node that knows no leader for fenceAfter takes its --net jobs' links
// down, once; with a leader again it puts back up (and announces) those
// whose address is still theirs, and leaves down one whose address was
// given to another job meanwhile. A job that does not run here is left
// alone.
func TestFenceTakesLinksDownWithoutALeader(t *testing.T) {
	e := newFenceEnv(t)
	const job, other = vproc.CPID(1000001), vproc.CPID(1000002)
	e.apply(state.CmdAssignNetAddr, state.AssignNetAddr{CPID: int64(job), Node: 1, Time: fenceT0})
	e.pids[job] = 4242

	e.step(time.Second)
	e.leader = false
	e.step(3 * time.Second)                // 2 s without: not yet
	e.step(7*time.Second, "up 4242 false") // 6 s: fenced
	e.step(8 * time.Second)                // once
	e.leader, e.behind = true, errors.New("not caught up")
	e.step(9 * time.Second) // not before this node has what the leader committed
	e.behind = nil
	e.step(10*time.Second, "up 4242 true", "announce 4242 10.0.1.1")
	e.step(11 * time.Second)

	// Cut off again; meanwhile the majority gave the address to another job.
	e.leader = false
	e.step(16*time.Second, "up 4242 false")
	e.apply(state.CmdReleaseNetAddr, state.ReleaseNetAddr{CPID: int64(job), IP: netip.MustParseAddr("10.0.1.1"), Why: "node 1 is DOWN", Time: fenceT0})
	e.apply(state.CmdAssignNetAddr, state.AssignNetAddr{CPID: int64(other), Node: 1, Time: fenceT0})
	e.leader = true
	e.step(17 * time.Second) // stays down: the address is the other job's
	if len(e.m.fenced) != 0 {
		t.Errorf("fenced after the leader came back: %v", e.m.fenced)
	}

	// The other job's record is on this node but it runs elsewhere (or
	// not yet): no link to touch.
	e.leader = false
	e.step(30 * time.Second)
}

// The leader gives a DOWN node's addresses back only once the node has
// been DOWN for releaseDownAfter, longer than that node takes to fence.
func TestDownAddrsWaitForTheFence(t *testing.T) {
	if releaseDownAfter <= fenceAfter+fenceEvery+sweepEvery {
		t.Fatalf("releaseDownAfter %v is not longer than the fence's %v + a round", releaseDownAfter, fenceAfter)
	}
	ip := netip.MustParseAddr("10.0.1.2")
	down := fenceT0
	cl := &state.Cluster{
		Nodes:    map[uint32]*state.Node{2: {Num: 2, State: state.Down, StateSince: down}},
		NetAddrs: map[int64]*state.NetAddr{2000001: {IP: ip, CPID: 2000001, Node: 2}},
	}
	if got := DownAddrs(cl, down.Add(releaseDownAfter-time.Second)); len(got) != 0 {
		t.Errorf("released %v after %v DOWN", got, releaseDownAfter-time.Second)
	}
	if got := DownAddrs(cl, down.Add(releaseDownAfter)); len(got) != 1 {
		t.Errorf("not released after %v DOWN: %v", releaseDownAfter, got)
	}
}
