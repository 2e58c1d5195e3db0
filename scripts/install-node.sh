#!/usr/bin/env bash
# Install vxmesh on a real (or virtual) Linux machine with systemd. The Vagrant lab provisions
# its VMs with exactly this script; scripts/uninstall-node.sh reverses it.
#
#   sudo scripts/install-node.sh --role node --etcd-endpoints http://192.168.56.10:2379 --iface eth1
#   sudo scripts/install-node.sh --role etcd --etcd-ip 192.168.56.10
#
# Role node:  vxmeshd + vxmeshctl -> /usr/local/bin, the CNI plugin vxmesh -> the CNI bin dir
#             (/usr/lib/cni on Debian/Ubuntu, else /opt/cni/bin), /etc/vxmesh/vxmeshd.env (the
#             agent's VXMESHD_* flags), /etc/systemd/system/vxmeshd.service (enabled, started:
#             the start returns once the agent is ready), /etc/cni/net.d/10-vxmesh.conflist,
#             /etc/systemd/network/10-vxmesh.link (keeps udevd from replacing the TAP's VTEP
#             MAC: see packaging/systemd/10-vxmesh.link).
#             Needs the reference CNI plugins (bridge, host-local, portmap), iptables and nftables.
# Role etcd:  a single-member etcd from the distribution's etcd.service (Debian: etcd-server)
#             with the drop-in packaging/systemd/etcd.service.d/10-vxmesh.conf and
#             /etc/vxmesh/etcd.env: clients on --etcd-ip:2379 and 127.0.0.1:2379, data in
#             /var/lib/etcd/vxmesh; then writes the flannel network config if there is none.
# --role node,etcd does both (etcd first).
#
# Packages: whatever is missing is installed with apt-get when apt-get exists and --offline
# is not given; otherwise the script stops and lists what is missing. Everything installed
# (files, packages, the previous state of etcd.service) is recorded in
# /var/lib/vxmesh/install-manifest for the uninstaller.
#
# Options:
#   --role ROLES            node (default), etcd, or node,etcd
#   --bin-dir DIR           holds vxmeshd, vxmeshctl, vxmesh (default: <repo>/target/release)
#   --etcd-endpoints URLS   node: VXMESHD_ETCD_ENDPOINTS (default http://127.0.0.1:2379)
#   --iface IFACE           node: VXMESHD_IFACE, the underlay interface name or address
#                           (default: none, the agent uses the default route's interface)
#   --etcd-cafile FILE      node, for an etcd with TLS (https:// endpoints): the CA (PEM) that
#                           signed etcd's certificate -> /etc/vxmesh/etcd-ca.pem
#   --etcd-certfile FILE    node: client certificate (PEM) -> /etc/vxmesh/etcd-client.pem
#   --etcd-keyfile FILE     node: its private key -> /etc/vxmesh/etcd-client-key.pem (0600)
#   --etcd-username USER    node: etcd user (etcd with `auth enable`)
#   --etcd-password-file F  node: that user's password, read from a file (never a command line);
#                           stored in vxmeshd.env, which is always 0600
#   --env KEY=VALUE         node: one more line for vxmeshd.env (repeatable), e.g.
#                           --env VXMESHD_SUBNET_LEASE_TTL=30m
#   --cni-bin-dir DIR       where the CNI plugin goes (default: see above)
#   --etcd-ip IP            etcd: the private address clients use (default: loopback only)
#   --network CIDR          etcd: flannel Network written when no config exists (10.244.0.0/16)
#   --no-network-config     etcd: do not write the network config
#   --no-start              install and enable nothing, start nothing (no systemctl at all)
#   --offline               never run apt-get
#   --root DIR              install into DIR instead of / (a staging tree for tests and
#                           packaging): no apt-get, no systemctl, no etcd
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/cluster.sh
. "$HERE/lib/cluster.sh"

ROLES=node
BIN=$SRC/target/release
ETCD_ENDPOINTS=http://127.0.0.1:2379
IFACE=
EXTRA_ENV=()
ETCD_CAFILE='' ETCD_CERTFILE='' ETCD_KEYFILE='' ETCD_USERNAME='' ETCD_PASSWORD_FILE=''
CNI_BIN=
ETCD_IP=
NETWORK=$CLUSTER_NETWORK
NETWORK_CONFIG=1
START=1
OFFLINE=0
DEST=

