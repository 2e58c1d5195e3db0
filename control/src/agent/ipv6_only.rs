//! A node on an IPv6-only network (`EnableIPv4: false`; docs/decisions/0029 and 0030).
//!
//! The same steps as a node of an IPv4 or dual-stack network, each in its IPv6 form:
//! - underlay: `--iface`/`--iface-regex`, else the IPv6 default route's interface,
//!   else the IPv4 one's ([`crate::underlay::choose_ipv6_only`]); the PublicIPv6 is
//!   `--public-ipv6` or that interface's global address;
//! - lease: flannel's IPv6-only key `0.0.0.0-0&<ipv6>-<len>`, the node known by its
//!   PublicIPv6 (not by flannel's `0.0.0.0`), the subnet file's `FLANNEL_IPV6_SUBNET`
//!   as the hint;
//! - dataplane: `flannel-v6.<VNI>` alone
//!   ([`crate::node_dataplane::ipv6_only::Ipv6OnlyDataplane`]), whatever `--dataplane`
//!   says (the userspace threads carry IPv4 only, decision 0018);
//! - peers: [`PeerTable::ipv6_only`], judged by the IPv6 halves of leases;
//! - subnet file with the IPv6 lines alone, `FLANNEL_MTU` the IPv6 device's MTU;
//!   ip6tables (or `table ip6 vxmesh`) masquerade/FORWARD rules and the blackhole route
//!   kept as on other nodes; readiness, status, events and metrics as on other nodes.
//!
//! A PublicIPv6 taken from the interface (no `--public-ipv6`) is followed when it
//! leaves it (decision 0024): the lease is put again naming the new one, with the
//! VtepMAC derived from it, and `flannel-v6.<VNI>` is made again sending from it.
//!
//! No handover: the device, its entries and routes are the kernel's and outlive the
//! process, so a restart is cold and pod traffic keeps flowing through it. The node
//! still holds the handover socket's name, so a second vxmeshd started beside it is
//! refused ([`hold_ipv6_only`]). Under
//! systemd the node says READY=1, WATCHDOG=1 and STOPPING=1 as other nodes do, and
//! drops what the descriptor store kept from an earlier IPv4 run
//! ([`Notifications`]).

use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::ingress6::{Ingress6, Ingress6Setup};
use super::{
    device_check_due, keep_file, keep_iptables, next_batch, random_seed, record_skips, reported,
    show_pool, AgentOptions, Background, CheckDue, Held, HeldBack, LeaseLink,
    LOG_EACH_CHANGE_UP_TO, UNDERLAY_RECHECK_TICKS,
};
use crate::allocator::Hints;
use crate::config::{Ipv6Pool, NetworkConfig};
use crate::handover::node::{
    hold_ipv6_only, identity_ipv6_only, Launch, Notifications, TakeoverSlot,
};
use crate::handover::Pending;
use crate::lease::{LeaseAttrs, NodeId};
use crate::lease_machine::LeaseMachine;
use crate::masq::{Backend, Rules};
use crate::netlink::{LinkNews, Netlink};
use crate::node_dataplane::ipv6_only::{Ipv6OnlyDataplane, Ipv6OnlySetup};
use crate::node_dataplane::kernel::{self, Place};
use crate::node_dataplane::{DataplaneKind, Setup6};
use crate::outage::{Outage, Report};
use crate::own_key::{LeaseLoss, OwnKeyWatch};
use crate::peers::{Ipv6OnlyRules, LocalNode6, PeerChange, PeerIpv6, PeerTable, Update};
use crate::registry::{Registry, WatchEvent};
use crate::state::AgentState;
use crate::subnet6::Subnet6;
use crate::subnet_env::SubnetEnv;

/// The underlay of an IPv6-only node: its interface (index, name, MTU) and PublicIPv6.
struct Underlay6 {
    index: u32,
    name: String,
    mtu: u32,
    public_ipv6: Ipv6Addr,
}

