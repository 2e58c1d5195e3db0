//! The scale harness (issue 16): N nodes on one machine, each a network namespace with
//! its own vxmeshd, against a 3-member etcd — all agents started together — and what
//! that costs, measured from the outside:
//!
//! ```text
//!  node 0 (vxb<pid>-s0: eth0 172.20.0.1/16) ┐
//!  node 1 (vxb<pid>-s1: eth0 172.20.0.2/16) ┼─ bridge br0 in vxb<pid>-hub ─ etcd ×3 (172.20.255.1-3)
//!  …                                        ┘
//! ```
//!
//! Measured: time from the last agent's start until every node has a route to every
//! other ([`crate::routemon`] stamps each route as the kernel reports it); a node joining
//! (its lease, seen on an `etcdctl watch`, to its route on every node); a node removed
//! (its key deleted, to its route gone everywhere); agent RSS and CPU; etcd's requests
//! and watch events per second (its /metrics); a restart storm (every agent killed and
//! started again at once). Everything the run starts is stopped and deleted by guards
//! when it ends, fails or is interrupted; the neighbour-table thresholds raised for the
//! run (the kernel's table is shared by all namespaces and overflows at about 500 nodes
//! with the defaults) are restored, also by `vxmesh-bench cleanup` after a crash.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use vxmesh_testkit::proc::number_after;
use vxmesh_testkit::{in_netns, run};

use crate::proc::{run_bounded, Daemon};
use crate::routemon::{Monitor, PeerRoutes};
use crate::stats::{median, percentile};
use crate::stop;

/// Underlay: node i is 172.20.(i / 250).(i % 250 + 1); etcd members 172.20.255.1-3.
const UNDERLAY_PREFIX: u8 = 16;
const ETCD_PORT: u16 = 2379;
const ETCD_MEMBERS: u8 = 3;
const PREFIX: &str = "/coreos.com/network";
/// A bridge holds at most 1024 ports (BR_MAX_PORTS).
pub const MAX_NODES: usize = 1000;
/// Neighbour-table thresholds (init_net's, shared by every namespace).
const GC_THRESH: [&str; 3] = [
    "net/ipv4/neigh/default/gc_thresh1",
    "net/ipv4/neigh/default/gc_thresh2",
    "net/ipv4/neigh/default/gc_thresh3",
];
/// Where the original thresholds are kept while a run has them raised.
const SYSCTL_SAVE_DIR: &str = "/run";
const SYSCTL_SAVE_BASE: &str = "vxmesh-bench-scale-sysctl-";

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: usize,
    pub dataplane: String,
    pub network: String,
    pub subnet_len: u8,
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Namespace prefix, with the pid (`vxb<pid>`).
    pub prefix: String,
    /// Label of the binaries measured (e.g. "after", "before").
    pub label: String,
    pub converge_timeout: Duration,
    /// Join, remove and restart storm after the first convergence.
    pub phases: bool,
    pub agent_args: Vec<String>,
}

/// A distribution's summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        Spread {
            n: v.len(),
            median: median(&v).unwrap_or(0.0),
            p99: percentile(&v, 99.0).unwrap_or(0.0),
            max: v[v.len() - 1],
        }
    }
}

/// etcd's counters summed over the members, at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EtcdCounters {
    /// Unary gRPC requests handled (Range, Txn, Put, LeaseGrant, …).
    pub requests: f64,
    pub ranges: f64,
    pub txns: f64,
    pub lease_grants: f64,
    /// Keepalive messages on lease keepalive streams.
    pub lease_keepalives: f64,
    /// Watch events sent to watchers (one event to 1000 watchers counts 1000).
    pub watch_events: f64,
    pub watch_streams: f64,
    pub slow_watchers: f64,
    pub leader_changes: f64,
    pub sent_bytes: f64,
}

impl EtcdCounters {
    fn minus(&self, o: &EtcdCounters) -> EtcdCounters {
        EtcdCounters {
            requests: self.requests - o.requests,
            ranges: self.ranges - o.ranges,
            txns: self.txns - o.txns,
            lease_grants: self.lease_grants - o.lease_grants,
            lease_keepalives: self.lease_keepalives - o.lease_keepalives,
            watch_events: self.watch_events - o.watch_events,
            watch_streams: self.watch_streams,
            // A gauge (watchers behind now), despite etcd's `_total` name.
            slow_watchers: self.slow_watchers,
            leader_changes: self.leader_changes - o.leader_changes,
            sent_bytes: self.sent_bytes - o.sent_bytes,
        }
    }
}

/// Sums the Prometheus text of etcd's /metrics into [`EtcdCounters`] (pure).
pub fn parse_etcd_metrics(text: &str, into: &mut EtcdCounters) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l),
            None => (name_labels, ""),
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .and_then(|v| v.split('"').next())
        };
        match name {
            "grpc_server_handled_total" if label("grpc_type") == Some("unary") => {
                into.requests += v;
                match label("grpc_method") {
                    Some("Range") => into.ranges += v,
                    Some("Txn") => into.txns += v,
                    Some("LeaseGrant") => into.lease_grants += v,
                    _ => {}
                }
            }
            "grpc_server_msg_received_total" if label("grpc_method") == Some("LeaseKeepAlive") => {
                into.lease_keepalives += v
            }
            "etcd_debugging_mvcc_events_total" => into.watch_events += v,
            "etcd_debugging_mvcc_watch_stream_total" => into.watch_streams += v,
            "etcd_debugging_mvcc_slow_watcher_total" => into.slow_watchers += v,
            "etcd_server_leader_changes_seen_total" => into.leader_changes += v,
            "etcd_network_client_grpc_sent_bytes_total" => into.sent_bytes += v,
            _ => {}
        }
    }
}

/// One sample of a time series (seconds from the phase's start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub t: f64,
    /// Nodes with every route.
    pub complete: usize,
    /// Peer routes over all nodes.
    pub routes: usize,
    /// etcd requests and watch events per second since the previous complete reading
    /// (None when a member's /metrics did not answer for this sample).
    pub etcd_rps: Option<f64>,
    pub etcd_events_ps: Option<f64>,
    pub etcd_ranges_ps: Option<f64>,
}

/// A convergence: every node reaching every route after agents start together.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Convergence {
    /// Seconds from the first to the last agent's start.
    pub start_spread_s: f64,
    /// Seconds from the last start until every node has every route (None: timed out).
    pub converged_s: Option<f64>,
    /// When each node became complete (seconds after the last start).
    pub node_complete_s: Spread,
    /// etcd's counters over the window (None when no complete reading of every member
    /// could be taken at its start or end: a loaded machine can time them out).
    pub etcd: Option<EtcdCounters>,
    /// Seconds the etcd counters cover.
    pub etcd_window_s: f64,
    pub series: Vec<Sample>,
    pub complete_nodes: usize,
}

