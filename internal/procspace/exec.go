package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"syscall"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// chunkSize is the largest output chunk sent in one message.
const chunkSize = 256 << 10

// pipeSize is what the job's stdio pipes are grown to (Linux caps it at
// /proc/sys/fs/pipe-max-size, 1 MiB by default).
const pipeSize = 1 << 20

// execStream is one side of an exec stream (a server stream from the CLI or
// a peer, or a client stream to a peer), reduced to what the pumps need.
// Send does not keep the message once it returns (connect marshals it
// before), so the output pumps reuse their buffers.
type execStream interface {
	Receive() (*ssiv1.ExecInput, error)
	Send(*ssiv1.ExecOutput) error
}

// sender serializes Send (the stdout, stderr, ack and control pumps share
// it) and numbers the output chunks in the order they go out.
type sender struct {
	mu   sync.Mutex
	send func(*ssiv1.ExecOutput) error
	seq  uint64
	dead bool
}

// close makes every later Send fail; it waits for a Send in progress. A
// handler calls it before it returns: writing to a stream after that
// panics in net/http.
func (l *sender) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dead = true
}

func (l *sender) Send(m *ssiv1.ExecOutput) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return errors.New("client gone")
	}
	switch m.Msg.(type) {
	case *ssiv1.ExecOutput_Stdout, *ssiv1.ExecOutput_Stderr:
		l.seq++
		m.Seq = l.seq
	}
	if err := l.send(m); err != nil {
		l.dead = true
		return err
	}
	return nil
}

func execError(code int32, format string, a ...any) *ssiv1.ExecOutput {
	return &ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Error{Error: &ssiv1.ExecError{ExitCode: code, Message: fmt.Sprintf(format, a...)}}}
}

// Exec (Control) starts a process for the local CLI, here or on another node.
func (c *Control) Exec(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
	s := c.s
	caller, err := callerFrom(ctx)
	if err != nil {
		return err
	}
	first, err := st.Receive()
	if err != nil {
		return err
	}
	spec := first.GetStart()
	if spec == nil || len(spec.Argv) == 0 {
		return st.Send(execError(255, "node %d: the first message must start a command", s.cfg.Self))
	}
	spec.Uid, spec.Gid, spec.Groups, spec.HasCreds = caller.UID, caller.GID, caller.Groups, true
	// The CLI's own stdin, stdout and stderr, when it passed them: this
	// daemon reads and writes them itself, for this request only. They are
	// never forwarded; a terminal or detached job streams as before.
	var stdio *passedStdio
	if fds := transport.TakeFDs(ctx); spec.StdioPassed {
		spec.StdioPassed = false
		if stdio, err = takeStdio(fds); err != nil {
			return st.Send(execError(255, "node %d: %v (check that the CLI and the daemon are the same ssi release)", s.cfg.Self, err))
		}
		defer stdio.close()
		if spec.Tty || spec.Detach {
			stdio.stop.stop()
			stdio = nil
		}
	} else {
		for _, f := range fds {
			f.Close()
		}
	}
	target := spec.Node
	cl := s.cfg.FSM.Cluster()
	if target == 0 {
		if len(spec.Nodes) > 0 {
			// The least-loaded of the nodes the job may run on.
			var except []uint32
			for num := range cl.Nodes {
				if !slices.Contains(spec.Nodes, num) {
					except = append(except, num)
				}
			}
			target, err = s.cfg.Placer.FastestExcept(ctx, except...)
		} else {
			target, err = s.cfg.Placer.Fastest(ctx)
		}
		if err != nil {
			return st.Send(execError(255, "%v", err))
		}
		spec.Node = target
	}
	if len(spec.Nodes) > 0 && !slices.Contains(spec.Nodes, target) {
		return st.Send(execError(2, "node %d is not one of the nodes the job may run on (%v)", target, spec.Nodes))
	}
	n, ok := cl.Nodes[target]
	if !ok {
		return st.Send(execError(255, "node %d is not in the node table of cluster %s (see 'cluster -V')", target, cl.Name))
	}
	if n.State != state.Up {
		return st.Send(execError(255, "node %d (%s) is %s; run it elsewhere or bring the node up", target, n.Name, n.State))
	}
	if cl.IsBlocked(target) {
		return st.Send(execError(1, "node %d (%s) is blocked: it takes no new jobs (ssi node unblock %d)", target, n.Name, target))
	}
	if target == s.cfg.Self && (stdio != nil || spec.Detach || spec.Pin) {
		return s.runLocal(ctx, spec, st, false, stdio)
	}
	// A job elsewhere, or an attached job here whose CLI streams its stdio
	// (a terminal, SSI_STREAM_STDIO), which is relayed through a stream to
	// this node itself so that it can follow a move (localmove.go).
	return s.relay(ctx, spec, st, n, stdio)
}

// Exec (Process) runs a process another node asked for.
func (p *Service) Exec(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
	first, err := st.Receive()
	if err != nil {
		return err
	}
	return p.s.serveExec(ctx, first, st)
}

