package rexec

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/ssi-cluster/ssi/internal/nsinit"
)

// What migration needs of the engine: where a job's cgroup goes on this
// node, the files its init reports on, a job restored by CRIU (Adopt), and
// the end of a job whose copy runs elsewhere now (Discard).

// CgroupRoots says where the cgroup of job id goes, CgroupParent/job-<id>,
// as CRIU's --cgroup-root wants it: controller name ("" for cgroup v2's one
// hierarchy) to the path inside that hierarchy. Nothing is created.
func CgroupRoots(parent, id string) (map[string]string, error) {
	cg, err := placeCgroup(parent, id)
	if err != nil {
		return nil, err
	}
	h, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	roots := map[string]string{}
	if cg.v2 {
		rel, err := filepath.Rel(h.v2, cg.dirs[0])
		if err != nil {
			return nil, err
		}
		roots[""] = "/" + rel
		return roots, nil
	}
	for _, c := range []string{"freezer", "memory"} {
		mnt, ok := h.v1[c]
		if !ok {
			continue
		}
		for _, d := range cg.dirs {
			if rel, err := filepath.Rel(mnt, d); err == nil && !strings.HasPrefix(rel, "..") {
				roots[c] = "/" + rel
			}
		}
	}
	return roots, nil
}

// InitPid is the host PID of the job's init (0 for a job without one).
func (j *Job) InitPid() int {
	if !j.shim {
		return 0
	}
	return j.pid
}

// StatusFD is the descriptor on which the init of every job started under
// nsinit reports (its -status-fd, or a warm init's -pool-fd).
const StatusFD = 3

// Discard kills every process in the job's cgroup, thawing a frozen cgroup
// for that: for a job whose copy runs on another node now (the caller must
// not report its status as the job's), and for a node that stops.
func (j *Job) Discard() error {
	if j.cg == nil {
		return fmt.Errorf("discarding job %s: %w: it has no cgroup", j.id, ErrNotSupported)
	}
	j.cgMu.Lock()
	defer j.cgMu.Unlock()
	if j.cgGone {
		return nil
	}
	if err := j.cg.kill(); err != nil {
		return fmt.Errorf("discarding job %s: %w", j.id, err)
	}
	return nil
}

// AdoptSpec is a job that CRIU restored on this node: its init is a child
// of this process (CRIU's restore-as-sibling), frozen in its cgroup.
type AdoptSpec struct {
	ID           string
	Pid          int      // the restored init (host PID)
	Status       *os.File // the read end of what the init reports on
	CgroupParent string   // its cgroup is CgroupParent/job-<CgroupID>
	CgroupID     string
	Root         string // the job's root directory (Spec.Root; "" for the node's)
}

// Adopt makes a restored job a Job of this engine, as if Start had started
// it: Wait returns its status when the init reports it, Freeze, Thaw and
// Pids use its cgroup. The job stays frozen until Thaw.
func Adopt(s AdoptSpec, log *slog.Logger) (*Job, error) {
	if log == nil {
		log = slog.Default()
	}
	if !validID(s.ID) {
		return nil, fmt.Errorf("adopting job: invalid ID %q", s.ID)
	}
	proc, err := os.FindProcess(s.Pid)
	if err != nil {
		return nil, fmt.Errorf("adopting job %s: finding process %d: %w", s.ID, s.Pid, err)
	}
	cg, err := placeCgroup(s.CgroupParent, s.CgroupID)
	if err != nil {
		return nil, fmt.Errorf("adopting job %s: %w", s.ID, err)
	}
	for _, d := range cg.dirs {
		if _, err := os.Stat(d); err != nil {
			return nil, fmt.Errorf("adopting job %s: its cgroup: %w", s.ID, err)
		}
	}
	j := &Job{
		id: s.ID, shim: true, namespaced: true, migratable: true, pid: s.Pid, cg: cg, root: s.Root,
		cmd:    &exec.Cmd{Process: proc},
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		events: make(chan nsinit.Event, 4),
	}
	j.reaper = func() error {
		ps, err := proc.Wait()
		j.cmd.ProcessState = ps
		if err == nil && !ps.Success() {
			err = &exec.ExitError{ProcessState: ps}
		}
		return err
	}
	if pids, err := cg.procs(); err == nil {
		for _, p := range pids {
			if p != s.Pid && parentOf(p) == s.Pid {
				j.mainPid = p
				break
			}
		}
	}
	go readEvents(s.Status, j.events, log, j.trace)
	go j.wait(log)
	return j, nil
}

// parentOf is the parent PID of pid, or 0.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// FileKey is how CRIU names file descriptor fd of process pid in its
// images, for --inherit-fd: "pipe:[INODE]", "socket:[INODE]", or a path
// without its leading slash.
func FileKey(pid, fd int) (string, error) {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return "", fmt.Errorf("process %d has no file descriptor %d", pid, fd)
		}
		return "", err
	}
	return strings.TrimPrefix(l, "/"), nil
}

// RemoveCgroupParent removes the (empty) directories of a cgroup parent,
// for a daemon that stops; one still in use stays.
func RemoveCgroupParent(parent string) {
	if parent == "" || parent == DefaultCgroupParent {
		return
	}
	cg, err := placeCgroup(parent, "x")
	if err != nil {
		return
	}
	for _, d := range cg.dirs {
		_ = os.Remove(filepath.Dir(d))
	}
}

// EndLeftovers kills and removes the job cgroups left under parent, by a
// daemon of this node that died: their processes are nobody's now (their
// node forgot them; their cluster PIDs may be given again), and one frozen
// in the middle of a migration would stay frozen, and unkillable, for
// ever. parent must be this daemon's own (never a parent other daemons
// use). It returns how many it ended.
func EndLeftovers(parent string, log *slog.Logger) int {
	if parent == "" || parent == DefaultCgroupParent {
		return 0
	}
	probe, err := placeCgroup(parent, "x")
	if err != nil {
		return 0
	}
	leaves := map[string]bool{}
	for _, d := range probe.dirs {
		ents, err := os.ReadDir(filepath.Dir(d))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "job-") {
				leaves[e.Name()] = true
			}
		}
	}
	n := 0
	for leaf := range leaves {
		cg, err := placeCgroup(parent, strings.TrimPrefix(leaf, "job-"))
		if err != nil {
			continue
		}
		var dirs []string
		for _, d := range cg.dirs {
			if _, err := os.Stat(d); err == nil {
				dirs = append(dirs, d)
			}
		}
		cg.dirs = dirs
		if len(dirs) == 0 {
			continue
		}
		if pids, _ := cg.procs(); len(pids) > 0 {
			log.Warn("ending the processes a previous daemon of this node left", "cgroup", leaf, "pids", pids)
		}
		if err := cg.destroy(); err != nil {
			log.Warn("removing a cgroup a previous daemon left", "cgroup", leaf, "err", err)
			continue
		}
		n++
	}
	return n
}
