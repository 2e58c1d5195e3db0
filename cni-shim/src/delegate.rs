//! Rendering the delegate plugin's configuration from the netconf and subnet.env.
//!
//! Read first: ../shared/reference/flannel-compat.md "flannel CNI plugin" (the defaults) and
//! CNI SPEC.md section 4 "Plugin Delegation". The defaults are flannel's: type `bridge` with
//! bridge `cni0`, `isGateway` true, `ipMasq` = !FLANNEL_IPMASQ, `mtu` = FLANNEL_MTU, and
//! host-local IPAM over the node's subnet with a route to the cluster network. Keys in the
//! netconf's `delegate` object override those defaults; the netconf's `ipam` object is the base
//! of the IPAM section, but `ranges` always come from subnet.env (the node may only hand out
//! addresses from its own lease) and the cluster network routes are appended to `ipam.routes`.
//! Pure: no I/O.

use serde_json::{json, Map, Value};

use vxmesh_subnet_env::SubnetEnv;

use crate::netconf::NetConf;
use crate::version::SpecVersion;

/// The bridge name flannel's bridge delegate uses by default.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Builds the delegate configuration for `version` (the version negotiated with the delegate).
pub fn render(netconf: &NetConf, env: &SubnetEnv, version: SpecVersion) -> Map<String, Value> {
    let mut out = Map::new();
    let delegate_type = netconf.delegate_type().to_string();
    out.insert("type".into(), Value::String(delegate_type.clone()));
    if delegate_type == "bridge" {
        out.insert("bridge".into(), Value::String(DEFAULT_BRIDGE.into()));
        out.insert("isGateway".into(), Value::Bool(true));
    }
    out.insert("ipMasq".into(), Value::Bool(!env.ipmasq));
    out.insert("mtu".into(), Value::from(env.mtu));
    for (k, v) in &netconf.delegate {
        out.insert(k.clone(), v.clone());
    }
    out.insert("name".into(), Value::String(netconf.name.clone()));
    out.insert("cniVersion".into(), Value::String(version.as_str().into()));
    out.insert("ipam".into(), Value::Object(render_ipam(netconf, env)));
    if let Some(rc) = &netconf.runtime_config {
        out.insert("runtimeConfig".into(), rc.clone());
    }
    if let Some(args) = &netconf.args {
        out.insert("args".into(), args.clone());
    }
    out
}

fn render_ipam(netconf: &NetConf, env: &SubnetEnv) -> Map<String, Value> {
    let mut ipam = netconf.ipam.clone();
    if !ipam.contains_key("type") {
        ipam.insert("type".into(), Value::String("host-local".into()));
    }

    // FLANNEL_SUBNET names the gateway; the range is its network.
    let v4 = env.subnet.map(|s| cidr(s.network(), s.prefix()));
    let v6 = env.ipv6_subnet.map(|s| cidr(s.network(), s.prefix()));
    let ranges: Vec<Value> = [v4, v6]
        .into_iter()
        .flatten()
        .map(|subnet| json!([{ "subnet": subnet }]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));

    let mut routes: Vec<Value> = ipam
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let v4 = env.networks.iter().map(|n| cidr(n.network(), n.prefix()));
    let v6 = env
        .ipv6_networks
        .iter()
        .map(|n| cidr(n.network(), n.prefix()));
    for dst in v4.chain(v6) {
        let present = routes
            .iter()
            .any(|r| r.get("dst").and_then(Value::as_str) == Some(dst.as_str()));
        if !present {
            routes.push(json!({ "dst": dst }));
        }
    }
    ipam.insert("routes".into(), Value::Array(routes));
    ipam
}

/// `addr/len` text.
fn cidr(addr: impl std::fmt::Display, len: u8) -> String {
    format!("{addr}/{len}")
}

/// Sets the `cniVersion` a saved delegate config is executed with, and `prevResult` if given
/// (already converted to that version's layout). Removes a stale `prevResult` otherwise.
pub fn for_invocation(
    saved: &Map<String, Value>,
    version: SpecVersion,
    prev_result: Option<Value>,
) -> Map<String, Value> {
    let mut out = saved.clone();
    out.insert("cniVersion".into(), Value::String(version.as_str().into()));
    match prev_result {
        Some(prev) => {
            out.insert("prevResult".into(), prev);
        }
        None => {
            out.remove("prevResult");
        }
    }
    out
}

/// The IPv4 subnet a saved delegate config hands out (`ipam.ranges[0][0].subnet`), if any.
pub fn saved_subnet(saved: &Map<String, Value>) -> Option<String> {
    saved_ranges(saved).find(|s| !s.contains(':'))
}

/// The IPv6 subnet a saved delegate config hands out (a dual-stack node's second range).
pub fn saved_subnet6(saved: &Map<String, Value>) -> Option<String> {
    saved_ranges(saved).find(|s| s.contains(':'))
}

