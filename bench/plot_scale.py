#!/usr/bin/python3
"""Draws the scale harness's chart from scale.json (written by vxmesh-bench scale).

Usage: plot_scale.py scale.json scale.png

One panel per metric against the number of nodes, one line per label (e.g. the
binaries before and after a change), with the issue's targets as dashed lines where
one applies. Needs matplotlib (Debian: python3-matplotlib).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def get(run, path):
    v = run
    for p in path:
        if v is None:
            return None
        v = v.get(p) if isinstance(v, dict) else None
    return v


def per_second(run, key):
    w = get(run, ["start", "etcd_window_s"]) or 0
    v = get(run, ["start", "etcd", key])
    return v / w if v is not None and w > 0 else None


PANELS = [
    ("every route, after the last start (s)", lambda r: get(r, ["start", "converged_s"]),
     lambda n: 30.0 if n >= 1000 else None),
    ("join: on every node after its lease (s)", lambda r: get(r, ["join_s", "max"]), lambda n: 1.0),
    ("removal: gone from every node (s)", lambda r: get(r, ["remove_s", "max"]), None),
    ("restart storm: every route (s)", lambda r: get(r, ["storm", "converged_s"]), None),
    ("agent RSS, max (MiB)", lambda r: (get(r, ["agent_rss_kib", "max"]) or 0) / 1024 or None,
     lambda n: 10 + n / 1024),
    ("agent CPU to converge, max (s)", lambda r: get(r, ["agent_cpu_s", "max"]),
     lambda n: n / 1000.0),
    ("agent CPU per peer, median (ms)", lambda r: get(r, ["agent_cpu_ms_per_peer", "median"]), lambda n: 1.0),
    ("etcd requests / s (start-up)", lambda r: per_second(r, "requests"), None),
    ("etcd watch events / s (start-up)", lambda r: per_second(r, "watch_events"), None),
    ("etcd range requests (start-up)", lambda r: get(r, ["start", "etcd", "ranges"]), None),
]


def main(src, dst):
    with open(src) as f:
        res = json.load(f)
    runs = [r for r in res["runs"]]
    if not runs:
        print("plot_scale.py: no run", file=sys.stderr)
        return 1
    labels = []
    for r in runs:
        key = f'{r["label"]} ({r["dataplane"]})'
        if key not in labels:
            labels.append(key)
    cols = 5
    rows = (len(PANELS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.4 * rows + 0.8), squeeze=False)
    for ax in axes.flat[len(PANELS):]:
        ax.axis("off")
    for ax, (title, value, target) in zip(axes.flat, PANELS):
        for key in labels:
            pts = sorted(
                (r["nodes"], value(r))
                for r in runs
                if f'{r["label"]} ({r["dataplane"]})' == key and value(r) is not None
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        if target:
            ns = sorted({r["nodes"] for r in runs})
            tp = [(n, target(n)) for n in ns if target(n) is not None]
            if tp:
                ax.plot([p[0] for p in tp], [p[1] for p in tp], "k--", linewidth=0.8, label="target")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("nodes", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles, names = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:len(PANELS)]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8)
    fig.suptitle("vxmesh at scale: N nodes (network namespaces) on one machine, 3-member etcd", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(dst, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
