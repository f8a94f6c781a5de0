#!/usr/bin/env bash
# What `make test` runs: go vet, every test with the race detector, a short
# fuzz run of every fuzz target, then the list of the tests that were
# skipped (a test that skips in CI is a gap) and a closing count line.
#
# go test runs with -json; scripts/testsummary renders that stream as plain
# `go test` output (the ok/FAIL line of every package, the full output of
# every failing test) and summarises it at the end.
#
# Usage: scripts/test.sh [PACKAGE...]   (default ./..., what make test runs)
# Environment: FUZZ_BUDGET (default 30000x) is passed to scripts/fuzz.sh;
# TEST_JSON, if set, names the file that keeps go test's JSON stream.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ $# -gt 0 ] || set -- ./...

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
json=${TEST_JSON:-$tmp/go-test.json}
go build -o "$tmp/testsummary" ./scripts/testsummary

go vet "$@"

status=0
set +e
go test -race -count=1 -timeout 40m -json "$@" | tee "$json" | "$tmp/testsummary" render
codes=("${PIPESTATUS[@]}")
set -e
if [ "${codes[0]}" -ne 0 ]; then
	status=${codes[0]}
elif [ "${codes[1]}" -ne 0 ] || [ "${codes[2]}" -ne 0 ]; then
	echo "test.sh: could not record or render the output of go test" >&2
	status=1
fi

if [ "$status" -eq 0 ]; then
	bash scripts/fuzz.sh "${FUZZ_BUDGET:-30000x}" "$@" || status=$?
else
	echo "fuzz: not run, go test failed"
fi

echo
"$tmp/testsummary" -trim "$(go list -m)/" summary "$json"
exit "$status"
