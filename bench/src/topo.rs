//! The benchmark topology, built from scratch for every mode and torn down by
//! dropping it:
//!
//! ```text
//!  pod A (eth0 <subnetA>.2) ─ vethpod ┐                    ┌ vethpod ─ pod B (eth0 <subnetB>.2)
//!                                 cni0 <subnetA>.1    cni0 <subnetB>.1
//!                            node A ── eth0 192.168.200.1 ══ veth ══ 192.168.200.2 eth0 ── node B
//! ```
//!
//! Between the nodes, per [`Mode`]: plain routes (no overlay); flannel's kernel
//! vxlan recipe (`flannel.1`, VNI 1, port 8472, nolearning, permanent neighbour +
//! fdb + onlink route per peer); or vxmeshd on each node with a single-member
//! etcd on node A's underlay address. Pods are wired by hand identically in every
//! mode (bridge `cni0` with `<subnet>.1`, pod `<subnet>.2`, default route via the
//! bridge, MTU of the mode: 1500, or underlay − 50 for the overlays, which for
//! vxmesh is read from the agent's subnet.env).
//!
//! The IPv6 modes make the nodes dual stack: the underlay gets `fd00:200::1`/`::2`, each
//! pod an IPv6 address in its node's /64 of `fd00:10:244::/56` beside its IPv4 one, and
//! the measured traffic is the pods' IPv6; kernel VXLAN adds flanneld's `flannel-v6.1`
//! (VXLAN over IPv6, MTU underlay − 70, the same three entries per peer), vxmesh gets a
//! dual-stack network config. Pods keep `FLANNEL_MTU` (underlay − 50), as flanneld
//! and vxmeshd write it for both families.
//!
//! Every namespace is named `<prefix>-<mode tag>-<role>`, with the harness's pid
//! in the prefix; interfaces live inside those namespaces only (none in the root
//! namespace), so names never collide and never exceed 15 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;
use vxmesh_subnet_env::SubnetEnv;
use vxmesh_testkit::{run, veth, Netns};

use crate::proc::{ns_output, run_bounded, Daemon};
use crate::report::Mode;
use crate::stop;

pub const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
pub const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);
pub const UNDERLAY_MTU: u32 = 1500;
/// IPv4 + UDP + VXLAN + inner Ethernet.
pub const VXLAN_OVERHEAD: u32 = 50;
pub const NETWORK: &str = "10.244.0.0/16";
pub const UNDERLAY6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
pub const UNDERLAY6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
/// IPv6 + UDP + VXLAN + inner Ethernet: the kernel's default MTU cut for a vxlan
/// device over IPv6, which is what flanneld's `flannel-v6.<VNI>` gets.
pub const VXLAN6_OVERHEAD: u32 = 70;
pub const NETWORK6: &str = "fd00:10:244::/56";
const STATIC_SUBNET6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0);
const STATIC_SUBNET6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0);
const VXLAN6_MAC_A: &str = "0e:76:78:00:01:06";
const VXLAN6_MAC_B: &str = "0e:76:78:00:02:06";
/// Pod subnets of the modes without an agent to allocate them.
const STATIC_SUBNET_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
const STATIC_SUBNET_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 0);
const VXLAN_MAC_A: &str = "0e:76:78:00:01:00";
const VXLAN_MAC_B: &str = "0e:76:78:00:02:00";
pub const HEALTHZ_PORT: u16 = 8471;
const ETCD_PORT: u16 = 2379;
/// Temp dirs (etcd data, subnet files) are `<tmp>/vxmesh-bench-<pid>-<random>`.
const STATE_DIR_BASE: &str = "vxmesh-bench-";

/// Where the harness's binaries and logs are, and what to name things.
#[derive(Debug, Clone)]
pub struct Context {
    /// Namespace name prefix, unique per run (contains the pid).
    pub prefix: String,
    /// Directory with vxmeshd and vxmeshctl.
    pub bin_dir: PathBuf,
    /// Daemon logs go here.
    pub log_dir: PathBuf,
    /// Extra vxmeshd flags.
    pub agent_args: Vec<String>,
    /// UDP (tunnel) segmentation off on the underlay veth.
    pub segment_underlay: bool,
    /// TCP congestion control for the iperf3 TCP tests (`iperf3 -C`); `None`: the
    /// pods' default.
    pub tcp_cc: Option<String>,
    /// Distinguishes log files of repeats (e.g. `r2`).
    pub run_tag: String,
}

