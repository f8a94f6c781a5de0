// Package procs owns this node's share of the single process space: the
// jobs it runs, named by cluster PIDs it allocates (internal/vproc), their
// lifecycle, who may see, signal and wait for them, and the exit status of
// detached jobs until someone waits. Processes are started and observed
// through internal/rexec. It knows nothing about RPC or other nodes.
package procs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ssi-cluster/ssi/internal/rexec"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// Errors for callers to map to exit codes.
var (
	ErrNoSuchProcess = errors.New("no such process")
	ErrNotOwner      = errors.New("operation not permitted")
	ErrNotDetached   = errors.New("not a detached job")
	// ErrMoved: the process moved to another node while the caller
	// waited; ask where it runs now.
	ErrMoved = errors.New("the process moved to another node")
)

// seqReserve is how many CPIDs are reserved per write of the sequence file.
const seqReserve = 1000

// maxExited is how many exited, unwaited detached jobs are remembered.
const maxExited = 1000

// DenyEnv lists environment variables never passed to a process started
// elsewhere: they name local resources (agents, displays, sockets) or
// inject code into the process (the dynamic loader's variables).
var DenyEnv = []string{
	"LD_*", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY",
	"DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "XDG_SESSION_ID", "DISPLAY", "XAUTHORITY",
	"WAYLAND_DISPLAY", "TMUX", "TMUX_PANE", "STY", "WINDOWID", "SSI_SOCKET", "GPG_AGENT_INFO",
}

// FilterEnv removes DenyEnv from env.
func FilterEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		denied := false
		for _, d := range DenyEnv {
			if p, ok := strings.CutSuffix(d, "*"); ok && strings.HasPrefix(k, p) || k == d {
				denied = true
				break
			}
		}
		if !denied && k != "" {
			out = append(out, kv)
		}
	}
	return out
}

// Caller is who asks.
type Caller struct {
	UID, GID uint32
	Groups   []uint32
}

// May reports whether the caller may act on a process owned by uid.
func (c Caller) May(uid uint32) bool { return c.UID == 0 || c.UID == uid }

// Options configure a Manager.
type Options struct {
	Node     int
	DataDir  string // the sequence file and detached jobs' logs live here
	InitPath string // binary that runs nsinit (default /proc/self/exe)
	Log      *slog.Logger
	// CgroupParent is where the jobs' cgroups go (rexec.Spec.CgroupParent;
	// "" for rexec.DefaultCgroupParent). Daemons sharing a machine need
	// parents of their own: a job's cgroup is named after its CPID.
	CgroupParent string
	// PoolSize is how many inits a root daemon keeps ready for migratable
	// jobs (rexec.Pool; they start once the first such job comes): 0 means
	// rexec.DefaultPoolSize, a negative number none.
	PoolSize int
	// JobRoot, if set (here or with SetJobRoot), says where this node's jobs get their root
	// directory (cfs.FS.JobRoot): "" for the node's own, a path for that
	// tree as their / (rexec.Spec.Root); an error refuses the start.
	JobRoot func() (string, error)
	// Net gives a job started with StartRequest.Net its network
	// (internal/jobnet): nil, such jobs are refused.
	Net func(ctx context.Context, cpid vproc.CPID) (JobNet, error)
}

// JobNet is the network of a job of its own (ssi run --net): its address
// is held from Options.Net until Release.
type JobNet interface {
	// Configure gives the job's network namespace (the init's, host PID
	// initPid) its interfaces, before the command runs.
	Configure(initPid int) error
	// Release gives the address back: the job ended here, or did not
	// start. Not called for a job that moved away (its address went
	// with it).
	Release()
}

// ErrNoNet: this node cannot give a job a network of its own.
var ErrNoNet = errors.New("--net is not available")

// Manager is the node's process table.
type Manager struct {
	opts  Options
	alloc *vproc.Allocator
	root  bool
	pool  *rexec.Pool // nil: every migratable job starts its own init

	mu        sync.Mutex
	reserved  uint64
	jobs      map[vproc.CPID]*Job
	cleaning  map[*rexec.Job]struct{} // ended, the engine's cleanup still under way
	exited    []vproc.CPID            // detached jobs that ended, oldest first
	forgotten func(vproc.CPID)        // see OnForget

	started, failed atomic.Uint64 // jobs Start started and could not start (metrics.go)
}

