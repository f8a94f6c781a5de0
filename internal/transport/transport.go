// Package transport owns how bytes move between nodes and between the CLI
// and its daemon. A node has one TCP port, always TLS 1.3 with the cluster's
// certificates; ALPN splits it between Raft's stream layer ("ssi-raft",
// client certificate required), HTTP/2 RPC ("h2", client certificate
// required for every procedure but Join) and the framed protocols of the
// cluster filesystem ("ssi-cfs") and the exec streams ("ssi-exec/1"), both
// members only. The CLI reaches its daemon over a
// unix socket whose peer credentials identify the caller. It holds no
// cluster logic.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/pki"
)

// ALPN protocol names.
const (
	ProtoRaft = "ssi-raft"
	ProtoHTTP = "h2"
	// ProtoCFS is the cluster filesystem's own framed protocol
	// (internal/cfs): members only, like Raft.
	ProtoCFS = "ssi-cfs"
	// ProtoExec is the exec stream's own framed protocol between daemons
	// (internal/procspace): members only, like Raft. A node of an older
	// release does not offer it, and the stream then goes over RPC.
	ProtoExec = "ssi-exec/1"
)

// Mux accepts TLS connections on the node's port and hands each to Raft or
// to the HTTP server by negotiated protocol.
type Mux struct {
	ln       net.Listener
	raftConn chan net.Conn
	cfsConn  chan net.Conn
	execConn chan net.Conn
	httpConn chan net.Conn
	anonConn chan net.Conn // connections without a certificate, once AnonymousListener was called
	anonOn   atomic.Bool
	anonOpen atomic.Int32
	closed   chan struct{}
	once     sync.Once
	log      *slog.Logger
	wg       sync.WaitGroup
}

// Listen opens addr with the node's identity.
func Listen(addr string, id *pki.Identity, log *slog.Logger) (*Mux, error) {
	ln, err := net.Listen("tcp", addr)
	// A predecessor that was killed may still be closing its files (the
	// kernel ends its threads one by one): give it a few seconds.
	for deadline := time.Now().Add(5 * time.Second); errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	m := &Mux{
		ln:       tls.NewListener(corkedListener{ln}, id.ServerTLS([]string{ProtoHTTP, ProtoRaft, ProtoCFS, ProtoExec})),
		raftConn: make(chan net.Conn),
		cfsConn:  make(chan net.Conn),
		execConn: make(chan net.Conn),
		httpConn: make(chan net.Conn),
		anonConn: make(chan net.Conn),
		closed:   make(chan struct{}),
		log:      log,
	}
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

func (m *Mux) acceptLoop() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.log.Warn("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go m.route(c.(*tls.Conn))
	}
}

func (m *Mux) route(c *tls.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		m.log.Debug("TLS handshake failed", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	st := c.ConnectionState()
	var ch chan net.Conn
	switch st.NegotiatedProtocol {
	case ProtoRaft:
		if len(st.VerifiedChains) == 0 {
			m.log.Warn("refused Raft connection without a cluster certificate", "remote", c.RemoteAddr())
			c.Close()
			return
		}
		ch = m.raftConn
	case ProtoCFS, ProtoExec:
		// The cluster filesystem's sessions and the exec streams.
		if len(st.VerifiedChains) == 0 {
			m.log.Warn("refused a connection without a cluster certificate", "remote", c.RemoteAddr(), "alpn", st.NegotiatedProtocol)
			c.Close()
			return
		}
		ch = m.cfsConn
		if st.NegotiatedProtocol == ProtoExec {
			ch = m.execConn
		}
	case ProtoHTTP:
		ch = m.httpConn
		if len(st.VerifiedChains) == 0 && m.anonOn.Load() {
			if m.anonOpen.Add(1) > MaxAnonymousConns {
				m.anonOpen.Add(-1)
				m.log.Warn("refused a connection without a cluster certificate: too many open", "remote", c.RemoteAddr(), "max", MaxAnonymousConns)
				c.Close()
				return
			}
			// However it behaves, a machine without a certificate holds a
			// connection for AnonymousConnLifetime at most.
			_ = c.SetDeadline(time.Now().Add(AnonymousConnLifetime))
			select {
			case m.anonConn <- c:
			case <-m.closed:
				m.anonOpen.Add(-1)
				c.Close()
			}
			return
		}
	default:
		m.log.Debug("refused connection with unknown protocol", "remote", c.RemoteAddr(), "alpn", st.NegotiatedProtocol)
		c.Close()
		return
	}
	select {
	case ch <- c:
	case <-m.closed:
		c.Close()
	}
}

// Limits on connections without a cluster certificate (machines joining).
const (
	MaxAnonymousConns     = 32
	AnonymousConnLifetime = 30 * time.Second
)

// AnonymousListener returns the connections of clients without a cluster
// certificate, which from then on no longer come through HTTPListener: at
// most MaxAnonymousConns open at once, each closed after
// AnonymousConnLifetime whatever it does. Serve them with a server of
// their own, with small limits (only Join is allowed without a
// certificate), whose ConnState is AnonymousConnState so that closed
// connections are counted out. Call it before serving.
func (m *Mux) AnonymousListener() net.Listener {
	m.anonOn.Store(true)
	return newChanListener(m, m.anonConn)
}

// AnonymousConnState is the http.Server.ConnState of the server of
// AnonymousListener's connections.
func (m *Mux) AnonymousConnState(_ net.Conn, s http.ConnState) {
	if s == http.StateClosed || s == http.StateHijacked {
		m.anonOpen.Add(-1)
	}
}

// Addr is the listening address.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// Close stops accepting.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		close(m.closed)
		err = m.ln.Close()
	})
	m.wg.Wait()
	return err
}

