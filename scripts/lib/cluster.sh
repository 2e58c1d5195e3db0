# shellcheck shell=bash
# Steps shared by the two vxmesh labs and the node installer, so both labs exercise the same code:
#
#   scripts/lab.sh            netns lab: nodes, pods and etcd are network namespaces on one machine
#   vagrant/guest.sh          Vagrant lab, inside each VM (driven by vagrant/e2e.sh)
#   scripts/install-node.sh   the etcd role writes the network config with cluster_put_network_config
#
# Source it; it only defines functions and two defaults, and sets no shell options. Everything
# here runs on the machine (or in the namespace) it is called on: no ssh, no logging format —
# callers print their own log lines and decide what a failure means.
#
# Pods are network namespaces whose name is also their CNI container ID and their label in
# tables. A "pods file" lists one pod per line: `NODE POD ADDRESS` (NODE is any token naming
# the node, e.g. its index), sorted by node then pod.

CLUSTER_ETCD_PREFIX=${CLUSTER_ETCD_PREFIX:-/coreos.com/network}
CLUSTER_NETWORK=${CLUSTER_NETWORK:-10.244.0.0/16}

# cluster_network_config [NETWORK]: flannel's network config document (VXLAN backend).
cluster_network_config() {
  printf '{"Network":"%s","Backend":{"Type":"vxlan"}}\n' "${1:-$CLUSTER_NETWORK}"
}

# cluster_put_network_config NETWORK ETCDCTL...: writes the network config under
# $CLUSTER_ETCD_PREFIX/config with the given etcdctl command (a command or a function, with
# its --endpoints), e.g. `cluster_put_network_config 10.244.0.0/16 etcdctl --endpoints URL`.
cluster_put_network_config() {
  local network=$1; shift
  "$@" put "$CLUSTER_ETCD_PREFIX/config" "$(cluster_network_config "$network")" >/dev/null
}

# cluster_netconf SUBNET_FILE DATA_DIR IPAM_DATA_DIR: a single-plugin netconf for the vxmesh
# plugin, as a runtime hands it over (bridge cni0 as the delegate, default route via it).
cluster_netconf() {
  cat <<EOF
{"cniVersion":"1.0.0","name":"vxmesh","type":"vxmesh","subnetFile":"$1","dataDir":"$2","delegate":{"bridge":"cni0","isDefaultGateway":true},"ipam":{"dataDir":"$3"}}
EOF
}

# cluster_netconf_from_conflist CONFLIST: the netconf a runtime (libcni) derives from the first
# plugin of an installed conflist: the plugin's object plus the list's cniVersion and name.
cluster_netconf_from_conflist() {
  jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' "$1"
}

# cluster_cni CMD CONTAINER_ID NETNS_PATH PLUGIN CNI_PATH NETCONF [RUNNER...]: runs the CNI
# plugin exactly as a runtime would (environment + netconf on stdin, result on stdout).
# RUNNER, when given, prefixes the plugin (e.g. `ip netns exec NODE` in the netns lab).
cluster_cni() {
  local cmd=$1 id=$2 netns=$3 plugin=$4 cni_path=$5 conf=$6; shift 6
  printf '%s\n' "$conf" | CNI_COMMAND=$cmd CNI_CONTAINERID=$id CNI_NETNS=$netns CNI_IFNAME=eth0 \
    CNI_PATH=$cni_path "$@" "$plugin"
}

# cluster_pod_add POD PLUGIN CNI_PATH NETCONF [RUNNER...]: creates the pod's network namespace
# and attaches it through the CNI plugin (CNI ADD); prints the pod's IPv4 address. On failure
# the plugin's output (a CNI error) goes to stderr and the status is 1.
cluster_pod_add() {
  local pod=$1 plugin=$2 cni_path=$3 conf=$4 out; shift 4
  ip netns add "$pod" || return 1
  ip -n "$pod" link set lo up || return 1
  if ! out=$(cluster_cni ADD "$pod" "/run/netns/$pod" "$plugin" "$cni_path" "$conf" "$@"); then
    printf '%s\n' "$out" >&2
    return 1
  fi
  jq -er '.ips[0].address' <<<"$out" | cut -d/ -f1
}

# cluster_pod_del POD PLUGIN CNI_PATH NETCONF [RUNNER...]: CNI DEL, then removes the namespace.
cluster_pod_del() {
  local pod=$1 plugin=$2 cni_path=$3 conf=$4 rc=0; shift 4
  cluster_cni DEL "$pod" "/run/netns/$pod" "$plugin" "$cni_path" "$conf" "$@" >/dev/null || rc=1
  ip netns del "$pod" 2>/dev/null || true
  return "$rc"
}

