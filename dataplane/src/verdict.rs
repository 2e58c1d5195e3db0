//! What to do with one frame or datagram: the dataplane's decisions, without I/O.
//!
//! [`classify_egress`] looks at an Ethernet frame the kernel wrote to the TAP and
//! returns [`Egress`]: send it to a peer's PublicIP, answer it locally (ARP for a
//! peer's VTEP address), or drop it with a reason. [`classify_ingress`] looks at a
//! UDP datagram from the underlay and returns [`Ingress`]: deliver the inner frame
//! to the TAP, or drop it with a reason. The driver loops act on the verdict; every
//! verdict is a complete instruction, so they have no "impossible" arm.
//!
//! Read first: RFC 7348 §4-5 (VXLAN), RFC 826 (ARP).

use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr};

use rustc_hash::FxHasher;

use crate::counters::DropReason;
use crate::fib::ForwardingTable;
use crate::wire::ip::{PROTO_TCP, PROTO_UDP};
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, VxlanHeader,
};

/// Length of an ARP reply frame (Ethernet + ARP, no padding: the TAP does not need it).
pub const ARP_FRAME_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN + ArpPacket::<&[u8]>::LEN;

/// The decision for one frame read from the TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Egress {
    /// Encapsulate and send to `peer` (its PublicIP, at the configured port): the
    /// IPv4 one for a frame to its VtepMAC, the IPv6 one (VXLAN over UDP/IPv6) for a
    /// frame to its IPv6 VtepMAC.
    /// `flow_hash` picks the outer UDP source port (RFC 7348 §5: entropy for ECMP).
    /// `slot` is the peer's slot in this table generation (per-peer counters).
    Forward {
        peer: IpAddr,
        slot: usize,
        flow_hash: u32,
    },
    /// Write this ARP reply back to the TAP.
    ArpReply([u8; ARP_FRAME_LEN]),
    Drop(DropReason),
}

/// Decides what to do with `frame` (no virtio header) read from the TAP.
pub fn classify_egress(frame: &[u8], table: &ForwardingTable) -> Egress {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Egress::Drop(DropReason::EgressMalformed);
    };
    let dst = eth.dst();
    if dst.is_multicast() {
        if eth.ethertype() == EtherType::ARP {
            return answer_arp(&eth, table);
        }
        return Egress::Drop(DropReason::Multicast);
    }
    match table.peer_slot_by_mac(&dst) {
        Some((peer, slot)) => Egress::Forward {
            peer,
            slot,
            flow_hash: flow_hash(&eth),
        },
        None => Egress::Drop(DropReason::UnknownDestination),
    }
}

fn answer_arp(eth: &EthernetFrame<&[u8]>, table: &ForwardingTable) -> Egress {
    let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
        return Egress::Drop(DropReason::EgressMalformed);
    };
    let req = ArpRepr::parse(&arp);
    if req.operation != ArpOperation::Request {
        return Egress::Drop(DropReason::Multicast);
    }
    let Some(peer_mac) = table.mac_for_vtep_ip(&req.target_ip) else {
        return Egress::Drop(DropReason::ArpUnknownTarget);
    };
    let reply = ArpRepr {
        operation: ArpOperation::Reply,
        sender_mac: peer_mac,
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    };
    let mut out = [0u8; ARP_FRAME_LEN];
    let mut f = EthernetFrame::new_unchecked(&mut out[..]);
    f.set_dst(req.sender_mac);
    f.set_src(peer_mac);
    f.set_ethertype(EtherType::ARP);
    reply.emit(f.payload_mut());
    Egress::ArpReply(out)
}

