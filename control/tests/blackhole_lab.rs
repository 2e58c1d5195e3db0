//! Privileged end to end: flanneld's `--ip-blackhole-route` on lab nodes. Each node gets
//! a blackhole route for its subnet at the highest metric, under the bridge's own route:
//! the pods are reached as before, and with the bridge gone an address of the subnet is
//! dropped on the node instead of following the default route out. A deleted route is
//! back within the resync period; a node whose subnet changes (SubnetLen 24 → 25) moves
//! its route to the new subnet; a restart without the flag removes it. Needs root,
//! network namespaces and etcd: ignored by a plain `cargo test`, run by scripts/test.sh
//! (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::Lab;
use serde_json::Value;
use vxmesh_testkit::{require_etcd, require_root, wait_for};

/// vxmesh's metric for the route (`vxmesh_control::blackhole::METRIC`).
const METRIC: u64 = u32::MAX as u64;

/// The node's blackhole routes: (destination, metric).
fn blackholes(lab: &Lab, node: &str) -> Vec<(String, u64)> {
    let routes = lab.ip_json(node, &["route", "show", "type", "blackhole"]);
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["metric"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `ip route get <ip>` on a node: the route's text, or the error ip printed.
fn route_get(lab: &Lab, node: &str, ip: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["-n", &lab.ns(node), "route", "get", ip])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An address of the subnet `10.244.7.0/24` that no pod of the lab holds.
fn unused_address(subnet: &str) -> String {
    let base: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    std::net::Ipv4Addr::from(u32::from(base) + 100).to_string()
}

fn wait_blackholes(lab: &Lab, node: &str, want: &[(String, u64)], what: &str) {
    let ok = wait_for(Duration::from_secs(5), || blackholes(lab, node) == want);
    assert!(
        ok.is_some(),
        "{what}: node {node} has blackhole routes {:?}, want {want:?}",
        blackholes(lab, node)
    );
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn ip_blackhole_route_covers_the_subnet_under_the_bridge_route() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vxb",
        &[
            ("VXLAB_NODES", "2"),
            ("VXLAB_PODS", "1"),
            ("VXLAB_IPERF_SECONDS", "1"),
            (
                "VXLAB_AGENT_ARGS",
                "--ip-blackhole-route --iptables-resync=1",
            ),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    println!("{out}");
    // `up` checks every pod pair: the blackhole under the bridge's route broke nothing.
    assert!(ok, "lab up failed");

    for node in [1, 2] {
        let want = vec![(lab.subnet_of(node), METRIC)];
        wait_blackholes(&lab, &format!("n{node}"), &want, "after start");
    }

    // The bridge's route carries the node's pods; the blackhole only what it does not.
    let subnet1 = lab.subnet_of(1);
    let pod = lab.pod_ip(1, 1);
    let spare = unused_address(&subnet1);
    let via_bridge = route_get(&lab, "n1", &pod).unwrap();
    assert!(via_bridge.contains("dev cni0"), "{pod}: {via_bridge}");
    lab.exec("n1", &["ip", "link", "set", "cni0", "down"]);
    let dropped = route_get(&lab, "n1", &spare);
    lab.exec("n1", &["ip", "link", "set", "cni0", "up"]);
    match dropped {
        Err(e) => assert!(e.contains("Invalid argument"), "{spare}: {e}"),
        Ok(r) => panic!("with cni0 down, {spare} of {subnet1} is routed: {r}"),
    }
    let back = wait_for(Duration::from_secs(5), || {
        route_get(&lab, "n1", &pod).is_ok_and(|r| r.contains("dev cni0"))
    });
    assert!(back.is_some(), "cni0's route did not come back");

    // Removed behind the agent's back: restored within the resync period (1 s).
    lab.exec(
        "n1",
        &[
            "ip",
            "route",
            "del",
            "blackhole",
            &subnet1,
            "metric",
            &METRIC.to_string(),
        ],
    );
    wait_blackholes(
        &lab,
        "n1",
        &[(subnet1.clone(), METRIC)],
        "after ip route del",
    );
    lab.check(2, "with the blackhole routes");

    // A new subnet for node 2 (SubnetLen 24 -> 25): the route moves with it.
    let old2 = lab.subnet_of(2);
    lab.edit_network_config(|obj| {
        obj.insert("SubnetLen".into(), Value::from(25));
    });
    lab.must(&["restart-agent", "2"]);
    let new2 = lab.subnet_of(2);
    assert!(new2.ends_with("/25"), "node 2 holds {new2}");
    wait_blackholes(
        &lab,
        "n2",
        &[(new2.clone(), METRIC)],
        &format!("after {old2} became {new2}"),
    );

    // Restarted without the flag: the route of the earlier run goes.
    lab.must_env(
        &["restart-agent", "1"],
        &[("VXLAB_AGENT_ARGS", "--iptables-resync=1")],
    );
    wait_blackholes(&lab, "n1", &[], "after a restart without the flag");
}
