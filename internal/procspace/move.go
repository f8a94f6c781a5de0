package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// The stream of an attached job that a client's daemon relays from another
// node can follow the job when it migrates (internal/migrate): the node that
// runs it stops the job's pumps (Quiesce), hands what is in flight to the
// job's new node, and ends the stream with ExecMoved (Commit); the client's
// daemon attaches to the new node (ExecAttach), which numbers the output on
// from where this node stopped, and sends again the stdin, signals and
// resizes not yet acknowledged, which the new node delivers unless it
// knows they were (at most once). A job on a terminal (onnode -t) moves the
// same way, its terminal re-created on the new node (ttymove.go). A job
// whose CLI runs on this node itself and passed its stdio moves too
// (localmove.go): at the commit this node becomes the client's daemon,
// relaying between the CLI's descriptors and the new node.

// MoveState is what of a stream is in flight when its job is frozen for a
// move.
type MoveState struct {
	Pipes        [3]*os.File // the daemon's ends: stdin (write), stdout and stderr (read)
	Keys         [3]string   // the pipes as CRIU names them: "pipe:[INODE]"
	OutSeq       uint64      // the last output chunk sent
	StdinAcked   uint64      // the last stdin message written into the job's pipe
	StdinPending []byte      // written into the pipe (or typed), not yet read by the job
	StdinClosed  bool        // the job's stdin was closed (EOF delivered)
	CtlAcked     uint64      // the last signal or resize delivered

	// A job on a terminal: its pty's slave as CRIU names it
	// ("tty[RDEV:DEV]"), the terminal's settings (EncodeTermios) and size.
	TTYKey     string
	Termios    []byte
	Rows, Cols uint16
}

// movable is the stream of one attached job whose client's daemon can
// follow a move.
type movable struct {
	s   *Space
	j   *procs.Job
	out *sender
	q   *stdinQueue
	ack bool

	pipes [3]*os.File
	keys  [3]string // "pipe:[INODE]" of each, taken while all are open
	tty   *os.File  // a terminal job's pty master (pipes[0] and pipes[1] are it, pipes[2] nil)

	mu          sync.Mutex
	phase       *stopper           // stops the current pumps and stdin writer
	running     sync.WaitGroup     // the current pumps and writer (only Quiesce waits)
	acked       uint64             // last stdin seq fully written into the pipe
	ctlDone     uint64             // last signal or resize seq delivered
	held        []*ssiv1.ExecInput // signals and resizes that came while frozen
	settled     chan struct{}      // closed when a move that stopped the pumps is decided
	closed      bool               // stdin closed
	eof         [2]bool            // stdout, stderr reached EOF
	moved       bool               // Commit: the stream ends with ExecMoved
	phaseClosed bool
	frozen      bool          // Quiesce: pumps stopped
	ended       chan struct{} // the stream's handler may return
	endOnce     sync.Once
}

func (m *movable) end() { m.endOnce.Do(func() { close(m.ended) }) }

// register puts v in m under cpid (mu held) until the returned function
// is called.
func register[T comparable](mu *sync.Mutex, m map[vproc.CPID]T, cpid vproc.CPID, v T) func() {
	mu.Lock()
	m[cpid] = v
	mu.Unlock()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		if m[cpid] == v {
			delete(m, cpid)
		}
	}
}

// movableOf is the movable stream of cpid here, or nil.
func (s *Space) movableOf(cpid vproc.CPID) *movable {
	s.movMu.Lock()
	defer s.movMu.Unlock()
	return s.movables[cpid]
}

// streamAt is where the numbering of a movable stream's input starts: 0
// for a new job, the old node's for one that moved here.
type streamAt struct {
	acked  uint64 // stdin
	ctl    uint64 // signals and resizes
	closed bool   // stdin closed
}

