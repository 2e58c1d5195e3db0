//! Privileged: the vxmesh CNI plugin under load and under a real runtime, across the two
//! nodes of a netns lab (real etcd, vxmeshd, the reference bridge/host-local plugins):
//! - 200 concurrent ADDs, 100 on each node at once, give 200 distinct addresses from the
//!   right subnets, every one reachable from a pod on the other node;
//! - a DEL storm: the 200 DELs at once, each run twice, leave no veth, no host-local
//!   reservation and no state file;
//! - ADDs while the node's agent restarts all succeed (the plugin needs only the subnet
//!   file, which a stopping agent leaves in place) and their pods are reachable once the
//!   agent is back;
//! - podman (runc, CNI backend) runs a container on one node that reaches pods on the
//!   other (`scripts/lab.sh podman`).
//!
//! Figures (`FIGURE cni-load: …` on stderr) go to docs/reliability.md. Needs root and etcd:
//! ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::lab::Lab;
use vxmesh_testkit::{require_etcd, require_root};

/// Pods per node in the concurrent ADD: 200 in all.
const PODS_PER_NODE: usize = 100;
const TEST: &str = "cni-load";

fn figure(text: &str) {
    let _ = writeln!(std::io::stderr(), "FIGURE {TEST}: {text}");
}

/// A pod to create: the node it lives on and its container id (also its namespace suffix).
type Pod = (u32, String);

