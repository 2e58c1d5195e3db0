//! Microbenchmarks of the per-packet offload cores, in bytes per second:
//! - the Internet checksum over 64 KiB;
//! - `tso::segment` of a 64 KiB TCPv4 TSO frame (MSS 1398, timestamps) into 46
//!   VXLAN-prefixed datagrams (copy + IPv4 header + full TCP checksum per segment);
//! - `gro::Coalescer` merging those 46 segments back (checksum verify + copy).
//!
//! Run: `cargo bench -p vxmesh-dataplane --bench offload`. The frames are built with
//! etherparse so the bench does not depend on the code it measures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{PacketBuilder, TcpOptionElement};
use vxmesh_dataplane::offload::{max_output_len, segment, Coalescer};
use vxmesh_dataplane::wire::checksum::checksum;
use vxmesh_dataplane::wire::virtio::{F_NEEDS_CSUM, GSO_TCPV4};
use vxmesh_dataplane::wire::VirtioNetHdr;

const MSS: u16 = 1398;
const SEGMENTS: usize = 46;
const VXLAN: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 0x01, 0];

/// A 46 × 1398-byte TCPv4 TSO frame (64,374 bytes) and its virtio-net header.
fn tso_frame() -> (VirtioNetHdr, Vec<u8>) {
    let payload: Vec<u8> = (0..usize::from(MSS) * SEGMENTS)
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    let builder = PacketBuilder::ethernet2(
        [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
        [0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44],
    )
    .ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
    .tcp(40_000, 5201, 0x8a4e_1f00, 502)
    .ack(0x0102_0304)
    .options(&[
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(0x0011_2233, 0x4455_6677),
    ])
    .unwrap();
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, &payload).unwrap();
    let vh = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 66,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: 16,
    };
    (vh, frame)
}

fn benches(c: &mut Criterion) {
    let (vh, frame) = tso_frame();
    let mut out = vec![0u8; max_output_len(&vh, frame.len(), VXLAN.len())];
    let segs = segment(&vh, &frame, &VXLAN, &mut out).unwrap();
    assert_eq!(segs.count, SEGMENTS);
    let inner: Vec<Vec<u8>> = (0..segs.count)
        .map(|i| out[segs.datagram(i).unwrap()][VXLAN.len()..].to_vec())
        .collect();
    let inner_bytes: usize = inner.iter().map(Vec::len).sum();

    let mut g = c.benchmark_group("offload");

    let data = vec![0x5au8; 65_536];
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("checksum_64k", |b| b.iter(|| checksum(black_box(&data))));

    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("segment_tso4_64k_mss1398", |b| {
        b.iter(|| segment(black_box(&vh), black_box(&frame), &VXLAN, &mut out).unwrap())
    });

    let mut co = Coalescer::new(8);
    g.throughput(Throughput::Bytes(inner_bytes as u64));
    g.bench_function("coalesce_46_segments", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let mut emit = |h: &VirtioNetHdr, f: &[u8]| {
                black_box((h, f));
                n += 1;
            };
            for f in &inner {
                co.push(black_box(f), &mut emit);
            }
            co.flush(&mut emit);
            assert_eq!(n, 1);
        })
    });
    g.finish();
}

criterion_group!(offload, benches);
criterion_main!(offload);
