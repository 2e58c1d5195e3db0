//! The forwarding table: who is behind which VtepMAC, and who may send to us.
//!
//! The control plane builds a new [`ForwardingTable`] whenever a peer lease changes
//! and swaps it in atomically ([`SharedTable`]); the hot-path threads load it once
//! per batch. Nothing here locks or allocates on lookup.
//!
//! Each peer has a *slot*: its index in [`ForwardingTable::peers`], valid for that
//! generation only. The hot path counts per slot in thread-local tallies and adds
//! them to the peer's [`PeerCounters`] before it lets go of the generation (see
//! [`crate::counters::PeerTallies`]). The counters themselves outlive generations:
//! [`ForwardingTable::next`] hands each peer that stays (same VTEP address and
//! PublicIP) the same `Arc<PeerCounters>`, so a rebuild loses no count.
//!
//! A dual-stack peer has an IPv6 half ([`PeerVtep6`]), laid out as flannel lays out
//! `flannel-v6.<VNI>`: its own VtepMAC (the lease's `BackendV6Data.VtepMAC`), its
//! PublicIPv6, and its IPv6 VTEP address (the first address of its IPv6 subnet). Both
//! halves share the peer's slot and counters: one slot per node. The IPv6 half is
//! admitted on its own rules ([`ForwardingTable::new`]); a half that fails them is
//! left out alone, the IPv4 half stays.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::counters::PeerCounters;
use crate::wire::{MacAddr, Vni};

/// This node's VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVtep {
    pub vtep_mac: MacAddr,
    pub vni: Vni,
    /// UDP port peers listen on (flannel's default 8472).
    pub port: u16,
    /// What inner addresses a peer's VXLAN may carry
    /// ([`crate::verdict::classify_ingress`]); `None`: not checked.
    pub inner: Option<InnerCheck>,
    /// This node's IPv6 VTEP, when the dataplane carries IPv6 (`None`: IPv6 rides
    /// `flannel-v6.<VNI>`, or the node is IPv4 only).
    pub v6: Option<LocalVtep6>,
}

/// This node's IPv6 VTEP: what peers send its IPv6 frames to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVtep6 {
    /// The lease's `BackendV6Data.VtepMAC`: the inner destination MAC of IPv6 frames
    /// peers send here. The TAP has only one MAC ([`LocalVtep::vtep_mac`]), so such
    /// frames get that one before they go to the TAP (the kernel drops frames for
    /// other MACs: [`crate::verdict::Ingress::Deliver`]'s `rewrite_dst`).
    pub vtep_mac: MacAddr,
    /// What inner IPv6 addresses a peer's VXLAN may carry; `None`: not checked.
    pub inner: Option<InnerCheck6>,
}

/// The cluster's addressing, for the ingress check of inner addresses: an inner IPv4
/// packet from a peer must go to this node's subnet, and may not claim a source in
/// another node's subnet (one inside the Network but outside the sending peer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerCheck {
    /// The cluster Network.
    pub network: Ipv4Addr,
    pub network_len: u8,
    /// SubnetLen: every node's subnet is this long.
    pub subnet_len: u8,
}

impl InnerCheck {
    /// The lab's and flannel's example: 10.244.0.0/16 cut into /24s.
    pub fn lab() -> InnerCheck {
        InnerCheck {
            network: Ipv4Addr::new(10, 244, 0, 0),
            network_len: 16,
            subnet_len: 24,
        }
    }
}

/// [`InnerCheck`] for inner IPv6 packets: the config's IPv6Network and
/// IPv6SubnetLen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerCheck6 {
    /// The cluster's IPv6Network.
    pub network: Ipv6Addr,
    pub network_len: u8,
    /// IPv6SubnetLen: every node's IPv6 subnet is this long.
    pub subnet_len: u8,
}

impl InnerCheck6 {
    /// The lab's dual-stack config: fd00:10:244::/56 cut into /64s.
    pub fn lab() -> InnerCheck6 {
        InnerCheck6 {
            network: Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0),
            network_len: 56,
            subnet_len: 64,
        }
    }
}

/// One remote node, as its lease describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerVtep {
    pub vtep_mac: MacAddr,
    pub public_ip: Ipv4Addr,
    /// The peer's VTEP address: `<peer subnet>.0`, the next hop of its route.
    pub vtep_ip: Ipv4Addr,
    /// The IPv6 half of a dual-stack lease.
    pub v6: Option<PeerVtep6>,
}

/// The IPv6 half of a peer's lease: `BackendV6Data.VtepMAC`, `PublicIPv6`, and the
/// first address of its IPv6 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerVtep6 {
    pub vtep_mac: MacAddr,
    /// Where its IPv6 frames go, VXLAN over UDP/IPv6 (same VNI and port as IPv4).
    pub public_ip: Ipv6Addr,
    /// The peer's IPv6 VTEP address: `<peer IPv6 subnet>::`, the next hop of its
    /// IPv6 route.
    pub vtep_ip: Ipv6Addr,
}

/// Lookup tables for one generation of the peer set.
#[derive(Debug, Clone)]
pub struct ForwardingTable {
    local: LocalVtep,
    /// VtepMAC of either family → (the PublicIP of that family, slot).
    by_mac: FxHashMap<MacAddr, (IpAddr, u32)>,
    by_vtep_ip: FxHashMap<Ipv4Addr, MacAddr>,
    by_vtep_ip6: FxHashMap<Ipv6Addr, MacAddr>,
    /// PublicIP → slot: the addresses we accept VXLAN from.
    sources: FxHashMap<Ipv4Addr, u32>,
    /// PublicIPv6 → slot.
    sources6: FxHashMap<Ipv6Addr, u32>,
    /// As given (with IPv6 halves the table may have left out).
    peers: Vec<PeerVtep>,
    /// `halves[slot]`: the IPv6 half of `peers[slot]`, if the table admitted it.
    halves: Vec<Option<PeerVtep6>>,
    /// `counters[slot]` belongs to `peers[slot]`.
    counters: Vec<Arc<PeerCounters>>,
    /// Two peers shared a key (a MAC of either family, a VTEP address, a PublicIP):
    /// which one won depends on their order, so no delta applies to this table (see
    /// [`ForwardingTable::with_delta`]). The control plane never publishes such a set.
    conflicted: bool,
}

