package dhcpd

import (
	"context"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Control is the DHCP part of the Control service (ssi dhcp show|set).
type Control struct{ s *Service }

// Control returns the DHCP part of the Control service.
func (s *Service) Control() *Control { return &Control{s: s} }

// GetDHCP shows the settings, the leases and what this node's server does.
func (c *Control) GetDHCP(ctx context.Context, req *connect.Request[ssiv1.GetDHCPRequest]) (*connect.Response[ssiv1.GetDHCPResponse], error) {
	s := c.s
	cl := s.cfg.FSM.Cluster()
	cfg := cl.DHCPSettings()
	out := &ssiv1.GetDHCPResponse{Settings: dhcpSettingsToProto(cfg), LocalNum: s.cfg.Self, LocalStatus: s.Status(), ServingNum: cfg.ServerNode}
	if cfg.ServerNode == state.DHCPServerLeader {
		out.ServingNum = s.cfg.Leader.LeaderNum()
	}
	for _, l := range cl.SortedLeases() {
		pl := &ssiv1.DHCPLease{Hwaddr: l.HWAddr, Ipaddr: l.IPAddr, ExpiresUnixMs: l.Expires.UnixMilli(), RecordedUnixMs: l.Recorded.UnixMilli(), ServerNum: l.ServerNum}
		if n := cl.NodeByMAC(l.HWAddr); n != nil {
			pl.Num, pl.Name = n.Num, n.Name
		}
		out.Leases = append(out.Leases, pl)
	}
	return connect.NewResponse(out), nil
}

// SetDHCP changes the named settings, all or none.
func (c *Control) SetDHCP(ctx context.Context, req *connect.Request[ssiv1.SetDHCPRequest]) (*connect.Response[ssiv1.SetDHCPResponse], error) {
	s := c.s
	if err := transport.AuthorizeAdmin(ctx, "change the DHCP settings"); err != nil {
		return nil, err
	}
	cmd := state.SetDHCP{Config: dhcpSettingsFromProto(req.Msg.Settings), Fields: req.Msg.Fields}
	res, err := s.cfg.Leader.Apply(ctx, state.CmdSetDHCP, cmd)
	if err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	var cfg state.DHCPConfig
	if err := res.Decode(&cfg); err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	return connect.NewResponse(&ssiv1.SetDHCPResponse{Settings: dhcpSettingsToProto(cfg)}), nil
}
