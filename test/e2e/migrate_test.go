package e2e

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// migrateCluster is a 3-node --isolate cluster: each node in its own PID,
// mount and network namespace, as on separate machines but for the disk.
func migrateCluster(t *testing.T) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("migration needs root (namespaces, cgroups, CRIU): run the e2e tests as root")
	}
	return StartCluster(t, 3, "--isolate")
}

// logLines is the log of a detached job, as seen from node k.
func logLines(c *Cluster, k int, cpid string) []string {
	r := c.CLI(k, "ssi", "logs", cpid)
	if r.Code != 0 {
		return nil
	}
	return strings.Fields(r.Stdout)
}

// counter is a job that prints 0, 1, 2, ... every 20 ms until the file
// stop exists, then "end", and exits with code: it runs as long as the
// test needs, however slow the machine.
func counter(stop string, code int, marker string) string {
	return fmt.Sprintf(`i=0; while [ ! -e %s ]; do echo $i; i=$((i+1)); sleep 0.02; done; echo end; exit %d; : %s`, stop, code, marker)
}

// stopFile is a path for counter's stop file (created by stopNow).
func stopFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "stop")
}

func stopNow(t *testing.T, stop string) {
	t.Helper()
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// counted waits until counter job cpid has ended its output ("end") and
// checks that what came before is 0, 1, ..., with nothing lost or repeated,
// at least min lines.
func counted(t *testing.T, c *Cluster, cpid string, min int) {
	t.Helper()
	var lines []string
	Eventually(t, 30*time.Second, func() string {
		lines = logLines(c, 1, cpid)
		if len(lines) == 0 || lines[len(lines)-1] != "end" {
			return fmt.Sprintf("%s has not ended its output: %d lines", cpid, len(lines))
		}
		return ""
	})
	lines = lines[:len(lines)-1]
	if len(lines) < min {
		t.Errorf("%s wrote %d lines, want at least %d", cpid, len(lines), min)
	}
	checkSequence(t, lines, len(lines))
}

// checkSequence fails unless lines are exactly 0, 1, ..., n-1.
func checkSequence(t *testing.T, lines []string, n int) {
	t.Helper()
	if len(lines) != n {
		t.Errorf("%d lines, want %d: %v", len(lines), n, lines)
	}
	for i, l := range lines {
		if l != strconv.Itoa(i) {
			t.Fatalf("line %d is %q: output lost or repeated across the moves: %v", i, l, lines)
		}
	}
}

// A counter moves from node 2 to node 3 and back home mid-run, through the
// CLI of node 1: it carries on exactly (no line lost or repeated), keeps
// its cluster PID, every node sees where it runs at once, and ssi wait gets
// its own exit status.
func TestMigrateCounter(t *testing.T) {
	c := migrateCluster(t)
	stop := stopFile(t)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", counter(stop, 3, "")))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, cpid); len(l) < 10 {
			return fmt.Sprintf("the counter wrote %d lines", len(l))
		}
		return ""
	})
	out := c.MustCLI(1, "migrate", cpid, "3")
	if !strings.Contains(out, "from node 2 to node 3") {
		t.Errorf("migrate printed %q", out)
	}
	for k := 1; k <= 3; k++ {
		if got := strings.TrimSpace(c.MustCLI(k, "where_pid", cpid)); got != "3" {
			t.Errorf("where_pid on node %d: %q, want 3", k, got)
		}
	}
	if ev := c.MustCLI(1, "cluster", "--events"); !strings.Contains(ev, "process "+cpid+" moved here from node 2 (migrate)") {
		t.Errorf("cluster --events does not show the move:\n%s", ev)
	}
	if ps := c.MustCLI(2, "ssi", "ps"); !strings.Contains(ps, cpid+"    3 ") {
		t.Errorf("ps from node 2 does not show %s on node 3:\n%s", cpid, ps)
	}
	before := len(logLines(c, 1, cpid))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, cpid); len(l) <= before+5 {
			return fmt.Sprintf("no progress on node 3 (%d lines, %d before)", len(l), before)
		}
		return ""
	})
	if out := c.MustCLI(3, "migrate", cpid, "home"); !strings.Contains(out, "from node 3 to node 2") {
		t.Errorf("migrate home printed %q", out)
	}
	if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != "2" {
		t.Errorf("where_pid after migrate home: %q, want 2", got)
	}
	n := len(logLines(c, 1, cpid))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, cpid); len(l) <= n+5 {
			return fmt.Sprintf("no progress back home (%d lines, %d before)", len(l), n)
		}
		return ""
	})
	stopNow(t, stop)
	counted(t, c, cpid, n+5)
	if r := c.CLI(1, "ssi", "wait", cpid); r.Code != 3 {
		t.Errorf("ssi wait: %v; want the job's own exit status 3", r)
	}

	// A wait begun before two moves follows the job and gets its status.
	waitStop := stopFile(t)
	waited := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", counter(waitStop, 5, "")))
	waiter := exec.Command(ssiBin, "wait", waited)
	waiter.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(1))
	var waitOut syncBuffer
	waiter.Stdout, waiter.Stderr = &waitOut, &waitOut
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = waiter.Process.Kill(); _ = waiter.Wait() })
	time.Sleep(300 * time.Millisecond) // let it reach node 2 (were it late, it would find the job on node 3: also fine)
	c.MustCLI(1, "migrate", waited, "3")
	c.MustCLI(1, "migrate", waited, "home")
	stopNow(t, waitStop)
	err := waiter.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Errorf("ssi wait begun before the moves: %v %q; want the job's own exit status 5", err, waitOut.String())
	}

	// A job from node 2's pool of ready inits, whose report channel is a
	// socket to the daemon (a job that starts its own init has a pipe),
	// moves as well. A migration changes the mount table of the daemon's
	// namespace (CRIU's own mounts), which drops the pool: wait until it
	// has a ready init again.
	// The pool notices the change at the next start (a throwaway job).
	daemon2 := childOf(t, c.PID(2))
	readyInit := func() string {
		for _, p := range procsMatching("-pool-fd") {
			if ppidOf(p) == daemon2 {
				return ""
			}
		}
		return "node 2 has no ready init"
	}
	// Other tests' mounts on this machine drop the pool too: take a few
	// chances.
	pooledStop := stopFile(t)
	var pooled string
	for try := 0; pooled == "" && try < 10; try++ {
		c.MustCLI(1, "onnode", "2", "true")
		Eventually(t, 20*time.Second, readyInit)
		marker := fmt.Sprintf("ssi-pooled-%d", rand.IntN(1<<30))
		id := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", counter(pooledStop, 0, marker)))
		warm := true
		for _, p := range procsMatching(marker) {
			// A cold init's command line names the job; a warm one's
			// does not, and it is the job's parent.
			if !strings.Contains(cmdlineOf(ppidOf(p)), "-pool-fd") {
				warm = false
			}
		}
		if warm {
			pooled = id
		} else {
			c.MustCLI(1, "ssi", "kill", "-9", id)
		}
	}
	if pooled == "" {
		t.Fatal("no job came from node 2's pool of ready inits in 10 tries")
	}
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, pooled); len(l) < 5 {
			return fmt.Sprintf("the pooled job wrote %d lines", len(l))
		}
		return ""
	})
	c.MustCLI(1, "migrate", pooled, "3")
	n = len(logLines(c, 1, pooled))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, pooled); len(l) <= n+5 {
			return fmt.Sprintf("the pooled job makes no progress on node 3 (%d lines)", len(l))
		}
		return ""
	})
	stopNow(t, pooledStop)
	counted(t, c, pooled, n+5)
	if r := c.CLI(1, "ssi", "wait", pooled); r.Code != 0 {
		t.Fatalf("the pooled job: ssi wait: %v", r)
	}
}

