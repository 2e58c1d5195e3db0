//! Whether news from the registry means this node lost its subnet lease (no I/O,
//! no clock).
//!
//! The agent holds `<prefix>/subnets/<subnet>` (dual stack: the one key
//! `<subnet>&<ipv6 subnet>` naming both) and watches the whole prefix. Three
//! kinds of news take the subnet away while the etcd lease itself may still be alive
//! (so the keepalive would not notice): a full listing without our key, a delete of
//! our key, and a put of our key with a value that is not ours (another node's
//! PublicIP, or not a lease at all). [`OwnKeyWatch`] is told what the node holds
//! ([`OwnKeyWatch::hold`]) and fed every watch event ([`OwnKeyWatch::handle`]); it
//! answers with the loss, if any, once — after a loss it holds nothing until told
//! again. News older than the node's own claim (an etcd revision below it) is
//! ignored: a listing taken before the claim, or the delete that made the node
//! re-acquire, delivered late, says nothing about the key the node holds now.

use std::fmt;
use std::net::IpAddr;

use crate::lease::{lease_key_of, LeaseAttrs, LeaseKey, NodeId};
use crate::lease_machine::LeaseEvent;
use crate::registry_events::WatchEvent;

/// Why the node no longer holds its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum LeaseLoss {
    /// A full listing (first sync, or after compaction) does not have our key.
    Missing { key: String },
    /// Our key was deleted (by someone, or because its etcd lease expired).
    Deleted { key: String },
    /// Our key now holds another node's lease (`by`: its PublicIP, or on an IPv6-only
    /// network its PublicIPv6), or a value that is not a lease at all (`by: None`).
    Overwritten { key: String, by: Option<IpAddr> },
}

impl LeaseLoss {
    /// What the lease machine is told: a value that is not a lease at all on our
    /// key is taken back ([`LeaseEvent::KeyGarbled`]); anything else is a loss.
    pub fn event(&self) -> LeaseEvent {
        match self {
            LeaseLoss::Overwritten { by: None, .. } => LeaseEvent::KeyGarbled,
            _ => LeaseEvent::LeaseLost,
        }
    }
}

impl fmt::Display for LeaseLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseLoss::Missing { key } => write!(f, "our key {key} is gone from etcd"),
            LeaseLoss::Deleted { key } => write!(f, "our key {key} was deleted"),
            LeaseLoss::Overwritten {
                key,
                by: Some(IpAddr::V4(ip)),
            } => write!(
                f,
                "our key {key} was overwritten by another node (PublicIP {ip})"
            ),
            LeaseLoss::Overwritten {
                key,
                by: Some(IpAddr::V6(ip)),
            } => write!(
                f,
                "our key {key} was overwritten by another node (PublicIPv6 {ip})"
            ),
            LeaseLoss::Overwritten { key, by: None } => {
                write!(
                    f,
                    "our key {key} was overwritten with a value that is not a lease"
                )
            }
        }
    }
}

/// What the node holds, and since which etcd revision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holding {
    key: String,
    since: i64,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct OwnKeyWatch {
    prefix: String,
    node: NodeId,
    holding: Option<Holding>,
}

impl OwnKeyWatch {
    /// For the node `node` (its PublicIP; on an IPv6-only network its PublicIPv6),
    /// under etcd prefix `prefix`; holds nothing yet.
    pub fn new(prefix: &str, node: NodeId) -> Self {
        OwnKeyWatch {
            prefix: prefix.to_string(),
            node,
            holding: None,
        }
    }

    /// The node now holds `key`, claimed at etcd revision `since`.
    pub fn hold(&mut self, key: &LeaseKey, since: i64) {
        self.holding = Some(Holding {
            key: lease_key_of(&self.prefix, key),
            since,
        });
    }

    /// This node's address moved: from now on a put of the held key is ours when it
    /// names `node` (the move itself puts one).
    pub fn set_node(&mut self, node: NodeId) {
        self.node = node;
    }

    /// The node lost its lease by other means (the keepalive) and is re-acquiring.
    pub fn release(&mut self) {
        self.holding = None;
    }

    /// The key held now, if any.
    pub fn key(&self) -> Option<&str> {
        self.holding.as_ref().map(|h| h.key.as_str())
    }