impl ForwardingTable {
    /// Builds the table, every peer with new counters. A peer whose MAC is not
    /// unicast or is one of ours (IPv4 or IPv6 VtepMAC) is left out (the control
    /// plane has already logged it). A peer's IPv6 half is left out alone (the IPv4
    /// half stays) when its MAC is not unicast, is one of ours or the peer's own IPv4
    /// VtepMAC, or is any other entry's MAC, or when its PublicIPv6 or VTEP address
    /// is another peer's. The IPv6 halves are judged after every IPv4 half, so an
    /// IPv4 VtepMAC wins over an IPv6 one whatever the order of the peers.
    pub fn new(local: LocalVtep, peers: impl IntoIterator<Item = PeerVtep>) -> Self {
        Self::build(local, peers, |_| None)
    }

    /// The next generation: `peers` with this table's local VTEP; a peer already here
    /// with the same VTEP address and PublicIP keeps its counters.
    pub fn next(&self, peers: impl IntoIterator<Item = PeerVtep>) -> Self {
        self.with_local(self.local, peers)
    }

    /// Like [`ForwardingTable::next`], with another local VTEP.
    pub fn with_local(&self, local: LocalVtep, peers: impl IntoIterator<Item = PeerVtep>) -> Self {
        let old: FxHashMap<(Ipv4Addr, Ipv4Addr), &Arc<PeerCounters>> = self
            .peers
            .iter()
            .zip(&self.counters)
            .map(|(p, c)| ((p.vtep_ip, p.public_ip), c))
            .collect();
        Self::build(local, peers, |p| {
            old.get(&(p.vtep_ip, p.public_ip)).map(|c| Arc::clone(c))
        })
    }

    fn build(
        local: LocalVtep,
        peers: impl IntoIterator<Item = PeerVtep>,
        reuse: impl Fn(&PeerVtep) -> Option<Arc<PeerCounters>>,
    ) -> Self {
        let mut t = ForwardingTable {
            local,
            by_mac: FxHashMap::default(),
            by_vtep_ip: FxHashMap::default(),
            by_vtep_ip6: FxHashMap::default(),
            sources: FxHashMap::default(),
            sources6: FxHashMap::default(),
            peers: Vec::new(),
            halves: Vec::new(),
            counters: Vec::new(),
            conflicted: false,
        };
        for p in peers {
            if !admits(&local, &p) {
                continue;
            }
            let Ok(slot) = u32::try_from(t.peers.len()) else {
                break;
            };
            // A later peer with an earlier one's key takes it over.
            let taken = t
                .by_mac
                .insert(p.vtep_mac, (IpAddr::V4(p.public_ip), slot))
                .is_some()
                | t.by_vtep_ip.insert(p.vtep_ip, p.vtep_mac).is_some()
                | t.sources.insert(p.public_ip, slot).is_some();
            t.conflicted |= taken;
            t.counters.push(reuse(&p).unwrap_or_default());
            t.peers.push(p);
            t.halves.push(None);
        }
        for (slot, (p, half)) in t.peers.iter().zip(t.halves.iter_mut()).enumerate() {
            let Some(h) = p.v6.filter(|h| admits6(&local, p, h)) else {
                continue;
            };
            if t.by_mac.contains_key(&h.vtep_mac)
                || t.by_vtep_ip6.contains_key(&h.vtep_ip)
                || t.sources6.contains_key(&h.public_ip)
            {
                t.conflicted = true;
                continue;
            }
            // Fewer than u32::MAX peers: the loop above stopped there.
            let Ok(slot) = u32::try_from(slot) else {
                break;
            };
            t.by_mac.insert(h.vtep_mac, (IpAddr::V6(h.public_ip), slot));
            t.by_vtep_ip6.insert(h.vtep_ip, h.vtep_mac);
            t.sources6.insert(h.public_ip, slot);
            *half = Some(h);
        }
        t
    }

    /// The next generation as a delta: this table without `removed`, with `added`
    /// (in that order; a peer in both is one whose MAC changed, or that left and came
    /// back). The same table [`ForwardingTable::next`] builds for the resulting set,
    /// up to slot order: a peer that stays keeps its counters, and so does one
    /// re-added with the same VTEP address and PublicIP. Costs a copy of the maps
    /// plus O(1) per change instead of a rebuild of every peer. Where the peers do not
    /// have distinct keys (MACs of either family, VTEP addresses and PublicIPs of
    /// either family; the control plane never publishes such a set: which one wins
    /// then depends on the order), or `removed` names a peer not in the table, it
    /// falls back to the rebuild; so does every delta to a table built from such a
    /// set.
    pub fn with_delta(&self, removed: &[PeerVtep], added: &[PeerVtep]) -> Self {
        self.delta_or_rebuild(removed, added).0
    }

    /// [`ForwardingTable::with_delta`], and whether the delta was applied (false:
    /// the rebuild).
    fn delta_or_rebuild(&self, removed: &[PeerVtep], added: &[PeerVtep]) -> (Self, bool) {
        let mut t = self.clone();
        match t.delta_in_place(removed, added, None) {
            Some(()) => (t, true),
            None => {
                let mut set: Vec<PeerVtep> = self
                    .peers
                    .iter()
                    .filter(|p| !removed.contains(p))
                    .copied()
                    .collect();
                let mut seen: rustc_hash::FxHashSet<PeerVtep> = set.iter().copied().collect();
                set.extend(added.iter().filter(|p| seen.insert(**p)).copied());
                (self.next(set), false)
            }
        }
    }

