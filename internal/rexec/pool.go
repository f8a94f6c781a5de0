package rexec

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// A Pool keeps inits ready for migratable jobs (Namespaces and Cgroup): each
// is an init in warm mode (see package nsinit), already PID 1 of new PID and
// mount namespaces with a fresh /proc, already in a cgroup of its own,
// waiting for one job on a unix socket. A job started from the pool skips
// the start of the init process (the re-execution of the ssi binary, its
// runtime and package initialisation, the namespaces and the cgroup), which
// is most of what a migratable job's start costs; the result is the same
// job: its own PID namespace with the job's PIDs, its own mount namespace
// with a fresh /proc, its own cgroup, the caller's credentials, directory and
// environment, the same status reporting.
//
// Each init serves one job and is never reused. The pool refills in the
// background, one init at a time, up to its size; a start that finds it
// empty starts a cold init as without a pool. It fills only once it has been
// asked for a job, and empties again after IdleTimeout without one.
//
// An init's mount namespace is a copy of the daemon's when it was made. So
// that a job never sees an outdated view, the pool watches the daemon's mount
// table (poll on /proc/self/mountinfo) and throws away every ready init when
// it changes.
type Pool struct {
	opts PoolOptions
	log  *slog.Logger

	// mounts is /proc/self/mountinfo, polled for changes. A raw descriptor:
	// registered with the runtime's poller (as os.Open would), the poller's
	// own polls would take the change events.
	mounts int

	// tag tells apart the pools of daemons whose PIDs are the same (in PID
	// namespaces of their own, as with `ssi up --isolate`) and that share
	// a cgroup parent.
	tag string

	mu       sync.Mutex
	idle     []*warmInit
	gen      uint64 // bumped when the mount table changed
	active   bool   // filling (asked for a job since the last idle timeout)
	closed   bool
	disabled error // the kernel or the set-up cannot make warm inits
	lastUse  time.Time
	cleanups sync.WaitGroup // discarded inits being cleaned up

	wake       chan struct{}
	quit       chan struct{}
	fillerDone chan struct{}

	flushes atomic.Uint64 // times the ready inits were dropped for a mount change
}

// PoolOptions configure a Pool.
type PoolOptions struct {
	// Size is how many ready inits the pool keeps; 0 means DefaultPoolSize.
	Size int
	// InitPath is the binary run as the init (/proc/self/exe if empty);
	// only jobs with the same Spec.InitPath (or none) use the pool.
	InitPath string
	// CgroupParent is where the inits' cgroups go, as Spec.CgroupParent;
	// only jobs with the same one use the pool.
	CgroupParent string
	// IdleTimeout: after this long without a job the ready inits are
	// ended, until the next job; 0 means DefaultPoolIdleTimeout.
	IdleTimeout time.Duration
	// Env is added to the inits' own environment, which is otherwise PATH,
	// GOMAXPROCS=1 and the daemon's GORACE, if any (the jobs get theirs).
	Env []string
	Log *slog.Logger
}

// Defaults of PoolOptions.
const (
	DefaultPoolSize        = 4
	DefaultPoolIdleTimeout = 10 * time.Minute
)

// warmInit is one ready init.
type warmInit struct {
	reniced bool // its session's autogroup runs at poolNice until claimed
	cmd     *exec.Cmd
	conn    *net.UnixConn
	cg      *cgroup
	gen     uint64
	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error
	state   warmState // guarded by Pool.mu
}

type warmState int

const (
	warmStarting warmState = iota
	warmIdle
	warmClaimed
	warmDiscarded
)

// poolSeq numbers the inits of every pool of this process (cgroup names).
var poolSeq atomic.Uint64

// poolLeafPrefix starts the cgroup names of warm inits:
// job-w<daemon pid>.<tag>-<n>.
const poolLeafPrefix = "job-w"

// staleAge: an empty cgroup of a warm init older than this is a leftover
// (a ready init is in its cgroup within spawnTimeout of its creation).
const staleAge = 2 * spawnTimeout