// serveExec serves an exec stream from another node whose first message
// was first, over RPC or over a connection of its own (lean.go).
func (s *Space) serveExec(ctx context.Context, first *ssiv1.ExecInput, st execStream) error {
	if at := first.GetAttach(); at != nil {
		return s.attach(ctx, at, st)
	}
	spec := first.GetStart()
	if spec == nil || len(spec.Argv) == 0 || !spec.HasCreds {
		return st.Send(execError(255, "node %d: malformed exec request", s.cfg.Self))
	}
	spec.StdioPassed = false // descriptors do not cross nodes
	return s.runLocal(ctx, spec, st, true, nil)
}

// runLocal starts spec on this node and pumps its streams. With ack, it
// acknowledges stdin to the relaying daemon (ExecOutput.stdin_ack). With
// stdio (the CLI's own descriptors), the job's pipes are pumped to and
// from them directly and the stream carries only started and the end.
func (s *Space) runLocal(ctx context.Context, spec *ssiv1.ExecSpec, st execStream, ack bool, stdio *passedStdio) error {
	out := &sender{send: st.Send}
	defer out.close() // the stdin writer may still want to acknowledge
	j, err := s.cfg.Jobs.Start(ctx, procs.StartRequest{
		Argv: spec.Argv, Env: spec.Env, Dir: spec.Dir, Caller: procs.Caller{UID: spec.Uid, GID: spec.Gid, Groups: spec.Groups},
		TTY: spec.Tty, Rows: uint16(spec.Rows), Cols: uint16(spec.Cols), Detach: spec.Detach, Pin: spec.Pin, Nodes: spec.Nodes, Net: spec.Net,
	})
	if err != nil {
		code := int32(255)
		switch {
		case errors.Is(err, rexec.ErrNotFound):
			code = 127
		case errors.Is(err, rexec.ErrNotExecutable):
			code = 126
		case errors.Is(err, procs.ErrNoNet), errors.As(err, new(*state.Error)):
			code = 1 // the cluster refused: --net here, no free address
		}
		return out.Send(execError(code, "node %d (%s): %v", s.cfg.Self, s.cfg.Name, err))
	}
	rj := j.Process()
	pipes := jobPipes(rj.Stdin(), rj.Stdout(), rj.Stderr())
	if pipes == nil {
		stdio = nil // not pipes (cannot happen without a terminal): stream
	}
	if err := out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Started{Started: &ssiv1.ExecStarted{
		Cpid: int64(j.CPID), Node: s.cfg.Self, Pid: int32(rj.MainPid()), NodeName: s.cfg.Name, Migratable: rj.Migratable() && !spec.Pin,
		StdioPassed: stdio != nil,
	}}}); err != nil && !spec.Detach {
		_ = rj.Signal(syscall.SIGHUP)
	}
	if spec.Detach {
		s.log.Info("detached job started", "cpid", j.CPID, "uid", spec.Uid, "cmd", spec.Argv[0])
		return nil
	}
	finish := sync.OnceFunc(func() { s.cfg.Jobs.Finish(j) })
	defer finish()
	// Bigger pipes mean fewer, larger reads and messages on a busy stream.
	for _, f := range []any{rj.Stdin(), rj.Stdout(), rj.Stderr()} {
		if pf, ok := f.(interface{ Fd() uintptr }); ok {
			_, _ = unix.FcntlInt(pf.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		}
	}
	if stdio != nil {
		to, p, err := s.pumpPassed(st, out, j, pipes, stdio, rj.Migratable() && !spec.Pin)
		if to == 0 {
			return err
		}
		// It moved: this node relays its stream now (localmove.go); the
		// copy that was here ends, and its record with it.
		go finish()
		out.close()
		return s.relayMoved(ctx, spec, st, p, to)
	}
	if ack && rj.Migratable() && !spec.Pin {
		// Relayed by a client's daemon: the stream can follow the job
		// when it migrates (move.go, ttymove.go).
		if spec.Tty && rj.Terminal() != nil {
			return s.serveMovable(ctx, st, out, j, [3]*os.File{}, rj.Terminal(), streamAt{})
		}
		if pipes != nil && !spec.Tty {
			return s.serveMovable(ctx, st, out, j, [3]*os.File{pipes[0], pipes[1], pipes[2]}, nil, streamAt{})
		}
	}

	// Input. Stdin goes through a queue to its own writer, so that signals
	// and resizes take effect at once even while the job does not read its
	// stdin. A client that goes away hangs up the process, as ssh does.
	q := newStdinQueue(2 * Window)
	defer func() { q.close(); _ = rj.Stdin().Close() }() // a writer stuck on a full pipe lets go
	// A relay keeps a numbered signal or resize until it hears it was
	// delivered.
	ackCtl := func(seq uint64) {
		if ack && seq != 0 {
			_ = out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_CtlAck{CtlAck: seq}})
		}
	}
	go func() {
		defer q.close()
		var n uint64 // stdin messages seen: their seq when the sender gives none
		for {
			m, err := st.Receive()
			if err != nil {
				s.hangUp(j, err)
				return
			}
			switch v := m.Msg.(type) {
			case *ssiv1.ExecInput_Stdin:
				n++
				q.push(stdinItem{seq: max(m.Seq, n), data: v.Stdin})
			case *ssiv1.ExecInput_StdinEof:
				n++
				q.push(stdinItem{seq: max(m.Seq, n), eof: true})
			case *ssiv1.ExecInput_Signal:
				_ = rj.Signal(syscall.Signal(v.Signal))
				ackCtl(m.Seq)
			case *ssiv1.ExecInput_Resize:
				_ = rj.Resize(uint16(v.Resize.Rows), uint16(v.Resize.Cols))
				ackCtl(m.Seq)
			}
		}
	}()
	go func() {
		stdin := rj.Stdin()
		defer stdin.Close()
		open := true
		var unacked int
		for {
			it, more, ok := q.pop()
			if !ok {
				return
			}
			if open && it.eof {
				stdin.Close()
				open = false
			} else if open {
				if _, err := stdin.Write(it.data); err != nil {
					stdin.Close()
					open = false // the job closed its stdin: the rest is dropped
				}
			}
			unacked += len(it.data)
			if ack && (!more || it.eof || unacked >= Window/4) {
				_ = out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_StdinAck{StdinAck: it.seq}})
				unacked = 0
			}
		}
	}()
	var wg sync.WaitGroup
	pump := func(r io.Reader, wrap func([]byte) *ssiv1.ExecOutput) {
		defer wg.Done()
		buf := make([]byte, chunkSize)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				// Send has marshalled the chunk when it returns (see
				// execStream): buf is read into again without a copy.
				if out.Send(wrap(buf[:n])) != nil {
					_ = rj.Signal(syscall.SIGHUP)
				}
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go pump(rj.Stdout(), func(b []byte) *ssiv1.ExecOutput { return &ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stdout{Stdout: b}} })
	go pump(rj.Stderr(), func(b []byte) *ssiv1.ExecOutput { return &ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stderr{Stderr: b}} })
	wg.Wait()
	return s.sendExit(out, j)
}

