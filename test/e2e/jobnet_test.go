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
	"strconv"
	"strings"
	"testing"
	"time"
)

// jobNetEnv is a 3-node --isolate cluster with the test's TCP service
// (test/netecho) built and a client namespace of its own on the bridge.
type jobNetEnv struct {
	*Cluster
	prefix string
	subnet netip.Prefix
	client string // the client's network namespace
	echo   string // the netecho binary
	via    int    // the node whose CLI list and serve use
}

func startJobNet(t *testing.T) *jobNetEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("--net jobs need root (namespaces, macvlans, CRIU): run the e2e tests as root")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &jobNetEnv{echo: filepath.Join(dir, "netecho"), via: 1}
	if out, err := exec.Command("go", "build", "-o", e.echo, "../netecho").CombinedOutput(); err != nil {
		t.Fatalf("build netecho: %v\n%s", err, out)
	}
	e.Cluster = StartCluster(t, 3, "--isolate")
	e.prefix = isolatePrefix(t, e.Dir)
	e.subnet = isolateSubnet(t, e.Dir)
	e.client = e.prefix + "-nc"
	clientNamespace(t, e.prefix, e.client, "vn", netip.PrefixFrom(e.host(0, 251), e.subnet.Bits()))
	return e
}

// host is address a.b of the cluster's /16.
func (e *jobNetEnv) host(a, b byte) netip.Addr {
	ip := e.subnet.Addr().As4()
	ip[2], ip[3] = a, b
	return netip.AddrFrom4(ip)
}

// netList mirrors ssi net --json.
type netList struct {
	Pool *struct {
		First string `json:"first"`
		Last  string `json:"last"`
		Bits  int    `json:"bits"`
	} `json:"pool"`
	Addrs []struct {
		IP   string `json:"ip"`
		MAC  string `json:"mac"`
		CPID int64  `json:"cpid"`
		Node uint32 `json:"node"`
	} `json:"addrs"`
}

func (e *jobNetEnv) list() netList {
	e.t.Helper()
	var l netList
	if err := json.Unmarshal([]byte(e.MustCLI(e.via, "ssi", "net", "--json")), &l); err != nil {
		e.t.Fatalf("ssi net --json: %v", err)
	}
	return l
}

// addrOf is the address job cpid holds and its node ("" if none).
func (e *jobNetEnv) addrOf(cpid string) (string, string, uint32) {
	e.t.Helper()
	for _, a := range e.list().Addrs {
		if strconv.FormatInt(a.CPID, 10) == cpid {
			return a.IP, a.MAC, a.Node
		}
	}
	return "", "", 0
}

// serve starts netecho on node k as a detached --net job.
func (e *jobNetEnv) serve(k int, argv ...string) string {
	e.t.Helper()
	if len(argv) == 0 {
		argv = []string{e.echo, "serve", ":7000"}
	}
	cpid := strings.TrimSpace(e.MustCLI(e.via, "ssi", append([]string{"run", "-d", "--net", "-n", strconv.Itoa(k)}, argv...)...))
	Eventually(e.t, 10*time.Second, func() string {
		if l := logLines(e.Cluster, e.via, cpid); len(l) == 0 || l[0] != "listening" {
			return fmt.Sprintf("%s is not listening yet: %v", cpid, l)
		}
		return ""
	})
	return cpid
}

// hello is the greeting of a new connection to addr from the client
// namespace ("hello N": N counts the server's connections).
func (e *jobNetEnv) hello(addr string) string {
	e.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.client, e.echo, "hello", addr).CombinedOutput()
	if err != nil {
		e.t.Fatalf("hello %s from the client namespace: %v: %s", addr, err, out)
	}
	return strings.TrimSpace(string(out))
}

// echoClient is netecho client exchanging numbered messages on held
// connections from the client namespace.
type echoClient struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

func (e *jobNetEnv) dial(addr string, conns int) *echoClient {
	e.t.Helper()
	in, out := startPiped(e.t, exec.Command("ip", "netns", "exec", e.client, e.echo, "client", addr, strconv.Itoa(conns)))
	return &echoClient{t: e.t, in: in, out: out}
}

func (c *echoClient) ask(what string) string {
	c.t.Helper()
	fmt.Fprintln(c.in, what)
	if !c.out.Scan() {
		c.t.Fatalf("the client ended: %v", c.out.Err())
	}
	return c.out.Text()
}

