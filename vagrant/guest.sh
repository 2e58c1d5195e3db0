#!/usr/bin/env bash
# Lab steps run as root INSIDE a node VM of the Vagrant lab (rsynced to /opt/vxmesh/src/vagrant),
# on top of the steps shared with the netns lab (scripts/lib/cluster.sh). vagrant/e2e.sh calls
# them over ssh; they are also handy by hand: vagrant ssh node1 -c 'sudo /opt/vxmesh/src/vagrant/guest.sh ...'
#
#   pods NODE COUNT          create pods NODE-p1..COUNT (network namespaces) through the installed
#                            CNI plugin and conflist; prints the pods file lines "NODE POD ADDRESS"
#   pods-del NODE COUNT      CNI DEL + remove those namespaces
#   ping NODE                pods file on stdin; ping table rows from NODE's pods to every pod
#                            on another node
#   wait-ping POD ADDR SECS  seconds until POD gets a reply from ADDR (status 1: none in SECS)
#   iperf-server POD         one-shot iperf3 server in POD (daemon)
#   iperf POD ADDR SECS      iperf3 client; prints Mbit/s
#   status-row LABEL IP      the node's row of the summary table
#   tap-mac                  checks the TAP (or, on the kernel dataplane, flannel.<VNI>) carries
#                            the VTEP MAC the agent advertises
#   dataplane                "userspace TAP" or "kernel vxlan": the agent's dataplane and the
#                            kind of its device
#   offloads                 the underlay NIC's checksum and segmentation offloads (ethtool -k),
#                            which the lab leaves at their defaults
#   ping-start POD ADDR COUNT INTERVAL
#                            ping in the background (survives the ssh session)
#   ping-result POD          waits for that ping; prints "SENT RECEIVED"
#   restart-agent            systemctl restart vxmeshd; checks new PID, active, same subnet,
#                            TAP MAC = VTEP MAC, same TAP, dataplane taken from systemd's store
#   upgrade-agent BIN        installs BIN (another build) as /usr/local/bin/vxmeshd and restarts;
#                            the same checks, and the build changed
#   kill-agent               SIGKILL vxmeshd; checks systemd restarts it (Restart=on-failure) and
#                            the new process takes the dataplane from the store
#   dual-stack ADDR6         gives the underlay the IPv6 address ADDR6/64, restarts vxmeshd (the
#                            network config has just turned dual stack) and checks the IPv6
#                            device (flannel-v6.<VNI>) and FLANNEL_IPV6_SUBNET
#   pod6 NODE POD            one more pod through the CNI plugin; prints "NODE POD IPV6" once its
#                            IPv6 address (and the bridge's gateway) left duplicate address
#                            detection
#   ipv6-only                after the network config turned IPv6-only: systemctl restart vxmeshd
#                            (Type=notify: returns once the agent says READY=1) and checks the
#                            node runs IPv6 only: FLANNEL_IPV6_SUBNET kept, no FLANNEL_SUBNET,
#                            flannel-v6.<VNI> alone (the TAP or flannel.<VNI> gone)
#   pod6-only NODE POD       pod6, and checks the pod got no IPv4 address
#   ipv6-check               on a userspace node: the IPv6 ingress check's table and its drops
#                            (vxmeshctl counters); status 1 if it is missing or dropped any
#                            datagram from a peer or a stranger
#   leftovers                after uninstall-node.sh: prints what vxmesh left (node and etcd
#                            roles); status 1 if any
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/cluster.sh
. "$HERE/../scripts/lib/cluster.sh"

CONFLIST=/etc/cni/net.d/10-vxmesh.conflist
SUBNET_FILE=/run/flannel/subnet.env
cni_dir() { sed -n 's/^cni-bin-dir //p' /var/lib/vxmesh/install-manifest 2>/dev/null | tail -n 1 | grep . || echo /usr/lib/cni; }
subnet() { sed -n 's/^FLANNEL_SUBNET=//p' "$SUBNET_FILE" 2>/dev/null; }
unit() { systemctl show -p "$1" --value vxmeshd.service; }
# "ok <mac>" when the TAP's MAC is the VTEP MAC in etcd (what peers send to), else "MISMATCH ..."
tap_mac() {
  local st want tap have
  st=$(/usr/local/bin/vxmeshctl status --json 2>/dev/null || echo '{}')
  want=$(jq -r '.node.vtep_mac // empty' <<<"$st"); tap=$(jq -r '.node.tap // "vxmesh0"' <<<"$st")
  have=$(cat "/sys/class/net/$tap/address" 2>/dev/null)
  if [ -n "$want" ] && [ "$have" = "$want" ]; then echo "ok $tap $have"
  else echo "MISMATCH: $tap has ${have:-no MAC}, the agent advertises ${want:-nothing}"; return 1; fi
}

