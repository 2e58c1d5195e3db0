//! Privileged: a dual-stack network config in the netns lab (two vxmeshd nodes, pods
//! from the vxmesh CNI plugin). Needs root and etcd: ignored by a plain `cargo test`,
//! run by scripts/test.sh (`-- --include-ignored`).
//!
//! Checks: an IPv4 cluster whose config turns dual stack keeps each node's IPv4 subnet
//! (the key moves to flannel's `<v4>&<v6>` form in one transaction) and every pod pair
//! stays reachable; the value is flanneld's dual-stack bytes with the PublicIPv6 taken
//! from the underlay interface (node 1) or `--public-ipv6` (node 2); the subnet file gets
//! the IPv6 lines and the node `flannel-v6.1`; a restart keeps the same key; a node
//! without an IPv6 address stops with an error naming `--public-ipv6` (userspace
//! dataplane). Dual stack from the start (`VXLAB_IPV6=1`, two kernel-dataplane nodes and
//! a userspace one): flanneld's `flannel-v6.1` with the lease's IPv6 address on every
//! node, the IPv6 lines in the subnet file, pods with both families, every IPv6 pod pair
//! reachable, before and after a restart and a handover, and with the hosts' ip6tables
//! FORWARD policy at DROP; pod IPv6 leaving the IPv6 Network masqueraded, the IPv6 rules
//! restored after a flush; `vxmeshctl cleanup-tap` removes the userspace node's IPv6
//! device with its TAP. With DirectRouting on one segment, both families routed via the
//! peers' PublicIP and PublicIPv6, and after DirectRouting is turned off and the nodes
//! restart, through the overlay again (the IPv6 direct routes cleared). A mixed cluster
//! with the flannel recipe's dual-stack node. An IPv6-only cluster (`VXLAB_IPV6=only`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::lab::{ping_counts, pinger, Lab};
use serde_json::Value;
use vxmesh_control::lease::{LeaseAttrs, LeaseKey};
use vxmesh_testkit::{require_etcd, require_root, wait_for};

const PREFIX: &str = "/coreos.com/network";

/// `<subnets key> -> value` for every lease.
fn leases(lab: &Lab) -> Vec<(String, String)> {
    let out = lab.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    lines
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].to_string()))
        .collect()
}

