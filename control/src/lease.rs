//! Lease keys and values in flannel's etcd format.
//!
//! Keys, as flannel's `subnet.MakeSubnetKey` writes them under `<prefix>/subnets/`:
//! IPv4 `10.244.3.0-24`; dual stack `10.5.1.0-24&fc00::-64`; IPv6 only
//! `0.0.0.0-0&fc00::-64` (flannel's empty IPv4 subnet, written as `0.0.0.0-0`).
//! [`LeaseKey`] reads all three into typed parts and writes them back byte for byte;
//! [`parse_lease_key`] is the IPv4 view the IPv4 dataplane uses.
//!
//! Value, byte-compatible with what flanneld writes (`lease.LeaseAttrs` marshalled by
//! Go's encoding/json: fields in declaration order, `PublicIPv6` a pointer so `null`
//! when unset, `BackendType`, `BackendData` and `BackendV6Data` omitted when empty):
//! `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
//! dual stack
//! `{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{…},"BackendV6Data":{"VNI":1,"VtepMAC":"…"}}`,
//! IPv6 only `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":{…}}`.
//! Reading is lenient the way Go's encoding/json is: field names in any case,
//! unknown fields ignored, `BackendData` absent for other backend types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::subnet::Subnet;
use crate::subnet6::{is_ipv4_embedded, Subnet6};
use vxmesh_dataplane::wire::MacAddr;

/// What a lease says about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `0.0.0.0` in an IPv6-only lease (flannel's zero `ip.IP4`).
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: the node's IPv6 underlay address (dual-stack and IPv6-only leases).
    pub public_ipv6: Option<Ipv6Addr>,
    /// "vxlan", or whatever another flannel backend wrote.
    pub backend_type: String,
    /// `BackendData` of a vxlan lease: the IPv4 VTEP (`flannel.<VNI>`). Absent in an
    /// IPv6-only lease.
    pub vxlan: Option<VxlanData>,
    /// `BackendV6Data` of a vxlan lease: the IPv6 VTEP (`flannel-v6.<VNI>`, its own MAC).
    pub vxlan_v6: Option<VxlanData>,
}

/// `BackendData` of a vxlan lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    pub vni: u32,
    pub vtep_mac: MacAddr,
}

/// The largest lease value read at all. flannel's values are about 130 bytes (a
/// dual-stack one with IPv6 backend data under 300); anything above this is not a
/// lease, and is refused before any JSON is parsed.
pub const MAX_LEASE_VALUE_BYTES: usize = 4096;

/// Why a lease value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease value is not flannel's format: {0}")]
pub struct LeaseParseError(pub String);

fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

