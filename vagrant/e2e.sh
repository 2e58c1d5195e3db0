#!/usr/bin/env bash
# End-to-end test of the Vagrant lab, offline and isolated (CI): real VMs (libvirt + QEMU TCG)
# installed with scripts/install-node.sh and driven through systemd.
#
#   sudo vagrant/e2e.sh
#
# 1. ../shared/tools/vagrant-box: install-deps.sh (skipped when everything is there),
#    build-box.sh with the packages vxmesh needs (skipped when that box exists), lab-netns-up.sh
#    (libvirtd in a network namespace with no path out)
# 2. `vagrant up` of this folder's Vagrantfile with VXMESH_OFFLINE=1: etcd VM + 3 node VMs, a
#    mixed cluster: node1 and node2 on the userspace dataplane, node3 on the kernel dataplane
#    (flannel's vxlan device), NIC offloads at the virtio defaults everywhere (binaries: this
#    tree's target/release, stripped copies)
# 3. pods on every node through the CNI plugin, all-pairs cross-node pod ping, a short iperf3
#    node1 -> node2, and TCP both ways between node1 (userspace) and each kernel-dataplane node;
#    then on node2, each while node1's pod pings node2's pod every 10 ms:
#    `systemctl restart vxmeshd` (new PID, same subnet and TAP, dataplane taken from systemd's
#    descriptor store, pings lost counted), an upgrade to another build (VXMESH_E2E_UPGRADE_BIN,
#    installed, then a restart) and SIGKILL of the agent (systemd restarts it from the store);
#    then the network config turns dual stack (VXMESH_E2E_IPV6=1): every node gets an IPv6
#    address on the private network, vxmeshd restarts into flannel's dual-stack keys with
#    flannel-v6.<VNI> (both dataplanes), one more pod per node gets both families, and every
#    IPv6 pod pair pings; node1 switches to IPv6 in its threads (--ipv6-dataplane userspace,
#    no flannel-v6 there), every IPv6 pair pings, a restart through systemd's store loses no
#    IPv6 ping, and it switches back; then the config turns IPv6-only (VXMESH_E2E_IPV6_ONLY=1): every node
#    restarts through systemd into flannel-v6.<VNI> alone, keeping its IPv6 subnet, one more pod
#    per node gets IPv6 only, every pair of those and of the dual-stack pods pings, and the
#    userspace nodes' IPv6 ingress check dropped none of it;
#    uninstall-node.sh on the last node (nothing left, the TAP and the IPv6 device included)
# 4. summary, timings; the EXIT trap destroys the VMs and stops libvirtd; last line
#    "N passed, N failed"
#
# Exit status: 0 all passed; 1 something failed; 77 this machine cannot run the lab at all
# (not root, no shared vagrant-box tools, packages or box cannot be installed/built, another
# libvirtd owns the socket, no /dev/net/tun in the VMs): the line "VAGRANT LAB CANNOT RUN
# HERE: <why>" says which.
#
# Knobs: VXMESH_E2E_NODES (3), VXMESH_E2E_KERNEL_NODES (node numbers on the kernel dataplane,
# comma-separated; default "3" with 3 or more nodes, "" otherwise), VXMESH_E2E_ETCD_ON_NODE (0: etcd VM; 1: etcd on node1, one VM
# less), VXMESH_E2E_PODS (2 per node), VXMESH_E2E_IPERF_SECONDS (3), VXMESH_E2E_KILL (1),
# VXMESH_E2E_UPGRADE_BIN (a vxmeshd of another build for the upgrade step; default: built with
# VXMESH_BUILD_ID=e2e-upgrade into <repo>/target/e2e-upgrade, kept for the next run; "none" skips
# the step), VXMESH_E2E_PING_INTERVAL (0.01 s),
# VXMESH_E2E_IPV6 (1: the dual-stack step), VXMESH_E2E_IPV6_ONLY (1: then the IPv6-only step), VXMESH_E2E_UNINSTALL (1), VXMESH_E2E_KEEP=1 (leave the VMs up; tear down later with
# VXMESH_E2E_KEEP=0 ... see docs/vagrant.md), VXMESH_E2E_REBUILD_BOX=1, VXMESH_BIN_DIR (default
# <repo>/target/release), VXMESH_VGLAB_TOOLS (default <repo>/../shared/tools/vagrant-box),
# VGLAB_DIR / VGLAB_NS (see the tools' README).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/cluster.sh
. "$ROOT/scripts/lib/cluster.sh"

