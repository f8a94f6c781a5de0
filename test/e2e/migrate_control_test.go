package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// ssi node expel sends a node's jobs to the least-loaded other nodes (a
// pinned one stays, and says why: exit 1), and clusternode_shutdown
// --drain empties the node before it leaves: no job is killed, each goes
// on exactly elsewhere.
func TestExpelAndDrain(t *testing.T) {
	c := migrateCluster(t)
	stop := stopFile(t)
	var jobs []string
	for range 3 {
		jobs = append(jobs, strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", counter(stop, 9, ""))))
	}
	pinned := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-p", "-n", "2", "sleep", "60"))
	for _, j := range jobs {
		Eventually(t, 10*time.Second, func() string {
			if l := logLines(c, 1, j); len(l) < 3 {
				return j + " has not started"
			}
			return ""
		})
	}
	r := c.CLI(1, "ssi", "node", "expel", "2")
	if r.Code != 1 || !strings.Contains(r.Stderr, "process "+pinned+" stays on node 2") || !strings.Contains(r.Stderr, "pinned") {
		t.Errorf("expel: %v; want exit 1 naming the pinned job", r)
	}
	moved := map[string]bool{}
	for _, j := range jobs {
		w := strings.TrimSpace(c.MustCLI(1, "where_pid", j))
		if w == "2" || !strings.Contains(r.Stdout, "process "+j+" moved to node "+w) {
			t.Errorf("%s is on node %q after expel:\n%v", j, w, r)
		}
		moved[w] = true
	}
	if len(moved) < 2 {
		t.Errorf("the three jobs all went to node(s) %v: placement should spread them", moved)
	}
	c.MustCLI(1, "ssi", "kill", "-9", pinned)
	// A new job there, then the node leaves without killing it.
	late := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", counter(stop, 9, "")))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, late); len(l) < 3 {
			return late + " has not started"
		}
		return ""
	})
	if r := c.CLI(1, "clusternode_shutdown", "--drain", "2"); r.Code != 0 || !strings.Contains(r.Stdout, "process "+late+" moved to node") {
		t.Fatalf("clusternode_shutdown --drain 2: %v", r)
	}
	c.WaitState([]int{1, 3}, 2, "DOWN", 10*time.Second)
	stopNow(t, stop)
	for _, j := range append(jobs, late) {
		counted(t, c, j, 3)
		if r := c.CLI(1, "ssi", "wait", j); r.Code != 9 {
			t.Errorf("ssi wait %s: %v; want 9", j, r)
		}
	}
}

