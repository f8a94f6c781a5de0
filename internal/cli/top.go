package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/term"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// ssi top: the whole cluster like top(1), nodes first, then the busiest
// processes, redrawn in place.

// topFrame is what one refresh shows.
type topFrame struct {
	at     time.Time
	status *ssiv1.StatusResponse
	loads  map[uint32]*ssiv1.NodeLoad
	procs  []*ssiv1.Proc
	notes  []string // what could not be read this time
}

func gatherTop(ctx context.Context, socket string) (*topFrame, error) {
	f := &topFrame{at: time.Now(), loads: map[uint32]*ssiv1.NodeLoad{}}
	st, err := control(socket).Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{Stale: true}))
	if err != nil {
		return nil, err
	}
	f.status = st.Msg
	if l, err := control(socket).Loads(ctx, connect.NewRequest(&ssiv1.LoadsRequest{})); err == nil {
		for _, x := range l.Msg.Loads {
			f.loads[x.Num] = x
		}
	} else {
		f.notes = append(f.notes, "loads: "+message(err))
	}
	if p, err := control(socket).Procs(ctx, connect.NewRequest(&ssiv1.ProcsRequest{All: true})); err == nil {
		f.procs = p.Msg.Procs
		for _, u := range p.Msg.Unreachable {
			f.notes = append(f.notes, "not listed: "+u)
		}
	} else {
		f.notes = append(f.notes, "processes: "+message(err))
	}
	return f, nil
}

func fmtMem(b uint64) string {
	const k = 1024
	switch {
	case b >= k*k*k:
		return fmt.Sprintf("%.1fG", float64(b)/(k*k*k))
	case b >= k*k:
		return fmt.Sprintf("%.1fM", float64(b)/(k*k))
	case b >= k:
		return fmt.Sprintf("%.0fK", float64(b)/k)
	}
	return fmt.Sprintf("%dB", b)
}

func fmtCPUTime(ms int64) string {
	s := ms / 1000
	return fmt.Sprintf("%d:%02d.%02d", s/60, s%60, (ms%1000)/10)
}

// render lays a frame out in at most height lines of width columns.
func (f *topFrame) render(width, height int, interval time.Duration, interactive bool) []string {
	st := f.status
	counts := map[string]int{}
	perNode := map[uint32]int{}
	running := 0
	for _, n := range st.Nodes {
		counts[n.State.Label()]++
	}
	for _, p := range f.procs {
		perNode[p.Node]++
		if p.State != "X" && p.State != "Z" {
			running++
		}
	}
	head := fmt.Sprintf("ssi top - %s  cluster %s  via node %d  leader %d  every %v", f.at.Format("15:04:05"), st.ClusterName, st.LocalNum, st.LeaderNum, interval)
	if interactive {
		head += "  (q quits)"
	}
	lines := []string{head,
		fmt.Sprintf("Nodes: %d total, %d up, %d down, %d coming up, %d going down   Processes: %d, %d running",
			len(st.Nodes), counts["UP"], counts["DOWN"], counts["COMINGUP"], counts["GOINGDOWN"], len(f.procs), running)}
	for _, n := range f.notes {
		lines = append(lines, "! "+n)
	}
	lines = append(lines, "", fmt.Sprintf("%5s %-12s %-9s %-6s %6s %5s %5s %4s %8s %5s", "NODE", "NAME", "STATE", "ROLE", "LOAD", "%CPU", "RUNQ", "CPUS", "MEMFREE", "PROCS"))
	nodes := append([]*ssiv1.Node(nil), st.Nodes...)
	sort.Slice(nodes, func(a, b int) bool { return nodes[a].Num < nodes[b].Num })
	for _, n := range nodes {
		load, cpu, runq, ncpu, mem := "-", "-", "-", "-", "-"
		if l := f.loads[n.Num]; l != nil && n.State.Label() == "UP" {
			load, cpu, runq, ncpu, mem = fmt.Sprintf("%.2f", l.Load), fmt.Sprintf("%.1f", l.CpuBusy*100), fmt.Sprintf("%.1f", l.RunQueue), fmt.Sprint(l.Ncpu), fmtMem(l.MemFree)
		}
		lines = append(lines, fmt.Sprintf("%5d %-12.12s %-9s %-6s %6s %5s %5s %4s %8s %5d", n.Num, n.Name, n.State.Label(), n.Role.Label(), load, cpu, runq, ncpu, mem, perNode[n.Num]))
	}
	lines = append(lines, "", fmt.Sprintf("%-10s %4s %7s %-8s %4s %5s %7s %9s  %s", "CPID", "NODE", "PID", "USER", "STAT", "%CPU", "RSS", "TIME", "COMMAND"))
	ps := append([]*ssiv1.Proc(nil), f.procs...)
	sort.SliceStable(ps, func(a, b int) bool {
		if ps[a].Cpu != ps[b].Cpu {
			return ps[a].Cpu > ps[b].Cpu
		}
		return ps[a].CpuTimeMs > ps[b].CpuTimeMs
	})
	for _, p := range ps {
		if height > 0 && len(lines) >= height {
			break
		}
		lines = append(lines, fmt.Sprintf("%-10d %4d %7d %-8.8s %4s %5.1f %7s %9s  %s", p.Cpid, p.Node, p.Pid, p.User, p.State, p.Cpu, fmtMem(p.Rss), fmtCPUTime(p.CpuTimeMs), p.Cmd))
	}
	if height > 0 && len(lines) > height {
		lines = lines[:height]
	}
	for i, l := range lines {
		if r := []rune(l); width > 0 && len(r) > width {
			lines[i] = string(r[:width]) // by characters: a command may be UTF-8
		}
	}
	return lines
}

