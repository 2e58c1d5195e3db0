//! How full the subnet pools are: a pure count over the registry's lease keys, and the
//! one warning the agent logs when a pool crosses [`WARN_PERCENT`]. A dual-stack
//! network has two pools (each node takes a subnet of both), and either can run out
//! first: an IPv6Network of /56 holds only 256 subnets of /64.

use std::cell::Cell;
use std::collections::BTreeMap;

use crate::config::{Ipv4Pool, Ipv6Pool};

/// Above this share of the pool in use, the agent warns (once per crossing) and
/// `vxmeshctl leases` flags the pool as nearly exhausted.
pub const WARN_PERCENT: u64 = 90;

/// Subnets of the pool (SubnetMin..=SubnetMax, SubnetLen) in use and in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PoolUsage {
    pub total: u64,
    pub used: u64,
}

impl PoolUsage {
    /// Counts the distinct leased subnets that take a place in `cfg`'s pool (right
    /// length, between SubnetMin and SubnetMax). Leases outside the pool, or of
    /// another length, take no place in it and are not counted. The tests' oracle:
    /// the agent and `vxmeshctl` count with [`LeasedSubnets::usage`].
    #[cfg(test)]
    pub fn of(
        pool: &Ipv4Pool,
        leased: impl IntoIterator<Item = crate::subnet::Subnet>,
    ) -> PoolUsage {
        let (total, range) = pool4(pool);
        Self::count(
            total,
            range,
            leased
                .into_iter()
                .map(|s| (s.prefix_len(), u32::from(s.addr()))),
        )
    }

    /// [`PoolUsage::of`] for the IPv6 pool (IPv6SubnetMin..=IPv6SubnetMax at
    /// IPv6SubnetLen), over the IPv6 halves of the keys. A pool of more than
    /// `u64::MAX` subnets is counted as `u64::MAX`. The tests' oracle for
    /// [`LeasedSubnets::usage6`].
    #[cfg(test)]
    pub fn of6(
        pool: &Ipv6Pool,
        leased: impl IntoIterator<Item = crate::subnet6::Subnet6>,
    ) -> PoolUsage {
        let (total, range) = pool6(pool);
        Self::count(
            total,
            range,
            leased
                .into_iter()
                .map(|s| (s.prefix_len(), u128::from(s.addr()))),
        )
    }

    /// `used` of `total` places (never more than `total`).
    fn capped(total: u64, used: u64) -> PoolUsage {
        PoolUsage {
            total,
            used: used.min(total),
        }
    }

    /// Both families' count: the distinct `(length, address)` pairs of the pool's
    /// length between its first and last subnet, out of `total`.
    #[cfg(test)]
    fn count<A: Ord>(
        total: u64,
        (len, min, max): Range<A>,
        leased: impl Iterator<Item = (u8, A)>,
    ) -> PoolUsage {
        let used: std::collections::BTreeSet<A> = leased
            .filter(|(l, a)| *l == len && min <= *a && *a <= max)
            .map(|(_, a)| a)
            .collect();
        Self::capped(total, used.len() as u64)
    }

    pub fn free(&self) -> u64 {
        self.total - self.used
    }

    /// Whole percent in use (0 for an empty pool).
    pub fn used_percent(&self) -> u64 {
        let p = (u128::from(self.used) * 100)
            .checked_div(u128::from(self.total))
            .unwrap_or(0);
        u64::try_from(p).unwrap_or(100)
    }

    /// At or above [`WARN_PERCENT`] in use.
    pub fn nearly_full(&self) -> bool {
        self.total > 0
            && u128::from(self.used) * 100 >= u128::from(self.total) * u128::from(WARN_PERCENT)
    }
}

/// The subnets the registry's lease keys name, kept as keys come and go, so that a
/// pool's usage does not need a parse of every key per batch of events. Each subnet
/// counts the keys that name it; [`Self::usage`] and [`Self::usage6`] give what the
/// tests' walk over the keys' subnets (`PoolUsage::of`, `PoolUsage::of6`) gives (a
/// property test compares them). The first count for a pool walks its range; after that a
/// subnet that appears or goes adjusts the count, so a batch costs O(log N) per
/// changed key, not a walk of N subnets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeasedSubnets {
    v4: Places<u32>,
    v6: Places<u128>,
}

/// The IPv4 pool's size and its range of places: SubnetMin..=SubnetMax at SubnetLen.
fn pool4(pool: &Ipv4Pool) -> (u64, Range<u32>) {
    let range = (
        pool.subnet_len,
        u32::from(pool.subnet_min),
        u32::from(pool.subnet_max),
    );
    (pool.pool_size(), range)
}