// What cannot move is refused with a clear message, exit 1, and goes on
// running where it was: a pinned job, a job holding an inet socket, a job
// whose open file does not exist on the target (the restore fails there),
// a process that does not exist; bad arguments are usage errors.
func TestMigrateRefusals(t *testing.T) {
	c := migrateCluster(t)
	stillOn := func(cpid, node string) {
		t.Helper()
		if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != node {
			t.Errorf("where_pid %s: %q, want %s", cpid, got, node)
		}
	}
	refused := func(want string, args ...string) {
		t.Helper()
		r := c.CLI(1, "migrate", args...)
		if r.Code != 1 || !strings.Contains(r.Stderr, want) {
			t.Errorf("migrate %v: %v; want exit 1 and %q", args, r, want)
		}
	}

	pinned := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-p", "-n", "2", "sleep", "60"))
	refused("pinned", pinned, "3")
	stillOn(pinned, "2")

	port := strconv.Itoa(20000 + rand.IntN(20000))
	listener := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "busybox", "nc", "-l", "-p", port))
	Eventually(t, 10*time.Second, func() string {
		if ps := c.MustCLI(1, "ssi", "ps"); !strings.Contains(ps, "nc -l") {
			return "the listener is not running yet"
		}
		return ""
	})
	refused("inet", listener, "3")
	stillOn(listener, "2")

	// A file that exists only in node 2's mount namespace (a tmpfs mounted
	// there), which the job holds open: the restore on node 3 fails.
	private := nodePrivateFile(t, c, 2)
	holder := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c",
		"exec 4<"+private+"; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done"))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, holder); len(l) < 3 {
			return "the holder has not started"
		}
		return ""
	})
	refused("restoring process", holder, "3")
	stillOn(holder, "2")
	n := len(logLines(c, 1, holder))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, holder); len(l) <= n+5 {
			return fmt.Sprintf("the holder does not go on after the failed move (%d lines, %d before)", len(l), n)
		}
		return ""
	})
	l := logLines(c, 2, holder)
	checkSequence(t, l, len(l))

	refused("no such process", "2000999", "3")
	for _, args := range [][]string{{holder}, {holder, "x"}, {holder, "0"}, {"abc", "3"}} {
		if r := c.CLI(1, "migrate", args...); r.Code != 2 {
			t.Errorf("migrate %v: %v; want a usage error (exit 2)", args, r)
		}
	}
	if r := c.CLI(1, "migrate", holder, "9"); r.Code != 1 || !strings.Contains(r.Stderr, "not in the node table") {
		t.Errorf("migrate to node 9: %v", r)
	}
	if r := c.CLI(1, "migrate", holder, "2"); r.Code != 1 || !strings.Contains(r.Stderr, "already runs on node 2") {
		t.Errorf("migrate to its own node: %v", r)
	}
	for _, cpid := range []string{pinned, listener, holder} {
		c.MustCLI(1, "ssi", "kill", "-9", cpid)
	}
}

