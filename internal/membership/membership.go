// Package membership is OpenSSI's cluster membership service (CLMS) for one
// node: it heartbeats to the leader; while this node leads, it turns
// heartbeats into agreed transitions (through internal/clms's decisions and
// the replicated log), keeps Raft's configuration in line with the node
// table, replaces voters that stay DOWN, and applies the bootstrap command
// of a new cluster. It admits joining machines (Join), takes a node or the
// whole cluster out gracefully, and serves the Membership RPC service and
// the node-table part of the Control service (Status, AddNodes, IssueToken,
// RemoveNode, Shutdown, ProvisionInfo).
//
// It must not run processes, place them or serve DHCP; it reaches the
// leader only through internal/consensus and other nodes only through
// internal/peer.
package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/clms"
	"github.com/ssi-cluster/ssi/internal/consensus"
	"github.com/ssi-cluster/ssi/internal/load"
	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
)

// leaderTick is how often the leader looks for transitions to propose.
const leaderTick = 50 * time.Millisecond

// configTick is how often the leader reconciles Raft's configuration.
const configTick = 200 * time.Millisecond

// Config is what membership needs from the node.
type Config struct {
	Self   uint32
	BootID string // changes at every start of the daemon
	FSM    *state.FSM
	Leader *consensus.Leader
	Net    peer.Net
	CA     *pki.CA // signs joining nodes' certificates
	// Seeds are the addresses of members to heartbeat to while the leader
	// is unknown (a node that has just joined).
	Seeds func() []string
	// Load is this node's current load, carried by its heartbeats.
	Load func() load.Load
	// Bootstrap, on node 1 of a new cluster, is applied at the first
	// leadership; Bootstrapped is called once it is in the log.
	Bootstrap    *state.Bootstrap
	Bootstrapped func() error
	// Exit asks the daemon to stop (after this node left the cluster).
	Exit func()
	// StartIndex is the last log index this node held when it started: it
	// answers reads only once its state machine has applied that far
	// (Status.stale lifts this). Applied is how far the state machine has
	// applied (Raft's own applied index runs ahead of it).
	StartIndex uint64
	Applied    func() uint64
	// RaftAddr, when set, gives a node's Raft address (in-memory test
	// networks); by default it is the node's ip:port.
	RaftAddr func(num uint32) string
	Log      *slog.Logger
}

// Membership is one node's membership service.
type Membership struct {
	cfg     Config
	log     *slog.Logger
	det     *clms.Detector
	clients *peer.Clients[ssiv1connect.MembershipClient]

	quiesced atomic.Bool // heartbeats stopped: the node is leaving
	guard    joinGuard   // failed joins, by source and MAC
	caughtUp atomic.Bool // the state machine has applied StartIndex
	stats    *stats      // heartbeat counters and RTT (metrics.go)
}

// New returns the service and registers its leader duties with cfg.Leader.
func New(cfg Config) *Membership {
	m := &Membership{cfg: cfg, log: cfg.Log, det: clms.NewDetector(state.DefaultFailureTimeout),
		clients: peer.NewClients(cfg.Net, ssiv1connect.NewMembershipClient), stats: newStats()}
	cfg.Leader.OnLeading(m.lead)
	cfg.Leader.OnLeading(m.reconcileRaft)
	return m
}

// CaughtUp reports whether the state machine has applied the log this node
// held when it started; once true it stays true.
func (m *Membership) CaughtUp() bool {
	if m.caughtUp.Load() {
		return true
	}
	applied := m.cfg.Leader.AppliedIndex()
	if m.cfg.Applied != nil {
		applied = m.cfg.Applied()
	}
	if applied >= m.cfg.StartIndex {
		m.caughtUp.Store(true)
		return true
	}
	return false
}

// Leaving reports whether this node has stopped heartbeating to leave.
func (m *Membership) Leaving() bool { return m.quiesced.Load() }

// Heartbeats are the last heartbeat of every live node (meaningful on the
// leader only).
func (m *Membership) Heartbeats(now time.Time) map[uint32]clms.Heartbeat {
	return m.det.Heartbeats(now)
}

// Timing is the cluster's heartbeat interval and failure timeout.
func Timing(c state.Config) (interval, timeout time.Duration) {
	if c.HeartbeatInterval == 0 {
		return state.DefaultHeartbeatInterval, state.DefaultFailureTimeout
	}
	return c.HeartbeatInterval, c.FailureTimeout
}

