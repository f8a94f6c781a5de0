package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/devcluster"
	"github.com/ssi-cluster/ssi/internal/migrate"
)

// migSizes are the job sizes measured (MiB; SSI_BENCH_MIG_MB="1,10,100").
func migSizes() []int {
	v := os.Getenv("SSI_BENCH_MIG_MB")
	if v == "" {
		v = "1,10,100,1000"
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// buildMemhog builds the benchmark's job (bench/testdata/memhog).
func buildMemhog(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "memhog")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/memhog").CombinedOutput(); err != nil {
		b.Fatalf("building memhog: %v\n%s", err, out)
	}
	// The nodes run it by path: readable by all.
	if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
		b.Fatal(err)
	}
	return bin
}

// BenchmarkMigrate measures `migrate` of a job holding 1, 10, 100 and 1000
// MiB between two nodes of an --isolate cluster, pre-copy (the memory
// copied while frozen) and post-copy (the pages follow the thawed job): the
// whole move and the time the job is frozen, next to the floor in the same
// run (a bare criu dump and restore of the same program on tmpfs, on one
// node, no network), and the transfer and page rates next to loopback
// TCP's. Post-copy needs fs.pipe-max-size >= 4 MiB (scripts/deps.sh).
func BenchmarkMigrate(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("migration needs root")
	}
	criu, err := migrate.FindCRIU("")
	if err != nil {
		b.Fatal(err)
	}
	hog := buildMemhog(b)
	c, _ := up(b, 3, "--isolate")
	ctl := devcluster.Client(c.dir, 1)
	n := trials(3)
	tcp := loopbackTCP(b, 512<<20)
	fmt.Printf("%-44s %8.1f MB/s\n", "baseline: loopback TCP, one stream", tcp)
	for _, mb := range migSizes() {
		floorDump, floorRestore := criuFloor(b, criu, hog, mb)
		fmt.Printf("%-44s dump %8.1f ms   restore %8.1f ms   total %8.1f ms\n", fmt.Sprintf("floor: criu dump+restore on tmpfs, %d MiB", mb), ms(floorDump), ms(floorRestore), ms(floorDump+floorRestore))
		out, err := c.ssiCmd(context.Background(), 1, "run", "-d", "-n", "2", hog, strconv.Itoa(mb)).Output()
		if err != nil {
			b.Fatalf("starting the job: %v", err)
		}
		cpid, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		waitReady(b, c, cpid)
		pre := moveTrials(b, ctl, cpid, mb, n, false)
		pre.total.report(b, fmt.Sprintf("migrate, %d MiB job (whole move)", mb))
		pre.frozen.report(b, fmt.Sprintf("migrate, %d MiB job (frozen)", mb))
		pre.phases(fmt.Sprintf("migrate, %d MiB job (frozen: phases)", mb))
		rate := float64(pre.bytes) / 1e6 / pre.xfer.pct(50).Seconds()
		fmt.Printf("%-44s %8.1f MB/s (%.1f MB sent)\n", fmt.Sprintf("migrate, %d MiB job (transfer)", mb), rate, float64(pre.bytes)/1e6)
		ratio(b, fmt.Sprintf("ratio migrate / criu floor, %d MiB (median)", mb), "", float64(pre.total.pct(50))/float64(floorDump+floorRestore))
		ratio(b, fmt.Sprintf("ratio transfer / loopback TCP, %d MiB", mb), "", rate/tcp)
		post := moveTrials(b, ctl, cpid, mb, n, true)
		post.total.report(b, fmt.Sprintf("post-copy, %d MiB job (whole move)", mb))
		post.frozen.report(b, fmt.Sprintf("post-copy, %d MiB job (frozen)", mb))
		post.phases(fmt.Sprintf("post-copy, %d MiB job (frozen: phases)", mb))
		post.pages.report(b, fmt.Sprintf("post-copy, %d MiB job (pages after thaw)", mb))
		pageRate := float64(mb<<20) / 1e6 / post.pages.pct(50).Seconds()
		fmt.Printf("%-44s %8.1f MB/s\n", fmt.Sprintf("post-copy, %d MiB job (page rate)", mb), pageRate)
		ratio(b, fmt.Sprintf("ratio post-copy frozen / pre-copy frozen, %d MiB", mb), "", float64(post.frozen.pct(50))/float64(pre.frozen.pct(50)))
		ratio(b, fmt.Sprintf("ratio post-copy frozen / criu floor, %d MiB", mb), "", float64(post.frozen.pct(50))/float64(floorDump+floorRestore))
		ratio(b, fmt.Sprintf("ratio page rate / loopback TCP, %d MiB", mb), "", pageRate/tcp)
		c.ssiCmd(context.Background(), 1, "kill", "-9", strconv.FormatInt(cpid, 10)).Run()
	}
}

// moves are the figures of n moves of one job, between nodes 2 and 3.
type moves struct {
	total, frozen, xfer, pages stats
	dump, restore              stats
	bytes                      int64
}

