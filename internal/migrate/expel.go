package migrate

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Placer picks where a job goes (internal/placement): the least-loaded UP
// node but those given.
type Placer interface {
	FastestExcept(ctx context.Context, except ...uint32) (uint32, error)
}

// Expel (Control) empties a node: every job that can move goes to the
// least-loaded other node (clusternode_shutdown --drain, ssi node expel).
func (c *Control) Expel(ctx context.Context, req *connect.Request[ssiv1.ExpelRequest]) (*connect.Response[ssiv1.ExpelResponse], error) {
	m := c.m
	uid, err := callerUID(ctx)
	if err != nil {
		return nil, err
	}
	if uid != 0 {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only root may send a node's jobs away"))
	}
	q := req.Msg
	q.Uid, q.HasUid = uid, true
	num := q.Node
	if num == 0 {
		num = m.cfg.Self
	}
	q.Node = num
	if num == m.cfg.Self {
		return m.Service().Expel(ctx, connect.NewRequest(q))
	}
	n, ok := m.cfg.FSM.Cluster().Nodes[num]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("node %d is not in the node table", num))
	}
	if n.State != state.Up {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d (%s) is %s", num, n.Name, n.State))
	}
	remote, err := m.clients.To(num)
	if err != nil {
		return nil, rpcerr.Unavailable("node %d: %w", num, err)
	}
	return remote.Expel(ctx, connect.NewRequest(q))
}

// Expel moves every job of this node that can move, one after another,
// each to the least-loaded other UP node at that moment; it reports each
// job's fate.
func (s *Service) Expel(ctx context.Context, req *connect.Request[ssiv1.ExpelRequest]) (*connect.Response[ssiv1.ExpelResponse], error) {
	m := s.m
	if !req.Msg.HasUid || req.Msg.Uid != 0 {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only root may send a node's jobs away"))
	}
	if m.cfg.Placer == nil {
		return nil, m.fail(errors.New("no placement"))
	}
	out := &ssiv1.ExpelResponse{Node: m.cfg.Self}
	criuPath, cerr := m.criu()
	for _, cpid := range m.cfg.Jobs.Running() {
		r := &ssiv1.ExpelResult{Cpid: int64(cpid)}
		out.Jobs = append(out.Jobs, r)
		if cerr != nil {
			r.Error = cerr.Error()
			continue
		}
		j, err := m.cfg.Jobs.Movable(cpid, procs.Caller{UID: 0})
		if err != nil {
			r.Error = err.Error()
			continue
		}
		to, err := m.cfg.Placer.FastestExcept(ctx, m.outside(j)...)
		if err != nil {
			r.Error = fmt.Sprintf("no node to move it to: %v", err)
			continue
		}
		n, ok := m.cfg.FSM.Cluster().Nodes[to]
		if !ok || to == m.cfg.Self {
			r.Error = "no other node is UP"
			continue
		}
		if _, err := m.move(ctx, j, n, criuPath, "expel", nil); err != nil {
			r.Error = err.Error()
			continue
		}
		r.To = to
	}
	return connect.NewResponse(out), nil
}
