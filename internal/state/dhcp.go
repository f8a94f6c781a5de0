package state

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/ssi-cluster/ssi/internal/nodeaddr"
)

// Command types of the DHCP settings and leases (see commands.go: never
// renumber, never reuse).
const (
	CmdSetDHCP     CommandType = 8
	CmdRecordLease CommandType = 9
)

// DHCPServerLeader as DHCPConfig.ServerNode: the DHCP server runs on
// whichever node leads Raft, so it fails over with the leader.
const DHCPServerLeader uint32 = 0

// DefaultDHCPLeaseTime is the lease handed out when none is configured.
const DefaultDHCPLeaseTime = time.Hour

// MaxDHCPLeaseTime is the longest lease DHCPv4 can express (2^32-2 s;
// 2^32-1 means infinite).
const MaxDHCPLeaseTime = (1<<32 - 2) * time.Second

// DHCPConfig is the cluster's DHCP server configuration: which node serves,
// on which interface, and what the clients are told besides their address
// (which is always the one registered for their MAC in the node table).
type DHCPConfig struct {
	Enabled    bool          `json:"enabled"`
	Interface  string        `json:"interface,omitempty"` // network interface on the serving node
	Netmask    string        `json:"netmask,omitempty"`   // e.g. 255.255.255.0
	Gateway    string        `json:"gateway,omitempty"`   // default router; "" for none
	DNS        []string      `json:"dns,omitempty"`       // DNS servers
	LeaseTime  time.Duration `json:"lease_time"`
	Domain     string        `json:"domain,omitempty"`
	ServerNode uint32        `json:"server_node"` // DHCPServerLeader (0): the Raft leader
}

// DefaultDHCPConfig is the configuration before the first 'ssi dhcp set':
// disabled, served by node 1, one-hour leases.
func DefaultDHCPConfig() DHCPConfig {
	return DHCPConfig{ServerNode: 1, LeaseTime: DefaultDHCPLeaseTime}
}

func (c *DHCPConfig) clone() *DHCPConfig {
	if c == nil {
		return nil
	}
	out := *c
	out.DNS = append([]string(nil), c.DNS...)
	return &out
}

// DHCPFields are the names SetDHCP.Fields may list.
var DHCPFields = []string{"enabled", "interface", "netmask", "gateway", "dns", "lease_time", "domain", "server_node"}

// SetDHCP changes the DHCP configuration: only the fields named in Fields
// are copied from Config, the rest keep their values. The result must be a
// valid configuration or nothing changes.
type SetDHCP struct {
	Config DHCPConfig `json:"config"`
	Fields []string   `json:"fields"`
}

// Lease is a DHCP lease the cluster's server acknowledged: the address it
// gave a MAC and until when. A released or declined lease has Expires at
// the time of the release.
type Lease struct {
	HWAddr    string    `json:"hwaddr"`
	IPAddr    string    `json:"ipaddr"`
	Expires   time.Time `json:"expires"`
	Recorded  time.Time `json:"recorded"`   // when the server granted (or saw the release of) it
	ServerNum uint32    `json:"server_num"` // the node whose DHCP server granted it
}

func cloneLeases(m map[string]*Lease) map[string]*Lease {
	if m == nil {
		return nil
	}
	out := make(map[string]*Lease, len(m))
	for k, l := range m {
		cp := *l
		out[k] = &cp
	}
	return out
}

// RecordLease records a lease granted (or released) by a node's DHCP server.
// Only registered MACs have leases; recording one also forgets the leases of
// MACs that are no longer in the node table.
type RecordLease struct {
	Lease Lease `json:"lease"`
}

// DHCPSettings returns the cluster's DHCP configuration, DefaultDHCPConfig
// if it was never set.
func (c *Cluster) DHCPSettings() DHCPConfig {
	if c.DHCP == nil {
		return DefaultDHCPConfig()
	}
	return *c.DHCP.clone()
}

// SortedLeases returns the leases ordered by MAC address.
func (c *Cluster) SortedLeases() []Lease {
	out := make([]Lease, 0, len(c.Leases))
	for _, l := range c.Leases {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].HWAddr < out[j].HWAddr })
	return out
}