impl LeaseAttrs {
    /// A vxlan lease for this node (IPv4).
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".to_string(),
            vxlan: Some(VxlanData { vni, vtep_mac }),
            vxlan_v6: None,
        }
    }

    /// An IPv6-only node's vxlan lease, as flanneld writes it: `PublicIP` the empty
    /// `0.0.0.0`, no `BackendData`, `PublicIPv6` and `BackendV6Data`.
    pub fn vxlan_ipv6_only(public_ipv6: Ipv6Addr, vni: u32, vtep_mac: MacAddr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(public_ipv6),
            backend_type: "vxlan".to_string(),
            vxlan: None,
            vxlan_v6: Some(VxlanData { vni, vtep_mac }),
        }
    }

    /// The same lease with an IPv6 VTEP: `PublicIPv6` and `BackendV6Data`, as a
    /// dual-stack flanneld writes them.
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, vni: u32, vtep_mac: MacAddr) -> LeaseAttrs {
        self.public_ipv6 = Some(public_ipv6);
        self.vxlan_v6 = Some(VxlanData { vni, vtep_mac });
        self
    }

    /// The JSON flanneld would write for the same lease.
    pub fn to_json(&self) -> String {
        let mut out = format!(r#"{{"PublicIP":"{}","PublicIPv6":"#, self.public_ip);
        match self.public_ipv6 {
            Some(ip) => out.push_str(&format!(r#""{ip}""#)),
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            let bt = serde_json::to_string(&self.backend_type).unwrap_or_else(|_| "\"\"".into());
            out.push_str(&format!(r#","BackendType":{bt}"#));
        }
        for (name, data) in [
            ("BackendData", &self.vxlan),
            ("BackendV6Data", &self.vxlan_v6),
        ] {
            if let Some(v) = data {
                out.push_str(&format!(
                    r#","{name}":{{"VNI":{},"VtepMAC":"{}"}}"#,
                    v.vni, v.vtep_mac
                ));
            }
        }
        out.push('}');
        out
    }

    /// Reads a lease value. Non-vxlan leases parse (with `vxlan: None`) so the
    /// caller can say which backend it skipped. A vxlan lease needs `BackendData`,
    /// `BackendV6Data` or both; each present one must be well formed, and so must
    /// `PublicIPv6` when it is not null (flannel's own decoder refuses a bad one).
    /// Values larger than [`MAX_LEASE_VALUE_BYTES`] are refused unread.
    pub fn parse(json: &[u8]) -> Result<LeaseAttrs, LeaseParseError> {
        let err = |m: String| LeaseParseError(m);
        if json.len() > MAX_LEASE_VALUE_BYTES {
            return Err(err(format!(
                "the value is {} bytes, more than the {MAX_LEASE_VALUE_BYTES} a lease can be",
                json.len()
            )));
        }
        let v: Value = serde_json::from_slice(json).map_err(|e| err(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("not a JSON object".into()))?;
        let public_ip = field(obj, "PublicIP")
            .and_then(Value::as_str)
            .ok_or_else(|| err("PublicIP missing".into()))?
            .parse::<Ipv4Addr>()
            .map_err(|_| err("PublicIP is not an IPv4 address".into()))?;
        let public_ipv6 = match field(obj, "PublicIPv6") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let ip = s
                    .parse::<Ipv6Addr>()
                    .map_err(|_| err(format!("PublicIPv6 {s:?} is not an IPv6 address")))?;
                if is_ipv4_embedded(ip) {
                    return Err(err(format!(
                        "PublicIPv6 {ip} is an IPv4-compatible or -mapped address, not an IPv6 underlay address"
                    )));
                }
                Some(ip)
            }
            Some(_) => return Err(err("PublicIPv6 is not a string or null".into())),
        };
        let backend_type = match field(obj, "BackendType") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            Some(_) => return Err(err("BackendType is not a string".into())),
        };
        let (vxlan, vxlan_v6) = if backend_type == "vxlan" {
            let vxlan = vxlan_data(obj, "BackendData")?;
            let vxlan_v6 = vxlan_data(obj, "BackendV6Data")?;
            if vxlan.is_none() && vxlan_v6.is_none() {
                return Err(err(
                    "vxlan lease without BackendData (or BackendV6Data)".into()
                ));
            }
            (vxlan, vxlan_v6)
        } else {
            (None, None)
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            vxlan,
            vxlan_v6,
        })
    }
}

/// `BackendData` or `BackendV6Data` of a vxlan lease: absent or null is `None`.
fn vxlan_data(
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<VxlanData>, LeaseParseError> {
    let err = |m: String| LeaseParseError(m);
    let bd = match field(obj, name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(bd)) => bd,
        Some(_) => return Err(err(format!("{name} is not an object"))),
    };
    let vni = field(bd, "VNI")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n <= vxmesh_dataplane::wire::Vni::MAX)
        .ok_or_else(|| err(format!("{name}.VNI missing or not a 24-bit number")))?;
    let vtep_mac = field(bd, "VtepMAC")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{name}.VtepMAC missing")))?
        .parse::<MacAddr>()
        .map_err(|e| err(e.to_string()))?;
    if !vtep_mac.is_unicast() {
        return Err(err(format!("VtepMAC {vtep_mac} is not a unicast address")));
    }
    Ok(Some(VxlanData { vni, vtep_mac }))
}

/// Which leases are this node's: those naming its PublicIP — or, on an IPv6-only
/// network, where every lease's PublicIP is flannel's empty `0.0.0.0`, its
/// PublicIPv6. (flanneld's etcd mode goes by PublicIP alone, so there every
/// IPv6-only node would take the first one's lease for its own.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    /// IPv4 and dual-stack networks: the PublicIP.
    V4(Ipv4Addr),
    /// IPv6-only networks: the PublicIPv6.
    V6(Ipv6Addr),
}

