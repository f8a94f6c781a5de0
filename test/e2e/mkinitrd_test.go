package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ssi-cluster/ssi/internal/netboot"
)

// TestMkinitrd drives ssi mkinitrd through the real CLI: bad input is
// refused with the usual exit codes and writes nothing; a static ssi gives
// an archive the kernel can unpack with that binary as /init. Booting it
// is TestNetbootVM's (make test-vm).
func TestMkinitrd(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "initrd")
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-o", out}, 1, "not a static binary"}, // the e2e binary is built with -race (cgo)
		{[]string{"-o", out, "--kernel-modules", filepath.Join(dir, "none")}, 2, "not a directory"},
		{[]string{"-o", out, "--modules", "fuse"}, 2, "--modules needs --kernel-modules"},
		{[]string{"--images", filepath.Join(dir, "none")}, 1, "ssi images init"},
		{[]string{"-o", out, "stray"}, 2, "unexpected argument"},
	} {
		r := run(t, nil, "", "ssi", append([]string{"mkinitrd"}, c.args...)...)
		if r.Code != c.code || !strings.Contains(r.Stderr, c.msg) {
			t.Errorf("mkinitrd %v: want exit %d and %q, got %v", c.args, c.code, c.msg, r)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("mkinitrd %v left %s", c.args, out)
		}
	}

	static := filepath.Join(dir, "ssi-static")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", static, "../../cmd/ssi")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v: %s", err, b)
	}
	if err := os.MkdirAll(filepath.Join(dir, "img", "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The static ssi builds its own image: the e2e binary, built with the
	// race detector, compresses 26 MB too slowly for run's time limit.
	b, err := exec.Command(static, "mkinitrd", "--images", filepath.Join(dir, "img")).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "/init = "+static) {
		t.Fatalf("mkinitrd: %v: %s", err, b)
	}
	img := filepath.Join(dir, "img", "boot", "initrd")
	if r := run(t, nil, "", "ssi", "mkinitrd", "-o", filepath.Join(dir, "other"), "--binary", "/bin/ls"); r.Code != 1 || !strings.Contains(r.Stderr, "static") {
		t.Errorf("a dynamic --binary: %v", r)
	}
	if r := run(t, nil, "", "ssi", "mkinitrd", "--images", filepath.Join(dir, "img"), "--binary", static); r.Code != 1 || !strings.Contains(r.Stderr, "--force") {
		t.Errorf("replaced without --force: %v", r)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := netboot.ReadImage(f)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(static)
	found := false
	for _, rec := range recs {
		if rec.Name == "init" {
			b, _ := netboot.RecordData(rec)
			found = bytes.Equal(b, want) && rec.Mode&0o111 != 0
		}
	}
	if !found {
		t.Error("the archive has no executable /init equal to the static ssi")
	}
}

// TestVMBadInput: ssi vm refuses bad input before it creates anything
// (booting is TestNetbootVM's, make test-vm).
func TestVMBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"up", "--nodes", "0", "--dir", dir}, 2, "--nodes"},
		{[]string{"up", "--kernel", "/boot/x", "--dir", dir}, 2, "go together"},
		{[]string{"up", "--memory", "64", "--dir", dir}, 2, "--memory"},
		{[]string{"down", "--dir", dir}, 1, "no virtual nodes"},
		{[]string{"sideways"}, 2, ""},
	} {
		r := run(t, nil, "", "ssi", append([]string{"vm"}, c.args...)...)
		if r.Code != c.code || !strings.Contains(r.Stderr, c.msg) {
			t.Errorf("vm %v: want exit %d and %q, got %v", c.args, c.code, c.msg, r)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bad input left %v", ents)
	}
}
