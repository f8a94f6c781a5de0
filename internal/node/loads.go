package node

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/load"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/state"
)

// Load sources.
const (
	LoadMachine = "machine" // the whole machine (/proc/loadavg, /proc/stat): one node per machine
	LoadJobs    = "jobs"    // only the processes this node runs: nodes sharing a kernel (ssi up)
)

// loadSource gives the node's current load for its heartbeats.
type loadSource interface {
	Current() load.Load
	Run(ctx context.Context, interval time.Duration) error
}

func newLoadSource(kind string, d *Daemon) (loadSource, error) {
	switch kind {
	case "", LoadMachine:
		return load.NewSampler(os.DirFS("/proc"), 5*time.Second), nil
	case LoadJobs:
		return &jobsLoad{d: d, ncpu: runtime.NumCPU(), tau: 3 * time.Second}, nil
	}
	return nil, fmt.Errorf("unknown load source %q (machine or jobs)", kind)
}

// jobsLoad measures the load of the processes this node runs: their CPU
// use and how many are runnable, averaged like internal/load does for the
// whole machine. Nodes that share one kernel all see the same machine-wide
// figures, so this is what tells them apart.
type jobsLoad struct {
	d    *Daemon
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
	if j.d.procs != nil {
		// List has read each process's /proc entry already.
		for _, p := range j.d.procs.List(jobsFilterAll) {
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
		a := 1 - expNeg(dt, j.tau)
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
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

func expNeg(dt, tau time.Duration) float64 { return math.Exp(-float64(dt) / float64(tau)) }

var jobsFilterAll = procs.Filter{}

// fastest returns the least-loaded UP node, as the leader knows from
// heartbeats.
func (d *Daemon) fastest(ctx context.Context) (uint32, error) {
	resp, err := d.loads(ctx, true)
	if err != nil {
		return 0, err
	}
	if resp.Fastest == 0 {
		return 0, errors.New("no node is UP")
	}
	return resp.Fastest, nil
}

func (d *Daemon) loads(ctx context.Context, place bool) (*ssiv1.LoadsResponse, error) {
	if d.isLeader() {
		return d.leaderLoads(place), nil
	}
	addr, _ := d.raft.LeaderWithID()
	if addr == "" {
		return nil, fmt.Errorf("node %d: %w: the leader gathers the loads", d.meta.Num, ErrNoLeader)
	}
	resp, err := d.peer(string(addr)).Loads(ctx, connect.NewRequest(&ssiv1.LoadsRequest{Place: place}))
	if err != nil {
		return nil, fmt.Errorf("ask the leader at %s for the loads: %w", addr, err)
	}
	return resp.Msg, nil
}

// placements remembers the jobs the leader recently sent to each node:
// measured loads are averages over seconds, so without this a burst of
// `ssi run` would all land on the node that was idle a moment ago.
type placements struct {
	mu   sync.Mutex
	when map[uint32][]time.Time
}

// placementMemory is how long a placement counts: about the time the
// node's averaged load takes to show the new job.
const placementMemory = 5 * time.Second

func (p *placements) recent(num uint32, now time.Time) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.when == nil {
		p.when = map[uint32][]time.Time{}
	}
	var keep []time.Time
	for _, t := range p.when[num] {
		if now.Sub(t) < placementMemory {
			keep = append(keep, t)
		}
	}
	p.when[num] = keep
	return float64(len(keep))
}

func (p *placements) add(num uint32, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.when == nil {
		p.when = map[uint32][]time.Time{}
	}
	p.when[num] = append(p.when[num], now)
}

func (d *Daemon) leaderLoads(place bool) *ssiv1.LoadsResponse {
	now := time.Now()
	hbs := d.det.Heartbeats(now)
	c := d.fsm.Cluster()
	out := &ssiv1.LoadsResponse{}
	pick := map[int]load.Load{}
	for _, n := range c.SortedNodes() {
		hb, heard := hbs[n.Num]
		nl := &ssiv1.NodeLoad{Num: n.Num, Name: n.Name, State: string(n.State)}
		if heard {
			nl.Load, nl.RunQueue, nl.CpuBusy, nl.Ncpu, nl.MemFree = hb.Load, hb.RunQueue, hb.CPUBusy, uint32(hb.NCPU), hb.MemFree
			if n.State == state.Up {
				v := hb.Load
				if hb.NCPU > 0 {
					v += d.placed.recent(n.Num, now) / float64(hb.NCPU)
				}
				pick[int(n.Num)] = load.Load{Value: v, RunQueue: hb.RunQueue, CPUBusy: hb.CPUBusy, NCPU: hb.NCPU, MemFree: hb.MemFree}
			}
		}
		out.Loads = append(out.Loads, nl)
	}
	out.Fastest = uint32(load.Pick(pick))
	if place && out.Fastest != 0 {
		d.placed.add(out.Fastest, now)
	}
	return out
}

func (p *peerService) Loads(ctx context.Context, req *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error) {
	if !p.d.isLeader() {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d is not the leader", p.d.meta.Num))
	}
	return connect.NewResponse(p.d.leaderLoads(req.Msg.Place)), nil
}

func (s *controlService) Loads(ctx context.Context, _ *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error) {
	resp, err := s.d.loads(ctx, false)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewResponse(resp), nil
}
