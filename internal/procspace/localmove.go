package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// A job whose CLI runs on the job's own node and passed its stdin, stdout
// and stderr (stdio.go) is spliced between those and the job's pipes
// (pumpPassed). It can move all the same: Quiesce stops the splices once
// the frozen job's output pipes are empty (all of it is in the CLI's
// descriptors) and takes back what the job has not read of its stdin,
// with what the splice had read from the CLI and not yet written; Resume
// puts it back and splices on. At the commit this node turns into the
// client's daemon of the remote case: relayOn runs between the CLI's
// descriptors (and its Control.Exec stream) and the job's new node, as if
// the job had sent ExecMoved, so the rest is relay.go's and move.go's code.
// The stream stays relayed for good, also if the job comes back here.

// passedMove is a job spliced to its CLI's passed stdio that can move.
type passedMove struct {
	s     *Space
	j     *procs.Job
	pipes []*os.File // the job's stdin (write), stdout and stderr (read)
	keys  [3]string
	stdio *passedStdio

	mu       sync.Mutex
	phase    *stopper       // stops the current splices
	running  sync.WaitGroup // the current splices
	frozen   bool           // Quiesce: splices stopped
	moved    bool           // Commit
	over     bool           // the job ended: it does not move any more
	settled  chan struct{}  // closed when the move that stopped the splices is decided
	closed   bool           // the job's stdin is closed
	eof      [2]bool        // stdout, stderr reached EOF
	leftover []byte         // read from the CLI's stdin, not yet in the job's pipe
	held     []*ssiv1.ExecInput
	heldErr  error // the CLI's stream ended while the job was frozen

	outDone chan struct{} // both outputs reached EOF
	outOnce sync.Once
	to      chan uint32      // Commit: the job's new node
	in      chan streamInput // the CLI's stream after the commit
	done    chan struct{}    // the handler returns
}

type streamInput struct {
	m   *ssiv1.ExecInput
	err error
}

func (s *Space) passedOf(cpid vproc.CPID) *passedMove {
	s.movMu.Lock()
	defer s.movMu.Unlock()
	return s.passed[cpid]
}

// pumpPassed runs a job on this node whose stdio is the CLI's own: it
// splices the CLI's stdin into the job's and the job's stdout and stderr
// into the CLI's, and sends on the stream only the end. The stream's
// receiving side still tells when the client is gone (SIGHUP, as ssh),
// and then nothing more is written to the CLI's descriptors: the job's
// output is drained and dropped. With movable, the job can migrate
// (above); it returns the node it moved to (0: it ended here).
func (s *Space) pumpPassed(st execStream, out *sender, j *procs.Job, pipes []*os.File, stdio *passedStdio, movable bool) (uint32, *passedMove, error) {
	p := &passedMove{s: s, j: j, pipes: pipes, stdio: stdio, outDone: make(chan struct{}),
		to: make(chan uint32, 1), in: make(chan streamInput), done: make(chan struct{})}
	defer close(p.done)
	for i, f := range pipes {
		var fst unix.Stat_t
		if err := unix.Fstat(rawFD(f), &fst); err == nil {
			p.keys[i] = fmt.Sprintf("pipe:[%d]", fst.Ino)
		}
	}
	_ = unix.SetNonblock(rawFD(pipes[0]), true) // the daemon's own end
	go p.receive(st)
	if err := p.start(); err != nil {
		_ = j.Process().Signal(syscall.SIGHUP)
		<-j.Done()
		return 0, nil, out.Send(execError(255, "node %d (%s): %v", s.cfg.Self, s.cfg.Name, err))
	}
	if movable {
		defer register(&s.movMu, s.passed, j.CPID, p)()
	}
	select {
	case to := <-p.to:
		p.closePhase()
		return to, p, nil
	case <-p.outDone:
	}
	<-j.Done()
	p.mu.Lock()
	p.over = true
	moving := p.frozen
	p.mu.Unlock()
	if moving {
		// A move froze it after it had ended: wait for its outcome (it
		// cannot have moved: CRIU finds no process).
		select {
		case to := <-p.to:
			p.closePhase()
			return to, p, nil
		case <-p.settledCh():
		}
	}
	p.mu.Lock()
	if p.phase != nil {
		p.phase.stop() // the stdin splice ends with the job
	}
	p.mu.Unlock()
	p.running.Wait()
	p.closePhase()
	status, werr := j.Status()
	if werr != nil {
		return 0, nil, out.Send(execError(255, "node %d: waiting for %d: %v", s.cfg.Self, j.CPID, werr))
	}
	return 0, nil, out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{
		Code: int32(status.ExitCode()), Signal: int32(status.Signal), Core: status.Core}}})
}

