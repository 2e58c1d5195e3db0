//! Microbenchmarks of the per-packet work of the hot path, verdict included, in
//! packets per second (criterion "elements") and time per call:
//! - `encap/1400B`: `classify_egress` + `offload::segment` of one 1,400-byte TCP
//!   frame whose checksum the kernel left partial (`NEEDS_CSUM`, no GSO): what the
//!   egress thread does for a small frame read from the TAP;
//! - `encap/tso_64k`: the same for a 64 KiB TCPv4 TSO frame (46 × 1398-byte
//!   segments, each prefixed with the VXLAN header, IPv4 + TCP checksums);
//! - `decap/gro_46`: `classify_ingress` + `Coalescer::push` of the 46 VXLAN
//!   datagrams that frame becomes, then `flush` (one 64 KiB frame out);
//! - `verdict/*`: the verdicts alone, on a dual-stack table with the inner-address
//!   checks on: `ingress_v4` and `ingress_v6` (a UDP datagram from a peer's PublicIP
//!   or PublicIPv6), `egress_v6` (a frame to a peer's IPv6 VtepMAC) and
//!   `neighbor_advert` (a Neighbor Solicitation for a peer's IPv6 VTEP address,
//!   answered).
//!
//! Run: `cargo bench -p vxmesh-dataplane --bench dataplane`. Frames are built
//! with etherparse so the bench does not depend on the code it measures. The
//! `offload` bench measures segmentation and coalescing without the verdicts.
// A wrong verdict would make the figures meaningless: the bench panics then.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{PacketBuilder, TcpOptionElement};
use vxmesh_dataplane::fib::{
    ForwardingTable, InnerCheck, InnerCheck6, LocalVtep, LocalVtep6, PeerVtep, PeerVtep6,
};
use vxmesh_dataplane::offload::{max_output_len, segment, Coalescer};
use vxmesh_dataplane::verdict::{classify_egress, classify_ingress, Egress, Ingress};
use vxmesh_dataplane::wire::virtio::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4};
use vxmesh_dataplane::wire::{MacAddr, VirtioNetHdr, Vni, VxlanHeader};

const MSS: u16 = 1398;
const SEGMENTS: usize = 46;
const MAC_A: [u8; 6] = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44];
const MAC_B: [u8; 6] = [0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44];
const IP_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

/// Node A's table (sender) or node B's (receiver); each knows the other.
fn table(
    local_mac: [u8; 6],
    peer_mac: [u8; 6],
    peer_ip: Ipv4Addr,
    peer_net: u8,
) -> ForwardingTable {
    ForwardingTable::new(
        LocalVtep {
            vtep_mac: MacAddr(local_mac),
            vni: Vni::new(1).unwrap(),
            port: 8472,
            inner: None,
            v6: None,
        },
        [PeerVtep {
            vtep_mac: MacAddr(peer_mac),
            public_ip: peer_ip,
            vtep_ip: Ipv4Addr::new(10, 244, peer_net, 0),
            v6: None,
        }],
    )
}

/// A TCPv4 frame from pod A (10.244.1.2) to pod B (10.244.2.2) with `payload`
/// bytes, addressed to node B's VtepMAC (as the kernel writes it to the TAP).
fn tcp_frame(payload: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
        .tcp(40_000, 5201, 0x8a4e_1f00, 502)
        .ack(0x0102_0304)
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(0x0011_2233, 0x4455_6677),
        ])
        .unwrap();
    let mut frame = Vec::with_capacity(builder.size(data.len()));
    builder.write(&mut frame, &data).unwrap();
    frame
}

/// A partial-checksum header, as the TAP hands a frame over (`gso_size` 0 = no GSO).
fn vnet(gso_type: u8, gso_size: u16) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: 66,
        gso_size,
        csum_start: 34,
        csum_offset: 16,
    }
}

