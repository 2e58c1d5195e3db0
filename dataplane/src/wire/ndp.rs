//! IPv6 Neighbor Discovery (RFC 4861): the Neighbor Solicitation the kernel sends on
//! the TAP to resolve a peer's IPv6 VTEP address, and the Neighbor Advertisement that
//! answers it. IPv6's ARP, as [`super::arp`] is IPv4's.
//!
//! Read first: RFC 4861 §4.3 (NS), §4.4 (NA), §4.6.1 (link-layer address options),
//! §7.1 (what a receiver must check), §7.2.4 (how a solicitation is answered);
//! RFC 2464 §7 (IPv6 multicast over Ethernet).
//!
//! [`NeighborSolicit::parse`] takes a whole Ethernet frame and checks what §7.1.1
//! asks: ICMPv6 straight after the IPv6 header (the kernel sends no extension headers
//! in front of ND), hop limit 255 (so the message cannot come from off the link),
//! code 0, at least 24 bytes, a valid checksum, a target that is not multicast,
//! options of non-zero length, and for a solicitation from the unspecified address
//! (duplicate address detection) a solicited-node multicast destination and no
//! source link-layer address option. [`NeighborAdvert::emit`] writes the answer as
//! one fixed-size frame. Pure codec: no I/O, no allocation; malformed input is a
//! [`WireError`], never a panic. Not here: Router Solicitations/Advertisements,
//! Redirects, neighbour cache state.

use std::net::Ipv6Addr;

use super::checksum::Checksum;
use super::{need, put_be16, EtherType, EthernetFrame, Ipv6Packet, MacAddr, WireError};

/// IPv6 next header: ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbor Solicitation.
pub const NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const NEIGHBOR_ADVERT: u8 = 136;
/// The hop limit every ND message carries (§7.1: anything else came through a router).
pub const HOP_LIMIT: u8 = 255;
/// The all-nodes group (RFC 4291 §2.7.1), where an answer to duplicate address
/// detection goes.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// [`ALL_NODES`] on Ethernet (RFC 2464 §7: 33:33 and the group's last four bytes).
pub const ALL_NODES_MAC: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);

/// Length of a Neighbor Advertisement frame as [`NeighborAdvert::emit`] writes it:
/// Ethernet, the IPv6 header, the 24-byte NA and one target link-layer address option.
pub const NA_FRAME_LEN: usize = ETH_LEN + IP_LEN + NA_LEN;

const ETH_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
const IP_LEN: usize = Ipv6Packet::<&[u8]>::HEADER_LEN;
/// The NA as we write it: the fixed 24 bytes and one 8-byte option.
const NA_LEN: usize = field::OPTIONS + OPTION_LLADDR_LEN;
/// A link-layer address option for Ethernet: type, length 1 (in 8 bytes), MAC.
const OPTION_LLADDR_LEN: usize = 8;

/// Offsets in the ICMPv6 message (§4.3, §4.4).
mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// NA only: R, S, O in the top bits; the rest of the 32 bits reserved.
    pub const FLAGS: usize = 4;
    pub const TARGET: Range<usize> = 8..24;
    pub const OPTIONS: usize = 24;
}

