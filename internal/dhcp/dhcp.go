// Package dhcp owns ssi's DHCPv4 server, the "node 1 as a DHCP server"
// of the OpenSSI how-to: it gives each guest of a virtual cluster the
// address, host name and network settings registered for its MAC address,
// and nothing to anyone else. Every binding is static; there is no address
// pool and no lease database of its own.
//
// It must not own the node table: bindings come from a Registry the
// daemon backs with the replicated cluster state, consulted on every
// packet, so nodes added, removed or re-addressed take effect without a
// restart. Leases it grants are reported to an optional LeaseStore. The
// packet logic (Server.Handle) does no I/O; Serve and ServeConn put it on
// a socket with github.com/insomniacslk/dhcp's server4.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// DefaultLeaseTime is the lease handed out when Settings.LeaseTime is 0.
// Clients renew after half of it, which is how soon a changed address
// reaches a running guest.
const DefaultLeaseTime = time.Hour

// ErrInvalidSettings is returned (wrapped) by New for unusable Settings.
var ErrInvalidSettings = errors.New("invalid DHCP settings")

// Binding is what the cluster registered for one MAC address.
type Binding struct {
	Num      int        // node number, for log messages
	Hostname string     // sent as the host name option (12); empty for none
	IP       netip.Addr // the node's IPv4 address
}

// Registry looks up the binding of a MAC address, given in canonical form
// (lower case, colon separated: 0a:00:00:00:11:d2). It is called for
// every packet and must be safe for concurrent use.
type Registry interface {
	LookupMAC(mac string) (Binding, bool)
}

// RegistryFunc adapts a function to Registry.
type RegistryFunc func(mac string) (Binding, bool)

// LookupMAC calls f.
func (f RegistryFunc) LookupMAC(mac string) (Binding, bool) { return f(mac) }

// LeaseStore records leases: the address the server acknowledged to mac,
// until expires. A release or decline is recorded with expires set to the
// current time. It must be safe for concurrent use; errors are logged and
// do not stop the client from getting its address (the binding is static).
type LeaseStore interface {
	RecordLease(mac string, ip netip.Addr, expires time.Time) error
}

// Settings configure a Server.
type Settings struct {
	Interface string           // network interface Serve listens and broadcasts on (required for Serve)
	ServerIP  netip.Addr       // this server's address on that interface: the server identifier (required)
	Netmask   netip.Addr       // subnet mask handed to clients, e.g. 255.255.255.0 (required)
	Router    []netip.Addr     // default routers, optional
	DNS       []netip.Addr     // DNS servers, optional
	Domain    string           // domain name, optional
	LeaseTime time.Duration    // default DefaultLeaseTime; whole seconds, at most 2^32-2 s
	Port      int              // UDP port Serve listens on; default 67 (tests use another)
	Now       func() time.Time // clock for lease expiry times; default time.Now (tests fix it)
}

// Stats counts what a Server did.
type Stats struct {
	Offers, Acks, Naks, Ignored uint64
}

// Server answers DHCPv4 requests from registered MAC addresses.
type Server struct {
	settings Settings
	registry Registry
	leases   LeaseStore
	log      *slog.Logger

	serverID  net.IP
	mask      net.IPMask
	routers   []net.IP
	dns       []net.IP
	leaseTime time.Duration

	offers, acks, naks, ignored atomic.Uint64

	mu      sync.Mutex
	unknown map[string]struct{} // MACs already logged as unknown
}

// maxUnknownLogged bounds the memory spent remembering unknown MACs; past
// it the set starts over (and each MAC may be logged once more).
const maxUnknownLogged = 4096