func (p *passedMove) settledCh() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.settled == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.settled
}

// receive reads the CLI's stream: signals and resizes go to the job (held
// while it is frozen for a move), the end hangs the job up; after the
// commit, everything goes to the relay (p.in).
func (p *passedMove) receive(st execStream) {
	for {
		m, err := st.Receive()
		p.mu.Lock()
		switch {
		case p.moved:
			p.mu.Unlock()
			select {
			case p.in <- streamInput{m, err}:
			case <-p.done:
				return
			}
			if err != nil {
				return
			}
			continue
		case p.frozen && err != nil:
			p.heldErr = err
		case p.frozen:
			p.held = append(p.held, m)
		case err != nil:
			// Nothing more goes to or comes from the CLI's descriptors.
			p.stdio.stop.stop()
			if p.phase != nil {
				p.phase.stop()
			}
			p.mu.Unlock()
			p.s.hangUp(p.j, err)
			return
		default:
			p.deliver(m)
		}
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// deliver hands a signal or a resize to the job.
func (p *passedMove) deliver(m *ssiv1.ExecInput) {
	rj := p.j.Process()
	switch v := m.Msg.(type) {
	case *ssiv1.ExecInput_Signal:
		_ = rj.Signal(syscall.Signal(v.Signal))
	case *ssiv1.ExecInput_Resize:
		_ = rj.Resize(uint16(v.Resize.Rows), uint16(v.Resize.Cols))
	}
}

// start runs the splices until they end or the phase stops.
func (p *passedMove) start() error {
	stop, err := newStopper()
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.phase, p.frozen = stop, false
	if p.settled != nil {
		close(p.settled)
		p.settled = nil
	}
	closed, eof := p.closed, p.eof
	p.mu.Unlock()
	for i := range 2 {
		if eof[i] {
			continue
		}
		p.running.Add(1)
		go p.pump(i, stop)
	}
	if !closed {
		p.running.Add(1)
		go p.pumpIn(stop)
	}
	return nil
}

func (p *passedMove) closePhase() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.phase != nil {
		p.phase.close()
		p.phase = nil
	}
}

// pump splices the job's stdout (i 0) or stderr (1) into the CLI's.
func (p *passedMove) pump(i int, stop *stopper) {
	defer p.running.Done()
	src, dst := p.pipes[1+i], p.stdio.out
	if i == 1 {
		dst = p.stdio.err
	}
	buf := make([]byte, 64<<10)
	rerr, werr := copyFDUntil(rawFD(dst), rawFD(src), stop.fd, p.stdio.stop.fd, buf)
	rj := p.j.Process()
	switch {
	case errors.Is(rerr, errStopped) && werr == nil:
		p.mu.Lock()
		phaseOnly := p.frozen || p.over
		p.mu.Unlock()
		if phaseOnly {
			return // Quiesce: the pipe is empty
		}
	case errors.Is(werr, unix.EPIPE):
		_ = rj.Signal(syscall.SIGPIPE) // as a local job writing into a closed pipe
	case werr != nil:
		p.s.log.Debug("cannot write the output to the CLI; sending SIGHUP", "cpid", p.j.CPID, "err", werr)
		_ = rj.Signal(syscall.SIGHUP)
	case rerr != nil:
		p.s.log.Debug("cannot read the output", "cpid", p.j.CPID, "err", rerr)
	}
	if werr != nil || rerr != nil {
		drain(rawFD(src), buf)
	}
	p.mu.Lock()
	p.eof[i] = true
	both := p.eof[0] && p.eof[1]
	p.mu.Unlock()
	if both {
		p.outOnce.Do(func() { close(p.outDone) })
	}
}

// pumpIn moves the CLI's stdin into the job's: spliced where it can be
// (nothing then is ever in between), else read and written, and what was
// read and not written when the phase stops is kept (leftover). EOF, or
// a job that closed its stdin, closes the job's pipe; the rest of the
// CLI's stdin stays unread, as with a local pipe.
func (p *passedMove) pumpIn(stop *stopper) {
	defer p.running.Done()
	src, dst := rawFD(p.stdio.in), rawFD(p.pipes[0])
	p.mu.Lock()
	pending := p.leftover
	p.leftover = nil
	p.mu.Unlock()
	keep := func(b []byte) {
		p.mu.Lock()
		p.leftover = b
		p.mu.Unlock()
	}
	finish := func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		_ = p.pipes[0].Close()
	}
	canSplice := true
	buf := make([]byte, 64<<10)
	for {
		if len(pending) > 0 {
			err := writeFD(dst, pending, stop.fd)
			if err == nil {
				pending = nil
				continue
			}
			if errors.Is(err, errStopped) {
				keep(pending)
				return
			}
			finish() // the job closed its stdin
			return
		}
		if err := waitFD(src, unix.POLLIN, stop.fd); errors.Is(err, errStopped) {
			return
		} else if err != nil {
			finish()
			return
		}
		if canSplice {
			if err := waitFD(dst, unix.POLLOUT, stop.fd); errors.Is(err, errStopped) {
				return
			}
			n, err := unix.Splice(src, nil, dst, nil, spliceMax, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case n > 0, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				continue
			case err == nil: // EOF
				finish()
				return
			case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP):
				canSplice = false
			default:
				finish()
				return
			}
		}
		n, err := readFD(src, buf, stop.fd)
		if errors.Is(err, errStopped) {
			return
		}
		if err != nil || n == 0 {
			finish()
			return
		}
		pending = append([]byte(nil), buf[:n]...)
	}
}

