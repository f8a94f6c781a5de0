package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cvipLs mirrors ssi cvip ls --json.
type cvipLs struct {
	Key       string `json:"key"`
	Director  uint32 `json:"director"`
	Datapath  string `json:"datapath"`
	Interface string `json:"interface"`
	Holding   bool   `json:"holding"`
	Detail    string `json:"detail"`
	Backends  []struct {
		Node    uint32 `json:"node"`
		Healthy bool   `json:"healthy"`
		Reason  string `json:"reason"`
		Active  int64  `json:"active"`
	} `json:"backends"`
}

// cvipEnv is an --isolate cluster with the test backend built and a
// client namespace of its own on the cluster's bridge.
type cvipEnv struct {
	*Cluster
	prefix  string
	subnet  netip.Prefix
	client  string // the client's network namespace
	backend string // the cvipbackend binary
}

func startCvip(t *testing.T, n int, env ...string) *cvipEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the cluster virtual IP test runs an --isolate cluster: needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("--isolate needs iproute2")
	}
	e := &cvipEnv{backend: filepath.Join(t.TempDir(), "cvipbackend")}
	if out, err := exec.Command("go", "build", "-o", e.backend, "../cvipbackend").CombinedOutput(); err != nil {
		t.Fatalf("build the test backend: %v\n%s", err, out)
	}
	e.Cluster = StartClusterEnv(t, n, env, "--isolate")
	e.prefix = isolatePrefix(t, e.Dir)
	e.subnet = isolateSubnet(t, e.Dir)
	// The client: a namespace on the bridge, like any machine of the
	// network. Its name has the cluster's prefix, so ssi down removes it
	// too; the cleanup removes it first (registered after ssi down's, it
	// runs before it).
	e.client = e.prefix + "-cl"
	clientNamespace(t, e.prefix, e.client, "vc", netip.PrefixFrom(e.addr(250), e.subnet.Bits()))
	return e
}

// addr is host number k of the cluster's subnet.
func (e *cvipEnv) addr(k int) netip.Addr {
	a := e.subnet.Addr().As4()
	a[2], a[3] = byte(k>>8), byte(k)
	return netip.AddrFrom4(a)
}

// serve starts the backend on node k as a detached cluster job.
func (e *cvipEnv) serve(k int) string {
	e.t.Helper()
	return strings.TrimSpace(e.MustCLI(1, "ssi", "run", "-d", "-p", "-n", fmt.Sprint(k), e.backend, "--listen", ":8080", "--name", fmt.Sprintf("node%d", k)))
}

// get makes n requests from the client namespace, each on a new
// connection, and counts the answers by node ("error" for failures).
func (e *cvipEnv) get(url string, n int) map[string]int {
	e.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.client, e.backend, "get", url, fmt.Sprint(n)).Output()
	if err != nil {
		e.t.Fatalf("client: %v", err)
	}
	m := map[string]int{}
	if err := json.Unmarshal(out, &m); err != nil {
		e.t.Fatalf("client output %q: %v", out, err)
	}
	return m
}

// held is a client holding connections open (cvipbackend hold).
type held struct {
	t     *testing.T
	in    io.WriteCloser
	out   *bufio.Scanner
	asked bool // the first round needs no asking
}

// hold opens n connections to addr from the client namespace (local ports
// firstPort, firstPort+1, ...) and sends a request on each; round sends
// one more on each and returns the answers.
func (e *cvipEnv) hold(addr string, n, firstPort int) *held {
	e.t.Helper()
	in, out := startPiped(e.t, exec.Command("ip", "netns", "exec", e.client, e.backend, "hold", addr, fmt.Sprint(n), fmt.Sprint(firstPort)))
	return &held{t: e.t, in: in, out: out}
}

func (h *held) round() []string {
	h.t.Helper()
	if h.asked {
		_, _ = fmt.Fprintln(h.in)
	}
	h.asked = true
	if !h.out.Scan() {
		h.t.Fatalf("the holding client ended: %v", h.out.Err())
	}
	var got []string
	if err := json.Unmarshal(h.out.Bytes(), &got); err != nil {
		h.t.Fatalf("holding client: %q: %v", h.out.Text(), err)
	}
	return got
}

func (e *cvipEnv) ls(k int) []cvipLs {
	e.t.Helper()
	r := e.CLI(k, "ssi", "cvip", "ls", "--json")
	if r.Code != 0 {
		e.t.Fatalf("node %d: ssi cvip ls: %v", k, r)
	}
	var out []cvipLs
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		e.t.Fatalf("ssi cvip ls --json: %v\n%s", err, r.Stdout)
	}
	return out
}

