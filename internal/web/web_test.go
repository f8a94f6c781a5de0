package web

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

type cluster struct {
	t     *testing.T
	fsm   *state.FSM
	index uint64
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, fsm: state.NewFSM(slog.New(slog.DiscardHandler))}
	c.apply(state.CmdBootstrap, state.Bootstrap{Name: "c1", CAFingerprint: "fp", Time: t0,
		Config: state.Config{Voters: 1, MaxNodes: 5, Port: 7470, HeartbeatInterval: 200 * time.Millisecond, FailureTimeout: time.Second},
		Node:   state.NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "10.0.0.1"}})
	c.apply(state.CmdAddNodes, state.AddNodes{Nodes: []state.NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.2"}}, Time: t0})
	return c
}

func (c *cluster) apply(typ state.CommandType, cmd any) {
	c.t.Helper()
	b, err := state.Encode(typ, cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	c.index++
	if r := c.fsm.ApplyEntry(c.index, b); r.Err != nil {
		c.t.Fatalf("apply %d: %v", typ, r.Err)
	}
}

func (c *cluster) setState(num uint32, to state.NodeState, why string) {
	c.apply(state.CmdSetState, state.SetState{Num: num, To: to, Reason: why, Time: t0.Add(time.Duration(c.index) * time.Second)})
}

// Following the history: the events already there, then each new one
// once, in order, with migrations told apart from membership changes.
func TestFollowEvents(t *testing.T) {
	c := newCluster(t)
	c.setState(1, state.Up, "caught up")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *ssiv1.ClusterEvent, 16)
	done := make(chan error, 1)
	go func() {
		done <- follow(ctx, c.fsm, 0, func(e *ssiv1.ClusterEvent) error { got <- e; return nil })
	}()
	next := func() *ssiv1.ClusterEvent {
		t.Helper()
		select {
		case e := <-got:
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return nil
		}
	}
	if e := next(); e.Kind != ssiv1.EventKind_EVENT_KIND_MEMBERSHIP || e.Node != 1 || e.To != ssiv1.NodeState_NODE_STATE_COMINGUP {
		t.Fatalf("first event %v", e)
	}
	if e := next(); e.To != ssiv1.NodeState_NODE_STATE_UP || e.Reason != "caught up" {
		t.Fatalf("second event %v", e)
	}
	c.setState(2, state.ComingUp, "joined")
	c.setState(2, state.Up, "caught up")
	c.apply(state.CmdMoved, state.Moved{CPID: 1000007, From: 1, To: 2, Record: 2, Why: "migrate", Time: t0})
	c.setState(2, state.Down, "no heartbeat for 1s")
	want := []struct {
		kind ssiv1.EventKind
		to   ssiv1.NodeState
	}{
		{ssiv1.EventKind_EVENT_KIND_MEMBERSHIP, ssiv1.NodeState_NODE_STATE_COMINGUP},
		{ssiv1.EventKind_EVENT_KIND_MEMBERSHIP, ssiv1.NodeState_NODE_STATE_UP},
		{ssiv1.EventKind_EVENT_KIND_MIGRATION, ssiv1.NodeState_NODE_STATE_UP},
		{ssiv1.EventKind_EVENT_KIND_MEMBERSHIP, ssiv1.NodeState_NODE_STATE_DOWN},
	}
	var last uint64
	for i, w := range want {
		e := next()
		if e.Kind != w.kind || e.To != w.to || e.Node != 2 || e.Index <= last {
			t.Fatalf("event %d: %v, want kind %v to %v on node 2 after index %d", i, e, w.kind, w.to, last)
		}
		if e.Kind == ssiv1.EventKind_EVENT_KIND_MIGRATION && (e.Cpid != 1000007 || e.FromNode != 1) {
			t.Fatalf("migration event %v", e)
		}
		last = e.Index
	}
	select {
	case e := <-got:
		t.Fatalf("an extra event: %v", e)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	evs, newest := eventsAfter(c.fsm.Cluster(), 0, 2)
	if len(evs) != 2 || newest != last || evs[1].Index != last {
		t.Fatalf("last 2 events: %v, newest %d", evs, newest)
	}
}

// fakeControl records the calls the dashboard makes for its users.
type fakeControl struct {
	ssiv1connect.UnimplementedControlHandler
	mu      sync.Mutex
	signals []transport.Caller
}

func (f *fakeControl) Signal(ctx context.Context, r *connect.Request[ssiv1.SignalRequest]) (*connect.Response[ssiv1.SignalResponse], error) {
	c, _ := transport.CallerFrom(ctx)
	f.mu.Lock()
	f.signals = append(f.signals, c)
	f.mu.Unlock()
	if r.Msg.Signal != int32(syscall.SIGTERM) {
		return nil, connect.NewError(connect.CodeInvalidArgument, nil)
	}
	return connect.NewResponse(&ssiv1.SignalResponse{Node: 2}), nil
}

func (f *fakeControl) calls() []transport.Caller {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transport.Caller(nil), f.signals...)
}

func TestDashboardAuthorization(t *testing.T) {
	ca, err := pki.NewCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.NewCA("c2")
	ctl := &fakeControl{}
	w := New(Config{Self: 1, FSM: newCluster(t).fsm, CA: ca, Control: ctl, Log: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(w.Handler())
	defer srv.Close()
	now := time.Now()
	exp := now.Add(time.Hour).Unix()
	admin, _ := Issue(ca.Key, ca.Cert, Claims{UID: 1000, GID: 100, Groups: []uint32{7}, Admin: true, Expires: exp}, now)
	ro, _ := Issue(ca.Key, ca.Cert, Claims{UID: 1001, Expires: exp}, now)
	foreign, _ := Issue(other.Key, other.Cert, Claims{UID: 0, Admin: true, Expires: exp}, now)
	expired, _ := Issue(ca.Key, ca.Cert, Claims{UID: 0, Admin: true, Expires: now.Add(-time.Second).Unix()}, now.Add(-time.Hour))

	do := func(method, path, tok, ctype, body string, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return resp.StatusCode, string(b)
	}
	const kill = `{"cpid":2000001,"signal":"TERM"}`
	// Nobody without a valid token gets data or acts.
	for _, tok := range []string{"", "garbage", foreign, expired} {
		for _, p := range []string{"/api/session", "/api/stream"} {
			if code, body := do("GET", p, tok, "", ""); code != http.StatusUnauthorized || strings.Contains(body, "c1") {
				t.Errorf("GET %s with token %.12q: %d %s", p, tok, code, body)
			}
		}
		if code, _ := do("POST", "/api/kill", tok, "application/json", kill); code != http.StatusUnauthorized {
			t.Errorf("kill with token %.12q: %d", tok, code)
		}
	}
	// The page itself is public but holds no data, with a strict policy.
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), `id="login"`) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("GET /: %d %v", resp.StatusCode, resp.Header)
	}
	// Read-only tokens look, and cannot act.
	if code, body := do("GET", "/api/session", ro, "", ""); code != 200 || !strings.Contains(body, `"admin":false`) {
		t.Errorf("read-only session: %d %s", code, body)
	}
	if code, _ := do("POST", "/api/kill", ro, "application/json", kill); code != http.StatusForbidden {
		t.Errorf("read-only kill: %d", code)
	}
	// Admin requests must be JSON and same-origin.
	if code, _ := do("POST", "/api/kill", admin, "text/plain", kill); code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain kill: %d", code)
	}
	if code, _ := do("POST", "/api/kill", admin, "application/json", kill, "Origin", "http://evil.example"); code != http.StatusForbidden {
		t.Errorf("cross-origin kill: %d", code)
	}
	if code, _ := do("POST", "/api/kill", admin, "application/json", `{"cpid":1,"signal":"`+strings.Repeat("A", 8000)+`"}`); code != http.StatusBadRequest {
		t.Errorf("oversized body: %d", code)
	}
	if code, _ := do("POST", "/api/kill", admin, "application/json", `{"cpid":1,"extra":1}`); code != http.StatusBadRequest {
		t.Errorf("unknown field: %d", code)
	}
	if n := len(ctl.calls()); n != 0 {
		t.Fatalf("%d signals sent by refused requests", n)
	}
	code, body := do("POST", "/api/kill", admin, "application/json", kill, "Origin", srv.URL)
	if code != 200 {
		t.Fatalf("admin kill: %d %s", code, body)
	}
	var out struct{ Node uint32 }
	if err := json.Unmarshal([]byte(body), &out); err != nil || out.Node != 2 {
		t.Fatalf("admin kill answer %s", body)
	}
	calls := ctl.calls()
	if len(calls) != 1 || calls[0].UID != 1000 || calls[0].GID != 100 || len(calls[0].Groups) != 1 || calls[0].Groups[0] != 7 {
		t.Fatalf("the signal was sent as %+v, want the token's identity uid 1000 gid 100 groups [7]", calls)
	}
}