impl Context {
    fn vxmeshd(&self) -> String {
        self.bin_dir.join("vxmeshd").display().to_string()
    }
    pub fn vxmeshctl(&self) -> String {
        self.bin_dir.join("vxmeshctl").display().to_string()
    }
    fn log(&self, mode: Mode, what: &str) -> PathBuf {
        self.log_dir
            .join(format!("{}-{}-{what}.log", self.run_tag, mode.tag()))
    }
}

/// A node: its namespace, underlay address and pod subnet (`x.y.z.0`, /24); in the
/// IPv6 modes also its IPv6 pod subnet (a /64's network address).
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    pub underlay_ip: Ipv4Addr,
    pub subnet: Option<Ipv4Addr>,
    pub subnet6: Option<Ipv6Addr>,
}

/// A pod namespace and the address the measurements use (IPv6 in the IPv6 modes).
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: IpAddr,
}

/// The two nodes, their pods and daemons. Fields drop in order: agents, etcd,
/// pods, nodes, state directory.
#[derive(Debug)]
pub struct Topology {
    pub mode: Mode,
    /// vxmeshd on node A and node B (vxmesh mode only).
    pub agents: Vec<Daemon>,
    etcd: Option<Daemon>,
    pub pod_a: Pod,
    pub pod_b: Pod,
    pub node_a: Node,
    pub node_b: Node,
    /// MTU of the pods' interfaces.
    pub pod_mtu: u32,
    _state: TempDir,
}

/// Offset `n` into a /24 (`x.y.z.0` + n).
fn host(subnet: Ipv4Addr, n: u8) -> Ipv4Addr {
    let o = subnet.octets();
    Ipv4Addr::new(o[0], o[1], o[2], n)
}

/// Offset `n` into a /64 (`<network>::` + n).
fn host6(subnet: Ipv6Addr, n: u16) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet) | u128::from(n))
}

/// Writes a sysctl inside `ns` (a thread that has entered the namespace sees
/// that namespace's `/proc/sys/net`).
fn sysctl(ns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    let v = value.to_string();
    ns.run(move || std::fs::write(&path, v))?
        .with_context(|| format!("sysctl {key}={value} in {}", ns.name()))
}

