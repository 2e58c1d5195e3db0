//! The measurements taken on one [`Topology`]: iperf3 TCP (1 and 8 streams, both
//! directions) with CPU accounting, ping RTT, and the 64-byte UDP rate search.
//! Every tool has a duration or count and a hard timeout; every iperf3 server
//! runs with `-1` and is killed at the end of its test anyway.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use crate::cpu::{self, MachineTicks};
use crate::parse::{self, TcpResult, UdpResult};
use crate::proc::{ns_output, run_bounded, Daemon, Finished};
use crate::report::{
    CPU_AGENTS, CPU_MACHINE, PING_CPU_AGENTS, PING_CPU_MACHINE, RTT_LOADED_MEDIAN, RTT_LOADED_P99,
    RTT_MEDIAN, RTT_P99, RTT_RR_MEDIAN, RTT_RR_P99, TCP1_AB, TCP1_BA, TCP8_AB, TCP8_BA, UDP64_KPPS,
    UDP64_LOSS,
};
use crate::stats::{median, percentile};
use crate::stop;
use crate::topo::{Context, Topology};

const PORT: &str = "5201";

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tcp_seconds: u32,
    pub tcp_omit: u32,
    pub pings: u32,
    pub ping_interval_ms: u32,
    pub udp_payload: u32,
    pub udp_probe_seconds: u32,
    pub udp_probes: u32,
    pub udp_max_loss_pct: f64,
}

/// Figures of one mode in one repeat; filled as tests finish, so a failure
/// late in the run keeps what came before.
#[derive(Debug, Default)]
pub struct Outcome {
    pub metrics: BTreeMap<String, f64>,
    pub details: serde_json::Map<String, Value>,
}

/// Where raw outputs go: `<raw dir>/<tag>-<test>.json|txt`.
#[derive(Debug, Clone, Copy)]
pub struct RawOut<'a> {
    pub dir: &'a Path,
    pub tag: &'a str,
}

impl RawOut<'_> {
    fn path(&self, test: &str, ext: &str) -> std::path::PathBuf {
        self.dir.join(format!("{}-{test}.{ext}", self.tag))
    }
}

fn log(msg: &str) {
    eprintln!("    {msg}");
}

