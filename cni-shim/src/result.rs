//! CNI ADD results: a typed model and conversion between spec versions.
//!
//! Read first: CNI SPEC.md section 5 "ADD Success", and the reference converters in
//! containernetworking/cni pkg/types/040 and pkg/types/100. Layouts:
//! - 0.3.0, 0.3.1, 0.4.0: `ips[]` carry `version` ("4"/"6"); interfaces are name/mac/sandbox;
//!   routes are dst/gw.
//! - 1.0.0: no `ips[].version`.
//! - 1.1.0: interfaces may carry `mtu`, `socketPath`, `pciID`; routes `mtu`, `advmss`,
//!   `priority`, `table`, `scope`.
//!
//! The model is the 1.1.0 superset; [`CniResult::to_layout`] drops what a version does not
//! have and adds `ips[].version` where it is required. Pure: no I/O.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::version::SpecVersion;

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address; podman (libcni) requires it on sandbox interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container-side interfaces; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0+.
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0+.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpConfig {
    /// "4" or "6"; required before 1.0.0, absent from 1.0.0 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// CIDR notation, e.g. "10.244.3.5/24".
    pub address: String,
    /// Gateway address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Route {
    /// Destination in CIDR notation.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI ADD result (superset model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniResult {
    /// The version of the layout.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

fn non_empty(s: &mut Option<String>) {
    if s.as_deref() == Some("") {
        *s = None;
    }
}

impl CniResult {
    /// Parses a result (any layout from 0.3.0 on). Empty strings count as absent, as with Go's
    /// `omitempty`.
    pub fn from_value(value: Value) -> Result<CniResult, String> {
        if value.get("ip4").is_some() || value.get("ip6").is_some() {
            return Err("0.2.0-style result (ip4/ip6) is not supported".to_string());
        }
        let mut r: CniResult = serde_json::from_value(value).map_err(|e| e.to_string())?;
        for i in &mut r.interfaces {
            non_empty(&mut i.mac);
            non_empty(&mut i.sandbox);
            non_empty(&mut i.socket_path);
            non_empty(&mut i.pci_id);
        }
        for ip in &mut r.ips {
            non_empty(&mut ip.gateway);
            if let Some(idx) = ip.interface {
                if idx >= r.interfaces.len() {
                    return Err(format!(
                        "ips entry {} points at interface {idx}, but there are only {}",
                        ip.address,
                        r.interfaces.len()
                    ));
                }
            }
        }
        for route in &mut r.routes {
            non_empty(&mut route.gw);
        }
        Ok(r)
    }

    /// Parses result bytes (a delegate's stdout).
    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        CniResult::from_value(value)
    }

    /// The same result in `version`'s layout.
    pub fn to_layout(&self, version: SpecVersion) -> Result<CniResult, String> {
        let mut r = self.clone();
        r.cni_version = version.as_str().to_string();
        for ip in &mut r.ips {
            ip.version = if version.ips_have_version() {
                Some(ip_family(&ip.address)?.to_string())
            } else {
                None
            };
        }
        if !version.has_1_1_attributes() {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for route in &mut r.routes {
                route.mtu = None;
                route.advmss = None;
                route.priority = None;
                route.table = None;
                route.scope = None;
            }
        }
        Ok(r)
    }

    /// JSON for stdout or for a `prevResult`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Fills `mac` on sandbox interfaces that lack it, asking `lookup(sandbox, name)`.
    /// Returns the names still without a MAC.
    pub fn fill_sandbox_macs(
        &mut self,
        lookup: impl Fn(&str, &str) -> Option<String>,
    ) -> Vec<String> {
        let mut still_missing = Vec::new();
        for i in &mut self.interfaces {
            if let (Some(sandbox), None) = (&i.sandbox, &i.mac) {
                i.mac = lookup(sandbox, &i.name);
                if i.mac.is_none() {
                    still_missing.push(i.name.clone());
                }
            }
        }
        still_missing
    }

    /// Gives routes without `gw` the gateway of the first address of the same family that has
    /// one — what IPAM's interface setup installs (SPEC: "If unset, a value in `gateway` in the
    /// `ips` array may be used"). The reference bridge plugin up to at least 1.1.1 looks routes
    /// up by (dst, gw) in CHECK and reports a gateway-less route as missing otherwise.
    pub fn fill_route_gateways(&mut self) {
        let gateway_of = |v4: bool| {
            self.ips
                .iter()
                .filter_map(|ip| ip.gateway.clone())
                .find(|gw| gw.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4() == v4))
        };
        let (gw4, gw6) = (gateway_of(true), gateway_of(false));
        for route in &mut self.routes {
            if route.gw.is_none() {
                let v4 = !route.dst.contains(':');
                route.gw = if v4 { gw4.clone() } else { gw6.clone() };
            }
        }
    }

    /// Appends this (the delegate's) result to a `prevResult` handed to us on ADD: previous
    /// interfaces first, our `ips[].interface` indices shifted past them, routes appended, DNS
    /// kept from `prev` unless ours sets some.
    pub fn appended_to(self, prev: CniResult) -> CniResult {
        let shift = prev.interfaces.len();
        let mut out = prev;
        out.interfaces.extend(self.interfaces);
        out.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        out.routes.extend(self.routes);
        if !self.dns.is_empty() {
            out.dns = self.dns;
        }
        out
    }
}

