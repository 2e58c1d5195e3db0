set -e
ip netns add capA; ip netns add capB
ip link add capa type veth peer name capb
ip link set capa netns capA; ip link set capb netns capB
ip -n capA addr add 192.168.77.1/24 dev capa; ip -n capB addr add 192.168.77.2/24 dev capb
ip -n capA link set capa up; ip -n capB link set capb up; ip -n capA link set lo up; ip -n capB link set lo up
ip -n capA link add flannel.1 type vxlan id 1 dstport 8472 local 192.168.77.1 dev capa nolearning
ip -n capB link add flannel.1 type vxlan id 1 dstport 8472 local 192.168.77.2 dev capb nolearning
ip -n capA link set flannel.1 address c6:d2:32:6f:8f:44; ip -n capB link set flannel.1 address 0e:5a:11:22:33:44
ip -n capA addr add 10.244.1.0/32 dev flannel.1; ip -n capB addr add 10.244.2.0/32 dev flannel.1
ip -n capA link set flannel.1 up; ip -n capB link set flannel.1 up
ip -n capA neigh add 10.244.2.0 lladdr 0e:5a:11:22:33:44 dev flannel.1 nud permanent
ip -n capB neigh add 10.244.1.0 lladdr c6:d2:32:6f:8f:44 dev flannel.1 nud permanent
bridge -n capA fdb append 0e:5a:11:22:33:44 dev flannel.1 dst 192.168.77.2
bridge -n capB fdb append c6:d2:32:6f:8f:44 dev flannel.1 dst 192.168.77.1
ip -n capA route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
ip -n capB route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink
ip netns exec capB tcpdump -i capb -xx -c 2 -n udp port 8472 > /tmp/cap_vxlan.txt 2>/dev/null &
ip netns exec capA tcpdump -i flannel.1 -xx -c 2 -n icmp > /tmp/cap_inner.txt 2>/dev/null &
sleep 1
ip netns exec capA ping -c1 -s 8 10.244.2.0 || true
sleep 1
# ARP on capa
ip netns exec capA tcpdump -i capa -xx -c 2 -n arp > /tmp/cap_arp.txt 2>/dev/null &
sleep 1
ip netns exec capA ping -c1 192.168.77.2 >/dev/null || true
sleep 1
kill %1 %2 %3 2>/dev/null || true
ip netns del capA; ip netns del capB
