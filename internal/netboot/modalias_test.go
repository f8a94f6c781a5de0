package netboot

import (
	"reflect"
	"testing"
)

// The modaliases of a QEMU guest (a pc machine with virtio-net-pci,
// virtio-rng-pci and a virtio disk; `ssi vm`'s have no virtio-rng), as
// its /sys shows them once virtio_pci is loaded.
var qemuDevices = []string{
	"pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00", // host bridge
	"pci:v00008086d00007000sv00001AF4sd00001100bc06sc01i00", // ISA bridge
	"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", // virtio-net-pci
	"pci:v00001AF4d00001005sv00001AF4sd00000004bc00scFFi00", // virtio-rng-pci
	"pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", // virtio-blk-pci
	"virtio:d00000001v00001AF4",
	"virtio:d00000004v00001AF4",
	"virtio:d00000002v00001AF4",
}

func TestWantModule(t *testing.T) {
	for _, c := range []struct {
		name string
		pats []string
		want bool
	}{
		{"fuse (no device alias)", nil, true},
		{"virtio_pci", []string{"pci:v00001AF4d*sv*sd*bc*sc*i*"}, true},
		{"virtio_net", []string{"virtio:d00000001v*"}, true},
		{"e1000", []string{"pci:v00008086d0000100Esv*sd*bc*sc*i*", "pci:v00008086d0000100Fsv*sd*bc*sc*i*"}, false},
		{"xen_netfront", []string{"xen:vif"}, false},
		{"xen_blkfront", []string{"xen:vbd"}, false},
		{"a pattern path.Match cannot read loads", []string{"pci:v[0000"}, true},
	} {
		if got := WantModule(c.pats, qemuDevices); got != c.want {
			t.Errorf("%s: WantModule(%q) = %v, want %v", c.name, c.pats, got, c.want)
		}
	}
	// A Xen guest: its front-ends load, virtio's drivers do not.
	xen := []string{"xen:vif", "xen:vbd"}
	if !WantModule([]string{"xen:vif"}, xen) || WantModule([]string{"virtio:d00000001v*"}, xen) {
		t.Error("a Xen guest's devices chose the wrong drivers")
	}
	// Before virtio_pci has loaded there is no virtio device: virtio_net waits for its bus.
	if WantModule([]string{"virtio:d00000001v*"}, qemuDevices[:5]) {
		t.Error("virtio_net wanted without a virtio device")
	}
}

func TestDeviceAliases(t *testing.T) {
	got := DeviceAliases([]string{"char-major-10-229", "devname:fuse", "fs-fuse", "xen:vif", "pci:v00008086d0000100Esv*sd*bc*sc*i*", "virtio:d00000001v*", "acpi*:PNP0501:*"})
	want := []string{"xen:vif", "pci:v00008086d0000100Esv*sd*bc*sc*i*", "virtio:d00000001v*"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DeviceAliases = %q, want %q", got, want)
	}
}

func TestModaliasesRoundTrip(t *testing.T) {
	mods := []Module{
		{Name: "fuse"},
		{Name: "virtio_net", Aliases: []string{"virtio:d00000001v*"}},
		{Name: "e1000", Aliases: []string{"pci:v00008086d0000100Esv*sd*bc*sc*i*", "pci:v00008086d0000100Fsv*sd*bc*sc*i*"}},
	}
	got := ParseModaliases(append(formatModaliases(mods), []byte("garbage line with words\n\n")...))
	want := map[string][]string{"virtio_net": mods[1].Aliases, "e1000": mods[2].Aliases}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseModaliases = %q, want %q", got, want)
	}
}

// TestDebianModalias: with the Debian kernel scripts/netboot-kernel.sh
// fetched, the default modules' real aliases choose, for a QEMU guest of
// ssi vm, every virtio driver and FUSE and none of the Xen front-ends or
// e1000.
func TestDebianModalias(t *testing.T) {
	mods, _, _, err := debianTree(t).Resolve(DefaultModules, false)
	if err != nil {
		t.Fatal(err)
	}
	pats := ParseModaliases(formatModaliases(mods))
	var loaded, left []string
	for _, m := range mods {
		if WantModule(pats[m.Name], qemuDevices) {
			loaded = append(loaded, m.Name)
		} else {
			left = append(left, m.Name)
		}
	}
	if !reflect.DeepEqual(left, []string{"e1000", "xen_netfront", "xen_blkfront"}) {
		t.Errorf("left out %v (loaded %v), want e1000 and the Xen front-ends", left, loaded)
	}
	for _, m := range []string{"fuse", "virtio_pci", "virtio_net", "virtio_blk", "virtio_rng"} {
		found := false
		for _, l := range loaded {
			found = found || l == m
		}
		if !found {
			t.Errorf("%s not loaded (loaded %v)", m, loaded)
		}
	}
}
