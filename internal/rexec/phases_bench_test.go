package rexec

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// Where a migratable job's start and end go. Run as root, with few trials:
//
//	go test -run '^$' -bench JobPhases -benchtime 1x ./internal/rexec/
//
// SSI_BENCH_TRIALS sets the number of rounds (default 50); SSI_BINARY names
// the ssi binary to re-execute as the init (default: built from ./cmd/ssi
// into a temporary directory, as `go build` does by default). Every probe
// runs once per round, interleaved with the others, so that all of them see
// the same machine; each is printed with its median and p99 and as a ratio
// of fork+exec of /bin/true measured in the same rounds. Nothing is
// asserted about time.

func benchTrials(def int) int {
	if v, err := strconv.Atoi(os.Getenv("SSI_BENCH_TRIALS")); err == nil && v > 0 {
		return v
	}
	return def
}

type durations []time.Duration

func (d durations) pct(p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	c := slices.Clone(d)
	slices.Sort(c)
	i := min(max(int(p/100*float64(len(c))+0.5)-1, 0), len(c)-1)
	return c[i]
}

func msOf(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// goBuild builds a main package into dir and returns the binary's path.
func goBuild(b *testing.B, pkgDir, out string) string {
	b.Helper()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", out, ".")
	cmd.Dir = pkgDir
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build in %s: %v\n%s", pkgDir, err, o)
	}
	return out
}

// ssiBinary returns the ssi binary to re-execute as the init.
func ssiBinary(b *testing.B) string {
	if p := os.Getenv("SSI_BINARY"); p != "" {
		return p
	}
	return goBuild(b, "../../cmd/ssi", filepath.Join(b.TempDir(), "ssi"))
}

// helloBinary builds the smallest Go program, the floor of a Go process start.
func helloBinary(b *testing.B) string {
	dir := b.TempDir()
	src := "package main\n\nimport \"os\"\n\nfunc main() { os.Exit(0) }\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	return goBuild(b, dir, filepath.Join(dir, "hello"))
}

func runCmd(b *testing.B, cloneflags uintptr, argv ...string) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = testEnv
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags}
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%q: %v\n%s", argv, err, out)
	}
}

// phaseRecorder collects the engine's trace points of the jobs it is told
// about, as offsets from the start of Start.
type phaseRecorder struct {
	mu     sync.Mutex
	t0     time.Time
	id     string
	order  []string
	deltas map[string]durations // phase -> time since the previous phase
	last   time.Time
	warm   bool
}

func (r *phaseRecorder) begin(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.id, r.t0, r.last, r.warm = id, time.Now(), time.Now(), false
}

// sawWarm reports whether the last job recorded was handed to a ready init.
func (r *phaseRecorder) sawWarm() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.warm
}

func (r *phaseRecorder) hook(id, phase string) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if id != r.id {
		return
	}
	if phase == "job handed over" {
		r.warm = true
	}
	if r.deltas == nil {
		r.deltas = map[string]durations{}
	}
	if _, seen := r.deltas[phase]; !seen {
		r.order = append(r.order, phase)
	}
	r.deltas[phase] = append(r.deltas[phase], now.Sub(r.last))
	r.last = now
}

type probe struct {
	name string
	run  func(b *testing.B)
	d    durations
}

