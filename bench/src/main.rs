//! vxmesh-bench: the benchmark harness of issue 4 (see docs/benchmarks.md).
//!
//! `vxmesh-bench` (or `vxmesh-bench run`) builds the same 2-node topology in
//! network namespaces for each mode (no overlay, kernel VXLAN, vxmesh), measures
//! TCP/ping/UDP/CPU, tears it down, and writes `results.json`, `results.md`, a
//! chart and iperf3's raw JSON. `vxmesh-bench profile` records a system-wide
//! `perf` profile under iperf3 load. `vxmesh-bench cleanup` removes namespaces
//! a killed run left behind. Normally started by `scripts/bench.sh` as root.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use vxmesh_bench::measure::{self, Outcome, Plan, RawOut};
use vxmesh_bench::parse;
use vxmesh_bench::proc::run_bounded;
use vxmesh_bench::report::{self, Machine, Mode, Results, Run, Settings};
use vxmesh_bench::scale::{self, ScaleResults, ScaleRun};
use vxmesh_bench::sim;
use vxmesh_bench::stop;
use vxmesh_bench::topo::{self, Context, Topology};

/// Namespace names start with this, then the pid.
const NS_BASE: &str = "vxb";
const PLOT_PY: &str = include_str!("../plot.py");
const PLOT_SCALE_PY: &str = include_str!("../plot_scale.py");
const DOCS_BEGIN: &str = "<!-- bench-results:begin -->";
const DOCS_END: &str = "<!-- bench-results:end -->";

#[derive(Parser, Debug)]
#[command(
    name = "vxmesh-bench",
    version,
    about = "vxmesh benchmark: no overlay vs kernel VXLAN vs vxmesh, in network namespaces (root)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure every mode and write the report (the default).
    Run(RunArgs),
    /// Record a system-wide perf profile while iperf3 runs through a mode.
    Profile(ProfileArgs),
    /// Remove namespaces (and their processes) left by runs that were killed.
    Cleanup,
    /// Re-render results.md and the chart of an earlier run (and with
    /// --update-docs, docs/benchmarks.md) from its results.json.
    Report(ReportArgs),
    /// Build one mode's topology and keep it for manual experiments (prints the
    /// namespace names and pod addresses) until Ctrl-C or --seconds pass.
    Hold(HoldArgs),
    /// Simulates N nodes in one process (the control plane's pure cores, an in-memory
    /// registry): allocation, watch fan-out, churn, restart storm, per-node memory.
    Sim(SimArgs),
    /// N nodes (namespaces with agents) against a 3-member etcd, started together:
    /// convergence, join, removal, restart storm, agent and etcd cost (docs/scale.md).
    Scale(ScaleArgs),
}

#[derive(Args, Debug, Clone)]
struct SimArgs {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Nodes that run the agent's whole per-event path.
    #[arg(long, default_value_t = 4)]
    observers: usize,
    #[arg(long, default_value = "10.0.0.0/8")]
    network: String,
    #[arg(long, default_value_t = 24)]
    subnet_len: u8,
    /// How long etcd is unreachable when the restart storm begins (ms).
    #[arg(long, default_value_t = 5000)]
    outage_ms: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit 1 unless the observers stay exact, judge events on their own, and the
    /// storm's retries spread out (for CI).
    #[arg(long)]
    check: bool,
}

#[derive(Args, Debug, Clone)]
struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// Node counts, comma separated; each is a fresh lab (e.g. 100,300,500,1000).
    #[arg(long, value_delimiter = ',', default_value = "50")]
    nodes: Vec<usize>,
    /// The agents' dataplane: userspace (the default, a TAP and two threads per
    /// agent) or kernel (flannel's vxlan device, no threads).
    #[arg(long, default_value = "userspace")]
    dataplane: String,
    /// The Network in etcd's config (the pool must hold every node).
    #[arg(long, default_value = "10.0.0.0/12")]
    network: String,
    #[arg(long, default_value_t = 24)]
    subnet_len: u8,
    /// Name of these runs in the results and the chart [default: the git commit].
    #[arg(long)]
    label: Option<String>,
    /// Seconds to wait for every node to have every route.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Only the start-up (no join, removal or restart storm).
    #[arg(long)]
    start_only: bool,
    /// Add the runs to this earlier scale.json (to chart several labels together).
    #[arg(long)]
    append: Option<PathBuf>,
    /// Skip drawing the chart.
    #[arg(long)]
    no_chart: bool,
    /// Exit 1 unless every phase completed and every ping was answered (for CI).
    #[arg(long)]
    check: bool,
}

#[derive(Args, Debug, Clone)]
struct ReportArgs {
    /// The run's output directory (holding results.json).
    dir: PathBuf,
    /// Repository root [default: where this was built].
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Also copy the table and chart into docs/benchmarks.md and docs/img/bench-latest.png.
    #[arg(long)]
    update_docs: bool,
}

