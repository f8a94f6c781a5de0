package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// DefaultTokenTTL is how long a join token stays valid.
const DefaultTokenTTL = 24 * time.Hour

// controlService serves the local CLI on the unix socket.
type controlService struct{ d *Daemon }

// authorizeAdmin allows root, the daemon's own user and the ssi group to
// change the cluster.
func (s *controlService) authorizeAdmin(ctx context.Context, what string) error {
	c, ok := transport.CallerFrom(ctx)
	if !ok {
		return connect.NewError(connect.CodePermissionDenied, errors.New("caller unknown: the control socket gives no peer credentials"))
	}
	if c.UID == 0 || c.UID == uint32(os.Getuid()) {
		return nil
	}
	if gid := transport.AdminGID(); gid >= 0 && c.InGroup(uint32(gid)) {
		return nil
	}
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("uid %d may not %s: only root and members of the %q group may change the cluster", c.UID, what, transport.AdminGroup))
}

func (s *controlService) Status(ctx context.Context, req *connect.Request[ssiv1.StatusRequest]) (*connect.Response[ssiv1.StatusResponse], error) {
	d := s.d
	c := d.fsm.Cluster()
	leader := d.leaderNum()
	suffrage := map[uint32]raft.ServerSuffrage{}
	if f := d.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			n, _ := strconv.ParseUint(string(srv.ID), 10, 32)
			suffrage[uint32(n)] = srv.Suffrage
		}
	}
	out := &ssiv1.StatusResponse{
		ClusterName: c.Name, LocalNum: d.meta.Num, LeaderNum: leader,
		AppliedIndex: d.raft.AppliedIndex(), CaFingerprint: c.CAFingerprint,
	}
	for _, n := range c.SortedNodes() {
		role := "member"
		if sf, ok := suffrage[n.Num]; ok && sf == raft.Voter {
			role = "voter"
		}
		if n.Num == leader {
			role = "leader"
		}
		out.Nodes = append(out.Nodes, &ssiv1.Node{
			Num: n.Num, Name: n.Name, Hwaddr: n.HWAddr, Ipaddr: n.IPAddr, State: string(n.State), Role: role,
			StateSinceUnixMs: n.StateSince.UnixMilli(), Xen: n.Xen, InitNode: n.InitNode, Voter: n.Voter,
		})
	}
	if req.Msg.Events {
		for _, e := range c.Events {
			out.Events = append(out.Events, &ssiv1.Event{TimeUnixMs: e.Time.UnixMilli(), Num: e.Num, From: string(e.From), To: string(e.To), Reason: e.Reason, Index: e.Index})
		}
	}
	return connect.NewResponse(out), nil
}

func (s *controlService) AddNodes(ctx context.Context, req *connect.Request[ssiv1.AddNodesRequest]) (*connect.Response[ssiv1.AddNodesResponse], error) {
	d := s.d
	if err := s.authorizeAdmin(ctx, "add nodes"); err != nil {
		return nil, err
	}
	ttl := DefaultTokenTTL
	if req.Msg.TokenTtlSeconds > 0 {
		ttl = time.Duration(req.Msg.TokenTtlSeconds) * time.Second
	}
	fp := d.fsm.Cluster().CAFingerprint
	now := time.Now()
	cmd := state.AddNodes{Time: now}
	tokens := make([]pki.Token, len(req.Msg.Nodes))
	for i, n := range req.Msg.Nodes {
		tok, err := pki.NewToken(fp)
		if err != nil {
			return nil, d.toConnect(err)
		}
		tokens[i] = tok
		cmd.Nodes = append(cmd.Nodes, state.NodeSpec{
			Num: n.Num, Name: n.Name, HWAddr: n.Hwaddr, IPAddr: n.Ipaddr, Xen: n.Xen,
			TokenHash: tok.Hash(), TokenExpires: now.Add(ttl),
		})
	}
	res, err := d.apply(ctx, state.CmdAddNodes, cmd)
	if err != nil {
		return nil, d.toConnect(err)
	}
	var added []state.Node
	if err := res.Decode(&added); err != nil {
		return nil, d.toConnect(err)
	}
	out := &ssiv1.AddNodesResponse{}
	for i, n := range added {
		out.Nodes = append(out.Nodes, &ssiv1.AddedNode{Token: tokens[i].String(), Node: &ssiv1.Node{
			Num: n.Num, Name: n.Name, Hwaddr: n.HWAddr, Ipaddr: n.IPAddr, State: string(n.State), Role: "member",
			StateSinceUnixMs: n.StateSince.UnixMilli(), Xen: n.Xen,
		}})
	}
	return connect.NewResponse(out), nil
}