TOOLS=${VXMESH_VGLAB_TOOLS:-$ROOT/../shared/tools/vagrant-box}
TOOLS=$(cd "$TOOLS" 2>/dev/null && pwd || echo "$TOOLS")
NODES=${VXMESH_E2E_NODES:-3}
if [ -n "${VXMESH_E2E_KERNEL_NODES+set}" ]; then KERNEL_NODES=$VXMESH_E2E_KERNEL_NODES
elif [ "$NODES" -ge 3 ] 2>/dev/null; then KERNEL_NODES=3
else KERNEL_NODES=""; fi
PODS=${VXMESH_E2E_PODS:-2}
IPERF_SECONDS=${VXMESH_E2E_IPERF_SECONDS:-3}
KILL=${VXMESH_E2E_KILL:-1}
UPGRADE_BIN=${VXMESH_E2E_UPGRADE_BIN:-}
PING_INTERVAL=${VXMESH_E2E_PING_INTERVAL:-0.01}
UNINSTALL=${VXMESH_E2E_UNINSTALL:-1}
IPV6=${VXMESH_E2E_IPV6:-1}
IPV6_ONLY=${VXMESH_E2E_IPV6_ONLY:-1}
# pods per node made by the dual-stack and IPv6-only steps (deleted with the others before the uninstall)
EXTRA_PODS=0
KEEP=${VXMESH_E2E_KEEP:-0}
SRC_BIN=${VXMESH_BIN_DIR:-$ROOT/target/release}
BOX_PACKAGES=etcd-server,etcd-client,iperf3,containernetworking-plugins,iptables,nftables,jq,ethtool
export VGLAB_DIR=${VGLAB_DIR:-/var/tmp/vglab}
export VGLAB_NS=${VGLAB_NS:-vglab}
export VXMESH_OFFLINE=1 VXMESH_NODES=$NODES VXMESH_ETCD_ON_NODE=${VXMESH_E2E_ETCD_ON_NODE:-0}
export VXMESH_KERNEL_NODES=$KERNEL_NODES
# dataplane_of N: what node N runs
dataplane_of() { [[ ",$KERNEL_NODES," == *",$1,"* ]] && echo kernel || echo userspace; }
G=/opt/vxmesh/src/vagrant/guest.sh
CANNOT_RUN=77

t0=$(date +%s)
pass=0; fail=0; cannot_run=""; vms_up=0; netns_up=0; WORK=""
timings=(); checks=(); summary_rows=(); note=()

