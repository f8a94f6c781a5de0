package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

// cfsCluster is a cluster whose nodes have mounted the cluster filesystem.
type cfsCluster struct {
	*Cluster
	n int
}

func (c cfsCluster) mnt(k int) string { return devcluster.MountDir(c.Dir, k) }

// sh runs a shell script as a job on node k (in its namespaces, where its
// mount is), asked through node k's own daemon.
func (c cfsCluster) sh(k int, script string) result {
	c.t.Helper()
	return c.CLI(k, "ssi", "onnode", strconv.Itoa(k), "sh", "-c", script)
}

func (c cfsCluster) mustSh(k int, script string) string {
	c.t.Helper()
	r := c.sh(k, script)
	if r.Code != 0 {
		c.t.Fatalf("node %d: %s: %v", k, script, r)
	}
	return r.Stdout
}

func startCFS(t *testing.T, n int, extra ...string) cfsCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the cluster filesystem mounts FUSE: needs root (CI runs as root)")
	}
	c := cfsCluster{StartCluster(t, n, extra...), n}
	for k := 1; k <= n; k++ {
		Eventually(t, 20*time.Second, func() string {
			r := c.sh(k, fmt.Sprintf("awk '$5 == %q' /proc/self/mountinfo | grep -q fuse.cfs && ls %s >/dev/null", c.mnt(k), c.mnt(k)))
			if r.Code != 0 {
				return fmt.Sprintf("node %d has not mounted the cluster filesystem at %s: %v", k, c.mnt(k), r)
			}
			return ""
		})
	}
	return c
}

