package netboot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// The private network of `ssi vm`: a bridge inside a network namespace of
// its own, node 1 (a daemon on this machine, in that namespace) at .1, the
// guests at .2 onwards, one tap device each.
const (
	VMBridge  = "br0"
	VMNetmask = "255.255.255.0"
	vmPort    = 7470
)

// VMNet is the guests' subnet (a /24 of 10.0.0.0/8 no real network here
// uses: it lives only inside the namespace).
var VMNet = netip.MustParsePrefix("10.213.77.0/24")

// VMAddr is node k's address on the private network.
func VMAddr(k int) netip.Addr {
	a := VMNet.Addr().As4()
	a[3] = byte(k)
	return netip.AddrFrom4(a)
}

// VMMAC is node k's MAC address (locally administered).
func VMMAC(k int) string { return fmt.Sprintf("0a:53:53:49:00:%02x", k) }

// VMOptions of VMUp.
type VMOptions struct {
	Dir       string // where everything lives (node 1's data, the root, the initrd, consoles)
	Nodes     int    // diskless guests to start (nodes 2..Nodes+1)
	Kernel    string // the guests' kernel ('' : the one scripts/netboot-kernel.sh fetched)
	ModuleDir string // its lib/modules/VERSION ('' : next to that kernel)
	Root      string // the cluster root node 1 exports ('' : a minimal one made in Dir)
	Binary    string // the static ssi for the initramfs (and the minimal root)
	Initrd    string // an initramfs made by ssi mkinitrd to boot ('' : build DIR/initrd)
	Host      string // the ssi that runs node 1 here (may be dynamic)
	Memory    int    // MiB per guest
	Timeout   time.Duration
	Log       io.Writer
}

// VMState is what VMUp leaves in DIR/vm.json for VMDown and for people.
type VMState struct {
	Netns  string         `json:"netns"`
	Node1  int            `json:"node1_pid"`
	Guests map[string]int `json:"guest_pids"` // node number -> QEMU's PID
	Socket string         `json:"socket"`
}

func vmStateFile(dir string) string { return filepath.Join(dir, "vm.json") }

// VMSocket is node 1's control socket under dir.
func VMSocket(dir string) string { return filepath.Join(dir, "node1", "ssi.sock") }

// VMConsole is guest k's serial console log under dir.
func VMConsole(dir string, k int) string {
	return filepath.Join(dir, "node"+strconv.Itoa(k), "console.log")
}

// VMNetnsName is the namespace `ssi vm` uses for dir.
func VMNetnsName(dir string) string {
	h := sha256.Sum256([]byte(dir))
	return fmt.Sprintf("ssivm-%x", h[:4])
}

// DefaultKernelCache is where scripts/netboot-kernel.sh keeps kernels.
func DefaultKernelCache() string {
	if d := os.Getenv("SSI_NETBOOT_CACHE"); d != "" {
		return d
	}
	return "/var/cache/ssi-netboot"
}

// FindKernel returns the kernel (vmlinux if unpacked, else vmlinuz) and
// module directory of the newest complete download in cache.
func FindKernel(cache string) (kernel, modules string, err error) {
	ds, _ := filepath.Glob(filepath.Join(cache, "linux-image-*", ".complete-v2"))
	sort.Strings(ds)
	if len(ds) == 0 {
		return "", "", fmt.Errorf("no guest kernel in %s: fetch Debian's with scripts/netboot-kernel.sh, or pass --kernel and --kernel-modules", cache)
	}
	d := filepath.Dir(ds[len(ds)-1])
	v, err := os.ReadFile(filepath.Join(d, "version"))
	if err != nil {
		return "", "", err
	}
	kernel = filepath.Join(d, "vmlinuz")
	// The uncompressed kernel, when the script could unpack it: QEMU boots
	// it through its PVH entry, sparing the decompression under emulation.
	if _, err := os.Stat(filepath.Join(d, "vmlinux")); err == nil {
		kernel = filepath.Join(d, "vmlinux")
	}
	return kernel, filepath.Join(d, "modules", strings.TrimSpace(string(v))), nil
}

