package provision

import (
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"
)

// QEMU (and libvirt) guests differ from Xen PV guests in one way that
// matters: every -drive is a whole virtio disk, so the root image is
// /dev/vda (not hda1) and the swap image is whichever virtio disk comes
// next (vdb on an init node, vda elsewhere). Images made by
// CreateSwapImage carry the label SwapLabel, so a guest's fstab can say
// "LABEL=ssi-swap none swap sw 0 0" on every node.

// qemuDefaultRoot is the root device of QEMU and libvirt guests.
const qemuDefaultRoot = "/dev/vda"

// qemuValue escapes a value inside a QEMU option list ("a=b,c=d"), where a
// comma is written as two commas.
func qemuValue(s string) string {
	return strings.ReplaceAll(s, ",", ",,")
}

// QEMUCommand returns the QEMU/KVM command line (argv[0] is the QEMU
// binary) equivalent to node n's xl configuration: direct kernel boot
// with -kernel/-initrd/-append, -m, one virtio -drive per image (root
// image on init nodes, then the swap image), a virtio NIC with the node's
// MAC on a host bridge (-netdev bridge: GuestOptions.Bridge, or
// qemu-bridge-helper's default br0), a virtio RNG, the serial console on stdio, and KVM
// acceleration falling back to TCG.
func QEMUCommand(n Node, o GuestOptions) ([]string, error) {
	o, err := prepare(n, o)
	if err != nil {
		return nil, err
	}
	root := o.RootDevice
	if root == "" {
		root = qemuDefaultRoot
	}
	line, err := cmdline(n, o, "root="+root, "ro", "console=ttyS0")
	if err != nil {
		return nil, err
	}
	argv := []string{
		o.QEMUBinary,
		"-name", n.Name,
		"-machine", "accel=kvm:tcg",
		"-m", strconv.Itoa(o.MemoryMB),
		"-nographic",
		"-kernel", o.Kernel,
		"-initrd", o.Ramdisk,
		"-append", line,
	}
	if n.InitNode {
		argv = append(argv, "-drive", "file="+qemuValue(RootImagePath(o.ImagesDir, n))+",format=raw,if=virtio")
	}
	argv = append(argv, "-drive", "file="+qemuValue(SwapImagePath(o.ImagesDir, n))+",format=raw,if=virtio")
	netdev := "bridge,id=net0"
	if o.Bridge != "" {
		netdev += ",br=" + o.Bridge
	}
	argv = append(argv,
		"-netdev", netdev,
		"-device", "virtio-net-pci,netdev=net0,mac="+n.HWAddr,
		// An entropy source: without one a guest's early getrandom
		// (the DHCP client of ssi mkinitrd's /init) blocks for minutes
		// under emulation (docs/NETBOOT.md).
		"-device", "virtio-rng-pci",
	)
	return argv, nil
}

// ShellJoin renders argv as one POSIX shell command line, quoting every
// word that is not made only of characters the shell never interprets.
// (Words must not contain newlines for the result to be a single line;
// QEMUCommand never produces any.)
func ShellJoin(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(shellQuote(a))
	}
	return b.String()
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_-./:=,@%+", c) >= 0) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// qemuScript is the file written for FormatQEMU: a shell script that
// starts the guest.
func qemuScript(n Node, o GuestOptions) ([]byte, error) {
	argv, err := QEMUCommand(n, o)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "#!/bin/sh\n# QEMU/KVM command line of ssi node %d (%s), written by ssi xen-config --format qemu.\nexec %s \"$@\"\n",
		n.Num, n.Name, ShellJoin(argv)), nil
}

// libvirt domain XML, the subset ssi writes.
type lvDomain struct {
	XMLName xml.Name    `xml:"domain"`
	Type    string      `xml:"type,attr"`
	Comment xml.Comment `xml:",comment"`
	Name    string      `xml:"name"`
	Memory  lvMemory    `xml:"memory"`
	VCPU    int         `xml:"vcpu"`
	OS      lvOS        `xml:"os"`
	Devices lvDevices   `xml:"devices"`
}