stamp() { echo "[e2e +$(( $(date +%s) - t0 ))s] $*"; }
check() {  # check NAME STATUS [DETAIL]
  if [ "$2" = 0 ]; then pass=$((pass + 1)); checks+=("PASS  $1${3:+  ($3)}"); stamp "PASS $1${3:+ ($3)}"
  else fail=$((fail + 1)); checks+=("FAIL  $1${3:+  ($3)}"); stamp "FAIL $1${3:+ ($3)}"; fi
}
phase_t=$t0
phase() {  # phase NAME: closes the timing of the phase that ran since the last call
  local now; now=$(date +%s); timings+=("$(printf '%-28s %4ss' "$1" $((now - phase_t)))"); phase_t=$now
}
cannot() { cannot_run=$*; echo "VAGRANT LAB CANNOT RUN HERE: $*" >&2; exit "$CANNOT_RUN"; }
vg() { (cd "$HERE" && "$TOOLS/vglab" vagrant "$@"); }
vssh() { local vm=$1; shift; "$TOOLS/vglab" ssh -F "$WORK/ssh_config" -o LogLevel=ERROR "$vm" "$@"; }
# vagrant's progress bars (\r, ESC[K) are noise in a log
indent() { sed -u 's/^/    /'; }
elapsed() { local l; while IFS= read -r l; do printf '+%ss %s\n' $(( $(date +%s) - t0 )) "$l"; done; }
declutter() { sed -u 's/\x1b\[K/\n/g; s/\r/\n/g' | grep --line-buffered -v -e '^Progress' -e '^$'; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$KEEP" = 1 ] && [ "$vms_up" = 1 ]; then
    stamp "VXMESH_E2E_KEEP=1: VMs left running. Explore, then tear down with:"
    echo "    cd $HERE && export VXMESH_OFFLINE=1 VXMESH_NODES=$NODES VXMESH_ETCD_ON_NODE=$VXMESH_ETCD_ON_NODE VXMESH_KERNEL_NODES=$KERNEL_NODES VXMESH_BIN_DIR=$WORK/bin VAGRANT_DOTFILE_PATH=$VAGRANT_DOTFILE_PATH"
    echo "    $TOOLS/vglab vagrant ssh node1     # ... then:"
    echo "    $TOOLS/vglab vagrant destroy -f && $TOOLS/lab-netns-down.sh && rm -rf $WORK"
  else
    if [ "$vms_up" = 1 ]; then
      stamp "vagrant destroy -f"
      vg destroy -f 2>&1 | declutter | indent
      phase "vagrant destroy"
    fi
    if [ "$netns_up" = 1 ]; then
      "$TOOLS/lab-netns-down.sh" 2>&1 | indent
      phase "lab-netns-down.sh"
    fi
    [ -z "$WORK" ] || rm -rf "$WORK"
  fi
  local total=$(( $(date +%s) - t0 ))
  echo
  echo "== vagrant e2e: $NODES node VMs ($( [ -n "$KERNEL_NODES" ] && echo "kernel dataplane on node ${KERNEL_NODES//,/, }, userspace on the others" || echo "all userspace")) + $( [ "$VXMESH_ETCD_ON_NODE" = 1 ] && echo "etcd on node1" || echo "etcd VM"), offline, QEMU TCG =="
  if [ ${#summary_rows[@]} -gt 0 ]; then
    cluster_summary_header
    printf '%s\n' "${summary_rows[@]}"
  fi
  [ ${#note[@]} -eq 0 ] || printf '%s\n' "${note[@]}"
  echo "-- checks --"
  [ ${#checks[@]} -eq 0 ] || printf '%s\n' "${checks[@]}"
  echo "-- timings --"
  [ ${#timings[@]} -eq 0 ] || printf '%s\n' "${timings[@]}"
  printf '%-28s %4ss\n' total "$total"
  [ -z "$cannot_run" ] || echo "VAGRANT LAB CANNOT RUN HERE: $cannot_run"
  cluster_result_line "$pass" "$fail"
  if [ -n "$cannot_run" ]; then exit "$CANNOT_RUN"; fi
  if [ "$fail" -gt 0 ] || [ "$rc" -ne 0 ]; then exit 1; fi
  exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 0. can this machine run it? ---------------------------------------------------------
[ "$(id -u)" = 0 ] || cannot "needs root (network namespace + libvirtd)"
for f in install-deps.sh build-box.sh lab-netns-up.sh lab-netns-down.sh vglab; do
  [ -x "$TOOLS/$f" ] || cannot "no $TOOLS/$f (the shared vagrant-box tools; set VXMESH_VGLAB_TOOLS)"
done
if ! ip netns list >/dev/null 2>&1; then cannot "no 'ip netns' (iproute2, network namespaces)"; fi
# One libvirt lab per machine: lab-netns-up.sh would silently reuse the libvirtd of a lab another
# job started with the same VGLAB_DIR, and our teardown would then destroy that job's VMs.
pf=$VGLAB_DIR/state/libvirtd.pid
if [ -s "$pf" ] && kill -0 "$(cat "$pf")" 2>/dev/null; then
  cannot "another vglab lab is running (libvirtd pid $(cat "$pf") from $VGLAB_DIR/state): one libvirt lab per machine; if it is a leftover, run $TOOLS/lab-netns-down.sh"
fi
if [ -S /run/libvirt/libvirt-sock ] && command -v virsh >/dev/null && virsh -c qemu:///system version >/dev/null 2>&1; then
  cannot "another libvirtd already serves /run/libvirt/libvirt-sock (a system libvirtd, or a lab with another VGLAB_DIR)"
fi
for b in vxmeshd vxmeshctl vxmesh; do
  [ -x "$SRC_BIN/$b" ] || { check "binaries in $SRC_BIN" 1 "$b missing: cargo build --release"; exit 1; }
done
WORK=$(mktemp -d /var/tmp/vxmesh-e2e.XXXXXX); chmod 755 "$WORK"
export VAGRANT_DOTFILE_PATH=$WORK/dot-vagrant
# stripped copies: 12 MB instead of 60 MB to rsync into each VM under TCG
mkdir "$WORK/bin"
for b in vxmeshd vxmeshctl vxmesh; do
  if command -v strip >/dev/null; then strip -o "$WORK/bin/$b" "$SRC_BIN/$b"; else cp "$SRC_BIN/$b" "$WORK/bin/$b"; fi
done
# another build for the upgrade step: same sources, another build id (`vxmeshd --version` and
# `vxmeshctl status` tell them apart)
if [ "$UPGRADE_BIN" != none ]; then
  if [ -z "$UPGRADE_BIN" ]; then
    UPGRADE_BIN=$ROOT/target/e2e-upgrade/release/vxmeshd
    if [ ! -x "$UPGRADE_BIN" ] || [ "$UPGRADE_BIN" -ot "$SRC_BIN/vxmeshd" ]; then
      stamp "building the upgrade's vxmeshd (VXMESH_BUILD_ID=e2e-upgrade, target/e2e-upgrade)"
      (cd "$ROOT" && VXMESH_BUILD_ID=e2e-upgrade cargo build --release --bin vxmeshd \
        --target-dir "$ROOT/target/e2e-upgrade") >"$WORK/upgrade-build.log" 2>&1 ||
        { check "build the upgrade's vxmeshd" 1 "$(tail -n 3 "$WORK/upgrade-build.log" | tr '\n' ' ')"; UPGRADE_BIN=none; }
    fi
  fi
  if [ "$UPGRADE_BIN" != none ]; then
    if command -v strip >/dev/null; then strip -o "$WORK/bin/vxmeshd-upgrade" "$UPGRADE_BIN"; else cp "$UPGRADE_BIN" "$WORK/bin/vxmeshd-upgrade"; fi
  fi
fi
export VXMESH_BIN_DIR=$WORK/bin
stamp "binaries from $SRC_BIN staged in $WORK/bin ($(du -sh "$WORK/bin" | cut -f1))"
phase "stage binaries"

# ---- 1. deps, box, libvirtd in its netns -------------------------------------------------
have_deps() {
  local c
  for c in vagrant virsh libvirtd virtlogd qemu-system-x86_64 debootstrap rsync mkfs.ext4 qemu-img; do
    command -v "$c" >/dev/null || return 1
  done
  vagrant plugin list 2>/dev/null | grep -q vagrant-libvirt
}
if have_deps; then
  stamp "vagrant, vagrant-libvirt, libvirt, QEMU already installed"
else
  stamp "install-deps.sh"
  "$TOOLS/install-deps.sh" >"$WORK/install-deps.log" 2>&1 ||
    cannot "install-deps.sh failed (no Debian mirror?): $(tail -n 3 "$WORK/install-deps.log" | tr '\n' ' ')"
fi
phase "install-deps.sh"

box_ready() {
  [ "${VXMESH_E2E_REBUILD_BOX:-0}" != 1 ] &&
    grep -q ",$BOX_PACKAGES\$" "$VGLAB_DIR/box-build/rootfs.pkgs" 2>/dev/null &&
    VAGRANT_HOME=$VGLAB_DIR/vagrant.d vagrant box list 2>/dev/null | grep -q '^local/bookworm '
}
if box_ready; then
  stamp "box local/bookworm with $BOX_PACKAGES already built"
else
  stamp "build-box.sh (EXTRA_PACKAGES=$BOX_PACKAGES)"
  EXTRA_PACKAGES=$BOX_PACKAGES "$TOOLS/build-box.sh" >"$WORK/build-box.log" 2>&1 ||
    cannot "build-box.sh failed: $(tail -n 3 "$WORK/build-box.log" | tr '\n' ' ')"
  grep '^\[build-box' "$WORK/build-box.log" | tail -n 1
fi
phase "build-box.sh"

"$TOOLS/lab-netns-up.sh" >"$WORK/netns-up.log" 2>&1 || {
  "$TOOLS/lab-netns-down.sh" >/dev/null 2>&1
  cannot "lab-netns-up.sh failed: $(tail -n 2 "$WORK/netns-up.log" | tr '\n' ' ')"
}
netns_up=1
stamp "libvirtd up in netns $VGLAB_NS ($(tail -n 1 "$WORK/netns-up.log"))"
# A run killed before its trap ran (SIGKILL, a lost machine) leaves our domains, networks and
# disk volumes defined in libvirt's persistent state; `vagrant up` would then refuse ("Name
# vxmesh-node1 of domain about to create is already taken", "Volume ... already created").
# Everything named vxmesh-* in this lab's libvirtd is ours (one lab per machine, checked above).
virsh_lab() { "$TOOLS/vglab" virsh -c qemu:///system "$@"; }
swept=()
for d in $(virsh_lab list --all --name 2>/dev/null | grep '^vxmesh-' || true); do
  virsh_lab destroy "$d" >/dev/null 2>&1; virsh_lab undefine "$d" --nvram >/dev/null 2>&1 ||
    virsh_lab undefine "$d" >/dev/null 2>&1
  swept+=("domain $d")
done
for n in $(virsh_lab net-list --all --name 2>/dev/null | grep '^vxmesh-' || true); do
  virsh_lab net-destroy "$n" >/dev/null 2>&1; virsh_lab net-undefine "$n" >/dev/null 2>&1
  swept+=("network $n")
done
for v in $(virsh_lab vol-list default 2>/dev/null | awk 'NR > 2 && $1 ~ /^vxmesh-/ {print $1}'); do
  virsh_lab vol-delete --pool default "$v" >/dev/null 2>&1 && swept+=("volume $v")
done
for d in /var/tmp/vxmesh-e2e.*; do
  if [ -d "$d" ] && [ "$d" != "$WORK" ]; then rm -rf "$d" && swept+=("work dir $d"); fi
done
[ ${#swept[@]} -eq 0 ] || stamp "removed leftovers of an earlier run that was killed: ${swept[*]}"
phase "lab-netns-up.sh"

# ---- 2. vagrant up -----------------------------------------------------------------------
stamp "vagrant up ($NODES nodes, etcd $( [ "$VXMESH_ETCD_ON_NODE" = 1 ] && echo on node1 || echo VM))"
vms_up=1
vg up 2>&1 | declutter | elapsed | tee "$WORK/vagrant-up.log" | indent
up_rc=${PIPESTATUS[0]}
phase "vagrant up (boot+provision)"
if grep -q 'VXMESH-CANNOT-RUN:' "$WORK/vagrant-up.log"; then
  cannot "$(grep -m1 -o 'VXMESH-CANNOT-RUN:.*' "$WORK/vagrant-up.log" | cut -d: -f2-)"
fi
check "vagrant up: VMs booted, vxmesh installed, etcd + vxmeshd started by systemd" "$up_rc"
[ "$up_rc" = 0 ] || exit 1
vg ssh-config >"$WORK/ssh_config" 2>/dev/null || { check "vagrant ssh-config" 1; exit 1; }

for i in $(seq "$NODES"); do
  dp=$(dataplane_of "$i")
  st=$(vssh "node$i" "systemctl is-active vxmeshd; sudo /usr/local/bin/vxmeshctl wait-ready --timeout 30; sudo $G tap-mac; sudo $G dataplane; sed -n 's/^FLANNEL_SUBNET=//p' /run/flannel/subnet.env" 2>&1)
  [ "$(echo "$st" | sed -n 1p)" = active ] && [ "$(echo "$st" | sed -n 2p)" = ready ] && [ "$(echo "$st" | sed -n 3p | cut -d' ' -f1)" = ok ] &&
    [ "$(echo "$st" | sed -n 4p | cut -d' ' -f1)" = "$dp" ]
  check "node$i: vxmeshd.service active and ready on the $dp dataplane, device MAC = VTEP MAC" $? "$(echo "$st" | tr '\n' ' ')"
done

# ---- 3. pods, pings, iperf3 --------------------------------------------------------------
: >"$WORK/pods"
for i in $(seq "$NODES"); do
  out=$(vssh "node$i" "sudo $G pods node$i $PODS" 2>"$WORK/pods-node$i.err")
  rc=$?
  printf '%s\n' "$out" >>"$WORK/pods"
  detail=$(echo "$out" | awk 'NF == 3 {printf "%s%s=%s", (n++ ? ", " : ""), $2, $3}')
  [ "$rc" = 0 ] || detail="$detail $(tail -n 3 "$WORK/pods-node$i.err" | tr '\n' ' ')"
  check "node$i: $PODS pods through the CNI plugin" "$rc" "$detail"
done
sed -i '/^$/d' "$WORK/pods"
phase "pods (CNI ADD)"

ping_all() {  # ping_all LABEL [PODS_FILE]: all-pairs table; every row is a check
  local i rows pods=${2:-$WORK/pods}
  stamp "all-pairs cross-node pod ping ($1)"
  cluster_ping_header
  for i in $(seq "$NODES"); do
    rows=$(vssh "node$i" "sudo $G ping node$i" <"$pods" 2>&1)
    printf '%s\n' "$rows"
    read -r p f < <(cluster_count_rows <<<"$rows")
    pass=$((pass + p)); fail=$((fail + f))
    checks+=("$( [ "$f" = 0 ] && [ "$p" -gt 0 ] && echo PASS || echo FAIL)  ping from node$i's pods ($1): $p ok, $f failed")
    if [ "$p" = 0 ] && [ "$f" = 0 ]; then fail=$((fail + 1)); echo "    no rows from node$i: $rows"; fi
  done
}
addr_of() { awk -v p="$1" '$2 == p {print $3}' "$WORK/pods"; }
ping_all "after up"
phase "ping (all pairs)"

if [ "$NODES" -ge 2 ]; then
  vssh node2 "sudo $G iperf-server node2-p1" >/dev/null 2>&1
  mbps=$(vssh node1 "sudo $G iperf node1-p1 $(addr_of node2-p1) $IPERF_SECONDS" 2>/dev/null)
  check "iperf3 node1-p1 -> node2-p1 (TCP, 1 stream, ${IPERF_SECONDS}s)" $? "${mbps:-?} Mbit/s"
  note+=("iperf3 node1-p1 -> node2-p1: ${mbps:-?} Mbit/s (userspace VXLAN in TCG-emulated VMs: functional, not a benchmark)")
  # the mixed cluster: TCP both ways between a userspace node and each kernel-dataplane node, at
  # the NICs' default offloads (a kernel sender leaves inner checksums partial for the NIC)
  for k in ${KERNEL_NODES//,/ }; do
    [ "$k" != 1 ] || continue
    vssh "node$k" "sudo $G iperf-server node$k-p1" >/dev/null 2>&1
    mbps=$(vssh node1 "sudo $G iperf node1-p1 $(addr_of "node$k-p1") $IPERF_SECONDS" 2>/dev/null)
    check "iperf3 node1-p1 (userspace) -> node$k-p1 (kernel dataplane), TCP at default offloads" $? "${mbps:-?} Mbit/s"
    vssh node1 "sudo $G iperf-server node1-p1" >/dev/null 2>&1
    back=$(vssh "node$k" "sudo $G iperf node$k-p1 $(addr_of node1-p1) $IPERF_SECONDS" 2>/dev/null)
    check "iperf3 node$k-p1 (kernel dataplane) -> node1-p1 (userspace), TCP at default offloads" $? "${back:-?} Mbit/s"
    offl=$(vssh "node$k" "sudo $G offloads" 2>/dev/null || echo "offloads: ?")
    # the point of the mixed lab: the kernel node leaves inner checksums to its NIC
    grep -q 'tx-checksumming: on' <<<"$offl"
    check "node$k: underlay NIC at its default offloads (tx checksumming on: inner checksums left partial)" $? "$offl"
    note+=("mixed cluster, TCP at the virtio NICs' default offloads ($offl): node1 -> node$k ${mbps:-?} Mbit/s, node$k -> node1 ${back:-?} Mbit/s")
  done
  phase "iperf3"
fi

# ---- 4. restarts, an upgrade and a crash under systemd: the dataplane is handed over ------
R=node$(( NODES >= 2 ? 2 : 1 ))
peer=$( [ "$R" = node1 ] && echo node2 || echo node1 )
# during STEP on $R, node $peer's pod pings $R's pod every PING_INTERVAL; prints "sent received"
pinged() {  # pinged COUNT GUEST_COMMAND...
  local count=$1; shift
  if [ "$NODES" -ge 2 ]; then vssh "$peer" "sudo $G ping-start $peer-p1 $(addr_of "$R-p1") $count $PING_INTERVAL" >/dev/null 2>&1; sleep 2; fi
  out=$(vssh "$R" "sudo $G $*" 2>&1); rc=$?
  if [ "$NODES" -ge 2 ]; then lost=$(vssh "$peer" "sudo $G ping-result $peer-p1" 2>&1); else lost="- -"; fi
}
loss() { read -r s r <<<"$lost"; if [ -n "${r:-}" ] && [ "$s" -ge "$r" ] 2>/dev/null; then echo "$((s - r)) of $s pings lost at ${PING_INTERVAL}s"; else echo "ping: $lost"; fi; }
# no ping lost, and the step itself succeeded (a step that failed measured nothing)
zero_lost() { read -r s r <<<"$lost"; [ "$rc" = 0 ] && { [ "$NODES" -lt 2 ] || { [ -n "${r:-}" ] && [ "$s" = "$r" ]; }; }; }

pinged 1500 restart-agent
check "$R: systemctl restart vxmeshd (new PID, same subnet and TAP, dataplane from systemd's store)" "$rc" "$out"
zero_lost; check "$R: no ping lost across systemctl restart" $? "$(loss)"
note+=("systemctl restart on $R: $(loss); $out")
phase "systemctl restart"

if [ "$UPGRADE_BIN" != none ]; then
  pinged 1500 upgrade-agent /opt/vxmesh/bin/vxmeshd-upgrade
  check "$R: upgrade to another build + restart (dataplane from systemd's store)" "$rc" "$out"
  zero_lost; check "$R: no ping lost across the upgrade" $? "$(loss)"
  note+=("upgrade on $R: $(loss); $out")
  phase "upgrade"
fi

if [ "$KILL" = 1 ]; then
  pinged 1500 kill-agent
  check "$R: SIGKILL vxmeshd -> systemd restarts it (Restart=on-failure) from the store" "$rc" "$out"
  zero_lost; check "$R: no ping lost across SIGKILL + Restart= (RestartSec=1s)" $? "$(loss)"
  note+=("SIGKILL on $R: $(loss); $out")
  phase "SIGKILL + systemd restart"
fi
if [ "$NODES" -ge 2 ]; then ping_all "after the restarts on $R"; fi

# edit_config JQ_EXPR EXPECT LABEL: applies JQ_EXPR to etcd's network config (from node1) and
# checks the config read back holds EXPECT
edit_config() {
  local url e
  url=http://192.168.56.$( [ "$VXMESH_ETCD_ON_NODE" = 1 ] && echo 11 || echo 10):2379
  e="ETCDCTL_API=3 etcdctl --endpoints $url"
  out=$(vssh node1 "cfg=\$($e get --print-value-only /coreos.com/network/config) && $e put /coreos.com/network/config \"\$(jq -c '$1' <<<\"\$cfg\")\" >/dev/null && $e get --print-value-only /coreos.com/network/config" 2>&1)
  grep -qF "$2" <<<"$out"
  check "$3" $? "$out"
}
# add_pods ACTION PODS_FILE LABEL: one more pod per node through guest.sh ACTION (pod6,
# pod6-only), numbered after the EXTRA_PODS ones; their lines go to PODS_FILE
add_pods() {
  local i rc
  : >"$2"
  for i in $(seq "$NODES"); do
    # the CNI plugin logs to stderr: only stdout is the pods file's line
    out=$(vssh "node$i" "sudo $G $1 node$i node$i-p$((PODS + EXTRA_PODS))" 2>"$WORK/$1-node$i.err")
    rc=$?
    if [ "$rc" = 0 ]; then printf '%s\n' "$out" >>"$2"; else out="$out $(tail -n 3 "$WORK/$1-node$i.err" | tr '\n' ' ')"; fi
    check "node$i: $3" "$rc" "$out"
  done
}

# ---- 5. dual stack: the config turns dual stack, both dataplanes carry IPv6 ---------------
if [ "$IPV6" = 1 ] && [ "$NODES" -ge 2 ]; then
  edit_config '. + {EnableIPv6: true, IPv6Network: "fd00:10:244::/56"}' '"EnableIPv6":true' \
    "the network config turns dual stack (IPv6Network fd00:10:244::/56)"
  for i in $(seq "$NODES"); do
    out=$(vssh "node$i" "sudo $G dual-stack fd00:56::$((10 + i))" 2>&1)
    check "node$i: restarted dual stack, flannel-v6 device with the lease's IPv6 address, FLANNEL_IPV6_SUBNET" $? "$out"
  done
  EXTRA_PODS=1
  add_pods pod6 "$WORK/pods6" "a new pod gets an IPv6 address from the node's IPv6 subnet"
  phase "dual stack (config, restarts, pods)"
  ping_all "IPv6, dual stack" "$WORK/pods6"
  phase "ping (IPv6 pairs)"

  # 5b. node1's threads carry its IPv6 (--ipv6-dataplane userspace, decision 0034): a
  # systemctl restart switches (the store is dropped: the fingerprints differ), every IPv6
  # pair pings, a restart in that mode through the store loses no IPv6 ping, and switching
  # back brings flannel-v6 up again (after systemd closed the stored IPv6 socket).
  out=$(vssh node1 "sudo $G ipv6-threads userspace" 2>&1)
  check "node1: --ipv6-dataplane userspace through systemd: no flannel-v6, the TAP holds the lease's IPv6 /128, vxmeshd holds [::]:8472" $? "$out"
  ping_all "IPv6, node1's threads carry it" "$WORK/pods6"
  p6=node2-p$((PODS + EXTRA_PODS)); a6=$(awk '$1 == "node1" {print $3}' "$WORK/pods6")
  vssh node2 "sudo $G ping-start $p6 $a6 1500 $PING_INTERVAL" >/dev/null 2>&1; sleep 2
  out=$(vssh node1 "sudo $G restart-agent" 2>&1); rc=$?
  lost=$(vssh node2 "sudo $G ping-result $p6" 2>&1)
  check "node1: systemctl restart with IPv6 in the threads (its IPv6 socket from systemd's store)" "$rc" "$out"
  zero_lost; check "node1: no IPv6 ping lost across systemctl restart (node2's pod -> node1's, IPv6 in node1's threads)" $? "$(loss)"
  note+=("systemctl restart on node1 with IPv6 in its threads: IPv6 $(loss)")
  out=$(vssh node1 "sudo $G ipv6-threads kernel" 2>&1)
  check "node1: back to --ipv6-dataplane kernel: flannel-v6 again, no IPv6 on the TAP, no vxmeshd socket on [::]:8472" $? "$out"
  ping_all "IPv6, flannel-v6 again on node1" "$WORK/pods6"
  phase "IPv6 in node1's threads, and back"
fi

# ---- 6. IPv6 only: the config turns IPv6-only, every node restarts through systemd --------
if [ "$IPV6" = 1 ] && [ "$IPV6_ONLY" = 1 ] && [ "$NODES" -ge 2 ]; then
  edit_config '. + {EnableIPv4: false}' '"EnableIPv4":false' "the network config turns IPv6-only (EnableIPv4 false)"
  for i in $(seq "$NODES"); do
    out=$(vssh "node$i" "sudo $G ipv6-only" 2>&1)
    check "node$i: systemctl restart into IPv6 only (READY=1 to Type=notify), the IPv6 subnet kept, flannel-v6 alone" $? "$out"
  done
  EXTRA_PODS=2
  add_pods pod6-only "$WORK/pods6only" "a new pod gets IPv6 only"
  phase "IPv6 only (config, restarts, pods)"
  ping_all "IPv6-only network" "$WORK/pods6only"
  # the pods made under dual stack keep their IPv6 addresses (the IPv6 subnets were kept)
  ping_all "IPv6-only network, the dual-stack pods" "$WORK/pods6"
  for i in $(seq "$NODES"); do
    [[ ",$KERNEL_NODES," == *",$i,"* ]] && continue
    out=$(vssh "node$i" "sudo $G ipv6-check" 2>&1)
    check "node$i: the IPv6 ingress check is in place and dropped none of the pings" $? "$out"
  done
  phase "ping (IPv6-only pairs)"
fi

for i in $(seq "$NODES"); do
  summary_rows+=("$(vssh "node$i" "sudo $G status-row node$i 192.168.56.$((10 + i))" 2>/dev/null || echo "node$i ?")")
done
leases=$(vssh node1 "sudo /usr/local/bin/vxmeshctl leases --etcd-endpoints http://192.168.56.$( [ "$VXMESH_ETCD_ON_NODE" = 1 ] && echo 11 || echo 10):2379" 2>&1)
note+=("leases in etcd:" "$leases")

# ---- 7. uninstall reverses the install ---------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  # the last node (the kernel dataplane's with 3 nodes); after the IPv6-only step node1 too,
  # a userspace node whose IPv6-only run left flannel-v6.<VNI> and no TAP
  uninstall_nodes=node$NODES
  [ "$EXTRA_PODS" != 2 ] || [ "$NODES" = 1 ] || uninstall_nodes="node1 $uninstall_nodes"
  for U in $uninstall_nodes; do
    out=$(vssh "$U" "sudo $G pods-del $U $((PODS + EXTRA_PODS)) && sudo /opt/vxmesh/src/scripts/uninstall-node.sh && sudo $G leftovers" 2>&1)
    check "$U: uninstall-node.sh leaves nothing (unit, binaries, conflist, ip(6)tables, subnet file, cni0, devices)" $? "$(echo "$out" | tail -n 1)"
    indent <<<"$out"
  done
  if [ "$VXMESH_ETCD_ON_NODE" != 1 ]; then
    # the box's etcd-server starts etcd at boot: uninstall must leave it enabled and running
    # again, with Debian's own configuration
    out=$(vssh etcd "sudo /opt/vxmesh/src/scripts/uninstall-node.sh && sudo $G leftovers && echo \"etcd.service: \$(systemctl is-enabled etcd) \$(systemctl is-active etcd)\"; systemctl is-active -q etcd || sudo journalctl -u etcd --no-pager -n 20 -o short-monotonic" 2>&1)
    rc=$?; [ "$rc" != 0 ] || grep -q '^etcd.service: enabled active$' <<<"$out" || rc=1
    check "etcd VM: uninstall-node.sh removes the drop-in, env and data; etcd.service as before the install" "$rc" "$(grep -E '^(nothing left|left:|etcd.service:)' <<<"$out" | tr '\n' ' ')"
    indent <<<"$out"
  fi
  phase "uninstall-node.sh"
fi
