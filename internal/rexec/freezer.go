package rexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
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
