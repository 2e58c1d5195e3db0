//! Transmit side: turn one frame read from a TAP with `IFF_VNET_HDR` into the
//! wire-sized inner frames, each behind a caller-given prefix (the VXLAN header), laid
//! out back to back as one UDP_SEGMENT (GSO) `sendmsg` wants them.
//!
//! What it does, per virtio-net `gso_type` (virtio spec 1.2 §5.1.6.2):
//! - `GSO_NONE`: copies the frame (at least an Ethernet header); with `F_NEEDS_CSUM`
//!   it completes the L4 checksum the way Linux `skb_checksum_help` does (sum from
//!   `csum_start` to the end, store the complement at `csum_start + csum_offset`, a
//!   zero result is sent as `0xffff`).
//! - `GSO_TCPV4`, `GSO_TCPV6` (with or without `GSO_ECN`): what Linux
//!   `tcp_gso_segment` does: per segment the IP length, the IPv4 id (first + i) and
//!   header checksum, the TCP sequence number, FIN/PSH on the last segment only, CWR on
//!   the first only, and a full TCP checksum.
//! - `GSO_UDP_L4` (USO): one UDP header per segment, length and checksum fixed
//!   (Linux `__udp_gso_segment`).
//!
//! What it does not do: IPv4 UFO (`GSO_UDP`), VLAN tags, IPv6 extension headers. It
//! never trusts `hdr_len` (the kernel may send 0 or the length of the whole first
//! packet on the forwarding path) nor `csum_start` for GSO frames: header lengths come
//! from the headers, checked against the frame. Nothing is allocated; every error is
//! reported before the first byte of `out` is written.

use std::ops::Range;

use super::{pseudo_with_len, Layout, OffloadError};
use crate::wire::checksum::Checksum;
use crate::wire::ip::{tcp_flags, PROTO_TCP, PROTO_UDP};
use crate::wire::virtio::{GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::wire::{
    be16, be32, put_be16, Ipv4Packet, Ipv6Packet, TcpHeader, UdpHeader, VirtioNetHdr,
};

/// Smallest Ethernet + IP + L4 header a GSO frame can have (IPv4 + UDP).
const MIN_GSO_HDR: usize = 14 + 20 + 8;
/// Largest: Ethernet + IPv4 with 40 bytes of options + TCP with 40 bytes of options.
const MAX_GSO_HDR: usize = 14 + 60 + 60;

/// Layout of what [`segment`] wrote: `count` datagrams back to back in `out[..len]`,
/// every one `stride` bytes long except possibly the last (shorter), exactly the shape
/// one UDP_SEGMENT (GSO) `sendmsg` takes with segment size `stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub stride: usize,
    pub count: usize,
    pub len: usize,
}

impl Segments {
    /// Byte range of datagram `i` in the output buffer.
    pub fn datagram(&self, i: usize) -> Option<Range<usize>> {
        if i >= self.count {
            return None;
        }
        let start = i * self.stride;
        Some(start..(start + self.stride).min(self.len))
    }

    /// Splits the output into runs that each fit one UDP_SEGMENT `sendmsg`: at most
    /// `max_segments` datagrams (`UDP_MAX_SEGMENTS`, 64 on older kernels) and at most
    /// `max_bytes` bytes (65,507 for IPv4: the UDP length field). Every run is whole
    /// datagrams of `stride` bytes except possibly its last, so each run can be sent
    /// with segment size `stride`. A datagram larger than `max_bytes` is a run of its own.
    pub fn batches(&self, max_segments: usize, max_bytes: usize) -> Batches {
        let per = max_bytes
            .checked_div(self.stride)
            .unwrap_or(1)
            .clamp(1, max_segments.max(1));
        Batches {
            step: per * self.stride.max(1),
            at: 0,
            len: self.len,
        }
    }
}

/// Iterator of byte ranges returned by [`Segments::batches`].
#[derive(Debug, Clone)]
pub struct Batches {
    step: usize,
    at: usize,
    len: usize,
}

