package rexec

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
	"golang.org/x/sys/unix"
)

// cgroupTimeout bounds waiting for the kernel to freeze, thaw or empty a
// cgroup. Those take milliseconds; a cgroup stuck longer than this has a
// process in uninterruptible sleep (e.g. on a dead NFS server).
const cgroupTimeout = 10 * time.Second

// hierarchies is where the cgroup filesystems are mounted and where this
// process sits in them, read from /proc/self/mountinfo and /proc/self/cgroup.
type hierarchies struct {
	v1    map[string]string // controller -> mount point
	v1own map[string]string // controller -> own cgroup path
	v2    string            // mount point of the unified hierarchy, or ""
	v2own string
}

var (
	hierOnce sync.Once
	hier     hierarchies
	hierErr  error

	// preferV2 makes hosts that mount both (hybrid mode) use cgroup v2;
	// the tests set it to exercise both implementations.
	preferV2 atomic.Bool
)

func cgroupHierarchies() (hierarchies, error) {
	hierOnce.Do(func() { hier, hierErr = readHierarchies() })
	return hier, hierErr
}

func readHierarchies() (hierarchies, error) {
	h := hierarchies{v1: map[string]string{}, v1own: map[string]string{}}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return h, fmt.Errorf("finding cgroup mounts: %w", err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 3 {
			continue
		}
		mnt := mountinfo.Unescape(pf[4])
		switch qf[0] {
		case "cgroup2":
			if h.v2 == "" {
				h.v2 = mnt
			}
		case "cgroup":
			for _, opt := range strings.Split(qf[2], ",") {
				if _, seen := h.v1[opt]; !seen && (opt == "freezer" || opt == "memory") {
					h.v1[opt] = mnt
				}
			}
		}
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return h, fmt.Errorf("finding the daemon's own cgroup: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			h.v2own = f[2]
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			h.v1own[c] = f[2]
		}
	}
	return h, nil
}

// cgroup is one job's cgroup: a directory in each v1 hierarchy used
// (freezer first), or one directory in the v2 hierarchy.
type cgroup struct {
	v2   bool
	dirs []string
	// freezeTimeout bounds a freeze or a thaw (0: cgroupTimeout; tests
	// of a freeze that cannot finish shorten it).
	freezeTimeout time.Duration
}

// errNoCgroups: no hierarchy with a freezer is mounted.
var errNoCgroups = errors.New("no cgroup hierarchy with a freezer is mounted (need cgroup v2, or the v1 freezer controller)")

// newCgroup creates the cgroup parent/job-<id>.
func newCgroup(parent, id string) (*cgroup, error) {
	cg, err := placeCgroup(parent, id)
	if err != nil {
		return nil, err
	}
	for i, d := range cg.dirs {
		if err := mkdirCgroup(d); err != nil {
			for _, made := range cg.dirs[:i] {
				_ = os.Remove(made)
			}
			return nil, err
		}
	}
	return cg, nil
}

// placeCgroup says where the cgroup parent/job-<id> goes, creating nothing.
func placeCgroup(parent, id string) (*cgroup, error) {
	h, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	if parent == "" {
		parent = DefaultCgroupParent
	}
	if strings.Contains("/"+parent+"/", "/../") {
		return nil, fmt.Errorf("cgroup parent %q must not contain \"..\"", parent)
	}
	leaf := "job-" + id
	cg := &cgroup{}
	place := func(mnt, own string) string {
		if filepath.IsAbs(parent) {
			return filepath.Join(mnt, parent, leaf)
		}
		return filepath.Join(mnt, own, parent, leaf)
	}
	_, haveFreezer := h.v1["freezer"]
	switch {
	case haveFreezer && (!preferV2.Load() || h.v2 == ""):
		for _, c := range []string{"freezer", "memory"} {
			if mnt, ok := h.v1[c]; ok {
				cg.dirs = append(cg.dirs, place(mnt, h.v1own[c]))
			}
		}
	case h.v2 != "":
		cg.v2 = true
		cg.dirs = []string{place(h.v2, h.v2own)}
	default:
		return nil, errNoCgroups
	}
	return cg, nil
}

// rename gives the cgroup the name of job id, where the hierarchy allows
// it (cgroup v1 does, v2 does not); it keeps its name otherwise.
func (cg *cgroup) rename(id string) {
	if cg.v2 {
		return
	}
	leaf := "job-" + id
	var done []string
	for _, d := range cg.dirs {
		to := filepath.Join(filepath.Dir(d), leaf)
		if err := os.Rename(d, to); err != nil {
			for i, from := range done { // all or nothing
				_ = os.Rename(from, cg.dirs[i])
			}
			return
		}
		done = append(done, to)
	}
	cg.dirs = done
}

