//! Privileged, real etcd: a mixed cluster in the netns lab — node 1 runs vxmeshd with
//! the userspace dataplane, node 2 vxmeshd with the kernel dataplane, node 3 is
//! configured the way flanneld's vxlan backend configures a node
//! (scripts/flannel-node.sh: iproute2 + etcdctl, flannel's recipe and lease format).
//! The network config uses a non-default VNI (7) and port (4789) so every node is
//! seen to honour Backend.VNI/Port. Every node keeps its NIC's default offloads: the
//! kernel nodes leave inner TCP/UDP checksums partial (CHECKSUM_PARTIAL over veth) and
//! pass whole GSO bursts; the userspace node must hand them on as the kernel would
//! (dataplane `offload::partial`, `offload::unsegmented`). Needs root and etcd: ignored
//! by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).
//!
//! Checks, in order:
//! 1. all pod pairs ping each other (the lab's own check), and TCP (iperf3) flows both
//!    ways between the userspace node and the kernel node and between the userspace
//!    node and the flannel node, each at a rate no stalled path reaches
//!    ([`MIN_TCP_BPS`]); the userspace node counted partial checksums; UDP GSO bursts
//!    (`UDP_SEGMENT`) from pods on both kernel nodes reach a pod on the userspace node
//!    whole (they cross the veth underlay uncut: `offload::udp_burst`);
//! 2. the kernel node is programmed exactly like the flannel node (device settings,
//!    neighbour + fdb + onlink route per peer, nothing else);
//! 3. wire: underlay captures decode as VXLAN with VNI 7 on port 4789 (tshark, or
//!    tcpdump -T vxlan); a datagram encapsulated by the userspace dataplane is
//!    byte-compared with the same datagram encapsulated by the kernel dataplane on the
//!    same node (same VtepMAC), only the outer fields that legitimately differ masked;
//! 4. switching node 1 userspace → kernel → userspace keeps its subnet and leaves no
//!    stale device, route, neighbour or fdb entry;
//! 5. peer changes on the kernel node: a new VtepMAC replaces the fdb entry (the old
//!    one is gone), a new PublicIP rewrites its dst, a deleted lease removes all three;
//!    a lease deleted while the agent is down is pruned when it restarts, and the
//!    device kept pod traffic flowing while the agent was down;
//! 6. migration and rollback: the flannel node becomes a vxmesh kernel node (adopts
//!    flannel.7, same subnet, flanneld's leftovers pruned), then a flannel node again
//!    (adopts vxmesh's device and keeps its MAC), pods reachable throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use serde_json::Value;
use vxmesh_control::lease::{parse_lease_key, LeaseAttrs};
use vxmesh_dataplane::offload::partial;
use vxmesh_testkit::{in_netns, require_etcd, require_root, sh, wait_for};

const BACKEND: &str = r#"{"Type":"vxlan","VNI":7,"Port":4789}"#;
const VNI: u64 = 7;
const PORT: u16 = 4789;
const KDEV: &str = "flannel.7";
const TAP: &str = "vxmesh0";
const PREFIX_KEY: &str = "/coreos.com/network/subnets/";
/// Lowest TCP rate a working path must reach. A path that drops partial-checksum
/// segments stalls at 0 after the handshake; working paths run at Gbit/s here. This
/// only tells the two apart — rates relative to kernel VXLAN are the benchmark's job.
const MIN_TCP_BPS: f64 = 100e6;

/// What only this test asks of the lab.
trait MixedLab {
    fn leases(&self) -> Vec<(String, Ipv4Addr, String)>;
    fn vtep_mac(&self, node: &str, dev: &str) -> String;
    fn programmed(&self, node: &str, dev: &str) -> Programmed;
    fn expected(&self, node: u32, dev: &str, fdb: bool) -> Programmed;
    fn assert_exact(&self, node: u32, dev: &str, when: &str);
    fn iperf(&self, server: (u32, u32), client: (u32, u32)) -> f64;
}

