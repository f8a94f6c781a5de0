package procs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// What migration (internal/migrate) needs of the table: a job to move
// (Movable), taking it out once its copy runs elsewhere (MoveOut), and
// taking in a job restored here (Adopt).

// Movable returns the job cpid of this node for a caller who wants to move
// it, or why it cannot move.
func (m *Manager) Movable(cpid vproc.CPID, c Caller) (*Job, error) {
	j, err := m.get(cpid)
	if err != nil {
		return nil, err
	}
	if !c.May(j.UID) {
		return nil, fmt.Errorf("%w: process %d belongs to uid %d", ErrNotOwner, cpid, j.UID)
	}
	select {
	case <-j.done:
		return nil, fmt.Errorf("%w: %d has already exited", ErrNoSuchProcess, cpid)
	default:
	}
	switch {
	case j.Pinned:
		return nil, fmt.Errorf("%w: process %d is pinned to node %d (started with -p, or by onall)", ErrNotMovable, cpid, m.opts.Node)
	case !j.job.Migratable():
		return nil, fmt.Errorf("%w: process %d has no PID namespace and cgroup of its own (its daemon does not run as root, or could not create its cgroup: see the node's log)", ErrNotMovable, cpid)
	}
	return j, nil
}

// ErrNotMovable: the job cannot be migrated (pinned, not isolated, ...).
var ErrNotMovable = fmt.Errorf("cannot migrate")

// Moving marks j as being moved until settle is called, with moved true
// once the move committed (the job runs on the other node from then on,
// even while this copy still serves its pages) or false if it failed.
// Meanwhile AwaitMove holds signals back: one that reached the frozen copy
// after its dump would be lost with it.
// A job already being moved, or moved, is refused (ErrNotMovable).
func (m *Manager) Moving(j *Job) (settle func(moved bool), err error) {
	ch := make(chan struct{})
	m.mu.Lock()
	busy := j.moving != nil || j.moved.Load()
	if !busy {
		j.moving = ch
	}
	m.mu.Unlock()
	if busy {
		return nil, fmt.Errorf("%w: process %d is being moved already", ErrNotMovable, j.CPID)
	}
	var once sync.Once
	return func(moved bool) {
		once.Do(func() {
			if moved {
				j.moved.Store(true)
			}
			m.mu.Lock()
			if j.moving == ch {
				j.moving = nil
			}
			m.mu.Unlock()
			close(ch)
		})
	}, nil
}

// AwaitMove returns once no move of job cpid is under way on this node (at
// once if none is), or when ctx ends.
func (m *Manager) AwaitMove(ctx context.Context, cpid vproc.CPID) {
	m.mu.Lock()
	var ch chan struct{}
	if j, ok := m.jobs[cpid]; ok {
		ch = j.moving
	}
	m.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// MoveOut forgets a job whose copy runs on another node now and ends this
// copy: its end is not recorded as the job's.
func (m *Manager) MoveOut(j *Job) error {
	j.moved.Store(true)
	m.mu.Lock()
	delete(m.jobs, j.CPID)
	m.mu.Unlock()
	err := j.job.Discard()
	if j.LogPath != "" {
		os.Remove(j.LogPath)
	}
	return err
}

// LogDir is where detached jobs' logs are kept.
func (m *Manager) LogDir() string { return m.logDir() }

// AdoptRequest is a job restored on this node from another one.
type AdoptRequest struct {
	CPID     vproc.CPID
	UID      uint32
	Argv     []string
	Started  time.Time
	Detached bool
	LogPath  string
	Nodes    []uint32
	Process  *rexec.Job
	Net      JobNet // its own network (--net), released when it ends here
}

// Adopt puts a job restored here in the table, under its cluster PID.
func (m *Manager) Adopt(r AdoptRequest) (*Job, error) {
	m.mu.Lock()
	_, dup := m.jobs[r.CPID]
	m.mu.Unlock()
	if dup {
		return nil, fmt.Errorf("adopting process %d: this node has a process of that cluster PID already", r.CPID)
	}
	if r.LogPath != "" && filepath.Dir(r.LogPath) != m.logDir() {
		return nil, fmt.Errorf("adopting process %d: its log %s is not in %s", r.CPID, r.LogPath, m.logDir())
	}
	j := &Job{CPID: r.CPID, UID: r.UID, Argv: r.Argv, Detached: r.Detached, Started: r.Started, LogPath: r.LogPath, Nodes: r.Nodes, job: r.Process, net: r.Net, done: make(chan struct{})}
	m.track(j)
	return j, nil
}

// CgroupParent is where the jobs' cgroups go (rexec.Spec.CgroupParent).
func (m *Manager) CgroupParent() string {
	if m.opts.CgroupParent != "" {
		return m.opts.CgroupParent
	}
	return rexec.DefaultCgroupParent
}

// NewCPID allocates a cluster PID of this node (for a job restarted here
// whose own is taken).
func (m *Manager) NewCPID() (vproc.CPID, error) { return m.next() }

// Has reports whether this node's table holds cpid.
func (m *Manager) Has(cpid vproc.CPID) bool {
	_, err := m.get(cpid)
	return err == nil
}

// InitPid is the host PID of the init of job cpid on this node, 0 if the
// job does not run here (ended, moved away, or has no init of its own).
func (m *Manager) InitPid(cpid vproc.CPID) int {
	j, err := m.get(cpid)
	if err != nil || j.moved.Load() {
		return 0
	}
	select {
	case <-j.done:
		return 0
	default:
	}
	return j.job.InitPid()
}

// Running lists the cluster PIDs of this node's jobs that have not ended.
func (m *Manager) Running() []vproc.CPID {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []vproc.CPID
	for c, j := range m.jobs {
		select {
		case <-j.done:
		default:
			out = append(out, c)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out
}