// serveMovable pumps an attached job's pipes (or, with tty, its terminal)
// for a relaying daemon, as runLocal does, in a form that can stop for a
// move. out's seq and at are where the numbering starts.
func (s *Space) serveMovable(ctx context.Context, st execStream, out *sender, j *procs.Job, pipes [3]*os.File, tty *os.File, at streamAt) error {
	m := &movable{s: s, j: j, out: out, q: newStdinQueue(2 * Window), ack: true, pipes: pipes, tty: tty,
		acked: at.acked, ctlDone: at.ctl, closed: at.closed, ended: make(chan struct{})}
	if tty != nil {
		m.pipes = [3]*os.File{tty, tty, nil}
		m.eof[1] = true // a terminal has one output
		_ = unix.SetNonblock(rawFD(tty), true)
	} else {
		for i, f := range pipes {
			var st unix.Stat_t
			if err := unix.Fstat(rawFD(f), &st); err == nil {
				m.keys[i] = fmt.Sprintf("pipe:[%d]", st.Ino)
			}
		}
	}
	defer m.q.close()
	go func() {
		var n uint64 // stdin messages seen: their seq when the sender gives none
		recvd := at.acked
		for {
			in, err := st.Receive()
			if err != nil {
				m.mu.Lock()
				moved := m.moved
				m.mu.Unlock()
				if !moved {
					s.hangUp(j, err)
				}
				m.q.close()
				return
			}
			switch in.Msg.(type) {
			case *ssiv1.ExecInput_Stdin, *ssiv1.ExecInput_StdinEof:
				n++
				if in.Seq != 0 && in.Seq <= recvd {
					// Sent again by a stream that followed a move: the
					// job had it on its old node.
					continue
				}
				it := stdinItem{seq: max(in.Seq, n), data: in.GetStdin(), eof: in.GetStdinEof()}
				recvd = max(recvd, it.seq)
				m.q.push(it)
			case *ssiv1.ExecInput_Signal, *ssiv1.ExecInput_Resize:
				m.control(in)
			}
		}
	}()
	if err := m.start(); err != nil {
		return out.Send(execError(255, "node %d: %v", s.cfg.Self, err))
	}
	// Quiesce finds it once it runs.
	defer register(&s.movMu, s.movables, j.CPID, m)()
	defer m.closePhase()
	// Ends when both output pipes reached EOF and the job ended, or at
	// Commit. A client that goes away hangs the job up (above), which
	// then ends.
	<-m.ended
	m.mu.Lock()
	moved := m.moved
	m.mu.Unlock()
	if moved {
		return nil
	}
	return s.sendExit(out, j)
}

// start runs the pumps and the stdin writer until they end or the phase
// stops.
func (m *movable) start() error {
	stop, err := newStopper()
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.phase, m.phaseClosed, m.frozen = stop, false, false
	m.settle()
	closed := m.closed
	eof := m.eof
	m.mu.Unlock()
	m.q.unpause()
	for i, f := range m.pipes[1:] {
		if eof[i] {
			continue
		}
		m.running.Add(1)
		go m.pump(i, f, stop)
	}
	if !closed {
		m.running.Add(1)
		go m.writer(stop)
	}
	return nil
}

func (m *movable) pump(i int, f *os.File, stop *stopper) {
	defer m.running.Done()
	fd := rawFD(f)
	buf := make([]byte, chunkSize)
	for {
		n, err := readFD(fd, buf, stop.fd)
		if errors.Is(err, errStopped) {
			return
		}
		if n > 0 {
			m.send(i, buf[:n])
			continue
		}
		m.mu.Lock()
		m.eof[i] = true
		both := m.eof[0] && m.eof[1]
		m.mu.Unlock()
		if both {
			// Every process of the job closed its output: once the job
			// has ended, its status ends the stream.
			go func() { <-m.j.Done(); m.end() }()
		}
		return
	}
}

// closePhase releases the current phase's stopper.
func (m *movable) closePhase() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != nil && !m.phaseClosed {
		m.phase.close()
		m.phaseClosed = true
	}
}

func (m *movable) send(i int, b []byte) {
	msg := &ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stdout{Stdout: b}}
	if i == 1 {
		msg = &ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Stderr{Stderr: b}}
	}
	// Send has marshalled the chunk when it returns: b is reused.
	if m.out.Send(msg) != nil {
		_ = m.j.Process().Signal(syscall.SIGHUP)
	}
}

