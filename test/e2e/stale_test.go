package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// A node that has just started answers reads only once it has applied the
// log it had: until then `cluster` exits 255 saying it is catching up
// (it once answered "0 nodes, leader node 0" with exit 0), and
// `--stale` shows what it has. Every answer with exit 0 is the whole table.
func TestRestartedNodeDoesNotAnswerWithAPartialTable(t *testing.T) {
	c := StartCluster(t, 3)
	for i := 0; i < 6; i++ {
		c.MustCLI(1, "ssi-addnode", "--hwaddr", fmt.Sprintf("0a:00:00:00:77:%02x", i), "--ipaddr", c.IP(70+i))
	}
	want := 9
	for round := 0; round < 3; round++ {
		c.Kill(3)
		c.StartDaemon(3)
		catching, full := 0, 0
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			r := c.CLI(3, "cluster", "--json")
			if r.Code == 0 {
				var ns []NodeJSON
				if err := json.Unmarshal([]byte(r.Stdout), &ns); err != nil {
					continue // the socket is not there yet: the daemon is starting
				}
				if len(ns) != want {
					t.Fatalf("round %d: node 3 answered with exit 0 and %d rows, want all %d", round, len(ns), want)
				}
				full++
				break
			}
			if strings.Contains(r.Stderr, "catching up") {
				catching++
				if s := c.CLI(3, "cluster", "--json", "--stale"); s.Code != 0 {
					t.Errorf("cluster --stale while catching up: %v", s)
				}
			}
		}
		if full == 0 {
			t.Fatalf("round %d: node 3 never answered with the whole table", round)
		}
		t.Logf("round %d: %d answers said the node was catching up before the full table", round, catching)
	}
	if out := c.MustCLI(1, "cluster", "-V"); !strings.Contains(out, "leader node") {
		t.Errorf("cluster -V: %s", out)
	}
}
