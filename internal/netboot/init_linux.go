package netboot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	dhcpnetboot "github.com/insomniacslk/dhcp/netboot"
	"github.com/jsimonetti/rtnetlink/rtnl"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/mountinfo"
	"github.com/ssi-cluster/ssi/internal/node"
)

// The daemon's files inside the initramfs.
const (
	daemonLog    = "/run/ssi/daemon.log"
	daemonSocket = "/run/ssi/ssi.sock"
)

// uptime is the kernel's clock: the time since boot, as its messages show.
func uptime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Init is the boot flow, run by the kernel as /init (PID 1) of the
// initramfs `ssi mkinitrd` builds. On success it does not return: it
// execs the real init of the cluster root. On failure it prints the
// rescue message and waits for ever, reaping orphans, so the kernel never
// panics for want of an init.
func Init() {
	con := &Console{W: os.Stdout, Uptime: uptime}
	err := boot(con)
	fmt.Fprint(os.Stdout, RescueText(err))
	if os.Getpid() != 1 {
		os.Exit(1)
	}
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(-1, &ws, 0, nil); errors.Is(err, unix.ECHILD) {
			time.Sleep(time.Hour)
		}
	}
}

func boot(con *Console) error {
	start := time.Now()
	con.Printf("ssi network boot (kernel up for %.3fs)", uptime().Seconds())
	if err := con.Step("mount /proc, /sys, /dev", "the kernel needs CONFIG_PROC_FS, CONFIG_SYSFS and CONFIG_DEVTMPFS", mountBasics); err != nil {
		return err
	}
	var p Params
	if err := con.Step("read the kernel command line", "the guest's kernel command line needs ssi.server=IP[:PORT] and ssi.token=TOKEN: write its configuration with 'ssi xen-config NODE --with-token' (or --format qemu), or start it with 'ssi vm up'", func() error {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return err
		}
		p, err = ParseCmdline(strings.TrimSpace(string(b)))
		return err
	}); err != nil {
		return err
	}
	if p.Rescue {
		return &Failure{Step: "ssi.rescue", Err: errors.New("ssi.rescue is on the kernel command line"), Hint: "remove ssi.rescue to boot"}
	}
	var skipped []string
	if err := con.Step("load kernel modules", "", func() (err error) { skipped, err = loadModules(con); return err }); err != nil {
		return err
	}
	var ifc *net.Interface
	hint := "no network interface appeared: the initramfs has no driver for the guest's NIC; build it with 'ssi mkinitrd --kernel-modules /lib/modules/VERSION' of the guest's kernel"
	if p.HWAddr != nil {
		hint = "no network interface with MAC " + p.HWAddr.String() + " (ssi.hwaddr=): check the guest's NIC configuration, or the initramfs lacks its driver"
	}
	if err := con.Step("find the network interface", hint, func() (err error) {
		ifc, err = findNIC(p.HWAddr, 10*time.Second)
		if err != nil && len(skipped) > 0 {
			// A device that showed up late (a Xen front-end enumerated
			// after the modules step): load the drivers left out, look again.
			con.Printf("%v; loading the %d modules left out", err, len(skipped))
			for _, m := range skipped {
				loadModule(con, m)
			}
			skipped = nil
			ifc, err = findNIC(p.HWAddr, 10*time.Second)
		}
		if err == nil {
			con.Printf("network interface %s, MAC %s", ifc.Name, ifc.HardwareAddr)
		}
		return err
	}); err != nil {
		return err
	}
	var lease *nclient4.Lease
	if err := con.Step("DHCP on "+ifc.Name, "no DHCP server answered MAC "+ifc.HardwareAddr.String()+": is it registered (ssi-addnode --hwaddr "+ifc.HardwareAddr.String()+"; clustertab) and does a node serve DHCP on this network ('ssi dhcp show': enabled, serving on the guests' bridge)?", func() (err error) {
		lease, err = dhcp(ifc, p.Timeout)
		if err == nil {
			con.Printf("address %s from DHCP server %s", lease.ACK.YourIPAddr, lease.ACK.ServerIdentifier())
		}
		return err
	}); err != nil {
		return err
	}
	var meta node.Meta
	if err := con.Step("join the cluster through "+p.Server, "", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
		defer cancel()
		var err error
		meta, err = node.Join(ctx, node.JoinOptions{DataDir: node.DataDir("/" + DataDir), Server: p.Server, Token: p.Token, HWAddr: ifc.HardwareAddr.String()})
		if err != nil {
			return &Failure{Step: "join the cluster through " + p.Server, Err: err, Hint: joinHint(p.Server, err)}
		}
		con.Printf("joined cluster %s as node %d (%s, %s)", meta.ClusterName, meta.Num, meta.Name, meta.IPAddr)
		if err := unix.Sethostname([]byte(meta.Name)); err != nil {
			con.Printf("cannot set the host name to %s: %v", meta.Name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	var daemon *exec.Cmd
	if err := con.Step("start the ssi daemon", "", func() (err error) {
		daemon, err = startDaemon()
		return err
	}); err != nil {
		return err
	}
	if err := con.Step("mount the cluster root on /"+NewRoot, "the daemon started but the cluster filesystem is not mounted with /proc, /dev, /sys and /run in it: see the daemon's log above; the serving node's export (--cfs-export) must be a root filesystem with those directories", func() error {
		return waitRoot(daemon, p.Timeout)
	}); err != nil {
		return withLog(err)
	}
	init := filepath.Join("/"+NewRoot, p.Init)
	if err := con.Step("switch_root into the cluster root", "the cluster root has no executable "+p.Init+": the serving node's --cfs-export must be a whole root filesystem, or give ssi.init=PATH", func() error {
		if err := unix.Access(init, unix.X_OK); err != nil {
			return fmt.Errorf("%s: %w", p.Init, err)
		}
		if err := os.Chdir("/" + NewRoot); err != nil {
			return err
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("chroot into the cluster root: %w", err)
		}
		return os.Chdir("/")
	}); err != nil {
		return err
	}
	con.Printf("node %d (%s) is up in cluster %s, its root the cluster's; the ssi daemon stays (PID %d, log %s)", meta.Num, meta.Name, meta.ClusterName, daemon.Process.Pid, daemonLog)
	fmt.Fprintf(con.W, "[%8.3f] %s%s after %.3fs in the initramfs (%.3fs since the kernel started)\n", uptime().Seconds(), HandoverMarker, p.Init, time.Since(start).Seconds(), uptime().Seconds())
	argv := append([]string{p.Init}, p.Args...)
	err := syscall.Exec(p.Init, argv, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"})
	return &Failure{Step: "exec " + p.Init, Err: err, Hint: "the cluster root's init cannot run on this node: is it built for this machine, and are its libraries in the root?"}
}

func mountBasics() error {
	for _, m := range []struct{ src, dir, typ string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2"},
		{"tmpfs", "/run", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dir, m.typ, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.typ, m.dir, err)
		}
	}
	return os.MkdirAll("/run/ssi", 0o755)
}

// loadModules loads the image's modules in order, leaving out the
// drivers for which no device is present (their aliases match no
// modalias under /sys: a QEMU guest has no Xen front-ends nor an e1000);
// it returns the paths it left out.
func loadModules(con *Console) ([]string, error) {
	b, err := os.ReadFile("/" + ModulesList)
	if err != nil {
		return nil, err
	}
	pats := map[string][]string{}
	if a, err := os.ReadFile("/" + ModaliasesList); err == nil {
		pats = ParseModaliases(a)
	}
	devs := deviceModaliases()
	var skipped, times []string
	for _, p := range strings.Fields(string(b)) {
		name := modulePathName(p)
		if !WantModule(pats[name], devs) {
			// Look again: a bus driver loaded since (virtio_pci) adds devices.
			if devs = deviceModaliases(); !WantModule(pats[name], devs) {
				skipped = append(skipped, p)
				continue
			}
		}
		t := time.Now()
		if loadModule(con, p) {
			times = append(times, fmt.Sprintf("%s %dms", name, time.Since(t).Milliseconds()))
		}
	}
	con.Printf("%d modules loaded: %s", len(times), strings.Join(times, ", "))
	if len(skipped) > 0 {
		names := make([]string, len(skipped))
		for i, p := range skipped {
			names[i] = modulePathName(p)
		}
		con.Printf("no device here for %s (not loaded)", strings.Join(names, ", "))
	}
	return skipped, nil
}

// loadModule loads one module file, saying on the console why not if it
// did not load; it reports whether it loaded.
func loadModule(con *Console, p string) bool {
	err := finit(p)
	switch {
	case err == nil:
		return true
	case errors.Is(err, unix.EEXIST):
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		con.Printf("module %s: no such device here (skipped)", NormalizeModule(p))
	default:
		con.Printf("module %s did not load: %v (going on; a missing driver shows later)", NormalizeModule(p), err)
	}
	return false
}

// deviceModaliases are the modaliases of the devices present on the
// buses whose drivers the image may leave out.
func deviceModaliases() []string {
	var out []string
	for _, bus := range deviceBuses {
		fs, _ := filepath.Glob(filepath.Join("/sys/bus", bus, "devices", "*", "modalias"))
		for _, f := range fs {
			if b, err := os.ReadFile(f); err == nil {
				out = append(out, strings.TrimSpace(string(b)))
			}
		}
	}
	return out
}

func finit(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// findNIC waits for the interface with MAC hw, or for the first
// interface with an Ethernet MAC when hw is nil.
func findNIC(hw net.HardwareAddr, wait time.Duration) (*net.Interface, error) {
	deadline := time.Now().Add(wait)
	for {
		ifcs, err := net.Interfaces()
		if err != nil {
			return nil, err
		}
		var seen []string
		for i := range ifcs {
			ifc := &ifcs[i]
			if ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
				continue
			}
			seen = append(seen, ifc.Name+" "+ifc.HardwareAddr.String())
			if hw == nil || bytes.Equal(ifc.HardwareAddr, hw) {
				return ifc, nil
			}
		}
		if time.Now().After(deadline) {
			if len(seen) == 0 {
				return nil, fmt.Errorf("no Ethernet interface after %v", wait)
			}
			return nil, fmt.Errorf("no interface with MAC %s after %v (there are: %s)", hw, wait, strings.Join(seen, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dhcp brings lo and ifc up, asks for a lease on ifc and configures it.
func dhcp(ifc *net.Interface, timeout time.Duration) (*nclient4.Lease, error) {
	rt, err := rtnl.Dial(nil)
	if err != nil {
		return nil, err
	}
	if lo, err := net.InterfaceByName("lo"); err == nil {
		if err := rt.LinkUp(lo); err != nil {
			rt.Close()
			return nil, fmt.Errorf("bring lo up: %w", err)
		}
	}
	err = rt.LinkUp(ifc)
	rt.Close()
	if err != nil {
		return nil, fmt.Errorf("bring %s up: %w", ifc.Name, err)
	}
	c, err := nclient4.New(ifc.Name, nclient4.WithTimeout(time.Second), nclient4.WithRetry(int(timeout/time.Second)+1))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	lease, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, ifc.HardwareAddr...))))
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, nclient4.ErrNoResponse) {
			return nil, fmt.Errorf("no DHCP answer for %s in %v", ifc.HardwareAddr, timeout)
		}
		return nil, err
	}
	nc, err := dhcpnetboot.GetNetConfFromPacketv4(lease.ACK)
	if err != nil {
		return nil, fmt.Errorf("the DHCP answer: %w", err)
	}
	if err := dhcpnetboot.ConfigureInterface(ifc.Name, nc); err != nil {
		return nil, err
	}
	return lease, nil
}

func startDaemon() (*exec.Cmd, error) {
	logf, err := os.OpenFile(daemonLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := &exec.Cmd{
		Path: "/" + InitPath,
		Args: []string{"ssi", "daemon", "--data-dir", "/" + DataDir, "--socket", daemonSocket,
			"--cfs-mount", "/" + NewRoot, "--cfs-job-root"},
		Dir:    "/",
		Env:    []string{"PATH=/bin", "HOME=/"},
		Stdout: logf,
		Stderr: logf,
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// waitRoot waits until the daemon has mounted the cluster filesystem on
// /newroot with the node's trees bound in (cfs.NodeLocal).
func waitRoot(daemon *exec.Cmd, timeout time.Duration) error {
	exited := make(chan error, 1)
	go func() { _, err := daemon.Process.Wait(); exited <- err }()
	deadline := time.Now().Add(timeout)
	root := "/" + NewRoot
	for {
		ms, err := mountinfo.Read()
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, m := range ms {
			if m.Point == root && strings.HasPrefix(m.FSType, "fuse") {
				have[""] = true
			}
			for _, d := range []string{"proc", "dev", "sys", "run"} {
				if m.Point == root+"/"+d {
					have[d] = true
				}
			}
		}
		if have[""] && have["proc"] && have["dev"] && have["sys"] && have["run"] {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the ssi daemon exited (%v)", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			if !have[""] {
				return fmt.Errorf("the cluster filesystem is not mounted on %s after %v", root, timeout)
			}
			return fmt.Errorf("the cluster filesystem is mounted on %s but /proc, /dev, /sys or /run are not bound into it after %v", root, timeout)
		}
	}
}

// withLog adds the end of the daemon's log to a failure.
func withLog(err error) error {
	b, rerr := os.ReadFile(daemonLog)
	if rerr != nil || len(b) == 0 {
		return err
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	fmt.Fprintf(os.Stdout, "--- the last %d lines of %s ---\n%s\n---\n", len(lines), daemonLog, strings.Join(lines, "\n"))
	return err
}
