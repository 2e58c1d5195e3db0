//! The results model of a benchmark run (`results.json`), its summary (medians
//! with min/max over repeats, ratios to kernel VXLAN from the same run), the
//! issue-4 target checks, and the markdown rendering (`results.md`).
//! Pure: no I/O, no clock (the caller passes timestamps in).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// What carries pod traffic between the two nodes, and whether the nodes hold
/// vxmeshd's default masquerade rules (`--ip-masq`, which loads conntrack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Plain routes between the nodes: the physical limit of this machine.
    NoOverlay,
    /// The kernel vxlan driver, programmed with flannel's recipe.
    KernelVxlan,
    /// vxmeshd's userspace dataplane, `--ip-masq=false`.
    Vxmesh,
    /// The kernel vxlan driver with the rules vxmeshd installs by default.
    KernelVxlanMasq,
    /// vxmeshd's userspace dataplane with its default `--ip-masq`.
    VxmeshMasq,
    /// Pods' IPv6 over kernel VXLAN over an IPv6 underlay, flanneld's dual-stack
    /// recipe (`flannel-v6.1` beside `flannel.1`).
    KernelVxlan6,
    /// Pods' IPv6 between two dual-stack vxmeshd (userspace dataplane,
    /// `--ip-masq=false`): IPv6 crosses on the `flannel-v6.1` vxmeshd programs
    /// (docs/decisions/0018).
    Vxmesh6,
    /// Pods' IPv6 between two dual-stack vxmeshd whose threads carry it
    /// (`--ipv6-dataplane userspace`, docs/decisions/0034): VXLAN over UDP/IPv6 from
    /// the userspace dataplane.
    Vxmesh6Threads,
}

impl Mode {
    pub const ALL: [Mode; 8] = [
        Mode::NoOverlay,
        Mode::KernelVxlan,
        Mode::Vxmesh,
        Mode::KernelVxlanMasq,
        Mode::VxmeshMasq,
        Mode::KernelVxlan6,
        Mode::Vxmesh6,
        Mode::Vxmesh6Threads,
    ];

    /// How tables and charts name the mode.
    pub fn label(self) -> &'static str {
        match self {
            Mode::NoOverlay => "no overlay",
            Mode::KernelVxlan => "kernel VXLAN",
            Mode::Vxmesh => "vxmesh",
            Mode::KernelVxlanMasq => "kernel VXLAN + masq",
            Mode::VxmeshMasq => "vxmesh + masq",
            Mode::KernelVxlan6 => "kernel VXLAN, IPv6",
            Mode::Vxmesh6 => "vxmesh, IPv6",
            Mode::Vxmesh6Threads => "vxmesh, IPv6 in the threads",
        }
    }

    /// The name on the command line (`--modes`).
    pub fn key(self) -> &'static str {
        match self {
            Mode::NoOverlay => "none",
            Mode::KernelVxlan => "kernel",
            Mode::Vxmesh => "vxmesh",
            Mode::KernelVxlanMasq => "kernel-masq",
            Mode::VxmeshMasq => "vxmesh-masq",
            Mode::KernelVxlan6 => "kernel6",
            Mode::Vxmesh6 => "vxmesh6",
            Mode::Vxmesh6Threads => "vxmesh6-threads",
        }
    }

    /// A short tag for namespace and file names.
    pub fn tag(self) -> &'static str {
        match self {
            Mode::NoOverlay => "raw",
            Mode::KernelVxlan => "kvx",
            Mode::Vxmesh => "vxm",
            Mode::KernelVxlanMasq => "kvq",
            Mode::VxmeshMasq => "vxq",
            Mode::KernelVxlan6 => "kv6",
            Mode::Vxmesh6 => "vx6",
            Mode::Vxmesh6Threads => "vt6",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.key() == s)
    }

    /// Whether vxmeshd carries the traffic (etcd and the agents are needed).
    pub fn is_vxmesh(self) -> bool {
        matches!(
            self,
            Mode::Vxmesh | Mode::VxmeshMasq | Mode::Vxmesh6 | Mode::Vxmesh6Threads
        )
    }

    /// Whether the pods talk IPv6 (dual-stack nodes over an IPv6 underlay).
    pub fn ipv6(self) -> bool {
        matches!(
            self,
            Mode::KernelVxlan6 | Mode::Vxmesh6 | Mode::Vxmesh6Threads
        )
    }

    /// Whether the nodes hold vxmeshd's default masquerade rules.
    pub fn masq(self) -> bool {
        matches!(self, Mode::KernelVxlanMasq | Mode::VxmeshMasq)
    }

    /// The mode this one's ratio is taken against: kernel VXLAN with the same rules
    /// (both pay the same conntrack), for kernel VXLAN + masq the same driver without
    /// them (what the rules cost it), for the IPv6 modes kernel VXLAN over IPv6 (and
    /// for that one IPv4's kernel VXLAN: what IPv6 costs the driver); `None` for
    /// kernel VXLAN itself.
    pub fn baseline(self) -> Option<Mode> {
        match self {
            Mode::NoOverlay | Mode::Vxmesh | Mode::KernelVxlanMasq | Mode::KernelVxlan6 => {
                Some(Mode::KernelVxlan)
            }
            Mode::VxmeshMasq => Some(Mode::KernelVxlanMasq),
            Mode::Vxmesh6 | Mode::Vxmesh6Threads => Some(Mode::KernelVxlan6),
            Mode::KernelVxlan => None,
        }
    }
}

