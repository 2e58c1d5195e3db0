//! The node's dataplane as the agent sees it: a device with this node's VTEP
//! address, and per-peer state to add, update and remove.
//!
//! One control plane drives either implementation (`vxmeshd --dataplane`):
//! - [`userspace`]: a TAP device and vxmesh's own VXLAN threads; per peer, a
//!   permanent neighbour and an onlink route on the TAP, and an entry in the
//!   forwarding table the threads read;
//! - `kernel`: a Linux vxlan device programmed exactly like flannel's vxlan backend.
//!
//! Every operation is idempotent, so the agent can re-apply everything at any time.

pub mod userspace;

use std::sync::Arc;

use crate::netlink::{Netlink, NetlinkError};
use crate::peers::{Peer, PeerTable};
use crate::state::AgentState;
use crate::subnet::Subnet;
use vxmesh_dataplane::fib::LocalVtep;

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
    pub public_ip: std::net::Ipv4Addr,
    pub underlay_index: u32,
    /// Userspace: the TAP's name. Kernel: ignored (the device is `<prefix>.<VNI>`).
    pub device_name: vxmesh_dataplane::ifname::IfName,
    pub offloads: bool,
    pub tx_sockets: usize,
    pub tap_queues: usize,
}

/// The running dataplane.
#[derive(Debug)]
pub enum NodeDataplane {
    Userspace(userspace::Userspace),
}

impl NodeDataplane {
    pub async fn start(
        kind: DataplaneKind,
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<NodeDataplane> {
        match kind {
            DataplaneKind::Userspace => Ok(NodeDataplane::Userspace(
                userspace::Userspace::start(nl, setup, state).await?,
            )),
            DataplaneKind::Kernel => {
                anyhow::bail!("--dataplane kernel is not available in this build")
            }
        }
    }

    /// The device carrying overlay traffic (its ifindex).
    pub fn device_index(&self) -> u32 {
        match self {
            NodeDataplane::Userspace(u) => u.tap_index(),
        }
    }

    /// Gives the device this node's VTEP address, `<subnet>.0/32`.
    pub async fn set_subnet(&self, nl: &Netlink, subnet: &Subnet) -> Result<(), NetlinkError> {
        nl.set_only_address(self.device_index(), subnet.addr(), 32)
            .await
    }

    /// Makes the fast path see the current peer set (before routes point at it).
    pub fn publish(&self, peers: &PeerTable) {
        match self {
            NodeDataplane::Userspace(u) => u.publish(peers),
        }
    }

    pub async fn add_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match self {
            NodeDataplane::Userspace(u) => u.add_peer(nl, p).await,
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
        }
    }

    pub async fn remove_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        match self {
            NodeDataplane::Userspace(u) => u.remove_peer(nl, p).await,
        }
    }

    /// Removes per-peer kernel state and the device.
    pub async fn stop(self, nl: &Netlink, peers: &PeerTable) {
        for p in peers.peers() {
            let _ = self.remove_peer(nl, p).await;
        }
        match self {
            NodeDataplane::Userspace(u) => u.stop(),
        }
    }
}
