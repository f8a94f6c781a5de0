package cvip

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// service is one VIP as the kernel datapath programs it.
type service struct {
	Key   string
	VIP   netip.Addr
	Port  uint16 // 0: every port
	Proto byte   // unix.IPPROTO_TCP or IPPROTO_UDP
	Hash  bool   // jhash of the source address (sh), else numgen
	Inc   bool   // numgen inc (rr, wrr), else numgen random
	Eps   []endpoint
	Slots []int // indexes into Eps (see slots)
}

// hashSeed is the jhash seed: the same on every director, so that after a
// failover the new director sends a client to the backend the old one did.
const hashSeed = 0x55c1c1a0

// nftDatapath programs an nftables table of its own (one per node, so
// that the nodes of a cluster sharing a network namespace, as a plain
// 'ssi up' does, never touch each other's), replaced as a whole in one
// transaction on every change: connections already tracked keep their
// NAT bindings, since conntrack holds them, not the rules.
type nftDatapath struct {
	table string
	last  string // the services last programmed, to skip identical syncs
}

// probeNftables reports whether this kernel takes an nftables NAT table
// here: it creates and deletes one in a single transaction.
func probeNftables(table string) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer conn.CloseLasting()
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table + "_probe"})
	conn.AddChain(&nftables.Chain{Name: "p", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables NAT is not available in this kernel or namespace: %w", err)
	}
	return nil
}

// leftover reports whether this network namespace has table (a
// read-only look: nothing is created).
func leftover(table string) bool {
	conn, err := nftables.New()
	if err != nil {
		return false
	}
	defer conn.CloseLasting()
	ts, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false
	}
	for _, t := range ts {
		if t.Name == table {
			return true
		}
	}
	return false
}

// ipvsPresent reports whether the kernel has IPVS (which ssi does not
// program: see docs/CVIP.md).
func ipvsPresent() bool {
	_, err := os.Stat("/proc/net/ip_vs")
	return err == nil
}

func (d *nftDatapath) sync(svcs []service) error {
	key := fmt.Sprintf("%+v", svcs)
	if key == d.last {
		return nil
	}
	if err := d.replace(svcs); err != nil {
		return err
	}
	d.last = key
	if len(svcs) > 0 {
		// The director forwards between clients and backends.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("turn on IPv4 forwarding: %w", err)
		}
	}
	return nil
}

// remove deletes the table, if it exists.
func (d *nftDatapath) remove() error {
	d.last = ""
	return d.replace(nil)
}

// replace puts a table with svcs in place of ours (none: no table) in one
// transaction: create it (a no-op if it exists), delete it, create it
// again; the kernel applies the batch atomically, so packets see the old
// rules or the new.
func (d *nftDatapath) replace(svcs []service) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer conn.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: d.table}
	conn.AddTable(t)
	conn.DelTable(t)
	if len(svcs) > 0 {
		if err := d.build(conn, svcs); err != nil {
			return err
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("program nftables table %s: %w", d.table, err)
	}
	return nil
}

