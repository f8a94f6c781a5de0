// Package provision owns everything ssi does on the host that runs the
// guests of a virtual cluster, the part of the OpenSSI Xen how-to that
// happens outside the cluster: the images directory layout (boot/, configs/,
// node1/, node2/, ...), the root and swap disk images in it, the per-node
// guest configurations (Xen xl, QEMU/KVM command lines, libvirt domain XML)
// and the planning of many nodes at once.
//
// It must not talk to the cluster: node identities (number, name, MAC, IP)
// come in as [Node] values that the caller took from, or will register in,
// the cluster's node table. Disk images are built with the e2fsprogs and
// util-linux tools (mke2fs, resize2fs, e2fsck, mkswap), never with loop
// mounts, so nothing here needs more privilege than write access to the
// images directory.
//
// File names follow the how-to and generalise it. For a node numbered N and
// named NAME, in the images directory DIR:
//
//	DIR/boot/vmlinuz            guest kernel (default, see GuestOptions)
//	DIR/boot/initrd             guest initial ramdisk (default)
//	DIR/configs/NAME.cfg        xl configuration (NAME.qemu, NAME.xml for the other formats)
//	DIR/nodeN/NAME.img          root filesystem image (init nodes only)
//	DIR/nodeN/NAME_swap.img     swap image (every node)
//
// so node 1 named ssi1 gets node1/ssi1.img and node1/ssi1_swap.img, node 2
// named ssi2 gets node2/ssi2_swap.img, exactly as in the how-to.
package provision

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ssi-cluster/ssi/internal/nodeaddr"
)

// Sentinel errors, returned wrapped; test with errors.Is.
var (
	// ErrInvalid: a value (name, path, address, size, option) cannot be used
	// or cannot be written safely into a configuration.
	ErrInvalid = errors.New("invalid value")
	// ErrExists: the file to create is already there and force was not given.
	ErrExists = errors.New("file already exists")
	// ErrTooSmall: the requested image size is below the minimum.
	ErrTooSmall = errors.New("size too small")
	// ErrShrink: an image would get smaller; ssi never shrinks images.
	ErrShrink = errors.New("refusing to shrink image")
	// ErrMissingTool: an external program (mke2fs, mkswap, ...) is not installed.
	ErrMissingTool = errors.New("required tool not found")
	// ErrInUse: the image is attached to a loop device (mounted or in use).
	ErrInUse = errors.New("image in use")
	// ErrConflict: two nodes share a number, name, MAC or IP address.
	ErrConflict = errors.New("conflicting nodes")
)

// DefaultImagesDir is where the how-to keeps everything, and ssi's default.
const DefaultImagesDir = "/images/ssi"

// DefaultMemoryMB is the guest memory used when GuestOptions.MemoryMB is 0.
// (The how-to used 128 and 64 MiB, too little for a current kernel.)
const DefaultMemoryMB = 512

// Labels written into the images, so a guest's fstab can name its swap the
// same way whatever the disk is called under Xen or QEMU.
const (
	RootLabel = "ssi-root"
	SwapLabel = "ssi-swap"
)

// maxCmdline is the x86 kernel's COMMAND_LINE_SIZE less the terminating NUL.
const maxCmdline = 2047

// Node is one cluster node as the host side sees it.
type Node struct {
	Num      int        // node number, 1 or more
	Name     string     // node (host) name, also used in file names
	HWAddr   string     // MAC address, canonical lower case (nodeaddr.ParseMAC)
	IPAddr   netip.Addr // cluster interconnect address
	InitNode bool       // holds the root image and a static address (node 1 in the how-to)
}

func (n Node) String() string {
	return fmt.Sprintf("node %d (%s, %s, %s)", n.Num, n.Name, n.HWAddr, n.IPAddr)
}

// Validate checks that the node can be provisioned: a positive number, a
// name that is a valid host name and file name, a unicast MAC address in
// canonical form and a usable IPv4 address.
func (n Node) Validate() error {
	if n.Num < 1 {
		return fmt.Errorf("%w: node number %d: node numbers start at 1", ErrInvalid, n.Num)
	}
	if err := ValidateName(n.Name); err != nil {
		return fmt.Errorf("node %d: %w", n.Num, err)
	}
	mac, err := nodeaddr.ParseMAC(n.HWAddr)
	if err != nil {
		return fmt.Errorf("%w: node %d (%s): %w", ErrInvalid, n.Num, n.Name, err)
	}
	if mac != n.HWAddr {
		return fmt.Errorf("%w: node %d (%s): MAC address %q is not in canonical form (use %s)", ErrInvalid, n.Num, n.Name, n.HWAddr, mac)
	}
	if !n.IPAddr.IsValid() {
		return fmt.Errorf("%w: node %d (%s) has no IP address", ErrInvalid, n.Num, n.Name)
	}
	if _, err := nodeaddr.ParseIP(n.IPAddr.String()); err != nil {
		return fmt.Errorf("%w: node %d (%s): %w", ErrInvalid, n.Num, n.Name, err)
	}
	if !n.IPAddr.Is4() {
		return fmt.Errorf("%w: node %d (%s): %s is not an IPv4 address (guests are configured over IPv4: kernel ip=, DHCPv4)", ErrInvalid, n.Num, n.Name, n.IPAddr)
	}
	return nil
}

