package cli

// ssi net: the network identities of --net jobs (docs/JOBNET.md): the
// cluster's address pool and which job holds which address.

import (
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// netFlag is --net of onnode and ssi run.
func netFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("net", false, "give the job a network namespace and an address of its own that move with it")
}

func jobNetClient(socket string) ssiv1connect.JobNetClient {
	return ssiv1connect.NewJobNetClient(transport.NewUnixClient(socket), "http://ssi", connect.WithInterceptors(namesLostDaemon(socket)))
}

func init() {
	family := &Command{
		Name:    "net",
		Summary: "addresses of --net jobs: the cluster's pool and who holds what",
		Usage:   "ssi net [ls] [--json] [--stale] | ssi net pool [FIRST-LAST[/BITS] | --clear]",
		Help: `A job started with --net (ssi run --net, onnode --net) gets a network
namespace of its own with an address from the cluster's pool, on the
cluster network; the address, its MAC and its TCP connections move with the
job when it migrates. 'ssi net' lists the addresses held: address, MAC,
cluster PID, the node the job runs on now.

Examples:
  ssi net pool 10.1.0.100-10.1.0.199
  ssi run -d --net ./server --listen :8080
  ssi net`,
	}
	lsCmd := &Command{Name: "net ls", Summary: "list the pool and the addresses held", Usage: "ssi net [ls] [--json] [--stale]",
		Help: "Example:\n  ssi net ls --json"}
	poolCmd := &Command{Name: "net pool", Summary: "show or set the address pool of --net jobs",
		Usage: "ssi net pool [FIRST-LAST[/BITS] | --clear]",
		Help: `FIRST-LAST are IPv4 addresses of the cluster network (both included, at
most 65536); /BITS is the network's prefix length, by default that of the
address of the node the command runs on. Nodes' own addresses are never
given out. A pool that would leave out an address a job holds is refused;
--clear removes the pool once no job holds an address. Needs an identity
allowed to change the cluster (root, the daemon's user, group ssi).

Examples:
  ssi net pool 10.1.0.100-10.1.0.199
  ssi net pool 10.1.0.100-10.1.0.199/16
  ssi net pool`}
	subs := map[string]subcommand{
		"ls":   {lsCmd, runNetLs},
		"pool": {poolCmd, runNetPool},
	}
	family.Run = func(env *Env, args []string) error {
		if len(args) == 0 || strings.HasPrefix(args[0], "--") && args[0] != "--help" {
			return runNetLs(env, lsCmd, args)
		}
		return runSubcommand(env, family, subs, []string{"ls", "pool"}, args)
	}
	Register(family)
}

// NetJSON is ssi net --json.
type NetJSON struct {
	Pool  *NetPoolJSON  `json:"pool"`
	Addrs []NetAddrJSON `json:"addrs"`
}

// NetPoolJSON is the pool in ssi net --json.
type NetPoolJSON struct {
	First string `json:"first"`
	Last  string `json:"last"`
	Bits  uint32 `json:"bits"`
}

// NetAddrJSON is one address held, in ssi net --json.
type NetAddrJSON struct {
	IP    string    `json:"ip"`
	MAC   string    `json:"mac"`
	CPID  int64     `json:"cpid"`
	Node  uint32    `json:"node"`
	Since time.Time `json:"since"`
}

