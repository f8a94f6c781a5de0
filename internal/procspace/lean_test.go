package procspace

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/peer/memnet"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/pki/pkitest"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Every kind of message crosses the exec stream's own framing as it went
// in: data chunks raw with their sequence numbers (a chunk larger than a
// TLS record and one that is not), everything else as protobuf; a
// received output chunk is the connection's reused buffer.
func TestLeanFraming(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cl, srv := newLeanClient(a), newLeanServer(b)
	big := randomBytes(300 << 10)
	inputs := []*ssiv1.ExecInput{
		{Msg: &ssiv1.ExecInput_Start{Start: &ssiv1.ExecSpec{Argv: []string{"cat"}, Node: 2, HasCreds: true}}},
		{Seq: 1, Msg: &ssiv1.ExecInput_Stdin{Stdin: []byte("hello\n")}},
		{Seq: 2, Msg: &ssiv1.ExecInput_Stdin{Stdin: big}},
		{Seq: 7, Msg: &ssiv1.ExecInput_Signal{Signal: 2}},
		{Seq: 3, Msg: &ssiv1.ExecInput_StdinEof{StdinEof: true}},
	}
	sent := make(chan error, 1)
	go func() {
		for _, m := range inputs {
			if err := cl.Send(m); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	var kept [][]byte // what the stdin queue would keep
	for i, want := range inputs {
		got, err := srv.Receive()
		if err != nil {
			t.Fatalf("input %d: %v", i, err)
		}
		if got.Seq != want.Seq || got.String() != want.String() {
			t.Fatalf("input %d: got %v, want %v", i, got, want)
		}
		if d := got.GetStdin(); d != nil {
			kept = append(kept, d)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// Stdin chunks are the queue's to keep: later frames did not overwrite
	// them.
	if string(kept[0]) != "hello\n" || !bytes.Equal(kept[1], big) {
		t.Fatal("a kept stdin chunk changed under later frames")
	}

	outputs := []*ssiv1.ExecOutput{
		{Msg: &ssiv1.ExecOutput_Started{Started: &ssiv1.ExecStarted{Cpid: 2000001, Node: 2, Migratable: true}}},
		{Seq: 1, Msg: &ssiv1.ExecOutput_Stdout{Stdout: big}},
		{Seq: 2, Msg: &ssiv1.ExecOutput_Stderr{Stderr: []byte("oops\n")}},
		{Msg: &ssiv1.ExecOutput_StdinAck{StdinAck: 3}},
		{Seq: 3, Msg: &ssiv1.ExecOutput_Stdout{Stdout: []byte("x")}},
		{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{Code: 4}}},
	}
	go func() {
		for _, m := range outputs {
			if err := srv.Send(m); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	var chunks []*ssiv1.ExecOutput
	for i, want := range outputs {
		got, err := cl.Receive()
		if err != nil {
			t.Fatalf("output %d: %v", i, err)
		}
		if got.Seq != want.Seq || got.String() != want.String() {
			t.Fatalf("output %d: got %v, want %v", i, got, want)
		}
		if got.GetStdout() != nil || got.GetStderr() != nil {
			chunks = append(chunks, got)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if chunks[0] != chunks[1] || chunks[1] != chunks[2] {
		t.Error("output chunks came in new messages; want the client's one reused message")
	}
}

// A frame that says it is larger than the bound, or of a kind that does not
// go that way, ends the stream with an error instead of being read; a chunk
// larger than the bound is refused before anything is written.
func TestLeanFramingRefusesBadFrames(t *testing.T) {
	for name, head := range map[string][]byte{
		"too large":       header(kindStdout, 1, maxFrame+1),
		"wrong direction": header(kindStdin, 1, 1),
		"unknown kind":    header(9, 0, 1),
	} {
		a, b := net.Pipe()
		go func() { _, _ = a.Write(append(head, 'x')) }()
		_, err := newLeanClient(b).Receive()
		if !errors.Is(err, errFrame) {
			t.Errorf("%s: Receive: %v, want a malformed frame error", name, err)
		}
		a.Close()
		b.Close()
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := newLeanServer(a).Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stdout{Stdout: make([]byte, maxFrame+1)}}); err == nil {
		t.Error("a chunk larger than the bound was sent")
	}
}

func header(kind byte, seq uint64, n uint32) []byte {
	b := make([]byte, frameHead)
	b[0] = kind
	binary.BigEndian.PutUint64(b[1:], seq)
	binary.BigEndian.PutUint32(b[9:], n)
	return b
}

func identity(t *testing.T, ca *pki.CA, num uint32) *pki.Identity {
	return pkitest.Identity(t, ca, num, netip.MustParseAddr("127.0.0.1"))
}

// dialNet is node 1's network: RPC over memnet, connections of their own
// over real TLS to addr (node 2's port), counting the dials.
type dialNet struct {
	peer.Net
	tls   *peer.TLS
	dials atomic.Int32
}

func (d *dialNet) Dial(ctx context.Context, num uint32, proto string) (net.Conn, error) {
	d.dials.Add(1)
	return d.tls.Dial(ctx, num, proto)
}

// A relayed exec between two nodes whose ports both speak the exec
// stream's protocol goes over a TLS connection of its own, node 2 knowing
// node 1 by its certificate: the start, a large output in numbered chunks
// and the exit arrive; the stream is counted as "own".
func TestRelayOverItsOwnConnection(t *testing.T) {
	ca, err := pki.NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	mux, err := transport.Listen("127.0.0.1:0", identity(t, ca, 2), log)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	id1 := identity(t, ca, 1)
	mem := memnet.New()
	defer mem.Close()
	dn := &dialNet{Net: mem.Net(1), tls: &peer.TLS{
		Resolve: func(uint32) (string, bool) { return mux.Addr().String(), true },
		Raw:     func(proto string) *tls.Config { return id1.ClientTLS([]string{proto}) },
	}}
	out := randomBytes(1<<20 + 77)
	served := make(chan error, 1)
	go func() {
		c, err := mux.ExecListener().Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		if num, ok := transport.PeerNumOf(c); !ok || num != 1 {
			served <- errors.New("node 2 does not know the connection as node 1's")
			return
		}
		st := newLeanServer(c)
		defer st.linger()
		if m, err := st.Receive(); err != nil || m.GetStart() == nil {
			served <- errors.New("want a start first")
			return
		}
		seq := uint64(0)
		send := func(m *ssiv1.ExecOutput) {
			if err == nil {
				err = st.Send(m)
			}
		}
		send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Started{Started: &ssiv1.ExecStarted{Cpid: 2000001, Node: 2}}})
		for b := out; len(b) > 0; b = b[min(len(b), chunkSize):] {
			seq++
			send(&ssiv1.ExecOutput{Seq: seq, Msg: &ssiv1.ExecOutput_Stdout{Stdout: b[:min(len(b), chunkSize)]}})
		}
		send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{Code: 3}}})
		served <- err
	}()
	f := threeNodes(t)
	s := New(Config{Self: 1, Name: "t1", FSM: f, Net: dn, Log: log, OwnStreams: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := &cliStream{ctx: ctx}
	if err := s.relay(ctx, &ssiv1.ExecSpec{Argv: []string{"cat"}, Node: 2, HasCreds: true}, cli, f.Cluster().Nodes[2], nil); err != nil {
		t.Fatalf("relay: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("node 2: %v", err)
	}
	var got []byte
	var exit *ssiv1.ExecExit
	for _, m := range cli.msgs {
		got = append(got, m.GetStdout()...)
		if e := m.GetExit(); e != nil {
			exit = e
		}
	}
	if !bytes.Equal(got, out) || exit.GetCode() != 3 {
		t.Fatalf("the CLI got %d bytes (equal: %v) and exit %v; want %d bytes and code 3", len(got), bytes.Equal(got, out), exit, len(out))
	}
	if own, rpc := s.streams.own.Load(), s.streams.rpc.Load(); own != 1 || rpc != 0 {
		t.Errorf("streams: own %d, rpc %d; want 1 and 0", own, rpc)
	}
}

// A node whose port does not offer the exec stream's protocol (an older
// release: here a TLS port that speaks only h2) gets the Connect stream,
// and is not asked again for a while; a network that opens no connections
// of its own (memnet) always gets the Connect stream.
func TestRelayFallsBackToRPC(t *testing.T) {
	ca, err := pki.NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	old, err := tls.Listen("tcp", "127.0.0.1:0", identity(t, ca, 2).ServerTLS([]string{transport.ProtoHTTP}))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	go func() {
		for {
			c, err := old.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	id1 := identity(t, ca, 1)
	mem := memnet.New()
	defer mem.Close()
	serveFake(mem, 2, func(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
		if m, err := st.Receive(); err != nil || m.GetStart() == nil {
			return errors.New("node 2: want a start")
		}
		if err := st.Send(&ssiv1.ExecOutput{Seq: 1, Msg: &ssiv1.ExecOutput_Stdout{Stdout: []byte("over rpc\n")}}); err != nil {
			return err
		}
		return st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{Code: 0}}})
	})
	dn := &dialNet{Net: mem.Net(1), tls: &peer.TLS{
		Resolve: func(uint32) (string, bool) { return old.Addr().String(), true },
		Raw:     func(proto string) *tls.Config { return id1.ClientTLS([]string{proto}) },
	}}
	f := threeNodes(t)
	log := slog.New(slog.DiscardHandler)
	for name, n := range map[string]peer.Net{"an older node": dn, "memnet": mem.Net(1)} {
		s := New(Config{Self: 1, Name: "t1", FSM: f, Net: n, Log: log, OwnStreams: true})
		for i := range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			cli := &cliStream{ctx: ctx}
			err := s.relay(ctx, &ssiv1.ExecSpec{Argv: []string{"cat"}, Node: 2, HasCreds: true}, cli, f.Cluster().Nodes[2], nil)
			cancel()
			if err != nil {
				t.Fatalf("%s, exec %d: relay: %v", name, i, err)
			}
			var got []byte
			for _, m := range cli.msgs {
				got = append(got, m.GetStdout()...)
			}
			if string(got) != "over rpc\n" {
				t.Fatalf("%s, exec %d: the CLI got %q", name, i, got)
			}
		}
		if own, rpc := s.streams.own.Load(), s.streams.rpc.Load(); own != 0 || rpc != 2 {
			t.Errorf("%s: streams: own %d, rpc %d; want 0 and 2", name, own, rpc)
		}
	}
	if d := dn.dials.Load(); d != 1 {
		t.Errorf("the older node was asked for the protocol %d times in two execs; want once", d)
	}
}

// The corked connection under TLS sends a large frame's records in one
// write(2).
func TestCorkedFrameIsOneWrite(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	w := &countingConn{Conn: a}
	k := transport.NewCorked(w)
	go func() { _, _ = io.Copy(io.Discard, b) }()
	f := newFrameConn(a)
	f.c, f.cork = &recordConn{k}, k
	if err := f.writeData(kindStdout, 1, make([]byte, 200<<10)); err != nil {
		t.Fatal(err)
	}
	if n := w.writes.Load(); n != 1 {
		t.Errorf("a 200 KiB frame took %d writes; want 1", n)
	}
}

type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(b []byte) (int, error) { c.writes.Add(1); return c.Conn.Write(b) }

// recordConn writes as crypto/tls does: 16 KiB records, one Write each.
type recordConn struct{ net.Conn }

func (c *recordConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		m, err := c.Conn.Write(b[:min(len(b), 16<<10)])
		n += m
		if err != nil {
			return n, err
		}
		b = b[m:]
	}
	return n, nil
}
