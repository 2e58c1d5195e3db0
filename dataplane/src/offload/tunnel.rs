//! Egress without segmenting: one TAP frame, as the kernel handed it to us (up to
//! 64 KiB with TSO), goes out whole as a UDP-*tunnel* GSO frame written to a second
//! TAP (the underlay TAP, [`crate::sys::UnderlayTap`]). The kernel routes it to the
//! underlay like a packet of its own VXLAN device: over a veth it crosses whole and a
//! kernel receiver decapsulates it once; on a NIC with VXLAN segmentation offload the
//! NIC cuts it, on any other the kernel does (`skb_udp_tunnel_segment`). Nothing here
//! copies or sums the payload: the inner checksum stays partial, as the kernel's own
//! VXLAN device leaves it.
//!
//! [`prefix`] writes what goes before the frame: the 24-byte virtio-net header with
//! the tunnel fields (`struct virtio_net_hdr_v1_hash_tunnel`, Linux 6.17 and later)
//! and the outer Ethernet, IPv4, UDP and VXLAN headers (50 bytes). The frame follows
//! unchanged, so the system call takes it straight from the read buffer.
//!
//! A frame this cannot carry (the outer datagram would pass 65,535 bytes, a GSO type
//! other than TCP or UDP_L4, a GSO frame whose checksum is not partial, offsets that
//! do not fit) is an [`OffloadError`]; the caller sends it the segmenting way instead.
//!
//! Read first: virtio spec 1.4 draft §5.1.6.2.1 (`VIRTIO_NET_HDR_GSO_UDP_TUNNEL_*`,
//! `outer_th_offset`, `inner_nh_offset`), Linux `include/linux/virtio_net.h`
//! (`virtio_net_hdr_tnl_to_skb`), RFC 7348 §5 (the outer headers) and
//! `docs/decisions/0022-egress-tunnel-gso.md` for why and when this path is used.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use super::{Layout, OffloadError};
use crate::wire::ecn;
use crate::wire::ip::{PROTO_TCP, PROTO_UDP};
use crate::wire::virtio::{GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::wire::{Ipv4Packet, MacAddr, VirtioNetHdr, VxlanHeader};

/// `struct virtio_net_hdr_v1_hash_tunnel`: the 12-byte v1 header, the hash report
/// (8 bytes, unused on transmit) and the two tunnel offsets.
pub const TNL_HDR_LEN: usize = 24;
/// Outer Ethernet + IPv4 (no options) + UDP + VXLAN.
pub const OUTER_LEN: usize = 14 + 20 + 8 + VxlanHeader::LEN;
/// Everything [`prefix`] writes before the frame.
pub const PREFIX_LEN: usize = TNL_HDR_LEN + OUTER_LEN;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`, or-ed into `gso_type`.
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// `TUN_F_UDP_TUNNEL_GSO`: the TUNSETOFFLOAD bit that enables the tunnel fields.
pub const TUN_F_UDP_TUNNEL_GSO: u32 = 0x80;

/// Where the tunnel fields sit in the 24-byte header.
const OUTER_TH_AT: usize = 20;
const INNER_NH_AT: usize = 22;
/// Offset of the outer UDP header, and of the inner Ethernet header's end.
const OUTER_TH: u16 = 14 + 20;
const INNER_NH: u16 = OUTER_LEN as u16 + 14;

/// The outer headers of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// The underlay TAP's own MAC: the kernel takes the frame as addressed to itself.
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    /// The node's underlay address, and the peer's PublicIP.
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub vxlan: [u8; VxlanHeader::LEN],
    /// IPv4 identification (RFC 6864: any value; the kernel renumbers the segments).
    pub ident: u16,
}

/// How `frame` leaves once cut at `vh.gso_size`: the number of datagrams, and the
/// bytes of their inner frames (each segment repeats the headers). Without GSO: 1
/// and the frame's length.
pub fn segmented(vh: &VirtioNetHdr, frame: &[u8]) -> (usize, usize) {
    if vh.gso_kind() == GSO_NONE || vh.gso_size == 0 {
        return (1, frame.len());
    }
    match Layout::parse(frame) {
        Ok(l) => cut(&l, vh.gso_size, frame.len()),
        Err(_) => (1, frame.len()),
    }
}

/// [`segmented`] for a frame already parsed.
fn cut(l: &Layout, gso_size: u16, frame_len: usize) -> (usize, usize) {
    let n = l
        .end
        .saturating_sub(l.hdr_len())
        .div_ceil(usize::from(gso_size))
        .max(1);
    (n, frame_len + (n - 1) * l.hdr_len())
}

/// Writes the virtio-net tunnel header and the outer headers for `frame` (an
/// Ethernet frame as read from the TAP, its virtio-net header `vh` already
/// stripped) into `out`. Returns what [`segmented`] says of the frame: how many
/// datagrams it leaves as, and their inner bytes.
pub fn prefix(
    vh: &VirtioNetHdr,
    frame: &[u8],
    o: &Outer,
    out: &mut [u8; PREFIX_LEN],
) -> Result<(usize, usize), OffloadError> {
    if frame.len() < Layout::ETH_LEN {
        return Err(OffloadError::Truncated);
    }
    let ip_total = 20 + 8 + VxlanHeader::LEN + frame.len();
    let ip_total = u16::try_from(ip_total)
        .map_err(|_| OffloadError::BadHeaders("frame too large for one outer datagram"))?;
    let shift = OUTER_LEN as u16;

    let mut h = VirtioNetHdr::NONE;
    if vh.needs_csum() {
        let start = usize::from(vh.csum_start);
        if start + usize::from(vh.csum_offset) + 2 > frame.len() {
            return Err(OffloadError::BadChecksumOffsets {
                start: vh.csum_start,
                offset: vh.csum_offset,
                frame_len: frame.len(),
            });
        }
        h.flags = vh.flags & crate::wire::virtio::F_NEEDS_CSUM;
        h.csum_start = vh
            .csum_start
            .checked_add(shift)
            .ok_or(OffloadError::BadHeaders("csum_start out of range"))?;
        h.csum_offset = vh.csum_offset;
    }
    let mut tunnel = false;
    let mut leaves = (1, frame.len());
    match vh.gso_kind() {
        GSO_NONE => {}
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4 => {
            if vh.gso_size == 0 {
                return Err(OffloadError::BadHeaders("gso_size 0 on a gso frame"));
            }
            if !vh.needs_csum() {
                return Err(OffloadError::BadHeaders(
                    "gso frame without a partial checksum",
                ));
            }
            let lay = Layout::parse(frame)?;
            // What the segmenting path checks too: the kernel gets no GSO request
            // that path would refuse.
            let matches = match vh.gso_kind() {
                GSO_TCPV4 => lay.proto == PROTO_TCP && !lay.v6,
                GSO_TCPV6 => lay.proto == PROTO_TCP && lay.v6,
                _ => lay.proto == PROTO_UDP,
            };
            if !matches {
                return Err(OffloadError::BadHeaders(
                    "gso_type does not match the l4 protocol",
                ));
            }
            if usize::from(vh.csum_start) != lay.l4_off {
                return Err(OffloadError::BadHeaders("csum_start is not the l4 header"));
            }
            // All headers up to the inner transport's end (the virtio spec's hdr_len
            // for tunnel GSO).
            h.hdr_len = u16::try_from(lay.hdr_len() + OUTER_LEN)
                .map_err(|_| OffloadError::BadHeaders("headers too long"))?;
            h.gso_size = vh.gso_size;
            h.gso_type = vh.gso_type | GSO_UDP_TUNNEL_IPV4;
            tunnel = true;
            leaves = cut(&lay, vh.gso_size, frame.len());
        }
        _ => return Err(OffloadError::UnsupportedGso(vh.gso_type)),
    }

    out.fill(0);
    out[..VirtioNetHdr::LEN].copy_from_slice(&h.to_bytes());
    if tunnel {
        out[OUTER_TH_AT..OUTER_TH_AT + 2].copy_from_slice(&OUTER_TH.to_le_bytes());
        out[INNER_NH_AT..INNER_NH_AT + 2].copy_from_slice(&INNER_NH.to_le_bytes());
    }
    let w = &mut out[TNL_HDR_LEN..];
    w[..6].copy_from_slice(&o.dst_mac.0);
    w[6..12].copy_from_slice(&o.src_mac.0);
    w[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut w[14..34];
    ip[0] = 0x45;
    // The inner packet's ECN field, copied out (RFC 6040, as Linux's vxlan): an underlay
    // router may then mark the packet CE instead of dropping it, and the receiving
    // node passes the mark on. DSCP 0, as flannel's device sends.
    ip[1] = ecn::encapsulated(ecn::of_frame(frame).unwrap_or(ecn::NOT_ECT));
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&o.ident.to_be_bytes());
    // Forwarding decrements the TTL once: the packet leaves with the kernel's default
    // of 64, as its own vxlan device's do. DF stays clear, as flannel's device sends.
    ip[8] = 65;
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&o.src.octets());
    ip[16..20].copy_from_slice(&o.dst.octets());
    Ipv4Packet::new_unchecked(&mut *ip).fill_checksum();
    let udp = &mut w[34..42];
    udp[..2].copy_from_slice(&o.sport.to_be_bytes());
    udp[2..4].copy_from_slice(&o.dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_total - 20).to_be_bytes());
    // Outer UDP checksum 0, which RFC 7348 §5 allows and every receiver accepts (the
    // kernel's own vxlan device, at its defaults, and the sockets' path fill one in).
    w[42..50].copy_from_slice(&o.vxlan);
    Ok(leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::{payload, Tcp};
    use crate::wire::checksum::verifies;
    use crate::wire::virtio::{F_NEEDS_CSUM, GSO_ECN, GSO_UDP};
    use proptest::prelude::*;

    fn outer() -> Outer {
        Outer {
            dst_mac: MacAddr([0x72, 0x04, 0xde, 0xa8, 0x8b, 0xfd]),
            src_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
            src: Ipv4Addr::new(192, 168, 100, 11),
            dst: Ipv4Addr::new(192, 168, 100, 12),
            sport: 51_234,
            dport: 8472,
            vxlan: VxlanHeader {
                vni: crate::wire::vxlan::Vni::new(1).unwrap(),
            }
            .to_bytes(),
            ident: 7,
        }
    }

    /// A TSO frame of `n` payload bytes with the 12 timestamp option bytes.
    fn tcp4(n: usize) -> (VirtioNetHdr, Vec<u8>) {
        Tcp::default().tso(&payload(n, 1), 1398)
    }

    fn tso(gso_type: u8, mss: u16, csum_start: u16, csum_offset: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: 0,
            gso_size: mss,
            csum_start,
            csum_offset,
        }
    }

    #[test]
    fn a_tso_frame_gets_the_tunnel_header_and_outer_headers() {
        let (mut vh, frame) = tcp4(10_000);
        vh.gso_type |= GSO_ECN;
        let mut out = [0xaa; PREFIX_LEN];
        prefix(&vh, &frame, &outer(), &mut out).unwrap();
        let h = VirtioNetHdr::parse(&out).unwrap();
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, GSO_TCPV4 | GSO_ECN | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(h.gso_size, 1398);
        assert_eq!(h.csum_start, 34 + 50);
        assert_eq!(h.csum_offset, 16);
        // 50 outer + 14 + 20 + 32 (TCP with timestamps).
        assert_eq!(h.hdr_len, 116);
        // num_buffers and the hash report stay zero.
        assert_eq!(&out[10..20], &[0; 10]);
        assert_eq!(&out[20..24], &[34, 0, 64, 0]);
        let w = &out[TNL_HDR_LEN..];
        assert_eq!(&w[..6], &outer().dst_mac.0);
        assert_eq!(&w[6..14], &[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let ip = &w[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            20 + 8 + 8 + frame.len()
        );
        assert_eq!(&ip[4..10], &[0, 7, 0, 0, 65, 17]);
        assert!(verifies(ip), "the outer IPv4 header checksum verifies");
        assert_eq!(&ip[12..20], &[192, 168, 100, 11, 192, 168, 100, 12]);
        let udp = &w[34..42];
        assert_eq!(&udp[..4], &[0xc8, 0x22, 0x21, 0x18]);
        assert_eq!(
            usize::from(u16::from_be_bytes([udp[4], udp[5]])),
            8 + 8 + frame.len()
        );
        assert_eq!(&udp[6..8], &[0, 0]);
        assert_eq!(&w[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
        let n = 10_000usize.div_ceil(1398);
        assert_eq!(segmented(&vh, &frame), (n, 10_000 + n * 66));
        assert_eq!(ip[1], 0, "a Not-ECT inner packet: outer Not-ECT");
    }

    /// The inner packet's ECN field is copied to the outer header (CE as ECT(0)), its
    /// DSCP is not, and the outer header checksum covers it.
    #[test]
    fn the_outer_header_carries_the_inner_ecn_field() {
        use crate::wire::ecn::{CE, ECT_0, ECT_1};
        for (inner, outer_ecn) in [(ECT_0, ECT_0), (ECT_1, ECT_1), (CE, ECT_0)] {
            let (vh, mut frame) = tcp4(3_000);
            frame[15] = 0xb8 | inner;
            let mut out = [0; PREFIX_LEN];
            prefix(&vh, &frame, &outer(), &mut out).unwrap();
            let ip = &out[TNL_HDR_LEN + 14..TNL_HDR_LEN + 34];
            assert_eq!(ip[1], outer_ecn, "inner {inner}");
            assert!(verifies(ip));
        }
    }

    #[test]
    fn tcp_over_ipv6_and_udp_l4_inner_frames() {
        let t6 = Tcp {
            v6: true,
            ..Tcp::default()
        };
        let (vh, f6) = t6.tso(&payload(5_000, 2), 1378);
        let mut out = [0; PREFIX_LEN];
        prefix(&vh, &f6, &outer(), &mut out).unwrap();
        let h = VirtioNetHdr::parse(&out).unwrap();
        assert_eq!(h.gso_type, GSO_TCPV6 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(h.hdr_len, 50 + 14 + 40 + 32);
        assert_eq!(h.csum_start, 50 + 54);
        let (vu, fu) = Tcp::default().uso(&payload(3_000, 3), 1400);
        prefix(&vu, &fu, &outer(), &mut out).unwrap();
        let h = VirtioNetHdr::parse(&out).unwrap();
        assert_eq!(h.gso_type, GSO_UDP_L4 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(h.hdr_len, 50 + 14 + 20 + 8);
    }

    #[test]
    fn a_plain_frame_keeps_its_partial_checksum_and_no_tunnel_fields() {
        let frame = Tcp::default().partial_frame(&payload(100, 4));
        let mut out = [0; PREFIX_LEN];
        prefix(&tso(GSO_NONE, 0, 34, 16), &frame, &outer(), &mut out).unwrap();
        let h = VirtioNetHdr::parse(&out).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_NONE, 0, 0));
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, 84, 16)
        );
        assert_eq!(&out[20..24], &[0; 4]);
        // A complete frame (nothing partial): the header says nothing at all.
        prefix(&VirtioNetHdr::NONE, &frame, &outer(), &mut out).unwrap();
        assert_eq!(VirtioNetHdr::parse(&out).unwrap(), VirtioNetHdr::NONE);
        assert_eq!(segmented(&VirtioNetHdr::NONE, &frame), (1, frame.len()));
    }

    #[test]
    fn refuses_what_the_segmenting_path_must_take() {
        let mut out = [0; PREFIX_LEN];
        let o = outer();
        // The outer datagram holds 36 bytes of headers and the whole frame: a frame
        // of 65,499 bytes fits, one byte more does not.
        let (vh, fits) = tcp4(65_499 - 14 - 20 - 32);
        assert_eq!(fits.len(), 65_499);
        assert!(prefix(&vh, &fits, &o, &mut out).is_ok());
        let (vh, big) = tcp4(65_499 - 14 - 20 - 32 + 1);
        assert!(prefix(&vh, &big, &o, &mut out).is_err());
        let (vh, frame) = tcp4(10_000);
        let no_csum = VirtioNetHdr { flags: 0, ..vh };
        assert!(prefix(&no_csum, &frame, &o, &mut out).is_err());
        assert!(prefix(&VirtioNetHdr { gso_size: 0, ..vh }, &frame, &o, &mut out).is_err());
        assert!(prefix(&tso(GSO_UDP, 1398, 34, 6), &frame, &o, &mut out).is_err());
        assert!(prefix(&tso(GSO_TCPV4, 1398, 30, 16), &frame, &o, &mut out).is_err());
        assert!(prefix(&tso(0x42, 1398, 34, 16), &frame, &o, &mut out).is_err());
        // A GSO type that contradicts the frame's protocol or family.
        assert!(prefix(&tso(GSO_TCPV6, 1398, 34, 16), &frame, &o, &mut out).is_err());
        assert!(prefix(&tso(GSO_UDP_L4, 1398, 34, 16), &frame, &o, &mut out).is_err());
        let end = frame.len() as u16;
        assert!(prefix(&tso(GSO_NONE, 0, end - 10, 16), &frame, &o, &mut out).is_err());
        assert!(prefix(&vh, &frame[..30], &o, &mut out).is_err());
        assert!(prefix(&VirtioNetHdr::NONE, &frame[..13], &o, &mut out).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_never_claims_more_than_the_frame(
            flags in 0u8..4, gso_type in any::<u8>(), gso_size in any::<u16>(),
            csum_start in any::<u16>(), csum_offset in any::<u16>(),
            frame in proptest::collection::vec(any::<u8>(), 0..2_000),
        ) {
            let vh = VirtioNetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
            let mut out = [0; PREFIX_LEN];
            if prefix(&vh, &frame, &outer(), &mut out).is_ok() {
                let h = VirtioNetHdr::parse(&out).unwrap();
                prop_assert!(usize::from(h.hdr_len) <= OUTER_LEN + frame.len());
                if h.flags & F_NEEDS_CSUM != 0 {
                    prop_assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= OUTER_LEN + frame.len());
                }
            }
            let (n, bytes) = segmented(&vh, &frame);
            prop_assert!(n >= 1 && bytes >= frame.len());
        }
    }
}
