#!/usr/bin/env bash
# The cluster virtual IP side by side with HAProxy and a direct connection,
# in one run on one machine (docs/PERFORMANCE.md, docs/CVIP.md). A 3-node
# --isolate cluster (each node in its own network namespace on a private
# bridge) runs bench's HTTP backend (test/cvipbackend) on nodes 2 and 3;
# wrk runs in a client namespace of its own on the bridge against:
#   direct     node 2's backend itself (the ceiling: one hop, no balancer)
#   haproxy    Debian's HAProxy in TCP mode in node 1's namespace,
#              round robin over both backends
#   nftables   the VIP, directed by node 1 through the kernel datapath
#   userspace  a VIP on another port, --datapath userspace (the proxy)
# Each gets three runs: requests/s over kept-alive connections (and their
# p99 latency), new connections/s (Connection: close: one request per
# connection), and bulk throughput (10 MiB responses). At the end node 1
# dies (its daemon killed, its network down) and the time until a third
# VIP, which any node may direct, serves again is measured.
#
# Usage: bench/cvip.sh [SECONDS per run, default 5]
# Needs root and scripts/deps.sh --bench (wrk, haproxy). Works in
# $CVIP_BENCH_DIR (default /var/tmp/ssi-cvip-bench), removed at the end.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
[ "$(id -u)" -eq 0 ] || { echo "bench/cvip.sh: needs root (network namespaces)" >&2; exit 2; }
for b in wrk haproxy ip; do
	command -v $b >/dev/null 2>&1 || [ -x /usr/sbin/$b ] || { echo "bench/cvip.sh: $b is missing: run scripts/deps.sh --bench" >&2; exit 2; }
done
dir=${CVIP_BENCH_DIR:-/var/tmp/ssi-cvip-bench}
ssi="$dir/bin/ssi" backend="$dir/bin/cvipbackend"
prefix="" client=""

