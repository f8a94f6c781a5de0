package cvip

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/state"
)

// tick is how often the director renews its addresses and looks again
// without being told to; health changes and applied entries wake it at once.
const tick = 500 * time.Millisecond

// garpAfter are the times after taking an address at which the director
// announces it again (ARP caches that missed the first one).
var garpAfter = []time.Duration{0, 500 * time.Millisecond, 2 * time.Second}

// Loads gives every node's reported load (placement.Placer.Current).
type Loads interface {
	Current(ctx context.Context) (*ssiv1.LoadsResponse, error)
}

// Config is what the cluster virtual IP needs from the node.
type Config struct {
	Self    uint32
	SelfIP  string
	FSM     *state.FSM
	Leader  *consensus.Leader
	Net     peer.Net
	Loads   Loads       // for --sched load (nil: every node weighs the same)
	Leaving func() bool // the node is leaving: it directs nothing
	Log     *slog.Logger
}

// Service is one node's part of the cluster virtual IPs.
type Service struct {
	cfg     Config
	log     *slog.Logger
	wake    chan struct{}
	clients *peer.Clients[ssiv1connect.CvipPeerClient]

	mu       sync.Mutex
	nft      *nftDatapath // nil: not available (noNft says why)
	noNft    string
	probed   bool
	directed map[string]*directed
	status   map[string]*ssiv1.VIPStatus // what ssi cvip ls shows, by key

	// The loop's own: when a leader was last known, and whether it let
	// go for want of one.
	leaderSeen time.Time
	fenced     bool
	lastErr    string // the last nftables error logged
}

// directed is a VIP this node directs.
type directed struct {
	vip     state.VIP
	addr    netip.Addr
	ifc     *net.Interface
	check   *checker
	proxy   *proxy
	taken   time.Time // when this node started directing it
	held    time.Time // when it took the address
	garps   int       // announcements sent
	holding bool
	err     string
}

// New returns the node's cluster virtual IP service and registers the
// election duty; Run runs the director loop.
func New(cfg Config) *Service {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Leaving == nil {
		cfg.Leaving = func() bool { return false }
	}
	s := &Service{cfg: cfg, log: cfg.Log, wake: make(chan struct{}, 1), directed: map[string]*directed{}, status: map[string]*ssiv1.VIPStatus{}, leaderSeen: time.Now()}
	if cfg.Net != nil {
		s.clients = peer.NewClients(cfg.Net, ssiv1connect.NewCvipPeerClient)
	}
	if cfg.Leader != nil {
		cfg.Leader.OnLeading(s.elect)
	}
	return s
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// datapath decides once whether this node can use nftables.
func (s *Service) datapath() (*nftDatapath, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.probed {
		s.probed = true
		table := tableName(s.cfg.Self)
		if os.Getenv("SSI_CVIP_NO_NFTABLES") != "" {
			s.noNft = "nftables turned off (SSI_CVIP_NO_NFTABLES)"
		} else if err := probeNftables(table); err != nil {
			s.noNft = err.Error()
		} else {
			s.nft = &nftDatapath{table: table}
		}
		ipvs := "no IPVS in this kernel"
		if ipvsPresent() {
			ipvs = "the kernel has IPVS, which ssi does not program (nftables is used where it exists)"
		}
		if s.nft != nil {
			s.log.Info("cvip: kernel datapath: nftables", "table", table, "ipvs", ipvs)
		} else {
			s.noNft += "; " + ipvs
			s.log.Warn("cvip: no kernel datapath; VIPs this node directs use the user-space proxy", "why", s.noNft)
		}
	}
	return s.nft, s.noNft
}

// Run is the director loop: until ctx ends, it directs the VIPs the state
// gives this node and lets go of the others.
func (s *Service) Run(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	// A daemon that died may have left its table (the addresses expire).
	if leftover(tableName(s.cfg.Self)) {
		if nft, _ := s.datapath(); nft != nil {
			if err := nft.remove(); err != nil {
				s.log.Warn("cvip: removing the table a previous run left", "err", err)
			}
		}
	}
	defer s.release()
	for {
		changed := s.cfg.FSM.Changed()
		s.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-s.wake:
		case <-t.C:
		}
	}
}

// release lets go of everything: the daemon stops.
func (s *Service) release() {
	s.mu.Lock()
	ds := s.directed
	s.directed = map[string]*directed{}
	nft := s.nft
	s.mu.Unlock()
	for _, d := range ds {
		s.stopDirecting(d, false)
	}
	if nft != nil {
		if err := nft.remove(); err != nil {
			s.log.Warn("cvip: removing the nftables table", "err", err)
		}
	}
}

// stillHeld reports whether another VIP directed here has address a.
func (s *Service) stillHeld(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.directed {
		if d.addr == a {
			return true
		}
	}
	return false
}