// Job is one process tree started through ssi.
type Job struct {
	CPID     vproc.CPID
	UID      uint32
	Argv     []string
	Detached bool
	Pinned   bool
	Started  time.Time
	LogPath  string
	Nodes    []uint32 // the nodes it may run on, also after moves (empty: any)

	net    JobNet // its own network (--net), or nil
	job    *rexec.Job
	moved  atomic.Bool   // its copy runs on another node now (MoveOut, or the move's commit)
	moving chan struct{} // closed when the move under way settles; guarded by Manager.mu
	done   chan struct{}
	status rexec.Status
	err    error
}

// NewManager loads the CPID sequence and returns the table.
func NewManager(o Options) (*Manager, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	m := &Manager{opts: o, jobs: map[vproc.CPID]*Job{}, cleaning: map[*rexec.Job]struct{}{}, root: os.Geteuid() == 0}
	last := uint64(0)
	if b, err := os.ReadFile(m.seqPath()); err == nil {
		last, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if last > vproc.MaxSeq {
			last = 0
		}
	}
	alloc, err := vproc.NewAllocator(o.Node, last)
	if err != nil {
		return nil, err
	}
	m.alloc, m.reserved = alloc, last
	if err := os.MkdirAll(m.logDir(), 0o700); err != nil {
		return nil, fmt.Errorf("create job log directory: %w", err)
	}
	if m.root {
		// A daemon of this node that died left its jobs (and any job it
		// was migrating, frozen): they are nobody's now.
		rexec.EndLeftovers(o.CgroupParent, o.Log)
	}
	if m.root && o.PoolSize >= 0 {
		pool, err := rexec.NewPool(rexec.PoolOptions{Size: o.PoolSize, InitPath: o.InitPath, Log: o.Log, CgroupParent: o.CgroupParent})
		if err != nil {
			o.Log.Warn("no ready inits: every migratable job starts its own", "err", err)
		} else {
			m.pool = pool
		}
	}
	return m, nil
}

func (m *Manager) seqPath() string { return filepath.Join(m.opts.DataDir, "cpid-seq") }
func (m *Manager) logDir() string  { return filepath.Join(m.opts.DataDir, "jobs") }

// Namespaced reports whether jobs get their own PID namespace and cgroup
// (and so can be migrated later): only when the daemon runs as root.
func (m *Manager) Namespaced() bool { return m.root }

// next allocates a CPID, persisting the reservation ahead of use.
func (m *Manager) next() (vproc.CPID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.alloc.Next(func(c vproc.CPID) bool { _, used := m.jobs[c]; return used })
	if err != nil {
		return 0, err
	}
	_, seq := vproc.Split(c)
	if seq > m.reserved || seq+seqReserve < m.reserved {
		m.reserved = min(seq+seqReserve, vproc.MaxSeq)
		if err := os.WriteFile(m.seqPath(), []byte(strconv.FormatUint(m.reserved, 10)+"\n"), 0o600); err != nil {
			return 0, fmt.Errorf("persist the cluster PID sequence: %w", err)
		}
	}
	return c, nil
}

// StartRequest is a process to start on this node.
type StartRequest struct {
	Argv       []string
	Env        []string // filtered with FilterEnv
	Dir        string
	Caller     Caller
	TTY        bool
	Rows, Cols uint16
	Detach     bool
	Pin        bool
	Hostname   string
	Nodes      []uint32 // the nodes the job may run on (empty: any)
	Net        bool     // a network namespace and address of its own (Options.Net)
}

