package procs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// children returns the command lines of this process's children.
func children(t *testing.T) []string {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var out []string
	self := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(st)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == self {
			cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			out = append(out, strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return out
}

func TestMigratableJobsUseThePool(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces and cgroups")
	}
	m, err := NewManager(Options{Node: 5, DataDir: t.TempDir(), PoolSize: 2, CgroupParent: testCgroupParent()})
	if err != nil {
		t.Fatal(err)
	}
	if m.pool == nil {
		t.Fatal("a root manager has no pool")
	}
	root := Caller{}
	ctx := context.Background()
	env := []string{"PATH=/usr/bin:/bin", "GORACE=atexit_sleep_ms=0"}
	// The job's init is its parent; the job reads its node-wide PID from
	// its own status (the shell opens the redirection, so /proc/self is
	// the shell).
	const initCmdline = `while read k v _; do [ "$k" = PPid: ] && p=$v; done </proc/self/status; tr '\0' ' ' </proc/$p/cmdline`
	run := func(pin bool) (string, int, bool) {
		t.Helper()
		j, err := m.Start(ctx, StartRequest{Argv: []string{"sh", "-c", initCmdline + `; exit 4`}, Env: env, Dir: "/", Caller: root, Pin: pin})
		if err != nil {
			t.Fatal(err)
		}
		j.Process().Stdin().Close()
		out, _ := io.ReadAll(j.Process().Stdout())
		io.ReadAll(j.Process().Stderr())
		<-j.Done()
		st, err := j.Status()
		if err != nil {
			t.Error(err)
		}
		migratable := j.Process().Migratable()
		m.Finish(j)
		return string(out), st.ExitCode(), migratable
	}
	// The first migratable job starts its own init and wakes the pool.
	if out, code, mig := run(false); strings.Contains(out, "-pool-fd") || code != 4 || !mig {
		t.Errorf("first job: init %q, exit %d, migratable %v; want a cold init, 4, true", out, code, mig)
	}
	// The pool drops its ready inits whenever the host's mount table
	// changes, which other tests running at the same time (namespaces,
	// --isolate clusters) do often: a job may find none between a refill
	// and its start. So take a few chances; one of them must use the pool.
	pooled := false
	var last string
	for try := 0; try < 10 && !pooled; try++ {
		deadline := time.Now().Add(time.Minute)
		for m.pool.Ready() < 2 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		out, code, mig := run(false)
		if code != 4 || !mig {
			t.Fatalf("job %d: exit %d, migratable %v; want 4, true", try+2, code, mig)
		}
		pooled, last = strings.Contains(out, "-pool-fd"), out
	}
	if !pooled {
		t.Errorf("no job in 10 came from the pool; the last one's init: %q", last)
	}
	if out, code, _ := run(true); strings.Contains(out, "__init") || code != 4 {
		t.Errorf("pinned job: PID 1 %q, exit %d; want the host's init", out, code)
	}
	// A detached job from the pool.
	j, err := m.Start(ctx, StartRequest{Argv: []string{"sh", "-c", "echo logged; exit 6"}, Env: env, Dir: "/", Caller: root, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-j.Done():
	case <-time.After(time.Minute):
		t.Fatal("the detached job did not end")
	}
	if b, err := os.ReadFile(j.LogPath); err != nil || string(b) != "logged\n" {
		t.Errorf("detached job's log: %q %v", b, err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := m.Wait(wctx, j.CPID, root)
	if err != nil || st.ExitCode() != 6 {
		t.Errorf("detached job: %v %v, want exit 6", st, err)
	}

	m.Shutdown()
	if n := m.pool.Ready(); n != 0 {
		t.Errorf("%d inits ready after Shutdown", n)
	}
	for _, c := range children(t) {
		if strings.Contains(c, "__init") {
			t.Errorf("init left after Shutdown: %s", c)
		}
	}
	for _, h := range []string{"freezer", "memory", "unified", ""} {
		matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", h, "ssi", "job-w"+strconv.Itoa(os.Getpid())+"-*"))
		for _, d := range matches {
			t.Errorf("cgroup of a ready init left after Shutdown: %s", d)
		}
	}
}
