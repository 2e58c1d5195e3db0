//! The masquerade/forward rules in both backends, in network namespaces: nftables
//! (`EnableNFTables`) rules applied with `nft -f`, kept in place like the iptables ones
//! (a flushed chain, a deleted table, a foreign rule are each restored), switching
//! between the backends removes the other's rules, and the nftables rule set
//! masquerades pod traffic leaving the Network but not pod-to-pod traffic; the
//! `--vxlan-notrack` rules keep the outer VXLAN packets out of conntrack in both backends,
//! are restored and removed like the others; the IPv6 rules (dual stack) in both backends.
//! Needs root, `nft` and `iptables`: ignored by a plain `cargo test`, run by
//! scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use vxmesh_control::masq::{self, Backend, Ensured, Rules, Snapshot, Untrack};
use vxmesh_control::subnet::Subnet;
use vxmesh_control::subnet6::Subnet6;
use vxmesh_testkit::{require_commands, require_root, veth, Netns};

const NFT: Rules = Rules {
    masquerade: true,
    random_fully: true,
    forward: true,
    untrack: None,
    underlay_tap: None,
    backend: Backend::Nftables,
};
const IPT: Rules = Rules {
    backend: Backend::Iptables,
    ..NFT
};

fn net() -> (Subnet, Subnet) {
    (
        "10.244.0.0/16".parse().unwrap(),
        "10.244.3.0/24".parse().unwrap(),
    )
}

fn require() {
    require_root();
    require_commands(&["nft", "iptables", "iptables-save", "iptables-restore"]);
}

/// Runs one `ensure` call inside `ns`, carrying the snapshot in and out.
fn ensure_in_ns<S: Send + 'static>(
    ns: &Netns,
    last: &mut Option<Snapshot<S>>,
    f: impl FnOnce(&mut Option<Snapshot<S>>) -> Result<Ensured, masq::MasqError> + Send + 'static,
) -> Ensured {
    let mut snap = last.take();
    let (r, snap) = ns
        .run(move || {
            let r = f(&mut snap);
            (r, snap)
        })
        .unwrap();
    *last = snap;
    r.unwrap()
}

/// `ensure` inside `ns`.
fn ensure(ns: &Netns, rules: Rules, last: &mut Option<Snapshot>) -> Ensured {
    let (n, own) = net();
    ensure_in_ns(ns, last, move |s| masq::ensure(&n, &own, rules, s))
}

fn net6() -> (Subnet6, Subnet6) {
    (
        "fd00:10:244::/56".parse().unwrap(),
        "fd00:10:244:3::/64".parse().unwrap(),
    )
}

/// `ensure6` inside `ns`, for [`net6`].
fn ensure6(ns: &Netns, rules: Rules, last: &mut Option<Snapshot<Subnet6>>) -> Ensured {
    let (n6, own6) = net6();
    ensure_in_ns(ns, last, move |s| masq::ensure6(&n6, &own6, rules, s))
}

fn nft_tables(ns: &Netns) -> String {
    ns.exec("nft", &["list", "tables"]).unwrap()
}

fn iptables_save(ns: &Netns) -> String {
    ns.exec("iptables-save", &[]).unwrap()
}