func runNetLs(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	asJSON := fs.Bool("json", false, "print JSON")
	stale := fs.Bool("stale", false, "answer from this node's copy of the state without asking the leader")
	socket := socketFlag(fs)
	if err := Parse(env, cmd, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	resp, err := jobNetClient(*socket).List(env.Ctx, connect.NewRequest(&ssiv1.ListNetRequest{Stale: *stale}))
	if err != nil {
		return err
	}
	out := NetJSON{Addrs: []NetAddrJSON{}}
	if p := resp.Msg.Pool; p != nil {
		out.Pool = &NetPoolJSON{First: p.First, Last: p.Last, Bits: p.Bits}
	}
	for _, a := range resp.Msg.Addrs {
		out.Addrs = append(out.Addrs, NetAddrJSON{IP: a.Ip, MAC: a.Mac, CPID: a.Cpid, Node: a.Node, Since: time.UnixMilli(a.SinceUnixMs).UTC()})
	}
	if *asJSON {
		return writeJSON(env.Stdout, out)
	}
	if out.Pool == nil {
		fmt.Fprintln(env.Stdout, "no address pool: --net jobs are refused (ssi net pool FIRST-LAST)")
	} else {
		fmt.Fprintf(env.Stdout, "pool %s-%s/%d, %d held\n", out.Pool.First, out.Pool.Last, out.Pool.Bits, len(out.Addrs))
	}
	if len(out.Addrs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tMAC\tCPID\tNODE\tSINCE")
	for _, a := range out.Addrs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", a.IP, a.MAC, a.CPID, a.Node, a.Since.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func runNetPool(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	clear := fs.Bool("clear", false, "remove the pool (refused while jobs hold addresses)")
	socket := socketFlag(fs)
	if err := Parse(env, cmd, fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 1:
		return Usagef("unexpected argument %q", fs.Arg(1))
	case fs.NArg() == 0 && !*clear:
		return runNetLs(env, cmd, []string{"--socket", *socket})
	case fs.NArg() == 1 && *clear:
		return Usagef("--clear takes no range")
	}
	req := &ssiv1.SetNetPoolRequest{Clear: *clear}
	if !*clear {
		p, err := ParseNetPool(fs.Arg(0))
		if err != nil {
			return err
		}
		req.Pool = p
	}
	if _, err := jobNetClient(*socket).SetPool(env.Ctx, connect.NewRequest(req)); err != nil {
		return err
	}
	if *clear {
		fmt.Fprintln(env.Stdout, "pool removed")
		return nil
	}
	fmt.Fprintf(env.Stdout, "pool %s-%s set\n", req.Pool.First, req.Pool.Last)
	return nil
}

// ParseNetPool parses FIRST-LAST[/BITS] (BITS 0: the daemon's network).
func ParseNetPool(s string) (*ssiv1.NetPool, error) {
	rng, bitsArg, hasBits := strings.Cut(s, "/")
	a, b, ok := strings.Cut(rng, "-")
	first, err1 := netip.ParseAddr(a)
	last, err2 := netip.ParseAddr(b)
	if !ok || err1 != nil || err2 != nil || !first.Is4() || !last.Is4() {
		return nil, Usagef("%q is not FIRST-LAST[/BITS] of IPv4 addresses (e.g. 10.1.0.100-10.1.0.199)", s)
	}
	p := &ssiv1.NetPool{First: first.String(), Last: last.String()}
	if hasBits {
		n, err := strconv.ParseUint(bitsArg, 10, 8)
		if err != nil {
			return nil, Usagef("/%s is not a prefix length", bitsArg)
		}
		p.Bits = uint32(n)
		if err := state.ValidNetPool(state.NetPool{First: first, Last: last, Bits: int(n)}); err != nil {
			return nil, Usagef("%v", err)
		}
	} else if last.Less(first) {
		return nil, Usagef("the pool %s ends before it starts", rng)
	}
	return p, nil
}

// printJobPool tells the user of ssi up --isolate about --net jobs.
func printJobPool(env *Env, socket string) {
	resp, err := jobNetClient(socket).List(env.Ctx, connect.NewRequest(&ssiv1.ListNetRequest{Stale: true}))
	if err != nil || resp.Msg.Pool == nil {
		return
	}
	fmt.Fprintf(env.Stdout, "jobs with an address of their own that moves with them: ssi run -d --net CMD (pool %s-%s; ssi net)\n", resp.Msg.Pool.First, resp.Msg.Pool.Last)
}
