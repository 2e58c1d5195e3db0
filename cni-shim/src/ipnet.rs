//! A minimal IP prefix type (`10.244.3.1/24`) with host-bit masking; std only.
//!
//! Only what the plugin needs: parse, keep the address as written (FLANNEL_SUBNET carries the
//! gateway address `.1`), mask to the network, test containment, print.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address with a prefix length, as written (host bits are kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Builds a prefix; `None` when the length exceeds the address family's width.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// The address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True for IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The same prefix with host bits cleared (`10.244.3.1/24` → `10.244.3.0/24`).
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }

    /// True when `other` (network and length) lies inside this prefix.
    pub fn contains(&self, other: &IpNet) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() || other.prefix < self.prefix {
            return false;
        }
        let widened = IpNet {
            addr: other.addr,
            prefix: self.prefix,
        };
        widened.network().addr == self.network().addr
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (address/length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        IpNet::new(addr, prefix).ok_or_else(|| format!("prefix length /{prefix} is too long"))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn network_masks_host_bits() {
        let n: IpNet = "10.244.3.1/24".parse().unwrap();
        assert_eq!(n.network().to_string(), "10.244.3.0/24");
        assert_eq!(n.to_string(), "10.244.3.1/24");
        let z: IpNet = "10.1.2.3/0".parse().unwrap();
        assert_eq!(z.network().to_string(), "0.0.0.0/0");
        let v6: IpNet = "fc00::5/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fc00::/64");
    }

    #[test]
    fn containment() {
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        assert!(net.contains(&"10.244.3.1/24".parse().unwrap()));
        assert!(!net.contains(&"10.245.3.1/24".parse().unwrap()));
        assert!(!net.contains(&"10.0.0.0/8".parse().unwrap()));
        assert!(!net.contains(&"fc00::/64".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/-1",
            "",
            "/",
            "fc00::/129",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