/// Classify + segment, as the egress thread does; returns the datagram count.
fn encap(
    vh: &VirtioNetHdr,
    frame: &[u8],
    t: &ForwardingTable,
    vxlan: &[u8],
    out: &mut [u8],
) -> usize {
    match classify_egress(frame, t) {
        Egress::Forward {
            peer, flow_hash, ..
        } => {
            black_box((peer, flow_hash));
            segment(vh, frame, vxlan, out).unwrap().count
        }
        other => panic!("unexpected verdict {other:?}"),
    }
}

fn benches(c: &mut Criterion) {
    let a = table(MAC_A, MAC_B, IP_B, 2);
    let b = table(MAC_B, MAC_A, IP_A, 1);
    let vxlan = VxlanHeader {
        vni: Vni::new(1).unwrap(),
    }
    .to_bytes();

    let mut g = c.benchmark_group("encap");
    // 1,400-byte Ethernet frame: 14 + 20 + 32 + 1334.
    let small = tcp_frame(1400 - 66);
    let small_vh = vnet(GSO_NONE, 0);
    let mut out = vec![0u8; max_output_len(&small_vh, small.len(), vxlan.len())];
    assert_eq!(encap(&small_vh, &small, &a, &vxlan, &mut out), 1);
    g.throughput(Throughput::Elements(1));
    g.bench_function("1400B", |bch| {
        bch.iter(|| {
            encap(
                black_box(&small_vh),
                black_box(&small),
                &a,
                &vxlan,
                &mut out,
            )
        })
    });

    let big = tcp_frame(usize::from(MSS) * SEGMENTS);
    let big_vh = vnet(GSO_TCPV4, MSS);
    let mut out = vec![0u8; max_output_len(&big_vh, big.len(), vxlan.len())];
    let segs = segment(&big_vh, &big, &vxlan, &mut out).unwrap();
    assert_eq!(segs.count, SEGMENTS);
    let datagrams: Vec<Vec<u8>> = (0..segs.count)
        .map(|i| out[segs.datagram(i).unwrap()].to_vec())
        .collect();
    g.throughput(Throughput::Elements(SEGMENTS as u64));
    g.bench_function("tso_64k", |bch| {
        bch.iter(|| encap(black_box(&big_vh), black_box(&big), &a, &vxlan, &mut out))
    });
    g.finish();

    let mut g = c.benchmark_group("decap");
    let mut co = Coalescer::new(8);
    g.throughput(Throughput::Elements(SEGMENTS as u64));
    g.bench_function("gro_46", |bch| {
        bch.iter(|| {
            let mut frames = 0usize;
            let mut emit = |h: &VirtioNetHdr, f: &[u8]| {
                black_box((h, f));
                frames += 1;
            };
            for d in &datagrams {
                match classify_ingress(
                    IpAddr::V4(IP_A),
                    black_box(d),
                    &b,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv6Addr::UNSPECIFIED,
                ) {
                    Ingress::Deliver { inner, .. } => co.push(&d[inner..], &mut emit),
                    Ingress::Drop(r) => panic!("dropped: {r:?}"),
                }
            }
            co.flush(&mut emit);
            assert_eq!(frames, 1);
        })
    });
    g.finish();
    verdicts(c);
}

const MAC_A6: [u8; 6] = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x46];
const MAC_B6: [u8; 6] = [0x0e, 0x5a, 0x11, 0x22, 0x33, 0x46];
const IP6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 1);
const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2);

/// Node B's dual-stack table, checks on: it knows node A (10.244.1.0,
/// fd00:10:244:1::).
fn dual_b() -> ForwardingTable {
    ForwardingTable::new(
        LocalVtep {
            vtep_mac: MacAddr(MAC_B),
            vni: Vni::new(1).unwrap(),
            port: 8472,
            inner: Some(InnerCheck::lab()),
            v6: Some(LocalVtep6 {
                vtep_mac: MacAddr(MAC_B6),
                inner: Some(InnerCheck6::lab()),
            }),
        },
        [PeerVtep {
            vtep_mac: MacAddr(MAC_A),
            public_ip: IP_A,
            vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
            v6: Some(PeerVtep6 {
                vtep_mac: MacAddr(MAC_A6),
                public_ip: IP6_A,
                vtep_ip: "fd00:10:244:1::".parse().unwrap(),
            }),
        }],
    )
}

