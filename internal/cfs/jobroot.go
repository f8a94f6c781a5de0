package cfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
)

// NodeLocal are the trees of the node itself that are bound over the
// cluster mount when jobs get the cluster root as their / (Config.JobRoot):
// each node binds its own, in its own mount namespace, over its own mount,
// as a diskless node whose / is the cluster filesystem mounts them. /tmp
// is not among them: the cluster root's /tmp is shared by every node, as
// it was in OpenSSI (and what a job leaves there is where a job that moved
// finds it).
var NodeLocal = []string{"proc", "dev", "sys", "run"}

// ErrNoJobRoot: jobs should get the cluster root as their /, and this node
// does not have it ready (not mounted, or the node's trees not bound in).
var ErrNoJobRoot = errors.New("the cluster root is not ready on this node")

// rebindEvery is how often binds that went away are made again when the
// mount table gives no sign (a bind cannot be made while the server is
// unreachable).
const rebindEvery = time.Second

// jobRoot keeps the node's trees bound over the cluster mount. The binds
// sit on the FUSE mount, not on the export: the server resolves every path
// beneath the export directory on its own disk (openat2 RESOLVE_BENEATH
// from the export's descriptor), never through a mount, so it never sees
// them. They are made in the daemon's mount namespace and seen by the
// node's processes only.
//
// The kernel takes a bind away when the directory it sits on is
// invalidated (the server told this node to drop the name, the client
// flushed its cache after reconnecting, or a lookup failed while the
// server was unreachable): keep watches the mount table and binds again.
type jobRoot struct {
	mount string
	log   *slog.Logger

	mu    sync.Mutex
	ready bool
}

// JobRoot is where jobs of this node get their root directory: "" when
// they keep the node's (Config.JobRoot is off, or the cluster filesystem
// is not mounted here), the cluster mount when they get the cluster root;
// an error wrapping ErrNoJobRoot when they should and this node cannot
// give it now.
func (f *FS) JobRoot() (string, error) {
	if !f.wantJobRoot() || f.c.Mount == "" {
		return "", nil
	}
	f.mu.Lock()
	jr := f.jobRoot
	f.mu.Unlock()
	if jr == nil || !jr.isReady() {
		return "", fmt.Errorf("node %d: %w (jobs run with the cluster filesystem at %s as their /; see the node's log)", f.c.Self, ErrNoJobRoot, f.c.Mount)
	}
	return f.c.Mount, nil
}

// wantJobRoot says whether this node's jobs get the cluster root: the
// cluster setting (ssi cfs jobroot on) or the node's --cfs-job-root.
func (f *FS) wantJobRoot() bool { return f.c.JobRoot || f.clusterJobRoot.Load() }

// followJobRoot starts or stops the binds as the setting changes (called
// by follow with the mount up).
func (f *FS) followJobRoot(ctx context.Context, log *slog.Logger) {
	f.jrMu.Lock() // follow and the mount loop both call it
	defer f.jrMu.Unlock()
	want := f.wantJobRoot()
	f.mu.Lock()
	running, stop := f.jobRootStop != nil, f.jobRootStop
	f.mu.Unlock()
	switch {
	case want && !running:
		stop := f.runJobRoot(ctx, log)
		f.mu.Lock()
		f.jobRootStop = stop
		f.mu.Unlock()
	case !want && running:
		log.Info("jobs keep the node's own / again")
		stop()
		f.mu.Lock()
		f.jobRootStop, f.jobRoot = nil, nil
		f.mu.Unlock()
	}
}

