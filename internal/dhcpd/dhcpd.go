// Package dhcpd is the cluster's DHCP service on one node: it decides from
// the replicated DHCP settings, the node table and leadership whether this
// node serves (node 1 by default, or whichever node leads), runs an
// internal/dhcp server on the configured interface accordingly, answers
// from the node table by MAC and records the leases it grants in the
// replicated state. It serves the DHCP part of the Control service (GetDHCP,
// SetDHCP).
//
// It must not change the node table; leases and settings change only
// through internal/consensus.
package dhcpd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/dhcp"
	"github.com/ssi-cluster/ssi/internal/state"
)

// The node's DHCP server: the node designated by the replicated DHCP
// settings (node 1 by default, or whichever node leads) runs an
// internal/dhcp server on the configured interface, answering the MACs of
// the node table with their registered addresses. Bindings are read from
// the state machine on every packet (through a cache rebuilt after each
// applied change), so nodes added, removed or re-addressed take effect at
// once; leases it grants are recorded in the replicated state,
// asynchronously, so that a server on another node sees them after a
// failover.

// dhcpRetry is how long a server that failed to start (interface without
// an address, port in use, ...) waits before it tries again with the same
// settings. Any settings change retries at once.
const dhcpRetry = 5 * time.Second

// dhcpRecheck is how often the loop looks again without being told to:
// interfaces come and go without the state machine knowing.
const dhcpRecheck = 2 * time.Second

// maxPendingLeases bounds the lease records waiting to be applied.
const maxPendingLeases = 4096

// Config is what the DHCP service needs from the node.
type Config struct {
	Self    uint32
	SelfIP  string // the node's cluster address: served from if the interface has it
	FSM     *state.FSM
	Leader  *consensus.Leader
	Leaving func() bool // the node is leaving the cluster
	Log     *slog.Logger
	// ServerLog is the DHCP server's logger: without the node attribute,
	// since the server names the client's node "node".
	ServerLog *slog.Logger
}

// Service runs (or not) this node's DHCP server.
type Service struct {
	cfg    Config
	log    *slog.Logger
	reg    *fsmRegistry
	leases *leaseRecorder

	mu     sync.Mutex
	status string // what the server does now, for 'ssi dhcp show'
}

// New returns the node's DHCP service; Run runs it.
func New(cfg Config) *Service {
	reg := &fsmRegistry{fsm: cfg.FSM}
	return &Service{
		cfg: cfg, log: cfg.Log, reg: reg, status: "not started",
		leases: &leaseRecorder{cfg: cfg, reg: reg, pending: map[string]state.Lease{}, wake: make(chan struct{}, 1)},
	}
}

func (s *Service) setStatus(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	s.mu.Lock()
	changed := s.status != msg
	s.status = msg
	s.mu.Unlock()
	if changed {
		s.log.Info("dhcp: " + msg)
	}
}

// Status says what this node's DHCP server is doing.
func (s *Service) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// dhcpPlan is a server this node should run.
type dhcpPlan struct {
	settings dhcp.Settings
	key      string // equal keys: same server, nothing to restart
}

// desired decides whether this node serves DHCP now, and with what; when it
// does not, the reason.
func (s *Service) desired() (*dhcpPlan, string) {
	d := s.cfg
	c := d.FSM.Cluster()
	cfg := c.DHCPSettings()
	switch {
	case c.Name == "":
		return nil, "idle: the cluster is not created yet"
	case !cfg.Enabled:
		return nil, "idle: DHCP is disabled (ssi dhcp set --enable)"
	case d.Leaving():
		return nil, fmt.Sprintf("idle: node %d is leaving the cluster", d.Self)
	}
	server := cfg.ServerNode
	if server == state.DHCPServerLeader {
		if server = d.Leader.LeaderNum(); server == 0 {
			return nil, "idle: DHCP runs on the leader and no leader is known"
		}
	}
	if server != d.Self {
		return nil, fmt.Sprintf("idle: node %d serves DHCP, not node %d", server, d.Self)
	}
	ifc, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Sprintf("not serving: interface %s does not exist on node %d (fix it with ssi dhcp set --interface)", cfg.Interface, d.Self)
	}
	ip, err := dhcpServerAddr(ifc, d.SelfIP)
	if err != nil {
		return nil, fmt.Sprintf("not serving: %v", err)
	}
	set := dhcp.Settings{Interface: cfg.Interface, ServerIP: ip, Domain: cfg.Domain, LeaseTime: cfg.LeaseTime}
	set.Netmask, _ = netip.ParseAddr(cfg.Netmask)
	if cfg.Gateway != "" {
		gw, _ := netip.ParseAddr(cfg.Gateway)
		set.Router = []netip.Addr{gw}
	}
	for _, a := range cfg.DNS {
		ns, _ := netip.ParseAddr(a)
		set.DNS = append(set.DNS, ns)
	}
	return &dhcpPlan{settings: set, key: fmt.Sprintf("%+v", set)}, ""
}