/// Runs `command` for every pod at once (one thread each); the results in order.
fn cni_all(lab: &Arc<Lab>, command: &'static str, pods: &[Pod]) -> Vec<(bool, String)> {
    let threads: Vec<_> = pods
        .iter()
        .map(|(node, id)| {
            let (lab, node, id) = (Arc::clone(lab), *node, id.clone());
            std::thread::spawn(move || cni(&lab, node, command, &id))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Runs the plugin for pod `id` on `node` exactly as a runtime there would.
fn cni(lab: &Lab, node: u32, command: &str, id: &str) -> (bool, String) {
    cni_as(lab, node, command, id, id)
}

/// [`cni`] with another container ID than the pod's name.
fn cni_as(lab: &Lab, node: u32, command: &str, id: &str, container_id: &str) -> (bool, String) {
    let netconf = format!(
        r#"{{"cniVersion":"1.0.0","name":"vxmesh","type":"vxmesh","subnetFile":"{s}/n{node}/subnet.env","dataDir":"{s}/n{node}/cni","delegate":{{"bridge":"cni0","isDefaultGateway":true}},"ipam":{{"dataDir":"{s}/n{node}/ipam"}}}}"#,
        s = lab.state.display()
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns(&format!("n{node}"))])
        .arg(lab.bin.join("vxmesh"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
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
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The address in an ADD result.
fn address(out: &str) -> String {
    let json = &out[..out.rfind('}').map_or(out.len(), |i| i + 1)];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    let a = v["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
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

fn veths(lab: &Lab, node: u32) -> usize {
    lab.ip_json(&format!("n{node}"), &["link", "show", "type", "veth"])
        .as_array()
        .map_or(0, |a| a.len())
}

/// What a node holds for its pods: veths, host-local reservations, plugin state files.
fn footprint(lab: &Lab, node: u32) -> (usize, BTreeSet<String>, BTreeSet<String>) {
    (
        veths(lab, node),
        names(&lab.state.join(format!("n{node}/ipam/vxmesh"))),
        names(&lab.state.join(format!("n{node}/cni"))),
    )
}

fn add_netns(lab: &Lab, pods: &[Pod]) {
    for (_, id) in pods {
        assert!(Command::new("ip")
            .args(["netns", "add", &lab.ns(id)])
            .status()
            .unwrap()
            .success());
    }
}

fn del_netns(lab: &Lab, pods: &[Pod]) {
    for (_, id) in pods {
        let _ = Command::new("ip")
            .args(["netns", "del", &lab.ns(id)])
            .status();
    }
}

/// Pings every address from the lab pod `from` (eight at a time); the unreachable ones.
fn unreachable(lab: &Arc<Lab>, from: &str, addrs: &[String]) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let addrs = Arc::new(addrs.to_vec());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (lab, next, addrs, from) = (
                Arc::clone(lab),
                Arc::clone(&next),
                Arc::clone(&addrs),
                from.to_string(),
            );
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(a) = addrs.get(i) else { break bad };
                    let ok = Command::new("ip")
                        .args(["netns", "exec", &lab.ns(&from)])
                        .args(["ping", "-c", "1", "-W", "2", a])
                        .stdout(Stdio::null())
                        .status()
                        .unwrap()
                        .success();
                    if !ok {
                        bad.push(a.clone());
                    }
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn two_hundred_concurrent_pods_a_del_storm_adds_during_a_restart_and_podman() {
    require_root();
    require_etcd();
    let t0 = Instant::now();
    let lab = Arc::new(Lab::new(
        "vxc",
        &[("VXLAB_NODES", "2"), ("VXLAB_PODS", "1")],
    ));
    let out = lab.must(&["up"]);
    assert!(out.contains("2 of 2 reachable"), "{out}");
    // Baseline: the lab's own pods.
    let base = [footprint(&lab, 1), footprint(&lab, 2)];

    // 200 concurrent ADDs, 100 per node.
    let pods: Vec<Pod> = (0..PODS_PER_NODE)
        .flat_map(|i| [(1, format!("a{i}")), (2, format!("b{i}"))])
        .collect();
    add_netns(&lab, &pods);
    let t = Instant::now();
    let results = cni_all(&lab, "ADD", &pods);
    let add_took = t.elapsed();
    let mut by_node: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for ((node, id), (ok, out)) in pods.iter().zip(&results) {
        assert!(ok, "ADD {id} on n{node} failed: {out}");
        by_node[*node as usize - 1].push(address(out));
    }
    let all: BTreeSet<&String> = by_node.iter().flatten().collect();
    assert_eq!(all.len(), 2 * PODS_PER_NODE, "200 distinct addresses");
    for (i, addrs) in by_node.iter().enumerate() {
        let subnet = lab.subnet_of(i as u32 + 1);
        let net_prefix = format!("{}.", subnet.rsplit_once('.').unwrap().0);
        assert!(
            addrs.iter().all(|a| a.starts_with(&net_prefix)),
            "n{}: {addrs:?} not all in {subnet}",
            i + 1
        );
    }
    // Each node's pods reachable from the pod on the other node (across the overlay).
    let t = Instant::now();
    let bad1 = unreachable(&lab, "n2-p1", &by_node[0]);
    let bad2 = unreachable(&lab, "n1-p1", &by_node[1]);
    assert!(
        bad1.is_empty() && bad2.is_empty(),
        "unreachable across nodes: {bad1:?} {bad2:?}"
    );
    figure(&format!(
        "{} concurrent ADDs on 2 nodes: {} distinct addresses in {:.1} s, all reachable from the other node (pinged in {:.1} s)",
        pods.len(),
        all.len(),
        add_took.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ));

    // DEL storm: all 200 at once, twice; then nothing of them is left.
    let t = Instant::now();
    for round in 0..2 {
        for ((node, id), (ok, out)) in pods.iter().zip(cni_all(&lab, "DEL", &pods)) {
            assert!(ok, "DEL {id} on n{node} (round {round}) failed: {out}");
        }
    }
    let del_took = t.elapsed();
    del_netns(&lab, &pods);
    assert_eq!(
        [footprint(&lab, 1), footprint(&lab, 2)],
        base,
        "veths, reservations or state files left after the DEL storm"
    );
    figure(&format!(
        "DEL storm: {} concurrent DELs, twice, in {:.1} s; nothing left (veths, host-local reservations, state files as before)",
        pods.len(),
        del_took.as_secs_f64()
    ));

    // ADDs while node 1's agent restarts: ten while it is stopped (SIGTERM: it leaves its
    // persistent device and routes for the next start to adopt), ten more while it starts
    // again.
    let during: Vec<Pod> = (0..20).map(|i| (1, format!("r{i}"))).collect();
    add_netns(&lab, &during);
    lab.must(&["stop-agent", "1"]);
    assert!(
        lab.ip_json("n1", &["link", "show", "vxmesh0"])
            .as_array()
            .is_some_and(|a| a.len() == 1),
        "the stopped agent leaves its device for the next start"
    );
    let mut addrs = Vec::new();
    let mut add = |pod: &Pod| {
        let (ok, out) = cni(&lab, 1, "ADD", &pod.1);
        assert!(ok, "ADD {} during the restart failed: {out}", pod.1);
        addrs.push(address(&out));
    };
    during[..10].iter().for_each(&mut add);
    let t = Instant::now();
    let start = {
        let lab = Arc::clone(&lab);
        std::thread::spawn(move || lab.must(&["start-agent", "1"]))
    };
    let mut while_starting = 0;
    for pod in &during[10..] {
        while_starting += usize::from(!start.is_finished());
        add(pod);
    }
    start.join().unwrap();
    let restart_took = t.elapsed();
    let bad = unreachable(&lab, "n2-p1", &addrs);
    assert!(
        bad.is_empty(),
        "pods added during the restart unreachable: {bad:?}"
    );
    figure(&format!(
        "ADD during an agent restart: 10 while it was stopped, 10 more while it started ({while_starting} before it was ready, {:.1} s): all succeeded, all reachable once it was back",
        restart_took.as_secs_f64()
    ));
    for (ok, out) in cni_all(&lab, "DEL", &during) {
        assert!(ok, "{out}");
    }
    del_netns(&lab, &during);
    assert_eq!(footprint(&lab, 1), base[0]);

    // A real runtime: a podman container on node 1 reaches the pod on node 2.
    let out = lab.must(&["podman", "1"]);
    println!("{out}");
    assert!(
        out.contains(&format!("reached {}", lab.pod_ip(2, 1))),
        "{out}"
    );
    // The way the lab attaches the container when podman has no CNI backend (Debian 13's
    // podman 5), as CRI runtimes attach a pod: CNI ADD on a namespace the container joins,
    // then DEL. Taken here on purpose, whatever this machine's podman has. Before it, the
    // namespace a killed run of the same would leave: attached by ADD (under the lab's
    // container ID, the namespace's name), never DELeted; the run must release it too.
    let leftover: Pod = (1, "n1-podman".to_string());
    add_netns(&lab, std::slice::from_ref(&leftover));
    let (ok, out) = cni_as(&lab, 1, "ADD", &leftover.1, &lab.ns(&leftover.1));
    assert!(ok, "{out}");
    assert_ne!(footprint(&lab, 1), base[0], "the leftover holds an address");
    let out = lab.must_env(&["podman", "1"], &[("VXLAB_PODMAN_ATTACH", "netns")]);
    println!("{out}");
    assert!(out.contains("as CRI runtimes attach pods"), "{out}");
    assert!(
        out.contains(&format!("reached {}", lab.pod_ip(2, 1))),
        "{out}"
    );
    // The DELs released the leftover's and the container's addresses and state, and the
    // namespace is gone.
    assert_eq!(footprint(&lab, 1), base[0]);
    let podman_ns = format!("/run/netns/{}", lab.ns("n1-podman"));
    assert!(
        !std::path::Path::new(&podman_ns).exists(),
        "the container's namespace is left: {podman_ns}"
    );
    figure(&format!("test took {:.0} s", t0.elapsed().as_secs_f64()));
}
