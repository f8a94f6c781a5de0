package jobnet

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rpcerr"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Config is what the jobs' networks need from the node.
type Config struct {
	Self   uint32
	SelfIP string // the node's address on the cluster network
	FSM    *state.FSM
	Leader *consensus.Leader
	// Running reports whether this node's process table holds cpid
	// (procs.Manager.Has): an address recorded here for a job this node
	// does not run (its daemon restarted) is released.
	Running func(vproc.CPID) bool
	// InitPid is the host PID of job cpid's init on this node, 0 if it
	// does not run here (its network namespace is that process's).
	InitPid func(vproc.CPID) int
	Log     *slog.Logger
}

// Manager is one node's part: giving its jobs their network, releasing
// addresses, fencing them while no leader is known, and (while leading)
// releasing those of DOWN nodes.
type Manager struct {
	cfg Config
	log *slog.Logger

	// Fencing (fence.go), touched only by Run's goroutine.
	leaderKnown func() bool
	caughtUp    func() error // this node's state has what the leader committed
	setUp       func(pid int, up bool) error
	announce    func(pid int, ip netip.Addr) error
	leaderSeen  time.Time
	fenced      map[int64]netip.Addr // jobs whose link this node took down
}

// New returns the node's manager and registers its leader duty.
func New(cfg Config) *Manager {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Manager{cfg: cfg, log: cfg.Log, setUp: SetUp, announce: Announce, leaderSeen: time.Now(), fenced: map[int64]netip.Addr{}}
	m.leaderKnown = func() bool { return true }
	m.caughtUp = func() error { return nil }
	if cfg.Leader != nil {
		cfg.Leader.OnLeading(m.releaseDown)
		m.leaderKnown = func() bool { return cfg.Leader.LeaderNum() != 0 }
		m.caughtUp = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return cfg.Leader.ReadBarrier(ctx)
		}
	}
	if m.cfg.InitPid == nil {
		m.cfg.InitPid = func(vproc.CPID) int { return 0 }
	}
	return m
}

// Prepare assigns job cpid, about to start here, an address of the pool
// (procs.Options.Net).
func (m *Manager) Prepare(ctx context.Context, cpid vproc.CPID) (procs.JobNet, error) {
	cl := m.cfg.FSM.Cluster()
	if cl.NetPool == nil {
		return nil, state.Errorf(state.CodeConflict, "the cluster has no address pool for --net jobs: set one with 'ssi net pool FIRST-LAST'")
	}
	pool := *cl.NetPool
	if self, err := netip.ParseAddr(m.cfg.SelfIP); err != nil || !netip.PrefixFrom(pool.First, pool.Bits).Masked().Contains(self) {
		return nil, fmt.Errorf("%w: node %d's address %s is not on the network of the pool %s", procs.ErrNoNet, m.cfg.Self, m.cfg.SelfIP, pool)
	}
	lower, err := ClusterLink(m.cfg.SelfIP)
	if err != nil {
		return nil, fmt.Errorf("%w on node %d: %w", procs.ErrNoNet, m.cfg.Self, err)
	}
	res, err := m.cfg.Leader.Apply(ctx, state.CmdAssignNetAddr, state.AssignNetAddr{CPID: int64(cpid), Node: m.cfg.Self, Time: time.Now()})
	if err != nil {
		return nil, fmt.Errorf("an address for process %d: %w", cpid, err)
	}
	var a state.NetAddr
	if err := res.Decode(&a); err != nil {
		return nil, fmt.Errorf("an address for process %d: %w", cpid, err)
	}
	m.log.Info("address assigned", "cpid", cpid, "ip", a.IP, "mac", a.MAC)
	return &jobNet{m: m, addr: a, bits: pool.Bits, lower: lower}, nil
}

// Adopted is the network of job cpid that moved here (procs.AdoptRequest.Net),
// or nil when it holds no address.
func (m *Manager) Adopted(cpid vproc.CPID) procs.JobNet {
	a, ok := m.cfg.FSM.Cluster().NetAddrOf(int64(cpid))
	if !ok {
		return nil
	}
	return &jobNet{m: m, addr: a}
}

// Link is this node's cluster interface (migrate.JobNets).
func (m *Manager) Link() (string, error) { return ClusterLink(m.cfg.SelfIP) }

