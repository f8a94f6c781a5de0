package state

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Cluster virtual IPs (internal/cvip, docs/CVIP.md): a service address
// that is no node's own, in front of backends on many nodes, held by one
// director at a time. The state holds what the user configured and which
// node directs each VIP; the director keeps the backends' health itself.
const (
	CmdAddVIP      CommandType = 20
	CmdRemoveVIP   CommandType = 21
	CmdSetDirector CommandType = 22
	CmdSetVIP      CommandType = 23
	// 24 is reserved for the cluster virtual IP.
)

// Schedulers: how the director picks a backend for a new connection.
const (
	SchedRR   = "rr"   // round robin (numgen inc)
	SchedWRR  = "wrr"  // weighted round robin (the weights of --nodes N:W)
	SchedLC   = "lc"   // least connections (weights from the live connection counts)
	SchedLoad = "load" // weights from the nodes' reported loads
	SchedSH   = "sh"   // source hash: a client stays on one backend, across a director failover too
)

// Schedulers lists every scheduler.
var Schedulers = []string{SchedRR, SchedWRR, SchedLC, SchedLoad, SchedSH}

// DatapathUserspace forces the user-space proxy for a VIP.
const DatapathUserspace = "userspace"

// Bounds of the configuration.
const (
	MaxVIPs      = 256
	MaxBackends  = 64
	MaxWeight    = 100
	MaxCheckPath = 256
)

// VIP is one cluster virtual IP service.
type VIP struct {
	Addr  string `json:"addr"`  // IPv4, no node's own address
	Port  uint16 `json:"port"`  // 0: every port of Proto
	Proto string `json:"proto"` // "tcp" or "udp"
	// TargetPort is the backends' port (0: Port).
	TargetPort uint16 `json:"target_port,omitempty"`
	// Nodes are the backends (empty: every node of the table); Weights
	// their weights for wrr (a missing node weighs 1).
	Nodes   []uint32          `json:"nodes,omitempty"`
	Weights map[uint32]uint32 `json:"weights,omitempty"`
	// Directors are the nodes that may direct (empty: every node).
	Directors []uint32 `json:"directors,omitempty"`
	Sched     string   `json:"sched"`
	// Check is the health check's HTTP path ("" : a TCP connect).
	Check string `json:"check,omitempty"`
	// Datapath is "" (the kernel's where it can, else the user-space
	// proxy) or DatapathUserspace (always the proxy: for comparisons).
	Datapath string `json:"datapath,omitempty"`
	// Director is the node that holds the address now (0: none yet).
	Director      uint32    `json:"director,omitempty"`
	DirectorSince time.Time `json:"director_since,omitempty"`
	Created       time.Time `json:"created"`
}

// Key names a VIP: ADDR:PORT/PROTO (port 0 is "*").
func (v *VIP) Key() string { return VIPKey(v.Addr, v.Port, v.Proto) }

// VIPKey is the key of the VIP at addr, port, proto.
func VIPKey(addr string, port uint16, proto string) string {
	p := "*"
	if port != 0 {
		p = strconv.Itoa(int(port))
	}
	return addr + ":" + p + "/" + proto
}

// BackendPort is the port connections go to on the backends (0: the
// client's own).
func (v *VIP) BackendPort() uint16 {
	if v.TargetPort != 0 {
		return v.TargetPort
	}
	return v.Port
}

// Backends are the backend nodes of v in c: its list, or every node.
func (v *VIP) Backends(c *Cluster) []uint32 {
	if len(v.Nodes) > 0 {
		return append([]uint32(nil), v.Nodes...)
	}
	return sortedNums(c)
}

// MayDirect reports whether node num may direct v.
func (v *VIP) MayDirect(num uint32) bool {
	if len(v.Directors) == 0 {
		return true
	}
	for _, d := range v.Directors {
		if d == num {
			return true
		}
	}
	return false
}

// Weight is node num's weight for wrr.
func (v *VIP) Weight(num uint32) uint32 {
	if w, ok := v.Weights[num]; ok {
		return w
	}
	return 1
}

func (v *VIP) clone() *VIP {
	cp := *v
	cp.Nodes = append([]uint32(nil), v.Nodes...)
	cp.Directors = append([]uint32(nil), v.Directors...)
	if v.Weights != nil {
		cp.Weights = make(map[uint32]uint32, len(v.Weights))
		for k, w := range v.Weights {
			cp.Weights[k] = w
		}
	}
	return &cp
}

func cloneVIPs(m map[string]*VIP) map[string]*VIP {
	if m == nil {
		return nil
	}
	out := make(map[string]*VIP, len(m))
	for k, v := range m {
		out[k] = v.clone()
	}
	return out
}

