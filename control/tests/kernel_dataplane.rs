//! Privileged: the kernel dataplane's netlink programming in a network namespace of
//! its own (no etcd, no agent), checked with `ip -j` and `bridge -j`. Needs
//! root: ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).
//!
//! Covers: creation with flannel's settings; adoption of a compatible device left by
//! flanneld (MAC and MTU set in place, entries kept until pruned); recreation of an
//! incompatible one; a clear error naming the device that already holds the VNI;
//! idempotent add/update/remove (VtepMAC and PublicIP changes leave no stale fdb
//! entry; two leases of one node share an fdb entry); prune; the userspace
//! dataplane's start-up removal of the device; DirectRouting (a same-L2 peer gets a
//! route via its PublicIP on the underlay, a routed one the overlay, moves between the
//! two, stale direct routes pruned); dual stack (`flannel-v6.<VNI>` beside `flannel.<VNI>`,
//! programmed as flanneld does, IPv6 and IPv4 pinged across two nodes, IPv6 entries
//! updated and pruned; DirectRouting for IPv6 halves, decided apart from IPv4's);
//! an IPv6-only node (`flannel-v6.<VNI>` alone over an IPv6-only underlay).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vxmesh_control::netlink::Netlink;
use vxmesh_control::node_dataplane::direct::PeerPath;
use vxmesh_control::node_dataplane::ipv6_only::{Ipv6OnlyDataplane, Ipv6OnlySetup};
use vxmesh_control::node_dataplane::kernel::{remove_leftover_device, Kernel, Place};
use vxmesh_control::node_dataplane::{DataplaneKind, DataplaneSetup, NodeDataplane, Setup6};
use vxmesh_control::peers::{
    Ipv6OnlyRules, Ipv6Rules, Peer, PeerChange, PeerIpv6, PeerRules, PeerTable,
};
use vxmesh_control::registry::Entry;
use vxmesh_control::state::AgentState;
use vxmesh_dataplane::fib::LocalVtep;
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::wire::{MacAddr, Vni};
use vxmesh_testkit::{require_root, Netns};

/// A namespace with `eth0` (192.0.2.1/24, the other end of a veth pair), deleted on drop.
struct Ns(Netns);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(Netns::unique(&format!("kd-{tag}")).unwrap());
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "peer0", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).unwrap()
    }

    /// `program -n <ns> -j args` parsed; an empty array when the object is absent.
    fn json(&self, program: &str, args: &[&str]) -> Value {
        self.0.json(program, args).unwrap_or(Value::Array(vec![]))
    }

    /// `tool args` as JSON, each entry rendered as "<a> <b>" (with `need`, entries
    /// without that string field skipped; a missing `b` shown as its default), sorted.
    fn pairs(
        &self,
        tool: &str,
        args: &[&str],
        need: Option<&str>,
        a: &str,
        b: (&str, Option<&str>),
    ) -> Vec<String> {
        let mut v: Vec<String> = self
            .json(tool, args)
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| need.is_none_or(|n| e[n].is_string()))
            .map(|e| {
                let second = match b.1 {
                    Some(default) => e[b.0].as_str().unwrap_or(default),
                    None => e[b.0].as_str().unwrap(),
                };
                format!("{} {second}", e[a].as_str().unwrap())
            })
            .collect();
        v.sort();
        v
    }

    fn fdb(&self, dev: &str) -> Vec<String> {
        let args = ["fdb", "show", "dev", dev];
        self.pairs("bridge", &args, Some("dst"), "mac", ("dst", None))
    }

    fn neigh(&self, dev: &str) -> Vec<String> {
        let args = ["neigh", "show", "dev", dev, "nud", "permanent"];
        self.pairs("ip", &args, None, "dst", ("lladdr", None))
    }

    fn routes(&self, dev: &str) -> Vec<String> {
        let args = ["route", "show", "dev", dev];
        self.pairs("ip", &args, None, "dst", ("gateway", Some("-")))
    }

    fn link(&self, dev: &str) -> Value {
        self.json("ip", &["-d", "link", "show", dev])[0].clone()
    }

    /// Runs `f` with a netlink connection inside the namespace (own thread + runtime).
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Netlink) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> T {
        self.0
            .run(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let nl = Netlink::connect().unwrap();
                    f(nl).await
                })
            })
            .unwrap()
    }
}

const MAC: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x01]);

fn setup(index: u32) -> DataplaneSetup {
    DataplaneSetup {
        local: LocalVtep {
            vtep_mac: MAC,
            vni: Vni::new(1).unwrap(),
            port: 8472,
            inner: Some(vxmesh_dataplane::fib::InnerCheck::lab()),
            v6: None,
        },
        mtu: 1450,
        local_ip: Ipv4Addr::new(192, 0, 2, 1),
        underlay_index: index,
        device_name: IfName::new("vxmesh0").unwrap(),
        offloads: false,
        tx_sockets: 1,
        tap_queues: 1,
        tap_txqueuelen: vxmesh_control::flags::DEFAULT_TAP_TXQUEUELEN,
        vxlan_rcvbuf: vxmesh_control::flags::DEFAULT_VXLAN_RCVBUF,
        aqm: None,
        engine_priority: Default::default(),
        busy_poll: Default::default(),
        egress_tunnel_gso: false,
        network: "10.244.0.0/16".parse().unwrap(),
        subnet_len: 24,
        direct_routing: false,
        ipv6: None,
    }
}

fn peer(third: u8, ip: u8, mac_last: u8) -> Peer {
    Peer {
        ipv6: None,
        subnet: format!("10.244.{third}.0/24").parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, ip),
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, mac_last]),
    }
}

