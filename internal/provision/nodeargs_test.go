package provision

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Per-node kernel arguments (each node's join token) go only into that
// node's configuration, after the shared ones; configurations holding
// them can be written readable by their owner only.
func TestNodeArgsAndPrivateConfigs(t *testing.T) {
	o := seedOptions()
	o.ExtraArgs = "ssi.server=192.168.64.141:7470"
	o.NodeArgs = map[int]string{2: "ssi.token=SSI1-two"}
	for f, frag := range map[Format]string{
		FormatXL:      `extra = "ssi.server=192.168.64.141:7470 ssi.token=SSI1-two"`,
		FormatQEMU:    `ssi.server=192.168.64.141:7470 ssi.token=SSI1-two'`,
		FormatLibvirt: `ssi.server=192.168.64.141:7470 ssi.token=SSI1-two</cmdline>`,
	} {
		two, err := RenderConfig(seedNode2(), o, f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(two), frag) {
			t.Errorf("%s configuration of node 2 lacks %q:\n%s", f, frag, two)
		}
		one, err := RenderConfig(seedNode1(), o, f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(one), "SSI1-two") {
			t.Errorf("node 2's token is in node 1's %s configuration:\n%s", f, one)
		}
	}
	o.NodeArgs[2] = "ssi.token=a\nb"
	if _, err := XLConfig(seedNode2(), o); !errors.Is(err, ErrInvalid) {
		t.Errorf("a newline in a node's arguments: %v", err)
	}

	if _, err := FindTool("mkswap"); err != nil {
		t.Skipf("skipped the file part: %v", err)
	}
	dir := t.TempDir()
	o.NodeArgs[2] = "ssi.token=SSI1-two"
	o.ImagesDir = ""
	for _, private := range []bool{false, true} {
		o.Private = private
		for _, f := range Formats {
			o.Format = f
			p, err := WriteConfig(dir, seedNode2(), o, true)
			if err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(p)
			want := os.FileMode(0o644)
			if f == FormatQEMU {
				want = 0o755
			}
			if private {
				want &= 0o700
			}
			if fi.Mode().Perm() != want {
				t.Errorf("%s private=%v: mode %v, want %v", f, private, fi.Mode().Perm(), want)
			}
		}
	}
	o.Format, o.Private = FormatXL, true
	bulk := filepath.Join(dir, "bulk")
	files, err := ProvisionBulk(context.Background(), bulk, []Node{seedNode2()}, o, 1<<20, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if fi, _ := os.Stat(f); fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is readable by others: %v", f, fi.Mode().Perm())
		}
	}
}
