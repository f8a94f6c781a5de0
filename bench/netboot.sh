#!/usr/bin/env bash
# Network boot time (issue 11): `ssi vm up --nodes 1` of this tree against
# the same of BASE (a git revision, default main), booted alternately (and
# which first, alternately) so both see the same load; per round QEMU start to UP, the kernel until
# /init, the module step and the daemon's start until the cluster root is
# mounted (from the guest's console), and the ratio this/BASE of QEMU
# start to UP. Needs root, QEMU and the kernel of scripts/netboot-kernel.sh.
# Usage: sudo bench/netboot.sh [ROUNDS] [BASE]   (docs/PERFORMANCE.md)
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
rounds=${1:-3} base=${2:-main}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'for v in base this; do [ -f "$tmp/vm-$v/vm.json" ] && "$tmp/$v/ssi" vm down --dir "$tmp/vm-$v" >/dev/null 2>&1; done; rm -rf "$tmp"' EXIT
bash "$here/scripts/netboot-kernel.sh" >/dev/null
cache=${SSI_NETBOOT_CACHE:-/var/cache/ssi-netboot}
kdir=$(dirname "$(ls -d "$cache"/linux-image-*/.complete-v2 | sort | tail -1)")
kernel=$kdir/vmlinux modules=$kdir/modules/$(cat "$kdir/version")
build() { # build SRC OUT
	mkdir -p "$2"
	(cd "$1" && go build -o "$2/ssi" ./cmd/ssi && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$2/ssi-static" ./cmd/ssi)
}
mkdir -p "$tmp/src"
git -C "$here" archive "$base" | tar -x -C "$tmp/src"
build "$tmp/src" "$tmp/base"
build "$here" "$tmp/this"
boot() { # boot VARIANT: prints "UP KINIT MODS ROOT"
	local d=$tmp/vm-$1 up c
	rm -rf "$d"
	up=$("$tmp/$1/ssi" vm up --nodes 1 --dir "$d" --binary "$tmp/$1/ssi-static" --kernel "$kernel" --kernel-modules "$modules" --timeout 3m |
		sed -n 's/.*node 2 is UP (\([0-9.]*\)s after.*/\1/p')
	c=$d/node2/console.log
	echo "$up $(sed -n 's/.*kernel up for \([0-9.]*\)s.*/\1/p' "$c") $(sed -n 's/.*load kernel modules: ok (\(.*\))/\1/p' "$c") $(sed -n 's/.*mount the cluster root on .*: ok (\(.*\))/\1/p' "$c")"
	"$tmp/$1/ssi" vm down --dir "$d" >/dev/null
}
for r in $(seq "$rounds"); do
	load=$(cut -d' ' -f1 /proc/loadavg)
	if ((r % 2)); then # alternate which boots first
		read -r bu bk bm br <<<"$(boot base)"
		read -r tu tk tm tr <<<"$(boot this)"
	else
		read -r tu tk tm tr <<<"$(boot this)"
		read -r bu bk bm br <<<"$(boot base)"
	fi
	echo "round $r (load $load): $base UP ${bu}s (kernel->/init ${bk}s, modules $bm, root $br); this UP ${tu}s (kernel->/init ${tk}s, modules $tm, root $tr): $(awk "BEGIN{printf \"%.2f\", $tu/$bu}")x"
done
