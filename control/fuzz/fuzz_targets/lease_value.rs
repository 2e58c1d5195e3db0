//! Lease keys and values over arbitrary bytes (what any node may have written):
//! no panic; an accepted vxlan lease (IPv4, dual-stack or IPv6-only) re-encodes to
//! something that parses to itself; an accepted key, in any of flannel's three forms
//! (`10.5.1.0-24`, `10.5.1.0-24&fc00::-64`, `0.0.0.0-0&fc00::-64`), is written back
//! byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::lease::{parse_lease_key, LeaseAttrs, LeaseKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = LeaseAttrs::parse(data) {
        if a.vxlan.is_some() || a.vxlan_v6.is_some() {
            for v in a.vxlan.iter().chain(a.vxlan_v6.iter()) {
                assert!(v.vtep_mac.is_unicast());
            }
            let json = a.to_json();
            let again = LeaseAttrs::parse(json.as_bytes()).expect("our own encoding parses");
            assert_eq!(again, a);
            assert_eq!(again.to_json(), json);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(subnet) = parse_lease_key(s) {
            assert_eq!(parse_lease_key(&subnet.key_form()), Some(subnet));
        }
        if let Ok(k) = LeaseKey::parse(s) {
            let last = s.rsplit('/').next().unwrap_or(s);
            assert_eq!(k.key_form(), last, "written back byte for byte");
            assert!(k.ipv4_subnet().is_some() || k.ipv6_subnet().is_some());
            assert_eq!(LeaseKey::parse(&k.key_form()), Ok(k));
            if let Some(v4) = k.ipv4_subnet() {
                assert_eq!(parse_lease_key(s), Some(v4), "the IPv4 view agrees");
            }
        }
    }
});
