// Package consensus is this node's handle on Raft and the one way to reach
// the cluster's leader. Every change to the replicated state goes through
// Leader.Apply; every request that must be answered by the leader (a
// heartbeat, a join, a placement) goes through Forward, which runs it
// locally when this node leads and otherwise sends it to the leader with
// the original sender's identity (peer.SetOrigin), retrying while an
// election runs. It also runs the duties other subsystems register for the
// time this node leads (OnLeading) and tells them when the leader changes
// (LeaderChanged). Reads that must not be older than any acknowledged
// change wait in ReadBarrier for the leader's read index (read.go). It
// serves the Consensus RPC service (Apply) and ReadIndex.
//
// It must not decide what to apply: commands come typed from the
// subsystems, and the state machine (internal/state) judges them.
package consensus

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
)

// ApplyTimeout bounds one change, election retries included.
const ApplyTimeout = 5 * time.Second

// retryEvery is how often a call retries while no leader answers.
const retryEvery = 100 * time.Millisecond

// Leader reaches the leader from this node.
type Leader struct {
	self    uint32
	raft    *raft.Raft
	log     *slog.Logger
	clients *peer.Clients[ssiv1connect.ConsensusClient]

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the leader changes
	duties  []func(ctx context.Context, prev uint32)

	leaderChanges atomic.Uint64 // leader changes this node observed (metrics.go)

	reads reads // linearizable reads (read.go)
}

// New returns the handle of node self on r; net reaches the other nodes.
func New(self uint32, r *raft.Raft, net peer.Net, log *slog.Logger) *Leader {
	return &Leader{self: self, raft: r, log: log, changed: make(chan struct{}),
		clients: peer.NewClients(net, ssiv1connect.NewConsensusClient)}
}

// Raft is the node's Raft instance, for the subsystem that keeps Raft's
// configuration in line with the node table (internal/membership).
func (l *Leader) Raft() *raft.Raft { return l.raft }

// IsLeader reports whether this node leads.
func (l *Leader) IsLeader() bool { return l.raft.State() == raft.Leader }

// LeaderNum is the number of the current leader, 0 if none is known.
func (l *Leader) LeaderNum() uint32 {
	_, id := l.raft.LeaderWithID()
	return NumOf(id)
}

// AppliedIndex is the last log index this node has applied.
func (l *Leader) AppliedIndex() uint64 { return l.raft.AppliedIndex() }

// ServerID is node num's Raft server ID.
func ServerID(num uint32) raft.ServerID { return raft.ServerID(strconv.FormatUint(uint64(num), 10)) }

