//! IPv4 subnets as a checked newtype: the network address always has its host bits
//! cleared, so two `Subnet`s that cover the same addresses compare equal.
//!
//! Text forms: CIDR (`10.244.3.0/24`) for operators and configs, and flannel's etcd
//! key form (`10.244.3.0-24`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: address with host bits zero, and a prefix length 0..=32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: Ipv4Addr,
    len: u8,
}

/// Why text is not a subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("{0:?} is not an IPv4 CIDR like 10.244.0.0/16")]
    Syntax(String),
    #[error("prefix length {0} is larger than 32")]
    PrefixTooLong(u8),
    #[error("{text} has host bits set; the network address is {masked}")]
    HostBits { text: String, masked: Subnet },
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl Subnet {
    /// `0.0.0.0/0`: every IPv4 address (an IPv6-only node's fingerprint names it as
    /// its IPv4 network: none).
    pub const ALL: Subnet = Subnet {
        addr: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };

    /// A subnet from an address and length; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Subnet, SubnetError> {
        if len > 32 {
            return Err(SubnetError::PrefixTooLong(len));
        }
        Ok(Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }

    /// Like [`Subnet::new`] but refuses an address with host bits set.
    pub fn new_exact(addr: Ipv4Addr, len: u8) -> Result<Subnet, SubnetError> {
        let s = Subnet::new(addr, len)?;
        if s.addr != addr {
            return Err(SubnetError::HostBits {
                text: format!("{addr}/{len}"),
                masked: s,
            });
        }
        Ok(s)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_subnet(&self, other: &Subnet) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains_subnet(other) || other.contains_subnet(self)
    }

    /// The `n`-th address of the subnet (`nth(0)` is the network address), if inside.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        if u64::from(n) >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// The last address of the subnet.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.len))
    }

    /// flannel's etcd key form: `10.244.3.0-24`.
    pub fn key_form(&self) -> String {
        format!("{}-{}", self.addr, self.len)
    }

    /// Parses flannel's key form, `10.244.3.0-24`, requiring host bits clear and
    /// the text exactly as [`Subnet::key_form`] (and flannel) writes it: other
    /// spellings of a length (`-024`, `-+24`) are refused, so one subnet has one key.
    pub fn from_key_form(s: &str) -> Result<Subnet, SubnetError> {
        let (ip, len) = s
            .split_once('-')
            .ok_or_else(|| SubnetError::Syntax(s.to_string()))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| SubnetError::Syntax(s.to_string()))?;
        let len: u8 = len
            .parse()
            .map_err(|_| SubnetError::Syntax(s.to_string()))?;
        let subnet = Subnet::new_exact(ip, len)?;
        if subnet.key_form() != s {
            return Err(SubnetError::Syntax(s.to_string()));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses CIDR text, clearing host bits (as flannel's config parser does). Use
/// [`Subnet::new_exact`] to refuse them instead.
impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| SubnetError::Syntax(s.to_string()))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| SubnetError::Syntax(s.to_string()))?;
        let len: u8 = len
            .parse()
            .map_err(|_| SubnetError::Syntax(s.to_string()))?;
        Subnet::new(ip, len)
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_formats() {
        let s: Subnet = "10.244.3.77/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.244.3.0/24");
        assert_eq!(s.key_form(), "10.244.3.0-24");
        assert_eq!(Subnet::from_key_form("10.244.3.0-24").unwrap(), s);
        assert!(Subnet::from_key_form("10.244.3.1-24").is_err());
        assert!(Subnet::new_exact(Ipv4Addr::new(10, 244, 3, 1), 24).is_err());
        assert_eq!(s.nth(1), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(s.nth(256), None);
        assert_eq!(s.last(), Ipv4Addr::new(10, 244, 3, 255));
        assert_eq!(s.size(), 256);
        let n: Subnet = "10.244.0.0/16".parse().unwrap();
        assert!(n.contains_subnet(&s));
        assert!(!s.contains_subnet(&n));
        assert_eq!("0.0.0.0/0".parse::<Subnet>().unwrap().size(), 1 << 32);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "10.244.0.0",
            "10.244.0.0/33",
            "10.244.0/16",
            "x/1",
            "10.244.0.0/-1",
            "10.244.3.0-",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
            assert!(Subnet::from_key_form(bad).is_err(), "{bad}");
        }
        // Another spelling of a key flannel writes as 10.244.3.0-24: one subnet, one key.
        for other in ["10.244.3.0-024", "10.244.3.0-+24", "10.244.3.0-24 "] {
            assert!(Subnet::from_key_form(other).is_err(), "{other}");
        }
    }

    proptest::proptest! {
        #[test]
        fn key_form_round_trip(a in 0u32.., len in 0u8..=32) {
            let s = Subnet::new(Ipv4Addr::from(a), len).unwrap();
            proptest::prop_assert_eq!(Subnet::from_key_form(&s.key_form()).unwrap(), s);
            proptest::prop_assert_eq!(s.to_string().parse::<Subnet>().unwrap(), s);
            proptest::prop_assert!(s.contains(Ipv4Addr::from(a)));
        }
    }
}
