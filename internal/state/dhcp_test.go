package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func TestDHCPSettingsDefaultAndPartialUpdates(t *testing.T) {
	a := newApplier(t)
	if got, want := a.f.Cluster().DHCPSettings(), DefaultDHCPConfig(); !reflect.DeepEqual(got, want) {
		t.Fatalf("before any set: %+v, want %+v", got, want)
	}
	r := a.must(CmdSetDHCP, SetDHCP{
		Config: DHCPConfig{Interface: "br0", Netmask: "255.255.255.0", Gateway: "192.168.64.1", DNS: []string{"192.168.64.1", "9.9.9.9"}, Enabled: true},
		Fields: []string{"interface", "netmask", "gateway", "dns", "enabled"},
	})
	var echoed DHCPConfig
	if err := r.Decode(&echoed); err != nil {
		t.Fatal(err)
	}
	want := DHCPConfig{Enabled: true, Interface: "br0", Netmask: "255.255.255.0", Gateway: "192.168.64.1",
		DNS: []string{"192.168.64.1", "9.9.9.9"}, LeaseTime: time.Hour, ServerNode: 1}
	if got := a.f.Cluster().DHCPSettings(); !reflect.DeepEqual(got, want) || !reflect.DeepEqual(echoed, want) {
		t.Fatalf("after set:\n got %+v\necho %+v\nwant %+v", got, echoed, want)
	}
	// Only the named fields change: the lease time and server, not the rest.
	a.must(CmdSetDHCP, SetDHCP{Config: DHCPConfig{LeaseTime: 2 * time.Hour, Interface: "ignored0"}, Fields: []string{"lease_time", "server_node"}})
	want.LeaseTime, want.ServerNode = 2*time.Hour, DHCPServerLeader
	if got := a.f.Cluster().DHCPSettings(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after partial set:\n got %+v\nwant %+v", got, want)
	}
	// Clearing a list and a string.
	a.must(CmdSetDHCP, SetDHCP{Fields: []string{"dns", "gateway"}})
	want.DNS, want.Gateway = nil, ""
	if got := a.f.Cluster().DHCPSettings(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after clearing:\n got %+v\nwant %+v", got, want)
	}
}

func TestSetDHCPRefusalsChangeNothing(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"}}})
	a.must(CmdSetDHCP, SetDHCP{Config: DHCPConfig{Interface: "br0", Netmask: "255.255.255.0"}, Fields: []string{"interface", "netmask"}})
	cases := []struct {
		name string
		cmd  SetDHCP
		want error
	}{
		{"no fields", SetDHCP{}, ErrInvalid},
		{"unknown field", SetDHCP{Fields: []string{"colour"}}, ErrInvalid},
		{"bad netmask", SetDHCP{Config: DHCPConfig{Netmask: "255.0.255.0"}, Fields: []string{"netmask"}}, ErrInvalid},
		{"zero netmask", SetDHCP{Config: DHCPConfig{Netmask: "0.0.0.0"}, Fields: []string{"netmask"}}, ErrInvalid},
		{"IPv6 netmask", SetDHCP{Config: DHCPConfig{Netmask: "ffff::"}, Fields: []string{"netmask"}}, ErrInvalid},
		{"bad gateway", SetDHCP{Config: DHCPConfig{Gateway: "192.168.64.300"}, Fields: []string{"gateway"}}, ErrInvalid},
		{"broadcast gateway", SetDHCP{Config: DHCPConfig{Gateway: "255.255.255.255"}, Fields: []string{"gateway"}}, ErrInvalid},
		{"bad DNS", SetDHCP{Config: DHCPConfig{DNS: []string{"1.1.1.1", "x"}}, Fields: []string{"dns"}}, ErrInvalid},
		{"duplicate DNS", SetDHCP{Config: DHCPConfig{DNS: []string{"1.1.1.1", "1.1.1.1"}}, Fields: []string{"dns"}}, ErrInvalid},
		{"fractional lease", SetDHCP{Config: DHCPConfig{LeaseTime: 1500 * time.Millisecond}, Fields: []string{"lease_time"}}, ErrInvalid},
		{"zero lease", SetDHCP{Config: DHCPConfig{}, Fields: []string{"lease_time"}}, ErrInvalid},
		{"bad interface", SetDHCP{Config: DHCPConfig{Interface: "a/b"}, Fields: []string{"interface"}}, ErrInvalid},
		{"long interface", SetDHCP{Config: DHCPConfig{Interface: "abcdefghijklmnop"}, Fields: []string{"interface"}}, ErrInvalid},
		{"bad domain", SetDHCP{Config: DHCPConfig{Domain: "a b"}, Fields: []string{"domain"}}, ErrInvalid},
		{"unknown server node", SetDHCP{Config: DHCPConfig{ServerNode: 9}, Fields: []string{"server_node"}}, ErrNotFound},
		{"enable without interface", SetDHCP{Config: DHCPConfig{Enabled: true}, Fields: []string{"interface", "enabled"}}, ErrInvalid},
		// one bad field spoils the whole change
		{"good and bad", SetDHCP{Config: DHCPConfig{Domain: "ok.example", Gateway: "x"}, Fields: []string{"domain", "gateway"}}, ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := json.Marshal(a.f.Cluster())
			r := a.apply(CmdSetDHCP, tc.cmd)
			if !errors.Is(r.Error(), tc.want) {
				t.Fatalf("got %v, want %v", r.Err, tc.want)
			}
			if after, _ := json.Marshal(a.f.Cluster()); !bytes.Equal(before, after) {
				t.Errorf("refused command changed the state:\n%s\n%s", before, after)
			}
		})
	}
	// Node 2 exists, so it may serve.
	a.must(CmdSetDHCP, SetDHCP{Config: DHCPConfig{ServerNode: 2}, Fields: []string{"server_node"}})
}

