package rexec

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var testPools atomic.Int64

// newTestPool returns a pool of its own for one test, with a cgroup parent
// of its own, closed and removed at the end of the test.
func newTestPool(t *testing.T, o PoolOptions) *Pool {
	t.Helper()
	needRoot(t)
	o.CgroupParent = testCgroupParent + "/pool-" + strconv.FormatInt(testPools.Add(1), 10)
	o.Env = testPoolEnv
	p, err := NewPool(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		cg, err := placeCgroup(o.CgroupParent, "x")
		if err != nil {
			return
		}
		for _, d := range cg.dirs {
			if err := os.Remove(filepath.Dir(d)); err != nil && !os.IsNotExist(err) {
				t.Errorf("removing the pool's cgroup parent: %v", err)
			}
		}
	})
	return p
}

func poolSpec(t testing.TB, p *Pool, argv ...string) Spec {
	s := modes[3].spec(t, argv...)
	s.Pool, s.CgroupParent = p, p.opts.CgroupParent
	return s
}

// awaitReady waits until p has n inits ready.
func awaitReadyN(t *testing.T, p *Pool, n int) {
	t.Helper()
	p.activate()
	eventually(t, fmt.Sprintf("%d inits are ready", n), func() bool { return p.Ready() >= n })
}

// startWarm starts spec from p's ready inits. The pool drops them whenever
// the host's mount table changes, which tests of other packages running at
// the same time do (network namespaces, isolated clusters): a start that
// found none because of such a drop is finished and tried again, a few
// times. A cold start without a drop is returned as it is, for the caller
// to judge.
func startWarm(t *testing.T, p *Pool, spec Spec) *Job {
	t.Helper()
	for try := 0; ; try++ {
		flushes := p.flushes.Load()
		j := start(t, spec)
		if j.warm || try == 9 || p.flushes.Load() == flushes {
			return j
		}
		t.Logf("start %d was cold: the mount table changed meanwhile; again", try+1)
		j.Stdin().Close()
		go io.Copy(io.Discard, j.Stdout())
		go io.Copy(io.Discard, j.Stderr())
		wait(t, j)
		awaitReadyN(t, p, 1)
	}
}

// readyPids returns the host PIDs of p's ready inits.
func readyPids(p *Pool) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var pids []int
	for _, w := range p.idle {
		pids = append(pids, w.cmd.Process.Pid)
	}
	return pids
}

// poolCgroups lists the cgroups of p's ready inits.
func poolCgroups(t *testing.T, p *Pool) []string {
	t.Helper()
	cg, err := placeCgroup(p.opts.CgroupParent, "x")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, d := range cg.dirs {
		ents, _ := os.ReadDir(filepath.Dir(d))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), poolLeafPrefix) {
				found = append(found, filepath.Join(filepath.Dir(d), e.Name()))
			}
		}
	}
	return found
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// allThreadsStopped says whether every thread of pid is in the stopped
// state ("T" in /proc/PID/task/TID/stat).
func allThreadsStopped(t *testing.T, pid int) bool {
	t.Helper()
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatalf("listing the threads of %d: %v", pid, err)
	}
	for _, tid := range tids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, tid.Name()))
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || len(b) < i+3 || b[i+2] != 'T' {
			return false
		}
	}
	return len(tids) > 0
}