// quiesce stops the splices of the frozen job for a move (Space.Quiesce).
func (p *passedMove) quiesce() (*MoveState, error) {
	p.mu.Lock()
	if p.frozen || p.moved || p.over {
		p.mu.Unlock()
		return nil, fmt.Errorf("process %d is moving already or has ended", p.j.CPID)
	}
	p.frozen = true
	p.settled = make(chan struct{})
	stop := p.phase
	p.mu.Unlock()
	stop.stop()
	p.running.Wait() // the outputs are in the CLI's descriptors
	p.closePhase()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	st := &MoveState{Keys: p.keys, StdinClosed: closed}
	copy(st.Pipes[:], p.pipes)
	if !closed {
		pending, err := takeBackStdin(p.pipes[0])
		if err != nil {
			_ = p.resume(pending)
			return nil, fmt.Errorf("process %d: %w", p.j.CPID, err)
		}
		p.mu.Lock()
		st.StdinPending = append(pending, p.leftover...)
		p.mu.Unlock()
		p.s.log.Debug("a job spliced to its CLI stops for a move", "cpid", p.j.CPID, "unread", len(pending), "leftover", len(st.StdinPending)-len(pending))
	}
	return st, nil
}

// resumeFrom undoes quiesce, whose state was st (Space.Resume).
func (p *passedMove) resumeFrom(st *MoveState) error {
	var back []byte
	if st != nil {
		p.mu.Lock()
		back = st.StdinPending[:max(0, len(st.StdinPending)-len(p.leftover))]
		p.mu.Unlock()
	}
	return p.resume(back)
}

// resume undoes quiesce: the job's unread stdin (back) goes back into its
// pipe (what the splice had read from the CLI stays to be written after
// it), held signals are delivered, and the splices go on.
func (p *passedMove) resume(back []byte) error {
	var err error
	if len(back) > 0 {
		if err = writeAll(p.pipes[0], back); err != nil {
			err = fmt.Errorf("putting back the unread stdin: %w", err)
		}
	}
	if serr := p.start(); serr != nil {
		return errors.Join(err, serr)
	}
	p.mu.Lock()
	held, herr := p.held, p.heldErr
	p.held, p.heldErr = nil, nil
	for _, m := range held {
		p.deliver(m)
	}
	p.mu.Unlock()
	if herr != nil {
		p.s.hangUp(p.j, herr)
		p.stdio.stop.stop()
	}
	return err
}

// commit: the job runs on node now; the handler relays to it.
func (p *passedMove) commit(node uint32) {
	p.mu.Lock()
	p.moved = true
	if p.settled != nil {
		close(p.settled)
		p.settled = nil
	}
	p.mu.Unlock()
	p.to <- node
}

// Receive is the CLI's stream for the relay after the commit: first what
// came while the job was frozen, then the rest.
func (p *passedMove) Receive() (*ssiv1.ExecInput, error) {
	p.mu.Lock()
	if len(p.held) > 0 {
		m := p.held[0]
		p.held = p.held[1:]
		p.mu.Unlock()
		return m, nil
	}
	if err := p.heldErr; err != nil {
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Unlock()
	r := <-p.in
	return r.m, r.err
}

// movedStream stands for the stream of a job that left this node: it
// says where the job went, and the relay follows it there.
type movedStream struct {
	to   uint32
	said bool
}

func (m *movedStream) Send(*ssiv1.ExecInput) error { return nil } // kept by the relay, sent again on the new stream

func (m *movedStream) Receive() (*ssiv1.ExecOutput, error) {
	if m.said {
		return nil, io.EOF
	}
	m.said = true
	return &ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Moved{Moved: &ssiv1.ExecMoved{Node: m.to}}}, nil
}

