package placement

import "github.com/prometheus/client_golang/prometheus"

var (
	descLoad     = prometheus.NewDesc("ssi_load", "This node's load figure as its heartbeats carry it: max(CPU busy, run queue / CPUs), averaged (internal/load).", nil, nil)
	descRunQueue = prometheus.NewDesc("ssi_load_run_queue", "This node's averaged number of runnable tasks.", nil, nil)
	descCPUBusy  = prometheus.NewDesc("ssi_load_cpu_busy_ratio", "This node's averaged busy fraction of all CPUs (0..1).", nil, nil)
	descCPUs     = prometheus.NewDesc("ssi_load_cpus", "Online CPUs of this node.", nil, nil)
	descMemFree  = prometheus.NewDesc("ssi_memory_available_bytes", "Memory available for new work on this node.", nil, nil)
)

// LoadCollector is the load part of the node's metrics: what src measures
// for heartbeats (docs/OBSERVABILITY.md).
func LoadCollector(src Source) prometheus.Collector { return loadCollector{src} }

type loadCollector struct{ src Source }

func (c loadCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLoad, descRunQueue, descCPUBusy, descCPUs, descMemFree} {
		ch <- d
	}
}

func (c loadCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.src.Current()
	for d, v := range map[*prometheus.Desc]float64{descLoad: l.Value, descRunQueue: l.RunQueue, descCPUBusy: l.CPUBusy, descCPUs: float64(l.NCPU), descMemFree: float64(l.MemFree)} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
}
