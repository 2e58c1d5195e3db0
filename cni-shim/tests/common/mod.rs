//! Helpers for the privileged black-box tests: a per-test "node" (its own netns, subnet.env,
//! state dir and host-local dir), and running the built `vxmesh` binary exactly as a runtime
//! would (env + stdin, inside the node's netns). Namespaces, commands and waiting come from
//! `vxmesh-testkit`.
//!
//! Convention: privileged tests are `#[ignore = "needs root…"]` (a plain `cargo test` lists them
//! as ignored; scripts/test.sh runs them with `-- --include-ignored`) and start with
//! [`require_node`], which fails the test on any missing prerequisite.

// Compiled into every test binary; each uses part of it (and of the re-exports).
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
pub use vxmesh_testkit::{require_commands, require_root, sh, try_sh, unique, wait_for, Netns};

/// The binary under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_vxmesh");
/// Where Debian's containernetworking-plugins live.
pub const CNI_BIN: &str = "/usr/lib/cni";
/// Every spec version vxmesh speaks.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The cluster network every test node uses.
pub const NETWORK: &str = "10.244.0.0/16";
/// A PATH for the plugin and its delegates (bridge runs iptables for ipMasq).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Fails the calling test unless it runs as root with what a node needs: the reference plugins
/// in [`CNI_BIN`], `ip`, `nsenter` and `busybox`.
pub fn require_node() {
    require_root();
    for tool in ["bridge", "host-local", "portmap", "loopback"] {
        let p = Path::new(CNI_BIN).join(tool);
        assert!(
            p.is_file(),
            "{} missing (apt-get install containernetworking-plugins)",
            p.display()
        );
    }
    require_commands(&["ip", "nsenter", "busybox"]);
}

/// What the plugin tests ask of a namespace, on top of `vxmesh_testkit::Netns`.
pub trait PodNetns {
    /// `ip -n <ns> -j <args>` parsed (an empty array when ip prints nothing).
    fn ip_json(&self, args: &[&str]) -> Value;
    /// IPv4 addresses (with prefix) on `dev`.
    fn addrs(&self, dev: &str) -> Vec<String>;
    /// Names of links in the namespace.
    fn links(&self) -> Vec<String>;
    /// Names of veth links in the namespace.
    fn veths(&self) -> Vec<String>;
    /// Pings `addr` once from inside this namespace.
    fn ping(&self, addr: &str) -> bool;
}

impl PodNetns for Netns {
    fn ip_json(&self, args: &[&str]) -> Value {
        self.json("ip", args)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name()))
    }

    fn addrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["family"] == "inet")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    fn links(&self) -> Vec<String> {
        let v = self.ip_json(&["link", "show"]);
        v.as_array()
            .into_iter()
            .flatten()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    fn veths(&self) -> Vec<String> {
        let v = self.ip_json(&["link", "show", "type", "veth"]);
        v.as_array()
            .into_iter()
            .flatten()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    fn ping(&self, addr: &str) -> bool {
        try_sh(&[
            "ip",
            "netns",
            "exec",
            self.name(),
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            addr,
        ])
    }
}

/// What one plugin execution produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

impl Run {
    fn from(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics unless the plugin exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }

    /// The CNI error code, panicking if there is no error JSON.
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        let j = self
            .json
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON on stdout: {} / {}", self.stdout, self.stderr));
        j["code"].as_u64().unwrap_or_else(|| panic!("no code: {j}"))
    }
}

/// Executes the plugin with exactly `env` (plus PATH) and `stdin`, optionally inside the
/// network namespace `in_ns` (as a runtime on that node would).
pub fn exec_plugin(in_ns: Option<&str>, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    exec_binary(PLUGIN, in_ns, env, stdin)
}

/// Like [`exec_plugin`] for any binary.
pub fn exec_binary(bin: &str, in_ns: Option<&str>, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut cmd = match in_ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.env_clear().env("PATH", PATH);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin);
    }
    Run::from(child.wait_with_output().unwrap())
}

/// A simulated cluster node: its own netns (where the bridge lives), subnet.env, vxmesh
/// dataDir and host-local dataDir, all private to one test.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub network_name: String,
    /// The third octet of this node's subnet 10.244.X.0/24.
    pub x: u8,
    /// Extra directories put before /usr/lib/cni on CNI_PATH.
    pub extra_path: Vec<PathBuf>,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let n = unique();
        let x = u8::try_from(n % 250 + 1).unwrap();
        let node = Node {
            ns: Netns::unique(&format!("cni-{tag}-node")).unwrap(),
            dir: tempfile::tempdir().unwrap(),
            bridge: format!("vb{:05}{:03}", std::process::id() % 100_000, n % 1000),
            network_name: format!("vxtest-{tag}-{}", std::process::id()),
            x,
            extra_path: Vec::new(),
        };
        node.write_subnet_env();
        node
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn host_local_dir(&self) -> PathBuf {
        self.dir.path().join("host-local")
    }

    pub fn gateway(&self) -> String {
        format!("10.244.{}.1", self.x)
    }

    pub fn subnet(&self) -> String {
        format!("10.244.{}.0/24", self.x)
    }

    pub fn write_subnet_env(&self) {
        fs::write(
            self.subnet_file(),
            format!(
                "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=10.244.{}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                self.x
            ),
        )
        .unwrap();
    }

    pub fn cni_path(&self) -> String {
        let mut parts: Vec<String> = self
            .extra_path
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        parts.push(CNI_BIN.to_string());
        parts.join(":")
    }

    /// The netconf a runtime would pass for this node.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.network_name,
            "type": "vxmesh",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
            "delegate": { "bridge": self.bridge },
            "ipam": { "dataDir": self.host_local_dir() }
        })
    }

    /// Runs the plugin on this node for an attachment.
    pub fn run(&self, command: &str, cid: &str, netns: Option<&str>, conf: &Value) -> Run {
        let path = self.cni_path();
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ];
        if let Some(ns) = netns {
            env.push(("CNI_NETNS", ns));
        }
        exec_plugin(Some(self.ns.name()), &env, conf.to_string().as_bytes())
    }

    /// Runs a node-wide command (GC, STATUS, VERSION): only CNI_COMMAND and CNI_PATH.
    pub fn run_global(&self, command: &str, conf: &Value) -> Run {
        let path = self.cni_path();
        exec_plugin(
            Some(self.ns.name()),
            &[("CNI_COMMAND", command), ("CNI_PATH", path.as_str())],
            conf.to_string().as_bytes(),
        )
    }

    /// State files in the dataDir.
    pub fn state_files(&self) -> BTreeSet<String> {
        list_dir(&self.data_dir())
    }

    /// host-local reservations (address files) for this network.
    pub fn reservations(&self) -> BTreeSet<String> {
        self.reservations_of(&self.network_name)
    }

    /// host-local reservations for the network `name` (another network sharing this
    /// node's host-local directory).
    pub fn reservations_of(&self, name: &str) -> BTreeSet<String> {
        list_dir(&self.host_local_dir().join(name))
            .into_iter()
            .filter(|f| f != "lock" && !f.starts_with("last_reserved_ip"))
            .collect()
    }
}

fn list_dir(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Writes an executable shell script.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The address (CIDR) of the sandbox interface in an ADD result.
pub fn result_address(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().to_string()
}
