#!/usr/bin/env bash
# A private sshfs over loopback, the reference for bench/fs.sh: a network
# filesystem through FUSE that everyone knows.
#
# Usage: bench/sshfs.sh mount EXPORT_DIR MOUNTPOINT
#        bench/sshfs.sh umount MOUNTPOINT
#
# mount starts a private sshd on a free 127.0.0.1 port, with a throw-away
# host key and client key (as startSSHD in bench/exec_bench_test.go does:
# key authentication only, the system's sshd and its configuration are not
# used or changed), then mounts EXPORT_DIR there with Debian's sshfs.
# umount unmounts, and stops that sshd and whatever it still runs. The keys,
# the configuration, the logs and the pids are kept in
# /run/ssi-bench/sshfs-HASH (HASH from the mount point's path), and removed
# by umount. Needs root (sshd's privilege separation, and ssh as root to
# keep the files' owners).
#
# sshfs options (sshfs 3.7.3, libfuse 3.14 on Debian 12; the 2.x options
# people still quote, cache=yes, large_read, big_writes, are gone):
#   kernel_cache   keep file contents in the page cache across opens (libfuse
#                  option; what benchmarks that want sshfs's best figures
#                  use; the 'cached read' row of bench/fs.sh depends on it)
#   dir_cache=yes  sshfs's cache of names and attributes (the default, said)
#   Ciphers=aes128-gcm@openssh.com  when the CPU has AES-NI: the cheapest
#                  cipher, the usual choice for throughput; chacha20 otherwise
#   Compression=no (ssh's default, said: compression would flatter fio's data)
# and the server's sftp-server (/usr/lib/openssh/sftp-server), as a stock
# Debian sshd would run it. No reconnect: a dropped connection should show.
set -euo pipefail

