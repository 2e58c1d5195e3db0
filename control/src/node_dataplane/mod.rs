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
//! Dual stack, in either dataplane: flanneld's IPv6 device, `flannel-v6.<VNI>` (the
//! kernel's vxlan driver), carries each peer's IPv6 half ([`kernel`] makes it; the
//! userspace threads carry IPv4 only, docs/decisions/0018).
//!
//! With `Backend.DirectRouting`, peers on the underlay's own L2 network get a plain
//! route via their PublicIP instead (`<subnet> via <PublicIP> dev <underlay>`, see
//! [`direct`]) in either dataplane; their traffic never touches the overlay device.
//!
//! Changes are carried out in batches ([`NodeDataplane::program`]: the requests of
//! [`plan::program_ops`], many per `sendmsg`), and the device is checked against the
//! peer set by dumping it ([`NodeDataplane::reconcile`]: one route dump, one
//! neighbour dump, one fdb dump, then only what differs) — not a request per peer.
//! Every operation is idempotent, so the agent can re-apply everything at any time.
//! Both devices outlive the agent (a stop, a crash, a restart): pod traffic keeps
//! its path, and the next agent adopts the device and prunes what went stale.
//! Switching dataplanes leaves nothing of the other behind: each one removes the
//! other's leftover device when it starts (the kernel's device holds the UDP port
//! the userspace dataplane needs), and deleting a device takes its routes,
//! neighbours and fdb entries with it.

pub mod direct;
pub mod ipv6_only;
pub mod kernel;
pub mod plan;
pub mod userspace;

use std::sync::Arc;
use std::time::Duration;

use crate::handover::DataplaneFds;
use crate::netlink::{Netlink, NetlinkError, PeerOp};
use crate::peers::{Peer, PeerChange, PeerTable};
use crate::state::AgentState;
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;
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
    /// Userspace: the TAP's transmit queue, in frames (`--tap-txqueuelen`).
    pub tap_txqueuelen: u32,
    /// Userspace: the VXLAN receive socket's buffer, in bytes (`--vxlan-rcvbuf`).
    pub vxlan_rcvbuf: usize,
    /// Userspace: CoDel on the receive socket's queue (`--aqm-target`), or none.
    pub aqm: Option<vxmesh_dataplane::aqm::CodelConfig>,
    /// Userspace: how the packet threads are scheduled (`--engine-priority`).
    pub engine_priority: vxmesh_dataplane::priority::ThreadPriority,
    /// Userspace: the packet threads' busy-polling budget (`--busy-poll`; zero: off).
    pub busy_poll: vxmesh_dataplane::busy_poll::BusyPoll,
    /// Userspace: send egress frames whole through the underlay TAP
    /// (`--egress-tunnel-gso`).
    pub egress_tunnel_gso: bool,
    /// The cluster Network (DirectRouting routes are pruned only inside it).
    pub network: Subnet,
    /// SubnetLen: a DirectRouting route is one peer subnet, never a shorter route
    /// that happens to lie inside the Network.
    pub subnet_len: u8,
    /// `Backend.DirectRouting`.
    pub direct_routing: bool,
    /// Dual stack (`EnableIPv6` with a PublicIPv6): the IPv6 VTEP. Carried on
    /// `flannel-v6.<VNI>` (the kernel's vxlan driver), or by the userspace threads
    /// ([`Setup6::in_threads`]).
    pub ipv6: Option<Setup6>,
}

/// The IPv6 VTEP of a dual-stack node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup6 {
    /// The PublicIPv6: VXLAN over IPv6 is sent from it.
    pub local_ip: std::net::Ipv6Addr,
    /// `BackendV6Data.VtepMAC` ([`crate::vtep_mac::derive_v6`]).
    pub vtep_mac: MacAddr,
    /// The IPv6 Network (DirectRouting's IPv6 routes are pruned only inside it).
    pub network: Subnet6,
    /// IPv6SubnetLen (the length of each pruned IPv6 direct route).
    pub subnet_len: u8,
    /// `--ipv6-dataplane userspace` on the userspace dataplane: the threads carry
    /// IPv6 through the TAP instead of the kernel's `flannel-v6.<VNI>`.
    pub in_threads: bool,
}

