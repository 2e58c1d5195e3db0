//! What the fault tests share: one test at a time, figures on stderr, and small checks on a
//! running lab.

use std::io::Write as _;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::common::lab::Lab;

/// Held for the whole of each test: labs compete for the same CPUs and the figures are
/// timings, so the tests of this binary run one after another.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test is independent of it.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints one figure line on stderr, past the test harness's capture (the harness
/// captures `print!`/`eprint!`, not writes to the stderr handle), so CI logs show it.
pub fn figure(test: &str, text: &str) {
    let _ = writeln!(std::io::stderr(), "FIGURE {test}: {text}");
}

/// `b - a` in seconds, negative when `b` is earlier.
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Milliseconds, for figures.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Nothing stale on `node`: one overlay device, one route per peer subnet and one
/// permanent neighbour per peer VtepMAC, each exactly once, and nothing else on vxmesh0.
pub fn assert_nothing_stale(lab: &Lab, node: &str, peer_subnets: &[String], peer_macs: &[String]) {
    let links = lab.ip_json(node, &["link", "show"]);
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "vxmesh0").count(),
        1,
        "{node}: links {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("flannel.")),
        "{node}: a kernel vxlan device left: {names:?}"
    );
    let routes = lab.ip_json(node, &["route", "show", "dev", "vxmesh0"]);
    let mut dsts: Vec<String> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["gateway"].is_string())
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .collect();
    dsts.sort();
    let mut want = peer_subnets.to_vec();
    want.sort();
    assert_eq!(dsts, want, "{node}: routes through vxmesh0");
    let neigh = lab.ip_json(
        node,
        &["neigh", "show", "dev", "vxmesh0", "nud", "permanent"],
    );
    let mut macs: Vec<String> = neigh
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["lladdr"].as_str().unwrap_or("").to_string())
        .collect();
    macs.sort();
    let mut want = peer_macs.to_vec();
    want.sort();
    assert_eq!(macs, want, "{node}: permanent neighbours on vxmesh0");
}
