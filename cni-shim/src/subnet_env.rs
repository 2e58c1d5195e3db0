//! Parser for flannel's `subnet.env`, the file vxmeshd (or flanneld) writes for this node.
//!
//! Read first: ../shared/reference/flannel-compat.md "subnet.env". Format: `KEY=VALUE` lines;
//! FLANNEL_NETWORK (comma-separated list allowed), FLANNEL_SUBNET (gateway address + prefix,
//! e.g. `10.244.3.1/24`), FLANNEL_MTU, FLANNEL_IPMASQ, optionally FLANNEL_IPV6_NETWORK and
//! FLANNEL_IPV6_SUBNET. Like flannel's plugin, at least one network, one subnet, the MTU and the
//! masquerade flag are required. Pure: takes the file's bytes.

use std::fmt;

use crate::ipnet::IpNet;

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK: the whole cluster network(s), IPv4.
    pub networks: Vec<IpNet>,
    /// FLANNEL_SUBNET: this node's pod subnet, written as gateway address/prefix.
    pub subnet: Option<IpNet>,
    /// FLANNEL_IPV6_NETWORK.
    pub ipv6_networks: Vec<IpNet>,
    /// FLANNEL_IPV6_SUBNET.
    pub ipv6_subnet: Option<IpNet>,
    /// FLANNEL_MTU: the MTU for pod interfaces.
    pub mtu: u32,
    /// FLANNEL_IPMASQ: true when the agent masquerades itself (then the bridge must not).
    pub ipmasq: bool,
}

/// Why the file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetEnvError {
    /// Required keys absent (the agent has not finished writing it, or wrote an old format).
    Missing(Vec<&'static str>),
    /// A key with a value that does not parse.
    Invalid {
        /// The key.
        key: &'static str,
        /// The value as found.
        value: String,
        /// Why it is invalid.
        why: String,
    },
    /// FLANNEL_SUBNET does not lie inside FLANNEL_NETWORK.
    Inconsistent {
        /// The subnet.
        subnet: IpNet,
        /// The networks.
        networks: Vec<IpNet>,
    },
}

impl fmt::Display for SubnetEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubnetEnvError::Missing(keys) => write!(f, "missing {}", keys.join(", ")),
            SubnetEnvError::Invalid { key, value, why } => {
                write!(f, "invalid {key}={value:?}: {why}")
            }
            SubnetEnvError::Inconsistent { subnet, networks } => {
                let nets: Vec<String> = networks.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "FLANNEL_SUBNET {subnet} is not inside FLANNEL_NETWORK {}",
                    nets.join(",")
                )
            }
        }
    }
}

fn cidrs(key: &'static str, value: &str, v4: bool) -> Result<Vec<IpNet>, SubnetEnvError> {
    let mut out: Vec<IpNet> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = cidr(key, part, v4)?;
        if !out.iter().any(|n| n.network() == net.network()) {
            out.push(net);
        }
    }
    if out.is_empty() {
        return Err(SubnetEnvError::Invalid {
            key,
            value: value.to_string(),
            why: "empty".to_string(),
        });
    }
    Ok(out)
}

fn cidr(key: &'static str, value: &str, v4: bool) -> Result<IpNet, SubnetEnvError> {
    let invalid = |why: String| SubnetEnvError::Invalid {
        key,
        value: value.to_string(),
        why,
    };
    let net: IpNet = value.parse().map_err(invalid)?;
    if net.is_ipv4() != v4 {
        return Err(invalid(format!(
            "expected an IPv{} prefix",
            if v4 { 4 } else { 6 }
        )));
    }
    Ok(net)
}

