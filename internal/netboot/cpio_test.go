package netboot

import (
	"bytes"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func readImage(t *testing.T, b []byte) []cpio.Record {
	t.Helper()
	recs, err := ReadImage(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func content(t *testing.T, r cpio.Record) string {
	b, err := RecordData(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestImage(t *testing.T) {
	im := NewImage()
	for _, err := range []error{
		im.File("a/b/c.txt", []byte("hello"), 0o600),
		im.Dir("a", 0o700), // after a file in it: once, with this mode
		im.Dir("/a/b/", 0o755),
		im.Symlink("bin/x", "/a/b/c.txt"),
		im.CharDev("dev/console", 0o600, 5, 1),
		im.File("a/b/c.txt", []byte("replaced"), 0o644),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := im.File("a", nil, 0o644); err == nil {
		t.Error("a file replaced a directory")
	}
	if err := im.Dir("a/b/c.txt", 0o755); err == nil {
		t.Error("a directory replaced a file")
	}
	for _, bad := range []string{"", "/", "..", "a\x00b"} {
		if err := im.File(bad, nil, 0o644); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
	b, err := im.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	recs := readImage(t, b)
	seen := map[string]cpio.Record{}
	inos := map[uint64]bool{}
	for _, r := range recs {
		if _, dup := seen[r.Name]; dup {
			t.Fatalf("%s twice", r.Name)
		}
		if d := path.Dir(r.Name); d != "." {
			if p, ok := seen[d]; !ok || p.Mode&cpio.S_IFMT != cpio.S_IFDIR {
				t.Errorf("%s comes before its directory %s", r.Name, d)
			}
		}
		if inos[r.Ino] {
			t.Errorf("%s shares inode %d", r.Name, r.Ino)
		}
		inos[r.Ino] = true
		if r.UID != 0 || r.GID != 0 || r.MTime != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d, want 0", r.Name, r.UID, r.GID, r.MTime)
		}
		seen[r.Name] = r
	}
	want := map[string]uint64{"a": cpio.S_IFDIR | 0o700, "a/b": cpio.S_IFDIR | 0o755, "a/b/c.txt": cpio.S_IFREG | 0o644,
		"bin": cpio.S_IFDIR | 0o755, "bin/x": cpio.S_IFLNK | 0o777, "dev": cpio.S_IFDIR | 0o755, "dev/console": cpio.S_IFCHR | 0o600}
	if len(seen) != len(want) {
		t.Errorf("records %v, want %v", im.Names(), want)
	}
	for n, m := range want {
		if seen[n].Mode != m {
			t.Errorf("%s: mode %o, want %o", n, seen[n].Mode, m)
		}
	}
	if c := content(t, seen["a/b/c.txt"]); c != "replaced" {
		t.Errorf("content %q", c)
	}
	if c := content(t, seen["bin/x"]); c != "/a/b/c.txt" {
		t.Errorf("link target %q", c)
	}
	if r := seen["dev/console"]; r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("console %d:%d", r.Rmajor, r.Rminor)
	}
	b2, _ := im.Bytes()
	if !bytes.Equal(b, b2) {
		t.Error("the same image gave different bytes")
	}
}

// staticELF links an empty object into a static executable (no PT_INTERP).
func staticELF(t *testing.T) string {
	dir := t.TempDir()
	obj, bin := filepath.Join(dir, "x.o"), filepath.Join(dir, "ssi")
	if out, err := exec.Command("cc", "-c", "-x", "c", "/dev/null", "-o", obj).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v: %s", err, out)
	}
	if out, err := exec.Command("ld", "-static", "-e", "0", "-o", bin, obj).CombinedOutput(); err != nil {
		t.Fatalf("ld: %v: %s", err, out)
	}
	return bin
}

func TestBuild(t *testing.T) {
	bin := staticELF(t)
	tree := fakeTree(t)
	out := filepath.Join(t.TempDir(), "initrd")
	res, err := Write(out, false, Options{Binary: bin, ModuleDir: tree, Modules: []string{"virtio_net", "fuse", "af_packet"}, Required: true, Version: "0.3.0"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != int64(len(b)) {
		t.Errorf("size %d, file %d", res.Size, len(b))
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "only") {
		t.Errorf("a tiny image gave warnings %q", res.Warnings)
	}
	recs := map[string]cpio.Record{}
	for _, r := range readImage(t, b) {
		recs[r.Name] = r
	}
	self, _ := os.ReadFile(bin)
	if r, ok := recs["init"]; !ok || r.Mode != cpio.S_IFREG|0o755 || content(t, r) != string(self) {
		t.Error("init is not the binary, mode 0755")
	}
	if content(t, recs["bin/ssi"]) != "/init" {
		t.Error("bin/ssi does not point at /init")
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "newroot", "var/lib/ssi"} {
		if recs[d].Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("no directory %s", d)
		}
	}
	list := content(t, recs[ModulesList])
	want := "/lib/modules/6.1.0-test/failover.ko\n/lib/modules/6.1.0-test/net_failover.ko\n/lib/modules/6.1.0-test/virtio.ko\n/lib/modules/6.1.0-test/virtio_ring.ko\n/lib/modules/6.1.0-test/virtio_net.ko\n/lib/modules/6.1.0-test/fuse.ko\n"
	if list != want {
		t.Errorf("module list\n%s\nwant\n%s", list, want)
	}
	if got := content(t, recs[ModaliasesList]); got != "virtio_net virtio:d00000001v*\n" {
		t.Errorf("modaliases %q, want virtio_net's device alias only", got)
	}
	for _, l := range strings.Fields(list) {
		if _, ok := recs[strings.TrimPrefix(l, "/")]; !ok {
			t.Errorf("%s is listed but not in the image", l)
		}
	}
	if _, err := Write(out, false, Options{Binary: bin}); !os.IsExist(err) && !strings.Contains(err.Error(), "--force") {
		t.Errorf("replaced without force: %v", err)
	}
	if _, err := Write(out, true, Options{Binary: bin}); err != nil {
		t.Errorf("with force: %v", err)
	}
	// A dynamic binary (the test itself, linked by cgo for -race, or any
	// /bin tool) is refused, and nothing is written.
	out2 := filepath.Join(t.TempDir(), "initrd")
	if _, err := Write(out2, false, Options{Binary: "/bin/ls"}); err == nil || !strings.Contains(err.Error(), "static") {
		t.Errorf("a dynamic binary: %v", err)
	}
	if _, err := os.Stat(out2); !os.IsNotExist(err) {
		t.Error("a failed build left a file")
	}
	if w := sizeWarnings(60 << 20); len(w) != 1 || !strings.Contains(w[0], "race") {
		t.Errorf("large: %q", w)
	}
	if w := sizeWarnings(14 << 20); len(w) != 0 {
		t.Errorf("normal: %q", w)
	}
}
