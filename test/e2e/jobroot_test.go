package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

// populateRoot puts a userland in the cluster root: busybox (and the
// libraries it needs) as sh, cat, ls and hostname, and an /etc/hostname.
func populateRoot(t *testing.T, root string) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox")
	}
	copyFile := func(src, dst string) {
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(bb, filepath.Join(root, "bin", "busybox"))
	out, _ := exec.Command("ldd", bb).Output() // a static busybox needs nothing
	for _, l := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(l) {
			if strings.HasPrefix(f, "/") {
				copyFile(f, filepath.Join(root, f))
			}
		}
	}
	for _, name := range []string{"sh", "cat", "ls", "hostname", "test"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("shared\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Jobs whose / is the cluster root (the cluster setting, ssi cfs jobroot
// on): on an isolated cluster each sees its node's name in the CDSL
// /etc/hostname, the node's /proc, and what a job on another node wrote;
// with the setting off, jobs have their node's own / again.
func TestJobRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the cluster filesystem mounts FUSE: needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("--isolate needs iproute2")
	}
	const n = 3
	// The cluster as StartCluster makes it, with the root populated first.
	c := &Cluster{t: t, Dir: t.TempDir(), BaseIP: randomBase(), N: n}
	populateRoot(t, devcluster.ExportDir(c.Dir))
	r := run(t, nil, "", "ssi", "up", "--nodes", strconv.Itoa(n), "--dir", c.Dir, "--base-ip", c.BaseIP, "--isolate")
	t.Cleanup(func() {
		run(t, nil, "", "ssi", "down", "--dir", c.Dir)
		if t.Failed() {
			c.dumpLogs()
		}
	})
	if r.Code != 0 {
		t.Fatalf("ssi up failed: %v", r)
	}
	sh := func(k int, script string) result {
		t.Helper()
		return c.CLI(k, "ssi", "onnode", strconv.Itoa(k), "sh", "-c", script)
	}
	mustSh := func(k int, script string) string {
		t.Helper()
		r := sh(k, script)
		if r.Code != 0 {
			t.Fatalf("node %d: %s: %v", k, script, r)
		}
		return r.Stdout
	}
	if r := c.CLI(2, "ssi", "cfs", "jobroot", "maybe"); r.Code != 2 {
		t.Fatalf("ssi cfs jobroot maybe: %v", r)
	}
	if r := c.CLI(1, "ssi", "cfs", "jobroot", "on"); r.Code != 0 {
		t.Fatalf("ssi cfs jobroot on: %v", r)
	}
	// A job's / is the cluster root with the node's /proc in it, once the
	// node has mounted it and bound its trees in.
	for k := 1; k <= n; k++ {
		Eventually(t, 20*time.Second, func() string {
			if r := sh(k, "test -x /bin/busybox && ls /proc/1 >/dev/null && ls /dev/null"); r.Code != 0 {
				return fmt.Sprintf("node %d: no job with the cluster root as / yet: %v", k, r)
			}
			return ""
		})
	}
	for k := 1; k <= n; k++ {
		if out := mustSh(k, "ls /; test -e /usr || echo no-usr"); !strings.Contains(out, "no-usr") || !strings.Contains(out, "proc\n") {
			t.Fatalf("node %d: a job's / is not the cluster root: %q", k, out)
		}
		if out := mustSh(k, "ls /proc/1; cat /proc/self/status"); !strings.Contains(out, "exe") || !strings.Contains(out, "NSpid:") {
			t.Fatalf("node %d: /proc in a job whose / is the cluster root: %q", k, out)
		}
	}

	// /etc/hostname made a CDSL (in node 2's mount namespace, where its
	// mount is), each node writes its own copy: every node reads its name.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(c.PID(2)), "-m", "-p", ssiBin, "mklocalfile", "--socket", c.Socket(2),
		devcluster.MountDir(c.Dir, 2)+"/etc/hostname").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "copies for nodes 1 2 3") {
		t.Fatalf("mklocalfile: %q %v", out, err)
	}
	for k := 1; k <= n; k++ {
		mustSh(k, "hostname > /etc/hostname")
	}
	for k := 1; k <= n; k++ {
		if got := mustSh(k, "cat /etc/hostname"); got != fmt.Sprintf("demo%d\n", k) {
			t.Fatalf("node %d: a job reads %q in /etc/hostname, want demo%d", k, got, k)
		}
	}

	// What a job on node 2 writes at /data a job on node 3 reads there.
	mustSh(2, "echo written on node 2 > /data")
	if got := mustSh(3, "cat /data"); got != "written on node 2\n" {
		t.Fatalf("node 3 reads %q at /data", got)
	}
	if b, err := os.ReadFile(filepath.Join(devcluster.ExportDir(c.Dir), "data")); err != nil || string(b) != "written on node 2\n" {
		t.Fatalf("the export holds %q (%v)", b, err)
	}
	// The binds are the nodes' own, on their mounts: the export's
	// directories stay empty.
	for _, d := range []string{"proc", "dev", "sys", "run"} {
		ents, err := os.ReadDir(filepath.Join(devcluster.ExportDir(c.Dir), d))
		if err != nil || len(ents) != 0 {
			t.Errorf("the export's /%s: %d entries, %v; want an empty directory", d, len(ents), err)
		}
	}

	// Off: jobs get their node's own / again, on every node.
	if r := c.CLI(3, "ssi", "cfs", "jobroot", "off"); r.Code != 0 {
		t.Fatalf("ssi cfs jobroot off: %v", r)
	}
	for k := 1; k <= n; k++ {
		Eventually(t, 20*time.Second, func() string {
			if r := sh(k, "test -d /usr && test ! -e /data"); r.Code != 0 {
				return fmt.Sprintf("node %d: a job's / is still the cluster root: %v", k, r)
			}
			return ""
		})
	}
	if r := c.CLI(2, "ssi", "cfs", "--json"); !strings.Contains(strings.Join(strings.Fields(r.Stdout), ""), `"job_root":false,"node_job_root":false`) {
		t.Errorf("ssi cfs --json after jobroot off: %v", r)
	}
}