log() { printf '[install-node] %s\n' "$*"; }
die() { printf '[install-node] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    --role) ROLES=${2:?}; shift ;;
    --bin-dir) BIN=${2:?}; shift ;;
    --etcd-endpoints) ETCD_ENDPOINTS=${2:?}; shift ;;
    --iface) IFACE=${2:?}; shift ;;
    --etcd-cafile) ETCD_CAFILE=${2:?}; shift ;;
    --etcd-certfile) ETCD_CERTFILE=${2:?}; shift ;;
    --etcd-keyfile) ETCD_KEYFILE=${2:?}; shift ;;
    --etcd-username) ETCD_USERNAME=${2:?}; shift ;;
    --etcd-password-file) ETCD_PASSWORD_FILE=${2:?}; shift ;;
    --env) [[ ${2:?} == *=* ]] || die "--env wants KEY=VALUE, got '$2'"; EXTRA_ENV+=("$2"); shift ;;
    --cni-bin-dir) CNI_BIN=${2:?}; shift ;;
    --etcd-ip) ETCD_IP=${2:?}; shift ;;
    --network) NETWORK=${2:?}; shift ;;
    --no-network-config) NETWORK_CONFIG=0 ;;
    --no-start) START=0 ;;
    --offline) OFFLINE=1 ;;
    --root) DEST=$(cd "${2:?}" && pwd); shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
  shift
done

role_node=0; role_etcd=0
IFS=, read -ra _roles <<<"$ROLES"
for r in "${_roles[@]}"; do
  case $r in node) role_node=1 ;; etcd) role_etcd=1 ;; *) die "unknown role '$r' (node, etcd)" ;; esac
done
[ -n "$DEST" ] && { OFFLINE=1; START=0; }
# etcd access: the same rules vxmeshd applies at start, checked before anything is installed.
if [ -n "$ETCD_CERTFILE$ETCD_KEYFILE" ] && { [ -z "$ETCD_CERTFILE" ] || [ -z "$ETCD_KEYFILE" ]; }; then
  die "--etcd-certfile and --etcd-keyfile go together (a client certificate needs its key)"
fi
if [ -n "$ETCD_CAFILE$ETCD_CERTFILE" ] && [[ $ETCD_ENDPOINTS != https://* ]]; then
  die "TLS files given but --etcd-endpoints is $ETCD_ENDPOINTS: use https:// endpoints for TLS"
fi
if { [ -n "$ETCD_USERNAME" ] && [ -z "$ETCD_PASSWORD_FILE" ]; } || { [ -z "$ETCD_USERNAME" ] && [ -n "$ETCD_PASSWORD_FILE" ]; }; then
  die "--etcd-username and --etcd-password-file go together"
fi
for f in "$ETCD_CAFILE" "$ETCD_CERTFILE" "$ETCD_KEYFILE" "$ETCD_PASSWORD_FILE"; do
  [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
done
ETCD_PASSWORD=
if [ -n "$ETCD_PASSWORD_FILE" ]; then
  ETCD_PASSWORD=$(head -n 1 "$ETCD_PASSWORD_FILE")
  [ -n "$ETCD_PASSWORD" ] || die "$ETCD_PASSWORD_FILE is empty (the first line is the password)"
  # systemd's EnvironmentFile would strip or interpret these; refuse rather than mangle.
  case $ETCD_PASSWORD in
    *\"*|*\'*|*\\*|" "*|*" ") die "the password in $ETCD_PASSWORD_FILE has quotes, backslashes or outer spaces, which systemd's EnvironmentFile would change: choose another" ;;
  esac
fi
[ -n "$DEST" ] || [ "$(id -u)" = 0 ] || die "must run as root"

# The CNI bin dir runtimes look in: Debian's containernetworking-plugins and podman use
# /usr/lib/cni; the upstream layout (containerd, CRI-O, kubelet) is /opt/cni/bin.
if [ -z "$CNI_BIN" ]; then
  if [ -f /etc/debian_version ]; then CNI_BIN=/usr/lib/cni; else CNI_BIN=/opt/cni/bin; fi
fi

MANIFEST=/var/lib/vxmesh/install-manifest
ENV_FILE=/etc/vxmesh/vxmeshd.env
ETCD_ENV=/etc/vxmesh/etcd.env
UNIT=/etc/systemd/system/vxmeshd.service
ETCD_DROPIN=/etc/systemd/system/etcd.service.d/10-vxmesh.conf
CONFLIST=/etc/cni/net.d/10-vxmesh.conflist
LINK=/etc/systemd/network/10-vxmesh.link
ETCD_DATA=/var/lib/etcd/vxmesh
installed=()

# put SRC DST MODE: install one file under $DEST and remember it for the uninstaller.
put() {
  install -D -m "$3" "$1" "$DEST$2"
  installed+=("$2")
}

# ---- packages ----------------------------------------------------------------------------
apt_pkgs=()
if [ "$role_node" = 1 ]; then
  for p in bridge host-local portmap; do
    [ -x "$CNI_BIN/$p" ] || [ -n "$DEST" ] || apt_pkgs+=(containernetworking-plugins)
  done
  # nft: the IPv6 ingress check of a dual-stack or IPv6-only node (docs/decisions/0031)
  for c in iptables iptables-restore ip nft; do
    case $c in ip) pkg=iproute2 ;; nft) pkg=nftables ;; *) pkg=iptables ;; esac
    command -v "$c" >/dev/null || [ -n "$DEST" ] || apt_pkgs+=("$pkg")
  done