// ready waits until node k sees vip directed on datapath dp with the
// given backends healthy, and returns its director.
func (e *cvipEnv) ready(k int, key, dp string, healthy ...uint32) uint32 {
	e.t.Helper()
	var dir uint32
	Eventually(e.t, 15*time.Second, func() string {
		for _, v := range e.ls(k) {
			if v.Key != key {
				continue
			}
			if v.Director == 0 || !v.Holding || v.Datapath != dp {
				return fmt.Sprintf("%s: director %d holding %v datapath %q (%s)", key, v.Director, v.Holding, v.Datapath, v.Detail)
			}
			up := map[uint32]bool{}
			for _, b := range v.Backends {
				up[b.Node] = b.Healthy
			}
			for _, h := range healthy {
				if !up[h] {
					return fmt.Sprintf("%s: backend %d not healthy yet: %+v", key, h, v.Backends)
				}
			}
			dir = v.Director
			return ""
		}
		return key + " is not listed"
	})
	return dir
}

// TestCvip: a VIP on an --isolate cluster spreads a client's requests over
// the HTTP servers of nodes 2 and 3; a stopped server leaves the set
// within the detection time and comes back; when the director's node dies
// another takes the address and the client is served again; bad input is
// refused and changes nothing.
func TestCvip(t *testing.T) {
	e := startCvip(t, 3)
	vip := e.addr(200).String()
	key := vip + ":80/tcp"
	url := "http://" + vip + "/"

	// Bad input: refused, exit 1 or 2, nothing changed.
	for _, bad := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{e.addr(2).String() + ":80", "--nodes", "2,3"}, 1, "node 2's own address"},
		{[]string{vip + ":80", "--nodes", "2,9"}, 1, "node 9"},
		{[]string{vip + ":80", "--nodes", "2:5", "--sched", "rr"}, 2, "--sched wrr"},
		{[]string{"not-an-ip:80"}, 2, "not VIP or VIP:PORT"},
	} {
		r := e.CLI(1, "ssi", append([]string{"cvip", "add"}, bad.args...)...)
		if r.Code != bad.code || !strings.Contains(r.Stderr, bad.says) {
			t.Errorf("ssi cvip add %v: want exit %d saying %q, got %v", bad.args, bad.code, bad.says, r)
		}
	}
	if got := e.ls(2); len(got) != 0 {
		t.Fatalf("refused adds left VIPs: %+v", got)
	}

	e.serve(2)
	cpid3 := e.serve(3)
	e.MustCLI(1, "ssi", "cvip", "add", vip+":80", "--nodes", "2,3", "--target-port", "8080", "--check", "/healthz")
	if r := e.CLI(3, "ssi", "cvip", "add", vip, "--nodes", "2"); r.Code != 1 || !strings.Contains(r.Stderr, "overlaps") {
		t.Errorf("an overlapping VIP of every port: %v", r)
	}
	dir := e.ready(2, key, "nftables", 2, 3)
	t.Logf("node %d directs %s", dir, key)

	// Spread: round robin over both.
	got := e.get(url, 40)
	if got["node2"] < 15 || got["node3"] < 15 || got["error"] != 0 {
		t.Fatalf("40 requests through the VIP: %v, want both nodes served and no error", got)
	}

	// A stopped server leaves the set within the detection time.
	e.MustCLI(1, "ssi", "kill", "-9", cpid3)
	stopped := time.Now()
	var moved time.Duration
	Eventually(t, 10*time.Second, func() string {
		if got := e.get(url, 10); got["node2"] != 10 {
			return fmt.Sprintf("after stopping node 3's server: %v", got)
		}
		moved = time.Since(stopped)
		return ""
	})
	t.Logf("all requests on node 2 %v after node 3's server stopped", moved.Round(10*time.Millisecond))
	if moved > 4*time.Second {
		t.Errorf("node 3's server left the set after %v, more than the detection time (about 1.3 s) allows", moved)
	}
	if got := e.get(url, 20); got["node2"] != 20 {
		t.Errorf("with node 3's server stopped: %v, want every request on node 2", got)
	}
	// It comes back when healthy again.
	e.serve(3)
	e.ready(2, key, "nftables", 2, 3)
	if got := e.get(url, 20); got["node3"] == 0 || got["error"] != 0 {
		t.Errorf("node 3's server is back but gets nothing: %v", got)
	}

	// ssi cvip set changes the backends in place: the director keeps the
	// address (and is not re-elected).
	e.MustCLI(2, "ssi", "cvip", "set", vip+":80", "--nodes", "3")
	Eventually(t, 5*time.Second, func() string {
		if got := e.get(url, 10); got["node3"] != 10 {
			return fmt.Sprintf("after ssi cvip set --nodes 3: %v", got)
		}
		return ""
	})
	e.MustCLI(2, "ssi", "cvip", "set", vip+":80", "--nodes", "2,3")
	if d := e.ready(2, key, "nftables", 2, 3); d != dir {
		t.Errorf("ssi cvip set moved the VIP from node %d to node %d", dir, d)
	}
	if got := e.get(url, 20); got["node2"] == 0 || got["node3"] == 0 || got["error"] != 0 {
		t.Errorf("after ssi cvip set --nodes 2,3: %v", got)
	}
	if r := e.CLI(2, "ssi", "cvip", "set", vip+":80", "--nodes", "2,9"); r.Code != 1 || !strings.Contains(r.Stderr, "node 9") {
		t.Errorf("ssi cvip set with an unknown node: %v", r)
	}

	// The user-space proxy, for the same backends.
	ukey := vip + ":81/tcp"
	e.MustCLI(1, "ssi", "cvip", "add", vip+":81", "--nodes", "2,3", "--target-port", "8080", "--datapath", "userspace")
	e.ready(2, ukey, "userspace", 2, 3)
	if got := e.get("http://"+vip+":81/", 20); got["node2"] < 5 || got["node3"] < 5 || got["error"] != 0 {
		t.Errorf("through the user-space proxy: %v", got)
	}

	// Open connections, to see which survive the failover: through a
	// source-hash VIP (sh), and the round-robin one.
	// Two sh VIPs with the backends in opposite orders: the client's hash
	// lands on node 2 through one and node 3 through the other, so one set
	// of connections is on the node that will direct next (node 2: the
	// lowest UP), delivered there locally, and one is forwarded.
	e.MustCLI(1, "ssi", "cvip", "add", vip+":82", "--nodes", "2,3", "--target-port", "8080", "--sched", "sh")
	e.MustCLI(1, "ssi", "cvip", "add", vip+":83", "--nodes", "3,2", "--target-port", "8080", "--sched", "sh")
	e.ready(2, vip+":82/tcp", "nftables", 2, 3)
	e.ready(2, vip+":83/tcp", "nftables", 2, 3)
	// The held connections use local ports below the ephemeral range, so
	// that no connection the test makes later shares one: the client's
	// kernel gives an in-use port to a connection to another destination,
	// which after the SNAT to the VIP is the same 4-tuple at the backend,
	// and the new director, not knowing the held one yet, would take it
	// (docs/CVIP.md, "What survives a director failover").
	sh, sh2 := e.hold(vip+":82", 6, 20000), e.hold(vip+":83", 6, 20100)
	rr := e.hold(vip+":80", 6, 20200)
	shBefore, sh2Before, rrBefore := sh.round(), sh2.round(), rr.round()
	if shBefore[0] == sh2Before[0] {
		t.Fatalf("the two sh VIPs sent the client to the same backend (%s)", shBefore[0])
	}
	for i, a := range append(append(append([]string{}, shBefore...), sh2Before...), rrBefore...) {
		if !strings.HasPrefix(a, "node") {
			t.Fatalf("held connection %d before the failover: %q", i, a)
		}
	}

	// ssi cvip ls counts them (conntrack's entries on the director).
	for _, v := range e.ls(3) {
		if v.Key != key {
			continue
		}
		var n int64
		for _, b := range v.Backends {
			n += b.Active
		}
		if n < 6 {
			t.Errorf("ssi cvip ls counts %d connections through %s, with 6 held open: %+v", n, key, v.Backends)
		}
	}

	// The director's node dies: its daemon is killed and its network goes
	// (as when the machine itself stops); another node takes the VIP.
	e.Kill(int(dir))
	if out, err := exec.Command("ip", "-n", fmt.Sprintf("%s-n%d", e.prefix, dir), "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		t.Fatalf("take node %d's network down: %v: %s", dir, err, out)
	}
	killed := time.Now()
	alive := 0
	for k := 1; k <= 3; k++ {
		if k != int(dir) {
			alive = k
		}
	}
	var served time.Duration
	Eventually(t, 20*time.Second, func() string {
		// One request at a time (each waits at most 0.5 s), so that the
		// time measured is within half a second of the switch.
		if got := e.get(url, 1); got["error"] != 0 {
			return fmt.Sprintf("after node %d died: %v", dir, got)
		}
		served = time.Since(killed)
		return ""
	})
	t.Logf("served again %v after the director (node %d) died", served.Round(10*time.Millisecond), dir)
	// The goal is ~2 s. Without the gratuitous ARP the client would keep
	// sending to the dead director's MAC until its neighbour entry aged
	// out (15-45 s, then 5 s more of probes), so this bound also shows
	// that the announcement was heard.
	if served > 6*time.Second {
		t.Errorf("the VIP was served again only %v after its director died (goal: about 2 s)", served)
	}
	var survivors []uint32
	for _, b := range []uint32{2, 3} {
		if b != dir {
			survivors = append(survivors, b)
		}
	}
	newDir := e.ready(alive, key, "nftables", survivors...)
	if newDir == dir {
		t.Fatalf("node %d is still the director after it died", dir)
	}
	got = e.get(url, 30)
	if got["error"] != 0 {
		t.Errorf("after the failover: %v", got)
	}
	for _, b := range survivors {
		if got[fmt.Sprintf("node%d", b)] == 0 {
			t.Errorf("after the failover node %d's server gets nothing: %v", b, got)
		}
	}
	// Source hash: the new director sends each connection to the backend
	// the old one chose, with the same SNAT to the VIP, so they go on.
	if after := sh.round(); fmt.Sprint(after) != fmt.Sprint(shBefore) {
		t.Errorf("connections through the sh VIP :82 across the failover to node %d: before %v, after %v", newDirOf(e, alive, vip+":82/tcp"), shBefore, after)
	}
	if after := sh2.round(); fmt.Sprint(after) != fmt.Sprint(sh2Before) {
		t.Errorf("connections through the sh VIP :83 across the failover to node %d: before %v, after %v", newDirOf(e, alive, vip+":83/tcp"), sh2Before, after)
	}
	rrAfter := rr.round()
	kept := 0
	for i := range rrAfter {
		if rrAfter[i] == rrBefore[i] {
			kept++
		}
	}
	t.Logf("round robin: %d of %d open connections survived the failover (those the new director happened to send to the same backend)", kept, len(rrAfter))

	// The client's ARP entry points at the new director (gratuitous ARP
	// or a fresh resolution: the old director's MAC is gone either way).
	want, err := exec.Command("ip", "netns", "exec", fmt.Sprintf("%s-n%d", e.prefix, newDir), "cat", "/sys/class/net/eth0/address").Output()
	if err != nil {
		t.Fatalf("node %d's MAC: %v", newDir, err)
	}
	neigh, _ := exec.Command("ip", "-n", e.client, "neigh", "show", vip).Output()
	if !strings.Contains(string(neigh), strings.TrimSpace(string(want))) {
		t.Errorf("the client's neighbour entry for %s is %q, not node %d's MAC %s", vip, neigh, newDir, want)
	}

	// Removing the VIP lets go of the address.
	e.MustCLI(alive, "ssi", "cvip", "rm", vip+":80")
	e.MustCLI(alive, "ssi", "cvip", "rm", vip+":81")
	e.MustCLI(alive, "ssi", "cvip", "rm", vip+":82")
	e.MustCLI(alive, "ssi", "cvip", "rm", vip+":83")
	Eventually(t, 5*time.Second, func() string {
		out, _ := exec.Command("ip", "-n", fmt.Sprintf("%s-n%d", e.prefix, newDir), "addr", "show", "dev", "eth0").Output()
		if strings.Contains(string(out), " "+vip+"/32") {
			return fmt.Sprintf("node %d still holds %s after ssi cvip rm", newDir, vip)
		}
		return ""
	})
	if r := e.CLI(alive, "ssi", "cvip", "rm", vip+":80"); r.Code != 1 {
		t.Errorf("removing it twice: %v", r)
	}
}

