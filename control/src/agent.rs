//! The node agent: registry ⇄ lease machine ⇄ dataplane, netlink and subnet file.
//!
//! Start-up, in order: find the underlay (`--iface`, `--public-ip`, or the default
//! route), serve /healthz, reach etcd, read the network config (waiting, with a
//! clear error, until it exists and is valid), acquire a subnet lease, create and
//! configure the TAP, start the dataplane threads, write the subnet file, then
//! follow the peers' leases (routes, permanent neighbours, forwarding table) until
//! told to stop. A vxmeshd already running on the node's TAP (or systemd's
//! descriptor store after a restart) hands its dataplane over instead of a cold
//! start ([`crate::handover`]): same TAP queues, sockets, forwarding table and
//! lease. On SIGTERM/SIGINT both dataplanes stop forwarding and leave their device
//! programmed (as flanneld does), pruning what went stale on the next start; when
//! a successor took over, the agent just stops its threads. The lease is kept so
//! a restart gets the same subnet.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::allocator::Claim;
use crate::config::Ipv4Pool;
use crate::config::NetworkConfig;
use crate::etcd_access::EtcdAccess;
use crate::flags::UnderlayFlags;
pub use crate::handover::node::Launch;
use crate::handover::node::{self as handover, NodeHandover};
use crate::lease::{LeaseAttrs, LeaseKey, NodeId};
use crate::lease_machine::{LeaseAction, LeaseEvent, LeaseMachine};
use crate::masq::{Backend, Ensured, Rules};
use crate::netlink::{LinkInfo, LinkNews, Netlink};
use crate::node_dataplane::{DataplaneKind, DataplaneSetup, NeighbourCheck, NodeDataplane};
use crate::outage::{Outage, Report};
use crate::own_key::{LeaseLoss, OwnKeyWatch};
use crate::peers::{LocalNode, PeerChange, PeerKind, PeerRules, PeerTable, Skip};
use crate::registry::{Backoff, Listing, Registry, WatchEvent, WatchFrom};
use crate::state::AgentState;
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;
use crate::subnet_env::SubnetEnv;
use crate::underlay::Host;
use vxmesh_dataplane::fib::LocalVtep;
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::wire::MacAddr;

mod ingress6;
mod ipv6_only;

/// VXLAN over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const ENCAP_OVERHEAD: u32 = 50;
/// How often the routes and neighbours are checked against the peers (what is
/// missing, changed or stale is repaired — manual deletions, for one).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Every this many periodic passes dump the overlay device's neighbours (finding
/// stale entries too); the others look the peers' entries up (see
/// [`NeighbourCheck`]): with the default period, a dump every 5 minutes.
pub const DUMP_NEIGHBOURS_EVERY: u32 = 10;

/// After this many peer changes, the next periodic pass returns the heap's free
/// memory to the kernel: a node that started into a big cluster (or saw heavy churn)
/// would otherwise keep the peak of its start-up burst as RSS.
const TRIM_AFTER_CHANGES: usize = 64;

/// How periodic pass `pass` (0, 1, …) reads the neighbours: every
/// [`DUMP_NEIGHBOURS_EVERY`]th dumps, the others look up. The passes start after the
/// first full listing, which dumped.
pub fn periodic_check(pass: u32) -> NeighbourCheck {
    if pass.wrapping_add(1) % DUMP_NEIGHBOURS_EVERY == 0 {
        NeighbourCheck::Dump
    } else {
        NeighbourCheck::Lookup
    }
}
/// Watch events queued between the watch and the agent; at most this many are
/// judged and programmed as one batch.
const WATCH_QUEUE: usize = 1024;
/// Up to this many peer changes in one batch are logged one line each; a larger
/// batch (a node starting in a big cluster) is one summary line, the peers at debug.
const LOG_EACH_CHANGE_UP_TO: usize = 16;
/// How often the overlay device's MAC is checked (one netlink request).
pub const DEVICE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// With the kernel's address announcements, the underlay address is also looked at
/// every this many device checks (a minute), in case an announcement went missing;
/// without them, at every check.
const UNDERLAY_RECHECK_TICKS: u32 = 30;
/// How long a rejection of a lease naming this node's PublicIP is held back before it
/// is warned about ([`HeldBack`]): the node's own new lease is reported by the
/// lease task within milliseconds of the watch delivering it.
const HOLD_BACK: Duration = Duration::from_secs(2);

/// Everything `vxmeshd` is told on its command line (see [`crate::flags`]).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Endpoints, TLS files and credentials, validated.
    pub etcd: EtcdAccess,
    pub etcd_prefix: String,
    /// How the underlay interface and the PublicIP are chosen.
    pub underlay: UnderlayFlags,
    pub subnet_file: PathBuf,
    pub tap_name: IfName,
    pub lease_ttl: Duration,
    pub tx_sockets: usize,
    pub tap_queues: usize,
    /// `--tap-txqueuelen`: the TAP's transmit queue, in frames.
    pub tap_txqueuelen: u32,
    /// `--vxlan-rcvbuf`: the VXLAN receive socket's buffer, in bytes.
    pub vxlan_rcvbuf: usize,
    pub offloads: bool,
    /// Active queue management on ingress (userspace dataplane), or none.
    pub aqm: Option<vxmesh_dataplane::aqm::CodelConfig>,
    /// How the userspace dataplane's threads are scheduled.
    pub engine_priority: vxmesh_dataplane::priority::ThreadPriority,
    /// `--busy-poll` (zero: off).
    pub busy_poll: vxmesh_dataplane::busy_poll::BusyPoll,
    /// `--egress-tunnel-gso`.
    pub egress_tunnel_gso: bool,
    pub dataplane: DataplaneKind,
    /// `--ipv6-dataplane`: who carries a dual-stack node's IPv6 on the userspace
    /// dataplane (decision 0034).
    pub ipv6_dataplane: DataplaneKind,
    /// Masquerade pod traffic leaving the Network (and write FLANNEL_IPMASQ=true).
    pub ip_masq: bool,
    /// MASQUERADE with `--random-fully` (flanneld's `--ip-masq-fully-random-disable`
    /// turns it off).
    pub masq_random_fully: bool,
    /// `--vxlan-notrack`: leave the outer VXLAN packets out of conntrack.
    pub vxlan_notrack: bool,
    /// Accept the Network's traffic in FORWARD, with or without masquerading.
    pub iptables_forward_rules: bool,
    /// How often the iptables rules (and the blackhole route) are checked and restored.
    pub iptables_resync: Duration,
    /// `--ip-blackhole-route`: a blackhole route for the node's subnet
    /// ([`crate::blackhole`]).
    pub ip_blackhole_route: bool,
}

/// The underlay this node sends VXLAN on.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: LinkInfo,
    /// The interface address VXLAN is sent from.
    pub local_ip: Ipv4Addr,
    /// The address advertised to peers (differs from `local_ip` behind NAT).
    pub public_ip: Ipv4Addr,
    /// How it was chosen, for the log: the rule, and the candidates passed over.
    pub by: String,
    pub passed_over: Vec<String>,
}

impl Underlay {
    /// Logs the choice, as flanneld logs its own.
    fn announce(&self) {
        for p in &self.passed_over {
            tracing::info!("underlay: passed over {p}");
        }
        tracing::info!(iface = %self.link.name, by = %self.by, local_ip = %self.local_ip, public_ip = %self.public_ip, mtu = self.link.mtu, "underlay chosen");
    }
}

/// Finds the underlay interface and the PublicIP to advertise, as flanneld does
/// (the choice itself is [`crate::underlay::choose`]); not logged yet: an IPv6-only
/// network's node chooses another one.
pub async fn resolve_underlay(nl: &Netlink, flags: &UnderlayFlags) -> anyhow::Result<Underlay> {
    let choice = crate::underlay::choose(flags, &host_of(nl, flags).await?)?;
    underlay_of(nl, choice).await
}

/// What the underlay's choice depends on, read from the kernel.
async fn host_of(nl: &Netlink, flags: &UnderlayFlags) -> anyhow::Result<Host> {
    let route_to_can_reach = match flags.iface_can_reach {
        Some(dst) => Some(nl.route_to(dst).await.map_err(|e| e.to_string())),
        None => None,
    };
    Ok(Host {
        interfaces: nl.interfaces().await?,
        default_route: nl.default_route_oif().await?,
        route_to_can_reach,
    })
}

/// The chosen underlay's link.
async fn underlay_of(nl: &Netlink, choice: crate::underlay::Choice) -> anyhow::Result<Underlay> {
    let link = nl
        .link_by_index(choice.index)
        .await?
        .with_context(|| format!("interface {} vanished", choice.name))?;
    Ok(Underlay {
        link,
        local_ip: choice.local_ip,
        public_ip: choice.public_ip,
        by: choice.by,
        passed_over: choice.passed_over,
    })
}

/// The PublicIPv6 of this node's lease: `Some` when the config is dual stack
/// (`--public-ipv6`, else the underlay interface's global IPv6 address; an error
/// saying to give `--public-ipv6` when there is none), `None` otherwise.
async fn lease_ipv6(
    nl: &Netlink,
    flags: &UnderlayFlags,
    underlay: &Underlay,
    cfg: &NetworkConfig,
) -> anyhow::Result<Option<std::net::Ipv6Addr>> {
    let Some(pool) = &cfg.ipv6 else {
        if let Some(ip6) = flags.public_ipv6 {
            tracing::warn!(public_ipv6 = %ip6, "--public-ipv6 is not used: the network config is not dual stack (no EnableIPv6 with an IPv6Network)");
        }
        return Ok(None);
    };
    let addrs = if flags.public_ipv6.is_some() {
        Vec::new()
    } else {
        nl.ipv6_addresses(underlay.link.index).await?
    };
    let ip6 = crate::underlay::choose_public_ipv6(flags.public_ipv6, &underlay.link.name, &addrs)?;
    tracing::info!(public_ipv6 = %ip6, ipv6_pool = %pool.describe_pool(), "dual-stack lease: PublicIPv6 {ip6}");
    Ok(Some(ip6))
}

fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

async fn sleep_or<F: Future<Output = ()> + Unpin>(d: Duration, stop: &mut F) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop => false,
    }
}

/// Connects to etcd and reads a valid config, retrying (with the error in the log
/// and in /v1/status) until it works or `stop` fires.
async fn registry_and_config<F: Future<Output = ()> + Unpin>(
    opts: &AgentOptions,
    state: &AgentState,
    stop: &mut F,
) -> Option<(Registry, NetworkConfig)> {
    let mut backoff = Backoff::default();
    let mut last_msg = String::new();
    loop {
        let attempt = async {
            let reg = Registry::connect_with(&opts.etcd, &opts.etcd_prefix)
                .await
                .map_err(|e| e.to_string())?;
            let cfg = reg.network_config().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((reg, cfg))
        };
        match attempt.await {
            Ok(x) => return Some(x),
            Err(msg) => {
                if msg != last_msg {
                    tracing::error!("{msg}");
                    last_msg = msg.clone();
                }
                state.update(|i| i.last_error = Some(msg));
            }
        }
        if !sleep_or(backoff.next_delay(), stop).await {
            return None;
        }
    }
}

