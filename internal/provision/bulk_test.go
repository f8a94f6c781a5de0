package provision

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanNodes(t *testing.T) {
	nodes, err := PlanNodes(3, "0A:00:00:00:11:D2", netip.MustParseAddr("192.168.64.142"), 2, "ssi")
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{
		{Num: 2, Name: "ssi2", HWAddr: "0a:00:00:00:11:d2", IPAddr: netip.MustParseAddr("192.168.64.142")},
		{Num: 3, Name: "ssi3", HWAddr: "0a:00:00:00:11:d3", IPAddr: netip.MustParseAddr("192.168.64.143")},
		{Num: 4, Name: "ssi4", HWAddr: "0a:00:00:00:11:d4", IPAddr: netip.MustParseAddr("192.168.64.144")},
	}
	if len(nodes) != len(want) {
		t.Fatalf("got %d nodes", len(nodes))
	}
	for i := range want {
		if nodes[i] != want[i] {
			t.Errorf("node %d = %+v, want %+v", i, nodes[i], want[i])
		}
	}
	// Carries across octets.
	nodes, err = PlanNodes(2, "0a:00:00:00:11:ff", netip.MustParseAddr("10.0.0.255"), 10, "n-")
	if err != nil {
		t.Fatal(err)
	}
	if nodes[1].HWAddr != "0a:00:00:00:12:00" || nodes[1].IPAddr != netip.MustParseAddr("10.0.1.0") || nodes[1].Name != "n-11" {
		t.Errorf("carry: %+v", nodes[1])
	}
}

