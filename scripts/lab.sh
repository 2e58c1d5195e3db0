#!/usr/bin/env bash
# vxmesh netns lab: a multi-node cluster on one machine, the twin of the Vagrant lab.
#
#   scripts/lab.sh up       create the lab, start etcd + vxmeshd, create pods, check it
#   scripts/lab.sh check    all-pairs cross-node pod ping + a short iperf3, summary table
#   scripts/lab.sh status   what runs, and how to explore it
#   scripts/lab.sh down     remove every namespace, process and file the lab made
#
# Topology (PREFIX = $VXLAB_PREFIX, default "vxlab"; everything lives in namespaces
# named after it, so two labs with different prefixes coexist):
#   ${PREFIX}-sw      the underlay switch: bridge br0
#   ${PREFIX}-etcd    etcd on 192.168.100.2:2379 (VXLAB_ETCD_MEMBERS=3: members on .2, .3, .4)
#   ${PREFIX}-n<i>    node i: eth0 = 192.168.100.1<i>/24, vxmeshd (or a flannel node), bridge cni0
#                     (with VXLAB_L2, a node on L2 segment s > 1 is 192.168.(99+s).1<i>/24 on
#                     bridge br<s-1>, and the switch namespace routes between the segments)
#   ${PREFIX}-n<i>-p<j>  pod j of node i: eth0 on cni0, address from the node's subnet
# Nothing is configured in the root namespace beyond creating these namespaces.
#
# Knobs: VXLAB_PREFIX, VXLAB_NODES (3), VXLAB_PODS (2 per node), VXLAB_BIN (directory
# holding vxmeshd, vxmeshctl, vxmesh; default target/release), VXLAB_STATE (files,
# default /tmp/vxlab-$PREFIX), VXLAB_IPERF_SECONDS (3), VXLAB_CNI_PATH (reference CNI
# plugins, default /usr/lib/cni), VXLAB_AGENT_ARGS (extra vxmeshd flags),
# VXLAB_DATAPLANES (one word per node, default all "userspace": "userspace" or "kernel" run
# vxmeshd with that --dataplane; "userspace6" the userspace dataplane with its threads carrying
# IPv6 too (--ipv6-dataplane userspace; with VXLAB_IPV6=1); "flannel" runs scripts/flannel-node.sh, a node configured the
# way flanneld's vxlan backend configures it — a mixed cluster, e.g. "userspace kernel flannel"),
# VXLAB_BACKEND (the config's Backend object, default {"Type":"vxlan"}),
# VXLAB_L2 (one number per node, default all 1: the L2 segment the node's eth0 is on; segments
# other than 1 are separate subnets 192.168.(99+s).0/24 joined through a router in the switch
# namespace, e.g. "1 1 2" for two nodes on one L2 network and a third behind a router),
# VXLAB_ETCD_SECURE=1 (etcd as production runs it: https only, client certificates required,
# `auth enable` with a user for the nodes; the lab's CA, certificates and passwords are made in
# $VXLAB_STATE/pki, and nodes get them as VXMESHD_ETCD_* variables),
# VXLAB_ETCD_MEMBERS (1; 3 runs a 3-member cluster, every agent given all three endpoints),
# VXLAB_LEASE_TTL (vxmeshd --subnet-lease-ttl, default 60s),
# VXLAB_IPV6=1 (dual stack: every node's eth0 also gets fd00:64::<10+i>/64, the config adds
# "EnableIPv6" with IPv6Network fd00:10:244::/56; pods get an IPv6 address too, on either
# dataplane, and `check` pings every IPv6 pod pair as well; VXLAB_IPV6=only: an IPv6-only pod
# network, "EnableIPv4": false, pods get IPv6 addresses alone and `check` pings and runs iperf3
# over IPv6; the nodes' eth0 keeps its IPv4 address to reach etcd), VXLAB_PODMAN_ATTACH (auto: podman's
# CNI backend when it has one; netns: a namespace attached by CNI ADD that podman joins; see
# cmd_podman).
#   scripts/lab.sh etcdctl ARGS runs etcdctl against the lab's etcd (as root, over TLS if secure).
#   scripts/lab.sh start-agent N [DATAPLANE] / restart-agent N [DATAPLANE] switch node N.
#   Faults: kill-agent N (SIGKILL, nothing cleaned up), cut-etcd N / heal-etcd N (a firewall
#   rule in node N's namespace drops its etcd traffic), stop-etcd M (SIGKILL etcd member M),
#   start-etcd M (restart it on its data), etcd-leader (the leader's member number).
#   scripts/lab.sh handover-agent N starts a second vxmeshd on node N that takes the running one's
#   dataplane over (the old one exits); kill-agent N SIGKILLs node N's agent (a crash: the TAP and
#   its routes stay); exec-agent N runs node N's agent in the foreground (tests).
#
# The steps this lab shares with the Vagrant lab (network config, pods through the CNI plugin,
# the ping table, iperf3, the summary) live in scripts/lib/cluster.sh.
set -euo pipefail

