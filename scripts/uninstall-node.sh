#!/usr/bin/env bash
# Reverse scripts/install-node.sh on this machine, from /var/lib/vxmesh/install-manifest:
#
#   node role: stop and disable vxmeshd (its lease in etcd expires after the lease TTL), remove its
#              TAP with the TAP's address, routes and neighbours (`vxmeshctl cleanup-tap`: the TAP is
#              persistent, a stop leaves it so restarts lose nothing), remove the masquerade/forward
#              rules (`vxmeshctl cleanup-iptables`), the subnet file, the unit, the env file, the
#              binaries, the CNI plugin, the conflist and the udev .link file; when no pod is left on cni0, also the
#              cni0 bridge and the CNI state (/var/lib/cni/vxmesh, host-local's
#              /var/lib/cni/networks/vxmesh) — with pods left they are kept and listed.
#   etcd role: remove the drop-in and /etc/vxmesh/etcd.env, put etcd.service back the way it was
#              before the install (enabled/active or not), delete /var/lib/etcd/vxmesh.
#
# Packages that install-node.sh added with apt-get are listed, not removed.
#
# Options:
#   --keep-etcd-data   keep /var/lib/etcd/vxmesh
#   --root DIR         uninstall from a staging tree made by install-node.sh --root DIR
set -euo pipefail

DEST=
KEEP_ETCD_DATA=0
while [ $# -gt 0 ]; do
  case $1 in
    --root) DEST=$(cd "${2:?}" && pwd); shift ;;
    --keep-etcd-data) KEEP_ETCD_DATA=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[uninstall-node] %s\n' "$*"; }
warn() { printf '[uninstall-node] WARNING: %s\n' "$*" >&2; }
[ -n "$DEST" ] || [ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
live() { [ -z "$DEST" ]; }   # acting on this machine (not a staging tree)

MANIFEST=/var/lib/vxmesh/install-manifest
ENV_FILE=/etc/vxmesh/vxmeshd.env
ETCD_DATA=/var/lib/etcd/vxmesh

roles=(); files=(); etcd_before=; apt_added=()
if [ -f "$DEST$MANIFEST" ]; then
  while read -r key rest; do
    case $key in
      role) roles+=("$rest") ;;
      file) files+=("$rest") ;;
      etcd-before) [ -n "$etcd_before" ] || etcd_before=$rest ;;
      apt-installed) read -ra _p <<<"$rest"; apt_added+=("${_p[@]}") ;;
    esac
  done <"$DEST$MANIFEST"
else
  # no manifest (an install from before manifests, or a hand install): the default paths
  warn "no $MANIFEST: removing the default install paths"
  roles=(node etcd)
  files=(/usr/local/bin/vxmeshd /usr/local/bin/vxmeshctl /usr/lib/cni/vxmesh /opt/cni/bin/vxmesh
         "$ENV_FILE" /etc/systemd/system/vxmeshd.service /etc/cni/net.d/10-vxmesh.conflist
         /etc/vxmesh/etcd.env /etc/systemd/system/etcd.service.d/10-vxmesh.conf
         /etc/systemd/network/10-vxmesh.link)
fi
has_role() { local r; for r in "${roles[@]}"; do [ "$r" = "$1" ] && return 0; done; return 1; }

