package jobnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/cvip"
)

// The job's side of its network, in its own namespace.
const (
	// Iface is the job's interface: a macvlan on the node's cluster
	// interface (CRIU's external key is macvlan[eth0]).
	Iface = "eth0"
	// lockTable is the nftables table that keeps a job's network quiet
	// while it moves (Lock): in its own namespace, so CRIU checkpoints it
	// with the namespace and the copy on the target starts locked too.
	lockTable = "ssi-netlock"
)

// ClusterLink is the name of this node's interface holding its address on
// the cluster network (selfIP), where the jobs' macvlans go.
func ClusterLink(selfIP string) (string, error) {
	name, _, err := clusterIface(selfIP)
	return name, err
}

// clusterIface is ClusterLink and the prefix length of the node's address
// there.
func clusterIface(selfIP string) (string, int, error) {
	ip, err := netip.ParseAddr(selfIP)
	if err != nil {
		return "", 0, fmt.Errorf("the node's address %q: %w", selfIP, err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return "", 0, fmt.Errorf("listing interfaces: %w", err)
	}
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == ip && ifc.Flags&net.FlagLoopback == 0 {
				return ifc.Name, p.Bits(), nil
			}
		}
	}
	return "", 0, fmt.Errorf("no interface of this node holds its cluster address %s (on loopback a --net job would be reachable from nowhere)", selfIP)
}

// tmpName is the name of a job's macvlan in the node's namespace, for the
// moment between its creation and its move (unique: it is the address).
func tmpName(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("ssij%02x%02x%02x%02x", b[0], b[1], b[2], b[3])
}

// nsOf opens the network namespace of process pid.
func nsOf(pid int) (netns.NsHandle, error) {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return 0, fmt.Errorf("the network namespace of process %d: %w", pid, err)
	}
	return ns, nil
}

// Configure gives the network namespace of process pid (a job's init,
// before its command runs) its loopback and Iface: a macvlan on link
// lower, with a's MAC and a.IP/bits.
func Configure(pid int, lower string, a netip.Addr, mac string, bits int) error {
	ns, err := nsOf(pid)
	if err != nil {
		return err
	}
	defer ns.Close()
	parent, err := netlink.LinkByName(lower)
	if err != nil {
		return fmt.Errorf("the cluster interface %s: %w", lower, err)
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return fmt.Errorf("MAC %q: %w", mac, err)
	}
	// Made here and moved in, then named: CRIU cannot restore a macvlan
	// that was created inside the job's namespace, or with its MAC given
	// at creation ("Operation not supported" from the kernel at restore;
	// measured with criu 4.2.1 on Linux 6.18).
	tmp := tmpName(a)
	mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: tmp, ParentIndex: parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}
	if err := netlink.LinkAdd(mv); err != nil {
		return fmt.Errorf("creating the job's macvlan on %s: %w", lower, err)
	}
	moved := false
	defer func() {
		if !moved {
			_ = netlink.LinkDel(mv)
		}
	}()
	if err := whileMACBusy(func() error { return netlink.LinkSetHardwareAddr(mv, hw) }); err != nil {
		return fmt.Errorf("setting the job's MAC %s: %w", mac, err)
	}
	if err := netlink.LinkSetNsFd(mv, int(ns)); err != nil {
		return fmt.Errorf("moving the job's macvlan into its namespace: %w", err)
	}
	moved = true
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in the job's namespace: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("the job's macvlan: %w", err)
	}
	if err := h.LinkSetName(link, Iface); err != nil {
		return fmt.Errorf("naming the job's macvlan %s: %w", Iface, err)
	}
	if err := noIPv6(ns); err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("the job's loopback: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("the job's loopback up: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("adding %s/%d to the job's %s: %w", a, bits, Iface, err)
	}
	if err := whileMACBusy(func() error { return h.LinkSetUp(link) }); err != nil {
		return fmt.Errorf("the job's %s up: %w", Iface, err)
	}
	return nil
}

// macBusyWait bounds how long Configure waits for the MAC to be free.
const macBusyWait = 5 * time.Second

