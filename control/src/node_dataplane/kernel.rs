//! The kernel dataplane: a Linux vxlan device programmed exactly like flannel's
//! vxlan backend (flannel `pkg/backend/vxlan`; RFC 7348 for the wire format).
//!
//! The device is `flannel.<VNI>` — the name flanneld uses. A node migrating from
//! flanneld already has that device bound to the same UDP port, and a second vxlan
//! device with the same VNI and port cannot exist (the kernel answers EEXIST), so
//! the device is *adopted* when its settings are compatible (same VNI, port,
//! `local`, underlay, learning off; MAC and MTU are changed in place) and recreated
//! otherwise — the rule flanneld itself applies. Adoption means pod traffic keeps
//! flowing through the switch, and rolling back to flanneld adopts it the same way.
//!
//! Device: learning off, `dstport` = Backend.Port, `local` = the underlay address
//! chosen for VXLAN (the PublicIP, except behind NAT where the PublicIP is not local),
//! `dev` = the underlay, MAC = the stable VtepMAC ([`crate::vtep_mac`], the same
//! as the userspace dataplane's), MTU = underlay MTU − 50, address `<subnet>.0/32`.
//!
//! Per peer, in this order so the kernel never ARPs and never floods:
//! 1. neighbour `<peer subnet>.0 lladdr <VtepMAC> nud permanent`,
//! 2. fdb `<VtepMAC> dst <PublicIP> self permanent` (replace: one remote per MAC),
//! 3. route `<peer subnet> via <peer subnet>.0 dev flannel.<VNI> onlink`;
//!
//! removal in reverse. A changed VtepMAC adds the new fdb entry, then deletes the
//! old one (flannel leaves it behind); a changed PublicIP replaces the entry's dst.
//!
//! Dual stack (a PublicIPv6 and an IPv6 pool): a second device, `flannel-v6.<VNI>`,
//! as flanneld makes it — VXLAN over IPv6 from the PublicIPv6, the IPv6 VtepMAC,
//! address `<IPv6 subnet's first address>/128` — carries each peer's IPv6 half the
//! same way (neighbour, fdb entry `dst <PublicIPv6>`, onlink route; docs/decisions/0017).
//! Everything is a replace or a tolerant delete, so any step can be repeated.
//!
//! Stopping leaves the device and its entries in place, as flanneld does: pod
//! traffic survives an agent restart or upgrade. Whatever became stale meanwhile
//! (a peer that left while the agent was down, or entries flanneld left on an
//! adopted device) is pruned by [`super::NodeDataplane::reconcile`] once the agent has the full peer
//! list. The userspace dataplane deletes `flannel.<VNI>` when it starts (it needs the
//! UDP port) and runs `flannel-v6.<VNI>` itself on a dual-stack node (the device's
//! socket is IPv6-only: docs/decisions/0018); this dataplane deletes the userspace
//! dataplane's TAP if one was left, so switching leaves nothing of the other behind.

use std::sync::{Arc, MutexGuard};

use anyhow::Context as _;

use super::direct::PeerPath;
use super::plan::{self, Programmed, SharedProgrammed};
use super::DataplaneSetup;
use crate::netlink::{is_exists, write_sysctl, Netlink, NetlinkError, VxlanLink, VxlanSpec};
use crate::peers::{Peer, PeerChange};
use crate::state::AgentState;
use vxmesh_dataplane::ifname::IfName;

/// Name prefix of the kernel vxlan device: flannel's, see the module documentation.
pub const DEVICE_PREFIX: &str = "flannel";

/// `flannel.<VNI>`; an error if the name would not fit in IFNAMSIZ (VNIs above
/// 9999999), as with flanneld.
pub fn device_name(vni: u32) -> anyhow::Result<IfName> {
    let name = format!("{DEVICE_PREFIX}.{vni}");
    IfName::new(&name).map_err(|e| {
        anyhow::anyhow!("kernel vxlan device name {name:?} is not a valid interface name ({e}); use a VNI of at most 7 digits")
    })
}

