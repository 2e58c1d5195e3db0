//! The per-packet decisions over arbitrary bytes: `classify_ingress` (any source
//! address, any datagram) and `classify_egress` (any frame from the TAP).
//! Asserts: no panic; a Deliver verdict points at a well-formed inner frame addressed
//! to our VtepMAC (never broadcast) from a leased peer with our VNI; a Forward verdict names a
//! peer's PublicIP; an ARP reply answers for a peer's VTEP address with its VtepMAC.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::fib::{ForwardingTable, LocalVtep, PeerVtep};
use vxmesh_dataplane::verdict::{classify_egress, classify_ingress, Egress, Ingress};
use vxmesh_dataplane::wire::{ArpPacket, ArpRepr, EthernetFrame, MacAddr, Vni, VxlanHeader};

const ME: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00]);
const PEER_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x00]);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 12);
const PEER_VTEP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 0);

fuzz_target!(|data: &[u8]| {
    let table = ForwardingTable::new(
        LocalVtep { vtep_mac: ME, vni: Vni::new(1).unwrap(), port: 8472, inner: Some(vxmesh_dataplane::fib::InnerCheck::lab()), v6: None },
        [PeerVtep { vtep_mac: PEER_MAC, public_ip: PEER_IP, vtep_ip: PEER_VTEP, v6: None }],
    );
    // The first four bytes choose the source address; bias half of the inputs to the
    // peer so the deeper checks are reached.
    let (src, body) = match data.split_first_chunk::<4>() {
        Some((s, rest)) if s[0] & 1 == 0 => (PEER_IP, rest),
        Some((s, rest)) => (Ipv4Addr::from(*s), rest),
        None => (PEER_IP, data),
    };
    match classify_ingress(src, body, &table, Ipv4Addr::new(10, 244, 1, 0)) {
        Ingress::Deliver { inner } => {
            assert_eq!(src, PEER_IP);
            let h = VxlanHeader::parse(body).expect("delivered datagrams have a header");
            assert_eq!(h.vni.get(), 1);
            let eth = EthernetFrame::new_checked(&body[inner..]).expect("inner frame");
            assert_eq!(eth.dst(), ME);
        }
        Ingress::Drop(_) => {}
    }
    match classify_egress(data, &table) {
        Egress::Forward { peer, .. } => {
            assert_eq!(peer, IpAddr::V4(PEER_IP));
            assert_eq!(EthernetFrame::new_checked(data).unwrap().dst(), PEER_MAC);
        }
        Egress::ArpReply(reply) => {
            let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
            assert_eq!(eth.src(), PEER_MAC);
            let r = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap());
            assert_eq!((r.sender_mac, r.sender_ip), (PEER_MAC, PEER_VTEP));
        }
        Egress::Drop(_) => {}
    }
});