// Start runs a job. The caller of an attached job must read its output,
// then call Finish; a detached job's output goes to its log.
func (m *Manager) Start(ctx context.Context, r StartRequest) (*Job, error) {
	if len(r.Argv) == 0 {
		return nil, errors.New("no command given")
	}
	jobRoot := ""
	if m.opts.JobRoot != nil && m.root {
		r, err := m.opts.JobRoot()
		if err != nil {
			return nil, err
		}
		jobRoot = r
	}
	if r.Net {
		switch {
		case r.Pin:
			return nil, fmt.Errorf("%w for a pinned job: its network moves with it, and a pinned job never moves", ErrNoNet)
		case !m.root:
			return nil, fmt.Errorf("%w: the daemon of node %d is not root (a job's network namespace needs root)", ErrNoNet, m.opts.Node)
		case m.opts.Net == nil:
			return nil, fmt.Errorf("%w on node %d", ErrNoNet, m.opts.Node)
		}
	}
	cpid, err := m.next()
	if err != nil {
		return nil, err
	}
	spec := rexec.Spec{
		ID:   cpid.String(),
		Argv: r.Argv, Env: FilterEnv(r.Env), Dir: r.Dir,
		UID: r.Caller.UID, GID: r.Caller.GID, Groups: r.Caller.Groups,
		TTY: r.TTY, Rows: r.Rows, Cols: r.Cols,
		// A pinned job never migrates, so it needs neither the PID
		// namespace nor the cgroup migration relies on: it starts as fast
		// as a plain fork+exec (docs/PROCESSES.md).
		Namespaces: m.root && !r.Pin, Cgroup: m.root && !r.Pin, InitPath: m.opts.InitPath,
		CgroupParent: m.opts.CgroupParent, Pool: m.pool,
	}
	if jobRoot != "" {
		spec.Root, spec.Dir = jobRoot, DirInRoot(jobRoot, r.Dir)
	}
	j := &Job{CPID: cpid, UID: r.Caller.UID, Argv: r.Argv, Detached: r.Detach, Pinned: r.Pin, Nodes: r.Nodes, done: make(chan struct{})}
	if r.Detach {
		j.LogPath = filepath.Join(m.logDir(), cpid.String()+".log")
		f, err := os.OpenFile(j.LogPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create the job's log: %w", err)
		}
		f.Close()
		spec.LogPath = j.LogPath
		spec.TTY = false
	}
	if r.Net {
		if j.net, err = m.opts.Net(ctx, cpid); err != nil {
			if j.LogPath != "" {
				os.Remove(j.LogPath)
			}
			return nil, err
		}
		spec.Net = j.net.Configure
	}
	rj, err := rexec.Start(ctx, spec)
	if err != nil {
		m.failed.Add(1)
		if j.LogPath != "" {
			os.Remove(j.LogPath)
		}
		if j.net != nil {
			j.net.Release()
		}
		return nil, err
	}
	m.started.Add(1)
	j.job, j.Started = rj, time.Now()
	m.track(j)
	return j, nil
}

// SetNet sets Options.Net (the daemon's wiring makes the jobs' networks
// after the process table). Call it before the first Start.
func (m *Manager) SetNet(f func(ctx context.Context, cpid vproc.CPID) (JobNet, error)) {
	m.opts.Net = f
}

// SetJobRoot sets Options.JobRoot (the daemon's wiring makes the cluster
// filesystem after the process table). Call it before the first Start.
func (m *Manager) SetJobRoot(f func() (string, error)) { m.opts.JobRoot = f }

// DirInRoot is the working directory, inside root, of a job asked to run
// in dir: dir beneath root (the caller works in the cluster filesystem
// where this node mounts it) is taken relative to root; another dir that
// exists in root is kept (/tmp, /home/u: the same path in the cluster
// root); anything else becomes "/", as chroot(1) does.
func DirInRoot(root, dir string) string {
	if dir == "" {
		return "/"
	}
	dir = filepath.Clean(dir)
	if rel, err := filepath.Rel(root, dir); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return filepath.Join("/", rel)
	}
	if st, err := os.Stat(filepath.Join(root, dir)); err == nil && st.IsDir() {
		return dir
	}
	return "/"
}

// track puts a started (or adopted) job in the table and records its end.
func (m *Manager) track(j *Job) {
	cpid, rj := j.CPID, j.job
	m.mu.Lock()
	m.jobs[cpid] = j
	m.cleaning[rj] = struct{}{}
	m.mu.Unlock()
	go func() {
		<-rj.Done()
		m.mu.Lock()
		delete(m.cleaning, rj)
		m.mu.Unlock()
	}()
	go func() {
		if j.Detached {
			// Its log is complete only once the engine is done.
			j.status, j.err = rj.Wait()
		} else {
			// The stream can end with the status as soon as it is known;
			// the engine's cleanup (the init's exit, the cgroup's
			// removal) goes on in the background.
			j.status, j.err = rj.ExitStatus()
		}
		close(j.done)
		if j.moved.Load() {
			rj.Close() // it runs elsewhere now: MoveOut forgot it
			return
		}
		if j.net != nil {
			j.net.Release()
		}
		if j.Detached {
			rj.Close()
			m.mu.Lock()
			m.exited = append(m.exited, cpid)
			var evicted []vproc.CPID
			for len(m.exited) > maxExited {
				delete(m.jobs, m.exited[0])
				evicted = append(evicted, m.exited[0])
				m.exited = m.exited[1:]
			}
			m.mu.Unlock()
			for _, c := range evicted {
				m.forget(c)
			}
		}
	}()
}

