//! Privileged end to end: the overlay device deleted under a running agent (`ip link
//! del`, a network script, an operator's mistake). flanneld re-creates `flannel.<VNI>`
//! when it goes; vxmeshd starts its dataplane again on a new device — the userspace
//! TAP or the kernel's `flannel.<VNI>` — and programs every peer on it, in the same
//! process, within its 2 s device check. Needs root, network namespaces and etcd:
//! ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::lab::Lab;
use serde_json::Value;
use vxmesh_testkit::{require_etcd, require_root, wait_for};

/// Two nodes, one pod each: node 1 on the userspace dataplane, node 2 on the kernel's.
const MIXED_PAIR: &[(&str, &str)] = &[
    ("VXLAB_NODES", "2"),
    ("VXLAB_PODS", "1"),
    ("VXLAB_IPERF_SECONDS", "1"),
    ("VXLAB_DATAPLANES", "userspace kernel"),
];

/// Nodes 1 and 2 still run the agents of `pids` (nothing restarted), and each
/// recorded every event of `kinds`.
fn assert_same_agents_with_events(lab: &Lab, pids: (i32, i32), kinds: &[&str]) {
    assert_eq!(
        (lab.agent_pid(1), lab.agent_pid(2)),
        pids,
        "an agent restarted"
    );
    for node in ["n1", "n2"] {
        let seen = lab.event_kinds(node);
        for kind in kinds {
            assert!(
                seen.iter().any(|k| k == kind),
                "{node}: no {kind} in {seen:?}"
            );
        }
    }
}

/// Deletes `device` on `node` and waits until the agent has a new one, ready, with
/// the peer's route on it; returns how long that took.
fn delete_and_wait(lab: &Lab, node: &str, device: &str, peer_subnet: &str) -> Duration {
    let before = lab.ip_json(node, &["link", "show", "dev", device])[0]["ifindex"]
        .as_u64()
        .unwrap();
    let t = std::time::Instant::now();
    lab.exec(node, &["ip", "link", "del", device]);
    let back = wait_for(Duration::from_secs(15), || {
        let link = lab.ip_json(node, &["link", "show", "dev", device]);
        let index = link[0]["ifindex"].as_u64();
        index.is_some_and(|i| i != before)
            && lab.status(node)["ready"] == Value::Bool(true)
            && lab.routes(node).contains(peer_subnet)
    });
    assert!(
        back.is_some(),
        "{node}: {device} not re-created and programmed within 15 s; routes:\n{}\nstatus: {}",
        lab.routes(node),
        lab.status(node)
    );
    t.elapsed()
}

/// Whether node 1's path to node 2 through the underlay TAP is proven.
fn proven(lab: &Lab) -> bool {
    let ctl = lab.bin.join("vxmeshctl");
    let out = lab.exec("n1", &[ctl.to_str().unwrap(), "peers", "--json"]);
    let peers: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    peers.as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p["underlay_tap_path"] == Value::Bool(true))
    })
}