// NewPool returns a pool. It starts no init until the first job asks.
func NewPool(o PoolOptions) (*Pool, error) {
	if o.Size <= 0 {
		o.Size = DefaultPoolSize
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultPoolIdleTimeout
	}
	if o.InitPath == "" {
		o.InitPath = "/proc/self/exe"
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	p := &Pool{
		opts: o, log: o.Log.With("pool", "warm inits"),
		wake: make(chan struct{}, 1), quit: make(chan struct{}), fillerDone: make(chan struct{}),
		tag: strconv.FormatUint(uint64(rand.Uint32()), 16),
	}
	if !isRoot() {
		p.disabled = errors.New("the daemon is not root")
	}
	var err error
	p.mounts, err = unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		p.disabled = fmt.Errorf("cannot watch the mount table: %w", err)
		p.mounts = -1
	}
	if p.disabled == nil {
		removeStalePoolCgroups(o.CgroupParent, p.log)
	}
	go p.fill()
	return p, nil
}

// Close ends every ready init, removes their cgroups and stops refilling.
// Jobs already started from the pool are not affected.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	for _, w := range idle {
		w.state = warmDiscarded
	}
	close(p.quit)
	p.mu.Unlock()
	<-p.fillerDone
	for _, w := range idle {
		p.discard(w)
	}
	p.cleanups.Wait()
	if p.mounts >= 0 {
		unix.Close(p.mounts)
	}
	return nil
}

// Ready returns how many inits are ready now.
func (p *Pool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// serves reports whether a job of spec may come from this pool.
func (p *Pool) serves(spec Spec) bool {
	return spec.Namespaces && spec.Cgroup && spec.Hostname == "" && spec.Net == nil &&
		(spec.InitPath == "" || spec.InitPath == p.opts.InitPath) &&
		spec.CgroupParent == p.opts.CgroupParent
}

// activate starts filling the pool without taking an init.
func (p *Pool) activate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastUse = time.Now()
	if !p.active {
		p.active = true
		p.kick()
	}
}

func (p *Pool) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take claims a ready init, or returns nil: the job then starts cold.
func (p *Pool) take() *warmInit {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.disabled != nil {
		return nil
	}
	p.lastUse = time.Now()
	defer p.kick()
	if !p.active {
		p.active = true
		return nil
	}
	if p.checkMountsLocked() {
		return nil
	}
	for len(p.idle) > 0 {
		w := p.idle[0]
		p.idle = p.idle[1:]
		select {
		case <-w.exited:
			w.state = warmDiscarded
			p.discardAsyncLocked(w)
			continue
		default:
		}
		if w.gen != p.gen {
			w.state = warmDiscarded
			p.discardAsyncLocked(w)
			continue
		}
		w.state = warmClaimed
		return w
	}
	return nil
}

// checkMounts drops the ready inits if the mount table changed.
func (p *Pool) checkMounts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed && p.disabled == nil {
		p.checkMountsLocked()
	}
}

func (p *Pool) checkMountsLocked() bool {
	changed, err := p.mountsChanged()
	if err != nil {
		// Without knowing, a ready init could show the job stale mounts.
		p.log.Warn("cannot watch the mount table: every migratable job starts its own init", "err", err)
		p.disabled = err
		p.dropIdleLocked("cannot watch the mount table")
		return true
	}
	if !changed {
		return false
	}
	p.gen++
	p.flushes.Add(1)
	p.dropIdleLocked("the mount table changed")
	p.kick()
	return true
}

// mountsChanged reports whether the daemon's mount table changed since the
// last call (the kernel flags /proc/self/mountinfo with POLLPRI).
func (p *Pool) mountsChanged() (bool, error) {
	fds := []unix.PollFd{{Fd: int32(p.mounts), Events: unix.POLLPRI}}
	n, err := unix.Poll(fds, 0)
	for err == unix.EINTR {
		n, err = unix.Poll(fds, 0)
	}
	if err != nil {
		return false, fmt.Errorf("polling /proc/self/mountinfo: %w", err)
	}
	return n > 0 && fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0, nil
}

func (p *Pool) dropIdleLocked(why string) {
	if len(p.idle) > 0 {
		p.log.Debug("ending the ready inits", "count", len(p.idle), "why", why)
	}
	for _, w := range p.idle {
		w.state = warmDiscarded
		p.discardAsyncLocked(w)
	}
	p.idle = nil
}

// discardAsync ends an init in the background; Close waits for it.
func (p *Pool) discardAsync(w *warmInit) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.discardAsyncLocked(w)
}

