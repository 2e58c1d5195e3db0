//! Sequences of watch events (put/delete of arbitrary keys, values and create
//! revisions, full listings) into a dual-stack `PeerTable`: no panic; our own
//! subnets, PublicIP(v6) and VtepMACs are never a peer's; every peer lies inside the
//! Network at SubnetLen (its IPv6 half inside IPv6Network at IPv6SubnetLen), has a
//! unicast VtepMAC, and no two peers overlap or share a PublicIP or VtepMAC, in
//! either family; the table always equals a fresh judgement of the leases it was
//! told about (its peers and every verdict). The same events go to an IPv6-only
//! table, whose peers obey the same rules in IPv6.
#![no_main]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use vxmesh_control::lease::LeaseKey;
use vxmesh_control::peers::{
    Ipv6OnlyRules, Ipv6Rules, LocalNode, LocalNode6, PeerIpv6, PeerRules, PeerTable,
};
use vxmesh_control::registry::Entry;

const KEYS: [&str; 15] = [
    "/coreos.com/network/subnets/10.244.1.0-24",
    "/coreos.com/network/subnets/10.244.2.0-24",
    "/coreos.com/network/subnets/10.244.3.0-24&fc00::-64",
    "/coreos.com/network/subnets/10.244.4.0-24&fc00:0:0:2::-64",
    "/coreos.com/network/subnets/10.244.5.0-24&fc00:0:0:2::-64",
    "/coreos.com/network/subnets/10.244.6.0-24&fc00:0:0:1::-64",
    "/coreos.com/network/subnets/10.244.7.0-24&fc00::-48",
    "/coreos.com/network/subnets/10.244.3.0-24",
    "/coreos.com/network/subnets/10.244.0.0-16",
    "/coreos.com/network/subnets/0.0.0.0-0",
    "/coreos.com/network/subnets/192.168.100.12-32",
    "/coreos.com/network/subnets/garbage",
    "/coreos.com/network/subnets/0.0.0.0-0&fc00:0:0:1::-64",
    "/coreos.com/network/subnets/0.0.0.0-0&fc00:0:0:3::-64",
    "/coreos.com/network/subnets/0.0.0.0-0&fc00::-60",
];

fn rules() -> PeerRules {
    PeerRules {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet_len: 24,
        vni: 1,
        ipv6: Some(Ipv6Rules {
            network: "fc00::/48".parse().unwrap(),
            subnet_len: 64,
        }),
    }
}

fn local() -> LocalNode {
    LocalNode {
        public_ip: Ipv4Addr::new(192, 168, 100, 11),
        vtep_mac: "0e:00:00:00:00:11".parse().unwrap(),
        ipv6: Some((LOCAL_V6, "0e:00:00:00:06:11".parse().unwrap())),
    }
}

const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11);

fn table() -> PeerTable {
    let mut t = PeerTable::new(rules(), Some(local()));
    let _ = t.set_own(
        LeaseKey::parse("10.244.1.0-24&fc00:0:0:1::-64").ok(),
        &mut Vec::new(),
    );
    t
}

fn table6() -> PeerTable<PeerIpv6> {
    let rules = Ipv6OnlyRules {
        ipv6: rules().ipv6.unwrap(),
        vni: 1,
    };
    let local = LocalNode6 {
        public_ipv6: LOCAL_V6,
        vtep_mac: "0e:00:00:00:06:11".parse().unwrap(),
    };
    let mut t = PeerTable::ipv6_only(rules, Some(local));
    let _ = t.set_own(
        LeaseKey::parse("0.0.0.0-0&fc00:0:0:1::-64").ok(),
        &mut Vec::new(),
    );
    t
}

