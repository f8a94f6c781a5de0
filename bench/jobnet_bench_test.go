package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/devcluster"
)

// netConns are the numbers of open connections measured
// (SSI_BENCH_NET_CONNS="1,16").
func netConns() []int {
	v := os.Getenv("SSI_BENCH_NET_CONNS")
	if v == "" {
		v = "1,16,64"
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// BenchmarkMigrateNet measures `migrate` of a --net job (test/netecho
// serving TCP) between nodes 2 and 3 of an --isolate cluster while a
// client on node 1 holds N connections open and keeps exchanging on each,
// next to the same program without --net and without sockets (the
// baseline, measured in the same run): the whole move and the time the
// job is frozen. The client checks every answer; a lost, repeated or reset
// byte fails the benchmark.
func BenchmarkMigrateNet(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("migration needs root")
	}
	dir := b.TempDir()
	echo := filepath.Join(dir, "netecho")
	if out, err := exec.Command("go", "build", "-o", echo, "../test/netecho").CombinedOutput(); err != nil {
		b.Fatalf("building netecho: %v\n%s", err, out)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	c, _ := up(b, 3, "--isolate")
	n := trials(6)
	moves := func(cpid int64) (total, frozen, dump, restore stats) {
		ctl := devcluster.Client(c.dir, 1)
		for i := range n {
			to := "3"
			if i%2 == 1 {
				to = "2"
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			resp, err := ctl.Migrate(ctx, connect.NewRequest(&ssiv1.MigrateRequest{Cpid: cpid, Node: to}))
			cancel()
			if err != nil {
				b.Fatalf("migrate %d to node %s: %v", cpid, to, err)
			}
			total = append(total, time.Duration(resp.Msg.Phases.TotalUs)*time.Microsecond)
			frozen = append(frozen, time.Duration(resp.Msg.Phases.FreezeUs)*time.Microsecond)
			dump = append(dump, time.Duration(resp.Msg.Phases.DumpUs)*time.Microsecond)
			restore = append(restore, time.Duration(resp.Msg.Phases.RestoreUs)*time.Microsecond)
		}
		return total, frozen, dump, restore
	}
	phases := func(what string, dump, restore stats) {
		fmt.Printf("%-44s dump %8.1f ms   restore %8.1f ms (medians)\n", what, ms(dump.pct(50)), ms(restore.pct(50)))
	}
	start := func(args ...string) int64 {
		out, err := c.ssiCmd(context.Background(), 1, append([]string{"run", "-d", "-n", "2"}, args...)...).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, ee.Stderr)
			}
			b.Fatalf("starting %v: %v", args, err)
		}
		cpid, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		waitListening(b, c, cpid)
		return cpid
	}

	plain := start(echo, "idle")
	baseTotal, baseFrozen, baseDump, baseRestore := moves(plain)
	baseTotal.report(b, "baseline: migrate, no --net (whole move)")
	baseFrozen.report(b, "baseline: migrate, no --net (frozen)")
	phases("baseline: migrate, no --net (phases)", baseDump, baseRestore)
	c.ssiCmd(context.Background(), 1, "kill", "-9", strconv.FormatInt(plain, 10)).Run()

	for _, conns := range netConns() {
		cpid := start("--net", echo, "serve", ":7000")
		ip := netAddrOf(b, c, cpid)
		cl := startNetClient(b, c, echo, ip+":7000", conns, cpid)
		cl.wait(b, 10*conns)
		total, frozen, dump, restore := moves(cpid)
		cl.wait(b, 10*conns)
		cl.stop(b)
		total.report(b, fmt.Sprintf("migrate --net, %d connections (whole move)", conns))
		frozen.report(b, fmt.Sprintf("migrate --net, %d connections (frozen)", conns))
		phases(fmt.Sprintf("migrate --net, %d connections (phases)", conns), dump, restore)
		ratio(b, fmt.Sprintf("ratio --net/%d conns / baseline, whole move", conns), "", float64(total.pct(50))/float64(baseTotal.pct(50)))
		ratio(b, fmt.Sprintf("ratio --net/%d conns / baseline, frozen", conns), "", float64(frozen.pct(50))/float64(baseFrozen.pct(50)))
		c.ssiCmd(context.Background(), 1, "kill", "-9", strconv.FormatInt(cpid, 10)).Run()
	}
}

// waitListening waits until netecho job cpid has said "listening".
func waitListening(b *testing.B, c *cluster, cpid int64) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		out, _ := c.ssiCmd(context.Background(), 1, "logs", strconv.FormatInt(cpid, 10)).Output()
		if strings.HasPrefix(string(out), "listening") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("job %d did not start", cpid)
}

// netAddrOf is the address job cpid holds (ssi net --json).
func netAddrOf(b *testing.B, c *cluster, cpid int64) string {
	b.Helper()
	out, err := c.ssiCmd(context.Background(), 1, "net", "--json").Output()
	if err != nil {
		b.Fatalf("ssi net: %v", err)
	}
	var l struct {
		Addrs []struct {
			IP   string `json:"ip"`
			CPID int64  `json:"cpid"`
		} `json:"addrs"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		b.Fatal(err)
	}
	for _, a := range l.Addrs {
		if a.CPID == cpid {
			return a.IP
		}
	}
	b.Fatalf("process %d holds no address: %s", cpid, out)
	return ""
}

// netClient is netecho client, pinned on node 1, exchanging on held
// connections.
type netClient struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	logs func() string // the server's log, for a failure's message
}

func startNetClient(b *testing.B, c *cluster, echo, addr string, conns int, server int64) *netClient {
	b.Helper()
	cmd := c.ssiCmd(context.Background(), 1, "onnode", "-p", "1", echo, "client", addr, strconv.Itoa(conns))
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	logs := func() string {
		out, _ := c.ssiCmd(context.Background(), 1, "logs", strconv.FormatInt(server, 10)).CombinedOutput()
		return string(out)
	}
	return &netClient{cmd: cmd, in: in, out: bufio.NewScanner(out), logs: logs}
}

func (n *netClient) ask(b *testing.B, what string) string {
	b.Helper()
	fmt.Fprintln(n.in, what)
	if !n.out.Scan() {
		b.Fatalf("the client ended: %v", n.out.Err())
	}
	return n.out.Text()
}

// wait waits until the client has made k more exchanges.
func (n *netClient) wait(b *testing.B, k int) {
	b.Helper()
	count := func() int {
		s := n.ask(b, "count")
		v, err := strconv.Atoi(s)
		if err != nil {
			b.Fatalf("the client: %s\nthe server's log:\n%s", s, n.logs())
		}
		return v
	}
	base := count()
	deadline := time.Now().Add(time.Minute)
	for count() < base+k {
		if time.Now().After(deadline) {
			b.Fatalf("the client made fewer than %d exchanges in a minute", k)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *netClient) stop(b *testing.B) {
	b.Helper()
	if got := n.ask(b, "stop"); !strings.HasPrefix(got, "ok ") {
		b.Fatalf("the connections across the moves: %s\nthe server's log:\n%s", got, n.logs())
	}
}
