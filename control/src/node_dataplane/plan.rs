//! Which netlink requests carry out a batch of peer changes, and which ones make a
//! device's dumps match the peer set (pure: peers, paths and dumps in, requests out;
//! [`crate::netlink::Netlink::apply`] sends them in batches).
//!
//! Per overlay peer, in this order so the kernel never ARPs and never floods: the
//! neighbour `<subnet>.0 lladdr <VtepMAC>`, the fdb entry `<VtepMAC> dst <PublicIP>`
//! (kernel dataplane only), the onlink route; removal in reverse. Per direct peer
//! (DirectRouting): one route via its PublicIP on the underlay. A peer whose path
//! changes gets its new route first (it replaces the old one: same destination),
//! then what only the old path needed goes. See [`super`] for the two dataplanes.
//!
//! A peer's IPv6 half (a dual-stack lease) goes on the second device of either
//! dataplane, `flannel-v6.<VNI>`, when there is one ([`Devices::overlay6`]), the way
//! flanneld programs it: the neighbour `<IPv6 subnet's first address> lladdr
//! <IPv6 VtepMAC>`, the fdb entry `<IPv6 VtepMAC> dst <PublicIPv6>`, the onlink route
//! via that first address. With DirectRouting, a peer whose PublicIPv6 is on the
//! underlay's own IPv6 networks gets `<IPv6 subnet> via <PublicIPv6> dev <underlay>`
//! instead, decided apart from its IPv4 half ([`Route::path6`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::direct::{DirectRouting, PeerPath};
use crate::netlink::{DeviceRoute, FdbEntry, NeighbourEntry, PeerOp};
use crate::peers::{Peer, PeerChange, PeerIpv6};
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;
use vxmesh_dataplane::wire::MacAddr;

/// The devices a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices {
    /// The overlay device (TAP or `flannel.<VNI>`).
    pub overlay: u32,
    /// The underlay interface (DirectRouting's routes).
    pub underlay: u32,
    /// Whether the overlay device has an fdb (the kernel's vxlan device does).
    pub fdb: bool,
    /// The IPv6 overlay device (`flannel-v6.<VNI>`, dual stack; the TAP when the
    /// userspace threads carry IPv6).
    pub overlay6: Option<u32>,
    /// Whether the IPv6 overlay device has an fdb (`flannel-v6.<VNI>` does; the TAP
    /// does not: the threads' forwarding table maps the IPv6 VtepMAC to the peer).
    pub fdb6: bool,
}

/// The peers programmed on the devices with an fdb, by subnet and by VtepMAC: an
/// fdb entry is per MAC, so it stays while another programmed peer uses its MAC (two
/// leases of one node). IPv4 halves on the overlay device, IPv6 halves on the IPv6
/// device, each kept apart (a DirectRouting peer has only the second).
#[derive(Debug, Default, Clone)]
pub struct Programmed {
    by_subnet: BTreeMap<Subnet, Peer>,
    by_mac: BTreeMap<MacAddr, BTreeSet<Subnet>>,
    v6: BTreeMap<At6, PeerIpv6>,
    by_mac6: BTreeMap<MacAddr, BTreeSet<At6>>,
}

/// What a programmed IPv6 half is recorded under: its peer's IPv4 subnet on a
/// network that carries IPv4 (a dual-stack peer's IPv6 half may change while the peer
/// stays), its own subnet on an IPv6-only network (the peer is its IPv6 half).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum At6 {
    Peer(Subnet),
    Own(Subnet6),
}

/// [`Programmed`] as a running dataplane keeps it (the agent's tasks share it).
#[derive(Debug, Default)]
pub struct SharedProgrammed(std::sync::Mutex<Programmed>);

impl SharedProgrammed {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Programmed> {
        // A poisoned lock only means a panic elsewhere; the map is still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn unlink<K: Ord>(users: &mut BTreeMap<MacAddr, BTreeSet<K>>, mac: MacAddr, subnet: &K) {
    if let Some(set) = users.get_mut(&mac) {
        set.remove(subnet);
        if set.is_empty() {
            users.remove(&mac);
        }
    }
}

impl Programmed {
    pub fn insert(&mut self, p: &Peer) {
        self.remove(&p.subnet);
        self.by_subnet.insert(p.subnet, *p);
        self.by_mac.entry(p.vtep_mac).or_default().insert(p.subnet);
    }

    pub fn remove(&mut self, subnet: &Subnet) {
        if let Some(old) = self.by_subnet.remove(subnet) {
            unlink(&mut self.by_mac, old.vtep_mac, subnet);
        }
    }

    /// Records the IPv6 half of the peer at `subnet` (`None`: it has none).
    pub fn set6(&mut self, subnet: At6, v6: Option<PeerIpv6>) {
        if let Some(old) = self.v6.remove(&subnet) {
            unlink(&mut self.by_mac6, old.vtep_mac, &subnet);
        }
        if let Some(v6) = v6 {
            self.v6.insert(subnet, v6);
            self.by_mac6.entry(v6.vtep_mac).or_default().insert(subnet);
        }
    }

    /// A programmed peer other than the one at `except` using `mac` for IPv6: its
    /// PublicIPv6.
    fn other_user_of6(&self, mac: MacAddr, except: &At6) -> Option<Ipv6Addr> {
        self.by_mac6
            .get(&mac)?
            .iter()
            .find(|s| *s != except)
            .and_then(|s| self.v6.get(s))
            .map(|v6| v6.public_ipv6)
    }

    /// Only these peers on the overlay device (after a reconcile).
    pub fn reset<'p>(&mut self, peers: impl IntoIterator<Item = &'p Peer>) {
        self.by_subnet.clear();
        self.by_mac.clear();
        for p in peers {
            self.insert(p);
        }
    }

    /// Only these peers' IPv6 halves on the IPv6 device (after a reconcile).
    pub fn reset6<'p>(&mut self, peers: impl IntoIterator<Item = &'p Peer>) {
        self.v6.clear();
        self.by_mac6.clear();
        for p in peers {
            self.set6(At6::Peer(p.subnet), p.ipv6);
        }
    }

    /// Only these IPv6-only peers on the IPv6 device (after a reconcile).
    pub fn reset_ipv6_only<'p>(&mut self, peers: impl IntoIterator<Item = &'p PeerIpv6>) {
        self.v6.clear();
        self.by_mac6.clear();
        for v6 in peers {
            self.set6(At6::Own(v6.subnet), Some(*v6));
        }
    }

    /// A programmed peer other than the one at `except` using `mac`: its PublicIP.
    fn other_user_of(&self, mac: MacAddr, except: &Subnet) -> Option<Ipv4Addr> {
        self.by_mac
            .get(&mac)?
            .iter()
            .find(|s| *s != except)
            .and_then(|s| self.by_subnet.get(s))
            .map(|p| p.public_ip)
    }
}

fn overlay_add(d: &Devices, p: &Peer, prog: &mut Programmed, out: &mut Vec<PeerOp>) {
    let index = d.overlay;
    out.push(PeerOp::Neighbour {
        index,
        ip: p.vtep_ip(),
        mac: p.vtep_mac,
    });
    if d.fdb {
        out.push(PeerOp::Fdb {
            index,
            mac: p.vtep_mac,
            dst: p.public_ip,
        });
        prog.insert(p);
    }
    out.push(PeerOp::PeerRoute {
        index,
        subnet: p.subnet,
    });
}

fn overlay_remove(d: &Devices, p: &Peer, prog: &mut Programmed, out: &mut Vec<PeerOp>) {
    let index = d.overlay;
    out.push(PeerOp::DeletePeerRoute {
        index,
        subnet: p.subnet,
    });
    if d.fdb {
        out.push(match prog.other_user_of(p.vtep_mac, &p.subnet) {
            // Another lease of the same node: its entry must stay (and point at it).
            Some(ip) => PeerOp::Fdb {
                index,
                mac: p.vtep_mac,
                dst: ip,
            },
            None => PeerOp::DeleteFdb {
                index,
                mac: p.vtep_mac,
                dst: p.public_ip,
            },
        });
        prog.remove(&p.subnet);
    }
    out.push(PeerOp::DeleteNeighbour {
        index,
        ip: p.vtep_ip(),
    });
}

