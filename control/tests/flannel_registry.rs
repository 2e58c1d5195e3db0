//! Registry compatibility with what flanneld writes and reads: network configs, lease
//! keys and values and subnet files in the exact shapes flannel produces (shapes taken
//! from flannel's Go types: `subnet.Config`, `lease.LeaseAttrs` with its omitempty
//! fields, `subnet.WriteSubnetFile`, and the CNI plugin's `loadFlannelSubnetEnv`).
//!
//! The fixture tests need nothing; the etcd test (a real etcd on loopback, like
//! registry_etcd.rs) stores flannel-shaped values the way flanneld does (under a 24 h
//! etcd lease) and has vxmesh read them, skip what it cannot use (one report per
//! key), and take over a flanneld node's lease on migration; it is ignored by a plain
//! `cargo test` and run by scripts/test.sh (`-- --include-ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{rt, Etcd};
use vxmesh_control::agent::acquire;
use vxmesh_control::config::{ConfigError, NetworkConfig};
use vxmesh_control::lease::{parse_lease_key, LeaseAttrs, LeaseKey};
use vxmesh_control::lease_machine::LeaseMachine;
use vxmesh_control::peers::{PeerRules, PeerTable};
use vxmesh_control::registry::Registry;
use vxmesh_control::subnet::Subnet;
use vxmesh_control::subnet_env::SubnetEnv;
use vxmesh_control::vtep_mac;
use vxmesh_testkit::require_etcd;

const PREFIX: &str = "/coreos.com/network";
const KEY: &str = "/coreos.com/network/config";

/// Lease values exactly as flanneld v0.28 marshals `lease.LeaseAttrs` (PublicIPv6 is a
/// pointer → `null`; BackendType, BackendData and BackendV6Data are omitempty).
mod lease_fixtures {
    /// vxlan backend, IPv4 only.
    pub const VXLAN: &str = r#"{"PublicIP":"192.168.56.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    /// vxlan backend, dual stack (key `10.244.2.0-24&fc00:0:0:2::-64`).
    pub const VXLAN_DUAL: &str = r#"{"PublicIP":"192.168.56.12","PublicIPv6":"fc00::12","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:12"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:13"}}"#;
    /// vxlan backend, IPv6 only (key `0.0.0.0-0&fc00:0:0:17::-64`): newSubnetAttrs
    /// sets no PublicIP (the zero ip.IP4) and no BackendData.
    pub const VXLAN_V6_ONLY: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::17","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:17"}}"#;
    /// udp backend: it sets no BackendType at all (omitempty drops the empty string).
    pub const UDP: &str = r#"{"PublicIP":"192.168.56.13","PublicIPv6":null}"#;
    /// host-gw backend: a type, no backend data.
    pub const HOST_GW: &str =
        r#"{"PublicIP":"192.168.56.14","PublicIPv6":null,"BackendType":"host-gw"}"#;
    /// wireguard backend.
    pub const WIREGUARD: &str = r#"{"PublicIP":"192.168.56.15","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm8="}}"#;
    /// vxlan on another VNI.
    pub const OTHER_VNI: &str = r#"{"PublicIP":"192.168.56.16","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":4096,"VtepMAC":"0e:5a:11:22:33:16"}}"#;
}

fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
    NetworkConfig::parse(KEY, json.as_bytes())
}

