package provision

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// goldenCase is one set of nodes and options rendered in every format.
type goldenCase struct {
	name  string
	nodes []Node
	opts  GuestOptions
}

func goldenCases(t testing.TB) []goldenCase {
	o2 := seedOptions()
	o2.MemoryMB = 64
	bulk, err := PlanNodes(3, "0a:00:00:00:11:d2", netip.MustParseAddr("192.168.64.142"), 2, "ssi")
	if err != nil {
		t.Fatal(err)
	}
	bulkOpts := seedOptions()
	bulkOpts.MemoryMB = 256
	bulkOpts.Bridge = "xenbr0"
	odd := seedNode1()
	odd.Name = "node-7.a_b"
	odd.Num = 7
	return []goldenCase{
		{"node1", []Node{seedNode1()}, seedOptions()},
		{"node2", []Node{seedNode2()}, o2},
		{"odd", []Node{odd}, GuestOptions{
			ImagesDir:  `/srv/my images/"ssi" \ é,x=y`,
			Kernel:     `/boot/it's "the" kernel\`,
			Ramdisk:    `/boot/initrd;rm -rf ~`,
			MemoryMB:   1024,
			Netmask:    netip.MustParseAddr("255.255.0.0"),
			ExtraArgs:  `console=hvc0 ssi.motd="hello 'world'" path=C:\temp $HOME ;x`,
			Bridge:     "br-ssi.0",
			RootDevice: "/dev/xvda1",
		}},
		{"bulk", bulk, bulkOpts},
	}
}

func renderGolden(t *testing.T, gc goldenCase, f Format) []byte {
	t.Helper()
	var buf bytes.Buffer
	for i, n := range gc.nodes {
		if len(gc.nodes) > 1 {
			if i > 0 {
				buf.WriteString("\n")
			}
			fmt.Fprintf(&buf, "### %s\n", ConfigPath(gc.opts.ImagesDir, n, f))
		}
		switch f {
		case FormatQEMU:
			argv, err := QEMUCommand(n, gc.opts)
			if err != nil {
				t.Fatalf("QEMUCommand(%v): %v", n, err)
			}
			buf.WriteString("# argv\n")
			for _, a := range argv {
				fmt.Fprintf(&buf, "%q\n", a)
			}
			buf.WriteString("# shell\n")
			buf.WriteString(ShellJoin(argv) + "\n")
			script, err := RenderConfig(n, gc.opts, FormatQEMU)
			if err != nil {
				t.Fatal(err)
			}
			buf.WriteString("# script\n")
			buf.Write(script)
		default:
			out, err := RenderConfig(n, gc.opts, f)
			if err != nil {
				t.Fatalf("RenderConfig(%v, %s): %v", n, f, err)
			}
			buf.Write(out)
		}
	}
	return buf.Bytes()
}

func TestGolden(t *testing.T) {
	for _, gc := range goldenCases(t) {
		for _, f := range Formats {
			name := fmt.Sprintf("%s_%s.golden", f, gc.name)
			t.Run(name, func(t *testing.T) {
				got := renderGolden(t, gc, f)
				path := filepath.Join("testdata", name)
				if *update {
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test -update to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("output differs from %s (go test -update rewrites it after review):\n--- got\n%s\n--- want\n%s", path, got, want)
				}
			})
		}
	}
}

// TestGoldenXLParses reads every xl golden file back and checks that the
// odd values survive the round trip.
func TestGoldenXLParses(t *testing.T) {
	files, _ := filepath.Glob("testdata/xl_*.golden")
	if len(files) < 4 {
		t.Fatalf("expected 4 xl golden files, found %v", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s, err := parseXL(string(b))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if strings.Contains(f, "odd") {
			for k, want := range map[string]string{
				"kernel":  `/boot/it's "the" kernel\`,
				"ramdisk": `/boot/initrd;rm -rf ~`,
				"extra":   `ip=192.168.64.141:::255.255.0.0:node-7.a_b:eth0:off console=hvc0 ssi.motd="hello 'world'" path=C:\temp $HOME ;x`,
				"root":    "/dev/xvda1 ro",
			} {
				if v, _ := xlGet(s, k); v.str != want {
					t.Errorf("%s: %s = %q, want %q", f, k, v.str, want)
				}
			}
			disk, _ := xlGet(s, "disk")
			if len(disk.items) != 2 || disk.items[0].str != `format=raw,vdev=hda1,access=w,target=/srv/my images/"ssi" \ é,x=y/node7/node-7.a_b.img` {
				t.Errorf("%s: disk = %+v", f, disk)
			}
		}
	}
}

// TestQEMUCommand checks the argv structure (the golden files pin the
// rest) and that ShellJoin quotes exactly what a shell would interpret.
func TestQEMUCommand(t *testing.T) {
	argv, err := QEMUCommand(seedNode1(), seedOptions())
	if err != nil {
		t.Fatal(err)
	}
	opt := func(name string) []string {
		var vs []string
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == name {
				vs = append(vs, argv[i+1])
			}
		}
		return vs
	}
	want := map[string][]string{
		"-kernel": {"/images/ssi/boot/xenU-vmlinuz"},
		"-initrd": {"/images/ssi/boot/initrd"},
		"-m":      {"128"},
		"-drive":  {"file=/images/ssi/node1/ssi1.img,format=raw,if=virtio", "file=/images/ssi/node1/ssi1_swap.img,format=raw,if=virtio"},
		"-netdev": {"bridge,id=net0"},
		"-device": {"virtio-net-pci,netdev=net0,mac=0a:00:00:00:11:d1", "virtio-rng-pci"},
		"-append": {"root=/dev/vda ro console=ttyS0 ip=192.168.64.141::192.168.64.1:255.255.255.0:ssi1:eth0:off ssi.server=192.168.64.141:7470 ssi.token=K10abc"},
	}
	for k, w := range want {
		if got := opt(k); strings.Join(got, "\n") != strings.Join(w, "\n") {
			t.Errorf("%s = %q, want %q", k, got, w)
		}
	}
	if argv[0] != "qemu-system-x86_64" {
		t.Errorf("argv[0] = %q", argv[0])
	}
	o := seedOptions()
	o.ImagesDir = "/a,b"
	argv, _ = QEMUCommand(seedNode2(), o)
	if got := opt("-drive"); len(got) != 1 || got[0] != "file=/a,,b/node2/ssi2_swap.img,format=raw,if=virtio" {
		t.Errorf("comma in path: -drive %q", got)
	}
}

func TestShellJoin(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"qemu", "-m", "512"}, "qemu -m 512"},
		{[]string{"a b", ""}, "'a b' ''"},
		{[]string{"it's"}, `'it'\''s'`},
		{[]string{`$HOME;rm *`}, `'$HOME;rm *'`},
		{[]string{"file=/x,format=raw"}, "file=/x,format=raw"},
	} {
		if got := ShellJoin(tc.in); got != tc.want {
			t.Errorf("ShellJoin(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
	// A real shell must split the line back into the same words.
	words := []string{"printf", `%s\n`, "", "a b", "it's", `"q"`, `\`, "$HOME", "`id`", "*", "~", "é", "x=y,z", "!", "#c"}
	out, err := exec.Command("/bin/sh", "-c", ShellJoin(words)).Output()
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	if got, want := string(out), strings.Join(words[2:], "\n")+"\n"; got != want {
		t.Errorf("sh split %s into\n%q, want\n%q", ShellJoin(words), got, want)
	}
}
