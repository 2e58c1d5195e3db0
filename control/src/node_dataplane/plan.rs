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

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::direct::PeerPath;
use crate::netlink::{DeviceRoute, FdbEntry, NeighbourEntry, PeerOp};
use crate::peers::{Peer, PeerChange};
use crate::subnet::Subnet;
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
}

/// The overlay peers programmed on a device with an fdb, by subnet and by VtepMAC:
/// an fdb entry is per MAC, so it stays while another programmed peer uses its MAC
/// (two leases of one node).
#[derive(Debug, Default, Clone)]
pub struct Programmed {
    by_subnet: BTreeMap<Subnet, Peer>,
    by_mac: BTreeMap<MacAddr, BTreeSet<Subnet>>,
}

impl Programmed {
    pub fn insert(&mut self, p: &Peer) {
        self.remove(&p.subnet);
        self.by_subnet.insert(p.subnet, *p);
        self.by_mac.entry(p.vtep_mac).or_default().insert(p.subnet);
    }

    pub fn remove(&mut self, subnet: &Subnet) {
        if let Some(old) = self.by_subnet.remove(subnet) {
            if let Some(users) = self.by_mac.get_mut(&old.vtep_mac) {
                users.remove(subnet);
                if users.is_empty() {
                    self.by_mac.remove(&old.vtep_mac);
                }
            }
        }
    }

    /// Only these peers (after a reconcile).
    pub fn reset<'p>(&mut self, peers: impl IntoIterator<Item = &'p Peer>) {
        *self = Programmed::default();
        for p in peers {
            self.insert(p);
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

/// The requests that carry out `changes` (in order), each with the index of the
/// change it belongs to; `path` says how a peer is routed. Records the overlay peers
/// in `prog` as it goes.
pub fn program_ops(
    d: &Devices,
    changes: &[PeerChange],
    path: impl Fn(&Peer) -> PeerPath,
    prog: &mut Programmed,
) -> Vec<(usize, PeerOp)> {
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
/// (`network` given: DirectRouting on) the direct routes inside the Network (see
/// [`super::direct::is_stale_direct_route`]). Other routes are never touched.
pub fn reconcile_ops(
    d: &Devices,
    peers: &[(Peer, PeerPath)],
    dumps: &Dumps,
    network: Option<&Subnet>,
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
        } else if let Some(net) = network {
            if route.oif == Some(d.underlay)
                && super::direct::is_stale_direct_route(
                    net,
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
    r
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
        let r = reconcile_ops(&kernel(), &peers, &dumps, Some(&net));
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
        let r2 = reconcile_ops(&kernel(), &peers, &looked_up, Some(&net));
        assert_eq!(r2.repairs, r.repairs);
        assert_eq!(r2.stale, r.stale[..3].to_vec());
        // Without DirectRouting the underlay's routes are not looked at.
        let r = reconcile_ops(&kernel(), &peers[..2], &dumps, None);
        assert!(!r.stale.contains(&PeerOp::DeleteRoute(stale_direct)));
        // Everything in place: nothing to send.
        let full = Dumps {
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
            reconcile_ops(&kernel(), &[(a, PeerPath::Overlay)], &full, Some(&net)),
            Reconcile::default()
        );
    }
}