// Run heartbeats to the leader every heartbeat interval until ctx ends.
func (m *Membership) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		interval, _ := Timing(m.cfg.FSM.Config())
		t.Reset(interval)
		if m.quiesced.Load() {
			continue
		}
		l := m.cfg.Load()
		hb := &ssiv1.HeartbeatRequest{Num: m.cfg.Self, BootId: m.cfg.BootID, AppliedIndex: m.cfg.Leader.AppliedIndex(),
			Load: l.Value, RunQueue: l.RunQueue, CpuBusy: l.CPUBusy, Ncpu: uint32(l.NCPU), MemFree: l.MemFree}
		hctx, cancel := context.WithTimeout(ctx, 2*interval)
		sent := time.Now()
		err := m.sendHeartbeat(hctx, hb)
		m.stats.sent(err, time.Since(sent))
		if err != nil {
			m.log.Debug("heartbeat not delivered", "err", err)
		}
		cancel()
	}
}

// sendHeartbeat delivers hb to the leader through the forwarding path, or,
// while this node knows no leader (it has just joined), to the members it
// was told about, which forward it.
func (m *Membership) sendHeartbeat(ctx context.Context, hb *ssiv1.HeartbeatRequest) error {
	l := m.cfg.Leader
	if l.IsLeader() || l.LeaderNum() != 0 {
		_, err := m.heartbeat(ctx, consensus.Inbound{Origin: m.cfg.Self}, hb)
		return err
	}
	err := error(fmt.Errorf("node %d knows no leader and no member to ask", m.cfg.Self))
	for _, addr := range m.cfg.Seeds() {
		c, cerr := m.clients.At(addr)
		if cerr != nil {
			err = cerr
			continue
		}
		if _, err = c.Heartbeat(ctx, connect.NewRequest(hb)); err == nil {
			return nil
		}
	}
	return err
}

// heartbeat takes a heartbeat to the leader's detector.
func (m *Membership) heartbeat(ctx context.Context, in consensus.Inbound, hb *ssiv1.HeartbeatRequest) (*ssiv1.HeartbeatResponse, error) {
	return consensus.Forward(ctx, m.cfg.Leader, in, hb,
		func(_ context.Context, hb *ssiv1.HeartbeatRequest) (*ssiv1.HeartbeatResponse, error) {
			m.stats.received.Inc()
			m.det.Observe(clms.Heartbeat{Num: hb.Num, BootID: hb.BootId, Applied: hb.AppliedIndex, Load: hb.Load,
				RunQueue: hb.RunQueue, CPUBusy: hb.CpuBusy, NCPU: int(hb.Ncpu), MemFree: hb.MemFree}, time.Now())
			return &ssiv1.HeartbeatResponse{LeaderNum: m.cfg.Self}, nil
		},
		func(leader uint32) (func(context.Context, *connect.Request[ssiv1.HeartbeatRequest]) (*connect.Response[ssiv1.HeartbeatResponse], error), error) {
			c, err := m.clients.To(leader)
			if err != nil {
				return nil, err
			}
			return c.Heartbeat, nil
		})
}

// lead turns heartbeats into agreed transitions while this node leads; on
// the first leadership of a new cluster it applies the bootstrap command.
func (m *Membership) lead(ctx context.Context, prev uint32) {
	_, timeout := Timing(m.cfg.FSM.Config())
	m.det.SetTimeout(timeout)
	m.det.Reset(time.Now(), prev)
	if err := m.bootstrapIfNeeded(); err != nil {
		m.log.Error("bootstrap failed", "err", err)
	}
	t := time.NewTicker(leaderTick)
	defer t.Stop()
	due := time.Now().Add(leaderTick)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, timeout := Timing(m.cfg.FSM.Config())
		// A tick far later than due means this process did not run (CPU
		// starvation, SIGSTOP): the nodes' heartbeats of that time are
		// still unread, so the stall is nobody's silence. Transitions are
		// decided once the handlers had a tick to catch up.
		now := time.Now()
		late := now.Sub(due) - leaderTick // a tick dropped by the ticker is not a stall
		due = now.Add(leaderTick)
		if late > timeout/4 {
			m.det.Stalled(late)
			m.log.Warn("the leader's membership loop ran late: every node credited with the stall", "late", late.Round(time.Millisecond))
			continue
		}
		if m.quiesced.Load() || !m.cfg.Leader.IsLeader() {
			continue
		}
		m.det.SetTimeout(timeout)
		for _, cmd := range m.det.Decide(m.cfg.FSM.Cluster(), time.Now()) {
			res, _, err := m.cfg.Leader.ApplyLocal(state.CmdSetState, cmd)
			if err == nil {
				err = res.Error()
			}
			if err != nil {
				if !errors.Is(err, state.ErrConflict) {
					m.log.Warn("membership transition not applied", "target", cmd.Num, "to", cmd.To, "err", err)
				}
				continue
			}
			m.log.Info("membership transition", "target", cmd.Num, "to", cmd.To, "reason", cmd.Reason)
		}
		// Time spent applying (handlers ran meanwhile) is no stall.
		due = time.Now().Add(leaderTick)
	}
}

