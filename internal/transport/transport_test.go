package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1/ssiv1connect"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/pki/pkitest"
)

// guard bounds every wait: a failure, never a synchronisation.
const guard = 10 * time.Second

var loopback = netip.MustParseAddr("127.0.0.1")

// newIdentity issues node num's identity from ca, through the files a node
// keeps, as 'ssi init' and 'ssi join' do.
func newIdentity(t *testing.T, ca *pki.CA, num uint32) *pki.Identity {
	return pkitest.Identity(t, ca, num, loopback)
}

func newCA(t *testing.T, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// node is one node's port: the mux, its HTTP server and the Raft side.
type node struct {
	ca      *pki.CA
	id      *pki.Identity
	mux     *Mux
	addr    string
	raft    raft.StreamLayer
	handled atomic.Int32 // requests that reached the protected handler
	logs    chan slog.Record
}

// logSink hands the mux's log records to a test.
type logSink chan slog.Record

func (l logSink) Enabled(context.Context, slog.Level) bool { return true }
func (l logSink) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l logSink) WithGroup(string) slog.Handler            { return l }
func (l logSink) Handle(_ context.Context, r slog.Record) error {
	select {
	case l <- r:
	default: // a test that does not read them
	}
	return nil
}

// waitLog waits for the mux to log msg with an error containing errPart.
func (n *node) waitLog(t *testing.T, msg, errPart string) {
	t.Helper()
	timeout := time.After(guard)
	for {
		select {
		case r := <-n.logs:
			var errText string
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "err" {
					errText = a.Value.String()
				}
				return true
			})
			if r.Message == msg && strings.Contains(errText, errPart) {
				return
			}
		case <-timeout:
			t.Fatalf("node %d did not log %q with an error about %q", n.id.Num, msg, errPart)
		}
	}
}

// joinPath stands for the Join procedure, the only one open without a
// certificate.
const joinPath = ssiv1connect.MembershipJoinProcedure

// startNode listens on loopback and serves, as the daemon does: the HTTP
// side behind RequireNodeCert with Join open, answering with the caller's
// node number ("none" without a certificate).
func startNode(t *testing.T, ca *pki.CA, num uint32) *node {
	t.Helper()
	n := &node{ca: ca, id: newIdentity(t, ca, num), logs: make(chan slog.Record, 64)}
	var err error
	if n.mux, err = Listen("127.0.0.1:0", n.id, slog.New(logSink(n.logs))); err != nil {
		t.Fatal(err)
	}
	n.addr = n.mux.Addr().String()
	n.raft = n.mux.RaftLayer(n.id)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != joinPath {
			n.handled.Add(1)
		}
		if num, ok := PeerNumFrom(r.Context()); ok {
			fmt.Fprintf(w, "%s from node %d over %s", r.URL.Path, num, r.Proto)
			return
		}
		fmt.Fprintf(w, "%s from none over %s", r.URL.Path, r.Proto)
	})
	srv := &http.Server{Handler: RequireNodeCert(h, joinPath), ReadHeaderTimeout: guard, HTTP2: HTTP2Config(),
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(n.mux.HTTPListener()) }()
	t.Cleanup(func() {
		_ = srv.Close()
		_ = n.mux.Close()
		<-served
	})
	return n
}

// acceptRaft returns the next connection the Raft side accepts.
func (n *node) acceptRaft(t *testing.T) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := n.raft.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

