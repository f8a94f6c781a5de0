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

// tryHello is hello that returns the failure instead of failing the test.
func (e *jobNetEnv) tryHello(addr string) string {
	out, err := exec.Command("ip", "netns", "exec", e.client, e.echo, "hello", addr).CombinedOutput()
	if err != nil {
		return "error: " + strings.TrimSpace(string(out))
	}
	return strings.TrimSpace(string(out))
}

// A node cut off from the majority takes its --net jobs' links down once
// it has known no leader for 5 s, so that the address the majority gives
// again (once the node has been DOWN 15 s) answers for one job only.
// First a short cut: the job goes unreachable, and comes back with its
// address when the cut heals. Then a long one: the address goes to a new
// job on node 2 (a pool of one address), and after the heal the first
// job's link stays down: every connection reaches the new job.
func TestJobNetFence(t *testing.T) {
	e := startJobNet(t)
	e.via = 1
	if leaderOf(t, e.Cluster, 1).Num == 3 {
		// Node 3 is the one cut off; the test reads the majority's view.
		e.via = 2
	}
	only := e.host(1, 1).String()
	e.MustCLI(e.via, "ssi", "net", "pool", only+"-"+only)
	job := e.serve(3)
	addr := only + ":7000"
	if got := e.hello(addr); got != "hello 1" {
		t.Fatalf("first connection to %s: %q", addr, got)
	}

	t.Log("cutting node 3 off (short)")
	heal := cutOff(t, e.prefix, e.subnet, 3, 3)
	Eventually(t, 30*time.Second, func() string {
		if got := e.tryHello(addr); !strings.HasPrefix(got, "error") {
			return fmt.Sprintf("the job on the cut-off node still answers: %q", got)
		}
		return ""
	})
	heal()
	t.Log("healed")
	Eventually(t, 30*time.Second, func() string {
		if got := e.tryHello(addr); !strings.HasPrefix(got, "hello ") {
			return fmt.Sprintf("after the heal the job does not answer: %q", got)
		}
		return ""
	})
	if ip, _, node := e.addrOf(job); ip != only || node != 3 {
		t.Fatalf("after a short cut the job holds %q on node %d, want %s on node 3", ip, node, only)
	}

	t.Log("cutting node 3 off (long)")
	heal = cutOff(t, e.prefix, e.subnet, 3, 3)
	e.WaitState([]int{e.via}, 3, "DOWN", 30*time.Second)
	Eventually(t, 60*time.Second, func() string {
		if ip, _, _ := e.addrOf(job); ip != "" {
			return fmt.Sprintf("the DOWN node's job still holds %s", ip)
		}
		return ""
	})
	second := e.serve(2)
	if ip, _, _ := e.addrOf(second); ip != only {
		t.Fatalf("the new job got %q, want the only address %s", ip, only)
	}
	if got := e.hello(addr); got != "hello 1" {
		t.Errorf("the address now: %q, want the new job's first connection", got)
	}
	heal() // node 3 hears the leader again
	Eventually(t, 30*time.Second, func() string {
		b, _ := os.ReadFile(filepath.Join(e.Dir, "node3", "ssi.log"))
		if !strings.Contains(string(b), "address was given to another job") {
			return "node 3 has not said that its job's address went to another job"
		}
		return ""
	})
	for i := 2; i <= 6; i++ {
		if got, want := e.tryHello(addr), fmt.Sprintf("hello %d", i); got != want {
			t.Errorf("connection %d to %s after the heal: %q, want %q (the new job's; the old one's link must stay down)", i, addr, got, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
