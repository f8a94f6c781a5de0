package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
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
	build := exec.Command("go", "build", "-o", static, "../../cmd/ssi")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v: %s", err, b)
	}
	if err := os.MkdirAll(filepath.Join(dir, "img", "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "", "ssi", "mkinitrd", "--images", filepath.Join(dir, "img"), "--binary", static)
	if r.Code != 0 || !strings.Contains(r.Stdout, "/init = "+static) {
		t.Fatalf("mkinitrd: %v", r)
	}
	img := filepath.Join(dir, "img", "boot", "initrd")
	if r := run(t, nil, "", "ssi", "mkinitrd", "--images", filepath.Join(dir, "img"), "--binary", static); r.Code != 1 || !strings.Contains(r.Stderr, "--force") {
		t.Errorf("replaced without --force: %v", r)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(static)
	found := false
	for _, rec := range recs {
		if rec.Name == "init" {
			b, _ := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
			found = bytes.Equal(b, want) && rec.Mode&0o111 != 0
		}
	}
	if !found {
		t.Error("the archive has no executable /init equal to the static ssi")
	}
}
