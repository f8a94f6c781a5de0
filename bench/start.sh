#!/usr/bin/env bash
# How long the ssi binary takes to start, against a fork+exec of /bin/true
# and the smallest Go program, measured in the same run (interleaved), for
# the build as `make build` does it and for other linking choices; then
# what the package initialisation costs (GODEBUG=inittrace=1), ours first.
# Prints and asserts nothing. Usage: bench/start.sh [RUNS] (default 200).
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
cd "$(dirname "$0")/.."
runs=${1:-200}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== building (go $(go env GOVERSION))"
go build -o "$tmp/ssi" ./cmd/ssi
CGO_ENABLED=0 go build -o "$tmp/ssi-nocgo" ./cmd/ssi
go build -ldflags='-s -w' -o "$tmp/ssi-sw" ./cmd/ssi
mkdir -p "$tmp/hello" "$tmp/timer"
cat >"$tmp/hello/main.go" <<'EOF'
package main

import "os"

func main() { os.Exit(0) }
EOF
printf 'module hello\n\ngo 1.22\n' >"$tmp/hello/go.mod"
(cd "$tmp/hello" && go build -o "$tmp/hello-go" .)
cat >"$tmp/timer/main.go" <<'EOF'
// timer RUNS CMD... : runs every command (one string each, split on spaces)
// RUNS times, interleaved, and prints median, p90 and min of each, and the
// median as a ratio of the first command's.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	cmds := os.Args[2:]
	ts := make([][]time.Duration, len(cmds))
	for i := 0; i < n; i++ {
		for k, c := range cmds {
			f := strings.Fields(c)
			cmd := exec.Command(f[0], f[1:]...)
			t := time.Now()
			_ = cmd.Run() // exit codes do not matter here
			ts[k] = append(ts[k], time.Since(t))
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
	var base time.Duration
	for k, c := range cmds {
		s := ts[k]
		slices.Sort(s)
		med := s[len(s)/2]
		if k == 0 {
			base = med
		}
		name := strings.ReplaceAll(c, os.Getenv("TMPDIR_BENCH")+"/", "")
		fmt.Printf("  %-38s n=%-4d median %6.2f ms  p90 %6.2f ms  min %6.2f ms  x%5.2f\n",
			name, n, ms(med), ms(s[len(s)*9/10]), ms(s[0]), float64(med)/float64(base))
	}
}
EOF
printf 'module timer\n\ngo 1.22\n' >"$tmp/timer/go.mod"
(cd "$tmp/timer" && go build -o "$tmp/timer-bin" .)
ls -l "$tmp/ssi" "$tmp/ssi-nocgo" "$tmp/ssi-sw" "$tmp/hello-go" | awk '{printf "  %-12s %6.1f MB\n", $NF, $5/1e6}' | sed "s|$tmp/||"

echo "== process start, $runs runs each, interleaved (ratio: median / fork+exec of /bin/true)"
TMPDIR_BENCH=$tmp "$tmp/timer-bin" "$runs" /bin/true "$tmp/hello-go" \
	"$tmp/ssi help" "$tmp/ssi-nocgo help" "$tmp/ssi-sw help" \
	"$tmp/ssi __init -- /bin/true"

echo "== package initialisation of ssi help (GODEBUG=inittrace=1, mean of 30 runs)"
for i in $(seq 30); do
	GODEBUG=inittrace=1 "$tmp/ssi" help 2>&1 >/dev/null | grep '^init ' || true
done | awk '
	{ t[$2] += $5; b[$2] += $8; n[$2]++; runs[$2] = 1 }
	END {
		for (k in t) { s += t[k] / n[k]; pk++ }
		printf "  %d packages, %.2f ms of init in all (mean per run)\n", pk, s
		for (k in t) printf "%.3f %d %s\n", t[k] / n[k], b[k] / n[k], k
	}' >"$tmp/inits"
head -1 "$tmp/inits"
echo "  ours:"
tail -n +2 "$tmp/inits" | grep ' github.com/ssi-cluster/' | sort -rn | head -8 |
	awk '{printf "    %6.3f ms %8d bytes  %s\n", $1, $2, $3}'
echo "  heaviest others:"
tail -n +2 "$tmp/inits" | grep -v ' github.com/ssi-cluster/' | sort -rn | head -12 |
	awk '{printf "    %6.3f ms %8d bytes  %s\n", $1, $2, $3}'
