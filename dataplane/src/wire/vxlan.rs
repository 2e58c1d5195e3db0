//! The VXLAN header (RFC 7348 §5).
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! Eight bytes after the outer UDP header, then the inner Ethernet frame. The I flag
//! (0x08) must be set for the VNI to be valid. Reserved bits are written as zero and,
//! as §5 says, ignored on receipt (so a peer using the Group Based Policy extension is
//! still understood; its policy bits are not enforced).

use std::fmt;

use super::{be32, need, put_be32, WireError};

/// A 24-bit VXLAN Network Identifier. Always in range once constructed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    pub const MAX: u32 = 0x00ff_ffff;

    /// Checks the value fits in 24 bits.
    pub fn new(v: u32) -> Option<Vni> {
        (v <= Self::MAX).then_some(Vni(v))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vni({})", self.0)
    }
}

/// The I flag: "VNI is valid".
pub const FLAG_VNI: u8 = 0x08;

/// A decoded VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanHeader {
    pub vni: Vni,
}

impl VxlanHeader {
    pub const LEN: usize = 8;

    /// Reads the header at the start of a UDP payload. The inner frame starts at
    /// [`VxlanHeader::LEN`].
    pub fn parse(buf: &[u8]) -> Result<VxlanHeader, WireError> {
        need(buf, Self::LEN)?;
        if buf[0] & FLAG_VNI == 0 {
            return Err(WireError::Malformed {
                field: "vxlan I flag",
            });
        }
        let vni = be32(buf, 4) >> 8;
        Ok(VxlanHeader { vni: Vni(vni) })
    }

    /// The eight header bytes to send.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        self.emit(&mut b);
        b
    }

    /// Writes the header into the first eight bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than eight bytes (a caller bug, never input-driven).
    pub fn emit(self, out: &mut [u8]) {
        out[..Self::LEN].fill(0);
        out[0] = FLAG_VNI;
        put_be32(out, 4, self.vni.0 << 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::testdata::{OUTER_ICMP_REQUEST, OUTER_UDP_PAYLOAD};

    // The VXLAN header of a packet the Linux vxlan driver sent for VNI 1.
    const KERNEL_VNI1: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00];

    #[test]
    fn capture_holds_that_header() {
        assert_eq!(
            OUTER_ICMP_REQUEST[OUTER_UDP_PAYLOAD..OUTER_UDP_PAYLOAD + 8],
            KERNEL_VNI1
        );
    }

    #[test]
    fn parses_kernel_header() {
        let h = VxlanHeader::parse(&KERNEL_VNI1).unwrap();
        assert_eq!(h.vni.get(), 1);
        assert_eq!(h.to_bytes(), KERNEL_VNI1);
    }

    #[test]
    fn rejects_missing_i_flag_and_short() {
        let mut b = KERNEL_VNI1;
        b[0] = 0;
        assert!(matches!(
            VxlanHeader::parse(&b),
            Err(WireError::Malformed { .. })
        ));
        for n in 0..8 {
            assert!(VxlanHeader::parse(&KERNEL_VNI1[..n]).is_err());
        }
    }

    #[test]
    fn ignores_reserved_bits_on_receipt() {
        // GBP extension: G flag 0x80 and a group policy id in bytes 2..4.
        let b = [0x88, 0x00, 0x12, 0x34, 0x00, 0x00, 0x2a, 0xff];
        assert_eq!(VxlanHeader::parse(&b).unwrap().vni.get(), 42);
    }

    #[test]
    fn vni_is_24_bits() {
        assert!(Vni::new(0xff_ffff).is_some());
        assert!(Vni::new(0x100_0000).is_none());
    }

    proptest::proptest! {
        #[test]
        fn round_trip(v in 0u32..=Vni::MAX) {
            let h = VxlanHeader { vni: Vni::new(v).unwrap() };
            proptest::prop_assert_eq!(VxlanHeader::parse(&h.to_bytes()).unwrap(), h);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(0u8.., 0..16)) {
            let _ = VxlanHeader::parse(&b);
        }
    }
}
