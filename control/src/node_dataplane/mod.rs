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
//! Switching dataplanes leaves nothing of the other behind: each one removes the
//! other's leftover device when it starts (the kernel's device holds the UDP port
//! the userspace dataplane needs), and deleting a device takes its routes,
//! neighbours and fdb entries with it.

pub mod direct;
pub mod kernel;
pub mod userspace;

use std::sync::Arc;

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

impl NodeDataplane {
    pub async fn start(
        kind: DataplaneKind,
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<NodeDataplane> {
        let direct = if setup.direct_routing {
            let prefixes = nl.ipv4_prefixes(setup.underlay_index).await?;
            tracing::info!(networks = ?prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
                "DirectRouting: peers in these networks of the underlay are routed via their PublicIP, unencapsulated");
            DirectRouting::new(true, prefixes)
        } else {
            DirectRouting::default()
        };
        let overlay = match kind {
            DataplaneKind::Userspace => {
                kernel::remove_leftover_device(nl, setup.local.vni.get(), setup.local.port).await?;
                Overlay::Userspace(userspace::Userspace::start(nl, setup, state).await?)
            }
            DataplaneKind::Kernel => {
                Overlay::Kernel(kernel::Kernel::start(nl, setup, state).await?)
            }
        };
        Ok(NodeDataplane {
            overlay,
            direct,
            underlay_index: setup.underlay_index,
            network: setup.network,
        })
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
    /// accounts for; returns how many entries went. On the kernel device: entries of
    /// peers that are gone or now routed directly (its device outlives the agent and
    /// may have been flanneld's; the userspace TAP is new on every start). With
    /// DirectRouting, also direct routes on the underlay that no peer accounts for.
    pub async fn prune(&self, nl: &Netlink, peers: &PeerTable) -> Result<usize, NetlinkError> {
        let overlay: Vec<Peer> = peers
            .peers()
            .filter(|p| self.path(p) == PeerPath::Overlay)
            .copied()
            .collect();
        let mut removed = match &self.overlay {
            Overlay::Userspace(_) => 0,
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

    /// Userspace: removes per-peer kernel state (direct routes too) and the TAP.
    /// Kernel: leaves the device, its entries and the direct routes so pod traffic
    /// survives a restart, as flanneld does (the next start prunes what became stale;
    /// the userspace dataplane deletes the device if the node switches).
    pub async fn stop(self, nl: &Netlink, peers: &PeerTable) {
        match &self.overlay {
            Overlay::Userspace(_) => {
                tracing::info!("removing routes, neighbours and the TAP");
                for p in peers.peers() {
                    let _ = self.remove_peer(nl, p).await;
                }
            }
            Overlay::Kernel(_) => {}
        }
        match self.overlay {
            Overlay::Userspace(u) => u.stop(),
            Overlay::Kernel(k) => k.stop(),
        }
    }
}
