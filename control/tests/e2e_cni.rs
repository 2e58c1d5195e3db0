//! Privileged: the vxmesh CNI plugin at scale and under a real runtime, across nodes of
//! the netns lab (real etcd, vxmeshd, the reference bridge/host-local plugins):
//! - 50 concurrent ADDs on one node give 50 distinct addresses, every one reachable from
//!   a pod on another node; 50 DELs, twice each, leave no veth, no host-local
//!   reservation and no state file;
//! - podman (runc, CNI backend) runs a container on one node that reaches pods on the
//!   others (`scripts/lab.sh podman`).
//!
//! Needs root and etcd: ignored by a plain `cargo test`, run by scripts/test.sh
//! (`-- --include-ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::lab::Lab;
use vxmesh_testkit::{require_etcd, require_root};

const PODS: usize = 50;

/// Runs the plugin for pod `id` on node 1 exactly as a runtime there would.
/// Runs `command` for every container id at once (one thread each); the results in order.
fn cni_all(lab: &Arc<Lab>, command: &'static str, ids: &[String]) -> Vec<(bool, String)> {
    let threads: Vec<_> = ids
        .iter()
        .map(|id| {
            let (lab, id) = (Arc::clone(lab), id.clone());
            std::thread::spawn(move || cni(&lab, command, &id))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn cni(lab: &Lab, command: &str, id: &str) -> (bool, String) {
    let netconf = format!(
        r#"{{"cniVersion":"1.0.0","name":"vxmesh","type":"vxmesh","subnetFile":"{s}/n1/subnet.env","dataDir":"{s}/n1/cni","delegate":{{"bridge":"cni0","isDefaultGateway":true}},"ipam":{{"dataDir":"{s}/n1/ipam"}}}}"#,
        s = lab.state.display()
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1")])
        .arg(lab.bin.join("vxmesh"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{}", lab.ns(id)))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", format!("{}:/usr/lib/cni", lab.bin.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(netconf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Names in a directory (empty if it does not exist).
fn names(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn veths(lab: &Lab) -> usize {
    lab.ip_json("n1", &["link", "show", "type", "veth"])
        .as_array()
        .map_or(0, |a| a.len())
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn fifty_concurrent_pods_reachable_across_nodes_and_podman() {
    require_root();
    require_etcd();
    let lab = Arc::new(Lab::new(
        "vxc",
        &[("VXLAB_NODES", "2"), ("VXLAB_PODS", "1")],
    ));
    let out = lab.must(&["up"]);
    assert!(out.contains("2 of 2 reachable"), "{out}");

    // Baseline on node 1: the lab's own pod.
    let ipam = lab.state.join("n1/ipam/vxmesh");
    let state_dir = lab.state.join("n1/cni");
    let (veth0, ipam0, state0) = (veths(&lab), names(&ipam), names(&state_dir));

    // 50 concurrent ADDs.
    let ids: Vec<String> = (0..PODS).map(|i| format!("s{i}")).collect();
    for id in &ids {
        assert!(Command::new("ip")
            .args(["netns", "add", &lab.ns(id)])
            .status()
            .unwrap()
            .success());
    }
    let mut addrs = BTreeSet::new();
    for (ok, out) in cni_all(&lab, "ADD", &ids) {
        assert!(ok, "ADD failed: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let a = v["ips"][0]["address"].as_str().unwrap();
        addrs.insert(a.split('/').next().unwrap().to_string());
    }
    assert_eq!(addrs.len(), PODS, "50 distinct addresses");
    let subnet = lab.subnet_of(1);
    let net_prefix = subnet.rsplit_once('.').unwrap().0;
    assert!(
        addrs.iter().all(|a| a.starts_with(net_prefix)),
        "{addrs:?} in {subnet}"
    );

    // Every one reachable from the pod on node 2 (across the overlay).
    let unreachable: Vec<&String> = addrs
        .iter()
        .filter(|a| {
            !Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.ns("n2-p1"),
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "2",
                    a,
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
        .collect();
    assert!(
        unreachable.is_empty(),
        "unreachable from n2-p1: {unreachable:?}"
    );
    println!("{PODS} concurrent ADDs: {PODS} distinct addresses, all reachable from node 2");

    // 50 DELs, twice each (concurrently), then nothing of them is left.
    for round in 0..2 {
        for (ok, out) in cni_all(&lab, "DEL", &ids) {
            assert!(ok, "DEL (round {round}) failed: {out}");
        }
    }
    for id in &ids {
        let _ = Command::new("ip")
            .args(["netns", "del", &lab.ns(id)])
            .status();
    }
    assert_eq!(veths(&lab), veth0, "veths left on node 1");
    assert_eq!(names(&ipam), ipam0, "host-local reservations left");
    assert_eq!(names(&state_dir), state0, "plugin state files left");

    // A real runtime: a podman container on node 1 reaches the pod on node 2.
    let out = lab.must(&["podman", "1"]);
    println!("{out}");
    assert!(
        out.contains(&format!("reached {}", lab.pod_ip(2, 1))),
        "{out}"
    );
}
