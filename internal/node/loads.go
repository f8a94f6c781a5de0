package node

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/load"
	"github.com/ssi-cluster/ssi/internal/procs"
	"github.com/ssi-cluster/ssi/internal/rexec"
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
		for _, p := range j.d.procs.List(jobsFilterAll) {
			pi, err := rexec.ReadProc(p.PID)
			if err != nil {
				continue
			}
			cpu += pi.CPUTime
			if pi.State == "R" {
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
		j.cur.Value = max(j.cur.CPUBusy, j.cur.RunQueue/float64(j.ncpu))
	}
	j.lastCPU, j.lastTime = cpu, now
}

func expNeg(dt, tau time.Duration) float64 { return math.Exp(-float64(dt) / float64(tau)) }

var jobsFilterAll = procs.Filter{}

// fastest returns the least-loaded UP node, as the leader knows from
// heartbeats.
func (d *Daemon) fastest(ctx context.Context) (uint32, error) {
	resp, err := d.loads(ctx)
	if err != nil {
		return 0, err
	}
	if resp.Fastest == 0 {
		return 0, errors.New("no node is UP")
	}
	return resp.Fastest, nil
}

func (d *Daemon) loads(ctx context.Context) (*ssiv1.LoadsResponse, error) {
	if d.isLeader() {
		return d.leaderLoads(), nil
	}
	addr, _ := d.raft.LeaderWithID()
	if addr == "" {
		return nil, fmt.Errorf("node %d: %w: the leader gathers the loads", d.meta.Num, ErrNoLeader)
	}
	resp, err := d.peer(string(addr)).Loads(ctx, connect.NewRequest(&ssiv1.LoadsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("ask the leader at %s for the loads: %w", addr, err)
	}
	return resp.Msg, nil
}

func (d *Daemon) leaderLoads() *ssiv1.LoadsResponse {
	hbs := d.det.Heartbeats(time.Now())
	c := d.fsm.Cluster()
	out := &ssiv1.LoadsResponse{}
	pick := map[int]load.Load{}
	for _, n := range c.SortedNodes() {
		hb, heard := hbs[n.Num]
		nl := &ssiv1.NodeLoad{Num: n.Num, Name: n.Name, State: string(n.State)}
		if heard {
			nl.Load, nl.RunQueue, nl.CpuBusy, nl.Ncpu, nl.MemFree = hb.Load, hb.RunQueue, hb.CPUBusy, uint32(hb.NCPU), hb.MemFree
			if n.State == state.Up {
				pick[int(n.Num)] = load.Load{Value: hb.Load, RunQueue: hb.RunQueue, CPUBusy: hb.CPUBusy, NCPU: hb.NCPU, MemFree: hb.MemFree}
			}
		}
		out.Loads = append(out.Loads, nl)
	}
	out.Fastest = uint32(load.Pick(pick))
	return out
}

func (p *peerService) Loads(ctx context.Context, _ *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error) {
	if !p.d.isLeader() {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %d is not the leader", p.d.meta.Num))
	}
	return connect.NewResponse(p.d.leaderLoads()), nil
}

func (s *controlService) Loads(ctx context.Context, _ *connect.Request[ssiv1.LoadsRequest]) (*connect.Response[ssiv1.LoadsResponse], error) {
	resp, err := s.d.loads(ctx)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewResponse(resp), nil
}
