// Package metrics owns this node's Prometheus endpoint: the registry every
// subsystem adds its own collectors to (each subsystem defines and updates
// its metrics; this package defines none of theirs), the Connect
// interceptor that times the RPCs a node serves, and the /metrics HTTP
// server (loopback by default, bounded in connections and concurrent
// scrapes). Metric names and labels are documented in docs/OBSERVABILITY.md.
// It must not read cluster state itself or change anything.
package metrics
