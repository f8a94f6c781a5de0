package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
)

// NodeJSON is the --json form of a node (cluster -V --json): the same on
// every node, because it holds absolute times only.
type NodeJSON struct {
	Num        uint32    `json:"num"`
	Name       string    `json:"name"`
	State      string    `json:"state"`
	IPAddr     string    `json:"ipaddr"`
	HWAddr     string    `json:"hwaddr"`
	Role       string    `json:"role"`
	StateSince time.Time `json:"state_since"`
	InitNode   bool      `json:"init_node"`
	Xen        bool      `json:"xen"`
}

func status(env *Env, socket string, events bool) (*ssiv1.StatusResponse, error) {
	return statusOf(env, socket, &ssiv1.StatusRequest{Events: events})
}

func statusOf(env *Env, socket string, req *ssiv1.StatusRequest) (*ssiv1.StatusResponse, error) {
	resp, err := control(socket).Status(env.Ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func nodesJSON(st *ssiv1.StatusResponse) []NodeJSON {
	out := []NodeJSON{}
	for _, n := range st.Nodes {
		out = append(out, NodeJSON{Num: n.Num, Name: n.Name, State: n.State.Label(), IPAddr: n.Ipaddr, HWAddr: n.Hwaddr,
			Role: n.Role.Label(), StateSince: time.UnixMilli(n.StateSinceUnixMs).UTC(), InitNode: n.InitNode, Xen: n.Xen})
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// humanDuration prints a time in state as 3s, 4m12s, 2h03m, 5d04h.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

func init() {
	cmd := &Command{
		Name:    "cluster",
		Link:    true,
		Summary: "show the nodes of the cluster",
		Usage:   "cluster [-V] [--json] [--events] [--stale] [--socket PATH]",
		Help: `Without options prints the numbers of the nodes that are UP, one line.
-V prints every node: number, name, state, IP, MAC, role (leader, voter or
member) and time in state. --json prints the same as JSON. --events prints
the membership transitions every node agreed on, oldest first. A node that
has just started answers only once it has caught up with the log it had
(exit 255 until then); --stale shows what it has so far.

Examples:
  cluster -V
  SSI_SOCKET=.demo/node2/ssi.sock cluster -V --json`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		verbose := fs.Bool("V", false, "verbose: every node with its details")
		asJSON := fs.Bool("json", false, "print JSON")
		events := fs.Bool("events", false, "print the agreed membership transitions")
		stale := fs.Bool("stale", false, "answer even while the node is still catching up after its start")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return Usagef("unexpected argument %q", fs.Arg(0))
		}
		st, err := statusOf(env, *socket, &ssiv1.StatusRequest{Events: *events, Stale: *stale})
		if err != nil {
			return err
		}
		switch {
		case *events:
			return printEvents(env.Stdout, st, *asJSON)
		case *asJSON:
			return writeJSON(env.Stdout, nodesJSON(st))
		case *verbose:
			return printNodes(env.Stdout, st, time.Now())
		}
		var up []string
		for _, n := range st.Nodes {
			if n.State == ssiv1.NodeState_NODE_STATE_UP {
				up = append(up, strconv.Itoa(int(n.Num)))
			}
		}
		fmt.Fprintln(env.Stdout, strings.Join(up, " "))
		return nil
	}
	Register(cmd)
}

func printNodes(w io.Writer, st *ssiv1.StatusResponse, now time.Time) error {
	leader := "no leader"
	if st.LeaderNum != 0 {
		leader = fmt.Sprintf("leader node %d", st.LeaderNum)
	}
	fmt.Fprintf(w, "Cluster %s: %d nodes, %s, this is node %d\n", st.ClusterName, len(st.Nodes), leader, st.LocalNum)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNAME\tSTATE\tIPADDR\tHWADDR\tROLE\tSINCE")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Num, n.Name, n.State.Label(), n.Ipaddr, n.Hwaddr, n.Role.Label(),
			humanDuration(now.Sub(time.UnixMilli(n.StateSinceUnixMs))))
	}
	return tw.Flush()
}

func printEvents(w io.Writer, st *ssiv1.StatusResponse, asJSON bool) error {
	if asJSON {
		type ev struct {
			Time   time.Time `json:"time"`
			Num    uint32    `json:"num"`
			From   string    `json:"from"`
			To     string    `json:"to"`
			Reason string    `json:"reason"`
			Index  uint64    `json:"index"`
		}
		out := []ev{}
		for _, e := range st.Events {
			out = append(out, ev{time.UnixMilli(e.TimeUnixMs).UTC(), e.Num, e.From.Label(), e.To.Label(), e.Reason, e.Index})
		}
		return writeJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tNODE\tFROM\tTO\tREASON")
	for _, e := range st.Events {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", time.UnixMilli(e.TimeUnixMs).Format("2006-01-02T15:04:05.000"), e.Num, e.From.Label(), e.To.Label(), e.Reason)
	}
	return tw.Flush()
}

func init() {
	simple := func(name, summary, usage, help string, run func(env *Env, st *ssiv1.StatusResponse, args []string) error, nargs int) {
		cmd := &Command{Name: name, Link: true, Summary: summary, Usage: usage, Help: help}
		cmd.Run = func(env *Env, args []string) error {
			fs := NewFlags(env, cmd)
			socket := socketFlag(fs)
			if err := Parse(env, cmd, fs, args); err != nil {
				return err
			}
			if fs.NArg() != nargs {
				return Usagef("expected %d argument(s), got %d", nargs, fs.NArg())
			}
			st, err := status(env, *socket, false)
			if err != nil {
				return err
			}
			return run(env, st, fs.Args())
		}
		Register(cmd)
	}
	simple("clusternode_num", "print this node's number", "clusternode_num [--socket PATH]",
		"Example:\n  clusternode_num", func(env *Env, st *ssiv1.StatusResponse, _ []string) error {
			fmt.Fprintln(env.Stdout, st.LocalNum)
			return nil
		}, 0)
	simple("clustername", "print the cluster's name", "clustername [--socket PATH]",
		"Example:\n  clustername", func(env *Env, st *ssiv1.StatusResponse, _ []string) error {
			fmt.Fprintln(env.Stdout, st.ClusterName)
			return nil
		}, 0)
	simple("clusternode_getstate", "print one node's state", "clusternode_getstate N [--socket PATH]",
		"Prints NEVERUP, COMINGUP, UP, GOINGDOWN or DOWN.\n\nExample:\n  clusternode_getstate 2",
		func(env *Env, st *ssiv1.StatusResponse, args []string) error {
			num, err := parseNodeNum(args[0])
			if err != nil {
				return err
			}
			for _, n := range st.Nodes {
				if n.Num == num {
					fmt.Fprintln(env.Stdout, n.State.Label())
					return nil
				}
			}
			return fmt.Errorf("node %d is not in the node table of cluster %s (see 'cluster -V')", num, st.ClusterName)
		}, 1)
}

func parseNodeNum(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || !validNodeNumText(s) {
		return 0, Usagef("%q is not a node number (1, 2, ... 4294967295, in decimal)", s)
	}
	return uint32(n), nil
}

func init() {
	cmd := &Command{
		Name:    "clustertab",
		Summary: "print the node table in OpenSSI's /etc/clustertab format",
		Usage:   "ssi clustertab [--json] [--socket PATH]",
		Help: `Columns: node number, IP address, MAC address, boot protocol (P = PXE,
E = Etherboot; ssi nodes boot with P), init-node flag (1 for the node that
created the cluster), boot device. Tools that read /etc/clustertab can read
this output.

Example:
  ssi clustertab > /etc/clustertab`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		asJSON := fs.Bool("json", false, "print JSON")
		socket := socketFlag(fs)
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		st, err := status(env, *socket, false)
		if err != nil {
			return err
		}
		type row struct {
			Num       uint32 `json:"num"`
			IPAddr    string `json:"ipaddr"`
			HWAddr    string `json:"hwaddr"`
			BootProto string `json:"boot_proto"`
			InitNode  bool   `json:"init_node"`
			BootDev   string `json:"boot_dev"`
		}
		var rows []row
		for _, n := range st.Nodes {
			dev := "eth0"
			rows = append(rows, row{n.Num, n.Ipaddr, n.Hwaddr, "P", n.InitNode, dev})
		}
		if *asJSON {
			if rows == nil {
				rows = []row{}
			}
			return writeJSON(env.Stdout, rows)
		}
		fmt.Fprintf(env.Stdout, "# clustertab of cluster %s, written by ssi\n", st.ClusterName)
		for _, r := range rows {
			flag := 0
			if r.InitNode {
				flag = 1
			}
			fmt.Fprintf(env.Stdout, "%d\t%s\t%s\t%s\t%d\t%s\n", r.Num, r.IPAddr, r.HWAddr, r.BootProto, flag, r.BootDev)
		}
		return nil
	}
	Register(cmd)
}
