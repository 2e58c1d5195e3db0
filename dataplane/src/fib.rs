//! The forwarding table: who is behind which VtepMAC, and who may send to us.
//!
//! The control plane builds a new [`ForwardingTable`] whenever a peer lease changes
//! and swaps it in atomically ([`SharedTable`]); the hot-path threads load it once
//! per batch. Nothing here locks or allocates on lookup.

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::wire::{MacAddr, Vni};

/// This node's VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVtep {
    pub vtep_mac: MacAddr,
    pub vni: Vni,
    /// UDP port peers listen on (flannel's default 8472).
    pub port: u16,
}

/// One remote node, as its lease describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerVtep {
    pub vtep_mac: MacAddr,
    pub public_ip: Ipv4Addr,
    /// The peer's VTEP address: `<peer subnet>.0`, the next hop of its route.
    pub vtep_ip: Ipv4Addr,
}

/// Lookup tables for one generation of the peer set.
#[derive(Debug, Clone)]
pub struct ForwardingTable {
    local: LocalVtep,
    by_mac: FxHashMap<MacAddr, Ipv4Addr>,
    by_vtep_ip: FxHashMap<Ipv4Addr, MacAddr>,
    sources: FxHashSet<Ipv4Addr>,
    peers: Vec<PeerVtep>,
}

impl ForwardingTable {
    /// Builds the table. A peer whose MAC is not unicast or equals ours is left out
    /// (the control plane has already logged it).
    pub fn new(local: LocalVtep, peers: impl IntoIterator<Item = PeerVtep>) -> Self {
        let mut t = ForwardingTable {
            local,
            by_mac: FxHashMap::default(),
            by_vtep_ip: FxHashMap::default(),
            sources: FxHashSet::default(),
            peers: Vec::new(),
        };
        for p in peers {
            if !p.vtep_mac.is_unicast() || p.vtep_mac == local.vtep_mac {
                continue;
            }
            t.by_mac.insert(p.vtep_mac, p.public_ip);
            t.by_vtep_ip.insert(p.vtep_ip, p.vtep_mac);
            t.sources.insert(p.public_ip);
            t.peers.push(p);
        }
        t
    }

    pub fn local(&self) -> &LocalVtep {
        &self.local
    }

    /// The PublicIP behind a VtepMAC.
    #[inline]
    pub fn peer_by_mac(&self, mac: &MacAddr) -> Option<Ipv4Addr> {
        self.by_mac.get(mac).copied()
    }

    /// The VtepMAC answering for a peer VTEP address (ARP).
    #[inline]
    pub fn mac_for_vtep_ip(&self, ip: &Ipv4Addr) -> Option<MacAddr> {
        self.by_vtep_ip.get(ip).copied()
    }

    /// Whether `ip` is a leased peer's PublicIP.
    #[inline]
    pub fn is_peer_source(&self, ip: &Ipv4Addr) -> bool {
        self.sources.contains(ip)
    }

    pub fn peers(&self) -> &[PeerVtep] {
        &self.peers
    }
}

/// The table shared between the control plane (writer) and the hot path (readers).
#[derive(Debug, Clone)]
pub struct SharedTable(Arc<ArcSwap<ForwardingTable>>);

impl SharedTable {
    pub fn new(table: ForwardingTable) -> Self {
        SharedTable(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// Publishes a new generation; readers see it at their next batch.
    pub fn store(&self, table: ForwardingTable) {
        self.0.store(Arc::new(table));
    }

    /// The current generation (cheap: no lock, one atomic load and a refcount).
    #[inline]
    pub fn load(&self) -> Arc<ForwardingTable> {
        self.0.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn local() -> LocalVtep {
        LocalVtep {
            vtep_mac: "c6:d2:32:6f:8f:44".parse().unwrap(),
            vni: Vni::new(1).unwrap(),
            port: 8472,
        }
    }

    #[test]
    fn lookups() {
        let p = PeerVtep {
            vtep_mac: "0e:5a:11:22:33:44".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 77, 2),
            vtep_ip: Ipv4Addr::new(10, 244, 2, 0),
        };
        let bad = PeerVtep {
            vtep_mac: MacAddr::BROADCAST,
            public_ip: Ipv4Addr::new(192, 168, 77, 3),
            vtep_ip: Ipv4Addr::new(10, 244, 3, 0),
        };
        let mine = PeerVtep {
            vtep_mac: local().vtep_mac,
            ..bad
        };
        let t = ForwardingTable::new(local(), [p, bad, mine]);
        assert_eq!(t.peer_by_mac(&p.vtep_mac), Some(p.public_ip));
        assert_eq!(t.mac_for_vtep_ip(&p.vtep_ip), Some(p.vtep_mac));
        assert!(t.is_peer_source(&p.public_ip));
        assert!(!t.is_peer_source(&bad.public_ip));
        assert_eq!(t.peers().len(), 1);

        let shared = SharedTable::new(ForwardingTable::new(local(), []));
        assert!(shared.load().peers().is_empty());
        shared.store(t);
        assert_eq!(shared.load().peers().len(), 1);
    }
}
