package netboot

import (
	"bufio"
	"bytes"
	"path"
	"path/filepath"
	"strings"
)

// ModaliasesList is the initramfs file naming, per module, the device
// aliases it binds to (one "NAME PATTERN" a line, from the module's
// .modinfo). The boot flow loads such a module only when a device with a
// matching modalias is present; a module without a line (FUSE, the
// libraries drivers depend on) always loads.
const ModaliasesList = "etc/ssi/modaliases"

// deviceBuses are the buses whose devices the boot flow looks at in
// /sys/bus/BUS/devices/*/modalias: a module with an alias on one of them
// is a driver for such a device. Aliases on other buses (a char-major
// number, a devname, a crypto name) say nothing about devices, and a
// module having only those always loads.
var deviceBuses = []string{"pci", "virtio", "xen"}

// DeviceAliases returns the module's aliases on the device buses.
func DeviceAliases(aliases []string) []string {
	var out []string
	for _, a := range aliases {
		bus, _, ok := strings.Cut(a, ":")
		if !ok {
			continue
		}
		for _, b := range deviceBuses {
			if bus == b {
				out = append(out, a)
			}
		}
	}
	return out
}

// formatModaliases is the ModaliasesList file for mods.
func formatModaliases(mods []Module) []byte {
	var b bytes.Buffer
	for _, m := range mods {
		for _, a := range m.Aliases {
			b.WriteString(m.Name + " " + a + "\n")
		}
	}
	return b.Bytes()
}

// ParseModaliases reads a ModaliasesList file: patterns by module name.
// Malformed lines are ignored (the module then loads unconditionally).
func ParseModaliases(b []byte) map[string][]string {
	out := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		out[f[0]] = append(out[f[0]], f[1])
	}
	return out
}

// WantModule says whether a module with the device alias patterns pats
// is to be loaded when the devices present have the modaliases devs: yes
// when it has no device aliases (it is no device driver) or one pattern
// matches one device (the kernel's fnmatch, which path.Match follows for
// names without '/'); a malformed pattern counts as a match, so a module
// is never left out for a pattern this cannot read.
func WantModule(pats, devs []string) bool {
	if len(pats) == 0 {
		return true
	}
	for _, p := range pats {
		for _, d := range devs {
			ok, err := path.Match(p, d)
			if ok || err != nil {
				return true
			}
		}
	}
	return false
}

// modulePathName is the module name of a path in ModulesList.
func modulePathName(p string) string { return NormalizeModule(filepath.Base(p)) }