/// Runs every measurement on `topo`, in order: TCP ×4, ping, UDP search.
pub fn measure_all(
    topo: &mut Topology,
    ctx: &Context,
    plan: &Plan,
    raw: RawOut<'_>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let mut busy_s = 0.0;
    let mut agents_s = 0.0;
    let mut gbytes = 0.0;
    let mut cpu_ok = true;
    let mut tests = Vec::new();
    for (key, streams, reverse) in [
        (TCP1_AB, 1, false),
        (TCP1_BA, 1, true),
        (TCP8_AB, 8, false),
        (TCP8_BA, 8, true),
    ] {
        stop::check()?;
        let dir = if reverse { "ba" } else { "ab" };
        let name = format!("tcp{streams}-{dir}");
        let m = tcp_test(topo, ctx, plan, streams, reverse, &raw.path(&name, "json"))
            .with_context(|| format!("iperf3 {name}"))?;
        let gbps = m.result.received_bps / 1e9;
        out.metrics.insert(key.to_string(), gbps);
        let gb = m.result.received_bytes as f64 / 1e9;
        let mut d = json!({
            "test": name,
            "streams": streams,
            "direction": if reverse { "B→A" } else { "A→B" },
            "gbps": gbps,
            "bytes": m.result.received_bytes,
            "seconds": m.result.seconds,
            "retransmits": m.result.retransmits,
            "sender_congestion": m.result.sender_congestion,
        });
        match m.cpu {
            Some(c) if gb > 0.0 => {
                // CPU-seconds per second of the window, times the test's seconds.
                let busy = c.machine_busy_s / c.window_s * m.result.seconds;
                busy_s += busy;
                gbytes += gb;
                d["machine_cpu_cores_busy"] = json!(c.machine_busy_s / c.window_s);
                d["machine_softirq_cores"] = json!(c.machine_softirq_s / c.window_s);
                d["machine_cpu_s_per_gb"] = json!(busy / gb);
                if let Some(a) = c.agents_s {
                    let a = a / c.window_s * m.result.seconds;
                    agents_s += a;
                    d["agents_cpu_cores_busy"] = json!(a / m.result.seconds);
                    d["agents_cpu_s_per_gb"] = json!(a / gb);
                }
            }
            _ => cpu_ok = false,
        }
        log(&format!(
            "{name}: {gbps:.2} Gbit/s, retransmits {}",
            m.result
                .retransmits
                .map_or("?".to_string(), |r| r.to_string())
        ));
        tests.push(d);
        topo.ensure_daemons()?;
        stop::sleep(Duration::from_millis(300))?;
    }
    out.details.insert("tcp".into(), Value::Array(tests));
    if cpu_ok && gbytes > 0.0 {
        out.metrics.insert(CPU_MACHINE.into(), busy_s / gbytes);
        if !topo.agents.is_empty() {
            out.metrics.insert(CPU_AGENTS.into(), agents_s / gbytes);
        }
    }

    stop::check()?;
    let (p, cpu) = ping_test(topo, plan, &raw.path("ping", "txt")).context("ping")?;
    out.metrics.insert(RTT_MEDIAN.into(), p.median_us);
    out.metrics.insert(RTT_P99.into(), p.p99_us);
    let mut d = p.to_json();
    let mut cpu_note = String::new();
    if let Some(c) = cpu.filter(|c| c.window_s > 0.0) {
        let machine = c.machine_busy_s / c.window_s;
        out.metrics.insert(PING_CPU_MACHINE.into(), machine);
        d["machine_cpu_cores_busy"] = json!(machine);
        cpu_note = format!("; machine {machine:.3} CPUs busy");
        if let Some(a) = c.agents_s {
            let agents = a / c.window_s;
            out.metrics.insert(PING_CPU_AGENTS.into(), agents);
            d["agents_cpu_cores_busy"] = json!(agents);
            cpu_note.push_str(&format!(", vxmeshd {agents:.3}"));
        }
    }
    out.details.insert("ping".into(), d);
    log(&format!(
        "ping: median {:.0} µs, p99 {:.0} µs ({} of {} replies){cpu_note}",
        p.median_us, p.p99_us, p.replies, p.sent
    ));
    topo.ensure_daemons()?;

    stop::check()?;
    let rr_count = plan.pings.saturating_mul(5);
    let p = ping_run(
        topo,
        rr_count,
        Pace::BackToBack,
        &raw.path("ping-rr", "txt"),
    )
    .context("ping back to back")?;
    out.metrics.insert(RTT_RR_MEDIAN.into(), p.median_us);
    out.metrics.insert(RTT_RR_P99.into(), p.p99_us);
    out.details.insert("ping_back_to_back".into(), p.to_json());
    log(&format!(
        "ping back to back (-A): median {:.0} µs, p99 {:.0} µs ({} of {} replies)",
        p.median_us, p.p99_us, p.replies, p.sent
    ));
    topo.ensure_daemons()?;

    stop::check()?;
    // A failure here (no reply got through the load) is a result, not a reason to
    // lose the UDP figures: it is recorded and the run goes on.
    match loaded_ping_test(topo, ctx, plan, &raw) {
        Ok((gbps, p)) => {
            out.metrics.insert(RTT_LOADED_MEDIAN.into(), p.median_us);
            out.metrics.insert(RTT_LOADED_P99.into(), p.p99_us);
            out.details.insert("ping_under_load".into(), {
                let mut d = p.to_json();
                d["streams"] = json!(8);
                d["direction"] = json!("A→B");
                d["tcp_gbps"] = json!(gbps);
                d
            });
            log(&format!(
                "ping under 8 TCP streams A→B ({gbps:.2} Gbit/s): median {:.0} µs, p99 {:.0} µs ({} of {} replies)",
                p.median_us, p.p99_us, p.replies, p.sent
            ));
        }
        Err(e) => {
            log(&format!("ping under 8 TCP streams A→B: {e:#}"));
            out.details
                .insert("ping_under_load".into(), json!({"error": format!("{e:#}")}));
        }
    }
    topo.ensure_daemons()?;
    stop::sleep(Duration::from_millis(300))?;

    stop::check()?;
    let (best, probes) = udp_search(topo, ctx, plan, raw).context("UDP rate search")?;
    let probe_json: Vec<Value> = probes
        .iter()
        .map(|p| {
            json!({"offered_pps": p.offered_pps, "sent_pps": p.r.sent_pps,
                   "received_pps": p.r.received_pps, "lost_percent": p.r.lost_percent})
        })
        .collect();
    out.details.insert(
        "udp".into(),
        json!({"payload_bytes": plan.udp_payload, "max_loss_pct": plan.udp_max_loss_pct,
               "met_loss_limit": best.as_ref().is_some_and(|b| b.r.lost_percent <= plan.udp_max_loss_pct),
               "probes": probe_json}),
    );
    if let Some(b) = best {
        out.metrics
            .insert(UDP64_KPPS.into(), b.r.received_pps / 1000.0);
        out.metrics.insert(UDP64_LOSS.into(), b.r.lost_percent);
        log(&format!(
            "UDP {} B: {:.1} kpps received at {:.2} % loss",
            plan.udp_payload,
            b.r.received_pps / 1000.0,
            b.r.lost_percent
        ));
    }
    topo.ensure_daemons()?;
    Ok(())
}

