// Package mountinfo reads the kernel's table of a process's mounts
// (/proc/PID/mountinfo, proc(5)): where each filesystem is mounted, its
// type, source and superblock options. It owns the parsing only; it must
// not mount or unmount anything.
package mountinfo

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of the table.
type Mount struct {
	Dev          string // the filesystem's device, "major:minor" (a FUSE mount's minor names its connection)
	Point        string // where it is mounted (escapes undone)
	FSType       string // e.g. "ext4", "cgroup2", "fuse.cfs"
	Source       string
	SuperOptions string // the superblock's options, e.g. "rw,freezer" for a cgroup v1 hierarchy
}

// Read is this process's table.
func Read() ([]Mount, error) { return read("/proc/self/mountinfo") }

// ReadPID is process pid's table (its mount namespace's).
func ReadPID(pid int) ([]Mount, error) { return read(fmt.Sprintf("/proc/%d/mountinfo", pid)) }

func read(path string) ([]Mount, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the mount table: %w", err)
	}
	return Parse(string(b)), nil
}

// Parse parses a table; lines it cannot read are left out.
func Parse(data string) []Mount {
	var out []Mount
	for _, line := range strings.Split(data, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 2 {
			continue
		}
		m := Mount{Dev: pf[2], Point: Unescape(pf[4]), FSType: qf[0], Source: Unescape(qf[1])}
		if len(qf) > 2 {
			m.SuperOptions = qf[2]
		}
		out = append(out, m)
	}
	return out
}

// Unescape undoes the table's octal escapes (\040 for a space, ...).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
