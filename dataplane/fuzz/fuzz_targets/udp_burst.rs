//! `offload::udp_burst` on arbitrary bytes and on UDP frames built from a template:
//! `is_one_datagram` never panics and says yes only when the inner IP packet ends at
//! the message's end; `cut` never panics, and on `Ok` every piece lies within `out`,
//! verifies (IPv4 header and UDP checksums), carries at most `segment` payload bytes,
//! and the payloads concatenate to the original's; it never accepts a frame whose UDP
//! checksum is neither correct nor partial.
#![no_main]

use fuzz_support::{checked, Bytes, Template};
use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::offload::udp_burst::{cut, is_one_datagram, BurstError};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let segment = usize::from(b.u16()) % 4000;
    let frame = if mode & 1 == 0 {
        b.rest().to_vec()
    } else {
        let mut t = Template::read(&mut b);
        t.udp = true;
        let mut f = t.frame(b.rest(), mode & 2 != 0);
        if mode & 4 != 0 && f.len() > 14 {
            // one flipped byte somewhere
            let at = usize::from(mode >> 3) * 7 % f.len();
            f[at] ^= 0x20;
        }
        f
    };
    let mut msg = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    msg.extend_from_slice(&frame);
    if is_one_datagram(&msg, segment) {
        assert!(segment > 0 && msg.len() > segment);
    }
    let mut out = vec![0u8; 70_000 + 70_000 / segment.max(1) * 80];
    match cut(&frame, segment, &mut out) {
        Ok(s) => {
            let original = checked_payload(&frame);
            let mut joined = Vec::new();
            for i in 0..s.count {
                let r = s.datagram(i).expect("datagram in range");
                assert!(r.end <= out.len());
                let c = checked(&out[r]).expect("every piece verifies");
                assert!(c.payload.len() <= segment);
                joined.extend_from_slice(&c.payload);
            }
            if let Some(p) = original {
                assert_eq!(joined, p);
            }
        }
        Err(BurstError::BadChecksum) => {
            assert!(checked(&frame).is_none(), "a verifying frame refused as corrupt");
        }
        Err(_) => {}
    }
});

/// The UDP payload of `frame` when its headers parse (its checksum may be partial).
fn checked_payload(frame: &[u8]) -> Option<Vec<u8>> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => Some(u.payload().to_vec()),
        _ => None,
    }
}
