package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// Serve listens on UDP port Settings.Port (default 67) on
// Settings.Interface and answers requests until ctx is cancelled, then
// returns nil once in-flight packets are done. Binding to an interface and
// to port 67 needs root (or CAP_NET_RAW and CAP_NET_BIND_SERVICE).
func (s *Server) Serve(ctx context.Context) error {
	if s.settings.Interface == "" {
		return fmt.Errorf("%w: no interface: DHCP replies are broadcast, so the server must be bound to the cluster network's interface", ErrInvalidSettings)
	}
	port := s.settings.Port
	if port == 0 {
		port = dhcpv4.ServerPort
	}
	conn, err := server4.NewIPv4UDPConn(s.settings.Interface, &net.UDPAddr{Port: port})
	if err != nil {
		return fmt.Errorf("dhcp: listening on %s port %d (needs root, and the interface must exist and be up): %w", s.settings.Interface, port, err)
	}
	return s.ServeConn(ctx, conn)
}

// ServeConn answers requests arriving on conn (which it closes) until ctx
// is cancelled. Replies go where RFC 2131 says: to the relay (giaddr), to
// a renewing client's address (ciaddr), to the sender if it has an
// address, and otherwise broadcast; broadcasts need Settings.Interface,
// and conn should then be bound to that interface (server4.NewIPv4UDPConn
// does so). On a loopback conn replies only ever go to loopback addresses.
func (s *Server) ServeConn(ctx context.Context, conn net.PacketConn) error {
	loopbackOnly := false
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok && ua.IP.IsLoopback() {
		loopbackOnly = true
	}
	var (
		mu       sync.Mutex
		stopping bool
		inflight sync.WaitGroup
	)
	handler := func(c net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
		mu.Lock()
		if stopping {
			mu.Unlock()
			return
		}
		inflight.Add(1)
		mu.Unlock()
		defer inflight.Done()

		reply, err := s.Handle(req)
		if err != nil {
			s.log.Error("dhcp: cannot answer", "mac", req.ClientHWAddr.String(), "err", err)
			return
		}
		if reply == nil {
			return
		}
		dst := s.destination(req, reply, peer)
		if dst == nil {
			s.log.Warn("dhcp: no interface to broadcast the reply on; set the DHCP interface", "mac", req.ClientHWAddr.String(), "type", reply.MessageType())
			return
		}
		if loopbackOnly && !dst.IP.IsLoopback() {
			s.log.Warn("dhcp: not replying from a loopback socket to a non-loopback address", "dst", dst.String())
			return
		}
		if _, err := c.WriteTo(reply.ToBytes(), dst); err != nil && ctx.Err() == nil {
			s.log.Warn("dhcp: sending reply", "dst", dst.String(), "type", reply.MessageType(), "err", err)
		}
	}
	srv, err := server4.NewServer("", nil, handler, server4.WithConn(conn), server4.WithLogger(slogLogger{s.log}))
	if err != nil {
		conn.Close()
		return fmt.Errorf("dhcp: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	s.log.Info("dhcp: serving", "addr", conn.LocalAddr().String(), "interface", s.settings.Interface, "server_ip", s.settings.ServerIP)
	err = srv.Serve()

	mu.Lock()
	stopping = true
	mu.Unlock()
	inflight.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("dhcp: socket closed: %w", err)
	}
	return fmt.Errorf("dhcp: %w", err)
}

// destination picks the reply's address; nil means it would need a
// broadcast and there is no interface to send it on.
func (s *Server) destination(req, reply *dhcpv4.DHCPv4, peer net.Addr) *net.UDPAddr {
	if !isZero(req.GatewayIPAddr) {
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: dhcpv4.ServerPort}
	}
	up, _ := peer.(*net.UDPAddr)
	peerUnicast := up != nil && !isZero(up.IP) && !up.IP.Equal(net.IPv4bcast)
	clientPort := dhcpv4.ClientPort
	if up != nil && up.Port != 0 {
		clientPort = up.Port
	}
	broadcast := func() *net.UDPAddr {
		if s.settings.Interface == "" {
			if peerUnicast {
				return up
			}
			return nil
		}
		return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
	}
	if reply.MessageType() == dhcpv4.MessageTypeNak {
		return broadcast() // RFC 2131 4.1: NAKs are broadcast
	}
	if !isZero(req.ClientIPAddr) {
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: clientPort}
	}
	if peerUnicast {
		return up
	}
	return broadcast()
}
