#!/bin/bash
# Where the 64-byte UDP test loses its packets: the receiving pod's socket, at
# iperf3's default receive buffer and at 4 MiB (`iperf3 -w 4M`), through kernel VXLAN
# and through vxmesh. For each mode it holds the benchmark's topology
# (`vxmesh-bench hold`), sends 64-byte datagrams from pod A to pod B at each rate for
# 4 s (0 = as fast as iperf3 sends), and prints per probe: datagrams sent, lost, the
# receiving socket's overflows (UdpRcvbufErrors in pod B), and how long the receiving
# iperf3 ran and waited for a CPU (/proc/<pid>/schedstat). Traffic goes only between
# the hold's pods; each topology is torn down before the next.
#
#   sudo bench/udp-receiver-buffer.sh                       # kernel,vxmesh; 80000 and 0 pps; 2 repeats
#   sudo VXMESH_BUF_RATES="65000 80000 0" VXMESH_BUF_REPEATS=3 bench/udp-receiver-buffer.sh
#
# Knobs: VXMESH_BUF_MODES ("kernel vxmesh"), VXMESH_BUF_RATES ("80000 0"),
# VXMESH_BUF_REPEATS (2), VXMESH_BUF_BIN (target/release: vxmesh-bench, vxmeshd).
# Needs root, iperf3, jq, nstat (iproute2).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${VXMESH_BUF_BIN:-$ROOT/target/release}
MODES=${VXMESH_BUF_MODES:-kernel vxmesh}
RATES=${VXMESH_BUF_RATES:-80000 0}
REPEATS=${VXMESH_BUF_REPEATS:-2}
PORT=5301
[ "$(id -u)" = 0 ] || { echo "udp-receiver-buffer: needs root (network namespaces)" >&2; exit 1; }
for c in iperf3 jq nstat; do
	command -v "$c" >/dev/null || { echo "udp-receiver-buffer: no $c (run scripts/install-deps.sh)" >&2; exit 1; }
done
case "$REPEATS $RATES" in *[!0-9\ ]*) echo "udp-receiver-buffer: VXMESH_BUF_REPEATS and VXMESH_BUF_RATES are whole numbers" >&2; exit 2 ;; esac
[ -x "$BIN/vxmesh-bench" ] || { echo "udp-receiver-buffer: no $BIN/vxmesh-bench (cargo build --release, or set VXMESH_BUF_BIN)" >&2; exit 1; }

hold_pid=
work=$(mktemp -d /tmp/udp-receiver-buffer.XXXXXX)
stop_hold() {
	if [ -n "$hold_pid" ]; then
		kill -INT "$hold_pid" 2>/dev/null || true
		wait "$hold_pid" 2>/dev/null || true
		hold_pid=
	fi
}
trap 'stop_hold; rm -rf "$work"' EXIT

# one probe: rate (pps, 0 = unlimited), extra client flags; needs $pa $pb $ip
probe() {
	local rate=$1 extra=$2 bps spid r0 w0 n0 r1 w1 n1 out ov
	bps=$((rate * 64 * 8))
	ip netns exec "$pb" nstat -n >/dev/null
	ip netns exec "$pb" timeout 30 iperf3 -s -p "$PORT" >/dev/null 2>&1 &
	local srv=$!
	sleep 0.5
	spid=$(ip netns pids "$pb" | while read -r p; do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = iperf3 ] && echo "$p"; done | head -1)
	[ -n "$spid" ] || { echo "udp-receiver-buffer: the iperf3 server did not start in $pb" >&2; return 1; }
	read -r r0 w0 n0 <"/proc/$spid/schedstat"
	# shellcheck disable=SC2086 # $extra is zero or more flags
	out=$(ip netns exec "$pa" timeout 30 iperf3 -c "$ip" -p "$PORT" -u -l 64 -b "$bps" -t 4 $extra -J) || out='{}'
	sleep 0.3
	read -r r1 w1 n1 <"/proc/$spid/schedstat"
	kill "$spid" 2>/dev/null || true
	wait "$srv" 2>/dev/null || true
	ov=$(ip netns exec "$pb" nstat -z UdpRcvbufErrors | awk '/UdpRcvbufErrors/ {print $2}')
	printf '%-7s %-10s %-12s %s, socket overflows %s; receiver ran %d ms, waited for a CPU %d ms (%d slices)\n' \
		"$mode" "$rate pps" "${extra:-default}" \
		"$(jq -r '.end.sum // {} | "\(.packets // "?") sent, \(.lost_packets // "?") lost (\((.lost_percent // 0) * 100 | floor / 100) %)"' <<<"$out")" \
		"${ov:-?}" $(((r1 - r0) / 1000000)) $(((w1 - w0) / 1000000)) $((n1 - n0))
}

echo "kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), rmem_default $(sysctl -n net.core.rmem_default), rmem_max $(sysctl -n net.core.rmem_max)"
for mode in $MODES; do
	"$BIN/vxmesh-bench" hold --bin-dir "$BIN" --mode "$mode" --seconds 600 --out "$work/$mode" >"$work/$mode.log" 2>&1 &
	hold_pid=$!
	for _ in $(seq 1 120); do
		grep -q '^Ctrl-C' "$work/$mode.log" 2>/dev/null && break
		kill -0 "$hold_pid" 2>/dev/null || break
		sleep 0.5
	done
	grep -q '^Ctrl-C' "$work/$mode.log" || { echo "udp-receiver-buffer: the $mode topology did not come up:" >&2; tail -n 20 "$work/$mode.log" >&2; exit 1; }
	pa=$(awk '/pod A:/ {print $6}' "$work/$mode.log")
	pb=$(awk '/pod B:/ {print $6}' "$work/$mode.log")
	ip=$(awk '/pod B:/ {gsub(/[()]/, "", $8); print $8}' "$work/$mode.log")
	for _ in $(seq 1 "$REPEATS"); do
		for rate in $RATES; do
			probe "$rate" ""
			probe "$rate" "-w 4M"
		done
	done
	stop_hold
done
