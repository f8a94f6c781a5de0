package state

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func vipCluster(t *testing.T) *applier {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{
		{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"},
		{HWAddr: "0a:00:00:00:11:d3", IPAddr: "192.168.64.143"},
	}})
	return a
}

func TestAddVIPStoresItCanonical(t *testing.T) {
	a := vipCluster(t)
	r := a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "::ffff:192.168.64.200", Port: 80, Proto: "TCP", Nodes: []uint32{2, 3}, Directors: []uint32{1, 2}, Check: "/health"}})
	var v VIP
	if err := r.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v.Key() != "192.168.64.200:80/tcp" || v.Sched != SchedRR || v.Proto != "tcp" {
		t.Fatalf("added %+v (key %s)", v, v.Key())
	}
	got := a.f.Cluster().VIPs["192.168.64.200:80/tcp"]
	if got == nil || !reflect.DeepEqual(got.Nodes, []uint32{2, 3}) || got.Check != "/health" || !got.Created.Equal(t0) || got.BackendPort() != 80 {
		t.Fatalf("stored %+v", got)
	}
}

func TestAddVIPRefusesBadInputChangingNothing(t *testing.T) {
	a := vipCluster(t)
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 80, Proto: "tcp"}})
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.201", Proto: "udp"}})
	for name, tc := range map[string]struct {
		v    VIP
		want error
		says string
	}{
		"a node's own address":  {VIP{Addr: "192.168.64.142", Port: 80}, ErrConflict, "node 2's own address"},
		"same address and port": {VIP{Addr: "192.168.64.200", Port: 80}, ErrExists, "overlaps the cluster virtual IP 192.168.64.200:80/tcp"},
		"every port over one":   {VIP{Addr: "192.168.64.200"}, ErrExists, "overlaps"},
		"one port in every":     {VIP{Addr: "192.168.64.201", Port: 53, Proto: "udp"}, ErrExists, "192.168.64.201:*/udp"},
		"unknown backend":       {VIP{Addr: "192.168.64.210", Port: 80, Nodes: []uint32{2, 9}}, ErrNotFound, "node 9 (in the backend list)"},
		"unknown director":      {VIP{Addr: "192.168.64.210", Port: 80, Directors: []uint32{7}}, ErrNotFound, "node 7 (in the director list)"},
		"not an address":        {VIP{Addr: "web", Port: 80}, ErrInvalid, "not an IP address"},
		"ipv6":                  {VIP{Addr: "fd00::1", Port: 80}, ErrInvalid, "only IPv4"},
		"loopback":              {VIP{Addr: "127.0.0.5", Port: 80}, ErrInvalid, "loopback"},
		"protocol":              {VIP{Addr: "192.168.64.210", Port: 80, Proto: "sctp"}, ErrInvalid, "not tcp or udp"},
		"scheduler":             {VIP{Addr: "192.168.64.210", Port: 80, Sched: "fastest"}, ErrInvalid, "rr, wrr, lc, load, sh"},
		"http check on udp":     {VIP{Addr: "192.168.64.210", Port: 80, Proto: "udp", Check: "/"}, ErrInvalid, "needs a tcp VIP"},
		"check path":            {VIP{Addr: "192.168.64.210", Port: 80, Check: "health"}, ErrInvalid, "must start with /"},
		"weights without wrr":   {VIP{Addr: "192.168.64.210", Port: 80, Nodes: []uint32{2}, Weights: map[uint32]uint32{2: 3}}, ErrInvalid, "for --sched wrr"},
		"weight out of range":   {VIP{Addr: "192.168.64.210", Port: 80, Sched: SchedWRR, Nodes: []uint32{2}, Weights: map[uint32]uint32{2: 0}}, ErrInvalid, "between 1 and"},
		"duplicate backend":     {VIP{Addr: "192.168.64.210", Port: 80, Nodes: []uint32{2, 2}}, ErrInvalid, "twice"},
		"target port, no port":  {VIP{Addr: "192.168.64.210", TargetPort: 8080}, ErrInvalid, "needs a VIP port"},
	} {
		t.Run(name, func(t *testing.T) {
			before := a.f.Cluster()
			r := a.apply(CmdAddVIP, AddVIP{Time: t0, VIP: tc.v})
			if !errors.Is(r.Error(), tc.want) || !strings.Contains(r.Err.Msg, tc.says) {
				t.Fatalf("refusal %v, want %v saying %q", r.Err, tc.want, tc.says)
			}
			after := a.f.Cluster()
			after.Requests, before.Requests = nil, nil
			if !reflect.DeepEqual(before, after) {
				t.Errorf("the refused command changed the state")
			}
		})
	}
}

