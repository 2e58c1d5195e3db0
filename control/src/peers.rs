//! The set of peer nodes, kept from the registry's leases (no I/O).
//!
//! Fed a full listing ([`PeerTable::reset`]) or single watch events
//! ([`PeerTable::put`], [`PeerTable::delete`]), it returns what changed, which the
//! agent turns into route/neighbour updates and a new forwarding table. Leases that
//! are ours, of another backend type, of another VNI, or that do not parse are not
//! peers; each such key is reported once ([`Skip`]) until its value changes, so a
//! bad value never floods the log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::lease::LeaseAttrs;
use crate::subnet::Subnet;
use vxmesh_dataplane::fib::PeerVtep;
use vxmesh_dataplane::wire::MacAddr;

/// A remote node reachable through the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Peer {
    pub subnet: Subnet,
    pub public_ip: Ipv4Addr,
    #[serde(serialize_with = "ser_mac")]
    pub vtep_mac: MacAddr,
}

fn ser_mac<S: serde::Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

impl Peer {
    /// The peer's VTEP address, `<subnet>.0`: next hop of its route.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    pub fn to_vtep(&self) -> PeerVtep {
        PeerVtep {
            vtep_mac: self.vtep_mac,
            public_ip: self.public_ip,
            vtep_ip: self.vtep_ip(),
        }
    }
}

/// What changed in the peer set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Added(Peer),
    /// Same subnet, new PublicIP and/or VtepMAC.
    Updated {
        old: Peer,
        new: Peer,
    },
    Removed(Peer),
}

/// A lease that is not a peer, and why (reported once per key and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub key: String,
    pub why: String,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct PeerTable {
    own: Option<Subnet>,
    vni: u32,
    peers: BTreeMap<Subnet, Peer>,
    /// (key, value) pairs already reported as skipped.
    skipped: BTreeSet<(String, Vec<u8>)>,
}