// BenchmarkJobPhases measures the pieces of a migratable job's start and
// end one by one, then the engine's own steps for such a job.
func BenchmarkJobPhases(b *testing.B) {
	needRoot(b)
	n := benchTrials(50)
	ssiBin := ssiBinary(b)
	hello := helloBinary(b)
	cg, err := cgroupHierarchies()
	if err != nil {
		b.Skipf("no cgroups: %v", err)
	}
	_ = cg

	// A process to move into cgroups and back.
	sleeper := exec.Command("sleep", "1000")
	if err := sleeper.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
	home, err := newCgroup(testCgroupParent, "bench-home")
	if err != nil {
		b.Fatal(err)
	}
	defer home.destroy()

	var seq int
	nextID := func() string { seq++; return "bench-" + strconv.Itoa(seq) }
	spec := func(ns, cgroup bool) Spec {
		s := Spec{Argv: []string{"/bin/true"}, Env: testEnv, Namespaces: ns, Cgroup: cgroup,
			CgroupParent: testCgroupParent, InitPath: ssiBin}
		return s
	}
	// toExited collects, per engine probe, the time from Start to Exited:
	// what a caller waiting for the status sees (the probe's own figure
	// runs to Done, the end of the cleanup).
	toExited := map[string]*durations{}
	engine := func(s Spec, rec *phaseRecorder, name string) func(b *testing.B) {
		d := &durations{}
		toExited[name] = d
		return func(b *testing.B) {
			s.ID = nextID()
			if rec != nil {
				rec.begin(s.ID)
			}
			t := time.Now()
			j, err := Start(context.Background(), s)
			if err != nil {
				b.Fatal(err)
			}
			j.Stdin().Close()
			<-j.Exited()
			*d = append(*d, time.Since(t))
			if st, err := j.Wait(); err != nil || st.ExitCode() != 0 {
				b.Fatalf("%v %v", st, err)
			}
			j.Close()
		}
	}
	rec := &phaseRecorder{}
	warmRec := &phaseRecorder{}
	pool, err := NewPool(PoolOptions{Size: 2, InitPath: ssiBin, CgroupParent: testCgroupParent, Env: []string{"GORACE=atexit_sleep_ms=0"}})
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	both := func(id, phase string) { rec.hook(id, phase); warmRec.hook(id, phase) }
	tracePhase = both
	defer func() { tracePhase = nil }()

	probes := []*probe{
		{name: "fork+exec /bin/true (baseline)", run: func(b *testing.B) { runCmd(b, 0, "/bin/true") }},
		{name: "3 pipes (create, close)", run: func(b *testing.B) {
			var fs []*os.File
			for range 3 {
				r, w, err := os.Pipe()
				if err != nil {
					b.Fatal(err)
				}
				fs = append(fs, r, w)
			}
			for _, f := range fs {
				f.Close()
			}
		}},
		{name: "clone NEWPID|NEWNS + exec /bin/true", run: func(b *testing.B) {
			runCmd(b, syscall.CLONE_NEWPID|syscall.CLONE_NEWNS, "/bin/true")
		}},
		{name: "cgroup create + remove", run: func(b *testing.B) {
			c, err := newCgroup(testCgroupParent, nextID())
			if err != nil {
				b.Fatal(err)
			}
			if err := c.destroy(); err != nil {
				b.Fatal(err)
			}
		}},
		{name: "cgroup join (write cgroup.procs)", run: nil}, // below
		{name: "Go hello world: fork+exec", run: func(b *testing.B) { runCmd(b, 0, hello) }},
		{name: "ssi __init -- /bin/true (no namespaces)", run: func(b *testing.B) {
			runCmd(b, 0, ssiBin, nsinit.Command, "--", "/bin/true")
		}},
		{name: "ssi __init -mount-proc, NEWPID|NEWNS", run: func(b *testing.B) {
			runCmd(b, syscall.CLONE_NEWPID|syscall.CLONE_NEWNS, ssiBin, nsinit.Command, "-mount-proc", "--", "/bin/true")
		}},
		{name: "engine: plain job", run: engine(spec(false, false), nil, "plain")},
		{name: "engine: ns+cgroup job (migratable)", run: engine(spec(true, true), rec, "cold")},
		{name: "engine: ns+cgroup job from the pool", run: nil}, // below
	}
	var coldStarts int
	warmSpec := spec(true, true)
	warmSpec.Pool = pool
	warmRun := engine(warmSpec, warmRec, "pool")
	pooled := len(probes) - 1
	probes[pooled].run = func(b *testing.B) {
		t := time.Now()
		warmRun(b)
		d := time.Since(t)
		if !warmRec.sawWarm() {
			coldStarts++
		}
		probes[pooled].d = append(probes[pooled].d, d)
	}
	var joinD durations
	probes[4].run = func(b *testing.B) {
		c, err := newCgroup(testCgroupParent, nextID())
		if err != nil {
			b.Fatal(err)
		}
		t := time.Now()
		if err := c.add(sleeper.Process.Pid); err != nil {
			b.Fatal(err)
		}
		joinD = append(joinD, time.Since(t))
		if err := home.add(sleeper.Process.Pid); err != nil {
			b.Fatal(err)
		}
		if err := c.destroy(); err != nil {
			b.Fatal(err)
		}
	}

	// The pool fills on first use; after that, before and after each
	// pooled start (not timed), wait until it is full, so that the figure
	// is a start from the pool and its refill overlaps no other probe.
	pool.take()
	awaitReady := func() {
		deadline := time.Now().Add(time.Minute)
		for pool.Ready() < 2 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	for range b.N {
		for range n {
			for i, p := range probes {
				if i == pooled {
					awaitReady()
					p.run(b)
					awaitReady()
					continue
				}
				t := time.Now()
				p.run(b)
				p.d = append(p.d, time.Since(t))
			}
		}
	}
	probes[4].d = joinD
	base := probes[0].d.pct(50)
	for _, p := range probes {
		fmt.Printf("%-44s n=%-4d median %7.3f ms   p99 %7.3f ms   x%5.2f fork+exec\n",
			p.name, len(p.d), msOf(p.d.pct(50)), msOf(p.d.pct(99)), float64(p.d.pct(50))/float64(base))
	}
	if coldStarts > 0 {
		fmt.Printf("(%d of the pooled starts found no ready init)\n", coldStarts)
	}
	fmt.Printf("\nthe engine's jobs from Start to Exited (status known; the cleanup continues):\n")
	for _, k := range []string{"plain", "cold", "pool"} {
		d := *toExited[k]
		fmt.Printf("  %-42s n=%-4d median %7.3f ms   p99 %7.3f ms   x%5.2f fork+exec\n",
			k, len(d), msOf(d.pct(50)), msOf(d.pct(99)), float64(d.pct(50))/float64(base))
	}
	for _, r := range []struct {
		what string
		rec  *phaseRecorder
	}{{"the engine's ns+cgroup job", rec}, {"a ns+cgroup job from the pool", warmRec}} {
		fmt.Printf("\nsteps of %s (median time since the previous step):\n", r.what)
		var sum time.Duration
		for _, ph := range r.rec.order {
			d := r.rec.deltas[ph]
			sum += d.pct(50)
			fmt.Printf("  %-42s %7.3f ms   (sum of medians %7.3f ms)\n", ph, msOf(d.pct(50)), msOf(sum))
		}
	}
	cold, warm := toExited["cold"].pct(50), toExited["pool"].pct(50)
	b.ReportMetric(msOf(cold), "migratable-median-ms")
	b.ReportMetric(float64(cold)/float64(base), "migratable-x-fork-exec")
	b.ReportMetric(msOf(warm), "pooled-median-ms")
	b.ReportMetric(float64(warm)/float64(base), "pooled-x-fork-exec")
}

// BenchmarkPoolBackground shows what the pool's background refill costs
// the work around it, and what back-to-back starts get from it:
//
//	go test -run '^$' -bench PoolBackground -benchtime 1x ./internal/rexec/
//
// Per round: a start from the pool (to Exited), at once a fork+exec of
// /bin/true (which overlaps the refill), then, once the pool is full again,
// another (which does not); then a burst of back-to-back starts (twice the
// pool's size), counting those that found no ready init.
func BenchmarkPoolBackground(b *testing.B) {
	needRoot(b)
	n := benchTrials(30)
	ssiBin := ssiBinary(b)
	const size = 4
	pool, err := NewPool(PoolOptions{Size: size, InitPath: ssiBin, CgroupParent: testCgroupParent, Env: testPoolEnv})
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	spec := Spec{Argv: []string{"/bin/true"}, Env: testEnv, Namespaces: true, Cgroup: true,
		CgroupParent: testCgroupParent, InitPath: ssiBin, Pool: pool}
	full := func() {
		pool.activate()
		deadline := time.Now().Add(time.Minute)
		for pool.Ready() < size && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	job := func() (time.Duration, bool) {
		t := time.Now()
		j, err := Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		j.Stdin().Close()
		<-j.Exited()
		d := time.Since(t)
		if st, err := j.Wait(); err != nil || st.ExitCode() != 0 {
			b.Fatalf("%v %v", st, err)
		}
		j.Close()
		return d, j.warm
	}
	timeIt := func(f func()) time.Duration { t := time.Now(); f(); return time.Since(t) }
	var pooled, during, quiet, burst durations
	cold, total := 0, 0
	for range b.N {
		full()
		for range n {
			full()
			d, _ := job()
			pooled = append(pooled, d)
			during = append(during, timeIt(func() { runCmd(b, 0, "/bin/true") }))
			full()
			quiet = append(quiet, timeIt(func() { runCmd(b, 0, "/bin/true") }))
			for range 2 * size {
				d, warm := job()
				burst = append(burst, d)
				total++
				if !warm {
					cold++
				}
			}
		}
	}
	base := quiet.pct(50)
	for _, r := range []struct {
		what string
		d    durations
	}{
		{"fork+exec /bin/true, pool full (baseline)", quiet},
		{"start from the pool, to Exited", pooled},
		{"fork+exec /bin/true during the refill", during},
		{fmt.Sprintf("back-to-back starts, bursts of %d", 2*size), burst},
	} {
		fmt.Printf("%-44s n=%-4d median %7.3f ms   p99 %7.3f ms   x%5.2f fork+exec\n",
			r.what, len(r.d), msOf(r.d.pct(50)), msOf(r.d.pct(99)), float64(r.d.pct(50))/float64(base))
	}
	fmt.Printf("%-44s %d of %d\n", "back-to-back starts without a ready init", cold, total)
}