/// Why an existing device cannot be adopted (`None`: it can).
pub fn incompatibility(existing: &VxlanLink, want: &VxlanSpec) -> Option<String> {
    if existing.vni != Some(want.vni) {
        return Some(format!("VNI {:?}, want {}", existing.vni, want.vni));
    }
    if existing.port.is_some_and(|p| p != want.port) {
        return Some(format!("dstport {:?}, want {}", existing.port, want.port));
    }
    if let (Some(have), Some(want_local)) = (existing.local, want.local) {
        if have != want_local {
            return Some(format!("local {have}, want {want_local}"));
        }
    }
    if existing
        .underlay_index
        .is_some_and(|i| i != 0 && i != want.underlay_index)
    {
        return Some(format!(
            "underlay device #{:?}, want #{}",
            existing.underlay_index, want.underlay_index
        ));
    }
    if existing.learning == Some(true) {
        return Some("learning on, want nolearning".into());
    }
    None
}

/// The running kernel dataplane.
#[derive(Debug)]
pub struct Kernel {
    name: IfName,
    index: u32,
    /// Dual stack: the IPv6 device.
    v6: Option<Device6>,
    /// Peers programmed on the device, to keep an fdb entry another peer still
    /// needs (two leases of one node share its VtepMAC).
    programmed: SharedProgrammed,
}

impl Kernel {
    pub async fn start(
        nl: &Netlink,
        s: &DataplaneSetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<Kernel> {
        let name = device_name(s.local.vni.get())?;
        remove_leftover_tap(nl, &s.device_name).await?;

        let underlay = nl
            .link_by_index(s.underlay_index)
            .await?
            .with_context(|| format!("underlay interface #{} vanished", s.underlay_index))?;
        let local = if underlay.ipv4.contains(&s.local_ip) {
            Some(s.local_ip)
        } else {
            let first = underlay.ipv4.first().copied();
            tracing::warn!(local_ip = %s.local_ip, iface = %underlay.name, local = ?first,
                "the underlay address went away: VXLAN is sent from the interface's first address");
            first
        };
        let spec = device_spec(
            Place::of(s),
            &name,
            local.map(Into::into),
            s.local.vtep_mac,
            s.mtu,
        );
        let index = ensure_device(nl, &name, &spec).await?;
        // flanneld sets accept_ra=0; this device carries IPv4 only (IPv6 has its own),
        // so vxmesh also turns IPv6 off on it: it never emits router or neighbour
        // solicitations.
        let _ = write_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
        let _ = write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
        write_sysctl("net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        state.update(|i| i.tap = Some(name.to_string()));
        tracing::info!(device = %name, index, vni = spec.vni, port = spec.port, local = ?spec.local,
            vtep_mac = %spec.mac, mtu = spec.mtu, "kernel dataplane running");
        let v6 = device6_for(nl, s).await?;
        Ok(Kernel {
            name,
            index,
            v6,
            programmed: SharedProgrammed::default(),
        })
    }

    /// The IPv6 device made again ([`super::NodeDataplane::restart6`]).
    pub(super) fn set_device6(&mut self, v6: Option<Device6>) {
        self.v6 = v6;
    }

    /// The IPv6 device (`flannel-v6.<VNI>`), when the node is dual stack.
    pub fn device6(&self) -> Option<&Device6> {
        self.v6.as_ref()
    }

    pub fn device_index(&self) -> u32 {
        self.index
    }

    pub fn device_name(&self) -> &IfName {
        &self.name
    }

    pub(super) fn programmed(&self) -> MutexGuard<'_, Programmed> {
        self.programmed.lock()
    }

    fn devices(&self) -> plan::Devices {
        plan::Devices {
            overlay: self.index,
            underlay: 0,
            fdb: true,
            overlay6: self.v6.as_ref().map(|d| d.index),
            fdb6: true,
        }
    }

    /// Carries out `changes` for peers routed through the device, in netlink
    /// batches (see [`plan::program_ops`]); the first failure, every request tried.
    fn program(&self, nl: &Netlink, changes: &[PeerChange]) -> Result<(), NetlinkError> {
        let ops = plan::program_ops(
            &self.devices(),
            changes,
            |_| PeerPath::Overlay,
            &mut self.programmed(),
        );
        let ops: Vec<_> = ops.into_iter().map(|(_, op)| op).collect();
        nl.apply(&ops).into_iter().collect()
    }

    /// Neighbour, fdb entry, route — in that order.
    pub async fn add_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        self.program(nl, &[PeerChange::Added(*p)])
    }

