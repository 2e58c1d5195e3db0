//! The userspace dataplane: a TAP device and vxmesh's VXLAN threads.
//!
//! Per peer the kernel gets a permanent neighbour (`<peer subnet>.0` → peer VtepMAC)
//! and an onlink route (`<peer subnet> via <peer subnet>.0 dev vxmesh0`), so it never
//! ARPs (and if it does, the dataplane answers); the threads map the VtepMAC to the
//! peer's PublicIP through the forwarding table published here.
//!
//! The TAP is persistent and carries the alias [`TAP_ALIAS`]: it outlives the
//! process — a stop, a crash, a restart — with its address, routes and neighbours,
//! so pods keep their path and a new vxmeshd finds it again. A new vxmeshd either
//! takes the running one's descriptors ([`Userspace::adopt`], the handover: the
//! same TAP queues and UDP sockets, nothing re-created) or opens the TAP by name
//! ([`Userspace::start`]), attaching to the one an earlier run left: one device,
//! never a second. `vxmeshctl cleanup-tap` (and uninstall) delete it.
//!
//! Dual stack, by default: the threads carry IPv4. Pods' IPv6 goes through flanneld's
//! IPv6 device, `flannel-v6.<VNI>`, which this dataplane creates or adopts and programs
//! exactly as the kernel dataplane does (the kernel's vxlan driver; its socket is
//! IPv6-only, so it shares the VXLAN port with the threads' IPv4 socket; see
//! docs/decisions/0018-userspace-dual-stack-via-flannel-v6.md).
//!
//! With `--ipv6-dataplane userspace` the threads carry IPv6 too (decision 0034), in
//! flannel's IPv6 layout: the TAP takes IPv6 (the lease's first IPv6 address as /128,
//! per peer a permanent neighbour `<peer IPv6 subnet's first address>` → the peer's
//! IPv6 VtepMAC and an onlink route, as on `flannel-v6.<VNI>`), and VXLAN over UDP/IPv6
//! leaves from the PublicIPv6 (second send sockets) and arrives on an IPv6-only socket
//! on the VXLAN port (which `flannel-v6.<VNI>` would hold: the device is deleted).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::kernel::{self, device6_for, mtu6, Device6};
use super::plan::{Programmed, SharedProgrammed};
use super::DataplaneSetup;
use crate::handover::DataplaneFds;
use crate::netlink::{write_sysctl, Netlink};
use crate::peers::{Peer, PeerChange, PeerTable};
use crate::state::AgentState;
use vxmesh_dataplane::engine::{Engine, EngineConfig, UnderlayTx};
use vxmesh_dataplane::fib::{ForwardingTable, SharedTable};
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::sys::{Tap, TapError, TapOptions, UdpError, UdpRx, UdpTx, UnderlayTap};

/// How long a successor that must open the IPv6 receive socket (its predecessor
/// handed none over) waits for the port: until the device that held it is deleted.
const RX6_WAIT: Duration = Duration::from_secs(2);
/// Socket buffer sizes: room for several 64 KiB GSO bursts in flight.
const SNDBUF: usize = 4 << 20;
/// The alias that marks a TAP as this dataplane's (`ip -d link show vxmesh0`).
pub const TAP_ALIAS: &str = "vxmesh userspace dataplane";
/// The alias of the underlay TAP (`--egress-tunnel-gso`).
pub const UNDERLAY_TAP_ALIAS: &str = "vxmesh underlay tap";
/// The underlay TAP's one address. Packets written to the device carry the node's
/// own address as their source; the kernel forwards them only with `accept_local`
/// and, under reverse-path filtering, only from a device that has an address of
/// its own (any: none is used for anything). A link-local /32.
const UNDERLAY_TAP_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 253, 253);

/// The underlay TAP's name: the TAP's with a `u` (the TAP's cut to 14 bytes first).
pub fn underlay_tap_name(tap: &IfName) -> Option<IfName> {
    let base: String = tap.as_str().chars().take(14).collect();
    IfName::new(&format!("{base}u")).ok()
}

