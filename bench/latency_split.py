#!/usr/bin/env python3
"""Per-leg delays of the pings bench/latency-split.sh captured (tshark reads the pcaps).

Legs, for the echo request (A→B) and the reply (B→A):
  a_egress   node A's TAP → node A's underlay: the TAP ring and A's egress thread
  wire       A's underlay → B's underlay (one veth)
  b_ingress  B's underlay → B's TAP: B's VXLAN receive queue and ingress thread
  b_turn     B's TAP, request in → reply out: pod B's kernel answering
  b_egress, a_ingress: the same legs for the reply
A leg is left out for a ping whose datagram travelled inside a larger UDP GSO
buffer (the capture filter keeps datagrams under 300 bytes).
"""
import re
import statistics
import subprocess
import sys


def load(d, name):
    out = subprocess.run(
        ["tshark", "-r", f"{d}/{name}.pcap", "-d", "udp.port==8472,vxlan", "-Y", "icmp",
         "-T", "fields", "-e", "frame.time_epoch", "-e", "icmp.type", "-e", "icmp.seq"],
        capture_output=True, text=True, check=True).stdout
    seen = {}
    for line in out.splitlines():
        t, kind, seq = line.split("\t")
        key = (int(kind.split(",")[-1]), int(seq.split(",")[0]))
        seen.setdefault(key, float(t))
    return seen


def main(d):
    a_tap, b_tap, a_eth, b_eth = (load(d, n) for n in ("a_tap", "b_tap", "a_eth", "b_eth"))
    legs = {k: [] for k in ("rtt", "request", "a_egress", "wire", "b_ingress", "b_turn",
                            "reply", "b_egress", "a_ingress")}
    for kind, seq in sorted(a_tap):
        rq, rp = (8, seq), (0, seq)
        if kind != 8 or not all(k in m for m in (a_tap, b_tap) for k in (rq, rp)):
            continue
        legs["rtt"].append(a_tap[rp] - a_tap[rq])
        legs["request"].append(b_tap[rq] - a_tap[rq])
        legs["b_turn"].append(b_tap[rp] - b_tap[rq])
        legs["reply"].append(a_tap[rp] - b_tap[rp])
        if rq in a_eth and rq in b_eth:
            legs["a_egress"].append(a_eth[rq] - a_tap[rq])
            legs["wire"].append(b_eth[rq] - a_eth[rq])
            legs["b_ingress"].append(b_tap[rq] - b_eth[rq])
        if rp in a_eth and rp in b_eth:
            legs["b_egress"].append(b_eth[rp] - b_tap[rp])
            legs["a_ingress"].append(a_tap[rp] - a_eth[rp])
    for name, v in legs.items():
        if not v:
            continue
        v = sorted(x * 1e6 for x in v)
        q = lambda f: v[min(len(v) - 1, int(len(v) * f))]
        print(f"{name:10s} n={len(v):3d} median={statistics.median(v):7.0f} "
              f"p90={q(0.9):7.0f} p99={q(0.99):7.0f} max={v[-1]:7.0f} µs")
    queued = [int(x) for x in re.findall(r"skmem:\(r(\d+)", open(f"{d}/ss_b.txt").read())]
    if queued:
        queued.sort()
        print(f"node B's VXLAN receive queue: {len(queued)} samples, empty in "
              f"{sum(1 for x in queued if x == 0)}, p90 {queued[int(len(queued) * 0.9)] / 1e6:.1f} MB, "
              f"max {queued[-1] / 1e6:.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: latency_split.py <output dir of bench/latency-split.sh>")
    main(sys.argv[1])