impl Topology {
    /// Builds the topology of `mode` and checks pod A reaches pod B.
    pub fn build(mode: Mode, ctx: &Context) -> anyhow::Result<Topology> {
        let state = tempfile::Builder::new()
            .prefix(&format!("{STATE_DIR_BASE}{}-", std::process::id()))
            .tempdir()
            .context("creating a temp dir")?;
        let name = |role: &str| format!("{}-{}-{role}", ctx.prefix, mode.tag());
        let a = Netns::new(&name("a"))?;
        let b = Netns::new(&name("b"))?;
        veth(
            &a,
            "eth0",
            &format!("{UNDERLAY_A}/24"),
            &b,
            "eth0",
            &format!("{UNDERLAY_B}/24"),
        )?;
        for ns in [&a, &b] {
            ns.ip(&["link", "set", "eth0", "mtu", &UNDERLAY_MTU.to_string()])?;
            sysctl(ns, "net/ipv4/ip_forward", "1")?;
            if ctx.segment_underlay {
                ns.exec(
                    "ethtool",
                    &[
                        "-K",
                        "eth0",
                        "tx-udp-segmentation",
                        "off",
                        "tx-udp_tnl-segmentation",
                        "off",
                        "tx-udp_tnl-csum-segmentation",
                        "off",
                    ],
                )
                .context("ethtool -K eth0 (--segment-underlay)")?;
            }
        }
        if mode.ipv6() {
            for (ns, ip) in [(&a, UNDERLAY6_A), (&b, UNDERLAY6_B)] {
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                sysctl(ns, "net/ipv6/conf/all/forwarding", "1")?;
            }
        }
        let mut node_a = Node {
            ns: a,
            underlay_ip: UNDERLAY_A,
            subnet: None,
            subnet6: None,
        };
        let mut node_b = Node {
            ns: b,
            underlay_ip: UNDERLAY_B,
            subnet: None,
            subnet6: None,
        };
        stop::check()?;

        let mut agents = Vec::new();
        let mut etcd = None;
        let pod_mtu = match mode {
            Mode::NoOverlay => {
                node_a.subnet = Some(STATIC_SUBNET_A);
                node_b.subnet = Some(STATIC_SUBNET_B);
                for (n, peer_subnet, via) in [
                    (&node_a, STATIC_SUBNET_B, UNDERLAY_B),
                    (&node_b, STATIC_SUBNET_A, UNDERLAY_A),
                ] {
                    n.ns.ip(&[
                        "route",
                        "add",
                        &format!("{peer_subnet}/24"),
                        "via",
                        &via.to_string(),
                    ])?;
                }
                UNDERLAY_MTU
            }
            Mode::KernelVxlan | Mode::KernelVxlanMasq | Mode::KernelVxlan6 => {
                node_a.subnet = Some(STATIC_SUBNET_A);
                node_b.subnet = Some(STATIC_SUBNET_B);
                let mtu = UNDERLAY_MTU - VXLAN_OVERHEAD;
                flannel_vxlan(&node_a, VXLAN_MAC_A, mtu)?;
                flannel_vxlan(&node_b, VXLAN_MAC_B, mtu)?;
                flannel_peer(&node_a, STATIC_SUBNET_B, VXLAN_MAC_B, UNDERLAY_B)?;
                flannel_peer(&node_b, STATIC_SUBNET_A, VXLAN_MAC_A, UNDERLAY_A)?;
                if mode.ipv6() {
                    node_a.subnet6 = Some(STATIC_SUBNET6_A);
                    node_b.subnet6 = Some(STATIC_SUBNET6_B);
                    let mtu6 = UNDERLAY_MTU - VXLAN6_OVERHEAD;
                    flannel_vxlan6(&node_a, VXLAN6_MAC_A, UNDERLAY6_A, mtu6)?;
                    flannel_vxlan6(&node_b, VXLAN6_MAC_B, UNDERLAY6_B, mtu6)?;
                    flannel_peer6(&node_a, STATIC_SUBNET6_B, VXLAN6_MAC_B, UNDERLAY6_B)?;
                    flannel_peer6(&node_b, STATIC_SUBNET6_A, VXLAN6_MAC_A, UNDERLAY6_A)?;
                }
                for node in [&node_a, &node_b] {
                    vxmeshd_rules(node, mode.masq())?;
                }
                mtu
            }
            Mode::Vxmesh | Mode::VxmeshMasq | Mode::Vxmesh6 | Mode::Vxmesh6Threads => {
                let e = start_etcd(&node_a.ns, ctx, state.path(), mode.ipv6())?;
                etcd = Some(e);
                let mut mtus = Vec::new();
                for (node, tag) in [(&node_a, "a"), (&node_b, "b")] {
                    let dir = state.path().join(tag);
                    std::fs::create_dir_all(&dir)?;
                    let subnet_file = dir.join("subnet.env");
                    let mut args: Vec<String> = [
                        "--etcd-endpoints",
                        &etcd_url(),
                        "--iface",
                        "eth0",
                        "--subnet-file",
                        &subnet_file.display().to_string(),
                        "--healthz-port",
                        &HEALTHZ_PORT.to_string(),
                        "--subnet-lease-ttl",
                        "60s",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                    if !mode.masq() {
                        args.push("--ip-masq=false".into());
                    }
                    if mode == Mode::Vxmesh6Threads {
                        args.push("--ipv6-dataplane=userspace".into());
                    }
                    args.extend(ctx.agent_args.iter().cloned());
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    let log = ctx.log(mode, &format!("vxmeshd-{tag}"));
                    agents.push(Daemon::spawn(&node.ns, &ctx.vxmeshd(), &argv, &log)?);
                }
                for (i, (node, tag)) in [(&mut node_a, "a"), (&mut node_b, "b")]
                    .into_iter()
                    .enumerate()
                {
                    wait_agent_ready(&node.ns, ctx, &mut agents[i])
                        .with_context(|| format!("vxmeshd on node {tag}"))?;
                    let env = std::fs::read_to_string(state.path().join(tag).join("subnet.env"))
                        .with_context(|| format!("reading node {tag}'s subnet.env"))?;
                    let (subnet, mtu) = parse_subnet_env(&env)
                        .with_context(|| format!("node {tag}'s subnet.env: {env}"))?;
                    node.subnet = Some(subnet);
                    if mode.ipv6() {
                        node.subnet6 = Some(parse_subnet_env6(&env).with_context(|| {
                            format!("node {tag}'s subnet.env has no /64 FLANNEL_IPV6_SUBNET: {env}")
                        })?);
                    }
                    mtus.push(mtu);
                }
                for node in [&node_a, &node_b] {
                    wait_peers(&node.ns, ctx, 1)?;
                }
                match mtus[..] {
                    [x, y] if x == y => x,
                    _ => bail!("the agents wrote different FLANNEL_MTU values: {mtus:?}"),
                }
            }
        };
        stop::check()?;
        let pod_a = make_pod(&node_a, &name("pa"), pod_mtu, mode.ipv6())?;
        let pod_b = make_pod(&node_b, &name("pb"), pod_mtu, mode.ipv6())?;
        let topo = Topology {
            mode,
            agents,
            etcd,
            pod_a,
            pod_b,
            node_a,
            node_b,
            pod_mtu,
            _state: state,
        };
        topo.check_reachable()?;
        Ok(topo)
    }

    /// Pod A pings pod B (a few tries: the first may race neighbour set-up).
    fn check_reachable(&self) -> anyhow::Result<()> {
        let dst = self.pod_b.ip.to_string();
        for _ in 0..20 {
            stop::check()?;
            let mut c = self.pod_a.ns.command("ping");
            c.args(["-c", "1", "-W", "1", &dst]);
            if run_bounded(c, Duration::from_secs(5))?.status.success() {
                return Ok(());
            }
            stop::sleep(Duration::from_millis(250))?;
        }
        let routes_a = self.node_a.ns.ip(&["route"]).unwrap_or_default();
        let routes_b = self.node_b.ns.ip(&["route"]).unwrap_or_default();
        bail!(
            "{}: pod A cannot reach pod B at {dst}; node A routes:\n{routes_a}node B routes:\n{routes_b}",
            self.mode.label()
        )
    }

    /// Pids of the vxmeshd processes (empty unless vxmesh mode).
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().map(Daemon::pid).collect()
    }

