//! Helpers shared by the fuzz targets: a forgiving byte reader, frame templates that
//! turn a few fuzz bytes into well-formed Ethernet/IPv4|IPv6/TCP|UDP frames (so the
//! targets reach the deep paths of `segment` and `Coalescer` without a corpus), and
//! oracles built on etherparse, an implementation independent of the code under test.

use vxmesh_dataplane::wire::checksum::Checksum;
use vxmesh_dataplane::wire::VirtioNetHdr;

/// Reads fuzz input front to back; past the end every read yields zeros.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// RFC 1071 §4.1, 16 bits at a time: the folded sum (not complemented).
pub fn ref_fold(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for w in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Header fields of a TCP or UDP frame, drawn from fuzz bytes.
#[derive(Debug, Clone)]
pub struct Template {
    pub v6: bool,
    pub udp: bool,
    pub ip_options: Vec<u8>,
    pub tcp_options: Vec<u8>,
    pub tos: u8,
    pub ttl: u8,
    pub df: bool,
    pub ip_id: u16,
    pub ports: [u8; 4],
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl Template {
    /// Consumes about 20 bytes. Options are a multiple of four bytes (at most 40).
    pub fn read(b: &mut Bytes<'_>) -> Template {
        let shape = b.u8();
        let v6 = shape & 1 != 0;
        let udp = shape & 2 != 0;
        let ip_words = if v6 {
            0
        } else {
            usize::from(shape >> 2 & 0x3) * 2
        };
        let tcp_words = usize::from(shape >> 4 & 0xf).min(10);
        let ip_options = vec![1u8; ip_words * 4]; // NOPs
        let mut tcp_options = b.take(tcp_words * 4).to_vec();
        tcp_options.resize(tcp_words * 4, 1);
        let flags_sel = b.u8();
        let flags = match flags_sel % 8 {
            0..=3 => 0x10,
            4 => 0x18,
            5 => 0x11,
            _ => b.u8(),
        };
        Template {
            v6,
            udp,
            ip_options,
            tcp_options,
            tos: if flags_sel & 0x80 != 0 { b.u8() } else { 0 },
            ttl: 64,
            df: flags_sel & 0x40 == 0,
            ip_id: b.u16(),
            ports: [0x9c, 0x40, 0x14, 0x51],
            seq: b.u32(),
            ack: 0x0102_0304,
            flags,
            window: 502,
        }
    }

    pub fn eth_ip_len(&self) -> usize {
        14 + if self.v6 {
            40
        } else {
            20 + self.ip_options.len()
        }
    }

    pub fn hdr_len(&self) -> usize {
        self.eth_ip_len()
            + if self.udp {
                8
            } else {
                20 + self.tcp_options.len()
            }
    }

    /// The frame with a correct IPv4 header checksum and, in the L4 checksum field,
    /// either the complete checksum or (`partial`) only the pseudo-header sum.
    pub fn frame(&self, payload: &[u8], partial: bool) -> Vec<u8> {
        let l4_hdr = self.hdr_len() - self.eth_ip_len();
        let l4_len = l4_hdr + payload.len();
        let proto = if self.udp { 17 } else { 6 };
        let mut f = Vec::with_capacity(self.hdr_len() + payload.len());
        f.extend_from_slice(&[
            0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44,
        ]);
        let mut pseudo = Checksum::new();
        if self.v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(
                &((6u32 << 28) | (u32::from(self.tos) << 20) | 0x1234).to_be_bytes(),
            );
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, self.ttl]);
            f.extend_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            f.extend_from_slice(&[0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
            pseudo.add_bytes(&f[22..54]);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = (20 + self.ip_options.len()) / 4;
            f.extend_from_slice(&[0x40 | ihl as u8, self.tos]);
            f.extend_from_slice(&((ihl * 4 + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&self.ip_id.to_be_bytes());
            f.extend_from_slice(&[if self.df { 0x40 } else { 0 }, 0, self.ttl, proto, 0, 0]);
            f.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
            f.extend_from_slice(&self.ip_options);
            let c = vxmesh_dataplane::wire::checksum::checksum(&f[14..]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            pseudo.add_bytes(&f[26..34]);
        }
        pseudo.add_u16(u16::from(proto));
        pseudo.add_u16((l4_len >> 16) as u16);
        pseudo.add_u16(l4_len as u16);
        let l4 = f.len();
        f.extend_from_slice(&self.ports);
        let at = if self.udp {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            l4 + 6
        } else {
            f.extend_from_slice(&self.seq.to_be_bytes());
            f.extend_from_slice(&self.ack.to_be_bytes());
            f.push((l4_hdr / 4) as u8 * 16);
            f.push(self.flags);
            f.extend_from_slice(&self.window.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]);
            f.extend_from_slice(&self.tcp_options);
            l4 + 16
        };
        f.extend_from_slice(payload);
        let c = if partial {
            pseudo.fold()
        } else {
            let mut c = pseudo;
            c.add_bytes(&f[l4..]);
            match c.finish() {
                0 if self.udp => 0xffff,
                c => c,
            }
        };
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// Where the L4 header and payload of a frame are, by etherparse, checksums ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slices {
    pub v6: bool,
    pub tcp: bool,
    pub l4_off: usize,
    pub hdr_len: usize,
    pub end: usize,
}

/// Locates the headers of an Ethernet + IPv4/IPv6 + TCP/UDP frame (no checksum check).
pub fn slices(frame: &[u8]) -> Option<Slices> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (v6, l4_off, end) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (false, 14 + h.slice().len(), 14 + usize::from(h.total_len()))
        }
        Some(NetSlice::Ipv6(ip)) => {
            if !ip.extensions().is_empty() {
                return None;
            }
            (true, 54, 54 + usize::from(ip.header().payload_length()))
        }
        _ => return None,
    };
    let (tcp, l4_hdr) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (true, t.header_slice().len()),
        Some(TransportSlice::Udp(_)) => (false, 8),
        _ => return None,
    };
    Some(Slices {
        v6,
        tcp,
        l4_off,
        hdr_len: l4_off + l4_hdr,
        end,
    })
}