/// The agents' status: offloads in force, peers, counters and drops by reason
/// (`vxmeshctl status --json` on each node), for the record.
pub fn agent_snapshot(topo: &Topology, ctx: &Context) -> Value {
    if topo.agents.is_empty() {
        return Value::Null;
    }
    let mut m = serde_json::Map::new();
    for (tag, node) in [("a", &topo.node_a), ("b", &topo.node_b)] {
        let status = ns_output(
            &node.ns,
            &ctx.vxmeshctl(),
            &["status", "--json"],
            Duration::from_secs(5),
        )
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or(Value::Null);
        m.insert(tag.into(), status);
    }
    Value::Object(m)
}

/// Packet/drop counters of every interface of the four namespaces
/// (`ip -s -j link`), keyed `a`, `b`, `pa`, `pb`: where packets were dropped.
pub fn link_stats(topo: &Topology) -> Value {
    let mut m = serde_json::Map::new();
    for (tag, ns) in [
        ("a", &topo.node_a.ns),
        ("b", &topo.node_b.ns),
        ("pa", &topo.pod_a.ns),
        ("pb", &topo.pod_b.ns),
    ] {
        let links: Vec<Value> = ns
            .ip(&["-s", "-j", "link", "show"])
            .ok()
            .and_then(|s| serde_json::from_str::<Vec<Value>>(&s).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l["ifname"] != "lo")
            .map(|l| json!({"ifname": l["ifname"], "stats64": l["stats64"]}))
            .collect();
        m.insert(tag.into(), Value::Array(links));
        // UDP socket errors: a full receive buffer drops silently otherwise.
        let snmp = ns
            .exec("cat", &["/proc/net/snmp"])
            .map(|s| parse::snmp_udp(&s))
            .unwrap_or_default();
        m.insert(format!("{tag}_udp"), json!(snmp));
    }
    Value::Object(m)
}

/// Netfilter state of each node after the measurements: the connections conntrack
/// holds (`None`: conntrack not loaded), whether a nat chain is hooked (that makes the
/// kernel track every packet) and whether outer VXLAN is left untracked.
pub fn netfilter_state(topo: &Topology) -> Value {
    let mut m = serde_json::Map::new();
    for (tag, ns) in [("a", &topo.node_a.ns), ("b", &topo.node_b.ns)] {
        let entries = ns
            .exec("cat", &["/proc/sys/net/netfilter/nf_conntrack_count"])
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let ruleset = ns.exec("nft", &["list", "ruleset"]).unwrap_or_default();
        m.insert(
            tag.into(),
            json!({
                "conntrack_entries": entries,
                "nat_hook": parse::has_nat_hook(&ruleset),
                "notrack": ruleset.contains("notrack"),
            }),
        );
    }
    Value::Object(m)
}

