package cvip

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// Control is the Cvip service of the control socket (ssi cvip add|ls|rm).
type Control struct{ s *Service }

// Control returns the Cvip service.
func (s *Service) Control() *Control { return &Control{s: s} }

// VIPToProto converts a VIP for the wire.
func VIPToProto(v *state.VIP) *ssiv1.VIP {
	out := &ssiv1.VIP{Key: v.Key(), Addr: v.Addr, Port: uint32(v.Port), Proto: v.Proto, TargetPort: uint32(v.TargetPort),
		Nodes: v.Nodes, Directors: v.Directors, Sched: v.Sched, Check: v.Check, Director: v.Director, Datapath: v.Datapath}
	if len(v.Weights) > 0 {
		out.Weights = map[uint32]uint32{}
		for k, w := range v.Weights {
			out.Weights[k] = w
		}
	}
	if !v.DirectorSince.IsZero() {
		out.DirectorSinceUnixMs = v.DirectorSince.UnixMilli()
	}
	return out
}

// VIPFromProto converts a VIP from the wire; ports must fit 16 bits.
func VIPFromProto(p *ssiv1.VIP) (state.VIP, error) {
	if p == nil {
		return state.VIP{}, state.Errorf(state.CodeInvalid, "no VIP given")
	}
	if p.Port > 65535 || p.TargetPort > 65535 {
		return state.VIP{}, state.Errorf(state.CodeInvalid, "port %d or %d is out of range", p.Port, p.TargetPort)
	}
	v := state.VIP{Addr: p.Addr, Port: uint16(p.Port), Proto: p.Proto, TargetPort: uint16(p.TargetPort), Nodes: p.Nodes,
		Directors: p.Directors, Sched: p.Sched, Check: p.Check, Datapath: p.Datapath}
	if len(p.Weights) > 0 {
		v.Weights = map[uint32]uint32{}
		for k, w := range p.Weights {
			v.Weights[k] = w
		}
	}
	return v, nil
}

// AddVIP creates a VIP; the state machine refuses what conflicts.
func (c *Control) AddVIP(ctx context.Context, req *connect.Request[ssiv1.AddVIPRequest]) (*connect.Response[ssiv1.AddVIPResponse], error) {
	s := c.s
	if err := transport.AuthorizeAdmin(ctx, "add a cluster virtual IP"); err != nil {
		return nil, err
	}
	v, err := VIPFromProto(req.Msg.Vip)
	if err == nil {
		v, err = state.ValidateVIP(v)
	}
	if err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	res, err := s.cfg.Leader.Apply(ctx, state.CmdAddVIP, state.AddVIP{VIP: v, Time: time.Now()})
	if err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	var out state.VIP
	if err := res.Decode(&out); err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	return connect.NewResponse(&ssiv1.AddVIPResponse{Vip: VIPToProto(&out)}), nil
}

// SetVIP changes a VIP's settings in place; its director keeps the
// address and the connections it carries.
func (c *Control) SetVIP(ctx context.Context, req *connect.Request[ssiv1.SetVIPRequest]) (*connect.Response[ssiv1.SetVIPResponse], error) {
	s := c.s
	if err := transport.AuthorizeAdmin(ctx, "change a cluster virtual IP"); err != nil {
		return nil, err
	}
	if len(req.Msg.Key) > 64 || len(req.Msg.Fields) > len(state.SetVIPFields) {
		return nil, rpcerr.ToConnect(s.cfg.Self, state.Errorf(state.CodeInvalid, "%q is not a VIP key, or too many fields", req.Msg.Key))
	}
	v, err := VIPFromProto(req.Msg.Vip)
	if err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	res, err := s.cfg.Leader.Apply(ctx, state.CmdSetVIP, state.SetVIP{Key: req.Msg.Key, VIP: v, Fields: req.Msg.Fields})
	if err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	var out state.VIP
	if err := res.Decode(&out); err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	return connect.NewResponse(&ssiv1.SetVIPResponse{Vip: VIPToProto(&out)}), nil
}

// RemoveVIP deletes a VIP; its director lets go of the address.
func (c *Control) RemoveVIP(ctx context.Context, req *connect.Request[ssiv1.RemoveVIPRequest]) (*connect.Response[ssiv1.RemoveVIPResponse], error) {
	s := c.s
	if err := transport.AuthorizeAdmin(ctx, "remove a cluster virtual IP"); err != nil {
		return nil, err
	}
	if len(req.Msg.Key) > 64 {
		return nil, rpcerr.ToConnect(s.cfg.Self, state.Errorf(state.CodeInvalid, "%q is not a VIP key", req.Msg.Key))
	}
	if _, err := s.cfg.Leader.Apply(ctx, state.CmdRemoveVIP, state.RemoveVIP{Key: req.Msg.Key}); err != nil {
		return nil, rpcerr.ToConnect(s.cfg.Self, err)
	}
	return connect.NewResponse(&ssiv1.RemoveVIPResponse{}), nil
}

// ListVIPs lists the VIPs with what each director reports, asking the
// directors in parallel (1 s each).
func (c *Control) ListVIPs(ctx context.Context, _ *connect.Request[ssiv1.ListVIPsRequest]) (*connect.Response[ssiv1.ListVIPsResponse], error) {
	s := c.s
	cl := s.cfg.FSM.Cluster()
	out := &ssiv1.ListVIPsResponse{}
	byDirector := map[uint32][]string{}
	for _, v := range cl.SortedVIPs() {
		out.Vips = append(out.Vips, VIPToProto(v))
		if v.Director != 0 {
			byDirector[v.Director] = append(byDirector[v.Director], v.Key())
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for num, keys := range byDirector {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sts, err := s.statusOf(ctx, num, keys)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				for _, k := range keys {
					out.Unreachable = append(out.Unreachable, fmt.Sprintf("%s: director node %d did not answer: %v", k, num, err))
				}
				return
			}
			out.Status = append(out.Status, sts...)
		}()
	}
	wg.Wait()
	sort.Slice(out.Status, func(i, j int) bool { return out.Status[i].Key < out.Status[j].Key })
	sort.Strings(out.Unreachable)
	return connect.NewResponse(out), nil
}

func (s *Service) statusOf(ctx context.Context, num uint32, keys []string) ([]*ssiv1.VIPStatus, error) {
	if num == s.cfg.Self {
		return s.Status(keys), nil
	}
	if s.clients == nil {
		return nil, errors.New("no peer network")
	}
	cl, err := s.clients.To(num)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := cl.Status(ctx, connect.NewRequest(&ssiv1.VIPStatusRequest{Keys: keys}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.Status, nil
}

// Peer is the CvipPeer service (members only: the TLS port's mux).
type Peer struct{ s *Service }

// Peer returns the CvipPeer service.
func (s *Service) Peer() *Peer { return &Peer{s: s} }

// Status reports the VIPs this node directs.
func (p *Peer) Status(_ context.Context, req *connect.Request[ssiv1.VIPStatusRequest]) (*connect.Response[ssiv1.VIPStatusResponse], error) {
	if len(req.Msg.Keys) > state.MaxVIPs {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("at most %d keys", state.MaxVIPs))
	}
	return connect.NewResponse(&ssiv1.VIPStatusResponse{Status: p.s.Status(req.Msg.Keys)}), nil
}

// cloneStatus copies a status for the wire (the loop replaces them).
func cloneStatus(st *ssiv1.VIPStatus) *ssiv1.VIPStatus { return proto.Clone(st).(*ssiv1.VIPStatus) }
