//! ARP for IPv4 over Ethernet (RFC 826): the only ARP the overlay answers.
//!
//! 28 bytes: htype 1, ptype 0x0800, hlen 6, plen 4, operation, sender MAC/IP,
//! target MAC/IP. Other hardware or protocol types are malformed for our purpose.

use std::net::Ipv4Addr;

use super::{be16, need, put_be16, MacAddr, WireError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOperation {
    Request,
    Reply,
}

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const SPA: usize = 14;
    pub const THA: usize = 18;
    pub const TPA: usize = 24;
    pub const END: usize = 28;
}

/// A view of an Ethernet/IPv4 ARP packet (the Ethernet payload).
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const LEN: usize = field::END;

    /// Checks the length and that this is Ethernet/IPv4 ARP.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(b, field::END)?;
        if be16(b, field::HTYPE) != 1 || b[field::HLEN] != 6 {
            return Err(WireError::Malformed {
                field: "arp hardware type",
            });
        }
        if be16(b, field::PTYPE) != 0x0800 || b[field::PLEN] != 4 {
            return Err(WireError::Malformed {
                field: "arp protocol type",
            });
        }
        match be16(b, field::OPER) {
            1 | 2 => Ok(Self { buffer }),
            _ => Err(WireError::Malformed {
                field: "arp operation",
            }),
        }
    }

    fn mac(&self, at: usize) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[at..at + 6]);
        MacAddr(m)
    }

    fn ip(&self, at: usize) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
    }

    pub fn operation(&self) -> ArpOperation {
        if be16(self.buffer.as_ref(), field::OPER) == 1 {
            ArpOperation::Request
        } else {
            ArpOperation::Reply
        }
    }

    pub fn sender_mac(&self) -> MacAddr {
        self.mac(field::SHA)
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        self.ip(field::SPA)
    }
    pub fn target_mac(&self) -> MacAddr {
        self.mac(field::THA)
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        self.ip(field::TPA)
    }
}

/// A parsed ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &ArpPacket<T>) -> ArpRepr {
        ArpRepr {
            operation: p.operation(),
            sender_mac: p.sender_mac(),
            sender_ip: p.sender_ip(),
            target_mac: p.target_mac(),
            target_ip: p.target_ip(),
        }
    }

    pub const fn buffer_len(&self) -> usize {
        field::END
    }

    /// Writes the packet into the first 28 bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than 28 bytes (a caller bug).
    pub fn emit(&self, out: &mut [u8]) {
        put_be16(out, field::HTYPE, 1);
        put_be16(out, field::PTYPE, 0x0800);
        out[field::HLEN] = 6;
        out[field::PLEN] = 4;
        let op = match self.operation {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
        };
        put_be16(out, field::OPER, op);
        out[field::SHA..field::SHA + 6].copy_from_slice(&self.sender_mac.0);
        out[field::SPA..field::SPA + 4].copy_from_slice(&self.sender_ip.octets());
        out[field::THA..field::THA + 6].copy_from_slice(&self.target_mac.0);
        out[field::TPA..field::TPA + 4].copy_from_slice(&self.target_ip.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::testdata::ARP_REQUEST;

    fn request() -> [u8; 28] {
        let mut b = [0u8; 28];
        b.copy_from_slice(&ARP_REQUEST[14..]);
        b
    }

    #[test]
    fn parses_request() {
        let req = request();
        let p = ArpPacket::new_checked(&req[..]).unwrap();
        let r = ArpRepr::parse(&p);
        assert_eq!(r.operation, ArpOperation::Request);
        assert_eq!(r.sender_mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(r.sender_ip, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(r.target_ip, Ipv4Addr::new(10, 244, 2, 0));
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(out, request());
    }

    #[test]
    fn rejects_other_types() {
        let mut b = request();
        b[1] = 6; // IEEE 802 hardware
        assert!(ArpPacket::new_checked(&b[..]).is_err());
        let mut b = request();
        b[2] = 0x86;
        b[3] = 0xdd;
        assert!(ArpPacket::new_checked(&b[..]).is_err());
        let mut b = request();
        b[7] = 9;
        assert!(ArpPacket::new_checked(&b[..]).is_err());
        assert!(ArpPacket::new_checked(&request()[..27]).is_err());
    }

    fn arb_repr() -> impl proptest::strategy::Strategy<Value = ArpRepr> {
        use proptest::prelude::*;
        (
            any::<bool>(),
            any::<[u8; 6]>(),
            any::<u32>(),
            any::<[u8; 6]>(),
            any::<u32>(),
        )
            .prop_map(|(req, sm, si, tm, ti)| ArpRepr {
                operation: if req {
                    ArpOperation::Request
                } else {
                    ArpOperation::Reply
                },
                sender_mac: MacAddr(sm),
                sender_ip: Ipv4Addr::from(si),
                target_mac: MacAddr(tm),
                target_ip: Ipv4Addr::from(ti),
            })
    }

    proptest::proptest! {
        #[test]
        fn round_trip(r in arb_repr()) {
            let mut out = [0u8; 28];
            r.emit(&mut out);
            let p = ArpPacket::new_checked(&out[..]).unwrap();
            proptest::prop_assert_eq!(ArpRepr::parse(&p), r);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(0u8.., 0..40)) {
            if let Ok(p) = ArpPacket::new_checked(&b[..]) {
                let _ = ArpRepr::parse(&p);
            }
        }
    }
}
