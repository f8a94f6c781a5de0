#!/usr/bin/env bash
# Runs every fuzz target of the module for a short time each (default 10s).
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
dur=${1:-10s}
status=0
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
		echo "fuzz: $pkg $target ($dur)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$dur" "$pkg" >/tmp/ssi-fuzz.log 2>&1; then
			cat /tmp/ssi-fuzz.log
			status=1
		fi
	done
done
exit $status