fn table(peers: &[Peer]) -> PeerTable {
    let rules = PeerRules {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet_len: 24,
        vni: 1,
        ipv6: None,
    };
    let mut t = PeerTable::new(rules, None);
    let mut skips = Vec::new();
    let entries: Vec<Entry> = peers
        .iter()
        .zip(1..)
        .map(|(p, rev)| Entry {
            key: format!("/coreos.com/network/subnets/{}", p.subnet.key_form()),
            value: vxmesh_control::lease::LeaseAttrs::vxlan(p.public_ip, 1, p.vtep_mac)
                .to_json()
                .into_bytes(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        })
        .collect();
    let _ = t.reset(&entries, &mut skips);
    assert!(skips.is_empty(), "{skips:?}");
    t
}

fn eth0_index(ns: &Ns) -> u32 {
    ns.json("ip", &["link", "show", "eth0"])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn programs_updates_and_prunes_like_flannel() {
    require_root();
    let ns = Ns::new("a");
    let s = setup(eth0_index(&ns));
    let (a, b, b2) = (peer(2, 2, 2), peer(3, 3, 3), peer(4, 3, 3));
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let k = Kernel::start(&nl, &s, &st).await.unwrap();
            assert_eq!(k.device_name().as_str(), "flannel.1");
            // twice: idempotent
            for _ in 0..2 {
                k.add_peer(&nl, &a).await.unwrap();
                k.add_peer(&nl, &b).await.unwrap();
            }
            k.stop();
        })
    });
    let link = ns.link("flannel.1");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["learning"], false);
    assert_eq!(info["local"], "192.0.2.1");
    assert_eq!(info["link"], "eth0");
    assert_eq!(link["address"], "02:11:22:33:44:01");
    assert_eq!(link["mtu"], 1450);
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(
        ns.fdb("flannel.1"),
        ["02:00:00:00:00:02 192.0.2.2", "02:00:00:00:00:03 192.0.2.3"]
    );
    assert_eq!(
        ns.neigh("flannel.1"),
        [
            "10.244.2.0 02:00:00:00:00:02",
            "10.244.3.0 02:00:00:00:00:03"
        ]
    );
    assert_eq!(
        ns.routes("flannel.1"),
        ["10.244.2.0/24 10.244.2.0", "10.244.3.0/24 10.244.3.0"]
    );
    let onlink = ns.json("ip", &["route", "show", "dev", "flannel.1"]);
    assert!(onlink.as_array().unwrap().iter().all(|r| r["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "onlink")));

    // A restarted agent adopts the device; updates replace, removals are complete.
    let s = setup(eth0_index(&ns));
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let k = Kernel::start(&nl, &s, &st).await.unwrap();
            // Stale until pruned: nothing is re-added yet, the device kept its entries.
            let new_mac = Peer {
                vtep_mac: MacAddr([0x02, 0, 0, 0, 0, 0x22]),
                ..a
            };
            k.add_peer(&nl, &a).await.unwrap();
            k.update_peer(&nl, &a, &new_mac).await.unwrap();
            let new_ip = Peer {
                public_ip: Ipv4Addr::new(192, 0, 2, 22),
                ..new_mac
            };
            k.update_peer(&nl, &new_mac, &new_ip).await.unwrap();
            // b's node also holds a second lease (same PublicIP and VtepMAC).
            k.add_peer(&nl, &b).await.unwrap();
            k.add_peer(&nl, &b2).await.unwrap();
            k.remove_peer(&nl, &b2).await.unwrap();
            k.remove_peer(&nl, &b2).await.unwrap(); // twice: idempotent
            k.stop();
        })
    });
    assert_eq!(
        ns.fdb("flannel.1"),
        [
            "02:00:00:00:00:03 192.0.2.3",
            "02:00:00:00:00:22 192.0.2.22"
        ],
        "old VtepMAC gone, new PublicIP in place, the shared entry kept"
    );
    assert_eq!(
        ns.neigh("flannel.1"),
        [
            "10.244.2.0 02:00:00:00:00:22",
            "10.244.3.0 02:00:00:00:00:03"
        ]
    );
    assert_eq!(
        ns.routes("flannel.1"),
        ["10.244.2.0/24 10.244.2.0", "10.244.3.0/24 10.244.3.0"]
    );

    // Prune against a peer set that lost b: everything of b goes, nothing else.
    let s = setup(eth0_index(&ns));
    let a_now = Peer {
        public_ip: Ipv4Addr::new(192, 0, 2, 22),
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, 0x22]),
        ..a
    };
    let removed = ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let k = Kernel::start(&nl, &s, &st).await.unwrap();
            let n = k.prune(&nl, &[a_now]).await.unwrap();
            assert_eq!(k.prune(&nl, &[a_now]).await.unwrap(), 0);
            n
        })
    });
    assert_eq!(ns.fdb("flannel.1"), ["02:00:00:00:00:22 192.0.2.22"]);
    assert_eq!(ns.neigh("flannel.1"), ["10.244.2.0 02:00:00:00:00:22"]);
    assert_eq!(ns.routes("flannel.1"), ["10.244.2.0/24 10.244.2.0"]);
    assert_eq!(removed, 3, "route, fdb entry and neighbour of b");

    // The userspace dataplane's start removes the device, and everything on it.
    ns.run(|nl| Box::pin(async move { remove_leftover_device(&nl, 1, 8472).await.unwrap() }));
    assert!(ns
        .json("ip", &["link", "show", "type", "vxlan"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(ns.routes("eth0").iter().all(|r| !r.starts_with("10.244.")));
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn adopts_flanneld_device_recreates_incompatible_and_names_conflicts() {
    require_root();
    let ns = Ns::new("b");
    let idx = eth0_index(&ns);
    // flanneld's device: random MAC, its own MTU, with an entry for a peer.
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        "0e:aa:bb:cc:dd:ee",
        "mtu",
        "1400",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.0.2.1",
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "up"]);
    ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "10.244.9.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let before = ns.link("flannel.1")["ifindex"].clone();
    let s = setup(idx);
    ns.run(move |nl| {
        Box::pin(async move {
            let k = Kernel::start(&nl, &s, &Arc::new(AgentState::default()))
                .await
                .unwrap();
            k.stop();
        })
    });
    let link = ns.link("flannel.1");
    assert_eq!(link["ifindex"], before, "adopted, not recreated");
    assert_eq!(link["address"], "02:11:22:33:44:01");
    assert_eq!(link["mtu"], 1450);
    assert_eq!(
        ns.routes("flannel.1"),
        ["10.244.9.0/24 10.244.9.0"],
        "kept until pruned"
    );

    // Incompatible (learning on): recreated.
    ns.ip(&["link", "del", "flannel.1"]);
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "learning",
    ]);
    let before = ns.link("flannel.1")["ifindex"].clone();
    let s = setup(idx);
    ns.run(move |nl| {
        Box::pin(async move {
            Kernel::start(&nl, &s, &Arc::new(AgentState::default()))
                .await
                .unwrap()
                .stop();
        })
    });
    let link = ns.link("flannel.1");
    assert_ne!(link["ifindex"], before, "recreated");
    assert_eq!(link["linkinfo"]["info_data"]["learning"], false);

    // Another device holds VNI 1 on port 8472: the error names it.
    ns.ip(&["link", "del", "flannel.1"]);
    ns.ip(&[
        "link", "add", "other.1", "type", "vxlan", "id", "1", "dstport", "8472",
    ]);
    let s = setup(idx);
    let err = ns.run(move |nl| {
        Box::pin(async move {
            format!(
                "{:#}",
                Kernel::start(&nl, &s, &Arc::new(AgentState::default()))
                    .await
                    .unwrap_err()
            )
        })
    });
    assert!(err.contains("other.1") && err.contains("VNI 1"), "{err}");
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn direct_routing_routes_same_l2_peers_on_the_underlay() {
    require_root();
    let ns = Ns::new("dr");
    let s = DataplaneSetup {
        direct_routing: true,
        ..setup(eth0_index(&ns))
    };
    // a: on eth0's 192.0.2.0/24, direct. c: behind a router, overlay.
    let a = peer(2, 2, 2);
    let c = Peer {
        public_ip: Ipv4Addr::new(198, 51, 100, 7),
        ..peer(5, 7, 5)
    };
    let a_routed = Peer {
        public_ip: Ipv4Addr::new(198, 51, 100, 8),
        ..a
    };
    let a_back = Peer {
        public_ip: Ipv4Addr::new(192, 0, 2, 3),
        ..a
    };
    let eth0 = |ns: &Ns| -> Vec<String> {
        ns.routes("eth0")
            .into_iter()
            .filter(|r| r.starts_with("10.244."))
            .collect()
    };

    let s1 = s.clone();
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let (dp, _) =
                NodeDataplane::start(DataplaneKind::Kernel, &nl, &s1, &st, Duration::ZERO)
                    .await
                    .unwrap();
            assert_eq!(dp.path(&a), PeerPath::Direct { via: a.public_ip });
            assert_eq!(dp.path(&c), PeerPath::Overlay);
            for _ in 0..2 {
                dp.add_peer(&nl, &a).await.unwrap();
                dp.add_peer(&nl, &c).await.unwrap();
            }
            dp.stop();
        })
    });
    assert_eq!(eth0(&ns), ["10.244.2.0/24 192.0.2.2"]);
    assert_eq!(ns.routes("flannel.1"), ["10.244.5.0/24 10.244.5.0"]);
    assert_eq!(ns.neigh("flannel.1"), ["10.244.5.0 02:00:00:00:00:05"]);
    assert_eq!(ns.fdb("flannel.1"), ["02:00:00:00:00:05 198.51.100.7"]);

    // a moves behind a router: its route moves to the overlay, with neighbour and fdb
    // entry; then back onto the L2 network: direct again, the overlay entries gone.
    let s2 = s.clone();
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let (dp, _) =
                NodeDataplane::start(DataplaneKind::Kernel, &nl, &s2, &st, Duration::ZERO)
                    .await
                    .unwrap();
            dp.update_peer(&nl, &a, &a_routed).await.unwrap();
            dp.stop();
        })
    });
    assert!(eth0(&ns).is_empty(), "{:?}", eth0(&ns));
    assert_eq!(
        ns.routes("flannel.1"),
        ["10.244.2.0/24 10.244.2.0", "10.244.5.0/24 10.244.5.0"]
    );
    assert_eq!(
        ns.fdb("flannel.1"),
        [
            "02:00:00:00:00:02 198.51.100.8",
            "02:00:00:00:00:05 198.51.100.7"
        ]
    );
    let s3 = s.clone();
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let (dp, _) =
                NodeDataplane::start(DataplaneKind::Kernel, &nl, &s3, &st, Duration::ZERO)
                    .await
                    .unwrap();
            dp.update_peer(&nl, &a_routed, &a_back).await.unwrap();
            dp.stop();
        })
    });
    assert_eq!(eth0(&ns), ["10.244.2.0/24 192.0.2.3"]);
    assert_eq!(ns.routes("flannel.1"), ["10.244.5.0/24 10.244.5.0"]);
    assert_eq!(ns.neigh("flannel.1"), ["10.244.5.0 02:00:00:00:00:05"]);
    assert_eq!(ns.fdb("flannel.1"), ["02:00:00:00:00:05 198.51.100.7"]);

    // Prune: a direct route of a lease that is gone goes; routes of other shapes stay.
    ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "192.0.2.9",
        "dev",
        "eth0",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.9.0.0/24",
        "via",
        "192.0.2.9",
        "dev",
        "eth0",
    ]);
    let s4 = s.clone();
    let removed = ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let (dp, _) =
                NodeDataplane::start(DataplaneKind::Kernel, &nl, &s4, &st, Duration::ZERO)
                    .await
                    .unwrap();
            let n = dp.prune(&nl, &table(&[a_back, c])).await.unwrap();
            assert_eq!(dp.prune(&nl, &table(&[a_back, c])).await.unwrap(), 0);
            dp.stop();
            n
        })
    });
    assert_eq!(removed, 1);
    assert_eq!(eth0(&ns), ["10.244.2.0/24 192.0.2.3"]);
    assert!(ns
        .ip(&["route", "show", "10.9.0.0/24"])
        .contains("192.0.2.9"));

    // Removing the peer removes its direct route.
    let s5 = s.clone();
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let (dp, _) =
                NodeDataplane::start(DataplaneKind::Kernel, &nl, &s5, &st, Duration::ZERO)
                    .await
                    .unwrap();
            dp.remove_peer(&nl, &a_back).await.unwrap();
            dp.remove_peer(&nl, &a_back).await.unwrap();
            dp.stop();
        })
    });
    assert!(eth0(&ns).is_empty());
}

