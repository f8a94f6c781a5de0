package bench

// Benchmarks of the single process space (issue 3): onnode latency, onall
// fan-out, stream throughput and detached job starts, each printed next to
// a local baseline measured in the same run. Like the cluster benchmarks
// they print and assert nothing about time; they fail only on wrong
// results (an exit status that is not 0, a byte count or checksum that does
// not match).

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
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
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/devcluster"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// cmdLimit bounds every single command a benchmark runs.
const cmdLimit = time.Minute

// loopBudget bounds every measuring loop: past it the loop stops early and
// says so (the figures are then over fewer runs).
const loopBudget = 10 * time.Minute

// budget tells a loop whether it may run another iteration.
type budget struct {
	what  string
	until time.Time
	said  bool
}

func newBudget(what string) *budget { return &budget{what: what, until: time.Now().Add(loopBudget)} }

func (bg *budget) ok(done int) bool {
	if time.Now().Before(bg.until) {
		return true
	}
	if !bg.said {
		fmt.Printf("%s: time budget (%v) used up after %d runs\n", bg.what, loopBudget, done)
		bg.said = true
	}
	return false
}

// reportAs prints s like stats.report and reports its median and p99
// under units of its own (report's units would overwrite each other).
func (s stats) reportAs(b *testing.B, what, unit string) {
	fmt.Printf("%-44s n=%-4d median %8.2f ms   p99 %8.2f ms   max %8.2f ms\n", what, len(s), ms2(s.pct(50)), ms2(s.pct(99)), ms2(s.pct(100)))
	b.ReportMetric(ms2(s.pct(50)), unit+"-median-ms")
	b.ReportMetric(ms2(s.pct(99)), unit+"-p99-ms")
}

func ms2(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func ratio(b *testing.B, what, unit string, x float64) {
	fmt.Printf("%-44s %.2f\n", what, x)
	if unit != "" {
		b.ReportMetric(x, unit)
	}
}

// ssiCmd is the ssi CLI talking to node k's daemon, bounded by ctx.
func (c *cluster) ssiCmd(ctx context.Context, k int, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, ssiBin, args...)
	cmd.Env = append(os.Environ(), "SSI_SOCKET="+devcluster.Socket(c.dir, k))
	return cmd
}

// runCLI runs the CLI through node k and returns its wall time and stdout;
// anything but exit 0 fails the benchmark.
func (c *cluster) runCLI(b *testing.B, k int, args ...string) (time.Duration, string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
	defer cancel()
	cmd := c.ssiCmd(ctx, k, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t := time.Now()
	err := cmd.Run()
	d := time.Since(t)
	if err != nil {
		b.Fatalf("ssi %s (via node %d): %v\n%s%s", strings.Join(args, " "), k, err, out.Bytes(), errb.Bytes())
	}
	return d, out.String()
}

// forkExec runs a local command to completion (the baseline) and returns
// its wall time.
func forkExec(b *testing.B, argv ...string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
	defer cancel()
	t := time.Now()
	if err := exec.CommandContext(ctx, argv[0], argv[1:]...).Run(); err != nil {
		b.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return time.Since(t)
}

// execRPC runs spec through a control client (in this process, no CLI) and
// returns the exit code, or for a detached job the cluster PID it got.
func execRPC(cl ssiv1connect.ControlClient, spec *ssiv1.ExecSpec) (code int32, cpid int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
	defer cancel()
	st := cl.Exec(ctx)
	defer st.CloseResponse()
	if err := st.Send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_Start{Start: spec}}); err != nil && !errors.Is(err, io.EOF) {
		return 0, 0, err
	}
	if !spec.Detach {
		if err := st.Send(&ssiv1.ExecInput{Msg: &ssiv1.ExecInput_StdinEof{StdinEof: true}}); err != nil && !errors.Is(err, io.EOF) {
			return 0, 0, err
		}
	}
	defer st.CloseRequest()
	for {
		m, err := st.Receive()
		if err != nil {
			return 0, cpid, err
		}
		switch v := m.Msg.(type) {
		case *ssiv1.ExecOutput_Started:
			cpid = v.Started.Cpid
			if spec.Detach {
				return 0, cpid, nil
			}
		case *ssiv1.ExecOutput_Exit:
			return v.Exit.Code, cpid, nil
		case *ssiv1.ExecOutput_Error:
			return v.Error.ExitCode, cpid, errors.New(v.Error.Message)
		}
	}
}

