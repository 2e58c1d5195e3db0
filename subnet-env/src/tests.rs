#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

use super::*;

/// What flanneld's WriteSubnetFile writes for 10.244.3.0/24 of 10.244.0.0/16, MTU 1450,
/// no --ip-masq.
const FLANNELD: &[u8] = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

fn v4(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn lease() -> SubnetEnv {
    SubnetEnv::for_lease(v4("10.244.0.0/16"), v4("10.244.3.0/24"), 1450, false)
}

#[test]
fn renders_like_flanneld() {
    assert_eq!(lease().render().as_bytes(), FLANNELD);
    assert_eq!(
        lease().subnet.unwrap().to_string(),
        "10.244.3.1/24",
        "FLANNEL_SUBNET is the subnet's first address"
    );
    let dual = SubnetEnv {
        ipv6_networks: vec!["fc00::/48".parse().unwrap()],
        ipv6_subnet: Some("fc00:0:0:1::1/64".parse().unwrap()),
        ..lease()
    };
    assert_eq!(
        dual.render(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    );
}

#[test]
fn parses_flanneld_output() {
    let env = SubnetEnv::parse(FLANNELD).unwrap();
    assert_eq!(env, lease());
    assert_eq!(env.networks[0].to_string(), "10.244.0.0/16");
    assert_eq!(env.subnet.unwrap().network().to_string(), "10.244.3.0");
    assert_eq!((env.mtu, env.ipmasq), (1450, false));
}

#[test]
fn parses_dual_stack_and_comments() {
    let text = b"# written by vxmeshd\nFLANNEL_NETWORK=10.5.0.0/16,10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1472   # underlay 1522\nFLANNEL_IPMASQ=true\n";
    let env = SubnetEnv::parse(text).unwrap();
    assert_eq!(env.networks.len(), 1, "duplicates are folded");
    assert_eq!(
        env.ipv6_subnet.unwrap().network().to_string(),
        "fc00:0:0:1::"
    );
    assert!(env.ipmasq);
    assert_eq!(env.mtu, 1472);
}

/// Decorations flanneld's reader (godotenv) takes: every reader here takes them the same.
#[test]
fn line_rules() {
    let text = b"\r\n  # comment line\r\nexport FLANNEL_NETWORK = \"10.244.0.0/16\"\r\n\tFLANNEL_SUBNET='10.244.3.1/24'  # the gateway\r\nFLANNEL_MTU=9000\r\nFLANNEL_MTU=1450\r\nNOT A LINE\r\nOTHER_KEY=x\r\nFLANNEL_IPMASQ=false";
    assert_eq!(
        SubnetEnv::parse(text).unwrap(),
        lease(),
        "the last FLANNEL_MTU wins"
    );
    assert_eq!(subnet_hint(text).unwrap(), Some(v4("10.244.3.1/24")));
    let pairs: Vec<_> = entries("exported=1\nexport\tA=2\n=3\n#B=4\n").collect();
    assert_eq!(pairs, [("exported", "1"), ("A", "2"), ("", "3")]);
}

#[test]
fn ipv6_hint_reads_only_flannel_ipv6_subnet() {
    // As a dual-stack flanneld writes its file (WriteSubnetFile), then junk elsewhere.
    let text = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=junk\nFLANNEL_IPMASQ=true\n";
    let got = ipv6_subnet_hint(text).unwrap().unwrap();
    assert_eq!(got.to_string(), "fd00:10:244:3::1/64");
    assert_eq!(
        ipv6_subnet_hint(b"FLANNEL_SUBNET=10.244.3.1/24\n").unwrap(),
        None
    );
    let e = ipv6_subnet_hint(b"FLANNEL_IPV6_SUBNET=10.244.3.1/24\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("FLANNEL_IPV6_SUBNET"), "{e}");
}

#[test]
fn hint_reads_only_flannel_subnet() {
    // What vxmeshd (or flanneld) reads on restart: the subnet alone, other keys may be junk.
    assert_eq!(
        subnet_hint(b"FLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=junk\n").unwrap(),
        Some(v4("10.244.7.1/24"))
    );
    assert_eq!(
        subnet_hint(b"FLANNEL_SUBNET=10.244.7.1/24   # restored by hand\n").unwrap(),
        Some(v4("10.244.7.1/24")),
        "a trailing comment is not part of the value"
    );
    assert_eq!(
        subnet_hint(b"FLANNEL_NETWORK=10.244.0.0/16\n").unwrap(),
        None
    );
    assert_eq!(subnet_hint(b"").unwrap(), None);
    let e = subnet_hint(b"FLANNEL_SUBNET=10.244.7.1\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid FLANNEL_SUBNET=\"10.244.7.1\": \"10.244.7.1\" is not in CIDR notation (address/length)"
    );
}

#[test]
fn reports_every_missing_key() {
    assert_eq!(
        SubnetEnv::parse(b"").unwrap_err(),
        SubnetEnvError::Missing(vec![
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ])
    );
    assert_eq!(
        SubnetEnv::parse(
            b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n"
        )
        .unwrap_err(),
        SubnetEnvError::Missing(vec!["FLANNEL_IPMASQ"])
    );
}

#[test]
fn names_the_invalid_key() {
    let e = SubnetEnv::parse(b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\nFLANNEL_IPMASQ=false\n").unwrap_err();
    assert!(matches!(
        e,
        SubnetEnvError::Invalid {
            key: "FLANNEL_MTU",
            ..
        }
    ));
    let e = SubnetEnv::parse(b"FLANNEL_SUBNET=fc00::1/64\n").unwrap_err();
    assert!(matches!(
        e,
        SubnetEnvError::Invalid {
            key: "FLANNEL_SUBNET",
            ..
        }
    ));
    let e = SubnetEnv::parse(b"FLANNEL_IPV6_NETWORK=10.0.0.0/8\n").unwrap_err();
    assert!(matches!(
        e,
        SubnetEnvError::Invalid {
            key: "FLANNEL_IPV6_NETWORK",
            ..
        }
    ));
    let e = SubnetEnv::parse(b"FLANNEL_IPMASQ=yes\n").unwrap_err();
    assert!(e.to_string().contains("FLANNEL_IPMASQ"));
    let e = SubnetEnv::parse(b"FLANNEL_NETWORK=,\n").unwrap_err();
    assert_eq!(e.to_string(), "invalid FLANNEL_NETWORK=\",\": empty");
}

#[test]
fn subnet_outside_network_is_inconsistent() {
    let e = SubnetEnv::parse(b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "FLANNEL_SUBNET 10.9.3.1/24 is not inside FLANNEL_NETWORK 10.244.0.0/16"
    );
    // Larger than the network it names: not inside either.
    let e = SubnetEnv::parse(b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.0.1/8\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap_err();
    assert!(matches!(e, SubnetEnvError::Inconsistent { .. }));
    // A network written with host bits set still contains its subnets.
    let env = SubnetEnv::parse(b"FLANNEL_NETWORK=10.244.9.9/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();
    assert_eq!(env.networks[0].to_string(), "10.244.9.9/16");
}

#[test]
fn survives_binary_garbage() {
    let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    assert!(SubnetEnv::parse(&junk).is_err());
    assert!(subnet_hint(&junk).is_ok_and(|h| h.is_none()));
}

#[test]
fn atomic_write_replaces_and_leaves_no_temp() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("run/flannel/subnet.env");
    lease().write_atomic(&p).unwrap();
    let mut e2 = lease();
    e2.mtu = 1400;
    e2.write_atomic(&p).unwrap();
    assert_eq!(SubnetEnv::parse(&fs::read(&p).unwrap()).unwrap(), e2);
    let names: Vec<_> = fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn failed_write_leaves_the_old_file_and_no_temp() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("subnet.env");
    lease().write_atomic(&p).unwrap();
    // A directory where the temporary file would go makes the open fail.
    let tmp = d
        .path()
        .join(format!(".subnet.env.tmp.{}", std::process::id()));
    fs::create_dir(&tmp).unwrap();
    let mut e2 = lease();
    e2.mtu = 1400;
    assert!(e2.write_atomic(&p).is_err());
    assert_eq!(fs::read(&p).unwrap(), FLANNELD);
}

fn arb_lease() -> impl Strategy<Value = SubnetEnv> {
    (
        any::<u32>(),
        8u8..=24,
        2u8..=8,
        any::<u32>(),
        68u32..=65535,
        any::<bool>(),
    )
        .prop_map(|(base, net_len, extra, pick, mtu, ipmasq)| {
            let network = Ipv4Network::new(Ipv4Addr::from(base), net_len).unwrap();
            let sub_len = net_len + extra;
            let host_bits = u32::from(sub_len - net_len);
            let index = pick % (1u32 << host_bits);
            let sub_base = u32::from(network.network()) | (index << (32 - u32::from(sub_len)));
            let subnet = Ipv4Network::new(Ipv4Addr::from(sub_base), sub_len).unwrap();
            SubnetEnv::for_lease(network, subnet, mtu, ipmasq)
        })
}

proptest! {
    /// What vxmeshd writes, every reader reads back unchanged.
    #[test]
    fn written_files_read_back(env in arb_lease()) {
        let text = env.render();
        prop_assert_eq!(SubnetEnv::parse(text.as_bytes()).unwrap(), env.clone());
        prop_assert_eq!(subnet_hint(text.as_bytes()).unwrap(), env.subnet);
    }

    /// Comments, blank lines, whitespace, `export`, quotes and CRLF change nothing.
    #[test]
    fn decorations_do_not_change_the_meaning(
        env in arb_lease(),
        deco in proptest::collection::vec((0u8..6, "[ \t]{0,2}"), 4),
    ) {
        let mut text = String::from("# subnet file\n");
        for (line, (how, pad)) in env.render().lines().zip(deco) {
            let (k, v) = line.split_once('=').unwrap();
            text.push_str(&match how {
                0 => format!("{pad}{k}{pad}={pad}{v}{pad}\n"),
                1 => format!("export {k}={v}\n"),
                2 => format!("{k}=\"{v}\"\n"),
                3 => format!("{k}='{v}'{pad}# note\n"),
                4 => format!("{k}={v}\r\n"),
                _ => format!("\n{k}={v}   # {k}=junk\n"),
            });
        }
        prop_assert_eq!(SubnetEnv::parse(text.as_bytes()).unwrap(), env.clone());
        prop_assert_eq!(subnet_hint(text.as_bytes()).unwrap(), env.subnet);
    }

    /// Arbitrary bytes: an error or a file that renders and reads back the same.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = subnet_hint(&bytes);
        if let Ok(env) = SubnetEnv::parse(&bytes) {
            prop_assert_eq!(SubnetEnv::parse(env.render().as_bytes()).unwrap(), env);
        }
    }
}
