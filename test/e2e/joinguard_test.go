package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ssi-cluster/ssi/internal/api/ssiv1"
	"github.com/ssi-cluster/ssi/internal/devcluster"
	"github.com/ssi-cluster/ssi/internal/pki"
	"github.com/ssi-cluster/ssi/internal/transport"
)

// The only endpoint reachable without a cluster certificate is Join. These
// tests play a machine without one.

func anonClient() *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}, ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// zeros is an endless-looking body of n zero bytes, made as it is read.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	k := min(int64(len(p)), z.n)
	clear(p[:k])
	z.n -= k
	return int(k), nil
}

// An oversized Join is refused before its body is read: the daemon's
// memory does not grow with it (it once grew by ~900 MB for a 200 MB POST).
func TestOversizedJoinIsRefusedWithoutGrowingTheDaemon(t *testing.T) {
	c := StartCluster(t, 3)
	pid := c.PID(2)
	before := rssKiB(t, pid)
	cl := anonClient()
	defer cl.CloseIdleConnections()
	for i := 0; i < 2; i++ {
		req, _ := http.NewRequest("POST", "https://"+net.JoinHostPort(c.IP(2), "7470")+"/ssi.v1.Membership/Join", &zeros{200 << 20})
		req.Header.Set("Content-Type", "application/proto")
		resp, err := cl.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatalf("a 200 MB Join was answered 200 OK")
			}
		}
	}
	after := rssKiB(t, pid)
	if grew := after - before; grew > 32<<10 {
		t.Errorf("node 2's peak memory grew by %d KiB (from %d to %d) for two 200 MB Joins; want under 32 MiB", grew, before, after)
	}
	if r := c.CLI(2, "cluster"); r.Code != 0 {
		t.Errorf("node 2 after the oversized joins: %v", r)
	}
}

// A failed join is checked against the node table on the node that got it:
// nothing is proposed, so the log does not grow; failures are
// rate-limited per source and MAC.
func TestFailedJoinsAddNoLogEntriesAndAreRateLimited(t *testing.T) {
	c := StartCluster(t, 3)
	out := c.MustCLI(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:44:01", "--ipaddr", c.IP(40))
	f := strings.Fields(out)
	tok, err := pki.ParseToken(f[len(f)-1])
	if err != nil {
		t.Fatalf("token from %q: %v", out, err)
	}
	applied := func() uint64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Stale: a linearizable read commits a Raft barrier, which moves
		// the applied index itself.
		st, err := devcluster.Client(c.Dir, 1).Status(ctx, connect.NewRequest(&ssiv1.StatusRequest{Stale: true}))
		if err != nil {
			t.Fatal(err)
		}
		return st.Msg.AppliedIndex
	}
	name := strings.TrimSpace(c.MustCLI(1, "clustername"))
	start := applied()
	wrong := pki.Token{Secret: strings.Repeat("0", 32), Fingerprint: tok.Fingerprint}
	dir := filepath.Join(t.TempDir(), "j")
	var codes []int
	var last result
	for i := 0; i < 8; i++ {
		last = run(t, nil, "", "ssi", "join", "--server", c.IP(2), "--token", wrong.String(), "--hwaddr", "0a:00:00:00:44:01", "--data-dir", dir)
		codes = append(codes, last.Code)
		if strings.Contains(last.Stderr, name) {
			t.Errorf("a refused join named the cluster: %s", last.Stderr)
		}
	}
	for i, code := range codes {
		if code != 1 {
			t.Errorf("wrong-token join %d: exit %d, want 1", i+1, code)
		}
	}
	if !strings.Contains(last.Stderr, "too many failed joins") {
		t.Errorf("the 8th failed join in a row was not rate-limited: %v", last)
	}
	// Heartbeats write nothing; only transitions would. Give the leader a
	// moment to have proposed anything it was going to.
	time.Sleep(300 * time.Millisecond)
	if now := applied(); now != start {
		t.Errorf("8 failed joins moved the applied index from %d to %d: they reached the log", start, now)
	}
}

// Connections without a certificate are capped and live a bounded time,
// however little they send.
func TestIdleAnonymousConnectionsAreCappedAndClosed(t *testing.T) {
	c := StartCluster(t, 1)
	addr := net.JoinHostPort(c.IP(1), "7470")
	var conns []*tls.Conn
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	for i := 0; i < transport.MaxAnonymousConns+8; i++ {
		cn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		// The client preface: the magic and an empty SETTINGS frame.
		if _, err := cn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
			t.Fatalf("preface %d: %v", i, err)
		}
		conns = append(conns, cn)
	}
	// The daemon closes what is over the cap at once, the rest after the
	// lifetime: every connection must see EOF or a reset.
	deadline := time.Now().Add(transport.AnonymousConnLifetime + 10*time.Second)
	closedEarly := 0
	buf := make([]byte, 4096)
	for i, cn := range conns {
		cn.SetReadDeadline(deadline)
		for {
			_, err := cn.Read(buf)
			if err == nil {
				continue // the server's SETTINGS
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection %d still open %v after it was made", i, transport.AnonymousConnLifetime+10*time.Second)
			}
			if time.Until(deadline) > 5*time.Second+10*time.Second {
				closedEarly++
			}
			break
		}
	}
	if closedEarly < 8 {
		t.Errorf("%d connections over the cap of %d were closed at once, want at least 8", closedEarly, transport.MaxAnonymousConns)
	}
}
