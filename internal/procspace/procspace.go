// Package procspace is the single process space across nodes: it starts a
// process for the local CLI here or on any node and relays its stream
// (Exec), lists the processes of every node (Procs, the `ps` fan-out), and
// routes signals, waits and logs to the node where a process runs now. That
// node is the location recorded in the replicated state for a process that
// moved, else the node its cluster PID names; creating a process costs no
// log entry. It serves the Process RPC service (the node that runs the
// process) and the process part of the Control service (Exec, Procs,
// Signal, Wait, Logs).
//
// The relay is built so that the client's daemon can later switch a live
// stream from one node to another without the client noticing: output
// frames carry sequence numbers (a frame already delivered is dropped), and
// stdin not yet acknowledged by the node that runs the process is kept and
// bounded by a window (see relay.go). Between daemons the stream runs on a
// TLS connection of its own (ALPN transport.ProtoExec, lean.go) where both
// ends offer it, else on the Process service's Exec stream; the relay
// treats the two alike.
//
// It must not start jobs itself (internal/procs and internal/rexec do) nor
// decide placement (internal/placement); it reaches other nodes only
// through internal/peer.
package procspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Placer picks the node for a process started without one (`ssi run`).
type Placer interface {
	Fastest(ctx context.Context) (uint32, error)
	FastestExcept(ctx context.Context, except ...uint32) (uint32, error)
}

// Config is what the process space needs from the node.
type Config struct {
	Self   uint32
	Name   string
	FSM    *state.FSM
	Net    peer.Net
	Jobs   *procs.Manager
	Placer Placer
	Log    *slog.Logger
	// Conns are the exec streams' own connections (transport's
	// ExecListener); nil: this node serves exec streams over RPC only.
	Conns net.Listener
	// OwnStreams: relay exec streams to other nodes over connections of
	// their own (lean.go: up to twice the bulk throughput) rather than
	// pooled Connect streams. Each such stream opens a TLS connection
	// (measured: about a millisecond more per remote exec): off by default
	// until a connection carries more than one exec.
	OwnStreams bool
}

// Space is one node's part of the process space.
type Space struct {
	cfg     Config
	log     *slog.Logger
	clients *peer.Clients[ssiv1connect.ProcessClient]
	streams streamCounts // relayed exec streams, by transport (lean.go)
	refused refusals     // nodes that do not take an exec stream of their own

	movMu    sync.Mutex
	movables map[vproc.CPID]*movable    // attached streams that can follow a move (move.go)
	arrivals map[vproc.CPID]*arrival    // jobs that moved here, waiting for their stream
	passed   map[vproc.CPID]*passedMove // jobs spliced to a CLI's own stdio here that can move (localmove.go)
}

// New returns the node's process space.
func New(cfg Config) *Space {
	return &Space{cfg: cfg, log: cfg.Log, clients: peer.NewClients(cfg.Net, ssiv1connect.NewProcessClient),
		movables: map[vproc.CPID]*movable{}, arrivals: map[vproc.CPID]*arrival{}, passed: map[vproc.CPID]*passedMove{}}
}

// Run serves the exec streams' own connections (Config.Conns) until ctx
// ends.
func (s *Space) Run(ctx context.Context) {
	if s.cfg.Conns == nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { s.cfg.Conns.Close() })
	defer stop()
	s.Service().ServeConns(s.cfg.Conns)
}

func (s *Space) fail(err error) error { return rpcerr.ToConnect(s.cfg.Self, err) }

// failureTimeout is the cluster's failure-detection time.
func (s *Space) failureTimeout() time.Duration {
	if t := s.cfg.FSM.Config().FailureTimeout; t > 0 {
		return t
	}
	return state.DefaultFailureTimeout
}

// Locate is the node where process cpid runs now: its recorded location if
// it moved, else the node that created it.
func Locate(c *state.Cluster, cpid vproc.CPID) uint32 {
	if n, ok := c.Location(int64(cpid)); ok {
		return n
	}
	return uint32(cpid.Node())
}

// where finds the UP node that runs cpid.
func (s *Space) where(cpid int64) (*state.Node, error) {
	c := vproc.CPID(cpid)
	if !c.Valid() {
		return nil, state.Errorf(state.CodeInvalid, "%d is not a cluster PID", cpid)
	}
	cl := s.cfg.FSM.Cluster()
	num := Locate(cl, c)
	n, ok := cl.Nodes[num]
	if !ok {
		return nil, state.Errorf(state.CodeNotFound, "no process %d: node %d does not exist", cpid, num)
	}
	if n.State != state.Up {
		return nil, state.Errorf(state.CodeConflict, "process %d was on node %d (%s), which is %s: it is lost", cpid, n.Num, n.Name, n.State)
	}
	return n, nil
}

// untilNode returns a channel closed once node num satisfies done (or is
// no longer in the table), or ctx ends. It is the one watcher of the node
// table the process space uses.
func (s *Space) untilNode(ctx context.Context, num uint32, done func(*state.Node) bool) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			changed := s.cfg.FSM.Changed()
			if n := s.cfg.FSM.Cluster().Nodes[num]; n == nil || done(n) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()
	return ch
}

func notLive(n *state.Node) bool { return !n.State.Live() }
func isDown(n *state.Node) bool  { return n.State == state.Down }

// cancelIfDown cancels ctx with a cause naming the node once node n leaves
// the cluster.
func (s *Space) cancelIfDown(ctx context.Context, n *state.Node, cancel context.CancelCauseFunc) {
	go func() {
		<-s.untilNode(ctx, n.Num, notLive)
		if ctx.Err() == nil {
			cancel(fmt.Errorf("node %d (%s) went DOWN", n.Num, n.Name))
		}
	}()
}

// explainLoss waits (at most a few failure timeouts) for the cluster to
// decide whether a node that stopped answering is DOWN, and says so: its
// processes are then lost. Otherwise it returns err unchanged.
func (s *Space) explainLoss(n *state.Node, err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*s.failureTimeout()+time.Second)
	defer cancel()
	<-s.untilNode(ctx, n.Num, isDown)
	if c := s.cfg.FSM.Cluster(); c.Nodes[n.Num] != nil && c.Nodes[n.Num].State == state.Down {
		return fmt.Errorf("node %d (%s) went DOWN; its processes are lost", n.Num, n.Name)
	}
	return err
}

// callerFrom is the CLI's identity from the control socket.
func callerFrom(ctx context.Context) (procs.Caller, error) {
	c, ok := transport.CallerFrom(ctx)
	if !ok {
		return procs.Caller{}, connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: no peer credentials"))
	}
	return procs.Caller{UID: c.UID, GID: c.GID, Groups: c.Groups}, nil
}

// procsError maps the job table's errors to wire codes.
func (s *Space) procsError(err error) error {
	switch {
	case errors.Is(err, procs.ErrNoSuchProcess), errors.Is(err, procs.ErrMoved):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d: %w", s.cfg.Self, err))
	case errors.Is(err, procs.ErrNotOwner):
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d: %w", s.cfg.Self, err))
	case errors.Is(err, procs.ErrNotDetached):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: %w", s.cfg.Self, err))
	}
	return s.fail(err)
}
