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
//! With `EnableNFTables` in the network config (flannel ≥ 0.25) the same rules go into
//! a native nftables table of our own, `table ip vxmesh` (flanneld's is
//! `ip flannel-ipv4`), with a `postrtg` chain (nat, postrouting, priority srcnat) and a
//! `forward` chain (filter, forward, priority filter), replaced atomically by one
//! `nft -f` transaction (add, delete, define). The rule set is vxmesh's iptables one, not
//! a copy of flanneld's nftables one (which returns before its host-to-pods masquerade
//! rule and matches the kube-proxy mark exactly instead of as a bit). Resync works the
//! same way, on `nft list table ip vxmesh`. Whichever backend is in use, applying it
//! removes the other's rules, as flanneld cleans up the manager it does not use (a
//! failure there is a warning: the other tool may not work on this host at all).
//!
//! With `--vxlan-notrack` (off by default, docs/decisions/0013) a third part keeps
//! conntrack, which the nat rules load, off the outer VXLAN packets: UDP to the VXLAN
//! port arriving at or leaving from the underlay address is marked `CT --notrack` in
//! the raw table (chain `VXMESH-NOTRACK`, hooked into PREROUTING and OUTPUT; with
//! nftables, chains `notrack_pre` and `notrack_out` at priority raw). Pod traffic stays
//! tracked: Service replies need conntrack to undo their DNAT.
//!
//! IPv6 (dual stack, on either dataplane): the same masquerade
//! and FORWARD rules for the IPv6 Network and the node's IPv6 subnet, as flanneld adds
//! them with the same flags — `ip6tables-restore` into the same chain names, or `table ip6
//! vxmesh` — kept in place the same way ([`ensure6`]). `--vxlan-notrack` leaves the
//! IPv6 device's outer VXLAN untracked too (UDP/IPv6 to the port, at or from the
//! PublicIPv6 it is sent from), in the IPv6 family's raw table or `table ip6 vxmesh`.
//!
//! The rules are left in place when the agent stops, so existing pods keep their
//! outside access across a restart; `vxmeshctl cleanup-iptables` removes them (both
//! backends').

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use crate::subnet::Subnet;
use crate::subnet6::Subnet6;

/// The address family a set of rules is for: which tools keep them and how the
/// Network's multicast range is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    /// The nftables family of our table, and the address keyword in its rules.
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }
    /// The rules of this family: `--vxlan-notrack` needs an address in it (in IPv6,
    /// only a node with the IPv6 device has one).
    fn rules(self, rules: Rules) -> Rules {
        match self {
            Family::V4 => rules,
            Family::V6 => Rules {
                untrack: rules.untrack.filter(|u| u.local_ipv6.is_some()),
                underlay_tap: None,
                ..rules
            },
        }
    }
}

pub const NAT_CHAIN: &str = "VXMESH-POSTRTG";
pub const FWD_CHAIN: &str = "VXMESH-FWD";
/// The raw-table chain that leaves the outer VXLAN packets untracked.
pub const RAW_CHAIN: &str = "VXMESH-NOTRACK";
/// Our nftables table (family `ip`).
pub const NFT_TABLE: &str = "vxmesh";

/// Which tool keeps the rules: the network config's `EnableNFTables` chooses, as in
/// flanneld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore` into chains of our own.
    Iptables,
    /// `nft -f` into a table of our own.
    Nftables,
}

impl Backend {
    /// The name operators know it by, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }
}

/// The outer VXLAN packets to leave untracked (`--vxlan-notrack`): UDP to the VXLAN
/// port, arriving for this node's underlay address or leaving from it. They are never
/// NATed, and with masquerading on, conntrack would otherwise look each one up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untrack {
    /// The underlay interface's address VXLAN is sent from and arrives at (not the
    /// advertised PublicIP, which differs behind NAT); `None` on an IPv6-only
    /// network, whose VXLAN is UDP/IPv6 alone.
    pub local_ip: Option<Ipv4Addr>,
    /// The IPv6 device's (`flannel-v6.<VNI>`) address, its PublicIPv6, on a node that
    /// runs one: its outer VXLAN is UDP/IPv6.
    pub local_ipv6: Option<Ipv6Addr>,
    /// The VXLAN UDP port (`Backend.Port`).
    pub port: u16,
}

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
    /// `--egress-tunnel-gso`: the node's underlay address and the VXLAN port. With
    /// `forward`, FORWARD also accepts the outer VXLAN packets the kernel forwards
    /// from the underlay TAP (UDP from that address to that port: only that device
    /// may bring in packets from a local address, `accept_local`).
    pub underlay_tap: Option<(Ipv4Addr, u16)>,
    /// `--vxlan-notrack`: the raw-table rules that keep conntrack off the outer
    /// VXLAN packets.
    pub untrack: Option<Untrack>,
    /// Where the rules go.
    pub backend: Backend,
}

impl Rules {
    /// What vxmeshd keeps with its default flags (`--ip-masq`, `--iptables-forward-rules`,
    /// MASQUERADE `--random-fully`), for the benchmark to give kernel VXLAN the same.
    /// `--vxlan-notrack` is off by default: nothing is left untracked.
    pub fn vxmeshd_default(backend: Backend) -> Rules {
        Rules {
            masquerade: true,
            random_fully: true,
            forward: true,
            untrack: None,
            underlay_tap: None,
            backend,
        }
    }