// count is how many exchanges succeeded; a failure ends the test.
func (c *echoClient) count() int {
	c.t.Helper()
	s := c.ask("count")
	n, err := strconv.Atoi(s)
	if err != nil {
		c.t.Fatalf("the client: %s", s)
	}
	return n
}

// more waits until n more exchanges have succeeded.
func (c *echoClient) more(n int, why string) {
	c.t.Helper()
	base := c.count()
	Eventually(c.t, 30*time.Second, func() string {
		if got := c.count(); got < base+n {
			return fmt.Sprintf("%s: %d exchanges, want %d", why, got, base+n)
		}
		return ""
	})
}

// A --net job serving TCP on node 2 moves to node 3 with a client holding
// four connections open from a namespace on the cluster's bridge: the
// client sees no reset, nothing lost or repeated, and keeps exchanging;
// new connections, from the client and from node 1, reach the same process
// on node 3. Two --net jobs get different addresses; an address is
// released when its job ends and given again, and by the leader when the
// job's node is DOWN; a failed move leaves the job and its connections
// running on the source; bad pools and an exhausted pool are refused and
// change nothing.
func TestJobNet(t *testing.T) {
	e := startJobNet(t)
	l := e.list()
	if l.Pool == nil || l.Pool.First != e.host(1, 1).String() || l.Pool.Last != e.host(1, 254).String() || l.Pool.Bits != 16 || len(l.Addrs) != 0 {
		t.Fatalf("the default pool of an --isolate cluster: %+v", l)
	}

	// Bad input: usage errors (2), refusals (1); the pool stays.
	for _, args := range [][]string{
		{"ssi", "net", "pool", e.host(1, 3).String()},
		{"ssi", "net", "pool", e.host(1, 9).String() + "-" + e.host(1, 1).String()},
		{"ssi", "net", "pool", e.host(1, 1).String() + "-" + e.host(1, 9).String() + "/40"},
		{"ssi", "net", "pool", "fd00::1-fd00::9"},
		{"ssi", "run", "-d", "-p", "--net", "-n", "2", "true"},
		{"onnode", "-p", "--net", "2", "true"},
	} {
		if r := e.CLI(1, args[0], args[1:]...); r.Code != 2 {
			t.Errorf("%v: %v; want a usage error (exit 2)", args, r)
		}
	}
	if r := e.CLI(1, "ssi", "net", "pool", e.host(0, 1).String()+"-"+e.host(0, 20).String()); r.Code != 1 || !strings.Contains(r.Stderr, "the address of node 1") {
		t.Errorf("a pool holding the nodes' addresses: %v; want exit 1", r)
	}
	if got := e.list(); got.Pool == nil || got.Pool.First != l.Pool.First || got.Pool.Last != l.Pool.Last {
		t.Errorf("a refused pool changed it: %+v", got.Pool)
	}

	a, b := e.serve(2), e.serve(2)
	ipA, macA, nodeA := e.addrOf(a)
	ipB, macB, _ := e.addrOf(b)
	if ipA == "" || ipB == "" || ipA == ipB || macA == macB || nodeA != 2 {
		t.Fatalf("two --net jobs: %s %s %s, %s %s: want two addresses of their own on node 2", ipA, macA, fmt.Sprint(nodeA), ipB, macB)
	}
	addrA := ipA + ":7000"

	// An attached --net job (onnode, its CLI on node 1) has an address of
	// its own too: from node 2 it reaches b (two macvlans of one link
	// talk; a macvlan and its link do not), and gives the address back
	// when it ends.
	if got := strings.TrimSpace(e.MustCLI(1, "onnode", "--net", "2", e.echo, "hello", ipB+":7000")); got != "hello 1" {
		t.Errorf("an attached --net job on node 2 asking b: %q, want hello 1", got)
	}
	Eventually(t, 10*time.Second, func() string {
		if n := len(e.list().Addrs); n != 2 {
			return fmt.Sprintf("%d addresses held after the attached job ended, want 2", n)
		}
		return ""
	})

	cl := e.dial(addrA, 4)
	cl.more(40, "before the move")
	if out := e.MustCLI(1, "migrate", a, "3"); !strings.Contains(out, "from node 2 to node 3") {
		t.Errorf("migrate printed %q", out)
	}
	for k := 1; k <= 3; k++ {
		if got := strings.TrimSpace(e.MustCLI(k, "where_pid", a)); got != "3" {
			t.Errorf("where_pid on node %d: %q, want 3", k, got)
		}
	}
	if ip, mac, node := e.addrOf(a); ip != ipA || mac != macA || node != 3 {
		t.Errorf("after the move ssi net says %s %s on node %d, want %s %s on node 3", ip, mac, node, ipA, macA)
	}
	cl.more(40, "after the move")
	if got := cl.ask("stop"); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("the connections held across the move: %s", got)
	}
	// New connections reach the same process (its fifth, sixth) on node 3.
	if got := strings.TrimSpace(e.MustCLI(1, "onnode", "-p", "1", e.echo, "hello", addrA)); got != "hello 5" {
		t.Errorf("a new connection from node 1: %q, want hello 5", got)
	}
	if got := e.hello(addrA); got != "hello 6" {
		t.Errorf("a new connection from the client: %q, want hello 6", got)
	}
	if got := e.hello(ipB + ":7000"); got != "hello 2" {
		t.Errorf("the other job, still on node 2: %q, want hello 2", got)
	}

	// An attached --net server (its CLI on node 1) moves too: its
	// connection goes on, and so does its output on the CLI.
	att := exec.Command(ssiBin, "--net", "2", e.echo, "serve", ":7001")
	att.Args[0] = "onnode"
	att.Env = append(os.Environ(), "SSI_SOCKET="+e.Socket(1))
	_, attOut := startPiped(t, att)
	if !attOut.Scan() || !strings.HasPrefix(attOut.Text(), "listening") {
		t.Fatalf("the attached --net server: %q %v", attOut.Text(), attOut.Err())
	}
	var attCPID, ipT string
	for _, ad := range e.list().Addrs {
		if c := strconv.FormatInt(ad.CPID, 10); c != a && c != b {
			attCPID, ipT = c, ad.IP
		}
	}
	clT := e.dial(ipT+":7001", 1)
	clT.more(20, "the attached server, before its move")
	if out := e.MustCLI(1, "migrate", attCPID, "3"); !strings.Contains(out, "from node 2 to node 3") {
		t.Errorf("migrate of the attached --net server: %q", out)
	}
	clT.more(20, "the attached server, after its move")
	if got := clT.ask("stop"); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("the connection to the attached server across its move: %s", got)
	}
	if !attOut.Scan() || attOut.Text() != "connection 1: EOF" {
		t.Errorf("the attached server's output after its move: %q %v, want connection 1: EOF", attOut.Text(), attOut.Err())
	}
	e.MustCLI(1, "ssi", "kill", attCPID)
	Eventually(t, 10*time.Second, func() string {
		if ip, _, _ := e.addrOf(attCPID); ip != "" {
			return "the attached server's address is still held after its end"
		}
		return ""
	})

	// A move that fails (the job holds a file that exists only in node
	// 2's mount namespace: the restore on node 3 fails) leaves the job
	// running on node 2 with its connection.
	private := nodePrivateFile(t, e.Cluster, 2)
	held := e.serve(2, "sh", "-c", "exec 4<"+private+"; exec "+e.echo+" serve :7000")
	ipH, _, _ := e.addrOf(held)
	clH := e.dial(ipH+":7000", 1)
	clH.more(20, "before the failed move")
	if r := e.CLI(1, "migrate", held, "3"); r.Code != 1 || !strings.Contains(r.Stderr, "restoring process") || !strings.Contains(r.Stderr, "still runs on node 2") {
		t.Errorf("the move that cannot restore: %v; want exit 1", r)
	}
	if got := strings.TrimSpace(e.MustCLI(1, "where_pid", held)); got != "2" {
		t.Errorf("after the failed move where_pid says %s", got)
	}
	if _, _, node := e.addrOf(held); node != 2 {
		t.Errorf("after the failed move ssi net says node %d", node)
	}
	clH.more(20, "after the failed move")
	if got := clH.ask("stop"); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("the connection held across the failed move: %s", got)
	}

	// An exhausted pool: the next --net job is refused, nothing changes.
	held3 := []string{ipA, ipB, ipH}
	lo, hi := held3[0], held3[0]
	for _, ip := range held3 {
		if netipMust(ip).Less(netipMust(lo)) {
			lo = ip
		}
		if netipMust(hi).Less(netipMust(ip)) {
			hi = ip
		}
	}
	e.MustCLI(1, "ssi", "net", "pool", lo+"-"+hi)
	if r := e.CLI(1, "ssi", "run", "-d", "--net", "-n", "2", e.echo, "serve", ":7000"); r.Code != 1 || !strings.Contains(r.Stderr, "every address of the pool") {
		t.Errorf("a --net job with the pool exhausted: %v; want exit 1", r)
	}
	if got := len(e.list().Addrs); got != 3 {
		t.Errorf("after the refusal %d addresses are held, want 3", got)
	}
	// A pool that leaves out a held address is refused.
	if r := e.CLI(1, "ssi", "net", "pool", netipMust(lo).Next().String()+"-"+hi); r.Code != 1 || !strings.Contains(r.Stderr, "end it first") {
		t.Errorf("a pool leaving out %s: %v; want exit 1", lo, r)
	}
	e.MustCLI(1, "ssi", "net", "pool", l.Pool.First+"-"+l.Pool.Last)

	// Released when the job ends, and given again.
	e.MustCLI(1, "ssi", "kill", "-9", b)
	Eventually(t, 10*time.Second, func() string {
		if ip, _, _ := e.addrOf(b); ip != "" {
			return "the address of the killed job is still held"
		}
		return ""
	})
	d := e.serve(3)
	if ip, _, node := e.addrOf(d); ip != ipB || node != 3 {
		t.Errorf("a new --net job on node 3 got %s on node %d, want the freed %s", ip, node, ipB)
	}
	if got := e.hello(ipB + ":7000"); got != "hello 1" {
		t.Errorf("the new job at the freed address: %q", got)
	}
	// A node that dies takes its jobs with it (a, moved there, and d):
	// 15 s after it is DOWN (once it would have fenced them, had it been
	// cut off rather than dead) the leader gives their addresses back.
	e.Kill(3)
	e.WaitState([]int{1, 2}, 3, "DOWN", 15*time.Second)
	Eventually(t, 35*time.Second, func() string {
		for _, cpid := range []string{a, d} {
			if ip, _, _ := e.addrOf(cpid); ip != "" {
				return fmt.Sprintf("%s of %s, a job of the DOWN node, is still held", ip, cpid)
			}
		}
		return ""
	})
	e.MustCLI(1, "ssi", "kill", "-9", held)
	Eventually(t, 10*time.Second, func() string {
		if n := len(e.list().Addrs); n != 0 {
			return fmt.Sprintf("%d addresses held after every --net job ended", n)
		}
		return ""
	})
	// Nothing left behind in the nodes' namespaces: their links are lo
	// and eth0 (a job's macvlan lived in its own namespace, gone with it).
	for k := 1; k <= 3; k++ {
		out, err := exec.Command("ip", "-n", e.prefix+"-n"+strconv.Itoa(k), "-o", "link").CombinedOutput()
		if err != nil {
			t.Fatalf("links of node %d: %v: %s", k, err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) < 2 || (f[1] != "lo:" && !strings.HasPrefix(f[1], "eth0")) {
				t.Errorf("node %d has a link left: %s", k, line)
			}
		}
	}
}

