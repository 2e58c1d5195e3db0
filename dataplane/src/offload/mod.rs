//! TCP/UDP segmentation and receive coalescing done in userspace, so one TAP read or
//! write moves up to 64 KiB instead of one MTU-sized frame.
//!
//! [`tso`] splits a large frame read from a TAP opened with `IFF_VNET_HDR` (the kernel's
//! TSO/USO output, or a frame whose checksum is only partial) into wire-sized inner
//! frames laid out for one UDP_SEGMENT `sendmsg`. [`gro`] does the reverse on receive:
//! consecutive in-order TCP segments of one flow, decapsulated from VXLAN, are merged
//! into one large frame the kernel accepts on a TAP write with a GSO virtio-net header.
//! [`partial`] and [`unsegmented`] recognise what a kernel VXLAN sender leaves for its
//! NIC to finish — a partial inner checksum, an uncut GSO frame — when a virtual NIC
//! passes it on unfinished, so the receiver hands it on as the kernel would.
//!
//! Both are pure cores: no I/O, no clock, no allocation per packet (the coalescer
//! allocates its slot buffers once, in [`gro::Coalescer::new`]), no `unsafe`, and no
//! panic on any input. What they do not do: VLAN tags, IPv6 extension headers, IPv4
//! UFO (`GSO_UDP`), UDP receive coalescing; such frames are refused (transmit) or
//! passed through unchanged (receive).
//!
//! Read first: the virtio spec 1.2 §5.1.6.2 (virtio-net header, checksum and GSO
//! semantics), Linux `net/ipv4/tcp_offload.c` (`tcp_gso_segment`, `tcp_gro_receive`)
//! and `net/core/dev.c` (`skb_checksum_help`), RFC 9293 §3.1 (TCP header and
//! checksum), RFC 1071 (the Internet checksum), RFC 6864 (IPv4 ID of atomic datagrams),
//! and `docs/decisions/0003-offload-in-userspace.md` for why this lives here.
#![forbid(unsafe_code)]

pub mod gro;
pub mod partial;
pub mod tso;
pub mod tunnel;
pub mod udp_burst;
pub mod unsegmented;

pub use gro::{CoalesceStats, Coalescer};
pub use partial::PartialCsum;
pub use tso::{max_output_len, segment, Segments};

use crate::wire::checksum::Checksum;
use crate::wire::WireError;

/// Why a frame could not be segmented (or its checksum completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The frame ends before the headers it announces.
    #[error("frame truncated: it ends inside its own headers")]
    Truncated,
    /// A `gso_type` this module does not segment (`GSO_UDP` UFO or an unknown value).
    #[error("unsupported virtio-net gso_type {0:#04x}")]
    UnsupportedGso(u8),
    /// The headers do not parse or contradict the virtio-net header (named).
    #[error("bad headers: {0}")]
    BadHeaders(&'static str),
    /// `csum_start`/`csum_offset` point outside the frame.
    #[error("checksum offsets out of range: csum_start {start} + csum_offset {offset} in a {frame_len}-byte frame")]
    BadChecksumOffsets {
        start: u16,
        offset: u16,
        frame_len: usize,
    },
    /// The output buffer cannot hold every datagram (nothing was written past `have`).
    #[error("output buffer too small: need {need} bytes, have {have}")]
    OutputTooSmall { need: usize, have: usize },
}

impl From<WireError> for OffloadError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated { .. } => OffloadError::Truncated,
            WireError::Malformed { field } => OffloadError::BadHeaders(field),
        }
    }
}

/// Where the headers of an Ethernet + IPv4/IPv6 + TCP/UDP frame sit. Built only by
/// [`Layout::parse`], so every offset is inside the frame it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// Offset of the L4 header: Ethernet + IP header length.
    pub l4_off: usize,
    /// Length of the L4 header (TCP data offset, or 8 for UDP).
    pub l4_hdr_len: usize,
    /// End of the IP datagram in the frame (bytes after it are Ethernet padding).
    pub end: usize,
}

impl Layout {
    pub const ETH_LEN: usize = crate::wire::EthernetFrame::<&[u8]>::HEADER_LEN;

