//! ECN across the tunnel (RFC 6040: encapsulation §4.1 in normal mode, as Linux's
//! `INET_ECN_encapsulate`; decapsulation §4.2, as `INET_ECN_decapsulate`, which its
//! vxlan driver applies to every packet it sends and receives).
//!
//! A router of the underlay that is short of room may mark an ECN-capable outer packet
//! CE (congestion experienced) instead of dropping it. The mark must reach the inner
//! packet, or the pods' senders never learn of the congestion. Pure: bytes in, a
//! decision out; [`set_in_frame`] writes the decision into a frame.

/// The two ECN bits (RFC 3168 §5).
pub const NOT_ECT: u8 = 0b00;
pub const ECT_1: u8 = 0b01;
pub const ECT_0: u8 = 0b10;
pub const CE: u8 = 0b11;
const MASK: u8 = 0b11;
const ETH_HEADER: usize = 14;

/// What decapsulation does to the inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapsulated {
    /// Deliver it as it is.
    Unchanged,
    /// Deliver it with this ECN field.
    Set(u8),
    /// Drop it: the outer says CE, but the inner packet cannot carry the mark
    /// (RFC 6040's "(drop)"; Linux drops and counts it too).
    Drop,
}

/// The outer ECN field for an `inner` one (RFC 6040 §4.1, normal mode): copied, but a
/// CE is sent as ECT(0), so that the mark is not counted twice.
pub fn encapsulated(inner: u8) -> u8 {
    match inner & MASK {
        CE => ECT_0,
        e => e,
    }
}

/// RFC 6040 §4.2's table for an `outer` and an `inner` ECN field (the low two bits of
/// each are read).
pub fn decapsulate(outer: u8, inner: u8) -> Decapsulated {
    let (outer, inner) = (outer & MASK, inner & MASK);
    match (inner, outer) {
        (NOT_ECT, CE) => Decapsulated::Drop,
        (NOT_ECT, _) | (CE, _) => Decapsulated::Unchanged,
        (_, CE) => Decapsulated::Set(CE),
        (ECT_0, ECT_1) => Decapsulated::Set(ECT_1),
        _ => Decapsulated::Unchanged,
    }
}

/// The ECN field of an Ethernet frame's IPv4 or IPv6 packet; `None` for anything else
/// (ARP, or a header too short to be one), which decapsulation leaves alone, as Linux
/// does.
pub fn of_frame(frame: &[u8]) -> Option<u8> {
    let ip = frame.get(ETH_HEADER..)?;
    match (frame.get(12..14)?, ip) {
        ([0x08, 0x00], [b0, tos, ..]) if ip.len() >= 20 && b0 >> 4 == 4 && b0 & 0x0f >= 5 => {
            Some(tos & MASK)
        }
        ([0x86, 0xdd], [b0, b1, ..]) if ip.len() >= 40 && b0 >> 4 == 6 => Some((b1 >> 4) & MASK),
        _ => None,
    }
}