/// The IPv6 pool's size (at most `u64::MAX`) and its range of places.
fn pool6(pool: &Ipv6Pool) -> (u64, Range<u128>) {
    let range = (
        pool.subnet_len,
        u128::from(pool.subnet_min),
        u128::from(pool.subnet_max),
    );
    (u64::try_from(pool.pool_size()).unwrap_or(u64::MAX), range)
}

/// A subnet as the pools compare it: (prefix length, first address).
type Place<A> = (u8, A);

/// Sorted subnets of one family, each with the number of keys naming it, and the
/// last range counted.
#[derive(Debug, Clone, Default)]
struct Places<A: Copy> {
    /// (prefix length, first address) → keys naming that subnet.
    keys: BTreeMap<Place<A>, u32>,
    /// The last range asked for, (length, min, max), and the distinct subnets in it,
    /// kept up to date as subnets appear and go. A `Cell`: counting is a read.
    memo: Cell<Option<(Range<A>, u64)>>,
}

/// A pool's subnets as [`Places`] counts them: (prefix length, min, max).
type Range<A> = (u8, A, A);

impl<A: Ord + Copy> PartialEq for Places<A> {
    /// The subnets alone; the memo is a cache.
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
    }
}

impl<A: Ord + Copy> Eq for Places<A> {}

impl<A: Ord + Copy> Places<A> {
    fn add(&mut self, a: Place<A>) {
        let n = self.keys.entry(a).or_insert(0);
        *n = n.saturating_add(1);
        if *n == 1 {
            self.adjust(a, |c| c.saturating_add(1));
        }
    }

    fn remove(&mut self, a: Place<A>) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.keys.entry(a) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
                self.adjust(a, |c| c.saturating_sub(1));
            }
        }
    }

    /// A subnet appeared or went: the memo's count moves if its range holds it.
    fn adjust(&mut self, (len, addr): Place<A>, f: impl Fn(u64) -> u64) {
        if let Some(((l, min, max), c)) = self.memo.get() {
            if l == len && min <= addr && addr <= max {
                self.memo.set(Some(((l, min, max), f(c))));
            }
        }
    }

    /// The distinct subnets of length `len` from `min` to `max`.
    fn count(&self, (len, min, max): Range<A>) -> u64 {
        if min > max {
            return 0;
        }
        if let Some((range, c)) = self.memo.get() {
            if range == (len, min, max) {
                return c;
            }
        }
        let c = self.keys.range((len, min)..=(len, max)).count() as u64;
        self.memo.set(Some(((len, min, max), c)));
        c
    }
}

impl LeasedSubnets {
    pub fn from_keys<'k>(keys: impl IntoIterator<Item = &'k str>) -> Self {
        let mut l = LeasedSubnets::default();
        for k in keys {
            l.add_key(k);
        }
        l
    }

    /// The subnets `key` names: its IPv4 part as `crate::lease::parse_lease_key`
    /// reads it, and its IPv6 part.
    fn parts(key: &str) -> (Option<Place<u32>>, Option<Place<u128>>) {
        let v4 = crate::lease::parse_lease_key(key).map(|s| (s.prefix_len(), u32::from(s.addr())));
        let v6 = crate::lease::LeaseKey::parse(key)
            .ok()
            .and_then(|k| k.ipv6_subnet())
            .map(|s| (s.prefix_len(), u128::from(s.addr())));
        (v4, v6)
    }

    /// A key now known (call once per key).
    pub fn add_key(&mut self, key: &str) {
        let (v4, v6) = Self::parts(key);
        if let Some(a) = v4 {
            self.v4.add(a);
        }
        if let Some(a) = v6 {
            self.v6.add(a);
        }
    }

    /// A key gone (call once per key that was added).
    pub fn remove_key(&mut self, key: &str) {
        let (v4, v6) = Self::parts(key);
        if let Some(a) = v4 {
            self.v4.remove(a);
        }
        if let Some(a) = v6 {
            self.v6.remove(a);
        }
    }

    /// The IPv4 pool's usage: the distinct subnets of SubnetLen from SubnetMin to
    /// SubnetMax that the keys name.
    pub fn usage(&self, pool: &Ipv4Pool) -> PoolUsage {
        let (total, range) = pool4(pool);
        PoolUsage::capped(total, self.v4.count(range))
    }

    /// The IPv6 pool's usage: the same over the keys' IPv6 subnets (a pool of more
    /// than `u64::MAX` subnets is counted as `u64::MAX`).
    pub fn usage6(&self, pool: &Ipv6Pool) -> PoolUsage {
        let (total, range) = pool6(pool);
        PoolUsage::capped(total, self.v6.count(range))
    }
}