/// One reported metric; values are stored in the display unit.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

pub const TCP1_AB: &str = "tcp1_ab_gbps";
pub const TCP1_BA: &str = "tcp1_ba_gbps";
pub const TCP8_AB: &str = "tcp8_ab_gbps";
pub const TCP8_BA: &str = "tcp8_ba_gbps";
pub const RTT_MEDIAN: &str = "rtt_median_us";
pub const RTT_P99: &str = "rtt_p99_us";
/// Pings back to back (`ping -A`: the next request as soon as the reply is in), a
/// request/response chain: each packet finds the threads it needs as the last
/// reply left them.
pub const RTT_RR_MEDIAN: &str = "rtt_rr_median_us";
pub const RTT_RR_P99: &str = "rtt_rr_p99_us";
/// Ping while 8 TCP streams run from pod A to pod B (issue 15's latency under load).
pub const RTT_LOADED_MEDIAN: &str = "rtt_loaded_median_us";
pub const RTT_LOADED_P99: &str = "rtt_loaded_p99_us";
pub const UDP64_KPPS: &str = "udp64_kpps";
pub const UDP64_LOSS: &str = "udp64_loss_pct";
pub const CPU_MACHINE: &str = "cpu_machine_s_per_gb";
pub const CPU_AGENTS: &str = "cpu_agents_s_per_gb";
/// CPU busy while the idle ping runs (one request every 10 ms): what light traffic
/// costs, and what `--busy-poll` spends.
pub const PING_CPU_MACHINE: &str = "ping_cpu_machine_cores";
pub const PING_CPU_AGENTS: &str = "ping_cpu_agents_cores";

/// Every metric, in table order.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        key: TCP1_AB,
        label: "TCP 1 stream A→B",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    MetricDef {
        key: TCP1_BA,
        label: "TCP 1 stream B→A",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    MetricDef {
        key: TCP8_AB,
        label: "TCP 8 streams A→B",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    MetricDef {
        key: TCP8_BA,
        label: "TCP 8 streams B→A",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    MetricDef {
        key: RTT_MEDIAN,
        label: "ping RTT median",
        unit: "µs",
        higher_is_better: false,
    },
    MetricDef {
        key: RTT_P99,
        label: "ping RTT p99",
        unit: "µs",
        higher_is_better: false,
    },
    MetricDef {
        key: RTT_RR_MEDIAN,
        label: "ping RTT median, back to back (ping -A)",
        unit: "µs",
        higher_is_better: false,
    },
    MetricDef {
        key: RTT_RR_P99,
        label: "ping RTT p99, back to back (ping -A)",
        unit: "µs",
        higher_is_better: false,
    },
    MetricDef {
        key: RTT_LOADED_MEDIAN,
        label: "ping RTT median under load (8 TCP streams A→B)",
        unit: "µs",
        higher_is_better: false,
    },
    MetricDef {
        key: RTT_LOADED_P99,
        label: "ping RTT p99 under load (8 TCP streams A→B)",
        unit: "µs",
        higher_is_better: false,
    },
    MetricDef {
        key: UDP64_KPPS,
        label: "UDP 64 B rate at ≤ 1 % loss",
        unit: "kpps",
        higher_is_better: true,
    },
    MetricDef {
        key: UDP64_LOSS,
        label: "UDP 64 B loss at that rate",
        unit: "%",
        higher_is_better: false,
    },
    MetricDef {
        key: CPU_MACHINE,
        label: "machine CPU per GB (TCP tests)",
        unit: "CPU-s/GB",
        higher_is_better: false,
    },
    MetricDef {
        key: CPU_AGENTS,
        label: "vxmeshd CPU per GB (TCP tests)",
        unit: "CPU-s/GB",
        higher_is_better: false,
    },
    MetricDef {
        key: PING_CPU_MACHINE,
        label: "machine CPU busy during the ping test",
        unit: "CPUs",
        higher_is_better: false,
    },
    MetricDef {
        key: PING_CPU_AGENTS,
        label: "vxmeshd CPU busy during the ping test",
        unit: "CPUs",
        higher_is_better: false,
    },
];

/// The machine and software the run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub date_utc: String,
    pub git_commit: String,
    /// Uncommitted changes under dataplane/src or control/src when the run started.
    pub code_dirty: Option<bool>,
    pub load_before: String,
    pub load_after: String,
    /// Other heavy processes seen (VMs, compilers) at the start or end.
    pub busy_processes: Vec<String>,
    /// Versions of iperf3, etcd, vxmeshd.
    pub tools: BTreeMap<String, String>,
    /// When the measured vxmeshd binary was built (its mtime, UTC).
    #[serde(default)]
    pub vxmeshd_built_utc: String,
    /// The binary is older than the last commit under dataplane/ or control/:
    /// the figures may not describe `git_commit`.
    #[serde(default)]
    pub vxmeshd_older_than_code: Option<bool>,
    /// What moved results between machines: br_netfilter, CPU mitigations.
    #[serde(default)]
    pub conditions: Conditions,
}

/// The machine's conditions that change what a packet costs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Conditions {
    /// `bridge-nf-call-iptables` when br_netfilter is loaded (bridged pod traffic then
    /// passes the iptables hooks, conntrack included); `None` when it is not.
    pub br_netfilter_call_iptables: Option<String>,
    /// `/sys/devices/system/cpu/vulnerabilities`: `name: state` of each entry that is
    /// not "Not affected".
    pub cpu_vulnerabilities: Vec<String>,
    /// `erms`/`fsrm` among the CPU's flags (`None`: results written before they were
    /// recorded): without them the kernel's copies take a slower routine.
    #[serde(default)]
    pub copy_flags: Option<Vec<String>>,
    /// What a system call and a thread wake-up cost here, measured before the run
    /// (`None`: not measured, or results written before the probe existed).
    #[serde(default)]
    pub costs: Option<crate::probe::Costs>,
    /// The host's `net.ipv4.tcp_congestion_control`, which a new network namespace
    /// (every pod here) takes as its default: it decides how full a TCP sender keeps
    /// the queues on its path, so it moves the delay under load.
    #[serde(default)]
    pub tcp_congestion_control: Option<String>,
    /// The host's `net.ipv4.tcp_rmem` and `tcp_wmem` (min default max), which new
    /// namespaces copy: the most a TCP flow can keep in flight.
    #[serde(default)]
    pub tcp_rmem: Option<String>,
    #[serde(default)]
    pub tcp_wmem: Option<String>,
}