// New checks settings and returns a Server. leases and logger may be nil
// (no lease records; slog.Default()).
func New(settings Settings, registry Registry, leases LeaseStore, logger *slog.Logger) (*Server, error) {
	if registry == nil {
		return nil, fmt.Errorf("%w: no registry", ErrInvalidSettings)
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{settings: settings, registry: registry, leases: leases, log: logger, unknown: map[string]struct{}{}}
	if !settings.ServerIP.Is4() || settings.ServerIP.IsUnspecified() {
		return nil, fmt.Errorf("%w: server IP %v: give this host's IPv4 address on the cluster network", ErrInvalidSettings, settings.ServerIP)
	}
	s.serverID = net.IP(settings.ServerIP.AsSlice())
	if !settings.Netmask.Is4() {
		return nil, fmt.Errorf("%w: netmask %v is not an IPv4 netmask (e.g. 255.255.255.0)", ErrInvalidSettings, settings.Netmask)
	}
	s.mask = net.IPMask(settings.Netmask.AsSlice())
	if ones, bits := s.mask.Size(); ones == 0 && bits == 0 {
		return nil, fmt.Errorf("%w: netmask %v is not contiguous (e.g. 255.255.255.0)", ErrInvalidSettings, settings.Netmask)
	}
	for _, r := range settings.Router {
		if !r.Is4() {
			return nil, fmt.Errorf("%w: router %v is not an IPv4 address", ErrInvalidSettings, r)
		}
		s.routers = append(s.routers, net.IP(r.AsSlice()))
	}
	for _, d := range settings.DNS {
		if !d.Is4() {
			return nil, fmt.Errorf("%w: DNS server %v is not an IPv4 address", ErrInvalidSettings, d)
		}
		s.dns = append(s.dns, net.IP(d.AsSlice()))
	}
	if len(settings.Domain) > 255 || strings.ContainsFunc(settings.Domain, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return nil, fmt.Errorf("%w: domain %q: use up to 255 printable ASCII characters", ErrInvalidSettings, settings.Domain)
	}
	s.leaseTime = settings.LeaseTime
	if s.leaseTime == 0 {
		s.leaseTime = DefaultLeaseTime
	}
	if s.leaseTime < time.Second || s.leaseTime%time.Second != 0 || s.leaseTime > (1<<32-2)*time.Second {
		return nil, fmt.Errorf("%w: lease time %v: use whole seconds, from 1s to about 136 years", ErrInvalidSettings, settings.LeaseTime)
	}
	if settings.Port < 0 || settings.Port > 65535 {
		return nil, fmt.Errorf("%w: port %d", ErrInvalidSettings, settings.Port)
	}
	if s.settings.Now == nil {
		s.settings.Now = time.Now
	}
	return s, nil
}

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	return Stats{Offers: s.offers.Load(), Acks: s.acks.Load(), Naks: s.naks.Load(), Ignored: s.ignored.Load()}
}

func (s *Server) ignore() (*dhcpv4.DHCPv4, error) {
	s.ignored.Add(1)
	return nil, nil
}

// Handle computes the reply to one request; a nil reply means no answer.
// It does no I/O besides the Registry, LeaseStore and log:
//
//   - DISCOVER from a registered MAC: OFFER of its address with subnet
//     mask, broadcast address, routers, DNS servers, host name, domain,
//     lease, renewal and rebinding times and the server identifier.
//   - REQUEST for the registered address (option 50, or ciaddr when
//     renewing): ACK with the same options, and the lease recorded.
//     REQUEST for any other address: NAK. REQUEST naming another server
//     identifier (the client chose another server): no answer.
//   - INFORM: ACK with the options but no address or lease.
//   - RELEASE, DECLINE: recorded as an expired lease (a decline is logged
//     as a warning: another host uses the node's address); no answer.
//   - Anything from an unknown MAC: no answer, logged once per MAC.
//
// The error is non-nil only for a request that cannot be answered because
// of the registry (a binding that is not IPv4).
func (s *Server) Handle(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	if req == nil || req.OpCode != dhcpv4.OpcodeBootRequest || req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return s.ignore()
	}
	mac := req.ClientHWAddr.String()
	mt := req.MessageType()
	switch mt {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform,
		dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
	default:
		return s.ignore()
	}
	if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(s.serverID) && mt != dhcpv4.MessageTypeDiscover && mt != dhcpv4.MessageTypeInform {
		s.log.Debug("dhcp: message for another server", "type", mt, "mac", mac, "server", sid)
		return s.ignore()
	}
	b, known, err := s.lookup(mac)
	if err != nil {
		s.ignored.Add(1)
		return nil, err
	}
	if !known {
		return s.ignore()
	}
	ip := net.IP(b.IP.AsSlice())

	switch mt {
	case dhcpv4.MessageTypeDiscover:
		s.offers.Add(1)
		return s.reply(req, dhcpv4.MessageTypeOffer, b, ip), nil

	case dhcpv4.MessageTypeRequest:
		want := req.RequestedIPAddress()
		if isZero(want) {
			want = req.ClientIPAddr
		}
		if isZero(want) {
			return s.nak(req, b, "no address requested"), nil
		}
		if !want.Equal(ip) {
			s.log.Info("dhcp: refusing an address not registered for this MAC", "mac", mac, "node", b.Num, "requested", want.String(), "registered", b.IP)
			return s.nak(req, b, fmt.Sprintf("%s is not the address of %s; it is %s", want, macName(mac, b), b.IP)), nil
		}
		s.acks.Add(1)
		reply := s.reply(req, dhcpv4.MessageTypeAck, b, ip)
		s.record(mac, b.IP, s.settings.Now().Add(s.leaseTime))
		s.log.Debug("dhcp: lease granted", "mac", mac, "node", b.Num, "ip", b.IP)
		return reply, nil

	case dhcpv4.MessageTypeInform:
		s.acks.Add(1)
		return s.reply(req, dhcpv4.MessageTypeAck, b, nil), nil

	case dhcpv4.MessageTypeRelease:
		if req.ClientIPAddr.Equal(ip) {
			s.record(mac, b.IP, s.settings.Now())
			s.log.Info("dhcp: lease released", "mac", mac, "node", b.Num, "ip", b.IP)
		}
		return s.ignore()

	case dhcpv4.MessageTypeDecline:
		s.log.Warn("dhcp: node declined its address: another host on the network uses it", "mac", mac, "node", b.Num, "ip", b.IP)
		s.record(mac, b.IP, s.settings.Now())
		return s.ignore()
	}
	return s.ignore()
}