    /// Parses Ethernet II, then IPv4 (not a fragment) or IPv6 (no extension
    /// headers, not a jumbogram), then a TCP or UDP header that fits in the datagram.
    pub fn parse(frame: &[u8]) -> Result<Layout, OffloadError> {
        use crate::wire::ip::{PROTO_TCP, PROTO_UDP};
        use crate::wire::{EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, TcpHeader};

        let eth = EthernetFrame::new_checked(frame)?;
        let (v6, proto, l4_off, end) = match eth.ethertype() {
            EtherType::IPV4 => {
                let ip = Ipv4Packet::new_checked(eth.payload())?;
                if ip.is_fragment() {
                    return Err(OffloadError::BadHeaders("ipv4 fragment"));
                }
                (
                    false,
                    ip.protocol(),
                    Self::ETH_LEN + ip.header_len(),
                    Self::ETH_LEN + ip.total_len(),
                )
            }
            EtherType::IPV6 => {
                let ip = Ipv6Packet::new_checked(eth.payload())?;
                if ip.payload_len() == 0 {
                    return Err(OffloadError::BadHeaders(
                        "ipv6 without payload (jumbogram?)",
                    ));
                }
                let hl = Ipv6Packet::<&[u8]>::HEADER_LEN;
                (
                    true,
                    ip.next_header(),
                    Self::ETH_LEN + hl,
                    Self::ETH_LEN + hl + ip.payload_len(),
                )
            }
            _ => {
                return Err(OffloadError::BadHeaders(
                    "ethertype is neither ipv4 nor ipv6",
                ))
            }
        };
        // new_checked above guarantees l4_off <= end <= frame.len().
        let l4 = &frame[l4_off..end];
        let l4_hdr_len = match proto {
            PROTO_TCP => TcpHeader::new_checked(l4)?.header_len(),
            PROTO_UDP => {
                crate::wire::UdpHeader::new_checked(l4)?;
                crate::wire::UdpHeader::<&[u8]>::LEN
            }
            _ => {
                return Err(OffloadError::BadHeaders(
                    "l4 protocol is neither tcp nor udp",
                ))
            }
        };
        Ok(Layout {
            v6,
            proto,
            l4_off,
            l4_hdr_len,
            end,
        })
    }

    /// Ethernet + IP + L4 header length: where the L4 payload starts.
    pub fn hdr_len(&self) -> usize {
        self.l4_off + self.l4_hdr_len
    }

    /// The pseudo-header sum without its length field: source and destination
    /// addresses and the protocol. Add the L4 length with [`pseudo_with_len`].
    pub fn pseudo_base(&self, frame: &[u8]) -> Checksum {
        let ip = Self::ETH_LEN;
        let addrs = if self.v6 {
            &frame[ip + 8..ip + 40]
        } else {
            &frame[ip + 12..ip + 20]
        };
        let mut c = Checksum::new();
        c.add_bytes(addrs);
        c.add_u16(u16::from(self.proto));
        c
    }
}

/// What [`for_plain_tap`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainTap {
    /// Handed on as it is.
    Unchanged,
    /// Its checksum was left partial by the sender: finished, in a copy.
    Finished,
    /// A kernel sender's uncut GSO frame: cut into this many MTU-sized segments with
    /// finished checksums.
    Cut(usize),
}

/// For a TAP without virtio-net headers (the kernel refused them, or
/// `--no-offloads`): calls `emit` with the frame(s) to write for `frame`, received
/// from a peer. A TCP frame longer than `tap_mtu` that [`unsegmented::check`] accepts
/// is cut as the kernel would cut it ([`segment`]); a checksum left partial
/// ([`partial`]) is finished; anything else goes as it is. `scratch` holds the copies:
/// with fewer than [`PLAIN_TAP_SCRATCH`] bytes a frame that needs one goes unchanged
/// (the kernel drops it).
pub fn for_plain_tap(
    frame: &[u8],
    tap_mtu: Option<usize>,
    scratch: &mut [u8],
    emit: &mut impl FnMut(&[u8]),
) -> PlainTap {
    let Ok(lay) = Layout::parse(frame) else {
        emit(frame);
        return PlainTap::Unchanged;
    };
    let part = partial::detect_in(frame, &lay);
    if let Some(mtu) = tap_mtu {
        if let unsegmented::Unsegmented::Gso { hdr, .. } =
            unsegmented::check(frame, &lay, part, mtu)
        {
            // `segment` computes every segment's checksum from the data.
            if let Ok(s) = segment(&hdr, frame, &[], scratch) {
                for i in 0..s.count {
                    if let Some(r) = s.datagram(i) {
                        emit(&scratch[r]);
                    }
                }
                return PlainTap::Cut(s.count);
            }
        }
    }
    match part {
        Some(p) if scratch.len() >= p.end => {
            let out = &mut scratch[..p.end];
            out.copy_from_slice(&frame[..p.end]);
            p.complete(out);
            emit(out);
            PlainTap::Finished
        }
        _ => {
            emit(frame);
            PlainTap::Unchanged
        }
    }
}

/// Scratch space [`for_plain_tap`] needs for any frame a VXLAN datagram can carry:
/// 64 KiB of payload cut into segments of at least 256 bytes (an overlay MTU of at
/// least 526 — Backend.MTU ≥ 576 — minus the largest headers), each with up to 134
/// bytes of headers.
pub const PLAIN_TAP_SCRATCH: usize = 65_536 + (65_536 / 256 + 1) * 134;

/// `base` plus an L4 length (as the 32-bit IPv6 field; identical sum for IPv4's 16 bits).
#[inline]
pub(crate) fn pseudo_with_len(base: Checksum, l4_len: usize) -> Checksum {
    let mut c = base;
    let len = l4_len as u32;
    c.add_u16((len >> 16) as u16);
    c.add_u16(len as u16);
    c
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