    /// Programs `new` completely, then removes what only `old` needed: the old
    /// VtepMAC's fdb entry (make before break). A changed PublicIP alone is done by
    /// the fdb replace.
    pub async fn update_peer(
        &self,
        nl: &Netlink,
        old: &Peer,
        new: &Peer,
    ) -> Result<(), NetlinkError> {
        self.program(
            nl,
            &[PeerChange::Updated {
                old: *old,
                new: *new,
            }],
        )
    }

    /// Route, fdb entry, neighbour — the reverse of adding. Every step is tried.
    pub async fn remove_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        self.program(nl, &[PeerChange::Removed(*p)])
    }

    /// Makes the device carry exactly `peers` (the peers routed through it): puts
    /// back what is missing and removes every route, permanent neighbour and fdb
    /// entry no peer accounts for; returns how many were removed. Three dumps and
    /// one batch, whatever the number of peers.
    pub async fn prune(&self, nl: &Netlink, peers: &[Peer]) -> Result<usize, NetlinkError> {
        let d = self.devices();
        let dumps = plan::Dumps {
            routes: nl.routes_via(self.index).await?,
            neighbours: nl.neighbours(self.index).await?,
            all_neighbours: true,
            fdb: nl.fdb_entries(self.index).await?,
            v6: dumps6(nl, d.overlay6, d.underlay).await?,
        };
        let with_paths: Vec<(Peer, PeerPath)> =
            peers.iter().map(|p| (*p, PeerPath::Overlay)).collect();
        let r = plan::reconcile_ops(&d, &with_paths, &dumps, None, None);
        self.programmed().reset(peers);
        self.programmed().reset6(peers);
        super::apply_reconcile(nl, r).map(|r| r.removed)
    }

    /// Leaves the device and its entries in place (see the module documentation).
    pub fn stop(self) {
        tracing::info!(device = %self.name,
            "kernel dataplane stopped; {} and its routes stay so pod traffic survives a restart (delete it with `ip link del {}`)",
            self.name, self.name);
    }
}

/// The IPv6 device of a dual-stack node: `flannel-v6.<VNI>`, as flanneld makes it.
#[derive(Debug)]
pub struct Device6 {
    pub name: IfName,
    pub index: u32,
}

/// `flannel-v6.<VNI>`; an error if the name would not fit in IFNAMSIZ (VNIs above
/// 9999), as with flanneld, whose device creation fails the same way.
pub fn device6_name(vni: u32) -> anyhow::Result<IfName> {
    let name = format!("{DEVICE6_PREFIX}.{vni}");
    IfName::new(&name).map_err(|e| {
        anyhow::anyhow!("kernel IPv6 vxlan device name {name:?} is not a valid interface name ({e}); a dual-stack cluster needs a VNI of at most 4 digits")
    })
}

/// Name prefix of the IPv6 device: flannel's.
pub const DEVICE6_PREFIX: &str = "flannel-v6";

/// The IPv6 device's MTU: the IPv4 one's less the 20 bytes by which an IPv6 outer
/// header is longer (the kernel's own default for a vxlan device over IPv6 is the
/// underlay's MTU less 70).
pub fn mtu6(mtu: u32) -> u32 {
    mtu.saturating_sub(20)
}

/// The IPv6 device either dataplane runs beside its IPv4 one: created or adopted when
/// the node is dual stack ([`start_v6`]), deleted when a left-over one would go stale.
pub(super) async fn device6_for(
    nl: &Netlink,
    s: &DataplaneSetup,
) -> anyhow::Result<Option<Device6>> {
    match &s.ipv6 {
        Some(v6) => Ok(Some(
            start_v6(nl, Place::of(s), s.mtu, v6, "dual stack").await?,
        )),
        None => {
            remove_device6(
                nl,
                s.local.vni.get(),
                "the network config is not dual stack",
            )
            .await?;
            Ok(None)
        }
    }
}

