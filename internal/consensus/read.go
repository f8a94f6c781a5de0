package consensus

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
)

// Applied is what a linearizable read needs of the state machine: how far
// it has applied the log, and a wake-up at the next applied change.
type Applied interface {
	AppliedIndex() uint64
	Changed() <-chan struct{}
}

// reads is the read side of a Leader: the state machine it waits on, the
// clients of the leader's ReadIndex service and the leader's coalescing
// of concurrent requests into one barrier.
type reads struct {
	fsm     Applied
	clients *peer.Clients[ssiv1connect.ReadIndexClient]

	mu      sync.Mutex
	next    *barrierCall // the barrier the next caller joins (not started yet)
	running bool
}

type barrierCall struct {
	done chan struct{}
	idx  uint64
	err  error
}

// UseFSM gives the handle the state machine linearizable reads wait on
// (the wiring calls it once, before serving).
func (l *Leader) UseFSM(f Applied, net peer.Net) {
	l.reads.fsm = f
	l.reads.clients = peer.NewClients(net, ssiv1connect.NewReadIndexClient)
}

// ReadBarrier returns once this node's state machine has applied every
// change acknowledged anywhere before the call: it asks the leader for its
// read index (the leader confirms its leadership with a quorum by
// committing a barrier and answers the index its state machine then had
// applied) and waits until the local state machine got there. So a read
// made after it is never older than a change acknowledged before it began
// (linearizable). Without a leader within ApplyTimeout it fails with
// rpcerr.ErrNoLeader; reads that accept an older state skip it (--stale).
func (l *Leader) ReadBarrier(ctx context.Context) error {
	if l.reads.fsm == nil {
		return fmt.Errorf("node %d: linearizable reads are not wired", l.self)
	}
	ctx, cancel := context.WithTimeout(ctx, ApplyTimeout)
	defer cancel()
	var idx uint64
	err := l.call(ctx, func() (bool, error) {
		i, err := l.barrier()
		if err != nil {
			return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrEnqueueTimeout), err
		}
		idx = i
		return false, nil
	}, func(leader uint32) (bool, error) {
		c, err := l.reads.clients.To(leader)
		if err != nil {
			return true, err
		}
		resp, err := c.ReadIndex(ctx, connect.NewRequest(&ssiv1.ReadIndexRequest{}))
		if err != nil {
			switch connect.CodeOf(err) {
			case connect.CodeUnimplemented:
				// A leader of an older release: no read index to be had;
				// answer from the local state, as that release did.
				idx = 0
				return false, nil
			case connect.CodeInvalidArgument, connect.CodePermissionDenied:
				return false, fmt.Errorf("leader node %d: read index: %w", leader, err)
			}
			// Not the leader any more, a broken connection, a timeout: a
			// read changes nothing, so asking again is always safe.
			return true, fmt.Errorf("leader node %d: read index: %w", leader, err)
		}
		idx = resp.Msg.Index
		return false, nil
	})
	if err != nil {
		return err
	}
	for {
		changed := l.reads.fsm.Changed()
		applied := l.reads.fsm.AppliedIndex()
		if applied >= idx {
			return nil
		}
		select {
		case <-ctx.Done():
			return rpcerr.Unavailable("node %d has applied the log up to %d, not yet to the leader's %d: it is behind; try again, ask another node, or use --stale", l.self, applied, idx)
		case <-changed:
		}
	}
}

// barrier, on the leader: every caller waits for a barrier that started
// after it called, and callers that arrive while one runs share the next.
func (l *Leader) barrier() (uint64, error) {
	r := &l.reads
	r.mu.Lock()
	if r.next == nil {
		r.next = &barrierCall{done: make(chan struct{})}
	}
	b := r.next
	if !r.running {
		r.running = true
		go l.runBarriers()
	}
	r.mu.Unlock()
	<-b.done
	return b.idx, b.err
}

func (l *Leader) runBarriers() {
	r := &l.reads
	for {
		r.mu.Lock()
		b := r.next
		r.next = nil
		if b == nil {
			r.running = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		// A barrier is a log entry: committed by a quorum (so this node
		// still leads) and returned once the state machine applied every
		// entry before it, those of earlier terms included.
		if err := l.raft.Barrier(ApplyTimeout).Error(); err != nil {
			b.err = err
		} else {
			b.idx = r.fsm.AppliedIndex()
		}
		close(b.done)
	}
}

// ReadService is the ReadIndex RPC service: the leader's end of ReadBarrier.
type ReadService struct{ l *Leader }

// ReadService returns the ReadIndex service of this node.
func (l *Leader) ReadService() *ReadService { return &ReadService{l: l} }

// ReadIndex answers the index a member must apply before it reads.
func (s *ReadService) ReadIndex(ctx context.Context, _ *connect.Request[ssiv1.ReadIndexRequest]) (*connect.Response[ssiv1.ReadIndexResponse], error) {
	l := s.l
	if !l.IsLeader() || l.reads.fsm == nil {
		return nil, rpcerr.Unavailable("node %d is not the leader", l.self)
	}
	idx, err := l.barrier()
	if err != nil {
		return nil, rpcerr.Unavailable("node %d: read index: %w", l.self, err)
	}
	return connect.NewResponse(&ssiv1.ReadIndexResponse{Index: idx}), nil
}

var _ ssiv1connect.ReadIndexHandler = (*ReadService)(nil)