    /// Fails if an agent or etcd has died.
    pub fn ensure_daemons(&mut self) -> anyhow::Result<()> {
        for a in &mut self.agents {
            a.ensure_running()?;
        }
        if let Some(e) = self.etcd.as_mut() {
            e.ensure_running()?;
        }
        Ok(())
    }
}

fn etcd_url() -> String {
    format!("http://{UNDERLAY_A}:{ETCD_PORT}")
}

fn etcdctl(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let url = etcd_url();
    let mut full = vec!["--endpoints", url.as_str()];
    full.extend_from_slice(args);
    let mut c = ns.command("etcdctl");
    c.args(&full).env("ETCDCTL_API", "3");
    let f = run_bounded(c, Duration::from_secs(10))?;
    if !f.status.success() {
        bail!("etcdctl {}: {}", args.join(" "), f.stderr.trim());
    }
    Ok(f.stdout)
}

/// A single-member etcd on node A's underlay address, data in the temp dir,
/// with flannel's network config put (dual stack: `EnableIPv6` and an IPv6Network).
fn start_etcd(ns: &Netns, ctx: &Context, state: &Path, ipv6: bool) -> anyhow::Result<Daemon> {
    let url = etcd_url();
    let data = state.join("etcd");
    let data = data.display().to_string();
    let mut d = Daemon::spawn(
        ns,
        "etcd",
        &[
            "--name",
            "vxbench",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "vxbench=http://127.0.0.1:2380",
        ],
        &ctx.log(Mode::Vxmesh, "etcd"),
    )?;
    let mut healthy = false;
    for _ in 0..100 {
        stop::sleep(Duration::from_millis(100))?;
        d.ensure_running()?;
        if etcdctl(ns, &["endpoint", "health"]).is_ok() {
            healthy = true;
            break;
        }
    }
    if !healthy {
        bail!("etcd did not become healthy within 10 s");
    }
    let config = if ipv6 {
        format!(
            r#"{{"Network":"{NETWORK}","EnableIPv6":true,"IPv6Network":"{NETWORK6}","Backend":{{"Type":"vxlan"}}}}"#
        )
    } else {
        format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#)
    };
    etcdctl(ns, &["put", "/coreos.com/network/config", &config])?;
    Ok(d)
}

