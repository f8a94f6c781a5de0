package cli

import (
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

// The process table commands: ps, kill, where_pid, wait, logs.

// parseOneCPID parses flags and exactly one cluster PID argument.
func parseOneCPID(env *Env, cmd *Command, fs *flag.FlagSet, args []string) (int64, error) {
	arg, err := parseOne(env, cmd, fs, args, "one cluster PID")
	if err != nil {
		return 0, err
	}
	return parseCPIDArg(arg)
}

func parseCPIDArg(s string) (int64, error) {
	c, err := vproc.ParseCPID(s)
	if err != nil {
		return 0, Usagef("%v", err)
	}
	return int64(c), nil
}

func init() {
	cmd := &Command{
		Name:    "ps",
		Summary: "list the processes started through ssi on every node",
		Usage:   "ssi ps [-e] [-n N] [--json] [--socket PATH]",
		Help: `Columns: CPID (cluster PID), NODE, PID (on that node), USER, STAT, %CPU,
RSS (KiB), START, TIME, CMD; a job's forked processes follow it with the
same CPID and "\_" before their command. Without -e only your processes.

Example:
  ssi ps -e`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		all := fs.Bool("e", false, "every user's processes")
		node := nodeNumFlag(fs, "n", "only processes on node N")
		wide := fs.Bool("w", false, "wide: add PPID, JOB and MIG columns")
		asJSON := fs.Bool("json", false, "print JSON")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		resp, err := control(*socket).Procs(env.Ctx, connect.NewRequest(&ssiv1.ProcsRequest{All: *all, Node: uint32(*node)}))
		if err != nil {
			return err
		}
		for _, u := range resp.Msg.Unreachable {
			fmt.Fprintf(env.Stderr, "ssi ps: not listed: %s\n", u)
		}
		ps := resp.Msg.Procs
		sort.SliceStable(ps, func(a, b int) bool { return ps[a].Cpid < ps[b].Cpid })
		if *asJSON {
			type row struct {
				CPID    int64     `json:"cpid"`
				Node    uint32    `json:"node"`
				PID     int32     `json:"pid"`
				UID     uint32    `json:"uid"`
				User    string    `json:"user"`
				State   string    `json:"state"`
				CPU     float64   `json:"cpu"`
				RSS     uint64    `json:"rss"`
				Start   time.Time `json:"start"`
				TimeMs  int64     `json:"time_ms"`
				Cmd     string    `json:"cmd"`
				Detach  bool      `json:"detached"`
				Migrate bool      `json:"migratable"`
			}
			out := []row{}
			for _, p := range ps {
				out = append(out, row{p.Cpid, p.Node, p.Pid, p.Uid, p.User, p.State, p.Cpu, p.Rss, time.UnixMilli(p.StartUnixMs), p.CpuTimeMs, p.Cmd, p.Detached, p.Migratable})
			}
			return writeJSON(env.Stdout, out)
		}
		var rows []vproc.Proc
		for _, p := range ps {
			rows = append(rows, vproc.Proc{CPID: vproc.CPID(p.Cpid), Node: int(p.Node), PID: int(p.Pid), Job: vproc.CPID(p.Job),
				UID: p.Uid, User: p.User, State: p.State, CPU: p.Cpu, RSS: p.Rss, Start: time.UnixMilli(p.StartUnixMs),
				Time: time.Duration(p.CpuTimeMs) * time.Millisecond, Cmd: p.Cmd, Migratable: p.Migratable, Pinned: p.Pinned})
		}
		return vproc.Format(env.Stdout, rows, vproc.FormatOptions{Now: time.Now(), Wide: *wide})
	}
	Register(cmd)
}

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "CONT": syscall.SIGCONT,
	"STOP": syscall.SIGSTOP, "TSTP": syscall.SIGTSTP, "ALRM": syscall.SIGALRM, "WINCH": syscall.SIGWINCH,
}