/// Offsets in the IPv6 header, for the advertisement we write.
mod ip {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// ND option types (§4.6).
const OPTION_SOURCE_LLADDR: u8 = 1;
const OPTION_TARGET_LLADDR: u8 = 2;

/// Neighbor Advertisement flags (§4.4), in the byte at [`field::FLAGS`].
pub mod flags {
    /// The sender is a router.
    pub const ROUTER: u8 = 0x80;
    /// Sent in response to a solicitation.
    pub const SOLICITED: u8 = 0x40;
    /// Override an existing cache entry.
    pub const OVERRIDE: u8 = 0x20;
}

/// Whether `ip` (an Ethernet payload) looks like a Neighbor Solicitation: IPv6,
/// ICMPv6 straight after the header, type 135. A cheap first look for the hot path,
/// no check: [`NeighborSolicit::parse`] decides.
#[inline]
pub fn looks_like_solicit(ip: &[u8]) -> bool {
    ip.len() > IP_LEN
        && ip[0] >> 4 == 6
        && ip[ip::NEXT_HEADER] == PROTO_ICMPV6
        && ip[IP_LEN + field::TYPE] == NEIGHBOR_SOLICIT
}

/// A Neighbor Solicitation that passed the checks of §7.1.1 (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicit {
    /// The Ethernet source.
    pub eth_src: MacAddr,
    /// The IPv6 source: the solicitor's address, or unspecified (`::`) during
    /// duplicate address detection.
    pub src: Ipv6Addr,
    /// The IPv6 destination: the target's solicited-node group, or the target
    /// itself (a unicast solicitation: neighbour unreachability detection).
    pub dst: Ipv6Addr,
    /// The address being resolved.
    pub target: Ipv6Addr,
    /// The source link-layer address option: the solicitor's MAC.
    pub source_lladdr: Option<MacAddr>,
}

impl NeighborSolicit {
    /// Reads a Neighbor Solicitation from a whole Ethernet frame (see the module
    /// documentation for what is checked).
    pub fn parse(frame: &[u8]) -> Result<NeighborSolicit, WireError> {
        let m = Message::parse(frame, NEIGHBOR_SOLICIT)?;
        let source_lladdr = m.lladdr(OPTION_SOURCE_LLADDR)?;
        if m.src.is_unspecified() {
            // §7.1.1: duplicate address detection goes to a solicited-node group
            // and carries no link-layer address (there is no address to answer).
            if !is_solicited_node(m.dst) {
                return Err(WireError::Malformed {
                    field: "ns destination of duplicate address detection",
                });
            }
            if source_lladdr.is_some() {
                return Err(WireError::Malformed {
                    field: "ns source link-layer option from the unspecified address",
                });
            }
        }
        Ok(NeighborSolicit {
            eth_src: m.eth_src,
            src: m.src,
            dst: m.dst,
            target: m.target,
            source_lladdr,
        })
    }

    /// Duplicate address detection: the solicitor has no address yet.
    pub fn is_dad(&self) -> bool {
        self.src.is_unspecified()
    }

    /// Where a unicast answer goes on the link: the source link-layer address
    /// option's MAC, else the frame's source.
    pub fn reply_mac(&self) -> MacAddr {
        self.source_lladdr.unwrap_or(self.eth_src)
    }

    /// The advertisement answering this solicitation on behalf of the node that
    /// holds `target` at `target_mac` (§7.2.4): from the target address, to the
    /// solicitor (or, for duplicate address detection, to all nodes, with S clear),
    /// R set (the node answered for routes its pods' traffic), O set (the answer is
    /// authoritative), and the target link-layer address option.
    pub fn answer(&self, target_mac: MacAddr) -> NeighborAdvert {
        let (eth_dst, dst, solicited) = if self.is_dad() {
            (ALL_NODES_MAC, ALL_NODES, 0)
        } else {
            (self.reply_mac(), self.src, flags::SOLICITED)
        };
        NeighborAdvert {
            eth_dst,
            target_lladdr: target_mac,
            src: self.target,
            dst,
            flags: flags::ROUTER | flags::OVERRIDE | solicited,
            target: self.target,
        }
    }
}

/// A Neighbor Advertisement with a target link-layer address option: what
/// [`NeighborSolicit::answer`] builds and [`NeighborAdvert::emit`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvert {
    /// The Ethernet destination.
    pub eth_dst: MacAddr,
    /// The target's MAC: the Ethernet source and the target link-layer address option.
    pub target_lladdr: MacAddr,
    /// The IPv6 source.
    pub src: Ipv6Addr,
    /// The IPv6 destination.
    pub dst: Ipv6Addr,
    /// R, S, O ([`flags`]).
    pub flags: u8,
    pub target: Ipv6Addr,
}

