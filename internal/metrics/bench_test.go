package metrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
)

// BenchmarkRPCInterceptor measures what timing a unary call costs: the
// same heartbeat over loopback HTTP, through a handler without and with
// the interceptor, alternated in one run; it reports the instrumented
// call's time as a ratio of the plain one (docs/PERFORMANCE.md).
func BenchmarkRPCInterceptor(b *testing.B) {
	serve := func(opts ...connect.HandlerOption) (ssiv1connect.MembershipClient, func()) {
		mux := http.NewServeMux()
		mux.Handle(ssiv1connect.NewMembershipHandler(heartbeater{}, opts...))
		srv := httptest.NewServer(mux)
		return ssiv1connect.NewMembershipClient(srv.Client(), srv.URL), srv.Close
	}
	plain, stop1 := serve()
	defer stop1()
	rpc := NewRPC("peer")
	timed, stop2 := serve(connect.WithInterceptors(rpc))
	defer stop2()
	req := connect.NewRequest(&ssiv1.HeartbeatRequest{Num: 2})
	ctx := context.Background()
	var tPlain, tTimed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, c := range []struct {
			cl  ssiv1connect.MembershipClient
			acc *time.Duration
		}{{plain, &tPlain}, {timed, &tTimed}} {
			start := time.Now()
			if _, err := c.cl.Heartbeat(ctx, req); err != nil {
				b.Fatal(err)
			}
			*c.acc += time.Since(start)
		}
	}
	b.ReportMetric(float64(tPlain.Nanoseconds())/float64(b.N), "plain-ns/call")
	b.ReportMetric(float64(tTimed.Nanoseconds())/float64(b.N), "timed-ns/call")
	b.ReportMetric(float64(tTimed)/float64(tPlain), "timed/plain")
}

// BenchmarkTimedRequest is what the cluster filesystem's server adds to
// every request it serves (cfs Server.observe): a clock read and a
// histogram observation; the baseline in the same run is the clock read
// alone.
func BenchmarkTimedRequest(b *testing.B) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x_seconds", Help: "x", Buckets: prometheus.DefBuckets})
	var sink time.Duration
	start := time.Now()
	for i := 0; i < b.N; i++ {
		sink += time.Since(start)
	}
	clockOnly := time.Since(start)
	start = time.Now()
	for i := 0; i < b.N; i++ {
		h.Observe(time.Since(start).Seconds())
	}
	timed := time.Since(start)
	_ = sink
	b.ReportMetric(float64(clockOnly.Nanoseconds())/float64(b.N), "clock-ns")
	b.ReportMetric(float64(timed.Nanoseconds())/float64(b.N), "clock+observe-ns")
	b.ReportMetric(float64(timed)/float64(clockOnly), "observe/clock")
}