PREFIX=${VXLAB_PREFIX:-vxlab}
NODES=${VXLAB_NODES:-3}
PODS=${VXLAB_PODS:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${VXLAB_BIN:-$ROOT/target/release}
BIN=$(cd "$BIN" 2>/dev/null && pwd || echo "$BIN")  # absolute: symlinks and other namespaces use it
STATE=${VXLAB_STATE:-/tmp/vxlab-$PREFIX}
IPERF_SECONDS=${VXLAB_IPERF_SECONDS:-3}
CNI_PATH_REF=${VXLAB_CNI_PATH:-/usr/lib/cni}
AGENT_ARGS=${VXLAB_AGENT_ARGS:-}
read -r -a DATAPLANES <<<"${VXLAB_DATAPLANES:-}"
read -r -a L2S <<<"${VXLAB_L2:-}"
BACKEND=${VXLAB_BACKEND:-}
# shellcheck source-path=SCRIPTDIR source=lib/cluster.sh
. "$ROOT/scripts/lib/cluster.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pki.sh
. "$ROOT/scripts/lib/pki.sh"
NETWORK=10.244.0.0/16
ETCD_IP=192.168.100.2
# etcd members: 1 (default) or 3, remembered by a running lab.
MEMBERS=${VXLAB_ETCD_MEMBERS:-$(cat "$STATE/etcd-members" 2>/dev/null || echo 1)}
member_ip() { echo "192.168.100.$((1 + $1))"; }
ETCD=$(for m in $(seq "$MEMBERS"); do printf 'http://%s:2379,' "$(member_ip "$m")"; done)
ETCD=${ETCD%,}
LEASE_TTL=${VXLAB_LEASE_TTL:-60s}
IPV6=${VXLAB_IPV6:-$(cat "$STATE/ipv6" 2>/dev/null || echo 0)}
NETWORK6=fd00:10:244::/56
SECURE=${VXLAB_ETCD_SECURE:-0}
# A lab brought up secure stays secure: its access settings are in $STATE/etcd.env.
# shellcheck disable=SC1091  # written by secure_etcd_files
if [ -f "$STATE/etcd.env" ]; then . "$STATE/etcd.env"; fi
SW="$PREFIX-sw"
ETCD_NS="$PREFIX-etcd"

log() { printf '%s [lab %s] %s\n' "$(date +%H:%M:%S)" "$PREFIX" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
node() { echo "$PREFIX-n$1"; }
pod() { echo "$PREFIX-n$1-p$2"; }
# Node i's L2 segment: as the lab was brought up, else from VXLAB_L2 (default 1).
segment() { cat "$STATE/n$1/l2" 2>/dev/null || echo "${L2S[$(($1 - 1))]:-1}"; }
node_ip() { echo "192.168.$((99 + $(segment "$1"))).$((10 + $1))"; }
node_ip6() { echo "fd00:64::$((10 + $1))"; }
bridge_of() { echo "br$(($(segment "$1") - 1))"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

need() {
  local missing=()
  for c in ip etcd etcdctl iperf3 ping jq; do command -v "$c" >/dev/null || missing+=("$c"); done
  for b in vxmeshd vxmeshctl vxmesh; do [ -x "$BIN/$b" ] || missing+=("$BIN/$b"); done
  for p in bridge host-local; do [ -x "$CNI_PATH_REF/$p" ] || missing+=("$CNI_PATH_REF/$p"); done
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (run scripts/install-deps.sh and cargo build --release)"
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
}

# etcdctl as the lab's administrator (TLS and root's password from $STATE/etcd.env when secure).
etcdctl_lab() {
  in_ns "$ETCD_NS" env ETCDCTL_API=3 ${LAB_ETCDCTL_ENV:+"${LAB_ETCDCTL_ENV[@]}"} \
    etcdctl --endpoints "$ETCD" "$@"
}

# Secure mode: a CA, etcd's server certificate (for $ETCD_IP), one client certificate for the
# nodes, and passwords for etcd's root and for the nodes' user; $STATE/etcd.env records them.
secure_etcd_files() {
  local d="$STATE/pki"
  command -v openssl >/dev/null || die "VXLAB_ETCD_SECURE=1 needs openssl (scripts/install-deps.sh)"
  pki_make "$d" "$ETCD_IP" 127.0.0.1 || die "could not make the lab's certificates (see $d/openssl.log)"
  local root_pw node_pw
  root_pw=$(openssl rand -hex 12); node_pw=$(openssl rand -hex 12)
  umask 077
  cat >"$STATE/etcd.env" <<EOF
# written by lab.sh up (VXLAB_ETCD_SECURE=1): how this lab reaches its etcd
ETCD=https://$ETCD_IP:2379
LAB_ETCD_SERVER_ARGS=(--cert-file "$d/server.pem" --key-file "$d/server-key.pem" --trusted-ca-file "$d/ca.pem" --client-cert-auth)
LAB_ETCD_ROOT_PASSWORD=$root_pw
LAB_ETCD_NODE_PASSWORD=$node_pw
LAB_ETCDCTL_ENV=(ETCDCTL_CACERT="$d/ca.pem" ETCDCTL_CERT="$d/client.pem" ETCDCTL_KEY="$d/client-key.pem" ETCDCTL_USER="root:$root_pw")
LAB_NODE_ENV=(VXMESHD_ETCD_CAFILE="$d/ca.pem" VXMESHD_ETCD_CERTFILE="$d/client.pem" VXMESHD_ETCD_KEYFILE="$d/client-key.pem" VXMESHD_ETCD_USERNAME=vxmesh VXMESHD_ETCD_PASSWORD="$node_pw" ETCDCTL_CACERT="$d/ca.pem" ETCDCTL_CERT="$d/client.pem" ETCDCTL_KEY="$d/client-key.pem" ETCDCTL_USER="vxmesh:$node_pw")
EOF
  umask 022
  # shellcheck disable=SC1091
  . "$STATE/etcd.env"
}

# Secure mode, once etcd runs: root and a "vxmesh" user with readwrite on the prefix, then auth.
secure_etcd_auth() {
  # Before `auth enable` only the certificate counts: the TLS part of LAB_ETCDCTL_ENV, no user.
  pre() { in_ns "$ETCD_NS" env ETCDCTL_API=3 "${LAB_ETCDCTL_ENV[@]:0:3}" etcdctl --endpoints "$ETCD" "$@" >/dev/null; }
  pre user add "root:$LAB_ETCD_ROOT_PASSWORD"
  pre user grant-role root root
  pre role add vxmesh
  pre role grant-permission vxmesh --prefix=true readwrite "$CLUSTER_ETCD_PREFIX/"
  pre user add "vxmesh:$LAB_ETCD_NODE_PASSWORD"
  pre user grant-role vxmesh vxmesh
  pre auth enable
  log "etcd secured: https with client certificates (CA $STATE/pki/ca.pem), auth enabled, nodes use etcd user vxmesh"
}

# Starts a daemon inside a namespace, detached, with its pid in $STATE/<name>.pid.
spawn() {
  local name=$1 ns=$2; shift 2
  ip netns exec "$ns" setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

# etcd member M: the single member keeps the names it always had (etcd.pid, $STATE/etcd); in a
# 3-member cluster member M is etcd-mM on member_ip M. Restarting a member reuses its data
# directory (the --initial-* flags are ignored then).
etcd_name() { if [ "$MEMBERS" = 1 ]; then echo etcd; else echo "etcd-m$1"; fi; }
start_etcd_member() {
  local m=$1 ip url peers="" k
  ip=$(member_ip "$m"); url="http://$ip:2379"
  if [ "$MEMBERS" = 1 ]; then
    # shellcheck disable=SC2086  # a single URL, or https:// in secure mode
    spawn etcd "$ETCD_NS" etcd --name "$PREFIX" --data-dir "$STATE/etcd" \
      --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
      --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
      --initial-cluster "$PREFIX=http://127.0.0.1:2380" ${LAB_ETCD_SERVER_ARGS:+"${LAB_ETCD_SERVER_ARGS[@]}"}
    return
  fi
  for k in $(seq "$MEMBERS"); do peers="$peers,$PREFIX-e$k=http://$(member_ip "$k"):2380"; done
  spawn "etcd-m$m" "$ETCD_NS" etcd --name "$PREFIX-e$m" --data-dir "$STATE/etcd-m$m" \
    --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "${peers#,}" --initial-cluster-token "$PREFIX" --initial-cluster-state new
}

# SIGKILL etcd member M (a crash: no graceful leadership transfer).
stop_etcd_member() {
  local pidf; pidf="$STATE/$(etcd_name "$1").pid"
  [ -f "$pidf" ] || die "etcd member $1 is not running"
  kill -KILL "$(cat "$pidf")" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidf"
}

# The member number of the etcd leader (empty when there is none).
etcd_leader() {
  local m st
  for m in $(seq "$MEMBERS"); do
    st=$(in_ns "$ETCD_NS" env ETCDCTL_API=3 etcdctl --endpoints "http://$(member_ip "$m"):2379" \
      --dial-timeout 1s --command-timeout 2s endpoint status -w json 2>/dev/null) || continue
    if [ "$(jq -r '.[0].Status.header.member_id == .[0].Status.leader' <<<"$st")" = true ]; then
      echo "$m"; return
    fi
  done
}

# A firewall rule in node N's namespace that drops its etcd traffic both ways (a partition
# between one node and etcd; the overlay itself keeps working).
ETCD_CUT=(-p tcp -m multiport --ports 2379 -j DROP)
cut_etcd() {
  in_ns "$(node "$1")" iptables -I OUTPUT "${ETCD_CUT[@]}"
  in_ns "$(node "$1")" iptables -I INPUT "${ETCD_CUT[@]}"
}
heal_etcd() {
  while in_ns "$(node "$1")" iptables -D OUTPUT "${ETCD_CUT[@]}" 2>/dev/null; do :; done
  while in_ns "$(node "$1")" iptables -D INPUT "${ETCD_CUT[@]}" 2>/dev/null; do :; done
}

# Node i's dataplane: userspace, kernel (vxmeshd --dataplane), userspace6 (--dataplane userspace
# --ipv6-dataplane userspace) or flannel (scripts/flannel-node.sh).
dataplane() { cat "$STATE/n$1/dataplane" 2>/dev/null || echo userspace; }

# dataplane_flags N: node N's vxmeshd flags for its dataplane.
dataplane_flags() {
  case $(dataplane "$1") in
    userspace6) echo "--dataplane userspace --ipv6-dataplane userspace" ;;
    *) echo "--dataplane $(dataplane "$1")" ;;
  esac
}

# agent_cmd N: the command that runs node N's vxmeshd (userspace or kernel) inside its namespace.
agent_cmd() {
  local i=$1
  # shellcheck disable=SC2206,SC2207  # AGENT_ARGS and the dataplane's flags are lists of flags
  AGENT=(ip netns exec "$(node "$i")" "$BIN/vxmeshd" --etcd-endpoints "$ETCD" --iface eth0
    --subnet-file "$STATE/n$i/subnet.env" --subnet-lease-ttl "$LEASE_TTL" $(dataplane_flags "$i") $AGENT_ARGS)
}

# start_agent N [DATAPLANE]: starts node N's agent, with DATAPLANE (remembered) or the last one.
start_agent() {
  local i=$1 n; n=$(node "$i")
  [ -z "${2:-}" ] || echo "$2" >"$STATE/n$i/dataplane"
  # Secure mode: TLS files and the nodes' etcd user reach the agent through its environment
  # (as from the systemd unit's EnvironmentFile), never its command line.
  (
    if [ -n "${LAB_NODE_ENV:-}" ]; then export "${LAB_NODE_ENV[@]}"; fi
    case $(dataplane "$i") in
      userspace|kernel|userspace6)
        agent_cmd "$i"
        spawn "vxmeshd-n$i" "$n" "${AGENT[@]:4}" ;;
      flannel)
        rm -f "$STATE/n$i/flannel.ready"
        spawn "flanneld-n$i" "$n" "$ROOT/scripts/flannel-node.sh" --etcd-endpoints "$ETCD" \
          --iface eth0 --subnet-file "$STATE/n$i/subnet.env" --ready-file "$STATE/n$i/flannel.ready" ;;
      *) die "node $i: unknown dataplane $(dataplane "$i") (userspace, kernel, userspace6 or flannel)" ;;
    esac
  )
}