// startAttached starts cmd (an onnode) with a pipe as its stdin and
// buffers as its stdout and stderr. One Wait, in a goroutine, sends to
// waited (a reader puts the result back for the cleanup, which only kills).
func startAttached(t *testing.T, cmd *exec.Cmd) (stdin io.WriteCloser, out, errb *syncBuffer, waited chan error) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, errb = new(syncBuffer), new(syncBuffer)
	cmd.Stdout, cmd.Stderr = out, errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited = make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-waited })
	return stdin, out, errb, waited
}

// procsMatching lists the host PIDs whose command line contains s.
func procsMatching(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && pid != os.Getpid() && strings.Contains(cmdlineOf(pid), s) {
			out = append(out, pid)
		}
	}
	return out
}

func cmdlineOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

func ppidOf(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// childOf is the one child of pid (a node's init has one: its daemon).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	var kids []int
	for _, p := range procsMatching("") {
		if ppidOf(p) == pid {
			kids = append(kids, p)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("process %d has children %v, want one", pid, kids)
	}
	return kids[0]
}

// An attached job (onnode from node 1, running on node 2) moves with its
// stream: the client sees its output go on without a gap or a repeat
// across two moves (2 -> 3 -> home), its stdin keeps reaching it, and the
// client exits with the job's own status.
func TestMigrateAttached(t *testing.T) {
	c := ownStreams(t) // the stream's own connections follow the moves (the RPC path: TestMigrateTerminal)
	marker := fmt.Sprintf("ssi-attached-%d", rand.IntN(1<<30))
	cmd := exec.Command(ssiBin, "2", "sh", "-c", `while read l; do echo "got $l"; done; echo end; exit 4; : `+marker)
	cmd.Args[0] = "onnode"
	cmd.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(1))
	stdin, out, errb, waited := startAttached(t, cmd)
	var err error
	line := 0
	send := func(n int) {
		t.Helper()
		for range n {
			line++
			if _, err := fmt.Fprintf(stdin, "%d\n", line); err != nil {
				t.Fatalf("writing line %d to onnode: %v", line, err)
			}
		}
		want := fmt.Sprintf("got %d\n", line)
		Eventually(t, 10*time.Second, func() string {
			if !strings.HasSuffix(out.String(), want) {
				return fmt.Sprintf("the job has not answered %q yet: %q", want, out.String())
			}
			return ""
		})
	}
	send(5)
	var cpid string
	for _, l := range strings.Split(c.MustCLI(1, "ssi", "ps"), "\n") {
		if strings.Contains(l, marker) && !strings.Contains(l, `\_`) {
			cpid = strings.Fields(l)[0]
		}
	}
	if cpid == "" {
		t.Fatalf("the job is not in ps:\n%s", c.MustCLI(1, "ssi", "ps"))
	}
	c.MustCLI(1, "migrate", cpid, "3")
	if got := strings.TrimSpace(c.MustCLI(2, "where_pid", cpid)); got != "3" {
		t.Errorf("where_pid after the move: %q", got)
	}
	send(5)
	// Lines written while it moves are not lost either.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20; i++ {
			fmt.Fprintf(stdin, "%d\n", line+1+i)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	c.MustCLI(3, "migrate", cpid, "home")
	<-done
	line += 20
	send(3)
	stdin.Close()
	select {
	case err = <-waited:
		waited <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatalf("onnode did not end 30s after its stdin closed (the job never saw EOF?); who holds the job's stdin:\n%s\noutput so far:\n%s", stdinHolders(marker), out.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Errorf("onnode: %v, stderr %q; want the job's exit status 4", err, errb.String())
	}
	var want strings.Builder
	for i := 1; i <= line; i++ {
		fmt.Fprintf(&want, "got %d\n", i)
	}
	want.WriteString("end\n")
	if out.String() != want.String() {
		t.Errorf("output across the moves:\n%s\nwant:\n%s", out.String(), want.String())
	}
	// The stream was the lean one (stream_test.go) from start to end: to
	// node 2, then following the job to node 3 and back.
	if own, rpc := execStreams(t, c, 1); own != 3 || rpc != 0 {
		t.Errorf("node 1 relayed %v streams over their own connection and %v over RPC; want 3 (start, two moves) and 0", own, rpc)
	}
}

// A detached job saved with ssi checkpoint survives its node: after the
// node is killed, ssi restart brings it back on another node with its
// cluster PID, its log goes on exactly, and ssi wait gets its status. A
// second restart of the same checkpoint gets a new cluster PID (the first
// one is taken); a directory that exists is refused.
func TestCheckpointRestart(t *testing.T) {
	c := migrateCluster(t)
	stop := stopFile(t)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sh", "-c", counter(stop, 6, "")))
	Eventually(t, 10*time.Second, func() string {
		if l := logLines(c, 1, cpid); len(l) < 10 {
			return fmt.Sprintf("the counter wrote %d lines", len(l))
		}
		return ""
	})
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "ckpt")
	saved := len(logLines(c, 1, cpid)) // the checkpoint has these and more
	if out := c.MustCLI(1, "ssi", "checkpoint", cpid, dir); !strings.Contains(out, "saved in "+dir) {
		t.Errorf("checkpoint printed %q", out)
	}
	if r := c.CLI(1, "where_pid", cpid); r.Code == 0 {
		t.Errorf("the checkpointed job still runs: %v", r)
	}
	// CRIU used its kernel cache, which a daemon prepares at its start
	// where /run is not a tmpfs (internal/migrate/kdat.go): without it,
	// every dump and restore probes the kernel again on the frozen path.
	if b, err := os.ReadFile(filepath.Join(dir, "dump.log")); err != nil || !strings.Contains(string(b), "Loaded kdat cache") {
		t.Errorf("CRIU's dump did not load its kernel cache (%v): %.300s", err, b)
	}
	if r := c.CLI(1, "ssi", "checkpoint", cpid, dir); r.Code == 0 {
		t.Errorf("a second checkpoint into an existing directory: %v", r)
	}
	c.Kill(2)
	c.WaitState([]int{1, 3}, 2, "DOWN", 10*time.Second)
	got := strings.TrimSpace(c.MustCLI(1, "ssi", "restart", "-n", "3", dir))
	if got != cpid {
		t.Errorf("restart gave cluster PID %q, want the saved %s (its node is DOWN: the number is free)", got, cpid)
	}
	if w := strings.TrimSpace(c.MustCLI(1, "where_pid", got)); w != "3" {
		t.Errorf("where_pid %s: %q, want 3", got, w)
	}
	second := strings.TrimSpace(c.MustCLI(1, "ssi", "restart", "-n", "3", dir))
	if second == got || !strings.HasPrefix(second, "3") {
		t.Errorf("a second restart of the same checkpoint got cluster PID %q; want a new one of node 3", second)
	}
	for _, p := range []string{got, second} {
		Eventually(t, 10*time.Second, func() string {
			if l := logLines(c, 1, p); len(l) <= saved+5 {
				return fmt.Sprintf("%s makes no progress after its restart (%d lines, %d saved)", p, len(l), saved)
			}
			return ""
		})
	}
	stopNow(t, stop)
	for _, p := range []string{got, second} {
		counted(t, c, p, saved+5)
		if r := c.CLI(1, "ssi", "wait", p); r.Code != 6 {
			t.Errorf("ssi wait %s: %v; want the job's own status 6", p, r)
		}
	}
}

