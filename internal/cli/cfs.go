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
