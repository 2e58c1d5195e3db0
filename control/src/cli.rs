//! `vxmeshctl`'s etcd flags (clap). `vxmeshd` reads the same names, and flanneld's,
//! through [`crate::flags`]; a test there keeps the defaults equal.

use std::path::PathBuf;

use crate::etcd_access::{AccessError, AccessFlags, EtcdAccess};

/// Where the registry is: the etcd flags of vxmeshctl, with vxmeshd's names and
/// `VXMESHD_ETCD_*` variables (so one EnvironmentFile serves both).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated.
    #[arg(
        long,
        global = true,
        env = "VXMESHD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix holding `config` and `subnets/` (flannel's layout).
    #[arg(
        long,
        global = true,
        env = "VXMESHD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed etcd's server certificate (https:// endpoints);
    /// default: the system's CA roots.
    #[arg(long, global = true, env = "VXMESHD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-keyfile.
    #[arg(long, global = true, env = "VXMESHD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Private key (PEM) of --etcd-certfile.
    #[arg(long, global = true, env = "VXMESHD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user (when etcd has `auth enable`); needs --etcd-password.
    #[arg(long, global = true, env = "VXMESHD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// Password of --etcd-username. Prefer VXMESHD_ETCD_PASSWORD in a 0600
    /// EnvironmentFile: a command line is visible to every user in `ps`.
    #[arg(
        long,
        global = true,
        env = "VXMESHD_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    /// The flags, checked: a wrong combination is an error naming the flags.
    pub fn access(&self) -> Result<EtcdAccess, AccessError> {
        EtcdAccess::new(AccessFlags {
            endpoints: self.etcd_endpoints.clone(),
            cafile: self.etcd_cafile.clone(),
            certfile: self.etcd_certfile.clone(),
            keyfile: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        })
    }
}

/// Ends a binary's `main`: on an error, prints it and its causes to stderr (as
/// anyhow does, without the stack backtrace anyhow adds when `RUST_BACKTRACE` is set
/// for some other program: an operator's mistake is not a crash) and exits with 1.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `Error: <e>`, then its causes under `Caused by:` — each only once: a cause whose
/// text the lines above already hold (an etcd error quotes its source) is left out.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = format!("Error: {e}");
    let mut said = out.clone();
    let mut causes: Vec<String> = Vec::new();
    for c in e.chain().skip(1).map(|c| c.to_string()) {
        if !c.is_empty() && !said.contains(&c) {
            said.push_str(&c);
            causes.push(c);
        }
    }
    if !causes.is_empty() {
        out.push_str("\n\nCaused by:");
        for c in causes {
            out.push_str("\n    ");
            out.push_str(&c);
        }
    }
    out
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[test]
    fn an_error_prints_its_causes_and_no_backtrace() {
        let e = anyhow::anyhow!("Connection refused (os error 111)")
            .context("cannot reach the agent at http://127.0.0.1:8471");
        assert_eq!(
            error_text(&e),
            "Error: cannot reach the agent at http://127.0.0.1:8471\n\nCaused by:\n    Connection refused (os error 111)"
        );
        assert_eq!(error_text(&anyhow::anyhow!("bad flag")), "Error: bad flag");
    }

    /// An error that quotes its source (the etcd errors do) prints it once.
    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("etcd list subnets failed: {0} (is etcd reachable there?)")]
        struct Quoting(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "tcp connect error");
        let e = anyhow::Error::new(Quoting(io)).context("vxmeshctl leases");
        assert_eq!(
            error_text(&e),
            "Error: vxmeshctl leases\n\nCaused by:\n    etcd list subnets failed: tcp connect error (is etcd reachable there?)"
        );
    }
}