/// Non-zero drop/error counters in a [`link_stats`] value, as
/// `("<ns tag>/<ifname> <counter>", value)`.
pub fn link_drops(stats: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Some(m) = stats.as_object() else {
        return out;
    };
    for (tag, links) in m {
        if let Some(udp) = tag.strip_suffix("_udp") {
            for (k, v) in links.as_object().into_iter().flatten() {
                let v = v.as_u64().unwrap_or(0);
                if k.ends_with("Errors") && v > 0 {
                    out.push((format!("{udp}/udp {k}"), v));
                }
            }
            continue;
        }
        for l in links.as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or("?");
            for dir in ["rx", "tx"] {
                for k in ["dropped", "errors"] {
                    let v = l["stats64"][dir][k].as_u64().unwrap_or(0);
                    if v > 0 {
                        out.push((format!("{tag}/{name} {dir}_{k}"), v));
                    }
                }
            }
        }
    }
    out
}

/// An iperf3 server (`-s -1`) in pod B, once it listens.
fn iperf_server(topo: &Topology, ctx: &Context) -> anyhow::Result<Daemon> {
    let ns = &topo.pod_b.ns;
    let log = ctx.log_dir.join(format!(
        "{}-{}-iperf3-server.log",
        ctx.run_tag,
        topo.mode.tag()
    ));
    let mut d = Daemon::spawn(ns, "iperf3", &["-s", "-1", "-p", PORT], &log)?;
    let filter = format!("sport = :{PORT}");
    for _ in 0..250 {
        let out = ns_output(ns, "ss", &["-Hltn", &filter], Duration::from_secs(5))?;
        if !out.trim().is_empty() {
            return Ok(d);
        }
        d.ensure_running()?;
        stop::sleep(Duration::from_millis(20))?;
    }
    bail!("iperf3 server did not listen within 5 s")
}

#[derive(Debug, Clone, Copy)]
struct CpuWindow {
    window_s: f64,
    machine_busy_s: f64,
    machine_softirq_s: f64,
    agents_s: Option<f64>,
}

#[derive(Debug)]
struct TcpMeasure {
    result: TcpResult,
    cpu: Option<CpuWindow>,
}

fn agents_ticks(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|&p| cpu::process_ticks(p).ok())
        .sum::<Option<u64>>()
}

/// Samples CPU counters over [now + `skip`, now + `skip` + `len`], unless
/// `cancel` is raised first.
fn sample_cpu(
    skip: Duration,
    len: Duration,
    pids: &[u32],
    cancel: &AtomicBool,
) -> Option<CpuWindow> {
    let wait = |d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if cancel.load(Ordering::Relaxed) || stop::requested() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    if !wait(skip) {
        return None;
    }
    let start = CpuMark::now(pids)?;
    if !wait(len) {
        return None;
    }
    Some(start.window_to(&CpuMark::now(pids)?))
}

/// The counters a [`CpuWindow`] is the difference of, read at one moment.
struct CpuMark {
    at: Instant,
    machine: MachineTicks,
    /// The agents' ticks; `None` without agents or when one could not be read.
    agents: Option<u64>,
}

impl CpuMark {
    fn now(pids: &[u32]) -> Option<CpuMark> {
        Some(CpuMark {
            at: Instant::now(),
            machine: cpu::machine().ok()?,
            agents: if pids.is_empty() {
                None
            } else {
                agents_ticks(pids)
            },
        })
    }

    /// What was spent from this mark to `later`.
    fn window_to(&self, later: &CpuMark) -> CpuWindow {
        let hz = cpu::clk_tck();
        let d: MachineTicks = later.machine.since(&self.machine);
        CpuWindow {
            window_s: (later.at - self.at).as_secs_f64(),
            machine_busy_s: d.busy as f64 / hz,
            machine_softirq_s: d.softirq as f64 / hz,
            agents_s: self
                .agents
                .zip(later.agents)
                .map(|(a, b)| b.saturating_sub(a) as f64 / hz),
        }
    }
}

/// One iperf3 TCP test from pod A to pod B (`reverse`: B sends), raw JSON
/// written to `json_path`, CPU sampled over the measured interval.
fn tcp_test(
    topo: &Topology,
    ctx: &Context,
    plan: &Plan,
    streams: u32,
    reverse: bool,
    json_path: &Path,
) -> anyhow::Result<TcpMeasure> {
    let pids = topo.agent_pids();
    // Skip the omitted seconds plus connection set-up; stop just before the end.
    let skip = Duration::from_secs(u64::from(plan.tcp_omit)) + Duration::from_millis(150);
    let len =
        Duration::from_secs(u64::from(plan.tcp_seconds)).saturating_sub(Duration::from_millis(250));
    let (result, cpu) = tcp_with(
        topo,
        ctx,
        plan.tcp_seconds,
        plan.tcp_omit,
        streams,
        reverse,
        json_path,
        |done| sample_cpu(skip, len, &pids, done),
    )?;
    Ok(TcpMeasure { result, cpu })
}

