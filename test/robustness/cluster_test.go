package robustness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
)

var ssiBin string

func TestMain(m *testing.M) {
	if os.Getenv(burnEnv) != "" {
		burn()
		return
	}
	dir, err := os.MkdirTemp("", "ssi-robustness-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ssiBin = filepath.Join(dir, "ssi")
	// Without the race detector by default: the suite is about the
	// daemons' behaviour under faults, and five race-instrumented daemons
	// on two cores are a CPU load of their own (ROBUSTNESS_RACE=1 for it).
	args := []string{"build", "-o", ssiBin}
	if os.Getenv("ROBUSTNESS_RACE") != "" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../../cmd/ssi")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ssi:", err)
		os.Exit(1)
	}
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is an `ssi up --isolate` cluster: node k's daemon runs in the
// network namespace PREFIX-nk, joined to the bridge in PREFIX-br by the
// veth PREFIXvk.
type cluster struct {
	t      *testing.T
	dir    string
	n      int
	prefix string
	ips    map[int]string

	mu     sync.Mutex
	paused map[int]int // node -> PID stopped with SIGSTOP
	routes map[[2]int]bool
	links  map[int]bool // bridge ports set down
}

// cliResult is one CLI run.
type cliResult struct {
	Stdout, Stderr string
	Code           int  // -1: killed at the deadline (a hung client)
	Hung           bool // the deadline passed
}

// clientTimeout bounds every CLI call: one that passes it is a hung client.
const clientTimeout = 30 * time.Second

// cli runs `ssi args...` against node k's control socket.
func (c *cluster) cli(k int, args ...string) cliResult {
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ssiBin, args...)
	cmd.Env = append(os.Environ(), "SSI_SOCKET="+devcluster.Socket(c.dir, k))
	cmd.WaitDelay = time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.Code, r.Hung = -1, true
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		r.Code = -1
		r.Stderr += err.Error()
	}
	return r
}

func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the robustness suite runs an --isolate cluster (network namespaces), which needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the robustness suite needs ip (iproute2) for its namespaces")
	}
	c := &cluster{t: t, dir: t.TempDir(), n: n, ips: map[int]string{}, paused: map[int]int{},
		routes: map[[2]int]bool{}, links: map[int]bool{}}
	t.Cleanup(c.cleanup)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, ssiBin, "up", "--nodes", strconv.Itoa(n), "--isolate", "--dir", c.dir).CombinedOutput()
	if err != nil {
		t.Fatalf("ssi up --isolate: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "isolate.json"))
	if err != nil {
		t.Fatal(err)
	}
	var iso struct {
		Prefix string `json:"prefix"`
	}
	if err := json.Unmarshal(b, &iso); err != nil || iso.Prefix == "" {
		t.Fatalf("isolate.json: %v %s", err, b)
	}
	c.prefix = iso.Prefix
	rows, err := c.table(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if int(r.Num) <= n {
			c.ips[int(r.Num)] = r.IPAddr
		}
	}
	if len(c.ips) != n {
		t.Fatalf("node table after ssi up: %v", rows)
	}
	// ssi up --isolate names the address each node listens on (it once
	// printed an empty one; issue 10).
	for k := 1; k <= n; k++ {
		if want := fmt.Sprintf("(listens on %s,", c.ips[k]); !strings.Contains(string(out), want) {
			t.Errorf("ssi up --isolate does not say node %d %s...):\n%s", k, want, out)
		}
	}
	return c
}

// cleanup heals every fault and stops the cluster (ssi down removes the
// namespaces), whatever state the test left it in.
func (c *cluster) cleanup() {
	c.healAll()
	if c.t.Failed() {
		c.dumpLogs()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, ssiBin, "down", "--dir", c.dir).CombinedOutput(); err != nil {
		c.t.Logf("ssi down: %v\n%s", err, out)
	}
}

func (c *cluster) dumpLogs() {
	for k := 1; k <= c.n; k++ {
		b, _ := os.ReadFile(filepath.Join(devcluster.NodeDir(c.dir, k), "ssi.log"))
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		c.t.Logf("==== node %d's log (end)\n%s", k, b)
	}
}

// row mirrors cluster -V --json.
type row struct {
	Num    uint32 `json:"num"`
	Name   string `json:"name"`
	State  string `json:"state"`
	IPAddr string `json:"ipaddr"`
	HWAddr string `json:"hwaddr"`
	Role   string `json:"role"`
}

func (c *cluster) table(k int) ([]row, error) {
	r := c.cli(k, "cluster", "-V", "--json")
	if r.Code != 0 {
		return nil, fmt.Errorf("node %d: cluster -V: exit %d: %s", k, r.Code, strings.TrimSpace(r.Stderr))
	}
	var rows []row
	if err := json.Unmarshal([]byte(r.Stdout), &rows); err != nil {
		return nil, fmt.Errorf("node %d: cluster -V --json: %w: %q", k, err, r.Stdout)
	}
	return rows, nil
}

// leader is the node a live node names as leader, or 0.
func (c *cluster) leader() int {
	for _, k := range rand.Perm(c.n) {
		rows, err := c.table(k + 1)
		if err != nil {
			continue
		}
		for _, r := range rows {
			if r.Role == "leader" {
				return int(r.Num)
			}
		}
	}
	return 0
}

func (c *cluster) ns(k int) string   { return fmt.Sprintf("%s-n%d", c.prefix, k) }
func (c *cluster) veth(k int) string { return fmt.Sprintf("%sv%d", c.prefix, k) }

// pids are node k's processes to signal: what its PID file names (the
// namespace's init, or a daemon restarted by restart) and the daemon.
func (c *cluster) pids(k int) []int {
	var out []int
	if pid, ok := devcluster.PID(c.dir, k); ok {
		out = append(out, pid)
	}
	if d := c.daemonPID(k); d > 0 && (len(out) == 0 || out[0] != d) {
		out = append(out, d)
	}
	return out
}

// daemonPID finds node k's `ssi daemon` process by its data directory.
func (c *cluster) daemonPID(k int) int {
	want := []byte("\x00--data-dir\x00" + devcluster.NodeDir(c.dir, k) + "\x00")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, []byte("\x00daemon\x00")) && bytes.Contains(b, want) {
			return pid
		}
	}
	return 0
}

