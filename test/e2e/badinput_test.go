package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/pki"
)

// Every bad input is refused with a clear message and the right exit code,
// and leaves the node table unchanged.
func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	c := StartCluster(t, 3)
	before := c.MustCLI(1, "ssi", "clustertab", "--json")
	// A registered node that has not joined yet, for duplicate checks.
	c.MustCLI(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:33:01", "--ipaddr", c.IP(30), "--nodename", "spare", "--nodenum", "7")
	before = c.MustCLI(1, "ssi", "clustertab", "--json")
	tokenOut := c.MustCLI(1, "ssi", "token", "7")
	goodToken := strings.TrimSpace(tokenOut)

	cases := []struct {
		name   string
		argv0  string
		args   []string
		code   int
		stderr string
	}{
		{"malformed MAC", "ssi-addnode", []string{"--hwaddr", "0a:00:00:zz:11:d9", "--ipaddr", c.IP(40)}, 2, "is not a MAC address"},
		{"short MAC", "ssi-addnode", []string{"--hwaddr", "0a:00:00", "--ipaddr", c.IP(40)}, 2, "is not a MAC address"},
		{"broadcast MAC", "ssi-addnode", []string{"--hwaddr", "ff:ff:ff:ff:ff:ff", "--ipaddr", c.IP(40)}, 2, "multicast/broadcast"},
		{"malformed IP", "ssi-addnode", []string{"--hwaddr", "0a:00:00:00:44:01", "--ipaddr", "10.0.0.300"}, 2, "is not an IP address"},
		{"missing IP", "ssi-addnode", []string{"--hwaddr", "0a:00:00:00:44:01"}, 2, "--ipaddr"},
		{"bad name", "ssi-addnode", []string{"--hwaddr", "0a:00:00:00:44:01", "--ipaddr", c.IP(40), "--nodename", "-bad"}, 2, "not a valid host name"},
		{"duplicate MAC", "ssi-addnode", []string{"--hwaddr", "0A:00:00:00:11:D2", "--ipaddr", c.IP(40)}, 1, "already registered as node 2"},
		{"duplicate IP", "ssi-addnode", []string{"--hwaddr", "0a:00:00:00:44:01", "--ipaddr", c.IP(3)}, 1, "already registered as node 3"},
		{"duplicate name", "ssi-addnode", []string{"--hwaddr", "0a:00:00:00:44:01", "--ipaddr", c.IP(40), "--nodename", "spare"}, 1, "already used by node 7"},
		{"duplicate number", "ssi-addnode", []string{"--hwaddr", "0a:00:00:00:44:01", "--ipaddr", c.IP(40), "--nodenum", "2"}, 1, "number 2 is already in use"},
		{"unknown node state", "clusternode_getstate", []string{"42"}, 1, "node 42 is not in the node table"},
		{"not a number", "clusternode_getstate", []string{"x"}, 2, "not a node number"},
		{"unknown node token", "ssi", []string{"token", "42"}, 1, "node 42 is not in the node table"},
		{"unknown node shutdown", "clusternode_shutdown", []string{"42"}, 1, "node 42 is not in the node table"},
		{"down node shutdown", "clusternode_shutdown", []string{"7"}, 1, "node 7 (spare) is NEVERUP"},
		{"remove live node", "ssi", []string{"rmnode", "2"}, 1, "shut it down first"},
		{"unknown flag", "cluster", []string{"--bogus"}, 2, "flag provided but not defined"},
		{"unknown command", "ssi", []string{"frobnicate"}, 2, "unknown command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.CLI(2, tc.argv0, tc.args...)
			if r.Code != tc.code || !strings.Contains(r.Stderr, tc.stderr) {
				t.Errorf("%s %v: want exit %d and %q, got %v", tc.argv0, tc.args, tc.code, tc.stderr, r)
			}
		})
	}
	// A file with one bad line registers nothing.
	f := filepath.Join(t.TempDir(), "nodes.txt")
	os.WriteFile(f, []byte(fmt.Sprintf("0a:00:00:00:55:01 %s a1\n0a:00:00:00:55:02 %s a2 # dup IP\n", c.IP(50), c.IP(50))), 0o644)
	if r := c.CLI(1, "ssi-addnode", "--from", f); r.Code != 2 || !strings.Contains(r.Stderr, "given on line 1 already") {
		t.Errorf("bulk add with a duplicate: %v", r)
	}

	// Joining with bad credentials changes nothing either.
	joinDir := filepath.Join(t.TempDir(), "j")
	other, _ := pki.NewToken(strings.Repeat("ab", 32))
	tok, _ := pki.ParseToken(goodToken)
	wrongSecret := pki.Token{Secret: strings.Repeat("0", 32), Fingerprint: tok.Fingerprint}
	joins := []struct {
		name, token, mac, want string
		code                   int
	}{
		{"malformed token", "SSI1-nope", "0a:00:00:00:33:01", "malformed join token", 2},
		// The two get the same answer: a machine without a certificate
		// learns nothing of which MACs are registered.
		{"wrong secret", wrongSecret.String(), "0a:00:00:00:33:01", "token is not valid for this MAC", 1},
		{"unknown MAC", goodToken, "0a:00:00:00:99:99", "token is not valid for this MAC", 1},
		{"CA mismatch", other.String(), "0a:00:00:00:33:01", "wrong cluster or a man in the middle", 255},
	}
	for _, j := range joins {
		t.Run("join "+j.name, func(t *testing.T) {
			r := run(t, nil, "", "ssi", "join", "--server", c.IP(1), "--token", j.token, "--hwaddr", j.mac, "--data-dir", joinDir)
			if r.Code != j.code || !strings.Contains(r.Stderr, j.want) {
				t.Errorf("want exit %d and %q, got %v", j.code, j.want, r)
			}
			if _, err := os.Stat(filepath.Join(joinDir, "node.json")); err == nil {
				t.Errorf("a refused join wrote a node identity")
			}
		})
	}
	// init twice on the same data dir is refused; nothing is overwritten.
	n1 := filepath.Join(c.Dir, "node1")
	meta, _ := os.ReadFile(filepath.Join(n1, "node.json"))
	r := run(t, nil, "", "ssi", "init", "--cluster-name", "again", "--hwaddr", "0a:00:00:00:00:01", "--ipaddr", "127.0.0.9", "--data-dir", n1)
	if r.Code == 0 || !strings.Contains(r.Stderr, "already holds an ssi node") {
		t.Errorf("second init: %v", r)
	}
	if meta2, _ := os.ReadFile(filepath.Join(n1, "node.json")); string(meta2) != string(meta) {
		t.Errorf("second init changed node.json")
	}

	after := c.MustCLI(3, "ssi", "clustertab", "--json")
	if after != before {
		t.Errorf("the node table changed:\nbefore %s\nafter %s", before, after)
	}
	// The good token still works after all that.
	r = run(t, nil, "", "ssi", "join", "--server", c.IP(2), "--token", goodToken, "--hwaddr", "0a:00:00:00:33:01", "--data-dir", joinDir)
	if r.Code != 0 {
		t.Fatalf("join with the right token: %v", r)
	}
	// And it is single use.
	r = run(t, nil, "", "ssi", "join", "--server", c.IP(2), "--token", goodToken, "--hwaddr", "0a:00:00:00:33:01", "--data-dir", joinDir+"x")
	if r.Code != 1 || !strings.Contains(r.Stderr, "not valid") {
		t.Errorf("token reuse: %v", r)
	}
}

