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
//! Anything else is dropped and counted (`nft list table ip6 vxmesh-vxlan6`). A rule
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
//! verdict map that goes to the peer's own chain — one hash lookup and at most two
//! rules per datagram, however many peers. ip6tables has no such lookup: its rules run
//! in turn, and with 1,000 peers ahead of the one that matched, IPv6 throughput fell to
//! a third here (decision 0031).
//!
//! Kept in place like the masquerade rules ([`ensure`], every `--iptables-resync`),
//! re-applied when a peer comes, goes or moves. Left in place when the agent stops
//! (its successor re-applies them); `vxmeshctl cleanup-iptables` removes them, and an
//! agent that does not run the check (the kernel dataplane, flanneld's behaviour; a
//! network without IPv6) removes them at its start.

use std::net::Ipv6Addr;

use crate::masq::{self, Ensured, MasqError, Snapshot};
use crate::subnet6::Subnet6;

/// Our nftables table (family `ip6`).
pub const NFT_TABLE: &str = "vxmesh-vxlan6";

/// Offsets from the UDP header, in bits, for nftables' `@th`: UDP (8) + VXLAN (8)
/// + Ethernet (14) bytes to the inner IPv6 header, whose source is 8 bytes in.
const TH_ETHERTYPE: usize = 28 * 8;
const TH_INNER_SRC: usize = 38 * 8;
const TH_INNER_DST: usize = 54 * 8;

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
    let own = nft_prefix(TH_INNER_DST, &c.own, "");
    let mut s = format!(
        "table ip6 {NFT_TABLE} {{\n}}\ndelete table ip6 {NFT_TABLE}\ntable ip6 {NFT_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tudp dport {} jump check\n\
         \t}}\n\
         \tchain check {{\n",
        c.port
    );
    // IPv6 inside, to this node's subnet, from a peer: on to that peer's chain (`goto`:
    // its `return` ends the check). Anything else, or too short to read, is dropped.
    if !c.peers.is_empty() {
        let map: Vec<String> = c
            .peers
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| format!("{ip} : goto peer-{i}"))
            .collect();
        s.push_str(&format!(
            "\t\t@th,{TH_ETHERTYPE},16 0x86dd {own}ip6 saddr vmap {{ {} }}\n",
            map.join(", ")
        ));
    }
    s.push_str("\t\tcounter drop\n\t}\n");
    let outside = nft_prefix(TH_INNER_SRC, &c.network, "!= ");
    for (i, (_, subnet)) in c.peers.iter().enumerate() {
        s.push_str(&format!(
            "\tchain peer-{i} {{\n\t\t{}return\n",
            nft_prefix(TH_INNER_SRC, subnet, "")
        ));
        if !outside.is_empty() {
            s.push_str(&format!("\t\t{outside}return\n"));
        }
        s.push_str("\t\tcounter drop\n\t}\n");
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

/// The packets the check has dropped since its table was last made: the sum of its
/// rules' counters in `nft -j list` output (`None` when the text is not nftables' JSON).
pub fn dropped_in(json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let items = v.get("nftables")?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|i| i.get("rule")?.get("expr")?.as_array())
            .flatten()
            .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
            .sum(),
    )
}

/// [`dropped_in`] of the table as it is now; `Ok(None)` when it is not there.
pub fn dropped() -> Result<Option<u64>, MasqError> {
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
                    \t\t@th,224,16 0x86dd @th,432,64 0xfd00001002440001 ip6 saddr vmap { fd00:200::2 : goto peer-0, fd00:200::3 : goto peer-1 }\n\
                    \t\tcounter drop\n\
                    \t}\n\
                    \tchain peer-0 {\n\
                    \t\t@th,304,64 0xfd00001002440002 return\n\
                    \t\t@th,304,56 != 0xfd000010024400 return\n\
                    \t\tcounter drop\n\
                    \t}\n\
                    \tchain peer-1 {\n\
                    \t\t@th,304,64 0xfd00001002440003 return\n\
                    \t\t@th,304,56 != 0xfd000010024400 return\n\
                    \t\tcounter drop\n\
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
            nft.ends_with("\tchain check {\n\t\tcounter drop\n\t}\n}\n"),
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
            nft.contains(
                "@th,432,60 0xfd0000100244001 ip6 saddr vmap { 2001:db8::7 : goto peer-0 }"
            ),
            "{nft}"
        );
        assert!(
            nft.contains("\t\t@th,304,60 0xfd0000100244002 return\n"),
            "{nft}"
        );
        assert!(
            nft.contains("\t\t@th,304,48 != 0xfd0000100244 return\n"),
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
    fn drops_are_summed_from_nfts_json() {
        // `nft -j list table ip6 vxmesh-vxlan6` (nftables 1.0.6), trimmed.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip6", "name": "vxmesh-vxlan6", "handle": 1}},
            {"rule": {"family": "ip6", "table": "vxmesh-vxlan6", "chain": "check", "handle": 5,
              "expr": [{"counter": {"packets": 7, "bytes": 900}}, {"drop": null}]}},
            {"rule": {"family": "ip6", "table": "vxmesh-vxlan6", "chain": "peer-0", "handle": 8,
              "expr": [{"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 304, "len": 64}},
                "right": 1}}, {"return": null}]}},
            {"rule": {"family": "ip6", "table": "vxmesh-vxlan6", "chain": "peer-0", "handle": 9,
              "expr": [{"counter": {"packets": 3, "bytes": 300}}, {"drop": null}]}}]}"#;
        assert_eq!(dropped_in(json), Some(10));
        assert_eq!(dropped_in(r#"{"nftables": []}"#), Some(0));
        assert_eq!(dropped_in("table ip6 vxmesh-vxlan6 {"), None);
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