// build adds the table's contents:
//
//	chain prerouting { type nat hook prerouting priority dstnat; jump services }
//	chain output     { type nat hook output priority dstnat; jump services }
//	map services     { type ipv4_addr . inet_proto . inet_service : verdict; elements = { VIP . tcp . 80 : goto svc0, ... } }
//	chain services   { ip daddr . meta l4proto . th dport vmap @services; ip daddr VIP2 meta l4proto udp goto svc1 (every port) }
//	chain svc0       { numgen inc mod 4 vmap @slots0 }   (or jhash ip saddr mod 4, numgen random)
//	map slots0       { 0 : goto ep0-0, 1 : goto ep0-1, ... }
//	chain ep0-1      { dnat to 10.0.0.3:8080 }
//	chain postrouting { type nat hook postrouting priority srcnat; meta iif != { 0, lo } ct original ip daddr VIP snat to VIP ... }
//	chain input       { type nat hook input priority srcnat; the same (a backend on the director itself) }
func (d *nftDatapath) build(conn *nftables.Conn, svcs []service) error {
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: d.table})
	services := conn.AddChain(&nftables.Chain{Name: "services", Table: t})
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"prerouting", nftables.ChainHookPrerouting}, {"output", nftables.ChainHookOutput}} {
		c := conn.AddChain(&nftables.Chain{Name: h.name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: h.hook, Priority: nftables.ChainPriorityNATDest})
		conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: services.Name}}})
	}
	post := conn.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	in := conn.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityNATSource})
	// One verdict map from ip daddr . meta l4proto . th dport to the
	// service chains, looked up by one rule; VIPs of every port (no
	// port to key on) get a rule each after it.
	svcMap := &nftables.Set{Table: t, Name: "services", IsMap: true, Concatenation: true, DataType: nftables.TypeVerdict,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
	var svcElems []nftables.SetElement
	snatDone := map[netip.Addr]bool{}
	for i, s := range svcs {
		if len(s.Eps) == 0 || len(s.Slots) == 0 {
			continue // no healthy backend: the VIP answers itself (a reset)
		}
		vip := s.VIP.AsSlice()
		svc := conn.AddChain(&nftables.Chain{Name: fmt.Sprintf("svc%d", i), Table: t})
		if s.Port != 0 {
			key := append(append(append([]byte{}, vip...), s.Proto, 0, 0, 0), binaryutil.BigEndian.PutUint16(s.Port)...)
			svcElems = append(svcElems, nftables.SetElement{Key: append(key, 0, 0), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: svc.Name}})
		} else {
			conn.AddRule(&nftables.Rule{Table: t, Chain: services, Exprs: []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vip},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{s.Proto}},
				&expr.Verdict{Kind: expr.VerdictGoto, Chain: svc.Name},
			}})
		}

		eps := make([]string, len(s.Eps))
		for j, e := range s.Eps {
			ep := conn.AddChain(&nftables.Chain{Name: fmt.Sprintf("ep%d-%d", i, j), Table: t})
			eps[j] = ep.Name
			a, err := netip.ParseAddr(e.Addr)
			if err != nil || !a.Is4() {
				return fmt.Errorf("backend %d of %s: address %q is not IPv4", e.Num, s.Key, e.Addr)
			}
			dnat := []expr.Any{&expr.Immediate{Register: 1, Data: a.AsSlice()}}
			nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1}
			if e.Port != 0 {
				dnat = append(dnat, &expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(e.Port)})
				nat.RegProtoMin, nat.RegProtoMax = 2, 2
			}
			conn.AddRule(&nftables.Rule{Table: t, Chain: ep, Exprs: append(dnat, nat)})
		}
		m := &nftables.Set{Table: t, Name: fmt.Sprintf("slots%d", i), IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		elems := make([]nftables.SetElement, len(s.Slots))
		for k, j := range s.Slots {
			elems[k] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(k)), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: eps[j]}}
		}
		if err := conn.AddSet(m, elems); err != nil {
			return fmt.Errorf("slot map of %s: %w", s.Key, err)
		}
		var pick []expr.Any
		n := uint32(len(s.Slots))
		switch {
		case s.Hash:
			pick = []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Hash{SourceRegister: 1, DestRegister: 1, Length: 4, Modulus: n, Seed: hashSeed, Type: expr.HashTypeJenkins},
			}
		case s.Inc:
			pick = []expr.Any{&expr.Numgen{Register: 1, Modulus: n, Type: unix.NFT_NG_INCREMENTAL}}
		default:
			pick = []expr.Any{&expr.Numgen{Register: 1, Modulus: n, Type: unix.NFT_NG_RANDOM}}
		}
		pick = append(pick, &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m.Name, SetID: m.ID})
		conn.AddRule(&nftables.Rule{Table: t, Chain: svc, Exprs: pick})

		if !snatDone[s.VIP] {
			snatDone[s.VIP] = true
			// Packets that came in (iif 0: generated here, whose source is
			// already an address of the director, usually the VIP; iif 1,
			// lo: the same, looped back), forwarded to a backend or
			// delivered to one here: either way the backend sees the VIP
			// as the peer, so that the same connection through another
			// director is the same connection to it.
			for _, c := range []*nftables.Chain{post, in} {
				conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: []expr.Any{
					&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(1)},
					&expr.Ct{Register: 1, Key: expr.CtKeyDST, Direction: 0},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vip},
					&expr.Immediate{Register: 1, Data: vip},
					&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1},
				}})
			}
		}
	}
	if len(svcElems) > 0 {
		if err := conn.AddSet(svcMap, svcElems); err != nil {
			return fmt.Errorf("the services map: %w", err)
		}
		conn.InsertRule(&nftables.Rule{Table: t, Chain: services, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
			&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: svcMap.Name, SetID: svcMap.ID},
		}})
	}
	return nil
}

// tableName is this node's table.
func tableName(self uint32) string { return fmt.Sprintf("ssi_cvip_n%d", self) }