// writer writes the queued stdin into the job's pipe, acknowledging it.
func (m *movable) writer(stop *stopper) {
	defer m.running.Done()
	fd := rawFD(m.pipes[0])
	unacked := 0
	for {
		it, more, ok := m.q.popUnlessPaused()
		if !ok {
			return
		}
		if it.eof && m.tty != nil {
			// A terminal's EOF is its EOF character: the terminal stays.
			it.data = ttyEOF(m.tty)
		} else if it.eof {
			m.mu.Lock()
			m.closed, m.acked = true, it.seq
			m.mu.Unlock()
			_ = m.pipes[0].Close()
			m.sendAck(it.seq)
			return
		}
		for off := 0; off < len(it.data); {
			if err := waitFD(fd, unix.POLLOUT, stop.fd); err != nil {
				if errors.Is(err, errStopped) {
					// What is left goes back first in line, same seq.
					m.q.pushFront(stdinItem{seq: it.seq, data: it.data[off:]})
					return
				}
				break
			}
			n, err := unix.Write(fd, it.data[off:])
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				break // the job closed its stdin: the rest is dropped
			}
			off += n
		}
		m.mu.Lock()
		m.acked = it.seq
		m.mu.Unlock()
		unacked += len(it.data)
		if !more || unacked >= Window/4 {
			m.sendAck(it.seq)
			unacked = 0
		}
	}
}

func (m *movable) sendAck(seq uint64) {
	if m.ack {
		_ = m.out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_StdinAck{StdinAck: seq}})
	}
}

// Quiesce stops the stream of a frozen attached job for a move: the pumps
// stop, what the job wrote is sent, and what it has not read of its stdin
// is taken back out of the pipe.
func (s *Space) Quiesce(cpid vproc.CPID) (*MoveState, error) {
	if p := s.passedOf(cpid); p != nil {
		return p.quiesce()
	}
	m := s.movableOf(cpid)
	if m == nil {
		return nil, fmt.Errorf("process %d is attached to a stream that cannot follow it (node %d serves it without a relay: a pinned or unmovable job)", cpid, s.cfg.Self)
	}
	m.mu.Lock()
	if m.frozen || m.moved {
		m.mu.Unlock()
		return nil, fmt.Errorf("process %d is moving already", cpid)
	}
	m.frozen = true
	m.settled = make(chan struct{})
	stop := m.phase
	m.mu.Unlock()
	m.q.pause()
	stop.stop()
	m.running.Wait()
	m.closePhase()
	st := &MoveState{Pipes: m.pipes, Keys: m.keys}
	var err error
	if m.tty != nil {
		err = m.takeBackTTY(st)
	} else {
		err = m.takeBackPipes(st)
	}
	if err != nil {
		_ = m.resume(st.StdinPending)
		return nil, fmt.Errorf("process %d: %w", cpid, err)
	}
	m.mu.Lock()
	st.StdinAcked, st.StdinClosed, st.CtlAcked = m.acked, m.closed, m.ctlDone
	m.mu.Unlock()
	m.out.mu.Lock()
	st.OutSeq = m.out.seq
	m.out.mu.Unlock()
	return st, nil
}

// takeBackPipes sends what the frozen job wrote into its output pipes and
// takes back what it has not read of its stdin.
func (m *movable) takeBackPipes(st *MoveState) error {
	// The job is frozen: what is in its output pipes is all it wrote.
	buf := make([]byte, chunkSize)
	for i, f := range m.pipes[1:] {
		if m.eof[i] {
			continue
		}
		// FIONREAD (TIOCINQ): the descriptor may be in blocking mode.
		fd := rawFD(f)
		for {
			avail, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
			if err != nil || avail <= 0 {
				break
			}
			n, err := unix.Read(fd, buf[:min(avail, len(buf))])
			if n <= 0 || err != nil {
				break
			}
			m.send(i, buf[:n])
		}
	}
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil
	}
	pending, err := takeBackStdin(m.pipes[0])
	st.StdinPending = pending
	return err
}

// takeBackStdin reads out of a frozen job's stdin pipe what the job has
// not read, through a read end opened by way of w, the daemon's write end.
func takeBackStdin(w *os.File) ([]byte, error) {
	r, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", rawFD(w)), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("taking back its unread stdin: %w", err)
	}
	pending, err := io.ReadAll(nonBlocking{r})
	r.Close()
	if err != nil {
		return pending, fmt.Errorf("taking back its unread stdin: %w", err)
	}
	return pending, nil
}

// nonBlocking reads until the pipe is empty.
type nonBlocking struct{ f *os.File }

