package dhcp

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// benchServer has a registry of 1000 nodes, like a large cluster.
func benchServer(b *testing.B) (*Server, []*dhcpv4.DHCPv4) {
	reg := newRegistry(nil)
	var reqs []*dhcpv4.DHCPv4
	for i := 0; i < 1000; i++ {
		hw := net.HardwareAddr{0x0a, 0, 0, 0, byte(i >> 8), byte(i)}
		reg.set(hw.String(), Binding{Num: i + 1, Hostname: "ssi" + strconv.Itoa(i+1), IP: netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})})
		reqs = append(reqs, packet(b, dhcpv4.MessageTypeDiscover, hw.String()))
	}
	s := testSettings()
	s.Netmask = netip.MustParseAddr("255.255.0.0")
	srv, err := New(s, reg, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	return srv, reqs
}

// BenchmarkHandleDiscover measures the pure handler: DISCOVER in, OFFER
// out, including encoding the reply.
func BenchmarkHandleDiscover(b *testing.B) {
	srv, reqs := benchServer(b)
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

// BenchmarkServeDiscoverUDP measures DISCOVER/OFFER round trips over real
// UDP on loopback, one at a time, through ServeConn and server4.
func BenchmarkServeDiscoverUDP(b *testing.B) {
	srv, reqs := benchServer(b)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx, conn) }()
	defer func() {
		cancel()
		<-done
	}()
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	wire := make([][]byte, len(reqs))
	for i, r := range reqs {
		wire[i] = r.ToBytes()
	}
	buf := make([]byte, 1500)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := client.WriteTo(wire[i%len(wire)], conn.LocalAddr()); err != nil {
			b.Fatal(err)
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second)) // hang guard
		if _, _, err := client.ReadFrom(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "offers/s")
}
