//! The subnet file (`subnet.env`) over arbitrary bytes, through the reader vxmeshd and the
//! CNI plugin share: no panic; an accepted file renders to text that reads back the same;
//! the agent's restart hints are the subnets the plugin sees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_subnet_env::{ipv6_subnet_hint, subnet_hint, SubnetEnv};

fuzz_target!(|data: &[u8]| {
    let hint = subnet_hint(data);
    let hint6 = ipv6_subnet_hint(data);
    if let Ok(env) = SubnetEnv::parse(data) {
        let again = SubnetEnv::parse(env.render().as_bytes()).expect("our own rendering parses");
        assert_eq!(again, env);
        if let Some(subnet) = env.subnet {
            assert_eq!(hint, Ok(Some(subnet)), "the agent's hint is the plugin's subnet");
        }
        if let Some(subnet6) = env.ipv6_subnet {
            assert_eq!(hint6, Ok(Some(subnet6)), "the IPv6 hint is the plugin's IPv6 subnet");
        }
    }
});
