package provision

import (
	"fmt"
	"os"
	"path/filepath"
)

// Format is a guest configuration format.
type Format string

// Supported formats.
const (
	FormatXL      Format = "xl"      // Xen xl.cfg(5), the how-to's format
	FormatQEMU    Format = "qemu"    // a /bin/sh script running QEMU/KVM
	FormatLibvirt Format = "libvirt" // libvirt domain XML for virsh define
)

// Formats lists the supported formats, for help texts.
var Formats = []Format{FormatXL, FormatQEMU, FormatLibvirt}

// ParseFormat parses a --format value; "" means FormatXL.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case "", FormatXL:
		return FormatXL, nil
	case FormatQEMU, FormatLibvirt:
		return Format(s), nil
	}
	return "", fmt.Errorf("%w: unknown configuration format %q (use xl, qemu or libvirt)", ErrInvalid, s)
}

// RenderConfig returns the contents of node n's configuration file in
// format f (FormatXL if empty).
func RenderConfig(n Node, o GuestOptions, f Format) ([]byte, error) {
	f, err := ParseFormat(string(f))
	if err != nil {
		return nil, err
	}
	switch f {
	case FormatQEMU:
		return qemuScript(n, o)
	case FormatLibvirt:
		return LibvirtXML(n, o)
	default:
		return XLConfig(n, o)
	}
}

// WriteConfig writes node n's configuration in format o.Format to
// ConfigPath(dir, n, o.Format) and returns that path. dir is where the
// file goes; the paths inside it come from o.ImagesDir, which defaults to
// dir. An existing file is replaced only if force is set. The file appears
// whole or not at all.
func WriteConfig(dir string, n Node, o GuestOptions, force bool) (string, error) {
	if o.ImagesDir == "" {
		o.ImagesDir = dir
	}
	o = o.WithDefaults()
	data, err := RenderConfig(n, o, o.Format)
	if err != nil {
		return "", err
	}
	path := ConfigPath(dir, n, o.Format)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("creating configs directory: %w", err)
	}
	mode := configMode(o)
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return "", err
	}
	if err := commitTemp(tmp, path, force); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return path, nil
}

// writeTemp writes data to a new temporary file next to path.
func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return tmp, nil
}