#[derive(Args, Debug, Clone)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// The mode (a `--modes` name: none, kernel, vxmesh, kernel-masq, vxmesh-masq, kernel6, vxmesh6,
    /// vxmesh6-threads).
    #[arg(long, default_value = "vxmesh")]
    mode: String,
    /// Tear down after this many seconds at the latest.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Directory holding vxmeshd and vxmeshctl [default: this program's directory if
    /// vxmeshd is there, else <repo>/target/release].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Output directory [default: <repo>/bench/results/<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repository root (for git, defaults and --update-docs) [default: where this was built].
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Extra vxmeshd flags, one string split at spaces (e.g. "--tap-queues 2").
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    agent_args: String,
    /// Turn UDP and UDP-tunnel segmentation off on the underlay veth, so 64 KB GSO
    /// buffers are cut into wire-sized packets as a NIC path would, and the receiving
    /// node gets them one by one (veth does no GRO here).
    #[arg(long)]
    segment_underlay: bool,
    /// TCP congestion control of every iperf3 TCP test (iperf3 -C: the sending end
    /// uses it in either direction), e.g. cubic, the default of Debian's and Ubuntu's
    /// kernels [default: the pods' own, which they take from the host's
    /// net.ipv4.tcp_congestion_control; the report names it either way].
    #[arg(long, value_parser = vxmesh_bench::parse::congestion_name)]
    tcp_cc: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// A ~2-minute smoke run: 1 repeat, 4 s tests, 100 pings, ≤ 4 UDP probes of 2 s.
    #[arg(long)]
    quick: bool,
    /// Repeats of every mode (≥ 3 for a real run) [default: 3; quick: 1].
    #[arg(long)]
    repeats: Option<usize>,
    /// Seconds per iperf3 TCP test [default: 10; quick: 4].
    #[arg(long)]
    seconds: Option<u32>,
    /// Seconds iperf3 omits at the start of each TCP test (slow start) [default: 1; quick: 0].
    #[arg(long)]
    omit: Option<u32>,
    /// Echo requests per ping test [default: 200; quick: 100].
    #[arg(long)]
    pings: Option<u32>,
    /// Interval between echo requests, in ms.
    #[arg(long, default_value_t = 10)]
    ping_interval_ms: u32,
    /// Seconds per UDP probe [default: 3; quick: 2].
    #[arg(long)]
    udp_seconds: Option<u32>,
    /// Most UDP probes in the rate search [default: 7; quick: 4].
    #[arg(long)]
    udp_probes: Option<u32>,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 64)]
    udp_payload: u32,
    /// Loss (percent) the reported UDP rate may have.
    #[arg(long, default_value_t = 1.0)]
    udp_max_loss: f64,
    /// Modes to measure, comma separated: none, kernel, vxmesh, kernel-masq,
    /// vxmesh-masq (those two with vxmeshd's default `--ip-masq` rules on the nodes),
    /// kernel6, vxmesh6 (pods' IPv6 on dual-stack nodes over an IPv6 underlay),
    /// vxmesh6-threads (the same, carried by vxmesh's threads: `--ipv6-dataplane
    /// userspace`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,kernel,vxmesh,kernel-masq,vxmesh-masq,kernel6,vxmesh6,vxmesh6-threads"
    )]
    modes: Vec<String>,
    /// Copy the table and chart into docs/benchmarks.md and docs/img/bench-latest.png.
    #[arg(long)]
    update_docs: bool,
    /// Skip drawing the chart.
    #[arg(long)]
    no_chart: bool,
}