func TestPlanNodesErrors(t *testing.T) {
	ip := netip.MustParseAddr("192.168.64.142")
	for _, tc := range []struct {
		name   string
		count  int
		mac    string
		ip     netip.Addr
		start  int
		prefix string
		want   string
	}{
		{"zero", 0, "0a:00:00:00:11:d2", ip, 2, "ssi", "1 to 1024"},
		{"too many", 5000, "0a:00:00:00:11:d2", ip, 2, "ssi", "1 to 1024"},
		{"start", 1, "0a:00:00:00:11:d2", ip, 0, "ssi", "start at 1"},
		{"mac", 1, "zz", ip, 2, "ssi", "not a MAC address"},
		{"multicast mac", 1, "01:00:00:00:11:d2", ip, 2, "ssi", "multicast"},
		{"mac into multicast", 3, "fe:ff:ff:ff:ff:fe", ip, 2, "ssi", "multicast"},
		{"no ip", 1, "0a:00:00:00:11:d2", netip.Addr{}, 2, "ssi", "no IP address base"},
		{"ip into broadcast", 3, "0a:00:00:00:11:d2", netip.MustParseAddr("255.255.255.253"), 2, "ssi", "cannot be a node's address"},
		{"prefix", 1, "0a:00:00:00:11:d2", ip, 2, "a/b", "not allowed"},
		{"empty prefix", 1, "0a:00:00:00:11:d2", ip, 2, "", "empty node name prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PlanNodes(tc.count, tc.mac, tc.ip, tc.start, tc.prefix)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestCheckOverlap(t *testing.T) {
	existing := []Node{seedNode1(), seedNode2()}
	planned, _ := PlanNodes(2, "0a:00:00:00:11:d3", netip.MustParseAddr("192.168.64.143"), 3, "ssi")
	if err := CheckOverlap(existing, planned); err != nil {
		t.Errorf("no overlap: %v", err)
	}
	clash := planned[1]
	clash.HWAddr = "0a:00:00:00:11:d2"
	err := CheckOverlap(existing, []Node{planned[0], clash})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"planned node 4 (ssi4, 0a:00:00:00:11:d2", "same MAC address as existing node 2 (ssi2"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	// Within the plan, and several at once.
	dup := planned[0]
	dup.Num = 9
	dup.Name = "ssi9"
	err = CheckOverlap(nil, []Node{planned[0], dup, seedNode1(), seedNode1()})
	msg = err.Error()
	for _, want := range []string{
		"planned node 9 (ssi9, 0a:00:00:00:11:d3, 192.168.64.143) has the same MAC address as planned node 3",
		"planned node 9 (ssi9, 0a:00:00:00:11:d3, 192.168.64.143) has the same IP address as planned node 3",
		"same node number as planned node 1",
		"same name as planned node 1",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "node 9 (ssi9, 0a:00:00:00:11:d3, 192.168.64.143) has the same name") {
		t.Errorf("false clash reported: %s", msg)
	}
}

func bulkNodes(t *testing.T) []Node {
	nodes, err := PlanNodes(3, "0a:00:00:00:11:d2", netip.MustParseAddr("192.168.64.142"), 2, "ssi")
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func TestProvisionBulk(t *testing.T) {
	requireTools(t, "mkswap")
	dir := filepath.Join(t.TempDir(), "ssi")
	nodes := bulkNodes(t)
	o := seedOptions()
	o.ImagesDir = ""
	files, err := ProvisionBulk(context.Background(), dir, nodes, o, 16<<20, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 6 {
		t.Errorf("created %q", files)
	}
	for _, n := range nodes {
		if last, label := swapHeader(t, SwapImagePath(dir, n)); last != 16<<20/4096-1 || label != SwapLabel {
			t.Errorf("%s swap: %d %q", n.Name, last, label)
		}
		b, err := os.ReadFile(ConfigPath(dir, n, FormatXL))
		if err != nil {
			t.Fatal(err)
		}
		s, err := parseXL(string(b))
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := xlGet(s, "disk"); len(v.items) != 1 || v.items[0].str != "file:"+SwapImagePath(dir, n)+",hda2,w" {
			t.Errorf("%s disk = %+v", n.Name, v)
		}
	}
	want := []string{dir, dir + "/configs", dir + "/configs/ssi2.cfg", dir + "/configs/ssi3.cfg", dir + "/configs/ssi4.cfg",
		dir + "/node2", dir + "/node2/ssi2_swap.img", dir + "/node3", dir + "/node3/ssi3_swap.img", dir + "/node4", dir + "/node4/ssi4_swap.img"}
	assertTree(t, dir, want)

	// Again without force: refused before anything is touched.
	if _, err := ProvisionBulk(context.Background(), dir, nodes, o, 16<<20, false, nil); !errors.Is(err, ErrExists) {
		t.Errorf("second run: %v", err)
	}
	assertTree(t, dir, want)
	// With force, in QEMU format: swaps replaced, scripts added.
	o.Format = FormatQEMU
	if _, err := ProvisionBulk(context.Background(), dir, nodes, o, 8<<20, true, nil); err != nil {
		t.Fatal(err)
	}
	if last, _ := swapHeader(t, SwapImagePath(dir, nodes[0])); last != 8<<20/4096-1 {
		t.Errorf("swap not replaced")
	}
	if _, err := os.Stat(dir + "/configs/ssi3.qemu"); err != nil {
		t.Error(err)
	}
}

func TestProvisionBulkAllOrNothing(t *testing.T) {
	requireTools(t, "mkswap")
	ctx := context.Background()
	nodes := bulkNodes(t)
	o := GuestOptions{}

	t.Run("existing file", func(t *testing.T) {
		root := t.TempDir()
		dir := filepath.Join(root, "ssi")
		if err := os.MkdirAll(dir+"/configs", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir+"/configs/ssi4.cfg", []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := tree(t, root)
		_, err := ProvisionBulk(ctx, dir, nodes, o, 8<<20, false, nil)
		if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "ssi4.cfg") {
			t.Errorf("err = %v", err)
		}
		assertTree(t, root, before)
	})

	t.Run("bad input", func(t *testing.T) {
		root := t.TempDir()
		bad := append([]Node(nil), nodes...)
		bad[2].HWAddr = bad[0].HWAddr
		if _, err := ProvisionBulk(ctx, filepath.Join(root, "ssi"), bad, o, 8<<20, false, nil); !errors.Is(err, ErrConflict) {
			t.Errorf("duplicate MAC: %v", err)
		}
		if _, err := ProvisionBulk(ctx, filepath.Join(root, "ssi"), nodes, o, 100, false, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("bad size: %v", err)
		}
		if _, err := ProvisionBulk(ctx, filepath.Join(root, "ssi"), nodes, GuestOptions{ExtraArgs: "a\nb"}, 8<<20, false, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("bad options: %v", err)
		}
		assertTree(t, root, []string{root})
	})

	t.Run("tool fails on the third node", func(t *testing.T) {
		mkswap, _ := FindTool("mkswap")
		counter := filepath.Join(t.TempDir(), "count")
		fakeTools(t, map[string]string{"mkswap": `n=0; [ -f ` + counter + ` ] && read n < ` + counter + `; n=$((n+1)); echo $n > ` + counter + `
[ $n -lt 3 ] || { echo "fake mkswap: disk full" >&2; exit 1; }
exec ` + mkswap + ` "$@"`})
		root := t.TempDir()
		_, err := ProvisionBulk(ctx, filepath.Join(root, "a", "ssi"), nodes, o, 8<<20, false, nil)
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("err = %v", err)
		}
		assertTree(t, root, []string{root})
	})

	t.Run("cancelled", func(t *testing.T) {
		root := t.TempDir()
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := ProvisionBulk(cctx, filepath.Join(root, "ssi"), nodes, o, 8<<20, false, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
		assertTree(t, root, []string{root})
	})
}