impl MixedLab for Lab {
    /// Every lease in etcd: subnet → (PublicIP, VtepMAC).
    fn leases(&self) -> Vec<(String, Ipv4Addr, String)> {
        let v: Value =
            serde_json::from_str(&self.etcdctl(&["get", "--prefix", PREFIX_KEY, "-w", "json"]))
                .unwrap();
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let key = b64(kv["key"].as_str().unwrap());
            let value = b64(kv["value"].as_str().unwrap());
            let subnet = parse_lease_key(&String::from_utf8_lossy(&key)).unwrap();
            let a = LeaseAttrs::parse(&value).unwrap();
            out.push((
                subnet.to_string(),
                a.public_ip,
                a.vxlan.unwrap().vtep_mac.to_string(),
            ));
        }
        out
    }

    fn vtep_mac(&self, node: &str, dev: &str) -> String {
        self.ip_json(node, &["link", "show", dev])[0]["address"]
            .as_str()
            .unwrap_or("-")
            .to_string()
    }

    /// What a node carries for its peers on `dev`, as `ip -j` / `bridge -j` show it.
    fn programmed(&self, node: &str, dev: &str) -> Programmed {
        let links = self.ip_json(node, &["-d", "link", "show"]);
        let overlay: BTreeSet<String> = links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| {
                matches!(
                    l["linkinfo"]["info_kind"].as_str(),
                    Some("vxlan") | Some("tun")
                ) && l["ifalias"].as_str() != Some("vxmesh underlay tap")
            })
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect();
        let routes = self
            .ip_json(node, &["route", "show", "dev", dev])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["protocol"].as_str() != Some("kernel"))
            .map(|r| {
                let onlink = r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink"));
                format!(
                    "{} via {}{}",
                    r["dst"].as_str().unwrap_or("?"),
                    r["gateway"].as_str().unwrap_or("-"),
                    if onlink { " onlink" } else { "" }
                )
            })
            .collect();
        let neigh = self
            .ip_json(node, &["neigh", "show", "dev", dev, "nud", "permanent"])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|n| {
                format!(
                    "{} lladdr {}",
                    n["dst"].as_str().unwrap_or("?"),
                    n["lladdr"].as_str().unwrap_or("?")
                )
            })
            .collect();
        let fdb_out = Command::new("bridge")
            .args(["-n", &self.ns(node), "-j", "fdb", "show", "dev", dev])
            .output()
            .unwrap();
        let fdb: Value = serde_json::from_slice(&fdb_out.stdout).unwrap_or(Value::Array(vec![]));
        let fdb = fdb
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|e| e["dst"].is_string())
            .map(|e| {
                format!(
                    "{} dst {}",
                    e["mac"].as_str().unwrap_or("?"),
                    e["dst"].as_str().unwrap_or("?")
                )
            })
            .collect();
        Programmed {
            overlay,
            routes,
            neigh,
            fdb,
        }
    }

    /// What `node` must carry on `dev` for the current leases (all but its own).
    fn expected(&self, node: u32, dev: &str, fdb: bool) -> Programmed {
        let own = self.subnet_of(node);
        let mut e = Programmed {
            overlay: [dev.to_string()].into(),
            ..Default::default()
        };
        for (subnet, public_ip, mac) in self.leases() {
            if subnet == own {
                continue;
            }
            let gw = subnet.split('/').next().unwrap().to_string();
            e.routes.insert(format!("{subnet} via {gw} onlink"));
            e.neigh.insert(format!("{gw} lladdr {mac}"));
            if fdb {
                e.fdb.insert(format!("{mac} dst {public_ip}"));
            }
        }
        e
    }

    /// Waits until the vxmesh node `node` carries exactly what the leases say.
    fn assert_exact(&self, node: u32, dev: &str, when: &str) {
        let kernel = dev == KDEV;
        let name = format!("n{node}");
        let ok = wait_for(Duration::from_secs(10), || {
            self.programmed(&name, dev) == self.expected(node, dev, kernel)
        })
        .is_some();
        assert!(
            ok,
            "{when}: n{node} on {dev}\n have {:#?}\n want {:#?}",
            self.programmed(&name, dev),
            self.expected(node, dev, kernel)
        );
    }

    fn iperf(&self, server: (u32, u32), client: (u32, u32)) -> f64 {
        let srv = self.ns(&format!("n{}-p{}", server.0, server.1));
        let cli = self.ns(&format!("n{}-p{}", client.0, client.1));
        let mut s = Command::new("ip")
            .args(["netns", "exec", &srv, "iperf3", "-s", "-1", "-p", "5202"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let out = Command::new("timeout")
            .args(["20", "ip", "netns", "exec", &cli, "iperf3", "-c"])
            .arg(self.pod_ip(server.0, server.1))
            .args(["-p", "5202", "-t", "2", "-J"])
            .output()
            .unwrap();
        let _ = s.kill();
        let _ = s.wait();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(
            bps >= MIN_TCP_BPS && v["error"].is_null(),
            "iperf3 n{}-p{} -> n{}-p{}: below {MIN_TCP_BPS} bit/s or failed: {}",
            client.0,
            client.1,
            server.0,
            server.1,
            String::from_utf8_lossy(&out.stdout)
        );
        bps
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Programmed {
    /// vxlan and tun links on the node.
    overlay: BTreeSet<String>,
    routes: BTreeSet<String>,
    neigh: BTreeSet<String>,
    fdb: BTreeSet<String>,
}

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// A capture on the switch port of node `port` (`n1`, …), running until dropped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, port: &str, filter: &str, count: u32) -> Capture {
        let file = lab.state.join(format!("cap-{port}-{}.pcap", rand_tag()));
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns("sw"), "tcpdump", "-i", port])
            .args(["-U", "-s", "0", "-c", &count.to_string(), "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tcpdump writes the file header once it is listening.
        assert!(
            wait_for(Duration::from_secs(5), || std::fs::metadata(&file)
                .is_ok_and(|m| m.len() >= 24))
            .is_some(),
            "tcpdump did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
        Capture { child, file }
    }

    /// Waits for tcpdump to have its packets (or `limit`), then returns the frames.
    fn finish(mut self, limit: Duration) -> (PathBuf, Vec<Vec<u8>>) {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let frames = pcap_frames(&self.file);
        assert!(!frames.is_empty(), "nothing captured: {err}");
        (self.file.clone(), frames)
    }
}

fn rand_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 1_000_000
}

/// The frames of a classic little-endian pcap file (what tcpdump -w writes).
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap();
    assert!(
        b.len() >= 24 && b[..4] == [0xd4, 0xc3, 0xb2, 0xa1],
        "not a pcap file"
    );
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().unwrap()),
        1,
        "not Ethernet"
    );
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let len = u32::from_le_bytes(b[i + 8..i + 12].try_into().unwrap()) as usize;
        if i + 16 + len > b.len() {
            break;
        }
        out.push(b[i + 16..i + 16 + len].to_vec());
        i += 16 + len;
    }
    out
}