/// Says once when the pool crosses [`WARN_PERCENT`], and again only after it has
/// dropped below and crossed anew.
#[derive(Debug, Default)]
pub struct PoolAlarm {
    raised: bool,
    ipv6: bool,
}

impl PoolAlarm {
    /// The alarm of the IPv6 pool (its warning names the IPv6 fields).
    pub fn ipv6() -> PoolAlarm {
        PoolAlarm {
            raised: false,
            ipv6: true,
        }
    }

    /// The warning to log for `u`, if this is a crossing.
    pub fn observe(&mut self, u: PoolUsage) -> Option<String> {
        let full = u.nearly_full();
        let crossed = full && !self.raised;
        self.raised = full;
        let (pool, fields) = if self.ipv6 {
            (
                "IPv6 subnet pool",
                "IPv6Network/IPv6SubnetMin/IPv6SubnetMax",
            )
        } else {
            ("subnet pool", "Network/SubnetMin/SubnetMax")
        };
        crossed.then(|| {
            format!(
                "{pool} {}% used ({} of {} subnets, {} free): new nodes will soon get no subnet; widen {fields} or remove stale leases (vxmeshctl leases)",
                u.used_percent(),
                u.used,
                u.total,
                u.free()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::Subnet;
    use crate::subnet6::Subnet6;
    use std::collections::BTreeSet;

    fn cfg() -> Ipv4Pool {
        // 10.244.0.0/16 with /24s, pool 10.244.1.0 ..= 10.244.10.0: 10 subnets.
        Ipv4Pool {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            subnet_min: "10.244.1.0".parse().unwrap(),
            subnet_max: "10.244.10.0".parse().unwrap(),
        }
    }

    fn s(x: &str) -> Subnet {
        x.parse().unwrap()
    }

    #[test]
    fn counts_distinct_subnets_inside_the_pool() {
        let u = PoolUsage::of(
            &cfg(),
            [
                s("10.244.1.0/24"),
                s("10.244.1.0/24"),  // the same subnet twice (two keys)
                s("10.244.10.0/24"), // SubnetMax itself
                s("10.244.0.0/24"),  // below SubnetMin
                s("10.244.11.0/24"), // above SubnetMax
                s("10.244.4.0/25"),  // another length
                s("10.99.1.0/24"),   // another network
            ],
        );
        assert_eq!(u, PoolUsage { total: 10, used: 2 });
        assert_eq!(
            (u.free(), u.used_percent(), u.nearly_full()),
            (8, 20, false)
        );
        let nine = (1..=9).map(|i| s(&format!("10.244.{i}.0/24")));
        let u = PoolUsage::of(&cfg(), nine);
        assert_eq!((u.free(), u.used_percent(), u.nearly_full()), (1, 90, true));
    }

    #[test]
    fn counts_the_ipv6_pool_from_the_ipv6_halves() {
        // fd00:10:244::/56 with /64s: 256 subnets, the pool from fd00:10:244:1:: (flannel's
        // default IPv6SubnetMin is the second subnet) to fd00:10:244:ff::, 255.
        let pool = pool6();
        let s6 = |x: &str| -> Subnet6 { x.parse().unwrap() };
        let u = PoolUsage::of6(
            &pool,
            [
                s6("fd00:10:244:1::/64"),
                s6("fd00:10:244:1::/64"),  // twice
                s6("fd00:10:244:ff::/64"), // IPv6SubnetMax
                s6("fd00:10:244::/64"),    // below IPv6SubnetMin
                s6("fd00:10:244:7::/80"),  // another length
                s6("fd00:99::/64"),        // another network
            ],
        );
        assert_eq!(
            u,
            PoolUsage {
                total: 255,
                used: 2
            }
        );
        // A pool larger than u64 counts as u64::MAX, and the percentages do not overflow.
        let huge = Ipv6Pool {
            network: "fd00::/8".parse().unwrap(),
            subnet_len: 127,
            subnet_min: "fd00::2".parse().unwrap(),
            subnet_max: "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap(),
        };
        let u = PoolUsage::of6(&huge, [s6("fd00::2/127")]);
        assert_eq!(
            (u.total, u.used, u.used_percent(), u.nearly_full()),
            (u64::MAX, 1, 0, false)
        );
        let full = PoolUsage {
            total: u64::MAX,
            used: u64::MAX,
        };
        assert_eq!((full.used_percent(), full.nearly_full()), (100, true));
        let w = PoolAlarm::ipv6().observe(full).unwrap();
        assert!(
            w.starts_with("IPv6 subnet pool 100% used") && w.contains("widen IPv6Network/"),
            "{w}"
        );
    }

    fn pool6() -> Ipv6Pool {
        Ipv6Pool {
            network: "fd00:10:244::/56".parse().unwrap(),
            subnet_len: 64,
            subnet_min: "fd00:10:244:1::".parse().unwrap(),
            subnet_max: "fd00:10:244:ff::".parse().unwrap(),
        }
    }

    /// What the agent counted before [`LeasedSubnets`]: every key parsed, both pools.
    fn afresh(keys: &BTreeSet<String>) -> (PoolUsage, PoolUsage) {
        (
            PoolUsage::of(
                &cfg(),
                keys.iter().filter_map(|k| crate::lease::parse_lease_key(k)),
            ),
            PoolUsage::of6(
                &pool6(),
                keys.iter().filter_map(|k| {
                    crate::lease::LeaseKey::parse(k)
                        .ok()
                        .and_then(|k| k.ipv6_subnet())
                }),
            ),
        )
    }

    #[test]
    fn leased_subnets_count_as_the_keys_parsed_afresh() {
        const P: &str = "/coreos.com/network/subnets/";
        let keys = [
            "10.244.1.0-24",
            "10.244.1.0-24&fd00:10:244:1::-64", // the same IPv4 subnet, dual stack
            "10.244.10.0-24",                   // SubnetMax
            "10.244.0.0-24",                    // below SubnetMin
            "10.244.4.0-25",                    // another length
            "0.0.0.0-0&fd00:10:244:ff::-64",    // IPv6 only
            "10.244.2.0-24&fd00:10:244::-64",   // IPv6 half below IPv6SubnetMin
            "not-a-lease",
            "10.244.3.7-24", // host bits set
        ];
        let mut known = BTreeSet::new();
        let mut l = LeasedSubnets::default();
        // A fixed walk through adds and removes of every key, each step checked.
        let mut x: u32 = 7;
        for _ in 0..400 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let key = format!("{P}{}", keys[(x >> 16) as usize % keys.len()]);
            if known.insert(key.clone()) {
                l.add_key(&key);
            } else {
                known.remove(&key);
                l.remove_key(&key);
            }
            assert_eq!(
                (l.usage(&cfg()), l.usage6(&pool6())),
                afresh(&known),
                "{known:?}"
            );
            assert_eq!(
                l,
                LeasedSubnets::from_keys(known.iter().map(|k| k.as_str()))
            );
            // Now and then another pool is counted (its range walked, the first
            // pool's count forgotten), and a copy counts as the original.
            if x % 5 == 0 {
                let mut wide = cfg();
                wide.subnet_min = "10.244.0.0".parse().unwrap();
                let by_walk = PoolUsage::of(
                    &wide,
                    known
                        .iter()
                        .filter_map(|k| crate::lease::parse_lease_key(k)),
                );
                assert_eq!(l.usage(&wide), by_walk, "{known:?}");
                assert_eq!(l.clone().usage(&wide), by_walk);
            }
        }
        // All of them at once: three IPv4 subnets (10.244.1, .2 and .10) and two IPv6
        // subnets (fd00:10:244:1:: and :ff::) in the pools.
        let all: BTreeSet<String> = keys.iter().map(|k| format!("{P}{k}")).collect();
        let l = LeasedSubnets::from_keys(all.iter().map(|k| k.as_str()));
        assert_eq!(l.usage(&cfg()).used, 3);
        assert_eq!(l.usage6(&pool6()).used, 2);
        assert_eq!((l.usage(&cfg()), l.usage6(&pool6())), afresh(&all));
        // An empty table counts nothing.
        assert_eq!(LeasedSubnets::default().usage(&cfg()).used, 0);
    }

    #[test]
    fn warns_once_per_crossing() {
        let at = |used| PoolUsage { total: 10, used };
        let mut a = PoolAlarm::default();
        assert_eq!(a.observe(at(8)), None);
        let w = a.observe(at(9)).expect("crossing 90 %");
        assert!(w.contains("90% used (9 of 10 subnets, 1 free)"), "{w}");
        assert_eq!(a.observe(at(10)), None);
        assert_eq!(a.observe(at(9)), None);
        assert_eq!(a.observe(at(5)), None);
        assert!(a.observe(at(10)).is_some(), "a new crossing warns again");
        assert_eq!(a.observe(PoolUsage::default()), None);
    }
}