fn ip_family(address: &str) -> Result<&'static str, String> {
    let ip = address.split('/').next().unwrap_or_default();
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => Ok("4"),
        Ok(IpAddr::V6(_)) => Ok("6"),
        Err(_) => Err(format!("{address:?} is not an address in CIDR notation")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;

    /// stdout of Debian's /usr/lib/cni/bridge 1.1.1, CNI_COMMAND=ADD, cniVersion 1.0.0
    /// (netconf of tests/common: bridge vxb…, host-local over 10.244.9.0/24).
    const BRIDGE_1_0_0: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "vxb1", "mac": "f2:7c:8c:5f:5c:0a"},
            {"name": "veth2a5fe7c3", "mac": "aa:0b:74:e4:10:3b"},
            {"name": "eth0", "mac": "6e:8f:6c:4b:4d:31", "sandbox": "/run/netns/pod"}
        ],
        "ips": [{"interface": 2, "address": "10.244.9.2/24", "gateway": "10.244.9.1"}],
        "routes": [{"dst": "10.244.0.0/16"}],
        "dns": {}
    }"#;

    #[test]
    fn bridge_result_round_trips_in_1_0_0() {
        let r = CniResult::from_slice(BRIDGE_1_0_0.as_bytes()).unwrap();
        let out = r.to_layout(SpecVersion::V1_0_0).unwrap().to_value();
        let mut want: Value = serde_json::from_str(BRIDGE_1_0_0).unwrap();
        want.as_object_mut().unwrap().remove("dns");
        assert_eq!(out, want);
    }

    #[test]
    fn down_to_0_4_0_adds_ip_version() {
        let r = CniResult::from_slice(BRIDGE_1_0_0.as_bytes()).unwrap();
        for v in [
            SpecVersion::V0_3_0,
            SpecVersion::V0_3_1,
            SpecVersion::V0_4_0,
        ] {
            let out = r.to_layout(v).unwrap().to_value();
            assert_eq!(out["cniVersion"], v.as_str());
            assert_eq!(out["ips"][0]["version"], "4");
            assert_eq!(out["ips"][0]["interface"], 2);
        }
    }

    #[test]
    fn up_from_0_4_0_drops_ip_version() {
        let r = CniResult::from_value(json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "mac": ""}],
            "ips": [{"version": "6", "interface": 0, "address": "fc00::2/64", "gateway": ""}],
            "routes": [{"dst": "fc00::/48", "gw": ""}]
        }))
        .unwrap();
        assert_eq!(r.interfaces[0].mac, None, "empty mac counts as absent");
        let out = r.to_layout(SpecVersion::V1_1_0).unwrap().to_value();
        assert_eq!(
            out,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                "ips": [{"interface": 0, "address": "fc00::2/64"}],
                "routes": [{"dst": "fc00::/48"}]
            })
        );
    }

    #[test]
    fn one_one_attributes_only_in_1_1_0() {
        let r = CniResult::from_value(json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mtu": 1450, "socketPath": "/s", "pciID": "p"}],
            "routes": [{"dst": "10.0.0.0/8", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 100, "scope": 0}]
        }))
        .unwrap();
        let keep = r.to_layout(SpecVersion::V1_1_0).unwrap().to_value();
        assert_eq!(keep["interfaces"][0]["mtu"], 1450);
        assert_eq!(keep["routes"][0]["table"], 100);
        let drop = r.to_layout(SpecVersion::V1_0_0).unwrap().to_value();
        assert_eq!(drop["interfaces"][0], json!({"name": "eth0"}));
        assert_eq!(drop["routes"][0], json!({"dst": "10.0.0.0/8"}));
    }

    #[test]
    fn rejects_malformed_results() {
        assert!(CniResult::from_slice(b"not json").is_err());
        assert!(CniResult::from_value(json!({"ip4": {"ip": "10.0.0.2/24"}})).is_err());
        assert!(CniResult::from_value(
            json!({"ips": [{"interface": 3, "address": "10.0.0.2/24"}]})
        )
        .is_err());
        assert!(CniResult::from_value(json!({"ips": [{"address": 5}]})).is_err());
        let bad = CniResult::from_value(json!({"ips": [{"address": "nope"}]})).unwrap();
        assert!(bad.to_layout(SpecVersion::V0_4_0).is_err());
    }

    #[test]
    fn fills_missing_sandbox_mac() {
        let mut r = CniResult::from_value(json!({
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/p"}]
        }))
        .unwrap();
        let missing = r.fill_sandbox_macs(|ns, name| {
            (ns == "/run/netns/p" && name == "eth0").then(|| "02:00:00:00:00:01".to_string())
        });
        assert!(missing.is_empty());
        assert_eq!(r.interfaces[0].mac, None, "host interfaces are left alone");
        assert_eq!(r.interfaces[1].mac.as_deref(), Some("02:00:00:00:00:01"));
    }

    #[test]
    fn fills_route_gateways_per_family() {
        let mut r = CniResult::from_value(json!({
            "ips": [{"address": "fc00::2/64", "gateway": "fc00::1"},
                    {"address": "10.244.9.2/24", "gateway": "10.244.9.1"}],
            "routes": [{"dst": "10.244.0.0/16"}, {"dst": "fc00::/48"},
                       {"dst": "192.168.0.0/16", "gw": "10.244.9.254"}]
        }))
        .unwrap();
        r.fill_route_gateways();
        assert_eq!(r.routes[0].gw.as_deref(), Some("10.244.9.1"));
        assert_eq!(r.routes[1].gw.as_deref(), Some("fc00::1"));
        assert_eq!(r.routes[2].gw.as_deref(), Some("10.244.9.254"));
    }

    #[test]
    fn appends_to_prev_result() {
        let prev = CniResult::from_value(json!({
            "interfaces": [{"name": "lo0"}],
            "ips": [{"interface": 0, "address": "127.0.0.2/8"}],
            "dns": {"nameservers": ["10.0.0.10"]}
        }))
        .unwrap();
        let ours = CniResult::from_slice(BRIDGE_1_0_0.as_bytes()).unwrap();
        let merged = ours.appended_to(prev);
        assert_eq!(merged.interfaces.len(), 4);
        assert_eq!(merged.ips[1].interface, Some(3));
        assert_eq!(merged.dns.nameservers, vec!["10.0.0.10"]);
    }
}