# cluster_ping_header: the header of the ping table.
cluster_ping_header() {
  printf '%-22s %-22s %-15s %s\n' FROM TO ADDRESS RESULT
}

# cluster_ping_row FROM_POD TO_POD TO_ADDRESS: one ping from a pod's namespace, one table row
# (`ok <rtt> ms` or `FAIL`); status 0 when answered.
cluster_ping_row() {
  local src=$1 dst_name=$2 dst=$3 rtt
  if rtt=$(ip netns exec "$src" ping -c 1 -W 2 "$dst" </dev/null 2>/dev/null | sed -n 's/.*time=\([0-9.]*\) ms.*/\1 ms/p') && [ -n "$rtt" ]; then
    printf '%-22s %-22s %-15s ok %s\n' "$src" "$dst_name" "$dst" "$rtt"
  else
    printf '%-22s %-22s %-15s FAIL\n' "$src" "$dst_name" "$dst"
    return 1
  fi
}

# cluster_ping_pairs PODS_FILE [FROM_NODE]: every pod (only FROM_NODE's pods, when given) pings
# every pod on another node, one row each. Sets CLUSTER_PASS and CLUSTER_FAIL (row counts).
cluster_ping_pairs() {
  local file=$1 only=${2:-} sn sp dn dp da
  CLUSTER_PASS=0; CLUSTER_FAIL=0
  while read -r sn sp _ <&3; do
    [ -n "$sp" ] || continue
    if [ -n "$only" ] && [ "$sn" != "$only" ]; then continue; fi
    while read -r dn dp da <&4; do
      if [ -z "$dp" ] || [ "$dn" = "$sn" ]; then continue; fi
      if cluster_ping_row "$sp" "$dp" "$da"; then
        CLUSTER_PASS=$((CLUSTER_PASS + 1))
      else
        CLUSTER_FAIL=$((CLUSTER_FAIL + 1))
      fi
    done 4<"$file"
  done 3<"$file"
}

# cluster_count_rows: reads ping table rows (any mix of headers/logs) on stdin and prints
# "PASS FAIL" — for callers that gather rows printed elsewhere (e.g. inside VMs).
cluster_count_rows() {
  awk '$4 == "ok" {p++} $4 == "FAIL" {f++} END {printf "%d %d\n", p, f}'
}

# cluster_wait_ping FROM_POD ADDRESS TIMEOUT_S: pings once a second until one reply or the
# timeout; prints the seconds it took, status 1 on timeout.
cluster_wait_ping() {
  local src=$1 dst=$2 timeout=$3 start now
  start=$(date +%s)
  while :; do
    if ip netns exec "$src" ping -c 1 -W 1 "$dst" </dev/null >/dev/null 2>&1; then
      now=$(date +%s); echo $((now - start)); return 0
    fi
    now=$(date +%s)
    [ $((now - start)) -lt "$timeout" ] || return 1
    sleep 1
  done
}

# cluster_iperf CLIENT_POD SERVER_ADDRESS SECONDS [UNIT]: one TCP stream to an iperf3 server
# already listening on port 5201; prints the goodput in UNIT (Gbit, the default, or Mbit) with
# 2 decimals, status 1 on failure.
cluster_iperf() {
  local out div=1e9
  [ "${4:-Gbit}" != Mbit ] || div=1e6
  out=$(ip netns exec "$1" iperf3 -c "$2" -p 5201 -t "$3" -J </dev/null 2>/dev/null) || return 1
  jq -er --argjson div "$div" '.end.sum_received.bits_per_second / $div | . * 100 | floor / 100' <<<"$out"
}

# cluster_summary_header / cluster_summary_row NODE UNDERLAY STATUS_JSON: the node table;
# STATUS_JSON is `vxmeshctl status --json` (or `{}` when the agent did not answer).
cluster_summary_header() {
  printf '%-14s %-18s %-16s %-20s %s\n' NODE UNDERLAY SUBNET VTEP-MAC READY
}
cluster_summary_row() {
  printf '%-14s %-18s %-16s %-20s %s\n' "$1" "$2" \
    "$(jq -r '.node.subnet // .node.ipv6_subnet // "-"' <<<"$3")" "$(jq -r '.node.vtep_mac // "-"' <<<"$3")" \
    "$(jq -r '.ready // false' <<<"$3")"
}

# cluster_result_line PASS FAIL: the closing line every lab ends with.
cluster_result_line() {
  echo "$1 passed, $2 failed"
}