/// Opens and configures the underlay TAP for `--egress-tunnel-gso` (the default),
/// or says why not and returns `None`: the engine then segments as usual. Not an
/// error: a kernel before 6.17 has no UDP-tunnel GSO for TAPs.
async fn underlay_tx(nl: &Netlink, s: &DataplaneSetup) -> Option<UnderlayTx> {
    if !s.egress_tunnel_gso {
        return None;
    }
    if !s.offloads {
        tracing::info!("egress frames are cut into datagrams here: the underlay TAP path (--egress-tunnel-gso) needs the TAP offloads, and --no-offloads is set");
        return None;
    }
    match open_underlay(nl, s).await {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::info!(error = format!("{e:#}"), "egress frames are cut into datagrams here: the underlay TAP path (--egress-tunnel-gso) is unavailable (it needs Linux 6.17 or later)");
            None
        }
    }
}

/// Gives a TAP of ours the `noqueue` root qdisc in place of the kernel's default (a
/// qdisc someone attached, `tc qdisc replace … root <kind>`, stays).
///
/// The default is a `pfifo_fast` with three rings of txqueuelen entries for each
/// transmit queue, and a multi-queue TAP has 256 (`mq` over them): measured, 4.2 MiB
/// of kernel memory for the underlay TAP (multi-queue, txqueuelen 1000), 17 MiB for a
/// TAP of `--tap-queues` 2 or more at our txqueuelen, 80 KiB for the default
/// single-queue TAP; allocated and zeroed as the TAP comes up. tun never stops its
/// queue (it drops when the reader's ring is full), so those qdiscs never hold a frame;
/// `noqueue` sends frames straight to the driver, as on the kernel's vxlan device and
/// on veth. Set before the TAP first comes up, so the default is never built; on a TAP
/// left by an earlier run, the default is replaced. Not fatal: the TAP works either way.
async fn skip_default_qdisc(nl: &Netlink, index: u32, name: &IfName) {
    match nl.root_qdisc(index).await {
        Ok(root)
            if root
                .as_ref()
                .is_none_or(|(kind, major)| *major == 0 && kind != "noqueue") =>
        {
            if let Err(e) = nl.set_root_noqueue(index).await {
                tracing::warn!(tap = %name, error = %e, "cannot give the TAP the noqueue qdisc; the kernel's default costs kernel memory (up to 17 MiB per TAP) and nothing else");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(tap = %name, error = %e, "cannot read the TAP's qdisc"),
    }
}

async fn open_underlay(nl: &Netlink, s: &DataplaneSetup) -> anyhow::Result<UnderlayTx> {
    let name = underlay_tap_name(&s.device_name)
        .with_context(|| format!("no underlay TAP name derives from {}", s.device_name))?;
    if let Some(l) = nl.link_identity(name.as_str()).await? {
        if l.kind != "tun" || l.alias.as_deref().is_some_and(|a| a != UNDERLAY_TAP_ALIAS) {
            anyhow::bail!(
                "a link named {name} exists that vxmesh did not make (kind {:?}, alias {:?}); delete it or choose another --tap-name",
                l.kind,
                l.alias.unwrap_or_default()
            );
        }
    }
    let tap = UnderlayTap::open(&name).with_context(|| format!("opening {name}"))?;
    let link = nl
        .link_identity(name.as_str())
        .await?
        .with_context(|| format!("{name} vanished right after creation"))?;
    let tap_mac = link
        .mac
        .with_context(|| format!("{name} has no MAC address"))?;
    if link.alias.as_deref() != Some(UNDERLAY_TAP_ALIAS) {
        nl.set_alias(link.index, UNDERLAY_TAP_ALIAS).await?;
    }
    for (key, value) in [
        ("net/ipv6/conf/{}/disable_ipv6", "1"),
        ("net/ipv4/conf/{}/accept_local", "1"),
        ("net/ipv4/conf/{}/rp_filter", "2"),
    ] {
        let key = key.replace("{}", name.as_str());
        write_sysctl(&key, value).with_context(|| format!("setting {key} to {value}"))?;
    }
    nl.set_only_address(link.index, UNDERLAY_TAP_ADDR, 32)
        .await?;
    skip_default_qdisc(nl, link.index, &name).await;
    if !link.up {
        nl.set_link_up(link.index, None, None).await?;
    }
    tracing::info!(device = %name, "GSO frames leave whole as UDP-tunnel GSO packets through the underlay TAP, to each peer once a probe sent that way is answered");
    Ok(UnderlayTx {
        tap,
        tap_mac,
        local_ip: s.local_ip,
    })
}

#[derive(Debug)]
pub struct Userspace {
    engine: Engine,
    tap_index: u32,
    table: SharedTable,
    /// Second descriptors of the TAP queues and sockets, for a successor and for
    /// systemd's descriptor store.
    fds: DataplaneFds,
    tap_offloads: u32,
    /// The underlay TAP the engine writes to (`--egress-tunnel-gso`), if it has one.
    underlay_name: Option<IfName>,
    /// Dual stack: the IPv6 device (the kernel's vxlan driver).
    v6: Option<Device6>,
    /// The IPv6 halves programmed on it, to keep an fdb entry another peer still
    /// needs (two leases of one node share its IPv6 VtepMAC).
    programmed: SharedProgrammed,
    /// The threads carry IPv6 (`--ipv6-dataplane userspace`): through the TAP, from
    /// this address.
    threads6: Option<Ipv6Addr>,
}

/// IPv6 on the TAP, for the threads to carry (`--ipv6-dataplane userspace`): no
/// address of the kernel's making (no link-local, so no duplicate address detection,
/// router solicitation or MLD for it — the overlay carries none of them), no router
/// advertisements taken, and an IPv6 MTU 20 bytes below the TAP's, as
/// `flannel-v6.<VNI>`'s is below `flannel.<VNI>`'s: the IPv6 outer header is 20 bytes
/// longer, so a full-size packet would not fit the underlay (the kernel answers
/// "packet too big" instead). The IPv6 MTU (`mtu`: the TAP's) is set only once the TAP
/// has that MTU — the kernel takes no IPv6 MTU above the device's — and again after
/// every change of the TAP's MTU (the kernel then resets the IPv6 MTU to it). Without
/// IPv6 in the threads, IPv6 is off on the TAP: it would only emit router
/// solicitations the overlay drops.
fn tap_ipv6(name: &str, on: bool, mtu: Option<u32>) -> anyhow::Result<()> {
    if !on {
        // A kernel without IPv6 has no such setting, and needs none.
        let _ = write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
        return Ok(());
    }
    let mut settings = vec![
        ("addr_gen_mode", "1".to_string()),
        ("accept_ra", "0".into()),
        ("accept_dad", "0".into()),
        ("router_solicitations", "0".into()),
        ("disable_ipv6", "0".into()),
    ];
    if let Some(mtu) = mtu {
        settings.push(("mtu", mtu6(mtu).to_string()));
    }
    for (key, value) in settings {
        let key = format!("net/ipv6/conf/{name}/{key}");
        write_sysctl(&key, &value).with_context(|| format!("setting {key} to {value}"))?;
    }
    Ok(())
}

/// [`device6_for`], retried for up to `wait` while the IPv6 VXLAN port is in use: a
/// run whose threads carried IPv6 left its receive socket in systemd's descriptor
/// store, which this start dropped (the fingerprints differ) and systemd closes on its
/// own time.
async fn device6_when_free(
    nl: &Netlink,
    s: &DataplaneSetup,
    wait: Duration,
) -> anyhow::Result<Option<Device6>> {
    let t = Instant::now();
    loop {
        match device6_for(nl, s).await {
            Err(e)
                if t.elapsed() < wait
                    && e.chain().any(|c| {
                        c.downcast_ref::<crate::netlink::NetlinkError>()
                            .is_some_and(crate::netlink::is_addr_in_use)
                    }) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// The threads' IPv6 sockets (`--ipv6-dataplane userspace`): send sockets from the
/// PublicIPv6 (or, behind NAT, the underlay's own address) in `udp_tx` — kept if it
/// has them from that address, else made — and the receive socket on the VXLAN port:
/// `rx6` if one was handed over, else a new one. `flannel-v6.<VNI>` holds that port,
/// so a device left by flanneld, the kernel dataplane or an earlier run of ours is
/// deleted first. Returns the receive socket and the address sent from.
async fn open_ipv6(
    nl: &Netlink,
    s: &DataplaneSetup,
    v6: &super::Setup6,
    udp_tx: &mut UdpTx,
    rx6: Option<std::os::fd::OwnedFd>,
    busy_wait: Duration,
) -> anyhow::Result<(UdpRx, Ipv6Addr)> {
    let local = kernel::source_ipv6(nl, s.underlay_index, v6.local_ip)
        .await?
        .with_context(|| format!("the underlay has no global IPv6 address to send VXLAN from (the PublicIPv6 {} is not one of its addresses)", v6.local_ip))?;
    if udp_tx.has_ipv6() && udp_tx.local_ip6() != Some(local) {
        // Handed over from another address: new sockets (new source ports).
        *udp_tx = UdpTx::open(s.local_ip, s.tx_sockets.max(1), SNDBUF)
            .context("opening the VXLAN send sockets")?;
    }
    if !udp_tx.has_ipv6() {
        udp_tx
            .add_ipv6(local, SNDBUF)
            .context("opening the VXLAN-over-IPv6 send sockets")?;
    }
    let rx = match rx6 {
        Some(fd) => {
            let rx =
                UdpRx::from_fd(fd).context("taking over the VXLAN-over-IPv6 receive socket")?;
            rx.set_rcvbuf(s.vxlan_rcvbuf);
            rx
        }
        None => {
            kernel::remove_device6(
                nl,
                s.local.vni.get(),
                "the userspace threads carry IPv6 here (--ipv6-dataplane userspace) and need the device's VXLAN port",
            )
            .await?;
            let in_use = |e: &UdpError| matches!(e, UdpError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse);
            retry_busy(busy_wait, in_use, || {
                UdpRx::open(
                    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), s.local.port),
                    s.vxlan_rcvbuf,
                    s.offloads,
                )
            })
            .context("opening the VXLAN-over-IPv6 receive socket")?
        }
    };
    kernel::enable_ipv6_forwarding(nl, s.underlay_index).await?;
    Ok((rx, local))
}

/// Retries `f` while it fails with "busy"/"in use" for up to `wait` (systemd may
/// still be closing the descriptors we asked it to drop from its store).
fn retry_busy<T, E>(
    wait: Duration,
    busy: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let t = Instant::now();
    loop {
        match f() {
            Err(e) if busy(&e) && t.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

fn tap_os_error(e: &TapError) -> Option<i32> {
    match e {
        TapError::Create { source, .. } | TapError::Configure { source, .. } => {
            source.raw_os_error()
        }
        TapError::Open(_) => None,
    }
}

impl Userspace {
    /// Opens (or attaches to a leftover of) the TAP and new sockets. Returns whether
    /// a TAP left by an earlier run was adopted. `busy_wait`: how long to retry a TAP
    /// or port still held by descriptors systemd is dropping.
    pub async fn start(
        nl: &Netlink,
        s: &DataplaneSetup,
        state: &Arc<AgentState>,
        busy_wait: Duration,
    ) -> anyhow::Result<(Userspace, bool)> {
        let name = &s.device_name;
        let adopted = match nl.link_identity(name.as_str()).await? {
            None => false,
            Some(l) if l.kind == "tun" && l.alias.as_deref() == Some(TAP_ALIAS) => true,
            Some(l) => anyhow::bail!(
                "a link named {name} exists that vxmesh did not leave behind (kind {:?}, alias {:?}): another program — or a still running vxmeshd older than this one — holds it; stop that, delete the link (ip link del {name}) or choose another --tap-name",
                l.kind,
                l.alias.unwrap_or_default()
            ),
        };
        let opts = TapOptions {
            vnet_hdr: s.offloads,
            uso: s.offloads,
            queues: s.tap_queues.max(1),
        };
        let busy = |e: &TapError| tap_os_error(e) == Some(libc::EBUSY);
        let taps = match retry_busy(busy_wait, busy, || Tap::open(name, opts)) {
            Ok(t) => t,
            Err(e) if adopted && tap_os_error(&e) == Some(libc::EINVAL) => {
                // The leftover was made with other flags (--tap-queues changed): the
                // kernel will not attach to it. Nothing runs on it; start over.
                tracing::warn!(tap = %name, "the TAP left by an earlier run has other flags (was --tap-queues changed?); re-creating it");
                if let Some(l) = nl.link_identity(name.as_str()).await? {
                    nl.delete_link(l.index).await?;
                }
                Tap::open(name, opts).with_context(|| format!("creating TAP device {name}"))?
            }
            Err(e) if tap_os_error(&e) == Some(libc::EBUSY) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "TAP {name} is attached by another process (a vxmeshd that is not a valid successor, or systemd still holding it)"
                )))
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("creating TAP device {name}"))),
        };
        let link = nl
            .link_identity(name.as_str())
            .await?
            .with_context(|| format!("TAP {name} vanished right after creation"))?;
        // The alias first: a TAP made persistent without it would be refused by the
        // next start and by `cleanup-tap` as not vxmesh's. Until it is persistent, a
        // failure here closes the queues and the kernel deletes the new device.
        if link.alias.as_deref() != Some(TAP_ALIAS) {
            nl.set_alias(link.index, TAP_ALIAS).await?;
        }
        taps[0]
            .set_persist(true)
            .with_context(|| format!("making TAP {name} persistent"))?;
        let threads6 = s.ipv6.filter(|v| v.in_threads);
        // Before the TAP has its MTU (set below): no IPv6 MTU yet.
        tap_ipv6(name.as_str(), threads6.is_some(), None)?;
        // The kernel queues frames for the TAP's reader up to txqueuelen and drops
        // beyond (`--tap-txqueuelen`, docs/decisions/0026): room for bursts while the
        // egress thread is busy sending, and the queue a loss-based TCP sender fills.
        // Set before the TAP comes up, when no qdisc has rings yet to resize.
        nl.set_txqueuelen(link.index, s.tap_txqueuelen).await?;
        skip_default_qdisc(nl, link.index, name).await;
        if adopted {
            // Only what differs: setting a MAC, even the same one, flushes the
            // device's permanent neighbours (the routes' next hops).
            let mac = (link.mac != Some(s.local.vtep_mac)).then_some(s.local.vtep_mac);
            let mtu = (link.mtu != s.mtu).then_some(s.mtu);
            if mac.is_some() || mtu.is_some() || !link.up {
                nl.set_link_up(link.index, mac, mtu).await?;
            }
            tracing::info!(tap = %name, "attached to the TAP an earlier run left (its address, routes and neighbours stayed)");
        } else {
            nl.configure_link(link.index, s.local.vtep_mac, s.mtu)
                .await?;
        }
        if threads6.is_some() {
            // The MTU set above reset the IPv6 one.
            tap_ipv6(name.as_str(), true, Some(s.mtu))?;
        }
        write_sysctl("net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        let mut udp_tx = UdpTx::open(s.local_ip, s.tx_sockets.max(1), SNDBUF)
            .context("opening the VXLAN send sockets")?;
        let in_use = |e: &UdpError| matches!(e, UdpError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse);
        let udp_rx = retry_busy(busy_wait, in_use, || {
            UdpRx::open(
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, s.local.port)),
                s.vxlan_rcvbuf,
                s.offloads,
            )
        })
        .context("opening the VXLAN receive socket")?;
        let ipv6 = match &threads6 {
            Some(v6) => Some(open_ipv6(nl, s, v6, &mut udp_tx, None, busy_wait).await?),
            None => None,
        };
        let tap_offloads = taps[0].offloads().flags;
        let underlay = underlay_tx(nl, s).await;
        let mut u = Self::run(
            s,
            state,
            taps,
            (udp_tx, udp_rx, ipv6),
            ForwardingTable::new(s.local, []),
            link.index,
            tap_offloads,
            underlay,
        )?;
        if threads6.is_none() {
            u.v6 = device6_when_free(nl, s, busy_wait).await?;
        }
        Ok((u, adopted))
    }

    /// Takes over a running dataplane: its TAP queues and sockets (`fds`) and its
    /// forwarding table (`peers`), starting our threads on them at once. Nothing on
    /// the device is touched unless it differs from `s`.
    pub async fn adopt(
        nl: &Netlink,
        s: &DataplaneSetup,
        state: &Arc<AgentState>,
        fds: DataplaneFds,
        peers: &[Peer],
        tap_offloads: u32,
    ) -> anyhow::Result<Userspace> {
        let name = &s.device_name;
        let taps = fds
            .taps
            .into_iter()
            .map(|fd| Tap::from_fd(fd, name, tap_offloads))
            .collect::<Result<Vec<_>, _>>()
            .context("taking over the TAP queues")?;
        let udp_rx = UdpRx::from_fd(fds.udp_rx).context("taking over the VXLAN receive socket")?;
        // The predecessor's buffer stays with the socket: this run's setting applies.
        udp_rx.set_rcvbuf(s.vxlan_rcvbuf);
        let port = udp_rx.local_addr().map(|a| a.port());
        if port != Some(s.local.port) {
            anyhow::bail!(
                "the handed-over receive socket is bound to port {port:?}, the network config says {}",
                s.local.port
            );
        }
        let threads6 = s.ipv6.filter(|v| v.in_threads);
        // Not usable: bound to another address (the underlay's address changed), of
        // another count (--tx-sockets), or with IPv6 sockets this run does not want.
        // Whether IPv6 ones are from the right address, `open_ipv6` checks.
        let taken = UdpTx::from_fds(fds.udp_tx).ok().filter(|tx| {
            tx.socket_count() == s.tx_sockets.max(1)
                && tx.local_ip() == Some(s.local_ip)
                && (threads6.is_some() || !tx.has_ipv6())
        });
        let mut udp_tx = match taken {
            Some(tx) => tx,
            // New source ports, nothing else is affected.
            None => UdpTx::open(s.local_ip, s.tx_sockets.max(1), SNDBUF)
                .context("opening the VXLAN send sockets")?,
        };
        let ipv6 = match &threads6 {
            // The predecessor's IPv6 sockets if it had them (a predecessor that left
            // IPv6 to flannel-v6.<VNI> had none: the device is deleted for the port).
            Some(v6) => Some(open_ipv6(nl, s, v6, &mut udp_tx, fds.udp_rx6, RX6_WAIT).await?),
            None => None,
        };
        let table = ForwardingTable::new(s.local, peers.iter().map(Peer::to_vtep));
        let link = nl.link_identity(name.as_str()).await?.with_context(|| {
            format!("the handed-over TAP {name} is not in this network namespace")
        })?;
        let underlay = underlay_tx(nl, s).await;
        let mut u = Self::run(
            s,
            state,
            taps,
            (udp_tx, udp_rx, ipv6),
            table,
            link.index,
            tap_offloads,
            underlay,
        )?;
        // The IPv6 device kept running through the handover (the kernel carries it);
        // adopted as it is, or removed if the config is no longer dual stack.
        if threads6.is_none() {
            u.v6 = device6_for(nl, s).await?;
        }
        // Only now (our threads read the queues) anything that might differ.
        let mac = (link.mac != Some(s.local.vtep_mac)).then_some(s.local.vtep_mac);
        let mtu = (link.mtu != s.mtu).then_some(s.mtu);
        if mac.is_some() || mtu.is_some() || !link.up {
            nl.set_link_up(link.index, mac, mtu).await?;
        }
        // IPv6 on the TAP as this run has it (the predecessor may have had the other
        // setting; a new MTU reset the IPv6 one).
        tap_ipv6(name.as_str(), threads6.is_some(), Some(s.mtu))?;
        if link.alias.as_deref() != Some(TAP_ALIAS) {
            nl.set_alias(link.index, TAP_ALIAS).await?;
        }
        // The ring stays with the device: a predecessor with another --tap-txqueuelen
        // (or of a version before 256 frames were the default) left its own. tun
        // resizes a running ring.
        if link.txqueuelen != s.tap_txqueuelen {
            nl.set_txqueuelen(link.index, s.tap_txqueuelen).await?;
            tracing::info!(
                tap = %name,
                from = link.txqueuelen,
                to = s.tap_txqueuelen,
                "the TAP's transmit queue resized (--tap-txqueuelen)"
            );
        }
        // A predecessor of an earlier version left the kernel's default qdisc.
        skip_default_qdisc(nl, link.index, name).await;
        Ok(u)
    }

    /// Starts the threads; keeps second descriptors for a successor.
    #[allow(clippy::too_many_arguments)]
    fn run(
        s: &DataplaneSetup,
        state: &Arc<AgentState>,
        taps: Vec<Tap>,
        (udp_tx, udp_rx, ipv6): (UdpTx, UdpRx, Option<(UdpRx, Ipv6Addr)>),
        table: ForwardingTable,
        tap_index: u32,
        tap_offloads: u32,
        underlay: Option<UnderlayTx>,
    ) -> anyhow::Result<Userspace> {
        let underlay_name = underlay
            .as_ref()
            .and_then(|_| underlay_tap_name(&s.device_name));
        let fds = DataplaneFds {
            taps: taps
                .iter()
                .map(Tap::try_clone_fd)
                .collect::<std::io::Result<_>>()?,
            udp_rx: udp_rx.try_clone_fd()?,
            udp_tx: udp_tx.try_clone_fds()?,
            udp_rx6: ipv6.as_ref().map(|(rx, _)| rx.try_clone_fd()).transpose()?,
        };
        let threads6 = ipv6.as_ref().map(|(_, local)| *local);
        let table = SharedTable::new(table);
        // Active queue management needs to know when each datagram arrived. The option
        // belongs to the socket (a successor sets it again as its own flags say).
        let stamps = udp_rx
            .set_timestamps(s.aqm.is_some())
            .and_then(|()| match &ipv6 {
                Some((rx6, _)) => rx6.set_timestamps(s.aqm.is_some()),
                None => Ok(()),
            });
        let aqm = match stamps {
            Ok(()) => s.aqm,
            Err(e) if s.aqm.is_some() => {
                tracing::warn!(error = %e, "the kernel refused receive time stamps (SO_TIMESTAMPNS): active queue management is off");
                None
            }
            Err(_) => None,
        };
        let aqm_desc = aqm.map_or_else(
            || "off".to_string(),
            |c| {
                format!(
                    "codel target {} us interval {} us",
                    c.target_ns / 1_000,
                    c.interval_ns / 1_000
                )
            },
        );
        let engine = Engine::start(EngineConfig {
            tap: taps,
            udp_tx,
            udp_rx,
            udp_rx6: ipv6.map(|(rx, _)| rx),
            table: table.clone(),
            counters: Arc::clone(&state.counters),
            flows: Arc::clone(&state.flows),
            aqm,
            priority: s.engine_priority,
            busy_poll: s.busy_poll,
            underlay,
        })
        .context("starting dataplane threads")?;
        let st = engine.status();
        // Twice --vxlan-rcvbuf (the kernel's bookkeeping), or less where only
        // SO_RCVBUF (capped by rmem_max) was allowed.
        let rcvbuf_applied = st.udp_rcvbuf.unwrap_or(0);
        tracing::info!(
            tap = %s.device_name,
            tap_offloads = %st.tap.describe(),
            udp_gso = st.udp_gso.load(Ordering::Relaxed),
            udp_gro = st.udp_gro,
            tx_source_ports = ?st.tx_source_ports,
            aqm = %aqm_desc,
            priority = %st.priority,
            busy_poll = %st.busy_poll,
            tap_txqueuelen = s.tap_txqueuelen,
            vxlan_rcvbuf = s.vxlan_rcvbuf,
            vxlan_rcvbuf_applied = rcvbuf_applied,
            egress_tunnel_gso = st.underlay_tap,
            ipv6_from = ?threads6,
            "userspace dataplane running"
        );
        if let Some(local) = threads6 {
            tracing::info!(tap = %s.device_name, from = %local, mtu6 = mtu6(s.mtu),
                "the userspace threads carry pods' IPv6 (--ipv6-dataplane userspace): VXLAN over UDP/IPv6 from {local}");
        }
        state.event(
            "offload",
            format!(
                "TAP {}; UDP GSO {}; UDP GRO {}; egress tunnel GSO {}",
                st.tap.describe(),
                st.udp_gso.load(Ordering::Relaxed),
                st.udp_gro,
                st.underlay_tap
            ),
        );
        if rcvbuf_applied != 0 && rcvbuf_applied < s.vxlan_rcvbuf.saturating_mul(2) {
            tracing::warn!(
                asked = s.vxlan_rcvbuf,
                kernel_counts = rcvbuf_applied,
                "the VXLAN receive socket's buffer is smaller than --vxlan-rcvbuf asks: \
                 SO_RCVBUFFORCE needs CAP_NET_ADMIN, and without it the kernel caps the \
                 buffer at net.core.rmem_max; give vxmeshd CAP_NET_ADMIN or raise \
                 net.core.rmem_max to at least the asked size"
            );
        }
        if !st.tap.tso() {
            tracing::warn!("TAP segmentation offload unavailable: throughput will be far lower (one frame per system call)");
        }
        if let Ok(mut g) = state.engine.lock() {
            *g = Some(Arc::clone(st));
        }
        if let Ok(mut g) = state.fib.lock() {
            *g = Some(table.clone());
        }
        Ok(Userspace {
            engine,
            tap_index,
            table,
            fds,
            tap_offloads,
            underlay_name,
            v6: None,
            programmed: SharedProgrammed::default(),
            threads6,
        })
    }

    /// Whether the threads carry IPv6 (`--ipv6-dataplane userspace`).
    pub fn ipv6_in_threads(&self) -> bool {
        self.threads6.is_some()
    }

    /// This node's IPv6 VTEP address (the lease's first IPv6 address), when the threads
    /// carry IPv6: inner IPv6 destinations from peers must lie in its subnet.
    pub fn set_vtep_ip6(&self, ip: Ipv6Addr) {
        self.engine.set_vtep_ip6(ip);
    }

    /// Sets IPv6 on the TAP again as this dataplane has it, after the TAP's MTU was
    /// set (which resets the IPv6 MTU).
    pub fn tap_ipv6_again(&self, name: &str, mtu: u32) -> anyhow::Result<()> {
        tap_ipv6(name, self.threads6.is_some(), Some(mtu))
    }

    /// This node's VTEP address, the source of the engine's path probes.
    pub fn set_vtep_ip(&self, ip: Ipv4Addr) {
        self.engine.set_vtep_ip(ip);
    }

    pub fn tap_index(&self) -> u32 {
        self.tap_index
    }

    /// The IPv6 device made again ([`super::NodeDataplane::restart6`]).
    pub(super) fn set_device6(&mut self, v6: Option<Device6>) {
        self.v6 = v6;
    }

    /// The IPv6 device (`flannel-v6.<VNI>`), when the node is dual stack.
    pub fn device6(&self) -> Option<&Device6> {
        self.v6.as_ref()
    }

    pub(super) fn programmed(&self) -> MutexGuard<'_, Programmed> {
        self.programmed.lock()
    }

    /// The descriptors a successor (or systemd's store) gets.
    pub fn handover_fds(&self) -> &DataplaneFds {
        &self.fds
    }

    /// The underlay TAP the engine writes to, if it has one.
    pub fn underlay_name(&self) -> Option<&IfName> {
        self.underlay_name.as_ref()
    }

    /// The `TUN_F_*` offload flags the TAP has.
    pub fn tap_offloads(&self) -> u32 {
        self.tap_offloads
    }

    /// Rebuilds the forwarding table from the peer set (after a full listing). The
    /// peers that stay keep their counters.
    pub fn publish(&self, peers: &PeerTable) {
        self.table.update(peers.peers().map(|p| p.to_vtep()));
    }

    /// Applies a batch of peer changes to the forwarding table as a delta (see
    /// [`vxmesh_dataplane::fib::ForwardingTable::with_delta`]): one copy of the
    /// table per batch, not a rebuild from every peer per event.
    pub fn publish_changes(&self, changes: &[PeerChange]) {
        let (removed, added) = PeerChange::vtep_delta(changes);
        self.table.apply_delta(&removed, &added);
    }

    /// Stops our threads (each flushes what it batched) and returns how long that
    /// took. Closes only our own descriptors: the TAP (persistent, and still open
    /// in a successor or systemd's store) and its routes stay.
    pub fn quiesce(self) -> Duration {
        let t = Instant::now();
        self.engine.stop();
        t.elapsed()
    }
}
