// Package netboot owns booting diskless nodes against the cluster: the
// initramfs `ssi mkinitrd` builds (a static ssi binary as /init and exactly
// the kernel modules it needs, found with their dependencies from each
// module's .modinfo), the kernel command line it reads (ssi.server=,
// ssi.token=, ...), the boot flow that runs as PID 1 inside it (mounts,
// modules, the NIC by MAC, DHCP, join, the daemon, the cluster root,
// switch_root into it, a rescue message instead of a kernel panic), and
// `ssi vm`, diskless QEMU guests on this machine (docs/NETBOOT.md).
//
// It must not keep cluster state or serve anything: the boot flow joins
// through internal/node like `ssi join` and leaves the node to the daemon it
// starts; DHCP is served by internal/dhcpd, the root by internal/cfs.
package netboot