// VMReady reports whether this machine can run `ssi vm`: root, QEMU, ip,
// nsenter.
func VMReady() error {
	if os.Geteuid() != 0 {
		return errors.New("ssi vm needs root (it creates a network namespace, a bridge and tap devices)")
	}
	for _, t := range []string{"qemu-system-x86_64", "ip", "nsenter", "mkswap"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s is not installed (Debian: apt-get install qemu-system-x86 iproute2 util-linux)", t)
		}
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// MinimalRoot makes a cluster root with only what a node needs to come up:
// the directories the boot flow binds into it and the static ssi as
// /bin/ssi, whose hidden __rootinit is its init.
func MinimalRoot(dir, binary string) error {
	for _, d := range []string{"proc", "dev", "sys", "run", "tmp", "bin", "sbin", "etc", "var/tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	b, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "bin", "ssi"), b, 0o755)
}

// VMNetwork creates the namespace with the bridge at node 1's address and
// one tap device per guest (tap2 ...).
func VMNetwork(ns string, guests int) error {
	cmds := [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", VMBridge, "type", "bridge"},
		{"-n", ns, "addr", "add", VMAddr(1).String() + "/24", "dev", VMBridge},
		{"-n", ns, "link", "set", VMBridge, "up"},
	}
	for k := 2; k < 2+guests; k++ {
		tap := "tap" + strconv.Itoa(k)
		cmds = append(cmds,
			[]string{"-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"},
			[]string{"-n", ns, "link", "set", tap, "master", VMBridge},
			[]string{"-n", ns, "link", "set", tap, "up"})
	}
	for _, c := range cmds {
		if err := run("ip", c...); err != nil {
			return err
		}
	}
	return nil
}

// Control is a client of node 1's control socket.
func Control(socket string) ssiv1connect.ControlClient {
	return ssiv1connect.NewControlClient(transport.NewUnixClient(socket), "http://ssi")
}

// StartNode1 initialises node 1 in dir/node1 (once) and starts its daemon
// inside the namespace, exporting root and serving DHCP on the bridge.
// Node 1 is the only Raft voter: guests under software emulation on a
// shared machine answer too slowly to be counted on for a quorum (a
// guest voter made node 1 step down in a loaded test run), and a node is
// declared DOWN after 15 s of silence, not the default: an emulated guest
// on a busy machine misses heartbeats for seconds.
func StartNode1(ctx context.Context, o VMOptions, ns, root string) (int, error) {
	data := filepath.Join(o.Dir, "node1")
	if _, err := os.Stat(filepath.Join(data, "node.json")); err != nil {
		if out, err := exec.Command(o.Host, "init", "--cluster-name", "vm", "--hwaddr", VMMAC(1), "--ipaddr", VMAddr(1).String(), "--voters", "1", "--failure-timeout", "15s", "--data-dir", data).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("ssi init of node 1: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	logf, err := os.OpenFile(filepath.Join(data, "ssi.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	mnt := filepath.Join(o.Dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return 0, err
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "--", o.Host, "daemon", "--data-dir", data, "--socket", VMSocket(o.Dir),
		"--cfs-export", root, "--cfs-mount", mnt, "--metrics-listen", "", "--web-listen", "")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	go cmd.Wait()
	c := Control(VMSocket(o.Dir))
	for {
		// Up means answering with the bootstrap applied: tokens issued before
		// the CA fingerprint is in the state would be malformed.
		resp, err := c.Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{}))
		if err == nil && resp.Msg.CaFingerprint != "" && resp.Msg.LeaderNum == 1 {
			break
		}
		if cmd.ProcessState != nil {
			return pid, fmt.Errorf("node 1's daemon exited; see %s", logf.Name())
		}
		select {
		case <-ctx.Done():
			return pid, fmt.Errorf("node 1's daemon did not answer on %s: %v (see %s)", VMSocket(o.Dir), err, logf.Name())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return pid, nil
}

// Register adds the guests to node 1's node table (nodes 2..) and returns
// their join tokens by number; DHCP is enabled on the bridge.
func Register(ctx context.Context, socket string, guests int) (map[int]string, error) {
	c := Control(socket)
	var specs []*ssiv1.NodeSpec
	for k := 2; k < 2+guests; k++ {
		specs = append(specs, &ssiv1.NodeSpec{Hwaddr: VMMAC(k), Ipaddr: VMAddr(k).String(), Num: uint32(k)})
	}
	resp, err := c.AddNodes(ctx, connect.NewRequest(&ssiv1.AddNodesRequest{Nodes: specs}))
	if err != nil {
		return nil, fmt.Errorf("register the guests: %w", err)
	}
	toks := map[int]string{}
	for _, n := range resp.Msg.Nodes {
		toks[int(n.Node.Num)] = n.Token
	}
	_, err = c.SetDHCP(ctx, connect.NewRequest(&ssiv1.SetDHCPRequest{
		Settings: &ssiv1.DHCPSettings{Enabled: true, Interface: VMBridge, Netmask: VMNetmask, ServerNode: 1},
		Fields:   []string{"enabled", "interface", "netmask", "server_node"},
	}))
	if err != nil {
		return nil, fmt.Errorf("enable DHCP on node 1: %w", err)
	}
	return toks, nil
}

// Guest is one diskless QEMU guest.
type Guest struct {
	Num     int
	MAC     string
	Tap     string
	Kernel  string
	Initrd  string
	Swap    string // '' for none
	Cmdline string // ssi.* parameters; console and panic are added
	Console string // serial console log
	Memory  int
}

// GuestCPU is the guests' CPU model: QEMU's default with RDRAND, which
// TCG implements from the host's getrandom. The kernel (Debian's trusts
// the CPU's generator) then has its random pool ready at once; without
// it the pool fills only from jitter and interrupts, some 1.3 s into an
// emulated boot, and every Go /init blocks that long before its main
// (hashicorp/raft's package init reads crypto/rand, which waits for the
// pool). docs/PERFORMANCE.md, "Network boot".
const GuestCPU = "qemu64,+rdrand"

// GuestKernelArgs are what `ssi vm` puts on the guests' kernel command
// line before the ssi.* parameters: the console on the first serial
// port, no reboot on a panic, quiet (the kernel's few hundred lines on an
// emulated UART cost time; the boot flow's own step lines are printed
// whatever the log level), and three options that spare probing under
// emulation: no_timer_check (the IO-APIC timer check), tsc=reliable (no
// clocksource watchdog against the emulated HPET; TCG's TSC follows the
// host's clock) and 8250.nr_uarts=1 (one legacy UART, not four probed).
const GuestKernelArgs = "console=ttyS0 panic=-1 quiet no_timer_check tsc=reliable 8250.nr_uarts=1"

// QEMUArgs is the guest's QEMU command line: TCG (KVM does not work
// everywhere this runs) on GuestCPU, whose RDRAND is the guest's entropy
// (a virtio-rng device, which the DHCP client needed before, cost some
// 150 ms of virtio_pci's probe), serial console to a file, the NIC on
// its tap device, the swap disk, no reboot on a panic.
func (g Guest) QEMUArgs() []string {
	args := []string{"-name", "ssi" + strconv.Itoa(g.Num), "-machine", "pc", "-accel", "tcg", "-cpu", GuestCPU, "-m", strconv.Itoa(g.Memory),
		"-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
		"-serial", "file:" + g.Console,
		"-kernel", g.Kernel, "-initrd", g.Initrd,
		"-append", GuestKernelArgs + " " + g.Cmdline,
		"-netdev", "tap,id=net0,ifname=" + g.Tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,romfile=,mac=" + g.MAC}
	if g.Swap != "" {
		args = append(args, "-drive", "file="+strings.ReplaceAll(g.Swap, ",", ",,")+",format=raw,if=virtio")
	}
	return args
}

// StartGuest starts QEMU for g inside the namespace and returns its PID.
func StartGuest(ns string, g Guest) (*exec.Cmd, error) {
	if err := os.MkdirAll(filepath.Dir(g.Console), 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(g.Console)
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, "--", "qemu-system-x86_64"}, g.QEMUArgs()...)...)
	logf, err := os.Create(filepath.Join(filepath.Dir(g.Console), "qemu.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// WaitUp waits until node num is UP in node 1's table.
func WaitUp(ctx context.Context, socket string, num int) error {
	c := Control(socket)
	last := "no answer"
	for {
		resp, err := c.Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{}))
		if err == nil {
			for _, n := range resp.Msg.Nodes {
				if int(n.Num) == num {
					if n.State == ssiv1.NodeState_NODE_STATE_UP {
						return nil
					}
					last = n.State.Label()
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %d is not UP (%s)", num, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// VMUp runs the seed's procedure on this machine: the namespace and
// bridge, node 1 serving DHCP and the root, the initramfs, and Nodes
// diskless guests booting from it; it returns when every guest is UP.
func VMUp(ctx context.Context, o VMOptions) error {
	err := vmUp(ctx, o)
	if err != nil {
		if _, serr := os.Stat(vmStateFile(o.Dir)); serr == nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w\n(what was started is still running: stop it with ssi vm down --dir %s)", err, o.Dir)
		}
	}
	return err
}

func vmUp(ctx context.Context, o VMOptions) error {
	if err := VMReady(); err != nil {
		return err
	}
	if o.Nodes < 1 || o.Nodes > 200 {
		return fmt.Errorf("--nodes %d: give 1 to 200", o.Nodes)
	}
	if _, err := os.Stat(vmStateFile(o.Dir)); err == nil {
		return fmt.Errorf("%s already holds virtual nodes (ssi vm down --dir %s first): %w", o.Dir, o.Dir, os.ErrExist)
	}
	if o.Kernel == "" {
		k, m, err := FindKernel(DefaultKernelCache())
		if err != nil {
			return err
		}
		o.Kernel = k
		if o.ModuleDir == "" {
			o.ModuleDir = m
		}
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(o.Log, format+"\n", a...) }
	root := o.Root
	if root == "" {
		root = filepath.Join(o.Dir, "root")
		if err := MinimalRoot(root, o.Binary); err != nil {
			return err
		}
	}
	st := VMState{Netns: VMNetnsName(o.Dir), Guests: map[string]int{}, Socket: VMSocket(o.Dir)}
	save := func() error {
		b, _ := json.MarshalIndent(st, "", "  ")
		return os.WriteFile(vmStateFile(o.Dir), b, 0o600)
	}
	if err := VMNetwork(st.Netns, o.Nodes); err != nil {
		_ = run("ip", "netns", "del", st.Netns)
		return err
	}
	if err := save(); err != nil {
		return err
	}
	logf("network namespace %s: bridge %s at %s", st.Netns, VMBridge, VMAddr(1))
	var err error
	st.Node1, err = StartNode1(ctx, o, st.Netns, root)
	if st.Node1 != 0 {
		_ = save()
	}
	if err != nil {
		return err
	}
	logf("node 1: a daemon on this machine (PID %d), exporting %s, socket %s", st.Node1, root, st.Socket)
	toks, err := Register(ctx, st.Socket, o.Nodes)
	if err != nil {
		return err
	}
	initrd := o.Initrd
	if initrd == "" {
		initrd = filepath.Join(o.Dir, "initrd")
		res, err := Write(initrd, true, Options{Binary: o.Binary, ModuleDir: o.ModuleDir})
		if err != nil {
			return err
		}
		logf("initramfs %s: %.1f MB, %d modules", initrd, float64(res.Size)/(1<<20), len(res.Modules))
	} else if _, err := os.Stat(initrd); err != nil {
		return err
	}
	for k := 2; k < 2+o.Nodes; k++ {
		swap := filepath.Join(o.Dir, "node"+strconv.Itoa(k), "swap.img")
		if err := makeSwap(swap, 64<<20); err != nil {
			return err
		}
		cmdline := fmt.Sprintf("ssi.server=%s:%d ssi.token=%s ssi.hwaddr=%s", VMAddr(1), vmPort, toks[k], VMMAC(k))
		if o.Root == "" {
			cmdline += " ssi.init=/bin/ssi -- " + RootInitCommand
		}
		g := Guest{Num: k, MAC: VMMAC(k), Tap: "tap" + strconv.Itoa(k), Kernel: o.Kernel, Initrd: initrd, Swap: swap,
			Cmdline: cmdline, Console: VMConsole(o.Dir, k), Memory: o.Memory}
		cmd, err := StartGuest(st.Netns, g)
		if err != nil {
			return err
		}
		go cmd.Wait()
		st.Guests[strconv.Itoa(k)] = cmd.Process.Pid
		if err := save(); err != nil {
			return err
		}
		logf("node %d: QEMU PID %d, MAC %s, console %s", k, cmd.Process.Pid, g.MAC, g.Console)
	}
	start := time.Now()
	tctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	for k := 2; k < 2+o.Nodes; k++ {
		if err := WaitBooted(tctx, st.Socket, k, VMConsole(o.Dir, k)); err != nil {
			return fmt.Errorf("%w (after %.0fs); its console: %s", err, time.Since(start).Seconds(), VMConsole(o.Dir, k))
		}
		logf("node %d is UP (%.1fs after the guests started)", k, time.Since(start).Seconds())
	}
	return nil
}

// WaitBooted waits until node num is UP and its console shows the boot
// flow's hand-over to the real init (the cluster root is ready for jobs
// only then); a rescue message on the console ends the wait at once with
// its text.
func WaitBooted(ctx context.Context, socket string, num int, console string) error {
	up := make(chan error, 1)
	go func() { up <- WaitUp(ctx, socket, num) }()
	isUp := false
	for {
		b, _ := os.ReadFile(console)
		if i := bytes.Index(b, []byte(RescueMarker)); i >= 0 {
			return fmt.Errorf("node %d stopped at the rescue message:\n%s", num, strings.TrimSpace(string(b[i:])))
		}
		if isUp && bytes.Contains(b, []byte(HandoverMarker)) {
			return nil
		}
		select {
		case err := <-up:
			if err != nil {
				return err
			}
			isUp = true
		case <-ctx.Done():
			if !isUp {
				return fmt.Errorf("node %d is not UP", num)
			}
			return fmt.Errorf("node %d is UP but its console shows no hand-over to the cluster root's init", num)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func makeSwap(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return run("mkswap", "-L", "ssi-swap", path)
}

// VMDown stops what VMUp started in dir: the guests, node 1, the
// namespace. It is safe to run again.
func VMDown(dir string, log io.Writer) error {
	b, err := os.ReadFile(vmStateFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no virtual nodes in %s (no vm.json)", dir)
	}
	if err != nil {
		return err
	}
	var st VMState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", vmStateFile(dir), err)
	}
	pids := []int{}
	for _, p := range st.Guests {
		pids = append(pids, p)
	}
	if st.Node1 != 0 {
		pids = append(pids, st.Node1)
	}
	for _, p := range pids {
		if ours(p) {
			_ = syscall.Kill(p, syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pids {
		for ours(p) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if ours(p) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	_ = exec.Command("umount", "-l", filepath.Join(dir, "mnt")).Run()
	if st.Netns != "" {
		if _, err := os.Stat("/run/netns/" + st.Netns); err == nil {
			if err := run("ip", "netns", "del", st.Netns); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(log, "stopped %d guests and node 1; removed namespace %s\n", len(st.Guests), st.Netns)
	return os.Remove(vmStateFile(dir))
}

// ours says whether pid is a live QEMU or ssi process (not a stranger that
// got a recycled PID).
func ours(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
		return false
	}
	return bytes.Contains(b, []byte("qemu-system")) || bytes.Contains(b, []byte("daemon"))
}
