#!/usr/bin/env bash
# The test command (what .ci/run runs): installs what the tests need, then runs
# lint, the unit and property tests, the etcd integration tests (each starts its
# own etcd on loopback), and the privileged end-to-end tests in network namespaces
# (root), then the Vagrant checks and, where it can run, the real Vagrant lab.
#
# Knobs: VXMESH_SKIP_VAGRANT=1 skips the real VM lab (validation still runs);
# VXMESH_SKIP_FUZZ=1 skips the fuzz smoke; VXMESH_FUZZ_SECONDS (10) per fuzz target;
# VXMESH_SKIP_CLEAN_OS=1 skips the clean-OS stages (scripts/clean-os.sh: the README's install
# step, a --locked build and the demo on a fresh OS; CI runs them); VXMESH_CLEAN_OS_SUITES
# ("bookworm trixie noble": Debian 12, Debian 13, Ubuntu 24.04) the releases they prove, the
# first with the unit tests too.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

declare -a RESULTS=()
pass=0; fail=0
# stage NAME COMMAND...: runs a stage; exit 0 passes, anything else fails — except exit 77
# of a stage run as `MAY_SKIP=1 stage ...`: the machine cannot run it (reported as SKIP, not
# counted).
stage() {
  local name=$1; shift
  local t0=$SECONDS rc=0 may_skip=${MAY_SKIP:-0}
  echo; echo "=== $name ==="
  "$@" || rc=$?
  if [ "$rc" = 0 ]; then
    RESULTS+=("PASS  $name ($((SECONDS - t0))s)"); pass=$((pass + 1))
  elif [ "$rc" = 77 ] && [ "$may_skip" = 1 ]; then
    RESULTS+=("SKIP  $name: cannot run here (exit 77)")
  else
    RESULTS+=("FAIL  $name ($((SECONDS - t0))s)"); fail=$((fail + 1))
  fi
}

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root: the end-to-end tests create network namespaces, TAP devices and containers" >&2
  exit 1
fi
# A full run builds debug, release, fuzz and clean-OS targets: about 20 GiB. Say so up
# front instead of failing mid-build with "No space left on device" or a linker Bus error.
need_gib=${VXMESH_MIN_FREE_GIB:-20}
free_gib=$(df --output=avail -BG . | tail -1 | tr -dc 0-9)
if [ "${free_gib:-0}" -lt "$need_gib" ]; then
  echo "test.sh: only ${free_gib} GiB free on $(df --output=target . | tail -1); a full run needs about ${need_gib} GiB (build targets). Free space (e.g. cargo clean in other checkouts) or set VXMESH_MIN_FREE_GIB." >&2
  exit 1
fi
./scripts/install-deps.sh || exit 1
# First: what a new user's machine does with the package list and Cargo.lock of this commit.
if [ "${VXMESH_SKIP_CLEAN_OS:-0}" != 1 ]; then
  depth=full
  for suite in ${VXMESH_CLEAN_OS_SUITES:-bookworm trixie noble}; do
    if [ "$depth" = full ]; then what="install-deps, --locked build, demo, unit tests"; else what="install-deps, --locked build, demo"; fi
    stage "clean OS ($suite): $what" env VXMESH_CLEAN_OS_SUITE="$suite" VXMESH_CLEAN_OS_DEPTH=$depth ./scripts/clean-os.sh
    depth=build
  done
fi
export CARGO_TERM_COLOR=never

stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
stage "shellcheck" shellcheck -x scripts/*.sh scripts/lib/*.sh vagrant/*.sh bench/*.sh .ci/run
stage "monitoring: dashboard JSON, alert rules (promtool, from Debian's package when not installed)" scripts/check-monitoring.sh
# Manifests list only what the code uses: cargo-shear reads every target's imports and
# fails on a dependency nothing imports (workspace.dependencies included) and on one only
# tests use outside [dev-dependencies]. Pinned: later releases need a newer rustc.
unused_deps() {
  command -v cargo-shear >/dev/null || cargo install --locked cargo-shear@1.13.1 || return 1
  local dir rc=0
  for dir in . dataplane/fuzz control/fuzz cni-shim/fuzz; do
    echo "cargo shear: $dir"
    cargo shear --locked --color never "$dir" || rc=1
  done
  return "$rc"
}
stage "unused dependencies (cargo shear)" unused_deps
stage "build release binaries" cargo build --release --workspace --bins
export VXMESH_BIN_DIR=$PWD/target/release
# cargo test, with one total over every test binary at the end. Tests that need root,
# network namespaces or etcd are #[ignore]d, so a plain `cargo test` lists what it did not
# run; here (root, dependencies installed) every one runs, and one that misses what it
# needs fails instead of passing.
cargo_tests() {
  local log rc
  log=$(mktemp)
  cargo test --workspace --no-fail-fast -- --include-ignored 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  awk '/^test result:/ { p += $4; f += $6; i += $8 }
       END { printf "cargo test total: %d passed, %d failed, %d ignored\n", p, f, i }' "$log"
  rm -f "$log"
  return "$rc"
}
stage "cargo test (unit, property, etcd, netns e2e, CNI, podman)" cargo_tests
# Issue 16: 2,000 nodes simulated in one process (pure cores, in-memory registry; a few
# seconds; the full run is `vxmesh-bench sim --nodes 5000`, 38 s), and the scale harness at a small N (30 node
# namespaces with agents against 3 etcd members, about 80 s). docs/scale.md.
stage "scale simulation (2000 nodes)" target/release/vxmesh-bench sim --nodes 2000 --check
stage "scale harness (30 nodes)" target/release/vxmesh-bench scale --nodes 30 --no-chart --check

# Every fuzz target for a few seconds (cargo-fuzz on the stable toolchain through
# RUSTC_BOOTSTRAP): the parsers of packets, etcd values and configs stay crash-free.
fuzz_smoke() {
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz || return 1
  local dir t rc=0
  local corpus fuzz_log
  fuzz_log=$(mktemp)
  for dir in dataplane/fuzz control/fuzz cni-shim/fuzz; do
    # Every target of the crate in one build first: cargo links them in parallel,
    # where one `cargo fuzz run` at a time built and linked them one by one (the
    # stage took 1,515 s, 200 of them fuzzing; about 700 s this way).
    echo "fuzz: building $dir"
    if ! (cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz build >"$fuzz_log" 2>&1); then
      tail -n 40 "$fuzz_log"
      echo "fuzz: building the targets of $dir failed (above)"
      rc=1
      continue
    fi
    for t in $(cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
      echo "fuzz: $dir $t"
      # A target's committed seeds (valid inputs to start from), when it has any.
      corpus=()
      if [ -d "$dir/seeds/$t" ]; then
        mkdir -p "$dir/corpus/$t"
        corpus=("corpus/$t" "seeds/$t")
      fi
      (cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "${corpus[@]}" -- -max_total_time="${VXMESH_FUZZ_SECONDS:-10}" 2>&1 | grep -aE "^Done|ERROR|panicked|SUMMARY") || rc=1
      [ -z "$(ls -A "$dir/artifacts/$t" 2>/dev/null)" ] || { echo "fuzz: $t left a crash in $dir/artifacts/$t"; rc=1; }
    done
  done
  rm -f "$fuzz_log"
  return "$rc"
}
if [ "${VXMESH_SKIP_FUZZ:-0}" != 1 ]; then
  stage "fuzz smoke (every target, ${VXMESH_FUZZ_SECONDS:-10} s each)" fuzz_smoke
fi
if [ -x vagrant/check.sh ]; then
  stage "vagrant validate, shellcheck, systemd-analyze" vagrant/check.sh
fi
# The real Vagrant lab (libvirt + QEMU in an isolated namespace, ../shared/tools/vagrant-box).
# Exit 77 means this machine cannot run it at all; that is reported, not counted as a failure.
vagrant_lab() {
  vagrant/e2e.sh
  local rc=$?
  if [ "$rc" = 77 ]; then
    echo "test.sh: the Vagrant lab cannot run on this machine (see the line above); not counted"
  fi
  return "$rc"
}
if [ -x vagrant/e2e.sh ] && [ "${VXMESH_SKIP_VAGRANT:-0}" != 1 ]; then
  MAY_SKIP=1 stage "vagrant lab (real VMs)" vagrant_lab
fi

echo; echo "=== summary ==="
printf '%s\n' "${RESULTS[@]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
