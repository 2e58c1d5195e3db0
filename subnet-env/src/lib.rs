//! flannel's subnet file (`/run/flannel/subnet.env`): the one model of it, for every
//! vxmesh reader and writer.
//!
//! Read first: ../shared/reference/flannel-compat.md "subnet.env". vxmeshd writes the file
//! when it holds a lease and reads it back on restart (its subnet hint, as flanneld does);
//! the CNI plugin reads it on every call; Docker's `--bip`/`--mtu` and flannel's own plugin
//! read it too. One set of line rules ([`entries`]) serves every reader here, so a file one
//! side accepts cannot silently mean something else to the other.
//!
//! Format, as flanneld writes it (`WriteSubnetFile`):
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//! with `FLANNEL_IPV6_NETWORK` / `FLANNEL_IPV6_SUBNET` for IPv6. FLANNEL_NETWORK may be a
//! comma-separated list; FLANNEL_SUBNET is the subnet's first address (the bridge's gateway)
//! with the subnet's length. Line rules, the subset of a dotenv file flanneld's own reader
//! (godotenv) takes that these keys can need: `#` starts a comment (values never contain
//! one), blank lines are skipped, whitespace around keys and values is dropped, an
//! `export ` prefix and one pair of matching quotes around a value are allowed, unknown keys
//! are ignored, and the last line of a key wins.
//!
//! Pure except [`write_atomic`] and [`SubnetEnv::write_atomic`]. std plus `ipnetwork`
//! (which has no dependencies): the CNI plugin stays small.

pub mod cidr;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

pub use cidr::CidrError;
pub use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// The file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK: the cluster network(s), IPv4, duplicates folded.
    pub networks: Vec<Ipv4Network>,
    /// FLANNEL_SUBNET as written: the gateway address with the node subnet's length
    /// (`10.244.3.1/24`); its `network()` is the subnet.
    pub subnet: Option<Ipv4Network>,
    /// FLANNEL_IPV6_NETWORK.
    pub ipv6_networks: Vec<Ipv6Network>,
    /// FLANNEL_IPV6_SUBNET, gateway address as written.
    pub ipv6_subnet: Option<Ipv6Network>,
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
    /// FLANNEL_SUBNET (or its IPv6 twin) does not lie inside FLANNEL_NETWORK.
    Inconsistent {
        /// The subnet, as written.
        subnet: IpNetwork,
        /// The networks.
        networks: Vec<IpNetwork>,
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

impl std::error::Error for SubnetEnvError {}

/// The `(key, value)` pairs of a subnet file in order, under the line rules of the crate
/// documentation. Lines without `=` are skipped.
pub fn entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or_default().trim();
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        let (key, value) = line.split_once('=')?;
        Some((key.trim(), unquote(value.trim())))
    })
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

