package cvip

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The table ssi programs DNATs a VIP's connections to its backends in the
// slots' order (numgen inc), and nothing once the services are gone.
func TestNftablesDatapathBalancesInTheKernel(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, a := range []string{"10.9.0.1/32", "10.9.0.2/32", "10.9.0.100/32"} {
		ipOrFail(t, "addr", "add", a, "dev", "lo")
	}
	lineServer(t, "10.9.0.1:8080", "a")
	lineServer(t, "10.9.0.2:8080", "b")
	lineServer(t, "10.9.0.100:80", "vip itself")
	if err := probeNftables("ssi_cvip_test"); err != nil {
		t.Fatal(err)
	}
	d := &nftDatapath{table: "ssi_cvip_test"}
	eps := []endpoint{{Num: 2, Addr: "10.9.0.1", Port: 8080, Weight: 3}, {Num: 3, Addr: "10.9.0.2", Port: 8080, Weight: 1}}
	svc := service{Key: "10.9.0.100:80/tcp", VIP: netip.MustParseAddr("10.9.0.100"), Port: 80, Proto: unix.IPPROTO_TCP, Inc: true, Eps: eps, Slots: slots(eps)}
	if err := d.sync([]service{svc}); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for range 40 {
		got[ask(t, "10.9.0.100:80")]++
	}
	if got["a"] != 30 || got["b"] != 10 {
		t.Errorf("40 connections with weights 3:1 went %v, want a:30 b:10", got)
	}
	// conntrack counts a connection held open, by backend (for lc and
	// ssi cvip ls).
	held, err := net.DialTimeout("tcp", "10.9.0.100:80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	counts := countConns(netip.MustParseAddr("10.9.0.100"), 80, "tcp")
	held.Close()
	if counts == nil || counts["10.9.0.1"]+counts["10.9.0.2"] < 1 {
		t.Errorf("conntrack's count of a connection held open: %v", counts)
	}

	// Source hash: one client, one backend.
	svc.Inc, svc.Hash = false, true
	if err := d.sync([]service{svc}); err != nil {
		t.Fatal(err)
	}
	got = map[string]int{}
	for range 10 {
		got[ask(t, "10.9.0.100:80")]++
	}
	if len(got) != 1 || got["vip itself"] != 0 {
		t.Errorf("source hash sent one client to %v", got)
	}
	// Two services at once in the services map, a UDP one, and a VIP of
	// every port (a rule of its own).
	udpEcho(t, "10.9.0.2:5353", "b-udp")
	eps53 := []endpoint{{Num: 3, Addr: "10.9.0.2", Port: 5353, Weight: 1}}
	all := []endpoint{{Num: 2, Addr: "10.9.0.1", Weight: 1}}
	svcs := []service{
		svc,
		{Key: "10.9.0.100:53/udp", VIP: netip.MustParseAddr("10.9.0.100"), Port: 53, Proto: unix.IPPROTO_UDP, Inc: true, Eps: eps53, Slots: slots(eps53)},
		{Key: "10.9.0.101:*/tcp", VIP: netip.MustParseAddr("10.9.0.101"), Proto: unix.IPPROTO_TCP, Inc: true, Eps: all, Slots: slots(all)},
	}
	ipOrFail(t, "addr", "add", "10.9.0.101/32", "dev", "lo")
	if err := d.sync(svcs); err != nil {
		t.Fatal(err)
	}
	if got := askUDP(t, "10.9.0.100:53"); got != "b-udp" {
		t.Errorf("UDP through the VIP: %q", got)
	}
	if got := ask(t, "10.9.0.101:8080"); got != "a" {
		t.Errorf("a VIP of every port, port 8080: %q", got)
	}
	if got := ask(t, "10.9.0.100:80"); got != "a" && got != "b" {
		t.Errorf("the first service with two more: %q", got)
	}
	if err := d.remove(); err != nil {
		t.Fatal(err)
	}
	if s := ask(t, "10.9.0.100:80"); s != "vip itself" {
		t.Errorf("after the table is gone the VIP answered %q", s)
	}
}
