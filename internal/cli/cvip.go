package cli

// ssi cvip: the cluster virtual IP (docs/CVIP.md). The VIPs are
// replicated state; each director reports what it does for ssi cvip ls.

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
	"github.com/ssi-cluster/ssi/internal/cvip"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/transport"
)

func cvipClient(socket string) ssiv1connect.CvipClient {
	return ssiv1connect.NewCvipClient(transport.NewUnixClient(socket), "http://ssi", connect.WithInterceptors(namesLostDaemon(socket)))
}

func init() {
	family := &Command{
		Name:    "cvip",
		Summary: "cluster virtual IPs: one service address for the whole cluster, balanced over nodes",
		Usage:   "ssi cvip add VIP[:PORT] [options] | ssi cvip ls [--json] | ssi cvip set VIP[:PORT] [options] | ssi cvip rm VIP[:PORT] [--proto tcp|udp]",
		Help: `A cluster virtual IP is an address that is no node's own, on the nodes'
network. One director node holds it (chosen through the cluster state; if
it goes DOWN another takes the address and announces it with gratuitous
ARP) and spreads new connections over the healthy backends in the kernel
(nftables NAT), or in a user-space proxy where nftables is unavailable.

Examples:
  ssi cvip add 10.0.0.100:80 --nodes 2,3 --check /healthz
  ssi cvip add 10.0.0.100:80 --nodes 2:3,3:1 --sched wrr --target-port 8080
  ssi cvip ls
  ssi cvip set 10.0.0.100:80 --nodes 2,3,4
  ssi cvip rm 10.0.0.100:80`,
	}
	addCmd := &Command{Name: "cvip add", Summary: "create a cluster virtual IP",
		Usage: "ssi cvip add VIP[:PORT] [--proto tcp|udp] [--nodes LIST] [--directors LIST] [--sched rr|wrr|lc|load|sh] [--check PATH] [--target-port P] [--datapath auto|userspace]",
		Help: `LIST is node numbers separated by commas; with --sched wrr each may carry a
weight, N:W (1-100). Without --nodes every node is a backend, without
--directors every node may direct. Without :PORT the VIP forwards every port
of the protocol to the same port (the kernel datapath only).

Schedulers: rr round robin; wrr weighted round robin; lc fewest connections
(exact in the user-space proxy, approximated from conntrack's counts every
0.5 s in the kernel); load by the nodes' reported loads; sh source hash (a
client stays on one backend, and its connections survive a director
failover).

Example:
  ssi cvip add 10.0.0.100:80 --nodes 2,3 --directors 1,2 --check /`}
	lsCmd := &Command{Name: "cvip ls", Summary: "list the cluster virtual IPs, their directors, datapaths and backends", Usage: "ssi cvip ls [--json]",
		Help: "Example:\n  ssi cvip ls --json"}
	setCmd := &Command{Name: "cvip set", Summary: "change a cluster virtual IP's settings in place (the others keep their values)",
		Usage: "ssi cvip set VIP[:PORT] [--proto tcp|udp] [--nodes LIST] [--directors LIST] [--sched S] [--check PATH] [--target-port P] [--datapath auto|userspace]",
		Help: `The director keeps the address and the connections it carries: backends
added start taking new connections once their first check passes, backends
removed take no new ones. --check "" goes back to a TCP connect,
--target-port 0 to the VIP's port.

Example:
  ssi cvip set 10.0.0.100:80 --nodes 2,3,4`}
	rmCmd := &Command{Name: "cvip rm", Summary: "remove a cluster virtual IP", Usage: "ssi cvip rm VIP[:PORT] [--proto tcp|udp]",
		Help: "Example:\n  ssi cvip rm 10.0.0.100:80"}
	subs := map[string]subcommand{
		"add": {addCmd, runCvipAdd},
		"ls":  {lsCmd, runCvipLs},
		"set": {setCmd, runCvipSet},
		"rm":  {rmCmd, runCvipRm},
	}
	family.Run = func(env *Env, args []string) error {
		return runSubcommand(env, family, subs, []string{"add", "ls", "set", "rm"}, args)
	}
	Register(family)
}

