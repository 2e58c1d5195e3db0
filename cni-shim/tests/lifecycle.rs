//! Lifecycle behaviour beyond the matrix: DEL when the netns is gone, CHECK finding broken
//! attachments, GC, STATUS, rollback of a failed ADD (also of a delegate that stops halfway),
//! the MAC podman needs, the delegate contract (environment, stdin, stderr), and flannel's
//! delegate options. Needs root: ignored by
//! a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A directory placed before /usr/lib/cni on the node's CNI_PATH, for wrapper delegates.
fn wrapper_dir(node: &mut Node) -> PathBuf {
    let dir = node.dir.path().join("bin");
    fs::create_dir_all(&dir).unwrap();
    node.extra_path.push(dir.clone());
    dir
}

fn assert_nothing_left(node: &Node, pod: &Netns) {
    assert!(
        !pod.links().contains(&"eth0".to_string()),
        "eth0 left in pod"
    );
    assert!(
        node.ns.veths().is_empty(),
        "veths left: {:?}",
        node.ns.veths()
    );
    assert!(node.reservations().is_empty(), "{:?}", node.reservations());
    assert!(node.state_files().is_empty(), "{:?}", node.state_files());
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn del_without_netns_after_the_pod_is_gone() {
    require_node();
    let node = Node::new("delgone");
    let mut pod = Netns::unique("pod").unwrap();
    let conf = node.conf("1.0.0");
    node.run("ADD", "c1", Some(&pod.path()), &conf).ok();
    let path = pod.path();
    pod.delete().unwrap();
    // DEL with the vanished path, then without CNI_NETNS at all: both succeed.
    node.run("DEL", "c1", Some(&path), &conf).ok();
    assert!(node.reservations().is_empty());
    assert!(node.state_files().is_empty());
    node.run("DEL", "c1", None, &conf).ok();
    assert!(wait_for(Duration::from_secs(5), || node.ns.veths().is_empty()).is_some());

    // And DEL without CNI_NETNS as the very first DEL releases the address too.
    let mut pod2 = Netns::unique("pod2").unwrap();
    node.run("ADD", "c2", Some(&pod2.path()), &conf).ok();
    pod2.delete().unwrap();
    node.run("DEL", "c2", None, &conf).ok();
    assert!(node.reservations().is_empty());
    assert!(node.state_files().is_empty());
    assert!(wait_for(Duration::from_secs(5), || node.ns.veths().is_empty()).is_some());
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn check_reports_broken_attachments() {
    require_node();
    let node = Node::new("check");
    let pod = Netns::unique("pod").unwrap();
    let conf = node.conf("1.0.0");
    let result = node
        .run("ADD", "c1", Some(&pod.path()), &conf)
        .ok()
        .json
        .unwrap();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();

    node.run("CHECK", "c1", Some(&pod.path()), &with_prev).ok();
    assert_eq!(
        node.run("CHECK", "c1", Some(&pod.path()), &conf).err_code(),
        7,
        "CHECK without prevResult"
    );
    assert_eq!(
        node.run("CHECK", "other", Some(&pod.path()), &with_prev)
            .err_code(),
        101,
        "CHECK for an attachment vxmesh never made"
    );

    // The node's lease changed under the pod.
    let saved = fs::read(node.subnet_file()).unwrap();
    fs::write(
        node.subnet_file(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.251.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let r = node.run("CHECK", "c1", Some(&pod.path()), &with_prev);
    assert_eq!(r.err_code(), 102, "{}", r.stdout);
    fs::write(node.subnet_file(), saved).unwrap();

    // The pod lost its address: the delegate's CHECK notices.
    sh(&["ip", "-n", pod.name(), "addr", "flush", "dev", "eth0"]);
    let r = node.run("CHECK", "c1", Some(&pod.path()), &with_prev);
    assert_ne!(r.code, 0, "CHECK must fail: {}", r.stdout);
    assert!(r.json.is_some(), "a CNI error on stdout: {}", r.stdout);

    node.run("DEL", "c1", Some(&pod.path()), &with_prev).ok();
    assert_nothing_left(&node, &pod);
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn check_notices_a_dual_stack_pods_ipv6_subnet_moving() {
    require_node();
    let node = Node::new("check6");
    let dual = |v6: &str| {
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{x}.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET={v6}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            x = node.x
        )
    };
    let here = format!("fd00:10:244:{:x}::1/64", node.x);
    fs::write(node.subnet_file(), dual(&here)).unwrap();
    let pod = Netns::unique("pod").unwrap();
    let conf = node.conf("1.0.0");
    let result = node
        .run("ADD", "c1", Some(&pod.path()), &conf)
        .ok()
        .json
        .unwrap();
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert!(
        ips.iter()
            .any(|a| a.starts_with(&format!("fd00:10:244:{:x}::", node.x))),
        "an IPv6 address from the node's IPv6 subnet: {ips:?}"
    );
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result;
    node.run("CHECK", "c1", Some(&pod.path()), &with_prev).ok();

    // The IPv6 half of the lease moved, the IPv4 half did not: the pod's IPv6 address is
    // stranded, CHECK says so.
    fs::write(node.subnet_file(), dual("fd00:10:244:ff::1/64")).unwrap();
    let r = node.run("CHECK", "c1", Some(&pod.path()), &with_prev);
    assert_eq!(r.err_code(), 102, "{}", r.stdout);
    assert!(r.stdout.contains("fd00:10:244:ff::/64"), "{}", r.stdout);

    // EnableIPv6 turned off: the family is gone.
    node.write_subnet_env();
    let r = node.run("CHECK", "c1", Some(&pod.path()), &with_prev);
    assert_eq!(r.err_code(), 102, "{}", r.stdout);
    assert!(r.stdout.contains("no longer carries"), "{}", r.stdout);

    fs::write(node.subnet_file(), dual(&here)).unwrap();
    node.run("CHECK", "c1", Some(&pod.path()), &with_prev).ok();
    node.run("DEL", "c1", Some(&pod.path()), &with_prev).ok();
    assert_nothing_left(&node, &pod);
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn gc_removes_only_stale_attachments() {
    require_node();
    let node = Node::new("gc");
    let keep = Netns::unique("keep").unwrap();
    let mut stale = Netns::unique("stale").unwrap();
    let conf = node.conf("1.1.0");
    let kept = node
        .run("ADD", "keep1", Some(&keep.path()), &conf)
        .ok()
        .json
        .unwrap();
    node.run("ADD", "stale1", Some(&stale.path()), &conf).ok();
    assert_eq!(node.reservations().len(), 2);
    // Another network sharing the dataDir: GC of this network must not touch it.
    let foreign_pod = Netns::unique("foreign").unwrap();
    let mut foreign = conf.clone();
    foreign["name"] = json!(format!("{}-other", node.network_name));
    node.run("ADD", "foreign1", Some(&foreign_pod.path()), &foreign)
        .ok();

    // Without the list, GC refuses and removes nothing.
    assert_eq!(node.run_global("GC", &conf).err_code(), 7);
    assert_eq!(node.state_files().len(), 3);

    // The runtime forgot the container (its netns is gone); GC cleans up after it.
    stale.delete().unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep1", "ifname": "eth0"}]);
    let r = node.run_global("GC", &gc).ok();
    assert!(
        r.stderr.contains("predates GC"),
        "says why GC is not forwarded to bridge 1.1.1: {}",
        r.stderr
    );
    assert_eq!(
        node.state_files(),
        ["foreign1:eth0".to_string(), "keep1:eth0".to_string()]
            .into_iter()
            .collect()
    );
    let kept_ip = result_address(&kept).split('/').next().unwrap().to_string();
    assert_eq!(
        node.reservations(),
        [kept_ip.clone()].into_iter().collect(),
        "the stale address is released through the delegate's DEL"
    );
    assert!(
        wait_for(Duration::from_secs(5), || node.ns.veths().len() == 2).is_some(),
        "the stale pod's veth goes with its netns (kept + foreign remain): {:?}",
        node.ns.veths()
    );
    assert!(node.ns.ping(&kept_ip));

    // The older key name is accepted too; an empty list removes everything.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    node.run_global("GC", &gc).ok();
    assert_eq!(
        node.state_files(),
        ["foreign1:eth0".to_string()].into_iter().collect()
    );
    assert!(node.reservations().is_empty());
    node.run("DEL", "foreign1", Some(&foreign_pod.path()), &foreign)
        .ok();
    assert!(node.state_files().is_empty());
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn status_follows_subnet_env() {
    require_node();
    let node = Node::new("status");
    let conf = node.conf("1.1.0");
    node.run_global("STATUS", &conf).ok();
    fs::write(node.subnet_file(), "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap();
    let r = node.run_global("STATUS", &conf);
    assert_eq!(r.err_code(), 50);
    assert!(r.stdout.contains("incomplete"), "{}", r.stdout);
    fs::remove_file(node.subnet_file()).unwrap();
    let r = node.run_global("STATUS", &conf);
    assert_eq!(r.err_code(), 50);
    assert!(r.stdout.contains("is vxmeshd running"), "{}", r.stdout);
    node.write_subnet_env();
    node.run_global("STATUS", &conf).ok();
    assert_eq!(node.run_global("STATUS", &node.conf("1.0.0")).err_code(), 1);
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn failed_add_rolls_back() {
    require_node();
    let mut node = Node::new("rollback");
    let bin = wrapper_dir(&mut node);
    // A "bridge" that does all the work and then reports failure.
    write_script(
        &bin,
        "bridge",
        r#"out=$(/usr/lib/cni/bridge); rc=$?
if [ "$CNI_COMMAND" = ADD ] && [ $rc -eq 0 ]; then
  echo "wrapper: injecting a failure after a successful ADD" >&2
  echo '{"cniVersion":"1.0.0","code":999,"msg":"injected failure"}'
  exit 1
fi
printf '%s\n' "$out"; exit $rc"#,
    );
    let pod = Netns::unique("pod").unwrap();
    let r = node.run("ADD", "c1", Some(&pod.path()), &node.conf("1.0.0"));
    assert_eq!(r.err_code(), 999, "the delegate's code is passed on");
    assert!(r.json.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("injected failure"));
    assert!(r.stderr.contains("rolling back"), "{}", r.stderr);
    assert!(
        r.stderr.contains("wrapper: injecting"),
        "delegate stderr passes through"
    );
    assert_nothing_left(&node, &pod);
}

/// A delegate that stops halfway — killed after doing its work, or printing half a result,
/// or failing after it reserved an address but before it made the veth — leaves nothing
/// behind: the plugin rolls back through the delegate's DEL.
#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn delegate_failing_halfway_leaves_nothing() {
    require_node();
    let mut node = Node::new("halfway");
    let bin = wrapper_dir(&mut node);
    // Every wrapper passes DEL (and VERSION) to the real bridge; only its ADD misbehaves.
    let wrapper = |add: &str| {
        format!(
            r#"conf=$(cat)
if [ "$CNI_COMMAND" != ADD ]; then printf '%s' "$conf" | /usr/lib/cni/bridge; exit $?; fi
{add}"#
        )
    };
    let cases = [
        (
            "killed after the work",
            r#"printf '%s' "$conf" | /usr/lib/cni/bridge >/dev/null; echo "wrapper: dying" >&2; kill -9 $$"#,
        ),
        (
            "half a result",
            r#"out=$(printf '%s' "$conf" | /usr/lib/cni/bridge); printf '%s' "$out" | head -c 40"#,
        ),
        (
            "address reserved, no veth",
            r#"printf '%s' "$conf" | /usr/lib/cni/host-local >/dev/null
echo '{"cniVersion":"1.0.0","code":11,"msg":"wrapper: failing before the veth"}'; exit 1"#,
        ),
    ];
    for (what, add) in cases {
        write_script(&bin, "bridge", &wrapper(add));
        let pod = Netns::unique("pod").unwrap();
        let r = node.run("ADD", "c1", Some(&pod.path()), &node.conf("1.0.0"));
        assert_ne!(r.code, 0, "{what}: ADD must fail: {}", r.stdout);
        assert!(
            r.json.as_ref().is_some_and(|j| j["msg"].is_string()),
            "{what}: an error result: {}",
            r.stdout
        );
        assert!(r.stderr.contains("rolling back"), "{what}: {}", r.stderr);
        assert_nothing_left(&node, &pod);
    }
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn missing_mac_is_filled_from_the_netns() {
    require_node();
    let mut node = Node::new("mac");
    let bin = wrapper_dir(&mut node);
    // A "bridge" whose result lacks the container interface's MAC.
    write_script(
        &bin,
        "bridge",
        r#"out=$(/usr/lib/cni/bridge); rc=$?
if [ "$CNI_COMMAND" = ADD ] && [ $rc -eq 0 ]; then
  printf '%s\n' "$out" | perl -0pe 's/"mac":\s*"[^"]*",\s*("sandbox")/$1/g'; exit 0
fi
printf '%s\n' "$out"; exit $rc"#,
    );
    let pod = Netns::unique("pod").unwrap();
    let conf = node.conf("1.0.0");
    let r = node.run("ADD", "c1", Some(&pod.path()), &conf).ok();
    let result = r.json.unwrap();
    let eth0 = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_string())
        .unwrap()
        .clone();
    let link = pod.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(eth0["mac"], link[0]["address"], "{result}");
    node.run("DEL", "c1", Some(&pod.path()), &conf).ok();
    assert_nothing_left(&node, &pod);
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn delegate_gets_runtime_env_and_rendered_config() {
    require_node();
    let mut node = Node::new("contract");
    let bin = wrapper_dir(&mut node);
    let rec = node.dir.path().join("rec");
    fs::create_dir_all(&rec).unwrap();
    write_script(
        &bin,
        "bridge",
        &format!(
            r#"env > {rec}/env.$CNI_COMMAND
cat > {rec}/stdin.$CNI_COMMAND
echo "wrapper-stderr-marker $CNI_COMMAND" >&2
exec /usr/lib/cni/bridge < {rec}/stdin.$CNI_COMMAND"#,
            rec = rec.display()
        ),
    );
    let pod = Netns::unique("pod").unwrap();
    let conf = node.conf("1.1.0");
    let path = node.cni_path();
    let netns = pod.path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", path.as_str()),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
    ];
    let r = exec_plugin(Some(node.ns.name()), &env, conf.to_string().as_bytes()).ok();
    assert!(
        r.stderr.contains("wrapper-stderr-marker ADD"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json.unwrap()["cniVersion"], "1.1.0");

    let seen_env = fs::read_to_string(rec.join("env.ADD")).unwrap();
    for (k, v) in env {
        assert!(
            seen_env.contains(&format!("{k}={v}\n")),
            "{k} not passed: {seen_env}"
        );
    }
    let seen: Value = serde_json::from_slice(&fs::read(rec.join("stdin.ADD")).unwrap()).unwrap();
    let want = json!({
        "cniVersion": "1.0.0",
        "name": node.network_name,
        "type": "bridge",
        "bridge": node.bridge,
        "isGateway": true,
        "ipMasq": true,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "dataDir": node.host_local_dir(),
            "ranges": [[{"subnet": node.subnet()}]],
            "routes": [{"dst": NETWORK}]
        }
    });
    assert_eq!(
        seen, want,
        "bridge 1.1.1 speaks up to 1.0.0, so 1.1.0 is negotiated down"
    );
    // The same config is the state file.
    let saved: Value =
        serde_json::from_slice(&fs::read(node.data_dir().join("c1:eth0")).unwrap()).unwrap();
    assert_eq!(saved, want);

    node.run("DEL", "c1", Some(&pod.path()), &conf).ok();
    let del_stdin: Value =
        serde_json::from_slice(&fs::read(rec.join("stdin.DEL")).unwrap()).unwrap();
    assert_eq!(del_stdin, want, "DEL uses the saved config");
    assert_nothing_left(&node, &pod);
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn hairpin_and_default_gateway_are_settable() {
    require_node();
    let node = Node::new("hairpin");
    let pod = Netns::unique("pod").unwrap();
    let mut conf = node.conf("1.0.0");
    conf["delegate"]["hairpinMode"] = json!(true);
    conf["delegate"]["isDefaultGateway"] = json!(true);
    node.run("ADD", "c1", Some(&pod.path()), &conf).ok();
    let default = pod.ip_json(&["route", "show", "default"]);
    assert_eq!(default[0]["gateway"], node.gateway().as_str(), "{default}");
    let veths = node.ns.ip_json(&["-d", "link", "show", "type", "veth"]);
    assert_eq!(
        veths[0]["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{veths}"
    );
    node.run("DEL", "c1", Some(&pod.path()), &conf).ok();
    assert_nothing_left(&node, &pod);
}

#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn gc_and_status_are_forwarded_to_a_1_1_delegate() {
    require_node();
    let mut node = Node::new("fwd");
    let bin = wrapper_dir(&mut node);
    let rec = node.dir.path().join("rec");
    fs::create_dir_all(&rec).unwrap();
    // A delegate that speaks 1.1.0 (Debian's 1.1.1 plugins do not) and records what it gets.
    write_script(
        &bin,
        "bridge",
        &format!(
            r#"case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}}';;
GC|STATUS)
  cat > {rec}/stdin.$CNI_COMMAND
  if [ -e {rec}/fail ]; then echo '{{"cniVersion":"1.1.0","code":51,"msg":"limited"}}'; exit 1; fi;;
*) echo "unexpected $CNI_COMMAND" >&2; exit 1;;
esac"#,
            rec = rec.display()
        ),
    );
    let conf = node.conf("1.1.0");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a1", "ifname": "eth0"}]);
    node.run_global("GC", &gc).ok();
    let got: Value = serde_json::from_slice(&fs::read(rec.join("stdin.GC")).unwrap()).unwrap();
    assert_eq!(got["cniVersion"], "1.1.0");
    assert_eq!(got["type"], "bridge");
    assert_eq!(got["name"], node.network_name.as_str());
    assert_eq!(
        got["cni.dev/valid-attachments"],
        json!([{"containerID": "a1", "ifname": "eth0"}])
    );
    assert_eq!(got["ipam"]["ranges"], json!([[{"subnet": node.subnet()}]]));

    node.run_global("STATUS", &conf).ok();
    assert!(rec.join("stdin.STATUS").exists());
    fs::write(rec.join("fail"), b"").unwrap();
    assert_eq!(node.run_global("STATUS", &conf).err_code(), 51);
    let r = node.run_global("GC", &gc);
    assert_eq!(
        r.err_code(),
        51,
        "GC reports the delegate's failure with its code: {}",
        r.stdout
    );
    assert!(r.stdout.contains("limited"), "{}", r.stdout);
}

/// State this network cannot trust is not misused: another network's attachment with the
/// same container ID and interface name is neither undone by this network's DEL nor
/// overwritten by its ADD; a damaged state file is released with the current netconf (the
/// address and the veth go) instead of being dropped; a file left where the pod's
/// namespace was mounted counts as a namespace that is gone.
#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn foreign_damaged_and_stale_state_in_a_node() {
    require_node();
    let node = Node::new("untrusted");
    let pod = Netns::unique("pod").unwrap();
    let conf = node.conf("1.0.0");
    let other_name = format!("{}-other", node.network_name);
    let mut other = conf.clone();
    other["name"] = json!(other_name);
    let other_reservations = || node.reservations_of(&other_name).len();
    let state_file = node.data_dir().join("c1:eth0");

    // The other network attaches c1/eth0; this network's ADD of the same pair fails (the
    // interface exists), and the runtime's clean-up DEL for this network leaves it alone.
    node.run("ADD", "c1", Some(&pod.path()), &other).ok();
    let saved = fs::read_to_string(&state_file).unwrap();
    assert_eq!(
        node.run("ADD", "c1", Some(&pod.path()), &conf).err_code(),
        4
    );
    let r = node.run("DEL", "c1", Some(&pod.path()), &conf).ok();
    assert!(
        r.stderr
            .contains(&format!("belongs to network {other_name}")),
        "{}",
        r.stderr
    );
    assert!(
        pod.links().contains(&"eth0".to_string()),
        "the other network's eth0 stays"
    );
    assert_eq!(other_reservations(), 1);
    assert_eq!(fs::read_to_string(&state_file).unwrap(), saved);

    // With that interface gone from the pod, this network's ADD still does not take over
    // the other's state (its address would never be released).
    pod.exec("ip", &["link", "del", "eth0"]).unwrap();
    let r = node.run("ADD", "c1", Some(&pod.path()), &conf);
    assert_eq!(r.err_code(), 4);
    assert!(
        r.stdout
            .contains(&format!("is attached to network {other_name}")),
        "{}",
        r.stdout
    );
    assert_eq!(fs::read_to_string(&state_file).unwrap(), saved);
    assert!(node.reservations().is_empty());
    node.run("DEL", "c1", Some(&pod.path()), &other).ok();
    assert_eq!(other_reservations(), 0);
    assert!(node.state_files().is_empty());

    // A damaged state file: DEL releases the attachment with the current netconf.
    node.run("ADD", "c2", Some(&pod.path()), &conf).ok();
    assert_eq!(node.reservations().len(), 1);
    fs::write(node.data_dir().join("c2:eth0"), b"{\"cniVersion\": \"1.0").unwrap();
    let r = node.run("DEL", "c2", Some(&pod.path()), &conf).ok();
    assert!(r.stderr.contains("state damaged"), "{}", r.stderr);
    assert_nothing_left(&node, &pod);

    // The pod's namespace unmounted, an empty file left at its path: DEL treats it as gone.
    let mut pod2 = Netns::unique("pod2").unwrap();
    node.run("ADD", "c3", Some(&pod2.path()), &conf).ok();
    let path = pod2.path();
    pod2.delete().unwrap();
    fs::write(&path, b"").unwrap();
    let r = node.run("DEL", "c3", Some(&path), &conf);
    fs::remove_file(&path).unwrap();
    let r = r.ok();
    assert!(
        r.stderr.contains("no longer a network namespace"),
        "{}",
        r.stderr
    );
    assert!(node.reservations().is_empty());
    assert!(node.state_files().is_empty());
    assert!(wait_for(Duration::from_secs(5), || node.ns.veths().is_empty()).is_some());
}

/// A conflist edited after its pods were made, into one ADD refuses: new pods fail (7),
/// while DEL of the old ones still releases them with the config saved at ADD. A damaged
/// state file cannot be released with such a netconf, and DEL says so instead of guessing.
#[test]
#[ignore = "needs root, network namespaces and the CNI reference plugins: scripts/test.sh runs it"]
fn del_after_the_conflist_was_edited_into_an_invalid_one() {
    require_node();
    let node = Node::new("edited");
    let pod = Netns::unique("pod").unwrap();
    let pod2 = Netns::unique("pod2").unwrap();
    let conf = node.conf("1.0.0");
    node.run("ADD", "c1", Some(&pod.path()), &conf).ok();
    node.run("ADD", "c2", Some(&pod2.path()), &conf).ok();
    let mut edited = conf.clone();
    edited["ipam"]["subnet"] = json!("10.0.0.0/8");
    let pod3 = Netns::unique("pod3").unwrap();
    assert_eq!(
        node.run("ADD", "c3", Some(&pod3.path()), &edited)
            .err_code(),
        7
    );
    let r = node.run("DEL", "c1", Some(&pod.path()), &edited).ok();
    assert!(r.stderr.contains("would not do for ADD"), "{}", r.stderr);
    assert!(!pod.links().contains(&"eth0".to_string()));
    assert_eq!(node.reservations().len(), 1);
    // c2's state damaged: not released with the edited netconf, kept for a retry.
    fs::write(node.data_dir().join("c2:eth0"), b"not json").unwrap();
    let r = node.run("DEL", "c2", Some(&pod2.path()), &edited);
    assert_eq!(r.err_code(), 7);
    assert!(r.stdout.contains("is damaged"), "{}", r.stdout);
    assert_eq!(node.reservations().len(), 1);
    // With the conflist put back, the retry releases it.
    node.run("DEL", "c2", Some(&pod2.path()), &conf).ok();
    assert_nothing_left(&node, &pod2);
}
