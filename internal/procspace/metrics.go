package procspace

import "github.com/prometheus/client_golang/prometheus"

var descStreams = prometheus.NewDesc("ssi_exec_streams_total",
	"Exec streams this node relayed to a process on another node, by transport: own (a TLS connection of its own, ssi-exec) or rpc (the Connect stream).",
	[]string{"transport"}, nil)

// Collector is the process space's part of the node's metrics.
func (s *Space) Collector() prometheus.Collector { return spaceCollector{s} }

type spaceCollector struct{ s *Space }

func (c spaceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descStreams }

func (c spaceCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.CounterValue, float64(c.s.streams.own.Load()), "own")
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.CounterValue, float64(c.s.streams.rpc.Load()), "rpc")
}
