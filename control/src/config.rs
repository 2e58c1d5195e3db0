//! The network configuration at `<prefix>/config`, in flannel's format.
//!
//! An operator writes it once, e.g.
//! `etcdctl put /coreos.com/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'`.
//! Field names match in any letter case (flannel decodes with Go's case-insensitive
//! `encoding/json`). Defaults and rules follow flannel's `CheckNetworkConfig`:
//! SubnetLen 24 when the Network prefix is /22 or shorter, else prefix + 2; SubnetLen
//! at most 30 and at least prefix + 2; SubnetMin/SubnetMax default to the second and
//! the last subnet and must lie inside Network on a SubnetLen boundary.
//!
//! IPv6 (flannel's `EnableIPv6`, `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`,
//! `IPv6SubnetMax`; `EnableIPv4` defaults to true, `EnableIPv6` to false) follows the
//! same rules with IPv6 numbers: IPv6SubnetLen 64 when IPv6Network is /62 or shorter,
//! else prefix + 2; at most 126 and at least prefix + 2; the network at most a /124;
//! IPv6SubnetMin/Max default to the second and the last subnet and must lie inside
//! IPv6Network on an IPv6SubnetLen boundary. The IPv6 fields are type-checked even
//! when EnableIPv6 is off (flannel's JSON decoding refuses a malformed one too).
//!
//! A dual-stack config parses (its IPv6 pool kept in [`NetworkConfig::ipv6`]); its
//! nodes lease both families in flannel's dual-stack keys ([`crate::allocator`]) and
//! carry both on either dataplane. An IPv6-only config (`EnableIPv4: false`, IPv6Network
//! required) parses too, its IPv4 pool `None` ([`NetworkConfig::ipv4`]); a `Network`
//! given with it is ignored with a note, as flannel ignores it. The agent does not run
//! one yet and says so while it waits for a config it can run.
//!
//! Differences from flannel, each logged: a missing Backend means vxlan (flannel
//! falls back to udp); an IPv6Network
//! reaching into `::/96` or `::ffff:0:0/96` is refused (flannel writes those
//! addresses in a dotted form its own lease keys cannot hold); SubnetMin above
//! SubnetMax (either family) is refused as an empty pool.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::subnet::Subnet;
use crate::subnet6::{mask6, Subnet6};
use vxmesh_dataplane::wire::Vni;

/// flannel's default VXLAN port (the Linux default; IANA's is 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// A checked network configuration with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The IPv4 pool (`Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`); `None` when
    /// `EnableIPv4` is false (an IPv6-only network: leased in flannel's IPv6-only
    /// keys, `crate::allocator::plan_ipv6_only`; no node runs one yet, see
    /// `crate::agent`).
    pub ipv4: Option<Ipv4Pool>,
    pub backend: VxlanBackend,
    /// `EnableNFTables` (flannel ≥ 0.25): masquerade/forward rules in a native nftables
    /// table instead of iptables chains.
    pub enable_nftables: bool,
    /// The IPv6 pool of a dual-stack config (`EnableIPv6`), checked with flannel's
    /// rules. Leased (dual-stack keys) and carried on either dataplane: see
    /// [`carried_families`].
    pub ipv6: Option<Ipv6Pool>,
    /// Things the operator should know (ignored or unsupported fields), one line each.
    pub notes: Vec<String>,
}

/// The IPv4 half of a config, every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Pool {
    /// `Network`, host bits cleared.
    pub network: Subnet,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `SubnetMin`: the first subnet a node may lease.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the last subnet a node may lease.
    pub subnet_max: Ipv4Addr,
}

impl Ipv4Pool {
    /// Whether `s` is a subnet this pool can hand out: right length, inside
    /// Network, between SubnetMin and SubnetMax.
    pub fn fits(&self, s: &Subnet) -> bool {
        s.prefix_len() == self.subnet_len
            && self.network.contains_subnet(s)
            && s.addr() >= self.subnet_min
            && s.addr() <= self.subnet_max
    }

    /// Number of subnets in the pool SubnetMin..=SubnetMax.
    pub fn pool_size(&self) -> u64 {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / step + 1
    }

    /// A one-line description of the pool for messages.
    pub fn describe_pool(&self) -> String {
        format!(
            "Network {} (SubnetLen {}, SubnetMin {}, SubnetMax {}: {} subnets)",
            self.network,
            self.subnet_len,
            self.subnet_min,
            self.subnet_max,
            self.pool_size()
        )
    }
}

