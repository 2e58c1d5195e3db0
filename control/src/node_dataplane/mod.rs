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
//! Every operation is idempotent, so the agent can re-apply everything at any time.
//! Both devices outlive the agent (a stop, a crash, a restart): pod traffic keeps
//! its path, and the next agent adopts the device and prunes what went stale.
//! Switching dataplanes leaves nothing of the other behind: each one removes the
//! other's leftover device when it starts (the kernel's device holds the UDP port
//! the userspace dataplane needs), and deleting a device takes its routes,
//! neighbours and fdb entries with it.

pub mod kernel;
pub mod userspace;

use std::sync::Arc;
use std::time::Duration;

use crate::handover::DataplaneFds;
use crate::netlink::{Netlink, NetlinkError};
use crate::peers::{Peer, PeerTable};
use crate::state::AgentState;
use crate::subnet::Subnet;
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
}

/// The running dataplane.
#[derive(Debug)]
pub enum NodeDataplane {
    Userspace(userspace::Userspace),
    Kernel(kernel::Kernel),
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
        match kind {
            DataplaneKind::Userspace => {
                kernel::remove_leftover_device(nl, setup.local.vni.get(), setup.local.port).await?;
                let (u, adopted) = userspace::Userspace::start(nl, setup, state, busy_wait).await?;
                Ok((NodeDataplane::Userspace(u), adopted))
            }
            DataplaneKind::Kernel => Ok((
                NodeDataplane::Kernel(kernel::Kernel::start(nl, setup, state).await?),
                false,
            )),
        }
    }

    /// Takes over a running userspace dataplane's descriptors and forwarding table
    /// (the handover); see [`userspace::Userspace::adopt`].
    pub async fn adopt(
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
        fds: DataplaneFds,
        peers: &[Peer],
        tap_offloads: u32,
    ) -> anyhow::Result<NodeDataplane> {
        Ok(NodeDataplane::Userspace(
            userspace::Userspace::adopt(nl, setup, state, fds, peers, tap_offloads).await?,
        ))
    }

    /// The userspace dataplane, if that is what runs (what a handover hands on).
    pub fn userspace(&self) -> Option<&userspace::Userspace> {
        match self {
            NodeDataplane::Userspace(u) => Some(u),
            NodeDataplane::Kernel(_) => None,
        }
    }

    /// The device carrying overlay traffic (its ifindex).
    pub fn device_index(&self) -> u32 {
        match self {
            NodeDataplane::Userspace(u) => u.tap_index(),
            NodeDataplane::Kernel(k) => k.device_index(),
        }
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
    /// The kernel dataplane has no table of its own: a no-op there.
    pub fn publish(&self, peers: &PeerTable) {
        match self {
            NodeDataplane::Userspace(u) => u.publish(peers),
            NodeDataplane::Kernel(_) => {}
        }
    }

    /// Removes per-peer state on the device that no peer in `peers` (the full,
    /// current set) accounts for; returns how many entries went. Both devices
    /// outlive the agent (the kernel's may have been flanneld's), so a peer that
    /// left while no agent ran leaves entries behind.
    pub async fn prune(&self, nl: &Netlink, peers: &PeerTable) -> Result<usize, NetlinkError> {
        match self {
            NodeDataplane::Userspace(u) => u.prune(nl, peers).await,
            NodeDataplane::Kernel(k) => k.prune(nl, peers).await,
        }
    }

    pub async fn add_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match self {
            NodeDataplane::Userspace(u) => u.add_peer(nl, p).await,
            NodeDataplane::Kernel(k) => k.add_peer(nl, p).await,
        }
    }

    pub async fn update_peer(
        &self,
        nl: &Netlink,
        old: &Peer,
        new: &Peer,
    ) -> Result<(), NetlinkError> {
        match self {
            NodeDataplane::Userspace(u) => u.update_peer(nl, old, new).await,
            NodeDataplane::Kernel(k) => k.update_peer(nl, old, new).await,
        }
    }

    pub async fn remove_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match self {
            NodeDataplane::Userspace(u) => u.remove_peer(nl, p).await,
            NodeDataplane::Kernel(k) => k.remove_peer(nl, p).await,
        }
    }

    /// Stops forwarding and leaves the device with its address, routes and
    /// neighbours in place, as flanneld does: any stop may be a restart or an
    /// upgrade (with systemd's descriptor store it is not even visible as such), so
    /// pod traffic keeps its path and the next start adopts the device and prunes
    /// what became stale. `vxmeshctl cleanup-tap` (userspace) or `ip link del`
    /// (kernel) removes it for good; see docs/decisions/0011-stop-leaves-the-tap.md.
    /// Returns how long the threads took to stop.
    pub fn stop(self) -> Duration {
        match self {
            NodeDataplane::Userspace(u) => {
                let took = u.quiesce();
                tracing::info!(
                    "userspace dataplane stopped; the TAP with its address, routes and neighbours stays for the next vxmeshd (vxmeshctl cleanup-tap removes it)"
                );
                took
            }
            NodeDataplane::Kernel(k) => {
                k.stop();
                Duration::ZERO
            }
        }
    }
}