func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		return err != nil || len(tasks) <= 1
	}
	return false
}

// kill sends SIGKILL to node k and waits until its processes are gone.
func (c *cluster) kill(k int) error {
	c.mu.Lock()
	delete(c.paused, k)
	c.mu.Unlock()
	pids := c.pids(k)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, p := range pids {
		for !gone(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("node %d: process %d still there 15s after SIGKILL", k, p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// restart starts node k's daemon again in its network namespace (which
// outlives the killed init: `ip netns` holds it). Its PID, UTS and mount
// namespaces are not new ones; for this suite only the network matters.
func (c *cluster) restart(k int) error {
	dir := devcluster.NodeDir(c.dir, k)
	logf, err := os.OpenFile(filepath.Join(dir, "ssi.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", c.ns(k), ssiBin, "daemon", "--data-dir", dir,
		"--socket", devcluster.Socket(c.dir, k), "--pid-file", devcluster.PIDFile(c.dir, k), "--load-source", "jobs",
		"--cfs-mount", devcluster.MountDir(c.dir, k), "--cfs-export", devcluster.NodeExportDir(c.dir, k))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("restart node %d: %w", k, err)
	}
	// ip execs the daemon: the PID is the daemon's.
	_ = os.WriteFile(devcluster.PIDFile(c.dir, k), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	go cmd.Wait() //nolint:errcheck // reaped when it exits
	return nil
}

// pause stops node k's daemon with SIGSTOP (resume continues it).
func (c *cluster) pause(k int) error {
	pid := c.daemonPID(k)
	if pid == 0 {
		return fmt.Errorf("node %d: no daemon to pause", k)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	c.mu.Lock()
	c.paused[k] = pid
	c.mu.Unlock()
	return nil
}

func (c *cluster) resume(k int) {
	c.mu.Lock()
	pid, ok := c.paused[k]
	delete(c.paused, k)
	c.mu.Unlock()
	if ok {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
}

// drop makes node from's kernel discard what it sends to node to: a
// blackhole route in from's namespace. TCP needs both directions, so for
// a connection this is a cut; what it adds to cut is asymmetry in time
// (segments already sent still arrive) and in who notices first.
func (c *cluster) drop(from, to int) error {
	if out, err := exec.Command("ip", "-n", c.ns(from), "route", "add", "blackhole", c.ips[to]+"/32").CombinedOutput(); err != nil {
		return fmt.Errorf("drop %d->%d: %v: %s", from, to, err, out)
	}
	c.mu.Lock()
	c.routes[[2]int{from, to}] = true
	c.mu.Unlock()
	return nil
}

func (c *cluster) undrop(from, to int) {
	_ = exec.Command("ip", "-n", c.ns(from), "route", "del", "blackhole", c.ips[to]+"/32").Run()
	c.mu.Lock()
	delete(c.routes, [2]int{from, to})
	c.mu.Unlock()
}

// isolate takes node k's port on the bridge down: nothing in or out.
func (c *cluster) isolate(k int) error {
	if out, err := exec.Command("ip", "-n", c.prefix+"-br", "link", "set", c.veth(k), "down").CombinedOutput(); err != nil {
		return fmt.Errorf("isolate %d: %v: %s", k, err, out)
	}
	c.mu.Lock()
	c.links[k] = true
	c.mu.Unlock()
	return nil
}

func (c *cluster) unisolate(k int) {
	_ = exec.Command("ip", "-n", c.prefix+"-br", "link", "set", c.veth(k), "up").Run()
	c.mu.Lock()
	delete(c.links, k)
	c.mu.Unlock()
}

// healAll undoes every pause, drop and cut still in place.
func (c *cluster) healAll() {
	c.mu.Lock()
	var paused, links []int
	var routes [][2]int
	for k := range c.paused {
		paused = append(paused, k)
	}
	for k := range c.links {
		links = append(links, k)
	}
	for r := range c.routes {
		routes = append(routes, r)
	}
	c.mu.Unlock()
	for _, k := range paused {
		c.resume(k)
	}
	for _, k := range links {
		c.unisolate(k)
	}
	for _, r := range routes {
		c.undrop(r[0], r[1])
	}
}
