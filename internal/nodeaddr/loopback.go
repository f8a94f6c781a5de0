package nodeaddr

import (
	"net"
	"net/netip"
	"strconv"
)

// LoopbackFor is the address a node whose cluster address is ip serves a
// local-only endpoint on (metrics, the dashboard): ip itself when it is a
// loopback address (the nodes of 'ssi up' each have their own, so they
// never clash), else 127.0.0.1; never an address another machine reaches.
func LoopbackFor(ip string, port int) string {
	if a, err := netip.ParseAddr(ip); err == nil && a.IsLoopback() {
		return net.JoinHostPort(a.String(), strconv.Itoa(port))
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
