package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/ssi-cluster/ssi/internal/dhcp/udhcpctest"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Provisioning end to end (issue 4): guest configurations from a real
// cluster's node table, ssi-addnode --count all or nothing, the images
// commands, the DHCP server's designation following the settings and the
// leader, and a real DHCP client (busybox udhcpc) served by a real daemon
// across network namespaces the test creates.

// DHCPShow mirrors ssi dhcp show --json.
type DHCPShow struct {
	Enabled     bool   `json:"enabled"`
	Interface   string `json:"interface"`
	Netmask     string `json:"netmask"`
	Gateway     string `json:"gateway"`
	ServerNode  string `json:"server_node"`
	ServingNode uint32 `json:"serving_node"`
	LocalNode   uint32 `json:"local_node"`
	LocalStatus string `json:"local_status"`
	Leases      []struct {
		HWAddr  string    `json:"hwaddr"`
		IPAddr  string    `json:"ipaddr"`
		Node    uint32    `json:"node"`
		Name    string    `json:"name"`
		Expires time.Time `json:"expires"`
	} `json:"leases"`
}

func (c *Cluster) dhcpShow(k int) DHCPShow {
	c.t.Helper()
	var s DHCPShow
	out := c.MustCLI(k, "ssi", "dhcp", "show", "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		c.t.Fatalf("node %d: ssi dhcp show --json: %v\n%s", k, err, out)
	}
	return s
}

func leaderOf(t *testing.T, c *Cluster, k int) NodeJSON {
	t.Helper()
	var leader NodeJSON
	Eventually(t, 10*time.Second, func() string {
		ns, raw := c.Nodes(k)
		for _, n := range ns {
			if n.Role == "leader" && n.State == "UP" {
				leader = n
				return ""
			}
		}
		return "no UP leader: " + raw
	})
	return leader
}

