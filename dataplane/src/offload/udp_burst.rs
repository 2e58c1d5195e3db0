//! Receive side: a kernel sender's UDP GSO burst that crossed a virtual underlay whole.
//!
//! A pod that sends with `UDP_SEGMENT` (QUIC servers, some media relays) hands its
//! kernel one buffer for up to 64 datagrams of one size. On a node whose vxlan device
//! keeps its default offloads the buffer stays whole through encapsulation
//! (`SKB_GSO_UDP_TUNNEL | SKB_GSO_UDP_L4`); a physical NIC cuts it on the wire, but a
//! veth — or a host bridge between VMs with virtio-net offloads — carries it as it is.
//! vxmesh's receive socket has `UDP_GRO` on, so the kernel delivers the buffer whole,
//! as one message, *with* a `UDP_GRO` control message: Linux reports the segment size
//! of any buffer marked `SKB_GSO_UDP_L4`, and here that is the inner datagrams' payload
//! size, not the size of outer datagrams. Cut at that size as a train of VXLAN
//! datagrams, every piece is garbage.
//!
//! [`is_one_datagram`] tells the two apart from the bytes: a train's first datagram is
//! exactly one segment long, so its inner IP packet ends inside the first segment; a
//! whole burst is one VXLAN datagram whose inner IP packet ends exactly where the
//! message ends, beyond the first segment. [`cut`] then does what the sender's NIC would
//! have done — `__udp_gso_segment`: one IP + UDP header per `segment`-byte piece of the
//! payload, lengths, IPv4 identification and header checksum, and each UDP checksum
//! computed — after checking the inner checksum is either correct or left partial by
//! the sender ([`super::partial`]), so a corrupted burst is never re-checksummed into
//! valid datagrams.
//!
//! Read first: Linux `net/ipv4/udp_offload.c` (`__udp_gso_segment`), `net/ipv4/udp.c`
//! (`udp_cmsg_recv`, `udp_unexpected_gso`), `udp(7)` (`UDP_GRO`, `UDP_SEGMENT`).

use super::{partial, segment, Layout, OffloadError, Segments};
use crate::wire::checksum::verifies;
use crate::wire::ip::PROTO_UDP;
use crate::wire::virtio::{F_NEEDS_CSUM, GSO_UDP_L4};
use crate::wire::{be16, VirtioNetHdr, VxlanHeader};

/// Whether `msg`, received with a `UDP_GRO` segment size, is one VXLAN datagram whose
/// inner IPv4/IPv6 packet fills it exactly (a whole UDP GSO burst, see the module
/// documentation) rather than a train of datagrams of that size. Any message too short
/// or not shaped like that is a train: the caller splits it as before.
pub fn is_one_datagram(msg: &[u8], gro_segment: usize) -> bool {
    const ETH: usize = Layout::ETH_LEN;
    let ip = VxlanHeader::LEN + ETH;
    if gro_segment == 0 || msg.len() <= gro_segment || msg.len() < ip + 20 {
        return false;
    }
    let ip_end = match be16(msg, VxlanHeader::LEN + 12) {
        // IPv4: total length
        0x0800 => ip + usize::from(be16(msg, ip + 2)),
        // IPv6: fixed header + payload length
        0x86dd if msg.len() >= ip + 40 => ip + 40 + usize::from(be16(msg, ip + 4)),
        _ => return false,
    };
    ip_end == msg.len()
}

/// Why [`cut`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BurstError {
    #[error("not a well-formed IPv4/IPv6 UDP frame: {0}")]
    Headers(#[from] OffloadError),
    #[error("not UDP")]
    NotUdp,
    #[error("UDP length {udp} does not match the IP payload {ip}")]
    Length { udp: usize, ip: usize },
    #[error("the IPv4 header checksum is wrong, or the UDP checksum is neither correct nor left partial by the sender")]
    BadChecksum,
    #[error("segment size {0} is out of range")]
    Segment(usize),
}