// SortedVIPs returns the VIPs ordered by address, port and protocol.
func (c *Cluster) SortedVIPs() []*VIP {
	out := make([]*VIP, 0, len(c.VIPs))
	for _, v := range c.VIPs {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := netip.MustParseAddr(out[i].Addr), netip.MustParseAddr(out[j].Addr)
		if a != b {
			return a.Less(b)
		}
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		return out[i].Proto < out[j].Proto
	})
	return out
}

// AddVIP creates a cluster virtual IP.
type AddVIP struct {
	VIP  VIP       `json:"vip"`
	Time time.Time `json:"time"`
}

// RemoveVIP deletes the VIP with Key.
type RemoveVIP struct {
	Key string `json:"key"`
}

// SetVIP changes the named fields of the VIP Key to those of VIP, all or
// none: nodes (with weights), directors, sched, check, target_port,
// datapath. Its address, port and protocol (its key) stay.
type SetVIP struct {
	Key    string   `json:"key"`
	VIP    VIP      `json:"vip"`
	Fields []string `json:"fields"`
}

// SetVIPFields are the fields SetVIP can change.
var SetVIPFields = []string{"nodes", "directors", "sched", "check", "target_port", "datapath"}

// SetDirector records that node Node directs the VIP Key (0: none). The
// change happens only if the current director is From: the leader's
// election duty races with itself across leadership changes.
type SetDirector struct {
	Key  string    `json:"key"`
	Node uint32    `json:"node"`
	From uint32    `json:"from"`
	Time time.Time `json:"time"`
}

// ValidateVIP checks a VIP on its own (no cluster needed) and returns it
// in canonical form: the CLI calls it before sending, the state machine
// again with the cluster.
func ValidateVIP(v VIP) (VIP, error) {
	a, err := netip.ParseAddr(v.Addr)
	if err != nil {
		return v, Errorf(CodeInvalid, "%q is not an IP address (e.g. 10.0.0.100 or 10.0.0.100:80)", v.Addr)
	}
	switch {
	case !a.Is4() && !a.Is4In6():
		return v, Errorf(CodeInvalid, "VIP %s: only IPv4 cluster virtual IPs are supported", a)
	case a.Unmap().IsUnspecified(), a.Unmap().IsLoopback(), a.Unmap().IsMulticast(), a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}), a.Unmap().IsLinkLocalUnicast():
		return v, Errorf(CodeInvalid, "VIP %s cannot be a service address (unspecified, loopback, link-local, multicast or broadcast)", a)
	}
	v.Addr = a.Unmap().String()
	v.Proto = strings.ToLower(v.Proto)
	if v.Proto == "" {
		v.Proto = "tcp"
	}
	if v.Proto != "tcp" && v.Proto != "udp" {
		return v, Errorf(CodeInvalid, "protocol %q is not tcp or udp", v.Proto)
	}
	if v.Sched == "" {
		v.Sched = SchedRR
	}
	known := false
	for _, s := range Schedulers {
		known = known || s == v.Sched
	}
	if !known {
		return v, Errorf(CodeInvalid, "scheduler %q is not one of %s", v.Sched, strings.Join(Schedulers, ", "))
	}
	if v.Datapath != "" && v.Datapath != DatapathUserspace {
		return v, Errorf(CodeInvalid, "datapath %q is not auto or %s", v.Datapath, DatapathUserspace)
	}
	if v.Datapath == DatapathUserspace && v.Port == 0 {
		return v, Errorf(CodeInvalid, "the user-space proxy serves one port: give the VIP a port")
	}
	if v.Port == 0 && v.TargetPort != 0 {
		return v, Errorf(CodeInvalid, "a VIP of every port (no :PORT) forwards each port to the same port; --target-port needs a VIP port")
	}
	if v.Check != "" {
		if v.Proto != "tcp" {
			return v, Errorf(CodeInvalid, "an HTTP health check (--check %s) needs a tcp VIP", v.Check)
		}
		if !strings.HasPrefix(v.Check, "/") || len(v.Check) > MaxCheckPath || strings.ContainsAny(v.Check, " \r\n\t") {
			return v, Errorf(CodeInvalid, "health check path %q must start with / and have no spaces (at most %d bytes)", v.Check, MaxCheckPath)
		}
	}
	if len(v.Nodes) > MaxBackends {
		return v, Errorf(CodeInvalid, "at most %d backend nodes per VIP, not %d", MaxBackends, len(v.Nodes))
	}
	if len(v.Directors) > MaxBackends {
		return v, Errorf(CodeInvalid, "at most %d director nodes per VIP, not %d", MaxBackends, len(v.Directors))
	}
	for _, l := range v.lists() {
		what, list := l.what, l.nums
		seen := map[uint32]bool{}
		for _, n := range list {
			if n == 0 {
				return v, Errorf(CodeInvalid, "node 0 is not a node (%s list)", what)
			}
			if seen[n] {
				return v, Errorf(CodeInvalid, "node %d is twice in the %s list", n, what)
			}
			seen[n] = true
		}
	}
	for _, n := range slices.Sorted(maps.Keys(v.Weights)) {
		w := v.Weights[n]
		if w < 1 || w > MaxWeight {
			return v, Errorf(CodeInvalid, "weight %d of node %d is not between 1 and %d", w, n, MaxWeight)
		}
		if len(v.Nodes) > 0 && !contains(v.Nodes, n) {
			return v, Errorf(CodeInvalid, "node %d has a weight but is not a backend", n)
		}
	}
	if len(v.Weights) > 0 && v.Sched != SchedWRR {
		return v, Errorf(CodeInvalid, "weights (--nodes N:W) are for --sched wrr, not %s", v.Sched)
	}
	v.Director, v.DirectorSince = 0, time.Time{}
	return v, nil
}