// TestPoolJob checks that a job from the pool is isolated and set up as a
// cold one: its own PID namespace (the node's mount namespace, see
// jobCloneflags) and cgroup, the requested user, groups, directory and
// environment only.
func TestPoolJob(t *testing.T) {
	for _, v2 := range cgroupVersions(t) {
		t.Run(map[bool]string{false: "v1", true: "v2"}[v2], func(t *testing.T) {
			withCgroupVersion(t, v2)
			p := newTestPool(t, PoolOptions{Size: 1})
			awaitReadyN(t, p, 1)
			dir, err := os.MkdirTemp("", "ssi-pool-job-") // t.TempDir's parent is 0700
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			cgLine := `grep :freezer: /proc/self/cgroup`
			if v2 {
				cgLine = `grep ^0:: /proc/self/cgroup`
			}
			spec := poolSpec(t, p, "sh", "-c", `read _; echo $$; readlink /proc/self/ns/pid /proc/self/ns/mnt; `+cgLine+`
id -u; id -g; id -G; pwd; echo "$FOO"; env | grep -c .; grep NSpid /proc/self/status
cat /proc/self/autogroup 2>/dev/null || echo none`)
			spec.UID, spec.GID, spec.Groups = 65534, 65534, []uint32{65534, 100}
			spec.Dir = dir
			spec.Env = append(spec.Env, "FOO=bar", "FOO=baz") // the last one wins, as with os/exec
			j := startWarm(t, p, spec)
			c := collect(j)
			// The job waits for its stdin to close: its init is there to
			// be looked at until then.
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", j.pid))
			initCmdline := string(b)
			j.Stdin().Close()
			if !j.Migratable() || !j.Namespaced() {
				t.Errorf("Migratable %v, Namespaced %v; want both", j.Migratable(), j.Namespaced())
			}
			paths := j.CgroupPaths()
			st := wait(t, j)
			c.done(t)
			if st.ExitCode() != 0 {
				t.Fatalf("status %v, stderr %q", st, c.err.String())
			}
			lines := strings.Split(strings.TrimSpace(c.out.String()), "\n")
			if len(lines) != 12 {
				t.Fatalf("output %q", c.out.String())
			}
			if pid, _ := strconv.Atoi(lines[0]); pid < 2 || pid > 100 {
				t.Errorf("the job's PID in its namespace is %q; want a small number", lines[0])
			}
			for i, kind := range []string{"pid", "mnt"} {
				own, _ := os.Readlink("/proc/self/ns/" + kind)
				if shared := lines[1+i] == own; shared != (kind == "mnt") {
					t.Errorf("%s namespace %s (the test's is %s): want its own PID namespace and the node's mount namespace", kind, lines[1+i], own)
				}
			}
			rel := paths[0][len(mountOf(t, paths[0])):]
			if !strings.HasSuffix(lines[3], ":"+rel) {
				t.Errorf("the job is in cgroup %q, want %q", lines[3], rel)
			}
			if !v2 && filepath.Base(paths[0]) != "job-"+j.ID() {
				t.Errorf("cgroup %s: a v1 cgroup from the pool takes the job's name", paths[0])
			}
			want := []string{"65534", "65534", "65534 100", dir, "baz"}
			for i, w := range want {
				if lines[4+i] != w {
					t.Errorf("line %d is %q, want %q (uid, gid, groups, directory, $FOO)", 4+i, lines[4+i], w)
				}
			}
			if n, _ := strconv.Atoi(lines[9]); n < 4 || n > 8 {
				t.Errorf("the job sees %d environment variables; the daemon's and the init's must not leak", n)
			}
			// NSpid: the PID on the node, then in the job's namespace.
			if f := strings.Fields(lines[10]); len(f) != 3 || f[0] != "NSpid:" {
				t.Errorf("%q: want the node's and the namespace's PID", lines[10])
			} else if pid, _ := strconv.Atoi(f[2]); pid < 2 || pid > 100 {
				t.Errorf("%q: want a small PID in the job's namespace", lines[10])
			}
			if !strings.Contains(initCmdline, "-pool-fd") {
				t.Errorf("PID 1 is %q, want a warm init", initCmdline)
			}
			// Ready inits wait at a lower autogroup weight; the job runs at
			// the default one, as a new session always does.
			if ag := lines[11]; ag != "none" && !strings.HasSuffix(ag, " nice 0") {
				t.Errorf("the job's autogroup is %q, want nice 0", ag)
			}
		})
	}
}

// mountOf returns the cgroup mount point that holds dir.
func mountOf(t *testing.T, dir string) string {
	h, err := cgroupHierarchies()
	if err != nil {
		t.Fatal(err)
	}
	best := ""
	for _, m := range append([]string{h.v2}, h.v1["freezer"], h.v1["memory"]) {
		if m != "" && strings.HasPrefix(dir, m+"/") && len(m) > len(best) {
			best = m
		}
	}
	return best
}

func TestPoolInitsWaitInTheBackground(t *testing.T) {
	if _, err := os.Stat("/proc/self/autogroup"); err != nil {
		t.Skip("no autogroup scheduling")
	}
	p := newTestPool(t, PoolOptions{Size: 1})
	awaitReadyN(t, p, 1)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(readyPids(p)[0]) + "/autogroup")
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(b)), " nice 10") {
		t.Errorf("a ready init's autogroup is %q (%v), want nice 10", b, err)
	}
}

// TestPoolRemovesStaleCgroups: a new pool removes the empty cgroups that
// the ready inits of a daemon that died left behind, and nothing else.
func TestPoolRemovesStaleCgroups(t *testing.T) {
	needRoot(t)
	parent := testCgroupParent + "/stale"
	stale, err := newCgroup(parent, "w1.dead-1")
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := newCgroup(parent, "w1.other-1") // another pool's, just made
	if err != nil {
		t.Fatal(err)
	}
	other, err := newCgroup(parent, "3000042") // a job's
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, d := range append(slices.Clone(stale.dirs), other.dirs...) {
		if err := os.Chtimes(d, old, old); err != nil {
			t.Skipf("cannot date a cgroup back: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, cg := range []*cgroup{stale, fresh, other} {
			_ = cg.destroy()
		}
		for _, d := range stale.dirs {
			_ = os.Remove(filepath.Dir(d))
		}
	})
	p, err := NewPool(PoolOptions{CgroupParent: parent})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	for _, d := range stale.dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("stale cgroup %s is still there", d)
		}
	}
	for _, d := range append(slices.Clone(fresh.dirs), other.dirs...) {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("cgroup %s was removed: %v", d, err)
		}
	}
}