// AddrOf is the address job cpid holds, if any.
func (m *Manager) AddrOf(cpid vproc.CPID) (state.NetAddr, bool) {
	return m.cfg.FSM.Cluster().NetAddrOf(int64(cpid))
}

// jobNet is one job's network (procs.JobNet).
type jobNet struct {
	m     *Manager
	addr  state.NetAddr
	bits  int
	lower string
}

func (j *jobNet) Configure(pid int) error {
	if err := Configure(pid, j.lower, j.addr.IP, j.addr.MAC, j.bits); err != nil {
		return fmt.Errorf("node %d, address %s: %w", j.m.cfg.Self, j.addr.IP, err)
	}
	// Tell the switch where the MAC is (a job that had the address
	// before may have left its MAC elsewhere in its table).
	if err := Announce(pid, j.addr.IP); err != nil {
		j.m.log.Warn("announcing a job's address", "ip", j.addr.IP, "err", err)
	}
	return nil
}

func (j *jobNet) Release() {
	go j.m.release(j.addr, "the job ended")
}

// release frees the address a held, if it still holds it.
func (m *Manager) release(a state.NetAddr, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdReleaseNetAddr, state.ReleaseNetAddr{CPID: a.CPID, IP: a.IP, Why: why, Time: time.Now()}); err != nil {
		m.log.Warn("releasing a job's address; it is released later, when its node finds the job gone", "cpid", a.CPID, "ip", a.IP, "err", err)
		return
	}
	m.log.Info("address released", "cpid", a.CPID, "ip", a.IP, "why", why)
}

// startGrace is how long a job's start may take before a node that does
// not find it in its process table releases its address.
const startGrace = 30 * time.Second

// sweepEvery is how often a node looks for addresses recorded on it whose
// job it does not run, and the leader for those of DOWN nodes.
const sweepEvery = 2 * time.Second

// Run fences this node's --net jobs while no leader is known (fence.go)
// and releases, until ctx ends, the addresses recorded on this node for
// jobs it does not run (a daemon that restarted ended its old jobs): a job
// found missing at two sweeps in a row, whose address was given more than
// startGrace ago (a job starting here is in the process table only once
// its start returns; one arriving is in it before the move's commit
// records it here).
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	f := time.NewTicker(fenceEvery)
	defer f.Stop()
	missing := map[int64]netip.Addr{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.C:
			m.fence(time.Now())
			continue
		case <-t.C:
		}
		now := map[int64]netip.Addr{}
		for _, a := range StrayAddrs(m.cfg.FSM.Cluster(), m.cfg.Self, m.cfg.Running, time.Now()) {
			if ip, ok := missing[a.CPID]; ok && ip == a.IP {
				m.release(a, fmt.Sprintf("node %d does not run the job", m.cfg.Self))
				continue
			}
			now[a.CPID] = a.IP
		}
		missing = now
	}
}

// StrayAddrs are the addresses recorded on node self, given before
// now-startGrace, for jobs it does not run.
func StrayAddrs(cl *state.Cluster, self uint32, running func(vproc.CPID) bool, now time.Time) []state.NetAddr {
	var out []state.NetAddr
	for _, a := range cl.NetAddrList() {
		if a.Node == self && !running(vproc.CPID(a.CPID)) && now.Sub(a.Time) >= startGrace {
			out = append(out, a)
		}
	}
	return out
}

// releaseDown is the leader's duty: the addresses of jobs whose node is
// DOWN are released (the node's jobs ended with it).
func (m *Manager) releaseDown(ctx context.Context, _ uint32) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cl := m.cfg.FSM.Cluster()
		for _, a := range DownAddrs(cl, time.Now()) {
			m.release(a, fmt.Sprintf("node %d is DOWN", a.Node))
		}
	}
}

// DownAddrs are the addresses held by jobs recorded on a node that has
// been DOWN for releaseDownAfter at now, or is gone from the node table.
func DownAddrs(cl *state.Cluster, now time.Time) []state.NetAddr {
	var out []state.NetAddr
	for _, a := range cl.NetAddrList() {
		if n, ok := cl.Nodes[a.Node]; !ok || n.State == state.Down && now.Sub(n.StateSince) >= releaseDownAfter {
			out = append(out, a)
		}
	}
	return out
}

// releaseDownAfter is how long a node is DOWN before the leader gives its
// jobs' addresses back to the pool: longer than a node cut off by a
// partition takes to fence them (fenceAfter, from its last sight of a
// leader, which comes before the majority's DOWN, plus a sweep), so that
// no address answers on both sides.
const releaseDownAfter = 3 * fenceAfter

