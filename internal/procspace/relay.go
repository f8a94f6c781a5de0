package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Window is how much stdin the relay lets be in flight towards the node
// that runs the process before that node acknowledges it: the relay keeps
// it (to replay after a move) and stops reading the client beyond it.
const Window = 4 << 20

// CtlWindow is how many signals and resizes the relay keeps unacknowledged
// (to send again after a move); a signal never waits for room: beyond it,
// the oldest is forgotten (a node that does not acknowledge them, of an
// older build, then gets them as before: at once, not again after a move).
const CtlWindow = 1024

// relay connects a CLI's exec stream to the node that runs the process.
// If that node dies the client learns it within the failure-detection time.
//
// Towards the process, stdin and stdin_eof get sequence numbers and are
// kept until the node acknowledges them (at most Window bytes in flight);
// signals and resizes pass at once, numbered on their own and kept the
// same way until the node says it delivered them (ctl_ack). Back from the process, output frames
// whose sequence number was already delivered are dropped, and
// acknowledgements stay here. These are what a later switch of the stream
// to another node (after a migration) needs: replay what is unacknowledged,
// skip what was seen.
//
// With stdio (the CLI's own descriptors), stdin is read from the CLI's fd 0
// here, numbered and kept the same way, and output is written into its
// fds 1 and 2; the CLI's stream then carries only started and the end.
func (s *Space) relay(ctx context.Context, spec *ssiv1.ExecSpec, st execStream, n *state.Node, stdio *passedStdio) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	remote, err := s.openExec(ctx, n.Num)
	if err != nil {
		return st.Send(execError(255, "node %d (%s): %v", n.Num, n.Name, err))
	}
	if err := remote.Send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Start{Start: spec}}); err != nil {
		remote.CloseResponse()
		return st.Send(execError(255, "node %d (%s): %v", n.Num, n.Name, unwrapEOF(remote, err)))
	}
	return s.relayOn(ctx, cancel, spec, st, n, stdio, remote, relayFrom{readStdin: true})
}

// relayFrom is where relayOn starts: for a new job, nothing (the node
// sends started); for a job that moved from this node with its CLI's
// stdio here (localmove.go), its cpid, and whether the CLI's stdin is
// still to be read.
type relayFrom struct {
	cpid      int64
	readStdin bool
}