fn wait_agent_ready(ns: &Netns, ctx: &Context, agent: &mut Daemon) -> anyhow::Result<()> {
    for _ in 0..60 {
        agent.ensure_running()?;
        let mut c = ns.command(&ctx.vxmeshctl());
        c.args(["wait-ready", "--timeout", "1"]);
        if run_bounded(c, Duration::from_secs(10))?.status.success() {
            return Ok(());
        }
        stop::check()?;
    }
    bail!("not ready within about 60 s (see its log)")
}

/// Waits until the agent in `ns` has programmed at least `n` peers.
fn wait_peers(ns: &Netns, ctx: &Context, n: usize) -> anyhow::Result<()> {
    for _ in 0..100 {
        let out = ns_output(
            ns,
            &ctx.vxmeshctl(),
            &["peers", "--json"],
            Duration::from_secs(5),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if v.as_array().is_some_and(|a| a.len() >= n) {
            return Ok(());
        }
        stop::sleep(Duration::from_millis(200))?;
    }
    bail!(
        "the agent in {} saw fewer than {n} peers after 20 s",
        ns.name()
    )
}

/// `FLANNEL_SUBNET` (as the /24's network address) and `FLANNEL_MTU` of a complete
/// subnet file (the topology's addressing assumes /24 node subnets).
pub fn parse_subnet_env(text: &str) -> Option<(Ipv4Addr, u32)> {
    let env = SubnetEnv::parse(text.as_bytes()).ok()?;
    let subnet = env.subnet.filter(|s| s.prefix() == 24)?;
    Some((subnet.network(), env.mtu))
}

/// `FLANNEL_IPV6_SUBNET`'s /64 (its network address) of a dual-stack subnet file.
pub fn parse_subnet_env6(text: &str) -> Option<Ipv6Addr> {
    let env = SubnetEnv::parse(text.as_bytes()).ok()?;
    let subnet = env.ipv6_subnet.filter(|s| s.prefix() == 64)?;
    Some(subnet.network())
}

/// The rules vxmeshd installs on `node` with its default flags, installed by vxmeshd's
/// own code inside the node's namespace, so kernel VXLAN pays what vxmesh pays: the
/// FORWARD accepts (`--iptables-forward-rules`, on by default in flanneld and vxmeshd
/// alike, so a flannel node has them too) for IPv4 and, on a node with an IPv6 subnet,
/// for IPv6; with `masq` also the masquerade chain (`--ip-masq`), which makes the kernel
/// track every connection. iptables backend.
fn vxmeshd_rules(node: &Node, masq: bool) -> anyhow::Result<()> {
    use vxmesh_control::masq::{Backend, Rules};
    use vxmesh_control::subnet::Subnet;
    use vxmesh_control::subnet6::Subnet6;
    let rules = Rules {
        masquerade: masq,
        ..Rules::vxmeshd_default(Backend::Iptables)
    };
    let subnet = node.subnet.context("node without a subnet")?;
    let network: Subnet = NETWORK.parse().context("the Network")?;
    let own: Subnet = format!("{subnet}/24")
        .parse()
        .context("the node's subnet")?;
    node.ns
        .run(move || vxmesh_control::masq::apply(&network, &own, rules))?
        .with_context(|| format!("installing vxmeshd's rules in {}", node.ns.name()))?;
    if let Some(subnet6) = node.subnet6 {
        let network6: Subnet6 = NETWORK6.parse().context("the IPv6 Network")?;
        let own6: Subnet6 = format!("{subnet6}/64")
            .parse()
            .context("the node's IPv6 subnet")?;
        node.ns
            .run(move || vxmesh_control::masq::apply6(&network6, &own6, rules))?
            .with_context(|| format!("installing vxmeshd's IPv6 rules in {}", node.ns.name()))?;
    }
    Ok(())
}

/// One of flanneld's vxlan devices on `node`: `dev` (`flannel.1`, or `flannel-v6.1` over
/// IPv6), VNI 1, dstport 8472, nolearning, `local` = the underlay address, its own
/// address `addr` (`<subnet>.0/32`, `<IPv6 subnet>::/128`).
fn flannel_device(
    node: &Node,
    dev: &str,
    mac: &str,
    local: IpAddr,
    mtu: u32,
    addr: &str,
) -> anyhow::Result<()> {
    let ns = &node.ns;
    ns.ip(&[
        "link",
        "add",
        dev,
        "address",
        mac,
        "mtu",
        &mtu.to_string(),
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local.to_string(),
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])?;
    ns.ip(&["addr", "add", addr, "dev", dev, "nodad"])?;
    ns.ip(&["link", "set", dev, "up"])?;
    Ok(())
}

/// Flannel's vxlan device on `node`: `flannel.1`, MTU = underlay − 50, `<subnet>.0/32`.
fn flannel_vxlan(node: &Node, mac: &str, mtu: u32) -> anyhow::Result<()> {
    let subnet = node.subnet.context("node without a subnet")?;
    let addr = format!("{subnet}/32");
    flannel_device(node, "flannel.1", mac, node.underlay_ip.into(), mtu, &addr)
}

/// flanneld's IPv6 device on `node`: `flannel-v6.1` from the underlay's IPv6 address,
/// the subnet's first address as /128.
fn flannel_vxlan6(node: &Node, mac: &str, local: Ipv6Addr, mtu: u32) -> anyhow::Result<()> {
    let subnet6 = node.subnet6.context("node without an IPv6 subnet")?;
    let addr = format!("{subnet6}/128");
    flannel_device(node, "flannel-v6.1", mac, local.into(), mtu, &addr)
}

/// Flannel's three entries per remote lease on `dev`, in its order: permanent
/// neighbour `<gateway> lladdr <peer MAC>`, fdb entry `<peer MAC> dst <peer IP>`, onlink
/// route `<peer subnet> via <gateway>` (the gateway is the peer subnet's first address).
fn flannel_entries(
    node: &Node,
    dev: &str,
    peer_subnet: (IpAddr, u8),
    peer_mac: &str,
    peer_ip: IpAddr,
) -> anyhow::Result<()> {
    let ns = &node.ns;
    let vtep = peer_subnet.0.to_string();
    ns.ip(&[
        "neigh",
        "add",
        &vtep,
        "lladdr",
        peer_mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])?;
    run(
        "bridge",
        &[
            "-netns",
            ns.name(),
            "fdb",
            "add",
            peer_mac,
            "dev",
            dev,
            "dst",
            &peer_ip.to_string(),
            "self",
            "permanent",
        ],
    )?;
    ns.ip(&[
        "route",
        "add",
        &format!("{vtep}/{}", peer_subnet.1),
        "via",
        &vtep,
        "dev",
        dev,
        "onlink",
    ])?;
    Ok(())
}

fn flannel_peer(
    node: &Node,
    peer_subnet: Ipv4Addr,
    peer_mac: &str,
    peer_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let subnet = (peer_subnet.into(), 24);
    flannel_entries(node, "flannel.1", subnet, peer_mac, peer_ip.into())
}

fn flannel_peer6(
    node: &Node,
    peer_subnet6: Ipv6Addr,
    peer_mac: &str,
    peer_ip6: Ipv6Addr,
) -> anyhow::Result<()> {
    let subnet = (peer_subnet6.into(), 64);
    flannel_entries(node, "flannel-v6.1", subnet, peer_mac, peer_ip6.into())
}

/// Bridge `cni0` (`<subnet>.1/24`) on the node, and a pod namespace behind it
/// (`eth0` = `<subnet>.2/24`, default route via the bridge), all at `mtu`; with
/// `ipv6`, the same in the node's IPv6 /64 (`::1` and `::2`), and the pod's IPv6
/// address is the one measured.
fn make_pod(node: &Node, name: &str, mtu: u32, ipv6: bool) -> anyhow::Result<Pod> {
    let subnet = node.subnet.context("node without a subnet")?;
    let gw = host(subnet, 1);
    let ip = host(subnet, 2);
    let mtu = mtu.to_string();
    let pod = Netns::new(name)?;
    let n = &node.ns;
    n.ip(&["link", "add", "cni0", "mtu", &mtu, "type", "bridge"])?;
    n.ip(&["addr", "add", &format!("{gw}/24"), "dev", "cni0"])?;
    n.ip(&["link", "set", "cni0", "up"])?;
    n.ip(&[
        "link", "add", "vethpod", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu,
        "netns", name,
    ])?;
    n.ip(&["link", "set", "vethpod", "master", "cni0", "up"])?;
    pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", &gw.to_string()])?;
    if !ipv6 {
        return Ok(Pod {
            ns: pod,
            ip: ip.into(),
        });
    }
    let subnet6 = node.subnet6.context("node without an IPv6 subnet")?;
    let (gw6, ip6) = (host6(subnet6, 1), host6(subnet6, 2));
    n.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{gw6}/64"),
        "dev",
        "cni0",
        "nodad",
    ])?;
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    pod.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
    Ok(Pod {
        ns: pod,
        ip: ip6.into(),
    })
}

