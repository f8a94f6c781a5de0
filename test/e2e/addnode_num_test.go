package e2e

import (
	"bufio"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// The name prompt of ssi-addnode offers the number the cluster will really
// assign: its next-number counter, which does not go back when the highest
// node is removed (numbers are not reused), not the highest number plus one.
func TestAddnodePromptShowsTheAssignedNumber(t *testing.T) {
	c := StartCluster(t, 1)
	c.MustCLI(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:89:02", "--ipaddr", c.IP(20), "--nodename", "two")
	c.MustCLI(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:89:03", "--ipaddr", c.IP(21), "--nodename", "three")
	c.WaitState([]int{1}, 3, "NEVERUP", 10*time.Second) // registered, never joined: removable
	c.MustCLI(1, "ssi", "rmnode", "3")
	if ns, raw := c.Nodes(1); len(ns) != 2 {
		t.Fatalf("after rmnode 3: %s", raw)
	}

	cmd := c.cliCmd(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:89:04", "--ipaddr", c.IP(22))
	ptmx, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	r := bufio.NewReader(ptmx)
	prompt := readUntil(t, r, "]: ", 15*time.Second)
	m := regexp.MustCompile(`Enter a name for node (\d+) \[(\w+)\]: $`).FindStringSubmatch(prompt)
	if m == nil {
		t.Fatalf("prompt %q", prompt)
	}
	offered, def := m[1], m[2]
	ptmx.Write([]byte("\r")) // take the default
	out := readUntil(t, r, "token", 15*time.Second)
	cmd.Wait()
	a := regexp.MustCompile(`node (\d+) (\S+) 0a:00:00:00:89:04`).FindStringSubmatch(out)
	if a == nil {
		t.Fatalf("output after the prompt: %q", out)
	}
	if a[1] != offered || a[2] != def {
		t.Errorf("the prompt offered node %s named %s; the cluster registered node %s named %s", offered, def, a[1], a[2])
	}
	if offered != "4" || def != "demo4" {
		t.Errorf("the prompt offered node %s [%s], want 4 [demo4]: node 3 was removed and numbers are not reused", offered, def)
	}
	num, _ := strconv.Atoi(a[1])
	if ns, raw := c.Nodes(1); ns[uint32(num)].Name != a[2] || ns[uint32(num)].HWAddr != "0a:00:00:00:89:04" {
		t.Errorf("node table after the prompt: %s", raw)
	}
}

// readUntil reads r until what it read ends with (or contains) suffix, or
// fails the test after timeout.
func readUntil(t *testing.T, r *bufio.Reader, suffix string, timeout time.Duration) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var b strings.Builder
		for {
			ch, err := r.ReadByte()
			if err != nil {
				got <- b.String() + fmt.Sprintf(" [%v]", err)
				return
			}
			b.WriteByte(ch)
			if strings.HasSuffix(b.String(), suffix) {
				got <- b.String()
				return
			}
		}
	}()
	select {
	case s := <-got:
		if !strings.Contains(s, suffix) {
			t.Fatalf("the terminal ended before %q: %q", suffix, s)
		}
		return s
	case <-time.After(timeout):
		t.Fatalf("no %q on the terminal within %v", suffix, timeout)
		return ""
	}
}
