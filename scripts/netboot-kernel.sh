#!/usr/bin/env bash
# Fetches Debian's stock amd64 kernel and its modules for the network-boot
# tests and `ssi vm up` (docs/NETBOOT.md), without installing it: the
# package linux-image-amd64 depends on is downloaded with `apt-get download`
# and unpacked with `dpkg -x` into a cache outside the repository
# (SSI_NETBOOT_CACHE, default /var/cache/ssi-netboot). Prints the directory
# holding vmlinuz and lib/modules/VERSION. Safe to run again: a complete
# unpack is reused.
set -euo pipefail
cache=${SSI_NETBOOT_CACHE:-/var/cache/ssi-netboot}
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
	echo "netboot-kernel: apt does not know linux-image-amd64's kernel package; run apt-get update" >&2
	exit 1
fi
dir=$cache/$pkg
if [ -f "$dir/.complete" ]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
chmod 755 "$tmp" # apt-get download runs as _apt
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
mkdir "$tmp/root"
dpkg -x "$tmp"/*.deb "$tmp/root"
ver=${pkg#linux-image-}
[ -f "$tmp/root/boot/vmlinuz-$ver" ] || { echo "netboot-kernel: $pkg has no /boot/vmlinuz-$ver" >&2; exit 1; }
mkdir -p "$tmp/out"
mv "$tmp/root/boot/vmlinuz-$ver" "$tmp/out/vmlinuz"
mv "$tmp/root/lib/modules" "$tmp/out/modules"
echo "$ver" >"$tmp/out/version"
rm -rf "$dir"
mv "$tmp/out" "$dir"
touch "$dir/.complete"
echo "$dir"
