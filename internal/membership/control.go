package membership

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// DefaultTokenTTL is how long a join token stays valid.
const DefaultTokenTTL = 24 * time.Hour

// Control is the node-table part of the Control service (the local CLI).
type Control struct{ m *Membership }

// Control returns the node-table part of the Control service.
func (m *Membership) Control() *Control { return &Control{m: m} }

func (s *Control) fail(err error) error { return rpcerr.ToConnect(s.m.cfg.Self, err) }

// NodeToWire is a node table row on the wire.
func NodeToWire(n *state.Node, role ssiv1.NodeRole) *ssiv1.Node {
	return &ssiv1.Node{
		Num: n.Num, Name: n.Name, Hwaddr: n.HWAddr, Ipaddr: n.IPAddr, State: ssiv1.StateToWire(n.State), Role: role,
		StateSinceUnixMs: n.StateSince.UnixMilli(), Xen: n.Xen, InitNode: n.InitNode, Voter: n.Voter,
	}
}

// Status is the node table as this node has applied it.
func (s *Control) Status(ctx context.Context, req *connect.Request[ssiv1.StatusRequest]) (*connect.Response[ssiv1.StatusResponse], error) {
	m := s.m
	l := m.cfg.Leader
	if !req.Msg.Stale && !m.CaughtUp() {
		return nil, rpcerr.Unavailable("node %d is catching up with the cluster log after its start (it held %d entries): its node table is not complete yet; try again in a moment, ask another node, or use --stale", m.cfg.Self, m.cfg.StartIndex)
	}
	if !req.Msg.Stale {
		// Linearizable: nothing acknowledged before this read is missing.
		if err := l.ReadBarrier(ctx); err != nil {
			return nil, s.fail(fmt.Errorf("node %d cannot confirm its node table is current (use --stale for what it has): %w", m.cfg.Self, err))
		}
	}
	c := m.cfg.FSM.Cluster()
	leader := l.LeaderNum()
	suffrage := map[uint32]raft.ServerSuffrage{}
	if f := l.Raft().GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			suffrage[consensus.NumOf(srv.ID)] = srv.Suffrage
		}
	}
	out := &ssiv1.StatusResponse{
		ClusterName: c.Name, LocalNum: m.cfg.Self, LeaderNum: leader,
		AppliedIndex: l.AppliedIndex(), CaFingerprint: c.CAFingerprint,
	}
	for _, n := range c.SortedNodes() {
		role := ssiv1.NodeRole_NODE_ROLE_MEMBER
		if sf, ok := suffrage[n.Num]; ok && sf == raft.Voter {
			role = ssiv1.NodeRole_NODE_ROLE_VOTER
		}
		if n.Num == leader {
			role = ssiv1.NodeRole_NODE_ROLE_LEADER
		}
		out.Nodes = append(out.Nodes, NodeToWire(n, role))
	}
	if req.Msg.Events {
		for _, e := range c.Events {
			out.Events = append(out.Events, &ssiv1.Event{TimeUnixMs: e.Time.UnixMilli(), Num: e.Num,
				From: ssiv1.StateToWire(e.From), To: ssiv1.StateToWire(e.To), Reason: e.Reason, Index: e.Index})
		}
	}
	return connect.NewResponse(out), nil
}

// tokenTTL is the lifetime asked for: 0 means the default; a negative one
// is refused (it once meant the default too, so that -1h made 24h tokens).
func tokenTTL(seconds int64) (time.Duration, error) {
	switch {
	case seconds > 0:
		return time.Duration(seconds) * time.Second, nil
	case seconds == 0:
		return DefaultTokenTTL, nil
	}
	return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("a token lifetime of %ds: it must be positive", seconds))
}

