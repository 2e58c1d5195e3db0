//! Migrating a node's conflist from flannel's CNI plugin to vxmesh: attachments flannel's
//! plugin made are released by vxmesh's DEL (and GC), checked by its CHECK.
//!
//! The pods are made as flannel's plugin makes them (github.com/flannel-io/cni-plugin,
//! flannel_linux.go `doCmdAdd` → flannel.go `delegateAdd`): its state file
//! `<dataDir>/<containerID>` is written first, in its format (checked against the golden
//! files in testdata/flannel/), then the real bridge + host-local ADD runs with exactly those
//! bytes. Then the conflist's `type` becomes `vxmesh`. The privileged tests are ignored by a
//! plain `cargo test`; scripts/test.sh runs them (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Map, Value};

/// The subnet.env values flannel's plugin reads (`loadFlannelSubnetEnv`), as it holds them:
/// subnets in network form (Go's `net.ParseCIDR` masks the address).
struct FlannelEnv<'a> {
    networks: &'a [&'a str],
    subnet: &'a str,
    ipv6_networks: &'a [&'a str],
    ipv6_subnet: Option<&'a str>,
    mtu: u32,
    ipmasq: bool,
}

/// What flannel's plugin writes to `<dataDir>/<containerID>` on ADD for `netconf`: the
/// delegate config of `cmdAdd` + `doCmdAdd` + `getDelegateIPAM` (defaults only where the
/// delegate has no such key, `isGateway` for bridge only, `runtimeConfig` copied in, IPAM
/// ranges from the subnets and routes = the netconf's + the networks), encoded as Go's
/// `json.Marshal` encodes a map: compact, keys sorted (serde_json's map is sorted too).
fn flannel_state(netconf: &Value, env: &FlannelEnv<'_>) -> String {
    let mut d: Map<String, Value> = netconf["delegate"].as_object().cloned().unwrap_or_default();
    if let Some(rc) = netconf.get("runtimeConfig") {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    d.insert("name".into(), netconf["name"].clone());
    d.entry("type").or_insert(json!("bridge"));
    d.entry("ipMasq").or_insert(json!(!env.ipmasq));
    d.entry("mtu").or_insert(json!(env.mtu));
    if d["type"] == "bridge" {
        d.entry("isGateway").or_insert(json!(true));
    }
    if let Some(v) = netconf.get("cniVersion") {
        d.insert("cniVersion".into(), v.clone());
    }
    let mut ipam = netconf
        .get("ipam")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    ipam.entry("type").or_insert(json!("host-local"));
    let mut ranges = vec![json!([{ "subnet": env.subnet }])];
    if let Some(s6) = env.ipv6_subnet {
        ranges.push(json!([{ "subnet": s6 }]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Value> = ipam
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for n in env.networks.iter().chain(env.ipv6_networks) {
        routes.push(json!({ "dst": n }));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    serde_json::to_string(&Value::Object(d)).unwrap()
}

fn golden(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/flannel")
            .join(name),
    )
    .unwrap()
}

#[test]
fn fixture_writer_matches_flannels_golden_files() {
    let kube_flannel = json!({
        "name": "cbr0", "cniVersion": "0.3.1", "type": "flannel",
        "delegate": { "hairpinMode": true, "isDefaultGateway": true }
    });
    let env = FlannelEnv {
        networks: &["10.244.0.0/16"],
        subnet: "10.244.3.0/24",
        ipv6_networks: &[],
        ipv6_subnet: None,
        mtu: 1450,
        ipmasq: true,
    };
    assert_eq!(
        flannel_state(&kube_flannel, &env),
        golden("kube-flannel-0.3.1")
    );

    let dual = json!({
        "cniVersion": "1.0.0", "name": "flannel-ds", "type": "flannel",
        "dataDir": "/srv/cni/flannel", "ipam": { "dataDir": "/srv/cni/ipam" },
        "delegate": { "bridge": "cni1", "isDefaultGateway": true },
        "runtimeConfig": { "portMappings": [
            { "containerPort": 80, "hostPort": 8080, "protocol": "tcp" } ] }
    });
    let env = FlannelEnv {
        networks: &["10.244.0.0/16"],
        subnet: "10.244.7.0/24",
        ipv6_networks: &["fd00:10:244::/56"],
        ipv6_subnet: Some("fd00:10:244:7::/64"),
        mtu: 1450,
        ipmasq: false,
    };
    assert_eq!(flannel_state(&dual, &env), golden("dual-stack-1.0.0"));
}

/// The node's conflist entry as it was under flannel: `type` flannel, its own `dataDir`.
fn flannel_conf(node: &Node, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": node.network_name,
        "type": "flannel",
        "subnetFile": node.subnet_file(),
        "dataDir": flannel_dir(node),
        "delegate": { "bridge": node.bridge, "isDefaultGateway": true },
        "ipam": { "dataDir": node.host_local_dir() }
    })
}

/// The same entry after the switch: only `type` changed.
fn switched(conf: &Value) -> Value {
    let mut c = conf.clone();
    c["type"] = json!("vxmesh");
    c
}

fn flannel_dir(node: &Node) -> PathBuf {
    node.dir.path().join("flannel")
}

/// ADD as flannel's plugin does it: save the rendered delegate config (0600, fsync) to
/// `<dataDir>/<containerID>`, then run the delegate with those bytes. Returns the result.
fn flannel_add(node: &Node, conf: &Value, cid: &str, pod: &Netns) -> Value {
    let env = FlannelEnv {
        networks: &[NETWORK],
        subnet: &node.subnet(),
        ipv6_networks: &[],
        ipv6_subnet: None,
        mtu: 1450,
        ipmasq: false,
    };
    let state = flannel_state(conf, &env);
    let dir = flannel_dir(node);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(cid))
        .unwrap();
    std::io::Write::write_all(&mut f, state.as_bytes()).unwrap();
    f.sync_all().unwrap();
    let netns = pod.path();
    let r = exec_binary(
        &format!("{CNI_BIN}/bridge"),
        Some(node.ns.name()),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", CNI_BIN),
        ],
        state.as_bytes(),
    )
    .ok();
    r.json.unwrap()
}

