package netboot

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeModule writes an ELF object with a .modinfo section holding
// name= and depends= (what the kernel's modpost writes), made with the
// toolchain's cc and objcopy.
func fakeModule(t *testing.T, dir, file, depends string) {
	t.Helper()
	obj := filepath.Join(t.TempDir(), "empty.o")
	if out, err := exec.Command("cc", "-c", "-x", "c", "/dev/null", "-o", obj).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v: %s", err, out)
	}
	info := filepath.Join(t.TempDir(), "modinfo")
	name := NormalizeModule(file)
	alias := ""
	if name == "virtio_net" { // as Debian's: a device alias and one on no device bus
		alias = "alias=virtio:d00000001v*\x00alias=net-pf-99\x00"
	}
	if err := os.WriteFile(info, []byte("license=GPL\x00depends="+depends+"\x00"+alias+"name="+name+"\x00vermagic=6.1.0 SMP\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "kernel", file)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("objcopy", "--add-section", ".modinfo="+info, obj, p).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v: %s", err, out)
	}
}

// fakeTree is Debian 6.1's virtio-net chain, with a builtin and a cycle.
func fakeTree(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "6.1.0-test")
	for _, m := range [][2]string{
		{"drivers/net/virtio_net.ko", "net_failover,virtio,virtio_ring"},
		{"drivers/net/net_failover.ko", "failover"},
		{"net/core/failover.ko", ""},
		{"drivers/virtio/virtio.ko", ""},
		{"drivers/virtio/virtio_ring.ko", "virtio"},
		{"drivers/virtio/virtio_pci.ko", "virtio_pci_modern_dev,virtio,virtio_ring,virtio_pci_legacy_dev"},
		{"drivers/virtio/virtio_pci_modern_dev.ko", ""},
		{"drivers/virtio/virtio_pci_legacy_dev.ko", ""},
		{"drivers/char/hw_random/virtio-rng.ko", "virtio,virtio_ring,rng_core"}, // rng_core: built in
		{"fs/fuse/fuse.ko", ""},
		{"x/cyc_a.ko", "cyc_b"},
		{"x/cyc_b.ko", "cyc_a"},
		{"x/broken.ko", "not_there"},
	} {
		fakeModule(t, dir, m[0], m[1])
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/char/hw_random/rng-core.ko\nkernel/net/packet/af_packet.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func names(ms []Module) []string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return s
}

func TestResolveModules(t *testing.T) {
	tree, err := OpenModuleTree(fakeTree(t))
	if err != nil {
		t.Fatal(err)
	}
	mods, builtin, missing, err := tree.Resolve([]string{"fuse", "virtio_pci", "virtio_net", "virtio-rng", "af_packet", "e1000", "virtio_net"}, false)
	if err != nil {
		t.Fatal(err)
	}
	got := names(mods)
	// Each once, every module after all it depends on.
	seen := map[string]int{}
	for i, n := range got {
		if _, dup := seen[n]; dup {
			t.Fatalf("%s twice in %v", n, got)
		}
		seen[n] = i
	}
	for _, m := range mods {
		for _, d := range m.Depends {
			if tree.Builtin(d) {
				continue
			}
			if j, ok := seen[d]; !ok || j > seen[m.Name] {
				t.Errorf("%s is loaded before its dependency %s: %v", m.Name, d, got)
			}
		}
	}
	// Dependencies in name order, depth first.
	want := []string{"fuse", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_rng"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if !reflect.DeepEqual(builtin, []string{"rng_core", "af_packet"}) {
		t.Errorf("builtin %v", builtin)
	}
	if !reflect.DeepEqual(missing, []string{"e1000"}) {
		t.Errorf("missing %v", missing)
	}
	if _, _, _, err := tree.Resolve([]string{"e1000"}, true); !errors.Is(err, ErrNoModule) {
		t.Errorf("a required module that is absent: %v", err)
	}
	if _, _, _, err := tree.Resolve([]string{"broken"}, false); !errors.Is(err, ErrNoModule) || !strings.Contains(err.Error(), "not_there (needed by broken)") {
		t.Errorf("a missing dependency: %v", err)
	}
	if _, _, _, err := tree.Resolve([]string{"cyc_a"}, false); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("a cycle: %v", err)
	}
	if _, err := OpenModuleTree(t.TempDir()); err == nil {
		t.Error("a directory without kernel/ was taken for a module tree")
	}
	if _, err := ReadModinfo(filepath.Join(tree.Dir, "modules.builtin")); err == nil {
		t.Error("a text file was read as a module")
	}
}

// TestResolveDebianKernel checks the resolution against the Debian kernel
// scripts/netboot-kernel.sh fetched (the measured virtio_net
// chain), when it is there.
func TestResolveDebianKernel(t *testing.T) {
	mods, _, _, err := debianTree(t).Resolve([]string{"virtio_net"}, true)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(names(mods), " ")
	for _, m := range []string{"virtio", "virtio_ring", "failover", "net_failover", "virtio_net"} {
		if !strings.Contains(" "+got+" ", " "+m+" ") {
			t.Errorf("%s not in %s", m, got)
		}
	}
	if !strings.HasSuffix(got, "virtio_net") {
		t.Errorf("virtio_net is not last: %s", got)
	}
}

// debianTree is the module tree of the Debian kernel
// scripts/netboot-kernel.sh fetched; the test is skipped without one.
func debianTree(t *testing.T) *ModuleTree {
	t.Helper()
	_, dir, err := FindKernel(DefaultKernelCache())
	if err != nil {
		t.Skipf("no Debian kernel fetched (scripts/netboot-kernel.sh): %v", err)
	}
	tree, err := OpenModuleTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}