// relayOn relays between st (and stdio) and remote, the stream to node n
// (see relay); cancel cancels ctx.
func (s *Space) relayOn(ctx context.Context, cancel context.CancelCauseFunc, spec *ssiv1.ExecSpec, st execStream, n *state.Node, stdio *passedStdio,
	remote remoteStream, from relayFrom) error {
	// The stream to the node that runs the process; after a migration, to
	// its new node (see the ExecMoved case below).
	var sendMu sync.Mutex // the client's stream and the stdin reader both send
	// The receivers read it through cur, without waiting for a send in
	// progress (on a connection of its own, a send that waits for room in
	// TCP would otherwise hold up the output). Only this goroutine, in
	// follow, replaces it.
	var cur atomic.Pointer[remoteStream]
	first := remote
	cur.Store(&first)
	current := func() remoteStream { return *cur.Load() }
	defer func() { _ = current().CloseResponse() }()
	// A target that goes DOWN ends the stream (closing the response
	// unblocks a Receive that a dead peer would never answer).
	stop := context.AfterFunc(ctx, func() { _ = current().CloseResponse() })
	defer stop()
	stopWatch := s.watchNode(ctx, n, cancel)
	defer func() { stopWatch() }()

	win := newInflight(Window)
	ctl := newInflight(CtlWindow) // signals and resizes
	var ctlSeq uint64             // under sendMu
	// forward sends m towards the process. Stdin is kept in win until the
	// process's node acknowledges it, and it is kept and sent under
	// sendMu, as follow switches streams: a message goes to the new
	// stream either from win (follow) or from here, never from both. A
	// send that fails does not stop the forwarding: the stream ended under
	// it because the process moved (the stream to its new node gets again
	// what win keeps, and what comes next) or because its node is lost
	// (the loop below ends the relay, and ctx with it). False: ctx ended.
	forward := func(m *ssiv1.ExecInput) bool {
		stdin, control := false, false
		switch m.Msg.(type) {
		case *ssiv1.ExecInput_Stdin, *ssiv1.ExecInput_StdinEof:
			if !win.room(ctx, len(m.GetStdin())) {
				return false
			}
			stdin = true
		case *ssiv1.ExecInput_Signal, *ssiv1.ExecInput_Resize:
			control = true
		}
		sendMu.Lock()
		defer sendMu.Unlock()
		if stdin {
			win.keep(m)
		}
		if control {
			ctlSeq++
			m.Seq = ctlSeq
			ctl.keepLast(m)
		}
		if err := remote.Send(m); err != nil {
			s.log.Debug("cannot send towards the process; a stream that follows it gets its stdin again", "seq", m.Seq, "err", err)
		}
		return true
	}
	go func() {
		var seq uint64
		for {
			m, err := st.Receive()
			if err != nil {
				// The client is gone. Closing our request side tells the
				// node (its Receive sees EOF) to hang up the process;
				// cancelling alone would not reach a stream in flight.
				sendMu.Lock()
				_ = remote.CloseRequest()
				sendMu.Unlock()
				cancel(errors.New("client gone"))
				return
			}
			switch m.Msg.(type) {
			case *ssiv1.ExecInput_Stdin, *ssiv1.ExecInput_StdinEof:
				if stdio != nil {
					continue // stdin comes from the CLI's fd 0
				}
				seq++
				m.Seq = seq
			}
			if !forward(m) {
				return
			}
		}
	}()
	// out and errOut are where output goes with stdio; nil once writing
	// there failed (the rest is dropped).
	var out, errOut *fdWriter
	if stdio != nil {
		var err error
		if out, err = newFDWriter(rawFD(stdio.out)); err == nil {
			defer out.close()
			if errOut, err = newFDWriter(rawFD(stdio.err)); err == nil {
				defer errOut.close()
			}
		}
		if err != nil {
			return st.Send(execError(255, "node %d: %v", s.cfg.Self, err))
		}
		var readers sync.WaitGroup
		defer func() { cancel(nil); stdio.stop.stop(); readers.Wait() }() // before the descriptors close
		// A client gone or a target DOWN also stops a write into a full
		// fd 1 that nobody reads any more.
		defer context.AfterFunc(ctx, stdio.stop.stop)()
		if from.readStdin {
			readers.Add(1)
			go func() { defer readers.Done(); s.relayStdin(stdio, forward) }()
		}
	}
	// sink writes an output chunk into the CLI's descriptor *f.
	sink := func(f **fdWriter, b []byte) {
		if *f == nil {
			return
		}
		err := (*f).write(b, stdio.stop.fd)
		switch {
		case err == nil:
			return
		case errors.Is(err, unix.EPIPE):
			forward(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Signal{Signal: int32(syscall.SIGPIPE)}})
		case !errors.Is(err, errStopped):
			s.log.Debug("cannot write the output to the CLI; sending SIGHUP", "node", n.Num, "err", err)
			forward(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Signal{Signal: int32(syscall.SIGHUP)}})
		}
		*f = nil
	}
	var delivered uint64 // the last output seq handed to the client
	cpid := from.cpid
	for {
		m, err := current().Receive()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return st.Send(execError(255, "%v; the process is lost", cause))
			}
			return st.Send(execError(255, "%v", s.explainLoss(n, fmt.Errorf("lost the connection to node %d (%s): %w", n.Num, n.Name, err))))
		}
		switch a := m.Msg.(type) {
		case *ssiv1.ExecOutput_StdinAck:
			win.ack(a.StdinAck)
			continue
		case *ssiv1.ExecOutput_CtlAck:
			ctl.ack(a.CtlAck)
			continue
		}
		if mv := m.GetMoved(); mv != nil {
			// The process moved: attach to its new node, send again the
			// stdin it has not acknowledged, and go on from there.
			to, err := s.follow(ctx, cpid, spec.Uid, mv, delivered, win, ctl, &sendMu, &remote)
			if err != nil {
				return st.Send(execError(255, "process %d moved to node %d, but its stream could not follow: %v", cpid, mv.Node, err))
			}
			next := remote // written by follow on this goroutine
			cur.Store(&next)
			stopWatch()
			stopWatch = s.watchNode(ctx, to, cancel)
			n = to
			continue
		}
		if started := m.GetStarted(); started != nil {
			cpid = started.Cpid
		}
		if m.Seq != 0 {
			if m.Seq <= delivered {
				continue
			}
			delivered = m.Seq
		}
		if stdio != nil {
			switch v := m.Msg.(type) {
			case *ssiv1.ExecOutput_Stdout:
				sink(&out, v.Stdout)
				continue
			case *ssiv1.ExecOutput_Stderr:
				sink(&errOut, v.Stderr)
				continue
			case *ssiv1.ExecOutput_Started:
				v.Started.StdioPassed = true
			}
		}
		if err := st.Send(m); err != nil {
			return err
		}
		if m.GetExit() != nil || m.GetError() != nil {
			return nil
		}
		if spec.Detach && m.GetStarted() != nil {
			return nil
		}
	}
}

