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
)

// postCopyPipeSize is the fs.pipe-max-size post-copy needs
// (migrate.PostCopyPipeSize).
const postCopyPipeSize = 4 << 20

// needPipeMaxSize raises fs.pipe-max-size to what post-copy needs if it is
// lower (as scripts/deps.sh does); it never lowers it: other tests run on
// this machine at the same time.
func needPipeMaxSize(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n >= postCopyPipeSize {
		return
	}
	if err := os.WriteFile("/proc/sys/fs/pipe-max-size", []byte(strconv.Itoa(postCopyPipeSize)), 0o644); err != nil {
		t.Fatalf("post-copy needs fs.pipe-max-size >= %d (scripts/deps.sh sets it): %v", postCopyPipeSize, err)
	}
}

// memsumJob builds test/memsum and returns it and the paths of its check
// and stop files.
func memsumJob(t *testing.T) (bin, check, stop string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "memsum")
	if out, err := exec.Command("go", "build", "-o", bin, "../memsum").CombinedOutput(); err != nil {
		t.Fatalf("building memsum: %v\n%s", err, out)
	}
	return bin, filepath.Join(dir, "check"), filepath.Join(dir, "stop")
}

// memsumLog splits a memsum job's log: its checksums and its counter.
func memsumLog(c *Cluster, cpid string) (sums, counts []string) {
	r := c.CLI(1, "ssi", "logs", cpid)
	for _, l := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		if s, ok := strings.CutPrefix(l, "sum "); ok {
			sums = append(sums, s)
		} else if l != "" {
			counts = append(counts, l)
		}
	}
	return sums, counts
}