/// The first subnet of every range set of a saved delegate config.
fn saved_ranges(saved: &Map<String, Value>) -> impl Iterator<Item = String> + '_ {
    saved
        .get("ipam")
        .and_then(|i| i.get("ranges"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|set| set.get(0)?.get("subnet")?.as_str())
        .map(str::to_string)
}

/// A pod subnet the attachment was made from that is no longer the node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetChange {
    /// The range the pod's address came from, as saved at ADD.
    pub was: String,
    /// The node's subnet of that family now, `None` when the node no longer carries the
    /// family (EnableIPv6 turned off).
    pub now: Option<String>,
}

/// Whether the node's lease moved under an attachment, family by family: each range the
/// saved delegate config handed out must still be the node's subnet of its family. A family
/// the node gained since ADD (EnableIPv6 turned on) is not a change: the pod's addresses all
/// still route, it just has no address of the new family until it is recreated.
pub fn subnet_change(saved: &Map<String, Value>, env: &SubnetEnv) -> Option<SubnetChange> {
    let v4 = saved_subnet(saved).map(|was| {
        let now = env.subnet.map(|s| cidr(s.network(), s.prefix()));
        (same_subnet(&was, now.as_deref()), was, now)
    });
    let v6 = saved_subnet6(saved).map(|was| {
        let now = env.ipv6_subnet.map(|s| cidr(s.network(), s.prefix()));
        (same_subnet(&was, now.as_deref()), was, now)
    });
    [v4, v6]
        .into_iter()
        .flatten()
        .find(|(same, _, _)| !same)
        .map(|(_, was, now)| SubnetChange { was, now })
}

/// Whether two `addr/len` texts name the same network (`fd00:0:0:1::/64` and
/// `fd00::1:0:0:0:0/64` do); text that does not parse compares as text.
fn same_subnet(was: &str, now: Option<&str>) -> bool {
    let Some(now) = now else { return false };
    match (network_of(was), network_of(now)) {
        (Some(a), Some(b)) => a == b,
        _ => was == now,
    }
}