/// DirectRouting for IPv6 halves, as flanneld does it: a peer whose PublicIPv6 is on
/// the underlay's IPv6 network gets `<IPv6 subnet> via <PublicIPv6> dev eth0`, one
/// behind a router the entries on `flannel-v6.1`; moves between the two leave nothing
/// behind, and removal takes the direct route.
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn direct_routing_ipv6_halves_like_flanneld() {
    require_root();
    let ns = Ns::new("dr6");
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:192::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let s = DataplaneSetup {
        direct_routing: true,
        ..setup6(eth0_index(&ns), &node6(1))
    };
    // a: both halves on eth0's networks. c: IPv4 on-link, IPv6 behind a router.
    let a = node6(2);
    let far6 = |p: Peer, ip6: &str| {
        let mut v6 = p.ipv6.unwrap();
        v6.public_ipv6 = ip6.parse().unwrap();
        Peer {
            ipv6: Some(v6),
            ..p
        }
    };
    let c = far6(node6(5), "fd00:99::5");
    let a_routed = far6(a, "fd00:99::2");
    let eth0_6 = |ns: &Ns| -> Vec<String> {
        routes6(&ns.0, "eth0")
            .into_iter()
            .filter(|r| r.starts_with("fd00:10:244:"))
            .collect()
    };
    let run = |s: DataplaneSetup, changes: Vec<(Option<Peer>, Option<Peer>)>| {
        ns.run(move |nl| {
            Box::pin(async move {
                let st = Arc::new(AgentState::default());
                let (dp, _) =
                    NodeDataplane::start(DataplaneKind::Kernel, &nl, &s, &st, Duration::ZERO)
                        .await
                        .unwrap();
                for (old, new) in changes {
                    match (old, new) {
                        (None, Some(p)) => dp.add_peer(&nl, &p).await.unwrap(),
                        (Some(o), Some(n)) => dp.update_peer(&nl, &o, &n).await.unwrap(),
                        (Some(p), None) => dp.remove_peer(&nl, &p).await.unwrap(),
                        (None, None) => {}
                    }
                }
                dp.stop();
            })
        })
    };
    // twice: idempotent
    run(
        s.clone(),
        vec![
            (None, Some(a)),
            (None, Some(c)),
            (None, Some(a)),
            (None, Some(c)),
        ],
    );
    assert_eq!(eth0_6(&ns), ["fd00:10:244:2::/64 fd00:192::2"]);
    assert_eq!(
        routes6(&ns.0, "flannel-v6.1"),
        ["fd00:10:244:5::/64 fd00:10:244:5::"]
    );
    assert_eq!(ns.fdb("flannel-v6.1"), ["06:00:00:00:00:05 fd00:99::5"]);
    // c's IPv4 half is direct: the halves are decided apart.
    assert!(ns
        .routes("eth0")
        .contains(&"10.244.5.0/24 192.0.2.5".to_string()));

    // a's PublicIPv6 moves behind a router, then back.
    run(s.clone(), vec![(Some(a), Some(a_routed))]);
    assert!(eth0_6(&ns).is_empty(), "{:?}", eth0_6(&ns));
    assert_eq!(
        routes6(&ns.0, "flannel-v6.1"),
        [
            "fd00:10:244:2::/64 fd00:10:244:2::",
            "fd00:10:244:5::/64 fd00:10:244:5::"
        ]
    );
    run(s.clone(), vec![(Some(a_routed), Some(a))]);
    assert_eq!(eth0_6(&ns), ["fd00:10:244:2::/64 fd00:192::2"]);
    assert_eq!(
        routes6(&ns.0, "flannel-v6.1"),
        ["fd00:10:244:5::/64 fd00:10:244:5::"]
    );
    assert_eq!(ns.fdb("flannel-v6.1"), ["06:00:00:00:00:05 fd00:99::5"]);
    assert!(!ns
        .neigh("flannel-v6.1")
        .iter()
        .any(|n| n.starts_with("fd00:10:244:2::")));

    // Removal takes the direct route.
    run(s, vec![(Some(a), None), (Some(a), None)]);
    assert!(eth0_6(&ns).is_empty());
}

