package procspace

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/peer/memnet"
	"github.com/ssi-cluster/ssi/internal/procs"
)

// chanStream is a relaying daemon's side of a stream to this node: the
// test feeds what it sends (in) and reads what comes back (out).
type chanStream struct {
	in  chan *ssiv1.ExecInput
	mu  sync.Mutex
	out []*ssiv1.ExecOutput
}

func newChanStream() *chanStream { return &chanStream{in: make(chan *ssiv1.ExecInput, 16)} }

func (c *chanStream) Receive() (*ssiv1.ExecInput, error) {
	m, ok := <-c.in
	if !ok {
		return nil, io.EOF
	}
	return m, nil
}

func (c *chanStream) Send(m *ssiv1.ExecOutput) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, m)
	return nil
}

func (c *chanStream) sent() []*ssiv1.ExecOutput {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*ssiv1.ExecOutput(nil), c.out...)
}

// arrivedCat is a cat job registered as having moved here with its stream
// at (stdin seq acked): the arrival a restore makes.
func arrivedCat(t *testing.T, acked uint64) (*Space, *procs.Job) {
	t.Helper()
	jobs, err := procs.NewManager(procs.Options{Node: 1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(jobs.Shutdown)
	s := New(Config{Self: 1, Name: "t1", Jobs: jobs, Log: slog.New(slog.DiscardHandler)})
	j, err := jobs.Start(context.Background(), procs.StartRequest{Argv: []string{"/bin/cat"}, Dir: "/", Pin: true,
		Caller: procs.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}})
	if err != nil {
		t.Fatal(err)
	}
	rj := j.Process()
	p := jobPipes(rj.Stdin(), rj.Stdout(), rj.Stderr())
	if p == nil {
		t.Fatal("cat has no pipes")
	}
	s.Arrive(j, Arrival{Pipes: [3]*os.File{p[0], p[1], p[2]}, OutSeq: 10, StdinAcked: acked})
	return s, j
}

// attachQuiesced attaches a stream to the job that arrived here and stops
// it for a move, as a migration does once the job is frozen.
func attachQuiesced(t *testing.T, s *Space, j *procs.Job) (*chanStream, *MoveState) {
	t.Helper()
	st := newChanStream()
	go func() { _ = s.attach(context.Background(), &ssiv1.ExecAttach{Cpid: int64(j.CPID)}, st) }()
	var ms *MoveState
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if ms, err = s.Quiesce(j.CPID); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quiesce: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return st, ms
}

func stdinMsg(seq uint64, s string) *ssiv1.ExecInput {
	return &ssiv1.ExecInput{Seq: seq, Msg: &ssiv1.ExecInput_Stdin{Stdin: []byte(s)}}
}

// A job that moved here had stdin up to seq 5 on its old node. The stream
// that follows it may send again what the old node had not acknowledged
// yet, seq 4 and 5 included: the job gets only what comes after. (The new
// node once wrote every chunk it received into the pipe.)
func TestArrivedStreamDropsDeliveredStdin(t *testing.T) {
	s, j := arrivedCat(t, 5)
	st := newChanStream()
	done := make(chan error, 1)
	go func() { done <- s.attach(context.Background(), &ssiv1.ExecAttach{Cpid: int64(j.CPID)}, st) }()
	st.in <- stdinMsg(4, "four\n")
	st.in <- stdinMsg(5, "five\n")
	st.in <- stdinMsg(6, "six\n")
	st.in <- &ssiv1.ExecInput{Seq: 7, Msg: &ssiv1.ExecInput_StdinEof{StdinEof: true}}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the job did not end after its stdin EOF")
	}
	close(st.in)
	var out []byte
	var seqs []uint64
	for _, m := range st.sent() {
		if b := m.GetStdout(); b != nil {
			out = append(out, b...)
			seqs = append(seqs, m.Seq)
		}
	}
	if string(out) != "six\n" {
		t.Errorf("the job got stdin %q, want only \"six\\n\"", out)
	}
	if len(seqs) == 0 || seqs[0] != 11 {
		t.Errorf("output seqs %v: want them to go on from the old node's 10", seqs)
	}
}

