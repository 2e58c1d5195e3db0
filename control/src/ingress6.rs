//! The IPv6 device's ingress check (issue 14, docs/decisions/0031): on the userspace
//! dataplane, VXLAN over IPv6 arriving for `flannel-v6.<VNI>` passes the same inner
//! address check the packet threads apply to IPv4 (decision 0023), as netfilter rules
//! on the outer datagram, since the kernel's vxlan driver decapsulates it.
//!
//! A datagram to the VXLAN port over IPv6 (the IPv6 device's socket; the threads' is
//! IPv4) passes when
//! - its inner frame is IPv6 (not IPv4, ARP or a VLAN tag, which the device would pass
//!   on),
//! - the inner destination lies in this node's IPv6 subnet (nothing is relayed), and
//! - the outer source is a peer's PublicIPv6 and the inner source lies in that peer's
//!   IPv6 subnet, or outside the IPv6 Network (traffic a peer forwards for hosts
//!   outside the cluster, as decision 0023 lets through).
//!
//! Anything else is dropped and counted by reason, with the IPv4 path's names
//! ([`Drops6`]): `ingress_malformed` (too short to hold the headers read),
//! `unknown_source` (not from a peer's PublicIPv6) and `inner_address` (from a peer,
//! but not IPv6 from its subnet or from outside the Network to this node's subnet),
//! counted per peer; each drop rule's comment names its reason (and peer), so the
//! counts are read back from the table itself (`nft -j list table ip6 vxmesh-vxlan6`). A rule
//! that lets a datagram through matches only when every byte it reads is in the
//! packet, so a short datagram meets the drop (fail closed). The inner headers are read
//! from the UDP header on, wherever extension headers put it; of a fragmented datagram
//! only the first fragment has a UDP header to match, and it passes only when it holds
//! the inner headers the check read (otherwise it is dropped and the datagram is never
//! reassembled).
//!
//! In nftables whatever the masquerade rules' backend (`EnableNFTables`): `table ip6
//! vxmesh-vxlan6`, a filter chain at the input hook for UDP to the VXLAN port, the inner
//! headers read with raw payload expressions, and the outer source looked up in a
//! verdict map that goes to the peer's own chain — one hash lookup and at most four
//! rules per datagram, however many peers. ip6tables has no such lookup: its rules run
//! in turn, and with 1,000 peers ahead of the one that matched, IPv6 throughput fell to
//! a third here (decision 0031).
//!
//! Kept in place like the masquerade rules ([`ensure`], every `--iptables-resync`),
//! re-applied when a peer comes, goes or moves. Left in place when the agent stops
//! (its successor re-applies them); `vxmeshctl cleanup-iptables` removes them, and an
//! agent that does not run the check (the kernel dataplane, flanneld's behaviour; a
//! network without IPv6) removes them at its start.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use vxmesh_dataplane::counters::DropReason;

use crate::masq::{self, Ensured, MasqError, Snapshot};
use crate::subnet6::Subnet6;

/// Our nftables table (family `ip6`).
pub const NFT_TABLE: &str = "vxmesh-vxlan6";

/// Offsets from the UDP header, in bits, for nftables' `@th`: UDP (8) + VXLAN (8)
/// + Ethernet (14) bytes to the inner IPv6 header, whose source is 8 bytes in.
const TH_ETHERTYPE: usize = 28 * 8;
const TH_INNER_SRC: usize = 38 * 8;
const TH_INNER_DST: usize = 54 * 8;
/// The shortest UDP datagram holding every byte the check reads: UDP, VXLAN,
/// Ethernet and an IPv6 header.
const MIN_UDP_LEN: usize = 8 + 8 + 14 + 40;

/// The drop rules' reasons, as their comments and the metrics' labels name them:
/// the IPv4 path's names.
const MALFORMED: &str = DropReason::IngressMalformed.as_str();
const UNKNOWN_SOURCE: &str = DropReason::UnknownSource.as_str();
const INNER_ADDRESS: &str = DropReason::InnerAddress.as_str();

/// What the check lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check6 {
    /// The VXLAN UDP port (`Backend.Port`).
    pub port: u16,
    /// The cluster's IPv6 Network.
    pub network: Subnet6,
    /// This node's IPv6 subnet: every inner destination lies in it.
    pub own: Subnet6,
    /// Each peer's PublicIPv6 and IPv6 subnet (in the peer table's order).
    pub peers: Vec<(Ipv6Addr, Subnet6)>,
}