/// Netlink batches against the real kernel: 300 routes and a few neighbours in three
/// `sendmsg`s, two requests in the middle failing — each reported by itself, with
/// the kernel's errno, and everything around them carried out.
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn a_batch_reports_each_failure_by_itself() {
    use vxmesh_control::netlink::{PeerOp, BATCH_MESSAGES};
    use vxmesh_control::subnet::Subnet;
    require_root();
    let ns = Ns::new("batch");
    let eth0 = eth0_index(&ns);
    let results = ns.run(move |nl| {
        Box::pin(async move {
            let mut ops: Vec<PeerOp> = (0..300u32)
                .map(|i| PeerOp::PeerRoute {
                    index: eth0,
                    subnet: Subnet::new(
                        Ipv4Addr::new(10, 100, (i / 16) as u8, (i % 16 * 16) as u8),
                        28,
                    )
                    .unwrap(),
                })
                .collect();
            // No such device (ENODEV), in the middle of the second batch.
            ops.insert(
                BATCH_MESSAGES + 5,
                PeerOp::Neighbour {
                    index: 99_999,
                    ip: Ipv4Addr::new(192, 0, 2, 9),
                    mac: MAC,
                },
            );
            // A gateway not on any link: the kernel refuses the route.
            ops.insert(
                BATCH_MESSAGES + 6,
                PeerOp::DirectRoute {
                    index: eth0,
                    subnet: Subnet::new(Ipv4Addr::new(10, 244, 9, 0), 24).unwrap(),
                    via: Ipv4Addr::new(203, 0, 113, 9),
                },
            );
            // Deleting what is not there is done; a neighbour after the failures.
            ops.push(PeerOp::DeleteNeighbour {
                index: eth0,
                ip: Ipv4Addr::new(192, 0, 2, 77),
            });
            ops.push(PeerOp::Neighbour {
                index: eth0,
                ip: Ipv4Addr::new(192, 0, 2, 50),
                mac: MAC,
            });
            nl.apply(&ops)
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(results.len(), 304);
    let failed: Vec<(usize, &String)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, BATCH_MESSAGES + 5);
    assert!(failed[0].1.contains("No such device"), "{}", failed[0].1);
    assert_eq!(failed[1].0, BATCH_MESSAGES + 6);
    assert!(
        failed[1].1.contains("10.244.9.0/24 via 203.0.113.9"),
        "{}",
        failed[1].1
    );
    let routes = ns.routes("eth0");
    assert_eq!(
        routes.iter().filter(|r| r.starts_with("10.100.")).count(),
        300,
        "{routes:?}"
    );
    // The last route of the last batch, onlink via its own first address.
    assert!(routes.contains(&"10.100.18.176/28 10.100.18.176".to_string()));
    assert_eq!(ns.neigh("eth0"), vec!["192.0.2.50 02:11:22:33:44:01"]);
}

/// Tasks that share one connection dump at the same time without failing. The kernel
/// runs one dump per netlink socket and refuses a second that arrives while the first
/// is unread with EBUSY; the agent's loop and its blackhole-route task share the
/// agent's connection, and before the dumps were serialized their start-up dumps
/// collided ("dump routes (Inet6): … Device or resource busy"), which can also fail a
/// reconcile pass.
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn concurrent_dumps_on_one_connection_all_succeed() {
    use vxmesh_control::netlink::PeerOp;
    use vxmesh_control::subnet::Subnet;
    require_root();
    let ns = Ns::new("dumps");
    let eth0 = eth0_index(&ns);
    let failures = ns.run(move |nl| {
        Box::pin(async move {
            // Enough routes that each dump takes several reads.
            let ops: Vec<PeerOp> = (0..400u32)
                .map(|i| PeerOp::PeerRoute {
                    index: eth0,
                    subnet: Subnet::new(
                        Ipv4Addr::new(10, 100, (i / 16) as u8, (i % 16 * 16) as u8),
                        28,
                    )
                    .unwrap(),
                })
                .collect();
            assert!(nl.apply(&ops).iter().all(Result::is_ok));
            let tasks = (0..12u32).map(|t| {
                let nl = nl.clone();
                async move {
                    let mut errors = Vec::new();
                    for _ in 0..20 {
                        let r = match t % 4 {
                            0 => nl.main_table_routes().await.map(|v| v.len()),
                            1 => nl.blackholes6(u32::MAX).await.map(|v| v.len()),
                            2 => nl.neighbours(eth0).await.map(|v| v.len()),
                            _ => nl.interfaces().await.map(|v| v.len()),
                        };
                        if let Err(e) = r {
                            errors.push(e.to_string());
                        }
                    }
                    errors
                }
            });
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        })
    });
    assert!(
        failures.is_empty(),
        "{} dumps failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// Checking known neighbours by lookup (`ip neigh get`, batched) finds exactly the
/// entries of this device — a permanent one with its MAC, a changed one with the
/// new MAC, none for an address without an entry — past a batch boundary, and is not
/// confused by the same addresses on another namespace's device (the kernel's
/// neighbour table is one for the whole host).
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn neighbour_lookups_see_this_device_only() {
    use vxmesh_control::netlink::{PeerOp, BATCH_MESSAGES};
    require_root();
    let ns = Ns::new("lookup");
    let other = Ns::new("lookup-other");
    let eth0 = eth0_index(&ns);
    let count = BATCH_MESSAGES as u32 + 20;
    let ip = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 0, 0)) + i);
    // The other namespace holds every address, with another MAC.
    for i in 0..count {
        other.ip(&[
            "neigh",
            "replace",
            &ip(i).to_string(),
            "lladdr",
            "02:99:99:99:99:99",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }
    // Ours: the even addresses; one of them then changed by someone else.
    let found = ns.run(move |nl| {
        Box::pin(async move {
            let ops: Vec<PeerOp> = (0..count)
                .step_by(2)
                .map(|i| PeerOp::Neighbour {
                    index: eth0,
                    ip: ip(i),
                    mac: MAC,
                })
                .collect();
            assert!(nl.apply(&ops).iter().all(Result::is_ok));
            let all: Vec<Ipv4Addr> = (0..count).map(ip).collect();
            (
                nl.lookup_neighbours(eth0, &all),
                nl.lookup_neighbours(99_999, &all[..1]),
            )
        })
    });
    ns.ip(&[
        "neigh",
        "replace",
        &ip(4).to_string(),
        "lladdr",
        "02:aa:bb:cc:dd:ee",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let changed = ns.run(move |nl| Box::pin(async move { nl.lookup_neighbours(eth0, &[ip(4)]) }));
    let (found, no_device) = found;
    let found = found.expect("lookups");
    assert_eq!(found.len(), count as usize / 2);
    for (k, e) in found.iter().enumerate() {
        assert_eq!(e.ip, ip(2 * k as u32));
        assert_eq!(e.mac, Some(MAC));
        assert!(e.permanent);
    }
    let changed = changed.expect("lookup");
    assert_eq!(changed.len(), 1);
    assert_eq!(
        changed[0].mac,
        Some(MacAddr([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]))
    );
    // A device that does not exist is an error, not "no entries".
    let e = no_device.expect_err("no such device");
    assert!(
        e.to_string().contains("get neighbour 10.99.0.0 on #99999"),
        "{e}"
    );
}

/// Dual-stack node `n` of [`dual_stack_carries_ipv6_beside_ipv4_like_flanneld`]: PublicIP
/// 192.0.2.n, PublicIPv6 fd00:192::n, subnets 10.244.n.0/24 and fd00:10:244:n::/64,
/// VtepMACs 02:..:0n and 06:..:0n.
fn node6(n: u8) -> Peer {
    Peer {
        ipv6: Some(PeerIpv6 {
            subnet: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            public_ipv6: format!("fd00:192::{n}").parse().unwrap(),
            vtep_mac: MacAddr([0x06, 0, 0, 0, 0, n]),
        }),
        ..peer(n, n, n)
    }
}

fn setup6(index: u32, me: &Peer) -> DataplaneSetup {
    let v6 = me.ipv6.unwrap();
    let mut s = setup(index);
    s.local.vtep_mac = me.vtep_mac;
    s.local_ip = me.public_ip;
    s.ipv6 = Some(Setup6 {
        local_ip: v6.public_ipv6,
        vtep_mac: v6.vtep_mac,
        network: "fd00:10:244::/56".parse().unwrap(),
        subnet_len: 64,
        in_threads: false,
    });
    s
}

/// `ip -6 route show dev <dev>` as "<dst> <gateway>", the kernel's own routes left out.
fn routes6(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.json("ip", &["-6", "route", "show", "dev", dev]).unwrap();
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] != "kernel")
        .map(|r| {
            format!(
                "{} {}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap_or("-")
            )
        })
        .collect();
    out.sort();
    out
}

/// Starts node `me` of the dual-stack pair in `ns` with `peer` programmed, both
/// device addresses set as the agent sets them; stops, leaving the devices.
fn start_dual_stack(ns: &Ns, me: Peer, peer: Peer) {
    let s = setup6(eth0_index(ns), &me);
    ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let k = Kernel::start(&nl, &s, &st).await.unwrap();
            let d6 = k
                .device6()
                .expect("a dual-stack setup makes the IPv6 device");
            assert_eq!(d6.name.as_str(), "flannel-v6.1");
            nl.set_only_address(k.device_index(), me.subnet.addr(), 32)
                .await
                .unwrap();
            let v6: Ipv6Addr = me.ipv6.unwrap().subnet.addr();
            // twice: idempotent
            for _ in 0..2 {
                nl.set_only_address6(d6.index, v6, 128).await.unwrap();
                k.add_peer(&nl, &peer).await.unwrap();
            }
            k.stop();
        })
    });
}