// stopDirecting ends d; keepAddr leaves its address to the other VIPs
// that have it.
func (s *Service) stopDirecting(d *directed, keepAddr bool) {
	d.check.stop()
	if d.proxy != nil {
		d.proxy.stop()
	}
	if d.ifc != nil && !keepAddr {
		if err := dropAddr(d.ifc, d.addr); err != nil {
			s.log.Warn("cvip: letting go of the VIP", "vip", d.vip.Key(), "err", err)
		}
	}
	s.log.Info("cvip: no longer directing", "vip", d.vip.Key())
}

// fenceAfter is how long a director keeps its VIPs without knowing a
// leader: a director cut off from the majority cannot learn that another
// node was elected in its place, so it lets go after this (plus the
// address's lifetime). Longer than an election, so that losing the leader
// alone does not drop the VIPs.
const fenceAfter = 5 * time.Second

// mine are the VIPs this node should direct now.
func (s *Service) mine(c *state.Cluster) map[string]*state.VIP {
	out := map[string]*state.VIP{}
	if s.cfg.Leaving() {
		return out
	}
	if s.cfg.Leader != nil {
		if s.cfg.Leader.LeaderNum() != 0 {
			s.leaderSeen = time.Now()
			if s.fenced {
				// Back from a cut: this node's copy of the state still
				// names it director until it has applied what the
				// majority decided meanwhile; taking the address (and
				// announcing it) on that stale copy would pull the
				// clients away from the new director.
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				err := s.cfg.Leader.ReadBarrier(ctx)
				cancel()
				if err != nil {
					s.log.Warn("cvip: a leader is known again, but this node has not caught up with it yet; it directs nothing for now", "err", err)
					return out
				}
				s.log.Info("cvip: a leader is known again and this node has caught up: directing what the state gives it")
				s.fenced = false
				s.poke() // the next round reads the state as of the barrier
				return out
			}
		} else if time.Since(s.leaderSeen) > fenceAfter {
			if !s.fenced {
				s.log.Warn("cvip: no leader known for a while; letting go of the VIPs this node directs (another node may have been elected)", "after", fenceAfter)
			}
			s.fenced = true
			return out
		}
		s.fenced = false
	}
	for k, v := range c.VIPs {
		if v.Director == s.cfg.Self {
			out[k] = v
		}
	}
	return out
}

func (s *Service) reconcile(ctx context.Context) {
	c := s.cfg.FSM.Cluster()
	want := s.mine(c)
	s.mu.Lock()
	var stop []*directed
	var proxies []*proxy
	for k, d := range s.directed {
		v, ok := want[k]
		switch {
		case !ok:
			stop = append(stop, d)
			delete(s.directed, k)
			delete(s.status, k)
		case !sameConfig(v, &d.vip):
			// ssi cvip set: changed in place, the address and the
			// connections stay.
			s.log.Info("cvip: the VIP's settings changed", "vip", k)
			d.vip = *v
			d.check.setPath(v.Check)
			if d.proxy != nil && v.Datapath != state.DatapathUserspace && s.nft != nil {
				proxies = append(proxies, d.proxy) // now on the kernel datapath
				d.proxy = nil
			}
			if d.proxy != nil {
				d.proxy.setSched(v.Sched)
			}
		}
	}
	s.mu.Unlock()
	for _, d := range stop {
		s.stopDirecting(d, s.stillHeld(d.addr))
	}
	for _, p := range proxies {
		p.stop()
	}
	s.dropStrays(c, want)
	if len(want) == 0 {
		s.mu.Lock()
		nft := s.nft
		s.mu.Unlock()
		if nft != nil && nft.last != "" {
			if err := nft.sync(nil); err != nil {
				s.log.Warn("cvip: emptying the nftables table", "err", err)
			}
		}
	}

	if len(want) == 0 {
		return // nothing to direct: nftables is not even probed
	}
	nft, noNft := s.datapath()
	loads := s.loads(ctx, want)
	var svcs []service
	var items []item
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := want[k]
		s.mu.Lock()
		d := s.directed[k]
		if d == nil {
			d = &directed{vip: *v, addr: netip.MustParseAddr(v.Addr), check: newChecker(v.Check, s.poke), taken: time.Now()}
			s.directed[k] = d
			s.log.Info("cvip: directing", "vip", k)
		}
		s.mu.Unlock()
		eps, st := s.endpoints(c, d, nft, loads)
		useNft := nft != nil && v.Datapath != state.DatapathUserspace
		svc := service{Key: k, VIP: d.addr, Port: v.Port, Proto: unix.IPPROTO_TCP, Hash: v.Sched == state.SchedSH,
			Inc: v.Sched == state.SchedRR || v.Sched == state.SchedWRR, Eps: eps, Slots: slots(eps)}
		if v.Proto == "udp" {
			svc.Proto = unix.IPPROTO_UDP
		}
		d.err = ""
		if useNft {
			st.Datapath = "nftables"
			svcs = append(svcs, svc)
		} else {
			st.Datapath = "userspace"
			if v.Datapath != state.DatapathUserspace {
				st.Detail = noNft
			}
			if d.proxy == nil {
				p, err := startProxy(v, s.log)
				if err != nil {
					d.err = err.Error()
				}
				s.mu.Lock() // Collect reads it
				d.proxy = p
				s.mu.Unlock()
			}
			if d.proxy != nil {
				d.proxy.setEndpoints(eps)
			}
		}
		items = append(items, item{d, st})
	}
	if nft != nil {
		if err := nft.sync(svcs); err != nil {
			if err.Error() != s.lastErr {
				s.log.Error("cvip: programming nftables failed; retrying every tick", "err", err)
			}
			s.lastErr = err.Error()
			for _, it := range items {
				if it.st.Datapath == "nftables" {
					it.st.Detail = err.Error()
				}
			}
		} else {
			s.lastErr = ""
		}
	}
	// Addresses last, once every VIP on them is programmed: a VIP's
	// packets never reach the director's own stack (which would reset
	// them) while it has healthy backends.
	ready := map[netip.Addr]bool{}
	for _, it := range items {
		r, seen := ready[it.d.addr]
		ready[it.d.addr] = (r || !seen) && it.d.checked()
	}
	for _, v := range c.VIPs { // and every VIP on the address is ours
		if a, err := netip.ParseAddr(v.Addr); err == nil && v.Director != s.cfg.Self {
			if _, ok := ready[a]; ok {
				ready[a] = false
			}
		}
	}
	for _, it := range items {
		d, st := it.d, it.st
		s.hold(d, ready[d.addr])
		if d.err != "" {
			st.Detail = d.err
		}
		st.Holding = d.holding
		if d.ifc != nil {
			st.Interface = d.ifc.Name
		}
		s.mu.Lock()
		s.status[d.vip.Key()] = st
		s.mu.Unlock()
	}
}

