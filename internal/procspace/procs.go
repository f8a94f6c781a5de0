package procspace

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// fanOutLimit bounds the calls of one fan-out in flight at once.
const fanOutLimit = 64

// Service is the Process RPC service: the node that runs a process.
type Service struct{ s *Space }

// Service returns the node's Process RPC service.
func (s *Space) Service() *Service { return &Service{s: s} }

var _ ssiv1connect.ProcessHandler = (*Service)(nil)

// Control is the process part of the Control service (the local CLI).
type Control struct{ s *Space }

// Control returns the process part of the Control service.
func (s *Space) Control() *Control { return &Control{s: s} }

func (s *Space) procsFor(req *ssiv1.ProcsRequest) []*ssiv1.Proc {
	f := procs.Filter{CPID: vproc.CPID(req.Cpid)}
	if !req.All && req.HasUid {
		uid := req.Uid
		f.UID = &uid
	}
	jobs := s.cfg.Jobs
	var out []*ssiv1.Proc
	for _, p := range jobs.List(f) {
		pp := &ssiv1.Proc{
			Cpid: int64(p.CPID), Node: uint32(p.Node), Pid: int32(p.PID), Job: int64(p.Job), Uid: p.UID, User: p.User,
			State: p.State, Cpu: p.CPU, Rss: p.RSS, StartUnixMs: p.Start.UnixMilli(), CpuTimeMs: p.Time.Milliseconds(),
			Cmd: p.Cmd, Migratable: p.Migratable, Pinned: p.Pinned, Detached: jobs.Detached(p.CPID),
		}
		if exited, st := jobs.Exited(p.CPID); exited {
			pp.Exited, pp.ExitCode = true, int32(st.ExitCode())
		}
		out = append(out, pp)
	}
	return out
}

// Procs lists this node's processes for another node.
func (p *Service) Procs(ctx context.Context, req *connect.Request[ssiv1.ProcsRequest]) (*connect.Response[ssiv1.ProcsResponse], error) {
	return connect.NewResponse(&ssiv1.ProcsResponse{Procs: p.s.procsFor(req.Msg)}), nil
}

