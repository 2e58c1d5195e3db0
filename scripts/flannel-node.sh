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
#   Dual stack (EnableIPv6 with IPv6Network), as a dual-stack flanneld: a second device
#   flannel-v6.<VNI> (local = the interface's global IPv6 address, a random MAC, the kernel's
#   default MTU), the lease key `<v4>-<len>&<v6>-64` with PublicIPv6 and BackendV6Data, the
#   IPv6 subnet's first address /128 on the device, FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET
#   in the subnet file, and per dual-stack lease the IPv6 neighbour, fdb entry (dst
#   PublicIPv6) and onlink route on flannel-v6.<VNI>. Limits of this helper, not of flannel:
#   IPv6SubnetLen 64 only, an IPv6Network of /48 to /62, no IPv6SubnetMin/Max, no IPv6
#   DirectRouting. It turns IPv6 forwarding on (a Kubernetes dual-stack node has it on).
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

# IPv6 text <-> 8 decimal hextets (RFC 5952's shortest form on the way back, as Go prints).
expand6() {
  local a=$1 head tail i n x h=() t=() out=()
  if [[ $a == *::* ]]; then head=${a%%::*}; tail=${a#*::}; else head=$a; tail=; fi
  IFS=: read -r -a h <<<"$head"
  IFS=: read -r -a t <<<"$tail"
  n=$((8 - ${#h[@]} - ${#t[@]}))
  for x in "${h[@]}"; do out+=($((16#$x))); done
  for ((i = 0; i < n; i++)); do out+=(0); done
  for x in "${t[@]}"; do out+=($((16#$x))); done
  echo "${out[*]}"
}
compress6() {
  local h=("$@") best=-1 bestlen=0 i j text=""
  for ((i = 0; i < 8; i++)); do
    [ "${h[i]}" = 0 ] || continue
    for ((j = i; j < 8 && h[j] == 0; j++)); do :; done
    if [ $((j - i)) -gt "$bestlen" ]; then best=$i; bestlen=$((j - i)); fi
    i=$j
  done
  [ "$bestlen" -ge 2 ] || best=-1
  for ((i = 0; i < 8; i++)); do
    if [ "$i" = "$best" ]; then text+="::"; i=$((i + bestlen - 1)); continue; fi
    [ -z "$text" ] || [[ $text == *:: ]] || text+=":"
    text+=$(printf '%x' "${h[i]}")
  done
  echo "$text"
}
random_mac() {
  local b b0 rest
  b=$(od -An -N6 -tx1 /dev/urandom | tr -s ' ' | sed 's/^ //')
  read -r b0 rest <<<"$b"
  # shellcheck disable=SC2086  # one printf argument per byte
  echo "$(printf '%02x' $(((0x$b0 & 0xfe) | 0x02)))$(printf ':%s' $rest)"
}

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
enable6=$(jq -r "$JQ_CI ci(\"EnableIPv6\") // false" <<<"$cfg")
network6="" public_ip6="" net6=() net6_len=64
if [ "$enable6" = true ]; then
  network6=$(jq -r "$JQ_CI ci(\"IPv6Network\") // empty" <<<"$cfg")
  [ -n "$network6" ] || die "EnableIPv6 without an IPv6Network"
  len6=$(jq -r "$JQ_CI ci(\"IPv6SubnetLen\") // 0" <<<"$cfg")
  [ "$len6" = 0 ] || [ "$len6" = 64 ] || die "IPv6SubnetLen $len6: this helper does /64 only"
  net6_len=${network6#*/}
  if [ "$net6_len" -lt 48 ] || [ "$net6_len" -gt 62 ]; then
    die "IPv6Network $network6: this helper does /48 to /62 only"
  fi
  [ -z "$(jq -r "$JQ_CI (ci(\"IPv6SubnetMin\") // \"\"), (ci(\"IPv6SubnetMax\") // \"\")" <<<"$cfg" | tr -d '\n')" ] ||
    die "IPv6SubnetMin/Max: not done by this helper"
  read -r -a net6 <<<"$(expand6 "${network6%/*}")"
  public_ip6=$(ip -j -6 addr show dev "$IFACE" scope global | jq -r '[.[0].addr_info[]? | select(.local) | .local][0] // empty')
  [ -n "$public_ip6" ] || die "$IFACE has no global IPv6 address"
  log "dual stack: IPv6Network $network6, /64 subnets, PublicIPv6 $public_ip6"
fi
# The IPv6 subnet of index K (1 .. 2^(64-len)-1: flannel never hands out the first).
subnet6() {
  local h=("${net6[@]}")
  h[3]=$(((h[3] & ~((1 << (64 - net6_len)) - 1)) | $1)); h[4]=0; h[5]=0; h[6]=0; h[7]=0
  compress6 "${h[@]}"
}

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
dev6="flannel-v6.$vni" mac6=""
if [ "$enable6" = true ]; then
  if existing=$(ip -j -d link show "$dev6" 2>/dev/null); then
    if [ "$(jq -r '.[0].linkinfo.info_data.id' <<<"$existing")" = "$vni" ] &&
      [ "$(jq -r '.[0].linkinfo.info_data.port' <<<"$existing")" = "$port" ]; then
      mac6=$(jq -r '.[0].address' <<<"$existing")
    else
      ip link del "$dev6"
    fi
  fi
  if [ -z "$mac6" ]; then
    mac6=$(random_mac)
    ip link add "$dev6" address "$mac6" type vxlan id "$vni" local "$public_ip6" dev "$IFACE" \
      dstport "$port" nolearning
    log "created $dev6 (MAC $mac6)"
  fi
  echo 0 >"/proc/sys/net/ipv6/conf/$dev6/accept_ra" 2>/dev/null || true
  echo 1 >/proc/sys/net/ipv6/conf/all/forwarding
fi

# 3. The lease.
value="{\"PublicIP\":\"$public_ip\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":$vni,\"VtepMAC\":\"$mac\"}}"
if [ "$enable6" = true ]; then
  value="{\"PublicIP\":\"$public_ip\",\"PublicIPv6\":\"$public_ip6\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":$vni,\"VtepMAC\":\"$mac\"},\"BackendV6Data\":{\"VNI\":$vni,\"VtepMAC\":\"$mac6\"}}"
fi
# One line per lease: the key's IPv4 part, PublicIP, BackendType, VtepMAC, then the key's
# IPv6 part, PublicIPv6 and the IPv6 VtepMAC ("-" where the lease has no IPv6 half).
leases() {
  ectl get --prefix "$PREFIX/subnets/" -w json | jq -r "$JQ_CI"'
    .kvs[]? | (.key | @base64d | split("/") | last | split("&")) as $parts
    | ((.value | @base64d | fromjson?) // {}) as $v
    | [$parts[0], ($v | ci("PublicIP") // "-"), ($v | ci("BackendType") // "-"),
       ($v | ci("BackendData") | ci("VtepMAC") // "-"), ($parts[1] // "-"),
       ($v | ci("PublicIPv6") // "-"), ($v | ci("BackendV6Data") | ci("VtepMAC") // "-")] | @tsv'
}
in_pool() { local a; a=$(ip2int "${1%-*}"); [ "${1#*-}" = "$subnet_len" ] && [ "$a" -ge "$smin" ] && [ "$a" -le "$smax" ]; }
# KEY (the IPv4 part) as claimed: dual stack, with the first free IPv6 subnet.
full_key() {
  [ "$enable6" = true ] || { echo "$1"; return; }
  local taken6 k
  taken6=$(cut -f5 <<<"$list")
  for ((k = 1; k < (1 << (64 - net6_len)); k++)); do
    if ! grep -qx "$(subnet6 "$k")-64" <<<"$taken6"; then echo "$1&$(subnet6 "$k")-64"; return; fi
  done
  die "out of IPv6 subnets"
}
claim() { # KEY: create it if absent (compare-and-swap), under a 24 h etcd lease like flanneld's
  local key id out
  key=$PREFIX/subnets/$(full_key "$1")
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
  if claim "$k"; then own=$k; log "acquired lease $own"; fi
  list=$(leases)
done
[ -n "$own" ] || die "could not acquire a subnet lease"
own_ip=${own%-*}
own6=""
if [ "$enable6" = true ]; then
  list=$(leases)
  own6=$(awk -F'\t' -v k="$own" '$1 == k { print $5 }' <<<"$list")
  if [ -z "$own6" ] || [ "$own6" = - ]; then
    die "lease $own has no IPv6 subnet (an IPv4-only key from before EnableIPv6: delete it)"
  fi
fi

# 4. Device address, subnet file.
ip addr flush dev "$dev"
ip addr add "$own_ip/32" dev "$dev"
ip link set "$dev" up
if [ -n "$own6" ]; then
  ip -6 addr flush dev "$dev6" scope global
  ip -6 addr add "${own6%-*}/128" dev "$dev6"
  ip link set "$dev6" up
fi
mkdir -p "$(dirname "$SUBNET_FILE")"
{
  printf 'FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%s\n' "$(int2ip "$net")/$net_len" \
    "$(int2ip $(($(ip2int "$own_ip") + 1)))" "$subnet_len"
  if [ -n "$own6" ]; then
    read -r -a g6 <<<"$(expand6 "${own6%-*}")"
    g6[7]=$((g6[7] + 1))
    printf 'FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/64\n' "$network6" "$(compress6 "${g6[@]}")"
  fi
  printf 'FLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n' $((mtu - 50))
} >"$SUBNET_FILE.tmp"
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
  while IFS=$'\t' read -r key pip bt vmac key6 pip6 vmac6; do
    [ -n "$key" ] || continue
    if [ "$key" = "$own" ]; then mine=1; continue; fi
    if [ "$bt" != vxlan ]; then
      [ -n "${skipped[$key]:-}" ] || log "ignoring non-vxlan lease $key: type=$bt"
      skipped[$key]=1; continue
    fi
    if [ "$enable6" = true ] && [ "$key6" != - ] && [ "$pip6" != - ] && [ "$vmac6" != - ]; then
      want[$key]="$pip $vmac $key6 $pip6 $vmac6"
    else
      want[$key]="$pip $vmac - - -"
    fi
  done <<<"$list"
  [ "$mine" = 1 ] || die "Lease has been revoked ($own)"
  for k in "${!want[@]}"; do
    [ "${have[$k]:-}" != "${want[$k]}" ] || continue
    read -r pip vmac key6 pip6 vmac6 <<<"${want[$k]}"
    a=${k%-*}
    if [ -n "${have[$k]:-}" ]; then
      read -r _ _ okey6 opip6 omac6 <<<"${have[$k]}"
      if [ "$okey6" != - ] && [ "$okey6" != "$key6" ]; then
        ip -6 route del "${okey6%-*}/64" dev "$dev6" 2>/dev/null || true
        ip -6 neigh del "${okey6%-*}" dev "$dev6" 2>/dev/null || true
        bridge fdb del "$omac6" dev "$dev6" dst "$opip6" self 2>/dev/null || true
      fi
    fi
    if [ "$key6" != - ]; then
      a6=${key6%-*}
      log "adding IPv6 subnet: $key6 PublicIPv6: $pip6 VtepMAC: $vmac6"
      ip -6 neigh replace "$a6" lladdr "$vmac6" dev "$dev6" nud permanent
      bridge fdb replace "$vmac6" dev "$dev6" dst "$pip6" self permanent
      ip -6 route replace "$a6/64" via "$a6" dev "$dev6" onlink
    fi
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
    read -r pip vmac key6 pip6 vmac6 <<<"${have[$k]}"
    a=${k%-*}
    if [ "$key6" != - ]; then
      log "removing IPv6 subnet: $key6"
      ip -6 route del "${key6%-*}/64" dev "$dev6" 2>/dev/null || true
      bridge fdb del "$vmac6" dev "$dev6" dst "$pip6" self 2>/dev/null || true
      ip -6 neigh del "${key6%-*}" dev "$dev6" 2>/dev/null || true
    fi
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
