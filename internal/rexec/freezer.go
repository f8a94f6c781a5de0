package rexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
	"golang.org/x/sys/unix"
)

// Freezer describes the cgroup freezer migration freezes a job with before
// CRIU dumps it ("cgroup v1 freezer at /sys/fs/cgroup/freezer", "cgroup v2 at
// /sys/fs/cgroup (cgroup.freeze)"), or says why there is none. The v1
// freezer is preferred when both are mounted, as internal/rexec does.
func Freezer() (string, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("finding cgroup mounts: %w", err)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("finding this process's cgroup: %w", err)
	}
	return freezer(string(mi), string(own))
}

// freezer is Freezer from the contents of /proc/self/mountinfo and
// /proc/self/cgroup.
func freezer(table, selfCgroup string) (string, error) {
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	var v1, v2 string
	for _, line := range strings.Split(table, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch qf[0] {
		case "cgroup2":
			if v2 == "" {
				v2 = mountinfo.Unescape(pf[4])
			}
		case "cgroup":
			for _, opt := range strings.Split(qf[2], ",") {
				if opt == "freezer" && v1 == "" {
					v1 = mountinfo.Unescape(pf[4])
				}
			}
		}
	}
	if v1 != "" {
		return "cgroup v1 freezer at " + v1, nil
	}
	if v2 == "" {
		return "", errors.New("no cgroup freezer: neither the cgroup v1 freezer nor cgroup v2 is mounted")
	}
	// The root cgroup has no cgroup.freeze; this process's own cgroup (or
	// any cgroup, on kernels >= 5.2) has one.
	var ownPath string
	for _, l := range strings.Split(strings.TrimSpace(selfCgroup), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			ownPath = p
		}
	}
	if ownPath != "" && ownPath != "/" && exists(filepath.Join(v2, ownPath, "cgroup.freeze")) {
		return "cgroup v2 at " + v2 + " (cgroup.freeze)", nil
	}
	if ents, err := os.ReadDir(v2); err == nil {
		for _, e := range ents {
			if e.IsDir() && exists(filepath.Join(v2, e.Name(), "cgroup.freeze")) {
				return "cgroup v2 at " + v2 + " (cgroup.freeze)", nil
			}
		}
	}
	return "", fmt.Errorf("no cgroup freezer: cgroup v2 at %s has no cgroup.freeze (needs Linux >= 5.2) and the v1 freezer is not mounted", v2)
}

// setFrozen freezes or thaws every process of the cgroup and waits until
// the kernel reports it done.
func (cg *cgroup) setFrozen(frozen bool) error {
	limit := cg.freezeTimeout
	if limit == 0 {
		limit = cgroupTimeout
	}
	if frozen {
		return cg.freeze(time.Now().Add(limit))
	}
	return cg.thaw(time.Now().Add(limit))
}

// freeze freezes the cgroup, with no process of it caught between vfork
// and exec. Such a process spoils a freeze: its parent sleeps in the kernel
// until the child execs or exits, which the v1 freezer waits on forever
// (FREEZING), and which CRIU cannot interrupt under v1 or v2 ("Unseizable
// non-zombie ... state D" after its 10 s timeout). dash vforks every
// command it runs, so a shell loop is in that window now and then (2 % of
// the freezes of "while ...; do sleep 0.02; done" on Linux 6.18). So once
// the cgroup is frozen, or after a few milliseconds of waiting, the
// processes sharing their parent's address space are looked for; with
// one, the cgroup is thawed until that child has exec'd or exited, and
// frozen again.
func (cg *cgroup) freeze(deadline time.Time) error {
	for {
		if err := cg.request(true); err != nil {
			return err
		}
		begun, child := time.Now(), 0
		err := waitUntil(deadline, "freezing", func() (bool, error) {
			done, err := cg.reached(true)
			if err != nil || (!done && time.Since(begun) < vforkCheckAfter) {
				return false, err
			}
			if child = cg.vforkChild(); child != 0 {
				return true, nil
			}
			return done, nil
		})
		if err != nil || child == 0 {
			return err
		}
		if err := cg.thaw(deadline); err != nil {
			return err
		}
		what := fmt.Sprintf("the exec of process %d (a vfork child)", child)
		if err := waitUntil(deadline, what, func() (bool, error) { return !sharesParentVM(child), nil }); err != nil {
			return err
		}
	}
}

// vforkCheckAfter is how long a freeze waits before it looks for a vfork
// child that could be holding it up (a freeze takes well under that).
const vforkCheckAfter = 5 * time.Millisecond

// thaw thaws the cgroup and waits until the kernel reports it done.
func (cg *cgroup) thaw(deadline time.Time) error {
	if err := cg.request(false); err != nil {
		return err
	}
	return waitUntil(deadline, "thawing", func() (bool, error) { return cg.reached(false) })
}

// request asks the kernel to freeze or thaw the cgroup.
func (cg *cgroup) request(frozen bool) error {
	if cg.v2 {
		return cg.write(cg.dirs[0], "cgroup.freeze", map[bool]string{false: "0", true: "1"}[frozen])
	}
	return cg.write(cg.dirs[0], "freezer.state", map[bool]string{false: "THAWED", true: "FROZEN"}[frozen])
}

// reached says whether the kernel reports the cgroup frozen (or thawed).
func (cg *cgroup) reached(frozen bool) (bool, error) {
	if cg.v2 {
		ev, err := cg.read("cgroup.events")
		return strings.Contains(ev, map[bool]string{false: "frozen 0", true: "frozen 1"}[frozen]), err
	}
	s, err := cg.read("freezer.state")
	return strings.TrimSpace(s) == map[bool]string{false: "THAWED", true: "FROZEN"}[frozen], err
}

// vforkChild returns a process of the cgroup that shares the address space
// of its parent, also in the cgroup: a vfork child that has not exec'd yet
// (or a clone(CLONE_VM) one, which no checkpoint could split either). 0:
// none, or the kernel cannot tell (no kcmp).
func (cg *cgroup) vforkChild() int {
	pids, err := cg.procs()
	if err != nil || len(pids) < 2 {
		return 0
	}
	for _, pid := range pids {
		f, _, err := statFields(pid)
		if err != nil {
			continue
		}
		ppid, err := strconv.Atoi(f[1])
		if err == nil && slices.Contains(pids, ppid) && sameVM(pid, ppid) {
			return pid
		}
	}
	return 0
}

// sharesParentVM says whether process pid still shares its parent's
// address space.
func sharesParentVM(pid int) bool {
	f, _, err := statFields(pid)
	if err != nil {
		return false
	}
	ppid, err := strconv.Atoi(f[1])
	return err == nil && ppid > 0 && sameVM(pid, ppid)
}

// kcmpVM is KCMP_VM of <linux/kcmp.h>: do two processes share their
// address space? (golang.org/x/sys/unix has the system call, not its types.)
const kcmpVM = 1

// sameVM says whether processes a and b share one address space, by
// kcmp(2), which CRIU needs too. An error (process gone, no kcmp) is "no".
func sameVM(a, b int) bool {
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), kcmpVM, 0, 0, 0)
	return errno == 0 && r == 0
}