func TestXenConfigFromTheNodeTable(t *testing.T) {
	c := StartCluster(t, 2)
	c.MustCLI(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:11:d3", "--ipaddr", c.IP(3), "--nodename", "guest3")
	c.MustCLI(1, "ssi", "dhcp", "set", "--netmask", "255.255.255.0", "--gateway", c.IP(1))
	// Reads are answered locally: wait until node 2 applied both changes.
	Eventually(t, 10*time.Second, func() string {
		if ns, raw := c.Nodes(2); len(ns) != 3 {
			return "node 2 does not see node 3 yet: " + raw
		}
		if s := c.dhcpShow(2); s.Netmask != "255.255.255.0" {
			return "node 2 does not see the DHCP netmask yet"
		}
		return ""
	})
	leader := leaderOf(t, c, 1)
	server := leader.IPAddr + ":7470"

	out := c.MustCLI(2, "ssi", "xen-config", "1", "guest3", "--images", "/images/ssi", "--kernel", "/images/ssi/boot/xenU-vmlinuz", "--memory", "128")
	want := `# xl configuration of ssi node 1 (demo1), written by ssi xen-config.
# Start it with: xl create -c demo1.cfg
kernel = "/images/ssi/boot/xenU-vmlinuz"
ramdisk = "/images/ssi/boot/initrd"
memory = 128
name = "demo1"
disk = ['file:/images/ssi/node1/demo1.img,hda1,w','file:/images/ssi/node1/demo1_swap.img,hda2,w']
root = "/dev/hda1 ro"
vif = ['mac=0a:00:00:00:11:d1']
ip = "IP1"
netmask = "255.255.255.0"
gateway = "IP1"
extra = "ip=IP1::IP1:255.255.255.0:demo1:eth0:off ssi.server=SERVER"

# xl configuration of ssi node 3 (guest3), written by ssi xen-config.
# Start it with: xl create -c guest3.cfg
kernel = "/images/ssi/boot/xenU-vmlinuz"
ramdisk = "/images/ssi/boot/initrd"
memory = 128
name = "guest3"
disk = ['file:/images/ssi/node3/guest3_swap.img,hda2,w']
root = "/dev/hda1 ro"
vif = ['mac=0a:00:00:00:11:d3']
extra = "ssi.server=SERVER"
`
	want = strings.NewReplacer("IP1", c.IP(1), "SERVER", server).Replace(want)
	if out != want {
		t.Errorf("xen-config output:\n%s\nwant:\n%s", out, want)
	}

	// QEMU: the same node as a command line; a name with the wrong case
	// still finds the node.
	q := c.MustCLI(1, "ssi", "xen-config", "GUEST3", "--format", "qemu", "--images", "/images/ssi")
	for _, frag := range []string{"exec qemu-system-x86_64 -name guest3 ", "-append 'root=/dev/vda ro console=ttyS0 ssi.server=" + server + "'",
		"-drive file=/images/ssi/node3/guest3_swap.img,format=raw,if=virtio", "mac=0a:00:00:00:11:d3"} {
		if !strings.Contains(q, frag) {
			t.Errorf("qemu output lacks %q:\n%s", frag, q)
		}
	}

	// --write --with-token: only the node that never joined gets a token,
	// in a file only its owner can read; the token replaces the old one.
	dir := t.TempDir()
	w := c.MustCLI(1, "ssi", "xen-config", "all", "--images", dir, "--write", "--with-token")
	if strings.Count(w, "wrote ") != 3 {
		t.Fatalf("xen-config all --write: %s", w)
	}
	cfg3, err := os.ReadFile(filepath.Join(dir, "configs", "guest3.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg3), "ssi.server="+server+" ssi.token=SSI1-") {
		t.Errorf("guest3.cfg has no join token:\n%s", cfg3)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "configs", "guest3.cfg")); fi.Mode().Perm() != 0o600 {
		t.Errorf("a configuration holding a token has mode %v", fi.Mode().Perm())
	}
	cfg2, _ := os.ReadFile(filepath.Join(dir, "configs", "demo2.cfg"))
	if strings.Contains(string(cfg2), "ssi.token") || !strings.Contains(string(cfg2), "ssi.server=") {
		t.Errorf("the running node 2 got a token, or no server:\n%s", cfg2)
	}
	// The files exist now: without --force nothing is written, and no token replaced.
	r := c.CLI(1, "ssi", "xen-config", "guest3", "--images", dir, "--write", "--with-token")
	if r.Code != 1 || !strings.Contains(r.Stderr, "guest3.cfg (use --force to replace it)") {
		t.Errorf("rewrite without --force: %v", r)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "configs", "guest3.cfg")); !bytes.Equal(again, cfg3) {
		t.Errorf("a refused write changed the file")
	}

	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"xen-config", "7"}, 1, `node "7" is not in the node table`},
		{[]string{"xen-config", "nosuch"}, 1, `node "nosuch" is not in the node table`},
		{[]string{"xen-config"}, 2, "expected at least one node"},
		{[]string{"xen-config", "1", "--format", "vmware"}, 2, "unknown configuration format"},
		{[]string{"xen-config", "1", "--kernel", "relative/vmlinuz"}, 2, "is not absolute"},
		{[]string{"xen-config", "1", "--netmask", "255.0.255.0"}, 2, "not contiguous"},
	} {
		if r := c.CLI(1, "ssi", tc.args...); r.Code != tc.code || !strings.Contains(r.Stderr, tc.stderr) {
			t.Errorf("ssi %v: want exit %d and %q, got %v", tc.args, tc.code, tc.stderr, r)
		}
	}
}