    /// `--vxlan-notrack`'s address in `fam` with its prefix length, and the port.
    fn untracked(&self, fam: Family) -> Option<(IpAddr, u8, u16)> {
        let u = self.untrack?;
        match fam {
            Family::V4 => Some((IpAddr::V4(u.local_ip?), 32, u.port)),
            Family::V6 => Some((IpAddr::V6(u.local_ipv6?), 128, u.port)),
        }
    }

    /// Whether vxmesh touches iptables at all.
    pub fn any(&self) -> bool {
        self.masquerade || self.forward || self.untrack.is_some()
    }

    /// (table, built-in chains, our chain, enabled) for each part.
    fn parts(&self) -> [(&'static str, &'static [&'static str], &'static str, bool); 3] {
        [
            ("nat", &["POSTROUTING"], NAT_CHAIN, self.masquerade),
            ("filter", &["FORWARD"], FWD_CHAIN, self.forward),
            (
                "raw",
                &["PREROUTING", "OUTPUT"],
                RAW_CHAIN,
                self.untrack.is_some(),
            ),
        ]
    }
}

/// The `iptables-restore` input that (re)defines our enabled chains.
pub fn restore_input(network: &Subnet, own: &Subnet, rules: Rules) -> String {
    restore_input_in(Family::V4, &network.to_string(), &own.to_string(), rules)
}

/// The `ip6tables-restore` input for the IPv6 Network and this node's IPv6 subnet.
pub fn restore_input6(network: &Subnet6, own: &Subnet6, rules: Rules) -> String {
    restore_input_in(Family::V6, &network.to_string(), &own.to_string(), rules)
}

fn restore_input_in(fam: Family, n: &str, own: &str, rules: Rules) -> String {
    let rules = fam.rules(rules);
    let multicast = fam.multicast();
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
             -A {NAT_CHAIN} -s {n} ! -d {multicast} {c} -j MASQUERADE{random}\n\
             -A {NAT_CHAIN} ! -s {n} -d {n} {c} -j MASQUERADE{random}\n\
             COMMIT\n"
        ));
    }
    if rules.forward {
        s.push_str(&format!(
            "*filter\n\
             :{FWD_CHAIN} - [0:0]\n\
             -A {FWD_CHAIN} -s {n} {f} -j ACCEPT\n\
             -A {FWD_CHAIN} -d {n} {f} -j ACCEPT\n"
        ));
        if let Some((ip, port)) = rules.underlay_tap {
            s.push_str(&format!(
                "-A {FWD_CHAIN} -s {ip}/32 -p udp -m udp --dport {port} {f} -j ACCEPT\n"
            ));
        }
        s.push_str("COMMIT\n");
    }
    if let Some((ip, len, port)) = rules.untracked(fam) {
        let t = r#"-m comment --comment "vxmesh notrack""#;
        s.push_str(&format!(
            "*raw\n\
             :{RAW_CHAIN} - [0:0]\n\
             -A {RAW_CHAIN} -d {ip}/{len} -p udp -m udp --dport {port} {t} -j CT --notrack\n\
             -A {RAW_CHAIN} -s {ip}/{len} -p udp -m udp --dport {port} {t} -j CT --notrack\n\
             COMMIT\n"
        ));
    }
    s
}

/// The `nft -f` input that replaces our table with the enabled chains, in one
/// transaction: creating the table first makes the delete succeed when it is absent.
/// Nothing is NATed inside the Network, as in [`restore_input`], rule for rule.
pub fn nft_input(network: &Subnet, own: &Subnet, rules: Rules) -> String {
    nft_input_in(Family::V4, &network.to_string(), &own.to_string(), rules)
}

/// The same for `table ip6 vxmesh`.
pub fn nft_input6(network: &Subnet6, own: &Subnet6, rules: Rules) -> String {
    nft_input_in(Family::V6, &network.to_string(), &own.to_string(), rules)
}