/// The lease whose value carries `public_ip`.
fn lease_of(lab: &Lab, public_ip: &str) -> (LeaseKey, LeaseAttrs, String) {
    leases(lab)
        .into_iter()
        .find_map(|(k, v)| {
            let a = LeaseAttrs::parse(v.as_bytes()).ok()?;
            (a.public_ip.to_string() == public_ip)
                .then(|| (LeaseKey::parse(&k).unwrap(), a, v.clone()))
        })
        .unwrap_or_else(|| panic!("no lease of {public_ip}: {:?}", leases(lab)))
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn dual_stack_config_leases_both_families_and_keeps_ipv4_working() {
    require_root();
    require_etcd();
    let lab = Lab::new("vx6", &[("VXLAB_NODES", "2"), ("VXLAB_IPERF_SECONDS", "1")]);
    let (ok, out) = lab.cmd(&["up"]);
    assert!(ok, "lab up failed:\n{out}");
    assert!(out.contains("8 of 8 reachable"), "{out}");
    let v4_subnets = [lab.subnet_of(1), lab.subnet_of(2)];

    // The nodes' IPv6 underlay addresses (nodad: usable at once), and a dual-stack config.
    lab.exec(
        "n1",
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:64::11/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    lab.exec(
        "n2",
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:64::12/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    lab.etcdctl(&[
        "put",
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    ]);
    lab.must(&["restart-agent", "1"]);
    // Node 2 runs with --public-ipv6 (its eth0 holds the address too).
    let log2 = lab.state.join("n2-dual.log");
    lab.must(&["stop-agent", "2"]);
    let mut n2 = lab.spawn(
        &["exec-agent", "2"],
        &[("FLANNELD_PUBLIC_IPV6", "fd00:64::12")],
        &log2,
    );

    // Each node's key is now dual stack, with its IPv4 subnet unchanged.
    let moved = wait_for(Duration::from_secs(20), || {
        let l = leases(&lab);
        l.len() == 2 && l.iter().all(|(k, _)| k.contains('&'))
    });
    assert!(moved.is_some(), "keys not dual stack: {:?}", leases(&lab));
    println!("dual-stack keys: {:?}", leases(&lab));
    for (i, (ip, ip6)) in [
        ("192.168.100.11", "fd00:64::11"),
        ("192.168.100.12", "fd00:64::12"),
    ]
    .iter()
    .enumerate()
    {
        let (key, attrs, value) = lease_of(&lab, ip);
        let v4 = key.ipv4_subnet().unwrap();
        assert_eq!(
            v4.to_string(),
            v4_subnets[i],
            "node {} kept its IPv4 subnet",
            i + 1
        );
        let v6 = key.ipv6_subnet().unwrap();
        assert!(v6.to_string().starts_with("fd00:10:244:"), "{v6}");
        assert_eq!(v6.prefix_len(), 64);
        let ip6: std::net::Ipv6Addr = ip6.parse().unwrap();
        assert_eq!(attrs.public_ipv6, Some(ip6));
        let v6data = attrs.vxlan_v6.unwrap();
        assert_eq!(v6data.vtep_mac, vxmesh_control::vtep_mac::derive_v6(ip6, 1));
        // flanneld's bytes: the value written is exactly what flannel's encoding gives.
        assert_eq!(attrs.to_json(), value);
        // The subnet file names the IPv6 subnet (for pods created from now on), and
        // flanneld's IPv6 device carries it beside the userspace dataplane's TAP.
        let node = format!("n{}", i + 1);
        let line = format!("FLANNEL_IPV6_SUBNET={}1/64\n", v6.addr());
        let env = || std::fs::read_to_string(lab.state.join(format!("{node}/subnet.env")));
        let written = wait_for(Duration::from_secs(10), || {
            env().is_ok_and(|e| e.contains(&line))
        });
        assert!(written.is_some(), "{node}: {:?}", env());
        assert_eq!(
            ipv6_addrs(&lab, &node, "flannel-v6.1"),
            [format!("{}/128", v6.addr())]
        );
    }
    let (k1, _, _) = lease_of(&lab, "192.168.100.11");
    let st = lab.status("n1");
    assert_eq!(st["node"]["public_ipv6"], "fd00:64::11", "{st}");
    assert_eq!(
        st["node"]["ipv6_subnet"],
        k1.ipv6_subnet().unwrap().to_string().as_str(),
        "{st}"
    );
    let (k2, _, _) = lease_of(&lab, "192.168.100.12");
    assert_ne!(k1.ipv6_subnet(), k2.ipv6_subnet());
    // n1's peer n2 carries its IPv6 half.
    let peer = &st["node"]["peers"][0];
    assert_eq!(peer["ipv6"]["public_ipv6"], "fd00:64::12", "{peer}");
    assert_eq!(
        peer["ipv6"]["subnet"],
        k2.ipv6_subnet().unwrap().to_string().as_str()
    );
    let log1 = std::fs::read_to_string(lab.state.join("vxmeshd-n1.log")).unwrap();
    assert!(log1.contains("IPv6 device running"), "{log1}");
    // Both pools' usage: /metrics and `vxmeshctl leases` (the /56 holds 255 /64s
    // from IPv6SubnetMin, flannel's default, the second one).
    let pooled = wait_for(Duration::from_secs(10), || {
        lab.metrics("n1")
            .contains("\nvxmesh_ipv6_pool_subnets_free 253\n")
    });
    assert!(pooled.is_some(), "{}", lab.metrics("n1"));
    assert_eq!(lab.status("n1")["pool6"]["used"], 2);
    let ctl = lab.bin.join("vxmeshctl");
    let out = lab.exec(
        "n1",
        &[
            ctl.to_str().unwrap(),
            "--etcd-endpoints",
            "http://192.168.100.2:2379",
            "leases",
        ],
    );
    assert!(
        out.contains("\npool: 2 of 255 subnets used")
            && out.contains("\nipv6 pool: 2 of 255 subnets used (0%), 253 free"),
        "{out}"
    );

    // IPv4 pod traffic as before, over the moved keys.
    lab.check(8, "after the config turned dual stack");

    // A restart finds the same key.
    lab.must(&["restart-agent", "1"]);
    let (again, _, _) = lease_of(&lab, "192.168.100.11");
    assert_eq!(again, k1);
    lab.check(8, "after node 1 restarted");

    // Node 2 without an IPv6 address and without --public-ipv6: a clear error.
    let _ = n2.kill();
    let _ = n2.wait();
    lab.exec(
        "n2",
        &[
            "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global",
        ],
    );
    let out = lab.refused_start("2", "n2-noipv6.log", "without an IPv6 address");
    assert!(
        out.contains("interface eth0 has no global IPv6 address") && out.contains("--public-ipv6"),
        "{out}"
    );
}

/// The global IPv6 addresses of `dev` on `node`, as "<addr>/<len>".
fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `node`'s IPv6 ingress check as nftables lists it (empty when it has none).
fn ingress6_check(lab: &Lab, node: &str) -> String {
    lab.command_in(node, "nft")
        .args(["list", "table", "ip6", "vxmesh-vxlan6"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether `node` keeps the IPv6 ingress check (`table ip6 vxmesh-vxlan6`) for UDP to
/// port 8472, with a chain for each of `peers` (PublicIPv6) and no other, within 10 s.
fn has_ingress6_check(lab: &Lab, node: &str, peers: &[&str]) -> bool {
    wait_for(Duration::from_secs(10), || {
        let listed = ingress6_check(lab, node);
        listed.contains("udp dport 8472 jump check")
            && listed.matches("chain peer-").count() == peers.len()
            && peers
                .iter()
                .all(|p| listed.contains(&format!("{p} : goto peer-")))
    })
    .is_some()
}

fn ipv6_addrs(lab: &Lab, node: &str, dev: &str) -> Vec<String> {
    let v = lab.ip_json(node, &["-6", "addr", "show", "dev", dev, "scope", "global"]);
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["addr_info"].as_array())
        .map(|infos| {
            infos
                .iter()
                .filter_map(|x| Some(format!("{}/{}", x["local"].as_str()?, x["prefixlen"])))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn both_dataplanes_give_pods_ipv6_and_carry_it() {
    require_root();
    require_etcd();
    // Two kernel-dataplane nodes and a userspace one, dual stack from the start.
    let lab = Lab::new(
        "vx6k",
        &[
            ("VXLAB_NODES", "3"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "1"),
            ("VXLAB_DATAPLANES", "kernel kernel userspace"),
            // flanneld's blackhole route for each family's subnet, under the bridge's
            // routes: every pod pair of both families must still be reached.
            ("VXLAB_AGENT_ARGS", "--ip-blackhole-route"),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    assert!(ok, "lab up failed:\n{out}");
    // Every pod pair of both families (3 nodes x 2 pods: 24 ordered cross-node pairs).
    assert!(
        out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "{out}"
    );
    let (k1, _, _) = lease_of(&lab, "192.168.100.11");
    let (k2, _, _) = lease_of(&lab, "192.168.100.12");
    let (k3, _, _) = lease_of(&lab, "192.168.100.13");
    let (s1, s2, s3) = (
        k1.ipv6_subnet().unwrap(),
        k2.ipv6_subnet().unwrap(),
        k3.ipv6_subnet().unwrap(),
    );
    let (a1, a2, a3) = (
        s1.addr().to_string(),
        s2.addr().to_string(),
        s3.addr().to_string(),
    );

    // The subnet file names the IPv6 subnet as flanneld writes it (first host address),
    // on either dataplane, and pods get an address from it.
    for (node, a, s) in [("n1", &a1, s1), ("n3", &a3, s3)] {
        let env = std::fs::read_to_string(lab.state.join(format!("{node}/subnet.env"))).unwrap();
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n")
                && env.contains(&format!("FLANNEL_IPV6_SUBNET={a}1/64\n")),
            "{node}: {env}"
        );
        let p = std::fs::read_to_string(lab.state.join(format!("{node}/p1.ip6"))).unwrap();
        assert!(s.contains(p.trim().parse().unwrap()), "{p} in {s}");
        assert_eq!(
            lab.exec(node, &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
                .trim(),
            "1"
        );
    }

    // Each node, kernel or userspace dataplane: flanneld's IPv6 device with the lease's
    // first IPv6 address as /128, and another node's IPv6 subnet routed through it.
    for (node, own, other, underlay6) in [
        ("n1", &a1, s2, "fd00:64::11"),
        ("n2", &a2, s3, "fd00:64::12"),
        ("n3", &a3, s1, "fd00:64::13"),
    ] {
        assert_eq!(
            ipv6_addrs(&lab, node, "flannel-v6.1"),
            [format!("{own}/128")]
        );
        let routes = lab.ip_json(node, &["-6", "route", "show", &other.to_string()]);
        assert_eq!(routes[0]["dev"], "flannel-v6.1", "{routes}");
        let link = &lab.ip_json(node, &["-d", "link", "show", "flannel-v6.1"])[0];
        assert_eq!(link["linkinfo"]["info_data"]["local6"], underlay6, "{link}");
    }
    // --ip-blackhole-route: the node's IPv4 and IPv6 subnets, at vxmesh's metric.
    for (i, node, s6) in [(1, "n1", s1), (2, "n2", s2), (3, "n3", s3)] {
        for (family, want) in [("-4", lab.subnet_of(i)), ("-6", s6.to_string())] {
            let routes = lab.ip_json(node, &[family, "route", "show", "type", "blackhole"]);
            assert_eq!(routes.as_array().map(Vec::len), Some(1), "{node}: {routes}");
            assert_eq!(routes[0]["dst"], want.as_str(), "{node}: {routes}");
            assert_eq!(routes[0]["metric"], u64::from(u32::MAX), "{node}: {routes}");
        }
    }
    let st = lab.status("n1");
    let peer = st["node"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["public_ip"] == "192.168.100.12")
        .unwrap()
        .clone();
    let mac6 = peer["ipv6"]["vtep_mac"].as_str().unwrap().to_string();
    let neigh = lab.exec("n1", &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]);
    assert!(
        neigh.contains(&format!("{a2} lladdr {mac6}")) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let fdb = lab.exec("n1", &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(fdb.contains(&format!("{mac6} dst fd00:64::12")), "{fdb}");
    // The operator's view shows both halves: the node's IPv6 subnet, each peer's and
    // each lease's.
    let ctl = lab.bin.join("vxmeshctl");
    let ctl = ctl.to_str().unwrap();
    let status = lab.exec("n1", &[ctl, "status"]);
    assert!(
        status.contains(&format!("ipv6:         {s1}  public ipv6 fd00:64::11")),
        "{status}"
    );
    let peers = lab.exec("n1", &[ctl, "peers"]);
    assert!(
        peers.contains(&s2.to_string()) && peers.contains(&mac6),
        "{peers}"
    );
    let listed: serde_json::Value = serde_json::from_str(&lab.exec(
        "n1",
        &[
            ctl,
            "--json",
            "leases",
            "--etcd-endpoints",
            "http://192.168.100.2:2379",
        ],
    ))
    .unwrap();
    let l2 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["public_ip"] == "192.168.100.12")
        .unwrap();
    assert_eq!(l2["ipv6_subnet"], s2.to_string().as_str(), "{l2}");
    assert_eq!(l2["public_ipv6"], "fd00:64::12", "{l2}");
    assert_eq!(l2["vtep_mac_v6"], mac6.as_str(), "{l2}");
    // The userspace node: its TAP carries IPv4 (IPv6 off on it), flannel-v6.1 IPv6,
    // both on the VXLAN port (the IPv6 device's socket is IPv6-only).
    let tap_v6 = lab.exec(
        "n3",
        &["cat", "/proc/sys/net/ipv6/conf/vxmesh0/disable_ipv6"],
    );
    assert_eq!(tap_v6.trim(), "1");
    // The userspace node checks the inner addresses of VXLAN over IPv6 (decision 0031):
    // two rules per peer in its ip6tables chain, every pair below crossing it. The
    // kernel-dataplane nodes keep the kernel's (flanneld's) behaviour: no check.
    assert!(
        has_ingress6_check(&lab, "n3", &["fd00:64::11", "fd00:64::12"]),
        "{}",
        ingress6_check(&lab, "n3")
    );
    for node in ["n1", "n2"] {
        assert_eq!(ingress6_check(&lab, node), "", "{node}");
    }

    // flanneld's IPv6 rules: masquerade for traffic leaving the IPv6 Network, FORWARD
    // accepts. The etcd host gets an IPv6 address and no route to the pods: a pod's
    // ping is answered only when masqueraded behind node 1's address.
    let nat6 = lab.exec("n1", &["ip6tables-save", "-t", "nat"]);
    assert!(
        nat6.contains("-A VXMESH-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8"),
        "{nat6}"
    );
    lab.exec(
        "etcd",
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:64::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    let ping_out = |from: &str| {
        wait_for(Duration::from_secs(5), || {
            lab.command_in(from, "ping")
                .args(["-6", "-c", "1", "-W", "1", "fd00:64::2"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    };
    assert!(
        ping_out("n1-p1").is_some(),
        "pod IPv6 to outside the Network, masqueraded"
    );
    // With the hosts' ip6tables FORWARD policy at DROP (as Docker sets it), pod IPv6
    // still crosses: the FORWARD accepts.
    for node in ["n1", "n2", "n3"] {
        lab.exec(node, &["ip6tables", "-P", "FORWARD", "DROP"]);
    }
    let (ok, out) = lab.cmd(&["check"]);
    assert!(
        ok && out.contains("IPv6 pod pairs: 24 of 24 reachable"),
        "with FORWARD policy DROP:\n{out}"
    );
    // An ip6tables flush is repaired like an iptables one (--iptables-resync, 5 s).
    lab.exec("n1", &["ip6tables", "-t", "nat", "-F", "VXMESH-POSTRTG"]);
    let back = wait_for(Duration::from_secs(15), || {
        lab.exec("n1", &["ip6tables-save", "-t", "nat"])
            .contains("-A VXMESH-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8")
    });
    assert!(
        back.is_some(),
        "the IPv6 masquerade rules were not restored"
    );
    assert!(ping_out("n1-p2").is_some());

    // A restarted node adopts its IPv6 device (kernel dataplane, then userspace), and
    // so does a userspace agent taking over from a running one; both families still
    // cross after each.
    for (how, node) in [
        ("restart-agent", "1"),
        ("restart-agent", "3"),
        ("handover-agent", "3"),
    ] {
        let index = |lab: &Lab| {
            lab.ip_json(&format!("n{node}"), &["link", "show", "flannel-v6.1"])[0]["ifindex"]
                .clone()
        };
        let before = index(&lab);
        lab.must(&[how, node]);
        assert_eq!(
            index(&lab),
            before,
            "{how} {node}: the IPv6 device adopted, not re-made"
        );
        let (ok, out) = lab.cmd(&["check"]);
        assert!(
            ok && out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
            "after {how} {node}:\n{out}"
        );
    }

    // The IPv6 device deleted under a running agent, on either dataplane: the agent
    // makes it again alone — the IPv4 device stays, and on the userspace node so do
    // the packet threads — and both families are carried within seconds.
    for node in ["n1", "n3"] {
        let index =
            |lab: &Lab| lab.ip_json(node, &["link", "show", "flannel-v6.1"])[0]["ifindex"].as_u64();
        let v4_device = if node == "n1" { "flannel.1" } else { "vxmesh0" };
        let v4_index =
            |lab: &Lab| lab.ip_json(node, &["link", "show", v4_device])[0]["ifindex"].as_u64();
        let v4_before = v4_index(&lab);
        let threads = (node == "n3").then(|| lab.engine_threads(3));
        let before = index(&lab);
        lab.exec(node, &["ip", "link", "del", "flannel-v6.1"]);
        let back = wait_for(Duration::from_secs(15), || {
            index(&lab).is_some_and(|i| Some(i) != before)
                && lab.status(node)["ready"] == Value::Bool(true)
        });
        assert!(
            back.is_some(),
            "{node}: flannel-v6.1 not re-created: {}",
            lab.status(node)
        );
        let ok = wait_for(Duration::from_secs(10), || {
            let (ok, out) = lab.cmd(&["check"]);
            ok && out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable")
        });
        assert!(
            ok.is_some(),
            "{node}: not every pair reached after flannel-v6.1 was re-created"
        );
        assert_eq!(
            v4_index(&lab),
            v4_before,
            "{node}: {v4_device} was made again"
        );
        if let Some(t) = threads {
            assert_eq!(
                lab.engine_threads(3),
                t,
                "{node}: the packet threads were started again"
            );
        }
        let events = lab.exec(
            node,
            &["curl", "-sf", "http://127.0.0.1:8471/v1/events?since=0"],
        );
        assert!(
            events.contains(
                "the IPv6 overlay device was deleted under the running agent: made again alone"
            ),
            "{node}: {events}"
        );
    }

    // The IPv6 device's MAC changed under a running agent (udev's MACAddressPolicy, a
    // script), on either dataplane: the 2-s device check puts the IPv6 VtepMAC back,
    // the flushed neighbours are reconciled, and every IPv6 pair crosses again.
    for node in ["n1", "n3"] {
        let mac = |lab: &Lab| {
            lab.ip_json(node, &["link", "show", "flannel-v6.1"])[0]["address"]
                .as_str()
                .map(str::to_string)
        };
        let want = mac(&lab).unwrap();
        lab.exec(
            node,
            &[
                "ip",
                "link",
                "set",
                "flannel-v6.1",
                "address",
                "02:00:00:00:06:66",
            ],
        );
        let back = wait_for(Duration::from_secs(10), || {
            mac(&lab).as_deref() == Some(want.as_str())
        });
        assert!(back.is_some(), "{node}: the IPv6 VtepMAC was not put back");
        let ok = wait_for(Duration::from_secs(10), || {
            let (ok, out) = lab.cmd(&["check"]);
            ok && out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable")
        });
        assert!(
            ok.is_some(),
            "{node}: not every pair reached after the IPv6 VtepMAC was put back"
        );
    }

    // A forged lease claiming node 1's IPv6 subnet (its IPv4 half fresh and valid):
    // every node rejects it whole, so node 1's pods keep their IPv6 route everywhere.
    // Before the IPv6 halves were judged, nodes 2 and 3 routed node 1's pods' IPv6 to
    // the forger.
    // Its IPv4 half one no node holds: the nodes' subnets are random, and a fixed one
    // was node 1's own in one run (the put then took node 1's whole key away, and it
    // moved to other subnets).
    let held: Vec<String> = leases(&lab)
        .iter()
        .filter_map(|(k, _)| LeaseKey::parse(k).ok()?.ipv4_subnet())
        .map(|s| s.to_string())
        .collect();
    let free4 = (1..=254u32)
        .rev()
        .map(|i| format!("10.244.{i}.0/24"))
        .find(|s| !held.contains(s))
        .unwrap();
    let forged = format!(
        "{PREFIX}/subnets/{}&{}",
        free4.replace('/', "-"),
        s1.to_string().replace('/', "-")
    );
    lab.etcdctl(&[
        "put",
        &forged,
        r#"{"PublicIP":"192.168.100.99","PublicIPv6":"fd00:64::99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:99"}}"#,
    ]);
    for node in ["n1", "n2", "n3"] {
        let seen = wait_for(Duration::from_secs(10), || {
            lab.status(node)["node"]["rejected"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|r| r["key"] == forged.as_str() && r["reason"] == "overlap")
                })
        });
        assert!(seen.is_some(), "{node}: {}", lab.status(node)["node"]);
    }
    for node in ["n2", "n3"] {
        let routes = lab.ip_json(node, &["-6", "route", "show", &s1.to_string()]);
        assert_eq!(routes.as_array().map(Vec::len), Some(1), "{node}: {routes}");
        assert_eq!(routes[0]["gateway"], a1.as_str(), "{node}: {routes}");
    }
    let (ok, out) = lab.cmd(&["check"]);
    assert!(
        ok && out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "with the forged lease:\n{out}"
    );
    lab.etcdctl(&["del", &forged]);

    // cleanup-tap (uninstall) removes the userspace node's IPv6 device with its TAP.
    lab.must(&["stop-agent", "3"]);
    let out = lab.exec("n3", &[ctl, "cleanup-tap"]);
    assert!(
        out.contains("removed the IPv6 device flannel-v6.1"),
        "{out}"
    );
    assert!(lab
        .ip_json("n3", &["link", "show", "type", "vxlan"])
        .as_array()
        .is_none_or(|a| a.is_empty()));
    // ... and --ip-blackhole-route's routes, both families.
    assert!(
        out.contains("removed the blackhole routes of --ip-blackhole-route"),
        "{out}"
    );
    for family in ["-4", "-6"] {
        let left = lab.ip_json("n3", &[family, "route", "show", "type", "blackhole"]);
        assert!(left.as_array().is_none_or(|a| a.is_empty()), "{left}");
    }
}

/// DirectRouting in a dual-stack cluster on one L2 segment (both families): every peer's
/// IPv4 and IPv6 subnets are routed via its PublicIP and PublicIPv6 on eth0, nothing on
/// the overlay devices, on either dataplane; every pod pair of both families reachable.
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn direct_routing_routes_both_families_on_one_segment() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vx6d",
        &[
            ("VXLAB_NODES", "3"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "1"),
            ("VXLAB_DATAPLANES", "userspace kernel userspace"),
            ("VXLAB_BACKEND", r#"{"Type":"vxlan","DirectRouting":true}"#),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    assert!(ok, "lab up failed:\n{out}");
    assert!(
        out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "{out}"
    );
    let s6 = |ip: &str| lease_of(&lab, ip).0.ipv6_subnet().unwrap().to_string();
    for (node, peers) in [
        (
            "n1",
            [
                ("192.168.100.12", "fd00:64::12"),
                ("192.168.100.13", "fd00:64::13"),
            ],
        ),
        (
            "n2",
            [
                ("192.168.100.11", "fd00:64::11"),
                ("192.168.100.13", "fd00:64::13"),
            ],
        ),
    ] {
        let routes = lab.ip_json(node, &["-6", "route", "show", "dev", "eth0"]);
        for (ip, ip6) in peers {
            let want = s6(ip);
            let found = routes.as_array().unwrap().iter().any(|r| {
                r["dst"].as_str() == Some(want.as_str()) && r["gateway"].as_str() == Some(ip6)
            });
            assert!(found, "{node}: {want} via {ip6} on eth0: {routes}");
        }
        let over = lab.ip_json(node, &["-6", "route", "show", "dev", "flannel-v6.1"]);
        let peer_routes: Vec<&Value> = over
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["protocol"] != "kernel")
            .collect();
        assert!(peer_routes.is_empty(), "{node}: {over}");
    }

    // DirectRouting turned off, every node restarted: the peers go through the
    // overlay in both families. The IPv6 direct routes left on eth0 would keep the
    // IPv6 overlay routes out (Linux refuses an onlink gateway another device's route
    // covers): each agent clears them before its first batch and reports ready.
    let config = lab.etcdctl(&["get", "--print-value-only", &format!("{PREFIX}/config")]);
    assert!(config.contains(r#""DirectRouting":true"#), "{config}");
    let off = config
        .trim()
        .replace(r#""DirectRouting":true"#, r#""DirectRouting":false"#);
    lab.etcdctl(&["put", &format!("{PREFIX}/config"), &off]);
    for n in ["1", "2", "3"] {
        lab.must(&["restart-agent", n]);
    }
    let (ok, out) = lab.cmd(&["check"]);
    assert!(
        ok && out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "after DirectRouting was turned off:\n{out}"
    );
    for (node, peers) in [
        ("n1", ["192.168.100.12", "192.168.100.13"]),
        ("n2", ["192.168.100.11", "192.168.100.13"]),
        ("n3", ["192.168.100.11", "192.168.100.12"]),
    ] {
        let direct6 = lab.ip_json(node, &["-6", "route", "show", "dev", "eth0"]);
        let over6 = lab.ip_json(node, &["-6", "route", "show", "dev", "flannel-v6.1"]);
        let direct4 = lab.ip_json(node, &["-4", "route", "show", "dev", "eth0"]);
        for ip in peers {
            let want4 = lease_of(&lab, ip).0.ipv4_subnet().unwrap().to_string();
            let direct = direct4
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"].as_str() == Some(want4.as_str()));
            assert!(!direct, "{node}: {want4} still on eth0: {direct4}");
            let want = s6(ip);
            let on = |routes: &Value| {
                routes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["dst"].as_str() == Some(want.as_str()))
            };
            assert!(!on(&direct6), "{node}: {want} still on eth0: {direct6}");
            assert!(on(&over6), "{node}: {want} not on flannel-v6.1: {over6}");
        }
        // Cleared before the start-up batch: no programming error on the way.
        let log = std::fs::read_to_string(lab.state.join(format!("vxmeshd-{node}.log"))).unwrap();
        assert_eq!(
            log.matches("cannot program peer").count(),
            0,
            "{node}: {log}"
        );
        assert_eq!(
            log.matches("removing a direct IPv6 route that would block the overlay route")
                .count(),
            2,
            "{node}: {log}"
        );
    }
}

/// A mixed dual-stack cluster: a vxmesh userspace-dataplane node, a kernel-dataplane one
/// and a node configured as a dual-stack flanneld configures itself
/// (scripts/flannel-node.sh: its own `flannel-v6.1`, keys and values written by an
/// independent implementation). Every pod pair is reachable over both families.
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn dual_stack_mixed_with_a_flannel_recipe_node() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vx6m",
        &[
            ("VXLAB_NODES", "3"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "1"),
            ("VXLAB_DATAPLANES", "userspace kernel flannel"),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    assert!(ok, "lab up failed:\n{out}");
    assert!(
        out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "{out}"
    );
    // The flannel node's lease is dual stack in flannel's forms, and vxmesh programs it
    // (node 1: the userspace dataplane's IPv6 device).
    let (k3, attrs3, _) = lease_of(&lab, "192.168.100.13");
    let s3 = k3
        .ipv6_subnet()
        .expect("the flannel node's key is dual stack");
    assert_eq!(attrs3.public_ipv6, Some("fd00:64::13".parse().unwrap()));
    let mac3 = attrs3.vxlan_v6.expect("BackendV6Data").vtep_mac;
    let fdb = lab.exec("n1", &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(fdb.contains(&format!("{mac3} dst fd00:64::13")), "{fdb}");
    let routes = lab.ip_json("n1", &["-6", "route", "show", &s3.to_string()]);
    assert_eq!(routes[0]["dev"], "flannel-v6.1", "{routes}");
    // ... and the flannel node programs vxmesh's.
    let (k1, attrs1, _) = lease_of(&lab, "192.168.100.11");
    let mac1 = attrs1.vxlan_v6.unwrap().vtep_mac;
    let fdb3 = lab.exec("n3", &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(fdb3.contains(&format!("{mac1} dst fd00:64::11")), "{fdb3}");
    let r3 = lab.ip_json(
        "n3",
        &[
            "-6",
            "route",
            "show",
            &k1.ipv6_subnet().unwrap().to_string(),
        ],
    );
    assert_eq!(r3[0]["dev"], "flannel-v6.1", "{r3}");
    // Node 1 (userspace) checks VXLAN over IPv6 (decision 0031): the flannel node's
    // pod traffic above, sent at its default offloads, crossed the check.
    assert!(
        has_ingress6_check(&lab, "n1", &["fd00:64::12", "fd00:64::13"]),
        "{}",
        ingress6_check(&lab, "n1")
    );
}

/// A pod's global IPv6 address (on its eth0).
fn pod_ipv6(lab: &Lab, pod: &str) -> String {
    let v = lab.ip_json(
        pod,
        &["-6", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    v[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap_or_else(|| panic!("{pod} has no global IPv6 address: {v}"))
        .to_string()
}

/// The userspace threads carrying IPv6 (`--ipv6-dataplane userspace`, decision 0034)
/// in a mixed dual-stack cluster: node 1 runs them, node 2 the kernel dataplane, node
/// 3 the flannel recipe (its own `flannel-v6.1` at the kernel's defaults). Every pod
/// pair of both families is reachable; node 1 has no `flannel-v6.1` and no nftables
/// check (the threads check), its TAP holds the lease's IPv6 address as /128, the
/// peers' IPv6 neighbours and routes and no fdb entry, an IPv6 socket holds the VXLAN
/// port; the other nodes program node 1's IPv6 half as any flannel-v6 peer's; IPv6
/// pings every 10 ms both ways across a live handover on node 1 are all answered, and
/// so after a cold restart.
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn ipv6_in_the_threads_beside_kernel_and_flannel_nodes() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vx6u",
        &[
            ("VXLAB_NODES", "3"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "1"),
            ("VXLAB_DATAPLANES", "userspace6 kernel flannel"),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    assert!(ok, "lab up failed:\n{out}");
    assert!(
        out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "{out}"
    );
    let (k1, attrs1, _) = lease_of(&lab, "192.168.100.11");
    let (k2, attrs2, _) = lease_of(&lab, "192.168.100.12");
    let (k3, attrs3, _) = lease_of(&lab, "192.168.100.13");
    let s1 = k1.ipv6_subnet().expect("node 1's lease is dual stack");
    // Node 1: the TAP carries IPv6; no flannel-v6.1, no nftables check.
    let links = lab.exec("n1", &["ip", "-br", "link"]);
    assert!(!links.contains("flannel-v6"), "{links}");
    assert_eq!(
        ipv6_addrs(&lab, "n1", "vxmesh0"),
        [format!("{}/128", s1.addr())]
    );
    for (k, a) in [(&k2, &attrs2), (&k3, &attrs3)] {
        let s = k.ipv6_subnet().unwrap();
        let r = lab.ip_json("n1", &["-6", "route", "show", &s.to_string()]);
        assert_eq!(r[0]["dev"], "vxmesh0", "{r}");
        assert_eq!(r[0]["gateway"], s.addr().to_string(), "{r}");
        let mac = a.vxlan_v6.expect("BackendV6Data").vtep_mac;
        let neigh = lab.exec("n1", &["ip", "-6", "neigh", "show", "dev", "vxmesh0"]);
        assert!(
            neigh.contains(&format!("{} lladdr {mac} PERMANENT", s.addr())),
            "{neigh}"
        );
    }
    let fdb = lab.exec("n1", &["bridge", "fdb", "show", "dev", "vxmesh0"]);
    assert!(!fdb.contains(" dst "), "the TAP has no fdb entries: {fdb}");
    assert_eq!(
        lab.exec("n1", &["cat", "/proc/sys/net/ipv6/conf/vxmesh0/mtu"])
            .trim(),
        "1430",
        "the TAP's IPv6 MTU: 20 below its 1450"
    );
    assert!(ingress6_check(&lab, "n1").is_empty());
    let udp = lab.exec("n1", &["ss", "-uanp", "sport", "= :8472"]);
    assert!(
        udp.lines()
            .any(|l| l.contains("[::]:8472") && l.contains("vxmeshd")),
        "vxmeshd holds the IPv6 VXLAN port: {udp}"
    );
    let st = lab.status("n1");
    assert_eq!(st["offloads"]["ipv6"]["udp_gro"], true, "{st}");
    // The others program node 1's IPv6 half as a flannel-v6 peer's.
    let mac1 = attrs1.vxlan_v6.unwrap().vtep_mac;
    for n in ["n2", "n3"] {
        let fdb = lab.exec(n, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
        assert!(
            fdb.contains(&format!("{mac1} dst fd00:64::11")),
            "{n}: {fdb}"
        );
    }
    // A live handover on node 1: no IPv6 ping lost either way.
    let (p1, p2, p3) = (
        pod_ipv6(&lab, "n1-p1"),
        pod_ipv6(&lab, "n2-p1"),
        pod_ipv6(&lab, "n3-p1"),
    );
    let pings = [
        pinger(&lab, "n2-p1", &p1, 300),
        pinger(&lab, "n1-p1", &p2, 300),
        pinger(&lab, "n3-p1", &p1, 300),
        pinger(&lab, "n1-p1", &p3, 300),
    ];
    std::thread::sleep(Duration::from_millis(1000));
    lab.must(&["handover-agent", "1"]);
    for (i, p) in pings.into_iter().enumerate() {
        let (sent, got) = ping_counts(p);
        println!("IPv6 pings across a handover on node 1, pair {i}: {got} of {sent}");
        assert_eq!(
            got, sent,
            "no IPv6 ping lost across the handover (pair {i})"
        );
    }
    let st = lab.status("n1");
    assert_eq!(st["start"]["how"], "handover", "{st}");
    // A cold restart: the same TAP and port, every pair of both families again.
    lab.must(&["restart-agent", "1"]);
    let out = lab.must(&["check"]);
    assert!(
        out.contains("24 of 24 reachable; IPv6 pod pairs: 24 of 24 reachable"),
        "after node 1's cold restart:\n{out}"
    );
}

/// An IPv6-only pod network (`VXLAB_IPV6=only`: `EnableIPv4` false), a userspace and
/// a kernel node and a third userspace one: every node leases flannel's IPv6-only key,
/// known by its PublicIPv6, runs `flannel-v6.1` alone (no TAP, no `flannel.1`), writes
/// the IPv6 lines alone in its subnet file, and every pod pair is reached over IPv6,
/// before and after a restart (which keeps the key); the status and metrics count the
/// peers; ip6tables masquerades pods' IPv6 leaving the IPv6Network.
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn ipv6_only_cluster() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vx6o",
        &[
            ("VXLAB_NODES", "3"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_IPV6", "only"),
            ("VXLAB_DATAPLANES", "userspace kernel userspace"),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    assert!(ok, "lab up failed:\n{out}");
    // Three nodes x two pods: 24 ordered cross-node pairs, all IPv6.
    assert!(out.contains("24 of 24 reachable"), "{out}");
    let held = leases(&lab);
    assert_eq!(held.len(), 3, "{held:?}");
    let mut keys = Vec::new();
    for n in 1..=3u32 {
        let ip6 = format!("fd00:64::{}", 10 + n);
        let (key, value) = held
            .iter()
            .find(|(_, v)| v.contains(&format!("\"PublicIPv6\":\"{ip6}\"")))
            .unwrap_or_else(|| panic!("no lease of {ip6}: {held:?}"));
        // flannel's IPv6-only forms: key `0.0.0.0-0&<ipv6>-64`, PublicIP 0.0.0.0, no
        // IPv4 BackendData.
        let k = LeaseKey::parse(key).unwrap();
        assert!(k.ipv4_subnet().is_none(), "{key}");
        let s6 = k.ipv6_subnet().unwrap();
        assert!(
            key.ends_with(&format!("0.0.0.0-0&{}-64", s6.addr())),
            "{key}"
        );
        let a = LeaseAttrs::parse(value.as_bytes()).unwrap();
        assert!(a.public_ip.is_unspecified() && a.vxlan.is_none(), "{value}");
        assert_eq!(a.vxlan_v6.unwrap().vni, 1, "{value}");
        let node = format!("n{n}");
        let env = std::fs::read_to_string(lab.state.join(format!("{node}/subnet.env"))).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET={}1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
                s6.addr()
            ),
            "{node}"
        );
        let vxlan: Value = serde_json::from_str(
            &lab.exec(&node, &["ip", "-j", "-d", "link", "show", "type", "vxlan"]),
        )
        .unwrap();
        let names: Vec<&str> = vxlan
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["flannel-v6.1"], "{node}");
        assert_eq!(vxlan[0]["linkinfo"]["info_data"]["local6"], ip6.as_str());
        let links = lab.exec(&node, &["ip", "-br", "link"]);
        assert!(
            !links.contains("vxmesh0"),
            "{node}: a TAP on an IPv6-only node:\n{links}"
        );
        let st = lab.status(&node);
        let n_ = &st["node"];
        assert_eq!(st["ready"], true, "{node}: {st}");
        assert_eq!(n_["ipv6_network"], "fd00:10:244::/56", "{node}: {st}");
        assert_eq!(n_["ipv6_subnet"], s6.to_string().as_str(), "{node}: {st}");
        assert!(
            n_["subnet"].is_null() && n_["public_ip"].is_null(),
            "{node}: {st}"
        );
        assert_eq!(
            n_["ipv6_only_peers"].as_array().unwrap().len(),
            2,
            "{node}: {st}"
        );
        assert_eq!(lab.metric(&node, "vxmesh_peers"), 2.0, "{node}");
        let nat = lab.exec(&node, &["ip6tables-save", "-t", "nat"]);
        assert!(
            nat.contains("fd00:10:244::/56") && nat.contains("MASQUERADE"),
            "{node}: no IPv6 masquerade:\n{nat}"
        );
        // The userspace `--dataplane` nodes check VXLAN over IPv6 (decision 0031), the
        // kernel one does not; the 24 pairs above crossed the check.
        let others: Vec<String> = (1..=3u32)
            .filter(|m| *m != n)
            .map(|m| format!("fd00:64::{}", 10 + m))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        if n == 2 {
            assert_eq!(ingress6_check(&lab, &node), "", "{node}");
        } else {
            assert!(
                has_ingress6_check(&lab, &node, &others),
                "{node}: {}",
                ingress6_check(&lab, &node)
            );
        }
        keys.push(key.clone());
    }
    // The pairs above dropped nothing at node 3's ingress check; a datagram from node
    // 2's PublicIPv6 claiming a source in node 1's subnet is dropped and counted.
    let dropped = |lab: &Lab, reason: &str| {
        lab.metric(
            "n3",
            &format!("vxmesh_ipv6_ingress_dropped_packets_total{{reason=\"{reason}\"}}"),
        )
    };
    for reason in ["ingress_malformed", "unknown_source", "inner_address"] {
        assert_eq!(
            dropped(&lab, reason),
            0.0,
            "{reason}: {}",
            ingress6_check(&lab, "n3")
        );
    }
    let subnet_of = |ip6: &str| {
        let (k, _) = held
            .iter()
            .find(|(_, v)| v.contains(&format!("\"PublicIPv6\":\"{ip6}\"")))
            .unwrap();
        LeaseKey::parse(k).unwrap().ipv6_subnet().unwrap()
    };
    let (s1, s3) = (subnet_of("fd00:64::11"), subnet_of("fd00:64::13"));
    // VXLAN (VNI 1), Ethernet, IPv6 (ICMPv6, 8 bytes of payload).
    let mut forged = String::from("0800000000000100020000000001020000000099");
    forged.push_str("86dd6000000000083a40");
    for a in [s1.addr(), s3.addr()] {
        let mut o = a.octets();
        o[15] = 5;
        forged.push_str(&hex_bytes(&o));
    }
    forged.push_str("8000000000010001");
    lab.command_in("n2", "python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('fd00:64::12', 0)); s.sendto(bytes.fromhex(sys.argv[1]), ('fd00:64::13', 8472))",
            &forged,
        ])
        .status()
        .unwrap();
    let counted = wait_for(Duration::from_secs(15), || {
        dropped(&lab, "inner_address") >= 1.0
    });
    assert!(counted.is_some(), "{}", ingress6_check(&lab, "n3"));
    // Counted for the peer that sent it, in the metrics and in vxmeshctl counters.
    let s2 = subnet_of("fd00:64::12");
    let metrics = lab.metrics("n3");
    let per_peer = format!(
        "vxmesh_peer_ipv6_ingress_dropped_packets_total{{subnet=\"{s2}\",public_ipv6=\"fd00:64::12\",reason=\"inner_address\"}} "
    );
    assert!(metrics.contains(&per_peer), "no {per_peer:?} in\n{metrics}");
    let ctl = lab.bin.join("vxmeshctl");
    let counters = lab.exec("n3", &[ctl.to_str().unwrap(), "counters"]);
    assert!(
        counters.contains(&format!(
            "ipv6_check_dropped:inner_address:fd00:64::12 ({s2})"
        )),
        "{counters}"
    );

    // One vxmeshd per node on an IPv6-only network too, on either `--dataplane`: a
    // second one started beside the running one is refused and says why; the running
    // one carries on with the same lease (same key, same etcd lease), and
    // `vxmeshctl cleanup-tap` refuses to run beside it (before, it saw no TAP and went
    // on, taking the node's blackhole routes).
    // (Before, the second ran beside the first, each keeping the key alive under its
    // own etcd lease.)
    for node in ["1", "2"] {
        let n = format!("n{node}");
        let before = lab.status(&n);
        let log = lab.refused_start(
            node,
            &format!("n{node}-second.log"),
            "beside a running IPv6-only node",
        );
        assert!(
            log.contains("refused to hand it over")
                && log.contains("is a node of an IPv6-only network")
                && log.contains("stop it first"),
            "{n}: {log}"
        );
        let after = lab.status(&n);
        assert_eq!(after["ready"], true, "{n}: {after}");
        for field in ["lease_id", "ipv6_subnet", "public_ipv6"] {
            assert_eq!(after["node"][field], before["node"][field], "{n}: {field}");
        }
        assert_eq!(after["handovers_refused"], 1, "{n}: {after}");
    }
    assert_eq!(leases(&lab).len(), 3, "{:?}", leases(&lab));
    let out = lab
        .command_in("n1", ctl.to_str().unwrap())
        .arg("cleanup-tap")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stop it first"),
        "cleanup-tap beside a running IPv6-only node: {err}"
    );
    assert_eq!(
        lab.ip_json("n1", &["link", "show", "flannel-v6.1"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Node 3's PublicIPv6 renumbered under the running agent (decision 0024): the
    // same key is put again naming the new address and the VtepMAC derived from it,
    // its device sends from it, the other nodes reprogram it (and their ingress
    // checks let it in), and every pair crosses again.
    let (key3, _) = held
        .iter()
        .find(|(_, v)| v.contains("\"PublicIPv6\":\"fd00:64::13\""))
        .unwrap()
        .clone();
    lab.exec(
        "n3",
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:64::33/64",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    lab.exec(
        "n3",
        &["ip", "-6", "addr", "del", "fd00:64::13/64", "dev", "eth0"],
    );
    let moved = wait_for(Duration::from_secs(15), || {
        leases(&lab).iter().any(|(k, v)| {
            *k == key3
                && LeaseAttrs::parse(v.as_bytes())
                    .is_ok_and(|a| a.public_ipv6 == Some("fd00:64::33".parse().unwrap()))
        })
    });
    assert!(moved.is_some(), "{:?}", leases(&lab));
    let (_, v3) = leases(&lab).into_iter().find(|(k, _)| *k == key3).unwrap();
    let a3 = LeaseAttrs::parse(v3.as_bytes()).unwrap();
    assert_eq!(
        a3.vxlan_v6.unwrap().vtep_mac,
        vxmesh_control::vtep_mac::derive_v6("fd00:64::33".parse().unwrap(), 1),
        "{v3}"
    );
    let link = &lab.ip_json("n3", &["-d", "link", "show", "flannel-v6.1"])[0];
    assert_eq!(
        link["linkinfo"]["info_data"]["local6"], "fd00:64::33",
        "{link}"
    );
    assert!(
        has_ingress6_check(&lab, "n1", &["fd00:64::12", "fd00:64::33"]),
        "{}",
        ingress6_check(&lab, "n1")
    );
    let ok = wait_for(Duration::from_secs(15), || {
        let (ok, out) = lab.cmd(&["check"]);
        ok && out.contains("24 of 24 reachable")
    });
    assert!(ok.is_some(), "not every pair reached after node 3 moved");
    let st = lab.status("n3");
    assert_eq!(st["node"]["public_ipv6"], "fd00:64::33", "{st}");
    assert_eq!(st["ready"], true, "{st}");
    let events = lab.exec(
        "n3",
        &[
            lab.bin.join("vxmeshctl").to_str().unwrap(),
            "events",
            "--once",
        ],
    );
    assert!(
        events.contains("underlay_moved") && events.contains("fd00:64::13 → fd00:64::33"),
        "{events}"
    );

    // A restart keeps each node's key (found again by its PublicIPv6) and its pods.
    let pid = lab.agent_pid(1);
    lab.must(&["restart-agent", "1"]);
    assert_ne!(lab.agent_pid(1), pid);
    let again: Vec<String> = leases(&lab).into_iter().map(|(k, _)| k).collect();
    for k in &keys {
        assert!(again.contains(k), "{k} gone after a restart: {again:?}");
    }
    lab.check(24, "after node 1's restart");

    // A build that shares no handover protocol version with the running one (the test
    // hook) asks it to release the node: the running one stops and exits, keeping
    // device and lease, and the new one runs the node with the same key.
    let old = lab.agent_pid(1);
    let log = lab.state.join("n1-newer.log");
    let mut newer = lab.spawn(
        &["exec-agent", "1"],
        &[("VXMESH_TEST_HANDOVER_VERSION", "99")],
        &log,
    );
    let took = wait_for(Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{old}")).exists()
            && lab.status("n1")["ready"] == Value::Bool(true)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let ok = took.is_some() && newer.try_wait().unwrap().is_none();
    let again: Vec<String> = leases(&lab).into_iter().map(|(k, _)| k).collect();
    let (checked, out) = lab.cmd(&["check"]);
    let _ = newer.kill();
    let _ = newer.wait();
    assert!(ok, "the newer build did not take node 1 over:\n{text}");
    assert!(
        text.contains("speaks handover protocol") && text.contains("it released the node"),
        "{text}"
    );
    for k in &keys {
        assert!(again.contains(k), "{k} gone after the release: {again:?}");
    }
    assert!(
        checked && out.contains("24 of 24 reachable"),
        "after the release:\n{out}"
    );
    lab.must(&["down"]);
}