# handover_agent N: starts a second vxmeshd on node N while the first runs; the new one takes the
# dataplane over (TAP queues, sockets, forwarding table, lease) and the old one exits.
handover_agent() {
  local i=$1 old new t0
  case $(dataplane "$i") in userspace|userspace6) ;; *) die "handover-agent: node $i runs the $(dataplane "$i") dataplane" ;; esac
  old=$(cat "$STATE/vxmeshd-n$i.pid" 2>/dev/null) || die "no agent runs on node $i"
  t0=$(date +%s.%N)
  mv "$STATE/vxmeshd-n$i.log" "$STATE/vxmeshd-n$i.$old.log"
  start_agent "$i"
  new=$(cat "$STATE/vxmeshd-n$i.pid")
  for _ in $(seq 150); do running "$old" || break; sleep 0.1; done
  if running "$old"; then
    tail -n 20 "$STATE/vxmeshd-n$i.log" >&2; die "node $i: the old agent (pid $old) is still running"
  fi
  running "$new" || { tail -n 20 "$STATE/vxmeshd-n$i.log" >&2; die "node $i: the new agent (pid $new) exited"; }
  wait_ready "$i"
  log "handover on $(node "$i"): pid $old -> $new in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')s; old log: $STATE/vxmeshd-n$i.$old.log"
}