/// `addr/len` as (network address, len), host bits cleared; `None` when it does not parse.
fn network_of(cidr: &str) -> Option<(std::net::IpAddr, u8)> {
    use std::net::IpAddr;
    let (addr, len) = cidr.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some((IpAddr::V4((u32::from(a) & mask).into()), len))
        }
        IpAddr::V6(a) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some((IpAddr::V6((u128::from(a) & mask).into()), len))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::netconf;

    fn env(text: &str) -> SubnetEnv {
        SubnetEnv::parse(text.as_bytes()).unwrap()
    }

    const DUAL: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn rendered(text: &str) -> Map<String, Value> {
        let nc = netconf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"vxmesh"}"#).unwrap();
        render(&nc, &env(text), SpecVersion::V1_0_0)
    }

    #[test]
    fn a_dual_stack_attachment_notices_a_change_of_either_family() {
        let saved = rendered(DUAL);
        assert_eq!(saved_subnet(&saved).as_deref(), Some("10.244.7.0/24"));
        assert_eq!(saved_subnet6(&saved).as_deref(), Some("fd00:10:244:7::/64"));
        assert_eq!(subnet_change(&saved, &env(DUAL)), None);
        // The IPv6 half alone moved: the pod's IPv6 address no longer routes.
        let moved6 = DUAL.replace("fd00:10:244:7::1/64", "fd00:10:244:9::1/64");
        assert_eq!(
            subnet_change(&saved, &env(&moved6)),
            Some(SubnetChange {
                was: "fd00:10:244:7::/64".into(),
                now: Some("fd00:10:244:9::/64".into()),
            })
        );
        let moved4 = DUAL.replace("10.244.7.1/24", "10.244.8.1/24");
        assert_eq!(
            subnet_change(&saved, &env(&moved4)).map(|c| c.was),
            Some("10.244.7.0/24".into())
        );
        // EnableIPv6 turned off: the family is gone.
        let v4_only = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(
            subnet_change(&saved, &env(v4_only)),
            Some(SubnetChange {
                was: "fd00:10:244:7::/64".into(),
                now: None,
            })
        );
        // EnableIPv6 turned on after ADD: every address the pod has still routes.
        assert_eq!(subnet_change(&rendered(v4_only), &env(DUAL)), None);
    }

    #[test]
    fn the_same_network_written_differently_is_no_change() {
        let mut saved = rendered(DUAL);
        saved["ipam"]["ranges"] =
            json!([[{"subnet": "10.244.7.9/24"}], [{"subnet": "fd00:10:244:7:0:0:0:5/64"}]]);
        assert_eq!(subnet_change(&saved, &env(DUAL)), None);
        // A range that does not parse compares as text: it is a change.
        saved["ipam"]["ranges"] = json!([[{"subnet": "ten/24"}]]);
        assert_eq!(
            subnet_change(&saved, &env(DUAL)).map(|c| c.was),
            Some("ten/24".into())
        );
        // No ranges at all (a delegate with its own IPAM): nothing to compare.
        saved["ipam"] = json!({"type": "dhcp"});
        assert_eq!(subnet_change(&saved, &env(DUAL)), None);
    }

    /// The example in flannel's CNI plugin README: NETWORK 10.1.0.0/16, SUBNET 10.1.17.1/24,
    /// MTU 1472, IPMASQ true. vxmesh renders the same delegate, plus the bridge name flannel
    /// leaves to the bridge plugin's default and the negotiated cniVersion.
    #[test]
    fn reproduces_flannel_readme_example() {
        let nc =
            netconf::parse(br#"{"cniVersion":"0.3.1","name":"mynet","type":"flannel"}"#).unwrap();
        let env = SubnetEnv::parse(
            b"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let got = Value::Object(render(&nc, &env, SpecVersion::V0_3_1));
        let want = json!({
            "cniVersion": "0.3.1",
            "name": "mynet",
            "type": "bridge",
            "bridge": "cni0",
            "mtu": 1472,
            "ipMasq": false,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.1.17.0/24"}]],
                "routes": [{"dst": "10.1.0.0/16"}]
            }
        });
        assert_eq!(got, want);
    }

    #[test]
    fn delegate_overrides_and_ipam_base_merge() {
        let nc = netconf::parse(
            br#"{"cniVersion":"1.0.0","name":"vx","type":"vxmesh",
                 "delegate":{"bridge":"vxbr0","hairpinMode":true,"isDefaultGateway":true,"ipMasq":true,"mtu":1400},
                 "ipam":{"dataDir":"/tmp/hl","routes":[{"dst":"192.168.0.0/16"},{"dst":"10.244.0.0/16"}]},
                 "runtimeConfig":{"mac":"02:00:00:00:00:01"}}"#,
        )
        .unwrap();
        let env = SubnetEnv::parse(
            b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let got = render(&nc, &env, SpecVersion::V1_0_0);
        assert_eq!(got["bridge"], "vxbr0");
        assert_eq!(got["hairpinMode"], true);
        assert_eq!(got["isDefaultGateway"], true);
        assert_eq!(got["ipMasq"], true, "delegate wins over !FLANNEL_IPMASQ");
        assert_eq!(got["mtu"], 1400);
        assert_eq!(got["runtimeConfig"]["mac"], "02:00:00:00:00:01");
        assert_eq!(got["ipam"]["dataDir"], "/tmp/hl");
        assert_eq!(
            got["ipam"]["routes"],
            json!([{"dst":"192.168.0.0/16"},{"dst":"10.244.0.0/16"}]),
            "the cluster route is not duplicated"
        );
        assert_eq!(saved_subnet(&got).as_deref(), Some("10.244.7.0/24"));
    }

    #[test]
    fn non_bridge_delegate_gets_no_bridge_keys() {
        let nc =
            netconf::parse(br#"{"cniVersion":"1.0.0","name":"vx","delegate":{"type":"ipvlan"}}"#)
                .unwrap();
        let env = SubnetEnv::parse(
            b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let got = render(&nc, &env, SpecVersion::V1_0_0);
        assert_eq!(got["type"], "ipvlan");
        assert!(!got.contains_key("bridge"));
        assert!(!got.contains_key("isGateway"));
    }

    #[test]
    fn dual_stack_ranges_and_routes() {
        let nc = netconf::parse(br#"{"cniVersion":"1.0.0","name":"vx"}"#).unwrap();
        let env = SubnetEnv::parse(
            b"FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let got = render(&nc, &env, SpecVersion::V1_0_0);
        assert_eq!(
            got["ipam"]["ranges"],
            json!([[{"subnet":"10.5.1.0/24"}],[{"subnet":"fc00:0:0:1::/64"}]])
        );
        assert_eq!(
            got["ipam"]["routes"],
            json!([{"dst":"10.5.0.0/16"},{"dst":"fc00::/48"}])
        );
    }

    #[test]
    fn invocation_sets_version_and_prev_result() {
        let mut saved = Map::new();
        saved.insert("cniVersion".into(), json!("1.0.0"));
        saved.insert("prevResult".into(), json!({"old": true}));
        let inv = for_invocation(&saved, SpecVersion::V0_4_0, None);
        assert_eq!(inv["cniVersion"], "0.4.0");
        assert!(!inv.contains_key("prevResult"));
        let inv = for_invocation(&saved, SpecVersion::V1_0_0, Some(json!({"new": 1})));
        assert_eq!(inv["prevResult"]["new"], 1);
    }
}
