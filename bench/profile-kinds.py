#!/usr/bin/env python3
"""CPU-seconds per GB by kind of work, from `vxmesh-bench profile` output directories.

Usage: bench/profile-kinds.py DIR[:MODE] [DIR[:MODE] ...]

Each DIR is a `vxmesh-bench profile --out DIR` directory; MODE (default: the one
`<mode>.perf.data` in it) names the profile to read. Every `cpu-clock` sample of the
whole machine is sorted by its symbol into a kind (first matching pattern below wins),
its period (ns of CPU) summed per kind and divided by the GB moved during the profile,
which `<mode>-summary.txt` states ("about N GB moved"). Needs `perf` (the same that
recorded the profile) and python3. The kinds are coarse by design: a symbol's name says
what kind of work it is, not which packet caused it.
"""

import collections
import glob
import os
import re
import subprocess
import sys

IDLE = "idle"
PROFILING = "profiling (perf's own tracepoints)"
# (kind, pattern over the symbol name); the first match wins.
KINDS = [
    (IDLE, r"pv_native_safe_halt|default_idle|cpuidle|do_idle"),
    (PROFILING, r"^perf_|syscall_trace_enter|trace_|__traceiter"),
    (
        "copies",
        r"copy_to_iter|copy_from_iter|copy_user|rep_movs|__check_object_size|memcpy|memmove"
        r"|csum_partial_copy",
    ),
    (
        "scheduling (switches, yields, wake-up bookkeeping)",
        r"finish_task_switch|__schedule|schedule|pick_next|pick_task|do_sched_yield"
        r"|enqueue_task|dequeue_task|update_curr|try_to_wake_up|ttwu|select_task_rq"
        r"|set_next_entity|put_prev|update_load_avg|switch_mm|__switch_to|yield|reweight"
        r"|place_entity|sched_|native_sched_clock|psi_",
    ),
    (
        "system call entry/exit",
        r"do_syscall_64|entry_SYSCALL|syscall_exit|exit_to_user_mode|syscall_return"
        r"|__x64_sys|fdget|fput",
    ),
    ("poll", r"poll"),
    ("interrupts re-enabled (wake-ups' IPIs land here)", r"_raw_spin_unlock_irqrestore|_raw_spin_unlock_irq$"),
]
OTHER = "the rest: network stack, forwarding, bridge, veth, tun, netfilter, user code"
LINE = re.compile(r"\s*(\d+)\s+\[(.)\]\s+(.*)")


def kind(sym: str) -> str:
    for name, pattern in KINDS:
        if re.search(pattern, sym):
            return name
    return OTHER


def profile(arg: str):
    d, _, mode = arg.partition(":")
    if not mode:
        found = glob.glob(os.path.join(d, "*.perf.data"))
        if len(found) != 1:
            sys.exit(f"{d}: name the mode (DIR:MODE); found {len(found)} perf.data files")
        mode = os.path.basename(found[0])[: -len(".perf.data")]
    summary = open(os.path.join(d, f"{mode}-summary.txt")).read()
    m = re.search(r"about ([0-9.]+) GB moved", summary)
    if not m:
        sys.exit(f"{d}: no 'about N GB moved' in {mode}-summary.txt")
    gb = float(m.group(1))
    out = subprocess.run(
        ["perf", "report", "-i", os.path.join(d, f"{mode}.perf.data"), "--no-children",
         "--sort", "sym", "--stdio", "-F", "period,sym"],
        capture_output=True, text=True, check=True,
    ).stdout
    per = collections.Counter()
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        if m:
            per[kind(m.group(3).strip())] += int(m.group(1))
    return mode, gb, {k: v / 1e9 / gb for k, v in per.items()}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = [profile(a) for a in sys.argv[1:]]
    busy_kinds = [OTHER] + [k for k, _ in KINDS if k not in (IDLE, PROFILING)]
    print("| CPU-s per GB | " + " | ".join(f"{m} ({gb:.1f} GB)" for m, gb, _ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for k in busy_kinds:
        print(f"| {k} | " + " | ".join(f"{r.get(k, 0):.3f}" for _, _, r in runs) + " |")
    busy = [sum(r.get(k, 0) for k in busy_kinds) for _, _, r in runs]
    print("| **busy, all of the above** | " + " | ".join(f"**{b:.3f}**" for b in busy) + " |")
    for k in [PROFILING, IDLE]:
        print(f"| {k}, left out | " + " | ".join(f"{r.get(k, 0):.3f}" for _, _, r in runs) + " |")


if __name__ == "__main__":
    main()
