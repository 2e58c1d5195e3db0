//! IPv4 (RFC 791), the IPv6 fixed header (RFC 8200), and TCP/UDP headers
//! (RFC 9293 §3.1, RFC 768): the fields the overlay reads to hash flows,
//! segment and coalesce. Options are carried, never interpreted.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum::Checksum;
use super::{be16, be32, need, put_be16, put_be32, WireError};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

mod v4 {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    pub const MIN_LEN: usize = 20;
}

/// A view of an IPv4 packet whose header and total length have been checked.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const MIN_HEADER_LEN: usize = v4::MIN_LEN;

    /// Checks version 4, a header length of at least 20 bytes, and that the buffer
    /// holds `total_len` bytes (it may hold more: Ethernet padding).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(b, v4::MIN_LEN)?;
        if b[v4::VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed {
                field: "ipv4 version",
            });
        }
        let ihl = usize::from(b[v4::VER_IHL] & 0x0f) * 4;
        if ihl < v4::MIN_LEN {
            return Err(WireError::Malformed {
                field: "ipv4 header length",
            });
        }
        let total = usize::from(be16(b, v4::TOTAL_LEN));
        if total < ihl {
            return Err(WireError::Malformed {
                field: "ipv4 total length",
            });
        }
        need(b, total)?;
        Ok(Self { buffer })
    }

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.b()[v4::VER_IHL] & 0x0f) * 4
    }
    pub fn tos(&self) -> u8 {
        self.b()[v4::TOS]
    }
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.b(), v4::TOTAL_LEN))
    }
    pub fn ident(&self) -> u16 {
        be16(self.b(), v4::ID)
    }
    pub fn dont_frag(&self) -> bool {
        self.b()[v4::FLAGS_FRAG] & 0x40 != 0
    }
    pub fn more_frags(&self) -> bool {
        self.b()[v4::FLAGS_FRAG] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.b(), v4::FLAGS_FRAG) & 0x1fff) * 8
    }
    /// A fragment (first or later) of a larger datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.b()[v4::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.b()[v4::PROTO]
    }
    pub fn header_checksum(&self) -> u16 {
        be16(self.b(), v4::CHECKSUM)
    }
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[v4::SRC], b[v4::SRC + 1], b[v4::SRC + 2], b[v4::SRC + 3])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[v4::DST], b[v4::DST + 1], b[v4::DST + 2], b[v4::DST + 3])
    }
    pub fn verify_checksum(&self) -> bool {
        super::checksum::verifies(&self.b()[..self.header_len()])
    }
    /// The L4 payload, up to `total_len` (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
    /// The pseudo-header sum for this packet's L4 payload of `l4_len` bytes.
    pub fn pseudo_header(&self, l4_len: u16) -> Checksum {
        let mut c = Checksum::new();
        c.add_ipv4_pseudo(self.src(), self.dst(), self.protocol(), l4_len);
        c
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_total_len(&mut self, len: u16) {
        put_be16(self.buffer.as_mut(), v4::TOTAL_LEN, len);
    }
    pub fn set_ident(&mut self, id: u16) {
        put_be16(self.buffer.as_mut(), v4::ID, id);
    }
    /// Recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buffer.as_mut();
        put_be16(b, v4::CHECKSUM, 0);
        let c = super::checksum::checksum(&b[..hl]);
        put_be16(b, v4::CHECKSUM, c);
    }
}

mod v6 {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    pub const LEN: usize = 40;
}

/// A view of an IPv6 packet (fixed header; extension headers are not walked).
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const HEADER_LEN: usize = v6::LEN;

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(b, v6::LEN)?;
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed {
                field: "ipv6 version",
            });
        }
        need(b, v6::LEN + usize::from(be16(b, v6::PAYLOAD_LEN)))?;
        Ok(Self { buffer })
    }

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Traffic class and flow label word (first four bytes minus the version).
    pub fn class_flow(&self) -> u32 {
        be32(self.b(), 0) & 0x0fff_ffff
    }
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.b(), v6::PAYLOAD_LEN))
    }
    pub fn next_header(&self) -> u8 {
        self.b()[v6::NEXT_HEADER]
    }
    pub fn hop_limit(&self) -> u8 {
        self.b()[v6::HOP_LIMIT]
    }
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[v6::SRC..v6::SRC + 16]);
        Ipv6Addr::from(a)
    }
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[v6::DST..v6::DST + 16]);
        Ipv6Addr::from(a)
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[v6::LEN..v6::LEN + self.payload_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_payload_len(&mut self, len: u16) {
        put_be16(self.buffer.as_mut(), v6::PAYLOAD_LEN, len);
    }
}

mod tcp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const MIN_LEN: usize = 20;
}

/// TCP flag bits (byte 13).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view of a TCP header (and what follows it).
#[derive(Debug, Clone, Copy)]
pub struct TcpHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpHeader<T> {
    pub const MIN_LEN: usize = tcp::MIN_LEN;
    /// Offset of the checksum field from the start of the TCP header.
    pub const CHECKSUM_OFFSET: usize = tcp::CHECKSUM;