/// The userspace dataplane with its threads carrying IPv6 (`--ipv6-dataplane
/// userspace`, decision 0034), on a jumbo underlay (MTU 9000: overlay 8950, IPv6 8930):
/// it starts (the TAP's IPv6 MTU set only once the TAP has its own, which the kernel
/// requires: the first build wrote it before and failed with EINVAL), deletes a
/// `flannel-v6.1` an earlier run left, holds the IPv6 VXLAN port, and programs the
/// peer's IPv6 half on the TAP as flannel-v6 would be programmed, without fdb entries.
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn the_threads_carry_ipv6_on_the_tap_over_a_jumbo_underlay() {
    require_root();
    let a = Netns::unique("kd-t6a").unwrap();
    let b = Netns::unique("kd-t6b").unwrap();
    vxmesh_testkit::netns::veth(&a, "eth0", "192.0.2.2/24", &b, "eth0", "192.0.2.3/24").unwrap();
    for (ns, ip) in [(&a, "fd00:192::2/64"), (&b, "fd00:192::3/64")] {
        ns.add_ipv6(ip, "eth0").unwrap();
        ns.ip(&["link", "set", "eth0", "mtu", "9000"]).unwrap();
    }
    let (me, peer) = (node6(2), node6(3));
    let ns = Ns(a);
    // A flannel-v6.1 an earlier run left (the kernel dataplane's, or flanneld's).
    start_dual_stack(&ns, me, peer);
    let mut s = setup6(eth0_index(&ns), &me);
    s.mtu = 8950;
    if let Some(v6) = s.ipv6.as_mut() {
        v6.in_threads = true;
    }
    s.local.v6 = Some(vxmesh_dataplane::fib::LocalVtep6 {
        vtep_mac: me.ipv6.unwrap().vtep_mac,
        inner: None,
    });
    let v6 = me.ipv6.unwrap().subnet;
    let out = ns.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let (dp, _) =
                NodeDataplane::start(DataplaneKind::Userspace, &nl, &s, &st, Duration::ZERO)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
            let carried = dp.ipv6_in_threads() && dp.carries_ipv6() && dp.device6_index().is_none();
            let set = dp.set_subnet6(&nl, &v6).await.map_err(|e| e.to_string())?;
            dp.add_peer(&nl, &peer).await.map_err(|e| e.to_string())?;
            dp.discard();
            Ok::<_, String>((carried, set))
        })
    });
    assert_eq!(out, Ok((true, true)));
    let a = &ns.0;
    let links = a.ip(&["-br", "link"]).unwrap();
    assert!(!links.contains("flannel-v6"), "{links}");
    let tap = ns.link("vxmesh0");
    assert_eq!(tap["mtu"], 8950, "{tap}");
    let mtu6 = a
        .exec("cat", &["/proc/sys/net/ipv6/conf/vxmesh0/mtu"])
        .unwrap();
    assert_eq!(mtu6.trim(), "8930");
    assert_eq!(ns.neigh("vxmesh0").len(), 2, "{:?}", ns.neigh("vxmesh0"));
    assert!(ns
        .neigh("vxmesh0")
        .contains(&"fd00:10:244:3:: 06:00:00:00:00:03".to_string()));
    assert_eq!(
        routes6(a, "vxmesh0"),
        ["fd00:10:244:3::/64 fd00:10:244:3::"]
    );
    assert!(ns.fdb("vxmesh0").is_empty(), "{:?}", ns.fdb("vxmesh0"));
    let addrs = a
        .json(
            "ip",
            &["-6", "addr", "show", "dev", "vxmesh0", "scope", "global"],
        )
        .unwrap();
    assert_eq!(
        addrs[0]["addr_info"][0]["local"], "fd00:10:244:2::",
        "{addrs}"
    );
    a.ip(&["link", "del", "vxmesh0"]).unwrap();
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn dual_stack_carries_ipv6_beside_ipv4_like_flanneld() {
    require_root();
    let a = Netns::unique("kd-v6a").unwrap();
    let b = Netns::unique("kd-v6b").unwrap();
    vxmesh_testkit::netns::veth(&a, "eth0", "192.0.2.2/24", &b, "eth0", "192.0.2.3/24").unwrap();
    for (ns, ip) in [(&a, "fd00:192::2/64"), (&b, "fd00:192::3/64")] {
        ns.add_ipv6(ip, "eth0").unwrap();
    }
    let (na, nb) = (node6(2), node6(3));
    let (ns_a, ns_b) = (Ns(a), Ns(b));
    start_dual_stack(&ns_a, na, nb);
    start_dual_stack(&ns_b, nb, na);
    let a = &ns_a.0;

    // flanneld's IPv6 device: VXLAN over IPv6 from the PublicIPv6, same VNI and port,
    // no learning, the IPv6 VtepMAC, 20 bytes less MTU than the IPv4 device.
    let link = a
        .json("ip", &["-d", "link", "show", "flannel-v6.1"])
        .unwrap()[0]
        .clone();
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["learning"], false);
    assert_eq!(info["local6"], "fd00:192::2", "{info}");
    assert_eq!(link["address"], "06:00:00:00:00:02");
    assert_eq!(link["mtu"], 1430);
    let addrs = a
        .json(
            "ip",
            &[
                "-6",
                "addr",
                "show",
                "dev",
                "flannel-v6.1",
                "scope",
                "global",
            ],
        )
        .unwrap();
    let local: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| Some(format!("{}/{}", x["local"].as_str()?, x["prefixlen"])))
        .collect();
    assert_eq!(local, ["fd00:10:244:2::/128"]);
    // Per peer, as flanneld: neighbour, fdb entry, onlink route via the first address.
    assert_eq!(ns_a.fdb("flannel-v6.1"), ["06:00:00:00:00:03 fd00:192::3"]);
    assert_eq!(
        ns_a.neigh("flannel-v6.1"),
        ["fd00:10:244:3:: 06:00:00:00:00:03"]
    );
    assert_eq!(
        routes6(a, "flannel-v6.1"),
        ["fd00:10:244:3::/64 fd00:10:244:3::"]
    );
    assert_eq!(ns_a.fdb("flannel.1"), ["02:00:00:00:00:03 192.0.2.3"]);

    // Both families cross: A's device addresses to B's.
    for (from, to) in [
        ("fd00:10:244:2::", "fd00:10:244:3::"),
        ("10.244.2.0", "10.244.3.0"),
    ] {
        let ok = vxmesh_testkit::wait_for(Duration::from_secs(10), || {
            a.exec("ping", &["-c", "1", "-W", "1", "-I", from, to])
                .is_ok()
        });
        assert!(
            ok.is_some(),
            "ping {from} -> {to} over the kernel dataplane"
        );
    }

    // A restarted agent adopts the IPv6 device; B's IPv6 VtepMAC changes (make
    // before break: the old fdb entry goes), then B's lease loses its IPv6 half and
    // a prune removes every IPv6 entry, the IPv4 ones staying.
    let index = a.json("ip", &["link", "show", "eth0"]).unwrap()[0]["ifindex"]
        .as_u64()
        .unwrap() as u32;
    let s = setup6(index, &na);
    let mut nb2 = nb;
    nb2.ipv6 = nb.ipv6.map(|v| PeerIpv6 {
        vtep_mac: MacAddr([0x06, 0, 0, 0, 0, 0x33]),
        ..v
    });
    let v4_only = Peer { ipv6: None, ..nb };
    let (fdb_after_update, removed) = ns_a.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let k = Kernel::start(&nl, &s, &st).await.unwrap();
            k.add_peer(&nl, &nb).await.unwrap();
            k.update_peer(&nl, &nb, &nb2).await.unwrap();
            let fdb = nl.fdb_entries6(k.device6().unwrap().index).await.unwrap();
            let n = k.prune(&nl, &[v4_only]).await.unwrap();
            assert_eq!(k.prune(&nl, &[v4_only]).await.unwrap(), 0);
            (fdb, n)
        })
    });
    let fdb: Vec<String> = fdb_after_update
        .iter()
        .filter_map(|e| Some(format!("{} {}", e.mac, e.dst?)))
        .collect();
    assert_eq!(fdb, ["06:00:00:00:00:33 fd00:192::3"]);
    assert_eq!(removed, 3, "IPv6 route, fdb entry and neighbour of B");
    assert!(ns_a.fdb("flannel-v6.1").is_empty());
    assert!(ns_a.neigh("flannel-v6.1").is_empty());
    assert!(routes6(a, "flannel-v6.1").is_empty());
    assert_eq!(ns_a.fdb("flannel.1"), ["02:00:00:00:00:03 192.0.2.3"]);
    assert_eq!(ns_a.routes("flannel.1"), ["10.244.3.0/24 10.244.3.0"]);

    // The config no longer dual stack: B's agent starts without the IPv6 device and
    // removes the one left (nothing would program it). The userspace dataplane's
    // start removes the IPv4 device (it needs the port) and leaves the IPv6 one (its
    // socket is IPv6-only; a dual-stack userspace node runs it, another one deletes it).
    let index_b = eth0_index(&ns_b);
    let s = setup(index_b);
    ns_b.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let k = Kernel::start(&nl, &s, &st).await.unwrap();
            assert!(k.device6().is_none());
        })
    });
    let names = |ns: &Ns| -> Vec<String> {
        ns.json("ip", &["link", "show", "type", "vxlan"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&ns_b), ["flannel.1"]);
    ns_a.run(|nl| Box::pin(async move { remove_leftover_device(&nl, 1, 8472).await.unwrap() }));
    assert_eq!(names(&ns_a), ["flannel-v6.1"]);
}

