package cli

// Network boot (docs/NETBOOT.md): ssi mkinitrd builds the initramfs whose
// /init boots a diskless node into the cluster; ssi vm starts diskless
// QEMU nodes on this machine. The work is internal/netboot's.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ssi-cluster/ssi/internal/netboot"
	"github.com/ssi-cluster/ssi/internal/provision"
	"github.com/ssi-cluster/ssi/internal/version"
)

func init() {
	cmd := &Command{
		Name:    "mkinitrd",
		Summary: "build the initramfs that boots a diskless node into the cluster",
		Usage:   "ssi mkinitrd [-o FILE | --images DIR] [--kernel-modules DIR] [--modules LIST] [--binary PATH] [--force]",
		Help: `Writes a gzip'd newc cpio archive whose /init is a static ssi binary: at
boot it mounts /proc, /sys and /dev, loads the kernel modules of the image
(a driver only when a device it binds to is present, by modalias),
brings up the node's NIC, gets its address by DHCP from the cluster, joins
with ssi.server= and ssi.token= from the kernel command line (what
'ssi xen-config --with-token' writes), starts the ssi daemon, mounts the
cluster root and switches into it. Each step is logged on the console;
a failure ends at a rescue message saying what to check.

--kernel-modules is the guest kernel's lib/modules/VERSION: the modules a
diskless node needs (fuse, virtio_pci, virtio_net, e1000, xen_netfront,
virtio_blk, xen_blkfront, virtio_rng; or --modules) are taken from it with
every module they depend on (from each module's .modinfo: no modules.dep
needed); those built into the kernel or absent are skipped. Without it no
module is included (a kernel with everything built in).

Without -o the image goes where ssi xen-config, --format qemu and
ssi-addnode --xennode look for it: IMAGES/boot/initrd (--images, default
/images/ssi; the directory ssi images init makes).

--binary is the ssi to run as /init (default: this one); it must be
statically linked (CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' ./cmd/ssi:
stripped, the image is about 7 MB instead of 13 and boots faster).

Examples:
  ssi mkinitrd --kernel-modules /lib/modules/6.1.0-28-amd64     # /images/ssi/boot/initrd
  ssi mkinitrd -o initrd --binary ./ssi-static --modules fuse,e1000`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		out := fs.String("o", "", "write the initramfs here (default IMAGES/boot/initrd)")
		images := fs.String("images", provision.DefaultImagesDir, "images directory whose boot/initrd is written without -o")
		kmods := fs.String("kernel-modules", "", "the guest kernel's module directory, lib/modules/VERSION")
		mods := fs.String("modules", "", "comma-separated modules to include instead of the default list (each must exist)")
		bin := fs.String("binary", "", "the static ssi binary to run as /init (default: this one)")
		force := fs.Bool("force", false, "replace FILE if it exists")
		if err := parseNone(env, cmd, fs, args); err != nil {
			return err
		}
		if *out == "" {
			boot := filepath.Join(*images, "boot")
			if st, err := os.Stat(boot); err != nil || !st.IsDir() {
				return fmt.Errorf("%s does not exist: create the images directory with 'ssi images init %s', or give -o FILE", boot, *images)
			}
			*out = filepath.Join(boot, "initrd")
		}
		o := netboot.Options{Binary: *bin, ModuleDir: *kmods, Version: version.Version}
		if o.Binary == "" {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("cannot find this ssi binary (%w); pass --binary", err)
			}
			o.Binary = self
		}
		if *mods != "" {
			if *kmods == "" {
				return Usagef("--modules needs --kernel-modules")
			}
			for _, m := range strings.Split(*mods, ",") {
				if m = strings.TrimSpace(m); m != "" {
					o.Modules = append(o.Modules, m)
				}
			}
			o.Required = true
		}
		if *kmods != "" {
			if st, err := os.Stat(*kmods); err != nil || !st.IsDir() {
				return Usagef("--kernel-modules %s: not a directory", *kmods)
			}
		}
		res, err := netboot.Write(*out, *force, o)
		if errors.Is(err, netboot.ErrNoModule) {
			return Usagef("%v", err)
		}
		if err != nil {
			return err
		}
		names := make([]string, len(res.Modules))
		for i, m := range res.Modules {
			names[i] = m.Name
		}
		fmt.Fprintf(env.Stdout, "wrote %s: %.1f MB, /init = %s, %d modules", *out, float64(res.Size)/(1<<20), o.Binary, len(names))
		if len(names) > 0 {
			fmt.Fprintf(env.Stdout, " (%s)", strings.Join(names, " "))
		}
		fmt.Fprintln(env.Stdout)
		if len(res.Builtin) > 0 {
			fmt.Fprintf(env.Stdout, "built into the kernel: %s\n", strings.Join(res.Builtin, " "))
		}
		if len(res.Missing) > 0 {
			fmt.Fprintf(env.Stdout, "not in this kernel (skipped): %s\n", strings.Join(res.Missing, " "))
		}
		for _, w := range res.Warnings {
			fmt.Fprintf(env.Stderr, "%s: warning: %s\n", env.Prog, w)
		}
		return nil
	}
	Register(cmd)
}

