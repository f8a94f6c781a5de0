package cfs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Control is the cluster filesystem's part of the Control service
// (ssi cfs).
type Control struct{ f *FS }

// Control returns the part of the Control service this subsystem serves.
func (f *FS) Control() *Control { return &Control{f} }

// CfsStatus says who serves and who replicates.
func (c *Control) CfsStatus(ctx context.Context, _ *connect.Request[ssiv1.CfsStatusRequest]) (*connect.Response[ssiv1.CfsState], error) {
	return connect.NewResponse(c.f.status(c.f.Record())), nil
}

func (f *FS) status(rec state.CFS) *ssiv1.CfsState {
	out := &ssiv1.CfsState{Server: rec.Server, Replica: rec.Replica, Synced: rec.Synced, Failovers: rec.Failovers, Mount: f.c.Mount, Role: "client", NodeJobRoot: f.wantJobRoot()}
	if f.c.FSM != nil {
		c := f.c.FSM.Cluster()
		out.Recorded, out.JobRoot = c.CFS != nil, c.JobRoot
	}
	switch f.c.Self {
	case rec.Server:
		out.Role = "serving"
	case rec.Replica:
		out.Role = "replica"
	}
	return out
}

// SetCfsJobRoot turns the cluster setting on or off: jobs started through
// ssi get the cluster filesystem as their / on every node (a node started
// with --cfs-job-root does whatever the setting). Root and the ssi group only.
func (c *Control) SetCfsJobRoot(ctx context.Context, req *connect.Request[ssiv1.SetCfsJobRootRequest]) (*connect.Response[ssiv1.CfsState], error) {
	f := c.f
	if err := transport.AuthorizeAdmin(ctx, "turn the cluster root as jobs' / on or off"); err != nil {
		return nil, err
	}
	if f.c.Leader == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node keeps no cluster state"))
	}
	if _, err := f.c.Leader.Apply(ctx, state.CmdSetJobRoot, state.SetJobRoot{On: req.Msg.On}); err != nil {
		return nil, rpcerr.ToConnect(f.c.Self, err)
	}
	st := f.status(f.Record())
	st.JobRoot = req.Msg.On // this node's copy of the state may not have it yet
	return connect.NewResponse(st), nil
}

// SetCfsReplica names the node that replicates the cluster filesystem (0:
// none). Root and the ssi group only. The serving node then copies its export there and
// records the replica in sync; until then the replica cannot take over.
func (c *Control) SetCfsReplica(ctx context.Context, req *connect.Request[ssiv1.SetCfsReplicaRequest]) (*connect.Response[ssiv1.CfsState], error) {
	f := c.f
	if err := transport.AuthorizeAdmin(ctx, "choose the cluster filesystem's replica"); err != nil {
		return nil, err
	}
	if f.c.Leader == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("this node keeps no cluster state"))
	}
	rec := f.Record()
	to := req.Msg.Replica
	if to != 0 {
		n, ok := f.c.FSM.Cluster().Nodes[to]
		switch {
		case !ok:
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d is not in the node table", to))
		case to == rec.Server:
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("node %d serves the cluster filesystem; its replica must be another node", to))
		case n.State == state.NeverUp:
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d has never joined the cluster; start it first", to))
		}
	}
	next := state.CFS{Server: rec.Server, Replica: to, Failovers: rec.Failovers}
	if next == rec {
		return connect.NewResponse(f.status(rec)), nil
	}
	if _, err := f.c.Leader.Apply(ctx, state.CmdSetCFS, state.SetCFS{CFS: next, Expect: &rec, Reason: "ssi cfs replica", Time: time.Now()}); err != nil {
		return nil, rpcerr.ToConnect(f.c.Self, err)
	}
	return connect.NewResponse(f.status(next)), nil
}