/// A hash of the inner flow: addresses, protocol and, for unfragmented TCP/UDP,
/// ports. Frames of one flow always hash alike, so they leave from one socket and
/// are never reordered.
pub fn flow_hash(eth: &EthernetFrame<&[u8]>) -> u32 {
    let mut h = FxHasher::default();
    match eth.ethertype() {
        EtherType::IPV4 => {
            if let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) {
                h.write_u32(u32::from(ip.src()));
                h.write_u32(u32::from(ip.dst()));
                h.write_u8(ip.protocol());
                if !ip.is_fragment() {
                    hash_ports(&mut h, ip.protocol(), ip.payload());
                }
            }
        }
        EtherType::IPV6 => {
            if let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) {
                h.write_u128(u128::from(ip.src()));
                h.write_u128(u128::from(ip.dst()));
                h.write_u8(ip.next_header());
                hash_ports(&mut h, ip.next_header(), ip.payload());
            }
        }
        _ => h.write_u16(eth.ethertype().0),
    }
    let v = h.finish();
    (v ^ (v >> 32)) as u32
}

fn hash_ports(h: &mut FxHasher, proto: u8, l4: &[u8]) {
    if (proto == PROTO_TCP || proto == PROTO_UDP) && l4.len() >= 4 {
        h.write(&l4[..4]);
    }
}

/// The decision for one VXLAN datagram received from the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Ingress {
    /// Write `datagram[inner..]` (an Ethernet frame) to the TAP.
    Deliver {
        inner: usize,
    },
    Drop(DropReason),
}

/// Decides what to do with `datagram` (the UDP payload) that came from `src`.
/// `local_vtep_ip`: this node's VTEP address (`<subnet>.0`; unspecified while not
/// known): with the table's [`crate::fib::InnerCheck`], the subnet inner destinations
/// must lie in.
pub fn classify_ingress(
    src: Ipv4Addr,
    datagram: &[u8],
    table: &ForwardingTable,
    local_vtep_ip: Ipv4Addr,
) -> Ingress {
    let Some(slot) = table.slot_by_source(&src) else {
        return Ingress::Drop(DropReason::UnknownSource);
    };
    let hdr = match VxlanHeader::parse(datagram) {
        Ok(h) => h,
        Err(_) => return Ingress::Drop(DropReason::IngressMalformed),
    };
    if hdr.vni != table.local().vni {
        return Ingress::Drop(DropReason::WrongVni);
    }
    let inner = &datagram[VxlanHeader::LEN..];
    let Ok(eth) = EthernetFrame::new_checked(inner) else {
        return Ingress::Drop(DropReason::IngressMalformed);
    };
    let dst = eth.dst();
    if dst.is_broadcast() {
        // Pure L3, like flannel's vxlan backend: peers send only to our VtepMAC and
        // answer ARP for VTEP addresses themselves, so no broadcast crosses nodes.
        return Ingress::Drop(DropReason::Broadcast);
    }
    if dst != table.local().vtep_mac {
        return Ingress::Drop(DropReason::NotForUs);
    }
    if let Some(reason) = inner_address(&eth, table, slot, local_vtep_ip) {
        return Ingress::Drop(reason);
    }
    Ingress::Deliver {
        inner: VxlanHeader::LEN,
    }
}

