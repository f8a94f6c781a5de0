// Package memnet is an in-memory network for running several nodes' daemon
// logic in one test process: each node serves its RPC handler and its Raft
// streams on in-memory pipes, and the test can cut, drop or delay the
// traffic between any two nodes, in one direction or both. It works inside
// a testing/synctest bubble (pipes and timers are in-process), so timing
// logic runs on a clock the test controls.
//
// It owns only connections and link behaviour; it knows nothing of the
// services that run over it. It is for tests: nothing in the daemon uses it.
package memnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/peer"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// ErrCut is what a write or dial over a cut link returns.
var ErrCut = errors.New("memnet: link cut")

// Addr is node num's address on the network (also its Raft address).
func Addr(num uint32) string { return "mem-" + strconv.FormatUint(uint64(num), 10) }

// NumOf parses an address made by Addr (with or without a port).
func NumOf(addr string) (uint32, bool) {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		addr = h
	}
	v, ok := strings.CutPrefix(addr, "mem-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 32)
	return uint32(n), err == nil
}

// link is how traffic from one node to another behaves.
type link struct {
	cut   bool          // writes and dials fail, open connections close
	drop  bool          // writes vanish silently (a black hole)
	delay time.Duration // every write waits this long
}

type kind int

const (
	kindRPC kind = iota
	kindRaft
)

// Network connects nodes in memory.
type Network struct {
	mu      sync.Mutex
	links   map[[2]uint32]link
	servers map[uint32]*http.Server
	lns     map[[2]uint32]*listener // (node, kind)
	conns   map[*conn]struct{}
	clients map[uint32]*http.Client
	closed  bool
}

// New returns an empty network.
func New() *Network {
	return &Network{links: map[[2]uint32]link{}, servers: map[uint32]*http.Server{},
		lns: map[[2]uint32]*listener{}, conns: map[*conn]struct{}{}, clients: map[uint32]*http.Client{}}
}

// Serve serves node num's RPC handler. Requests carry the calling node's
// number as a verified certificate would (transport.PeerNumFrom).
func (n *Network) Serve(num uint32, h http.Handler) {
	ln := n.listener(num, kindRPC)
	srv := &http.Server{
		Handler: h,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if mc, ok := c.(*conn); ok {
				return transport.WithPeerNum(ctx, mc.peer)
			}
			return ctx
		},
		HTTP2: transport.HTTP2Config(),
	}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	n.mu.Lock()
	n.servers[num] = srv
	n.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// Stop stops node num: its server, its listeners and every connection to
// or from it, as if its process died.
func (n *Network) Stop(num uint32) {
	n.mu.Lock()
	srv := n.servers[num]
	delete(n.servers, num)
	var lns []*listener
	for k, l := range n.lns {
		if k[0] == num {
			lns = append(lns, l)
			delete(n.lns, k)
		}
	}
	var cs []*conn
	for c := range n.conns {
		if c.local == num || c.peer == num {
			cs = append(cs, c)
		}
	}
	cl := n.clients[num]
	delete(n.clients, num)
	n.mu.Unlock()
	for _, l := range lns {
		l.Close()
	}
	for _, c := range cs {
		c.Close()
	}
	if srv != nil {
		_ = srv.Close()
	}
	if cl != nil {
		cl.CloseIdleConnections()
	}
}

// Close stops every node.
func (n *Network) Close() {
	n.mu.Lock()
	n.closed = true
	var nums []uint32
	seen := map[uint32]bool{}
	for k := range n.lns {
		if !seen[k[0]] {
			seen[k[0]] = true
			nums = append(nums, k[0])
		}
	}
	for k := range n.servers {
		if !seen[k] {
			seen[k] = true
			nums = append(nums, k)
		}
	}
	n.mu.Unlock()
	for _, num := range nums {
		n.Stop(num)
	}
}

// Cut makes traffic between a and b fail in both directions (dials are
// refused, open connections close): a crashed link.
func (n *Network) Cut(a, b uint32) { n.CutOneWay(a, b); n.CutOneWay(b, a) }