#[test]
#[ignore = "needs root, network namespaces, nft and iptables: scripts/test.sh runs it"]
fn nftables_rules_are_kept_in_place() {
    require();
    let ns = Netns::unique("masq-nft").unwrap();
    let mut last = None;
    assert_eq!(ensure(&ns, NFT, &mut last), Ensured::Applied);
    // What nft prints is what we wrote, after the add/delete preamble.
    let (n, own) = net();
    let written = masq::nft_ours(&masq::nft_input(&n, &own, NFT));
    assert_eq!(last.as_ref().unwrap().lines, written[3..]);
    assert_eq!(ensure(&ns, NFT, &mut last), Ensured::Intact);

    ns.exec("nft", &["flush", "chain", "ip", "vxmesh", "postrtg"])
        .unwrap();
    assert_eq!(
        ensure(&ns, NFT, &mut last),
        Ensured::Restored {
            missing: 5,
            extra: 0
        }
    );
    ns.exec("nft", &["delete", "table", "ip", "vxmesh"])
        .unwrap();
    assert_eq!(
        ensure(&ns, NFT, &mut last),
        Ensured::Restored {
            missing: 15,
            extra: 0
        }
    );
    ns.exec(
        "nft",
        &[
            "add", "rule", "ip", "vxmesh", "forward", "ip", "saddr", "1.2.3.4", "drop",
        ],
    )
    .unwrap();
    assert_eq!(
        ensure(&ns, NFT, &mut last),
        Ensured::Restored {
            missing: 0,
            extra: 1
        }
    );
    let listed = ns.exec("nft", &["list", "table", "ip", "vxmesh"]).unwrap();
    assert!(!listed.contains("1.2.3.4"), "{listed}");
    assert_eq!(ensure(&ns, NFT, &mut last), Ensured::Intact);

    // `nft flush ruleset` (a firewall reload) is restored too.
    ns.exec("nft", &["flush", "ruleset"]).unwrap();
    assert!(matches!(
        ensure(&ns, NFT, &mut last),
        Ensured::Restored { missing: 15, .. }
    ));

    // A part switched off goes with the table's replacement.
    let fwd_only = Rules {
        masquerade: false,
        ..NFT
    };
    let mut fresh = None;
    assert_eq!(ensure(&ns, fwd_only, &mut fresh), Ensured::Applied);
    let listed = ns.exec("nft", &["list", "table", "ip", "vxmesh"]).unwrap();
    assert!(
        !listed.contains("postrtg") && listed.contains("chain forward"),
        "{listed}"
    );
}

#[test]
#[ignore = "needs root, network namespaces, nft and iptables: scripts/test.sh runs it"]
fn switching_backends_removes_the_other_ones_rules() {
    require();
    let ns = Netns::unique("masq-switch").unwrap();
    let mut last = None;
    assert_eq!(ensure(&ns, IPT, &mut last), Ensured::Applied);
    let saved = iptables_save(&ns);
    assert!(
        saved.contains(":VXMESH-POSTRTG") && saved.contains(":VXMESH-FWD"),
        "{saved}"
    );
    assert!(!nft_tables(&ns).contains("table ip vxmesh"));

    // The network config now says EnableNFTables (a restart with the new config).
    let mut last = None;
    assert_eq!(ensure(&ns, NFT, &mut last), Ensured::Applied);
    let saved = iptables_save(&ns);
    assert!(
        !saved.contains("VXMESH"),
        "iptables chains removed: {saved}"
    );
    assert!(nft_tables(&ns).contains("table ip vxmesh"));

    // And back.
    let mut last = None;
    assert_eq!(ensure(&ns, IPT, &mut last), Ensured::Applied);
    assert!(
        !nft_tables(&ns).contains("table ip vxmesh"),
        "nftables table removed"
    );
    assert!(iptables_save(&ns).contains(":VXMESH-POSTRTG"));

    // cleanup-iptables removes both backends' rules.
    ns.run(|| {
        masq::apply(&net().0, &net().1, NFT).unwrap();
        masq::apply(&net().0, &net().1, IPT).unwrap();
        masq::remove().unwrap();
    })
    .unwrap();
    assert!(!iptables_save(&ns).contains("VXMESH"));
    assert!(!nft_tables(&ns).contains("table ip vxmesh"));
    // Removing again is fine (nothing there).
    ns.run(|| masq::remove().unwrap()).unwrap();
}

