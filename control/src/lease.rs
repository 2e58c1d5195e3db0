//! Lease keys and values in flannel's etcd format.
//!
//! Key: `<prefix>/subnets/10.244.3.0-24` (dual-stack flannel writes
//! `10.5.1.0-24&fc00::-64`; the IPv4 part is used). Value, byte-compatible with
//! what flanneld writes (same field names, same order, `PublicIPv6` null):
//! `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
//! Reading is lenient the way Go's encoding/json is: field names in any case,
//! unknown fields ignored, `BackendData` absent for other backend types.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::subnet::Subnet;
use vxmesh_dataplane::wire::MacAddr;

/// What a lease says about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    /// "vxlan", or whatever another flannel backend wrote.
    pub backend_type: String,
    /// Present for vxlan leases.
    pub vxlan: Option<VxlanData>,
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
    /// A vxlan lease for this node.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            backend_type: "vxlan".to_string(),
            vxlan: Some(VxlanData { vni, vtep_mac }),
        }
    }

    /// The JSON flanneld would write for the same lease.
    pub fn to_json(&self) -> String {
        let ip = self.public_ip;
        let bt = serde_json::to_string(&self.backend_type).unwrap_or_else(|_| "\"\"".into());
        match &self.vxlan {
            Some(v) => format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":{bt},"BackendData":{{"VNI":{},"VtepMAC":"{}"}}}}"#,
                v.vni, v.vtep_mac
            ),
            None => format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":{bt},"BackendData":null}}"#
            ),
        }
    }

    /// Reads a lease value. Non-vxlan leases parse (with `vxlan: None`) so the
    /// caller can say which backend it skipped.
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
        let backend_type = match field(obj, "BackendType") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            Some(_) => return Err(err("BackendType is not a string".into())),
        };
        let vxlan = if backend_type == "vxlan" {
            let bd = field(obj, "BackendData")
                .and_then(Value::as_object)
                .ok_or_else(|| err("vxlan lease without BackendData".into()))?;
            let vni = field(bd, "VNI")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= vxmesh_dataplane::wire::Vni::MAX)
                .ok_or_else(|| err("BackendData.VNI missing or not a 24-bit number".into()))?;
            let vtep_mac = field(bd, "VtepMAC")
                .and_then(Value::as_str)
                .ok_or_else(|| err("BackendData.VtepMAC missing".into()))?
                .parse::<MacAddr>()
                .map_err(|e| err(e.to_string()))?;
            if !vtep_mac.is_unicast() {
                return Err(err(format!("VtepMAC {vtep_mac} is not a unicast address")));
            }
            Some(VxlanData { vni, vtep_mac })
        } else {
            None
        };
        Ok(LeaseAttrs {
            public_ip,
            backend_type,
            vxlan,
        })
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
/// flannel's dual-stack form `10.5.1.0-24&fc00::-64`.
pub fn parse_lease_key(key: &str) -> Option<Subnet> {
    let last = key.rsplit('/').next()?;
    let v4 = last.split('&').next()?;
    Subnet::from_key_form(v4).ok()
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

    proptest::proptest! {
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
