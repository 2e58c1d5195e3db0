//! Privileged, real etcd: `Backend.DirectRouting` in the netns lab with a routed
//! underlay. n1 (vxmesh, userspace dataplane) and n2 (configured as flanneld configures
//! a node, scripts/flannel-node.sh, DirectRouting included) share one L2 segment; n3
//! (vxmesh, kernel dataplane) is on another segment behind a router. Needs root and
//! etcd: ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).
//!
//! Checks: all pod pairs reach each other; n1 and n2 route each other's subnet via the
//! PublicIP on eth0 and carry no overlay entry for it, while every route to or from n3
//! goes through the overlay device; on the wire between n1 and n2 pod traffic is plain
//! IP (a capture on n1's switch port sees the pods' packets and no VXLAN) and n1's
//! dataplane counts no datagram for it, while n1 ↔ n3 is VXLAN; TCP flows both ways
//! over the direct path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::Lab;
use serde_json::Value;
use vxmesh_testkit::{require_etcd, require_root, sh};

const BACKEND: &str = r#"{"Type":"vxlan","DirectRouting":true}"#;
const VXLAN_PORT: u16 = 8472;

/// Routes of `node` to the other nodes' subnets, as "<dst> via <gw> dev <dev>".
fn peer_routes(lab: &Lab, node: &str) -> Vec<String> {
    let mut v: Vec<String> = lab
        .ip_json(node, &["-4", "route", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r["dst"].as_str().is_some_and(|d| d.starts_with("10.244."))
                && r["protocol"].as_str() != Some("kernel")
        })
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap_or("?"),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("?")
            )
        })
        .collect();
    v.sort();
    v
}

/// Packets matching `filter` on switch port `port` while `action` runs.
fn count_on_port(lab: &Lab, port: &str, filter: &str, action: impl FnOnce()) -> usize {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = lab.state.join(format!("dr-{port}-{n}.pcap"));
    let _ = std::fs::remove_file(&file);
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &lab.ns("sw"), "tcpdump", "-i", port])
        // Immediate mode: packets reach the file as they come, not when a 1 s buffer
        // block retires (an interrupted tcpdump loses an unretired block).
        .args(["-nn", "-U", "--immediate-mode", "-s", "128", "-w"])
        .arg(&file)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::metadata(&file).is_ok_and(|m| m.len() >= 24)
    });
    assert!(started, "tcpdump did not start on {port}");
    std::thread::sleep(Duration::from_millis(200));
    action();
    std::thread::sleep(Duration::from_millis(1200));
    let _ = Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status();
    let _ = dump.wait();
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn counter(lab: &Lab, node: &str, name: &str) -> u64 {
    lab.status(node)["counters"][name].as_u64().unwrap()
}