// OnForget sets what is told of each job this node forgets once it has
// ended and been waited for (or its stream ended): not of one that moved
// away. Migration drops the job's location record then.
func (m *Manager) OnForget(fn func(vproc.CPID)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgotten = fn
}

func (m *Manager) forget(cpid vproc.CPID) {
	m.mu.Lock()
	fn := m.forgotten
	m.mu.Unlock()
	if fn != nil {
		fn(cpid)
	}
}

// Process gives the streams of an attached job.
func (j *Job) Process() *rexec.Job { return j.job }

// Done is closed when the job's top process has ended.
func (j *Job) Done() <-chan struct{} { return j.done }

// Status is the job's exit status; valid after Done.
func (j *Job) Status() (rexec.Status, error) { return j.status, j.err }

// Finish removes an attached job from the table after its stream ended.
func (m *Manager) Finish(j *Job) {
	<-j.done
	j.job.Close()
	m.mu.Lock()
	mine := m.jobs[j.CPID] == j
	if mine {
		delete(m.jobs, j.CPID)
	}
	m.mu.Unlock()
	if mine && !j.moved.Load() {
		m.forget(j.CPID)
	}
}

func (m *Manager) get(cpid vproc.CPID) (*Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[cpid]
	if !ok {
		return nil, fmt.Errorf("%w: %d", ErrNoSuchProcess, cpid)
	}
	return j, nil
}

// Signal sends sig to a job's whole process group.
func (m *Manager) Signal(cpid vproc.CPID, sig syscall.Signal, c Caller) error {
	j, err := m.get(cpid)
	if err != nil {
		return err
	}
	if !c.May(j.UID) {
		return fmt.Errorf("%w: process %d belongs to uid %d", ErrNotOwner, cpid, j.UID)
	}
	if j.moved.Load() {
		// The copy that ends here would swallow it: the caller asks
		// the node the job runs on now.
		return fmt.Errorf("%w: %d runs on another node now", ErrNoSuchProcess, cpid)
	}
	select {
	case <-j.done:
		return fmt.Errorf("%w: %d has already exited", ErrNoSuchProcess, cpid)
	default:
	}
	return j.job.Signal(sig)
}