# kill_agent N: SIGKILL node N's agent (a crash, an OOM kill; nothing cleaned up): the TAP and
# its routes stay.
kill_agent() {
  local i=$1 pid
  pid=$(cat "$STATE/vxmeshd-n$i.pid" 2>/dev/null) || die "no agent runs on node $i"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 500); do running "$pid" || break; sleep 0.01; done
  rm -f "$STATE/vxmeshd-n$i.pid"
}

# running PID: alive and not a zombie (agents are reparented to PID 1, which may reap them late)
running() { local st; st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }

stop_agent() {
  local i=$1 pidf pid
  for pidf in "$STATE/vxmeshd-n$i.pid" "$STATE/flanneld-n$i.pid"; do
    [ -f "$pidf" ] || continue
    pid=$(cat "$pidf")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidf"
  done
}

wait_ready() {
  local i=$1
  if [ "$(dataplane "$i")" = flannel ]; then
    for _ in $(seq $((${2:-60} * 10))); do [ -f "$STATE/n$i/flannel.ready" ] && return 0; sleep 0.1; done
    tail -n 20 "$STATE/flanneld-n$i.log" >&2; die "flannel node $(node "$i") not ready"
  fi
  in_ns "$(node "$i")" "$BIN/vxmeshctl" wait-ready --timeout "${2:-60}" >/dev/null \
    || { tail -n 20 "$STATE/vxmeshd-n$i.log" >&2; die "vxmeshd on $(node "$i") not ready"; }
}

# Node i's `vxmeshctl status --json`, or for a flannel node the same shape from its files.
node_status() {
  local i=$1 sub mac
  if [ "$(dataplane "$i")" = flannel ]; then
    sub=$(sed -n 's/^FLANNEL_SUBNET=//p' "$STATE/n$i/subnet.env" 2>/dev/null || true)
    mac=$(ip -n "$(node "$i")" -j link show type vxlan 2>/dev/null | jq -r '.[0].address // "-"')
    jq -cn --arg s "${sub%.*/*}.0/${sub#*/}" --arg m "$mac" '{node: {subnet: $s, vtep_mac: $m}, ready: "flannel"}'
  else
    in_ns "$(node "$i")" "$BIN/vxmeshctl" status --json 2>/dev/null || echo '{}'
  fi
}

netconf() {
  cluster_netconf "$STATE/n$1/subnet.env" "$STATE/n$1/cni" "$STATE/n$1/ipam"
}

