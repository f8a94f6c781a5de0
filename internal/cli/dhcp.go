package cli

// The provisioning commands (docs/PROVISIONING.md): the cluster's DHCP
// settings (ssi dhcp), guest configurations (ssi xen-config), node images
// (ssi images) and the bulk path of ssi-addnode. Host-side work is done by
// internal/provision; cluster data comes from the local daemon.

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
)

// ---- ssi dhcp ----

func init() {
	family := &Command{
		Name:    "dhcp",
		Summary: "show or change the cluster's DHCP server (addresses by MAC from the node table)",
		Usage:   "ssi dhcp show [--json] | ssi dhcp set [--interface IF] [--netmask M] [--gateway G] [--dns A,B] [--lease-time 1h] [--domain D] [--server-node N|leader] [--enable|--disable]",
		Help: `The DHCP server answers only MAC addresses registered in the node table,
each with its registered IP, the netmask, gateway, DNS servers, domain and
lease time set here, and the node's name as host name. It runs in the
daemon of one node: node 1 by default, or any node (--server-node N), or
whichever node leads (--server-node leader: it moves with leadership). It
serves only when enabled and when the interface exists on that node.
Settings are replicated; changes, new nodes and changed addresses take
effect without a restart. Granted leases are recorded in the replicated
state and listed by 'ssi dhcp show'.

Examples:
  ssi dhcp set --interface br0 --netmask 255.255.255.0 --gateway 192.168.64.1 --dns 192.168.64.1 --enable
  ssi dhcp set --server-node leader
  ssi dhcp show`,
	}
	setCmd := &Command{Name: "dhcp set", Summary: "change DHCP settings; settings not given keep their values", Usage: "ssi dhcp set [--interface IF] [--netmask M] [--gateway G] [--dns A,B] [--lease-time 1h] [--domain D] [--server-node N|leader] [--enable|--disable]",
		Help: "Example:\n  ssi dhcp set --interface br0 --netmask 255.255.255.0 --gateway 192.168.64.1 --enable"}
	showCmd := &Command{Name: "dhcp show", Summary: "show the DHCP settings, which node serves, and the leases", Usage: "ssi dhcp show [--json]",
		Help: "Example:\n  ssi dhcp show --json"}
	subs := map[string]subcommand{
		"set":  {setCmd, runDHCPSet},
		"show": {showCmd, runDHCPShow},
	}
	family.Run = func(env *Env, args []string) error {
		return runSubcommand(env, family, subs, []string{"show", "set"}, args)
	}
	Register(family)
}