// Wait blocks until a detached job ends and returns its status; the job is
// then forgotten.
func (m *Manager) Wait(ctx context.Context, cpid vproc.CPID, c Caller) (rexec.Status, error) {
	j, err := m.get(cpid)
	if err != nil {
		return rexec.Status{}, err
	}
	if !c.May(j.UID) {
		return rexec.Status{}, fmt.Errorf("%w: process %d belongs to uid %d", ErrNotOwner, cpid, j.UID)
	}
	if !j.Detached {
		return rexec.Status{}, fmt.Errorf("%w: %d is attached to the client that started it", ErrNotDetached, cpid)
	}
	select {
	case <-ctx.Done():
		return rexec.Status{}, ctx.Err()
	case <-j.done:
	}
	if j.moved.Load() {
		return rexec.Status{}, fmt.Errorf("%w: %d", ErrMoved, cpid)
	}
	m.mu.Lock()
	delete(m.jobs, cpid)
	for i, e := range m.exited {
		if e == cpid {
			m.exited = append(m.exited[:i], m.exited[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	m.forget(cpid)
	os.Remove(j.LogPath)
	return j.status, j.err
}

// Logs returns a detached job's log path and its done channel.
func (m *Manager) Logs(cpid vproc.CPID, c Caller) (string, <-chan struct{}, error) {
	j, err := m.get(cpid)
	if err != nil {
		return "", nil, err
	}
	if !c.May(j.UID) {
		return "", nil, fmt.Errorf("%w: process %d belongs to uid %d", ErrNotOwner, cpid, j.UID)
	}
	if !j.Detached {
		return "", nil, fmt.Errorf("%w: the output of %d goes to the client that started it", ErrNotDetached, cpid)
	}
	return j.LogPath, j.done, nil
}

// Filter selects rows of List.
type Filter struct {
	UID  *uint32 // only this user's jobs
	CPID vproc.CPID
}

// List returns one row per process of every matching job: the job's top
// command first, then the processes it forked (same CPID, their own PIDs).
func (m *Manager) List(f Filter) []vproc.Proc {
	m.mu.Lock()
	jobs := make([]*Job, 0, len(m.jobs))
	for _, j := range m.jobs {
		if (f.UID == nil || *f.UID == j.UID) && (f.CPID == 0 || f.CPID == j.CPID) {
			jobs = append(jobs, j)
		}
	}
	m.mu.Unlock()
	sort.Slice(jobs, func(a, b int) bool { return jobs[a].CPID < jobs[b].CPID })
	var out []vproc.Proc
	for _, j := range jobs {
		base := vproc.Proc{
			CPID: j.CPID, Node: m.opts.Node, Job: j.CPID, UID: j.UID, User: userName(j.UID),
			Start: j.Started, Cmd: strings.Join(j.Argv, " "), Migratable: j.job.Migratable() && !j.Pinned, Pinned: j.Pinned,
		}
		select {
		case <-j.done:
			base.State = "X"
			base.PID = j.job.MainPid()
			out = append(out, base)
			continue
		default:
		}
		main := j.job.MainPid()
		base.PID = main
		var children []vproc.Proc
		for _, pid := range j.job.Pids() {
			pi, err := rexec.ReadProc(pid)
			if err != nil || pid == j.job.Pid() && pid != main {
				continue // gone, or our init
			}
			row := base
			row.PID, row.State, row.CPU, row.RSS, row.Time, row.Start = pid, pi.State, pi.CPUPercent, pi.RSS, pi.CPUTime, pi.Start
			if pid == main {
				base = row
				continue
			}
			row.Cmd = `\_ ` + strings.Join(pi.Cmdline, " ")
			if len(pi.Cmdline) == 0 {
				row.Cmd = `\_ [` + pi.Comm + "]"
			}
			children = append(children, row)
		}
		out = append(out, base)
		out = append(out, children...)
	}
	return out
}

// Exited reports whether a listed job has ended, and its status.
func (m *Manager) Exited(cpid vproc.CPID) (bool, rexec.Status) {
	j, err := m.get(cpid)
	if err != nil {
		return false, rexec.Status{}
	}
	select {
	case <-j.done:
		return true, j.status
	default:
		return false, rexec.Status{}
	}
}

// Detached reports whether cpid is a detached job.
func (m *Manager) Detached(cpid vproc.CPID) bool {
	j, err := m.get(cpid)
	return err == nil && j.Detached
}

// Shutdown kills every job (the node is leaving) and ends the ready inits.
func (m *Manager) Shutdown() {
	m.mu.Lock()
	jobs := make([]*Job, 0, len(m.jobs))
	for _, j := range m.jobs {
		jobs = append(jobs, j)
	}
	m.mu.Unlock()
	for _, j := range jobs {
		// Through the cgroup where there is one: it reaches a job frozen
		// for a migration too (SIGKILL alone waits for the thaw).
		if j.job.Discard() != nil {
			_ = j.job.Signal(syscall.SIGKILL)
		}
	}
	for _, j := range jobs {
		select {
		case <-j.done:
		case <-time.After(5 * time.Second):
		}
		j.job.Close()
	}
	// Jobs that ended just before may still be cleaning up (their init
	// exiting, their cgroup being removed): leave nothing behind.
	m.mu.Lock()
	var cleaning []*rexec.Job
	for rj := range m.cleaning {
		cleaning = append(cleaning, rj)
	}
	m.mu.Unlock()
	for _, rj := range cleaning {
		select {
		case <-rj.Done():
		case <-time.After(5 * time.Second):
		}
	}
	if m.pool != nil {
		_ = m.pool.Close()
	}
	rexec.RemoveCgroupParent(m.opts.CgroupParent)
}

var userCache sync.Map

func userName(uid uint32) string {
	if v, ok := userCache.Load(uid); ok {
		return v.(string)
	}
	name := ""
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		name = u.Username
	}
	userCache.Store(uid, name)
	return name
}
