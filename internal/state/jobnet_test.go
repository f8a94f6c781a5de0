package state

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func netCluster(t *testing.T) *applier {
	a := newApplier(t) // node 1 is 192.168.64.141
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"}}})
	return a
}

func pool(first, last string, bits int) NetPool {
	return NetPool{First: netip.MustParseAddr(first), Last: netip.MustParseAddr(last), Bits: bits}
}

func (a *applier) assign(cpid int64, node uint32) (NetAddr, error) {
	a.t.Helper()
	r := a.apply(CmdAssignNetAddr, AssignNetAddr{CPID: cpid, Node: node, Time: t0})
	if r.Err != nil {
		return NetAddr{}, r.Err
	}
	var got NetAddr
	if err := json.Unmarshal(r.Value, &got); err != nil {
		a.t.Fatal(err)
	}
	return got, nil
}

func TestNetAddrsAreUniqueLowestFirstAndReused(t *testing.T) {
	a := netCluster(t)
	a.must(CmdSetNetPool, SetNetPool{Pool: pool("192.168.64.143", "192.168.64.147", 24), Time: t0})
	// A node added later with an address of the pool keeps it.
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:11:d4", IPAddr: "192.168.64.144"}}})
	var got []string
	for cpid := int64(1000001); cpid <= 1000004; cpid++ {
		ad, err := a.assign(cpid, 1)
		if err != nil {
			t.Fatalf("assign %d: %v", cpid, err)
		}
		got = append(got, ad.IP.String())
	}
	// .144 is a node's address: never given to a job.
	if want := []string{"192.168.64.143", "192.168.64.145", "192.168.64.146", "192.168.64.147"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
	ad, _ := a.f.Cluster().NetAddrOf(1000002)
	if ad.MAC != "02:53:c0:a8:40:91" || ad.CPID != 1000002 || ad.Node != 1 {
		t.Errorf("record %+v", ad)
	}
	before := a.f.Cluster()
	if _, err := a.assign(1000005, 2); !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "every address of the pool") {
		t.Fatalf("exhausted pool: %v", err)
	}
	if !reflect.DeepEqual(before.NetAddrs, a.f.Cluster().NetAddrs) {
		t.Errorf("a refused assignment changed the addresses")
	}
	if _, err := a.assign(1000001, 2); !errors.Is(err, ErrExists) {
		t.Errorf("a second address for one process: %v", err)
	}
	a.must(CmdReleaseNetAddr, ReleaseNetAddr{CPID: 1000002, Time: t0})
	a.must(CmdReleaseNetAddr, ReleaseNetAddr{CPID: 1000002, Time: t0}) // twice: nothing to do
	ad, err := a.assign(2000001, 2)
	if err != nil || ad.IP.String() != "192.168.64.145" || ad.Node != 2 {
		t.Fatalf("after a release: %+v %v", ad, err)
	}
	// A late release naming the old holder's address does not free the new one's.
	if r := a.apply(CmdReleaseNetAddr, ReleaseNetAddr{CPID: 2000001, IP: netip.MustParseAddr("192.168.64.150"), Time: t0}); !errors.Is(r.Error(), ErrConflict) {
		t.Errorf("release of another address: %v", r.Err)
	}
	if _, ok := a.f.Cluster().NetAddrOf(2000001); !ok {
		t.Errorf("a refused release freed the address")
	}
}

