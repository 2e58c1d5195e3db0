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
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::NetworkConfig;
use crate::etcd_access::EtcdAccess;
pub use crate::handover::node::Launch;
use crate::handover::node::{self as handover, NodeHandover};
use crate::lease::{lease_key, LeaseAttrs};
use crate::lease_machine::{LeaseAction, LeaseEvent, LeaseMachine};
use crate::netlink::{LinkInfo, Netlink};
use crate::node_dataplane::{DataplaneKind, DataplaneSetup, NodeDataplane};
use crate::peers::{PeerChange, PeerTable, Skip};
use crate::registry::{Backoff, Registry, RegistryError, WatchEvent};
use crate::state::AgentState;
use crate::subnet::Subnet;
use crate::subnet_env::SubnetEnv;
use vxmesh_dataplane::fib::LocalVtep;
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::wire::MacAddr;

/// VXLAN over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const ENCAP_OVERHEAD: u32 = 50;
/// How often every route and neighbour is re-applied (repairs manual deletions).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How often the overlay device's MAC is checked (one netlink request).
pub const DEVICE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Everything `vxmeshd` is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Endpoints, TLS files and credentials, validated.
    pub etcd: EtcdAccess,
    pub etcd_prefix: String,
    pub iface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub tap_name: IfName,
    pub lease_ttl: Duration,
    pub tx_sockets: usize,
    pub tap_queues: usize,
    pub offloads: bool,
    pub dataplane: DataplaneKind,
    /// Masquerade pod traffic leaving the Network (and write FLANNEL_IPMASQ=true).
    pub ip_masq: bool,
}

/// The underlay this node sends VXLAN on.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: LinkInfo,
    pub public_ip: Ipv4Addr,
}