/// Runs one iperf3 TCP client in pod A against a fresh `-s -1` server in pod
/// B (`reverse`: B sends) for `seconds` (+ `omit`), while `during` runs on this
/// thread; `during` sees a flag raised once the client has exited. The raw JSON
/// goes to `json_path`.
#[allow(clippy::too_many_arguments)]
pub fn tcp_with<R>(
    topo: &Topology,
    ctx: &Context,
    seconds: u32,
    omit: u32,
    streams: u32,
    reverse: bool,
    json_path: &Path,
    during: impl FnOnce(&AtomicBool) -> R,
) -> anyhow::Result<(TcpResult, R)> {
    let mut args = strings(&["-t", &seconds.to_string(), "-O", &omit.to_string()]);
    args.extend(strings(&["-P", &streams.to_string()]));
    if reverse {
        args.push("-R".into());
    }
    if let Some(cc) = &ctx.tcp_cc {
        args.extend(strings(&["-C", cc]));
    }
    let (out, r) = client_with(topo, ctx, args, seconds + omit, json_path, during)?;
    Ok((parse_checked(&out, parse::tcp)?, r))
}

/// As [`tcp_with`], for one unlimited UDP stream (`-u -b 0`) of `len`-byte
/// datagrams: the 64-byte test's load, at the sender's full rate.
pub fn udp_with<R>(
    topo: &Topology,
    ctx: &Context,
    seconds: u32,
    len: u32,
    reverse: bool,
    json_path: &Path,
    during: impl FnOnce(&AtomicBool) -> R,
) -> anyhow::Result<(UdpResult, R)> {
    let mut args = strings(&["-t", &seconds.to_string(), "-u", "-b", "0"]);
    args.extend(strings(&["-l", &len.to_string()]));
    if reverse {
        args.push("-R".into());
    }
    let (out, r) = client_with(topo, ctx, args, seconds, json_path, during)?;
    Ok((parse_checked(&out, parse::udp)?, r))
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_string()).collect()
}

/// The parsed result of a finished client, or why there is none.
fn parse_checked<T>(f: &Finished, parse: impl Fn(&str) -> Result<T, String>) -> anyhow::Result<T> {
    let result = parse(&f.stdout).map_err(|e| anyhow!("{e}; stderr: {}", f.stderr.trim()))?;
    if !f.status.success() {
        bail!("iperf3 exited with {}: {}", f.status, f.stderr.trim());
    }
    Ok(result)
}

/// One iperf3 client in pod A with `args` (after `-c <pod B> -p <port>`; JSON
/// output) against a fresh server in pod B, for about `seconds`, while `during`
/// runs here. The raw JSON goes to `json_path`.
fn client_with<R>(
    topo: &Topology,
    ctx: &Context,
    args: Vec<String>,
    seconds: u32,
    json_path: &Path,
    during: impl FnOnce(&AtomicBool) -> R,
) -> anyhow::Result<(Finished, R)> {
    let server = iperf_server(topo, ctx)?;
    let ip = topo.pod_b.ip.to_string();
    let mut cmd = topo.pod_a.ns.command("iperf3");
    cmd.args(["-c", &ip, "-p", PORT, "-J", "--connect-timeout", "5000"])
        .args(&args);
    let timeout = Duration::from_secs(u64::from(seconds) + 30);
    let done = Arc::new(AtomicBool::new(false));
    let client_done = Arc::clone(&done);
    let client = std::thread::spawn(move || {
        let r = run_bounded(cmd, timeout);
        client_done.store(true, Ordering::Relaxed);
        r
    });
    let during_result = during(&done);
    let finished = client
        .join()
        .map_err(|_| anyhow!("iperf3 client thread panicked"))?;
    drop(server);
    let f = finished?;
    std::fs::write(json_path, &f.stdout)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok((f, during_result))
}