func TestNetAddrFollowsTheMoveAndSurvivesSnapshots(t *testing.T) {
	a := netCluster(t)
	a.must(CmdSetNetPool, SetNetPool{Pool: pool("192.168.64.200", "192.168.64.201", 24), Time: t0})
	if _, err := a.assign(1000001, 1); err != nil {
		t.Fatal(err)
	}
	a.must(CmdMoved, Moved{CPID: 1000001, From: 1, To: 2, Record: 2, Time: t0})
	if ad, _ := a.f.Cluster().NetAddrOf(1000001); ad.Node != 2 {
		t.Fatalf("after the move the address is recorded on node %d", ad.Node)
	}
	// A copy is independent of the state it came from.
	c := a.f.Cluster()
	c.NetAddrs[1000001].Node = 9
	c.NetPool.Bits = 9
	if ad, _ := a.f.Cluster().NetAddrOf(1000001); ad.Node != 2 || a.f.Cluster().NetPool.Bits != 24 {
		t.Fatalf("changing a copy changed the state")
	}
	b, err := json.Marshal(a.f.Cluster())
	if err != nil {
		t.Fatal(err)
	}
	var back Cluster
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.NetAddrs, a.f.Cluster().NetAddrs) || *back.NetPool != *a.f.Cluster().NetPool {
		t.Errorf("through JSON: %+v %+v", back.NetAddrs, back.NetPool)
	}
}

func TestSetNetPoolRefusesBadPoolsChangingNothing(t *testing.T) {
	a := netCluster(t)
	a.must(CmdSetNetPool, SetNetPool{Pool: pool("192.168.64.200", "192.168.64.210", 24), Time: t0})
	if _, err := a.assign(1000001, 1); err != nil { // .200
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		p    NetPool
		want error
		says string
	}{
		"reversed":         {pool("192.168.64.20", "192.168.64.10", 24), ErrInvalid, "ends before it starts"},
		"ipv6":             {NetPool{First: netip.MustParseAddr("fd00::1"), Last: netip.MustParseAddr("fd00::9"), Bits: 64}, ErrInvalid, "IPv4"},
		"no prefix":        {pool("192.168.64.20", "192.168.64.30", 0), ErrInvalid, "/8 to /30"},
		"two networks":     {pool("192.168.64.20", "192.168.65.30", 24), ErrInvalid, "not inside one /24"},
		"too big":          {pool("10.0.0.1", "10.2.0.1", 8), ErrInvalid, "at most 65536"},
		"network address":  {pool("192.168.64.0", "192.168.64.30", 24), ErrInvalid, "network"},
		"broadcast":        {pool("192.168.64.220", "192.168.64.255", 24), ErrInvalid, "broadcast"},
		"a node's address": {pool("192.168.64.130", "192.168.64.205", 24), ErrExists, "192.168.64.141, the address of node 1"},
		"leaves a job out": {pool("192.168.64.201", "192.168.64.210", 24), ErrConflict, "process 1000001 holds 192.168.64.200"},
		"clear while held": {NetPool{}, ErrConflict, "hold an address"},
		"unset":            {NetPool{}, ErrInvalid, "IPv4"},
	} {
		before := a.f.Cluster()
		cmd := SetNetPool{Pool: tc.p, Clear: name == "clear while held", Time: t0}
		r := a.apply(CmdSetNetPool, cmd)
		if !errors.Is(r.Error(), tc.want) || !strings.Contains(r.Error().Error(), tc.says) {
			t.Errorf("%s: %v, want %v saying %q", name, r.Err, tc.want, tc.says)
		}
		if !reflect.DeepEqual(before.NetPool, a.f.Cluster().NetPool) || !reflect.DeepEqual(before.NetAddrs, a.f.Cluster().NetAddrs) {
			t.Errorf("%s: the refused pool changed the state", name)
		}
	}
	a.must(CmdReleaseNetAddr, ReleaseNetAddr{CPID: 1000001, Time: t0})
	a.must(CmdSetNetPool, SetNetPool{Clear: true, Time: t0})
	if _, err := a.assign(1000002, 1); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "ssi net pool") {
		t.Errorf("without a pool: %v", err)
	}
}

func TestNetMAC(t *testing.T) {
	if got := NetMAC(netip.MustParseAddr("10.100.1.7")); got != "02:53:0a:64:01:07" {
		t.Errorf("NetMAC: %s", got)
	}
}