/// The pid in `<base><pid>-…`, if `name` has that shape.
fn owner_pid(name: &str, base: &str) -> Option<i32> {
    let (pid, _) = name.strip_prefix(base)?.split_once('-')?;
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether a process (or zombie) with this pid exists.
fn pid_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Deletes namespaces named `<base><pid>-…` (with every process inside them)
/// and temp dirs `vxmesh-bench-<pid>-…` whose harness process is gone: what a
/// run killed with SIGKILL or a second Ctrl-C leaves. Returns what it removed.
pub fn remove_stale(base: &str) -> Vec<String> {
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    let mut removed = Vec::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner_pid(name, base).is_some_and(|p| !pid_exists(p)) {
            // Netns's Drop kills the processes inside and deletes the namespace.
            drop(Netns::adopt(name));
            removed.push(name.to_string());
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name, STATE_DIR_BASE).is_some_and(|p| !pid_exists(p))
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed.push(e.path().display().to_string());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_env() {
        let env = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.37.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(
            parse_subnet_env(env),
            Some((Ipv4Addr::new(10, 244, 37, 0), 1450))
        );
        assert_eq!(parse_subnet_env("FLANNEL_SUBNET=10.244.37.1/24\n"), None);
        assert_eq!(
            parse_subnet_env("FLANNEL_SUBNET=10.244.37.1/25\nFLANNEL_MTU=1450"),
            None
        );
        // A dual-stack vxmeshd's (and flanneld's) file: the IPv6 subnet's first host.
        let dual = format!(
            "{env}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3a::1/64\n"
        );
        assert_eq!(
            parse_subnet_env6(&dual),
            Some("fd00:10:244:3a::".parse().unwrap())
        );
        assert_eq!(parse_subnet_env6(env), None);
        assert_eq!(host6(STATIC_SUBNET6_A, 2).to_string(), "fd00:10:244:1::2");
    }

    #[test]
    fn stale_names() {
        assert_eq!(owner_pid("vxb123-vxm-a", "vxb"), Some(123));
        assert_eq!(owner_pid("vxmesh-bench-77-x1Yz", STATE_DIR_BASE), Some(77));
        assert_eq!(owner_pid("vxlab-n1", "vxb"), None);
        assert_eq!(owner_pid("vxb-1-a", "vxb"), None);
        assert!(pid_exists(std::process::id() as i32));
    }

    #[test]
    fn hosts_in_a_slash_24() {
        let s = Ipv4Addr::new(10, 244, 9, 0);
        assert_eq!(host(s, 1), Ipv4Addr::new(10, 244, 9, 1));
        assert_eq!(host(s, 2), Ipv4Addr::new(10, 244, 9, 2));
    }
}
