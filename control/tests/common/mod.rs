//! Shared by the control plane's integration tests: a throwaway etcd (tests that use it
//! are `#[ignore = "needs etcd…"]` and call `vxmesh_testkit::require_etcd` first).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod lab;
pub mod pki;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vxmesh_testkit::wait_for;

/// A small runtime for tests that drive the async registry.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on loopback ports, killed (and its data removed) on drop.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    pub endpoint: String,
    /// Appended to every etcdctl call (TLS files, `--user`).
    pub ctl_extra: Vec<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[], None)
    }

    /// With extra etcd flags, and TLS on the client port when `tls` is given
    /// (server certificate from `tls`, client certificates required).
    pub fn start_with(extra: &[&str], tls: Option<&pki::Pki>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(extra);
        let mut ctl_extra = Vec::new();
        if let Some(p) = tls {
            cmd.arg("--cert-file")
                .arg(&p.server_cert)
                .arg("--key-file")
                .arg(&p.server_key)
                .arg("--trusted-ca-file")
                .arg(&p.ca)
                .arg("--client-cert-auth");
            ctl_extra = vec![
                format!("--cacert={}", p.ca.display()),
                format!("--cert={}", p.client_cert.display()),
                format!("--key={}", p.client_key.display()),
            ];
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = Etcd {
            child,
            _dir: dir,
            endpoint,
            ctl_extra,
        };
        let healthy = wait_for(Duration::from_secs(20), || {
            e.ctl(&["endpoint", "health"]).is_ok()
        });
        assert!(
            healthy.is_some(),
            "etcd did not become healthy at {}",
            e.endpoint
        );
        e
    }

    /// Runs etcdctl against this server; stdout on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .args(&self.ctl_extra)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]).unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
