//! 50 ADDs at once on one node, as a runtime starting many pods would do: 50 distinct
//! addresses from the node's subnet, every pod reachable; then 50 concurrent DELs, each run
//! twice: no veth, no host-local reservation and no state file left. Needs root: ignored by
//! a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::thread;

use common::*;

const PODS: usize = 50;

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn fifty_concurrent_adds_and_dels() {
    require_node();
    let node = Node::new("conc");
    let pods: Vec<Netns> = (0..PODS).map(|_| Netns::unique("p").unwrap()).collect();
    let conf = node.conf("1.0.0");

    let results: Vec<Run> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.run("ADD", &format!("pod{i}"), Some(&pod.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut addresses = BTreeSet::new();
    let mut by_pod = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r.ok();
        let addr = result_address(r.json.as_ref().unwrap());
        assert_eq!(pods[i].addrs("eth0"), vec![addr.clone()], "pod{i}");
        assert!(addr.starts_with(&format!("10.244.{}.", node.x)), "{addr}");
        let ip = addr.split('/').next().unwrap().to_string();
        by_pod.push(ip.clone());
        addresses.insert(ip);
    }
    assert_eq!(addresses.len(), PODS, "distinct addresses");
    assert_eq!(node.reservations(), addresses, "one reservation per pod");
    assert_eq!(node.state_files().len(), PODS);
    assert_eq!(node.ns.veths().len(), PODS);

    for ip in &addresses {
        assert!(node.ns.ping(ip), "{ip} unreachable from the node");
    }
    // Pod to pod across the bridge.
    assert!(pods[0].ping(&by_pod[PODS - 1]), "pod0 -> pod{}", PODS - 1);
    assert!(pods[PODS - 1].ping(&by_pod[0]), "pod{} -> pod0", PODS - 1);

    thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                for _ in 0..2 {
                    node.run("DEL", &format!("pod{i}"), Some(&pod.path()), conf)
                        .ok();
                }
            });
        }
    });

    assert!(node.ns.veths().is_empty(), "{:?}", node.ns.veths());
    assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    assert!(node.state_files().is_empty(), "{:?}", node.state_files());
    for pod in &pods {
        assert!(!pod.links().contains(&"eth0".to_string()));
    }
}
