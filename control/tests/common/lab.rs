//! The netns lab (`scripts/lab.sh`) driven from privileged tests: a guard that brings a
//! lab up under a name unique to this process and tears it down when dropped, plus the
//! small queries the tests share. Privilege checks, waiting and commands come from
//! `vxmesh-testkit`.

use std::path::PathBuf;
use std::process::{Child, Command};

use serde_json::Value;
use vxmesh_testkit::sh;

/// The directory holding vxmeshd, vxmeshctl and the vxmesh CNI plugin: `VXMESH_BIN_DIR`,
/// or the directory cargo built this test's vxmeshd into.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("VXMESH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_vxmeshd"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    for b in ["vxmeshd", "vxmeshctl", "vxmesh"] {
        assert!(
            dir.join(b).exists(),
            "{} missing: build all binaries first (cargo build --workspace --bins) or set VXMESH_BIN_DIR",
            dir.join(b).display()
        );
    }
    dir
}

/// A lab named `<tag><pid>`; `down` runs when dropped (also after a failed assertion).
#[derive(Debug)]
pub struct Lab {
    pub prefix: String,
    pub script: PathBuf,
    pub bin: PathBuf,
    pub state: PathBuf,
    env: Vec<(String, String)>,
}

impl Lab {
    /// Describes a lab; nothing runs until [`Lab::cmd`]`(["up"])`. `env` adds VXLAB_* knobs.
    pub fn new(tag: &str, env: &[(&str, &str)]) -> Lab {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let prefix = format!("{tag}{}", std::process::id() % 100_000);
        Lab {
            state: std::env::temp_dir().join(format!("vxlab-{prefix}")),
            prefix,
            script: root.join("scripts/lab.sh"),
            bin: bin_dir(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// [`Lab::new`], then `lab.sh up`, which must succeed (its output is printed).
    pub fn up(tag: &str, env: &[(&str, &str)]) -> Lab {
        let lab = Lab::new(tag, env);
        let (ok, out) = lab.cmd(&["up"]);
        println!("{out}");
        assert!(ok, "lab up failed");
        lab
    }

    /// `lab.sh <args>` with this lab's knobs, not yet run.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.script);
        c.args(args)
            .env("VXLAB_PREFIX", &self.prefix)
            .env("VXLAB_BIN", &self.bin)
            .env("VXLAB_STATE", &self.state)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// Starts `lab.sh <args>` in the background with extra environment, its output
    /// to `log` (e.g. `exec-agent 2`, which becomes that node's vxmeshd: same pid,
    /// its exit status).
    pub fn spawn(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> std::process::Child {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        self.command(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    }

    /// Starts node `node`'s vxmeshd in the foreground (`exec-agent`, its output to
    /// `<state>/<log>`), expecting it to refuse: it must exit unsuccessfully within
    /// 20 s (else it is killed and the test fails, naming `what`). Returns its output.
    pub fn refused_start(&self, node: &str, log: &str, what: &str) -> String {
        let log = self.state.join(log);
        let mut bad = self.spawn(&["exec-agent", node], &[], &log);
        let mut status = None;
        let exited = vxmesh_testkit::wait_for(std::time::Duration::from_secs(20), || {
            status = bad.try_wait().unwrap();
            status.is_some()
        });
        if exited.is_none() {
            let _ = bad.kill();
            let _ = bad.wait();
            panic!("vxmeshd kept running {what}");
        }
        assert!(!status.unwrap().success(), "vxmeshd exited 0 {what}");
        std::fs::read_to_string(&log).unwrap()
    }

    /// Like [`Lab::spawn`], with the command wrapped as `sh -c '<prefix> exec lab.sh
    /// <args>'` and a hook run in the child before exec (e.g. to place descriptors).
    pub fn spawn_with(
        &self,
        sh_prefix: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
        hook: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let inner = self.command(args);
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("{sh_prefix} exec \"$0\" \"$@\""))
            .arg(inner.get_program())
            .args(inner.get_args())
            .envs(
                inner
                    .get_envs()
                    .filter_map(|(k, v)| v.map(|v| (k.to_os_string(), v.to_os_string()))),
            )
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the hook only makes async-signal-safe system calls (dup2, fcntl).
        unsafe { c.pre_exec(hook) };
        c.spawn().unwrap()
    }

    /// Runs `lab.sh <args>`; success and the combined output.
    pub fn cmd(&self, args: &[&str]) -> (bool, String) {
        self.cmd_env(args, &[])
    }

    /// Runs `lab.sh <args>` with extra environment; success and the combined output.
    pub fn cmd_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let out = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Runs `lab.sh <args>`, which must succeed.
    pub fn must(&self, args: &[&str]) -> String {
        self.must_env(args, &[])
    }

    /// Runs `lab.sh <args>` with extra environment; it must succeed.
    pub fn must_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let (ok, out) = self.cmd_env(args, env);
        assert!(ok, "lab.sh {args:?} {env:?} failed:\n{out}");
        out
    }

    /// The full name of a lab namespace: `ns("n1")`, `ns("n2-p1")`, `ns("etcd")`.
    pub fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Runs a command inside a lab namespace; it must succeed.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let ns = self.ns(ns);
        let mut a = vec!["ip", "netns", "exec", ns.as_str()];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// The node's pod TAP's transmit queue (`ip link` `qlen`), in frames.
    pub fn tap_txqueuelen(&self, node: &str) -> Option<u64> {
        self.ip_json(node, &["link", "show", "dev", "vxmesh0"])[0]["txqlen"].as_u64()
    }

    /// The receive buffer of the node's VXLAN socket (port 8472) as the kernel keeps it:
    /// twice `--vxlan-rcvbuf` (`ss -m`'s `skmem:(r…,rb<bytes>,…)`).
    pub fn vxlan_rcvbuf(&self, node: &str) -> Option<u64> {
        let ss = self.exec(node, &["ss", "-uanmH", "sport = :8472"]);
        let rb = ss.split(",rb").nth(1)?;
        rb.split(',').next()?.parse().ok()
    }

    /// `ip -n <ns> -j <args>` as JSON (an empty array when ip prints nothing).
    pub fn ip_json(&self, node: &str, args: &[&str]) -> Value {
        let ns = self.ns(node);
        let mut a = vec!["-n", ns.as_str(), "-j"];
        a.extend_from_slice(args);
        let out = Command::new("ip").args(&a).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
    }

    /// `ip -n <node> route` as text.
    pub fn routes(&self, node: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns(node), "route"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// etcdctl against the lab's etcd, as its administrator (`lab.sh etcdctl`: over TLS
    /// with root's password in a secure lab); stdout, and it must succeed.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut a = vec!["etcdctl"];
        a.extend_from_slice(args);
        let out = self.command(&a).output().unwrap();
        assert!(
            out.status.success(),
            "lab.sh etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reads the network config from the lab's etcd, lets `edit` change it and writes it
    /// back (as an operator's `etcdctl get` / `put`); the agents read it when they start.
    pub fn edit_network_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        const KEY: &str = "/coreos.com/network/config";
        let text = self.etcdctl(&["get", "--print-value-only", KEY]);
        let mut config: Value = serde_json::from_str(text.trim()).unwrap();
        edit(config.as_object_mut().unwrap());
        self.etcdctl(&["put", KEY, &config.to_string()]);
    }

    /// An iperf3 TCP stream from pod `from` to `dst` on pod `to` (suffixes as for
    /// [`Lab::ns`]), `seconds` long in 0.5 s intervals, with `during` run `after` into
    /// it; iperf3's JSON report, once it is known to have run.
    pub fn iperf_during(
        &self,
        (from, to, dst): (&str, &str, &str),
        port: u16,
        seconds: u32,
        after: std::time::Duration,
        during: impl FnOnce(),
    ) -> Value {
        use std::process::Stdio;
        let (port, seconds) = (port.to_string(), seconds.to_string());
        let mut srv = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(to),
                "iperf3",
                "-s",
                "-1",
                "-p",
                &port,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let cli = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "iperf3",
                "-c",
                dst,
                "-p",
                &port,
            ])
            .args(["-t", &seconds, "-i", "0.5", "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        during();
        let out = cli.wait_with_output().unwrap();
        let _ = srv.kill();
        let _ = srv.wait();
        let j: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success() && j.get("error").is_none(),
            "iperf3 failed: {} {}",
            j["error"],
            String::from_utf8_lossy(&out.stderr)
        );
        j
    }

    /// `vxmeshctl status --json` on a node.
    pub fn status(&self, node: &str) -> Value {
        let ctl = self.bin.join("vxmeshctl");
        serde_json::from_str(&self.exec(node, &[ctl.to_str().unwrap(), "status", "--json"]))
            .unwrap()
    }

    /// Waits (up to 3 s) until node `node`'s agent has counted a firewall repair. The
    /// agent counts it once its restore command has returned: just after the rules
    /// reappear, not before — read at once, the counter races the agent.
    pub fn assert_repair_counted(&self, node: &str) {
        let counted = vxmesh_testkit::wait_for(std::time::Duration::from_secs(3), || {
            self.status(node)["iptables_repairs"].as_u64().unwrap_or(0) >= 1
        });
        assert!(
            counted.is_some(),
            "iptables_repairs = {}",
            self.status(node)["iptables_repairs"]
        );
    }

    /// The address the lab gave pod `pod` of node `node`.
    pub fn pod_ip(&self, node: u32, pod: u32) -> String {
        std::fs::read_to_string(self.state.join(format!("n{node}/p{pod}.ip")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A node's subnet (from its subnet file): `10.244.7.0/24`.
    pub fn subnet_of(&self, node: u32) -> String {
        let env = std::fs::read(self.state.join(format!("n{node}/subnet.env"))).unwrap();
        let sub = vxmesh_subnet_env::SubnetEnv::parse(&env)
            .unwrap()
            .subnet
            .unwrap();
        format!("{}/{}", sub.network(), sub.prefix())
    }

    /// The lab's own all-pairs ping (+ iperf3) must pass completely: `pairs` pod pairs.
    pub fn check(&self, pairs: usize, when: &str) {
        let out = self.must(&["check"]);
        assert!(
            out.contains(&format!("{pairs} of {pairs} reachable")) && out.contains(" 0 failed"),
            "{when}:\n{out}"
        );
        println!("{when}: {pairs} of {pairs} pod pairs reachable");
    }
}

/// One subnet lease as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKey {
    pub key: String,
    /// `10.244.7.0/24`.
    pub subnet: String,
    pub public_ip: String,
    /// The etcd lease the key is attached to (0: none, a reservation).
    pub lease: i64,
}

impl Lab {
    /// The pid of node `node`'s agent (from the lab's pid file).
    pub fn agent_pid(&self, node: u32) -> i32 {
        vxmesh_testkit::proc::pid_from_file(&self.state.join(format!("vxmeshd-n{node}.pid")))
            .unwrap()
    }

    /// The packet threads of node `node`'s agent (userspace dataplane), as
    /// `(name, thread id)` sorted: the same ids later mean the threads were not
    /// started again.
    pub fn engine_threads(&self, node: u32) -> Vec<(String, u64)> {
        let pid = self.agent_pid(node);
        let mut out: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?;
                let tid: u64 = t.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                let comm = comm.trim();
                (comm.starts_with("vxmesh-tx") || comm.starts_with("vxmesh-rx"))
                    .then(|| (comm.to_string(), tid))
            })
            .collect();
        out.sort();
        out
    }

    /// A `Command` running `program` inside a lab namespace (to spawn, e.g. a monitor).
    pub fn command_in(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(ns), program]);
        c
    }

    /// A node's `/metrics` text.
    pub fn metrics(&self, node: &str) -> String {
        self.exec(node, &["curl", "-sf", "http://127.0.0.1:8471/metrics"])
    }

    /// The kinds of the node's recorded events (`/v1/events`), oldest first.
    pub fn event_kinds(&self, node: &str) -> Vec<String> {
        let out = self.exec(
            node,
            &["curl", "-sf", "http://127.0.0.1:8471/v1/events?since=0"],
        );
        let page: Value = serde_json::from_str(&out).unwrap();
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// One value of a node's `/metrics` (`name` with its labels, as printed).
    pub fn metric(&self, node: &str, name: &str) -> f64 {
        let text = self.metrics(node);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{node}: no metric {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// Every key under the subnets prefix, with its PublicIP and etcd lease, as etcd holds
    /// them now.
    pub fn lease_keys(&self) -> Vec<LeaseKey> {
        let out = self.etcdctl(&[
            "get",
            "--prefix",
            "/coreos.com/network/subnets/",
            "-w",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let b64 = |s: &str| String::from_utf8(base64_decode(s)).unwrap();
        v["kvs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let key = b64(kv["key"].as_str().unwrap());
                let value: Value = serde_json::from_str(&b64(kv["value"].as_str().unwrap()))
                    .unwrap_or(Value::Null);
                let subnet = vxmesh_control::lease::parse_lease_key(&key).unwrap();
                LeaseKey {
                    subnet: subnet.to_string(),
                    public_ip: value["PublicIP"].as_str().unwrap_or("").to_string(),
                    lease: kv["lease"].as_i64().unwrap_or(0),
                    key,
                }
            })
            .collect()
    }

    /// The leases in etcd must be exactly one per node, with distinct subnets: no
    /// duplicate, nothing left over. Returns them.
    pub fn assert_one_lease_per_node(&self, nodes: u32, when: &str) -> Vec<LeaseKey> {
        let leases = self.lease_keys();
        let subnets: std::collections::BTreeSet<&str> =
            leases.iter().map(|l| l.subnet.as_str()).collect();
        let ips: std::collections::BTreeSet<&str> =
            leases.iter().map(|l| l.public_ip.as_str()).collect();
        assert!(
            leases.len() == nodes as usize
                && subnets.len() == leases.len()
                && ips.len() == leases.len(),
            "{when}: expected {nodes} leases with distinct subnets and PublicIPs: {leases:#?}"
        );
        leases
    }

    /// A host attached to the lab's underlay switch at `ip`/24 (e.g. a rogue sender):
    /// namespace `<prefix>-<name>`, removed when the guard drops (or by `down`).
    pub fn attach_host(&self, name: &str, ip: &str) -> vxmesh_testkit::Netns {
        let ns = vxmesh_testkit::Netns::new(&self.ns(name)).unwrap();
        let sw = self.ns("sw");
        let cidr = format!("{ip}/24");
        for args in [
            vec![
                "-n",
                &sw,
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
            vec!["-n", &sw, "link", "set", name, "master", "br0", "up"],
        ] {
            sh(&[&["ip"][..], &args].concat());
        }
        ns.ip(&["addr", "add", &cidr, "dev", "eth0"]).unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        ns
    }

    /// Whether node `node` routes `subnet` into the overlay.
    pub fn routes_subnet(&self, node: &str, subnet: &str) -> bool {
        self.routes(node)
            .lines()
            .any(|l| l.starts_with(&format!("{subnet} ")) && l.contains("vxmesh0"))
    }
}

/// Standard base64 (etcdctl's JSON output encodes keys and values so).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {s}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

impl Drop for Lab {
    fn drop(&mut self) {
        let (ok, out) = self.cmd(&["down"]);
        if !ok {
            eprintln!("lab down failed: {out}");
        }
    }
}

/// `ping -i 0.01 -c count` from pod `from` to `to`, in the background.
pub fn pinger(lab: &Lab, from: &str, to: &str, count: u32) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(from),
            "ping",
            "-i",
            "0.01",
            "-W",
            "2",
        ])
        .args(["-D", "-O", "-c", &count.to_string(), to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// (sent, received) of a finished ping.
pub fn ping_counts(p: Child) -> (u32, u32) {
    let out = p.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Which sequence numbers never got a reply, with the wall clock they were sent
    // at (from the -O/-D "no answer yet" lines; replies may still have come later).
    let answered: std::collections::BTreeSet<u32> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let lost: Vec<String> = text
        .lines()
        .filter(|l| l.contains("no answer yet"))
        .filter_map(|l| {
            let seq: u32 = l.split("icmp_seq=").nth(1)?.trim().parse().ok()?;
            let at = l.split(']').next()?.trim_start_matches('[');
            (!answered.contains(&seq)).then(|| format!("{seq}@{at}"))
        })
        .collect();
    if !lost.is_empty() {
        println!("  lost (seq@sent): {}", lost.join(" "));
    }
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| {
            panic!(
                "no ping summary: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let num = |w: &str| {
        line.split(',')
            .find(|p| p.contains(w))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    (num("transmitted"), num("received"))
}
