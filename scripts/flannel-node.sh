#!/usr/bin/env bash
# A node configured the way flanneld (etcd mode, vxlan backend) configures it — a test helper
# for mixed clusters, standing in for flanneld where its binary is not available. It uses only
# iproute2 (ip, bridge), etcdctl and jq, so it checks vxmesh against an independent
# implementation of flannel's recipe (flannel pkg/backend/vxlan, pkg/subnet):
#
#   1. read <prefix>/config (field names in any letter case, flannel's defaults);
#   2. create flannel.<VNI>: kernel vxlan, local <iface address>, dev <iface>, dstport <Port or
#      8472>, nolearning, a random locally administered MAC, MTU = (Backend.MTU or iface MTU) - 50
#      — or adopt an existing flannel.<VNI> with the same VNI and port, keeping its MAC, as
#      flanneld does;
#   3. acquire a lease: the one holding this node's PublicIP, else the subnet in the subnet file,
#      else a random free one; created with a compare-and-swap under a 24 h etcd lease, value in
#      flannel's exact JSON;
#   4. address <subnet>.0/32 on the device, up; write the subnet file (FLANNEL_IPMASQ=false,
#      flanneld's default);
#   5. follow the other leases (polling every 0.3 s): per vxlan lease, neighbour, fdb entry and
#      onlink route, in that order (`replace`); per vanished lease, the three deletes. With
#      Backend.DirectRouting, a lease whose PublicIP `ip route get` finds directly connected
#      (one route, no gateway) gets only `ip route replace <subnet> via <PublicIP>` instead, as
#      flanneld does. Like flanneld it does not delete the old fdb entry when a peer's VtepMAC
#      changes, and exits when its own lease disappears ("Lease has been revoked").
# SIGTERM leaves the device and routes in place (flanneld does the same).
#
#   flannel-node.sh --etcd-endpoints URL --iface IFACE --subnet-file PATH [--etcd-prefix P]
#                   [--ready-file PATH]     (touched after the first sync with the registry)
set -euo pipefail

ENDPOINTS=http://127.0.0.1:2379
PREFIX=/coreos.com/network
IFACE=
SUBNET_FILE=/run/flannel/subnet.env
READY_FILE=
while [ $# -gt 0 ]; do
  case $1 in
    --etcd-endpoints) ENDPOINTS=$2; shift 2 ;;
    --etcd-prefix) PREFIX=${2%/}; shift 2 ;;
    --iface) IFACE=$2; shift 2 ;;
    --subnet-file) SUBNET_FILE=$2; shift 2 ;;
    --ready-file) READY_FILE=$2; shift 2 ;;
    *) echo "flannel-node: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$IFACE" ] || { echo "flannel-node: --iface is required" >&2; exit 2; }