type lvMemory struct {
	Unit  string `xml:"unit,attr"`
	Value int    `xml:",chardata"`
}

type lvOS struct {
	Type    lvOSType `xml:"type"`
	Kernel  string   `xml:"kernel"`
	Initrd  string   `xml:"initrd"`
	Cmdline string   `xml:"cmdline"`
}

type lvOSType struct {
	Arch  string `xml:"arch,attr"`
	Value string `xml:",chardata"`
}

type lvDevices struct {
	Disks     []lvDisk    `xml:"disk"`
	Interface lvInterface `xml:"interface"`
	Serial    lvPTY       `xml:"serial"`
	Console   lvPTY       `xml:"console"`
}

type lvDisk struct {
	Type   string   `xml:"type,attr"`
	Device string   `xml:"device,attr"`
	Driver lvDriver `xml:"driver"`
	Source lvSource `xml:"source"`
	Target lvTarget `xml:"target"`
}

type lvDriver struct {
	Name string `xml:"name,attr"`
	Type string `xml:"type,attr"`
}

type lvSource struct {
	File   string `xml:"file,attr,omitempty"`
	Bridge string `xml:"bridge,attr,omitempty"`
}

type lvTarget struct {
	Dev string `xml:"dev,attr"`
	Bus string `xml:"bus,attr"`
}

type lvInterface struct {
	Type   string   `xml:"type,attr"`
	MAC    lvMAC    `xml:"mac"`
	Source lvSource `xml:"source"`
	Model  lvModel  `xml:"model"`
}

type lvMAC struct {
	Address string `xml:"address,attr"`
}

type lvModel struct {
	Type string `xml:"type,attr"`
}

type lvPTY struct {
	Type string `xml:"type,attr"`
}

// LibvirtXML renders node n as a libvirt KVM domain (virsh define FILE),
// equivalent to QEMUCommand: direct kernel boot, virtio disks vda (root
// image, init nodes) and vdb (swap), a virtio NIC with the node's MAC on
// GuestOptions.Bridge (default br0), serial console.
func LibvirtXML(n Node, o GuestOptions) ([]byte, error) {
	o, err := prepare(n, o)
	if err != nil {
		return nil, err
	}
	root := o.RootDevice
	if root == "" {
		root = qemuDefaultRoot
	}
	line, err := cmdline(n, o, "root="+root, "ro", "console=ttyS0")
	if err != nil {
		return nil, err
	}
	bridge := o.Bridge
	if bridge == "" {
		bridge = "br0"
	}
	d := lvDomain{
		Type:   "kvm",
		Name:   n.Name,
		Memory: lvMemory{Unit: "MiB", Value: o.MemoryMB},
		VCPU:   1,
		OS: lvOS{
			Type:    lvOSType{Arch: "x86_64", Value: "hvm"},
			Kernel:  o.Kernel,
			Initrd:  o.Ramdisk,
			Cmdline: line,
		},
		Devices: lvDevices{
			Interface: lvInterface{
				Type:   "bridge",
				MAC:    lvMAC{Address: n.HWAddr},
				Source: lvSource{Bridge: bridge},
				Model:  lvModel{Type: "virtio"},
			},
			Serial:  lvPTY{Type: "pty"},
			Console: lvPTY{Type: "pty"},
		},
		Comment: xml.Comment(fmt.Sprintf(" libvirt domain of ssi node %d (%s), written by ssi xen-config (format libvirt) ", n.Num, n.Name)),
	}
	disk := func(path, dev string) lvDisk {
		return lvDisk{
			Type: "file", Device: "disk",
			Driver: lvDriver{Name: "qemu", Type: "raw"},
			Source: lvSource{File: path},
			Target: lvTarget{Dev: dev, Bus: "virtio"},
		}
	}
	if n.InitNode {
		d.Devices.Disks = append(d.Devices.Disks, disk(RootImagePath(o.ImagesDir, n), "vda"))
	}
	d.Devices.Disks = append(d.Devices.Disks, disk(SwapImagePath(o.ImagesDir, n), "vdb"))
	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("libvirt XML of %s: %w", n, err)
	}
	return append(out, '\n'), nil
}