# Creates pod j of node i (netns ${PREFIX}-n<i>-p<j>) through the CNI plugin, run inside the
# node's namespace exactly as a runtime there would run it.
create_pods() {
  local i=$1 j addr
  for j in $(seq "$PODS"); do
    addr=$(cluster_pod_add "$(pod "$i" "$j")" "$BIN/vxmesh" "$BIN:$CNI_PATH_REF" "$(netconf "$i")" \
      ip netns exec "$(node "$i")") || die "CNI ADD for $(pod "$i" "$j") failed"
    echo "$addr" >"$STATE/n$i/p$j.ip"
    log "  pod $(pod "$i" "$j"): $addr (CNI ADD via $BIN/vxmesh)"
    if [ "$IPV6" != 0 ]; then
      addr=$(ip -n "$(pod "$i" "$j")" -j -6 addr show dev eth0 scope global \
        | jq -r '.[0].addr_info[]? | select(.local) | .local' | head -n 1)
      echo "$addr" >"$STATE/n$i/p$j.ip6"
      log "  pod $(pod "$i" "$j"): ${addr:-no IPv6 address}"
    fi
  done
  if [ "$IPV6" != 0 ]; then settle_ipv6 "$i"; fi
}

# settle_ipv6 I: waits (up to 5 s) until no IPv6 address of node I's bridge or pods is still
# tentative: until duplicate address detection ends (about a second) the bridge does not
# answer for its gateway address and a pod cannot send from its own, so a first ping would
# wait or fail.
settle_ipv6() {
  local i=$1 j ns
  for _ in $(seq 50); do
    local busy=0
    for ns in "$(node "$i")" $(for j in $(seq "$PODS"); do pod "$i" "$j"; done); do
      if [ -n "$(ip -n "$ns" -6 addr show tentative 2>/dev/null)" ]; then busy=1; fi
    done
    [ "$busy" = 1 ] || return 0
    sleep 0.1
  done
  log "  node $(node "$i"): IPv6 addresses still tentative after 5 s"
}

cmd_up() {
  need
  if ip netns list | grep -q "^$SW\b"; then
    die "a lab named $PREFIX exists; run '$0 down' first or set VXLAB_PREFIX"
  fi
  case $IPV6 in 0|1|only) ;; *) die "VXLAB_IPV6=$IPV6: use 1 (dual stack), only (an IPv6-only pod network) or 0" ;; esac
  rm -rf "$STATE"; mkdir -p "$STATE"
  echo "$NODES" >"$STATE/nodes"; echo "$PODS" >"$STATE/pods"; echo "$IPV6" >"$STATE/ipv6"
  log "creating underlay switch $SW and $NODES nodes"
  ip netns add "$SW"; ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge; ip -n "$SW" link set br0 up
  ip netns add "$ETCD_NS"; ip -n "$ETCD_NS" link set lo up
  ip -n "$SW" link add etcd type veth peer name eth0 netns "$ETCD_NS"
  ip -n "$SW" link set etcd master br0 up
  ip -n "$ETCD_NS" addr add "$ETCD_IP/24" dev eth0; ip -n "$ETCD_NS" link set eth0 up
  local i s segments
  segments=$(for i in $(seq "$NODES"); do segment "$i"; done | sort -un)
  for s in $segments; do
    [[ $s =~ ^[1-9][0-9]?$ ]] || die "VXLAB_L2: segment '$s' is not a number 1-99"
    [ "$s" = 1 ] || { ip -n "$SW" link add "br$((s - 1))" type bridge; ip -n "$SW" link set "br$((s - 1))" up; }
  done
  if [ "$(wc -w <<<"$segments")" -gt 1 ]; then
    # A routed underlay: the switch namespace is the router (192.168.<99+s>.1 on each segment).
    log "routed underlay: L2 segments $(echo "$segments" | tr '\n' ' ')joined by a router in $SW"
    for s in $segments; do ip -n "$SW" addr add "192.168.$((99 + s)).1/24" dev "br$((s - 1))"; done
    ip netns exec "$SW" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$ETCD_NS" route add default via 192.168.100.1
  fi
  for i in $(seq "$NODES"); do
    ip netns add "$(node "$i")"; ip -n "$(node "$i")" link set lo up
    ip -n "$SW" link add "n$i" type veth peer name eth0 netns "$(node "$i")"
    ip -n "$SW" link set "n$i" master "$(bridge_of "$i")" up
    ip -n "$(node "$i")" addr add "$(node_ip "$i")/24" dev eth0
    # nodad: usable at once (the lab's addresses are unique by construction)
    if [ "$IPV6" != 0 ]; then ip -n "$(node "$i")" -6 addr add "$(node_ip6 "$i")/64" dev eth0 nodad; fi
    ip -n "$(node "$i")" link set eth0 up
    if [ "$(wc -w <<<"$segments")" -gt 1 ]; then
      ip -n "$(node "$i")" route add default via "192.168.$((99 + $(segment "$i"))).1"
    fi
    mkdir -p "$STATE/n$i"
    echo "${DATAPLANES[$((i - 1))]:-userspace}" >"$STATE/n$i/dataplane"
    s=$(segment "$i"); echo "$s" >"$STATE/n$i/l2"
  done

  case $MEMBERS in
    1) ;;
    3) [ "$SECURE" = 0 ] || die "VXLAB_ETCD_MEMBERS=3 runs without TLS: leave VXLAB_ETCD_SECURE unset"
       for m in 2 3; do ip -n "$ETCD_NS" addr add "$(member_ip "$m")/24" dev eth0; done ;;
    *) die "VXLAB_ETCD_MEMBERS=$MEMBERS: use 1 or 3" ;;
  esac
  case $SECURE in
    1) secure_etcd_files ;;
    0) ;;
    *) die "VXLAB_ETCD_SECURE=$SECURE: use 1 (TLS + auth) or 0" ;;
  esac
  log "starting etcd in $ETCD_NS ($ETCD)"
  echo "$MEMBERS" >"$STATE/etcd-members"
  for m in $(seq "$MEMBERS"); do start_etcd_member "$m"; done
  for _ in $(seq 100); do etcdctl_lab endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  etcdctl_lab endpoint health >/dev/null 2>&1 || { tail "$STATE/etcd.log"; die "etcd did not start"; }
  if [ "$SECURE" = 1 ]; then secure_etcd_auth; fi
  if [ "$IPV6" = only ]; then
    local backend=${BACKEND:-'{"Type":"vxlan"}'}
    etcdctl_lab put "$CLUSTER_ETCD_PREFIX/config" \
      "{\"EnableIPv4\":false,\"EnableIPv6\":true,\"IPv6Network\":\"$NETWORK6\",\"Backend\":$backend}" >/dev/null
    log "network config: IPv6 only, $NETWORK6, Backend $backend"
  elif [ "$IPV6" = 1 ]; then
    local backend=${BACKEND:-'{"Type":"vxlan"}'}
    etcdctl_lab put "$CLUSTER_ETCD_PREFIX/config" \
      "{\"Network\":\"$NETWORK\",\"EnableIPv6\":true,\"IPv6Network\":\"$NETWORK6\",\"Backend\":$backend}" >/dev/null
    log "network config: dual stack, $NETWORK and $NETWORK6, Backend $backend"
  elif [ -n "$BACKEND" ]; then
    etcdctl_lab put "$CLUSTER_ETCD_PREFIX/config" "{\"Network\":\"$NETWORK\",\"Backend\":$BACKEND}" >/dev/null
    log "network config: $NETWORK, Backend $BACKEND"
  else
    cluster_put_network_config "$NETWORK" etcdctl_lab
    log "network config: $NETWORK, vxlan"
  fi
  log "dataplanes: $(for i in $(seq "$NODES"); do printf 'n%s=%s ' "$i" "$(dataplane "$i")"; done)"

  for i in $(seq "$NODES"); do start_agent "$i"; done
  for i in $(seq "$NODES"); do
    wait_ready "$i"
    log "node $(node "$i") ready: $(grep -E '^FLANNEL_(IPV6_)?SUBNET=' "$STATE/n$i/subnet.env" | tr '\n' ' ')"
  done
  log "creating $PODS pods per node through the CNI plugin"
  for i in $(seq "$NODES"); do create_pods "$i"; done
  cmd_check
  cmd_status
}

