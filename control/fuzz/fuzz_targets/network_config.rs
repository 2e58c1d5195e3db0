//! `NetworkConfig::parse` over arbitrary bytes (what an operator may have put at
//! `<prefix>/config`): no panic; an accepted config is internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::config::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = NetworkConfig::parse("/coreos.com/network/config", data) {
        assert!(c.subnet_len <= 30 && c.subnet_len >= c.network.prefix_len() + 2 || c.subnet_len == 24);
        assert!(c.subnet_min <= c.subnet_max);
        assert!(c.network.contains(c.subnet_min) && c.network.contains(c.subnet_max));
        assert!(c.pool_size() >= 1);
        assert!(c.backend.vni.get() <= 0xff_ffff);
        assert!(c.backend.port != 0);
    }
});