#[derive(Debug)]
struct PingResult {
    sent: u64,
    replies: usize,
    median_us: f64,
    p99_us: f64,
    min_us: f64,
    max_us: f64,
}

impl PingResult {
    /// The run's figures as the results' details hold them.
    fn to_json(&self) -> Value {
        json!({"replies": self.replies, "sent": self.sent, "median_us": self.median_us,
               "p99_us": self.p99_us, "min_us": self.min_us, "max_us": self.max_us})
    }
}

/// `plan.pings` echo requests at `plan.ping_interval_ms` from pod A to pod B,
/// after a 3-ping warm-up; raw output kept. With the CPU the machine and the agents
/// spent while the pings ran (`None` when /proc could not be read).
fn ping_test(
    topo: &Topology,
    plan: &Plan,
    raw: &Path,
) -> anyhow::Result<(PingResult, Option<CpuWindow>)> {
    let ip = topo.pod_b.ip.to_string();
    let mut warm = topo.pod_a.ns.command("ping");
    warm.args(["-c", "3", "-i", "0.2", "-W", "1", &ip]);
    let _ = run_bounded(warm, Duration::from_secs(10))?;
    let pids = topo.agent_pids();
    let before = CpuMark::now(&pids);
    let p = ping_run(topo, plan.pings, Pace::Every(plan.ping_interval_ms), raw)?;
    let window = before
        .zip(CpuMark::now(&pids))
        .map(|(a, b)| a.window_to(&b));
    Ok((p, window))
}

/// How many pings fit in a loaded test of `tcp_seconds` (after the omitted seconds):
/// they start 0.5 s in and must end 0.5 s before iperf3 does; at most `pings`, at
/// least 10.
pub fn loaded_ping_count(pings: u32, interval_ms: u32, tcp_seconds: u32) -> u32 {
    let window_ms = tcp_seconds.saturating_mul(1000).saturating_sub(1000);
    (window_ms / interval_ms.max(1)).min(pings).max(10)
}

/// Latency under load: 8 TCP streams from pod A to pod B and, once they have run
/// the omitted seconds plus 0.5 s, pings on the same path (requests queue behind
/// the data, replies return with the ACKs). Returns the streams' rate (Gbit/s) too.
fn loaded_ping_test(
    topo: &Topology,
    ctx: &Context,
    plan: &Plan,
    raw: &RawOut<'_>,
) -> anyhow::Result<(f64, PingResult)> {
    let count = loaded_ping_count(plan.pings, plan.ping_interval_ms, plan.tcp_seconds);
    let ping_raw = raw.path("ping-loaded", "txt");
    let (tcp, ping) = tcp_with(
        topo,
        ctx,
        plan.tcp_seconds,
        plan.tcp_omit,
        8,
        false,
        &raw.path("tcp8-ab-loaded", "json"),
        |done| -> anyhow::Result<PingResult> {
            stop::sleep(
                Duration::from_secs(u64::from(plan.tcp_omit)) + Duration::from_millis(500),
            )?;
            if done.load(Ordering::Relaxed) {
                bail!("iperf3 ended before the pings could start");
            }
            ping_run(topo, count, Pace::Every(plan.ping_interval_ms), &ping_raw)
        },
    )?;
    Ok((tcp.received_bps / 1e9, ping?))
}

/// When `ping` sends its requests.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// One every so many milliseconds (`-i`).
    Every(u32),
    /// The next as soon as the reply is in (`-A`, as root).
    BackToBack,
}