/// A restart with every part off (`--ip-masq=false --iptables-forward-rules=false`,
/// no `--vxlan-notrack`: what masq.rs advises where iptables is missing) removes what
/// the earlier run left, from either backend and for either family, as a part turned
/// off alone is removed: masquerading the operator turned off must not go on.
#[test]
#[ignore = "needs root, network namespaces, nft and iptables: scripts/test.sh runs it"]
fn every_part_off_removes_what_an_earlier_run_left() {
    require();
    let ns = Netns::unique("masq-off").unwrap();
    let off = |backend| Rules {
        masquerade: false,
        forward: false,
        untrack: None,
        backend,
        ..NFT
    };
    for (on, off) in [(IPT, off(Backend::Iptables)), (NFT, off(Backend::Nftables))] {
        ns.run(move || {
            masq::apply(&net().0, &net().1, on).unwrap();
            masq::apply6(&net6().0, &net6().1, on).unwrap();
        })
        .unwrap();
        let before = format!("{}{}", iptables_save(&ns), nft_tables(&ns));
        assert!(
            before.contains("VXMESH") || before.contains("table ip vxmesh"),
            "{before}"
        );
        ns.run(move || {
            masq::apply(&net().0, &net().1, off).unwrap();
            masq::apply6(&net6().0, &net6().1, off).unwrap();
        })
        .unwrap();
        let saved = iptables_save(&ns);
        assert!(
            !saved.contains("VXMESH"),
            "{:?} all off: {saved}",
            on.backend
        );
        let saved6 = ns.exec("ip6tables-save", &[]).unwrap();
        assert!(
            !saved6.contains("VXMESH"),
            "{:?} all off: {saved6}",
            on.backend
        );
        let tables = nft_tables(&ns);
        assert!(
            !tables.contains("table ip vxmesh") && !tables.contains("table ip6 vxmesh"),
            "{:?} all off: {tables}",
            on.backend
        );
    }
}