impl NodeId {
    /// Whether the lease value `a` names this node.
    pub fn names(&self, a: &LeaseAttrs) -> bool {
        match *self {
            NodeId::V4(ip) => a.public_ip == ip,
            NodeId::V6(ip) => a.public_ipv6 == Some(ip),
        }
    }

    /// Who `a` names, in this node's terms (its PublicIP or PublicIPv6): for
    /// messages about another node's lease.
    pub fn of(&self, a: &LeaseAttrs) -> Option<IpAddr> {
        match self {
            NodeId::V4(_) => Some(IpAddr::V4(a.public_ip)),
            NodeId::V6(_) => a.public_ipv6.map(IpAddr::V6),
        }
    }

    /// `a` made to name this node instead of whoever it names.
    pub fn stamp(&self, a: &mut LeaseAttrs) {
        match *self {
            NodeId::V4(ip) => a.public_ip = ip,
            NodeId::V6(ip) => a.public_ipv6 = Some(ip),
        }
    }

    /// A placeholder value naming this node (for a key whose value is not a lease).
    pub fn attrs(&self) -> LeaseAttrs {
        let mut a = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            vxlan: None,
            vxlan_v6: None,
        };
        self.stamp(&mut a);
        a
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeId::V4(ip) => write!(f, "PublicIP {ip}"),
            NodeId::V6(ip) => write!(f, "PublicIPv6 {ip}"),
        }
    }
}

/// The key holding all leases: `<prefix>/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The key of one lease.
pub fn lease_key(prefix: &str, subnet: &Subnet) -> String {
    format!("{}{}", subnets_prefix(prefix), subnet.key_form())
}

/// The config key.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// The IPv4 subnet named by a lease key (full key or its last part), including
/// flannel's dual-stack form `10.5.1.0-24&fc00::-64`. An IPv6-only key
/// (`0.0.0.0-0&fc00::-64`) yields `0.0.0.0/0`, which the allocator and the peer table
/// treat as no node's IPv4 subnet. [`LeaseKey::parse`] reads both parts.
pub fn parse_lease_key(key: &str) -> Option<Subnet> {
    let last = key.rsplit('/').next()?;
    let v4 = last.split('&').next()?;
    Subnet::from_key_form(v4).ok()
}

/// The subnets a lease key names, in flannel's three forms (`subnet.MakeSubnetKey`):
/// IPv4 `10.5.1.0-24`, dual stack `10.5.1.0-24&fc00::-64`, IPv6 only
/// `0.0.0.0-0&fc00::-64`. At least one part is present; the IPv4 part is never
/// `0.0.0.0/0` (that is flannel's "no IPv4 subnet").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    ipv4: Option<Subnet>,
    ipv6: Option<Subnet6>,
}

/// Why a key under `<prefix>/subnets/` is not a lease key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseKeyError {
    #[error("lease key {0:?} is not in flannel's form: <ipv4>-<len> (10.5.1.0-24), <ipv4>-<len>&<ipv6>-<len> (10.5.1.0-24&fc00::-64) or 0.0.0.0-0&<ipv6>-<len>, host bits clear, written exactly as flannel writes it (lower-case, shortest IPv6 form)")]
    Syntax(String),
    #[error("lease key {0:?} names no subnet (0.0.0.0-0 without an IPv6 part)")]
    NoSubnet(String),
}

impl LeaseKey {
    /// A key from its parts: `None` for a missing family; an IPv4 `0.0.0.0/0` counts
    /// as missing (flannel's empty subnet). `None` when neither part is left.
    pub fn new(ipv4: Option<Subnet>, ipv6: Option<Subnet6>) -> Option<LeaseKey> {
        let ipv4 = ipv4.filter(|s| s.prefix_len() != 0);
        (ipv4.is_some() || ipv6.is_some()).then_some(LeaseKey { ipv4, ipv6 })
    }

    /// The key of a claim: `10.5.1.0-24`, or `10.5.1.0-24&fc00::-64` with an IPv6
    /// half. `ipv4` is a pool subnet (never `0.0.0.0/0`: SubnetLen is at least /2).
    pub fn dual(ipv4: Subnet, ipv6: Option<Subnet6>) -> LeaseKey {
        LeaseKey {
            ipv4: Some(ipv4),
            ipv6,
        }
    }

