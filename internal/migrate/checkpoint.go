package migrate

// go-criu has no context: an operation is bounded by the job's size, and
// killing CRIU midway could leave the job half dumped.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

// The two CRIU operations, through go-criu (criu swrk: one CRIU process per
// operation, driven over a socket).

// criuLogLevel: 4 is CRIU's debug level; its log stays in the images
// directory and is what an error message points at.
const criuLogLevel = 4

func ptr[T any](v T) *T { return &v }

// dumpSpec is a job to checkpoint.
type dumpSpec struct {
	criu   string
	pid    int    // the job's init (host PID)
	dir    string // the images go here
	freeze string // the job's freezer cgroup directory, frozen already
	// external are the job's unix sockets whose peer is outside it (the
	// report channel of an init from the pool, "socket:[INODE]") and its
	// terminal ("tty[RDEV:DEV]", tty.go): CRIU records them as external,
	// and the restore gives a new one.
	external []string
	net      *jobNet // the job's own network (--net), or nil
	// lazy: a post-copy dump, by the CRIU prepared before the freeze
	// (lazy.go); dump returns once the images are written.
	lazy *lazyDump
	// started: a swrk CRIU started before the freeze (startCRIU), used
	// once and ended by dump; nil: dump starts its own.
	started *criu.Criu
}

// dump checkpoints a frozen job into s.dir and leaves it frozen: CRIU uses
// the cgroup's freezer (frozen before, so it stays so) and leaves the
// processes where they are, so the job can be thawed if what follows fails.
func dump(s dumpSpec) error {
	img, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	defer img.Close()
	opts := &rpc.CriuOpts{
		ImagesDirFd:  ptr(int32(img.Fd())),
		Pid:          ptr(int32(s.pid)),
		LeaveRunning: ptr(true),
		FreezeCgroup: ptr(s.freeze),
		// A job without a network namespace of its own holds no socket
		// CRIU would have to keep quiet (inet sockets are refused before);
		// one with its own (--net) is locked by us (net.go).
		NetworkLock: rpc.CriuNetworkLockMethod_SKIP.Enum(),
		LogLevel:    ptr(int32(criuLogLevel)),
		LogFile:     ptr("dump.log"),
	}
	opts.External = append(opts.External, externalKeys(s.external)...)
	s.net.criuOpts(opts)
	if s.lazy != nil {
		return s.lazy.dump(opts, s.dir)
	}
	c := s.started
	if c == nil {
		c = criu.MakeCriu()
		c.SetCriuPath(s.criu)
	} else {
		defer c.Cleanup()
	}
	if err := c.Dump(opts, criu.NoNotify{}); err != nil {
		return fmt.Errorf("checkpoint with CRIU: %w%s", err, logTail(filepath.Join(s.dir, "dump.log")))
	}
	return nil
}

// restoreSpec is a checkpoint to restore on this node.
type restoreSpec struct {
	criu    string
	dir     string
	inherit map[string]*os.File // CRIU's name of a file in the images -> the file to use instead
	cgroups map[string]string   // controller ("" for all) -> the job's cgroup on this node
	net     *jobNet             // the job's own network (--net), or nil
	lazy    bool                // post-copy: the pages come from CRIU's lazy-pages daemon (lazy.go)
	// ready, for post-copy: waits until the lazy-pages daemon listens;
	// called once CRIU has started, so that both start at once.
	ready func() error
}

// restore brings a checkpoint back as a child of this process (CRIU's
// restore-as-sibling), in the cgroups given, frozen as it was dumped; it
// returns the host PID of the restored init.
func restore(s restoreSpec) (int, error) {
	img, err := os.Open(s.dir)
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	defer img.Close()
	opts := &rpc.CriuOpts{
		ImagesDirFd: ptr(int32(img.Fd())),
		RstSibling:  ptr(true),
		LogLevel:    ptr(int32(criuLogLevel)),
		LogFile:     ptr("restore.log"),
		// Only the job's own cgroups are made anew (freezer and memory,
		// or v2's one), under this node's parent: CRIU must not try to
		// recreate the node's other controllers (it may not write their
		// settings, cpuset's for one).
		ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum(),
	}
	if s.lazy {
		opts.LazyPages = ptr(true)
	}
	ctrls := make([]string, 0, len(s.cgroups))
	for ctrl := range s.cgroups {
		ctrls = append(ctrls, ctrl)
	}
	sort.Strings(ctrls)
	for _, ctrl := range ctrls {
		root := &rpc.CgroupRoot{Path: ptr(s.cgroups[ctrl])}
		if ctrl != "" {
			root.Ctrl = ptr(ctrl)
		}
		opts.CgRoot = append(opts.CgRoot, root)
	}
	s.net.criuOpts(opts)
	c := criu.MakeCriu()
	c.SetCriuPath(s.criu)
	for key, f := range s.inherit {
		c.AddInheritFd(key, f)
	}
	if s.ready != nil {
		if err := c.Prepare(); err != nil {
			return 0, fmt.Errorf("restore with CRIU: starting it: %w", err)
		}
		defer c.Cleanup()
		if err := s.ready(); err != nil {
			return 0, err
		}
	}
	n := &restored{}
	if err := c.Restore(opts, n); err != nil {
		return 0, fmt.Errorf("restore with CRIU: %w%s", err, logTail(filepath.Join(s.dir, "restore.log")))
	}
	if n.pid <= 0 {
		return 0, errors.New("restore with CRIU: it did not say which process it restored")
	}
	return n.pid, nil
}

// restored learns the restored process from CRIU's post-restore notice.
type restored struct {
	criu.NoNotify
	pid int
}

func (r *restored) PostRestore(pid int32) error { r.pid = int(pid); return nil }

// logTail is the last error lines of a CRIU log, for an error message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "Error") && !strings.Contains(l, "RLIMIT_NOFILE") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) > 3 {
		errs = errs[len(errs)-3:]
	}
	if len(errs) == 0 {
		return " (CRIU's log: " + path + ")"
	}
	return ": " + strings.Join(errs, "; ") + " (CRIU's log: " + path + ")"
}
