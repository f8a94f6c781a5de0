package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/netutil"
	"golang.org/x/time/rate"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

//go:embed static
var static embed.FS

// Auto is the --web-listen value that picks a loopback address by itself
// (nodeaddr.LoopbackFor); DefaultPort is its port.
const (
	Auto        = "auto"
	DefaultPort = 7480
)

// Limits of the dashboard's endpoint, which is reachable without a
// cluster certificate (docs/OBSERVABILITY.md).
const (
	maxConns      = 64               // open connections
	maxStreams    = 16               // live (server-sent events) streams at once
	maxBody       = 4 << 10          // a request body (kill, migrate, add-node)
	maxHeader     = 8 << 10          // request headers
	ratePerSecond = 20               // requests per client address, sustained
	rateBurst     = 40               // and in a burst
	maxClients    = 4096             // addresses whose rate is tracked
	writeLimit    = 10 * time.Second // one response, or one event of a stream
)

// Sampling of the cluster for the page: how often while someone watches,
// and how often the load history is kept up otherwise.
const (
	liveEvery    = time.Second
	historyEvery = 2 * time.Second
	historyLen   = 300 // samples per node: 10 minutes at historyEvery
)

// Config is what the dashboard needs from the node.
type Config struct {
	Self       uint32
	FSM        *state.FSM
	CA         *pki.CA
	Control    ssiv1connect.ControlHandler // the CLI's own handlers: the dashboard acts through them
	MetricsURL func() string
	Log        *slog.Logger
}

// Web is one node's dashboard.
type Web struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	url     string
	srv     *http.Server
	subs    map[chan []byte]struct{}
	last    *snapshot                 // the latest sample, for new streams
	history map[uint32][]historyPoint // load history by node
	wake    chan struct{}             // a first subscriber arrived

	streams chan struct{} // a slot per live stream
	limits  clientLimits
}

// New returns the dashboard; Listen serves it and Run samples the cluster.
func New(cfg Config) *Web {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MetricsURL == nil {
		cfg.MetricsURL = func() string { return "" }
	}
	return &Web{cfg: cfg, log: cfg.Log.With("subsystem", "web"), subs: map[chan []byte]struct{}{}, history: map[uint32][]historyPoint{},
		wake: make(chan struct{}, 1), streams: make(chan struct{}, maxStreams), limits: clientLimits{m: map[netip.Addr]*rate.Limiter{}}}
}

// URL is where the dashboard is served ("" when it is not).
func (w *Web) URL() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.url
}

// Listen serves the dashboard on addr until Run's context ends.
func (w *Web) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("dashboard: listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           w.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    maxHeader,
		ErrorLog:          slog.NewLogLogger(w.log.Handler(), slog.LevelDebug),
	}
	w.mu.Lock()
	w.url, w.srv = "http://"+ln.Addr().String()+"/", srv
	w.mu.Unlock()
	go func() {
		if err := srv.Serve(netutil.LimitListener(ln, maxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Warn("dashboard stopped", "err", err)
		}
	}()
	return nil
}

// Close stops serving (and ends the live streams); it may be called more
// than once.
func (w *Web) Close() {
	w.mu.Lock()
	srv := w.srv
	w.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// Run samples the cluster for the page until ctx ends, then stops serving.
func (w *Web) Run(ctx context.Context) {
	defer w.Close()
	if w.URL() == "" {
		<-ctx.Done()
		return
	}
	lastHistory := time.Time{}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.wake:
		}
		live := w.watchers() > 0
		if live || time.Since(lastHistory) >= historyEvery {
			s := w.sample(ctx, live)
			if time.Since(lastHistory) >= historyEvery {
				w.record(s)
				lastHistory = time.Now()
			}
			if live {
				w.broadcast("snapshot", s)
			}
		}
		if live {
			t.Reset(liveEvery)
		} else {
			t.Reset(historyEvery)
		}
	}
}