fn v6_only_peer(n: u8) -> PeerIpv6 {
    PeerIpv6 {
        subnet: format!("fd00:10:244:{n}::/64").parse().unwrap(),
        public_ipv6: format!("fd00:192::{n}").parse().unwrap(),
        vtep_mac: MacAddr([0x06, 0, 0, 0, 0, n]),
    }
}

/// flannel's IPv6-only leases of the nodes in `peers`.
fn entries6(peers: &[PeerIpv6]) -> Vec<Entry> {
    peers
        .iter()
        .zip(1..)
        .map(|(p, rev)| Entry {
            key: format!(
                "/coreos.com/network/subnets/{}",
                vxmesh_control::lease::LeaseKey::ipv6_only(p.subnet).key_form()
            ),
            value: format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                p.public_ipv6, p.vtep_mac
            )
            .into_bytes(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        })
        .collect()
}

/// The IPv6-only table of the nodes in `peers`.
fn table6(peers: &[PeerIpv6]) -> PeerTable<PeerIpv6> {
    let rules = Ipv6OnlyRules {
        ipv6: Ipv6Rules {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet_len: 64,
        },
        vni: 1,
    };
    let mut t = PeerTable::ipv6_only(rules, None);
    let mut skips = Vec::new();
    let _ = t.reset(&entries6(peers), &mut skips);
    assert!(skips.is_empty(), "{skips:?}");
    t
}

