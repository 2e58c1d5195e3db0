//! `offload::segment` on an arbitrary virtio-net header and frame: no panic; on `Ok`
//! every datagram lies within `out`, `len` is `count - 1` full strides plus a last
//! one no longer than `stride`, each starts with the prefix, and (for frames that
//! parse) every segment's checksums verify, its payload fits `gso_size`, and the
//! payloads concatenate to the original's; on `Err` nothing was written.
//!
//! Input: a mode byte, then either raw bytes, or a frame built from a template (so
//! the GSO paths are reached without a corpus) with a header chosen to match it.
//!
//! The same input through `offload::tunnel::prefix` (egress without segmenting): on
//! `Ok` its offsets and lengths stay inside the packet, the outer IPv4 header
//! verifies, and a GSO frame it accepts is one `segment` accepts too (the kernel is
//! never handed a frame the segmenting path would refuse).
#![no_main]

use fuzz_support::{checked, complete_checksum, slices, Bytes, Template};
use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::offload::tunnel::{self, Outer, OUTER_LEN, PREFIX_LEN, TNL_HDR_LEN};
use vxmesh_dataplane::offload::{max_output_len, segment, OffloadError};
use vxmesh_dataplane::wire::virtio::{
    F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
};
use vxmesh_dataplane::wire::VirtioNetHdr;

const MAX_OUT: usize = 8 << 20;
const FILL: u8 = 0xa5;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let mut raw = [0u8; 10];
    raw.copy_from_slice(&{
        let mut v = b.take(10).to_vec();
        v.resize(10, 0);
        v
    });
    let Ok(mut vh) = VirtioNetHdr::parse(&raw) else {
        return;
    };
    let prefix = vec![0x08; usize::from(b.u8() % 17)];
    let out_sel = b.u8();

    let frame = if mode & 1 == 0 {
        b.rest().to_vec()
    } else {
        let t = Template::read(&mut b);
        let partial = mode & 2 != 0;
        let f = t.frame(b.rest(), partial);
        match mode >> 2 & 3 {
            // A GSO header matching the frame, gso_size from the fuzz header.
            1 | 3 => {
                vh.gso_type = match (t.udp, t.v6) {
                    (true, _) => GSO_UDP_L4,
                    (false, false) => GSO_TCPV4,
                    (false, true) => GSO_TCPV6,
                } | if mode >> 2 & 3 == 3 { GSO_ECN } else { 0 };
                vh.gso_size = vh.gso_size % 3000 + u16::from(mode & 0x80 == 0);
                vh.flags = F_NEEDS_CSUM;
                // The offsets the kernel writes (the tunnel path checks them).
                if mode & 0x40 != 0 {
                    vh.csum_start = t.eth_ip_len() as u16;
                    vh.csum_offset = if t.udp { 6 } else { 16 };
                }
            }
            // A plain frame with a correct NEEDS_CSUM request.
            2 => {
                vh = VirtioNetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_NONE,
                    csum_start: t.eth_ip_len() as u16,
                    csum_offset: if t.udp { 6 } else { 16 },
                    ..vh
                };
            }
            _ => {}
        }
        f
    };

    let max = max_output_len(&vh, frame.len(), prefix.len());
    let size = if out_sel & 1 == 0 {
        max
    } else {
        max * usize::from(out_sel) / 256
    }
    .min(MAX_OUT);
    let mut out = vec![FILL; size];
    check_tunnel(&vh, &frame, &prefix, max.min(MAX_OUT));
    match segment(&vh, &frame, &prefix, &mut out) {
        Err(e) => {
            assert!(out.iter().all(|&x| x == FILL), "{e:?} but bytes written");
            if let OffloadError::OutputTooSmall { need, have } = e {
                assert_eq!(have, size);
                assert!(need > have && need <= max);
            }
        }
        Ok(s) => {
            assert!(s.count >= 1 && s.stride >= 1);
            assert!(s.len <= out.len() && s.len <= max);
            assert!(s.len > (s.count - 1) * s.stride && s.len <= s.count * s.stride);
            let mut inner = Vec::with_capacity(s.count);
            for i in 0..s.count {
                let r = s.datagram(i).expect("datagram in range");
                assert!(r.end <= s.len);
                assert_eq!(&out[r.start..r.start + prefix.len()], &prefix[..]);
                inner.push(&out[r.start + prefix.len()..r.end]);
            }
            let batches: usize = s.batches(64, 65_507).map(|r| r.len()).sum();
            assert_eq!(batches, s.len);
            check_contents(&vh, &frame, &inner);
        }
    }
});

