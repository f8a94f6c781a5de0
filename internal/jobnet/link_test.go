package jobnet

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs fn on this goroutine's thread moved into a network
// namespace of its own (the machine's own links are never touched); the
// thread goes back and is released afterwards.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // and enters it
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer ns.Close()
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

// A job's namespace gets its macvlan with the address's MAC, the address
// and loopback up; the lock table comes and goes (twice is harmless); the
// macvlan goes with Detach.
func TestConfigureLockDetach(t *testing.T) {
	inNewNetns(t, func() {
		lower := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lower0"}, PeerName: "peer0"}
		if err := netlink.LinkAdd(lower); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(lower); err != nil {
			t.Fatal(err)
		}
		self := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 250, 0, 1), Mask: net.CIDRMask(24, 32)}}
		if err := netlink.AddrAdd(lower, self); err != nil {
			t.Fatal(err)
		}
		if got, err := ClusterLink("10.250.0.1"); err != nil || got != "lower0" {
			t.Fatalf("ClusterLink: %q, %v", got, err)
		}
		if _, err := ClusterLink("10.250.0.99"); err == nil {
			t.Errorf("ClusterLink of an address nobody holds: no error")
		}
		// The job: a process in a network namespace of its own, forked
		// from this thread.
		job := exec.Command("sleep", "60")
		job.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		if err := job.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = job.Process.Kill(); _ = job.Wait() }()
		pid := job.Process.Pid
		ip := netip.MustParseAddr("10.250.0.7")
		if err := Configure(pid, "lower0", ip, "02:53:0a:fa:00:07", 24); err != nil {
			t.Fatal(err)
		}
		if _, err := netlink.LinkByName(tmpName(ip)); err == nil {
			t.Errorf("the macvlan is still in the node's namespace as %s", tmpName(ip))
		}
		jns, err := netns.GetFromPid(pid)
		if err != nil {
			t.Fatal(err)
		}
		defer jns.Close()
		h, err := netlink.NewHandleAt(jns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		link, err := h.LinkByName(Iface)
		if err != nil {
			t.Fatalf("the job's %s: %v", Iface, err)
		}
		if link.Type() != "macvlan" || link.Attrs().HardwareAddr.String() != "02:53:0a:fa:00:07" || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("the job's link: %s %s %v", link.Type(), link.Attrs().HardwareAddr, link.Attrs().Flags)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.250.0.7/24" {
			t.Errorf("the job's addresses: %v %v", addrs, err)
		}
		if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("the job's loopback is not up: %v", err)
		}
		if addrs, err := h.AddrList(link, netlink.FAMILY_V6); err != nil || len(addrs) != 0 {
			t.Errorf("the job's %s has IPv6 addresses (IPv6 must be off): %v %v", Iface, addrs, err)
		}
		if err := Announce(pid, ip); err != nil {
			t.Errorf("Announce: %v", err)
		}

		if locked, err := Locked(pid); err != nil || locked {
			t.Fatalf("before Lock: locked %v, %v", locked, err)
		}
		if err := Lock(pid); err != nil {
			t.Fatal(err)
		}
		if locked, err := Locked(pid); err != nil || !locked {
			t.Fatalf("after Lock: locked %v, %v", locked, err)
		}
		for range 2 {
			if err := Unlock(pid); err != nil {
				t.Fatal(err)
			}
		}
		if locked, _ := Locked(pid); locked {
			t.Fatalf("after Unlock the table is still there")
		}
		for range 2 {
			if err := Detach(pid); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h.LinkByName(Iface); err == nil {
			t.Errorf("after Detach the job still has %s", Iface)
		}
		if err := Configure(pid, "nosuchlink", ip, "02:53:0a:fa:00:07", 24); err == nil {
			t.Errorf("Configure on a missing link: no error")
		}

		// The next holder of the address waits until the macvlan of the
		// last one (here: still there for 300 ms) is gone.
		if err := Configure(pid, "lower0", ip, "02:53:0a:fa:00:07", 24); err != nil {
			t.Fatal(err)
		}
		next := exec.Command("sleep", "60")
		next.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		if err := next.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = next.Process.Kill(); _ = next.Wait() }()
		go func() {
			time.Sleep(300 * time.Millisecond)
			_ = Detach(pid)
		}()
		start := time.Now()
		if err := Configure(next.Process.Pid, "lower0", ip, "02:53:0a:fa:00:07", 24); err != nil {
			t.Fatalf("the next holder of the address: %v", err)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Errorf("the next holder's macvlan came up after %v, while the last one's was still there", d)
		}
	})
}

func TestTmpNameFitsALinkName(t *testing.T) {
	if got := tmpName(netip.MustParseAddr("255.255.255.255")); got != "ssijffffffff" || len(got) > 15 {
		t.Errorf("tmpName: %q", got)
	}
}
