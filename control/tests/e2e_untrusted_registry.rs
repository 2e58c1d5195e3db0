//! Privileged end to end (root, network namespaces; VXMESH_PRIVILEGED_TESTS=1): a running
//! 3-node netns lab (scripts/lab.sh) whose etcd prefix gets the hostile keys of issue 11
//! written into it — a node's PublicIP as a /32, the default route, a subnet outside the
//! Network, the whole Network, a /25 inside a live node's /24, a second key for a live
//! node's subnet, a second lease claiming a live node's PublicIP, an oversized value.
//! Cross-node pod traffic stays 6 of 6, no node gets a route for any of them, every node
//! and `vxmeshctl leases` list them as rejected with their reason, and /metrics counts
//! them. Then a reservation: a node's key made lease-less (flannel's way to pin a subnet)
//! stays lease-less across a restart of that node's agent. Last, a config whose Network
//! holds the nodes' underlay: a node starting on it refuses, says why, claims nothing.
//! Apart: a node's own key overwritten with garbage is taken back; the network config
//! changed, garbled and deleted in etcd under running nodes is reported by each, then
//! cleared when it is put back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::Lab;
use serde_json::Value;
use vxmesh_testkit::{require_etcd, require_root, wait_for};

const SUBNETS: &str = "/coreos.com/network/subnets/";

/// A 2-node lab with one pod each and a short iperf3.
const TWO_NODES: &[(&str, &str)] = &[
    ("VXLAB_NODES", "2"),
    ("VXLAB_PODS", "1"),
    ("VXLAB_IPERF_SECONDS", "1"),
];

/// The registry's key for `subnet`, as etcd holds it now.
fn key_of(lab: &Lab, subnet: &str) -> common::lab::LeaseKey {
    lab.lease_keys()
        .into_iter()
        .find(|k| k.subnet == subnet)
        .unwrap()
}

