#!/usr/bin/env bash
# Runs every fuzz target of the module (or of the given packages) for a fixed
# number of executions each.
#
# Usage: scripts/fuzz.sh [BUDGET [PACKAGE...]]
#   BUDGET   executions per target, as 10000x or 10000 (default 30000x)
#   PACKAGE  go package patterns (default ./...)
# Environment: FUZZ_TIMEOUT, go test's -timeout for one target (default 20m).
#
# The budget is a count, not a duration: with a duration Go 1.26's fuzz
# coordinator can race its own deadline and fail a target with a bare
# "context deadline exceeded" although nothing was found, mostly under CPU
# load (go.dev/issue/75804). A count sets no deadline.
#
# The script fails on a real finding: a new crasher written under
# testdata/fuzz/, a failing input or seed, a panic, a build failure, or any
# failure it cannot tell apart from those. A failure that is only a bare
# "context deadline exceeded" with no input written is that coordinator bug:
# the target is run once more, and if it happens again it is reported as a
# warning without failing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

budget=${1:-30000x}
if [ $# -gt 0 ]; then shift; fi
if [[ $budget =~ ^[0-9]+$ ]]; then
	budget=${budget}x
fi
if ! [[ $budget =~ ^[1-9][0-9]*x$ ]]; then
	echo "fuzz.sh: the budget must be an execution count such as 10000x, not '$budget'" >&2
	echo "fuzz.sh: (a duration such as 10s makes Go's fuzz coordinator fail spuriously under load, go.dev/issue/75804)" >&2
	exit 2
fi
[ $# -gt 0 ] || set -- ./...
timeout=${FUZZ_TIMEOUT:-20m}

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# corpus DIR TARGET lists the inputs stored under DIR/testdata/fuzz/TARGET.
corpus() {
	if [ -d "$1/testdata/fuzz/$2" ]; then
		find "$1/testdata/fuzz/$2" -type f | sed "s|^$PWD/||" | sort
	fi
}

# flake tells whether the log of a failed run shows only the coordinator's
# spurious deadline: "context deadline exceeded" and no sign of a finding.
flake() {
	grep -qx '[[:space:]]*context deadline exceeded' "$log" &&
		! grep -qE 'Failing input written to|failure while testing seed corpus|^panic:|\[build failed\]|^--- FAIL: [^ ]+/|fuzzing process hung|terminated unexpectedly' "$log"
}

pkgs=$(go list -f '{{.ImportPath}} {{.Dir}}' "$@")
passed=0 failed=0 warned=0
while read -r pkg dir; do
	grep -qs '^func Fuzz' "$dir"/*_test.go || continue
	if ! targets=$(go test -list '^Fuzz' "$pkg" </dev/null 2>&1); then
		echo "$targets"
		echo "fuzz: FAIL $pkg: cannot list its fuzz targets"
		failed=$((failed + 1))
		continue
	fi
	for target in $(grep '^Fuzz' <<<"$targets" || true); do
		before=$(corpus "$dir" "$target")
		for attempt in 1 2; do
			start=$SECONDS
			rc=0
			go test -run '^$' -fuzz "^${target}\$" -fuzztime "$budget" -timeout "$timeout" "$pkg" </dev/null >"$log" 2>&1 || rc=$?
			new=$(comm -13 <(echo "$before") <(corpus "$dir" "$target"))
			if [ "$rc" -eq 0 ] && [ -z "$new" ]; then
				echo "fuzz: ok   $pkg $target ($budget, $((SECONDS - start))s)"
				passed=$((passed + 1))
				break
			fi
			if [ -z "$new" ] && flake; then
				if [ "$attempt" -eq 1 ]; then
					echo "fuzz: warning: $pkg $target: 'context deadline exceeded' with no input written (go.dev/issue/75804); running it again"
					continue
				fi
				cat "$log"
				echo "fuzz: WARNING: $pkg $target: the fuzz coordinator failed twice with 'context deadline exceeded' and no input written (go.dev/issue/75804); not counted as a failure"
				warned=$((warned + 1))
				break
			fi
			cat "$log"
			if [ -n "$new" ]; then
				echo "fuzz: FAIL $pkg $target: new crasher(s), fix the bug and keep the file as a regression test:"
				sed 's/^/  /' <<<"$new"
			else
				echo "fuzz: FAIL $pkg $target (exit status $rc)"
			fi
			failed=$((failed + 1))
			break
		done
	done
done <<<"$pkgs"

if [ "$warned" -gt 0 ]; then
	echo "fuzz: $warned target(s) hit the coordinator flake twice (go.dev/issue/75804), see the warnings above"
fi
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