func TestPoolRefills(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 2})
	if p.Ready() != 0 {
		t.Fatalf("a new pool has %d inits ready; it fills on first use", p.Ready())
	}
	awaitReadyN(t, p, 2)
	for i := 0; i < 3; i++ {
		var j *Job
		if i < 2 {
			j = startWarm(t, p, poolSpec(t, p, "true"))
		} else {
			j = start(t, poolSpec(t, p, "true"))
		}
		j.Stdin().Close()
		if st := wait(t, j); st.ExitCode() != 0 {
			t.Fatal(st)
		}
		if i < 2 && !j.warm {
			t.Errorf("job %d did not come from the pool", i)
		}
	}
	awaitReadyN(t, p, 2)
	if n := p.Ready(); n != 2 {
		t.Errorf("%d inits ready, want the pool's size, 2", n)
	}
}

// TestPoolClose checks that closing the pool leaves no init and no cgroup.
func TestPoolClose(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 3})
	awaitReadyN(t, p, 3)
	pids := readyPids(p)
	if len(poolCgroups(t, p)) == 0 {
		t.Fatalf("no cgroups for the ready inits")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("ready init %d is still there after Close", pid)
		}
	}
	if left := poolCgroups(t, p); len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
	// A closed pool starts jobs cold.
	j := start(t, poolSpec(t, p, "true"))
	j.Stdin().Close()
	if st := wait(t, j); st.ExitCode() != 0 || j.warm {
		t.Errorf("status %v, warm %v after Close; want 0, a cold start", st, j.warm)
	}
}

// TestPoolConcurrentStarts starts more jobs at once than the pool holds.
func TestPoolConcurrentStarts(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 2})
	awaitReadyN(t, p, 2)
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, out, _ := run(t, poolSpec(t, p, "sh", "-c", "echo job-"+strconv.Itoa(i)))
			if st.ExitCode() != 0 || out != "job-"+strconv.Itoa(i)+"\n" {
				t.Errorf("job %d: status %v, output %q", i, st, out)
			}
		}()
	}
	wg.Wait()
	awaitReadyN(t, p, 2)
	p.Close()
	if left := poolCgroups(t, p); len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
}

// TestPoolMountChange checks that a job from the pool sees the mounts the
// host has when it starts, not the ones it had when the init was made.
func TestPoolMountChange(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 2})
	awaitReadyN(t, p, 2)
	stale := readyPids(p)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "ssi-test", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("mounted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		st, out, errOut := run(t, poolSpec(t, p, "cat", filepath.Join(dir, "f")))
		if st.ExitCode() != 0 || out != "mounted\n" {
			t.Errorf("job %d: status %v, output %q %q: it does not see the new mount", i, st, out, errOut)
		}
		awaitReadyN(t, p, 1)
	}
	eventually(t, "the stale inits are gone", func() bool {
		for _, pid := range stale {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}

// TestPoolLostInit kills ready inits: the pool notices, jobs still start,
// and it refills.
func TestPoolLostInit(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 2})
	awaitReadyN(t, p, 2)
	pids := readyPids(p)
	_ = syscall.Kill(pids[0], syscall.SIGKILL)
	_ = syscall.Kill(pids[1], syscall.SIGTERM) // an idle init ends on SIGTERM
	st, out, _ := run(t, poolSpec(t, p, "echo", "still"))
	if st.ExitCode() != 0 || out != "still\n" {
		t.Errorf("status %v, output %q", st, out)
	}
	awaitReadyN(t, p, 2)
	for _, pid := range readyPids(p) {
		if pid == pids[0] || pid == pids[1] {
			t.Errorf("init %d was killed but is still listed as ready", pid)
		}
	}
}