cleanup() {
	[ -f "$dir/haproxy.pid" ] && kill "$(cat "$dir/haproxy.pid")" 2>/dev/null || true
	[ -n "$client" ] && ip netns del "$client" 2>/dev/null || true
	[ -x "$ssi" ] && "$ssi" down --dir "$dir/cluster" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir/bin"
(cd "$repo" && go build -o "$ssi" ./cmd/ssi && go build -o "$backend" ./test/cvipbackend)
"$ssi" up --nodes 3 --dir "$dir/cluster" --isolate >/dev/null
prefix=$(sed -n 's/.*"prefix":"\([^"]*\)".*/\1/p' "$dir/cluster/isolate.json")
subnet=$(sed -n 's/.*"subnet":"\([0-9.]*\)\.0\.0\/16".*/\1/p' "$dir/cluster/isolate.json")
n1=$subnet.0.1 n2=$subnet.0.2 n3=$subnet.0.3 vip=$subnet.0.200 vip2=$subnet.0.201
client=$prefix-cl
ip netns add "$client"
ip link add "${prefix}vc" type veth peer name eth0 netns "$client"
ip link set "${prefix}vc" netns "$prefix-br"
ip -n "$prefix-br" link set "${prefix}vc" master br0 up
ip -n "$client" link set lo up
ip -n "$client" addr add "$subnet.0.250/16" dev eth0
ip -n "$client" link set eth0 up

export SSI_SOCKET=$dir/cluster/node1/ssi.sock
for k in 2 3; do "$ssi" run -d -p -n $k "$backend" --listen :8080 --name node$k >/dev/null; done
"$ssi" cvip add "$vip:80" --nodes 2,3 --directors 1 --target-port 8080 --check /healthz >/dev/null
"$ssi" cvip add "$vip:81" --nodes 2,3 --directors 1 --target-port 8080 --check /healthz --datapath userspace >/dev/null
# For the failover at the end, on an address of its own (the VIPs on one
# address share their directors): any node may direct it, node 1 first.
"$ssi" cvip add "$vip2:80" --nodes 2,3 --target-port 8080 --check /healthz >/dev/null

cat >"$dir/haproxy.cfg" <<CFG
global
	maxconn 8000
	pidfile $dir/haproxy.pid
defaults
	mode tcp
	timeout connect 5s
	timeout client 60s
	timeout server 60s
listen vip
	bind $n1:9000
	balance roundrobin
	server node2 $n2:8080
	server node3 $n3:8080
CFG
ip netns exec "$prefix-n1" haproxy -D -f "$dir/haproxy.cfg"

# Wait for both VIPs: directed, on their datapaths, both backends healthy.
for i in $(seq 1 100); do
	out=$("$ssi" cvip ls)
	if echo "$out" | grep -q "$vip:80/tcp .*nftables  *2:up 3:up" && echo "$out" | grep -q "$vip:81/tcp .*userspace  *2:up 3:up"; then
		break
	fi
	[ "$i" = 100 ] && { echo "bench/cvip.sh: the VIPs did not become ready:" >&2; echo "$out" >&2; exit 1; }
	sleep 0.2
done
"$ssi" cvip ls

w() { ip netns exec "$client" wrk "$@" 2>&1; }
# rate OUTPUT: Requests/sec; xfer OUTPUT: Transfer/sec in MB/s; p99 OUTPUT: ms.
rate() { awk '/^Requests\/sec:/ {print $2}' <<<"$1"; }
xfer() { awk '/^Transfer\/sec:/ {v=$2; u=substr(v, length(v)-1); n=v+0; if (u=="GB") n*=1024; else if (u=="KB") n/=1024; printf "%.1f\n", n}' <<<"$1"; }
p99() { awk '$1=="99%" {v=$2; n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /[0-9]s$/) n*=1000; printf "%.2f\n", n}' <<<"$1"; }
errs() { awk '/Non-2xx|Socket errors/ {print}' <<<"$1" | tr '\n' ' '; }

declare -A rps conn lat bulk
targets=(direct haproxy nftables userspace)
declare -A url=([direct]="http://$n2:8080" [haproxy]="http://$n1:9000" [nftables]="http://$vip:80" [userspace]="http://$vip:81")
for t in "${targets[@]}"; do
	# A moment of quiet between targets; conntrack's TIME_WAIT entries of
	# the previous runs stay (they cost lookups the same for everyone).
	sleep 1
	o=$(w -t2 -c32 -d"${secs}s" --latency "${url[$t]}/")
	rps[$t]=$(rate "$o") lat[$t]=$(p99 "$o")
	e=$(errs "$o"); [ -n "$e" ] && echo "$t requests: $e" >&2
	o=$(w -t2 -c32 -d"${secs}s" -H "Connection: close" "${url[$t]}/")
	conn[$t]=$(rate "$o")
	e=$(errs "$o"); [ -n "$e" ] && echo "$t connections: $e" >&2
	o=$(w -t1 -c4 -d"${secs}s" "${url[$t]}/bulk?bytes=10485760")
	bulk[$t]=$(xfer "$o")
	echo "$t: ${rps[$t]} req/s, ${conn[$t]} conn/s, p99 ${lat[$t]} ms, ${bulk[$t]} MB/s" >&2
done

# Failover: the director of $vip2 (node 1) dies.
kill -9 "$(cat "$dir/cluster/node1/ssi.pid")"
ip -n "$prefix-n1" link set eth0 down
t0=$(date +%s%N) failover=""
for i in $(seq 1 200); do
	if ip netns exec "$client" "$backend" get "http://$vip2/" 1 | grep -q node; then
		failover=$(( ($(date +%s%N) - t0) / 1000000 ))
		break
	fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
echo
echo "cluster virtual IP, $(nproc) CPUs, ${secs}s per run, wrk -t2 -c32 (bulk: -t1 -c4, 10 MiB responses)"
printf '%-10s %12s %12s %10s %10s   %-21s %-21s %-21s %-21s\n' target 'req/s' 'conn/s' 'p99 ms' 'bulk MB/s' 'req/s vs haproxy,direct' 'conn/s vs haproxy,direct' 'p99 vs haproxy,direct' 'bulk vs haproxy,direct'
for t in "${targets[@]}"; do
	printf '%-10s %12s %12s %10s %10s   %-21s %-21s %-21s %-21s\n' "$t" "${rps[$t]}" "${conn[$t]}" "${lat[$t]}" "${bulk[$t]}" \
		"$(ratio "${rps[$t]}" "${rps[haproxy]}"), $(ratio "${rps[$t]}" "${rps[direct]}")" \
		"$(ratio "${conn[$t]}" "${conn[haproxy]}"), $(ratio "${conn[$t]}" "${conn[direct]}")" \
		"$(ratio "${lat[$t]}" "${lat[haproxy]}"), $(ratio "${lat[$t]}" "${lat[direct]}")" \
		"$(ratio "${bulk[$t]}" "${bulk[haproxy]}"), $(ratio "${bulk[$t]}" "${bulk[direct]}")"
done
echo "failover: the VIP served again ${failover:-never (200 tries)} ms after its director's node died (director and Raft leader)"
