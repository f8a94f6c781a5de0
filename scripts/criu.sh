#!/usr/bin/env bash
# Installs CRIU >= 4.2 (checkpoint/restore, for process migration) into a
# private prefix, ${SSI_CRIU_PREFIX:-/opt/ssi-criu}, from Debian testing:
# Debian 12's criu 3.17 cannot checkpoint on recent kernels ("vdso:
# Unexpected rt vDSO area bounds") and Debian 13's 4.1.1 cannot dump a
# process with an inet socket on kernels >= 6.16 (docs/MIGRATION.md).
#
# It uses a private apt directory (its own sources, lists, cache and an
# empty dpkg status) to download criu and every library it needs, down to
# testing's libc, unpacks them with dpkg -x under PREFIX/root and writes
# PREFIX/bin/criu, a wrapper that runs criu with that libc's loader and
# libraries. The system's apt sources, dpkg database and libc are untouched.
# The mirror is the system's own (the first main-distribution source in
# /etc/apt), or SSI_CRIU_MIRROR.
#
# Safe to run again: does nothing when PREFIX/bin/criu is already >= 4.2.
# The new tree is built next to PREFIX and moved into place only once its
# criu runs, so a half-finished install never looks complete.
#
# Usage: scripts/criu.sh            install (as root) unless already there
#        scripts/criu.sh --mirror   print the mirror it would use and exit
set -euo pipefail

min_major=4 min_minor=2
prefix=${SSI_CRIU_PREFIX:-/opt/ssi-criu}
case $prefix in /*) ;; *) prefix=$PWD/$prefix ;; esac
prefix=${prefix%/}
apt_etc=${SSI_CRIU_APT_ETC:-/etc/apt} # the system's apt configuration (tests point it elsewhere)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

die() {
	echo "criu.sh: $*" >&2
	exit 1
}

# criu_version BIN prints BIN's version (4.2.1) or nothing.
criu_version() {
	[ -x "$1" ] || return 0
	local out
	out=$("$1" --version 2>/dev/null) || true
	sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' <<<"$out" | sed -n 1p
}

# new_enough VERSION: is VERSION >= min_major.min_minor?
new_enough() {
	local maj min
	IFS=. read -r maj min _ <<<"$1.0.0"
	[[ $maj =~ ^[0-9]+$ && $min =~ ^[0-9]+$ ]] || return 1
	((maj > min_major || (maj == min_major && min >= min_minor)))
}

# find_mirror prints the first http(s) URI of a "deb" source whose suite is
# the main distribution (bookworm, stable, testing; not bookworm-security,
# bookworm-updates or bookworm-backports), in the order apt reads them:
# sources.list, then sources.list.d/ (one-line *.list and deb822 *.sources).
find_mirror() {
	local files=() parts=() f
	[ -f "$apt_etc/sources.list" ] && files+=("$apt_etc/sources.list")
	for f in "$apt_etc"/sources.list.d/*.list "$apt_etc"/sources.list.d/*.sources; do
		[ -f "$f" ] && parts+=("$f")
	done
	# The parts by name, as apt reads them (.list and .sources interleaved).
	if [ ${#parts[@]} -gt 0 ]; then
		mapfile -t parts < <(printf '%s\n' "${parts[@]}" | LC_ALL=C sort)
		files+=("${parts[@]}")
	fi
	[ ${#files[@]} -gt 0 ] || return 0
	awk '
	function mainsuite(s) { return s ~ /^[A-Za-z0-9.]+$/ }
	function good(u) { return u ~ /^https?:\/\// }
	function emit(u) { if (!done) { sub(/\/+$/, "", u); print u; done = 1 } }
	function flush(   n, m, i, j, u, s) {
		if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) !~ /^[ \t]*no[ \t]*$/) {
			n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
			for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
				if (good(u[i]) && mainsuite(s[j])) emit(u[i])
		}
		types = uris = suites = enabled = field = ""
	}
	FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
	deb822 {
		if ($0 ~ /^[ \t]*$/) { flush(); next }
		if ($0 ~ /^#/) next
		if ($0 ~ /^[ \t]/) { val = $0 } else {
			i = index($0, ":"); if (i == 0) next
			field = tolower(substr($0, 1, i - 1)); val = substr($0, i + 1)
		}
		if (field == "types") types = types " " val
		else if (field == "uris") uris = uris " " val
		else if (field == "suites") suites = suites " " val
		else if (field == "enabled") enabled = val
		next
	}
	{
		line = $0; sub(/#.*/, "", line); gsub(/\[[^]]*\]/, " ", line)
		n = split(line, w, /[ \t]+/); k = 0
		for (i = 1; i <= n; i++) if (w[i] != "") f[++k] = w[i]
		if (k >= 3 && f[1] == "deb" && good(f[2]) && mainsuite(f[3])) emit(f[2])
	}
	END { flush() }
	' "${files[@]}"
}

