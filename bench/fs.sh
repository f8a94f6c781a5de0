#!/usr/bin/env bash
# Filesystem benchmark, side by side: runs the same workloads on the same
# data in every directory given, one after the other in one run, and prints
# one table with a row per workload and a column per label: the figure and
# its ratio to the first label's, the baseline (normally a local ext4).
#
# Usage: bench/fs.sh [--quick] [--json FILE] LABEL=DIR [LABEL=DIR ...]
#   e.g. bench/fs.sh ext4=/tmp/fsb tmpfs=/dev/shm/fsb cfs=/mnt/ssi/fsb
#
# Workloads (docs/CFS-MEASURING.md says what each row measures):
#   seq write      fio, 1 GiB in 1 MiB blocks, psync, fsync at the end (in the time)
#   seq read       the same file again, cached (fio --invalidate=0: no fadvise)
#   seq read       after echo 3 > /proc/sys/vm/drop_caches (the whole machine's;
#                  for a FUSE mount that drops the client's cache too)
#   random read    fio, 4 KiB blocks, 256 MiB file laid out then caches dropped, 10 s
#   create/stat/unlink  bench/fsops: 10,000 files of 1 KiB, seconds per phase
#   tar x          the Go toolchain's src tree (tarball made once, in a local
#                  temporary directory), time includes sync -f DIR
#   go build       ./... of this repository (git archive HEAD) with an empty
#                  GOCACHE inside DIR, the machine's GOMODCACHE, GOPROXY=off
# --quick: 64 MiB files, 3 s of random reads, 1,000 files, tar of src/net,
# no build: a test can run the script in well under a minute.
#
# Each DIR must exist; the script works in DIR/ssi-fsbench.PID and removes it
# after each label (and on exit). Every command that touches DIR runs
# under a timeout, and if it cannot even be killed (a process stuck in a
# filesystem that does not answer), the script leaves it behind, says so and
# skips that label's remaining workloads. A workload that fails shows as
# "failed" with a note; it does not stop the run. Exit status: 0 when the run completed, 2 on usage errors or when a
# tool is missing, 1 when the preparation failed.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
	echo "usage: bench/fs.sh [--quick] [--json FILE] LABEL=DIR [LABEL=DIR ...]   (the first is the baseline)" >&2
	exit 2
}

quick=0 json=
labels=() dirs=()
declare -A seen=()
while [ $# -gt 0 ]; do
	case $1 in
	--quick) quick=1 ;;
	--json)
		[ $# -ge 2 ] || usage
		json=$2
		shift
		;;
	--json=*) json=${1#--json=} ;;
	-h | --help) usage ;;
	-*)
		echo "bench/fs.sh: unknown option $1" >&2
		usage
		;;
	?*=?*)
		label=${1%%=*} dir=${1#*=}
		if ! [[ $label =~ ^[A-Za-z0-9._+-]+$ ]]; then
			echo "bench/fs.sh: label '$label': use letters, digits and ._+-" >&2
			exit 2
		fi
		if [ -n "${seen[$label]:-}" ]; then
			echo "bench/fs.sh: label '$label' given twice" >&2
			exit 2
		fi
		if [ ! -d "$dir" ]; then
			echo "bench/fs.sh: $dir (for $label) is not a directory" >&2
			exit 2
		fi
		seen[$label]=1
		labels+=("$label")
		dirs+=("$(cd "$dir" && pwd -P)")
		;;
	*) usage ;;
	esac
	shift
