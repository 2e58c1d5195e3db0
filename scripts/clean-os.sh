#!/usr/bin/env bash
# Proves the README's install step on a clean OS: on a minimal root filesystem of a Debian or
# Ubuntu release made by debootstrap (Debian 12 "bookworm" by default), with nothing added but the
# Rust toolchain (bind-mounted read-only) and a clean clone of one commit, it runs
#   scripts/install-deps.sh                                  (as the README's user does)
#   cargo fetch --locked                                     (crates over the network, with the machine's CA)
#   cargo build --release --locked --workspace --bins
#   scripts/demo.sh, then scripts/lab.sh down                (the README's first command, in a private
#                                                             network namespace)
#   cargo test --workspace --locked                          (offline, in a private network namespace;
#                                                             tests that need root or etcd are #[ignore]d)
# and prints what it proved and how long each step took. scripts/test.sh runs it as a stage, once
# per release it proves (VXMESH_CLEAN_OS_SUITES there).
#
# Usage (as root):  scripts/clean-os.sh [REV]     REV: the commit to prove (default HEAD); uncommitted
#                                                  changes are never part of the proof (a clean clone)
# The root filesystem is built once per suite and cached in $VXMESH_CLEAN_OS_CACHE/<suite>
# (/var/cache/vxmesh-clean-os/bookworm, ...), with a stamp holding a hash of its inputs (suite,
# mirror, sources, variant, the recipe below); it is rebuilt when they change, or with
# VXMESH_CLEAN_OS_REBUILD=1. Downloaded .deb files are kept in the cache too (apt checks them
# against the freshly downloaded, signed indexes); crates are downloaded anew on every run. Each
# run works on an overlay of the cached rootfs inside private mount and PID namespaces: nothing
# stays mounted or running afterwards, and the cache is not changed.
#
# Suites (VXMESH_CLEAN_OS_SUITE, default bookworm): a Debian one (bookworm, trixie, forky, sid) or
# an Ubuntu one (jammy, noble, and later). When this machine's apt sources serve the suite, its
# mirror and components are used; otherwise Debian's from deb.debian.org (main; -updates and
# -security as a fresh install has them) and Ubuntu's from archive.ubuntu.com (main restricted
# universe multiverse, as Ubuntu's installer enables them; -security from security.ubuntu.com),
# checked with the keys in scripts/keys/ubuntu-archive-keyring.gpg. An Ubuntu release newer than
# this machine's debootstrap scripts is made with the "gutsy" script, which every Ubuntu script
# since 7.10 is a link to.
#
# Knobs: VXMESH_CLEAN_OS_SUITE (bookworm), VXMESH_CLEAN_OS_MIRROR (default: above),
# VXMESH_CLEAN_OS_COMPONENTS (default: above), VXMESH_CLEAN_OS_KEYRING (debootstrap --keyring),
# VXMESH_CLEAN_OS_DEPTH (full: every step above; build: no unit tests, for the second and later
# suites of one run, whose risk is the package list, the build and the demo),
# VXMESH_CLEAN_OS_KEEP=1 (keep the run directory, for a look inside).
set -euo pipefail

SUITE=${VXMESH_CLEAN_OS_SUITE:-bookworm}
CACHE_BASE=${VXMESH_CLEAN_OS_CACHE:-/var/cache/vxmesh-clean-os}
DEPTH=${VXMESH_CLEAN_OS_DEPTH:-full}
VARIANT=minbase # stricter than any installed system: what install-deps.sh needs, it must install
T_START=$SECONDS

log() { echo "clean-os: $*"; }
die() { echo "clean-os: $*" >&2; exit 1; }

