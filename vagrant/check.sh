#!/usr/bin/env bash
# Static checks of the Vagrant lab and the node install path; no VM, no root, no network, a few
# seconds. (The real-VM test is vagrant/e2e.sh.)
#
#   vagrant/check.sh
#
#   scripts           shellcheck on every script of the labs and the install path (sourced files followed)
#   vagrant validate  --ignore-provider, for the user, offline, etcd-on-node, 1-node and mixed
#                     layouts; bad VXMESH_NODES / VXMESH_KERNEL_NODES refused
#   isolation         the offline (CI) settings are there: no NAT, no public network
#   systemd-analyze   verify vxmeshd.service (Type=notify, descriptor store, watchdog), and Debian's
#                     etcd.service with the vxmesh drop-in
#                     (copies whose ExecStart/EnvironmentFile paths exist on this machine);
#                     any message counts as a failure (verify exits 0 on parse warnings)
#   install/uninstall install-node.sh --root into a scratch tree with stand-in binaries, then
#                     uninstall-node.sh --root: the expected files appear, then no file is left
#   cluster.sh        the shared library's pure helpers (netconf JSON, row counting)
#
# Needs: shellcheck, vagrant (Debian: apt-get install shellcheck vagrant), systemd-analyze
# (package systemd), jq. A missing tool is a failure that names the package, except vagrant on a
# distribution that has no package for it (Ubuntu 24.04): `vagrant validate` is skipped, and said.
# Ends with "N passed, N failed"; exit status 1 if anything failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/cluster.sh
. "$ROOT/scripts/lib/cluster.sh"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
pass=0; fail=0; skipped=0
t0=$(date +%s)

result() {  # result NAME STATUS [OUTPUT]
  if [ "$2" = 0 ]; then pass=$((pass + 1)); echo "PASS  $1"
  else fail=$((fail + 1)); echo "FAIL  $1"; [ -z "${3:-}" ] || indent <<<"$3"; fi
}
indent() { sed 's/^/      /'; }
need() {  # need TOOL PACKAGE: fails the check NAME when TOOL is missing
  command -v "$1" >/dev/null && return 0
  result "$1 available" 1 "not installed (Debian: apt-get install $2)"
  return 1
}

SCRIPTS=(scripts/lab.sh scripts/lib/cluster.sh scripts/install-node.sh scripts/uninstall-node.sh
         vagrant/provision.sh vagrant/guest.sh vagrant/e2e.sh vagrant/check.sh)

# ---- shellcheck --------------------------------------------------------------------------
if need shellcheck shellcheck; then
  for s in "${SCRIPTS[@]}"; do
    out=$(cd "$ROOT" && shellcheck -x "$s" 2>&1); result "shellcheck $s" $? "$out"
  done
fi

