//! IPv6 subnets as a checked newtype, the IPv6 counterpart of [`crate::subnet::Subnet`]:
//! the network address always has its host bits cleared.
//!
//! Text forms: CIDR (`fc00:0:0:2::/64`) for operators and configs, and flannel's etcd
//! key form (`fc00:0:0:2::-64`, the part after `&` in a dual-stack lease key). The
//! address is written as Go's `net.IP.String()` writes it (RFC 5952: lower case, no
//! leading zeros, the longest run of two or more zero groups as `::`, the first on a
//! tie), which is also how Rust's `Ipv6Addr` displays every address outside
//! [`is_ipv4_embedded`]'s blocks.
//!
//! Not here: the IPv6 pool rules (`config`), lease keys as a whole (`lease`).

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// An IPv6 network: address with host bits zero, and a prefix length 0..=128.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet6 {
    addr: Ipv6Addr,
    len: u8,
}

/// Why text is not an IPv6 subnet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Subnet6Error {
    #[error("{0:?} is not an IPv6 CIDR like fc00::/48")]
    Syntax(String),
    #[error("prefix length {0} is larger than 128")]
    PrefixTooLong(u8),
    #[error("{text} has host bits set; the network address is {masked}")]
    HostBits { text: String, masked: Subnet6 },
}

/// The netmask of a prefix length (`len` ≤ 128).
pub fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// Whether `addr` lies in `::/96` or `::ffff:0:0/96` (IPv4-compatible and -mapped
/// addresses). Go writes such addresses in dotted IPv4 form (flannel's `ip.IP6` even
/// for `::1.0.0.0`…`::255.255.255.255`), which flannel's own lease-key pattern
/// (`[a-f\d:]+`) cannot read back, and no pod network or underlay uses them; vxmesh
/// refuses them where flannel would write them.
pub fn is_ipv4_embedded(addr: Ipv6Addr) -> bool {
    let a = u128::from(addr);
    a >> 32 == 0 || a >> 32 == 0xffff
}

impl Subnet6 {
    /// A subnet from an address and length; host bits are cleared.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Subnet6, Subnet6Error> {
        if len > 128 {
            return Err(Subnet6Error::PrefixTooLong(len));
        }
        Ok(Subnet6 {
            addr: Ipv6Addr::from(u128::from(addr) & mask6(len)),
            len,
        })
    }

    /// Like [`Subnet6::new`] but refuses an address with host bits set.
    pub fn new_exact(addr: Ipv6Addr, len: u8) -> Result<Subnet6, Subnet6Error> {
        let s = Subnet6::new(addr, len)?;
        if s.addr != addr {
            return Err(Subnet6Error::HostBits {
                text: format!("{addr}/{len}"),
                masked: s,
            });
        }
        Ok(s)
    }

    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask6(self.len) == u128::from(self.addr)
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_subnet(&self, other: &Subnet6) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet6) -> bool {
        self.contains_subnet(other) || other.contains_subnet(self)
    }

    /// The last address of the subnet.
    pub fn last(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) | !mask6(self.len))
    }

    /// flannel's etcd key form: `fc00:0:0:2::-64`.
    pub fn key_form(&self) -> String {
        format!("{}-{}", self.addr, self.len)
    }

    /// Parses flannel's key form, `fc00::-64`, requiring host bits clear. The text
    /// must be exactly what [`Subnet6::key_form`] writes (and flannel's
    /// `MakeSubnetKey` would), so a key read is a key that can be written back byte
    /// for byte; other spellings of the same subnet (`FC00::-64`, `fc00:0::-64`,
    /// `fc00::-064`) are refused, as are [`is_ipv4_embedded`] addresses.
    pub fn from_key_form(s: &str) -> Result<Subnet6, Subnet6Error> {
        let syntax = || Subnet6Error::Syntax(s.to_string());
        let (ip, len) = s.rsplit_once('-').ok_or_else(syntax)?;
        if !ip
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':')
        {
            return Err(syntax());
        }
        let ip: Ipv6Addr = ip.parse().map_err(|_| syntax())?;
        if is_ipv4_embedded(ip) {
            return Err(syntax());
        }
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 = len.parse().map_err(|_| syntax())?;
        let subnet = Subnet6::new_exact(ip, len)?;
        if subnet.key_form() != s {
            return Err(syntax());
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses CIDR text, clearing host bits (as Go's `net.ParseCIDR`, which flannel's
/// config parser uses, does). Use [`Subnet6::new_exact`] to refuse them instead.
impl FromStr for Subnet6 {
    type Err = Subnet6Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || Subnet6Error::Syntax(s.to_string());
        let (ip, len) = s.trim().split_once('/').ok_or_else(syntax)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| syntax())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 = len.parse().map_err(|_| syntax())?;
        Subnet6::new(ip, len)
    }
}

