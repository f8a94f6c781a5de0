package cli

// The provisioning commands (docs/PROVISIONING.md): the cluster's DHCP
// settings (ssi dhcp), guest configurations (ssi xen-config), node images
// (ssi images) and the bulk path of ssi-addnode. Host-side work is done by
// internal/provision; cluster data comes from the local daemon.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/node"
	"github.com/ssi-cluster/ssi/internal/nodeaddr"
	"github.com/ssi-cluster/ssi/internal/provision"
)

// parseInterspersed parses flags that may come before, between or after
// positional arguments (ssi xen-config ssi2 --write) and returns the
// positional ones. After "--" everything is positional.
func parseInterspersed(env *Env, cmd *Command, fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := Parse(env, cmd, fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if i := len(args) - len(rest) - 1; i >= 0 && args[i] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// provisionError turns the provision package's input errors (a bad or too
// small size, a value that cannot be written) into usage errors: exit 2.
func provisionError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, provision.ErrInvalid) || errors.Is(err, provision.ErrTooSmall) || errors.Is(err, provision.ErrShrink) {
		return &UsageError{Msg: err.Error()}
	}
	return err
}

func parseSizeFlag(name, s string) (int64, error) {
	if s == "" {
		return 0, Usagef("--%s is required (e.g. 64M, 2G)", name)
	}
	n, err := provision.ParseSize(s)
	if err != nil {
		return 0, Usagef("--%s: %v", name, err)
	}
	return n, nil
}

// toProvisionNode converts a node of the node table.
func toProvisionNode(n *ssiv1.Node) (provision.Node, error) {
	ip, err := netip.ParseAddr(n.Ipaddr)
	if err != nil {
		return provision.Node{}, fmt.Errorf("node %d (%s) has IP address %q in the node table: %w", n.Num, n.Name, n.Ipaddr, err)
	}
	return provision.Node{Num: int(n.Num), Name: n.Name, HWAddr: n.Hwaddr, IPAddr: ip, InitNode: n.InitNode}, nil
}

// resolveNodes finds the nodes named on the command line: numbers, names
// or "all", in the order given, each once.
func resolveNodes(st *ssiv1.StatusResponse, args []string) ([]*ssiv1.Node, error) {
	var out []*ssiv1.Node
	seen := map[uint32]bool{}
	add := func(n *ssiv1.Node) {
		if !seen[n.Num] {
			seen[n.Num] = true
			out = append(out, n)
		}
	}
	for _, a := range args {
		if a == "all" {
			for _, n := range st.Nodes {
				add(n)
			}
			continue
		}
		var found *ssiv1.Node
		if num, err := strconv.ParseUint(a, 10, 32); err == nil {
			for _, n := range st.Nodes {
				if uint64(n.Num) == num {
					found = n
				}
			}
		} else {
			for _, n := range st.Nodes {
				if strings.EqualFold(n.Name, a) {
					found = n
				}
			}
		}
		if found == nil {
			return nil, fmt.Errorf("node %q is not in the node table of cluster %s (see 'cluster -V')", a, st.ClusterName)
		}
		add(found)
	}
	return out, nil
}

// joinServer is the address new nodes should join through: the leader if
// it is UP, else any UP node.
func joinServer(st *ssiv1.StatusResponse, port uint32) (string, error) {
	var pick *ssiv1.Node
	for _, n := range st.Nodes {
		if n.State != ssiv1.NodeState_NODE_STATE_UP {
			continue
		}
		if n.Num == st.LeaderNum {
			pick = n
			break
		}
		if pick == nil {
			pick = n
		}
	}
	if pick == nil {
		return "", fmt.Errorf("no node of cluster %s is UP to join through (see 'cluster -V')", st.ClusterName)
	}
	return net.JoinHostPort(pick.Ipaddr, strconv.Itoa(int(port))), nil
}