log() { printf '%s flannel-node: %s\n' "$(date +%H:%M:%S.%N | cut -c1-12)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ectl() { ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" "$@"; }
ip2int() { local IFS=.; local a b c d; read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }
int2ip() { echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"; }
# jq: a field looked up the way Go's encoding/json does (exact name first, then any case).
# shellcheck disable=SC2016  # jq code, not shell expansions
JQ_CI='def ci($k): if type == "object" then (if has($k) then .[$k] else (to_entries | map(select(.key | ascii_downcase == ($k | ascii_downcase))) | (.[0].value // null)) end) else null end;'

trap 'log "SIGTERM: exiting, leaving the device and routes in place"; exit 0' TERM INT

# 1. The network config.
cfg=""
for _ in $(seq 100); do
  cfg=$(ectl get "$PREFIX/config" --print-value-only 2>/dev/null) && [ -n "$cfg" ] && break
  sleep 0.2
done
[ -n "$cfg" ] || die "no network config at $PREFIX/config"
network=$(jq -r "$JQ_CI ci(\"Network\") // empty" <<<"$cfg")
[ -n "$network" ] || die "config has no Network"
net_len=${network#*/}
net=$(ip2int "${network%/*}")
subnet_len=$(jq -r "$JQ_CI ci(\"SubnetLen\") // 0" <<<"$cfg")
if [ "$subnet_len" = 0 ]; then
  if [ "$net_len" -le 22 ]; then subnet_len=24; else subnet_len=$((net_len + 2)); fi
fi
size=$((1 << (32 - subnet_len)))
smin=$(jq -r "$JQ_CI ci(\"SubnetMin\") // empty" <<<"$cfg")
smax=$(jq -r "$JQ_CI ci(\"SubnetMax\") // empty" <<<"$cfg")
if [ -n "$smin" ]; then smin=$(ip2int "$smin"); else smin=$((net + size)); fi
if [ -n "$smax" ]; then smax=$(ip2int "$smax"); else smax=$((net + (1 << (32 - net_len)) - size)); fi
btype=$(jq -r "$JQ_CI ci(\"Backend\") | ci(\"Type\") // \"udp\"" <<<"$cfg")
[ "${btype,,}" = vxlan ] || die "backend $btype: this helper implements flannel's vxlan backend only"
vni=$(jq -r "$JQ_CI ci(\"Backend\") | ci(\"VNI\") // 1" <<<"$cfg"); [ "$vni" != 0 ] || vni=1
port=$(jq -r "$JQ_CI ci(\"Backend\") | ci(\"Port\") // 0" <<<"$cfg"); [ "$port" != 0 ] || port=8472
iface_mtu=$(ip -j link show "$IFACE" | jq -r '.[0].mtu')
mtu=$(jq -r "$JQ_CI ci(\"Backend\") | ci(\"MTU\") // 0" <<<"$cfg"); [ "$mtu" != 0 ] || mtu=$iface_mtu
direct_routing=$(jq -r "$JQ_CI ci(\"Backend\") | ci(\"DirectRouting\") // false" <<<"$cfg")
public_ip=$(ip -j -4 addr show dev "$IFACE" | jq -r '.[0].addr_info[0].local // empty')
[ -n "$public_ip" ] || die "$IFACE has no IPv4 address"
log "config: Network $network SubnetLen $subnet_len pool $(int2ip "$smin")-$(int2ip "$smax") VNI $vni Port $port MTU $mtu DirectRouting $direct_routing PublicIP $public_ip"

# 2. The device.
dev="flannel.$vni"
mac=""
if existing=$(ip -j -d link show "$dev" 2>/dev/null); then
  if [ "$(jq -r '.[0].linkinfo.info_kind // ""' <<<"$existing")" = vxlan ] &&
    [ "$(jq -r '.[0].linkinfo.info_data.id' <<<"$existing")" = "$vni" ] &&
    [ "$(jq -r '.[0].linkinfo.info_data.port' <<<"$existing")" = "$port" ]; then
    mac=$(jq -r '.[0].address' <<<"$existing")
    log "$dev exists with a compatible configuration: using it (MAC $mac)"
  else
    log "$dev exists with an incompatible configuration: recreating it"
    ip link del "$dev"
  fi
fi
if [ -z "$mac" ]; then
  b=$(od -An -N6 -tx1 /dev/urandom | tr -s ' ' | sed 's/^ //')
  read -r b0 rest <<<"$b"
  # shellcheck disable=SC2086  # one printf argument per byte
  mac=$(printf '%02x' $(((0x$b0 & 0xfe) | 0x02)))$(printf ':%s' $rest)
  ip link add "$dev" address "$mac" mtu $((mtu - 50)) type vxlan id "$vni" local "$public_ip" \
    dev "$IFACE" dstport "$port" nolearning
  log "created $dev (MAC $mac, MTU $((mtu - 50)))"
fi
echo 0 >"/proc/sys/net/ipv6/conf/$dev/accept_ra" 2>/dev/null || true
echo 1 >/proc/sys/net/ipv4/ip_forward

# 3. The lease.
value="{\"PublicIP\":\"$public_ip\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":$vni,\"VtepMAC\":\"$mac\"}}"
leases() {
  ectl get --prefix "$PREFIX/subnets/" -w json | jq -r "$JQ_CI"'
    .kvs[]? | (.key | @base64d | split("/") | last | split("&") | first) as $k
    | ((.value | @base64d | fromjson?) // {}) as $v
    | [$k, ($v | ci("PublicIP") // "-"), ($v | ci("BackendType") // "-"),
       ($v | ci("BackendData") | ci("VtepMAC") // "-")] | @tsv'
}
in_pool() { local a; a=$(ip2int "${1%-*}"); [ "${1#*-}" = "$subnet_len" ] && [ "$a" -ge "$smin" ] && [ "$a" -le "$smax" ]; }
claim() { # KEY: create it if absent (compare-and-swap), under a 24 h etcd lease like flanneld's
  local key=$PREFIX/subnets/$1 id out
  id=$(ectl lease grant 86400 | awk '{print $2}')
  out=$(printf 'create("%s") = "0"\n\nput --lease=%s %s %s\n\n\n' "$key" "$id" "$key" "$(jq -Rn --arg v "$value" '$v')" | ectl txn)
  [ "$(head -n1 <<<"$out")" = SUCCESS ]
}
own=""
list=$(leases)
while IFS=$'\t' read -r key pip _ _; do
  if [ "$pip" = "$public_ip" ] && in_pool "$key"; then own=$key; fi
done <<<"$list"
if [ -n "$own" ]; then
  id=$(ectl lease grant 86400 | awk '{print $2}')
  ectl put --lease="$id" "$PREFIX/subnets/$own" "$value" >/dev/null
  log "renewed the existing lease for $public_ip: $own"
fi
if [ -z "$own" ] && [ -f "$SUBNET_FILE" ]; then
  prev=$(sed -n 's/^FLANNEL_SUBNET=\(.*\)/\1/p' "$SUBNET_FILE")
  if [ -n "$prev" ]; then
    prev="$(int2ip $(($(ip2int "${prev%/*}") & ~(size - 1))))-${prev#*/}"
    if in_pool "$prev" && claim "$prev"; then own=$prev; log "reclaimed $own from $SUBNET_FILE"; fi
  fi
fi
for _ in $(seq 10); do
  [ -z "$own" ] || break
  taken=$(cut -f1 <<<"$list")
  free=()
  for ((a = smin; a <= smax && ${#free[@]} < 100; a += size)); do
    k="$(int2ip "$a")-$subnet_len"
    grep -qx "$k" <<<"$taken" || free+=("$k")
  done
  [ ${#free[@]} -gt 0 ] || die "out of subnets"
  k=${free[RANDOM % ${#free[@]}]}
  if claim "$k"; then own=$k; log "acquired lease $own"; else list=$(leases); fi
done
[ -n "$own" ] || die "could not acquire a subnet lease"
own_ip=${own%-*}

# 4. Device address, subnet file.
ip addr flush dev "$dev"
ip addr add "$own_ip/32" dev "$dev"
ip link set "$dev" up
mkdir -p "$(dirname "$SUBNET_FILE")"
printf 'FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%s\nFLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n' \
  "$(int2ip "$net")/$net_len" "$(int2ip $(($(ip2int "$own_ip") + 1)))" "$subnet_len" $((mtu - 50)) \
  >"$SUBNET_FILE.tmp"
mv "$SUBNET_FILE.tmp" "$SUBNET_FILE"
log "wrote $SUBNET_FILE; following leases"

# 5. Follow the others.
# flannel's ip.DirectRouting: DirectRouting on, and `ip route get <PublicIP>` is a single route
# without a gateway (directly connected).
direct() {
  [ "$direct_routing" = true ] || return 1
  local r; r=$(ip -j route get "$1" 2>/dev/null) || return 1
  [ "$(jq 'length' <<<"$r")" = 1 ] && [ "$(jq -r '.[0].gateway // empty' <<<"$r")" = "" ]
}
declare -A have=() skipped=()
while :; do
  if ! list=$(leases); then sleep 1; continue; fi
  declare -A want=()
  mine=0
  while IFS=$'\t' read -r key pip bt vmac; do
    [ -n "$key" ] || continue
    if [ "$key" = "$own" ]; then mine=1; continue; fi
    if [ "$bt" != vxlan ]; then
      [ -n "${skipped[$key]:-}" ] || log "ignoring non-vxlan lease $key: type=$bt"
      skipped[$key]=1; continue
    fi
    want[$key]="$pip $vmac"
  done <<<"$list"
  [ "$mine" = 1 ] || die "Lease has been revoked ($own)"
  for k in "${!want[@]}"; do
    [ "${have[$k]:-}" != "${want[$k]}" ] || continue
    read -r pip vmac <<<"${want[$k]}"
    a=${k%-*}
    if direct "$pip"; then
      log "Adding direct route to subnet: $k PublicIP: $pip"
      ip route replace "$a/${k#*-}" via "$pip"
    else
      log "adding subnet: $k PublicIP: $pip VtepMAC: $vmac"
      ip neigh replace "$a" lladdr "$vmac" dev "$dev" nud permanent
      bridge fdb replace "$vmac" dev "$dev" dst "$pip" self permanent
      ip route replace "$a/${k#*-}" via "$a" dev "$dev" onlink
    fi
    have[$k]=${want[$k]}
  done
  for k in "${!have[@]}"; do
    [ -z "${want[$k]:-}" ] || continue
    read -r pip vmac <<<"${have[$k]}"
    a=${k%-*}
    if direct "$pip"; then
      log "Removing direct route to subnet: $k PublicIP: $pip"
      ip route del "$a/${k#*-}" via "$pip" 2>/dev/null || true
    else
      log "removing subnet: $k PublicIP: $pip VtepMAC: $vmac"
      ip neigh del "$a" dev "$dev" 2>/dev/null || true
      bridge fdb del "$vmac" dev "$dev" dst "$pip" self 2>/dev/null || true
      ip route del "$a/${k#*-}" via "$a" dev "$dev" onlink 2>/dev/null || true
    fi
    unset "have[$k]"
  done
  unset want
  [ -z "$READY_FILE" ] || [ -f "$READY_FILE" ] || touch "$READY_FILE"
  sleep 0.3
done