// dhcpServerAddr picks the server's address on ifc: the node's own cluster
// address if the interface has it, else the interface's first IPv4 address.
func dhcpServerAddr(ifc *net.Interface, own string) (netip.Addr, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("interface %s: %w", ifc.Name, err)
	}
	var first netip.Addr
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil || !pfx.Addr().Is4() {
			continue
		}
		if pfx.Addr().String() == own {
			return pfx.Addr(), nil
		}
		if !first.IsValid() {
			first = pfx.Addr()
		}
	}
	if !first.IsValid() {
		return netip.Addr{}, fmt.Errorf("interface %s has no IPv4 address to serve from (add one, e.g. ip addr add 192.168.64.141/24 dev %s)", ifc.Name, ifc.Name)
	}
	return first, nil
}

// dhcpRun is one running (or failed) server.
type dhcpRun struct {
	key    string
	cancel context.CancelFunc
	done   chan struct{}
	err    error // valid once done is closed
	ended  time.Time
}

func (r *dhcpRun) stop() {
	r.cancel()
	<-r.done
}

// Run keeps the server in line with the settings, the node table and
// leadership until ctx ends.
func (s *Service) Run(ctx context.Context) {
	d := s.cfg
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.leases.run(ctx) }()
	defer wg.Wait()

	tick := time.NewTicker(dhcpRecheck)
	defer tick.Stop()
	var cur *dhcpRun
	defer func() {
		if cur != nil {
			cur.stop()
		}
	}()
	for {
		changed, leaderChanged := d.FSM.Changed(), d.Leader.LeaderChanged()
		plan, why := s.desired()
		if cur != nil {
			select {
			case <-cur.done:
				// It stopped by itself: retry later, or at once if asked for something else.
				if plan == nil || plan.key != cur.key || time.Since(cur.ended) >= dhcpRetry {
					cur = nil
				}
			default:
				if plan == nil || plan.key != cur.key {
					cur.stop()
					cur = nil
				}
			}
		}
		if cur == nil && plan != nil {
			cur = s.start(ctx, plan)
		}
		if plan == nil {
			s.setStatus("%s", why)
		}
		var curDone <-chan struct{}
		if cur != nil {
			select {
			case <-cur.done:
			default:
				curDone = cur.done
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-leaderChanged:
		case <-tick.C:
		case <-curDone:
		}
	}
}

func (s *Service) start(ctx context.Context, plan *dhcpPlan) *dhcpRun {
	r := &dhcpRun{key: plan.key, done: make(chan struct{})}
	// The server logs the client's node as "node": name this one differently.
	srv, err := dhcp.New(plan.settings, s.reg, s.leases, s.cfg.ServerLog.With("server_node", s.cfg.Self))
	if err != nil {
		r.err, r.ended, r.cancel = err, time.Now(), func() {}
		close(r.done)
		s.setStatus("not serving: %v", err)
		return r
	}
	sctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	s.leases.setLeaseTime(plan.settings.LeaseTime)
	s.setStatus("serving on %s as %s", plan.settings.Interface, plan.settings.ServerIP)
	go func() {
		err := srv.Serve(sctx)
		if err != nil {
			s.setStatus("not serving: %v (retrying every %v)", err, dhcpRetry)
		}
		r.err, r.ended = err, time.Now()
		close(r.done)
	}()
	return r
}

// fsmRegistry is the dhcp.Registry of the daemon: the node table, indexed
// by MAC and rebuilt after every change the state machine applies.
type fsmRegistry struct {
	fsm *state.FSM

	mu      sync.Mutex
	changed <-chan struct{} // closed when the view is stale
	view    registryView
}

type registryView struct {
	byMAC  map[string]dhcp.Binding
	leases map[string]state.Lease
}

func (r *fsmRegistry) current() registryView {
	r.mu.Lock()
	defer r.mu.Unlock()
	stale := r.changed == nil
	if !stale {
		select {
		case <-r.changed:
			stale = true
		default:
		}
	}
	if stale {
		ch := r.fsm.Changed() // before reading: a change in between makes the next call rebuild
		c := r.fsm.Cluster()
		v := registryView{byMAC: make(map[string]dhcp.Binding, len(c.Nodes)), leases: make(map[string]state.Lease, len(c.Leases))}
		for _, n := range c.Nodes {
			ip, err := netip.ParseAddr(n.IPAddr)
			if err != nil {
				continue
			}
			v.byMAC[n.HWAddr] = dhcp.Binding{Num: int(n.Num), Hostname: n.Name, IP: ip}
		}
		for k, l := range c.Leases {
			v.leases[k] = *l
		}
		r.changed, r.view = ch, v
	}
	return r.view
}

