//! Test-only frame builders and an etherparse-based oracle for the offload tests.
//!
//! The builders write bytes by hand from the RFC layouts (RFC 791, RFC 8200, RFC 9293,
//! RFC 768) and compute checksums with a byte-at-a-time RFC 1071 sum, so neither the
//! crate's `Checksum` nor its wire views are trusted to test themselves. The oracle
//! parses with etherparse, an independent implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::wire::virtio::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::wire::VirtioNetHdr;

pub(crate) const MAC_DST: [u8; 6] = [0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44];
pub(crate) const MAC_SRC: [u8; 6] = [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44];

/// RFC 1071 §4.1, one 16-bit word at a time; returns the folded sum (not complemented).
pub(crate) fn ref_sum(parts: &[&[u8]]) -> u16 {
    let data: Vec<u8> = parts.concat();
    let mut sum: u64 = 0;
    for w in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One TCP segment's header fields, IPv4 or IPv6.
#[derive(Debug, Clone)]
pub(crate) struct Tcp {
    pub v6: bool,
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub tos: u8,
    pub ttl: u8,
    pub ip_id: u16,
    pub df: bool,
    pub flow_label: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw option bytes, a multiple of four long.
    pub options: Vec<u8>,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            v6: false,
            src4: [10, 244, 1, 2],
            dst4: [10, 244, 2, 3],
            src6: [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            dst6: [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            tos: 0,
            ttl: 64,
            ip_id: 0x1c46,
            df: true,
            flow_label: 0x5_a1b2,
            src_port: 40_000,
            dst_port: 5201,
            seq: 0x8a4e_1f00,
            ack: 0x0102_0304,
            flags: 0x10,
            window: 502,
            options: timestamps(0x0011_2233, 0x4455_6677),
        }
    }
}

/// NOP, NOP, Timestamp (kind 8, length 10): the 12 option bytes Linux puts on every
/// segment of an established connection.
pub(crate) fn timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

fn eth(v6: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(70_000);
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    f.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    f
}

/// Appends an IPv4 or IPv6 header for an L4 part of `l4_len` bytes.
fn ip_header(f: &mut Vec<u8>, t: &Tcp, proto: u8, l4_len: usize) {
    if t.v6 {
        let w = (6u32 << 28) | (u32::from(t.tos) << 20) | (t.flow_label & 0xf_ffff);
        f.extend_from_slice(&w.to_be_bytes());
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.push(proto);
        f.push(t.ttl);
        f.extend_from_slice(&t.src6);
        f.extend_from_slice(&t.dst6);
    } else {
        let start = f.len();
        f.extend_from_slice(&[0x45, t.tos]);
        f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&t.ip_id.to_be_bytes());
        f.extend_from_slice(&[if t.df { 0x40 } else { 0 }, 0, t.ttl, proto, 0, 0]);
        f.extend_from_slice(&t.src4);
        f.extend_from_slice(&t.dst4);
        let c = !ref_sum(&[&f[start..]]);
        f[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
    }
}

fn pseudo(t: &Tcp, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if t.v6 {
        p.extend_from_slice(&t.src6);
        p.extend_from_slice(&t.dst6);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&t.src4);
        p.extend_from_slice(&t.dst4);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

impl Tcp {
    pub fn eth_ip_len(&self) -> usize {
        14 + if self.v6 { 40 } else { 20 }
    }

    pub fn hdr_len(&self) -> usize {
        self.eth_ip_len() + 20 + self.options.len()
    }

    /// A complete frame with a valid TCP checksum (and IPv4 header checksum).
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = self.partial_frame(payload);
        let l4 = self.eth_ip_len();
        f[l4 + 16..l4 + 18].fill(0);
        let c = !ref_sum(&[&pseudo(self, 6, f.len() - l4), &f[l4..]]);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The frame with the TCP checksum field holding only the pseudo-header sum
    /// (what the kernel leaves for `CHECKSUM_PARTIAL`).
    pub fn partial_frame(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let l4_len = 20 + self.options.len() + payload.len();
        let mut f = eth(self.v6);
        ip_header(&mut f, self, 6, l4_len);
        let l4 = f.len();
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push(((20 + self.options.len()) / 4) as u8 * 16);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&self.options);
        f.extend_from_slice(payload);
        let partial = ref_sum(&[&pseudo(self, 6, l4_len)]);
        f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
        f
    }

    /// What a TAP reader gets from a kernel doing TSO: the whole payload in one frame,
    /// the pseudo-header sum in the TCP checksum field, and a virtio-net header with
    /// NEEDS_CSUM, the GSO type and `gso_size` = `mss`.
    pub fn tso(&self, payload: &[u8], mss: u16) -> (VirtioNetHdr, Vec<u8>) {
        let f = self.partial_frame(payload);
        let vh = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: self.hdr_len() as u16,
            gso_size: mss,
            csum_start: self.eth_ip_len() as u16,
            csum_offset: 16,
        };
        (vh, f)
    }

    /// A UDP datagram between the same addresses; `partial` leaves the pseudo-header
    /// sum in the checksum field (NEEDS_CSUM), otherwise the checksum is complete.
    pub fn udp(&self, payload: &[u8], partial: bool) -> Vec<u8> {
        let l4_len = 8 + payload.len();
        let mut f = eth(self.v6);
        ip_header(&mut f, self, 17, l4_len);
        let l4 = f.len();
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        let c = if partial {
            ref_sum(&[&pseudo(self, 17, l4_len)])
        } else {
            match !ref_sum(&[&pseudo(self, 17, l4_len), &f[l4..]]) {
                0 => 0xffff,
                c => c,
            }
        };
        f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// A USO frame: one UDP datagram to be split into `mss`-byte payloads.
    pub fn uso(&self, payload: &[u8], mss: u16) -> (VirtioNetHdr, Vec<u8>) {
        let f = self.udp(payload, true);
        let vh = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: (self.eth_ip_len() + 8) as u16,
            gso_size: mss,
            csum_start: self.eth_ip_len() as u16,
            csum_offset: 6,
        };
        (vh, f)
    }
}

