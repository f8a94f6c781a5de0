package jobnet

import (
	"time"

	"github.com/ssi-cluster/ssi/internal/vproc"
)

// fenceEvery is how often a node looks at whether it must fence its jobs'
// links, or may lift a fence.
const fenceEvery = time.Second

// fence takes down the links of this node's --net jobs once no leader has
// been known for fenceAfter, and, once one is known again, puts back up
// those whose address the replicated state still gives them on this node
// (with a gratuitous ARP: the switch may have learnt the MAC elsewhere).
// (It looks at the state only once this node has applied what the leader
// had committed: a node just back from a partition has not yet seen the
// majority's decisions.) A job whose address was given away meanwhile (its node was DOWN long
// enough: releaseDownAfter) keeps its link down: the address answers for
// another job now.
func (m *Manager) fence(now time.Time) {
	if m.leaderKnown() {
		m.leaderSeen = now
		if len(m.fenced) == 0 {
			return
		}
		// This node's copy of the state may be behind what the majority
		// did while it was cut off: it decides on the state as of the
		// leader's commit index.
		if err := m.caughtUp(); err != nil {
			m.log.Warn("a leader is known again, but this node has not caught up with it yet; its --net jobs' links stay down for now", "err", err)
			return
		}
		cl := m.cfg.FSM.Cluster()
		for cpid, ip := range m.fenced {
			delete(m.fenced, cpid)
			pid := m.cfg.InitPid(vproc.CPID(cpid))
			if pid == 0 {
				continue // it ended meanwhile
			}
			a, ok := cl.NetAddrOf(cpid)
			if !ok || a.Node != m.cfg.Self || a.IP != ip {
				m.log.Error("a --net job's address was given to another job while this node was cut off from the cluster; its network stays down (the cluster counts the job as lost: end it with ssi kill)", "cpid", cpid, "ip", ip)
				continue
			}
			if err := m.setUp(pid, true); err != nil {
				m.log.Error("putting a --net job's link back up after a fence", "cpid", cpid, "ip", ip, "err", err)
				continue
			}
			if err := m.announce(pid, ip); err != nil {
				m.log.Warn("announcing a --net job's address after a fence", "cpid", cpid, "ip", ip, "err", err)
			}
			m.log.Info("a leader is known again: the --net job's link is up", "cpid", cpid, "ip", ip)
		}
		return
	}
	if now.Sub(m.leaderSeen) < fenceAfter {
		return
	}
	for _, a := range m.cfg.FSM.Cluster().NetAddrList() {
		if a.Node != m.cfg.Self {
			continue
		}
		if _, done := m.fenced[a.CPID]; done {
			continue
		}
		pid := m.cfg.InitPid(vproc.CPID(a.CPID))
		if pid == 0 {
			continue
		}
		if err := m.setUp(pid, false); err != nil {
			m.log.Error("taking a --net job's link down: no leader is known, and its address may be given to another job", "cpid", a.CPID, "ip", a.IP, "err", err)
			continue
		}
		m.fenced[a.CPID] = a.IP
		m.log.Warn("no leader known for a while: the --net job's link is down until one is (this node may be cut off, and its jobs' addresses given again)", "cpid", a.CPID, "ip", a.IP, "after", fenceAfter)
	}
}
