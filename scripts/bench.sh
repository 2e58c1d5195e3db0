#!/usr/bin/env bash
# vxmesh benchmark (issue 4): no overlay vs kernel VXLAN (flannel's recipe) vs vxmesh (each also
# with vxmeshd's default --ip-masq rules: kernel-masq, vxmesh-masq),
# each on the same freshly built 2-node network-namespace topology. See docs/benchmarks.md.
#
#   sudo scripts/bench.sh                  full run: 3 repeats, 10 s tests (about 10 minutes)
#   sudo scripts/bench.sh --quick          smoke run (about 2 minutes)
#   sudo scripts/bench.sh --update-docs    full run, then refresh docs/benchmarks.md + docs/img/bench-latest.png
#   sudo scripts/bench.sh profile          perf profile (kernel VXLAN and vxmesh) under iperf3 load
#   sudo scripts/bench.sh cleanup          remove namespaces left by a run that was killed
#   sudo scripts/bench.sh --help           every flag (repeats, durations, modes, output dir, ...)
#
# It first builds the release binaries (vxmeshd, vxmeshctl, vxmesh-bench) in target/release
# with `cargo build --release` -- as the invoking user when started through sudo -- then runs
# target/release/vxmesh-bench, which uses the vxmeshd/vxmeshctl next to it.
# Output: bench/results/<UTC timestamp>/ (gitignored): results.json, results.md, chart.png,
# raw/ (iperf3 JSON, ping output), logs/ (etcd, vxmeshd, iperf3 servers).
#
# Environment: VXMESH_BENCH_NO_BUILD=1 skips the build (use what target/release holds).
# Needs: root, iproute2, iperf3, iputils ping, etcd + etcdctl, python3-matplotlib for the
# chart (optional), linux-perf for `profile`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release"

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: needs root for network namespaces; run: sudo $0 $*" >&2
  exit 1
fi

build() {
  local cmd=(env CARGO_TARGET_DIR="$ROOT/target" cargo build --release -p vxmesh-control -p vxmesh-bench --bins)
  echo "bench.sh: ${cmd[*]}" >&2
  if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    # Build as the user who ran sudo, so target/ does not fill with root-owned files.
    sudo -u "$SUDO_USER" -H bash -lc 'cd "$1" && shift && "$@"' bash "$ROOT" "${cmd[@]}"
  else
    (cd "$ROOT" && "${cmd[@]}")
  fi
}

if [ "${VXMESH_BENCH_NO_BUILD:-0}" != 1 ]; then
  build
fi
for b in vxmesh-bench vxmeshd vxmeshctl; do
  [ -x "$BIN/$b" ] || { echo "bench.sh: $BIN/$b is missing (build failed?)" >&2; exit 1; }
done
exec "$BIN/vxmesh-bench" "$@"
