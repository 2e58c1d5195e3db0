//! `NetworkConfig::parse` over arbitrary bytes (what an operator may have put at
//! `<prefix>/config`): no panic; an accepted config is internally consistent, its
//! IPv6 pool (dual stack, IPv6 only) included. The running node's comparison with it
//! (`config_watch`): no panic, an accepted config is the same as itself, and what is
//! told fits on one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::config::NetworkConfig;
use vxmesh_control::config_watch::{judge, Stored, Tracker};
use vxmesh_control::subnet6::Subnet6;

const KEY: &str = "/coreos.com/network/config";

fuzz_target!(|data: &[u8]| {
    let running = NetworkConfig::parse(KEY, br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
        .expect("a valid config");
    let verdict = judge(&running, KEY, Some(data));
    assert!(verdict.detail().is_none_or(|d| !d.contains('\n')));
    let mut tracker = Tracker::new(KEY);
    if let Some(n) = tracker.observe(verdict, Some(data)) {
        assert!(n.warn);
    }
    if let Ok(c) = NetworkConfig::parse(KEY, data) {
        assert_eq!(judge(&c, KEY, Some(data)), Stored::Same);
        // At least one family; IPv6-only configs have an IPv6 pool.
        assert!(c.ipv4.is_some() || c.ipv6.is_some());
        if let Some(v4) = c.ipv4 {
            assert!(v4.subnet_len <= 30 && v4.subnet_len >= v4.network.prefix_len() + 2 || v4.subnet_len == 24);
            assert!(v4.subnet_min <= v4.subnet_max);
            assert!(v4.network.contains(v4.subnet_min) && v4.network.contains(v4.subnet_max));
            assert!(v4.pool_size() >= 1);
        }
        assert!(c.backend.vni.get() <= 0xff_ffff);
        assert!(c.backend.port != 0);
        if let Some(v6) = c.ipv6 {
            assert!(v6.subnet_len <= 126 && v6.subnet_len >= v6.network.prefix_len() + 2);
            assert!(v6.subnet_min <= v6.subnet_max);
            assert!(v6.network.contains(v6.subnet_min) && v6.network.contains(v6.subnet_max));
            assert!(v6.pool_size() >= 1);
            let first = Subnet6::new_exact(v6.subnet_min, v6.subnet_len).expect("on a boundary");
            let last = Subnet6::new_exact(v6.subnet_max, v6.subnet_len).expect("on a boundary");
            assert!(v6.fits(&first) && v6.fits(&last));
            // Every subnet of the pool has a key flannel can read back.
            assert_eq!(Subnet6::from_key_form(&first.key_form()), Ok(first));
            assert_eq!(Subnet6::from_key_form(&last.key_form()), Ok(last));
        }
    }
});
