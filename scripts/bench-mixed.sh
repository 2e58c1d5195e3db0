#!/usr/bin/env bash
# TCP between a userspace node and kernel-VXLAN nodes at default offloads, as a ratio to
# kernel <-> kernel on the same topology in the same run (issue 13's target: at least 0.8x
# both ways). A netns lab of three nodes — n1 vxmesh userspace, n2 and n3 vxmesh
# --dataplane kernel (flannel's device and recipe) — every veth at its default offloads.
#
#   sudo scripts/bench-mixed.sh            # 3 rounds of 10 s per direction (about 3 minutes)
#
# Each round runs, one after another: n1 -> n2 (userspace -> kernel), n2 -> n1 (kernel ->
# userspace), n2 -> n3 and n3 -> n2 (kernel <-> kernel); iperf3, 1 TCP stream, pod p1 to
# pod p1, the first second omitted. Prints each figure, then the median and range per
# direction and the ratios of the medians; the last line is
# "mixed: userspace->kernel X.XXx, kernel->userspace Y.YYx of kernel<->kernel".
#
# Knobs: VXMESH_MIXED_ROUNDS (3), VXMESH_MIXED_SECONDS (10), VXLAB_BIN (target/release),
# VXMESH_MIXED_AGENT_ARGS (extra vxmeshd flags, default none: the defaults are what is
# measured), VXMESH_MIXED_SEGMENT=1 (turn UDP and UDP-tunnel segmentation off on every
# node's underlay veth, so bursts cross as single packets, as on a NIC without USO — both
# dataplanes then pay segmentation at the sender and the receiver sees packets, not 64 KB
# buffers). Needs root, etcd, iperf3, jq, ethtool (scripts/install-deps.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${VXMESH_MIXED_ROUNDS:-3}
SECONDS_PER=${VXMESH_MIXED_SECONDS:-10}
export VXLAB_PREFIX="vxmix$$" VXLAB_NODES=3 VXLAB_PODS=1 VXLAB_IPERF_SECONDS=1
export VXLAB_DATAPLANES="userspace kernel kernel"
export VXLAB_AGENT_ARGS=${VXMESH_MIXED_AGENT_ARGS:-}
export VXLAB_STATE=/tmp/vxlab-$VXLAB_PREFIX
SEGMENT=${VXMESH_MIXED_SEGMENT:-0}
# VXMESH_TCP_CC=cubic: that congestion control for the streams (iperf3 -C) instead of
# the pods' default, which they take from the host.
CC=${VXMESH_TCP_CC:-}
case $CC in *[!a-z0-9_]*) echo "bench-mixed: VXMESH_TCP_CC=$CC is not a congestion control name (e.g. cubic)" >&2; exit 2 ;; esac
case $SEGMENT in 0|1) ;; *) echo "bench-mixed: VXMESH_MIXED_SEGMENT is 0 or 1" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "bench-mixed: needs root (network namespaces)" >&2; exit 1; }
for c in iperf3 jq etcd; do
  command -v "$c" >/dev/null || { echo "bench-mixed: no $c (run scripts/install-deps.sh)" >&2; exit 1; }
done
case $ROUNDS$SECONDS_PER in *[!0-9]*) echo "bench-mixed: VXMESH_MIXED_ROUNDS and VXMESH_MIXED_SECONDS are whole numbers" >&2; exit 2 ;; esac

lab() { "$ROOT/scripts/lab.sh" "$@"; }
trap 'lab down >/dev/null 2>&1 || true' EXIT
lab up >"/tmp/bench-mixed-$$.log" 2>&1 || { tail -n 20 "/tmp/bench-mixed-$$.log" >&2; exit 1; }
rm -f "/tmp/bench-mixed-$$.log"
underlay="veth at its default offloads"
if [ "$SEGMENT" = 1 ]; then
  command -v ethtool >/dev/null || { echo "bench-mixed: no ethtool (run scripts/install-deps.sh)" >&2; exit 1; }
  for i in 1 2 3; do
    ip netns exec "$VXLAB_PREFIX-n$i" ethtool -K eth0 tx-udp-segmentation off \
      tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off >/dev/null
  done
  underlay="veth with UDP and UDP-tunnel segmentation off (VXMESH_MIXED_SEGMENT=1)"
fi
pod() { echo "$VXLAB_PREFIX-n$1-p1"; }
ip_of() { cat "$VXLAB_STATE/n$1/p1.ip"; }

# one TCP stream from node $1's pod to node $2's pod; prints Gbit/s
run() {
  local srv cli out
  srv=$(pod "$2"); cli=$(pod "$1")
  ip netns exec "$srv" iperf3 -s -1 -D -p 5201 >/dev/null 2>&1
  sleep 0.3
  out=$(ip netns exec "$cli" iperf3 -c "$(ip_of "$2")" -p 5201 -t "$SECONDS_PER" -O 1 ${CC:+-C "$CC"} -J </dev/null 2>/dev/null) || { echo 0; return; }
  jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | floor / 100' <<<"$out"
}

declare -A got=()
cc_used=${CC:-"$(cat /proc/sys/net/ipv4/tcp_congestion_control) (the host default)"}
echo "kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), vxmeshd flags: ${VXLAB_AGENT_ARGS:-defaults}, underlay: $underlay, TCP congestion control: $cc_used"
for r in $(seq "$ROUNDS"); do
  for pair in "1 2 u2k" "2 1 k2u" "2 3 k2k" "3 2 k2k"; do
    read -r a b key <<<"$pair"
    g=$(run "$a" "$b")
    got[$key]="${got[$key]:-} $g"
    echo "round $r: n$a -> n$b ($key) $g Gbit/s"
  done
done

# median and range of a list of numbers
stats() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f %.2f %.2f\n", m, v[1], v[NR]}'; }
read -r u2k u2k_lo u2k_hi < <(stats <<<"${got[u2k]}")
read -r k2u k2u_lo k2u_hi < <(stats <<<"${got[k2u]}")
read -r k2k k2k_lo k2k_hi < <(stats <<<"${got[k2k]}")
echo "userspace -> kernel  $u2k Gbit/s (${u2k_lo}-${u2k_hi})"
echo "kernel -> userspace  $k2u Gbit/s (${k2u_lo}-${k2u_hi})"
echo "kernel <-> kernel    $k2k Gbit/s (${k2k_lo}-${k2k_hi})"
awk -v a="$u2k" -v b="$k2u" -v k="$k2k" 'BEGIN {
  if (k <= 0) { print "mixed: kernel<->kernel measured 0: no ratio"; exit 1 }
  printf "mixed: userspace->kernel %.2fx, kernel->userspace %.2fx of kernel<->kernel\n", a / k, b / k }'
