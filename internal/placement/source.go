package placement

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ssi-cluster/ssi/internal/load"
	"github.com/ssi-cluster/ssi/internal/procs"
)

// Load sources.
const (
	LoadMachine = "machine" // the whole machine (/proc/loadavg, /proc/stat): one node per machine
	LoadJobs    = "jobs"    // only the processes this node runs: nodes sharing a kernel (ssi up)
)

// Source gives the node's current load for its heartbeats.
type Source interface {
	Current() load.Load
	Run(ctx context.Context, interval time.Duration) error
}

// NewSource returns the load source named kind; jobs lists this node's
// processes (for LoadJobs).
func NewSource(kind string, jobs *procs.Manager) (Source, error) {
	switch kind {
	case "", LoadMachine:
		return load.NewSampler(os.DirFS("/proc"), 5*time.Second), nil
	case LoadJobs:
		return &jobsLoad{jobs: jobs, ncpu: runtime.NumCPU(), tau: 3 * time.Second}, nil
	}
	return nil, fmt.Errorf("unknown load source %q (machine or jobs)", kind)
}

// jobsLoad measures the load of the processes this node runs: their CPU
// use and how many are runnable, averaged like internal/load does for the
// whole machine. Nodes that share one kernel all see the same machine-wide
// figures, so this is what tells them apart.
type jobsLoad struct {
	jobs *procs.Manager
	ncpu int
	tau  time.Duration

	mu       sync.Mutex
	cur      load.Load
	lastCPU  time.Duration
	lastTime time.Time
}

func (j *jobsLoad) Current() load.Load {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cur
}

func (j *jobsLoad) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			j.sample(now)
		}
	}
}

func (j *jobsLoad) sample(now time.Time) {
	var cpu time.Duration
	running := 0
	if j.jobs != nil {
		// List has read each process's /proc entry already.
		for _, p := range j.jobs.List(procs.Filter{}) {
			cpu += p.Time
			if p.State == "R" {
				running++
			}
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.lastTime.IsZero() {
		dt := now.Sub(j.lastTime)
		busy := 0.0
		if d := cpu - j.lastCPU; d > 0 && dt > 0 {
			busy = min(1, float64(d)/float64(dt)/float64(j.ncpu))
		}
		a := 1 - math.Exp(-float64(dt)/float64(j.tau))
		j.cur.CPUBusy += a * (busy - j.cur.CPUBusy)
		j.cur.RunQueue += a * (float64(running) - j.cur.RunQueue)
		j.cur.NCPU = j.ncpu
		j.cur.MemFree = memAvailable()
		j.cur.Value = max(j.cur.CPUBusy, j.cur.RunQueue/float64(j.ncpu))
	}
	j.lastCPU, j.lastTime = cpu, now
}

// memAvailable is MemAvailable from /proc/meminfo, in bytes (0 if unknown).
func memAvailable() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
