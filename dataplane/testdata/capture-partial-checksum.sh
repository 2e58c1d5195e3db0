#!/usr/bin/env bash
# Captures what a kernel VXLAN sender at default offloads puts on a veth underlay: inner
# TCP and UDP checksums left partial (CHECKSUM_PARTIAL: the pseudo-header sum in the field).
# The frames in dataplane/src/wire/testdata.rs (PARTIAL_*) come from this script, run as root
# on Linux 6.18 (the kernel and iproute2 of the project's build machines):
#
#   dataplane/testdata/capture-partial-checksum.sh > /tmp/partial.txt
#
# Topology: two network namespaces joined by a veth (no ethtool changes: default offloads),
# flannel's recipe on each side (vxlan flannel.1, VNI 1, port 8472, nolearning, permanent
# neighbour + fdb + onlink route), VtepMACs c6:d2:32:6f:8f:44 (A) and 0e:5a:11:22:33:44 (B).
# A TCP connection 10.244.1.0 -> 10.244.2.0:5201 carries one 24-byte write; a UDP datagram
# goes to 10.244.2.0:5300. tcpdump -xx on B's underlay veth prints every VXLAN datagram A sent.
set -euo pipefail
A=capA-$$; B=capB-$$
cleanup() { ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add capa type veth peer name capb
ip link set capa netns "$A"; ip link set capb netns "$B"
ip -n "$A" addr add 192.168.77.1/24 dev capa; ip -n "$B" addr add 192.168.77.2/24 dev capb
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set capa up; ip -n "$B" link set capb up
ip -n "$A" link add flannel.1 address c6:d2:32:6f:8f:44 type vxlan id 1 dstport 8472 local 192.168.77.1 dev capa nolearning
ip -n "$B" link add flannel.1 address 0e:5a:11:22:33:44 type vxlan id 1 dstport 8472 local 192.168.77.2 dev capb nolearning
ip -n "$A" addr add 10.244.1.0/32 dev flannel.1; ip -n "$B" addr add 10.244.2.0/32 dev flannel.1
ip -n "$A" link set flannel.1 up; ip -n "$B" link set flannel.1 up
ip -n "$A" neigh add 10.244.2.0 lladdr 0e:5a:11:22:33:44 dev flannel.1 nud permanent
ip -n "$B" neigh add 10.244.1.0 lladdr c6:d2:32:6f:8f:44 dev flannel.1 nud permanent
bridge -n "$A" fdb append 0e:5a:11:22:33:44 dev flannel.1 dst 192.168.77.2
bridge -n "$B" fdb append c6:d2:32:6f:8f:44 dev flannel.1 dst 192.168.77.1
ip -n "$A" route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
ip -n "$B" route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink
echo "# ethtool -k capa (A's underlay, defaults):"
ip netns exec "$A" ethtool -k capa | grep -E '^(tx-checksumming|tcp-segmentation-offload|tx-udp_tnl-segmentation):' | sed 's/^/#   /'

ip netns exec "$B" timeout 10 python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.244.2.0", 5201)); s.listen(1)
c, _ = s.accept(); c.recv(100); c.close()' &
server=$!
sleep 0.5
ip netns exec "$B" timeout 3 tcpdump -l -i capb -n -xx 'udp port 8472 and src host 192.168.77.1' 2>/dev/null &
dump=$!
sleep 1
ip netns exec "$A" python3 -c '
import socket, time
c = socket.create_connection(("10.244.2.0", 5201))
c.sendall(b"vxmesh partial checksum\n"); time.sleep(0.3); c.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("10.244.1.0", 40000)); u.sendto(b"vxmesh udp\n", ("10.244.2.0", 5300))'
wait "$server" || true
wait "$dump" || true
