package dhcp

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// FuzzHandle feeds arbitrary bytes through dhcpv4.FromBytes and Handle.
// Handle must not panic, and any reply must encode, decode again, and
// never offer an address other than the registered one.
func FuzzHandle(f *testing.F) {
	reg := newRegistry(map[string]Binding{
		node2MAC:            node2,
		"0a:00:00:00:11:d3": {Num: 3, IP: netip.MustParseAddr("192.168.64.143")}, // no host name
	})
	srv, err := New(testSettings(), reg, &leaseLog{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeInform} {
		f.Add(packet(f, mt, node2MAC).ToBytes())
		f.Add(packet(f, mt, "0a:00:00:00:11:d3", dhcpv4.WithClientIP(ip4("192.168.64.143"))).ToBytes())
	}
	f.Add(packet(f, dhcpv4.MessageTypeRequest, node2MAC,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.64.142"))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.64.141"))),
		dhcpv4.WithGatewayIP(ip4("10.1.1.1"))).ToBytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		reply, err := srv.Handle(req)
		if err != nil || reply == nil {
			return
		}
		back, err := dhcpv4.FromBytes(reply.ToBytes())
		if err != nil {
			t.Fatalf("reply does not decode: %v\n%s", err, reply.Summary())
		}
		if back.TransactionID != req.TransactionID || back.OpCode != dhcpv4.OpcodeBootReply {
			t.Fatalf("reply does not answer the request: %s", back.Summary())
		}
		b, ok := reg.LookupMAC(req.ClientHWAddr.String())
		if !ok {
			t.Fatalf("answered unregistered MAC %s", req.ClientHWAddr)
		}
		if y := back.YourIPAddr; !isZero(y) && !y.Equal(net.IP(b.IP.AsSlice())) {
			t.Fatalf("offered %v to %s, registered %v", y, req.ClientHWAddr, b.IP)
		}
		_ = srv.destination(req, reply, &net.UDPAddr{IP: net.IPv4bcast, Port: 68})
	})
}