/// The etcd lease id attached to `key` (0: none, a reservation).
fn lease_of(lab: &Lab, key: &str) -> i64 {
    let out = lab.etcdctl(&["get", key, "-w", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["count"], 1, "{key} missing: {out}");
    v["kvs"][0]["lease"].as_i64().unwrap_or(0)
}

/// The rejected leases a node's agent reports: (key, reason).
fn rejected(lab: &Lab, node: &str) -> Vec<(String, String)> {
    lab.status(node)["node"]["rejected"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn hostile_keys_and_a_reservation_in_a_running_lab() {
    require_root();
    require_etcd();
    let lab = Lab::new("vxh", &[("VXLAB_PODS", "1"), ("VXLAB_IPERF_SECONDS", "1")]);
    let (ok, out) = lab.cmd(&["up"]);
    println!("{out}");
    assert!(ok, "lab up failed");
    lab.check(6, "before");

    let s1 = lab.subnet_of(1); // e.g. 10.244.94.0/24
    let s2 = lab.subnet_of(2);
    let n1_third = s1.split('.').nth(2).unwrap().to_string();
    let n2_mac = lab.status("n2")["node"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_string();
    // Two /24s no node holds: one for the lease that claims node 2's PublicIP, one
    // for the oversized value. (A fixed key would be a node's own one run in 85: the
    // nodes' subnets are random, and a put on a node's key takes its subnet away.)
    let s3 = lab.subnet_of(3);
    let mut free_subnets = (1..=254u32)
        .rev()
        .map(|i| format!("10.244.{i}.0/24"))
        .filter(|s| ![&s1, &s2, &s3].contains(&s));
    let free = free_subnets.next().unwrap();
    let free_too_large = free_subnets.next().unwrap();
    let vxlan = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    let stranger = vxlan("192.168.100.70", "0e:00:00:00:00:70");
    let hostile: Vec<(String, String, &str)> = vec![
        // Measured before this check existed: every node routed node 2's underlay
        // address into vxmesh0, cross-node traffic fell to 2 of 6.
        (
            "192.168.100.12-32".into(),
            stranger.clone(),
            "outside_network",
        ),
        ("0.0.0.0-0".into(), stranger.clone(), "outside_network"),
        ("10.245.1.0-24".into(), stranger.clone(), "outside_network"),
        ("10.244.0.0-16".into(), stranger.clone(), "wrong_subnet_len"),
        (
            format!("10.244.{n1_third}.128-25"),
            stranger.clone(),
            "wrong_subnet_len",
        ),
        (
            format!("{}&fc00::-64", s2.replace('/', "-")),
            vxlan("192.168.100.71", "0e:00:00:00:00:71"),
            "overlap",
        ),
        (
            free.replace('/', "-"),
            vxlan("192.168.100.12", "0e:00:00:00:00:72"),
            "duplicate_public_ip",
        ),
        (
            free_too_large.replace('/', "-"),
            " ".repeat(8192),
            "too_large",
        ),
    ];
    for (k, v, _) in &hostile {
        lab.etcdctl(&["put", &format!("{SUBNETS}{k}"), v]);
    }
    // A generous bound: on 2 busy vCPUs (a CI run's other tests) the 10 s this waited
    // before ran out twice (stops 46 and 47) with every later check passing. The
    // oversized value's key was fixed then (10.244.255.0/24): when it was a node's own,
    // that node took its key back and no node ever judged it, the same failure.
    let all_judged = wait_for(Duration::from_secs(30), || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| rejected(&lab, n).len() >= hostile.len())
    });

    // Traffic and routes first: what an operator would notice.
    lab.check(6, "with every hostile key in etcd");
    for n in ["n1", "n2", "n3"] {
        let routes = lab.routes(n);
        for bad in [
            "192.168.100.12 ",
            "default",
            "10.245.1.0/24",
            "10.244.0.0/16",
            &format!("10.244.{n1_third}.128/25"),
            &free,
        ] {
            assert!(
                !routes
                    .lines()
                    .any(|l| l.starts_with(bad) && l.contains("vxmesh0")),
                "{n} routes {bad} into the overlay:\n{routes}"
            );
        }
        if n != "n2" {
            let neigh = lab.ip_json(n, &["neigh", "show", "dev", "vxmesh0"]);
            let text = neigh.to_string();
            assert!(text.contains(&n2_mac), "{n}: node 2's VtepMAC kept: {text}");
            assert!(
                !text.contains("0e:00:00:00:00:71") && !text.contains("0e:00:00:00:00:72"),
                "{n}: a hostile VtepMAC in the neighbours: {text}"
            );
        }
    }
    println!("no route for any hostile key on any node");

    // Every node lists each key as rejected, with its reason, and counts it.
    // What each node had judged, and its watch's state, should the wait run out (a
    // lag seen under a full CI run's load whose cause is not known).
    let judged = || {
        ["n1", "n2", "n3"]
            .map(|n| {
                let st = lab.status(n);
                format!(
                    "{n}: {} of {} judged, watch restarts {}, listings {}, etcd unreachable for {}",
                    rejected(&lab, n).len(),
                    hostile.len(),
                    st["watch_restarts"],
                    st["watch_listings"],
                    st["etcd_unreachable_for_secs"]
                )
            })
            .join("; ")
    };
    match all_judged {
        Some(d) => println!("every node judged every hostile key in {d:?}"),
        None => panic!("not every node judged every key within 30 s: {}", judged()),
    }
    for n in ["n1", "n2", "n3"] {
        let got = rejected(&lab, n);
        for (k, _, reason) in &hostile {
            let key = format!("{SUBNETS}{k}");
            assert!(
                got.iter().any(|(gk, gr)| *gk == key && gr == reason),
                "{n}: {key} not rejected as {reason}: {got:?}"
            );
        }
        let metrics = lab.exec(n, &["curl", "-sf", "http://127.0.0.1:8471/metrics"]);
        for line in [
            "vxmesh_rejected_leases{reason=\"outside_network\"} 3",
            "vxmesh_rejected_leases{reason=\"wrong_subnet_len\"} 2",
            "vxmesh_rejected_leases{reason=\"overlap\"} 1",
            "vxmesh_rejected_leases{reason=\"duplicate_public_ip\"} 1",
            "vxmesh_rejected_leases{reason=\"too_large\"} 1",
            "vxmesh_peers 2",
        ] {
            assert!(metrics.contains(line), "{n}: no {line:?} in\n{metrics}");
        }
    }
    // vxmeshctl leases reads etcd and judges with the agents' own table.
    let ctl = lab.bin.join("vxmeshctl");
    let leases: Value = serde_json::from_str(&lab.exec(
        "n1",
        &[
            ctl.to_str().unwrap(),
            "--etcd-endpoints",
            "http://192.168.100.2:2379",
            "leases",
            "--json",
        ],
    ))
    .unwrap();
    let rows = leases.as_array().unwrap();
    assert_eq!(rows.len(), 3 + hostile.len());
    for (k, _, reason) in &hostile {
        let key = format!("{SUBNETS}{k}");
        let row = rows.iter().find(|r| r["key"] == key.as_str()).unwrap();
        assert_eq!(row["status"], "rejected", "{row}");
        assert_eq!(row["reason"], *reason, "{row}");
    }
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "ok").count(),
        3,
        "the three nodes"
    );

    // Gone again: nothing rejected, traffic as before.
    for (k, _, _) in &hostile {
        lab.etcdctl(&["del", &format!("{SUBNETS}{k}")]);
    }
    assert!(wait_for(Duration::from_secs(10), || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| rejected(&lab, n).is_empty())
    })
    .is_some());
    lab.check(6, "after the hostile keys were removed");

    // A reservation: node 3's key rewritten without an etcd lease, as flannel's docs
    // say (`etcdctl put KEY "$(etcdctl get --print-value-only KEY)"`).
    let s3 = lab.subnet_of(3);
    let k3 = format!("{SUBNETS}{}", s3.replace('/', "-"));
    assert_ne!(lease_of(&lab, &k3), 0, "an ordinary lease first");
    let value = lab.etcdctl(&["get", "--print-value-only", &k3]);
    lab.etcdctl(&["put", &k3, value.trim()]);
    assert_eq!(lease_of(&lab, &k3), 0);
    let (ok, out) = lab.cmd(&["restart-agent", "3"]);
    assert!(ok, "{out}");
    assert_eq!(lab.subnet_of(3), s3, "same subnet after the restart");
    assert_eq!(
        lease_of(&lab, &k3),
        0,
        "the reservation must not be rewritten under a TTL lease"
    );
    let st = lab.status("n3");
    assert_eq!(st["node"]["reservation"], true, "{}", st["node"]);
    let metrics = lab.exec("n3", &["curl", "-sf", "http://127.0.0.1:8471/metrics"]);
    assert!(metrics.contains("vxmesh_lease_reservation 1"), "{metrics}");
    lab.check(6, "with node 3 on a reservation");
    // Still a reservation a while later (no keepalive put it under a lease).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lease_of(&lab, &k3), 0);
    println!("node 3 holds {s3} as a reservation across a restart");

    // A config whose Network holds the nodes' own underlay addresses: a node starting
    // on it refuses, says why, and claims nothing (the running ones read the config
    // only when they start).
    let config_key = "/coreos.com/network/config";
    let config = lab.etcdctl(&["get", "--print-value-only", config_key]);
    lab.etcdctl(&[
        "put",
        config_key,
        r#"{"Network":"192.168.0.0/16","Backend":{"Type":"vxlan"}}"#,
    ]);
    lab.must(&["stop-agent", "2"]);
    let keys = || lab.etcdctl(&["get", "--prefix", "--keys-only", SUBNETS]);
    let before = keys();
    let out = lab.refused_start(
        "2",
        "n2-network-overlap.log",
        "with a Network over its underlay",
    );
    assert!(
        out.contains("Network 192.168.0.0/16 contains this node's underlay address 192.168.100.12"),
        "{out}"
    );
    assert_eq!(keys(), before, "a refused node claims nothing");
    lab.etcdctl(&["put", config_key, config.trim()]);
    lab.must(&["start-agent", "2"]);
    lab.check(6, "after node 2 restarted on the right config");

    let prefix = lab.prefix.clone();
    drop(lab);
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&prefix));
}

