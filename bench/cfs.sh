#!/usr/bin/env bash
# The cluster filesystem side by side with local ext4 and sshfs, in one run
# on one machine (docs/PERFORMANCE.md, docs/CFS.md):
#   ext4        a local directory (the baseline)
#   cfs         the mount of node 2 of a 2-node local cluster: every request
#               crosses the cluster's mTLS port to node 1
#   cfs-node1   the mount of node 1, the serving node (in-process server)
#   sshfs       Debian's sshfs over loopback to a private sshd (bench/sshfs.sh)
# and runs bench/fs.sh on the four, or with --suites scripts/fs-suites.sh
# (CPython's and Go's own test suites) on ext4 and cfs.
#
# Usage: bench/cfs.sh [--quick] [--suites] [--json FILE]
# Needs root (FUSE) and scripts/deps.sh --bench [--suites]. Works in
# $CFS_BENCH_DIR (default /var/tmp/ssi-cfs-bench), removed at the end.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
repo=$(cd "$(dirname "$0")/.." && pwd)
quick=() suites=0 json=()
while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=(--quick) ;;
	--suites) suites=1 ;;
	--json) json=(--json "$2"); shift ;;
	*) echo "usage: bench/cfs.sh [--quick] [--suites] [--json FILE]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "bench/cfs.sh: needs root (FUSE mounts)" >&2; exit 2; }
dir=${CFS_BENCH_DIR:-/var/tmp/ssi-cfs-bench}
ssi="$repo/bin/ssi"
(cd "$repo" && go build -o bin/ssi ./cmd/ssi)

cleanup() {
	bash "$repo/bench/sshfs.sh" umount "$dir/sshfs" >/dev/null 2>&1 || true
	"$ssi" down --dir "$dir/cluster" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir/ext4" "$dir/sshfs-export" "$dir/sshfs"
"$ssi" up --nodes 2 --dir "$dir/cluster" --base-ip 127.0.9.2 >/dev/null
mnt1="$dir/cluster/mnt/node1" mnt2="$dir/cluster/mnt/node2"
mkdir -p "$mnt2/bench" "$mnt1/bench1"
bash "$repo/bench/sshfs.sh" mount "$dir/sshfs-export" "$dir/sshfs"

if [ "$suites" = 1 ]; then
	bash "$repo/scripts/fs-suites.sh" "${json[@]}" ext4="$dir/ext4" cfs="$mnt2/bench"
else
	bash "$repo/bench/fs.sh" "${quick[@]}" "${json[@]}" ext4="$dir/ext4" cfs="$mnt2/bench" cfs-node1="$mnt1/bench1" sshfs="$dir/sshfs"
fi