    /// Checks the buffer holds the whole header including options.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(b, tcp::MIN_LEN)?;
        let hl = usize::from(b[tcp::DATA_OFF] >> 4) * 4;
        if hl < tcp::MIN_LEN {
            return Err(WireError::Malformed {
                field: "tcp data offset",
            });
        }
        need(b, hl)?;
        Ok(Self { buffer })
    }

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn src_port(&self) -> u16 {
        be16(self.b(), tcp::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.b(), tcp::DST_PORT)
    }
    pub fn seq(&self) -> u32 {
        be32(self.b(), tcp::SEQ)
    }
    pub fn ack(&self) -> u32 {
        be32(self.b(), tcp::ACK)
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[tcp::DATA_OFF] >> 4) * 4
    }
    pub fn flags(&self) -> u8 {
        self.b()[tcp::FLAGS]
    }
    pub fn window(&self) -> u16 {
        be16(self.b(), tcp::WINDOW)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.b(), tcp::CHECKSUM)
    }
    /// The option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.b()[tcp::MIN_LEN..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpHeader<T> {
    pub fn set_seq(&mut self, v: u32) {
        put_be32(self.buffer.as_mut(), tcp::SEQ, v);
    }
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[tcp::FLAGS] = v;
    }
    pub fn set_checksum(&mut self, v: u16) {
        put_be16(self.buffer.as_mut(), tcp::CHECKSUM, v);
    }
}

mod udp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LEN: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const HEADER_LEN: usize = 8;
}

/// A view of a UDP header.
#[derive(Debug, Clone, Copy)]
pub struct UdpHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpHeader<T> {
    pub const LEN: usize = udp::HEADER_LEN;
    pub const CHECKSUM_OFFSET: usize = udp::CHECKSUM;

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), udp::HEADER_LEN)?;
        Ok(Self { buffer })
    }

    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), udp::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), udp::DST_PORT)
    }
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), udp::LEN)
    }
    pub fn is_empty(&self) -> bool {
        self.len() <= udp::HEADER_LEN as u16
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), udp::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpHeader<T> {
    pub fn set_len(&mut self, v: u16) {
        put_be16(self.buffer.as_mut(), udp::LEN, v);
    }
    pub fn set_checksum(&mut self, v: u16) {
        put_be16(self.buffer.as_mut(), udp::CHECKSUM, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::testdata::INNER_ICMP_REQUEST;

    fn icmp() -> &'static [u8] {
        &INNER_ICMP_REQUEST[14..]
    }

    #[test]
    fn ipv4_fields() {
        let p = Ipv4Packet::new_checked(icmp()).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 36);
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.protocol(), PROTO_ICMP);
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(p.payload().len(), 16);
        // the capture's checksum is recomputed identically
        let mut copy = icmp().to_vec();
        let mut q = Ipv4Packet::new_unchecked(&mut copy[..]);
        q.fill_checksum();
        assert_eq!(copy, icmp());
        assert!(Ipv4Packet::new_checked(&copy[..])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn ipv4_rejects_bad_lengths() {
        let mut b = icmp().to_vec();
        b[0] = 0x44; // ihl 4
        assert!(Ipv4Packet::new_checked(&b[..]).is_err());
        let mut b = icmp().to_vec();
        b[3] = 0x40; // total 64 > buffer
        assert!(Ipv4Packet::new_checked(&b[..]).is_err());
        let mut b = icmp().to_vec();
        b[0] = 0x65;
        assert!(Ipv4Packet::new_checked(&b[..]).is_err());
        assert!(Ipv4Packet::new_checked(&icmp()[..19]).is_err());
    }

    #[test]
    fn cross_checked_with_etherparse() {
        let ours = Ipv4Packet::new_checked(icmp()).unwrap();
        let theirs = etherparse::Ipv4HeaderSlice::from_slice(icmp()).unwrap();
        assert_eq!(ours.src(), theirs.source_addr());
        assert_eq!(ours.dst(), theirs.destination_addr());
        assert_eq!(ours.ident(), theirs.identification());
        assert_eq!(ours.header_checksum(), theirs.header_checksum());
    }

    proptest::proptest! {
        #[test]
        fn views_never_panic(b in proptest::collection::vec(0u8.., 0..80)) {
            if let Ok(p) = Ipv4Packet::new_checked(&b[..]) {
                let _ = (p.payload(), p.src(), p.verify_checksum(), p.frag_offset());
            }
            if let Ok(p) = Ipv6Packet::new_checked(&b[..]) {
                let _ = (p.payload(), p.src(), p.dst(), p.next_header());
            }
            if let Ok(t) = TcpHeader::new_checked(&b[..]) {
                let _ = (t.options(), t.seq(), t.flags());
            }
        }
    }
}
