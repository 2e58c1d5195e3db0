//! Receive side: recognise an inner TCP or UDP checksum that the sending kernel left
//! partial, and say how to hand the frame on so the receiving kernel treats it as it
//! would have treated the same frame from its own vxlan device.
//!
//! A Linux sender whose device advertises checksum offload (every vxlan device does)
//! does not compute the TCP/UDP checksum: it stores the folded pseudo-header sum in the
//! checksum field and marks the buffer `CHECKSUM_PARTIAL` (Linux
//! `__tcp_v4_send_check`, `udp4_hwcsum`, `tcp_v6_send_check`), expecting the NIC to
//! finish it. A physical NIC does, on the wire. A veth — or a host bridge between VMs
//! with virtio-net offloads — moves the buffer as it is, so a userspace VXLAN receiver
//! reads the bytes with the checksum unfinished, and a TAP write without a virtio-net
//! header makes the receiving kernel verify it and drop the frame. (The kernel's own
//! vxlan receiver keeps the buffer `CHECKSUM_PARTIAL`, which TCP and UDP accept without
//! checking: between two kernel nodes nothing is verified at all.)
//!
//! [`detect`] finds such a frame; [`PartialCsum::vnet_hdr`] is the header that hands it
//! to a TAP opened with `IFF_VNET_HDR` marked `NEEDS_CSUM`, exactly what the kernel
//! path does (nothing is summed here); [`PartialCsum::complete`] finishes the checksum
//! in place for a TAP without virtio-net headers (Linux `skb_checksum_help`; see
//! [`super::for_plain_tap`]).
//!
//! # Partial or corrupt?
//! A frame is taken as partial when its checksum field equals the folded pseudo-header
//! sum for *its own* addresses, protocol and L4 length. That is all the evidence the
//! bytes carry: a genuinely finished checksum never has a reason to hold that value,
//! and nothing else in the frame distinguishes the two. So a frame corrupted in transit
//! (after a full checksum was computed) whose checksum field happens to equal that sum
//! is taken as partial and accepted unverified — about one corrupted frame in 65,536,
//! the same odds as a corruption the Internet checksum itself cannot see (RFC 1071), so
//! the chance that a corrupted frame slips through roughly doubles, from 2⁻¹⁶ to 2⁻¹⁵.
//! Every other frame is checked exactly as before: a checksum that is neither correct
//! nor this value is never "fixed". A correct checksum that happens to equal the
//! pseudo-header sum is harmless: completing it reproduces the same value.
//!
//! What it does not do: IPv4 fragments, IPv6 extension headers, VLAN tags (such frames
//! are never taken as partial and pass as before); UDP with a checksum of zero (IPv4:
//! "no checksum", never partial since the folded sum of a pseudo-header is never 0).
//!
//! Read first: Linux `include/linux/skbuff.h` ("CHECKSUM_PARTIAL"), virtio spec 1.2
//! §5.1.6.2 (`VIRTIO_NET_HDR_F_NEEDS_CSUM`), RFC 9293 §3.1, RFC 768, RFC 1071.

use super::{pseudo_with_len, Layout};
use crate::wire::checksum::Checksum;
use crate::wire::ip::{PROTO_TCP, PROTO_UDP};
use crate::wire::virtio::{F_NEEDS_CSUM, GSO_NONE};
use crate::wire::{be16, put_be16, TcpHeader, UdpHeader, VirtioNetHdr};

/// Where the unfinished L4 checksum of a frame sits. Built only by [`detect`] (or
/// [`detect_in`]), so every offset is inside the frame it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct PartialCsum {
    /// Offset of the L4 header (virtio `csum_start`).
    pub csum_start: u16,
    /// Offset of the checksum field in the L4 header (virtio `csum_offset`): 16 for
    /// TCP, 6 for UDP.
    pub csum_offset: u16,
    /// Ethernet + IP + L4 header length (virtio `hdr_len`).
    pub hdr_len: u16,
    /// End of the IP datagram: the frame to hand on is `frame[..end]` (Ethernet
    /// padding, if any, is not part of the checksummed data).
    pub end: usize,
}