/// Sends one datagram from `from` to `to` and returns the source address `to` saw.
fn seen_source(from_ns: &Netns, from: Ipv4Addr, to_ns: &Netns, to: Ipv4Addr) -> Ipv4Addr {
    let rx = to_ns
        .run(move || {
            let s = UdpSocket::bind((to, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    from_ns
        .run(move || {
            let s = UdpSocket::bind((from, 0)).unwrap();
            s.send_to(b"vxmesh masq test", (to, port)).unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 64];
    let (len, peer) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"vxmesh masq test");
    match peer {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(a) => panic!("unexpected {a}"),
    }
}

#[test]
#[ignore = "needs root, network namespaces, nft and iptables: scripts/test.sh runs it"]
fn nftables_masquerades_only_traffic_leaving_the_network() {
    require();
    // pod (10.244.3.2) — node (10.244.3.1 | 192.168.77.1) — outside (192.168.77.2, and
    // 10.244.5.9 standing in for another node's pod, routed through it).
    let pod = Netns::unique("masq-pod").unwrap();
    let node = Netns::unique("masq-node").unwrap();
    let outside = Netns::unique("masq-out").unwrap();
    veth(
        &pod,
        "eth0",
        "10.244.3.2/24",
        &node,
        "vpod",
        "10.244.3.1/24",
    )
    .unwrap();
    veth(
        &node,
        "vout",
        "192.168.77.1/24",
        &outside,
        "eth0",
        "192.168.77.2/24",
    )
    .unwrap();
    pod.ip(&["route", "add", "default", "via", "10.244.3.1"])
        .unwrap();
    outside
        .ip(&["addr", "add", "10.244.5.9/32", "dev", "eth0"])
        .unwrap();
    outside
        .ip(&["route", "add", "10.244.3.0/24", "via", "192.168.77.1"])
        .unwrap();
    node.ip(&["route", "add", "10.244.5.0/24", "via", "192.168.77.2"])
        .unwrap();
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();

    let pod_ip: Ipv4Addr = "10.244.3.2".parse().unwrap();
    let out_ip: Ipv4Addr = "192.168.77.2".parse().unwrap();
    let other_pod: Ipv4Addr = "10.244.5.9".parse().unwrap();
    // Without rules nothing is rewritten.
    assert_eq!(seen_source(&pod, pod_ip, &outside, out_ip), pod_ip);

    let mut last = None;
    assert_eq!(ensure(&node, NFT, &mut last), Ensured::Applied);
    assert_eq!(
        seen_source(&pod, pod_ip, &outside, out_ip),
        "192.168.77.1".parse::<Ipv4Addr>().unwrap(),
        "pod traffic leaving the Network is masqueraded behind the node"
    );
    assert_eq!(
        seen_source(&pod, pod_ip, &outside, other_pod),
        pod_ip,
        "pod-to-pod traffic inside the Network keeps its source"
    );
}

/// The connections conntrack holds in `ns` now.
fn tracked(ns: &Netns) -> u64 {
    ns.run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Sends one datagram from `from` (any port) to `to:port` and waits until it arrived.
fn send(from_ns: &Netns, from: impl Into<IpAddr>, to_ns: &Netns, to: impl Into<IpAddr>, port: u16) {
    let (from, to) = (from.into(), to.into());
    let rx = to_ns
        .run(move || {
            let s = UdpSocket::bind((to, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        })
        .unwrap();
    from_ns
        .run(move || {
            UdpSocket::bind((from, 0))
                .unwrap()
                .send_to(b"vxmesh notrack test", (to, port))
                .unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(rx.recv(&mut buf).unwrap(), 19);
}

#[test]
#[ignore = "needs root, network namespaces, nft and iptables: scripts/test.sh runs it"]
fn vxlan_notrack_leaves_only_the_outer_vxlan_untracked() {
    require();
    // node (192.168.78.1, the rules) — peer (192.168.78.2)
    let node = Netns::unique("masq-ntn").unwrap();
    let peer = Netns::unique("masq-ntp").unwrap();
    veth(
        &node,
        "eth0",
        "192.168.78.1/24",
        &peer,
        "eth0",
        "192.168.78.2/24",
    )
    .unwrap();
    let (me, them): (Ipv4Addr, Ipv4Addr) = (
        "192.168.78.1".parse().unwrap(),
        "192.168.78.2".parse().unwrap(),
    );
    let untrack = Some(Untrack {
        local_ip: Some(me),
        local_ipv6: None,
        port: 8472,
    });
    for backend in [Backend::Iptables, Backend::Nftables] {
        let rules = Rules {
            untrack,
            backend,
            ..NFT
        };
        let mut last = None;
        assert_eq!(ensure(&node, rules, &mut last), Ensured::Applied);
        // The nat rules make the kernel track; VXLAN both ways is not tracked ...
        let before = tracked(&node);
        send(&peer, them, &node, me, 8472);
        send(&node, me, &peer, them, 8472);
        assert_eq!(tracked(&node), before, "{backend:?}: VXLAN was tracked");
        // ... other UDP still is, both ways.
        send(&peer, them, &node, me, 8473);
        send(&node, me, &peer, them, 8474);
        assert_eq!(
            tracked(&node),
            before + 2,
            "{backend:?}: other UDP untracked"
        );
        // A deleted hook is put back by the resync.
        match backend {
            Backend::Iptables => node
                .exec(
                    "iptables",
                    &[
                        "-w",
                        "-t",
                        "raw",
                        "-D",
                        "OUTPUT",
                        "-m",
                        "comment",
                        "--comment",
                        "vxmesh",
                        "-j",
                        "VXMESH-NOTRACK",
                    ],
                )
                .unwrap(),
            Backend::Nftables => node
                .exec("nft", &["delete", "chain", "ip", "vxmesh", "notrack_out"])
                .unwrap(),
        };
        assert!(matches!(
            ensure(&node, rules, &mut last),
            Ensured::Restored { extra: 0, .. }
        ));
        let before = tracked(&node);
        send(&node, me, &peer, them, 8472);
        assert_eq!(
            tracked(&node),
            before,
            "{backend:?}: restored hook not in force"
        );
    }
    // The nftables table holds the chains; switching back to iptables removes them, and
    // turning the flag off removes the raw part.
    let ipt = Rules { untrack, ..IPT };
    let mut last = None;
    assert_eq!(ensure(&node, ipt, &mut last), Ensured::Applied);
    assert!(!nft_tables(&node).contains("table ip vxmesh"));
    assert!(iptables_save(&node).contains(":VXMESH-NOTRACK"));
    let mut last = None;
    assert_eq!(ensure(&node, IPT, &mut last), Ensured::Applied);
    let saved = iptables_save(&node);
    assert!(!saved.contains("VXMESH-NOTRACK"), "{saved}");
    // cleanup-iptables removes them too.
    node.run(move || masq::apply(&net().0, &net().1, ipt).unwrap())
        .unwrap();
    node.run(|| masq::remove().unwrap()).unwrap();
    let saved = iptables_save(&node);
    assert!(!saved.contains("VXMESH"), "{saved}");
}

/// The IPv6 rules (dual stack on the kernel dataplane), in both backends: `nft -f` takes
/// `table ip6 vxmesh` and prints back what was written; ip6tables gets the same chains;
/// both are restored after a flush, a switch of backend removes the other's, and
/// cleanup removes both families.
#[test]
#[ignore = "needs root, network namespaces, nft and ip6tables: scripts/test.sh runs it"]
fn ipv6_rules_in_both_backends() {
    require();
    require_commands(&["ip6tables", "ip6tables-save", "ip6tables-restore"]);
    let ns = Netns::unique("masq-v6").unwrap();
    let (n6, own6) = net6();
    let mut last = None;
    assert_eq!(ensure6(&ns, NFT, &mut last), Ensured::Applied);
    let written = masq::nft_ours(&masq::nft_input6(&n6, &own6, NFT));
    assert_eq!(last.as_ref().unwrap().lines, written[3..]);
    assert_eq!(ensure6(&ns, NFT, &mut last), Ensured::Intact);
    ns.exec("nft", &["flush", "chain", "ip6", "vxmesh", "postrtg"])
        .unwrap();
    assert!(matches!(
        ensure6(&ns, NFT, &mut last),
        Ensured::Restored { missing: 5, .. }
    ));
    // The IPv4 table is not touched by the IPv6 rules.
    assert!(!nft_tables(&ns).contains("table ip vxmesh"));

    // ip6tables: the same chains; the nftables table goes.
    let mut last = None;
    assert_eq!(ensure6(&ns, IPT, &mut last), Ensured::Applied);
    let saved = ns.exec("ip6tables-save", &[]).unwrap();
    assert!(
        saved.contains("-A VXMESH-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8")
            && saved.contains("-A VXMESH-FWD -d fd00:10:244::/56")
            && saved.contains("-A FORWARD -m comment --comment vxmesh -j VXMESH-FWD"),
        "{saved}"
    );
    assert!(!nft_tables(&ns).contains("table ip6 vxmesh"));
    ns.exec("ip6tables", &["-t", "nat", "-F", "VXMESH-POSTRTG"])
        .unwrap();
    assert!(matches!(
        ensure6(&ns, IPT, &mut last),
        Ensured::Restored { missing: 5, .. }
    ));
    // cleanup-iptables removes the IPv6 ones too.
    ns.run(|| masq::remove().unwrap()).unwrap();
    let saved = ns.exec("ip6tables-save", &[]).unwrap();
    assert!(!saved.contains("VXMESH"), "{saved}");
}

/// `--vxlan-notrack` on a dual-stack node: the IPv6 device's outer VXLAN (UDP/IPv6 to
/// the port, at or from the PublicIPv6) is left untracked in both backends; other
/// IPv6 UDP is still tracked; the ip6tables raw chain is restored after a deleted hook.
#[test]
#[ignore = "needs root, network namespaces, nft and ip6tables: scripts/test.sh runs it"]
fn vxlan_notrack_covers_the_ipv6_device() {
    require();
    require_commands(&["ip6tables", "ip6tables-save", "ip6tables-restore"]);
    let node = Netns::unique("masq-nt6n").unwrap();
    let peer = Netns::unique("masq-nt6p").unwrap();
    veth(
        &node,
        "eth0",
        "192.168.79.1/24",
        &peer,
        "eth0",
        "192.168.79.2/24",
    )
    .unwrap();
    let (me, them): (Ipv6Addr, Ipv6Addr) =
        ("fd00:79::1".parse().unwrap(), "fd00:79::2".parse().unwrap());
    for (ns, ip) in [(&node, me), (&peer, them)] {
        ns.add_ipv6(&format!("{ip}/64"), "eth0").unwrap();
    }
    let untrack = Some(Untrack {
        local_ip: Some("192.168.79.1".parse().unwrap()),
        local_ipv6: Some(me),
        port: 8472,
    });
    for backend in [Backend::Nftables, Backend::Iptables] {
        let rules = Rules {
            untrack,
            backend,
            ..NFT
        };
        let mut last = None;
        assert_eq!(ensure6(&node, rules, &mut last), Ensured::Applied);
        // The IPv6 nat rules make the kernel track; IPv6 VXLAN both ways is not ...
        let before = tracked(&node);
        send(&peer, them, &node, me, 8472);
        send(&node, me, &peer, them, 8472);
        assert_eq!(
            tracked(&node),
            before,
            "{backend:?}: IPv6 VXLAN was tracked"
        );
        // ... other IPv6 UDP still is.
        send(&peer, them, &node, me, 8473);
        assert_eq!(
            tracked(&node),
            before + 1,
            "{backend:?}: other UDP untracked"
        );
        if backend == Backend::Iptables {
            let saved = node.exec("ip6tables-save", &["-t", "raw"]).unwrap();
            assert!(
                saved.contains("-A VXMESH-NOTRACK -d fd00:79::1/128 -p udp -m udp --dport 8472"),
                "{saved}"
            );
            node.exec(
                "ip6tables",
                &[
                    "-w",
                    "-t",
                    "raw",
                    "-D",
                    "PREROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    "vxmesh",
                    "-j",
                    "VXMESH-NOTRACK",
                ],
            )
            .unwrap();
            assert!(matches!(
                ensure6(&node, rules, &mut last),
                Ensured::Restored { extra: 0, .. }
            ));
            let before = tracked(&node);
            send(&peer, them, &node, me, 8472);
            assert_eq!(tracked(&node), before, "restored hook not in force");
        } else {
            let listed = node
                .exec("nft", &["list", "table", "ip6", "vxmesh"])
                .unwrap();
            assert!(
                listed.contains("ip6 daddr fd00:79::1 udp dport 8472 notrack"),
                "{listed}"
            );
        }
    }
    node.run(|| masq::remove().unwrap()).unwrap();
    let saved = node.exec("ip6tables-save", &[]).unwrap();
    assert!(!saved.contains("VXMESH"), "{saved}");
}

/// `--egress-tunnel-gso`'s FORWARD accept, in both backends: what is written reads back
/// the same (so the resync sees it intact, not as a rule to restore every 5 s), a
/// removal is restored, and turning the flag off removes it.
#[test]
#[ignore = "needs root, network namespaces, nft and iptables: scripts/test.sh runs it"]
fn underlay_tap_forward_accept_round_trips() {
    require();
    let ns = Netns::unique("masq-utap").unwrap();
    let with = |backend| Rules {
        underlay_tap: Some((Ipv4Addr::new(192, 168, 100, 11), 8472)),
        backend,
        ..NFT
    };
    for backend in [Backend::Iptables, Backend::Nftables] {
        let mut last = None;
        assert_eq!(ensure(&ns, with(backend), &mut last), Ensured::Applied);
        assert_eq!(
            ensure(&ns, with(backend), &mut last),
            Ensured::Intact,
            "{backend:?}"
        );
        let listed = match backend {
            Backend::Iptables => iptables_save(&ns),
            Backend::Nftables => ns.exec("nft", &["list", "table", "ip", "vxmesh"]).unwrap(),
        };
        assert!(
            listed.contains("192.168.100.11") && listed.contains("8472"),
            "{backend:?}: {listed}"
        );
        match backend {
            Backend::Iptables => ns.exec("iptables", &["-F", "VXMESH-FWD"]).unwrap(),
            Backend::Nftables => ns
                .exec("nft", &["flush", "chain", "ip", "vxmesh", "forward"])
                .unwrap(),
        };
        assert_eq!(
            ensure(&ns, with(backend), &mut last),
            Ensured::Restored {
                missing: 3,
                extra: 0
            },
            "{backend:?}"
        );
        assert_eq!(ensure(&ns, with(backend), &mut last), Ensured::Intact);
        let without = Rules {
            underlay_tap: None,
            ..with(backend)
        };
        let mut fresh = None;
        assert_eq!(ensure(&ns, without, &mut fresh), Ensured::Applied);
        let listed = match backend {
            Backend::Iptables => iptables_save(&ns),
            Backend::Nftables => ns.exec("nft", &["list", "table", "ip", "vxmesh"]).unwrap(),
        };
        assert!(!listed.contains("192.168.100.11"), "{backend:?}: {listed}");
    }
}