func TestVIPAddressIsNoNodesAndNodesOfAVIPStay(t *testing.T) {
	a := vipCluster(t)
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 80, Nodes: []uint32{3}}})
	if r := a.apply(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:11:d9", IPAddr: "192.168.64.200"}}}); !errors.Is(r.Error(), ErrExists) || !strings.Contains(r.Err.Msg, "cluster virtual IP") {
		t.Errorf("a node on the VIP's address: %v", r.Err)
	}
	a.must(CmdSetState, SetState{Num: 3, To: Down, Time: t0})
	if r := a.apply(CmdRemoveNode, RemoveNode{Num: 3}); !errors.Is(r.Error(), ErrConflict) || !strings.Contains(r.Err.Msg, "ssi cvip rm 192.168.64.200:80/tcp") {
		t.Errorf("removing a backend of a VIP: %v", r.Err)
	}
	a.must(CmdRemoveVIP, RemoveVIP{Key: "192.168.64.200:80/tcp"})
	a.must(CmdRemoveNode, RemoveNode{Num: 3})
	if r := a.apply(CmdRemoveVIP, RemoveVIP{Key: "192.168.64.200:80/tcp"}); !errors.Is(r.Error(), ErrNotFound) {
		t.Errorf("removing it twice: %v", r.Err)
	}
}

func TestSetDirectorOnlyFromTheCurrentToAnUpDirector(t *testing.T) {
	a := vipCluster(t)
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 80, Directors: []uint32{2, 3}}})
	key := "192.168.64.200:80/tcp"
	a.must(CmdSetState, SetState{Num: 1, To: Up, Time: t0})
	a.must(CmdSetState, SetState{Num: 2, To: Up, Time: t0})
	for name, tc := range map[string]struct {
		cmd  SetDirector
		want error
	}{
		"not a director": {SetDirector{Key: key, Node: 1}, ErrConflict},
		"not up":         {SetDirector{Key: key, Node: 3}, ErrConflict},
		"stale from":     {SetDirector{Key: key, Node: 2, From: 3}, ErrConflict},
		"unknown vip":    {SetDirector{Key: "192.168.64.9:80/tcp", Node: 2}, ErrNotFound},
	} {
		if r := a.apply(CmdSetDirector, tc.cmd); !errors.Is(r.Error(), tc.want) {
			t.Errorf("%s: %v, want %v", name, r.Err, tc.want)
		}
	}
	a.must(CmdSetDirector, SetDirector{Key: key, Node: 2, Time: t0})
	if v := a.f.Cluster().VIPs[key]; v.Director != 2 || !v.DirectorSince.Equal(t0) {
		t.Fatalf("director %d since %v", v.Director, v.DirectorSince)
	}
	if r := a.apply(CmdSetDirector, SetDirector{Key: key, Node: 2, Time: t0}); !errors.Is(r.Error(), ErrConflict) {
		t.Errorf("a second election from 0: %v", r.Err)
	}
	a.must(CmdSetDirector, SetDirector{Key: key, Node: 0, From: 2, Time: t0})
}

