//! Ethernet II frames (IEEE 802.3 clause 3, DIX framing) and MAC addresses.
//!
//! Frames on a TAP carry no preamble and no FCS: 14 bytes of header, then payload.
//! 802.1Q tags are not parsed: the overlay never carries VLAN-tagged pod traffic.

use std::fmt;
use std::str::FromStr;

use super::{be16, need, put_be16, WireError};

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The group bit (I/G) is set: broadcast or multicast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// A unicast address that is not all zeros: what a VTEP may use.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::ZERO
    }

    /// The U/L bit is set: a locally administered address.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 0a:58:0a:f4:03:00")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// EtherType values the dataplane cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: EtherType = EtherType(0x0800);
    pub const ARP: EtherType = EtherType(0x0806);
    pub const VLAN: EtherType = EtherType(0x8100);
    pub const IPV6: EtherType = EtherType(0x86dd);
}

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub const HEADER_LEN: usize = field::PAYLOAD;

    /// Wraps a buffer that is at least a full header long.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), field::PAYLOAD)?;
        Ok(Self { buffer })
    }

    /// Wraps a buffer the caller knows is at least [`Self::HEADER_LEN`] long.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn dst(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        MacAddr(m)
    }

    pub fn src(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        MacAddr(m)
    }

    pub fn ethertype(&self) -> EtherType {
        EtherType(be16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    pub fn set_ethertype(&mut self, t: EtherType) {
        put_be16(self.buffer.as_mut(), field::ETHERTYPE, t.0);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // First 14 bytes of an ARP request seen on a flannel.1 device
    // (`tcpdump -i flannel.1 -xx arp`), broadcast to ff:ff:ff:ff:ff:ff.
    const ARP_HEAD: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, 0x08, 0x06,
    ];

    #[test]
    fn parses_header_fields() {
        let f = EthernetFrame::new_checked(&ARP_HEAD[..]).unwrap();
        assert!(f.dst().is_broadcast());
        assert_eq!(f.src().to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(f.ethertype(), EtherType::ARP);
        assert!(f.payload().is_empty());
    }

    #[test]
    fn short_buffer_is_an_error_not_a_panic() {
        for n in 0..14 {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_HEAD[..n]).unwrap_err(),
                WireError::Truncated { need: 14, have: n }
            );
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 20];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        let a: MacAddr = "0a:58:0a:f4:03:00".parse().unwrap();
        let b: MacAddr = "02-00-00-00-00-01".parse().unwrap();
        f.set_dst(a);
        f.set_src(b);
        f.set_ethertype(EtherType::IPV4);
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!((f.dst(), f.src(), f.ethertype()), (a, b, EtherType::IPV4));
        assert_eq!(f.payload().len(), 6);
    }

    #[test]
    fn mac_text_rules() {
        for bad in [
            "",
            "0a:58:0a:f4:03",
            "0a:58:0a:f4:03:00:11",
            "0a:58:0a:f4:03:zz",
            "a:58:0a:f4:03:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let m: MacAddr = "C6:D2:32:6F:8F:44".parse().unwrap();
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        assert!(m.is_unicast() && m.is_local());
        assert!(MacAddr::BROADCAST.is_multicast() && !MacAddr::BROADCAST.is_unicast());
        assert!(!MacAddr::ZERO.is_unicast());
        assert!("33:33:00:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
    }

    proptest::proptest! {
        #[test]
        fn mac_display_parse_round_trip(b in proptest::array::uniform6(0u8..)) {
            let m = MacAddr(b);
            proptest::prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }
    }
}