impl PartialCsum {
    /// The virtio-net header for a TAP write of `frame[..self.end]`: `NEEDS_CSUM`, no
    /// GSO. The kernel finishes the checksum if the frame leaves through a device
    /// that needs it, and otherwise accepts it unverified, as for its own vxlan device.
    pub fn vnet_hdr(&self) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: self.hdr_len,
            gso_size: 0,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
        }
    }

    /// Finishes the checksum in place, as Linux `skb_checksum_help` does: the sum of
    /// `frame[csum_start..end]` (the field holds the pseudo-header sum), complemented,
    /// a zero result stored as `0xffff`. `frame` must be the frame `self` was
    /// detected in; a shorter one is left untouched.
    pub fn complete(&self, frame: &mut [u8]) {
        let start = usize::from(self.csum_start);
        let at = start + usize::from(self.csum_offset);
        if frame.len() < self.end || at + 2 > self.end {
            return;
        }
        let mut c = Checksum::new();
        c.add_bytes(&frame[start..self.end]);
        let v = match c.finish() {
            0 => 0xffff,
            v => v,
        };
        put_be16(frame, at, v);
    }
}

/// Finds an L4 checksum the sender left partial in `frame` (an Ethernet frame
/// decapsulated from VXLAN). `None` for everything else: a finished or wrong
/// checksum, no checksum (UDP over IPv4 with 0), a protocol other than TCP or UDP, or
/// headers that do not parse. Reads only the headers: O(1).
pub fn detect(frame: &[u8]) -> Option<PartialCsum> {
    Layout::parse(frame)
        .ok()
        .and_then(|lay| detect_in(frame, &lay))
}