func init() {
	cmd := &Command{
		Name:    "top",
		Summary: "a live view of the whole cluster: nodes, then the busiest processes",
		Usage:   "ssi top [-d 2s] [-n N] [-b] [--socket PATH]",
		Help: `Shows every node (state, role, load, CPU, run queue, free memory, processes)
and then the cluster's processes, busiest first, and redraws them every
-d in place; q (or Ctrl-C) quits. Loads are the leader's view from the
heartbeats; processes are every UP node's. With -b (or when the output is
not a terminal) frames are printed one after another; -n stops after N.

Examples:
  ssi top
  ssi top -b -n 1`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		interval := fs.Duration("d", 2*time.Second, "time between refreshes (at least 100ms)")
		count := fs.Int("n", 0, "stop after N refreshes (0: until q)")
		batch := fs.Bool("b", false, "batch: print frames one after another, do not read keys")
		socket := socketFlag(fs)
		if err := parseNone(env, cmd, fs, args); err != nil {
			return err
		}
		if *interval < 100*time.Millisecond {
			return Usagef("-d %v: give a duration of at least 100ms (e.g. 2s)", *interval)
		}
		if *count < 0 {
			return Usagef("-n %d: give a count of refreshes (0: until q)", *count)
		}
		return runTop(env, *socket, *interval, *count, *batch)
	}
	Register(cmd)
}

func runTop(env *Env, socket string, interval time.Duration, count int, batch bool) error {
	out, outIsFile := env.Stdout.(*os.File)
	interactive := !batch && outIsFile && term.IsTerminal(int(out.Fd()))
	ctx, cancel := context.WithCancel(env.Ctx)
	defer cancel()
	redraw := make(chan struct{}, 1)
	if interactive {
		if in, ok := env.Stdin.(*os.File); ok && term.IsTerminal(int(in.Fd())) {
			if st, err := term.MakeRaw(int(in.Fd())); err == nil {
				defer func() { _ = term.Restore(int(in.Fd()), st) }()
			}
			go readTopKeys(in, cancel, redraw)
		}
		fmt.Fprint(out, "\x1b[?1049h\x1b[?25l") // the alternate screen, no cursor
		defer fmt.Fprint(out, "\x1b[?25h\x1b[?1049l")
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				select {
				case redraw <- struct{}{}:
				default:
				}
			}
		}()
	}
	for n := 0; count == 0 || n < count; n++ {
		f, err := gatherTop(ctx, socket)
		if ctx.Err() != nil {
			return nil // q
		}
		if err != nil {
			if n == 0 || !interactive {
				return err
			}
			// The daemon went away under a running top: say so and retry.
			fmt.Fprintf(out, "\x1b[H\x1b[2Kssi top - %s  %s\x1b[K", time.Now().Format("15:04:05"), message(err))
		} else if interactive {
			w, h, err := term.GetSize(int(out.Fd()))
			if err != nil {
				w, h = 80, 24
			}
			// Home, each line over the last frame's (cleared to its end),
			// then clear what is left below: no flicker.
			lines := f.render(w, h, interval, true)
			var b strings.Builder
			b.WriteString("\x1b[H")
			for i, l := range lines {
				b.WriteString(l + "\x1b[K")
				if i < len(lines)-1 {
					b.WriteString("\r\n")
				}
			}
			b.WriteString("\x1b[J")
			_, _ = io.WriteString(out, b.String())
		} else {
			if n > 0 {
				fmt.Fprintln(env.Stdout)
			}
			for _, l := range f.render(0, 0, interval, false) {
				fmt.Fprintln(env.Stdout, l)
			}
		}
		if count != 0 && n+1 >= count {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		case <-redraw:
		}
	}
	return nil
}

// readTopKeys ends ssi top on q, Q or Ctrl-C (the terminal is raw, so
// Ctrl-C is a byte, not a signal) and redraws on any other key.
func readTopKeys(in io.Reader, quit func(), redraw chan<- struct{}) {
	b := make([]byte, 16)
	for {
		n, err := in.Read(b)
		if err != nil {
			return
		}
		for _, c := range b[:n] {
			switch c {
			case 'q', 'Q', 3, 4:
				quit()
				return
			}
		}
		select {
		case redraw <- struct{}{}:
		default:
		}
	}
}