async fn underlay6(nl: &Netlink, opts: &AgentOptions) -> anyhow::Result<Underlay6> {
    let flags = &opts.underlay;
    if flags.public_ip.is_some() || flags.iface_can_reach.is_some() {
        tracing::warn!("--public-ip and --iface-can-reach name IPv4 addresses: not used on an IPv6-only network (--public-ipv6 and --iface are)");
    }
    let host = crate::underlay::Host {
        interfaces: nl.interfaces().await?,
        default_route: nl.default_route_oif().await?,
        route_to_can_reach: None,
    };
    let default6 = nl.default_route6_oif().await?;
    let (index, name, by) = crate::underlay::choose_ipv6_only(flags, &host, default6)
        .map_err(|e| anyhow::anyhow!("choosing the underlay of an IPv6-only node: {e}"))?;
    let link = nl
        .link_by_index(index)
        .await?
        .with_context(|| format!("interface {name} vanished"))?;
    let addrs = if flags.public_ipv6.is_some() {
        Vec::new()
    } else {
        nl.ipv6_addresses(index).await?
    };
    let public_ipv6 = crate::underlay::choose_public_ipv6(flags.public_ipv6, &name, &addrs)?;
    tracing::info!(iface = %name, %by, %public_ipv6, "underlay chosen (IPv6-only network)");
    Ok(Underlay6 {
        index,
        name,
        mtu: link.mtu,
        public_ipv6,
    })
}

/// What the node keeps on the host for its lease: the subnet file and the rules.
struct Files6 {
    network: Subnet6,
    mtu: u32,
    ip_masq: bool,
    /// The rules kept in place (they name the PublicIPv6 with `--vxlan-notrack`).
    rules: watch::Sender<Rules>,
    subnet_file: std::path::PathBuf,
    written: Option<SubnetEnv>,
    /// Writing it back failed (said once).
    failing: bool,
}