    /// An IPv6-only key, `0.0.0.0-0&fc00::-64`.
    pub fn ipv6_only(subnet: Subnet6) -> LeaseKey {
        LeaseKey {
            ipv4: None,
            ipv6: Some(subnet),
        }
    }

    /// An IPv4 key, `10.5.1.0-24`.
    pub fn ipv4(subnet: Subnet) -> Option<LeaseKey> {
        LeaseKey::new(Some(subnet), None)
    }

    /// The IPv4 subnet; `None` in an IPv6-only key.
    pub fn ipv4_subnet(&self) -> Option<Subnet> {
        self.ipv4
    }

    /// The IPv6 subnet of a dual-stack or IPv6-only key.
    pub fn ipv6_subnet(&self) -> Option<Subnet6> {
        self.ipv6
    }

    /// The last part of the key as flannel writes it.
    pub fn key_form(&self) -> String {
        let v4 = self
            .ipv4
            .map_or_else(|| "0.0.0.0-0".to_string(), |s| s.key_form());
        match self.ipv6 {
            Some(v6) => format!("{v4}&{}", v6.key_form()),
            None => v4,
        }
    }

    /// Reads a key (the full key or its last part). Only text that [`key_form`]
    /// writes back byte for byte is accepted: host bits clear, no leading zeros,
    /// the IPv6 part lower-case and in its shortest form.
    ///
    /// [`key_form`]: LeaseKey::key_form
    pub fn parse(key: &str) -> Result<LeaseKey, LeaseKeyError> {
        let last = key.rsplit('/').next().unwrap_or(key);
        let syntax = || LeaseKeyError::Syntax(last.to_string());
        let (v4, v6) = match last.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (last, None),
        };
        let ipv4 = Subnet::from_key_form(v4).map_err(|_| syntax())?;
        let ipv6 = v6
            .map(|t| Subnet6::from_key_form(t).map_err(|_| syntax()))
            .transpose()?;
        if ipv6.is_some_and(|s| s.prefix_len() == 0) {
            // flannel's empty IPv6 subnet: MakeSubnetKey never writes it.
            return Err(syntax());
        }
        let parsed = LeaseKey::new(Some(ipv4), ipv6)
            .ok_or_else(|| LeaseKeyError::NoSubnet(last.to_string()))?;
        if parsed.key_form() != last {
            return Err(syntax());
        }
        Ok(parsed)
    }
}

impl std::fmt::Display for LeaseKey {
    /// The subnets it names: `10.5.1.0/24`, `10.5.1.0/24 + fc00::/64`, `fc00::/64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(v4), Some(v6)) => write!(f, "{v4} + {v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => f.write_str("no subnet"),
        }
    }
}

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key_form())
    }
}

