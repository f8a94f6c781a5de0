package cvip

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addrLifetime is the lifetime, in seconds, of the VIP address the
// director holds; it renews it every tick. A daemon that dies (SIGKILL,
// a crash) leaves no VIP behind for longer than this: the kernel removes
// the address itself, so a dead director stops answering ARP for it.
const addrLifetime = 3

// findInterface picks where the VIP goes: the interface with an IPv4
// network that contains it (not loopback), else the one with the node's own
// address.
func findInterface(vip netip.Addr, self string) (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var own *net.Interface
	for i := range ifs {
		ifc := &ifs[i]
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err != nil || !p.Addr().Is4() {
				continue
			}
			if ifc.Flags&net.FlagLoopback == 0 && p.Bits() < 32 && p.Masked().Contains(vip) {
				return ifc, nil
			}
			if p.Addr().String() == self && own == nil {
				own = ifc
			}
		}
	}
	if own != nil && own.Flags&net.FlagLoopback == 0 {
		return own, nil
	}
	return nil, fmt.Errorf("no interface of this node is on the network of %s (and the node's own address %s is not on a real interface): a VIP must be on the nodes' network", vip, self)
}

// holdAddr adds (or renews) vip/32 on ifc with the short lifetime.
func holdAddr(ifc *net.Interface, vip netip.Addr) error {
	link, err := netlink.LinkByIndex(ifc.Index)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifc.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}, ValidLft: addrLifetime, PreferedLft: addrLifetime}
	if err := netlink.AddrReplace(link, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", vip, ifc.Name, err)
	}
	return nil
}

// dropAddr removes vip/32 from ifc (no error if it is not there).
func dropAddr(ifc *net.Interface, vip netip.Addr) error {
	link, err := netlink.LinkByIndex(ifc.Index)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifc.Name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrDel(link, a); err != nil && err != unix.EADDRNOTAVAIL {
		return fmt.Errorf("remove %s from %s: %w", vip, ifc.Name, err)
	}
	return nil
}

// hasAddr reports whether ifc holds vip.
func hasAddr(ifc *net.Interface, vip netip.Addr) bool {
	addrs, _ := ifc.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == vip {
			return true
		}
	}
	return false
}

// GratuitousARP broadcasts that vip is at ifc's MAC (an ARP request for
// itself, RFC 5227's announcement), so that hosts and switches that knew
// the old director's MAC update their tables now. The frame is 42 bytes
// written on a raw packet socket (mdlayher/packet); a library for 28 bytes
// of ARP would add nothing.
func GratuitousARP(ifc *net.Interface, vip netip.Addr) error {
	if len(ifc.HardwareAddr) != 6 {
		return nil // no Ethernet: nothing to announce
	}
	c, err := packet.Listen(ifc, packet.Raw, unix.ETH_P_ARP, nil)
	if err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", ifc.Name, err)
	}
	defer c.Close()
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	f := make([]byte, 0, 42)
	f = append(f, bcast...)
	f = append(f, ifc.HardwareAddr...)
	f = append(f, 0x08, 0x06)             // ARP
	f = append(f, 0, 1, 0x08, 0x00, 6, 4) // Ethernet, IPv4
	f = append(f, 0, 1)                   // request
	f = append(f, ifc.HardwareAddr...)
	f = append(f, vip.AsSlice()...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	f = append(f, vip.AsSlice()...)
	if _, err := c.WriteTo(f, &packet.Addr{HardwareAddr: bcast}); err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", ifc.Name, err)
	}
	return nil
}
