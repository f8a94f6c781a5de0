package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// With --isolate every node runs as PID 1's child in its own UTS, PID,
// mount and network namespace, with its own hostname and address on a
// private bridge; the cluster works across that network, a killed node is
// detected, and ssi down removes every namespace.
func TestIsolatedCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("--isolate needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("--isolate needs iproute2")
	}
	// A FUSE mount of another process's, made before the cluster: the
	// nodes' namespaces must not keep it, or its unmount (and its
	// daemon's exit) would wait until the cluster ends.
	hostMount := t.TempDir()
	fuseSrv, err := fs.Mount(hostMount, &fs.Inode{}, &fs.Options{MountOptions: fuse.MountOptions{DirectMount: true, DirectMountStrict: true, FsName: "e2e-host"}})
	if err != nil {
		t.Fatalf("a FUSE mount for the test: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			syscall.Unmount(hostMount, syscall.MNT_DETACH)
		}
	}()
	c := StartCluster(t, 3, "--isolate")
	ns, raw := c.Nodes(1)
	for k := uint32(1); k <= 3; k++ {
		if ns[k].State != "UP" || !strings.HasPrefix(ns[k].IPAddr, "10.") {
			t.Fatalf("isolated cluster table: %s", raw)
		}
	}
	for k := 1; k <= 3; k++ {
		pid := c.PID(k)
		out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-u", "hostname").Output()
		if err != nil || strings.TrimSpace(string(out)) != fmt.Sprintf("demo%d", k) {
			t.Errorf("node %d hostname %q (%v)", k, out, err)
		}
		// The node's init is PID 1 of its own PID namespace.
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if !strings.Contains(string(st), fmt.Sprintf("NSpid:\t%d\t1\n", pid)) {
			t.Errorf("node %d's init is not PID 1 of a namespace of its own:\n%s", k, st)
		}
		self, _ := os.Readlink("/proc/self/ns/net")
		theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if self == theirs || theirs == "" {
			t.Errorf("node %d shares the test's network namespace", k)
		}
	}
	for k := 1; k <= 3; k++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.PID(k)))
		if strings.Contains(string(b), " "+hostMount+" ") {
			t.Errorf("node %d's namespace keeps the host's FUSE mount %s", k, hostMount)
		}
	}
	unmounted := make(chan error, 1)
	go func() { unmounted <- fuseSrv.Unmount() }()
	select {
	case err := <-unmounted:
		if err != nil {
			t.Fatalf("unmounting the host's FUSE mount: %v", err)
		}
		mounted = false
	case <-time.After(30 * time.Second):
		t.Fatal("the host's FUSE mount could not be unmounted while the cluster runs: a node's namespace holds it")
	}
	// And the nodes' own mounts (their /proc) stay in their namespaces.
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Count(string(b), " /proc ") > 1 {
		t.Errorf("a node's /proc reached the host's mount table:\n%s", b)
	}
	c.Kill(2)
	c.WaitState([]int{1, 3}, 2, "DOWN", 10*time.Second)

	prefix := isolatePrefix(t, c.Dir)
	if r := run(t, nil, "", "ssi", "down", "--dir", c.Dir); r.Code != 0 {
		t.Fatalf("down: %v", r)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), prefix) {
		t.Errorf("namespaces left behind:\n%s", out)
	}
}

func isolatePrefix(t *testing.T, dir string) string {
	b, err := os.ReadFile(dir + "/isolate.json")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, `"prefix":"`)
	if i < 0 {
		t.Fatalf("isolate.json: %s", s)
	}
	rest := s[i+len(`"prefix":"`):]
	return rest[:strings.IndexByte(rest, '"')]
}

// cutOff blocks traffic between node k of an --isolate cluster of n nodes
// and the others (blackhole routes both ways in their namespaces, for the
// nodes' addresses .0.K of subnet); the returned function heals it (the
// test's cleanup does too). Clients on the bridge still reach node k.
func cutOff(t *testing.T, prefix string, subnet netip.Prefix, k, n int) (heal func()) {
	t.Helper()
	host := func(j int) string {
		a := subnet.Addr().As4()
		a[2], a[3] = 0, byte(j)
		return netip.AddrFrom4(a).String()
	}
	var undo [][]string
	route := func(from, to int) {
		args := []string{"-n", fmt.Sprintf("%s-n%d", prefix, from), "route", "add", "blackhole", host(to) + "/32"}
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		del := append([]string{}, args...)
		del[3] = "del"
		undo = append(undo, del)
	}
	for o := 1; o <= n; o++ {
		if o != k {
			route(k, o)
			route(o, k)
		}
	}
	healed := false
	heal = func() {
		if healed {
			return
		}
		healed = true
		for _, args := range undo {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Errorf("ip %v: %v: %s", args, err, out)
			}
		}
	}
	t.Cleanup(heal)
	return heal
}
