//! IP masquerading and forwarding rules (`--ip-masq`, on by default).
//!
//! Pods reach each other across nodes by their own addresses, so nothing inside
//! the cluster Network is NATed; pod traffic leaving the Network is masqueraded
//! behind the node's address. The rules are flannel's (`FLANNEL-POSTRTG`,
//! `FLANNEL-FWD`), in chains of our own, `VXMESH-POSTRTG` and `VXMESH-FWD`, replaced
//! atomically with `iptables-restore --noflush` and hooked first into POSTROUTING
//! and FORWARD (the FORWARD accepts matter where Docker sets the policy to DROP).
//! With masquerading on, the subnet file says `FLANNEL_IPMASQ=true`, which tells the
//! CNI plugin not to make the bridge masquerade too (the bridge would NAT traffic to
//! other nodes' pods).
//!
//! The rules are left in place when the agent stops, so existing pods keep their
//! outside access across a restart; `vxmeshctl cleanup-iptables` removes them.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::subnet::Subnet;

pub const NAT_CHAIN: &str = "VXMESH-POSTRTG";
pub const FWD_CHAIN: &str = "VXMESH-FWD";

/// The `iptables-restore` input that (re)defines our two chains.
pub fn restore_input(network: &Subnet, own: &Subnet) -> String {
    let n = network.to_string();
    let c = r#"-m comment --comment "vxmesh masq""#;
    let f = r#"-m comment --comment "vxmesh forward""#;
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -m mark --mark 0x4000/0x4000 {c} -j RETURN\n\
         -A {NAT_CHAIN} -s {n} -d {n} {c} -j RETURN\n\
         -A {NAT_CHAIN} ! -s {n} -d {own} {c} -j RETURN\n\
         -A {NAT_CHAIN} -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully\n\
         -A {NAT_CHAIN} ! -s {n} -d {n} {c} -j MASQUERADE --random-fully\n\
         COMMIT\n\
         *filter\n\
         :{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {n} {f} -j ACCEPT\n\
         -A {FWD_CHAIN} -d {n} {f} -j ACCEPT\n\
         COMMIT\n"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error(
        "cannot run {cmd}: {source} (install iptables, or start vxmeshd with --ip-masq=false)"
    )]
    Spawn {
        cmd: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

fn iptables(args: &[&str]) -> Result<bool, MasqError> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| MasqError::Spawn {
            cmd: "iptables",
            source,
        })?;
    Ok(out.status.success())
}

/// Installs or refreshes the rules for `own` subnet inside `network`.
pub fn apply(network: &Subnet, own: &Subnet) -> Result<(), MasqError> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MasqError::Spawn {
            cmd: "iptables-restore",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(restore_input(network, own).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| MasqError::Spawn {
            cmd: "iptables-restore",
            source,
        })?;
    if !out.status.success() {
        return Err(MasqError::Failed {
            cmd: "iptables-restore --noflush".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    for (table, chain, target) in [
        ("nat", "POSTROUTING", NAT_CHAIN),
        ("filter", "FORWARD", FWD_CHAIN),
    ] {
        let comment = "vxmesh";
        let rule = ["-m", "comment", "--comment", comment, "-j", target];
        let mut check = vec!["-t", table, "-C", chain];
        check.extend_from_slice(&rule);
        if !iptables(&check)? {
            let mut insert = vec!["-t", table, "-I", chain, "1"];
            insert.extend_from_slice(&rule);
            if !iptables(&insert)? {
                return Err(MasqError::Failed {
                    cmd: format!("iptables {}", insert.join(" ")),
                    stderr: "see iptables' message above".into(),
                });
            }
        }
    }
    Ok(())
}

/// Removes the hooks and our chains (best effort).
pub fn remove() -> Result<(), MasqError> {
    for (table, chain, target) in [
        ("nat", "POSTROUTING", NAT_CHAIN),
        ("filter", "FORWARD", FWD_CHAIN),
    ] {
        while iptables(&[
            "-t",
            table,
            "-D",
            chain,
            "-m",
            "comment",
            "--comment",
            "vxmesh",
            "-j",
            target,
        ])? {}
        iptables(&["-t", table, "-F", target])?;
        iptables(&["-t", table, "-X", target])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_never_nat_inside_the_network() {
        let r = restore_input(
            &"10.244.0.0/16".parse().unwrap(),
            &"10.244.3.0/24".parse().unwrap(),
        );
        assert!(r.contains("-A VXMESH-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"vxmesh masq\" -j RETURN"));
        assert!(r.contains("! -s 10.244.0.0/16 -d 10.244.3.0/24"));
        assert!(r.contains("-A VXMESH-FWD -d 10.244.0.0/16"));
        // the in-network RETURN comes before any MASQUERADE
        let ret = r
            .find("-d 10.244.0.0/16 -m comment --comment \"vxmesh masq\" -j RETURN")
            .unwrap();
        assert!(ret < r.find("MASQUERADE").unwrap());
        assert_eq!(r.matches("COMMIT").count(), 2);
    }
}