impl serde::Serialize for Subnet6 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_formats() {
        let s: Subnet6 = "fd00:12:13:77::1/56".parse().unwrap();
        assert_eq!(s.to_string(), "fd00:12:13::/56");
        // flannel's own test key (pkg/subnet/subnet_test.go, TestSubnetNodev6).
        assert_eq!(s.key_form(), "fd00:12:13::-56");
        assert_eq!(Subnet6::from_key_form("fd00:12:13::-56").unwrap(), s);
        // Go writes fc00:0:0:2:: (the longer zero run is the one compressed).
        let t: Subnet6 = "fc00:0:0:2::/64".parse().unwrap();
        assert_eq!(t.key_form(), "fc00:0:0:2::-64");
        assert_eq!(
            t.last(),
            "fc00:0:0:2:ffff:ffff:ffff:ffff"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
        let n: Subnet6 = "fc00::/48".parse().unwrap();
        assert!(n.contains_subnet(&t));
        assert!(!t.contains_subnet(&n));
        assert!(n.overlaps(&t) && t.overlaps(&n));
        assert!(!t.overlaps(&"fc00:0:0:3::/64".parse().unwrap()));
        assert_eq!(
            "::/0".parse::<Subnet6>().unwrap().last(),
            Ipv6Addr::from(u128::MAX)
        );
    }

    #[test]
    fn key_form_is_canonical_only() {
        for bad in [
            "fd00:12:13::1-56",    // host bits
            "FD00:12:13::-56",     // upper case: Go writes lower case
            "fd00:12:13:0::-56",   // not the shortest form
            "fd00:0012:13::-56",   // leading zeros
            "fd00:12:13::-056",    // padded length
            "fd00:12:13::-+56",    // sign
            "fd00:12:13::-",       // no length
            "fd00:12:13::-129",    // too long
            "fd00:12:13::",        // no separator
            "::ffff:10.0.0.0-120", // dotted: flannel's pattern cannot read it
            "::100:0-104",         // Go would write it as 1.0.0.0
            ":12:13:-56",          // flannel's invalid-key test cases
            "20011::-56",
            "2001-56",
            "2001::-56hi",
            "",
        ] {
            assert!(Subnet6::from_key_form(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr_rejects_garbage() {
        for bad in [
            "",
            "fc00::",
            "fc00::/129",
            "fc00::/-1",
            "fc00::/+8",
            "10.0.0.0/8",
            "x/1",
        ] {
            assert!(bad.parse::<Subnet6>().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn key_form_round_trip(a in 0u128.., len in 0u8..=128) {
            let s = Subnet6::new(Ipv6Addr::from(a), len).unwrap();
            let key = s.key_form();
            match Subnet6::from_key_form(&key) {
                Ok(back) => {
                    proptest::prop_assert_eq!(back, s);
                    proptest::prop_assert_eq!(back.key_form(), key);
                }
                Err(_) => proptest::prop_assert!(is_ipv4_embedded(s.addr())),
            }
            proptest::prop_assert_eq!(s.to_string().parse::<Subnet6>().unwrap(), s);
            proptest::prop_assert!(s.contains(Ipv6Addr::from(a)));
        }

        #[test]
        fn from_key_form_never_panics(s in ".{0,60}") {
            if let Ok(k) = Subnet6::from_key_form(&s) {
                proptest::prop_assert_eq!(k.key_form(), s);
            }
        }
    }
}