// parseVIPFlags parses flags before and after the one VIP[:PORT]
// argument (ssi cvip add 10.0.0.100:80 --nodes 2,3, as users type it)
// and the argument.
func parseVIPFlags(env *Env, cmd *Command, fs *flag.FlagSet, args []string) (string, uint16, error) {
	if err := Parse(env, cmd, fs, args); err != nil {
		return "", 0, err
	}
	if fs.NArg() == 0 {
		return "", 0, Usagef("expected one VIP[:PORT]")
	}
	arg := fs.Arg(0)
	if err := Parse(env, cmd, fs, fs.Args()[1:]); err != nil {
		return "", 0, err
	}
	if fs.NArg() > 0 {
		return "", 0, Usagef("unexpected argument %q (one VIP[:PORT] only)", fs.Arg(0))
	}
	return parseVIPArg(arg)
}

// parseVIPArg parses VIP[:PORT].
func parseVIPArg(s string) (string, uint16, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.String(), 0, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return "", 0, Usagef("%q is not VIP or VIP:PORT (e.g. 10.0.0.100 or 10.0.0.100:80)", s)
	}
	return ap.Addr().String(), ap.Port(), nil
}

// parseBackends parses "2,3" or "2:3,3:1" (node:weight).
func parseBackends(s string) ([]uint32, map[uint32]uint32, error) {
	if s == "" {
		return nil, nil, nil
	}
	var nodes []uint32
	var weights map[uint32]uint32
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		num, w, hasW := strings.Cut(f, ":")
		n, err := parseNodeNum(num)
		if err != nil {
			return nil, nil, Usagef("--nodes %q: %v", s, err)
		}
		nodes = append(nodes, n)
		if hasW {
			wv, err := strconv.ParseUint(w, 10, 32)
			if err != nil || wv < 1 || wv > state.MaxWeight {
				return nil, nil, Usagef("--nodes %q: weight %q of node %d is not a number from 1 to %d", s, w, n, state.MaxWeight)
			}
			if weights == nil {
				weights = map[uint32]uint32{}
			}
			weights[n] = uint32(wv)
		}
	}
	return nodes, weights, nil
}

// vipFlags are the settings of ssi cvip add and set.
type vipFlags struct {
	fs                                        *flag.FlagSet
	proto, nodes, directors, sched, check, dp *string
	target                                    *uint
	socket                                    *string
}

func newVIPFlags(env *Env, cmd *Command) *vipFlags {
	fs := NewFlags(env, cmd)
	return &vipFlags{
		fs:        fs,
		proto:     fs.String("proto", "tcp", "protocol: tcp or udp"),
		nodes:     fs.String("nodes", "", "backend nodes, e.g. 2,3 (with --sched wrr: 2:3,3:1 for weights); default every node"),
		directors: fs.String("directors", "", "nodes that may direct, in order of preference, e.g. 1,2; default every node"),
		sched:     fs.String("sched", state.SchedRR, "scheduler: "+strings.Join(state.Schedulers, ", ")),
		check:     fs.String("check", "", "HTTP path of the health check (default: a TCP connect)"),
		target:    fs.Uint("target-port", 0, "the backends' port (default: the VIP's)"),
		dp:        fs.String("datapath", "auto", "auto (the kernel's nftables where available) or userspace (always the proxy)"),
		socket:    socketFlag(fs),
	}
}

