//! The virtio-net header a TAP opened with `IFF_VNET_HDR` puts before every frame
//! (virtio spec 1.2 §5.1.6; Linux `include/uapi/linux/virtio_net.h`).
//!
//! ```text
//! u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size; u16 csum_start; u16 csum_offset;
//! ```
//! Ten bytes in the legacy layout that `/dev/net/tun` uses by default. Multi-byte fields
//! are in the host's byte order for a legacy device (the TAP is never switched to
//! big-endian mode). Offsets (`csum_start`) count from the start of the Ethernet header.

use super::{need, WireError};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum must be completed by the reader:
/// sum from `csum_start` to the end and store at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Bit or-ed into `gso_type`: the TCP stream uses ECN (CWR on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    pub const LEN: usize = 10;

    /// A header for a complete frame that needs no help from the reader.
    pub const NONE: VirtioNetHdr = VirtioNetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    pub fn parse(buf: &[u8]) -> Result<VirtioNetHdr, WireError> {
        need(buf, Self::LEN)?;
        let u = |at: usize| u16::from_ne_bytes([buf[at], buf[at + 1]]);
        Ok(VirtioNetHdr {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_known_tso_header() {
        // What a TAP reader sees for a 64 KB TCPv4 TSO frame with timestamps
        // (x86_64, little endian): NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1398,
        // csum_start 34, csum_offset 16.
        let raw = [0x01, 0x01, 66, 0, 0x76, 0x05, 34, 0, 16, 0];
        let h = VirtioNetHdr::parse(&raw).unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(h.gso_size, 1398);
            assert_eq!(h.hdr_len, 66);
            assert_eq!(h.csum_start, 34);
        }
        assert!(h.needs_csum());
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert_eq!(h.to_bytes(), raw);
    }

    #[test]
    fn short_is_error() {
        assert!(VirtioNetHdr::parse(&[0u8; 9]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn round_trip(b in proptest::array::uniform10(0u8..)) {
            proptest::prop_assert_eq!(VirtioNetHdr::parse(&b).unwrap().to_bytes(), b);
        }
    }
}
