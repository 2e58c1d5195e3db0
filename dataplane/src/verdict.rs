//! What to do with one frame or datagram: the dataplane's decisions, without I/O.
//!
//! [`classify_egress`] looks at an Ethernet frame the kernel wrote to the TAP and
//! returns [`Egress`]: send it to a peer's PublicIP (IPv4 or IPv6, by the VtepMAC it
//! is for), answer it locally (ARP for a peer's VTEP address, a Neighbor Solicitation
//! for a peer's IPv6 VTEP address), or drop it with a reason. [`classify_ingress`]
//! looks at a UDP datagram from the underlay and returns [`Ingress`]: deliver the
//! inner frame to the TAP (with the destination MAC to write first, for a frame sent
//! to this node's IPv6 VtepMAC), or drop it with a reason. The driver loops act on
//! the verdict; every verdict is a complete instruction, so they have no "impossible"
//! arm.
//!
//! Read first: RFC 7348 §4-5 (VXLAN), RFC 826 (ARP), RFC 4861 §7.2 (address
//! resolution in IPv6).

use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxHasher;

use crate::counters::DropReason;
use crate::fib::{ForwardingTable, InnerCheck};
use crate::wire::ip::{PROTO_TCP, PROTO_UDP};
use crate::wire::{
    ndp, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet,
    MacAddr, NeighborSolicit, VxlanHeader,
};

pub use crate::wire::ndp::NA_FRAME_LEN;

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
    /// Write this Neighbor Advertisement back to the TAP.
    NeighborAdvert([u8; NA_FRAME_LEN]),
    Drop(DropReason),
}