impl NeighborAdvert {
    /// The frame: [`NA_FRAME_LEN`] bytes, the ICMPv6 checksum filled in.
    pub fn emit(&self) -> [u8; NA_FRAME_LEN] {
        let mut out = [0u8; NA_FRAME_LEN];
        let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
        eth.set_dst(self.eth_dst);
        eth.set_src(self.target_lladdr);
        eth.set_ethertype(EtherType::IPV6);
        let (_, rest) = out.split_at_mut(ETH_LEN);
        let (hdr, na) = rest.split_at_mut(IP_LEN);
        hdr[0] = 0x60; // version 6, traffic class 0, flow label 0
        put_be16(hdr, ip::PAYLOAD_LEN, NA_LEN as u16);
        hdr[ip::NEXT_HEADER] = PROTO_ICMPV6;
        hdr[ip::HOP_LIMIT] = HOP_LIMIT;
        hdr[ip::SRC..ip::SRC + 16].copy_from_slice(&self.src.octets());
        hdr[ip::DST..ip::DST + 16].copy_from_slice(&self.dst.octets());
        na[field::TYPE] = NEIGHBOR_ADVERT;
        na[field::CODE] = 0;
        na[field::FLAGS] = self.flags & (flags::ROUTER | flags::SOLICITED | flags::OVERRIDE);
        na[field::TARGET].copy_from_slice(&self.target.octets());
        let opt = &mut na[field::OPTIONS..];
        opt[0] = OPTION_TARGET_LLADDR;
        opt[1] = (OPTION_LLADDR_LEN / 8) as u8;
        opt[2..OPTION_LLADDR_LEN].copy_from_slice(&self.target_lladdr.0);
        let mut c = Checksum::new();
        c.add_ipv6_pseudo(self.src, self.dst, PROTO_ICMPV6, NA_LEN as u32);
        c.add_bytes(na);
        put_be16(na, field::CHECKSUM, c.finish());
        out
    }

    /// Reads a Neighbor Advertisement from a whole Ethernet frame, with the checks
    /// of §7.1.2 (those of a solicitation, and S clear when sent to a multicast
    /// group). It must carry a target link-layer address option (every answer
    /// [`NeighborAdvert::emit`] writes does); its Ethernet source is not compared
    /// with that option.
    pub fn parse(frame: &[u8]) -> Result<NeighborAdvert, WireError> {
        let m = Message::parse(frame, NEIGHBOR_ADVERT)?;
        let flags = m.icmp[field::FLAGS];
        if m.dst.is_multicast() && flags & flags::SOLICITED != 0 {
            return Err(WireError::Malformed {
                field: "na solicited flag to a multicast group",
            });
        }
        let Some(target_lladdr) = m.lladdr(OPTION_TARGET_LLADDR)? else {
            return Err(WireError::Malformed {
                field: "na target link-layer option",
            });
        };
        Ok(NeighborAdvert {
            eth_dst: m.eth_dst,
            target_lladdr,
            src: m.src,
            dst: m.dst,
            flags: flags & (flags::ROUTER | flags::SOLICITED | flags::OVERRIDE),
            target: m.target,
        })
    }
}

/// An ND message that passed the checks solicitations and advertisements share.
struct Message<'a> {
    eth_dst: MacAddr,
    eth_src: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    /// The ICMPv6 message, up to the IPv6 payload length (Ethernet padding excluded).
    icmp: &'a [u8],
}

