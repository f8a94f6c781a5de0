package e2e

import (
	"bufio"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// ssi-addnode without --nodename on a terminal asks for the name, offering
// <prefix><num>; the answer is what gets registered.
func TestAddnodePromptsForNameOnATerminal(t *testing.T) {
	c := StartCluster(t, 1)
	cmd := c.cliCmd(1, "ssi-addnode", "--hwaddr", "0a:00:00:00:88:01", "--ipaddr", c.IP(9))
	ptmx, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	r := bufio.NewReader(ptmx)
	prompt := make(chan string, 1)
	go func() {
		var b strings.Builder
		for {
			ch, err := r.ReadByte()
			if err != nil {
				prompt <- b.String()
				return
			}
			b.WriteByte(ch)
			if strings.HasSuffix(b.String(), "]: ") {
				prompt <- b.String()
				return
			}
		}
	}()
	select {
	case p := <-prompt:
		if !strings.Contains(p, "Enter a name for node 2 [demo2]: ") {
			t.Fatalf("prompt %q", p)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no prompt")
	}
	ptmx.Write([]byte("webfront\r"))
	rest := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
		}
		rest <- b.String()
	}()
	cmd.Wait()
	select {
	case out := <-rest:
		if !strings.Contains(out, "node 2 webfront 0a:00:00:00:88:01") {
			t.Errorf("output after the prompt:\n%s", out)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no output after answering")
	}
	ns, raw := c.Nodes(1)
	if ns[2].Name != "webfront" {
		t.Errorf("registered name: %s", raw)
	}
}