// One root for the whole cluster, on nodes with namespaces of their own:
// what one node writes the others read at once, renames and unlinks racing
// on two nodes leave one consistent tree, a lock taken on one node holds
// on another until its node dies, and a CDSL gives each node its own file.
func TestClusterFilesystem(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("--isolate needs iproute2")
	}
	c := startCFS(t, 3, "--isolate")
	m := c.mnt

	// A file written on node 2 is read identically on nodes 3 and 1.
	sum := c.mustSh(2, fmt.Sprintf("head -c 3000000 /dev/urandom > %s/data && sha256sum < %s/data", m(2), m(2)))
	for _, k := range []int{3, 1} {
		if got := c.mustSh(k, "sha256sum < "+m(k)+"/data"); got != sum {
			t.Fatalf("node %d reads another file: %s, node 2 wrote %s", k, got, sum)
		}
	}
	// A file node 3 has cached is seen changed right after node 2's write.
	for i := range 5 {
		c.mustSh(3, "cat "+m(3)+"/data >/dev/null; stat -c %s "+m(3)+"/data")
		c.mustSh(2, fmt.Sprintf("echo round %d > %s/data", i, m(2)))
		if got := c.mustSh(3, "cat "+m(3)+"/data"); got != fmt.Sprintf("round %d\n", i) {
			t.Fatalf("round %d: node 3 reads %q after node 2's write", i, got)
		}
	}

	// Renames and unlinks racing on two nodes leave a tree every node and
	// the server's disk agree on, each file whole.
	c.mustSh(2, "mkdir -p "+m(2)+"/race")
	var wg sync.WaitGroup
	for _, k := range []int{2, 3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := m(k) + "/race"
			c.mustSh(k, fmt.Sprintf(`i=0; while [ $i -lt 150 ]; do
				echo "n%d-$i" > %s/t.%d && mv %s/t.%d %s/f$((i %% 7)) && rm -f %s/f$(((i+3) %% 7)); i=$((i+1)); done`,
				k, d, k, d, k, d, d))
		}()
	}
	wg.Wait()
	list := "cd %s/race && for f in *; do printf '%%s=%%s\\n' \"$f\" \"$(cat \"$f\")\"; done"
	want := c.mustSh(1, fmt.Sprintf(list, m(1)))
	for _, k := range []int{2, 3} {
		if got := c.mustSh(k, fmt.Sprintf(list, m(k))); got != want {
			t.Fatalf("node %d sees the tree\n%s\nnode 1 sees\n%s", k, got, want)
		}
	}
	disk, err := exec.Command("sh", "-c", fmt.Sprintf(list, devcluster.ExportDir(c.Dir))).Output()
	if err != nil || string(disk) != want {
		t.Fatalf("the server's disk holds\n%s(%v)\nthe nodes see\n%s", disk, err, want)
	}
	for _, l := range strings.Split(strings.TrimSpace(want), "\n") {
		if l != "" && !strings.Contains(l, "=n") {
			t.Fatalf("a torn file after the race: %q", l)
		}
	}

	// A CDSL: one copy per node, each node reads its own.
	c.mustSh(2, "mkdir -p "+m(2)+"/etc && echo shared > "+m(2)+"/etc/hostname")
	out := c.mustSh(2, fmt.Sprintf("%s mklocalfile --socket %s %s/etc/hostname", ssiBin, c.Socket(2), m(2)))
	if !strings.Contains(out, "copies for nodes 1 2 3") {
		t.Fatalf("mklocalfile: %q", out)
	}
	for k := 1; k <= 3; k++ {
		c.mustSh(k, "hostname > "+m(k)+"/etc/hostname")
	}
	for k := 1; k <= 3; k++ {
		if got := c.mustSh(k, "cat "+m(k)+"/etc/hostname"); got != fmt.Sprintf("demo%d\n", k) {
			t.Fatalf("node %d reads %q through the CDSL", k, got)
		}
	}
	if l, err := os.Readlink(filepath.Join(devcluster.ExportDir(c.Dir), "etc/hostname")); err != nil || l != ".hostname.cdsl/node{nodenum}" {
		t.Fatalf("the CDSL on disk: %q %v", l, err)
	}
	if r := c.sh(1, fmt.Sprintf("%s mkglobalfile --socket %s --from 3 %s/etc/hostname", ssiBin, c.Socket(1), m(1))); r.Code != 0 {
		t.Fatalf("mkglobalfile: %v", r)
	}
	for k := 1; k <= 3; k++ {
		if got := c.mustSh(k, "cat "+m(k)+"/etc/hostname"); got != "demo3\n" {
			t.Fatalf("node %d reads %q after mkglobalfile --from 3", k, got)
		}
	}
	if r := c.sh(1, fmt.Sprintf("%s mklocalfile --socket %s /tmp", ssiBin, c.Socket(1))); r.Code != 1 || !strings.Contains(r.Stderr, "not on the cluster filesystem") {
		t.Fatalf("mklocalfile off the cluster filesystem: %v", r)
	}

	// A lock held on node 2 blocks node 3, and goes with node 2.
	c.mustSh(2, "touch "+m(2)+"/lock")
	holder := c.CLI(2, "ssi", "run", "-d", "-n", "2", "flock", "-x", m(2)+"/lock", "sleep", "600")
	if holder.Code != 0 {
		t.Fatalf("start the lock holder: %v", holder)
	}
	Eventually(t, 10*time.Second, func() string {
		if r := c.sh(3, "flock -n -x "+m(3)+"/lock true"); r.Code == 0 {
			return "node 3 took the lock node 2's job holds"
		}
		return ""
	})
	if r := c.sh(1, "flock -n -s "+m(1)+"/lock true"); r.Code == 0 {
		t.Fatal("node 1 took a shared lock beside node 2's exclusive one")
	}
	c.Kill(2)
	start := time.Now()
	if r := c.sh(3, "flock -w 30 -x "+m(3)+"/lock echo got it"); r.Code != 0 || r.Stdout != "got it\n" {
		t.Fatalf("node 3 after node 2 died: %v", r)
	}
	t.Logf("node 3 got the lock %v after node 2 was killed", time.Since(start).Round(time.Millisecond))
}

// Without a replica, a node whose server is gone gets EIO within the
// failure-detection time instead of hanging, and carries on when the
// server is back.
func TestClusterFilesystemServerLoss(t *testing.T) {
	c := startCFS(t, 3)
	m := c.mnt
	c.mustSh(2, "echo kept > "+m(2)+"/f && sync "+m(2)+"/f")
	c.Kill(1)
	c.WaitState([]int{2, 3}, 1, "DOWN", 15*time.Second)
	start := time.Now()
	// A name node 2 never looked up must reach the server.
	r := c.sh(2, "cat "+m(2)+"/never-seen")
	took := time.Since(start)
	if r.Code == 0 || !strings.Contains(r.Stderr, "Input/output error") {
		t.Fatalf("a read without the server: %v", r)
	}
	if took > 20*time.Second {
		t.Fatalf("the read failed only after %v", took)
	}
	t.Logf("EIO after %v", took.Round(time.Millisecond))
	c.StartDaemon(1)
	c.WaitState([]int{1, 2, 3}, 1, "UP", 30*time.Second)
	Eventually(t, 20*time.Second, func() string {
		if r := c.sh(2, "cat "+m(2)+"/f"); r.Stdout != "kept\n" {
			return fmt.Sprintf("node 2 after the server came back: %v", r)
		}
		return ""
	})
}

