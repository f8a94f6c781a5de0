package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/term"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

func init() {
	cmd := &Command{
		Name:    "migrate",
		Link:    true,
		Summary: "move a running process to another node",
		Usage:   "migrate CPID NODE [--postcopy | --precopy] [--socket PATH]",
		Help: `Moves a running job to node NODE (a number, or "home": the node that
created it) and lets it carry on there: it is frozen, checkpointed with
CRIU, sent to NODE over the cluster's authenticated transport and restored
there with the same cluster PID and the same PIDs inside its namespace;
where_pid and ps show the new node at once, from every node. If any step
fails the job goes on running where it was, as it was. A job attached to
a client on another node moves with its stream: the client sees its
output and stdin go on. See docs/MIGRATION.md for what can move and what
is refused (pinned jobs, terminals, jobs holding inet sockets, ...).

A large job (the daemon's --postcopy-above, 64 MiB by default) moves with
post-copy: only what is not its memory is copied while it is frozen, it
runs on NODE at once, and its memory pages follow (CRIU lazy pages over
the cluster's transport); --postcopy asks for it whatever the size (and
fails if this node cannot), --precopy never. See docs/MIGRATION.md,
"Post-copy".

Example:
  cpid=$(ssi run -d -n 2 ./simulate); migrate $cpid 3; where_pid $cpid`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		post := fs.Bool("postcopy", false, "post-copy: the job runs on NODE at once and its memory follows (whatever its size)")
		pre := fs.Bool("precopy", false, "never post-copy: the job's memory is copied while it is frozen")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 2 {
			return Usagef("want a cluster PID and a node (a number or \"home\"), got %d arguments", fs.NArg())
		}
		if *post && *pre {
			return Usagef("--postcopy and --precopy: a move is one or the other")
		}
		cpid, err := parseCPIDArg(fs.Arg(0))
		if err != nil {
			return err
		}
		node := fs.Arg(1)
		if node != "home" {
			if n, err := strconv.ParseUint(node, 10, 32); err != nil || n == 0 {
				return Usagef("node %q: want a node number (1, 2, ...) or \"home\"", node)
			}
		}
		st, err := control(*socket).MigrateWatch(env.Ctx, connect.NewRequest(&ssiv1.MigrateRequest{Cpid: cpid, Node: node, Postcopy: *post, Precopy: *pre}))
		if err != nil {
			return err
		}
		defer st.Close()
		prog := newProgress(env)
		var r *ssiv1.MigrateResponse
		for st.Receive() {
			p := st.Msg()
			if p.Done != nil {
				r = p.Done
				break
			}
			prog.show(p)
		}
		prog.end()
		if err := st.Err(); err != nil {
			return err
		}
		if r == nil {
			return &RemoteError{Err: fmt.Errorf("the migration of process %d ended without a result", cpid)}
		}
		ph := r.Phases
		us := func(v int64) time.Duration {
			return (time.Duration(v) * time.Microsecond).Round(100 * time.Microsecond)
		}
		fmt.Fprintf(env.Stdout, "process %d moved from node %d to node %d in %v (frozen %v: dump %v, transfer %.1f MB %v, restore %v)%s\n",
			cpid, r.From, r.To, us(ph.GetTotalUs()), us(ph.GetFreezeUs()), us(ph.GetDumpUs()), float64(ph.GetBytes())/1e6, us(ph.GetTransferUs()), us(ph.GetRestoreUs()), postCopyNote(ph, us))
		if ph.GetFallback() != "" {
			fmt.Fprintf(env.Stderr, "migrate: not post-copy: %s\n", ph.GetFallback())
		}
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "checkpoint",
		Summary: "save a running detached job into a directory, to restart it later",
		Usage:   "ssi checkpoint [--leave-running] [--socket PATH] CPID DIR",
		Help: `Freezes the job, checkpoints it with CRIU into DIR (an absolute path that
must not exist yet, in a directory you own, on the node that runs the
job), with its log, and ends it there (or lets it go on with
--leave-running). 'ssi restart DIR' brings it back, on any node that sees
DIR (shared storage survives the node), with the same cluster PID if that
is free. Only detached jobs (ssi run -d).

Example:
  ssi checkpoint $cpid /shared/ckpt/sim; ssi restart -n 3 /shared/ckpt/sim`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		leave := fs.Bool("leave-running", false, "keep the job running after the checkpoint")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 2 {
			return Usagef("want a cluster PID and a directory, got %d arguments", fs.NArg())
		}
		cpid, err := parseCPIDArg(fs.Arg(0))
		if err != nil {
			return err
		}
		dir, err := absPathArg(fs.Arg(1))
		if err != nil {
			return err
		}
		resp, err := control(*socket).Checkpoint(env.Ctx, connect.NewRequest(&ssiv1.CheckpointRequest{Cpid: cpid, Dir: dir, LeaveRunning: *leave}))
		if err != nil {
			return err
		}
		r := resp.Msg
		what := "it ended there"
		if *leave {
			what = "it goes on"
		}
		fmt.Fprintf(env.Stdout, "process %d on node %d saved in %s (%.1f MB, frozen %v); %s\n", cpid, r.Node, dir,
			float64(r.Bytes)/1e6, (time.Duration(r.FreezeUs) * time.Microsecond).Round(100*time.Microsecond), what)
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "restart",
		Summary: "restart a job saved by ssi checkpoint",
		Usage:   "ssi restart [-n N] [--socket PATH] DIR",
		Help: `Restores the job saved in DIR on node N (default: this node), with the
cluster PID it had if that is free (else a new one of node N), and prints
its cluster PID. Its log goes on where it stopped; ssi wait gives its exit
status.

Example:
  cpid=$(ssi restart -n 3 /shared/ckpt/sim); ssi logs -f $cpid`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		node := nodeNumFlag(fs, "n", "restart on node N (default: this node)")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return Usagef("want one directory, got %d arguments", fs.NArg())
		}
		dir, err := absPathArg(fs.Arg(0))
		if err != nil {
			return err
		}
		resp, err := control(*socket).Restart(env.Ctx, connect.NewRequest(&ssiv1.RestartRequest{Dir: dir, Node: uint32(*node)}))
		if err != nil {
			return err
		}
		fmt.Fprintln(env.Stdout, resp.Msg.Cpid)
		return nil
	}
	Register(cmd)
}

