#!/bin/bash
# How one node's kernel cost to install its peer routes grows with the number of
# peers, per route form: one network namespace at a time, a veth pair standing in for
# the overlay device, P peer routes added by one `ip -batch`; prints the time of that
# batch for each P and form. docs/scale.md ("One node's routes grow quadratically in
# flannel's form") has the figures and the reason.
#
#   sudo bench/route-form-growth.sh [P ...]     # 1000 2000 4000 8000 16000 by default
#   REPEATS=3   runs of each (form, P), printed one per line
#
# Forms: gateway (each route via its own <subnet>.0 onlink: flanneld's and vxmesh's),
# nexthop (the same gateways as nexthop objects, `nhid`), shared (every route via one
# gateway). Neighbours are left out: they cost the same per peer in every form.
# Each namespace is named rfg<pid>-<form>-<P> and deleted after its batch (also on
# Ctrl-C). No packet is sent.
set -euo pipefail

peers=("$@")
((${#peers[@]})) || peers=(1000 2000 4000 8000 16000)
repeats=${REPEATS:-1}
for p in "${peers[@]}"; do
	if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 60000)); then
		echo "P must be a number from 1 to 60000, not '$p'" >&2
		exit 2
	fi
done
if ! [[ $repeats =~ ^[0-9]+$ ]] || ((repeats < 1 || repeats > 20)); then
	echo "REPEATS must be a number from 1 to 20, not '$repeats'" >&2
	exit 2
fi
[[ $(id -u) == 0 ]] || {
	echo "run as root (it creates network namespaces)" >&2
	exit 2
}

prefix=rfg$$
dir=$(mktemp -d)
cleanup() {
	ip netns list 2>/dev/null | awk -v p="$prefix-" 'index($1, p) == 1 {print $1}' |
		while read -r ns; do ip netns del "$ns"; done
	rm -rf "$dir"
}
trap cleanup EXIT

# The batch for P peers in one form: peer i's subnet is 10.(64 + i/250).(i%250).0/24.
batch() {
	local form=$1 p=$2 i gw
	for ((i = 1; i <= p; i++)); do
		gw=10.$((64 + i / 250)).$((i % 250)).0
		case $form in
		gateway) echo "route add $gw/24 via $gw dev vx0 onlink" ;;
		nexthop)
			echo "nexthop add id $i via $gw dev vx0 onlink"
			echo "route add $gw/24 nhid $i"
			;;
		shared) echo "route add $gw/24 via 169.254.1.1 dev vx0 onlink" ;;
		esac
	done
}

echo "kernel $(uname -r); seconds for one namespace's peer routes"
printf '%-8s %6s %10s\n' form peers seconds
for p in "${peers[@]}"; do
	for form in gateway nexthop shared; do
		batch "$form" "$p" >"$dir/$form-$p"
		for ((r = 1; r <= repeats; r++)); do
			ns=$prefix-$form-$p
			ip netns add "$ns"
			ip -n "$ns" link add vx0 type veth peer name vx1
			# The node's own VTEP address, as on the overlay device.
			ip -n "$ns" addr add 10.63.0.0/32 dev vx0
			ip -n "$ns" link set vx0 up
			ip -n "$ns" link set vx1 up
			t0=$(date +%s%N)
			ip -n "$ns" -batch "$dir/$form-$p"
			t1=$(date +%s%N)
			ip netns del "$ns"
			printf '%-8s %6d %10.3f\n' "$form" "$p" "$(((t1 - t0) / 1000))e-6"
		done
	done
done
