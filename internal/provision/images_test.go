package provision

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireTools skips the test if the e2fsprogs/util-linux programs are
// missing; on the project's machines they are part of the base system.
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := FindTool(n); err != nil {
			t.Skipf("cannot run real image tools: %v", err)
		}
	}
}

// tool runs an e2fsprogs program for verification.
func tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	p, err := FindTool(name)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(p, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// tree lists every path under dir, to prove that failures leave nothing.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func assertTree(t *testing.T, dir string, want []string) {
	t.Helper()
	if got := tree(t, dir); !slices.Equal(got, want) {
		t.Errorf("files changed:\n got %q\nwant %q", got, want)
	}
}

// makeSource creates a small root filesystem tree and returns its dir and
// the contents of a binary file in it.
func makeSource(t *testing.T) (string, []byte) {
	t.Helper()
	src := t.TempDir()
	for _, d := range []string{"etc", "var/lib/ssi", "empty"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	blob := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	files := map[string][]byte{
		"etc/hostname":         []byte("ssi1\n"),
		"etc/fstab":            []byte("/dev/hda1 / ext4 defaults 0 1\n/dev/hda2 none swap sw,node=* 0 0\n"),
		"var/lib/ssi/blob.bin": blob,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(src, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("hostname", filepath.Join(src, "etc/hostname.link")); err != nil {
		t.Fatal(err)
	}
	return src, blob
}

func checkFS(t *testing.T, path string, wantSize int64) {
	t.Helper()
	tool(t, "e2fsck", "-fn", path)
	info, err := InspectImage(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if info.FSSize() != wantSize || info.FileSize != wantSize {
		t.Errorf("%s: filesystem %d blocks x %d = %d bytes, file %d bytes; want %d", path, info.BlockCount, info.BlockSize, info.FSSize(), info.FileSize, wantSize)
	}
	if info.Label != RootLabel {
		t.Errorf("label = %q, want %q", info.Label, RootLabel)
	}
	// dumpe2fs says so too, independently of InspectImage's parsing.
	out := tool(t, "dumpe2fs", "-h", path)
	if !strings.Contains(out, "Block count:              "+strconv.FormatInt(wantSize/4096, 10)+"\n") {
		t.Errorf("dumpe2fs -h does not show %d blocks:\n%s", wantSize/4096, out)
	}
}

func checkContent(t *testing.T, path string, blob []byte) {
	t.Helper()
	for file, want := range map[string][]byte{
		"/etc/hostname":         []byte("ssi1\n"),
		"/var/lib/ssi/blob.bin": blob,
	} {
		p, _ := FindTool("debugfs")
		out, err := exec.Command(p, "-R", "cat "+file, path).Output()
		if err != nil {
			t.Fatalf("debugfs cat %s: %v", file, err)
		}
		if !bytes.Equal(out, want) {
			t.Errorf("%s in the image: got %d bytes, want %d (%q...)", file, len(out), len(want), out[:min(len(out), 20)])
		}
	}
	if out := tool(t, "debugfs", "-R", "stat /etc/hostname.link", path); !strings.Contains(out, `Fast link dest: "hostname"`) {
		t.Errorf("symlink not copied:\n%s", out)
	}
}

func TestRootImageCreateAndGrow(t *testing.T) {
	requireTools(t, "mke2fs", "resize2fs", "e2fsck", "dumpe2fs", "debugfs")
	ctx := context.Background()
	src, blob := makeSource(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "ssi1.img")

	var progress bytes.Buffer
	if err := CreateRootImage(ctx, img, 32<<20, src, false, &progress); err != nil {
		t.Fatal(err)
	}
	assertTree(t, dir, []string{dir, img})
	checkFS(t, img, 32<<20)
	checkContent(t, img, blob)
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= 32<<20 {
		t.Errorf("image is not sparse: %d bytes allocated", st.Blocks*512)
	}
	if !strings.Contains(progress.String(), "creating root image "+img+" (3/4): making an ext4 filesystem") {
		t.Errorf("progress lines:\n%s", progress.String())
	}

	progress.Reset()
	if err := GrowImage(ctx, img, 48<<20, &progress); err != nil {
		t.Fatal(err)
	}
	checkFS(t, img, 48<<20)
	checkContent(t, img, blob)
	for _, want := range []string{"(1/3): checking the filesystem with e2fsck", "(2/3): extending the file from 32M to 48M", "(3/3): growing the filesystem with resize2fs"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}

	progress.Reset()
	if err := GrowImage(ctx, img, 48<<20, &progress); err != nil || !strings.Contains(progress.String(), "already 48M") {
		t.Errorf("grow to the same size: %v, %q", err, progress.String())
	}

	err := GrowImage(ctx, img, 40<<20, nil)
	if !errors.Is(err, ErrShrink) || !strings.Contains(err.Error(), "48M") || !strings.Contains(err.Error(), "40M") {
		t.Errorf("shrink: err = %v, want ErrShrink naming both sizes", err)
	}
	if err := GrowImage(ctx, img, 64<<20+1, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("odd size: err = %v", err)
	}
	checkFS(t, img, 48<<20) // untouched by the refused calls

	// A file that grew but whose filesystem did not (an interrupted grow)
	// is finished by growing to the file's size.
	if err := os.Truncate(img, 56<<20); err != nil {
		t.Fatal(err)
	}
	if err := GrowImage(ctx, img, 56<<20, nil); err != nil {
		t.Fatal(err)
	}
	checkFS(t, img, 56<<20)
	assertTree(t, dir, []string{dir, img})
}

func TestCreateRootImageEmpty(t *testing.T) {
	requireTools(t, "mke2fs", "e2fsck", "dumpe2fs")
	img := filepath.Join(t.TempDir(), "empty.img")
	if err := CreateRootImage(context.Background(), img, MinRootImageSize, "", false, nil); err != nil {
		t.Fatal(err)
	}
	checkFS(t, img, MinRootImageSize)
}

func TestRootImageErrors(t *testing.T) {
	requireTools(t, "mke2fs", "e2fsck", "dumpe2fs")
	ctx := context.Background()
	src, _ := makeSource(t)
	dir := t.TempDir()
	existing := filepath.Join(dir, "ssi1.img")
	if err := os.WriteFile(existing, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	big := t.TempDir()
	f, err := os.Create(filepath.Join(big, "huge"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(40 << 20); err != nil { // sparse, but it counts
		t.Fatal(err)
	}
	f.Close()
	before := tree(t, dir)

	for _, tc := range []struct {
		name    string
		path    string
		size    int64
		from    string
		wantErr error
		want    string
	}{
		{"exists", existing, 32 << 20, src, ErrExists, "use force"},
		{"too small", filepath.Join(dir, "new.img"), 8 << 20, src, ErrTooSmall, "minimum is 16M"},
		{"too small for content", filepath.Join(dir, "new.img"), 32 << 20, big, ErrTooSmall, "at least 61M"},
		{"not 4K", filepath.Join(dir, "new.img"), 32<<20 + 512, src, ErrInvalid, "4 KiB"},
		{"no source", filepath.Join(dir, "new.img"), 32 << 20, filepath.Join(dir, "nope"), ErrInvalid, "no such file"},
		{"source is a file", filepath.Join(dir, "new.img"), 32 << 20, existing, ErrInvalid, "not a directory"},
		{"no directory", filepath.Join(dir, "node9", "x.img"), 32 << 20, src, ErrInvalid, "ssi images init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CreateRootImage(ctx, tc.path, tc.size, tc.from, false, nil)
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %v mentioning %q", err, tc.wantErr, tc.want)
			}
			assertTree(t, dir, before)
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "precious" {
		t.Fatalf("existing file changed")
	}
	// With force the file is replaced by a real image.
	if err := CreateRootImage(ctx, existing, 32<<20, src, true, nil); err != nil {
		t.Fatal(err)
	}
	checkFS(t, existing, 32<<20)
	assertTree(t, dir, before)

	if err := GrowImage(ctx, filepath.Join(src, "etc/hostname"), 32<<20, nil); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not an ext2/3/4") {
		t.Errorf("grow a non-image: %v", err)
	}
	if err := GrowImage(ctx, filepath.Join(dir, "missing.img"), 32<<20, nil); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("grow a missing file: %v", err)
	}
}

// fakeTools puts scripts named like the real tools first in PATH, and
// hides /usr/sbin and /sbin.
func fakeTools(t *testing.T, scripts map[string]string) string {
	t.Helper()
	bin := t.TempDir()
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := toolDirs
	toolDirs = nil
	t.Cleanup(func() { toolDirs = old })
	t.Setenv("PATH", bin)
	return bin
}

func TestMissingTools(t *testing.T) {
	fakeTools(t, nil)
	dir := t.TempDir()
	ctx := context.Background()
	err := CreateRootImage(ctx, filepath.Join(dir, "r.img"), 32<<20, "", false, nil)
	if !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), "mke2fs") || !strings.Contains(err.Error(), "apt-get install e2fsprogs") {
		t.Errorf("root: %v", err)
	}
	err = CreateSwapImage(ctx, filepath.Join(dir, "s.img"), 8<<20, false, nil)
	if !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), "apt-get install util-linux") {
		t.Errorf("swap: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "g.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err = GrowImage(ctx, filepath.Join(dir, "g.img"), 32<<20, nil)
	if !errors.Is(err, ErrMissingTool) || !strings.Contains(err.Error(), "dumpe2fs") {
		t.Errorf("grow: %v", err)
	}
	assertTree(t, dir, []string{dir, filepath.Join(dir, "g.img")})
}

// TestToolFailureLeavesNothing makes mke2fs and mkswap fail after the
// temporary file exists, and interrupts a slow mke2fs.
func TestToolFailureLeavesNothing(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "started")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	fakeTools(t, map[string]string{
		"mke2fs": `for a; do last=$a; done
echo "fake mke2fs: cannot write $last" >&2
[ -f "$last" ] || exit 3
case "$last" in *slow*) : > ` + marker + `; exec ` + sleep + ` 60;; esac
echo partial > "$last"; exit 1`,
		"mkswap": `echo "fake mkswap: broken" >&2; exit 1`,
	})
	dir := t.TempDir()
	ctx := context.Background()
	err = CreateRootImage(ctx, filepath.Join(dir, "r.img"), 32<<20, "", false, nil)
	var te *ToolError
	if !errors.As(err, &te) || te.ExitCode() != 1 || !strings.Contains(err.Error(), "fake mke2fs: cannot write") {
		t.Errorf("root: err = %v, want the tool's own message and exit 1", err)
	}
	err = CreateSwapImage(ctx, filepath.Join(dir, "s.img"), 8<<20, false, nil)
	if !strings.Contains(err.Error(), "fake mkswap: broken") {
		t.Errorf("swap: err = %v", err)
	}
	assertTree(t, dir, []string{dir})

	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- CreateRootImage(ctx, filepath.Join(dir, "slow.img"), 32<<20, "", false, nil) }()
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("returned before the tool started: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("interrupted: err = %v, want context.Canceled", err)
	}
	assertTree(t, dir, []string{dir})
}

// swapHeader reads the Linux swap header written by mkswap.
func swapHeader(t *testing.T, path string) (lastPage uint32, label string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	if _, err := f.ReadAt(page, 0); err != nil {
		t.Fatal(err)
	}
	if string(page[4096-10:]) != "SWAPSPACE2" {
		t.Fatalf("%s: no swap signature", path)
	}
	// union swap_header: bootbits[1024], version, last_page, nr_badpages, uuid[16], volume_name[16]
	lastPage = binary.LittleEndian.Uint32(page[1028:])
	label = strings.TrimRight(string(page[1052:1068]), "\x00")
	return lastPage, label
}

func TestSwapImage(t *testing.T) {
	requireTools(t, "mkswap")
	dir := t.TempDir()
	ctx := context.Background()
	p := filepath.Join(dir, "ssi2_swap.img")
	var progress bytes.Buffer
	if err := CreateSwapImage(ctx, p, 64<<20, false, &progress); err != nil {
		t.Fatal(err)
	}
	if last, label := swapHeader(t, p); last != 64<<20/4096-1 || label != SwapLabel {
		t.Errorf("swap header: last page %d, label %q", last, label)
	}
	if !strings.Contains(progress.String(), "creating swap image "+p+" (1/2)") {
		t.Errorf("progress:\n%s", progress.String())
	}
	st, _ := os.Stat(p)
	if st.Size() != 64<<20 || st.Mode().Perm() != 0o600 {
		t.Errorf("swap file size %d mode %v", st.Size(), st.Mode())
	}
	for _, tc := range []struct {
		size    int64
		force   bool
		wantErr error
		want    string
	}{
		{64 << 20, false, ErrExists, "use force"},
		{512 << 10, true, ErrTooSmall, "minimum is 1M"},
		{1<<20 + 1, true, ErrInvalid, "4 KiB"},
	} {
		err := CreateSwapImage(ctx, p, tc.size, tc.force, nil)
		if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("size %d force %v: err = %v, want %v mentioning %q", tc.size, tc.force, err, tc.wantErr, tc.want)
		}
	}
	if err := CreateSwapImage(ctx, p, 8<<20, true, nil); err != nil {
		t.Fatal(err)
	}
	if last, _ := swapHeader(t, p); last != 8<<20/4096-1 {
		t.Errorf("replaced swap has last page %d", last)
	}
	assertTree(t, dir, []string{dir, p})
}

func TestInitLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images", "ssi")
	nodes := []Node{seedNode1(), seedNode2()}
	if err := InitLayout(dir, nodes); err != nil {
		t.Fatal(err)
	}
	if err := InitLayout(dir, nodes); err != nil { // idempotent
		t.Fatal(err)
	}
	want := []string{dir, dir + "/boot", dir + "/configs", dir + "/node1", dir + "/node2"}
	assertTree(t, dir, want)
	bad := seedNode2()
	bad.Name = "../x"
	if err := InitLayout(dir, []Node{bad}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad node: %v", err)
	}
	assertTree(t, dir, want)
}