impl Files6 {
    /// Masquerade/FORWARD rules and the subnet file for the lease's IPv6 subnet.
    fn take(&mut self, subnet: Subnet6, state: &AgentState) -> anyhow::Result<()> {
        if let Err(e) = crate::masq::apply6(&self.network, &subnet, *self.rules.borrow()) {
            tracing::error!("cannot install the IPv6 masquerade/forward rules: {e}");
            state.update(|i| i.last_error = Some(e.to_string()));
        }
        let env = SubnetEnv {
            ipv4: None,
            mtu: self.mtu,
            ipmasq: self.ip_masq,
            ipv6: Some((self.network, subnet)),
        };
        env.write_atomic(&self.subnet_file)
            .with_context(|| format!("writing {}", self.subnet_file.display()))?;
        self.written = Some(env);
        state.ready.subnet_env.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Puts the subnet file back when it was removed or changed behind the agent's back.
    fn keep(&mut self, state: &AgentState) {
        if let Some(env) = self.written {
            keep_file(&env, &self.subnet_file, &mut self.failing, state);
        }
    }
}

/// Runs an IPv6-only node until `stop` fires; see the module documentation.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<F: Future<Output = ()> + Unpin>(
    opts: &AgentOptions,
    state: Arc<AgentState>,
    stop: &mut F,
    nl: Netlink,
    reg: Registry,
    cfg: NetworkConfig,
    pool6: Ipv6Pool,
    launch: Launch,
    takeover: (mpsc::Sender<Pending>, TakeoverSlot),
) -> anyhow::Result<()> {
    // Under systemd: READY=1 and the watchdog as on other nodes; a store kept from
    // an IPv4 run is dropped (nothing here is handed over).
    let sd = Notifications::start(launch, &state);
    // One vxmeshd per node: the handover socket's name, held before anything else
    // is touched (a second one is refused and leaves the node as it found it).
    let vni = cfg.backend.vni.get();
    // A VNI whose device name does not fit is refused here, with nothing touched.
    kernel::device6_name(vni)?;
    let me = identity_ipv6_only(&opts.tap_name, vni, cfg.backend.port, &opts.etcd_prefix);
    hold_ipv6_only(me, takeover.0, &state).await?;
    let u = underlay6(&nl, opts).await?;
    if pool6.network.contains(u.public_ipv6) {
        anyhow::bail!("the network config's IPv6Network {} contains this node's PublicIPv6 {}: choose an IPv6Network outside the node addresses", pool6.network, u.public_ipv6);
    }
    let mtu = cfg.backend.overlay_mtu(u.mtu);
    let mtu6 = kernel::mtu6(mtu);
    if mtu6 < 1280 {
        anyhow::bail!("an IPv6-only network needs an overlay MTU of at least 1280 (IPv6's minimum), but the underlay {} leaves flannel-v6.{vni} {mtu6}: give the underlay (or Backend.MTU) at least 1350 bytes", u.name);
    }
    if opts.dataplane == DataplaneKind::Userspace {
        tracing::info!("IPv6-only network: the kernel's flannel-v6.{vni} carries the pods' IPv6 on this node (the userspace dataplane carries IPv4 only, docs/decisions/0018)");
    }
    let mac6 = crate::vtep_mac::derive_v6(u.public_ipv6, vni);
    state.update(|i| {
        i.dataplane = DataplaneKind::Kernel.as_str();
        i.public_ipv6 = Some(u.public_ipv6);
        i.iface = Some(u.name.clone());
        i.vtep_mac = Some(mac6.to_string());
        i.vni = Some(vni);
        i.port = Some(cfg.backend.port);
        i.network = None;
        i.ipv6_network = Some(pool6.network);
        i.mtu = Some(mtu6);
        i.last_error = None;
    });
    tracing::info!(ipv6_network = %pool6.network, pool = %pool6.describe_pool(), vni, port = cfg.backend.port, vtep_mac = %mac6, mtu = mtu6, "network config: IPv6 only");
    if opts.ipv6_dataplane == crate::node_dataplane::DataplaneKind::Userspace {
        tracing::warn!("--ipv6-dataplane userspace applies to dual-stack nodes: a node of an IPv6-only network runs the kernel's flannel-v6.<VNI> alone (docs/decisions/0030)");
    }

    let previous = crate::subnet_env::read_file(&opts.subnet_file)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let hint6 = previous.as_deref().and_then(SubnetEnv::ipv6_subnet_from);
    let machine = LeaseMachine::for_node(
        cfg.clone(),
        NodeId::V6(u.public_ipv6),
        Hints {
            ipv4: None,
            ipv6: hint6,
        },
        random_seed(),
    );
    let attrs = LeaseAttrs::vxlan_ipv6_only(u.public_ipv6, vni, mac6);
    let mut lease = LeaseLink::start(&reg, machine, attrs, opts.lease_ttl, &state);
    let Some(first) = lease.first(stop).await? else {
        sd.stop();
        released(&takeover.1);
        return Ok(());
    };
    let mut held_rx = lease.held.clone();
    let own6 = first
        .ipv6()
        .context("the lease of an IPv6-only node has no IPv6 subnet")?;

    let setup = Ipv6OnlySetup {
        place: Place {
            vni,
            port: cfg.backend.port,
            underlay_index: u.index,
        },
        mtu,
        v6: Setup6 {
            local_ip: u.public_ipv6,
            vtep_mac: mac6,
            network: pool6.network,
            subnet_len: pool6.subnet_len,
            // An IPv6-only node runs flannel-v6.<VNI> alone (decision 0030).
            in_threads: false,
        },
        tap_name: opts.tap_name.clone(),
        direct_routing: cfg.backend.direct_routing,
    };
    let dp = Ipv6OnlyDataplane::start(&nl, &setup, &state).await?;
    let rules = Rules {
        masquerade: opts.ip_masq,
        random_fully: opts.masq_random_fully,
        forward: opts.iptables_forward_rules,
        untrack: opts.vxlan_notrack.then_some(crate::masq::Untrack {
            local_ip: None,
            local_ipv6: Some(u.public_ipv6),
            port: cfg.backend.port,
        }),
        underlay_tap: None,
        backend: if cfg.enable_nftables {
            Backend::Nftables
        } else {
            Backend::Iptables
        },
    };
    let mut node = Node6 {
        nl,
        dp,
        setup,
        state: Arc::clone(&state),
        files: Files6 {
            network: pool6.network,
            mtu: mtu6,
            ip_masq: opts.ip_masq,
            rules: watch::channel(rules).0,
            subnet_file: opts.subnet_file.clone(),
            written: None,
            failing: false,
        },
        peers: PeerTable::ipv6_only(
            Ipv6OnlyRules::from_config(&cfg).context("the config is not IPv6-only")?,
            Some(LocalNode6 {
                public_ipv6: u.public_ipv6,
                vtep_mac: mac6,
            }),
        ),
        pool6,
        pool_alarm: crate::pool::PoolAlarm::ipv6(),
        own_key: OwnKeyWatch::new(reg.prefix(), NodeId::V6(u.public_ipv6)),
        own: first,
        lost_tx: lease.lost.clone(),
        moved_tx: lease.moved.clone(),
        registry: reg.clone(),
        public_ipv6_flag: opts.underlay.public_ipv6,
        iface: u.name.clone(),
        underlay_gone: Outage::new("the PublicIPv6"),
        shown_rejections: None,
        synced: false,
        held_back: HeldBack::default(),
        ingress6: Ingress6::start(
            (opts.dataplane == DataplaneKind::Userspace).then_some(Ingress6Setup {
                network: pool6.network,
                port: cfg.backend.port,
                every: opts.iptables_resync,
            }),
            held_rx.clone(),
            &state,
        ),
    };
    node.take(first, own6).await?;

    let iptables = rules.any().then(|| {
        tokio::spawn(keep_iptables(
            node.files.rules.subscribe(),
            None,
            Some(pool6.network),
            held_rx.clone(),
            opts.iptables_resync,
            Arc::clone(&state),
        ))
    });
    let blackhole = tokio::spawn(crate::blackhole::keep(
        node.nl.clone(),
        opts.ip_blackhole_route,
        true,
        held_rx.clone(),
        opts.iptables_resync,
        Arc::clone(&state),
    ));
    let mut bg = Background::start(
        &reg,
        &cfg,
        lease,
        [
            iptables.as_ref().map(JoinHandle::abort_handle),
            Some(blackhole.abort_handle()),
            node.ingress6.as_ref().map(|i| i.task.abort_handle()),
        ],
        &state,
    );

    let mut ticks: u32 = 0;
    let result = loop {
        tokio::select! {
            _ = &mut *stop => break Ok(()),
            batch = next_batch(&mut bg.events) => match batch {
                Some(batch) => node.on_registry(&batch).await,
                None => break Err(anyhow::anyhow!("registry watch ended")),
            },
            r = held_rx.changed() => {
                if r.is_err() {
                    break Err(anyhow::anyhow!("lease task ended"));
                }
                let held = *held_rx.borrow_and_update();
                if let Err(e) = node.on_lease(held).await {
                    break Err(e);
                }
            }
            due = device_check_due(&mut bg.device_check, &mut bg.link_news) => {
                // (check the device, look at the PublicIPv6), as on other nodes.
                let (check, underlay) = match due {
                    CheckDue::Tick => {
                        ticks = ticks.wrapping_add(1);
                        (true, bg.link_news.is_none() || ticks % UNDERLAY_RECHECK_TICKS == 0)
                    }
                    CheckDue::News(LinkNews::Lost) => (true, true),
                    CheckDue::News(LinkNews::Deleted(d)) => (node.dp.owns_link(&d), false),
                    CheckDue::News(LinkNews::Addresses) => (false, true),
                    CheckDue::WatchEnded => {
                        bg.link_news = None;
                        (false, false)
                    }
                };
                if check {
                    node.files.keep(&node.state);
                    node.held_back.release(&node.peers, Some(Instant::now()), &node.state);
                    if let Err(e) = node.check_device().await {
                        break Err(e);
                    }
                }
                if underlay {
                    if let Err(e) = node.recheck_underlay().await {
                        break Err(e);
                    }
                }
            }
            _ = bg.reconcile.tick() => { node.reconcile().await; }
        }
    };
    tracing::info!("stopping; the lease is kept for a restart");
    state.ready.routes.store(false, Ordering::Relaxed);
    sd.stop();
    bg.abort();
    node.dp.stop();
    released(&takeover.1);
    result
}

