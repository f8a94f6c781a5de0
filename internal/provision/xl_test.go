package provision

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func seedNode1() Node {
	return Node{Num: 1, Name: "ssi1", HWAddr: "0a:00:00:00:11:d1", IPAddr: netip.MustParseAddr("192.168.64.141"), InitNode: true}
}

func seedNode2() Node {
	return Node{Num: 2, Name: "ssi2", HWAddr: "0a:00:00:00:11:d2", IPAddr: netip.MustParseAddr("192.168.64.142")}
}

func seedOptions() GuestOptions {
	return GuestOptions{
		ImagesDir: "/images/ssi",
		Kernel:    "/images/ssi/boot/xenU-vmlinuz",
		Ramdisk:   "/images/ssi/boot/initrd",
		MemoryMB:  128,
		Netmask:   netip.MustParseAddr("255.255.255.0"),
		Gateway:   netip.MustParseAddr("192.168.64.1"),
		ExtraArgs: "ssi.server=192.168.64.141:7470 ssi.token=K10abc",
	}
}

func TestXLQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`a"b`, `"a\"b"`},
		{`a'b`, `"a'b"`},
		{`back\slash`, `"back\\slash"`},
		{"tab\there", `"tab\there"`},
		{"two\nlines\r", `"two\nlines\r"`},
		{"\a\b\f\v", `"\a\b\f\v"`},
		{"\x01\x7f", "\"\x01\x7f\""},
		{"é ☃", `"é ☃"`},
	} {
		got, err := XLQuote(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("XLQuote(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := XLQuote("a\x00b"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("XLQuote with NUL: err = %v, want ErrInvalid mentioning NUL", err)
	}
}

func TestXLList(t *testing.T) {
	got, err := XLList([]string{"file:/a,hda1,w", `it's`, ""})
	want := `['file:/a,hda1,w','it\'s','']`
	if err != nil || got != want {
		t.Errorf("XLList = %q, %v; want %q", got, err, want)
	}
	if got, _ := XLList(nil); got != "[]" {
		t.Errorf("XLList(nil) = %q", got)
	}
	if _, err := XLList([]string{"ok", "\x00"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("XLList with NUL: err = %v", err)
	}
}

func TestXLDiskSpec(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/images/ssi/node1/ssi1.img", "file:/images/ssi/node1/ssi1.img,hda1,w"},
		{"/my images/x.img", "file:/my images/x.img,hda1,w"},
		{"/a,b/x.img", "format=raw,vdev=hda1,access=w,target=/a,b/x.img"},
		{"/a=b/x.img", "format=raw,vdev=hda1,access=w,target=/a=b/x.img"},
	} {
		if got := xlDiskSpec(tc.path, "hda1"); got != tc.want {
			t.Errorf("xlDiskSpec(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

// TestXLConfigSeed checks the how-to's two configurations, key by key.
func TestXLConfigSeed(t *testing.T) {
	o := seedOptions()
	for _, tc := range []struct {
		node Node
		mem  int
		want map[string]string // key -> string value, or list items joined by |
		none []string
	}{
		{seedNode1(), 128, map[string]string{
			"kernel":  "/images/ssi/boot/xenU-vmlinuz",
			"ramdisk": "/images/ssi/boot/initrd",
			"memory":  "128",
			"name":    "ssi1",
			"disk":    "file:/images/ssi/node1/ssi1.img,hda1,w|file:/images/ssi/node1/ssi1_swap.img,hda2,w",
			"root":    "/dev/hda1 ro",
			"vif":     "mac=0a:00:00:00:11:d1",
			"ip":      "192.168.64.141",
			"netmask": "255.255.255.0",
			"gateway": "192.168.64.1",
			"extra":   "ip=192.168.64.141::192.168.64.1:255.255.255.0:ssi1:eth0:off ssi.server=192.168.64.141:7470 ssi.token=K10abc",
		}, nil},
		{seedNode2(), 64, map[string]string{
			"memory": "64",
			"name":   "ssi2",
			"disk":   "file:/images/ssi/node2/ssi2_swap.img,hda2,w",
			"root":   "/dev/hda1 ro",
			"vif":    "mac=0a:00:00:00:11:d2",
			"extra":  "ssi.server=192.168.64.141:7470 ssi.token=K10abc",
		}, []string{"ip", "netmask", "gateway"}},
	} {
		o.MemoryMB = tc.mem
		out, err := XLConfig(tc.node, o)
		if err != nil {
			t.Fatalf("XLConfig(%v): %v", tc.node, err)
		}
		settings, err := parseXL(string(out))
		if err != nil {
			t.Fatalf("parsing our own output: %v\n%s", err, out)
		}
		for k, want := range tc.want {
			v, ok := xlGet(settings, k)
			if !ok {
				t.Errorf("%s: key %s missing or repeated", tc.node.Name, k)
				continue
			}
			got := v.str
			if v.kind == 'l' {
				var items []string
				for _, it := range v.items {
					items = append(items, it.str)
				}
				got = strings.Join(items, "|")
			}
			if got != want {
				t.Errorf("%s: %s = %q, want %q", tc.node.Name, k, got, want)
			}
		}
		if v, _ := xlGet(settings, "memory"); v.kind != 'n' {
			t.Errorf("memory is not written as a number")
		}
		for _, k := range tc.none {
			if _, ok := xlGet(settings, k); ok {
				t.Errorf("%s: unexpected key %s", tc.node.Name, k)
			}
		}
	}
}

func TestXLConfigBridgeAndDefaults(t *testing.T) {
	out, err := XLConfig(seedNode2(), GuestOptions{Bridge: "xenbr0"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := parseXL(string(out))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]string{
		"kernel":  "/images/ssi/boot/vmlinuz",
		"ramdisk": "/images/ssi/boot/initrd",
		"memory":  "512",
	}
	for k, want := range checks {
		if v, _ := xlGet(s, k); v.str != want {
			t.Errorf("%s = %q, want default %q", k, v.str, want)
		}
	}
	if v, _ := xlGet(s, "vif"); len(v.items) != 1 || v.items[0].str != "mac=0a:00:00:00:11:d2,bridge=xenbr0" {
		t.Errorf("vif = %+v", v)
	}
	if _, ok := xlGet(s, "extra"); ok {
		t.Errorf("extra written with nothing to say")
	}
}

func TestConfigRefusesBadInput(t *testing.T) {
	good := seedNode1()
	for _, tc := range []struct {
		name string
		node func(*Node)
		opts func(*GuestOptions)
		want string
	}{
		{"node number", func(n *Node) { n.Num = 0 }, nil, "start at 1"},
		{"empty name", func(n *Node) { n.Name = "" }, nil, "empty node name"},
		{"slash in name", func(n *Node) { n.Name = "a/b" }, nil, `'/'`},
		{"dot name", func(n *Node) { n.Name = ".." }, nil, "start with a letter"},
		{"quote in name", func(n *Node) { n.Name = `ssi"1` }, nil, "not allowed"},
		{"upper-case MAC", func(n *Node) { n.HWAddr = "0A:00:00:00:11:D1" }, nil, "canonical"},
		{"multicast MAC", func(n *Node) { n.HWAddr = "01:00:00:00:11:d1" }, nil, "multicast"},
		{"no IP", func(n *Node) { n.IPAddr = netip.Addr{} }, nil, "no IP address"},
		{"IPv6", func(n *Node) { n.IPAddr = netip.MustParseAddr("fd00::1") }, nil, "not an IPv4"},
		{"NUL in kernel", nil, func(o *GuestOptions) { o.Kernel = "/boot/vm\x00linuz" }, "control character"},
		{"newline in ramdisk", nil, func(o *GuestOptions) { o.Ramdisk = "/boot/init\nrd" }, "control character"},
		{"relative images dir", nil, func(o *GuestOptions) { o.ImagesDir = "images" }, "not absolute"},
		{"invalid UTF-8", nil, func(o *GuestOptions) { o.Kernel = "/boot/\xff" }, "UTF-8"},
		{"newline in extra", nil, func(o *GuestOptions) { o.ExtraArgs = "a\nb" }, "one line"},
		{"long cmdline", nil, func(o *GuestOptions) { o.ExtraArgs = strings.Repeat("x", 2100) }, "at most 2047"},
		{"bad bridge", nil, func(o *GuestOptions) { o.Bridge = "br0,x=y" }, "not allowed"},
		{"long bridge", nil, func(o *GuestOptions) { o.Bridge = "averyveryverylongbridge" }, "15 characters"},
		{"bad netmask", nil, func(o *GuestOptions) { o.Netmask = netip.MustParseAddr("255.0.255.0") }, "contiguous"},
		{"v6 gateway", nil, func(o *GuestOptions) { o.Gateway = netip.MustParseAddr("fd00::1") }, "not an IPv4"},
		{"tiny memory", nil, func(o *GuestOptions) { o.MemoryMB = 1 }, "16 MiB"},
		{"format", nil, func(o *GuestOptions) { o.Format = "vmware" }, "unknown configuration format"},
		{"root device", nil, func(o *GuestOptions) { o.RootDevice = "/dev/hda1 rw" }, "space"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, o := good, seedOptions()
			if tc.node != nil {
				tc.node(&n)
			}
			if tc.opts != nil {
				tc.opts(&o)
			}
			for _, f := range Formats {
				_, err := RenderConfig(n, o, f)
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("%s: err = %v, want ErrInvalid", f, err)
					continue
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: error %q does not mention %q", f, err, tc.want)
				}
			}
		})
	}
}

func FuzzXLQuote(f *testing.F) {
	for _, s := range []string{"", "plain", `a"b'c\d`, "x\ny\r\t", "\x00", "é\xff\x01", `\x41\101`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := XLQuote(s)
		if strings.IndexByte(s, 0) >= 0 {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("XLQuote(%q) accepted a NUL: %q, %v", s, q, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("XLQuote(%q): %v", s, err)
		}
		if strings.ContainsAny(q, "\n") {
			t.Fatalf("XLQuote(%q) = %q spans lines", s, q)
		}
		settings, err := parseXL("extra = " + q + "\n")
		if err != nil {
			t.Fatalf("XLQuote(%q) = %q does not parse: %v", s, q, err)
		}
		if len(settings) != 1 || settings[0].key != "extra" || settings[0].value.kind != 's' || settings[0].value.str != s {
			t.Fatalf("XLQuote(%q) = %q parses back as %+v", s, q, settings)
		}
	})
}

func FuzzXLList(f *testing.F) {
	f.Add("file:/a,hda1,w|it's|")
	f.Add(`\|"|'`)
	f.Fuzz(func(t *testing.T, s string) {
		if strings.IndexByte(s, 0) >= 0 {
			return // covered by FuzzXLQuote
		}
		items := strings.Split(s, "|")
		l, err := XLList(items)
		if err != nil {
			t.Fatalf("XLList(%q): %v", items, err)
		}
		settings, err := parseXL("disk = " + l)
		if err != nil {
			t.Fatalf("XLList(%q) = %q does not parse: %v", items, l, err)
		}
		v := settings[0].value
		if len(settings) != 1 || v.kind != 'l' || len(v.items) != len(items) {
			t.Fatalf("XLList(%q) = %q parses back as %+v", items, l, settings)
		}
		for i, it := range v.items {
			if it.str != items[i] {
				t.Fatalf("item %d: got %q, want %q", i, it.str, items[i])
			}
		}
	})
}

// FuzzXLConfig renders whole configurations from arbitrary option values:
// either the input is refused with ErrInvalid, or the output parses, has
// each key once, and carries the values unchanged.
func FuzzXLConfig(f *testing.F) {
	f.Add("/images/ssi", "/images/ssi/boot/vmlinuz", "ssi.server=1.2.3.4:7470", "xenbr0", true)
	f.Add(`/srv/a "b" \c,d=e`, "/k'\\", `x="y z" \`, "", false)
	f.Fuzz(func(t *testing.T, dir, kernel, extra, bridge string, init bool) {
		n := seedNode1()
		n.InitNode = init
		o := GuestOptions{ImagesDir: dir, Kernel: kernel, ExtraArgs: extra, Bridge: bridge}
		out, err := XLConfig(n, o)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error is not ErrInvalid: %v", err)
			}
			return
		}
		settings, err := parseXL(string(out))
		if err != nil {
			t.Fatalf("output does not parse: %v\n%s", err, out)
		}
		seen := map[string]bool{}
		for _, s := range settings {
			if seen[s.key] {
				t.Fatalf("key %s twice", s.key)
			}
			seen[s.key] = true
		}
		if v, _ := xlGet(settings, "kernel"); kernel != "" && v.str != kernel {
			t.Fatalf("kernel = %q, want %q", v.str, kernel)
		}
		if v, _ := xlGet(settings, "extra"); !strings.HasSuffix(v.str, strings.TrimSpace(extra)) {
			t.Fatalf("extra = %q, want it to end with %q", v.str, extra)
		}
		disk, _ := xlGet(settings, "disk")
		wantDisks := 1
		if init {
			wantDisks = 2
		}
		if len(disk.items) != wantDisks {
			t.Fatalf("disk = %+v, want %d items", disk, wantDisks)
		}
	})
}