// item is a VIP being directed and its status, within one reconcile.
type item struct {
	d  *directed
	st *ssiv1.VIPStatus
}

// sameConfig reports whether a and b differ only in their director's
// record (a change of anything else restarts the directing).
func sameConfig(a, b *state.VIP) bool {
	x, y := *a, *b
	x.DirectorSince, y.DirectorSince = time.Time{}, time.Time{}
	return fmt.Sprintf("%+v", x) == fmt.Sprintf("%+v", y)
}

// dropStrays removes VIP addresses this node holds but does not direct
// (left by a run that died before they expired).
func (s *Service) dropStrays(c *state.Cluster, want map[string]*state.VIP) {
	if len(c.VIPs) == 0 {
		return
	}
	local := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			local[p.Addr()] = true
		}
	}
	for k, v := range c.VIPs {
		if _, ok := want[k]; ok {
			continue
		}
		a, err := netip.ParseAddr(v.Addr)
		if err != nil || !local[a] {
			continue
		}
		ifc, err := findInterface(a, s.cfg.SelfIP)
		if err != nil || !hasAddr(ifc, a) {
			continue
		}
		held := false
		for _, w := range want {
			held = held || w.Addr == v.Addr
		}
		if !held {
			_ = dropAddr(ifc, a)
		}
	}
}

// hold keeps d's address on its interface (renewing its lifetime) and
// announces it after taking it. A new director takes the address only once
// the first round of health checks of every VIP on it is done and they are
// programmed: before, it would answer the VIP's packets itself, resetting
// the connections that could have continued through it (and conntrack
// would remember them un-NATed).
func (s *Service) hold(d *directed, ready bool) {
	if !d.holding && !ready {
		time.AfterFunc(100*time.Millisecond, s.poke)
		return
	}
	if d.ifc == nil {
		ifc, err := findInterface(d.addr, s.cfg.SelfIP)
		if err != nil {
			d.err, d.holding = err.Error(), false
			return
		}
		d.ifc = ifc
	}
	if err := holdAddr(d.ifc, d.addr); err != nil {
		d.err, d.holding = err.Error(), false
		return
	}
	if !d.holding {
		d.held = time.Now()
	}
	d.holding = true
	if d.garps < len(garpAfter) && time.Since(d.held) >= garpAfter[d.garps] {
		if err := GratuitousARP(d.ifc, d.addr); err != nil {
			s.log.Warn("cvip: gratuitous ARP", "vip", d.vip.Key(), "err", err)
		}
		d.garps++
		if d.garps < len(garpAfter) {
			time.AfterFunc(garpAfter[d.garps]-time.Since(d.held), s.poke)
		}
	}
}

