package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// chunkSize is the largest output chunk sent in one message.
const chunkSize = 256 << 10

// pipeSize is what the job's stdio pipes are grown to (Linux caps it at
// /proc/sys/fs/pipe-max-size, 1 MiB by default).
const pipeSize = 1 << 20

// execStream is one side of an exec stream (a server stream from the CLI or
// a peer, or a client stream to a peer), reduced to what the pumps need.
type execStream interface {
	Receive() (*ssiv1.ExecInput, error)
	Send(*ssiv1.ExecOutput) error
}

// lockedSend serializes Send: the stdout, stderr and control pumps share it.
type lockedSend struct {
	mu   sync.Mutex
	send func(*ssiv1.ExecOutput) error
	dead bool
}

func (l *lockedSend) Send(m *ssiv1.ExecOutput) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return errors.New("client gone")
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

// callerFromSpec is the identity a forwarded spec carries.
func callerFromSpec(s *ssiv1.ExecSpec) procs.Caller {
	return procs.Caller{UID: s.Uid, GID: s.Gid, Groups: s.Groups}
}

// localCaller is the CLI's identity from the control socket.
func localCaller(ctx context.Context) (procs.Caller, error) {
	c, ok := transport.CallerFrom(ctx)
	if !ok {
		return procs.Caller{}, connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: no peer credentials"))
	}
	return procs.Caller{UID: c.UID, GID: c.GID, Groups: c.Groups}, nil
}

// Exec (Control) starts a process for the local CLI, here or on another node.
func (s *controlService) Exec(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
	d := s.d
	caller, err := localCaller(ctx)
	if err != nil {
		return err
	}
	first, err := st.Receive()
	if err != nil {
		return err
	}
	spec := first.GetStart()
	if spec == nil || len(spec.Argv) == 0 {
		return st.Send(execError(255, "node %d: the first message must start a command", d.meta.Num))
	}
	spec.Uid, spec.Gid, spec.Groups, spec.HasCreds = caller.UID, caller.GID, caller.Groups, true
	target := spec.Node
	if target == 0 {
		if target, err = d.fastest(ctx); err != nil {
			return st.Send(execError(255, "%v", err))
		}
		spec.Node = target
	}
	c := d.fsm.Cluster()
	n, ok := c.Nodes[target]
	if !ok {
		return st.Send(execError(255, "node %d is not in the node table of cluster %s (see 'cluster -V')", target, c.Name))
	}
	if n.State != state.Up {
		return st.Send(execError(255, "node %d (%s) is %s; run it elsewhere or bring the node up", target, n.Name, n.State))
	}
	if target == d.meta.Num {
		return d.runLocal(ctx, spec, st)
	}
	return d.proxyExec(ctx, spec, st, n)
}

// Exec (Peer) runs a process another node asked for.
func (p *peerService) Exec(ctx context.Context, st *connect.BidiStream[ssiv1.ExecInput, ssiv1.ExecOutput]) error {
	first, err := st.Receive()
	if err != nil {
		return err
	}
	spec := first.GetStart()
	if spec == nil || len(spec.Argv) == 0 || !spec.HasCreds {
		return st.Send(execError(255, "node %d: malformed exec request", p.d.meta.Num))
	}
	return p.d.runLocal(ctx, spec, st)
}