func TestAddNodeCountIsAllOrNothing(t *testing.T) {
	c := StartCluster(t, 2)
	table := func() string { return c.MustCLI(1, "ssi", "clustertab", "--json") }
	before := table()

	// An overlap with node 2's IP refuses the whole batch before anything is sent.
	r := c.CLI(2, "ssi-addnode", "--count", "3", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", c.IP(1))
	if r.Code != 1 || !strings.Contains(r.Stderr, "nothing was registered") || !strings.Contains(r.Stderr, "same IP address as existing node 1") {
		t.Fatalf("overlapping batch: %v", r)
	}
	if after := table(); after != before {
		t.Fatalf("a refused batch changed the node table:\n%s\n%s", before, after)
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"--count", "2", "--hwaddr-base", "0a:00:00:00:22:01"}, 2, "--count needs --hwaddr-base and --ipaddr-base"},
		{[]string{"--count", "0", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", c.IP(10)}, 2, "--count must be between"},
		{[]string{"--count", "2", "--hwaddr-base", "ff:ff:ff:ff:ff:ff", "--ipaddr-base", c.IP(10)}, 2, "multicast/broadcast"},
		{[]string{"--count", "2", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", "10.0.0.300"}, 2, "is not an IP address"},
		{[]string{"--count", "2", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", c.IP(10), "--hwaddr", "0a:00:00:00:22:09"}, 2, "does not go with --hwaddr"},
		{[]string{"--count", "2", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", c.IP(10), "--xennode", "--swap-size", "64MB"}, 2, "ambiguous"},
		{[]string{"--hwaddr", "0a:00:00:00:22:09", "--ipaddr", c.IP(10), "--swap-size", "64M"}, 2, "--swap-size goes with --count"},
		{[]string{"--count", "2", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", c.IP(10), "--images", "/tmp/x"}, 2, "--images is about the nodes' swap images and configurations: it needs --xennode"},
	} {
		if r := c.CLI(1, "ssi-addnode", tc.args...); r.Code != tc.code || !strings.Contains(r.Stderr, tc.stderr) {
			t.Errorf("ssi-addnode %v: want exit %d and %q, got %v", tc.args, tc.code, tc.stderr, r)
		}
	}
	if after := table(); after != before {
		t.Fatalf("refused commands changed the node table:\n%s\n%s", before, after)
	}

	// The local step fails after registering (mkswap breaks): the nodes are
	// removed again and no file is left behind.
	images := t.TempDir()
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "mkswap"), []byte("#!/bin/sh\necho 'mkswap: injected failure' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r = run(t, []string{"SSI_SOCKET=" + c.Socket(1), "PATH=" + fake + ":" + os.Getenv("PATH")}, "", "ssi-addnode",
		"--count", "3", "--hwaddr-base", "0a:00:00:00:22:01", "--ipaddr-base", c.IP(10), "--xennode", "--images", images, "--swap-size", "4M")
	if r.Code != 1 || !strings.Contains(r.Stderr, "removed them again: nothing was changed") || !strings.Contains(r.Stderr, "injected failure") {
		t.Fatalf("failing local step: %v", r)
	}
	if r.Stdout != "" {
		t.Errorf("tokens of removed nodes were printed: %s", r.Stdout)
	}
	if after := table(); after != before {
		t.Fatalf("the rolled-back batch is still registered:\n%s\n%s", before, after)
	}
	// Node 2 answers from its own copy of the state: let it catch up.
	Eventually(t, 10*time.Second, func() string {
		if after := c.MustCLI(2, "ssi", "clustertab", "--json"); after != before {
			return "node 2 still sees the rolled-back batch:\n" + after
		}
		return ""
	})
	if left, _ := filepath.Glob(filepath.Join(images, "*")); len(left) != 0 {
		t.Errorf("files left behind: %v", left)
	}

	// The real thing: three nodes, their swap images and configurations.
	out := c.MustCLI(2, "ssi-addnode", "--count", "3", "--hwaddr-base", "0A:00:00:00:22:01", "--ipaddr-base", c.IP(10),
		"--xennode", "--images", images, "--swap-size", "4M", "--kernel", "/boot/vmlinuz")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("ssi-addnode --count 3 printed:\n%s", out)
	}
	ns, raw := c.Nodes(1)
	for i, line := range lines {
		f := strings.Fields(line)
		// The failed attempt used numbers 3-5; numbers are never reused silently.
		num := 6 + i
		name := fmt.Sprintf("demo%d", num)
		mac := fmt.Sprintf("0a:00:00:00:22:%02x", i+1)
		if len(f) != 7 || f[1] != strconv.Itoa(num) || f[2] != name || f[3] != mac || f[4] != c.IP(10+i) || !strings.HasPrefix(f[6], "SSI1-") {
			t.Errorf("line %q, want node %d %s %s %s token ...", line, num, name, mac, c.IP(10+i))
		}
		if n := ns[uint32(num)]; n.State != "NEVERUP" || n.HWAddr != mac || n.IPAddr != c.IP(10+i) {
			t.Errorf("node %d in the table: %+v (%s)", num, n, raw)
		}
		swap := filepath.Join(images, fmt.Sprintf("node%d", num), name+"_swap.img")
		if fi, err := os.Stat(swap); err != nil || fi.Size() != 4<<20 {
			t.Errorf("swap image %s: %v", swap, err)
		} else if b, _ := os.ReadFile(swap); !bytes.Equal(b[4086:4096], []byte("SWAPSPACE2")) {
			t.Errorf("%s has no swap signature", swap)
		}
		cfg, err := os.ReadFile(filepath.Join(images, "configs", name+".cfg"))
		if err != nil || !strings.Contains(string(cfg), "vif = ['mac="+mac+"']") || !strings.Contains(string(cfg), `kernel = "/boot/vmlinuz"`) || strings.Contains(string(cfg), "ssi.token") {
			t.Errorf("configuration of %s: %v\n%s", name, err, cfg)
		}
	}
	// The same batch again clashes with itself, now registered.
	r = c.CLI(1, "ssi-addnode", "--count", "2", "--hwaddr-base", "0a:00:00:00:22:03", "--ipaddr-base", c.IP(20))
	if r.Code != 1 || !strings.Contains(r.Stderr, "same MAC address as existing node 8") {
		t.Errorf("overlap with the new nodes: %v", r)
	}
}

func TestImagesCommands(t *testing.T) {
	for _, tool := range []string{"mke2fs", "e2fsck", "mkswap"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				t.Fatalf("%s is not installed (apt-get install e2fsprogs util-linux)", tool)
			}
		}
	}
	c := StartCluster(t, 2)
	images := filepath.Join(t.TempDir(), "ssi")
	out := c.MustCLI(1, "ssi", "images", "init", images)
	if strings.TrimSpace(out) != images+": boot/ configs/ node1/ node2/" {
		t.Errorf("images init: %q", out)
	}
	for _, d := range []string{"boot", "configs", "node1", "node2"} {
		if fi, err := os.Stat(filepath.Join(images, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s/%s: %v", images, d, err)
		}
	}
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("demo1\n"), 0o644)

	r := c.CLI(1, "ssi", "images", "root", "--size", "32M", "--from", tree, images)
	if r.Code != 0 || !strings.Contains(r.Stderr, "(4/4)") {
		t.Fatalf("images root: %v", r)
	}
	root := filepath.Join(images, "node1", "demo1.img")
	fsck := func() {
		t.Helper()
		e2fsck := "e2fsck"
		if _, err := exec.LookPath(e2fsck); err != nil {
			e2fsck = "/usr/sbin/e2fsck"
		}
		if out, err := exec.Command(e2fsck, "-fn", root).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn %s: %v\n%s", root, err, out)
		}
	}
	fsck()
	if fi, err := os.Stat(root); err != nil || fi.Size() != 32<<20 {
		t.Fatalf("root image: %v", err)
	}
	if r := c.CLI(1, "ssi", "images", "root", "--size", "32M", images); r.Code != 1 || !strings.Contains(r.Stderr, "already exists") {
		t.Errorf("root image over an existing one: %v", r)
	}
	c.MustCLI(1, "ssi", "images", "grow", root, "48M")
	fsck()
	if fi, _ := os.Stat(root); fi.Size() != 48<<20 {
		t.Errorf("grown image is %d bytes", fi.Size())
	}
	if r := c.CLI(1, "ssi", "images", "grow", root, "16M"); r.Code != 2 || !strings.Contains(r.Stderr, "refusing to shrink") {
		t.Errorf("shrink: %v", r)
	}
	c.MustCLI(2, "ssi", "images", "swap", "demo2", "--size", "2M", "--images", images)
	swap := filepath.Join(images, "node2", "demo2_swap.img")
	if b, err := os.ReadFile(swap); err != nil || len(b) != 2<<20 || !bytes.Equal(b[4086:4096], []byte("SWAPSPACE2")) {
		t.Errorf("swap image %s: %v (%d bytes)", swap, err, len(b))
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"images", "swap", "demo2", "--size", "2MB", "--images", images}, 2, "ambiguous"},
		{[]string{"images", "swap", "demo2", "--size", "100K", "--images", images, "--force"}, 2, "the minimum is 1M"},
		{[]string{"images", "swap", "demo2", "--size", "2M", "--images", images}, 1, "already exists"},
		{[]string{"images", "swap", "9", "--size", "2M", "--images", images}, 1, `node "9" is not in the node table`},
		{[]string{"images", "root", "--size", "1M", filepath.Join(images, "x.img")}, 2, "the minimum is 16M"},
		{[]string{"images", "root", filepath.Join(images, "x.img")}, 2, "--size is required"},
		{[]string{"images", "grow", filepath.Join(images, "missing.img"), "64M"}, 1, "missing.img"},
		{[]string{"images", "frobnicate"}, 2, "unknown subcommand"},
	} {
		if r := c.CLI(1, "ssi", tc.args...); r.Code != tc.code || !strings.Contains(r.Stderr, tc.stderr) {
			t.Errorf("ssi %v: want exit %d and %q, got %v", tc.args, tc.code, tc.stderr, r)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(images, "*", ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// The DHCP server's designation follows the settings and the leader. The
// interface does not exist, so nothing is bound on this host's network:
// the test checks which node claims the server and why.
func TestDHCPServerFollowsSettingsAndLeader(t *testing.T) {
	c := StartCluster(t, 3)
	const iface = "ssi-none0"
	c.MustCLI(2, "ssi", "dhcp", "set", "--interface", iface, "--netmask", "255.255.255.0", "--enable")
	notHere := func(k int) string {
		return fmt.Sprintf("not serving: interface %s does not exist on node %d", iface, k)
	}
	waitStatus := func(k int, prefix string) {
		t.Helper()
		Eventually(t, 10*time.Second, func() string {
			if s := c.dhcpShow(k); !strings.HasPrefix(s.LocalStatus, prefix) {
				return fmt.Sprintf("node %d: %q, want %q", k, s.LocalStatus, prefix)
			}
			return ""
		})
	}
	waitStatus(1, notHere(1))
	waitStatus(3, "idle: node 1 serves DHCP, not node 3")

	c.MustCLI(3, "ssi", "dhcp", "set", "--server-node", "2")
	waitStatus(2, notHere(2))
	waitStatus(1, "idle: node 2 serves DHCP, not node 1")

	c.MustCLI(1, "ssi", "dhcp", "set", "--server-node", "leader")
	leader := leaderOf(t, c, 1)
	waitStatus(int(leader.Num), notHere(int(leader.Num)))
	if s := c.dhcpShow(int(leader.Num)); s.ServerNode != "leader" || s.ServingNode != leader.Num {
		t.Errorf("dhcp show on the leader: %+v", s)
	}
	// Kill the leader: the new leader takes the server over.
	c.Kill(int(leader.Num))
	rest := others(3, int(leader.Num))
	var next NodeJSON
	Eventually(t, 15*time.Second, func() string {
		ns, raw := c.Nodes(rest[0])
		for _, n := range ns {
			if n.Role == "leader" && n.Num != leader.Num {
				next = n
				return ""
			}
		}
		return "no new leader: " + raw
	})
	waitStatus(int(next.Num), notHere(int(next.Num)))

	c.MustCLI(rest[0], "ssi", "dhcp", "set", "--disable")
	for _, k := range rest {
		waitStatus(k, "idle: DHCP is disabled")
	}
}

// netnsEnv is a pair of network namespaces joined by a veth pair, made by
// the test and deleted when it ends. Addresses exist only inside them.
type netnsEnv struct {
	srvNS, cliNS, srvIf, cliIf string
}

func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func newNetns(t *testing.T, ctx context.Context, serverCIDR, clientMAC string) *netnsEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: ip netns unavailable: iproute2 is not installed")
	}
	id := rand.IntN(90000) + 10000
	e := &netnsEnv{
		srvNS: fmt.Sprintf("ssi-e2e-%d-s", id), cliNS: fmt.Sprintf("ssi-e2e-%d-c", id),
		srvIf: fmt.Sprintf("se%ds", id), cliIf: fmt.Sprintf("se%dc", id),
	}
	if err := ipCmd(ctx, "netns", "add", e.srvNS); err != nil {
		t.Skipf("skipped: ip netns unavailable: %v", err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", e.srvNS).Run() })
	if err := ipCmd(ctx, "netns", "add", e.cliNS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", e.cliNS).Run() })
	for _, args := range [][]string{
		{"link", "add", e.srvIf, "netns", e.srvNS, "type", "veth", "peer", "name", e.cliIf, "netns", e.cliNS},
		{"-n", e.srvNS, "link", "set", "lo", "up"},
		{"-n", e.srvNS, "addr", "add", serverCIDR, "dev", e.srvIf},
		{"-n", e.srvNS, "link", "set", e.srvIf, "up"},
		{"-n", e.cliNS, "link", "set", e.cliIf, "address", clientMAC},
		{"-n", e.cliNS, "link", "set", e.cliIf, "up"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func readUdhcpEvents(t *testing.T, file string) []udhcpctest.Event {
	t.Helper()
	evs, err := udhcpctest.ReadEvents(file)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// The integration test: a real ssi daemon, running in a network
// namespace, serves DHCP on a veth whose other end is in a second
// namespace, where busybox's udhcpc (a client nobody here wrote) gets
// exactly what ssi-addnode registered for its MAC; an unregistered MAC
// gets nothing; a re-registered node gets its new address on renewal.
func TestDHCPWithRealDaemonAndUdhcpc(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // hang guard for every step
	defer cancel()
	const (
		serverIP = "10.250.9.1"
		mac      = "0a:00:00:00:99:02"
	)
	e := newNetns(t, ctx, serverIP+"/24", mac)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox is not installed; its udhcpc is the real DHCP client this test runs: apt-get install busybox")
	}

	// A one-node cluster whose node 1 lives in the server namespace, on the
	// veth's address. Its control socket is a file: the CLI reaches it from here.
	c := &Cluster{t: t, Dir: t.TempDir(), BaseIP: serverIP, N: 1}
	dataDir := filepath.Join(c.Dir, "node1")
	if r := run(t, nil, "", "ssi", "init", "--cluster-name", "dhcp1", "--hwaddr", "0a:00:00:00:99:01", "--ipaddr", serverIP, "--data-dir", dataDir); r.Code != 0 {
		t.Fatalf("init: %v", r)
	}
	logPath := filepath.Join(dataDir, "ssi.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command("ip", "netns", "exec", e.srvNS, ssiBin, "daemon", "--data-dir", dataDir, "--socket", c.Socket(1), "--cfs-mount", "")
	daemon.Stdout, daemon.Stderr = logf, logf
	daemon.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { daemon.Wait(); close(exited) }()
	t.Cleanup(func() {
		daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			daemon.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 12000 {
				b = b[len(b)-12000:]
			}
			t.Logf("daemon log:\n%s", b)
		}
	})
	c.WaitState([]int{1}, 1, "UP", 30*time.Second)

	c.MustCLI(1, "ssi", "dhcp", "set", "--interface", e.srvIf, "--netmask", "255.255.255.0", "--gateway", serverIP,
		"--dns", serverIP, "--domain", "ssi.test", "--lease-time", "2m", "--enable")
	Eventually(t, 10*time.Second, func() string {
		if s := c.dhcpShow(1); s.LocalStatus != "serving on "+e.srvIf+" as "+serverIP {
			return "dhcp show: " + s.LocalStatus
		}
		return ""
	})
	out := c.MustCLI(1, "ssi-addnode", "--hwaddr", strings.ToUpper(mac), "--ipaddr", "10.250.9.42", "--nodename", "guest2")
	if !strings.HasPrefix(out, "node 2 guest2 ") {
		t.Fatalf("ssi-addnode: %s", out)
	}

	dir := t.TempDir()
	events := filepath.Join(dir, "events")
	script := filepath.Join(dir, "udhcpc.script")
	if err := udhcpctest.WriteScript(script, events); err != nil {
		t.Fatal(err)
	}
	udhcpc := func(args ...string) *exec.Cmd {
		base := []string{"netns", "exec", e.cliNS, busybox, "udhcpc", "-f", "-i", e.cliIf, "-s", script, "-t", "3", "-T", "1", "-n"}
		return exec.CommandContext(ctx, "ip", append(base, args...)...)
	}

	t.Run("registered MAC gets what ssi-addnode registered", func(t *testing.T) {
		out, err := udhcpc("-q").CombinedOutput()
		if err != nil {
			t.Fatalf("udhcpc: %v\n%s", err, out)
		}
		got := udhcpctest.LastBound(readUdhcpEvents(t, events))
		want := udhcpctest.Event{"event": "bound", "ip": "10.250.9.42", "subnet": "255.255.255.0", "mask": "24", "router": serverIP,
			"dns": serverIP, "domain": "ssi.test", "hostname": "guest2", "lease": "120", "serverid": serverIP}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("udhcpc got %s=%q, want %q (%v)", k, got[k], v, got)
			}
		}
		// The lease is in the replicated state.
		Eventually(t, 10*time.Second, func() string {
			s := c.dhcpShow(1)
			for _, l := range s.Leases {
				if l.HWAddr == mac && l.IPAddr == "10.250.9.42" && l.Node == 2 && l.Name == "guest2" && l.Expires.After(time.Now()) {
					return ""
				}
			}
			return fmt.Sprintf("lease not recorded: %+v", s.Leases)
		})
	})

	t.Run("unregistered MAC gets nothing", func(t *testing.T) {
		const stranger = "0a:00:00:00:99:ee"
		if err := ipCmd(ctx, "-n", e.cliNS, "link", "set", e.cliIf, "address", stranger); err != nil {
			t.Fatal(err)
		}
		defer ipCmd(ctx, "-n", e.cliNS, "link", "set", e.cliIf, "address", mac)
		before := len(readUdhcpEvents(t, events))
		out, err := udhcpc("-q").CombinedOutput()
		if err == nil {
			t.Fatalf("udhcpc got a lease for an unregistered MAC:\n%s", out)
		}
		for _, ev := range readUdhcpEvents(t, events)[before:] {
			if ev["event"] == "bound" {
				t.Errorf("unregistered MAC was bound: %v", ev)
			}
		}
		b, _ := os.ReadFile(logPath)
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "ignoring unregistered MAC address (register it with ssi-addnode --hwaddr)") && strings.Contains(line, " mac="+stranger) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("the daemon logged the unknown MAC %d times, want once (it sent several DISCOVERs)", n)
		}
	})

	t.Run("re-registered node gets its new address on renewal", func(t *testing.T) {
		before := len(readUdhcpEvents(t, events))
		cmd := udhcpc()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			<-done
			if t.Failed() {
				t.Logf("udhcpc output:\n%s", out.String())
			}
		}()
		boundTo := func(ip string) func() string {
			return func() string {
				if b := udhcpctest.LastBound(readUdhcpEvents(t, events)[before:]); b == nil || b["ip"] != ip {
					return fmt.Sprintf("udhcpc not bound to %s yet (last bound: %v)", ip, b)
				}
				return ""
			}
		}
		Eventually(t, 20*time.Second, boundTo("10.250.9.42"))

		c.MustCLI(1, "ssi", "rmnode", "2")
		c.MustCLI(1, "ssi-addnode", "--hwaddr", mac, "--ipaddr", "10.250.9.77", "--nodename", "guest2")
		if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil { // udhcpc: renew now
			t.Fatal(err)
		}
		Eventually(t, 20*time.Second, boundTo("10.250.9.77"))
		got := udhcpctest.LastBound(readUdhcpEvents(t, events)[before:])
		if got["hostname"] != "guest2" || got["subnet"] != "255.255.255.0" || got["router"] != serverIP {
			t.Errorf("after re-registration udhcpc got %v", got)
		}
		sawNak := false
		for _, ev := range readUdhcpEvents(t, events)[before:] {
			sawNak = sawNak || ev["event"] == "nak" && strings.Contains(ev["message"], "10.250.9.42 is not the address of guest2")
		}
		if !sawNak {
			t.Errorf("the renewal of the old address was not NAKed with a reason")
		}
		Eventually(t, 10*time.Second, func() string {
			for _, l := range c.dhcpShow(1).Leases {
				if l.HWAddr == mac && l.IPAddr == "10.250.9.77" && l.Node == 3 {
					return ""
				}
			}
			return "the new lease is not recorded"
		})
	})
}