/// What the check dropped, by reason; the `inner_address` drops by the peer that
/// sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops6 {
    /// Too short to hold the headers the check reads.
    pub malformed: u64,
    /// Not from a peer's PublicIPv6.
    pub unknown_source: u64,
    /// From a peer (its PublicIPv6, with the IPv6 subnet it had), but not IPv6 from
    /// its subnet or from outside the Network to this node's subnet; only the peers
    /// that sent any.
    pub inner_address: BTreeMap<Ipv6Addr, (Subnet6, u64)>,
}

impl Drops6 {
    /// Every drop, whatever the reason.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// The drops by reason (the three always, in this order).
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        let inner = self.inner_address.values().map(|(_, n)| n).sum();
        [
            (MALFORMED, self.malformed),
            (UNKNOWN_SOURCE, self.unknown_source),
            (INNER_ADDRESS, inner),
        ]
    }

    /// Adds `other`'s counts (a replaced table's to the ones kept); a peer's subnet
    /// is `other`'s when both name one.
    pub fn add(&mut self, other: &Drops6) {
        self.malformed = self.malformed.saturating_add(other.malformed);
        self.unknown_source = self.unknown_source.saturating_add(other.unknown_source);
        for (ip, (subnet, n)) in &other.inner_address {
            self.add_peer(*ip, *subnet, *n);
        }
    }

    /// Adds `n` inner-address drops of the peer `ip`, whose subnet is now `subnet`.
    fn add_peer(&mut self, ip: Ipv6Addr, subnet: Subnet6, n: u64) {
        let e = self.inner_address.entry(ip).or_insert((subnet, 0));
        *e = (subnet, e.1.saturating_add(n));
    }

    /// Counts `packets` dropped by the rule whose comment is `comment`; a comment
    /// that is none of ours is ignored.
    fn count(&mut self, comment: &str, packets: u64) {
        let mut words = comment.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(MALFORMED), None, _, _) => {
                self.malformed = self.malformed.saturating_add(packets);
            }
            (Some(UNKNOWN_SOURCE), None, _, _) => {
                self.unknown_source = self.unknown_source.saturating_add(packets);
            }
            // A peer without drops is not kept (a table holds every peer's counter).
            (Some(INNER_ADDRESS), Some(_), Some(_), None) if packets == 0 => {}
            (Some(INNER_ADDRESS), Some(ip), Some(subnet), None) => {
                if let (Ok(ip), Ok(subnet)) = (ip.parse(), subnet.parse()) {
                    self.add_peer(ip, subnet, packets);
                }
            }
            _ => {}
        }
    }
}

/// `@th,<bit>,<len> 0x…` for `subnet`'s prefix (empty for `::/0`), with `op` (`""` or
/// `"!= "`).
fn nft_prefix(bit: usize, subnet: &Subnet6, op: &str) -> String {
    let len = subnet.prefix_len();
    if len == 0 {
        return String::new();
    }
    let v = u128::from(subnet.addr()) >> (128 - u32::from(len));
    let digits = usize::from(len).div_ceil(4);
    format!("@th,{bit},{len} {op}0x{v:0digits$x} ")
}