impl Iterator for Batches {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.at >= self.len {
            return None;
        }
        let start = self.at;
        self.at = (start + self.step).min(self.len);
        Some(start..self.at)
    }
}

/// Upper bound of the bytes [`segment`] may write for this input, so callers can size
/// or flush their buffers first. Exact for `GSO_NONE`; for GSO frames it assumes the
/// smallest headers for the segment count and the largest for their size.
pub fn max_output_len(vh: &VirtioNetHdr, frame_len: usize, prefix_len: usize) -> usize {
    let one = prefix_len.saturating_add(frame_len);
    match vh.gso_kind() {
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4 if vh.gso_size > 0 => {
            let payload = frame_len.saturating_sub(MIN_GSO_HDR);
            let count = payload.div_ceil(usize::from(vh.gso_size)).max(1);
            let per = prefix_len.saturating_add(frame_len.min(MAX_GSO_HDR));
            count.saturating_mul(per).saturating_add(payload).max(one)
        }
        _ => one,
    }
}

/// Writes the wire-sized frames for one TAP frame into `out`, each preceded by
/// `prefix`. `frame` is the Ethernet frame with its virtio-net header `vh` already
/// parsed and stripped. See the module documentation for what each `gso_type` gets.
pub fn segment(
    vh: &VirtioNetHdr,
    frame: &[u8],
    prefix: &[u8],
    out: &mut [u8],
) -> Result<Segments, OffloadError> {
    match vh.gso_kind() {
        GSO_NONE => copy_one(vh, frame, prefix, out),
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4 => split(vh, frame, prefix, out),
        _ => Err(OffloadError::UnsupportedGso(vh.gso_type)),
    }
}

fn output_fits(out: &[u8], need: usize) -> Result<(), OffloadError> {
    if out.len() < need {
        return Err(OffloadError::OutputTooSmall {
            need,
            have: out.len(),
        });
    }
    Ok(())
}

/// `GSO_NONE`: one datagram, the checksum completed if the kernel left it partial.
fn copy_one(
    vh: &VirtioNetHdr,
    frame: &[u8],
    prefix: &[u8],
    out: &mut [u8],
) -> Result<Segments, OffloadError> {
    if frame.len() < Layout::ETH_LEN {
        // Not even an Ethernet header (and a zero-length datagram cannot be sent
        // with UDP_SEGMENT).
        return Err(OffloadError::Truncated);
    }
    let p = prefix.len();
    let len = p + frame.len();
    let field = if vh.needs_csum() {
        let start = usize::from(vh.csum_start);
        let at = start + usize::from(vh.csum_offset);
        if at + 2 > frame.len() {
            return Err(OffloadError::BadChecksumOffsets {
                start: vh.csum_start,
                offset: vh.csum_offset,
                frame_len: frame.len(),
            });
        }
        Some((start, at))
    } else {
        None
    };
    output_fits(out, len)?;
    out[..p].copy_from_slice(prefix);
    let f = &mut out[p..len];
    f.copy_from_slice(frame);
    if let Some((start, at)) = field {
        // The field holds the pseudo-header sum; summing over it includes it.
        let mut c = Checksum::new();
        c.add_bytes(&f[start..]);
        put_be16(f, at, nonzero(c.finish()));
    }
    Ok(Segments {
        stride: len,
        count: 1,
        len,
    })
}

