package membership

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssi-cluster/ssi/internal/state"
)

// stats are this node's heartbeat counters and round-trip times.
type stats struct {
	sentOK, sentErr prometheus.Counter
	received        prometheus.Counter
	rtt             prometheus.Histogram
}

func newStats() *stats {
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ssi_heartbeats_sent_total",
		Help: "Heartbeats this node sent to the leader, by result (ok: the leader took it; error: not delivered).",
	}, []string{"result"})
	return &stats{
		sentOK: sent.WithLabelValues("ok"), sentErr: sent.WithLabelValues("error"),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssi_heartbeats_received_total",
			Help: "Heartbeats this node's failure detector took while it led.",
		}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ssi_heartbeat_rtt_seconds",
			Help:    "Round-trip time of this node's delivered heartbeats to the leader (through a forwarder if any).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
	}
}

func (s *stats) sent(err error, rtt time.Duration) {
	if err != nil {
		s.sentErr.Inc()
		return
	}
	s.sentOK.Inc()
	s.rtt.Observe(rtt.Seconds())
}

var (
	descNodeState = prometheus.NewDesc("ssi_node_state",
		"1 for the state each node of the node table is in (NEVERUP, COMINGUP, UP, GOINGDOWN, DOWN), 0 for the others; as this node's copy of the replicated state says.",
		[]string{"node", "name", "state"}, nil)
	descNodes = prometheus.NewDesc("ssi_nodes", "Nodes of the node table in each state.", []string{"state"}, nil)
	descSince = prometheus.NewDesc("ssi_node_state_since_seconds",
		"When each node entered its current state (Unix time, the leader's clock).", []string{"node", "name"}, nil)
	descTransitions = prometheus.NewDesc("ssi_membership_events_kept",
		"Membership and migration events held in the replicated history (at most 512).", nil, nil)
	descCaughtUp = prometheus.NewDesc("ssi_node_caught_up", "1 once this node has applied the log it held at start (it answers reads), else 0.", nil, nil)
)

// Collector is the membership part of the node's metrics: the heartbeat
// counters and, from this node's copy of the node table, every node's
// state (docs/OBSERVABILITY.md).
func (m *Membership) Collector() prometheus.Collector { return memCollector{m} }

type memCollector struct{ m *Membership }

func (c memCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, col := range []prometheus.Collector{c.m.stats.sentOK, c.m.stats.received, c.m.stats.rtt} {
		col.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{descNodeState, descNodes, descSince, descTransitions, descCaughtUp} {
		ch <- d
	}
}

func (c memCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.stats
	for _, col := range []prometheus.Collector{s.sentOK, s.sentErr, s.received, s.rtt} {
		col.Collect(ch)
	}
	cl := c.m.cfg.FSM.Cluster()
	count := map[state.NodeState]int{}
	for _, n := range cl.Nodes {
		num := strconv.FormatUint(uint64(n.Num), 10)
		count[n.State]++
		for _, st := range state.States {
			v := 0.0
			if st == n.State {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descNodeState, prometheus.GaugeValue, v, num, n.Name, string(st))
		}
		if !n.StateSince.IsZero() {
			ch <- prometheus.MustNewConstMetric(descSince, prometheus.GaugeValue, float64(n.StateSince.UnixMilli())/1e3, num, n.Name)
		}
	}
	for _, st := range state.States {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(count[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(descTransitions, prometheus.GaugeValue, float64(len(cl.Events)))
	up := 0.0
	if c.m.CaughtUp() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descCaughtUp, prometheus.GaugeValue, up)
}
