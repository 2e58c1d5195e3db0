#!/bin/bash
# Where a ping waits while 8 TCP streams run A→B, on a topology that
# `vxmesh-bench hold --mode vxmesh` keeps up (it prints the namespaces and pod B's
# address). Captures the ICMP at four points — each node's TAP (vxmesh0) and each
# node's underlay (eth0, the VXLAN datagrams under 300 bytes) — and samples node B's
# VXLAN receive queue every 20 ms, then prints, per leg, the median, p90 and p99 over
# the pings (bench/latency_split.py). Traffic goes only between the hold's pods.
#
#   sudo target/release/vxmesh-bench hold --mode vxmesh &     # note its names
#   sudo bench/latency-split.sh vxb1234-vxm 10.244.21.2 /tmp/split-1
#
# VXMESH_TCP_CC=cubic runs the streams with that congestion control (iperf3 -C)
# instead of the pods' default, which they take from the host.
set -euo pipefail
[[ $# == 3 ]] || {
	echo "usage: $0 <hold prefix, e.g. vxb1234-vxm> <pod B address> <output dir>" >&2
	exit 2
}
p=$1 pod_b=$2 out=$3
for ns in "$p-a" "$p-b" "$p-pa" "$p-pb"; do
	ip netns pids "$ns" >/dev/null 2>&1 || {
		echo "no namespace $ns: is the hold topology up?" >&2
		exit 2
	}
done
mkdir -p "$out"
ip netns exec "$p-pb" timeout 30 iperf3 -s -1 >/dev/null 2>&1 &
for n in a b; do
	ip netns exec "$p-$n" timeout 16 tcpdump -n -i vxmesh0 --time-stamp-precision=nano \
		-B 16384 -w "$out/${n}_tap.pcap" icmp 2>/dev/null &
	ip netns exec "$p-$n" timeout 16 tcpdump -n -i eth0 --time-stamp-precision=nano \
		-B 16384 -w "$out/${n}_eth.pcap" 'udp port 8472 and udp[4:2] < 300' 2>/dev/null &
done
(
	for _ in $(seq 1 600); do
		echo "T $(date +%s.%N)"
		ip netns exec "$p-b" ss -uamn 'sport = :8472' | grep -o 'skmem:([^)]*)' || true
		sleep 0.02
	done
) >"$out/ss_b.txt" 2>&1 &
sampler=$!
sleep 1.5
cc=()
if [[ -n ${VXMESH_TCP_CC:-} ]]; then
	[[ $VXMESH_TCP_CC =~ ^[a-z0-9_]{1,15}$ ]] || {
		echo "VXMESH_TCP_CC=$VXMESH_TCP_CC is not a congestion control name (e.g. cubic)" >&2
		exit 2
	}
	cc=(-C "$VXMESH_TCP_CC")
fi
ip netns exec "$p-pa" timeout 20 iperf3 -c "$pod_b" -P 8 -t 11 "${cc[@]}" >"$out/iperf.txt" 2>&1 &
sleep 2
ip netns exec "$p-pa" ping -c 350 -i 0.02 "$pod_b" >"$out/ping.txt" 2>&1 || true
kill "$sampler" 2>/dev/null || true
wait
tail -1 "$out/ping.txt"
grep SUM "$out/iperf.txt" | tail -1
python3 "$(dirname "$0")/latency_split.py" "$out"