// A job that moved here starts from the old node's acknowledged count: moved
// on again before any new stdin, it reports that count (Arrive once
// restarted it at 0, and the stream that followed the next move sent the
// job again every chunk it still kept).
func TestArrivedStreamKeepsTheAckedCount(t *testing.T) {
	s, j := arrivedCat(t, 5)
	st, ms := attachQuiesced(t, s, j)
	if ms.StdinAcked != 5 || ms.OutSeq != 10 {
		t.Errorf("quiesced at stdin %d, output %d: want 5 and 10, where the old node stopped", ms.StdinAcked, ms.OutSeq)
	}
	if err := s.Resume(j.CPID, ms); err != nil {
		t.Fatal(err)
	}
	_ = j.Process().Signal(syscall.SIGKILL)
	close(st.in)
}

// A signal and a resize that reach a job's node while the job is frozen
// for a move are not delivered there: they are held, and delivered if the
// move fails (Resume); a signal the old node delivered is not delivered
// again when the stream that followed a move sends it again.
func TestControlHeldWhileFrozen(t *testing.T) {
	s, j := arrivedCat(t, 0)
	st, ms := attachQuiesced(t, s, j)
	ctlAcks := func() []uint64 {
		var a []uint64
		for _, m := range st.sent() {
			if v, ok := m.Msg.(*ssiv1.ExecOutput_CtlAck); ok {
				a = append(a, v.CtlAck)
			}
		}
		return a
	}
	st.in <- &ssiv1.ExecInput{Seq: 1, Msg: &ssiv1.ExecInput_Signal{Signal: int32(syscall.SIGTERM)}}
	time.Sleep(100 * time.Millisecond)
	select {
	case <-j.Done():
		t.Fatal("a signal that came while the job was frozen for a move was delivered")
	default:
	}
	if a := ctlAcks(); len(a) != 0 {
		t.Fatalf("a held signal was acknowledged: %v", a)
	}
	if err := s.Resume(j.CPID, ms); err != nil {
		t.Fatal(err)
	}
	select {
	case <-j.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the held SIGTERM was not delivered after Resume")
	}
	if a := ctlAcks(); len(a) != 1 || a[0] != 1 {
		t.Errorf("acknowledgements %v, want [1]", a)
	}
	close(st.in)
}