# The pods file of scripts/lib/cluster.sh: "NODE POD ADDRESS" per pod.
pods_file() {
  local i j
  for i in $(seq "$NODES"); do for j in $(seq "$PODS"); do
    echo "$i $(pod "$i" "$j") $(cat "$STATE/n$i/p$j.ip")"
  done; done >"$STATE/pods.list"
  echo "$STATE/pods.list"
}

# The same for the pods' IPv6 addresses (dual stack): pods without one are left out.
pods_file6() {
  local i j a
  for i in $(seq "$NODES"); do for j in $(seq "$PODS"); do
    a=$(cat "$STATE/n$i/p$j.ip6" 2>/dev/null || true)
    if [ -n "$a" ]; then echo "$i $(pod "$i" "$j") $a"; fi
  done; done >"$STATE/pods6.list"
  echo "$STATE/pods6.list"
}

cmd_check() {
  [ -f "$STATE/nodes" ] || die "no lab $PREFIX (run '$0 up')"
  NODES=$(cat "$STATE/nodes"); PODS=$(cat "$STATE/pods")
  local pass=0 fail=0 i pods
  pods=$(pods_file)
  # An IPv6-only pod network: the pods' only addresses (pods_file's) are IPv6.
  if [ "$(cat "$STATE/ipv6" 2>/dev/null || echo 0)" = only ]; then
    log "all-pairs cross-node pod ping (IPv6-only pod network)"
  else
    log "all-pairs cross-node pod ping"
  fi
  cluster_ping_header
  cluster_ping_pairs "$pods"
  pass=$CLUSTER_PASS; fail=$CLUSTER_FAIL
  local pairs=$((pass + fail)) pairs_ok=$pass gbps="-" pairs6=""
  if [ "$(cat "$STATE/ipv6" 2>/dev/null || echo 0)" = 1 ]; then
    log "all-pairs cross-node pod ping, IPv6"
    cluster_ping_header
    cluster_ping_pairs "$(pods_file6)"
    pass=$((pass + CLUSTER_PASS)); fail=$((fail + CLUSTER_FAIL))
    pairs6="; IPv6 pod pairs: $CLUSTER_PASS of $((CLUSTER_PASS + CLUSTER_FAIL)) reachable"
  fi
  if [ "$NODES" -ge 2 ]; then
    local server client
    server=$(pod 2 1); client=$(pod 1 1)
    in_ns "$server" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    local spid=$!
    sleep 0.5
    if gbps=$(cluster_iperf "$client" "$(cat "$STATE/n2/p1.ip")" "$IPERF_SECONDS"); then
      log "iperf3 $client -> $server: $gbps Gbit/s (TCP, 1 stream, ${IPERF_SECONDS}s)"
      pass=$((pass + 1))
    else
      gbps="-"
      log "iperf3 $client -> $server FAILED"; fail=$((fail + 1))
    fi
    kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
  fi
  echo
  echo "== summary: lab $PREFIX =="
  cluster_summary_header
  for i in $(seq "$NODES"); do
    local st; st=$(node_status "$i")
    cluster_summary_row "$(node "$i")" "$(node_ip "$i")" "$st"
  done
  echo "cross-node pod pairs: $pairs_ok of $pairs reachable$pairs6; iperf3 $(pod 1 1) -> $(pod 2 1): $gbps Gbit/s"
  cluster_result_line "$pass" "$fail"
  [ "$fail" -eq 0 ]
}

