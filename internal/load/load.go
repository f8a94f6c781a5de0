// Package load measures how busy this node is, in the spirit of MOSIX, as one
// figure that can be compared between nodes of different sizes, and picks the
// least-loaded node. It reads /proc through an fs.FS (so tests feed it fake
// files) and takes time from its caller; it knows nothing about the network
// or about how loads are exchanged between nodes.
//
// # The figure
//
// Every sample reads three files:
//
//   - /proc/loadavg, fourth field "R/T": R is the number of runnable tasks at
//     this instant, which includes the sampler itself, so R-1 is used;
//   - /proc/stat, first line: busy = total - idle - iowait jiffies, and the
//     busy fraction is Δbusy/Δtotal since the previous sample (the first
//     sample uses the counters since boot); the cpuN lines give NCPU;
//   - /proc/meminfo: MemAvailable (MemFree on old kernels), in bytes.
//
// The run queue and the busy fraction are each smoothed with an exponential
// moving average whose weight depends on the time since the previous sample,
// so irregular sampling still gives a time constant of Tau:
//
//	alpha    = 1 - exp(-Δt / Tau)
//	RunQueue = RunQueue + alpha * (runnable - RunQueue)
//	CPUBusy  = CPUBusy  + alpha * (busy     - CPUBusy)
//	Value    = max(CPUBusy, RunQueue / NCPU)
//
// Value is demand per CPU: 0 is idle, 1 means every CPU is busy, 2 means
// twice as many runnable tasks as CPUs. Both halves are needed: the instant
// run queue misses short bursts between samples, and the busy fraction
// cannot show demand beyond 100%. Dividing by NCPU makes a 2-CPU node with
// one runnable task (0.5) compare correctly with a 1-CPU node running one
// (1.0), as MOSIX does.
package load

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Load is one node's load.
type Load struct {
	Value    float64 // comparable figure: max(CPUBusy, RunQueue/NCPU)
	RunQueue float64 // smoothed number of runnable tasks
	CPUBusy  float64 // smoothed fraction of CPU time busy, 0..1
	NCPU     int     // online CPUs
	MemFree  uint64  // memory available for new work, bytes
}

// DefaultTau is the default time constant of the moving averages.
const DefaultTau = 10 * time.Second

// Sampler keeps the smoothed load of this node. It is safe for concurrent
// use: one goroutine samples (Run or Sample), any number read Current.
type Sampler struct {
	proc fs.FS
	tau  time.Duration

	mu      sync.Mutex
	cur     Load
	last    time.Time // time of the previous sample; zero before the first
	busy    uint64    // busy and total jiffies at the previous sample
	total   uint64
	sampled bool
}

// NewSampler returns a sampler reading proc (nil: the real /proc) with time
// constant tau (0: DefaultTau).
func NewSampler(proc fs.FS, tau time.Duration) *Sampler {
	if proc == nil {
		proc = os.DirFS("/proc")
	}
	if tau <= 0 {
		tau = DefaultTau
	}
	return &Sampler{proc: proc, tau: tau}
}

// Current returns the latest smoothed load. Before the first successful
// Sample it is the zero Load.
func (s *Sampler) Current() Load {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Sample reads /proc once and folds the reading, taken at now, into the
// averages. A sample whose time is not after the previous one only updates
// NCPU and MemFree.
func (s *Sampler) Sample(now time.Time) error {
	runnable, err := readRunnable(s.proc)
	if err != nil {
		return err
	}
	busy, total, ncpu, err := readStat(s.proc)
	if err != nil {
		return err
	}
	mem, err := readMemAvailable(s.proc)
	if err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.NCPU, s.cur.MemFree = ncpu, mem
	if !s.sampled {
		// No history: start from this reading, and from the busy fraction
		// since boot.
		s.cur.RunQueue = runnable
		s.cur.CPUBusy = fraction(busy, total)
	} else {
		dt := now.Sub(s.last)
		if dt <= 0 {
			return nil
		}
		alpha := 1 - math.Exp(-float64(dt)/float64(s.tau))
		s.cur.RunQueue += alpha * (runnable - s.cur.RunQueue)
		if total > s.total && busy >= s.busy {
			s.cur.CPUBusy += alpha * (fraction(busy-s.busy, total-s.total) - s.cur.CPUBusy)
		}
	}
	s.sampled, s.last, s.busy, s.total = true, now, busy, total
	s.cur.Value = max(s.cur.CPUBusy, s.cur.RunQueue/float64(max(ncpu, 1)))
	return nil
}

// Run samples now and then every interval until ctx is done, which it
// returns. A failing sample is returned at once: /proc does not come and go.
func (s *Sampler) Run(ctx context.Context, interval time.Duration) error {
	if err := s.Sample(time.Now()); err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			if err := s.Sample(now); err != nil {
				return err
			}
		}
	}
}

