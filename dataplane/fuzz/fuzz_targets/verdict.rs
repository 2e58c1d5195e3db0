//! The per-packet decisions over arbitrary bytes, on a dual-stack table with both
//! inner-address checks on: `classify_ingress` (any source address of either family,
//! any datagram) and `classify_egress` (any frame from the TAP, and Neighbor
//! Solicitations built from the input with etherparse, so the answering path is
//! reached despite the checksum).
//! Asserts: no panic; a Deliver verdict points at a well-formed inner frame addressed
//! to one of our VtepMACs (never broadcast) from a leased peer with our VNI, the TAP's
//! MAC to write over exactly when it came to our IPv6 VtepMAC, an IP packet whose
//! IPv6 addresses pass the checks (a source in the Network only from the sending
//! peer's IPv6 subnet, a destination in ours); a Forward verdict names the PublicIP
//! (IPv4 or IPv6) behind the frame's destination MAC, and is never a solicitation; an
//! ARP reply answers for a peer's VTEP address with its VtepMAC; a Neighbor
//! Advertisement answers a valid solicitation for a peer's IPv6 VTEP address with
//! its IPv6 VtepMAC, to the solicitor (or all nodes, S clear, for duplicate address
//! detection).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::fib::{
    ForwardingTable, InnerCheck, InnerCheck6, LocalVtep, LocalVtep6, PeerVtep, PeerVtep6,
};
use vxmesh_dataplane::verdict::{classify_egress, classify_ingress, Egress, Ingress};
use vxmesh_dataplane::wire::ndp::{self, ALL_NODES, ALL_NODES_MAC};
use vxmesh_dataplane::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, MacAddr, NeighborAdvert, NeighborSolicit, Vni,
    VxlanHeader,
};

const ME: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00]);
const ME6: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x06]);
const ME_VTEP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
const ME_VTEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0);
/// A dual-stack peer.
const PEER_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x00]);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 12);
const PEER_VTEP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 0);
const PEER6_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x06]);
const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x56, 0, 0, 0, 0, 0, 12);
const PEER_VTEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0);
/// An IPv4-only peer.
const V4_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x03, 0x00]);
const V4_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 13);
const V4_VTEP: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 0);

fn table() -> ForwardingTable {
    ForwardingTable::new(
        LocalVtep {
            vtep_mac: ME,
            vni: Vni::new(1).unwrap(),
            port: 8472,
            inner: Some(InnerCheck::lab()),
            v6: Some(LocalVtep6 {
                vtep_mac: ME6,
                inner: Some(InnerCheck6::lab()),
            }),
        },
        [
            PeerVtep {
                vtep_mac: PEER_MAC,
                public_ip: PEER_IP,
                vtep_ip: PEER_VTEP,
                v6: Some(PeerVtep6 {
                    vtep_mac: PEER6_MAC,
                    public_ip: PEER_IP6,
                    vtep_ip: PEER_VTEP6,
                }),
            },
            PeerVtep {
                vtep_mac: V4_MAC,
                public_ip: V4_IP,
                vtep_ip: V4_VTEP,
                v6: None,
            },
        ],
    )
}

/// Whether `a` lies in `net`/`len`.
fn within(a: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(a) & mask == u128::from(net) & mask
}

fn ingress(table: &ForwardingTable, data: &[u8]) {
    // The first byte chooses the source: a peer's PublicIP or PublicIPv6 (most
    // inputs, so the deeper checks are reached), the IPv4-only peer, or any address.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (src, body): (IpAddr, &[u8]) = match pick % 8 {
        0 | 1 => (PEER_IP.into(), rest),
        2..=4 => (PEER_IP6.into(), rest),
        5 => (V4_IP.into(), rest),
        6 => match rest.split_first_chunk::<4>() {
            Some((s, body)) => (Ipv4Addr::from(*s).into(), body),
            None => return,
        },
        _ => match rest.split_first_chunk::<16>() {
            Some((s, body)) => (Ipv6Addr::from(*s).into(), body),
            None => return,
        },
    };
    let canonical = match src {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(src, IpAddr::V4),
        v4 => v4,
    };
    match classify_ingress(src, body, table, ME_VTEP, ME_VTEP6) {
        Ingress::Deliver { inner, rewrite_dst } => {
            assert!(
                [IpAddr::V4(PEER_IP), IpAddr::V6(PEER_IP6), IpAddr::V4(V4_IP)].contains(&canonical),
                "{src}"
            );
            let h = VxlanHeader::parse(body).expect("delivered datagrams have a header");
            assert_eq!(h.vni.get(), 1);
            let eth = EthernetFrame::new_checked(&body[inner..]).expect("inner frame");
            assert!(eth.dst() == ME || eth.dst() == ME6);
            assert_eq!(rewrite_dst, (eth.dst() == ME6).then_some(ME));
            let ip = eth.payload();
            match eth.ethertype() {
                EtherType::IPV4 => assert!(ip.len() >= 20),
                EtherType::IPV6 => {
                    assert!(ip.len() >= 40);
                    let addr = |at: usize| {
                        Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).expect("16 bytes"))
                    };
                    let (s, d) = (addr(8), addr(24));
                    let net = InnerCheck6::lab();
                    if within(s, net.network, u32::from(net.network_len)) {
                        assert!(
                            canonical != IpAddr::V4(V4_IP),
                            "{s} from the IPv4-only peer"
                        );
                        assert!(within(s, PEER_VTEP6, 64), "{s}");
                    }
                    assert!(within(d, ME_VTEP6, 64), "{d}");
                }
                other => panic!("delivered {other:?} with the checks on"),
            }
        }
        Ingress::Drop(_) => {}
    }
}