usage() {
	echo "usage: bench/sshfs.sh mount EXPORT_DIR MOUNTPOINT | umount MOUNTPOINT" >&2
	exit 2
}
die() {
	echo "bench/sshfs.sh: $*" >&2
	exit 1
}
[ $# -ge 1 ] || usage
# mounted DIR: DIR is a mount point, by /proc/self/mountinfo (a dead FUSE
# mount cannot be stat'ed, so mountpoint(1) says it is not one).
mounted() { M=${1// /\\040} awk '$5 == ENVIRON["M"] { f = 1 } END { exit !f }' /proc/self/mountinfo; }
# abspath PATH: PATH absolute, its directory resolved, its last component
# not touched: a hung FUSE mount point cannot even be stat'ed (the caller
# would wait with it for ever).
abspath() { echo "$(cd "$(dirname "$1")" && pwd -P)/$(basename "$1")"; }
# answers DIR: DIR's filesystem answers a stat within 5 s. The stat is left
# behind (it ends when the mount does) if it does not.
answers() {
	local p d fin=""
	stat -f "$1" >/dev/null 2>&1 &
	p=$!
	sleep 5 &
	d=$!
	wait -n -p fin "$p" "$d" || true
	[ "$fin" = "$p" ] || return 1
	kill "$d" 2>/dev/null || true
	wait "$d" 2>/dev/null || true
}
statedir() { echo "/run/ssi-bench/sshfs-$(printf %s "$1" | sha1sum | cut -c1-12)"; }

# stop STATE: unmount (if mounted), end sshfs, the sshd and its sessions,
# remove the state. Safe on a half-made state.
stop() {
	local st=$1 mnt pid kids=() k i
	mnt=$(cat "$st/mountpoint" 2>/dev/null || true)
	pid=$(cat "$st/sshfs.pid" 2>/dev/null || true)
	if [ -n "$mnt" ] && mounted "$mnt"; then
		if ! answers "$mnt"; then
			# A hung sshfs: end it first, that aborts the connection.
			echo "bench/sshfs.sh: $mnt does not answer; killing sshfs (pid $pid)" >&2
			[ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshfs ] && kill -9 "$pid" 2>/dev/null
			sleep 0.5
		fi
		timeout -k 5 30 fusermount3 -u "$mnt" 2>/dev/null || timeout -k 5 30 umount "$mnt" 2>/dev/null || true
	fi
	# sshfs ends by itself once unmounted; its sshd session with it. If
	# the unmount failed (busy, or sshfs hangs), end sshfs: that aborts the
	# FUSE connection, and whatever waits on it gets ENOTCONN.
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshfs ]; then
		for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	if [ -n "$mnt" ] && mounted "$mnt"; then
		timeout -k 5 30 fusermount3 -u "$mnt" 2>/dev/null || {
			echo "bench/sshfs.sh: $mnt is busy; detaching it lazily (fusermount3 -uz)" >&2
			timeout -k 5 30 fusermount3 -uz "$mnt" || true
		}
	fi
	if pid=$(cat "$st/sshd.pid" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ]; then
		# The listener's children: a session that outlived the client.
		mapfile -t kids < <(pgrep -P "$pid" || true)
		kill "$pid" 2>/dev/null || true
		for k in "${kids[@]}"; do kill "$k" 2>/dev/null || true; done
		for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	[ -f "$st/made-run-sshd" ] && rmdir /run/sshd 2>/dev/null
	rm -rf "$st"
}

case $1 in
mount)
	[ $# -eq 3 ] || usage
	[ "$(id -u)" -eq 0 ] || die "needs root (sshd's privilege separation)"
	[ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd is not installed; run scripts/deps.sh --bench"
	for t in sshfs ssh-keygen fusermount3 ss; do
		command -v "$t" >/dev/null 2>&1 || die "$t is not installed; run scripts/deps.sh --bench"
	done
	[ -d "$2" ] || die "$2 is not a directory"
	export_dir=$(cd "$2" && pwd -P)
	mkdir -p "$3"
	mnt=$(abspath "$3")
	mounted "$mnt" && die "$mnt is a mount point already"
	st=$(statedir "$mnt")
	[ -e "$st" ] && die "$st exists: $mnt is mounted by this script already? (bench/sshfs.sh umount $mnt)"
	mkdir -p /run/ssi-bench
	mkdir -m 700 "$st"
	trap 'stop "$st"' EXIT
	echo "$mnt" >"$st/mountpoint"
	for k in host_key id; do
		ssh-keygen -q -t ed25519 -N '' -C "ssi-bench-$k" -f "$st/$k" || die "ssh-keygen failed"
	done
	cp "$st/id.pub" "$st/authorized_keys"
	mkdir -m 700 "$st/home"
	if [ ! -d /run/sshd ]; then
		mkdir -m 755 /run/sshd
		touch "$st/made-run-sshd"
	fi
	sftp=internal-sftp
	[ -x /usr/lib/openssh/sftp-server ] && sftp=/usr/lib/openssh/sftp-server
	cipher=
	grep -qw aes /proc/cpuinfo && cipher=aes128-gcm@openssh.com
	# A free port: pick one nobody listens on; if sshd still loses it to
	# a race, try another (bounded).
	port=
	for ((try = 0; try < 20 && ${#port} == 0; try++)); do
		p=$((20000 + RANDOM % 40000))
		[ -z "$(ss -Hltn "sport = :$p")" ] || continue
		cat >"$st/sshd_config" <<EOF
Port $p
ListenAddress 127.0.0.1
HostKey $st/host_key
PidFile $st/sshd.pid
AuthorizedKeysFile $st/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
SetEnv HOME=$st/home
Subsystem sftp $sftp
EOF
		rm -f "$st/sshd.pid"
		# Without -D sshd detaches itself and writes its PidFile.
		/usr/sbin/sshd -f "$st/sshd_config" -E "$st/sshd.log" || die "sshd did not start: $(tail -n3 "$st/sshd.log")"
		for ((i = 0; i < 250; i++)); do
			if [ -n "$(ss -Hltn "sport = :$p")" ] && [ -s "$st/sshd.pid" ]; then
				port=$p
				break
			fi
			sleep 0.02
		done
		if [ -z "$port" ]; then
			# Lost the port, or sshd died: stop it if it lives, try again.
			pid=$(cat "$st/sshd.pid" 2>/dev/null || true)
			[ -n "$pid" ] && kill "$pid" 2>/dev/null
			sleep 0.1
		fi
	done
	[ -n "$port" ] || die "sshd did not listen on a loopback port: $(tail -n3 "$st/sshd.log" 2>/dev/null)"
	opts=IdentityFile=$st/id,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR
	opts+=,port=$port,kernel_cache,dir_cache=yes,Compression=no
	[ -n "$cipher" ] && opts+=,Ciphers=$cipher
	echo "$opts" >"$st/options"
	# -f: sshfs stays in the foreground of its own session, so that we
	# know its pid; stdin from /dev/null so that ssh never waits on one.
	setsid sshfs -f "$(id -un)@127.0.0.1:$export_dir" "$mnt" -o "$opts" </dev/null >"$st/sshfs.log" 2>&1 &
	echo $! >"$st/sshfs.pid"
	for ((i = 0; i < 300; i++)); do
		mounted "$mnt" && break
		kill -0 "$(cat "$st/sshfs.pid")" 2>/dev/null || die "sshfs failed: $(tail -n5 "$st/sshfs.log")"
		sleep 0.1
	done
	mounted "$mnt" || die "sshfs did not mount $mnt within 30s: $(tail -n5 "$st/sshfs.log")"
	trap - EXIT
	echo "bench/sshfs.sh: $export_dir mounted on $mnt (sshd on 127.0.0.1:$port, pid $(cat "$st/sshd.pid"); sshfs pid $(cat "$st/sshfs.pid"); state in $st)"
	echo "bench/sshfs.sh: options -o $opts"
	;;
umount | unmount)
	[ $# -eq 2 ] || usage
	mnt=$(abspath "$2")
	st=$(statedir "$mnt")
	if [ ! -d "$st" ]; then
		mounted "$mnt" && die "$mnt was not mounted by bench/sshfs.sh (no $st); not touching it"
		die "nothing mounted on $mnt by bench/sshfs.sh"
	fi
	stop "$st"
	mounted "$mnt" && die "$mnt is still mounted"
	echo "bench/sshfs.sh: $mnt unmounted, its sshd stopped"
	;;
*) usage ;;
esac