    /// Applies a delta in place; `None` when it cannot (see
    /// [`ForwardingTable::with_delta`]), the table then half changed. An added peer
    /// takes the counters of the peer it replaces (same VTEP address and PublicIP),
    /// or new ones; with `counters_of`, the ones that table holds for it instead (a
    /// replay of the delta that made `counters_of` from this table: `None` if that
    /// table does not hold the peer).
    fn delta_in_place(
        &mut self,
        removed: &[PeerVtep],
        added: &[PeerVtep],
        counters_of: Option<&ForwardingTable>,
    ) -> Option<()> {
        if self.conflicted {
            return None;
        }
        let mut freed: FxHashMap<(Ipv4Addr, Ipv4Addr), Arc<PeerCounters>> = FxHashMap::default();
        for p in removed {
            if !admits(&self.local, p) {
                continue;
            }
            let &(_, slot) = self.by_mac.get(&p.vtep_mac)?;
            let slot = slot as usize;
            if self.peers.get(slot) != Some(p) {
                return None;
            }
            self.by_mac.remove(&p.vtep_mac);
            self.by_vtep_ip.remove(&p.vtep_ip);
            self.sources.remove(&p.public_ip);
            if let Some(h) = self.halves.get(slot).copied().flatten() {
                self.by_mac.remove(&h.vtep_mac);
                self.by_vtep_ip6.remove(&h.vtep_ip);
                self.sources6.remove(&h.public_ip);
            }
            self.peers.swap_remove(slot);
            self.halves.swap_remove(slot);
            let c = self.counters.swap_remove(slot);
            freed.insert((p.vtep_ip, p.public_ip), c);
            // The last peer moved into `slot`.
            if let Some(moved) = self.peers.get(slot) {
                let s = u32::try_from(slot).ok()?;
                self.by_mac
                    .insert(moved.vtep_mac, (IpAddr::V4(moved.public_ip), s));
                self.sources.insert(moved.public_ip, s);
                if let Some(h) = self.halves.get(slot).copied().flatten() {
                    self.by_mac.insert(h.vtep_mac, (IpAddr::V6(h.public_ip), s));
                    self.sources6.insert(h.public_ip, s);
                }
            }
        }
        for p in added {
            if !admits(&self.local, p) {
                continue;
            }
            // Already here, exactly (a table handed over with the dataplane, then
            // the same peers added from the first listing): nothing to do.
            if let Some(&(_, slot)) = self.by_mac.get(&p.vtep_mac) {
                if self.peers.get(slot as usize) == Some(p) {
                    continue;
                }
            }
            if self.by_mac.contains_key(&p.vtep_mac)
                || self.by_vtep_ip.contains_key(&p.vtep_ip)
                || self.sources.contains_key(&p.public_ip)
            {
                return None;
            }
            let half = p.v6.filter(|h| admits6(&self.local, p, h));
            if let Some(h) = half {
                if self.by_mac.contains_key(&h.vtep_mac)
                    || self.by_vtep_ip6.contains_key(&h.vtep_ip)
                    || self.sources6.contains_key(&h.public_ip)
                {
                    return None;
                }
            }
            let slot = u32::try_from(self.peers.len()).ok()?;
            self.by_mac
                .insert(p.vtep_mac, (IpAddr::V4(p.public_ip), slot));
            self.by_vtep_ip.insert(p.vtep_ip, p.vtep_mac);
            self.sources.insert(p.public_ip, slot);
            if let Some(h) = half {
                self.by_mac
                    .insert(h.vtep_mac, (IpAddr::V6(h.public_ip), slot));
                self.by_vtep_ip6.insert(h.vtep_ip, h.vtep_mac);
                self.sources6.insert(h.public_ip, slot);
            }
            let counters = match counters_of {
                Some(made) => {
                    let (_, s) = made.peer_slot_by_mac(&p.vtep_mac)?;
                    Arc::clone(made.counters.get(s)?)
                }
                None => freed.remove(&(p.vtep_ip, p.public_ip)).unwrap_or_default(),
            };
            self.counters.push(counters);
            self.peers.push(*p);
            self.halves.push(half);
        }
        Some(())
    }

    pub fn local(&self) -> &LocalVtep {
        &self.local
    }

    /// The PublicIP behind a VtepMAC: the peer's IPv4 one behind its IPv4 VtepMAC,
    /// its PublicIPv6 behind its IPv6 VtepMAC.
    #[inline]
    pub fn peer_by_mac(&self, mac: &MacAddr) -> Option<IpAddr> {
        self.by_mac.get(mac).map(|&(ip, _)| ip)
    }

    /// The PublicIP (as [`ForwardingTable::peer_by_mac`]) and the slot of the peer
    /// behind a VtepMAC. Both of a peer's VtepMACs give its one slot.
    #[inline]
    pub fn peer_slot_by_mac(&self, mac: &MacAddr) -> Option<(IpAddr, usize)> {
        self.by_mac.get(mac).map(|&(ip, slot)| (ip, slot as usize))
    }

    /// The VtepMAC answering for a peer VTEP address (ARP).
    #[inline]
    pub fn mac_for_vtep_ip(&self, ip: &Ipv4Addr) -> Option<MacAddr> {
        self.by_vtep_ip.get(ip).copied()
    }

    /// The IPv6 VtepMAC answering for a peer's IPv6 VTEP address (Neighbor
    /// Discovery).
    #[inline]
    pub fn mac_for_vtep_ip6(&self, ip: &Ipv6Addr) -> Option<MacAddr> {
        self.by_vtep_ip6.get(ip).copied()
    }

    /// Whether `ip` is a leased peer's PublicIP.
    #[inline]
    pub fn is_peer_source(&self, ip: &Ipv4Addr) -> bool {
        self.sources.contains_key(ip)
    }

