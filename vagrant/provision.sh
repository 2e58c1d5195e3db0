#!/usr/bin/env bash
# Vagrant shell provisioner (runs as root inside each VM): installs vxmesh with the bare-metal
# installer, scripts/install-node.sh, from the files the Vagrantfile rsyncs in:
#   /opt/vxmesh/src   scripts/, packaging/, the conflist, vagrant/guest.sh
#   /opt/vxmesh/bin   vxmeshd, vxmeshctl, vxmesh (built on the host)
#
# usage: provision.sh ROLES IP ETCD_URL [IFACE] [online|offline] [userspace|kernel]
#   ROLES  etcd, node or etcd,node;  IP  this VM's private address;  ETCD_URL  the cluster's etcd
#   IFACE  the agent's --iface (default: the interface holding IP);  offline: never run apt-get
#   userspace (default) or kernel: the agent's --dataplane
#
# A line starting with "VXMESH-CANNOT-RUN:" means this machine cannot host the lab at all
# (vagrant/e2e.sh reports it as such, not as a vxmesh failure).
set -euo pipefail

ROLES=${1:?roles}; IP=${2:?ip}; ETCD_URL=${3:?etcd url}; IFACE=${4:-}; MODE=${5:-online}; DATAPLANE=${6:-userspace}
SRC=/opt/vxmesh/src
BIN=/opt/vxmesh/bin
log() { printf '[provision %s] %s\n' "$(hostname)" "$*"; }
has_role() { [[ ",$ROLES," == *",$1,"* ]]; }
offline=(); [ "$MODE" != offline ] || offline=(--offline)

[ -f "$SRC/scripts/install-node.sh" ] || { log "ERROR: $SRC not synced (rsync synced folder)"; exit 1; }

# Lab tools for vagrant/guest.sh (pods, ping table, iperf3): in the offline box already.
missing=()
for c in jq iperf3; do command -v "$c" >/dev/null || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$MODE" != offline ] || { log "ERROR: the box lacks ${missing[*]} (build it with EXTRA_PACKAGES=...,${missing[*]// /,})"; exit 1; }
  log "apt-get install ${missing[*]} (lab tools)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The box's etcd-server package starts an etcd on every VM at boot; only the etcd host keeps it.
if ! has_role etcd && systemctl is-enabled etcd.service >/dev/null 2>&1; then
  systemctl disable --now etcd.service >/dev/null 2>&1 || true
  log "disabled the box's default etcd.service (this VM is not the etcd host)"
fi

if has_role etcd; then
  "$SRC/scripts/install-node.sh" --role etcd --etcd-ip "$IP" "${offline[@]}"
fi

if has_role node; then
  [ -x "$BIN/vxmeshd" ] || { log "ERROR: no binaries in $BIN: run 'cargo build --release' on the host (or set VXMESH_BIN_DIR)"; exit 1; }
  case $DATAPLANE in
    userspace|kernel) ;;
    *) log "ERROR: dataplane '$DATAPLANE': userspace or kernel"; exit 1 ;;
  esac
  # The userspace dataplane is a VXLAN on a TAP device; the kernel one needs the vxlan module.
  [ -c /dev/net/tun ] || modprobe tun 2>/dev/null || true
  if [ "$DATAPLANE" = kernel ] && ! modprobe vxlan 2>/dev/null && [ ! -d /sys/module/vxlan ]; then
    echo "VXMESH-CANNOT-RUN: no vxlan module in VM $(hostname) (kernel $(uname -r)); --dataplane kernel needs it"
    exit 1
  fi
  if [ "$DATAPLANE" = userspace ] && [ ! -c /dev/net/tun ]; then
    echo "VXMESH-CANNOT-RUN: no /dev/net/tun in VM $(hostname) (kernel $(uname -r) without the tun module); vxmeshd needs a TAP device"
    exit 1
  fi
  if [ -z "$IFACE" ]; then
    IFACE=$(ip -o -4 addr show | awk -v ip="$IP" 'index($4, ip "/") == 1 {print $2; exit}')
    [ -n "$IFACE" ] || { log "ERROR: no interface has $IP (ip -br addr: $(ip -br addr | tr '\n' ';'))"; exit 1; }
  fi
  # Nodes may come up before etcd has the network config (libvirt starts the VMs in parallel);
  # starting the agent before that would only time out its readiness wait.
  start=$(date +%s)
  until "$BIN/vxmeshctl" --etcd-endpoints "$ETCD_URL" config >/dev/null 2>&1; do
    waited=$(( $(date +%s) - start ))
    if [ "$waited" -ge 900 ]; then
      log "ERROR: no network config at $ETCD_URL after ${waited}s: $("$BIN/vxmeshctl" --etcd-endpoints "$ETCD_URL" config 2>&1 | tail -n 1)"
      exit 1
    fi
    [ $((waited % 30)) -ne 0 ] || log "waiting for the network config at $ETCD_URL (${waited}s)"
    sleep 2
  done
  log "network config found at $ETCD_URL after $(( $(date +%s) - start ))s"
  "$SRC/scripts/install-node.sh" --role node --bin-dir "$BIN" --etcd-endpoints "$ETCD_URL" \
    --iface "$IFACE" --env "VXMESHD_DATAPLANE=$DATAPLANE" "${offline[@]}"
  /usr/local/bin/vxmeshctl status || true
fi
