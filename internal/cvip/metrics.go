package cvip

import "github.com/prometheus/client_golang/prometheus"

// The cluster virtual IP's metrics, on every node: what it directs, its
// backends' health, the user-space proxy's connections
// (docs/OBSERVABILITY.md). Always present, zero where nothing is directed.

var (
	descDirected = prometheus.NewDesc("ssi_cvip_directed",
		"Cluster virtual IPs this node directs, by datapath (nftables, userspace).", []string{"datapath"}, nil)
	descBackends = prometheus.NewDesc("ssi_cvip_backends",
		"Backends of the cluster virtual IPs this node directs, by health (healthy, unhealthy).", []string{"health"}, nil)
	descProxyConns = prometheus.NewDesc("ssi_cvip_proxy_connections",
		"Connections the user-space proxy of this node holds now.", nil, nil)
)

// Collector is the cluster virtual IP part of the node's metrics.
func (s *Service) Collector() prometheus.Collector { return cvipCollector{s} }

type cvipCollector struct{ s *Service }

func (c cvipCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDirected
	ch <- descBackends
	ch <- descProxyConns
}

func (c cvipCollector) Collect(ch chan<- prometheus.Metric) {
	directed := map[string]float64{"nftables": 0, "userspace": 0}
	health := map[string]float64{"healthy": 0, "unhealthy": 0}
	var proxied float64
	s := c.s
	s.mu.Lock()
	for _, st := range s.status {
		if _, ok := directed[st.Datapath]; ok {
			directed[st.Datapath]++
		}
		for _, b := range st.Backends {
			if b.Healthy {
				health["healthy"]++
			} else {
				health["unhealthy"]++
			}
		}
	}
	for _, d := range s.directed {
		if d.proxy != nil {
			for _, e := range d.proxy.endpointNums() {
				proxied += float64(d.proxy.activeConns(e))
			}
		}
	}
	s.mu.Unlock()
	for k, v := range directed {
		ch <- prometheus.MustNewConstMetric(descDirected, prometheus.GaugeValue, v, k)
	}
	for k, v := range health {
		ch <- prometheus.MustNewConstMetric(descBackends, prometheus.GaugeValue, v, k)
	}
	ch <- prometheus.MustNewConstMetric(descProxyConns, prometheus.GaugeValue, proxied)
}