// LookupMAC implements dhcp.Registry.
func (r *fsmRegistry) LookupMAC(mac string) (dhcp.Binding, bool) {
	b, ok := r.current().byMAC[mac]
	return b, ok
}

// leaseRecorder is the dhcp.LeaseStore of the daemon: it queues leases and
// applies them to the replicated state in the background, so the DHCP
// reply never waits for Raft. A lease that the state already holds with
// the same address and nearly the same expiry is not recorded again.
type leaseRecorder struct {
	cfg Config
	reg *fsmRegistry

	mu        sync.Mutex
	pending   map[string]state.Lease
	leaseTime time.Duration
	wake      chan struct{}
}

func (r *leaseRecorder) setLeaseTime(t time.Duration) {
	r.mu.Lock()
	r.leaseTime = t
	r.mu.Unlock()
}

// recordInterval is how far a lease's expiry must move before it is
// recorded again: a quarter of the lease, at most a minute.
func recordInterval(lease time.Duration) time.Duration {
	if lease <= 0 {
		lease = state.DefaultDHCPLeaseTime
	}
	return min(lease/4, time.Minute)
}

// sameLease reports whether recording l would change nothing worth a log
// entry, given the recorded lease old.
func sameLease(old, l state.Lease, interval time.Duration) bool {
	if old.HWAddr != l.HWAddr || old.IPAddr != l.IPAddr {
		return false
	}
	if old.Expires.After(old.Recorded) != l.Expires.After(l.Recorded) { // granted vs released
		return false
	}
	d := l.Expires.Sub(old.Expires)
	return d > -interval && d < interval
}

// RecordLease implements dhcp.LeaseStore.
func (r *leaseRecorder) RecordLease(mac string, ip netip.Addr, expires time.Time) error {
	now := time.Now()
	l := state.Lease{HWAddr: mac, IPAddr: ip.String(), Expires: expires, Recorded: now, ServerNum: r.cfg.Self}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.reg.current().leases[mac]; ok && sameLease(old, l, recordInterval(r.leaseTime)) {
		return nil
	}
	if _, queued := r.pending[mac]; !queued && len(r.pending) >= maxPendingLeases {
		return fmt.Errorf("node %d: %d leases are waiting to be recorded; dropping the lease of %s (is the cluster leader reachable?)", r.cfg.Self, len(r.pending), mac)
	}
	r.pending[mac] = l
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// run applies queued leases until ctx ends.
func (r *leaseRecorder) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		r.mu.Lock()
		batch := r.pending
		r.pending = map[string]state.Lease{}
		r.mu.Unlock()
		macs := make([]string, 0, len(batch))
		for m := range batch {
			macs = append(macs, m)
		}
		sort.Strings(macs)
		for _, m := range macs {
			_, err := r.cfg.Leader.Apply(ctx, state.CmdRecordLease, state.RecordLease{Lease: batch[m]})
			switch {
			case err == nil:
			case errors.Is(err, state.ErrNotFound):
				r.cfg.Log.Debug("dhcp: lease not recorded: the node was removed", "mac", m)
			case ctx.Err() != nil:
				return
			default:
				r.cfg.Log.Warn("dhcp: could not record lease in the cluster state", "mac", m, "ip", batch[m].IPAddr, "err", err)
			}
		}
	}
}

func dhcpSettingsToProto(c state.DHCPConfig) *ssiv1.DHCPSettings {
	return &ssiv1.DHCPSettings{
		Enabled: c.Enabled, Interface: c.Interface, Netmask: c.Netmask, Gateway: c.Gateway,
		Dns: append([]string(nil), c.DNS...), LeaseTimeSeconds: int64(c.LeaseTime / time.Second),
		Domain: c.Domain, ServerNode: c.ServerNode,
	}
}

func dhcpSettingsFromProto(p *ssiv1.DHCPSettings) state.DHCPConfig {
	if p == nil {
		return state.DHCPConfig{}
	}
	lease := time.Duration(p.LeaseTimeSeconds) * time.Second
	if p.LeaseTimeSeconds < 0 || p.LeaseTimeSeconds > int64(state.MaxDHCPLeaseTime/time.Second) {
		lease = -1 // refused by the state machine, without overflowing
	}
	return state.DHCPConfig{
		Enabled: p.Enabled, Interface: p.Interface, Netmask: p.Netmask, Gateway: p.Gateway,
		DNS: append([]string(nil), p.Dns...), LeaseTime: lease, Domain: p.Domain, ServerNode: p.ServerNode,
	}
}
