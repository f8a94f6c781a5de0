package cli

import (
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

func init() {
	cmd := &Command{
		Name:    "migrate",
		Link:    true,
		Summary: "move a running process to another node",
		Usage:   "migrate CPID NODE [--socket PATH]",
		Help: `Moves a running job to node NODE (a number, or "home": the node that
created it) and lets it carry on there: it is frozen, checkpointed with
CRIU, sent to NODE over the cluster's authenticated transport and restored
there with the same cluster PID and the same PIDs inside its namespace;
where_pid and ps show the new node at once, from every node. If any step
fails the job goes on running where it was, as it was. A job attached to
a client on another node moves with its stream: the client sees its
output and stdin go on. See docs/MIGRATION.md for what can move and what
is refused (pinned jobs, terminals, jobs holding inet sockets, ...).

Example:
  cpid=$(ssi run -d -n 2 ./simulate); migrate $cpid 3; where_pid $cpid`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 2 {
			return Usagef("want a cluster PID and a node (a number or \"home\"), got %d arguments", fs.NArg())
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
		resp, err := control(*socket).Migrate(env.Ctx, connect.NewRequest(&ssiv1.MigrateRequest{Cpid: cpid, Node: node}))
		if err != nil {
			return err
		}
		r := resp.Msg
		ph := r.Phases
		us := func(v int64) time.Duration {
			return (time.Duration(v) * time.Microsecond).Round(100 * time.Microsecond)
		}
		fmt.Fprintf(env.Stdout, "process %d moved from node %d to node %d in %v (frozen %v: dump %v, transfer %.1f MB %v, restore %v)\n",
			cpid, r.From, r.To, us(ph.GetTotalUs()), us(ph.GetFreezeUs()), us(ph.GetDumpUs()), float64(ph.GetBytes())/1e6, us(ph.GetTransferUs()), us(ph.GetRestoreUs()))
		return nil
	}
	Register(cmd)
}