// Handler is the dashboard's HTTP handler (the page, its API and stream).
func (w *Web) Handler() http.Handler {
	mux := http.NewServeMux()
	files, _ := fs.Sub(static, "static")
	fileServer := http.FileServerFS(files)
	mux.Handle("GET /{$}", fileServer)
	for _, f := range []string{"app.js", "app.css"} {
		mux.Handle("GET /"+f, fileServer)
	}
	mux.HandleFunc("GET /api/session", w.authed(false, w.session))
	mux.HandleFunc("GET /api/stream", w.authed(false, w.stream))
	mux.HandleFunc("POST /api/kill", w.authed(true, w.kill))
	mux.HandleFunc("POST /api/migrate", w.authed(true, w.migrate))
	mux.HandleFunc("POST /api/nodes", w.authed(true, w.addNode))
	return w.guard(mux)
}

// guard applies what every request gets: the rate limit of its address,
// a bounded body and header set, and headers that keep the page from being
// framed or sniffed.
func (w *Web) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := rw.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if !w.limits.allow(r.RemoteAddr) {
			httpError(rw, http.StatusTooManyRequests, "too many requests from this address; slow down")
			return
		}
		r.Body = http.MaxBytesReader(rw, r.Body, maxBody)
		next.ServeHTTP(rw, r)
	})
}

// clientLimits are the request rates of client addresses.
type clientLimits struct {
	mu sync.Mutex
	m  map[netip.Addr]*rate.Limiter
}

func (c *clientLimits) allow(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.m[ap.Addr()]
	if l == nil {
		if len(c.m) >= maxClients {
			clear(c.m) // many addresses at once: start over rather than grow
		}
		l = rate.NewLimiter(ratePerSecond, rateBurst)
		c.m[ap.Addr()] = l
	}
	return l.Allow()
}

func httpError(rw http.ResponseWriter, code int, msg string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(map[string]string{"error": msg})
}

func writeJSON(rw http.ResponseWriter, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(rw).Encode(v)
}

type handler func(rw http.ResponseWriter, r *http.Request, c Claims)

// authed admits requests with a valid token in the Authorization header
// (never a cookie: a browser attaches no such header to a request another
// site makes it send, so the mutating calls need no other CSRF defence);
// mutating ones also need an admin token and a JSON body, and a
// same-origin Origin when the browser sends one.
func (w *Web) authed(mutate bool, h handler) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			httpError(rw, http.StatusUnauthorized, "a dashboard token is required: get one with 'ssi dashboard token'")
			return
		}
		c, err := Verify(w.cfg.CA.Cert, strings.TrimSpace(tok), time.Now())
		if err != nil {
			httpError(rw, http.StatusUnauthorized, err.Error())
			return
		}
		if mutate {
			if !c.Admin {
				httpError(rw, http.StatusForbidden, "this dashboard token is read-only: it may not change the cluster")
				return
			}
			if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				httpError(rw, http.StatusUnsupportedMediaType, "send JSON")
				return
			}
			if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host && o != "https://"+r.Host {
				httpError(rw, http.StatusForbidden, "cross-origin request refused")
				return
			}
		}
		h(rw, r, c)
	}
}

// as is the context the Control handlers see for the token's holder: the
// identity it was issued to, as if that user ran the CLI.
func as(ctx context.Context, c Claims) context.Context {
	return transport.WithCaller(ctx, transport.Caller{UID: c.UID, GID: c.GID, Groups: c.Groups})
}

func (w *Web) session(rw http.ResponseWriter, _ *http.Request, c Claims) {
	writeJSON(rw, map[string]any{"user": c.User, "uid": c.UID, "admin": c.Admin, "expires": c.Expires * 1000,
		"node": w.cfg.Self, "cluster": w.cfg.FSM.ClusterName(), "metrics": w.cfg.MetricsURL()})
}

// decode reads a request's JSON body into v.
func decode(rw http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		httpError(rw, http.StatusBadRequest, "bad request body: "+err.Error())
		return false
	}
	return true
}