done
[ ${#labels[@]} -gt 0 ] || usage
if ! command -v fio >/dev/null 2>&1; then
	echo "bench/fs.sh: fio is not installed; run scripts/deps.sh --bench" >&2
	exit 2
fi
if ! command -v go >/dev/null 2>&1; then
	echo "bench/fs.sh: go is not installed (expected in /usr/local/go/bin)" >&2
	exit 2
fi

if [ "$quick" = 1 ]; then
	seq_size=64m seq_name="64 MiB" rand_size=64m rand_name="64 MiB" rand_time=3
	nfiles=1000 tar_tree=src/net build=0
else
	seq_size=1g seq_name="1 GiB" rand_size=256m rand_name="256 MiB" rand_time=10
	nfiles=10000 tar_tree=src build=1
fi
goroot=$(go env GOROOT)
modcache=$(go env GOMODCACHE)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ssi-fsbench.XXXXXX")
work= # the current label's DIR/ssi-fsbench.PID, removed on exit
cleanup() {
	if [ -n "$work" ] && [ "$hung" = 0 ]; then
		bounded 600 rm -rf "$work" || echo "bench/fs.sh: could not remove $work" >&2
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

hung=0 stuck=()
# bounded SECS CMD...: CMD under timeout (TERM after SECS, KILL 30 s later),
# returning its status. A process that waits for a FUSE daemon which does
# not answer cannot be killed, and timeout (and we) would wait for ever: so
# 60 s after the KILL, stop waiting, leave it behind, set hung=1, return 125.
bounded() {
	local secs=$1 pid dog fin="" rc=0
	shift
	timeout -k 30 "$secs" "$@" &
	pid=$!
	sleep $((secs + 90)) &
	dog=$!
	wait -n -p fin "$pid" "$dog" || rc=$?
	if [ "$fin" = "$dog" ]; then
		hung=1
		stuck+=("pid $pid: $*")
		echo "could not be stopped (stuck in the filesystem?), left behind: $*" >&2
		return 125
	fi
	kill "$dog" 2>/dev/null || true
	wait "$dog" 2>/dev/null || true
	return "$rc"
}

now() { date +%s%N; }
# secs T0 T1: the seconds between two now()s.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# firstline FILE: a one-line summary of an error output.
firstline() { grep -m1 -v '^[[:space:]]*$' "$1" 2>/dev/null | cut -c1-160 || true; }

# ---- preparation (not measured) ----
echo "== preparing (fio $(fio --version | sed 's/^fio-//'), $(go env GOVERSION), kernel $(uname -r))"
if ! (cd "$repo" && timeout 600 go build -o "$tmp/fsops" ./bench/fsops); then
	echo "bench/fs.sh: could not build bench/fsops" >&2
	exit 1
fi
if ! timeout 600 tar -C "$goroot" -cf "$tmp/src.tar" "$tar_tree"; then
	echo "bench/fs.sh: could not make the tarball of $goroot/$tar_tree" >&2
	exit 1
fi
tar_files=$(tar -tf "$tmp/src.tar" | grep -cv '/$' || true)
tar_mb=$(($(stat -c %s "$tmp/src.tar") / 1000000))
if [ "$build" = 1 ]; then
	if ! timeout 300 git -C "$repo" archive --format=tar -o "$tmp/build.tar" HEAD; then
		echo "bench/fs.sh: git archive HEAD of $repo failed" >&2
		exit 1
	fi
fi
syncf=0
sync -f "$tmp" 2>/dev/null && syncf=1
# syncdir DIR: flush DIR's filesystem (syncfs), or everything if sync has no -f.
syncdir() {
	if [ "$syncf" = 1 ]; then
		bounded 600 sync -f "$1"
	else
		bounded 600 sync
	fi
}
# dropcaches: write back, then drop the page cache, dentries and inodes.
dropcaches() {
	bounded 600 sync || return 1
	{ echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null
}

# ---- the rows ----
rows=(seq-write seq-read-cached seq-read-uncached rand-read create stat unlink tar)
[ "$build" = 1 ] && rows+=(build)
declare -A name=(
	[seq-write]="seq write $seq_name (1 MiB, fsync in time)"
	[seq-read-cached]="seq read $seq_name, cached"
	[seq-read-uncached]="seq read $seq_name, caches dropped"
	[rand-read]="random 4 KiB read, $rand_name, ${rand_time} s"
	[create]="create $(printf "%'d" "$nfiles") files of 1 KiB"
	[stat]="stat $(printf "%'d" "$nfiles") files"
	[unlink]="unlink $(printf "%'d" "$nfiles") files"
	[tar]="tar x Go $tar_tree ($(printf "%'d" "$tar_files") files, $tar_mb MB)"
	[build]="go build ./... of ssi, empty GOCACHE"
)
declare -A unit=(
	[seq-write]=MB/s [seq-read-cached]=MB/s [seq-read-uncached]=MB/s [rand-read]=IOPS
	[create]=files/s [stat]=files/s [unlink]=files/s [tar]=s [build]=s
)
declare -A val=() cell=() secs_of=()
notes=()
# fail ROW LABEL WHY [FILE]: the row failed on that label.
fail() {
	cell[$1,$2]=${3%%:*}
	local why=$3
	[ $# -ge 4 ] && why="$why: $(firstline "$4")"
	notes+=("$2: ${name[$1]}: $why")
}

# fio_run ROW LABEL FILE ARGS...: one fio job on FILE; sets val[ROW,LABEL]
# to MB/s (bw) or IOPS from the terse output, or records the failure.
fio_run() {
	local row=$1 label=$2 file=$3 out line kind
	shift 3
	out=$tmp/fio.out
	if ! bounded 900 fio --output-format=terse --terse-version=3 --name="$row" --filename="${file//:/\\:}" \
		--ioengine=psync --fallocate=none --invalidate=0 --randrepeat=1 "$@" >"$out" 2>"$tmp/fio.err"; then
		cat "$out" >>"$tmp/fio.err"
		fail "$row" "$label" "failed: fio" "$tmp/fio.err"
		return 1
	fi
	line=$(grep -m1 '^3;' "$out") || {
		fail "$row" "$label" "failed: no fio result" "$out"
		return 1
	}
	case $row in
	seq-write) kind=w ;;
	*) kind=r ;;
	esac
	# terse v3: 5 error, 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS.
	val[$row,$label]=$(awk -F';' -v kind="$kind" -v unit="${unit[$row]}" '{
		if ($5 != 0) { print "error"; exit }
		bw = (kind == "w") ? $48 : $7; iops = (kind == "w") ? $49 : $8
		if (unit == "IOPS") printf "%.0f", iops; else printf "%.1f", bw * 1024 / 1e6 }' <<<"$line")
	if [ "${val[$row,$label]}" = error ]; then
		unset "val[$row,$label]"
		fail "$row" "$label" "failed: fio reported an error" "$tmp/fio.err"
		return 1
	fi
}

# skiphung ROW...: once the label's filesystem hung, mark the rows not run
# yet as skipped and fail (so: skiphung ROWS && next-step).
skiphung() {
	[ "$hung" = 1 ] || return 0
	local row
	for row in "$@"; do
		[ -n "${cell[$row,$label]:-}" ] || [ -n "${val[$row,$label]:-}" ] || cell[$row,$label]="skipped (hung)"
	done
	return 1
}

fstype() { findmnt -n -o FSTYPE,SOURCE -T "$1" 2>/dev/null | tail -n1 | awk '{ print $1 " on " $2 }' || echo unknown; }

# ---- the runs ----
for i in "${!labels[@]}"; do
	label=${labels[$i]} dir=${dirs[$i]}
	echo "== $label: $dir ($(fstype "$dir"))"
	work=$dir/ssi-fsbench.$$
	hung=0
	if ! bounded 60 mkdir "$work" 2>"$tmp/mkdir.err"; then
		for row in "${rows[@]}"; do cell[$row,$label]=failed; done
		notes+=("$label: cannot create $work: $(firstline "$tmp/mkdir.err")")
		work=
		continue
	fi

	echo "   sequential write and reads ($seq_name)"
	if fio_run seq-write "$label" "$work/seq.dat" --rw=write --bs=1M --size="$seq_size" --end_fsync=1; then
		fio_run seq-read-cached "$label" "$work/seq.dat" --rw=read --bs=1M --size="$seq_size" || true
		if dropcaches; then
			fio_run seq-read-uncached "$label" "$work/seq.dat" --rw=read --bs=1M --size="$seq_size" || true
		else
			cell[seq-read-uncached,$label]="n/a (cannot drop caches)"
		fi
	else
		cell[seq-read-cached,$label]="n/a (no file)"
		cell[seq-read-uncached,$label]="n/a (no file)"
	fi
	skiphung seq-write seq-read-cached seq-read-uncached rand-read && bounded 600 rm -f "$work/seq.dat"

	echo "   random 4 KiB reads ($rand_name, ${rand_time} s)"
	if ! skiphung rand-read create stat unlink tar build; then
		:
	elif fio_run rand-read "$label" "$work/rand.dat" --rw=write --bs=1M --size="$rand_size" --end_fsync=1; then
		unset "val[rand-read,$label]" # that was the layout
		dropcaches || notes+=("$label: random reads: could not drop caches, the file was in the page cache")
		fio_run rand-read "$label" "$work/rand.dat" --rw=randread --bs=4k --size="$rand_size" \
			--runtime="$rand_time" --time_based || true
	else
		notes[${#notes[@]} - 1]="${notes[${#notes[@]} - 1]} (laying out the file)"
	fi
	skiphung create stat unlink tar build && bounded 600 rm -f "$work/rand.dat"

	echo "   create/stat/unlink of $nfiles files"
	if ! skiphung create stat unlink tar build; then
		:
	elif bounded 1200 "$tmp/fsops" -n "$nfiles" -size 1024 "$work" >"$tmp/fsops.out" 2>"$tmp/fsops.err"; then
		for row in create stat unlink; do
			s=$(awk -v p="$row" '$1 == p { print $2 }' "$tmp/fsops.out")
			secs_of[$row,$label]=$s
			val[$row,$label]=$(awk -v n="$nfiles" -v s="$s" 'BEGIN { printf "%.0f", (s > 0) ? n / s : 0 }')
		done
	else
		cat "$tmp/fsops.out" >>"$tmp/fsops.err"
		for row in create stat unlink; do fail "$row" "$label" "failed: fsops" "$tmp/fsops.err"; done
	fi

	echo "   tar x of Go's $tar_tree"
	if ! skiphung tar build || ! bounded 60 mkdir -p "$work/x"; then
		:
	elif t0=$(now) && bounded 1200 tar -C "$work/x" -xf "$tmp/src.tar" 2>"$tmp/tar.err" && syncdir "$work" 2>>"$tmp/tar.err"; then
		val[tar,$label]=$(secs "$t0" "$(now)")
	else
		fail tar "$label" "failed: tar x" "$tmp/tar.err"
	fi
	skiphung build && { bounded 600 rm -rf "$work/x" || notes+=("$label: could not remove $work/x"); }

	if [ "$build" = 1 ] && skiphung build; then
		echo "   go build ./... (empty GOCACHE in $work)"
		if ! bounded 60 mkdir -p "$work/build" "$work/gocache"; then
			fail build "$label" "failed: mkdir"
		elif ! bounded 600 tar -C "$work/build" -xf "$tmp/build.tar" 2>"$tmp/build.err"; then
			fail build "$label" "failed: unpacking the tree" "$tmp/build.err"
		else
			t0=$(now)
			if bounded 1800 env -C "$work/build" GOFLAGS="-mod=mod -buildvcs=false" GOCACHE="$work/gocache" \
				GOMODCACHE="$modcache" GOPROXY=off GOTOOLCHAIN=local \
				go build -o /dev/null ./... >"$tmp/build.err" 2>&1; then
				val[build,$label]=$(secs "$t0" "$(now)")
			else
				fail build "$label" "failed: go build" "$tmp/build.err"
			fi
		fi
	fi

	if [ "$hung" = 1 ]; then
		notes+=("$label: the filesystem hung: a process could not be stopped; $work left as it is")
	elif ! bounded 600 rm -rf "$work"; then
		notes+=("$label: could not remove $work")
	fi
	work=
done

# ---- the table ----
base=${labels[0]}
# ratio ROW LABEL: speed relative to the baseline (baseline time / time for
# seconds), empty when either is missing.
ratio() {
	local v=${val[$1,$2]:-} b=${val[$1,$base]:-}
	[ -n "$v" ] && [ -n "$b" ] || return 0
	awk -v v="$v" -v b="$b" -v u="${unit[$1]}" 'BEGIN {
		if (u == "s") { if (v > 0) printf "%.2fx", b / v }
		else if (b > 0) printf "%.2fx", v / b }'
}
fmtval() {
	awk -v v="$1" -v u="$2" 'BEGIN {
		if (u == "s") printf "%.2f s", v
		else if (u == "MB/s" && v < 100) printf "%.1f %s", v, u
		else printf "%.0f %s", v, u }'
}
for row in "${rows[@]}"; do
	for label in "${labels[@]}"; do
		[ -n "${cell[$row,$label]:-}" ] && continue
		if [ -z "${val[$row,$label]:-}" ]; then
			cell[$row,$label]="n/a"
			continue
		fi
		c=$(fmtval "${val[$row,$label]}" "${unit[$row]}")
		r=$(ratio "$row" "$label")
		[ "$label" != "$base" ] && [ -n "$r" ] && c="$c ($r)"
		cell[$row,$label]=$c
	done
done
w0=8
for row in "${rows[@]}"; do [ ${#name[$row]} -gt "$w0" ] && w0=${#name[$row]}; done
declare -A width=()
for label in "${labels[@]}"; do
	width[$label]=${#label}
	for row in "${rows[@]}"; do
		[ ${#cell[$row,$label]} -gt "${width[$label]}" ] && width[$label]=${#cell[$row,$label]}
	done
done
echo
printf "%-${w0}s" workload
for label in "${labels[@]}"; do printf "  %${width[$label]}s" "$label"; done
echo
for row in "${rows[@]}"; do
	printf "%-${w0}s" "${name[$row]}"
	for label in "${labels[@]}"; do printf "  %${width[$label]}s" "${cell[$row,$label]}"; done
	echo
done
echo "(Nx) = speed relative to $base: below 1 is slower, for the seconds rows too ($base's time / the time)."
echo "MB/s are 10^6 bytes a second. $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)."
for p in "${stuck[@]}"; do notes+=("left behind, stuck: $p"); done
if [ ${#notes[@]} -gt 0 ]; then
	echo "notes:"
	printf '  %s\n' "${notes[@]}"
fi

# ---- JSON ----
jstr() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\t'/\\t}
	s=${s//$'\r'/\\r}
	printf '"%s"' "$s"
}
if [ -n "$json" ]; then
	{
		printf '{\n  "date": %s,\n  "quick": %s,\n  "kernel": %s,\n  "fio": %s,\n  "go": %s,\n  "baseline": %s,\n' \
			"$(jstr "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" "$([ "$quick" = 1 ] && echo true || echo false)" \
			"$(jstr "$(uname -r)")" "$(jstr "$(fio --version)")" "$(jstr "$(go env GOVERSION)")" "$(jstr "$base")"
		printf '  "labels": ['
		for i in "${!labels[@]}"; do
			[ "$i" -gt 0 ] && printf ','
			printf '\n    {"label": %s, "dir": %s, "fs": %s}' "$(jstr "${labels[$i]}")" "$(jstr "${dirs[$i]}")" "$(jstr "$(fstype "${dirs[$i]}")")"
		done
		printf '\n  ],\n  "rows": ['
		first=1
		for row in "${rows[@]}"; do
			[ "$first" = 1 ] || printf ','
			first=0
			printf '\n    {"id": %s, "name": %s, "unit": %s, "values": {' "$(jstr "$row")" "$(jstr "${name[$row]}")" "$(jstr "${unit[$row]}")"
			sep=
			for label in "${labels[@]}"; do
				printf '%s%s: %s' "$sep" "$(jstr "$label")" "${val[$row,$label]:-null}"
				sep=', '
			done
			printf '}, "ratios": {'
			sep=
			for label in "${labels[@]}"; do
				r=$(ratio "$row" "$label")
				printf '%s%s: %s' "$sep" "$(jstr "$label")" "${r%x}"
				[ -n "$r" ] || printf null
				sep=', '
			done
			printf '}'
			if [[ $row == create || $row == stat || $row == unlink ]]; then
				printf ', "seconds": {'
				sep=
				for label in "${labels[@]}"; do
					printf '%s%s: %s' "$sep" "$(jstr "$label")" "${secs_of[$row,$label]:-null}"
					sep=', '
				done
				printf '}'
			fi
			printf ', "cells": {'
			sep=
			for label in "${labels[@]}"; do
				printf '%s%s: %s' "$sep" "$(jstr "$label")" "$(jstr "${cell[$row,$label]}")"
				sep=', '
			done
			printf '}}'
		done
		printf '\n  ],\n  "notes": ['
		sep=
		for n in "${notes[@]}"; do
			printf '%s\n    %s' "$sep" "$(jstr "$n")"
			sep=,
		done
		printf '\n  ]\n}\n'
	} >"$json"
	echo "results written to $json"
fi
