//! The IPv6 device's ingress check (`vxmesh_control::ingress6`, decision 0031) in
//! network namespaces: a kernel `flannel-v6.1` device on a node, and VXLAN-over-IPv6
//! datagrams written by hand on a peer's underlay (a UDP socket), each counted as
//! delivered when the device's receive counter moves. A peer's own pods and hosts
//! outside the cluster pass; a spoofed source (this node's pods, another node's), a
//! destination outside this node's subnet, a non-IPv6 inner frame, a datagram from an
//! address that is not a peer and one too short for the rules to read are dropped.
//! Without the check the device delivers them all (what flanneld's device does). A
//! flushed table is restored, a new peer is let in after the next `ensure`, a check of
//! 1,000 peers still sorts each datagram by its sender, and `remove` leaves nothing.
//! Needs root and `nft`: ignored by a plain `cargo test`, run by scripts/test.sh (`--
//! --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv6Addr, UdpSocket};
use std::time::{Duration, Instant};

use vxmesh_control::ingress6::{self, Check6};
use vxmesh_control::masq::{Ensured, Snapshot};
use vxmesh_control::subnet6::Subnet6;
use vxmesh_testkit::{require_commands, require_root, veth, wait_for, Netns};

const ME: &str = "fd00:79::1";
const PEER: &str = "fd00:79::2";
const OTHER: &str = "fd00:79::3";
const DEVICE_MAC: &str = "02:11:22:33:44:55";

fn s6(s: &str) -> Subnet6 {
    s.parse().unwrap()
}

fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn check(peers: &[(&str, &str)]) -> Check6 {
    Check6 {
        port: 8472,
        network: s6("fd00:10:244::/56"),
        own: s6("fd00:10:244:1::/64"),
        peers: peers.iter().map(|(ip, s)| (a6(ip), s6(s))).collect(),
    }
}

/// A VXLAN datagram (VNI 1) carrying an Ethernet frame to the device's MAC of
/// `ethertype`, with an IPv6 header `src` → `dst` and an ICMPv6 echo request.
fn datagram(src: &str, dst: &str, ethertype: u16) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend(
        DEVICE_MAC
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap()),
    );
    d.extend([0x02, 0, 0, 0, 0, 0x99]);
    d.extend(ethertype.to_be_bytes());
    d.extend([0x60, 0, 0, 0, 0, 8, 58, 64]);
    d.extend(a6(src).octets());
    d.extend(a6(dst).octets());
    d.extend([128, 0, 0, 0, 0, 1, 0, 1]);
    d
}

/// A short datagram: an ARP frame (28 bytes), shorter than every read of the
/// rules; the kernel's device passes it on.
fn short() -> Vec<u8> {
    let mut d = datagram("fd00:10:244:2::5", "fd00:10:244:1::", 0x0806);
    d.truncate(8 + 14 + 28);
    d
}