/// Parses the bytes of a subnet.env file.
pub fn parse(bytes: &[u8]) -> Result<SubnetEnv, SubnetEnvError> {
    let text = String::from_utf8_lossy(bytes);
    let mut networks = Vec::new();
    let mut subnet = None;
    let mut ipv6_networks = Vec::new();
    let mut ipv6_subnet = None;
    let mut mtu = None;
    let mut ipmasq = None;

    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "FLANNEL_NETWORK" => networks = cidrs("FLANNEL_NETWORK", value, true)?,
            "FLANNEL_SUBNET" => subnet = Some(cidr("FLANNEL_SUBNET", value, true)?),
            "FLANNEL_IPV6_NETWORK" => {
                ipv6_networks = cidrs("FLANNEL_IPV6_NETWORK", value, false)?;
            }
            "FLANNEL_IPV6_SUBNET" => {
                ipv6_subnet = Some(cidr("FLANNEL_IPV6_SUBNET", value, false)?);
            }
            "FLANNEL_MTU" => {
                let parsed = value
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (68..=65535).contains(m));
                mtu = Some(parsed.ok_or_else(|| SubnetEnvError::Invalid {
                    key: "FLANNEL_MTU",
                    value: value.to_string(),
                    why: "expected an integer between 68 and 65535".to_string(),
                })?);
            }
            "FLANNEL_IPMASQ" => {
                ipmasq = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(SubnetEnvError::Invalid {
                            key: "FLANNEL_IPMASQ",
                            value: value.to_string(),
                            why: "expected true or false".to_string(),
                        })
                    }
                });
            }
            _ => {}
        }
    }

    let mut absent = Vec::new();
    if networks.is_empty() && ipv6_networks.is_empty() {
        absent.push("FLANNEL_NETWORK");
    }
    if subnet.is_none() && ipv6_subnet.is_none() {
        absent.push("FLANNEL_SUBNET");
    }
    if mtu.is_none() {
        absent.push("FLANNEL_MTU");
    }
    if ipmasq.is_none() {
        absent.push("FLANNEL_IPMASQ");
    }
    let (Some(mtu), Some(ipmasq)) = (mtu, ipmasq) else {
        return Err(SubnetEnvError::Missing(absent));
    };
    if !absent.is_empty() {
        return Err(SubnetEnvError::Missing(absent));
    }

    for (sub, nets) in [(subnet, &networks), (ipv6_subnet, &ipv6_networks)] {
        if let Some(sub) = sub {
            if !nets.is_empty() && !nets.iter().any(|n| n.contains(&sub)) {
                return Err(SubnetEnvError::Inconsistent {
                    subnet: sub,
                    networks: nets.clone(),
                });
            }
        }
    }

    Ok(SubnetEnv {
        networks,
        subnet,
        ipv6_networks,
        ipv6_subnet,
        mtu,
        ipmasq,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The file flanneld writes (example from flannel's documentation).
    const FLANNELD: &[u8] = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn parses_flanneld_output() {
        let env = parse(FLANNELD).unwrap();
        assert_eq!(env.networks.len(), 1);
        assert_eq!(env.networks[0].to_string(), "10.244.0.0/16");
        assert_eq!(env.subnet.unwrap().to_string(), "10.244.3.1/24");
        assert_eq!(env.subnet.unwrap().network().to_string(), "10.244.3.0/24");
        assert_eq!(env.mtu, 1450);
        assert!(!env.ipmasq);
    }

    #[test]
    fn parses_dual_stack_and_comments() {
        let text = b"# written by vxmeshd\nFLANNEL_NETWORK=10.5.0.0/16,10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1472   # underlay 1522\nFLANNEL_IPMASQ=true\n";
        let env = parse(text).unwrap();
        assert_eq!(env.networks.len(), 1, "duplicates are folded");
        assert_eq!(
            env.ipv6_subnet.unwrap().network().to_string(),
            "fc00:0:0:1::/64"
        );
        assert!(env.ipmasq);
        assert_eq!(env.mtu, 1472);
    }

    #[test]
    fn reports_every_missing_key() {
        assert_eq!(
            parse(b"").unwrap_err(),
            SubnetEnvError::Missing(vec![
                "FLANNEL_NETWORK",
                "FLANNEL_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ"
            ])
        );
        assert_eq!(
            parse(
                b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n"
            )
            .unwrap_err(),
            SubnetEnvError::Missing(vec!["FLANNEL_IPMASQ"])
        );
    }

    #[test]
    fn names_the_invalid_key() {
        let e = parse(b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\nFLANNEL_IPMASQ=false\n").unwrap_err();
        assert!(matches!(
            e,
            SubnetEnvError::Invalid {
                key: "FLANNEL_MTU",
                ..
            }
        ));
        let e = parse(b"FLANNEL_SUBNET=fc00::1/64\n").unwrap_err();
        assert!(matches!(
            e,
            SubnetEnvError::Invalid {
                key: "FLANNEL_SUBNET",
                ..
            }
        ));
        let e = parse(b"FLANNEL_IPMASQ=yes\n").unwrap_err();
        assert!(e.to_string().contains("FLANNEL_IPMASQ"));
    }

    #[test]
    fn subnet_outside_network_is_inconsistent() {
        let e = parse(b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap_err();
        assert!(matches!(e, SubnetEnvError::Inconsistent { .. }));
    }

    #[test]
    fn survives_binary_garbage() {
        let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        assert!(parse(&junk).is_err());
    }
}
