//! `offload::segment` on an arbitrary virtio-net header and frame: no panic; on `Ok`
//! every datagram lies within `out`, `len` is `count - 1` full strides plus a last
//! one no longer than `stride`, each starts with the prefix, and (for frames that
//! parse) every segment's checksums verify, its payload fits `gso_size`, and the
//! payloads concatenate to the original's; on `Err` nothing was written.
//!
//! Input: a mode byte, then either raw bytes, or a frame built from a template (so
//! the GSO paths are reached without a corpus) with a header chosen to match it.
#![no_main]

use fuzz_support::{checked, complete_checksum, slices, Bytes, Template};
use libfuzzer_sys::fuzz_target;
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