/// `count` echo requests from pod A to pod B at `pace`; raw output kept.
fn ping_run(topo: &Topology, count: u32, pace: Pace, raw: &Path) -> anyhow::Result<PingResult> {
    let ip = topo.pod_b.ip.to_string();
    let (pace_args, deadline_s) = match pace {
        Pace::Every(ms) => (
            vec!["-i".to_string(), format!("{:.3}", f64::from(ms) / 1000.0)],
            u64::from(count) * u64::from(ms) / 1000 + 5,
        ),
        // A lost reply holds the next request for up to -W's second.
        Pace::BackToBack => (vec!["-A".to_string()], u64::from(count) / 1000 + 20),
    };
    let (count_s, deadline) = (count.to_string(), deadline_s.to_string());
    let mut cmd = topo.pod_a.ns.command("ping");
    cmd.args(["-c", &count_s]);
    cmd.args(&pace_args);
    cmd.args(["-W", "1", "-w", &deadline, &ip]);
    let f = run_bounded(cmd, Duration::from_secs(deadline_s + 10))?;
    std::fs::write(raw, &f.stdout)?;
    let (rtts, sent) = parse::ping(&f.stdout);
    let (Some(med), Some(p99)) = (median(&rtts), percentile(&rtts, 99.0)) else {
        bail!("no ping replies: {}", f.stderr.trim());
    };
    Ok(PingResult {
        sent: sent.unwrap_or(u64::from(count)),
        replies: rtts.len(),
        median_us: med,
        p99_us: p99,
        min_us: rtts.iter().copied().fold(f64::INFINITY, f64::min),
        max_us: rtts.iter().copied().fold(0.0, f64::max),
    })
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    /// `None`: unlimited (`-b 0`).
    offered_pps: Option<f64>,
    r: UdpResult,
}

fn udp_probe(
    topo: &Topology,
    ctx: &Context,
    plan: &Plan,
    rate_pps: Option<f64>,
    raw: &Path,
) -> anyhow::Result<UdpResult> {
    let server = iperf_server(topo, ctx)?;
    let ip = topo.pod_b.ip.to_string();
    let bps = rate_pps.map_or("0".to_string(), |r| {
        format!("{:.0}", r * f64::from(plan.udp_payload) * 8.0)
    });
    let (len, secs) = (
        plan.udp_payload.to_string(),
        plan.udp_probe_seconds.to_string(),
    );
    let mut cmd = topo.pod_a.ns.command("iperf3");
    cmd.args([
        "-c",
        &ip,
        "-p",
        PORT,
        "-u",
        "-l",
        &len,
        "-b",
        &bps,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ]);
    let f = run_bounded(
        cmd,
        Duration::from_secs(u64::from(plan.udp_probe_seconds) + 30),
    );
    drop(server);
    let f = f?;
    std::fs::write(raw, &f.stdout)?;
    parse_checked(&f, parse::udp)
}

/// Fractions of the unlimited probe's received rate tried, highest first,
/// until one passes.
const UDP_LADDER: [f64; 7] = [0.97, 0.9, 0.8, 0.65, 0.5, 0.35, 0.2];

/// The next offered rate (packets/s) of the UDP search, or `None` when it is
/// done. `received_max` is what the unlimited first probe got through; `tried`
/// holds (offered rate, passed) of every probe so far, the unlimited one
/// included as a failure at the rate it sent. Down the ladder until a rate
/// passes, then bisect between the best pass and the lowest failure above it
/// while they differ by more than 5 %. Stepping down from what got through
/// (rather than bisecting from 0) keeps one unlucky probe — a scheduling
/// hiccup on 2 busy vCPUs — from halving the result.
pub fn next_udp_rate(received_max: f64, tried: &[(f64, bool)]) -> Option<f64> {
    let best_pass = tried.iter().filter(|t| t.1).map(|t| t.0).reduce(f64::max);
    let lowest_fail = |above: f64| {
        tried
            .iter()
            .filter(|t| !t.1 && t.0 > above)
            .map(|t| t.0)
            .reduce(f64::min)
    };
    match best_pass {
        None => {
            let fail = lowest_fail(0.0).unwrap_or(f64::INFINITY);
            UDP_LADDER
                .iter()
                .map(|f| f * received_max)
                .find(|&r| r < fail * 0.999)
                .filter(|&r| r >= 1000.0)
        }
        Some(pass) => {
            let fail = lowest_fail(pass)?;
            (fail - pass > 0.05 * pass).then_some((pass + fail) / 2.0)
        }
    }
}