// runLocal starts spec on this node and pumps its streams.
func (d *Daemon) runLocal(ctx context.Context, spec *ssiv1.ExecSpec, st execStream) error {
	out := &lockedSend{send: st.Send}
	j, err := d.procs.Start(ctx, procs.StartRequest{
		Argv: spec.Argv, Env: spec.Env, Dir: spec.Dir, Caller: callerFromSpec(spec),
		TTY: spec.Tty, Rows: uint16(spec.Rows), Cols: uint16(spec.Cols), Detach: spec.Detach, Pin: spec.Pin,
	})
	if err != nil {
		code := int32(255)
		switch {
		case errors.Is(err, rexec.ErrNotFound):
			code = 127
		case errors.Is(err, rexec.ErrNotExecutable):
			code = 126
		}
		return out.Send(execError(code, "node %d (%s): %v", d.meta.Num, d.meta.Name, err))
	}
	rj := j.Process()
	if err := out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Started{Started: &ssiv1.ExecStarted{
		Cpid: int64(j.CPID), Node: d.meta.Num, Pid: int32(rj.MainPid()), NodeName: d.meta.Name, Migratable: rj.Migratable() && !spec.Pin,
	}}}); err != nil && !spec.Detach {
		_ = rj.Signal(syscall.SIGHUP)
	}
	if spec.Detach {
		d.log.Info("detached job started", "cpid", j.CPID, "uid", spec.Uid, "cmd", spec.Argv[0])
		return nil
	}
	defer d.procs.Finish(j)
	// Bigger pipes mean fewer, larger reads and messages on a busy stream.
	for _, f := range []any{rj.Stdin(), rj.Stdout(), rj.Stderr()} {
		if pf, ok := f.(interface{ Fd() uintptr }); ok {
			_, _ = unix.FcntlInt(pf.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		}
	}

	// Input: stdin with back-pressure (a blocking write), signals, resizes.
	// A client that goes away hangs up the process, as ssh does.
	go func() {
		stdin := rj.Stdin()
		for {
			m, err := st.Receive()
			if err != nil {
				select {
				case <-j.Done():
				default:
					d.log.Debug("client gone; sending SIGHUP", "cpid", j.CPID, "err", err)
					_ = rj.Signal(syscall.SIGHUP)
				}
				stdin.Close()
				return
			}
			switch v := m.Msg.(type) {
			case *ssiv1.ExecInput_Stdin:
				if _, err := stdin.Write(v.Stdin); err != nil {
					stdin.Close()
				}
			case *ssiv1.ExecInput_StdinEof:
				stdin.Close()
			case *ssiv1.ExecInput_Signal:
				_ = rj.Signal(syscall.Signal(v.Signal))
			case *ssiv1.ExecInput_Resize:
				_ = rj.Resize(uint16(v.Resize.Rows), uint16(v.Resize.Cols))
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
				if out.Send(wrap(append([]byte(nil), buf[:n]...))) != nil {
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
	<-j.Done()
	status, werr := j.Status()
	if werr != nil {
		return out.Send(execError(255, "node %d: waiting for %d: %v", d.meta.Num, j.CPID, werr))
	}
	return out.Send(&ssiv1.ExecOutput{Msg: &ssiv1.ExecOutput_Exit{Exit: &ssiv1.ExecExit{
		Code: int32(status.ExitCode()), Signal: int32(status.Signal), Core: status.Core}}})
}

// proxyExec relays a CLI's exec stream to the node that runs the process.
// If that node dies the client learns it within the failure-detection time.
func (d *Daemon) proxyExec(ctx context.Context, spec *ssiv1.ExecSpec, st execStream, n *state.Node) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	addr := joinHostPort(n.IPAddr, d.config().Port)
	remote := d.peer(addr).Exec(ctx)
	defer remote.CloseResponse()
	if err := remote.Send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Start{Start: spec}}); err != nil {
		return st.Send(execError(255, "node %d (%s): %v", n.Num, addr, unwrapEOF(remote, err)))
	}
	// Watch the membership: a target that goes DOWN ends the stream (closing
	// the response unblocks a Receive that a dead peer would never answer).
	stop := context.AfterFunc(ctx, func() { _ = remote.CloseResponse() })
	defer stop()
	go func() {
		for {
			ch := d.fsm.Changed()
			if c := d.fsm.Cluster(); c.Nodes[n.Num] == nil || !c.Nodes[n.Num].State.Live() {
				cancel(fmt.Errorf("node %d (%s) went DOWN", n.Num, n.Name))
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-ch:
			}
		}
	}()
	go func() {
		for {
			m, err := st.Receive()
			if err != nil {
				// The client is gone: ending our side makes the remote hang up the process.
				// The client is gone. Closing our request side tells the
				// node (its Receive sees EOF) to hang up the process;
				// cancelling alone would not reach a stream in flight.
				_ = remote.CloseRequest()
				cancel(errors.New("client gone"))
				return
			}
			if err := remote.Send(m); err != nil {
				return
			}
		}
	}()
	for {
		m, err := remote.Receive()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return st.Send(execError(255, "%v; the process is lost", cause))
			}
			return st.Send(execError(255, "%v", d.explainLoss(n, fmt.Errorf("lost the connection to node %d (%s): %w", n.Num, addr, err))))
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

func unwrapEOF(remote *connect.BidiStreamForClient[ssiv1.ExecInput, ssiv1.ExecOutput], err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := remote.Receive(); rerr != nil {
			return rerr
		}
	}
	return err
}

// ---- the process table across nodes ----

func (d *Daemon) procsFor(req *ssiv1.ProcsRequest) []*ssiv1.Proc {
	f := procs.Filter{CPID: vproc.CPID(req.Cpid)}
	if !req.All && req.HasUid {
		uid := req.Uid
		f.UID = &uid
	}
	var out []*ssiv1.Proc
	for _, p := range d.procs.List(f) {
		pp := &ssiv1.Proc{
			Cpid: int64(p.CPID), Node: uint32(p.Node), Pid: int32(p.PID), Job: int64(p.Job), Uid: p.UID, User: p.User,
			State: p.State, Cpu: p.CPU, Rss: p.RSS, StartUnixMs: p.Start.UnixMilli(), CpuTimeMs: p.Time.Milliseconds(),
			Cmd: p.Cmd, Migratable: p.Migratable, Pinned: p.Pinned, Detached: d.procs.Detached(p.CPID),
		}
		if exited, st := d.procs.Exited(p.CPID); exited {
			pp.Exited, pp.ExitCode = true, int32(st.ExitCode())
		}
		out = append(out, pp)
	}
	return out
}

func (p *peerService) Procs(ctx context.Context, req *connect.Request[ssiv1.ProcsRequest]) (*connect.Response[ssiv1.ProcsResponse], error) {
	return connect.NewResponse(&ssiv1.ProcsResponse{Procs: p.d.procsFor(req.Msg)}), nil
}

// fanOut calls fn for every UP node (or only node `only`) with bounded
// parallelism, never serially.
func (d *Daemon) fanOut(ctx context.Context, only uint32, fn func(ctx context.Context, n *state.Node) error) []string {
	c := d.fsm.Cluster()
	var targets []*state.Node
	for _, n := range c.SortedNodes() {
		if (only == 0 || n.Num == only) && n.State == state.Up {
			targets = append(targets, n)
		}
	}
	var mu sync.Mutex
	var unreachable []string
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, n := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := fn(cctx, n); err != nil {
				mu.Lock()
				unreachable = append(unreachable, fmt.Sprintf("node %d (%s): %v", n.Num, n.Name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return unreachable
}

func (s *controlService) Procs(ctx context.Context, req *connect.Request[ssiv1.ProcsRequest]) (*connect.Response[ssiv1.ProcsResponse], error) {
	d := s.d
	caller, err := localCaller(ctx)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = caller.UID, true
	if q.Node != 0 {
		if n, ok := d.fsm.Cluster().Nodes[q.Node]; !ok {
			return nil, d.toConnect(state.Errorf(state.CodeNotFound, "node %d is not in the node table", q.Node))
		} else if n.State != state.Up {
			return nil, d.toConnect(state.Errorf(state.CodeConflict, "node %d (%s) is %s", n.Num, n.Name, n.State))
		}
	}
	if q.Cpid != 0 {
		q.Node = uint32(vproc.CPID(q.Cpid).Node())
	}
	var mu sync.Mutex
	out := &ssiv1.ProcsResponse{}
	out.Unreachable = d.fanOut(ctx, q.Node, func(ctx context.Context, n *state.Node) error {
		var ps []*ssiv1.Proc
		if n.Num == d.meta.Num {
			ps = d.procsFor(q)
		} else {
			resp, err := d.peer(joinHostPort(n.IPAddr, d.config().Port)).Procs(ctx, connect.NewRequest(q))
			if err != nil {
				return err
			}
			ps = resp.Msg.Procs
		}
		mu.Lock()
		out.Procs = append(out.Procs, ps...)
		mu.Unlock()
		return nil
	})
	return connect.NewResponse(out), nil
}

// owner finds the node that runs cpid (the node that created it: processes
// do not migrate yet) and checks it is UP.
func (d *Daemon) owner(cpid int64) (*state.Node, error) {
	c := vproc.CPID(cpid)
	if !c.Valid() {
		return nil, state.Errorf(state.CodeInvalid, "%d is not a cluster PID", cpid)
	}
	cl := d.fsm.Cluster()
	n, ok := cl.Nodes[uint32(c.Node())]
	if !ok {
		return nil, state.Errorf(state.CodeNotFound, "no process %d: node %d does not exist", cpid, c.Node())
	}
	if n.State != state.Up {
		return nil, state.Errorf(state.CodeConflict, "process %d was on node %d (%s), which is %s: it is lost", cpid, n.Num, n.Name, n.State)
	}
	return n, nil
}

func (d *Daemon) procsError(err error) error {
	switch {
	case errors.Is(err, procs.ErrNoSuchProcess):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d: %w", d.meta.Num, err))
	case errors.Is(err, procs.ErrNotOwner):
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d: %w", d.meta.Num, err))
	case errors.Is(err, procs.ErrNotDetached):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", d.meta.Num, err))
	}
	return d.toConnect(err)
}

func (p *peerService) Signal(ctx context.Context, req *connect.Request[ssiv1.SignalRequest]) (*connect.Response[ssiv1.SignalResponse], error) {
	d := p.d
	if err := d.procs.Signal(vproc.CPID(req.Msg.Cpid), syscall.Signal(req.Msg.Signal), procs.Caller{UID: req.Msg.Uid}); err != nil {
		return nil, d.procsError(err)
	}
	return connect.NewResponse(&ssiv1.SignalResponse{Node: d.meta.Num}), nil
}

// route authorizes the local caller and finds the node that runs cpid: it
// returns the caller's uid and, unless the job is local, a client of that
// node.
func (s *controlService) route(ctx context.Context, cpid int64) (uint32, *state.Node, ssiv1connect.PeerClient, error) {
	d := s.d
	caller, err := localCaller(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	n, err := d.owner(cpid)
	if err != nil {
		return 0, nil, nil, d.toConnect(err)
	}
	if n.Num == d.meta.Num {
		return caller.UID, n, nil, nil
	}
	return caller.UID, n, d.peer(joinHostPort(n.IPAddr, d.config().Port)), nil
}

func (s *controlService) Signal(ctx context.Context, req *connect.Request[ssiv1.SignalRequest]) (*connect.Response[ssiv1.SignalResponse], error) {
	uid, _, remote, err := s.route(ctx, req.Msg.Cpid)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	if remote == nil {
		return (&peerService{d: s.d}).Signal(ctx, connect.NewRequest(q))
	}
	return remote.Signal(ctx, connect.NewRequest(q))
}

func (p *peerService) Wait(ctx context.Context, req *connect.Request[ssiv1.WaitRequest]) (*connect.Response[ssiv1.WaitResponse], error) {
	d := p.d
	st, err := d.procs.Wait(ctx, vproc.CPID(req.Msg.Cpid), procs.Caller{UID: req.Msg.Uid})
	if err != nil {
		return nil, d.procsError(err)
	}
	return connect.NewResponse(&ssiv1.WaitResponse{Node: d.meta.Num, Exit: &ssiv1.ExecExit{Code: int32(st.ExitCode()), Signal: int32(st.Signal), Core: st.Core}}), nil
}

func (s *controlService) Wait(ctx context.Context, req *connect.Request[ssiv1.WaitRequest]) (*connect.Response[ssiv1.WaitResponse], error) {
	d := s.d
	uid, n, remote, err := s.route(ctx, req.Msg.Cpid)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	if remote == nil {
		return (&peerService{d: d}).Wait(ctx, connect.NewRequest(q))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go d.cancelIfDown(ctx, n, cancel)
	resp, err := remote.Wait(ctx, connect.NewRequest(q))
	if err != nil && context.Cause(ctx) != nil && ctx.Err() != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w; process %d is lost", context.Cause(ctx), q.Cpid))
	}
	if err != nil && isTransport(err) {
		return nil, connect.NewError(connect.CodeUnavailable, d.explainLoss(n, fmt.Errorf("waiting for process %d on node %d: %w", q.Cpid, n.Num, err)))
	}
	return resp, err
}

// isTransport reports whether err means the connection failed (rather
// than the peer answering with an error).
func isTransport(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeCanceled:
		return true
	}
	return false
}

// explainLoss waits (at most a few failure timeouts) for the cluster to
// decide whether a node that stopped answering is DOWN, and says so: its
// processes are then lost. Otherwise it returns err unchanged.
func (d *Daemon) explainLoss(n *state.Node, err error) error {
	deadline := time.After(3*d.config().FailureTimeout + time.Second)
	for {
		ch := d.fsm.Changed()
		if c := d.fsm.Cluster(); c.Nodes[n.Num] != nil && c.Nodes[n.Num].State == state.Down {
			return fmt.Errorf("node %d (%s) went DOWN; its processes are lost", n.Num, n.Name)
		}
		select {
		case <-ch:
		case <-deadline:
			return err
		}
	}
}

// cancelIfDown cancels ctx when node n leaves the cluster.
func (d *Daemon) cancelIfDown(ctx context.Context, n *state.Node, cancel context.CancelCauseFunc) {
	for {
		ch := d.fsm.Changed()
		if c := d.fsm.Cluster(); c.Nodes[n.Num] == nil || !c.Nodes[n.Num].State.Live() {
			cancel(fmt.Errorf("node %d (%s) went DOWN", n.Num, n.Name))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func (p *peerService) Logs(ctx context.Context, req *connect.Request[ssiv1.LogsRequest], st *connect.ServerStream[ssiv1.LogsChunk]) error {
	d := p.d
	path, done, err := d.procs.Logs(vproc.CPID(req.Msg.Cpid), procs.Caller{UID: req.Msg.Uid})
	if err != nil {
		return d.procsError(err)
	}
	w := chunkWriter{send: func(b []byte) error { return st.Send(&ssiv1.LogsChunk{Data: b}) }}
	if !req.Msg.Follow {
		f, err := os.Open(path)
		if err != nil {
			return d.toConnect(err)
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-done:
			time.Sleep(300 * time.Millisecond) // let Follow read the last bytes
			cancel()
		case <-fctx.Done():
		}
	}()
	_, err = rexec.Follow(fctx, path, 0, w)
	return err
}

type chunkWriter struct{ send func([]byte) error }

func (w chunkWriter) Write(b []byte) (int, error) {
	for off := 0; off < len(b); off += chunkSize {
		end := min(off+chunkSize, len(b))
		if err := w.send(append([]byte(nil), b[off:end]...)); err != nil {
			return off, err
		}
	}
	return len(b), nil
}

func (s *controlService) Logs(ctx context.Context, req *connect.Request[ssiv1.LogsRequest], st *connect.ServerStream[ssiv1.LogsChunk]) error {
	uid, _, remote, err := s.route(ctx, req.Msg.Cpid)
	if err != nil {
		return err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	if remote == nil {
		return (&peerService{d: s.d}).Logs(ctx, connect.NewRequest(q), st)
	}
	rs, err := remote.Logs(ctx, connect.NewRequest(q))
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Receive() {
		if err := st.Send(rs.Msg()); err != nil {
			return err
		}
	}
	return rs.Err()
}