// absPathArg makes a directory argument absolute (the daemon does not share
// the CLI's working directory).
func absPathArg(arg string) (string, error) {
	if arg == "" {
		return "", Usagef("the directory is empty")
	}
	d, err := filepath.Abs(arg)
	if err != nil {
		return "", Usagef("%q: %v", arg, err)
	}
	return d, nil
}

func init() {
	cmd := &Command{
		Name:    "node",
		Summary: "act on a node's jobs: ssi node expel|block|unblock N",
		Usage:   "ssi node expel|block|unblock [--socket PATH] N",
		Help: `'ssi node expel N' moves every job of node N to the least-loaded other
node, one after another (as migrate would), and prints where each went or
why it could not move; exit 1 if one could not.
clusternode_shutdown --drain does this before the node leaves.
'ssi node block N' makes node N refuse new jobs: placement (ssi run,
fastnode) leaves it out, onnode N and migrate to it are refused, the
leveler moves nothing there; its own jobs run on and may still move away.
'ssi node unblock N' undoes it. Root only.

Example:
  ssi node block 2; ssi node expel 2`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		sub := ""
		if len(args) > 0 {
			sub = args[0]
		}
		if sub != "expel" && sub != "block" && sub != "unblock" {
			// -h and the like: the command's own help; else a usage error.
			if err := Parse(env, cmd, fs, args); err != nil {
				return err
			}
			return Usagef("want a subcommand: expel, block or unblock")
		}
		if err := Parse(env, cmd, fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return Usagef("want one node number")
		}
		num, err := parseNodeNum(fs.Arg(0))
		if err != nil {
			return err
		}
		if sub == "expel" {
			return expel(env, *socket, num)
		}
		resp, err := control(*socket).BlockNode(env.Ctx, connect.NewRequest(&ssiv1.BlockNodeRequest{Node: num, Blocked: sub == "block"}))
		if err != nil {
			return err
		}
		if sub == "block" {
			fmt.Fprintf(env.Stdout, "node %d is blocked: it takes no new jobs\n", num)
		} else {
			fmt.Fprintf(env.Stdout, "node %d takes jobs again\n", num)
		}
		if len(resp.Msg.Blocked) > 0 {
			fmt.Fprintf(env.Stdout, "blocked nodes: %s\n", joinNums(resp.Msg.Blocked))
		}
		return nil
	}
	Register(cmd)
}

// expel moves every job of node num (0: the local node) away and prints
// each one's fate; an error if one did not move.
func expel(env *Env, socket string, num uint32) error {
	resp, err := control(socket).Expel(env.Ctx, connect.NewRequest(&ssiv1.ExpelRequest{Node: num}))
	if err != nil {
		return err
	}
	stuck := 0
	for _, j := range resp.Msg.Jobs {
		if j.To != 0 {
			fmt.Fprintf(env.Stdout, "process %d moved to node %d\n", j.Cpid, j.To)
			continue
		}
		stuck++
		fmt.Fprintf(env.Stderr, "process %d stays on node %d: %s\n", j.Cpid, resp.Msg.Node, j.Error)
	}
	if stuck > 0 {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%d of the %d jobs of node %d could not move", stuck, len(resp.Msg.Jobs), resp.Msg.Node)}
	}
	if len(resp.Msg.Jobs) == 0 {
		fmt.Fprintf(env.Stdout, "node %d has no jobs\n", resp.Msg.Node)
	}
	return nil
}