/// A newer build that asked this node to release it (the stop came from that) is told
/// it may go on.
fn released(slot: &TakeoverSlot) {
    if let Some(p) = slot.lock().ok().and_then(|mut g| g.take()) {
        p.stopped(Duration::ZERO);
    }
}

/// The running IPv6-only node: what the loop's handlers act on.
struct Node6 {
    nl: Netlink,
    dp: Ipv6OnlyDataplane,
    setup: Ipv6OnlySetup,
    state: Arc<AgentState>,
    files: Files6,
    peers: PeerTable<PeerIpv6>,
    pool6: Ipv6Pool,
    pool_alarm: crate::pool::PoolAlarm,
    own_key: OwnKeyWatch,
    own: Held,
    lost_tx: mpsc::Sender<LeaseLoss>,
    /// Tells the lease task the lease's new value when the PublicIPv6 moved.
    moved_tx: mpsc::Sender<LeaseAttrs>,
    registry: Registry,
    /// `--public-ipv6` (a given address is never followed) and the underlay's name.
    public_ipv6_flag: Option<Ipv6Addr>,
    iface: String,
    /// The PublicIPv6 gone with nothing to replace it.
    underlay_gone: Outage,
    shown_rejections: Option<u64>,
    /// Whether a registry event has been programmed yet (readiness).
    synced: bool,
    held_back: HeldBack,
    /// The IPv6 device's ingress check (userspace dataplane).
    ingress6: Option<Ingress6>,
}