/// Writes `ecn` into the frame's IPv4 header (mending its checksum, RFC 1624) or IPv6
/// header. Returns false, changing nothing, for a frame [`of_frame`] does not read.
pub fn set_in_frame(frame: &mut [u8], ecn: u8) -> bool {
    let ecn = ecn & MASK;
    match of_frame(frame) {
        None => false,
        Some(_) if frame[12] == 0x08 => {
            // of_frame saw a whole IPv4 header.
            let ip = &mut frame[ETH_HEADER..];
            let old = u16::from_be_bytes([ip[0], ip[1]]);
            ip[1] = (ip[1] & !MASK) | ecn;
            let new = u16::from_be_bytes([ip[0], ip[1]]);
            let check = u16::from_be_bytes([ip[10], ip[11]]);
            // HC' = ~(~HC + ~m + m') in one's-complement arithmetic (RFC 1624 eqn. 3).
            let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            true
        }
        Some(_) => {
            let b1 = &mut frame[ETH_HEADER + 1];
            *b1 = (*b1 & !(MASK << 4)) | (ecn << 4);
            true
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::checksum::Checksum;
    use proptest::prelude::*;

    /// RFC 6040 §4.2, Figure 4, row by row (inner, then outer Not-ECT, ECT(0), ECT(1), CE).
    #[test]
    fn the_rfc_6040_table() {
        use Decapsulated::{Drop, Set, Unchanged};
        let table = [
            (NOT_ECT, [Unchanged, Unchanged, Unchanged, Drop]),
            (ECT_0, [Unchanged, Unchanged, Set(ECT_1), Set(CE)]),
            (ECT_1, [Unchanged, Unchanged, Unchanged, Set(CE)]),
            (CE, [Unchanged, Unchanged, Unchanged, Unchanged]),
        ];
        for (inner, row) in table {
            for (outer, want) in [NOT_ECT, ECT_0, ECT_1, CE].into_iter().zip(row) {
                assert_eq!(
                    decapsulate(outer, inner),
                    want,
                    "inner {inner} outer {outer}"
                );
                // DSCP bits around the field change nothing.
                assert_eq!(decapsulate(outer | 0xb8, inner | 0x48), want);
            }
        }
    }

    fn ipv4_frame(tos: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[1] = tos;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 244, 1, 5]);
        ip[16..20].copy_from_slice(&[10, 244, 2, 9]);
        let mut c = Checksum::new();
        c.add_bytes(ip);
        let sum = c.finish();
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn encapsulation_copies_all_but_ce() {
        assert_eq!(encapsulated(NOT_ECT), NOT_ECT);
        assert_eq!(encapsulated(ECT_0), ECT_0);
        assert_eq!(encapsulated(ECT_1), ECT_1);
        assert_eq!(encapsulated(CE), ECT_0);
        assert_eq!(encapsulated(0xb8 | ECT_1), ECT_1);
        // Round trip: what a decapsulator does with our outer leaves the inner as sent.
        for inner in [NOT_ECT, ECT_0, ECT_1, CE] {
            assert_eq!(
                decapsulate(encapsulated(inner), inner),
                Decapsulated::Unchanged
            );
        }
    }

    #[test]
    fn reads_and_writes_both_families() {
        let mut v4 = ipv4_frame(0xb8 | ECT_0);
        assert_eq!(of_frame(&v4), Some(ECT_0));
        assert!(set_in_frame(&mut v4, CE));
        assert_eq!(of_frame(&v4), Some(CE));
        assert_eq!(v4[15], 0xb8 | CE, "DSCP kept");
        let mut c = Checksum::new();
        c.add_bytes(&v4[14..34]);
        assert_eq!(c.finish(), 0, "header checksum mended");

        let mut v6 = vec![0u8; 14 + 40];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[14] = 0x6b; // traffic class 0xb_
        v6[15] = (ECT_0 << 4) | 0x05; // ECN in bits 4-5, the flow label's below
        assert_eq!(of_frame(&v6), Some(ECT_0));
        assert!(set_in_frame(&mut v6, ECT_1));
        assert_eq!(of_frame(&v6), Some(ECT_1));
        assert_eq!(v6[14], 0x6b);
        assert_eq!(v6[15] & 0x0f, 0x05, "flow label kept");

        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(of_frame(&arp), None);
        assert!(!set_in_frame(&mut arp, CE));
        assert_eq!(of_frame(&[0u8; 10]), None);
        let mut short = ipv4_frame(ECT_0);
        short.truncate(20);
        assert!(!set_in_frame(&mut short, CE));
    }

    proptest! {
        /// Any bytes: no panic, and a frame written is read back with the field asked.
        #[test]
        fn any_frame(mut f in proptest::collection::vec(any::<u8>(), 0..80), e in 0u8..4) {
            let before = of_frame(&f);
            if set_in_frame(&mut f, e) {
                prop_assert!(before.is_some());
                prop_assert_eq!(of_frame(&f), Some(e));
            }
        }
    }
}