# ---- node --------------------------------------------------------------------------------
if has_role node; then
  subnet_file=/run/flannel/subnet.env; tap=vxmesh0; dataplane=userspace
  if [ -f "$DEST$ENV_FILE" ]; then
    v=$(sed -n 's/^VXMESHD_SUBNET_FILE=//p' "$DEST$ENV_FILE" | tail -n 1); [ -z "$v" ] || subnet_file=$v
    v=$(sed -n 's/^VXMESHD_TAP_NAME=//p' "$DEST$ENV_FILE" | tail -n 1); [ -z "$v" ] || tap=$v
    v=$(sed -n 's/^VXMESHD_DATAPLANE=//p' "$DEST$ENV_FILE" | tail -n 1); [ -z "$v" ] || dataplane=$v
  fi
  if live; then
    if systemctl cat vxmeshd.service >/dev/null 2>&1; then
      systemctl disable --now vxmeshd.service >/dev/null 2>&1 || warn "stopping vxmeshd failed"
      log "vxmeshd stopped and disabled"
    fi
    # the TAP is persistent (a stop or a crash leaves it, with its routes, for the next start):
    # remove it; vxmeshctl refuses a link vxmesh did not make
    if ip link show "$tap" >/dev/null 2>&1; then
      if [ -x /usr/local/bin/vxmeshctl ]; then
        if /usr/local/bin/vxmeshctl cleanup-tap --tap-name "$tap"; then log "removed $tap"; else warn "$tap not removed"; fi
      else
        ip link del "$tap" && log "removed $tap"
      fi
    fi
    # --dataplane kernel: the agent leaves its vxlan device flannel.<VNI> (and, dual stack,
    # flannel-v6.<VNI>), with the routes through them, on stop, as flanneld does; this node ran
    # vxmeshd, so the devices are vxmeshd's
    if [ "$dataplane" = kernel ]; then
      for dev in $(ip -o link show type vxlan 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^flannel(-v6)?\.[0-9]+$'); do
        ip link del "$dev" && log "removed $dev (the kernel dataplane's vxlan device)"
      done
    elif [ -f "$subnet_file" ] && grep -q '^FLANNEL_IPV6_SUBNET=' "$subnet_file" && ! grep -q '^FLANNEL_SUBNET=' "$subnet_file"; then
      # an IPv6-only network: whatever --dataplane says, the agent ran flannel-v6.<VNI> alone
      # (no TAP) and leaves it on stop; its subnet file says so
      for dev in $(ip -o link show type vxlan 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^flannel-v6\.[0-9]+$'); do
        ip link del "$dev" && log "removed $dev (an IPv6-only network's vxlan device)"
      done
    fi
    if [ -x /usr/local/bin/vxmeshctl ] && command -v iptables >/dev/null; then
      /usr/local/bin/vxmeshctl cleanup-iptables >/dev/null && log "iptables, ip6tables: VXMESH-POSTRTG/VXMESH-FWD/VXMESH-NOTRACK removed; nftables tables vxmesh, vxmesh-vxlan6 removed"
    fi
    if ip link show cni0 >/dev/null 2>&1; then
      ports=$(ip -o link show master cni0 | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')
      if [ -z "$ports" ]; then
        ip link del cni0 && log "removed the cni0 bridge"
        rm -rf /var/lib/cni/vxmesh /var/lib/cni/networks/vxmesh
      else
        warn "pods still attached to cni0 ($ports): kept cni0, /var/lib/cni/vxmesh and /var/lib/cni/networks/vxmesh; delete the pods, then run this again"
      fi
    else
      rm -rf /var/lib/cni/vxmesh /var/lib/cni/networks/vxmesh
    fi
  fi
  rm -f "$DEST$subnet_file"
fi

# ---- etcd --------------------------------------------------------------------------------
if has_role etcd; then
  rm -f "$DEST/etc/vxmesh/etcd.env" "$DEST/etc/systemd/system/etcd.service.d/10-vxmesh.conf"
  # Reload first, then ask whether the unit exists: `systemctl cat` fails while the loaded
  # unit still lists the drop-in just removed, which used to skip this block and leave
  # etcd running with vxmesh's settings until the data directory below went away.
  if live && command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null &&
     [ "$(systemctl show -p LoadState --value etcd.service 2>/dev/null)" = loaded ]; then
    read -r was_enabled was_active <<<"${etcd_before:-disabled inactive}"
    if [ "$was_active" = active ]; then
      systemctl restart etcd.service || warn "etcd.service did not restart with its own config"
    else
      systemctl stop etcd.service || true
    fi
    [ "$was_enabled" = enabled ] || systemctl disable etcd.service >/dev/null 2>&1 || true
    log "etcd.service back to: ${etcd_before:-disabled inactive}"
  fi
  if [ "$KEEP_ETCD_DATA" = 0 ]; then rm -rf "$DEST$ETCD_DATA"; else log "kept $ETCD_DATA"; fi
fi

# ---- files -------------------------------------------------------------------------------
for f in "${files[@]}"; do
  rm -f "$DEST$f"
done
rm -f "$DEST$MANIFEST"
for d in /etc/vxmesh /etc/systemd/system/etcd.service.d /var/lib/vxmesh; do
  rmdir "$DEST$d" 2>/dev/null || true
done
if live && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl reset-failed vxmeshd.service >/dev/null 2>&1 || true
  if command -v udevadm >/dev/null; then udevadm control --reload || true; fi
fi
log "removed ${#files[@]} files"
if [ ${#apt_added[@]} -gt 0 ]; then
  mapfile -t apt_added < <(printf '%s\n' "${apt_added[@]}" | sort -u)
  log "packages install-node.sh added are still installed: ${apt_added[*]} (apt-get remove ${apt_added[*]})"
fi