fn invalid(key: &'static str, value: &str, why: impl ToString) -> SubnetEnvError {
    SubnetEnvError::Invalid {
        key,
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// A comma-separated list of prefixes of one family, duplicates (same network) folded.
fn list<N: Copy>(
    key: &'static str,
    value: &str,
    parse: impl Fn(&str) -> Result<N, CidrError>,
    same: impl Fn(&N, &N) -> bool,
) -> Result<Vec<N>, SubnetEnvError> {
    let mut out: Vec<N> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = parse(part).map_err(|e| invalid(key, value, e))?;
        if !out.iter().any(|n| same(n, &net)) {
            out.push(net);
        }
    }
    if out.is_empty() {
        return Err(invalid(key, value, "empty"));
    }
    Ok(out)
}

fn same_v4(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.network() == b.network() && a.prefix() == b.prefix()
}

fn same_v6(a: &Ipv6Network, b: &Ipv6Network) -> bool {
    a.network() == b.network() && a.prefix() == b.prefix()
}

/// Whether `inner` (its network and length) lies inside `outer`.
fn inside(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && inner.prefix() >= outer.prefix()
        && outer.contains(inner.network())
}

impl SubnetEnv {
    /// What vxmeshd writes for a lease on `subnet` (host bits ignored) of cluster
    /// `network`: FLANNEL_SUBNET is the subnet's first host address, as flanneld writes it.
    pub fn for_lease(network: Ipv4Network, subnet: Ipv4Network, mtu: u32, ipmasq: bool) -> Self {
        let base = u32::from(subnet.network());
        let gateway = if subnet.prefix() < 32 { base + 1 } else { base };
        // Cannot fail: the length comes from a valid IPv4 network.
        let subnet = Ipv4Network::new(Ipv4Addr::from(gateway), subnet.prefix()).unwrap_or(subnet);
        SubnetEnv {
            networks: vec![network],
            subnet: Some(subnet),
            ipv6_networks: Vec::new(),
            ipv6_subnet: None,
            mtu,
            ipmasq,
        }
    }

    /// What vxmeshd writes on an IPv6-only network before [`SubnetEnv::with_ipv6`]
    /// adds the lease: no IPv4 lines (flanneld writes them only with EnableIPv4).
    pub fn for_ipv6_only_lease(mtu: u32, ipmasq: bool) -> Self {
        SubnetEnv {
            networks: Vec::new(),
            subnet: None,
            ipv6_networks: Vec::new(),
            ipv6_subnet: None,
            mtu,
            ipmasq,
        }
    }

    /// Adds a dual-stack (or IPv6-only) lease's IPv6 lines: `FLANNEL_IPV6_NETWORK` and
    /// `FLANNEL_IPV6_SUBNET`, the subnet's first host address (the bridge's gateway) with
    /// the subnet's length, as flanneld writes them.
    pub fn with_ipv6(mut self, network: Ipv6Network, subnet: Ipv6Network) -> Self {
        let base = u128::from(subnet.network());
        let gateway = if subnet.prefix() < 128 {
            base + 1
        } else {
            base
        };
        // Cannot fail: the length comes from a valid IPv6 network.
        let subnet = Ipv6Network::new(Ipv6Addr::from(gateway), subnet.prefix()).unwrap_or(subnet);
        self.ipv6_networks = vec![network];
        self.ipv6_subnet = Some(subnet);
        self
    }

    /// Parses a whole file as the CNI plugin needs it: at least one network and subnet, the
    /// MTU (68–65535) and the masquerade flag (`true`/`false`), each subnet inside its
    /// network. Errors name the key and what was wrong.
    pub fn parse(bytes: &[u8]) -> Result<SubnetEnv, SubnetEnvError> {
        let text = String::from_utf8_lossy(bytes);
        let mut networks = Vec::new();
        let mut subnet = None;
        let mut ipv6_networks = Vec::new();
        let mut ipv6_subnet = None;
        let mut mtu = None;
        let mut ipmasq = None;

        for (key, value) in entries(&text) {
            match key {
                "FLANNEL_NETWORK" => {
                    networks = list("FLANNEL_NETWORK", value, cidr::parse_v4, same_v4)?;
                }
                "FLANNEL_SUBNET" => {
                    let net =
                        cidr::parse_v4(value).map_err(|e| invalid("FLANNEL_SUBNET", value, e))?;
                    subnet = Some(net);
                }
                "FLANNEL_IPV6_NETWORK" => {
                    ipv6_networks = list("FLANNEL_IPV6_NETWORK", value, cidr::parse_v6, same_v6)?;
                }
                "FLANNEL_IPV6_SUBNET" => {
                    let net = cidr::parse_v6(value)
                        .map_err(|e| invalid("FLANNEL_IPV6_SUBNET", value, e))?;
                    ipv6_subnet = Some(net);
                }
                "FLANNEL_MTU" => {
                    let parsed = value
                        .parse::<u32>()
                        .ok()
                        .filter(|m| (68..=65535).contains(m));
                    mtu = Some(parsed.ok_or_else(|| {
                        invalid(
                            "FLANNEL_MTU",
                            value,
                            "expected an integer between 68 and 65535",
                        )
                    })?);
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(invalid("FLANNEL_IPMASQ", value, "expected true or false"))
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
        let (Some(mtu), Some(ipmasq), true) = (mtu, ipmasq, absent.is_empty()) else {
            return Err(SubnetEnvError::Missing(absent));
        };

        let v4 = (
            subnet.map(IpNetwork::V4),
            networks
                .iter()
                .map(|&n| IpNetwork::V4(n))
                .collect::<Vec<_>>(),
        );
        let v6 = (
            ipv6_subnet.map(IpNetwork::V6),
            ipv6_networks.iter().map(|&n| IpNetwork::V6(n)).collect(),
        );
        for (sub, nets) in [v4, v6] {
            let Some(sub) = sub else { continue };
            if !nets.is_empty() && !nets.iter().any(|&n| inside(n, sub)) {
                return Err(SubnetEnvError::Inconsistent {
                    subnet: sub,
                    networks: nets,
                });
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

    /// The file's text, in flanneld's order and format; keys without a value are left out.
    pub fn render(&self) -> String {
        let join = |nets: Vec<String>| nets.join(",");
        let mut out = String::new();
        if !self.networks.is_empty() {
            let nets = join(self.networks.iter().map(ToString::to_string).collect());
            out.push_str(&format!("FLANNEL_NETWORK={nets}\n"));
        }
        if let Some(s) = self.subnet {
            out.push_str(&format!("FLANNEL_SUBNET={s}\n"));
        }
        if !self.ipv6_networks.is_empty() {
            let nets = join(self.ipv6_networks.iter().map(ToString::to_string).collect());
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={nets}\n"));
        }
        if let Some(s) = self.ipv6_subnet {
            out.push_str(&format!("FLANNEL_IPV6_SUBNET={s}\n"));
        }
        out.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        out
    }

    /// Writes the file atomically (mode 0644), creating its directory if needed.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        write_atomic(path, self.render().as_bytes(), 0o644)
    }
}

/// The IPv4 subnet a node held, from FLANNEL_SUBNET alone (as flanneld reads its file on
/// restart: the other keys may be absent or stale). `Ok(None)` when the key is absent; an
/// error naming the value when it is there but unusable, so the caller can say why it
/// lost the hint. The address is as written; its `network()` is the subnet.
pub fn subnet_hint(bytes: &[u8]) -> Result<Option<Ipv4Network>, SubnetEnvError> {
    let text = String::from_utf8_lossy(bytes);
    let Some((_, value)) = entries(&text)
        .filter(|(k, _)| *k == "FLANNEL_SUBNET")
        .last()
    else {
        return Ok(None);
    };
    cidr::parse_v4(value)
        .map(Some)
        .map_err(|e| invalid("FLANNEL_SUBNET", value, e))
}

/// The IPv6 subnet a dual-stack node held, from FLANNEL_IPV6_SUBNET alone (flanneld
/// reads it on restart as its previous IPv6 subnet), with the same rules as
/// [`subnet_hint`]: `Ok(None)` when absent, an error naming an unusable value.
pub fn ipv6_subnet_hint(bytes: &[u8]) -> Result<Option<Ipv6Network>, SubnetEnvError> {
    let text = String::from_utf8_lossy(bytes);
    let Some((_, value)) = entries(&text)
        .filter(|(k, _)| *k == "FLANNEL_IPV6_SUBNET")
        .last()
    else {
        return Ok(None);
    };
    cidr::parse_v6(value)
        .map(Some)
        .map_err(|e| invalid("FLANNEL_IPV6_SUBNET", value, e))
}

/// Writes `data` to `path` so readers see the old file or the new one, never a partial
/// write: a temporary file in the same directory, fsync, rename over `path`, fsync of the
/// directory. The temporary file is removed when a step fails.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