func (m *movedStream) CloseRequest() error  { return nil }
func (m *movedStream) CloseResponse() error { return nil }

// relayMoved relays between the CLI's stdio and stream here and the job
// that left this node for node to (see above).
func (s *Space) relayMoved(ctx context.Context, spec *ssiv1.ExecSpec, st execStream, p *passedMove, to uint32) error {
	n, ok := s.cfg.FSM.Cluster().Nodes[to]
	if !ok {
		return st.Send(execError(255, "process %d moved to node %d, which is not in the node table", p.j.CPID, to))
	}
	s.log.Info("a job whose CLI runs here moved; relaying its stream", "cpid", p.j.CPID, "to", to)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p.mu.Lock()
	readStdin := !p.closed
	p.mu.Unlock()
	return s.relayOn(ctx, cancel, spec, relayedCLI{p, st}, n, p.stdio, &movedStream{to: to}, relayFrom{cpid: int64(p.j.CPID), readStdin: readStdin})
}

// relayedCLI is the CLI's stream as the relay sees it after the commit.
type relayedCLI struct {
	p  *passedMove
	st execStream
}

func (r relayedCLI) Receive() (*ssiv1.ExecInput, error) { return r.p.Receive() }
func (r relayedCLI) Send(m *ssiv1.ExecOutput) error     { return r.st.Send(m) }

// localExec is an exec stream to this node itself, in memory: the relay
// of a terminal job whose CLI runs here (so that it can follow the job
// when it moves), and a relayed stream that follows its job back to the
// relay's node. The server side is serveExec, as for a peer.
type localExec struct {
	in         chan *ssiv1.ExecInput  // relay → job's side
	out        chan *ssiv1.ExecOutput // job's side → relay
	reqClosed  chan struct{}
	respClosed chan struct{}
	served     chan struct{} // serveExec returned
	reqOnce    sync.Once
	respOnce   sync.Once
}

// openLocal starts serving an exec stream to this node in memory.
func (s *Space) openLocal(ctx context.Context) remoteStream {
	l := &localExec{in: make(chan *ssiv1.ExecInput), out: make(chan *ssiv1.ExecOutput),
		reqClosed: make(chan struct{}), respClosed: make(chan struct{}), served: make(chan struct{})}
	go func() {
		defer close(l.served)
		srv := localServer{l}
		first, err := srv.Receive()
		if err != nil {
			return
		}
		if err := s.serveExec(ctx, first, srv); err != nil {
			s.log.Debug("a stream to this node itself ended", "err", err)
		}
	}()
	return l
}

var errLocalClosed = errors.New("the stream is closed")

func (l *localExec) Send(m *ssiv1.ExecInput) error {
	select {
	case l.in <- m:
		return nil
	case <-l.reqClosed:
		return errLocalClosed
	case <-l.respClosed:
		return errLocalClosed
	case <-l.served:
		return io.EOF
	}
}

func (l *localExec) Receive() (*ssiv1.ExecOutput, error) {
	select {
	case m := <-l.out:
		return m, nil
	case <-l.respClosed:
		return nil, errLocalClosed
	case <-l.served:
		return nil, io.EOF
	}
}

func (l *localExec) CloseRequest() error {
	l.reqOnce.Do(func() { close(l.reqClosed) })
	return nil
}

func (l *localExec) CloseResponse() error {
	l.respOnce.Do(func() { close(l.respClosed) })
	return nil
}

// localServer is the job's side of a localExec.
type localServer struct{ l *localExec }

func (s localServer) Receive() (*ssiv1.ExecInput, error) {
	select {
	case m := <-s.l.in:
		return m, nil
	case <-s.l.reqClosed:
		return nil, io.EOF
	case <-s.l.respClosed:
		return nil, errLocalClosed
	}
}

// Send copies m: a sender reuses its output buffers once Send returns
// (execStream), as a network stream has marshalled them by then.
func (s localServer) Send(m *ssiv1.ExecOutput) error {
	c := proto.Clone(m).(*ssiv1.ExecOutput)
	select {
	case s.l.out <- c:
		return nil
	case <-s.l.respClosed:
		return errLocalClosed
	}
}