mirror() {
	local m=${SSI_CRIU_MIRROR:-}
	[ -n "$m" ] || m=$(find_mirror)
	[ -n "$m" ] || die "no Debian mirror found in $apt_etc/sources.list or $apt_etc/sources.list.d/ (a \"deb\" http(s) source of the main distribution, e.g. \"deb http://deb.debian.org/debian bookworm main\"); add one or set SSI_CRIU_MIRROR=URL"
	echo "${m%/}"
}

if [ "${1:-}" = --mirror ]; then
	mirror
	exit 0
fi
[ $# -eq 0 ] || die "usage: scripts/criu.sh [--mirror]"

have=$(criu_version "$prefix/bin/criu")
if [ -n "$have" ] && new_enough "$have"; then
	echo "criu: $have in $prefix"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	env=
	[ -z "${SSI_CRIU_PREFIX:-}" ] || env="SSI_CRIU_PREFIX=$prefix "
	echo "criu.sh: installing CRIU >= $min_major.$min_minor into $prefix needs root; run: sudo ${env}bash $0" >&2
	exit 1
fi
for tool in apt-get apt-cache dpkg dpkg-deb flock; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (this script needs a Debian system)"
done
[ -f "$keyring" ] || die "$keyring is missing; install it with: apt-get install debian-archive-keyring"
mirror=$(mirror)

parent=$(dirname "$prefix")
mkdir -p "$parent"
# One install at a time (two CI runs may share the machine); whoever waited
# finds the other's install done.
exec 9>"$parent/.$(basename "$prefix").lock"
flock 9
have=$(criu_version "$prefix/bin/criu")
if [ -n "$have" ] && new_enough "$have"; then
	echo "criu: $have in $prefix"
	exit 0
fi

# Everything is built in tmp, on PREFIX's filesystem so the final move is a
# rename: tmp/apt is the private apt directory, tmp/new becomes PREFIX.
tmp=$(mktemp -d "$parent/.$(basename "$prefix").XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log=$tmp/log
fail() {
	echo "criu.sh: $*" >&2
	if [ -s "$log" ]; then
		echo "--- log ---" >&2
		cat "$log" >&2
	fi
	exit 1
}

P=$tmp/apt
mkdir -p "$P/etc/apt/sources.list.d" "$P/etc/apt/preferences.d" "$P/var/lib/dpkg" \
	"$P/var/lib/apt/lists/partial" "$P/var/cache/apt/archives/partial" "$tmp/debs" "$tmp/new/root" "$tmp/new/bin"
: >"$P/var/lib/dpkg/status"
echo "deb [signed-by=$keyring] $mirror testing main" >"$P/etc/apt/sources.list"
arch=$(dpkg --print-architecture)
A=(-o "Dir::Etc=$P/etc/apt" -o "Dir::Etc::SourceList=$P/etc/apt/sources.list"
	-o "Dir::Etc::SourceParts=$P/etc/apt/sources.list.d"
	-o "Dir::Etc::Preferences=$P/etc/apt/preferences" -o "Dir::Etc::PreferencesParts=$P/etc/apt/preferences.d"
	-o "Dir::State=$P/var/lib/apt" -o "Dir::Cache=$P/var/cache/apt" -o "Dir::State::status=$P/var/lib/dpkg/status"
	-o Debug::NoLocking=1 -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
	-o APT::Sandbox::User=root -q)

apt-get "${A[@]}" --error-on=any update >>"$log" 2>&1 || fail "apt-get update of $mirror testing failed"
pkgs=$(apt-cache "${A[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
	--no-breaks --no-replaces --no-enhances criu 2>>"$log" | grep -v '^ ' | grep -v '<' | LC_ALL=C sort -u) ||
	fail "apt-cache could not list criu's dependencies in $mirror testing"
grep -qx criu <<<"$pkgs" || fail "no criu package in $mirror testing"
# shellcheck disable=SC2086 # one word per package
(cd "$tmp/debs" && apt-get "${A[@]}" download $pkgs) >>"$log" 2>&1 || fail "apt-get download failed"
for deb in "$tmp/debs"/*.deb; do
	dpkg -x "$deb" "$tmp/new/root" 2>>"$log" || fail "dpkg -x $(basename "$deb") failed"
	dpkg-deb -f "$deb" Package Version | paste -sd' ' | sed 's/^Package: \(.*\) Version: /\1 /' >>"$tmp/new/PACKAGES"
done

# The loader and library directories of testing's libc, for this machine's
# multiarch triplet.
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || true)
if [ -z "$triplet" ]; then
	case $arch in
	amd64) triplet=x86_64-linux-gnu ;;
	arm64) triplet=aarch64-linux-gnu ;;
	*) triplet=x86_64-linux-gnu ;;
	esac
fi
loader=
for f in "$tmp/new/root/usr/lib/$triplet"/ld-linux*.so.* "$tmp/new/root/lib/$triplet"/ld-linux*.so.* \
	"$tmp/new/root/usr/lib64"/ld-linux*.so.* "$tmp/new/root/lib64"/ld-linux*.so.*; do
	# A real file: an absolute symlink would point at the system's loader.
	if [ -f "$f" ] && [ ! -L "$f" ]; then
		loader=${f#"$tmp/new/root/"}
		break
	fi
done
[ -n "$loader" ] || fail "no dynamic loader (ld-linux*.so.*) for $triplet among testing's libc6 files"
[ -x "$tmp/new/root/usr/sbin/criu" ] || fail "the criu package has no usr/sbin/criu"

# The wrapper finds its tree from its own location, so the tree can be tried
# here before it is moved into place (and moved later).
cat >"$tmp/new/bin/criu" <<EOF
#!/bin/sh
# Written by ssi's scripts/criu.sh: runs Debian testing's criu with its own
# libc and libraries from ../root (the system's are older).
root=\$(dirname "\$(dirname "\$(readlink -f "\$0")")")/root
exec "\$root/$loader" --library-path "\$root/usr/lib/$triplet:\$root/lib/$triplet" "\$root/usr/sbin/criu" "\$@"
EOF
chmod 755 "$tmp/new/bin/criu"

got=$(criu_version "$tmp/new/bin/criu")
if [ -z "$got" ]; then
	"$tmp/new/bin/criu" --version >>"$log" 2>&1 || true
	fail "the installed criu does not run (criu --version printed no version)"
fi
new_enough "$got" || fail "Debian testing's criu is $got, older than $min_major.$min_minor"
echo "$got" >"$tmp/new/VERSION"
chmod 755 "$tmp/new"

# Into place: the old tree (an older or broken one) goes aside first, as a
# directory cannot be renamed over a non-empty one.
if [ -e "$prefix" ] || [ -L "$prefix" ]; then
	mv -T "$prefix" "$tmp/old"
fi
mv -T "$tmp/new" "$prefix"
echo "criu: installed $got in $prefix (from $mirror testing)"
