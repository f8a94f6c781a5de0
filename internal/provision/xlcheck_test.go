package provision

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// xlcheck builds testdata/xlcheck.c against Xen's libxlutil, the parser xl
// itself uses. xl proper cannot check a configuration here: even
// "xl -N create" needs a running hypervisor (/dev/xen/privcmd).
func xlcheck(t *testing.T) string {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("xlcheck reads libxl_device_disk at x86-64 offsets")
	}
	var lib, light string
	for _, d := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"} {
		if _, err := os.Stat(filepath.Join(d, "libxlutil.so.4.17")); err == nil {
			lib, light = filepath.Join(d, "libxlutil.so.4.17"), filepath.Join(d, "libxenlight.so.4.17")
			break
		}
	}
	if lib == "" {
		t.Skip("libxlutil.so.4.17 not installed (apt-get install libxenmisc4.17, or xen-utils-4.17): cannot check configurations with Xen's own parser")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build testdata/xlcheck.c")
	}
	bin := filepath.Join(t.TempDir(), "xlcheck")
	out, err := exec.Command(cc, "-std=c11", "-o", bin, "testdata/xlcheck.c", lib, light).CombinedOutput()
	if err != nil {
		t.Fatalf("building xlcheck: %v\n%s", err, out)
	}
	return bin
}

// xlcheckRun parses file with libxlutil and returns key -> value lines.
func xlcheckRun(t *testing.T, bin, file string, keys []string) map[string][]string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{file}, keys...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("libxlutil rejected %s: %v\n%s%s", file, err, out, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("libxlutil warned about %s:\n%s", file, stderr.String())
	}
	res := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 {
			res[f[0]] = f[1:]
		}
	}
	return res
}

func unhex(t *testing.T, s string) string {
	t.Helper()
	if s == "." {
		return ""
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q from xlcheck", s)
	}
	return string(b)
}

// compareWithLibxlutil checks that libxlutil reads from file exactly the
// settings our test parser reads, and that every disk item is a valid
// disk specification naming wantDisks[i] as target, writable.
func compareWithLibxlutil(t *testing.T, bin, file string, wantDisks []string) {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	settings, err := parseXL(string(src))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var keys []string
	for _, s := range settings {
		keys = append(keys, s.key)
	}
	got := xlcheckRun(t, bin, file, keys)
	for _, s := range settings {
		switch s.value.kind {
		case 's', 'n':
			g := got[s.key]
			if len(g) != 2 || g[0] != "s" || unhex(t, g[1]) != s.value.str {
				t.Errorf("%s: libxlutil reads %s as %v, we wrote %q", file, s.key, g, s.value.str)
			}
		case 'l':
			g := got[s.key]
			if len(g) != 2 || g[0] != "l" || g[1] != fmt.Sprint(len(s.value.items)) {
				t.Errorf("%s: libxlutil reads %s as %v, we wrote %d items", file, s.key, g, len(s.value.items))
				continue
			}
			for i, it := range s.value.items {
				k := fmt.Sprintf("%s[%d]", s.key, i)
				if g := got[k]; len(g) != 1 || unhex(t, g[0]) != it.str {
					t.Errorf("%s: libxlutil reads %s as %v, we wrote %q", file, k, g, it.str)
				}
			}
		}
	}
	for i, want := range wantDisks {
		g := got[fmt.Sprintf("disk[%d]:disk", i)] // TARGET VDEV RW
		if len(g) != 3 {
			t.Errorf("%s: xl cannot parse disk specification %d: %v", file, i, g)
			continue
		}
		if target := unhex(t, g[0]); target != want || g[2] != "1" {
			t.Errorf("%s: disk %d: xl reads target %q rw=%s, want %q writable", file, i, target, g[2], want)
		}
	}
}

func TestXLConfigAcceptedByLibxlutil(t *testing.T) {
	bin := xlcheck(t)
	dir := t.TempDir()
	for _, gc := range goldenCases(t) {
		for _, n := range gc.nodes {
			out, err := XLConfig(n, gc.opts)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, gc.name+"-"+n.Name+".cfg")
			if err := os.WriteFile(file, out, 0o644); err != nil {
				t.Fatal(err)
			}
			o := gc.opts.WithDefaults()
			var disks []string
			if n.InitNode {
				disks = append(disks, RootImagePath(o.ImagesDir, n))
			}
			disks = append(disks, SwapImagePath(o.ImagesDir, n))
			compareWithLibxlutil(t, bin, file, disks)
		}
	}
}

// TestXLEncoderAgainstLibxlutil pushes every byte the encoder accepts, and
// disk paths with every awkward character, through libxlutil.
func TestXLEncoderAgainstLibxlutil(t *testing.T) {
	bin := xlcheck(t)
	var all strings.Builder
	for c := 1; c < 256; c++ {
		all.WriteByte(byte(c))
	}
	paths := []string{
		"/plain/x.img",
		"/with space/x.img",
		`/quo"te/it's/back\slash.img`,
		"/comma,and=equals/x.img",
		"/trailing space /x.img ",
		"/colon:file:/x.img",
		"/ünïcödé/☃.img",
		"/a,b=c, d /e",
	}
	var specs []string
	for _, p := range paths {
		specs = append(specs, xlDiskSpec(p, "hda2"))
	}
	var w xlWriter
	w.str("extra", all.String())
	w.str("empty", "")
	w.list("vif", "mac=0a:00:00:00:11:d1,bridge=xenbr0", "")
	w.list("disk", specs...)
	w.int("memory", 4096)
	if w.err != nil {
		t.Fatal(w.err)
	}
	file := filepath.Join(t.TempDir(), "bytes.cfg")
	if err := os.WriteFile(file, []byte(w.b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	compareWithLibxlutil(t, bin, file, paths)
}