func init() {
	cmd := &Command{
		Name:    "loadlevel",
		Link:    true,
		Summary: "show or turn on/off automatic load leveling (moving jobs off busy nodes)",
		Usage:   "loadlevel [-a on|off] [-n N on|off|default] [--socket PATH]",
		Help: `With leveling on, the cluster's leader compares the nodes' loads every 2
seconds; when the busiest node that levels is busier than the least-loaded
one by more than one and a half runnable processes, that node moves its
job using the most CPU (that ran 3 s or more, and did not move in the last
30 s) there with migrate. Off by default. -a sets it for the cluster;
-n N on|off gives node N a setting of its own, -n N default drops it.
Root only to change it.

Example:
  loadlevel -a on; loadlevel -n 1 off; loadlevel`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		all := fs.String("a", "", "on or off: the cluster's setting")
		node := nodeNumFlag(fs, "n", "set node N's own setting: loadlevel -n N on|off|default")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		req := &ssiv1.LoadLevelRequest{}
		switch {
		case *all != "" && *node != 0:
			return Usagef("-a and -n go one at a time")
		case *all != "":
			if fs.NArg() != 0 || *all != "on" && *all != "off" {
				return Usagef("-a wants on or off")
			}
			req.Set, req.On = true, *all == "on"
		case *node != 0:
			if fs.NArg() != 1 {
				return Usagef("-n N wants on, off or default")
			}
			switch fs.Arg(0) {
			case "on", "off":
				req.Set, req.Node, req.On = true, uint32(*node), fs.Arg(0) == "on"
			case "default":
				req.Set, req.Node, req.Clear = true, uint32(*node), true
			default:
				return Usagef("-n N wants on, off or default, not %q", fs.Arg(0))
			}
		default:
			if fs.NArg() != 0 {
				return Usagef("unexpected arguments: %v", fs.Args())
			}
		}
		resp, err := control(*socket).LoadLevel(env.Ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		onOff := map[bool]string{true: "on", false: "off"}
		fmt.Fprintf(env.Stdout, "load leveling: %s for the cluster\n", onOff[resp.Msg.All])
		var nums []int
		for n := range resp.Msg.Nodes {
			nums = append(nums, int(n))
		}
		sort.Ints(nums)
		for _, n := range nums {
			fmt.Fprintf(env.Stdout, "node %d: %s (its own setting)\n", n, onOff[resp.Msg.Nodes[uint32(n)]])
		}
		return nil
	}
	Register(cmd)
}

// progress shows the phases of a migration that takes more than a second,
// on stderr: one line updated in place on a terminal, a line per phase
// otherwise.
type progress struct {
	env      *Env
	tty      bool
	shown    bool
	phase    string
	lastLine int
}

const progressAfter = time.Second

func newProgress(env *Env) *progress {
	p := &progress{env: env}
	if f, ok := env.Stderr.(*os.File); ok {
		p.tty = term.IsTerminal(int(f.Fd()))
	}
	return p
}

func (p *progress) show(m *ssiv1.MigrateProgress) {
	el := time.Duration(m.ElapsedUs) * time.Microsecond
	if el < progressAfter {
		p.phase = m.Phase
		return
	}
	line := fmt.Sprintf("migrate: %s, %.1fs", m.Phase, el.Seconds())
	if m.Phase == "transfer" && m.Bytes > 0 {
		line = fmt.Sprintf("migrate: transfer %.1f MB, %.1fs", float64(m.Bytes)/1e6, el.Seconds())
	}
	switch {
	case p.tty:
		pad := ""
		if n := p.lastLine - len(line); n > 0 {
			pad = strings.Repeat(" ", n)
		}
		fmt.Fprintf(p.env.Stderr, "\r%s%s", line, pad)
		p.lastLine = len(line)
		p.shown = true
	case m.Phase != p.phase || !p.shown:
		fmt.Fprintln(p.env.Stderr, line)
		p.shown = true
	}
	p.phase = m.Phase
}

func (p *progress) end() {
	if p.tty && p.shown {
		fmt.Fprintln(p.env.Stderr)
	}
}

// postCopyNote is what migrate adds for a post-copy move: how long the
// pages took to follow the job.
func postCopyNote(ph *ssiv1.MigratePhases, us func(int64) time.Duration) string {
	if !ph.GetPostcopy() {
		return ""
	}
	return fmt.Sprintf("; post-copy: every page there %v after it ran again", us(ph.GetPagesUs()))
}