// checked reports whether d's first round of checks is done (it takes
// at most a check's timeout): until then the VIP has no backend it could
// send a connection to, and the address waits.
func (d *directed) checked() bool { return d.check.checked() }

// nodeLoad is one node's load for --sched load.
type nodeLoad struct {
	load float64
	ncpu uint32
}

// loads fetches the nodes' loads if a VIP here needs them.
func (s *Service) loads(ctx context.Context, want map[string]*state.VIP) map[uint32]nodeLoad {
	need := false
	for _, v := range want {
		need = need || v.Sched == state.SchedLoad
	}
	if !need || s.cfg.Loads == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := s.cfg.Loads.Current(ctx)
	if err != nil {
		s.log.Warn("cvip: reading the nodes' loads for --sched load; every node weighs the same meanwhile", "err", err)
		return nil
	}
	out := map[uint32]nodeLoad{}
	for _, l := range resp.Loads {
		out[l.Num] = nodeLoad{load: l.Load, ncpu: l.Ncpu}
	}
	return out
}

// endpoints are d's healthy backends with their weights now, and the
// status of every backend.
func (s *Service) endpoints(c *state.Cluster, d *directed, nft *nftDatapath, loads map[uint32]nodeLoad) ([]endpoint, *ssiv1.VIPStatus) {
	v := &d.vip
	st := &ssiv1.VIPStatus{Key: v.Key(), Director: s.cfg.Self}
	var ts []target
	type cand struct {
		n *state.Node
		t target
	}
	var cands []cand
	for _, num := range v.Backends(c) {
		n := c.Nodes[num]
		if n == nil {
			continue
		}
		port := v.BackendPort()
		t := target{Num: num, Addr: net.JoinHostPort(n.IPAddr, strconv.Itoa(int(port)))}
		if port == 0 {
			t.Addr = n.IPAddr // every port: only the node's state tells
		} else {
			ts = append(ts, t)
		}
		cands = append(cands, cand{n, t})
	}
	d.check.setTargets(ts)
	var active map[string]int64
	if v.Sched == state.SchedLC && nft != nil && v.Datapath != state.DatapathUserspace {
		active = countConns(d.addr, v.Port, v.Proto)
	}
	var eps []endpoint
	for _, cd := range cands {
		b := &ssiv1.Backend{Num: cd.n.Num, Addr: cd.t.Addr, Active: -1}
		ok, why := true, "node UP (no port to check)"
		if v.BackendPort() != 0 {
			ok, why = d.check.healthy(cd.t)
		}
		if cd.n.State != state.Up {
			ok, why = false, fmt.Sprintf("node %d is %s", cd.n.Num, cd.n.State)
		}
		switch {
		case d.proxy != nil:
			b.Active = d.proxy.activeConns(cd.n.Num)
		case active != nil:
			b.Active = active[cd.n.IPAddr]
		}
		b.Healthy, b.Reason = ok, why
		if ok {
			l := loads[cd.n.Num]
			w := weightFor(v, cd.n.Num, l.load, l.ncpu, b.Active)
			b.Weight = w
			eps = append(eps, endpoint{Num: cd.n.Num, Addr: cd.n.IPAddr, Port: v.BackendPort(), Weight: w})
		}
		st.Backends = append(st.Backends, b)
	}
	return eps, st
}

// Status is what this node reports about the VIPs it directs.
func (s *Service) Status(keys []string) []*ssiv1.VIPStatus {
	s.mu.Lock()
	var out []*ssiv1.VIPStatus
	for k, st := range s.status {
		if len(keys) > 0 && !containsKey(keys, k) {
			continue
		}
		out = append(out, cloneStatus(st))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	// Connections on the kernel datapath: conntrack's count, read now.
	for _, st := range out {
		if st.Datapath != "nftables" {
			continue
		}
		vip, port, proto, ok := parseKey(st.Key)
		if !ok {
			continue
		}
		counts := countConns(vip, port, proto)
		if counts == nil {
			continue
		}
		for _, b := range st.Backends {
			host, _, _ := strings.Cut(b.Addr, ":")
			b.Active = counts[host]
		}
	}
	return out
}

// parseKey splits a VIP key, ADDR:PORT/PROTO.
func parseKey(key string) (netip.Addr, uint16, string, bool) {
	hp, proto, ok := strings.Cut(key, "/")
	host, port, ok2 := strings.Cut(hp, ":")
	a, err := netip.ParseAddr(host)
	if !ok || !ok2 || err != nil {
		return netip.Addr{}, 0, "", false
	}
	if port == "*" {
		return a, 0, proto, true
	}
	p, err := strconv.ParseUint(port, 10, 16)
	return a, uint16(p), proto, err == nil
}

func containsKey(keys []string, k string) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}