func runDHCPSet(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	iface := fs.String("interface", "", "network interface the server listens on, on the serving node (e.g. br0)")
	netmask := fs.String("netmask", "", "subnet mask handed to clients (e.g. 255.255.255.0)")
	gateway := fs.String("gateway", "", "default router handed to clients; empty for none")
	dns := fs.String("dns", "", "DNS servers handed to clients, comma separated; empty for none")
	lease := fs.Duration("lease-time", 0, "lease time (whole seconds; default 1h); clients renew after half of it")
	domain := fs.String("domain", "", "domain name handed to clients")
	server := fs.String("server-node", "", "the node that serves: a node number, or 'leader' for whichever node leads")
	enable := fs.Bool("enable", false, "start serving")
	disable := fs.Bool("disable", false, "stop serving")
	socket := socketFlag(fs)
	if err := Parse(env, cmd, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *enable && *disable {
		return Usagef("--enable and --disable contradict each other")
	}
	set := state.DHCPConfig{}
	probe := state.DefaultDHCPConfig() // the given values, checked locally before anything is sent
	var fields []string
	if given["interface"] {
		set.Interface, probe.Interface = *iface, *iface
		fields = append(fields, "interface")
	}
	if given["netmask"] {
		set.Netmask, probe.Netmask = *netmask, *netmask
		fields = append(fields, "netmask")
	}
	if given["gateway"] {
		set.Gateway, probe.Gateway = *gateway, *gateway
		fields = append(fields, "gateway")
	}
	if given["dns"] {
		for _, s := range strings.Split(*dns, ",") {
			if s = strings.TrimSpace(s); s != "" {
				set.DNS = append(set.DNS, s)
			}
		}
		probe.DNS = set.DNS
		fields = append(fields, "dns")
	}
	if given["lease-time"] {
		set.LeaseTime, probe.LeaseTime = *lease, *lease
		fields = append(fields, "lease_time")
	}
	if given["domain"] {
		set.Domain, probe.Domain = *domain, *domain
		fields = append(fields, "domain")
	}
	if given["server-node"] {
		if strings.EqualFold(*server, "leader") {
			set.ServerNode = state.DHCPServerLeader
		} else {
			n, err := parseNodeNum(*server)
			if err != nil {
				return Usagef("--server-node: %q is neither a node number nor 'leader'", *server)
			}
			set.ServerNode = n
		}
		fields = append(fields, "server_node")
	}
	if *enable || *disable {
		set.Enabled = *enable
		fields = append(fields, "enabled")
	}
	if len(fields) == 0 {
		return Usagef("nothing to change: give at least one setting (see ssi dhcp set -h)")
	}
	if err := state.ValidateDHCPConfig(probe); err != nil {
		return Usagef("%v", err)
	}
	resp, err := control(*socket).SetDHCP(env.Ctx, connect.NewRequest(&ssiv1.SetDHCPRequest{Settings: &ssiv1.DHCPSettings{
		Enabled: set.Enabled, Interface: set.Interface, Netmask: set.Netmask, Gateway: set.Gateway, Dns: set.DNS,
		LeaseTimeSeconds: int64(set.LeaseTime / time.Second), Domain: set.Domain, ServerNode: set.ServerNode,
	}, Fields: fields}))
	if err != nil {
		return err
	}
	printDHCPSettings(env.Stdout, resp.Msg.Settings)
	return nil
}

// DHCPJSON is the --json form of ssi dhcp show.
type DHCPJSON struct {
	Enabled     bool            `json:"enabled"`
	Interface   string          `json:"interface"`
	Netmask     string          `json:"netmask"`
	Gateway     string          `json:"gateway"`
	DNS         []string        `json:"dns"`
	LeaseTime   string          `json:"lease_time"`
	Domain      string          `json:"domain"`
	ServerNode  string          `json:"server_node"` // a number, or "leader"
	ServingNode uint32          `json:"serving_node"`
	LocalNode   uint32          `json:"local_node"`
	LocalStatus string          `json:"local_status"`
	Leases      []DHCPLeaseJSON `json:"leases"`
}

// DHCPLeaseJSON is one lease in ssi dhcp show --json.
type DHCPLeaseJSON struct {
	HWAddr    string    `json:"hwaddr"`
	IPAddr    string    `json:"ipaddr"`
	Node      uint32    `json:"node"`
	Name      string    `json:"name"`
	Expires   time.Time `json:"expires"`
	Recorded  time.Time `json:"recorded"`
	ServerNum uint32    `json:"server_node"`
}

func serverNodeString(n uint32) string {
	if n == state.DHCPServerLeader {
		return "leader"
	}
	return strconv.Itoa(int(n))
}

func runDHCPShow(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	asJSON := fs.Bool("json", false, "print JSON")
	socket := socketFlag(fs)
	if err := Parse(env, cmd, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	st, err := getDHCP(env, *socket)
	if err != nil {
		return err
	}
	s := st.Settings
	if *asJSON {
		out := DHCPJSON{Enabled: s.Enabled, Interface: s.Interface, Netmask: s.Netmask, Gateway: s.Gateway, DNS: s.Dns,
			LeaseTime: (time.Duration(s.LeaseTimeSeconds) * time.Second).String(), Domain: s.Domain,
			ServerNode: serverNodeString(s.ServerNode), ServingNode: st.ServingNum, LocalNode: st.LocalNum, LocalStatus: st.LocalStatus,
			Leases: []DHCPLeaseJSON{}}
		if out.DNS == nil {
			out.DNS = []string{}
		}
		for _, l := range st.Leases {
			out.Leases = append(out.Leases, DHCPLeaseJSON{HWAddr: l.Hwaddr, IPAddr: l.Ipaddr, Node: l.Num, Name: l.Name,
				Expires: time.UnixMilli(l.ExpiresUnixMs).UTC(), Recorded: time.UnixMilli(l.RecordedUnixMs).UTC(), ServerNum: l.ServerNum})
		}
		return writeJSON(env.Stdout, out)
	}
	printDHCPSettings(env.Stdout, s)
	serving := "none (no leader is known)"
	if st.ServingNum != 0 {
		serving = fmt.Sprintf("node %d", st.ServingNum)
	}
	fmt.Fprintf(env.Stdout, "serving node:  %s\n", serving)
	fmt.Fprintf(env.Stdout, "node %d:        %s\n", st.LocalNum, st.LocalStatus)
	if len(st.Leases) == 0 {
		fmt.Fprintln(env.Stdout, "no leases recorded")
		return nil
	}
	now := time.Now()
	tw := tabwriter.NewWriter(env.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nHWADDR\tIPADDR\tNODE\tNAME\tEXPIRES\tSERVER")
	for _, l := range st.Leases {
		exp := time.UnixMilli(l.ExpiresUnixMs)
		when := "expired"
		if exp.After(now) {
			when = "in " + humanDuration(exp.Sub(now))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\n", l.Hwaddr, l.Ipaddr, l.Num, l.Name, when, l.ServerNum)
	}
	return tw.Flush()
}

func printDHCPSettings(w io.Writer, s *ssiv1.DHCPSettings) {
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	enabled := "disabled"
	if s.Enabled {
		enabled = "enabled"
	}
	server := "node " + serverNodeString(s.ServerNode)
	if s.ServerNode == state.DHCPServerLeader {
		server = "the leader"
	}
	fmt.Fprintf(w, "DHCP server:   %s\n", enabled)
	fmt.Fprintf(w, "runs on:       %s\n", server)
	fmt.Fprintf(w, "interface:     %s\n", or(s.Interface, "(not set)"))
	fmt.Fprintf(w, "netmask:       %s\n", or(s.Netmask, "(not set)"))
	fmt.Fprintf(w, "gateway:       %s\n", or(s.Gateway, "(none)"))
	fmt.Fprintf(w, "dns:           %s\n", or(strings.Join(s.Dns, ", "), "(none)"))
	fmt.Fprintf(w, "domain:        %s\n", or(s.Domain, "(none)"))
	fmt.Fprintf(w, "lease time:    %v\n", time.Duration(s.LeaseTimeSeconds)*time.Second)
}
