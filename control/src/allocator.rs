//! Which subnet to claim, decided from a listing of the registry (no I/O).
//!
//! Order, as flannel does it, and why:
//! 1. a lease that already carries this node's PublicIP and fits the config — the
//!    node restarted, keep its pods' addresses. A reservation (a key without an etcd
//!    lease, flannel's way of pinning a node's subnet) is preferred and stays one: it is
//!    held as it is, never put under a TTL ([`Claim::Reserved`]);
//! 2. the subnet recorded in this node's subnet file (`FLANNEL_SUBNET`), if still
//!    free — the lease expired while the node was away;
//! 3. free subnets of the pool SubnetMin..=SubnetMax in random order (seeded by the
//!    caller), so nodes starting together rarely race for the same one.
//!
//! A subnet is free when no lease key overlaps it: keys whose values do not parse
//! still occupy their subnet, and so do other nodes' reservations and keys of another
//! SubnetLen (a node from before a config change may still use one). Only a key that
//! covers the whole Network (`0.0.0.0-0`, the Network itself) occupies nothing: it can
//! be no node's subnet, no node routes it ([`crate::peers`] rejects it), and counting
//! it would let one stray key empty the pool. Every claim is then made by
//! compare-and-swap in etcd; a lost race just moves on to the next candidate.

use std::net::Ipv4Addr;

use crate::config::NetworkConfig;
use crate::lease::LeaseAttrs;
use crate::subnet::Subnet;

/// A lease found in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingLease {
    pub subnet: Subnet,
    /// `None` when the value does not parse.
    pub attrs: Option<LeaseAttrs>,
    /// etcd mod_revision of the key, for compare-and-swap.
    pub mod_revision: i64,
    /// The etcd lease the key is attached to; 0 for a reservation (no TTL).
    pub lease_id: i64,
}

/// One attempt the lease machine should make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Take over our own existing lease, if it is still at `mod_revision`.
    Reuse { subnet: Subnet, mod_revision: i64 },
    /// Hold our own reservation, if it is still at `mod_revision`: no etcd lease, no
    /// keepalive; the value is rewritten (still without a lease) only if it is not
    /// exactly ours.
    Reserved { subnet: Subnet, mod_revision: i64 },
    /// Create the key; succeeds only if it does not exist.
    Create { subnet: Subnet },
}

impl Claim {
    pub fn subnet(&self) -> Subnet {
        match self {
            Claim::Reuse { subnet, .. }
            | Claim::Reserved { subnet, .. }
            | Claim::Create { subnet } => *subnet,
        }
    }
}

/// The pool has no subnet left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free subnet in {pool}: all {leased} subnets of the pool are leased. Free one (`etcdctl del <prefix>/subnets/<subnet>-<len>` for a node that is gone), shorten --subnet-lease-ttl so dead nodes release theirs sooner, or widen Network/SubnetMin/SubnetMax")]
pub struct NoFreeSubnet {
    pub pool: String,
    pub leased: u64,
}

fn overlaps(a: &Subnet, b: &Subnet) -> bool {
    a.contains(b.addr()) || b.contains(a.addr())
}

