// Package nodeaddr owns the parsing and formatting of the identities a node
// is registered by: its hardware (MAC) address and its IPv4/IPv6 address, and
// the sequential ranges used to register many nodes at once. It does no I/O.
package nodeaddr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ErrInvalid is returned (wrapped) for every malformed address.
var ErrInvalid = errors.New("invalid address")

// ParseMAC parses an Ethernet (EUI-48) address such as 0A:00:00:00:11:D2 and
// returns it in canonical form (lower case, colon separated). Broadcast,
// all-zero and multicast addresses are refused: no NIC has them.
func ParseMAC(s string) (string, error) {
	s = strings.TrimSpace(s)
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%w: %q is not a MAC address (expected six hex pairs, e.g. 0a:00:00:00:11:d2)", ErrInvalid, s)
	}
	if hw[0]&1 == 1 {
		return "", fmt.Errorf("%w: %q is a multicast/broadcast MAC address, not a NIC's", ErrInvalid, s)
	}
	if isZero(hw) {
		return "", fmt.Errorf("%w: %q is the all-zero MAC address", ErrInvalid, s)
	}
	return hw.String(), nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ParseIP parses a unicast node address. Unspecified, multicast and
// broadcast addresses are refused.
func ParseIP(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: %q is not an IP address (e.g. 192.168.64.142)", ErrInvalid, s)
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() || (a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return netip.Addr{}, fmt.Errorf("%w: %q cannot be a node's address", ErrInvalid, s)
	}
	return a, nil
}

// NextMAC returns the MAC address n steps after mac (which must be
// canonical), failing if it would wrap past ff:ff:ff:ff:ff:ff.
func NextMAC(mac string, n int) (string, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%w: %q", ErrInvalid, mac)
	}
	var v uint64
	for _, b := range hw {
		v = v<<8 | uint64(b)
	}
	if n < 0 || v+uint64(n) > 0xffffffffffff {
		return "", fmt.Errorf("%w: %d addresses after %s run past the end of the MAC space", ErrInvalid, n, mac)
	}
	v += uint64(n)
	out := make(net.HardwareAddr, 6)
	for i := 5; i >= 0; i-- {
		out[i] = byte(v)
		v >>= 8
	}
	return ParseMAC(out.String())
}

// NextIP returns the address n steps after ip, failing on overflow.
func NextIP(ip netip.Addr, n int) (netip.Addr, error) {
	a := ip
	for i := 0; i < n; i++ {
		a = a.Next()
		if !a.IsValid() {
			return netip.Addr{}, fmt.Errorf("%w: %d addresses after %s run past the end of the address space", ErrInvalid, n, ip)
		}
	}
	return a, nil
}