func (r nonBlocking) Read(b []byte) (int, error) {
	n, err := unix.Read(rawFD(r.f), b)
	if errors.Is(err, unix.EAGAIN) || n == 0 && err == nil {
		return 0, io.EOF
	}
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Resume undoes Quiesce (the move failed): the unread stdin goes back into
// the pipe, and the pumps go on.
func (s *Space) Resume(cpid vproc.CPID, st *MoveState) error {
	if p := s.passedOf(cpid); p != nil {
		return p.resumeFrom(st)
	}
	m := s.movableOf(cpid)
	if m == nil {
		return fmt.Errorf("process %d: its stream is gone", cpid)
	}
	var pending []byte
	if st != nil {
		pending = st.StdinPending
	}
	return m.resume(pending)
}

func (m *movable) resume(pending []byte) error {
	if len(pending) > 0 {
		var err error
		if m.tty != nil {
			err = giveInput(m.tty, nil, pending)
		} else {
			err = writeAll(m.pipes[0], pending)
		}
		if err != nil {
			return fmt.Errorf("putting back the unread stdin: %w", err)
		}
	}
	if err := m.start(); err != nil {
		return err
	}
	m.releaseHeld()
	return nil
}

// settle says that the move that stopped the stream (if any) is decided;
// m.mu is held.
func (m *movable) settle() {
	if m.settled != nil {
		close(m.settled)
		m.settled = nil
	}
}

// AwaitMove waits (until ctx ends) while the stream of cpid is stopped
// for a move, until the move is decided: the job runs on here (Resume) or
// elsewhere (Commit). A signal sent to the job meanwhile from outside its
// stream (Control.Signal) is delivered once that is known, where the job
// runs, instead of into a frozen copy that may be about to end.
func (s *Space) AwaitMove(ctx context.Context, cpid vproc.CPID) {
	var ch chan struct{}
	if p := s.passedOf(cpid); p != nil {
		p.mu.Lock()
		ch = p.settled
		p.mu.Unlock()
	} else if m := s.movableOf(cpid); m != nil {
		m.mu.Lock()
		ch = m.settled
		m.mu.Unlock()
	}
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// control delivers a signal or a resize at once, unless it was delivered
// already (sent again after a move) or the job is frozen for a move: then
// it waits for Resume, or, if the job moves, is not acknowledged, and the
// stream that follows the job sends it again to the new node.
func (m *movable) control(in *ssiv1.ExecInput) {
	m.mu.Lock()
	if in.Seq != 0 && in.Seq <= m.ctlDone {
		m.mu.Unlock()
		return
	}
	if m.frozen || m.moved {
		m.held = append(m.held, in)
		m.mu.Unlock()
		return
	}
	m.deliver(in)
	m.mu.Unlock()
	m.sendCtlAck(in.Seq)
}

// deliver hands a signal or a resize to the job; m.mu is held.
func (m *movable) deliver(in *ssiv1.ExecInput) {
	switch v := in.Msg.(type) {
	case *ssiv1.ExecInput_Signal:
		_ = m.j.Process().Signal(syscall.Signal(v.Signal))
	case *ssiv1.ExecInput_Resize:
		if m.tty != nil {
			_ = unix.IoctlSetWinsize(rawFD(m.tty), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(v.Resize.Rows), Col: uint16(v.Resize.Cols)})
		}
	}
	m.ctlDone = max(m.ctlDone, in.Seq)
}

// releaseHeld delivers what came while the job was frozen for a move that
// did not happen.
func (m *movable) releaseHeld() {
	m.mu.Lock()
	held := m.held
	m.held = nil
	for _, in := range held {
		m.deliver(in)
	}
	last := m.ctlDone
	m.mu.Unlock()
	if len(held) > 0 {
		m.sendCtlAck(last)
	}
}

func (m *movable) sendCtlAck(seq uint64) {
	if m.ack && seq != 0 {
		_ = m.out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_CtlAck{CtlAck: seq}})
	}
}

// writeAll writes b into a pipe that has room for it (it was in it).
func writeAll(f *os.File, b []byte) error {
	fd := rawFD(f)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Commit ends the stream of a job that now runs on node: the client's
// daemon attaches there.
func (s *Space) Commit(cpid vproc.CPID, node uint32, st *MoveState) {
	if p := s.passedOf(cpid); p != nil {
		p.commit(node)
		return
	}
	m := s.movableOf(cpid)
	if m == nil {
		return
	}
	m.mu.Lock()
	m.moved = true
	m.settle()
	m.mu.Unlock()
	_ = m.out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Moved{Moved: &ssiv1.ExecMoved{Node: node, OutSeq: st.OutSeq, StdinAcked: st.StdinAcked, CtlAcked: st.CtlAcked}}})
	m.end()
}