// A daemon killed while one of its jobs is frozen (as in the middle of a
// migration) leaves the job frozen, and SIGKILL cannot end a frozen
// process: the node's next daemon ends what its predecessor left.
func TestRestartedNodeEndsItsLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (cgroups): run the e2e tests as root")
	}
	c := StartCluster(t, 3)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", "sleep", "600"))
	var dir, freeze, frozen string
	Eventually(t, 10*time.Second, func() string {
		dir = findJobCgroup(filepath.Join(c.Dir, "node2"), cpid)
		if dir == "" {
			return "the job's cgroup is not there"
		}
		return ""
	})
	// Only this cluster's node 2 has that data directory's hash: check it
	// is ours by the job it holds.
	if _, err := os.Stat(filepath.Join(dir, "freezer.state")); err == nil {
		freeze, frozen = filepath.Join(dir, "freezer.state"), "FROZEN"
	} else {
		freeze, frozen = filepath.Join(dir, "cgroup.freeze"), "1"
	}
	procsB, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procsB))) == 0 {
		t.Fatalf("the job's cgroup %s holds no process: %q %v", dir, procsB, err)
	}
	pids := strings.Fields(string(procsB))
	if err := os.WriteFile(freeze, []byte(frozen), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(freeze, []byte(map[string]string{"FROZEN": "THAWED", "1": "0"}[frozen]), 0) })
	c.Kill(2)
	time.Sleep(200 * time.Millisecond)
	for _, p := range pids {
		if _, err := os.Stat("/proc/" + p); err != nil {
			t.Fatalf("process %s of the frozen job died with its daemon: the test proves nothing", p)
		}
	}
	c.StartDaemon(2)
	Eventually(t, 20*time.Second, func() string {
		for _, p := range pids {
			if b, err := os.ReadFile("/proc/" + p + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
				return "process " + p + " of the frozen job still exists"
			}
		}
		if _, err := os.Stat(dir); err == nil {
			return dir + " is still there"
		}
		return ""
	})
}

