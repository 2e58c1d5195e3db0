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
//!
//! Dual stack (a config with an IPv6 pool): a node's lease is one key naming both
//! subnets, flannel's `<v4>-<len>&<v6>-<len>`. Step 1 then also needs the key's IPv6
//! part to fit the IPv6 pool (flannel's `isIPv6SubnetConfigCompat`); a key of ours
//! whose IPv4 part fits but whose families do not match the config (an IPv4-only key
//! from before EnableIPv6, or a dual-stack key after it was turned off) is moved, in
//! one transaction, to a key of the right form with the same IPv4 subnet
//! ([`Claim::Rekey`]) — flannel deletes it and picks a new subnet, renumbering the
//! node's pods. The IPv6 halves of new keys come from [`plan_ipv6`] (steps 2 and 3 for
//! the IPv6 pool, the same arithmetic with u128 indices), paired in order with the
//! IPv4 candidates; a key that cannot get both halves is never proposed.
//!
//! A lease of ours whose IPv4 subnet no longer fits the config at all (SubnetLen,
//! Network or the pool changed) is not reused; when no lease of ours fits, it is
//! deleted in the transaction that claims the new subnet, as flanneld deletes it at
//! start (`retire_stale`). A reservation is never deleted.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{Ipv4Pool, Ipv6Pool, NetworkConfig};
use crate::lease::{LeaseAttrs, LeaseKey, NodeId};
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;

/// A lease found in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingLease {
    /// The IPv4 part of the key.
    pub subnet: Subnet,
    /// The IPv6 part of a dual-stack key.
    pub ipv6: Option<Subnet6>,
    /// `None` when the value does not parse.
    pub attrs: Option<LeaseAttrs>,
    /// etcd mod_revision of the key, for compare-and-swap.
    pub mod_revision: i64,
    /// The etcd lease the key is attached to; 0 for a reservation (no TTL).
    pub lease_id: i64,
}

impl ExistingLease {
    /// The key as flannel's forms read it: `None` for a key whose IPv4 part is
    /// `0.0.0.0/0` without an IPv6 part (names no subnet).
    pub fn key(&self) -> Option<LeaseKey> {
        LeaseKey::new(Some(self.subnet), self.ipv6)
    }

    /// Whether the key is IPv6-only (`0.0.0.0-0&<ipv6>-<len>`).
    pub fn ipv6_only(&self) -> bool {
        self.subnet.prefix_len() == 0 && self.ipv6.is_some()
    }
}

/// One attempt the lease machine should make, on the key [`Claim::key`]: an IPv4
/// key, a dual-stack key naming both subnets, or (an IPv6-only network) an IPv6-only
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Take over our own existing lease, if it is still at `mod_revision`.
    Reuse { key: LeaseKey, mod_revision: i64 },
    /// Hold our own reservation, if it is still at `mod_revision`: no etcd lease, no
    /// keepalive; the value is rewritten (still without a lease) only if it is not
    /// exactly ours. Held under the key the operator wrote, whatever its families.
    Reserved { key: LeaseKey, mod_revision: i64 },
    /// Create the key; succeeds only if it does not exist.
    Create { key: LeaseKey },
    /// Our own lease `from`, still at `from_mod_revision`, no longer fits the
    /// config: delete it and create `key` in one transaction; succeeds only if
    /// `from` is unchanged and `key` does not exist. `key` keeps `from`'s IPv4
    /// subnet when only its families are wrong (EnableIPv6 turned on or off), and
    /// is a new subnet when the subnet itself no longer fits (see `retire_stale`).
    Rekey {
        key: LeaseKey,
        from: LeaseKey,
        from_mod_revision: i64,
    },
}

impl Claim {
    /// The key claimed: `10.5.1.0-24`, dual stack `10.5.1.0-24&fc00::-64`, IPv6 only
    /// `0.0.0.0-0&fc00::-64`.
    pub fn key(&self) -> LeaseKey {
        match self {
            Claim::Reuse { key, .. }
            | Claim::Reserved { key, .. }
            | Claim::Create { key }
            | Claim::Rekey { key, .. } => *key,
        }
    }

    /// The IPv4 subnet claimed (`None` on an IPv6-only network).
    pub fn subnet(&self) -> Option<Subnet> {
        self.key().ipv4_subnet()
    }

    /// The IPv6 subnet claimed (dual stack, IPv6 only).
    pub fn ipv6(&self) -> Option<Subnet6> {
        self.key().ipv6_subnet()
    }
}

/// The pool has no subnet left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free subnet in {pool}: all {leased} subnets of the pool are leased. Free one (`etcdctl del <prefix>/subnets/<subnet>-<len>` for a node that is gone), shorten --subnet-lease-ttl so dead nodes release theirs sooner, or widen Network/SubnetMin/SubnetMax")]
pub struct NoFreeSubnet {
    pub pool: String,
    pub leased: u64,
}

/// splitmix64: a small, well-mixed PRNG so the core stays deterministic under test.
pub(crate) fn splitmix(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Plans up to `max` claims in the order they should be tried.
///
/// Cost: O(L log L + max · log L) for L leases, whatever the pool's size — the pool
/// is never walked candidate by candidate (a /8 cut into /30s has 4 M of them). The
/// leases become sorted runs of taken candidates; the free candidates are the gaps
/// between them, counted, and the random sample is drawn by rank among them.
pub fn plan(
    cfg: &NetworkConfig,
    me: Ipv4Addr,
    leases: &[ExistingLease],
    hint: Option<Subnet>,
    seed: u64,
    max: usize,
) -> Result<Vec<Claim>, NoFreeSubnet> {
    plan_counted(
        cfg,
        me,
        leases,
        Hints::ipv4(hint),
        seed,
        max,
        &mut Work::default(),
    )
}

/// The subnets this node held before (its subnet file, or the lease it just lost),
/// tried first when still free.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    pub ipv4: Option<Subnet>,
    pub ipv6: Option<Subnet6>,
}

impl Hints {
    /// Both subnets of `key`, to be tried first.
    pub fn of(key: LeaseKey) -> Hints {
        Hints {
            ipv4: key.ipv4_subnet(),
            ipv6: key.ipv6_subnet(),
        }
    }

    pub fn ipv4(ipv4: Option<Subnet>) -> Hints {
        Hints { ipv4, ipv6: None }
    }
}

/// Steps [`plan`] took, for tests and benchmarks that check its cost grows with the
/// leases and the claims asked for, never with the pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Leases looked at (each a constant number of times, plus the sort).
    pub leases: u64,
    /// Free candidates listed one by one (only when few are free, or all are wanted).
    pub listed: u64,
    /// Random draws of a free candidate by rank.
    pub draws: u64,
}

/// Candidates are numbered 0..count from SubnetMin in steps of one subnet. Indices
/// are u128 so the same gap arithmetic serves the IPv6 pool ([`plan_ipv6`]).
#[derive(Debug, Clone, Copy)]
struct Pool {
    min: u128,
    step: u128,
    count: u128,
}

impl Pool {
    fn of(pool: &Ipv4Pool) -> Pool {
        Pool {
            min: u128::from(u32::from(pool.subnet_min)),
            step: 1u128 << (32 - u32::from(pool.subnet_len)),
            count: u128::from(pool.pool_size()),
        }
    }

    fn of_ipv6(pool: &Ipv6Pool) -> Pool {
        Pool {
            min: u128::from(pool.subnet_min),
            step: 1u128 << (128 - u32::from(pool.subnet_len)),
            count: pool.pool_size(),
        }
    }

    /// The candidates the range `first..=last` overlaps, as an inclusive index range.
    fn overlapped_range(&self, first: u128, last: u128) -> Option<(u128, u128)> {
        // The pool's last address; count ≥ 1 and the pool lies inside its network,
        // so this does not overflow.
        let end = self.min + (self.count - 1) * self.step + (self.step - 1);
        if last < self.min || first > end {
            return None;
        }
        let lo = first.saturating_sub(self.min) / self.step;
        let hi = ((last.min(end) - self.min) / self.step).min(self.count - 1);
        Some((lo, hi))
    }