// ValidateName checks a node name: 1 to 63 characters from A-Z a-z 0-9 and
// "-", "_", ".", starting with a letter or digit. Names become host names,
// file names and parts of configuration files, so nothing else is allowed.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty node name", ErrInvalid)
	}
	if len(name) > 63 {
		return fmt.Errorf("%w: node name %q is longer than 63 characters", ErrInvalid, name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if i > 0 {
			ok = ok || r == '-' || r == '_' || r == '.'
		}
		if !ok {
			return fmt.Errorf("%w: node name %q: character %q not allowed (use letters, digits, '-', '_', '.'; start with a letter or digit)", ErrInvalid, name, r)
		}
	}
	return nil
}

// GuestOptions are the settings shared by the guests of one cluster.
// Zero values take the documented defaults (see WithDefaults).
type GuestOptions struct {
	ImagesDir  string     // images directory as seen by xl/QEMU; default DefaultImagesDir
	Kernel     string     // guest kernel; default ImagesDir/boot/vmlinuz
	Ramdisk    string     // initial ramdisk; default ImagesDir/boot/initrd
	MemoryMB   int        // guest memory in MiB; default DefaultMemoryMB
	Netmask    netip.Addr // init nodes' netmask, e.g. 255.255.255.0; optional
	Gateway    netip.Addr // init nodes' default gateway; optional
	ExtraArgs  string     // appended to the kernel command line, e.g. "ssi.server=IP:7470 ssi.token=..."
	Bridge     string     // host bridge for the guest NIC; empty = the toolstack's default
	RootDevice string     // root= device; default /dev/hda1 (xl) or /dev/vda (QEMU, libvirt)
	QEMUBinary string     // default qemu-system-x86_64
	Format     Format     // what WriteConfig and ProvisionBulk write; default FormatXL

	// NodeArgs are kernel command line arguments for one node only, by node
	// number, appended after ExtraArgs: each node's own join token.
	NodeArgs map[int]string
	// Private marks configurations that hold secrets (join tokens):
	// WriteConfig and ProvisionBulk make them readable by their owner only.
	Private bool
}

// configMode is the file mode of a configuration written with o.
func configMode(o GuestOptions) os.FileMode {
	mode := os.FileMode(0o644)
	if o.Format == FormatQEMU {
		mode = 0o755 // a script
	}
	if o.Private {
		mode &= 0o700
	}
	return mode
}

// WithDefaults returns o with every empty field set to its default.
// RootDevice stays empty: its default depends on the output format.
func (o GuestOptions) WithDefaults() GuestOptions {
	if o.ImagesDir == "" {
		o.ImagesDir = DefaultImagesDir
	}
	if o.Kernel == "" {
		o.Kernel = filepath.Join(o.ImagesDir, "boot", "vmlinuz")
	}
	if o.Ramdisk == "" {
		o.Ramdisk = filepath.Join(o.ImagesDir, "boot", "initrd")
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = DefaultMemoryMB
	}
	if o.QEMUBinary == "" {
		o.QEMUBinary = "qemu-system-x86_64"
	}
	if o.Format == "" {
		o.Format = FormatXL
	}
	return o
}

// validate checks options after WithDefaults.
func (o GuestOptions) validate() error {
	for _, f := range []struct{ what, v string }{
		{"images directory", o.ImagesDir}, {"kernel", o.Kernel}, {"ramdisk", o.Ramdisk},
	} {
		if err := checkPath(f.what, f.v); err != nil {
			return err
		}
	}
	if o.MemoryMB < 16 || o.MemoryMB > 1<<24 {
		return fmt.Errorf("%w: memory %d MiB: use 16 MiB to 16 TiB", ErrInvalid, o.MemoryMB)
	}
	if o.Netmask.IsValid() {
		if _, err := maskBits(o.Netmask); err != nil {
			return err
		}
	}
	if o.Gateway.IsValid() && !o.Gateway.Is4() {
		return fmt.Errorf("%w: gateway %s is not an IPv4 address", ErrInvalid, o.Gateway)
	}
	if err := checkCmdline("extra kernel arguments", o.ExtraArgs); err != nil {
		return err
	}
	if o.Bridge != "" {
		if err := checkIfName(o.Bridge); err != nil {
			return err
		}
	}
	if o.RootDevice != "" {
		if err := checkCmdline("root device", o.RootDevice); err != nil {
			return err
		}
		if strings.ContainsAny(o.RootDevice, " \t") {
			return fmt.Errorf("%w: root device %q contains a space", ErrInvalid, o.RootDevice)
		}
	}
	if o.QEMUBinary == "" || strings.ContainsRune(o.QEMUBinary, 0) {
		return fmt.Errorf("%w: QEMU binary %q", ErrInvalid, o.QEMUBinary)
	}
	if _, err := ParseFormat(string(o.Format)); err != nil {
		return err
	}
	return nil
}