func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 64 {
			return 0, Usagef("signal %d is out of range", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := signalNames[name]; ok {
		return sig, nil
	}
	return 0, Usagef("unknown signal %q (e.g. TERM, KILL, INT, HUP, 9)", s)
}

func init() {
	cmd := &Command{
		Name:    "kill",
		Summary: "signal processes by cluster PID, wherever they run",
		Usage:   "ssi kill [-s SIG | -SIG] CPID...",
		Help: `Sends SIG (default TERM) to each job's whole process group on its node.
You may signal only your own processes (root may signal any).

Examples:
  ssi kill 3000042
  ssi kill -9 3000042 2000007`,
	}
	cmd.Run = func(env *Env, args []string) error {
		sig := syscall.SIGTERM
		if len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-s" && args[0] != "--" && args[0] != "-h" && args[0] != "--help" && !strings.HasPrefix(args[0], "--socket") {
			s, err := parseSignal(args[0][1:])
			if err != nil {
				return err
			}
			sig, args = s, args[1:]
		}
		fs := NewFlags(env, cmd)
		name := fs.String("s", "", "signal name or number")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if *name != "" {
			s, err := parseSignal(*name)
			if err != nil {
				return err
			}
			sig = s
		}
		if fs.NArg() == 0 {
			return Usagef("expected at least one cluster PID")
		}
		var cpids []int64
		for _, a := range fs.Args() {
			c, err := parseCPIDArg(a)
			if err != nil {
				return err
			}
			cpids = append(cpids, c)
		}
		worst := ExitOK
		for _, c := range cpids {
			if _, err := control(*socket).Signal(env.Ctx, connect.NewRequest(&ssiv1.SignalRequest{Cpid: c, Signal: int32(sig)})); err != nil {
				fmt.Fprintf(env.Stderr, "ssi kill: %d: %s\n", c, message(err))
				worst = max(worst, exitCode(err))
			}
		}
		if worst != ExitOK {
			return &ExitError{Code: worst} // each failure is reported above
		}
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "where_pid",
		Link:    true,
		Summary: "print the node a process runs on",
		Usage:   "where_pid CPID [--socket PATH]",
		Help:    "Example:\n  where_pid 3000042",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		c, err := parseOneCPID(env, cmd, fs, args)
		if err != nil {
			return err
		}
		resp, err := control(*socket).Procs(env.Ctx, connect.NewRequest(&ssiv1.ProcsRequest{Cpid: c, All: true}))
		if err != nil {
			return err
		}
		for _, p := range resp.Msg.Procs {
			if p.Cpid == c {
				fmt.Fprintln(env.Stdout, p.Node)
				return nil
			}
		}
		if len(resp.Msg.Unreachable) > 0 {
			return &RemoteError{Err: fmt.Errorf("process %d: %s", c, resp.Msg.Unreachable[0])}
		}
		return fmt.Errorf("no process %d in the cluster (node %d has no such job)", c, vproc.CPID(c).Node())
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "wait",
		Summary: "wait for a detached job and return its exit status",
		Usage:   "ssi wait CPID [--socket PATH]",
		Help:    "Example:\n  cpid=$(ssi run -d sleep 5); ssi wait $cpid; echo $?",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		c, err := parseOneCPID(env, cmd, fs, args)
		if err != nil {
			return err
		}
		resp, err := control(*socket).Wait(env.Ctx, connect.NewRequest(&ssiv1.WaitRequest{Cpid: c}))
		if err != nil {
			return err
		}
		if code := resp.Msg.Exit.Code; code != 0 {
			return &ExitError{Code: int(code)}
		}
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "logs",
		Summary: "print a detached job's output (-f: follow until it ends)",
		Usage:   "ssi logs [-f] CPID [--socket PATH]",
		Help:    "Example:\n  ssi logs -f 3000042",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		follow := fs.Bool("f", false, "follow the output until the job ends")
		socket := socketFlag(fs)
		c, err := parseOneCPID(env, cmd, fs, args)
		if err != nil {
			return err
		}
		st, err := control(*socket).Logs(env.Ctx, connect.NewRequest(&ssiv1.LogsRequest{Cpid: c, Follow: *follow}))
		if err != nil {
			return err
		}
		defer st.Close()
		for st.Receive() {
			if _, err := env.Stdout.Write(st.Msg().Data); err != nil {
				return fmt.Errorf("write the log of process %d: %w", c, err)
			}
		}
		if err := st.Err(); err != nil {
			return lostDaemon(*socket, "Logs", err)
		}
		return nil
	}
	Register(cmd)
}