// relayStdin reads the CLI's fd 0 and forwards it towards the process as
// numbered stdin, then stdin_eof; it stops when stdio is stopped or
// forward says the relay's context ended.
func (s *Space) relayStdin(stdio *passedStdio, forward func(*ssiv1.ExecInput) bool) {
	fd := rawFD(stdio.in)
	var seq uint64
	// Reads go into the free tail of a slab, and each message keeps its
	// part of it: the window owns what it holds without a copy, and the
	// slab is garbage once every message in it is acknowledged.
	var slab []byte
	for {
		if len(slab) < chunkSize/4 {
			slab = make([]byte, 4*chunkSize)
		}
		buf := slab[:min(len(slab), chunkSize):min(len(slab), chunkSize)]
		n, err := readFD(fd, buf, stdio.stop.fd)
		if errors.Is(err, errStopped) {
			return
		}
		if err != nil {
			s.log.Debug("cannot read the CLI's stdin; giving the process EOF", "err", err)
		}
		m := &ssiv1.ExecInput{Msg: &ssiv1.ExecInput_StdinEof{StdinEof: true}}
		if n > 0 {
			m = &ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Stdin{Stdin: buf[:n:n]}}
			slab = slab[n:]
		}
		seq++
		m.Seq = seq
		if !forward(m) || m.GetStdinEof() {
			return
		}
	}
}

func unwrapEOF(remote remoteStream, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := remote.Receive(); rerr != nil {
			return rerr
		}
	}
	return err
}

// inflight is the stdin (or the signals and resizes) sent towards the
// process and not yet acknowledged.
type inflight struct {
	mu    sync.Mutex
	cond  *sync.Cond
	msgs  []*ssiv1.ExecInput
	bytes int // the cost of msgs
	limit int
	done  bool
}

// cost is what m takes of a window: its bytes for stdin, one for a signal
// or a resize (their window counts messages), nothing for stdin_eof.
func cost(m *ssiv1.ExecInput) int {
	switch m.Msg.(type) {
	case *ssiv1.ExecInput_Signal, *ssiv1.ExecInput_Resize:
		return 1
	}
	return len(m.GetStdin())
}

func newInflight(limit int) *inflight {
	w := &inflight{limit: limit}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// room waits until the window has room for size more bytes (or is empty);
// false if ctx ended first. The one sender of the window then keeps its
// message (keep).
func (w *inflight) room(ctx context.Context, size int) bool {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.done = true
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.bytes > 0 && w.bytes+size > w.limit && !w.done {
		w.cond.Wait()
	}
	return !w.done
}

// keep holds m until it is acknowledged.
func (w *inflight) keep(m *ssiv1.ExecInput) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, m)
	w.bytes += cost(m)
}

// keepLast holds m until it is acknowledged, forgetting the oldest kept
// message if the window is full.
func (w *inflight) keepLast(m *ssiv1.ExecInput) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.msgs) > 0 && w.bytes+cost(m) > w.limit {
		w.bytes -= cost(w.msgs[0])
		w.msgs = w.msgs[1:]
	}
	w.msgs = append(w.msgs, m)
	w.bytes += cost(m)
}

// ack drops everything up to seq.
func (w *inflight) ack(seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := 0
	for ; i < len(w.msgs) && w.msgs[i].Seq <= seq; i++ {
		w.bytes -= cost(w.msgs[i])
	}
	w.msgs = w.msgs[i:]
	w.cond.Broadcast()
}

// pending is what a new stream to the process would have to be sent again.
func (w *inflight) pending() []*ssiv1.ExecInput {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*ssiv1.ExecInput(nil), w.msgs...)
}

// watchNode cancels ctx (with cancel) if node n leaves the cluster, until
// the returned function is called.
func (s *Space) watchNode(ctx context.Context, n *state.Node, cancel context.CancelCauseFunc) func() {
	watch, stop := context.WithCancel(ctx)
	s.cancelIfDown(watch, n, cancel)
	return stop
}

// follow attaches a relayed stream to the node its process moved to: the
// new stream replaces *remote (under mu) once the signals and resizes and
// the stdin that the old node did not deliver have been sent again on it
// (the new node drops what it knows was delivered: at most once).
func (s *Space) follow(ctx context.Context, cpid int64, uid uint32, mv *ssiv1.ExecMoved, delivered uint64, win, ctl *inflight,
	mu *sync.Mutex, remote *remoteStream) (*state.Node, error) {
	n, ok := s.cfg.FSM.Cluster().Nodes[mv.Node]
	if !ok {
		return nil, fmt.Errorf("node %d is not in the node table", mv.Node)
	}
	next, err := s.openExec(ctx, mv.Node)
	if err != nil {
		return nil, err
	}
	if err := next.Send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Attach{Attach: &ssiv1.ExecAttach{Cpid: cpid, Uid: uid, OutSeq: delivered}}}); err != nil {
		next.CloseResponse()
		return nil, unwrapEOF(next, err)
	}
	win.ack(mv.StdinAcked)
	ctl.ack(mv.CtlAcked)
	mu.Lock()
	defer mu.Unlock()
	for _, m := range append(ctl.pending(), win.pending()...) {
		if err := next.Send(m); err != nil {
			next.CloseResponse()
			return nil, unwrapEOF(next, err)
		}
	}
	old := *remote
	*remote = next
	_ = old.CloseRequest()
	_ = old.CloseResponse()
	s.log.Info("the stream follows its process", "cpid", cpid, "to", mv.Node, "stdin_acked", mv.StdinAcked, "ctl_acked", mv.CtlAcked, "out_seq", delivered)
	return n, nil
}
