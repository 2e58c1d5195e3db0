//! IP masquerading and forwarding rules (`--ip-masq`, `--iptables-forward-rules`,
//! both on by default), kept in place every `--iptables-resync` seconds.
//!
//! Pods reach each other across nodes by their own addresses, so nothing inside
//! the cluster Network is NATed; pod traffic leaving the Network is masqueraded
//! behind the node's address. The rules are flannel's (`FLANNEL-POSTRTG`,
//! `FLANNEL-FWD`), in chains of our own, `VXMESH-POSTRTG` and `VXMESH-FWD`, replaced
//! atomically with `iptables-restore --noflush` and hooked first into POSTROUTING
//! and FORWARD. The FORWARD accepts (where Docker sets the policy to DROP) are
//! independent of masquerading, as in flanneld; a part that is off is removed.
//! With masquerading on, the subnet file says `FLANNEL_IPMASQ=true`, which tells the
//! CNI plugin not to make the bridge masquerade too (the bridge would NAT traffic to
//! other nodes' pods).
//!
//! Kept in place like flanneld keeps its own (it re-checks every 5 s): [`ensure`]
//! compares our lines in `iptables-save` with what they were right after the last
//! [`apply`] and applies again when they differ — after a firewall reload, an
//! `iptables -F`, a deleted hook. Comparing with our own snapshot, not with the text
//! we wrote, keeps the check independent of how an iptables version prints rules.
//!
//! The rules are left in place when the agent stops, so existing pods keep their
//! outside access across a restart; `vxmeshctl cleanup-iptables` removes them.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::subnet::Subnet;

pub const NAT_CHAIN: &str = "VXMESH-POSTRTG";
pub const FWD_CHAIN: &str = "VXMESH-FWD";

/// Which of flannel's rules to keep in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `--ip-masq`: the nat chain.
    pub masquerade: bool,
    /// MASQUERADE with `--random-fully` (flanneld's `--ip-masq-fully-random-disable`
    /// turns it off).
    pub random_fully: bool,
    /// `--iptables-forward-rules`: the FORWARD accepts.
    pub forward: bool,
}

impl Rules {
    /// Whether vxmesh touches iptables at all.
    pub fn any(&self) -> bool {
        self.masquerade || self.forward
    }