func isZero(ip net.IP) bool { return ip == nil || ip.IsUnspecified() }

func macName(mac string, b Binding) string {
	if b.Hostname != "" {
		return fmt.Sprintf("%s (%s)", b.Hostname, mac)
	}
	return mac
}

// lookup asks the registry, logging each unknown MAC once.
func (s *Server) lookup(mac string) (Binding, bool, error) {
	b, ok := s.registry.LookupMAC(mac)
	s.mu.Lock()
	_, logged := s.unknown[mac]
	if ok && logged {
		delete(s.unknown, mac) // log again if it is ever unregistered
	}
	if !ok && !logged {
		if len(s.unknown) >= maxUnknownLogged {
			clear(s.unknown)
		}
		s.unknown[mac] = struct{}{}
	}
	s.mu.Unlock()
	if !ok {
		if !logged {
			s.log.Info("dhcp: ignoring unregistered MAC address (register it with ssi-addnode --hwaddr)", "mac", mac)
		}
		return Binding{}, false, nil
	}
	if !b.IP.Is4() || b.IP.IsUnspecified() {
		return Binding{}, false, fmt.Errorf("dhcp: node %d (%s) is registered with address %v, which is not a usable IPv4 address", b.Num, mac, b.IP)
	}
	return b, true, nil
}

func (s *Server) record(mac string, ip netip.Addr, expires time.Time) {
	if s.leases == nil {
		return
	}
	if err := s.leases.RecordLease(mac, ip, expires); err != nil {
		s.log.Warn("dhcp: could not record lease", "mac", mac, "ip", ip, "err", err)
	}
}

// base starts a reply to req.
func (s *Server) base(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	giaddr := req.GatewayIPAddr
	if giaddr.To4() == nil {
		giaddr = net.IPv4zero
	}
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: giaddr,
		ClientHWAddr:  req.ClientHWAddr,
		Options:       dhcpv4.Options{},
	}
	r.UpdateOption(dhcpv4.OptMessageType(mt))
	r.UpdateOption(dhcpv4.OptServerIdentifier(s.serverID))
	// RFC 6842 and RFC 3046: echo the client identifier and relay agent information.
	for _, c := range []dhcpv4.OptionCode{dhcpv4.OptionClientIdentifier, dhcpv4.OptionRelayAgentInformation} {
		if v := req.Options.Get(c); v != nil {
			r.UpdateOption(dhcpv4.OptGeneric(c, v))
		}
	}
	return r
}

// reply builds an OFFER or ACK; ip nil means an INFORM answer (no address,
// no lease).
func (s *Server) reply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, b Binding, ip net.IP) *dhcpv4.DHCPv4 {
	r := s.base(req, mt)
	if req.ClientIPAddr.To4() != nil && mt == dhcpv4.MessageTypeAck {
		r.ClientIPAddr = req.ClientIPAddr
	}
	r.UpdateOption(dhcpv4.OptSubnetMask(s.mask))
	if ip != nil {
		r.YourIPAddr = ip
		bcast := make(net.IP, 4)
		for i := range bcast {
			bcast[i] = ip[i] | ^s.mask[i]
		}
		r.UpdateOption(dhcpv4.OptBroadcastAddress(bcast))
		r.UpdateOption(dhcpv4.OptIPAddressLeaseTime(s.leaseTime))
		r.UpdateOption(dhcpv4.OptRenewTimeValue(s.leaseTime / 2))
		r.UpdateOption(dhcpv4.OptRebindingTimeValue(s.leaseTime / 8 * 7))
	}
	if len(s.routers) > 0 {
		r.UpdateOption(dhcpv4.OptRouter(s.routers...))
	}
	if len(s.dns) > 0 {
		r.UpdateOption(dhcpv4.OptDNS(s.dns...))
	}
	if b.Hostname != "" && len(b.Hostname) <= 255 {
		r.UpdateOption(dhcpv4.OptHostName(b.Hostname))
	}
	if s.settings.Domain != "" {
		r.UpdateOption(dhcpv4.OptDomainName(s.settings.Domain))
	}
	return r
}

func (s *Server) nak(req *dhcpv4.DHCPv4, b Binding, why string) *dhcpv4.DHCPv4 {
	s.naks.Add(1)
	r := s.base(req, dhcpv4.MessageTypeNak)
	r.UpdateOption(dhcpv4.OptMessage(why))
	if !isZero(req.GatewayIPAddr) {
		r.SetBroadcast() // RFC 2131 4.3.2: the relay must broadcast a NAK
	}
	return r
}

// slogLogger adapts server4's logger to slog at debug level.
type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("dhcp: " + fmt.Sprintf(format, v...))
	}
}

func (l slogLogger) PrintMessage(prefix string, m *dhcpv4.DHCPv4) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("dhcp: "+prefix, "message", m.Summary())
	}
}