/// TCP from pod `client` to pod `server` (node, pod) for 2 s; bits per second.
fn iperf(lab: &Lab, server: (u32, u32), client: (u32, u32)) -> f64 {
    let srv = lab.ns(&format!("n{}-p{}", server.0, server.1));
    let cli = lab.ns(&format!("n{}-p{}", client.0, client.1));
    let mut s = Command::new("ip")
        .args(["netns", "exec", &srv, "iperf3", "-s", "-1", "-p", "5203"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let out = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", &cli, "iperf3", "-c"])
        .arg(lab.pod_ip(server.0, server.1))
        .args(["-p", "5203", "-t", "2", "-J"])
        .output()
        .unwrap();
    let _ = s.kill();
    let _ = s.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn direct_routing_on_one_l2_vxlan_across_a_router() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vxd",
        &[
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_DATAPLANES", "userspace flannel kernel"),
            ("VXLAB_L2", "1 1 2"),
            ("VXLAB_BACKEND", BACKEND),
        ],
    );
    let out = lab.must(&["up"]);
    println!("{out}");
    assert!(out.contains("24 of 24 reachable"), "{out}");
    assert!(out.contains("25 passed, 0 failed"), "{out}");
    let sub: Vec<String> = (1..=3).map(|n| lab.subnet_of(n)).collect();
    let gw = |n: usize| sub[n - 1].split('/').next().unwrap().to_string();

    // Routes: direct between n1 and n2 (no overlay entry), the overlay to and from n3.
    let want_n1 = {
        let mut v = vec![
            format!("{} via 192.168.100.12 dev eth0", sub[1]),
            format!("{} via {} dev vxmesh0", sub[2], gw(3)),
        ];
        v.sort();
        v
    };
    let want_n2 = {
        let mut v = vec![
            format!("{} via 192.168.100.11 dev eth0", sub[0]),
            format!("{} via {} dev flannel.1", sub[2], gw(3)),
        ];
        v.sort();
        v
    };
    let want_n3 = {
        let mut v = vec![
            format!("{} via {} dev flannel.1", sub[0], gw(1)),
            format!("{} via {} dev flannel.1", sub[1], gw(2)),
        ];
        v.sort();
        v
    };
    assert_eq!(peer_routes(&lab, "n1"), want_n1, "n1 (userspace)");
    assert_eq!(peer_routes(&lab, "n2"), want_n2, "n2 (flannel recipe)");
    assert_eq!(peer_routes(&lab, "n3"), want_n3, "n3 (kernel, other L2)");
    let n1_neigh = lab.ip_json(
        "n1",
        &["neigh", "show", "dev", "vxmesh0", "nud", "permanent"],
    );
    let n1_neigh: Vec<&str> = n1_neigh
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["dst"].as_str())
        .collect();
    assert_eq!(
        n1_neigh,
        [gw(3)],
        "only the routed peer has a neighbour on the TAP"
    );
    println!("routes: n1 <-> n2 direct via eth0; n1, n2 <-> n3 through the overlay");

    // Wire: n1 <-> n2 pod traffic is plain IP, no VXLAN, and the userspace dataplane
    // never sees it.
    let pod2 = lab.pod_ip(2, 1);
    let pod3 = lab.pod_ip(3, 1);
    let sent_before = counter(&lab, "n1", "udp_datagrams_sent");
    let recv_before = counter(&lab, "n1", "udp_datagrams_received");
    let ping = |to: &str| {
        lab.exec("n1-p1", &["ping", "-c", "5", "-i", "0.1", "-W", "2", to]);
    };
    let vxlan_filter = format!("udp port {VXLAN_PORT}");
    let vxlan_to_n2 = count_on_port(
        &lab,
        "n1",
        &format!("{vxlan_filter} and host 192.168.100.12"),
        || ping(&pod2),
    );
    let plain_to_n2 = count_on_port(&lab, "n1", &format!("icmp and host {pod2}"), || ping(&pod2));
    assert_eq!(
        vxlan_to_n2, 0,
        "VXLAN between n1 and n2 despite DirectRouting"
    );
    assert!(
        plain_to_n2 >= 10,
        "pod ICMP not seen on the wire: {plain_to_n2}"
    );
    let to_n2 = iperf(&lab, (2, 1), (1, 1));
    let from_n2 = iperf(&lab, (1, 1), (2, 1));
    assert!(
        to_n2 > 100e6 && from_n2 > 100e6,
        "TCP over the direct route: {to_n2} / {from_n2} bit/s"
    );
    assert_eq!(counter(&lab, "n1", "udp_datagrams_sent"), sent_before);
    assert_eq!(counter(&lab, "n1", "udp_datagrams_received"), recv_before);
    println!(
        "wire: n1 <-> n2 plain IP ({plain_to_n2} ICMP packets, 0 VXLAN); TCP {:.2} / {:.2} Gbit/s; n1's dataplane untouched",
        to_n2 / 1e9,
        from_n2 / 1e9
    );

    // n1 <-> n3 crosses the router: VXLAN, through the userspace dataplane.
    let vxlan_to_n3 = count_on_port(
        &lab,
        "n1",
        &format!("{vxlan_filter} and host 192.168.101.13"),
        || ping(&pod3),
    );
    assert!(
        vxlan_to_n3 >= 10,
        "no VXLAN to the routed peer: {vxlan_to_n3}"
    );
    assert!(counter(&lab, "n1", "udp_datagrams_sent") >= sent_before + 5);
    println!("wire: n1 <-> n3 VXLAN ({vxlan_to_n3} datagrams on port {VXLAN_PORT})");

    let prefix = lab.prefix.clone();
    drop(lab);
    let left = sh(&["ip", "netns", "list"]);
    assert!(!left.contains(&prefix), "namespaces left: {left}");
}