/// An iperf3 TCP stream pod n1-p1 → `dst` for 6 s in 0.5 s intervals, `during` run
/// 2 s in; the bytes of each interval.
fn stream(lab: &Lab, dst: &str, during: impl FnOnce()) -> Vec<f64> {
    let j = lab.iperf_during(
        ("n1-p1", "n2-p1", dst),
        5203,
        6,
        Duration::from_secs(2),
        during,
    );
    j["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0))
        .collect()
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_deleted_overlay_device_is_recreated_by_the_running_agent() {
    require_root();
    require_etcd();
    let lab = Lab::up("vxd", MIXED_PAIR);
    let pids = (lab.agent_pid(1), lab.agent_pid(2));
    let (subnet1, subnet2) = (lab.subnet_of(1), lab.subnet_of(2));

    let mac = |node: &str, device: &str| {
        lab.ip_json(node, &["link", "show", "dev", device])[0]["address"].clone()
    };

    // The underlay TAP (`--egress-tunnel-gso`, Linux 6.17 and later), deleted under a
    // TCP stream that uses it: the engine sends the frames the segmenting way at once
    // (no interval of the stream goes empty) and the agent makes a new one, which
    // proves the path again.
    let has_underlay_tap = !lab.ip_json("n1", &["link", "show", "dev", "vxmesh0u"])[0].is_null();
    if has_underlay_tap {
        let p2 = lab.pod_ip(2, 1);
        let warm = stream(&lab, &p2, || {});
        assert!(
            proven(&lab),
            "the path was not proven under a stream: {warm:?}"
        );
        let before = lab.ip_json("n1", &["link", "show", "dev", "vxmesh0u"])[0]["ifindex"].as_u64();
        let bytes = stream(&lab, &p2, || {
            lab.exec("n1", &["ip", "link", "del", "vxmesh0u"]);
        });
        println!("bytes per 0.5 s with vxmesh0u deleted 2 s in: {bytes:?}");
        assert!(
            bytes.iter().all(|b| *b > 0.0),
            "the stream stalled after vxmesh0u was deleted: {bytes:?}"
        );
        let back = wait_for(Duration::from_secs(15), || {
            let now =
                lab.ip_json("n1", &["link", "show", "dev", "vxmesh0u"])[0]["ifindex"].as_u64();
            now.is_some() && now != before && lab.status("n1")["ready"] == Value::Bool(true)
        });
        assert!(
            back.is_some(),
            "vxmesh0u not re-created: {}",
            lab.status("n1")
        );
        let again = stream(&lab, &p2, || {});
        assert!(proven(&lab), "the new path was not proven: {again:?}");
    } else {
        println!("no vxmesh0u on n1 (a kernel before 6.17): its step skipped");
    }

    // The userspace dataplane's TAP.
    let mac1 = mac("n1", "vxmesh0");
    let took = delete_and_wait(&lab, "n1", "vxmesh0", &subnet2);
    println!("n1: vxmesh0 re-created and programmed {took:?} after ip link del");
    lab.check(2, "after vxmesh0 was deleted on the userspace node");
    assert_eq!(
        mac("n1", "vxmesh0"),
        mac1,
        "the new TAP carries the VtepMAC"
    );

    // The kernel dataplane's flannel.1.
    let mac2 = mac("n2", "flannel.1");
    let took = delete_and_wait(&lab, "n2", "flannel.1", &subnet1);
    println!("n2: flannel.1 re-created and programmed {took:?} after ip link del");
    lab.check(2, "after flannel.1 was deleted on the kernel node");
    assert_eq!(
        mac("n2", "flannel.1"),
        mac2,
        "the new device carries the VtepMAC"
    );

    // Both in the running agents, which say so.
    assert_same_agents_with_events(&lab, pids, &["device_recreated"]);
    lab.must(&["down"]);
}

/// Node `node`'s IPv4 address on its underlay (`eth0`), with its prefix length.
fn underlay_addr(lab: &Lab, node: &str) -> (String, u64) {
    let a = lab.ip_json(node, &["-4", "addr", "show", "dev", "eth0"]);
    let info = &a[0]["addr_info"][0];
    (
        info["local"].as_str().unwrap().to_string(),
        info["prefixlen"].as_u64().unwrap(),
    )
}

/// The same network, host part + 20: `192.168.100.11` → `192.168.100.31`.
fn renumbered(ip: &str) -> String {
    let mut o: Vec<u8> = ip.split('.').map(|p| p.parse().unwrap()).collect();
    o[3] += 20;
    format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
}

/// Waits until node `n`'s lease names `ip`, the node is ready and says so, and the
/// other node routes to it through `ip`.
fn wait_moved(lab: &Lab, n: u32, ip: &str, other: &str) {
    let node = format!("n{n}");
    let ctl = lab.bin.join("vxmeshctl");
    let moved = wait_for(Duration::from_secs(20), || {
        let leased = lab
            .lease_keys()
            .iter()
            .any(|k| k.subnet == lab.subnet_of(n) && k.public_ip == ip);
        let peers = lab.exec(other, &[ctl.to_str().unwrap(), "peers", "--json"]);
        let seen = serde_json::from_str::<Value>(&peers)
            .ok()
            .and_then(|p| p.as_array().cloned())
            .is_some_and(|p| p.iter().any(|p| p["public_ip"] == ip));
        let st = lab.status(&node);
        leased && seen && st["node"]["public_ip"] == ip && st["ready"] == Value::Bool(true)
    });
    assert!(
        moved.is_some(),
        "{node} did not follow its underlay to {ip} within 20 s; leases {:?}\nstatus {}",
        lab.lease_keys(),
        lab.status(&node)
    );
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_renumbered_underlay_is_followed_without_a_new_subnet() {
    require_root();
    require_etcd();
    let lab = Lab::up("vxr", MIXED_PAIR);
    let pids = (lab.agent_pid(1), lab.agent_pid(2));
    let (subnet1, subnet2) = (lab.subnet_of(1), lab.subnet_of(2));

    // Node 1 (userspace) renumbered as a DHCP client does it: the old address goes,
    // and for a while there is none. The node says it cannot be reached meanwhile.
    let (old1, len) = underlay_addr(&lab, "n1");
    let new1 = renumbered(&old1);
    lab.exec(
        "n1",
        &["ip", "addr", "del", &format!("{old1}/{len}"), "dev", "eth0"],
    );
    let lost = wait_for(Duration::from_secs(10), || {
        lab.status("n1")["ready"] == Value::Bool(false)
    });
    assert!(
        lost.is_some(),
        "n1 still ready without an underlay address: {}",
        lab.status("n1")
    );
    lab.exec(
        "n1",
        &["ip", "addr", "add", &format!("{new1}/{len}"), "dev", "eth0"],
    );
    wait_moved(&lab, 1, &new1, "n2");
    assert_eq!(
        lab.subnet_of(1),
        subnet1,
        "node 1 kept its subnet (and its pods their addresses)"
    );
    lab.check(2, "after node 1's underlay moved");

    // Node 2 (kernel dataplane) renumbered without a gap (the new address first, the
    // old one's removal promoting it): flannel.1 is made again sending from it.
    let (old2, len) = underlay_addr(&lab, "n2");
    let new2 = renumbered(&old2);
    lab.exec(
        "n2",
        &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
    );
    lab.exec(
        "n2",
        &["ip", "addr", "add", &format!("{new2}/{len}"), "dev", "eth0"],
    );
    lab.exec(
        "n2",
        &["ip", "addr", "del", &format!("{old2}/{len}"), "dev", "eth0"],
    );
    wait_moved(&lab, 2, &new2, "n1");
    assert_eq!(lab.subnet_of(2), subnet2);
    let dev = lab.ip_json("n2", &["-d", "link", "show", "dev", "flannel.1"]);
    assert_eq!(
        dev[0]["linkinfo"]["info_data"]["local"],
        Value::from(new2.as_str()),
        "flannel.1 sends from the new address: {dev}"
    );
    lab.check(2, "after node 2's underlay moved");
    assert_eq!(
        lab.assert_one_lease_per_node(2, "after both moves").len(),
        2
    );
    // The etcd leases the keys left were revoked: one per node is left.
    let revoked = wait_for(Duration::from_secs(5), || {
        lab.etcdctl(&["lease", "list"])
            .starts_with("found 2 leases")
    });
    assert!(revoked.is_some(), "{}", lab.etcdctl(&["lease", "list"]));

    // In the running agents, which say so (and count it).
    for node in ["n1", "n2"] {
        assert_eq!(
            lab.metric(node, "vxmesh_underlay_moves_total"),
            1.0,
            "{node}"
        );
    }
    assert_same_agents_with_events(&lab, pids, &["underlay_moved", "lease_moved"]);
    assert!(lab.event_kinds("n1").iter().any(|k| k == "underlay_lost"));

    // The VtepMAC moved with the PublicIP (it is derived from it): a successor,
    // which derives it again, takes the dataplane over and agrees with the lease.
    let mac1 = lab.ip_json("n1", &["link", "show", "dev", "vxmesh0"])[0]["address"].clone();
    lab.must(&["handover-agent", "1"]);
    assert_eq!(
        lab.ip_json("n1", &["link", "show", "dev", "vxmesh0"])[0]["address"],
        mac1
    );
    lab.check(2, "after a handover on node 1's new address");

    // A restart afterwards finds the lease by the new PublicIP: the same subnet.
    lab.must(&["restart-agent", "1"]);
    assert_eq!(
        lab.subnet_of(1),
        subnet1,
        "the restarted agent kept the subnet"
    );
    lab.check(2, "after node 1's agent restarted on its new address");
    lab.must(&["down"]);
}

/// Moves node 1's IPv6 underlay address from fd00:64::11 to fd00:64::31 (SLAAC
/// renumbering, by hand here) and waits until node 1 is ready on the new one and node 2
/// sees it as node 1's PublicIPv6; returns the new address.
fn renumber_ipv6(lab: &Lab) -> &'static str {
    let ctl = lab.bin.join("vxmeshctl");
    let (old6, new6) = ("fd00:64::11", "fd00:64::31");
    let add = format!("{new6}/64");
    let del = format!("{old6}/64");
    lab.exec(
        "n1",
        &["ip", "-6", "addr", "add", &add, "dev", "eth0", "nodad"],
    );
    lab.exec("n1", &["ip", "-6", "addr", "del", &del, "dev", "eth0"]);
    let moved = wait_for(Duration::from_secs(20), || {
        let peers = lab.exec("n2", &[ctl.to_str().unwrap(), "peers", "--json"]);
        let seen = serde_json::from_str::<Value>(&peers)
            .ok()
            .and_then(|p| p.as_array().cloned())
            .is_some_and(|p| p.iter().any(|p| p["ipv6"]["public_ipv6"] == new6));
        let st = lab.status("n1");
        seen && st["node"]["public_ipv6"] == new6 && st["ready"] == Value::Bool(true)
    });
    assert!(
        moved.is_some(),
        "n1 did not follow its IPv6 underlay to {new6} within 20 s; status {}\npeers of n2: {}",
        lab.status("n1"),
        lab.exec("n2", &[ctl.to_str().unwrap(), "peers", "--json"])
    );
    new6
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_renumbered_ipv6_underlay_is_followed_in_a_dual_stack_cluster() {
    require_root();
    require_etcd();
    let lab = Lab::up(
        "vxr6",
        &[
            ("VXLAB_NODES", "2"),
            ("VXLAB_PODS", "1"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "1"),
            ("VXLAB_DATAPLANES", "userspace kernel"),
        ],
    );
    let subnet1 = lab.subnet_of(1);
    let pid1 = lab.agent_pid(1);
    let threads = lab.engine_threads(1);
    assert!(!threads.is_empty(), "no packet threads on node 1");
    let new6 = renumber_ipv6(&lab);
    assert_eq!(lab.subnet_of(1), subnet1);
    assert_eq!(lab.agent_pid(1), pid1, "the agent restarted");
    // Only the IPv6 device followed: the IPv4 address stayed, and so did the packet
    // threads that send from it (before, the whole dataplane started again).
    assert_eq!(
        lab.engine_threads(1),
        threads,
        "the IPv4 packet threads were started again"
    );
    let dev = lab.ip_json("n1", &["-d", "link", "show", "dev", "flannel-v6.1"]);
    assert_eq!(
        dev[0]["linkinfo"]["info_data"]["local6"], new6,
        "flannel-v6.1 sends from the new address: {dev}"
    );
    // Both families, every pod pair (the lab's check pings IPv6 pairs in a dual-stack lab).
    let out = lab.must(&["check"]);
    assert!(
        out.contains("IPv6 pod pairs: 2 of 2 reachable") && out.contains(" 0 failed"),
        "{out}"
    );
    lab.must(&["down"]);
}

/// The same move when the threads carry IPv6 (`--ipv6-dataplane userspace`): the
/// whole dataplane starts again sending VXLAN over IPv6 from the new address, and the
/// threads take frames to the IPv6 VtepMAC derived from it — the one the lease now names
/// and the peer sends to (before, they kept the old one and dropped every IPv6 frame as
/// `not_for_us`).
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_renumbered_ipv6_underlay_is_followed_with_ipv6_in_the_threads() {
    require_root();
    require_etcd();
    let lab = Lab::up(
        "vxr7",
        &[
            ("VXLAB_NODES", "2"),
            ("VXLAB_PODS", "1"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "1"),
            ("VXLAB_DATAPLANES", "userspace6 kernel"),
        ],
    );
    let subnet1 = lab.subnet_of(1);
    let new6 = renumber_ipv6(&lab);
    assert_eq!(lab.subnet_of(1), subnet1);
    let udp = lab.exec("n1", &["ss", "-uan"]);
    assert!(
        udp.contains(&format!("[{new6}]:")),
        "IPv6 send sockets from {new6}: {udp}"
    );
    let out = lab.must(&["check"]);
    assert!(
        out.contains("IPv6 pod pairs: 2 of 2 reachable") && out.contains(" 0 failed"),
        "{out}"
    );
    lab.must(&["down"]);
}

/// The subnet file removed, or changed, under a running agent (a cleanup of /run, a
/// script): CNI plugins read it for every pod, so the agent writes it back within
/// its 2 s check, says so and counts it. flanneld writes it once.
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn the_subnet_file_is_kept_in_place() {
    require_root();
    require_etcd();
    let lab = Lab::up("vxs", &[("VXLAB_NODES", "1"), ("VXLAB_PODS", "1")]);
    let file = lab.state.join("n1/subnet.env");
    let written = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let back = wait_for(Duration::from_secs(5), || {
        std::fs::read(&file).ok().as_ref() == Some(&written)
    });
    assert!(
        back.is_some(),
        "the removed subnet file was not written again"
    );
    std::fs::write(&file, "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap();
    let back = wait_for(Duration::from_secs(5), || {
        std::fs::read(&file).ok().as_ref() == Some(&written)
    });
    assert!(
        back.is_some(),
        "the changed subnet file was not written again"
    );
    // A FIFO put in its place: opening it to read would wait for a writer, on the
    // agent's only runtime thread. It is replaced like any other wrong file.
    std::fs::remove_file(&file).unwrap();
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let back = wait_for(Duration::from_secs(5), || {
        std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file())
            && std::fs::read(&file).ok().as_ref() == Some(&written)
    });
    assert!(
        back.is_some(),
        "the subnet file replaced by a FIFO was not written again"
    );
    assert_eq!(lab.metric("n1", "vxmesh_subnet_file_repairs_total"), 3.0);
    assert!(lab
        .event_kinds("n1")
        .iter()
        .any(|k| k == "subnet_file_restored"));
    assert_eq!(lab.status("n1")["ready"], Value::Bool(true));
    lab.must(&["down"]);
}
