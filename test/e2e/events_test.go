package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// ssi events: the history in text and JSON, the same on every node, and
// -f printing a node's DOWN and its return as they happen.
func TestEventsFollow(t *testing.T) {
	c := StartCluster(t, 3)
	text := c.MustCLI(2, "ssi", "events")
	for k := 1; k <= 3; k++ {
		if !strings.Contains(text, fmt.Sprintf("node %d (demo%d)", k, k)) || !strings.Contains(text, "COMINGUP -> UP") {
			t.Fatalf("ssi events on node 2 lacks node %d's transitions:\n%s", k, text)
		}
	}
	if a, b := c.MustCLI(1, "ssi", "events", "--json"), c.MustCLI(3, "ssi", "events", "--json"); a != b {
		t.Fatalf("nodes 1 and 3 tell different histories:\n%s\n---\n%s", a, b)
	}
	if out := c.MustCLI(1, "ssi", "events", "-n", "2"); strings.Count(out, "\n") != 2 {
		t.Fatalf("ssi events -n 2 printed:\n%s", out)
	}
	if r := c.CLI(1, "ssi", "events", "-n", "9999"); r.Code != 2 {
		t.Fatalf("ssi events -n 9999: %v", r)
	}

	type ev struct {
		Index  uint64 `json:"index"`
		Kind   string `json:"kind"`
		Node   uint32 `json:"node"`
		From   string `json:"from"`
		To     string `json:"to"`
		Reason string `json:"reason"`
	}
	f := exec.Command(ssiBin, "events", "-f", "--json")
	f.Env = append(os.Environ(), "SSI_SOCKET="+c.Socket(1))
	out, err := f.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Process.Kill() })
	lines := make(chan ev, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e ev
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Errorf("ssi events --json printed %q: %v", sc.Text(), err)
				continue
			}
			lines <- e
		}
		close(lines)
	}()
	var last uint64
	wait := func(what string, match func(ev) bool) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case e, ok := <-lines:
				if !ok {
					t.Fatalf("ssi events -f ended before %s", what)
				}
				if e.Index < last {
					t.Fatalf("events out of order: %d after %d", e.Index, last)
				}
				last = e.Index
				if match(e) {
					return
				}
			case <-deadline:
				t.Fatalf("ssi events -f printed no %s", what)
			}
		}
	}
	wait("history", func(e ev) bool { return e.Node == 3 && e.To == "UP" })
	c.Kill(3)
	wait("DOWN of node 3", func(e ev) bool {
		return e.Kind == "membership" && e.Node == 3 && e.From == "UP" && e.To == "DOWN" && e.Reason != ""
	})
	c.StartDaemon(3)
	wait("return of node 3", func(e ev) bool { return e.Node == 3 && e.To == "UP" })
	// Interrupted, it exits 0.
	_ = f.Process.Signal(os.Interrupt)
	for range lines { // until its output ends
	}
	if err := f.Wait(); err != nil {
		t.Fatalf("ssi events -f after SIGINT: %v", err)
	}
}