/// The running dataplane: the overlay device, and how peers are routed.
#[derive(Debug)]
pub struct NodeDataplane {
    overlay: Overlay,
    direct: DirectRouting,
    underlay_index: u32,
    network: Subnet,
    subnet_len: u8,
    /// Dual stack: the IPv6 Network and IPv6SubnetLen.
    network6: Option<(Subnet6, u8)>,
    /// The overlay device was created by this run (not adopted, not handed over):
    /// no entry on it predates this agent.
    fresh: bool,
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
    let dr = DirectRouting::new(true, prefixes);
    if setup.ipv6.is_none() {
        return Ok(dr);
    }
    let prefixes6 = nl.ipv6_prefixes(setup.underlay_index).await?;
    tracing::info!(networks = ?prefixes6.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
        "DirectRouting, IPv6: peers whose PublicIPv6 is in these networks of the underlay get their IPv6 subnet routed via it, unencapsulated");
    Ok(dr.with_ipv6(prefixes6))
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
                subnet_len: setup.subnet_len,
                network6: setup.ipv6.map(|v| (v.network, v.subnet_len)),
                // The kernel dataplane's device may be flanneld's or an earlier run's
                // (it adopts compatible ones): never taken as fresh.
                fresh: kind == DataplaneKind::Userspace && !adopted,
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
            subnet_len: setup.subnet_len,
            network6: setup.ipv6.map(|v| (v.network, v.subnet_len)),
            fresh: false,
        })
    }

    /// How the first full listing's reconcile reads the neighbours: a device this
    /// run created holds no entry an earlier agent left, so looking the peers' up
    /// is enough; an adopted or handed-over one is dumped for stale entries.
    pub fn first_check(&self) -> NeighbourCheck {
        if self.fresh {
            NeighbourCheck::Lookup
        } else {
            NeighbourCheck::Dump
        }
    }

    /// The userspace dataplane, if that is what runs (what a handover hands on).
    pub fn userspace(&self) -> Option<&userspace::Userspace> {
        match &self.overlay {
            Overlay::Userspace(u) => Some(u),
            Overlay::Kernel(_) => None,
        }
    }

    /// The overlay device's name: the TAP, or `flannel.<VNI>`.
    pub fn device_name(&self, setup: &DataplaneSetup) -> vxmesh_dataplane::ifname::IfName {
        match &self.overlay {
            Overlay::Userspace(_) => setup.device_name.clone(),
            Overlay::Kernel(k) => k.device_name().clone(),
        }
    }

    /// The device carrying overlay traffic (its ifindex).
    pub fn device_index(&self) -> u32 {
        match &self.overlay {
            Overlay::Userspace(u) => u.tap_index(),
            Overlay::Kernel(k) => k.device_index(),
        }
    }

    /// Whether a deleted link was one of this dataplane's devices: the overlay device,
    /// the IPv6 device (dual stack) or the underlay TAP (by name: the engine holds
    /// no index for it).
    pub fn owns_link(&self, d: &crate::netlink::DeletedLink) -> bool {
        d.index == self.device_index()
            || Some(d.index) == self.device6_index()
            || self
                .userspace()
                .and_then(userspace::Userspace::underlay_name)
                .is_some_and(|n| n.as_str() == d.name)
    }

    /// How `p`'s subnet is routed: through the overlay, or directly (DirectRouting).
    pub fn path(&self, p: &Peer) -> PeerPath {
        self.direct.path(p.public_ip)
    }

    /// How both halves of a peer are routed.
    fn paths(&self) -> plan::DirectPaths<'_> {
        plan::DirectPaths(&self.direct)
    }

    /// Puts the VtepMAC back on the device if something replaced it (systemd-udevd's
    /// `MACAddressPolicy=persistent` can rewrite a new TAP's MAC just after we set
    /// it; peers would then address a MAC nobody answers to), and `vtep_mac6` on the
    /// IPv6 device of a dual-stack node. Returns whether a repair was needed;
    /// `NoSuchLink` when the device, the underlay TAP or the IPv6 device is gone.
    /// Setting a MAC flushes the device's neighbours: the caller re-applies the peers
    /// after a repair.
    pub async fn ensure_vtep_mac(
        &self,
        nl: &Netlink,
        vtep_mac: MacAddr,
        vtep_mac6: Option<MacAddr>,
        mtu: u32,
    ) -> Result<bool, NetlinkError> {
        // The underlay TAP (`--egress-tunnel-gso`) and, dual stack, the IPv6 device:
        // one deleted is the overlay deleted (the caller starts the dataplane again,
        // which makes them all).
        if let Some(name) = self
            .userspace()
            .and_then(userspace::Userspace::underlay_name)
        {
            if nl.link_identity(name.as_str()).await?.is_none() {
                return Err(NetlinkError::NoSuchLink(format!(
                    "{name} (the underlay TAP vanished)"
                )));
            }
        }
        let mut repaired = false;
        if let Some(i6) = self.device6_index() {
            let Some(l) = nl.link_by_index(i6).await? else {
                return Err(NetlinkError::NoSuchLink(format!(
                    "#{i6} (the IPv6 overlay device vanished)"
                )));
            };
            if let Some(want) = vtep_mac6.filter(|m| l.mac != Some(*m)) {
                tracing::warn!(
                    device = %l.name,
                    found = ?l.mac.map(|m| m.to_string()),
                    want = %want,
                    "device MAC was changed behind our back (udev MACAddressPolicy?); restoring the IPv6 VtepMAC"
                );
                nl.configure_link(i6, want, kernel::mtu6(mtu)).await?;
                repaired = true;
            }
        }
        let idx = self.device_index();
        match nl.link_by_index(idx).await? {
            Some(l) if l.mac == Some(vtep_mac) => Ok(repaired),
            Some(l) => {
                tracing::warn!(
                    device = %l.name,
                    found = ?l.mac.map(|m| m.to_string()),
                    want = %vtep_mac,
                    "device MAC was changed behind our back (udev MACAddressPolicy?); restoring the VtepMAC"
                );
                nl.configure_link(idx, vtep_mac, mtu).await?;
                if let Some(u) = self.userspace() {
                    // Setting the MTU reset the TAP's IPv6 MTU.
                    if let Err(e) = u.tap_ipv6_again(&l.name, mtu) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot set IPv6 on the TAP again");
                    }
                }
                Ok(true)
            }
            None => Err(NetlinkError::NoSuchLink(format!(
                "#{idx} (the overlay device vanished)"
            ))),
        }
    }

    /// Gives the device this node's VTEP address, `<subnet>.0/32`.
    /// The userspace engine learns it too: its underlay TAP path probes come from it.
    pub async fn set_subnet(&self, nl: &Netlink, subnet: &Subnet) -> Result<(), NetlinkError> {
        nl.set_only_address(self.device_index(), subnet.addr(), 32)
            .await?;
        if let Overlay::Userspace(u) = &self.overlay {
            u.set_vtep_ip(subnet.addr());
        }
        Ok(())
    }

    /// Gives the IPv6 device, when there is one, this node's IPv6 VTEP address: the
    /// lease's first IPv6 address as /128, as flanneld does. Returns whether there
    /// is an IPv6 device.
    pub async fn set_subnet6(&self, nl: &Netlink, subnet: &Subnet6) -> Result<bool, NetlinkError> {
        if let Some(u) = self.userspace().filter(|u| u.ipv6_in_threads()) {
            nl.set_only_address6(u.tap_index(), subnet.addr(), 128)
                .await?;
            u.set_vtep_ip6(subnet.addr());
            return Ok(true);
        }
        match self.device6_index() {
            Some(i) => nl
                .set_only_address6(i, subnet.addr(), 128)
                .await
                .map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether, of this dataplane's devices, only the IPv6 one (dual stack) is gone:
    /// then [`NodeDataplane::restart6`] makes it again and the IPv4 path runs on.
    pub async fn only_device6_gone(&self, nl: &Netlink) -> Result<bool, NetlinkError> {
        let Some(i6) = self.device6_index() else {
            return Ok(false);
        };
        if nl.link_by_index(i6).await?.is_some() {
            return Ok(false);
        }
        if let Some(name) = self
            .userspace()
            .and_then(userspace::Userspace::underlay_name)
        {
            if nl.link_identity(name.as_str()).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(nl.link_by_index(self.device_index()).await?.is_some())
    }

    /// Makes the IPv6 device of a dual-stack node again as `setup` has it — after it
    /// was deleted, or sending from a new PublicIPv6 with the IPv6 VtepMAC derived
    /// from it — while the IPv4 device and the packet threads run on (before, either
    /// event restarted the whole dataplane). DirectRouting's networks are read again
    /// (an IPv6 prefix may have moved). The caller gives the device its address and
    /// programs the peers' IPv6 halves again (a reconcile, which also resets what is
    /// recorded as programmed).
    pub async fn restart6(&mut self, nl: &Netlink, setup: &DataplaneSetup) -> anyhow::Result<()> {
        if self.ipv6_in_threads() {
            // The IPv6 sockets are bound to the PublicIPv6 and the TAP is the IPv4
            // device too: nothing to make again alone.
            anyhow::bail!("the userspace threads carry IPv6 (--ipv6-dataplane userspace): there is no IPv6 device to make again alone");
        }
        self.direct = direct_routing(nl, setup).await?;
        let v6 = kernel::device6_for(nl, setup).await?;
        match &mut self.overlay {
            Overlay::Userspace(u) => u.set_device6(v6),
            Overlay::Kernel(k) => k.set_device6(v6),
        }
        Ok(())
    }

    /// Whether the userspace threads carry this node's IPv6 (`--ipv6-dataplane
    /// userspace`): the TAP is then the IPv6 overlay device too, and there is no
    /// `flannel-v6.<VNI>`.
    pub fn ipv6_in_threads(&self) -> bool {
        self.userspace()
            .is_some_and(userspace::Userspace::ipv6_in_threads)
    }

    /// Whether this node carries pods' IPv6 (dual stack): on `flannel-v6.<VNI>` or
    /// through the threads. The IPv6 rules, the blackhole route and the subnet file's
    /// IPv6 lines follow it.
    pub fn carries_ipv6(&self) -> bool {
        self.device6_index().is_some() || self.ipv6_in_threads()
    }

    /// The device carrying pods' IPv6 to peers: `flannel-v6.<VNI>`, or the TAP when
    /// the threads carry IPv6.
    fn overlay6_index(&self) -> Option<u32> {
        self.device6_index()
            .or_else(|| self.ipv6_in_threads().then(|| self.device_index()))
    }

    /// The IPv6 device's index (dual stack, `flannel-v6.<VNI>`; none when the threads
    /// carry IPv6).
    pub fn device6_index(&self) -> Option<u32> {
        match &self.overlay {
            Overlay::Kernel(k) => k.device6().map(|d| d.index),
            Overlay::Userspace(u) => u.device6().map(|d| d.index),
        }
    }

    /// Makes the fast path see exactly the current peer set, rebuilt from it (after
    /// a full listing; events go through [`NodeDataplane::program`]'s delta). Every
    /// peer is in it, direct ones too: their VXLAN is still accepted (a peer that
    /// decided otherwise, or one changing its mind). The kernel dataplane has no
    /// table of its own: a no-op there.
    pub fn publish(&self, peers: &PeerTable) {
        match &self.overlay {
            Overlay::Userspace(u) => u.publish(peers),
            Overlay::Kernel(_) => {}
        }
    }

    /// Before a full listing's batch: deletes the IPv6 routes on the underlay that would
    /// keep an overlay peer's IPv6 route out ([`plan::blocks_overlay6`]), so that the
    /// batch adds it at once instead of failing until the reconcile pass. One dump, on
    /// a node with the IPv6 device only; returns how many were deleted.
    pub async fn clear_blocking_routes6(
        &self,
        nl: &Netlink,
        peers: &PeerTable,
    ) -> Result<usize, NetlinkError> {
        if self.overlay6_index().is_none() {
            return Ok(0);
        }
        let overlay6: Vec<Subnet6> = peers
            .peers()
            .filter_map(|p| p.ipv6)
            .filter(|v6| self.direct.path6(v6.public_ipv6) == PeerPath::Overlay)
            .map(|v6| v6.subnet)
            .collect();
        let ops: Vec<PeerOp> = nl
            .routes6_via(self.underlay_index)
            .await?
            .into_iter()
            .filter(|r| overlay6.iter().any(|s| plan::blocks_overlay6(r, s)))
            .map(PeerOp::DeleteRoute6)
            .collect();
        for op in &ops {
            tracing::info!(
                "removing a direct IPv6 route that would block the overlay route: {}",
                op.describe()
            );
        }
        match nl.apply(&ops).into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(ops.len()),
        }
    }

    fn devices(&self) -> plan::Devices {
        plan::Devices {
            overlay: self.device_index(),
            underlay: self.underlay_index,
            fdb: matches!(self.overlay, Overlay::Kernel(_)),
            overlay6: self.overlay6_index(),
            // flannel-v6.<VNI> has one; the TAP has none.
            fdb6: self.device6_index().is_some(),
        }
    }

    /// Carries out a batch of peer changes (removals, updates, additions, as
    /// [`PeerTable`] hands them over): the forwarding table first, as a delta (before
    /// routes point at it), then the kernel's entries in netlink batches. Returns the
    /// failures, each with the index of the change it belongs to; every request is
    /// tried whatever failed before it.
    pub fn program(&self, nl: &Netlink, changes: &[PeerChange]) -> Vec<(usize, NetlinkError)> {
        if changes.is_empty() {
            return Vec::new();
        }
        let d = self.devices();
        let ops = match &self.overlay {
            Overlay::Userspace(u) => {
                u.publish_changes(changes);
                plan::program_ops_routed(&d, changes, &self.paths(), &mut u.programmed())
            }
            Overlay::Kernel(k) => {
                plan::program_ops_routed(&d, changes, &self.paths(), &mut k.programmed())
            }
        };
        send(nl, ops)
    }

    /// Makes the devices carry exactly `peers` (the full, current set): dumps the
    /// main table's routes (and the fdb), reads the overlay device's neighbours as
    /// `check` says, re-adds what is missing or differs and removes what no peer
    /// accounts for (see [`plan::reconcile_ops`]) — a few dumps and one batch, not a
    /// request per peer. Both devices outlive the agent (the kernel's may have been
    /// flanneld's), so a peer that left while no agent ran leaves entries behind;
    /// with DirectRouting, direct routes on the underlay too.
    pub async fn reconcile(
        &self,
        nl: &Netlink,
        peers: &PeerTable,
        check: NeighbourCheck,
    ) -> Result<Reconciled, NetlinkError> {
        let d = self.devices();
        let with_paths: Vec<(Peer, PeerPath)> = peers.peers().map(|p| (*p, self.path(p))).collect();
        let neighbours = match check {
            NeighbourCheck::Dump => nl.neighbours(d.overlay).await?,
            NeighbourCheck::Lookup => {
                let vteps: Vec<std::net::Ipv4Addr> = with_paths
                    .iter()
                    .filter(|(_, path)| *path == PeerPath::Overlay)
                    .map(|(p, _)| p.vtep_ip())
                    .collect();
                nl.lookup_neighbours(d.overlay, &vteps)?
            }
        };
        let dumps = plan::Dumps {
            routes: nl.main_table_routes().await?,
            neighbours,
            all_neighbours: check == NeighbourCheck::Dump,
            fdb: if d.fdb {
                nl.fdb_entries(d.overlay).await?
            } else {
                Vec::new()
            },
            v6: kernel::dumps6(nl, d.overlay6, d.underlay).await?,
        };
        let network = self
            .direct
            .enabled()
            .then_some((&self.network, self.subnet_len));
        let direct6 =
            self.network6
                .filter(|_| self.direct.enabled())
                .map(|(network, subnet_len)| plan::Direct6 {
                    routing: &self.direct,
                    network,
                    subnet_len,
                });
        let r = plan::reconcile_ops(&d, &with_paths, &dumps, network, direct6);
        match &self.overlay {
            Overlay::Kernel(k) => {
                k.programmed().reset(
                    with_paths
                        .iter()
                        .filter(|(_, path)| *path == PeerPath::Overlay)
                        .map(|(p, _)| p),
                );
                k.programmed().reset6(with_paths.iter().map(|(p, _)| p));
            }
            // The TAP has no fdb: only the IPv6 device's halves are tracked.
            Overlay::Userspace(u) => u.programmed().reset6(with_paths.iter().map(|(p, _)| p)),
        }
        apply_reconcile(nl, r)
    }

    /// [`NodeDataplane::reconcile`]; returns how many entries were removed.
    pub async fn prune(&self, nl: &Netlink, peers: &PeerTable) -> Result<usize, NetlinkError> {
        self.reconcile(nl, peers, NeighbourCheck::Dump)
            .await
            .map(|r| r.removed)
    }

    /// Programs one peer: a direct route, or the overlay's entries.
    pub async fn add_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        first_error(self.program(nl, &[PeerChange::Added(*p)]))
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
        let c = PeerChange::Updated {
            old: *old,
            new: *new,
        };
        first_error(self.program(nl, &[c]))
    }

    /// Removes a peer's route (and overlay entries).
    pub async fn remove_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        first_error(self.program(nl, &[PeerChange::Removed(*p)]))
    }

    /// Stops the packet threads of a dataplane whose device is gone (deleted under
    /// the running agent), before it is started again; returns how long that took.
    pub fn discard(self) -> Duration {
        match self.overlay {
            Overlay::Userspace(u) => u.quiesce(),
            Overlay::Kernel(_) => Duration::ZERO,
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

/// How a reconcile pass reads the overlay device's neighbours.
///
/// The kernel keeps one neighbour table for the whole host: a dump walks every
/// entry of every network namespace (on the one-machine scale harness, N nodes'
/// N entries each — 10^6 at 1,000 nodes, per dump, per node), where a lookup is one
/// hash probe per peer. Lookups find missing and changed entries; only a dump finds
/// stale ones, so the agent dumps after a full listing and every
/// [`crate::agent::DUMP_NEIGHBOURS_EVERY`]th periodic pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourCheck {
    /// Every entry of the device: repairs and prunes.
    Dump,
    /// The entries at the overlay peers' VTEP addresses: repairs only.
    Lookup,
}

/// What a reconcile pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Entries missing or different, written again.
    pub repaired: usize,
    /// Entries no peer accounts for, removed.
    pub removed: usize,
}

