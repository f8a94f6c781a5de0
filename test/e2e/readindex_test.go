package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// A read is never older than a change acknowledged before it began, on
// whichever node it is made (linearizable reads: the node waits for the
// leader's read index). Before, a follower answered from whatever it had
// applied: a registration acknowledged by one node was missing from
// another node's table a few milliseconds later (issue 10, found by the
// robustness suite).
func TestReadAfterAcknowledgedWriteSeesIt(t *testing.T) {
	c := StartCluster(t, 3)
	for i := 0; i < 30; i++ {
		w, r := 1+i%3, 1+(i+1)%3
		mac := fmt.Sprintf("0a:00:00:00:77:%02x", i)
		c.MustCLI(w, "ssi-addnode", "--hwaddr", mac, "--ipaddr", fmt.Sprintf("10.77.0.%d", i+1), "--nodename", fmt.Sprintf("ri%d", i))
		out := c.MustCLI(r, "cluster", "-V", "--json")
		if !strings.Contains(out, mac) {
			t.Fatalf("node %d's table, read after node %d acknowledged %s, does not have it:\n%s", r, w, mac, out)
		}
		on := map[bool]string{true: "on", false: "off"}[i%2 == 0]
		c.MustCLI(w, "loadlevel", "-a", on)
		if got := c.MustCLI(r, "loadlevel"); !strings.HasPrefix(got, "load leveling: "+on+" ") {
			t.Fatalf("node %d says %q right after node %d set load leveling %s", r, got, w, on)
		}
	}
	// Without a quorum a read says it cannot confirm the table is current
	// (exit 255) instead of answering an old one; --stale answers it.
	c.Kill(1)
	c.Kill(2)
	if r := c.CLI(3, "cluster", "-V"); r.Code != 255 || !strings.Contains(r.Stderr, "--stale") {
		t.Errorf("read without quorum: %v", r)
	}
	if r := c.CLI(3, "cluster", "-V", "--stale"); r.Code != 0 || !strings.Contains(r.Stdout, "ri29") {
		t.Errorf("stale read without quorum: %v", r)
	}
}