/// Creates or adopts `flannel-v6.<VNI>` (the same rules as the IPv4 device), VXLAN
/// over IPv6 from the node's PublicIPv6, with the IPv6 VtepMAC, at [`mtu6`] of the
/// overlay MTU `mtu`. Its address, the lease's first IPv6 address as /128, is set
/// with the lease ([`super::NodeDataplane::set_subnet6`]). `role` names the node's
/// kind in the log ("dual stack", "IPv6 only").
pub(super) async fn start_v6(
    nl: &Netlink,
    at: Place,
    mtu: u32,
    v6: &super::Setup6,
    role: &str,
) -> anyhow::Result<Device6> {
    let name = device6_name(at.vni)?;
    let local = source_ipv6(nl, at.underlay_index, v6.local_ip).await?;
    let spec = device_spec(at, &name, local.map(Into::into), v6.vtep_mac, mtu6(mtu));
    let index = ensure_device(nl, &name, &spec).await?;
    // IPv6 must be on for this device (a host may turn it off by default); it
    // takes no router advertisements, as flanneld's.
    let _ = write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0");
    let _ = write_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    enable_ipv6_forwarding(nl, at.underlay_index).await?;
    tracing::info!(device = %name, index, local = ?local, vtep_mac = %v6.vtep_mac,
        mtu = spec.mtu, "IPv6 device running ({role}: the kernel's vxlan driver carries pods' IPv6)");
    Ok(Device6 { name, index })
}

/// The address VXLAN over IPv6 is sent from: the PublicIPv6, or behind NAT, where the
/// PublicIPv6 is not local, the underlay's own global address (`None`: it has none).
pub(super) async fn source_ipv6(
    nl: &Netlink,
    underlay_index: u32,
    public_ipv6: std::net::Ipv6Addr,
) -> anyhow::Result<Option<std::net::Ipv6Addr>> {
    let here = nl.ipv6_addresses(underlay_index).await?;
    if here.iter().any(|a| a.ip == public_ipv6) {
        return Ok(Some(public_ipv6));
    }
    let own = crate::underlay::choose_public_ipv6(None, "the underlay", &here).ok();
    tracing::warn!(%public_ipv6, local = ?own,
        "the PublicIPv6 is not an address of the underlay interface: IPv6 VXLAN is sent from the interface's own global address");
    Ok(own)
}

/// Turns IPv6 forwarding on (pods' IPv6 traffic crosses between their bridge and the
/// IPv6 device), as the IPv4 device turns `ip_forward` on. With forwarding on, Linux
/// ignores router advertisements on an interface whose `accept_ra` is 1; an underlay
/// that took its IPv6 routes from them keeps doing so (`accept_ra` 2, as Kubernetes'
/// dual-stack setups ask for).
pub(super) async fn enable_ipv6_forwarding(
    nl: &Netlink,
    underlay_index: u32,
) -> anyhow::Result<()> {
    if let Some(u) = nl.link_by_index(underlay_index).await? {
        let key = format!("net/ipv6/conf/{}/accept_ra", u.name);
        let now = std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap_or_default();
        if now.trim() == "1" {
            tracing::info!(iface = %u.name,
                "IPv6 forwarding goes on: accept_ra 1 -> 2 on the underlay so that it keeps taking router advertisements");
            write_sysctl(&key, "2").with_context(|| format!("setting {key}"))?;
        }
    }
    write_sysctl("net/ipv6/conf/all/forwarding", "1").context("enabling IPv6 forwarding")
}

/// Deletes `flannel-v6.<VNI>` (left by the kernel dataplane of a dual-stack node, or
/// by flanneld) when nothing will program it any more, so that its routes and fdb
/// entries cannot go stale; `why` says why in the log.
pub(super) async fn remove_device6(nl: &Netlink, vni: u32, why: &str) -> anyhow::Result<()> {
    remove_vxlan(nl, device6_name(vni).ok(), why).await
}

/// Deletes `flannel.<VNI>` (left by the kernel dataplane or flanneld) on a node
/// that will not program it; `why` says why in the log.
pub(super) async fn remove_device4(nl: &Netlink, vni: u32, why: &str) -> anyhow::Result<()> {
    remove_vxlan(nl, device_name(vni).ok(), why).await
}

async fn remove_vxlan(nl: &Netlink, name: Option<IfName>, why: &str) -> anyhow::Result<()> {
    let Some(name) = name else {
        return Ok(());
    };
    if let Some(l) = nl.vxlan_by_name(name.as_str()).await? {
        tracing::warn!(device = %l.name, "removing the vxlan device: {why}, and its entries would go stale");
        nl.delete_link(l.index)
            .await
            .with_context(|| format!("deleting {}", l.name))?;
    }
    Ok(())
}

