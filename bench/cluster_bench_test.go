// Package bench holds benchmarks that start real ssi daemons and print
// figures (median, p99) for docs/PERFORMANCE.md. They assert nothing about
// time: run them with `make bench` (go test -bench . -benchtime 1x ./bench/).
package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/devcluster"
)

var ssiBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ssi-bench-bin")
	if err != nil {
		panic(err)
	}
	ssiBin = filepath.Join(dir, "ssi")
	if out, err := exec.Command("go", "build", "-o", ssiBin, "../cmd/ssi").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type cluster struct {
	b    *testing.B
	dir  string
	base string
	n    int
}

func randomBase() string { return fmt.Sprintf("127.%d.%d.1", 100+rand.IntN(150), 1+rand.IntN(250)) }

func ssi(args ...string) (string, error) {
	out, err := exec.Command(ssiBin, args...).CombinedOutput()
	return string(out), err
}

func up(b *testing.B, n int, extra ...string) (*cluster, time.Duration) {
	b.Helper()
	c := &cluster{b: b, dir: b.TempDir(), base: randomBase(), n: n}
	start := time.Now()
	args := append([]string{"up", "--nodes", strconv.Itoa(n), "--dir", c.dir, "--base-ip", c.base}, extra...)
	if out, err := ssi(args...); err != nil {
		ssi("down", "--dir", c.dir)
		b.Fatalf("ssi up: %v\n%s", err, out)
	}
	d := time.Since(start)
	b.Cleanup(func() { ssi("down", "--dir", c.dir) })
	return c, d
}

func (c *cluster) down() { ssi("down", "--dir", c.dir) }

func (c *cluster) ip(k int) string {
	p := strings.Split(c.base, ".")
	last, _ := strconv.Atoi(p[3])
	return fmt.Sprintf("%s.%s.%s.%d", p[0], p[1], p[2], last+k-1)
}