# The distribution a suite name belongs to: debian, ubuntu, or nothing (then the mirror must be
# given, or served by this machine's apt sources).
suite_distro() {
  case $1 in
    bookworm | trixie | forky | duke | sid) echo debian ;;
    jammy | noble | oracular | plucky | questing | resolute) echo ubuntu ;;
  esac
}
[[ $SUITE =~ ^[a-z][a-z0-9-]*$ ]] || die "VXMESH_CLEAN_OS_SUITE='$SUITE' is not a suite name (bookworm, trixie, noble, ...)"
case $DEPTH in full | build) ;; *) die "VXMESH_CLEAN_OS_DEPTH='$DEPTH': full or build" ;; esac
DISTRO=$(suite_distro "$SUITE")
CACHE=$CACHE_BASE/$SUITE
# Ubuntu's archive keys, kept in the repository (Debian 12 has no ubuntu-keyring package outside
# backports): scripts/keys/README.md says where they come from.
UBUNTU_KEYRING=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/keys/ubuntu-archive-keyring.gpg

# ---------------------------------------------------------------------------------------------
# The apt sources of this machine, as "URI SUITE COMPONENT..." lines, from one-line .list files
# and deb822 .sources files (only Types: deb, not Enabled: no).
host_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { $1 = ""; sub(/^ /, ""); print }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush(  n, m, u, s, i, j) {
        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
          n = split(uris, u, " "); m = split(suites, s, " ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j], comps
        }
        types = uris = suites = comps = field = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0
                 else if (field == "components") comps = comps " " $0; next }
      { key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val); field = key
        if (key == "types") types = val; else if (key == "uris") uris = val
        else if (key == "suites") suites = val; else if (key == "components") comps = val
        else if (key == "enabled") enabled = val }
      END { flush() }' "$f" | awk '{ $1 = $1; print }'
  done
}