fn setup_v6_only(ns: &Ns, me: PeerIpv6) -> Ipv6OnlySetup {
    Ipv6OnlySetup {
        place: Place {
            vni: 1,
            port: 8472,
            underlay_index: eth0_index(ns),
        },
        mtu: 1450,
        v6: Setup6 {
            local_ip: me.public_ipv6,
            vtep_mac: me.vtep_mac,
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet_len: 64,
            in_threads: false,
        },
        tap_name: IfName::new("vxmesh0").unwrap(),
        direct_routing: false,
    }
}

/// An IPv6-only node: `flannel-v6.<VNI>` alone, over an underlay with no IPv4 at all.
/// A `flannel.<VNI>` left by an earlier dual-stack or IPv4 run is deleted (nothing
/// would program it); peers are programmed from the IPv6-only table's changes as
/// flanneld programs IPv6 halves; pods' IPv6 crosses; a changed VtepMAC leaves no
/// stale fdb entry; a reconcile puts back what was deleted by hand and prunes a
/// peer that left; a restart adopts the device; a changed device MAC is put back.
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn ipv6_only_node_runs_flannels_ipv6_device_alone() {
    require_root();
    let a = Netns::unique("kd-6oa").unwrap();
    let b = Netns::unique("kd-6ob").unwrap();
    a.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ])
    .unwrap();
    for (ns, ip) in [(&a, "fd00:192::2/64"), (&b, "fd00:192::3/64")] {
        ns.add_ipv6(ip, "eth0").unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    }
    let (ns_a, ns_b) = (Ns(a), Ns(b));
    // What an earlier IPv4 run of node A left.
    let s4 = setup(eth0_index(&ns_a));
    ns_a.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            Kernel::start(&nl, &s4, &st).await.unwrap().stop();
        })
    });
    let (pa, pb) = (v6_only_peer(2), v6_only_peer(3));
    for (ns, me, peer) in [(&ns_a, pa, pb), (&ns_b, pb, pa)] {
        let s = setup_v6_only(ns, me);
        ns.run(move |nl| {
            Box::pin(async move {
                let st = Arc::new(AgentState::default());
                let dp = Ipv6OnlyDataplane::start(&nl, &s, &st).await.unwrap();
                assert_eq!(dp.device().name.as_str(), "flannel-v6.1");
                dp.set_subnet6(&nl, &me.subnet).await.unwrap();
                let mut t = table6(&[]);
                let changes = t.reset(&entries6(&[peer]), &mut Vec::new());
                assert_eq!(changes.len(), 1);
                assert!(dp.program(&nl, &changes).is_empty());
                // A reconcile right after finds nothing to do.
                let r = dp.reconcile(&nl, &t).await.unwrap();
                assert_eq!((r.repaired, r.removed), (0, 0), "{r:?}");
                dp.stop();
            })
        });
    }
    let a = &ns_a.0;
    let names = |ns: &Ns| -> Vec<String> {
        ns.json("ip", &["link", "show", "type", "vxlan"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&ns_a), ["flannel-v6.1"], "flannel.1 deleted");
    let link = ns_a.link("flannel-v6.1");
    assert_eq!(link["linkinfo"]["info_data"]["local6"], "fd00:192::2");
    assert_eq!(link["address"], "06:00:00:00:00:02");
    assert_eq!(link["mtu"], 1430);
    assert_eq!(ns_a.fdb("flannel-v6.1"), ["06:00:00:00:00:03 fd00:192::3"]);
    assert_eq!(
        ns_a.neigh("flannel-v6.1"),
        ["fd00:10:244:3:: 06:00:00:00:00:03"]
    );
    assert_eq!(
        routes6(a, "flannel-v6.1"),
        ["fd00:10:244:3::/64 fd00:10:244:3::"]
    );
    let ok = vxmesh_testkit::wait_for(Duration::from_secs(10), || {
        a.exec(
            "ping",
            &[
                "-6",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                "fd00:10:244:2::",
                "fd00:10:244:3::",
            ],
        )
        .is_ok()
    });
    assert!(
        ok.is_some(),
        "ping fd00:10:244:2:: -> fd00:10:244:3:: over flannel-v6.1"
    );

    // A restart adopts the device; B's VtepMAC changes (make before break); the
    // route deleted by hand is put back by a reconcile; then B leaves and a
    // reconcile with no peers prunes everything.
    a.ip(&[
        "-6",
        "route",
        "del",
        "fd00:10:244:3::/64",
        "dev",
        "flannel-v6.1",
    ])
    .unwrap();
    let s = setup_v6_only(&ns_a, pa);
    let (fdb, repaired, removed) = ns_a.run(move |nl| {
        Box::pin(async move {
            let st = Arc::new(AgentState::default());
            let dp = Ipv6OnlyDataplane::start(&nl, &s, &st).await.unwrap();
            let t = table6(&[pb]);
            let r = dp.reconcile(&nl, &t).await.unwrap();
            // Someone changes the device's MAC: it is put back (the change flushed the
            // neighbours; the agent then reconciles).
            let index = dp.device().index;
            nl.configure_link(index, MacAddr([0x06, 0, 0, 0, 0, 0x77]), 1430)
                .await
                .unwrap();
            assert_eq!(dp.ensure_vtep_mac(&nl).await.unwrap(), Some(true));
            assert_eq!(dp.ensure_vtep_mac(&nl).await.unwrap(), Some(false));
            let mac = nl.link_by_index(index).await.unwrap().unwrap().mac;
            assert_eq!(mac, Some(pa.vtep_mac));
            let again = dp.reconcile(&nl, &t).await.unwrap();
            assert!(again.repaired >= 1, "the flushed neighbour: {again:?}");
            let pb2 = PeerIpv6 {
                vtep_mac: MacAddr([0x06, 0, 0, 0, 0, 0x33]),
                ..pb
            };
            let failed = dp.program(&nl, &[PeerChange::Updated { old: pb, new: pb2 }]);
            assert!(failed.is_empty(), "{failed:?}");
            let fdb = nl.fdb_entries6(dp.device().index).await.unwrap();
            let gone = dp.reconcile(&nl, &table6(&[])).await.unwrap();
            (fdb, r.repaired, gone.removed)
        })
    });
    let fdb: Vec<String> = fdb
        .iter()
        .filter_map(|e| Some(format!("{} {}", e.mac, e.dst?)))
        .collect();
    assert_eq!(repaired, 1, "the route deleted by hand");
    assert_eq!(fdb, ["06:00:00:00:00:33 fd00:192::3"]);
    assert_eq!(removed, 3, "B's route, fdb entry and neighbour");
    assert!(ns_a.fdb("flannel-v6.1").is_empty());
    assert!(ns_a.neigh("flannel-v6.1").is_empty());
    assert!(routes6(a, "flannel-v6.1").is_empty());
}