/// Messages from the lease task to the agent loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The key held: IPv4, dual stack (one key names both subnets) or IPv6 only.
    pub key: LeaseKey,
    /// The etcd lease kept alive; 0 for a reservation (no lease, nothing to renew).
    pub lease_id: i64,
    /// The etcd revision of the claim.
    pub revision: i64,
}

impl Held {
    /// The IPv4 subnet (`None` on an IPv6-only network).
    pub fn subnet(&self) -> Option<Subnet> {
        self.key.ipv4_subnet()
    }

    /// The IPv6 subnet (dual stack, IPv6 only).
    pub fn ipv6(&self) -> Option<Subnet6> {
        self.key.ipv6_subnet()
    }
}

/// Where the lease task publishes what it holds.
struct LeaseOutputs {
    /// Every subnet acquired (`None` while none is held).
    held: watch::Sender<Option<Held>>,
    /// The listing the first subnet was claimed after, for the watch to begin with
    /// (taken at the first acquisition).
    first_listing: Option<oneshot::Sender<Listing>>,
}

/// What the lease task is told by the agent.
struct LeaseInputs {
    /// The lease is lost (the agent saw its key go or taken), with why.
    lost: mpsc::Receiver<LeaseLoss>,
    /// This node's addresses (and so its VtepMACs) moved: the lease's new value
    /// ([`LeaseMachine::moved`]).
    moved: mpsc::Receiver<LeaseAttrs>,
}

/// Runs the lease machine against etcd: publishes every acquisition (and the first
/// one's listing) on `out`, keeps the lease alive, and re-acquires when `lost_rx` (or
/// the keepalive) says the lease is gone.
async fn lease_task(
    reg: Registry,
    mut machine: LeaseMachine,
    mut attrs: LeaseAttrs,
    ttl: Duration,
    out: LeaseOutputs,
    inputs: LeaseInputs,
    state: Arc<AgentState>,
) {
    let LeaseOutputs {
        held: held_tx,
        mut first_listing,
    } = out;
    let LeaseInputs {
        lost: mut lost_rx,
        moved: mut moved_rx,
    } = inputs;
    let (ka_tx, mut ka_rx) = mpsc::channel::<String>(4);
    let mut keepalive: Option<JoinHandle<()>> = None;
    let mut listed = None;
    let mut outage = Outage::new(LEASE_ACQUISITION);
    // Whether a move is putting the held key again with the node's new address,
    // until it is held so, and the etcd lease the key was held under before.
    let mut moving = false;
    let mut replaced: Option<i64> = None;
    loop {
        match step(&reg, &mut machine, &attrs, ttl, &mut listed, &mut outage).await {
            Some(LeaseAction::Acquired {
                // Logged as `subnet` (its subnets: `10.244.3.0/24 + fd00::/64`).
                key: subnet,
                lease_id,
                revision,
                changed_from,
            }) => {
                let key = subnet.key_form();
                let moved = std::mem::take(&mut moving) && changed_from.is_none();
                match changed_from {
                    None if moved => {
                        tracing::info!(%subnet, %key, public_ip = %attrs.public_ip, public_ipv6 = ?attrs.public_ipv6, lease = format!("{lease_id:x}"), "subnet lease put again with the node's new address; the subnet stays")
                    }
                    Some(old) => tracing::error!(
                        old = %old, new = %subnet,
                        "lost subnet {old} to another node; now holding {subnet}: pods on this node must be recreated to get new addresses"
                    ),
                    None if lease_id == 0 => {
                        tracing::info!(%subnet, %key, "holding reserved subnet (its key has no etcd lease: kept as a reservation, never renewed)")
                    }
                    None => {
                        tracing::info!(%subnet, %key, lease = format!("{lease_id:x}"), ttl_secs = ttl.as_secs(), "holding subnet lease")
                    }
                }
                state.event(
                    if moved {
                        "lease_moved"
                    } else {
                        "lease_acquired"
                    },
                    match changed_from {
                        None if moved => format!(
                            "subnet {subnet} key {key} now names PublicIP {} (lease {lease_id:x})",
                            attrs.public_ip
                        ),
                        Some(old) => {
                            format!("subnet {subnet} key {key} (lost {old} to another node)")
                        }
                        None if lease_id == 0 => format!("subnet {subnet} key {key} (reservation)"),
                        None => format!(
                            "subnet {subnet} key {key} lease {lease_id:x} ttl {}s",
                            ttl.as_secs()
                        ),
                    },
                );
                state
                    .lease_reacquisitions
                    .store(machine.reacquisitions(), Ordering::Relaxed);
                if let Some(k) = keepalive.take() {
                    k.abort();
                }
                // The key moved to a new etcd lease: the old one holds nothing now.
                // (Revoked after its keepalive is stopped, which would take the
                // revocation for a loss.)
                if let Some(old) = replaced.take().filter(|old| *old != lease_id && *old != 0) {
                    let r = reg.clone();
                    tokio::spawn(async move {
                        if let Err(e) = r.revoke(old).await {
                            tracing::debug!(error = %e, lease = format!("{old:x}"), "cannot revoke the lease the key left; it expires");
                        }
                    });
                }
                if lease_id == 0 {
                    state.lease.no_ttl();
                } else {
                    let r = reg.clone();
                    let tx = ka_tx.clone();
                    let stats = Arc::clone(&state.lease);
                    keepalive = Some(tokio::spawn(async move {
                        let why = r.keep_alive(lease_id, ttl, &stats).await;
                        let _ = tx.send(why).await;
                    }));
                }
                // The first subnet's listing goes to the watch (before the subnet
                // is published, so the agent finds it there); later ones are dropped.
                if let (Some(tx), Some(l)) = (first_listing.take(), listed.take()) {
                    let _ = tx.send(l);
                }
                let _ = held_tx.send(Some(Held {
                    key: subnet,
                    lease_id,
                    revision,
                }));
            }
            Some(LeaseAction::Exhausted(e)) => {
                tracing::error!("{e}");
                state.update(|i| i.last_error = Some(e.to_string()));
            }
            // Until the machine's time comes (Wait) or something happens (Idle).
            Some(action @ (LeaseAction::Wait { .. } | LeaseAction::Idle)) => {
                let until = match action {
                    LeaseAction::Wait { until } => Some(until),
                    _ => None,
                };
                let d = until.map_or(Duration::ZERO, |u| {
                    u.saturating_duration_since(Instant::now())
                });
                tokio::select! {
                    _ = tokio::time::sleep(d), if until.is_some() => {}
                    Some(loss) = lost_rx.recv() => lost(&mut machine, &loss.to_string(), loss.event(), &held_tx, &state).await,
                    Some(why) = ka_rx.recv() => lost(&mut machine, &why, LeaseEvent::LeaseLost, &held_tx, &state).await,
                    Some(to) = moved_rx.recv() => {
                        let held = machine.held().map(|(_, id)| id);
                        if move_to(to, &mut machine, &mut attrs) {
                            moving = true;
                            replaced = replaced.or(held);
                        }
                    }
                    else => return,
                }
            }
            // List and Claim were carried out by `step`.
            Some(LeaseAction::List | LeaseAction::Claim(_)) | None => {}
        }
    }
}

/// Polls the machine once and carries out registry actions (List, Claim) itself,
/// reporting their outcome; other actions are returned for the caller (`None` when
/// a registry action was performed). A successful listing is left in `listed` (the
/// agent's watch starts from the one its subnet was claimed after).
/// The lease task's etcd calls, as the log names them.
const LEASE_ACQUISITION: &str = "subnet lease acquisition";

pub async fn step(
    reg: &Registry,
    machine: &mut LeaseMachine,
    attrs: &LeaseAttrs,
    ttl: Duration,
    listed: &mut Option<Listing>,
    outage: &mut Outage,
) -> Option<LeaseAction> {
    match machine.poll(Instant::now()) {
        LeaseAction::List => {
            let ev = match reg.list_subnets().await {
                Ok(l) => {
                    outage.ok();
                    let ev = LeaseEvent::Listed(l.existing_leases());
                    *listed = Some(l);
                    ev
                }
                Err(e) => {
                    let e = format!("cannot list subnets: {e}");
                    outage.fail(&e);
                    LeaseEvent::RegistryError
                }
            };
            machine.handle(ev, Instant::now());
            None
        }
        LeaseAction::Claim(c) => {
            let claimed = reg.claim(&c, attrs, ttl).await;
            if claimed.is_ok() {
                outage.ok();
            }
            let ev = match claimed {
                Ok(Some(won)) => {
                    if let Claim::Rekey { from, .. } = c {
                        tracing::info!(old = %from.key_form(), new = %c.key().key_form(), "this node's old lease did not fit the current network config: deleted it and claimed the new one in one transaction");
                    }
                    LeaseEvent::Claimed {
                        lease_id: won.lease_id,
                        revision: won.revision,
                    }
                }
                Ok(None) => {
                    tracing::info!(key = %c.key().key_form(), "subnet taken by another node meanwhile; trying the next candidate");
                    LeaseEvent::RaceLost
                }
                Err(e) => {
                    let e = format!("cannot claim a subnet: {e}");
                    outage.fail(&e);
                    LeaseEvent::RegistryError
                }
            };
            machine.handle(ev, Instant::now());
            None
        }
        other => Some(other),
    }
}

