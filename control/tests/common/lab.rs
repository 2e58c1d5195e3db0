//! The netns lab (`scripts/lab.sh`) driven from privileged tests: a guard that brings a
//! lab up under a name unique to this process and tears it down when dropped, plus the
//! small queries the tests share. Privilege checks, waiting and commands come from
//! `vxmesh-testkit`.

use std::path::PathBuf;
use std::process::Command;

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
        let out = self.command(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Runs `lab.sh <args>`, which must succeed.
    pub fn must(&self, args: &[&str]) -> String {
        let (ok, out) = self.cmd(args);
        assert!(ok, "lab.sh {args:?} failed:\n{out}");
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

    /// `vxmeshctl status --json` on a node.
    pub fn status(&self, node: &str) -> Value {
        let ctl = self.bin.join("vxmeshctl");
        serde_json::from_str(&self.exec(node, &[ctl.to_str().unwrap(), "status", "--json"]))
            .unwrap()
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

impl Drop for Lab {
    fn drop(&mut self) {
        let (ok, out) = self.cmd(&["down"]);
        if !ok {
            eprintln!("lab down failed: {out}");
        }
    }
}