/// How each half of a peer is routed: [`DirectPaths`] decides both; [`program_ops`]'s
/// closure decides the IPv4 half and sends every IPv6 half over the IPv6 device.
pub trait Route {
    fn path(&self, p: &Peer) -> PeerPath;
    fn path6(&self, _v6: &PeerIpv6) -> PeerPath<Ipv6Addr> {
        PeerPath::Overlay
    }
}

struct Ipv4Paths<F>(F);

impl<F: Fn(&Peer) -> PeerPath> Route for Ipv4Paths<F> {
    fn path(&self, p: &Peer) -> PeerPath {
        (self.0)(p)
    }
}

/// Both halves as a node's [`DirectRouting`] decides them.
#[derive(Debug, Clone, Copy)]
pub struct DirectPaths<'a>(pub &'a DirectRouting);

impl Route for DirectPaths<'_> {
    fn path(&self, p: &Peer) -> PeerPath {
        self.0.path(p.public_ip)
    }
    fn path6(&self, v6: &PeerIpv6) -> PeerPath<Ipv6Addr> {
        self.0.path6(v6.public_ipv6)
    }
}

/// The IPv6 half of a peer on the IPv6 device `index`: neighbour, fdb entry (when the
/// device has an fdb), route.
fn overlay6_add(
    (index, fdb): (u32, bool),
    at: At6,
    v6: &PeerIpv6,
    prog: &mut Programmed,
    out: &mut Vec<PeerOp>,
) {
    out.push(PeerOp::Neighbour6 {
        index,
        ip: v6.subnet.addr(),
        mac: v6.vtep_mac,
    });
    if fdb {
        out.push(PeerOp::Fdb6 {
            index,
            mac: v6.vtep_mac,
            dst: v6.public_ipv6,
        });
    }
    prog.set6(at, Some(*v6));
    out.push(PeerOp::PeerRoute6 {
        index,
        subnet: v6.subnet,
    });
}

/// What only `old` (the IPv6 half the peer at `at` had) needed, once `new` (what it
/// has now, programmed already) is in place: route and neighbour of a subnet it no
/// longer has, the fdb entry of a MAC no programmed peer uses.
fn overlay6_retire(
    (index, fdb): (u32, bool),
    at: At6,
    old: &PeerIpv6,
    new: Option<&PeerIpv6>,
    prog: &mut Programmed,
    out: &mut Vec<PeerOp>,
) {
    if new.map(|n| n.subnet) != Some(old.subnet) {
        out.push(PeerOp::DeletePeerRoute6 {
            index,
            subnet: old.subnet,
        });
    }
    if new.is_none() {
        prog.set6(at, None);
    }
    if fdb && new.map(|n| n.vtep_mac) != Some(old.vtep_mac) {
        out.push(match prog.other_user_of6(old.vtep_mac, &at) {
            Some(dst) => PeerOp::Fdb6 {
                index,
                mac: old.vtep_mac,
                dst,
            },
            None => PeerOp::DeleteFdb6 {
                index,
                mac: old.vtep_mac,
                dst: old.public_ipv6,
            },
        });
    }
    if new.map(|n| n.subnet.addr()) != Some(old.subnet.addr()) {
        out.push(PeerOp::DeleteNeighbour6 {
            index,
            ip: old.subnet.addr(),
        });
    }
}

/// A change's old and new peer.
fn halves<P: Copy>(c: &PeerChange<P>) -> (Option<P>, Option<P>) {
    match c {
        PeerChange::Added(p) => (None, Some(*p)),
        PeerChange::Updated { old, new } => (Some(*old), Some(*new)),
        PeerChange::Removed(p) => (Some(*p), None),
    }
}

/// The IPv6 half of a change (`old`, `new`: what the peer recorded at `at` had and
/// has), on the IPv6 device `index` (or, DirectRouting, on the underlay): whatever
/// the IPv4 half's path, the new half first, then what only the old one needed.
fn ipv6_ops(
    (index, underlay, fdb): (u32, u32, bool),
    at: At6,
    (old, new): (Option<PeerIpv6>, Option<PeerIpv6>),
    route: &impl Route,
    prog: &mut Programmed,
    out: &mut Vec<PeerOp>,
) {
    let new6 = new.map(|v| (v, route.path6(&v)));
    let old6 = old.map(|v| (v, route.path6(&v)));
    // Direct to overlay: the direct route goes first. Linux refuses an IPv6 onlink
    // route whose gateway another device's route covers (EINVAL), and the direct route
    // covers the overlay route's gateway, the subnet's first address.
    let mut direct_gone = false;
    if let (Some((o6, PeerPath::Direct { via })), Some((_, PeerPath::Overlay))) = (&old6, &new6) {
        out.push(PeerOp::DeleteDirectRoute6 {
            index: underlay,
            subnet: o6.subnet,
            via: *via,
        });
        direct_gone = true;
    }
    match &new6 {
        Some((n6, PeerPath::Overlay)) => overlay6_add((index, fdb), at, n6, prog, out),
        Some((n6, PeerPath::Direct { via })) => out.push(PeerOp::DirectRoute6 {
            index: underlay,
            subnet: n6.subnet,
            via: *via,
        }),
        None => {}
    }
    let Some((o6, old_path)) = old6 else {
        return;
    };
    match old_path {
        PeerPath::Overlay => {
            let still = new6
                .as_ref()
                .filter(|(_, path)| *path == PeerPath::Overlay)
                .map(|(n6, _)| *n6);
            overlay6_retire((index, fdb), at, &o6, still.as_ref(), prog, out);
        }
        PeerPath::Direct { via } => {
            // The same route again (replaced in place) needs no delete; any other
            // new route for the same subnet replaced this one already, and the delete
            // (it names the gateway) then finds nothing.
            let same = new6.is_some_and(|(n6, path)| {
                n6.subnet == o6.subnet && path == PeerPath::Direct { via }
            });
            if !same && !direct_gone {
                out.push(PeerOp::DeleteDirectRoute6 {
                    index: underlay,
                    subnet: o6.subnet,
                    via,
                });
            }
        }
    }
}

/// The requests that carry out `changes` (in order), each with the index of the
/// change it belongs to; `path` says how a peer is routed. Records the overlay peers
/// in `prog` as it goes.
pub fn program_ops(
    d: &Devices,
    changes: &[PeerChange],
    path: impl Fn(&Peer) -> PeerPath,
    prog: &mut Programmed,
) -> Vec<(usize, PeerOp)> {
    program_ops_routed(d, changes, &Ipv4Paths(path), prog)
}