// fanOut calls fn for every UP node (or only node `only`) with bounded
// parallelism, never serially, and says which nodes did not answer.
func (s *Space) fanOut(ctx context.Context, only uint32, fn func(ctx context.Context, n *state.Node) error) []string {
	var targets []*state.Node
	for _, n := range s.cfg.FSM.Cluster().SortedNodes() {
		if (only == 0 || n.Num == only) && n.State == state.Up {
			targets = append(targets, n)
		}
	}
	var mu sync.Mutex
	var unreachable []string
	sem := make(chan struct{}, fanOutLimit)
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

// Procs lists the caller's (or, with all, everyone's) processes on every
// UP node, one node, or the node where one process runs.
func (c *Control) Procs(ctx context.Context, req *connect.Request[ssiv1.ProcsRequest]) (*connect.Response[ssiv1.ProcsResponse], error) {
	s := c.s
	caller, err := callerFrom(ctx)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = caller.UID, true
	cl := s.cfg.FSM.Cluster()
	if q.Node != 0 {
		if n, ok := cl.Nodes[q.Node]; !ok {
			return nil, s.fail(state.Errorf(state.CodeNotFound, "node %d is not in the node table", q.Node))
		} else if n.State != state.Up {
			return nil, s.fail(state.Errorf(state.CodeConflict, "node %d (%s) is %s", n.Num, n.Name, n.State))
		}
	}
	if q.Cpid != 0 {
		q.Node = Locate(cl, vproc.CPID(q.Cpid))
	}
	out := s.gather(ctx, q)
	if q.Cpid != 0 && len(out.Procs) == 0 && len(out.Unreachable) == 0 {
		// Not where this node's copy of the state says: it may have just
		// moved (the record is committed, not yet applied here). Ask
		// every node.
		q.Node = 0
		out = s.gather(ctx, q)
	}
	return connect.NewResponse(out), nil
}

// gather asks the nodes q names (one, or every UP node) for their rows.
func (s *Space) gather(ctx context.Context, q *ssiv1.ProcsRequest) *ssiv1.ProcsResponse {
	var mu sync.Mutex
	out := &ssiv1.ProcsResponse{}
	out.Unreachable = s.fanOut(ctx, q.Node, func(ctx context.Context, n *state.Node) error {
		var ps []*ssiv1.Proc
		if n.Num == s.cfg.Self {
			ps = s.procsFor(q)
		} else {
			cl, err := s.clients.To(n.Num)
			if err != nil {
				return err
			}
			resp, err := cl.Procs(ctx, connect.NewRequest(q))
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
	return out
}

// route authorizes the local caller and finds the node that runs cpid: it
// returns the caller's uid, the node and, unless the process is here, a
// client of that node.
func (c *Control) route(ctx context.Context, cpid int64) (uint32, *state.Node, ssiv1connect.ProcessClient, error) {
	s := c.s
	caller, err := callerFrom(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	n, err := s.where(cpid)
	if err != nil {
		return 0, nil, nil, s.fail(err)
	}
	if n.Num == s.cfg.Self {
		return caller.UID, n, nil, nil
	}
	cl, err := s.clients.To(n.Num)
	if err != nil {
		return 0, nil, nil, rpcerr.Unavailable("node %d (%s): %w", n.Num, n.Name, err)
	}
	return caller.UID, n, cl, nil
}

// Signal signals a process of this node.
func (p *Service) Signal(ctx context.Context, req *connect.Request[ssiv1.SignalRequest]) (*connect.Response[ssiv1.SignalResponse], error) {
	s := p.s
	// A job that is moving (attached: its stream; detached: the job
	// table's mark): the signal goes where the move leaves it (after a
	// commit, this node no longer has it, and Control.Signal asks the
	// node that has).
	s.AwaitMove(ctx, vproc.CPID(req.Msg.Cpid))
	s.cfg.Jobs.AwaitMove(ctx, vproc.CPID(req.Msg.Cpid))
	if err := s.cfg.Jobs.Signal(vproc.CPID(req.Msg.Cpid), syscall.Signal(req.Msg.Signal), procs.Caller{UID: req.Msg.Uid}); err != nil {
		return nil, s.procsError(err)
	}
	return connect.NewResponse(&ssiv1.SignalResponse{Node: s.cfg.Self}), nil
}

// Signal signals a process wherever it runs.
func (c *Control) Signal(ctx context.Context, req *connect.Request[ssiv1.SignalRequest]) (*connect.Response[ssiv1.SignalResponse], error) {
	uid, n, remote, err := c.route(ctx, req.Msg.Cpid)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	for try := 0; ; try++ {
		var resp *connect.Response[ssiv1.SignalResponse]
		if remote == nil {
			resp, err = c.s.Service().Signal(ctx, connect.NewRequest(q))
		} else {
			resp, err = remote.Signal(ctx, connect.NewRequest(q))
		}
		if try > 0 || connect.CodeOf(err) != connect.CodeNotFound {
			return resp, err
		}
		var ok bool
		if n, remote, ok = c.relocate(ctx, q.Cpid, uid, n.Num); !ok {
			return resp, err
		}
	}
}

// relocate finds the node that runs cpid by asking every node, for a call
// that the located node answered with "no such process": the process may
// have just moved, the move committed and not yet applied here. ok is
// false when no node has it (or only the one asked already).
func (c *Control) relocate(ctx context.Context, cpid int64, uid uint32, asked uint32) (*state.Node, ssiv1connect.ProcessClient, bool) {
	s := c.s
	out := s.gather(ctx, &ssiv1.ProcsRequest{Cpid: cpid, All: true, Uid: uid, HasUid: true})
	for _, p := range out.Procs {
		if p.Cpid != cpid || p.Node == asked {
			continue
		}
		n, ok := s.cfg.FSM.Cluster().Nodes[p.Node]
		if !ok {
			return nil, nil, false
		}
		if p.Node == s.cfg.Self {
			return n, nil, true
		}
		cl, err := s.clients.To(p.Node)
		if err != nil {
			return nil, nil, false
		}
		return n, cl, true
	}
	return nil, nil, false
}

// Wait waits for a detached process of this node.
func (p *Service) Wait(ctx context.Context, req *connect.Request[ssiv1.WaitRequest]) (*connect.Response[ssiv1.WaitResponse], error) {
	s := p.s
	st, err := s.cfg.Jobs.Wait(ctx, vproc.CPID(req.Msg.Cpid), procs.Caller{UID: req.Msg.Uid})
	if err != nil {
		return nil, s.procsError(err)
	}
	return connect.NewResponse(&ssiv1.WaitResponse{Node: s.cfg.Self, Exit: &ssiv1.ExecExit{Code: int32(st.ExitCode()), Signal: int32(st.Signal), Core: st.Core}}), nil
}

// Wait waits for a detached process wherever it runs; if its node goes
// DOWN meanwhile, the process is lost and Wait says so.
func (c *Control) Wait(ctx context.Context, req *connect.Request[ssiv1.WaitRequest]) (*connect.Response[ssiv1.WaitResponse], error) {
	uid, n, remote, err := c.route(ctx, req.Msg.Cpid)
	if err != nil {
		return nil, err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	// A process that moves while one waits (or moved just before, and
	// this node has not applied it yet) is waited for where it runs now,
	// move after move.
	for moves := 0; ; moves++ {
		resp, err := c.waitAt(ctx, q, n, remote)
		if connect.CodeOf(err) != connect.CodeNotFound || moves == maxFollow {
			return resp, err
		}
		var ok bool
		if n, remote, ok = c.relocate(ctx, q.Cpid, uid, n.Num); !ok {
			return resp, err
		}
	}
}

// maxFollow bounds how many moves a wait follows.
const maxFollow = 64

// waitAt waits for process q.Cpid on node n (remote nil: this node).
func (c *Control) waitAt(ctx context.Context, q *ssiv1.WaitRequest, n *state.Node, remote ssiv1connect.ProcessClient) (*connect.Response[ssiv1.WaitResponse], error) {
	s := c.s
	if remote == nil {
		return s.Service().Wait(ctx, connect.NewRequest(q))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.cancelIfDown(ctx, n, cancel)
	resp, err := remote.Wait(ctx, connect.NewRequest(q))
	if err != nil && context.Cause(ctx) != nil && ctx.Err() != nil {
		return nil, rpcerr.Unavailable("%w; process %d is lost", context.Cause(ctx), q.Cpid)
	}
	if err != nil && rpcerr.IsTransport(err) {
		return nil, rpcerr.Unavailable("%w", s.explainLoss(n, fmt.Errorf("waiting for process %d on node %d: %w", q.Cpid, n.Num, err)))
	}
	return resp, err
}

// Logs sends the output log of a detached process of this node.
func (p *Service) Logs(ctx context.Context, req *connect.Request[ssiv1.LogsRequest], st *connect.ServerStream[ssiv1.LogsChunk]) error {
	s := p.s
	path, done, err := s.cfg.Jobs.Logs(vproc.CPID(req.Msg.Cpid), procs.Caller{UID: req.Msg.Uid})
	if err != nil {
		return s.procsError(err)
	}
	w := chunkWriter{send: func(b []byte) error { return st.Send(&ssiv1.LogsChunk{Data: b}) }}
	if !req.Msg.Follow {
		f, err := os.Open(path)
		if err != nil {
			return s.fail(err)
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	}
	// Follow until the job has ended: Follow copies what the log holds when
	// it is cancelled, so nothing written before the end is missed.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-done:
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

// Logs sends a detached process's log from wherever it runs.
func (c *Control) Logs(ctx context.Context, req *connect.Request[ssiv1.LogsRequest], st *connect.ServerStream[ssiv1.LogsChunk]) error {
	uid, _, remote, err := c.route(ctx, req.Msg.Cpid)
	if err != nil {
		return err
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	if remote == nil {
		return c.s.Service().Logs(ctx, connect.NewRequest(q), st)
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
