package rexec

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat. It is 100
// on every Linux architecture Go supports (the kernel fixes it for the ABI).
const clockTicks = 100

// ProcInfo is what /proc says about one process (host PID namespace).
type ProcInfo struct {
	PID, PPID  int
	PGID, SID  int
	State      string        // R, S, D, T, t, Z, X, I
	UID        uint32        // real user id
	Comm       string        // executable name, at most 15 bytes
	Cmdline    []string      // arguments; empty for a zombie or kernel thread
	Start      time.Time     // start time (to the clock tick)
	CPUTime    time.Duration // user + system time
	RSS        uint64        // resident set size, bytes
	CPUPercent float64       // CPUTime over the lifetime, percent of one CPU (as ps)
}

var (
	bootOnce sync.Once
	bootTime time.Time
	bootErr  error
)

func readBootTime() (time.Time, error) {
	bootOnce.Do(func() {
		lines, err := readLines("/proc/stat")
		if err != nil {
			bootErr = fmt.Errorf("reading the boot time: %w", err)
			return
		}
		for _, l := range lines {
			if v, ok := strings.CutPrefix(l, "btime "); ok {
				s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err == nil {
					bootTime = time.Unix(s, 0)
					return
				}
			}
		}
		bootErr = errors.New("reading the boot time: no btime in /proc/stat")
	})
	return bootTime, bootErr
}

// statFields reads /proc/PID/stat and returns the fields after the command
// name (field 3, the state, is at index 0) and the name.
func statFields(pid int) ([]string, string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, "", err
	}
	s := string(b)
	lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if lp < 0 || rp < lp {
		return nil, "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[rp+1:])
	if len(f) < 22 {
		return nil, "", fmt.Errorf("malformed /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return f, s[lp+1 : rp], nil
}

// ReadProc reads the state of process pid from /proc.
func ReadProc(pid int) (ProcInfo, error) {
	f, comm, err := statFields(pid)
	if err != nil {
		return ProcInfo{}, fmt.Errorf("reading process %d: %w", pid, err)
	}
	num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
	// Indexes are the field numbers of proc(5) minus 3.
	p := ProcInfo{
		PID: pid, PPID: int(num(1)), PGID: int(num(2)), SID: int(num(3)),
		State: f[0], Comm: comm,
		CPUTime: time.Duration(num(11)+num(12)) * time.Second / clockTicks,
		RSS:     uint64(max(num(21), 0)) * uint64(os.Getpagesize()),
	}
	boot, err := readBootTime()
	if err != nil {
		return p, err
	}
	p.Start = boot.Add(time.Duration(num(19)) * time.Second / clockTicks)
	if life := time.Since(p.Start); life > 0 {
		p.CPUPercent = 100 * p.CPUTime.Seconds() / life.Seconds()
	}
	if lines, err := readLines("/proc/" + strconv.Itoa(pid) + "/status"); err == nil {
		for _, l := range lines {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				if u := strings.Fields(v); len(u) > 0 {
					n, _ := strconv.ParseUint(u[0], 10, 32)
					p.UID = uint32(n)
				}
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && len(b) > 0 {
		p.Cmdline = strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	}
	return p, nil
}

// procTable is a snapshot of (pid, ppid, pgid) for every process.
type procTable map[int][2]int // pid -> {ppid, pgid}

func readProcTable() procTable {
	ents, _ := os.ReadDir("/proc")
	t := make(procTable, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, _, err := statFields(pid)
		if err != nil {
			continue // exited meanwhile
		}
		ppid, _ := strconv.Atoi(f[1])
		pgid, _ := strconv.Atoi(f[2])
		t[pid] = [2]int{ppid, pgid}
	}
	return t
}

// descendants returns the processes below root (not root itself), plus, if
// pgid > 0, every member of that process group.
func (t procTable) descendants(root, pgid int) []int {
	kids := map[int][]int{}
	for pid, v := range t {
		kids[v[0]] = append(kids[v[0]], pid)
	}
	seen := map[int]bool{}
	var out []int
	queue := slices.Clone(kids[root])
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] || p == root {
			continue
		}
		seen[p] = true
		out = append(out, p)
		queue = append(queue, kids[p]...)
	}
	if pgid > 0 {
		for pid, v := range t {
			if v[1] == pgid && !seen[pid] && pid != root {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	slices.Sort(out)
	return out
}

// hostPidOf finds the host PID of the child of parent whose PID in its own
// namespace is nsPid (from the NSpid line of /proc/PID/status).
func hostPidOf(parent, nsPid int) (int, error) {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(parent) + "/task")
	if err != nil {
		return 0, err
	}
	want := strconv.Itoa(nsPid)
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(parent) + "/task/" + task.Name() + "/children")
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(b)) {
			lines, err := readLines("/proc/" + c + "/status")
			if err != nil {
				continue
			}
			for _, l := range lines {
				if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
					ids := strings.Fields(v)
					if len(ids) > 0 && ids[len(ids)-1] == want {
						return strconv.Atoi(c)
					}
					break
				}
			}
		}
	}
	return 0, fmt.Errorf("no child of %d has PID %d in its namespace", parent, nsPid)
}