/// A node's own key overwritten with something that is not a lease (`etcdctl put` of
/// a typo, another tool): nobody can hold the subnet through that value, so the node
/// takes its key back under a new etcd lease and keeps its subnet — its pods keep
/// their addresses. (Before, it claimed another subnet, as if it had lost this one to
/// another node, and its pods could no longer be reached.)
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_node_key_overwritten_with_garbage_is_taken_back() {
    require_root();
    require_etcd();
    let lab = Lab::up("vxg", TWO_NODES);
    let subnet1 = lab.subnet_of(1);
    let mine = key_of(&lab, &subnet1);
    let before = lease_of(&lab, &mine.key);
    for garbage in ["oops", r#"{"PublicIP":"#] {
        lab.etcdctl(&["put", &mine.key, garbage]);
        let back = wait_for(Duration::from_secs(10), || {
            lab.lease_keys()
                .iter()
                .any(|k| k.key == mine.key && k.public_ip == mine.public_ip && k.lease != 0)
        });
        assert!(
            back.is_some(),
            "{garbage:?}: the key was not taken back: {:?}",
            lab.lease_keys()
        );
        assert_eq!(lab.subnet_of(1), subnet1, "the node kept its subnet");
        assert_eq!(lab.assert_one_lease_per_node(2, garbage).len(), 2);
    }
    assert_ne!(
        lease_of(&lab, &mine.key),
        before,
        "held under a new etcd lease"
    );
    let ready = wait_for(Duration::from_secs(10), || {
        lab.status("n1")["ready"] == Value::Bool(true) && rejected(&lab, "n1").is_empty()
    });
    assert!(ready.is_some(), "{}", lab.status("n1"));
    lab.check(2, "after the node's key was overwritten and taken back");
    lab.must(&["down"]);
}