func contains(list []uint32, n uint32) bool {
	for _, x := range list {
		if x == n {
			return true
		}
	}
	return false
}

// overlaps reports whether a and b claim the same packets.
func (v *VIP) overlaps(o *VIP) bool {
	return v.Addr == o.Addr && v.Proto == o.Proto && (v.Port == o.Port || v.Port == 0 || o.Port == 0)
}

func applyAddVIP(c *Cluster, cmd AddVIP) (*VIP, error) {
	if c.Name == "" {
		return nil, Errorf(CodeConflict, "the cluster has not been created yet")
	}
	v, err := ValidateVIP(cmd.VIP)
	if err != nil {
		return nil, err
	}
	for _, n := range c.SortedNodes() {
		if n.IPAddr == v.Addr {
			return nil, Errorf(CodeConflict, "%s is node %d's own address (%s); a cluster virtual IP must be an address no node has", v.Addr, n.Num, n.Name)
		}
	}
	for _, o := range c.SortedVIPs() {
		if v.overlaps(o) {
			return nil, Errorf(CodeExists, "%s overlaps the cluster virtual IP %s; remove it first (ssi cvip rm %s)", v.Key(), o.Key(), o.Key())
		}
	}
	if len(c.VIPs) >= MaxVIPs {
		return nil, Errorf(CodeFull, "the cluster already has %d virtual IPs, the most it can have", len(c.VIPs))
	}
	if err := knownNodes(c, &v); err != nil {
		return nil, err
	}
	// One address, one director: the VIPs on an address share their
	// directors and the node directing them.
	if o := c.sameAddr(v.Addr, ""); o != nil {
		if !slices.Equal(o.Directors, v.Directors) {
			return nil, Errorf(CodeConflict, "the VIPs on %s share one director: give %s the directors of %s (%s)", v.Addr, v.Key(), o.Key(), directorsText(o.Directors))
		}
		v.Director, v.DirectorSince = o.Director, o.DirectorSince
	}
	v.Created = cmd.Time
	if c.VIPs == nil {
		c.VIPs = map[string]*VIP{}
	}
	c.VIPs[v.Key()] = &v
	out := v.clone()
	return out, nil
}

func applySetVIP(c *Cluster, cmd SetVIP) (*VIP, error) {
	cur, ok := c.VIPs[cmd.Key]
	if !ok {
		return nil, Errorf(CodeNotFound, "no cluster virtual IP %s (ssi cvip ls lists them)", cmd.Key)
	}
	if len(cmd.Fields) == 0 {
		return nil, Errorf(CodeInvalid, "nothing to change")
	}
	next := cur.clone()
	for _, f := range cmd.Fields {
		switch f {
		case "nodes":
			next.Nodes, next.Weights = append([]uint32(nil), cmd.VIP.Nodes...), cmd.VIP.clone().Weights
		case "directors":
			next.Directors = append([]uint32(nil), cmd.VIP.Directors...)
		case "sched":
			next.Sched = cmd.VIP.Sched
		case "check":
			next.Check = cmd.VIP.Check
		case "target_port":
			next.TargetPort = cmd.VIP.TargetPort
		case "datapath":
			next.Datapath = cmd.VIP.Datapath
		default:
			return nil, Errorf(CodeInvalid, "field %q cannot be changed (only %s)", f, strings.Join(SetVIPFields, ", "))
		}
	}
	if next.Sched != SchedWRR && len(next.Weights) > 0 {
		if slices.Contains(cmd.Fields, "sched") && !slices.Contains(cmd.Fields, "nodes") {
			next.Weights = nil // leaving wrr drops the weights
		}
	}
	v, err := ValidateVIP(*next)
	if err != nil {
		return nil, err
	}
	if err := knownNodes(c, &v); err != nil {
		return nil, err
	}
	v.Director, v.DirectorSince, v.Created = cur.Director, cur.DirectorSince, cur.Created
	c.VIPs[cmd.Key] = &v
	if slices.Contains(cmd.Fields, "directors") {
		// The directors belong to the address: every VIP on it gets them.
		for _, o := range c.SortedVIPs() {
			if o.Addr == v.Addr {
				o.Directors = append([]uint32(nil), v.Directors...)
			}
		}
	}
	return v.clone(), nil
}