fn nft_input_in(fam: Family, n: &str, own: &str, rules: Rules) -> String {
    let rules = fam.rules(rules);
    let (f, multicast) = (fam.nft(), fam.multicast());
    let masquerade = if rules.random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mut s = format!(
        "table {f} {NFT_TABLE} {{\n}}\ndelete table {f} {NFT_TABLE}\ntable {f} {NFT_TABLE} {{\n"
    );
    if rules.masquerade {
        s.push_str(&format!(
            "\tchain postrtg {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark & 0x00004000 == 0x00004000 return\n\
             \t\t{f} saddr {n} {f} daddr {n} return\n\
             \t\t{f} saddr != {n} {f} daddr {own} return\n\
             \t\t{f} saddr {n} {f} daddr != {multicast} {masquerade}\n\
             \t\t{f} saddr != {n} {f} daddr {n} {masquerade}\n\
             \t}}\n"
        ));
    }
    if rules.forward {
        s.push_str(&format!(
            "\tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\t{f} saddr {n} accept\n\
             \t\t{f} daddr {n} accept\n"
        ));
        if let Some((ip, port)) = rules.underlay_tap {
            s.push_str(&format!("\t\t{f} saddr {ip} udp dport {port} accept\n"));
        }
        s.push_str("\t}\n");
    }
    if let Some((ip, _, port)) = rules.untracked(fam) {
        // The underlay TAP's packets carry the node's address as their source and
        // enter at PREROUTING (forwarded, not sent): untracked there, as iptables'
        // `-s` rule in the same chain does.
        let from_tap = match rules.underlay_tap {
            Some((tap_ip, _)) if IpAddr::V4(tap_ip) == ip => {
                format!("\t\t{f} saddr {ip} udp dport {port} notrack\n")
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "\tchain notrack_pre {{\n\
             \t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\t{f} daddr {ip} udp dport {port} notrack\n\
             {from_tap}\
             \t}}\n\
             \tchain notrack_out {{\n\
             \t\ttype filter hook output priority raw; policy accept;\n\
             \t\t{f} saddr {ip} udp dport {port} notrack\n\
             \t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// The lines of `nft list table ip vxmesh` output, trimmed, blank ones dropped.
pub fn nft_ours(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Our lines in `iptables-save` output: the rules of our chains and the hooks that
/// jump to them, in the order printed.
pub fn ours(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| {
            l.starts_with("-A ")
                && [NAT_CHAIN, FWD_CHAIN, RAW_CHAIN]
                    .iter()
                    .any(|c| l.starts_with(&format!("-A {c} ")) || l.ends_with(&format!("-j {c}")))
        })
        .map(str::to_string)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error(
        "cannot run {cmd}: {source} (install {package}, or start vxmeshd with --ip-masq=false --iptables-forward-rules=false)"
    )]
    Spawn {
        cmd: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// Runs `program` with `args` (and `stdin`), collecting its output.
pub(crate) fn run(
    program: &'static str,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, MasqError> {
    let spawn = |source| MasqError::Spawn {
        cmd: program,
        package,
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows as the program's own error below.
        let _ = pipe.write_all(text.as_bytes());
    }
    child.wait_with_output().map_err(spawn)
}

pub(crate) fn failed(cmd: impl Into<String>, out: &std::process::Output) -> MasqError {
    MasqError::Failed {
        cmd: cmd.into(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

fn iptables(fam: Family, args: &[&str]) -> Result<bool, MasqError> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    Ok(run(fam.iptables(), "iptables", &all, None)?
        .status
        .success())
}

pub(crate) fn nft(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, MasqError> {
    run("nft", "nftables", args, stdin)
}

fn hook_rule(target: &str) -> [&str; 6] {
    ["-m", "comment", "--comment", "vxmesh", "-j", target]
}

/// Removes one part: its hooks and its chain (best effort).
fn remove_part(fam: Family, table: &str, builtins: &[&str], chain: &str) -> Result<(), MasqError> {
    for builtin in builtins {
        let mut delete = vec!["-t", table, "-D", builtin];
        delete.extend_from_slice(&hook_rule(chain));
        while iptables(fam, &delete)? {}
    }
    iptables(fam, &["-t", table, "-F", chain])?;
    iptables(fam, &["-t", table, "-X", chain])?;
    Ok(())
}

/// Removes every iptables part of one family.
fn remove_iptables(fam: Family) -> Result<(), MasqError> {
    remove_part(fam, "nat", &["POSTROUTING"], NAT_CHAIN)?;
    remove_part(fam, "filter", &["FORWARD"], FWD_CHAIN)?;
    remove_part(fam, "raw", &["PREROUTING", "OUTPUT"], RAW_CHAIN)
}

/// Whether `nft list tables` output lists our table (family `ip`).
pub fn nft_has_table(listing: &str) -> bool {
    nft_has_table_in(Family::V4, listing)
}

fn nft_has_table_in(fam: Family, listing: &str) -> bool {
    let ours = format!("table {} {NFT_TABLE}", fam.nft());
    listing.lines().any(|l| l.trim() == ours)
}

/// Whether our nftables table of `fam` exists.
fn nft_table_exists(fam: Family) -> Result<bool, MasqError> {
    nft_table_listed(fam.nft(), NFT_TABLE)
}

/// Whether nftables lists table `name` of `family` (`ip`, `ip6`).
pub(crate) fn nft_table_listed(family: &str, name: &str) -> Result<bool, MasqError> {
    let out = nft(&["list", "tables", family], None)?;
    if !out.status.success() {
        return Err(failed(format!("nft list tables {family}"), &out));
    }
    let ours = format!("table {family} {name}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == ours))
}

/// Deletes our nftables table of `fam`; absent is fine.
fn remove_nft(fam: Family) -> Result<(), MasqError> {
    nft_delete_table(fam.nft(), NFT_TABLE)
}

/// Deletes table `name` of `family`; absent is fine.
pub(crate) fn nft_delete_table(family: &str, name: &str) -> Result<(), MasqError> {
    let out = nft(&["delete", "table", family, name], None)?;
    if out.status.success() || !nft_table_listed(family, name)? {
        return Ok(());
    }
    Err(failed(format!("nft delete table {family} {name}"), &out))
}

/// Removes the other backend's rules after a switch. Its tool not being installed means
/// none of its rules can be there: nothing to do. A failure is logged, not returned: the
/// chosen backend's rules are in place, and the other tool may not work on this host at
/// all (`nft` on a kernel without nf_tables, say).
fn remove_other(fam: Family, backend: Backend) {
    remove_earlier(
        fam,
        match backend {
            Backend::Iptables => Backend::Nftables,
            Backend::Nftables => Backend::Iptables,
        },
    );
}

/// Removes `backend`'s rules of `fam` that an earlier run left, best effort (see
/// [`remove_other`]).
fn remove_earlier(fam: Family, backend: Backend) {
    let (what, r) = match backend {
        Backend::Nftables => (
            format!("nftables table {} vxmesh", fam.nft()),
            remove_nft(fam),
        ),
        Backend::Iptables => (
            format!(
                "{} chains VXMESH-POSTRTG, VXMESH-FWD and VXMESH-NOTRACK",
                fam.iptables()
            ),
            remove_iptables(fam),
        ),
    };
    match r {
        Ok(()) | Err(MasqError::Spawn { .. }) => {}
        Err(e) => tracing::warn!(
            "cannot remove the {what} of an earlier run ({e}); if they are there, remove them by hand"
        ),
    }
}

/// Installs or refreshes the enabled rules for `own` subnet inside `network` with the
/// chosen backend, removes a part that is off, and removes the other backend's rules;
/// with every part off, removes both backends' rules.
pub fn apply(network: &Subnet, own: &Subnet, rules: Rules) -> Result<(), MasqError> {
    apply_in(Family::V4, &network.to_string(), &own.to_string(), rules)
}

/// [`apply`] for the IPv6 Network and this node's IPv6 subnet (ip6tables, or `table
/// ip6 vxmesh`).
pub fn apply6(network: &Subnet6, own: &Subnet6, rules: Rules) -> Result<(), MasqError> {
    apply_in(Family::V6, &network.to_string(), &own.to_string(), rules)
}

fn apply_in(fam: Family, network: &str, own: &str, rules: Rules) -> Result<(), MasqError> {
    let rules = fam.rules(rules);
    if !rules.any() {
        // Every part off: nothing of ours may stay, from either backend (an earlier run
        // with masquerading on would otherwise go on masquerading).
        remove_earlier(fam, Backend::Iptables);
        remove_earlier(fam, Backend::Nftables);
        return Ok(());
    }
    match rules.backend {
        Backend::Iptables => apply_iptables(fam, network, own, rules)?,
        Backend::Nftables => {
            let out = nft(&["-f", "-"], Some(&nft_input_in(fam, network, own, rules)))?;
            if !out.status.success() {
                return Err(failed("nft -f", &out));
            }
        }
    }
    remove_other(fam, rules.backend);
    Ok(())
}

fn apply_iptables(fam: Family, network: &str, own: &str, rules: Rules) -> Result<(), MasqError> {
    let out = run(
        fam.restore(),
        "iptables",
        &["-w", "--noflush"],
        Some(&restore_input_in(fam, network, own, rules)),
    )?;
    if !out.status.success() {
        return Err(failed(format!("{} --noflush", fam.restore()), &out));
    }
    for (table, builtins, chain, enabled) in rules.parts() {
        if !enabled {
            remove_part(fam, table, builtins, chain)?;
            continue;
        }
        let rule = hook_rule(chain);
        for builtin in builtins {
            let mut check = vec!["-t", table, "-C", builtin];
            check.extend_from_slice(&rule);
            if !iptables(fam, &check)? {
                let mut insert = vec!["-t", table, "-I", builtin, "1"];
                insert.extend_from_slice(&rule);
                if !iptables(fam, &insert)? {
                    return Err(MasqError::Failed {
                        cmd: format!("{} {}", fam.iptables(), insert.join(" ")),
                        stderr: format!("see {}' message above", fam.iptables()),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Our rules as the backend prints them now, for the enabled parts.
pub fn current(rules: Rules) -> Result<Vec<String>, MasqError> {
    current_in(Family::V4, rules)
}

fn current_in(fam: Family, rules: Rules) -> Result<Vec<String>, MasqError> {
    let rules = fam.rules(rules);
    if rules.backend == Backend::Nftables {
        let out = nft(&["list", "table", fam.nft(), NFT_TABLE], None)?;
        if out.status.success() {
            return Ok(nft_ours(&String::from_utf8_lossy(&out.stdout)));
        }
        if !nft_table_exists(fam)? {
            return Ok(Vec::new());
        }
        return Err(failed(
            format!("nft list table {} {NFT_TABLE}", fam.nft()),
            &out,
        ));
    }
    let mut lines = Vec::new();
    for (table, _, _, enabled) in rules.parts() {
        if !enabled {
            continue;
        }
        let out = run(fam.save(), "iptables", &["-t", table], None)?;
        if !out.status.success() {
            return Err(failed(format!("{} -t {table}", fam.save()), &out));
        }
        lines.extend(ours(&String::from_utf8_lossy(&out.stdout)));
    }
    Ok(lines)
}

/// What [`apply`] left, for [`ensure`] to compare with (`S`: the subnet type of the
/// family, [`Subnet6`] for [`ensure6`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<S = Subnet> {
    pub own: S,
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
    ensure_in(Family::V4, network, own, rules, last)
}

/// [`ensure`] for the IPv6 rules.
pub fn ensure6(
    network: &Subnet6,
    own: &Subnet6,
    rules: Rules,
    last: &mut Option<Snapshot<Subnet6>>,
) -> Result<Ensured, MasqError> {
    ensure_in(Family::V6, network, own, rules, last)
}

fn ensure_in<S: Copy + PartialEq + std::fmt::Display>(
    fam: Family,
    network: &S,
    own: &S,
    rules: Rules,
    last: &mut Option<Snapshot<S>>,
) -> Result<Ensured, MasqError> {
    let outcome = match last {
        Some(s) if s.own == *own => match drift(&s.lines, &current_in(fam, rules)?) {
            None => return Ok(Ensured::Intact),
            Some((missing, extra)) => Ensured::Restored { missing, extra },
        },
        _ => Ensured::Applied,
    };
    *last = None;
    apply_in(fam, &network.to_string(), &own.to_string(), rules)?;
    *last = Some(Snapshot {
        own: *own,
        lines: current_in(fam, rules)?,
    });
    Ok(outcome)
}

/// Removes both backends' rules, both families: the iptables and ip6tables hooks and
/// chains, the nftables tables `ip vxmesh` and `ip6 vxmesh`. A tool that is not
/// installed has nothing to remove; both IPv4 tools missing is an error.
pub fn remove() -> Result<(), MasqError> {
    // IPv6 first, best effort: a host without ip6tables (or IPv6) has none of ours.
    for r in [remove_iptables(Family::V6), remove_nft(Family::V6)] {
        if let Err(e @ MasqError::Failed { .. }) = r {
            return Err(e);
        }
    }
    match (remove_iptables(Family::V4), remove_nft(Family::V4)) {
        (Err(e @ MasqError::Spawn { .. }), Err(MasqError::Spawn { .. })) => Err(e),
        (Err(e @ MasqError::Failed { .. }), _) | (_, Err(e @ MasqError::Failed { .. })) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ALL: Rules = Rules {
        masquerade: true,
        random_fully: true,
        forward: true,
        untrack: None,
        underlay_tap: None,
        backend: Backend::Iptables,
    };

    const UNDERLAY_TAP: Option<(Ipv4Addr, u16)> = Some((Ipv4Addr::new(192, 168, 200, 1), 8472));

    /// `--egress-tunnel-gso`: FORWARD also accepts the outer VXLAN packets from the
    /// node's own address, in both backends; not in IPv6, whose packets the
    /// underlay TAP never carries.
    #[test]
    fn underlay_tap_forward_accept() {
        let (n, own) = net();
        let r = Rules {
            masquerade: false,
            underlay_tap: UNDERLAY_TAP,
            ..ALL
        };
        assert_eq!(
            restore_input(&n, &own, r),
            "*filter
:VXMESH-FWD - [0:0]
-A VXMESH-FWD -s 10.244.0.0/16 -m comment --comment \"vxmesh forward\" -j ACCEPT
-A VXMESH-FWD -d 10.244.0.0/16 -m comment --comment \"vxmesh forward\" -j ACCEPT
-A VXMESH-FWD -s 192.168.200.1/32 -p udp -m udp --dport 8472 -m comment --comment \"vxmesh forward\" -j ACCEPT
COMMIT
"
        );
        assert!(nft_input(&n, &own, nft_of(r))
            .contains("\t\tip daddr 10.244.0.0/16 accept\n\t\tip saddr 192.168.200.1 udp dport 8472 accept\n\t}\n"));
        let n6: Subnet6 = "fd00:10:244::/56".parse().unwrap();
        let own6: Subnet6 = "fd00:10:244:3::/64".parse().unwrap();
        assert!(!restore_input6(&n6, &own6, r).contains("udp"));
        assert!(!nft_input6(&n6, &own6, nft_of(r)).contains("udp"));
        // Without the FORWARD accepts (--iptables-forward-rules=false), none.
        let off = Rules {
            forward: false,
            ..r
        };
        assert_eq!(restore_input(&n, &own, off), "");
        // With --vxlan-notrack the forwarded packets are untracked where they enter,
        // at PREROUTING: iptables' one chain (hooked into PREROUTING and OUTPUT) has
        // the `-s` rule already; nftables' prerouting chain gets it too.
        let untracked = Rules {
            untrack: Some(UNTRACK),
            ..r
        };
        assert!(nft_input(&n, &own, nft_of(untracked)).contains(
            "\t\tip daddr 192.168.200.1 udp dport 8472 notrack\n\t\tip saddr 192.168.200.1 udp dport 8472 notrack\n\t}\n\tchain notrack_out"
        ));
        let plain = Rules {
            underlay_tap: None,
            ..untracked
        };
        assert!(!nft_input(&n, &own, nft_of(plain))
            .contains("ip saddr 192.168.200.1 udp dport 8472 notrack\n\t}\n\tchain notrack_out"));
    }

    const UNTRACK: Untrack = Untrack {
        local_ip: Some(Ipv4Addr::new(192, 168, 200, 1)),
        local_ipv6: None,
        port: 8472,
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

    /// IPv6: the same rules for the IPv6 Network and subnet, IPv6's multicast range kept
    /// out of the masquerade, no notrack part without an IPv6 device's address.
    #[test]
    fn ipv6_rules_mirror_the_ipv4_ones() {
        let n6: Subnet6 = "fd00:10:244::/56".parse().unwrap();
        let own6: Subnet6 = "fd00:10:244:3::/64".parse().unwrap();
        let with_untrack = Rules {
            untrack: Some(UNTRACK),
            ..ALL
        };
        let r = restore_input6(&n6, &own6, with_untrack);
        assert!(r.contains("-A VXMESH-POSTRTG -s fd00:10:244::/56 -d fd00:10:244::/56 -m comment --comment \"vxmesh masq\" -j RETURN"), "{r}");
        assert!(
            r.contains("! -s fd00:10:244::/56 -d fd00:10:244:3::/64"),
            "{r}"
        );
        assert!(r.contains("-s fd00:10:244::/56 ! -d ff00::/8"), "{r}");
        assert!(r.contains("-A VXMESH-FWD -d fd00:10:244::/56"), "{r}");
        assert!(!r.contains("224.0.0.0/4") && !r.contains("*raw"), "{r}");
        assert_eq!(r.matches("COMMIT").count(), 2);
        let nft = nft_input6(&n6, &own6, with_untrack);
        assert!(
            nft.starts_with("table ip6 vxmesh {\n}\ndelete table ip6 vxmesh\n"),
            "{nft}"
        );
        assert!(
            nft.contains(
                "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random"
            ),
            "{nft}"
        );
        assert!(nft.contains("ip6 daddr fd00:10:244::/56 accept"), "{nft}");
        assert!(
            !nft.contains("notrack") && !nft.contains(" ip saddr"),
            "{nft}"
        );
        // The IPv4 input is unchanged by the family split.
        let (n, own) = net();
        assert!(nft_input(&n, &own, ALL)
            .contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"));
        assert!(nft_has_table_in(Family::V6, "table ip6 vxmesh\n"));
        assert!(!nft_has_table("table ip6 vxmesh\n"));
    }

    /// `--vxlan-notrack` on a node with the IPv6 device: the IPv6 family's raw part (or
    /// nftables chains) for its PublicIPv6; the IPv4 part keeps the IPv4 address.
    #[test]
    fn ipv6_notrack_untracks_the_ipv6_devices_vxlan() {
        let n6: Subnet6 = "fd00:10:244::/56".parse().unwrap();
        let own6: Subnet6 = "fd00:10:244:3::/64".parse().unwrap();
        let rules = Rules {
            untrack: Some(Untrack {
                local_ipv6: Some("fd00:64::1".parse().unwrap()),
                ..UNTRACK
            }),
            ..ALL
        };
        let r = restore_input6(&n6, &own6, rules);
        let t = r#"-m comment --comment "vxmesh notrack" -j CT --notrack"#;
        assert!(
            r.ends_with(&format!(
                "*raw\n:VXMESH-NOTRACK - [0:0]\n\
                 -A VXMESH-NOTRACK -d fd00:64::1/128 -p udp -m udp --dport 8472 {t}\n\
                 -A VXMESH-NOTRACK -s fd00:64::1/128 -p udp -m udp --dport 8472 {t}\n\
                 COMMIT\n"
            )),
            "{r}"
        );
        assert!(Family::V6.rules(rules).parts()[2].3);
        let nft = nft_input6(&n6, &own6, rules);
        assert!(
            nft.contains("ip6 daddr fd00:64::1 udp dport 8472 notrack")
                && nft.contains("ip6 saddr fd00:64::1 udp dport 8472 notrack"),
            "{nft}"
        );
        let (n, own) = net();
        let r4 = restore_input(&n, &own, rules);
        assert!(
            r4.contains("-d 192.168.200.1/32 -p udp") && !r4.contains("fd00"),
            "{r4}"
        );
        // Without the IPv6 address the IPv6 family has no notrack part at all.
        assert!(
            !Family::V6
                .rules(Rules {
                    untrack: Some(UNTRACK),
                    ..ALL
                })
                .parts()[2]
                .3
        );
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
            ..ALL
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

    const NFT: Rules = Rules {
        backend: Backend::Nftables,
        ..ALL
    };

    #[test]
    fn nft_input_golden() {
        let (n, own) = net();
        assert_eq!(
            nft_input(&n, &own, NFT),
            "table ip vxmesh {
}
delete table ip vxmesh
table ip vxmesh {
\tchain postrtg {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
"
        );
    }

    #[test]
    fn nft_parts_follow_the_flags() {
        let (n, own) = net();
        let r = nft_input(
            &n,
            &own,
            Rules {
                masquerade: false,
                ..NFT
            },
        );
        assert!(!r.contains("postrtg") && !r.contains("masquerade"), "{r}");
        assert!(r.contains("chain forward"), "{r}");
        // The table is always replaced as a whole: a part that is off goes with it.
        assert!(
            r.starts_with("table ip vxmesh {\n}\ndelete table ip vxmesh\n"),
            "{r}"
        );
        let r = nft_input(
            &n,
            &own,
            Rules {
                forward: false,
                ..NFT
            },
        );
        assert!(
            r.contains("chain postrtg") && !r.contains("chain forward"),
            "{r}"
        );
        let r = nft_input(
            &n,
            &own,
            Rules {
                random_fully: false,
                ..NFT
            },
        );
        assert_eq!(r.matches(" masquerade\n").count(), 2, "{r}");
        assert!(!r.contains("fully-random"));
    }

    /// `nft list table ip vxmesh` (nftables 1.0.6, kernel 6.x) in a namespace after
    /// `nft -f - < nft_input(10.244.0.0/16, 10.244.3.0/24)`.
    const LISTED: &str = "table ip vxmesh {
\tchain postrtg {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
";

    #[test]
    fn nft_prints_what_we_wrote() {
        let (n, own) = net();
        let listed = nft_ours(LISTED);
        assert_eq!(listed.len(), 15, "{listed:#?}");
        // Everything after the add/delete preamble, line for line.
        let written = nft_ours(&nft_input(&n, &own, NFT));
        assert_eq!(listed, written[3..]);
        // `nft flush chain ip vxmesh postrtg`: its five rules are missing.
        let flushed: Vec<String> = listed
            .iter()
            .filter(|l| !l.contains("return") && !l.contains("masquerade"))
            .cloned()
            .collect();
        assert_eq!(drift(&listed, &flushed), Some((5, 0)));
        // The table deleted: everything is missing.
        assert_eq!(drift(&listed, &[]), Some((15, 0)));
    }

    /// One rule reduced to what it matches and does, read back from either backend's text.
    #[derive(Debug, PartialEq, Eq)]
    struct Matched {
        /// Matches kube-proxy's 0x4000 mark bit.
        mark: bool,
        /// (negated, prefix)
        src: Option<(bool, Subnet)>,
        dst: Option<(bool, Subnet)>,
        /// "return", "masquerade" or "accept"
        verdict: String,
        random_fully: bool,
        /// `udp dport`
        udp_dport: Option<u16>,
    }

    /// An `-A CHAIN ...` line of [`restore_input`]; `None` for any other line.
    fn read_iptables(line: &str) -> Option<(String, Matched)> {
        let mut t = line.split_whitespace();
        if t.next()? != "-A" {
            return None;
        }
        let chain = t.next()?.to_string();
        let mut m = Matched {
            mark: false,
            src: None,
            dst: None,
            verdict: String::new(),
            random_fully: false,
            udp_dport: None,
        };
        let mut neg = false;
        while let Some(w) = t.next() {
            match w {
                "!" => neg = true,
                "-s" => m.src = Some((std::mem::take(&mut neg), t.next()?.parse().ok()?)),
                "-d" => m.dst = Some((std::mem::take(&mut neg), t.next()?.parse().ok()?)),
                "-m" => match t.next()? {
                    "mark" => {
                        assert_eq!(t.next()?, "--mark");
                        assert_eq!(t.next()?, "0x4000/0x4000");
                        m.mark = true;
                    }
                    "udp" => {
                        assert_eq!(t.next()?, "--dport");
                        m.udp_dport = Some(t.next()?.parse().ok()?);
                    }
                    "comment" => {
                        assert_eq!(t.next()?, "--comment");
                        for c in t.by_ref() {
                            if c.ends_with('"') {
                                break;
                            }
                        }
                    }
                    other => panic!("unexpected match {other} in {line}"),
                },
                "-p" => assert_eq!(t.next()?, "udp"),
                "-j" => m.verdict = t.next()?.to_lowercase(),
                "--notrack" => {
                    assert_eq!(m.verdict, "ct");
                    m.verdict = "notrack".into();
                }
                "--random-fully" => m.random_fully = true,
                other => panic!("unexpected {other} in {line}"),
            }
        }
        Some((chain, m))
    }

    /// A rule line of [`nft_input`] (inside a chain); `None` for any other line.
    fn read_nft(line: &str) -> Option<Matched> {
        let line = line.trim();
        if line.starts_with("type ")
            || line.starts_with("delete ")
            || line.ends_with('{')
            || line == "}"
        {
            return None;
        }
        let mut m = Matched {
            mark: false,
            src: None,
            dst: None,
            verdict: String::new(),
            random_fully: false,
            udp_dport: None,
        };
        let mut t = line.split_whitespace().peekable();
        while let Some(w) = t.next() {
            match w {
                "meta" => {
                    let rest: Vec<&str> = t.by_ref().take(6).collect();
                    assert_eq!(
                        rest,
                        ["mark", "&", "0x00004000", "==", "0x00004000", "return"]
                    );
                    m.mark = true;
                    m.verdict = "return".into();
                }
                "ip" => {
                    let field = t.next()?;
                    let neg = t.next_if_eq(&"!=").is_some();
                    // nft prints a /32 as the bare address.
                    let text = t.next()?;
                    let text = if text.contains('/') {
                        text.to_string()
                    } else {
                        format!("{text}/32")
                    };
                    let prefix = Some((neg, text.parse().ok()?));
                    match field {
                        "saddr" => m.src = prefix,
                        "daddr" => m.dst = prefix,
                        other => panic!("unexpected ip {other} in {line}"),
                    }
                }
                "udp" => {
                    assert_eq!(t.next()?, "dport");
                    m.udp_dport = Some(t.next()?.parse().ok()?);
                }
                "return" | "masquerade" | "accept" | "notrack" => m.verdict = w.into(),
                "fully-random" => m.random_fully = true,
                other => panic!("unexpected {other} in {line}"),
            }
        }
        Some(m)
    }

    /// The two backends hold the same rules, in the same order, for every flag
    /// combination: the nftables rendering is the iptables one rule for rule.
    #[test]
    fn both_backends_render_the_same_rules() {
        let (n, own) = net();
        for masquerade in [false, true] {
            for random_fully in [false, true] {
                for (forward, untrack, underlay_tap) in [
                    (false, None, None),
                    (true, None, None),
                    (false, Some(UNTRACK), None),
                    (true, Some(UNTRACK), None),
                    (true, None, UNDERLAY_TAP),
                    (false, None, UNDERLAY_TAP),
                ] {
                    let rules = Rules {
                        masquerade,
                        random_fully,
                        forward,
                        untrack,
                        underlay_tap,
                        backend: Backend::Iptables,
                    };
                    let ipt: Vec<(String, Matched)> = restore_input(&n, &own, rules)
                        .lines()
                        .filter_map(read_iptables)
                        .collect();
                    let nft_text = nft_input(&n, &own, nft_of(rules));
                    let mut nft: Vec<(String, Matched)> = Vec::new();
                    let mut chain = String::new();
                    for line in nft_text.lines() {
                        if let Some(name) = line.trim().strip_prefix("chain ") {
                            chain = match name.trim_end_matches(" {") {
                                "postrtg" => NAT_CHAIN.into(),
                                "forward" => FWD_CHAIN.into(),
                                "notrack_pre" | "notrack_out" => RAW_CHAIN.into(),
                                other => panic!("unexpected chain {other}"),
                            };
                        } else if let Some(m) = read_nft(line) {
                            nft.push((chain.clone(), m));
                        }
                    }
                    // iptables hooks its one raw chain into PREROUTING and OUTPUT;
                    // nftables' two chains may both hold a rule iptables has once
                    // (the underlay TAP's source rule).
                    nft.dedup();
                    let want = 5 * usize::from(masquerade)
                        + 2 * usize::from(forward)
                        + usize::from(forward && underlay_tap.is_some())
                        + 2 * usize::from(untrack.is_some());
                    assert_eq!(ipt.len(), want, "{rules:?}");
                    assert_eq!(nft, ipt, "{rules:?}\n{nft_text}");
                }
            }
        }
    }

    fn nft_of(r: Rules) -> Rules {
        Rules {
            backend: Backend::Nftables,
            ..r
        }
    }

    #[test]
    fn nft_table_is_found_in_the_list() {
        assert!(nft_has_table("table ip filter\ntable ip vxmesh\n"));
        assert!(!nft_has_table("table ip filter\ntable ip vxmesh-old\n"));
        assert!(!nft_has_table("table inet vxmesh\n"));
        assert!(!nft_has_table(""));
    }

    /// `--vxlan-notrack` with masquerading off and no FORWARD rules: the raw table only,
    /// the exact text.
    #[test]
    fn untrack_rules_golden() {
        let (n, own) = net();
        let only = Rules {
            masquerade: false,
            forward: false,
            untrack: Some(UNTRACK),
            ..ALL
        };
        assert!(only.any());
        assert_eq!(
            restore_input(&n, &own, only),
            "*raw
:VXMESH-NOTRACK - [0:0]
-A VXMESH-NOTRACK -d 192.168.200.1/32 -p udp -m udp --dport 8472 -m comment --comment \"vxmesh notrack\" -j CT --notrack
-A VXMESH-NOTRACK -s 192.168.200.1/32 -p udp -m udp --dport 8472 -m comment --comment \"vxmesh notrack\" -j CT --notrack
COMMIT
"
        );
        assert_eq!(
            nft_input(&n, &own, nft_of(only)),
            "table ip vxmesh {
}
delete table ip vxmesh
table ip vxmesh {
\tchain notrack_pre {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr 192.168.200.1 udp dport 8472 notrack
\t}
\tchain notrack_out {
\t\ttype filter hook output priority raw; policy accept;
\t\tip saddr 192.168.200.1 udp dport 8472 notrack
\t}
}
"
        );
        // Off by default, and then no raw table at all.
        let r = restore_input(&n, &own, ALL);
        assert!(!r.contains("*raw") && !r.contains("notrack"), "{r}");
        assert_eq!(Rules::vxmeshd_default(Backend::Iptables), ALL);
        // With everything on, the raw table comes after the other two, each committed.
        let r = restore_input(
            &n,
            &own,
            Rules {
                untrack: Some(UNTRACK),
                ..ALL
            },
        );
        assert_eq!(r.matches("COMMIT").count(), 3, "{r}");
        assert!(r.find("*filter").unwrap() < r.find("*raw").unwrap(), "{r}");
    }

    /// `iptables-save -t raw` (v1.8.9, nf_tables) in a namespace after
    /// `iptables-restore --noflush` of the raw part for 192.168.200.1 and the two hooks.
    const SAVED_RAW: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Mon Nov 30 06:05:26 2026
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:VXMESH-NOTRACK - [0:0]
-A PREROUTING -m comment --comment vxmesh -j VXMESH-NOTRACK
-A OUTPUT -m comment --comment vxmesh -j VXMESH-NOTRACK
-A VXMESH-NOTRACK -d 192.168.200.1/32 -p udp -m udp --dport 8472 -m comment --comment \"vxmesh notrack\" -j CT --notrack
-A VXMESH-NOTRACK -s 192.168.200.1/32 -p udp -m udp --dport 8472 -m comment --comment \"vxmesh notrack\" -j CT --notrack
COMMIT
# Completed on Mon Nov 30 06:05:26 2026
";

    #[test]
    fn untrack_lines_in_iptables_save() {
        let lines = ours(SAVED_RAW);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        let (n, own) = net();
        let written = restore_input(
            &n,
            &own,
            Rules {
                untrack: Some(UNTRACK),
                ..ALL
            },
        );
        for l in written
            .lines()
            .filter(|l| l.starts_with("-A VXMESH-NOTRACK"))
        {
            assert!(lines.iter().any(|x| x == l), "{l}");
        }
        // A deleted OUTPUT hook is a drift to repair.
        let mut hook_gone = lines.clone();
        hook_gone.remove(1);
        assert_eq!(drift(&lines, &hook_gone), Some((1, 0)));
    }

    /// `nft list table ip vxmesh` (nftables 1.0.6) of the two raw chains, as written by
    /// `nft -f` in a namespace.
    const LISTED_RAW: &str = "table ip vxmesh {
\tchain notrack_pre {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr 192.168.200.1 udp dport 8472 notrack
\t}

\tchain notrack_out {
\t\ttype filter hook output priority raw; policy accept;
\t\tip saddr 192.168.200.1 udp dport 8472 notrack
\t}
}
";

    #[test]
    fn nft_prints_the_untrack_chains_we_wrote() {
        let (n, own) = net();
        let only = Rules {
            masquerade: false,
            forward: false,
            untrack: Some(UNTRACK),
            backend: Backend::Nftables,
            ..ALL
        };
        assert_eq!(
            nft_ours(LISTED_RAW),
            nft_ours(&nft_input(&n, &own, only))[3..]
        );
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