/// The link watch announces a deletion in its own namespace — `ip link del`, with
/// the link's index and name — and not a link that was only added; and an address
/// added.
#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn a_deleted_link_is_announced_by_the_link_watch() {
    use vxmesh_control::netlink::LinkNews;
    require_root();
    let ns = Ns::new("lwatch");
    let (index, got) = ns.run(move |_nl| {
        Box::pin(async move {
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args:?}: {out:?}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let (mut rx, task) = vxmesh_control::netlink::watch_link_deletions().unwrap();
            ip(&["link", "add", "vxw0", "type", "bridge"]);
            ip(&["link", "add", "vxw1", "type", "bridge"]);
            let shown: Value = serde_json::from_str(&ip(&["-j", "link", "show", "vxw0"])).unwrap();
            let index = shown[0]["ifindex"].as_u64().unwrap() as u32;
            ip(&["link", "del", "vxw0"]);
            let got = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match rx.recv().await {
                        Some(LinkNews::Addresses) => continue,
                        other => return other,
                    }
                }
            })
            .await;
            let got = got.expect("no announcement within 5 s").unwrap();
            // An address added (the underlay's may have moved): announced too.
            ip(&["addr", "add", "10.99.0.1/24", "dev", "vxw1"]);
            let addr = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
            assert_eq!(
                addr.expect("no address announcement within 5 s"),
                Some(LinkNews::Addresses)
            );
            // More announcements than the socket holds while nobody reads (this
            // thread runs the watch and is busy): the loss is reported.
            let batch: String = (0..200)
                .map(|i| format!("link add vxf{i} type bridge\nlink del vxf{i}\n"))
                .collect();
            let path = std::env::temp_dir().join(format!("vxmesh-lwatch-{}", std::process::id()));
            std::fs::write(&path, batch).unwrap();
            ip(&["-batch", path.to_str().unwrap()]);
            let _ = std::fs::remove_file(&path);
            let lost = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(n) = rx.recv().await {
                    if n == LinkNews::Lost {
                        return true;
                    }
                }
                false
            })
            .await;
            task.abort();
            assert_eq!(
                lost,
                Ok(true),
                "no loss reported after 400 unread announcements"
            );
            (index, got)
        })
    });
    let LinkNews::Deleted(got) = got else {
        panic!("{got:?}")
    };
    assert_eq!(got.index, index);
    assert_eq!(got.name, "vxw0");
}
