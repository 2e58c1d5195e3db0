//! CIDR text as flannel's readers take it: `address/length`, nothing else.
//!
//! flannel parses every prefix in subnet.env with Go's `net.ParseCIDR`, which needs the
//! slash and a decimal length. `ipnetwork`'s own parser is more lenient (a bare address
//! means /32, a dotted netmask is a length); a file vxmesh accepted that flannel's plugin
//! rejects would break a mixed node, so these functions check the form first and leave
//! the address and range checks to `ipnetwork`. The address is kept as written
//! (FLANNEL_SUBNET carries the gateway, `10.244.3.1/24`); `network()` masks it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// Why text is not a CIDR of the expected family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// No `/length`.
    NotCidr(String),
    /// The part before the slash is not an address (of the expected family).
    Address { text: String, family: &'static str },
    /// The part after the slash is not a length within the family's width.
    Length { text: String, max: u8 },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::NotCidr(s) => {
                write!(f, "{s:?} is not in CIDR notation (address/length)")
            }
            CidrError::Address { text, family } => {
                write!(f, "{text:?} is not an {family} address")
            }
            CidrError::Length { text, max } => {
                write!(f, "{text:?} is not a prefix length (0 to {max})")
            }
        }
    }
}

impl std::error::Error for CidrError {}

/// Splits `addr/len` at the slash.
fn split(text: &str) -> Result<(&str, &str), CidrError> {
    text.split_once('/')
        .ok_or_else(|| CidrError::NotCidr(text.to_string()))
}

/// A length of 1–3 decimal digits no larger than `max` (no sign, no spaces, no netmask).
fn length(len: &str, max: u8) -> Result<u8, CidrError> {
    let bad = || CidrError::Length {
        text: len.to_string(),
        max,
    };
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    len.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)
}

/// An IPv4 CIDR, address as written.
pub fn parse_v4(text: &str) -> Result<Ipv4Network, CidrError> {
    let (addr, len) = split(text)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Address {
        text: addr.to_string(),
        family: "IPv4",
    })?;
    let len = length(len, 32)?;
    Ipv4Network::new(addr, len).map_err(|_| CidrError::Length {
        text: len.to_string(),
        max: 32,
    })
}

/// An IPv6 CIDR, address as written.
pub fn parse_v6(text: &str) -> Result<Ipv6Network, CidrError> {
    let (addr, len) = split(text)?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| CidrError::Address {
        text: addr.to_string(),
        family: "IPv6",
    })?;
    let len = length(len, 128)?;
    Ipv6Network::new(addr, len).map_err(|_| CidrError::Length {
        text: len.to_string(),
        max: 128,
    })
}

/// A CIDR of either family, address as written.
pub fn parse(text: &str) -> Result<IpNetwork, CidrError> {
    let addr = text.split_once('/').map_or(text, |(a, _)| a);
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => parse_v6(text).map(IpNetwork::V6),
        Ok(IpAddr::V4(_)) => parse_v4(text).map(IpNetwork::V4),
        Err(_) if !text.contains('/') => Err(CidrError::NotCidr(text.to_string())),
        Err(_) => Err(CidrError::Address {
            text: addr.to_string(),
            family: "IP",
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_address_and_masks_on_request() {
        let n = parse_v4("10.244.3.1/24").unwrap();
        assert_eq!(n.to_string(), "10.244.3.1/24");
        assert_eq!(n.network().to_string(), "10.244.3.0");
        assert_eq!(
            parse_v4("10.1.2.3/0").unwrap().network().to_string(),
            "0.0.0.0"
        );
        let v6 = parse_v6("fc00::5/64").unwrap();
        assert_eq!(v6.network().to_string(), "fc00::");
        assert!(matches!(parse("fc00::5/64"), Ok(IpNetwork::V6(_))));
        assert!(matches!(parse("10.0.0.0/8"), Ok(IpNetwork::V4(_))));
    }

    /// Everything Go's net.ParseCIDR refuses, including what ipnetwork alone would take
    /// (a bare address, a dotted netmask).
    #[test]
    fn refuses_what_flannel_refuses() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/255.255.0.0",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "10.0.0.0/0008",
            "",
            "/",
            "10.0.0.0/",
            "fc00::/129",
            "10.0.0.0/8/8",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_v4("fc00::1/64").unwrap_err().to_string(),
            "\"fc00::1\" is not an IPv4 address"
        );
        assert!(parse_v6("10.0.0.1/8").is_err());
        assert_eq!(
            parse_v4("10.0.0.0").unwrap_err().to_string(),
            "\"10.0.0.0\" is not in CIDR notation (address/length)"
        );
    }
}