// settings are the VIP settings the flags give (not its address, port or
// protocol), parsed but not yet validated as a whole.
func (f *vipFlags) settings() (state.VIP, error) {
	if *f.target > 65535 {
		return state.VIP{}, Usagef("--target-port %d is out of range", *f.target)
	}
	v := state.VIP{Sched: *f.sched, Check: *f.check, TargetPort: uint16(*f.target)}
	switch *f.dp {
	case "auto":
	case state.DatapathUserspace:
		v.Datapath = state.DatapathUserspace
	default:
		return v, Usagef("--datapath %q is not auto or userspace", *f.dp)
	}
	var err error
	if v.Nodes, v.Weights, err = parseBackends(*f.nodes); err != nil {
		return v, err
	}
	if v.Directors, err = parseNodeList(*f.directors); err != nil {
		return v, Usagef("--directors: %v", err)
	}
	return v, nil
}

func runCvipAdd(env *Env, cmd *Command, args []string) error {
	f := newVIPFlags(env, cmd)
	addr, port, err := parseVIPFlags(env, cmd, f.fs, args)
	if err != nil {
		return err
	}
	v, err := f.settings()
	if err != nil {
		return err
	}
	v.Addr, v.Port, v.Proto = addr, port, *f.proto
	if _, err := state.ValidateVIP(v); err != nil {
		return Usagef("%v", err)
	}
	resp, err := cvipClient(*f.socket).AddVIP(env.Ctx, connect.NewRequest(&ssiv1.AddVIPRequest{Vip: cvip.VIPToProto(&v)}))
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "added %s (a director takes it within a second; see ssi cvip ls)\n", resp.Msg.Vip.Key)
	return nil
}

// runCvipSet changes the settings given, the others keep their values.
func runCvipSet(env *Env, cmd *Command, args []string) error {
	f := newVIPFlags(env, cmd)
	addr, port, err := parseVIPFlags(env, cmd, f.fs, args)
	if err != nil {
		return err
	}
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	var fields []string
	for _, fl := range []struct{ flag, field string }{
		{"nodes", "nodes"}, {"directors", "directors"}, {"sched", "sched"}, {"check", "check"}, {"target-port", "target_port"}, {"datapath", "datapath"},
	} {
		if given[fl.flag] {
			fields = append(fields, fl.field)
		}
	}
	if len(fields) == 0 {
		return Usagef("nothing to change: give at least one of --nodes, --directors, --sched, --check, --target-port, --datapath")
	}
	v, err := f.settings()
	if err != nil {
		return err
	}
	key := state.VIPKey(addr, port, *f.proto)
	resp, err := cvipClient(*f.socket).SetVIP(env.Ctx, connect.NewRequest(&ssiv1.SetVIPRequest{Key: key, Vip: cvip.VIPToProto(&v), Fields: fields}))
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "changed %s\n", resp.Msg.Vip.Key)
	return nil
}

func runCvipRm(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	proto := fs.String("proto", "tcp", "protocol: tcp or udp")
	socket := socketFlag(fs)
	addr, port, err := parseVIPFlags(env, cmd, fs, args)
	if err != nil {
		return err
	}
	if *proto != "tcp" && *proto != "udp" {
		return Usagef("--proto %q is not tcp or udp", *proto)
	}
	key := state.VIPKey(addr, port, *proto)
	if _, err := cvipClient(*socket).RemoveVIP(env.Ctx, connect.NewRequest(&ssiv1.RemoveVIPRequest{Key: key})); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "removed %s\n", key)
	return nil
}

// CvipJSON is one VIP in ssi cvip ls --json.
type CvipJSON struct {
	Key        string            `json:"key"`
	Addr       string            `json:"addr"`
	Port       uint32            `json:"port"`
	Proto      string            `json:"proto"`
	TargetPort uint32            `json:"target_port"`
	Nodes      []uint32          `json:"nodes"`
	Weights    map[uint32]uint32 `json:"weights,omitempty"`
	Directors  []uint32          `json:"directors"`
	Sched      string            `json:"sched"`
	Check      string            `json:"check"`
	Director   uint32            `json:"director"`
	Since      *time.Time        `json:"director_since,omitempty"`
	Datapath   string            `json:"datapath"`  // what the director uses now: nftables, userspace, "" unknown
	Requested  string            `json:"requested"` // auto, userspace
	Interface  string            `json:"interface,omitempty"`
	Holding    bool              `json:"holding"`
	Detail     string            `json:"detail,omitempty"`
	Backends   []CvipBackendJSON `json:"backends"`
}