/// The IPv6 half of a config, every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pool {
    /// `IPv6Network`, host bits cleared.
    pub network: Subnet6,
    /// `IPv6SubnetLen`.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`: the first subnet a node may lease.
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`: the last subnet a node may lease.
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Pool {
    /// Whether `s` is a subnet this pool can hand out: right length, inside
    /// IPv6Network, between IPv6SubnetMin and IPv6SubnetMax.
    pub fn fits(&self, s: &Subnet6) -> bool {
        s.prefix_len() == self.subnet_len
            && self.network.contains_subnet(s)
            && s.addr() >= self.subnet_min
            && s.addr() <= self.subnet_max
    }

    /// Number of subnets in IPv6SubnetMin..=IPv6SubnetMax (up to 2^126).
    pub fn pool_size(&self) -> u128 {
        let step = 1u128 << (128 - u32::from(self.subnet_len));
        (u128::from(self.subnet_max) - u128::from(self.subnet_min)) / step + 1
    }

    /// A one-line description of the pool for messages.
    pub fn describe_pool(&self) -> String {
        format!(
            "IPv6Network {} (IPv6SubnetLen {}, IPv6SubnetMin {}, IPv6SubnetMax {}: {} subnets)",
            self.network,
            self.subnet_len,
            self.subnet_min,
            self.subnet_max,
            self.pool_size()
        )
    }
}

/// The vxlan backend section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanBackend {
    pub vni: Vni,
    pub port: u16,
    /// Backend.MTU: as in flannel, the MTU to assume for the underlay instead of
    /// the interface's; the overlay device and FLANNEL_MTU get this minus 50.
    pub mtu: Option<u32>,
    /// Backend.DirectRouting: peers on the underlay's own L2 network are routed via
    /// their PublicIP without encapsulation (see `node_dataplane::direct`).
    pub direct_routing: bool,
}

impl VxlanBackend {
    /// The overlay device MTU (and FLANNEL_MTU), computed as flannel does: the
    /// underlay MTU (Backend.MTU when set, else the interface's) minus 50 — outer
    /// IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu.unwrap_or(underlay_mtu).saturating_sub(50)
    }
}

/// What is wrong with a config, naming the key and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "network config at {key} is not valid JSON ({detail}); write it with e.g.\n  {example}"
    )]
    Json {
        key: String,
        detail: String,
        example: String,
    },
    #[error("network config at {key}: {field}: {problem}; for example:\n  {example}")]
    Field {
        key: String,
        field: &'static str,
        problem: String,
        example: String,
    },
    #[error("no network config at {key} (is --etcd-prefix right? flannel's etcd v2 data is not visible to the v3 API); create it with:\n  {example}")]
    Missing { key: String, example: String },
}

/// The `etcdctl put` an operator can run to create a default config at `key`.
pub fn example_put(key: &str) -> String {
    format!(
        "ETCDCTL_API=3 etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
    )
}

/// Looks a field up the way Go's encoding/json does: exact name first, then any case.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

impl NetworkConfig {
    /// Parses and checks the JSON stored at `key` (the key is only used in messages).
    pub fn parse(key: &str, json: &[u8]) -> Result<NetworkConfig, ConfigError> {
        let example = example_put(key);
        let bad = |field: &'static str, problem: String| ConfigError::Field {
            key: key.to_string(),
            field,
            problem,
            example: example.clone(),
        };
        let v: Value = serde_json::from_slice(json).map_err(|e| ConfigError::Json {
            key: key.to_string(),
            detail: e.to_string(),
            example: example.clone(),
        })?;
        let Value::Object(obj) = v else {
            return Err(ConfigError::Json {
                key: key.to_string(),
                detail: "expected a JSON object".into(),
                example,
            });
        };
        let mut notes = Vec::new();

        let flag = |name: &'static str, default: bool| match field(&obj, name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(name, format!("must be true or false, found {other}"))),
        };
        let enable_ipv4 = flag("EnableIPv4", true)?;
        let enable_ipv6 = flag("EnableIPv6", false)?;
        if !enable_ipv4 && !enable_ipv6 {
            return Err(bad(
                "EnableIPv4",
                "and EnableIPv6 are both false: the config enables no pod network; set EnableIPv4 to true (or remove it) and give Network".into(),
            ));
        }
        let ipv6 = parse_ipv6(&obj, enable_ipv6, &mut notes, &bad)?;
        let enable_nftables = match field(&obj, "EnableNFTables") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(
                    "EnableNFTables",
                    format!("must be true or false, found {other}"),
                ))
            }
        };

        let ipv4 = parse_ipv4(&obj, enable_ipv4, &mut notes, &bad)?;

        let backend = parse_backend(field(&obj, "Backend"), &mut notes, &bad)?;
        Ok(NetworkConfig {
            ipv4,
            backend,
            enable_nftables,
            ipv6,
            notes,
        })
    }

    /// Whether `s` is an IPv4 subnet this config can hand out (never, IPv6-only).
    pub fn fits(&self, s: &Subnet) -> bool {
        self.ipv4.is_some_and(|p| p.fits(s))
    }

    /// The IPv4 `Network`, if the config has one.
    pub fn network(&self) -> Option<Subnet> {
        self.ipv4.map(|p| p.network)
    }

    /// A one-line description of the pools for messages: IPv4, IPv6 or both.
    pub fn describe_pool(&self) -> String {
        let v4 = self.ipv4.as_ref().map(Ipv4Pool::describe_pool);
        let v6 = self.ipv6.as_ref().map(Ipv6Pool::describe_pool);
        [v4, v6]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Whether the config is IPv6-only (`EnableIPv4` false).
    pub fn ipv6_only(&self) -> bool {
        self.ipv4.is_none()
    }
}

/// The IPv4 fields, checked and defaulted as flannel's `CheckNetworkConfig` does when
/// `enabled`; `None` when EnableIPv4 is off (a `Network` given anyway must still parse,
/// as flannel's JSON decoding requires, and is ignored with a note).
fn parse_ipv4(
    obj: &Map<String, Value>,
    enabled: bool,
    notes: &mut Vec<String>,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Option<Ipv4Pool>, ConfigError> {
    if !enabled {
        return match field(obj, "Network") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                let network = s
                    .parse::<Subnet>()
                    .map_err(|e| bad("Network", format!("{s:?}: {e}")))?;
                notes.push(format!(
                    "Network {network} is ignored: EnableIPv4 is false (an IPv6-only network)"
                ));
                Ok(None)
            }
            Some(other) => Err(bad("Network", format!("must be a string, found {other}"))),
        };
    }
    let network = match field(obj, "Network") {
        None | Some(Value::Null) => {
            return Err(bad(
                "Network",
                "is missing; it is the pod CIDR, e.g. \"10.244.0.0/16\"".into(),
            ))
        }
        Some(Value::String(s)) => s
            .parse::<Subnet>()
            .map_err(|e| bad("Network", format!("{s:?}: {e}")))?,
        Some(other) => return Err(bad("Network", format!("must be a string, found {other}"))),
    };
    // Pods cannot have these addresses, and routes for them would take the
    // host's own traffic (its loopback, multicast, or everything: 0.0.0.0/0).
    let special = [
        ("0.0.0.0/8", "\"this network\""),
        ("127.0.0.0/8", "loopback"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved and broadcast"),
    ];
    if let Some((block, what)) = special
        .iter()
        .find(|(b, _)| b.parse::<Subnet>().is_ok_and(|b| b.overlaps(&network)))
    {
        return Err(bad(
            "Network",
            format!("{network} reaches into {block} ({what} addresses, which no pod can have); give the pod CIDR, e.g. \"10.244.0.0/16\""),
        ));
    }
    if let Some(Value::String(s)) = field(obj, "Network") {
        if let Some((ip, _)) = s.split_once('/') {
            if ip.trim() != network.addr().to_string() {
                notes.push(format!("Network {s} has host bits set; using {network}"));
            }
        }
    }

    let subnet_len = match field(obj, "SubnetLen") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| bad("SubnetLen", format!("must be a number 1-30, found {v}")))?,
    };
    let subnet_len = if subnet_len == 0 {
        if network.prefix_len() > 28 {
            return Err(bad(
                "Network",
                format!("{network} is too small: the smallest useful network is a /28"),
            ));
        }
        if network.prefix_len() <= 22 {
            24
        } else {
            network.prefix_len() + 2
        }
    } else {
        if subnet_len > 30 {
            return Err(bad(
                "SubnetLen",
                format!("is {subnet_len}; it must be 30 or less (each node needs a gateway, VTEP and pod addresses)"),
            ));
        }
        if u32::from(subnet_len) < u32::from(network.prefix_len()) + 2 {
            return Err(bad(
                "SubnetLen",
                format!(
                    "is {subnet_len}; Network {network} must hold at least four subnets, so SubnetLen must be at least {}",
                    network.prefix_len() + 2
                ),
            ));
        }
        subnet_len
    };
    let subnet_size = 1u32 << (32 - u32::from(subnet_len));
    let subnet_mask = u32::MAX << (32 - u32::from(subnet_len));

    let bound = |name: &'static str, default: u32| -> Result<Ipv4Addr, ConfigError> {
        match field(obj, name) {
            None | Some(Value::Null) => Ok(Ipv4Addr::from(default)),
            Some(Value::String(s)) if s.is_empty() => Ok(Ipv4Addr::from(default)),
            Some(Value::String(s)) => {
                let ip: Ipv4Addr = s
                    .parse()
                    .map_err(|_| bad(name, format!("{s:?} is not an IPv4 address")))?;
                if ip == Ipv4Addr::UNSPECIFIED {
                    return Ok(Ipv4Addr::from(default));
                }
                if !network.contains(ip) {
                    return Err(bad(name, format!("{ip} is outside Network {network}")));
                }
                if u32::from(ip) & subnet_mask != u32::from(ip) {
                    return Err(bad(
                        name,
                        format!("{ip} is not on a /{subnet_len} boundary (SubnetLen)"),
                    ));
                }
                Ok(ip)
            }
            Some(other) => Err(bad(name, format!("must be a string, found {other}"))),
        }
    };
    let net = u32::from(network.addr());
    let subnet_min = bound("SubnetMin", net + subnet_size)?;
    let subnet_max = bound("SubnetMax", u32::from(network.last()) & subnet_mask)?;
    if subnet_min > subnet_max {
        return Err(bad(
            "SubnetMin",
            format!("{subnet_min} is above SubnetMax {subnet_max}: the pool is empty"),
        ));
    }
    Ok(Some(Ipv4Pool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    }))
}

/// The IPv6 fields: type-checked always, checked and defaulted as flannel's
/// `CheckNetworkConfig` does when `enabled`; `None` when EnableIPv6 is off.
fn parse_ipv6(
    obj: &Map<String, Value>,
    enabled: bool,
    notes: &mut Vec<String>,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Option<Ipv6Pool>, ConfigError> {
    let network = match field(obj, "IPv6Network") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some((
            s.as_str(),
            s.parse::<Subnet6>()
                .map_err(|e| bad("IPv6Network", format!("{s:?}: {e}")))?,
        )),
        Some(other) => {
            return Err(bad(
                "IPv6Network",
                format!("must be a string, found {other}"),
            ))
        }
    };
    let subnet_len = match field(obj, "IPv6SubnetLen") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .filter(|n| *n <= 128)
            .ok_or_else(|| {
                bad(
                    "IPv6SubnetLen",
                    format!("must be a number 1-126, found {v}"),
                )
            })?,
    };
    let addr = |name: &'static str| -> Result<Option<Ipv6Addr>, ConfigError> {
        match field(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                let ip: Ipv6Addr = s
                    .parse()
                    .map_err(|_| bad(name, format!("{s:?} is not an IPv6 address")))?;
                // flannel: the zero address means "not set".
                Ok((ip != Ipv6Addr::UNSPECIFIED).then_some(ip))
            }
            Some(other) => Err(bad(name, format!("must be a string, found {other}"))),
        }
    };
    let min = addr("IPv6SubnetMin")?;
    let max = addr("IPv6SubnetMax")?;
    if !enabled {
        if network.is_some() || subnet_len != 0 || min.is_some() || max.is_some() {
            notes.push(
                "IPv6Network and the other IPv6 fields are set, but EnableIPv6 is not true: they are ignored, as flannel does".into(),
            );
        }
        return Ok(None);
    }
    let Some((text, network)) = network else {
        return Err(bad(
            "IPv6Network",
            "is missing; EnableIPv6 needs the pod IPv6 CIDR, e.g. \"fd00:10:244::/56\"".into(),
        ));
    };
    if network.prefix_len() == 0 {
        return Err(bad(
            "IPv6Network",
            format!("{text:?} is the whole IPv6 space; give the pod IPv6 CIDR, e.g. \"fd00:10:244::/56\""),
        ));
    }
    let special = [("fe80::/10", "link-local"), ("ff00::/8", "multicast")];
    if let Some((block, what)) = special
        .iter()
        .find(|(b, _)| b.parse::<Subnet6>().is_ok_and(|b| b.overlaps(&network)))
    {
        return Err(bad(
            "IPv6Network",
            format!("{network} reaches into {block} ({what} addresses, which no pod can have); use a unique local range such as fd00:10:244::/56"),
        ));
    }
    let embedded = ["::/96", "::ffff:0:0/96"]
        .iter()
        .filter_map(|b| b.parse::<Subnet6>().ok())
        .any(|b| b.overlaps(&network));
    if embedded {
        return Err(bad(
            "IPv6Network",
            format!("{network} reaches into the IPv4-compatible or -mapped blocks (::/96, ::ffff:0:0/96), whose addresses flannel writes in dotted form that its lease keys cannot hold; use a unique local range such as fd00:10:244::/56"),
        ));
    }
    if let Some((ip, _)) = text.split_once('/') {
        if ip.trim().parse::<Ipv6Addr>().ok() != Some(network.addr()) {
            notes.push(format!(
                "IPv6Network {text} has host bits set; using {network}"
            ));
        }
    }
    let prefix = network.prefix_len();
    let subnet_len = if subnet_len == 0 {
        if prefix > 124 {
            return Err(bad(
                "IPv6Network",
                format!("{network} is too small: the smallest useful IPv6 network is a /124"),
            ));
        }
        if prefix <= 62 {
            64
        } else {
            prefix + 2
        }
    } else {
        if subnet_len > 126 {
            return Err(bad(
                "IPv6SubnetLen",
                format!("is {subnet_len}; it must be 126 or less (each node needs a gateway, VTEP and pod addresses)"),
            ));
        }
        if u32::from(subnet_len) < u32::from(prefix) + 2 {
            return Err(bad(
                "IPv6SubnetLen",
                format!(
                    "is {subnet_len}; IPv6Network {network} must hold at least four subnets, so IPv6SubnetLen must be at least {}",
                    prefix + 2
                ),
            ));
        }
        subnet_len
    };
    let size = 1u128 << (128 - u32::from(subnet_len));
    let subnet_mask = mask6(subnet_len);
    let bound = |name: &'static str, ip: Option<Ipv6Addr>, default: u128| {
        let Some(ip) = ip else {
            return Ok(Ipv6Addr::from(default));
        };
        if !network.contains(ip) {
            return Err(bad(name, format!("{ip} is outside IPv6Network {network}")));
        }
        if u128::from(ip) & subnet_mask != u128::from(ip) {
            return Err(bad(
                name,
                format!("{ip} is not on a /{subnet_len} boundary (IPv6SubnetLen)"),
            ));
        }
        Ok(ip)
    };
    let subnet_min = bound("IPv6SubnetMin", min, u128::from(network.addr()) + size)?;
    let subnet_max = bound(
        "IPv6SubnetMax",
        max,
        u128::from(network.last()) & subnet_mask,
    )?;
    if subnet_min > subnet_max {
        return Err(bad(
            "IPv6SubnetMin",
            format!("{subnet_min} is above IPv6SubnetMax {subnet_max}: the pool is empty"),
        ));
    }
    Ok(Some(Ipv6Pool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    }))
}

fn parse_backend(
    v: Option<&Value>,
    notes: &mut Vec<String>,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<VxlanBackend, ConfigError> {
    let default = VxlanBackend {
        vni: Vni::new(1).unwrap_or_else(|| unreachable!("1 fits in 24 bits")),
        port: DEFAULT_VXLAN_PORT,
        mtu: None,
        direct_routing: false,
    };
    let obj = match v {
        None | Some(Value::Null) => {
            notes.push(
                "no Backend in the network config: using vxlan (flannel would fall back to udp)"
                    .into(),
            );
            return Ok(default);
        }
        Some(Value::Object(o)) => o,
        Some(other) => return Err(bad("Backend", format!("must be an object, found {other}"))),
    };
    match field(obj, "Type") {
        None | Some(Value::Null) => {
            notes.push("Backend has no Type: using vxlan".into());
        }
        Some(Value::String(t)) if t.eq_ignore_ascii_case("vxlan") => {}
        Some(other) => {
            return Err(bad(
                "Backend.Type",
                format!("is {other}; vxmesh implements the vxlan backend only"),
            ))
        }
    }
    let num = |name: &'static str, max: u64| -> Result<Option<u64>, ConfigError> {
        match field(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= max)
                .map(Some)
                .ok_or_else(|| bad(name, format!("must be a number 0-{max}, found {v}"))),
        }
    };
    let vni = match num("VNI", u64::from(Vni::MAX))? {
        None | Some(0) => default.vni,
        Some(n) => Vni::new(n as u32).unwrap_or(default.vni),
    };
    let port = match num("Port", 65535)? {
        None | Some(0) => DEFAULT_VXLAN_PORT,
        Some(p) => p as u16,
    };
    let mtu = match num("MTU", 65535)? {
        None | Some(0) => None,
        Some(m) if m < 576 => {
            return Err(bad(
                "Backend.MTU",
                format!("{m} is below the IPv4 minimum of 576"),
            ))
        }
        Some(m) => Some(m as u32),
    };
    let direct_routing = match field(obj, "DirectRouting") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(
                "Backend.DirectRouting",
                format!("must be true or false, found {other}"),
            ))
        }
    };
    for flag in ["GBP", "Learning", "MacPrefix"] {
        if let Some(v) = field(obj, flag) {
            if v != &Value::Bool(false) && !v.is_null() {
                notes.push(format!(
                    "Backend.{flag}={v} is not supported by vxmesh and is ignored"
                ));
            }
        }
    }
    Ok(VxlanBackend {
        vni,
        port,
        mtu,
        direct_routing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/coreos.com/network/config";

    fn parse(s: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(KEY, s.as_bytes())
    }

    #[test]
    fn flannel_docs_example() {
        // The example from flannel's Documentation/configuration.md.
        let c = parse(
            r#"{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0", "Backend": {"Type": "udp", "Port": 7890}}"#,
        );
        assert!(matches!(
            c,
            Err(ConfigError::Field {
                field: "Backend.Type",
                ..
            })
        ));
        let c = parse(r#"{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0", "Backend": {"Type": "vxlan", "Port": 7890}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 20);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 10, 0, 0));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 99, 0, 0));
        assert_eq!(c.backend.port, 7890);
        assert_eq!(c.backend.vni.get(), 1);
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.ipv4.unwrap().pool_size(), 255);
        assert_eq!(c.backend.port, 8472);
        assert!(c.notes.is_empty());
        // small networks get prefix + 2
        let c = parse(r#"{"Network":"10.1.0.0/26"}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 28);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 1, 0, 16));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 1, 0, 48));
        assert_eq!(c.ipv4.unwrap().pool_size(), 3);
        assert_eq!(c.notes.len(), 1, "missing Backend is noted");
    }

    #[test]
    fn mtu_like_flannel() {
        // flannel: device MTU = (Backend.MTU or the interface MTU) - 50, FLANNEL_MTU the same.
        let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.backend.overlay_mtu(1500), 1450);
        assert_eq!(c.backend.overlay_mtu(9000), 8950);
        let c =
            parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#).unwrap();
        assert_eq!(c.backend.mtu, Some(1400));
        assert_eq!(c.backend.overlay_mtu(1500), 1350);
        assert_eq!(c.backend.overlay_mtu(9000), 1350);
    }

    #[test]
    fn any_letter_case() {
        let c = parse(r#"{"network":"10.5.0.0/16","SUBNETLEN":26,"backend":{"type":"VXLAN","vni":42,"port":4789}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        assert_eq!(c.backend.vni.get(), 42);
        assert_eq!(c.backend.port, 4789);
    }

    #[test]
    fn direct_routing() {
        let base = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
        assert!(!parse(base).unwrap().backend.direct_routing);
        for (json, want) in [
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
                true,
            ),
            (
                r#"{"Network":"10.244.0.0/16","backend":{"type":"vxlan","directRouting":true}}"#,
                true,
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":false}}"#,
                false,
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":null}}"#,
                false,
            ),
        ] {
            let c = parse(json).unwrap();
            assert_eq!(c.backend.direct_routing, want, "{json}");
            assert!(c.notes.is_empty(), "{:?}", c.notes);
        }
        let e = parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Backend.DirectRouting",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn flannel_dual_stack_shape_is_accepted() {
        let c = parse(r#"{"EnableIPv4":true,"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan","VNI":1,"Port":8472,"GBP":false,"DirectRouting":false}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().network.to_string(), "10.42.0.0/16");
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn ipv6_pool_with_flannels_defaults() {
        // The dual-stack shape of flannel's Documentation/configuration.md.
        let c = parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#).unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.network.to_string(), "2001:cafe:42::/56");
        assert_eq!(v6.subnet_len, 64, "/62 or shorter: /64s");
        assert_eq!(
            v6.subnet_min,
            "2001:cafe:42:1::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.subnet_max,
            "2001:cafe:42:ff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.pool_size(), 255);
        assert!(v6.fits(&"2001:cafe:42:7::/64".parse().unwrap()));
        assert!(
            !v6.fits(&"2001:cafe:42::/64".parse().unwrap()),
            "the first subnet is never handed out"
        );
        assert!(!v6.fits(&"2001:cafe:42:7::/65".parse().unwrap()));
        assert!(!v6.fits(&"2001:cafe:43:7::/64".parse().unwrap()));
        // IPv4 is carried exactly as before.
        assert_eq!(c.ipv4.unwrap().network.to_string(), "10.42.0.0/16");
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        // Smaller networks: prefix + 2; explicit bounds and length.
        let c = parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd00::/100"}"#)
            .unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 102);
        assert_eq!(v6.subnet_min, "fd00::400:0".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.subnet_max, "fd00::c00:0".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.pool_size(), 3);
        let c = parse(r#"{"enableipv6":true,"Network":"10.42.0.0/16","ipv6network":"fd00:10::/48","IPV6SUBNETLEN":60,"IPv6SubnetMin":"fd00:10:0:10::","IPv6SubnetMax":"fd00:10:0:f0::"}"#).unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 60);
        assert_eq!(v6.pool_size(), 15);
        assert!(
            v6.describe_pool().contains("IPv6SubnetLen 60"),
            "{}",
            v6.describe_pool()
        );
        // "::" and "" mean "not set", as flannel's IsEmpty does.
        let c = parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd00::/56","IPv6SubnetMin":"::","IPv6SubnetMax":""}"#).unwrap();
        assert_eq!(c.ipv6.unwrap().pool_size(), 255);
    }

    #[test]
    fn dual_stack_and_ipv6_only_configs_parse() {
        // Dual stack is no difference from flannel any more: nothing to warn about.
        let c = parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(c.ipv6.unwrap().pool_size(), 255);
        assert!(!c.ipv6_only());
        // IPv6-only: no IPv4 pool, flannel's IPv6 defaults.
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert!(c.ipv6_only() && c.ipv4.is_none() && c.network().is_none());
        let v6 = c.ipv6.unwrap();
        assert_eq!((v6.subnet_len, v6.pool_size()), (64, 255));
        assert!(!c.fits(&"10.244.1.0/24".parse().unwrap()));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(c.describe_pool(), v6.describe_pool());
        // A Network beside it is ignored, as flannel ignores it, with a note; it must
        // still be an IPv4 CIDR.
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd00::/56"}"#).unwrap();
        assert!(c.ipv4.is_none());
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("Network 10.42.0.0/16 is ignored")),
            "{:?}",
            c.notes
        );
        let e = parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"Network":"ten","IPv6Network":"fd00::/56"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Network",
                    ..
                }
            ),
            "{e}"
        );
        // IPv6-only without an IPv6Network: the IPv6 pool's check names it.
        let e = parse(r#"{"EnableIPv4":false,"EnableIPv6":true}"#).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "IPv6Network",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "IPv6SubnetLen",
                    ..
                }
            ),
            "{e}"
        );
        // IPv6 fields without EnableIPv6: ignored, as flannel does, and said.
        let c = parse(
            r#"{"Network":"10.42.0.0/16","IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(c.ipv6.is_none());
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(
            c.notes[0].contains("EnableIPv6 is not true"),
            "{}",
            c.notes[0]
        );
        // IPv6Network host bits: masked and noted.
        let c = parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd00::1/56","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv6.unwrap().network.to_string(), "fd00::/56");
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(c.notes[0].contains("host bits"), "{:?}", c.notes);
    }

    #[test]
    fn bad_ipv6_values_name_the_field() {
        let v4 = r#""Network":"10.42.0.0/16""#;
        let cases = [
            (r#""EnableIPv6":true"#, "IPv6Network"),
            (r#""EnableIPv6":true,"IPv6Network":"fd00::""#, "IPv6Network"),
            (
                r#""EnableIPv6":true,"IPv6Network":"10.0.0.0/8""#,
                "IPv6Network",
            ),
            (r#""EnableIPv6":true,"IPv6Network":"::/0""#, "IPv6Network"),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/125""#,
                "IPv6Network",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"::ffff:0:0/96""#,
                "IPv6Network",
            ),
            (r#""EnableIPv6":true,"IPv6Network":"::/64""#, "IPv6Network"),
            (r#""EnableIPv6":true,"IPv6Network":"::/8""#, "IPv6Network"),
            (r#""EnableIPv6":true,"IPv6Network":56"#, "IPv6Network"),
            // Link-local and multicast blocks: no pod has such an address.
            (
                r#""EnableIPv6":true,"IPv6Network":"fe80::/56""#,
                "IPv6Network",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"ff05::/64""#,
                "IPv6Network",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/6""#,
                "IPv6Network",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127"#,
                "IPv6SubnetLen",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":57"#,
                "IPv6SubnetLen",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":"64""#,
                "IPv6SubnetLen",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":200"#,
                "IPv6SubnetLen",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::""#,
                "IPv6SubnetMin",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:1::1""#,
                "IPv6SubnetMin",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:100::""#,
                "IPv6SubnetMax",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"10.0.0.1""#,
                "IPv6SubnetMax",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::""#,
                "IPv6SubnetMin",
            ),
            // type errors are refused even with EnableIPv6 off, as Go's decoder does
            (r#""IPv6Network":"garbage""#, "IPv6Network"),
            (r#""IPv6SubnetMin":7"#, "IPv6SubnetMin"),
            (r#""EnableIPv6":"yes""#, "EnableIPv6"),
            (r#""EnableIPv4":1"#, "EnableIPv4"),
            (r#""EnableIPv4":false,"EnableIPv6":false"#, "EnableIPv4"),
        ];
        for (extra, want) in cases {
            let json = format!("{{{v4},{extra}}}");
            match parse(&json) {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, want, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn enable_nftables_chooses_the_backend() {
        let c =
            parse(r#"{"Network":"10.42.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        assert!(c.enable_nftables);
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        for off in [
            r#"{"Network":"10.42.0.0/16","enablenftables":false,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.42.0.0/16","EnableNFTables":null,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.42.0.0/16","Backend":{"Type":"vxlan"}}"#,
        ] {
            let c = parse(off).unwrap();
            assert!(!c.enable_nftables, "{off}");
            assert!(c.notes.is_empty(), "{:?}", c.notes);
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (r#"{"Backend":{"Type":"vxlan"}}"#, "Network"),
            (r#"{"Network":"10.244.0.0"}"#, "Network"),
            (r#"{"Network":42}"#, "Network"),
            (r#"{"Network":"10.244.0.0/30"}"#, "Network"),
            // Everything, loopback, multicast, reserved: a route for any of them takes
            // the host's own traffic into the overlay.
            (r#"{"Network":"0.0.0.0/0"}"#, "Network"),
            (r#"{"Network":"127.0.0.0/16"}"#, "Network"),
            (r#"{"Network":"224.0.0.0/16"}"#, "Network"),
            (r#"{"Network":"192.0.0.0/2"}"#, "Network"),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#, "SubnetLen"),
            (r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#, "SubnetLen"),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
                "SubnetLen",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.5"}"#,
                "SubnetMax",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "Port",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
                "Backend",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#,
                "EnableIPv4",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableNFTables":"true"}"#,
                "EnableNFTables",
            ),
        ];
        for (json, want) in cases {
            match parse(json) {
                Err(ConfigError::Field {
                    field, ref example, ..
                }) => {
                    assert_eq!(field, want, "{json}");
                    assert!(example.contains("etcdctl put /coreos.com/network/config"));
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(matches!(parse("not json"), Err(ConfigError::Json { .. })));
        assert!(matches!(parse("[1]"), Err(ConfigError::Json { .. })));
        let msg = parse(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("SubnetLen") && msg.contains("etcdctl put"),
            "{msg}"
        );
    }

    #[test]
    fn host_bits_are_masked_and_noted() {
        let c = parse(r#"{"Network":"10.244.1.5/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().network.to_string(), "10.244.0.0/16");
        assert_eq!(c.notes.len(), 1);
    }

    #[test]
    fn fits() {
        let c = parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0"}"#,
        )
        .unwrap();
        assert!(c.fits(&"10.244.10.0/24".parse().unwrap()));
        assert!(c.fits(&"10.244.20.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.244.21.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.244.9.0/24".parse().unwrap()));
        assert!(!c.fits(&"10.244.10.0/25".parse().unwrap()));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn valid_ipv6_pools_are_consistent(len in 1u8..=128, sub in 0u8..=128, a in 0u128..) {
            let net = std::net::Ipv6Addr::from(a);
            let json = format!(r#"{{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"{net}/{len}","IPv6SubnetLen":{sub}}}"#);
            if let Ok(c) = parse(&json) {
                let v6 = c.ipv6.unwrap();
                proptest::prop_assert!(v6.subnet_len <= 126 && v6.subnet_len >= v6.network.prefix_len() + 2);
                proptest::prop_assert!(v6.subnet_min <= v6.subnet_max);
                proptest::prop_assert!(v6.pool_size() >= 3);
                proptest::prop_assert!(v6.network.contains(v6.subnet_min));
                proptest::prop_assert!(v6.network.contains(v6.subnet_max));
                let first = Subnet6::new_exact(v6.subnet_min, v6.subnet_len).unwrap();
                let last = Subnet6::new_exact(v6.subnet_max, v6.subnet_len).unwrap();
                proptest::prop_assert!(v6.fits(&first) && v6.fits(&last));
                proptest::prop_assert!(Subnet6::from_key_form(&first.key_form()).is_ok());
            }
        }

        #[test]
        fn valid_configs_have_consistent_pools(len in 8u8..=28, sub in 0u8..=30) {
            let json = format!(r#"{{"Network":"10.0.0.0/{len}","SubnetLen":{sub}}}"#);
            if let Ok(c) = parse(&json) {
                proptest::prop_assert!(c.ipv4.unwrap().subnet_min <= c.ipv4.unwrap().subnet_max);
                proptest::prop_assert!(c.ipv4.unwrap().pool_size() >= 1);
                proptest::prop_assert!(c.ipv4.unwrap().network.contains(c.ipv4.unwrap().subnet_min));
                proptest::prop_assert!(c.ipv4.unwrap().network.contains(c.ipv4.unwrap().subnet_max));
            }
        }
    }
}
