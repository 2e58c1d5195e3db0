//! Receive side: recognise a TCP frame larger than the TAP's MTU — a kernel sender's
//! GSO frame that crossed a virtual underlay without being cut — and describe it as the
//! GSO frame it is, so the receiving kernel can carry it on (and cut it where needed).
//!
//! A Linux vxlan device at default offloads hands its NIC one UDP-tunnel GSO buffer for
//! up to 64 KiB of a TCP stream (`SKB_GSO_UDP_TUNNEL | SKB_GSO_TCPV4`). A physical NIC
//! (or the kernel, for a NIC without tunnel offloads) cuts it into MTU-sized VXLAN
//! datagrams. A veth — or a host bridge between VMs with virtio-net offloads — moves it
//! whole, and a UDP socket receives it as one large datagram: the VXLAN header, then one
//! inner Ethernet + IP + TCP frame of up to 64 KiB, its checksum left partial, and no
//! `UDP_GRO` control message (that one is only for `SKB_GSO_UDP_L4`). Written to the TAP
//! as a plain frame, it exceeds the MTU and the forwarding path drops it. The kernel's
//! own vxlan receiver keeps such a buffer a GSO buffer; [`check`] says how to do the
//! same over a TAP with virtio-net headers: `GSO_TCPV4`/`GSO_TCPV6` with a segment size
//! derived from the TAP's MTU (`mtu` − IP header − TCP header, the MSS a sender on this
//! network uses; the sender's own segment size is not in the frame) and `NEEDS_CSUM`.
//!
//! Only well-formed, checked frames qualify: IPv4 (not a fragment, header checksum
//! verifies) or IPv6 without extension headers, TCP with ACK and without SYN, RST or
//! URG, payload present, no Ethernet padding, and a TCP checksum that verifies or was
//! left partial by the sender ([`super::partial`]); anything else is handed on as it is
//! (the kernel drops what is wrong). Not handled: UDP GSO frames (`SKB_GSO_UDP_L4`)
//! from a kernel sender — their datagram size cannot be known from the bytes.
//!
//! Read first: Linux `net/ipv4/tcp_offload.c` (`tcp_gso_segment`),
//! `include/linux/virtio_net.h` (`virtio_net_hdr_to_skb`), virtio spec 1.2 §5.1.6.2.

use super::partial::PartialCsum;
use super::{pseudo_with_len, Layout};
use crate::wire::checksum::verifies;
use crate::wire::ip::{tcp_flags, PROTO_TCP};
use crate::wire::virtio::{F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6};
use crate::wire::{TcpHeader, VirtioNetHdr};

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Unsegmented {
    /// Not larger than the MTU, or not TCP: not this module's business.
    No,
    /// Larger than the MTU but not something to hand on as GSO (flags, padding, no
    /// payload): hand it on as it is.
    Refused,
    /// Larger than the MTU, and its IPv4 header or TCP checksum is wrong (neither
    /// correct nor partial): hand it on as it is, for the kernel to drop.
    BadChecksum,
    /// A GSO frame: hand it on with `hdr`. With `partial` the TCP checksum field
    /// already holds the pseudo-header sum `NEEDS_CSUM` wants; otherwise (a verified,
    /// finished checksum) the field must first be set to [`pseudo_sum`].
    Gso { hdr: VirtioNetHdr, partial: bool },
}

/// Checks `frame` (parsed into `lay`, its partial checksum if any in `partial`)
/// against the TAP's `mtu` (the largest IP packet it carries unsegmented).
pub(crate) fn check(
    frame: &[u8],
    lay: &Layout,
    partial: Option<PartialCsum>,
    mtu: usize,
) -> Unsegmented {
    let ip_len = lay.end - Layout::ETH_LEN;
    if lay.proto != PROTO_TCP || ip_len <= mtu {
        return Unsegmented::No;
    }
    let l4 = lay.l4_off;
    let flags = frame[l4 + 13];
    let payload = lay.end - lay.hdr_len();
    let headers = lay.hdr_len() - Layout::ETH_LEN;
    let bad_flags = tcp_flags::SYN | tcp_flags::RST | tcp_flags::URG;
    if frame.len() != lay.end
        || payload == 0
        || flags & tcp_flags::ACK == 0
        || flags & bad_flags != 0
        || mtu <= headers
    {
        return Unsegmented::Refused;
    }
    if !lay.v6 && !verifies(&frame[Layout::ETH_LEN..l4]) {
        return Unsegmented::BadChecksum;
    }
    if partial.is_none() {
        let mut c = pseudo_with_len(lay.pseudo_base(frame), lay.end - l4);
        c.add_bytes(&frame[l4..lay.end]);
        if c.fold() != 0xffff {
            return Unsegmented::BadChecksum;
        }
    }
    let mss = mtu - headers;
    let mut gso_type = if lay.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    if flags & tcp_flags::CWR != 0 {
        gso_type |= GSO_ECN;
    }
    Unsegmented::Gso {
        hdr: VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: lay.hdr_len() as u16,
            // mss < payload <= 65,535: fits.
            gso_size: mss.min(usize::from(u16::MAX)) as u16,
            csum_start: l4 as u16,
            csum_offset: TcpHeader::<&[u8]>::CHECKSUM_OFFSET as u16,
        },
        partial: partial.is_some(),
    }
}