# A real container runtime on the lab: podman (runc) runs a busybox container in node I's
# namespace on the vxmesh network (the example conflist, vxmesh + portmap, with this node's
# subnet file and data directories), which pings a pod on every other node. With podman's CNI
# backend podman itself calls the plugins. Podman 5 may be built without it (Debian 13's says
# "cni support is not enabled in this build, only netavark"); then the container is attached
# the way CRI runtimes (containerd, CRI-O) attach a pod: a network namespace is created, the
# conflist's vxmesh plugin is called on it (CNI ADD, its netconf derived as libcni derives it;
# portmap, the second plugin, has no port mappings to set up here), podman starts the container
# in that namespace (--network ns:PATH), and CNI DEL and the namespace's removal follow.
# VXLAB_PODMAN_ATTACH=netns takes the second way with any podman (to test it).
# Podman's storage lives in $STATE/podman-n<I> and is removed afterwards.
cmd_podman() {
  local i=$1 k rc=0 targets="" script info how netns=""
  local d="$STATE/podman-n$i"
  [ -f "$STATE/nodes" ] || die "no lab $PREFIX (run '$0 up')"
  NODES=$(cat "$STATE/nodes")
  for c in podman runc nsenter busybox jq; do command -v "$c" >/dev/null || die "missing $c (scripts/install-deps.sh)"; done
  if [ -z "$STATE" ]; then die "internal: empty state directory"; fi
  rm -rf "$d"; mkdir -p "$d/bin" "$d/net.d" "$d/rootfs/bin" "$d/tmp"
  ln -s "$BIN/vxmesh" "$d/bin/vxmesh"
  jq --arg sf "$STATE/n$i/subnet.env" --arg dd "$STATE/n$i/cni" --arg ipam "$STATE/n$i/ipam" \
    '.plugins[0].subnetFile = $sf | .plugins[0].dataDir = $dd | .plugins[0].ipam = {dataDir: $ipam}' \
    "$ROOT/cni-shim/examples/10-vxmesh.conflist" >"$d/net.d/10-vxmesh.conflist"
  podman_conf() {  # podman_conf [BACKEND]: containers.conf for this run (podman 3 has no such key)
    printf '%s\n' '[containers]' 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]' \
      '[engine]' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"' \
      "tmp_dir = \"$d/tmp\"" '[network]' ${1:+"network_backend = \"$1\""} \
      "network_config_dir = \"$d/net.d\"" "cni_plugin_dirs = [\"$d/bin\", \"$CNI_PATH_REF\"]" \
      >"$d/containers.conf"
  }
  pm() {
    # `ip netns exec` remounts /sys, which runc cannot live with: enter only the netns.
    CONTAINERS_CONF="$d/containers.conf" PODMAN_IGNORE_CGROUPSV1_WARNING=1 nsenter --net="/run/netns/$(node "$i")" \
      podman --root "$d/root" --runroot "$d/runroot" --storage-driver vfs "$@"
  }
  # Podman 3 (Ubuntu 22.04's 3.4) has CNI only: neither the network_backend key nor
  # .Host.NetworkBackend exists there. Podman 4 and 5 have both, and may lack CNI.
  local version
  version=$(podman --version) || die "podman --version failed"
  version=${version##* }
  how="podman's CNI backend"
  if [[ $version =~ ^[0-3]\. ]]; then
    podman_conf
  else
    podman_conf cni
    if ! info=$(pm info --format '{{.Host.NetworkBackend}}' 2>&1); then
      grep -q 'cni support is not enabled' <<<"$info" || die "podman info failed: $info"
      podman_conf netavark # its own default; a container that joins a namespace does not use it
      netns=$PREFIX-n$i-podman
      how="CNI ADD on a namespace podman joins, as CRI runtimes attach pods (podman $version has no CNI backend)"
    fi
  fi
  if [ -z "$netns" ] && [ "${VXLAB_PODMAN_ATTACH:-auto}" = netns ]; then
    netns=$PREFIX-n$i-podman
    how="CNI ADD on a namespace podman joins, as CRI runtimes attach pods (VXLAB_PODMAN_ATTACH=netns)"
  fi
  cp "$(command -v busybox)" "$d/rootfs/bin/busybox"
  for a in $("$d/rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$d/rootfs/bin/$a"; done
  tar -C "$d/rootfs" -cf "$d/rootfs.tar" .
  pm import "$d/rootfs.tar" localhost/vxmesh-busybox:lab >"$d/import.log" 2>&1 || die "podman import failed: $(cat "$d/import.log")"
  for k in $(seq "$NODES"); do
    [ "$k" = "$i" ] && continue
    targets="$targets $(cat "$STATE/n$k/p1.ip")"
  done
  # shellcheck disable=SC2016  # expanded by the container's shell
  script='ip -o -4 addr show dev eth0; for t in '"$targets"'; do if ping -c 1 -W 2 "$t" >/dev/null; then echo "reached $t"; else echo "FAILED $t"; exit 1; fi; done'
  log "podman: container on $(node "$i") (network vxmesh, $how) pinging a pod on every other node:$targets"
  # ping needs a raw socket (CAP_NET_RAW, which newer containers.conf defaults leave out) or
  # ICMP sockets (the ping_group_range sysctl podman sets only in namespaces it creates).
  if [ -z "$netns" ]; then
    pm run --rm --cap-add NET_RAW --network vxmesh localhost/vxmesh-busybox:lab sh -c "$script" || rc=1
  else
    local conf
    conf=$(cluster_netconf_from_conflist "$d/net.d/10-vxmesh.conflist")
    # A namespace an interrupted run left: DEL it first, so that its address goes back to
    # host-local too (cluster_pod_del removes the namespace whether DEL succeeds or not).
    if [ -e "/run/netns/$netns" ]; then
      cluster_pod_del "$netns" "$BIN/vxmesh" "$BIN:$CNI_PATH_REF" "$conf" ip netns exec "$(node "$i")" 2>/dev/null ||
        log "podman: CNI DEL of the namespace an earlier run left failed; removed it anyway"
    fi
    if cluster_pod_add "$netns" "$BIN/vxmesh" "$BIN:$CNI_PATH_REF" "$conf" ip netns exec "$(node "$i")" >/dev/null; then
      pm run --rm --cap-add NET_RAW --network "ns:/run/netns/$netns" localhost/vxmesh-busybox:lab sh -c "$script" || rc=1
    else
      log "podman: CNI ADD for the container's namespace failed"; rc=1
    fi
    cluster_pod_del "$netns" "$BIN/vxmesh" "$BIN:$CNI_PATH_REF" "$conf" ip netns exec "$(node "$i")" ||
      { log "podman: CNI DEL for the container's namespace failed"; rc=1; }
  fi
  pm rm --all --force >/dev/null 2>&1 || true
  pm rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$d"
  if [ "$rc" = 0 ]; then log "podman: the container reached every other node's pod"; else log "podman: FAILED"; fi
  return "$rc"
}

cmd_status() {
  local secure_note=""
  [ -z "${LAB_NODE_ENV:-}" ] || secure_note="   # secure lab: export LAB_NODE_ENV from $STATE/etcd.env first"
  cat <<EOF

The lab $PREFIX is running. Explore it:
  ip netns list | grep $PREFIX
  ip netns exec $(node 1) $BIN/vxmeshctl status          # this node's lease, VTEP, offloads
  ip netns exec $(node 1) $BIN/vxmeshctl peers           # routes it follows
  ip netns exec $(node 1) $BIN/vxmeshctl counters        # packets, drops by reason
  ip netns exec $(node 1) $BIN/vxmeshctl leases --etcd-endpoints $ETCD$secure_note
  $0 etcdctl get --prefix /coreos.com/network/subnets   # the registry, as etcd's root
  ip -n $(node 1) route; ip -n $(node 1) neigh show dev vxmesh0
  ip netns exec $(pod 1 1) ping $(cat "$STATE/n2/p1.ip" 2>/dev/null || echo '<pod ip>')
  logs: $STATE/*.log
Tear it down: $0 down   (VXLAB_PREFIX=$PREFIX)
EOF
}

cmd_down() {
  local ns pid
  log "tearing down"
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-[A-Za-z0-9-]+$" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  done
  sleep 0.5
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-[A-Za-z0-9-]+$" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
  rm -rf "$STATE"
  log "done: no namespace, process or file of lab $PREFIX is left"
}

case "${1:-}" in
  up) cmd_up ;;
  check) cmd_check ;;
  status) cmd_status ;;
  down) cmd_down ;;
  restart-agent) need; stop_agent "${2:?node number}"; start_agent "$2" "${3:-}"; wait_ready "$2" ;;
  handover-agent) need; handover_agent "${2:?node number}" ;;
  kill-agent) kill_agent "${2:?node number}" ;;
  exec-agent)
    # Runs node N's agent in the foreground (for tests that need its exit status); extra
    # vxmeshd environment comes from the caller.
    need; agent_cmd "${2:?node number}"
    if [ -n "${LAB_NODE_ENV:-}" ]; then export "${LAB_NODE_ENV[@]}"; fi
    exec "${AGENT[@]}" ;;
  stop-agent) stop_agent "${2:?node number}" ;;
  start-agent) need; start_agent "${2:?node number}" "${3:-}"; wait_ready "$2" ;;
  podman) need; cmd_podman "${2:-1}" ;;
  etcdctl) shift; [ -f "$STATE/nodes" ] || die "no lab $PREFIX (run '$0 up')"; etcdctl_lab "$@" ;;
  cut-etcd) cut_etcd "${2:?node number}" ;;
  heal-etcd) heal_etcd "${2:?node number}" ;;
  stop-etcd) stop_etcd_member "${2:?member number}" ;;
  start-etcd) start_etcd_member "${2:?member number}" ;;
  etcd-leader) etcd_leader ;;
  *) echo "usage: $0 up|check|status|down|restart-agent N [DATAPLANE]|stop-agent N|start-agent N [DATAPLANE]|handover-agent N|kill-agent N|exec-agent N|podman [N]|etcdctl ARGS|cut-etcd N|heal-etcd N|stop-etcd M|start-etcd M|etcd-leader" >&2; exit 2 ;;
esac