/// Decides what to do with `frame` (no virtio header) read from the TAP.
///
/// Address resolution never crosses the overlay, as with flannel's vxlan device:
/// ARP requests and Neighbor Solicitations are answered here for peers' VTEP
/// addresses, and dropped for any other target (`ArpUnknownTarget`, for both; the
/// kernel's duplicate address detection of an address of its own is `Multicast`,
/// as it was before solicitations were answered). That holds for a unicast solicitation too (the kernel's
/// reachability check of a neighbour it learned): it is answered, not sent to the
/// peer, whose kernel would answer with its TAP's MAC, not its IPv6 VtepMAC.
pub fn classify_egress(frame: &[u8], table: &ForwardingTable) -> Egress {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Egress::Drop(DropReason::EgressMalformed);
    };
    let dst = eth.dst();
    if dst.is_multicast() {
        return match eth.ethertype() {
            EtherType::ARP => answer_arp(&eth, table),
            EtherType::IPV6 if ndp::looks_like_solicit(eth.payload()) => answer_ns(frame, table),
            // Other IPv6 multicast (MLD reports, router solicitations), ...
            _ => Egress::Drop(DropReason::Multicast),
        };
    }
    match table.peer_slot_by_mac(&dst) {
        Some(_) if eth.ethertype() == EtherType::IPV6 && ndp::looks_like_solicit(eth.payload()) => {
            answer_ns(frame, table)
        }
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

/// Answers a Neighbor Solicitation for a peer's IPv6 VTEP address with the peer's
/// IPv6 VtepMAC (RFC 4861 §7.2.4; see [`NeighborSolicit::answer`]). One that fails
/// RFC 4861's checks is malformed.
fn answer_ns(frame: &[u8], table: &ForwardingTable) -> Egress {
    let Ok(ns) = NeighborSolicit::parse(frame) else {
        return Egress::Drop(DropReason::EgressMalformed);
    };
    let Some(peer_mac) = table.mac_for_vtep_ip6(&ns.target) else {
        // Duplicate address detection (the TAP probing an address of its own, a
        // link-local one unless IPv6 is set as vxmeshd sets it) asks nothing of a
        // peer: multicast the overlay does not carry, as before NDP was answered.
        if ns.is_dad() {
            return Egress::Drop(DropReason::Multicast);
        }
        return Egress::Drop(DropReason::ArpUnknownTarget);
    };
    Egress::NeighborAdvert(ns.answer(peer_mac).emit())
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
    /// Write `datagram[inner..]` (an Ethernet frame) to the TAP; with `rewrite_dst`,
    /// after writing that MAC over its destination MAC. The frame came to this node's
    /// IPv6 VtepMAC ([`crate::fib::LocalVtep6`]); the TAP has only the IPv4 one
    /// (`Some` holds it), and the kernel drops frames to other MACs.
    Deliver {
        inner: usize,
        rewrite_dst: Option<MacAddr>,
    },
    Drop(DropReason),
}

/// Decides what to do with `datagram` (the UDP payload) that came from `src`: a
/// peer's PublicIP or PublicIPv6 (an IPv4-mapped IPv6 address, as a dual-stack
/// socket reports an IPv4 sender, counts as that IPv4 address). `local_vtep_ip`,
/// `local_vtep_ip6`: this node's VTEP addresses (`<subnet>.0`, `<IPv6 subnet>::`;
/// unspecified while not known): with the table's [`crate::fib::InnerCheck`] and
/// [`crate::fib::InnerCheck6`], the subnets inner destinations must lie in.
pub fn classify_ingress(
    src: IpAddr,
    datagram: &[u8],
    table: &ForwardingTable,
    local_vtep_ip: Ipv4Addr,
    local_vtep_ip6: Ipv6Addr,
) -> Ingress {
    let slot = match src {
        IpAddr::V4(ip) => table.slot_by_source(&ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => table.slot_by_source(&v4),
            None => table.slot_by_source6(&ip),
        },
    };
    let Some(slot) = slot else {
        return Ingress::Drop(DropReason::UnknownSource);
    };
    let hdr = match VxlanHeader::parse(datagram) {
        Ok(h) => h,
        Err(_) => return Ingress::Drop(DropReason::IngressMalformed),
    };
    let local = table.local();
    if hdr.vni != local.vni {
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
    let rewrite_dst = if dst == local.vtep_mac {
        None
    } else if local.v6.is_some_and(|v6| v6.vtep_mac == dst) {
        Some(local.vtep_mac)
    } else {
        return Ingress::Drop(DropReason::NotForUs);
    };
    if let Some(reason) = inner_address(&eth, table, slot, local_vtep_ip, local_vtep_ip6) {
        return Ingress::Drop(reason);
    }
    Ingress::Deliver {
        inner: VxlanHeader::LEN,
        rewrite_dst,
    }
}

/// Anti-spoofing on the inner frame (with the table's [`InnerCheck`] for IPv4 and
/// [`InnerCheck6`] for IPv6; none turns it off). The outer source names the peer,
/// but any host on the underlay can forge it; the inner packet must then be IP (the
/// overlay is pure L3: no ARP or Neighbor Discovery crosses it), go to this node's
/// subnet of its family (else this node would relay it onward, masqueraded with
/// `--ip-masq`), and not claim a source in another node's subnet: inside the Network
/// a source must be in the sending peer's subnet (its pods, its VTEP address, which
/// the kernel picks for host traffic into the overlay). A source outside the Network
/// passes: a peer may forward traffic it did not masquerade (a LAN that routes the
/// pod Network to a gateway node), as flannel's kernel device allows; so do IPv6
/// link-local sources.
///
/// IPv6 is checked only with an [`InnerCheck6`]; without one, while IPv4 is checked,
/// inner IPv6 is dropped (else it would pass unchecked: IPv6 rides
/// `flannel-v6.<VNI>` then). Any other inner frame is dropped when either family is
/// checked.
///
/// [`InnerCheck6`]: crate::fib::InnerCheck6
#[inline]
fn inner_address(
    eth: &EthernetFrame<&[u8]>,
    table: &ForwardingTable,
    slot: usize,
    local_vtep_ip: Ipv4Addr,
    local_vtep_ip6: Ipv6Addr,
) -> Option<DropReason> {
    let local = table.local();
    match eth.ethertype() {
        EtherType::IPV4 => inner_ipv4(eth.payload(), local.inner?, table, slot, local_vtep_ip),
        EtherType::IPV6 => inner_ipv6(eth.payload(), table, slot, local_vtep_ip6),
        _ => (local.inner.is_some() || local.v6.is_some_and(|v6| v6.inner.is_some()))
            .then_some(DropReason::InnerAddress),
    }
}

#[inline]
fn inner_ipv4(
    ip: &[u8],
    check: InnerCheck,
    table: &ForwardingTable,
    slot: usize,
    local_vtep_ip: Ipv4Addr,
) -> Option<DropReason> {
    let mask = |len: u8| {
        u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0)
    };
    let in_subnet = |ip: u32, net: Ipv4Addr, len: u8| ip & mask(len) == u32::from(net) & mask(len);
    let addr = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if ip.len() < 20 {
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

/// [`inner_address`] for an IPv6 packet: its source, if inside the IPv6Network, in
/// the sending peer's IPv6 subnet (the one its admitted IPv6 half names: a peer
/// without one has none), its destination in this node's.
fn inner_ipv6(
    ip: &[u8],
    table: &ForwardingTable,
    slot: usize,
    local_vtep_ip6: Ipv6Addr,
) -> Option<DropReason> {
    let local = table.local();
    let Some(check) = local.v6.and_then(|v6| v6.inner) else {
        return local.inner.map(|_| DropReason::InnerAddress);
    };
    let mask = |len: u8| {
        u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0)
    };
    let in_subnet =
        |ip: u128, net: Ipv6Addr, len: u8| ip & mask(len) == u128::from(net) & mask(len);
    let addr = |b: &[u8]| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        u128::from_be_bytes(a)
    };
    if ip.len() < 40 {
        return Some(DropReason::InnerAddress);
    }
    let (src, dst) = (addr(&ip[8..]), addr(&ip[24..]));
    if in_subnet(src, check.network, check.network_len) {
        match table.peer_v6(slot) {
            Some(peer) if in_subnet(src, peer.vtep_ip, check.subnet_len) => {}
            _ => return Some(DropReason::InnerAddress),
        }
    }
    if !local_vtep_ip6.is_unspecified() && !in_subnet(dst, local_vtep_ip6, check.subnet_len) {
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
            classify_ingress(IpAddr::V4(from), &d, &t, me, Ipv6Addr::UNSPECIFIED),
            Ingress::Deliver {
                inner: 8,
                rewrite_dst: None
            }
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
            assert_eq!(
                classify_ingress(
                    IpAddr::V4(from),
                    &with(src, forged),
                    &t,
                    me,
                    Ipv6Addr::UNSPECIFIED
                ),
                dropped
            );
        }
        // Any of A's pods (and A's VTEP address) is fine; so is a source outside the
        // Network, which A forwarded without masquerading it (a LAN client reaching
        // B's pod through A, as flannel's kernel device allows).
        for fine in [[10, 244, 1, 200], [192, 168, 50, 7], [8, 8, 8, 8]] {
            assert_eq!(
                classify_ingress(
                    IpAddr::V4(from),
                    &with(src, fine),
                    &t,
                    me,
                    Ipv6Addr::UNSPECIFIED
                ),
                Ingress::Deliver {
                    inner: 8,
                    rewrite_dst: None
                }
            );
        }
        // A destination outside B's subnet: B would forward (or masquerade) it.
        for elsewhere in [[8, 8, 8, 8], [10, 244, 1, 9], [10, 244, 3, 1]] {
            assert_eq!(
                classify_ingress(
                    IpAddr::V4(from),
                    &with(dst, elsewhere),
                    &t,
                    me,
                    Ipv6Addr::UNSPECIFIED
                ),
                dropped
            );
        }
        // Before B knows its own subnet, only the source is checked.
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &with(dst, [8, 8, 8, 8]),
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Deliver {
                inner: 8,
                rewrite_dst: None
            }
        );
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &with(src, [10, 244, 2, 5]),
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            dropped
        );
        // Not IPv4 (ARP, IPv6), or too short to hold the addresses.
        let mut arp = d.clone();
        arp[8 + 12..8 + 14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            classify_ingress(IpAddr::V4(from), &arp, &t, me, Ipv6Addr::UNSPECIFIED),
            dropped
        );
        let mut v6 = d.clone();
        v6[8 + 12..8 + 14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            classify_ingress(IpAddr::V4(from), &v6, &t, me, Ipv6Addr::UNSPECIFIED),
            dropped
        );
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &d[..8 + 14 + 19],
                &t,
                me,
                Ipv6Addr::UNSPECIFIED
            ),
            dropped
        );
        // No InnerCheck: no check (a table built without one).
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &with(src, [10, 244, 2, 5]),
                &node_b(),
                me,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Deliver {
                inner: 8,
                rewrite_dst: None
            }
        );
    }

    #[test]
    fn captured_datagram_is_delivered_by_peer() {
        let d = &OUTER_ICMP_REQUEST[OUTER_UDP_PAYLOAD..];
        let from = Ipv4Addr::new(192, 168, 77, 1);
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                d,
                &node_b(),
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Deliver {
                inner: 8,
                rewrite_dst: None
            }
        );
        assert_eq!(&d[8..], &INNER_ICMP_REQUEST[..]);
        // Kernel senders at default offloads leave inner checksums partial: such a
        // datagram is delivered like any other (the coalescer marks it NEEDS_CSUM).
        for outer in [&PARTIAL_TCP_OUTER[..], &PARTIAL_UDP_OUTER[..]] {
            let d = &outer[OUTER_UDP_PAYLOAD..];
            assert_eq!(
                classify_ingress(
                    IpAddr::V4(from),
                    d,
                    &node_b(),
                    Ipv4Addr::UNSPECIFIED,
                    Ipv6Addr::UNSPECIFIED
                ),
                Ingress::Deliver {
                    inner: 8,
                    rewrite_dst: None
                }
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
                IpAddr::V4(Ipv4Addr::new(192, 168, 77, 66)),
                &d,
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::UnknownSource)
        );
        let mut wrong_vni = d.clone();
        wrong_vni[6] = 2;
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &wrong_vni,
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::WrongVni)
        );
        let mut no_flag = d.clone();
        no_flag[0] = 0;
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &no_flag,
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::IngressMalformed)
        );
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &d[..20],
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::IngressMalformed)
        );
        let mut other_mac = d.clone();
        other_mac[8 + 5] ^= 1;
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &other_mac,
                &t,
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
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
            classify_ingress(
                IpAddr::V4(from),
                &bcast,
                &node_b(),
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::Broadcast)
        );
        let mut mcast = d.clone();
        mcast[8..14].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(
            classify_ingress(
                IpAddr::V4(from),
                &mcast,
                &node_b(),
                Ipv4Addr::UNSPECIFIED,
                Ipv6Addr::UNSPECIFIED
            ),
            Ingress::Drop(DropReason::NotForUs)
        );
    }

    // Dual stack, laid out as flannel lays out `flannel-v6.<VNI>`: node A (the TAP's
    // MAC is its IPv4 VtepMAC c6:d2:32:6f:8f:44, its IPv6 VtepMAC c6:d2:32:6f:8f:46,
    // IPv6 VTEP fd00:10:244:1::) with peers B and C, each with an IPv6 half, and D
    // without one. The solicitations of `wire::ndp`'s tests are A's.
    const A6_MAC: MacAddr = MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x46]);
    const B6_MAC: MacAddr = MacAddr([0x0e, 0, 0, 6, 0, 2]);
    const C6_MAC: MacAddr = MacAddr([0x0e, 0, 0, 6, 0, 3]);

    fn a_mac() -> MacAddr {
        "c6:d2:32:6f:8f:44".parse().unwrap()
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Node A's table with both checks on, its VTEP addresses.
    fn dual_a() -> (ForwardingTable, Ipv4Addr, Ipv6Addr) {
        let peer = |n: u8, v6: Option<MacAddr>| PeerVtep {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, n]),
            public_ip: Ipv4Addr::new(192, 168, 77, n),
            vtep_ip: Ipv4Addr::new(10, 244, n, 0),
            v6: v6.map(|mac| crate::fib::PeerVtep6 {
                vtep_mac: mac,
                public_ip: Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, u16::from(n)),
                vtep_ip: Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, 0),
            }),
        };
        let t = ForwardingTable::new(
            LocalVtep {
                vtep_mac: a_mac(),
                vni: Vni::new(1).unwrap(),
                port: 8472,
                inner: Some(crate::fib::InnerCheck::lab()),
                v6: Some(crate::fib::LocalVtep6 {
                    vtep_mac: A6_MAC,
                    inner: Some(crate::fib::InnerCheck6::lab()),
                }),
            },
            [peer(2, Some(B6_MAC)), peer(3, Some(C6_MAC)), peer(4, None)],
        );
        (t, Ipv4Addr::new(10, 244, 1, 0), ip6("fd00:10:244:1::"))
    }

    /// An IPv6 UDP frame (etherparse builds it: no code under test involved).
    fn v6_frame(dst_mac: MacAddr, src: &str, dst: &str) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([0x0e, 0, 0, 0, 0, 0x99], dst_mac.0)
            .ipv6(ip6(src).octets(), ip6(dst).octets(), 64)
            .udp(40_000, 5201)
            .write(&mut f, &[7; 12])
            .unwrap();
        f
    }

    /// `frame` behind a VXLAN header with VNI 1.
    fn vxlan(frame: &[u8]) -> Vec<u8> {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        d.extend_from_slice(frame);
        d
    }

    const B6: &str = "fd00:64::2";

    #[test]
    fn ipv6_goes_to_the_peers_public_ipv6() {
        let (t, ..) = dual_a();
        let f = v6_frame(B6_MAC, "fd00:10:244:1::2", "fd00:10:244:2::2");
        let Egress::Forward {
            peer,
            slot,
            flow_hash: h,
        } = classify_egress(&f, &t)
        else {
            panic!("not forwarded");
        };
        assert_eq!((peer, slot), (IpAddr::V6(ip6(B6)), 0));
        assert_eq!(h, flow_hash(&EthernetFrame::new_checked(&f[..]).unwrap()));
        // To B's IPv4 VtepMAC: its IPv4 PublicIP, the same slot.
        let mut to_v4 = f.clone();
        to_v4[..6].copy_from_slice(&[0x0e, 0, 0, 0, 0, 2]);
        assert!(matches!(
            classify_egress(&to_v4, &t),
            Egress::Forward { peer: IpAddr::V4(ip), slot: 0, .. } if ip == Ipv4Addr::new(192, 168, 77, 2)
        ));
        let to_c = v6_frame(C6_MAC, "fd00:10:244:1::2", "fd00:10:244:3::2");
        assert!(matches!(
            classify_egress(&to_c, &t),
            Egress::Forward { peer: IpAddr::V6(ip), slot: 1, .. } if ip == ip6("fd00:64::3")
        ));
        // D has no IPv6 half: no MAC but its IPv4 one leads to it.
        let to_d = v6_frame(
            MacAddr([0x0e, 0, 0, 6, 0, 4]),
            "fd00:10:244:1::2",
            "fd00:10:244:4::2",
        );
        assert_eq!(
            classify_egress(&to_d, &t),
            Egress::Drop(DropReason::UnknownDestination)
        );
    }

    #[test]
    fn neighbor_solicitations_for_peer_vteps_are_answered() {
        use crate::wire::ndp::tests::{solicitation, NS_DAD, NS_LINK_LOCAL, NS_UNICAST};
        use crate::wire::ndp::{flags, ALL_NODES, ALL_NODES_MAC};
        use crate::wire::NeighborAdvert;
        let (t, ..) = dual_a();
        let c_vtep = ip6("fd00:10:244:3::");
        // Address resolution, to the solicited-node group: answered for C with C's
        // IPv6 VtepMAC, to A's MAC (the source link-layer option's).
        let Egress::NeighborAdvert(f) = classify_egress(&NS_LINK_LOCAL, &t) else {
            panic!("not answered");
        };
        let na = NeighborAdvert::parse(&f).unwrap();
        assert_eq!(
            na,
            NeighborAdvert {
                eth_dst: a_mac(),
                target_lladdr: C6_MAC,
                src: c_vtep,
                dst: ip6("fe80::c4d2:32ff:fe6f:8f44"),
                flags: flags::ROUTER | flags::SOLICITED | flags::OVERRIDE,
                target: c_vtep,
            }
        );
        // The kernel's reachability check, unicast to C's IPv6 VtepMAC: answered
        // here, not sent to C.
        let Egress::NeighborAdvert(f) = classify_egress(&NS_UNICAST, &t) else {
            panic!("not answered");
        };
        let na = NeighborAdvert::parse(&f).unwrap();
        assert_eq!((na.eth_dst, na.dst), (a_mac(), ip6("fd00:10:244:1::")));
        assert_eq!(na.target_lladdr, C6_MAC);
        // Duplicate address detection of C's address: it is taken, say so to all.
        let Egress::NeighborAdvert(f) = classify_egress(&NS_DAD, &t) else {
            panic!("not answered");
        };
        let na = NeighborAdvert::parse(&f).unwrap();
        assert_eq!((na.eth_dst, na.dst), (ALL_NODES_MAC, ALL_NODES));
        assert_eq!(na.flags & flags::SOLICITED, 0);
        // No peer's VTEP address (A's own duplicate address detection, another
        // address of C's subnet): dropped, as ARP for such a target is.
        let ns = NeighborSolicit::parse(&NS_LINK_LOCAL).unwrap();
        for target in ["fd00:10:244:1::", "fd00:10:244:3::1", "fd00:10:244:4::"] {
            let f = solicitation(
                MacAddr([0x33, 0x33, 0xff, 0, 0, 0]),
                &NeighborSolicit {
                    target: ip6(target),
                    ..ns
                },
                255,
            );
            assert_eq!(
                classify_egress(&f, &t),
                Egress::Drop(DropReason::ArpUnknownTarget),
                "{target}"
            );
        }
        // Duplicate address detection of an address that is no peer's (the TAP's
        // own): asks nothing of a peer, dropped as the multicast it is.
        let dad = NeighborSolicit::parse(&NS_DAD).unwrap();
        let f = solicitation(
            MacAddr([0x33, 0x33, 0xff, 0, 0, 0]),
            &NeighborSolicit {
                target: ip6("fe80::c4d2:32ff:fe6f:8f44"),
                ..dad
            },
            255,
        );
        assert_eq!(classify_egress(&f, &t), Egress::Drop(DropReason::Multicast));
        // Not RFC 4861's (hop limit 254, a bad checksum): malformed.
        let mut f = NS_LINK_LOCAL;
        f[21] = 254;
        assert_eq!(
            classify_egress(&f, &t),
            Egress::Drop(DropReason::EgressMalformed)
        );
        let mut f = NS_UNICAST;
        f[60] ^= 1;
        assert_eq!(
            classify_egress(&f, &t),
            Egress::Drop(DropReason::EgressMalformed)
        );
        // Other IPv6 multicast: a router solicitation to ff02::2, an MLD report
        // (behind a hop-by-hop header), any multicast datagram.
        let mut rs = NS_LINK_LOCAL;
        rs[54] = 133;
        rs[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 2]);
        let mut mld = NS_LINK_LOCAL;
        mld[20] = 0;
        mld[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 0x16]);
        let udp = v6_frame(MacAddr([0x33, 0x33, 0, 0, 0, 0xfb]), "fe80::1", "ff02::fb");
        for f in [&rs[..], &mld, &udp] {
            assert_eq!(classify_egress(f, &t), Egress::Drop(DropReason::Multicast));
        }
        // A node with no IPv6 halves answers no solicitation.
        assert_eq!(
            classify_egress(&NS_LINK_LOCAL, &node_a()),
            Egress::Drop(DropReason::ArpUnknownTarget)
        );
    }

    #[test]
    fn ipv6_from_a_peer_is_delivered_with_the_tap_mac() {
        let (t, me, me6) = dual_a();
        let frame = v6_frame(A6_MAC, "fd00:10:244:2::5", "fd00:10:244:1::7");
        let d = vxlan(&frame);
        let rewritten = Ingress::Deliver {
            inner: 8,
            rewrite_dst: Some(a_mac()),
        };
        assert_eq!(
            classify_ingress(IpAddr::V6(ip6(B6)), &d, &t, me, me6),
            rewritten
        );
        // From B's IPv4 PublicIP (one node, one slot), or as a dual-stack socket
        // reports that address.
        for from in [
            IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2)),
            IpAddr::V6(Ipv4Addr::new(192, 168, 77, 2).to_ipv6_mapped()),
        ] {
            assert_eq!(classify_ingress(from, &d, &t, me, me6), rewritten);
        }
        // To A's IPv4 VtepMAC (the TAP's): delivered as it is.
        let mut to_tap = d.clone();
        to_tap[8..14].copy_from_slice(&a_mac().0);
        assert_eq!(
            classify_ingress(IpAddr::V6(ip6(B6)), &to_tap, &t, me, me6),
            Ingress::Deliver {
                inner: 8,
                rewrite_dst: None
            }
        );
        // An unknown IPv6 source, or a known one in another family.
        for from in ["fd00:64::9", "fd00:10:244:2::", "::ffff:192.168.77.9"] {
            assert_eq!(
                classify_ingress(IpAddr::V6(ip6(from)), &d, &t, me, me6),
                Ingress::Drop(DropReason::UnknownSource),
                "{from}"
            );
        }
        // Another MAC (a peer's IPv6 VtepMAC is not ours).
        let mut other = d.clone();
        other[8..14].copy_from_slice(&B6_MAC.0);
        assert_eq!(
            classify_ingress(IpAddr::V6(ip6(B6)), &other, &t, me, me6),
            Ingress::Drop(DropReason::NotForUs)
        );
        // A node without an IPv6 VTEP does not know the MAC.
        let local = LocalVtep {
            v6: None,
            ..*t.local()
        };
        let no_v6 = t.with_local(local, t.peers().iter().copied());
        assert_eq!(
            classify_ingress(IpAddr::V6(ip6(B6)), &d, &no_v6, me, me6),
            Ingress::Drop(DropReason::NotForUs)
        );
    }

    /// The inner IPv6 source must be in the sending peer's IPv6 subnet when it is
    /// inside the IPv6Network, and the destination in this node's.
    #[test]
    fn inner_ipv6_addresses_must_match_the_peer_and_this_node() {
        let (t, me, me6) = dual_a();
        let from_b = IpAddr::V6(ip6(B6));
        let verdict = |from: IpAddr, src: &str, dst: &str, me6: Ipv6Addr| {
            let d = vxlan(&v6_frame(A6_MAC, src, dst));
            classify_ingress(from, &d, &t, me, me6)
        };
        let delivered = Ingress::Deliver {
            inner: 8,
            rewrite_dst: Some(a_mac()),
        };
        let dropped = Ingress::Drop(DropReason::InnerAddress);
        // B claiming a source in C's subnet, in A's own, or elsewhere in the Network.
        for forged in ["fd00:10:244:3::7", "fd00:10:244:1::5", "fd00:10:244:ff::1"] {
            assert_eq!(
                verdict(from_b, forged, "fd00:10:244:1::7", me6),
                dropped,
                "{forged}"
            );
        }
        // B's pods and VTEP address; sources outside the Network (link-local, the
        // next /56, the internet) pass.
        for fine in [
            "fd00:10:244:2::",
            "fd00:10:244:2:ffff:ffff:ffff:ffff",
            "fe80::1",
            "fd00:10:244:100::1",
            "2001:db8::5",
        ] {
            assert_eq!(
                verdict(from_b, fine, "fd00:10:244:1::7", me6),
                delivered,
                "{fine}"
            );
        }
        // A destination outside A's subnet.
        for elsewhere in ["fd00:10:244:2::1", "2001:db8::1", "ff02::1", "fe80::1"] {
            assert_eq!(
                verdict(from_b, "fd00:10:244:2::5", elsewhere, me6),
                dropped,
                "{elsewhere}"
            );
        }
        // Before A knows its IPv6 subnet, only the source is checked.
        assert_eq!(
            verdict(
                from_b,
                "fd00:10:244:2::5",
                "2001:db8::1",
                Ipv6Addr::UNSPECIFIED
            ),
            delivered
        );
        assert_eq!(
            verdict(
                from_b,
                "fd00:10:244:3::5",
                "fd00:10:244:1::7",
                Ipv6Addr::UNSPECIFIED
            ),
            dropped
        );
        // D has no IPv6 half, hence no IPv6 subnet: no source inside the Network.
        let from_d = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 4));
        assert_eq!(
            verdict(from_d, "fd00:10:244:4::5", "fd00:10:244:1::7", me6),
            dropped
        );
        assert_eq!(
            verdict(from_d, "2001:db8::5", "fd00:10:244:1::7", me6),
            delivered
        );
        // Too short to hold the addresses.
        let d = vxlan(&v6_frame(A6_MAC, "fd00:10:244:2::5", "fd00:10:244:1::7"));
        assert_eq!(
            classify_ingress(from_b, &d[..8 + 14 + 39], &t, me, me6),
            dropped
        );

        // Which checks apply: an IPv6 check of its own, or IPv6 dropped while IPv4 is
        // checked; IPv4 only with its own check; anything else dropped when either is.
        let with = |inner: Option<crate::fib::InnerCheck>, inner6| {
            let local = LocalVtep {
                inner,
                v6: Some(crate::fib::LocalVtep6 {
                    vtep_mac: A6_MAC,
                    inner: inner6,
                }),
                ..*t.local()
            };
            t.with_local(local, t.peers().iter().copied())
        };
        let forged6 = vxlan(&v6_frame(A6_MAC, "fd00:10:244:3::7", "fd00:10:244:1::7"));
        let mut forged4 = vxlan(&INNER_ICMP_REQUEST);
        forged4[8..14].copy_from_slice(&a_mac().0); // 10.244.1.0 -> 10.244.2.0
        let mut arp = forged4.clone();
        arp[8 + 12..8 + 14].copy_from_slice(&[0x08, 0x06]);
        let v4 = Some(crate::fib::InnerCheck::lab());
        let v6 = Some(crate::fib::InnerCheck6::lab());
        let deliver = |rewrite_dst| Ingress::Deliver {
            inner: 8,
            rewrite_dst,
        };
        for (table, six, four, other) in [
            (
                with(v4, None),
                dropped.clone(),
                dropped.clone(),
                dropped.clone(),
            ),
            (
                with(None, v6),
                dropped.clone(),
                deliver(None),
                dropped.clone(),
            ),
            (
                with(None, None),
                deliver(Some(a_mac())),
                deliver(None),
                deliver(None),
            ),
        ] {
            assert_eq!(classify_ingress(from_b, &forged6, &table, me, me6), six);
            assert_eq!(classify_ingress(from_b, &forged4, &table, me, me6), four);
            assert_eq!(classify_ingress(from_b, &arp, &table, me, me6), other);
        }
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
        fn never_panics(b in proptest::collection::vec(0u8.., 0..120), src in 0u32.., src6 in 0u128..) {
            let (dual, me, me6) = dual_a();
            let _ = classify_egress(&b, &dual);
            let _ = classify_ingress(IpAddr::V6(Ipv6Addr::from(src6)), &b, &dual, me, me6);
            let _ = classify_ingress(IpAddr::V6(ip6(B6)), &b, &dual, me, me6);
            let _ = classify_egress(&b, &node_a());
            let _ = classify_ingress(IpAddr::V4(Ipv4Addr::from(src)), &b, &node_b(), Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED);
            let _ = classify_ingress(IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1)), &b, &node_b(), Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED);
        }
    }
}