/// The pseudo-header sum a `NEEDS_CSUM` GSO frame carries in its TCP checksum field.
pub(crate) fn pseudo_sum(frame: &[u8], lay: &Layout) -> u16 {
    pseudo_with_len(lay.pseudo_base(frame), lay.end - lay.l4_off).fold()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::partial::detect;
    use crate::offload::testutil::{oracle_tcp, payload, Tcp};
    use crate::offload::{max_output_len, segment};
    use crate::wire::ip::tcp_flags::{ACK, CWR, FIN, PSH, RST, SYN};

    const MTU: usize = 1450;

    fn run(frame: &[u8]) -> Unsegmented {
        let lay = Layout::parse(frame).unwrap();
        check(frame, &lay, detect(frame), MTU)
    }

    /// Cuts a GSO frame as the kernel will (after setting the field as needed).
    fn cut(hdr: &VirtioNetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; max_output_len(hdr, frame.len(), 0)];
        let s = segment(hdr, frame, &[], &mut out).unwrap();
        (0..s.count)
            .map(|i| out[s.datagram(i).unwrap()].to_vec())
            .collect()
    }

    #[test]
    fn a_kernel_gso_frame_becomes_a_gso_header() {
        for v6 in [false, true] {
            for partial in [true, false] {
                let t = Tcp {
                    v6,
                    flags: ACK | PSH,
                    ..Tcp::default()
                };
                // The lab's capture: 5 × 1398 bytes in one VXLAN datagram.
                let data = payload(6990, 1);
                let f = if partial {
                    t.partial_frame(&data)
                } else {
                    t.frame(&data)
                };
                let Unsegmented::Gso { hdr, partial: p } = run(&f) else {
                    panic!("not gso: {:?}", run(&f))
                };
                assert_eq!(p, partial);
                let mss = MTU - (t.hdr_len() - 14);
                assert_eq!(usize::from(hdr.gso_size), mss);
                assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
                assert_eq!(hdr.flags, F_NEEDS_CSUM);
                assert_eq!(usize::from(hdr.hdr_len), t.hdr_len());
                // What the kernel cuts it into: MTU-sized, verifying segments carrying
                // the payload in order, PSH on the last only.
                let pieces = cut(&hdr, &f);
                assert_eq!(pieces.len(), 6990usize.div_ceil(mss));
                let mut joined = Vec::new();
                for (i, s) in pieces.iter().enumerate() {
                    assert!(s.len() - 14 <= MTU);
                    let o = oracle_tcp(s).unwrap();
                    assert_eq!(o.flags & PSH != 0, i + 1 == pieces.len());
                    joined.extend(o.payload);
                }
                assert_eq!(joined, data);
            }
        }
    }

    #[test]
    fn cwr_asks_for_ecn_and_fin_is_allowed() {
        let f = Tcp {
            flags: ACK | CWR | FIN,
            ..Tcp::default()
        }
        .partial_frame(&payload(3000, 2));
        let Unsegmented::Gso { hdr, .. } = run(&f) else {
            panic!()
        };
        assert_eq!(hdr.gso_type, GSO_TCPV4 | GSO_ECN);
    }

    #[test]
    fn small_frames_and_other_protocols_are_not_this_modules() {
        let t = Tcp::default();
        assert_eq!(run(&t.partial_frame(&payload(1398, 3))), Unsegmented::No);
        assert_eq!(run(&t.udp(&payload(5000, 3), true)), Unsegmented::No);
    }

    #[test]
    fn wrong_or_odd_large_frames_are_refused() {
        let t = Tcp::default();
        let big = payload(5000, 4);
        // A finished checksum that does not verify is never handed on as GSO.
        let mut f = t.frame(&big);
        f[14 + 20 + 32 + 100] ^= 1;
        assert_eq!(run(&f), Unsegmented::BadChecksum);
        // Nor a partial one whose field was corrupted (then it is not partial).
        let mut f = t.partial_frame(&big);
        f[14 + 20 + 17] ^= 1;
        assert_eq!(run(&f), Unsegmented::BadChecksum);
        // A broken IPv4 header checksum.
        let mut f = t.partial_frame(&big);
        f[14 + 10] ^= 1;
        assert_eq!(run(&f), Unsegmented::BadChecksum);
        for flags in [SYN | ACK, RST | ACK, PSH, 0] {
            let f = Tcp { flags, ..t.clone() }.partial_frame(&big);
            assert_eq!(run(&f), Unsegmented::Refused, "flags {flags:#x}");
        }
        let mut padded = t.partial_frame(&big);
        padded.push(0);
        assert_eq!(run(&padded), Unsegmented::Refused);
        // An MTU smaller than the headers leaves no segment size.
        let f = t.partial_frame(&big);
        let lay = Layout::parse(&f).unwrap();
        assert_eq!(check(&f, &lay, detect(&f), 40), Unsegmented::Refused);
    }

    #[test]
    fn pseudo_sum_is_what_a_partial_sender_writes() {
        let t = Tcp::default();
        let full = t.frame(&payload(4000, 5));
        let part = t.partial_frame(&payload(4000, 5));
        let lay = Layout::parse(&full).unwrap();
        let at = lay.l4_off + 16;
        assert_eq!(
            pseudo_sum(&full, &lay).to_be_bytes(),
            [part[at], part[at + 1]]
        );
    }
}