// execSpec is what the CLI would send for argv on node (0: least loaded).
func execSpec(node uint32, detach bool, argv ...string) *ssiv1.ExecSpec {
	dir, _ := os.Getwd()
	return &ssiv1.ExecSpec{Argv: argv, Env: os.Environ(), Dir: dir, Node: node, Detach: detach}
}

// ---- ssh with a ControlMaster, as the reference ----

// sshd is a private sshd on a loopback port with a throw-away host key and
// client key; the system's sshd configuration is not used or changed. Its
// sessions get an empty HOME, so that the remote shell (`bash -c true`)
// reads no rc files: the figure is ssh's own cost, not that of whatever the
// account's ~/.bashrc runs.
type sshd struct {
	dir     string
	port    int
	cmd     *exec.Cmd
	exited  chan struct{}
	madeRun bool
}

func startSSHD() (*sshd, error) {
	bin := "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s not installed (apt-get install -y openssh-server openssh-client)", bin)
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		return nil, errors.New("no ssh client (apt-get install -y openssh-client)")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("sshd needs root for privilege separation")
	}
	dir, err := os.MkdirTemp("", "ssi-bench-sshd")
	if err != nil {
		return nil, err
	}
	s := &sshd{dir: dir}
	fail := func(err error) (*sshd, error) { s.stop(); return nil, err }
	for _, k := range []string{"host_key", "id"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("ssh-keygen: %v %s", err, out))
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id.pub"))
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "home"), 0o700); err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxSessions 64
SetEnv HOME=%s
`, s.port, filepath.Join(dir, "host_key"), filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "authorized_keys"), filepath.Join(dir, "home"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		return fail(err)
	}
	if _, err := os.Stat("/run/sshd"); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return fail(fmt.Errorf("create the privilege separation directory: %w", err))
		}
		s.madeRun = true
	}
	s.cmd = exec.Command(bin, "-D", "-f", filepath.Join(dir, "sshd_config"), "-E", filepath.Join(dir, "sshd.log"))
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return fail(err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			return fail(fmt.Errorf("sshd exited: %s", strings.TrimSpace(string(log))))
		case <-time.After(20 * time.Millisecond):
		}
		if i > 250 {
			return fail(errors.New("sshd did not listen within 5s"))
		}
	}
	// Open the master connection (not measured) and check it works and
	// that the session has the empty HOME.
	if out, err := s.run("echo", "$HOME"); err != nil || strings.TrimSpace(string(out)) != filepath.Join(dir, "home") {
		return fail(fmt.Errorf("ssh to 127.0.0.1:%d: %v %q", s.port, err, out))
	}
	return s, nil
}

// args is the ssh command line that runs cmd (or, with ssh options first,
// controls the master) through the master connection.
func (s *sshd) args(cmd ...string) []string {
	a := []string{"ssh", "-p", strconv.Itoa(s.port), "-i", filepath.Join(s.dir, "id"),
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-o", "ControlMaster=auto", "-o", "ControlPath=" + filepath.Join(s.dir, "cm"), "-o", "ControlPersist=600"}
	i := 0
	for i < len(cmd) && strings.HasPrefix(cmd[i], "-") {
		i++
	}
	a = append(a, cmd[:i]...)
	a = append(a, "root@127.0.0.1")
	return append(a, cmd[i:]...)
}

func (s *sshd) run(cmd ...string) ([]byte, error) {
	if len(cmd) == 0 {
		cmd = []string{"true"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
	defer cancel()
	a := s.args(cmd...)
	return exec.CommandContext(ctx, a[0], a[1:]...).CombinedOutput()
}

func (s *sshd) stop() {
	if s.cmd != nil {
		// -O exit ends the master (and its sshd session process).
		a := s.args("-Oexit")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		exec.CommandContext(ctx, a[0], a[1:]...).Run()
		cancel()
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if s.madeRun {
		os.Remove("/run/sshd")
	}
	os.RemoveAll(s.dir)
}

// ---- 1. onnode latency ----

// `onnode 2 true` from node 1 (one hop between daemons) through the CLI,
// against local fork+exec of /bin/true, the CLI's own start (ssi help), the
// control RPC alone (to node 2 and to node 1 itself), and ssh through a
// ControlMaster to localhost, all interleaved in the same loop.
func BenchmarkOnnodeLatency(b *testing.B) {
	c, _ := up(b, 3)
	ssh, err := startSSHD()
	if err != nil {
		fmt.Printf("ssh: skipped (%v)\n", err)
	} else {
		defer ssh.stop()
	}
	cl := devcluster.Client(c.dir, 1)
	rpc := func(node uint32) time.Duration {
		t := time.Now()
		code, _, err := execRPC(cl, execSpec(node, false, "true"))
		d := time.Since(t)
		if err != nil || code != 0 {
			b.Fatalf("Exec RPC of true on node %d: exit %d, %v", node, code, err)
		}
		return d
	}
	// Warm up: connections, page cache, the daemons' first job.
	for i := 0; i < 5; i++ {
		forkExec(b, "/bin/true")
		c.runCLI(b, 1, "onnode", "2", "true")
		rpc(1)
		rpc(2)
	}
	var local, help, cli, cliPin, cliSelf, rpc2, rpc1, sshT stats
	n := trials(200)
	bg := newBudget("onnode latency")
	for i := 0; i < n && bg.ok(i); i++ {
		local = append(local, forkExec(b, "/bin/true"))
		d, _ := c.runCLI(b, 1, "help")
		help = append(help, d)
		d, out := c.runCLI(b, 1, "onnode", "2", "true")
		if out != "" {
			b.Fatalf("onnode 2 true printed %q", out)
		}
		cli = append(cli, d)
		d, _ = c.runCLI(b, 1, "onnode", "-p", "2", "true")
		cliPin = append(cliPin, d)
		d, _ = c.runCLI(b, 1, "onnode", "1", "true")
		cliSelf = append(cliSelf, d)
		rpc2 = append(rpc2, rpc(2))
		rpc1 = append(rpc1, rpc(1))
		if ssh != nil {
			t := time.Now()
			if out, err := ssh.run("true"); err != nil {
				b.Fatalf("ssh true: %v %s", err, out)
			}
			sshT = append(sshT, time.Since(t))
		}
	}
	local.reportAs(b, "baseline: fork+exec /bin/true", "local")
	help.reportAs(b, "baseline: ssi help (CLI start, no daemon)", "help")
	cli.reportAs(b, "onnode 2 true via node 1 (CLI)", "onnode")
	cliPin.reportAs(b, "onnode -p 2 true (pinned: no namespace)", "onnode-pinned")
	cliSelf.reportAs(b, "onnode 1 true via node 1 (CLI, no hop)", "onnode-self")
	rpc2.reportAs(b, "Exec RPC: true on node 2 via node 1", "rpc")
	rpc1.reportAs(b, "Exec RPC: true on node 1 via node 1", "rpc-self")
	if ssh != nil {
		sshT.reportAs(b, "ssh -o ControlMaster 127.0.0.1 true (no rc)", "ssh")
	}
	med := func(s stats) float64 { return float64(s.pct(50)) }
	ratio(b, "ratio onnode / fork+exec (median)", "x-fork-exec", med(cli)/med(local))
	ratio(b, "ratio onnode -p / fork+exec (median)", "pinned-x-fork-exec", med(cliPin)/med(local))
	ratio(b, "ratio Exec RPC / fork+exec (median)", "rpc-x-fork-exec", med(rpc2)/med(local))
	if ssh != nil {
		ratio(b, "ratio onnode / ssh ControlMaster (median)", "x-ssh", med(cli)/med(sshT))
		ratio(b, "ratio onnode -p / ssh ControlMaster (median)", "pinned-x-ssh", med(cliPin)/med(sshT))
	}
	fmt.Printf("%-44s CLI start %.2f ms + hop %.2f ms + node-local exec %.2f ms + rest %.2f ms\n", "where the onnode median goes (approx.)",
		ms2(help.pct(50)), ms2(rpc2.pct(50)-rpc1.pct(50)), ms2(rpc1.pct(50)), ms2(cli.pct(50)-help.pct(50)-rpc2.pct(50)))
}

// ---- 2. onall over a large cluster ----

// `onall true` on a 125-node cluster (SSI_BENCH_NODES), repeatedly from
// node 1 (its connections to the other daemons open) and once each from
// nodes that have not run onall before, against starting `true` as many
// times locally in parallel.
func BenchmarkOnall125(b *testing.B) {
	n := 125
	if v, err := strconv.Atoi(os.Getenv("SSI_BENCH_NODES")); err == nil && v > 0 {
		n = v
	}
	c, form := up(b, n, "--raft-timeout", "2s", "--heartbeat-interval", "500ms", "--failure-timeout", "3s", "--timeout", "10m")
	fmt.Printf("%-44s %.1f s\n", fmt.Sprintf("form a %d-node cluster (ssi up)", n), form.Seconds())
	time.Sleep(10 * time.Second) // settle, as BenchmarkClusterV125 does

	// Every node answers, once each.
	_, out := c.runCLI(b, 1, "onall", "hostname")
	if lines := strings.Count(out, "\n"); lines != n {
		b.Fatalf("onall hostname printed %d lines for %d nodes:\n%s", lines, n, out)
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		num, _, _ := strings.Cut(l, ": ")
		if seen[num] {
			b.Fatalf("node %s answered twice:\n%s", num, out)
		}
		seen[num] = true
	}
	parallelTrue := func() time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
		defer cancel()
		t := time.Now()
		cmds := make([]*exec.Cmd, n)
		for i := range cmds {
			cmds[i] = exec.CommandContext(ctx, "true")
			if err := cmds[i].Start(); err != nil {
				b.Fatal(err)
			}
		}
		for _, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				b.Fatalf("true: %v", err)
			}
		}
		return time.Since(t)
	}
	c.runCLI(b, 1, "onall", "true") // warm up node 1's connections to its peers
	// Sources for the "cold" runs: nodes that have not run onall yet, so
	// their daemon first opens its mTLS connections to the other nodes.
	fresh := rand.Perm(n - 1)
	var base, warm, cold stats
	bg := newBudget("onall")
	for i := 0; i < trials(15) && bg.ok(i); i++ {
		base = append(base, parallelTrue())
		d, out := c.runCLI(b, 1, "onall", "true")
		if out != "" {
			b.Fatalf("onall true printed %q", out)
		}
		warm = append(warm, d)
		if i < len(fresh) {
			d, out = c.runCLI(b, 2+fresh[i], "onall", "true")
			if out != "" {
				b.Fatalf("onall true printed %q", out)
			}
			cold = append(cold, d)
		}
	}
	base.reportAs(b, fmt.Sprintf("baseline: %d x true locally in parallel", n), "local")
	warm.reportAs(b, fmt.Sprintf("onall true on %d nodes, from node 1", n), "onall")
	if len(cold) > 0 {
		cold.reportAs(b, "onall true, each from a node's first onall", "onall-cold")
	}
	ratio(b, "ratio onall (node 1) / local parallel (median)", "x-local", float64(warm.pct(50))/float64(base.pct(50)))
	b.ReportMetric(form.Seconds(), "form-s")
}

// ---- 3. stream throughput ----

// streamBlock fills block i of the stream: the same random MiB every time
// except for its first 8 bytes, the block's number, so that a lost,
// repeated or reordered block changes the checksum.
func streamBlock(buf []byte, i int) []byte {
	binary.LittleEndian.PutUint64(buf, uint64(i))
	return buf
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pipeThrough feeds mib MiB to cmd's stdin and reads its stdout, checking
// the byte count and checksum; it returns the wall time from start to the
// command's exit.
func pipeThrough(b *testing.B, cmd *exec.Cmd, mib int, want uint32) time.Duration {
	b.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	t := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		rng := rand.NewChaCha8([32]byte{'s', 's', 'i'})
		rng.Read(buf)
		for i := 0; i < mib; i++ {
			if _, err := stdin.Write(streamBlock(buf, i)); err != nil {
				stdin.Close()
				werr <- err
				return
			}
		}
		werr <- stdin.Close()
	}()
	h := crc32.New(castagnoli)
	got, rerr := io.CopyBuffer(h, stdout, make([]byte, 1<<20))
	err = cmd.Wait()
	d := time.Since(t)
	if e := <-werr; e != nil {
		b.Fatalf("%s: writing: %v\n%s", strings.Join(cmd.Args, " "), e, errb.Bytes())
	}
	if rerr != nil || err != nil {
		b.Fatalf("%s: read %v, exit %v\n%s", strings.Join(cmd.Args, " "), rerr, err, errb.Bytes())
	}
	if got != int64(mib)<<20 || h.Sum32() != want {
		b.Fatalf("%s: got %d bytes crc32c %08x, want %d bytes crc32c %08x", strings.Join(cmd.Args, " "), got, h.Sum32(), int64(mib)<<20, want)
	}
	return d
}

// `onnode 2 cat` of 1 GiB (SSI_BENCH_STREAM_MB) from node 1, and `onnode 1
// cat` (no hop between daemons), against a local cat through a pipe.
func BenchmarkStreamCat(b *testing.B) {
	mib := 1024
	if v, err := strconv.Atoi(os.Getenv("SSI_BENCH_STREAM_MB")); err == nil && v > 0 {
		mib = v
	}
	c, _ := up(b, 3)
	buf := make([]byte, 1<<20)
	rng := rand.NewChaCha8([32]byte{'s', 's', 'i'})
	rng.Read(buf)
	want := uint32(0)
	for i := 0; i < mib; i++ {
		want = crc32.Update(want, castagnoli, streamBlock(buf, i))
	}
	runs := min(trials(3), 5)
	var local, remote, self []float64
	mbps := func(d time.Duration) float64 { return float64(int64(mib)<<20) / 1e6 / d.Seconds() }
	limit := cmdLimit + time.Duration(mib)*100*time.Millisecond // a transfer slower than 10 MB/s is killed
	// through runs one transfer through cat on node k (0: a local cat).
	through := func(k int) float64 {
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		cmd := exec.CommandContext(ctx, "cat")
		if k != 0 {
			cmd = c.ssiCmd(ctx, 1, "onnode", strconv.Itoa(k), "cat")
		}
		return mbps(pipeThrough(b, cmd, mib, want))
	}
	for i := 0; i < runs; i++ {
		local = append(local, through(0))
		remote = append(remote, through(2))
		self = append(self, through(1))
	}
	median := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	report := func(what, unit string, v []float64) {
		lo := v[0]
		for _, x := range v {
			lo = min(lo, x)
		}
		fmt.Printf("%-44s n=%-4d median %8.1f MB/s   min %8.1f MB/s\n", what, len(v), median(v), lo)
		b.ReportMetric(median(v), unit+"-MB/s")
	}
	report(fmt.Sprintf("baseline: local cat through a pipe, %d MiB", mib), "local", local)
	report(fmt.Sprintf("onnode 2 cat via node 1, %d MiB", mib), "onnode", remote)
	report(fmt.Sprintf("onnode 1 cat via node 1 (no hop), %d MiB", mib), "onnode-self", self)
	ratio(b, "ratio onnode 2 cat / local cat (median)", "x-local", median(remote)/median(local))
	ratio(b, "ratio onnode 1 cat / local cat (median)", "self-x-local", median(self)/median(local))
}