/// The IPv6 device's dumps, when there is one, with the IPv6 routes through the
/// underlay: DirectRouting's, or ones it left behind when it was turned off (see
/// [`plan::Dumps6::direct_routes`]).
pub(super) async fn dumps6(
    nl: &Netlink,
    index6: Option<u32>,
    underlay: u32,
) -> Result<Option<plan::Dumps6>, NetlinkError> {
    let Some(i) = index6 else { return Ok(None) };
    Ok(Some(plan::Dumps6 {
        routes: nl.routes6_via(i).await?,
        neighbours: nl.neighbours6(i).await?,
        fdb: nl.fdb_entries6(i).await?,
        direct_routes: nl.routes6_via(underlay).await?,
    }))
}

/// Where a node's vxlan devices sit: its VNI and UDP port, on its underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub vni: u32,
    pub port: u16,
    pub underlay_index: u32,
}

impl Place {
    fn of(s: &DataplaneSetup) -> Place {
        Place {
            vni: s.local.vni.get(),
            port: s.local.port,
            underlay_index: s.underlay_index,
        }
    }
}

/// A device of this node's VNI and port on the underlay, flannel's settings.
fn device_spec(
    at: Place,
    name: &IfName,
    local: Option<std::net::IpAddr>,
    mac: vxmesh_dataplane::wire::MacAddr,
    mtu: u32,
) -> VxlanSpec {
    VxlanSpec {
        name: name.to_string(),
        vni: at.vni,
        port: at.port,
        local,
        underlay_index: at.underlay_index,
        mac,
        mtu,
    }
}

/// Adopts the vxlan device `spec` names when its settings are compatible (setting
/// only the MAC and MTU that differ — setting even the same MAC flushes its
/// neighbour entries), recreates it otherwise, creates it when missing; brings it up.
async fn ensure_device(nl: &Netlink, name: &IfName, spec: &VxlanSpec) -> anyhow::Result<u32> {
    let (index, set_mac, set_mtu) = match nl.vxlan_by_name(&spec.name).await? {
        Some(existing) => match incompatibility(&existing, spec) {
            None => {
                tracing::info!(device = %name, mac = ?existing.mac.map(|m| m.to_string()),
                    "adopting the existing vxlan device (left by flanneld or a previous vxmeshd): traffic keeps flowing; stale entries are pruned once the peers are known");
                if existing.mac != Some(spec.mac) {
                    tracing::info!(device = %name, vtep_mac = %spec.mac,
                        "setting the stable VtepMAC (the kernel flushes the device's neighbours; they are re-added with the peers)");
                }
                (
                    existing.index,
                    (existing.mac != Some(spec.mac)).then_some(spec.mac),
                    (existing.mtu != spec.mtu).then_some(spec.mtu),
                )
            }
            Some(why) => {
                tracing::warn!(device = %name, %why, "existing vxlan device has incompatible settings; recreating it");
                nl.delete_link(existing.index).await?;
                (create(nl, spec).await?, None, None)
            }
        },
        None => {
            if let Some((idx, kind)) = nl.link_kind(&spec.name).await? {
                tracing::warn!(device = %name, %kind, "a non-vxlan link has the kernel dataplane's device name; deleting it");
                nl.delete_link(idx).await?;
            }
            (create(nl, spec).await?, None, None)
        }
    };
    // A vxlan device accepts a MAC change while up.
    nl.set_link_up(index, set_mac, set_mtu)
        .await
        .with_context(|| format!("configuring {name}"))?;
    Ok(index)
}

