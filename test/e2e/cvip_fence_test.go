package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A director cut off from the majority (blackhole routes both ways, the
// clients still on its side of nothing: the bridge reaches every node)
// lets go of its VIP once it has known no leader for 5 s, while the
// majority's new director serves it. When the cut heals the old director
// does not take the address back: before it directs again it catches up
// with the leader, whose state names the new director.
func TestCvipFence(t *testing.T) {
	e := startCvip(t, 3)
	vip := e.addr(210).String()
	key, url := vip+":80/tcp", "http://"+vip+"/"
	e.serve(2)
	e.serve(3)
	e.MustCLI(1, "ssi", "cvip", "add", vip+":80", "--nodes", "2,3", "--target-port", "8080")
	dir := e.ready(2, key, "nftables", 2, 3)
	holds := func(k uint32) bool {
		out, _ := exec.Command("ip", "-n", fmt.Sprintf("%s-n%d", e.prefix, k), "addr", "show", "dev", "eth0").Output()
		return strings.Contains(string(out), " "+vip+"/32")
	}
	if !holds(dir) {
		t.Fatalf("the director, node %d, does not hold %s", dir, vip)
	}
	var view int
	var healthy []uint32
	for k := uint32(1); k <= 3; k++ {
		if k != dir {
			view = int(k)
			if k != 1 {
				healthy = append(healthy, k)
			}
		}
	}

	heal := cutOff(t, e.prefix, e.subnet, int(dir), 3)
	cut := time.Now()
	Eventually(t, 20*time.Second, func() string {
		if holds(dir) {
			return fmt.Sprintf("node %d, cut off, still holds %s", dir, vip)
		}
		return ""
	})
	t.Logf("the cut-off director let go of the VIP %v after the cut", time.Since(cut).Round(100*time.Millisecond))
	newDir := e.ready(view, key, "nftables", healthy...)
	if newDir == dir {
		t.Fatalf("node %d still directs after it was cut off", dir)
	}
	Eventually(t, 15*time.Second, func() string {
		if got := e.get(url, 10); got["error"] != 0 {
			return fmt.Sprintf("through the new director, node %d: %v", newDir, got)
		}
		return ""
	})

	heal()
	// The old director hears the leader again within a second or two;
	// for a while after that it must never hold the address.
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if holds(dir) {
			t.Fatalf("node %d took %s back after the cut healed (node %d directs it)", dir, vip, newDir)
		}
	}
	if !holds(newDir) {
		t.Errorf("the new director, node %d, no longer holds %s", newDir, vip)
	}
	if got := e.get(url, 20); got["error"] != 0 {
		t.Errorf("after the heal: %v", got)
	}
	b, _ := os.ReadFile(filepath.Join(e.Dir, fmt.Sprintf("node%d", dir), "ssi.log"))
	for _, want := range []string{"letting go of the VIPs", "caught up"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("node %d's log does not say %q", dir, want)
		}
	}
}
