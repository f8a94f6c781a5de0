package cli

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/cfs"
)

func init() {
	cmd := &Command{
		Name:    "mklocalfile",
		Link:    true,
		Summary: "give a file of the cluster filesystem one copy per node (a CDSL)",
		Usage:   "mklocalfile [--socket PATH] PATH",
		Help: `Turns PATH, a file or directory on the cluster filesystem, into a
context-dependent symlink (CDSL): every node in the node table gets its own
copy of what PATH holds now, in .NAME.cdsl/nodeN beside it, and PATH
becomes the symlink .NAME.cdsl/node{nodenum}, which each node resolves to
its own copy. On a CDSL already, it adds copies for the nodes that joined
since (copies of the lowest node's). mkglobalfile turns it back. The
syntax of CDSL targets ({nodenum}, {nodename}) is in docs/CFS.md.

Example:
  mklocalfile /cluster/etc/hostname; echo node2 > /cluster/etc/hostname   # on node 2`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return Usagef("want one path, got %d arguments", fs.NArg())
		}
		path := fs.Arg(0)
		if cfs.OnMount(path) == "" {
			return fmt.Errorf("%s is not on the cluster filesystem (see where it is mounted with: mount -t fuse.cfs)", path)
		}
		st, err := control(*socket).Status(env.Ctx, connect.NewRequest(&ssiv1.StatusRequest{}))
		if err != nil {
			return err
		}
		var nodes []uint32
		for _, n := range st.Msg.Nodes {
			nodes = append(nodes, n.Num)
		}
		made, err := cfs.MakeLocal(path, nodes)
		if err != nil {
			return fmt.Errorf("mklocalfile %s: %w", path, err)
		}
		if len(made) == 0 {
			fmt.Fprintf(env.Stdout, "%s already has a copy for every node\n", path)
			return nil
		}
		fmt.Fprintf(env.Stdout, "%s is now local to each node: copies for nodes %s\n", path, joinNums(made))
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "mkglobalfile",
		Link:    true,
		Summary: "turn a CDSL back into one file for every node",
		Usage:   "mkglobalfile [--from N] [--socket PATH] PATH",
		Help: `Turns PATH, a CDSL made by mklocalfile, back into one file or directory
that every node shares: the copy of node N (--from; default this node's).
The other nodes' copies are removed.

Example:
  mkglobalfile --from 1 /cluster/etc/motd`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		from := fs.Uint("from", 0, "the node whose copy every node gets (default: this node)")
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return Usagef("want one path, got %d arguments", fs.NArg())
		}
		path := fs.Arg(0)
		if cfs.OnMount(path) == "" {
			return fmt.Errorf("%s is not on the cluster filesystem (see where it is mounted with: mount -t fuse.cfs)", path)
		}
		if !cfs.IsCDSL(path) {
			return errors.New(path + " is not a CDSL made by mklocalfile")
		}
		n := uint32(*from)
		if n == 0 {
			st, err := control(*socket).Status(env.Ctx, connect.NewRequest(&ssiv1.StatusRequest{}))
			if err != nil {
				return err
			}
			n = st.Msg.LocalNum
		}
		if err := cfs.MakeGlobal(path, n); err != nil {
			return fmt.Errorf("mkglobalfile %s: %w", path, err)
		}
		fmt.Fprintf(env.Stdout, "%s is now one file for every node (node %d's copy)\n", path, n)
		return nil
	}
	Register(cmd)
}