// phases prints where the frozen time of the moves went (medians).
func (r moves) phases(what string) {
	fmt.Printf("%-44s dump %8.1f ms   transfer %8.1f ms   restore %8.1f ms   commit+thaw %8.1f ms\n", what,
		ms(r.dump.pct(50)), ms(r.xfer.pct(50)), ms(r.restore.pct(50)), ms(r.frozen.pct(50)-r.dump.pct(50)-r.xfer.pct(50)-r.restore.pct(50)))
}

// moveTrials moves job cpid n times (node 3, 2, 3, ...; it runs on node 2),
// with post-copy or without.
func moveTrials(b *testing.B, ctl ssiv1connect.ControlClient, cpid int64, mb, n int, post bool) moves {
	b.Helper()
	var r moves
	for i := range n {
		to := "3"
		if i%2 == 1 {
			to = "2"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		resp, err := ctl.Migrate(ctx, connect.NewRequest(&ssiv1.MigrateRequest{Cpid: cpid, Node: to, Postcopy: post, Precopy: !post}))
		cancel()
		if err != nil {
			b.Fatalf("migrate %d MiB to node %s (post-copy %v): %v", mb, to, post, err)
		}
		ph := resp.Msg.Phases
		if ph.Postcopy != post {
			b.Fatalf("migrate %d MiB: post-copy %v, asked %v", mb, ph.Postcopy, post)
		}
		us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
		r.total = append(r.total, us(ph.TotalUs))
		r.frozen = append(r.frozen, us(ph.FreezeUs))
		r.xfer = append(r.xfer, us(ph.TransferUs))
		r.dump = append(r.dump, us(ph.DumpUs))
		r.restore = append(r.restore, us(ph.RestoreUs))
		r.pages = append(r.pages, us(ph.PagesUs))
		r.bytes = ph.Bytes
	}
	if n%2 == 1 {
		// Back on node 2, where the next trials start.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := ctl.Migrate(ctx, connect.NewRequest(&ssiv1.MigrateRequest{Cpid: cpid, Node: "2"})); err != nil {
			b.Fatalf("migrate %d MiB back to node 2: %v", mb, err)
		}
	}
	return r
}

// waitReady waits until the job has printed its first counter line.
func waitReady(b *testing.B, c *cluster, cpid int64) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		out, _ := c.ssiCmd(context.Background(), 1, "logs", strconv.FormatInt(cpid, 10)).Output()
		if strings.Count(string(out), "\n") >= 2 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("job %d did not start", cpid)
}

// criuFloor dumps and restores the same program with the bare criu, on
// tmpfs (/dev/shm), in a PID namespace of its own as ssi's jobs run: the
// least a migration can cost on this machine.
func criuFloor(b *testing.B, criu, hog string, mb int) (dump, restore time.Duration) {
	b.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "ssi-bench-criu-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// The job's output goes to a file only the job writes (what unshare
	// says when its child dies would change the file CRIU saw).
	cmd := exec.Command("unshare", "-pf", "setsid", "sh", "-c", `exec "$0" "$1" >"$2" 2>&1`, hog, strconv.Itoa(mb), filepath.Join(dir, "out"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var pid int
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		st, _ := os.ReadFile(filepath.Join(dir, "out"))
		if f := strings.Fields(string(kids)); len(f) == 1 && strings.Count(string(st), "\n") >= 2 {
			pid, _ = strconv.Atoi(f[0])
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pid == 0 {
		b.Fatal("the floor's job did not start")
	}
	img := filepath.Join(dir, "img")
	os.Mkdir(img, 0o700)
	t := time.Now()
	if out, err := exec.Command(criu, "dump", "-t", strconv.Itoa(pid), "-D", img, "--network-lock", "skip", "-o", "dump.log").CombinedOutput(); err != nil {
		b.Fatalf("criu dump: %v\n%s", err, out)
	}
	dump = time.Since(t)
	t = time.Now()
	r := exec.Command(criu, "restore", "-D", img, "--restore-detached", "--pidfile", filepath.Join(dir, "pid"), "-o", "restore.log")
	if err := r.Run(); err != nil {
		b.Fatalf("criu restore: %v (log %s)", err, filepath.Join(img, "restore.log"))
	}
	restore = time.Since(t)
	if p, err := os.ReadFile(filepath.Join(dir, "pid")); err == nil {
		if rp, _ := strconv.Atoi(strings.TrimSpace(string(p))); rp > 0 {
			_ = syscall.Kill(rp, syscall.SIGKILL)
		}
	}
	return dump, restore
}

// loopbackTCP is the rate (MB/s) of one TCP stream over 127.0.0.1.
func loopbackTCP(b *testing.B, size int64) float64 {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.CopyN(conn, zeros{}, size)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	t := time.Now()
	n, _ := io.Copy(io.Discard, conn)
	return float64(n) / 1e6 / time.Since(t).Seconds()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