// ---- 4. detached job starts ----

// How many `ssi run -d true` the cluster starts per second through the CLI,
// sequentially and from 4 concurrent loops, and through the RPC alone;
// against local fork+exec of true in the same run. `ssi wait` collects
// every job (measured separately) so the table does not grow.
func BenchmarkJobsPerSecond(b *testing.B) {
	c, _ := up(b, 3)
	n := trials(200)
	const par = 4
	cl := devcluster.Client(c.dir, 1)
	// loop runs fn n times from p concurrent loops and returns the rate.
	loop := func(what string, p int, fn func() error) float64 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		done := 0
		deadline := time.Now().Add(loopBudget)
		t := time.Now()
		for w := 0; w < p; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n && time.Now().Before(deadline); i += p {
					err := fn()
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if err == nil {
						done++
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
		wg.Wait()
		d := time.Since(t)
		if firstErr != nil {
			b.Fatal(firstErr)
		}
		if done < n {
			fmt.Printf("%s: time budget (%v) used up after %d of %d runs\n", what, loopBudget, done, n)
		}
		return float64(done) / d.Seconds()
	}
	var mu sync.Mutex
	var cpids []int64
	startCLI := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
		defer cancel()
		out, err := c.ssiCmd(ctx, 1, "run", "-d", "true").Output()
		if err != nil {
			return fmt.Errorf("ssi run -d true: %v %s", err, out)
		}
		cp, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		if err != nil {
			return fmt.Errorf("ssi run -d true printed %q", out)
		}
		mu.Lock()
		cpids = append(cpids, cp)
		mu.Unlock()
		return nil
	}
	startRPC := func() error {
		_, cp, err := execRPC(cl, execSpec(0, true, "true"))
		if err != nil {
			return fmt.Errorf("Exec RPC (detached): %v", err)
		}
		mu.Lock()
		cpids = append(cpids, cp)
		mu.Unlock()
		return nil
	}
	// waitAll collects every job started so far, checks it exited 0 and
	// returns the rate and where the jobs ran.
	waitAll := func(viaCLI bool) (float64, string) {
		mu.Lock()
		todo := cpids
		cpids = nil
		mu.Unlock()
		placed := map[int]int{}
		t := time.Now()
		for _, cp := range todo {
			placed[vproc.CPID(cp).Node()]++
			if viaCLI {
				c.runCLI(b, 1, "wait", strconv.FormatInt(cp, 10)) // fails on a non-zero status
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
			resp, err := cl.Wait(ctx, connect.NewRequest(&ssiv1.WaitRequest{Cpid: cp}))
			cancel()
			if err != nil || resp.Msg.Exit.Code != 0 {
				b.Fatalf("wait %d: %v %v", cp, resp, err)
			}
		}
		rate := float64(len(todo)) / time.Since(t).Seconds()
		var where []string
		for k := 1; k <= c.n; k++ {
			if placed[k] > 0 {
				where = append(where, fmt.Sprintf("node %d: %d", k, placed[k]))
			}
		}
		return rate, strings.Join(where, ", ")
	}
	localTrue := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
		defer cancel()
		return exec.CommandContext(ctx, "true").Run()
	}
	help := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), cmdLimit)
		defer cancel()
		return c.ssiCmd(ctx, 1, "help").Run()
	}
	if err := startCLI(); err != nil { // warm up
		b.Fatal(err)
	}
	waitAll(true)

	loc1 := loop("local", 1, localTrue)
	hlp := loop("ssi help", 1, help)
	cli1 := loop("ssi run -d", 1, startCLI)
	w1, where1 := waitAll(true)
	locP := loop("local", par, localTrue)
	cliP := loop("ssi run -d", par, startCLI)
	_, whereP := waitAll(true)
	rpc1 := loop("Exec RPC", 1, startRPC)
	wr, whereR := waitAll(false)
	rpcP := loop("Exec RPC", par, startRPC)
	_, whereRP := waitAll(false)

	rate := func(what, unit string, r float64, where string) {
		if where != "" {
			where = "   (ran on " + where + ")"
		}
		fmt.Printf("%-44s %8.1f /s%s\n", what, r, where)
		b.ReportMetric(r, unit)
	}
	rate(fmt.Sprintf("baseline: fork+exec true, sequential (n=%d)", n), "local-jobs/s", loc1, "")
	rate(fmt.Sprintf("baseline: fork+exec true, %d loops", par), "local-par-jobs/s", locP, "")
	rate("baseline: ssi help (CLI start), sequential", "help/s", hlp, "")
	rate(fmt.Sprintf("ssi run -d true (CLI), sequential (n=%d)", n), "jobs/s", cli1, where1)
	rate(fmt.Sprintf("ssi run -d true (CLI), %d loops", par), "par-jobs/s", cliP, whereP)
	rate("Exec RPC detached true, sequential", "rpc-jobs/s", rpc1, whereR)
	rate(fmt.Sprintf("Exec RPC detached true, %d loops", par), "rpc-par-jobs/s", rpcP, whereRP)
	rate("ssi wait (CLI), sequential", "waits/s", w1, "")
	rate("Wait RPC, sequential", "rpc-waits/s", wr, "")
	ratio(b, "ratio ssi run -d / fork+exec (sequential)", "x-local", cli1/loc1)
	ratio(b, fmt.Sprintf("ratio ssi run -d / fork+exec (%d loops)", par), "par-x-local", cliP/locP)
}
