#!/usr/bin/python3
"""Draws the benchmark chart from results.json (written by vxmesh-bench).

Usage: plot.py results.json chart.png

One panel per metric, one bar per mode (median, whiskers min..max over repeats),
each bar labelled with its value and, for the modes other than kernel VXLAN, its
ratio to kernel VXLAN from the same run. Needs matplotlib (Debian:
python3-matplotlib); the harness runs it with /usr/bin/python3 when present.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHART_METRICS = [
    "tcp1_ab_gbps",
    "tcp1_ba_gbps",
    "tcp8_ab_gbps",
    "tcp8_ba_gbps",
    "rtt_median_us",
    "rtt_p99_us",
    "rtt_loaded_p99_us",
    "udp64_kpps",
    "cpu_machine_s_per_gb",
]
LABELS = {"no_overlay": "no overlay", "kernel_vxlan": "kernel VXLAN", "vxmesh": "vxmesh",
          "kernel_vxlan_masq": "kernel VXLAN\n+ masq", "vxmesh_masq": "vxmesh\n+ masq"}
COLORS = {"no_overlay": "#9e9e9e", "kernel_vxlan": "#1f77b4", "vxmesh": "#ff7f0e",
          "kernel_vxlan_masq": "#6baed6", "vxmesh_masq": "#fdae6b"}
# Ratios of the + masq modes are to kernel VXLAN + masq (the same rules on both).
BASE = {"vxmesh_masq": "kernel + masq", "kernel_vxlan_masq": "kernel"}


def fmt(v):
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main(src, dst):
    with open(src) as f:
        res = json.load(f)
    modes = [m for m in res["settings"]["modes"]]
    rows = {r["key"]: r for r in res["summary"]}
    keys = [k for k in CHART_METRICS if k in rows]
    if not keys:
        print("plot.py: no metric to draw", file=sys.stderr)
        return 1
    cols = 4
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.9 * nrows + 1.0), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        row = rows[key]
        present = [m for m in modes if m in row["by_mode"]]
        med = [row["by_mode"][m]["median"] for m in present]
        lo = [row["by_mode"][m]["median"] - row["by_mode"][m]["min"] for m in present]
        hi = [row["by_mode"][m]["max"] - row["by_mode"][m]["median"] for m in present]
        x = list(range(len(present)))
        ax.bar(x, med, color=[COLORS.get(m, "#555") for m in present], width=0.65,
               yerr=[lo, hi], capsize=4, ecolor="#333")
        top = max(row["by_mode"][m]["max"] for m in present) or 1.0
        ax.set_ylim(0, top * 1.32)
        for i, m in enumerate(present):
            label = fmt(med[i])
            ratio = row.get("ratio_to_kernel", {}).get(m)
            if ratio is not None:
                label += f"\n{ratio:.2f}× {BASE.get(m, 'kernel')}"
            ax.text(i, row["by_mode"][m]["max"] + top * 0.03, label, ha="center",
                    va="bottom", fontsize=9, fontweight="bold" if m in ("vxmesh", "vxmesh_masq") else "normal")
        agents = rows.get("cpu_agents_s_per_gb")
        if key == "cpu_machine_s_per_gb" and agents:
            for i, m in enumerate(present):
                if m in agents["by_mode"]:
                    ax.bar(i, agents["by_mode"][m]["median"], width=0.65, fill=False,
                           hatch="//", edgecolor="#333", label="of which vxmeshd")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xticks(x)
        ax.set_xticklabels([LABELS.get(m, m) for m in present], fontsize=9)
        better = "higher is better" if row["higher_is_better"] else "lower is better"
        ax.set_title(f"{row['label']}\n{row['unit']}, {better}", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    m = res["machine"]
    st = res["settings"]
    title = (f"vxmesh benchmark {m['date_utc']} — {m['cores']} × {m['cpu_model']}, "
             f"Linux {m['kernel']}, commit {m['git_commit']} — median of {st['repeats']} "
             f"repeat(s), whiskers min–max")
    fig.suptitle(title, fontsize=11)
    targets = res.get("targets", [])
    if targets:
        def met(t):
            return {True: "met", False: "NOT met", None: "–"}[t["met"]]
        line = "   ".join(f"{t['name']}: {t['measured']} ({met(t)})" for t in targets)
        fig.text(0.5, 0.01, "Targets (vxmesh vs kernel VXLAN): " + line, ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(dst, dpi=110)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
