//! The Internet checksum (RFC 1071), computed fast.
//!
//! The one's-complement sum is independent of byte order (RFC 1071 §2(B)), so the
//! bytes are summed as native-endian 64-bit words into wide accumulators, folded into a
//! 64-bit one with end-around carry, and converted to network order once, at the end.
//! Callers that feed a buffer in pieces must give every piece but the last an even
//! length.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A running one's-complement sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    acc: u64,
}

#[inline]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    s + u64::from(c)
}

impl Checksum {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a run of bytes. See the module note on odd lengths.
    #[inline]
    pub fn add_bytes(&mut self, data: &[u8]) {
        let mut chunks = data.chunks_exact(32);
        // Four independent 128-bit sums, one per word of a 32-byte chunk: each add
        // waits only on its own carry chain, so the four run side by side. One chain
        // with an end-around carry per step was 16 % slower over 64 KiB and 9 % slower
        // for a whole TSO segmentation (`cargo bench --bench offload`, docs/benchmarks.md).
        // None can overflow: that would take 2^64 words.
        let (mut s0, mut s1, mut s2, mut s3) = (0u128, 0u128, 0u128, 0u128);
        for c in &mut chunks {
            let w = |i: usize| {
                u128::from(u64::from_ne_bytes([
                    c[i],
                    c[i + 1],
                    c[i + 2],
                    c[i + 3],
                    c[i + 4],
                    c[i + 5],
                    c[i + 6],
                    c[i + 7],
                ]))
            };
            s0 += w(0);
            s1 += w(8);
            s2 += w(16);
            s3 += w(24);
        }
        let sum = s0 + s1 + s2 + s3;
        let mut acc = add_carry(self.acc, sum as u64);
        acc = add_carry(acc, (sum >> 64) as u64);
        let mut rest = chunks.remainder();
        while rest.len() >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&rest[..8]);
            acc = add_carry(acc, u64::from_ne_bytes(w));
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            acc = add_carry(
                acc,
                u64::from(u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]])),
            );
            rest = &rest[4..];
        }
        if rest.len() >= 2 {
            acc = add_carry(acc, u64::from(u16::from_ne_bytes([rest[0], rest[1]])));
            rest = &rest[2..];
        }
        if let Some(&last) = rest.first() {
            acc = add_carry(acc, u64::from(u16::from_ne_bytes([last, 0])));
        }
        self.acc = acc;
    }

    /// Adds a 16-bit value given in host order, as if its network-order bytes were summed.
    #[inline]
    pub fn add_u16(&mut self, v: u16) {
        self.acc = add_carry(self.acc, u64::from(u16::from_ne_bytes(v.to_be_bytes())));
    }

    /// Adds the IPv4 pseudo-header (RFC 9293 §3.1, RFC 768) for an L4 length.
    pub fn add_ipv4_pseudo(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: u16) {
        self.add_bytes(&src.octets());
        self.add_bytes(&dst.octets());
        self.add_u16(u16::from(proto));
        self.add_u16(l4_len);
    }

    /// Adds the IPv6 pseudo-header (RFC 8200 §8.1).
    pub fn add_ipv6_pseudo(&mut self, src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4_len: u32) {
        self.add_bytes(&src.octets());
        self.add_bytes(&dst.octets());
        self.add_u16((l4_len >> 16) as u16);
        self.add_u16(l4_len as u16);
        self.add_u16(u16::from(proto));
    }

    /// The folded sum in host order, not complemented (what a partial checksum
    /// field holds for `NEEDS_CSUM`/`CHECKSUM_PARTIAL`).
    #[inline]
    pub fn fold(self) -> u16 {
        let mut a = self.acc;
        a = (a & 0xffff_ffff) + (a >> 32);
        a = (a & 0xffff_ffff) + (a >> 32);
        a = (a & 0xffff) + (a >> 16);
        a = (a & 0xffff) + (a >> 16);
        a = (a & 0xffff) + (a >> 16);
        u16::from_be_bytes((a as u16).to_ne_bytes())
    }

    /// The checksum to store in a header field: the complement of the sum.
    #[inline]
    pub fn finish(self) -> u16 {
        !self.fold()
    }
}

/// The checksum of one buffer.
pub fn checksum(data: &[u8]) -> u16 {
    let mut c = Checksum::new();
    c.add_bytes(data);
    c.finish()
}

/// True when a buffer that includes its own checksum field sums to all ones.
pub fn verifies(data: &[u8]) -> bool {
    let mut c = Checksum::new();
    c.add_bytes(data);
    c.fold() == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-at-a-time reference from RFC 1071 §4.1.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            sum += u32::from(data[i]) << 8;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 worked example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(!checksum(&d), 0xddf2);
    }

    #[test]
    fn ipv4_header_from_capture() {
        // The captured ICMP request: its IPv4 header and ICMP message verify, and
        // recomputing the header checksum gives the kernel's 0xf47a.
        let ip = &crate::wire::testdata::INNER_ICMP_REQUEST[14..];
        assert!(verifies(&ip[..20]));
        assert!(verifies(&ip[20..]));
        let mut h = [0u8; 20];
        h.copy_from_slice(&ip[..20]);
        h[10..12].fill(0);
        assert_eq!(checksum(&h), 0xf47a);
        assert_eq!(checksum(&h), reference(&h));
    }

    #[test]
    fn carries_of_a_full_datagram() {
        // All-ones and near-all-ones words carry into the high half of all four sums
        // and the fold, over a buffer as long as the largest GSO frame; odd lengths end
        // in a half word.
        for fill in [0xffu8, 0xfe, 0x80] {
            for len in [65_535usize, 65_534, 1_409, 33] {
                let d = vec![fill; len];
                assert_eq!(checksum(&d), reference(&d), "fill {fill:#x} len {len}");
            }
        }
        let ramp: Vec<u8> = (0..65_535u32).map(|i| (i * 131 % 256) as u8).collect();
        assert_eq!(checksum(&ramp), reference(&ramp));
    }

    proptest::proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(0u8.., 0..300)) {
            proptest::prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn pieces_equal_whole(data in proptest::collection::vec(0u8.., 0..300), cut in 0usize..150) {
            let cut = (cut * 2).min(data.len() & !1);
            let mut c = Checksum::new();
            c.add_bytes(&data[..cut]);
            c.add_bytes(&data[cut..]);
            proptest::prop_assert_eq!(c.finish(), checksum(&data));
        }

        #[test]
        fn u16_equals_bytes(v in 0u16..) {
            let mut a = Checksum::new();
            a.add_u16(v);
            let mut b = Checksum::new();
            b.add_bytes(&v.to_be_bytes());
            proptest::prop_assert_eq!(a.fold(), b.fold());
        }
    }
}