// fenceAfter is how long a node keeps its --net jobs' links up without
// knowing a Raft leader. A node cut off from the majority cannot learn
// that it was declared DOWN and its jobs' addresses given again; after
// this it takes their links down (the jobs run on, unreachable), and puts
// back up, once a leader is known again, those whose address is still
// theirs. Longer than an election (as cvip's, for the same reason).
const fenceAfter = 5 * time.Second

// Control serves JobNet on the control socket.
func (m *Manager) Control() *Control { return &Control{m: m} }

// Control is the CLI's side: ssi net, ssi net pool.
type Control struct{ m *Manager }

var _ ssiv1connect.JobNetHandler = (*Control)(nil)

// maxAddrLen bounds the addresses a request may carry.
const maxAddrLen = 64

// SetPool sets (or clears) the cluster's pool.
func (c *Control) SetPool(ctx context.Context, req *connect.Request[ssiv1.SetNetPoolRequest]) (*connect.Response[ssiv1.SetNetPoolResponse], error) {
	m := c.m
	if err := transport.AuthorizeAdmin(ctx, "change the address pool of --net jobs"); err != nil {
		return nil, err
	}
	cmd := state.SetNetPool{Clear: req.Msg.Clear, Time: time.Now()}
	if !cmd.Clear && req.Msg.Pool != nil && req.Msg.Pool.Bits == 0 {
		// The network's prefix is this node's.
		_, bits, err := clusterIface(m.cfg.SelfIP)
		if err != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %d: the pool's prefix length is not given (/BITS) and %w", m.cfg.Self, err))
		}
		req.Msg.Pool.Bits = uint32(bits)
	}
	if !cmd.Clear {
		p, err := PoolFromProto(req.Msg.Pool)
		if err != nil {
			return nil, rpcerr.ToConnect(m.cfg.Self, err)
		}
		cmd.Pool = p
	}
	if _, err := m.cfg.Leader.Apply(ctx, state.CmdSetNetPool, cmd); err != nil {
		return nil, rpcerr.ToConnect(m.cfg.Self, err)
	}
	return connect.NewResponse(&ssiv1.SetNetPoolResponse{}), nil
}

// List is the pool and the addresses held.
func (c *Control) List(ctx context.Context, req *connect.Request[ssiv1.ListNetRequest]) (*connect.Response[ssiv1.ListNetResponse], error) {
	m := c.m
	if !req.Msg.Stale {
		if err := m.cfg.Leader.ReadBarrier(ctx); err != nil {
			return nil, rpcerr.ToConnect(m.cfg.Self, fmt.Errorf("node %d cannot confirm its state is current (use --stale for what it has): %w", m.cfg.Self, err))
		}
	}
	cl := m.cfg.FSM.Cluster()
	out := &ssiv1.ListNetResponse{}
	if cl.NetPool != nil {
		out.Pool = PoolToProto(*cl.NetPool)
	}
	for _, a := range cl.NetAddrList() {
		out.Addrs = append(out.Addrs, &ssiv1.NetAddr{Ip: a.IP.String(), Mac: a.MAC, Cpid: a.CPID, Node: a.Node, SinceUnixMs: a.Time.UnixMilli()})
	}
	return connect.NewResponse(out), nil
}

// PoolFromProto checks and converts a pool from the wire.
func PoolFromProto(p *ssiv1.NetPool) (state.NetPool, error) {
	if p == nil || len(p.First) > maxAddrLen || len(p.Last) > maxAddrLen {
		return state.NetPool{}, state.Errorf(state.CodeInvalid, "an address pool is FIRST-LAST")
	}
	first, err1 := netip.ParseAddr(p.First)
	last, err2 := netip.ParseAddr(p.Last)
	if err1 != nil || err2 != nil {
		return state.NetPool{}, state.Errorf(state.CodeInvalid, "the pool %q-%q: not IPv4 addresses", p.First, p.Last)
	}
	np := state.NetPool{First: first, Last: last, Bits: int(min(p.Bits, 64))}
	return np, state.ValidNetPool(np)
}

// PoolToProto is the wire form of a pool.
func PoolToProto(p state.NetPool) *ssiv1.NetPool {
	return &ssiv1.NetPool{First: p.First.String(), Last: p.Last.String(), Bits: uint32(p.Bits)}
}
