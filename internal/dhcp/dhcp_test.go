package dhcp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// memRegistry is a node table in memory.
type memRegistry struct {
	mu sync.Mutex
	m  map[string]Binding
}

func newRegistry(bs map[string]Binding) *memRegistry {
	r := &memRegistry{m: map[string]Binding{}}
	for k, v := range bs {
		r.m[k] = v
	}
	return r
}

func (r *memRegistry) LookupMAC(mac string) (Binding, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.m[mac]
	return b, ok
}

func (r *memRegistry) set(mac string, b Binding) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[mac] = b
}

type lease struct {
	mac     string
	ip      netip.Addr
	expires time.Time
}

type leaseLog struct {
	mu   sync.Mutex
	all  []lease
	fail error
}

func (l *leaseLog) RecordLease(mac string, ip netip.Addr, expires time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, lease{mac, ip, expires})
	return l.fail
}

func (l *leaseLog) list() []lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lease(nil), l.all...)
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	node2MAC = "0a:00:00:00:11:d2"
	node2    = Binding{Num: 2, Hostname: "ssi2", IP: netip.MustParseAddr("192.168.64.142")}
	clock    = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

func testSettings() Settings {
	return Settings{
		Interface: "ssi0",
		ServerIP:  netip.MustParseAddr("192.168.64.141"),
		Netmask:   netip.MustParseAddr("255.255.255.0"),
		Router:    []netip.Addr{netip.MustParseAddr("192.168.64.1")},
		DNS:       []netip.Addr{netip.MustParseAddr("192.168.64.1"), netip.MustParseAddr("192.168.64.2")},
		Domain:    "cluster.example",
		LeaseTime: 10 * time.Minute,
		Now:       func() time.Time { return clock },
	}
}