/// The device's receive counter in `ns`.
fn rx(ns: &Netns) -> u64 {
    let v = ns
        .json("ip", &["-s", "-j", "link", "show", "dev", "flannel-v6.1"])
        .unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// Sends `bytes` from `from` on the peer's underlay to the node's VXLAN port; whether
/// the node's device received a frame.
fn delivered(node: &Netns, peer: &Netns, from: &str, bytes: Vec<u8>) -> bool {
    let before = rx(node);
    let from = a6(from);
    peer.run(move || {
        let s = UdpSocket::bind((from, 0)).unwrap();
        s.send_to(&bytes, (a6(ME), 8472)).unwrap();
    })
    .unwrap();
    // Delivery is synchronous in softirq; the wait covers a slow machine.
    wait_for(Duration::from_millis(300), || rx(node) > before).is_some()
}

fn ensure(ns: &Netns, c: Check6, last: &mut Option<Snapshot<Check6>>) -> Ensured {
    let mut snap = last.take();
    let (r, snap) = ns
        .run(move || {
            let r = ingress6::ensure(&c, &mut snap);
            (r, snap)
        })
        .unwrap();
    *last = snap;
    r.unwrap()
}

fn setup() -> (Netns, Netns) {
    let node = Netns::unique("ing6n").unwrap();
    let peer = Netns::unique("ing6p").unwrap();
    veth(
        &node,
        "eth0",
        "192.168.79.1/24",
        &peer,
        "eth0",
        "192.168.79.2/24",
    )
    .unwrap();
    for (ns, ip) in [(&node, ME), (&peer, PEER), (&peer, OTHER)] {
        ns.add_ipv6(&format!("{ip}/64"), "eth0").unwrap();
    }
    for args in [
        vec![
            "link",
            "add",
            "flannel-v6.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            ME,
            "dstport",
            "8472",
            "nolearning",
            "dev",
            "eth0",
        ],
        vec!["link", "set", "flannel-v6.1", "address", DEVICE_MAC],
        vec![
            "-6",
            "addr",
            "add",
            "fd00:10:244:1::/128",
            "dev",
            "flannel-v6.1",
            "nodad",
        ],
        vec!["link", "set", "flannel-v6.1", "up"],
    ] {
        node.exec("ip", &args).unwrap();
    }
    (node, peer)
}

/// (outer source, inner source, inner destination, EtherType, passes).
const CASES: &[(&str, &str, &str, u16, bool, &str)] = &[
    (
        PEER,
        "fd00:10:244:2::5",
        "fd00:10:244:1::",
        0x86dd,
        true,
        "the peer's pod",
    ),
    (
        PEER,
        "fd00:10:244:2::5",
        "fd00:10:244:1::7",
        0x86dd,
        true,
        "to one of our pods",
    ),
    (
        PEER,
        "2001:db8::1",
        "fd00:10:244:1::7",
        0x86dd,
        true,
        "a host outside the Network",
    ),
    (
        PEER,
        "fd00:10:244:3::5",
        "fd00:10:244:1::7",
        0x86dd,
        false,
        "another node's pod",
    ),
    (
        PEER,
        "fd00:10:244:1::9",
        "fd00:10:244:1::7",
        0x86dd,
        false,
        "one of our own pods",
    ),
    (
        PEER,
        "fd00:10:244:2::5",
        "fd00:10:244:3::1",
        0x86dd,
        false,
        "relayed to another node",
    ),
    (
        PEER,
        "fd00:10:244:2::5",
        "2001:db8::9",
        0x86dd,
        false,
        "relayed outside",
    ),
    (
        PEER,
        "fd00:10:244:2::5",
        "fd00:10:244:1::7",
        0x0800,
        false,
        "an IPv4 frame",
    ),
    (
        OTHER,
        "2001:db8::1",
        "fd00:10:244:1::7",
        0x86dd,
        false,
        "not a peer",
    ),
];

#[test]
#[ignore = "needs root, network namespaces and nft: scripts/test.sh runs it"]
fn spoofed_ipv6_vxlan_is_dropped() {
    require_root();
    require_commands(&["nft"]);
    let (node, peer) = setup();
    let spoofed = || datagram("fd00:10:244:3::5", "fd00:10:244:1::7", 0x86dd);

    // Without the check the kernel's device takes every one of them: the baseline
    // that makes the drops below the check's.
    for (from, src, dst, ty, _, what) in CASES {
        assert!(
            delivered(&node, &peer, from, datagram(src, dst, *ty)),
            "without the check, {what} was not delivered: the test cannot tell"
        );
    }
    assert!(
        delivered(&node, &peer, PEER, short()),
        "without the check, a short frame was not delivered: the test cannot tell"
    );

    let one = check(&[(PEER, "fd00:10:244:2::/64")]);
    let mut last = None;
    assert_eq!(ensure(&node, one.clone(), &mut last), Ensured::Applied);
    for (from, src, dst, ty, passes, what) in CASES {
        assert_eq!(
            delivered(&node, &peer, from, datagram(src, dst, *ty)),
            *passes,
            "{what} ({from}: {src} -> {dst}, type {ty:#06x})"
        );
    }
    assert!(
        !delivered(&node, &peer, PEER, short()),
        "a short datagram passed"
    );
    // Each drop counted once, by reason: the short one, the stranger's, and the peer's
    // five with a wrong inner frame, counted for that peer.
    let dropped = node.run(|| ingress6::dropped().unwrap()).unwrap().unwrap();
    assert_eq!(
        dropped.by_reason(),
        [
            ("ingress_malformed", 1),
            ("unknown_source", 1),
            ("inner_address", 5)
        ],
        "{dropped:?}"
    );
    assert_eq!(
        dropped.inner_address.get(&a6(PEER)),
        Some(&(s6("fd00:10:244:2::/64"), 5)),
        "{dropped:?}"
    );

    // Flushed behind our back: restored at the next check.
    node.exec("nft", &["flush", "table", "ip6", ingress6::NFT_TABLE])
        .unwrap();
    assert!(delivered(&node, &peer, PEER, spoofed()));
    assert!(matches!(
        ensure(&node, one.clone(), &mut last),
        Ensured::Restored { .. }
    ));
    assert_eq!(ensure(&node, one.clone(), &mut last), Ensured::Intact);
    assert!(!delivered(&node, &peer, PEER, spoofed()));

    // A new peer is let in once the check knows it.
    assert!(!delivered(&node, &peer, OTHER, spoofed()));
    let two = check(&[(PEER, "fd00:10:244:2::/64"), (OTHER, "fd00:10:244:3::/64")]);
    assert_eq!(ensure(&node, two, &mut last), Ensured::Applied);
    assert!(delivered(&node, &peer, OTHER, spoofed()));
    assert!(!delivered(&node, &peer, PEER, spoofed()));

    // 1,000 peers, ours last in the map: each datagram still goes to its sender's
    // rules (one lookup), and the check is replaced in one transaction.
    let mut many: Vec<(Ipv6Addr, Subnet6)> = (1..1000u32)
        .map(|i| {
            // Other peers' addresses and subnets of the /48 Network, apart from the
            // ones used above.
            let ip = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
            (ip, s6(&format!("fd00:10:244:{:x}::/64", 0x1000 + i)))
        })
        .collect();
    many.push((a6(PEER), s6("fd00:10:244:2::/64")));
    let big = Check6 {
        network: s6("fd00:10:244::/48"),
        peers: many,
        ..check(&[])
    };
    let started = Instant::now();
    assert_eq!(ensure(&node, big, &mut last), Ensured::Applied);
    eprintln!(
        "1,000 peers applied and read back in {:?}",
        started.elapsed()
    );
    assert!(delivered(
        &node,
        &peer,
        PEER,
        datagram("fd00:10:244:2::5", "fd00:10:244:1::7", 0x86dd)
    ));
    assert!(!delivered(&node, &peer, PEER, spoofed()));
    assert!(!delivered(&node, &peer, OTHER, spoofed()));

    node.run(|| ingress6::remove().unwrap()).unwrap();
    let tables = node.exec("nft", &["list", "tables"]).unwrap();
    assert!(!tables.contains(ingress6::NFT_TABLE), "{tables}");
    assert!(delivered(&node, &peer, OTHER, spoofed()));
    // Removing what is not there is fine.
    node.run(|| ingress6::remove().unwrap()).unwrap();
}