/// The highest rate with loss ≤ `plan.udp_max_loss_pct`: first an unlimited
/// probe (the sender's maximum); if it loses too much, [`next_udp_rate`]
/// picks the following probes, `plan.udp_probes` in all. Returns the best
/// passing probe (or the lowest-rate one if none passed) and every probe.
fn udp_search(
    topo: &Topology,
    ctx: &Context,
    plan: &Plan,
    raw: RawOut<'_>,
) -> anyhow::Result<(Option<Probe>, Vec<Probe>)> {
    let mut probes: Vec<Probe> = Vec::new();
    let ok = |p: &Probe| p.r.lost_percent <= plan.udp_max_loss_pct;
    let first = udp_probe(topo, ctx, plan, None, &raw.path("udp-p1", "json"))?;
    probes.push(Probe {
        offered_pps: None,
        r: first,
    });
    if !ok(&probes[0]) {
        // Offering what got through is where the search starts failing: a
        // little conservative (by at most the 3 % of the first rung), but it
        // saves the probes a bisection up to the sender's rate would waste.
        let mut tried = vec![(first.received_pps, false)];
        for i in 2..=plan.udp_probes.max(1) {
            let Some(rate) = next_udp_rate(first.received_pps, &tried) else {
                break;
            };
            stop::check()?;
            stop::sleep(Duration::from_millis(300))?;
            let r = udp_probe(
                topo,
                ctx,
                plan,
                Some(rate),
                &raw.path(&format!("udp-p{i}"), "json"),
            )?;
            let p = Probe {
                offered_pps: Some(rate),
                r,
            };
            tried.push((rate, ok(&p)));
            probes.push(p);
        }
    }
    let best = probes
        .iter()
        .filter(|p| ok(p))
        .max_by(|a, b| a.r.received_pps.total_cmp(&b.r.received_pps))
        .or_else(|| {
            probes.iter().min_by(|a, b| {
                a.offered_pps
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.offered_pps.unwrap_or(f64::MAX))
            })
        })
        .copied();
    Ok((best, probes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_search_steps_down_then_bisects() {
        // Unlimited probe sent 140k, got 100k through: start just below 100k.
        let mut tried = vec![(140_000.0, false)];
        assert_eq!(next_udp_rate(100_000.0, &tried), Some(97_000.0));
        tried.push((97_000.0, false));
        assert_eq!(next_udp_rate(100_000.0, &tried), Some(90_000.0));
        tried.push((90_000.0, true));
        // 90k passed, 97k failed: 7.8 % apart, one bisection.
        assert_eq!(next_udp_rate(100_000.0, &tried), Some(93_500.0));
        tried.push((93_500.0, true));
        // 93.5k passed, 97k failed: 3.7 % apart, done.
        assert_eq!(next_udp_rate(100_000.0, &tried), None);
    }

    #[test]
    fn drops_from_link_stats() {
        let v = json!({"b": [{"ifname": "vxmesh0", "stats64": {"rx": {"dropped": 0, "errors": 0},
            "tx": {"dropped": 12, "errors": 0}}}], "pa": []});
        assert_eq!(
            link_drops(&v),
            vec![("b/vxmesh0 tx_dropped".to_string(), 12)]
        );
        assert!(link_drops(&Value::Null).is_empty());
        let v = json!({"a_udp": {"InDatagrams": 5, "RcvbufErrors": 3, "InErrors": 3}});
        assert_eq!(
            link_drops(&v),
            vec![
                ("a/udp InErrors".to_string(), 3),
                ("a/udp RcvbufErrors".to_string(), 3)
            ]
        );
    }

    #[test]
    fn loaded_pings_fit_inside_the_streams() {
        // Quick mode: 4 s of iperf3, 100 pings every 10 ms (1 s) fit in 3 s.
        assert_eq!(loaded_ping_count(100, 10, 4), 100);
        // Full mode: 1,000 pings would outlast 10 s; 900 end 0.5 s before iperf3.
        assert_eq!(loaded_ping_count(1000, 10, 10), 900);
        // Never fewer than 10, never a division by zero.
        assert_eq!(loaded_ping_count(100, 1000, 1), 10);
        assert_eq!(loaded_ping_count(100, 0, 4), 100);
    }

    #[test]
    fn udp_search_ladder_ends() {
        let mut tried = vec![(50_000.0, false)];
        for f in UDP_LADDER {
            let r = next_udp_rate(10_000.0, &tried).unwrap();
            assert!((r - f * 10_000.0).abs() < 1e-6);
            tried.push((r, false));
        }
        assert_eq!(next_udp_rate(10_000.0, &tried), None);
        // Nothing worth probing below 1000 packets/s.
        assert_eq!(next_udp_rate(1_000.0, &[(2_000.0, false)]), None);
    }
}
