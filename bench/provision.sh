#!/usr/bin/env bash
# Provisioning figures for docs/PERFORMANCE.md ("Provisioning"):
#   - DHCP offers per second against one server: the daemon's server with
#     its node-table registry (1000 nodes), the bare handler, and DISCOVER/
#     OFFER round trips over loopback UDP;
#   - the time to provision 125 nodes with one ssi-addnode --count: register
#     them in a running cluster, then create 125 swap images (64M) and 125 xl
#     configurations, against the same time for registering only.
# It prints figures and asserts nothing. Needs e2fsprogs/util-linux (mkswap).
# Usage: bench/provision.sh [ROUNDS]   (default 3; the median is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
export PATH=$PATH:/usr/local/go/bin

bin=$(mktemp -d)
tmp=$(mktemp -d)
base=127.$((100 + RANDOM % 150)).$((1 + RANDOM % 250))
cleanup() {
	"$bin/ssi" down --dir "$tmp/cluster" >/dev/null 2>&1 || true
	rm -rf "$bin" "$tmp"
}
trap cleanup EXIT
go build -o "$bin/ssi" ./cmd/ssi

echo "== DHCP offers per second, one server (go test -bench)"
go test -run '^$' -bench 'BenchmarkDaemonDHCPDiscover' -benchtime 2s ./internal/node | awk '/offers\/s/ {print "  daemon server, node-table registry, 1000 nodes:", $5, "offers/s"}'
go test -run '^$' -bench 'BenchmarkHandleDiscover|BenchmarkServeDiscoverUDP' -benchtime 2s ./internal/dhcp |
	awk '/BenchmarkHandleDiscover/ {print "  bare handler (internal/dhcp), 1000 nodes:      ", $5, "offers/s"}
	     /BenchmarkServeDiscoverUDP/ {print "  over loopback UDP, one request at a time:      ", $5, "offers/s"}'

echo "== provisioning 125 nodes (ssi-addnode --count 125), 3-node cluster on $base.x, a fresh one per round"
export SSI_SOCKET=$tmp/cluster/node1/ssi.sock

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
reg=() full=()
for r in $(seq 1 "$rounds"); do
	"$bin/ssi" down --dir "$tmp/cluster" --purge >/dev/null 2>&1 || true
	"$bin/ssi" up --nodes 3 --dir "$tmp/cluster" --base-ip "$base.1" >/dev/null 2>&1
	# Register only: one replicated change with 125 rows and tokens.
	t0=$(now)
	"$bin/ssi" addnode --count 125 --hwaddr-base "0a:00:00:$(printf %02x $((2 * r))):00:01" --ipaddr-base "10.$((2 * r)).0.1" >/dev/null
	t1=$(now)
	reg+=("$(echo "$t1 - $t0" | bc)")
	# Register, then 125 sparse 64M swap images (mkswap) and 125 xl configurations.
	t0=$(now)
	"$bin/ssi" addnode --count 125 --hwaddr-base "0a:00:00:$(printf %02x $((2 * r + 1))):00:01" --ipaddr-base "10.$((2 * r + 1)).0.1" \
		--xennode --images "$tmp/images$r" --swap-size 64M >/dev/null 2>&1
	t1=$(now)
	full+=("$(echo "$t1 - $t0" | bc)")
	n=$(ls "$tmp/images$r"/configs | wc -l)
	[ "$n" = 125 ] || { echo "round $r: $n configurations, want 125" >&2; exit 1; }
done
echo "  register 125 nodes:                                 $(printf '%s\n' "${reg[@]}" | median) s (median of $rounds)"
echo "  register + 125 swap images (64M) + 125 xl configs:  $(printf '%s\n' "${full[@]}" | median) s (median of $rounds)"
echo "  rounds (register only): ${reg[*]}"
echo "  rounds (everything):    ${full[*]}"