// stopJobRoot takes the binds away (before the unmount).
func (f *FS) stopJobRoot() {
	f.mu.Lock()
	stop := f.jobRootStop
	f.jobRootStop = nil
	f.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// runJobRoot binds the node's trees over the mount and keeps them there
// until ctx ends; stop (which Run calls before unmounting) takes them away.
func (f *FS) runJobRoot(ctx context.Context, log *slog.Logger) (stop func()) {
	jr := &jobRoot{mount: f.c.Mount, log: log}
	f.mu.Lock()
	f.jobRoot = jr
	f.mu.Unlock()
	jr.unbindAll() // a daemon killed in a namespace that outlived it
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); jr.keep(kctx) }()
	return func() {
		cancel()
		<-done
		jr.mu.Lock()
		jr.ready = false
		jr.mu.Unlock()
		jr.unbindAll()
	}
}

func (jr *jobRoot) isReady() bool {
	jr.mu.Lock()
	defer jr.mu.Unlock()
	return jr.ready
}

func (jr *jobRoot) target(d string) string { return filepath.Join(jr.mount, d) }

// bind binds every tree that is not bound yet and says whether all are.
func (jr *jobRoot) bind() bool {
	have := mountPoints()
	ok := true
	for _, d := range NodeLocal {
		t := jr.target(d)
		if have[t] {
			continue
		}
		if err := bindOne("/"+d, t); err != nil {
			jr.log.Warn("cannot bind the node's tree into the cluster root: jobs cannot start until it is", "tree", "/"+d, "at", t, "err", err)
			ok = false
		}
	}
	jr.mu.Lock()
	if ok && !jr.ready {
		jr.log.Info("jobs get the cluster root as their /", "root", jr.mount, "bound", NodeLocal)
	}
	jr.ready = ok
	jr.mu.Unlock()
	return ok
}

// bindOne binds src (recursively: /dev/pts, /sys/fs/cgroup come along) at
// dst, creating dst in the cluster filesystem if it is missing. The bind
// is made a slave: mounts the node makes under src show through it, but
// nothing mounted under dst ever propagates back to the node's tree.
func bindOne(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("creating the mount point: %w", err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", src, dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		_ = unix.Unmount(dst, unix.MNT_DETACH)
		return fmt.Errorf("making the bind on %s a slave: %w", dst, err)
	}
	return nil
}

// unbindAll takes every bind (and anything mounted below) away, lazily:
// jobs still in there keep what they hold.
func (jr *jobRoot) unbindAll() {
	have := mountPoints()
	for i := len(NodeLocal) - 1; i >= 0; i-- {
		t := jr.target(NodeLocal[i])
		for n := 0; have[t] && n < 8; n++ {
			if err := unix.Unmount(t, unix.MNT_DETACH); err != nil {
				jr.log.Warn("cannot take the node's tree out of the cluster root", "at", t, "err", err)
				break
			}
			have = mountPoints() // binds may be stacked (a restart after kill -9)
		}
	}
}

// keep binds (first, and again what the kernel took away), woken by changes of the
// mount table, and retries every rebindEvery while something is missing.
func (jr *jobRoot) keep(ctx context.Context) {
	fd, err := unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		jr.log.Warn("cannot watch the mount table: binds the kernel takes away come back only every few seconds", "err", err)
		fd = -1
	} else {
		defer unix.Close(fd)
	}
	for {
		wait := 5 * rebindEvery
		if !jr.bind() {
			wait = rebindEvery
		}
		deadline := time.Now().Add(wait)
		for ctx.Err() == nil && time.Now().Before(deadline) {
			if fd < 0 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			// Short polls, so that the end of ctx is seen soon.
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
			n, err := unix.Poll(fds, 100)
			if err == nil && n > 0 && fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
				// Seen: re-arm by reading the table again.
				_, _ = unix.Seek(fd, 0, 0)
				buf := make([]byte, 64<<10)
				for {
					if n, err := unix.Read(fd, buf); n <= 0 || err != nil {
						break
					}
				}
				break
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// mountPoints is the set of this process's mount points.
func mountPoints() map[string]bool {
	ms, err := mountinfo.Read()
	if err != nil {
		return nil
	}
	m := map[string]bool{}
	for _, mt := range ms {
		m[mt.Point] = true
	}
	return m
}