/// How the run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub command: String,
    pub quick: bool,
    pub repeats: usize,
    pub modes: Vec<Mode>,
    pub tcp_seconds: u32,
    pub tcp_omit_seconds: u32,
    pub pings: u32,
    pub ping_interval_ms: u32,
    pub udp_payload_bytes: u32,
    pub udp_probe_seconds: u32,
    pub udp_probes: u32,
    pub udp_max_loss_pct: f64,
    pub agent_args: Vec<String>,
    pub underlay_mtu: u32,
    /// `--segment-underlay`: UDP (tunnel) segmentation off on the underlay veth.
    #[serde(default)]
    pub segment_underlay: bool,
    /// `--tcp-cc`: the congestion control asked of every TCP test (`None`: the pods'
    /// default).
    #[serde(default)]
    pub tcp_cc: Option<String>,
}

/// One mode measured once (one repeat).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub repeat: usize,
    pub mode: Mode,
    /// Set when the topology or a measurement failed; metrics may be partial.
    pub error: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    /// Per-test figures, UDP probes, agent status and counters.
    pub details: serde_json::Value,
}

/// One metric across modes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRow {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub by_mode: BTreeMap<Mode, Summary>,
    /// Median of the mode over the median of its [`Mode::baseline`] (same run):
    /// kernel VXLAN with the same rules.
    pub ratio_to_kernel: BTreeMap<Mode, f64>,
}

/// One target of issue 4, checked against the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    /// `None` when a mode needed for the check was not measured.
    pub met: Option<bool>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub runs: Vec<Run>,
    pub summary: Vec<MetricRow>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

/// Medians with min/max over the repeats of each mode, and ratios to kernel VXLAN.
/// Every congestion control the runs' TCP tests reported for their senders, sorted,
/// each once.
pub fn congestion_used(runs: &[Run]) -> Vec<String> {
    let mut v: Vec<String> = runs
        .iter()
        .filter_map(|r| r.details.get("tcp").and_then(|t| t.as_array()))
        .flatten()
        .filter_map(|t| t.get("sender_congestion").and_then(|c| c.as_str()))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The TCP part of the report's conditions: which congestion control the tests ran
/// with and where it came from (`used`: what their senders reported,
/// [`congestion_used`]), and the socket buffer limits.
pub fn describe_tcp(c: &Conditions, asked: Option<&str>, used: &[String]) -> String {
    let host = c.tcp_congestion_control.as_deref().unwrap_or("unknown");
    let mut s = match asked {
        Some(cc) => {
            format!("TCP congestion control {cc} (--tcp-cc, where the host's default is {host})")
        }
        None => format!("TCP congestion control {host} (the host's default, which the pods take)"),
    };
    let expected = asked.unwrap_or(host);
    if !used.is_empty() && used != [expected] {
        s.push_str(&format!(" — **the senders reported {}**", used.join(", ")));
    }
    if let (Some(r), Some(w)) = (&c.tcp_rmem, &c.tcp_wmem) {
        s.push_str(&format!(", tcp_rmem {r}, tcp_wmem {w}"));
    }
    s
}

pub fn summarize(runs: &[Run], modes: &[Mode]) -> Vec<MetricRow> {
    let mut rows = Vec::new();
    for m in METRICS {
        let mut by_mode = BTreeMap::new();
        for &mode in modes {
            let vals: Vec<f64> = runs
                .iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| r.metrics.get(m.key).copied())
                .collect();
            if let Some(s) = Summary::of(&vals) {
                by_mode.insert(mode, s);
            }
        }
        if by_mode.is_empty() {
            continue;
        }
        let mut ratio_to_kernel = BTreeMap::new();
        for (&mode, s) in &by_mode {
            if let Some(k) = mode.baseline().and_then(|b| by_mode.get(&b)) {
                if k.median != 0.0 {
                    ratio_to_kernel.insert(mode, s.median / k.median);
                }
            }
        }
        rows.push(MetricRow {
            key: m.key.to_string(),
            label: m.label.to_string(),
            unit: m.unit.to_string(),
            higher_is_better: m.higher_is_better,
            by_mode,
            ratio_to_kernel,
        });
    }
    rows
}