    /// Interprets one watch event; `Some` (once) when it takes our subnet away.
    pub fn handle(&mut self, ev: &WatchEvent) -> Option<LeaseLoss> {
        let h = self.holding.as_ref()?;
        if ev.revision() < h.since {
            return None;
        }
        let loss = match ev {
            WatchEvent::Snapshot(l) => {
                if l.entries.iter().any(|e| e.key == h.key) {
                    return None;
                }
                LeaseLoss::Missing { key: h.key.clone() }
            }
            WatchEvent::Delete { key, .. } if *key == h.key => {
                LeaseLoss::Deleted { key: h.key.clone() }
            }
            WatchEvent::Put(e) if e.key == h.key => match LeaseAttrs::parse(&e.value) {
                Ok(a) if self.node.names(&a) => return None,
                Ok(a) => LeaseLoss::Overwritten {
                    key: h.key.clone(),
                    by: self.node.of(&a),
                },
                Err(_) => LeaseLoss::Overwritten {
                    key: h.key.clone(),
                    by: None,
                },
            },
            WatchEvent::Put(_) | WatchEvent::Delete { .. } => return None,
        };
        self.holding = None;
        Some(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry_events::{Entry, Listing};
    use std::net::Ipv4Addr;

    const PREFIX: &str = "/coreos.com/network";
    const OURS: &str = "/coreos.com/network/subnets/10.244.3.0-24";
    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 13);
    // Leases as vxmeshd writes them for lab nodes 3 and 2.
    const OUR_VALUE: &str = r#"{"PublicIP":"192.168.100.13","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:2b:75:0c:6d:8e"}}"#;
    const THEIR_VALUE: &str = r#"{"PublicIP":"192.168.100.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:2b:75:0c:6d:8d"}}"#;

    fn entry(key: &str, value: &str, rev: i64) -> Entry {
        Entry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0x694d_8543_30fc_5110,
        }
    }

    fn holding_at(rev: i64) -> OwnKeyWatch {
        let mut w = OwnKeyWatch::new(PREFIX, NodeId::V4(ME));
        w.hold(&LeaseKey::parse("10.244.3.0-24").unwrap(), rev);
        assert_eq!(w.key(), Some(OURS));
        w
    }

    #[test]
    fn our_own_writes_and_other_keys_change_nothing() {
        let mut w = holding_at(10);
        for ev in [
            WatchEvent::Put(entry(OURS, OUR_VALUE, 11)),
            WatchEvent::Put(entry(
                "/coreos.com/network/subnets/10.244.2.0-24",
                THEIR_VALUE,
                12,
            )),
            WatchEvent::Delete {
                key: "/coreos.com/network/subnets/10.244.2.0-24".into(),
                revision: 13,
            },
            WatchEvent::Snapshot(Listing {
                revision: 14,
                entries: vec![entry(OURS, OUR_VALUE, 11)],
            }),
        ] {
            assert_eq!(w.handle(&ev), None, "{ev:?}");
        }
        assert_eq!(w.key(), Some(OURS));
    }

    #[test]
    fn a_listing_without_our_key_is_a_loss() {
        let mut w = holding_at(10);
        let ev = WatchEvent::Snapshot(Listing {
            revision: 20,
            entries: vec![entry(
                "/coreos.com/network/subnets/10.244.2.0-24",
                THEIR_VALUE,
                5,
            )],
        });
        let loss = w.handle(&ev).unwrap();
        assert_eq!(loss, LeaseLoss::Missing { key: OURS.into() });
        assert_eq!(
            loss.to_string(),
            "our key /coreos.com/network/subnets/10.244.3.0-24 is gone from etcd"
        );
        assert_eq!(w.key(), None);
        assert_eq!(w.handle(&ev), None, "reported once");
    }

    #[test]
    fn a_delete_of_our_key_is_a_loss() {
        let mut w = holding_at(10);
        let loss = w
            .handle(&WatchEvent::Delete {
                key: OURS.into(),
                revision: 30,
            })
            .unwrap();
        assert_eq!(
            loss.to_string(),
            "our key /coreos.com/network/subnets/10.244.3.0-24 was deleted"
        );
    }

