//! The netconf on stdin (`netconf::parse`, `parse_for_del`, `peek_version`) over arbitrary
//! bytes: no panic; what ADD accepts DEL accepts too, with nothing marked invalid; an
//! accepted netconf renders, for every spec version, a delegate config named after the
//! network whose delegate and IPAM types are plain plugin names; an error has a code and
//! renders as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vxmesh_cni::version::SpecVersion;
use vxmesh_cni::{delegate, exec, netconf};
use vxmesh_subnet_env::SubnetEnv;

const SUBNET_ENV: &[u8] = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

fuzz_target!(|data: &[u8]| {
    let peeked = netconf::peek_version(data);
    let add = netconf::parse(data);
    let del = netconf::parse_for_del(data);
    match &add {
        Ok(nc) => {
            assert_eq!(peeked.as_deref(), Some(nc.cni_version.as_str()));
            assert!(nc.invalid.is_none());
            let d = del.as_ref().expect("what ADD accepts, DEL accepts");
            assert!(d.invalid.is_none(), "{:?}", d.invalid);
            assert_eq!(
                (&d.name, &d.data_dir, &d.subnet_file, d.cni_version),
                (&nc.name, &nc.data_dir, &nc.subnet_file, nc.cni_version)
            );
            assert!(exec::plugin_name_ok(nc.delegate_type()));
            let env = SubnetEnv::parse(SUBNET_ENV).expect("the fixed subnet file parses");
            for v in SpecVersion::ALL {
                let m = delegate::render(nc, &env, v);
                assert_eq!(m.get("name"), Some(&Value::String(nc.name.clone())));
                assert_eq!(
                    m.get("cniVersion").and_then(Value::as_str),
                    Some(v.as_str())
                );
                let ty = m
                    .get("type")
                    .and_then(Value::as_str)
                    .expect("a string type");
                assert!(exec::plugin_name_ok(ty) && ty != "vxmesh", "{ty:?}");
                let ipam = m
                    .get("ipam")
                    .and_then(Value::as_object)
                    .expect("an ipam object");
                let ipam_ty = ipam
                    .get("type")
                    .and_then(Value::as_str)
                    .expect("a string ipam type");
                assert!(
                    exec::plugin_name_ok(ipam_ty) && ipam_ty != "vxmesh",
                    "{ipam_ty:?}"
                );
            }
        }
        Err(e) => {
            assert_ne!(e.code, 0);
            let text = e.to_json(peeked.as_deref().unwrap_or("1.1.0"));
            let back: Value = serde_json::from_str(&text).expect("error JSON");
            assert_eq!(back["code"], e.code);
        }
    }
    if let Err(e) = &del {
        assert!(add.is_err(), "DEL refused what ADD took: {e:?}");
    }
});