fn flannel_files(node: &Node) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(flannel_dir(node))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn ip_of(result: &Value) -> String {
    result_address(result)
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn del_releases_what_flannels_plugin_made() {
    require_node();
    let node = Node::new("flmig");
    let pod = Netns::unique("pod").unwrap();
    let fconf = flannel_conf(&node, "0.3.1");
    let result = flannel_add(&node, &fconf, "c1", &pod);
    let ip = ip_of(&result);
    assert_eq!(node.reservations(), [ip.clone()].into_iter().collect());
    assert_eq!(node.ns.veths().len(), 1);
    assert!(node.ns.ping(&ip), "flannel's pod is up");
    assert_eq!(flannel_files(&node), ["c1"]);

    // The conflist now says vxmesh; everything else (dataDir included) is as flannel had it.
    let conf = switched(&fconf);
    let r = node.run("DEL", "c1", Some(&pod.path()), &conf).ok();
    assert!(
        node.reservations().is_empty(),
        "host-local's address released: {:?}",
        node.reservations()
    );
    assert!(
        r.stderr.contains("made by flannel's plugin"),
        "{}",
        r.stderr
    );
    assert!(
        wait_for(Duration::from_secs(5), || node.ns.veths().is_empty()).is_some(),
        "bridge veth removed: {:?}",
        node.ns.veths()
    );
    assert!(!pod.links().contains(&"eth0".to_string()));
    assert!(
        flannel_files(&node).is_empty(),
        "{:?}",
        flannel_files(&node)
    );
    node.run("DEL", "c1", Some(&pod.path()), &conf).ok();
    node.run("DEL", "c1", None, &conf).ok();

    // A flannel file of another network is not this attachment's: left alone.
    let pod2 = Netns::unique("pod2").unwrap();
    flannel_add(&node, &fconf, "c2", &pod2);
    let mut other = conf.clone();
    other["name"] = json!(format!("{}-other", node.network_name));
    let r = node.run("DEL", "c2", Some(&pod2.path()), &other).ok();
    assert!(r.stderr.contains("belongs to network"), "{}", r.stderr);
    assert_eq!(flannel_files(&node), ["c2"]);
    assert_eq!(node.reservations().len(), 1);
    // Its netns already gone: the address is still released.
    drop(pod2);
    node.run("DEL", "c2", None, &conf).ok();
    assert!(node.reservations().is_empty());
    assert!(flannel_files(&node).is_empty());

    // A file that does not decode: DEL succeeds and leaves it, as flannel's DEL does.
    fs::write(flannel_dir(&node).join("c3"), b"{truncated").unwrap();
    let r = node.run("DEL", "c3", None, &conf).ok();
    assert!(r.stderr.contains("left in place"), "{}", r.stderr);
    assert_eq!(flannel_files(&node), ["c3"]);
    assert!(node.state_files().is_empty());
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn check_and_gc_know_flannels_attachments() {
    require_node();
    let node = Node::new("flgc");
    let keep = Netns::unique("keep").unwrap();
    let mut stale = Netns::unique("stale").unwrap();
    let fconf = flannel_conf(&node, "1.0.0");
    let kept = flannel_add(&node, &fconf, "keep1", &keep);
    flannel_add(&node, &fconf, "stale1", &stale);
    assert_eq!(node.reservations().len(), 2);
    let mut conf = switched(&fconf);
    conf["cniVersion"] = json!("1.1.0");

    // CHECK uses flannel's saved config.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = kept.clone();
    node.run("CHECK", "keep1", Some(&keep.path()), &with_prev)
        .ok();
    sh(&["ip", "-n", keep.name(), "addr", "flush", "dev", "eth0"]);
    let r = node.run("CHECK", "keep1", Some(&keep.path()), &with_prev);
    assert_ne!(r.code, 0, "the delegate's CHECK sees the lost address");
    sh(&[
        "ip",
        "-n",
        keep.name(),
        "addr",
        "add",
        &result_address(&kept),
        "dev",
        "eth0",
    ]);

    // The runtime forgot stale1; GC releases it and keeps keep1.
    stale.delete().unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep1", "ifname": "eth0"}]);
    let r = node.run_global("GC", &gc).ok();
    assert!(
        r.stderr
            .contains("made by flannel's plugin (interfaces: [eth0])"),
        "{}",
        r.stderr
    );
    assert_eq!(flannel_files(&node), ["keep1"]);
    assert_eq!(
        node.reservations(),
        [ip_of(&kept)].into_iter().collect(),
        "only the stale address is released"
    );
    assert!(
        wait_for(Duration::from_secs(5), || node.ns.veths().len() == 1).is_some(),
        "{:?}",
        node.ns.veths()
    );
    // Listed under another interface name, the container still counts as valid.
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep1", "ifname": "net1"}]);
    node.run_global("GC", &gc).ok();
    assert_eq!(flannel_files(&node), ["keep1"]);
    assert_eq!(node.reservations().len(), 1);

    node.run("DEL", "keep1", Some(&keep.path()), &conf).ok();
    assert!(node.reservations().is_empty());
    assert!(flannel_files(&node).is_empty());
    assert!(wait_for(Duration::from_secs(5), || node.ns.veths().is_empty()).is_some());
    assert!(node.state_files().is_empty());
}