impl Node6 {
    /// Takes a lease: the device's address, rules, subnet file, and this node's own
    /// key in the peer table.
    async fn take(&mut self, h: Held, subnet: Subnet6) -> anyhow::Result<()> {
        self.dp.set_subnet6(&self.nl, &subnet).await?;
        tracing::info!(ipv6_subnet = %subnet, "IPv6 device address {}/128; pods get IPv6 addresses from {subnet} (FLANNEL_IPV6_SUBNET)", subnet.addr());
        self.files.take(subnet, &self.state)?;
        let mut skips = Vec::new();
        let changes = self.peers.set_own(Some(h.key), &mut skips);
        record_skips(&skips, &self.state);
        self.program(&changes);
        self.held(h);
        self.show_peers();
        Ok(())
    }

    fn held(&mut self, h: Held) {
        self.own = h;
        self.own_key.hold(&h.key, h.revision);
        self.state.ready.lease.store(true, Ordering::Relaxed);
        self.state.update(|i| {
            i.subnet = None;
            i.ipv6_subnet = h.ipv6();
            i.lease_id = Some(format!("{:x}", h.lease_id));
            i.reservation = h.lease_id == 0;
        });
    }

    async fn on_lease(&mut self, held: Option<Held>) -> anyhow::Result<()> {
        let Some(h) = held else {
            self.own_key.release();
            self.state.ready.lease.store(false, Ordering::Relaxed);
            self.state
                .event("lease_lost", format!("subnet {}", self.own.key));
            return Ok(());
        };
        if h.key == self.own.key {
            self.held(h);
        } else {
            let subnet = h
                .ipv6()
                .context("the lease of an IPv6-only node has no IPv6 subnet")?;
            self.take(h, subnet).await?;
        }
        self.held_back.release(&self.peers, None, &self.state);
        Ok(())
    }

    async fn on_registry(&mut self, events: &[WatchEvent]) {
        for ev in events {
            if let Some(loss) = self.own_key.handle(ev) {
                let _ = self.lost_tx.try_send(loss);
            }
        }
        let full_listing = events.iter().any(|e| matches!(e, WatchEvent::Snapshot(_)));
        let mut skips = Vec::new();
        let changes = self
            .peers
            .apply(events.iter().map(Update::from), &mut skips);
        let skips = self.held_back.hold(skips, &self.peers, Instant::now());
        record_skips(&skips, &self.state);
        let mut ok = self.program(&changes);
        if full_listing {
            ok = self.reconcile().await;
        }
        if !self.synced || !changes.is_empty() {
            self.synced = true;
            self.state.ready.routes.store(ok, Ordering::Relaxed);
        }
        self.show_peers();
    }