fn egress(table: &ForwardingTable, frame: &[u8]) {
    match classify_egress(frame, table) {
        Egress::Forward { peer, .. } => {
            let eth = EthernetFrame::new_checked(frame).unwrap();
            let want = match eth.dst() {
                PEER_MAC => IpAddr::V4(PEER_IP),
                PEER6_MAC => IpAddr::V6(PEER_IP6),
                V4_MAC => IpAddr::V4(V4_IP),
                other => panic!("forwarded to {other}"),
            };
            assert_eq!(peer, want);
            assert!(eth.ethertype() != EtherType::IPV6 || !ndp::looks_like_solicit(eth.payload()));
        }
        Egress::ArpReply(reply) => {
            let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
            let r = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap());
            assert_eq!(eth.src(), r.sender_mac);
            assert!(
                [(PEER_MAC, PEER_VTEP), (V4_MAC, V4_VTEP)].contains(&(r.sender_mac, r.sender_ip))
            );
        }
        Egress::NeighborAdvert(advert) => {
            let ns = NeighborSolicit::parse(frame).expect("answered a valid solicitation");
            assert_eq!(ns.target, PEER_VTEP6);
            let na = NeighborAdvert::parse(&advert).expect("a valid advertisement");
            assert_eq!(
                (na.target, na.src, na.target_lladdr),
                (PEER_VTEP6, PEER_VTEP6, PEER6_MAC)
            );
            if ns.is_dad() {
                assert_eq!((na.eth_dst, na.dst), (ALL_NODES_MAC, ALL_NODES));
                assert_eq!(na.flags & ndp::flags::SOLICITED, 0);
            } else {
                assert_eq!((na.eth_dst, na.dst), (ns.reply_mac(), ns.src));
                assert_ne!(na.flags & ndp::flags::SOLICITED, 0);
            }
        }
        Egress::Drop(_) => {}
    }
}

/// A Neighbor Solicitation drawn from `data` and built by etherparse (its checksum
/// right): to the solicited-node group or a peer's IPv6 VtepMAC, from ::, a
/// link-local or any address, for a peer's IPv6 VTEP address or any, with or
/// without a source link-layer option, mostly with hop limit 255.
fn solicitation(data: &[u8]) -> Option<Vec<u8>> {
    let (&[a, b], rest) = data.split_first_chunk::<2>()?;
    let (addr, rest) = rest.split_first_chunk::<16>()?;
    let (mac, _) = rest.split_first_chunk::<6>()?;
    let target = if a & 1 == 0 {
        PEER_VTEP6
    } else {
        Ipv6Addr::from(*addr)
    };
    let src = match (a >> 1) & 3 {
        0 => Ipv6Addr::UNSPECIFIED,
        1 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(b)),
        _ => Ipv6Addr::from(*addr),
    };
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let (eth_dst, dst) = if a & 0x08 == 0 {
        (MacAddr([0x33, 0x33, 0xff, t[13], t[14], t[15]]), group)
    } else {
        (PEER6_MAC, target)
    };
    let mut body = target.octets().to_vec();
    if a & 0x10 != 0 {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(mac);
    }
    let hop = if a & 0xe0 == 0xe0 { b } else { 255 };
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(*mac, eth_dst.0)
        .ipv6(src.octets(), dst.octets(), hop)
        .icmpv6(etherparse::Icmpv6Type::NeighborSolicitation)
        .write(&mut out, &body)
        .ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let table = table();
    ingress(&table, data);
    egress(&table, data);
    if let Some(ns) = solicitation(data) {
        egress(&table, &ns);
    }
});
