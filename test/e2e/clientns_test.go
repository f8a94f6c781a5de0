package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// clientNamespace adds network namespace name to the bridge of the
// --isolate cluster whose names start with prefix, like any machine of the
// network, with address addr on its eth0 (its bridge port: prefix+port).
// The name should start with the prefix, so ssi down removes it too; the
// cleanup removes it first (registered after ssi down's, it runs before).
func clientNamespace(t *testing.T, prefix, name, port string, addr netip.Prefix) {
	t.Helper()
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	for _, a := range [][]string{
		{"netns", "add", name},
		{"link", "add", prefix + port, "type", "veth", "peer", "name", "eth0", "netns", name},
		{"link", "set", prefix + port, "netns", prefix + "-br"},
		{"-n", prefix + "-br", "link", "set", prefix + port, "master", "br0", "up"},
		{"-n", name, "link", "set", "lo", "up"},
		{"-n", name, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", a...).CombinedOutput(); err != nil {
			t.Fatalf("client namespace: ip %v: %v: %s", a, err, out)
		}
	}
}

// startPiped starts cmd with pipes to its stdin and from its stdout; the
// cleanup ends it.
func startPiped(t *testing.T, cmd *exec.Cmd) (io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return in, bufio.NewScanner(out)
}

// nodePrivateFile is the path of a file that exists only in node k's
// mount namespace (on a tmpfs mounted there): a job of node k that holds
// it open cannot be restored on another node.
func nodePrivateFile(t *testing.T, c *Cluster, k int) string {
	t.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("ssi-migrate-private-%d", rand.IntN(1<<30)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	node := strconv.Itoa(c.PID(k))
	if out, err := exec.Command("nsenter", "-t", node, "-m", "sh", "-c", "mount -t tmpfs none "+dir+" && echo x > "+dir+"/f").CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs in node %d's namespace: %v\n%s", k, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("nsenter", "-t", node, "-m", "umount", "-l", dir).Run() })
	return dir + "/f"
}

// isolateSubnet is the private network of the --isolate cluster in dir.
func isolateSubnet(t *testing.T, dir string) netip.Prefix {
	t.Helper()
	var iso struct {
		Subnet netip.Prefix `json:"subnet"`
	}
	b, _ := os.ReadFile(dir + "/isolate.json")
	if err := json.Unmarshal(b, &iso); err != nil {
		t.Fatalf("isolate.json: %v", err)
	}
	return iso.Subnet
}