// AddNodes registers nodes, all or none, each with a fresh join token.
func (s *Control) AddNodes(ctx context.Context, req *connect.Request[ssiv1.AddNodesRequest]) (*connect.Response[ssiv1.AddNodesResponse], error) {
	m := s.m
	if err := transport.AuthorizeAdmin(ctx, "add nodes"); err != nil {
		return nil, err
	}
	ttl, err := tokenTTL(req.Msg.TokenTtlSeconds)
	if err != nil {
		return nil, err
	}
	fp, err := m.caFingerprint()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	cmd := state.AddNodes{Time: now}
	tokens := make([]pki.Token, len(req.Msg.Nodes))
	for i, n := range req.Msg.Nodes {
		tok, err := pki.NewToken(fp)
		if err != nil {
			return nil, s.fail(err)
		}
		tokens[i] = tok
		cmd.Nodes = append(cmd.Nodes, state.NodeSpec{
			Num: n.Num, Name: n.Name, HWAddr: n.Hwaddr, IPAddr: n.Ipaddr, Xen: n.Xen,
			TokenHash: tok.Hash(), TokenExpires: now.Add(ttl),
		})
	}
	res, err := m.cfg.Leader.Apply(ctx, state.CmdAddNodes, cmd)
	if err != nil {
		return nil, s.fail(err)
	}
	var added []state.Node
	if err := res.Decode(&added); err != nil {
		return nil, s.fail(err)
	}
	out := &ssiv1.AddNodesResponse{}
	for i := range added {
		out.Nodes = append(out.Nodes, &ssiv1.AddedNode{Token: tokens[i].String(), Node: NodeToWire(&added[i], ssiv1.NodeRole_NODE_ROLE_MEMBER)})
	}
	return connect.NewResponse(out), nil
}

// caFingerprint is the cluster CA's fingerprint, which every token
// carries; a node that has not applied the cluster's creation yet (right
// after 'ssi init') does not know it, and must not hand out tokens that
// could never join.
func (m *Membership) caFingerprint() (string, error) {
	fp := m.cfg.FSM.Cluster().CAFingerprint
	if fp == "" {
		return "", rpcerr.Unavailable("node %d has not applied the cluster's creation yet (no CA fingerprint for the token); try again in a moment", m.cfg.Self)
	}
	return fp, nil
}

// IssueToken gives a registered node a new join token.
func (s *Control) IssueToken(ctx context.Context, req *connect.Request[ssiv1.TokenRequest]) (*connect.Response[ssiv1.TokenResponse], error) {
	m := s.m
	if err := transport.AuthorizeAdmin(ctx, "issue join tokens"); err != nil {
		return nil, err
	}
	ttl, err := tokenTTL(req.Msg.TokenTtlSeconds)
	if err != nil {
		return nil, err
	}
	fp, err := m.caFingerprint()
	if err != nil {
		return nil, err
	}
	tok, err := pki.NewToken(fp)
	if err != nil {
		return nil, s.fail(err)
	}
	cmd := state.SetToken{Num: req.Msg.Num, Hash: tok.Hash(), Expires: time.Now().Add(ttl)}
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdSetToken, cmd); err != nil {
		return nil, s.fail(err)
	}
	return connect.NewResponse(&ssiv1.TokenResponse{Token: tok.String()}), nil
}

// RemoveNode forgets a DOWN or NEVERUP node.
func (s *Control) RemoveNode(ctx context.Context, req *connect.Request[ssiv1.RemoveNodeRequest]) (*connect.Response[ssiv1.RemoveNodeResponse], error) {
	if err := transport.AuthorizeAdmin(ctx, "remove nodes"); err != nil {
		return nil, err
	}
	if _, err := s.m.cfg.Leader.Apply(ctx, state.CmdRemoveNode, state.RemoveNode{Num: req.Msg.Num}); err != nil {
		return nil, s.fail(err)
	}
	return connect.NewResponse(&ssiv1.RemoveNodeResponse{}), nil
}

// Shutdown takes this node, another node or the whole cluster out.
func (s *Control) Shutdown(ctx context.Context, req *connect.Request[ssiv1.ShutdownRequest]) (*connect.Response[ssiv1.ShutdownResponse], error) {
	m := s.m
	if err := transport.AuthorizeAdmin(ctx, "shut nodes down"); err != nil {
		return nil, err
	}
	if req.Msg.Cluster {
		stopped, err := m.shutdownCluster(ctx)
		if err != nil {
			return nil, s.fail(err)
		}
		return connect.NewResponse(&ssiv1.ShutdownResponse{Stopped: stopped}), nil
	}
	num := req.Msg.Num
	if num == 0 || num == m.cfg.Self {
		if err := m.Leave(ctx, "clusternode_shutdown"); err != nil {
			return nil, s.fail(err)
		}
		return connect.NewResponse(&ssiv1.ShutdownResponse{Stopped: []uint32{m.cfg.Self}}), nil
	}
	n, ok := m.cfg.FSM.Cluster().Nodes[num]
	if !ok {
		return nil, s.fail(state.Errorf(state.CodeNotFound, "node %d is not in the node table (see 'cluster -V')", num))
	}
	if !n.State.Live() {
		return nil, s.fail(state.Errorf(state.CodeConflict, "node %d (%s) is %s; there is nothing to shut down", num, n.Name, n.State))
	}
	c, err := m.clients.To(num)
	if err == nil {
		_, err = c.Shutdown(ctx, connect.NewRequest(&ssiv1.PeerShutdownRequest{Reason: shutdownNode}))
	}
	if err != nil {
		return nil, rpcerr.Unavailable("node %d (%s) did not shut down: %w", num, n.Name, err)
	}
	return connect.NewResponse(&ssiv1.ShutdownResponse{Stopped: []uint32{num}}), nil
}