func (m *Membership) bootstrapIfNeeded() error {
	if m.cfg.Bootstrap == nil || m.cfg.FSM.ClusterName() != "" {
		return nil
	}
	res, _, err := m.cfg.Leader.ApplyLocal(state.CmdBootstrap, m.cfg.Bootstrap)
	if err == nil {
		err = res.Error()
	}
	if err != nil && !errors.Is(err, state.ErrExists) {
		return err
	}
	m.cfg.Bootstrap = nil
	if m.cfg.Bootstrapped != nil {
		return m.cfg.Bootstrapped()
	}
	return nil
}

// reconcileRaft keeps Raft's configuration in line with the node table
// while this node leads: live nodes that heartbeat are added as voters or
// non-voters as the table designates, removed nodes are removed.
func (m *Membership) reconcileRaft(ctx context.Context, _ uint32) {
	t := time.NewTicker(configTick)
	defer t.Stop()
	r := m.cfg.Leader.Raft()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !m.cfg.Leader.IsLeader() || m.quiesced.Load() {
			continue
		}
		fut := r.GetConfiguration()
		if fut.Error() != nil {
			continue
		}
		have := map[raft.ServerID]raft.Server{}
		for _, s := range fut.Configuration().Servers {
			have[s.ID] = s
		}
		c := m.cfg.FSM.Cluster()
		now := time.Now()
		for _, n := range c.SortedNodes() {
			sid := consensus.ServerID(n.Num)
			s, in := have[sid]
			addr := raft.ServerAddress(m.raftAddr(n, c))
			switch {
			case !n.State.Live() || !m.det.Alive(n.Num, now):
			case !in && n.Voter, in && n.Voter && s.Suffrage != raft.Voter:
				m.changeConfig("add voter", n.Num, r.AddVoter(sid, addr, 0, 5*time.Second))
			case !in:
				m.changeConfig("add non-voter", n.Num, r.AddNonvoter(sid, addr, 0, 5*time.Second))
			}
			// A voter that lost its vote (see replaceVoters) becomes a
			// non-voter, whether or not it is running.
			if in && !n.Voter && s.Suffrage == raft.Voter && n.Num != m.cfg.Self {
				m.changeConfig("demote voter", n.Num, r.DemoteVoter(sid, 0, 5*time.Second))
			}
		}
		m.replaceVoters(ctx, c, now)
		for sid := range have {
			if _, ok := c.Nodes[consensus.NumOf(sid)]; !ok && c.Name != "" {
				m.changeConfig("remove server", consensus.NumOf(sid), r.RemoveServer(sid, 0, 5*time.Second))
			}
		}
	}
}

func (m *Membership) raftAddr(n *state.Node, c *state.Cluster) string {
	if m.cfg.RaftAddr != nil {
		return m.cfg.RaftAddr(n.Num)
	}
	return JoinHostPort(n.IPAddr, c.Config.Port)
}

// replaceVoters gives the vote of a voter that has been DOWN longer than
// the cluster's VoterReplaceAfter to the lowest-numbered UP non-voter that
// heartbeats, one at a time.
func (m *Membership) replaceVoters(ctx context.Context, c *state.Cluster, now time.Time) {
	after := c.Config.VoterReplaceAfter
	if after <= 0 {
		return
	}
	for _, dead := range c.SortedNodes() {
		if !dead.Voter || dead.State != state.Down || now.Sub(dead.StateSince) < after {
			continue
		}
		for _, n := range c.SortedNodes() {
			if n.Voter || n.State != state.Up || !m.det.Alive(n.Num, now) {
				continue
			}
			cmd := state.ReplaceVoter{Down: dead.Num, Up: n.Num, Time: now,
				Reason: fmt.Sprintf("takes the Raft vote of node %d, DOWN for %v", dead.Num, now.Sub(dead.StateSince).Round(time.Second))}
			if _, err := m.cfg.Leader.Apply(ctx, state.CmdReplaceVoter, cmd); err != nil {
				m.log.Warn("voter replacement failed", "down", dead.Num, "up", n.Num, "err", err)
			} else {
				m.log.Info("voter replaced", "down", dead.Num, "up", n.Num)
			}
			return
		}
	}
}

func (m *Membership) changeConfig(what string, num uint32, f raft.IndexFuture) {
	if err := f.Error(); err != nil {
		m.log.Warn("Raft configuration change failed", "change", what, "target", num, "err", err)
		return
	}
	m.log.Info("Raft configuration changed", "change", what, "target", num)
}