// whileMACBusy runs fn again while the MAC is taken (EADDRINUSE), for
// macBusyWait at most: the macvlan of a job that had the address before
// may still be on the same link with the same MAC for a moment after that
// job ended (the kernel tears a dead namespace down in the background).
func whileMACBusy(fn func() error) error {
	deadline := time.Now().Add(macBusyWait)
	for {
		err := fn()
		if err == nil || !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noIPv6 turns IPv6 off in network namespace ns (its default, so also for
// links CRIU makes there later, and Iface). A job's address is IPv4; with
// IPv6 on, a link coming up sends frames of its own (duplicate address
// detection, router solicitation), and the copy CRIU restores on a
// migration's target would so tell the switch that the job's MAC is on
// the target's port before the copy is ready: CRIU restores a namespace's
// addresses before its nftables tables (our lock) and its sockets, and a
// peer's retransmission arriving in between finds no socket and is
// answered with a reset (caught on the bridge, from the job's MAC, in 2 of
// 7 runs of the benchmark before IPv6 was turned off). CRIU restores these
// settings first, before it makes the links.
func noIPv6(ns netns.NsHandle) error {
	return inNetns(ns, func() error {
		for _, conf := range []string{"all", "default", Iface} {
			p := "/proc/sys/net/ipv6/conf/" + conf + "/disable_ipv6"
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("turning IPv6 off in the job's namespace: %w", err)
			}
		}
		return nil
	})
}

// Lock makes the network namespace of process pid drop every packet in
// and out (an nftables table of its own, hooks input and output), so that
// nothing a frozen job's kernel sockets would answer (an ACK of data the
// checkpoint did not take, a reset once the source copy is killed) reaches
// its peers while it moves. CRIU checkpoints it with the namespace.
func Lock(pid int) error {
	return withNft(pid, func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: lockTable})
		drop := nftables.ChainPolicyDrop
		for _, h := range []struct {
			name string
			hook *nftables.ChainHook
		}{{"input", nftables.ChainHookInput}, {"output", nftables.ChainHookOutput}} {
			c.AddChain(&nftables.Chain{Name: h.name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: h.hook, Priority: nftables.ChainPriorityFirst, Policy: &drop})
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("locking the job's network: %w", err)
		}
		return nil
	})
}

// Unlock removes Lock's table, if it is there.
func Unlock(pid int) error {
	return withNft(pid, func(c *nftables.Conn) error {
		if _, err := c.ListTableOfFamily(lockTable, nftables.TableFamilyINet); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("looking for the job's network lock: %w", err)
		}
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: lockTable})
		if err := c.Flush(); err != nil {
			return fmt.Errorf("unlocking the job's network: %w", err)
		}
		return nil
	})
}

// Locked reports whether the network namespace of process pid has Lock's
// table.
func Locked(pid int) (bool, error) {
	var locked bool
	err := withNft(pid, func(c *nftables.Conn) error {
		_, err := c.ListTableOfFamily(lockTable, nftables.TableFamilyINet)
		switch {
		case err == nil:
			locked = true
		case errors.Is(err, unix.ENOENT):
		default:
			return err
		}
		return nil
	})
	return locked, err
}

func withNft(pid int, fn func(*nftables.Conn) error) error {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return fmt.Errorf("the network namespace of process %d: %w", pid, err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("nftables in the job's namespace: %w", err)
	}
	defer c.CloseLasting()
	return fn(c)
}

// Detach deletes Iface from the network namespace of process pid: the
// copy of a job that is about to be killed (the source after the commit,
// a target copy that was not committed) must not answer for its address
// any more.
func Detach(pid int) error {
	err := withIface(pid, func(h *netlink.Handle, link netlink.Link) error {
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("deleting the job's %s: %w", Iface, err)
		}
		return nil
	})
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	return err
}

// withIface runs fn on Iface of the network namespace of process pid.
func withIface(pid int, fn func(*netlink.Handle, netlink.Link) error) error {
	ns, err := nsOf(pid)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in the job's namespace: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(Iface)
	if err != nil {
		return fmt.Errorf("the job's %s: %w", Iface, err)
	}
	return fn(h, link)
}

// Announce broadcasts a gratuitous ARP for ip from Iface in the network
// namespace of process pid, so that the switch (the bridge of an
// --isolate cluster) learns at once where the job's MAC is now.
func Announce(pid int, ip netip.Addr) error {
	ns, err := nsOf(pid)
	if err != nil {
		return err
	}
	defer ns.Close()
	return inNetns(ns, func() error {
		ifc, err := net.InterfaceByName(Iface)
		if err != nil {
			return fmt.Errorf("the job's %s: %w", Iface, err)
		}
		return cvip.GratuitousARP(ifc, ip)
	})
}

// inNetns runs fn on a thread in network namespace ns (sockets it opens
// stay there). A thread that cannot go back is not given back to Go's
// scheduler: it ends with the goroutine.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("this thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("entering the job's network namespace: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// SetUp sets Iface in the network namespace of process pid up or down.
func SetUp(pid int, up bool) error {
	return withIface(pid, func(h *netlink.Handle, link netlink.Link) error {
		set := h.LinkSetDown
		if up {
			set = h.LinkSetUp
		}
		if err := set(link); err != nil {
			return fmt.Errorf("setting the job's %s up=%v: %w", Iface, up, err)
		}
		return nil
	})
}