/// What the oracle read from a frame whose checksums all verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub s: Slices,
    pub ip_id: u16,
    pub seq: u32,
    pub flags: u8,
    pub ports: [u8; 4],
    pub payload: Vec<u8>,
}

/// Parses with etherparse and returns `None` unless the IPv4 header checksum and the
/// TCP or UDP checksum verify (a UDP checksum of zero counts as not verifying; a TCP
/// checksum of 0xffff where etherparse computes 0 verifies).
pub fn checked(frame: &[u8]) -> Option<Checked> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let s = slices(frame)?;
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, ip_id): (Vec<u8>, Vec<u8>, u16) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if ref_fold(h.slice()) != 0xffff {
                return None;
            }
            (
                h.source().to_vec(),
                h.destination().to_vec(),
                h.identification(),
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (h.source().to_vec(), h.destination().to_vec(), 0)
        }
        _ => return None,
    };
    let (ok, seq, flags, payload) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = if s.v6 {
                t.calc_checksum_ipv6(src.clone().try_into().ok()?, dst.clone().try_into().ok()?)
            } else {
                t.calc_checksum_ipv4(src.clone().try_into().ok()?, dst.clone().try_into().ok()?)
            };
            // A checksum that comes to zero may be written 0x0000 (etherparse) or
            // 0xffff (the kernel's skb_checksum_help, CSUM_MANGLED_0, and
            // `PartialCsum::complete`): the same value in ones' complement, and a
            // receiver's sum over the segment verifies either.
            let want = want.ok()?;
            let got = t.checksum();
            (
                want == got || (want == 0 && got == 0xffff),
                t.sequence_number(),
                t.header_slice()[13],
                t.payload().to_vec(),
            )
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            let want = if s.v6 {
                h.calc_checksum_ipv6_raw(
                    src.clone().try_into().ok()?,
                    dst.clone().try_into().ok()?,
                    u.payload(),
                )
            } else {
                h.calc_checksum_ipv4_raw(
                    src.clone().try_into().ok()?,
                    dst.clone().try_into().ok()?,
                    u.payload(),
                )
            };
            (
                want.ok()? == u.checksum() && u.checksum() != 0,
                0,
                0,
                u.payload().to_vec(),
            )
        }
        _ => return None,
    };
    if !ok {
        return None;
    }
    let mut ports = [0u8; 4];
    ports.copy_from_slice(&frame[s.l4_off..s.l4_off + 4]);
    Some(Checked {
        s,
        ip_id,
        seq,
        flags,
        ports,
        payload,
    })
}

/// Completes a CHECKSUM_PARTIAL frame as the kernel would (sum from `csum_start` to
/// the end, complement stored at `csum_start + csum_offset`). False if out of range.
pub fn complete_checksum(vh: &VirtioNetHdr, frame: &mut [u8]) -> bool {
    let start = usize::from(vh.csum_start);
    let at = start + usize::from(vh.csum_offset);
    if at + 2 > frame.len() {
        return false;
    }
    let mut c = Checksum::new();
    c.add_bytes(&frame[start..]);
    let v = c.finish();
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
    true
}