// The relay keeps signals and resizes until the process's node says it
// delivered them, and sends again, on the stream to the node the process
// moved to, those it did not: the one the old node held (it came while
// the process was frozen) and the one sent while the relay was switching
// arrive there, once each; the one the old node delivered does not. (The
// relay once sent them at once and forgot them: the last two were lost.)
func TestRelayReplaysSignalsAfterAMove(t *testing.T) {
	net := memnet.New()
	defer net.Close()
	const cpid = 2000001
	moved := make(chan struct{})
	serveFake(net, 2, func(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
		if m, err := st.Receive(); err != nil || m.GetStart() == nil {
			return errors.New("node 2: want a start")
		}
		if err := st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Started{Started: &ssiv1.ExecStarted{Cpid: cpid, Node: 2, Migratable: true}}}); err != nil {
			return err
		}
		delivered, err := st.Receive() // SIGUSR1: delivered
		if err != nil || delivered.GetSignal() != int32(syscall.SIGUSR1) {
			return errors.New("node 2: want SIGUSR1")
		}
		if err := st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_CtlAck{CtlAck: delivered.Seq}}); err != nil {
			return err
		}
		if m, err := st.Receive(); err != nil || m.GetSignal() != int32(syscall.SIGUSR2) {
			return errors.New("node 2: want SIGUSR2")
		} // held: the process is frozen
		defer close(moved)
		return st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Moved{Moved: &ssiv1.ExecMoved{Node: 3, CtlAcked: delivered.Seq}}})
	})
	got := make(chan []string, 1)
	serveFake(net, 3, func(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
		var g []string
		defer func() { got <- g }()
		if m, err := st.Receive(); err != nil || m.GetAttach().GetCpid() != cpid {
			return errors.New("node 3: want an attach")
		}
		for {
			m, err := st.Receive()
			if err != nil {
				return err
			}
			switch v := m.Msg.(type) {
			case *ssiv1.ExecInput_Signal:
				g = append(g, syscall.Signal(v.Signal).String())
			case *ssiv1.ExecInput_Resize:
				g = append(g, "resize")
			}
			if len(g) == 3 {
				return st.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{Code: 0}}})
			}
		}
	})
	net.Delay(1, 3, 300*time.Millisecond) // the relay is slow to reach the new node

	f := threeNodes(t)
	s := New(Config{Self: 1, Name: "t1", FSM: f, Net: net.Net(1), Log: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := &cliStream{ctx: ctx, in: make(chan *ssiv1.ExecInput, 8)}
	spec := &ssiv1.ExecSpec{Argv: []string{"cat"}, Node: 2, HasCreds: true, Tty: true}
	relayed := make(chan error, 1)
	go func() { relayed <- s.relay(ctx, spec, cli, f.Cluster().Nodes[2], nil) }()
	cli.in <- &ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Signal{Signal: int32(syscall.SIGUSR1)}}
	cli.in <- &ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Signal{Signal: int32(syscall.SIGUSR2)}}
	<-moved
	time.Sleep(100 * time.Millisecond) // the old stream's end reaches the relay
	cli.in <- &ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Signal{Signal: int32(syscall.SIGINT)}}
	cli.in <- &ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Resize{Resize: &ssiv1.Resize{Rows: 30, Cols: 100}}}
	select {
	case g := <-got:
		want := []string{syscall.SIGUSR2.String(), syscall.SIGINT.String(), "resize"}
		if len(g) != len(want) || g[0] != want[0] || g[1] != want[1] || g[2] != want[2] {
			t.Errorf("the new node got %q, want %q", g, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new node never got the signals and the resize")
	}
	select {
	case err := <-relayed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
	}
}

// What was typed on a terminal and not read yet, a partial line
// included, is taken out of it, and given to a new terminal without a
// second echo; the settings of both stay what they were.
func TestTerminalInputMoves(t *testing.T) {
	old, err := NewTerminal(uint32(os.Getuid()), nil, 24, 80)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	tio, err := unix.IoctlGetTermios(rawFD(old.Slave), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&unix.ICANON == 0 || tio.Lflag&unix.ECHO == 0 {
		t.Fatal("a new terminal is not canonical with echo")
	}
	if err := writeTTY(old.Master, []byte("line\npart")); err != nil {
		t.Fatal(err)
	}
	echo := readFor(old.Master, 200*time.Millisecond)
	if !bytes.Contains(echo, []byte("part")) {
		t.Fatalf("the old terminal echoed %q", echo)
	}
	slave, err := openSlave(old.Master)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := takeInput(slave, tio)
	slave.Close()
	if err != nil {
		t.Fatal(err)
	}
	if string(pending) != "line\npart" {
		t.Fatalf("took back %q, want \"line\\npart\"", pending)
	}
	after, _ := unix.IoctlGetTermios(rawFD(old.Slave), unix.TCGETS)
	if *after != *tio {
		t.Error("taking the input back changed the old terminal's settings")
	}

	ws, _ := unix.IoctlGetWinsize(rawFD(old.Slave), unix.TIOCGWINSZ)
	nt, err := NewTerminal(uint32(os.Getuid()), EncodeTermios(tio), ws.Row, ws.Col)
	if err != nil {
		t.Fatal(err)
	}
	defer nt.Close()
	if err := giveInput(nt.Master, nil, pending); err != nil {
		t.Fatal(err)
	}
	if echo := readFor(nt.Master, 200*time.Millisecond); len(echo) != 0 {
		t.Errorf("the new terminal echoed %q again", echo)
	}
	got, _ := unix.IoctlGetTermios(rawFD(nt.Slave), unix.TCGETS)
	if *got != *tio {
		t.Error("the new terminal's settings are not the old one's")
	}
	if nws, _ := unix.IoctlGetWinsize(rawFD(nt.Slave), unix.TIOCGWINSZ); nws.Row != 24 || nws.Col != 80 {
		t.Errorf("the new terminal is %dx%d, want 80x24", nws.Col, nws.Row)
	}
	_ = unix.SetNonblock(rawFD(nt.Slave), true)
	if read := readFor(nt.Slave, 200*time.Millisecond); string(read) != "line\npart" {
		t.Errorf("the job reads %q from the new terminal, want \"line\\npart\"", read)
	}
	key, err := TTYKey(nt.Slave)
	if err != nil || len(key) < len("tty[1:1]") || key[:4] != "tty[" {
		t.Errorf("CRIU key %q, %v", key, err)
	}
}

// readFor reads what f gives within d.
func readFor(f *os.File, d time.Duration) []byte {
	var out []byte
	buf := make([]byte, 4096)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		n, err := unix.Read(rawFD(f), buf)
		if n > 0 {
			out = append(out, buf[:n]...)
			continue
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return out
}

// A signal sent from outside the stream (kill, the CLI's ^C) while the
// job is frozen for a move waits for the move to be decided: delivered
// here after a Resume (after a Commit, this node has no such job and
// Control.Signal asks the node that has it). It once went into the frozen
// copy, which a commit then ended with it.
func TestSignalWaitsForTheMove(t *testing.T) {
	s, j := arrivedCat(t, 0)
	st, ms := attachQuiesced(t, s, j)
	defer close(st.in)
	signalled := make(chan error, 1)
	go func() {
		_, err := s.Service().Signal(context.Background(), connect.NewRequest(&ssiv1.SignalRequest{Cpid: int64(j.CPID), Signal: int32(syscall.SIGTERM), HasUid: true}))
		signalled <- err
	}()
	select {
	case err := <-signalled:
		t.Fatalf("the signal went into the frozen job (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := s.Resume(j.CPID, ms); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-signalled:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the signal still waits after Resume")
	}
	select {
	case <-j.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not end the job")
	}
}

// With the job frozen, the old node takes everything out of its terminal:
// what the job wrote and the daemon had not read (sent on the stream,
// numbered), what was typed and the job had not read, and the terminal's
// key, settings and size.
func TestTakeBackTTY(t *testing.T) {
	term, err := NewTerminal(uint32(os.Getuid()), nil, 33, 99)
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	var mu sync.Mutex
	var sent []*ssiv1.ExecOutput
	m := &movable{tty: term.Master, out: &sender{send: func(o *ssiv1.ExecOutput) error {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, o)
		return nil
	}}}
	// The job wrote, and someone typed half a line.
	if _, err := term.Slave.Write([]byte("written")); err != nil {
		t.Fatal(err)
	}
	if err := writeTTY(term.Master, []byte("typed")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the echo of what was typed goes back too
	st := &MoveState{}
	if err := m.takeBackTTY(st); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, o := range sent {
		out = append(out, o.GetStdout()...)
	}
	if string(out) != "writtentyped" {
		t.Errorf("sent %q, want what the job wrote and the echo: \"writtentyped\"", out)
	}
	if len(sent) == 0 || sent[0].Seq != 1 {
		t.Errorf("output not numbered: %v", sent)
	}
	if string(st.StdinPending) != "typed" {
		t.Errorf("unread input %q, want \"typed\"", st.StdinPending)
	}
	key, _ := TTYKey(term.Slave)
	if st.TTYKey != key || st.Rows != 33 || st.Cols != 99 {
		t.Errorf("key %q size %dx%d, want %q 99x33", st.TTYKey, st.Cols, st.Rows, key)
	}
	tio, _ := unix.IoctlGetTermios(rawFD(term.Slave), unix.TCGETS)
	if got, err := DecodeTermios(st.Termios); err != nil || *got != *tio {
		t.Errorf("settings %v (%v), want the terminal's", got, err)
	}
}
