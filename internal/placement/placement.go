// Package placement decides where a new process runs: the leader keeps the
// averaged load of every node (from the heartbeats that internal/membership
// receives) and the jobs it placed in the last seconds, and answers "which
// node is least loaded" for `ssi run`, `fastnode` and `loads`. It also
// provides a node's own load source for its heartbeats: the whole machine
// (internal/load) or, for nodes sharing one kernel, only the jobs the node
// runs. It serves the Placement RPC service and the Loads part of the
// Control service.
//
// It must not start processes or change the replicated state; it reaches
// the leader only through internal/consensus.
package placement

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/clms"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/load"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Memory is how long a placement counts against a node: about the time
// the node's averaged load takes to show the new job.
const Memory = 5 * time.Second

// Config is what placement needs from the node.
type Config struct {
	Self       uint32
	FSM        *state.FSM
	Leader     *consensus.Leader
	Net        peer.Net
	Heartbeats func(now time.Time) map[uint32]clms.Heartbeat // the leader's view
}

// Placer answers placement questions on this node.
type Placer struct {
	cfg     Config
	clients *peer.Clients[ssiv1connect.PlacementClient]
	placed  placements
}

// New returns the node's placer.
func New(cfg Config) *Placer {
	return &Placer{cfg: cfg, clients: peer.NewClients(cfg.Net, ssiv1connect.NewPlacementClient)}
}

// Fastest returns the least-loaded UP node, as the leader knows from
// heartbeats, and counts the job the caller is about to start there.
func (p *Placer) Fastest(ctx context.Context) (uint32, error) {
	return p.FastestExcept(ctx)
}

// FastestExcept is Fastest among the UP nodes but those given (a node
// sending its jobs away).
func (p *Placer) FastestExcept(ctx context.Context, except ...uint32) (uint32, error) {
	resp, err := p.loads(ctx, consensus.Inbound{Origin: p.cfg.Self}, true, except)
	if err != nil {
		return 0, err
	}
	if resp.Fastest == 0 {
		return 0, errors.New("no node is UP")
	}
	return resp.Fastest, nil
}

// Loads asks the leader for every node's load (and, with place, picks and
// counts the least-loaded node).
func (p *Placer) Loads(ctx context.Context, in consensus.Inbound, place bool) (*ssiv1.LoadsResponse, error) {
	return p.loads(ctx, in, place, nil)
}

func (p *Placer) loads(ctx context.Context, in consensus.Inbound, place bool, except []uint32) (*ssiv1.LoadsResponse, error) {
	resp, err := consensus.Forward(ctx, p.cfg.Leader, in, &ssiv1.LoadsRequest{Place: place, Exclude: except},
		func(_ context.Context, req *ssiv1.LoadsRequest) (*ssiv1.LoadsResponse, error) {
			return p.leaderLoads(req.Place, time.Now(), req.Exclude...), nil
		},
		func(leader uint32) (func(context.Context, *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error), error) {
			c, err := p.clients.To(leader)
			if err != nil {
				return nil, err
			}
			return c.Loads, nil
		})
	if err != nil {
		return nil, fmt.Errorf("node %d: the leader gathers the loads: %w", p.cfg.Self, err)
	}
	return resp, nil
}

// placements remembers the jobs the leader recently sent to each node:
// measured loads are averages over seconds, so without this a burst of
// `ssi run` would all land on the node that was idle a moment ago.
type placements struct {
	mu   sync.Mutex
	when map[uint32][]time.Time
}

func (p *placements) recent(num uint32, now time.Time) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var keep []time.Time
	for _, t := range p.when[num] {
		if now.Sub(t) < Memory {
			keep = append(keep, t)
		}
	}
	if p.when == nil {
		p.when = map[uint32][]time.Time{}
	}
	p.when[num] = keep
	return float64(len(keep))
}

func (p *placements) add(num uint32, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.when == nil {
		p.when = map[uint32][]time.Time{}
	}
	p.when[num] = append(p.when[num], now)
}

// leaderLoads is the leader's answer.
func (p *Placer) leaderLoads(place bool, now time.Time, except ...uint32) *ssiv1.LoadsResponse {
	hbs := p.cfg.Heartbeats(now)
	c := p.cfg.FSM.Cluster()
	out := &ssiv1.LoadsResponse{}
	pick := map[int]load.Load{}
	for _, n := range c.SortedNodes() {
		hb, heard := hbs[n.Num]
		nl := &ssiv1.NodeLoad{Num: n.Num, Name: n.Name, State: ssiv1.StateToWire(n.State)}
		if heard {
			nl.Load, nl.RunQueue, nl.CpuBusy, nl.Ncpu, nl.MemFree = hb.Load, hb.RunQueue, hb.CPUBusy, uint32(hb.NCPU), hb.MemFree
			if n.State == state.Up && !c.IsBlocked(n.Num) && !slices.Contains(except, n.Num) {
				v := hb.Load
				if hb.NCPU > 0 {
					v += p.placed.recent(n.Num, now) / float64(hb.NCPU)
				}
				pick[int(n.Num)] = load.Load{Value: v, RunQueue: hb.RunQueue, CPUBusy: hb.CPUBusy, NCPU: hb.NCPU, MemFree: hb.MemFree}
			}
		}
		out.Loads = append(out.Loads, nl)
	}
	out.Fastest = uint32(load.Pick(pick))
	if place && out.Fastest != 0 {
		p.placed.add(out.Fastest, now)
	}
	return out
}

// Service is the Placement RPC service (the leader's end).
type Service struct{ p *Placer }

// Service returns the node's Placement RPC service.
func (p *Placer) Service() *Service { return &Service{p: p} }

var _ ssiv1connect.PlacementHandler = (*Service)(nil)

// Loads answers for the leader, forwarding if this node does not lead.
func (s *Service) Loads(ctx context.Context, req *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error) {
	resp, err := s.p.loads(ctx, consensus.InboundOf(ctx, req.Header()), req.Msg.Place, req.Msg.Exclude)
	if err != nil {
		return nil, rpcerr.ToConnect(s.p.cfg.Self, err)
	}
	return connect.NewResponse(resp), nil
}

// Control is the Loads part of the Control service.
type Control struct{ p *Placer }

// Control returns the Loads part of the Control service.
func (p *Placer) Control() *Control { return &Control{p: p} }

// Loads shows every node's load (loads, fastnode).
func (s *Control) Loads(ctx context.Context, _ *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error) {
	resp, err := s.p.Loads(ctx, consensus.Inbound{Origin: s.p.cfg.Self}, false)
	if err != nil {
		return nil, rpcerr.ToConnect(s.p.cfg.Self, err)
	}
	return connect.NewResponse(resp), nil
}

// Current is every node's load, as the leader sees it (nothing is placed).
func (p *Placer) Current(ctx context.Context) (*ssiv1.LoadsResponse, error) {
	return p.Loads(ctx, consensus.Inbound{Origin: p.cfg.Self}, false)
}