// checkMemory asks job cpid for the checksum of its memory and waits for
// it: it must be the one it printed when it started.
func checkMemory(t *testing.T, c *Cluster, cpid, check string) {
	t.Helper()
	before, _ := memsumLog(c, cpid)
	if len(before) == 0 {
		t.Fatalf("%s printed no checksum", cpid)
	}
	if err := os.WriteFile(check, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var sums []string
	Eventually(t, 60*time.Second, func() string {
		if sums, _ = memsumLog(c, cpid); len(sums) <= len(before) {
			return fmt.Sprintf("%s has not printed its checksum again", cpid)
		}
		return ""
	})
	if got := sums[len(sums)-1]; got != sums[0] {
		t.Errorf("the memory of %s changed across the move: sha256 %s, was %s", cpid, got, sums[0])
	}
}

// progress waits until job cpid has counted more than n.
func progress(t *testing.T, c *Cluster, cpid string, n int) int {
	t.Helper()
	var counts []string
	Eventually(t, 30*time.Second, func() string {
		if _, counts = memsumLog(c, cpid); len(counts) <= n {
			return fmt.Sprintf("%s counted %d lines, want more than %d", cpid, len(counts), n)
		}
		return ""
	})
	return len(counts)
}

// A 200 MiB job moves from node 2 to node 3 with post-copy (chosen by its
// size) and back with --postcopy: each time it runs on at once, its memory
// is what it was (SHA-256 of all of it, read after the move, which fetches
// every page from the source), its counter goes on without a gap or a
// repeat, and it exits with its own status.
func TestPostCopy(t *testing.T) {
	needPipeMaxSize(t)
	c := migrateCluster(t)
	bin, check, stop := memsumJob(t)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", bin, "200", check, stop))
	n := progress(t, c, cpid, 10)

	t0 := time.Now()
	out := c.MustCLI(1, "migrate", cpid, "3")
	t.Logf("%v: %s", time.Since(t0), out)
	if !strings.Contains(out, "from node 2 to node 3") || !strings.Contains(out, "post-copy") {
		t.Fatalf("migrate of a 200 MiB job printed %q, want a post-copy move to node 3", out)
	}
	for k := 1; k <= 3; k++ {
		if got := strings.TrimSpace(c.MustCLI(k, "where_pid", cpid)); got != "3" {
			t.Errorf("where_pid on node %d: %q, want 3", k, got)
		}
	}
	checkMemory(t, c, cpid, check)
	n = progress(t, c, cpid, n+10)

	out = c.MustCLI(3, "migrate", "--postcopy", cpid, "home")
	t.Logf("%s", out)
	if !strings.Contains(out, "from node 3 to node 2") || !strings.Contains(out, "post-copy") {
		t.Fatalf("migrate --postcopy home printed %q", out)
	}
	checkMemory(t, c, cpid, check)
	progress(t, c, cpid, n+10)

	endMemsum(t, c, cpid, stop)
}

// endMemsum stops job cpid, checks its counter (nothing lost or repeated)
// and its exit status.
func endMemsum(t *testing.T, c *Cluster, cpid, stop string) {
	t.Helper()
	stopNow(t, stop)
	var counts []string
	Eventually(t, 30*time.Second, func() string {
		if _, counts = memsumLog(c, cpid); len(counts) == 0 || counts[len(counts)-1] != "end" {
			return fmt.Sprintf("%s has not ended its output", cpid)
		}
		return ""
	})
	checkSequence(t, counts[:len(counts)-1], len(counts)-1)
	if r := c.CLI(1, "ssi", "wait", cpid); r.Code != 0 {
		t.Errorf("ssi wait: %v", r)
	}
}

// Where fs.pipe-max-size is too small for post-copy (the daemons are told
// so through SSI_TEST_PIPE_MAX_SIZE: the machine's own setting is left
// alone), migrate --postcopy is refused before the job is frozen, with the
// sysctl that fixes it, and the job goes on where it was; a move the size
// would have made post-copy falls back to copying the memory while frozen,
// says why, and the job moves intact.
func TestPostCopyNeedsPipeMaxSize(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("migration needs root (namespaces, cgroups, CRIU): run the e2e tests as root")
	}
	c := StartClusterEnv(t, 3, []string{"SSI_TEST_PIPE_MAX_SIZE=1048576"}, "--isolate")
	bin, check, stop := memsumJob(t)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", bin, "80", check, stop))
	n := progress(t, c, cpid, 10)

	r := c.CLI(1, "migrate", "--postcopy", cpid, "3")
	if r.Code != 1 || !strings.Contains(r.Stderr, "fs.pipe-max-size is 1048576") || !strings.Contains(r.Stderr, "sysctl -w fs.pipe-max-size=4194304") {
		t.Fatalf("migrate --postcopy with a small fs.pipe-max-size: %v; want exit 1 naming the sysctl", r)
	}
	if got := strings.TrimSpace(c.MustCLI(1, "where_pid", cpid)); got != "2" {
		t.Errorf("where_pid after the refusal: %q, want 2", got)
	}
	n = progress(t, c, cpid, n+5)

	r = c.CLI(1, "migrate", cpid, "3")
	if r.Code != 0 || strings.Contains(r.Stdout, "post-copy:") || !strings.Contains(r.Stderr, "not post-copy: fs.pipe-max-size is 1048576") {
		t.Fatalf("migrate of an 80 MiB job with a small fs.pipe-max-size: %v; want a move without post-copy that says why", r)
	}
	checkMemory(t, c, cpid, check)
	progress(t, c, cpid, n+5)
	endMemsum(t, c, cpid, stop)
}

