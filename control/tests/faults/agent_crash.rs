//! Agents that die without cleaning up.
//! - SIGKILL, then a restart (as systemd's Restart= does, minus RestartSec): the node gets
//!   the same subnet and VtepMAC back, cross-node traffic returns within 2 s of the restart,
//!   and nothing is stale — one device, one route and one permanent neighbour per peer on
//!   every node, no extra masquerade rule, one lease per node in etcd.
//! - A node gone for good (SIGKILL, no restart, a 5 s TTL): its lease expires and every
//!   other node drops its route within 1 s of the expiry (timed from etcd's delete event to
//!   the kernel's route deletion, both read as they happen).

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use vxmesh_testkit::monitor::Monitor;
use vxmesh_testkit::ping::Pinger;
use vxmesh_testkit::{require_etcd, require_root, wait_for};

use crate::common::lab::Lab;
use crate::support::{assert_nothing_stale, figure, secs_between, serial};

/// iptables rules in a node (every table), sorted: a restart must not add any.
fn iptables_rules(lab: &Lab, node: &str) -> Vec<String> {
    let mut rules: Vec<String> = lab
        .exec(node, &["iptables-save"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect();
    rules.sort();
    rules
}

fn vtep_mac(lab: &Lab, node: &str) -> String {
    lab.status(node)["node"]["vtep_mac"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn sigkilled_agent_restarts_to_the_same_lease_and_nothing_stale() {
    require_root();
    require_etcd();
    let _serial = serial();
    let t0 = Instant::now();
    const TEST: &str = "agent-sigkill";
    let lab = Lab::new("vxk", &[("VXLAB_PODS", "1"), ("VXLAB_IPERF_SECONDS", "1")]);
    let out = lab.must(&["up"]);
    assert!(out.contains("6 of 6 reachable"), "{out}");
    let subnets: Vec<String> = (1..=3).map(|i| lab.subnet_of(i)).collect();
    let macs: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| vtep_mac(&lab, n))
        .collect();
    let rules_before = iptables_rules(&lab, "n2");
    let old_pid = lab.agent_pid(2);

    // Traffic into and out of node 2's pod, every 10 ms.
    let into = Pinger::start(
        &lab.ns("n1-p1"),
        &lab.pod_ip(2, 1),
        Duration::from_millis(10),
    )
    .unwrap();
    let out_of = Pinger::start(
        &lab.ns("n2-p1"),
        &lab.pod_ip(3, 1),
        Duration::from_millis(10),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let killed = SystemTime::now();
    lab.must(&["kill-agent", "2"]);
    // Gone, or a zombie its parent has not reaped yet (lab.sh counts that as stopped).
    let state = std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        });
    assert!(
        state.is_none() || state.as_deref() == Some("Z"),
        "agent {old_pid} still alive (state {state:?})"
    );
    let restarted = SystemTime::now();
    let t_restart = Instant::now();
    lab.must(&["start-agent", "2"]);
    let ready = t_restart.elapsed();
    // Wait until both directions answer again, then a little more.
    wait_for(Duration::from_secs(10), || {
        vxmesh_testkit::try_sh(&[
            "ip",
            "netns",
            "exec",
            &lab.ns("n1-p1"),
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            &lab.pod_ip(2, 1),
        ])
    });
    std::thread::sleep(Duration::from_millis(500));
    let r_in = into.stop().unwrap();
    let r_out = out_of.stop().unwrap();

    let mut backs = Vec::new();
    for (what, r) in [("n1→n2", &r_in), ("n2→n3", &r_out)] {
        let back = r
            .first_reply_after(restarted)
            .unwrap_or_else(|| panic!("{what}: no reply after the restart: {}", r.describe()));
        let last = r.last_reply_before(killed).unwrap();
        let after_restart = secs_between(restarted, back);
        figure(
            TEST,
            &format!(
                "pods {what}: traffic back {after_restart:.2} s after the restart began (outage {:.2} s from the last reply before the kill); {}",
                secs_between(last, back),
                r.describe()
            ),
        );
        backs.push((what, after_restart));
    }
    figure(
        TEST,
        &format!(
            "restarted agent ready (vxmeshctl wait-ready) {:.2} s after start",
            ready.as_secs_f64()
        ),
    );
    for (what, after) in backs {
        assert!(
            after <= 2.0,
            "{what}: cross-node traffic back {after:.2} s after the restart (at most 2 s)"
        );
    }

    // Same subnet and VtepMAC, one lease per node, nothing stale anywhere.
    assert_ne!(lab.agent_pid(2), old_pid);
    assert_eq!(lab.subnet_of(2), subnets[1]);
    assert_eq!(
        lab.status("n2")["node"]["subnet"].as_str().unwrap(),
        subnets[1]
    );
    assert_eq!(vtep_mac(&lab, "n2"), macs[1]);
    lab.assert_one_lease_per_node(3, "after the SIGKILL and restart");
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        let others = |v: &[String]| -> Vec<String> {
            v.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, x)| x.clone())
                .collect()
        };
        assert_nothing_stale(&lab, node, &others(&subnets), &others(&macs));
    }
    assert_eq!(
        iptables_rules(&lab, "n2"),
        rules_before,
        "the restart added or lost iptables rules"
    );
    lab.check(6, "after the SIGKILL and restart");
    figure(
        TEST,
        &format!(
            "same subnet {} and VtepMAC {}, one route and one neighbour per peer on every node, iptables unchanged; test took {:.0} s",
            subnets[1],
            macs[1],
            t0.elapsed().as_secs_f64()
        ),
    );
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn node_gone_for_good_is_unrouted_within_a_second_of_expiry() {
    require_root();
    require_etcd();
    let _serial = serial();
    let t0 = Instant::now();
    const TEST: &str = "node-gone";
    const TTL_SECS: u64 = 5;
    let lab = Lab::new(
        "vxg",
        &[
            ("VXLAB_PODS", "1"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_LEASE_TTL", "5s"),
        ],
    );
    let out = lab.must(&["up"]);
    assert!(out.contains("6 of 6 reachable"), "{out}");
    let s3 = lab.subnet_of(3);
    let mac3 = vtep_mac(&lab, "n3");
    let key3 = format!("/coreos.com/network/subnets/{}", s3.replace('/', "-"));

    // etcd's delete event and each node's route deletion, stamped as they are read.
    let mut watch = lab.command_in("etcd", "etcdctl");
    watch.env("ETCDCTL_API", "3").args([
        "--endpoints",
        "http://192.168.100.2:2379",
        "watch",
        &key3,
    ]);
    let etcd_events = Monitor::spawn(watch).unwrap();
    let routes: Vec<(&str, Monitor)> = ["n1", "n2"]
        .into_iter()
        .map(|n| {
            let mut c = Command::new("ip");
            c.args(["-n", &lab.ns(n), "monitor", "route"]);
            (n, Monitor::spawn(c).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let t_kill = Instant::now();
    lab.must(&["kill-agent", "3"]);
    let expired = etcd_events
        .wait_line(Duration::from_secs(TTL_SECS + 5), |l| l == "DELETE")
        .expect("n3's lease never expired");
    let expired_after = t_kill.elapsed();
    let mut worst = 0.0f64;
    for (node, m) in &routes {
        let gone = m
            .wait_line(Duration::from_secs(5), |l| {
                l.starts_with(&format!("Deleted {s3} ")) && l.contains("vxmesh0")
            })
            .unwrap_or_else(|| panic!("{node} never deleted its route to {s3}"));
        let delay = secs_between(expired, gone);
        figure(
            TEST,
            &format!(
                "{node}: route to the gone node's {s3} deleted {:.0} ms after etcd expired its lease",
                delay * 1000.0
            ),
        );
        worst = worst.max(delay);
        assert!(!lab.routes_subnet(node, &s3));
        let neigh = lab
            .ip_json(node, &["neigh", "show", "dev", "vxmesh0"])
            .to_string();
        assert!(
            !neigh.contains(&mac3),
            "{node}: neighbour of the gone node left: {neigh}"
        );
    }
    figure(
        TEST,
        &format!(
            "TTL {TTL_SECS} s: lease expired {:.1} s after the SIGKILL; worst expiry→route gone {:.0} ms; test took {:.0} s",
            expired_after.as_secs_f64(),
            worst * 1000.0,
            t0.elapsed().as_secs_f64()
        ),
    );
    assert!(
        worst <= 1.0,
        "routes dropped {worst:.2} s after the lease expired (at most 1 s)"
    );
    for (a, b) in [(1, 2), (2, 1)] {
        lab.exec(
            &format!("n{a}-p1"),
            &["ping", "-c", "1", "-W", "2", &lab.pod_ip(b, 1)],
        );
    }
}