    /// (table, built-in chain, our chain, enabled) for both parts.
    fn parts(&self) -> [(&'static str, &'static str, &'static str, bool); 2] {
        [
            ("nat", "POSTROUTING", NAT_CHAIN, self.masquerade),
            ("filter", "FORWARD", FWD_CHAIN, self.forward),
        ]
    }
}

/// The `iptables-restore` input that (re)defines our enabled chains.
pub fn restore_input(network: &Subnet, own: &Subnet, rules: Rules) -> String {
    let n = network.to_string();
    let c = r#"-m comment --comment "vxmesh masq""#;
    let f = r#"-m comment --comment "vxmesh forward""#;
    let random = if rules.random_fully {
        " --random-fully"
    } else {
        ""
    };
    let mut s = String::new();
    if rules.masquerade {
        s.push_str(&format!(
            "*nat\n\
             :{NAT_CHAIN} - [0:0]\n\
             -A {NAT_CHAIN} -m mark --mark 0x4000/0x4000 {c} -j RETURN\n\
             -A {NAT_CHAIN} -s {n} -d {n} {c} -j RETURN\n\
             -A {NAT_CHAIN} ! -s {n} -d {own} {c} -j RETURN\n\
             -A {NAT_CHAIN} -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE{random}\n\
             -A {NAT_CHAIN} ! -s {n} -d {n} {c} -j MASQUERADE{random}\n\
             COMMIT\n"
        ));
    }
    if rules.forward {
        s.push_str(&format!(
            "*filter\n\
             :{FWD_CHAIN} - [0:0]\n\
             -A {FWD_CHAIN} -s {n} {f} -j ACCEPT\n\
             -A {FWD_CHAIN} -d {n} {f} -j ACCEPT\n\
             COMMIT\n"
        ));
    }
    s
}

/// Our lines in `iptables-save` output: the rules of our chains and the hooks that
/// jump to them, in the order printed.
pub fn ours(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| {
            l.starts_with("-A ")
                && [NAT_CHAIN, FWD_CHAIN]
                    .iter()
                    .any(|c| l.starts_with(&format!("-A {c} ")) || l.ends_with(&format!("-j {c}")))
        })
        .map(str::to_string)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error(
        "cannot run {cmd}: {source} (install iptables, or start vxmeshd with --ip-masq=false --iptables-forward-rules=false)"
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

fn hook_rule(target: &str) -> [&str; 6] {
    ["-m", "comment", "--comment", "vxmesh", "-j", target]
}

/// Removes one part: its hooks and its chain (best effort).
fn remove_part(table: &str, builtin: &str, chain: &str) -> Result<(), MasqError> {
    let mut delete = vec!["-t", table, "-D", builtin];
    delete.extend_from_slice(&hook_rule(chain));
    while iptables(&delete)? {}
    iptables(&["-t", table, "-F", chain])?;
    iptables(&["-t", table, "-X", chain])?;
    Ok(())
}

/// Installs or refreshes the enabled rules for `own` subnet inside `network`, and
/// removes a part that is off.
pub fn apply(network: &Subnet, own: &Subnet, rules: Rules) -> Result<(), MasqError> {
    if !rules.any() {
        return Ok(());
    }
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
        let _ = stdin.write_all(restore_input(network, own, rules).as_bytes());
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
    for (table, builtin, chain, enabled) in rules.parts() {
        if !enabled {
            remove_part(table, builtin, chain)?;
            continue;
        }
        let rule = hook_rule(chain);
        let mut check = vec!["-t", table, "-C", builtin];
        check.extend_from_slice(&rule);
        if !iptables(&check)? {
            let mut insert = vec!["-t", table, "-I", builtin, "1"];
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

/// Our lines as `iptables-save` prints them now, for the enabled parts.
pub fn current(rules: Rules) -> Result<Vec<String>, MasqError> {
    let mut lines = Vec::new();
    for (table, _, _, enabled) in rules.parts() {
        if !enabled {
            continue;
        }
        let out = Command::new("iptables-save")
            .args(["-t", table])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| MasqError::Spawn {
                cmd: "iptables-save",
                source,
            })?;
        if !out.status.success() {
            return Err(MasqError::Failed {
                cmd: format!("iptables-save -t {table}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        lines.extend(ours(&String::from_utf8_lossy(&out.stdout)));
    }
    Ok(lines)
}

/// What [`apply`] left, for [`ensure`] to compare with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub own: Subnet,
    pub lines: Vec<String>,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// First time, or the subnet changed: applied.
    Applied,
    /// As left: nothing done.
    Intact,
    /// Changed behind our back (`missing` of our lines gone, `extra` foreign ones):
    /// applied again.
    Restored { missing: usize, extra: usize },
}

/// Whether our lines need applying again: the pure half of [`ensure`].
pub fn drift(last: &[String], now: &[String]) -> Option<(usize, usize)> {
    if last == now {
        return None;
    }
    let missing = last.iter().filter(|l| !now.contains(l)).count();
    let extra = now.iter().filter(|l| !last.contains(l)).count();
    Some((missing, extra))
}

/// Applies when nothing was applied yet or the subnet changed, else checks our lines
/// against the last snapshot and applies again if they drifted.
pub fn ensure(
    network: &Subnet,
    own: &Subnet,
    rules: Rules,
    last: &mut Option<Snapshot>,
) -> Result<Ensured, MasqError> {
    let outcome = match last {
        Some(s) if s.own == *own => match drift(&s.lines, &current(rules)?) {
            None => return Ok(Ensured::Intact),
            Some((missing, extra)) => Ensured::Restored { missing, extra },
        },
        _ => Ensured::Applied,
    };
    *last = None;
    apply(network, own, rules)?;
    *last = Some(Snapshot {
        own: *own,
        lines: current(rules)?,
    });
    Ok(outcome)
}

/// Removes the hooks and our chains (best effort).
pub fn remove() -> Result<(), MasqError> {
    for (table, builtin, chain, _) in (Rules {
        masquerade: true,
        random_fully: true,
        forward: true,
    })
    .parts()
    {
        remove_part(table, builtin, chain)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ALL: Rules = Rules {
        masquerade: true,
        random_fully: true,
        forward: true,
    };

    fn net() -> (Subnet, Subnet) {
        (
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        )
    }

    #[test]
    fn rules_never_nat_inside_the_network() {
        let (n, own) = net();
        let r = restore_input(&n, &own, ALL);
        assert!(r.contains("-A VXMESH-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"vxmesh masq\" -j RETURN"));
        assert!(r.contains("! -s 10.244.0.0/16 -d 10.244.3.0/24"));
        assert!(r.contains("-A VXMESH-FWD -d 10.244.0.0/16"));
        // the in-network RETURN comes before any MASQUERADE
        let ret = r
            .find("-d 10.244.0.0/16 -m comment --comment \"vxmesh masq\" -j RETURN")
            .unwrap();
        assert!(ret < r.find("MASQUERADE").unwrap());
        assert_eq!(r.matches("COMMIT").count(), 2);
        assert_eq!(r.matches("MASQUERADE --random-fully").count(), 2);
    }

    #[test]
    fn parts_follow_the_flags() {
        let (n, own) = net();
        // --iptables-forward-rules without --ip-masq: the filter table only.
        let fwd_only = Rules {
            masquerade: false,
            ..ALL
        };
        let r = restore_input(&n, &own, fwd_only);
        assert!(!r.contains("*nat") && !r.contains("MASQUERADE"), "{r}");
        assert!(r.contains("-A VXMESH-FWD -s 10.244.0.0/16"), "{r}");
        // --ip-masq with --iptables-forward-rules=false: the nat table only.
        let r = restore_input(
            &n,
            &own,
            Rules {
                forward: false,
                ..ALL
            },
        );
        assert!(r.contains("*nat") && !r.contains("*filter"), "{r}");
        // --ip-masq-fully-random-disable
        let r = restore_input(
            &n,
            &own,
            Rules {
                random_fully: false,
                ..ALL
            },
        );
        assert_eq!(r.matches("-j MASQUERADE\n").count(), 2, "{r}");
        assert!(!r.contains("random-fully"));
        assert!(!Rules {
            masquerade: false,
            forward: false,
            random_fully: true
        }
        .any());
    }

    /// `iptables-save -t nat` and `-t filter` (v1.8.9, nf_tables) in a namespace after
    /// `iptables-restore --noflush < restore_input(10.244.0.0/16, 10.244.3.0/24)`, the
    /// two hooks inserted and `iptables -A FORWARD -j DROP` appended.
    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 23:38:30 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:VXMESH-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment vxmesh -j VXMESH-POSTRTG
-A VXMESH-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"vxmesh masq\" -j RETURN
-A VXMESH-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"vxmesh masq\" -j RETURN
-A VXMESH-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"vxmesh masq\" -j RETURN
-A VXMESH-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"vxmesh masq\" -j MASQUERADE --random-fully
-A VXMESH-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"vxmesh masq\" -j MASQUERADE --random-fully
COMMIT
# Completed on Sun Nov 29 23:38:30 2026
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 29 23:38:30 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:VXMESH-FWD - [0:0]
-A FORWARD -m comment --comment vxmesh -j VXMESH-FWD
-A FORWARD -j DROP
-A VXMESH-FWD -s 10.244.0.0/16 -m comment --comment \"vxmesh forward\" -j ACCEPT
-A VXMESH-FWD -d 10.244.0.0/16 -m comment --comment \"vxmesh forward\" -j ACCEPT
COMMIT
# Completed on Sun Nov 29 23:38:30 2026
";

    #[test]
    fn our_lines_in_iptables_save() {
        let lines = ours(SAVED);
        assert_eq!(lines.len(), 9, "{lines:#?}");
        assert_eq!(
            lines[0],
            "-A POSTROUTING -m comment --comment vxmesh -j VXMESH-POSTRTG"
        );
        assert!(!lines.iter().any(|l| l == "-A FORWARD -j DROP"));
        // What iptables prints is what we wrote: every rule line of restore_input is there.
        let (n, own) = net();
        for l in restore_input(&n, &own, ALL)
            .lines()
            .filter(|l| l.starts_with("-A "))
        {
            assert!(lines.iter().any(|x| x == l), "{l}");
        }
    }

    #[test]
    fn drift_after_a_flush() {
        let last = ours(SAVED);
        assert_eq!(drift(&last, &last), None);
        // `iptables -F` in the filter table: the hook and both accepts are gone.
        let flushed: Vec<String> = last
            .iter()
            .filter(|l| !l.contains("FWD"))
            .cloned()
            .collect();
        assert_eq!(drift(&last, &flushed), Some((3, 0)));
        // A foreign rule appended to our chain.
        let mut extra = last.clone();
        extra.push("-A VXMESH-FWD -j DROP".into());
        assert_eq!(drift(&last, &extra), Some((0, 1)));
        // Order matters: our hook pushed behind a DROP is the same set but a drift.
        let mut moved = last.clone();
        moved.swap(0, 1);
        assert!(drift(&last, &moved).is_some());
    }
}