func mkdirCgroup(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("creating the cgroup parent: %w", err)
	}
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrExist) {
		// A leftover of a daemon that died: reusable if empty.
		if rmErr := os.Remove(dir); rmErr != nil {
			return fmt.Errorf("cgroup %s already exists and is in use (choose another job ID): %w", dir, rmErr)
		}
		err = os.Mkdir(dir, 0o755)
	}
	if err != nil {
		return fmt.Errorf("creating cgroup: %w", err)
	}
	return nil
}

func (cg *cgroup) write(dir, file, val string) error {
	// cgroup files want one write per value; WriteFile does exactly one.
	if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0); err != nil {
		return fmt.Errorf("cgroup: writing %q to %s: %w", val, filepath.Join(dir, file), err)
	}
	return nil
}

func (cg *cgroup) read(file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(cg.dirs[0], file))
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	return string(b), nil
}

// noCloneIntoCgroup is set once the kernel refused to start a process
// directly in a cgroup.
var noCloneIntoCgroup atomic.Bool

// startInCgroup starts the command newCmd makes, in cg from its first
// instruction when cg is a cgroup v2 one and the kernel can (clone3 with
// CLONE_INTO_CGROUP, Linux 5.7): that saves moving it there afterwards, a
// write that takes a lock every fork in the system waits for. inCgroup
// reports whether it did; otherwise the caller moves the process. newCmd is
// called again to retry the usual way if the kernel refused.
func startInCgroup(newCmd func() *exec.Cmd, cg *cgroup) (cmd *exec.Cmd, inCgroup bool, err error) {
	refused := false
	if cg != nil && cg.v2 && !noCloneIntoCgroup.Load() {
		fd, oerr := unix.Open(cg.dirs[0], unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if oerr == nil {
			cmd = newCmd()
			sys := *cmd.SysProcAttr
			sys.UseCgroupFD, sys.CgroupFD = true, fd
			cmd.SysProcAttr = &sys
			err = cmd.Start()
			unix.Close(fd)
			if err == nil {
				return cmd, true, nil
			}
			if !errors.Is(err, syscall.ENOSYS) && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.E2BIG) &&
				!errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EOPNOTSUPP) {
				return nil, false, err
			}
			// An older kernel, or a seccomp filter that refuses clone3?
			// If the usual way works, it is that: from now on.
			refused = true
		}
	}
	cmd = newCmd()
	err = cmd.Start()
	if err == nil && refused {
		noCloneIntoCgroup.Store(true)
	}
	return cmd, false, err
}

// add moves pid into the cgroup (in every hierarchy).
func (cg *cgroup) add(pid int) error {
	for _, d := range cg.dirs {
		if err := cg.write(d, "cgroup.procs", strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// procs lists the processes in the cgroup.
func (cg *cgroup) procs() ([]int, error) {
	s, err := cg.read("cgroup.procs")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(s) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// waitFor polls until cond holds or cgroupTimeout passes.
func waitFor(what string, cond func() (bool, error)) error {
	return waitUntil(time.Now().Add(cgroupTimeout), what, cond)
}

// waitUntil polls until cond holds or the deadline passes.
func waitUntil(deadline time.Time, what string, cond func() (bool, error)) error {
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, 50*time.Millisecond) {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup: %s did not happen within %v (a process in uninterruptible sleep?)", what, cgroupTimeout)
		}
		time.Sleep(delay)
	}
}

// kill sends SIGKILL to every process in the cgroup, including ones forked
// while it runs.
func (cg *cgroup) kill() error {
	if cg.v2 {
		if err := cg.write(cg.dirs[0], "cgroup.kill", "1"); err == nil {
			return nil
		}
		// cgroup.kill needs Linux 5.14; fall through to the v1 way.
	}
	// Frozen processes cannot fork, so one pass over the list reaches all
	// of them; they die when thawed. A freeze that does not finish (a
	// process in uninterruptible sleep, one that never leaves a vfork)
	// still gets them killed, less surely: it is said.
	ferr := cg.setFrozen(true)
	pids, err := cg.procs()
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if terr := cg.setFrozen(false); err == nil {
		err = terr
	}
	if ferr != nil {
		err = errors.Join(fmt.Errorf("killing without a complete freeze (a process it forks meanwhile may survive): %w", ferr), err)
	}
	return err
}

// destroy kills what is left in the cgroup and removes it.
func (cg *cgroup) destroy() error {
	var errs []error
	if pids, err := cg.procs(); err != nil || len(pids) > 0 {
		if err := cg.kill(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range cg.dirs {
		err := waitFor("emptying "+d, func() (bool, error) {
			err := os.Remove(d)
			switch {
			case err == nil, errors.Is(err, fs.ErrNotExist):
				return true, nil
			case errors.Is(err, syscall.EBUSY):
				return false, nil
			}
			return false, err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// readLines reads a small file into lines; used for /proc.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}