// findJobCgroup finds the cgroup directory of job cpid of node 2, whose
// data directory is dataDir: ssi/node2-HASH/job-CPID below the daemon's
// own cgroup, at any depth (HASH as internal/node's jobCgroupParent makes
// it), in the freezer hierarchy when cgroup v1's freezer is there, else in
// cgroup v2's.
func findJobCgroup(dataDir, cpid string) string {
	sum := sha256.Sum256([]byte(dataDir))
	parent := fmt.Sprintf("node2-%x", sum[:4])
	var found []string
	for _, root := range []string{"/sys/fs/cgroup/freezer", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, root), "/") > 8 {
				return filepath.SkipDir
			}
			if d.Name() == "job-"+cpid && filepath.Base(filepath.Dir(p)) == parent {
				found = append(found, p)
				return filepath.SkipDir
			}
			return nil
		})
		if len(found) > 0 {
			return found[0]
		}
	}
	return ""
}

// stdinHolders lists, for a failure message, the processes that hold the
// pipe the job marked marker reads as its stdin, with their open flags.
func stdinHolders(marker string) string {
	var b strings.Builder
	for _, p := range procsMatching(marker) {
		pipe, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/0", p))
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "job process %d (%s) reads %s; held by:\n", p, cmdlineOf(p), pipe)
		for _, q := range procsMatching("") {
			fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", q))
			for _, fd := range fds {
				if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", q, fd.Name())); l == pipe {
					info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", q, fd.Name()))
					flags := ""
					for _, line := range strings.Split(string(info), "\n") {
						if strings.HasPrefix(line, "flags:") {
							flags = strings.TrimSpace(strings.TrimPrefix(line, "flags:"))
						}
					}
					fmt.Fprintf(&b, "  pid %d fd %s flags %s (%s)\n", q, fd.Name(), flags, cmdlineOf(q))
				}
			}
		}
	}
	return b.String()
}