type fixture struct {
	srv    *Server
	reg    *memRegistry
	leases *leaseLog
	logs   *syncBuffer
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{
		reg:    newRegistry(map[string]Binding{node2MAC: node2}),
		leases: &leaseLog{},
		logs:   &syncBuffer{},
	}
	var err error
	f.srv, err = New(testSettings(), f.reg, f.leases, slog.New(slog.NewTextHandler(f.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func packet(t testing.TB, mt dhcpv4.MessageType, mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	p, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(mt)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ip4(s string) net.IP { return net.ParseIP(s).To4() }

func checkOptions(t *testing.T, r *dhcpv4.DHCPv4, withLease bool) {
	t.Helper()
	if got := r.ServerIdentifier(); !got.Equal(ip4("192.168.64.141")) {
		t.Errorf("server identifier %v", got)
	}
	if got := net.IP(r.SubnetMask()).String(); got != "255.255.255.0" {
		t.Errorf("subnet mask %v", got)
	}
	if got := r.Router(); len(got) != 1 || !got[0].Equal(ip4("192.168.64.1")) {
		t.Errorf("router %v", got)
	}
	if got := r.DNS(); len(got) != 2 || !got[1].Equal(ip4("192.168.64.2")) {
		t.Errorf("dns %v", got)
	}
	if got := r.HostName(); got != "ssi2" {
		t.Errorf("host name %q", got)
	}
	if got := r.DomainName(); got != "cluster.example" {
		t.Errorf("domain %q", got)
	}
	if withLease {
		if got := r.IPAddressLeaseTime(0); got != 10*time.Minute {
			t.Errorf("lease %v", got)
		}
		if got := r.IPAddressRenewalTime(0); got != 5*time.Minute {
			t.Errorf("T1 %v", got)
		}
		if got := r.IPAddressRebindingTime(0); got != 10*time.Minute/8*7 {
			t.Errorf("T2 %v", got)
		}
		if got := r.BroadcastAddress(); !got.Equal(ip4("192.168.64.255")) {
			t.Errorf("broadcast %v", got)
		}
	} else if r.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Errorf("lease time in an INFORM answer")
	}
}

func TestDiscoverOffer(t *testing.T) {
	f := newFixture(t)
	req := packet(t, dhcpv4.MessageTypeDiscover, node2MAC, dhcpv4.WithBroadcast(true))
	r, err := f.srv.Handle(req)
	if err != nil || r == nil {
		t.Fatalf("Handle = %v, %v", r, err)
	}
	if r.OpCode != dhcpv4.OpcodeBootReply || r.MessageType() != dhcpv4.MessageTypeOffer || r.TransactionID != req.TransactionID {
		t.Errorf("reply %s", r.Summary())
	}
	if !r.YourIPAddr.Equal(ip4("192.168.64.142")) || r.ClientHWAddr.String() != node2MAC || !r.IsBroadcast() {
		t.Errorf("yiaddr %v chaddr %v broadcast %v", r.YourIPAddr, r.ClientHWAddr, r.IsBroadcast())
	}
	checkOptions(t, r, true)
	// It survives the wire.
	back, err := dhcpv4.FromBytes(r.ToBytes())
	if err != nil || !back.YourIPAddr.Equal(r.YourIPAddr) || back.HostName() != "ssi2" {
		t.Errorf("round trip: %v %v", back, err)
	}
	if len(f.leases.list()) != 0 {
		t.Errorf("an OFFER recorded a lease")
	}
	if s := f.srv.Stats(); s.Offers != 1 || s.Ignored != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestRequestAck(t *testing.T) {
	f := newFixture(t)
	// SELECTING: option 50 and our server identifier.
	req := packet(t, dhcpv4.MessageTypeRequest, node2MAC,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.64.142"))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.64.141"))))
	r, err := f.srv.Handle(req)
	if err != nil || r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("Handle = %v, %v", r, err)
	}
	if !r.YourIPAddr.Equal(ip4("192.168.64.142")) {
		t.Errorf("yiaddr %v", r.YourIPAddr)
	}
	checkOptions(t, r, true)
	want := lease{node2MAC, node2.IP, clock.Add(10 * time.Minute)}
	if got := f.leases.list(); len(got) != 1 || got[0] != want {
		t.Errorf("leases %+v, want %+v", got, want)
	}
	// RENEWING: ciaddr only.
	req = packet(t, dhcpv4.MessageTypeRequest, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.142")))
	r, _ = f.srv.Handle(req)
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.ClientIPAddr.Equal(ip4("192.168.64.142")) {
		t.Fatalf("renew: %v", r)
	}
	if len(f.leases.list()) != 2 {
		t.Errorf("renewal not recorded")
	}
	// A failing lease store does not cost the client its address.
	f.leases.fail = errors.New("no leader")
	if r, _ := f.srv.Handle(req); r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("ACK withheld when recording failed: %v", r)
	}
	if !strings.Contains(f.logs.String(), "could not record lease") {
		t.Errorf("recording failure not logged:\n%s", f.logs)
	}
}

func TestRequestNak(t *testing.T) {
	f := newFixture(t)
	for name, req := range map[string]*dhcpv4.DHCPv4{
		"wrong requested address": packet(t, dhcpv4.MessageTypeRequest, node2MAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.64.99")))),
		"wrong ciaddr":            packet(t, dhcpv4.MessageTypeRequest, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.99"))),
		"nothing requested":       packet(t, dhcpv4.MessageTypeRequest, node2MAC),
	} {
		r, err := f.srv.Handle(req)
		if err != nil || r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
			t.Errorf("%s: Handle = %v, %v; want NAK", name, r, err)
			continue
		}
		if !isZero(r.YourIPAddr) || r.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || !r.ServerIdentifier().Equal(ip4("192.168.64.141")) {
			t.Errorf("%s: NAK carries an address or lease: %s", name, r.Summary())
		}
		if name != "nothing requested" && !strings.Contains(r.Message(), "192.168.64.99 is not the address of ssi2 (0a:00:00:00:11:d2); it is 192.168.64.142") {
			t.Errorf("%s: NAK message %q", name, r.Message())
		}
	}
	if len(f.leases.list()) != 0 {
		t.Errorf("a NAK recorded a lease")
	}
	if s := f.srv.Stats(); s.Naks != 3 {
		t.Errorf("stats %+v", s)
	}
}

func TestRequestForAnotherServer(t *testing.T) {
	f := newFixture(t)
	req := packet(t, dhcpv4.MessageTypeRequest, node2MAC,
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.64.99"))),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.64.7"))))
	if r, err := f.srv.Handle(req); r != nil || err != nil {
		t.Errorf("answered a REQUEST for another server: %v, %v", r, err)
	}
	rel := packet(t, dhcpv4.MessageTypeRelease, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.142")),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.64.7"))))
	f.srv.Handle(rel)
	if len(f.leases.list()) != 0 {
		t.Errorf("acted on a RELEASE for another server")
	}
}

