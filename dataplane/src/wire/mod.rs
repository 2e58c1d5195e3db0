//! Wire formats, as typed views over byte buffers.
//!
//! Every packet type follows the same shape (after smoltcp's `wire` module): a view
//! struct over `T: AsRef<[u8]>` with `new_checked` for untrusted input (length and
//! fixed-field checks, never a panic) and `new_unchecked` for buffers we build
//! ourselves; getters on `AsRef<[u8]>`, setters on `AsMut<[u8]>`. Field offsets are
//! named in a private `field` module per file.
//!
//! What lives here: Ethernet II (IEEE 802.3), ARP for IPv4 over Ethernet (RFC 826),
//! IPv4 (RFC 791), IPv6 fixed header (RFC 8200), TCP and UDP headers (RFC 9293,
//! RFC 768), IPv6 Neighbor Solicitation and Advertisement (RFC 4861), the VXLAN
//! header (RFC 7348 §5), the virtio-net header that a TAP with `IFF_VNET_HDR`
//! prepends to each frame (virtio spec 1.2 §5.1.6), and the Internet checksum
//! (RFC 1071). What does not: any I/O, clock or allocation.

pub mod arp;
pub mod checksum;
pub mod ecn;
pub mod ethernet;
pub mod ip;
pub mod ndp;
#[cfg(test)]
pub(crate) mod testdata;
pub mod virtio;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, MacAddr};
pub use ip::{Ipv4Packet, Ipv6Packet, TcpHeader, UdpHeader};
pub use ndp::{NeighborAdvert, NeighborSolicit, NA_FRAME_LEN};
pub use virtio::VirtioNetHdr;
pub use vxlan::{Vni, VxlanHeader};

/// Why a buffer could not be read as the packet type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the fixed header or than a length field says.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// A field holds a value the format does not allow (named).
    #[error("malformed {field}")]
    Malformed { field: &'static str },
}

/// Checks `buf` holds at least `need` bytes.
#[inline]
pub(crate) fn need(buf: &[u8], need: usize) -> Result<(), WireError> {
    if buf.len() < need {
        Err(WireError::Truncated {
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