#[test]
fn network_configs_as_operators_write_them_for_flannel() {
    // kube-flannel.yml's net-conf.json (current upstream manifest).
    let c = parse(
        r#"{
      "Network": "10.244.0.0/16",
      "EnableNFTables": false,
      "Backend": {
        "Type": "vxlan"
      }
    }"#,
    )
    .unwrap();
    assert_eq!(
        (
            c.ipv4.unwrap().subnet_len,
            c.backend.vni.get(),
            c.backend.port
        ),
        (24, 1, 8472)
    );
    assert!(c.notes.is_empty(), "{:?}", c.notes);

    // Documentation/configuration.md, with the vxlan backend.
    let c = parse(r#"{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0", "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}"#).unwrap();
    assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 10, 0, 0));
    assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 99, 0, 0));
    assert_eq!(c.ipv4.unwrap().pool_size(), (0x63 - 0x0a) * 16 + 1);

    // Go's encoding/json matches field names case-insensitively: so does vxmesh.
    let c = parse(r#"{"network":"10.1.0.0/16","subnetlen":26,"subnetmin":"10.1.1.0","BACKEND":{"type":"VXLAN","vni":4096,"port":4789,"mtu":1400}}"#).unwrap();
    assert_eq!(c.ipv4.unwrap().subnet_len, 26);
    assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 1, 1, 0));
    assert_eq!((c.backend.vni.get(), c.backend.port), (4096, 4789));
    assert_eq!(
        c.backend.overlay_mtu(1500),
        1350,
        "flannel: Backend.MTU - 50"
    );

    // Every optional field null (Go leaves the zero value → defaults).
    let c = parse(r#"{"EnableIPv4":true,"EnableIPv6":false,"Network":"10.5.0.0/16","IPv6Network":null,"SubnetMin":null,"SubnetMax":null,"SubnetLen":null,"IPv6SubnetLen":null,"Backend":{"Type":"vxlan","VNI":null,"Port":null,"MTU":null,"GBP":null,"DirectRouting":null,"Learning":null}}"#).unwrap();
    assert_eq!(
        (
            c.ipv4.unwrap().subnet_len,
            c.ipv4.unwrap().subnet_min,
            c.ipv4.unwrap().subnet_max
        ),
        (24, Ipv4Addr::new(10, 5, 1, 0), Ipv4Addr::new(10, 5, 255, 0))
    );
    assert!(c.notes.is_empty(), "{:?}", c.notes);

    // Dual stack (k3s/RKE2 style): both families, nothing to note.
    let c = parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(c.ipv4.unwrap().network.to_string(), "10.42.0.0/16");
    assert_eq!(c.ipv6.unwrap().network.to_string(), "2001:cafe:42::/56");
    assert!(c.notes.is_empty(), "{:?}", c.notes);

    // flannel's vxlan options vxmesh does not implement: accepted, each noted;
    // DirectRouting is implemented.
    let c = parse(r#"{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan","GBP":true,"DirectRouting":true,"Learning":true}}"#).unwrap();
    assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
    assert!(c.notes.iter().any(|n| n.contains("GBP")));
    assert!(c.backend.direct_routing);

    // No Backend: flannel would use udp; vxmesh uses vxlan and says so.
    let c = parse(r#"{"Network":"10.7.0.0/16"}"#).unwrap();
    assert!(c.notes[0].contains("udp"), "{:?}", c.notes);

    // SubnetLen rules (flannel's CheckNetworkConfig).
    assert_eq!(
        parse(r#"{"Network":"10.8.0.0/22"}"#)
            .unwrap()
            .ipv4
            .unwrap()
            .subnet_len,
        24
    );
    assert_eq!(
        parse(r#"{"Network":"10.8.0.0/24"}"#)
            .unwrap()
            .ipv4
            .unwrap()
            .subnet_len,
        26
    );
    for bad in [
        r#"{"Network":"10.8.0.0/16","SubnetLen":31}"#,
        r#"{"Network":"10.8.0.0/16","SubnetLen":17}"#,
        r#"{"Network":"10.8.0.0/16","SubnetMin":"10.9.0.0"}"#,
        r#"{"Network":"10.8.0.0/16","SubnetMax":"10.8.3.7"}"#,
        r#"{"Network":"10.8.0.0/16","SubnetMin":"10.8.9.0","SubnetMax":"10.8.3.0"}"#,
        r#"{"Network":"10.8.0.0/16","Backend":{"Type":"host-gw"}}"#,
        r#"{"Network":"10.8.0.0/16","Backend":{"Type":"udp","Port":8285}}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":false,"Network":"10.8.0.0/16"}"#,
    ] {
        assert!(
            matches!(parse(bad), Err(ConfigError::Field { .. })),
            "{bad}: {:?}",
            parse(bad)
        );
    }
    // flannel's IPv6-only config (its documentation's example with EnableIPv4 off):
    // parsed with flannel's IPv6 defaults, no IPv4 pool.
    let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert!(c.ipv4.is_none());
    assert_eq!(c.ipv6.unwrap().subnet_len, 64);
}

#[test]
fn lease_values_as_flanneld_writes_them() {
    use lease_fixtures::*;
    // vxmesh writes flannel's bytes, field for field.
    let v = LeaseAttrs::parse(VXLAN.as_bytes()).unwrap();
    assert_eq!(v.to_json(), VXLAN);
    let d = LeaseAttrs::parse(VXLAN_DUAL.as_bytes()).unwrap();
    assert_eq!(d.public_ip, Ipv4Addr::new(192, 168, 56, 12));
    assert_eq!(
        d.vxlan.unwrap().vtep_mac.to_string(),
        "0e:5a:11:22:33:12",
        "BackendData (v4), not BackendV6Data"
    );
    assert_eq!(
        d.to_json(),
        VXLAN_DUAL,
        "dual stack written back byte for byte"
    );
    let o = LeaseAttrs::parse(VXLAN_V6_ONLY.as_bytes()).unwrap();
    assert!(o.vxlan.is_none() && o.vxlan_v6.is_some());
    assert_eq!(o.to_json(), VXLAN_V6_ONLY);
    for (key, v4, v6) in [
        (
            "10.244.2.0-24&fc00:0:0:2::-64",
            Some("10.244.2.0/24"),
            Some("fc00:0:0:2::/64"),
        ),
        ("0.0.0.0-0&fc00:0:0:17::-64", None, Some("fc00:0:0:17::/64")),
        ("10.244.1.0-24", Some("10.244.1.0/24"), None),
    ] {
        let k = LeaseKey::parse(&format!("/coreos.com/network/subnets/{key}")).unwrap();
        assert_eq!(k.ipv4_subnet().map(|s| s.to_string()).as_deref(), v4);
        assert_eq!(k.ipv6_subnet().map(|s| s.to_string()).as_deref(), v6);
        assert_eq!(k.key_form(), key);
    }
    for other in [UDP, HOST_GW, WIREGUARD] {
        let a = LeaseAttrs::parse(other.as_bytes()).unwrap();
        assert!(a.vxlan.is_none(), "{other}");
    }
    // Keys: plain and dual-stack, as subnet.MakeSubnetKey writes them.
    assert_eq!(
        parse_lease_key("/coreos.com/network/subnets/10.244.2.0-24&fc00:0:0:2::-64"),
        Some("10.244.2.0/24".parse().unwrap())
    );
    assert_eq!(
        parse_lease_key("/coreos.com/network/subnets/10.244.1.0-24"),
        Some("10.244.1.0/24".parse().unwrap())
    );
}

/// flannel's CNI plugin's reading of a subnet file (flannel-io/cni-plugin
/// `loadFlannelSubnetEnv`): KEY=VALUE lines, FLANNEL_NETWORK a comma list of CIDRs,
/// FLANNEL_SUBNET parsed as a CIDR (its network part used), MTU an unsigned number,
/// IPMASQ `== "true"`; an error if network, subnet, MTU or IPMASQ is missing.
fn flannel_cni_load(text: &str) -> Result<(Vec<Subnet>, Subnet, u32, bool), String> {
    let (mut nets, mut sn, mut mtu, mut masq) = (None, None, None, None);
    let cidr = |s: &str| -> Result<Subnet, String> {
        let (ip, len) = s.split_once('/').ok_or(format!("{s}: not a CIDR"))?;
        Subnet::new(
            ip.parse().map_err(|_| format!("{s}: bad IP"))?,
            len.parse().map_err(|_| format!("{s}: bad length"))?,
        )
        .map_err(|e| e.to_string())
    };
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        match k {
            "FLANNEL_NETWORK" => {
                nets = Some(v.split(',').map(cidr).collect::<Result<Vec<_>, _>>()?)
            }
            "FLANNEL_SUBNET" => sn = Some(cidr(v)?),
            "FLANNEL_MTU" => mtu = Some(v.parse::<u32>().map_err(|e| e.to_string())?),
            "FLANNEL_IPMASQ" => masq = Some(v == "true"),
            _ => {}
        }
    }
    match (nets, sn, mtu, masq) {
        (Some(n), Some(s), Some(m), Some(q)) => Ok((n, s, m, q)),
        other => Err(format!("missing fields: {other:?}")),
    }
}

#[test]
fn subnet_files_are_interchangeable() {
    // What flanneld (WriteSubnetFile) writes for 10.244.3.0/24, --ip-masq, MTU 1450.
    let flanneld = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    let vxmesh = SubnetEnv {
        ipv4: Some((
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        )),
        mtu: 1450,
        ipmasq: true,
        ipv6: None,
    }
    .render();
    assert_eq!(vxmesh, flanneld, "byte-identical to flanneld's subnet file");
    let parsed = flannel_cni_load(&vxmesh).unwrap();
    assert_eq!(parsed, flannel_cni_load(flanneld).unwrap());
    assert_eq!(parsed.1.to_string(), "10.244.3.0/24");
    // vxmesh reads flanneld's file (its subnet hint), dual-stack lines included.
    let dual = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    assert_eq!(
        SubnetEnv::subnet_from(dual),
        Some("10.42.7.0/24".parse().unwrap())
    );
    // ... and writes the same bytes for a dual-stack lease it carries (kernel dataplane).
    let vxmesh_dual = SubnetEnv {
        ipv4: Some((
            "10.42.0.0/16".parse().unwrap(),
            "10.42.7.0/24".parse().unwrap(),
        )),
        mtu: 1450,
        ipmasq: false,
        ipv6: Some((
            "2001:cafe:42::/56".parse().unwrap(),
            "2001:cafe:42:7::/64".parse().unwrap(),
        )),
    }
    .render();
    assert_eq!(
        vxmesh_dual, dual,
        "byte-identical to a dual-stack flanneld's file"
    );
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn vxmesh_reads_and_takes_over_flanneld_leases_in_etcd() {
    require_etcd();
    use lease_fixtures::*;
    let etcd = Etcd::start();
    // An operator's config in odd letter case, with nulls, as flannel accepts it.
    etcd.put(
        KEY,
        r#"{"network":"10.244.0.0/16","SubnetLen":null,"backend":{"type":"vxlan","VNI":1,"Port":null}}"#,
    );
    // flanneld puts each lease under a 24 h etcd lease.
    let grant = etcd.ctl(&["lease", "grant", "86400"]).unwrap();
    let lease_id = grant.split_whitespace().nth(1).unwrap().to_string();
    let s = |k: &str| format!("{PREFIX}/subnets/{k}");
    let put = [
        ("10.244.1.0-24", VXLAN),
        ("10.244.2.0-24&fc00:0:0:2::-64", VXLAN_DUAL),
        ("10.244.3.0-24", UDP),
        ("10.244.4.0-24", HOST_GW),
        ("10.244.5.0-24", WIREGUARD),
        ("10.244.6.0-24", OTHER_VNI),
        ("10.244.7.0-24", "not json"),
        ("garbage-key", VXLAN),
    ];
    for (k, v) in put {
        etcd.ctl(&["put", &format!("--lease={lease_id}"), &s(k), v])
            .unwrap();
    }

    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        assert_eq!((cfg.ipv4.unwrap().subnet_len, cfg.backend.port), (24, 8472));

        // Peers: the two vxlan leases; every other one skipped, each reported once.
        let listing = reg.list_subnets().await.unwrap();
        let entries = &listing.entries;
        let mut table = PeerTable::new(PeerRules::from_config(&cfg).unwrap(), None);
        let mut skips = Vec::new();
        let _ = table.reset(entries, &mut skips);
        let peers: Vec<String> = table
            .peers()
            .map(|p| format!("{} {} {}", p.subnet, p.public_ip, p.vtep_mac))
            .collect();
        assert_eq!(
            peers,
            [
                "10.244.1.0/24 192.168.56.11 c6:d2:32:6f:8f:44",
                "10.244.2.0/24 192.168.56.12 0e:5a:11:22:33:12"
            ]
        );
        let why: Vec<String> = skips
            .iter()
            .map(|s| {
                format!(
                    "{} → {}",
                    s.key.rsplit('/').next().unwrap(),
                    s.rejection.why
                )
            })
            .collect();
        println!("skipped, one warning each:\n  {}", why.join("\n  "));
        assert_eq!(skips.len(), 6, "{why:#?}");
        for (key, word) in [
            ("10.244.3.0-24", "udp"),
            ("10.244.4.0-24", "host-gw"),
            ("10.244.5.0-24", "wireguard"),
            ("10.244.6.0-24", "VNI 4096"),
            ("10.244.7.0-24", "flannel's format"),
            ("garbage-key", "<ip>-<len>"),
        ] {
            assert!(
                why.iter().any(|w| w.starts_with(key) && w.contains(word)),
                "{key}: {word} not in {why:#?}"
            );
        }
        let mut again = Vec::new();
        assert!(table.reset(entries, &mut again).is_empty());
        assert!(again.is_empty(), "skips are reported once: {again:?}");

        // Migration: vxmesh on flanneld's node 192.168.56.11 (its subnet file says
        // 10.244.1.0/24) keeps the subnet and rewrites the lease with its VtepMAC.
        let me = Ipv4Addr::new(192, 168, 56, 11);
        let hint = SubnetEnv::subnet_from(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        );
        let mut machine = LeaseMachine::new(cfg.clone(), me, hint, 7);
        let attrs = LeaseAttrs::vxlan(me, 1, vtep_mac::derive(me, 1));
        let held = acquire(&reg, &mut machine, &attrs, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(held.subnet().unwrap().to_string(), "10.244.1.0/24");
        let now = reg.list_subnets().await.unwrap();
        let mine = now
            .entries
            .iter()
            .find(|e| e.key == s("10.244.1.0-24"))
            .unwrap();
        assert_eq!(
            String::from_utf8(mine.value.clone()).unwrap(),
            attrs.to_json()
        );
        assert_eq!(mine.lease, held.lease_id, "now under vxmesh's etcd lease");
        // …in a value flanneld reads back as its own kind of vxlan lease.
        let back = LeaseAttrs::parse(&mine.value).unwrap();
        assert_eq!(back.backend_type, "vxlan");
        assert_eq!(back.vxlan.unwrap().vtep_mac, vtep_mac::derive(me, 1));

        // A new node never takes a subnet flanneld holds, whatever its backend.
        let newcomer = Ipv4Addr::new(192, 168, 56, 30);
        let mut m2 = LeaseMachine::new(cfg, newcomer, None, 8);
        let got = acquire(
            &reg,
            &mut m2,
            &LeaseAttrs::vxlan(newcomer, 1, vtep_mac::derive(newcomer, 1)),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let third: u8 = got.subnet().unwrap().addr().octets()[2];
        assert!(!(1..=7).contains(&third), "took a held subnet: {}", got.subnet().unwrap());
    });
}