// With load leveling off nothing moves; turned on, three CPU-bound jobs
// started on one node spread over the three nodes, and stay put once
// balanced.
func TestLoadLeveling(t *testing.T) {
	c := migrateCluster(t)
	var jobs []string
	for range 3 {
		jobs = append(jobs, strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", "while :; do :; done")))
	}
	t.Cleanup(func() {
		for _, j := range jobs {
			c.CLI(1, "ssi", "kill", "-9", j)
		}
	})
	where := func() []string {
		var out []string
		for _, j := range jobs {
			out = append(out, strings.TrimSpace(c.MustCLI(1, "where_pid", j)))
		}
		return out
	}
	if out := c.MustCLI(1, "loadlevel"); !strings.Contains(out, "off for the cluster") {
		t.Errorf("loadlevel: %q; want off by default", out)
	}
	time.Sleep(5 * time.Second) // the leader looks every 2 s: nothing must move while off
	if w := where(); strings.Join(w, " ") != "2 2 2" {
		t.Fatalf("with leveling off the jobs moved: %v", w)
	}
	if out := c.MustCLI(1, "loadlevel", "-a", "on"); !strings.Contains(out, "on for the cluster") {
		t.Errorf("loadlevel -a on: %q", out)
	}
	Eventually(t, 90*time.Second, func() string {
		w := where()
		seen := map[string]bool{}
		for _, n := range w {
			seen[n] = true
		}
		if len(seen) != 3 {
			return fmt.Sprintf("the jobs are on nodes %v", w)
		}
		return ""
	})
	balanced := where()
	if ev := c.MustCLI(1, "cluster", "--events"); strings.Count(ev, "(load leveling)") != 2 {
		t.Errorf("cluster --events should show the leveler's two moves:\n%s", ev)
	}
	time.Sleep(10 * time.Second)
	if w := where(); strings.Join(w, " ") != strings.Join(balanced, " ") {
		t.Errorf("balanced on %v, then moved again to %v", balanced, w)
	}
	if r := c.CLI(1, "loadlevel", "-n", "2", "maybe"); r.Code != 2 {
		t.Errorf("loadlevel -n 2 maybe: %v; want a usage error", r)
	}
	if out := c.MustCLI(1, "loadlevel", "-n", "2", "off"); !strings.Contains(out, "node 2: off") {
		t.Errorf("loadlevel -n 2 off: %q", out)
	}
}

// A blocked node takes no new jobs: onnode and migrate to it are refused
// (exit 1), ssi run never places a job there; its own jobs may still move
// away; unblocked, it takes jobs again.
func TestBlockNode(t *testing.T) {
	c := migrateCluster(t)
	mine := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "3", "sleep", "60"))
	if out := c.MustCLI(1, "ssi", "node", "block", "3"); !strings.Contains(out, "node 3 is blocked") {
		t.Errorf("ssi node block 3: %q", out)
	}
	// Node 2 learns it through the log: at once, or a moment later.
	Eventually(t, 5*time.Second, func() string {
		if r := c.CLI(2, "onnode", "3", "true"); r.Code != 1 || !strings.Contains(r.Stderr, "blocked") {
			return fmt.Sprintf("onnode 3 true on a blocked node: %v", r)
		}
		return ""
	})
	other := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sleep", "60"))
	if r := c.CLI(1, "migrate", other, "3"); r.Code != 1 || !strings.Contains(r.Stderr, "blocked") {
		t.Errorf("migrate to a blocked node: %v", r)
	}
	for i := range 6 {
		cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "true"))
		if w := c.CLI(1, "where_pid", cpid); strings.TrimSpace(w.Stdout) == "3" || strings.HasPrefix(cpid, "3") {
			t.Errorf("run %d: placed %s on the blocked node 3", i, cpid)
		}
	}
	// Its own job may still leave.
	c.MustCLI(1, "migrate", mine, "1")
	c.MustCLI(1, "ssi", "node", "unblock", "3")
	Eventually(t, 5*time.Second, func() string {
		if r := c.CLI(2, "onnode", "3", "true"); r.Code != 0 {
			return fmt.Sprintf("onnode 3 true after unblock: %v", r)
		}
		return ""
	})
	if r := c.CLI(1, "ssi", "node", "block", "9"); r.Code != 1 {
		t.Errorf("block an unknown node: %v", r)
	}
	for _, j := range []string{mine, other} {
		c.CLI(1, "ssi", "kill", "-9", j)
	}
}

// A job started with --nodes runs on those nodes only, and stays there
// through every move: migrate elsewhere is refused, expel sends it to
// another node of its mask.
func TestNodeMask(t *testing.T) {
	c := migrateCluster(t)
	var jobs []string
	for range 4 {
		cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "--nodes", "2,3", "sleep", "60"))
		jobs = append(jobs, cpid)
		if w := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); w != "2" && w != "3" {
			t.Errorf("%s placed on node %s, outside --nodes 2,3", cpid, w)
		}
	}
	t.Cleanup(func() {
		for _, j := range jobs {
			c.CLI(1, "ssi", "kill", "-9", j)
		}
	})
	if r := c.CLI(1, "ssi", "run", "-d", "-n", "1", "--nodes", "2,3", "true"); r.Code != 2 {
		t.Errorf("-n 1 with --nodes 2,3: %v; want a usage error", r)
	}
	if r := c.CLI(1, "ssi", "run", "-d", "--nodes", "2,x", "true"); r.Code != 2 {
		t.Errorf("--nodes 2,x: %v; want a usage error", r)
	}
	var on2 string
	for _, j := range jobs {
		if strings.TrimSpace(c.MustCLI(1, "where_pid", j)) == "2" {
			on2 = j
			break
		}
	}
	if on2 == "" {
		c.MustCLI(1, "migrate", jobs[0], "2")
		on2 = jobs[0]
	}
	if r := c.CLI(1, "migrate", on2, "1"); r.Code != 1 || !strings.Contains(r.Stderr, "may run only on nodes [2 3]") {
		t.Errorf("migrate outside the mask: %v", r)
	}
	r := c.CLI(1, "ssi", "node", "expel", "2")
	if r.Code != 0 {
		t.Fatalf("expel 2: %v", r)
	}
	for _, j := range jobs {
		if w := strings.TrimSpace(c.MustCLI(1, "where_pid", j)); w != "3" {
			t.Errorf("after expel 2, %s is on node %s; want 3, the only other node of its mask", j, w)
		}
	}
}