// sendExit waits for the job's end and sends its status.
func (s *Space) sendExit(out *sender, j *procs.Job) error {
	<-j.Done()
	status, werr := j.Status()
	if werr != nil {
		return out.Send(execError(255, "node %d: waiting for %d: %v", s.cfg.Self, j.CPID, werr))
	}
	return out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{
		Code: int32(status.ExitCode()), Signal: int32(status.Signal), Core: status.Core}}})
}

// hangUp sends SIGHUP to a job whose client went away (err says how),
// unless it has ended already: as ssh does.
func (s *Space) hangUp(j *procs.Job, err error) {
	select {
	case <-j.Done():
	default:
		s.log.Debug("client gone; sending SIGHUP", "cpid", j.CPID, "err", err)
		_ = j.Process().Signal(syscall.SIGHUP)
	}
}

type stdinItem struct {
	seq  uint64
	data []byte
	eof  bool
}

// stdinQueue hands stdin from the stream's receiver to the job's writer,
// bounded in bytes: a sender that keeps to the relay's window never fills
// it, so the receiver never waits and signals are never held up.
type stdinQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []stdinItem
	bytes  int
	limit  int
	closed bool
	paused bool
}

func newStdinQueue(limit int) *stdinQueue {
	q := &stdinQueue{limit: limit}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *stdinQueue) push(it stdinItem) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.bytes > 0 && q.bytes+len(it.data) > q.limit && !q.closed {
		q.cond.Wait()
	}
	q.items = append(q.items, it)
	q.bytes += len(it.data)
	q.cond.Broadcast()
}

// pop returns the next item and whether more are queued; ok is false once
// the queue is closed and empty.
func (q *stdinQueue) pop() (it stdinItem, more, ok bool) {
	return q.popUnlessPaused() // a queue nobody pauses
}

// pause makes popUnlessPaused return at once, keeping the queue.
func (q *stdinQueue) pause() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.paused = true
	q.cond.Broadcast()
}

func (q *stdinQueue) unpause() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.paused = false
}

// popUnlessPaused is pop that gives up (ok false) when the queue is paused.
func (q *stdinQueue) popUnlessPaused() (it stdinItem, more, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 || q.paused {
		if q.closed && len(q.items) == 0 || q.paused {
			return stdinItem{}, false, false
		}
		q.cond.Wait()
	}
	it = q.items[0]
	q.items = q.items[1:]
	q.bytes -= len(it.data)
	q.cond.Broadcast()
	return it, len(q.items) > 0, true
}

// pushFront puts an item back first in line.
func (q *stdinQueue) pushFront(it stdinItem) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.items = append([]stdinItem{it}, q.items...)
	q.bytes += len(it.data)
	q.cond.Broadcast()
}

func (q *stdinQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// jobPipes is the job's stdin, stdout and stderr when all three are pipes
// (*os.File), else nil.
func jobPipes(in io.WriteCloser, stdout, stderr io.Reader) []*os.File {
	var fs []*os.File
	for _, x := range []any{in, stdout, stderr} {
		f, ok := x.(*os.File)
		if !ok {
			return nil
		}
		fs = append(fs, f)
	}
	return fs
}