fi
if [ "$role_etcd" = 1 ] && [ -z "$DEST" ]; then
  command -v etcd >/dev/null || apt_pkgs+=(etcd-server)
  command -v etcdctl >/dev/null || apt_pkgs+=(etcd-client)
fi
mapfile -t apt_pkgs < <(printf '%s\n' "${apt_pkgs[@]}" | sort -u | sed '/^$/d')
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$OFFLINE" = 1 ] || ! command -v apt-get >/dev/null; then
    die "missing packages: ${apt_pkgs[*]} (offline: put them in the image; Debian: apt-get install ${apt_pkgs[*]})"
  fi
  log "apt-get install ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

# ---- etcd --------------------------------------------------------------------------------
etcd_was=
if [ "$role_etcd" = 1 ]; then
  if [ -z "$DEST" ]; then
    systemctl cat etcd.service >/dev/null 2>&1 ||
      die "no etcd.service unit: install the distribution's etcd (Debian: etcd-server)"
    # how the uninstaller leaves etcd.service: as it was before us
    etcd_was="$(systemctl is-enabled etcd.service 2>/dev/null || true) $(systemctl is-active etcd.service 2>/dev/null || true)"
  fi
  clients=http://127.0.0.1:2379; advertise=http://127.0.0.1:2379
  if [ -n "$ETCD_IP" ]; then clients="http://$ETCD_IP:2379,$clients"; advertise="http://$ETCD_IP:2379"; fi
  tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
  cat >"$tmp" <<EOF
# written by scripts/install-node.sh --role etcd (read through etcd.service.d/10-vxmesh.conf)
ETCD_NAME=vxmesh
ETCD_DATA_DIR=$ETCD_DATA
ETCD_LISTEN_CLIENT_URLS=$clients
ETCD_ADVERTISE_CLIENT_URLS=$advertise
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER=vxmesh=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER_STATE=new
EOF
  put "$tmp" "$ETCD_ENV" 0644
  put "$SRC/packaging/systemd/etcd.service.d/10-vxmesh.conf" "$ETCD_DROPIN" 0644
  log "etcd: clients on $clients, data in $ETCD_DATA"
fi

# ---- node --------------------------------------------------------------------------------
if [ "$role_node" = 1 ]; then
  for b in vxmeshd vxmeshctl vxmesh; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: build with 'cargo build --release' (or pass --bin-dir)"
  done
  # A binary linked against a newer glibc than this machine's fails here, not in systemd.
  "$BIN/vxmeshd" --version >/dev/null 2>&1 ||
    die "$BIN/vxmeshd does not run here: $("$BIN/vxmeshd" --version 2>&1 | head -n 2) (build on a system with the same or an older glibc, e.g. Debian 12)"
  put "$BIN/vxmeshd" /usr/local/bin/vxmeshd 0755
  put "$BIN/vxmeshctl" /usr/local/bin/vxmeshctl 0755
  put "$BIN/vxmesh" "$CNI_BIN/vxmesh" 0755
  tmp2=$(mktemp); trap 'rm -f "${tmp:-}" "$tmp2"' EXIT
  {
    echo "# vxmeshd flags as environment variables (see vxmeshd --help); written by install-node.sh"
    echo "VXMESHD_ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
    [ -z "$IFACE" ] || echo "VXMESHD_IFACE=$IFACE"
    [ -z "$ETCD_CAFILE" ] || echo "VXMESHD_ETCD_CAFILE=/etc/vxmesh/etcd-ca.pem"
    [ -z "$ETCD_CERTFILE" ] || echo "VXMESHD_ETCD_CERTFILE=/etc/vxmesh/etcd-client.pem"
    [ -z "$ETCD_KEYFILE" ] || echo "VXMESHD_ETCD_KEYFILE=/etc/vxmesh/etcd-client-key.pem"
    [ -z "$ETCD_USERNAME" ] || echo "VXMESHD_ETCD_USERNAME=$ETCD_USERNAME"
    [ -z "$ETCD_PASSWORD" ] || echo "VXMESHD_ETCD_PASSWORD=$ETCD_PASSWORD"
    for kv in "${EXTRA_ENV[@]}"; do echo "$kv"; done
  } >"$tmp2"
  [ -z "$ETCD_CAFILE" ] || put "$ETCD_CAFILE" /etc/vxmesh/etcd-ca.pem 0644
  [ -z "$ETCD_CERTFILE" ] || put "$ETCD_CERTFILE" /etc/vxmesh/etcd-client.pem 0644
  [ -z "$ETCD_KEYFILE" ] || put "$ETCD_KEYFILE" /etc/vxmesh/etcd-client-key.pem 0600
  # 0600: it may hold VXMESHD_ETCD_PASSWORD.
  put "$tmp2" "$ENV_FILE" 0600
  put "$SRC/packaging/systemd/vxmeshd.service" "$UNIT" 0644
  put "$SRC/cni-shim/examples/10-vxmesh.conflist" "$CONFLIST" 0644
  tap=$(sed -n 's/^VXMESHD_TAP_NAME=//p' "$tmp2" | tail -n 1)
  case ${tap:-vxmesh0} in
    vxmesh*) put "$SRC/packaging/systemd/10-vxmesh.link" "$LINK" 0644 ;;
    *) sed "s/^OriginalName=vxmesh\*\$/OriginalName=vxmesh* $tap/" "$SRC/packaging/systemd/10-vxmesh.link" >"$tmp2.link"
       put "$tmp2.link" "$LINK" 0644; rm -f "$tmp2.link" ;;
  esac
  log "node: $(sed -n -e 's/^VXMESHD_ETCD_PASSWORD=.*/VXMESHD_ETCD_PASSWORD=<redacted>/' -e 's/^VXMESHD_/VXMESHD_/p' "$tmp2" | tr '\n' ' ')CNI plugin in $CNI_BIN"