status_json() { /usr/local/bin/vxmeshctl status --json 2>/dev/null || echo '{}'; }
tap_index() { cat "/sys/class/net/$(jq -r '.node.tap // "vxmesh0"' <<<"$(status_json)")/ifindex" 2>/dev/null; }
# "how=fd-store from=<build> build=<build> fds=N gap=Xms": how the running agent started
start_line() {
  jq -r '"how=\(.start.how) from=\(.start.from_build) fds=\(.start.fds_taken_over) gap=\(.start.gap_ms // "-")ms"' <<<"$(status_json)"
}
# restart_checks PID_BEFORE SUBNET_BEFORE TAP_INDEX_BEFORE: after a restart through systemd
restart_checks() {
  local pid=$1 before=$2 idx=$3 after newpid state mac st
  after=$(subnet); newpid=$(unit MainPID); state=$(unit ActiveState)
  mac=$(tap_mac) || true
  st=$(start_line)
  echo "pid $pid -> $newpid, $state, subnet $before -> $after, tap #$idx -> #$(tap_index), tap mac $mac, $st"
  [ "$state" = active ] && [ "$newpid" != "$pid" ] && [ -n "$after" ] && [ "$before" = "$after" ] &&
    [ "${mac%% *}" = ok ] && [ "$(tap_index)" = "$idx" ] && [[ $st == how=fd-store* ]]
}

# waits until vxmeshd is active with a MainPID other than $1 and ready; prints the seconds
wait_new_agent() {
  local old=$1 start now
  start=$(date +%s)
  while :; do
    if [ "$(unit ActiveState)" = active ] && [ "$(unit MainPID)" != 0 ] && [ "$(unit MainPID)" != "$old" ] &&
       /usr/local/bin/vxmeshctl wait-ready --timeout 1 >/dev/null 2>&1; then
      now=$(date +%s); echo $((now - start)); return 0
    fi
    now=$(date +%s)
    [ $((now - start)) -lt 120 ] || return 1
    sleep 1
  done
}