func TestRateLimitPerAddress(t *testing.T) {
	var l clientLimits
	l.m = map[netip.Addr]*rate.Limiter{}
	allowed := 0
	for range rateBurst + 10 {
		if l.allow("127.0.0.1:5000") {
			allowed++
		}
	}
	if allowed < rateBurst || allowed > rateBurst+2 {
		t.Fatalf("%d of %d requests allowed at once, want the burst %d", allowed, rateBurst+10, rateBurst)
	}
	if !l.allow("127.0.0.2:5000") {
		t.Fatal("another address was limited too")
	}
	if l.allow("not an address") {
		t.Fatal("an unparsable address was allowed")
	}
}

// Admin dashboard tokens only for callers who may change the cluster;
// anyone gets a read-only one, carrying their identity.
func TestDashboardTokenIssuance(t *testing.T) {
	ca, err := pki.NewCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{Self: 3, FSM: newCluster(t).fsm, CA: ca, Control: &fakeControl{}, Log: slog.New(slog.DiscardHandler)})
	svc := w.Service()
	stranger := transport.WithCaller(context.Background(), transport.Caller{UID: 54321, GID: 54321})
	if _, err := svc.DashboardToken(stranger, connect.NewRequest(&ssiv1.DashboardTokenRequest{})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("admin token for uid 54321: %v", err)
	}
	resp, err := svc.DashboardToken(stranger, connect.NewRequest(&ssiv1.DashboardTokenRequest{ReadOnly: true, TtlSeconds: 3600}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Verify(ca.Cert, resp.Msg.Token, time.Now())
	if err != nil || c.Admin || c.UID != 54321 || c.Node != 3 || resp.Msg.Admin {
		t.Fatalf("read-only token: %+v %v", c, err)
	}
	if d := time.Until(time.Unix(c.Expires, 0)); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("token expires in %v, want 1h", d)
	}
	if _, err := svc.DashboardToken(stranger, connect.NewRequest(&ssiv1.DashboardTokenRequest{ReadOnly: true, TtlSeconds: 5})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("a 5s token: %v", err)
	}
	if _, err := svc.DashboardToken(context.Background(), connect.NewRequest(&ssiv1.DashboardTokenRequest{ReadOnly: true})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("a token without peer credentials: %v", err)
	}
	// root (as the CLI of an admin) gets an admin token.
	root := transport.WithCaller(context.Background(), transport.Caller{UID: 0})
	resp, err = svc.DashboardToken(root, connect.NewRequest(&ssiv1.DashboardTokenRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := Verify(ca.Cert, resp.Msg.Token, time.Now()); err != nil || !c.Admin {
		t.Fatalf("root's token: %+v %v", c, err)
	}
}