/// The VXLAN datagram (VNI 1) carrying a 100-byte UDP payload from pod A to pod B,
/// over IPv4 or IPv6, to node B's VtepMAC of that family.
fn datagram(v6: bool) -> Vec<u8> {
    let builder = if v6 {
        PacketBuilder::ethernet2(MAC_A, MAC_B6).ipv6(
            "fd00:10:244:1::2".parse::<Ipv6Addr>().unwrap().octets(),
            "fd00:10:244:2::2".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
    } else {
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
    }
    .udp(40_000, 5201);
    let mut d = VxlanHeader {
        vni: Vni::new(1).unwrap(),
    }
    .to_bytes()
    .to_vec();
    builder.write(&mut d, &[7u8; 100]).unwrap();
    d
}

fn verdicts(c: &mut Criterion) {
    let b = dual_b();
    let (me, me6) = (
        Ipv4Addr::new(10, 244, 2, 0),
        "fd00:10:244:2::".parse().unwrap(),
    );
    let mut g = c.benchmark_group("verdict");
    g.throughput(Throughput::Elements(1));
    for (name, src, d) in [
        ("ingress_v4", IpAddr::V4(IP_A), datagram(false)),
        ("ingress_v6", IpAddr::V6(IP6_A), datagram(true)),
    ] {
        assert!(matches!(
            classify_ingress(src, &d, &b, me, me6),
            Ingress::Deliver { .. }
        ));
        g.bench_function(name, |bch| {
            bch.iter(|| classify_ingress(black_box(src), black_box(&d), &b, me, me6))
        });
    }

    // Node A's kernel sends to B's IPv6 VtepMAC, and resolves B's IPv6 VTEP address.
    let a = ForwardingTable::new(
        LocalVtep {
            vtep_mac: MacAddr(MAC_A),
            v6: Some(LocalVtep6 {
                vtep_mac: MacAddr(MAC_A6),
                inner: Some(InnerCheck6::lab()),
            }),
            ..*b.local()
        },
        [PeerVtep {
            vtep_mac: MacAddr(MAC_B),
            public_ip: IP_B,
            vtep_ip: Ipv4Addr::new(10, 244, 2, 0),
            v6: Some(PeerVtep6 {
                vtep_mac: MacAddr(MAC_B6),
                public_ip: IP6_B,
                vtep_ip: me6,
            }),
        }],
    );
    let frame = datagram(true)[VxlanHeader::LEN..].to_vec();
    assert!(matches!(
        classify_egress(&frame, &a),
        Egress::Forward {
            peer: IpAddr::V6(IP6_B),
            ..
        }
    ));
    g.bench_function("egress_v6", |bch| {
        bch.iter(|| classify_egress(black_box(&frame), &a))
    });
    let mut ns_body = me6.octets().to_vec();
    ns_body.extend_from_slice(&[1, 1]);
    ns_body.extend_from_slice(&MAC_A);
    let mut ns = Vec::new();
    PacketBuilder::ethernet2(MAC_A, [0x33, 0x33, 0xff, 0, 0, 0])
        .ipv6(
            "fe80::1".parse::<Ipv6Addr>().unwrap().octets(),
            "ff02::1:ff00:0".parse::<Ipv6Addr>().unwrap().octets(),
            255,
        )
        .icmpv6(etherparse::Icmpv6Type::NeighborSolicitation)
        .write(&mut ns, &ns_body)
        .unwrap();
    assert!(matches!(
        classify_egress(&ns, &a),
        Egress::NeighborAdvert(_)
    ));
    g.bench_function("neighbor_advert", |bch| {
        bch.iter(|| classify_egress(black_box(&ns), &a))
    });
    g.finish();
}

criterion_group!(dataplane, benches);
criterion_main!(dataplane);
