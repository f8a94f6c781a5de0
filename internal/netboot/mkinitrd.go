package netboot

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Paths inside the initramfs.
const (
	InitPath    = "init"              // the static ssi binary, run by the kernel as /init
	ModulesList = "etc/ssi/modules"   // the modules to load, in order, one path a line
	NewRoot     = "newroot"           // where the cluster root is mounted
	DataDir     = "var/lib/ssi"       // the node's data directory (in memory)
	ModulesDir  = "lib/modules"       // the module files, flat
	versionFile = "etc/ssi/initrd-of" // what the image was built from, for people
)

// Size bounds outside which Build warns. ssi is one static Go binary of
// some 26 MB (19 MB stripped with -ldflags='-s -w') that gzip brings to
// about half; with the modules a diskless node needs the image is 7 MB
// (stripped) to 13 MB. The seed's "more than 2 MB
// means it was built wrong" was for a C init with a few modules; for a
// Go init the signs are below 5 MB (the binary is not ssi, or stripped of
// something it needs) or above 40 MB (a whole module tree, or a binary
// built with debug data or the race detector).
const (
	WarnBelow = 5 << 20
	WarnAbove = 40 << 20
)

// Options of Build.
type Options struct {
	Binary    string   // the static ssi binary to run as /init
	ModuleDir string   // the kernel's lib/modules/VERSION ('' for a kernel with everything built in)
	Modules   []string // modules to include; nil: DefaultModules (those the tree lacks are skipped)
	Required  bool     // Modules were named by the user: each must exist
	Version   string   // this ssi's release, recorded in the image
	Log       io.Writer
}

// Result says what Build put in the image.
type Result struct {
	Size     int64
	Modules  []Module
	Builtin  []string
	Missing  []string
	Warnings []string
}

// ErrNotStatic: the binary needs a dynamic loader, which the initramfs does
// not have.
var ErrNotStatic = errors.New("not a static binary")

// CheckStatic refuses a binary that is not a statically linked ELF
// executable (no PT_INTERP).
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: %w (it needs a dynamic loader, which the initramfs does not have); build one with: CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o ssi-static ./cmd/ssi", path, ErrNotStatic)
		}
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s: not an executable", path)
	}
	return nil
}

// Build makes the initramfs image in memory.
func Build(o Options) (*Image, Result, error) {
	var res Result
	if err := CheckStatic(o.Binary); err != nil {
		return nil, res, err
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, res, err
	}
	im := NewImage()
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc/ssi", NewRoot, DataDir, "bin"} {
		if err := im.Dir(d, 0o755); err != nil {
			return nil, res, err
		}
	}
	if err := im.Dir("tmp", 0o1777); err != nil {
		return nil, res, err
	}
	if err := im.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, res, err
	}
	if err := im.File(InitPath, bin, 0o755); err != nil {
		return nil, res, err
	}
	if err := im.Symlink("bin/ssi", "/"+InitPath); err != nil {
		return nil, res, err
	}
	kver := ""
	var list strings.Builder
	if o.ModuleDir != "" {
		t, err := OpenModuleTree(o.ModuleDir)
		if err != nil {
			return nil, res, err
		}
		kver = filepath.Base(filepath.Clean(o.ModuleDir))
		names := o.Modules
		if names == nil {
			names = DefaultModules
		}
		res.Modules, res.Builtin, res.Missing, err = t.Resolve(names, o.Required)
		if err != nil {
			return nil, res, err
		}
		for _, m := range res.Modules {
			b, err := os.ReadFile(m.Path)
			if err != nil {
				return nil, res, err
			}
			p := filepath.Join(ModulesDir, kver, m.Name+".ko")
			if err := im.File(p, b, 0o644); err != nil {
				return nil, res, err
			}
			fmt.Fprintf(&list, "/%s\n", p)
		}
	}
	if err := im.File(ModulesList, []byte(list.String()), 0o644); err != nil {
		return nil, res, err
	}
	if err := im.File(ModaliasesList, formatModaliases(res.Modules), 0o644); err != nil {
		return nil, res, err
	}
	info := fmt.Sprintf("ssi %s\nkernel %s\n", o.Version, kver)
	if err := im.File(versionFile, []byte(info), 0o644); err != nil {
		return nil, res, err
	}
	return im, res, nil
}

// Write builds the image and writes it to out (through a temporary file
// renamed into place: an interrupted run leaves nothing), refusing to
// replace an existing file without force.
func Write(out string, force bool, o Options) (Result, error) {
	if !force {
		if _, err := os.Lstat(out); err == nil {
			return Result{}, fmt.Errorf("%s: %w (pass --force to replace it)", out, os.ErrExist)
		}
	}
	im, res, err := Build(o)
	if err != nil {
		return res, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp*")
	if err != nil {
		return res, err
	}
	defer os.Remove(tmp.Name())
	n, err := im.WriteTo(tmp)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return res, err
	}
	res.Size = n
	res.Warnings = sizeWarnings(n)
	return res, nil
}

func sizeWarnings(n int64) []string {
	switch {
	case n < WarnBelow:
		return []string{fmt.Sprintf("the image is only %.1f MB (an ssi initramfs is 7-13 MB): is --binary really a static ssi?", float64(n)/(1<<20))}
	case n > WarnAbove:
		return []string{fmt.Sprintf("the image is %.1f MB (an ssi initramfs is 7-13 MB): was it built with the race detector or debug data, or with more modules than a diskless node needs?", float64(n)/(1<<20))}
	}
	return nil
}