// With a replica, the serving node is killed while a job on another node
// writes and fsyncs: the replica takes over, the job's writes go on, and
// no byte acknowledged by fsync is lost. The old server, back, becomes the
// replica and is brought up to date.
func TestClusterFilesystemFailover(t *testing.T) {
	c := startCFS(t, 3)
	m := c.mnt
	if r := c.CLI(1, "ssi", "cfs", "replica", "9"); r.Code != 1 || !strings.Contains(r.Stderr, "node 9") {
		t.Fatalf("an unknown replica: %v", r)
	}
	if r := c.CLI(1, "ssi", "cfs", "replica", "1"); r.Code == 0 || !strings.Contains(r.Stderr, "serves") {
		t.Fatalf("the server as its own replica: %v", r)
	}
	if r := c.CLI(1, "ssi", "cfs", "replica", "2"); r.Code != 0 {
		t.Fatalf("ssi cfs replica 2: %v", r)
	}
	waitCFS := func(k int, want string) {
		t.Helper()
		Eventually(t, 30*time.Second, func() string {
			r := c.CLI(k, "ssi", "cfs", "--json")
			if r.Code != 0 || !strings.Contains(strings.Join(strings.Fields(r.Stdout), ""), want) {
				return fmt.Sprintf("node %d: ssi cfs --json: %v; want %s", k, r, want)
			}
			return ""
		})
	}
	waitCFS(3, `"server":1,"replica":2,"synced":true`)
	c.mustSh(3, "echo before > "+m(3)+"/before && sync "+m(3)+"/before")

	// 16-byte records at their own offsets, each fsync'd (conv=fsync)
	// before the job prints its number: a printed number is acknowledged.
	const records = 400
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do i=$((i+1)); printf 'record %%08d\n' $i | dd of=%s/log bs=16 seek=$((i-1)) conv=notrunc,fsync status=none 2>/dev/null && echo $i; sleep 0.02; done`, records, m(3))
	done := make(chan result, 1)
	go func() { done <- c.sh(3, script) }()
	time.Sleep(3 * time.Second)
	c.Kill(1)
	killed := time.Now()
	w := <-done
	acked := strings.Fields(w.Stdout)
	t.Logf("the writer: %d of %d records acknowledged; killed after 3s; it ended %v after the kill", len(acked), records, time.Since(killed).Round(time.Millisecond))
	if w.Code != 0 || len(acked) < 100 {
		t.Fatalf("the writer: %v", w)
	}
	waitCFS(3, `"server":2,"replica":1,"synced":false,"failovers":1`)

	// Every acknowledged record is there, read through node 3's mount and
	// on node 2's disk; records after the kill were acknowledged too.
	check := func(what string, b []byte) {
		t.Helper()
		for _, a := range acked {
			i, _ := strconv.Atoi(a)
			want := fmt.Sprintf("record %08d\n", i)
			if len(b) < 16*i || string(b[16*(i-1):16*i]) != want {
				t.Fatalf("%s: acknowledged record %d is lost", what, i)
			}
		}
	}
	check("node 3's mount", []byte(c.mustSh(3, "cat "+m(3)+"/log")))
	disk, err := os.ReadFile(filepath.Join(devcluster.NodeExportDir(c.Dir, 2), "log"))
	if err != nil {
		t.Fatal(err)
	}
	check("node 2's disk", disk)
	if last, _ := strconv.Atoi(acked[len(acked)-1]); last != records {
		t.Errorf("the writer's last acknowledged record is %d of %d: writes did not go on after the failover", last, records)
	}
	if got := c.mustSh(2, "cat "+m(2)+"/before"); got != "before\n" {
		t.Errorf("a file written before the failover, read on the new server: %q", got)
	}

	// The old server comes back as the replica and gets everything.
	c.StartDaemon(1)
	c.WaitState([]int{1, 2, 3}, 1, "UP", 30*time.Second)
	waitCFS(1, `"server":2,"replica":1,"synced":true`)
	b, err := os.ReadFile(filepath.Join(devcluster.ExportDir(c.Dir), "log"))
	if err != nil || !bytes.Equal(b, disk) {
		t.Fatalf("node 1's copy after it came back: %d bytes (%v), node 2 has %d", len(b), err, len(disk))
	}
	c.mustSh(1, "echo after > "+m(1)+"/after")
	Eventually(t, 5*time.Second, func() string {
		if b, _ := os.ReadFile(filepath.Join(devcluster.ExportDir(c.Dir), "after")); string(b) != "after\n" {
			return "a change after the resync did not reach the replica"
		}
		return ""
	})
}