// maskBits returns the prefix length of a contiguous IPv4 netmask.
func maskBits(m netip.Addr) (int, error) {
	if !m.Is4() {
		return 0, fmt.Errorf("%w: netmask %s is not an IPv4 netmask", ErrInvalid, m)
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for v&(1<<31) != 0 {
		ones++
		v <<= 1
	}
	if v != 0 {
		return 0, fmt.Errorf("%w: netmask %s is not contiguous (e.g. 255.255.255.0)", ErrInvalid, m)
	}
	return ones, nil
}

// checkPath refuses paths that no configuration format can carry: empty,
// relative, NUL or other control characters, invalid UTF-8.
func checkPath(what, p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty %s path", ErrInvalid, what)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%w: %s path %q is not absolute (xl and QEMU resolve it from wherever they are started)", ErrInvalid, what, p)
	}
	if !utf8.ValidString(p) {
		return fmt.Errorf("%w: %s path %q is not valid UTF-8", ErrInvalid, what, p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s path %q contains control character %U", ErrInvalid, what, p, r)
		}
	}
	return nil
}

// checkCmdline refuses text that cannot be part of a kernel command line.
func checkCmdline(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalid, what, s)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s %q contains control character %U (the kernel command line is one line)", ErrInvalid, what, s, r)
		}
	}
	return nil
}

// checkIfName checks a Linux network interface name (bridge).
func checkIfName(s string) error {
	if len(s) > 15 {
		return fmt.Errorf("%w: bridge name %q is longer than 15 characters", ErrInvalid, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%w: bridge name %q: character %q not allowed (letters, digits, '-', '_', '.')", ErrInvalid, s, r)
		}
	}
	return nil
}

// NodeDir is the directory of node n's files: DIR/nodeN.
func NodeDir(dir string, n Node) string {
	return filepath.Join(dir, "node"+strconv.Itoa(n.Num))
}

// RootImagePath is the root filesystem image of init node n: DIR/nodeN/NAME.img.
func RootImagePath(dir string, n Node) string {
	return filepath.Join(NodeDir(dir, n), n.Name+".img")
}

// SwapImagePath is the swap image of node n: DIR/nodeN/NAME_swap.img.
func SwapImagePath(dir string, n Node) string {
	return filepath.Join(NodeDir(dir, n), n.Name+"_swap.img")
}

// ConfigPath is where node n's configuration in format f is written:
// DIR/configs/NAME.cfg (xl), NAME.qemu (QEMU) or NAME.xml (libvirt).
func ConfigPath(dir string, n Node, f Format) string {
	ext := ".cfg"
	switch f {
	case FormatQEMU:
		ext = ".qemu"
	case FormatLibvirt:
		ext = ".xml"
	}
	return filepath.Join(dir, "configs", n.Name+ext)
}

// kernelIPParam is the kernel's ip= parameter that configures an init
// node's address before user space runs: what xm made of the how-to's
// ip/netmask/gateway keys, which xl no longer reads.
func kernelIPParam(n Node, o GuestOptions) string {
	var gw, mask string
	if o.Gateway.IsValid() {
		gw = o.Gateway.String()
	}
	if o.Netmask.IsValid() {
		mask = o.Netmask.String()
	}
	return fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off", n.IPAddr, gw, mask, n.Name)
}

// cmdline builds the kernel command line (without root=, which xl adds
// from its own key) and checks its length.
func cmdline(n Node, o GuestOptions, prefix ...string) (string, error) {
	parts := append([]string(nil), prefix...)
	if n.InitNode {
		parts = append(parts, kernelIPParam(n, o))
	}
	if s := strings.TrimSpace(o.ExtraArgs); s != "" {
		parts = append(parts, s)
	}
	if s := strings.TrimSpace(o.NodeArgs[n.Num]); s != "" {
		if err := checkCmdline(fmt.Sprintf("kernel arguments of %s", n), s); err != nil {
			return "", err
		}
		parts = append(parts, s)
	}
	line := strings.Join(parts, " ")
	if len(line) > maxCmdline {
		return "", fmt.Errorf("%w: kernel command line for %s is %d bytes, the kernel takes at most %d", ErrInvalid, n, len(line), maxCmdline)
	}
	return line, nil
}

// prepare validates a node and options for rendering and fills defaults.
func prepare(n Node, o GuestOptions) (GuestOptions, error) {
	if err := n.Validate(); err != nil {
		return o, err
	}
	o = o.WithDefaults()
	if err := o.validate(); err != nil {
		return o, err
	}
	return o, nil
}
