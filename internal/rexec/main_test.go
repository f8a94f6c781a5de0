package rexec

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// The test binary is also the init the engine re-executes (InitPath
// defaults to /proc/self/exe), exactly as the ssi binary will be.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == nsinit.Command {
		os.Exit(nsinit.Main(os.Args[2:]))
	}
	if os.Geteuid() == 0 {
		p, err := NewPool(PoolOptions{Size: 2, CgroupParent: testCgroupParent, Env: testPoolEnv})
		if err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: NewPool:", err)
			os.Exit(1)
		}
		testPool = p
	}
	code := m.Run()
	if testPool != nil {
		testPool.Close()
	}
	if err := checkNoZombies(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	if err := removeTestCgroupParents(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	os.Exit(code)
}

// testTimeout bounds every job a test starts. It only fires when something
// hangs, so it is generous.
const testTimeout = 60 * time.Second

// testEnv is the jobs' environment. GORACE keeps a -race build of the init
// from sleeping a second before it exits.
var testEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "GORACE=atexit_sleep_ms=0"}

// testPoolEnv is the environment of the pool's inits (see testEnv).
var testPoolEnv = []string{"GORACE=atexit_sleep_ms=0"}

// testPool serves the "pool" mode (root only).
var testPool *Pool

// testCgroupParent is relative: the test jobs' cgroups go below the test's
// own cgroup in each hierarchy, and TestMain removes it at the end.
var testCgroupParent = "ssi-test-" + strconv.Itoa(os.Getpid())

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces, cgroups and credential switching")
	}
}

// mode is a way of running a job.
type mode struct {
	name   string
	ns, cg bool
	pool   bool // from testPool, which must have an init ready
}

var modes = []mode{{"plain", false, false, false}, {"ns", true, false, false}, {"cgroup", false, true, false}, {"ns+cgroup", true, true, false}, {"pool", true, true, true}}

func (m mode) spec(t testing.TB, argv ...string) Spec {
	if m.ns || m.cg {
		needRoot(t)
	}
	s := Spec{
		Argv: argv, Env: testEnv, Namespaces: m.ns, Cgroup: m.cg, CgroupParent: testCgroupParent,
		UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), // the only choice without root
	}
	if m.pool {
		s.Pool = testPool
		awaitReadyInit(t, testPool)
	}
	return s
}

// testPoolFlushes is how often testPool had dropped its inits after a
// change of the mount table (by anyone on the machine) when the last pool
// mode spec was made: a job may start cold after one.
var testPoolFlushes uint64

// awaitReadyInit waits until p has an init ready (activating it first).
func awaitReadyInit(t testing.TB, p *Pool) {
	t.Helper()
	p.activate()
	p.checkMounts()
	if p == testPool {
		testPoolFlushes = p.flushes.Load()
	}
	deadline := time.Now().Add(testTimeout)
	for p.Ready() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the pool has no init ready after %v", testTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

func start(t testing.TB, spec Spec) *Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	j, err := Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start(%q): %v", spec.Argv, err)
	}
	// Watchdog: a job that hangs is killed and its stdio closed, so that
	// no read or wait in the test can block forever.
	watchdog := time.AfterFunc(testTimeout, func() {
		t.Errorf("job %s still running after %v: killing it", j.ID(), testTimeout)
		_ = j.Signal(syscall.SIGKILL)
		_ = j.Close()
	})
	t.Cleanup(func() {
		watchdog.Stop()
		if !j.finished() {
			_ = j.Signal(syscall.SIGKILL)
			<-j.Done()
		}
		_ = j.Close()
	})
	if spec.Pool != nil && spec.Pool == testPool && !j.warm && testPool.flushes.Load() == testPoolFlushes {
		t.Errorf("job did not come from the pool")
	}
	if spec.Cgroup && isRoot() {
		if len(j.CgroupPaths()) == 0 {
			t.Errorf("job has no cgroup")
		}
		if got, want := j.Migratable(), spec.Namespaces; got != want {
			t.Errorf("Migratable() = %v, want %v", got, want)
		}
	}
	return j
}

// wait waits for the job, bounded, and checks it left no cgroup behind.
func wait(t testing.TB, j *Job) Status {
	t.Helper()
	select {
	case <-j.Done():
	case <-time.After(testTimeout):
		_ = j.Signal(syscall.SIGKILL)
		t.Fatalf("job %s did not end within %v", j.ID(), testTimeout)
	}
	st, err := j.Wait()
	if err != nil {
		t.Errorf("Wait: %v", err)
	}
	for _, d := range j.CgroupPaths() {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s still exists after the job ended", d)
		}
	}
	return st
}

// collect reads a job's stdout and stderr in the background.
type collected struct {
	wg       sync.WaitGroup
	out, err bytes.Buffer
}

func collect(j *Job) *collected {
	c := &collected{}
	c.wg.Add(2)
	go func() { defer c.wg.Done(); _, _ = io.Copy(&c.out, j.Stdout()) }()
	go func() { defer c.wg.Done(); _, _ = io.Copy(&c.err, j.Stderr()) }()
	return c
}

func (c *collected) done(t testing.TB) {
	t.Helper()
	ch := make(chan struct{})
	go func() { c.wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatal("the job's output did not reach EOF")
	}
}

// run runs a job to completion with stdin closed.
func run(t testing.TB, spec Spec) (Status, string, string) {
	t.Helper()
	j := start(t, spec)
	c := collect(j)
	if !spec.TTY {
		j.Stdin().Close()
	}
	st := wait(t, j)
	c.done(t)
	return st, c.out.String(), c.err.String()
}

// eventually polls cond until it holds or the test timeout passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func checkNoZombies() error {
	self := os.Getpid()
	for pid, v := range readProcTable() {
		if v[0] != self {
			continue
		}
		if p, err := ReadProc(pid); err == nil && p.State == "Z" {
			return fmt.Errorf("process %d (%s) is an unreaped child of the test", pid, p.Comm)
		}
	}
	return nil
}

func removeTestCgroupParents() error {
	h, err := cgroupHierarchies()
	if err != nil {
		return nil
	}
	var dirs []string
	for c, mnt := range h.v1 {
		dirs = append(dirs, filepath.Join(mnt, h.v1own[c], testCgroupParent))
	}
	if h.v2 != "" {
		dirs = append(dirs, filepath.Join(h.v2, h.v2own, testCgroupParent))
	}
	// A job's cleanup (its init reaped, then its cgroup removed) may still
	// be under way on a loaded machine when the last test returns: give it
	// a moment before calling what is left a leak.
	var problems []string
	for deadline := time.Now().Add(cgroupTimeout); ; time.Sleep(50 * time.Millisecond) {
		problems = problems[:0]
		for _, d := range dirs {
			ents, err := os.ReadDir(d)
			if err != nil {
				continue
			}
			for _, e := range ents {
				if e.IsDir() {
					procs, _ := os.ReadFile(filepath.Join(d, e.Name(), "cgroup.procs"))
					problems = append(problems, fmt.Sprintf("%s (processes: %q)", filepath.Join(d, e.Name()), strings.Fields(string(procs))))
				}
			}
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
	if len(problems) > 0 {
		return fmt.Errorf("leftover job cgroups: %s", strings.Join(problems, ", "))
	}
	return nil
}

// withPool adds the pool mode to ms.
func withPool(ms []mode) []mode {
	return append(slices.Clone(ms), modes[len(modes)-1])
}
