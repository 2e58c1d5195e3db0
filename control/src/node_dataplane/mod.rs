//! The node's dataplane as the agent sees it: a device with this node's VTEP
//! address, and per-peer state to add, update and remove.
//!
//! One control plane drives either implementation (`vxmeshd --dataplane`):
//! - [`userspace`]: a TAP device and vxmesh's own VXLAN threads; per peer, a
//!   permanent neighbour and an onlink route on the TAP, and an entry in the
//!   forwarding table the threads read;
//! - [`kernel`]: a Linux vxlan device (`flannel.<VNI>`) programmed exactly like
//!   flannel's vxlan backend: per peer a permanent neighbour, an fdb entry and an
//!   onlink route.
//!
//! With `Backend.DirectRouting`, peers on the underlay's own L2 network get a plain
//! route via their PublicIP instead (`<subnet> via <PublicIP> dev <underlay>`, see
//! [`direct`]) in either dataplane; their traffic never touches the overlay device.
//!
//! Every operation is idempotent, so the agent can re-apply everything at any time.
//! Both devices outlive the agent (a stop, a crash, a restart): pod traffic keeps
//! its path, and the next agent adopts the device and prunes what went stale.
//! Switching dataplanes leaves nothing of the other behind: each one removes the
//! other's leftover device when it starts (the kernel's device holds the UDP port
//! the userspace dataplane needs), and deleting a device takes its routes,
//! neighbours and fdb entries with it.

pub mod direct;
pub mod kernel;
pub mod userspace;

use std::sync::Arc;
use std::time::Duration;

use crate::handover::DataplaneFds;
use crate::netlink::{Netlink, NetlinkError};
use crate::peers::{Peer, PeerTable};
use crate::state::AgentState;
use crate::subnet::Subnet;
use direct::{DirectRouting, PeerPath};
use vxmesh_dataplane::fib::LocalVtep;
use vxmesh_dataplane::wire::MacAddr;

/// Which dataplane to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataplaneKind {
    /// vxmesh's userspace VXLAN (TAP + offloads).
    Userspace,
    /// The Linux vxlan driver, configured the way flannel's vxlan backend does it.
    Kernel,
}

impl DataplaneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataplaneKind::Userspace => "userspace",
            DataplaneKind::Kernel => "kernel",
        }
    }
}

/// What a dataplane needs to know to start.
#[derive(Debug, Clone)]
pub struct DataplaneSetup {
    pub local: LocalVtep,
    pub mtu: u32,
    /// The underlay interface's address VXLAN is sent from (the PublicIP, except
    /// behind NAT where the PublicIP is not local).
    pub local_ip: std::net::Ipv4Addr,
    pub underlay_index: u32,
    /// Userspace: the TAP's name. Kernel: the device is `flannel.<VNI>`; a TAP of
    /// this name left by the userspace dataplane is removed.
    pub device_name: vxmesh_dataplane::ifname::IfName,
    pub offloads: bool,
    pub tx_sockets: usize,
    pub tap_queues: usize,
    /// The cluster Network (DirectRouting routes are pruned only inside it).
    pub network: Subnet,
    /// `Backend.DirectRouting`.
    pub direct_routing: bool,
}

/// The running dataplane: the overlay device, and how peers are routed.
#[derive(Debug)]
pub struct NodeDataplane {
    overlay: Overlay,
    direct: DirectRouting,
    underlay_index: u32,
    network: Subnet,
}

/// The overlay device and its per-peer state.
#[derive(Debug)]
enum Overlay {
    Userspace(userspace::Userspace),
    Kernel(kernel::Kernel),
}

/// How peers are routed: with `Backend.DirectRouting`, peers in the underlay's own
/// networks directly.
async fn direct_routing(nl: &Netlink, setup: &DataplaneSetup) -> anyhow::Result<DirectRouting> {
    if !setup.direct_routing {
        return Ok(DirectRouting::default());
    }
    let prefixes = nl.ipv4_prefixes(setup.underlay_index).await?;
    tracing::info!(networks = ?prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
        "DirectRouting: peers in these networks of the underlay are routed via their PublicIP, unencapsulated");
    Ok(DirectRouting::new(true, prefixes))
}