// NumOf is the node number of a Raft server ID (0 if it is not one).
func NumOf(id raft.ServerID) uint32 {
	n, err := strconv.ParseUint(string(id), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// LeaderChanged returns a channel closed at the next change of leader.
func (l *Leader) LeaderChanged() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// OnLeading registers a duty run (in its own goroutine) every time this
// node becomes leader, with a context that ends when it stops leading;
// prev is the last other node seen leading (0 if none). Register before Run.
func (l *Leader) OnLeading(duty func(ctx context.Context, prev uint32)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.duties = append(l.duties, duty)
}

// Run follows leadership until ctx ends: it starts the registered duties
// when this node gains leadership and stops them when it loses it, and
// signals LeaderChanged on every change of leader.
func (l *Leader) Run(ctx context.Context) {
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	l.raft.RegisterObserver(observer)
	defer l.raft.DeregisterObserver(observer)
	var prev uint32
	var stop context.CancelFunc
	var wg sync.WaitGroup
	defer func() {
		if stop != nil {
			stop()
		}
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-obs:
			lo := o.Data.(raft.LeaderObservation)
			l.leaderChanges.Add(1)
			if n := NumOf(lo.LeaderID); n != 0 && n != l.self {
				prev = n
			}
			l.mu.Lock()
			close(l.changed)
			l.changed = make(chan struct{})
			l.mu.Unlock()
		case leader := <-l.raft.LeaderCh():
			switch {
			case leader && stop == nil:
				lctx, cancel := context.WithCancel(ctx)
				stop = cancel
				l.mu.Lock()
				duties := append([]func(context.Context, uint32){}, l.duties...)
				l.mu.Unlock()
				l.log.Info("became leader", "previous", prev)
				for _, d := range duties {
					wg.Add(1)
					go func() { defer wg.Done(); d(lctx, prev) }()
				}
			case !leader && stop != nil:
				stop()
				wg.Wait()
				stop = nil
				l.log.Info("lost leadership")
			}
		}
	}
}

// ApplyLocal applies a command through this node's Raft, which must lead.
func (l *Leader) ApplyLocal(t state.CommandType, cmd any) (state.Result, uint64, error) {
	data, err := state.Encode(t, cmd)
	if err != nil {
		return state.Result{}, 0, err
	}
	return l.applyEncoded(data)
}

func (l *Leader) applyEncoded(data []byte) (state.Result, uint64, error) {
	f := l.raft.Apply(data, ApplyTimeout)
	if err := f.Error(); err != nil {
		return state.Result{}, 0, err
	}
	res, _ := f.Response().(state.Result)
	return res, f.Index(), nil
}

// Apply applies a command on the leader, wherever it is, retrying while an
// election runs (up to ApplyTimeout). A refused command comes back as a
// *state.Error; no reachable leader as rpcerr.ErrNoLeader.
//
// The command carries a request ID, so sending it again after a failure
// whose outcome is unknown (the leader lost its leadership or the
// connection broke after sending) is safe: the state machine applies it
// once and gives every copy the first outcome. If the outcome is still
// unknown when time runs out, Apply says so (rpcerr.ErrOutcomeUnknown)
// rather than claiming it failed.
func (l *Leader) Apply(ctx context.Context, t state.CommandType, cmd any) (state.Result, error) {
	id := make([]byte, 12)
	_, _ = rand.Read(id)
	data, err := state.EncodeRequest(t, cmd, fmt.Sprintf("%d-%x", l.self, id))
	if err != nil {
		return state.Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, ApplyTimeout)
	defer cancel()
	var res state.Result
	maybe := false // a copy may have been committed
	err = l.call(ctx, func() (bool, error) {
		r, _, err := l.applyEncoded(data)
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			return true, err
		case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout):
			maybe = true
			return true, err
		case err != nil:
			return false, fmt.Errorf("node %d: apply: %w", l.self, err)
		}
		res = r
		return false, nil
	}, func(leader uint32) (bool, error) {
		c, err := l.clients.To(leader)
		if err != nil {
			return true, err
		}
		resp, err := c.Apply(ctx, connect.NewRequest(&ssiv1.ApplyRequest{Command: data}))
		if err != nil {
			switch connect.CodeOf(err) {
			case connect.CodeUnavailable, connect.CodeFailedPrecondition:
				// Not the leader (any more): it did not take the command.
			case connect.CodeInvalidArgument, connect.CodeUnimplemented, connect.CodePermissionDenied:
				return false, fmt.Errorf("leader node %d: %w", leader, err)
			default:
				// Aborted (the leader lost its leadership with the command
				// in flight), a broken connection, a timeout: it may have
				// been committed; the request ID makes a retry safe.
				maybe = true
			}
			return true, fmt.Errorf("leader node %d: %w", leader, err)
		}
		if err := json.Unmarshal(resp.Msg.Result, &res); err != nil {
			return false, fmt.Errorf("decode the answer of leader node %d: %w", leader, err)
		}
		return false, nil
	})
	if err != nil {
		if maybe && errors.Is(err, rpcerr.ErrNoLeader) {
			return state.Result{}, fmt.Errorf("node %d: %w: %v", l.self, rpcerr.ErrOutcomeUnknown, err)
		}
		return state.Result{}, err
	}
	return res, res.Error()
}

// Inbound is who a request speaks for, as its handler saw it.
type Inbound struct {
	Origin    uint32 // the node the request speaks for (0: a machine without a certificate)
	Forwarded bool   // it already came through the forwarding path
}

