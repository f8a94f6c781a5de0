package load

import (
	"context"
	"errors"
	"math"
	"testing"
	"testing/fstest"
	"time"
)

// fakeProc builds /proc contents: runnable is R in loadavg (including the
// sampler), busy/idle are the cumulative jiffies of the cpu line.
func fakeProc(runnable int, user, idle, iowait uint64, ncpu int, availKB uint64) fstest.MapFS {
	stat := "cpu  " + u(user) + " 0 0 " + u(idle) + " " + u(iowait) + " 0 0 0 0 0\n"
	for i := range ncpu {
		stat += "cpu" + u(uint64(i)) + " 1 0 0 1 0 0 0 0 0 0\n"
	}
	stat += "intr 12345\nctxt 999\nbtime 1700000000\nprocesses 42\nprocs_running 1\n"
	return fstest.MapFS{
		"loadavg": {Data: []byte("0.50 0.40 0.30 " + u(uint64(runnable)) + "/345 6789\n")},
		"stat":    {Data: []byte(stat)},
		"meminfo": {Data: []byte("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    " + u(availKB) + " kB\n")},
	}
}

func u(v uint64) string {
	b := []byte{}
	if v == 0 {
		return "0"
	}
	for v > 0 {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
	}
	return string(b)
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestFirstSample(t *testing.T) {
	// 3 runnable besides the sampler, 4 CPUs, busy 25% since boot.
	s := NewSampler(fakeProc(4, 100, 250, 50, 4, 2048), time.Second)
	if (s.Current() != Load{}) {
		t.Fatalf("Current before any sample = %+v, want zero", s.Current())
	}
	if err := s.Sample(time.Unix(1000, 0)); err != nil {
		t.Fatal(err)
	}
	got := s.Current()
	want := Load{Value: 0.75, RunQueue: 3, CPUBusy: 0.25, NCPU: 4, MemFree: 2048 * 1024}
	if !near(got.Value, want.Value) || !near(got.RunQueue, want.RunQueue) || !near(got.CPUBusy, want.CPUBusy) ||
		got.NCPU != want.NCPU || got.MemFree != want.MemFree {
		t.Errorf("first sample %+v, want %+v", got, want)
	}
}

func TestExponentialAverage(t *testing.T) {
	tau := 10 * time.Second
	proc := fakeProc(1, 0, 1000, 0, 2, 1) // idle: 0 runnable, 0% busy
	s := NewSampler(proc, tau)
	t0 := time.Unix(1000, 0)
	if err := s.Sample(t0); err != nil {
		t.Fatal(err)
	}
	// 10 s later: 5 more runnable tasks, and the CPUs were fully busy.
	proc2 := fakeProc(5, 2000, 1000, 0, 2, 1)
	s.proc = proc2
	if err := s.Sample(t0.Add(tau)); err != nil {
		t.Fatal(err)
	}
	alpha := 1 - math.Exp(-1)
	got := s.Current()
	if !near(got.RunQueue, 4*alpha) || !near(got.CPUBusy, alpha) {
		t.Errorf("after one time constant: RunQueue %v CPUBusy %v, want %v and %v", got.RunQueue, got.CPUBusy, 4*alpha, alpha)
	}
	if !near(got.Value, max(alpha, 4*alpha/2)) {
		t.Errorf("Value %v, want max(CPUBusy, RunQueue/NCPU) = %v", got.Value, 2*alpha)
	}

	// A sample at the same instant changes nothing in the averages.
	s.proc = fakeProc(100, 5000, 1000, 0, 2, 1)
	if err := s.Sample(t0.Add(tau)); err != nil {
		t.Fatal(err)
	}
	if again := s.Current(); !near(again.RunQueue, got.RunQueue) || !near(again.CPUBusy, got.CPUBusy) {
		t.Errorf("a sample with Δt=0 moved the averages: %+v -> %+v", got, again)
	}

	// Converges on a steady load: 4 runnable, CPUs half busy.
	now := t0.Add(tau)
	user, idle := uint64(2000), uint64(1000)
	for range 200 {
		now = now.Add(time.Second)
		user, idle = user+100, idle+100
		s.proc = fakeProc(5, user, idle, 0, 2, 1)
		if err := s.Sample(now); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Current(); math.Abs(got.RunQueue-4) > 1e-3 || math.Abs(got.CPUBusy-0.5) > 1e-3 {
		t.Errorf("steady state %+v, want RunQueue 4, CPUBusy 0.5", got)
	}
}

func TestCounterWrapIsIgnored(t *testing.T) {
	s := NewSampler(fakeProc(1, 500, 500, 0, 1, 1), time.Second)
	t0 := time.Unix(0, 0)
	if err := s.Sample(t0); err != nil {
		t.Fatal(err)
	}
	before := s.Current().CPUBusy
	s.proc = fakeProc(1, 10, 10, 0, 1, 1) // counters went backwards
	if err := s.Sample(t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := s.Current().CPUBusy; !near(got, before) {
		t.Errorf("CPUBusy %v after counters went backwards, want it unchanged at %v", got, before)
	}
}

func TestMemFreeFallback(t *testing.T) {
	p := fakeProc(1, 1, 1, 0, 1, 1)
	p["meminfo"] = &fstest.MapFile{Data: []byte("MemTotal: 100 kB\nMemFree: 7 kB\n")}
	s := NewSampler(p, 0)
	if err := s.Sample(time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	if got := s.Current().MemFree; got != 7*1024 {
		t.Errorf("MemFree %d, want %d", got, 7*1024)
	}
}

func TestMalformedProc(t *testing.T) {
	for name, mutate := range map[string]func(fstest.MapFS){
		"no loadavg":     func(p fstest.MapFS) { delete(p, "loadavg") },
		"short loadavg":  func(p fstest.MapFS) { p["loadavg"] = &fstest.MapFile{Data: []byte("0.1 0.2\n")} },
		"bad run queue":  func(p fstest.MapFS) { p["loadavg"] = &fstest.MapFile{Data: []byte("0 0 0 x/y 1\n")} },
		"no cpu line":    func(p fstest.MapFS) { p["stat"] = &fstest.MapFile{Data: []byte("intr 1\n")} },
		"bad cpu field":  func(p fstest.MapFS) { p["stat"] = &fstest.MapFile{Data: []byte("cpu 1 2 x 4 5\n")} },
		"short cpu line": func(p fstest.MapFS) { p["stat"] = &fstest.MapFile{Data: []byte("cpu 1 2\n")} },
		"no memory":      func(p fstest.MapFS) { p["meminfo"] = &fstest.MapFile{Data: []byte("Foo: 1 kB\n")} },
	} {
		t.Run(name, func(t *testing.T) {
			p := fakeProc(1, 1, 1, 0, 1, 1)
			mutate(p)
			s := NewSampler(p, 0)
			if err := s.Sample(time.Unix(0, 0)); err == nil {
				t.Errorf("Sample accepted it; Current %+v", s.Current())
			}
		})
	}
}

func TestRealProc(t *testing.T) {
	s := NewSampler(nil, 0)
	if err := s.Sample(time.Now()); err != nil {
		t.Fatalf("sampling the real /proc: %v", err)
	}
	l := s.Current()
	if l.NCPU < 1 || l.MemFree == 0 || l.CPUBusy < 0 || l.CPUBusy > 1 || l.RunQueue < 0 || l.Value < 0 {
		t.Errorf("implausible load of this machine: %+v", l)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	s := NewSampler(fakeProc(2, 1, 1, 0, 1, 1), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	if s.Current().NCPU != 1 {
		t.Error("Run did not sample before waiting")
	}
}

func TestPick(t *testing.T) {
	for _, tc := range []struct {
		name  string
		loads map[int]Load
		want  int
	}{
		{"empty", nil, 0},
		{"one", map[int]Load{7: {Value: 3}}, 7},
		{"least loaded", map[int]Load{1: {Value: 0.9}, 2: {Value: 0.2}, 3: {Value: 0.5}}, 2},
		{"tie goes to more memory", map[int]Load{1: {Value: 0.5, MemFree: 10}, 2: {Value: 0.5, MemFree: 20}, 3: {Value: 0.5, MemFree: 5}}, 2},
		{"tie goes to lowest node", map[int]Load{9: {Value: 0.5}, 4: {Value: 0.5}, 6: {Value: 0.5}}, 4},
		{"noise below 1/100 is a tie", map[int]Load{5: {Value: 0.1004}, 3: {Value: 0.0996}, 8: {Value: 0.1001}}, 3},
		{"hundredths decide", map[int]Load{1: {Value: 0.12}, 2: {Value: 0.11}}, 2},
		{"NaN never wins", map[int]Load{1: {Value: math.NaN()}, 2: {Value: 50}}, 2},
		{"all NaN", map[int]Load{3: {Value: math.NaN()}, 2: {Value: math.NaN()}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Deterministic despite map iteration order.
			for range 20 {
				if got := Pick(tc.loads); got != tc.want {
					t.Fatalf("Pick = %d, want %d", got, tc.want)
				}
			}
		})
	}
}
