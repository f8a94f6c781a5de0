#!/usr/bin/env bash
# Installs what building, running and testing ssi needs on a fresh Debian 12
# machine. Safe to run again; it only installs what is missing.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

if ! command -v go >/dev/null 2>&1; then
	echo "deps: Go is not installed (expected at /usr/local/go); install Go 1.26 first" >&2
	exit 1
fi

# Debian packages: iproute2 (ssi up --isolate, namespace tests), e2fsprogs
# and util-linux (node images: mke2fs, resize2fs, mkswap), busybox (udhcpc,
# the real DHCP client of the DHCP test), tmux (terminal tests), procps,
# gcc (cgo for the race detector, and the C helper of the xl tests), fuse3
# (fusermount3, for the cluster filesystem's FUSE mounts and their tests;
# the kernel's /dev/fuse too). CRIU comes after them, from scripts/criu.sh.
need=()
# --bench: also what the benchmarks compare against (sshd for the ssh
# reference of the process-space figures; the benchmark starts a private
# sshd on loopback and leaves the system's untouched), fio for bench/fs.sh
# and sshfs for its reference mount (bench/sshfs.sh); wrk and haproxy for
# bench/cvip.sh (the cluster virtual IP against HAProxy and a direct
# connection).
# --suites: CPython's own test suite and Debian's interpreter for it, for
# scripts/fs-suites.sh. Both flags can be given.
bench=() suites=0
for arg in "$@"; do
	case $arg in
	--bench)
		bench=(sshd:openssh-server ssh:openssh-client fio:fio sshfs:sshfs)
		# cvip: wrk drives bench/cvip.sh, HAProxy in TCP mode is its baseline.
		bench+=(wrk:wrk haproxy:haproxy)
		;;
	--suites) suites=1 ;;
	*)
		echo "deps: unknown argument $arg (usage: scripts/deps.sh [--bench] [--suites])" >&2
		exit 2
		;;
	esac
done
# obs: chromium, the real headless browser the dashboard's end-to-end tests
# drive (test/e2e/dashboard_test.go, through chromedp); tmux (above) drives
# ssi top's.
obs=(chromium:chromium)
# netboot: qemu-system-x86 boots the diskless guests of ssi vm and of the
# network-boot test (test/e2e/netboot_test.go, software emulation); binutils'
# objcopy and ld make the fake kernel modules and static binary of
# internal/netboot's tests. The guest kernel is Debian's stock one, fetched
# (not installed) by scripts/netboot-kernel.sh into /var/cache/ssi-netboot;
# xz-utils unpacks its vmlinux for a faster (PVH) boot.
netboot=(qemu-system-x86_64:qemu-system-x86 objcopy:binutils ld:binutils nsenter:util-linux xz:xz-utils)
# robustness: test/robustness (make robustness) needs only ip (iproute2,
# above) for its namespaces, routes and links; its CPU load is a Go busy
# loop of its own, so no stress-ng.
for pair in ip:iproute2 mke2fs:e2fsprogs mkswap:util-linux unshare:util-linux busybox:busybox tmux:tmux pgrep:procps cc:gcc fusermount3:fuse3 "${obs[@]}" "${netboot[@]}" "${bench[@]}"; do
	bin=${pair%%:*} pkg=${pair#*:}
	command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
# Libraries, checked by package: libxenmisc4.17 has Xen's libxlutil (and
# pulls in libxenlight), the parser xl itself uses, with which the
# internal/provision tests check the xl configurations ssi writes. Only the
# library: xen-utils would bring the hypervisor's tools and services. Those
# tests read x86-64 struct offsets, so only there.
libs=()
if [ "$(go env GOARCH)" = amd64 ]; then
	libs+=(libxenmisc4.17)
fi
# tty: /usr/bin/python3 (Debian's, not a pyenv one on PATH) runs the
# terminal program of test/e2e/migrate_tty_test.go.
libs+=(python3-minimal)
# --suites: Debian's python3.11 (not a pyenv one on PATH) and its tests.
if [ "$suites" = 1 ]; then
	libs+=(libpython3.11-testsuite python3.11)
fi
for pkg in "${libs[@]}"; do
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Quiet unless it fails: apt's progress and debconf notes go to a log.
	log=$(mktemp)
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u); } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		echo "deps: apt-get failed" >&2
		exit 1
	fi
	rm -f "$log"
fi

# CRIU >= 4.2 for process migration, in its own prefix (/opt/ssi-criu) with
# Debian testing's libraries: Debian 12's criu is too old (docs/MIGRATION.md).
bash "$(dirname "$0")/criu.sh"

# postcopy: post-copy migration needs fs.pipe-max-size >= 4 MiB (CRIU keeps
# a lazy dump's pages in pipes and, without CAP_SYS_RESOURCE, may not make
# them larger than that); Linux's default is 1 MiB. Raised here, for the
# running kernel only (never lowered), so that the e2e tests can move jobs
# with post-copy; a machine of a real cluster sets it in /etc/sysctl.d
# (docs/MIGRATION.md, "Post-copy").
pipe_max=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
if [ "$pipe_max" -lt 4194304 ]; then
	if [ "$(id -u)" -eq 0 ]; then
		sysctl -q -w fs.pipe-max-size=4194304
	else
		echo "deps: fs.pipe-max-size is $pipe_max; post-copy migration needs 4194304: sudo sysctl -w fs.pipe-max-size=4194304" >&2
	fi
fi

go mod download