fi

# ---- manifest ----------------------------------------------------------------------------
# Lines accumulate over re-installs: the uninstaller takes the union of roles, files and
# packages, and the FIRST etcd-before (the state before vxmesh ever touched etcd.service).
mkdir -p "$DEST${MANIFEST%/*}"
{
  echo "# vxmesh install manifest: read by scripts/uninstall-node.sh"
  grep -v '^#' "$DEST$MANIFEST" 2>/dev/null || true
  for r in "${_roles[@]}"; do echo "role $r"; done
  echo "cni-bin-dir $CNI_BIN"
  [ -z "$etcd_was" ] || echo "etcd-before $etcd_was"
  [ ${#apt_pkgs[@]} -eq 0 ] || echo "apt-installed ${apt_pkgs[*]}"
  for f in "${installed[@]}"; do echo "file $f"; done
} | awk '!seen[$0]++' >"$DEST$MANIFEST.new"
mv "$DEST$MANIFEST.new" "$DEST$MANIFEST"

[ "$START" = 1 ] || { log "installed (not started)"; exit 0; }

# ---- start -------------------------------------------------------------------------------
systemctl daemon-reload
if [ "$role_etcd" = 1 ]; then
  systemctl enable etcd.service >/dev/null 2>&1
  systemctl restart etcd.service
  for _ in $(seq 60); do etcdctl --endpoints http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break; sleep 1; done
  etcdctl --endpoints http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 ||
    die "etcd is not healthy after 60 s (journalctl -u etcd)"
  log "etcd healthy"
  if [ "$NETWORK_CONFIG" = 1 ]; then
    if [ -n "$(etcdctl --endpoints http://127.0.0.1:2379 get --print-value-only "$CLUSTER_ETCD_PREFIX/config")" ]; then
      log "network config exists, left as is: $(etcdctl --endpoints http://127.0.0.1:2379 get --print-value-only "$CLUSTER_ETCD_PREFIX/config")"
    else
      cluster_put_network_config "$NETWORK" etcdctl --endpoints http://127.0.0.1:2379
      log "network config written: $(cluster_network_config "$NETWORK")"
    fi
  fi
fi
if [ "$role_node" = 1 ]; then
  # udevd reads .link files at start and on reload: the TAP made below must see 10-vxmesh.link
  if command -v udevadm >/dev/null; then udevadm control --reload || true; fi
  systemctl enable vxmeshd.service >/dev/null 2>&1
  # restart, not start: a re-install must run the new binary. Returns when the agent is ready.
  if ! systemctl restart vxmeshd.service; then
    journalctl -u vxmeshd --no-pager -n 20 >&2 || true
    die "vxmeshd did not become ready (systemctl status vxmeshd; journalctl -u vxmeshd)"
  fi
  log "vxmeshd ready: $(grep -h '^FLANNEL_SUBNET' /run/flannel/subnet.env 2>/dev/null || echo '?')"
fi