// TestPoolInitDiesBeforeItTakesTheJob: an init that is handed a job but
// dies before it reads it never ran it, so the job starts cold instead.
func TestPoolInitDiesBeforeItTakesTheJob(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 1})
	awaitReadyN(t, p, 1)
	pid := readyPids(p)[0]
	// Stopped, it cannot read the job nor end before the claim; killed a
	// moment later, it ends with the job unread. kill(2) returns before
	// the stop takes effect, and each thread stops on its own: a thread not
	// yet stopped could still read the job, so wait until all are.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every thread of the init is stopped", func() bool { return allThreadsStopped(t, pid) })
	time.AfterFunc(100*time.Millisecond, func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	spec := poolSpec(t, p, "echo", "cold")
	spec.ID = "fallback-1"
	j := start(t, spec)
	c := collect(j)
	j.Stdin().Close()
	st := wait(t, j)
	c.done(t)
	if st.ExitCode() != 0 || c.out.String() != "cold\n" {
		t.Errorf("status %v, output %q", st, c.out.String())
	}
	if j.warm || !j.Migratable() {
		t.Errorf("warm %v, migratable %v: want a cold start with its own cgroup", j.warm, j.Migratable())
	}
	if alive(pid) {
		t.Errorf("the stopped init %d is still there", pid)
	}
}

func TestPoolIdleTimeout(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 2, IdleTimeout: 300 * time.Millisecond})
	awaitReadyN(t, p, 2)
	pids := readyPids(p)
	eventually(t, "the idle pool empties", func() bool { return p.Ready() == 0 })
	eventually(t, "the idle inits end", func() bool { return !alive(pids[0]) && !alive(pids[1]) })
	eventually(t, "their cgroups go", func() bool { return len(poolCgroups(t, p)) == 0 })
	// The next job starts cold and wakes the pool up.
	j := start(t, poolSpec(t, p, "true"))
	j.Stdin().Close()
	wait(t, j)
	if j.warm {
		t.Errorf("a job after the idle timeout came from the emptied pool")
	}
	awaitReadyN(t, p, 1)
}

// TestPoolNotServed: jobs the pool cannot serve start cold, the same.
func TestPoolNotServed(t *testing.T) {
	p := newTestPool(t, PoolOptions{Size: 1})
	awaitReadyN(t, p, 1)
	spec := poolSpec(t, p, "hostname")
	spec.Hostname = "ssi-pool-test"
	flushes := p.flushes.Load()
	st, out, _ := run(t, spec)
	if st.ExitCode() != 0 || out != "ssi-pool-test\n" {
		t.Errorf("hostname job: %v %q", st, out)
	}
	// (Unless a mount change by a concurrent test dropped the ready init.)
	if p.Ready() != 1 && p.flushes.Load() == flushes {
		t.Errorf("a job with a hostname took a ready init")
	}
	plain := modes[0].spec(t, "true")
	plain.Pool = p
	j := start(t, plain)
	j.Stdin().Close()
	wait(t, j)
	if j.warm || j.Namespaced() {
		t.Errorf("a plain job came from the pool")
	}
}

// TestExited checks that Exited comes with the status, before or with Done.
func TestExited(t *testing.T) {
	for _, m := range withPool(modes[:1]) {
		t.Run(m.name, func(t *testing.T) {
			j := start(t, m.spec(t, "sh", "-c", "exit 5"))
			j.Stdin().Close()
			select {
			case <-j.Exited():
			case <-time.After(testTimeout):
				t.Fatal("no Exited")
			}
			st, err := j.ExitStatus()
			if err != nil || st.ExitCode() != 5 {
				t.Errorf("ExitStatus %v %v, want 5", st, err)
			}
			if final := wait(t, j); final != st {
				t.Errorf("Wait says %v, ExitStatus %v", final, st)
			}
		})
	}
}

// TestStartInCgroupV2: on cgroup v2 the init starts in the job's cgroup
// (clone3 with CLONE_INTO_CGROUP), cold or from the pool.
func TestStartInCgroupV2(t *testing.T) {
	if !slices.Contains(cgroupVersions(t), true) {
		t.Skip("no cgroup v2 freezer")
	}
	withCgroupVersion(t, true)
	p := newTestPool(t, PoolOptions{Size: 1})
	awaitReadyN(t, p, 1)
	for _, s := range []Spec{modes[3].spec(t, "cat", "/proc/self/cgroup"), poolSpec(t, p, "cat", "/proc/self/cgroup")} {
		j := start(t, s)
		c := collect(j)
		j.Stdin().Close()
		paths := j.CgroupPaths()
		wait(t, j)
		c.done(t)
		rel := paths[0][len(mountOf(t, paths[0])):]
		if !strings.Contains(c.out.String(), "0::"+rel+"\n") {
			t.Errorf("the job's cgroups are %q, want 0::%s", c.out.String(), rel)
		}
	}
	if noCloneIntoCgroup.Load() {
		t.Errorf("the kernel refused CLONE_INTO_CGROUP; the inits were moved instead")
	}
}