/// The key of one lease, in any of flannel's forms.
pub fn lease_key_of(prefix: &str, key: &LeaseKey) -> String {
    format!("{}{}", subnets_prefix(prefix), key.key_form())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Exactly as flanneld v0.28 writes a vxlan lease (etcdctl get -w json, decoded).
    const FLANNEL_VALUE: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn byte_compatible_with_flannel() {
        let a = LeaseAttrs::parse(FLANNEL_VALUE.as_bytes()).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(a.vxlan.unwrap().vni, 1);
        assert_eq!(a.to_json(), FLANNEL_VALUE);
    }

    #[test]
    fn lenient_like_go() {
        let a = LeaseAttrs::parse(
            br#"{"publicip":"10.0.0.2","backendtype":"vxlan","backenddata":{"vni":7,"vtepmac":"0E:5A:11:22:33:44"},"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(a.vxlan.unwrap().vni, 7);
        // another backend: parsed, no vxlan data
        let u = LeaseAttrs::parse(
            br#"{"PublicIP":"10.0.0.3","PublicIPv6":null,"BackendType":"udp","BackendData":null}"#,
        )
        .unwrap();
        assert_eq!(u.backend_type, "udp");
        assert!(u.vxlan.is_none());
        let hg = LeaseAttrs::parse(br#"{"PublicIP":"10.0.0.4","BackendType":"host-gw"}"#).unwrap();
        assert!(hg.vxlan.is_none());
        // dual-stack flannel lease with a v6 public IP and v6 backend data
        let ds = LeaseAttrs::parse(br#"{"PublicIP":"10.0.0.5","PublicIPv6":"fc00::5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:46"}}"#).unwrap();
        assert_eq!(ds.vxlan.unwrap().vtep_mac.to_string(), "0e:5a:11:22:33:45");
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"BackendType":"vxlan"}"#,
            r#"{"PublicIP":"fc00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan"}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":-1,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":16777216,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","BackendType":7}"#,
        ] {
            assert!(LeaseAttrs::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn oversized_values_are_refused_unread() {
        // A valid lease padded with whitespace past the limit: JSON would accept it.
        let mut v = br#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:44"}}"#.to_vec();
        assert!(LeaseAttrs::parse(&v).is_ok());
        v.resize(MAX_LEASE_VALUE_BYTES, b' ');
        assert!(LeaseAttrs::parse(&v).is_ok(), "exactly the limit is read");
        v.push(b' ');
        let e = LeaseAttrs::parse(&v).unwrap_err().to_string();
        assert!(e.contains("4097 bytes, more than the 4096"), "{e}");
    }

    #[test]
    fn keys() {
        assert_eq!(
            subnets_prefix("/coreos.com/network/"),
            "/coreos.com/network/subnets/"
        );
        let s: Subnet = "10.244.3.0/24".parse().unwrap();
        assert_eq!(
            lease_key("/coreos.com/network", &s),
            "/coreos.com/network/subnets/10.244.3.0-24"
        );
        assert_eq!(
            parse_lease_key("/coreos.com/network/subnets/10.244.3.0-24"),
            Some(s)
        );
        assert_eq!(
            parse_lease_key("/coreos.com/network/subnets/10.5.1.0-24&fc00::-64"),
            Some("10.5.1.0/24".parse().unwrap())
        );
        assert_eq!(parse_lease_key("/coreos.com/network/subnets/garbage"), None);
        assert_eq!(
            parse_lease_key("/coreos.com/network/subnets/10.244.3.1-24"),
            None
        );
        assert_eq!(config_key("/x/"), "/x/config");
    }

    // Dual-stack and IPv6-only values as flanneld writes them. Derived from flannel's
    // Go types (flannel-io/flannel pkg/lease/lease.go `LeaseAttrs`: PublicIP ip.IP4,
    // PublicIPv6 *ip.IP6, BackendType/BackendData/BackendV6Data omitempty;
    // pkg/backend/vxlan/vxlan.go `newSubnetAttrs` and vxlan_network.go
    // `vxlanLeaseAttrs{VNI uint32; VtepMAC hardwareAddr}`, the MAC marshalled with %q
    // of net.HardwareAddr, lower-case hex) and encoding/json's rules (declaration
    // order, compact, a nil pointer as null, an empty RawMessage omitted). In an
    // IPv6-only cluster newSubnetAttrs sets no PublicIP (the zero ip.IP4, "0.0.0.0")
    // and no BackendData.
    const FLANNEL_DUAL: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:1f:e0:35:2b:90"}}"#;
    const FLANNEL_V6_ONLY: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"7a:1f:e0:35:2b:90"}}"#;

    #[test]
    fn dual_stack_values_byte_compatible_with_flannel() {
        let d = LeaseAttrs::parse(FLANNEL_DUAL.as_bytes()).unwrap();
        assert_eq!(d.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(d.public_ipv6, Some("fd00:64::3".parse().unwrap()));
        assert_eq!(d.vxlan.unwrap().vtep_mac.to_string(), "c6:d2:32:6f:8f:44");
        let v6 = d.vxlan_v6.unwrap();
        assert_eq!(
            (v6.vni, v6.vtep_mac.to_string().as_str()),
            (1, "7a:1f:e0:35:2b:90")
        );
        assert_eq!(d.to_json(), FLANNEL_DUAL);
        let built = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 64, 3),
            1,
            MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
        )
        .with_ipv6(
            "fd00:64::3".parse().unwrap(),
            1,
            MacAddr([0x7a, 0x1f, 0xe0, 0x35, 0x2b, 0x90]),
        );
        assert_eq!(built, d);

        let o = LeaseAttrs::parse(FLANNEL_V6_ONLY.as_bytes()).unwrap();
        assert_eq!(o.public_ip, Ipv4Addr::UNSPECIFIED);
        assert!(o.vxlan.is_none());
        assert_eq!(o.vxlan_v6, d.vxlan_v6);
        assert_eq!(o.to_json(), FLANNEL_V6_ONLY);
    }

    #[test]
    fn other_backends_are_written_with_flannels_omitempty() {
        // udp: no BackendType at all; host-gw: a type and no data.
        for v in [
            r#"{"PublicIP":"192.168.56.13","PublicIPv6":null}"#,
            r#"{"PublicIP":"192.168.56.14","PublicIPv6":null,"BackendType":"host-gw"}"#,
            r#"{"PublicIP":"192.168.56.14","PublicIPv6":"fd00::14","BackendType":"host-gw"}"#,
        ] {
            assert_eq!(LeaseAttrs::parse(v.as_bytes()).unwrap().to_json(), v);
        }
    }

    #[test]
    fn malformed_ipv6_parts_are_errors() {
        for bad in [
            // no backend data of either family
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan"}"#,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":null}"#,
            // PublicIPv6 not an IPv6 address, or one no underlay uses
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"::ffff:10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":7,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            // bad BackendV6Data
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":"x"}"#,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":{"VNI":1}}"#,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":{"VNI":16777216,"VtepMAC":"0e:5a:11:22:33:44"}}"#,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}"#,
        ] {
            assert!(LeaseAttrs::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let e = LeaseAttrs::parse(
            br#"{"PublicIP":"0.0.0.0","BackendType":"vxlan","BackendV6Data":{"VNI":1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("BackendV6Data.VtepMAC missing"), "{e}");
    }

    #[test]
    fn lease_keys_in_flannels_three_forms() {
        let v4: Subnet = "10.5.1.0/24".parse().unwrap();
        let v6: Subnet6 = "fc00::/64".parse().unwrap();
        // (key as flannel's MakeSubnetKey writes it, IPv4 part, IPv6 part)
        for (text, want4, want6) in [
            ("10.5.1.0-24", Some(v4), None),
            ("10.5.1.0-24&fc00::-64", Some(v4), Some(v6)),
            ("0.0.0.0-0&fc00::-64", None, Some(v6)),
            // flannel's own test key (pkg/subnet/subnet_test.go TestSubnetNodev6)
            (
                "10.12.13.0-24&fd00:12:13::-56",
                Some("10.12.13.0/24".parse().unwrap()),
                Some("fd00:12:13::/56".parse().unwrap()),
            ),
        ] {
            let full = format!("/coreos.com/network/subnets/{text}");
            let k = LeaseKey::parse(&full).unwrap();
            assert_eq!((k.ipv4_subnet(), k.ipv6_subnet()), (want4, want6), "{text}");
            assert_eq!(k.key_form(), text);
            assert_eq!(lease_key_of("/coreos.com/network", &k), full);
            assert_eq!(LeaseKey::parse(text).unwrap(), k);
            assert_eq!(LeaseKey::new(want4, want6), Some(k));
        }
        // The IPv4 view of an IPv6-only key stays what it was: 0.0.0.0/0.
        assert_eq!(
            parse_lease_key("0.0.0.0-0&fc00::-64"),
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(LeaseKey::new(None, None), None);
        assert_eq!(
            LeaseKey::new(Some("0.0.0.0/0".parse().unwrap()), Some(v6)),
            LeaseKey::new(None, Some(v6))
        );
    }

    #[test]
    fn lease_keys_flannel_would_not_write_are_refused() {
        for bad in [
            // flannel's invalid keys (pkg/subnet/subnet_test.go TestSubnetNodeInvalid)
            "10",
            "10.12.13.0",
            "10.12.13-24",
            "10.12.13.300-24",
            "10.12.13.0-24hi",
            "&2001::-56",
            "10.12.13.0-24&:12:13:-56",
            "10.12.13.0-24&20011::-56",
            "10.12.13.0-24&2001-56",
            "10.12.13.0-24&2001::",
            "10.12.13.0-24&2001::-56hi",
            // not byte-identical to what MakeSubnetKey writes
            "10.5.1.0-024",
            "10.5.1.0-24&FC00::-64",
            "10.5.1.0-24&fc00:0::-64",
            "10.5.1.0-24&fc00::-064",
            "10.5.1.1-24&fc00::-64",
            "10.5.1.0-24&fc00::1-64",
            "10.5.1.0-24&::-0",
            "10.5.1.0-24&fc00::-64&fc01::-64",
            "10.5.1.0-24&fc00::-129",
        ] {
            assert!(
                matches!(LeaseKey::parse(bad), Err(LeaseKeyError::Syntax(_))),
                "{bad}: {:?}",
                LeaseKey::parse(bad)
            );
        }
        let e = LeaseKey::parse("/coreos.com/network/subnets/0.0.0.0-0").unwrap_err();
        assert_eq!(e, LeaseKeyError::NoSubnet("0.0.0.0-0".into()));
        let msg = LeaseKey::parse("10.5.1.0-24&FC00::-64")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("10.5.1.0-24&fc00::-64") && msg.contains("lower-case"),
            "{msg}"
        );
    }

    proptest::proptest! {
        #[test]
        fn lease_key_round_trip(
            a in 0u32..,
            len in 1u8..=32,
            b in 0u128..,
            len6 in 1u8..=128,
            form in 0u8..3,
        ) {
            let v4 = Subnet::new(Ipv4Addr::from(a), len).unwrap();
            let v6 = Subnet6::new(std::net::Ipv6Addr::from(b), len6).unwrap();
            proptest::prop_assume!(!is_ipv4_embedded(v6.addr()));
            let k = match form {
                0 => LeaseKey::new(Some(v4), None),
                1 => LeaseKey::new(Some(v4), Some(v6)),
                _ => LeaseKey::new(None, Some(v6)),
            }
            .unwrap();
            let text = k.key_form();
            let back = LeaseKey::parse(&text).unwrap();
            proptest::prop_assert_eq!(back, k);
            proptest::prop_assert_eq!(back.key_form(), text.clone());
            // The IPv4 view agrees with the full parse.
            proptest::prop_assert_eq!(
                parse_lease_key(&text).filter(|s| s.prefix_len() != 0),
                k.ipv4_subnet()
            );
        }

        #[test]
        fn dual_stack_value_round_trip(
            ip in 0u32..,
            ip6 in 0u128..,
            vni in 0u32..=0xff_ffff,
            mac in proptest::array::uniform6(0u8..),
            mac6 in proptest::array::uniform6(0u8..),
            v4 in proptest::bool::ANY,
        ) {
            let ip6 = std::net::Ipv6Addr::from(ip6);
            proptest::prop_assume!(!is_ipv4_embedded(ip6));
            let (mut mac, mut mac6) = (mac, mac6);
            mac[0] = (mac[0] & 0xfe) | 0x02;
            mac6[0] &= 0xfe;
            let mut a = LeaseAttrs::vxlan(Ipv4Addr::from(ip), vni, MacAddr(mac))
                .with_ipv6(ip6, vni, MacAddr(mac6));
            if !v4 {
                a.public_ip = Ipv4Addr::UNSPECIFIED;
                a.vxlan = None;
            }
            let json = a.to_json();
            let back = LeaseAttrs::parse(json.as_bytes()).unwrap();
            proptest::prop_assert_eq!(&back, &a);
            proptest::prop_assert_eq!(back.to_json(), json);
        }

        #[test]
        fn lease_key_parse_never_panics(s in "[0-9a-f.:&/-]{0,60}") {
            if let Ok(k) = LeaseKey::parse(&s) {
                let last = s.rsplit('/').next().unwrap_or(&s);
                proptest::prop_assert_eq!(k.key_form(), last);
            }
        }

        #[test]
        fn round_trip(ip in 0u32.., vni in 0u32..=0xff_ffff, mac in proptest::array::uniform6(0u8..)) {
            let mut mac = mac;
            mac[0] = (mac[0] & 0xfe) | 0x02;
            let a = LeaseAttrs::vxlan(Ipv4Addr::from(ip), vni, MacAddr(mac));
            proptest::prop_assert_eq!(LeaseAttrs::parse(a.to_json().as_bytes()).unwrap(), a);
        }

        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = LeaseAttrs::parse(s.as_bytes());
            let _ = parse_lease_key(&s);
        }
    }
}