// The source of a post-copy move dies while the job runs on the target and
// its pages are still coming (the daemons slow the page traffic down,
// SSI_TEST_PAGE_DELAY, so that the test can kill it midway): the job
// cannot go on, and it does not hang or run on with pages of zeros: the
// target kills it, its log says why, and ssi wait does not report success.
func TestPostCopySourceLost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("migration needs root (namespaces, cgroups, CRIU): run the e2e tests as root")
	}
	needPipeMaxSize(t)
	c := StartClusterEnv(t, 3, []string{"SSI_TEST_PAGE_DELAY=30ms"}, "--isolate")
	bin, check, _ := memsumJob(t)
	cpid := strings.TrimSpace(c.MustCLI(1, "ssi", "run", "-d", "-n", "2", bin, "200", check, filepath.Join(filepath.Dir(check), "stop")))
	progress(t, c, cpid, 10)
	mig := exec.Command(ssiBin, "migrate", "--postcopy", cpid, "3")
	mig.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(1))
	var out syncBuffer
	mig.Stdout, mig.Stderr = &out, &out
	if err := mig.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = mig.Wait(); close(waited) }()
	t.Cleanup(func() { _ = mig.Process.Kill(); <-waited })
	// The commit: the job runs on node 3, its pages still on node 2
	// (800 messages at 30 ms: about 25 s of page traffic).
	Eventually(t, 60*time.Second, func() string {
		if got := strings.TrimSpace(c.CLI(1, "where_pid", cpid).Stdout); got != "3" {
			return "the job does not run on node 3 yet: " + got
		}
		return ""
	})
	time.Sleep(time.Second)
	c.Kill(2)
	// The target notices at once (the page stream breaks): the job is
	// killed and says why.
	var r result
	Eventually(t, 30*time.Second, func() string {
		r = c.CLI(1, "ssi", "logs", cpid)
		if !strings.Contains(r.Stdout, "was killed: its memory pages were still coming from node 2") {
			return "the job's log does not say it was killed: " + r.Stdout[max(0, len(r.Stdout)-200):]
		}
		return ""
	})
	if w := c.CLI(1, "ssi", "wait", cpid); w.Code == 0 {
		t.Errorf("ssi wait of a job that lost its memory: %v; want a failure", w)
	}
	select {
	case <-waited:
		// Node 1 forwarded the request to node 2, which died.
		if !strings.Contains(out.String(), "node 2, which was moving the process") || mig.ProcessState.ExitCode() != 255 {
			t.Errorf("migrate printed %q (exit %d); want exit 255 saying node 2 was lost", out.String(), mig.ProcessState.ExitCode())
		}
	case <-time.After(30 * time.Second):
		t.Errorf("migrate still runs 30 s after the source died: %q", out.String())
	}
}

// An attached job (onnode typed on node 1, the job on node 2) moves with
// post-copy: the client's output goes on without a gap or a repeat, the
// job's memory is intact after the move, and onnode exits with its status.
func TestPostCopyAttached(t *testing.T) {
	needPipeMaxSize(t)
	c := migrateCluster(t)
	bin, check, stop := memsumJob(t)
	cmd := exec.Command(ssiBin, "2", bin, "100", check, stop)
	cmd.Args[0] = "onnode"
	cmd.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(1))
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(waited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-waited })
	lines := func() []string { return strings.Split(strings.TrimSpace(out.String()), "\n") }
	Eventually(t, 60*time.Second, func() string {
		if n := len(lines()); n < 10 {
			return fmt.Sprintf("onnode printed %d lines", n)
		}
		return ""
	})
	var cpid string
	for _, l := range strings.Split(c.MustCLI(1, "ssi", "ps"), "\n") {
		if strings.Contains(l, check) {
			cpid = strings.Fields(l)[0]
		}
	}
	if cpid == "" {
		t.Fatalf("the job is not in ps:\n%s", c.MustCLI(1, "ssi", "ps"))
	}
	if o := c.MustCLI(1, "migrate", "--postcopy", cpid, "3"); !strings.Contains(o, "post-copy") {
		t.Fatalf("migrate --postcopy printed %q", o)
	}
	if err := os.WriteFile(check, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, func() string {
		if strings.Count(out.String(), "sum ") < 2 {
			return "the job has not printed its checksum again"
		}
		return ""
	})
	stopNow(t, stop)
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Fatalf("onnode did not end 30 s after the job was told to stop: %q", out.String())
	}
	if werr != nil {
		t.Errorf("onnode: %v, stderr %q; want exit 0", werr, errb.String())
	}
	var sums, counts []string
	for _, l := range lines() {
		if s, ok := strings.CutPrefix(l, "sum "); ok {
			sums = append(sums, s)
		} else {
			counts = append(counts, l)
		}
	}
	if len(sums) != 2 || sums[0] != sums[1] {
		t.Errorf("checksums of the job's memory before and after the move: %v", sums)
	}
	if len(counts) == 0 || counts[len(counts)-1] != "end" {
		t.Fatalf("the output did not end with \"end\": %v", counts[max(0, len(counts)-3):])
	}
	checkSequence(t, counts[:len(counts)-1], len(counts)-1)
}
