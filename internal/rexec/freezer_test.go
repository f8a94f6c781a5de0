package rexec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFreezer(t *testing.T) {
	v2 := t.TempDir()
	os.MkdirAll(filepath.Join(v2, "init.scope"), 0o755)
	const v1mi = "35 25 0:30 / /sys/fs/cgroup/freezer rw,relatime shared:15 - cgroup cgroup rw,freezer\n"
	v2mi := "36 25 0:31 / " + strings.ReplaceAll(v2, " ", `\040`) + " rw,relatime shared:16 - cgroup2 cgroup2 rw\n"
	const other = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n37 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"

	if d, err := freezer(other+v2mi+v1mi, "0::/\n"); err != nil || d != "cgroup v1 freezer at /sys/fs/cgroup/freezer" {
		t.Errorf("v1 and v2: %q, %v", d, err)
	}
	if _, err := freezer(other, "0::/\n"); err == nil {
		t.Errorf("no freezer mounted: no error")
	}
	// v2 without cgroup.freeze anywhere (kernel < 5.2).
	if _, err := freezer(other+v2mi, "0::/init.scope\n"); err == nil {
		t.Errorf("v2 without cgroup.freeze: no error")
	}
	os.WriteFile(filepath.Join(v2, "init.scope", "cgroup.freeze"), []byte("0\n"), 0o644)
	for _, own := range []string{"0::/init.scope\n", "0::/\n"} {
		if d, err := freezer(other+v2mi, own); err != nil || d != "cgroup v2 at "+v2+" (cgroup.freeze)" {
			t.Errorf("v2, own cgroup %q: %q, %v", own, d, err)
		}
	}
	// This machine's (ssi doctor reports it; internal/rexec's tests need one).
	d, err := Freezer()
	t.Logf("this machine: %q, %v", d, err)
}
