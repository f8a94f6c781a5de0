#!/usr/bin/env bash
# What a linearizable read costs: `cluster -V` on a follower of a local
# 3-node cluster (ssi up), against `cluster -V --stale` (the node's own
# state, no read index) in the same run; prints the ratio per round.
# Usage: bench/reads.sh [ROUNDS] [READS]   (docs/PERFORMANCE.md)
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
rounds=${1:-3} reads=${2:-50}
tmp=$(mktemp -d)
trap '"$tmp/ssi" down --dir "$tmp/c" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$tmp/ssi" ./cmd/ssi)
"$tmp/ssi" up --nodes 3 --dir "$tmp/c" --base-ip "127.$((100 + RANDOM % 150)).$((1 + RANDOM % 250)).1" >/dev/null
export SSI_SOCKET="$tmp/c/node2/ssi.sock"
for r in $(seq "$rounds"); do
	s=$(date +%s%N)
	for _ in $(seq "$reads"); do "$tmp/ssi" cluster -V --stale >/dev/null; done
	m=$(date +%s%N)
	for _ in $(seq "$reads"); do "$tmp/ssi" cluster -V >/dev/null; done
	e=$(date +%s%N)
	stale=$(((m - s) / reads / 1000)) lin=$(((e - m) / reads / 1000))
	echo "round $r: cluster -V --stale ${stale}us, cluster -V ${lin}us: $(awk "BEGIN{printf \"%.2f\", $lin/$stale}")x"
done
