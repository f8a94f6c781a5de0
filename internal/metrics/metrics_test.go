package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
)

// heartbeater answers heartbeats, refusing node 0.
type heartbeater struct {
	ssiv1connect.UnimplementedMembershipHandler
}

func (heartbeater) Heartbeat(_ context.Context, r *connect.Request[ssiv1.HeartbeatRequest]) (*connect.Response[ssiv1.HeartbeatResponse], error) {
	if r.Msg.Num == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("node 0"))
	}
	return connect.NewResponse(&ssiv1.HeartbeatResponse{LeaderNum: 1}), nil
}

func TestRPCInterceptorCountsByOutcome(t *testing.T) {
	rpc := NewRPC("peer")
	reg := New()
	reg.Register(rpc)
	mux := http.NewServeMux()
	mux.Handle(ssiv1connect.NewMembershipHandler(heartbeater{}, connect.WithInterceptors(rpc)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := ssiv1connect.NewMembershipClient(srv.Client(), srv.URL)
	for range 3 {
		if _, err := c.Heartbeat(context.Background(), connect.NewRequest(&ssiv1.HeartbeatRequest{Num: 2})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Heartbeat(context.Background(), connect.NewRequest(&ssiv1.HeartbeatRequest{})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("heartbeat of node 0: %v", err)
	}
	if n := testutil.CollectAndCount(rpc, "ssi_rpc_server_duration_seconds"); n != 2 {
		t.Fatalf("%d series, want 2 (ok and invalid_argument)", n)
	}
	mfs, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "ssi_rpc_server_duration_seconds" {
			continue
		}
		for _, m := range mf.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["server"] != "peer" || labels["service"] != "Membership" || labels["method"] != "Heartbeat" {
				t.Fatalf("labels %v", labels)
			}
			counts[labels["code"]] = m.Histogram.GetSampleCount()
		}
	}
	if counts["ok"] != 3 || counts["invalid_argument"] != 1 {
		t.Fatalf("counts by code %v, want ok 3, invalid_argument 1", counts)
	}
}

func TestListenServesMetricsOnly(t *testing.T) {
	reg := New()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "test_things_total", Help: "things"})
	c.Add(7)
	reg.Register(c)
	s, err := Listen("127.0.0.1:0", reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := "http://" + s.Addr().String()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "ssi_test_things_total 7") || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
	resp, err = http.Post(base+"/metrics", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /metrics: %d, want 405", resp.StatusCode)
	}
	resp, err = http.Get(base + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /other: %d, want 404", resp.StatusCode)
	}
}

func TestSplitProcedure(t *testing.T) {
	s, m := splitProcedure("/ssi.v1.Membership/Heartbeat")
	if s != "Membership" || m != "Heartbeat" {
		t.Fatalf("%q %q", s, m)
	}
}

// The shipped Grafana dashboard queries only metrics the docs document
// (and so the e2e test checks every node serves).
func TestGrafanaDashboardUsesDocumentedMetrics(t *testing.T) {
	doc, err := os.ReadFile("../../docs/OBSERVABILITY.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(ssi_[a-z0-9_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = true
	}
	b, err := os.ReadFile("../../deploy/grafana/ssi-cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana/ssi-cluster.json: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			queries++
			names := regexp.MustCompile(`ssi_[a-z0-9_]+`).FindAllString(q.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q uses no ssi metric", p.Title, q.Expr)
			}
			for _, n := range names {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
				if !documented[base] {
					t.Errorf("panel %q queries %s, which docs/OBSERVABILITY.md does not document", p.Title, n)
				}
			}
		}
	}
	if queries < 10 {
		t.Fatalf("only %d queries", queries)
	}
}