fn row<'a>(rows: &'a [MetricRow], key: &str) -> Option<&'a MetricRow> {
    rows.iter().find(|r| r.key == key)
}

fn ratio(rows: &[MetricRow], key: &str) -> Option<f64> {
    row(rows, key)?.ratio_to_kernel.get(&Mode::Vxmesh).copied()
}

fn median(rows: &[MetricRow], key: &str, mode: Mode) -> Option<f64> {
    Some(row(rows, key)?.by_mode.get(&mode)?.median)
}

/// Issue 15's throughput, CPU and small-packet targets (ratios of vxmesh to kernel
/// VXLAN in the same run; they replaced issue 4's 0.75 × TCP and 0.3 × 64-byte
/// rate), and issue 4's added idle RTT, which issue 15 kept as a figure to report.
pub fn check_targets(rows: &[MetricRow], max_loss_pct: f64) -> Vec<Target> {
    let pair = |name: &str, ab: &str, ba: &str| {
        let (a, b) = (ratio(rows, ab), ratio(rows, ba));
        Target {
            name: name.to_string(),
            goal: "≥ 1.0 × kernel VXLAN, both directions".to_string(),
            measured: format!("A→B {}, B→A {}", fmt_ratio(a), fmt_ratio(b)),
            met: a.zip(b).map(|(a, b)| a >= 1.0 && b >= 1.0),
        }
    };
    let added = median(rows, RTT_MEDIAN, Mode::Vxmesh)
        .zip(median(rows, RTT_MEDIAN, Mode::KernelVxlan))
        .map(|(v, k)| v - k);
    let udp = ratio(rows, UDP64_KPPS);
    let loss = median(rows, UDP64_LOSS, Mode::Vxmesh);
    let cpu = ratio(rows, CPU_MACHINE);
    vec![
        pair("TCP, 1 stream", TCP1_AB, TCP1_BA),
        pair("TCP, 8 streams", TCP8_AB, TCP8_BA),
        Target {
            name: "machine CPU per GB".to_string(),
            goal: "≤ 1.15 × kernel VXLAN".to_string(),
            measured: fmt_ratio(cpu),
            met: cpu.map(|c| c <= 1.15),
        },
        Target {
            name: "UDP 64 B packet rate".to_string(),
            goal: format!("≥ 1.0 × kernel VXLAN, loss ≤ {max_loss_pct} %"),
            measured: format!(
                "{} at {} loss",
                fmt_ratio(udp),
                loss.map_or("–".to_string(), |l| format!("{l:.2} %"))
            ),
            met: udp.zip(loss).map(|(r, l)| r >= 1.0 && l <= max_loss_pct),
        },
        Target {
            name: "added RTT (median)".to_string(),
            goal: "≤ 50 µs over kernel VXLAN (issue 4)".to_string(),
            measured: added.map_or("–".to_string(), |a| format!("{a:+.0} µs")),
            met: added.map(|a| a <= 50.0),
        },
    ]
}

/// Median of `mode` over median of `base` for `key`.
fn between(rows: &[MetricRow], key: &str, mode: Mode, base: Mode) -> Option<f64> {
    let (v, b) = median(rows, key, mode).zip(median(rows, key, base))?;
    (b != 0.0).then_some(v / b)
}

