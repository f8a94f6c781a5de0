package cvip

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// countConns counts the live connections conntrack holds to vip:port (0:
// any port), by backend address: for --sched lc on the kernel datapath,
// which cannot pick by connection count itself, and for ssi cvip ls. TCP
// connections in TIME_WAIT or CLOSE do not count. nil if conntrack cannot
// be read.
func countConns(vip netip.Addr, port uint16, proto string) map[string]int64 {
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		return nil
	}
	p := uint8(unix.IPPROTO_TCP)
	if proto == "udp" {
		p = unix.IPPROTO_UDP
	}
	out := map[string]int64{}
	for _, f := range flows {
		if f.Forward.Protocol != p || !f.Forward.DstIP.Equal(vip.AsSlice()) || (port != 0 && f.Forward.DstPort != port) {
			continue
		}
		if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok && (tcp.State >= 7 || tcp.State == 0) {
			continue // TIME_WAIT (7), CLOSE (8), none
		}
		out[f.Reverse.SrcIP.String()]++
	}
	return out
}