impl NodeDataplane {
    /// Starts cold: a new (or left-over) device, new sockets. Returns whether a
    /// device an earlier run left was adopted. `busy_wait`: see
    /// [`userspace::Userspace::start`].
    pub async fn start(
        kind: DataplaneKind,
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
        busy_wait: Duration,
    ) -> anyhow::Result<(NodeDataplane, bool)> {
        let direct = direct_routing(nl, setup).await?;
        let (overlay, adopted) = match kind {
            DataplaneKind::Userspace => {
                kernel::remove_leftover_device(nl, setup.local.vni.get(), setup.local.port).await?;
                let (u, adopted) = userspace::Userspace::start(nl, setup, state, busy_wait).await?;
                (Overlay::Userspace(u), adopted)
            }
            DataplaneKind::Kernel => (
                Overlay::Kernel(kernel::Kernel::start(nl, setup, state).await?),
                false,
            ),
        };
        Ok((
            NodeDataplane {
                overlay,
                direct,
                underlay_index: setup.underlay_index,
                network: setup.network,
            },
            adopted,
        ))
    }

    /// Takes over a running userspace dataplane's descriptors and forwarding table
    /// (the handover); see [`userspace::Userspace::adopt`]. DirectRouting's routes
    /// stayed on the underlay; the caller prunes stale ones after a full listing.
    pub async fn adopt(
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
        fds: DataplaneFds,
        peers: &[Peer],
        tap_offloads: u32,
    ) -> anyhow::Result<NodeDataplane> {
        let direct = direct_routing(nl, setup).await?;
        let u = userspace::Userspace::adopt(nl, setup, state, fds, peers, tap_offloads).await?;
        Ok(NodeDataplane {
            overlay: Overlay::Userspace(u),
            direct,
            underlay_index: setup.underlay_index,
            network: setup.network,
        })
    }

    /// The userspace dataplane, if that is what runs (what a handover hands on).
    pub fn userspace(&self) -> Option<&userspace::Userspace> {
        match &self.overlay {
            Overlay::Userspace(u) => Some(u),
            Overlay::Kernel(_) => None,
        }
    }

    /// The device carrying overlay traffic (its ifindex).
    pub fn device_index(&self) -> u32 {
        match &self.overlay {
            Overlay::Userspace(u) => u.tap_index(),
            Overlay::Kernel(k) => k.device_index(),
        }
    }

    /// How `p`'s subnet is routed: through the overlay, or directly (DirectRouting).
    pub fn path(&self, p: &Peer) -> PeerPath {
        self.direct.path(p.public_ip)
    }

    /// Puts the VtepMAC back on the device if something replaced it (systemd-udevd's
    /// `MACAddressPolicy=persistent` can rewrite a new TAP's MAC just after we set
    /// it; peers would then address a MAC nobody answers to). Returns whether a repair
    /// was needed. Setting a MAC flushes the device's neighbours: the caller re-applies
    /// the peers after a repair.
    pub async fn ensure_vtep_mac(
        &self,
        nl: &Netlink,
        vtep_mac: MacAddr,
        mtu: u32,
    ) -> Result<bool, NetlinkError> {
        let idx = self.device_index();
        match nl.link_by_index(idx).await? {
            Some(l) if l.mac == Some(vtep_mac) => Ok(false),
            Some(l) => {
                tracing::warn!(
                    device = %l.name,
                    found = ?l.mac.map(|m| m.to_string()),
                    want = %vtep_mac,
                    "device MAC was changed behind our back (udev MACAddressPolicy?); restoring the VtepMAC"
                );
                nl.configure_link(idx, vtep_mac, mtu).await?;
                Ok(true)
            }
            None => Err(NetlinkError::NoSuchLink(format!(
                "#{idx} (the overlay device vanished)"
            ))),
        }
    }

    /// Gives the device this node's VTEP address, `<subnet>.0/32`.
    pub async fn set_subnet(&self, nl: &Netlink, subnet: &Subnet) -> Result<(), NetlinkError> {
        nl.set_only_address(self.device_index(), subnet.addr(), 32)
            .await
    }

    /// Makes the fast path see the current peer set (before routes point at it).
    /// Every peer is in it, direct ones too: their VXLAN is still accepted (a peer
    /// that decided otherwise, or one changing its mind). The kernel dataplane has no
    /// table of its own: a no-op there.
    pub fn publish(&self, peers: &PeerTable) {
        match &self.overlay {
            Overlay::Userspace(u) => u.publish(peers),
            Overlay::Kernel(_) => {}
        }
    }