func fraction(part, whole uint64) float64 {
	if whole == 0 {
		return 0
	}
	return min(float64(part)/float64(whole), 1)
}

// readRunnable returns the instant number of runnable tasks other than the
// reader.
func readRunnable(proc fs.FS) (float64, error) {
	b, err := fs.ReadFile(proc, "loadavg")
	if err != nil {
		return 0, fmt.Errorf("reading the run queue: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return 0, fmt.Errorf("reading the run queue: /proc/loadavg %q has fewer than 4 fields", b)
	}
	rs, _, ok := strings.Cut(f[3], "/")
	r, err := strconv.ParseUint(rs, 10, 32)
	if !ok || err != nil {
		return 0, fmt.Errorf("reading the run queue: /proc/loadavg field %q is not R/T", f[3])
	}
	if r > 0 {
		r-- // ourselves
	}
	return float64(r), nil
}

// readStat returns the busy and total jiffies of all CPUs and the number of
// CPUs from /proc/stat.
func readStat(proc fs.FS) (busy, total uint64, ncpu int, err error) {
	b, err := fs.ReadFile(proc, "stat")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("reading CPU times: %w", err)
	}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			if _, err := strconv.Atoi(f[0][3:]); err == nil {
				ncpu++
			}
			continue
		}
		// user nice system idle iowait irq softirq steal [guest guest_nice];
		// guest time is already counted in user and nice.
		if len(f) < 5 {
			return 0, 0, 0, fmt.Errorf("reading CPU times: /proc/stat cpu line %q is too short", sc.Text())
		}
		var idle uint64
		for i, s := range f[1:min(len(f), 9)] {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, 0, 0, fmt.Errorf("reading CPU times: /proc/stat cpu field %q: %w", s, err)
			}
			total += v
			if i == 3 || i == 4 { // idle, iowait
				idle += v
			}
		}
		busy, found = total-idle, true
	}
	if !found {
		return 0, 0, 0, errors.New("reading CPU times: /proc/stat has no cpu line")
	}
	if ncpu == 0 {
		ncpu = 1
	}
	return busy, total, ncpu, nil
}

// readMemAvailable returns MemAvailable (or MemFree) in bytes.
func readMemAvailable(proc fs.FS) (uint64, error) {
	b, err := fs.ReadFile(proc, "meminfo")
	if err != nil {
		return 0, fmt.Errorf("reading free memory: %w", err)
	}
	var free, avail uint64
	var haveFree, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 2 && f[2] == "kB" {
			v *= 1024
		}
		switch f[0] {
		case "MemAvailable:":
			avail, haveAvail = v, true
		case "MemFree:":
			free, haveFree = v, true
		}
	}
	switch {
	case haveAvail:
		return avail, nil
	case haveFree:
		return free, nil
	}
	return 0, errors.New("reading free memory: /proc/meminfo has neither MemAvailable nor MemFree")
}

// Pick returns the number of the least-loaded node in loads, or 0 if loads is
// empty. Values are compared in hundredths (so that noise does not decide
// between nodes that are equally idle); among equal values the node with
// more free memory wins, then the lowest node number. A NaN value counts as
// infinitely loaded.
func Pick(loads map[int]Load) int {
	nodes := make([]int, 0, len(loads))
	for n := range loads {
		nodes = append(nodes, n)
	}
	if len(nodes) == 0 {
		return 0
	}
	slices.Sort(nodes)
	key := func(l Load) float64 {
		if math.IsNaN(l.Value) {
			return math.Inf(1)
		}
		return math.Round(l.Value * 100)
	}
	best := nodes[0]
	for _, n := range nodes[1:] {
		a, b := loads[n], loads[best]
		ka, kb := key(a), key(b)
		if ka < kb || (ka == kb && a.MemFree > b.MemFree) {
			best = n
		}
	}
	return best
}
