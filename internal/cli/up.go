package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ssi-cluster/ssi/internal/devcluster"
	"github.com/ssi-cluster/ssi/internal/node"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/state"
)

const defaultDemoDir = "ssi-demo"

func init() {
	cmd := &Command{
		Name:    "up",
		Summary: "create and start a local demo cluster of N nodes on this machine",
		Usage:   "ssi up --nodes N [--dir DIR] [--cluster-name NAME] [--base-ip 127.0.0.2] [--isolate] [--job-root]",
		Help: `Starts N real daemons on this machine, as OpenSSI's UML/Xen demos did.
Node k listens on its own loopback address (base-ip + k - 1, so 127.0.0.k+1 by
default) and keeps its data in DIR/nodek (socket DIR/nodek/ssi.sock, PID in
DIR/nodek/ssi.pid, log DIR/nodek/ssi.log). Returns when every node is UP.
Run again on a stopped cluster's DIR to restart it. With --isolate (root)
each node also gets its own UTS, PID, mount and network namespace, with its
own hostname and an address on a private bridge. Node 1 serves DIR/root as
the cluster filesystem and node k mounts it at DIR/mnt/nodek (docs/CFS.md).
With --job-root the jobs of every node get the cluster filesystem as their /
(docs/CFS.md; DIR/root needs a userland for that: a shell at least);
give it again when restarting the cluster.

Examples:
  ssi up --nodes 3 --dir /tmp/demo
  SSI_SOCKET=/tmp/demo/node2/ssi.sock cluster -V
  ssi down --dir /tmp/demo`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		n := fs.Int("nodes", 3, "how many nodes")
		dir := fs.String("dir", defaultDemoDir, "directory for the nodes' data")
		name := fs.String("cluster-name", "demo", "the cluster's name")
		base := fs.String("base-ip", devcluster.DefaultBaseIP.String(), "node 1's loopback address; node k gets the k-1'th next one")
		baseMAC := fs.String("base-mac", devcluster.DefaultBaseMAC, "node 1's MAC address; node k gets the k-1'th next one")
		port := fs.Int("port", state.DefaultPort, "TLS port of every node")
		voters := fs.Int("voters", state.DefaultVoters, "Raft voters")
		hbi := fs.Duration("heartbeat-interval", state.DefaultHeartbeatInterval, "node heartbeat interval")
		fto := fs.Duration("failure-timeout", state.DefaultFailureTimeout, "silence after which a node is DOWN")
		vra := fs.Duration("voter-replace-after", state.DefaultVoterReplaceAfter, "give a DOWN voter's vote to an UP member after this long (0: never)")
		raftT := fs.Duration("raft-timeout", 0, "Raft heartbeat and election timeout (default 500ms; raise for many nodes)")
		timeout := fs.Duration("timeout", 0, "how long to wait for every node to be UP (default 30s + 0.5s per node)")
		isolate := fs.Bool("isolate", false, "give each node its own namespaces and hostname (root)")
		jobRoot := fs.Bool("job-root", false, "run jobs with the cluster filesystem as their / (the daemons' --cfs-job-root)")
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if *n < 1 || *n > 4096 {
			return Usagef("--nodes must be between 1 and 4096")
		}
		ip, err := nodeaddr.ParseIP(*base)
		if err != nil {
			return Usagef("--base-ip: %v", err)
		}
		if !ip.IsLoopback() && !*isolate {
			return Usagef("--base-ip must be a loopback address (127.x.y.z): the demo cluster never listens elsewhere")
		}
		mac, err := nodeaddr.ParseMAC(*baseMAC)
		if err != nil {
			return Usagef("--base-mac: %v", err)
		}
		cfg := state.Config{Voters: *voters, MaxNodes: max(state.DefaultMaxNodes, *n), Port: *port, HeartbeatInterval: *hbi, FailureTimeout: *fto, VoterReplaceAfter: *vra}
		if err := cfg.Validate(); err != nil {
			return Usagef("%v", err)
		}
		o := devcluster.Options{Dir: *dir, Nodes: *n, ClusterName: *name, BaseIP: ip, BaseMAC: mac, Config: cfg,
			Raft: node.RaftTiming{HeartbeatTimeout: *raftT, ElectionTimeout: *raftT}, Timeout: *timeout, Isolate: *isolate, JobRoot: *jobRoot, Progress: env.Stderr}
		start := time.Now()
		if err := devcluster.Up(env.Ctx, o); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "cluster %s is up: %d nodes in %s (%.1fs)\n", *name, *n, *dir, time.Since(start).Seconds())
		fmt.Fprintf(env.Stdout, "talk to node k with: SSI_SOCKET=%s/nodek/ssi.sock ssi cluster -V\n", absDir(*dir))
		last := *n
		if last > 5 {
			last = 3
		}
		// The addresses the nodes really have, from the node table (on
		// --isolate they are on the cluster's private bridge).
		addrs := map[uint32]string{}
		if st, err := status(env, devcluster.Socket(absDir(*dir), 1), false); err == nil {
			for _, nd := range st.Nodes {
				addrs[nd.Num] = nd.Ipaddr
			}
		}
		for k := 1; k <= last; k++ {
			a, ok := addrs[uint32(k)]
			if !ok {
				na, _ := nodeaddr.NextIP(ip, k-1)
				a = na.String()
			}
			where := ""
			if *isolate {
				where = ", in its own network namespace"
			}
			fmt.Fprintf(env.Stdout, "  node %d: SSI_SOCKET=%s (listens on %s%s)\n", k, devcluster.Socket(absDir(*dir), k), a, where)
		}
		if last < *n {
			fmt.Fprintf(env.Stdout, "  ... node %d: SSI_SOCKET=%s\n", *n, devcluster.Socket(absDir(*dir), *n))
		}
		inside := ""
		if *isolate {
			inside = ", inside its own mount namespace (ssi onnode k ls DIR/mnt/nodek)"
		}
		fmt.Fprintf(env.Stdout, "one root: node 1 serves %s as the cluster filesystem; node k mounts it at %s%s\n",
			devcluster.ExportDir(absDir(*dir)), filepath.Join(absDir(*dir), "mnt", "nodek"), inside)
		if *n > 1 {
			fmt.Fprintf(env.Stdout, "  a synchronous replica that takes over if node 1 dies: SSI_SOCKET=%s ssi cfs replica 2 (its copy: %s)\n",
				devcluster.Socket(absDir(*dir), 1), devcluster.NodeExportDir(absDir(*dir), 2))
		}
		if *isolate {
			printJobPool(env, devcluster.Socket(absDir(*dir), 1))
		}
		if !*isolate {
			fmt.Fprintf(env.Stdout, "watch it: SSI_SOCKET=%s ssi top; the web dashboard: SSI_SOCKET=%[1]s ssi dashboard token (prints a sign-in URL)\n", devcluster.Socket(absDir(*dir), 1))
		}
		fmt.Fprintf(env.Stdout, "stop it with: ssi down --dir %s\n", *dir)
		return nil
	}
	Register(cmd)
}

func absDir(d string) string {
	if wd, err := os.Getwd(); err == nil && len(d) > 0 && d[0] != '/' {
		return wd + "/" + d
	}
	return d
}

func init() {
	cmd := &Command{
		Name:    "down",
		Summary: "stop the local demo cluster started by ssi up",
		Usage:   "ssi down [--dir DIR] [--purge]",
		Help:    "Stops every daemon of the cluster in DIR (SIGTERM, then SIGKILL after 10s) and leaves no process behind.\n--purge also deletes DIR.\n\nExample:\n  ssi down --dir /tmp/demo --purge",
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		dir := fs.String("dir", defaultDemoDir, "directory given to ssi up")
		purge := fs.Bool("purge", false, "delete the cluster's data too")
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		stopped, err := devcluster.Down(*dir, 10*time.Second)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "stopped %d node(s) in %s\n", len(stopped), *dir)
		if *purge {
			if err := os.RemoveAll(*dir); err != nil {
				return fmt.Errorf("remove %s: %w", *dir, err)
			}
		}
		return nil
	}
	Register(cmd)
}