// rpcError answers with a Control handler's error.
func rpcError(rw http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument:
		code = http.StatusBadRequest
	case connect.CodePermissionDenied:
		code = http.StatusForbidden
	case connect.CodeNotFound:
		code = http.StatusNotFound
	case connect.CodeFailedPrecondition, connect.CodeAlreadyExists:
		code = http.StatusConflict
	}
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	httpError(rw, code, msg)
}

var signals = map[string]syscall.Signal{"TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP, "STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT}

func (w *Web) kill(rw http.ResponseWriter, r *http.Request, c Claims) {
	var req struct {
		CPID   int64  `json:"cpid"`
		Signal string `json:"signal"`
	}
	if !decode(rw, r, &req) {
		return
	}
	sig, ok := signals[req.Signal]
	if req.Signal == "" {
		sig, ok = syscall.SIGTERM, true
	}
	if !ok || req.CPID <= 0 {
		httpError(rw, http.StatusBadRequest, "need a cluster PID and a signal (TERM, KILL, INT, HUP, STOP, CONT)")
		return
	}
	resp, err := w.cfg.Control.Signal(as(r.Context(), c), connect.NewRequest(&ssiv1.SignalRequest{Cpid: req.CPID, Signal: int32(sig)}))
	if err != nil {
		rpcError(rw, err)
		return
	}
	w.log.Info("dashboard: signal sent", "cpid", req.CPID, "signal", req.Signal, "uid", c.UID, "token", c.ID)
	writeJSON(rw, map[string]any{"node": resp.Msg.Node})
}

func (w *Web) migrate(rw http.ResponseWriter, r *http.Request, c Claims) {
	var req struct {
		CPID int64  `json:"cpid"`
		Node string `json:"node"`
	}
	if !decode(rw, r, &req) {
		return
	}
	if req.CPID <= 0 || (req.Node != "home" && !validNum(req.Node)) {
		httpError(rw, http.StatusBadRequest, "need a cluster PID and a node number (or home)")
		return
	}
	resp, err := w.cfg.Control.Migrate(as(r.Context(), c), connect.NewRequest(&ssiv1.MigrateRequest{Cpid: req.CPID, Node: req.Node}))
	if err != nil {
		rpcError(rw, err)
		return
	}
	w.log.Info("dashboard: process migrated", "cpid", req.CPID, "to", resp.Msg.To, "uid", c.UID, "token", c.ID)
	writeJSON(rw, map[string]any{"from": resp.Msg.From, "to": resp.Msg.To})
}

func validNum(s string) bool {
	n, err := strconv.ParseUint(s, 10, 32)
	return err == nil && n > 0 && strconv.FormatUint(n, 10) == s
}

func (w *Web) addNode(rw http.ResponseWriter, r *http.Request, c Claims) {
	var req struct {
		HWAddr string `json:"hwaddr"`
		IPAddr string `json:"ipaddr"`
		Name   string `json:"name"`
	}
	if !decode(rw, r, &req) {
		return
	}
	mac, err := nodeaddr.ParseMAC(req.HWAddr)
	if err != nil {
		httpError(rw, http.StatusBadRequest, err.Error())
		return
	}
	ip, err := nodeaddr.ParseIP(req.IPAddr)
	if err != nil {
		httpError(rw, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Name) > 63 {
		httpError(rw, http.StatusBadRequest, "a node name has at most 63 characters")
		return
	}
	resp, err := w.cfg.Control.AddNodes(as(r.Context(), c), connect.NewRequest(&ssiv1.AddNodesRequest{Nodes: []*ssiv1.NodeSpec{{Hwaddr: mac, Ipaddr: ip.String(), Name: req.Name}}}))
	if err != nil {
		rpcError(rw, err)
		return
	}
	if len(resp.Msg.Nodes) != 1 {
		httpError(rw, http.StatusBadGateway, "the cluster added no node")
		return
	}
	a := resp.Msg.Nodes[0]
	w.log.Info("dashboard: node added", "num", a.Node.Num, "uid", c.UID, "token", c.ID)
	writeJSON(rw, map[string]any{"num": a.Node.Num, "name": a.Node.Name, "token": a.Token})
}