func provisionInfo(env *Env, socket string) (*ssiv1.ProvisionInfoResponse, error) {
	resp, err := control(socket).ProvisionInfo(env.Ctx, connect.NewRequest(&ssiv1.ProvisionInfoRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func getDHCP(env *Env, socket string) (*ssiv1.GetDHCPResponse, error) {
	resp, err := control(socket).GetDHCP(env.Ctx, connect.NewRequest(&ssiv1.GetDHCPRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// subcommand is one verb of a command family (ssi dhcp set, ssi images root).
type subcommand struct {
	cmd *Command // for its help text; errors are reported with the family's usage
	run func(env *Env, sub *Command, args []string) error
}

func runSubcommand(env *Env, family *Command, subs map[string]subcommand, order []string, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fs := NewFlags(env, family)
		if len(args) == 0 {
			return Usagef("expected one of: %s", strings.Join(order, ", "))
		}
		return Parse(env, family, fs, []string{"-h"})
	}
	sub, ok := subs[args[0]]
	if !ok {
		return Usagef("unknown subcommand %q (expected one of: %s)", args[0], strings.Join(order, ", "))
	}
	err := sub.run(env, sub.cmd, args[1:])
	var ue *UsageError
	if errors.As(err, &ue) && ue.Usage == "" { // show the subcommand's synopsis, not the family's
		return &UsageError{Msg: ue.Msg, Usage: sub.cmd.Usage}
	}
	return err
}

// ---- ssi xen-config ----

// guestFlags are the guest settings shared by xen-config and ssi-addnode --count.
type guestFlags struct {
	images, kernel, ramdisk, format, bridge, rootDev, extra *string
	memory                                                  *int
}

func addGuestFlags(fs *flag.FlagSet) guestFlags {
	return guestFlags{
		images:  fs.String("images", provision.DefaultImagesDir, "images directory (boot/, configs/, nodeN/)"),
		kernel:  fs.String("kernel", "", "guest kernel (default IMAGES/boot/vmlinuz)"),
		ramdisk: fs.String("ramdisk", "", "guest initial ramdisk (default IMAGES/boot/initrd)"),
		memory:  fs.Int("memory", provision.DefaultMemoryMB, "guest memory in MiB"),
		format:  fs.String("format", "xl", "configuration format: xl, qemu or libvirt"),
		bridge:  fs.String("bridge", "", "host bridge for the guests' NIC (default: the toolstack's)"),
		rootDev: fs.String("root-device", "", "root= device (default /dev/hda1 for xl, /dev/vda for QEMU and libvirt)"),
		extra:   fs.String("extra", "", "more kernel command line arguments for every guest"),
	}
}

// options builds the guest options; the images directory is made absolute.
func (g guestFlags) options() (provision.GuestOptions, error) {
	f, err := provision.ParseFormat(*g.format)
	if err != nil {
		return provision.GuestOptions{}, Usagef("--format: %v", err)
	}
	dir, err := filepath.Abs(*g.images)
	if err != nil {
		return provision.GuestOptions{}, Usagef("--images: %v", err)
	}
	return provision.GuestOptions{ImagesDir: dir, Kernel: *g.kernel, Ramdisk: *g.ramdisk, MemoryMB: *g.memory,
		Format: f, Bridge: *g.bridge, RootDevice: *g.rootDev}, nil
}

// joinArgs is the kernel command line part that tells a guest where to join.
func joinArgs(server, extra string) string {
	return strings.TrimSpace("ssi.server=" + server + " " + extra)
}

func init() {
	cmd := &Command{
		Name:    "xen-config",
		Summary: "print or write the Xen (xl), QEMU or libvirt configuration of nodes",
		Usage:   "ssi xen-config NODE... [--images DIR] [--kernel PATH] [--ramdisk PATH] [--memory MB] [--format xl|qemu|libvirt] [--netmask M] [--gateway G] [--with-token] [--write [--force]]",
		Help: `NODE is a node number, a node name or 'all'. For each node prints (or with
--write writes to IMAGES/configs/NAME.cfg, .qemu or .xml) the guest
configuration of the OpenSSI how-to: kernel, ramdisk, memory, name, disks
(the init node: its root and swap images; other nodes: their swap image),
root, the NIC with the node's MAC, and for the init node its address
(netmask and gateway default to the 'ssi dhcp' settings). The kernel
command line carries the cluster's join parameters: ssi.server=IP:PORT (the
leader, or another UP node) and, with --with-token, ssi.token=TOKEN for each
node that never joined: a fresh join token, which REPLACES the token
ssi-addnode printed. Tokens are secrets: files holding them are written
readable by their owner only; without --with-token none is written.

Examples:
  ssi xen-config ssi1 --images /images/ssi --kernel /images/ssi/boot/xenU-vmlinuz
  ssi xen-config all --write --with-token
  ssi xen-config 2 3 --format qemu --write`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		g := addGuestFlags(fs)
		netmask := fs.String("netmask", "", "the init node's netmask (default: the DHCP netmask)")
		gateway := fs.String("gateway", "", "the init node's gateway (default: the DHCP gateway)")
		write := fs.Bool("write", false, "write IMAGES/configs/NAME.cfg (.qemu, .xml) instead of printing")
		force := fs.Bool("force", false, "with --write: replace existing files")
		withToken := fs.Bool("with-token", false, "put a fresh join token on the kernel command line of nodes that never joined (replaces their current token)")
		ttl := ttlFlag(fs, "token-ttl", node.DefaultTokenTTL, "with --with-token: how long the tokens stay valid (at least 1s)")
		socket := socketFlag(fs)
		names, err := parseInterspersed(env, cmd, fs, args)
		if err != nil {
			return err
		}
		if len(names) == 0 {
			return Usagef("expected at least one node (a number, a name or 'all')")
		}
		opts, err := g.options()
		if err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			v    string
			dst  *netip.Addr
		}{{"netmask", *netmask, &opts.Netmask}, {"gateway", *gateway, &opts.Gateway}} {
			if f.v == "" {
				continue
			}
			a, err := netip.ParseAddr(f.v)
			if err != nil || !a.Is4() {
				return Usagef("--%s: %q is not an IPv4 address", f.name, f.v)
			}
			*f.dst = a
		}
		st, err := status(env, *socket, false)
		if err != nil {
			return err
		}
		sel, err := resolveNodes(st, names)
		if err != nil {
			return err
		}
		info, err := provisionInfo(env, *socket)
		if err != nil {
			return err
		}
		if *netmask == "" || *gateway == "" {
			dh, err := getDHCP(env, *socket)
			if err != nil {
				return err
			}
			if *netmask == "" && dh.Settings.Netmask != "" {
				opts.Netmask, _ = netip.ParseAddr(dh.Settings.Netmask)
			}
			if *gateway == "" && dh.Settings.Gateway != "" {
				opts.Gateway, _ = netip.ParseAddr(dh.Settings.Gateway)
			}
		}
		server, err := joinServer(st, info.Port)
		if err != nil {
			return err
		}
		opts.ExtraArgs = joinArgs(server, *g.extra)
		nodes := make([]provision.Node, len(sel))
		for i, n := range sel {
			if nodes[i], err = toProvisionNode(n); err != nil {
				return err
			}
		}
		// Render once without tokens: bad input fails before any token is replaced.
		for _, n := range nodes {
			if _, err := provision.RenderConfig(n, opts, opts.Format); err != nil {
				return provisionError(err)
			}
			if p := provision.ConfigPath(opts.ImagesDir, n, opts.Format); *write && !*force {
				if _, err := os.Lstat(p); err == nil {
					return fmt.Errorf("%w: %s (use --force to replace it)", provision.ErrExists, p)
				}
			}
		}
		if *withToken {
			opts.NodeArgs = map[int]string{}
			for i, n := range sel {
				if n.State != ssiv1.NodeState_NODE_STATE_NEVERUP {
					continue // it has its certificate; a token would only be a liability
				}
				resp, err := control(*socket).IssueToken(env.Ctx, connect.NewRequest(&ssiv1.TokenRequest{Num: n.Num, TokenTtlSeconds: int64(ttl.Seconds())}))
				if err != nil {
					return fmt.Errorf("issue a join token for node %d (%s): %w", n.Num, n.Name, err)
				}
				opts.NodeArgs[nodes[i].Num] = "ssi.token=" + resp.Msg.Token
			}
			opts.Private = len(opts.NodeArgs) > 0
		}
		for i, n := range nodes {
			if *write {
				p, err := provision.WriteConfig(opts.ImagesDir, n, opts, *force)
				if err != nil {
					return provisionError(err)
				}
				fmt.Fprintf(env.Stdout, "node %d %s: wrote %s\n", n.Num, n.Name, p)
				continue
			}
			data, err := provision.RenderConfig(n, opts, opts.Format)
			if err != nil {
				return provisionError(err)
			}
			if i > 0 {
				fmt.Fprintln(env.Stdout)
			}
			env.Stdout.Write(data)
		}
		return nil
	}
	Register(cmd)
}

// ---- ssi-addnode --count ----

// bulkAdd is ssi-addnode --count: the flags that matter to it.
type bulkAdd struct {
	count             int
	hwBase, ipBase    string
	xen, force, token bool
	swapSize          string
	guest             guestFlags
	ttl               time.Duration
	asJSON            bool
	socket            string
}

// addNodesBulk plans count sequential nodes from the next free number,
// refuses overlaps with the node table, registers them in one replicated
// change and, with --xennode, creates their swap images and guest
// configurations. If that local step fails the nodes are removed again:
// all or nothing.
func addNodesBulk(env *Env, b bulkAdd) error {
	if b.count < 1 || b.count > provision.MaxBulkNodes {
		return Usagef("--count must be between 1 and %d", provision.MaxBulkNodes)
	}
	if b.hwBase == "" || b.ipBase == "" {
		return Usagef("--count needs --hwaddr-base and --ipaddr-base")
	}
	mac, err := nodeaddr.ParseMAC(b.hwBase)
	if err != nil {
		return Usagef("--hwaddr-base: %v", err)
	}
	ip, err := nodeaddr.ParseIP(b.ipBase)
	if err != nil {
		return Usagef("--ipaddr-base: %v", err)
	}
	var swapSize int64
	var opts provision.GuestOptions
	if b.xen {
		if swapSize, err = parseSizeFlag("swap-size", b.swapSize); err != nil {
			return err
		}
		if swapSize < provision.MinSwapImageSize || swapSize%provision.ImageBlockSize != 0 {
			return Usagef("--swap-size %s: use at least %s, in whole 4 KiB blocks", b.swapSize, provision.FormatSize(provision.MinSwapImageSize))
		}
		if opts, err = b.guest.options(); err != nil {
			return err
		}
	}
	st, err := status(env, b.socket, false)
	if err != nil {
		return err
	}
	info, err := provisionInfo(env, b.socket)
	if err != nil {
		return err
	}
	if info.NamePrefix == "" || info.NextNum == 0 {
		return fmt.Errorf("cluster %q is not created yet on this node; try again once 'cluster -V' shows it", info.ClusterName)
	}
	planned, err := provision.PlanNodes(b.count, mac, ip, int(info.NextNum), info.NamePrefix)
	if err != nil {
		return provisionError(err)
	}
	existing := make([]provision.Node, 0, len(st.Nodes))
	for _, n := range st.Nodes {
		pn, err := toProvisionNode(n)
		if err != nil {
			return err
		}
		existing = append(existing, pn)
	}
	if err := provision.CheckOverlap(existing, planned); err != nil {
		return fmt.Errorf("nothing was registered: %w", err)
	}
	if b.xen {
		// Check the local step as far as possible before registering anything.
		server, err := joinServer(st, info.Port)
		if err != nil {
			return err
		}
		opts.ExtraArgs = joinArgs(server, *b.guest.extra)
		if _, err := provision.FindTool("mkswap"); err != nil {
			return fmt.Errorf("nothing was registered: %w", err)
		}
		for _, n := range planned {
			if _, err := provision.RenderConfig(n, opts, opts.Format); err != nil {
				return provisionError(err)
			}
			for _, p := range []string{provision.SwapImagePath(opts.ImagesDir, n), provision.ConfigPath(opts.ImagesDir, n, opts.Format)} {
				if _, err := os.Lstat(p); err == nil && !b.force {
					return fmt.Errorf("nothing was registered: %w: %s (use --force to replace it)", provision.ErrExists, p)
				}
			}
		}
	}

	specs := make([]*ssiv1.NodeSpec, len(planned))
	for i, n := range planned {
		specs[i] = &ssiv1.NodeSpec{Num: uint32(n.Num), Name: n.Name, Hwaddr: n.HWAddr, Ipaddr: n.IPAddr.String(), Xen: b.xen}
	}
	resp, err := control(b.socket).AddNodes(env.Ctx, connect.NewRequest(&ssiv1.AddNodesRequest{Nodes: specs, TokenTtlSeconds: int64(b.ttl.Seconds())}))
	if err != nil {
		return err
	}
	added := resp.Msg.Nodes
	if b.xen {
		if b.token {
			opts.NodeArgs, opts.Private = map[int]string{}, true
			for _, a := range added {
				opts.NodeArgs[int(a.Node.Num)] = "ssi.token=" + a.Token
			}
		}
		if _, err := provision.ProvisionBulk(env.Ctx, opts.ImagesDir, planned, opts, swapSize, b.force, env.Stderr); err != nil {
			return undoAdd(env, b.socket, added, fmt.Errorf("creating their swap images and configurations in %s failed: %w", opts.ImagesDir, err))
		}
	}
	if b.asJSON {
		type addedJSON struct {
			Num    uint32 `json:"num"`
			Name   string `json:"name"`
			HWAddr string `json:"hwaddr"`
			IPAddr string `json:"ipaddr"`
			Token  string `json:"token"`
		}
		out := []addedJSON{}
		for _, a := range added {
			out = append(out, addedJSON{a.Node.Num, a.Node.Name, a.Node.Hwaddr, a.Node.Ipaddr, a.Token})
		}
		return writeJSON(env.Stdout, out)
	}
	for _, a := range added {
		fmt.Fprintf(env.Stdout, "node %d %s %s %s token %s\n", a.Node.Num, a.Node.Name, a.Node.Hwaddr, a.Node.Ipaddr, a.Token)
	}
	if b.xen {
		fmt.Fprintf(env.Stderr, "created %d swap images and %s configurations in %s\n", len(added), opts.Format, opts.ImagesDir)
	}
	return nil
}

// undoAdd removes nodes that were just registered, because the rest of
// the command failed, and says what happened.
func undoAdd(env *Env, socket string, added []*ssiv1.AddedNode, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(env.Ctx), 30*time.Second)
	defer cancel()
	var nums []uint32
	var failed []string
	for _, a := range added {
		nums = append(nums, a.Node.Num)
		if _, err := control(socket).RemoveNode(ctx, connect.NewRequest(&ssiv1.RemoveNodeRequest{Num: a.Node.Num})); err != nil {
			failed = append(failed, fmt.Sprintf("node %d: %s", a.Node.Num, message(err)))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("registered nodes %s, but %w; removing them again failed too (%s): remove them with 'ssi rmnode N'",
			joinNums(nums), cause, strings.Join(failed, "; "))
	}
	return fmt.Errorf("registered nodes %s, but %w; removed them again: nothing was changed", joinNums(nums), cause)
}