/// Decodes a capture as VXLAN on PORT: one (udp.dstport, vxlan.vni) per packet.
fn decode_vxlan(file: &Path) -> Vec<(u16, u64)> {
    let f = file.to_str().unwrap();
    if Command::new("tshark").arg("-v").output().is_ok() {
        let out = sh(&[
            "tshark",
            "-r",
            f,
            "-d",
            &format!("udp.port=={PORT},vxlan"),
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "udp.dstport",
            "-e",
            "vxlan.vni",
        ]);
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (p, v) = l.split_once(',').unwrap();
                (p.parse().unwrap(), v.parse().unwrap_or(u64::MAX))
            })
            .collect()
    } else {
        eprintln!("tshark not installed: decoding with tcpdump -T vxlan");
        let out = sh(&["tcpdump", "-nn", "-r", f, "-T", "vxlan"]);
        out.lines()
            .map(|l| {
                let vni = l
                    .split("vni ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                let port = l
                    .split(" > ")
                    .nth(1)
                    .and_then(|s| s.split(':').next())
                    .and_then(|s| s.rsplit('.').next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (port, vni)
            })
            .collect()
    }
}

/// Sends one UDP datagram with a fixed source port, DF set (so the inner IP ID is 0)
/// from inside network namespace `ns`.
fn send_fixed_datagram(ns: &str, dst: Ipv4Addr, payload: &[u8]) {
    let payload = payload.to_vec();
    in_netns(ns, move || {
        use std::os::fd::AsRawFd;
        let s = std::net::UdpSocket::bind("0.0.0.0:40000").unwrap();
        let v: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: valid socket fd, option value of the documented type and size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                std::ptr::addr_of!(v).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        s.send_to(&payload, (dst, 40001)).unwrap();
    })
    .unwrap();
}

/// Sends `bursts` UDP GSO bursts (`UDP_SEGMENT`: one `send` of `segments` datagrams of
/// `size` bytes and a shorter last one) from pod namespace `from` to `to_ip`:40010,
/// received in pod namespace `to`; returns (datagrams sent, datagrams received whole
/// and in order per burst). A kernel node at default offloads passes each burst whole
/// over the veth underlay; the receiver must cut it as the NIC would have.
fn udp_gso_bursts(from: &str, to: &str, to_ip: Ipv4Addr, bursts: usize) -> (usize, usize) {
    const SIZE: usize = 1_000;
    const SEGMENTS: usize = 20;
    let burst: Vec<u8> = (0..SIZE * SEGMENTS + 123)
        .map(|i| (i % 251) as u8)
        .collect();
    let per_burst = burst.len().div_ceil(SIZE);
    let want: Vec<Vec<u8>> = burst.chunks(SIZE).map(<[u8]>::to_vec).collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let to = to.to_string();
    let receiver = std::thread::spawn(move || {
        in_netns(&to, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:40010").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65_536];
            let deadline = Instant::now() + Duration::from_secs(10);
            while got.len() < bursts * per_burst && Instant::now() < deadline {
                if let Ok(n) = s.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        })
        .unwrap()
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let b = burst.clone();
    in_netns(from, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        vxmesh_testkit::flood::set_gso(&s, SIZE).unwrap();
        for _ in 0..bursts {
            assert_eq!(s.send_to(&b, (to_ip, 40010)).unwrap(), b.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .unwrap();
    let got = receiver.join().unwrap();
    let whole = got
        .chunks(per_burst)
        .filter(|c| c.len() == per_burst && c.iter().zip(&want).all(|(g, w)| g == w))
        .count();
    (bursts * per_burst, whole * per_burst)
}

/// Outer header bytes that may legitimately differ between two encapsulations of
/// the same inner frame by the same node, by name (offsets into the Ethernet frame).
const MAY_DIFFER: [(&str, std::ops::Range<usize>); 4] = [
    // Each IPv4 packet gets its own identification, chosen by the kernel for the
    // tunnel packet and for the userspace socket's datagram independently.
    ("outer IPv4 identification", 18..20),
    // Follows from the identification.
    ("outer IPv4 header checksum", 24..26),
    // RFC 7348 §5: a hash of the inner flow; each implementation hashes its own way.
    ("outer UDP source port", 34..36),
    // Covers the source port.
    ("outer UDP checksum", 40..42),
];

/// Compares two encapsulated frames byte by byte outside MAY_DIFFER; returns the
/// names of the masked fields that did differ.
fn compare_encapsulations(user: &[u8], kernel: &[u8]) -> Vec<&'static str> {
    assert_eq!(user.len(), kernel.len(), "frame lengths differ");
    let masked = |i: usize| MAY_DIFFER.iter().any(|(_, r)| r.contains(&i));
    let diffs: Vec<usize> = (0..user.len())
        .filter(|&i| user[i] != kernel[i] && !masked(i))
        .collect();
    assert!(
        diffs.is_empty(),
        "bytes differ outside the named fields at offsets {diffs:?}\n userspace {user:02x?}\n kernel    {kernel:02x?}"
    );
    MAY_DIFFER
        .iter()
        .filter(|(_, r)| user[r.clone()] != kernel[r.clone()])
        .map(|(n, _)| *n)
        .collect()
}

/// Whether the IPv4 + UDP/TCP inner frame's L4 checksum verifies.
fn inner_l4_verifies(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    };
    add(&ip[12..20]);
    add(&[0, ip[9]]);
    add(&(l4.len() as u16).to_be_bytes());
    add(l4);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn node_ip(node: u32) -> String {
    format!("192.168.100.{}", 10 + node)
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn mixed_cluster_userspace_kernel_flannel() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vxm",
        &[
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_DATAPLANES", "userspace kernel flannel"),
            ("VXLAB_BACKEND", BACKEND),
        ],
    );

    // 1. Up: all pod pairs ping (24 pairs) and iperf3 n1 → n2 (userspace → kernel);
    // then TCP both ways between the userspace node and each kernel-VXLAN node.
    let out = lab.must(&["up"]);
    println!("{out}");
    assert!(out.contains("24 of 24 reachable"), "{out}");
    assert!(out.contains("25 passed, 0 failed"), "{out}");
    for (far, what) in [(2, "kernel"), (3, "flannel")] {
        let out_bps = lab.iperf((far, 1), (1, 1));
        let in_bps = lab.iperf((1, 1), (far, 1));
        println!(
            "iperf3 userspace -> {what} {:.2} Gbit/s, {what} -> userspace {:.2} Gbit/s",
            out_bps / 1e9,
            in_bps / 1e9
        );
    }
    // UDP GSO bursts (pods sending with UDP_SEGMENT, e.g. QUIC) from both kernel-VXLAN
    // nodes arrive whole over the veth underlay; the userspace node cuts them.
    let gso_before = lab.status("n1")["counters"]["ingress_gso_frames"].as_u64();
    for (far, what) in [(2, "kernel"), (3, "flannel")] {
        let to: Ipv4Addr = lab.pod_ip(1, 1).parse().unwrap();
        let (sent, received) =
            udp_gso_bursts(&lab.ns(&format!("n{far}-p1")), &lab.ns("n1-p1"), to, 3);
        println!("UDP GSO bursts {what} -> userspace: {received} of {sent} datagrams received whole and in order");
        assert_eq!(
            received, sent,
            "UDP GSO bursts from the {what} node to the userspace node"
        );
    }
    let gso_after = lab.status("n1")["counters"]["ingress_gso_frames"].as_u64();
    println!("userspace node: ingress_gso_frames {gso_before:?} -> {gso_after:?}");
    let partial = lab.status("n1")["counters"]["ingress_partial_checksums"].as_u64();
    assert!(
        partial.is_some_and(|n| n > 0),
        "the userspace node saw no partial checksum from the kernel nodes: {partial:?}"
    );
    // vxmesh's CNI plugin made the pods on the flannel node from flannel's subnet.env.
    assert!(lab
        .pod_ip(3, 1)
        .starts_with(lab.subnet_of(3).rsplit_once('.').unwrap().0));
    let subnets: Vec<String> = (1..=3).map(|n| lab.subnet_of(n)).collect();

    // 2. The kernel node is programmed like the flannel node.
    let link = &lab.ip_json("n2", &["-d", "link", "show", KDEV])[0];
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"].as_u64(), Some(VNI), "{link}");
    assert_eq!(info["port"].as_u64(), Some(u64::from(PORT)), "{link}");
    assert_eq!(info["learning"].as_bool(), Some(false), "{link}");
    assert_eq!(info["local"].as_str(), Some(node_ip(2).as_str()), "{link}");
    assert_eq!(info["link"].as_str(), Some("eth0"), "{link}");
    assert_eq!(link["mtu"].as_u64(), Some(1450), "{link}");
    let n2_status: Value = serde_json::from_str(&lab.exec(
        "n2",
        &[
            lab.bin.join("vxmeshctl").to_str().unwrap(),
            "status",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        link["address"].as_str(),
        n2_status["node"]["vtep_mac"].as_str(),
        "device MAC = the lease's VtepMAC"
    );
    let addrs = lab.ip_json("n2", &["-4", "addr", "show", "dev", KDEV]);
    let addr = &addrs[0]["addr_info"][0];
    assert_eq!(
        format!("{}/{}", addr["local"].as_str().unwrap(), addr["prefixlen"]),
        format!("{}/32", subnets[1].split('/').next().unwrap())
    );
    lab.assert_exact(2, KDEV, "kernel node after up");
    let flannel_node = lab.programmed("n3", KDEV);
    let want_flannel = lab.expected(3, KDEV, true);
    assert_eq!(flannel_node, want_flannel, "the flannel node's own state");
    lab.assert_exact(1, TAP, "userspace node after up");

    // 3. Wire: decode, and userspace vs kernel encapsulation of the same datagram.
    let far = lab.pod_ip(3, 1);
    let cap = Capture::start(
        &lab,
        "n1",
        &format!("udp port {PORT} and host {}", node_ip(3)),
        4,
    );
    lab.exec("n1-p1", &["ping", "-c", "2", "-i", "0.2", "-W", "2", &far]);
    let (file, frames) = cap.finish(Duration::from_secs(5));
    let decoded = decode_vxlan(&file);
    assert_eq!(decoded.len(), frames.len(), "{decoded:?}");
    assert!(
        decoded.iter().all(|&(p, v)| p == PORT && v == VNI),
        "not VXLAN VNI {VNI} on port {PORT}: {decoded:?}"
    );
    println!(
        "wire: {} packets between n1 (userspace) and n3 (flannel) decode as VXLAN, VNI {VNI}, dst port {PORT}",
        frames.len()
    );

    let far_ip: Ipv4Addr = far.parse().unwrap();
    let payload: Vec<u8> = (0u8..64).collect();
    let filter = format!("udp dst port {PORT} and src host {}", node_ip(1));
    let capture_one = || {
        let cap = Capture::start(&lab, "n1", &filter, 1);
        send_fixed_datagram(&lab.ns("n1-p1"), far_ip, &payload);
        cap.finish(Duration::from_secs(5)).1.remove(0)
    };
    let by_userspace = capture_one();
    lab.must(&["restart-agent", "1", "kernel"]);
    lab.assert_exact(1, KDEV, "n1 switched to kernel");
    let mut by_kernel = capture_one();
    // The userspace sender puts finished inner checksums on the wire (what a real NIC
    // receiving it needs); the kernel's vxlan device at default offloads leaves the
    // inner UDP checksum partial for the NIC — a veth passes it on as it is.
    let inner = 50;
    assert_eq!(
        partial::detect(&by_userspace[inner..]),
        None,
        "userspace sent a partial inner checksum"
    );
    assert!(
        inner_l4_verifies(&by_userspace[inner..]),
        "userspace's inner UDP checksum is wrong"
    );
    if let Some(p) = partial::detect(&by_kernel[inner..]) {
        println!("wire: the kernel dataplane left the inner UDP checksum partial (default offloads); finished for the comparison");
        p.complete(&mut by_kernel[inner..]);
    }
    let differing = compare_encapsulations(&by_userspace, &by_kernel);
    println!(
        "wire: {}-byte frame, userspace and kernel encapsulations identical except {differing:?} (allowed: {:?})",
        by_userspace.len(),
        MAY_DIFFER.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    assert_eq!(&by_kernel[42..50], &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);

    // 4. Switching keeps the subnet and leaves nothing of the other dataplane.
    assert_eq!(
        lab.subnet_of(1),
        subnets[0],
        "subnet kept across the switch"
    );
    lab.check(24, "n1 on the kernel dataplane");
    lab.must(&["restart-agent", "1", "userspace"]);
    assert_eq!(lab.subnet_of(1), subnets[0]);
    lab.assert_exact(1, TAP, "n1 switched back to userspace");
    assert!(
        lab.ip_json("n1", &["route", "show", "dev", KDEV])
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "no route left on {KDEV}"
    );
    lab.check(24, "n1 back on userspace");
    println!(
        "switching n1 userspace -> kernel -> userspace kept {} and left nothing behind",
        subnets[0]
    );

    // 5. Peer changes seen by the kernel node.
    let taken: BTreeSet<String> = lab.leases().into_iter().map(|l| l.0).collect();
    let ghost = (200..=254)
        .map(|x| format!("10.244.{x}.0/24"))
        .find(|s| !taken.contains(s))
        .unwrap();
    let ghost_key = format!("{PREFIX_KEY}{}", ghost.replace('/', "-"));
    let ghost_gw = ghost.split('/').next().unwrap().to_string();
    let put_ghost = |ip: &str, mac: &str| {
        lab.etcdctl(&[
            "put",
            &ghost_key,
            &format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":7,"VtepMAC":"{mac}"}}}}"#),
        ]);
    };
    let n2 = |p: &Programmed, s: &str| p.fdb.contains(s);
    put_ghost("192.168.100.99", "02:00:00:aa:bb:01");
    lab.assert_exact(2, KDEV, "ghost peer added");
    put_ghost("192.168.100.99", "02:00:00:aa:bb:02");
    lab.assert_exact(2, KDEV, "ghost peer's VtepMAC changed");
    assert!(!n2(
        &lab.programmed("n2", KDEV),
        "02:00:00:aa:bb:01 dst 192.168.100.99"
    ));
    put_ghost("192.168.100.98", "02:00:00:aa:bb:02");
    lab.assert_exact(2, KDEV, "ghost peer's PublicIP changed");
    lab.etcdctl(&["del", &ghost_key]);
    lab.assert_exact(2, KDEV, "ghost peer removed");
    let p = lab.programmed("n2", KDEV);
    assert!(
        !p.routes.iter().any(|r| r.starts_with(&ghost))
            && !p
                .neigh
                .iter()
                .any(|n| n.starts_with(&format!("{ghost_gw} ")))
    );

    // A lease that goes while the kernel agent is down: pruned at the next start;
    // meanwhile the device keeps carrying pod traffic.
    put_ghost("192.168.100.97", "02:00:00:aa:bb:03");
    lab.assert_exact(2, KDEV, "second ghost added");
    lab.must(&["stop-agent", "2"]);
    assert!(
        lab.programmed("n2", KDEV).overlay.contains(KDEV),
        "device kept on stop"
    );
    lab.exec("n3-p1", &["ping", "-c", "1", "-W", "2", &lab.pod_ip(2, 1)]);
    println!("n2's agent stopped: {KDEV} stays, pod traffic to n2 still flows");
    lab.etcdctl(&["del", &ghost_key]);
    lab.must(&["start-agent", "2"]);
    lab.assert_exact(2, KDEV, "stale ghost pruned after restart");
    assert_eq!(lab.subnet_of(2), subnets[1]);

    // A VNI too long for flannel's device name (`flannel.10000000` is 16 characters,
    // one over IFNAMSIZ): the kernel agent refuses it at start, before it claims or
    // renews anything, and says what to do.
    let config_key = PREFIX_KEY.replace("subnets/", "config");
    let config = lab.etcdctl(&["get", "--print-value-only", &config_key]);
    let mut long_vni: Value = serde_json::from_str(config.trim()).unwrap();
    long_vni["Backend"]["VNI"] = 10_000_000.into();
    lab.etcdctl(&["put", &config_key, &long_vni.to_string()]);
    lab.must(&["stop-agent", "2"]);
    let registry = || lab.etcdctl(&["get", "--prefix", PREFIX_KEY]);
    let before = registry();
    let out = lab.refused_start("2", "n2-long-vni.log", "with an 8-digit VNI");
    assert!(
        out.contains("\"flannel.10000000\" is not a valid interface name")
            && out.contains("use a VNI of at most 7 digits"),
        "{out}"
    );
    assert_eq!(registry(), before, "a refused kernel agent writes no lease");
    lab.etcdctl(&["put", &config_key, config.trim()]);
    lab.must(&["start-agent", "2"]);
    lab.assert_exact(2, KDEV, "n2 restarted on the config's VNI");
    assert_eq!(lab.subnet_of(2), subnets[1]);
    println!("an 8-digit VNI refused by the kernel agent before it wrote anything");

    // 6. Migration of the flannel node to vxmesh (kernel), then rollback.
    let flannel_mac = lab.vtep_mac("n3", KDEV);
    lab.must(&["restart-agent", "3", "kernel"]);
    assert_eq!(lab.subnet_of(3), subnets[2], "migration keeps the subnet");
    lab.assert_exact(3, KDEV, "n3 migrated from flannel to vxmesh kernel");
    let vxmesh_mac = lab.vtep_mac("n3", KDEV);
    assert_ne!(vxmesh_mac, flannel_mac, "vxmesh sets its stable VtepMAC");
    lab.assert_exact(2, KDEV, "n2 follows n3's new VtepMAC");
    lab.assert_exact(1, TAP, "n1 follows n3's new VtepMAC");
    lab.check(24, "n3 migrated to vxmesh (kernel)");
    lab.must(&["restart-agent", "3", "flannel"]);
    assert_eq!(lab.subnet_of(3), subnets[2], "rollback keeps the subnet");
    assert_eq!(
        lab.vtep_mac("n3", KDEV),
        vxmesh_mac,
        "flanneld adopts the device and keeps its MAC"
    );
    lab.check(24, "n3 rolled back to flannel");
    println!(
        "migration flannel -> vxmesh -> flannel on n3 kept {} and all pods reachable",
        subnets[2]
    );

    let prefix = lab.prefix.clone();
    drop(lab);
    let left = sh(&["ip", "netns", "list"]);
    assert!(!left.contains(&prefix), "namespaces left: {left}");
}

/// Linux release as (major, minor), from `uname -r`.
fn kernel_release() -> (u32, u32) {
    let r = sh(&["uname", "-r"]);
    let mut it = r
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The underlay TAP path (`--egress-tunnel-gso`, on by default) on the two userspace
/// nodes of a cluster with a flannel-recipe node (kernel VXLAN at its veth's default
/// offloads), every agent at its defaults: every pod pair reaches every other, TCP runs
/// both ways between the userspace nodes and between a userspace node and the flannel
/// node, both peers (the vxmesh node's TAP and flanneld's `flannel.<VNI>`) answered
/// the path probes, and the userspace node's GSO frames left whole through its underlay
/// TAP — all but the few sent before a probe's answer was in. On a kernel without
/// UDP-tunnel GSO on TAP (before 6.17) the agents say so and the cluster works the
/// usual way.
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn egress_tunnel_gso_cluster() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vxg",
        &[
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_DATAPLANES", "userspace userspace flannel"),
            ("VXLAB_BACKEND", BACKEND),
        ],
    );
    let out = lab.must(&["up"]);
    println!("{out}");
    assert!(out.contains("24 of 24 reachable"), "{out}");
    assert!(out.contains("25 passed, 0 failed"), "{out}");
    let supported = kernel_release() >= (6, 17);
    for n in ["n1", "n2"] {
        let on = lab.status(n)["offloads"]["egress_tunnel_gso"].as_bool();
        assert_eq!(on, Some(supported), "{n}: {}", lab.status(n)["offloads"]);
    }
    if !supported {
        println!(
            "SKIP: Linux {:?} has no UDP-tunnel GSO on TAP; the cluster ran the usual way",
            kernel_release()
        );
        return;
    }
    let before = lab.status("n1")["counters"].clone();
    let ctl = lab.bin.join("vxmeshctl");
    // Whether n1's GSO frames to node `far` take the underlay TAP now.
    let proven = |far: u32| -> bool {
        let peers: Value =
            serde_json::from_str(&lab.exec("n1", &[ctl.to_str().unwrap(), "peers", "--json"]))
                .unwrap();
        let subnet = lab.subnet_of(far);
        let p = peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["subnet"] == subnet.as_str());
        p.unwrap_or_else(|| panic!("no peer {subnet} in {peers}"))["underlay_tap_path"].as_bool()
            == Some(true)
    };
    for (far, what) in [(2, "userspace"), (3, "flannel")] {
        let out_bps = lab.iperf((far, 1), (1, 1));
        // Both peers, the vxmesh node and the flannel node, answered the path probe
        // (right after the traffic: a proof lasts VALID_MS).
        assert!(proven(far), "n1's path to the {what} node is not proven");
        let in_bps = lab.iperf((1, 1), (far, 1));
        println!(
            "iperf3 n1 -> {what} {:.2} Gbit/s, {what} -> n1 {:.2} Gbit/s",
            out_bps / 1e9,
            in_bps / 1e9
        );
        assert!(
            out_bps > MIN_TCP_BPS && in_bps > MIN_TCP_BPS,
            "{what}: {out_bps} / {in_bps}"
        );
    }
    let after = lab.status("n1")["counters"].clone();
    let grew = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    println!(
        "n1: underlay_tap_frames +{}, fallbacks +{}, tso_frames_segmented +{}, probes sent +{} answered +{}",
        grew("underlay_tap_frames"),
        grew("underlay_tap_fallbacks"),
        grew("tso_frames_segmented"),
        grew("underlay_probes_sent"),
        grew("underlay_probes_answered")
    );
    assert!(grew("underlay_tap_frames") > 1000, "{after}");
    assert_eq!(grew("underlay_tap_fallbacks"), 0, "{after}");
    assert!(
        grew("tso_frames_segmented") * 20 < grew("underlay_tap_frames"),
        "{after}"
    );
    // One answer from each peer at least (some may have come during `up`).
    assert!(
        after["underlay_probes_answered"].as_u64() >= Some(2),
        "{after}"
    );
    let dev = lab.ip_json("n1", &["-d", "link", "show", "vxmesh0u"]);
    assert_eq!(
        dev[0]["ifalias"].as_str(),
        Some("vxmesh underlay tap"),
        "{dev}"
    );
}

/// A host firewall that drops what the underlay TAP path forwards (a raw-table drop on
/// `vxmesh0u`, ahead of any FORWARD accept), between two userspace nodes at their
/// defaults: the path probes go unanswered, so node 1 keeps sending the usual way —
/// TCP runs at a working rate and no frame takes the dead path — says so once in its
/// log, and shows the peer's path unproven; with the drop gone the path is proven and
/// used again within the slow retry. Linux ≥ 6.17 (before that there is no path).
#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn a_firewalled_underlay_tap_costs_speed_not_reachability() {
    require_root();
    require_etcd();
    if kernel_release() < (6, 17) {
        println!(
            "SKIP: Linux {:?} has no UDP-tunnel GSO on TAP",
            kernel_release()
        );
        return;
    }
    let lab = Lab::new(
        "vxw",
        &[
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_NODES", "2"),
            ("VXLAB_DATAPLANES", "userspace userspace"),
            ("VXLAB_BACKEND", BACKEND),
        ],
    );
    let out = lab.must(&["up"]);
    assert!(out.contains("8 of 8 reachable"), "{out}");
    let drop = ["-t", "raw", "PREROUTING", "-i", "vxmesh0u", "-j", "DROP"];
    let rule = |op: &str| {
        let mut args = vec!["iptables", drop[0], drop[1], op];
        args.extend_from_slice(&drop[2..]);
        lab.exec("n1", &args);
    };
    rule("-I");
    // Whatever `up` proved has lapsed (VALID_MS, 3.5 s) before the traffic starts.
    std::thread::sleep(Duration::from_millis(
        vxmesh_dataplane::path_probe::VALID_MS + 500,
    ));
    let path_to_n2 = || -> bool {
        let ctl = lab.bin.join("vxmeshctl");
        let peers: Value =
            serde_json::from_str(&lab.exec("n1", &[ctl.to_str().unwrap(), "peers", "--json"]))
                .unwrap();
        peers[0]["underlay_tap_path"].as_bool().unwrap_or(false)
    };
    let counter = |k: &str| lab.status("n1")["counters"][k].as_u64().unwrap_or(0);
    let frames = counter("underlay_tap_frames");
    let answered = counter("underlay_probes_answered");
    let log = lab.state.join("vxmeshd-n1.log");
    let warned = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the underlay TAP path to this peer is not proven")
    };
    // Five probes a second apart go unanswered while frames flow; each 2 s iperf3
    // carries about two.
    let mut rates = Vec::new();
    for _ in 0..6 {
        rates.push(lab.iperf((2, 1), (1, 1)) / 1e9);
        if warned() {
            break;
        }
    }
    println!("n1 -> n2 behind the drop: {rates:.2?} Gbit/s");
    assert!(warned(), "no warning in {}", log.display());
    assert!(!path_to_n2());
    assert_eq!(
        counter("underlay_tap_frames"),
        frames,
        "a frame took the dead path"
    );
    assert_eq!(counter("underlay_probes_answered"), answered);
    assert!(counter("underlay_probes_sent") >= 5);
    // The firewall fixed: the next probe (the slow retry, 10 s) proves the path again.
    rule("-D");
    let t = Instant::now();
    while !path_to_n2() && t.elapsed() < Duration::from_secs(20) {
        lab.iperf((2, 1), (1, 1));
    }
    assert!(path_to_n2(), "not proven again after {:?}", t.elapsed());
    println!(
        "proven again {:.1} s after the drop went",
        t.elapsed().as_secs_f64()
    );
    lab.iperf((2, 1), (1, 1));
    assert!(counter("underlay_tap_frames") > frames);
}