/// Everything measured for one N.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScaleRun {
    pub label: String,
    pub nodes: usize,
    pub dataplane: String,
    pub network: String,
    pub subnet_len: u8,
    pub error: Option<String>,
    pub load_before: String,
    pub load_after: String,
    pub busy_processes: Vec<String>,
    pub start: Convergence,
    /// Agent RSS (KiB) and CPU (s) once converged.
    pub agent_rss_kib: Spread,
    /// Agent memory no other process shares (KiB, `Private_*` of smaps_rollup): RSS
    /// less the binary's and libraries' resident code, which every agent on a machine
    /// (and the page cache) shares.
    #[serde(default)]
    pub agent_private_kib: Spread,
    pub agent_cpu_s: Spread,
    /// Where the machine's CPU went from the first agent's start to convergence.
    #[serde(default)]
    pub start_cpu: Option<CpuBudget>,
    /// CPU per peer programmed (ms), per agent.
    pub agent_cpu_ms_per_peer: Spread,
    /// CPU of all agents together per second while idle (cores).
    pub agents_idle_cores: Option<f64>,
    /// Pings between node VTEP addresses through the overlay: answered / sent.
    pub pings: (usize, usize),
    /// From a joining node's lease (its PUT on the watch) to its route on each node (s).
    pub join_s: Option<Spread>,
    /// From a node's key deleted to its route gone on each node (s).
    pub remove_s: Option<Spread>,
    /// Every agent killed and started again at once.
    pub storm: Option<Convergence>,
    /// Agents ready (/readyz) after the storm, seconds after the last start.
    pub storm_ready_s: Option<f64>,
    /// Lines in the agents' logs that say a watch or keepalive stream broke (one per
    /// outage since the agents stopped logging every retry).
    pub agent_stream_errors: u64,
    /// Route notifications lost (and re-read with a dump), summed over nodes.
    pub monitor_resyncs: u64,
    /// How late the start's completing route stamps can be (s): the monitor's
    /// `SweepStats::max_late` (routemon), from a namespace last shown incomplete to
    /// the dump that found it complete.
    #[serde(default)]
    pub monitor_resolution_s: Option<f64>,
}

/// The machine's CPU over the start, from just before the first agent is spawned to
/// the moment every node routes to every other, split by who used it. Process times are
/// utime + stime of all their threads: an agent's includes the kernel's work on its
/// netlink requests (routes and neighbours are inserted in the sender's system call).
/// Softirq time is counted apart by the machine and also charged to whichever process it
/// interrupted, so the parts need not add up to `machine_busy_s`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuBudget {
    /// Seconds the budget covers.
    pub window_s: f64,
    /// CPUs of the machine.
    pub cpus: usize,
    /// Busy CPU-seconds of the whole machine (user, nice, system, irq, softirq, steal).
    pub machine_busy_s: f64,
    /// Of which softirq.
    pub softirq_s: f64,
    /// Sum over the agents (their whole life so far: they started in the window).
    pub agents_s: f64,
    /// Sum over the etcd members.
    pub etcd_s: f64,
    /// The harness itself: its route monitors and bookkeeping.
    pub harness_s: f64,
}

impl CpuBudget {
    /// The earliest the start could have converged after the last agent started if the
    /// same work had kept every CPU busy from the first start on: busy / CPUs − spread.
    pub fn floor_s(&self, start_spread_s: f64) -> f64 {
        (self.machine_busy_s / self.cpus.max(1) as f64 - start_spread_s).max(0.0)
    }

    /// Busy CPU-seconds of one part, as a share of the machine's.
    pub fn share(&self, part: f64) -> f64 {
        if self.machine_busy_s > 0.0 {
            part / self.machine_busy_s
        } else {
            0.0
        }
    }
}

/// CPU-seconds used so far by these processes together (those gone count nothing).
fn cpu_of(pids: impl IntoIterator<Item = u32>) -> f64 {
    let ticks: u64 = pids
        .into_iter()
        .filter_map(|p| crate::cpu::process_ticks(p).ok())
        .sum();
    ticks as f64 / crate::cpu::clk_tck()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// A fixed, locally administered MAC for an underlay address (`02:00:` and its four
/// bytes), so each side's neighbour entry can be written before anything is sent.
fn underlay_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The hub bridge's MAC: the etcd members' addresses are on it.
fn hub_mac() -> String {
    underlay_mac(Ipv4Addr::new(172, 20, 255, 254))
}

fn etcd_ip(m: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, 255, m + 1)
}

