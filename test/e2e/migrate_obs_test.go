package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/sys/unix"

	dto "github.com/prometheus/client_model/go"
)

// scrapeIsolated reads node k's /metrics from inside its network namespace
// (an --isolate node serves them on its own 127.0.0.1).
func (c *Cluster) scrapeIsolated(t *testing.T, k int) map[string]*dto.MetricFamily {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", c.isolatedNS(t, k), "busybox", "wget", "-q", "-O", "-", fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)).Output()
	if err != nil {
		t.Fatalf("node %d: wget /metrics in its namespace: %v", k, err)
	}
	mfs, err := parseMetrics(strings.NewReader(string(out)))
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

// isolatedNS is the network namespace of an --isolate cluster's node k.
func (c *Cluster) isolatedNS(t *testing.T, k int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Dir, "isolate.json"))
	if err != nil {
		t.Fatal(err)
	}
	var iso struct{ Prefix string }
	if err := json.Unmarshal(b, &iso); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s-n%d", iso.Prefix, k)
}

// forwardInto listens on a host loopback port and forwards every
// connection to target as dialled from inside network namespace ns (a
// thread of this process enters it for the dial only), so that a browser
// on the host reaches an isolated node's dashboard.
func forwardInto(t *testing.T, ns, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dial := func() (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			// This thread changes namespace and is never given back to the
			// scheduler (it ends with the goroutine): no other goroutine
			// ever runs in the node's namespace.
			runtime.LockOSThread()
			f, err := os.Open("/run/netns/" + ns)
			if err != nil {
				ch <- res{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- res{nil, err}
				return
			}
			c, err := net.DialTimeout("tcp", target, 5*time.Second)
			ch <- res{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dial()
				if err != nil {
					t.Logf("forward into %s: %v", ns, err)
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// The dashboard's migrate button moves a running job (on an --isolate
// cluster, through a forward into node 1's namespace): the table shows it
// on its new node and the timeline the migration, without a reload.
func TestDashboardMigrateButton(t *testing.T) {
	c := migrateCluster(t)
	b := newBrowser(t)
	addr := forwardInto(t, c.isolatedNS(t, 1), fmt.Sprintf("127.0.0.1:%d", webPort))
	admin := strings.TrimSpace(c.MustCLI(1, "ssi", "dashboard", "token"))
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", "while :; do sleep 0.1; done"))
	ctx := b.tab(t)
	row := css(`#procs tr[data-cpid="%s"]`, cpid)
	b.run(t, ctx, "sign in", chromedp.Navigate("http://"+addr+"/#token="+admin), chromedp.WaitVisible(row),
		chromedp.WaitVisible(css(`.card[data-node="3"][data-state="UP"]`)))
	if n := eval[string](t, b, ctx, fmt.Sprintf(`document.querySelector('%s').children[1].textContent`, row)); n != "2" {
		t.Fatalf("the table shows %s on node %q, want 2", cpid, n)
	}
	// Choose node 3 in the row's list and press migrate.
	eval[string](t, b, ctx, fmt.Sprintf(`(() => { const s = document.querySelector('%s select.target'); s.value = '3'; return s.value })()`, row))
	b.run(t, ctx, "press migrate", chromedp.Click(css(`#procs tr[data-cpid="%s"] button.migrate`, cpid)),
		func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			return chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.querySelector('#banner').textContent.includes('%s moved from node 2 to node 3')`, cpid))(ctx, tg)
		},
		func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(document.querySelector('%s') || {children: [0, {}]}).children[1].textContent === '3'`, row))(ctx, tg)
		},
		chromedp.WaitVisible(css(`#timeline li[data-kind="migration"][data-node="3"]`)))
	if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != "3" {
		t.Fatalf("where_pid %s: %q after the migrate button, want 3", cpid, got)
	}
	b.shot(t, ctx, "migrated")
}
