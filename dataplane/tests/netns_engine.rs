//! Privileged: two engines in two network namespaces joined by a veth "underlay",
//! carrying real kernel traffic (ping, verified TCP transfers both ways) through
//! TAP → VXLAN/UDP → TAP. Needs root: ignored by a plain `cargo test`, run by
//! scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use vxmesh_dataplane::counters::{CounterSnapshot, Counters, DropReason};
use vxmesh_dataplane::engine::{Engine, EngineConfig};
use vxmesh_dataplane::fib::{ForwardingTable, LocalVtep, PeerVtep, SharedTable};
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::sys::{Tap, TapOptions, UdpRx, UdpTx};
use vxmesh_dataplane::wire::{MacAddr, Vni, VxlanHeader};
use vxmesh_testkit::{require_root, unique_prefix, veth, Netns};

struct Node {
    ns: Netns,
    engine: Option<Engine>,
    counters: Arc<Counters>,
}

impl Node {
    fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }
}

const PORT: u16 = 8472;

#[allow(clippy::too_many_arguments)]
fn start_node(
    ns: Netns,
    tap: &str,
    underlay_ip: Ipv4Addr,
    mac: MacAddr,
    vtep_ip: &str,
    peer: PeerVtep,
    peer_subnet: &str,
    opts: TapOptions,
    permanent_neigh: bool,
) -> Node {
    let name = IfName::new(tap).unwrap();
    let (taps, tx, rx) = ns
        .run(move || {
            let taps = Tap::open(&name, opts).unwrap();
            let tx = UdpTx::open(underlay_ip, 4, 4 << 20).unwrap();
            let rx = UdpRx::open(
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
                4 << 20,
                true,
            )
            .unwrap();
            (taps, tx, rx)
        })
        .unwrap();
    ns.ip(&[
        "link",
        "set",
        tap,
        "address",
        &mac.to_string(),
        "mtu",
        "1450",
    ])
    .unwrap();
    ns.ip(&["addr", "add", &format!("{vtep_ip}/32"), "dev", tap])
        .unwrap();
    ns.ip(&["link", "set", tap, "up"]).unwrap();
    if permanent_neigh {
        ns.ip(&[
            "neigh",
            "replace",
            &peer.vtep_ip.to_string(),
            "lladdr",
            &peer.vtep_mac.to_string(),
            "dev",
            tap,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    ns.ip(&[
        "route",
        "add",
        peer_subnet,
        "via",
        &peer.vtep_ip.to_string(),
        "dev",
        tap,
        "onlink",
    ])
    .unwrap();
    let local = LocalVtep {
        vtep_mac: mac,
        vni: Vni::new(1).unwrap(),
        port: PORT,
    };
    let counters = Arc::new(Counters::default());
    let engine = Engine::start(EngineConfig {
        tap: taps,
        udp_tx: tx,
        udp_rx: rx,
        table: SharedTable::new(ForwardingTable::new(local, [peer])),
        counters: Arc::clone(&counters),
    })
    .unwrap();
    Node {
        ns,
        engine: Some(engine),
        counters,
    }
}

fn pair(tag: &str, opts: TapOptions) -> (Node, Node) {
    let p = format!("{}{tag}", unique_prefix());
    let a = Netns::new(&format!("{p}a")).unwrap();
    let b = Netns::new(&format!("{p}b")).unwrap();
    veth(&a, "ul0", "192.168.99.1/24", &b, "ul0", "192.168.99.2/24").unwrap();
    let mac_a: MacAddr = "0a:58:0a:f4:01:00".parse().unwrap();
    let mac_b: MacAddr = "0a:58:0a:f4:02:00".parse().unwrap();
    let na = start_node(
        a,
        "vxt0",
        Ipv4Addr::new(192, 168, 99, 1),
        mac_a,
        "10.244.1.0",
        PeerVtep {
            vtep_mac: mac_b,
            public_ip: Ipv4Addr::new(192, 168, 99, 2),
            vtep_ip: Ipv4Addr::new(10, 244, 2, 0),
        },
        "10.244.2.0/24",
        opts,
        true,
    );
    // B has no neighbour entry: its kernel ARPs and the engine answers.
    let nb = start_node(
        b,
        "vxt0",
        Ipv4Addr::new(192, 168, 99, 2),
        mac_b,
        "10.244.2.0",
        PeerVtep {
            vtep_mac: mac_a,
            public_ip: Ipv4Addr::new(192, 168, 99, 1),
            vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
        },
        "10.244.1.0/24",
        opts,
        false,
    );
    (na, nb)
}

/// A pseudo-random but reproducible byte pattern.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes from `from` to `to_ip:port` over TCP and checks every byte.
fn verified_transfer(from: &Netns, to: &Netns, to_ip: Ipv4Addr, port: u16, len: usize) {
    let data = Arc::new(pattern(len, port as u32));
    let expect = Arc::clone(&data);
    let listener = to
        .run(move || TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap())
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::with_capacity(expect.len());
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), expect.len(), "byte count");
        assert!(got == *expect, "payload differs");
    });
    let send = Arc::clone(&data);
    from.run(move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddrV4::new(to_ip, port).into(),
            Duration::from_secs(5),
        )
        .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&send).unwrap();
    })
    .unwrap();
    server.join().unwrap();
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn ping_and_verified_tcp_both_ways_with_offloads() {
    require_root();
    let (a, b) = pair("o", TapOptions::default());
    a.ns.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.244.2.0"])
        .unwrap();
    // B answered A's ARP itself only if the kernel asked; A's ping makes B reply
    // to 10.244.1.0, for which B has no neighbour: the engine on B answers ARP.
    assert!(b.counters().arp_replies >= 1, "{:?}", b.counters());
    verified_transfer(&a.ns, &b.ns, Ipv4Addr::new(10, 244, 2, 0), 5201, 32 << 20);
    verified_transfer(&b.ns, &a.ns, Ipv4Addr::new(10, 244, 1, 0), 5202, 32 << 20);
    let (ca, cb) = (a.counters(), b.counters());
    let st = a.engine.as_ref().unwrap().status();
    if st.tap.tso() {
        assert!(ca.tso_frames_segmented > 0, "{ca:?}");
        assert!(cb.tso_frames_segmented > 0, "{cb:?}");
    }
    if st.tap.vnet_hdr {
        assert!(cb.gro_segments_merged > 0, "{cb:?}");
    }
    assert_eq!(
        ca.drops.iter().sum::<u64>(),
        ca.dropped(DropReason::Multicast),
        "{ca:?}"
    );
    assert!(
        ca.udp_send_syscalls < ca.udp_datagrams_sent,
        "batching: {ca:?}"
    );
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn works_without_offloads() {
    require_root();
    let opts = TapOptions {
        vnet_hdr: false,
        uso: false,
        queues: 1,
    };
    let (a, b) = pair("n", opts);
    assert!(!a.engine.as_ref().unwrap().status().tap.vnet_hdr);
    a.ns.exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "10.244.2.0"])
        .unwrap();
    verified_transfer(&a.ns, &b.ns, Ipv4Addr::new(10, 244, 2, 0), 5203, 4 << 20);
    assert_eq!(a.counters().tso_frames_segmented, 0);
}