// CvipBackendJSON is one backend as the director sees it.
type CvipBackendJSON struct {
	Node    uint32 `json:"node"`
	Addr    string `json:"addr"`
	Healthy bool   `json:"healthy"`
	Reason  string `json:"reason"`
	Weight  uint32 `json:"weight"`
	Active  int64  `json:"active"` // -1: not known
}

func runCvipLs(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := Parse(env, cmd, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	resp, err := cvipClient(*socket).ListVIPs(env.Ctx, connect.NewRequest(&ssiv1.ListVIPsRequest{}))
	if err != nil {
		return err
	}
	status := map[string]*ssiv1.VIPStatus{}
	for _, st := range resp.Msg.Status {
		status[st.Key] = st
	}
	out := []CvipJSON{}
	for _, v := range resp.Msg.Vips {
		j := CvipJSON{Key: v.Key, Addr: v.Addr, Port: v.Port, Proto: v.Proto, TargetPort: v.TargetPort, Nodes: v.Nodes, Weights: v.Weights,
			Directors: v.Directors, Sched: v.Sched, Check: v.Check, Director: v.Director, Requested: "auto", Backends: []CvipBackendJSON{}}
		if j.Nodes == nil {
			j.Nodes = []uint32{}
		}
		if j.Directors == nil {
			j.Directors = []uint32{}
		}
		if v.Datapath != "" {
			j.Requested = v.Datapath
		}
		if v.DirectorSinceUnixMs != 0 {
			t := time.UnixMilli(v.DirectorSinceUnixMs).UTC()
			j.Since = &t
		}
		if st := status[v.Key]; st != nil {
			j.Datapath, j.Interface, j.Holding, j.Detail = st.Datapath, st.Interface, st.Holding, st.Detail
			for _, b := range st.Backends {
				j.Backends = append(j.Backends, CvipBackendJSON{Node: b.Num, Addr: b.Addr, Healthy: b.Healthy, Reason: b.Reason, Weight: b.Weight, Active: b.Active})
			}
		}
		out = append(out, j)
	}
	if *asJSON {
		return writeJSON(env.Stdout, out)
	}
	if len(out) == 0 {
		fmt.Fprintln(env.Stdout, "no cluster virtual IPs (add one with ssi cvip add VIP:PORT --nodes LIST)")
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VIP\tSCHED\tDIRECTOR\tDATAPATH\tBACKENDS")
	for _, j := range out {
		dir := "none"
		if j.Director != 0 {
			dir = strconv.Itoa(int(j.Director))
			if j.Since != nil {
				dir += " (" + humanDuration(time.Since(*j.Since)) + ")"
			}
		}
		dp := j.Datapath
		if dp == "" {
			dp = "?"
		}
		var bs []string
		for _, b := range j.Backends {
			mark := "up"
			if !b.Healthy {
				mark = "DOWN"
			}
			bs = append(bs, fmt.Sprintf("%d:%s", b.Node, mark))
		}
		backends := strings.Join(bs, " ")
		if backends == "" {
			backends = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.Key, j.Sched, dir, dp, backends)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, j := range out {
		if j.Detail != "" {
			fmt.Fprintf(env.Stdout, "%s: %s\n", j.Key, j.Detail)
		}
		for _, b := range j.Backends {
			if !b.Healthy {
				fmt.Fprintf(env.Stdout, "%s: backend node %d (%s): %s\n", j.Key, b.Node, b.Addr, b.Reason)
			}
		}
	}
	for _, u := range resp.Msg.Unreachable {
		fmt.Fprintln(env.Stdout, u)
	}
	return nil
}
