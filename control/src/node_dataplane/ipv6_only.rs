//! The dataplane of a node on an IPv6-only network (`EnableIPv4: false`): flanneld's
//! IPv6 device, `flannel-v6.<VNI>` (the kernel's vxlan driver, VXLAN over IPv6 from
//! the PublicIPv6), alone, whatever `--dataplane` says: the userspace threads carry
//! IPv4 only (docs/decisions/0018). Each peer — an IPv6 half alone, keyed by its own
//! IPv6 subnet — gets what a dual-stack peer's IPv6 half gets: a permanent neighbour at
//! its subnet's first address, an fdb entry `dst <PublicIPv6>` and an onlink route
//! (with `Backend.DirectRouting`, a route via its PublicIPv6 on the underlay when that
//! lies in one of the underlay's networks). The programming is [`plan::program_ops6`]
//! and [`plan::reconcile_ops6`], the dual-stack half's code.
//!
//! At start it deletes what another kind of node left and nothing would program any
//! more: `flannel.<VNI>` (an IPv4 device whose routes would go stale) and the userspace
//! dataplane's TAP. Stopping leaves the device and its entries, as the kernel
//! dataplane does.

use std::sync::{Arc, MutexGuard};

use super::direct::{DirectRouting, PeerPath};
use super::kernel::{self, Device6, Place};
use super::plan::{self, Programmed, SharedProgrammed};
use super::{Reconciled, Setup6};
use crate::netlink::{DeletedLink, Netlink, NetlinkError};
use crate::peers::{Peer, PeerChange, PeerIpv6, PeerTable};
use crate::state::AgentState;
use crate::subnet6::Subnet6;
use vxmesh_dataplane::ifname::IfName;

/// What an IPv6-only node's dataplane needs to start.
#[derive(Debug, Clone)]
pub struct Ipv6OnlySetup {
    /// VNI, port and underlay.
    pub place: Place,
    /// The overlay MTU as for an IPv4 device (underlay − 50, or Backend.MTU): the
    /// device gets [`kernel::mtu6`] of it.
    pub mtu: u32,
    /// The IPv6 VTEP: PublicIPv6, IPv6 VtepMAC, IPv6Network and IPv6SubnetLen.
    pub v6: Setup6,
    /// The userspace dataplane's TAP name (`--tap-name`): a TAP of this name left by
    /// it is deleted.
    pub tap_name: IfName,
    /// `Backend.DirectRouting`.
    pub direct_routing: bool,
}

/// The running IPv6-only dataplane.
#[derive(Debug)]
pub struct Ipv6OnlyDataplane {
    device: Device6,
    direct: DirectRouting,
    underlay_index: u32,
    network: Subnet6,
    subnet_len: u8,
    /// The IPv6 VtepMAC and the device's MTU, restored if changed.
    vtep_mac: vxmesh_dataplane::wire::MacAddr,
    mtu: u32,
    programmed: SharedProgrammed,
}

/// Routes each IPv6-only peer as DirectRouting decides (`path` is never asked: these
/// peers have no IPv4 part).
struct Paths<'a>(&'a DirectRouting);

impl plan::Route for Paths<'_> {
    fn path(&self, _p: &Peer) -> PeerPath {
        PeerPath::Overlay
    }
    fn path6(&self, v6: &PeerIpv6) -> PeerPath<std::net::Ipv6Addr> {
        self.0.path6(v6.public_ipv6)
    }
}

