package e2e

import (
	"net/netip"
	"os/exec"
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