/// What the oracle read from a TCP frame.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub v6: bool,
    pub ip_id: u16,
    pub seq: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// Ethernet + IP + TCP header bytes.
    pub hdr_len: usize,
}

/// Parses a frame with etherparse; errors unless it is Ethernet + IPv4/IPv6 + TCP with
/// a correct IPv4 header checksum and a correct TCP checksum.
pub(crate) fn oracle_tcp(frame: &[u8]) -> Result<Parsed, String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| format!("etherparse: {e:?}"))?;
    let (v6, ip_id, ip_hdr_len, tcp) = match (p.net, p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) => {
            let h = ip.header();
            if h.to_header().calc_header_checksum() != h.header_checksum() {
                return Err("ipv4 header checksum".into());
            }
            let c = tcp
                .calc_checksum_ipv4(h.source(), h.destination())
                .map_err(|e| format!("{e:?}"))?;
            if c != tcp.checksum() {
                return Err(format!("tcp checksum {:#06x} != {c:#06x}", tcp.checksum()));
            }
            (false, h.identification(), h.slice().len(), tcp)
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(tcp))) => {
            let h = ip.header();
            let c = tcp
                .calc_checksum_ipv6(h.source(), h.destination())
                .map_err(|e| format!("{e:?}"))?;
            if c != tcp.checksum() {
                return Err(format!("tcp checksum {:#06x} != {c:#06x}", tcp.checksum()));
            }
            (true, 0, 40, tcp)
        }
        other => return Err(format!("not tcp over ip: {:?}", other.1.is_some())),
    };
    Ok(Parsed {
        v6,
        ip_id,
        seq: tcp.sequence_number(),
        flags: tcp.header_slice()[13],
        payload: tcp.payload().to_vec(),
        hdr_len: 14 + ip_hdr_len + tcp.header_slice().len(),
    })
}

/// Completes a CHECKSUM_PARTIAL frame the way the kernel (or a NIC) would: sum from
/// `csum_start` to the end and store the complement at `csum_start + csum_offset`.
pub(crate) fn complete_checksum(vh: &VirtioNetHdr, frame: &mut [u8]) {
    let start = usize::from(vh.csum_start);
    let at = start + usize::from(vh.csum_offset);
    let c = !ref_sum(&[&frame[start..]]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// A deterministic payload: byte i is a hash of i and `salt`.
pub(crate) fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(salt) % 32) as u8
                ^ salt
        })
        .collect()
}

/// What a coalescer emitted, in order.
pub(crate) type Out = Vec<(VirtioNetHdr, Vec<u8>)>;

/// Undoes coalescing: GSO outputs are split again by `tso::segment`, others kept.
pub(crate) fn expand(out: &Out) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for (h, f) in out {
        if h.gso_type == crate::wire::virtio::GSO_NONE {
            frames.push(f.clone());
            continue;
        }
        let mut buf = vec![0u8; super::max_output_len(h, f.len(), 0)];
        let s = super::segment(h, f, &[], &mut buf).unwrap();
        for i in 0..s.count {
            frames.push(buf[s.datagram(i).unwrap()].to_vec());
        }
    }
    frames
}