/// Finds the underlay interface and the PublicIP to advertise.
pub async fn resolve_underlay(
    nl: &Netlink,
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> anyhow::Result<Underlay> {
    let link = match iface {
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => nl.link_with_address(ip).await?,
            Err(_) => nl
                .link_by_name(s)
                .await?
                .with_context(|| format!("--iface {s}: no such interface (see `ip -br link`)"))?,
        },
        None => match public_ip {
            Some(ip) => match nl.link_with_address(ip).await {
                Ok(l) => l,
                Err(_) => nl.default_route_link().await?,
            },
            None => nl.default_route_link().await?,
        },
    };
    let public_ip = match public_ip {
        Some(ip) => ip,
        None => match iface.and_then(|s| s.parse::<Ipv4Addr>().ok()) {
            Some(ip) => ip,
            None => *link.ipv4.first().with_context(|| {
                format!(
                    "interface {} has no IPv4 address: pass --public-ip",
                    link.name
                )
            })?,
        },
    };
    Ok(Underlay { link, public_ip })
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
            let reg = Registry::connect_with(&opts.etcd, &opts.etcd_prefix).await?;
            let cfg = reg.network_config().await?;
            Ok::<_, RegistryError>((reg, cfg))
        };
        match attempt.await {
            Ok(x) => return Some(x),
            Err(e) => {
                let msg = e.to_string();
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
    pub subnet: Subnet,
    pub lease_id: i64,
}

/// Runs the lease machine against etcd: publishes every acquisition on `held_tx`,
/// keeps the lease alive, and re-acquires when `lost_rx` (or the keepalive) says
/// the lease is gone.
async fn lease_task(
    reg: Registry,
    mut machine: LeaseMachine,
    attrs: LeaseAttrs,
    ttl: Duration,
    held_tx: watch::Sender<Option<Held>>,
    mut lost_rx: mpsc::Receiver<String>,
    state: Arc<AgentState>,
) {
    let (ka_tx, mut ka_rx) = mpsc::channel::<String>(4);
    let mut keepalive: Option<JoinHandle<()>> = None;
    loop {
        match step(&reg, &mut machine, &attrs, ttl).await {
            Some(LeaseAction::Acquired {
                subnet,
                lease_id,
                changed_from,
            }) => {
                match changed_from {
                    Some(old) => tracing::error!(
                        old = %old, new = %subnet,
                        "lost subnet {old} to another node; now holding {subnet}: pods on this node must be recreated to get new addresses"
                    ),
                    None => {
                        tracing::info!(%subnet, lease = format!("{lease_id:x}"), ttl_secs = ttl.as_secs(), "holding subnet lease")
                    }
                }
                state
                    .lease_reacquisitions
                    .store(machine.reacquisitions(), Ordering::Relaxed);
                if let Some(k) = keepalive.take() {
                    k.abort();
                }
                let r = reg.clone();
                let tx = ka_tx.clone();
                let stats = Arc::clone(&state.lease);
                keepalive = Some(tokio::spawn(async move {
                    let why = r.keep_alive(lease_id, ttl, &stats).await;
                    let _ = tx.send(why).await;
                }));
                let _ = held_tx.send(Some(Held { subnet, lease_id }));
            }
            Some(LeaseAction::Exhausted(e)) => {
                tracing::error!("{e}");
                state.update(|i| i.last_error = Some(e.to_string()));
            }
            Some(LeaseAction::Wait { until }) => {
                let d = until.saturating_duration_since(Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    Some(why) = lost_rx.recv() => lost(&mut machine, &why, &held_tx),
                    Some(why) = ka_rx.recv() => lost(&mut machine, &why, &held_tx),
                }
            }
            Some(LeaseAction::Idle) => {
                tokio::select! {
                    Some(why) = lost_rx.recv() => lost(&mut machine, &why, &held_tx),
                    Some(why) = ka_rx.recv() => lost(&mut machine, &why, &held_tx),
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
/// a registry action was performed).
pub async fn step(
    reg: &Registry,
    machine: &mut LeaseMachine,
    attrs: &LeaseAttrs,
    ttl: Duration,
) -> Option<LeaseAction> {
    match machine.poll(Instant::now()) {
        LeaseAction::List => {
            let ev = match reg.list_subnets().await {
                Ok(l) => LeaseEvent::Listed(l.existing_leases()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list subnets");
                    LeaseEvent::RegistryError
                }
            };
            machine.handle(ev, Instant::now());
            None
        }
        LeaseAction::Claim(c) => {
            let ev = match reg.claim(&c, attrs, ttl).await {
                Ok(Some(lease_id)) => LeaseEvent::Claimed { lease_id },
                Ok(None) => {
                    tracing::info!(subnet = %c.subnet(), "subnet taken by another node meanwhile; trying the next candidate");
                    LeaseEvent::RaceLost
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a subnet");
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
    loop {
        match step(reg, machine, attrs, ttl).await {
            Some(LeaseAction::Acquired {
                subnet, lease_id, ..
            }) => return Ok(Held { subnet, lease_id }),
            Some(LeaseAction::Exhausted(e)) => return Err(e),
            Some(LeaseAction::Wait { until }) => {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await
            }
            Some(LeaseAction::Idle | LeaseAction::List | LeaseAction::Claim(_)) | None => {}
        }
    }
}

fn lost(machine: &mut LeaseMachine, why: &str, held_tx: &watch::Sender<Option<Held>>) {
    if machine.held().is_none() {
        return;
    }
    tracing::warn!("subnet lease lost ({why}); re-acquiring, preferring the same subnet");
    machine.handle(LeaseEvent::LeaseLost, Instant::now());
    let _ = held_tx.send(None);
}

/// Applies peer changes through the dataplane; `false` if any failed.
async fn program(
    nl: &Netlink,
    dp: &NodeDataplane,
    changes: &[PeerChange],
    state: &AgentState,
) -> bool {
    let mut ok = true;
    for c in changes {
        let r = match c {
            PeerChange::Added(p) => {
                tracing::info!(subnet = %p.subnet, public_ip = %p.public_ip, vtep_mac = %p.vtep_mac, "peer added");
                dp.add_peer(nl, p).await
            }
            PeerChange::Updated { old, new } => {
                tracing::info!(subnet = %new.subnet, public_ip = %new.public_ip, vtep_mac = %new.vtep_mac,
                    old_public_ip = %old.public_ip, old_vtep_mac = %old.vtep_mac, "peer changed");
                dp.update_peer(nl, old, new).await
            }
            PeerChange::Removed(p) => {
                tracing::info!(subnet = %p.subnet, public_ip = %p.public_ip, "peer removed");
                dp.remove_peer(nl, p).await
            }
        };
        if let Err(e) = r {
            ok = false;
            state.route_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot program peer");
            state.update(|i| i.last_error = Some(e.to_string()));
        }
    }
    ok
}

/// Removes per-peer state the full peer set does not account for (entries left on
/// a kernel device that outlived the agent); `false` if that failed.
async fn prune(nl: &Netlink, dp: &NodeDataplane, peers: &PeerTable, state: &AgentState) -> bool {
    match dp.prune(nl, peers).await {
        Ok(0) => true,
        Ok(n) => {
            tracing::info!(
                removed = n,
                "pruned stale routes, neighbours or fdb entries"
            );
            true
        }
        Err(e) => {
            state.route_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot prune stale peer state");
            state.update(|i| i.last_error = Some(e.to_string()));
            false
        }
    }
}

fn record_skips(skips: Vec<Skip>, state: &AgentState) {
    if skips.is_empty() {
        return;
    }
    for s in &skips {
        tracing::warn!(key = %s.key, "ignoring lease: {}", s.why);
    }
    state
        .skipped_leases
        .fetch_add(skips.len() as u64, Ordering::Relaxed);
    state.update(|i| {
        i.skipped.extend(skips.into_iter().map(Into::into));
        let n = i.skipped.len();
        if n > 32 {
            i.skipped.drain(..n - 32);
        }
    });
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
    let nl = Netlink::connect()?;
    let underlay = resolve_underlay(&nl, opts.iface.as_deref(), opts.public_ip).await?;
    tracing::info!(iface = %underlay.link.name, public_ip = %underlay.public_ip, mtu = underlay.link.mtu, "underlay");

    let (reg, cfg) = match registry_and_config(&opts, &state, &mut stop).await {
        Some(x) => x,
        None => return Ok(()),
    };
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
        i.network = Some(cfg.network);
        i.mtu = Some(mtu);
        i.last_error = None;
    });
    tracing::info!(network = %cfg.network, pool = %cfg.describe_pool(), vni = vni.get(), port = cfg.backend.port, %vtep_mac, mtu, "network config");

    // A running vxmeshd (or systemd's store) may hand us its dataplane and lease.
    let me = handover::identity(
        &opts.tap_name,
        opts.dataplane,
        opts.tap_queues,
        opts.offloads,
        underlay.public_ip,
        cfg.network,
        vni.get(),
        cfg.backend.port,
        &opts.etcd_prefix,
    );
    let mut ho = NodeHandover::acquire(me, launch, takeover_tx, &state).await?;

    let hint = std::fs::read_to_string(&opts.subnet_file)
        .ok()
        .and_then(|t| SubnetEnv::subnet_from(&t));
    let machine = match ho.inherited_lease() {
        Some((subnet, id)) => {
            LeaseMachine::holding(cfg.clone(), underlay.public_ip, subnet, id, random_seed())
        }
        None => LeaseMachine::new(cfg.clone(), underlay.public_ip, hint, random_seed()),
    };
    let attrs = LeaseAttrs::vxlan(underlay.public_ip, vni.get(), vtep_mac);
    let (held_tx, mut held_rx) = watch::channel(None::<Held>);
    let (lost_tx, lost_rx) = mpsc::channel::<String>(8);
    let lease = tokio::spawn(lease_task(
        reg.clone(),
        machine,
        attrs,
        opts.lease_ttl,
        held_tx,
        lost_rx,
        Arc::clone(&state),
    ));

    // Wait for the first lease.
    let first = loop {
        if let Some(h) = *held_rx.borrow_and_update() {
            break h;
        }
        tokio::select! {
            r = held_rx.changed() => if r.is_err() { anyhow::bail!("lease task ended") },
            _ = &mut stop => { lease.abort(); return Ok(()); }
        }
    };

    let local = LocalVtep {
        vtep_mac,
        vni,
        port: cfg.backend.port,
    };
    let setup = DataplaneSetup {
        local,
        mtu,
        public_ip: underlay.public_ip,
        underlay_index: underlay.link.index,
        device_name: opts.tap_name.clone(),
        offloads: opts.offloads,
        tx_sockets: opts.tx_sockets,
        tap_queues: opts.tap_queues,
    };
    let dp = ho
        .start_dataplane(opts.dataplane, &nl, &setup, &state)
        .await?;
    let env_for = |subnet: Subnet| SubnetEnv {
        network: cfg.network,
        subnet,
        mtu,
        ipmasq: opts.ip_masq,
    };
    let masq = |subnet: Subnet, state: &AgentState| {
        if opts.ip_masq {
            if let Err(e) = crate::masq::apply(&cfg.network, &subnet) {
                tracing::error!("cannot install masquerade rules: {e}");
                state.update(|i| i.last_error = Some(e.to_string()));
            }
        }
    };
    let mut own = first;
    dp.set_subnet(&nl, &own.subnet).await?;
    masq(own.subnet, &state);
    env_for(own.subnet)
        .write_atomic(&opts.subnet_file)
        .with_context(|| format!("writing {}", opts.subnet_file.display()))?;
    state.ready.subnet_env.store(true, Ordering::Relaxed);
    state.ready.lease.store(true, Ordering::Relaxed);
    state.update(|i| {
        i.subnet = Some(own.subnet);
        i.lease_id = Some(format!("{:x}", own.lease_id));
    });
    tracing::info!(subnet = %own.subnet, file = %opts.subnet_file.display(), "subnet file written");

    let mut peers = PeerTable::new(vni.get());
    let _ = peers.set_own(Some(own.subnet));
    let (wtx, mut wrx) = mpsc::channel::<WatchEvent>(256);
    let watch_reg = reg.clone();
    let watch_stats = Arc::clone(&state.watch);
    let watcher =
        tokio::spawn(async move { watch_reg.watch_subnets(None, wtx, &watch_stats).await });
    let own_key = |s: Subnet| lease_key(reg.prefix(), &s);
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.tick().await;
    let mut device_check = tokio::time::interval(DEVICE_CHECK_EVERY);
    device_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = false;

    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = wrx.recv() => {
                let Some(ev) = ev else { anyhow::bail!("registry watch ended") };
                let mut skips = Vec::new();
                let full_listing = matches!(ev, WatchEvent::Snapshot(_));
                let changes = match ev {
                    WatchEvent::Snapshot(l) => {
                        let entries: Vec<(String, Vec<u8>)> = l.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
                        if state.ready.lease.load(Ordering::Relaxed) && !entries.iter().any(|(k, _)| *k == own_key(own.subnet)) {
                            let _ = lost_tx.try_send(format!("our key {} is gone from etcd", own_key(own.subnet)));
                        }
                        peers.reset(&entries, &mut skips)
                    }
                    WatchEvent::Put { key, value } => {
                        if key == own_key(own.subnet) {
                            let ours = LeaseAttrs::parse(&value).is_ok_and(|a| a.public_ip == underlay.public_ip);
                            if !ours {
                                let _ = lost_tx.try_send(format!("our key {key} was overwritten by another node"));
                            }
                        }
                        peers.put(&key, &value, &mut skips).into_iter().collect()
                    }
                    WatchEvent::Delete { key } => {
                        if key == own_key(own.subnet) && state.ready.lease.load(Ordering::Relaxed) {
                            let _ = lost_tx.try_send(format!("our key {key} was deleted"));
                        }
                        peers.delete(&key).into_iter().collect()
                    }
                };
                record_skips(skips, &state);
                dp.publish(&peers);
                let mut ok = program(&nl, &dp, &changes, &state).await;
                if full_listing {
                    ok &= prune(&nl, &dp, &peers, &state).await;
                }
                if !synced || !changes.is_empty() {
                    synced = true;
                    state.ready.routes.store(ok, Ordering::Relaxed);
                }
                state.update(|i| i.peers = peers.peers().copied().collect());
            }
            r = held_rx.changed() => {
                if r.is_err() { anyhow::bail!("lease task ended") }
                let h = *held_rx.borrow_and_update();
                match h {
                    None => {
                        // Lost: keep forwarding (pods keep working) until re-acquired.
                        state.ready.lease.store(false, Ordering::Relaxed);
                    }
                    Some(h) => {
                        if h.subnet != own.subnet {
                            dp.set_subnet(&nl, &h.subnet).await?;
                            masq(h.subnet, &state);
                            env_for(h.subnet).write_atomic(&opts.subnet_file)?;
                            let changes = peers.set_own(Some(h.subnet));
                            dp.publish(&peers);
                            program(&nl, &dp, &changes, &state).await;
                        }
                        own = h;
                        state.ready.lease.store(true, Ordering::Relaxed);
                        state.update(|i| {
                            i.subnet = Some(h.subnet);
                            i.lease_id = Some(format!("{:x}", h.lease_id));
                        });
                    }
                }
            }
            _ = device_check.tick() => {
                match dp.ensure_vtep_mac(&nl, vtep_mac, mtu).await {
                    Ok(false) => {}
                    Ok(true) => {
                        state.device_repairs.fetch_add(1, Ordering::Relaxed);
                        let all: Vec<PeerChange> = peers.peers().copied().map(PeerChange::Added).collect();
                        let ok = program(&nl, &dp, &all, &state).await;
                        state.ready.routes.store(ok, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot check the overlay device");
                        state.update(|i| i.last_error = Some(e.to_string()));
                    }
                }
            }
            _ = reconcile.tick() => {
                let mut ok = true;
                for p in peers.peers() {
                    if let Err(e) = dp.add_peer(&nl, p).await {
                        ok = false;
                        state.route_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, subnet = %p.subnet, "cannot re-apply peer route");
                    }
                }
                if synced {
                    ok &= prune(&nl, &dp, &peers, &state).await;
                    state.ready.routes.store(ok, Ordering::Relaxed);
                }
            }
        }
    }

    tracing::info!("stopping; the lease is kept for a restart");
    state.ready.routes.store(false, Ordering::Relaxed);
    watcher.abort();
    lease.abort();
    let handed = takeover.lock().ok().and_then(|mut g| g.take());
    ho.stop(dp, handed).await;
    Ok(())
}
