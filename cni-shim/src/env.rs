//! The CNI protocol parameters passed in environment variables, parsed and validated.
//!
//! Read first: CNI SPEC.md section 2 "Parameters" and each operation's "Required environment
//! parameters". The rules mirror the reference `skel` package: a variable required by the
//! command must be non-empty; CNI_CONTAINERID must match `^[A-Za-z0-9][A-Za-z0-9_.-]*$`;
//! CNI_IFNAME must be a valid Linux interface name. Pure: the caller passes a getter.

use std::fmt;

use crate::error::{code, CniError};

/// The operation requested through CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment (0.4.0+).
    Check,
    /// Report supported versions.
    Version,
    /// Remove attachments not in the valid list (1.1.0+).
    Gc,
    /// Report readiness (1.1.0+).
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// The command as spelled in CNI_COMMAND.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container ID that passed the CNI rules; safe to use as part of a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Checks `^[A-Za-z0-9][A-Za-z0-9_.-]*$`.
    pub fn new(s: &str) -> Option<ContainerId> {
        let mut chars = s.chars();
        let first = chars.next()?;
        if !first.is_ascii_alphanumeric() {
            return None;
        }
        if chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-') {
            Some(ContainerId(s.to_string()))
        } else {
            None
        }
    }

    /// The ID as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An interface name Linux accepts: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// Longest name the kernel accepts (IFNAMSIZ - 1).
    pub const MAX_LEN: usize = 15;

    /// Checks the kernel's rules (net/core/dev.c `dev_valid_name`).
    pub fn new(s: &str) -> Result<IfName, &'static str> {
        if s.is_empty() {
            return Err("interface name is empty");
        }
        if s.len() > IfName::MAX_LEN {
            return Err("interface name is longer than 15 bytes");
        }
        if s == "." || s == ".." {
            return Err("interface name is . or ..");
        }
        if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err("interface name contains / or : or whitespace");
        }
        Ok(IfName(s.to_string()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The attachment an ADD/DEL/CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID.
    pub container_id: ContainerId,
    /// CNI_IFNAME.
    pub ifname: IfName,
}

/// Everything the environment told us, validated for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdArgs {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID + CNI_IFNAME (ADD, DEL, CHECK).
    pub attachment: Option<Attachment>,
    /// CNI_NETNS (required for ADD and CHECK, optional for DEL).
    pub netns: Option<String>,
    /// CNI_PATH split on ':' (required for every command but VERSION).
    pub cni_path: Vec<String>,
}

fn missing(names: &[&str]) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("required env variables [{}] missing", names.join(",")),
        "the container runtime must set these; when running the plugin by hand see docs/cni.md",
    )
}