/// splitmix64: a small, well-mixed PRNG so the core stays deterministic under test.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Plans up to `max` claims in the order they should be tried.
pub fn plan(
    cfg: &NetworkConfig,
    me: Ipv4Addr,
    leases: &[ExistingLease],
    hint: Option<Subnet>,
    mut seed: u64,
    max: usize,
) -> Result<Vec<Claim>, NoFreeSubnet> {
    let mut out = Vec::new();
    let mut mine: Vec<&ExistingLease> = leases
        .iter()
        .filter(|l| l.attrs.as_ref().is_some_and(|a| a.public_ip == me) && cfg.fits(&l.subnet))
        .collect();
    // A reservation first, then the lowest subnet.
    mine.sort_by_key(|l| (l.lease_id != 0, l.subnet));
    if let Some(l) = mine.first() {
        out.push(if l.lease_id == 0 {
            Claim::Reserved {
                subnet: l.subnet,
                mod_revision: l.mod_revision,
            }
        } else {
            Claim::Reuse {
                subnet: l.subnet,
                mod_revision: l.mod_revision,
            }
        });
    }
    let taken = |s: &Subnet| {
        leases
            .iter()
            .any(|l| !l.subnet.contains_subnet(&cfg.network) && overlaps(&l.subnet, s))
    };
    if let Some(h) = hint {
        if cfg.fits(&h) && !taken(&h) && !out.iter().any(|c| c.subnet() == h) {
            out.push(Claim::Create { subnet: h });
        }
    }
    let step = 1u32 << (32 - u32::from(cfg.subnet_len));
    let mut free = Vec::new();
    let mut leased = 0u64;
    let mut a = u32::from(cfg.subnet_min);
    let max_addr = u32::from(cfg.subnet_max);
    loop {
        if let Ok(s) = Subnet::new_exact(Ipv4Addr::from(a), cfg.subnet_len) {
            if taken(&s) {
                leased += 1;
            } else if Some(s) != hint {
                free.push(s);
            }
        }
        match a.checked_add(step) {
            Some(n) if n <= max_addr => a = n,
            _ => break,
        }
    }
    // Partial Fisher-Yates: the first `want` entries become a uniform random sample.
    let want = max.saturating_sub(out.len()).min(free.len());
    for i in 0..want {
        let j = i + (next(&mut seed) % (free.len() - i) as u64) as usize;
        free.swap(i, j);
    }
    out.extend(free[..want].iter().map(|&subnet| Claim::Create { subnet }));
    if out.is_empty() {
        return Err(NoFreeSubnet {
            pool: cfg.describe_pool(),
            leased,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse("/k", json.as_bytes()).unwrap()
    }

    fn lease(s: &str, ip: [u8; 4]) -> ExistingLease {
        ExistingLease {
            subnet: s.parse().unwrap(),
            attrs: Some(LeaseAttrs::vxlan(
                Ipv4Addr::from(ip),
                1,
                "0e:00:00:00:00:01".parse().unwrap(),
            )),
            mod_revision: 7,
            lease_id: 0x694d_8543_30fc_5110,
        }
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    #[test]
    fn reuses_my_lease_first() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = [
            lease("10.244.5.0/24", [192, 168, 1, 9]),
            lease("10.244.7.0/24", [192, 168, 1, 10]),
        ];
        let p = plan(
            &c,
            ME,
            &leases,
            Some("10.244.9.0/24".parse().unwrap()),
            1,
            5,
        )
        .unwrap();
        assert_eq!(
            p[0],
            Claim::Reuse {
                subnet: "10.244.7.0/24".parse().unwrap(),
                mod_revision: 7
            }
        );
        assert_eq!(
            p[1],
            Claim::Create {
                subnet: "10.244.9.0/24".parse().unwrap()
            }
        );
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn my_lease_that_no_longer_fits_is_not_reused() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let leases = [lease("10.244.7.0/24", [192, 168, 1, 10])];
        let p = plan(&c, ME, &leases, None, 1, 3).unwrap();
        assert!(p.iter().all(|c| matches!(c, Claim::Create { .. })));
        // and nothing overlapping the old /24 is offered
        let old: Subnet = "10.244.7.0/24".parse().unwrap();
        assert!(p.iter().all(|c| !old.contains(c.subnet().addr())));
    }

    #[test]
    fn hint_used_only_when_free_and_fitting() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let taken = [lease("10.244.9.0/24", [192, 168, 1, 9])];
        let p = plan(&c, ME, &taken, Some("10.244.9.0/24".parse().unwrap()), 1, 3).unwrap();
        assert!(p
            .iter()
            .all(|c| c.subnet() != "10.244.9.0/24".parse().unwrap()));
        let p = plan(&c, ME, &[], Some("10.245.9.0/24".parse().unwrap()), 1, 3).unwrap();
        assert!(p
            .iter()
            .all(|c| c.subnet() != "10.245.9.0/24".parse().unwrap()));
        let p = plan(&c, ME, &[], Some("10.244.0.0/24".parse().unwrap()), 1, 3).unwrap();
        assert!(
            p.iter()
                .all(|c| c.subnet() != "10.244.0.0/24".parse().unwrap()),
            "first subnet is never handed out"
        );
    }

    #[test]
    fn exhausted_pool_is_a_clear_error() {
        let c = cfg(r#"{"Network":"10.1.0.0/26"}"#); // 3 subnets: .16 .32 .48 /28
        let leases = [
            lease("10.1.0.16/28", [1, 1, 1, 1]),
            lease("10.1.0.32/28", [1, 1, 1, 2]),
            lease("10.1.0.48/28", [1, 1, 1, 3]),
        ];
        let e = plan(&c, ME, &leases, None, 1, 10).unwrap_err();
        assert_eq!(e.leased, 3);
        let msg = e.to_string();
        assert!(
            msg.contains("no free subnet in Network 10.1.0.0/26"),
            "{msg}"
        );
    }

    #[test]
    fn unparseable_values_still_occupy_their_subnet() {
        let c = cfg(r#"{"Network":"10.1.0.0/26"}"#);
        let leases = [
            ExistingLease {
                subnet: "10.1.0.16/28".parse().unwrap(),
                attrs: None,
                mod_revision: 1,
                lease_id: 5,
            },
            ExistingLease {
                subnet: "10.1.0.32/27".parse().unwrap(),
                attrs: None,
                mod_revision: 1,
                lease_id: 5,
            },
        ];
        assert!(plan(&c, ME, &leases, None, 1, 10).is_err());
    }

    fn reserved(s: &str, ip: [u8; 4]) -> ExistingLease {
        ExistingLease {
            lease_id: 0,
            ..lease(s, ip)
        }
    }

    #[test]
    fn my_reservation_is_held_as_a_reservation() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        // Restart of a node whose key an operator made a reservation
        // (`etcdctl put <key> "$(etcdctl get --print-value-only <key>)"`).
        let p = plan(
            &c,
            ME,
            &[reserved("10.244.7.0/24", [192, 168, 1, 10])],
            None,
            1,
            3,
        )
        .unwrap();
        assert_eq!(
            p[0],
            Claim::Reserved {
                subnet: "10.244.7.0/24".parse().unwrap(),
                mod_revision: 7
            },
            "never Reuse: that would put the key under a TTL"
        );
        // A reservation wins over an older leased key of the same node.
        let p = plan(
            &c,
            ME,
            &[
                lease("10.244.3.0/24", [192, 168, 1, 10]),
                reserved("10.244.9.0/24", [192, 168, 1, 10]),
            ],
            None,
            1,
            3,
        )
        .unwrap();
        assert_eq!(p[0].subnet(), "10.244.9.0/24".parse().unwrap());
        assert!(matches!(p[0], Claim::Reserved { .. }));
    }

    #[test]
    fn other_nodes_reservations_are_never_claimed() {
        let c = cfg(r#"{"Network":"10.1.0.0/26"}"#); // pool: .16 .32 .48 /28
        let leases = [
            reserved("10.1.0.16/28", [192, 168, 1, 20]),
            reserved("10.1.0.32/28", [192, 168, 1, 21]),
        ];
        let hint = Some("10.1.0.16/28".parse().unwrap());
        let p = plan(&c, ME, &leases, hint, 1, 10).unwrap();
        assert_eq!(
            p,
            [Claim::Create {
                subnet: "10.1.0.48/28".parse().unwrap()
            }]
        );
    }

    #[test]
    fn keys_covering_the_whole_network_occupy_nothing() {
        // Hostile or stray keys: the default route and the whole Network. Counted, they
        // would empty the pool; no node routes them. A /25 and a /23 inside the Network
        // (another SubnetLen) still occupy what they overlap.
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = [
            lease("0.0.0.0/0", [192, 168, 100, 71]),
            lease("10.244.0.0/16", [192, 168, 100, 73]),
            lease("10.244.94.128/25", [192, 168, 100, 74]),
            lease("10.244.40.0/23", [192, 168, 100, 75]),
        ];
        let hint = Some("10.244.35.0/24".parse().unwrap());
        let p = plan(&c, ME, &leases, hint, 1, 300).unwrap();
        assert_eq!(p[0].subnet(), "10.244.35.0/24".parse().unwrap());
        assert_eq!(p.len(), 252, "the whole pool of 255 but .94, .40 and .41");
        for held in ["10.244.94.0/24", "10.244.40.0/24", "10.244.41.0/24"] {
            assert!(p.iter().all(|c| c.subnet() != held.parse().unwrap()));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_overlapping_never_outside(
            net_len in 16u8..=24, extra in 2u8..=6, seed in 0u64.., taken_idx in proptest::collection::vec(0u32..64, 0..20),
            min_off in 0u32..3, max_off in 0u32..3,
        ) {
            let sub_len = net_len + extra;
            let step = 1u32 << (32 - u32::from(sub_len));
            let net = u32::from(Ipv4Addr::new(10, 0, 0, 0));
            let count = 1u32 << extra;
            let min = net + step * (1 + min_off.min(count - 2));
            let max = net + step * (count - 1 - max_off.min(count - 2)).max(1 + min_off.min(count - 2));
            let json = format!(
                r#"{{"Network":"10.0.0.0/{net_len}","SubnetLen":{sub_len},"SubnetMin":"{}","SubnetMax":"{}"}}"#,
                Ipv4Addr::from(min), Ipv4Addr::from(max)
            );
            let c = cfg(&json);
            let leases: Vec<ExistingLease> = taken_idx.iter().filter(|i| **i < count).map(|i| ExistingLease {
                subnet: Subnet::new(Ipv4Addr::from(net + i * step), sub_len).unwrap(),
                attrs: None,
                mod_revision: 1,
                lease_id: 5,
            }).collect();
            match plan(&c, ME, &leases, None, seed, 1000) {
                Ok(p) => {
                    let mut seen = std::collections::HashSet::new();
                    for cl in &p {
                        let s = cl.subnet();
                        proptest::prop_assert!(c.fits(&s), "{s} outside pool");
                        proptest::prop_assert_eq!(s.addr(), Subnet::new(s.addr(), sub_len).unwrap().addr(), "host bits");
                        proptest::prop_assert!(leases.iter().all(|l| !overlaps(&l.subnet, &s)), "{s} overlaps");
                        proptest::prop_assert!(seen.insert(s), "duplicate {s}");
                    }
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e.leased, c.pool_size());
                }
            }
        }
    }
}
