package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeIsolated reads node k's /metrics from inside its network namespace
// (an --isolate node serves them on its own 127.0.0.1).
func (c *Cluster) scrapeIsolated(t *testing.T, k int) map[string]*dto.MetricFamily {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Dir, "isolate.json"))
	if err != nil {
		t.Fatal(err)
	}
	var iso struct{ Prefix string }
	if err := json.Unmarshal(b, &iso); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", fmt.Sprintf("%s-n%d", iso.Prefix, k), "busybox", "wget", "-q", "-O", "-", fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)).Output()
	if err != nil {
		t.Fatalf("node %d: wget /metrics in its namespace: %v", k, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// A migration shows in the source node's migration metrics (count,
// duration, bytes) and in ssi events as a migration event with its process
// and both nodes; a refused one counts as refused.
func TestMigrationMetricsAndEvents(t *testing.T) {
	c := migrateCluster(t)
	ok := map[string]string{"why": "migrate", "result": "ok"}
	refused := map[string]string{"why": "migrate", "result": "refused"}
	m0 := c.scrapeIsolated(t, 2)
	ok0, _ := value(m0["ssi_migrations_total"], ok)
	ref0, _ := value(m0["ssi_migrations_total"], refused)
	bytes0, _ := value(m0["ssi_migration_bytes_total"], nil)

	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sleep", "300"))
	pinned := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-p", "-n", "2", "sleep", "300"))
	Eventually(t, 10*time.Second, func() string {
		if r := c.CLI(1, "migrate", cpid, "3"); r.Code != 0 {
			return r.String()
		}
		return ""
	})
	if r := c.CLI(1, "migrate", pinned, "3"); r.Code != 1 {
		t.Fatalf("migrating a pinned job: %v", r)
	}

	m := c.scrapeIsolated(t, 2)
	if v, _ := value(m["ssi_migrations_total"], ok); v != ok0+1 {
		t.Errorf("node 2: ssi_migrations_total{why=migrate,result=ok} %v -> %v, want one more", ok0, v)
	}
	if v, _ := value(m["ssi_migrations_total"], refused); v != ref0+1 {
		t.Errorf("node 2: ssi_migrations_total{why=migrate,result=refused} %v -> %v, want one more", ref0, v)
	}
	if v, _ := value(m["ssi_migration_bytes_total"], nil); v <= bytes0 {
		t.Errorf("node 2: ssi_migration_bytes_total %v -> %v", bytes0, v)
	}
	if v, _ := value(m["ssi_migration_duration_seconds"], map[string]string{"why": "migrate"}); v < 1 {
		t.Errorf("node 2: no migration duration observed")
	}
	if v, _ := value(c.scrapeIsolated(t, 3)["ssi_migrations_total"], ok); v != 0 {
		t.Errorf("node 3, the target, counts %v migrations out", v)
	}

	var found bool
	for _, line := range strings.Split(strings.TrimSpace(c.MustCLI(1, "ssi", "events", "--json")), "\n") {
		var e struct {
			Kind     string `json:"kind"`
			Node     uint32 `json:"node"`
			CPID     int64  `json:"cpid"`
			FromNode uint32 `json:"from_node"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if e.Kind == "migration" && fmt.Sprint(e.CPID) == cpid && e.Node == 3 && e.FromNode == 2 {
			found = true
		}
	}
	if !found {
		t.Fatalf("ssi events has no migration of %s from node 2 to 3:\n%s", cpid, c.MustCLI(1, "ssi", "events"))
	}
	if out := c.MustCLI(3, "ssi", "events", "-n", "1"); !strings.Contains(out, "migration") || !strings.Contains(out, cpid) {
		t.Fatalf("ssi events -n 1 on node 3: %q", out)
	}
}
