package procspace

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

func apply(t *testing.T, f *state.FSM, index uint64, typ state.CommandType, cmd any) {
	t.Helper()
	b, err := state.Encode(typ, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(state.Result); r.Err != nil {
		t.Fatalf("command %v refused: %v", typ, r.Err)
	}
}

// A process runs where it was created until a location record says it
// moved; routing follows the record, and dropping it brings it home.
func TestLocateFollowsTheLocationRecord(t *testing.T) {
	f := state.NewFSM(nil)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	apply(t, f, 1, state.CmdBootstrap, state.Bootstrap{Name: "t", Time: t0,
		Config: state.Config{Voters: 1, MaxNodes: 8, Port: 7470, HeartbeatInterval: time.Second, FailureTimeout: 2 * time.Second},
		Node:   state.NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "10.0.0.1"}})
	apply(t, f, 2, state.CmdAddNodes, state.AddNodes{Time: t0, Nodes: []state.NodeSpec{
		{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.2"}, {HWAddr: "0a:00:00:00:11:d3", IPAddr: "10.0.0.3"}}})
	cpid, err := vproc.Make(2, 42)
	if err != nil {
		t.Fatal(err)
	}
	if got := Locate(f.Cluster(), cpid); got != 2 {
		t.Fatalf("a process that never moved: node %d, want its creator 2", got)
	}
	apply(t, f, 3, state.CmdSetLocation, state.SetLocation{CPID: int64(cpid), Node: 3, Time: t0})
	if got := Locate(f.Cluster(), cpid); got != 3 {
		t.Fatalf("after the move: node %d, want 3", got)
	}
	s := &Space{cfg: Config{Self: 1, FSM: f}}
	// Node 3 is NEVERUP here: routing refuses, naming it.
	if _, err := s.where(int64(cpid)); err == nil {
		t.Fatal("routed to a node that is not UP")
	}
	apply(t, f, 4, state.CmdSetLocation, state.SetLocation{CPID: int64(cpid), Node: 0, Time: t0})
	if got := Locate(f.Cluster(), cpid); got != 2 {
		t.Fatalf("after the record was dropped: node %d, want 2", got)
	}
	b, _ := state.Encode(state.CmdSetLocation, state.SetLocation{CPID: int64(cpid), Node: 9, Time: t0})
	if r := f.Apply(&raft.Log{Index: 5, Type: raft.LogCommand, Data: b}).(state.Result); r.Err == nil {
		t.Fatal("a location on an unknown node was accepted")
	}
}

func stdin(seq uint64, n int) *ssiv1.ExecInput {
	return &ssiv1.ExecInput{Seq: seq, Msg: &ssiv1.ExecInput_Stdin{Stdin: make([]byte, n)}}
}

// add is how the relay's sender puts m in the window: it waits for room,
// then keeps it.
func add(ctx context.Context, w *inflight, m *ssiv1.ExecInput) bool {
	if !w.room(ctx, len(m.GetStdin())) {
		return false
	}
	w.keep(m)
	return true
}

// The relay keeps unacknowledged stdin, at most a window of it: a sender
// beyond the window waits for an acknowledgement, and what is pending is
// exactly what was not acknowledged.
func TestInflightWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newInflight(100)
		ctx := context.Background()
		if !add(ctx, w, stdin(1, 60)) || !add(ctx, w, stdin(2, 40)) {
			t.Fatal("refused within the window")
		}
		added := make(chan bool)
		go func() { added <- add(ctx, w, stdin(3, 10)) }()
		synctest.Wait()
		select {
		case <-added:
			t.Fatal("a chunk beyond the window went through before any acknowledgement")
		default:
		}
		w.ack(1)
		if !<-added {
			t.Fatal("the chunk was refused after the acknowledgement")
		}
		var seqs []uint64
		for _, m := range w.pending() {
			seqs = append(seqs, m.Seq)
		}
		if len(seqs) != 2 || seqs[0] != 2 || seqs[1] != 3 {
			t.Fatalf("pending %v, want [2 3]", seqs)
		}
		// A sender waiting on a full window lets go when its context ends.
		w2 := newInflight(10)
		add(ctx, w2, stdin(1, 10))
		cctx, cancel := context.WithCancel(ctx)
		go func() { added <- add(cctx, w2, stdin(2, 10)) }()
		synctest.Wait()
		cancel()
		if <-added {
			t.Fatal("add succeeded after its context ended")
		}
	})
}

// The target's stdin queue never blocks the receiver within its limit, so
// a signal behind queued stdin is handled at once; pop reports whether
// more is queued (for coalesced acknowledgements).
func TestStdinQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newStdinQueue(100)
		q.push(stdinItem{seq: 1, data: make([]byte, 50)})
		q.push(stdinItem{seq: 2, data: make([]byte, 50)})
		pushed := make(chan struct{})
		go func() { q.push(stdinItem{seq: 3, data: make([]byte, 10)}); close(pushed) }()
		synctest.Wait()
		select {
		case <-pushed:
			t.Fatal("push beyond the limit did not wait")
		default:
		}
		it, more, ok := q.pop()
		if !ok || it.seq != 1 || !more {
			t.Fatalf("pop: %+v more=%v ok=%v", it, more, ok)
		}
		<-pushed
		q.pop()
		it, more, _ = q.pop()
		if it.seq != 3 || more {
			t.Fatalf("last pop: %+v more=%v", it, more)
		}
		q.close()
		if _, _, ok := q.pop(); ok {
			t.Fatal("pop after close and drain returned an item")
		}
	})
}

// The relay's window of signals and resizes never makes one wait: full,
// it forgets the oldest.
func TestInflightKeepLast(t *testing.T) {
	w := newInflight(2)
	for seq := uint64(1); seq <= 3; seq++ {
		w.keepLast(&ssiv1.ExecInput{Seq: seq, Msg: &ssiv1.ExecInput_Signal{Signal: 2}})
	}
	var seqs []uint64
	for _, m := range w.pending() {
		seqs = append(seqs, m.Seq)
	}
	if len(seqs) != 2 || seqs[0] != 2 || seqs[1] != 3 {
		t.Fatalf("pending %v, want [2 3]", seqs)
	}
	w.ack(2)
	if p := w.pending(); len(p) != 1 || p[0].Seq != 3 {
		t.Fatalf("pending after ack 2: %v", p)
	}
}