func TestSetDHCPBeforeBootstrapIsRefused(t *testing.T) {
	f := NewFSM(nil)
	b, _ := Encode(CmdSetDHCP, SetDHCP{Fields: []string{"domain"}})
	if r := f.ApplyEntry(1, b); !errors.Is(r.Error(), ErrConflict) {
		t.Fatalf("got %v", r.Err)
	}
	if f.Cluster().DHCP != nil {
		t.Errorf("state changed")
	}
}

func TestRecordLease(t *testing.T) {
	a := newApplier(t)
	a.must(CmdAddNodes, AddNodes{Time: t0, Nodes: []NodeSpec{
		{HWAddr: "0a:00:00:00:11:d2", IPAddr: "192.168.64.142"},
		{HWAddr: "0a:00:00:00:11:d3", IPAddr: "192.168.64.143"},
	}})
	l := Lease{HWAddr: "0A:00:00:00:11:D2", IPAddr: "192.168.64.142", Expires: t0.Add(time.Hour), Recorded: t0, ServerNum: 1}
	a.must(CmdRecordLease, RecordLease{Lease: l})
	a.must(CmdRecordLease, RecordLease{Lease: Lease{HWAddr: "0a:00:00:00:11:d3", IPAddr: "192.168.64.143", Expires: t0, Recorded: t0, ServerNum: 1}})
	got := a.f.Cluster().SortedLeases()
	if len(got) != 2 || got[0].HWAddr != "0a:00:00:00:11:d2" || got[0].IPAddr != "192.168.64.142" || !got[0].Expires.Equal(t0.Add(time.Hour)) || got[1].HWAddr != "0a:00:00:00:11:d3" {
		t.Fatalf("leases %+v", got)
	}

	for name, bad := range map[string]struct {
		l    Lease
		want error
	}{
		"unregistered MAC": {Lease{HWAddr: "0a:00:00:00:11:ee", IPAddr: "192.168.64.150"}, ErrNotFound},
		"bad MAC":          {Lease{HWAddr: "zz", IPAddr: "192.168.64.150"}, ErrInvalid},
		"bad IP":           {Lease{HWAddr: "0a:00:00:00:11:d2", IPAddr: "::1"}, ErrInvalid},
	} {
		before, _ := json.Marshal(a.f.Cluster())
		if r := a.apply(CmdRecordLease, RecordLease{Lease: bad.l}); !errors.Is(r.Error(), bad.want) {
			t.Errorf("%s: got %v, want %v", name, r.Err, bad.want)
		}
		if after, _ := json.Marshal(a.f.Cluster()); !bytes.Equal(before, after) {
			t.Errorf("%s: refused lease changed the state", name)
		}
	}

	// A removed node's lease goes with the next record.
	a.must(CmdRemoveNode, RemoveNode{Num: 3})
	a.must(CmdRecordLease, RecordLease{Lease: l})
	if got := a.f.Cluster().SortedLeases(); len(got) != 1 || got[0].HWAddr != "0a:00:00:00:11:d2" {
		t.Fatalf("after removing node 3: %+v", got)
	}
}

func TestCloneCopiesDHCPDeeply(t *testing.T) {
	a := newApplier(t)
	a.must(CmdSetDHCP, SetDHCP{Config: DHCPConfig{DNS: []string{"10.0.0.53"}}, Fields: []string{"dns"}})
	a.must(CmdRecordLease, RecordLease{Lease: Lease{HWAddr: "0a:00:00:00:11:d1", IPAddr: "192.168.64.141", Expires: t0}})
	c := a.f.Cluster()
	c.DHCP.DNS[0] = "mutated"
	c.DHCP.Domain = "mutated"
	c.Leases["0a:00:00:00:11:d1"].IPAddr = "mutated"
	c.Leases["other"] = &Lease{}
	d := a.f.Cluster()
	if d.DHCP.DNS[0] != "10.0.0.53" || d.DHCP.Domain != "" || d.Leases["0a:00:00:00:11:d1"].IPAddr != "192.168.64.141" || len(d.Leases) != 1 {
		t.Errorf("a copy shares DHCP state with the FSM: %+v %+v", d.DHCP, d.Leases)
	}
}

func TestSnapshotKeepsDHCP(t *testing.T) {
	a := newApplier(t)
	a.must(CmdSetDHCP, SetDHCP{
		Config: DHCPConfig{Enabled: true, Interface: "br0", Netmask: "255.255.0.0", Gateway: "10.1.0.1", DNS: []string{"10.1.0.53"}, LeaseTime: 90 * time.Second, Domain: "c.example", ServerNode: DHCPServerLeader},
		Fields: DHCPFields,
	})
	a.must(CmdRecordLease, RecordLease{Lease: Lease{HWAddr: "0a:00:00:00:11:d1", IPAddr: "192.168.64.141", Expires: t0.Add(time.Minute), Recorded: t0, ServerNum: 1}})
	snap, err := a.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(s.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, want := g.Cluster(), a.f.Cluster(); !reflect.DeepEqual(got.DHCP, want.DHCP) || !reflect.DeepEqual(got.Leases, want.Leases) {
		t.Errorf("restored DHCP state differs:\n got %+v %+v\nwant %+v %+v", got.DHCP, got.Leases, want.DHCP, want.Leases)
	}
	if g.Cluster().DHCP.ServerNode != DHCPServerLeader || !g.Cluster().DHCP.Enabled {
		t.Errorf("restored settings %+v", g.Cluster().DHCP)
	}
}
