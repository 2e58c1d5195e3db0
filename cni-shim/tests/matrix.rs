//! Operation × spec version matrix, in the style of containernetworking/plugins: a fresh node
//! netns and pod netns per version, the built plugin executed with env + stdin, stdout parsed,
//! the namespaces inspected with `ip -n <ns> -j`, DEL run twice. Needs root: ignored by
//! a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{json, Value};

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

fn matrix(version: &str) {
    require_node();
    let node = Node::new(&format!("m{}", version.replace('.', "")));
    let pod = Netns::unique("pod").unwrap();
    let conf = node.conf(version);
    let cid = format!("ctr-{}-{}", std::process::id(), version);
    let old = version < "1.0.0";

    // VERSION echoes the requested version and lists all five.
    let v = node
        .run_global("VERSION", &json!({"cniVersion": version}))
        .ok();
    let v = v.json.expect("VERSION prints JSON");
    assert_eq!(v["cniVersion"], version);
    assert_eq!(v["supportedVersions"], json!(VERSIONS));

    // ADD.
    let add = node.run("ADD", &cid, Some(&pod.path()), &conf).ok();
    let result = add.json.clone().expect("ADD prints a result");
    assert_eq!(result["cniVersion"], version, "{result}");
    let ifaces = result["interfaces"].as_array().unwrap();
    let sandbox_idx = ifaces
        .iter()
        .position(|i| i["sandbox"] == pod.path().as_str())
        .unwrap_or_else(|| panic!("no sandbox interface in {result}"));
    let eth0 = &ifaces[sandbox_idx];
    assert_eq!(eth0["name"], "eth0");
    let link = pod.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(
        eth0["mac"], link[0]["address"],
        "result MAC is the real MAC"
    );
    assert_eq!(link[0]["mtu"], 1450, "MTU from FLANNEL_MTU");
    assert!(ifaces.iter().any(|i| i["name"] == node.bridge.as_str()));
    for i in ifaces {
        assert!(i.get("mtu").is_none() || version == "1.1.0", "{i}");
    }
    let ip0 = &result["ips"][0];
    assert_eq!(ip0["interface"], sandbox_idx);
    assert_eq!(ip0["gateway"], node.gateway().as_str());
    if old {
        assert_eq!(ip0["version"], "4", "0.x results carry ips[].version");
    } else {
        assert!(
            ip0.get("version").is_none(),
            "1.x results have no ips[].version"
        );
    }
    let address = result_address(&result);
    assert!(
        address.starts_with(&format!("10.244.{}.", node.x)),
        "{address}"
    );
    assert!(address.ends_with("/24"));
    assert!(result["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["dst"] == NETWORK));

    // What is really there.
    assert_eq!(pod.addrs("eth0"), vec![address.clone()]);
    let routes = pod.ip_json(&["route", "show"]);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == NETWORK && r["gateway"] == node.gateway().as_str()),
        "route to the cluster network via the gateway: {routes}"
    );
    assert_eq!(
        node.ns.addrs(&node.bridge),
        vec![format!("{}/24", node.gateway())]
    );
    let state = node.state_files();
    assert_eq!(state, [format!("{cid}:eth0")].into_iter().collect());
    let mode = std::fs::metadata(node.data_dir().join(format!("{cid}:eth0")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(node.reservations().len(), 1);
    let ip = address.split('/').next().unwrap();
    assert!(node.ns.ping(ip), "pod {ip} reachable from its node");

    // CHECK (0.4.0+).
    let check = node.run("CHECK", &cid, Some(&pod.path()), &with_prev(&conf, &result));
    if version >= "0.4.0" {
        let check = check.ok();
        assert!(check.stdout.trim().is_empty());
    } else {
        assert_eq!(check.err_code(), 1, "CHECK does not exist in {version}");
    }

    // STATUS and GC (1.1.0).
    let status = node.run_global("STATUS", &conf);
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": cid, "ifname": "eth0"}]);
    let gc = node.run_global("GC", &gc_conf);
    if version == "1.1.0" {
        status.ok();
        gc.ok();
        assert_eq!(node.state_files().len(), 1, "GC keeps valid attachments");
        assert_eq!(node.reservations().len(), 1);
        assert_eq!(pod.addrs("eth0"), vec![address.clone()]);
    } else {
        assert_eq!(status.err_code(), 1);
        assert_eq!(gc.err_code(), 1);
    }

    // DEL twice (0.4.0+ runtimes pass prevResult on DEL).
    let del_conf = if old {
        conf.clone()
    } else {
        with_prev(&conf, &result)
    };
    for round in 0..2 {
        let del = node.run("DEL", &cid, Some(&pod.path()), &del_conf).ok();
        assert!(
            del.stdout.trim().is_empty(),
            "round {round}: {}",
            del.stdout
        );
    }
    assert!(!pod.links().contains(&"eth0".to_string()));
    assert!(node.ns.veths().is_empty(), "{:?}", node.ns.veths());
    assert!(node.state_files().is_empty());
    assert!(node.reservations().is_empty());
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn matrix_0_3_0() {
    matrix("0.3.0");
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn matrix_0_3_1() {
    matrix("0.3.1");
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn matrix_0_4_0() {
    matrix("0.4.0");
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn matrix_1_0_0() {
    matrix("1.0.0");
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn matrix_1_1_0() {
    matrix("1.1.0");
}