func (p *Pool) discardAsyncLocked(w *warmInit) {
	if p.closed {
		// Close may be waiting for the others already: do this one now
		// (discard does not need the lock).
		p.discard(w)
		return
	}
	p.cleanups.Add(1)
	go func() {
		defer p.cleanups.Done()
		p.discard(w)
	}()
}

// discard ends an unclaimed init and removes its cgroup.
func (p *Pool) discard(w *warmInit) {
	_ = w.cmd.Process.Kill() // PID 1: takes its namespace with it
	<-w.exited
	w.conn.Close()
	if err := w.cg.destroy(); err != nil {
		p.log.Warn("removing the cgroup of a ready init", "err", err)
	}
}

// fill keeps the pool at its size, one init at a time.
func (p *Pool) fill() {
	defer close(p.fillerDone)
	backoff := time.Duration(0)
	for {
		p.mu.Lock()
		closed, active, disabled := p.closed, p.active, p.disabled
		need := active && len(p.idle) < p.opts.Size
		gen := p.gen
		idleUntil := p.lastUse.Add(p.opts.IdleTimeout)
		if active && !closed && time.Now().After(idleUntil) {
			p.active = false
			p.dropIdleLocked("idle")
			need, active = false, false
		}
		p.mu.Unlock()
		if closed {
			return
		}
		if !need || disabled != nil {
			var timeout <-chan time.Time
			var t *time.Timer
			if active {
				t = time.NewTimer(time.Until(idleUntil) + time.Millisecond)
				timeout = t.C
			}
			select {
			case <-p.quit:
			case <-p.wake:
			case <-timeout:
			}
			if t != nil {
				t.Stop()
			}
			continue
		}
		if backoff > 0 {
			select {
			case <-p.quit:
				return
			case <-time.After(backoff):
			}
		}
		w, err := p.spawn(gen)
		if err != nil {
			if isNamespaceRefusal(err) || errors.Is(err, errNoCgroups) {
				p.log.Warn("cannot keep inits ready: every migratable job starts its own", "err", err)
				p.mu.Lock()
				p.disabled = err
				p.mu.Unlock()
				continue
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second)
			p.log.Warn("starting a ready init", "err", err, "retry in", backoff)
			continue
		}
		backoff = 0
		p.mu.Lock()
		if p.closed || w.gen != p.gen {
			w.state = warmDiscarded
			p.mu.Unlock()
			p.discard(w)
			continue
		}
		w.state = warmIdle
		p.idle = append(p.idle, w)
		p.mu.Unlock()
	}
}

// spawnTimeout bounds the start of one warm init.
const spawnTimeout = 30 * time.Second

// spawn starts one warm init in a new cgroup and waits until it is ready.
func (p *Pool) spawn(gen uint64) (*warmInit, error) {
	id := "w" + strconv.Itoa(os.Getpid()) + "." + p.tag + "-" + strconv.FormatUint(poolSeq.Add(1), 10)
	cg, err := newCgroup(p.opts.CgroupParent, id)
	if err != nil {
		return nil, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		_ = cg.destroy()
		return nil, fmt.Errorf("creating the init's socket: %w", err)
	}
	child := os.NewFile(uintptr(pair[1]), "pool-init")
	parent := os.NewFile(uintptr(pair[0]), "pool")
	fc, err := net.FileConn(parent)
	parent.Close()
	if err != nil {
		child.Close()
		_ = cg.destroy()
		return nil, fmt.Errorf("creating the init's socket: %w", err)
	}
	conn := fc.(*net.UnixConn)
	opts := nsinit.Options{PoolFD: 3}
	args := opts.Args(nil)
	args = args[:len(args)-1] // no "--": the command comes later
	newCmd := func() *exec.Cmd {
		return &exec.Cmd{
			Path: p.opts.InitPath,
			Args: append([]string{"ssi", nsinit.Command}, args...),
			Env:  append(initEnv(), p.opts.Env...),
			Dir:  "/",
			// Until the job's stdio arrives the init has nothing to say on
			// stdout; a crash of its runtime goes to the daemon's log.
			Stderr:      os.Stderr,
			ExtraFiles:  []*os.File{child},
			SysProcAttr: &syscall.SysProcAttr{Setsid: true, Cloneflags: jobCloneflags},
		}
	}
	cmd, inCgroup, err := startInCgroup(newCmd, cg)
	child.Close()
	if err != nil {
		conn.Close()
		_ = cg.destroy()
		return nil, &startError{fmt.Errorf("starting a ready init %s: %w", p.opts.InitPath, err)}
	}
	w := &warmInit{cmd: cmd, conn: conn, cg: cg, gen: gen, exited: make(chan struct{})}
	// The init is a session leader, so with autogroup scheduling its
	// session is a scheduling group of its own: lower that group's weight
	// while it starts and waits, so that the refill yields to the work in
	// the foreground. The claim puts it back to the default before the
	// job starts.
	w.reniced = setAutogroupNice(cmd.Process.Pid, poolNice) == nil
	go func() {
		w.waitErr = cmd.Wait()
		close(w.exited)
		p.mu.Lock()
		lost := w.state == warmIdle && !p.closed
		if lost {
			w.state = warmDiscarded
			for i, x := range p.idle {
				if x == w {
					p.idle = append(p.idle[:i], p.idle[i+1:]...)
					break
				}
			}
		}
		p.mu.Unlock()
		if lost {
			// Killed while waiting (or still starting): clean up after it.
			p.discardAsync(w)
			p.kick()
		}
	}()
	fail := func(err error) (*warmInit, error) {
		p.discard(w) // still warmStarting: the wait above leaves it to us
		return nil, err
	}
	if !inCgroup {
		if err := cg.add(cmd.Process.Pid); err != nil {
			return fail(err)
		}
	}
	if err := awaitReady(conn); err != nil {
		return fail(err)
	}
	return w, nil
}

