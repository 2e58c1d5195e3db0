#!/bin/bash
# The kernel's share of a cluster start, without etcd or agents: N namespaces, each
# given N-1 peer routes and N-1 permanent neighbours (what vxmeshd installs for N-1
# peers) by `ip -batch`, two namespaces at a time; prints how long the programming
# took. docs/scale.md ("The harness's listener out of the way", "The route form sets the
# kernel's floor") has the figures.
#
#   sudo bench/kernel-floor.sh [N]            # 1000 by default
#   FORM=gateway   (default) each peer's route via its own gateway, plus a permanent
#                  neighbour for that gateway: what vxmeshd and flanneld install
#   FORM=nexthop   the same by nexthop objects (`nhid`) instead of `via <gw> onlink`
#   FORM=routes    the per-peer gateway routes without the neighbours (their share)
#   FORM=shared    every peer's route via one gateway (169.254.1.1) with one permanent
#                  neighbour per namespace: a form a dataplane that forwards by inner
#                  destination address could use (a proposal, docs/scale.md)
#   LISTEN=1       with `ip monitor route all-nsid` listening, as a route monitor
#                  in another namespace would (the scale harness's listener)
#
# Every namespace is named floor<pid>-<i> and deleted at the end (also on Ctrl-C);
# the neighbour-table thresholds it raises are put back. No packet is sent.
set -euo pipefail

n=${1:-1000}
form=${FORM:-gateway}
case "$form" in gateway | nexthop | routes | shared) ;; *)
	echo "FORM must be gateway, nexthop, routes or shared, not '$form'" >&2
	exit 2
	;;
esac
if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 2 || n > 4000)); then
	echo "N must be a number from 2 to 4000, not '$n'" >&2
	exit 2
fi
[[ $(id -u) == 0 ]] || {
	echo "run as root (it creates network namespaces)" >&2
	exit 2
}

prefix=floor$$
dir=$(mktemp -d)
thresh=/proc/sys/net/ipv4/neigh/default/gc_thresh
old=("$(cat ${thresh}1)" "$(cat ${thresh}2)" "$(cat ${thresh}3)")
monitor=
cleanup() {
	[[ -n $monitor ]] && kill "$monitor" 2>/dev/null
	ip netns list 2>/dev/null | awk -v p="$prefix-" 'index($1, p) == 1 {print $1}' |
		while read -r ns; do ip netns del "$ns"; done
	# Lowest first, so that 1 <= 2 <= 3 holds at every step.
	echo "${old[0]}" >${thresh}1
	echo "${old[1]}" >${thresh}2
	echo "${old[2]}" >${thresh}3
	rm -rf "$dir"
}
trap cleanup EXIT
# Every namespace's neighbours count against the host-wide thresholds.
entries=$((n * n * 2))
echo "$entries" >${thresh}3
echo "$entries" >${thresh}2
echo "$entries" >${thresh}1

for ((i = 0; i < n; i++)); do
	ns=$prefix-$i
	ip netns add "$ns"
	ip -n "$ns" link add d0 type veth peer name d1
	ip -n "$ns" link set d1 up
	ip -n "$ns" link set d0 up
	# An address, as the agent's device has: a gateway must not look like broadcast.
	ip -n "$ns" addr add 10.99.0.0/32 dev d0
	# Peers j != i: subnet 10.(100 + j / 256).(j % 256).0/24, gateway its .0.
	awk -v i="$i" -v n="$n" -v form="$form" 'BEGIN {
		for (j = 0; j < n; j++) {
			if (j == i) continue
			a = int(j / 256); b = j % 256
			gw = sprintf("10.%d.%d.0", 100 + a, b)
			if (form == "gateway" || form == "routes") {
				printf "route add %s/24 via %s dev d0 onlink\n", gw, gw
			} else if (form == "shared") {
				printf "route add %s/24 via 169.254.1.1 dev d0 onlink\n", gw
			} else {
				printf "nexthop add id %d via %s dev d0 onlink\n", j + 1, gw
				printf "route add %s/24 nhid %d\n", gw, j + 1
			}
			if (form == "gateway" || form == "nexthop")
				printf "neigh add %s lladdr 02:00:00:00:%02x:%02x dev d0 nud permanent\n", gw, a, b
		}
		if (form == "shared")
			print "neigh add 169.254.1.1 lladdr 02:00:00:00:ff:ff dev d0 nud permanent"
	}' >"$dir/$i"
done
if [[ -n ${LISTEN:-} ]]; then
	for ((i = 0; i < n; i++)); do ip netns set "$prefix-$i" auto; done
	ip monitor route all-nsid >/dev/null &
	monitor=$!
fi

start=$(date +%s.%N)
seq 0 $((n - 1)) | xargs -P 2 -I{} ip -n "$prefix-{}" -batch "$dir/{}"
end=$(date +%s.%N)

case "$form" in
gateway | nexthop) want_neighbours=$((n - 1)) ;;
routes) want_neighbours=0 ;;
shared) want_neighbours=1 ;;
esac
routes=$(ip -n "$prefix-0" route show | wc -l)
neighbours=$(ip -n "$prefix-0" neigh show | wc -l)
if ((routes != n - 1 || neighbours != want_neighbours)); then
	echo "namespace 0 holds $routes routes and $neighbours neighbours, not $((n - 1)) and $want_neighbours" >&2
	exit 1
fi
listener=no
[[ -n ${LISTEN:-} ]] && listener=yes
awk -v n="$n" -v w="$want_neighbours" -v f="$form" -v l="$listener" -v s="$start" -v e="$end" 'BEGIN {
	printf "N=%d form=%s listener=%s: %d routes and %d neighbours in %.1f s\n",
		n, f, l, n * (n - 1), n * w, e - s
}'
