package procspace

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer/memnet"
	"github.com/ssi-cluster/ssi/internal/state"
)

// fakeNode serves Process.Exec on one node of a memnet network with exec.
type fakeNode struct {
	ssiv1connect.UnimplementedProcessHandler
	exec func(context.Context, *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error
}

func (f *fakeNode) Exec(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
	return f.exec(ctx, st)
}

func serveFake(n *memnet.Network, num uint32, exec func(context.Context, *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error) {
	mux := http.NewServeMux()
	mux.Handle(ssiv1connect.NewProcessHandler(&fakeNode{exec: exec}))
	n.Serve(num, mux)
}

// threeNodes is the state of a cluster of three UP nodes.
func threeNodes(t *testing.T) *state.FSM {
	t.Helper()
	f := state.NewFSM(nil)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	apply(t, f, 1, state.CmdBootstrap, state.Bootstrap{Name: "t", Time: t0,
		Config: state.Config{Voters: 1, MaxNodes: 8, Port: 7470, HeartbeatInterval: time.Second, FailureTimeout: 2 * time.Second},
		Node:   state.NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "10.0.0.1"}})
	apply(t, f, 2, state.CmdAddNodes, state.AddNodes{Time: t0, Nodes: []state.NodeSpec{
		{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.2"}, {HWAddr: "0a:00:00:00:11:d3", IPAddr: "10.0.0.3"}}})
	for num := uint32(1); num <= 3; num++ {
		apply(t, f, 2+uint64(num), state.CmdSetState, state.SetState{Num: num, To: state.Up, Time: t0})
	}
	return f
}

// cliStream is the CLI's side of a relayed exec: it sends what the test
// puts in in (nothing if in is nil: a CLI with its stdio passed), and
// keeps what the relay sends it.
type cliStream struct {
	ctx  context.Context
	in   chan *ssiv1.ExecInput
	mu   sync.Mutex
	msgs []*ssiv1.ExecOutput
}

func (c *cliStream) Receive() (*ssiv1.ExecInput, error) {
	select {
	case m := <-c.in:
		return m, nil
	case <-c.ctx.Done():
		return nil, c.ctx.Err()
	}
}

func (c *cliStream) Send(m *ssiv1.ExecOutput) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
	return nil
}

// A relayed job moves (its old node ends the stream with ExecMoved) while
// the relay still attaches to the new node, and the client's stdin goes on
// meanwhile: what the relay read then (sent into the old stream, which has
// ended) reaches the new node once, and so does the stdin EOF that comes
// after it. The relay once stopped reading the client's stdin when a send
// into the old stream failed: the new node got the line (again from the
// window) but never the EOF, and the job never ended.
func TestRelayStdinFollowsAMove(t *testing.T) {
	net := memnet.New()
	defer net.Close()
	const cpid = 2000001
	oldDone := make(chan struct{})
	serveFake(net, 2, func(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
		defer close(oldDone)
		if m, err := st.Receive(); err != nil || m.GetStart() == nil {
			return errors.New("node 2: want a start")
		}
		if err := st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Started{Started: &ssiv1.ExecStarted{Cpid: cpid, Node: 2, Migratable: true}}}); err != nil {
			return err
		}
		m, err := st.Receive()
		if err != nil || string(m.GetStdin()) != "a\n" {
			return errors.New("node 2: want stdin a")
		}
		if err := st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_StdinAck{StdinAck: m.Seq}}); err != nil {
			return err
		}
		// The job moved to node 3 with all its stdin written.
		return st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Moved{Moved: &ssiv1.ExecMoved{Node: 3, StdinAcked: m.Seq}}})
	})
	type got struct {
		stdin []byte
		seqs  []uint64
		eofs  int
		err   error
	}
	newDone := make(chan got, 1)
	serveFake(net, 3, func(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
		var g got
		defer func() { newDone <- g }()
		if m, err := st.Receive(); err != nil || m.GetAttach().GetCpid() != cpid {
			g.err = errors.New("node 3: want an attach")
			return g.err
		}
		for {
			m, err := st.Receive()
			if err != nil {
				g.err = err
				return err
			}
			g.seqs = append(g.seqs, m.Seq)
			switch v := m.Msg.(type) {
			case *ssiv1.ExecInput_Stdin:
				g.stdin = append(g.stdin, v.Stdin...)
			case *ssiv1.ExecInput_StdinEof:
				g.eofs++
				if err := st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_StdinAck{StdinAck: m.Seq}}); err != nil {
					return err
				}
				return st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{Code: 4}}})
			}
		}
	})
	// The relay is slow to reach the job's new node: the old stream's
	// end arrives before it has switched.
	net.Delay(1, 3, 300*time.Millisecond)

	f := threeNodes(t)
	s := New(Config{Self: 1, Name: "t1", FSM: f, Net: net.Net(1), Log: slog.New(slog.DiscardHandler)})
	stdio, in := testStdio(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := &cliStream{ctx: ctx}
	spec := &ssiv1.ExecSpec{Argv: []string{"cat"}, Node: 2, HasCreds: true}
	relayed := make(chan error, 1)
	go func() { relayed <- s.relay(ctx, spec, cli, f.Cluster().Nodes[2], stdio) }()

	if _, err := in.Write([]byte("a\n")); err != nil {
		t.Fatal(err)
	}
	<-oldDone
	time.Sleep(100 * time.Millisecond) // the old stream's end reaches the relay
	if _, err := in.Write([]byte("b\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	in.Close()

	select {
	case g := <-newDone:
		if g.err != nil {
			t.Fatalf("node 3: %v", g.err)
		}
		if !bytes.Equal(g.stdin, []byte("b\n")) || g.eofs != 1 {
			t.Errorf("node 3 got stdin %q and %d EOF(s) (seqs %v), want \"b\\n\" once and one EOF", g.stdin, g.eofs, g.seqs)
		}
		for i := 1; i < len(g.seqs); i++ {
			if g.seqs[i] <= g.seqs[i-1] {
				t.Errorf("node 3 got stdin seqs %v: not increasing", g.seqs)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the job's new node never got the stdin EOF")
	}
	select {
	case err := <-relayed:
		if err != nil {
			t.Fatalf("relay: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end after the job's exit")
	}
	var exit *ssiv1.ExecExit
	cli.mu.Lock()
	for _, m := range cli.msgs {
		if e := m.GetExit(); e != nil {
			exit = e
		}
	}
	cli.mu.Unlock()
	if exit == nil || exit.Code != 4 {
		t.Errorf("the CLI got exit %v, want code 4", exit)
	}
}

// testStdio is the passed stdio of a CLI whose stdin is a pipe the test
// writes into (in) and whose output goes nowhere.
func testStdio(t *testing.T) (*passedStdio, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := newStopper()
	if err != nil {
		t.Fatal(err)
	}
	p := &passedStdio{in: r, out: out, err: errOut, stop: stop}
	t.Cleanup(func() { w.Close(); p.close() })
	return p, w
}