#[test]
#[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
fn wrong_vni_and_unknown_source_are_counted_not_delivered() {
    require_root();
    let (a, b) = pair("f", TapOptions::default());
    // A valid inner frame for B (dst = B's VtepMAC), carried with VNI 2 from A's address.
    let mut frame = Vec::new();
    frame.extend_from_slice(
        &VxlanHeader {
            vni: Vni::new(2).unwrap(),
        }
        .to_bytes(),
    );
    frame.extend_from_slice(&[
        0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x00, 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00, 0x08, 0x00,
    ]);
    frame.extend_from_slice(&[0u8; 46]);
    let f = frame.clone();
    a.ns.run(move || {
        let s = UdpSocket::bind("192.168.99.1:0").unwrap();
        s.send_to(&f, "192.168.99.2:8472").unwrap();
    })
    .unwrap();
    // The same datagram with the right VNI from an address that holds no lease.
    let mut good_vni = frame.clone();
    good_vni[..8].copy_from_slice(
        &VxlanHeader {
            vni: Vni::new(1).unwrap(),
        }
        .to_bytes(),
    );
    b.ns.ip(&["addr", "add", "192.168.99.77/24", "dev", "ul0"])
        .ok();
    a.ns.ip(&["addr", "add", "192.168.99.66/24", "dev", "ul0"])
        .unwrap();
    a.ns.run(move || {
        let s = UdpSocket::bind("192.168.99.66:0").unwrap();
        s.send_to(&good_vni, "192.168.99.2:8472").unwrap();
    })
    .unwrap();
    let mut c = b.counters();
    for _ in 0..50 {
        if c.dropped(DropReason::WrongVni) >= 1 && c.dropped(DropReason::UnknownSource) >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        c = b.counters();
    }
    assert_eq!(c.dropped(DropReason::WrongVni), 1, "{c:?}");
    assert_eq!(c.dropped(DropReason::UnknownSource), 1, "{c:?}");
    assert_eq!(c.frames_delivered, 0, "{c:?}");
    drop(a);
}