/// A computed checksum of zero is sent as all ones: for UDP zero means "no checksum"
/// (RFC 768), and for TCP both encodings verify (Linux `CSUM_MANGLED_0`).
#[inline]
fn nonzero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// `GSO_TCPV4`, `GSO_TCPV6`, `GSO_UDP_L4`.
fn split(
    vh: &VirtioNetHdr,
    frame: &[u8],
    prefix: &[u8],
    out: &mut [u8],
) -> Result<Segments, OffloadError> {
    let kind = vh.gso_kind();
    let mss = usize::from(vh.gso_size);
    if mss == 0 {
        return Err(OffloadError::BadHeaders("gso_size 0 on a gso frame"));
    }
    let lay = Layout::parse(frame)?;
    let tcp = match (kind, lay.proto, lay.v6) {
        (GSO_TCPV4, PROTO_TCP, false) | (GSO_TCPV6, PROTO_TCP, true) => true,
        (GSO_UDP_L4, PROTO_UDP, _) => false,
        (GSO_TCPV4, PROTO_TCP, true) => return Err(OffloadError::BadHeaders("gso tcpv4 on ipv6")),
        (GSO_TCPV6, PROTO_TCP, false) => return Err(OffloadError::BadHeaders("gso tcpv6 on ipv4")),
        _ => {
            return Err(OffloadError::BadHeaders(
                "gso_type does not match the l4 protocol",
            ))
        }
    };

    let hdr = lay.hdr_len();
    let payload = &frame[hdr..lay.end];
    let count = payload.len().div_ceil(mss).max(1);
    let p = prefix.len();
    let stride = p + hdr + payload.len().min(mss);
    let len = count * (p + hdr) + payload.len();
    output_fits(out, len)?;

    let eth = Layout::ETH_LEN;
    let l4 = lay.l4_off;
    let base = lay.pseudo_base(frame);
    let first_seq = if tcp { be32(frame, l4 + 4) } else { 0 };
    let first_id = if lay.v6 { 0 } else { be16(frame, eth + 4) };
    let flags = if tcp { frame[l4 + 13] } else { 0 };

    let mut pos = 0;
    for (i, chunk) in payload
        .chunks(mss)
        .chain(empty_if(payload.is_empty()))
        .enumerate()
    {
        let first = i == 0;
        let last = i + 1 == count;
        let dgram = &mut out[pos..pos + p + hdr + chunk.len()];
        pos += dgram.len();
        dgram[..p].copy_from_slice(prefix);
        let f = &mut dgram[p..];
        f[..hdr].copy_from_slice(&frame[..hdr]);
        f[hdr..].copy_from_slice(chunk);

        // Both fit in 16 bits: each is at most the original datagram's, which fit.
        let ip_len = f.len() - eth;
        let l4_len = f.len() - l4;
        if lay.v6 {
            Ipv6Packet::new_unchecked(&mut f[eth..]).set_payload_len((ip_len - 40) as u16);
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[eth..l4]);
            ip.set_total_len(ip_len as u16);
            ip.set_ident(first_id.wrapping_add(i as u16));
            ip.fill_checksum();
        }
        let seg = &mut f[l4..];
        let csum = if tcp {
            let mut th = TcpHeader::new_unchecked(&mut *seg);
            th.set_seq(first_seq.wrapping_add((i * mss) as u32));
            let mut fl = flags;
            if !last {
                fl &= !(tcp_flags::FIN | tcp_flags::PSH);
            }
            if !first {
                fl &= !tcp_flags::CWR;
            }
            th.set_flags(fl);
            th.set_checksum(0);
            let mut c = pseudo_with_len(base, l4_len);
            c.add_bytes(seg);
            c.finish()
        } else {
            let mut uh = UdpHeader::new_unchecked(&mut *seg);
            uh.set_len(l4_len as u16);
            uh.set_checksum(0);
            let mut c = pseudo_with_len(base, l4_len);
            c.add_bytes(seg);
            nonzero(c.finish())
        };
        let at = if tcp {
            TcpHeader::<&[u8]>::CHECKSUM_OFFSET
        } else {
            UdpHeader::<&[u8]>::CHECKSUM_OFFSET
        };
        put_be16(seg, at, csum);
    }
    Ok(Segments { stride, count, len })
}

