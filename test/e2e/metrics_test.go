package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsPort is the port of the daemons' automatic /metrics address.
const metricsPort = 7471

// scrape reads node k's /metrics.
func (c *Cluster) scrape(k int) (map[string]*dto.MetricFamily, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://%s:%d/metrics", c.IP(k), metricsPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("node %d: GET /metrics: %s", k, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format with Prometheus's parser.
func parseMetrics(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// value is the sum of a family's samples whose labels include want
// (counters, gauges; a histogram's count).
func value(mf *dto.MetricFamily, want map[string]string) (float64, bool) {
	if mf == nil {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range mf.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

// documentedMetrics are the ssi_ metric names of docs/OBSERVABILITY.md's
// metric tables (rows starting with "| `ssi_").
func documentedMetrics(t *testing.T) []string {
	b, err := os.ReadFile("../../docs/OBSERVABILITY.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?m)^\\| `(ssi_[a-z0-9_]+)`")
	var out []string
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out = append(out, m[1])
	}
	if len(out) < 30 {
		t.Fatalf("docs/OBSERVABILITY.md documents only %d metrics: %v", len(out), out)
	}
	return out
}

// Every node serves /metrics; every documented metric is there (on the
// node that has it: the filesystem server's on node 1, the leader's
// on the leader); the heartbeat counters rise on every node, and a job
// started on node 2 shows in node 2's process count and ends from it.
func TestMetricsOnEveryNode(t *testing.T) {
	c := StartCluster(t, 3)
	// Some traffic for the RPC and filesystem metrics: a file through
	// node 2's mount (served by node 1), a status through the socket.
	if err := os.WriteFile(c.Dir+"/mnt/node2/metrics-probe", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.MustCLI(2, "cluster", "-V")

	before := map[int]map[string]*dto.MetricFamily{}
	for k := 1; k <= 3; k++ {
		mfs, err := c.scrape(k)
		if err != nil {
			t.Fatalf("node %d: %v", k, err)
		}
		before[k] = mfs
		if v, _ := value(mfs["ssi_nodes"], map[string]string{"state": "UP"}); v != 3 {
			t.Errorf("node %d: ssi_nodes{state=UP} = %v, want 3", k, v)
		}
		for n := 1; n <= 3; n++ {
			if v, ok := value(mfs["ssi_node_state"], map[string]string{"node": fmt.Sprint(n), "state": "UP"}); !ok || v != 1 {
				t.Errorf("node %d: ssi_node_state{node=%d,state=UP} = %v (present %v), want 1", k, n, v, ok)
			}
		}
		if v, _ := value(mfs["ssi_raft_term"], nil); v < 1 {
			t.Errorf("node %d: ssi_raft_term = %v", k, v)
		}
	}
	if v, _ := value(before[1]["ssi_cfs_requests_total"], nil); v == 0 {
		t.Errorf("node 1 served no cluster filesystem request by its counters")
	}
	if v, _ := value(before[2]["ssi_rpc_server_duration_seconds"], map[string]string{"server": "control", "service": "Control", "method": "Status", "code": "ok"}); v == 0 {
		t.Errorf("node 2 timed no Control.Status call")
	}

	// Heartbeats rise on every node.
	time.Sleep(time.Second)
	for k := 1; k <= 3; k++ {
		mfs, err := c.scrape(k)
		if err != nil {
			t.Fatal(err)
		}
		was, _ := value(before[k]["ssi_heartbeats_sent_total"], map[string]string{"result": "ok"})
		now, _ := value(mfs["ssi_heartbeats_sent_total"], map[string]string{"result": "ok"})
		if now <= was {
			t.Errorf("node %d: ssi_heartbeats_sent_total{result=ok} went from %v to %v in a second", k, was, now)
		}
		if rtt, _ := value(mfs["ssi_heartbeat_rtt_seconds"], nil); rtt < now {
			t.Errorf("node %d: %v heartbeat round trips timed, %v sent", k, rtt, now)
		}
	}

	// A job on node 2 moves node 2's process count, and only node 2's.
	running := func(k int) float64 {
		mfs, err := c.scrape(k)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := value(mfs["ssi_processes"], map[string]string{"status": "running"})
		return v
	}
	r0, r3 := running(2), running(3)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sleep", "60"))
	Eventually(t, 5*time.Second, func() string {
		if v := running(2); v != r0+1 {
			return fmt.Sprintf("node 2: ssi_processes{status=running} = %v after starting %s, want %v", v, cpid, r0+1)
		}
		return ""
	})
	if v := running(3); v != r3 {
		t.Errorf("node 3's process count moved from %v to %v with a job on node 2", r3, v)
	}
	c.MustCLI(1, "ssi", "kill", "-9", cpid)
	Eventually(t, 5*time.Second, func() string {
		if v := running(2); v != r0 {
			return fmt.Sprintf("node 2: ssi_processes{status=running} = %v after killing %s, want %v", v, cpid, r0)
		}
		return ""
	})
	// Every documented metric, after the traffic above (streams appear
	// with the first one).
	final := map[int]map[string]*dto.MetricFamily{}
	for k := 1; k <= 3; k++ {
		mfs, err := c.scrape(k)
		if err != nil {
			t.Fatal(err)
		}
		final[k] = mfs
	}
	var missing []string
	for _, name := range documentedMetrics(t) {
		found := false
		for k := 1; k <= 3; k++ {
			if final[k][name] != nil {
				found = true
			}
		}
		if !found {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		var have []string
		for n := range final[1] {
			have = append(have, n)
		}
		sort.Strings(have)
		t.Fatalf("documented metrics no node serves: %v\nnode 1 serves: %s", missing, strings.Join(have, " "))
	}
}