// The addresses are replicated state: the leader dies, another takes
// over, and the assignment, the connection to the job and its moves go
// on; a new --net job gets another address.
func TestJobNetLeaderLoss(t *testing.T) {
	e := startJobNet(t)
	leader := int(leaderOf(t, e.Cluster, 1).Num)
	survivors := others(3, leader)
	job := e.serve(survivors[0])
	ip, mac, _ := e.addrOf(job)
	cl := e.dial(ip+":7000", 2)
	cl.more(20, "before the leader's death")
	e.Kill(leader)
	e.WaitState(survivors, uint32(leader), "DOWN", 15*time.Second)
	e.via = survivors[1]
	if got, gotMAC, node := e.addrOf(job); got != ip || gotMAC != mac || node != uint32(survivors[0]) {
		t.Errorf("after the leader's death node %d says %s %s on node %d, want %s %s on node %d", e.via, got, gotMAC, node, ip, mac, survivors[0])
	}
	cl.more(20, "after the leader's death")
	other := e.serve(survivors[1])
	if oip, _, _ := e.addrOf(other); oip == "" || oip == ip {
		t.Errorf("a new --net job after the leader's death got %q (the first holds %s)", oip, ip)
	}
	if out := e.MustCLI(e.via, "migrate", job, strconv.Itoa(survivors[1])); !strings.Contains(out, fmt.Sprintf("to node %d", survivors[1])) {
		t.Errorf("migrate under the new leader: %q", out)
	}
	cl.more(20, "after the move under the new leader")
	if got := cl.ask("stop"); !strings.HasPrefix(got, "ok ") {
		t.Fatalf("the connections across the leader's death and the move: %s", got)
	}
}