    /// The slot of the peer whose PublicIP is `ip`.
    #[inline]
    pub fn slot_by_source(&self, ip: &Ipv4Addr) -> Option<usize> {
        self.sources.get(ip).map(|&s| s as usize)
    }

    /// The slot of the peer whose (admitted) PublicIPv6 is `ip`.
    #[inline]
    pub fn slot_by_source6(&self, ip: &Ipv6Addr) -> Option<usize> {
        self.sources6.get(ip).map(|&s| s as usize)
    }

    /// The peers, in slot order, as given (see [`ForwardingTable::peer_v6`] for the
    /// IPv6 halves the table holds).
    pub fn peers(&self) -> &[PeerVtep] {
        &self.peers
    }

    /// The IPv6 half of the peer in `slot`, if the table admitted it.
    #[inline]
    pub fn peer_v6(&self, slot: usize) -> Option<&PeerVtep6> {
        self.halves.get(slot)?.as_ref()
    }

    /// The counters of the peer in `slot` (see the module documentation).
    #[inline]
    pub fn peer_counters(&self, slot: usize) -> Option<&Arc<PeerCounters>> {
        self.counters.get(slot)
    }
}

/// Whether `mac` is one of this node's VtepMACs.
fn is_ours(local: &LocalVtep, mac: &MacAddr) -> bool {
    *mac == local.vtep_mac || local.v6.is_some_and(|l| l.vtep_mac == *mac)
}

/// Whether `p` can be in a table (see [`ForwardingTable::new`]).
fn admits(local: &LocalVtep, p: &PeerVtep) -> bool {
    p.vtep_mac.is_unicast() && !is_ours(local, &p.vtep_mac)
}

/// Whether `p`'s IPv6 half `h` can be in a table, whatever the other peers (see
/// [`ForwardingTable::new`]).
fn admits6(local: &LocalVtep, p: &PeerVtep, h: &PeerVtep6) -> bool {
    h.vtep_mac.is_unicast() && h.vtep_mac != p.vtep_mac && !is_ours(local, &h.vtep_mac)
}