# ---------------------------------------------------------------------------------------------
# The recipe of the cached root filesystem. Its text is part of the stamp: changing it rebuilds.
# $1: target directory. Reads MIRROR SUITE COMPONENTS KEYRING SCRIPT SOURCES_LIST.
build_rootfs() {
  local dir=$1 arch
  arch=$(dpkg --print-architecture) || return 1
  local args=(--variant="$VARIANT" --arch="$arch" --components="${COMPONENTS// /,}")
  [ -z "$KEYRING" ] || args+=(--keyring="$KEYRING")
  debootstrap "${args[@]}" "$SUITE" "$dir" "$MIRROR" ${SCRIPT:+"$SCRIPT"} || return 1
  # The sources a fresh install of this suite has (release, updates, security), as on the host.
  printf '%s\n' "$SOURCES_LIST" >"$dir/etc/apt/sources.list" || return 1
  # No service may start inside: apt's postinst scripts (etcd-server's, say) ask policy-rc.d.
  printf '#!/bin/sh\n# vxmesh clean-os: no service starts inside the chroot\nexit 101\n' >"$dir/usr/sbin/policy-rc.d" &&
    chmod 0755 "$dir/usr/sbin/policy-rc.d" || return 1
  # dpkg without an fsync per file (as Debian's container images have it): this root filesystem
  # is thrown away after each run, and the fsyncs would make install-deps.sh several times slower.
  printf 'force-unsafe-io\n' >"$dir/etc/dpkg/dpkg.cfg.d/vxmesh-clean-os-unsafe-io" || return 1
  # A fresh machine's state: no package lists, no downloaded packages.
  chroot "$dir" apt-get clean || return 1
  rm -rf "$dir"/var/lib/apt/lists/* "$dir/etc/resolv.conf" "$dir/etc/hostname"
}

# ---------------------------------------------------------------------------------------------
# Outside the namespaces: checks, then the same script again in private mount + PID namespaces.
outside() {
  [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mounts)"
  REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local REV=${1:-HEAD} tool rc
  COMMIT=$(git -C "$REPO" rev-parse --verify --quiet "$REV^{commit}") || die "no commit '$REV' in $REPO"
  if [ "$REV" = HEAD ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
    log "note: $REPO has uncommitted changes; they are not part of the proof (a clean clone of ${COMMIT:0:12})"
  fi
  for tool in debootstrap unshare chroot git wget flock; do
    command -v "$tool" >/dev/null && continue
    [ "$tool" = debootstrap ] || [ "$tool" = wget ] || die "missing $tool"
    log "installing debootstrap (scripts/install-deps.sh lists it)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap wget </dev/null >/dev/null ||
      die "could not install debootstrap (apt-get install debootstrap)"
  done
  # The toolchain: the sysroot of the rustc that builds this checkout (rustup's toolchain
  # directory: bin/cargo, bin/rustc and their libraries), mounted read-only inside.
  command -v cargo >/dev/null || die "no Rust toolchain on this machine (cargo not on PATH)"
  SYSROOT=$(cd "$REPO" && rustc --print sysroot) || die "rustc --print sysroot failed"
  if [ ! -x "$SYSROOT/bin/cargo" ] || [ "$SYSROOT" = /usr ]; then
    die "the toolchain at $SYSROOT is not a self-contained one (rustup's); the clean OS gets only a rustup toolchain"
  fi
  # The cache of the first versions of this script held one bookworm rootfs at its top level.
  if [ -d "$CACHE_BASE/rootfs" ] && [ ! -e "$CACHE_BASE/bookworm" ] && grep -q '^suite=bookworm ' "$CACHE_BASE/rootfs.stamp" 2>/dev/null; then
    mkdir -p "$CACHE_BASE/bookworm"
    mv "$CACHE_BASE/rootfs" "$CACHE_BASE/rootfs.stamp" "$CACHE_BASE/bookworm/"
    [ ! -d "$CACHE_BASE/debs" ] || mv "$CACHE_BASE/debs" "$CACHE_BASE/bookworm/"
    rm -f "$CACHE_BASE"/*.log "$CACHE_BASE/lock"
  fi
  if [ "$DISTRO" = ubuntu ] && [ -z "${VXMESH_CLEAN_OS_KEYRING:-}" ] && [ ! -f "$UBUNTU_KEYRING" ]; then
    die "missing $UBUNTU_KEYRING (Ubuntu's archive keys; scripts/keys/README.md)"
  fi
  mkdir -p "$CACHE" /var/tmp
  RUN=$(mktemp -d /var/tmp/vxmesh-clean-os.run.XXXXXX)
  export VXMESH_CLEAN_OS_INNER=1 REPO COMMIT SYSROOT RUN
  rc=0
  unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
    bash "${BASH_SOURCE[0]}" </dev/null || rc=$?
  # The mounts lived only in the private namespace; nothing of the run is mounted here.
  if findmnt -rn -o TARGET | grep -q "^$RUN"; then
    log "warning: something is mounted under $RUN; leaving it"
  elif [ "${VXMESH_CLEAN_OS_KEEP:-0}" = 1 ]; then
    log "kept $RUN (VXMESH_CLEAN_OS_KEEP=1)"
  else
    rm -rf --one-file-system "$RUN"
  fi
  log "total $((SECONDS - T_START)) s; $([ "$rc" = 0 ] && echo PASSED || echo "FAILED (exit $rc)")"
  exit "$rc"
}

# Helpers of the inside part.
STEPS=()
ENV_IN=()
step_done() { STEPS+=("$(printf '%-58s %5d s  %s' "$1" "$2" "$3")"); }
# shellcheck disable=SC2317 # run by the EXIT trap
summary() {
  echo
  echo "=== clean-os: what was proved (${COMMIT:0:12}) ==="
  [ ${#STEPS[@]} -gt 0 ] || STEPS=("nothing: it stopped before the first step")
  printf '  %s\n' "${STEPS[@]}"
}
PATH_IN=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Runs a command line in the chroot, from the clone, with a clean environment and no stdin.
in_root() {
  env -i HOME=/root USER=root LOGNAME=root PATH="$PATH_IN" TERM=dumb LANG=C.UTF-8 CI=true \
    CARGO_HOME=/root/.cargo CARGO_TERM_COLOR=never "${ENV_IN[@]}" \
    chroot "$ROOT" /bin/bash -c "cd /root/vxmesh && $1" </dev/null
}
# Processes still running in the chroot after a step: listed, killed; an error after the build steps.
leftovers() {
  local p names=""
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] || continue
    names+=" $(cat "$p/comm" 2>/dev/null)(${p#/proc/})"
    kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
  [ -z "$names" ] || { log "left running in the chroot after '$1', killed:$names"; return 1; }
}
# One timed step; its output goes to a log, the tail of which is shown on failure.
step() {
  local name=$1 cmd=$2 logf t0 rc=0
  logf="$RUN/logs/$(tr -c 'a-z0-9\n' '-' <<<"${name%% (*}" | cut -c1-40).log"
  echo "--- $name"
  t0=$SECONDS
  in_root "$cmd" >"$logf" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    step_done "FAILED: $name" $((SECONDS - t0)) "exit $rc"
    echo "--- last lines of $name (exit $rc):"
    tail -n 40 "$logf"
    cp "$RUN"/logs/*.log "$CACHE/" 2>/dev/null || true
    die "'$name' failed on a clean $SUITE; the logs of this run: $CACHE/*.log"
  fi
  STEP_LOG=$logf
  STEP_SECONDS=$((SECONDS - t0))
}

# ---------------------------------------------------------------------------------------------
# Inside private mount and PID namespaces (this script is PID 1 of its namespace: when it
# exits, the kernel ends every process started inside).
inside() {
  trap summary EXIT

  # The mirror and the sources a fresh install would have: this machine's apt sources when they
  # serve the suite, else the distribution's own archive.
  SOURCES=$(host_sources)
  MIRROR=${VXMESH_CLEAN_OS_MIRROR:-$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$SOURCES")}
  MIRROR_FROM="this machine's apt sources' mirror for '$SUITE'"
  [ -z "${VXMESH_CLEAN_OS_MIRROR:-}" ] || MIRROR_FROM="VXMESH_CLEAN_OS_MIRROR"
  # The distribution's own archive, when this machine's apt sources do not serve the suite: its
  # mirror, the components its installer enables, and its security archive (none for sid).
  BUILTIN=0 SECURITY=
  if [ -z "$MIRROR" ]; then
    BUILTIN=1
    case $DISTRO/$SUITE in
      debian/sid) MIRROR=http://deb.debian.org/debian COMPONENTS=main ;;
      debian/*) MIRROR=http://deb.debian.org/debian COMPONENTS=main SECURITY=http://deb.debian.org/debian-security ;;
      ubuntu/*) MIRROR=http://archive.ubuntu.com/ubuntu COMPONENTS="main restricted universe multiverse" SECURITY=http://security.ubuntu.com/ubuntu ;;
      *) die "no apt source for '$SUITE' in /etc/apt/sources.list{,.d}, and '$SUITE' is not a Debian or Ubuntu suite this script knows; set VXMESH_CLEAN_OS_MIRROR" ;;
    esac
    COMPONENTS=${VXMESH_CLEAN_OS_COMPONENTS:-$COMPONENTS}
    MIRROR_FROM="$DISTRO's archive ($MIRROR; this machine's apt sources have no '$SUITE')"
  fi
  MIRROR=${MIRROR%/}
  if [ "$BUILTIN" = 0 ]; then
    COMPONENTS=${VXMESH_CLEAN_OS_COMPONENTS:-$(awk -v s="$SUITE" -v m="$MIRROR" \
      '($1 == m || $1 == m "/") && $2 == s { $1 = $2 = ""; print; exit }' <<<"$SOURCES" | xargs)}
    COMPONENTS=${COMPONENTS:-main}
  fi
  KEYRING=${VXMESH_CLEAN_OS_KEYRING:-}
  [ -n "$KEYRING" ] || [ "$DISTRO" != ubuntu ] || KEYRING=$UBUNTU_KEYRING
  [ -z "$KEYRING" ] || [ -r "$KEYRING" ] || die "the keyring '$KEYRING' (VXMESH_CLEAN_OS_KEYRING) is not a readable file"
  # debootstrap knows the releases it was packaged with; a newer one uses the script of its
  # distribution's development branch (Debian: sid; Ubuntu: gutsy, which all of Ubuntu's are).
  SCRIPT=
  if [ ! -e "/usr/share/debootstrap/scripts/$SUITE" ]; then
    case $DISTRO in
      debian) SCRIPT=/usr/share/debootstrap/scripts/sid ;;
      ubuntu) SCRIPT=/usr/share/debootstrap/scripts/gutsy ;;
    esac
  fi
  if [ -n "${VXMESH_CLEAN_OS_MIRROR:-}" ]; then
    SOURCES_LIST="deb $MIRROR $SUITE $COMPONENTS"
  elif [ "$BUILTIN" = 1 ]; then
    # As the distribution's installer writes them: the release, its updates, its security archive.
    SOURCES_LIST="deb $MIRROR $SUITE $COMPONENTS"
    [ -z "$SECURITY" ] ||
      SOURCES_LIST+=$'\n'"deb $MIRROR $SUITE-updates $COMPONENTS"$'\n'"deb $SECURITY $SUITE-security $COMPONENTS"
  else
    SOURCES_LIST=$(awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" { print "deb " $0 }' <<<"$SOURCES")
  fi

  INPUTS="suite=$SUITE variant=$VARIANT arch=$(dpkg --print-architecture) mirror=$MIRROR
components=$COMPONENTS keyring=${KEYRING:+$(sha256sum <"$KEYRING" | cut -c1-16)} script=$SCRIPT
$SOURCES_LIST
$(declare -f build_rootfs)"
  HASH=$(sha256sum <<<"$INPUTS" | cut -c1-16)

  # The cached rootfs: exclusive lock to check or rebuild it, then shared while this run uses it.
  exec 9>"$CACHE/lock"
  flock -w 3600 9 || die "timed out waiting for $CACHE/lock"
  t0=$SECONDS
  if [ "${VXMESH_CLEAN_OS_REBUILD:-0}" = 1 ] || [ ! -d "$CACHE/rootfs" ] ||
     [ "$(head -1 "$CACHE/rootfs.stamp" 2>/dev/null)" != "$HASH" ]; then
    log "building the $SUITE rootfs ($VARIANT) from $MIRROR into $CACHE/rootfs (inputs $HASH)"
    wget -q --tries=1 --timeout=30 -O /dev/null "$MIRROR/dists/$SUITE/Release" ||
      die "cannot reach the mirror ($MIRROR_FROM): $MIRROR/dists/$SUITE/Release (wget exit $?);
  check the network and the apt sources, or set VXMESH_CLEAN_OS_MIRROR."
    rm -rf --one-file-system "$CACHE/rootfs.new"
    if ! build_rootfs "$CACHE/rootfs.new" >"$CACHE/debootstrap.log" 2>&1; then
      tail -n 25 "$CACHE/debootstrap.log" >&2
      die "debootstrap of $SUITE from $MIRROR failed; full log: $CACHE/debootstrap.log"
    fi
    rm -rf --one-file-system "$CACHE/rootfs"
    mv "$CACHE/rootfs.new" "$CACHE/rootfs"
    printf '%s\n%s\n' "$HASH" "$INPUTS" >"$CACHE/rootfs.stamp"
    step_done "debootstrap $SUITE $VARIANT (cold: cache rebuilt)" $((SECONDS - t0)) "$(du -sh "$CACHE/rootfs" | cut -f1), $(chroot "$CACHE/rootfs" dpkg-query -W | wc -l) packages"
  else
    step_done "debootstrap $SUITE $VARIANT (warm: cached)" $((SECONDS - t0)) "built $(date -r "$CACHE/rootfs.stamp" '+%F %R'), inputs $HASH"
  fi
  flock -s 9

  # A fresh copy of it for this run: an overlay (the cache stays untouched), else a copy.
  ROOT=$RUN/root
  mkdir -p "$RUN/upper" "$RUN/work" "$ROOT" "$RUN/logs" "$CACHE/debs"
  if ! mount -t overlay overlay -o "lowerdir=$CACHE/rootfs,upperdir=$RUN/upper,workdir=$RUN/work" "$ROOT" 2>/dev/null; then
    log "no overlayfs here; copying the rootfs"
    cp -a "$CACHE/rootfs/." "$ROOT/"
  fi
  mount -t proc proc "$ROOT/proc"
  # The host's /sys with its cgroup mounts (podman and runc in the demo step need them), and the
  # running kernel's modules where the host has them (an installed system has its own).
  mount --rbind /sys "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"
  if [ -d "/lib/modules/$(uname -r)" ]; then
    mkdir -p "$ROOT/lib/modules/$(uname -r)"
    mount --bind "/lib/modules/$(uname -r)" "$ROOT/lib/modules/$(uname -r)"
    mount -o remount,bind,ro "$ROOT/lib/modules/$(uname -r)"
  fi
  mkdir -p "$ROOT/opt/rust"
  mount --bind "$SYSROOT" "$ROOT/opt/rust"
  mount -o remount,bind,ro "$ROOT/opt/rust"
  mount --bind "$CACHE/debs" "$ROOT/var/cache/apt/archives"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

  # The machine's TLS trust: every CA file (or directory) that the environment names is copied
  # in, and the same variables name the copies inside.
  mkdir -p "$ROOT/etc/vxmesh-clean-os/ca"
  ca_vars=$(compgen -e | grep -E '^(SSL_CERT_FILE|SSL_CERT_DIR|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|CARGO_HTTP_CAINFO|GIT_SSL_CAINFO|NODE_EXTRA_CA_CERTS|PIP_CERT)$|CA_BUNDLE|CA_CERTS|CAINFO' || true)
  first_ca=
  for v in $ca_vars; do
    src=${!v}
    name=$(sha256sum <<<"$src" | cut -c1-12)
    if [ -f "$src" ]; then
      [ -f "$ROOT/etc/vxmesh-clean-os/ca/$name.pem" ] || cp -L "$src" "$ROOT/etc/vxmesh-clean-os/ca/$name.pem"
      ENV_IN+=("$v=/etc/vxmesh-clean-os/ca/$name.pem")
      first_ca=${first_ca:-/etc/vxmesh-clean-os/ca/$name.pem}
    elif [ -d "$src" ]; then
      [ -d "$ROOT/etc/vxmesh-clean-os/ca/$name" ] || cp -rL "$src" "$ROOT/etc/vxmesh-clean-os/ca/$name" 2>/dev/null || true
      ENV_IN+=("$v=/etc/vxmesh-clean-os/ca/$name")
    fi
  done
  # apt does not read those variables; for an https mirror, tell it directly.
  if [ -n "$first_ca" ]; then
    printf 'Acquire::https::CaInfo "%s";\n' "$first_ca" >"$ROOT/etc/apt/apt.conf.d/99vxmesh-clean-os-ca"
  fi
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!v:-}" ] || ENV_IN+=("$v=${!v}")
  done
  # cargo's own configuration of this machine (a registry mirror, say), when there is one.
  host_cargo_home=${CARGO_HOME:-$HOME/.cargo}
  mkdir -p "$ROOT/root/.cargo"
  for f in config.toml config; do
    [ ! -f "$host_cargo_home/$f" ] || cp "$host_cargo_home/$f" "$ROOT/root/.cargo/$f"
  done

  # The clean clone of the commit to prove.
  git clone --quiet --no-hardlinks --no-checkout "$REPO" "$ROOT/root/vxmesh"
  git -C "$ROOT/root/vxmesh" checkout --quiet --detach "$COMMIT"


  OS=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/etc/os-release")
  log "proving ${COMMIT:0:12} on $OS (rootfs $HASH), toolchain $("$SYSROOT/bin/rustc" --version)"
  before=$(chroot "$ROOT" dpkg-query -W | wc -l)
  step "scripts/install-deps.sh" "./scripts/install-deps.sh"
  leftovers "install-deps.sh" || true # policy-rc.d should have kept them from starting
  step_done "scripts/install-deps.sh" "$STEP_SECONDS" "$(($(chroot "$ROOT" dpkg-query -W | wc -l) - before)) packages installed; $(tail -n 1 "$STEP_LOG")"

  # shellcheck disable=SC2016 # expanded inside the chroot
  step "cargo fetch --locked" 'cargo fetch --locked --target "$(rustc -vV | sed -n "s/^host: //p")"'
  step_done "cargo fetch --locked (https, the machine's CA)" "$STEP_SECONDS" "$(find "$ROOT/root/.cargo/registry/cache" -name '*.crate' | wc -l) crates downloaded"

  step "cargo build --release --locked --workspace --bins" "cargo build --release --locked --workspace --bins"
  leftovers "cargo build"
  bins=$(find "$ROOT/root/vxmesh/target/release" -maxdepth 1 -type f -executable -printf '%f ' | xargs)
  step_done "cargo build --release --locked --workspace --bins" "$STEP_SECONDS" "$bins"

  # The README's first command as a new user runs it: the demo cluster (etcd, three agents, pods
  # through the CNI plugin, iperf3, a podman container), then its teardown. In a network
  # namespace of its own, so the lab's links cannot meet the host's; its namespaces are named in
  # this run's own /run, which no other run sees. demo.sh's build finds nothing to do.
  lab=cos
  step "scripts/demo.sh" "unshare --net sh -c 'ip link set lo up && VXLAB_PREFIX=$lab ./scripts/demo.sh; rc=\$?; VXLAB_PREFIX=$lab ./scripts/lab.sh down >/dev/null 2>&1 || rc=1; exit \$rc'"
  leftovers "scripts/demo.sh and lab.sh down"
  step_done "scripts/demo.sh (the README's first command), lab.sh down" "$STEP_SECONDS" \
    "$(grep -o 'cross-node pod pairs: [^;]*' "$STEP_LOG" | head -1); $(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$STEP_LOG" | tail -1); $(grep -o 'podman: the container reached every other node.s pod' "$STEP_LOG" | head -1)"

  if [ "$DEPTH" = build ]; then
    step_done "cargo test: not run (VXMESH_CLEAN_OS_DEPTH=build)" 0 "-"
  else
    # Offline, in a network namespace of its own with only loopback: the tests that start etcd
    # use loopback addresses that nothing on the host can collide with.
    step "cargo test --workspace --locked --offline" \
      "unshare --net sh -c 'ip link set lo up && cargo test --workspace --locked --offline --no-fail-fast'"
    leftovers "cargo test"
    totals=$(awk '/^test result: / { p += $4; f += $6; i += $8 }
                  END { printf "%d passed, %d failed, %d ignored", p, f, i }' "$STEP_LOG")
    step_done "cargo test --workspace --locked (no root-only tests)" "$STEP_SECONDS" "$totals"
  fi
  cp "$RUN"/logs/*.log "$CACHE/" 2>/dev/null || true
  log "logs of this run: $CACHE/*.log"
}

# One line, ending in exit: bash reads a script as it runs it, and nothing after this line may be
# read once a run has started (an edit of this file during a run cannot change that run's end).
if [ "${VXMESH_CLEAN_OS_INNER:-0}" = 1 ]; then inside; else outside "$@"; fi; exit $?