# ---- vagrant validate --------------------------------------------------------------------
# Ubuntu has had no vagrant package since 24.04 (install-deps.sh says so): there the checks are
# reported as skipped. Where the distribution has the package, a missing vagrant is a failure.
# (The policy is read whole before matching: `apt-cache ... | grep -q` fails under pipefail
# when grep stops reading first.)
if ! command -v vagrant >/dev/null && command -v apt-cache >/dev/null &&
   ! [[ $(LC_ALL=C apt-cache policy vagrant 2>/dev/null) =~ (^|$'\n')"  Candidate: "[^\(] ]]; then
  skipped=$((skipped + 1))
  echo "SKIP  vagrant validate: vagrant is not installed and this distribution has no vagrant package (HashiCorp's apt repository has it: https://developer.hashicorp.com/vagrant/install)"
elif need vagrant vagrant; then
  while read -r name envs; do
    # shellcheck disable=SC2086  # envs is a list of VAR=value words
    out=$(cd "$HERE" && env VAGRANT_HOME="$SCRATCH/vagrant.d" VAGRANT_DOTFILE_PATH="$SCRATCH/dot-vagrant" \
      VAGRANT_CHECKPOINT_DISABLE=1 $envs vagrant validate --ignore-provider 2>&1)
    rc=$?
    [ "$rc" != 0 ] || grep -q 'validated successfully' <<<"$out" || rc=1
    result "vagrant validate --ignore-provider ($name)" "$rc" "$out"
  done <<'EOF'
user-default VXMESH_NODES=3
offline VXMESH_OFFLINE=1 VXMESH_NODES=2
etcd-on-node VXMESH_OFFLINE=1 VXMESH_ETCD_ON_NODE=1 VXMESH_NODES=2
one-node VXMESH_NODES=1 VXMESH_BIN_DIR=/nonexistent
mixed VXMESH_OFFLINE=1 VXMESH_NODES=3 VXMESH_KERNEL_NODES=3
EOF
  # refused, with the message ("+" stands for a space) and the settings
  while read -r want envs; do
    rc=1
    # shellcheck disable=SC2086  # envs is a list of VAR=value words
    if ! out=$(cd "$HERE" && env VAGRANT_HOME="$SCRATCH/vagrant.d" VAGRANT_DOTFILE_PATH="$SCRATCH/dot-vagrant" \
        VAGRANT_CHECKPOINT_DISABLE=1 $envs vagrant validate --ignore-provider 2>&1); then
      grep -qF "${want//+/ }" <<<"$out" && rc=0
    fi
    result "vagrant validate rejects $envs" "$rc" "$out"
  done <<'EOF'
VXMESH_NODES+must+be+an+integer VXMESH_NODES=zero
no+node+4+among+node1..node3 VXMESH_NODES=3 VXMESH_KERNEL_NODES=4
must+list+node+numbers VXMESH_NODES=3 VXMESH_KERNEL_NODES=three
EOF
fi

# ---- isolation of the offline mode -------------------------------------------------------
vf=$HERE/Vagrantfile
problems=()
grep -q 'public_network' "$vf" && problems+=("a public_network")
grep -Eq 'management_network_mode *= *"(nat|route|open)"|forward_mode[^,]*"(nat|route|open)"' "$vf" &&
  problems+=("a NAT/routed network mode")
grep -q 'management_network_mode = "none"' "$vf" || problems+=("no management_network_mode none")
grep -q 'libvirt__forward_mode: "none"' "$vf" || problems+=("private network not forward_mode none")
grep -q 'lv.driver = "qemu"' "$vf" || problems+=("offline driver is not qemu")
grep -q 'graphics_type = "none"' "$vf" || problems+=("graphics not none")
result "Vagrantfile offline mode: no NAT, no public network, qemu, no graphics" "${#problems[@]}" "${problems[*]:-}"

# ---- systemd units -----------------------------------------------------------------------
if need systemd-analyze systemd; then
  exe=$ROOT/target/release/vxmeshd; ctl=$ROOT/target/release/vxmeshctl
  [ -x "$exe" ] || exe=/bin/true
  [ -x "$ctl" ] || ctl=/bin/true
  mkdir -p "$SCRATCH/units/etcd.service.d"
  : >"$SCRATCH/vxmeshd.env"; : >"$SCRATCH/etcd.env"
  sed -e "s|/usr/local/bin/vxmeshd|$exe|; s|/usr/local/bin/vxmeshctl|$ctl|; s|/etc/vxmesh/vxmeshd.env|$SCRATCH/vxmeshd.env|" \
    "$ROOT/packaging/systemd/vxmeshd.service" >"$SCRATCH/units/vxmeshd.service"
  out=$(systemd-analyze verify --man=no "$SCRATCH/units/vxmeshd.service" 2>&1)
  rc=$?; [ -z "$out" ] || rc=1
  result "systemd-analyze verify vxmeshd.service" "$rc" "$out"
  u=$ROOT/packaging/systemd/vxmeshd.service
  grep -q '^Type=notify$' "$u" && grep -q '^NotifyAccess=main$' "$u" &&
    grep -Eq '^FileDescriptorStoreMax=[1-9][0-9]+$' "$u" && grep -Eq '^WatchdogSec=[1-9]' "$u" &&
    ! grep -q '^ExecStartPost=' "$u" &&
    grep -q '^Restart=on-failure$' "$u" &&
    grep -q '^EnvironmentFile=/etc/vxmesh/vxmeshd.env$' "$u"
  result "vxmeshd.service: Type=notify (READY=1), descriptor store, watchdog, Restart=on-failure, EnvironmentFile" $?
  # Debian's etcd.service when this machine has it, else a stand-in with the same shape
  if [ -f /lib/systemd/system/etcd.service ]; then
    etcd_unit=/lib/systemd/system/etcd.service; what="Debian's etcd.service"
  else
    etcd_unit=$SCRATCH/etcd-standin.service; what="a stand-in etcd.service"
    printf '[Unit]\nDescription=etcd\n[Service]\nType=notify\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n' >"$etcd_unit"
  fi
  cp "$etcd_unit" "$SCRATCH/units/etcd.service"
  sed -i "s|^ExecStart=/usr/bin/etcd|ExecStart=$(command -v etcd || echo /bin/true)|" "$SCRATCH/units/etcd.service"
  sed "s|/etc/vxmesh/etcd.env|$SCRATCH/etcd.env|" "$ROOT/packaging/systemd/etcd.service.d/10-vxmesh.conf" \
    >"$SCRATCH/units/etcd.service.d/10-vxmesh.conf"
  out=$(SYSTEMD_UNIT_PATH="$SCRATCH/units:" systemd-analyze verify --man=no etcd.service 2>&1)
  rc=$?; [ -z "$out" ] || rc=1
  result "systemd-analyze verify $what + etcd.service.d/10-vxmesh.conf" "$rc" "$out"
fi

# ---- install / uninstall round trip in a scratch root ------------------------------------
R=$SCRATCH/root; B=$SCRATCH/bin
mkdir -p "$R" "$B"
for b in vxmeshd vxmeshctl vxmesh; do printf '#!/bin/sh\necho "%s (stand-in)"\n' "$b" >"$B/$b"; chmod +x "$B/$b"; done
out=$("$ROOT/scripts/install-node.sh" --root "$R" --role node,etcd --bin-dir "$B" --cni-bin-dir /usr/lib/cni \
  --etcd-endpoints http://192.168.56.10:2379 --iface eth1 --etcd-ip 192.168.56.10 --env VXMESHD_SUBNET_LEASE_TTL=30m \
  --env VXMESHD_ETCD_PASSWORD=check-secret-4711 2>&1)
rc=$?
expected="/etc/cni/net.d/10-vxmesh.conflist
/etc/systemd/network/10-vxmesh.link
/etc/systemd/system/etcd.service.d/10-vxmesh.conf
/etc/systemd/system/vxmeshd.service
/etc/vxmesh/etcd.env
/etc/vxmesh/vxmeshd.env
/usr/lib/cni/vxmesh
/usr/local/bin/vxmeshctl
/usr/local/bin/vxmeshd
/var/lib/vxmesh/install-manifest"
got=$(cd "$R" && find . -type f | sed 's|^\.||' | sort)
[ "$rc" = 0 ] && [ "$got" = "$expected" ] || rc=1
result "install-node.sh --root: the expected files" "$rc" "$out
$(diff <(echo "$expected") <(echo "$got"))"
grep -qx 'VXMESHD_ETCD_ENDPOINTS=http://192.168.56.10:2379' "$R/etc/vxmesh/vxmeshd.env" &&
  grep -qx 'VXMESHD_IFACE=eth1' "$R/etc/vxmesh/vxmeshd.env" &&
  grep -qx 'VXMESHD_SUBNET_LEASE_TTL=30m' "$R/etc/vxmesh/vxmeshd.env" &&
  grep -qx 'ETCD_LISTEN_CLIENT_URLS=http://192.168.56.10:2379,http://127.0.0.1:2379' "$R/etc/vxmesh/etcd.env" &&
  cmp -s "$R/etc/systemd/system/vxmeshd.service" "$ROOT/packaging/systemd/vxmeshd.service" &&
  cmp -s "$R/etc/cni/net.d/10-vxmesh.conflist" "$ROOT/cni-shim/examples/10-vxmesh.conflist" &&
  cmp -s "$R/etc/systemd/network/10-vxmesh.link" "$ROOT/packaging/systemd/10-vxmesh.link"
result "install-node.sh --root: env files, unit, conflist and udev .link contents" $?
[ "$(stat -c %a "$R/etc/vxmesh/vxmeshd.env")" = 600 ] &&
  grep -qx 'VXMESHD_ETCD_PASSWORD=check-secret-4711' "$R/etc/vxmesh/vxmeshd.env" &&
  ! grep -q check-secret-4711 <<<"$out"
result "install-node.sh --root: vxmeshd.env is 0600 and the etcd password is not logged" $? "$out"
R2=$SCRATCH/root2; mkdir -p "$R2"
"$ROOT/scripts/install-node.sh" --root "$R2" --role node --bin-dir "$B" --env VXMESHD_TAP_NAME=ovl0 >/dev/null 2>&1
grep -qx 'OriginalName=vxmesh\* ovl0' "$R2/etc/systemd/network/10-vxmesh.link" && grep -qx 'MACAddressPolicy=none' "$R2/etc/systemd/network/10-vxmesh.link"
result "install-node.sh: a custom VXMESHD_TAP_NAME is covered by the udev .link file" $?
# a node of a secured etcd: TLS files copied (the key 0600), the password read from a file
R3=$SCRATCH/root3; mkdir -p "$R3"
printf -- '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n' >"$SCRATCH/ca.pem"
cp "$SCRATCH/ca.pem" "$SCRATCH/client.pem"
printf -- '-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n' >"$SCRATCH/client-key.pem"
echo 'node-secret-0815' >"$SCRATCH/pw"
out=$("$ROOT/scripts/install-node.sh" --root "$R3" --role node --bin-dir "$B" \
  --etcd-endpoints https://10.0.0.10:2379 --etcd-cafile "$SCRATCH/ca.pem" \
  --etcd-certfile "$SCRATCH/client.pem" --etcd-keyfile "$SCRATCH/client-key.pem" \
  --etcd-username vxmesh --etcd-password-file "$SCRATCH/pw" 2>&1)
rc=$?
E3=$R3/etc/vxmesh/vxmeshd.env
[ "$rc" = 0 ] &&
  grep -qx 'VXMESHD_ETCD_CAFILE=/etc/vxmesh/etcd-ca.pem' "$E3" &&
  grep -qx 'VXMESHD_ETCD_CERTFILE=/etc/vxmesh/etcd-client.pem' "$E3" &&
  grep -qx 'VXMESHD_ETCD_KEYFILE=/etc/vxmesh/etcd-client-key.pem' "$E3" &&
  grep -qx 'VXMESHD_ETCD_USERNAME=vxmesh' "$E3" && grep -qx 'VXMESHD_ETCD_PASSWORD=node-secret-0815' "$E3" &&
  cmp -s "$SCRATCH/client-key.pem" "$R3/etc/vxmesh/etcd-client-key.pem" &&
  [ "$(stat -c %a "$R3/etc/vxmesh/etcd-client-key.pem")" = 600 ] && [ "$(stat -c %a "$E3")" = 600 ] &&
  ! grep -q node-secret-0815 <<<"$out"
result "install-node.sh: TLS files and the etcd user for a secured etcd (key and env 0600, password not logged)" $? "$out"
"$ROOT/scripts/uninstall-node.sh" --root "$R3" >/dev/null 2>&1
left=$(cd "$R3" && find . -type f)
[ -z "$left" ]
result "uninstall-node.sh removes the etcd TLS files too" $? "$left"
rc=1
if ! out=$("$ROOT/scripts/install-node.sh" --root "$R3" --role node --bin-dir "$B" \
  --etcd-endpoints http://10.0.0.10:2379 --etcd-cafile "$SCRATCH/ca.pem" 2>&1); then
  grep -q 'use https:// endpoints' <<<"$out" && [ -z "$(cd "$R3" && find . -type f)" ] && rc=0
fi
result "install-node.sh: TLS files with an http:// endpoint are refused, nothing installed" "$rc" "$out"
# a second install (re-provisioning) must not lose track of anything
"$ROOT/scripts/install-node.sh" --root "$R" --role node --bin-dir "$B" >/dev/null 2>&1
out=$("$ROOT/scripts/uninstall-node.sh" --root "$R" 2>&1)
rc=$?
left=$(cd "$R" && find . -type f)
[ "$rc" = 0 ] && [ -z "$left" ]
result "uninstall-node.sh --root after two installs: no file left" $? "$out
$left"
rc=1
if ! out=$("$ROOT/scripts/install-node.sh" --root "$R" --role node --bin-dir "$SCRATCH/nowhere" 2>&1); then
  grep -q 'cargo build --release' <<<"$out" && rc=0
fi
result "install-node.sh: missing binaries are named, with the build command" "$rc" "$out"

# ---- the shared library ------------------------------------------------------------------
if need jq jq; then
  [ "$(cluster_netconf /run/s.env /var/lib/d /var/lib/i | jq -r '[.type, .subnetFile, .delegate.bridge, .ipam.dataDir] | join(" ")')" = \
    "vxmesh /run/s.env cni0 /var/lib/i" ]
  result "cluster_netconf: valid JSON for the vxmesh plugin" $?
  [ "$(cluster_netconf_from_conflist "$ROOT/cni-shim/examples/10-vxmesh.conflist" | jq -r '[.type, .name, .cniVersion] | join(" ")')" = \
    "vxmesh vxmesh 1.0.0" ]
  result "cluster_netconf_from_conflist: first plugin + name + cniVersion" $?
  [ "$(cluster_network_config 10.9.0.0/16 | jq -r '.Network + " " + .Backend.Type')" = "10.9.0.0/16 vxlan" ]
  result "cluster_network_config: flannel config, vxlan backend" $?
fi
rows="FROM TO ADDRESS RESULT
a-p1 b-p1 10.244.1.2 ok 0.3 ms
a-p1 b-p2 10.244.1.3 FAIL
b-p1 a-p1 10.244.2.2 ok 0.2 ms"
[ "$(cluster_count_rows <<<"$rows")" = "2 1" ] && [ "$(cluster_result_line 2 1)" = "2 passed, 1 failed" ]
result "cluster_count_rows / cluster_result_line" $?

echo "vagrant/check.sh: $(( $(date +%s) - t0 ))s$([ "$skipped" = 0 ] || echo ", $skipped group(s) skipped (above)")"
cluster_result_line "$pass" "$fail"
[ "$fail" -eq 0 ]