fn etcd_endpoints() -> String {
    (0..ETCD_MEMBERS)
        .map(|m| format!("http://{}:{ETCD_PORT}", etcd_ip(m)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The neighbour-table thresholds, raised for the run and restored on drop.
#[derive(Debug)]
pub struct NeighbourThresholds {
    saved: Vec<(String, String)>,
    file: PathBuf,
}

impl NeighbourThresholds {
    /// Raises gc_thresh1/2/3 to hold `entries` (never lowers them).
    pub fn raise(entries: usize) -> anyhow::Result<NeighbourThresholds> {
        let mut saved = Vec::new();
        for k in GC_THRESH {
            let path = format!("/proc/sys/{k}");
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {path}"))?
                .trim()
                .to_string();
            saved.push((k.to_string(), old));
        }
        let file =
            Path::new(SYSCTL_SAVE_DIR).join(format!("{SYSCTL_SAVE_BASE}{}", std::process::id()));
        let text: String = saved.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        let guard = NeighbourThresholds { saved, file };
        // Highest first, so gc_thresh1 <= 2 <= 3 holds at every step.
        for (k, want) in GC_THRESH
            .iter()
            .zip([entries, entries * 2, entries * 4])
            .rev()
        {
            let old: usize = guard
                .saved
                .iter()
                .find(|(s, _)| s == k)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if want > old {
                std::fs::write(format!("/proc/sys/{k}"), want.to_string())
                    .with_context(|| format!("raising {k} to {want}"))?;
            }
        }
        Ok(guard)
    }

    fn restore(saved: &[(String, String)]) {
        // Lowest first (the reverse of raising).
        for (k, v) in saved {
            let _ = std::fs::write(format!("/proc/sys/{k}"), v);
        }
    }

    /// Restores thresholds a killed run left raised; what was restored.
    pub fn restore_stale() -> Vec<String> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(SYSCTL_SAVE_DIR) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(SYSCTL_SAVE_BASE)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let saved: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Self::restore(&saved);
            let _ = std::fs::remove_file(e.path());
            out.push(format!("neighbour thresholds of run {pid}"));
        }
        out
    }
}

impl Drop for NeighbourThresholds {
    fn drop(&mut self) {
        Self::restore(&self.saved);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Raises the open-file limit (etcd members hold a connection per agent; the
/// harness two netlink sockets per node); children inherit it.
fn raise_nofile() {
    // SAFETY: rlimit is plain old data; getrlimit/setrlimit only read/write it.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs `ip -batch -` with `lines` (one process for many commands).
fn ip_batch(args: &[&str], lines: &str) -> anyhow::Result<()> {
    let mut c = Command::new("ip");
    c.args(args)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("spawning ip -batch")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {} -batch failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Inode of a network namespace file (to find the processes inside).
fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Kills every process whose network namespace is one of `inodes` (one pass over /proc).
fn kill_inside(inodes: &std::collections::HashSet<u64>) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if ns_inode(&e.path().join("ns/net")).is_some_and(|i| inodes.contains(&i)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// The namespaces of a run: deleted, with every process inside, on drop.
#[derive(Debug)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn delete_all(names: &[String]) {
        let inodes: std::collections::HashSet<u64> = names
            .iter()
            .filter_map(|n| ns_inode(&Path::new("/run/netns").join(n)))
            .collect();
        kill_inside(&inodes);
        std::thread::sleep(Duration::from_millis(200));
        kill_inside(&inodes);
        let lines: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
        if ip_batch(&["-force"], &lines).is_err() {
            for n in names {
                let _ = run("ip", &["netns", "del", n]);
            }
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        Self::delete_all(&self.names);
    }
}

/// Removes the scale namespaces of killed runs (`<base><pid>-s…`, `…-shub`).
pub fn remove_stale(base: &str) -> Vec<String> {
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    let stale: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            let Some(rest) = name.strip_prefix(base) else {
                return false;
            };
            let Some((pid, role)) = rest.split_once('-') else {
                return false;
            };
            role.starts_with('s')
                && pid
                    .parse::<u32>()
                    .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        })
        .map(str::to_string)
        .collect();
    if !stale.is_empty() {
        Namespaces::delete_all(&stale);
    }
    let mut out = stale;
    out.extend(NeighbourThresholds::restore_stale());
    out
}

/// The lab: hub with bridge and etcd, node namespaces with their underlay address.
struct Lab {
    hub: String,
    nodes: Vec<String>,
    _namespaces: Namespaces,
}

fn build_lab(prefix: &str, nodes: usize) -> anyhow::Result<Lab> {
    let hub = format!("{prefix}-shub");
    let names: Vec<String> = (0..nodes).map(|i| format!("{prefix}-s{i}")).collect();
    let mut all = vec![hub.clone()];
    all.extend(names.iter().cloned());
    // Guard first: whatever part exists is deleted if a later step fails.
    let guard = Namespaces { names: all.clone() };
    let mut lines: String = all.iter().map(|n| format!("netns add {n}\n")).collect();
    for (i, n) in names.iter().enumerate() {
        lines.push_str(&format!(
            "link add name v{i} netns {hub} type veth peer name eth0 address {} netns {n}\n",
            underlay_mac(node_ip(i))
        ));
    }
    ip_batch(&[], &lines).context("creating namespaces and veth pairs")?;
    stop::check()?;
    // The underlay is one bridge of up to 1,001 ports, so every broadcast and unknown
    // multicast is delivered to every namespace, all on this machine's CPUs — a cost a
    // real network spreads over its hosts. Nothing here needs ARP or IPv6 on it: the
    // etcd members and the nodes know each other's MACs from the start (permanent
    // neighbours both ways), and no interface of the underlay gets an IPv6 address (no
    // DAD, router solicitations or MLD reports). The agents' ARP for each other's
    // underlay addresses (pings, VXLAN) is left as it is.
    let mut hub_lines = format!(
        "link set lo up\nlink add br0 address {} type bridge\nlink set br0 addrgenmode none\nlink set br0 up\n",
        hub_mac()
    );
    for m in 0..ETCD_MEMBERS {
        hub_lines.push_str(&format!(
            "addr add {}/{UNDERLAY_PREFIX} dev br0\n",
            etcd_ip(m)
        ));
    }
    for i in 0..nodes {
        hub_lines.push_str(&format!(
            "link set v{i} addrgenmode none\nlink set v{i} master br0 up\nneigh add {} lladdr {} dev br0 nud permanent\n",
            node_ip(i),
            underlay_mac(node_ip(i))
        ));
    }
    ip_batch(&["-n", &hub], &hub_lines).context("wiring the hub")?;
    for (i, n) in names.iter().enumerate() {
        stop::check()?;
        let mut l = format!(
            "link set lo up\nlink set eth0 addrgenmode none\naddr add {}/{UNDERLAY_PREFIX} dev eth0\nlink set eth0 up\n",
            node_ip(i)
        );
        for m in 0..ETCD_MEMBERS {
            l.push_str(&format!(
                "neigh add {} lladdr {} dev eth0 nud permanent\n",
                etcd_ip(m),
                hub_mac()
            ));
        }
        ip_batch(&["-n", n], &l).with_context(|| format!("configuring {n}"))?;
    }
    Ok(Lab {
        hub,
        nodes: names,
        _namespaces: guard,
    })
}

fn etcdctl(hub: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        hub,
        "etcdctl",
        "--endpoints",
        &etcd_endpoints(),
    ])
    .args(args)
    .env("ETCDCTL_API", "3");
    let f = run_bounded(c, timeout)?;
    if !f.status.success() {
        bail!("etcdctl {}: {}", args.join(" "), f.stderr.trim());
    }
    Ok(f.stdout)
}

/// Three etcd members in the hub, data on tmpfs (no disk fsync: this machine's disk is
/// shared with other work; see docs/scale.md).
fn start_etcd(lab: &Lab, log_dir: &Path, data: &Path) -> anyhow::Result<Vec<Daemon>> {
    // A guard of the hub only to spawn into it: the lab deletes the hub, not this.
    let hub = std::mem::ManuallyDrop::new(vxmesh_testkit::Netns::adopt(&lab.hub));
    let cluster: Vec<String> = (0..ETCD_MEMBERS)
        .map(|m| format!("m{m}=http://{}:2380", etcd_ip(m)))
        .collect();
    let cluster = cluster.join(",");
    let token = format!("vxscale{}", std::process::id());
    let mut out = Vec::new();
    for m in 0..ETCD_MEMBERS {
        let ip = etcd_ip(m);
        let dir = data.join(format!("m{m}"));
        let client = format!("http://{ip}:{ETCD_PORT}");
        let peer = format!("http://{ip}:2380");
        let dir_s = dir.display().to_string();
        let name = format!("m{m}");
        out.push(Daemon::spawn(
            &hub,
            "etcd",
            &[
                "--name",
                &name,
                "--data-dir",
                &dir_s,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ],
            &log_dir.join(format!("etcd-{name}.log")),
        )?);
    }
    let mut healthy = false;
    for _ in 0..150 {
        stop::sleep(Duration::from_millis(200))?;
        for d in &mut out {
            d.ensure_running()?;
        }
        if etcdctl(&lab.hub, &["endpoint", "health"], Duration::from_secs(10)).is_ok() {
            healthy = true;
            break;
        }
    }
    if !healthy {
        bail!(
            "etcd did not become healthy within 30 s (logs in {})",
            log_dir.display()
        );
    }
    Ok(out)
}

/// Sums the members' /metrics (read from inside the hub); None unless every member
/// answered (a sum over some members, subtracted from one over all, would be negative).
fn etcd_counters(hub: &str) -> Option<EtcdCounters> {
    let texts = in_netns(hub, || {
        (0..ETCD_MEMBERS)
            .map(|m| http_get(SocketAddrV4::new(etcd_ip(m), ETCD_PORT), "/metrics").ok())
            .collect::<Vec<Option<String>>>()
    })
    .ok()?;
    sum_members(&texts, usize::from(ETCD_MEMBERS))
}

/// The counters of `members` members' /metrics texts; None unless all of them are
/// there (pure).
pub fn sum_members(texts: &[Option<String>], members: usize) -> Option<EtcdCounters> {
    if texts.len() != members || texts.iter().any(Option::is_none) {
        return None;
    }
    let mut c = EtcdCounters::default();
    for t in texts.iter().flatten() {
        parse_etcd_metrics(t, &mut c);
    }
    Some(c)
}

/// One complete reading of etcd's counters, trying `tries` times a second apart.
fn etcd_counters_retry(hub: &str, tries: usize) -> Option<EtcdCounters> {
    for i in 0..tries {
        if let Some(c) = etcd_counters(hub) {
            return Some(c);
        }
        if i + 1 < tries {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    None
}

/// A plain HTTP/1.0 GET in the calling thread's namespace; the body.
fn http_get(addr: SocketAddrV4, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(
            text.lines().next().unwrap_or("no answer").to_string(),
        )),
    }
}

/// `etcdctl watch --prefix` on the subnets, each event stamped when it arrived.
struct KeyWatch {
    child: Child,
    events: Arc<Mutex<Vec<(Instant, bool, String)>>>,
}

impl KeyWatch {
    fn start(hub: &str) -> anyhow::Result<KeyWatch> {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            hub,
            "etcdctl",
            "--endpoints",
            &etcd_endpoints(),
        ])
        .args(["watch", "--prefix", &format!("{PREFIX}/subnets/")])
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
        let mut child = c.spawn().context("spawning etcdctl watch")?;
        let out = child.stdout.take().context("etcdctl watch: no stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = Arc::clone(&events);
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(out).lines();
            let mut pending: Option<(Instant, bool)> = None;
            while let Some(Ok(l)) = lines.next() {
                match (l.as_str(), pending.take()) {
                    ("PUT", _) => pending = Some((Instant::now(), true)),
                    ("DELETE", _) => pending = Some((Instant::now(), false)),
                    (key, Some((at, put))) if key.starts_with(PREFIX) => {
                        if let Ok(mut g) = ev.lock() {
                            g.push((at, put, key.to_string()));
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(KeyWatch { child, events })
    }

    /// When `key` was last put (or deleted) after `since`.
    fn seen(&self, key: &str, put: bool, since: Instant) -> Option<Instant> {
        self.events.lock().ok().and_then(|g| {
            g.iter()
                .rev()
                .find(|(at, p, k)| *p == put && k == key && *at >= since)
                .map(|(at, _, _)| *at)
        })
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agents, one per node namespace (index = node), killed on drop.
struct Agents {
    procs: Vec<Option<Child>>,
    /// When each was last started.
    started: Vec<Option<Instant>>,
}

impl Agents {
    fn new(n: usize) -> Agents {
        Agents {
            procs: (0..n).map(|_| None).collect(),
            started: vec![None; n],
        }
    }

    fn spawn(&mut self, i: usize, lab: &Lab, plan: &Plan, state: &Path) -> anyhow::Result<()> {
        let log = plan.log_dir.join(format!("agent-{i}.log"));
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let subnet_file = state.join(format!("node-{i}.env"));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lab.nodes[i]])
            .arg(plan.bin_dir.join("vxmeshd"))
            .args([
                "--etcd-endpoints",
                &etcd_endpoints(),
                "--iface",
                "eth0",
                "--subnet-file",
                &subnet_file.display().to_string(),
                "--ip-masq=false",
                "--iptables-forward-rules=false",
                "--dataplane",
                &plan.dataplane,
            ])
            .args(&plan.agent_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = c
            .spawn()
            .with_context(|| format!("starting the agent of node {i}"))?;
        self.procs[i] = Some(child);
        self.started[i] = Some(Instant::now());
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pids(&self) -> Vec<(usize, u32)> {
        self.procs
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c.id())))
            .collect()
    }

    /// Fails if an agent has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        for (i, c) in self.procs.iter_mut().enumerate() {
            if let Some(c) = c {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("the agent of node {i} exited ({st}); see agent-{i}.log");
                }
            }
        }
        Ok(())
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
        }
        for c in self.procs.iter_mut().flatten() {
            let _ = c.wait();
        }
    }
}

