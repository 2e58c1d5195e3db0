//! An in-memory registry with the etcd behaviour the control plane depends on, for
//! the simulation ([`crate::sim`]): one revision counter; keys with create and mod
//! revisions; claims by compare-and-swap exactly as `Registry::claim` makes them
//! (create if absent, reuse if unchanged, hold a reservation); leases that expire;
//! and a log of watch events that every watcher reads from its own cursor. It counts
//! what an etcd would have served: range requests and the keys they returned,
//! transactions, lease grants, and watch events delivered (one event to 1000 watchers
//! is 1000 deliveries). No I/O, no clock: time is the caller's `now_ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vxmesh_control::allocator::{Claim, ExistingLease};
use vxmesh_control::lease::{lease_key_of, parse_lease_key, LeaseAttrs, LeaseKey};
use vxmesh_control::registry::{Entry, Listing, WatchEvent};

/// What an etcd would have served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegStats {
    pub ranges: u64,
    /// Keys returned by range requests (the cost of full-prefix listings).
    pub range_keys: u64,
    pub txns: u64,
    /// Claims that lost their compare-and-swap.
    pub txns_failed: u64,
    pub lease_grants: u64,
    /// Events written to the log.
    pub events: u64,
    /// Events delivered to watchers (each event times the watchers at that moment).
    pub delivered: u64,
}

#[derive(Debug)]
struct Lease {
    expires_ms: u64,
    keys: BTreeSet<String>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MemRegistry {
    prefix: String,
    revision: i64,
    keys: BTreeMap<String, Entry>,
    /// The allocator's view of each key, parsed once when written.
    parsed: BTreeMap<String, ExistingLease>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
    log: Vec<WatchEvent>,
    watchers: u64,
    pub stats: RegStats,
}

impl MemRegistry {
    pub fn new(prefix: &str) -> MemRegistry {
        MemRegistry {
            prefix: prefix.trim_end_matches('/').to_string(),
            revision: 1,
            keys: BTreeMap::new(),
            parsed: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 0x1000,
            log: Vec::new(),
            watchers: 0,
            stats: RegStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// A full listing (a range request over the prefix).
    pub fn list(&mut self) -> Listing {
        self.stats.ranges += 1;
        self.stats.range_keys += self.keys.len() as u64;
        Listing {
            revision: self.revision,
            entries: self.keys.values().cloned().collect(),
        }
    }

    /// The same listing as the allocator reads it (values parsed once, at write).
    pub fn list_for_allocator(&mut self) -> Vec<ExistingLease> {
        self.stats.ranges += 1;
        self.stats.range_keys += self.keys.len() as u64;
        self.parsed.values().cloned().collect()
    }

    pub fn add_watcher(&mut self) -> usize {
        self.watchers += 1;
        self.log.len()
    }

    /// Where a watch started now would begin (the revision a listing taken now has).
    pub fn cursor(&self) -> usize {
        self.log.len()
    }

    /// A watcher from an earlier `cursor` (a listing's revision): the events since
    /// then are delivered to it first, and counted.
    pub fn add_watcher_from(&mut self, cursor: usize) -> usize {
        let from = cursor.min(self.log.len());
        self.stats.delivered += (self.log.len() - from) as u64;
        self.watchers += 1;
        from
    }

    /// The listing a range request returned, not counted again (the allocator's
    /// listing as the watch receives it).
    pub fn listing_uncounted(&self) -> Listing {
        Listing {
            revision: self.revision,
            entries: self.keys.values().cloned().collect(),
        }
    }

    pub fn remove_watcher(&mut self) {
        self.watchers = self.watchers.saturating_sub(1);
    }

    /// The events from `cursor` on, and the cursor after them.
    pub fn events_since(&self, cursor: usize) -> (&[WatchEvent], usize) {
        let from = cursor.min(self.log.len());
        (&self.log[from..], self.log.len())
    }

    fn emit(&mut self, ev: WatchEvent) {
        self.stats.events += 1;
        self.stats.delivered += self.watchers;
        self.log.push(ev);
    }

    fn put(&mut self, key: String, value: Vec<u8>, lease: i64) -> i64 {
        self.revision += 1;
        let rev = self.revision;
        let create_revision = self.keys.get(&key).map_or(rev, |e| e.create_revision);
        if let Some(old) = self.keys.get(&key) {
            if old.lease != 0 && old.lease != lease {
                if let Some(l) = self.leases.get_mut(&old.lease) {
                    l.keys.remove(&key);
                }
            }
        }
        let e = Entry {
            key: key.clone(),
            value,
            create_revision,
            mod_revision: rev,
            lease,
        };
        if let Some(subnet) = parse_lease_key(&key) {
            self.parsed.insert(
                key.clone(),
                ExistingLease {
                    subnet,
                    ipv6: LeaseKey::parse(&key).ok().and_then(|k| k.ipv6_subnet()),
                    attrs: LeaseAttrs::parse(&e.value).ok(),
                    mod_revision: rev,
                    lease_id: lease,
                },
            );
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
        self.keys.insert(key, e.clone());
        self.emit(WatchEvent::Put(e));
        rev
    }

    /// Deletes a key (as `etcdctl del` or an expired lease does).
    pub fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.keys.remove(key) else {
            return false;
        };
        self.parsed.remove(key);
        if let Some(l) = self.leases.get_mut(&old.lease) {
            l.keys.remove(key);
        }
        self.revision += 1;
        let revision = self.revision;
        self.emit(WatchEvent::Delete {
            key: key.to_string(),
            revision,
        });
        true
    }

    /// A claim, exactly as `Registry::claim` makes it: `Some((lease id, revision))`
    /// when won.
    pub fn claim(
        &mut self,
        claim: &Claim,
        attrs: &LeaseAttrs,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Option<(i64, i64)> {
        let key = lease_key_of(&self.prefix, &claim.key());
        let value = attrs.to_json().into_bytes();
        let current = self
            .keys
            .get(&key)
            .map(|e| (e.mod_revision, e.value.clone()));
        self.stats.txns += 1;
        match claim {
            Claim::Reserved { mod_revision, .. } => {
                let (m, v) = current?;
                if m != *mod_revision {
                    self.stats.txns_failed += 1;
                    return None;
                }
                if v == value {
                    return Some((0, self.revision));
                }
                let rev = self.put(key, value, 0);
                Some((0, rev))
            }
            Claim::Create { .. } | Claim::Reuse { .. } | Claim::Rekey { .. } => {
                let ok = match (claim, &current) {
                    (Claim::Create { .. }, None) => true,
                    (Claim::Reuse { mod_revision, .. }, Some((m, _))) => m == mod_revision,
                    (
                        Claim::Rekey {
                            from,
                            from_mod_revision,
                            ..
                        },
                        None,
                    ) => {
                        let old = lease_key_of(&self.prefix, from);
                        let unchanged = self
                            .keys
                            .get(&old)
                            .is_some_and(|e| e.mod_revision == *from_mod_revision);
                        // etcd deletes and puts in one revision; here, two.
                        unchanged && self.delete(&old)
                    }
                    _ => false,
                };
                self.stats.lease_grants += 1;
                if !ok {
                    self.stats.txns_failed += 1;
                    return None;
                }
                let id = self.next_lease;
                self.next_lease += 1;
                self.leases.insert(
                    id,
                    Lease {
                        expires_ms: now_ms + ttl_ms,
                        keys: BTreeSet::new(),
                    },
                );
                let rev = self.put(key, value, id);
                Some((id, rev))
            }
        }
    }

    /// Revokes a lease now (its keys are deleted).
    pub fn revoke(&mut self, id: i64) {
        if let Some(l) = self.leases.remove(&id) {
            for k in l.keys {
                self.delete(&k);
            }
        }
    }

    /// Expires the leases due by `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.revoke(id);
        }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.keys.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use vxmesh_control::subnet::Subnet;

    fn attrs(ip: u8) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            Ipv4Addr::new(172, 20, 0, ip),
            1,
            format!("0e:00:00:00:00:{ip:02x}").parse().unwrap(),
        )
    }