func get(t *testing.T, c *http.Client, url string) (int, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

func closeIdle(c *http.Client) { c.Transport.(*http.Transport).CloseIdleConnections() }

// One port, two protocols: a Raft stream through RaftLayer and an HTTP/2
// request through NewPeerClient each reach their own side.
func TestALPNSplitsRaftAndHTTP(t *testing.T) {
	ca := newCA(t, "ssi1")
	srv := startNode(t, ca, 1)
	peer := startNode(t, ca, 2)
	accepted := srv.acceptRaft(t)

	// Raft: node 2 dials node 1 with its stream layer.
	c, err := peer.raft.Dial(raft.ServerAddress(srv.addr), guard)
	if err != nil {
		t.Fatalf("Raft dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(guard))
	if _, err := io.WriteString(c, "append entries\n"); err != nil {
		t.Fatal(err)
	}
	var sc net.Conn
	select {
	case sc = <-accepted:
	case <-time.After(guard):
		t.Fatal("the Raft side did not get the Raft connection")
	}
	if sc == nil {
		t.Fatal("the Raft listener closed")
	}
	defer sc.Close()
	_ = sc.SetDeadline(time.Now().Add(guard))
	line, err := bufio.NewReader(sc).ReadString('\n')
	if err != nil || line != "append entries\n" {
		t.Fatalf("the Raft side read %q, %v", line, err)
	}
	st := sc.(*tls.Conn).ConnectionState()
	if st.NegotiatedProtocol != ProtoRaft || len(st.VerifiedChains) == 0 || st.PeerCertificates[0].Subject.CommonName != pki.NodeCommonName(2) {
		t.Errorf("Raft connection: protocol %q, client %v", st.NegotiatedProtocol, st.PeerCertificates[0].Subject)
	}
	if _, err := io.WriteString(sc, "ok\n"); err != nil {
		t.Fatal(err)
	}
	if reply, err := bufio.NewReader(c).ReadString('\n'); err != nil || reply != "ok\n" {
		t.Fatalf("the Raft client read %q, %v", reply, err)
	}

	// HTTP/2: node 2's peer client on the same port.
	client := NewPeerClient(peer.id.ClientTLS([]string{ProtoHTTP}))
	defer closeIdle(client)
	code, body, err := get(t, client, "https://"+srv.addr+ssiv1connect.MembershipHeartbeatProcedure)
	if err != nil || code != http.StatusOK {
		t.Fatalf("RPC: %d %q %v", code, body, err)
	}
	if want := ssiv1connect.MembershipHeartbeatProcedure + " from node 2 over HTTP/2.0"; body != want {
		t.Errorf("RPC answer %q, want %q", body, want)
	}
	if srv.handled.Load() != 1 {
		t.Errorf("the HTTP side handled %d requests, want 1", srv.handled.Load())
	}
}

// PeerNumFrom is the number in the client's certificate, not the server's,
// and nothing outside a request that had one.
func TestPeerNumFrom(t *testing.T) {
	ca := newCA(t, "ssi1")
	srv := startNode(t, ca, 1)
	for _, num := range []uint32{2, 7, 1024} {
		client := NewPeerClient(newIdentity(t, ca, num).ClientTLS([]string{ProtoHTTP}))
		code, body, err := get(t, client, "https://"+srv.addr+"/ssi.v1.Peer/Apply")
		closeIdle(client)
		if want := fmt.Sprintf("/ssi.v1.Peer/Apply from node %d over HTTP/2.0", num); err != nil || code != http.StatusOK || body != want {
			t.Errorf("node %d: %d %q %v, want %q", num, code, body, err, want)
		}
	}
	if n, ok := PeerNumFrom(context.Background()); ok {
		t.Errorf("PeerNumFrom of a bare context: %d", n)
	}
}

// A joining machine has only its token: the CA fingerprint, no certificate.
// It may call Join and nothing else, on either side of the port.
func TestClientWithoutCertificate(t *testing.T) {
	ca := newCA(t, "ssi1")
	srv := startNode(t, ca, 1)
	anon := NewPeerClient(pki.JoinTLS(ca.Fingerprint()))
	defer closeIdle(anon)

	code, body, err := get(t, anon, "https://"+srv.addr+joinPath)
	if err != nil || code != http.StatusOK || body != joinPath+" from none over HTTP/2.0" {
		t.Fatalf("Join without a certificate: %d %q %v", code, body, err)
	}
	for _, p := range []string{
		ssiv1connect.MembershipHeartbeatProcedure, ssiv1connect.ConsensusApplyProcedure, ssiv1connect.MembershipShutdownProcedure, ssiv1connect.ProcessExecProcedure,
		ssiv1connect.ReadIndexReadIndexProcedure,
		joinPath + "/", joinPath + "X", strings.ToLower(joinPath), "/", "/ssi.v1.Peer/Join/../Apply",
	} {
		code, body, err := get(t, anon, "https://"+srv.addr+p)
		if err != nil || code != http.StatusUnauthorized || !strings.Contains(body, "certificate is required") {
			t.Errorf("%s without a certificate: %d %q %v, want 401", p, code, body, err)
		}
	}
	if n := srv.handled.Load(); n != 0 {
		t.Errorf("%d requests without a certificate reached the handler", n)
	}

	// Raft without a certificate: the handshake completes (the port must
	// serve Join), then the mux closes the connection before any Raft data.
	for name, protos := range map[string][]string{"ssi-raft": {ProtoRaft}, "ssi-cfs": {ProtoCFS}, "ssi-exec": {ProtoExec}, "no ALPN": nil} {
		cfg := pki.JoinTLS(ca.Fingerprint())
		cfg.NextProtos = protos
		expectClosed(t, name, srv.addr, cfg)
	}
	// The Raft side still takes the first certified connection it is
	// offered: the refused ones never reached it.
	accepted := srv.acceptRaft(t)
	c, err := newIdentityLayer(t, ca, 3).Dial(raft.ServerAddress(srv.addr), guard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case sc := <-accepted:
		if sc == nil {
			t.Fatal("the Raft listener closed")
		}
		defer sc.Close()
		if certs := sc.(*tls.Conn).ConnectionState().PeerCertificates; len(certs) == 0 || certs[0].Subject.CommonName != pki.NodeCommonName(3) {
			t.Errorf("the Raft side accepted a connection from %d certificates first, want node 3's", len(certs))
		}
	case <-time.After(guard):
		t.Fatal("the Raft side did not get the certified connection")
	}
}

// newIdentityLayer is node num's Raft dialer (its mux is not used to listen).
func newIdentityLayer(t *testing.T, ca *pki.CA, num uint32) raft.StreamLayer {
	t.Helper()
	return startNode(t, ca, num).raft
}

// expectClosed dials with cfg and expects the server to close the
// connection without a TLS error and without sending anything.
func expectClosed(t *testing.T, name, addr string, cfg *tls.Config) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: guard}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("%s: handshake: %v", name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(guard))
	_, _ = io.WriteString(c, "append entries\n")
	n, err := c.Read(make([]byte, 64))
	if !errors.Is(err, io.EOF) {
		t.Errorf("%s: read %d bytes, %v; want the connection closed (EOF)", name, n, err)
	}
}

// A certificate from another cluster's CA fails the TLS handshake, for RPC
// and for Raft, whether the foreign CA has another name or the same one.
func TestCertificateFromAnotherCAIsRefused(t *testing.T) {
	ca := newCA(t, "ssi1")
	for name, other := range map[string]*pki.CA{"other name": newCA(t, "impostor"), "same name": newCA(t, "ssi1")} {
		t.Run(name, func(t *testing.T) {
			foreign := newIdentity(t, other, 2)
			clientTLS := func(srv *node, protos []string) *tls.Config {
				// Trust the server, present the foreign certificate
				// even if the server asks for another CA's.
				cfg := foreign.ClientTLS(protos)
				cfg.RootCAs = srv.id.Pool
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign.Cert, nil }
				return cfg
			}
			// A fresh server for every attempt, so that its log tells
			// about this attempt only.
			for _, protos := range [][]string{{ProtoRaft}, {ProtoHTTP}} {
				srv := startNode(t, ca, 1)
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: guard}, "tcp", srv.addr, clientTLS(srv, protos))
				if err == nil {
					// TLS 1.3: the client finishes first and hears the
					// server's verdict on its certificate with its first read.
					_ = c.SetDeadline(time.Now().Add(guard))
					_, err = c.Read(make([]byte, 1))
					c.Close()
				}
				if !isRemoteTLSAlert(err) {
					t.Errorf("%v with a foreign certificate: %v, want a TLS alert from the server", protos, err)
				}
				srv.waitLog(t, "TLS handshake failed", "certificate")
			}
			// RPC, including Join, which is open to clients without a
			// certificate but not to one with a bad certificate. The
			// client writes its request at once, so it may see the
			// connection reset rather than the alert: the server's log
			// says why it refused.
			for _, p := range []string{"/ssi.v1.Peer/Apply", joinPath} {
				srv := startNode(t, ca, 1)
				client := NewPeerClient(clientTLS(srv, []string{ProtoHTTP}))
				code, body, err := get(t, client, "https://"+srv.addr+p)
				closeIdle(client)
				if err == nil {
					t.Errorf("%s with a foreign certificate: %d %q, want a failed TLS handshake", p, code, body)
				}
				srv.waitLog(t, "TLS handshake failed", "certificate")
				if n := srv.handled.Load(); n != 0 {
					t.Errorf("%d requests with a foreign certificate reached the handler", n)
				}
			}
		})
	}
}