/// Drives a fresh machine until it holds a lease or finds the pool full (used by
/// tests and tools; the agent keeps driving it for the node's lifetime).
pub async fn acquire(
    reg: &Registry,
    machine: &mut LeaseMachine,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Result<Held, crate::allocator::NoFreeSubnet> {
    let mut listed = None;
    let mut outage = Outage::new(LEASE_ACQUISITION);
    loop {
        match step(reg, machine, attrs, ttl, &mut listed, &mut outage).await {
            Some(LeaseAction::Acquired {
                key,
                lease_id,
                revision,
                ..
            }) => {
                return Ok(Held {
                    key,
                    lease_id,
                    revision,
                })
            }
            Some(LeaseAction::Exhausted(e)) => return Err(e),
            Some(LeaseAction::Wait { until }) => {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await
            }
            Some(LeaseAction::Idle | LeaseAction::List | LeaseAction::Claim(_)) | None => {}
        }
    }
}

/// The node's addresses moved: the lease's value is now `new`. Later claims carry
/// it, and a held key is put again with it ([`LeaseMachine::moved`]). Whether that
/// changed anything.
fn move_to(new: LeaseAttrs, machine: &mut LeaseMachine, attrs: &mut LeaseAttrs) -> bool {
    if *attrs == new {
        return false;
    }
    tracing::info!(old = %attrs.public_ip, new = %new.public_ip, public_ipv6 = ?new.public_ipv6, "putting the subnet lease again with the node's new address");
    let me = match machine.node() {
        NodeId::V6(old) => NodeId::V6(new.public_ipv6.unwrap_or(old)),
        NodeId::V4(_) => NodeId::V4(new.public_ip),
    };
    machine.moved(me);
    *attrs = new;
    true
}

async fn lost(
    machine: &mut LeaseMachine,
    why: &str,
    ev: LeaseEvent,
    held_tx: &watch::Sender<Option<Held>>,
    state: &AgentState,
) {
    if machine.held().is_none() {
        return;
    }
    if state.handover_gate.is_up() {
        // The successor owns the lease now and may have changed it (a re-claim under a
        // changed config deletes our key); re-acquiring would undo its claim. A
        // completed handover stops this task here.
        tracing::info!("subnet lease changed during a handover ({why}): left to the successor");
        state.handover_gate.until_down().await;
        tracing::warn!("the handover did not complete; handling the lease change");
    }
    if ev == LeaseEvent::KeyGarbled {
        tracing::warn!("subnet lease lost ({why}); taking the key back (nobody holds the subnet)");
    } else {
        tracing::warn!("subnet lease lost ({why}); re-acquiring, preferring the same subnet");
    }
    machine.handle(ev, Instant::now());
    let _ = held_tx.send(None);
}

/// Keeps the masquerade/forward rules in place, as flanneld does every
/// `--iptables-resync` seconds: applies them for each new subnet, and restores them
/// when a firewall reload or an `iptables -F` removed or changed them. `network6`: the
/// IPv6 Network when the dataplane carries IPv6 (the same rules with ip6tables, or in
/// `table ip6 vxmesh`, for the lease's IPv6 subnet).
async fn keep_iptables(
    rules: watch::Receiver<Rules>,
    network: Option<Subnet>,
    network6: Option<Subnet6>,
    held: watch::Receiver<Option<Held>>,
    every: Duration,
    state: Arc<AgentState>,
) {
    let mut last: Option<crate::masq::Snapshot> = None;
    let mut last6: Option<crate::masq::Snapshot<Subnet6>> = None;
    let mut resync = Resync::new(every, held);
    let mut failing = [false, false];
    let mut applied: Option<Rules> = None;
    while let Some(h) = resync.next().await {
        // Rules that changed (the underlay moved: they name its address) are
        // applied afresh, not "restored".
        let rules = *rules.borrow();
        if applied.replace(rules) != Some(rules) {
            (last, last6) = (None, None);
        }
        let (mut snapshot, mut snapshot6) = (last.take(), last6.take());
        // iptables-save/-restore are processes: off the control thread.
        let Ok((r, r6, snapshot, snapshot6)) = tokio::task::spawn_blocking(move || {
            let r = network
                .zip(h.subnet())
                .map(|(n, own)| crate::masq::ensure(&n, &own, rules, &mut snapshot));
            let r6 = match (network6, h.ipv6()) {
                (Some(n6), Some(own6)) => {
                    Some(crate::masq::ensure6(&n6, &own6, rules, &mut snapshot6))
                }
                _ => None,
            };
            (r, r6, snapshot, snapshot6)
        })
        .await
        else {
            return;
        };
        (last, last6) = (snapshot, snapshot6);
        let tool = rules.backend.name();
        if let Some(r) = r {
            report_rules(r, tool, "", &mut failing[0], &state);
        }
        if let Some(r6) = r6 {
            report_rules(r6, tool, " (IPv6)", &mut failing[1], &state);
        }
    }
}

/// The lease node state is kept for, every `every` and at each lease change: the
/// resync of the iptables rules and of the blackhole route. While no lease is held
/// (lost, being re-acquired) what is in place stays until the next one.
#[derive(Debug)]
pub struct Resync {
    tick: tokio::time::Interval,
    held: watch::Receiver<Option<Held>>,
}

impl Resync {
    pub fn new(every: Duration, held: watch::Receiver<Option<Held>>) -> Resync {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Resync { tick, held }
    }

    /// The lease held now, if any.
    pub fn current(&self) -> Option<Held> {
        *self.held.borrow()
    }

    /// The held lease at the next tick or change; `None` once the agent stops.
    pub async fn next(&mut self) -> Option<Held> {
        loop {
            tokio::select! {
                _ = self.tick.tick() => {}
                r = self.held.changed() => if r.is_err() { return None },
            }
            if let Some(h) = *self.held.borrow_and_update() {
                return Some(h);
            }
        }
    }
}

/// The lease task, started, and the channels a node talks to it by.
struct LeaseLink {
    task: JoinHandle<()>,
    /// Every lease acquired (`None` while none is held).
    held: watch::Receiver<Option<Held>>,
    /// Tells the task the lease is lost.
    lost: mpsc::Sender<LeaseLoss>,
    /// Tells the task the lease's new value when the node's addresses moved.
    moved: mpsc::Sender<LeaseAttrs>,
    /// The listing the first lease was claimed after, for the watch to begin with.
    first_listing: oneshot::Receiver<Listing>,
}

impl LeaseLink {
    fn start(
        reg: &Registry,
        machine: LeaseMachine,
        attrs: LeaseAttrs,
        ttl: Duration,
        state: &Arc<AgentState>,
    ) -> LeaseLink {
        let (held_tx, held) = watch::channel(None::<Held>);
        let (lost, lost_rx) = mpsc::channel::<LeaseLoss>(8);
        let (moved, moved_rx) = mpsc::channel::<LeaseAttrs>(4);
        let (listing_tx, first_listing) = oneshot::channel::<Listing>();
        let task = tokio::spawn(lease_task(
            reg.clone(),
            machine,
            attrs,
            ttl,
            LeaseOutputs {
                held: held_tx,
                first_listing: Some(listing_tx),
            },
            LeaseInputs {
                lost: lost_rx,
                moved: moved_rx,
            },
            Arc::clone(state),
        ));
        LeaseLink {
            task,
            held,
            lost,
            moved,
            first_listing,
        }
    }

    /// Waits for the first lease; `None` when `stop` fired first (the task is then
    /// stopped), an error when the task ended.
    async fn first<F: Future<Output = ()> + Unpin>(
        &mut self,
        stop: &mut F,
    ) -> anyhow::Result<Option<Held>> {
        loop {
            if let Some(h) = *self.held.borrow_and_update() {
                return Ok(Some(h));
            }
            tokio::select! {
                r = self.held.changed() => if r.is_err() { anyhow::bail!("lease task ended") },
                _ = &mut *stop => { self.task.abort(); return Ok(None); }
            }
        }
    }
}

/// What a running node keeps going beside its loop — the registry watch, the kernel's
/// link announcements, the config watch, the lease task and the given resync tasks —
/// and the loop's timers.
struct Background {
    /// The registry's events, in order.
    events: mpsc::Receiver<WatchEvent>,
    /// The kernel's link announcements (`None` without them: the period alone).
    link_news: Option<mpsc::Receiver<LinkNews>>,
    /// What ends with the loop.
    tasks: Vec<tokio::task::AbortHandle>,
    /// The periodic reconcile pass.
    reconcile: tokio::time::Interval,
    /// The periodic device check.
    device_check: tokio::time::Interval,
}

impl Background {
    fn start(
        reg: &Registry,
        cfg: &NetworkConfig,
        mut lease: LeaseLink,
        resync: [Option<tokio::task::AbortHandle>; 3],
        state: &Arc<AgentState>,
    ) -> Background {
        let config_watch = tokio::spawn(keep_config(reg.clone(), cfg.clone(), Arc::clone(state)));
        let (wtx, events) = mpsc::channel::<WatchEvent>(WATCH_QUEUE);
        let watch_reg = reg.clone();
        let watch_stats = Arc::clone(&state.watch);
        // The watch begins with the listing the subnet was claimed after (one read of
        // the whole prefix per start, not two), if the lease task kept one.
        let from = lease
            .first_listing
            .try_recv()
            .map_or(WatchFrom::List, WatchFrom::Listing);
        let watcher =
            tokio::spawn(async move { watch_reg.watch_subnets(from, wtx, &watch_stats).await });
        // The kernel's link announcements: a deleted overlay device is checked at
        // once, as flanneld notices one; the periodic check stays for announcements
        // lost to a full socket buffer.
        let (link_news, link_watch) = match crate::netlink::watch_link_deletions() {
            Ok((rx, task)) => (Some(rx), Some(task)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the kernel's link announcements; a deleted overlay device is noticed by the {}-s check", DEVICE_CHECK_EVERY.as_secs());
                (None, None)
            }
        };
        let tasks = [
            Some(watcher.abort_handle()),
            link_watch.as_ref().map(JoinHandle::abort_handle),
            Some(config_watch.abort_handle()),
            Some(lease.task.abort_handle()),
        ]
        .into_iter()
        .chain(resync)
        .flatten()
        .collect();
        // Agents started together must not reconcile in step: the first pass comes
        // after a random part of the period.
        let offset =
            Duration::from_millis(random_seed() % RECONCILE_EVERY.as_millis().max(1) as u64);
        let mut reconcile =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut device_check = tokio::time::interval(DEVICE_CHECK_EVERY);
        device_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Background {
            events,
            link_news,
            tasks,
            reconcile,
            device_check,
        }
    }

    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The next registry events: the first, and whatever else is queued, so that a burst
/// is judged, programmed and shown once; `None` when the watch ended.
async fn next_batch(events: &mut mpsc::Receiver<WatchEvent>) -> Option<Vec<WatchEvent>> {
    let mut batch = vec![events.recv().await?];
    while batch.len() < WATCH_QUEUE {
        match events.try_recv() {
            Ok(ev) => batch.push(ev),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Follows etcd's network config and tells, once per change, when it is no longer
/// the one this node runs (`crate::config_watch`): a warning, an event and the
/// status's `config_in_etcd`.
async fn keep_config(reg: Registry, running: NetworkConfig, state: Arc<AgentState>) {
    let key = crate::lease::config_key(reg.prefix());
    let (tx, mut rx) = mpsc::channel::<Option<Vec<u8>>>(1);
    let mut tracker = crate::config_watch::Tracker::new(&key);
    let judge = async {
        while let Some(value) = rx.recv().await {
            let now = crate::config_watch::judge(&running, &key, value.as_deref());
            let Some(n) = tracker.observe(now, value.as_deref()) else {
                continue;
            };
            if n.warn {
                tracing::warn!("{}", n.message);
            } else {
                tracing::info!("{}", n.message);
            }
            if let Ok(mut g) = state.config_in_etcd.lock() {
                *g = tracker.last().clone();
            }
            state.event(n.kind, n.message);
        }
    };
    tokio::join!(reg.watch_config(tx), judge);
}

/// Logs and counts what one family's [`crate::masq::ensure`] did.
fn report_rules(
    r: Result<Ensured, crate::masq::MasqError>,
    tool: &str,
    family: &str,
    failing: &mut bool,
    state: &AgentState,
) {
    match r {
        Ok(Ensured::Intact | Ensured::Applied) => {
            if *failing {
                tracing::info!("{tool} rules{family} in place again");
                *failing = false;
            }
        }
        Ok(Ensured::Restored { missing, extra }) => {
            state.iptables_repairs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                missing,
                extra,
                "{tool} rules{family} were changed behind vxmesh's back (firewall reload? iptables -F? nft flush ruleset?); restored"
            );
        }
        Err(e) => {
            if !*failing {
                tracing::error!("cannot keep the {tool} rules{family} in place: {e}");
                *failing = true;
            }
            state.update(|i| i.last_error = Some(e.to_string()));
        }
    }
}

/// Applies a batch of peer changes through the dataplane (netlink batches); `false`
/// if any failed. Each failure is reported with its peer; the others still happen.
fn program(dp: &NodeDataplane, nl: &Netlink, changes: &[PeerChange], state: &AgentState) -> bool {
    if changes.is_empty() {
        return true;
    }
    let each = changes.len() <= LOG_EACH_CHANGE_UP_TO;
    for c in changes {
        log_change(c, each);
    }
    if !each {
        let count = |f: fn(&PeerChange) -> bool| changes.iter().filter(|c| f(c)).count();
        tracing::info!(
            added = count(|c| matches!(c, PeerChange::Added(_))),
            changed = count(|c| matches!(c, PeerChange::Updated { .. })),
            removed = count(|c| matches!(c, PeerChange::Removed(_))),
            "programming peers"
        );
    }
    let failures = dp.program(nl, changes);
    for (i, e) in &failures {
        state.route_errors.fetch_add(1, Ordering::Relaxed);
        let subnet = changes.get(*i).map(|c| match c {
            PeerChange::Added(p) | PeerChange::Removed(p) | PeerChange::Updated { new: p, .. } => {
                p.subnet.to_string()
            }
        });
        tracing::error!(error = %e, subnet = subnet.unwrap_or_default(), "cannot program peer");
        state.update(|i| i.last_error = Some(e.to_string()));
    }
    failures.is_empty()
}

fn log_change(c: &PeerChange, info: bool) {
    macro_rules! log {
        ($($t:tt)*) => {
            if info { tracing::info!($($t)*) } else { tracing::debug!($($t)*) }
        };
    }
    match c {
        PeerChange::Added(p) => {
            log!(subnet = %p.subnet, public_ip = %p.public_ip, vtep_mac = %p.vtep_mac, "peer added")
        }
        PeerChange::Updated { old, new } => {
            log!(subnet = %new.subnet, public_ip = %new.public_ip, vtep_mac = %new.vtep_mac,
                old_public_ip = %old.public_ip, old_vtep_mac = %old.vtep_mac, "peer changed")
        }
        PeerChange::Removed(p) => {
            log!(subnet = %p.subnet, public_ip = %p.public_ip, "peer removed")
        }
    }
}

/// Makes the devices match the full peer set: puts back what is missing or changed
/// and removes what no peer accounts for (entries left on a device that outlived
/// the agent, for one); `false` if that failed.
async fn reconcile(
    nl: &Netlink,
    dp: &NodeDataplane,
    peers: &PeerTable,
    state: &AgentState,
    check: NeighbourCheck,
) -> bool {
    reported(dp.reconcile(nl, peers, check).await, state)
}

/// Logs and counts a reconcile pass's outcome; `false` if it failed.
fn reported(
    result: Result<crate::node_dataplane::Reconciled, crate::netlink::NetlinkError>,
    state: &AgentState,
) -> bool {
    match result {
        Ok(r) => {
            if r.removed > 0 {
                tracing::info!(
                    removed = r.removed,
                    "pruned stale routes, neighbours or fdb entries"
                );
            }
            if r.repaired > 0 {
                tracing::warn!(
                    repaired = r.repaired,
                    "routes, neighbours or fdb entries were missing or changed; restored"
                );
            }
            true
        }
        Err(e) => {
            state.route_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot reconcile peer routes and neighbours");
            state.update(|i| i.last_error = Some(e.to_string()));
            false
        }
    }
}

/// Puts the subnet file `env` was written with back at `path` when it was removed or
/// changed behind the agent's back; a failure is said once (`failing`) and clears
/// readiness until the file is right again.
fn keep_file(env: &SubnetEnv, path: &std::path::Path, failing: &mut bool, state: &AgentState) {
    let on_disk = crate::subnet_env::read_file(path);
    let Some(drift) = crate::subnet_env::drift(env, &on_disk) else {
        *failing = false;
        return;
    };
    match env.write_atomic(path) {
        Ok(()) => {
            *failing = false;
            state.subnet_file_repairs.fetch_add(1, Ordering::Relaxed);
            state.ready.subnet_env.store(true, Ordering::Relaxed);
            tracing::warn!(file = %path.display(), "the subnet file was {drift} behind vxmesh's back; written again");
            state.event(
                "subnet_file_restored",
                format!("{} was {drift}", path.display()),
            );
        }
        Err(e) => {
            state.ready.subnet_env.store(false, Ordering::Relaxed);
            if !std::mem::replace(failing, true) {
                tracing::error!(file = %path.display(), error = %e, "the subnet file was {drift} and cannot be written again: pods cannot start on this node");
                state.update(|i| i.last_error = Some(format!("writing {}: {e}", path.display())));
            }
        }
    }
}

/// Shows one pool's usage in `slot` (status, /metrics), warning and recording an event
/// when it crosses into nearly full.
fn show_pool(
    alarm: &mut crate::pool::PoolAlarm,
    usage: crate::pool::PoolUsage,
    slot: &std::sync::Mutex<Option<crate::pool::PoolUsage>>,
    state: &AgentState,
) {
    if let Some(w) = alarm.observe(usage) {
        tracing::warn!("{w}");
        state.event("pool_nearly_full", w);
    }
    if let Ok(mut g) = slot.lock() {
        *g = Some(usage);
    }
}

/// Warns once about each newly rejected lease, and counts the warnings.
fn record_skips(skips: &[Skip], state: &AgentState) {
    for s in skips {
        tracing::warn!(key = %s.key, reason = s.rejection.reason.as_str(), "ignoring lease: {}", s.rejection.why);
        state.event(
            "peer_rejected",
            format!(
                "{}: {} ({})",
                s.key,
                s.rejection.why,
                s.rejection.reason.as_str()
            ),
        );
    }
    state
        .skipped_leases
        .fetch_add(skips.len() as u64, Ordering::Relaxed);
}

/// Rejections of leases naming this node's address, held back for [`HOLD_BACK`]: one
/// may be this node's own new lease, delivered by the watch before the lease task
/// reports it (after a loss to another node).
#[derive(Debug, Default)]
struct HeldBack(Vec<(Instant, Skip)>);

impl HeldBack {
    /// Holds back the skips that name this node; returns the others, to warn about.
    fn hold<P: PeerKind>(
        &mut self,
        skips: Vec<Skip>,
        peers: &PeerTable<P>,
        now: Instant,
    ) -> Vec<Skip> {
        let (held, others): (Vec<Skip>, Vec<Skip>) = skips
            .into_iter()
            .partition(|s| peers.names_this_node(&s.key));
        for s in held {
            tracing::debug!(key = %s.key, "a lease naming this node's address: judged again when the lease task reports this node's lease, or in {} s", HOLD_BACK.as_secs());
            self.0.push((now, s));
        }
        others
    }

    /// Warns about the held-back rejections that still stand: all of them (the lease
    /// task has reported this node's lease), or, with `now`, those held for
    /// [`HOLD_BACK`]. One that is no longer rejected (it was this node's own) is
    /// dropped without a word.
    fn release<P: PeerKind>(
        &mut self,
        peers: &PeerTable<P>,
        now: Option<Instant>,
        state: &AgentState,
    ) {
        if self.0.is_empty() {
            return;
        }
        let due = |at: &Instant| now.is_none_or(|n| n.duration_since(*at) >= HOLD_BACK);
        let (ripe, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(at, _)| due(at));
        self.0 = kept;
        let still: Vec<Skip> = ripe
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| peers.rejection(&s.key) == Some(&s.rejection))
            .collect();
        record_skips(&still, state);
    }
}

/// Records peer changes as events.
fn record_changes(changes: &[PeerChange], state: &AgentState) {
    for c in changes {
        match c {
            PeerChange::Added(p) => state.event(
                "peer_added",
                format!("{} via {} mac {}", p.subnet, p.public_ip, p.vtep_mac),
            ),
            PeerChange::Updated { old, new } => state.event(
                "peer_changed",
                format!(
                    "{}: {} mac {} -> {} mac {}",
                    new.subnet, old.public_ip, old.vtep_mac, new.public_ip, new.vtep_mac
                ),
            ),
            PeerChange::Removed(p) => {
                state.event("peer_removed", format!("{} via {}", p.subnet, p.public_ip))
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves (or a successor takes over).
pub async fn run(
    opts: AgentOptions,
    state: Arc<AgentState>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(opts, state, shutdown, Launch::default()).await
}

/// [`run`], with what systemd gave the process (stored descriptors, its socket).
pub async fn run_with(
    opts: AgentOptions,
    state: Arc<AgentState>,
    shutdown: impl Future<Output = ()>,
    launch: Launch,
) -> anyhow::Result<()> {
    let (stop, takeover_tx, takeover) = handover::stop_or_takeover(shutdown);
    let mut stop = Box::pin(stop);
    state.update(|i| {
        i.version = env!("CARGO_PKG_VERSION");
        i.dataplane = opts.dataplane.as_str();
        i.lease_ttl_secs = opts.lease_ttl.as_secs();
        i.tap = Some(opts.tap_name.to_string());
        i.etcd = Some(opts.etcd.describe());
    });
    let _ = state.lease.events.set(Arc::clone(&state.events));
    let _ = state.watch.events.set(Arc::clone(&state.events));
    let nl = Netlink::connect()?;
    // The IPv4 underlay. A host without one (no IPv4 default route or address) may
    // still run a node of an IPv6-only network: with an IPv6 default route or an
    // --iface the error waits for the config, and stands if it carries IPv4.
    let underlay = match resolve_underlay(&nl, &opts.underlay).await {
        Ok(u) => Ok(u),
        Err(e)
            if !opts.underlay.ifaces.is_empty()
                || !opts.underlay.iface_regexes.is_empty()
                || nl.default_route6_oif().await.ok().flatten().is_some() =>
        {
            tracing::warn!("no IPv4 underlay: {e:#}; an IPv6-only network can still run here, any other stops once the config is read");
            Err(e)
        }
        Err(e) => return Err(e),
    };

    let (reg, cfg) = match registry_and_config(&opts, &state, &mut stop).await {
        Some(x) => x,
        None => return Ok(()),
    };
    let Some(pool4) = cfg.ipv4 else {
        for n in &cfg.notes {
            tracing::warn!("network config: {n}");
        }
        let pool6 = cfg
            .ipv6
            .context("the network config carries neither IPv4 nor IPv6")?;
        return ipv6_only::run(
            &opts,
            state,
            &mut stop,
            nl,
            reg,
            cfg,
            pool6,
            launch,
            (takeover_tx, takeover),
        )
        .await;
    };
    let underlay = underlay?;
    underlay.announce();
    for n in &cfg.notes {
        tracing::warn!("network config: {n}");
    }
    let vni = cfg.backend.vni;
    let vtep_mac: MacAddr = crate::vtep_mac::derive(underlay.public_ip, vni.get());
    let mtu = cfg.backend.overlay_mtu(underlay.link.mtu);
    state.update(|i| {
        i.public_ip = Some(underlay.public_ip);
        i.iface = Some(underlay.link.name.clone());
        i.vtep_mac = Some(vtep_mac.to_string());
        i.vni = Some(vni.get());
        i.port = Some(cfg.backend.port);
        i.network = Some(pool4.network);
        i.mtu = Some(mtu);
        i.last_error = None;
    });
    tracing::info!(network = %pool4.network, pool = %pool4.describe_pool(), vni = vni.get(), port = cfg.backend.port, %vtep_mac, mtu, "network config");
    let public_ipv6 = lease_ipv6(&nl, &opts.underlay, &underlay, &cfg).await?;
    state.update(|i| i.public_ipv6 = public_ipv6);
    // The kernel devices' names hold the VNI (flannel's `flannel.<VNI>`,
    // `flannel-v6.<VNI>`): a VNI too long for them is refused here, before a lease
    // is claimed, not when the dataplane starts with the lease already published.
    if opts.dataplane == crate::node_dataplane::DataplaneKind::Kernel {
        crate::node_dataplane::kernel::device_name(vni.get())?;
    }
    if public_ipv6.is_some() {
        crate::node_dataplane::kernel::device6_name(vni.get())?;
        // IPv6 needs links of at least 1280 bytes: a smaller IPv6 device gets no
        // address, and the node would stop after claiming its lease.
        let mtu6 = crate::node_dataplane::kernel::mtu6(mtu);
        if mtu6 < 1280 {
            anyhow::bail!("dual stack needs an IPv6 overlay MTU of at least 1280 (IPv6's minimum), but the overlay MTU {mtu} leaves flannel-v6.{} {mtu6}: give the underlay (or Backend.MTU) at least 1350 bytes (50 for VXLAN, 20 more for its IPv6 header), or run IPv4 only", vni.get());
        }
    }
    // A Network holding the node's own underlay address would route the node's
    // VXLAN (and everything else to that address) into the overlay.
    for ip in [underlay.local_ip, underlay.public_ip] {
        if pool4.network.contains(ip) {
            anyhow::bail!("the network config's Network {} contains this node's underlay address {ip}: the pods' routes would take the node's own traffic; choose a Network outside the node addresses (docs/troubleshooting.md, \"public_ip_in_subnet\")", pool4.network);
        }
    }
    if let Some((ip6, pool)) = public_ipv6.zip(cfg.ipv6.as_ref()) {
        if pool.network.contains(ip6) {
            anyhow::bail!("the network config's IPv6Network {} contains this node's PublicIPv6 {ip6}: choose an IPv6Network outside the node addresses", pool.network);
        }
    }

    // A running vxmeshd (or systemd's store) may hand us its dataplane and lease.
    let me = handover::identity(
        &opts.tap_name,
        opts.dataplane,
        opts.tap_queues,
        opts.offloads,
        underlay.public_ip,
        pool4.network,
        vni.get(),
        cfg.backend.port,
        &opts.etcd_prefix,
        public_ipv6.is_some()
            && cfg.ipv6.is_some()
            && opts.dataplane == DataplaneKind::Userspace
            && opts.ipv6_dataplane == DataplaneKind::Userspace,
    );
    let mut ho = NodeHandover::acquire(me, launch, takeover_tx, &state).await?;

    let previous = crate::subnet_env::read_file(&opts.subnet_file)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let hint = previous.as_deref().and_then(SubnetEnv::subnet_from);
    let hint6 = previous
        .as_deref()
        .filter(|_| public_ipv6.is_some())
        .and_then(SubnetEnv::ipv6_subnet_from);
    let machine = match ho.inherited_lease() {
        // The handover carries the IPv4 subnet only: a dual-stack key is found again
        // by its PublicIP and re-put under a new etcd lease (the same key).
        Some((subnet, _)) if public_ipv6.is_some() => {
            tracing::info!(%subnet, "handed-over lease is dual stack: claiming its key again");
            LeaseMachine::new(cfg.clone(), underlay.public_ip, Some(subnet), random_seed())
                .with_ipv6_hint(hint6)
        }
        Some((subnet, id)) if pool4.fits(&subnet) => {
            LeaseMachine::holding(cfg.clone(), underlay.public_ip, subnet, id, random_seed())
        }
        // The config changed under the handover (SubnetLen, SubnetMin/Max): the lease
        // is claimed afresh as at a cold start, which moves the node to a subnet its
        // peers accept.
        Some((subnet, _)) => {
            tracing::warn!(%subnet, pool = %pool4.describe_pool(), "handed-over subnet does not fit the network config: claiming a lease that does");
            LeaseMachine::new(cfg.clone(), underlay.public_ip, Some(subnet), random_seed())
                .with_ipv6_hint(hint6)
        }
        None => LeaseMachine::new(cfg.clone(), underlay.public_ip, hint, random_seed())
            .with_ipv6_hint(hint6),
    };
    let mut attrs = LeaseAttrs::vxlan(underlay.public_ip, vni.get(), vtep_mac);
    if let Some(ip6) = public_ipv6 {
        attrs = attrs.with_ipv6(ip6, vni.get(), crate::vtep_mac::derive_v6(ip6, vni.get()));
    }
    let mut lease = LeaseLink::start(&reg, machine, attrs, opts.lease_ttl, &state);
    let Some(first) = lease.first(&mut stop).await? else {
        return Ok(());
    };
    let mut held_rx = lease.held.clone();

    let local = LocalVtep {
        vtep_mac,
        vni,
        port: cfg.backend.port,
        inner: Some(vxmesh_dataplane::fib::InnerCheck {
            network: pool4.network.addr(),
            network_len: pool4.network.prefix_len(),
            subnet_len: pool4.subnet_len,
        }),
        // With IPv6 in the threads: the IPv6 VtepMAC peers send to, and the same
        // anti-spoofing for inner IPv6 packets.
        v6: public_ipv6
            .zip(cfg.ipv6.as_ref())
            .filter(|_| {
                opts.dataplane == DataplaneKind::Userspace
                    && opts.ipv6_dataplane == DataplaneKind::Userspace
            })
            .map(|(ip6, pool)| vxmesh_dataplane::fib::LocalVtep6 {
                vtep_mac: crate::vtep_mac::derive_v6(ip6, vni.get()),
                inner: Some(vxmesh_dataplane::fib::InnerCheck6 {
                    network: pool.network.addr(),
                    network_len: pool.network.prefix_len(),
                    subnet_len: pool.subnet_len,
                }),
            }),
    };
    let setup = DataplaneSetup {
        local,
        mtu,
        local_ip: underlay.local_ip,
        underlay_index: underlay.link.index,
        device_name: opts.tap_name.clone(),
        offloads: opts.offloads,
        tx_sockets: opts.tx_sockets,
        tap_queues: opts.tap_queues,
        tap_txqueuelen: opts.tap_txqueuelen,
        vxlan_rcvbuf: opts.vxlan_rcvbuf,
        aqm: opts.aqm,
        engine_priority: opts.engine_priority,
        busy_poll: opts.busy_poll,
        egress_tunnel_gso: opts.egress_tunnel_gso,
        network: pool4.network,
        subnet_len: pool4.subnet_len,
        direct_routing: cfg.backend.direct_routing,
        ipv6: public_ipv6
            .zip(cfg.ipv6.as_ref())
            .map(|(ip6, pool)| crate::node_dataplane::Setup6 {
                local_ip: ip6,
                vtep_mac: crate::vtep_mac::derive_v6(ip6, vni.get()),
                network: pool.network,
                subnet_len: pool.subnet_len,
                in_threads: local.v6.is_some(),
            }),
    };
    let dp = ho
        .start_dataplane(opts.dataplane, &nl, &setup, &state)
        .await?;
    let rules = Rules {
        masquerade: opts.ip_masq,
        random_fully: opts.masq_random_fully,
        forward: opts.iptables_forward_rules,
        untrack: opts.vxlan_notrack.then_some(crate::masq::Untrack {
            local_ip: Some(underlay.local_ip),
            local_ipv6: public_ipv6,
            port: cfg.backend.port,
        }),
        underlay_tap: (opts.egress_tunnel_gso && opts.dataplane == DataplaneKind::Userspace)
            .then_some((underlay.local_ip, cfg.backend.port)),
        backend: if cfg.enable_nftables {
            Backend::Nftables
        } else {
            Backend::Iptables
        },
    };
    let ingress6 = ingress6::Ingress6::start(
        (opts.dataplane == DataplaneKind::Userspace)
            .then_some(())
            .and(dp.device6_index())
            .and(cfg.ipv6.as_ref())
            .map(|pool6| ingress6::Ingress6Setup {
                network: pool6.network,
                port: cfg.backend.port,
                every: opts.iptables_resync,
            }),
        held_rx.clone(),
        &state,
    );
    let mut node = Running {
        files: NodeFiles {
            network: pool4.network,
            ipv6_network: cfg.ipv6.as_ref().map(|p| p.network),
            mtu,
            ip_masq: opts.ip_masq,
            rules: watch::channel(rules).0,
            subnet_file: opts.subnet_file.clone(),
            written: None,
            failing: false,
        },
        nl,
        dp,
        pool_cfg: cfg.clone(),
        pool4,
        pool_alarm: crate::pool::PoolAlarm::default(),
        pool6_alarm: crate::pool::PoolAlarm::ipv6(),
        peers: PeerTable::new(
            PeerRules::from_config(&cfg).context("an IPv6-only network has no IPv4 peers")?,
            Some(LocalNode {
                public_ip: underlay.public_ip,
                vtep_mac,
                ipv6: public_ipv6.map(|ip6| (ip6, crate::vtep_mac::derive_v6(ip6, vni.get()))),
            }),
        ),
        own_key: OwnKeyWatch::new(reg.prefix(), NodeId::V4(underlay.public_ip)),
        registry: reg.clone(),
        own: first,
        lost_tx: lease.lost.clone(),
        moved_tx: lease.moved.clone(),
        underlay,
        underlay_gone: Outage::new("the underlay address"),
        ipv6_gone: false,
        synced: false,
        shown_rejections: None,
        passes: 0,
        listed: false,
        changed_since_trim: 0,
        mtu,
        held_back: HeldBack::default(),
        kind: opts.dataplane,
        setup,
        state: Arc::clone(&state),
        ingress6,
    };
    node.start(first).await?;
    let iptables = rules.any().then(|| {
        tokio::spawn(keep_iptables(
            node.files.rules.subscribe(),
            Some(pool4.network),
            node.dp
                .carries_ipv6()
                .then_some(())
                .and(node.files.ipv6_network),
            held_rx.clone(),
            opts.iptables_resync,
            Arc::clone(&state),
        ))
    });

    let blackhole = tokio::spawn(crate::blackhole::keep(
        node.nl.clone(),
        opts.ip_blackhole_route,
        node.dp.carries_ipv6() && node.files.ipv6_network.is_some(),
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

    // The dispatcher: every decision is in `Running`'s handlers and the pure cores.
    let result = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
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
                let (device, underlay) = match due {
                    // Without the watch's news the underlay is looked at every time.
                    CheckDue::Tick => {
                        ticks = ticks.wrapping_add(1);
                        (true, bg.link_news.is_none() || ticks % UNDERLAY_RECHECK_TICKS == 0)
                    }
                    CheckDue::News(LinkNews::Deleted(d)) => {
                        let ours = node.dp.owns_link(&d);
                        if ours {
                            tracing::debug!(index = d.index, name = %d.name, "an overlay device was deleted");
                        }
                        (ours, false)
                    }
                    CheckDue::News(LinkNews::Addresses) => (false, true),
                    CheckDue::News(LinkNews::Lost) => (true, true),
                    CheckDue::WatchEnded => {
                        tracing::warn!("the kernel's link announcements stopped; a deleted overlay device or a moved underlay address is noticed by the {}-s check", DEVICE_CHECK_EVERY.as_secs());
                        bg.link_news = None;
                        (false, false)
                    }
                };
                if device {
                    node.keep_subnet_file();
                    node.release_held_back(Some(Instant::now()));
                }
                let mut rebuild = if device {
                    match node.check_device().await {
                        Device::There => None,
                        Device::Gone => Some(Rebuild::Deleted),
                        Device::Gone6 => Some(Rebuild::Deleted6),
                    }
                } else {
                    None
                };
                if underlay && rebuild.is_none() {
                    rebuild = node.recheck_underlay(&opts.underlay).await;
                }
                if let Some(why) = rebuild.filter(|w| w.ipv6_alone()) {
                    if node.dp.ipv6_in_threads() {
                        // No IPv6 device: the threads' IPv6 sockets follow the
                        // PublicIPv6 with the whole dataplane.
                        rebuild = Some(why.whole());
                    } else {
                        match node.dp.restart6(&node.nl, &node.setup).await {
                        Ok(()) => {
                            node.device_rebuilt(why).await;
                            rebuild = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "cannot make the IPv6 device again alone; starting the whole dataplane again");
                            rebuild = Some(why.whole());
                        }
                    }
                    }
                }
                if let Some(why) = rebuild {
                    if why == Rebuild::Moved {
                        ho.moved(node.underlay.public_ip);
                    }
                    // Moved out and put back below; on failure there is no
                    // dataplane left to stop, so this returns from here.
                    let old = node.dp;
                    match ho
                        .rebuild_dataplane(old, node.kind, &node.nl, &node.setup, &state)
                        .await
                    {
                        Ok(dp) => {
                            node.dp = dp;
                            node.device_rebuilt(why).await;
                        }
                        Err(e) => {
                            state.ready.routes.store(false, Ordering::Relaxed);
                            bg.abort();
                            ho.abandon();
                            return Err(e.context(match why {
                                Rebuild::Deleted | Rebuild::Deleted6 => "the overlay device was deleted and the dataplane could not be started again; restart vxmeshd",
                                Rebuild::Moved | Rebuild::Moved6 => "the underlay address moved and the dataplane could not be started again on the new one; restart vxmeshd",
                            }));
                        }
                    }
                }
            }
            _ = bg.reconcile.tick() => node.reconcile().await,
        }
    };

    tracing::info!("stopping; the lease is kept for a restart");
    state.ready.routes.store(false, Ordering::Relaxed);
    bg.abort();
    let handed = takeover.lock().ok().and_then(|mut g| g.take());
    ho.stop(node.dp, handed).await;
    result
}

/// Why the device check may run now.
enum CheckDue {
    /// Its period came round.
    Tick,
    /// The kernel announced a deleted link (the check runs if it was ours), or that
    /// announcements were lost (it runs).
    News(LinkNews),
    /// The link watch ended: the period alone from now on.
    WatchEnded,
}

/// Waits for the next device check: the period, or news from the link watch
/// (`deletions`; without it, the period alone).
async fn device_check_due(
    tick: &mut tokio::time::Interval,
    deletions: &mut Option<mpsc::Receiver<LinkNews>>,
) -> CheckDue {
    let news = async {
        match deletions {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tick.tick() => CheckDue::Tick,
        n = news => n.map_or(CheckDue::WatchEnded, CheckDue::News),
    }
}

/// Why the dataplane is started again under the running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuild {
    /// Its device was deleted.
    Deleted,
    /// The underlay address it sends from moved.
    Moved,
    /// Dual stack: the IPv6 device alone was deleted; it alone is made again.
    Deleted6,
    /// Dual stack: the PublicIPv6 alone moved; the IPv6 device alone is made again.
    Moved6,
}

impl Rebuild {
    /// The IPv6 device alone is made again; the IPv4 path runs on.
    fn ipv6_alone(self) -> bool {
        matches!(self, Rebuild::Deleted6 | Rebuild::Moved6)
    }

    /// The same event for a restart of the whole dataplane (the IPv6 device could not
    /// be made again alone).
    fn whole(self) -> Rebuild {
        match self {
            Rebuild::Deleted | Rebuild::Deleted6 => Rebuild::Deleted,
            Rebuild::Moved | Rebuild::Moved6 => Rebuild::Moved,
        }
    }
}

/// What the periodic device check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    There,
    /// Deleted under the running agent: the dataplane is started again.
    Gone,
    /// Dual stack: the IPv6 device alone was deleted; it alone is made again.
    Gone6,
}

/// Where the node's subnet shows up on the node itself: the subnet file and the
/// masquerade rules.
#[derive(Debug)]
struct NodeFiles {
    network: Subnet,
    /// Dual stack: the IPv6 Network (FLANNEL_IPV6_NETWORK, when IPv6 is carried).
    ipv6_network: Option<Subnet6>,
    mtu: u32,
    ip_masq: bool,
    /// The masquerade and FORWARD rules this node keeps in place, shared with the
    /// resync task (they name the underlay address, so they change when it moves).
    rules: watch::Sender<Rules>,
    subnet_file: PathBuf,
    /// What the subnet file was last written with (kept in place from then on).
    written: Option<SubnetEnv>,
    /// Writing it back failed (said once).
    failing: bool,
}

/// The node once it runs: what the main loop's handlers act on.
struct Running {
    nl: Netlink,
    dp: NodeDataplane,
    state: Arc<AgentState>,
    files: NodeFiles,
    peers: PeerTable,
    /// The pool's bounds (for its usage) and the 90 % warning.
    pool_cfg: crate::config::NetworkConfig,
    /// Its IPv4 pool.
    pool4: Ipv4Pool,
    pool_alarm: crate::pool::PoolAlarm,
    pool6_alarm: crate::pool::PoolAlarm,
    own_key: OwnKeyWatch,
    /// The lease held now (or last, while re-acquiring).
    own: Held,
    /// Tells the lease task the lease is lost.
    lost_tx: mpsc::Sender<LeaseLoss>,
    /// Tells the lease task the lease's new value when the node's addresses moved.
    moved_tx: mpsc::Sender<LeaseAttrs>,
    /// The underlay the node runs on now.
    underlay: Underlay,
    /// The registry the tasks share (its connection is made again when the
    /// underlay moves).
    registry: Registry,
    /// Since when its address has been gone with nothing to replace it.
    underlay_gone: Outage,
    /// The PublicIPv6 is gone with nothing to replace it (said once).
    ipv6_gone: bool,
    /// Whether a registry event has been programmed yet (readiness).
    synced: bool,
    /// The rejections generation shown in /v1/status.
    shown_rejections: Option<u64>,
    /// Periodic reconcile passes made (which of them dump: [`periodic_check`]).
    passes: u32,
    /// Peer changes since the heap was last trimmed ([`TRIM_AFTER_CHANGES`]).
    changed_since_trim: usize,
    /// Whether a full listing was reconciled yet (the first one may not need a
    /// neighbour dump: [`NodeDataplane::first_check`]).
    listed: bool,
    mtu: u32,
    /// Rejections of leases naming this node's PublicIP, held back for
    /// [`HOLD_BACK`]: one may be this node's own new lease, delivered by the watch
    /// before the lease task reports it (after a loss to another node).
    held_back: HeldBack,
    /// What the dataplane was started as and from: to start it again if its
    /// device is deleted under the running agent.
    kind: DataplaneKind,
    setup: DataplaneSetup,
    /// The IPv6 device's ingress check (userspace dataplane, dual stack).
    ingress6: Option<ingress6::Ingress6>,
}

impl Running {
    /// Takes the first lease: device address, masquerade rules, subnet file, peers.
    async fn start(&mut self, first: Held) -> anyhow::Result<()> {
        self.take_subnet(first.key).await?;
        self.state.ready.subnet_env.store(true, Ordering::Relaxed);
        tracing::info!(subnet = %first.key, file = %self.files.subnet_file.display(), "subnet file written");
        let mut skips = Vec::new();
        let _ = self.peers.set_own(Some(first.key), &mut skips);
        record_skips(&skips, &self.state);
        self.held(first);
        Ok(())
    }

    /// Gives the node the subnets of `key`: the devices' addresses, masquerade
    /// rules, subnet file.
    async fn take_subnet(&mut self, key: LeaseKey) -> anyhow::Result<()> {
        let Some(subnet) = key.ipv4_subnet() else {
            anyhow::bail!("the lease {key} has no IPv4 subnet, and this node runs an IPv4 network");
        };
        let ipv6 = key.ipv6_subnet();
        self.dp.set_subnet(&self.nl, &subnet).await?;
        let carried6 = self.take_subnet6(ipv6).await?;
        let rules = *self.files.rules.borrow();
        if let Err(e) = crate::masq::apply(&self.files.network, &subnet, rules) {
            tracing::error!("cannot install the masquerade/forward rules: {e}");
            self.state.update(|i| i.last_error = Some(e.to_string()));
        }
        if let (Some(n6), Some(own6)) = (self.files.ipv6_network, carried6) {
            if let Err(e) = crate::masq::apply6(&n6, &own6, rules) {
                tracing::error!("cannot install the IPv6 masquerade/forward rules: {e}");
                self.state.update(|i| i.last_error = Some(e.to_string()));
            }
        }
        let env = SubnetEnv {
            ipv4: Some((self.files.network, subnet)),
            mtu: self.files.mtu,
            ipmasq: self.files.ip_masq,
            ipv6: self.files.ipv6_network.zip(carried6),
        };
        env.write_atomic(&self.files.subnet_file)
            .with_context(|| format!("writing {}", self.files.subnet_file.display()))?;
        self.files.written = Some(env);
        Ok(())
    }

    /// Puts the subnet file back when it was removed or changed behind the agent's
    /// back (a cleanup of /run, a script, an editor): CNI plugins read it for every
    /// pod, and without it no pod can start on the node. Checked with the devices.
    fn keep_subnet_file(&mut self) {
        // A successor taking over may be writing its own (another subnet, after a
        // config change): the file is its from now on.
        if self.state.handover_gate.is_up() {
            return;
        }
        if let Some(env) = self.files.written {
            keep_file(
                &env,
                &self.files.subnet_file,
                &mut self.files.failing,
                &self.state,
            );
        }
    }

    /// Gives the IPv6 device (dual stack) the lease's IPv6 VTEP
    /// address; returns the IPv6 subnet when the dataplane carries it (then the subnet
    /// file names it and pods get IPv6 addresses from it).
    async fn take_subnet6(&self, subnet: Option<Subnet6>) -> anyhow::Result<Option<Subnet6>> {
        let Some(v6) = subnet else { return Ok(None) };
        if self.dp.set_subnet6(&self.nl, &v6).await? {
            tracing::info!(ipv6_subnet = %v6, "IPv6 device address {}/128; pods get IPv6 addresses from {v6} (FLANNEL_IPV6_SUBNET)", v6.addr());
            Ok(Some(v6))
        } else {
            tracing::warn!(ipv6_subnet = %v6, "the lease's IPv6 subnet is {v6}; not carried: this node runs no IPv6 device (no PublicIPv6), so pods get no IPv6 address");
            Ok(None)
        }
    }

    /// Records a held lease (status, readiness, the own-key watch).
    fn held(&mut self, h: Held) {
        self.own = h;
        self.own_key.hold(&h.key, h.revision);
        self.state.ready.lease.store(true, Ordering::Relaxed);
        self.state.update(|i| {
            i.subnet = h.subnet();
            i.ipv6_subnet = h.ipv6();
            i.lease_id = Some(format!("{:x}", h.lease_id));
            i.reservation = h.lease_id == 0;
        });
    }

    /// The lease task acquired a lease (`Some`) or lost it (`None`).
    async fn on_lease(&mut self, held: Option<Held>) -> anyhow::Result<()> {
        let Some(h) = held else {
            // Lost: keep forwarding (pods keep working) until re-acquired.
            self.own_key.release();
            self.state.ready.lease.store(false, Ordering::Relaxed);
            self.state
                .event("lease_lost", format!("subnet {}", self.own.key));
            return Ok(());
        };
        if h.key != self.own.key {
            self.take_subnet(h.key).await?;
            let mut skips = Vec::new();
            let changes = self.peers.set_own(Some(h.key), &mut skips);
            record_skips(&skips, &self.state);
            record_changes(&changes, &self.state);
            program(&self.dp, &self.nl, &changes, &self.state);
            self.show_peers(None);
        }
        self.held(h);
        self.release_held_back(None);
        Ok(())
    }

    fn release_held_back(&mut self, now: Option<Instant>) {
        self.held_back.release(&self.peers, now, &self.state);
    }

    /// Registry events (one, or a burst that queued up): did we lose our lease, and
    /// what changes for the peers — judged, programmed and shown once for the burst.
    async fn on_registry(&mut self, events: &[WatchEvent]) {
        for ev in events {
            if let Some(loss) = self.own_key.handle(ev) {
                let _ = self.lost_tx.try_send(loss);
            }
        }
        let mut skips = Vec::new();
        let full_listing = events.iter().any(|e| matches!(e, WatchEvent::Snapshot(_)));
        let changes = self
            .peers
            .apply(events.iter().map(crate::peers::Update::from), &mut skips);
        let skips = self.held_back.hold(skips, &self.peers, Instant::now());
        record_skips(&skips, &self.state);
        record_changes(&changes, &self.state);
        self.changed_since_trim = self.changed_since_trim.saturating_add(changes.len());
        if full_listing {
            if let Err(e) = self.dp.clear_blocking_routes6(&self.nl, &self.peers).await {
                // The reconcile pass below tries again.
                tracing::warn!(error = %e, "cannot clear direct IPv6 routes in the overlay's way");
            }
        }
        let mut ok = program(&self.dp, &self.nl, &changes, &self.state);
        if full_listing {
            // The forwarding table rebuilt from the listing (a handed-over one may
            // hold peers that left meanwhile), and the devices checked against it.
            self.dp.publish(&self.peers);
            let check = if self.listed {
                NeighbourCheck::Dump
            } else {
                self.dp.first_check()
            };
            self.listed = true;
            // The pass checks every entry against the full set and makes what the
            // batch could not (an IPv6 overlay route behind a direct route left from
            // DirectRouting, say): its outcome is the routes' state.
            ok = reconcile(&self.nl, &self.dp, &self.peers, &self.state, check).await;
        }
        if !self.synced || !changes.is_empty() {
            self.synced = true;
            self.state.ready.routes.store(ok, Ordering::Relaxed);
        }
        self.show_peers((!full_listing).then_some(&changes[..]));
    }

    /// Shows the peers and the rejected leases in /v1/status and /metrics (the
    /// peers changed by `changes`, the batch just applied, or copied afresh without
    /// it; the rejections copied only when they changed).
    fn show_peers(&mut self, changes: Option<&[crate::peers::PeerChange]>) {
        self.state
            .show_peers(&self.peers, changes, &mut self.shown_rejections);
        // Not before the first listing is judged: the check would drop the peers
        // not yet read.
        if let Some(check) = self.ingress6.as_ref().filter(|_| self.listed) {
            check.publish(
                self.peers
                    .peers()
                    .filter_map(|p| p.ipv6.map(|h| (h.public_ipv6, h.subnet))),
            );
        }
        // A range count over the subnets the table keeps as keys come and go.
        let usage = self.peers.leased().usage(&self.pool4);
        show_pool(&mut self.pool_alarm, usage, &self.state.pool, &self.state);
        let Some(pool6) = self.pool_cfg.ipv6.as_ref() else {
            return;
        };
        let usage6 = self.peers.leased().usage6(pool6);
        show_pool(
            &mut self.pool6_alarm,
            usage6,
            &self.state.pool6,
            &self.state,
        );
    }

    /// Restores the overlay device's MAC (and every peer's state) if someone changed it;
    /// says whether the device is gone.
    async fn check_device(&mut self) -> Device {
        match self
            .dp
            .ensure_vtep_mac(
                &self.nl,
                self.setup.local.vtep_mac,
                self.setup.ipv6.as_ref().map(|v6| v6.vtep_mac),
                self.mtu,
            )
            .await
        {
            Ok(false) => Device::There,
            Ok(true) => {
                self.state.device_repairs.fetch_add(1, Ordering::Relaxed);
                // The MAC change flushed the device's neighbours: put them back.
                let ok = reconcile(
                    &self.nl,
                    &self.dp,
                    &self.peers,
                    &self.state,
                    NeighbourCheck::Lookup,
                )
                .await;
                self.state.ready.routes.store(ok, Ordering::Relaxed);
                Device::There
            }
            Err(crate::netlink::NetlinkError::NoSuchLink(which)) => {
                self.state.ready.routes.store(false, Ordering::Relaxed);
                if self.dp.only_device6_gone(&self.nl).await.unwrap_or(false) {
                    tracing::warn!(
                        gone = %which,
                        "the IPv6 overlay device was deleted under the running agent; making it again (the IPv4 path runs on)"
                    );
                    return Device::Gone6;
                }
                tracing::warn!(
                    device = %self.dp.device_name(&self.setup),
                    gone = %which,
                    "the overlay device was deleted under the running agent; starting the dataplane again on a new one"
                );
                Device::Gone
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check the overlay device");
                self.state.update(|i| i.last_error = Some(e.to_string()));
                Device::There
            }
        }
    }

    /// Looks whether the underlay addresses are still on their interface (at the
    /// kernel's address announcements, and once a minute). When one moved
    /// (renumbered, a DHCP lease or an IPv6 prefix that changed), the node follows,
    /// where flanneld needs a restart that gives it a new subnet: the lease is put
    /// again naming the new addresses (same subnet, so pods keep theirs), the rules
    /// name them, and the answer says whether the dataplane must start again on them.
    /// While the IPv4 address is gone with nothing to replace it, the node is not
    /// ready and says why (decision 0024).
    async fn recheck_underlay(&mut self, flags: &UnderlayFlags) -> Option<Rebuild> {
        let host = match host_of(&self.nl, flags).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot read the interfaces to check the underlay");
                return None;
            }
        };
        let moved4 = self.recheck_ipv4(flags, &host).await;
        let moved6 = self.recheck_ipv6(flags).await;
        if moved4.is_none() && moved6.is_none() {
            return None;
        }
        let ipv4_stayed = moved4.is_none();
        // Not ready until the dataplane runs on the new address with every peer
        // (`device_rebuilt`).
        self.state.ready.routes.store(false, Ordering::Relaxed);
        let old = self.underlay.clone();
        let old6 = self.setup.ipv6.as_ref().map(|v6| v6.local_ip);
        if let Some(u) = moved4 {
            self.underlay = u;
        }
        let new = self.underlay.clone();
        let new6 = moved6.or(old6);
        tracing::warn!(
            old_iface = %old.link.name, old_local_ip = %old.local_ip, old_public_ip = %old.public_ip,
            iface = %new.link.name, local_ip = %new.local_ip, public_ip = %new.public_ip,
            old_public_ipv6 = ?old6, public_ipv6 = ?new6,
            "the underlay address moved; following it (same subnet)"
        );
        let mut what = format!(
            "{} on {} → {} on {} (PublicIP {})",
            old.local_ip, old.link.name, new.local_ip, new.link.name, new.public_ip
        );
        if let (Some(o6), Some(n6)) = (old6, new6) {
            if o6 != n6 {
                what = format!("{what}; PublicIPv6 {o6} → {n6}");
            }
        }
        self.state.event("underlay_moved", what);
        self.state.underlay_moves.fetch_add(1, Ordering::Relaxed);
        self.state.update(|i| {
            i.public_ip = Some(new.public_ip);
            i.iface = Some(new.link.name.clone());
            i.public_ipv6 = new6;
        });
        // The etcd connection may leave from an address that is gone: its requests
        // would wait for their timeouts. The lease is put through a new one.
        if let Err(e) = self.registry.reconnect().await {
            tracing::warn!(error = %e, "cannot connect to etcd again from the new address; the old connection recovers on its own");
        }
        let vni = self.setup.local.vni.get();
        if new.public_ip != old.public_ip {
            // The VtepMAC is derived from the PublicIP (docs/decisions/0005): it
            // moves with it, so that a later restart or handover, which derives it
            // again, finds the lease, the device and the peers already agreeing.
            let mac = crate::vtep_mac::derive(new.public_ip, vni);
            self.setup.local.vtep_mac = mac;
            self.state.update(|i| i.vtep_mac = Some(mac.to_string()));
        }
        let ipv6 = new6.map(|ip6| (ip6, crate::vtep_mac::derive_v6(ip6, vni)));
        if let (Some(v6), Some((ip6, mac6))) = (self.setup.ipv6.as_mut(), ipv6) {
            v6.local_ip = ip6;
            v6.vtep_mac = mac6;
            // The threads take frames to this node's IPv6 VtepMAC: the one peers are
            // told from now on.
            if let Some(local6) = self.setup.local.v6.as_mut() {
                local6.vtep_mac = mac6;
            }
        }
        // Before the lease is put again: the put names the new address, and must
        // read as this node's, not as someone else's write on its key.
        self.own_key.set_node(NodeId::V4(new.public_ip));
        let local = LocalNode {
            public_ip: new.public_ip,
            vtep_mac: self.setup.local.vtep_mac,
            ipv6,
        };
        let mut skips = Vec::new();
        let changes = self.peers.set_local(Some(local), &mut skips);
        record_skips(&skips, &self.state);
        if !changes.is_empty() {
            // A peer that held the new address before is rejected now (or one on
            // the old address accepted): programmed with the rebuild below.
            record_changes(&changes, &self.state);
        }
        let mut attrs = LeaseAttrs::vxlan(new.public_ip, vni, self.setup.local.vtep_mac);
        if let Some((ip6, mac6)) = ipv6 {
            attrs = attrs.with_ipv6(ip6, vni, mac6);
        }
        if self.moved_tx.send(attrs).await.is_err() {
            tracing::error!("the lease task has ended; the lease still names the old address");
        }
        self.files.rules.send_modify(|rules| {
            if let Some(u) = rules.untrack.as_mut() {
                u.local_ip = Some(new.local_ip);
                if u.local_ipv6.is_some() {
                    u.local_ipv6 = new6;
                }
            }
            if let Some((ip, _)) = rules.underlay_tap.as_mut() {
                *ip = new.local_ip;
            }
        });
        self.setup.local_ip = new.local_ip;
        self.setup.underlay_index = new.link.index;
        // The IPv4 address stayed: the packet threads and the IPv4 device keep
        // sending from it, and only the IPv6 device follows the PublicIPv6.
        Some(if ipv4_stayed && self.dp.device6_index().is_some() {
            Rebuild::Moved6
        } else {
            Rebuild::Moved
        })
    }

    /// The IPv4 half of [`Running::recheck_underlay`]: the underlay it moved to.
    async fn recheck_ipv4(&mut self, flags: &UnderlayFlags, host: &Host) -> Option<Underlay> {
        let (was, index) = (self.underlay.local_ip, self.underlay.link.index);
        let name = self.underlay.link.name.clone();
        let choice = match crate::underlay::recheck(flags, host, index, was) {
            crate::underlay::Recheck::Unchanged => {
                if let Report::Ended { down, .. } = self.underlay_gone.succeeded(Instant::now()) {
                    tracing::info!(iface = %name, address = %was, "the underlay address is back after {:.1} s", down.as_secs_f64());
                    self.state
                        .ready
                        .underlay_lost
                        .store(false, Ordering::Relaxed);
                    self.state
                        .event("underlay_back", format!("{was} on {name} again"));
                }
                return None;
            }
            crate::underlay::Recheck::Gone(e) => {
                match self.underlay_gone.failed(Instant::now()) {
                    Report::Began => {
                        tracing::error!(iface = %name, address = %was, reason = %e, "the underlay address is gone from its interface and nothing can replace it: peers cannot reach this node; it follows the next address the flags choose");
                        self.state
                            .ready
                            .underlay_lost
                            .store(true, Ordering::Relaxed);
                        self.state
                            .event("underlay_lost", format!("{was} gone from {name}: {e}"));
                    }
                    Report::Lasts { down, .. } => {
                        tracing::warn!(iface = %name, address = %was, reason = %e, "the underlay address is still gone after {} s", down.as_secs());
                    }
                    Report::Ended { .. } | Report::Quiet => {}
                }
                return None;
            }
            crate::underlay::Recheck::Moved(c) => c,
        };
        let _ = self.underlay_gone.succeeded(Instant::now());
        self.state
            .ready
            .underlay_lost
            .store(false, Ordering::Relaxed);
        if let Some(ip) = [choice.local_ip, choice.public_ip]
            .into_iter()
            .find(|ip| self.pool4.network.contains(*ip))
        {
            tracing::error!(address = %ip, network = %self.pool4.network, "the underlay moved to an address inside the Network; not following it (pods' routes would take the node's own traffic)");
            return None;
        }
        match underlay_of(&self.nl, choice).await {
            Ok(u) => {
                u.announce();
                Some(u)
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the underlay moved, but its interface cannot be read; looking again");
                None
            }
        }
    }

    /// The IPv6 half (dual stack, the PublicIPv6 not given by `--public-ipv6`): the
    /// PublicIPv6 it moved to. With no global address left the old one stays
    /// advertised, and the log says so once.
    async fn recheck_ipv6(&mut self, flags: &UnderlayFlags) -> Option<std::net::Ipv6Addr> {
        let current = self.setup.ipv6.as_ref()?.local_ip;
        if flags.public_ipv6.is_some() {
            return None;
        }
        let addrs = match self.nl.ipv6_addresses(self.underlay.link.index).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the underlay's IPv6 addresses");
                return None;
            }
        };
        match crate::underlay::recheck_ipv6(None, &self.underlay.link.name, &addrs, current) {
            Ok(moved) => {
                self.ipv6_gone = false;
                moved.filter(|ip6| {
                    let inside = self.pool_cfg.ipv6.as_ref().is_some_and(|p| p.network.contains(*ip6));
                    if inside {
                        tracing::error!(address = %ip6, "the underlay's IPv6 address moved inside the IPv6Network; not following it");
                    }
                    !inside
                })
            }
            Err(e) => {
                if !std::mem::replace(&mut self.ipv6_gone, true) {
                    tracing::error!(public_ipv6 = %current, reason = %e, "the PublicIPv6 is gone from the underlay and nothing can replace it: peers' IPv6 pod traffic cannot reach this node; it follows the next global address");
                    self.state
                        .event("underlay_lost", format!("PublicIPv6 {current} gone: {e}"));
                }
                None
            }
        }
    }

    /// The dataplane was started again on a new device (the old one was deleted) or
    /// on a new underlay address: gives it the node's addresses, the peers' table,
    /// routes and neighbours.
    async fn device_rebuilt(&mut self, why: Rebuild) {
        let own = self.own;
        if let Err(e) = self.take_subnet(own.key).await {
            tracing::error!(error = %format!("{e:#}"), "cannot give the new overlay device its address");
            self.state.update(|i| i.last_error = Some(format!("{e:#}")));
        }
        self.dp.publish(&self.peers);
        let ok = reconcile(
            &self.nl,
            &self.dp,
            &self.peers,
            &self.state,
            NeighbourCheck::Lookup,
        )
        .await;
        self.state.ready.routes.store(ok, Ordering::Relaxed);
        let device = self.dp.device_name(&self.setup);
        let peers = self.peers.peers().count();
        match why {
            Rebuild::Deleted => {
                self.state.event(
                    "device_recreated",
                    format!(
                        "an overlay device was deleted under the running agent: {device}{} made again, carrying {peers} peers",
                        if self.dp.device6_index().is_some() { " and its IPv6 device" } else { "" },
                    ),
                );
                tracing::info!(%device, peers, routes_ok = ok, "overlay device re-created; peers programmed again");
            }
            Rebuild::Moved => {
                tracing::info!(%device, local_ip = %self.setup.local_ip, peers, routes_ok = ok, "dataplane started again on the new underlay address; peers programmed again");
            }
            Rebuild::Deleted6 => {
                self.state.event(
                    "device_recreated",
                    format!(
                        "the IPv6 overlay device was deleted under the running agent: made again alone (the IPv4 path ran on), carrying {peers} peers"
                    ),
                );
                tracing::info!(
                    peers,
                    routes_ok = ok,
                    "IPv6 overlay device re-created; peers' IPv6 halves programmed again"
                );
            }
            Rebuild::Moved6 => {
                let local6 = self.setup.ipv6.as_ref().map(|v6| v6.local_ip);
                tracing::info!(local_ipv6 = ?local6, peers, routes_ok = ok, "IPv6 overlay device made again on the new PublicIPv6 (the IPv4 path ran on); peers' IPv6 halves programmed again");
            }
        }
    }

    /// Puts back every peer's route and neighbour that went missing or changed, and
    /// prunes what no peer accounts for (a few dumps and lookups, one batch of
    /// repairs; see [`periodic_check`]). Not before the first listing: until then the
    /// peer set is not known.
    async fn reconcile(&mut self) {
        if !self.synced {
            return;
        }
        let check = periodic_check(self.passes);
        self.passes = self.passes.wrapping_add(1);
        let ok = reconcile(&self.nl, &self.dp, &self.peers, &self.state, check).await;
        if self.changed_since_trim >= TRIM_AFTER_CHANGES {
            // The burst is over (or has paused for a period): give its buffers back.
            self.changed_since_trim = 0;
            vxmesh_dataplane::sys::release_free_memory();
        }
        self.state.ready.routes.store(ok, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One periodic pass in ten dumps the neighbours (every 5 minutes at the default
    /// period); the first dump comes a whole cycle after the listing's.
    #[test]
    fn one_periodic_pass_in_ten_dumps() {
        let dumps: Vec<u32> = (0..40)
            .filter(|p| periodic_check(*p) == NeighbourCheck::Dump)
            .collect();
        assert_eq!(dumps, vec![9, 19, 29, 39]);
        // The count wraps without a panic (after 4,000 years of passes).
        let _ = periodic_check(u32::MAX);
        assert_eq!(periodic_check(0), NeighbourCheck::Lookup);
    }
}