/// Sends the ops of a plan; the failures with the index of their change.
fn send(nl: &Netlink, ops: Vec<(usize, PeerOp)>) -> Vec<(usize, NetlinkError)> {
    let (owners, plain): (Vec<usize>, Vec<PeerOp>) = ops.into_iter().unzip();
    owners
        .into_iter()
        .zip(nl.apply(&plain))
        .filter_map(|(i, r)| r.err().map(|e| (i, e)))
        .collect()
}

/// Up to this many stale entries are logged one line each; more as one line.
const LOG_EACH_STALE_UP_TO: usize = 16;

/// Sends a reconcile pass (repairs, then removals); the first error, if any.
fn apply_reconcile(nl: &Netlink, r: plan::Reconcile) -> Result<Reconciled, NetlinkError> {
    if r.stale.len() <= LOG_EACH_STALE_UP_TO {
        for op in &r.stale {
            tracing::info!("pruning stale entry: {}", op.describe());
        }
    } else {
        tracing::info!(
            count = r.stale.len(),
            "pruning stale routes, neighbours and fdb entries"
        );
    }
    let done = Reconciled {
        repaired: r.repairs.len(),
        removed: r.stale.len(),
    };
    let mut ops = r.repairs;
    ops.extend(r.stale);
    match nl.apply(&ops).into_iter().find_map(Result::err) {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

fn first_error(failures: Vec<(usize, NetlinkError)>) -> Result<(), NetlinkError> {
    match failures.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}
