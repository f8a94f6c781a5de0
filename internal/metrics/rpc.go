package metrics

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// RPC times the Connect calls a node serves: a histogram of unary calls'
// durations and a counter of streams opened, by server (peer: the
// node-to-node port; control: the local socket), service, method and, for
// unary calls, the Connect code of the outcome. Streams (exec, logs,
// migration transfers) last as long as their work, so their durations
// would only blur a latency histogram: they are counted, and the ones
// still open are a gauge.
type RPC struct {
	server   string
	duration *prometheus.HistogramVec
	streams  *prometheus.CounterVec
	open     *prometheus.GaugeVec
}

// NewRPC returns the interceptor for one server ("peer" or "control").
// Register it (it is a collector) and pass it to the handlers with
// connect.WithInterceptors.
func NewRPC(server string) *RPC {
	c := prometheus.Labels{"server": server}
	return &RPC{
		server: server,
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "rpc", Name: "server_duration_seconds", ConstLabels: c,
			Help:    "Time to serve a unary RPC, by service, method and Connect code.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"service", "method", "code"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "rpc", Name: "server_streams_total", ConstLabels: c,
			Help: "Streaming RPCs opened, by service and method.",
		}, []string{"service", "method"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "rpc", Name: "server_streams_open", ConstLabels: c,
			Help: "Streaming RPCs open now, by service and method.",
		}, []string{"service", "method"}),
	}
}

// Describe implements prometheus.Collector.
func (r *RPC) Describe(ch chan<- *prometheus.Desc) {
	r.duration.Describe(ch)
	r.streams.Describe(ch)
	r.open.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *RPC) Collect(ch chan<- prometheus.Metric) {
	r.duration.Collect(ch)
	r.streams.Collect(ch)
	r.open.Collect(ch)
}

// splitProcedure turns "/ssi.v1.Membership/Heartbeat" into its service
// ("Membership") and method.
func splitProcedure(p string) (service, method string) {
	p = strings.TrimPrefix(p, "/")
	service, method, _ = strings.Cut(p, "/")
	if i := strings.LastIndexByte(service, '.'); i >= 0 {
		service = service[i+1:]
	}
	return service, method
}

// Code is the label of an RPC's outcome: "ok" or Connect's code name.
func Code(err error) string {
	if err == nil {
		return "ok"
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code().String()
	}
	return connect.CodeUnknown.String()
}

// WrapUnary implements connect.Interceptor.
func (r *RPC) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		resp, err := next(ctx, req)
		svc, m := splitProcedure(req.Spec().Procedure)
		r.duration.WithLabelValues(svc, m, Code(err)).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// WrapStreamingClient implements connect.Interceptor (client streams are
// not measured).
func (r *RPC) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (r *RPC) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		svc, m := splitProcedure(conn.Spec().Procedure)
		r.streams.WithLabelValues(svc, m).Inc()
		g := r.open.WithLabelValues(svc, m)
		g.Inc()
		defer g.Dec()
		return next(ctx, conn)
	}
}