// isRemoteTLSAlert reports whether err is an alert the server sent.
func isRemoteTLSAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error" && strings.Contains(oe.Err.Error(), "tls: ")
}

// Closing the HTTP listener stops its Accept and leaves Raft running;
// closing the mux stops both.
func TestListenersClose(t *testing.T) {
	ca := newCA(t, "ssi1")
	id := newIdentity(t, ca, 1)
	mux, err := Listen("127.0.0.1:0", id, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	if _, err := Listen(mux.Addr().String(), id, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), mux.Addr().String()) {
		t.Errorf("a second Listen on %s: %v, want an error naming the address", mux.Addr(), err)
	}
	httpLn, raftLn := mux.HTTPListener(), mux.RaftLayer(id)
	if httpLn.Addr().String() != mux.Addr().String() || raftLn.Addr().String() != mux.Addr().String() {
		t.Errorf("listener addresses %v, %v; want %v", httpLn.Addr(), raftLn.Addr(), mux.Addr())
	}
	acceptErr := func(l net.Listener) <-chan error {
		ch := make(chan error, 1)
		go func() {
			c, err := l.Accept()
			if c != nil {
				c.Close()
			}
			ch <- err
		}()
		return ch
	}
	wait := func(ch <-chan error, what string) {
		t.Helper()
		select {
		case err := <-ch:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s: Accept returned %v, want net.ErrClosed", what, err)
			}
		case <-time.After(guard):
			t.Fatalf("%s: Accept did not return", what)
		}
	}
	httpDone := acceptErr(httpLn)
	_ = httpLn.Close()
	wait(httpDone, "HTTP listener closed")

	// Raft still works on the same mux.
	raftDone := make(chan net.Conn, 1)
	go func() { c, _ := raftLn.Accept(); raftDone <- c }()
	c, err := raftLn.Dial(raft.ServerAddress(mux.Addr().String()), guard)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case sc := <-raftDone:
		if sc == nil {
			t.Fatal("Raft Accept failed after the HTTP listener closed")
		}
		sc.Close()
	case <-time.After(guard):
		t.Fatal("Raft Accept did not return after the HTTP listener closed")
	}

	raftClosed := acceptErr(raftLn)
	if err := mux.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	wait(raftClosed, "mux closed")
	if _, err := net.DialTimeout("tcp", mux.Addr().String(), guard); err == nil {
		t.Errorf("the port still accepts connections after Close")
	}
}