func TestUnknownMACLoggedOnce(t *testing.T) {
	f := newFixture(t)
	for i := 0; i < 3; i++ {
		for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest} {
			if r, err := f.srv.Handle(packet(t, mt, "0a:00:00:00:11:ee")); r != nil || err != nil {
				t.Fatalf("answered an unknown MAC: %v %v", r, err)
			}
		}
	}
	f.srv.Handle(packet(t, dhcpv4.MessageTypeDiscover, "0a:00:00:00:11:ef"))
	logs := f.logs.String()
	if n := strings.Count(logs, "mac=0a:00:00:00:11:ee"); n != 1 {
		t.Errorf("unknown MAC logged %d times:\n%s", n, logs)
	}
	if n := strings.Count(logs, "ignoring unregistered MAC"); n != 2 {
		t.Errorf("%d unknown-MAC lines, want 2:\n%s", n, logs)
	}
	if s := f.srv.Stats(); s.Ignored != 7 {
		t.Errorf("stats %+v", s)
	}
	// Registered, then removed again: logged anew.
	f.reg.set("0a:00:00:00:11:ee", Binding{Num: 9, IP: netip.MustParseAddr("192.168.64.149")})
	if r, _ := f.srv.Handle(packet(t, dhcpv4.MessageTypeDiscover, "0a:00:00:00:11:ee")); r == nil || !r.YourIPAddr.Equal(ip4("192.168.64.149")) {
		t.Fatalf("newly registered MAC: %v", r)
	}
	f.reg.mu.Lock()
	delete(f.reg.m, "0a:00:00:00:11:ee")
	f.reg.mu.Unlock()
	f.srv.Handle(packet(t, dhcpv4.MessageTypeDiscover, "0a:00:00:00:11:ee"))
	if n := strings.Count(f.logs.String(), "mac=0a:00:00:00:11:ee"); n != 2 {
		t.Errorf("removed MAC logged %d times in all, want 2", n)
	}
}

