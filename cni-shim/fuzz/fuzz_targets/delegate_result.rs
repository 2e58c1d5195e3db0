//! A delegate's result (`CniResult::from_slice`, what bridge or another plugin prints) over
//! arbitrary bytes: no panic; in every spec version's layout that converts, the JSON the
//! plugin would print parses back as itself; appending a result to a `prevResult` keeps
//! every `ips[].interface` index inside the interfaces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_cni::result::CniResult;
use vxmesh_cni::version::SpecVersion;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = CniResult::from_slice(data) else {
        return;
    };
    for v in SpecVersion::ALL {
        if let Ok(l) = r.to_layout(v) {
            let back = CniResult::from_value(l.to_value()).expect("our own output parses");
            assert_eq!(back, l, "{v:?}");
        }
    }
    let mut g = r.clone();
    g.fill_route_gateways();
    assert_eq!(g.routes.len(), r.routes.len());
    let both = r.clone().appended_to(r.clone());
    assert_eq!(both.interfaces.len(), 2 * r.interfaces.len());
    for ip in &both.ips {
        if let Some(i) = ip.interface {
            assert!(i < both.interfaces.len());
        }
    }
});