/// One empty chunk when the payload is empty (a header-only GSO frame still goes out
/// as one segment), none otherwise.
fn empty_if<'a>(yes: bool) -> impl Iterator<Item = &'a [u8]> {
    yes.then_some(&[][..]).into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    use crate::offload::testutil::{oracle_tcp, payload, ref_sum, timestamps, Tcp};
    use crate::wire::virtio::{F_NEEDS_CSUM, GSO_ECN, GSO_UDP};
    use crate::wire::vxlan::{Vni, VxlanHeader};

    fn vxlan() -> [u8; 8] {
        VxlanHeader {
            vni: Vni::new(1).unwrap(),
        }
        .to_bytes()
    }

    /// Segments into a buffer sized by `max_output_len`, checks the layout invariants
    /// and that every datagram starts with the prefix; returns the inner frames.
    fn run(vh: &VirtioNetHdr, frame: &[u8], prefix: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = vec![0u8; max_output_len(vh, frame.len(), prefix.len())];
        let s = segment(vh, frame, prefix, &mut out)?;
        assert!(s.count >= 1 && s.len <= out.len());
        assert!(s.len > (s.count - 1) * s.stride && s.len <= s.count * s.stride);
        Ok((0..s.count)
            .map(|i| {
                let d = &out[s.datagram(i).unwrap()];
                assert_eq!(&d[..prefix.len()], prefix);
                d[prefix.len()..].to_vec()
            })
            .collect())
    }

    #[test]
    fn plain_frame_is_copied_behind_the_prefix() {
        let f = crate::wire::testdata::INNER_ICMP_REQUEST;
        let mut out = [0u8; 100];
        let s = segment(&VirtioNetHdr::NONE, &f, &vxlan(), &mut out).unwrap();
        assert_eq!(
            s,
            Segments {
                stride: 58,
                count: 1,
                len: 58
            }
        );
        assert_eq!(&out[..8], &vxlan());
        assert_eq!(&out[8..58], &f[..]);
    }

    #[test]
    fn completes_a_partial_tcp_checksum() {
        let t = Tcp::default();
        let (mut vh, f) = t.tso(&payload(300, 1), 1398);
        vh.gso_type = GSO_NONE;
        assert!(oracle_tcp(&f).is_err(), "input checksum is only partial");
        let segs = run(&vh, &f, &vxlan()).unwrap();
        assert_eq!(segs.len(), 1);
        let p = oracle_tcp(&segs[0]).unwrap();
        assert_eq!(p.payload, payload(300, 1));
        // Only the checksum field changed.
        assert_eq!(segs[0][..50], f[..50]);
        assert_eq!(segs[0][52..], f[52..]);
    }

    fn udp_verifies(frame: &[u8], l4: usize, v6: bool) -> bool {
        let (a, n) = if v6 { (22, 32) } else { (26, 8) };
        let len = (frame.len() - l4) as u16;
        let mut pseudo = frame[a..a + n].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&len.to_be_bytes());
        ref_sum(&[&pseudo, &frame[l4..]]) == 0xffff
    }

    #[test]
    fn completes_a_partial_udp_checksum_zero_becomes_ffff() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            let l4 = t.eth_ip_len();
            // Choose the last two payload bytes so the complemented sum is zero.
            let mut data = payload(64, 9);
            data[62..].fill(0);
            let probe = t.udp(&data, false);
            let mut zeroed = probe.clone();
            zeroed[l4 + 6..l4 + 8].fill(0);
            let len = (probe.len() - l4) as u16;
            let (a, n) = if v6 { (22, 32) } else { (26, 8) };
            let mut pseudo = probe[a..a + n].to_vec();
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            let s = ref_sum(&[&pseudo, &zeroed[l4..]]);
            data[62..].copy_from_slice(&(!s).to_be_bytes());

            let f = t.udp(&data, true);
            let vh = VirtioNetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: l4 as u16,
                csum_offset: 6,
                ..VirtioNetHdr::NONE
            };
            let segs = run(&vh, &f, &[]).unwrap();
            assert_eq!(&segs[0][l4 + 6..l4 + 8], &[0xff, 0xff]);
            assert!(udp_verifies(&segs[0], l4, v6));
            // And an ordinary one.
            let f = t.udp(&payload(333, 2), true);
            let segs = run(&vh, &f, &[]).unwrap();
            assert!(udp_verifies(&segs[0], l4, v6));
        }
    }

    /// A 64 KiB TSO frame as Linux hands it to a TAP reader for a VXLAN-sized MTU:
    /// timestamps (12 option bytes), gso_size 1398, NEEDS_CSUM with the pseudo-header
    /// sum in the TCP checksum field, PSH on the burst.
    #[test]
    fn kernel_tso_frame_v4() {
        let t = Tcp {
            flags: tcp_flags::ACK | tcp_flags::PSH,
            ip_id: 0xfffe,
            ..Tcp::default()
        };
        let data = payload(46 * 1398 + 700, 3);
        let (vh, f) = t.tso(&data, 1398);
        assert_eq!((vh.hdr_len, vh.csum_start), (66, 34));
        let segs = run(&vh, &f, &vxlan()).unwrap();
        assert_eq!(segs.len(), 47);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = oracle_tcp(s).unwrap();
            assert_eq!(p.hdr_len, 66);
            assert_eq!(p.seq, t.seq.wrapping_add(1398 * i as u32));
            assert_eq!(p.ip_id, 0xfffeu16.wrapping_add(i as u16));
            let last = i == 46;
            assert_eq!(p.payload.len(), if last { 700 } else { 1398 });
            assert_eq!(p.flags, if last { 0x18 } else { 0x10 });
            // Everything else in the headers is the original's.
            assert_eq!(s[..16], f[..16]);
            assert_eq!(s[20..24], f[20..24]);
            assert_eq!(s[26..38], f[26..38]);
            assert_eq!(s[42..47], f[42..47]);
            assert_eq!(s[48..50], f[48..50]);
            assert_eq!(s[52..66], f[52..66]);
            joined.extend_from_slice(&p.payload);
        }
        assert_eq!(joined, data);

        // hdr_len and csum_start are not trusted: 0 or the whole frame give the same.
        for (hl, cs) in [(0, 0), (f.len() as u16, 14), (9, 999)] {
            let vh2 = VirtioNetHdr {
                hdr_len: hl,
                csum_start: cs,
                ..vh
            };
            assert_eq!(run(&vh2, &f, &vxlan()).unwrap(), segs);
        }
    }

    #[test]
    fn batches_respect_udp_gso_limits() {
        let (vh, f) = Tcp::default().tso(&payload(46 * 1398, 4), 1398);
        let mut out = vec![0u8; max_output_len(&vh, f.len(), 8)];
        let s = segment(&vh, &f, &vxlan(), &mut out).unwrap();
        assert_eq!((s.stride, s.count), (8 + 66 + 1398, 46));
        let runs: Vec<_> = s.batches(64, 65_507).collect();
        // 44 datagrams of 1472 bytes fit 65,507; the rest goes in a second send.
        assert_eq!(runs, vec![0..44 * 1472, 44 * 1472..46 * 1472]);
        let runs: Vec<_> = s.batches(10, 65_507).collect();
        assert_eq!(runs.len(), 5);
        assert_eq!(runs.last(), Some(&(40 * 1472..s.len)));
        assert_eq!(s.batches(64, 100).count(), 46);
        assert_eq!(s.datagram(46), None);
    }

    #[test]
    fn ecn_keeps_cwr_on_the_first_segment_only() {
        let t = Tcp {
            flags: tcp_flags::ACK | tcp_flags::CWR | tcp_flags::ECE | tcp_flags::FIN,
            ..Tcp::default()
        };
        let (mut vh, f) = t.tso(&payload(5000, 5), 1398);
        vh.gso_type |= GSO_ECN;
        let segs = run(&vh, &f, &[]).unwrap();
        let flags: Vec<u8> = segs.iter().map(|s| oracle_tcp(s).unwrap().flags).collect();
        assert_eq!(flags, vec![0xd0, 0x50, 0x50, 0x51]);
    }

    #[test]
    fn tso_v6_without_options() {
        let t = Tcp {
            v6: true,
            options: vec![],
            ..Tcp::default()
        };
        let data = payload(10_000, 6);
        let (vh, f) = t.tso(&data, 1440);
        let segs = run(&vh, &f, &vxlan()).unwrap();
        assert_eq!(segs.len(), 7);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = oracle_tcp(s).unwrap();
            assert!(p.v6);
            assert_eq!(p.seq, t.seq.wrapping_add(1440 * i as u32));
            assert_eq!(
                usize::from(u16::from_be_bytes([s[18], s[19]])),
                s.len() - 54
            );
            assert_eq!(s[14..18], f[14..18], "class and flow label kept");
            joined.extend_from_slice(&p.payload);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn uso_v4_and_v6() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ip_id: 7,
                ..Tcp::default()
            };
            let data = payload(4000, 7);
            let (vh, f) = t.uso(&data, 1200);
            let segs = run(&vh, &f, &vxlan()).unwrap();
            assert_eq!(segs.len(), 4);
            let l4 = t.eth_ip_len();
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let u = etherparse::SlicedPacket::from_ethernet(s).unwrap();
                let Some(etherparse::TransportSlice::Udp(udp)) = u.transport else {
                    panic!("not udp")
                };
                assert_eq!(usize::from(udp.length()), s.len() - l4);
                assert!(udp_verifies(s, l4, v6));
                if !v6 {
                    assert_eq!(u16::from_be_bytes([s[18], s[19]]), 7 + i as u16);
                }
                joined.extend_from_slice(udp.payload());
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn refuses_what_it_cannot_segment() {
        let t = Tcp::default();
        let (vh, f) = t.tso(&payload(3000, 8), 1398);
        let err = |vh: &VirtioNetHdr, f: &[u8]| run(vh, f, &vxlan()).unwrap_err();

        let ufo = VirtioNetHdr {
            gso_type: GSO_UDP,
            ..vh
        };
        assert_eq!(err(&ufo, &f), OffloadError::UnsupportedGso(GSO_UDP));
        let unknown = VirtioNetHdr {
            gso_type: 0x42,
            ..vh
        };
        assert_eq!(err(&unknown, &f), OffloadError::UnsupportedGso(0x42));
        let zero = VirtioNetHdr { gso_size: 0, ..vh };
        assert!(matches!(err(&zero, &f), OffloadError::BadHeaders(_)));
        let v6 = VirtioNetHdr {
            gso_type: GSO_TCPV6,
            ..vh
        };
        assert!(matches!(err(&v6, &f), OffloadError::BadHeaders(_)));
        let udp = VirtioNetHdr {
            gso_type: GSO_UDP_L4,
            ..vh
        };
        assert!(matches!(err(&udp, &f), OffloadError::BadHeaders(_)));
        let (vh6, f6) = Tcp {
            v6: true,
            ..Tcp::default()
        }
        .tso(&payload(3000, 8), 1398);
        let v4 = VirtioNetHdr {
            gso_type: GSO_TCPV4,
            ..vh6
        };
        assert!(matches!(err(&v4, &f6), OffloadError::BadHeaders(_)));

        // Cut inside the TCP options, and an IP length longer than the frame.
        assert_eq!(err(&vh, &f[..60]), OffloadError::Truncated);
        assert_eq!(err(&vh, &f[..f.len() - 1]), OffloadError::Truncated);
        // A fragment, a VLAN tag.
        let mut frag = f.clone();
        frag[20] |= 0x20;
        assert!(matches!(err(&vh, &frag), OffloadError::BadHeaders(_)));
        let mut vlan = f.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert!(matches!(err(&vh, &vlan), OffloadError::BadHeaders(_)));

        // Output one byte short: an error, and nothing written.
        let need = run(&vh, &f, &vxlan())
            .unwrap()
            .iter()
            .map(|s| s.len() + 8)
            .sum::<usize>();
        let mut out = vec![0xa5u8; need - 1];
        assert_eq!(
            segment(&vh, &f, &vxlan(), &mut out),
            Err(OffloadError::OutputTooSmall {
                need,
                have: need - 1
            })
        );
        assert!(out.iter().all(|&b| b == 0xa5));

        // NEEDS_CSUM pointing past the end.
        let bad = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 40,
            csum_offset: 10,
            ..VirtioNetHdr::NONE
        };
        let icmp = crate::wire::testdata::INNER_ICMP_REQUEST;
        assert!(matches!(
            err(&bad, &icmp),
            OffloadError::BadChecksumOffsets { .. }
        ));
        // Shorter than an Ethernet header.
        assert_eq!(
            err(&VirtioNetHdr::NONE, &icmp[..13]),
            OffloadError::Truncated
        );
    }

    #[test]
    fn header_only_gso_frame_is_one_segment() {
        let (vh, f) = Tcp::default().tso(&[], 1398);
        let segs = run(&vh, &f, &[]).unwrap();
        assert_eq!(segs.len(), 1);
        assert!(oracle_tcp(&segs[0]).unwrap().payload.is_empty());
    }

    fn any_vh() -> impl Strategy<Value = VirtioNetHdr> {
        (
            prop_oneof![Just(0u8), Just(F_NEEDS_CSUM), any::<u8>()],
            prop_oneof![
                Just(GSO_NONE),
                Just(GSO_TCPV4),
                Just(GSO_TCPV6),
                Just(GSO_UDP_L4),
                Just(GSO_TCPV4 | GSO_ECN),
                any::<u8>()
            ],
            any::<u16>(),
            prop_oneof![1u16..100, any::<u16>()],
            0u16..200,
            0u16..40,
        )
            .prop_map(
                |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VirtioNetHdr {
                    flags,
                    gso_type,
                    hdr_len,
                    gso_size,
                    csum_start,
                    csum_offset,
                },
            )
    }

    /// Valid TSO/USO frames with a few bytes overwritten, or plain garbage.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        let valid = (any::<bool>(), any::<bool>(), 0usize..3000).prop_map(|(v6, udp, n)| {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            if udp {
                t.udp(&payload(n, 1), true)
            } else {
                t.tso(&payload(n, 1), 536).1
            }
        });
        let mutated = (
            valid,
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        )
            .prop_map(|(mut f, edits)| {
                for (at, b) in edits {
                    let n = f.len();
                    f[at % n] = b;
                }
                f
            });
        let truncated = (mutated.clone(), any::<usize>())
            .prop_map(|(f, cut)| f[..cut % (f.len() + 1)].to_vec());
        prop_oneof![
            mutated,
            truncated,
            proptest::collection::vec(any::<u8>(), 0..200)
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(vh in any_vh(), frame in any_frame(), plen in 0usize..16) {
            let prefix = vec![0x5a; plen];
            let max = max_output_len(&vh, frame.len(), plen);
            // Bound the buffer: a tiny gso_size on a large frame is legal but huge.
            let mut out = vec![0u8; max.min(1 << 22)];
            if let Ok(s) = segment(&vh, &frame, &prefix, &mut out) {
                prop_assert!(s.len <= max);
                prop_assert!(s.count >= 1);
                prop_assert!(s.len > (s.count - 1) * s.stride && s.len <= s.count * s.stride);
                for i in 0..s.count {
                    let r = s.datagram(i).unwrap();
                    prop_assert_eq!(&out[r.start..r.start + plen], &prefix[..]);
                }
            }
        }

        #[test]
        fn tcp_segments_verify(v6 in any::<bool>(), n in 0usize..20_000, mss in 1u16..3000, opts in 0usize..4, fl in prop_oneof![Just(0x10u8), Just(0x18), Just(0x19), Just(0x11)]) {
            let t = Tcp { v6, flags: fl, options: [vec![], timestamps(1, 2), vec![1, 1, 1, 1], vec![2, 4, 5, 0xb4, 1, 1, 4, 2]][opts].clone(), ..Tcp::default() };
            let data = payload(n, 11);
            let (vh, f) = t.tso(&data, mss);
            let segs = run(&vh, &f, &vxlan()).unwrap();
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let p = oracle_tcp(s).map_err(TestCaseError::fail)?;
                prop_assert!(p.payload.len() <= usize::from(mss));
                prop_assert_eq!(p.seq, t.seq.wrapping_add(joined.len() as u32));
                let last = i + 1 == segs.len();
                prop_assert_eq!(p.flags, if last { fl } else { fl & !0x09 });
                joined.extend_from_slice(&p.payload);
            }
            prop_assert_eq!(joined, data);
        }
    }
}