/// `tunnel::prefix` on the same header and frame (`segment` gets `max` bytes to
/// compare with).
fn check_tunnel(vh: &VirtioNetHdr, frame: &[u8], prefix: &[u8], max: usize) {
    let o = Outer {
        dst_mac: vxmesh_dataplane::wire::MacAddr([2, 0, 0, 0, 0, 2]),
        src_mac: vxmesh_dataplane::wire::MacAddr([2, 0, 0, 0, 0, 1]),
        src: std::net::Ipv4Addr::new(192, 168, 0, 1),
        dst: std::net::Ipv4Addr::new(192, 168, 0, 2),
        sport: 40_000,
        dport: 8472,
        vxlan: [8, 0, 0, 0, 0, 0, 1, 0],
        ident: 1,
    };
    let mut p = [FILL; PREFIX_LEN];
    if tunnel::prefix(vh, frame, &o, &mut p).is_err() {
        assert!(p.iter().all(|&x| x == FILL), "an error, but bytes written");
        return;
    }
    let h = VirtioNetHdr::parse(&p).expect("ten bytes");
    let total = OUTER_LEN + frame.len();
    if h.needs_csum() {
        assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= total);
    }
    assert!(usize::from(h.hdr_len) <= total);
    let ip = &p[TNL_HDR_LEN + 14..TNL_HDR_LEN + 34];
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), total - 14);
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "outer IPv4 checksum");
    if vh.gso_kind() != GSO_NONE {
        let mut out = vec![0u8; max];
        let r = segment(vh, frame, prefix, &mut out);
        assert!(
            r.is_ok(),
            "tunnel took a GSO frame segment refuses: {vh:?} {r:?}"
        );
    }
}

/// Checks what the segments say against the original frame.
fn check_contents(vh: &VirtioNetHdr, frame: &[u8], inner: &[&[u8]]) {
    if vh.gso_kind() == GSO_NONE {
        assert_eq!(inner.len(), 1);
        let f = inner[0];
        assert_eq!(f.len(), frame.len());
        if !vh.needs_csum() {
            assert_eq!(f, frame);
            return;
        }
        // Only the two checksum bytes may differ; completing the original the same
        // way gives the same frame (modulo the 0 -> 0xffff rule).
        let at = usize::from(vh.csum_start) + usize::from(vh.csum_offset);
        let mut want = frame.to_vec();
        assert!(complete_checksum(vh, &mut want));
        if want[at..at + 2] == [0, 0] {
            want[at..at + 2].copy_from_slice(&[0xff, 0xff]);
        }
        assert_eq!(f, &want[..]);
        return;
    }
    // GSO: the original parses (segment checked it); every segment verifies.
    let orig = slices(frame).expect("segment accepted a frame etherparse rejects");
    let payload = &frame[orig.hdr_len..orig.end];
    let mss = usize::from(vh.gso_size);
    assert_eq!(inner.len(), payload.len().div_ceil(mss).max(1));
    let first_flags = if orig.tcp { frame[orig.l4_off + 13] } else { 0 };
    let first_seq = u32::from_be_bytes([
        frame[orig.l4_off + 4],
        frame[orig.l4_off + 5],
        frame[orig.l4_off + 6],
        frame[orig.l4_off + 7],
    ]);
    let mut joined = Vec::with_capacity(payload.len());
    for (i, f) in inner.iter().enumerate() {
        let c = checked(f).expect("segment does not verify");
        assert_eq!(c.s.hdr_len, orig.hdr_len);
        assert!(c.payload.len() <= mss);
        assert_eq!(&f[..14], &frame[..14]);
        if orig.tcp {
            assert_eq!(c.seq, first_seq.wrapping_add(joined.len() as u32));
            let mut want = first_flags;
            if i + 1 < inner.len() {
                want &= !0x09;
            }
            if i > 0 {
                want &= !0x80;
            }
            assert_eq!(c.flags, want);
        }
        joined.extend_from_slice(&c.payload);
    }
    assert_eq!(joined, payload);
}