func TestReRegistrationApplies(t *testing.T) {
	f := newFixture(t)
	f.reg.set(node2MAC, Binding{Num: 2, Hostname: "ssi2", IP: netip.MustParseAddr("192.168.64.200")})
	r, _ := f.srv.Handle(packet(t, dhcpv4.MessageTypeDiscover, node2MAC))
	if r == nil || !r.YourIPAddr.Equal(ip4("192.168.64.200")) {
		t.Fatalf("offer after re-registration: %v", r)
	}
	// The old address is refused on renewal, the new one granted.
	r, _ = f.srv.Handle(packet(t, dhcpv4.MessageTypeRequest, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.142"))))
	if r == nil || r.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("renewal of the old address: %v", r)
	}
	r, _ = f.srv.Handle(packet(t, dhcpv4.MessageTypeRequest, node2MAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.64.200")))))
	if r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("request of the new address: %v", r)
	}
}

func TestReleaseDeclineInform(t *testing.T) {
	f := newFixture(t)
	rel := packet(t, dhcpv4.MessageTypeRelease, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.142")),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.64.141"))))
	if r, err := f.srv.Handle(rel); r != nil || err != nil {
		t.Errorf("answered a RELEASE: %v %v", r, err)
	}
	// A release of some other address changes nothing.
	f.srv.Handle(packet(t, dhcpv4.MessageTypeRelease, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.9"))))
	dec := packet(t, dhcpv4.MessageTypeDecline, node2MAC, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.64.142"))))
	if r, err := f.srv.Handle(dec); r != nil || err != nil {
		t.Errorf("answered a DECLINE: %v %v", r, err)
	}
	want := []lease{{node2MAC, node2.IP, clock}, {node2MAC, node2.IP, clock}}
	if got := f.leases.list(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("leases %+v, want %+v", got, want)
	}
	if !strings.Contains(f.logs.String(), "level=WARN msg=\"dhcp: node declined its address") {
		t.Errorf("decline not logged as a warning:\n%s", f.logs)
	}

	inf := packet(t, dhcpv4.MessageTypeInform, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.142")))
	r, err := f.srv.Handle(inf)
	if err != nil || r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("INFORM: %v %v", r, err)
	}
	if !isZero(r.YourIPAddr) || !r.ClientIPAddr.Equal(ip4("192.168.64.142")) {
		t.Errorf("INFORM answer yiaddr %v ciaddr %v", r.YourIPAddr, r.ClientIPAddr)
	}
	checkOptions(t, r, false)
}

func TestIgnoredPackets(t *testing.T) {
	f := newFixture(t)
	reply := packet(t, dhcpv4.MessageTypeDiscover, node2MAC)
	reply.OpCode = dhcpv4.OpcodeBootReply
	tokenRing := packet(t, dhcpv4.MessageTypeDiscover, node2MAC, dhcpv4.WithHWType(iana.HWTypeIEEE802))
	short := packet(t, dhcpv4.MessageTypeDiscover, node2MAC)
	short.ClientHWAddr = short.ClientHWAddr[:4]
	noType := packet(t, dhcpv4.MessageTypeDiscover, node2MAC)
	noType.Options.Del(dhcpv4.OptionDHCPMessageType)
	offer := packet(t, dhcpv4.MessageTypeOffer, node2MAC)
	for name, p := range map[string]*dhcpv4.DHCPv4{
		"nil": nil, "BOOTREPLY": reply, "not ethernet": tokenRing, "short hwaddr": short, "no type": noType, "OFFER": offer,
	} {
		if r, err := f.srv.Handle(p); r != nil || err != nil {
			t.Errorf("%s: answered %v, %v", name, r, err)
		}
	}
	if s := f.srv.Stats(); s.Ignored != 6 {
		t.Errorf("stats %+v", s)
	}
}

func TestRelayAndClientID(t *testing.T) {
	f := newFixture(t)
	req := packet(t, dhcpv4.MessageTypeDiscover, node2MAC,
		dhcpv4.WithGatewayIP(ip4("10.9.9.1")),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 0x0a, 0, 0, 0, 0x11, 0xd2})),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, []byte{1, 2, 'x', 'y'})))
	r, _ := f.srv.Handle(req)
	if r == nil || !r.GatewayIPAddr.Equal(ip4("10.9.9.1")) {
		t.Fatalf("relayed offer: %v", r)
	}
	if !bytes.Equal(r.Options.Get(dhcpv4.OptionClientIdentifier), []byte{1, 0x0a, 0, 0, 0, 0x11, 0xd2}) ||
		!bytes.Equal(r.Options.Get(dhcpv4.OptionRelayAgentInformation), []byte{1, 2, 'x', 'y'}) {
		t.Errorf("options not echoed: %s", r.Summary())
	}
	if dst := f.srv.destination(req, r, &net.UDPAddr{IP: ip4("10.9.9.1"), Port: 67}); dst.String() != "10.9.9.1:67" {
		t.Errorf("relay destination %v", dst)
	}
}

func TestBadBinding(t *testing.T) {
	f := newFixture(t)
	f.reg.set(node2MAC, Binding{Num: 2, IP: netip.MustParseAddr("fd00::2")})
	r, err := f.srv.Handle(packet(t, dhcpv4.MessageTypeDiscover, node2MAC))
	if r != nil || err == nil || !strings.Contains(err.Error(), "node 2") {
		t.Errorf("IPv6 binding: %v, %v", r, err)
	}
}