func (s *controlService) IssueToken(ctx context.Context, req *connect.Request[ssiv1.TokenRequest]) (*connect.Response[ssiv1.TokenResponse], error) {
	d := s.d
	if err := s.authorizeAdmin(ctx, "issue join tokens"); err != nil {
		return nil, err
	}
	ttl := DefaultTokenTTL
	if req.Msg.TokenTtlSeconds > 0 {
		ttl = time.Duration(req.Msg.TokenTtlSeconds) * time.Second
	}
	tok, err := pki.NewToken(d.fsm.Cluster().CAFingerprint)
	if err != nil {
		return nil, d.toConnect(err)
	}
	if _, err := d.apply(ctx, state.CmdSetToken, state.SetToken{Num: req.Msg.Num, Hash: tok.Hash(), Expires: time.Now().Add(ttl)}); err != nil {
		return nil, d.toConnect(err)
	}
	return connect.NewResponse(&ssiv1.TokenResponse{Token: tok.String()}), nil
}

func (s *controlService) RemoveNode(ctx context.Context, req *connect.Request[ssiv1.RemoveNodeRequest]) (*connect.Response[ssiv1.RemoveNodeResponse], error) {
	d := s.d
	if err := s.authorizeAdmin(ctx, "remove nodes"); err != nil {
		return nil, err
	}
	if _, err := d.apply(ctx, state.CmdRemoveNode, state.RemoveNode{Num: req.Msg.Num}); err != nil {
		return nil, d.toConnect(err)
	}
	return connect.NewResponse(&ssiv1.RemoveNodeResponse{}), nil
}

func (s *controlService) Shutdown(ctx context.Context, req *connect.Request[ssiv1.ShutdownRequest]) (*connect.Response[ssiv1.ShutdownResponse], error) {
	d := s.d
	if err := s.authorizeAdmin(ctx, "shut nodes down"); err != nil {
		return nil, err
	}
	if req.Msg.Cluster {
		stopped, err := d.shutdownCluster(ctx)
		if err != nil {
			return nil, d.toConnect(err)
		}
		return connect.NewResponse(&ssiv1.ShutdownResponse{Stopped: stopped}), nil
	}
	num := req.Msg.Num
	if num == 0 || num == d.meta.Num {
		if err := d.leave(ctx, "clusternode_shutdown"); err != nil {
			return nil, d.toConnect(err)
		}
		return connect.NewResponse(&ssiv1.ShutdownResponse{Stopped: []uint32{d.meta.Num}}), nil
	}
	c := d.fsm.Cluster()
	n, ok := c.Nodes[num]
	if !ok {
		return nil, d.toConnect(state.Errorf(state.CodeNotFound, "node %d is not in the node table (see 'cluster -V')", num))
	}
	if !n.State.Live() {
		return nil, d.toConnect(state.Errorf(state.CodeConflict, "node %d (%s) is %s; there is nothing to shut down", num, n.Name, n.State))
	}
	addr := joinHostPort(n.IPAddr, c.Config.Port)
	if _, err := d.peer(addr).Shutdown(ctx, connect.NewRequest(&ssiv1.PeerShutdownRequest{Reason: shutdownNode})); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d (%s) did not shut down: %w", num, addr, err))
	}
	return connect.NewResponse(&ssiv1.ShutdownResponse{Stopped: []uint32{num}}), nil
}

// leave takes this node out of the cluster gracefully: it stops
// heartbeating, becomes GOINGDOWN, hands leadership over if it leads, is
// recorded DOWN, and then the daemon exits.
func (d *Daemon) leave(ctx context.Context, reason string) error {
	d.quiesced.Store(true)
	me := d.meta.Num
	if _, err := d.apply(ctx, state.CmdSetState, state.SetState{Num: me, To: state.GoingDown,
		From: []state.NodeState{state.Up, state.ComingUp}, Reason: reason, Time: time.Now()}); err != nil && !errors.Is(err, state.ErrConflict) {
		d.quiesced.Store(false)
		return fmt.Errorf("node %d: record GOINGDOWN: %w", me, err)
	}
	if d.isLeader() && d.otherVoters() > 0 {
		if err := d.raft.LeadershipTransfer().Error(); err != nil {
			d.log.Warn("leadership transfer failed; the others will elect a leader", "err", err)
		} else {
			d.log.Info("handed leadership over", "to", d.leaderNum())
		}
	}
	if _, err := d.apply(ctx, state.CmdSetState, state.SetState{Num: me, To: state.Down,
		From: []state.NodeState{state.GoingDown}, Reason: reason, Time: time.Now()}); err != nil && !errors.Is(err, state.ErrConflict) {
		d.log.Warn("could not record DOWN; the cluster will detect it", "err", err)
	}
	d.requestExit()
	return nil
}