// poolNice is the autogroup nice value of ready inits (0 is the default of
// every new session, and what a job gets).
const poolNice = 10

// setAutogroupNice sets the nice value of the autogroup of pid's session
// (sched(7)); an error when the kernel has no autogroups.
func setAutogroupNice(pid, nice int) error {
	return os.WriteFile("/proc/"+strconv.Itoa(pid)+"/autogroup", []byte(strconv.Itoa(nice)), 0)
}

// initEnv is the environment of a warm init: one P is plenty for waiting
// and reaping (and makes fewer threads to start and end).
func initEnv() []string {
	env := []string{"PATH=" + DefaultPath, "GOMAXPROCS=1"}
	if v, ok := os.LookupEnv("GORACE"); ok {
		env = append(env, "GORACE="+v)
	}
	return env
}

// awaitReady reads the init's first report, which must be "ready".
func awaitReady(conn *net.UnixConn) error {
	_ = conn.SetReadDeadline(time.Now().Add(spawnTimeout))
	defer conn.SetReadDeadline(time.Time{})
	var line []byte
	var b [256]byte
	for {
		n, err := conn.Read(b[:])
		line = append(line, b[:n]...)
		if i := strings.IndexByte(string(line), '\n'); i >= 0 {
			if i != len(line)-1 {
				return errors.New("the ready init said more than it should")
			}
			e, perr := nsinit.ParseEvent(string(line[:i]))
			switch {
			case perr != nil:
				return perr
			case e.Kind == nsinit.Failed:
				return fmt.Errorf("the ready init could not set up: %s", e.Message)
			case e.Kind != nsinit.Ready:
				return fmt.Errorf("the ready init said %q before its job", e)
			}
			return nil
		}
		if err == io.EOF {
			return errors.New("the ready init ended before it was ready")
		}
		if err != nil {
			return fmt.Errorf("waiting for a ready init: %w", err)
		}
	}
}

// removeStalePoolCgroups removes the cgroups of warm inits that a daemon
// left behind when it died (its ready inits end when its socket closes):
// those that are empty and older than staleAge. A cgroup in use cannot be
// removed, so a race with a live pool costs nothing.
func removeStalePoolCgroups(parent string, log *slog.Logger) {
	probe, err := placeCgroup(parent, "x")
	if err != nil {
		return
	}
	for _, d := range probe.dirs {
		dir := filepath.Dir(d)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), poolLeafPrefix) {
				continue
			}
			info, err := e.Info()
			if err != nil || time.Since(info.ModTime()) < staleAge {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err == nil {
				log.Debug("removed the cgroup of a ready init of a daemon that is gone", "cgroup", e.Name())
			}
		}
	}
}