// CutOneWay makes traffic from one node to another fail.
func (n *Network) CutOneWay(from, to uint32) {
	n.setLink(from, to, func(l *link) { l.cut = true })
	n.mu.Lock()
	var cs []*conn
	for c := range n.conns {
		if c.local == from && c.peer == to {
			cs = append(cs, c)
		}
	}
	n.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// Drop makes traffic from one node to another vanish without an error: a
// partition the sender does not notice except by silence.
func (n *Network) Drop(from, to uint32) { n.setLink(from, to, func(l *link) { l.drop = true }) }

// Delay makes every write from one node to another wait d.
func (n *Network) Delay(from, to uint32, d time.Duration) {
	n.setLink(from, to, func(l *link) { l.delay = d })
}

// Isolate cuts node num from every other node.
func (n *Network) Isolate(num uint32, others ...uint32) {
	for _, o := range others {
		if o != num {
			n.Cut(num, o)
		}
	}
}

// Heal restores every link to and from num (all links if num is 0).
func (n *Network) Heal(num uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k := range n.links {
		if num == 0 || k[0] == num || k[1] == num {
			delete(n.links, k)
		}
	}
}

func (n *Network) setLink(from, to uint32, f func(*link)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.links[[2]uint32{from, to}]
	f(&l)
	n.links[[2]uint32{from, to}] = l
}

func (n *Network) linkOf(from, to uint32) link {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.links[[2]uint32{from, to}]
}

func (n *Network) listener(num uint32, k kind) *listener {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := [2]uint32{num, uint32(k)}
	l, ok := n.lns[key]
	if !ok {
		l = &listener{addr: addr(Addr(num)), ch: make(chan net.Conn), done: make(chan struct{})}
		n.lns[key] = l
	}
	return l
}

func (n *Network) dial(ctx context.Context, from, to uint32, k kind) (net.Conn, error) {
	if n.linkOf(from, to).cut || n.linkOf(to, from).cut {
		return nil, fmt.Errorf("dial %s from node %d: %w", Addr(to), from, ErrCut)
	}
	n.mu.Lock()
	l, ok := n.lns[[2]uint32{to, uint32(k)}]
	closed := n.closed
	n.mu.Unlock()
	if !ok || closed {
		return nil, fmt.Errorf("dial %s from node %d: connection refused", Addr(to), from)
	}
	a, b := net.Pipe()
	ca := &conn{Conn: a, n: n, local: from, peer: to}
	cb := &conn{Conn: b, n: n, local: to, peer: from}
	n.mu.Lock()
	n.conns[ca], n.conns[cb] = struct{}{}, struct{}{}
	n.mu.Unlock()
	ca.other, cb.other = cb, ca
	select {
	case l.ch <- cb:
		return ca, nil
	case <-l.done:
	case <-ctx.Done():
	}
	ca.Close()
	return nil, fmt.Errorf("dial %s from node %d: connection refused", Addr(to), from)
}

// Net is node from's view of the network, for its outgoing RPC.
func (n *Network) Net(from uint32) peer.Net { return &nodeNet{n: n, from: from} }

type nodeNet struct {
	n    *Network
	from uint32
}

func (v *nodeNet) To(num uint32) (peer.Conn, error) {
	return peer.Conn{HTTP: v.n.client(v.from), URL: "http://" + Addr(num)}, nil
}

func (v *nodeNet) At(a string) (peer.Conn, error) {
	num, ok := NumOf(a)
	if !ok {
		return peer.Conn{}, fmt.Errorf("memnet: %q is not a memnet address", a)
	}
	return v.To(num)
}

func (n *Network) client(from uint32) *http.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.clients[from]; ok {
		return c
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
			to, ok := NumOf(a)
			if !ok {
				return nil, fmt.Errorf("memnet: %q is not a memnet address", a)
			}
			return n.dial(ctx, from, to, kindRPC)
		},
		HTTP2: &http.HTTP2Config{PingTimeout: 2 * time.Second, SendPingTimeout: 5 * time.Second,
			MaxReceiveBufferPerStream: transport.StreamWindow, MaxReceiveBufferPerConnection: transport.ConnWindow},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: tr}
	n.clients[from] = c
	return c
}

// RaftLayer is node num's Raft stream layer on the network.
func (n *Network) RaftLayer(num uint32) raft.StreamLayer {
	return &raftLayer{n: n, num: num, listener: n.listener(num, kindRaft)}
}

type raftLayer struct {
	n   *Network
	num uint32
	*listener
}

func (r *raftLayer) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	to, ok := NumOf(string(a))
	if !ok {
		return nil, fmt.Errorf("memnet: %q is not a memnet address", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return r.n.dial(ctx, r.num, to, kindRaft)
}

type addr string

func (a addr) Network() string { return "memnet" }
func (a addr) String() string  { return string(a) }

type listener struct {
	addr addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *listener) Addr() net.Addr { return l.addr }

// conn is one end of a pipe between two nodes; its writes obey the link
// from local to peer.
type conn struct {
	net.Conn
	n           *Network
	local, peer uint32
	other       *conn
	once        sync.Once
}

func (c *conn) Write(b []byte) (int, error) {
	l := c.n.linkOf(c.local, c.peer)
	if l.delay > 0 {
		time.Sleep(l.delay)
		l = c.n.linkOf(c.local, c.peer)
	}
	switch {
	case l.cut:
		c.Close()
		return 0, ErrCut
	case l.drop:
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// Close closes both ends of the pipe, as a reset would.
func (c *conn) Close() error {
	c.closeEnd()
	if c.other != nil {
		c.other.closeEnd()
	}
	return nil
}

func (c *conn) closeEnd() {
	c.once.Do(func() {
		c.n.mu.Lock()
		delete(c.n.conns, c)
		c.n.mu.Unlock()
		_ = c.Conn.Close()
	})
}

func (c *conn) LocalAddr() net.Addr  { return addr(Addr(c.local)) }
func (c *conn) RemoteAddr() net.Addr { return addr(Addr(c.peer)) }