cmd=${1:-}; shift || true
case $cmd in
  pods)
    node=${1:?node}; count=${2:?count}; dir=$(cni_dir); conf=$(cluster_netconf_from_conflist "$CONFLIST")
    for j in $(seq "$count"); do
      addr=$(cluster_pod_add "$node-p$j" "$dir/vxmesh" "$dir" "$conf") || { echo "CNI ADD for $node-p$j failed" >&2; exit 1; }
      echo "$node $node-p$j $addr"
    done ;;
  pods-del)
    node=${1:?node}; count=${2:?count}; dir=$(cni_dir); conf=$(cluster_netconf_from_conflist "$CONFLIST"); rc=0
    for j in $(seq "$count"); do cluster_pod_del "$node-p$j" "$dir/vxmesh" "$dir" "$conf" || rc=1; done
    exit "$rc" ;;
  ping)
    node=${1:?node}; pods=$(mktemp); trap 'rm -f "$pods"' EXIT
    cat >"$pods"
    cluster_ping_pairs "$pods" "$node" ;;
  wait-ping) cluster_wait_ping "${1:?pod}" "${2:?address}" "${3:?seconds}" ;;
  iperf-server) ip netns exec "${1:?pod}" iperf3 -s -1 -D -p 5201 ;;
  iperf) cluster_iperf "${1:?pod}" "${2:?address}" "${3:?seconds}" Mbit ;;
  tap-mac) tap_mac ;;
  dataplane)
    st=$(status_json); dev=$(jq -r '.node.tap // "vxmesh0"' <<<"$st")
    kind=$(ip -d -o link show "$dev" 2>/dev/null | grep -o -m1 -e ' vxlan ' -e ' tun ' | tr -d ' ')
    echo "$(jq -r '.node.dataplane // "?"' <<<"$st") ${kind:-no-device} $dev" ;;
  offloads)
    dev=$(jq -r '.node.iface // empty' <<<"$(status_json)")
    if [ -z "$dev" ]; then echo "underlay interface unknown"
    elif command -v ethtool >/dev/null; then
      echo "$dev: $(ethtool -k "$dev" 2>/dev/null | grep -E '^(tx-checksumming|tcp-segmentation-offload|generic-receive-offload):' | tr -s ' ' | tr '\n' ' ')"
    else
      echo "$dev: no ethtool in the box; the lab never changes offloads (virtio defaults)"
    fi ;;
  status-row)
    st=$(/usr/local/bin/vxmeshctl status --json 2>/dev/null || echo '{}')
    cluster_summary_row "${1:?label}" "${2:?underlay}" "$st" ;;
  ping-start)
    pod=${1:?pod}; addr=${2:?address}; count=${3:?count}; interval=${4:?interval}
    rm -f "/tmp/vxmesh-ping-$pod.out" "/tmp/vxmesh-ping-$pod.done"
    setsid sh -c "ip netns exec '$pod' ping -q -i '$interval' -W 2 -c '$count' '$addr' >/tmp/vxmesh-ping-$pod.out 2>&1; touch /tmp/vxmesh-ping-$pod.done" </dev/null >/dev/null 2>&1 &
    ;;
  ping-result)
    pod=${1:?pod}
    for _ in $(seq 600); do [ -f "/tmp/vxmesh-ping-$pod.done" ] && break; sleep 0.5; done
    line=$(grep 'packets transmitted' "/tmp/vxmesh-ping-$pod.out" 2>/dev/null) || { echo "no ping summary: $(cat "/tmp/vxmesh-ping-$pod.out" 2>/dev/null)"; exit 1; }
    awk -F', ' '{split($1, a, " "); split($2, b, " "); print a[1], b[1]}' <<<"$line" ;;
  restart-agent)
    before=$(subnet); pid=$(unit MainPID); idx=$(tap_index); t0=$(date +%s.%N)
    systemctl restart vxmeshd.service   # Type=notify: returns after READY=1
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
    echo -n "systemctl restart vxmeshd: ${secs}s, "
    restart_checks "$pid" "$before" "$idx" ;;
  upgrade-agent)
    bin=${1:?binary of another build}
    before=$(subnet); pid=$(unit MainPID); idx=$(tap_index); old=$(/usr/local/bin/vxmeshd --version)
    install -m 0755 "$bin" /usr/local/bin/vxmeshd   # a new file: the running process keeps its own
    t0=$(date +%s.%N)
    systemctl restart vxmeshd.service
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
    new=$(jq -r '.node.build // empty' <<<"$(status_json)")
    echo -n "upgrade ($old -> build $new): restart ${secs}s, "
    restart_checks "$pid" "$before" "$idx" && [ -n "$new" ] && [ "$(jq -r .start.from_build <<<"$(status_json)")" != "$new" ] ;;
  kill-agent)
    before=$(subnet); pid=$(unit MainPID); restarts=$(unit NRestarts); idx=$(tap_index)
    systemctl kill -s KILL vxmeshd.service
    if secs=$(wait_new_agent "$pid"); then
      echo -n "SIGKILL pid $pid: systemd restarted vxmeshd in ${secs}s (NRestarts $restarts -> $(unit NRestarts)), "
      restart_checks "$pid" "$before" "$idx" && [ "$(unit NRestarts)" -gt "$restarts" ]
    else
      echo "SIGKILL pid $pid: vxmeshd not back after 120s ($(unit ActiveState)/$(unit SubState))"; exit 1
    fi ;;
  dual-stack)
    addr=${1:?IPv6 address}; dev=$(jq -r '.node.iface // empty' <<<"$(status_json)")
    [ -n "$dev" ] || { echo "underlay interface unknown"; exit 1; }
    ip -6 addr replace "$addr/64" dev "$dev" nodad
    systemctl restart vxmeshd.service
    /usr/local/bin/vxmeshctl wait-ready --timeout 60 >/dev/null || { echo "vxmeshd not ready after the restart"; exit 1; }
    for _ in $(seq 100); do grep -q '^FLANNEL_IPV6_SUBNET=' "$SUBNET_FILE" && break; sleep 0.2; done
    sub6=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$SUBNET_FILE")
    dev6=$(ip -o link show type vxlan | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -m1 '^flannel-v6\.' || true)
    a6=""; [ -z "$dev6" ] || a6=$(ip -6 -o addr show dev "$dev6" scope global | awk '{print $4}')
    echo "$dev $addr, $(jq -r '.node.dataplane' <<<"$(status_json)") dataplane: FLANNEL_IPV6_SUBNET=${sub6:-none}, ${dev6:-no IPv6 device} ${a6:-without an address}"
    [ -n "$sub6" ] && [ -n "$dev6" ] && [ -n "$a6" ] ;;
  ipv6-threads)
    # --ipv6-dataplane through the unit's environment file, then systemctl restart
    want=${1:?userspace or kernel}; env=/etc/vxmesh/vxmeshd.env; t0=$(date +%s.%N)
    sed -i '/^VXMESHD_IPV6_DATAPLANE=/d' "$env"; echo "VXMESHD_IPV6_DATAPLANE=$want" >>"$env"
    if ! systemctl restart vxmeshd.service; then
      echo "systemctl restart vxmeshd failed ($(unit ActiveState)/$(unit SubState), result $(unit Result))"
      journalctl -u vxmeshd.service --no-pager -n 5 -o cat; exit 1
    fi
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
    /usr/local/bin/vxmeshctl wait-ready --timeout 60 >/dev/null || { echo "vxmeshd not ready after the restart"; exit 1; }
    st=$(status_json); tap=$(jq -r '.node.tap // "vxmesh0"' <<<"$st")
    sub6=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$SUBNET_FILE")
    dev6=$(ip -o link show type vxlan | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -m1 '^flannel-v6\.' || true)
    a6=$(ip -6 -o addr show dev "$tap" scope global | awk '{print $4}')
    sock=$(ss -H -uanp 'sport = :8472' | grep -c '\[::\]:8472.*vxmeshd' || true)
    echo "systemctl restart with --ipv6-dataplane $want: ${secs}s ($(jq -r '.start.how // "?"' <<<"$st")), FLANNEL_IPV6_SUBNET=${sub6:-none}, ${dev6:-no flannel-v6}, $tap IPv6: ${a6:-none}, vxmeshd sockets on [::]:8472: $sock"
    case $want in
      # FLANNEL_IPV6_SUBNET names the subnet's first pod address (<subnet>::1/64); the
      # TAP holds the subnet's own first address (<subnet>::/128)
      userspace) [ -n "$sub6" ] && [ -z "$dev6" ] && [ "${a6%/128}1" = "${sub6%/*}" ] && [ "$sock" -ge 1 ] ;;
      kernel) [ -n "$sub6" ] && [ -n "$dev6" ] && [ -z "$a6" ] && [ "$sock" = 0 ] ;;
      *) echo "want userspace or kernel"; exit 1 ;;
    esac ;;
  pod6)
    node=${1:?node}; pod=${2:?pod}; dir=$(cni_dir); conf=$(cluster_netconf_from_conflist "$CONFLIST")
    cluster_pod_add "$pod" "$dir/vxmesh" "$dir" "$conf" >/dev/null || { echo "CNI ADD for $pod failed" >&2; exit 1; }
    a6=""
    for _ in $(seq 50); do
      a6=$(ip -n "$pod" -6 -o addr show dev eth0 scope global -tentative | awk '{print $4}' | cut -d/ -f1 | head -n 1)
      [ -n "$a6" ] && [ -z "$(ip -6 addr show dev cni0 tentative)" ] && break
      sleep 0.1
    done
    [ -n "$a6" ] || { echo "$pod got no IPv6 address" >&2; exit 1; }
    echo "$node $pod $a6" ;;
  ipv6-only)
    before6=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$SUBNET_FILE"); pid=$(unit MainPID); t0=$(date +%s.%N)
    if ! systemctl restart vxmeshd.service; then
      echo "systemctl restart vxmeshd failed ($(unit ActiveState)/$(unit SubState), result $(unit Result))"
      journalctl -u vxmeshd.service --no-pager -n 5 -o cat; exit 1
    fi
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
    sub6=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$SUBNET_FILE"); sub4=$(subnet)
    devs=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(flannel(-v6)?\.[0-9]+|vxmesh0)$' | tr '\n' ' ')
    echo "systemctl restart vxmeshd: ${secs}s (pid $pid -> $(unit MainPID), $(unit ActiveState)), $(jq -r '.node.dataplane' <<<"$(status_json)") dataplane: FLANNEL_IPV6_SUBNET=${sub6:-none} (was ${before6:-none}), FLANNEL_SUBNET=${sub4:-none}, devices: ${devs:-none}"
    [ "$(unit ActiveState)" = active ] && [ "$(unit MainPID)" != "$pid" ] && [ -n "$sub6" ] && [ "$sub6" = "$before6" ] &&
      [ -z "$sub4" ] && [[ $devs == flannel-v6.* ]] && [ "$(wc -w <<<"$devs")" = 1 ] ;;
  pod6-only)
    node=${1:?node}; pod=${2:?pod}
    line=$("$0" pod6 "$node" "$pod") || exit 1
    a4=$(ip -n "$pod" -4 -o addr show dev eth0 | awk '{print $4}')
    [ -z "$a4" ] || { echo "$pod got an IPv4 address on an IPv6-only network: $a4" >&2; exit 1; }
    echo "$line" ;;
  ipv6-check)
    rows=$(/usr/local/bin/vxmeshctl counters | grep '^ipv6_check_dropped:' || true)
    table=$(nft list table ip6 vxmesh-vxlan6 2>/dev/null | grep -c 'goto peer-' || true)
    echo "table ip6 vxmesh-vxlan6: ${table:-0} map line(s); $(tr -s ' ' <<<"$rows" | tr '\n' ';')"
    [ "${table:-0}" -ge 1 ] && [ -n "$rows" ] &&
      ! awk '$1 ~ /unknown_source|inner_address/ && $2 != 0 {found=1} END {exit !found}' <<<"$rows" ;;
  leftovers)
    left=()
    dir=$(cni_dir)
    for f in /usr/local/bin/vxmeshd /usr/local/bin/vxmeshctl "$dir/vxmesh" /opt/cni/bin/vxmesh "$CONFLIST" \
             /etc/systemd/network/10-vxmesh.link /etc/systemd/system/etcd.service.d/10-vxmesh.conf \
             /var/lib/etcd/vxmesh \
             /etc/systemd/system/vxmeshd.service /etc/vxmesh /var/lib/vxmesh "$SUBNET_FILE" \
             /var/lib/cni/vxmesh /var/lib/cni/networks/vxmesh; do
      [ ! -e "$f" ] || left+=("$f")
    done
    systemctl cat vxmeshd.service >/dev/null 2>&1 && left+=("unit vxmeshd.service")
    pgrep -x vxmeshd >/dev/null && left+=("process vxmeshd")
    # etcd put back must run with the distribution's settings, not the drop-in's
    for p in $(pgrep -x etcd); do
      tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -q '^ETCD_DATA_DIR=/var/lib/etcd/vxmesh$' &&
        left+=("etcd process $p still running with vxmesh's settings")
    done
    for l in vxmesh0 cni0 $(ip -o link show type vxlan 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^flannel(-v6)?\.'); do
      ip link show "$l" >/dev/null 2>&1 && left+=("link $l")
    done
    iptables -t nat -S 2>/dev/null | grep -q VXMESH && left+=("iptables nat VXMESH rules")
    iptables -S 2>/dev/null | grep -q VXMESH && left+=("iptables filter VXMESH rules")
    ip6tables -t nat -S 2>/dev/null | grep -q VXMESH && left+=("ip6tables nat VXMESH rules")
    ip6tables -S 2>/dev/null | grep -q VXMESH && left+=("ip6tables filter VXMESH rules")
    nft list tables 2>/dev/null | grep -q vxmesh && left+=("nftables vxmesh tables")
    if [ ${#left[@]} -eq 0 ]; then echo "nothing left"; else echo "left: ${left[*]}"; exit 1; fi ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