    /// Programs a batch of peer changes; `false` if any failed (each is reported).
    fn program(&self, changes: &[PeerChange<PeerIpv6>]) -> bool {
        let each = changes.len() <= LOG_EACH_CHANGE_UP_TO;
        for c in changes {
            let (what, p) = match c {
                PeerChange::Added(p) => ("peer_added", p),
                PeerChange::Updated { new, .. } => ("peer_changed", new),
                PeerChange::Removed(p) => ("peer_removed", p),
            };
            let text = format!("{} via {} mac {}", p.subnet, p.public_ipv6, p.vtep_mac);
            if each {
                tracing::info!(subnet = %p.subnet, public_ipv6 = %p.public_ipv6, vtep_mac = %p.vtep_mac, "{}", what.replace('_', " "));
            }
            self.state.event(what, text);
        }
        let failures = self.dp.program(&self.nl, changes);
        for (i, e) in &failures {
            self.state.route_errors.fetch_add(1, Ordering::Relaxed);
            let subnet = changes.get(*i).map(|c| match c {
                PeerChange::Added(p)
                | PeerChange::Removed(p)
                | PeerChange::Updated { new: p, .. } => p.subnet.to_string(),
            });
            tracing::error!(error = %e, subnet = subnet.unwrap_or_default(), "cannot program peer");
            self.state.update(|i| i.last_error = Some(e.to_string()));
        }
        failures.is_empty()
    }

    /// Makes the device carry exactly the peers; `false` if that failed.
    async fn reconcile(&mut self) -> bool {
        let ok = reported(self.dp.reconcile(&self.nl, &self.peers).await, &self.state);
        self.state.ready.routes.store(ok, Ordering::Relaxed);
        ok
    }

    /// Restores the device's MAC (and the peers' entries) if someone changed it, and
    /// starts the device again (with its address and every peer) when it was deleted
    /// under the running agent.
    async fn check_device(&mut self) -> anyhow::Result<()> {
        match self.dp.ensure_vtep_mac(&self.nl).await {
            Ok(Some(false)) => return Ok(()),
            Ok(Some(true)) => {
                self.state.device_repairs.fetch_add(1, Ordering::Relaxed);
                // The MAC change flushed the device's neighbours: put them back.
                self.reconcile().await;
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                // Looked at again at the next check.
                tracing::warn!(error = %e, "cannot look at the IPv6 device");
                return Ok(());
            }
        }
        tracing::warn!(device = %self.dp.device().name, "the IPv6 device was deleted; making it again");
        self.state.device_repairs.fetch_add(1, Ordering::Relaxed);
        self.dp = Ipv6OnlyDataplane::start(&self.nl, &self.setup, &self.state)
            .await
            .context("the IPv6 device was deleted and could not be made again; restart vxmeshd")?;
        if let Some(s) = self.own.ipv6() {
            self.dp.set_subnet6(&self.nl, &s).await?;
        }
        self.reconcile().await;
        Ok(())
    }