/// The `nft -f` input that replaces our table, in one transaction: creating the table
/// first makes the delete succeed when it is absent.
pub fn nft_input(c: &Check6) -> String {
    let mut s = format!(
        "table ip6 {NFT_TABLE} {{\n}}\ndelete table ip6 {NFT_TABLE}\ntable ip6 {NFT_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tudp dport {} jump check\n\
         \t}}\n\
         \tchain check {{\n\
         \t\tudp length < {MIN_UDP_LEN} counter drop comment \"{MALFORMED}\"\n",
        c.port
    );
    // From a peer: on to that peer's chain (`goto`: its `return` ends the check).
    // Anything else is dropped.
    if !c.peers.is_empty() {
        let map: Vec<String> = c
            .peers
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| format!("{ip} : goto peer-{i}"))
            .collect();
        s.push_str(&format!("\t\tip6 saddr vmap {{ {} }}\n", map.join(", ")));
    }
    s.push_str(&format!(
        "\t\tcounter drop comment \"{UNKNOWN_SOURCE}\"\n\t}}\n"
    ));
    // IPv6 inside, to this node's subnet, from the peer's subnet or from outside the
    // Network; anything else (or too short to read) is dropped, counted for the peer.
    let to_us = format!(
        "@th,{TH_ETHERTYPE},16 0x86dd {}",
        nft_prefix(TH_INNER_DST, &c.own, "")
    );
    let outside = nft_prefix(TH_INNER_SRC, &c.network, "!= ");
    for (i, (ip, subnet)) in c.peers.iter().enumerate() {
        s.push_str(&format!(
            "\tchain peer-{i} {{\n\t\t{to_us}{}return\n",
            nft_prefix(TH_INNER_SRC, subnet, "")
        ));
        if !outside.is_empty() {
            s.push_str(&format!("\t\t{to_us}{outside}return\n"));
        }
        s.push_str(&format!(
            "\t\tcounter drop comment \"{INNER_ADDRESS} {ip} {subnet}\"\n\t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// Installs or refreshes the check.
pub fn apply(c: &Check6) -> Result<(), MasqError> {
    let out = masq::nft(&["-f", "-"], Some(&nft_input(c)))?;
    if !out.status.success() {
        return Err(masq::failed("nft -f", &out));
    }
    Ok(())
}

/// Our check as nftables prints it now, without the drop counters' values (empty when
/// the table is gone).
pub fn current() -> Result<Vec<String>, MasqError> {
    let out = masq::nft(&["-s", "list", "table", "ip6", NFT_TABLE], None)?;
    if out.status.success() {
        return Ok(masq::nft_ours(&String::from_utf8_lossy(&out.stdout)));
    }
    if !masq::nft_table_listed("ip6", NFT_TABLE)? {
        return Ok(Vec::new());
    }
    Err(masq::failed(
        format!("nft list table ip6 {NFT_TABLE}"),
        &out,
    ))
}

/// What the check has dropped since its table was last made, read from its drop
/// rules' counters and comments in `nft -j list` output (`None` when the text is not
/// nftables' JSON). Rules without one of our comments are not counted.
pub fn dropped_in(json: &str) -> Option<Drops6> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let items = v.get("nftables")?.as_array()?;
    let mut d = Drops6::default();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let Some(comment) = rule.get("comment").and_then(|c| c.as_str()) else {
            continue;
        };
        let packets: u64 = rule
            .get("expr")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
            .sum();
        d.count(comment, packets);
    }
    Some(d)
}

/// [`dropped_in`] of the table as it is now; `Ok(None)` when it is not there.
pub fn dropped() -> Result<Option<Drops6>, MasqError> {
    let out = masq::nft(&["-j", "list", "table", "ip6", NFT_TABLE], None)?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(dropped_in(&String::from_utf8_lossy(&out.stdout)))
}

/// Applies when nothing was applied yet or the check changed (a peer came, went or
/// moved; the subnet changed), else compares our lines with the last snapshot and
/// applies again if they drifted.
pub fn ensure(c: &Check6, last: &mut Option<Snapshot<Check6>>) -> Result<Ensured, MasqError> {
    let outcome = match last {
        Some(s) if s.own == *c => match masq::drift(&s.lines, &current()?) {
            None => return Ok(Ensured::Intact),
            Some((missing, extra)) => Ensured::Restored { missing, extra },
        },
        _ => Ensured::Applied,
    };
    *last = None;
    apply(c)?;
    *last = Some(Snapshot {
        own: c.clone(),
        lines: current()?,
    });
    Ok(outcome)
}

/// Removes the check; absent (or no `nft` installed) is fine.
pub fn remove() -> Result<(), MasqError> {
    match masq::nft_delete_table("ip6", NFT_TABLE) {
        Err(MasqError::Spawn { .. }) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::subnet6::mask6;

    fn s6(s: &str) -> Subnet6 {
        s.parse().unwrap()
    }

    fn check() -> Check6 {
        Check6 {
            port: 8472,
            network: s6("fd00:10:244::/56"),
            own: s6("fd00:10:244:1::/64"),
            peers: vec![
                ("fd00:200::2".parse().unwrap(), s6("fd00:10:244:2::/64")),
                ("fd00:200::3".parse().unwrap(), s6("fd00:10:244:3::/64")),
            ],
        }
    }

    #[test]
    fn nft_golden() {
        let want = "table ip6 vxmesh-vxlan6 {\n}\ndelete table ip6 vxmesh-vxlan6\ntable ip6 vxmesh-vxlan6 {\n\
                    \tchain input {\n\
                    \t\ttype filter hook input priority filter; policy accept;\n\
                    \t\tudp dport 8472 jump check\n\
                    \t}\n\
                    \tchain check {\n\
                    \t\tudp length < 70 counter drop comment \"ingress_malformed\"\n\
                    \t\tip6 saddr vmap { fd00:200::2 : goto peer-0, fd00:200::3 : goto peer-1 }\n\
                    \t\tcounter drop comment \"unknown_source\"\n\
                    \t}\n\
                    \tchain peer-0 {\n\
                    \t\t@th,224,16 0x86dd @th,432,64 0xfd00001002440001 @th,304,64 0xfd00001002440002 return\n\
                    \t\t@th,224,16 0x86dd @th,432,64 0xfd00001002440001 @th,304,56 != 0xfd000010024400 return\n\
                    \t\tcounter drop comment \"inner_address fd00:200::2 fd00:10:244:2::/64\"\n\
                    \t}\n\
                    \tchain peer-1 {\n\
                    \t\t@th,224,16 0x86dd @th,432,64 0xfd00001002440001 @th,304,64 0xfd00001002440003 return\n\
                    \t\t@th,224,16 0x86dd @th,432,64 0xfd00001002440001 @th,304,56 != 0xfd000010024400 return\n\
                    \t\tcounter drop comment \"inner_address fd00:200::3 fd00:10:244:3::/64\"\n\
                    \t}\n\
                    }\n";
        assert_eq!(nft_input(&check()), want);
    }

    #[test]
    fn no_peers_drop_everything() {
        let c = Check6 {
            peers: Vec::new(),
            ..check()
        };
        let nft = nft_input(&c);
        assert!(!nft.contains("saddr") && !nft.contains("return"), "{nft}");
        assert!(
            nft.ends_with("\t\tcounter drop comment \"unknown_source\"\n\t}\n}\n"),
            "{nft}"
        );
    }

    #[test]
    fn odd_prefix_lengths_render_their_bits() {
        // A /60 subnet in a /48 network: 15 and 12 hex digits, the bits as written.
        let c = Check6 {
            port: 4789,
            network: s6("fd00:10:244::/48"),
            own: s6("fd00:10:244:10::/60"),
            peers: vec![("2001:db8::7".parse().unwrap(), s6("fd00:10:244:20::/60"))],
        };
        let nft = nft_input(&c);
        assert!(nft.contains("udp dport 4789 jump check"), "{nft}");
        assert!(
            nft.contains("\t\tip6 saddr vmap { 2001:db8::7 : goto peer-0 }\n"),
            "{nft}"
        );
        assert!(
            nft.contains(
                "\t\t@th,224,16 0x86dd @th,432,60 0xfd0000100244001 @th,304,60 0xfd0000100244002 return\n"
            ),
            "{nft}"
        );
        assert!(
            nft.contains("@th,432,60 0xfd0000100244001 @th,304,48 != 0xfd0000100244 return\n"),
            "{nft}"
        );
        // A Network of ::/0 has no outside: the peer's own subnet alone.
        let all = Check6 {
            network: s6("::/0"),
            ..c
        };
        assert_eq!(nft_input(&all).matches("return").count(), 1);
    }

    #[test]
    fn drops_are_read_by_reason_and_peer_from_nfts_json() {
        // `nft -j list table ip6 vxmesh-vxlan6` (nftables 1.0.6), trimmed: a rule
        // without a comment (a table of an earlier build) and one with a comment
        // not ours are not counted.
        let rule = |chain: &str, comment: Option<&str>, packets: u64| {
            let comment = comment.map_or(String::new(), |c| format!(r#""comment": "{c}","#));
            format!(
                r#"{{"rule": {{"family": "ip6", "table": "vxmesh-vxlan6", "chain": "{chain}", "handle": 5, {comment}
                  "expr": [{{"counter": {{"packets": {packets}, "bytes": 900}}}}, {{"drop": null}}]}}}}"#
            )
        };
        let json = format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
            {{"table": {{"family": "ip6", "name": "vxmesh-vxlan6", "handle": 1}}}},
            {}, {}, {},
            {{"rule": {{"family": "ip6", "table": "vxmesh-vxlan6", "chain": "peer-0", "handle": 8,
              "expr": [{{"match": {{"op": "==", "left": {{"payload": {{"base": "th", "offset": 304, "len": 64}}}},
                "right": 1}}}}, {{"return": null}}]}}}},
            {}, {}, {}, {}]}}"#,
            rule("check", Some("ingress_malformed"), 2),
            rule("check", Some("unknown_source"), 7),
            rule("check", None, 100),
            rule(
                "peer-0",
                Some("inner_address fd00:200::2 fd00:10:244:2::/64"),
                3
            ),
            rule(
                "peer-1",
                Some("inner_address fd00:200::3 fd00:10:244:3::/64"),
                0
            ),
            rule("peer-2", Some("inner_address fd00:200::4 not-a-subnet"), 50),
            rule("check", Some("someone else's"), 60),
        );
        let d = dropped_in(&json).unwrap();
        assert_eq!(
            d.by_reason(),
            [
                ("ingress_malformed", 2),
                ("unknown_source", 7),
                ("inner_address", 3)
            ]
        );
        assert_eq!(d.total(), 12);
        let peer = |ip: &str| d.inner_address[&ip.parse().unwrap()];
        assert_eq!(peer("fd00:200::2"), (s6("fd00:10:244:2::/64"), 3));
        // A peer without drops is not listed; a comment that names no subnet is not
        // counted.
        assert_eq!(d.inner_address.len(), 1);
        assert_eq!(dropped_in(r#"{"nftables": []}"#), Some(Drops6::default()));
        assert_eq!(dropped_in("table ip6 vxmesh-vxlan6 {"), None);
    }

    #[test]
    fn drops_of_a_replaced_table_add_up() {
        let mut kept = Drops6 {
            malformed: 1,
            unknown_source: 2,
            inner_address: BTreeMap::from([(
                "fd00:200::2".parse().unwrap(),
                (s6("fd00:10:244:2::/64"), 3),
            )]),
        };
        let now = Drops6 {
            malformed: 0,
            unknown_source: 5,
            inner_address: BTreeMap::from([
                (
                    "fd00:200::2".parse().unwrap(),
                    (s6("fd00:10:244:9::/64"), 1),
                ),
                (
                    "fd00:200::3".parse().unwrap(),
                    (s6("fd00:10:244:3::/64"), 4),
                ),
            ]),
        };
        kept.add(&now);
        assert_eq!(
            kept.by_reason(),
            [
                ("ingress_malformed", 1),
                ("unknown_source", 7),
                ("inner_address", 8)
            ]
        );
        // The peer's subnet is the latest table's.
        assert_eq!(
            kept.inner_address[&"fd00:200::2".parse().unwrap()],
            (s6("fd00:10:244:9::/64"), 4)
        );
    }

    /// What nftables would decide for `expr` (`@th,<bit>,<len> 0x…`) on `th`.
    fn nft_says(expr: &str, th: &[u8]) -> bool {
        let (raw, value) = expr.trim().split_once(' ').unwrap();
        let mut it = raw.trim_start_matches("@th,").split(',');
        let bit: usize = it.next().unwrap().parse().unwrap();
        let len: u32 = it.next().unwrap().parse().unwrap();
        let want = u128::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
        let got = u128::from_be_bytes(th[bit / 8..bit / 8 + 16].try_into().unwrap());
        got >> (128 - len) == want
    }

    proptest::proptest! {
        /// A prefix's raw payload expression matches an address exactly when the subnet
        /// holds it (for every length, 0 to 128).
        #[test]
        fn prefix_expression_matches_what_the_subnet_holds(
            net in proptest::prelude::any::<u128>(),
            len in 0u8..=128,
            host in proptest::prelude::any::<u128>(),
            flip in 0u32..128,
        ) {
            let subnet = Subnet6::new(Ipv6Addr::from(net), len).unwrap();
            // An address inside, one outside (when there is an outside: one bit of the
            // prefix flipped), and an arbitrary one.
            let inside = u128::from(subnet.addr()) | (host & !mask6(len));
            let mut candidates = vec![inside, host];
            if len > 0 {
                candidates.push(inside ^ (1u128 << (127 - flip % u32::from(len))));
            }
            let expr = nft_prefix(TH_INNER_SRC, &subnet, "");
            for a in candidates {
                let addr = Ipv6Addr::from(a);
                let mut th = vec![0u8; TH_INNER_SRC / 8];
                th.extend(addr.octets());
                let says = expr.is_empty() || nft_says(&expr, &th);
                proptest::prop_assert_eq!(says, subnet.contains(addr));
            }
        }
    }
}