/// The table shared between the control plane (writer) and the hot path (readers).
#[derive(Debug, Clone)]
pub struct SharedTable(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    current: ArcSwap<ForwardingTable>,
    /// The writer's: the generation before the current one and the delta that made
    /// the current one from it. Once no reader holds it any more, the next delta is
    /// applied to it in place (after that one is replayed), instead of to a copy of
    /// the current table: O(changes) per batch, not a copy of every peer.
    spare: std::sync::Mutex<Option<Spare>>,
    /// Deltas applied to the reused spare (tests).
    #[cfg(test)]
    reused: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Spare {
    table: Arc<ForwardingTable>,
    removed: Vec<PeerVtep>,
    added: Vec<PeerVtep>,
}

impl SharedTable {
    pub fn new(table: ForwardingTable) -> Self {
        SharedTable(Arc::new(Shared {
            current: ArcSwap::from_pointee(table),
            spare: std::sync::Mutex::new(None),
            #[cfg(test)]
            reused: Default::default(),
        }))
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Option<Spare>> {
        // A writer that panicked left at worst a stale spare: dropped below.
        self.0.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new generation; readers see it at their next batch.
    pub fn store(&self, table: ForwardingTable) {
        let mut spare = self.spare();
        *spare = None;
        self.0.current.store(Arc::new(table));
    }

    /// Publishes the next generation for `peers` (see [`ForwardingTable::next`]): the
    /// peers that stay keep their counters. One writer at a time (the control plane).
    pub fn update(&self, peers: impl IntoIterator<Item = PeerVtep>) {
        let next = self.load().next(peers);
        self.store(next);
    }

    /// Publishes the next generation as a delta (see [`ForwardingTable::with_delta`]).
    /// One writer at a time (the control plane). The generation before the current
    /// one is reused when no reader holds it any more (a packet thread lets go of
    /// its generation before it sleeps); while one does, the current one is copied.
    pub fn apply_delta(&self, removed: &[PeerVtep], added: &[PeerVtep]) {
        let mut spare = self.spare();
        let current = self.load();
        let reused = spare.take().and_then(|s| {
            let mut t = Arc::try_unwrap(s.table).ok()?;
            // The spare becomes the current generation, then the next.
            t.delta_in_place(&s.removed, &s.added, Some(&current))?;
            t.delta_in_place(removed, added, None)?;
            Some(t)
        });
        let (next, by_delta) = match reused {
            Some(t) => {
                #[cfg(test)]
                self.0
                    .reused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (t, true)
            }
            None => current.delta_or_rebuild(removed, added),
        };
        drop(current);
        let previous = self.0.current.swap(Arc::new(next));
        *spare = by_delta.then(|| Spare {
            table: previous,
            removed: removed.to_vec(),
            added: added.to_vec(),
        });
    }

    /// The current generation (cheap: no lock, one atomic load and a refcount).
    #[inline]
    pub fn load(&self) -> Arc<ForwardingTable> {
        self.0.current.load_full()
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
            inner: None,
            v6: None,
        }
    }

    #[test]
    fn lookups() {
        let p = PeerVtep {
            vtep_mac: "0e:5a:11:22:33:44".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 77, 2),
            vtep_ip: Ipv4Addr::new(10, 244, 2, 0),
            v6: None,
        };
        let bad = PeerVtep {
            vtep_mac: MacAddr::BROADCAST,
            public_ip: Ipv4Addr::new(192, 168, 77, 3),
            vtep_ip: Ipv4Addr::new(10, 244, 3, 0),
            v6: None,
        };
        let mine = PeerVtep {
            vtep_mac: local().vtep_mac,
            ..bad
        };
        let t = ForwardingTable::new(local(), [p, bad, mine]);
        assert_eq!(t.peer_by_mac(&p.vtep_mac), Some(IpAddr::V4(p.public_ip)));
        assert_eq!(t.mac_for_vtep_ip(&p.vtep_ip), Some(p.vtep_mac));
        assert!(t.is_peer_source(&p.public_ip));
        assert!(!t.is_peer_source(&bad.public_ip));
        assert_eq!(t.peers().len(), 1);

        assert_eq!(
            t.peer_slot_by_mac(&p.vtep_mac),
            Some((IpAddr::V4(p.public_ip), 0))
        );
        assert_eq!(t.slot_by_source(&p.public_ip), Some(0));
        assert_eq!(t.slot_by_source(&bad.public_ip), None);

        let shared = SharedTable::new(ForwardingTable::new(local(), []));
        assert!(shared.load().peers().is_empty());
        shared.store(t);
        assert_eq!(shared.load().peers().len(), 1);
    }

    fn peer(n: u8) -> PeerVtep {
        PeerVtep {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, n]),
            public_ip: Ipv4Addr::new(192, 168, 77, n),
            vtep_ip: Ipv4Addr::new(10, 244, n, 0),
            v6: None,
        }
    }

    /// A rebuild keeps the counters of the peers that stay, wherever their slot moves;
    /// a peer with a new PublicIP (or a new one) starts from zero.
    #[test]
    fn next_generation_keeps_counters_of_peers_that_stay() {
        let shared = SharedTable::new(ForwardingTable::new(local(), [peer(1), peer(2)]));
        let g1 = shared.load();
        g1.peer_counters(1).unwrap().add_rx(3, 300, 1_000);
        let moved = PeerVtep {
            public_ip: Ipv4Addr::new(192, 168, 78, 1),
            ..peer(1)
        };
        shared.update([peer(3), moved, peer(2)]);
        let g2 = shared.load();
        assert_eq!(g2.slot_by_source(&peer(2).public_ip), Some(2));
        assert!(Arc::ptr_eq(
            g1.peer_counters(1).unwrap(),
            g2.peer_counters(2).unwrap()
        ));
        assert_eq!(g2.peer_counters(2).unwrap().snapshot().rx_packets, 3);
        assert!(!Arc::ptr_eq(
            g1.peer_counters(0).unwrap(),
            g2.peer_counters(1).unwrap()
        ));
        assert_eq!(g2.peer_counters(0).unwrap().snapshot().rx_packets, 0);
        assert!(g2.peer_counters(3).is_none());
    }

    /// The delta and the rebuild agree: the same tables as the rebuild of the
    /// delta's peers in its slot order (every lookup of either family, which IPv6
    /// halves are in), the same counters for every peer (kept ones share them with
    /// the previous generation, new ones start at 0), and, where `set` has no two
    /// peers sharing a key, the same lookups as the rebuild of `set` in its order.
    fn same_as_rebuild(prev: &ForwardingTable, delta: &ForwardingTable, set: &[PeerVtep]) {
        assert_eq!(delta.peers().len(), set.len());
        assert!(set.iter().all(|p| delta.peers().contains(p)));
        let same_order = prev.next(delta.peers().iter().copied());
        assert_eq!(delta.peers, same_order.peers);
        assert_eq!(delta.halves, same_order.halves);
        assert_eq!(delta.by_mac, same_order.by_mac);
        assert_eq!(delta.by_vtep_ip, same_order.by_vtep_ip);
        assert_eq!(delta.by_vtep_ip6, same_order.by_vtep_ip6);
        assert_eq!(delta.sources, same_order.sources);
        assert_eq!(delta.sources6, same_order.sources6);
        assert_eq!(delta.conflicted, same_order.conflicted);
        let rebuilt = prev.next(set.iter().copied());
        for p in set {
            let (_, slot) = delta.peer_slot_by_mac(&p.vtep_mac).unwrap();
            let (_, rslot) = rebuilt.peer_slot_by_mac(&p.vtep_mac).unwrap();
            assert!(
                Arc::ptr_eq(
                    delta.peer_counters(slot).unwrap(),
                    rebuilt.peer_counters(rslot).unwrap()
                ) || (delta.peer_counters(slot).unwrap().snapshot().rx_packets == 0
                    && !prev
                        .peers()
                        .iter()
                        .any(|q| q.vtep_ip == p.vtep_ip && q.public_ip == p.public_ip))
            );
            if rebuilt.conflicted {
                continue;
            }
            assert_eq!(delta.peers()[slot], *p);
            assert_eq!(
                delta.peer_slot_by_mac(&p.vtep_mac),
                Some((IpAddr::V4(p.public_ip), slot))
            );
            assert_eq!(delta.slot_by_source(&p.public_ip), Some(slot));
            assert_eq!(delta.mac_for_vtep_ip(&p.vtep_ip), Some(p.vtep_mac));
            assert_eq!(delta.peer_v6(slot), rebuilt.peer_v6(rslot));
            if let Some(h) = delta.peer_v6(slot) {
                assert_eq!(
                    delta.peer_slot_by_mac(&h.vtep_mac),
                    Some((IpAddr::V6(h.public_ip), slot))
                );
                assert_eq!(delta.slot_by_source6(&h.public_ip), Some(slot));
                assert_eq!(delta.mac_for_vtep_ip6(&h.vtep_ip), Some(h.vtep_mac));
            }
        }
        // What went, and no peer of the set names, is gone.
        let named = |mac: MacAddr| {
            set.iter()
                .any(|p| p.vtep_mac == mac || p.v6.is_some_and(|h| h.vtep_mac == mac))
        };
        for q in prev.peers() {
            if !named(q.vtep_mac) {
                assert_eq!(delta.peer_by_mac(&q.vtep_mac), None);
            }
            if let Some(h) = q.v6 {
                if !named(h.vtep_mac) {
                    assert_eq!(delta.peer_by_mac(&h.vtep_mac), None);
                }
                if !set
                    .iter()
                    .filter_map(|p| p.v6)
                    .any(|g| g.public_ip == h.public_ip)
                {
                    assert_eq!(delta.slot_by_source6(&h.public_ip), None);
                }
            }
        }
    }

    #[test]
    fn delta_removes_moves_the_last_slot_and_keeps_counters() {
        let t = ForwardingTable::new(local(), [peer(1), peer(2), peer(3)]);
        t.peer_counters(2).unwrap().add_rx(5, 500, 1);
        let new_mac = PeerVtep {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 1, 1]),
            ..peer(1)
        };
        // Remove peer 1 (slot 0: peer 3 moves there), change its MAC, add peer 4.
        let d = t.with_delta(&[peer(1)], &[new_mac, peer(4)]);
        assert_eq!(d.slot_by_source(&peer(3).public_ip), Some(0));
        assert_eq!(d.peer_counters(0).unwrap().snapshot().rx_packets, 5);
        assert!(Arc::ptr_eq(
            t.peer_counters(0).unwrap(),
            d.peer_counters(2).unwrap()
        ));
        assert_eq!(d.peer_by_mac(&peer(1).vtep_mac), None);
        assert_eq!(
            d.peer_by_mac(&new_mac.vtep_mac),
            Some(IpAddr::V4(peer(1).public_ip))
        );
        same_as_rebuild(&t, &d, &[new_mac, peer(2), peer(3), peer(4)]);
        // A duplicate PublicIP (never published by the control plane): the rebuild.
        let dup = PeerVtep {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 9, 9]),
            vtep_ip: Ipv4Addr::new(10, 244, 99, 0),
            ..peer(2)
        };
        let d2 = d.with_delta(&[], &[dup]);
        assert_eq!(d2.peers().len(), 5);
        assert_eq!(
            d2.peer_by_mac(&dup.vtep_mac),
            Some(IpAddr::V4(dup.public_ip))
        );
        // Adding a peer that is already there changes nothing.
        let again = d.with_delta(&[], &[peer(2)]);
        assert_eq!(again.peers().len(), 4);
        assert!(Arc::ptr_eq(
            again
                .peer_counters(again.slot_by_source(&peer(2).public_ip).unwrap())
                .unwrap(),
            d.peer_counters(d.slot_by_source(&peer(2).public_ip).unwrap())
                .unwrap()
        ));
        // Removing a peer that is not there: the rebuild, which ignores it.
        let d3 = d.with_delta(&[peer(7)], &[]);
        assert_eq!(d3.peers().len(), 4);
        // Peers no table admits are skipped both ways.
        let bad = PeerVtep {
            vtep_mac: MacAddr::BROADCAST,
            ..peer(8)
        };
        assert_eq!(d.with_delta(&[bad], &[bad]).peers().len(), 4);
    }

    /// This node with an IPv6 VtepMAC.
    fn local6() -> LocalVtep {
        LocalVtep {
            v6: Some(LocalVtep6 {
                vtep_mac: "c6:d2:32:6f:8f:46".parse().unwrap(),
                inner: Some(InnerCheck6::lab()),
            }),
            ..local()
        }
    }

    /// Peer `n` with its IPv6 half.
    fn dual(n: u8) -> PeerVtep {
        PeerVtep {
            v6: Some(half(n, 0)),
            ..peer(n)
        }
    }

    #[test]
    fn v6_half_lookups() {
        let t = ForwardingTable::new(local6(), [peer(1), dual(2)]);
        let h = half(2, 0);
        assert_eq!(
            t.peer_slot_by_mac(&dual(2).vtep_mac),
            Some((IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2)), 1))
        );
        assert_eq!(
            t.peer_slot_by_mac(&h.vtep_mac),
            Some((IpAddr::V6("fd00:64::2".parse().unwrap()), 1))
        );
        assert_eq!(t.peer_by_mac(&h.vtep_mac), Some(IpAddr::V6(h.public_ip)));
        assert_eq!(t.slot_by_source6(&"fd00:64::2".parse().unwrap()), Some(1));
        assert_eq!(t.slot_by_source6(&"fd00:64::1".parse().unwrap()), None);
        assert_eq!(
            t.mac_for_vtep_ip6(&"fd00:10:244:2::".parse().unwrap()),
            Some(h.vtep_mac)
        );
        assert_eq!(
            t.mac_for_vtep_ip6(&"fd00:10:244:1::".parse().unwrap()),
            None
        );
        assert_eq!(t.peer_v6(1), Some(&h));
        assert_eq!(t.peer_v6(0), None);
        assert_eq!(t.peer_v6(2), None);
        // The IPv4 lookups are as they were.
        assert_eq!(t.slot_by_source(&peer(2).public_ip), Some(1));
        assert_eq!(t.mac_for_vtep_ip(&peer(2).vtep_ip), Some(peer(2).vtep_mac));
    }

    /// An IPv6 half that breaks a rule is left out alone: the peer's IPv4 half stays,
    /// and so does the first of two halves that share a key.
    #[test]
    fn v6_halves_left_out_alone() {
        let with = |n: u8, h: PeerVtep6| PeerVtep {
            v6: Some(h),
            ..peer(n)
        };
        let ours6 = local6().v6.unwrap().vtep_mac;
        let left_out = [
            // Not unicast.
            with(
                3,
                PeerVtep6 {
                    vtep_mac: MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                    ..half(3, 0)
                },
            ),
            with(
                4,
                PeerVtep6 {
                    vtep_mac: MacAddr::ZERO,
                    ..half(4, 0)
                },
            ),
            // One of ours.
            with(
                5,
                PeerVtep6 {
                    vtep_mac: local().vtep_mac,
                    ..half(5, 0)
                },
            ),
            with(
                6,
                PeerVtep6 {
                    vtep_mac: ours6,
                    ..half(6, 0)
                },
            ),
            // The peer's own IPv4 VtepMAC.
            with(
                7,
                PeerVtep6 {
                    vtep_mac: peer(7).vtep_mac,
                    ..half(7, 0)
                },
            ),
            // Another peer's IPv4 VtepMAC, an earlier and a later one.
            with(
                8,
                PeerVtep6 {
                    vtep_mac: peer(1).vtep_mac,
                    ..half(8, 0)
                },
            ),
            with(
                9,
                PeerVtep6 {
                    vtep_mac: peer(20).vtep_mac,
                    ..half(9, 0)
                },
            ),
            // Another peer's IPv6 VtepMAC, PublicIPv6 or IPv6 VTEP address.
            with(
                10,
                PeerVtep6 {
                    vtep_mac: half(2, 0).vtep_mac,
                    ..half(10, 0)
                },
            ),
            with(
                11,
                PeerVtep6 {
                    public_ip: half(2, 0).public_ip,
                    ..half(11, 0)
                },
            ),
            with(
                12,
                PeerVtep6 {
                    vtep_ip: half(2, 0).vtep_ip,
                    ..half(12, 0)
                },
            ),
        ];
        let mut all = vec![peer(1), dual(2)];
        all.extend(left_out);
        all.push(peer(20));
        let t = ForwardingTable::new(local6(), all.iter().copied());
        assert_eq!(t.peers(), &all[..]);
        for (slot, p) in all.iter().enumerate() {
            assert_eq!(
                t.peer_slot_by_mac(&p.vtep_mac),
                Some((IpAddr::V4(p.public_ip), slot)),
                "{p:?}"
            );
            assert_eq!(t.slot_by_source(&p.public_ip), Some(slot));
        }
        for (slot, p) in all.iter().enumerate().skip(2).take(left_out.len()) {
            assert_eq!(t.peer_v6(slot), None, "{p:?}");
            let h = p.v6.unwrap();
            assert_ne!(t.slot_by_source6(&h.public_ip), Some(slot));
            assert_ne!(t.mac_for_vtep_ip6(&h.vtep_ip), Some(h.vtep_mac));
        }
        // Peer 2's half is whole: the later halves that share its keys took nothing.
        let h2 = half(2, 0);
        assert_eq!(t.peer_v6(1), Some(&h2));
        assert_eq!(
            t.peer_slot_by_mac(&h2.vtep_mac),
            Some((IpAddr::V6(h2.public_ip), 1))
        );
        assert_eq!(t.slot_by_source6(&h2.public_ip), Some(1));
        assert_eq!(t.mac_for_vtep_ip6(&h2.vtep_ip), Some(h2.vtep_mac));
        assert_eq!((t.sources6.len(), t.by_vtep_ip6.len()), (1, 1));
        assert!(t.conflicted);
        // A peer whose IPv4 VtepMAC is our IPv6 one is left out whole.
        let t = ForwardingTable::new(
            local6(),
            [PeerVtep {
                vtep_mac: ours6,
                ..dual(1)
            }],
        );
        assert!(t.peers().is_empty());
    }

    /// Deltas carry the IPv6 halves: a removed peer takes its IPv6 entries along, a
    /// peer moved into a freed slot takes its IPv6 entries along, a changed IPv6 half
    /// keeps the peer's counters; a half that shares a key with another peer's makes
    /// the delta a rebuild, and so does every delta to that table.
    #[test]
    fn deltas_with_v6_halves() {
        let t = ForwardingTable::new(local6(), [dual(1), peer(2), dual(3)]);
        t.peer_counters(0).unwrap().add_rx(4, 400, 1);
        let (d, by_delta) = t.delta_or_rebuild(&[dual(1)], &[]);
        assert!(by_delta);
        same_as_rebuild(&t, &d, &[dual(3), peer(2)]);
        let (h1, h3) = (half(1, 0), half(3, 0));
        assert_eq!(d.peer_by_mac(&h1.vtep_mac), None);
        assert_eq!(d.slot_by_source6(&h1.public_ip), None);
        assert_eq!(d.mac_for_vtep_ip6(&h1.vtep_ip), None);
        assert_eq!(
            d.peer_slot_by_mac(&h3.vtep_mac),
            Some((IpAddr::V6(h3.public_ip), 0))
        );
        assert_eq!(d.slot_by_source6(&h3.public_ip), Some(0));
        assert_eq!(d.peer_v6(0), Some(&h3));

        // Peer 1 comes back with a new IPv6 half: its counters, found by its IPv4
        // keys, come back with it; then it loses the half again.
        let moved = PeerVtep {
            v6: Some(half(1, 1)),
            ..dual(1)
        };
        let (d2, by_delta) = t.delta_or_rebuild(&[dual(1)], &[moved]);
        assert!(by_delta);
        same_as_rebuild(&t, &d2, &[dual(3), peer(2), moved]);
        let s = d2.slot_by_source(&peer(1).public_ip).unwrap();
        assert_eq!(d2.peer_counters(s).unwrap().snapshot().rx_packets, 4);
        assert_eq!(d2.peer_by_mac(&h1.vtep_mac), None);
        assert_eq!(d2.slot_by_source6(&h1.public_ip), Some(s));
        let (d3, by_delta) = d2.delta_or_rebuild(&[moved], &[peer(1)]);
        assert!(by_delta);
        same_as_rebuild(&d2, &d3, &[dual(3), peer(2), peer(1)]);
        assert_eq!(d3.slot_by_source6(&h1.public_ip), None);

        // Peer 4's half shares peer 3's PublicIPv6: the rebuild, where peer 3 keeps it.
        let clash = PeerVtep {
            v6: Some(PeerVtep6 {
                public_ip: h3.public_ip,
                ..half(4, 0)
            }),
            ..peer(4)
        };
        let (d4, by_delta) = d3.delta_or_rebuild(&[], &[clash]);
        assert!(!by_delta && d4.conflicted);
        assert_eq!(
            d4.slot_by_source6(&h3.public_ip),
            d4.slot_by_source(&peer(3).public_ip)
        );
        assert_eq!(
            d4.peer_v6(d4.slot_by_source(&peer(4).public_ip).unwrap()),
            None
        );
        // Peer 3 goes: by a rebuild again, in which peer 4's half is admitted.
        let (d5, by_delta) = d4.delta_or_rebuild(&[dual(3)], &[]);
        assert!(!by_delta && !d5.conflicted);
        same_as_rebuild(&d4, &d5, &[peer(2), peer(1), clash]);
        assert_eq!(
            d5.slot_by_source6(&h3.public_ip),
            d5.slot_by_source(&peer(4).public_ip)
        );
        // And the deltas apply again.
        assert!(d5.delta_or_rebuild(&[peer(2)], &[dual(5)]).1);
    }

    /// Peer `n`'s IPv6 half: fd00:10:244:<n>::, at fd00:64::<n>.
    fn half(n: u8, variant: u8) -> PeerVtep6 {
        PeerVtep6 {
            vtep_mac: MacAddr([0x0e, 0, 0, 6, variant, n]),
            public_ip: Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, u16::from(n)),
            vtep_ip: Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, 0),
        }
    }

    /// One step of the property tests: the peers of `set` numbered in `remove` go,
    /// the numbers in `add` not in the set come (`variant` picks their MACs, `v6`
    /// their IPv6 half: 0 none, 1 its own, 2 one no table admits (its MAC is the
    /// peer's IPv4 VtepMAC), 3 one that shares peer `n ^ 1`'s PublicIPv6 and takes
    /// its IPv4 VtepMAC of variant 0); `set` becomes the result. Returns (removed,
    /// added).
    fn step(
        set: &mut Vec<PeerVtep>,
        remove: &[u8],
        add: &[(u8, u8, u8)],
    ) -> (Vec<PeerVtep>, Vec<PeerVtep>) {
        let removed: Vec<PeerVtep> = set
            .iter()
            .filter(|p| remove.contains(&p.vtep_ip.octets()[2]))
            .copied()
            .collect();
        set.retain(|p| !removed.contains(p));
        let mut added: Vec<PeerVtep> = Vec::new();
        for &(n, variant, v6) in add {
            if set.iter().chain(&added).any(|p| p.vtep_ip.octets()[2] == n) {
                continue;
            }
            let vtep_mac = MacAddr([0x0e, 0, 0, 0, variant, n]);
            let v6 = match v6 {
                0 => None,
                1 => Some(half(n, variant)),
                2 => Some(PeerVtep6 {
                    vtep_mac,
                    ..half(n, variant)
                }),
                _ => Some(PeerVtep6 {
                    vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, n ^ 1]),
                    public_ip: half(n ^ 1, 0).public_ip,
                    ..half(n, variant)
                }),
            };
            added.push(PeerVtep {
                vtep_mac,
                v6,
                ..peer(n)
            });
        }
        set.extend(added.iter().copied());
        (removed, added)
    }

    proptest::proptest! {
        /// Any sequence of deltas, over peers with or without IPv6 halves, gives what
        /// the rebuild gives; while no two peers share a key, as a delta.
        #[test]
        fn delta_equals_rebuild(steps in proptest::collection::vec(
            (proptest::collection::vec(1u8..40, 0..6), proptest::collection::vec((1u8..40, 0u8..2, 0u8..4), 0..6)), 1..12)) {
            let mut set: Vec<PeerVtep> = Vec::new();
            let mut t = ForwardingTable::new(local(), []);
            for (remove, add) in steps {
                let (removed, added) = step(&mut set, &remove, &add);
                let (d, by_delta) = t.delta_or_rebuild(&removed, &added);
                same_as_rebuild(&t, &d, &set);
                if !t.conflicted && !d.conflicted {
                    proptest::prop_assert!(by_delta);
                }
                t = d;
            }
        }

        /// The shared table's deltas, applied to the reused generation before the
        /// current one whenever no reader holds it, give the same generations as
        /// [`ForwardingTable::with_delta`] on the current one: the same slots, the
        /// same counters (a count added to a peer stays with it).
        #[test]
        fn shared_deltas_equal_copies(steps in proptest::collection::vec(
            (proptest::collection::vec(1u8..40, 0..6), proptest::collection::vec((1u8..40, 0u8..2, 0u8..3), 0..6), proptest::bool::ANY), 1..16)) {
            let mut set: Vec<PeerVtep> = Vec::new();
            let shared = SharedTable::new(ForwardingTable::new(local(), []));
            let mut held: Option<Arc<ForwardingTable>> = None;
            let mut free_steps = 0u64;
            for (remove, add, hold) in steps {
                let (removed, added) = step(&mut set, &remove, &add);
                let before = shared.load();
                for slot in 0..before.peers().len() {
                    before.peer_counters(slot).unwrap().add_rx(1, 100, 1);
                }
                let copy = before.with_delta(&removed, &added);
                // A reader keeps the generation before the change (a worker asleep),
                // or lets go of what it held.
                free_steps += u64::from(held.is_none());
                held = hold.then(|| Arc::clone(&before));
                shared.apply_delta(&removed, &added);
                let got = shared.load();
                proptest::prop_assert_eq!(got.peers(), copy.peers());
                same_as_rebuild(&before, &got, &set);
            }
            drop(held);
            // Every step after the first with no generation held reused one.
            let reused = shared.0.reused.load(std::sync::atomic::Ordering::Relaxed);
            proptest::prop_assert!(reused + 1 >= free_steps, "{} of {}", reused, free_steps);
        }
    }
}