    #[test]
    fn claims_follow_etcd_compare_and_swap() {
        let mut r = MemRegistry::new("/coreos.com/network/");
        let s: Subnet = "10.244.5.0/24".parse().unwrap();
        let w = r.add_watcher();
        let (id, rev) = r
            .claim(
                &Claim::Create {
                    key: LeaseKey::dual(s, None),
                },
                &attrs(1),
                1000,
                0,
            )
            .unwrap();
        assert_eq!(
            r.claim(
                &Claim::Create {
                    key: LeaseKey::dual(s, None)
                },
                &attrs(2),
                1000,
                0
            ),
            None,
            "exists"
        );
        let key = "/coreos.com/network/subnets/10.244.5.0-24";
        let e = r.get(key).unwrap().clone();
        assert_eq!((e.create_revision, e.mod_revision, e.lease), (rev, rev, id));
        // Reuse only at the listed revision; the create revision stays.
        assert_eq!(
            r.claim(
                &Claim::Reuse {
                    key: LeaseKey::dual(s, None),
                    mod_revision: rev - 1
                },
                &attrs(1),
                1000,
                0
            ),
            None
        );
        let (id2, rev2) = r
            .claim(
                &Claim::Reuse {
                    key: LeaseKey::dual(s, None),
                    mod_revision: rev,
                },
                &attrs(1),
                1000,
                0,
            )
            .unwrap();
        assert_ne!(id2, id);
        assert_eq!(r.get(key).unwrap().create_revision, rev);
        assert_eq!(r.stats.txns_failed, 2);
        // The old lease no longer holds the key: its expiry deletes nothing.
        r.revoke(id);
        assert!(r.get(key).is_some());
        r.expire(999);
        assert!(r.get(key).is_some());
        r.expire(1000);
        assert!(r.get(key).is_none());
        let (events, next) = r.events_since(w);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(events[2], WatchEvent::Delete { revision, .. } if revision > rev2));
        assert_eq!(next, 3);
        assert_eq!(r.stats.delivered, 3);
        assert!(r.list().entries.is_empty());
        assert_eq!(r.stats.ranges, 1);
    }

    #[test]
    fn reservations_are_held_without_a_lease() {
        let mut r = MemRegistry::new("/p");
        let s: Subnet = "10.244.7.0/24".parse().unwrap();
        let rev = r.put(
            "/p/subnets/10.244.7.0-24".into(),
            attrs(7).to_json().into_bytes(),
            0,
        );
        let held = r.claim(
            &Claim::Reserved {
                key: LeaseKey::dual(s, None),
                mod_revision: rev,
            },
            &attrs(7),
            1000,
            0,
        );
        assert_eq!(held, Some((0, rev)), "unchanged: nothing written");
        let moved = r.claim(
            &Claim::Reserved {
                key: LeaseKey::dual(s, None),
                mod_revision: rev,
            },
            &attrs(8),
            1000,
            0,
        );
        assert!(moved.is_some_and(|(id, new)| id == 0 && new > rev));
        assert_eq!(r.list_for_allocator()[0].lease_id, 0);
    }
}