/// Anti-spoofing on the inner frame (with the table's [`InnerCheck`]; none turns it
/// off). The outer source names the peer, but any host on the underlay can forge it;
/// the inner packet must then be IPv4 (the overlay is pure L3: no ARP crosses it, IPv6
/// rides `flannel-v6.<VNI>`), go to this node's subnet (else this node would relay
/// it onward, masqueraded with `--ip-masq`), and not claim a source in another node's
/// subnet: inside the Network a source must be in the sending peer's subnet (its pods,
/// its VTEP address, which the kernel picks for host traffic into the overlay). A
/// source outside the Network passes: a peer may forward traffic it did not
/// masquerade (a LAN that routes the pod Network to a gateway node), as flannel's
/// kernel device allows.
///
/// [`InnerCheck`]: crate::fib::InnerCheck
#[inline]
fn inner_address(
    eth: &EthernetFrame<&[u8]>,
    table: &ForwardingTable,
    slot: usize,
    local_vtep_ip: Ipv4Addr,
) -> Option<DropReason> {
    let check = table.local().inner?;
    let mask = |len: u8| {
        u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0)
    };
    let in_subnet = |ip: u32, net: Ipv4Addr, len: u8| ip & mask(len) == u32::from(net) & mask(len);
    let addr = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let ip = eth.payload();
    if eth.ethertype() != EtherType::IPV4 || ip.len() < 20 {
        return Some(DropReason::InnerAddress);
    }
    let (src, dst) = (addr(&ip[12..]), addr(&ip[16..]));
    let peer = table.peers().get(slot)?;
    if in_subnet(src, check.network, check.network_len)
        && !in_subnet(src, peer.vtep_ip, check.subnet_len)
    {
        return Some(DropReason::InnerAddress);
    }
    if !local_vtep_ip.is_unspecified() && !in_subnet(dst, local_vtep_ip, check.subnet_len) {
        return Some(DropReason::InnerAddress);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::{LocalVtep, PeerVtep};
    use crate::wire::testdata::{
        ARP_REQUEST, INNER_ICMP_REQUEST, OUTER_ICMP_REQUEST, OUTER_UDP_PAYLOAD, PARTIAL_TCP_OUTER,
        PARTIAL_UDP_OUTER,
    };
    use crate::wire::{MacAddr, Vni};

    // Node A of the capture: VtepMAC c6:d2:..., peer B 0e:5a:... at 192.168.77.2.
    fn node_a() -> ForwardingTable {
        ForwardingTable::new(
            LocalVtep {
                vtep_mac: "c6:d2:32:6f:8f:44".parse().unwrap(),
                vni: Vni::new(1).unwrap(),
                port: 8472,
                inner: None,
                v6: None,
            },
            [PeerVtep {
                vtep_mac: "0e:5a:11:22:33:44".parse().unwrap(),
                public_ip: Ipv4Addr::new(192, 168, 77, 2),
                vtep_ip: Ipv4Addr::new(10, 244, 2, 0),
                v6: None,
            }],
        )
    }

    // Node B: the receiver of the captured request.
    fn node_b() -> ForwardingTable {
        ForwardingTable::new(
            LocalVtep {
                vtep_mac: "0e:5a:11:22:33:44".parse().unwrap(),
                vni: Vni::new(1).unwrap(),
                port: 8472,
                inner: None,
                v6: None,
            },
            [PeerVtep {
                vtep_mac: "c6:d2:32:6f:8f:44".parse().unwrap(),
                public_ip: Ipv4Addr::new(192, 168, 77, 1),
                vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
                v6: None,
            }],
        )
    }

    #[test]
    fn captured_request_goes_to_peer() {
        match classify_egress(&INNER_ICMP_REQUEST, &node_a()) {
            Egress::Forward { peer, .. } => {
                assert_eq!(peer, IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_mac_and_multicast_are_dropped() {
        let mut f = INNER_ICMP_REQUEST;
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        assert_eq!(
            classify_egress(&f, &node_a()),
            Egress::Drop(DropReason::UnknownDestination)
        );
        f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 2]);
        assert_eq!(
            classify_egress(&f, &node_a()),
            Egress::Drop(DropReason::Multicast)
        );
        assert_eq!(
            classify_egress(&f[..13], &node_a()),
            Egress::Drop(DropReason::EgressMalformed)
        );
    }

    #[test]
    fn arp_for_peer_vtep_is_answered_locally() {
        let Egress::ArpReply(reply) = classify_egress(&ARP_REQUEST, &node_a()) else {
            panic!("expected a reply");
        };
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        let peer: MacAddr = "0e:5a:11:22:33:44".parse().unwrap();
        assert_eq!(eth.dst().to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(eth.src(), peer);
        let r = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap());
        assert_eq!(r.operation, ArpOperation::Reply);
        assert_eq!(
            (r.sender_mac, r.sender_ip),
            (peer, Ipv4Addr::new(10, 244, 2, 0))
        );
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 244, 1, 0));
        // cross-check with an independent parser
        let arp = etherparse::ArpPacket::from_slice(eth.payload()).unwrap();
        assert_eq!(arp.operation, etherparse::ArpOperation::REPLY);

        let mut other = ARP_REQUEST;
        other[41] = 9; // who-has 10.244.2.9: not a VTEP address
        assert_eq!(
            classify_egress(&other, &node_a()),
            Egress::Drop(DropReason::ArpUnknownTarget)
        );
    }

    /// Node B with the inner-address check on (10.244.0.0/16 in /24s, its VTEP
    /// 10.244.2.0).
    fn node_b_checked() -> (ForwardingTable, Ipv4Addr) {
        let t = node_b();
        let local = LocalVtep {
            inner: Some(crate::fib::InnerCheck::lab()),
            ..*t.local()
        };
        (
            t.with_local(local, t.peers().iter().copied()),
            Ipv4Addr::new(10, 244, 2, 0),
        )
    }

    /// The outer source names the peer; the inner frame must be IPv4 from that peer's
    /// subnet to this node's. A forged datagram behind node A's address cannot claim
    /// one of B's own pods as its source, nor use B to reach anything but B's pods.
    #[test]
    fn inner_addresses_must_match_the_peer_and_this_node() {
        let (t, me) = node_b_checked();
        let from = Ipv4Addr::new(192, 168, 77, 1);
        let d = OUTER_ICMP_REQUEST[OUTER_UDP_PAYLOAD..].to_vec();
        assert_eq!(
            classify_ingress(from, &d, &t, me),
            Ingress::Deliver { inner: 8 }
        );
        let (src, dst) = (8 + 14 + 12, 8 + 14 + 16);
        let with = |at: usize, ip: [u8; 4]| {
            let mut x = d.clone();
            x[at..at + 4].copy_from_slice(&ip);
            x
        };
        let dropped = Ingress::Drop(DropReason::InnerAddress);
        // A source in B's own subnet, or in another node's.
        for forged in [[10, 244, 2, 5], [10, 244, 3, 7], [10, 244, 255, 1]] {
            assert_eq!(classify_ingress(from, &with(src, forged), &t, me), dropped);
        }
        // Any of A's pods (and A's VTEP address) is fine; so is a source outside the
        // Network, which A forwarded without masquerading it (a LAN client reaching
        // B's pod through A, as flannel's kernel device allows).
        for fine in [[10, 244, 1, 200], [192, 168, 50, 7], [8, 8, 8, 8]] {
            assert_eq!(
                classify_ingress(from, &with(src, fine), &t, me),
                Ingress::Deliver { inner: 8 }
            );
        }
        // A destination outside B's subnet: B would forward (or masquerade) it.
        for elsewhere in [[8, 8, 8, 8], [10, 244, 1, 9], [10, 244, 3, 1]] {
            assert_eq!(
                classify_ingress(from, &with(dst, elsewhere), &t, me),
                dropped
            );
        }
        // Before B knows its own subnet, only the source is checked.
        assert_eq!(
            classify_ingress(from, &with(dst, [8, 8, 8, 8]), &t, Ipv4Addr::UNSPECIFIED),
            Ingress::Deliver { inner: 8 }
        );
        assert_eq!(
            classify_ingress(from, &with(src, [10, 244, 2, 5]), &t, Ipv4Addr::UNSPECIFIED),
            dropped
        );
        // Not IPv4 (ARP, IPv6), or too short to hold the addresses.
        let mut arp = d.clone();
        arp[8 + 12..8 + 14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify_ingress(from, &arp, &t, me), dropped);
        let mut v6 = d.clone();
        v6[8 + 12..8 + 14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(classify_ingress(from, &v6, &t, me), dropped);
        assert_eq!(classify_ingress(from, &d[..8 + 14 + 19], &t, me), dropped);
        // No InnerCheck: no check (a table built without one).
        assert_eq!(
            classify_ingress(from, &with(src, [10, 244, 2, 5]), &node_b(), me),
            Ingress::Deliver { inner: 8 }
        );
    }

    #[test]
    fn captured_datagram_is_delivered_by_peer() {
        let d = &OUTER_ICMP_REQUEST[OUTER_UDP_PAYLOAD..];
        let from = Ipv4Addr::new(192, 168, 77, 1);
        assert_eq!(
            classify_ingress(from, d, &node_b(), Ipv4Addr::UNSPECIFIED),
            Ingress::Deliver { inner: 8 }
        );
        assert_eq!(&d[8..], &INNER_ICMP_REQUEST[..]);
        // Kernel senders at default offloads leave inner checksums partial: such a
        // datagram is delivered like any other (the coalescer marks it NEEDS_CSUM).
        for outer in [&PARTIAL_TCP_OUTER[..], &PARTIAL_UDP_OUTER[..]] {
            let d = &outer[OUTER_UDP_PAYLOAD..];
            assert_eq!(
                classify_ingress(from, d, &node_b(), Ipv4Addr::UNSPECIFIED),
                Ingress::Deliver { inner: 8 }
            );
            assert!(crate::offload::partial::detect(&d[8..]).is_some());
        }
    }

    #[test]
    fn ingress_drops_by_reason() {
        let d = OUTER_ICMP_REQUEST[OUTER_UDP_PAYLOAD..].to_vec();
        let from = Ipv4Addr::new(192, 168, 77, 1);
        let t = node_b();
        assert_eq!(
            classify_ingress(
                Ipv4Addr::new(192, 168, 77, 66),
                &d,
                &t,
                Ipv4Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::UnknownSource)
        );
        let mut wrong_vni = d.clone();
        wrong_vni[6] = 2;
        assert_eq!(
            classify_ingress(from, &wrong_vni, &t, Ipv4Addr::UNSPECIFIED),
            Ingress::Drop(DropReason::WrongVni)
        );
        let mut no_flag = d.clone();
        no_flag[0] = 0;
        assert_eq!(
            classify_ingress(from, &no_flag, &t, Ipv4Addr::UNSPECIFIED),
            Ingress::Drop(DropReason::IngressMalformed)
        );
        assert_eq!(
            classify_ingress(from, &d[..20], &t, Ipv4Addr::UNSPECIFIED),
            Ingress::Drop(DropReason::IngressMalformed)
        );
        let mut other_mac = d.clone();
        other_mac[8 + 5] ^= 1;
        assert_eq!(
            classify_ingress(from, &other_mac, &t, Ipv4Addr::UNSPECIFIED),
            Ingress::Drop(DropReason::NotForUs)
        );
    }

    /// Behaviour change: a broadcast inner frame from a peer used to be delivered.
    #[test]
    fn ingress_drops_broadcast_and_multicast() {
        let d = OUTER_ICMP_REQUEST[OUTER_UDP_PAYLOAD..].to_vec();
        let from = Ipv4Addr::new(192, 168, 77, 1);
        let mut bcast = d.clone();
        bcast[8..14].copy_from_slice(&MacAddr::BROADCAST.0);
        assert_eq!(
            classify_ingress(from, &bcast, &node_b(), Ipv4Addr::UNSPECIFIED),
            Ingress::Drop(DropReason::Broadcast)
        );
        let mut mcast = d.clone();
        mcast[8..14].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(
            classify_ingress(from, &mcast, &node_b(), Ipv4Addr::UNSPECIFIED),
            Ingress::Drop(DropReason::NotForUs)
        );
    }

    #[test]
    fn flow_hash_is_per_flow() {
        let eth = |f: &[u8]| flow_hash(&EthernetFrame::new_checked(f).unwrap());
        let a = eth(&INNER_ICMP_REQUEST);
        let mut same = INNER_ICMP_REQUEST;
        same[14 + 4] ^= 0xff; // IP id differs: same flow
        assert_eq!(a, eth(&same));
        let mut other = INNER_ICMP_REQUEST;
        other[14 + 19] = 7; // another destination
        assert_ne!(a, eth(&other));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(0u8.., 0..120), src in 0u32..) {
            let _ = classify_egress(&b, &node_a());
            let _ = classify_ingress(Ipv4Addr::from(src), &b, &node_b(), Ipv4Addr::UNSPECIFIED);
            let _ = classify_ingress(Ipv4Addr::new(192, 168, 77, 1), &b, &node_b(), Ipv4Addr::UNSPECIFIED);
        }
    }
}