/// Parses the CNI environment for one invocation. `get` returns a variable's value; empty
/// values count as missing, like the reference implementation.
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<CmdArgs, CniError> {
    let var = |name: &str| get(name).filter(|v| !v.is_empty());
    let Some(command_str) = var("CNI_COMMAND") else {
        return Err(missing(&["CNI_COMMAND"]));
    };
    let Some(command) = Command::parse(&command_str) else {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND: {command_str}"),
            "CNI_COMMAND must be one of ADD, DEL, CHECK, VERSION, GC, STATUS",
        ));
    };
    if command == Command::Version {
        return Ok(CmdArgs {
            command,
            attachment: None,
            netns: None,
            cni_path: Vec::new(),
        });
    }

    let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let needs_netns = matches!(command, Command::Add | Command::Check);
    let container_id = var("CNI_CONTAINERID");
    let netns = var("CNI_NETNS");
    let ifname = var("CNI_IFNAME");
    let path = var("CNI_PATH");

    let mut absent = Vec::new();
    if needs_attachment && container_id.is_none() {
        absent.push("CNI_CONTAINERID");
    }
    if needs_netns && netns.is_none() {
        absent.push("CNI_NETNS");
    }
    if needs_attachment && ifname.is_none() {
        absent.push("CNI_IFNAME");
    }
    if path.is_none() {
        absent.push("CNI_PATH");
    }
    if !absent.is_empty() {
        return Err(missing(&absent));
    }

    let attachment = match (needs_attachment, container_id, ifname) {
        (true, Some(cid), Some(ifn)) => {
            let container_id = ContainerId::new(&cid).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    "invalid characters in CNI_CONTAINERID",
                    format!("{cid:?} does not match ^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
                )
            })?;
            let ifname = IfName::new(&ifn).map_err(|why| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("invalid CNI_IFNAME {ifn:?}"),
                    why.to_string(),
                )
            })?;
            Some(Attachment {
                container_id,
                ifname,
            })
        }
        _ => None,
    };

    let path = path.unwrap_or_default();
    let cni_path: Vec<String> = path
        .split(':')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    // Only separators (":"): no directory to find a delegate in, which would fail later
    // as "not found on CNI_PATH ()".
    if cni_path.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_PATH {path:?} names no directory"),
            "set it to the directories holding the CNI plugins, separated by ':' (e.g. /opt/cni/bin)",
        ));
    }

    Ok(CmdArgs {
        command,
        attachment,
        netns,
        cni_path,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn add_parses() {
        let a = parse(env(ADD)).unwrap();
        assert_eq!(a.command, Command::Add);
        let att = a.attachment.unwrap();
        assert_eq!(att.container_id.as_str(), "abc123");
        assert_eq!(att.ifname.as_str(), "eth0");
        assert_eq!(a.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(a.cni_path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
    }

    #[test]
    fn missing_variables_are_named() {
        let e = parse(env(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e
            .msg
            .contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"));
        let e = parse(env(&[])).unwrap_err();
        assert!(e.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn del_does_not_need_netns() {
        let vars: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        let a = parse(env(&vars)).unwrap();
        assert_eq!(a.command, Command::Del);
        assert_eq!(a.netns, None);
    }

    #[test]
    fn a_cni_path_of_only_separators_is_refused() {
        for path in [":", "::", ":::"] {
            let e = parse(env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", path),
            ]))
            .unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV);
            assert!(e.msg.contains("names no directory"), "{}", e.msg);
        }
        // VERSION needs no CNI_PATH at all.
        assert!(parse(env(&[("CNI_COMMAND", "VERSION"), ("CNI_PATH", ":")])).is_ok());
    }

    #[test]
    fn gc_and_status_need_only_path() {
        for cmd in ["GC", "STATUS"] {
            let a = parse(env(&[("CNI_COMMAND", cmd), ("CNI_PATH", "/x")])).unwrap();
            assert!(a.attachment.is_none());
            let e = parse(env(&[("CNI_COMMAND", cmd)])).unwrap_err();
            assert!(e.msg.contains("CNI_PATH"));
        }
    }

    #[test]
    fn version_needs_nothing() {
        assert_eq!(
            parse(env(&[("CNI_COMMAND", "VERSION")])).unwrap().command,
            Command::Version
        );
    }

    #[test]
    fn rejects_bad_values() {
        let with = |k: &str, v: &'static str| {
            let vars: Vec<(&str, &str)> = ADD
                .iter()
                .map(|(a, b)| if *a == k { (*a, v) } else { (*a, *b) })
                .collect();
            parse(env(&vars)).unwrap_err()
        };
        assert_eq!(with("CNI_COMMAND", "FOO").code, code::INVALID_ENV);
        assert_eq!(with("CNI_CONTAINERID", "../etc").code, code::INVALID_ENV);
        assert_eq!(with("CNI_CONTAINERID", "-abc").code, code::INVALID_ENV);
        assert_eq!(
            with("CNI_IFNAME", "0123456789abcdef").code,
            code::INVALID_ENV
        );
        assert_eq!(with("CNI_IFNAME", "a:b").code, code::INVALID_ENV);
        assert_eq!(with("CNI_IFNAME", "..").code, code::INVALID_ENV);
    }

    #[test]
    fn container_id_rules() {
        assert!(ContainerId::new("a").is_some());
        assert!(ContainerId::new("A.b_c-9").is_some());
        assert!(ContainerId::new("").is_none());
        assert!(ContainerId::new("_a").is_none());
        assert!(ContainerId::new("a/b").is_none());
        assert!(ContainerId::new("a:b").is_none());
    }
}