impl PeerTable {
    pub fn new(vni: u32) -> Self {
        PeerTable {
            own: None,
            vni,
            peers: BTreeMap::new(),
            skipped: BTreeSet::new(),
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Sets our own subnet (its lease is never a peer). Removes it if it was one.
    pub fn set_own(&mut self, own: Option<Subnet>) -> Vec<PeerChange> {
        self.own = own;
        match own.and_then(|s| self.peers.remove(&s)) {
            Some(p) => vec![PeerChange::Removed(p)],
            None => vec![],
        }
    }

    /// Interprets one lease; `Err` says why it is not a peer.
    fn interpret(&self, subnet: Subnet, value: &[u8]) -> Result<Option<Peer>, String> {
        if Some(subnet) == self.own {
            return Ok(None);
        }
        let attrs = LeaseAttrs::parse(value).map_err(|e| e.to_string())?;
        let Some(vx) = attrs.vxlan else {
            if attrs.backend_type.is_empty() {
                // flannel's udp backend leaves BackendType empty (omitted in the JSON).
                return Err("no BackendType (a flannel udp-backend lease), not vxlan; vxmesh cannot reach that node".into());
            }
            return Err(format!(
                "backend type {:?} is not vxlan; vxmesh cannot reach that node",
                attrs.backend_type
            ));
        };
        if vx.vni != self.vni {
            return Err(format!("VNI {} differs from ours ({})", vx.vni, self.vni));
        }
        Ok(Some(Peer {
            subnet,
            public_ip: attrs.public_ip,
            vtep_mac: vx.vtep_mac,
        }))
    }

    fn skip(&mut self, key: &str, value: &[u8], why: String, skips: &mut Vec<Skip>) {
        if self.skipped.insert((key.to_string(), value.to_vec())) {
            skips.push(Skip {
                key: key.to_string(),
                why,
            });
        }
    }

    /// A lease was created or changed.
    pub fn put(&mut self, key: &str, value: &[u8], skips: &mut Vec<Skip>) -> Option<PeerChange> {
        let Some(subnet) = crate::lease::parse_lease_key(key) else {
            self.skip(key, value, "key is not <ip>-<len>".into(), skips);
            return None;
        };
        match self.interpret(subnet, value) {
            Ok(Some(p)) => self.upsert(p),
            Ok(None) => None,
            Err(why) => {
                self.skip(key, value, why, skips);
                // A value that turned bad removes the peer it described.
                self.peers.remove(&subnet).map(PeerChange::Removed)
            }
        }
    }

    fn upsert(&mut self, p: Peer) -> Option<PeerChange> {
        match self.peers.insert(p.subnet, p) {
            None => Some(PeerChange::Added(p)),
            Some(old) if old != p => Some(PeerChange::Updated { old, new: p }),
            Some(_) => None,
        }
    }

    /// A lease was deleted (or expired).
    pub fn delete(&mut self, key: &str) -> Option<PeerChange> {
        let subnet = crate::lease::parse_lease_key(key)?;
        self.skipped.retain(|(k, _)| k != key);
        self.peers.remove(&subnet).map(PeerChange::Removed)
    }

    /// Replaces the whole set from a listing; returns the difference.
    pub fn reset(
        &mut self,
        leases: &[(String, Vec<u8>)],
        skips: &mut Vec<Skip>,
    ) -> Vec<PeerChange> {
        let mut next = BTreeMap::new();
        for (key, value) in leases {
            let Some(subnet) = crate::lease::parse_lease_key(key) else {
                self.skip(key, value, "key is not <ip>-<len>".into(), skips);
                continue;
            };
            match self.interpret(subnet, value) {
                Ok(Some(p)) => {
                    next.insert(subnet, p);
                }
                Ok(None) => {}
                Err(why) => self.skip(key, value, why, skips),
            }
        }
        let mut changes = Vec::new();
        for (s, old) in &self.peers {
            match next.get(s) {
                None => changes.push(PeerChange::Removed(*old)),
                Some(new) if new != old => changes.push(PeerChange::Updated {
                    old: *old,
                    new: *new,
                }),
                Some(_) => {}
            }
        }
        for (s, new) in &next {
            if !self.peers.contains_key(s) {
                changes.push(PeerChange::Added(*new));
            }
        }
        self.peers = next;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/coreos.com/network/subnets/";

    fn val(ip: &str, mac: &str) -> Vec<u8> {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#).into_bytes()
    }

    #[test]
    fn put_update_delete() {
        let mut t = PeerTable::new(1);
        let mut skips = vec![];
        t.set_own(Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(
            t.put(
                &format!("{P}10.244.1.0-24"),
                &val("1.1.1.1", "0e:00:00:00:00:01"),
                &mut skips
            ),
            None
        );
        let c = t.put(
            &format!("{P}10.244.2.0-24"),
            &val("1.1.1.2", "0e:00:00:00:00:02"),
            &mut skips,
        );
        assert!(
            matches!(c, Some(PeerChange::Added(p)) if p.vtep_ip() == Ipv4Addr::new(10, 244, 2, 0))
        );
        assert_eq!(
            t.put(
                &format!("{P}10.244.2.0-24"),
                &val("1.1.1.2", "0e:00:00:00:00:02"),
                &mut skips
            ),
            None,
            "no-op put"
        );
        let c = t.put(
            &format!("{P}10.244.2.0-24"),
            &val("1.1.1.2", "0e:00:00:00:00:22"),
            &mut skips,
        );
        assert!(
            matches!(c, Some(PeerChange::Updated { old, new }) if old.vtep_mac != new.vtep_mac)
        );
        let c = t.delete(&format!("{P}10.244.2.0-24"));
        assert!(matches!(c, Some(PeerChange::Removed(_))));
        assert!(t.is_empty());
        assert!(skips.is_empty());
    }

    #[test]
    fn skips_are_reported_once() {
        let mut t = PeerTable::new(1);
        let mut skips = vec![];
        let udp =
            br#"{"PublicIP":"1.1.1.3","PublicIPv6":null,"BackendType":"udp","BackendData":null}"#;
        for _ in 0..3 {
            assert_eq!(t.put(&format!("{P}10.244.3.0-24"), udp, &mut skips), None);
            assert_eq!(
                t.put(&format!("{P}10.244.4.0-24"), b"garbage", &mut skips),
                None
            );
            let _ = t.reset(
                &[(format!("{P}10.244.4.0-24"), b"garbage".to_vec())],
                &mut skips,
            );
        }
        assert_eq!(skips.len(), 2, "{skips:?}");
        assert!(skips[0].why.contains("udp"));
        // another VNI is skipped too
        let other = br#"{"PublicIP":"1.1.1.5","BackendType":"vxlan","BackendData":{"VNI":2,"VtepMAC":"0e:00:00:00:00:05"}}"#;
        assert_eq!(t.put(&format!("{P}10.244.5.0-24"), other, &mut skips), None);
        assert!(skips[2].why.contains("VNI 2"));
    }

    #[test]
    fn a_value_turning_bad_removes_the_peer() {
        let mut t = PeerTable::new(1);
        let mut skips = vec![];
        let k = format!("{P}10.244.2.0-24");
        t.put(&k, &val("1.1.1.2", "0e:00:00:00:00:02"), &mut skips);
        assert!(matches!(
            t.put(&k, b"{}", &mut skips),
            Some(PeerChange::Removed(_))
        ));
    }

    #[test]
    fn reset_diffs() {
        let mut t = PeerTable::new(1);
        let mut skips = vec![];
        t.put(
            &format!("{P}10.244.2.0-24"),
            &val("1.1.1.2", "0e:00:00:00:00:02"),
            &mut skips,
        );
        t.put(
            &format!("{P}10.244.3.0-24"),
            &val("1.1.1.3", "0e:00:00:00:00:03"),
            &mut skips,
        );
        let changes = t.reset(
            &[
                (
                    format!("{P}10.244.3.0-24"),
                    val("1.1.1.33", "0e:00:00:00:00:03"),
                ),
                (
                    format!("{P}10.244.4.0-24&fc00::-64"),
                    val("1.1.1.4", "0e:00:00:00:00:04"),
                ),
            ],
            &mut skips,
        );
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.iter().any(
            |c| matches!(c, PeerChange::Removed(p) if p.public_ip == Ipv4Addr::new(1, 1, 1, 2))
        ));
        assert!(changes.iter().any(|c| matches!(c, PeerChange::Updated { new, .. } if new.public_ip == Ipv4Addr::new(1, 1, 1, 33))));
        assert!(changes.iter().any(
            |c| matches!(c, PeerChange::Added(p) if p.subnet == "10.244.4.0/24".parse().unwrap())
        ));
    }
}
