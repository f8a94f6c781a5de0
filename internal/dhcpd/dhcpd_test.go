package dhcpd

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ssi-cluster/ssi/internal/dhcp"
	"github.com/ssi-cluster/ssi/internal/state"
)

func applyTo(t *testing.T, f *state.FSM, index uint64, typ state.CommandType, cmd any) {
	t.Helper()
	b, err := state.Encode(typ, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if r := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: b}).(state.Result); r.Err != nil {
		t.Fatalf("command %d refused: %v", typ, r.Err)
	}
}

// The registry answers from the node table and sees every change without
// being told: its cache is dropped whenever the state machine applies one.
func TestFSMRegistryFollowsTheNodeTable(t *testing.T) {
	f := state.NewFSM(nil)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	applyTo(t, f, 1, state.CmdBootstrap, state.Bootstrap{Name: "ssi1", Time: t0,
		Config: state.Config{Voters: 1, MaxNodes: 8, Port: 7470, HeartbeatInterval: time.Second, FailureTimeout: 2 * time.Second},
		Node:   state.NodeSpec{HWAddr: "0a:00:00:00:11:d1", IPAddr: "10.0.0.1"}})
	r := &fsmRegistry{fsm: f}
	if b, ok := r.LookupMAC("0a:00:00:00:11:d1"); !ok || b.Num != 1 || b.Hostname != "ssi1" || b.IP != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("node 1: %+v %v", b, ok)
	}
	if _, ok := r.LookupMAC("0a:00:00:00:11:d2"); ok {
		t.Fatalf("an unregistered MAC was found")
	}
	applyTo(t, f, 2, state.CmdAddNodes, state.AddNodes{Time: t0, Nodes: []state.NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.2", Name: "guest2"}}})
	if b, ok := r.LookupMAC("0a:00:00:00:11:d2"); !ok || b.Num != 2 || b.Hostname != "guest2" || b.IP != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("added node 2: %+v %v", b, ok)
	}
	applyTo(t, f, 3, state.CmdRemoveNode, state.RemoveNode{Num: 2})
	applyTo(t, f, 4, state.CmdAddNodes, state.AddNodes{Time: t0, Nodes: []state.NodeSpec{{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.77", Name: "guest2"}}})
	if b, ok := r.LookupMAC("0a:00:00:00:11:d2"); !ok || b.Num != 3 || b.IP != netip.MustParseAddr("10.0.0.77") {
		t.Fatalf("re-registered node: %+v %v", b, ok)
	}
	applyTo(t, f, 5, state.CmdRecordLease, state.RecordLease{Lease: state.Lease{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.77", Expires: t0.Add(time.Hour), Recorded: t0}})
	if l, ok := r.current().leases["0a:00:00:00:11:d2"]; !ok || l.IPAddr != "10.0.0.77" {
		t.Fatalf("lease not in the registry's view: %+v", l)
	}
}

func TestSameLease(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := state.Lease{HWAddr: "0a:00:00:00:11:d2", IPAddr: "10.0.0.2", Expires: t0.Add(time.Hour), Recorded: t0}
	interval := recordInterval(time.Hour)
	if interval != time.Minute {
		t.Fatalf("recordInterval(1h) = %v", interval)
	}
	if got := recordInterval(2 * time.Minute); got != 30*time.Second {
		t.Fatalf("recordInterval(2m) = %v", got)
	}
	again := old
	again.Recorded, again.Expires = t0.Add(10*time.Second), t0.Add(time.Hour+10*time.Second)
	renewed := old
	renewed.Recorded, renewed.Expires = t0.Add(30*time.Minute), t0.Add(90*time.Minute)
	moved := again
	moved.IPAddr = "10.0.0.77"
	released := old
	released.Recorded, released.Expires = t0.Add(time.Second), t0.Add(time.Second)
	for name, tc := range map[string]struct {
		l    state.Lease
		same bool
	}{
		"re-request seconds later": {again, true},
		"renewal at half time":     {renewed, false},
		"new address":              {moved, false},
		"release":                  {released, false},
	} {
		if got := sameLease(old, tc.l, interval); got != tc.same {
			t.Errorf("%s: sameLease = %v, want %v", name, got, tc.same)
		}
	}
}

// BenchmarkDaemonDHCPDiscover measures the daemon's DHCP server: DISCOVER
// in, OFFER out (encoded), with bindings looked up in the replicated node
// table of a 1000-node cluster through the daemon's registry.
func BenchmarkDaemonDHCPDiscover(b *testing.B) {
	f := state.NewFSM(slog.New(slog.NewTextHandler(io.Discard, nil)))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	bt, _ := state.Encode(state.CmdBootstrap, state.Bootstrap{Name: "ssi1", Time: t0,
		Config: state.Config{Voters: 1, MaxNodes: 2048, Port: 7470, HeartbeatInterval: time.Second, FailureTimeout: 2 * time.Second},
		Node:   state.NodeSpec{HWAddr: "0a:00:00:01:00:00", IPAddr: "10.250.200.1"}})
	f.ApplyEntry(1, bt)
	var specs []state.NodeSpec
	var reqs []*dhcpv4.DHCPv4
	for i := 1; i < 1000; i++ {
		hw := net.HardwareAddr{0x0a, 0, 0, 0, byte(i >> 8), byte(i)}
		specs = append(specs, state.NodeSpec{HWAddr: hw.String(), IPAddr: netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)}).String()})
		req, err := dhcpv4.NewDiscovery(hw)
		if err != nil {
			b.Fatal(err)
		}
		reqs = append(reqs, req)
	}
	add, _ := state.Encode(state.CmdAddNodes, state.AddNodes{Time: t0, Nodes: specs})
	if r := f.ApplyEntry(2, add); r.Err != nil {
		b.Fatal(r.Err)
	}
	// The same options as internal/dhcp's benchmark, so the two compare.
	srv, err := dhcp.New(dhcp.Settings{ServerIP: netip.MustParseAddr("10.250.200.1"), Netmask: netip.MustParseAddr("255.255.0.0"),
		Router: []netip.Addr{netip.MustParseAddr("10.250.200.1")}, DNS: []netip.Addr{netip.MustParseAddr("10.250.200.1"), netip.MustParseAddr("10.250.200.2")},
		Domain: "cluster.example", LeaseTime: 10 * time.Minute},
		&fsmRegistry{fsm: f}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		r, err := srv.Handle(reqs[i%len(reqs)])
		if err != nil || r == nil {
			b.Fatalf("no offer: %v", err)
		}
		_ = r.ToBytes()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "offers/s")
}
