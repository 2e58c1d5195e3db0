//! Soak: mixed TCP and UDP between the pods of every ordered pair of nodes (6 iperf3
//! flows, 20 Mbit/s each, restarted as they end) while node 3 leaves (SIGTERM: its agent
//! removes its device and routes, keeps its lease) and rejoins every few seconds.
//! Runs that straddle node 3's absence stall or fail; they are counted, not asserted on.
//! The agents that stay must stay flat — RSS and open descriptors at the end as at the
//! start — and each incarnation of the rejoining agent must look like the first; no agent
//! panics, no node loses or changes its subnet, no lease is re-acquired, and at the end every
//! pod pair is reachable.
//!
//! `VXMESH_SOAK_SECONDS` (default 60, what CI runs) sets the duration; the long soak is
//! `VXMESH_SOAK_SECONDS=600` (docs/reliability.md).

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vxmesh_testkit::proc::{self, ProcSample};
use vxmesh_testkit::{require_etcd, require_root};

use crate::common::lab::Lab;
use crate::support::{figure, serial};

const TEST: &str = "soak";

fn soak_seconds() -> u64 {
    std::env::var("VXMESH_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("VXMESH_SOAK_SECONDS={s}: a number of seconds"))
        })
        .unwrap_or(60)
}

/// The iperf3 port of the flow from node `a` to node `b` (a server per flow: one iperf3
/// server runs one test at a time).
fn port(a: u32, b: u32) -> String {
    (5300 + a * 10 + b).to_string()
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs of one flow: how many finished, failed, and the bytes received.
#[derive(Debug, Default)]
struct FlowStats {
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

/// Client loop of flow `a → b` until `stop`: 4 s iperf3 runs, TCP when a < b, else UDP.
fn flow(lab: Arc<Lab>, a: u32, b: u32, stop: Arc<AtomicBool>, stats: Arc<FlowStats>) {
    let dst = lab.pod_ip(b, 1);
    let p = port(a, b);
    while !stop.load(Ordering::Relaxed) {
        // A run that straddles node 3's absence may stall: killed after 8 s, counted failed.
        let mut c = std::process::Command::new("timeout");
        c.args([
            "-s",
            "KILL",
            "8",
            "ip",
            "netns",
            "exec",
            &lab.ns(&format!("n{a}-p1")),
        ])
        .args(["iperf3", "-c", &dst, "-p", &p, "-t", "4", "-b", "20M", "-J"])
        .args(["--connect-timeout", "2000"]);
        if a > b {
            c.arg("-u");
        }
        let out = c.stderr(Stdio::null()).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let received = if a > b {
            v["end"]["sum"]["bytes"].as_f64().map(|b| {
                b * (1.0 - v["end"]["sum"]["lost_percent"].as_f64().unwrap_or(0.0) / 100.0)
            })
        } else {
            v["end"]["sum_received"]["bytes"].as_f64()
        };
        match received {
            Some(bytes) if out.status.success() => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            _ => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn sample(lab: &Lab, node: u32) -> ProcSample {
    proc::sample(lab.agent_pid(node)).unwrap()
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn mixed_traffic_while_a_node_leaves_and_rejoins() {
    require_root();
    require_etcd();
    let _serial = serial();
    let t0 = Instant::now();
    let seconds = soak_seconds();
    let lab = Arc::new(Lab::new(
        "vxz",
        &[("VXLAB_PODS", "1"), ("VXLAB_IPERF_SECONDS", "1")],
    ));
    let out = lab.must(&["up"]);
    assert!(out.contains("6 of 6 reachable"), "{out}");
    let subnets: Vec<String> = (1..=3).map(|i| lab.subnet_of(i)).collect();
    lab.assert_one_lease_per_node(3, "before");
    let pairs: Vec<(u32, u32)> = (1..=3)
        .flat_map(|a| (1..=3).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect();

    let _servers = Servers(
        pairs
            .iter()
            .map(|&(a, b)| {
                lab.command_in(&format!("n{b}-p1"), "iperf3")
                    // A server whose client vanished mid-run serves again after 5 s.
                    .args(["-s", "-p", &port(a, b), "--idle-timeout", "5"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<FlowStats>> = pairs.iter().map(|_| Arc::default()).collect();
    let clients: Vec<_> = pairs
        .iter()
        .zip(&stats)
        .map(|(&(a, b), s)| {
            let (lab, stop, s) = (Arc::clone(&lab), Arc::clone(&stop), Arc::clone(s));
            std::thread::spawn(move || flow(lab, a, b, stop, s))
        })
        .collect();

    // Warm up (buffers, connections), then the first samples.
    std::thread::sleep(Duration::from_secs(3));
    let steady_pids = [lab.agent_pid(1), lab.agent_pid(2)];
    let start = [sample(&lab, 1), sample(&lab, 2)];
    let mut n3_samples: Vec<ProcSample> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cycles = 0u32;
    while Instant::now() < deadline {
        n3_samples.push(sample(&lab, 3));
        lab.must(&["stop-agent", "3"]);
        std::thread::sleep(Duration::from_secs(2));
        lab.must(&["start-agent", "3"]);
        cycles += 1;
        assert_eq!(
            lab.subnet_of(3),
            subnets[2],
            "cycle {cycles}: node 3's subnet changed"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let end = [sample(&lab, 1), sample(&lab, 2)];
    n3_samples.push(sample(&lab, 3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    for (&(a, b), s) in pairs.iter().zip(&stats) {
        figure(
            TEST,
            &format!(
                "flow n{a}→n{b} ({}): {} runs completed, {} failed, {:.0} MB received",
                if a > b { "UDP" } else { "TCP" },
                s.ok.load(Ordering::Relaxed),
                s.failed.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed) as f64 / 1e6
            ),
        );
    }
    for (i, (s, e)) in start.iter().zip(&end).enumerate() {
        figure(TEST, &format!("agent n{}: start {s}; end {e}", i + 1));
    }
    let (first, last) = (n3_samples[0], *n3_samples.last().unwrap());
    figure(
        TEST,
        &format!(
            "{seconds} s, node 3 left and rejoined {cycles} times; its agent's first incarnation {first}, last {last}; test took {:.0} s",
            t0.elapsed().as_secs_f64()
        ),
    );

    // Nothing panicked, nobody lost a subnet or re-acquired a lease, everything reachable.
    for n in 1..=3 {
        let log = std::fs::read_to_string(lab.state.join(format!("vxmeshd-n{n}.log"))).unwrap();
        assert!(!log.contains("panicked"), "n{n} panicked:\n{log}");
        assert_eq!(lab.subnet_of(n), subnets[n as usize - 1]);
        let st = lab.status(&format!("n{n}"));
        assert_eq!(st["lease_reacquisitions"], 0, "n{n}");
        assert_eq!(
            st["node"]["subnet"].as_str().unwrap(),
            subnets[n as usize - 1]
        );
    }
    assert_eq!(
        [lab.agent_pid(1), lab.agent_pid(2)],
        steady_pids,
        "a steady agent restarted"
    );
    lab.assert_one_lease_per_node(3, "after the soak");
    lab.check(6, "after the soak");
    assert!(cycles >= 3, "only {cycles} leave/rejoin cycles");
    for s in &stats {
        assert!(
            s.ok.load(Ordering::Relaxed) > 0,
            "a flow never completed a run"
        );
    }
    // Flat: what a steady agent holds does not grow with time or churn.
    for (i, (s, e)) in start.iter().zip(&end).enumerate() {
        assert!(
            e.fds <= s.fds + 2 && e.rss_kib <= s.rss_kib + 4096,
            "agent n{} grew: {s} → {e}",
            i + 1
        );
    }
    assert!(
        last.fds <= first.fds + 2 && last.rss_kib <= first.rss_kib + 4096,
        "node 3's agent grew across incarnations: {first} → {last}"
    );
}