async fn create(nl: &Netlink, spec: &VxlanSpec) -> anyhow::Result<u32> {
    match nl.create_vxlan(spec).await {
        Ok(i) => Ok(i),
        Err(e) if is_exists(&e) => {
            // Another vxlan device already has this VNI on this port.
            let holders: Vec<String> = nl
                .vxlan_links()
                .await?
                .into_iter()
                .filter(|l| l.vni == Some(spec.vni) && l.port == Some(spec.port))
                .map(|l| l.name)
                .collect();
            Err(anyhow::Error::new(e).context(format!(
                "cannot create {}: vxlan device(s) {holders:?} already use VNI {} on UDP port {}; delete them (ip link del <name>) or stop what owns them",
                spec.name, spec.vni, spec.port
            )))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating {}", spec.name))),
    }
}

/// Deletes a TAP left by the userspace dataplane (a persistent one, or one whose
/// process is gone), known by its alias; any other link of that name (another
/// program's tun or tap, `--tap-name tun0` on a VPN host) is left alone.
pub(super) async fn remove_leftover_tap(nl: &Netlink, tap: &IfName) -> anyhow::Result<()> {
    if let Some(l) = nl.link_identity(tap.as_str()).await? {
        if l.kind == "tun" && l.alias.as_deref() == Some(super::userspace::TAP_ALIAS) {
            tracing::warn!(device = %tap, "removing the userspace dataplane's TAP left behind");
            nl.delete_link(l.index).await?;
        } else {
            tracing::info!(device = %tap, kind = %l.kind, "a link with the --tap-name exists that is not vxmesh's TAP: left alone");
        }
    }
    Ok(())
}

/// Deletes the kernel dataplane's IPv4 device (and with it its routes, neighbours and
/// fdb entries) — called by the userspace dataplane before it binds the VXLAN
/// port. `flannel.<VNI>` is deleted whatever left it (this dataplane or
/// flanneld); another IPv4 vxlan device holding the port is named in a warning, since
/// it will make the userspace dataplane's bind fail. `flannel-v6.<VNI>` is not
/// touched: its socket is IPv6-only, and the userspace dataplane runs it too
/// ([`device6_for`] keeps or deletes it).
pub async fn remove_leftover_device(nl: &Netlink, vni: u32, port: u16) -> anyhow::Result<()> {
    // A VNI too long for flannel's device names (8 digits) leaves no such device.
    let name = device_name(vni).ok();
    let name6 = device6_name(vni).ok();
    for l in nl.vxlan_links().await? {
        if name6.as_ref().is_some_and(|n| l.name == n.as_str()) {
            continue;
        }
        if name.as_ref().is_some_and(|n| l.name == n.as_str()) {
            tracing::warn!(device = %l.name, "removing the kernel vxlan device (left by the kernel dataplane or flanneld): the userspace dataplane needs its UDP port");
            nl.delete_link(l.index)
                .await
                .with_context(|| format!("deleting {}", l.name))?;
        } else if l.port == Some(port) && l.up && !matches!(l.local, Some(std::net::IpAddr::V6(_)))
        {
            tracing::warn!(device = %l.name, port,
                "another vxlan device listens on the VXLAN port; the userspace dataplane will not be able to bind it");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use vxmesh_dataplane::wire::MacAddr;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: Some(Ipv4Addr::new(192, 168, 100, 11).into()),
            underlay_index: 2,
            mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
            mtu: 1450,
        }
    }

    fn link() -> VxlanLink {
        VxlanLink {
            index: 7,
            name: "flannel.1".into(),
            mac: Some(MacAddr([0x0e, 1, 2, 3, 4, 5])),
            mtu: 1400,
            up: true,
            vni: Some(1),
            port: Some(8472),
            local: Some(Ipv4Addr::new(192, 168, 100, 11).into()),
            underlay_index: Some(2),
            learning: Some(false),
        }
    }

    #[test]
    fn names() {
        assert_eq!(device_name(1).unwrap().as_str(), "flannel.1");
        assert_eq!(device_name(9_999_999).unwrap().as_str(), "flannel.9999999");
        assert!(device_name(16_777_215).is_err());
    }

    #[test]
    fn adoption_rules() {
        // flanneld's device with another MAC and MTU: adopted (both are set in place).
        assert_eq!(incompatibility(&link(), &spec()), None);
        type Change = fn(&mut VxlanLink);
        let cases: [(Change, &str); 5] = [
            (|l| l.vni = Some(2), "VNI"),
            (|l| l.port = Some(4789), "dstport"),
            (
                |l| l.local = Some(Ipv4Addr::new(10, 0, 0, 1).into()),
                "local",
            ),
            (|l| l.underlay_index = Some(3), "underlay"),
            (|l| l.learning = Some(true), "learning"),
        ];
        for (change, word) in cases {
            let mut l = link();
            change(&mut l);
            let why = incompatibility(&l, &spec()).unwrap();
            assert!(why.contains(word), "{why}");
        }
        // unknown (unreported) settings do not force a recreate
        let mut l = link();
        l.local = None;
        l.underlay_index = None;
        l.learning = None;
        assert_eq!(incompatibility(&l, &spec()), None);
    }
}