/// [`program_ops`] with both halves' paths decided by `route`.
pub fn program_ops_routed(
    d: &Devices,
    changes: &[PeerChange],
    route: &impl Route,
    prog: &mut Programmed,
) -> Vec<(usize, PeerOp)> {
    let path = |p: &Peer| route.path(p);
    let mut out = Vec::with_capacity(changes.len() * 3);
    let mut ops = Vec::with_capacity(4);
    for (i, c) in changes.iter().enumerate() {
        ops.clear();
        match c {
            PeerChange::Added(p) => match path(p) {
                PeerPath::Direct { via } => ops.push(PeerOp::DirectRoute {
                    index: d.underlay,
                    subnet: p.subnet,
                    via,
                }),
                PeerPath::Overlay => overlay_add(d, p, prog, &mut ops),
            },
            PeerChange::Updated { old, new } => match (path(old), path(new)) {
                (PeerPath::Overlay, PeerPath::Overlay) => {
                    overlay_add(d, new, prog, &mut ops);
                    // Make before break: the old VtepMAC's fdb entry goes last (a new
                    // PublicIP alone is the fdb replace's).
                    if d.fdb
                        && old.vtep_mac != new.vtep_mac
                        && prog.other_user_of(old.vtep_mac, &new.subnet).is_none()
                    {
                        ops.push(PeerOp::DeleteFdb {
                            index: d.overlay,
                            mac: old.vtep_mac,
                            dst: old.public_ip,
                        });
                    }
                }
                (PeerPath::Direct { .. }, PeerPath::Direct { via }) => {
                    ops.push(PeerOp::DirectRoute {
                        index: d.underlay,
                        subnet: new.subnet,
                        via,
                    })
                }
                (PeerPath::Overlay, PeerPath::Direct { via }) => {
                    ops.push(PeerOp::DirectRoute {
                        index: d.underlay,
                        subnet: new.subnet,
                        via,
                    });
                    overlay_remove(d, old, prog, &mut ops);
                }
                (PeerPath::Direct { via }, PeerPath::Overlay) => {
                    overlay_add(d, new, prog, &mut ops);
                    ops.push(PeerOp::DeleteDirectRoute {
                        index: d.underlay,
                        subnet: old.subnet,
                        via,
                    });
                }
            },
            PeerChange::Removed(p) => match path(p) {
                PeerPath::Direct { via } => ops.push(PeerOp::DeleteDirectRoute {
                    index: d.underlay,
                    subnet: p.subnet,
                    via,
                }),
                PeerPath::Overlay => overlay_remove(d, p, prog, &mut ops),
            },
        }
        if let Some(index6) = d.overlay6 {
            let (old, new) = halves(c);
            if let Some(at) = new.or(old).map(|p| At6::Peer(p.subnet)) {
                let v6 = (old.and_then(|p| p.ipv6), new.and_then(|p| p.ipv6));
                ipv6_ops((index6, d.underlay, d.fdb6), at, v6, route, prog, &mut ops);
            }
        }
        out.extend(ops.drain(..).map(|op| (i, op)));
    }
    out
}

/// [`program_ops_routed`] for an IPv6-only node, whose peers are IPv6 halves alone:
/// each on the IPv6 device `index6` (or, as `route` decides, on the `underlay`).
pub fn program_ops6(
    (index6, underlay): (u32, u32),
    changes: &[PeerChange<PeerIpv6>],
    route: &impl Route,
    prog: &mut Programmed,
) -> Vec<(usize, PeerOp)> {
    let mut out = Vec::with_capacity(changes.len() * 3);
    let mut ops = Vec::with_capacity(4);
    for (i, c) in changes.iter().enumerate() {
        let (old, new) = halves(c);
        if let Some(at) = new.or(old).map(|v| At6::Own(v.subnet)) {
            ipv6_ops(
                (index6, underlay, true),
                at,
                (old, new),
                route,
                prog,
                &mut ops,
            );
        }
        out.extend(ops.drain(..).map(|op| (i, op)));
    }
    out
}

/// What the devices carry, as dumped.
#[derive(Debug, Clone, Default)]
pub struct Dumps {
    /// Routes of the main table (not the kernel's own), every device.
    pub routes: Vec<DeviceRoute>,
    /// IPv4 neighbours of the overlay device: every one (`all_neighbours`, a dump),
    /// or only those at the overlay peers' VTEP addresses (lookups), which finds
    /// what is missing or wrong but nothing stale.
    pub neighbours: Vec<NeighbourEntry>,
    pub all_neighbours: bool,
    /// The overlay device's fdb (empty without one).
    pub fdb: Vec<FdbEntry>,
    /// The IPv6 device's, when there is one ([`Devices::overlay6`]).
    pub v6: Option<Dumps6>,
}

/// What the IPv6 device carries, as dumped: its IPv6 routes (main table, not the
/// kernel's own), IPv6 neighbours and fdb.
#[derive(Debug, Clone, Default)]
pub struct Dumps6 {
    pub routes: Vec<DeviceRoute<Ipv6Addr>>,
    pub neighbours: Vec<NeighbourEntry<Ipv6Addr>>,
    pub fdb: Vec<FdbEntry<Ipv6Addr>>,
    /// The IPv6 routes of the main table through the underlay (gateway routes only
    /// count): DirectRouting's, or ones it left when it was turned off. Dumped
    /// whatever the setting, because a route there for an overlay peer's subnet keeps
    /// Linux from adding the overlay route (it covers the onlink gateway), so the
    /// reconcile pass must see it to delete it first.
    pub direct_routes: Vec<DeviceRoute<Ipv6Addr>>,
}

/// Whether `route` (an IPv6 route through the underlay) is a gateway route for exactly
/// `subnet`, the IPv6 half of a peer that goes through the IPv6 device: Linux refuses
/// that device's onlink route while such a route covers its gateway, so it goes first
/// (left by DirectRouting, turned off since, or from before the peer moved behind a
/// router).
pub fn blocks_overlay6(route: &DeviceRoute<Ipv6Addr>, subnet: &Subnet6) -> bool {
    route.destination == subnet.addr()
        && route.prefix_len == subnet.prefix_len()
        && route.gateway.is_some()
}

/// DirectRouting for the IPv6 halves in a reconcile pass: the decisions, and the IPv6
/// Network inside which direct routes on the underlay may be pruned.
#[derive(Debug, Clone, Copy)]
pub struct Direct6<'a> {
    pub routing: &'a DirectRouting,
    pub network: Subnet6,
    /// IPv6SubnetLen: a direct route is one peer's IPv6 subnet.
    pub subnet_len: u8,
}

/// What a reconcile pass sends: repairs (missing or wrong entries, written again)
/// before removals (entries no peer accounts for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    pub repairs: Vec<PeerOp>,
    pub stale: Vec<PeerOp>,
}

/// Compares the dumps with `peers` (the full set, each with its path): what is
/// missing or differs is re-added, and what no peer accounts for is removed — on the
/// overlay device its routes, permanent neighbours and fdb entries; on the underlay
/// (`network` given, with SubnetLen: DirectRouting on) the direct routes inside the Network (see
/// [`super::direct::is_stale_direct_route`]), and with `direct6` the IPv6 ones inside
/// the IPv6 Network. Other routes are never touched.
pub fn reconcile_ops(
    d: &Devices,
    peers: &[(Peer, PeerPath)],
    dumps: &Dumps,
    network: Option<(&Subnet, u8)>,
    direct6: Option<Direct6<'_>>,
) -> Reconcile {
    let mut r = Reconcile::default();
    let have_routes: BTreeSet<(u32, Ipv4Addr, u8, Ipv4Addr)> = dumps
        .routes
        .iter()
        .filter_map(|r| Some((r.oif?, r.destination, r.prefix_len, r.gateway?)))
        .collect();
    let have_neigh: BTreeMap<Ipv4Addr, Option<MacAddr>> = dumps
        .neighbours
        .iter()
        .filter(|n| n.permanent)
        .map(|n| (n.ip, n.mac))
        .collect();
    let have_fdb: BTreeSet<(MacAddr, Ipv4Addr)> = dumps
        .fdb
        .iter()
        .filter_map(|e| Some((e.mac, e.dst?)))
        .collect();

    let mut overlay_subnets = BTreeSet::new();
    let mut overlay_macs = BTreeSet::new();
    let mut overlay_vteps = BTreeSet::new();
    let mut direct = Vec::new();
    for (p, path) in peers {
        let s = p.subnet;
        match *path {
            PeerPath::Overlay => {
                overlay_subnets.insert(s);
                overlay_macs.insert((p.vtep_mac, p.public_ip));
                overlay_vteps.insert(p.vtep_ip());
                if have_neigh.get(&p.vtep_ip()) != Some(&Some(p.vtep_mac)) {
                    r.repairs.push(PeerOp::Neighbour {
                        index: d.overlay,
                        ip: p.vtep_ip(),
                        mac: p.vtep_mac,
                    });
                }
                if d.fdb && !have_fdb.contains(&(p.vtep_mac, p.public_ip)) {
                    r.repairs.push(PeerOp::Fdb {
                        index: d.overlay,
                        mac: p.vtep_mac,
                        dst: p.public_ip,
                    });
                }
                if !have_routes.contains(&(d.overlay, s.addr(), s.prefix_len(), s.addr())) {
                    r.repairs.push(PeerOp::PeerRoute {
                        index: d.overlay,
                        subnet: s,
                    });
                }
            }
            PeerPath::Direct { via } => {
                direct.push((s, via));
                if !have_routes.contains(&(d.underlay, s.addr(), s.prefix_len(), via)) {
                    r.repairs.push(PeerOp::DirectRoute {
                        index: d.underlay,
                        subnet: s,
                        via,
                    });
                }
            }
        }
    }

    for route in &dumps.routes {
        if route.oif == Some(d.overlay) {
            let wanted = Subnet::new(route.destination, route.prefix_len)
                .is_ok_and(|s| s.addr() == route.destination && overlay_subnets.contains(&s));
            if !wanted {
                r.stale.push(PeerOp::DeleteRoute(route.clone()));
            }
        } else if let Some((net, subnet_len)) = network {
            if route.oif == Some(d.underlay)
                && super::direct::is_stale_direct_route(
                    net,
                    subnet_len,
                    route.destination,
                    route.prefix_len,
                    route.gateway,
                    &direct,
                )
            {
                r.stale.push(PeerOp::DeleteRoute(route.clone()));
            }
        }
    }
    if d.fdb {
        for e in &dumps.fdb {
            let Some(dst) = e.dst else { continue };
            if !overlay_macs.contains(&(e.mac, dst)) {
                r.stale.push(PeerOp::DeleteFdb {
                    index: d.overlay,
                    mac: e.mac,
                    dst,
                });
            }
        }
    }
    for ip in have_neigh.keys().filter(|_| dumps.all_neighbours) {
        if !overlay_vteps.contains(ip) {
            r.stale.push(PeerOp::DeleteNeighbour {
                index: d.overlay,
                ip: *ip,
            });
        }
    }
    if let (Some(index), Some(d6)) = (d.overlay6, &dumps.v6) {
        let devices = (index, d.underlay, d.fdb6);
        let halves = peers.iter().filter_map(|(p, _)| p.ipv6.as_ref());
        reconcile6(devices, halves, d6, direct6, &mut r);
    }
    r
}

