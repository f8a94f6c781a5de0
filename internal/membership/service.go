package membership

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// JoinHostPort is ip:port.
func JoinHostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// Shutdown modes sent between nodes.
const (
	shutdownNode    = "node"    // leave gracefully: GOINGDOWN, DOWN, exit
	shutdownQuiesce = "quiesce" // stop heartbeating: the cluster is about to stop
	shutdownExit    = "exit"    // exit now
)

// Service is the Membership RPC service. Every procedure but Join requires
// a cluster certificate (enforced by internal/transport).
type Service struct{ m *Membership }

// Service returns the node's Membership RPC service.
func (m *Membership) Service() *Service { return &Service{m: m} }

var _ ssiv1connect.MembershipHandler = (*Service)(nil)

// Join admits a machine holding a join token; a member that does not lead
// forwards it to the leader.
func (s *Service) Join(ctx context.Context, req *connect.Request[ssiv1.JoinRequest]) (*connect.Response[ssiv1.JoinResponse], error) {
	m := s.m
	in := consensus.InboundOf(ctx, req.Header())
	mac, err := nodeaddr.ParseMAC(req.Msg.Hwaddr)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	source := ""
	if !in.Forwarded {
		// The node that took the request refuses a source or MAC that has
		// failed too often, before anything is forwarded.
		source, _, _ = net.SplitHostPort(req.Peer().Addr)
		if err := m.guard.admitted(source, mac, time.Now()); err != nil {
			m.log.Warn("join refused: too many failures", "hwaddr", mac, "source", source)
			return nil, err
		}
	}
	out, err := consensus.Forward(ctx, m.cfg.Leader, in, req.Msg, m.admit,
		func(leader uint32) (func(context.Context, *connect.Request[ssiv1.JoinRequest]) (*connect.Response[ssiv1.JoinResponse], error), error) {
			c, err := m.clients.To(leader)
			if err != nil {
				return nil, err
			}
			return c.Join, nil
		})
	if err != nil {
		if source != "" && connect.CodeOf(err) == connect.CodePermissionDenied {
			m.guard.failed("source "+source, time.Now())
		}
		return nil, rpcerr.ToConnect(m.cfg.Self, err)
	}
	return connect.NewResponse(out), nil
}

// admit is the leader's end of Join.
func (m *Membership) admit(ctx context.Context, req *ssiv1.JoinRequest) (*ssiv1.JoinResponse, error) {
	self := m.cfg.Self
	mac, err := nodeaddr.ParseMAC(req.Hwaddr)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	// Check the token before anything is proposed: a wrong one must not
	// reach the log. The leader's table is the authoritative one.
	now := time.Now()
	if err := m.guard.admitted("", mac, now); err != nil {
		return nil, err
	}
	c := m.cfg.FSM.Cluster()
	if !tokenValid(c, mac, req.TokenSecret, now) {
		m.guard.failed("mac "+mac, now)
		m.log.Warn("join refused before proposing: unknown MAC or bad token", "hwaddr", mac)
		return nil, connect.NewError(connect.CodePermissionDenied, errJoinRefused)
	}
	n := c.NodeByMAC(mac)
	ip, err := netip.ParseAddr(n.IPAddr)
	if err != nil {
		return nil, rpcerr.ToConnect(self, err)
	}
	// Sign first: a token is consumed only if the node gets its certificate.
	cert, err := m.cfg.CA.SignNode(req.CsrDer, n.Num, ip)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("node %d: %w", self, err))
	}
	res, err := m.cfg.Leader.Apply(ctx, state.CmdJoin, state.Join{HWAddr: mac, TokenHash: pki.HashSecret(req.TokenSecret), Time: time.Now()})
	if err != nil {
		m.log.Warn("join refused", "hwaddr", mac, "err", err)
		var se *state.Error
		if errors.As(err, &se) {
			// The details (node number, state) are for the log, not for
			// a caller without a certificate.
			return nil, connect.NewError(connect.CodePermissionDenied, errJoinRefused)
		}
		return nil, rpcerr.ToConnect(self, err)
	}
	var jr state.JoinResult
	if err := res.Decode(&jr); err != nil {
		return nil, rpcerr.ToConnect(self, err)
	}
	out := &ssiv1.JoinResponse{
		Num: jr.Num, Name: n.Name, Ipaddr: n.IPAddr, ClusterName: c.Name, CertDer: cert,
		CaDer: m.cfg.CA.Cert.Raw, Port: uint32(c.Config.Port),
	}
	// Every member gets the CA key: any of them may become a voter (voter
	// replacement) and then leader, and the leader signs joins. A member is
	// fully trusted anyway (docs/SECURITY.md).
	if out.CaKeyDer, err = m.cfg.CA.MarshalKey(); err != nil {
		return nil, rpcerr.ToConnect(self, err)
	}
	for _, o := range c.SortedNodes() {
		if o.State.Live() && o.Num != n.Num {
			out.Peers = append(out.Peers, JoinHostPort(o.IPAddr, c.Config.Port))
		}
	}
	m.log.Info("node joined", "target", jr.Num, "hwaddr", mac, "voter", jr.Voter)
	return out, nil
}

// Heartbeat takes a node's heartbeat to the leader. A node heartbeats only
// for itself; a member forwards another's heartbeat only through the
// forwarding path, which names the original sender.
func (s *Service) Heartbeat(ctx context.Context, req *connect.Request[ssiv1.HeartbeatRequest]) (*connect.Response[ssiv1.HeartbeatResponse], error) {
	m := s.m
	in := consensus.InboundOf(ctx, req.Header())
	if in.Origin != req.Msg.Num {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %d may not heartbeat for node %d", in.Origin, req.Msg.Num))
	}
	out, err := m.heartbeat(ctx, in, req.Msg)
	if err != nil {
		return nil, rpcerr.ToConnect(m.cfg.Self, err)
	}
	return connect.NewResponse(out), nil
}

// Shutdown takes this node out at another member's request.
func (s *Service) Shutdown(ctx context.Context, req *connect.Request[ssiv1.PeerShutdownRequest]) (*connect.Response[ssiv1.PeerShutdownResponse], error) {
	m := s.m
	from, _ := transport.PeerNumFrom(ctx)
	m.log.Info("shutdown requested by a peer", "from", from, "mode", req.Msg.Reason)
	switch req.Msg.Reason {
	case shutdownQuiesce:
		m.quiesced.Store(true)
	case shutdownExit:
		m.quiesced.Store(true)
		m.cfg.Exit()
	default:
		if err := m.Leave(ctx, fmt.Sprintf("clusternode_shutdown from node %d", from)); err != nil {
			return nil, rpcerr.ToConnect(m.cfg.Self, err)
		}
	}
	return connect.NewResponse(&ssiv1.PeerShutdownResponse{}), nil
}