    /// Removes per-peer state that no peer in `peers` (the full, current set)
    /// accounts for; returns how many entries went. On the overlay device: entries
    /// of peers that are gone or now routed directly (both devices outlive the agent,
    /// the kernel's may have been flanneld's, so a peer that left while no agent ran
    /// leaves entries behind). With DirectRouting, also direct routes on the
    /// underlay that no peer accounts for (they outlive the agent too).
    pub async fn prune(&self, nl: &Netlink, peers: &PeerTable) -> Result<usize, NetlinkError> {
        let overlay: Vec<Peer> = peers
            .peers()
            .filter(|p| self.path(p) == PeerPath::Overlay)
            .copied()
            .collect();
        let mut removed = match &self.overlay {
            Overlay::Userspace(u) => u.prune(nl, &overlay).await?,
            Overlay::Kernel(k) => k.prune(nl, &overlay).await?,
        };
        if self.direct.enabled() {
            let wanted: Vec<(Subnet, std::net::Ipv4Addr)> = peers
                .peers()
                .filter_map(|p| match self.path(p) {
                    PeerPath::Direct { via } => Some((p.subnet, via)),
                    PeerPath::Overlay => None,
                })
                .collect();
            for r in nl.routes_via(self.underlay_index).await? {
                if direct::is_stale_direct_route(
                    &self.network,
                    r.destination,
                    r.prefix_len,
                    r.gateway,
                    &wanted,
                ) {
                    tracing::info!(route = %format!("{}/{} via {:?}", r.destination, r.prefix_len, r.gateway),
                        "pruning stale direct route");
                    nl.delete_route(&r).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Programs a peer: a direct route, or the overlay's entries.
    pub async fn add_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match self.path(p) {
            PeerPath::Direct { via } => {
                nl.replace_direct_route(&p.subnet, via, self.underlay_index)
                    .await
            }
            PeerPath::Overlay => self.overlay_add(nl, p).await,
        }
    }

    /// A peer's PublicIP or VtepMAC changed; its path may have changed with it. The
    /// new route replaces the old one (same destination) before the old path's
    /// leftovers go.
    pub async fn update_peer(
        &self,
        nl: &Netlink,
        old: &Peer,
        new: &Peer,
    ) -> Result<(), NetlinkError> {
        match (self.path(old), self.path(new)) {
            (PeerPath::Overlay, PeerPath::Overlay) => match &self.overlay {
                Overlay::Userspace(u) => u.update_peer(nl, old, new).await,
                Overlay::Kernel(k) => k.update_peer(nl, old, new).await,
            },
            (PeerPath::Direct { .. }, PeerPath::Direct { via }) => {
                nl.replace_direct_route(&new.subnet, via, self.underlay_index)
                    .await
            }
            (PeerPath::Overlay, PeerPath::Direct { via }) => {
                nl.replace_direct_route(&new.subnet, via, self.underlay_index)
                    .await?;
                self.overlay_remove(nl, old).await
            }
            (PeerPath::Direct { via }, PeerPath::Overlay) => {
                self.overlay_add(nl, new).await?;
                nl.delete_direct_route(&old.subnet, via, self.underlay_index)
                    .await
            }
        }
    }

    /// Removes a peer's route (and overlay entries).
    pub async fn remove_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match self.path(p) {
            PeerPath::Direct { via } => {
                nl.delete_direct_route(&p.subnet, via, self.underlay_index)
                    .await
            }
            PeerPath::Overlay => self.overlay_remove(nl, p).await,
        }
    }

    async fn overlay_add(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match &self.overlay {
            Overlay::Userspace(u) => u.add_peer(nl, p).await,
            Overlay::Kernel(k) => k.add_peer(nl, p).await,
        }
    }

    async fn overlay_remove(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match &self.overlay {
            Overlay::Userspace(u) => u.remove_peer(nl, p).await,
            Overlay::Kernel(k) => k.remove_peer(nl, p).await,
        }
    }

    /// Stops forwarding and leaves the device with its address, routes and
    /// neighbours in place — and DirectRouting's routes on the underlay — as
    /// flanneld does: any stop may be a restart or an upgrade (with systemd's
    /// descriptor store it is not even visible as such), so pod traffic keeps its
    /// path and the next start adopts the device and prunes what became stale (after
    /// a full listing of the registry). `vxmeshctl cleanup-tap` (userspace) or `ip
    /// link del` (kernel) removes the device for good, cleanup-tap the direct routes
    /// too; see docs/decisions/0011-stop-leaves-the-tap.md. Returns how long the
    /// threads took to stop.
    pub fn stop(self) -> Duration {
        match self.overlay {
            Overlay::Userspace(u) => {
                let took = u.quiesce();
                tracing::info!(
                    "userspace dataplane stopped; the TAP with its address, routes and neighbours (and any direct routes) stays for the next vxmeshd (vxmeshctl cleanup-tap removes them)"
                );
                took
            }
            Overlay::Kernel(k) => {
                k.stop();
                Duration::ZERO
            }
        }
    }
}