/// The network config's state in a node's status: (state, detail).
fn config_in_etcd(lab: &Lab, node: &str) -> (String, String) {
    let st = lab.status(node);
    let c = &st["config_in_etcd"];
    (
        c["state"].as_str().unwrap_or_default().to_string(),
        c["detail"].as_str().unwrap_or_default().to_string(),
    )
}

/// `vxmeshctl leases` on an IPv6-only config judges leases by their IPv6 halves, as
/// the agents of such a network would: the lab's IPv4 leases have none, and an
/// IPv6-only lease in flannel's form is a peer (one row, no IPv4 columns).
fn ipv6_only_leases_judged(lab: &Lab) {
    let key = format!("{SUBNETS}0.0.0.0-0&fd00:99:0:5::-64");
    lab.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::5","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"4e:00:00:00:06:05"}}"#,
    ]);
    let ctl = lab.bin.join("vxmeshctl");
    let ctl = ctl.to_str().unwrap();
    let endpoint = ["--etcd-endpoints", "http://192.168.100.2:2379"];
    let json = lab.exec("n1", &[ctl, endpoint[0], endpoint[1], "leases", "--json"]);
    let rows: Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    for r in rows {
        if r["key"] == key.as_str() {
            assert_eq!(r["status"], "ok", "{r}");
            assert_eq!(r["ipv6_subnet"], "fd00:99:0:5::/64", "{r}");
            assert!(r["subnet"].is_null() && r["public_ip"].is_null(), "{r}");
        } else {
            assert_eq!(r["status"], "rejected", "{r}");
            assert_eq!(r["reason"], "no_ipv6", "{r}");
        }
    }
    assert_eq!(
        rows.len(),
        3,
        "the two nodes' leases and the IPv6-only one: {json}"
    );
    let text = lab.exec("n1", &[ctl, endpoint[0], endpoint[1], "leases"]);
    assert!(
        text.contains("fd00:99:0:5::/64") && text.contains("rejected: no_ipv6"),
        "{text}"
    );
    assert!(
        !text.contains("0.0.0.0/0"),
        "an IPv6-only key has no IPv4 row:\n{text}"
    );
    lab.etcdctl(&["del", &key]);
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_config_changed_in_etcd_is_reported_until_it_is_put_back() {
    require_root();
    require_etcd();
    let lab = Lab::up("vxc", TWO_NODES);
    const KEY: &str = "/coreos.com/network/config";
    let original = lab.etcdctl(&["get", "--print-value-only", KEY]);
    let original = original.trim();
    let pids = (lab.agent_pid(1), lab.agent_pid(2));
    for node in ["n1", "n2"] {
        assert_eq!(config_in_etcd(&lab, node).0, "same", "{node} at the start");
        assert_eq!(
            lab.metric(node, "vxmesh_config_in_etcd{state=\"same\"}"),
            1.0
        );
    }
    // The same config written differently (another field order, defaults spelt
    // out) is not a change.
    lab.edit_network_config(|c| {
        c.insert("SubnetLen".into(), 24.into());
    });
    // Each of these is told, on every node, and the metric follows.
    let steps: [(&str, Option<&str>, &str, &str); 5] = [
        (
            "another Network and VNI",
            Some(r#"{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan","VNI":7}}"#),
            "changed",
            "Backend.VNI 1 → 7",
        ),
        (
            "an IPv6-only network",
            Some(
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:99::/56","Backend":{"Type":"vxlan"}}"#,
            ),
            "changed",
            "EnableIPv4 true → false",
        ),
        (
            "a value that is not JSON",
            Some("oops"),
            "invalid",
            "not valid JSON",
        ),
        ("the key deleted", None, "deleted", ""),
        ("the original put back", Some(original), "same", ""),
    ];
    for (what, value, state, detail) in steps {
        match value {
            Some(v) => lab.etcdctl(&["put", KEY, v]),
            None => lab.etcdctl(&["del", KEY]),
        };
        for node in ["n1", "n2"] {
            let seen = wait_for(Duration::from_secs(10), || {
                let (s, d) = config_in_etcd(&lab, node);
                s == state && d.contains(detail)
            });
            assert!(
                seen.is_some(),
                "{what}: {node} reports {:?}, not {state}",
                config_in_etcd(&lab, node)
            );
            assert_eq!(
                lab.metric(node, &format!("vxmesh_config_in_etcd{{state=\"{state}\"}}")),
                1.0,
                "{what}: {node}"
            );
        }
        if what == "an IPv6-only network" {
            ipv6_only_leases_judged(&lab);
        }
    }
    for node in ["n1", "n2"] {
        let kinds = lab.event_kinds(node);
        for (kind, times) in [
            ("config_changed", 2),
            ("config_invalid", 1),
            ("config_deleted", 1),
            ("config_same", 1),
        ] {
            assert_eq!(
                kinds.iter().filter(|k| *k == kind).count(),
                times,
                "{node}: {kind} {times} times in {kinds:?}"
            );
        }
        let text = lab.exec(
            node,
            &[
                &format!("{}/vxmeshctl", common::lab::bin_dir().display()),
                "events",
                "--once",
            ],
        );
        assert!(
            text.contains("put it back: etcdctl put /coreos.com/network/config '"),
            "{node}: the deleted config is offered back:\n{text}"
        );
    }
    // Nothing restarted, nothing moved, traffic flows.
    assert_eq!(
        (lab.agent_pid(1), lab.agent_pid(2)),
        pids,
        "an agent restarted"
    );
    lab.check(2, "after the config came and went");
    lab.must(&["down"]);
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_node_whose_key_is_taken_leases_anew_without_a_false_warning() {
    require_root();
    require_etcd();
    let lab = Lab::up("vxt", TWO_NODES);
    let subnet1 = lab.subnet_of(1);
    let mine = key_of(&lab, &subnet1);
    // Another node's lease written over node 1's key (as a node that lost its own
    // lease to an outage and claimed this subnet would): node 1 has lost it, and
    // leases another subnet, whose key the watch delivers before the lease task
    // reports it.
    let other = r#"{"PublicIP":"192.168.100.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}}"#;
    lab.etcdctl(&["put", &mine.key, other]);
    let moved = wait_for(Duration::from_secs(15), || {
        let now = lab.subnet_of(1);
        now != subnet1 && lab.status("n1")["ready"] == Value::Bool(true)
    });
    assert!(
        moved.is_some(),
        "node 1 did not lease anew: {}",
        lab.status("n1")
    );
    // Past the hold-back (2 s) and a device tick or two.
    std::thread::sleep(Duration::from_secs(5));
    let log = std::fs::read_to_string(lab.state.join("vxmeshd-n1.log")).unwrap();
    assert!(
        !log.contains("is this node's, but this is not its lease"),
        "node 1 warned about its own new lease:\n{log}"
    );
    let kinds = lab.event_kinds("n1");
    assert!(kinds.iter().any(|k| k == "lease_lost"), "{kinds:?}");
    // Its pods keep their addresses of the lost subnet (as after any real loss), so
    // the pod check does not apply; node 2 routes node 1's new subnet.
    let new = lab.subnet_of(1);
    let routed = wait_for(Duration::from_secs(10), || lab.routes_subnet("n2", &new));
    assert!(
        routed.is_some(),
        "node 2 has no route to {new}: {}",
        lab.routes("n2")
    );
    lab.must(&["down"]);
}