    /// The candidates `s` overlaps, as an inclusive index range.
    fn overlapped(&self, s: &Subnet) -> Option<(u128, u128)> {
        self.overlapped_range(
            u128::from(u32::from(s.addr())),
            u128::from(u32::from(s.last())),
        )
    }

    fn subnet(&self, i: u128, len: u8) -> Option<Subnet> {
        let a = u32::try_from(self.min + i * self.step).ok()?;
        Subnet::new_exact(Ipv4Addr::from(a), len).ok()
    }
}

/// Merges index ranges into sorted, disjoint ones.
fn merge(mut runs: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    runs.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(runs.len());
    for (lo, hi) in runs {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The free candidates: the gaps between the taken runs, with the number of free
/// candidates before each gap (to find the n-th free one by binary search).
#[derive(Debug)]
struct Gaps {
    /// (first index, length, free candidates before it)
    gaps: Vec<(u128, u128, u128)>,
    free: u128,
}

impl Gaps {
    fn between(taken: &[(u128, u128)], count: u128) -> Gaps {
        let mut gaps = Vec::with_capacity(taken.len() + 1);
        let mut next = 0u128;
        let mut free = 0u128;
        for &(lo, hi) in taken.iter().chain(std::iter::once(&(count, count))) {
            if lo > next {
                gaps.push((next, lo - next, free));
                free += lo - next;
            }
            next = next.max(hi.saturating_add(1));
        }
        Gaps { gaps, free }
    }

    /// The index of the `rank`-th free candidate (`rank < self.free`).
    fn nth(&self, rank: u128) -> u128 {
        let i = self.gaps.partition_point(|g| g.2 <= rank).saturating_sub(1);
        let (first, _, before) = self.gaps[i];
        first + (rank - before)
    }

    fn all(&self) -> impl Iterator<Item = u128> + '_ {
        self.gaps
            .iter()
            .flat_map(|&(first, len, _)| first..first + len)
    }
}

/// Below this many free candidates they are listed and shuffled (the same order the
/// pool gives them in, so the same seed picks the same subnets whatever the pool's
/// representation); above it, drawn by rank.
const LIST_FREE_UP_TO: u128 = 1 << 16;

/// A uniform-enough draw below `n` (> 0): one splitmix step while `n` fits in 64 bits
/// (so IPv4 plans are what they always were for a seed), two above.
fn draw_below(seed: &mut u64, n: u128) -> u128 {
    if n <= u128::from(u64::MAX) {
        u128::from(splitmix(seed)) % n
    } else {
        ((u128::from(splitmix(seed)) << 64) | u128::from(splitmix(seed))) % n
    }
}

/// Up to `want` free candidates of `gaps`, a uniform random sample in random order.
fn pick(gaps: &Gaps, want: u128, seed: &mut u64, work: &mut Work) -> Vec<u128> {
    let want = want.min(gaps.free);
    if gaps.free <= LIST_FREE_UP_TO || want.saturating_mul(2) >= gaps.free {
        // Partial Fisher-Yates: the first `want` entries become a uniform random sample.
        let mut free: Vec<u128> = gaps.all().collect();
        work.listed += free.len() as u64;
        let want = want as usize;
        for i in 0..want {
            let j = i + (splitmix(seed) % (free.len() - i) as u64) as usize;
            free.swap(i, j);
        }
        free.truncate(want);
        free
    } else {
        // Many more free than wanted: draw ranks until `want` distinct ones (on
        // average fewer than 2·want draws, as at most half are wanted).
        let mut chosen: Vec<u128> = Vec::with_capacity(want as usize);
        let mut seen = std::collections::HashSet::with_capacity(want as usize);
        while (chosen.len() as u128) < want {
            work.draws += 1;
            let i = gaps.nth(draw_below(seed, gaps.free));
            if seen.insert(i) {
                chosen.push(i);
            }
        }
        chosen
    }
}

/// [`plan`], counting its steps in `work`, with both families' hints.
pub fn plan_counted(
    cfg: &NetworkConfig,
    me: Ipv4Addr,
    leases: &[ExistingLease],
    hints: Hints,
    mut seed: u64,
    max: usize,
    work: &mut Work,
) -> Result<Vec<Claim>, NoFreeSubnet> {
    // An IPv6-only network has no IPv4 pool: its nodes plan with `plan_ipv6_only`.
    let Some(pool4) = cfg.ipv4.as_ref() else {
        return Err(NoFreeSubnet {
            pool: cfg.describe_pool(),
            leased: 0,
        });
    };
    let hint = hints.ipv4;
    let mut out = Vec::new();
    // Whether a key's IPv6 part is what the config asks for (flannel's
    // isIPv6SubnetConfigCompat): none without an IPv6 pool, one that fits it with.
    let families_fit = |l: &ExistingLease| match &cfg.ipv6 {
        None => l.ipv6.is_none(),
        Some(p) => l.ipv6.is_some_and(|s| p.fits(&s)),
    };
    let mut mine: Vec<&ExistingLease> = leases
        .iter()
        .filter(|l| l.attrs.as_ref().is_some_and(|a| a.public_ip == me) && pool4.fits(&l.subnet))
        .collect();
    // A reservation first, then a key of the right families, then the lowest subnet.
    mine.sort_by_key(|l| (l.lease_id != 0, !families_fit(l), l.subnet));
    // Claims still waiting for their IPv6 half (dual stack), in `out`'s order.
    let mut need_v6 = 0usize;
    if let Some(l) = mine.first() {
        let ipv6 = l.ipv6;
        out.push(if l.lease_id == 0 {
            Claim::Reserved {
                key: LeaseKey::dual(l.subnet, ipv6),
                mod_revision: l.mod_revision,
            }
        } else if families_fit(l) {
            Claim::Reuse {
                key: LeaseKey::dual(l.subnet, ipv6),
                mod_revision: l.mod_revision,
            }
        } else {
            need_v6 += usize::from(cfg.ipv6.is_some());
            Claim::Rekey {
                key: LeaseKey::dual(l.subnet, None),
                from: LeaseKey::dual(l.subnet, l.ipv6),
                from_mod_revision: l.mod_revision,
            }
        });
    }
    let pool = Pool::of(pool4);
    // Keys covering the whole Network occupy nothing (see the module documentation).
    let occupying = leases
        .iter()
        .filter(|l| !l.subnet.contains_subnet(&pool4.network));
    work.leases += leases.len() as u64;
    let taken_runs = merge(
        occupying
            .filter_map(|l| pool.overlapped(&l.subnet))
            .collect(),
    );
    let leased: u128 = taken_runs.iter().map(|(lo, hi)| hi - lo + 1).sum();
    let is_taken = |i: u128| {
        let k = taken_runs.partition_point(|r| r.1 < i);
        taken_runs.get(k).is_some_and(|r| r.0 <= i)
    };
    // The hint, when it is a free candidate, is tried first and not drawn again.
    let hint_index = hint
        .filter(|h| pool4.fits(h))
        .and_then(|h| pool.overlapped(&h))
        .map(|(lo, _)| lo)
        .filter(|&i| !is_taken(i));
    if let (Some(h), Some(_)) = (hint, hint_index) {
        if !out.iter().any(|c| c.subnet() == Some(h)) {
            out.push(Claim::Create {
                key: LeaseKey::dual(h, None),
            });
        }
    }
    let mut excluded = taken_runs;
    if let Some(i) = hint_index {
        excluded.push((i, i));
        excluded = merge(excluded);
    }
    let gaps = Gaps::between(&excluded, pool.count);
    let want = max.saturating_sub(out.len()) as u128;
    let picked = pick(&gaps, want, &mut seed, work);
    out.extend(
        picked
            .into_iter()
            .filter_map(|i| pool.subnet(i, pool4.subnet_len))
            .map(|subnet| Claim::Create {
                key: LeaseKey::dual(subnet, None),
            }),
    );
    if out.is_empty() {
        return Err(NoFreeSubnet {
            pool: pool4.describe_pool(),
            leased: u64::try_from(leased).unwrap_or(u64::MAX),
        });
    }
    if let Some(v6_pool) = &cfg.ipv6 {
        pair_ipv6(v6_pool, leases, hints.ipv6, seed, need_v6, &mut out, work)?;
    }
    if mine.is_empty() {
        retire_stale(pool4, me, leases, &mut out);
    }
    Ok(out)
}

/// Our own lease that no longer fits the config (Network, SubnetLen or
/// SubnetMin/Max changed since it was claimed) is deleted in the same transaction as
/// each new claim: every Create becomes a [`Claim::Rekey`] from it. flanneld deletes
/// it at start ("Found lease … for current IP … but not compatible with current
/// config, deleting", pkg/subnet/etcd/local_manager.go); left alone it would occupy
/// its subnet, and peers still on the old config would route it, until its TTL ran
/// out (1 h by default). Only when no lease of ours fits (one that fits is reused
/// and the stale one left, as flanneld looks at only the first lease of its IP).
/// A reservation (no etcd lease) is the operator's pin and is never deleted: flanneld
/// deletes that too. Of several stale leases, the lowest subnet goes first; the rest
/// go at later starts. If it changes or goes while we claim, every Rekey loses and
/// the next listing, without it, plans plain Creates.
fn retire_stale(pool4: &Ipv4Pool, me: Ipv4Addr, leases: &[ExistingLease], out: &mut [Claim]) {
    let Some(stale) = leases
        .iter()
        .filter(|l| {
            l.lease_id != 0
                && !l.ipv6_only()
                && !pool4.fits(&l.subnet)
                && l.attrs.as_ref().is_some_and(|a| a.public_ip == me)
        })
        .min_by_key(|l| l.subnet)
    else {
        return;
    };
    let Some(from) = stale.key() else { return };
    for c in out.iter_mut() {
        if let Claim::Create { key } = *c {
            *c = Claim::Rekey {
                key,
                from,
                from_mod_revision: stale.mod_revision,
            };
        }
    }
}

/// The plan for node `me` on its network: [`plan_counted`] on an IPv4 or dual-stack
/// network (the node known by its PublicIP), [`plan_ipv6_only`] on an IPv6-only one
/// (known by its PublicIPv6). A node whose identity is not of its network's kind (a
/// caller's mistake) gets no candidate.
pub fn plan_for(
    cfg: &NetworkConfig,
    me: NodeId,
    leases: &[ExistingLease],
    hints: Hints,
    seed: u64,
    max: usize,
    work: &mut Work,
) -> Result<Vec<Claim>, NoFreeSubnet> {
    match (me, cfg.ipv4.is_some(), cfg.ipv6.as_ref()) {
        (NodeId::V4(ip), true, _) => plan_counted(cfg, ip, leases, hints, seed, max, work),
        (NodeId::V6(ip), false, Some(pool6)) => {
            plan_ipv6_only(pool6, ip, leases, hints.ipv6, seed, max, work)
        }
        _ => Err(NoFreeSubnet {
            pool: format!("{} (not for a node known by its {me})", cfg.describe_pool()),
            leased: 0,
        }),
    }
}

/// The plan on an IPv6-only network (`EnableIPv4` false): keys `0.0.0.0-0&<ipv6>-<len>`,
/// flannel's IPv6-only form, and the node known by its PublicIPv6 (every such lease's
/// PublicIP is `0.0.0.0`). The same order as [`plan`]: a lease of ours that fits
/// IPv6Network (a reservation first), else the hint (the subnet file's
/// `FLANNEL_IPV6_SUBNET`) when free, else free subnets in random order
/// ([`plan_ipv6_counted`]). A dual-stack key naming our PublicIPv6 (the network was
/// dual stack) whose IPv6 half fits is moved to the IPv6-only key of the same IPv6
/// subnet ([`Claim::Rekey`]), as a dual-stack node moves keys when EnableIPv6 changes;
/// a lease of ours that no longer fits at all is deleted with the new claim.
pub fn plan_ipv6_only(
    pool: &Ipv6Pool,
    me: Ipv6Addr,
    leases: &[ExistingLease],
    hint: Option<Subnet6>,
    seed: u64,
    max: usize,
    work: &mut Work,
) -> Result<Vec<Claim>, NoFreeSubnet> {
    // Ours: a lease naming our PublicIPv6 (IPv6-only, or dual stack from before).
    let ours = |l: &&ExistingLease| l.attrs.as_ref().is_some_and(|a| a.public_ipv6 == Some(me));
    let fitting = |l: &ExistingLease| l.ipv6.filter(|s| pool.fits(s));
    let mut mine: Vec<(&ExistingLease, Subnet6)> = leases
        .iter()
        .filter(ours)
        .filter_map(|l| Some((l, fitting(l)?)))
        .collect();
    // A reservation first, then an IPv6-only key, then the lowest subnet.
    mine.sort_by_key(|(l, s)| (l.lease_id != 0, !l.ipv6_only(), *s));
    let mut out = Vec::new();
    if let Some(&(l, subnet)) = mine.first() {
        let key = LeaseKey::ipv6_only(subnet);
        out.push(if l.lease_id == 0 {
            // Held under the key the operator wrote, whatever its families.
            Claim::Reserved {
                key: l.key().unwrap_or(key),
                mod_revision: l.mod_revision,
            }
        } else if l.ipv6_only() {
            Claim::Reuse {
                key,
                mod_revision: l.mod_revision,
            }
        } else {
            match l.key() {
                Some(from) => Claim::Rekey {
                    key,
                    from,
                    from_mod_revision: l.mod_revision,
                },
                None => Claim::Create { key },
            }
        });
    }
    let taken: Vec<Subnet6> = leases.iter().filter_map(|l| l.ipv6).collect();
    let want = max.saturating_sub(out.len());
    let fresh = if want == 0 {
        Vec::new()
    } else {
        match plan_ipv6_counted(pool, &taken, hint, seed, want, work) {
            Ok(v) => v,
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => Vec::new(),
        }
    };
    out.extend(fresh.into_iter().map(|s| Claim::Create {
        key: LeaseKey::ipv6_only(s),
    }));
    if mine.is_empty() {
        // Our lease that no longer fits IPv6Network (or the pool) goes with the claim.
        let stale = leases
            .iter()
            .filter(ours)
            .filter(|l| l.lease_id != 0 && fitting(l).is_none())
            .filter_map(|l| Some((l.key()?, l.mod_revision)))
            .min();
        if let Some((from, from_mod_revision)) = stale {
            for c in out.iter_mut() {
                if let Claim::Create { key } = *c {
                    *c = Claim::Rekey {
                        key,
                        from,
                        from_mod_revision,
                    };
                }
            }
        }
    }
    Ok(out)
}

/// Gives every Create and Rekey claim of a dual-stack plan its IPv6 half, from
/// [`plan_ipv6`] in order (the hint first); claims left without one are dropped.
/// The pool full is an error only when no claim is left.
fn pair_ipv6(
    pool: &Ipv6Pool,
    leases: &[ExistingLease],
    hint: Option<Subnet6>,
    seed: u64,
    rekeys: usize,
    out: &mut Vec<Claim>,
    work: &mut Work,
) -> Result<(), NoFreeSubnet> {
    let creates = out
        .iter()
        .filter(|c| matches!(c, Claim::Create { .. }))
        .count();
    let want = creates + rekeys;
    let taken: Vec<Subnet6> = leases.iter().filter_map(|l| l.ipv6).collect();
    let mut v6 = match plan_ipv6_counted(pool, &taken, hint, seed, want, work) {
        Ok(v) => v.into_iter(),
        Err(e) => {
            out.retain(|c| matches!(c, Claim::Reuse { .. } | Claim::Reserved { .. }));
            return if out.is_empty() { Err(e) } else { Ok(()) };
        }
    };
    out.retain_mut(|c| match c {
        Claim::Create { key } | Claim::Rekey { key, .. } => {
            match key.ipv4_subnet().zip(v6.next()) {
                Some((v4, half)) => {
                    *key = LeaseKey::dual(v4, Some(half));
                    true
                }
                None => false,
            }
        }
        Claim::Reuse { .. } | Claim::Reserved { .. } => true,
    });
    Ok(())
}

/// The IPv6 half of a dual-stack claim (flannel picks it independently of the IPv4
/// one, `allocateSubnet` in pkg/subnet/etcd/local_manager.go): up to `max` subnets of
/// the IPv6 pool in the order to try them — `hint` first (the node's
/// `FLANNEL_IPV6_SUBNET`) when it fits the pool and is free, then free subnets in
/// random order. `taken` holds the IPv6 part of every lease key in the registry
/// (whatever its value); as for IPv4, a key covering the whole IPv6Network occupies
/// nothing. The same gap arithmetic as [`plan`]: the cost grows with the keys and the
/// claims asked for, never with the pool (a /8 cut into /126s has 2^118 subnets).
pub fn plan_ipv6(
    pool: &Ipv6Pool,
    taken: &[Subnet6],
    hint: Option<Subnet6>,
    seed: u64,
    max: usize,
) -> Result<Vec<Subnet6>, NoFreeSubnet> {
    plan_ipv6_counted(pool, taken, hint, seed, max, &mut Work::default())
}

/// [`plan_ipv6`], counting its steps in `work`.
pub fn plan_ipv6_counted(
    pool: &Ipv6Pool,
    taken: &[Subnet6],
    hint: Option<Subnet6>,
    mut seed: u64,
    max: usize,
    work: &mut Work,
) -> Result<Vec<Subnet6>, NoFreeSubnet> {
    let p = Pool::of_ipv6(pool);
    let range = |s: &Subnet6| p.overlapped_range(u128::from(s.addr()), u128::from(s.last()));
    work.leases += taken.len() as u64;
    let taken_runs = merge(
        taken
            .iter()
            .filter(|s| !s.contains_subnet(&pool.network))
            .filter_map(range)
            .collect(),
    );
    let leased: u128 = taken_runs.iter().map(|(lo, hi)| hi - lo + 1).sum();
    let is_taken = |i: u128| {
        let k = taken_runs.partition_point(|r| r.1 < i);
        taken_runs.get(k).is_some_and(|r| r.0 <= i)
    };
    let mut out = Vec::new();
    let mut excluded = taken_runs.clone();
    if let Some(h) = hint.filter(|h| pool.fits(h)) {
        if let Some((i, _)) = range(&h).filter(|&(i, _)| !is_taken(i)) {
            if max > 0 {
                out.push(h);
            }
            excluded.push((i, i));
            excluded = merge(excluded);
        }
    }
    let gaps = Gaps::between(&excluded, p.count);
    let want = max.saturating_sub(out.len()) as u128;
    out.extend(
        pick(&gaps, want, &mut seed, work)
            .into_iter()
            .filter_map(|i| Subnet6::new_exact((p.min + i * p.step).into(), pool.subnet_len).ok()),
    );
    if out.is_empty() {
        return Err(NoFreeSubnet {
            pool: pool.describe_pool(),
            leased: u64::try_from(leased).unwrap_or(u64::MAX),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn v6_pool(json_extra: &str) -> Ipv6Pool {
        cfg(&format!(
            r#"{{"Network":"10.0.0.0/16","EnableIPv6":true,{json_extra}}}"#
        ))
        .ipv6
        .unwrap()
    }

    fn s6(s: &str) -> Subnet6 {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_pool_of_a_56_hands_out_each_64_once() {
        // flannel's default: a /56 IPv6Network cut into /64s, the first never handed out.
        let pool = v6_pool(r#""IPv6Network":"fd00:10:244::/56""#);
        let all = plan_ipv6(&pool, &[], None, 7, 1000).unwrap();
        assert_eq!(all.len(), 255);
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 255);
        assert!(all.iter().all(|s| pool.fits(s)));
        assert!(!all.contains(&s6("fd00:10:244::/64")));
        assert!(all.contains(&s6("fd00:10:244:ff::/64")));
        // Same seed, same order; another seed, another order.
        assert_eq!(plan_ipv6(&pool, &[], None, 7, 1000).unwrap(), all);
        assert_ne!(plan_ipv6(&pool, &[], None, 8, 1000).unwrap(), all);
    }

    #[test]
    fn ipv6_taken_keys_hint_and_exhaustion() {
        let pool = v6_pool(r#""IPv6Network":"fd00:10:244::/56","IPv6SubnetMax":"fd00:10:244:4::""#);
        let taken = [
            s6("fd00:10:244:1::/64"),
            s6("fd00:10:244:3::/64"),
            s6("fd00:10:244::/56"), // the whole IPv6Network: occupies nothing
            s6("fc00::/64"),        // outside: occupies nothing of this pool
        ];
        let got = plan_ipv6(&pool, &taken, None, 1, 10).unwrap();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, [s6("fd00:10:244:2::/64"), s6("fd00:10:244:4::/64")]);
        // The hint comes first when free and fitting, and only once.
        let got = plan_ipv6(&pool, &taken, Some(s6("fd00:10:244:4::/64")), 1, 10).unwrap();
        assert_eq!(got, [s6("fd00:10:244:4::/64"), s6("fd00:10:244:2::/64")]);
        // Not when taken, outside the pool or of another length.
        for h in [
            "fd00:10:244:3::/64",
            "fd00:10:244:5::/64",
            "fd00:10:244:2::/65",
        ] {
            let got = plan_ipv6(&pool, &taken, Some(s6(h)), 1, 10).unwrap();
            assert_eq!(got.len(), 2, "{h}: {got:?}");
            assert!(!got.contains(&s6(h)), "{h}");
        }
        // A shorter key covering part of the pool takes all it covers.
        let e = plan_ipv6(
            &pool,
            &[s6("fd00:10:244::/62"), s6("fd00:10:244:4::/63")],
            None,
            1,
            10,
        )
        .unwrap_err();
        assert_eq!(e.leased, 4);
        let msg = e.to_string();
        assert!(
            msg.contains("IPv6Network fd00:10:244::/56") && msg.contains("all 4 subnets"),
            "{msg}"
        );
    }

    #[test]
    fn a_huge_ipv6_pool_costs_its_keys_not_its_size() {
        // fd00::/8 cut into /126s: 2^118 - 1 subnets. Drawn by rank, never listed.
        let pool = v6_pool(r#""IPv6Network":"fd00::/8","IPv6SubnetLen":126"#);
        assert_eq!(pool.pool_size(), (1u128 << 118) - 1);
        let taken: Vec<Subnet6> = (1u128..=500)
            .map(|i| Subnet6::new_exact((u128::from(pool.subnet_min) + i * 4).into(), 126).unwrap())
            .collect();
        let mut work = Work::default();
        let got = plan_ipv6_counted(&pool, &taken, None, 3, 30, &mut work).unwrap();
        assert_eq!(got.len(), 30);
        assert!(got.iter().all(|s| pool.fits(s) && !taken.contains(s)));
        assert_eq!(work.listed, 0);
        assert!(work.draws < 60, "{work:?}");
        // A pool that ends at the top of the address space does not overflow.
        // (Built by hand: a config refuses the multicast block, so this is the only way
        // a pool reaches the top.)
        let top = Ipv6Pool {
            network: s6("ff00::/8"),
            subnet_len: 10,
            subnet_min: "ff40::".parse().unwrap(),
            subnet_max: "ffc0::".parse().unwrap(),
        };
        let got = plan_ipv6(&top, &[s6("ffc0::/10")], None, 1, 10).unwrap();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, [s6("ff40::/10"), s6("ff80::/10")]);
    }

    proptest::proptest! {
        #[test]
        fn ipv6_picks_are_free_distinct_and_inside(
            taken in proptest::collection::vec((0u128..300, 60u8..=68), 0..40),
            seed in 0u64..,
            max in 0usize..300,
        ) {
            let pool = v6_pool(r#""IPv6Network":"fd00:10:244::/56""#);
            let base = u128::from(pool.network.addr());
            let taken: Vec<Subnet6> = taken
                .into_iter()
                .map(|(i, len)| Subnet6::new((base + (i << 64)).into(), len).unwrap())
                .collect();
            match plan_ipv6(&pool, &taken, None, seed, max) {
                Ok(got) => {
                    proptest::prop_assert!(got.len() <= max);
                    let distinct: std::collections::BTreeSet<_> = got.iter().collect();
                    proptest::prop_assert_eq!(distinct.len(), got.len());
                    for s in &got {
                        proptest::prop_assert!(pool.fits(s));
                        proptest::prop_assert!(
                            !taken.iter().any(|t| t.overlaps(s) && !t.contains_subnet(&pool.network)),
                            "{} is taken", s
                        );
                    }
                }
                Err(e) => {
                    // Only when nothing is free (or nothing was asked for).
                    let free = (1u128..=255).any(|i| {
                        let s = Subnet6::new((base + (i << 64)).into(), 64).unwrap();
                        !taken.iter().any(|t| t.overlaps(&s) && !t.contains_subnet(&pool.network))
                    });
                    proptest::prop_assert!(!free || max == 0, "{}", e);
                }
            }
        }
    }

    fn overlaps(a: &Subnet, b: &Subnet) -> bool {
        a.contains(b.addr()) || b.contains(a.addr())
    }

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse("/k", json.as_bytes()).unwrap()
    }

    fn lease(s: &str, ip: [u8; 4]) -> ExistingLease {
        ExistingLease {
            ipv6: None,
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

    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

    /// A lease read from the registry the way the agent reads it: the key and the
    /// value bytes, as flanneld writes them.
    fn listed(key: &str, value: &str, lease: i64) -> ExistingLease {
        let l = crate::registry_events::Listing {
            revision: 20,
            entries: vec![crate::registry_events::Entry {
                key: format!("/coreos.com/network/subnets/{key}"),
                value: value.as_bytes().to_vec(),
                create_revision: 5,
                mod_revision: 7,
                lease,
            }],
        };
        l.existing_leases().remove(0)
    }

    const MY_DUAL_VALUE: &str = r#"{"PublicIP":"192.168.1.10","PublicIPv6":"fd00:64::10","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0a"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:0a"}}"#;
    const MY_V4_VALUE: &str = r#"{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0a"}}"#;
    const THEIR_V4_VALUE: &str = r#"{"PublicIP":"192.168.1.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}}"#;
    const THEIR_DUAL_VALUE: &str = r#"{"PublicIP":"192.168.1.9","PublicIPv6":"fd00:64::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:09"}}"#;

    /// flannel's IPv6-only values: PublicIP is the empty `0.0.0.0` on every node.
    const MY_V6_ONLY_VALUE: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::10","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:0a"}}"#;
    const THEIR_V6_ONLY_VALUE: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::9","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:09"}}"#;
    const ME6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0x10);

    /// An IPv6-only network's config (EnableIPv4 false).
    fn v6_only() -> NetworkConfig {
        let mut c = cfg(DUAL);
        c.ipv4 = None;
        c
    }

    fn plan6(leases: &[ExistingLease], hint: Option<Subnet6>, max: usize) -> Vec<Claim> {
        let c = v6_only();
        plan_for(
            &c,
            NodeId::V6(ME6),
            leases,
            Hints {
                ipv4: None,
                ipv6: hint,
            },
            1,
            max,
            &mut Work::default(),
        )
        .unwrap()
    }

    #[test]
    fn ipv6_only_claims_are_flannels_ipv6_only_keys() {
        let theirs = listed("0.0.0.0-0&fd00:10:244:5::-64", THEIR_V6_ONLY_VALUE, 9);
        assert!(theirs.ipv6_only());
        let p = plan6(std::slice::from_ref(&theirs), None, 16);
        assert_eq!(p.len(), 16);
        let pool = v6_only().ipv6.unwrap();
        for c in &p {
            assert!(matches!(c, Claim::Create { .. }), "{c:?}");
            assert_eq!(c.subnet(), None);
            let v6 = c.ipv6().unwrap();
            assert!(pool.fits(&v6) && v6 != s6("fd00:10:244:5::/64"), "{c:?}");
            assert_eq!(
                c.key().key_form(),
                format!("0.0.0.0-0&{}", v6.key_form()),
                "flannel's MakeSubnetKey with an empty IPv4 subnet"
            );
            assert_eq!(LeaseKey::parse(&c.key().key_form()).unwrap(), c.key());
        }
        // The hint (FLANNEL_IPV6_SUBNET) first when free, never when taken.
        let hint = s6("fd00:10:244:9::/64");
        assert_eq!(plan6(&[], Some(hint), 4)[0].ipv6(), Some(hint));
        let p = plan6(
            std::slice::from_ref(&theirs),
            Some(s6("fd00:10:244:5::/64")),
            4,
        );
        assert!(p.iter().all(|c| c.ipv6() != Some(s6("fd00:10:244:5::/64"))));
    }

    /// flanneld's etcd mode finds "its" lease by PublicIP, which is 0.0.0.0 for every
    /// IPv6-only node: a second node would take the first's. vxmesh goes by PublicIPv6.
    #[test]
    fn an_ipv6_only_node_is_known_by_its_public_ipv6_not_by_0_0_0_0() {
        let theirs = listed("0.0.0.0-0&fd00:10:244:5::-64", THEIR_V6_ONLY_VALUE, 9);
        let mine = listed("0.0.0.0-0&fd00:10:244:7::-64", MY_V6_ONLY_VALUE, 9);
        let p = plan6(&[theirs.clone(), mine], None, 4);
        assert_eq!(
            p[0],
            Claim::Reuse {
                key: LeaseKey::ipv6_only(s6("fd00:10:244:7::/64")),
                mod_revision: 7
            },
            "a restart keeps its own lease"
        );
        assert!(p[1..].iter().all(|c| matches!(c, Claim::Create { .. })));
        let p = plan6(std::slice::from_ref(&theirs), None, 4);
        assert!(
            p.iter().all(|c| matches!(c, Claim::Create { .. })),
            "another node's lease is never taken over: {p:?}"
        );
        // An IPv4 plan never sees an IPv6-only lease as its own either (PublicIP
        // 0.0.0.0 is no node's).
        let zero = cfg(DUAL);
        let p = plan(&zero, Ipv4Addr::UNSPECIFIED, &[theirs], None, 1, 4).unwrap();
        assert!(p.iter().all(|c| matches!(c, Claim::Create { .. })));
    }

    #[test]
    fn ipv6_only_reservations_moves_and_stale_leases() {
        // A reservation (no etcd lease) of ours is held as written.
        let mut reserved = listed("0.0.0.0-0&fd00:10:244:7::-64", MY_V6_ONLY_VALUE, 0);
        reserved.lease_id = 0;
        let p = plan6(&[reserved], None, 2);
        assert!(
            matches!(p[0], Claim::Reserved { key, .. } if key.key_form() == "0.0.0.0-0&fd00:10:244:7::-64"),
            "{p:?}"
        );
        // The network was dual stack: our dual-stack key moves to the IPv6-only key
        // of the same IPv6 subnet, in one transaction.
        let dual = listed("10.244.7.0-24&fd00:10:244:3::-64", MY_DUAL_VALUE, 9);
        let p = plan6(&[dual], None, 3);
        assert_eq!(
            p[0],
            Claim::Rekey {
                key: LeaseKey::ipv6_only(s6("fd00:10:244:3::/64")),
                from: LeaseKey::parse("10.244.7.0-24&fd00:10:244:3::-64").unwrap(),
                from_mod_revision: 7
            }
        );
        assert!(p[1..].iter().all(
            |c| matches!(c, Claim::Create { .. }) && c.ipv6() != Some(s6("fd00:10:244:3::/64"))
        ));
        // Our lease outside IPv6Network (the network changed) goes with each new claim.
        let stale = listed("0.0.0.0-0&fd00:99::-64", MY_V6_ONLY_VALUE, 9);
        let p = plan6(&[stale], None, 3);
        assert_eq!(p.len(), 3);
        assert!(
            p.iter().all(|c| matches!(c, Claim::Rekey { from, .. }
            if from.key_form() == "0.0.0.0-0&fd00:99::-64")),
            "{p:?}"
        );
    }

    #[test]
    fn a_full_ipv6_only_pool_and_a_node_of_the_wrong_kind_get_no_claim() {
        let mut c = cfg(
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/62","Backend":{"Type":"vxlan"}}"#,
        );
        c.ipv4 = None;
        let pool = c.ipv6.unwrap();
        assert_eq!(pool.pool_size(), 3);
        let taken: Vec<ExistingLease> = ["1", "2", "3"]
            .iter()
            .map(|i| {
                listed(
                    &format!("0.0.0.0-0&fd00:10:244:{i}::-64"),
                    THEIR_V6_ONLY_VALUE,
                    9,
                )
            })
            .collect();
        let err = plan_for(
            &c,
            NodeId::V6(ME6),
            &taken,
            Hints::default(),
            1,
            4,
            &mut Work::default(),
        )
        .unwrap_err();
        assert_eq!(err.leased, 3, "{err}");
        // An IPv4 identity on an IPv6-only network, and the reverse: no candidate.
        let e = plan_for(
            &c,
            NodeId::V4(ME),
            &[],
            Hints::default(),
            1,
            4,
            &mut Work::default(),
        )
        .unwrap_err();
        assert!(e.pool.contains("PublicIP 192.168.1.10"), "{e}");
        let e = plan_for(
            &cfg(DUAL),
            NodeId::V6(ME6),
            &[],
            Hints::default(),
            1,
            4,
            &mut Work::default(),
        )
        .unwrap_err();
        assert!(e.pool.contains("PublicIPv6"), "{e}");
    }

    #[test]
    fn dual_stack_claims_name_both_subnets() {
        let c = cfg(DUAL);
        let v6 = c.ipv6.unwrap();
        let theirs = listed("10.244.5.0-24&fd00:10:244:5::-64", THEIR_DUAL_VALUE, 9);
        assert_eq!(theirs.ipv6, Some(s6("fd00:10:244:5::/64")));
        let p = plan(&c, ME, std::slice::from_ref(&theirs), None, 1, 16).unwrap();
        assert_eq!(p.len(), 16);
        let mut seen = std::collections::HashSet::new();
        for claim in &p {
            let Claim::Create { key } = claim else {
                panic!("{claim:?}")
            };
            let subnet = &key.ipv4_subnet().unwrap();
            let ipv6 = key
                .ipv6_subnet()
                .expect("every dual-stack claim has an IPv6 half");
            assert!(v6.fits(&ipv6) && c.fits(subnet), "{claim:?}");
            assert_ne!(ipv6, s6("fd00:10:244:5::/64"), "taken by the other node");
            assert!(seen.insert(ipv6), "distinct IPv6 halves");
            let text = claim.key().key_form();
            assert_eq!(text, format!("{}&{}", subnet.key_form(), ipv6.key_form()));
            assert_eq!(LeaseKey::parse(&text).unwrap(), claim.key());
        }
        // Both hints (the lease just lost) come first, together.
        let hints = Hints {
            ipv4: Some("10.244.9.0/24".parse().unwrap()),
            ipv6: Some(s6("fd00:10:244:9::/64")),
        };
        let p = plan_counted(&c, ME, &[theirs], hints, 1, 4, &mut Work::default()).unwrap();
        assert_eq!(
            p[0],
            Claim::Create {
                key: LeaseKey::dual(
                    "10.244.9.0/24".parse().unwrap(),
                    Some(s6("fd00:10:244:9::/64"))
                )
            }
        );
    }

    #[test]
    fn dual_stack_restart_reuses_the_same_key() {
        let c = cfg(DUAL);
        let mine = listed("10.244.7.0-24&fd00:10:244:3::-64", MY_DUAL_VALUE, 9);
        let p = plan(&c, ME, &[mine], None, 1, 4).unwrap();
        assert_eq!(
            p[0],
            Claim::Reuse {
                key: LeaseKey::dual(
                    "10.244.7.0/24".parse().unwrap(),
                    Some(s6("fd00:10:244:3::/64"))
                ),
                mod_revision: 7
            }
        );
        assert_eq!(p[0].key().key_form(), "10.244.7.0-24&fd00:10:244:3::-64");
        // The new candidates never take the IPv6 subnet of our own key.
        assert!(p[1..]
            .iter()
            .all(|c| c.ipv6().is_some() && c.ipv6() != Some(s6("fd00:10:244:3::/64"))));
    }

    #[test]
    fn a_key_of_the_wrong_families_moves_keeping_its_ipv4_subnet() {
        // EnableIPv6 turned on under a running IPv4 cluster: our IPv4-only key moves
        // to a dual-stack key with the same IPv4 subnet, in one transaction.
        let c = cfg(DUAL);
        let mine = listed("10.244.7.0-24", MY_V4_VALUE, 9);
        let p = plan(&c, ME, &[mine], None, 1, 4).unwrap();
        let Claim::Rekey {
            key,
            from,
            from_mod_revision: 7,
        } = p[0]
        else {
            panic!("{:?}", p[0])
        };
        let (subnet, ipv6) = (key.ipv4_subnet().unwrap(), key.ipv6_subnet().unwrap());
        assert_eq!(subnet, "10.244.7.0/24".parse().unwrap());
        assert!(c.ipv6.unwrap().fits(&ipv6));
        assert_eq!(from.key_form(), "10.244.7.0-24");
        assert!(p[1..].iter().all(|c| matches!(c, Claim::Create { .. })));
        // The IPv6 half of our key no longer fits the IPv6 pool (IPv6Network changed).
        let stale = listed("10.244.7.0-24&fd00:99::-64", MY_DUAL_VALUE, 9);
        let p = plan(&c, ME, &[stale], None, 1, 4).unwrap();
        assert!(
            matches!(p[0], Claim::Rekey { from, key, .. }
                if from.key_form() == "10.244.7.0-24&fd00:99::-64"
                    && key.ipv6_subnet().is_some_and(|v6| v6 != s6("fd00:99::/64"))),
            "{:?}",
            p[0]
        );
        // EnableIPv6 turned off: our dual-stack key moves to an IPv4 key.
        let v4 = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let mine = listed("10.244.7.0-24&fd00:10:244:3::-64", MY_DUAL_VALUE, 9);
        let p = plan(&v4, ME, &[mine], None, 1, 4).unwrap();
        assert_eq!(
            p[0],
            Claim::Rekey {
                key: LeaseKey::dual("10.244.7.0/24".parse().unwrap(), None),
                from: LeaseKey::parse("10.244.7.0-24&fd00:10:244:3::-64").unwrap(),
                from_mod_revision: 7
            }
        );
        assert_eq!(p[0].key().key_form(), "10.244.7.0-24");
        // A reservation is the operator's key: held as written, whatever its families.
        let mine = listed("10.244.7.0-24", MY_V4_VALUE, 0);
        let p = plan(&c, ME, &[mine], None, 1, 4).unwrap();
        assert_eq!(
            p[0],
            Claim::Reserved {
                key: LeaseKey::dual("10.244.7.0/24".parse().unwrap(), None),
                mod_revision: 7
            }
        );
    }

    #[test]
    fn our_lease_that_no_longer_fits_is_deleted_by_the_claim_of_a_new_subnet() {
        // SubnetLen went from 24 to 25: our /24 key fits no more.
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let stale = listed("10.244.7.0-24", MY_V4_VALUE, 9);
        let theirs = listed("10.244.8.0-24", THEIR_V4_VALUE, 9);
        let hint: Subnet = "10.244.9.0/25".parse().unwrap();
        let p = plan(&c, ME, &[stale.clone(), theirs.clone()], Some(hint), 1, 4).unwrap();
        assert_eq!(p.len(), 4);
        let from = LeaseKey::parse("10.244.7.0-24").unwrap();
        assert_eq!(
            p[0],
            Claim::Rekey {
                key: LeaseKey::dual(hint, None),
                from,
                from_mod_revision: 7
            },
            "the subnet file's subnet first, still deleting the stale key"
        );
        for claim in &p {
            let Claim::Rekey {
                key,
                from: f,
                from_mod_revision: 7,
            } = *claim
            else {
                panic!("{claim:?}")
            };
            assert_eq!(f, from);
            let subnet = key.ipv4_subnet().unwrap();
            assert!(c.fits(&subnet), "{subnet}");
            // The stale key still occupies its subnet until the claim deletes it, and
            // another node's /24 of the old config occupies its own.
            assert!(!subnet.overlaps(&stale.subnet) && !subnet.overlaps(&theirs.subnet));
        }
        // Another node's lease that no longer fits is its own business.
        let p = plan(&c, ME, std::slice::from_ref(&theirs), None, 1, 4).unwrap();
        assert!(p.iter().all(|c| matches!(c, Claim::Create { .. })), "{p:?}");
        // A reservation of ours that no longer fits is the operator's: left as it is.
        let reserved = listed("10.244.7.0-24", MY_V4_VALUE, 0);
        let p = plan(&c, ME, &[reserved], None, 1, 4).unwrap();
        assert!(p.iter().all(|c| matches!(c, Claim::Create { .. })), "{p:?}");
        // A lease of ours that fits is reused, and the stale one left alone.
        let fits = listed("10.244.20.128-25", MY_V4_VALUE, 9);
        let p = plan(&c, ME, &[stale.clone(), fits], None, 1, 4).unwrap();
        assert!(matches!(p[0], Claim::Reuse { .. }), "{:?}", p[0]);
        assert!(p[1..].iter().all(|c| matches!(c, Claim::Create { .. })));
        // Network moved: every claim of a new dual-stack key deletes our old one.
        let moved =
            cfg(r#"{"Network":"10.96.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
        let old_dual = listed("10.244.7.0-24&fd00:10:244:3::-64", MY_DUAL_VALUE, 9);
        let p = plan(&moved, ME, &[old_dual], None, 1, 4).unwrap();
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|c| matches!(c, Claim::Rekey { from, key, .. }
                if key.ipv6_subnet().is_some()
                    && from.key_form() == "10.244.7.0-24&fd00:10:244:3::-64")));
        // Its IPv6 half still fits the IPv6 pool and stays taken until deleted.
        assert!(p.iter().all(|c| c.ipv6() != Some(s6("fd00:10:244:3::/64"))));
    }

    #[test]
    fn a_full_ipv6_pool_leaves_no_dual_stack_claim() {
        // IPv6SubnetLen 64 in a /62: three subnets after the first, all taken.
        let c = cfg(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/62"}"#,
        );
        let theirs: Vec<ExistingLease> = [1, 2, 3]
            .iter()
            .map(|i| {
                listed(
                    &format!("10.244.{i}.0-24&fd00:10:244:{i}::-64"),
                    THEIR_DUAL_VALUE,
                    9,
                )
            })
            .collect();
        let e = plan(&c, ME, &theirs, None, 1, 4).unwrap_err();
        assert!(
            e.to_string()
                .contains("no free subnet in IPv6Network fd00:10:244::/62"),
            "{e}"
        );
        assert_eq!(e.leased, 3);
        // With one IPv6 subnet free, IPv4 candidates beyond it are not proposed.
        let p = plan(&c, ME, &theirs[..2], None, 1, 4).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].ipv6(), Some(s6("fd00:10:244:3::/64")));
        // Our own key is still reused: it needs no new IPv6 subnet.
        let mut all = theirs;
        all[0] = listed("10.244.1.0-24&fd00:10:244:1::-64", MY_DUAL_VALUE, 9);
        let p = plan(&c, ME, &all, None, 1, 4).unwrap();
        assert_eq!(p.len(), 1);
        assert!(matches!(p[0], Claim::Reuse { .. }));
    }

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
                key: LeaseKey::dual("10.244.7.0/24".parse().unwrap(), None),
                mod_revision: 7
            }
        );
        assert_eq!(
            p[1],
            Claim::Create {
                key: LeaseKey::dual("10.244.9.0/24".parse().unwrap(), None)
            }
        );
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn my_lease_that_no_longer_fits_is_not_reused() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let leases = [lease("10.244.7.0/24", [192, 168, 1, 10])];
        let p = plan(&c, ME, &leases, None, 1, 3).unwrap();
        // Each new claim deletes it in the same transaction (flanneld deletes it).
        assert!(p
            .iter()
            .all(|c| matches!(c, Claim::Rekey { from, .. } if from.key_form() == "10.244.7.0-24")));
        // and nothing overlapping the old /24 is offered
        let old: Subnet = "10.244.7.0/24".parse().unwrap();
        assert!(p.iter().all(|c| !old.contains(c.subnet().unwrap().addr())));
    }

    #[test]
    fn hint_used_only_when_free_and_fitting() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let taken = [lease("10.244.9.0/24", [192, 168, 1, 9])];
        let p = plan(&c, ME, &taken, Some("10.244.9.0/24".parse().unwrap()), 1, 3).unwrap();
        assert!(p
            .iter()
            .all(|c| c.subnet().unwrap() != "10.244.9.0/24".parse().unwrap()));
        let p = plan(&c, ME, &[], Some("10.245.9.0/24".parse().unwrap()), 1, 3).unwrap();
        assert!(p
            .iter()
            .all(|c| c.subnet().unwrap() != "10.245.9.0/24".parse().unwrap()));
        let p = plan(&c, ME, &[], Some("10.244.0.0/24".parse().unwrap()), 1, 3).unwrap();
        assert!(
            p.iter()
                .all(|c| c.subnet().unwrap() != "10.244.0.0/24".parse().unwrap()),
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
                ipv6: None,
                subnet: "10.1.0.16/28".parse().unwrap(),
                attrs: None,
                mod_revision: 1,
                lease_id: 5,
            },
            ExistingLease {
                ipv6: None,
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
                key: LeaseKey::dual("10.244.7.0/24".parse().unwrap(), None),
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
        assert_eq!(p[0].subnet().unwrap(), "10.244.9.0/24".parse().unwrap());
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
                key: LeaseKey::dual("10.1.0.48/28".parse().unwrap(), None)
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
        assert_eq!(p[0].subnet().unwrap(), "10.244.35.0/24".parse().unwrap());
        assert_eq!(p.len(), 252, "the whole pool of 255 but .94, .40 and .41");
        for held in ["10.244.94.0/24", "10.244.40.0/24", "10.244.41.0/24"] {
            assert!(p
                .iter()
                .all(|c| c.subnet().unwrap() != held.parse().unwrap()));
        }
    }

    /// The allocator before it counted gaps: every candidate of the pool walked and
    /// checked against every lease. Kept here as the reference the new one must match.
    fn plan_reference(
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
        mine.sort_by_key(|l| (l.lease_id != 0, l.subnet));
        if let Some(l) = mine.first() {
            out.push(if l.lease_id == 0 {
                Claim::Reserved {
                    key: LeaseKey::dual(l.subnet, None),
                    mod_revision: l.mod_revision,
                }
            } else {
                Claim::Reuse {
                    key: LeaseKey::dual(l.subnet, None),
                    mod_revision: l.mod_revision,
                }
            });
        }
        let taken = |s: &Subnet| {
            leases.iter().any(|l| {
                !l.subnet.contains_subnet(&cfg.ipv4.unwrap().network) && overlaps(&l.subnet, s)
            })
        };
        if let Some(h) = hint {
            if cfg.fits(&h) && !taken(&h) && !out.iter().any(|c| c.subnet().unwrap() == h) {
                out.push(Claim::Create {
                    key: LeaseKey::dual(h, None),
                });
            }
        }
        let step = 1u32 << (32 - u32::from(cfg.ipv4.unwrap().subnet_len));
        let mut free = Vec::new();
        let mut leased = 0u64;
        let mut a = u32::from(cfg.ipv4.unwrap().subnet_min);
        let max_addr = u32::from(cfg.ipv4.unwrap().subnet_max);
        loop {
            if let Ok(s) = Subnet::new_exact(Ipv4Addr::from(a), cfg.ipv4.unwrap().subnet_len) {
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
        let want = max.saturating_sub(out.len()).min(free.len());
        for i in 0..want {
            let j = i + (splitmix(&mut seed) % (free.len() - i) as u64) as usize;
            free.swap(i, j);
        }
        out.extend(free[..want].iter().map(|&subnet| Claim::Create {
            key: LeaseKey::dual(subnet, None),
        }));
        if out.is_empty() {
            return Err(NoFreeSubnet {
                pool: cfg.describe_pool(),
                leased,
            });
        }
        Ok(out)
    }

    /// 5000 leases spread over `cfg`'s pool (every 97th candidate, and some of another
    /// SubnetLen), deterministic.
    fn spread_leases(cfg: &NetworkConfig, n: u32) -> Vec<ExistingLease> {
        let step = 1u32 << (32 - u32::from(cfg.ipv4.unwrap().subnet_len));
        let min = u32::from(cfg.ipv4.unwrap().subnet_min);
        (0..n)
            .map(|i| {
                let len = if i % 50 == 0 {
                    cfg.ipv4.unwrap().subnet_len - 2
                } else {
                    cfg.ipv4.unwrap().subnet_len
                };
                let a = (min + i * 97 * step) & (u32::MAX << (32 - u32::from(len)));
                ExistingLease {
                    ipv6: None,
                    subnet: Subnet::new(Ipv4Addr::from(a), len).unwrap(),
                    attrs: None,
                    mod_revision: i64::from(i),
                    lease_id: 5,
                }
            })
            .collect()
    }

    /// Issue 16: a /8 cut into /30s is 4 M candidates; with 5000 leases the old
    /// allocator made 4 M × 5000 overlap checks (minutes). The plan must look at each
    /// lease a few times and draw about as many candidates as it returns: counted
    /// operations, not wall time.
    #[test]
    fn a_huge_pool_costs_its_leases_not_its_size() {
        let c = cfg(r#"{"Network":"10.0.0.0/8","SubnetLen":30}"#);
        assert_eq!(c.ipv4.unwrap().pool_size(), (1 << 22) - 1);
        let leases = spread_leases(&c, 5000);
        let mut work = Work::default();
        let p = plan_counted(&c, ME, &leases, Hints::default(), 42, 16, &mut work).unwrap();
        assert_eq!(p.len(), 16);
        assert_eq!(work.leases, 5000);
        assert_eq!(work.listed, 0, "the pool is never listed");
        assert!(work.draws <= 32, "{work:?}");
        let mut seen = std::collections::HashSet::new();
        for cl in &p {
            let s = cl.subnet().unwrap();
            assert!(c.fits(&s) && seen.insert(s), "{s}");
            assert!(
                leases.iter().all(|l| !overlaps(&l.subnet, &s)),
                "{s} is taken"
            );
        }
        // A nearly full pool: the few free candidates are listed, not the pool.
        let small = cfg(r#"{"Network":"10.0.0.0/16","SubnetLen":28}"#); // 4095
        let mut leases: Vec<ExistingLease> = (1..4095u32)
            .filter(|i| i % 1000 != 0)
            .map(|i| ExistingLease {
                ipv6: None,
                subnet: Subnet::new(
                    Ipv4Addr::from(u32::from(small.ipv4.unwrap().subnet_min) + (i - 1) * 16),
                    28,
                )
                .unwrap(),
                attrs: None,
                mod_revision: 1,
                lease_id: 5,
            })
            .collect();
        leases.reverse(); // order does not matter
        let mut work = Work::default();
        let p = plan_counted(&small, ME, &leases, Hints::default(), 1, 16, &mut work).unwrap();
        assert_eq!(
            p.len(),
            5,
            "candidates 1000, 2000, 3000, 4000 and 4095 are free"
        );
        assert_eq!(work.listed, 5);
        assert_eq!(
            plan(&small, ME, &leases, None, 1, 16),
            plan_reference(&small, ME, &leases, None, 1, 16)
        );
    }

    proptest::proptest! {
        #[test]
        fn dual_stack_plans_pair_free_fitting_subnets(
            seed in 0u64..,
            taken in proptest::collection::vec((0u8..64, 0u8..64), 0..40),
            max in 1usize..20,
        ) {
            // 63 IPv4 /24s of a /18 and 63 IPv6 /64s of a /58 (the first of each never handed out).
            let c = cfg(r#"{"Network":"10.244.0.0/18","EnableIPv6":true,"IPv6Network":"fd00:10:244::/58"}"#);
            let leases: Vec<ExistingLease> = taken
                .iter()
                .map(|&(a, b)| ExistingLease {
                    subnet: Subnet::new_exact(Ipv4Addr::new(10, 244, a, 0), 24).unwrap(),
                    ipv6: Some(Subnet6::new_exact(format!("fd00:10:244:{b:x}::").parse().unwrap(), 64).unwrap()),
                    attrs: None,
                    mod_revision: 1,
                    lease_id: 1,
                })
                .collect();
            match plan(&c, ME, &leases, None, seed, max) {
                Ok(p) => {
                    proptest::prop_assert!(p.len() <= max);
                    let mut v6s = std::collections::HashSet::new();
                    for claim in &p {
                        let v6 = claim.ipv6().unwrap();
                        proptest::prop_assert!(c.ipv6.unwrap().fits(&v6));
                        proptest::prop_assert!(leases.iter().all(|l| l.ipv6 != Some(v6)));
                        proptest::prop_assert!(leases.iter().all(|l| l.subnet != claim.subnet().unwrap()));
                        proptest::prop_assert!(v6s.insert(v6));
                        proptest::prop_assert_eq!(LeaseKey::parse(&claim.key().key_form()).unwrap(), claim.key());
                    }
                }
                Err(_) => {
                    let used4: std::collections::HashSet<u8> = taken.iter().map(|t| t.0).filter(|a| (1..64).contains(a)).collect();
                    let used6: std::collections::HashSet<u8> = taken.iter().map(|t| t.1).filter(|b| (1..64).contains(b)).collect();
                    proptest::prop_assert!(used4.len() == 63 || used6.len() == 63);
                }
            }
        }
    }

    proptest::proptest! {
        /// Pools too big to list (the draw path): every candidate fits, is free,
        /// distinct, and the count is what was asked for.
        #[test]
        fn huge_pools_draw_free_candidates(seed in 0u64.., n in 0u32..3000, max in 1usize..40, len in 26u8..=30) {
            let c = cfg(&format!(r#"{{"Network":"10.0.0.0/8","SubnetLen":{len}}}"#));
            let leases = spread_leases(&c, n);
            let mut work = Work::default();
            let p = plan_counted(&c, ME, &leases, Hints::default(), seed, max, &mut work).unwrap();
            proptest::prop_assert_eq!(p.len(), max);
            proptest::prop_assert_eq!(work.listed, 0);
            proptest::prop_assert!(work.draws <= 4 * max as u64 + 8, "{:?}", work);
            let mut seen = std::collections::HashSet::new();
            for cl in &p {
                let s = cl.subnet().unwrap();
                proptest::prop_assert!(c.fits(&s) && seen.insert(s));
                proptest::prop_assert!(leases.iter().all(|l| !overlaps(&l.subnet, &s)), "{} taken", s);
            }
        }

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
            let leases: Vec<ExistingLease> = taken_idx.iter().filter(|i| **i < count).map(|i| ExistingLease { ipv6: None,
                subnet: Subnet::new(Ipv4Addr::from(net + i * step), sub_len).unwrap(),
                attrs: None,
                mod_revision: 1,
                lease_id: 5,
            }).collect();
            // Pools of up to 65536 are listed in pool order and shuffled as before:
            // the same seed gives exactly the same plan as the old allocator.
            let hint = taken_idx.first().map(|i| Subnet::new(Ipv4Addr::from(net + (i % count) * step), sub_len).unwrap());
            proptest::prop_assert_eq!(
                plan(&c, ME, &leases, hint, seed, 7),
                plan_reference(&c, ME, &leases, hint, seed, 7)
            );
            match plan(&c, ME, &leases, None, seed, 1000) {
                Ok(p) => {
                    let mut seen = std::collections::HashSet::new();
                    for cl in &p {
                        let s = cl.subnet().unwrap();
                        proptest::prop_assert!(c.fits(&s), "{s} outside pool");
                        proptest::prop_assert_eq!(s.addr(), Subnet::new(s.addr(), sub_len).unwrap().addr(), "host bits");
                        proptest::prop_assert!(leases.iter().all(|l| !overlaps(&l.subnet, &s)), "{s} overlaps");
                        proptest::prop_assert!(seen.insert(s), "duplicate {s}");
                    }
                }
                Err(e) => {
                    proptest::prop_assert_eq!(e.leased, c.ipv4.unwrap().pool_size());
                }
            }
        }
    }
}
