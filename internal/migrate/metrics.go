package migrate

import (
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// stats count the migrations this node did as their source.
type stats struct {
	total    *prometheus.CounterVec   // by why and result
	duration *prometheus.HistogramVec // by why, successful ones
	freeze   prometheus.Histogram
	bytes    prometheus.Counter
}

func newStats() *stats {
	return (&stats{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssi_migrations_total",
			Help: "Migrations of jobs away from this node, by why (migrate, expel, load leveling) and result (ok; refused: the job cannot move, nothing changed; failed).",
		}, []string{"why", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ssi_migration_duration_seconds",
			Help:    "Time of a successful migration from the request to the job running on the target, by why.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"why"}),
		freeze: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ssi_migration_freeze_seconds",
			Help:    "How long a successfully migrated job was frozen (from freeze to running on the target).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssi_migration_bytes_total",
			Help: "Bytes of checkpoint images and logs this node sent to migration targets.",
		}),
	}).initialized()
}

// whys are the reasons a migration starts (Moved.Why).
var whys = []string{"migrate", "expel", "load leveling"}

// initialized: every known series exists from the start, at zero.
func (s *stats) initialized() *stats {
	for _, w := range whys {
		for _, r := range []string{"ok", "refused", "failed"} {
			s.total.WithLabelValues(w, r)
		}
		s.duration.WithLabelValues(w)
	}
	return s
}

// isRefusal reports whether err is a refusal: the job cannot or may not
// move, and nothing changed.
func isRefusal(err error) bool {
	c := connect.CodeOf(err)
	return c == connect.CodeFailedPrecondition || c == connect.CodePermissionDenied
}

// refusedEarly counts a request refused before the move started (the job
// is pinned, attached where that cannot move, another user's, or limited
// to other nodes); other errors there (no such process) are not
// migrations.
func (s *stats) refusedEarly(why string, err error) {
	if isRefusal(err) {
		s.total.WithLabelValues(why, "refused").Inc()
	}
}

func (s *stats) record(why string, start time.Time, ph *ssiv1.MigratePhases, err error) {
	result := "ok"
	switch {
	case err == nil:
	case isRefusal(err):
		result = "refused"
	default:
		result = "failed"
	}
	s.total.WithLabelValues(why, result).Inc()
	if ph != nil {
		s.bytes.Add(float64(ph.Bytes))
	}
	if err == nil {
		s.duration.WithLabelValues(why).Observe(time.Since(start).Seconds())
		if ph != nil {
			s.freeze.Observe(float64(ph.FreezeUs) / 1e6)
		}
	}
}

// Collector is the migration part of the node's metrics
// (docs/OBSERVABILITY.md).
func (m *Migrator) Collector() prometheus.Collector { return m.stats }

func (s *stats) Describe(ch chan<- *prometheus.Desc) {
	s.total.Describe(ch)
	s.duration.Describe(ch)
	s.freeze.Describe(ch)
	s.bytes.Describe(ch)
}

func (s *stats) Collect(ch chan<- prometheus.Metric) {
	s.total.Collect(ch)
	s.duration.Collect(ch)
	s.freeze.Collect(ch)
	s.bytes.Collect(ch)
}
