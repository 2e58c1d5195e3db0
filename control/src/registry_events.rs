//! What the registry shell reports, as plain data (no I/O): one key under
//! `<prefix>/subnets/` with the etcd metadata the pure cores decide on, a consistent
//! listing of them, and the watch's events.
//!
//! The etcd revisions carried here are what makes decisions reproducible: the
//! create revision orders two leases that claim the same thing (first writer wins,
//! [`crate::peers`]), the lease id tells a reservation (0: no TTL) from a lease
//! ([`crate::allocator`]), and a listing's or event's revision lets
//! [`crate::own_key`] ignore news older than the node's own claim.

use crate::allocator::ExistingLease;
use crate::lease::{parse_lease_key, LeaseAttrs, LeaseKey};

/// One key under `<prefix>/subnets/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// etcd revision at which the key was created (unchanged by later puts; a key
    /// deleted and written again gets a new one).
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The etcd lease id attached to the key (0 if none: a reservation).
    pub lease: i64,
}

/// A consistent listing of the subnets prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub revision: i64,
    pub entries: Vec<Entry>,
}

impl Listing {
    /// The entries as the allocator sees them (keys that are not subnets skipped; the
    /// IPv6 part of a dual-stack key read with [`LeaseKey`], `None` when it is not in
    /// flannel's exact form — the IPv4 part still occupies its subnet).
    pub fn existing_leases(&self) -> Vec<ExistingLease> {
        self.entries
            .iter()
            .filter_map(|e| {
                Some(ExistingLease {
                    subnet: parse_lease_key(&e.key)?,
                    ipv6: LeaseKey::parse(&e.key).ok().and_then(|k| k.ipv6_subnet()),
                    attrs: LeaseAttrs::parse(&e.value).ok(),
                    mod_revision: e.mod_revision,
                    lease_id: e.lease,
                })
            })
            .collect()
    }
}

/// What the watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A full listing: replace everything known (first sync, or after compaction).
    Snapshot(Listing),
    /// A key was created or changed (`mod_revision` is the event's revision).
    Put(Entry),
    /// A key was deleted or its etcd lease expired, at `revision`.
    Delete { key: String, revision: i64 },
}

impl WatchEvent {
    /// The etcd revision this event reports the registry at.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Snapshot(l) => l.revision,
            WatchEvent::Put(e) => e.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_leases_skip_non_subnet_keys() {
        let v = br#"{"PublicIP":"192.168.56.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5a:11:22:33:11"}}"#;
        let l = Listing {
            revision: 9,
            entries: vec![
                Entry {
                    key: "/coreos.com/network/subnets/10.244.1.0-24".into(),
                    value: v.to_vec(),
                    create_revision: 2,
                    mod_revision: 5,
                    lease: 0,
                },
                Entry {
                    key: "/coreos.com/network/subnets/garbage".into(),
                    value: v.to_vec(),
                    create_revision: 3,
                    mod_revision: 3,
                    lease: 7,
                },
            ],
        };
        let e = l.existing_leases();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].subnet.to_string(), "10.244.1.0/24");
        assert_eq!((e[0].mod_revision, e[0].lease_id), (5, 0));
        assert_eq!(WatchEvent::Snapshot(l).revision(), 9);
    }
}
