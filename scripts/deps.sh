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
# the real DHCP client of the DHCP test), tmux (terminal tests), procps.
need=()
for pair in ip:iproute2 mke2fs:e2fsprogs mkswap:util-linux unshare:util-linux busybox:busybox tmux:tmux pgrep:procps; do
	bin=${pair%%:*} pkg=${pair#*:}
	command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

go mod download