// When the voters' majority is gone, a write fails promptly with exit 255
// and says why, instead of hanging.
func TestWriteWithoutQuorumFailsClearly(t *testing.T) {
	c := StartCluster(t, 3)
	c.Kill(1)
	c.Kill(2)
	start := time.Now()
	r := c.CLI(3, "ssi-addnode", "--hwaddr", "0a:00:00:00:66:01", "--ipaddr", c.IP(60))
	if r.Code != 255 || !strings.Contains(r.Stderr, "no cluster leader is reachable") {
		t.Errorf("write without quorum: %v", r)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the refused write took %v", d)
	}
	// Reads still work on the survivor, explicitly stale: a plain read
	// cannot be confirmed current without a leader (readindex_test.go).
	if r := c.CLI(3, "cluster", "-V", "--stale"); r.Code != 0 {
		t.Errorf("stale read without quorum: %v", r)
	}
}

// The node port rejects clients without a cluster certificate: RPC (other
// than Join) answers 401, Raft connections are closed, and a certificate
// from another CA fails the handshake.
func TestClientWithoutClusterCertificateIsRejected(t *testing.T) {
	c := StartCluster(t, 1)
	addr := net.JoinHostPort(c.IP(1), "7470")
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}, ForceAttemptHTTP2: true}}
	for _, proc := range []string{"Heartbeat", "Apply", "Shutdown"} {
		resp, err := anon.Post("https://"+addr+"/ssi.v1.Peer/"+proc, "application/json", strings.NewReader(`{"num":1}`))
		if err != nil {
			t.Fatalf("%s: %v", proc, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without a certificate: HTTP %d %s", proc, resp.StatusCode, body)
		}
	}
	// Raft without a certificate: the connection is closed before any data.
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"ssi-raft"}})
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, rerr := conn.Read(make([]byte, 1))
		if rerr == nil {
			t.Errorf("Raft port answered a client without a certificate")
		}
		conn.Close()
	}
	// A certificate from another cluster's CA.
	ca, _ := pki.NewCA("impostor")
	key, csr, _ := pki.NewKeyAndCSR()
	ipAddr := netipMust(c.IP(1))
	der, _ := ca.SignNode(csr, 1, ipAddr)
	fake := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	conn, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"ssi-raft"},
		// Present the foreign certificate even though the server asks for another CA.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return fake, nil }})
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a certificate from a foreign CA was not refused: %v", err)
	}
	// The table is intact.
	if got := strings.TrimSpace(c.MustCLI(1, "cluster")); got != "1" {
		t.Errorf("cluster = %q", got)
	}
}