    /// Follows a PublicIPv6 that left the underlay interface (not one `--public-ipv6`
    /// gives): the lease put again naming the one chosen now (same key, same subnet),
    /// the VtepMAC derived from it, the device made again sending from it, the rules
    /// and the peer table told. With no address to follow the node is not ready and
    /// changes nothing until one comes (decision 0024).
    async fn recheck_underlay(&mut self) -> anyhow::Result<()> {
        if self.public_ipv6_flag.is_some() {
            return Ok(());
        }
        let current = self.setup.v6.local_ip;
        let addrs = match self
            .nl
            .ipv6_addresses(self.setup.place.underlay_index)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the underlay's IPv6 addresses");
                return Ok(());
            }
        };
        let new = match crate::underlay::recheck_ipv6(None, &self.iface, &addrs, current) {
            Ok(moved) => {
                if let Report::Ended { down, .. } = self.underlay_gone.succeeded(Instant::now()) {
                    tracing::info!(iface = %self.iface, "the underlay has a global IPv6 address again after {:.1} s", down.as_secs_f64());
                    self.state
                        .ready
                        .underlay_lost
                        .store(false, Ordering::Relaxed);
                    self.state.event(
                        "underlay_back",
                        format!("{} on {}", moved.unwrap_or(current), self.iface),
                    );
                }
                match moved {
                    None => return Ok(()),
                    Some(ip6) if self.pool6.network.contains(ip6) => {
                        tracing::error!(address = %ip6, network = %self.pool6.network, "the underlay's IPv6 address moved inside the IPv6Network; not following it (pods' routes would take the node's own traffic)");
                        return Ok(());
                    }
                    Some(ip6) => ip6,
                }
            }
            Err(e) => {
                match self.underlay_gone.failed(Instant::now()) {
                    Report::Began => {
                        tracing::error!(iface = %self.iface, public_ipv6 = %current, reason = %e, "the PublicIPv6 is gone from the underlay and nothing can replace it: peers cannot reach this node; it follows the next global address");
                        self.state
                            .ready
                            .underlay_lost
                            .store(true, Ordering::Relaxed);
                        self.state.event(
                            "underlay_lost",
                            format!("PublicIPv6 {current} gone from {}: {e}", self.iface),
                        );
                    }
                    Report::Lasts { down, .. } => {
                        tracing::warn!(iface = %self.iface, public_ipv6 = %current, "the PublicIPv6 is still gone after {} s", down.as_secs());
                    }
                    Report::Ended { .. } | Report::Quiet => {}
                }
                return Ok(());
            }
        };
        tracing::warn!(old_public_ipv6 = %current, public_ipv6 = %new, iface = %self.iface,
            "the underlay's IPv6 address moved; following it (same subnet)");
        self.state.ready.routes.store(false, Ordering::Relaxed);
        self.state.event(
            "underlay_moved",
            format!("PublicIPv6 {current} → {new} on {}", self.iface),
        );
        self.state.underlay_moves.fetch_add(1, Ordering::Relaxed);
        let vni = self.setup.place.vni;
        let mac6 = crate::vtep_mac::derive_v6(new, vni);
        self.state.update(|i| {
            i.public_ipv6 = Some(new);
            i.vtep_mac = Some(mac6.to_string());
        });
        // The etcd connection may leave from the address that is gone.
        if let Err(e) = self.registry.reconnect().await {
            tracing::warn!(error = %e, "cannot connect to etcd again from the new address; the old connection recovers on its own");
        }
        self.setup.v6.local_ip = new;
        self.setup.v6.vtep_mac = mac6;
        // Before the lease is put again: the put must read as this node's own write.
        self.own_key.set_node(NodeId::V6(new));
        let mut skips = Vec::new();
        let changes = self.peers.set_local(
            Some(LocalNode6 {
                public_ipv6: new,
                vtep_mac: mac6,
            }),
            &mut skips,
        );
        record_skips(&skips, &self.state);
        if self
            .moved_tx
            .send(LeaseAttrs::vxlan_ipv6_only(new, vni, mac6))
            .await
            .is_err()
        {
            tracing::error!("the lease task has ended; the lease still names the old PublicIPv6");
        }
        self.files.rules.send_modify(|rules| {
            if let Some(u) = rules.untrack.as_mut() {
                u.local_ipv6 = Some(new);
            }
        });
        // The device sends from the new address with the new MAC: made again.
        self.dp = Ipv6OnlyDataplane::start(&self.nl, &self.setup, &self.state)
            .await
            .context("the PublicIPv6 moved and the IPv6 device could not be made again on it; restart vxmeshd")?;
        if let Some(s) = self.own.ipv6() {
            self.dp.set_subnet6(&self.nl, &s).await?;
        }
        self.program(&changes);
        self.reconcile().await;
        self.show_peers();
        Ok(())
    }

    fn show_peers(&mut self) {
        self.state
            .show_peers6(&self.peers, &mut self.shown_rejections);
        // Not before the first listing is judged: the check would drop the peers
        // not yet read.
        if let Some(check) = self.ingress6.as_ref().filter(|_| self.synced) {
            check.publish(self.peers.peers().map(|p| (p.public_ipv6, p.subnet)));
        }
        let usage = self.peers.leased().usage6(&self.pool6);
        show_pool(&mut self.pool_alarm, usage, &self.state.pool6, &self.state);
    }
}
