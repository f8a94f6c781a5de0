// Package peer is the seam through which a node calls other nodes: every
// node-to-node RPC goes through a Net, addressed by node number, so that
// daemon logic runs unchanged over the real mutually authenticated TLS
// network (TLS) or over an in-memory network in unit tests (memnet), where
// traffic to one peer can be cut, delayed or dropped.
//
// It owns the addressing of peers, the per-peer client cache and the
// forwarding identity (Origin). It must not know any service's meaning:
// which RPC goes where is the subsystems' business.
package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/transport"
)

// ErrUnknownNode means the network knows no address for a node number.
var ErrUnknownNode = errors.New("no address is known for that node")

// Conn is how to reach one node's RPC endpoint.
type Conn struct {
	HTTP connect.HTTPClient
	URL  string // base URL, e.g. https://192.168.64.142:7470
}

// Net reaches other nodes.
type Net interface {
	// To reaches node num.
	To(num uint32) (Conn, error)
	// At reaches a member known only by its address (the members named at
	// join, before this node has the node table).
	At(addr string) (Conn, error)
}

// TLS is the real network: HTTP/2 over mutual TLS to each node's cluster
// port. Resolve maps a node number to ip:port (from the node table, or
// Raft's configuration while the table is not there yet).
type TLS struct {
	HTTP    *http.Client
	Resolve func(num uint32) (addr string, ok bool)
	// Raw is the client TLS configuration of a connection of its own
	// with the given ALPN protocol (Dial); nil: Dial fails.
	Raw func(proto string) *tls.Config
}

// Dialer is a Net that also opens connections of their own, for a
// protocol that is not RPC (the cluster filesystem's frames). A Net
// without it (memnet) makes such a subsystem fall back to RPC streams.
type Dialer interface {
	Dial(ctx context.Context, num uint32, proto string) (net.Conn, error)
}

// Dial opens a mutually authenticated TLS connection to node num with
// ALPN protocol proto.
func (t *TLS) Dial(ctx context.Context, num uint32, proto string) (net.Conn, error) {
	if t.Raw == nil {
		return nil, errors.New("this network opens no connections of their own")
	}
	addr, ok := t.Resolve(num)
	if !ok {
		return nil, fmt.Errorf("node %d: %w", num, ErrUnknownNode)
	}
	// Under TLS, a transport.Corked: a protocol that batches its writes
	// sends many records in one write(2).
	d := &net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial node %d at %s: %w", num, addr, err)
	}
	cfg := t.Raw(proto).Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	c := tls.Client(transport.NewCorked(raw), cfg)
	hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("dial node %d at %s: %w", num, addr, err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got != proto {
		c.Close()
		return nil, fmt.Errorf("node %d at %s does not speak %s", num, addr, proto)
	}
	return c, nil
}

// To implements Net.
func (t *TLS) To(num uint32) (Conn, error) {
	addr, ok := t.Resolve(num)
	if !ok {
		return Conn{}, fmt.Errorf("node %d: %w", num, ErrUnknownNode)
	}
	return t.At(addr)
}

// At implements Net.
func (t *TLS) At(addr string) (Conn, error) { return Conn{HTTP: t.HTTP, URL: "https://" + addr}, nil }

// Clients caches one Connect client of type T per peer URL.
type Clients[T any] struct {
	net Net
	mk  func(connect.HTTPClient, string, ...connect.ClientOption) T

	mu sync.Mutex
	m  map[string]T
}

// NewClients makes a cache of clients built by mk (an ssiv1connect.NewXClient).
func NewClients[T any](n Net, mk func(connect.HTTPClient, string, ...connect.ClientOption) T) *Clients[T] {
	return &Clients[T]{net: n, mk: mk, m: map[string]T{}}
}

// To returns the client of node num.
func (c *Clients[T]) To(num uint32) (T, error) {
	conn, err := c.net.To(num)
	if err != nil {
		var zero T
		return zero, err
	}
	return c.get(conn), nil
}

// At returns the client of the member at addr.
func (c *Clients[T]) At(addr string) (T, error) {
	conn, err := c.net.At(addr)
	if err != nil {
		var zero T
		return zero, err
	}
	return c.get(conn), nil
}

func (c *Clients[T]) get(conn Conn) T {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.m[conn.URL]
	if !ok {
		cl = c.mk(conn.HTTP, conn.URL)
		c.m[conn.URL] = cl
	}
	return cl
}

// originHeader names the node a forwarded request speaks for. Only the
// forwarding path (internal/consensus) sets it.
const originHeader = "Ssi-Origin"

// SetOrigin marks h as a request forwarded on behalf of node num.
func SetOrigin(h http.Header, num uint32) { h.Set(originHeader, strconv.FormatUint(uint64(num), 10)) }

// Origin is the node a request speaks for and the node that delivered it:
// for a forwarded request the origin named by the forwarder, otherwise the
// sender of the verified certificate itself. ok is false for a request
// without a cluster certificate (Join).
func Origin(ctx context.Context, h http.Header) (origin, via uint32, forwarded, ok bool) {
	via, ok = transport.PeerNumFrom(ctx)
	if !ok {
		return 0, 0, false, false
	}
	v := h.Get(originHeader)
	if v == "" {
		return via, via, false, true
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, via, true, false
	}
	return uint32(n), via, true, true
}