/// [`reconcile_ops`] for an IPv6-only node: the IPv6 device (`devices`: it and the
/// underlay) carries exactly `peers`, with `direct6` as DirectRouting decides.
pub fn reconcile_ops6(
    devices: (u32, u32),
    peers: &[PeerIpv6],
    dumps: &Dumps6,
    direct6: Option<Direct6<'_>>,
) -> Reconcile {
    let mut r = Reconcile::default();
    reconcile6(
        (devices.0, devices.1, true),
        peers.iter(),
        dumps,
        direct6,
        &mut r,
    );
    r
}

/// [`reconcile_ops`] for the IPv6 device (`devices`: it and the underlay): every
/// peer's IPv6 half (whatever its IPv4 path) is put back where missing or different;
/// routes, permanent neighbours and fdb entries no peer accounts for are removed, and
/// with `direct6` stale direct IPv6 routes on the underlay too.
fn reconcile6<'p>(
    (index, underlay, fdb): (u32, u32, bool),
    peers: impl Iterator<Item = &'p PeerIpv6>,
    dumps: &Dumps6,
    direct6: Option<Direct6<'_>>,
    r: &mut Reconcile,
) {
    let have_routes: BTreeSet<(Ipv6Addr, u8, Ipv6Addr)> = dumps
        .routes
        .iter()
        .filter_map(|r| Some((r.destination, r.prefix_len, r.gateway?)))
        .collect();
    let have_neigh: BTreeMap<Ipv6Addr, Option<MacAddr>> = dumps
        .neighbours
        .iter()
        .filter(|n| n.permanent)
        .map(|n| (n.ip, n.mac))
        .collect();
    let have_fdb: BTreeSet<(MacAddr, Ipv6Addr)> = dumps
        .fdb
        .iter()
        .filter_map(|e| Some((e.mac, e.dst?)))
        .collect();
    let have_direct: BTreeSet<(Ipv6Addr, u8, Ipv6Addr)> = dumps
        .direct_routes
        .iter()
        .filter_map(|r| Some((r.destination, r.prefix_len, r.gateway?)))
        .collect();
    let mut subnets = BTreeSet::new();
    let mut macs = BTreeSet::new();
    let mut vteps = BTreeSet::new();
    let mut direct = Vec::new();
    let mut cleared = BTreeSet::new();
    for &v6 in peers {
        let (s, gw) = (v6.subnet, v6.subnet.addr());
        if let Some(PeerPath::Direct { via }) = direct6.map(|x| x.routing.path6(v6.public_ipv6)) {
            direct.push((s, via));
            if !have_direct.contains(&(s.addr(), s.prefix_len(), via)) {
                r.repairs.push(PeerOp::DirectRoute6 {
                    index: underlay,
                    subnet: s,
                    via,
                });
            }
            continue;
        }
        subnets.insert(s);
        macs.insert((v6.vtep_mac, v6.public_ipv6));
        vteps.insert(gw);
        if have_neigh.get(&gw) != Some(&Some(v6.vtep_mac)) {
            r.repairs.push(PeerOp::Neighbour6 {
                index,
                ip: gw,
                mac: v6.vtep_mac,
            });
        }
        if fdb && !have_fdb.contains(&(v6.vtep_mac, v6.public_ipv6)) {
            r.repairs.push(PeerOp::Fdb6 {
                index,
                mac: v6.vtep_mac,
                dst: v6.public_ipv6,
            });
        }
        if !have_routes.contains(&(gw, s.prefix_len(), gw)) {
            // A direct route left for the subnet (DirectRouting turned off, or the
            // peer moved behind a router while no agent ran) covers the gateway, and
            // Linux refuses the onlink route while it is there: it goes first.
            for d in dumps
                .direct_routes
                .iter()
                .filter(|d| blocks_overlay6(d, &s))
            {
                r.repairs.push(PeerOp::DeleteRoute6(d.clone()));
                cleared.insert((d.destination, d.prefix_len));
            }
            r.repairs.push(PeerOp::PeerRoute6 { index, subnet: s });
        }
    }
    for route in &dumps.routes {
        let wanted = Subnet6::new_exact(route.destination, route.prefix_len)
            .is_ok_and(|s| subnets.contains(&s));
        if !wanted {
            r.stale.push(PeerOp::DeleteRoute6(route.clone()));
        }
    }
    if let Some(x) = direct6 {
        for route in dumps
            .direct_routes
            .iter()
            .filter(|d| !cleared.contains(&(d.destination, d.prefix_len)))
        {
            if super::direct::is_stale_direct_route6(
                &x.network,
                x.subnet_len,
                route.destination,
                route.prefix_len,
                route.gateway,
                &direct,
            ) {
                r.stale.push(PeerOp::DeleteRoute6(route.clone()));
            }
        }
    }
    for e in &dumps.fdb {
        let Some(dst) = e.dst else { continue };
        if !macs.contains(&(e.mac, dst)) {
            r.stale.push(PeerOp::DeleteFdb6 {
                index,
                mac: e.mac,
                dst,
            });
        }
    }
    for ip in have_neigh.keys() {
        if !vteps.contains(ip) {
            r.stale.push(PeerOp::DeleteNeighbour6 { index, ip: *ip });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAP: u32 = 7;
    const ETH: u32 = 2;

    fn peer(n: u8, mac: u8) -> Peer {
        Peer {
            ipv6: None,
            subnet: Subnet::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 100, n),
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, mac]),
        }
    }

    fn kernel() -> Devices {
        Devices {
            overlay: TAP,
            underlay: ETH,
            fdb: true,
            overlay6: None,
            fdb6: true,
        }
    }

    /// Peers .2 and .3 are on the underlay's L2 network with DirectRouting on.
    fn direct_for_2_and_3(p: &Peer) -> PeerPath {
        match p.public_ip.octets()[3] {
            2 | 3 => PeerPath::Direct { via: p.public_ip },
            _ => PeerPath::Overlay,
        }
    }

    #[test]
    fn a_batch_in_order_neighbour_fdb_route_and_the_reverse() {
        let (a, b) = (peer(1, 1), peer(4, 4));
        let mut prog = Programmed::default();
        let got = program_ops(
            &kernel(),
            &[PeerChange::Removed(b), PeerChange::Added(a)],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        assert_eq!(
            got,
            vec![
                (
                    0,
                    PeerOp::DeletePeerRoute {
                        index: TAP,
                        subnet: b.subnet
                    }
                ),
                (
                    0,
                    PeerOp::DeleteFdb {
                        index: TAP,
                        mac: b.vtep_mac,
                        dst: b.public_ip
                    }
                ),
                (
                    0,
                    PeerOp::DeleteNeighbour {
                        index: TAP,
                        ip: b.vtep_ip()
                    }
                ),
                (
                    1,
                    PeerOp::Neighbour {
                        index: TAP,
                        ip: a.vtep_ip(),
                        mac: a.vtep_mac
                    }
                ),
                (
                    1,
                    PeerOp::Fdb {
                        index: TAP,
                        mac: a.vtep_mac,
                        dst: a.public_ip
                    }
                ),
                (
                    1,
                    PeerOp::PeerRoute {
                        index: TAP,
                        subnet: a.subnet
                    }
                ),
            ]
        );
        // The userspace TAP has no fdb.
        let tap = Devices {
            fdb: false,
            ..kernel()
        };
        let got = program_ops(
            &tap,
            &[PeerChange::Added(a)],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        assert_eq!(got.len(), 2);
    }

    /// Two leases of one node share its VtepMAC: removing one keeps the fdb entry,
    /// pointed at the other; a MAC change deletes the old entry last.
    #[test]
    fn fdb_entry_shared_by_two_leases() {
        let a = peer(1, 9);
        let a2 = Peer {
            subnet: Subnet::new(Ipv4Addr::new(10, 244, 11, 0), 24).unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 100, 11),
            ..a
        };
        let mut prog = Programmed::default();
        let _ = program_ops(
            &kernel(),
            &[PeerChange::Added(a), PeerChange::Added(a2)],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        let got = program_ops(
            &kernel(),
            &[PeerChange::Removed(a2)],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        assert_eq!(
            got[1].1,
            PeerOp::Fdb {
                index: TAP,
                mac: a.vtep_mac,
                dst: a.public_ip
            }
        );
        let new = Peer {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 10]),
            ..a
        };
        let got = program_ops(
            &kernel(),
            &[PeerChange::Updated { old: a, new }],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[3].1,
            PeerOp::DeleteFdb {
                index: TAP,
                mac: a.vtep_mac,
                dst: a.public_ip
            }
        );
    }

    /// DirectRouting: a direct peer is one route on the underlay; a peer whose path
    /// changes gets its new route before the old path's entries go.
    #[test]
    fn direct_routing_paths_and_path_changes() {
        let mut prog = Programmed::default();
        let d = peer(2, 2);
        let got = program_ops(
            &kernel(),
            &[PeerChange::Added(d)],
            direct_for_2_and_3,
            &mut prog,
        );
        assert_eq!(
            got,
            vec![(
                0,
                PeerOp::DirectRoute {
                    index: ETH,
                    subnet: d.subnet,
                    via: d.public_ip
                }
            )]
        );
        // Overlay → direct: PublicIP .5 becomes .3.
        let o = peer(5, 5);
        let moved = Peer {
            public_ip: Ipv4Addr::new(192, 168, 100, 3),
            ..o
        };
        let got = program_ops(
            &kernel(),
            &[PeerChange::Updated { old: o, new: moved }],
            direct_for_2_and_3,
            &mut prog,
        );
        assert_eq!(
            got[0].1,
            PeerOp::DirectRoute {
                index: ETH,
                subnet: o.subnet,
                via: moved.public_ip
            }
        );
        assert_eq!(
            got[1].1,
            PeerOp::DeletePeerRoute {
                index: TAP,
                subnet: o.subnet
            }
        );
        assert_eq!(got.len(), 4);
        // Direct → overlay: neighbour, fdb, route, then the direct route goes.
        let got = program_ops(
            &kernel(),
            &[PeerChange::Updated { old: moved, new: o }],
            direct_for_2_and_3,
            &mut prog,
        );
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[2].1,
            PeerOp::PeerRoute {
                index: TAP,
                subnet: o.subnet
            }
        );
        assert_eq!(
            got[3].1,
            PeerOp::DeleteDirectRoute {
                index: ETH,
                subnet: o.subnet,
                via: moved.public_ip
            }
        );
        let got = program_ops(
            &kernel(),
            &[PeerChange::Removed(d)],
            direct_for_2_and_3,
            &mut prog,
        );
        assert_eq!(
            got,
            vec![(
                0,
                PeerOp::DeleteDirectRoute {
                    index: ETH,
                    subnet: d.subnet,
                    via: d.public_ip
                }
            )]
        );
    }

    fn overlay_route(p: &Peer) -> DeviceRoute {
        DeviceRoute::new(TAP, p.subnet.addr(), 24, Some(p.subnet.addr()))
    }

    #[test]
    fn reconcile_repairs_what_is_missing_and_prunes_what_is_stale() {
        let (a, b, gone) = (peer(1, 1), peer(4, 4), peer(6, 6));
        let d = peer(2, 2);
        let net = Subnet::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap();
        let stale_direct = DeviceRoute::new(
            ETH,
            Ipv4Addr::new(10, 244, 3, 0),
            24,
            Some(Ipv4Addr::new(192, 168, 100, 3)),
        );
        let default = DeviceRoute::new(
            ETH,
            Ipv4Addr::UNSPECIFIED,
            0,
            Some(Ipv4Addr::new(192, 168, 100, 254)),
        );
        let dumps = Dumps {
            v6: None,
            // a complete; b's route missing; gone's route left; d's direct route missing.
            routes: vec![
                overlay_route(&a),
                overlay_route(&gone),
                stale_direct.clone(),
                default,
            ],
            neighbours: vec![
                NeighbourEntry {
                    ip: a.vtep_ip(),
                    mac: Some(a.vtep_mac),
                    permanent: true,
                },
                // b's neighbour has a wrong MAC.
                NeighbourEntry {
                    ip: b.vtep_ip(),
                    mac: Some(gone.vtep_mac),
                    permanent: true,
                },
                NeighbourEntry {
                    ip: gone.vtep_ip(),
                    mac: Some(gone.vtep_mac),
                    permanent: true,
                },
                // Learned, not ours.
                NeighbourEntry {
                    ip: Ipv4Addr::new(10, 244, 9, 9),
                    mac: None,
                    permanent: false,
                },
            ],
            fdb: vec![
                FdbEntry {
                    mac: a.vtep_mac,
                    dst: Some(a.public_ip),
                },
                FdbEntry {
                    mac: b.vtep_mac,
                    dst: Some(b.public_ip),
                },
                FdbEntry {
                    mac: gone.vtep_mac,
                    dst: Some(gone.public_ip),
                },
                FdbEntry {
                    mac: MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                    dst: None,
                },
            ],
            all_neighbours: true,
        };
        let peers = [
            (a, PeerPath::Overlay),
            (b, PeerPath::Overlay),
            (d, PeerPath::Direct { via: d.public_ip }),
        ];
        let r = reconcile_ops(&kernel(), &peers, &dumps, Some((&net, 24)), None);
        assert_eq!(
            r.repairs,
            vec![
                PeerOp::Neighbour {
                    index: TAP,
                    ip: b.vtep_ip(),
                    mac: b.vtep_mac
                },
                PeerOp::PeerRoute {
                    index: TAP,
                    subnet: b.subnet
                },
                PeerOp::DirectRoute {
                    index: ETH,
                    subnet: d.subnet,
                    via: d.public_ip
                },
            ]
        );
        assert_eq!(
            r.stale,
            vec![
                PeerOp::DeleteRoute(overlay_route(&gone)),
                PeerOp::DeleteRoute(stale_direct.clone()),
                PeerOp::DeleteFdb {
                    index: TAP,
                    mac: gone.vtep_mac,
                    dst: gone.public_ip
                },
                PeerOp::DeleteNeighbour {
                    index: TAP,
                    ip: gone.vtep_ip()
                },
            ]
        );
        // Lookups (the neighbours at the peers' addresses only) find the same
        // repairs, and no neighbour stale: gone's entry was not looked up.
        let looked_up = Dumps {
            neighbours: dumps.neighbours[..2].to_vec(),
            all_neighbours: false,
            ..dumps.clone()
        };
        let r2 = reconcile_ops(&kernel(), &peers, &looked_up, Some((&net, 24)), None);
        assert_eq!(r2.repairs, r.repairs);
        assert_eq!(r2.stale, r.stale[..3].to_vec());
        // Without DirectRouting the underlay's routes are not looked at.
        let r = reconcile_ops(&kernel(), &peers[..2], &dumps, None, None);
        assert!(!r.stale.contains(&PeerOp::DeleteRoute(stale_direct)));
        // Everything in place: nothing to send.
        let full = Dumps {
            v6: None,
            routes: vec![overlay_route(&a)],
            neighbours: vec![NeighbourEntry {
                ip: a.vtep_ip(),
                mac: Some(a.vtep_mac),
                permanent: true,
            }],
            fdb: vec![FdbEntry {
                mac: a.vtep_mac,
                dst: Some(a.public_ip),
            }],
            all_neighbours: true,
        };
        assert_eq!(
            reconcile_ops(
                &kernel(),
                &[(a, PeerPath::Overlay)],
                &full,
                Some((&net, 24)),
                None
            ),
            Reconcile::default()
        );
    }

    const V6: u32 = 9;

    /// Peer `n` with an IPv6 half: fd00:10:244:<n>::/64 from fd00:64::<n>, MAC 06:..:<mac>.
    fn dual(n: u8, mac: u8) -> Peer {
        Peer {
            ipv6: Some(PeerIpv6 {
                subnet: Subnet6::new(format!("fd00:10:244:{n}::").parse().unwrap(), 64).unwrap(),
                public_ipv6: format!("fd00:64::{n}").parse().unwrap(),
                vtep_mac: MacAddr([0x06, 0, 0, 0, 0, mac]),
            }),
            ..peer(n, mac)
        }
    }

    fn dual_kernel() -> Devices {
        Devices {
            overlay6: Some(V6),
            ..kernel()
        }
    }

    fn only6(ops: Vec<(usize, PeerOp)>) -> Vec<PeerOp> {
        ops.into_iter()
            .map(|(_, op)| op)
            .filter(|op| {
                matches!(
                    op,
                    PeerOp::Neighbour6 { .. }
                        | PeerOp::DeleteNeighbour6 { .. }
                        | PeerOp::PeerRoute6 { .. }
                        | PeerOp::DeletePeerRoute6 { .. }
                        | PeerOp::Fdb6 { .. }
                        | PeerOp::DeleteFdb6 { .. }
                        | PeerOp::DeleteRoute6(_)
                        | PeerOp::DirectRoute6 { .. }
                        | PeerOp::DeleteDirectRoute6 { .. }
                )
            })
            .collect()
    }

    /// When the userspace threads carry IPv6, the TAP is the IPv6 overlay device too:
    /// neighbour and route, no fdb entry (the TAP has none; the forwarding table maps
    /// the IPv6 VtepMAC), on add, change, removal and in a reconcile pass.
    #[test]
    fn ipv6_halves_on_the_tap_have_no_fdb_entries() {
        let tap = Devices {
            fdb: false,
            overlay6: Some(TAP),
            fdb6: false,
            ..kernel()
        };
        let a = dual(2, 2);
        let a6 = a.ipv6.unwrap();
        let mut prog = Programmed::default();
        let added = only6(program_ops(
            &tap,
            &[PeerChange::Added(a)],
            |_| PeerPath::Overlay,
            &mut prog,
        ));
        assert_eq!(
            added,
            vec![
                PeerOp::Neighbour6 {
                    index: TAP,
                    ip: a6.subnet.addr(),
                    mac: a6.vtep_mac,
                },
                PeerOp::PeerRoute6 {
                    index: TAP,
                    subnet: a6.subnet,
                },
            ]
        );
        let moved = Peer {
            ipv6: Some(PeerIpv6 {
                vtep_mac: MacAddr([0x06, 0, 0, 0, 0, 9]),
                ..a6
            }),
            ..a
        };
        let changed = only6(program_ops(
            &tap,
            &[PeerChange::Updated { old: a, new: moved }],
            |_| PeerPath::Overlay,
            &mut prog,
        ));
        assert!(
            !changed
                .iter()
                .any(|op| matches!(op, PeerOp::Fdb6 { .. } | PeerOp::DeleteFdb6 { .. })),
            "{changed:?}"
        );
        let removed = only6(program_ops(
            &tap,
            &[PeerChange::Removed(moved)],
            |_| PeerPath::Overlay,
            &mut prog,
        ));
        assert_eq!(
            removed,
            vec![
                PeerOp::DeletePeerRoute6 {
                    index: TAP,
                    subnet: a6.subnet,
                },
                PeerOp::DeleteNeighbour6 {
                    index: TAP,
                    ip: a6.subnet.addr(),
                },
            ]
        );
        // Nothing on the TAP: the reconcile pass puts neighbour and route back, and
        // no fdb entry.
        let r = reconcile_ops(
            &tap,
            &[(a, PeerPath::Overlay)],
            &Dumps {
                v6: Some(Dumps6::default()),
                ..Dumps::default()
            },
            None,
            None,
        );
        let repairs6 = only6(r.repairs.into_iter().map(|op| (0, op)).collect());
        assert_eq!(repairs6.len(), 2, "{repairs6:?}");
        assert!(!repairs6.iter().any(|op| matches!(op, PeerOp::Fdb6 { .. })));
    }

    #[test]
    fn ipv6_halves_go_on_the_ipv6_device_in_flannels_order() {
        let a = dual(2, 2);
        let a6 = a.ipv6.unwrap();
        let gw = a6.subnet.addr();
        let mut prog = Programmed::default();
        let all = program_ops(
            &dual_kernel(),
            &[PeerChange::Added(a)],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        // IPv4 first (on the overlay device), then IPv6 on its own device.
        assert_eq!(all.len(), 6);
        assert!(matches!(all[2].1, PeerOp::PeerRoute { index: TAP, .. }));
        let add = vec![
            PeerOp::Neighbour6 {
                index: V6,
                ip: gw,
                mac: a6.vtep_mac,
            },
            PeerOp::Fdb6 {
                index: V6,
                mac: a6.vtep_mac,
                dst: a6.public_ipv6,
            },
            PeerOp::PeerRoute6 {
                index: V6,
                subnet: a6.subnet,
            },
        ];
        assert_eq!(only6(all), add);
        // Removal: the reverse.
        let got = program_ops(
            &dual_kernel(),
            &[PeerChange::Removed(a)],
            |_| PeerPath::Overlay,
            &mut prog,
        );
        assert_eq!(
            only6(got),
            vec![
                PeerOp::DeletePeerRoute6 {
                    index: V6,
                    subnet: a6.subnet
                },
                PeerOp::DeleteFdb6 {
                    index: V6,
                    mac: a6.vtep_mac,
                    dst: a6.public_ipv6
                },
                PeerOp::DeleteNeighbour6 { index: V6, ip: gw },
            ]
        );
        // Without an IPv6 device (an IPv4-only config), nothing IPv6 is sent.
        let got = program_ops(
            &kernel(),
            &[PeerChange::Added(a)],
            |_| PeerPath::Overlay,
            &mut Programmed::default(),
        );
        assert!(only6(got).is_empty());
        // A DirectRouting peer's IPv6 half still goes over the IPv6 device.
        let got = program_ops(
            &dual_kernel(),
            &[PeerChange::Added(a)],
            |p| PeerPath::Direct { via: p.public_ip },
            &mut Programmed::default(),
        );
        assert_eq!(only6(got), add);
    }

    /// An IPv6-only node's peers (IPv6 halves alone) get exactly what a dual-stack
    /// peer's IPv6 half gets, on the IPv6 device: added in flannel's order, a new
    /// VtepMAC made before the old one's fdb entry breaks, removed in reverse; the
    /// whole IPv4 device is absent.
    #[test]
    fn ipv6_only_peers_are_programmed_as_ipv6_halves() {
        struct Over;
        impl Route for Over {
            fn path(&self, _p: &Peer) -> PeerPath {
                PeerPath::Overlay
            }
        }
        let a = dual(2, 2);
        let a6 = a.ipv6.unwrap();
        let gw = a6.subnet.addr();
        let mut prog = Programmed::default();
        let mut dual_prog = Programmed::default();
        let alone = |c: PeerChange<PeerIpv6>, prog: &mut Programmed| -> Vec<PeerOp> {
            program_ops6((V6, 2), &[c], &Over, prog)
                .into_iter()
                .map(|(_, op)| op)
                .collect()
        };
        // The same requests as the dual-stack peer's IPv6 half, and nothing else.
        let as_half = |c: PeerChange, prog: &mut Programmed| {
            only6(program_ops(
                &dual_kernel(),
                &[c],
                |_| PeerPath::Overlay,
                prog,
            ))
        };
        assert_eq!(
            alone(PeerChange::Added(a6), &mut prog),
            as_half(PeerChange::Added(a), &mut dual_prog)
        );
        let new6 = PeerIpv6 {
            vtep_mac: MacAddr([0x06, 0, 0, 0, 0, 0x22]),
            ..a6
        };
        let got = alone(PeerChange::Updated { old: a6, new: new6 }, &mut prog);
        assert_eq!(
            got,
            vec![
                PeerOp::Neighbour6 {
                    index: V6,
                    ip: gw,
                    mac: new6.vtep_mac,
                },
                PeerOp::Fdb6 {
                    index: V6,
                    mac: new6.vtep_mac,
                    dst: a6.public_ipv6,
                },
                PeerOp::PeerRoute6 {
                    index: V6,
                    subnet: a6.subnet,
                },
                PeerOp::DeleteFdb6 {
                    index: V6,
                    mac: a6.vtep_mac,
                    dst: a6.public_ipv6,
                },
            ]
        );
        assert_eq!(
            alone(PeerChange::Removed(new6), &mut prog),
            vec![
                PeerOp::DeletePeerRoute6 {
                    index: V6,
                    subnet: a6.subnet
                },
                PeerOp::DeleteFdb6 {
                    index: V6,
                    mac: new6.vtep_mac,
                    dst: a6.public_ipv6
                },
                PeerOp::DeleteNeighbour6 { index: V6, ip: gw },
            ]
        );
        // A reconcile against empty dumps puts back all three; against what it put,
        // nothing; a stale entry is pruned.
        let r = reconcile_ops6((V6, 2), &[a6], &Dumps6::default(), None);
        assert_eq!(r.repairs.len(), 3, "{r:?}");
        assert!(r.stale.is_empty());
        let dumps = Dumps6 {
            fdb: vec![FdbEntry {
                mac: MacAddr([0x06, 0, 0, 0, 0, 0x99]),
                dst: Some("fd00:192::99".parse().unwrap()),
            }],
            ..Dumps6::default()
        };
        let r = reconcile_ops6((V6, 2), &[], &dumps, None);
        assert_eq!(r.stale.len(), 1, "{r:?}");
    }

    #[test]
    fn ipv6_updates_make_before_break_and_shared_macs_stay() {
        let a = dual(2, 2);
        let a6 = a.ipv6.unwrap();
        let mut prog = Programmed::default();
        let d = dual_kernel();
        let overlay = |_: &Peer| PeerPath::Overlay;
        let _ = program_ops(&d, &[PeerChange::Added(a)], overlay, &mut prog);
        // A new IPv6 VtepMAC: the new entries, then the old MAC's fdb entry goes.
        let mut moved = a;
        moved.ipv6 = Some(PeerIpv6 {
            vtep_mac: MacAddr([0x06, 0, 0, 0, 0, 0x22]),
            ..a6
        });
        let got = only6(program_ops(
            &d,
            &[PeerChange::Updated { old: a, new: moved }],
            overlay,
            &mut prog,
        ));
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[3],
            PeerOp::DeleteFdb6 {
                index: V6,
                mac: a6.vtep_mac,
                dst: a6.public_ipv6
            }
        );
        // The lease lost its IPv6 half: everything IPv6 of it goes, nothing is added.
        let v4_only = Peer {
            ipv6: None,
            ..moved
        };
        let got = only6(program_ops(
            &d,
            &[PeerChange::Updated {
                old: moved,
                new: v4_only,
            }],
            overlay,
            &mut prog,
        ));
        assert_eq!(got.len(), 3);
        assert!(matches!(got[0], PeerOp::DeletePeerRoute6 { .. }));
        assert!(matches!(got[2], PeerOp::DeleteNeighbour6 { .. }));
        // Two leases of one node share its IPv6 VtepMAC: removing one keeps the
        // entry (re-pointed at the other's PublicIPv6).
        let (b, mut b2) = (dual(3, 3), dual(4, 3));
        b2.ipv6 = b2.ipv6.map(|v| PeerIpv6 {
            public_ipv6: b.ipv6.unwrap().public_ipv6,
            ..v
        });
        let _ = program_ops(
            &d,
            &[PeerChange::Added(b), PeerChange::Added(b2)],
            overlay,
            &mut prog,
        );
        let got = only6(program_ops(
            &d,
            &[PeerChange::Removed(b2)],
            overlay,
            &mut prog,
        ));
        assert!(
            got.contains(&PeerOp::Fdb6 {
                index: V6,
                mac: MacAddr([0x06, 0, 0, 0, 0, 3]),
                dst: b.ipv6.unwrap().public_ipv6
            }),
            "{got:?}"
        );
        assert!(!got.iter().any(|op| matches!(op, PeerOp::DeleteFdb6 { .. })));
    }

    #[test]
    fn ipv6_reconcile_repairs_and_prunes_its_device_only() {
        let (a, b) = (dual(2, 2), dual(3, 3));
        let a6 = a.ipv6.unwrap();
        let gone: Subnet6 = "fd00:10:244:9::/64".parse().unwrap();
        let route =
            |dst: Ipv6Addr, len: u8, gw: Option<Ipv6Addr>| DeviceRoute::new6(V6, dst, len, gw);
        let dumps = Dumps {
            v6: Some(Dumps6 {
                // a complete; b has nothing; a left-over peer's route, neighbour and fdb.
                routes: vec![
                    route(a6.subnet.addr(), 64, Some(a6.subnet.addr())),
                    route(gone.addr(), 64, Some(gone.addr())),
                ],
                neighbours: vec![
                    NeighbourEntry {
                        ip: a6.subnet.addr(),
                        mac: Some(a6.vtep_mac),
                        permanent: true,
                    },
                    NeighbourEntry {
                        ip: gone.addr(),
                        mac: Some(MacAddr([0x06, 0, 0, 0, 0, 9])),
                        permanent: true,
                    },
                    // not permanent: the kernel's own, left alone
                    NeighbourEntry {
                        ip: "fe80::1".parse().unwrap(),
                        mac: None,
                        permanent: false,
                    },
                ],
                fdb: vec![
                    FdbEntry {
                        mac: a6.vtep_mac,
                        dst: Some(a6.public_ipv6),
                    },
                    FdbEntry {
                        mac: MacAddr([0x06, 0, 0, 0, 0, 9]),
                        dst: Some("fd00:64::9".parse().unwrap()),
                    },
                    // no destination (a kernel default entry): not ours
                    FdbEntry {
                        mac: MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                        dst: None,
                    },
                ],
                direct_routes: Vec::new(),
            }),
            ..Dumps::default()
        };
        let peers: Vec<(Peer, PeerPath)> = [a, b].iter().map(|p| (*p, PeerPath::Overlay)).collect();
        let r = reconcile_ops(&dual_kernel(), &peers, &dumps, None, None);
        let repairs = only6(r.repairs.into_iter().map(|op| (0, op)).collect());
        assert_eq!(
            repairs.len(),
            3,
            "b's neighbour, fdb entry and route: {repairs:?}"
        );
        assert!(repairs.iter().all(|op| op.describe().contains("fd00:")));
        let stale: Vec<String> = only6(r.stale.into_iter().map(|op| (0, op)).collect())
            .iter()
            .map(PeerOp::describe)
            .collect();
        assert_eq!(
            stale,
            [
                "delete route fd00:10:244:9::/64 via Some(fd00:10:244:9::)",
                "delete fdb 06:00:00:00:00:09 dst fd00:64::9 on #9",
                "delete neighbour fd00:10:244:9:: on #9",
            ]
        );
        // No IPv6 device: the IPv6 dumps are not looked at.
        let r = reconcile_ops(&kernel(), &peers, &dumps, None, None);
        assert!(only6(r.stale.into_iter().map(|op| (0, op)).collect()).is_empty());
    }

    /// DirectRouting on a node whose underlay holds 192.168.100.1/24 and fd00:64::1/64.
    fn direct_node() -> DirectRouting {
        DirectRouting::new(true, [(Ipv4Addr::new(192, 168, 100, 1), 24)])
            .with_ipv6([("fd00:64::1".parse().unwrap(), 64)])
    }

    /// `p` with its PublicIPv6 moved to `ip6`.
    fn moved6(p: Peer, ip6: &str) -> Peer {
        let mut v6 = p.ipv6.unwrap();
        v6.public_ipv6 = ip6.parse().unwrap();
        Peer {
            ipv6: Some(v6),
            ..p
        }
    }

    #[test]
    fn ipv6_direct_routing_as_flanneld_does_it() {
        let dr = direct_node();
        let a = dual(2, 2);
        let a6 = a.ipv6.unwrap();
        let direct = PeerOp::DirectRoute6 {
            index: ETH,
            subnet: a6.subnet,
            via: a6.public_ipv6,
        };
        // On the underlay's IPv6 network: one route via the PublicIPv6, nothing on the
        // IPv6 device; the IPv4 half is decided on its own (direct too here).
        let mut prog = Programmed::default();
        let got = program_ops_routed(
            &dual_kernel(),
            &[PeerChange::Added(a)],
            &DirectPaths(&dr),
            &mut prog,
        );
        assert_eq!(only6(got.clone()), std::slice::from_ref(&direct));
        assert!(got
            .iter()
            .any(|(_, op)| matches!(op, PeerOp::DirectRoute { .. })));
        // Removed: that route goes, nothing else.
        let got = program_ops_routed(
            &dual_kernel(),
            &[PeerChange::Removed(a)],
            &DirectPaths(&dr),
            &mut prog,
        );
        assert_eq!(
            only6(got),
            [PeerOp::DeleteDirectRoute6 {
                index: ETH,
                subnet: a6.subnet,
                via: a6.public_ipv6,
            }]
        );

        // Its PublicIPv6 moves behind a router: the direct route goes first (Linux
        // refuses the onlink route while another device's route covers its gateway),
        // then the overlay entries.
        let far = moved6(a, "fd00:99::2");
        let got = only6(program_ops_routed(
            &dual_kernel(),
            &[PeerChange::Updated { old: a, new: far }],
            &DirectPaths(&dr),
            &mut prog,
        ));
        assert!(
            matches!(got[..], [PeerOp::DeleteDirectRoute6 { via, .. }, PeerOp::Neighbour6 { .. }, PeerOp::Fdb6 { .. }, PeerOp::PeerRoute6 { .. }] if via == a6.public_ipv6),
            "{got:?}"
        );
        // ... and back on-link: the direct route, then the overlay entries go (the fdb
        // entry of a MAC no other peer uses, the neighbour).
        let got = only6(program_ops_routed(
            &dual_kernel(),
            &[PeerChange::Updated { old: far, new: a }],
            &DirectPaths(&dr),
            &mut prog,
        ));
        assert_eq!(got[0], direct);
        assert!(
            got[1..]
                .iter()
                .any(|op| matches!(op, PeerOp::DeleteFdb6 { .. }))
                && got[1..]
                    .iter()
                    .any(|op| matches!(op, PeerOp::DeleteNeighbour6 { .. })),
            "{got:?}"
        );
        // The same direct peer again: a replace, no delete.
        let got = only6(program_ops_routed(
            &dual_kernel(),
            &[PeerChange::Updated { old: a, new: a }],
            &DirectPaths(&dr),
            &mut prog,
        ));
        assert_eq!(got, [direct]);
    }

    #[test]
    fn ipv6_direct_routes_are_repaired_and_pruned_inside_the_ipv6_network() {
        let dr = direct_node();
        let (a, b) = (dual(2, 2), moved6(dual(3, 3), "fd00:99::3"));
        let (a6, b6) = (a.ipv6.unwrap(), b.ipv6.unwrap());
        let route = |dst: &str, len: u8, gw: &str| {
            DeviceRoute::new6(ETH, dst.parse().unwrap(), len, gw.parse().ok())
        };
        let dumps = Dumps {
            v6: Some(Dumps6 {
                direct_routes: vec![
                    // a left-over direct route of a peer gone
                    route("fd00:10:244:9::", 64, "fd00:64::9"),
                    // b's, from before it moved behind a router
                    route("fd00:10:244:3::", 64, "fd00:64::3"),
                    // not the IPv6 Network's: never touched
                    route("::", 0, "fd00:64::fe"),
                    route("2001:db8::", 64, "fd00:64::fe"),
                    // the underlay's own prefix (no gateway)
                    route("fd00:64::", 64, "-"),
                ],
                ..Dumps6::default()
            }),
            ..Dumps::default()
        };
        let peers: Vec<(Peer, PeerPath)> =
            [a, b].iter().map(|p| (*p, dr.path(p.public_ip))).collect();
        let net: Subnet6 = "fd00:10:244::/56".parse().unwrap();
        let direct6 = Direct6 {
            routing: &dr,
            network: net,
            subnet_len: 64,
        };
        let r = reconcile_ops(&dual_kernel(), &peers, &dumps, None, Some(direct6));
        let repairs = only6(r.repairs.into_iter().map(|op| (0, op)).collect());
        // a's direct route is missing; b (behind a router) needs its overlay entries.
        assert!(repairs.contains(&PeerOp::DirectRoute6 {
            index: ETH,
            subnet: a6.subnet,
            via: a6.public_ipv6
        }));
        // b's old direct route goes before its overlay route (and only once).
        let at = |want: &str| repairs.iter().position(|op| op.describe() == want);
        let old = at("delete route fd00:10:244:3::/64 via Some(fd00:64::3)").unwrap();
        let new = at(&PeerOp::PeerRoute6 {
            index: V6,
            subnet: b6.subnet,
        }
        .describe())
        .unwrap();
        assert!(old < new, "{repairs:?}");
        assert!(!repairs
            .iter()
            .any(|op| matches!(op, PeerOp::Neighbour6 { ip, .. } if *ip == a6.subnet.addr())));
        let stale: Vec<String> = only6(r.stale.into_iter().map(|op| (0, op)).collect())
            .iter()
            .map(PeerOp::describe)
            .collect();
        assert_eq!(
            stale,
            ["delete route fd00:10:244:9::/64 via Some(fd00:64::9)"]
        );
        // Without DirectRouting (turned off since) the underlay's routes are not
        // judged, but one for an overlay peer's very subnet still goes before its
        // overlay route: Linux would refuse that route while it is there.
        let overlay: Vec<(Peer, PeerPath)> =
            [a, b].iter().map(|p| (*p, PeerPath::Overlay)).collect();
        let r = reconcile_ops(&dual_kernel(), &overlay, &dumps, None, None);
        assert!(only6(r.stale.into_iter().map(|op| (0, op)).collect()).is_empty());
        let repairs: Vec<String> = only6(r.repairs.into_iter().map(|op| (0, op)).collect())
            .iter()
            .map(PeerOp::describe)
            .collect();
        let deletes: Vec<&String> = repairs.iter().filter(|d| d.starts_with("delete")).collect();
        assert_eq!(
            deletes,
            ["delete route fd00:10:244:3::/64 via Some(fd00:64::3)"],
            "{repairs:?}"
        );
        let route_b = PeerOp::PeerRoute6 {
            index: V6,
            subnet: b6.subnet,
        }
        .describe();
        let at = |want: &str| repairs.iter().position(|d| d == want).unwrap();
        assert!(at(deletes[0]) < at(&route_b), "{repairs:?}");
    }
}