/// Cuts `frame` (an inner Ethernet frame decapsulated from a whole UDP GSO burst) into
/// datagrams of `segment` payload bytes in `out`, as the sender's NIC would have;
/// returns where each one is. Refuses anything but a well-formed IPv4 (not a fragment)
/// or IPv6 (no extension headers) UDP frame whose UDP length is its IP payload, whose
/// IPv4 header checksum verifies, and whose UDP checksum is correct or partial.
pub fn cut(frame: &[u8], segment_size: usize, out: &mut [u8]) -> Result<Segments, BurstError> {
    let lay = Layout::parse(frame)?;
    if lay.proto != PROTO_UDP {
        return Err(BurstError::NotUdp);
    }
    let ip_payload = lay.end - lay.l4_off;
    let udp = usize::from(be16(frame, lay.l4_off + 4));
    if udp != ip_payload || frame.len() != lay.end {
        return Err(BurstError::Length {
            udp,
            ip: ip_payload,
        });
    }
    let gso_size = u16::try_from(segment_size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or(BurstError::Segment(segment_size))?;
    if !lay.v6 && !verifies(&frame[Layout::ETH_LEN..lay.l4_off]) {
        return Err(BurstError::BadChecksum);
    }
    let is_partial = partial::detect_in(frame, &lay).is_some();
    if !is_partial {
        let mut sum = super::pseudo_with_len(lay.pseudo_base(frame), ip_payload);
        sum.add_bytes(&frame[lay.l4_off..lay.end]);
        // A zero UDP checksum over IPv4 means none was computed: nothing to verify.
        let none = !lay.v6 && be16(frame, lay.l4_off + 6) == 0;
        if !none && sum.fold() != 0xffff {
            return Err(BurstError::BadChecksum);
        }
    }
    let vh = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: lay.hdr_len() as u16,
        gso_size,
        csum_start: lay.l4_off as u16,
        csum_offset: 6,
    };
    // `segment` computes each piece's checksum from its bytes.
    Ok(segment(&vh, frame, &[], out)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::offload::testutil::{payload, ref_sum, Tcp};
    use crate::offload::PLAIN_TAP_SCRATCH;
    use proptest::prelude::*;

    /// A VXLAN header (VNI 1) in front of `inner`.
    fn vxlan(inner: &[u8]) -> Vec<u8> {
        let mut m = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        m.extend_from_slice(inner);
        m
    }

    fn udp_verifies(f: &[u8], l4: usize, t: &Tcp) -> bool {
        let l4_len = f.len() - l4;
        let mut pseudo = Vec::new();
        if t.v6 {
            pseudo.extend_from_slice(&t.src6);
            pseudo.extend_from_slice(&t.dst6);
            pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        } else {
            pseudo.extend_from_slice(&t.src4);
            pseudo.extend_from_slice(&t.dst4);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        ref_sum(&[&pseudo, &f[l4..]]) == 0xffff
    }

    /// The bytes of each piece, checked with etherparse: lengths, checksums, and the
    /// payloads joined back are the burst's payload.
    fn check_pieces(out: &[u8], s: &Segments, t: &Tcp, data: &[u8], seg: usize) {
        let l4 = if t.v6 { 14 + 40 } else { 14 + 20 };
        let mut joined = Vec::new();
        assert_eq!(s.count, data.len().div_ceil(seg));
        for i in 0..s.count {
            let f = &out[s.datagram(i).unwrap()];
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
                panic!("piece {i} is not udp")
            };
            assert_eq!(usize::from(u.length()), f.len() - l4);
            assert!(udp_verifies(f, l4, t), "piece {i}: udp checksum");
            if let Some(etherparse::NetSlice::Ipv4(ip)) = p.net {
                assert!(
                    ip.header().header_checksum() == ip.header().to_header().calc_header_checksum()
                );
                assert_eq!(usize::from(ip.header().total_len()), f.len() - 14);
            }
            assert!(u.payload().len() <= seg);
            joined.extend_from_slice(u.payload());
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn a_whole_burst_is_one_datagram_a_train_is_not() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            let burst = vxlan(&t.udp(&payload(12_000, 1), true));
            assert!(is_one_datagram(&burst, 1200));
            // the same bytes without a GRO segment size, or as long as one segment
            assert!(!is_one_datagram(&burst, 0));
            assert!(!is_one_datagram(&burst, burst.len()));
            // a train: three whole VXLAN datagrams of one size back to back
            let one = vxlan(&t.udp(&payload(1_000, 2), false));
            let train = one.repeat(3);
            assert!(!is_one_datagram(&train, one.len()));
            // the last one shorter (the kernel's GRO allows that)
            let short = vxlan(&t.udp(&payload(400, 3), false));
            let train = [one.clone(), one.clone(), short].concat();
            assert!(!is_one_datagram(&train, one.len()));
        }
        // too short, not IP, garbage
        assert!(!is_one_datagram(&[], 10));
        assert!(!is_one_datagram(&[0u8; 30], 10));
        let arp = vxlan(&[0xff; 60]);
        assert!(!is_one_datagram(&arp, 10));
    }

    #[test]
    fn a_partial_burst_is_cut_like_the_nic_would() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            let data = payload(10 * 1_200 + 345, 7);
            let f = t.udp(&data, true);
            let mut out = vec![0u8; PLAIN_TAP_SCRATCH];
            let s = cut(&f, 1_200, &mut out).unwrap();
            assert_eq!(s.count, 11);
            check_pieces(&out, &s, &t, &data, 1_200);
        }
    }

    #[test]
    fn a_finished_checksum_is_verified_first() {
        let t = Tcp::default();
        let data = payload(5_000, 9);
        let mut out = vec![0u8; PLAIN_TAP_SCRATCH];
        let good = t.udp(&data, false);
        let s = cut(&good, 1_000, &mut out).unwrap();
        check_pieces(&out, &s, &t, &data, 1_000);
        // one payload bit flipped: neither correct nor partial
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(cut(&bad, 1_000, &mut out), Err(BurstError::BadChecksum));
        // and a partial one corrupted the same way is still "partial" (nothing to
        // verify: the sender computed nothing), as the kernel's own receiver takes it
        let mut p = t.udp(&data, true);
        let last = p.len() - 1;
        p[last] ^= 0x01;
        assert!(cut(&p, 1_000, &mut out).is_ok());
        // a corrupted IPv4 header (TTL) is not re-checksummed into valid pieces
        let mut hdr = t.udp(&data, true);
        hdr[14 + 8] ^= 0x01;
        assert_eq!(cut(&hdr, 1_000, &mut out), Err(BurstError::BadChecksum));
    }

    #[test]
    fn refusals() {
        let t = Tcp::default();
        let mut out = vec![0u8; PLAIN_TAP_SCRATCH];
        let tcp = t.frame(&payload(3_000, 1));
        assert_eq!(cut(&tcp, 1_000, &mut out), Err(BurstError::NotUdp));
        let f = t.udp(&payload(3_000, 1), true);
        assert_eq!(cut(&f, 0, &mut out), Err(BurstError::Segment(0)));
        assert_eq!(cut(&f, 70_000, &mut out), Err(BurstError::Segment(70_000)));
        // UDP length lies
        let mut lie = f.clone();
        lie[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&100u16.to_be_bytes());
        assert!(matches!(
            cut(&lie, 1_000, &mut out),
            Err(BurstError::Length { .. })
        ));
        // Ethernet padding after the IP packet
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 4]);
        assert!(matches!(
            cut(&padded, 1_000, &mut out),
            Err(BurstError::Length { .. })
        ));
        // too little room: an error, not a panic
        let mut small = vec![0u8; 100];
        assert!(matches!(
            cut(&f, 1_000, &mut small),
            Err(BurstError::Headers(_))
        ));
        assert!(cut(&[], 1_000, &mut out).is_err());
    }

    proptest! {
        /// Any bytes, any segment size: no panic, and a train/burst verdict.
        #[test]
        fn never_panics(msg in proptest::collection::vec(any::<u8>(), 0..3000), seg in 0usize..5000) {
            let _ = is_one_datagram(&msg, seg);
            let mut out = vec![0u8; 8192];
            let _ = cut(&msg, seg, &mut out);
        }

        /// Every burst of any size and segment size comes back as pieces whose payloads
        /// join to the original, each with valid lengths and checksums.
        #[test]
        fn pieces_join_to_the_burst(len in 1usize..20_000, seg in 256usize..2_000, v6: bool, partial: bool, seed: u8) {
            let t = Tcp { v6, ..Tcp::default() };
            let data = payload(len, seed);
            let f = t.udp(&data, partial);
            prop_assert!(is_one_datagram(&vxlan(&f), seg) == (vxlan(&f).len() > seg));
            let mut out = vec![0u8; PLAIN_TAP_SCRATCH];
            let s = cut(&f, seg, &mut out).unwrap();
            check_pieces(&out, &s, &t, &data, seg);
        }
    }
}