/// The IPv6-only table's invariants, and its equality with a fresh judgement.
fn check6(t: &PeerTable<PeerIpv6>, known: &BTreeMap<String, Entry>) {
    let peers: Vec<_> = t.peers().copied().collect();
    let own6 = "fc00:0:0:1::/64".parse().unwrap();
    let r6 = rules().ipv6.unwrap();
    for (i, p) in peers.iter().enumerate() {
        assert!(!p.subnet.overlaps(&own6), "own IPv6 subnet in a peer");
        assert_ne!(p.public_ipv6, LOCAL_V6);
        assert!(r6.network.contains_subnet(&p.subnet) && p.subnet.prefix_len() == 64);
        assert!(!p.public_ipv6.is_loopback() && !p.public_ipv6.is_multicast());
        for q in &peers[i + 1..] {
            assert!(!p.subnet.overlaps(&q.subnet));
            assert_ne!(p.public_ipv6, q.public_ipv6);
            assert_ne!(p.vtep_mac, q.vtep_mac);
        }
    }
    let mut fresh = table6();
    let all: Vec<Entry> = known.values().cloned().collect();
    let _ = fresh.reset(&all, &mut Vec::new());
    assert!(
        fresh.verdicts().eq(t.verdicts()),
        "IPv6-only: incremental and fresh verdicts differ"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut t = table();
    let mut t6 = table6();
    let mut known: BTreeMap<String, Entry> = BTreeMap::new();
    let mut skips = Vec::new();
    // Records: [op, key index, create revision, len, value bytes...]
    let mut rest = data;
    while let [op, k, rev, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (value, next) = tail.split_at(n);
        let e = Entry {
            key: KEYS[*k as usize % KEYS.len()].to_string(),
            value: value.to_vec(),
            create_revision: i64::from(*rev),
            mod_revision: i64::from(*rev),
            lease: 0,
        };
        match op % 3 {
            0 => {
                known.insert(e.key.clone(), e.clone());
                let _ = t.put(&e, &mut skips);
                let _ = t6.put(&e, &mut skips);
            }
            1 => {
                known.remove(&e.key);
                let _ = t.delete(&e.key, &mut skips);
                let _ = t6.delete(&e.key, &mut skips);
            }
            _ => {
                known = [(e.key.clone(), e.clone())].into();
                let _ = t6.reset(std::slice::from_ref(&e), &mut skips);
                let _ = t.reset(&[e], &mut skips);
                assert!(t.len() <= 1);
            }
        }
        check6(&t6, &known);
        let peers: Vec<_> = t.peers().copied().collect();
        for (i, p) in peers.iter().enumerate() {
            assert_ne!(
                p.subnet.to_string(),
                "10.244.1.0/24",
                "own subnet became a peer"
            );
            assert_ne!(p.public_ip, local().public_ip);
            assert_ne!(p.vtep_mac, local().vtep_mac);
            assert!(p.vtep_mac.is_unicast());
            assert!(rules().network.contains_subnet(&p.subnet) && p.subnet.prefix_len() == 24);
            if let Some(v6) = p.ipv6 {
                let own6 = "fc00:0:0:1::/64".parse().unwrap();
                assert!(!v6.subnet.overlaps(&own6), "own IPv6 subnet in a peer");
                assert_ne!(v6.public_ipv6, LOCAL_V6);
                assert_ne!(v6.vtep_mac, local().ipv6.unwrap().1);
                let r6 = rules().ipv6.unwrap();
                assert!(r6.network.contains_subnet(&v6.subnet) && v6.subnet.prefix_len() == 64);
                assert!(!v6.public_ipv6.is_loopback() && !v6.public_ipv6.is_multicast());
            }
            for q in &peers[i + 1..] {
                assert!(!p.subnet.contains(q.subnet.addr()) && !q.subnet.contains(p.subnet.addr()));
                assert_ne!(p.public_ip, q.public_ip);
                assert_ne!(p.vtep_mac, q.vtep_mac);
                if let (Some(a), Some(b)) = (p.ipv6, q.ipv6) {
                    assert!(!a.subnet.overlaps(&b.subnet));
                    assert_ne!(a.public_ipv6, b.public_ipv6);
                    assert_ne!(a.vtep_mac, b.vtep_mac);
                }
            }
        }
        let mut fresh = table();
        let all: Vec<Entry> = known.values().cloned().collect();
        let _ = fresh.reset(&all, &mut Vec::new());
        assert!(
            fresh.peers().eq(t.peers()),
            "incremental and fresh judgements differ"
        );
        // Every verdict, not only the peers: events judged on their own must reach
        // exactly what a full pass reaches.
        assert!(
            fresh.verdicts().eq(t.verdicts()),
            "incremental and fresh verdicts differ"
        );
        rest = next;
    }
});
