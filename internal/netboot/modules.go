package netboot

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are what a diskless node of ssi needs from a modular
// kernel such as Debian's stock one: FUSE for the cluster root, the NICs
// QEMU and Xen guests get (virtio-net, e1000, Xen's netfront), the virtio
// block driver for the swap disk, and virtio-rng (without an entropy source
// the DHCP client blocks on getrandom for minutes). Whichever of them the
// kernel has built in, or lacks, is skipped (lacking the NIC of the guest
// is caught at boot, with a message).
var DefaultModules = []string{"fuse", "virtio_pci", "virtio_net", "e1000", "xen_netfront", "virtio_blk", "xen_blkfront", "virtio_rng"}

// ErrNoModule: a module was asked for that the kernel's module tree
// neither has nor builds in.
var ErrNoModule = errors.New("no such kernel module")

// Module is one kernel module file to load, with its dependencies' names.
type Module struct {
	Name    string   // normalised: '-' as '_'
	Path    string   // the file, under the module tree
	Depends []string // normalised names, from .modinfo
	Aliases []string // its device aliases (DeviceAliases of .modinfo's alias=)
}

// ModuleTree is a kernel's module directory (lib/modules/VERSION): the
// files under kernel/ by module name, and the modules built in.
type ModuleTree struct {
	Dir     string
	files   map[string]string // name -> path
	builtin map[string]bool
}

// NormalizeModule is the kernel's name for a module: the file name without
// .ko, with '-' as '_'.
func NormalizeModule(name string) string {
	name = filepath.Base(name)
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// OpenModuleTree indexes DIR, a kernel's lib/modules/VERSION. It needs no
// modules.dep (Debian's kernel package ships none): dependencies come from
// each module's .modinfo.
func OpenModuleTree(dir string) (*ModuleTree, error) {
	t := &ModuleTree{Dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	root := filepath.Join(dir, "kernel")
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s is not a kernel module directory (no kernel/ in it; give lib/modules/VERSION)", dir)
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".ko") {
			t.files[NormalizeModule(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the module tree %s: %w", dir, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				t.builtin[NormalizeModule(l)] = true
			}
		}
	}
	return t, nil
}

// Builtin says whether the kernel has the module built in.
func (t *ModuleTree) Builtin(name string) bool { return t.builtin[NormalizeModule(name)] }

// Has says whether the tree has the module as a file.
func (t *ModuleTree) Has(name string) bool { _, ok := t.files[NormalizeModule(name)]; return ok }

// ReadModinfo returns the key=value pairs of a module file's .modinfo
// section (a key may repeat, e.g. alias).
func ReadModinfo(path string) (map[string][]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s is not a kernel module: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s is not a kernel module: no .modinfo section", path)
	}
	b, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading %s's .modinfo: %w", path, err)
	}
	return parseModinfo(b), nil
}

func parseModinfo(b []byte) map[string][]string {
	info := map[string][]string{}
	for _, kv := range bytes.Split(b, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte{'='})
		if !ok || len(k) == 0 {
			continue
		}
		info[string(k)] = append(info[string(k)], string(v))
	}
	return info
}

// Resolve returns the modules to load for names, dependencies first, each
// once; modules the kernel builds in are left out and listed in builtin. A
// name the tree lacks is an error wrapping ErrNoModule when it was asked
// for with required, and is listed in missing otherwise; a dependency the
// tree lacks is always an error (the module could not load).
func (t *ModuleTree) Resolve(names []string, required bool) (mods []Module, builtin, missing []string, err error) {
	done := map[string]bool{}
	onPath := map[string]bool{}
	var visit func(name, by string) error
	visit = func(name, by string) error {
		name = NormalizeModule(name)
		if done[name] {
			return nil
		}
		if t.builtin[name] {
			done[name] = true
			builtin = append(builtin, name)
			return nil
		}
		p, ok := t.files[name]
		if !ok {
			if by == "" && !required {
				done[name] = true
				missing = append(missing, name)
				return nil
			}
			if by != "" {
				return fmt.Errorf("%w: %s (needed by %s) is not in %s", ErrNoModule, name, by, t.Dir)
			}
			return fmt.Errorf("%w: %s is neither in %s nor built into the kernel", ErrNoModule, name, t.Dir)
		}
		if onPath[name] {
			return fmt.Errorf("kernel modules depend on each other in a cycle through %s", name)
		}
		onPath[name] = true
		info, err := ReadModinfo(p)
		if err != nil {
			return err
		}
		var deps []string
		for _, d := range info["depends"] {
			for _, n := range strings.Split(d, ",") {
				if n = strings.TrimSpace(n); n != "" {
					deps = append(deps, NormalizeModule(n))
				}
			}
		}
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		onPath[name] = false
		done[name] = true
		mods = append(mods, Module{Name: name, Path: p, Depends: deps, Aliases: DeviceAliases(info["alias"])})
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, nil, nil, err
		}
	}
	return mods, builtin, missing, nil
}