/// [`detect`] for a frame already parsed into `lay`.
pub(crate) fn detect_in(frame: &[u8], lay: &Layout) -> Option<PartialCsum> {
    let l4_len = lay.end - lay.l4_off;
    let csum_offset = match lay.proto {
        PROTO_TCP => TcpHeader::<&[u8]>::CHECKSUM_OFFSET,
        // The kernel's sum uses the UDP length; only take the frame when it is the
        // IP payload length too (otherwise the receiver trims and the sums differ).
        PROTO_UDP if usize::from(be16(frame, lay.l4_off + 4)) == l4_len => {
            UdpHeader::<&[u8]>::CHECKSUM_OFFSET
        }
        _ => return None,
    };
    let field = be16(frame, lay.l4_off + csum_offset);
    if field != pseudo_with_len(lay.pseudo_base(frame), l4_len).fold() {
        return None;
    }
    Some(PartialCsum {
        csum_start: lay.l4_off as u16,
        csum_offset: csum_offset as u16,
        hdr_len: lay.hdr_len() as u16,
        end: lay.end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::{complete_checksum, oracle_tcp, payload, ref_sum, Tcp};

    use crate::wire::testdata::{OUTER_INNER_FRAME, PARTIAL_TCP_OUTER, PARTIAL_UDP_OUTER};

    /// The outer UDP checksum of a captured VXLAN frame verifies (IPv4 pseudo-header
    /// over outer UDP header + payload).
    fn outer_udp_verifies(outer: &[u8]) -> bool {
        let udp = &outer[34..];
        let mut c = Checksum::new();
        c.add_bytes(&outer[26..34]);
        c.add_u16(u16::from(PROTO_UDP));
        c.add_u16(udp.len() as u16);
        c.add_bytes(udp);
        c.fold() == 0xffff
    }

    #[test]
    fn captured_kernel_frames_are_partial_and_complete_to_what_the_nic_would_send() {
        // (frame, csum_offset, L4 header length, L4 length)
        for (outer, csum_offset, l4_hdr, l4_len) in [
            (&PARTIAL_TCP_OUTER[..], 16u16, 32u16, 32 + 24),
            (&PARTIAL_UDP_OUTER[..], 6, 8, 8 + 11),
        ] {
            let inner = &outer[OUTER_INNER_FRAME..];
            let p = detect(inner).unwrap();
            assert_eq!(
                (p.csum_start, p.csum_offset, p.end),
                (34, csum_offset, inner.len())
            );
            assert_eq!(p.hdr_len, 34 + l4_hdr);
            // As captured, neither the inner checksum nor the outer one (computed by
            // the sender for the finished inner checksum) verifies.
            assert!(!crate::wire::checksum::verifies(&{
                let mut v = Vec::new();
                v.extend_from_slice(&inner[26..34]);
                v.extend_from_slice(&[0, inner[23]]);
                v.extend_from_slice(&(l4_len as u16).to_be_bytes());
                v.extend_from_slice(&inner[34..]);
                v
            }));
            assert!(!outer_udp_verifies(outer));
            // Finished here, the inner checksum is what etherparse computes, and the
            // outer checksum the sender computed now verifies: the same bytes a NIC
            // finishing the checksum would have put on the wire.
            let mut done = outer.to_vec();
            p.complete(&mut done[OUTER_INNER_FRAME..]);
            assert!(outer_udp_verifies(&done));
            let sliced =
                etherparse::SlicedPacket::from_ethernet(&done[OUTER_INNER_FRAME..]).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
                panic!("not ipv4")
            };
            let (src, dst) = (ip.header().source(), ip.header().destination());
            match sliced.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    assert_eq!(t.calc_checksum_ipv4(src, dst).unwrap(), t.checksum());
                    assert_eq!(t.payload(), b"vxmesh partial checksum\n");
                }
                Some(etherparse::TransportSlice::Udp(u)) => {
                    assert_eq!(
                        u.to_header()
                            .calc_checksum_ipv4_raw(src, dst, u.payload())
                            .unwrap(),
                        u.checksum()
                    );
                    assert_eq!(u.payload(), b"vxmesh udp\n");
                }
                _ => panic!("not tcp or udp"),
            }
            // Completing what is now finished is no longer "partial".
            assert_eq!(detect(&done[OUTER_INNER_FRAME..]), None);
        }
    }

    #[test]
    fn finished_checksums_are_not_partial() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            assert_eq!(detect(&t.frame(&payload(100, 1))), None);
            assert_eq!(detect(&t.udp(&payload(100, 1), false)), None);
        }
        assert_eq!(
            detect(&crate::wire::testdata::INNER_ICMP_REQUEST),
            None,
            "ICMP is always finished by the sender"
        );
    }

    #[test]
    fn partial_tcp_and_udp_are_found_and_completed() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            let full = t.frame(&payload(1000, 2));
            let part = t.partial_frame(&payload(1000, 2));
            let p = detect(&part).unwrap();
            let l4 = t.eth_ip_len();
            assert_eq!(
                (p.csum_start, p.csum_offset, p.hdr_len, p.end),
                (l4 as u16, 16, t.hdr_len() as u16, part.len())
            );
            let h = p.vnet_hdr();
            assert!(h.needs_csum());
            assert_eq!(h.gso_type, GSO_NONE);
            // What the kernel does with the header gives the sender's full checksum…
            let mut by_kernel = part.clone();
            complete_checksum(&h, &mut by_kernel);
            assert_eq!(by_kernel, full);
            // …and so does completing here.
            let mut here = part.clone();
            p.complete(&mut here);
            assert_eq!(here, full);
            oracle_tcp(&here).unwrap();

            let udp_full = t.udp(&payload(333, 3), false);
            let udp_part = t.udp(&payload(333, 3), true);
            let p = detect(&udp_part).unwrap();
            assert_eq!((p.csum_start, p.csum_offset), (l4 as u16, 6));
            let mut here = udp_part.clone();
            p.complete(&mut here);
            assert_eq!(here, udp_full);
        }
    }

    #[test]
    fn corrupt_checksums_stay_corrupt() {
        let t = Tcp::default();
        let part = t.partial_frame(&payload(1000, 4));
        let l4 = t.eth_ip_len();
        // A flipped bit in the field: neither correct nor partial.
        let mut f = part.clone();
        f[l4 + 17] ^= 0x01;
        assert_eq!(detect(&f), None);
        // A finished checksum with corrupted data: not partial either.
        let mut f = t.frame(&payload(1000, 4));
        f[l4 + 100] ^= 0x40;
        assert_eq!(detect(&f), None);
        // A partial frame whose address was corrupted no longer matches its own
        // pseudo-header sum.
        let mut f = part.clone();
        f[14 + 15] ^= 0x01;
        assert_eq!(detect(&f), None);
        // The same for a length change (the IPv4 header checksum is fixed too, so
        // only the pseudo-header sum can tell).
        let mut f = part.clone();
        f.truncate(f.len() - 2);
        let len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
        f[24..26].fill(0);
        let c = !ref_sum(&[&f[14..34]]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(detect(&f), None);
    }

    #[test]
    fn padding_is_left_out() {
        let t = Tcp::default();
        let full = t.frame(&[7]);
        let mut part = t.partial_frame(&[7]);
        part.extend_from_slice(&[0xaa; 5]);
        let p = detect(&part).unwrap();
        assert_eq!(p.end, part.len() - 5);
        p.complete(&mut part);
        assert_eq!(&part[..p.end], &full[..]);
        assert_eq!(&part[p.end..], &[0xaa; 5]);
    }

    #[test]
    fn udp_zero_and_mismatched_length_are_not_partial() {
        let t = Tcp::default();
        let l4 = t.eth_ip_len();
        let mut f = t.udp(&payload(50, 5), true);
        f[l4 + 6..l4 + 8].fill(0);
        assert_eq!(detect(&f), None, "checksum 0: none computed");
        let mut f = t.udp(&payload(50, 5), true);
        f[l4 + 5] -= 2; // UDP length shorter than the IP payload
        assert_eq!(detect(&f), None);
    }

    #[test]
    fn complete_ignores_a_foreign_shorter_frame() {
        let t = Tcp::default();
        let part = t.partial_frame(&payload(100, 6));
        let p = detect(&part).unwrap();
        let mut short = part[..40].to_vec();
        let before = short.clone();
        p.complete(&mut short);
        assert_eq!(short, before);
    }

    proptest::proptest! {
        /// Any TCP segment: the partial form is detected and completes to the full
        /// form; the full form is detected only when its checksum collides with the
        /// pseudo-header sum, and then completing it changes nothing.
        #[test]
        fn partial_round_trip(
            v6 in proptest::bool::ANY,
            len in 0usize..1500,
            salt in 0u8..,
            port in 1u16..,
            udp in proptest::bool::ANY,
        ) {
            let t = Tcp { v6, src_port: port, ..Tcp::default() };
            let data = payload(len, salt);
            let (full, part) = if udp {
                (t.udp(&data, false), t.udp(&data, true))
            } else {
                (t.frame(&data), t.partial_frame(&data))
            };
            let p = detect(&part);
            proptest::prop_assert!(p.is_some());
            let p = p.unwrap();
            let mut done = part.clone();
            p.complete(&mut done);
            // A TCP checksum that comes to zero is written 0x0000 by the reference
            // builder and 0xffff by `complete`, as by the kernel's skb_checksum_help
            // (CSUM_MANGLED_0): the same value in ones' complement, both verify.
            let at = usize::from(p.csum_start + p.csum_offset);
            let mut want = full.clone();
            if want[at..at + 2] == [0, 0] {
                want[at..at + 2].copy_from_slice(&[0xff, 0xff]);
            }
            proptest::prop_assert_eq!(&done, &want);
            if let Some(q) = detect(&full) {
                let mut again = full.clone();
                q.complete(&mut again);
                proptest::prop_assert_eq!(&again, &want);
            }
        }

        /// A single flipped bit anywhere in the L4 part of a finished frame is never
        /// taken as partial unless the resulting checksum field equals the
        /// pseudo-header sum (the documented collision), and detection never panics.
        #[test]
        fn flipped_bits(len in 1usize..400, salt in 0u8.., bit in 0usize..8, at in 0usize..10_000) {
            let t = Tcp::default();
            let mut f = t.frame(&payload(len, salt));
            let l4 = t.eth_ip_len();
            let i = l4 + at % (f.len() - l4);
            f[i] ^= 1 << bit;
            if let Some(p) = detect(&f) {
                let field = be16(&f, l4 + 16);
                let lay = Layout::parse(&f).unwrap();
                proptest::prop_assert_eq!(
                    field,
                    pseudo_with_len(lay.pseudo_base(&f), f.len() - l4).fold()
                );
                proptest::prop_assert_eq!(p.end, f.len());
            }
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(0u8.., 0..200)) {
            if let Some(p) = detect(&b) {
                let mut c = b.clone();
                p.complete(&mut c);
                let _ = p.vnet_hdr();
            }
        }
    }
}