func TestSetVIPChangesNamedFieldsOnly(t *testing.T) {
	a := vipCluster(t)
	key := "192.168.64.200:80/tcp"
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 80, Nodes: []uint32{2, 3}, Check: "/h", Directors: []uint32{1}}})
	a.must(CmdSetState, SetState{Num: 1, To: Up, Time: t0})
	a.must(CmdSetDirector, SetDirector{Key: key, Node: 1, Time: t0})
	r := a.must(CmdSetVIP, SetVIP{Key: key, VIP: VIP{Nodes: []uint32{2, 3}, Weights: map[uint32]uint32{2: 4}, Sched: SchedWRR}, Fields: []string{"nodes", "sched"}})
	var v VIP
	if err := r.Decode(&v); err != nil {
		t.Fatal(err)
	}
	got := a.f.Cluster().VIPs[key]
	if got.Sched != SchedWRR || got.Weight(2) != 4 || got.Check != "/h" || got.Director != 1 || !reflect.DeepEqual(got.Directors, []uint32{1}) || v.Sched != SchedWRR {
		t.Fatalf("after set: %+v", got)
	}
	// Leaving wrr drops the weights.
	a.must(CmdSetVIP, SetVIP{Key: key, VIP: VIP{Sched: SchedRR}, Fields: []string{"sched"}})
	if got := a.f.Cluster().VIPs[key]; got.Sched != SchedRR || len(got.Weights) != 0 {
		t.Errorf("back to rr: %+v", got)
	}
	for name, tc := range map[string]struct {
		cmd  SetVIP
		want error
	}{
		"unknown vip":     {SetVIP{Key: "192.168.64.9:80/tcp", Fields: []string{"sched"}, VIP: VIP{Sched: SchedRR}}, ErrNotFound},
		"nothing":         {SetVIP{Key: key}, ErrInvalid},
		"unknown field":   {SetVIP{Key: key, Fields: []string{"addr"}}, ErrInvalid},
		"unknown node":    {SetVIP{Key: key, Fields: []string{"nodes"}, VIP: VIP{Nodes: []uint32{9}}}, ErrNotFound},
		"bad scheduler":   {SetVIP{Key: key, Fields: []string{"sched"}, VIP: VIP{Sched: "x"}}, ErrInvalid},
		"check on a path": {SetVIP{Key: key, Fields: []string{"check"}, VIP: VIP{Check: "nope"}}, ErrInvalid},
	} {
		before := a.f.Cluster().VIPs[key]
		if r := a.apply(CmdSetVIP, tc.cmd); !errors.Is(r.Error(), tc.want) {
			t.Errorf("%s: %v, want %v", name, r.Err, tc.want)
		}
		if after := a.f.Cluster().VIPs[key]; !reflect.DeepEqual(before, after) {
			t.Errorf("%s: the refused change changed the VIP", name)
		}
	}
}

func TestOneAddressOneDirector(t *testing.T) {
	a := vipCluster(t)
	for num := uint32(1); num <= 3; num++ {
		a.must(CmdSetState, SetState{Num: num, To: Up, Time: t0})
	}
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 80, Directors: []uint32{1, 2}}})
	a.must(CmdSetDirector, SetDirector{Key: "192.168.64.200:80/tcp", Node: 1, Time: t0})
	if r := a.apply(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 81, Directors: []uint32{3}}}); !errors.Is(r.Error(), ErrConflict) || !strings.Contains(r.Err.Msg, "--directors 1,2") {
		t.Errorf("a VIP on the same address with other directors: %v", r.Err)
	}
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.200", Port: 81, Directors: []uint32{1, 2}}})
	a.must(CmdAddVIP, AddVIP{Time: t0, VIP: VIP{Addr: "192.168.64.201", Port: 80}})
	c := a.f.Cluster()
	if c.VIPs["192.168.64.200:81/tcp"].Director != 1 {
		t.Fatalf("a new VIP on a directed address has director %d, want the address's, 1", c.VIPs["192.168.64.200:81/tcp"].Director)
	}
	// One SetDirector moves the address, every VIP on it, nothing else.
	a.must(CmdSetDirector, SetDirector{Key: "192.168.64.200:81/tcp", Node: 2, From: 1, Time: t0})
	c = a.f.Cluster()
	if c.VIPs["192.168.64.200:80/tcp"].Director != 2 || c.VIPs["192.168.64.200:81/tcp"].Director != 2 || c.VIPs["192.168.64.201:80/tcp"].Director != 0 {
		t.Errorf("after moving 192.168.64.200: %d %d %d", c.VIPs["192.168.64.200:80/tcp"].Director, c.VIPs["192.168.64.200:81/tcp"].Director, c.VIPs["192.168.64.201:80/tcp"].Director)
	}
	// The directors belong to the address.
	a.must(CmdSetVIP, SetVIP{Key: "192.168.64.200:80/tcp", VIP: VIP{Directors: []uint32{2, 3}}, Fields: []string{"directors"}})
	if got := a.f.Cluster().VIPs["192.168.64.200:81/tcp"].Directors; !reflect.DeepEqual(got, []uint32{2, 3}) {
		t.Errorf("the other VIP on the address has directors %v", got)
	}
}