// ValidateDHCPConfig checks a DHCP configuration. An enabled one needs an
// interface and a netmask.
func ValidateDHCPConfig(d DHCPConfig) error {
	if d.Interface != "" && (!ifaceNameOK(d.Interface) || d.Interface == "." || d.Interface == "..") {
		return Errorf(CodeInvalid, "DHCP interface %q is not a network interface name (at most 15 letters, digits and '-', '_', '.', ':', '@')", d.Interface)
	}
	if d.Netmask != "" {
		m, err := netip.ParseAddr(d.Netmask)
		if err != nil || !m.Is4() {
			return Errorf(CodeInvalid, "DHCP netmask %q is not an IPv4 netmask (e.g. 255.255.255.0)", d.Netmask)
		}
		b := m.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if v == 0 || ^v&(^v+1) != 0 { // the host part must be 2^k-1
			return Errorf(CodeInvalid, "DHCP netmask %s is not contiguous (e.g. 255.255.255.0)", d.Netmask)
		}
	}
	if d.Gateway != "" {
		if _, err := parseIPv4(d.Gateway); err != nil {
			return Errorf(CodeInvalid, "DHCP gateway: %v", err)
		}
	}
	seen := map[string]bool{}
	for _, s := range d.DNS {
		if _, err := parseIPv4(s); err != nil {
			return Errorf(CodeInvalid, "DHCP DNS server: %v", err)
		}
		if seen[s] {
			return Errorf(CodeInvalid, "DHCP DNS server %s is listed twice", s)
		}
		seen[s] = true
	}
	if len(d.DNS) > 8 {
		return Errorf(CodeInvalid, "%d DHCP DNS servers: at most 8", len(d.DNS))
	}
	if d.LeaseTime < time.Second || d.LeaseTime%time.Second != 0 || d.LeaseTime > MaxDHCPLeaseTime {
		return Errorf(CodeInvalid, "DHCP lease time %v: use whole seconds from 1s to %v", d.LeaseTime, MaxDHCPLeaseTime)
	}
	if len(d.Domain) > 253 || strings.ContainsFunc(d.Domain, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return Errorf(CodeInvalid, "DHCP domain %q: use up to 253 printable ASCII characters without spaces", d.Domain)
	}
	if d.Enabled && (d.Interface == "" || d.Netmask == "") {
		return Errorf(CodeInvalid, "the DHCP server needs an interface and a netmask before it can be enabled (ssi dhcp set --interface IF --netmask MASK --enable)")
	}
	return nil
}

// parseIPv4 parses a canonical unicast IPv4 address.
func parseIPv4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() || a.String() != s {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address (e.g. 192.168.64.1)", s)
	}
	if a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("%s is not a unicast IPv4 address", s)
	}
	return a, nil
}

func applySetDHCP(c *Cluster, cmd SetDHCP) (*DHCPConfig, error) {
	if c.Name == "" {
		return nil, Errorf(CodeConflict, "the cluster has not been created yet")
	}
	if len(cmd.Fields) == 0 {
		return nil, Errorf(CodeInvalid, "no DHCP setting to change")
	}
	next := c.DHCPSettings()
	for _, f := range cmd.Fields {
		switch f {
		case "enabled":
			next.Enabled = cmd.Config.Enabled
		case "interface":
			next.Interface = cmd.Config.Interface
		case "netmask":
			next.Netmask = cmd.Config.Netmask
		case "gateway":
			next.Gateway = cmd.Config.Gateway
		case "dns":
			next.DNS = append([]string(nil), cmd.Config.DNS...)
		case "lease_time":
			next.LeaseTime = cmd.Config.LeaseTime
		case "domain":
			next.Domain = cmd.Config.Domain
		case "server_node":
			next.ServerNode = cmd.Config.ServerNode
		default:
			return nil, Errorf(CodeInvalid, "unknown DHCP setting %q (known: %s)", f, strings.Join(DHCPFields, ", "))
		}
	}
	if len(next.DNS) == 0 {
		next.DNS = nil
	}
	if err := ValidateDHCPConfig(next); err != nil {
		return nil, err
	}
	if next.ServerNode != DHCPServerLeader && c.Nodes[next.ServerNode] == nil {
		return nil, Errorf(CodeNotFound, "node %d is not in the node table; the DHCP server must run on a registered node (or on the leader: --server-node leader)", next.ServerNode)
	}
	c.DHCP = &next
	return next.clone(), nil
}

func applyRecordLease(c *Cluster, cmd RecordLease) error {
	l := cmd.Lease
	mac, err := nodeaddr.ParseMAC(l.HWAddr)
	if err != nil {
		return Errorf(CodeInvalid, "lease: %v", err)
	}
	ip, err := parseIPv4(l.IPAddr)
	if err != nil {
		return Errorf(CodeInvalid, "lease for %s: %v", mac, err)
	}
	if c.NodeByMAC(mac) == nil {
		return Errorf(CodeNotFound, "no node with MAC %s is registered; its lease is not recorded", mac)
	}
	l.HWAddr, l.IPAddr = mac, ip.String()
	if c.Leases == nil {
		c.Leases = map[string]*Lease{}
	}
	registered := make(map[string]bool, len(c.Nodes))
	for _, n := range c.Nodes {
		registered[n.HWAddr] = true
	}
	for k := range c.Leases {
		if !registered[k] {
			delete(c.Leases, k)
		}
	}
	c.Leases[mac] = &l
	return nil
}

// ifaceNameOK says whether s could be a Linux interface name: 1 to 15
// letters, digits and _.:@- (IFNAMSIZ less the NUL).
func ifaceNameOK(s string) bool {
	if len(s) == 0 || len(s) > 15 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_.:@-", c) >= 0) {
			return false
		}
	}
	return true
}