func TestWriteConfig(t *testing.T) {
	dir := t.TempDir()
	o := seedOptions()
	o.ImagesDir = ""
	path, err := WriteConfig(dir, seedNode1(), o, false)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "configs", "ssi1.cfg") {
		t.Errorf("path = %s", path)
	}
	b, _ := os.ReadFile(path)
	s, err := parseXL(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := xlGet(s, "disk"); len(v.items) != 2 || !strings.HasPrefix(v.items[0].str, "file:"+dir+"/node1/ssi1.img,") {
		t.Errorf("disk = %+v: ImagesDir should default to dir", v)
	}
	if _, err := WriteConfig(dir, seedNode1(), o, false); !errors.Is(err, ErrExists) {
		t.Errorf("second write: %v", err)
	}
	o.MemoryMB = 1024
	if _, err := WriteConfig(dir, seedNode1(), o, true); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), "memory = 1024\n") {
		t.Errorf("force did not replace:\n%s", b)
	}
	o.Format = FormatQEMU
	qpath, err := WriteConfig(dir, seedNode1(), o, false)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(qpath); !strings.HasSuffix(qpath, "ssi1.qemu") || st.Mode().Perm() != 0o755 {
		t.Errorf("qemu script %s mode %v", qpath, st.Mode())
	}
	assertTree(t, dir, []string{dir, dir + "/configs", path, qpath})
}

// TestGrowFailureRestoresSize makes resize2fs fail after the file was
// extended: the file must be cut back and the filesystem stay intact.
func TestGrowFailureRestoresSize(t *testing.T) {
	requireTools(t, "mke2fs", "e2fsck", "dumpe2fs")
	img := filepath.Join(t.TempDir(), "ssi1.img")
	if err := CreateRootImage(context.Background(), img, 32<<20, "", false, nil); err != nil {
		t.Fatal(err)
	}
	dumpe2fs, _ := FindTool("dumpe2fs")
	e2fsck, _ := FindTool("e2fsck")
	fakeTools(t, map[string]string{
		"dumpe2fs":  `exec ` + dumpe2fs + ` "$@"`,
		"e2fsck":    `exec ` + e2fsck + ` "$@"`,
		"resize2fs": `echo "fake resize2fs: no space" >&2; exit 1`,
	})
	err := GrowImage(context.Background(), img, 64<<20, nil)
	if err == nil || !strings.Contains(err.Error(), "fake resize2fs: no space") {
		t.Fatalf("err = %v", err)
	}
	checkFS(t, img, 32<<20)
}