// InboundOf reads a request's origin (see peer.Origin).
func InboundOf(ctx context.Context, h http.Header) Inbound {
	origin, _, fwd, _ := peer.Origin(ctx, h)
	return Inbound{Origin: origin, Forwarded: fwd}
}

// Forward answers a request on the leader: by local when this node leads,
// otherwise by the leader's RPC (chosen by remote) with the origin marked,
// retrying while an election runs until ctx ends. A request that was
// already forwarded is never forwarded again: a node that is not the leader
// either says Unavailable, and the forwarder retries.
func Forward[Req, Resp any](ctx context.Context, l *Leader, in Inbound, msg *Req,
	local func(context.Context, *Req) (*Resp, error),
	remote func(leader uint32) (func(context.Context, *connect.Request[Req]) (*connect.Response[Resp], error), error),
) (*Resp, error) {
	if in.Forwarded && !l.IsLeader() {
		return nil, rpcerr.Unavailable("node %d is not the leader either (election in progress?)", l.self)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ApplyTimeout)
		defer cancel()
	}
	var out *Resp
	err := l.call(ctx, func() (bool, error) {
		r, err := local(ctx, msg)
		out = r
		return false, err
	}, func(leader uint32) (bool, error) {
		fn, err := remote(leader)
		if err != nil {
			return true, err
		}
		req := connect.NewRequest(msg)
		peer.SetOrigin(req.Header(), in.Origin)
		resp, err := fn(ctx, req)
		if err != nil {
			return retryable(err), err
		}
		out = resp.Msg
		return false, nil
	})
	return out, err
}

// call runs local when this node leads, else remote on the leader, until
// one says not to retry or ctx ends.
func (l *Leader) call(ctx context.Context, local func() (retry bool, err error), remote func(leader uint32) (retry bool, err error)) error {
	var last error = rpcerr.ErrNoLeader
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		var retry bool
		var err error
		if l.IsLeader() {
			retry, err = local()
		} else if n := l.LeaderNum(); n != 0 && n != l.self {
			retry, err = remote(n)
		} else {
			retry, err = true, fmt.Errorf("node %d: %w (election in progress?)", l.self, rpcerr.ErrNoLeader)
		}
		if !retry {
			return err
		}
		last = err
		t.Reset(retryEvery)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w from node %d (%v); is a majority of the voters up? check 'cluster -V'", rpcerr.ErrNoLeader, l.self, last)
		case <-t.C:
		}
	}
}

// retryable: the leader was not there (yet) to answer.
func retryable(err error) bool {
	c := connect.CodeOf(err)
	return c == connect.CodeUnavailable || c == connect.CodeFailedPrecondition
}

// Service is the Consensus RPC service: the leader's end of Apply.
type Service struct{ l *Leader }

// Service returns the RPC service of this node.
func (l *Leader) Service() *Service { return &Service{l: l} }

// Apply commits an encoded command forwarded by another member.
func (s *Service) Apply(ctx context.Context, req *connect.Request[ssiv1.ApplyRequest]) (*connect.Response[ssiv1.ApplyResponse], error) {
	l := s.l
	if !l.IsLeader() {
		return nil, rpcerr.Unavailable("node %d is not the leader", l.self)
	}
	if len(req.Msg.Command) == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty command"))
	}
	// A member running a newer ssi must not get a command into the log
	// that this leader (and so, likely, others) cannot apply.
	if err := state.CheckEntry(req.Msg.Command); err != nil {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("node %d (leader): %w", l.self, err))
	}
	res, idx, err := l.applyEncoded(req.Msg.Command)
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return nil, rpcerr.Unavailable("node %d: apply: %w", l.self, err)
	case err != nil:
		// The command was handed to Raft: it may yet be committed.
		return nil, connect.NewError(connect.CodeAborted, fmt.Errorf("node %d: apply: %w (the change may or may not have been made)", l.self, err))
	}
	b, err := json.Marshal(res)
	if err != nil {
		return nil, rpcerr.ToConnect(l.self, err)
	}
	return connect.NewResponse(&ssiv1.ApplyResponse{Result: b, Index: idx}), nil
}

var _ ssiv1connect.ConsensusHandler = (*Service)(nil)