/// Issue 15's masquerade target: with vxmeshd's default `--ip-masq` rules, pod-to-pod
/// TCP within 5 % of `--ip-masq=false`, both stream counts and directions; what the
/// same rules cost kernel VXLAN is shown beside it. `met` is `None` unless both vxmesh
/// modes were measured.
pub fn check_masq_target(rows: &[MetricRow]) -> Target {
    let tcp = [TCP1_AB, TCP1_BA, TCP8_AB, TCP8_BA];
    let names = [
        "1 stream A→B",
        "1 stream B→A",
        "8 streams A→B",
        "8 streams B→A",
    ];
    let ratios = |mode, base| -> Vec<Option<f64>> {
        tcp.iter().map(|k| between(rows, k, mode, base)).collect()
    };
    let vx = ratios(Mode::VxmeshMasq, Mode::Vxmesh);
    let kv = ratios(Mode::KernelVxlanMasq, Mode::KernelVxlan);
    let list = |r: &[Option<f64>]| -> String {
        names
            .iter()
            .zip(r)
            .map(|(n, r)| format!("{n} {}", fmt_ratio(*r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut measured = format!("vxmesh: {}", list(&vx));
    if kv.iter().any(Option::is_some) {
        let _ = write!(measured, "; kernel VXLAN: {}", list(&kv));
    }
    let all: Option<Vec<f64>> = vx.into_iter().collect();
    Target {
        name: "--ip-masq cost".to_string(),
        goal: "vxmesh + masq ≥ 0.95 × vxmesh (TCP, 1 and 8 streams, both directions)".to_string(),
        measured,
        met: all.map(|v| v.iter().all(|&r| r >= 0.95)),
    }
}

/// Issue 15's latency target: ping p50 and p99 while 8 TCP streams run, each ≤ 1.2 ×
/// kernel VXLAN's in the same run. `met` is `None` when either was not measured.
pub fn check_loaded_latency_target(rows: &[MetricRow]) -> Target {
    let (p50, p99) = (ratio(rows, RTT_LOADED_MEDIAN), ratio(rows, RTT_LOADED_P99));
    let us =
        |key| median(rows, key, Mode::Vxmesh).map_or("–".to_string(), |v| format!("{v:.0} µs"));
    Target {
        name: "latency under load".to_string(),
        goal: "ping p50 and p99 while 8 TCP streams run ≤ 1.2 × kernel VXLAN's".to_string(),
        measured: format!(
            "p50 {} ({}), p99 {} ({})",
            fmt_ratio(p50),
            us(RTT_LOADED_MEDIAN),
            fmt_ratio(p99),
            us(RTT_LOADED_P99)
        ),
        met: p50.zip(p99).map(|(a, b)| a <= 1.2 && b <= 1.2),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".to_string(), |r| format!("{r:.2}"))
}

/// A figure with 3 significant digits (at least 0 decimals, at most 3).
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

fn cell(s: Option<&Summary>) -> String {
    match s {
        None => "–".to_string(),
        Some(s) if s.n == 1 => fmt_value(s.median),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_value(s.median),
            fmt_value(s.min),
            fmt_value(s.max)
        ),
    }
}

/// How a ratio column names its baseline ("kernel", as before, for plain kernel VXLAN).
fn short(b: Mode) -> &'static str {
    match b {
        Mode::KernelVxlan => "kernel",
        other => other.label(),
    }
}

/// The markdown table: one row per metric, a column per mode (median, min–max),
/// and the ratios to kernel VXLAN.
pub fn markdown_table(rows: &[MetricRow], modes: &[Mode]) -> String {
    let mut s = String::from("| metric | unit |");
    for m in modes {
        let _ = write!(s, " {} |", m.label());
    }
    let others: Vec<(Mode, Mode)> = modes
        .iter()
        .filter_map(|&m| m.baseline().filter(|b| modes.contains(b)).map(|b| (m, b)))
        .collect();
    for (m, b) in &others {
        let _ = write!(s, " {} / {} |", m.label(), short(*b));
    }
    s.push_str("\n|---|---|");
    for _ in modes {
        s.push_str("---:|");
    }
    for _ in &others {
        s.push_str("---:|");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(s, "| {} | {} |", r.label, r.unit);
        for m in modes {
            let _ = write!(s, " {} |", cell(r.by_mode.get(m)));
        }
        for (m, _) in &others {
            let _ = write!(s, " {} |", fmt_ratio(r.ratio_to_kernel.get(m).copied()));
        }
        s.push('\n');
    }
    s
}

/// The targets as a markdown table.
pub fn markdown_targets(targets: &[Target]) -> String {
    let mut s = String::from("| target | goal | measured | met |\n|---|---|---|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {} | {} |", t.name, t.goal, t.measured, met);
    }
    s
}

/// `results.md`: machine, settings, the table, targets, notes and the chart.
/// The conditions line's words on the CPU's copy flags (what a copied byte costs the
/// kernel, docs/benchmarks.md).
fn describe_copy_flags(flags: Option<&[String]>) -> String {
    match flags {
        None => "CPU copy flags not recorded".to_string(),
        Some([]) => "CPU without erms/fsrm (the kernel's copies take a slower routine)".to_string(),
        Some(f) => format!(
            "CPU flags {} (the kernel copies with rep movsb)",
            f.join(" ")
        ),
    }
}

pub fn render_markdown(r: &Results, chart: Option<&str>) -> String {
    let m = &r.machine;
    let st = &r.settings;
    let mut s = String::new();
    let _ = writeln!(s, "### Results {}\n", m.date_utc);
    let _ = writeln!(
        s,
        "Machine: {} × {}, Linux {}; commit `{}`{}; load before/after: {} / {}.",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.git_commit,
        match m.code_dirty {
            Some(true) => " (with uncommitted changes under dataplane/ or control/)",
            _ => "",
        },
        m.load_before,
        m.load_after
    );
    if m.busy_processes.is_empty() {
        s.push_str("No VM or compiler was running during the run.\n");
    } else {
        let _ = writeln!(
            s,
            "**Other load during the run:** {} — figures are noisier than usual.",
            m.busy_processes.join(", ")
        );
    }
    let tools: Vec<&str> = m
        .tools
        .values()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    let _ = writeln!(s, "Tools: {}.", tools.join(", "));
    let c = &m.conditions;
    let _ = writeln!(
        s,
        "Conditions: kernel {}; {}; br_netfilter {}; underlay veth {}; {}; {}; CPU vulnerabilities \
         not \"Not affected\": {}.",
        m.kernel,
        describe_copy_flags(c.copy_flags.as_deref()),
        match &c.br_netfilter_call_iptables {
            Some(v) => format!("loaded (bridge-nf-call-iptables = {v})"),
            None => "not loaded".to_string(),
        },
        if st.segment_underlay {
            "segments UDP GSO (--segment-underlay: packets cross one by one)"
        } else {
            "carries UDP GSO buffers whole (default)"
        },
        c.costs.as_ref().map_or_else(
            || "system call and wake-up costs not measured".to_string(),
            crate::probe::describe
        ),
        describe_tcp(c, st.tcp_cc.as_deref(), &congestion_used(&r.runs)),
        if c.cpu_vulnerabilities.is_empty() {
            "none listed".to_string()
        } else {
            c.cpu_vulnerabilities.join("; ")
        }
    );
    if !m.vxmeshd_built_utc.is_empty() {
        let _ = writeln!(
            s,
            "vxmeshd binary built {}{}.",
            m.vxmeshd_built_utc,
            if m.vxmeshd_older_than_code == Some(true) {
                " — **older than the last commit under dataplane/ or control/**: it may not be the code of that commit"
            } else {
                ""
            }
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "Settings: {} repeat(s){}, iperf3 {} s per test (first {} s omitted), ping {} × {} ms, \
         UDP {} B payload searched in ≤ {} probes of {} s for ≤ {} % loss; \
         cells are median (min–max) over repeats; ratios are medians over kernel VXLAN's \
         median in this run (for vxmesh + masq: over kernel VXLAN + masq's, which holds the \
         same rules). Command: `{}`.\n",
        st.repeats,
        if st.quick { " (quick mode)" } else { "" },
        st.tcp_seconds,
        st.tcp_omit_seconds,
        st.pings,
        st.ping_interval_ms,
        st.udp_payload_bytes,
        st.udp_probes,
        st.udp_probe_seconds,
        st.udp_max_loss_pct,
        st.command
    );
    s.push_str(&markdown_table(&r.summary, &st.modes));
    s.push('\n');
    if !r.targets.is_empty() {
        s.push_str("Targets (issue 15's; the added idle RTT is issue 4's):\n\n");
        s.push_str(&markdown_targets(&r.targets));
        s.push('\n');
    }
    let failed: Vec<String> = r
        .runs
        .iter()
        .filter_map(|run| {
            run.error
                .as_ref()
                .map(|e| format!("{} repeat {}: {e}", run.mode.label(), run.repeat))
        })
        .collect();
    if !failed.is_empty() {
        s.push_str("Failures (their figures are missing or partial):\n\n");
        for f in failed {
            let _ = writeln!(s, "- {f}");
        }
        s.push('\n');
    }
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if let Some(c) = chart {
        let _ = writeln!(s, "\n![benchmark chart]({c})");
    }
    s
}

/// Calendar date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (`2026-01-31T12:00:00Z`, `20260131T120000Z`) for a Unix time in seconds.
pub fn utc_stamps(unix_secs: u64) -> (String, String) {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, repeat: usize, vals: &[(&str, f64)]) -> Run {
        Run {
            repeat,
            mode,
            error: None,
            metrics: vals.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_congestion_control_used_is_gathered_from_the_tests() {
        let mut a = run(Mode::KernelVxlan, 1, &[]);
        a.details = serde_json::json!({"tcp": [
            {"test": "tcp1-ab", "sender_congestion": "cubic"},
            {"test": "tcp1-ba", "sender_congestion": "cubic"},
            {"test": "tcp8-ab"},
        ]});
        let mut b = run(Mode::Vxmesh, 1, &[]);
        b.details = serde_json::json!({"tcp": [{"sender_congestion": "bbr"}]});
        let none = run(Mode::Vxmesh, 2, &[]);
        assert_eq!(congestion_used(&[a, b, none]), ["bbr", "cubic"]);
        assert!(congestion_used(&[]).is_empty());
    }

    #[test]
    fn the_report_says_which_congestion_control_ran_and_whence() {
        let c = Conditions {
            tcp_congestion_control: Some("bbr".into()),
            tcp_rmem: Some("4096 131072 6291456".into()),
            tcp_wmem: Some("4096 16384 4194304".into()),
            ..Conditions::default()
        };
        let mut used = vec!["bbr".to_string()];
        assert_eq!(
            describe_tcp(&c, None, &used),
            "TCP congestion control bbr (the host's default, which the pods take), \
             tcp_rmem 4096 131072 6291456, tcp_wmem 4096 16384 4194304"
        );
        used = vec!["cubic".into()];
        assert!(describe_tcp(&c, Some("cubic"), &used).starts_with(
            "TCP congestion control cubic (--tcp-cc, where the host's default is bbr),"
        ));
        // What the senders reported differs from what was asked: said loudly.
        assert!(describe_tcp(&c, None, &used).contains("**the senders reported cubic**"));
        let old = Conditions::default();
        assert_eq!(
            describe_tcp(&old, None, &[]),
            "TCP congestion control unknown (the host's default, which the pods take)"
        );
    }

    #[test]
    fn the_report_says_whether_kernel_copies_are_fast() {
        assert_eq!(
            describe_copy_flags(Some(&["erms".to_string(), "fsrm".to_string()])),
            "CPU flags erms fsrm (the kernel copies with rep movsb)"
        );
        assert!(describe_copy_flags(Some(&[])).contains("without erms/fsrm"));
        assert_eq!(describe_copy_flags(None), "CPU copy flags not recorded");
    }

    fn sample() -> Vec<Run> {
        let mut runs = Vec::new();
        for (i, (k, v)) in [(10.0, 8.0), (12.0, 9.0), (11.0, 10.0)].iter().enumerate() {
            runs.push(run(
                Mode::KernelVxlan,
                i + 1,
                &[
                    (TCP1_AB, *k),
                    (TCP1_BA, *k),
                    (TCP8_AB, *k),
                    (TCP8_BA, *k),
                    (RTT_MEDIAN, 40.0),
                    (UDP64_KPPS, 100.0),
                    (UDP64_LOSS, 0.1),
                ],
            ));
            runs.push(run(
                Mode::Vxmesh,
                i + 1,
                &[
                    (TCP1_AB, *v),
                    (TCP1_BA, *v),
                    (TCP8_AB, *v),
                    (TCP8_BA, 5.0),
                    (RTT_MEDIAN, 70.0),
                    (UDP64_KPPS, 40.0),
                    (UDP64_LOSS, 0.5),
                ],
            ));
        }
        runs
    }

    #[test]
    fn ipv6_modes_are_taken_against_kernel_vxlan_over_ipv6() {
        assert_eq!(Mode::Vxmesh6.baseline(), Some(Mode::KernelVxlan6));
        assert_eq!(Mode::KernelVxlan6.baseline(), Some(Mode::KernelVxlan));
        assert!(Mode::Vxmesh6.is_vxmesh() && !Mode::Vxmesh6.masq());
        assert!(Mode::ALL.iter().filter(|m| m.ipv6()).count() == 3);
        assert_eq!(Mode::Vxmesh6Threads.baseline(), Some(Mode::KernelVxlan6));
        assert!(Mode::Vxmesh6Threads.is_vxmesh());
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.key()), Some(m));
        }
    }

    #[test]
    fn summary_and_ratios() {
        let rows = summarize(&sample(), &[Mode::KernelVxlan, Mode::Vxmesh]);
        let r = row(&rows, TCP1_AB).unwrap();
        assert_eq!(r.by_mode[&Mode::KernelVxlan].median, 11.0);
        assert_eq!(r.by_mode[&Mode::Vxmesh].min, 8.0);
        assert!((r.ratio_to_kernel[&Mode::Vxmesh] - 9.0 / 11.0).abs() < 1e-12);
        assert!(!r.ratio_to_kernel.contains_key(&Mode::KernelVxlan));
        // metrics nobody measured are left out
        assert!(row(&rows, CPU_AGENTS).is_none());
    }

    #[test]
    fn targets() {
        let rows = summarize(&sample(), &[Mode::KernelVxlan, Mode::Vxmesh]);
        let t = check_targets(&rows, 1.0);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "TCP, 1 stream",
                "TCP, 8 streams",
                "machine CPU per GB",
                "UDP 64 B packet rate",
                "added RTT (median)"
            ]
        );
        assert_eq!(t[0].met, Some(false)); // 9/11 = 0.82 both ways, under 1.0
        assert_eq!(t[0].measured, "A→B 0.82, B→A 0.82");
        assert_eq!(t[1].met, Some(false)); // B→A 5/11
        assert_eq!(t[2].met, None, "CPU not measured");
        assert_eq!(t[2].measured, "–");
        assert_eq!(t[3].met, Some(false)); // 0.4 of kernel VXLAN
        assert_eq!(t[3].measured, "0.40 at 0.50 % loss");
        assert_eq!(t[4].met, Some(true)); // +30 µs
        assert_eq!(t[4].measured, "+30 µs");
        // At the goals: the same rate and the CPU 1.15 × kernel VXLAN's.
        let mut runs = Vec::new();
        for (mode, cpu) in [(Mode::KernelVxlan, 1.0), (Mode::Vxmesh, 1.15)] {
            runs.push(run(
                mode,
                1,
                &[
                    (TCP1_AB, 10.0),
                    (TCP1_BA, 10.0),
                    (TCP8_AB, 10.0),
                    (TCP8_BA, 10.0),
                    (CPU_MACHINE, cpu),
                    (UDP64_KPPS, 50.0),
                    (UDP64_LOSS, 0.5),
                ],
            ));
        }
        let t = check_targets(&summarize(&runs, &[Mode::KernelVxlan, Mode::Vxmesh]), 1.0);
        let met: Vec<Option<bool>> = t.iter().map(|t| t.met).collect();
        assert_eq!(met, [Some(true), Some(true), Some(true), Some(true), None]);
        assert_eq!(t[2].measured, "1.15");
        let strict = check_targets(&summarize(&runs, &[Mode::KernelVxlan, Mode::Vxmesh]), 0.1);
        assert_eq!(strict[3].met, Some(false), "loss over the limit");
        let none = check_targets(&summarize(&sample(), &[Mode::Vxmesh]), 1.0);
        assert!(none.iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn table_renders_every_mode_and_ratio() {
        let modes = [Mode::KernelVxlan, Mode::Vxmesh];
        let md = markdown_table(&summarize(&sample(), &modes), &modes);
        let first = md.lines().next().unwrap();
        assert_eq!(
            first,
            "| metric | unit | kernel VXLAN | vxmesh | vxmesh / kernel |"
        );
        assert!(md.contains(
            "| TCP 1 stream A→B | Gbit/s | 11.0 (10.0–12.0) | 9.00 (8.00–10.0) | 0.82 |"
        ));
    }

    /// The sample with both + masq modes: vxmesh + masq at 0.9 × vxmesh in TCP 1 stream
    /// A→B only, kernel VXLAN + masq at 10 everywhere.
    fn masq_sample() -> Vec<Run> {
        let mut runs = sample();
        for r in sample() {
            let mut m = r.clone();
            m.mode = match r.mode {
                Mode::KernelVxlan => Mode::KernelVxlanMasq,
                _ => Mode::VxmeshMasq,
            };
            for (k, v) in m.metrics.iter_mut() {
                if m.mode == Mode::KernelVxlanMasq {
                    *v = 10.0;
                } else if k == TCP1_AB {
                    *v *= 0.9;
                }
            }
            runs.push(m);
        }
        runs
    }

    #[test]
    fn masq_modes_are_compared_with_kernel_under_the_same_rules() {
        let modes = Mode::ALL;
        let rows = summarize(&masq_sample(), &modes);
        let r = row(&rows, TCP1_AB).unwrap();
        // vxmesh + masq (median 8.1) over kernel VXLAN + masq (10), not over kernel (11).
        assert!((r.ratio_to_kernel[&Mode::VxmeshMasq] - 0.81).abs() < 1e-9);
        // kernel VXLAN + masq over kernel VXLAN: what the rules cost the kernel.
        assert!((r.ratio_to_kernel[&Mode::KernelVxlanMasq] - 10.0 / 11.0).abs() < 1e-9);
        let md = markdown_table(
            &rows,
            &[
                Mode::KernelVxlan,
                Mode::Vxmesh,
                Mode::KernelVxlanMasq,
                Mode::VxmeshMasq,
            ],
        );
        assert_eq!(
            md.lines().next().unwrap(),
            "| metric | unit | kernel VXLAN | vxmesh | kernel VXLAN + masq | vxmesh + masq \
             | vxmesh / kernel | kernel VXLAN + masq / kernel \
             | vxmesh + masq / kernel VXLAN + masq |"
        );
        let t = check_masq_target(&rows);
        assert_eq!(t.met, Some(false), "{t:?}");
        assert_eq!(
            t.measured,
            "vxmesh: 1 stream A→B 0.90, 1 stream B→A 1.00, 8 streams A→B 1.00, 8 streams B→A 1.00; \
             kernel VXLAN: 1 stream A→B 0.91, 1 stream B→A 0.91, 8 streams A→B 0.91, 8 streams B→A 0.91"
        );
        // Without the + masq modes there is nothing to check.
        let plain = summarize(&sample(), &[Mode::KernelVxlan, Mode::Vxmesh]);
        assert_eq!(check_masq_target(&plain).met, None);
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.key()), Some(m));
            assert_eq!(m.masq(), m.key().ends_with("-masq"));
        }
    }

    #[test]
    fn latency_under_load_target() {
        let mut runs = sample();
        for r in &mut runs {
            let (p50, p99) = match r.mode {
                Mode::KernelVxlan => (200.0, 1000.0),
                _ => (230.0, 1300.0),
            };
            r.metrics.insert(RTT_LOADED_MEDIAN.into(), p50);
            r.metrics.insert(RTT_LOADED_P99.into(), p99);
        }
        let rows = summarize(&runs, &[Mode::KernelVxlan, Mode::Vxmesh]);
        let t = check_loaded_latency_target(&rows);
        assert_eq!(t.measured, "p50 1.15 (230 µs), p99 1.30 (1300 µs)");
        assert_eq!(t.met, Some(false), "p99 is over 1.2");
        // Results from before the loaded ping: nothing to judge.
        let old = summarize(&sample(), &[Mode::KernelVxlan, Mode::Vxmesh]);
        assert_eq!(check_loaded_latency_target(&old).met, None);
    }

    #[test]
    fn value_format() {
        assert_eq!(fmt_value(15.734), "15.7");
        assert_eq!(fmt_value(1234.4), "1234");
        assert_eq!(fmt_value(0.01234), "0.012");
        assert_eq!(fmt_value(4.5678), "4.57");
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_stamps(0).0, "1970-01-01T00:00:00Z");
        // 2024-02-29T23:59:59Z
        assert_eq!(
            utc_stamps(1_709_251_199),
            (
                "2024-02-29T23:59:59Z".to_string(),
                "20240229T235959Z".to_string()
            )
        );
        assert_eq!(utc_stamps(1_767_225_600).0, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn modes_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.key()), Some(m));
        }
        let j = serde_json::to_string(&BTreeMap::from([(Mode::KernelVxlan, 1)])).unwrap();
        assert_eq!(j, r#"{"kernel_vxlan":1}"#);
    }
}