// CFSListener hands out the cluster filesystem's connections (ProtoCFS),
// each from a member with a verified certificate (PeerNumOf names it).
func (m *Mux) CFSListener() net.Listener { return newChanListener(m, m.cfsConn) }

// ExecListener hands out the exec streams' connections (ProtoExec), each
// from a member with a verified certificate (PeerNumOf names it).
func (m *Mux) ExecListener() net.Listener { return newChanListener(m, m.execConn) }

// CorkedOf is the Corked under a TLS connection of the node's port or of
// peer.TLS.Dial, if it has one.
func CorkedOf(c net.Conn) (*Corked, bool) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, false
	}
	k, ok := tc.NetConn().(*Corked)
	return k, ok
}

// PeerNumOf is the node number of a connection's verified client
// certificate.
func PeerNumOf(c net.Conn) (uint32, bool) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return 0, false
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return 0, false
	}
	return pki.NodeNum(st.PeerCertificates[0])
}

// HTTPListener is the listener the node's HTTP server serves.
func (m *Mux) HTTPListener() net.Listener { return newChanListener(m, m.httpConn) }

// chanListener hands out the connections the mux routed to it. Closing it
// stops its Accept without closing the mux.
type chanListener struct {
	m      *Mux
	ch     chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newChanListener(m *Mux, ch chan net.Conn) *chanListener {
	return &chanListener{m: m, ch: ch, done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.m.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.m.Addr() }

// RaftLayer returns a raft.StreamLayer over the mux, dialing peers with the
// node's identity.
func (m *Mux) RaftLayer(id *pki.Identity) raft.StreamLayer {
	return &raftLayer{chanListener: newChanListener(m, m.raftConn), tls: id.ClientTLS([]string{ProtoRaft})}
}

type raftLayer struct {
	*chanListener
	tls *tls.Config
}

func (r *raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: r.tls}
	return d.Dial("tcp", string(addr))
}

// RequireNodeCert wraps an HTTP handler so that every request must carry a
// verified cluster certificate, except the paths in open (Join). The
// certificate's node number is put in the request context (PeerNumFrom).
func RequireNodeCert(h http.Handler, open ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if num, ok := peerNum(r); ok {
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, num)))
			return
		}
		for _, p := range open {
			if r.URL.Path == p {
				h.ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, "a cluster node certificate is required", http.StatusUnauthorized)
	})
}

type peerKey struct{}

// PeerNumFrom returns the node number of the request's verified client
// certificate, if it had one.
func PeerNumFrom(ctx context.Context) (uint32, bool) {
	n, ok := ctx.Value(peerKey{}).(uint32)
	return n, ok
}

// WithPeerNum returns ctx marked as a request from node num, as
// RequireNodeCert does for a verified certificate. In-memory test networks
// (internal/peer/memnet) use it; nothing on a real port does.
func WithPeerNum(ctx context.Context, num uint32) context.Context {
	return context.WithValue(ctx, peerKey{}, num)
}

func peerNum(r *http.Request) (uint32, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return 0, false
	}
	return pki.NodeNum(r.TLS.VerifiedChains[0][0])
}

// HTTP/2 flow-control windows: large enough that a process's output
// stream is not throttled by round trips on a fast link.
const (
	StreamWindow = 4 << 20
	ConnWindow   = 16 << 20
)

// HTTP2Config is the server-side HTTP/2 configuration of every ssi server.
func HTTP2Config() *http.HTTP2Config {
	return &http.HTTP2Config{MaxReceiveBufferPerStream: StreamWindow, MaxReceiveBufferPerConnection: ConnWindow}
}

// NewPeerClient returns an HTTP/2 client for node-to-node RPC with the
// node's identity. Connections are pooled per address.
func NewPeerClient(cfg *tls.Config) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout: 3 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	if h2 := tr.HTTP2; h2 == nil {
		tr.HTTP2 = &http.HTTP2Config{}
	}
	// Notice a dead peer within a few seconds on idle connections.
	tr.HTTP2.PingTimeout = 2 * time.Second
	tr.HTTP2.SendPingTimeout = 5 * time.Second
	tr.HTTP2.MaxReceiveBufferPerStream = StreamWindow
	tr.HTTP2.MaxReceiveBufferPerConnection = ConnWindow
	return &http.Client{Transport: tr}
}