func init() {
	cmd := &Command{
		Name:    "cfs",
		Summary: "the cluster filesystem: who serves it, its replica",
		Usage:   "ssi cfs [status] [--json] | ssi cfs replica [--socket PATH] N|none | ssi cfs jobroot [--socket PATH] on|off",
		Help: `'ssi cfs' (or 'ssi cfs status') says which node serves the cluster
filesystem, which node replicates it and whether the replica is in sync
(only then can it take over), how many failovers happened, and what this
node is to it.
'ssi cfs replica N' makes node N the replica: the serving node copies its
export to node N's own --cfs-export, then copies every change there before
acknowledging it. When the serving node goes DOWN, an in-sync replica
takes over and every mount follows it; the old server, when it comes
back, becomes the replica and is brought up to date. 'ssi cfs replica
none' stops replicating. Root only.
'ssi cfs jobroot on' gives jobs started through ssi (onnode, run,
migration targets) the cluster filesystem as their /, on every node, with
the node's /proc, /dev, /sys and /run bound in; 'off' gives them the
node's own / again (a node started with --cfs-job-root keeps it on). Root
only. Details: docs/CFS.md.

Example:
  ssi cfs replica 2; ssi cfs`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		socket := socketFlag(fs)
		asJSON := fs.Bool("json", false, "print JSON")
		sub := "status"
		if len(args) > 0 && (args[0] == "status" || args[0] == "replica" || args[0] == "jobroot") {
			sub, args = args[0], args[1:]
		}
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		var st *ssiv1.CfsState
		switch sub {
		case "status":
			if fs.NArg() != 0 {
				return Usagef("unknown subcommand %q: want status, replica or jobroot", fs.Arg(0))
			}
			resp, err := control(*socket).CfsStatus(env.Ctx, connect.NewRequest(&ssiv1.CfsStatusRequest{}))
			if err != nil {
				return err
			}
			st = resp.Msg
		case "replica":
			if fs.NArg() != 1 {
				return Usagef("want one node number, or none")
			}
			var num uint32
			if fs.Arg(0) != "none" {
				n, err := parseNodeNum(fs.Arg(0))
				if err != nil {
					return err
				}
				num = n
			}
			resp, err := control(*socket).SetCfsReplica(env.Ctx, connect.NewRequest(&ssiv1.SetCfsReplicaRequest{Replica: num}))
			if err != nil {
				return err
			}
			st = resp.Msg
		case "jobroot":
			if fs.NArg() != 1 || (fs.Arg(0) != "on" && fs.Arg(0) != "off") {
				return Usagef("want on or off")
			}
			resp, err := control(*socket).SetCfsJobRoot(env.Ctx, connect.NewRequest(&ssiv1.SetCfsJobRootRequest{On: fs.Arg(0) == "on"}))
			if err != nil {
				return err
			}
			st = resp.Msg
		}
		if *asJSON {
			return writeJSON(env.Stdout, cfsJSON{Server: st.Server, Replica: st.Replica, Synced: st.Synced, Failovers: st.Failovers, Recorded: st.Recorded, Mount: st.Mount, Role: st.Role, JobRoot: st.JobRoot, NodeJobRoot: st.NodeJobRoot})
		}
		fmt.Fprintf(env.Stdout, "server:    node %d\n", st.Server)
		switch {
		case st.Replica == 0:
			fmt.Fprintf(env.Stdout, "replica:   none (without a replica, accesses fail with EIO while the server is down)\n")
		case st.Synced:
			fmt.Fprintf(env.Stdout, "replica:   node %d, in sync (it takes over if node %d goes down)\n", st.Replica, st.Server)
		default:
			fmt.Fprintf(env.Stdout, "replica:   node %d, not in sync yet (it cannot take over until node %d has copied everything to it)\n", st.Replica, st.Server)
		}
		fmt.Fprintf(env.Stdout, "failovers: %d\n", st.Failovers)
		mount := st.Mount
		if mount == "" {
			mount = "not mounted"
		}
		fmt.Fprintf(env.Stdout, "this node: %s (mount: %s)\n", st.Role, mount)
		switch {
		case st.JobRoot:
			fmt.Fprintf(env.Stdout, "jobs' /:   the cluster root, on every node (ssi cfs jobroot on)\n")
		case st.NodeJobRoot:
			fmt.Fprintf(env.Stdout, "jobs' /:   the node's own; on this node the cluster root (--cfs-job-root)\n")
		default:
			fmt.Fprintf(env.Stdout, "jobs' /:   the node's own (ssi cfs jobroot on: the cluster root)\n")
		}
		return nil
	}
	Register(cmd)
}

// cfsJSON is ssi cfs --json.
type cfsJSON struct {
	Server    uint32 `json:"server"`
	Replica   uint32 `json:"replica"`
	Synced    bool   `json:"synced"`
	Failovers uint64 `json:"failovers"`
	Recorded  bool   `json:"recorded"`
	Mount     string `json:"mount"`
	Role      string `json:"role"`
	// JobRoot is the cluster setting; NodeJobRoot whether this node's jobs
	// get the cluster root (the setting, or the node's --cfs-job-root).
	JobRoot     bool `json:"job_root"`
	NodeJobRoot bool `json:"node_job_root"`
}
