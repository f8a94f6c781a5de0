package vproc

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Proc is one row of the cluster process table.
type Proc struct {
	CPID       CPID          // cluster PID (never changes)
	Node       int           // node the process runs on now
	PID        int           // its PID on that node (in the host's PID namespace)
	PPID       CPID          // parent's CPID; 0 if the parent is not a cluster process
	Job        CPID          // CPID of the job (top process) it belongs to; itself for a job
	UID        uint32        // real user id
	User       string        // user name; empty: the UID is shown
	State      string        // ps STAT letter: R, S, D, T, Z, ...
	CPU        float64       // %CPU: CPU time over lifetime, in percent of one CPU
	RSS        uint64        // resident set size, bytes
	Start      time.Time     // when it started
	Time       time.Duration // CPU time used (user + system)
	Cmd        string        // command line, arguments separated by spaces
	Migratable bool          // it can be moved to another node
	Pinned     bool          // the user pinned it to its node (onnode -p)
}

// FormatOptions control Format.
type FormatOptions struct {
	// Now is the current time, used to choose the START format (as ps:
	// HH:MM within the last 24 hours, MonDD within the last 365 days, else
	// the year)
	// and its time zone.
	Now time.Time
	// Wide adds the PPID, JOB and MIG columns before CMD. MIG is "yes",
	// "no", or "pin" for a pinned process.
	Wide bool
}

// Format writes procs as a ps-style table sorted by CPID:
//
//	CPID NODE PID USER STAT %CPU RSS START TIME CMD
//
// RSS is in KiB and TIME is [DD-]HH:MM:SS of CPU time, as ps prints them.
// Numeric columns are right-aligned; CMD is never truncated, but control
// characters in it are shown as '?'.
func Format(w io.Writer, procs []Proc, opts FormatOptions) error {
	sorted := slices.Clone(procs)
	slices.SortStableFunc(sorted, func(a, b Proc) int { return cmp.Compare(a.CPID, b.CPID) })

	type column struct {
		title string
		right bool
		cell  func(p Proc) string
	}
	cols := []column{
		{"CPID", false, func(p Proc) string { return p.CPID.String() }},
		{"NODE", true, func(p Proc) string { return strconv.Itoa(p.Node) }},
		{"PID", true, func(p Proc) string { return strconv.Itoa(p.PID) }},
		{"USER", false, func(p Proc) string { return userName(p) }},
		{"STAT", false, func(p Proc) string { return cmp.Or(p.State, "?") }},
		{"%CPU", true, func(p Proc) string { return strconv.FormatFloat(p.CPU, 'f', 1, 64) }},
		{"RSS", true, func(p Proc) string { return strconv.FormatUint(p.RSS/1024, 10) }},
		{"START", true, func(p Proc) string { return startTime(p.Start, opts.Now) }},
		{"TIME", true, func(p Proc) string { return cpuTime(p.Time) }},
	}
	if opts.Wide {
		cols = append(cols,
			column{"PPID", false, func(p Proc) string { return p.PPID.String() }},
			column{"JOB", false, func(p Proc) string { return p.Job.String() }},
			column{"MIG", false, func(p Proc) string { return migration(p) }},
		)
	}

	cells := make([][]string, len(sorted)+1)
	widths := make([]int, len(cols))
	cells[0] = make([]string, len(cols))
	for i, c := range cols {
		cells[0][i] = c.title
		widths[i] = len(c.title)
	}
	for r, p := range sorted {
		row := make([]string, len(cols))
		for i, c := range cols {
			row[i] = c.cell(p)
			widths[i] = max(widths[i], utf8.RuneCountInString(row[i]))
		}
		cells[r+1] = row
	}

	var b strings.Builder
	for r, row := range cells {
		for i, cell := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			if cols[i].right {
				b.WriteString(pad + cell)
			} else {
				b.WriteString(cell + pad)
			}
			b.WriteByte(' ')
		}
		if r == 0 {
			b.WriteString("CMD")
		} else {
			b.WriteString(cmp.Or(printable(sorted[r-1].Cmd), "-"))
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("writing the process table: %w", err)
	}
	return nil
}

// userName returns the name as ps shows it: at most 8 characters, a longer
// name cut to 7 and marked with '+'; the UID when there is no name.
func userName(p Proc) string {
	u := p.User
	if u == "" {
		return strconv.FormatUint(uint64(p.UID), 10)
	}
	if r := []rune(printable(u)); len(r) > 8 {
		return string(r[:7]) + "+"
	}
	return printable(u)
}

func migration(p Proc) string {
	switch {
	case p.Pinned:
		return "pin"
	case p.Migratable:
		return "yes"
	}
	return "no"
}

// startTime formats a start time like ps's START column.
func startTime(start, now time.Time) string {
	if start.IsZero() {
		return "-"
	}
	if !now.IsZero() {
		start = start.In(now.Location())
	}
	switch {
	case now.Sub(start) < 24*time.Hour:
		return start.Format("15:04")
	case now.Sub(start) < 365*24*time.Hour:
		return start.Format("Jan02")
	default:
		return start.Format("2006")
	}
}

// cpuTime formats CPU time like ps's TIME column: [DD-]HH:MM:SS.
func cpuTime(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	days, h, m, sec := s/86400, s/3600%24, s/60%60, s%60
	if days > 0 {
		return fmt.Sprintf("%d-%02d:%02d:%02d", days, h, m, sec)
	}
	return fmt.Sprintf("%02d:%02d:%02d", h, m, sec)
}

// printable replaces control characters (which could rewrite the user's
// terminal) with '?'.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
