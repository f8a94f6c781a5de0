package state

import (
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// Network identities of jobs (ssi run --net; internal/jobnet,
// docs/JOBNET.md): the cluster's pool of addresses and which job holds
// which. The state machine picks the address, so two jobs never get the
// same one, and the record survives restarts and leader changes.
const (
	CmdSetNetPool     CommandType = 40
	CmdAssignNetAddr  CommandType = 41
	CmdReleaseNetAddr CommandType = 42
)

// MaxNetPool is the most addresses a pool may hold.
const MaxNetPool = 1 << 16

// NetPool is the range of IPv4 addresses (First to Last, both included)
// that --net jobs get theirs from. Bits is the prefix length of the
// cluster network they are on (the job's interface gets Addr/Bits).
type NetPool struct {
	First netip.Addr `json:"first"`
	Last  netip.Addr `json:"last"`
	Bits  int        `json:"bits"`
}

// Size is how many addresses the pool holds.
func (p NetPool) Size() int {
	a, b := p.First.As4(), p.Last.As4()
	return int(be32(b)-be32(a)) + 1
}

// Contains reports whether a is in the pool.
func (p NetPool) Contains(a netip.Addr) bool {
	return a.Is4() && p.First.Compare(a) <= 0 && a.Compare(p.Last) <= 0
}

func (p NetPool) String() string { return fmt.Sprintf("%s-%s/%d", p.First, p.Last, p.Bits) }

func be32(b [4]byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// NetAddr is the address a job holds: its IP, the MAC that goes with it
// (NetMAC), the job's cluster PID and the node it runs on now (updated by
// Moved, so the record follows the job).
type NetAddr struct {
	IP   netip.Addr `json:"ip"`
	MAC  string     `json:"mac"`
	CPID int64      `json:"cpid"`
	Node uint32     `json:"node"`
	Time time.Time  `json:"time"`
}

// NetMAC is the MAC address of a job's interface with IPv4 address ip: a
// locally administered unicast address (02:53, then the address), fixed
// for the address so that the neighbours' ARP entries stay right after a
// move.
func NetMAC(ip netip.Addr) string {
	a := ip.As4()
	return fmt.Sprintf("02:53:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// SetNetPool sets the pool (Clear: removes it). It is refused when an
// address held by a job would fall outside the new pool, or the pool holds
// a node's address.
type SetNetPool struct {
	Pool  NetPool   `json:"pool"`
	Clear bool      `json:"clear,omitempty"`
	Time  time.Time `json:"time"`
}

// ValidNetPool checks a pool on its own (the CLI checks it before sending).
func ValidNetPool(p NetPool) error {
	switch {
	case !p.First.Is4() || !p.Last.Is4():
		return Errorf(CodeInvalid, "an address pool is a range of IPv4 addresses (FIRST-LAST)")
	case p.Last.Less(p.First):
		return Errorf(CodeInvalid, "the pool %s-%s ends before it starts", p.First, p.Last)
	case p.Bits < 8 || p.Bits > 30:
		return Errorf(CodeInvalid, "the pool's network prefix /%d: want /8 to /30", p.Bits)
	case p.Size() > MaxNetPool:
		return Errorf(CodeInvalid, "the pool %s-%s holds %d addresses, at most %d", p.First, p.Last, p.Size(), MaxNetPool)
	}
	pre := netip.PrefixFrom(p.First, p.Bits).Masked()
	if !pre.Contains(p.Last) {
		return Errorf(CodeInvalid, "the pool %s-%s is not inside one /%d network", p.First, p.Last, p.Bits)
	}
	if p.First == pre.Addr() {
		return Errorf(CodeInvalid, "the pool starts at %s, the address of the network %s itself", p.First, pre)
	}
	bcast := be32(pre.Addr().As4()) | (1<<(32-p.Bits) - 1)
	if be32(p.Last.As4()) == bcast {
		return Errorf(CodeInvalid, "the pool ends at %s, the broadcast address of %s", p.Last, pre)
	}
	return nil
}

func applySetNetPool(c *Cluster, cmd SetNetPool) error {
	if cmd.Clear {
		if len(c.NetAddrs) > 0 {
			return Errorf(CodeConflict, "%d jobs hold an address of the pool: it can be removed once they end", len(c.NetAddrs))
		}
		c.NetPool = nil
		return nil
	}
	p := cmd.Pool
	if err := ValidNetPool(p); err != nil {
		return err
	}
	nums := make([]uint32, 0, len(c.Nodes))
	for num := range c.Nodes {
		nums = append(nums, num)
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	for _, num := range nums {
		n := c.Nodes[num]
		if ip, err := netip.ParseAddr(n.IPAddr); err == nil && p.Contains(ip) {
			return Errorf(CodeExists, "the pool %s-%s holds %s, the address of node %d (%s)", p.First, p.Last, ip, n.Num, n.Name)
		}
	}
	for _, a := range c.NetAddrs {
		if !p.Contains(a.IP) {
			return Errorf(CodeConflict, "process %d holds %s, which the pool %s-%s leaves out: end it first", a.CPID, a.IP, p.First, p.Last)
		}
	}
	c.NetPool = &p
	return nil
}

// AssignNetAddr gives process CPID, on node Node, the lowest free address
// of the pool; the outcome's value is the NetAddr.
type AssignNetAddr struct {
	CPID int64     `json:"cpid"`
	Node uint32    `json:"node"`
	Time time.Time `json:"time"`
}

func applyAssignNetAddr(c *Cluster, cmd AssignNetAddr) (*NetAddr, error) {
	if cmd.CPID <= 0 {
		return nil, Errorf(CodeInvalid, "%d is not a cluster PID", cmd.CPID)
	}
	if _, ok := c.Nodes[cmd.Node]; !ok {
		return nil, Errorf(CodeNotFound, "node %d is not in the node table", cmd.Node)
	}
	if a, ok := c.NetAddrs[cmd.CPID]; ok {
		return nil, Errorf(CodeExists, "process %d already holds %s", cmd.CPID, a.IP)
	}
	if c.NetPool == nil {
		return nil, Errorf(CodeConflict, "the cluster has no address pool for --net jobs: set one with 'ssi net pool FIRST-LAST'")
	}
	used := make(map[netip.Addr]bool, len(c.NetAddrs)+len(c.Nodes))
	for _, a := range c.NetAddrs {
		used[a.IP] = true
	}
	for _, n := range c.Nodes {
		if ip, err := netip.ParseAddr(n.IPAddr); err == nil {
			used[ip] = true
		}
	}
	p := *c.NetPool
	for ip, i := p.First, 0; i < p.Size(); ip, i = ip.Next(), i+1 {
		if used[ip] {
			continue
		}
		a := &NetAddr{IP: ip, MAC: NetMAC(ip), CPID: cmd.CPID, Node: cmd.Node, Time: cmd.Time}
		if c.NetAddrs == nil {
			c.NetAddrs = map[int64]*NetAddr{}
		}
		c.NetAddrs[cmd.CPID] = a
		return a, nil
	}
	return nil, Errorf(CodeFull, "every address of the pool %s-%s is taken (%d jobs hold one): end one, or widen the pool with 'ssi net pool'", p.First, p.Last, len(c.NetAddrs))
}

// ReleaseNetAddr frees the address of process CPID (none held: nothing to
// do). IP, if set, must be the one it holds: a late release of an address
// given again since is refused.
type ReleaseNetAddr struct {
	CPID int64      `json:"cpid"`
	IP   netip.Addr `json:"ip,omitzero"`
	Why  string     `json:"why,omitempty"`
	Time time.Time  `json:"time"`
}

func applyReleaseNetAddr(c *Cluster, cmd ReleaseNetAddr) error {
	a, ok := c.NetAddrs[cmd.CPID]
	if !ok {
		return nil
	}
	if cmd.IP.IsValid() && cmd.IP != a.IP {
		return Errorf(CodeConflict, "process %d holds %s, not %s", cmd.CPID, a.IP, cmd.IP)
	}
	delete(c.NetAddrs, cmd.CPID)
	return nil
}

// netFollow moves the record of process cpid's address (if it has one)
// to node to: Moved calls it, so the record changes with the commit of
// the move.
func netFollow(c *Cluster, cpid int64, to uint32) {
	if a, ok := c.NetAddrs[cpid]; ok {
		cp := *a
		cp.Node = to
		c.NetAddrs[cpid] = &cp
	}
}

// NetAddrOf is the address process cpid holds, if any.
func (c *Cluster) NetAddrOf(cpid int64) (NetAddr, bool) {
	a, ok := c.NetAddrs[cpid]
	if !ok {
		return NetAddr{}, false
	}
	return *a, true
}

// NetAddrList is every address held, in address order.
func (c *Cluster) NetAddrList() []NetAddr {
	out := make([]NetAddr, 0, len(c.NetAddrs))
	for _, a := range c.NetAddrs {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

func cloneNetAddrs(m map[int64]*NetAddr) map[int64]*NetAddr {
	if m == nil {
		return nil
	}
	out := make(map[int64]*NetAddr, len(m))
	for k, v := range m {
		cp := *v
		out[k] = &cp
	}
	return out
}

// applyJobNet applies the three commands of this file.
func applyJobNet(c *Cluster, t CommandType, decode func(any) error) (any, error) {
	switch t {
	case CmdSetNetPool:
		var cmd SetNetPool
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applySetNetPool(c, cmd)
	case CmdAssignNetAddr:
		var cmd AssignNetAddr
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return applyAssignNetAddr(c, cmd)
	default:
		var cmd ReleaseNetAddr
		if err := decode(&cmd); err != nil {
			return nil, err
		}
		return nil, applyReleaseNetAddr(c, cmd)
	}
}
