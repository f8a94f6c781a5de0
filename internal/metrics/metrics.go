package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
)

// Namespace prefixes every metric ssi defines.
const Namespace = "ssi"

// Limits of the /metrics endpoint: it is reachable without a cluster
// certificate, so what one client can make the node do is bounded.
const (
	maxConns    = 16 // open connections
	maxScrapes  = 4  // scrapes gathered at once; more get 503
	scrapeLimit = 10 * time.Second
)

// Registry is one node's metrics: Go runtime and process collectors plus
// whatever the subsystems register.
type Registry struct {
	reg     *prometheus.Registry
	once    sync.Once
	handler http.Handler
}

// New returns a registry with the Go runtime's and the process's
// collectors (go_*, process_*).
func New() *Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Registry{reg: r}
}

// Register adds collectors; a collector whose metrics clash with one
// already registered is a programming error and panics.
func (r *Registry) Register(cs ...prometheus.Collector) {
	r.reg.MustRegister(cs...)
}

// Gatherer exposes the registry for tests.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves the registry in the Prometheus text (or OpenMetrics)
// format, at most maxScrapes at once (one handler per registry: it counts
// its own requests in the registry).
func (r *Registry) Handler(log *slog.Logger) http.Handler {
	r.once.Do(func() {
		r.handler = promhttp.InstrumentMetricHandler(r.reg, promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
			ErrorLog:            slogLogger{log},
			ErrorHandling:       promhttp.ContinueOnError,
			MaxRequestsInFlight: maxScrapes,
			Timeout:             scrapeLimit,
			EnableOpenMetrics:   true,
		}))
	})
	return r.handler
}

type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Println(v ...any) { l.log.Warn("metrics", "err", fmt.Sprint(v...)) }

// Server is a running /metrics endpoint.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen opens addr and serves /metrics (and a one-line page at /) until
// Close. Only GET and HEAD are answered.
func Listen(addr string, r *Registry, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", r.Handler(log))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ssi node metrics: GET /metrics (Prometheus format; docs/OBSERVABILITY.md)")
	})
	s := &Server{ln: netutil.LimitListener(ln, maxConns), srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      scrapeLimit + 5*time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}
	go func() {
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics endpoint stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the address it listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops it, letting a scrape in progress finish for a moment.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return s.srv.Close()
	}
	return nil
}

// Auto is the address flag value that picks a loopback address by itself
// (nodeaddr.LoopbackFor).
const Auto = "auto"

// DefaultPort is the /metrics port of an automatic address.
const DefaultPort = 7471