    #[test]
    fn another_nodes_value_on_our_key_is_a_loss() {
        let mut w = holding_at(10);
        let loss = w
            .handle(&WatchEvent::Put(entry(OURS, THEIR_VALUE, 31)))
            .unwrap();
        assert_eq!(
            loss,
            LeaseLoss::Overwritten {
                key: OURS.into(),
                by: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 100, 12)))
            }
        );
        assert!(loss.to_string().contains("PublicIP 192.168.100.12"));
        let mut w = holding_at(10);
        let loss = w
            .handle(&WatchEvent::Put(entry(OURS, "garbage", 31)))
            .unwrap();
        assert_eq!(
            loss,
            LeaseLoss::Overwritten {
                key: OURS.into(),
                by: None
            }
        );
    }

    #[test]
    fn after_a_move_our_key_names_the_new_public_ip() {
        // Node 3's underlay address moved to .23: the move puts the key again
        // naming .23 — ours. The old address on it afterwards is not.
        let mut w = holding_at(10);
        w.set_node(NodeId::V4(Ipv4Addr::new(192, 168, 100, 23)));
        let moved = OUR_VALUE.replace("192.168.100.13", "192.168.100.23");
        assert_eq!(w.handle(&WatchEvent::Put(entry(OURS, &moved, 11))), None);
        assert!(matches!(
            w.handle(&WatchEvent::Put(entry(OURS, OUR_VALUE, 12))),
            Some(LeaseLoss::Overwritten { by: Some(ip), .. }) if ip == IpAddr::V4(ME)
        ));
    }

    /// On an IPv6-only network every lease says PublicIP 0.0.0.0: another node's
    /// lease on our key is told apart by its PublicIPv6 (flanneld's etcd mode cannot).
    #[test]
    fn an_ipv6_only_node_knows_its_key_by_its_public_ipv6() {
        const OURS6: &str = "/coreos.com/network/subnets/0.0.0.0-0&fd00:10:244:3::-64";
        let ours = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::13","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:2b:75:0c:6d:8e"}}"#;
        let theirs = ours.replace("fd00:64::13", "fd00:64::12");
        let me: std::net::Ipv6Addr = "fd00:64::13".parse().unwrap();
        let mut w = OwnKeyWatch::new(PREFIX, NodeId::V6(me));
        w.hold(
            &LeaseKey::parse("0.0.0.0-0&fd00:10:244:3::-64").unwrap(),
            10,
        );
        assert_eq!(w.key(), Some(OURS6));
        assert_eq!(w.handle(&WatchEvent::Put(entry(OURS6, ours, 11))), None);
        let loss = w
            .handle(&WatchEvent::Put(entry(OURS6, &theirs, 12)))
            .unwrap();
        assert_eq!(
            loss,
            LeaseLoss::Overwritten {
                key: OURS6.into(),
                by: Some("fd00:64::12".parse().unwrap())
            }
        );
        assert!(
            loss.to_string().contains("PublicIPv6 fd00:64::12"),
            "{loss}"
        );
        assert_eq!(loss.event(), LeaseEvent::LeaseLost);
    }

    #[test]
    fn news_older_than_our_claim_is_ignored() {
        // The key expired at revision 40, the keepalive noticed first and the node
        // re-claimed the same subnet at revision 42; the watch then delivers the
        // delete of revision 40, and a listing taken at revision 41.
        let mut w = holding_at(42);
        assert_eq!(
            w.handle(&WatchEvent::Delete {
                key: OURS.into(),
                revision: 40
            }),
            None
        );
        assert_eq!(
            w.handle(&WatchEvent::Snapshot(Listing {
                revision: 41,
                entries: vec![]
            })),
            None
        );
        assert!(w
            .handle(&WatchEvent::Delete {
                key: OURS.into(),
                revision: 43
            })
            .is_some());
    }

    #[test]
    fn our_dual_stack_key_is_ours() {
        const DUAL: &str = "/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64";
        // As vxmeshd writes it for lab node 3 with --public-ipv6 fd00:64::13.
        const DUAL_VALUE: &str = r#"{"PublicIP":"192.168.100.13","PublicIPv6":"fd00:64::13","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:2b:75:0c:6d:8e"},"BackendV6Data":{"VNI":1,"VtepMAC":"66:cb:49:ea:b2:bb"}}"#;
        let mut w = OwnKeyWatch::new(PREFIX, NodeId::V4(ME));
        w.hold(
            &LeaseKey::parse("10.244.3.0-24&fd00:10:244:3::-64").unwrap(),
            10,
        );
        assert_eq!(w.key(), Some(DUAL));
        for ev in [
            WatchEvent::Put(entry(DUAL, DUAL_VALUE, 11)),
            // The IPv4-only key of the same subnet is another key (ours moved away).
            WatchEvent::Delete {
                key: OURS.into(),
                revision: 12,
            },
            WatchEvent::Snapshot(Listing {
                revision: 14,
                entries: vec![entry(DUAL, DUAL_VALUE, 11)],
            }),
        ] {
            assert_eq!(w.handle(&ev), None, "{ev:?}");
        }
        // A listing with only the IPv4 key is a loss of the dual-stack one.
        let loss = w
            .handle(&WatchEvent::Snapshot(Listing {
                revision: 15,
                entries: vec![entry(OURS, OUR_VALUE, 11)],
            }))
            .unwrap();
        assert_eq!(loss, LeaseLoss::Missing { key: DUAL.into() });
        // Another node's dual-stack value on our key is a loss.
        w.hold(
            &LeaseKey::parse("10.244.3.0-24&fd00:10:244:3::-64").unwrap(),
            10,
        );
        let their = DUAL_VALUE.replace("192.168.100.13", "192.168.100.12");
        assert_eq!(
            w.handle(&WatchEvent::Put(entry(DUAL, &their, 16))),
            Some(LeaseLoss::Overwritten {
                key: DUAL.into(),
                by: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 100, 12)))
            })
        );
    }

    #[test]
    fn nothing_is_lost_while_nothing_is_held() {
        let mut w = OwnKeyWatch::new(PREFIX, NodeId::V4(ME));
        let gone = WatchEvent::Delete {
            key: OURS.into(),
            revision: 50,
        };
        assert_eq!(w.handle(&gone), None);
        w.hold(&LeaseKey::parse("10.244.3.0-24").unwrap(), 10);
        w.release();
        assert_eq!(w.handle(&gone), None);
        // A new subnet: only its key matters.
        w.hold(&LeaseKey::parse("10.244.4.0-24").unwrap(), 10);
        assert_eq!(w.handle(&gone), None);
    }
}