// ProvisionInfo is what provisioning tools need beyond the node table.
func (s *Control) ProvisionInfo(ctx context.Context, req *connect.Request[ssiv1.ProvisionInfoRequest]) (*connect.Response[ssiv1.ProvisionInfoResponse], error) {
	c := s.m.cfg.FSM.Cluster()
	return connect.NewResponse(&ssiv1.ProvisionInfoResponse{
		ClusterName: c.Name, Port: uint32(c.Config.Port), NamePrefix: c.Config.NamePrefix,
		NextNum: c.NextNum, MaxNodes: uint32(c.Config.MaxNodes),
	}), nil
}

// Leave takes this node out of the cluster gracefully: it stops
// heartbeating, becomes GOINGDOWN, hands leadership over if it leads, is
// recorded DOWN, and then the daemon exits.
func (m *Membership) Leave(ctx context.Context, reason string) error {
	m.quiesced.Store(true)
	me, l := m.cfg.Self, m.cfg.Leader
	if _, err := l.Apply(ctx, state.CmdSetState, state.SetState{Num: me, To: state.GoingDown,
		From: []state.NodeState{state.Up, state.ComingUp}, Reason: reason, Time: time.Now()}); err != nil && !errors.Is(err, state.ErrConflict) {
		m.quiesced.Store(false)
		return fmt.Errorf("node %d: record GOINGDOWN: %w", me, err)
	}
	if l.IsLeader() && m.otherVoters() > 0 {
		if err := l.Raft().LeadershipTransfer().Error(); err != nil {
			m.log.Warn("leadership transfer failed; the others will elect a leader", "err", err)
		} else {
			m.log.Info("handed leadership over", "to", l.LeaderNum())
		}
	}
	if _, err := l.Apply(ctx, state.CmdSetState, state.SetState{Num: me, To: state.Down,
		From: []state.NodeState{state.GoingDown}, Reason: reason, Time: time.Now()}); err != nil && !errors.Is(err, state.ErrConflict) {
		m.log.Warn("could not record DOWN; the cluster will detect it", "err", err)
	}
	m.cfg.Exit()
	return nil
}

func (m *Membership) otherVoters() int {
	f := m.cfg.Leader.Raft().GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != consensus.ServerID(m.cfg.Self) {
			n++
		}
	}
	return n
}

// shutdownCluster stops every node: all stop heartbeating, one log entry
// marks them all DOWN (while a quorum is still there to commit it), then all
// exit, this node last.
func (m *Membership) shutdownCluster(ctx context.Context) ([]uint32, error) {
	c := m.cfg.FSM.Cluster()
	var others []*state.Node
	for _, n := range c.SortedNodes() {
		if n.State.Live() && n.Num != m.cfg.Self {
			others = append(others, n)
		}
	}
	send := func(mode string) []error {
		errs := make([]error, len(others))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for i, n := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				cl, err := m.clients.To(n.Num)
				if err == nil {
					_, err = cl.Shutdown(cctx, connect.NewRequest(&ssiv1.PeerShutdownRequest{Reason: mode}))
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		return errs
	}
	m.quiesced.Store(true)
	for i, err := range send(shutdownQuiesce) {
		if err != nil {
			m.log.Warn("node did not acknowledge cluster shutdown", "target", others[i].Num, "err", err)
		}
	}
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdClusterShutdown, state.ClusterShutdown{Time: time.Now(), Reason: "ssi shutdown --cluster"}); err != nil {
		m.quiesced.Store(false)
		return nil, fmt.Errorf("record the cluster shutdown: %w", err)
	}
	stopped := []uint32{}
	for i, err := range send(shutdownExit) {
		if err == nil {
			stopped = append(stopped, others[i].Num)
		}
	}
	stopped = append(stopped, m.cfg.Self)
	m.cfg.Exit()
	return stopped, nil
}
