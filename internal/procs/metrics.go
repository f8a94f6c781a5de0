package procs

import "github.com/prometheus/client_golang/prometheus"

var (
	descProcs = prometheus.NewDesc("ssi_processes",
		"Jobs in this node's process table (started here or moved here), by whether they still run (running) or ended and wait to be collected (exited).",
		[]string{"status"}, nil)
	descStarted = prometheus.NewDesc("ssi_processes_started_total", "Jobs started on this node since the daemon started.", nil, nil)
	descFailed  = prometheus.NewDesc("ssi_processes_start_failures_total", "Jobs this node could not start (exec failed, no such command, ...).", nil, nil)
)

// Collector is the process-table part of the node's metrics
// (docs/OBSERVABILITY.md).
func (m *Manager) Collector() prometheus.Collector { return procsCollector{m} }

type procsCollector struct{ m *Manager }

func (c procsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descProcs
	ch <- descStarted
	ch <- descFailed
}

func (c procsCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	running, exited := 0, 0
	m.mu.Lock()
	for _, j := range m.jobs {
		select {
		case <-j.done:
			exited++
		default:
			running++
		}
	}
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descProcs, prometheus.GaugeValue, float64(running), "running")
	ch <- prometheus.MustNewConstMetric(descProcs, prometheus.GaugeValue, float64(exited), "exited")
	ch <- prometheus.MustNewConstMetric(descStarted, prometheus.CounterValue, float64(m.started.Load()))
	ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(m.failed.Load()))
}