#[derive(Args, Debug, Clone)]
struct ProfileArgs {
    #[command(flatten)]
    common: Common,
    /// Modes to profile, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "kernel,vxmesh")]
    modes: Vec<String>,
    /// Seconds of profile (iperf3 runs 4 s longer).
    #[arg(long, default_value_t = 15)]
    seconds: u32,
    /// iperf3 parallel streams.
    #[arg(long, default_value_t = 1)]
    streams: u32,
    /// Traffic B→A instead of A→B.
    #[arg(long)]
    reverse: bool,
    /// Sampling frequency (Hz) of perf's cpu-clock event.
    #[arg(long, default_value_t = 999)]
    freq: u32,
    /// Load with one unlimited UDP stream of datagrams this long (the 64-byte test:
    /// `--udp-len 64`) instead of TCP; rates are then also given per packet.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=65_000))]
    udp_len: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        None => run(cli.run),
        Some(Cmd::Run(a)) => run(a),
        Some(Cmd::Profile(a)) => profile(a),
        Some(Cmd::Cleanup) => cleanup(),
        Some(Cmd::Hold(a)) => hold(a),
        Some(Cmd::Report(a)) => rerender(a),
        Some(Cmd::Scale(a)) => scale(a),
        Some(Cmd::Sim(a)) => sim(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vxmesh-bench: error: {e:#}");
            if stop::requested() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn repo_root(c: &Common) -> PathBuf {
    c.repo.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    })
}

fn parse_modes(v: &[String]) -> anyhow::Result<Vec<Mode>> {
    let mut modes = Vec::new();
    for s in v {
        let m = Mode::parse(s.trim()).with_context(|| {
            format!("unknown mode {s:?} (none, kernel, vxmesh, kernel-masq, vxmesh-masq, kernel6, vxmesh6, vxmesh6-threads)")
        })?;
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    if modes.is_empty() {
        bail!("no mode to run");
    }
    Ok(modes)
}

fn now_stamps() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    report::utc_stamps(secs)
}

/// Root, the tools on PATH, and the agent binaries when vxmesh is measured.
fn preflight(bin_dir: &Path, modes: &[Mode], extra: &[&str]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (network namespaces); use: sudo scripts/bench.sh");
    }
    let mut tools = vec!["ip", "bridge", "iperf3", "ping", "ss"];
    if modes.iter().any(|m| m.is_vxmesh()) {
        tools.extend(["etcd", "etcdctl"]);
    }
    tools.extend_from_slice(extra);
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|t| t.to_string())
        .collect();
    if modes.iter().any(|m| m.is_vxmesh()) {
        for b in ["vxmeshd", "vxmeshctl"] {
            if !bin_dir.join(b).is_file() {
                missing.push(bin_dir.join(b).display().to_string());
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing: {} (iperf3/etcd/iproute2 from Debian; binaries from cargo build --release)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// VMs and compilers running now (other engineers' work that skews figures).
fn busy_processes() -> Vec<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
                continue;
            };
            let comm = comm.trim();
            if comm.starts_with("qemu-system")
                || matches!(comm, "rustc" | "cc1" | "cc1plus" | "clang" | "ld.lld")
            {
                *counts.entry(comm.to_string()).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect()
}

/// Adds to `seen` the process kinds of `now` not listed yet (keeping the
/// highest count per kind).
fn note_busy(seen: &mut Vec<String>, now: &[String]) {
    for p in now {
        let kind = p.split(" ×").next().unwrap_or(p);
        match seen.iter_mut().find(|s| s.split(" ×").next() == Some(kind)) {
            Some(s) => {
                let count = |x: &str| {
                    x.rsplit('×')
                        .next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                if count(p) > count(s) {
                    s.clone_from(p);
                }
            }
            None => seen.push(p.clone()),
        }
    }
}

fn machine_info(repo: &Path, bin_dir: &Path) -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let repo_s = repo.display().to_string();
    let git_commit = first_line("git", &["-C", &repo_s, "rev-parse", "--short=12", "HEAD"]);
    let code_dirty = Command::new("git")
        .args([
            "-C",
            &repo_s,
            "status",
            "--porcelain",
            "--",
            "dataplane/src",
            "control/src",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| !o.stdout.is_empty());
    let mut tools = std::collections::BTreeMap::new();
    tools.insert("iperf3".into(), first_line("iperf3", &["--version"]));
    tools.insert("etcd".into(), first_line("etcd", &["--version"]));
    let vxd = bin_dir.join("vxmeshd").display().to_string();
    tools.insert("vxmeshd".into(), first_line(&vxd, &["--version"]));
    let built = std::fs::metadata(bin_dir.join("vxmeshd"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let code_commit_time: Option<u64> = first_line(
        "git",
        &[
            "-C",
            &repo_s,
            "log",
            "-1",
            "--format=%ct",
            "--",
            "dataplane",
            "control",
        ],
    )
    .parse()
    .ok();
    let mut vulns = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities") {
        for e in rd.flatten() {
            if let Ok(state) = std::fs::read_to_string(e.path()) {
                vulns.push((e.file_name().to_string_lossy().into_owned(), state));
            }
        }
    }
    let conditions = report::Conditions {
        br_netfilter_call_iptables: std::fs::read_to_string(
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
        )
        .ok()
        .map(|s| s.trim().to_string()),
        cpu_vulnerabilities: parse::vulnerabilities(&vulns),
        copy_flags: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .map(|c| parse::copy_flags(&c)),
        tcp_congestion_control: sysctl_words("tcp_congestion_control"),
        tcp_rmem: sysctl_words("tcp_rmem"),
        tcp_wmem: sysctl_words("tcp_wmem"),
        costs: match vxmesh_bench::probe::measure() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("vxmesh-bench: could not measure system call and wake-up costs: {e}");
                None
            }
        },
    };
    Machine {
        conditions,
        vxmeshd_built_utc: built.map_or(String::new(), |b| report::utc_stamps(b).0),
        vxmeshd_older_than_code: built.zip(code_commit_time).map(|(b, c)| b < c),
        kernel,
        cpu_model,
        cores,
        date_utc: now_stamps().0,
        git_commit,
        code_dirty,
        load_before: loadavg(),
        load_after: String::new(),
        busy_processes: busy_processes(),
        tools,
    }
}

/// `/proc/sys/net/ipv4/<name>` with its whitespace runs made single spaces (`None`:
/// unreadable).
fn sysctl_words(name: &str) -> Option<String> {
    let v = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok()?;
    Some(v.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn cleanup() -> anyhow::Result<ExitCode> {
    let mut removed = scale::remove_stale(NS_BASE);
    removed.extend(topo::remove_stale(NS_BASE));
    if removed.is_empty() {
        eprintln!("nothing to clean up");
    } else {
        eprintln!("removed: {}", removed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

struct Layout {
    repo: PathBuf,
    bin_dir: PathBuf,
    out: PathBuf,
    raw: PathBuf,
    logs: PathBuf,
    stamp: String,
}

fn layout(c: &Common, suffix: &str) -> anyhow::Result<Layout> {
    let repo = repo_root(c);
    // Default: next to this executable if vxmeshd is there (scripts/bench.sh
    // runs target/release/vxmesh-bench), else <repo>/target/release.
    let bin_dir = c.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .filter(|d| d.join("vxmeshd").is_file())
            .unwrap_or_else(|| repo.join("target/release"))
    });
    let stamp = now_stamps().1;
    let out = c
        .out
        .clone()
        .unwrap_or_else(|| repo.join("bench/results").join(format!("{stamp}{suffix}")));
    let raw = out.join("raw");
    let logs = out.join("logs");
    for d in [&out, &raw, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(Layout {
        repo,
        bin_dir,
        out,
        raw,
        logs,
        stamp,
    })
}

fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let modes = parse_modes(&a.modes)?;
    let q = a.quick;
    let repeats = a.repeats.unwrap_or(if q { 1 } else { 3 }).max(1);
    let plan = Plan {
        tcp_seconds: a.seconds.unwrap_or(if q { 4 } else { 10 }).max(1),
        tcp_omit: a.omit.unwrap_or(if q { 0 } else { 1 }),
        pings: a.pings.unwrap_or(if q { 100 } else { 200 }).max(1),
        ping_interval_ms: a.ping_interval_ms.max(2),
        udp_payload: a.udp_payload.clamp(16, 1400),
        udp_probe_seconds: a.udp_seconds.unwrap_or(if q { 2 } else { 3 }).max(1),
        udp_probes: a.udp_probes.unwrap_or(if q { 4 } else { 7 }).clamp(1, 20),
        udp_max_loss_pct: a.udp_max_loss,
    };
    let l0 = layout(&a.common, "")?;
    preflight(&l0.bin_dir, &modes, &[])?;
    stop::install().context("installing the signal handler")?;
    let stale = topo::remove_stale(NS_BASE);
    if !stale.is_empty() {
        eprintln!("removed namespaces of killed runs: {}", stale.join(", "));
    }
    let agent_args: Vec<String> = a
        .common
        .agent_args
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut machine = machine_info(&l0.repo, &l0.bin_dir);
    if !machine.busy_processes.is_empty() {
        eprintln!(
            "warning: other load on this machine: {} (figures will be noisier)",
            machine.busy_processes.join(", ")
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let settings = Settings {
        command,
        quick: q,
        repeats,
        modes: modes.clone(),
        tcp_seconds: plan.tcp_seconds,
        tcp_omit_seconds: plan.tcp_omit,
        pings: plan.pings,
        ping_interval_ms: plan.ping_interval_ms,
        udp_payload_bytes: plan.udp_payload,
        udp_probe_seconds: plan.udp_probe_seconds,
        udp_probes: plan.udp_probes,
        udp_max_loss_pct: plan.udp_max_loss_pct,
        agent_args: agent_args.clone(),
        underlay_mtu: topo::UNDERLAY_MTU,
        segment_underlay: a.common.segment_underlay,
        tcp_cc: a.common.tcp_cc.clone(),
    };
    eprintln!(
        "vxmesh-bench: {} repeat(s) of {}; output in {}",
        repeats,
        modes
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", "),
        l0.out.display()
    );
    let started = Instant::now();
    let prefix = format!("{NS_BASE}{}", std::process::id());
    let mut runs = Vec::new();
    'repeats: for r in 1..=repeats {
        // Rotate the order each repeat so no mode always runs first or last.
        for i in 0..modes.len() {
            let mode = modes[(i + r - 1) % modes.len()];
            eprintln!(
                "[{:>4}s] repeat {r}/{repeats}: {}",
                started.elapsed().as_secs(),
                mode.label()
            );
            // Other engineers' VMs and builds come and go: look before every mode.
            let busy_now = busy_processes();
            note_busy(&mut machine.busy_processes, &busy_now);
            let ctx = Context {
                prefix: prefix.clone(),
                bin_dir: l0.bin_dir.clone(),
                log_dir: l0.logs.clone(),
                agent_args: agent_args.clone(),
                segment_underlay: a.common.segment_underlay,
                tcp_cc: a.common.tcp_cc.clone(),
                run_tag: format!("r{r}"),
            };
            let tag = format!("r{r}-{}", mode.key());
            let raw = RawOut {
                dir: &l0.raw,
                tag: &tag,
            };
            let mut outcome = Outcome::default();
            outcome
                .details
                .insert("load_at_start".into(), serde_json::json!(loadavg()));
            outcome
                .details
                .insert("busy_at_start".into(), serde_json::json!(busy_now));
            let res = (|| -> anyhow::Result<()> {
                let mut t = Topology::build(mode, &ctx)?;
                outcome
                    .details
                    .insert("pod_mtu".into(), serde_json::json!(t.pod_mtu));
                let m = measure::measure_all(&mut t, &ctx, &plan, raw, &mut outcome);
                outcome
                    .details
                    .insert("agents".into(), measure::agent_snapshot(&t, &ctx));
                outcome
                    .details
                    .insert("links".into(), measure::link_stats(&t));
                outcome
                    .details
                    .insert("netfilter".into(), measure::netfilter_state(&t));
                m
                // `t` drops here: daemons stopped, namespaces deleted.
            })();
            let error = res.err().map(|e| {
                eprintln!("    FAILED: {e:#}");
                format!("{e:#}")
            });
            runs.push(Run {
                repeat: r,
                mode,
                error,
                metrics: outcome.metrics,
                details: serde_json::Value::Object(outcome.details),
            });
            if stop::requested() {
                eprintln!("interrupted: everything torn down; writing partial results");
                break 'repeats;
            }
        }
    }
    machine.load_after = loadavg();
    note_busy(&mut machine.busy_processes, &busy_processes());
    let summary = report::summarize(&runs, &modes);
    let mut targets = if modes.contains(&Mode::KernelVxlan) && modes.contains(&Mode::Vxmesh) {
        let mut t = report::check_targets(&summary, plan.udp_max_loss_pct);
        t.push(report::check_loaded_latency_target(&summary));
        t
    } else {
        Vec::new()
    };
    if modes.contains(&Mode::Vxmesh) && modes.contains(&Mode::VxmeshMasq) {
        targets.push(report::check_masq_target(&summary));
    }
    let notes = notes(&runs, &agent_args, a.common.segment_underlay);
    let results = Results {
        machine,
        settings,
        runs,
        summary,
        targets,
        notes,
    };
    let json_path = l0.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    let chart = if a.no_chart {
        None
    } else {
        match draw_chart(&l0.out) {
            Ok(()) => Some("chart.png"),
            Err(e) => {
                eprintln!("warning: no chart: {e:#}");
                None
            }
        }
    };
    let md = report::render_markdown(&results, chart);
    std::fs::write(l0.out.join("results.md"), &md)?;
    println!("{md}");
    eprintln!(
        "wrote {}/results.{{json,md}}{} and raw iperf3 JSON in {} ({} s)",
        l0.out.display(),
        if chart.is_some() { ", chart.png" } else { "" },
        l0.raw.display(),
        started.elapsed().as_secs()
    );
    if a.update_docs {
        if stop::requested() {
            eprintln!("not updating docs with a partial run");
        } else {
            update_docs(&l0, &results, chart.is_some())?;
        }
    }
    Ok(if stop::requested() {
        ExitCode::from(130)
    } else if results.runs.iter().any(|r| r.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The honesty note about the underlay the run had.
fn underlay_note(segment_underlay: bool) -> &'static str {
    if segment_underlay {
        "Honesty note: the underlay is a veth pair with UDP and UDP-tunnel segmentation turned \
         off (--segment-underlay), so both the kernel VXLAN driver and vxmesh have their ~64 KB \
         buffers cut into wire-sized packets, and the receiver gets them one by one (a veth does \
         no GRO here, where a real NIC's NAPI would coalesce them for both); the comparison is \
         between the two overlays on the same path."
    } else {
        "Honesty note: the underlay is a veth pair, which advertises tx-udp-segmentation and \
         tx-udp_tnl-segmentation, so both the kernel VXLAN driver and vxmesh (UDP GSO) hand ~64 KB \
         buffers across it unsegmented and the receiver gets them whole (GRO). A real NIC segments \
         them (in hardware or software) for both; absolute figures here are higher than on a wire, \
         and the comparison is between the two overlays on the same path (--segment-underlay \
         measures the segmenting one)."
    }
}

/// Notes printed under the table: the honesty note, settings that matter, and
/// what the agents reported (offloads in force, drops).
fn notes(runs: &[Run], agent_args: &[String], segment_underlay: bool) -> Vec<String> {
    let mut n = vec![
        underlay_note(segment_underlay).to_string(),
        "Machine CPU counts everything on the machine (iperf3, both TCP stacks, softirq, agents), \
         sampled from /proc/stat over each TCP test's measured interval; vxmeshd CPU is utime+stime \
         of both agents from /proc/<pid>/stat over the same interval."
            .to_string(),
        "The 64-byte UDP rate comes from single-threaded iperf3 (one datagram per system call) at \
         both ends, which bounds every mode; compare modes, not absolute rates. What is lost is \
         lost at the receiving pod's socket (iperf3's default buffer) while that iperf3 waits for \
         a CPU: bench/udp-receiver-buffer.sh measures it with a 4 MiB buffer too."
            .to_string(),
    ];
    let mut args = vec![
        "--iface eth0".to_string(),
        "--subnet-lease-ttl 60s".to_string(),
    ];
    args.extend(agent_args.iter().cloned());
    n.push(format!(
        "vxmeshd flags: {}, plus --ip-masq=false in the vxmesh mode and vxmeshd's default \
         --ip-masq in vxmesh + masq; pods wired by hand identically in every mode.",
        args.join(" ")
    ));
    n.push(
        "Every overlay mode holds the FORWARD accepts that flanneld and vxmeshd both keep by \
         default (--iptables-forward-rules; for IPv6 too in the IPv6 modes), installed for \
         kernel VXLAN by the same code vxmeshd uses, so both pay them. The + masq modes also \
         hold vxmeshd's default masquerade chain in nat POSTROUTING on both nodes, which makes \
         the kernel track every connection; the other modes have no nat rule, so no \
         conntrack. Ratios of a + masq mode are to kernel VXLAN + masq."
            .to_string(),
    );
    if let Some(off) = runs.iter().filter(|r| r.mode.is_vxmesh()).find_map(|r| {
        r.details
            .pointer("/agents/a/offloads")
            .filter(|v| !v.is_null())
    }) {
        let s = |k: &str| off.get(k).map_or("?".to_string(), |v| v.to_string());
        n.push(format!(
            "vxmesh offloads in force: TAP {}, UDP GSO {}, UDP GRO {}, {} send sockets.",
            s("tap"),
            s("udp_gso"),
            s("udp_gro"),
            s("tx_sockets")
        ));
    }
    for mode in Mode::ALL {
        let seen: Vec<&serde_json::Value> = runs
            .iter()
            .filter(|r| r.mode == mode)
            .filter_map(|r| r.details.get("netfilter"))
            .collect();
        if let Some(text) = netfilter_note(&seen) {
            n.push(format!("Netfilter on the nodes, {}: {text}.", mode.label()));
        }
    }
    let mut drops = 0u64;
    for r in runs.iter().filter(|r| r.mode.is_vxmesh()) {
        for node in ["a", "b"] {
            if let Some(d) = r
                .details
                .pointer(&format!("/agents/{node}/drops"))
                .and_then(|v| v.as_object())
            {
                drops += d.values().filter_map(|v| v.as_u64()).sum::<u64>();
            }
        }
    }
    n.push(format!(
        "vxmesh dataplane drops counted by the agents over all runs: {drops}."
    ));
    for mode in Mode::ALL {
        let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
        for r in runs.iter().filter(|r| r.mode == mode) {
            if let Some(l) = r.details.get("links") {
                for (k, v) in measure::link_drops(l) {
                    *sums.entry(k).or_default() += v;
                }
            }
        }
        if !sums.is_empty() {
            let list: Vec<String> = sums.iter().map(|(k, v)| format!("{k} {v}")).collect();
            n.push(format!(
                "Interface drops/errors in {} runs (summed over repeats; a = node A, pb = pod B): {}.",
                mode.label(),
                list.join(", ")
            ));
        }
    }
    n
}

/// One mode's netfilter state over its runs: nat hook, untracked VXLAN, conntrack
/// entries on the nodes after the measurements (range).
fn netfilter_note(seen: &[&serde_json::Value]) -> Option<String> {
    if seen.is_empty() {
        return None;
    }
    let flag = |k: &str| {
        seen.iter()
            .any(|v| ["a", "b"].iter().any(|n| v[n][k].as_bool() == Some(true)))
    };
    let entries: Vec<u64> = seen
        .iter()
        .flat_map(|v| ["a", "b"].map(|n| v[n]["conntrack_entries"].as_u64()))
        .flatten()
        .collect();
    let ct = match (entries.iter().min(), entries.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => format!("{lo} conntrack entries per node"),
        (Some(lo), Some(hi)) => format!("{lo}–{hi} conntrack entries per node"),
        _ => "conntrack not loaded".to_string(),
    };
    Some(format!(
        "nat chain hooked: {}, outer VXLAN untracked: {}, {ct} after the tests",
        if flag("nat_hook") { "yes" } else { "no" },
        if flag("notrack") { "yes" } else { "no" },
    ))
}

fn draw_chart(out: &Path) -> anyhow::Result<()> {
    draw_with(
        PLOT_PY,
        "plot.py",
        &out.join("results.json"),
        &out.join("chart.png"),
    )
}

/// Writes `script` next to `json` as `name` and runs it: `name json png`.
fn draw_with(script: &str, name: &str, json: &Path, png: &Path) -> anyhow::Result<()> {
    let path = json.with_file_name(name);
    std::fs::write(&path, script)?;
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut c = Command::new(python);
    c.arg(&path).arg(json).arg(png);
    let f = run_bounded(c, Duration::from_secs(120))?;
    if !f.status.success() {
        bail!(
            "{python} {name} failed: {} (install python3-matplotlib)",
            f.stderr.trim()
        );
    }
    Ok(())
}

/// Copies the chart to docs/img/bench-latest.png and puts the results between
/// the markers of docs/benchmarks.md.
fn update_docs(l: &Layout, results: &Results, chart: bool) -> anyhow::Result<()> {
    let docs = l.repo.join("docs/benchmarks.md");
    let text =
        std::fs::read_to_string(&docs).with_context(|| format!("reading {}", docs.display()))?;
    let (Some(b), Some(e)) = (text.find(DOCS_BEGIN), text.find(DOCS_END)) else {
        bail!(
            "{} lacks the {DOCS_BEGIN} / {DOCS_END} markers",
            docs.display()
        );
    };
    if e < b {
        bail!("{}: markers out of order", docs.display());
    }
    let img = if chart {
        let dir = l.repo.join("docs/img");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(l.out.join("chart.png"), dir.join("bench-latest.png"))?;
        Some("img/bench-latest.png")
    } else {
        None
    };
    let rel = l
        .out
        .strip_prefix(&l.repo)
        .unwrap_or(&l.out)
        .display()
        .to_string();
    let md = report::render_markdown(results, img);
    let new = format!(
        "{}{DOCS_BEGIN}\n<!-- written by vxmesh-bench --update-docs from {rel} (run {}); raw data is not in git -->\n\n{md}\n{}",
        &text[..b],
        l.stamp,
        &text[e..]
    );
    std::fs::write(&docs, new)?;
    eprintln!("updated {} and docs/img/bench-latest.png", docs.display());
    Ok(())
}

fn rerender(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(a.dir.join("results.json"))
        .with_context(|| format!("reading {}/results.json", a.dir.display()))?;
    let results: Results = serde_json::from_str(&text).context("parsing results.json")?;
    let chart = match draw_chart(&a.dir) {
        Ok(()) => Some("chart.png"),
        Err(e) => {
            eprintln!("warning: no chart: {e:#}");
            None
        }
    };
    let md = report::render_markdown(&results, chart);
    std::fs::write(a.dir.join("results.md"), &md)?;
    println!("{md}");
    if a.update_docs {
        let repo = a.repo.clone().unwrap_or_else(|| {
            repo_root(&Common {
                bin_dir: None,
                out: None,
                repo: None,
                agent_args: String::new(),
                segment_underlay: false,
                tcp_cc: None,
            })
        });
        let stamp = a
            .dir
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let l = Layout {
            repo,
            bin_dir: PathBuf::new(),
            out: a.dir.clone(),
            raw: a.dir.join("raw"),
            logs: a.dir.join("logs"),
            stamp,
        };
        update_docs(&l, &results, chart.is_some())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn hold(a: HoldArgs) -> anyhow::Result<ExitCode> {
    let modes = parse_modes(std::slice::from_ref(&a.mode))?;
    let l = layout(&a.common, "-hold")?;
    preflight(&l.bin_dir, &modes, &[])?;
    stop::install().context("installing the signal handler")?;
    topo::remove_stale(NS_BASE);
    let ctx = Context {
        prefix: format!("{NS_BASE}{}", std::process::id()),
        bin_dir: l.bin_dir.clone(),
        log_dir: l.logs.clone(),
        agent_args: a
            .common
            .agent_args
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        segment_underlay: a.common.segment_underlay,
        tcp_cc: a.common.tcp_cc.clone(),
        run_tag: "hold".into(),
    };
    let mut t = Topology::build(modes[0], &ctx)?;
    println!(
        "{} topology up (logs in {}):\n  node A: ip netns exec {} …\n  node B: ip netns exec {} …\n  \
         pod A:  ip netns exec {} …  ({})\n  pod B:  ip netns exec {} …  ({})\n  agent pids: {:?}\n\
         Ctrl-C (or {} s) tears it down.",
        modes[0].label(),
        l.logs.display(),
        t.node_a.ns.name(),
        t.node_b.ns.name(),
        t.pod_a.ns.name(),
        t.pod_a.ip,
        t.pod_b.ns.name(),
        t.pod_b.ip,
        t.agent_pids(),
        a.seconds
    );
    if let Some(cc) = &a.common.tcp_cc {
        println!(
            "  --tcp-cc {cc} applies to the tests the benchmark runs; here pass iperf3 -C {cc} \
             (or VXMESH_TCP_CC={cc} to bench/latency-split.sh)."
        );
    }
    let end = Instant::now() + Duration::from_secs(a.seconds);
    while Instant::now() < end && !stop::requested() {
        std::thread::sleep(Duration::from_millis(200));
        t.ensure_daemons()?;
    }
    drop(t);
    eprintln!("torn down");
    Ok(ExitCode::SUCCESS)
}

fn sim(a: SimArgs) -> anyhow::Result<ExitCode> {
    let mut plan = sim::SimPlan::new(a.nodes);
    plan.observers = a.observers;
    plan.network = a.network;
    plan.subnet_len = a.subnet_len;
    plan.outage_ms = a.outage_ms;
    let r = sim::simulate(&plan)?;
    println!("{}", sim::render(&r));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let mut problems = Vec::new();
    if !(r.start_observers.consistent && r.churn_observers.consistent) {
        problems.push("an observer's peers differ from the registry".to_string());
    }
    if r.start_observers.work.full_passes > 2 || r.churn_observers.work.full_passes > 0 {
        problems.push(format!(
            "full conflict passes per observer: {} at start-up, {} in churn (want ≤ 2 and 0)",
            r.start_observers.work.full_passes, r.churn_observers.work.full_passes
        ));
    }
    if r.storm.peak_after_outage_per_100ms * 4 > r.nodes as u64 {
        problems.push(format!(
            "{} requests in one 100 ms once etcd was back (of {} nodes): retries not spread",
            r.storm.peak_after_outage_per_100ms, r.nodes
        ));
    }
    for p in &problems {
        eprintln!("sim: {p}");
    }
    Ok(if a.check && !problems.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn scale(a: ScaleArgs) -> anyhow::Result<ExitCode> {
    let l = layout(&a.common, "-scale")?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "must run as root (network namespaces); use: sudo target/release/vxmesh-bench scale …"
        );
    }
    let mut missing = Vec::new();
    for t in ["ip", "etcd", "etcdctl", "ping"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            missing.push(t.to_string());
        }
    }
    if !l.bin_dir.join("vxmeshd").is_file() {
        missing.push(l.bin_dir.join("vxmeshd").display().to_string());
    }
    if !missing.is_empty() {
        bail!(
            "missing: {} (scripts/install-deps.sh; cargo build --release)",
            missing.join(", ")
        );
    }
    if !matches!(a.dataplane.as_str(), "userspace" | "kernel") {
        bail!("--dataplane {:?}: userspace or kernel", a.dataplane);
    }
    stop::install().context("installing the signal handler")?;
    let stale = scale::remove_stale(NS_BASE);
    if !stale.is_empty() {
        eprintln!("removed what killed runs left: {}", stale.join(", "));
    }
    let mut results: ScaleResults = match &a.append {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => ScaleResults::default(),
    };
    let repo_s = l.repo.display().to_string();
    let commit = first_line("git", &["-C", &repo_s, "rev-parse", "--short=12", "HEAD"]);
    let label = a.label.clone().unwrap_or_else(|| commit.clone());
    let m = machine_info(&l.repo, &l.bin_dir);
    results
        .machine
        .insert(format!("{label}: kernel"), m.kernel.clone());
    results.machine.insert(
        format!("{label}: cpu"),
        format!("{} × {}", m.cores, m.cpu_model),
    );
    results.machine.insert(format!("{label}: commit"), commit);
    results.machine.insert(
        format!("{label}: etcd"),
        m.tools.get("etcd").cloned().unwrap_or_default(),
    );
    results.command = std::env::args().collect::<Vec<_>>().join(" ");
    let agent_args: Vec<String> = a
        .common
        .agent_args
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut failed = false;
    for &n in &a.nodes {
        stop::check()?;
        if let Some(avail) = mem_available_kib() {
            let need = n as u64 * 20 * 1024 + 512 * 1024;
            if avail < need {
                bail!(
                    "{n} nodes need about {} MiB of memory; {} MiB available",
                    need / 1024,
                    avail / 1024
                );
            }
        }
        let log_dir = l.logs.join(format!("{label}-n{n}"));
        std::fs::create_dir_all(&log_dir)?;
        let plan = scale::Plan {
            nodes: n,
            dataplane: a.dataplane.clone(),
            network: a.network.clone(),
            subnet_len: a.subnet_len,
            bin_dir: l.bin_dir.clone(),
            log_dir,
            prefix: format!("{NS_BASE}{}", std::process::id()),
            label: label.clone(),
            converge_timeout: Duration::from_secs(a.timeout),
            phases: !a.start_only,
            agent_args: agent_args.clone(),
        };
        eprintln!(
            "scale: {n} nodes ({}, {label}); load {}",
            a.dataplane,
            loadavg()
        );
        let mut r = ScaleRun {
            label: label.clone(),
            nodes: n,
            dataplane: a.dataplane.clone(),
            network: a.network.clone(),
            subnet_len: a.subnet_len,
            busy_processes: busy_processes(),
            ..Default::default()
        };
        let t = Instant::now();
        if let Err(e) = scale::measure(&plan, &mut r) {
            eprintln!("  FAILED: {e:#}");
            r.error = Some(format!("{e:#}"));
            failed = true;
        }
        if r.load_after.is_empty() {
            r.load_after = loadavg();
        }
        eprintln!(
            "  {n} nodes done in {:.0} s (torn down)",
            t.elapsed().as_secs_f64()
        );
        let incomplete = r.start.converged_s.is_none()
            || r.pings.0 != r.pings.1
            || (!a.start_only
                && (r.join_s.is_none()
                    || r.remove_s.is_none()
                    || r.storm.as_ref().is_none_or(|s| s.converged_s.is_none())));
        failed |= incomplete;
        results.runs.push(r);
        std::fs::write(
            l.out.join("scale.json"),
            serde_json::to_string_pretty(&results)?,
        )?;
        if stop::requested() {
            break;
        }
    }
    let json = l.out.join("scale.json");
    if !a.no_chart {
        match draw_with(
            PLOT_SCALE_PY,
            "plot_scale.py",
            &json,
            &l.out.join("scale.png"),
        ) {
            Ok(()) => eprintln!("wrote {}", l.out.join("scale.png").display()),
            Err(e) => eprintln!("warning: no chart: {e:#}"),
        }
    }
    println!("{}", scale::summary(&results));
    eprintln!("wrote {}", json.display());
    Ok(if stop::requested() {
        ExitCode::from(130)
    } else if a.check && failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Counted by `profile` beside the samples (tracepoints: they work in VMs
/// without a PMU).
const STAT_EVENTS: &str = "raw_syscalls:sys_enter,sched:sched_switch,sched:sched_wakeup,\
irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,net:net_dev_xmit";

/// Sums `perf stat --per-thread -x,` counts (`comm-tid,count,,event,…`) of the
/// threads on the data path, per event, in the order events first appear.
fn path_event_counts(csv: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in csv.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(thread), Some(count), Some(event)) = (f.first(), f.get(1), f.get(3)) else {
            continue;
        };
        let comm = thread.rsplit_once('-').map_or(*thread, |(c, _)| c);
        let on_path = matches!(comm, "iperf3" | "vxmesh-tx0" | "vxmesh-rx0")
            || comm.starts_with("ksoftirqd/");
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match out.iter_mut().find(|(e, _)| e == event) {
            Some((_, v)) => *v += if on_path { count } else { 0 },
            None => out.push((event.to_string(), if on_path { count } else { 0 })),
        }
    }
    out
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Context switches of one thread so far (from /proc/<pid>/task/<tid>/status).
#[derive(Debug, Clone)]
struct ThreadSwitches {
    name: String,
    voluntary: u64,
    involuntary: u64,
}

/// Context-switch counters of every `vxmesh-*` thread of `pids`.
fn thread_switches(pids: &[u32]) -> Vec<ThreadSwitches> {
    let mut out = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let mut tasks: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        tasks.sort();
        for t in tasks {
            let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if !comm.starts_with("vxmesh-") {
                continue;
            }
            let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            out.push(ThreadSwitches {
                name: format!("node {} {comm}", if i == 0 { "A" } else { "B" }),
                voluntary: field("voluntary_ctxt_switches:"),
                involuntary: field("nonvoluntary_ctxt_switches:"),
            });
        }
    }
    out
}

fn profile(a: ProfileArgs) -> anyhow::Result<ExitCode> {
    let modes = parse_modes(&a.modes)?;
    let l = layout(&a.common, "-profile")?;
    preflight(&l.bin_dir, &modes, &["perf"])?;
    stop::install().context("installing the signal handler")?;
    topo::remove_stale(NS_BASE);
    let agent_args: Vec<String> = a
        .common
        .agent_args
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let prefix = format!("{NS_BASE}{}", std::process::id());
    for mode in modes {
        stop::check()?;
        eprintln!("profiling {} for {} s", mode.label(), a.seconds);
        let ctx = Context {
            prefix: prefix.clone(),
            bin_dir: l.bin_dir.clone(),
            log_dir: l.logs.clone(),
            agent_args: agent_args.clone(),
            segment_underlay: a.common.segment_underlay,
            tcp_cc: a.common.tcp_cc.clone(),
            run_tag: "profile".into(),
        };
        let t = Topology::build(mode, &ctx)?;
        let data = l.out.join(format!("{}.perf.data", mode.key()));
        let data_s = data.display().to_string();
        let freq = a.freq.to_string();
        let secs = a.seconds.to_string();
        let json = l.raw.join(format!("{}-profile-iperf3.json", mode.key()));
        let pids = t.agent_pids();
        let stat_path = l.out.join(format!("{}-perf-stat.csv", mode.key()));
        let stat_s = stat_path.display().to_string();
        let record = |_done: &std::sync::atomic::AtomicBool| -> anyhow::Result<(Vec<ThreadSwitches>, Vec<ThreadSwitches>)> {
            stop::sleep(Duration::from_secs(2))?;
            let before = thread_switches(&pids);
            // Event counts over the same window, beside the samples: how
            // many system calls, context switches, wake-ups and IPIs per GB.
            let mut stat = Command::new("perf")
                .args([
                    "stat",
                    "-a",
                    "--per-thread",
                    "-x",
                    ",",
                    "-o",
                    &stat_s,
                    "-e",
                    STAT_EVENTS,
                    "--",
                ])
                .args(["sleep", &secs])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("spawning perf stat")?;
            let mut c = Command::new("perf");
            c.args([
                "record",
                "-F",
                &freq,
                "-e",
                "cpu-clock",
                "-a",
                "-g",
                "-o",
                &data_s,
                "--",
                "sleep",
                &secs,
            ]);
            let f = run_bounded(c, Duration::from_secs(u64::from(a.seconds) + 60));
            let end = Instant::now() + Duration::from_secs(30);
            while stat.try_wait()?.is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = stat.kill();
            let _ = stat.wait();
            let f = f?;
            if !f.status.success() {
                bail!("perf record failed: {}", f.stderr.trim());
            }
            Ok((before, thread_switches(&pids)))
        };
        // What the load moved during the profile: GB, and for UDP packets.
        let (load, gb, packets, perf) = match a.udp_len {
            None => {
                let (r, perf) = measure::tcp_with(
                    &t,
                    &ctx,
                    a.seconds + 4,
                    0,
                    a.streams,
                    a.reverse,
                    &json,
                    record,
                )?;
                let gb = r.received_bytes as f64 / 1e9 * f64::from(a.seconds) / r.seconds.max(1.0);
                let load = format!(
                    "iperf3 {} stream(s) {} under perf: {:.2} Gbit/s",
                    a.streams,
                    if a.reverse { "B→A" } else { "A→B" },
                    r.received_bps / 1e9
                );
                (load, gb, None, perf)
            }
            Some(len) => {
                let (r, perf) =
                    measure::udp_with(&t, &ctx, a.seconds + 4, len, a.reverse, &json, record)?;
                let packets = r.received_pps * f64::from(a.seconds);
                let load = format!(
                    "iperf3 UDP {len} B unlimited {} under perf: {:.0} packets/s received ({:.0} sent, {:.2} % lost)",
                    if a.reverse { "B→A" } else { "A→B" },
                    r.received_pps,
                    r.sent_pps,
                    r.lost_percent
                );
                (load, packets * f64::from(len) / 1e9, Some(packets), perf)
            }
        };
        let (before, after) = perf?;
        let mut summary = format!(
            "{}: {load}; about {gb:.2} GB moved during the {} s profile\n",
            mode.label(),
            a.seconds
        );
        let per_packet = |v: u64| {
            packets.map_or(String::new(), |p| {
                format!(", {:.2}/packet", v as f64 / p.max(1.0))
            })
        };
        for (b, e) in before.iter().zip(&after) {
            let (v, n) = (e.voluntary - b.voluntary, e.involuntary - b.involuntary);
            summary.push_str(&format!(
                "{}: {v} voluntary ({:.0}/s, {:.0}/GB{}) and {n} involuntary context switches\n",
                e.name,
                v as f64 / f64::from(a.seconds),
                v as f64 / gb.max(1e-9),
                per_packet(v)
            ));
        }
        if let Ok(csv) = std::fs::read_to_string(&stat_path) {
            summary.push_str(
                "events of the path's threads (iperf3, vxmesh-tx0/rx0, ksoftirqd; other processes left out):\n",
            );
            for (event, v) in path_event_counts(&csv) {
                summary.push_str(&format!(
                    "{event}: {v} ({:.0}/s, {:.0}/GB{})\n",
                    v as f64 / f64::from(a.seconds),
                    v as f64 / gb.max(1e-9),
                    per_packet(v)
                ));
            }
        }
        std::fs::write(l.out.join(format!("{}-summary.txt", mode.key())), &summary)?;
        eprint!("{summary}");
        drop(t);
        let mut reports: Vec<(String, Vec<String>)> = vec![
            (
                "by-thread".into(),
                strs(&["--no-children", "--sort", "comm", "--percent-limit", "0.5"]),
            ),
            (
                "by-symbol".into(),
                strs(&[
                    "--no-children",
                    "--sort",
                    "comm,dso,sym",
                    "--percent-limit",
                    "0.3",
                ]),
            ),
        ];
        // Inclusive (children) time per thread, as a share of that thread:
        // which system calls and kernel paths its time goes to.
        let threads: &[&str] = if pids.is_empty() {
            &["iperf3"]
        } else {
            &["vxmesh-tx0", "vxmesh-rx0", "iperf3"]
        };
        for th in threads {
            reports.push((
                format!("{th}-inclusive"),
                strs(&[
                    "--children",
                    "--percentage",
                    "relative",
                    "--comms",
                    th,
                    "--sort",
                    "sym",
                    "--percent-limit",
                    "1.5",
                ]),
            ));
        }
        for (name, extra) in &reports {
            let mut c = Command::new("perf");
            c.args(["report", "-i", &data_s, "--stdio", "-g", "none"])
                .args(extra);
            let f = run_bounded(c, Duration::from_secs(300))?;
            let path = l.out.join(format!("{}-{name}.txt", mode.key()));
            std::fs::write(&path, &f.stdout)?;
            eprintln!("  wrote {}", path.display());
        }
    }
    eprintln!("profiles in {}", l.out.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_honesty_note_names_the_underlay_the_run_had() {
        let whole = notes(&[], &[], false);
        assert!(whole[0].contains("unsegmented"), "{}", whole[0]);
        let cut = notes(&[], &[], true);
        assert!(cut[0].contains("segmentation turned off"), "{}", cut[0]);
        assert!(cut[0].contains("one by one"), "{}", cut[0]);
        assert!(!cut[0].contains("unsegmented"), "{}", cut[0]);
    }

    #[test]
    fn per_thread_counts_of_the_path() {
        let csv = "# started on ...\n\
            iperf3-101,500,,raw_syscalls:sys_enter,1,100.00,,\n\
            vxmesh-tx0-7,300,,raw_syscalls:sys_enter,1,100.00,,\n\
            IO mon_iothread-9,9999,,raw_syscalls:sys_enter,1,100.00,,\n\
            ksoftirqd/0-14,2,,sched:sched_switch,1,100.00,,\n\
            iperf3-101,<not counted>,,sched:sched_switch,1,100.00,,\n";
        assert_eq!(
            path_event_counts(csv),
            vec![
                ("raw_syscalls:sys_enter".to_string(), 800),
                ("sched:sched_switch".to_string(), 2)
            ]
        );
    }

    #[test]
    fn busy_kinds_keep_their_highest_count() {
        let mut seen = vec!["rustc ×1".to_string()];
        note_busy(
            &mut seen,
            &["qemu-system-x86 ×3".to_string(), "rustc ×2".to_string()],
        );
        note_busy(&mut seen, &["rustc ×1".to_string()]);
        assert_eq!(seen, ["rustc ×2", "qemu-system-x86 ×3"]);
    }
}
