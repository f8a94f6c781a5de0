package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/clms"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// peerService serves other members on the TLS port. Every procedure but
// Join requires a cluster certificate (enforced by transport).
type peerService struct{ d *Daemon }

// forward sends a request on to the leader once, or says why it cannot.
func (p *peerService) leaderOrForward(h interface{ Get(string) string }) (leaderAddr string, err error) {
	d := p.d
	if d.isLeader() {
		return "", nil
	}
	if h.Get(forwardedHeader) != "" {
		return "", connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d is not the leader either", d.meta.Num))
	}
	addr, _ := d.raft.LeaderWithID()
	if addr == "" {
		return "", connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d: %w (election in progress?)", d.meta.Num, ErrNoLeader))
	}
	return string(addr), nil
}

func (p *peerService) Join(ctx context.Context, req *connect.Request[ssiv1.JoinRequest]) (*connect.Response[ssiv1.JoinResponse], error) {
	d := p.d
	leader, err := p.leaderOrForward(req.Header())
	if err != nil {
		return nil, err
	}
	if leader != "" {
		fwd := connect.NewRequest(req.Msg)
		fwd.Header().Set(forwardedHeader, "1")
		return d.peer(leader).Join(ctx, fwd)
	}
	mac, err := nodeaddr.ParseMAC(req.Msg.Hwaddr)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	c := d.fsm.Cluster()
	n := c.NodeByMAC(mac)
	if n == nil {
		return nil, d.toConnect(state.Errorf(state.CodeNotFound, "no node with MAC %s is registered in cluster %s; register it first with ssi-addnode --hwaddr=%s --ipaddr=...", mac, c.Name, mac))
	}
	ip, err := netip.ParseAddr(n.IPAddr)
	if err != nil {
		return nil, d.toConnect(err)
	}
	// Sign first: a token is consumed only if the node gets its certificate.
	cert, err := d.id.CA.SignNode(req.Msg.CsrDer, n.Num, ip)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("node %d: %w", d.meta.Num, err))
	}
	res, err := d.apply(ctx, state.CmdJoin, state.Join{HWAddr: mac, TokenHash: pki.HashSecret(req.Msg.TokenSecret), Time: time.Now()})
	if err != nil {
		d.log.Warn("join refused", "hwaddr", mac, "err", err)
		return nil, d.toConnect(err)
	}
	var jr state.JoinResult
	if err := res.Decode(&jr); err != nil {
		return nil, d.toConnect(err)
	}
	out := &ssiv1.JoinResponse{
		Num: jr.Num, Name: n.Name, Ipaddr: n.IPAddr, ClusterName: c.Name, CertDer: cert,
		CaDer: d.id.CA.Cert.Raw, Port: uint32(c.Config.Port),
	}
	// Every member gets the CA key: any of them may become a voter (voter
	// replacement) and then leader, and the leader signs joins. A member is
	// fully trusted anyway (docs/SECURITY.md).
	if out.CaKeyDer, err = d.id.CA.MarshalKey(); err != nil {
		return nil, d.toConnect(err)
	}
	for _, m := range c.SortedNodes() {
		if m.State.Live() && m.Num != n.Num {
			out.Peers = append(out.Peers, joinHostPort(m.IPAddr, c.Config.Port))
		}
	}
	d.log.Info("node joined", "target", jr.Num, "hwaddr", mac, "voter", jr.Voter)
	return connect.NewResponse(out), nil
}

func (p *peerService) Heartbeat(ctx context.Context, req *connect.Request[ssiv1.HeartbeatRequest]) (*connect.Response[ssiv1.HeartbeatResponse], error) {
	d := p.d
	from, _ := transport.PeerNumFrom(ctx)
	if from != req.Msg.Num && req.Header().Get(forwardedHeader) == "" {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d may not heartbeat for node %d", from, req.Msg.Num))
	}
	leader, err := p.leaderOrForward(req.Header())
	if err != nil {
		return nil, err
	}
	if leader != "" {
		fwd := connect.NewRequest(req.Msg)
		fwd.Header().Set(forwardedHeader, "1")
		return d.peer(leader).Heartbeat(ctx, fwd)
	}
	m := req.Msg
	d.det.Observe(clms.Heartbeat{Num: m.Num, BootID: m.BootId, Applied: m.AppliedIndex, Load: m.Load,
		RunQueue: m.RunQueue, CPUBusy: m.CpuBusy, NCPU: int(m.Ncpu), MemFree: m.MemFree}, time.Now())
	return connect.NewResponse(&ssiv1.HeartbeatResponse{LeaderNum: d.meta.Num}), nil
}

func (p *peerService) Apply(ctx context.Context, req *connect.Request[ssiv1.ApplyRequest]) (*connect.Response[ssiv1.ApplyResponse], error) {
	d := p.d
	if !d.isLeader() {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d is not the leader", d.meta.Num))
	}
	if len(req.Msg.Command) == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty command"))
	}
	f := d.raft.Apply(req.Msg.Command, applyTimeout)
	if err := f.Error(); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d: apply: %w", d.meta.Num, err))
	}
	res, _ := f.Response().(state.Result)
	b, err := json.Marshal(res)
	if err != nil {
		return nil, d.toConnect(err)
	}
	return connect.NewResponse(&ssiv1.ApplyResponse{Result: b, Index: f.Index()}), nil
}

// Shutdown modes sent between nodes.
const (
	shutdownNode    = "node"    // leave gracefully: GOINGDOWN, DOWN, exit
	shutdownQuiesce = "quiesce" // stop heartbeating: the cluster is about to stop
	shutdownExit    = "exit"    // exit now
)

func (p *peerService) Shutdown(ctx context.Context, req *connect.Request[ssiv1.PeerShutdownRequest]) (*connect.Response[ssiv1.PeerShutdownResponse], error) {
	d := p.d
	from, _ := transport.PeerNumFrom(ctx)
	d.log.Info("shutdown requested by a peer", "from", from, "mode", req.Msg.Reason)
	switch req.Msg.Reason {
	case shutdownQuiesce:
		d.quiesced.Store(true)
	case shutdownExit:
		d.quiesced.Store(true)
		d.requestExit()
	default:
		if err := d.leave(ctx, fmt.Sprintf("clusternode_shutdown from node %d", from)); err != nil {
			return nil, d.toConnect(err)
		}
	}
	return connect.NewResponse(&ssiv1.PeerShutdownResponse{}), nil
}
