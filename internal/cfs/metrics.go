package cfs

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// The cluster filesystem's metrics, on the serving node: requests served
// and their latency by operation (docs/OBSERVABILITY.md).

var (
	descRequests = prometheus.NewDesc("ssi_cfs_requests_total",
		"Cluster filesystem requests this node served (as the server), by operation.", []string{"op"}, nil)
	descServing     = prometheus.NewDesc("ssi_cfs_serving", "1 when this node serves the cluster filesystem, else 0.", nil, nil)
	descReplicating = prometheus.NewDesc("ssi_cfs_replicating", "1 when this node is the cluster filesystem's replica, else 0.", nil, nil)
	descInSync      = prometheus.NewDesc("ssi_cfs_replica_in_sync", "1 when the cluster filesystem has a replica in sync (it may take over), else 0 (as this node last applied the cluster state).", nil, nil)
	descFailovers   = prometheus.NewDesc("ssi_cfs_failovers_total", "Times a replica took over the cluster filesystem (the cluster state's count).", nil, nil)
	descMounted     = prometheus.NewDesc("ssi_cfs_mounted", "1 when this node has the cluster filesystem mounted, else 0.", nil, nil)
	// The histograms' own description, for Describe.
	descLatency = prometheus.NewDesc("ssi_cfs_request_duration_seconds",
		"Time this node (as the server) took to serve a cluster filesystem request, by operation, including waiting for other nodes' invalidation acknowledgements.", []string{"op"}, nil)
)

var latencyBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}

// opName is the label of an operation: FS_OP_GETATTR -> getattr.
func opName(op ssiv1.FsOp) string {
	return strings.ToLower(strings.TrimPrefix(op.String(), "FS_OP_"))
}

func (s *Server) initLatency() {
	for v := range ssiv1.FsOp_name {
		if v <= 0 || int(v) >= len(s.latency) {
			continue
		}
		s.latency[v] = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ssi_cfs_request_duration_seconds", Help: descLatencyHelp,
			ConstLabels: prometheus.Labels{"op": opName(ssiv1.FsOp(v))}, Buckets: latencyBuckets,
		})
	}
}

const descLatencyHelp = "Time this node (as the server) took to serve a cluster filesystem request, by operation, including waiting for other nodes' invalidation acknowledgements."

// observe records a request of operation op that started at start.
func (s *Server) observe(op ssiv1.FsOp, start time.Time) {
	if op > 0 && int(op) < len(s.latency) && s.latency[op] != nil {
		s.latency[op].Observe(time.Since(start).Seconds())
	}
}

// Collector is the cluster filesystem part of the node's metrics.
func (f *FS) Collector() prometheus.Collector { return cfsCollector{f} }

type cfsCollector struct{ f *FS }

func (c cfsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRequests
	ch <- descServing
	ch <- descReplicating
	ch <- descInSync
	ch <- descFailovers
	ch <- descMounted
	ch <- descLatency
}

func (c cfsCollector) Collect(ch chan<- prometheus.Metric) {
	c.f.mu.Lock()
	srv, cl := c.f.server, c.f.client
	c.f.mu.Unlock()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	rec := c.f.Record()
	ch <- prometheus.MustNewConstMetric(descServing, prometheus.GaugeValue, b(srv != nil && srv.role.Load() == roleServe))
	ch <- prometheus.MustNewConstMetric(descReplicating, prometheus.GaugeValue, b(srv != nil && srv.role.Load() == roleReplica))
	ch <- prometheus.MustNewConstMetric(descInSync, prometheus.GaugeValue, b(rec.Replica != 0 && rec.Synced))
	ch <- prometheus.MustNewConstMetric(descFailovers, prometheus.CounterValue, float64(rec.Failovers))
	ch <- prometheus.MustNewConstMetric(descMounted, prometheus.GaugeValue, b(cl != nil))
	if srv == nil || srv.role.Load() != roleServe {
		return
	}
	for v := range ssiv1.FsOp_name {
		op := ssiv1.FsOp(v)
		if v <= 0 || int(v) >= len(srv.latency) {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(srv.Requests(op)), opName(op))
		srv.latency[v].Collect(ch)
	}
}