// The control socket is 0660, and the daemon checks the caller's
// credentials: a user outside root and the ssi group can read (if the
// socket lets them in) but not change the table.
func TestNonRootCannotChangeTheTable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user")
	}
	c := StartCluster(t, 1)
	fi, err := os.Stat(c.Socket(1))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	asNobody := func(args ...string) result {
		cmd := exec.Command(ssiBin, args...)
		cmd.Env = []string{"SSI_SOCKET=" + c.Socket(1)}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run %v as nobody: %v", args, err)
		}
		return result{out.String(), errb.String(), code}
	}
	// Let nobody reach the binary and the socket's directory.
	for _, d := range []string{filepath.Dir(ssiBin), filepath.Dir(c.Socket(1)), c.Dir, filepath.Dir(c.Dir)} {
		os.Chmod(d, 0o755)
	}
	// Through the 0660 socket nobody cannot even connect.
	if r := asNobody("cluster"); r.Code != 255 || !strings.Contains(r.Stderr, "permission denied") {
		t.Errorf("nobody through a 0660 socket: %v", r)
	}
	// Open the socket up to show that the daemon itself checks credentials.
	os.Chmod(c.Socket(1), 0o666)
	if r := asNobody("cluster"); r.Code != 0 {
		t.Errorf("nobody reading: %v", r)
	}
	if r := asNobody("addnode", "--hwaddr", "0a:00:00:00:77:01", "--ipaddr", c.IP(70)); r.Code != 1 || !strings.Contains(r.Stderr, "uid 65534 may not add nodes") {
		t.Errorf("nobody adding a node: %v", r)
	}
	if r := asNobody("clusternode_shutdown"); r.Code != 1 || !strings.Contains(r.Stderr, "may not shut nodes down") {
		t.Errorf("nobody shutting down: %v", r)
	}
	if got := strings.TrimSpace(c.MustCLI(1, "cluster")); got != "1" {
		t.Errorf("cluster = %q", got)
	}
}