// nodeList is one of a VIP's lists of nodes, named for messages.
type nodeList struct {
	what string
	nums []uint32
}

// lists are v's node lists in a fixed order: the state machine's messages
// (remembered in the replicated state) must be the same on every node.
func (v *VIP) lists() []nodeList {
	return []nodeList{{"backend", v.Nodes}, {"director", v.Directors}}
}

// knownNodes checks that v's backends and directors are in the table.
func knownNodes(c *Cluster, v *VIP) error {
	for _, l := range v.lists() {
		what, list := l.what, l.nums
		for _, n := range list {
			if c.Nodes[n] == nil {
				return Errorf(CodeNotFound, "node %d (in the %s list) is not in the node table", n, what)
			}
		}
	}
	return nil
}

func applyRemoveVIP(c *Cluster, cmd RemoveVIP) error {
	if _, ok := c.VIPs[cmd.Key]; !ok {
		return Errorf(CodeNotFound, "no cluster virtual IP %s (ssi cvip ls lists them)", cmd.Key)
	}
	delete(c.VIPs, cmd.Key)
	return nil
}

// applySetDirector moves every VIP on the address of cmd.Key that node
// cmd.From directs (one address, one director), in one entry.
func applySetDirector(c *Cluster, cmd SetDirector) error {
	v, ok := c.VIPs[cmd.Key]
	if !ok {
		return Errorf(CodeNotFound, "no cluster virtual IP %s", cmd.Key)
	}
	if v.Director != cmd.From {
		return Errorf(CodeConflict, "VIP %s is directed by node %d, not %d", cmd.Key, v.Director, cmd.From)
	}
	if cmd.Node != 0 {
		n := c.Nodes[cmd.Node]
		switch {
		case n == nil:
			return Errorf(CodeNotFound, "node %d is not in the node table", cmd.Node)
		case n.State != Up:
			return Errorf(CodeConflict, "node %d is %s; only an UP node can direct", cmd.Node, n.State)
		case !v.MayDirect(cmd.Node):
			return Errorf(CodeConflict, "node %d is not one of VIP %s's directors %v", cmd.Node, cmd.Key, v.Directors)
		}
	}
	for _, o := range c.SortedVIPs() {
		if o.Addr == v.Addr && o.Director == cmd.From && (cmd.Node == 0 || o.MayDirect(cmd.Node)) {
			o.Director, o.DirectorSince = cmd.Node, cmd.Time
		}
	}
	return nil
}

// sameAddr is a VIP on addr other than the one with key except, or nil.
func (c *Cluster) sameAddr(addr, except string) *VIP {
	for _, o := range c.SortedVIPs() {
		if o.Addr == addr && o.Key() != except {
			return o
		}
	}
	return nil
}

func directorsText(ds []uint32) string {
	if len(ds) == 0 {
		return "every node: no --directors"
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = strconv.Itoa(int(d))
	}
	return "--directors " + strings.Join(parts, ",")
}

// vipUsing says which VIP names node num as a backend or director, "" if
// none: such a node cannot be removed from the table.
func vipUsing(c *Cluster, num uint32) string {
	for _, v := range c.SortedVIPs() {
		if contains(v.Nodes, num) || contains(v.Directors, num) {
			return v.Key()
		}
	}
	return ""
}

// vipAt says which VIP has address ip, "" if none: no node may get it.
func vipAt(c *Cluster, ip string) string {
	for _, v := range c.SortedVIPs() {
		if v.Addr == ip {
			return v.Key()
		}
	}
	return ""
}

// String is the VIP's key, for messages.
func (v *VIP) String() string { return fmt.Sprintf("VIP %s", v.Key()) }