// newDirOf is the director of key as node k sees it.
func newDirOf(e *cvipEnv, k int, key string) uint32 {
	for _, v := range e.ls(k) {
		if v.Key == key {
			return v.Director
		}
	}
	return 0
}

// TestCvipFallback: on nodes whose kernel datapath is unavailable (here
// turned off with SSI_CVIP_NO_NFTABLES, as a kernel without nf_tables
// would), a VIP is served by the user-space proxy, chosen without being
// asked for, and ssi cvip ls says so and why.
func TestCvipFallback(t *testing.T) {
	e := startCvip(t, 2, "SSI_CVIP_NO_NFTABLES=1")
	vip := e.addr(200).String()
	key := vip + ":80/tcp"
	e.serve(2)
	e.MustCLI(1, "ssi", "cvip", "add", vip+":80", "--nodes", "2", "--directors", "1", "--target-port", "8080")
	e.ready(2, key, "userspace", 2)
	for _, v := range e.ls(1) {
		if v.Key == key && !strings.Contains(v.Detail, "nftables turned off") {
			t.Errorf("ssi cvip ls does not say why nftables is not used: %q", v.Detail)
		}
	}
	if r := e.CLI(1, "ssi", "cvip", "ls"); !strings.Contains(r.Stdout, "userspace") {
		t.Errorf("ssi cvip ls:\n%s", r.Stdout)
	}
	if got := e.get("http://"+vip+"/", 10); got["node2"] != 10 {
		t.Errorf("through the fallback proxy: %v", got)
	}
}