func (c *cluster) status(ctx context.Context, k int) (*ssiv1.StatusResponse, error) {
	resp, err := devcluster.Client(c.dir, k).Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func stateOf(st *ssiv1.StatusResponse, num uint32) string {
	for _, n := range st.Nodes {
		if n.Num == num {
			return n.State.Label()
		}
	}
	return ""
}

// waitAll polls the viewers every 2ms until each reports num in want,
// returning when the last one does.
func (c *cluster) waitAll(viewers []int, num uint32, want string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(viewers))
	for i, v := range viewers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if st, err := c.status(ctx, v); err == nil && stateOf(st, num) == want {
					return
				}
				select {
				case <-ctx.Done():
					errs[i] = fmt.Errorf("node %d never saw node %d %s", v, num, want)
					return
				case <-time.After(2 * time.Millisecond):
				}
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func (c *cluster) pid(k int) int {
	pid, ok := devcluster.PID(c.dir, k)
	if !ok {
		c.b.Fatalf("node %d is not running", k)
	}
	return pid
}

func (c *cluster) kill(k int) {
	pid := c.pid(k)
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 500; i++ {
		if _, ok := devcluster.PID(c.dir, k); !ok {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (c *cluster) restart(k int) {
	dir := devcluster.NodeDir(c.dir, k)
	logf, _ := os.OpenFile(filepath.Join(dir, "ssi.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	defer logf.Close()
	cmd := exec.Command(ssiBin, "daemon", "--data-dir", dir, "--socket", devcluster.Socket(c.dir, k), "--pid-file", devcluster.PIDFile(c.dir, k),
		"--cfs-mount", devcluster.MountDir(c.dir, k), "--cfs-export", devcluster.NodeExportDir(c.dir, k))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		c.b.Fatal(err)
	}
	os.WriteFile(devcluster.PIDFile(c.dir, k), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	go cmd.Wait()
}

func (c *cluster) leader(via int) int {
	st, err := c.status(context.Background(), via)
	if err != nil {
		c.b.Fatal(err)
	}
	return int(st.LeaderNum)
}

type stats []time.Duration

func (s stats) pct(p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := append(stats(nil), s...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	i := int(p/100*float64(len(c))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(c) {
		i = len(c) - 1
	}
	return c[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (s stats) report(b *testing.B, what string) {
	fmt.Printf("%-44s n=%-4d median %8.1f ms   p99 %8.1f ms   max %8.1f ms\n", what, len(s), ms(s.pct(50)), ms(s.pct(99)), ms(s.pct(100)))
	b.ReportMetric(ms(s.pct(50)), "median-ms")
	b.ReportMetric(ms(s.pct(99)), "p99-ms")
}

func trials(def int) int {
	if v, err := strconv.Atoi(os.Getenv("SSI_BENCH_TRIALS")); err == nil && v > 0 {
		return v
	}
	return def
}

// Time for `ssi up --nodes 3` to return with every node UP.
func BenchmarkForm3NodeCluster(b *testing.B) {
	var s stats
	for i := 0; i < trials(5); i++ {
		c, d := up(b, 3)
		s = append(s, d)
		c.down()
	}
	s.report(b, "form a 3-node cluster (ssi up --nodes 3)")
}

// Time from ssi-addnode to the new node UP on node 1: addnode, join, start.
func BenchmarkJoinOneNode(b *testing.B) {
	c, _ := up(b, 3)
	var s stats
	for i := 0; i < trials(5); i++ {
		k := 4 + i
		mac := fmt.Sprintf("0a:00:00:00:44:%02x", k)
		start := time.Now()
		out, err := ssi("ssi-addnode", "--socket", devcluster.Socket(c.dir, 1), "--hwaddr", mac, "--ipaddr", c.ip(k), "--nodenum", strconv.Itoa(k))
		if err != nil {
			b.Fatalf("addnode: %v %s", err, out)
		}
		token := strings.Fields(out)[6]
		if out, err := ssi("join", "--server", c.ip(2), "--token", token, "--hwaddr", mac, "--data-dir", devcluster.NodeDir(c.dir, k)); err != nil {
			b.Fatalf("join: %v %s", err, out)
		}
		c.restart(k)
		if err := c.waitAll([]int{1}, uint32(k), "UP", 30*time.Second); err != nil {
			b.Fatal(err)
		}
		s = append(s, time.Since(start))
	}
	s.report(b, "join one node (addnode+join+daemon -> UP)")
}

// kill -9 of a non-leader until every survivor reports it DOWN.
func BenchmarkFailureDetection(b *testing.B) {
	c, _ := up(b, 4)
	var s stats
	for i := 0; i < trials(12); i++ {
		leader := c.leader(1)
		victim := 1 + rand.IntN(4)
		for victim == leader {
			victim = 1 + rand.IntN(4)
		}
		var survivors []int
		for k := 1; k <= 4; k++ {
			if k != victim {
				survivors = append(survivors, k)
			}
		}
		start := time.Now()
		c.kill(victim)
		if err := c.waitAll(survivors, uint32(victim), "DOWN", 30*time.Second); err != nil {
			b.Fatal(err)
		}
		s = append(s, time.Since(start))
		c.restart(victim)
		if err := c.waitAll(survivors, uint32(victim), "UP", 30*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	s.report(b, "failure detection (kill -9 -> DOWN on all)")
}

// kill -9 of the leader: until a survivor accepts a write, and until every
// survivor reports the old leader DOWN.
func BenchmarkLeaderFailover(b *testing.B) {
	c, _ := up(b, 3)
	var write, down stats
	for i := 0; i < trials(10); i++ {
		leader := c.leader(1 + i%3)
		if leader == 0 {
			b.Fatal("no leader")
		}
		var survivors []int
		for k := 1; k <= 3; k++ {
			if k != leader {
				survivors = append(survivors, k)
			}
		}
		start := time.Now()
		c.kill(leader)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			_, err := devcluster.Client(c.dir, survivors[0]).IssueToken(ctx, connect.NewRequest(&ssiv1.TokenRequest{Num: uint32(leader)}))
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("no write after leader loss: %v", err)
			}
		}
		cancel()
		write = append(write, time.Since(start))
		if err := c.waitAll(survivors, uint32(leader), "DOWN", 30*time.Second); err != nil {
			b.Fatal(err)
		}
		down = append(down, time.Since(start))
		c.restart(leader)
		if err := c.waitAll(survivors, uint32(leader), "UP", 30*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	write.report(b, "leader failover: kill -9 -> write accepted")
	down.report(b, "leader failover: kill -9 -> DOWN on all")
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

func cpuTicks(pids []int) int {
	t := 0
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		u, _ := strconv.Atoi(f[11])
		sy, _ := strconv.Atoi(f[12])
		t += u + sy
	}
	return t
}

// cluster -V on a large local cluster (OpenSSI's maximum, 125 nodes, by
// default): latency through the CLI against a local baseline (the same
// binary printing its help, no daemon involved), latency of the RPC alone,
// memory per daemon and the idle CPU cost of the whole cluster.
func BenchmarkClusterV125(b *testing.B) {
	n := 125
	if v, err := strconv.Atoi(os.Getenv("SSI_BENCH_NODES")); err == nil && v > 0 {
		n = v
	}
	// Timings for a cluster this size on 2 cores (see docs/PERFORMANCE.md).
	c, form := up(b, n, "--raft-timeout", "2s", "--heartbeat-interval", "500ms", "--failure-timeout", "3s", "--timeout", "10m")
	fmt.Printf("%-44s %.1f s\n", fmt.Sprintf("form a %d-node cluster", n), form.Seconds())
	time.Sleep(10 * time.Second) // settle
	var pids []int
	rss, maxRSS := 0, 0
	for k := 1; k <= n; k++ {
		p := c.pid(k)
		pids = append(pids, p)
		r := rssKiB(p)
		rss += r
		maxRSS = max(maxRSS, r)
	}
	t0 := cpuTicks(pids)
	time.Sleep(5 * time.Second)
	idle := float64(cpuTicks(pids)-t0) / 5 // ticks/s = % of one core at 100 Hz
	fmt.Printf("%-44s avg %.1f MiB, max %.1f MiB, total %.0f MiB\n", "memory per daemon (RSS)", float64(rss)/float64(n)/1024, float64(maxRSS)/1024, float64(rss)/1024)
	fmt.Printf("%-44s %.0f%% of one core for all %d daemons\n", "idle CPU of the cluster", idle, n)
	b.ReportMetric(float64(rss)/float64(n)/1024, "MiB/daemon")

	var base, cli, rpc stats
	for i := 0; i < trials(50); i++ {
		k := 1 + rand.IntN(n)
		t := time.Now()
		exec.Command(ssiBin, "help").Run()
		base = append(base, time.Since(t))
		t = time.Now()
		cmd := exec.Command(ssiBin, "cluster", "-V")
		cmd.Env = append(os.Environ(), "SSI_SOCKET="+devcluster.Socket(c.dir, k))
		out, err := cmd.Output()
		if err != nil || strings.Count(string(out), "\n") != n+2 {
			b.Fatalf("cluster -V on node %d: %v\n%s", k, err, out)
		}
		cli = append(cli, time.Since(t))
	}
	for i := 0; i < trials(50)*4; i++ {
		k := 1 + rand.IntN(n)
		t := time.Now()
		if _, err := c.status(context.Background(), k); err != nil {
			b.Fatal(err)
		}
		rpc = append(rpc, time.Since(t))
	}
	base.report(b, "baseline: ssi help (process start, no daemon)")
	cli.report(b, fmt.Sprintf("cluster -V on a %d-node cluster (CLI)", n))
	rpc.report(b, fmt.Sprintf("Status RPC on a %d-node cluster", n))
	fmt.Printf("%-44s %.2f\n", "ratio cluster -V / baseline (median)", float64(cli.pct(50))/float64(base.pct(50)))
}