// Arrival is an attached job restored here and where its stream stopped
// on its old node (MoveState, carried in the migration's header).
type Arrival struct {
	Pipes       [3]*os.File // the daemon's ends of its new stdio pipes (none with TTY)
	TTY         *Terminal   // a terminal job's new terminal
	OutSeq      uint64      // the last output chunk sent
	StdinAcked  uint64      // the last stdin message the job got
	CtlAcked    uint64      // the last signal or resize it got
	StdinClosed bool
	// With TTY: what was typed and not yet read on the old terminal,
	// given to the job through the new one (pipes get theirs before the
	// restore).
	StdinPending []byte
}

// arrival is an attached job restored here, waiting for its client's
// daemon to attach.
type arrival struct {
	Arrival
	j     *procs.Job
	timer *time.Timer
}

// files are the daemon's ends of the job's stdio.
func (a *arrival) files() []*os.File {
	if a.TTY != nil {
		return []*os.File{a.TTY.Master}
	}
	return a.Pipes[:]
}

// attachTimeout is how long a job that moved here waits for its client's
// daemon before it is hung up, as a job whose client went away.
const attachTimeout = 30 * time.Second

// Arrive registers an attached job restored here, still frozen: its
// stdio (the daemon's ends) and where its stream stopped on the old node.
// A terminal gets what was typed and not read (the terminal's slave,
// needed for that, is closed then: the job holds its own).
func (s *Space) Arrive(j *procs.Job, in Arrival) {
	if in.TTY != nil {
		if err := giveInput(in.TTY.Master, in.TTY.Slave, in.StdinPending); err != nil {
			s.log.Warn("a terminal job that moved here lost what was typed and not yet read", "cpid", j.CPID, "bytes", len(in.StdinPending), "err", err)
		}
		if in.TTY.Slave != nil {
			in.TTY.Slave.Close()
			in.TTY.Slave = nil
		}
	}
	a := &arrival{Arrival: in, j: j}
	a.timer = time.AfterFunc(attachTimeout, func() {
		s.movMu.Lock()
		mine := s.arrivals[j.CPID] == a
		if mine {
			delete(s.arrivals, j.CPID)
		}
		s.movMu.Unlock()
		if mine {
			s.hangUp(j, errors.New("its client's daemon did not attach after the move"))
			for _, f := range a.files() {
				f.Close()
			}
			go s.cfg.Jobs.Finish(j)
		}
	})
	s.movMu.Lock()
	s.arrivals[j.CPID] = a
	s.movMu.Unlock()
}

// attach serves the stream of a job that moved here (ExecInput.attach).
func (s *Space) attach(ctx context.Context, at *ssiv1.ExecAttach, st execStream) error {
	cpid := vproc.CPID(at.Cpid)
	s.movMu.Lock()
	a := s.arrivals[cpid]
	if a != nil && (at.Uid == 0 || at.Uid == a.j.UID) {
		delete(s.arrivals, cpid)
	}
	s.movMu.Unlock()
	if a == nil {
		s.log.Warn("a client's daemon attaches to a process that does not wait for it here", "cpid", cpid)
		return st.Send(execError(255, "node %d: no process %d waits for its stream here", s.cfg.Self, cpid))
	}
	s.log.Info("the stream of a process that moved here follows it", "cpid", cpid, "out_seq", a.OutSeq, "stdin_acked", a.StdinAcked, "ctl_acked", a.CtlAcked, "tty", a.TTY != nil)
	if at.Uid != 0 && at.Uid != a.j.UID {
		return st.Send(execError(255, "node %d: process %d belongs to uid %d", s.cfg.Self, cpid, a.j.UID))
	}
	a.timer.Stop()
	out := &sender{send: st.Send, seq: a.OutSeq}
	defer out.close()
	defer s.cfg.Jobs.Finish(a.j)
	defer func() {
		for _, f := range a.files() {
			f.Close()
		}
	}()
	var tty *os.File
	if a.TTY != nil {
		tty = a.TTY.Master
	}
	return s.serveMovable(ctx, st, out, a.j, a.Pipes, tty, streamAt{acked: a.StdinAcked, ctl: a.CtlAcked, closed: a.StdinClosed})
}