impl<'a> Message<'a> {
    fn parse(frame: &'a [u8], kind: u8) -> Result<Message<'a>, WireError> {
        let eth = EthernetFrame::new_checked(frame)?;
        if eth.ethertype() != EtherType::IPV6 {
            return Err(WireError::Malformed {
                field: "ethertype (not ipv6)",
            });
        }
        let ip = Ipv6Packet::new_checked(&frame[ETH_LEN..])?;
        if ip.next_header() != PROTO_ICMPV6 {
            return Err(WireError::Malformed {
                field: "ipv6 next header (not icmpv6)",
            });
        }
        if ip.hop_limit() != HOP_LIMIT {
            return Err(WireError::Malformed {
                field: "nd hop limit",
            });
        }
        let (src, dst) = (ip.src(), ip.dst());
        if src.is_multicast() {
            return Err(WireError::Malformed {
                field: "ipv6 source (multicast)",
            });
        }
        let icmp = &frame[ETH_LEN + IP_LEN..ETH_LEN + IP_LEN + ip.payload_len()];
        need(icmp, field::OPTIONS)?;
        if icmp[field::TYPE] != kind {
            return Err(WireError::Malformed {
                field: "icmpv6 type",
            });
        }
        if icmp[field::CODE] != 0 {
            return Err(WireError::Malformed {
                field: "icmpv6 code",
            });
        }
        let mut c = Checksum::new();
        c.add_ipv6_pseudo(src, dst, PROTO_ICMPV6, icmp.len() as u32);
        c.add_bytes(icmp);
        if c.fold() != 0xffff {
            return Err(WireError::Malformed {
                field: "icmpv6 checksum",
            });
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&icmp[field::TARGET]);
        let target = Ipv6Addr::from(t);
        if target.is_multicast() {
            return Err(WireError::Malformed {
                field: "nd target (multicast)",
            });
        }
        Ok(Message {
            eth_dst: eth.dst(),
            eth_src: eth.src(),
            src,
            dst,
            target,
            icmp,
        })
    }

    /// Walks the options (every one must have a non-zero length and fit) and returns
    /// the MAC of the first link-layer address option of `kind`.
    fn lladdr(&self, kind: u8) -> Result<Option<MacAddr>, WireError> {
        let mut found = None;
        let mut rest = &self.icmp[field::OPTIONS..];
        while !rest.is_empty() {
            need(rest, 2)?;
            let len = usize::from(rest[1]) * 8;
            if len == 0 {
                return Err(WireError::Malformed {
                    field: "nd option length (zero)",
                });
            }
            need(rest, len)?;
            if rest[0] == kind && found.is_none() {
                // §4.6.1 with RFC 2464 §8: on Ethernet the option is 8 bytes.
                if len != OPTION_LLADDR_LEN {
                    return Err(WireError::Malformed {
                        field: "nd link-layer address option length",
                    });
                }
                found = MacAddr::from_slice(&rest[2..OPTION_LLADDR_LEN]);
            }
            rest = &rest[len..];
        }
        Ok(found)
    }
}

/// Whether `a` is a solicited-node multicast address, ff02::1:ffXX:XXXX (RFC 4291
/// §2.7.1).
fn is_solicited_node(a: Ipv6Addr) -> bool {
    let o = a.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff][..]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // Hand-built, laid out as `tcpdump -xx -i vxmesh0 icmp6` shows a Linux kernel's
    // solicitations on the TAP of node A (TAP MAC c6:d2:32:6f:8f:44, IPv6 VTEP
    // fd00:10:244:1::) for peer C's IPv6 VTEP address fd00:10:244:3::. The checksums
    // were summed apart from this code (Python, RFC 1071 over the pseudo-header and
    // the message) and are checked again below with `reference`.

