package netboot

import (
	"net/netip"
	"testing"

	"github.com/ssi-cluster/ssi/internal/provision"
)

// TestProvisionedCmdlineBoots: the kernel command line ssi xen-config
// writes into a QEMU script (ssi.server= for every guest, the node's
// ssi.token= with --with-token, as internal/cli builds them, after root=
// and console=) is what the boot flow reads.
func TestProvisionedCmdlineBoots(t *testing.T) {
	n := provision.Node{Num: 2, Name: "ssi2", HWAddr: "0a:00:00:00:11:d2", IPAddr: netip.MustParseAddr("192.168.64.142")}
	argv, err := provision.QEMUCommand(n, provision.GuestOptions{
		ExtraArgs: "ssi.server=192.168.64.141:7470 panic=-1",
		NodeArgs:  map[int]string{2: "ssi.token=" + testToken},
	})
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for i, a := range argv {
		if a == "-append" && i+1 < len(argv) {
			line = argv[i+1]
		}
	}
	p, err := ParseCmdline(line)
	if err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if p.Server != "192.168.64.141:7470" || p.Token != testToken || p.Init != DefaultInit {
		t.Fatalf("%q read as %+v", line, p)
	}
}
