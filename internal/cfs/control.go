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
	out := &ssiv1.CfsState{Server: rec.Server, Replica: rec.Replica, Synced: rec.Synced, Failovers: rec.Failovers, Mount: f.c.Mount, Role: "client"}
	if f.c.FSM != nil {
		out.Recorded = f.c.FSM.Cluster().CFS != nil
	}
	switch f.c.Self {
	case rec.Server:
		out.Role = "serving"
	case rec.Replica:
		out.Role = "replica"
	}
	return out
}

// SetCfsReplica names the node that replicates the cluster filesystem (0:
// none). Root only. The serving node then copies its export there and
// records the replica in sync; until then the replica cannot take over.
func (c *Control) SetCfsReplica(ctx context.Context, req *connect.Request[ssiv1.SetCfsReplicaRequest]) (*connect.Response[ssiv1.CfsState], error) {
	f := c.f
	tc, ok := transport.CallerFrom(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: no peer credentials"))
	}
	if tc.UID != 0 {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only root may choose the cluster filesystem's replica"))
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