    /// Address resolution: from A's link-local address to the solicited-node group
    /// ff02::1:ff00:0 (33:33:ff:00:00:00), with A's MAC in a source link-layer
    /// address option. ICMPv6 checksum 0x6db9.
    pub(crate) const NS_LINK_LOCAL: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x00, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x86, 0xdd, //
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0xc4, 0xd2, 0x32, 0xff, 0xfe, 0x6f, 0x8f, 0x44, 0xff, 0x02, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x00, 0x87, 0x00, //
        0x6d, 0xb9, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x03, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0xc6, 0xd2, 0x32, 0x6f, //
        0x8f, 0x44,
    ];

    /// Neighbour unreachability detection: unicast from A's global address
    /// fd00:10:244:1:: to the target itself, at C's IPv6 VtepMAC 0e:00:00:06:00:03,
    /// no option. ICMPv6 checksum 0x7aa7.
    pub(crate) const NS_UNICAST: [u8; 78] = [
        0x0e, 0x00, 0x00, 0x06, 0x00, 0x03, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x86, 0xdd, //
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x3a, 0xff, 0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, //
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x10, //
        0x02, 0x44, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x87, 0x00, //
        0x7a, 0xa7, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x03, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// Duplicate address detection of fd00:10:244:3:: (as if A were to take it):
    /// from ::, no option. ICMPv6 checksum 0x7b50.
    pub(crate) const NS_DAD: [u8; 78] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x00, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x86, 0xdd, //
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x3a, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x02, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x00, 0x87, 0x00, //
        0x7b, 0x50, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x03, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// Peer C's IPv6 VtepMAC.
    const C_MAC: MacAddr = MacAddr([0x0e, 0, 0, 6, 0, 3]);

    fn a_mac() -> MacAddr {
        "c6:d2:32:6f:8f:44".parse().unwrap()
    }

    fn c_vtep() -> Ipv6Addr {
        "fd00:10:244:3::".parse().unwrap()
    }

    /// RFC 1071 §4.1, a byte pair at a time over the pseudo-header (RFC 8200 §8.1)
    /// and the message, independent of [`Checksum`]: 0 when the message verifies.
    fn reference(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
        bytes.extend_from_slice(icmp);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// A solicitation frame built from its parts, as the kernel lays it out (tests
    /// and property tests); `hop_limit` and `lladdr` as given.
    pub(crate) fn solicitation(eth_dst: MacAddr, ns: &NeighborSolicit, hop_limit: u8) -> Vec<u8> {
        let mut icmp = vec![NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&ns.target.octets());
        if let Some(m) = ns.source_lladdr {
            icmp.extend_from_slice(&[OPTION_SOURCE_LLADDR, 1]);
            icmp.extend_from_slice(&m.0);
        }
        let c = reference(ns.src, ns.dst, &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&eth_dst.0);
        f.extend_from_slice(&ns.eth_src.0);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[PROTO_ICMPV6, hop_limit]);
        f.extend_from_slice(&ns.src.octets());
        f.extend_from_slice(&ns.dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn the_hand_built_frames_are_what_the_builder_builds() {
        assert_eq!(
            reference(
                "fe80::c4d2:32ff:fe6f:8f44".parse().unwrap(),
                "ff02::1:ff00:0".parse().unwrap(),
                &NS_LINK_LOCAL[54..]
            ),
            0
        );
        for f in [&NS_LINK_LOCAL[..], &NS_UNICAST, &NS_DAD] {
            let ns = NeighborSolicit::parse(f).unwrap();
            let dst = MacAddr::from_slice(&f[..6]).unwrap();
            assert_eq!(solicitation(dst, &ns, 255), f);
            assert!(looks_like_solicit(&f[14..]));
            // Cross-checked with etherparse.
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
                panic!("not icmpv6");
            };
            assert!(icmp.is_checksum_valid(ns.src.octets(), ns.dst.octets()));
            assert_eq!(
                icmp.icmp_type(),
                etherparse::Icmpv6Type::NeighborSolicitation
            );
        }
    }

    #[test]
    fn parses_solicitations() {
        let ns = NeighborSolicit::parse(&NS_LINK_LOCAL).unwrap();
        assert_eq!(
            ns,
            NeighborSolicit {
                eth_src: a_mac(),
                src: "fe80::c4d2:32ff:fe6f:8f44".parse().unwrap(),
                dst: "ff02::1:ff00:0".parse().unwrap(),
                target: c_vtep(),
                source_lladdr: Some(a_mac()),
            }
        );
        assert!(!ns.is_dad());
        assert_eq!(ns.reply_mac(), a_mac());

        let ns = NeighborSolicit::parse(&NS_UNICAST).unwrap();
        assert_eq!(ns.src, "fd00:10:244:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!((ns.dst, ns.target), (c_vtep(), c_vtep()));
        assert_eq!(ns.source_lladdr, None);
        // No option: the answer goes to the frame's source.
        assert_eq!(ns.reply_mac(), a_mac());

        let ns = NeighborSolicit::parse(&NS_DAD).unwrap();
        assert!(ns.is_dad());
        assert_eq!(ns.target, c_vtep());

        // An option naming another MAC than the frame's source wins.
        let other = MacAddr([0x02, 0, 0, 0, 0, 7]);
        let ns = NeighborSolicit {
            source_lladdr: Some(other),
            ..NeighborSolicit::parse(&NS_LINK_LOCAL).unwrap()
        };
        let f = solicitation(MacAddr([0x33, 0x33, 0xff, 0, 0, 0]), &ns, 255);
        assert_eq!(NeighborSolicit::parse(&f).unwrap().reply_mac(), other);
        // Ethernet padding after the message is not part of it.
        let mut padded = NS_UNICAST.to_vec();
        padded.extend_from_slice(&[0xaa; 10]);
        assert_eq!(
            NeighborSolicit::parse(&padded),
            NeighborSolicit::parse(&NS_UNICAST)
        );
    }

    /// The answer to the link-local solicitation, byte by byte.
    #[test]
    fn advertisement_bytes() {
        let ns = NeighborSolicit::parse(&NS_LINK_LOCAL).unwrap();
        let na = ns.answer(C_MAC);
        let f = na.emit();
        assert_eq!(f.len(), 86);
        // Ethernet: to A's MAC, from C's IPv6 VtepMAC, IPv6.
        assert_eq!(f[0..6], a_mac().0);
        assert_eq!(f[6..12], C_MAC.0);
        assert_eq!(f[12..14], [0x86, 0xdd]);
        // IPv6: version 6, no class or label, 32 bytes of ICMPv6, hop limit 255,
        // from the target to the solicitor.
        assert_eq!(f[14..18], [0x60, 0, 0, 0]);
        assert_eq!(f[18..20], [0, 32]);
        assert_eq!((f[20], f[21]), (58, 255));
        assert_eq!(f[22..38], c_vtep().octets());
        assert_eq!(f[38..54], ns.src.octets());
        // ICMPv6: type 136, code 0, R S O, target, TLLA option with C's MAC.
        assert_eq!((f[54], f[55]), (136, 0));
        assert_eq!(f[58..62], [0xe0, 0, 0, 0]);
        assert_eq!(f[62..78], c_vtep().octets());
        assert_eq!(f[78..80], [2, 1]);
        assert_eq!(f[80..86], C_MAC.0);
        // The checksum, summed independently: the whole message verifies, and
        // recomputing it with the field zeroed gives the field.
        assert_eq!(reference(c_vtep(), ns.src, &f[54..]), 0);
        let mut zeroed = f[54..].to_vec();
        zeroed[2..4].fill(0);
        assert_eq!(
            u16::from_be_bytes([f[56], f[57]]),
            reference(c_vtep(), ns.src, &zeroed)
        );
        // etherparse reads the same.
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not ipv6");
        };
        assert_eq!(ip.header().hop_limit(), 255);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("not icmpv6");
        };
        assert!(icmp.is_checksum_valid(c_vtep().octets(), ns.src.octets()));
        let etherparse::Icmpv6Type::NeighborAdvertisement(h) = icmp.icmp_type() else {
            panic!("{:?}", icmp.icmp_type());
        };
        assert!(h.router && h.solicited && h.r#override);
        let Ok(etherparse::icmpv6::Icmpv6PayloadSlice::NeighborAdvertisement(body)) =
            icmp.payload_slice()
        else {
            panic!("no na body");
        };
        assert_eq!(body.target_address(), c_vtep());
        let opts: Vec<_> = body.options_iterator().collect();
        let [Ok(etherparse::icmpv6::NdpOptionSlice::TargetLinkLayerAddress(o))] = &opts[..] else {
            panic!("{opts:?}");
        };
        assert_eq!(o.link_layer_address(), &C_MAC.0[..]);
        // And our own parser.
        assert_eq!(NeighborAdvert::parse(&f), Ok(na));
    }

    /// Duplicate address detection is answered to all nodes, S clear.
    #[test]
    fn dad_is_answered_to_all_nodes() {
        let na = NeighborSolicit::parse(&NS_DAD).unwrap().answer(C_MAC);
        assert_eq!(na.eth_dst, ALL_NODES_MAC);
        assert_eq!(na.dst, ALL_NODES);
        assert_eq!(na.flags, flags::ROUTER | flags::OVERRIDE);
        let f = na.emit();
        assert_eq!(f[58], 0xa0);
        assert_eq!(reference(c_vtep(), ALL_NODES, &f[54..]), 0);
        assert_eq!(NeighborAdvert::parse(&f), Ok(na));
        // The unicast solicitation is answered to its source, S set.
        let ns = NeighborSolicit::parse(&NS_UNICAST).unwrap();
        let na = ns.answer(C_MAC);
        assert_eq!((na.eth_dst, na.dst), (a_mac(), ns.src));
        assert_eq!(na.flags, 0xe0);
    }

    #[test]
    fn rejects_what_rfc_4861_rejects() {
        let bad = |f: &[u8]| NeighborSolicit::parse(f).is_err();
        let with = |at: usize, v: u8| {
            let mut f = NS_LINK_LOCAL;
            f[at] = v;
            f
        };
        // A changed byte anywhere in the message or the addresses: bad checksum.
        for at in [22, 37, 38, 53, 54 + 4, 54 + 9, 54 + 26, 85] {
            assert!(bad(&with(at, NS_LINK_LOCAL[at] ^ 0x10)), "byte {at}");
        }
        assert!(bad(&with(56, 0x6d ^ 1)));
        // Hop limit other than 255 (a checksum does not cover it).
        for hop in [0, 1, 64, 254] {
            assert!(bad(&with(21, hop)), "hop limit {hop}");
        }
        // Not IPv6, not ICMPv6, version not 6.
        assert!(bad(&with(12, 0x08)));
        assert!(bad(&with(20, 17)));
        assert!(bad(&with(14, 0x40)));
        // Truncated anywhere, or shorter than the payload length says.
        for n in 0..NS_LINK_LOCAL.len() {
            assert!(bad(&NS_LINK_LOCAL[..n]), "cut at {n}");
        }
        // Other type or code, multicast target, a zero-length option, an option
        // past the end, an Ethernet link-layer option of the wrong length (each
        // with its checksum mended, so only the rule rejects it).
        let ns = NeighborSolicit::parse(&NS_LINK_LOCAL).unwrap();
        let mended = |mut icmp: Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr| {
            icmp[2..4].fill(0);
            let c = reference(src, dst, &icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut f = NS_LINK_LOCAL[..54].to_vec();
            f[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
            f[22..38].copy_from_slice(&src.octets());
            f[38..54].copy_from_slice(&dst.octets());
            f.extend_from_slice(&icmp);
            f
        };
        let icmp = NS_LINK_LOCAL[54..].to_vec();
        assert!(!bad(&mended(icmp.clone(), ns.src, ns.dst)));
        let edit = |at: usize, v: u8| {
            let mut i = icmp.clone();
            i[at] = v;
            mended(i, ns.src, ns.dst)
        };
        assert!(bad(&edit(0, 136)));
        assert!(bad(&edit(1, 1)));
        assert!(bad(&edit(8, 0xff)));
        assert!(bad(&edit(25, 0)));
        assert!(bad(&edit(25, 2)));
        assert!(bad(&mended(icmp[..30].to_vec(), ns.src, ns.dst)));
        assert!(bad(&mended(icmp[..23].to_vec(), ns.src, ns.dst)));
        let mut long = icmp.clone();
        long.extend_from_slice(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // A second source option is ignored (the first one counts).
        assert_eq!(
            NeighborSolicit::parse(&mended(long, ns.src, ns.dst)).map(|n| n.reply_mac()),
            Ok(a_mac())
        );
        // A multicast source.
        assert!(bad(&mended(icmp.clone(), ALL_NODES, ns.dst)));
        // Duplicate address detection with a source link-layer option, or to a
        // group that is not a solicited-node one.
        assert!(bad(&mended(icmp.clone(), Ipv6Addr::UNSPECIFIED, ns.dst)));
        assert!(bad(&mended(
            icmp[..24].to_vec(),
            Ipv6Addr::UNSPECIFIED,
            ALL_NODES
        )));
        assert!(!bad(&mended(
            icmp[..24].to_vec(),
            Ipv6Addr::UNSPECIFIED,
            ns.dst
        )));
        // An advertisement is not a solicitation, and the other way round.
        let na = ns.answer(C_MAC).emit();
        assert!(bad(&na));
        assert!(NeighborAdvert::parse(&NS_LINK_LOCAL).is_err());
        assert!(!looks_like_solicit(&na[14..]));
    }

    fn arb_solicit() -> impl proptest::strategy::Strategy<Value = NeighborSolicit> {
        use proptest::prelude::*;
        (
            any::<[u8; 6]>(),
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
            proptest::option::of(any::<[u8; 6]>()),
            any::<bool>(),
        )
            .prop_map(|(mac, src, dst, target, lladdr, dad)| {
                // Sources and targets are not multicast; DAD has no option and goes
                // to the target's solicited-node group.
                let unicast = |a: u128| Ipv6Addr::from(a & !(0xffu128 << 120));
                let target = unicast(target);
                let group = Ipv6Addr::from(
                    0xff02_0000_0000_0000_0000_0001_ff00_0000u128
                        | (u128::from(target) & 0xff_ffff),
                );
                NeighborSolicit {
                    eth_src: MacAddr(mac),
                    src: if dad {
                        Ipv6Addr::UNSPECIFIED
                    } else {
                        unicast(src)
                    },
                    dst: if dad { group } else { Ipv6Addr::from(dst) },
                    target,
                    source_lladdr: if dad { None } else { lladdr.map(MacAddr) },
                }
            })
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(0u8.., 0..120)) {
            let _ = NeighborSolicit::parse(&b);
            let _ = NeighborAdvert::parse(&b);
            let _ = looks_like_solicit(&b);
            // The same bytes behind a valid header prefix reach the ICMPv6 checks.
            let mut f = NS_LINK_LOCAL[..54].to_vec();
            f[18..20].copy_from_slice(&(b.len() as u16).to_be_bytes());
            f.extend_from_slice(&b);
            let _ = NeighborSolicit::parse(&f);
            let _ = NeighborAdvert::parse(&f);
        }

        /// Build → parse gives the solicitation back; its answer parses back to
        /// itself and verifies; only hop limit 255 is accepted.
        #[test]
        fn round_trips(ns in arb_solicit(), mac in proptest::prelude::any::<[u8; 6]>(), hop in 0u8..) {
            let f = solicitation(MacAddr([0x33, 0x33, 0xff, 0, 0, 1]), &ns, 255);
            proptest::prop_assert_eq!(NeighborSolicit::parse(&f), Ok(ns));
            proptest::prop_assert!(looks_like_solicit(&f[14..]));
            let na = ns.answer(MacAddr(mac));
            let out = na.emit();
            proptest::prop_assert_eq!(NeighborAdvert::parse(&out), Ok(na));
            proptest::prop_assert_eq!(reference(na.src, na.dst, &out[54..]), 0);
            proptest::prop_assert_eq!(na.src, ns.target);
            proptest::prop_assert_eq!(na.flags & flags::SOLICITED != 0, !ns.is_dad());
            let f = solicitation(MacAddr([0x33, 0x33, 0xff, 0, 0, 1]), &ns, hop);
            proptest::prop_assert_eq!(NeighborSolicit::parse(&f).is_ok(), hop == 255);
        }
    }
}
