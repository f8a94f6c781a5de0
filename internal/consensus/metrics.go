package consensus

import (
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descTerm          = prometheus.NewDesc("ssi_raft_term", "Raft's current term on this node.", nil, nil)
	descCommitIndex   = prometheus.NewDesc("ssi_raft_commit_index", "The last log index this node knows committed.", nil, nil)
	descAppliedIndex  = prometheus.NewDesc("ssi_raft_applied_index", "The last log index Raft handed to the state machine on this node.", nil, nil)
	descLastIndex     = prometheus.NewDesc("ssi_raft_last_log_index", "The last index in this node's log.", nil, nil)
	descLeaderChanges = prometheus.NewDesc("ssi_raft_leader_changes_total", "Changes of leader this node observed (including losing the leader) since it started.", nil, nil)
	descRaftState     = prometheus.NewDesc("ssi_raft_state", "1 for this node's Raft role (follower, candidate, leader, shutdown), 0 for the others.", []string{"state"}, nil)
	descLeaderNode    = prometheus.NewDesc("ssi_raft_leader_node", "The node number of the leader as this node knows it (0: none known).", nil, nil)
	descLastContact   = prometheus.NewDesc("ssi_raft_last_contact_seconds", "Seconds since a follower last heard from the leader (0 on the leader and before any contact).", nil, nil)
)

// Collector is the consensus part of the node's metrics (docs/OBSERVABILITY.md).
func (l *Leader) Collector() prometheus.Collector { return raftCollector{l} }

type raftCollector struct{ l *Leader }

func (c raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTerm, descCommitIndex, descAppliedIndex, descLastIndex, descLeaderChanges, descRaftState, descLeaderNode, descLastContact} {
		ch <- d
	}
}

func (c raftCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.l.raft
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descTerm, float64(r.CurrentTerm()))
	gauge(descCommitIndex, float64(r.CommitIndex()))
	gauge(descAppliedIndex, float64(r.AppliedIndex()))
	gauge(descLastIndex, float64(r.LastIndex()))
	ch <- prometheus.MustNewConstMetric(descLeaderChanges, prometheus.CounterValue, float64(c.l.leaderChanges.Load()))
	st := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == st {
			v = 1
		}
		gauge(descRaftState, v, strings.ToLower(s.String()))
	}
	gauge(descLeaderNode, float64(c.l.LeaderNum()))
	contact := 0.0
	if st == raft.Follower {
		if t := r.LastContact(); !t.IsZero() {
			contact = time.Since(t).Seconds()
		}
	}
	gauge(descLastContact, contact)
}
