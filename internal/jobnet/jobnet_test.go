package jobnet

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	ssiv1 "github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/state"
	"github.com/ssi-cluster/ssi/internal/vproc"
)

func TestDownAddrsAreThoseOfDownOrRemovedNodes(t *testing.T) {
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	cl := &state.Cluster{
		Nodes: map[uint32]*state.Node{1: {Num: 1, State: state.Up}, 2: {Num: 2, State: state.Down}, 3: {Num: 3, State: state.ComingUp}},
		NetAddrs: map[int64]*state.NetAddr{
			1000001: {IP: ip("10.0.1.1"), CPID: 1000001, Node: 1},
			2000001: {IP: ip("10.0.1.2"), CPID: 2000001, Node: 2},
			3000001: {IP: ip("10.0.1.3"), CPID: 3000001, Node: 3},
			4000001: {IP: ip("10.0.1.4"), CPID: 4000001, Node: 4}, // removed
			1000002: {IP: ip("10.0.1.5"), CPID: 1000002, Node: 2}, // moved to node 2
		},
	}
	var got []int64
	for _, a := range DownAddrs(cl, time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)) {
		got = append(got, a.CPID)
	}
	if want := []int64{2000001, 4000001, 1000002}; !reflect.DeepEqual(got, want) {
		t.Errorf("DownAddrs: %v, want %v (address order)", got, want)
	}
}

func TestStrayAddrsAreThisNodesOldOnesWithoutAJob(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	old, fresh := now.Add(-time.Minute), now.Add(-time.Second)
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	cl := &state.Cluster{NetAddrs: map[int64]*state.NetAddr{
		2000001: {IP: ip("10.0.1.1"), CPID: 2000001, Node: 2, Time: old},   // runs here
		2000002: {IP: ip("10.0.1.2"), CPID: 2000002, Node: 2, Time: old},   // gone: stray
		2000003: {IP: ip("10.0.1.3"), CPID: 2000003, Node: 2, Time: fresh}, // still starting
		3000001: {IP: ip("10.0.1.4"), CPID: 3000001, Node: 3, Time: old},   // another node's
	}}
	running := func(c vproc.CPID) bool { return c == 2000001 }
	got := StrayAddrs(cl, 2, running, now)
	if len(got) != 1 || got[0].CPID != 2000002 {
		t.Errorf("StrayAddrs: %+v, want only 2000002's", got)
	}
}

func TestPoolFromProto(t *testing.T) {
	p, err := PoolFromProto(&ssiv1.NetPool{First: "10.1.0.100", Last: "10.1.0.199", Bits: 16})
	if err != nil || p.First.String() != "10.1.0.100" || p.Last.String() != "10.1.0.199" || p.Bits != 16 {
		t.Fatalf("PoolFromProto: %+v %v", p, err)
	}
	if back := PoolToProto(p); back.First != "10.1.0.100" || back.Last != "10.1.0.199" || back.Bits != 16 {
		t.Errorf("PoolToProto: %+v", back)
	}
	for _, bad := range []*ssiv1.NetPool{
		nil,
		{First: "10.1.0.100", Last: "x", Bits: 16},
		{First: "10.1.0.200", Last: "10.1.0.100", Bits: 16},
		{First: "10.1.0.100", Last: "10.1.0.199", Bits: 1000},
		{First: string(make([]byte, 100)), Last: "10.1.0.199", Bits: 16},
	} {
		if _, err := PoolFromProto(bad); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("PoolFromProto(%v): %v, want invalid", bad, err)
		}
	}
}