impl Ipv6OnlyDataplane {
    /// Creates or adopts `flannel-v6.<VNI>` (see the module documentation).
    pub async fn start(
        nl: &Netlink,
        s: &Ipv6OnlySetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<Ipv6OnlyDataplane> {
        kernel::remove_leftover_tap(nl, &s.tap_name).await?;
        kernel::remove_device4(
            nl,
            s.place.vni,
            "the network is IPv6-only (EnableIPv4 false)",
        )
        .await?;
        let device = kernel::start_v6(nl, s.place, s.mtu, &s.v6, "IPv6 only").await?;
        let direct = if s.direct_routing {
            let prefixes = nl.ipv6_prefixes(s.place.underlay_index).await?;
            tracing::info!(networks = ?prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
                "DirectRouting, IPv6: peers whose PublicIPv6 is in these networks of the underlay get their IPv6 subnet routed via it, unencapsulated");
            DirectRouting::new(true, []).with_ipv6(prefixes)
        } else {
            DirectRouting::default()
        };
        state.update(|i| i.tap = Some(device.name.to_string()));
        Ok(Ipv6OnlyDataplane {
            device,
            direct,
            underlay_index: s.place.underlay_index,
            network: s.v6.network,
            subnet_len: s.v6.subnet_len,
            vtep_mac: s.v6.vtep_mac,
            mtu: kernel::mtu6(s.mtu),
            programmed: SharedProgrammed::default(),
        })
    }

    pub fn device(&self) -> &Device6 {
        &self.device
    }

    /// Whether a deleted link was this dataplane's device.
    pub fn owns_link(&self, d: &DeletedLink) -> bool {
        d.index == self.device.index
    }

    /// How a peer is routed: through the device, or directly (DirectRouting).
    pub fn path(&self, v6: &PeerIpv6) -> PeerPath<std::net::Ipv6Addr> {
        self.direct.path6(v6.public_ipv6)
    }

    fn programmed(&self) -> MutexGuard<'_, Programmed> {
        self.programmed.lock()
    }

    /// Puts the IPv6 VtepMAC back if someone changed the device's MAC (udev's
    /// MACAddressPolicy, a script): `Some(true)` when it did (the change flushed the
    /// device's neighbours: reconcile), `Some(false)` when nothing was wrong, `None`
    /// when the device is gone.
    pub async fn ensure_vtep_mac(&self, nl: &Netlink) -> Result<Option<bool>, NetlinkError> {
        let Some(l) = nl.link_by_index(self.device.index).await? else {
            return Ok(None);
        };
        if l.mac == Some(self.vtep_mac) {
            return Ok(Some(false));
        }
        tracing::warn!(device = %l.name, found = ?l.mac.map(|m| m.to_string()), want = %self.vtep_mac,
            "device MAC was changed behind our back (udev MACAddressPolicy?); restoring the IPv6 VtepMAC");
        nl.configure_link(self.device.index, self.vtep_mac, self.mtu)
            .await?;
        Ok(Some(true))
    }

    /// Gives the device this node's IPv6 VTEP address: the lease's first IPv6 address
    /// as /128, as flanneld does.
    pub async fn set_subnet6(&self, nl: &Netlink, subnet: &Subnet6) -> Result<(), NetlinkError> {
        nl.set_only_address6(self.device.index, subnet.addr(), 128)
            .await
    }

    /// Carries out a batch of peer changes; returns the failures, each with the index
    /// of the change it belongs to (every request is tried).
    pub fn program(
        &self,
        nl: &Netlink,
        changes: &[PeerChange<PeerIpv6>],
    ) -> Vec<(usize, NetlinkError)> {
        if changes.is_empty() {
            return Vec::new();
        }
        let ops = plan::program_ops6(
            (self.device.index, self.underlay_index),
            changes,
            &Paths(&self.direct),
            &mut self.programmed(),
        );
        super::send(nl, ops)
    }

    /// Makes the device (and, with DirectRouting, the underlay's direct routes inside
    /// IPv6Network) carry exactly `peers`: three dumps of the device and one of the
    /// underlay's IPv6 routes, then one batch of what differs.
    pub async fn reconcile(
        &self,
        nl: &Netlink,
        peers: &PeerTable<PeerIpv6>,
    ) -> Result<Reconciled, NetlinkError> {
        let devices = (self.device.index, self.underlay_index);
        let Some(dumps) = kernel::dumps6(nl, Some(devices.0), devices.1).await? else {
            return Ok(Reconciled::default());
        };
        let peers: Vec<PeerIpv6> = peers.peers().copied().collect();
        let direct6 = self.direct.enabled().then_some(plan::Direct6 {
            routing: &self.direct,
            network: self.network,
            subnet_len: self.subnet_len,
        });
        let r = plan::reconcile_ops6(devices, &peers, &dumps, direct6);
        self.programmed()
            .reset_ipv6_only(peers.iter().filter(|v6| self.path(v6) == PeerPath::Overlay));
        super::apply_reconcile(nl, r)
    }

    /// Leaves the device and its entries in place (pod traffic survives a restart).
    pub fn stop(self) {
        tracing::info!(device = %self.device.name,
            "IPv6-only dataplane stopped; {} and its routes stay so pod traffic survives a restart (delete it with `ip link del {}`)",
            self.device.name, self.device.name);
    }
}