func TestNewRefusesBadSettings(t *testing.T) {
	reg := newRegistry(nil)
	for name, mod := range map[string]func(*Settings){
		"no server IP":   func(s *Settings) { s.ServerIP = netip.Addr{} },
		"v6 server IP":   func(s *Settings) { s.ServerIP = netip.MustParseAddr("fd00::1") },
		"no netmask":     func(s *Settings) { s.Netmask = netip.Addr{} },
		"holey netmask":  func(s *Settings) { s.Netmask = netip.MustParseAddr("255.0.255.0") },
		"v6 router":      func(s *Settings) { s.Router = []netip.Addr{netip.MustParseAddr("::1")} },
		"v6 dns":         func(s *Settings) { s.DNS = []netip.Addr{netip.MustParseAddr("::1")} },
		"domain":         func(s *Settings) { s.Domain = "a b" },
		"lease fraction": func(s *Settings) { s.LeaseTime = 1500 * time.Millisecond },
		"lease negative": func(s *Settings) { s.LeaseTime = -time.Second },
		"port":           func(s *Settings) { s.Port = 70000 },
	} {
		s := testSettings()
		mod(&s)
		if _, err := New(s, reg, nil, nil); !errors.Is(err, ErrInvalidSettings) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if _, err := New(testSettings(), nil, nil, nil); !errors.Is(err, ErrInvalidSettings) {
		t.Errorf("nil registry accepted")
	}
	s := testSettings()
	s.LeaseTime = 0
	srv, err := New(s, RegistryFunc(func(string) (Binding, bool) { return node2, true }), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := srv.Handle(packet(t, dhcpv4.MessageTypeDiscover, node2MAC))
	if got := r.IPAddressLeaseTime(0); got != DefaultLeaseTime {
		t.Errorf("default lease %v", got)
	}
}

func TestDestination(t *testing.T) {
	f := newFixture(t)
	noIface := testSettings()
	noIface.Interface = ""
	loop, err := New(noIface, f.reg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	zeroPeer := &net.UDPAddr{IP: net.IPv4bcast, Port: 68} // what server4 passes for 0.0.0.0
	uniPeer := &net.UDPAddr{IP: ip4("127.0.0.1"), Port: 4068}
	offer := packet(t, dhcpv4.MessageTypeOffer, node2MAC)
	nak := packet(t, dhcpv4.MessageTypeNak, node2MAC)
	plain := packet(t, dhcpv4.MessageTypeDiscover, node2MAC)
	renew := packet(t, dhcpv4.MessageTypeRequest, node2MAC, dhcpv4.WithClientIP(ip4("192.168.64.142")))
	for _, tc := range []struct {
		name  string
		srv   *Server
		req   *dhcpv4.DHCPv4
		reply *dhcpv4.DHCPv4
		peer  net.Addr
		want  string
	}{
		{"init client", f.srv, plain, offer, zeroPeer, "255.255.255.255:68"},
		{"renewing client", f.srv, renew, offer, &net.UDPAddr{IP: ip4("192.168.64.142"), Port: 68}, "192.168.64.142:68"},
		{"nak is broadcast", f.srv, renew, nak, &net.UDPAddr{IP: ip4("192.168.64.142"), Port: 68}, "255.255.255.255:68"},
		{"peer with address", f.srv, plain, offer, uniPeer, "127.0.0.1:4068"},
		{"no interface, unicast peer", loop, plain, offer, uniPeer, "127.0.0.1:4068"},
		{"no interface, nak to peer", loop, plain, nak, uniPeer, "127.0.0.1:4068"},
		{"no interface, broadcast needed", loop, plain, offer, zeroPeer, "<nil>"},
	} {
		if got := tc.srv.destination(tc.req, tc.reply, tc.peer); got.String() != tc.want {
			t.Errorf("%s: destination %v, want %s", tc.name, got, tc.want)
		}
	}
}

// TestServeConnLoopback runs the server on a loopback UDP socket and talks
// to it over the wire, then stops it.
func TestServeConnLoopback(t *testing.T) {
	f := newFixture(t)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.ServeConn(ctx, conn) }()

	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	req := packet(t, dhcpv4.MessageTypeDiscover, node2MAC)
	if _, err := client.WriteTo(req.ToBytes(), conn.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard, not a performance bound
	buf := make([]byte, 1500)
	n, _, err := client.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	r, err := dhcpv4.FromBytes(buf[:n])
	if err != nil || r.MessageType() != dhcpv4.MessageTypeOffer || r.TransactionID != req.TransactionID || !r.YourIPAddr.Equal(ip4("192.168.64.142")) {
		t.Fatalf("reply %v, %v", r, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeConn after cancel: %v", err)
	}
	if _, err := conn.WriteTo([]byte("x"), client.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("socket still open after stop: %v", err)
	}
}

func TestServeNeedsInterface(t *testing.T) {
	s := testSettings()
	s.Interface = ""
	srv, err := New(s, newRegistry(nil), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background()); !errors.Is(err, ErrInvalidSettings) {
		t.Errorf("Serve without interface: %v", err)
	}
	s.Interface = "ssi-no-such-if0"
	s.Port = 6767
	srv, _ = New(s, newRegistry(nil), nil, nil)
	if err := srv.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "ssi-no-such-if0") {
		t.Errorf("Serve on a missing interface: %v", err)
	}
}
