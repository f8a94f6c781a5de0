package cvip

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ssi-cluster/ssi/internal/state"
)

// The user-space proxy: where the kernel cannot be programmed (no
// nftables NAT), or for a VIP created with --datapath userspace, the
// director accepts the VIP's connections itself and copies bytes to a
// backend and back. Go's io.Copy between two *net.TCPConn uses splice(2)
// through a pipe, so the bytes still do not pass through user-space
// buffers, but every connection costs the daemon two goroutines and every
// packet two socket crossings; the kernel datapath costs neither.

// Bounds: the VIP is reachable by anyone on the network, so the proxy
// limits what it holds.
const (
	maxProxyConns    = 4096 // concurrent TCP connections per VIP
	maxUDPSessions   = 4096 // UDP clients per VIP
	udpSessionIdle   = 30 * time.Second
	proxyDialTimeout = 3 * time.Second
)

// proxy serves one VIP in user space.
type proxy struct {
	key   string
	vip   netip.Addr
	port  uint16
	proto string
	sched string
	log   *slog.Logger

	mu    sync.Mutex
	eps   []endpoint
	slots []int
	next  uint64
	// active connections per backend (lc, and ssi cvip ls).
	active map[uint32]*atomic.Int64

	sem    chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closer io.Closer
}

// freebind lets the proxy listen on the VIP before the address is there
// (and keep listening across a moment without it).
func freebind(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}
	})
	return errors.Join(err, serr)
}

func startProxy(v *state.VIP, log *slog.Logger) (*proxy, error) {
	vip, err := netip.ParseAddr(v.Addr)
	if err != nil {
		return nil, err
	}
	if v.Port == 0 {
		return nil, fmt.Errorf("the user-space proxy serves one port; %s is a VIP of every port and needs the nftables datapath", v.Key())
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxy{key: v.Key(), vip: vip, port: v.Port, proto: v.Proto, sched: v.Sched, log: log, active: map[uint32]*atomic.Int64{},
		sem: make(chan struct{}, maxProxyConns), cancel: cancel}
	lc := net.ListenConfig{Control: freebind}
	addr := net.JoinHostPort(vip.String(), strconv.Itoa(int(v.Port)))
	if v.Proto == "udp" {
		pc, err := lc.ListenPacket(ctx, "udp4", addr)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("user-space proxy for %s: %w", p.key, err)
		}
		p.closer = pc
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.serveUDP(ctx, pc.(*net.UDPConn)) }()
		return p, nil
	}
	l, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("user-space proxy for %s: %w", p.key, err)
	}
	p.closer = l
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.serveTCP(ctx, l) }()
	return p, nil
}

func (p *proxy) stop() {
	p.cancel()
	p.closer.Close()
	p.wg.Wait()
}

// setEndpoints replaces the healthy backends.
func (p *proxy) setEndpoints(eps []endpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.eps, p.slots = eps, slots(eps)
	for _, e := range eps {
		if p.active[e.Num] == nil {
			p.active[e.Num] = new(atomic.Int64)
		}
	}
}

// setSched changes the scheduler from the next connection on.
func (p *proxy) setSched(sched string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sched = sched
}

// endpointNums are the backends the proxy has counted connections for.
func (p *proxy) endpointNums() []uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]uint32, 0, len(p.active))
	for n := range p.active {
		out = append(out, n)
	}
	return out
}

// activeConns is the number of connections to backend num now.
func (p *proxy) activeConns(num uint32) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a := p.active[num]; a != nil {
		return a.Load()
	}
	return 0
}

// pick chooses a backend for a new connection from client.
func (p *proxy) pick(client netip.Addr) (endpoint, *atomic.Int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.slots) == 0 {
		return endpoint{}, nil, false
	}
	var i int
	switch p.sched {
	case state.SchedSH:
		h := fnv.New32a()
		h.Write(client.AsSlice())
		i = p.slots[int(h.Sum32()%uint32(len(p.slots)))]
	case state.SchedLC:
		// Exact here: the proxy knows every connection it holds.
		i = 0
		for j := range p.eps {
			if p.active[p.eps[j].Num].Load() < p.active[p.eps[i].Num].Load() {
				i = j
			}
		}
	case state.SchedLoad:
		i = p.slots[rand.IntN(len(p.slots))]
	default:
		i = p.slots[p.next%uint64(len(p.slots))]
		p.next++
	}
	e := p.eps[i]
	return e, p.active[e.Num], true
}

func (e endpoint) addr(clientPort uint16) string {
	port := e.Port
	if port == 0 {
		port = clientPort
	}
	return net.JoinHostPort(e.Addr, strconv.Itoa(int(port)))
}

func (p *proxy) serveTCP(ctx context.Context, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			p.log.Warn("cvip: the user-space proxy cannot accept; retrying", "vip", p.key, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case p.sem <- struct{}{}:
		default:
			c.Close() // full: refuse rather than queue
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.sem }()
			p.relay(ctx, c.(*net.TCPConn))
		}()
	}
}

func (p *proxy) relay(ctx context.Context, c *net.TCPConn) {
	defer c.Close()
	ra := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	e, active, ok := p.pick(ra.Addr().Unmap())
	if !ok {
		_ = c.SetLinger(0) // no healthy backend: a reset, as the kernel gives
		return
	}
	d := net.Dialer{Timeout: proxyDialTimeout}
	b, err := d.DialContext(ctx, "tcp4", e.addr(p.port))
	if err != nil {
		_ = c.SetLinger(0)
		return
	}
	bc := b.(*net.TCPConn)
	defer bc.Close()
	active.Add(1)
	defer active.Add(-1)
	stop := context.AfterFunc(ctx, func() { c.Close(); bc.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(bc, c) // splice(2) on Linux
		_ = bc.CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(c, bc)
	_ = c.CloseWrite()
	<-done
}

// serveUDP relays datagrams: one connected socket to a backend per
// client address, dropped after udpSessionIdle without traffic.
func (p *proxy) serveUDP(ctx context.Context, pc *net.UDPConn) {
	type session struct {
		up   *net.UDPConn
		last atomic.Int64
	}
	var mu sync.Mutex
	sessions := map[netip.AddrPort]*session{}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range sessions {
			s.up.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		mu.Lock()
		s := sessions[from]
		if s == nil && len(sessions) < maxUDPSessions {
			e, _, ok := p.pick(from.Addr().Unmap())
			if ok {
				if up, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(e.addr(p.port)))); err == nil {
					s = &session{up: up}
					sessions[from] = s
					p.wg.Add(1)
					go func() {
						defer p.wg.Done()
						rb := make([]byte, 64<<10)
						for {
							_ = up.SetReadDeadline(time.Now().Add(udpSessionIdle))
							m, err := up.Read(rb)
							if err != nil {
								if time.Since(time.Unix(0, s.last.Load())) < udpSessionIdle && ctx.Err() == nil {
									continue
								}
								break
							}
							s.last.Store(time.Now().UnixNano())
							_, _ = pc.WriteToUDPAddrPort(rb[:m], from)
						}
						mu.Lock()
						delete(sessions, from)
						mu.Unlock()
						up.Close()
					}()
				}
			}
		}
		mu.Unlock()
		if s != nil {
			s.last.Store(time.Now().UnixNano())
			_, _ = s.up.Write(buf[:n])
		}
	}
}