func (d *Daemon) otherVoters() int {
	f := d.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != serverID(d.meta.Num) {
			n++
		}
	}
	return n
}

// shutdownCluster stops every node: all stop heartbeating, one log entry
// marks them all DOWN (while a quorum is still there to commit it), then all
// exit, this node last.
func (d *Daemon) shutdownCluster(ctx context.Context) ([]uint32, error) {
	c := d.fsm.Cluster()
	var others []*state.Node
	for _, n := range c.SortedNodes() {
		if n.State.Live() && n.Num != d.meta.Num {
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
				_, errs[i] = d.peer(joinHostPort(n.IPAddr, c.Config.Port)).Shutdown(cctx, connect.NewRequest(&ssiv1.PeerShutdownRequest{Reason: mode}))
			}()
		}
		wg.Wait()
		return errs
	}
	d.quiesced.Store(true)
	for i, err := range send(shutdownQuiesce) {
		if err != nil {
			d.log.Warn("node did not acknowledge cluster shutdown", "target", others[i].Num, "err", err)
		}
	}
	if _, err := d.apply(ctx, state.CmdClusterShutdown, state.ClusterShutdown{Time: time.Now(), Reason: "ssi shutdown --cluster"}); err != nil {
		d.quiesced.Store(false)
		return nil, fmt.Errorf("record the cluster shutdown: %w", err)
	}
	stopped := []uint32{}
	for i, err := range send(shutdownExit) {
		if err == nil {
			stopped = append(stopped, others[i].Num)
		}
	}
	stopped = append(stopped, d.meta.Num)
	d.requestExit()
	return stopped, nil
}

func (s *controlService) GetDHCP(ctx context.Context, req *connect.Request[ssiv1.GetDHCPRequest]) (*connect.Response[ssiv1.GetDHCPResponse], error) {
	d := s.d
	c := d.fsm.Cluster()
	cfg := c.DHCPSettings()
	out := &ssiv1.GetDHCPResponse{Settings: dhcpSettingsToProto(cfg), LocalNum: d.meta.Num, LocalStatus: d.dhcp.Status(), ServingNum: cfg.ServerNode}
	if cfg.ServerNode == state.DHCPServerLeader {
		out.ServingNum = d.leaderNum()
	}
	for _, l := range c.SortedLeases() {
		pl := &ssiv1.DHCPLease{Hwaddr: l.HWAddr, Ipaddr: l.IPAddr, ExpiresUnixMs: l.Expires.UnixMilli(), RecordedUnixMs: l.Recorded.UnixMilli(), ServerNum: l.ServerNum}
		if n := c.NodeByMAC(l.HWAddr); n != nil {
			pl.Num, pl.Name = n.Num, n.Name
		}
		out.Leases = append(out.Leases, pl)
	}
	return connect.NewResponse(out), nil
}

func (s *controlService) SetDHCP(ctx context.Context, req *connect.Request[ssiv1.SetDHCPRequest]) (*connect.Response[ssiv1.SetDHCPResponse], error) {
	d := s.d
	if err := s.authorizeAdmin(ctx, "change the DHCP settings"); err != nil {
		return nil, err
	}
	cmd := state.SetDHCP{Config: dhcpSettingsFromProto(req.Msg.Settings), Fields: req.Msg.Fields}
	res, err := d.apply(ctx, state.CmdSetDHCP, cmd)
	if err != nil {
		return nil, d.toConnect(err)
	}
	var cfg state.DHCPConfig
	if err := res.Decode(&cfg); err != nil {
		return nil, d.toConnect(err)
	}
	return connect.NewResponse(&ssiv1.SetDHCPResponse{Settings: dhcpSettingsToProto(cfg)}), nil
}

func (s *controlService) ProvisionInfo(ctx context.Context, req *connect.Request[ssiv1.ProvisionInfoRequest]) (*connect.Response[ssiv1.ProvisionInfoResponse], error) {
	c := s.d.fsm.Cluster()
	return connect.NewResponse(&ssiv1.ProvisionInfoResponse{
		ClusterName: c.Name, Port: uint32(c.Config.Port), NamePrefix: c.Config.NamePrefix,
		NextNum: c.NextNum, MaxNodes: uint32(c.Config.MaxNodes),
	}), nil
}
