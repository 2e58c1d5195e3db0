//! A real runtime: Debian's podman 4.3 (libcni) runs a container on a vxmesh network inside a
//! node netns, with the conflist shipped in cni-shim/examples (vxmesh + portmap, cniVersion
//! 1.0.0). The container gets an address from FLANNEL_SUBNET, pings the bridge gateway and a
//! pod the plugin made directly on the same node; after `--rm` nothing of it is left.
//!
//! Recipe (../shared/reference/ecosystem.md): runtime runc, cgroupfs, explicit ulimits,
//! network_backend cni, our plugin dir first in cni_plugin_dirs, `nsenter --net` (not
//! `ip netns exec`, which remounts /sys and breaks runc), image from `podman import` of a
//! busybox-static root filesystem, all podman storage in a temp dir. Needs root and podman:
//! ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Podman with all its state under one temp dir; removes containers and images on drop.
struct Podman<'a> {
    dir: &'a Path,
    node_ns: String,
}

impl Podman<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--storage-driver")
            .arg("vfs")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
    }
}

/// The example conflist with this node's paths filled in.
fn conflist(node: &Node, name: &str) -> Value {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/10-vxmesh.conflist");
    let mut c: Value = serde_json::from_str(&fs::read_to_string(example).unwrap()).unwrap();
    assert_eq!(
        c["cniVersion"], "1.0.0",
        "podman 4.3's libcni needs <= 1.0.0"
    );
    assert_eq!(c["plugins"][0]["type"], "vxmesh");
    assert_eq!(c["plugins"][1]["type"], "portmap");
    c["name"] = name.into();
    let p = &mut c["plugins"][0];
    p["subnetFile"] = node.subnet_file().display().to_string().into();
    p["dataDir"] = node.data_dir().display().to_string().into();
    p["delegate"]["bridge"] = node.bridge.clone().into();
    p["ipam"] = serde_json::json!({ "dataDir": node.host_local_dir() });
    c
}

#[test]
#[ignore = "needs root, network namespaces, the CNI reference plugins and podman: scripts/test.sh runs it"]
fn podman_runs_a_container_on_vxmesh() {
    require_node();
    for tool in ["podman", "runc"] {
        assert!(
            try_sh(&["sh", "-c", &format!("command -v {tool}")]),
            "{tool} not installed (apt-get install podman runc)"
        );
    }
    let node = Node::new("podman");
    let d = node.dir.path();
    let (bin, netd, rootfs) = (d.join("bin"), d.join("net.d"), d.join("rootfs"));
    for dir in [&bin, &netd, &rootfs.join("bin"), &d.join("tmp")] {
        fs::create_dir_all(dir).unwrap();
    }
    symlink(PLUGIN, bin.join("vxmesh")).unwrap();
    // The same network name as the plugin-made pod below: host-local keeps reservations per
    // network name, so two names over one subnet would hand out the same address twice.
    let network = node.network_name.clone();
    fs::write(
        netd.join("10-vxmesh.conflist"),
        serde_json::to_string_pretty(&conflist(&node, &network)).unwrap(),
    )
    .unwrap();
    fs::write(
        d.join("containers.conf"),
        format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
[network]
network_backend = "cni"
network_config_dir = "{netd}"
cni_plugin_dirs = ["{bin}", "{cni}"]
"#,
            tmp = d.join("tmp").display(),
            netd = netd.display(),
            bin = bin.display(),
            cni = CNI_BIN,
        ),
    )
    .unwrap();

    // Image: busybox-static and its applet links.
    let busybox = rootfs.join("bin/busybox");
    fs::copy("/usr/bin/busybox", &busybox).expect("busybox-static installed");
    let applets = sh(&["/usr/bin/busybox", "--list"]);
    for a in applets.lines().filter(|a| *a != "busybox") {
        symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    let tar = d.join("rootfs.tar");
    sh(&[
        "tar",
        "-C",
        rootfs.to_str().unwrap(),
        "-cf",
        tar.to_str().unwrap(),
        ".",
    ]);
    let podman = Podman {
        dir: d,
        node_ns: node.ns.name().to_string(),
    };
    let (ok, out) = podman.run(&["import", tar.to_str().unwrap(), "localhost/vxbusybox:test"]);
    assert!(ok, "podman import: {out}");
    let (ok, out) = podman.run(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(ok && out.contains(&format!("{network} vxmesh")), "{out}");

    // Another pod on the node, made by the plugin directly (as the netns lab does).
    let other = Netns::unique("other").unwrap();
    let other_result = node
        .run("ADD", "otherpod", Some(&other.path()), &node.conf("1.0.0"))
        .ok()
        .json
        .unwrap();
    let other_ip = result_address(&other_result)
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let script = format!(
        "ip -o -4 addr show dev eth0 && ping -c 1 -W 2 {gw} && ping -c 1 -W 2 {other_ip} && echo VXMESH-OK",
        gw = node.gateway()
    );
    let (ok, out) = podman.run(&[
        "run",
        "--rm",
        "--network",
        &network,
        "-p",
        "18080:8080",
        "localhost/vxbusybox:test",
        "sh",
        "-c",
        &script,
    ]);
    println!("podman run output:\n{out}");
    assert!(ok && out.contains("VXMESH-OK"), "podman run failed:\n{out}");
    let addr_line = out.lines().find(|l| l.contains("inet ")).unwrap();
    assert!(
        addr_line.contains(&format!("inet 10.244.{}.", node.x)),
        "container address from FLANNEL_SUBNET {}: {addr_line}",
        node.subnet()
    );
    assert!(addr_line.contains("/24"));
    assert!(
        !addr_line.contains(&format!("inet {other_ip}/")),
        "the container must not get the other pod's address: {addr_line}"
    );

    // --rm tore the network down through the plugin: only the other pod remains.
    assert_eq!(
        node.state_files(),
        ["otherpod:eth0".to_string()].into_iter().collect()
    );
    assert_eq!(
        node.reservations(),
        [other_ip.clone()].into_iter().collect()
    );
    assert!(
        wait_for(Duration::from_secs(5), || node.ns.veths().len() == 1).is_some(),
        "{:?}",
        node.ns.veths()
    );
    node.run("DEL", "otherpod", Some(&other.path()), &node.conf("1.0.0"))
        .ok();
    assert!(node.state_files().is_empty());
}