func init() {
	family := &Command{
		Name:    "vm",
		Summary: "start or stop diskless node VMs with QEMU on this machine",
		Usage:   "ssi vm up --nodes N [--dir DIR] [--kernel FILE --kernel-modules DIR] [--root DIR] [--binary PATH] [--memory MiB] | ssi vm down [--dir DIR]",
		Help: `The OpenSSI Xen how-to on one machine, for people without Xen: 'up' makes
a network namespace with a private bridge, runs node 1 as a daemon on this
machine inside it (serving DHCP on the bridge and exporting the cluster
root), registers nodes 2..N+1, builds the initramfs (ssi mkinitrd) and boots
N diskless QEMU guests (software emulation) from it, each with only a
kernel, that initramfs and a swap disk; it returns when all are UP.
'down' stops the guests and node 1 and removes the namespace.

The kernel is Debian's stock one fetched by scripts/netboot-kernel.sh
unless --kernel and --kernel-modules are given. --root is a root filesystem
tree (e.g. made with debootstrap) for node 1 to export; without it a
minimal root with only ssi in it is made. Needs root, qemu-system-x86,
iproute2 and util-linux. Node 1's socket is DIR/node1/ssi.sock, each
guest's console DIR/nodeK/console.log.

Examples:
  ssi vm up --nodes 2
  SSI_SOCKET=/var/lib/ssi-vm/node1/ssi.sock cluster -V
  ssi vm down`,
	}
	subs := map[string]subcommand{
		"up": {&Command{Name: "vm up", Summary: "start N diskless node VMs", Usage: "ssi vm up --nodes N [--dir DIR] [--kernel FILE --kernel-modules DIR] [--root DIR] [--binary PATH] [--initrd FILE] [--memory MiB] [--timeout D]",
			Help: "Example:\n  ssi vm up --nodes 2"}, runVMUp},
		"down": {&Command{Name: "vm down", Summary: "stop the VMs and node 1", Usage: "ssi vm down [--dir DIR]",
			Help: "Example:\n  ssi vm down"}, runVMDown},
	}
	family.Run = func(env *Env, args []string) error {
		return runSubcommand(env, family, subs, []string{"up", "down"}, args)
	}
	Register(family)
}

const defaultVMDir = "/var/lib/ssi-vm"

func runVMUp(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	n := fs.Int("nodes", 1, "diskless guests to start (nodes 2..N+1)")
	dir := fs.String("dir", defaultVMDir, "where node 1's data, the root, the initramfs and the consoles go")
	kernel := fs.String("kernel", "", "the guests' kernel (default: the one scripts/netboot-kernel.sh fetched)")
	kmods := fs.String("kernel-modules", "", "the kernel's lib/modules/VERSION (with --kernel)")
	root := fs.String("root", "", "a root filesystem tree for node 1 to export (default: a minimal one)")
	bin := fs.String("binary", "", "the static ssi for the initramfs (default: this one)")
	initrd := fs.String("initrd", "", "boot this initramfs (made by ssi mkinitrd for the same kernel) instead of building DIR/initrd")
	mem := fs.Int("memory", 512, "MiB of memory per guest")
	timeout := fs.Duration("timeout", 3*time.Minute, "how long to wait for the guests to be UP")
	if err := parseNone(env, cmd, fs, args); err != nil {
		return err
	}
	if *n < 1 || *n > 200 {
		return Usagef("--nodes: give 1 to 200")
	}
	if (*kernel == "") != (*kmods == "") {
		return Usagef("--kernel and --kernel-modules go together")
	}
	if *mem < 128 {
		return Usagef("--memory: at least 128")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return Usagef("--dir: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if *bin == "" {
		*bin = self
	}
	if err := netboot.VMReady(); err != nil {
		return err
	}
	if err := netboot.CheckStatic(*bin); err != nil {
		return err
	}
	return netboot.VMUp(env.Ctx, netboot.VMOptions{Dir: abs, Nodes: *n, Kernel: *kernel, ModuleDir: *kmods, Root: *root,
		Binary: *bin, Initrd: *initrd, Host: self, Memory: *mem, Timeout: *timeout, Log: env.Stdout})
}

func runVMDown(env *Env, cmd *Command, args []string) error {
	fs := NewFlags(env, cmd)
	dir := fs.String("dir", defaultVMDir, "the directory of ssi vm up")
	if err := parseNone(env, cmd, fs, args); err != nil {
		return err
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return Usagef("--dir: %v", err)
	}
	return netboot.VMDown(abs, env.Stdout)
}