/// RSS (KiB) and CPU seconds (user + system) of a process.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = number_after(&status, "VmRSS:")?;
    let ticks = crate::cpu::process_ticks(pid).ok()?;
    Some((rss, ticks as f64 / crate::cpu::clk_tck()))
}

/// Memory of a process that no other process shares (KiB): `Private_Clean` +
/// `Private_Dirty` of /proc/<pid>/smaps_rollup.
fn private_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    private_of(&text)
}

fn private_of(smaps_rollup: &str) -> Option<u64> {
    Some(
        number_after(smaps_rollup, "Private_Clean:")?
            + number_after(smaps_rollup, "Private_Dirty:")?,
    )
}

/// The subnet a node's agent wrote to its subnet file.
fn node_subnet(state: &Path, i: usize) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(state.join(format!("node-{i}.env"))).ok()?;
    let env = vxmesh_subnet_env::SubnetEnv::parse(text.as_bytes()).ok()?;
    env.subnet.map(|s| s.network())
}

/// Waits until every node in `live` has a route to every other live node's subnet.
#[allow(clippy::too_many_arguments)]
fn converge(
    lab: &Lab,
    mon: &Monitor,
    agents: &mut Agents,
    live: &[usize],
    state: &Path,
    timeout: Duration,
    require_ready: bool,
) -> anyhow::Result<(Convergence, Option<f64>)> {
    let first = live
        .iter()
        .filter_map(|i| agents.started[*i])
        .min()
        .context("no agent started")?;
    let last = live
        .iter()
        .filter_map(|i| agents.started[*i])
        .max()
        .context("no agent started")?;
    let mut conv = Convergence {
        start_spread_s: (last - first).as_secs_f64(),
        ..Default::default()
    };
    let etcd0 = etcd_counters_retry(&lab.hub, 3);
    let t_etcd0 = Instant::now();
    let mut prev = etcd0.clone().map(|c| (t_etcd0, c));
    let mut subnets: HashMap<usize, Ipv4Addr> = HashMap::new();
    let mut complete_at: HashMap<usize, Instant> = HashMap::new();
    // Nodes found complete, with their monitor's removal count then: while it has not
    // moved they still are, without looking through their N routes again (that look,
    // for every node every 100 ms, was the harness's own O(N²)).
    let mut still_complete: HashMap<usize, u64> = HashMap::new();
    let mut ready_at: Option<Instant> = None;
    let mut ready: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let deadline = last + timeout;
    let mut next_sample = Instant::now();
    loop {
        stop::check()?;
        agents.check()?;
        for &i in live {
            if let std::collections::hash_map::Entry::Vacant(e) = subnets.entry(i) {
                if let Some(s) = node_subnet(state, i) {
                    e.insert(s);
                }
            }
        }
        let all_known = subnets.len() == live.len();
        let (complete, routes) = {
            let nodes = mon.nodes();
            let mut complete = 0;
            let mut routes = 0;
            for &i in live {
                let n = &nodes[i];
                // While the monitor sweeps, `present` lags its count.
                routes += n.present.len().max(n.counted);
                let done = still_complete.get(&i) == Some(&n.removals)
                    || (all_known
                        && live.iter().all(|j| {
                            *j == i || subnets.get(j).is_some_and(|s| n.present.contains_key(s))
                        }));
                if done {
                    still_complete.insert(i, n.removals);
                    complete += 1;
                    complete_at.entry(i).or_insert_with(|| {
                        // When its last needed route arrived.
                        live.iter()
                            .filter(|j| **j != i)
                            .filter_map(|j| subnets.get(j).and_then(|s| n.present.get(s)))
                            .max()
                            .copied()
                            .unwrap_or_else(Instant::now)
                    });
                }
            }
            (complete, routes)
        };
        if require_ready && ready.len() < live.len() {
            let pending: Vec<(usize, String)> = live
                .iter()
                .filter(|i| !ready.contains(i))
                .map(|i| (*i, lab.nodes[*i].clone()))
                .collect();
            for (i, ns) in pending {
                let ok = in_netns(&ns, || {
                    http_get(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8471), "/readyz").is_ok()
                })
                .unwrap_or(false);
                if ok {
                    ready.insert(i);
                }
            }
            if ready.len() == live.len() {
                ready_at = Some(Instant::now());
            }
        }
        let now = Instant::now();
        if now >= next_sample {
            let c = etcd_counters(&lab.hub);
            let rates = match (&prev, &c) {
                (Some((t0, c0)), Some(c)) => {
                    let dt = (now - *t0).as_secs_f64().max(1e-3);
                    let d = c.minus(c0);
                    Some((d.requests / dt, d.watch_events / dt, d.ranges / dt))
                }
                _ => None,
            };
            conv.series.push(Sample {
                t: now.saturating_duration_since(last).as_secs_f64(),
                complete,
                routes,
                etcd_rps: rates.map(|r| r.0),
                etcd_events_ps: rates.map(|r| r.1),
                etcd_ranges_ps: rates.map(|r| r.2),
            });
            if let Some(c) = c {
                prev = Some((now, c));
            }
            next_sample = now + Duration::from_secs(1);
        }
        conv.complete_nodes = complete;
        let routes_done = complete == live.len();
        if routes_done && (!require_ready || ready_at.is_some()) {
            let done_at = complete_at.values().max().copied().unwrap_or(now);
            conv.converged_s = Some(done_at.saturating_duration_since(last).as_secs_f64());
            break;
        }
        if now >= deadline {
            eprintln!(
                "    timed out: {complete}/{} nodes complete, {}/{} ready",
                live.len(),
                ready.len(),
                live.len()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    conv.node_complete_s = Spread::of(
        complete_at
            .values()
            .map(|t| t.saturating_duration_since(last).as_secs_f64())
            .collect(),
    );
    let end = etcd_counters_retry(&lab.hub, 5);
    conv.etcd = end.zip(etcd0).map(|(e, s)| e.minus(&s));
    if conv.etcd.is_none() {
        eprintln!("    etcd counters: no complete reading of all {ETCD_MEMBERS} members at the window's start or end; rates not reported");
    }
    conv.etcd_window_s = t_etcd0.elapsed().as_secs_f64();
    Ok((
        conv,
        ready_at.map(|r| r.saturating_duration_since(last).as_secs_f64()),
    ))
}

/// Counts log lines of the agents that report a broken watch or keepalive stream.
/// Since the agents report an etcd outage once when it begins (then once a minute),
/// this counts outages of each stream; an older build's logs, which have a line per
/// failed retry, count every failure.
fn stream_errors(log_dir: &Path, n: usize) -> u64 {
    let mut count = 0;
    for i in 0..n {
        let Ok(text) = std::fs::read_to_string(log_dir.join(format!("agent-{i}.log"))) else {
            continue;
        };
        count += text
            .lines()
            .filter(|l| {
                l.contains("watch failed")
                    || l.contains("watch stream ended")
                    || l.contains("cannot start watch")
                    || l.contains("keepalive stream broke")
                    || l.contains("keepalive send failed")
                    || l.contains("lease keepalive: cannot reach etcd")
                    || l.contains("lease keepalive failed; retrying")
            })
            .count() as u64;
    }
    count
}

/// Runs the whole sequence for `plan.nodes` nodes; figures in `run` even when a
/// phase fails (the error is returned after the teardown).
pub fn measure(plan: &Plan, run: &mut ScaleRun) -> anyhow::Result<()> {
    let n = plan.nodes;
    if !(2..=MAX_NODES).contains(&n) {
        bail!("--nodes {n}: between 2 and {MAX_NODES} (one bridge holds at most 1024 ports)");
    }
    raise_nofile();
    run.load_before = loadavg();
    // Underlay ARP: the hub's bridge address sees every node; each node ARPs etcd and
    // the peers it sends to. Raised for the run, restored when it ends.
    let _thresholds = NeighbourThresholds::raise((n + 1) * 8 + 1024)?;
    let state = tempfile::Builder::new()
        .prefix(&format!("vxmesh-bench-{}-scale-", std::process::id()))
        .tempdir_in("/dev/shm")
        .context("creating a state directory in /dev/shm")?;
    eprintln!("  building {n}+1 node namespaces and the hub");
    let t = Instant::now();
    // One extra namespace for the joining node.
    let lab = build_lab(&plan.prefix, n + 1)?;
    eprintln!(
        "  lab built in {:.1} s; starting etcd",
        t.elapsed().as_secs_f64()
    );
    let etcd_members = start_etcd(&lab, &plan.log_dir, state.path())?;
    let etcd_pids: Vec<u32> = etcd_members.iter().map(Daemon::pid).collect();
    let (net, net_len) = plan
        .network
        .split_once('/')
        .and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
        .with_context(|| format!("--network {:?} is not an IPv4 CIDR", plan.network))?;
    let config = format!(
        r#"{{"Network":"{}","SubnetLen":{},"Backend":{{"Type":"vxlan"}}}}"#,
        plan.network, plan.subnet_len
    );
    etcdctl(
        &lab.hub,
        &["put", &format!("{PREFIX}/config"), &config],
        Duration::from_secs(10),
    )?;
    let mon = Monitor::start(
        &lab.nodes,
        PeerRoutes {
            network: net,
            network_len: net_len,
            subnet_len: plan.subnet_len,
        },
    )
    .context("opening the route monitors")?;
    // Until the start has converged, the monitor sweeps: a node is done with n - 1.
    mon.expect(n.saturating_sub(1));
    let watch = KeyWatch::start(&lab.hub)?;
    let mut agents = Agents::new(n + 1);
    let live: Vec<usize> = (0..n).collect();

    // 1. All agents started together.
    eprintln!("  starting {n} agents");
    let cpu0 = (
        Instant::now(),
        crate::cpu::machine().ok(),
        cpu_of(etcd_pids.iter().copied()),
        cpu_of([std::process::id()]),
    );
    for &i in &live {
        agents.spawn(i, &lab, plan, state.path())?;
    }
    let (conv, _) = converge(
        &lab,
        &mon,
        &mut agents,
        &live,
        state.path(),
        plan.converge_timeout,
        false,
    )?;
    eprintln!(
        "  converged: {} ({} of {n} nodes complete; start spread {:.1} s)",
        conv.converged_s
            .map_or("no".into(), |s| format!("{s:.2} s after the last start")),
        conv.complete_nodes,
        conv.start_spread_s
    );
    let converged = conv.converged_s.is_some();
    if let (Some(m0), Ok(m1)) = (cpu0.1, crate::cpu::machine()) {
        let d = m1.since(&m0);
        let tck = crate::cpu::clk_tck();
        let b = CpuBudget {
            window_s: cpu0.0.elapsed().as_secs_f64(),
            cpus: std::thread::available_parallelism().map_or(1, |c| c.get()),
            machine_busy_s: d.busy as f64 / tck,
            softirq_s: d.softirq as f64 / tck,
            agents_s: cpu_of(agents.pids().iter().map(|(_, p)| *p)),
            etcd_s: cpu_of(etcd_pids.iter().copied()) - cpu0.2,
            harness_s: cpu_of([std::process::id()]) - cpu0.3,
        };
        eprintln!(
            "  CPU over the start ({:.1} s, {} CPUs): machine busy {:.1} CPU-s; agents {:.1} ({:.0} %), etcd {:.1} ({:.0} %), harness {:.1} ({:.0} %), softirq {:.1}; floor {:.1} s after the last start",
            b.window_s,
            b.cpus,
            b.machine_busy_s,
            b.agents_s,
            100.0 * b.share(b.agents_s),
            b.etcd_s,
            100.0 * b.share(b.etcd_s),
            b.harness_s,
            100.0 * b.share(b.harness_s),
            b.softirq_s,
            b.floor_s(conv.start_spread_s),
        );
        run.start_cpu = Some(b);
    }
    run.start = conv;
    let sweeps = mon.sweep_stats();
    run.monitor_resolution_s = Some(sweeps.max_late.as_secs_f64());
    eprintln!(
        "  route monitor: {} sweeps (the longest {:.2} s), {} namespace dumps; a stamp is at most {:.2} s late",
        sweeps.sweeps,
        sweeps.max_sweep.as_secs_f64(),
        sweeps.dumps,
        sweeps.max_late.as_secs_f64()
    );
    let usage: Vec<(u64, f64)> = agents
        .pids()
        .iter()
        .filter_map(|(_, p)| proc_usage(*p))
        .collect();
    run.agent_rss_kib = Spread::of(usage.iter().map(|u| u.0 as f64).collect());
    run.agent_private_kib = Spread::of(
        agents
            .pids()
            .iter()
            .filter_map(|(_, p)| private_kib(*p))
            .map(|k| k as f64)
            .collect(),
    );
    run.agent_cpu_s = Spread::of(usage.iter().map(|u| u.1).collect());
    run.agent_cpu_ms_per_peer = Spread::of(
        usage
            .iter()
            .map(|u| u.1 * 1000.0 / (n.saturating_sub(1).max(1)) as f64)
            .collect(),
    );
    if !converged {
        bail!(
            "the nodes did not converge within {:?}",
            plan.converge_timeout
        );
    }

    // 2. Idle: what the agents cost doing nothing.
    stop::sleep(Duration::from_secs(3))?;
    let before: f64 = agents
        .pids()
        .iter()
        .filter_map(|(_, p)| proc_usage(*p))
        .map(|u| u.1)
        .sum();
    let t0 = Instant::now();
    stop::sleep(Duration::from_secs(10))?;
    let after: f64 = agents
        .pids()
        .iter()
        .filter_map(|(_, p)| proc_usage(*p))
        .map(|u| u.1)
        .sum();
    run.agents_idle_cores = Some((after - before) / t0.elapsed().as_secs_f64());

    // 3. A few pings through the overlay, node VTEP to node VTEP.
    let mut pings = (0, 0);
    for k in 0..5.min(n - 1) {
        let (a, b) = (k * 7 % n, (k * 13 + 1) % n);
        if a == b {
            continue;
        }
        let Some(dst) = node_subnet(state.path(), b) else {
            continue;
        };
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &lab.nodes[a],
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &dst.to_string(),
        ]);
        pings.1 += 1;
        if run_bounded(c, Duration::from_secs(10))?.status.success() {
            pings.0 += 1;
        }
    }
    run.pings = pings;
    if !plan.phases {
        return Ok(());
    }
    // The phases below time single changes: stamped as notifications arrive.
    mon.listen(Duration::from_secs(120))
        .context("switching the route monitor to notifications")?;

    // 4. A node joins: its lease, then its route on every node.
    let j = n;
    let t_join = Instant::now();
    agents.spawn(j, &lab, plan, state.path())?;
    let mut joined = None;
    let limit = Instant::now() + Duration::from_secs(120);
    while Instant::now() < limit {
        stop::check()?;
        if let Some(s) = node_subnet(state.path(), j) {
            let key = format!("{PREFIX}/subnets/{}-{}", s, plan.subnet_len);
            if let Some(lease_at) = watch.seen(&key, true, t_join) {
                let nodes = mon.nodes();
                let seen: Vec<f64> = live
                    .iter()
                    .filter_map(|i| nodes[*i].present.get(&s))
                    .map(|at| at.saturating_duration_since(lease_at).as_secs_f64())
                    .collect();
                if seen.len() == live.len() {
                    joined = Some(Spread::of(seen));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "  joined: {}",
        joined.as_ref().map_or("timed out".into(), |s| format!(
            "on every node {:.3} s after its lease (median {:.3} s)",
            s.max, s.median
        ))
    );
    run.join_s = joined;
    let mut live = live;
    live.push(j);

    // 5. A node removed: its agent killed, its key deleted; its route gone everywhere.
    let r = 0;
    agents.kill(r);
    let gone_subnet = node_subnet(state.path(), r).context("node 0 has no subnet file")?;
    let key = format!("{PREFIX}/subnets/{}-{}", gone_subnet, plan.subnet_len);
    let t_del = Instant::now();
    etcdctl(&lab.hub, &["del", &key], Duration::from_secs(10))?;
    live.retain(|x| *x != r);
    let mut removed = None;
    let limit = Instant::now() + Duration::from_secs(120);
    while Instant::now() < limit {
        stop::check()?;
        let del_at = watch.seen(&key, false, t_del).unwrap_or(t_del);
        let nodes = mon.nodes();
        let gone: Vec<f64> = live
            .iter()
            .filter(|i| !nodes[**i].present.contains_key(&gone_subnet))
            .map(|i| {
                nodes[*i]
                    .removed
                    .get(&gone_subnet)
                    .map_or(0.0, |at| at.saturating_duration_since(del_at).as_secs_f64())
            })
            .collect();
        if gone.len() == live.len() {
            removed = Some(Spread::of(gone));
            break;
        }
        drop(nodes);
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "  removed: {}",
        removed.as_ref().map_or("timed out".into(), |s| format!(
            "gone from every node {:.3} s after its key",
            s.max
        ))
    );
    run.remove_s = removed;

    // 6. Restart storm: every agent killed at once, then all started again at once.
    for &i in &live {
        agents.kill(i);
    }
    // The userspace TAPs (and with them the routes) go with the processes; wait until
    // the kernel has removed them, so the storm's convergence is measured from zero.
    if plan.dataplane == "userspace" {
        let limit = Instant::now() + Duration::from_secs(60);
        while Instant::now() < limit && mon.nodes().iter().any(|n| !n.present.is_empty()) {
            stop::sleep(Duration::from_millis(100))?;
        }
    }
    eprintln!("  restart storm: {} agents", live.len());
    for &i in &live {
        agents.spawn(i, &lab, plan, state.path())?;
    }
    let (storm, ready) = converge(
        &lab,
        &mon,
        &mut agents,
        &live,
        state.path(),
        plan.converge_timeout,
        true,
    )?;
    eprintln!(
        "  storm: routes {} / ready {}",
        storm
            .converged_s
            .map_or("no".into(), |s| format!("{s:.2} s")),
        ready.map_or("no".into(), |s| format!("{s:.2} s"))
    );
    run.storm = Some(storm);
    run.storm_ready_s = ready;
    run.monitor_resyncs = mon.nodes().iter().map(|n| n.resyncs).sum();
    run.agent_stream_errors = stream_errors(&plan.log_dir, n + 1);
    run.load_after = loadavg();
    Ok(())
}

/// Results of a scale run over several N.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleResults {
    pub machine: BTreeMap<String, String>,
    pub command: String,
    pub runs: Vec<ScaleRun>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |x| format!("{x:.digits$}"))
}

/// The runs as a markdown table (what docs/scale.md shows).
pub fn summary(r: &ScaleResults) -> String {
    let mut o = String::from(
        "| label | nodes | dataplane | all routes after last start (s) | join: on every node (s) | removal: gone everywhere (s) | restart storm: all routes (s) | agent RSS median / max (MiB) | agent private memory median / max (MiB) | agent CPU to converge median / max (s) | CPU per peer (ms) | agents idle (cores) | etcd requests/s | etcd watch events/s | etcd ranges | agent stream errors |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in &r.runs {
        let w = run.start.etcd_window_s.max(1e-3);
        let etcd = run.start.etcd.as_ref();
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} / {:.2} | {:.2} | {} | {} | {} | {} | {} |\n",
            run.label,
            run.nodes,
            run.dataplane,
            match (run.start.converged_s, run.monitor_resolution_s) {
                (Some(c), Some(r)) => format!("{c:.2} (stamps ≤ {r:.2} s late)"),
                (c, _) => opt(c, 2),
            },
            opt(run.join_s.as_ref().map(|s| s.max), 3),
            opt(run.remove_s.as_ref().map(|s| s.max), 3),
            opt(run.storm.as_ref().and_then(|s| s.converged_s), 2),
            run.agent_rss_kib.median / 1024.0,
            run.agent_rss_kib.max / 1024.0,
            run.agent_private_kib.median / 1024.0,
            run.agent_private_kib.max / 1024.0,
            run.agent_cpu_s.median,
            run.agent_cpu_s.max,
            run.agent_cpu_ms_per_peer.median,
            opt(run.agents_idle_cores, 3),
            opt(etcd.map(|e| e.requests / w), 0),
            opt(etcd.map(|e| e.watch_events / w), 0),
            opt(etcd.map(|e| e.ranges), 0),
            run.agent_stream_errors,
        ));
        if let Some(e) = &run.error {
            o.push_str(&format!("| ↳ error: {} |\n", e.replace('|', "/")));
        }
    }
    if r.runs.iter().any(|run| run.start_cpu.is_some()) {
        o.push_str("\nCPU over the start (first agent started → all routes):\n\n| label | nodes | window (s) | CPUs | machine busy (CPU-s) | agents | etcd | harness | softirq | floor: busy / CPUs − start spread (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for run in &r.runs {
            let Some(b) = &run.start_cpu else { continue };
            let part = |x: f64| format!("{x:.1} ({:.0} %)", 100.0 * b.share(x));
            o.push_str(&format!(
                "| {} | {} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {:.1} |\n",
                run.label,
                run.nodes,
                b.window_s,
                b.cpus,
                b.machine_busy_s,
                part(b.agents_s),
                part(b.etcd_s),
                part(b.harness_s),
                part(b.softirq_s),
                b.floor_s(run.start.start_spread_s),
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread() {
        let s = Spread::of(vec![3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.n, s.median, s.p99, s.max), (3, 2.0, 3.0, 3.0));
        assert_eq!(Spread::of(vec![]), Spread::default());
        let s = Spread::of((1..=1000).map(f64::from).collect());
        assert_eq!((s.p99, s.max), (990.0, 1000.0));
    }

    /// Lines as etcd 3.4 serves them on /metrics (`curl http://…:2379/metrics`).
    #[test]
    fn etcd_metrics() {
        let text = r#"# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1523
grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 40
grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 2
grpc_server_handled_total{grpc_code="OK",grpc_method="LeaseGrant",grpc_service="etcdserverpb.Lease",grpc_type="unary"} 41
grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 7
grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"} 99
etcd_debugging_mvcc_events_total 160000
etcd_debugging_mvcc_watch_stream_total 400
etcd_debugging_mvcc_slow_watcher_total 3
etcd_server_leader_changes_seen_total 1
etcd_network_client_grpc_sent_bytes_total 1.2e+07
"#;
        let mut c = EtcdCounters::default();
        parse_etcd_metrics(text, &mut c);
        parse_etcd_metrics(text, &mut c); // a second member
        assert_eq!(c.requests, 2.0 * (1523.0 + 40.0 + 2.0 + 41.0));
        assert_eq!(c.ranges, 2.0 * 1525.0);
        assert_eq!(c.txns, 80.0);
        assert_eq!(c.lease_grants, 82.0);
        assert_eq!(c.lease_keepalives, 198.0);
        assert_eq!(c.watch_events, 320_000.0);
        assert_eq!(c.watch_streams, 800.0);
        assert_eq!(c.slow_watchers, 6.0);
        assert_eq!(c.leader_changes, 2.0);
        assert_eq!(c.sent_bytes, 2.4e7);
    }

    /// A member that did not answer makes the reading incomplete, not smaller: the 1,000-node
    /// attempt subtracted a two-member sum from a three-member one and reported negative
    /// rates.
    #[test]
    fn a_reading_needs_every_member() {
        let m = |ranges: u32| {
            Some(format!(
                "grpc_server_handled_total{{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}} {ranges}\n"
            ))
        };
        let all = sum_members(&[m(10), m(20), m(30)], 3).expect("complete");
        assert_eq!((all.ranges, all.requests), (60.0, 60.0));
        assert_eq!(sum_members(&[m(10), None, m(30)], 3), None);
        assert_eq!(sum_members(&[m(10), m(20)], 3), None);
        // The summary shows an unknown count as such.
        let run = ScaleRun {
            start: Convergence {
                etcd: None,
                etcd_window_s: 600.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let row = summary(&ScaleResults {
            runs: vec![run],
            ..Default::default()
        });
        let row = row.lines().nth(2).expect("a row");
        assert!(row.ends_with("| — | — | — | 0 |"), "{row}");
        // Results written before readings could be incomplete still load.
        let old: Sample = serde_json::from_str(
            r#"{"t":1.0,"complete":0,"routes":3,"etcd_rps":4.0,"etcd_events_ps":5.0,"etcd_ranges_ps":6.0}"#,
        )
        .expect("old sample");
        assert_eq!(old.etcd_rps, Some(4.0));
    }

    /// The CPU budget's floor: the start's busy time spread over every CPU from the
    /// first start on, less the start's own spread; never below zero.
    #[test]
    fn cpu_budget_floor_and_table() {
        let b = CpuBudget {
            window_s: 70.0,
            cpus: 2,
            machine_busy_s: 130.0,
            softirq_s: 6.5,
            agents_s: 65.0,
            etcd_s: 39.0,
            harness_s: 13.0,
        };
        assert!((b.floor_s(7.0) - 58.0).abs() < 1e-9);
        assert_eq!(b.floor_s(100.0), 0.0);
        assert!((b.share(b.agents_s) - 0.5).abs() < 1e-9);
        assert_eq!(CpuBudget::default().share(1.0), 0.0);
        let run = ScaleRun {
            label: "x".into(),
            nodes: 1000,
            start: Convergence {
                start_spread_s: 7.0,
                ..Default::default()
            },
            start_cpu: Some(b),
            ..Default::default()
        };
        let text = summary(&ScaleResults {
            runs: vec![run],
            ..Default::default()
        });
        let row = text.lines().last().expect("a budget row");
        assert_eq!(
            row,
            "| x | 1000 | 70.0 | 2 | 130.0 | 65.0 (50 %) | 39.0 (30 %) | 13.0 (10 %) | 6.5 (5 %) | 58.0 |"
        );
        // Results written before the budget existed still load, without one.
        let now = serde_json::to_string(&ScaleRun::default()).unwrap();
        let before = now.replace(",\"start_cpu\":null", "");
        assert_ne!(before, now);
        let old: ScaleRun = serde_json::from_str(&before).unwrap();
        assert_eq!(old.start_cpu, None);
    }

    #[test]
    fn underlay_macs_are_unique_and_local() {
        assert_eq!(underlay_mac(node_ip(0)), "02:00:ac:14:00:01");
        assert_eq!(underlay_mac(node_ip(999)), "02:00:ac:14:03:fa");
        let all: std::collections::HashSet<String> =
            (0..=MAX_NODES).map(|i| underlay_mac(node_ip(i))).collect();
        assert_eq!(all.len(), MAX_NODES + 1);
        assert!(!all.contains(&hub_mac()));
    }

    #[test]
    fn private_memory_from_smaps_rollup() {
        // An agent of a 30-node run: 9 MiB resident, of which 1.4 MiB its own.
        let text =
            "55862824f000-7ffed9384000 ---p 00000000 00:00 0                          [rollup]
Rss:                9072 kB
Pss:                1663 kB
Shared_Clean:       1840 kB
Shared_Dirty:       5848 kB
Private_Clean:        12 kB
Private_Dirty:      1384 kB
Anonymous:          1384 kB
";
        assert_eq!(private_of(text), Some(1396));
        assert_eq!(number_after(text, "Rss:"), Some(9072));
        assert_eq!(private_of("Rss: 1 kB\n"), None);
        // Results written before the private figure existed still load.
        let old = serde_json::to_string(&ScaleRun::default())
            .expect("json")
            .replace(
                r#""agent_private_kib":{"n":0,"median":0.0,"p99":0.0,"max":0.0},"#,
                "",
            );
        assert!(!old.contains("agent_private_kib"), "{old}");
        let old: ScaleRun = serde_json::from_str(&old).expect("an old run");
        assert_eq!(old.agent_private_kib, Spread::default());
    }

    #[test]
    fn addresses() {
        assert_eq!(node_ip(0), Ipv4Addr::new(172, 20, 0, 1));
        assert_eq!(node_ip(249), Ipv4Addr::new(172, 20, 0, 250));
        assert_eq!(node_ip(250), Ipv4Addr::new(172, 20, 1, 1));
        assert_eq!(node_ip(1000), Ipv4Addr::new(172, 20, 4, 1));
        assert!(
            (0..=MAX_NODES).all(|i| node_ip(i).octets()[2] < 255),
            "never an etcd address"
        );
        assert_eq!(
            etcd_endpoints(),
            "http://172.20.255.1:2379,http://172.20.255.2:2379,http://172.20.255.3:2379"
        );
    }
}
