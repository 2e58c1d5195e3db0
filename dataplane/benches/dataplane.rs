//! Microbenchmarks of the per-packet work of the hot path, verdict included, in
//! packets per second (criterion "elements") and time per call:
//! - `encap/1400B`: `classify_egress` + `offload::segment` of one 1,400-byte TCP
//!   frame whose checksum the kernel left partial (`NEEDS_CSUM`, no GSO): what the
//!   egress thread does for a small frame read from the TAP;
//! - `encap/tso_64k`: the same for a 64 KiB TCPv4 TSO frame (46 × 1398-byte
//!   segments, each prefixed with the VXLAN header, IPv4 + TCP checksums);
//! - `decap/gro_46`: `classify_ingress` + `Coalescer::push` of the 46 VXLAN
//!   datagrams that frame becomes, then `flush` (one 64 KiB frame out).
//!
//! Run: `cargo bench -p vxmesh-dataplane --bench dataplane`. Frames are built
//! with etherparse so the bench does not depend on the code it measures. The
//! `offload` bench measures segmentation and coalescing without the verdicts.
// A wrong verdict would make the figures meaningless: the bench panics then.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{PacketBuilder, TcpOptionElement};
use vxmesh_dataplane::fib::{ForwardingTable, LocalVtep, PeerVtep};
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
                match classify_ingress(IP_A, black_box(d), &b, Ipv4Addr::UNSPECIFIED) {
                    Ingress::Deliver { inner } => co.push(&d[inner..], &mut emit),
                    Ingress::Drop(r) => panic!("dropped: {r:?}"),
                }
            }
            co.flush(&mut emit);
            assert_eq!(frames, 1);
        })
    });
    g.finish();
}

criterion_group!(dataplane, benches);
criterion_main!(dataplane);
