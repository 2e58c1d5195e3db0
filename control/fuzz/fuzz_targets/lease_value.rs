//! Lease keys and values over arbitrary bytes (what any node may have written):
//! no panic; an accepted vxlan lease re-encodes to something that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::lease::{parse_lease_key, LeaseAttrs};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = LeaseAttrs::parse(data) {
        if let Some(v) = a.vxlan {
            assert!(v.vtep_mac.is_unicast());
            let again = LeaseAttrs::parse(a.to_json().as_bytes()).expect("our own encoding parses");
            assert_eq!(again, a);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(subnet) = parse_lease_key(s) {
            assert_eq!(parse_lease_key(&subnet.key_form()), Some(subnet));
        }
    }
});
