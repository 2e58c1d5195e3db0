//! The agent's side of handovers for one vxmeshd process: what to take over at
//! start, serving a successor while running, systemd notifications (READY=1,
//! WATCHDOG=1, STOPPING=1, the descriptor store), and what to leave at stop.
//!
//! The agent calls, in order: [`NodeHandover::acquire`] (after reading the network
//! config), [`NodeHandover::inherited_lease`] (to seed the lease machine),
//! [`NodeHandover::start_dataplane`] (instead of a plain start), and
//! [`NodeHandover::stop`] after its loop. Its stop future comes from
//! [`stop_or_takeover`], which also fires when a successor has taken over.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    acquire, bind_when_free, socket_name, store_gap, unix_ms, Acquired, Identity, Pending, Running,
    Server, StartInfo, StateFile, STATE_FD_NAME,
};
use crate::netlink::Netlink;
use crate::node_dataplane::{DataplaneKind, DataplaneSetup, NodeDataplane};
use crate::sd_notify::Notifier;
use crate::state::AgentState;
use crate::subnet::Subnet;

/// How often the state file in systemd's store is refreshed (only rewritten when
/// it changed): what a crash leaves for the next start.
const STATE_REFRESH: Duration = Duration::from_secs(1);
/// How long a start retries a TAP or port still held by descriptors it just asked
/// systemd to drop.
const STORE_DROP_WAIT: Duration = Duration::from_secs(3);

/// What `main` hands the agent: descriptors systemd passed back, and its socket.
#[derive(Debug, Default)]
pub struct Launch {
    pub stored_fds: Vec<(String, OwnedFd)>,
    pub notifier: Option<Notifier>,
}

/// Where a takeover request lands until the agent's loop has ended.
pub type TakeoverSlot = Arc<Mutex<Option<Pending>>>;

/// The agent's stop future: `shutdown` (a signal), or a successor taking over
/// (then the request is left in the returned slot).
pub fn stop_or_takeover(
    shutdown: impl Future<Output = ()>,
) -> (
    impl Future<Output = ()>,
    mpsc::Sender<Pending>,
    TakeoverSlot,
) {
    let (tx, mut rx) = mpsc::channel::<Pending>(1);
    let slot: TakeoverSlot = Arc::new(Mutex::new(None));
    let s = Arc::clone(&slot);
    let fut = async move {
        tokio::select! {
            _ = shutdown => {}
            p = rx.recv() => {
                if let (Some(p), Ok(mut g)) = (p, s.lock()) {
                    tracing::info!("a successor takes the dataplane over (or asked us to release it); stopping without touching the TAP, routes or lease");
                    *g = Some(p);
                }
            }
        }
    };
    (fut, tx, slot)
}

/// See the module documentation.
#[derive(Debug)]
pub struct NodeHandover {
    me: Identity,
    notifier: Option<Arc<Notifier>>,
    server: Arc<Server>,
    acquired: Option<Acquired>,
    state_file: Option<Arc<Mutex<StateFile>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandover {
    /// Finds what to take over (systemd's store, a running vxmeshd, or nothing).
    /// Fails — and the caller must exit — when a running vxmeshd refuses us.
    pub async fn acquire(
        me: Identity,
        launch: Launch,
        takeover: mpsc::Sender<Pending>,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<NodeHandover> {
        state.update(|i| i.build = me.build.clone());
        let notifier = launch.notifier.map(Arc::new);
        let n = notifier.clone();
        let who = me.clone();
        let acquired =
            tokio::task::spawn_blocking(move || acquire(&who, launch.stored_fds, n.as_deref()))
                .await
                .context("handover task")??;
        let server = Server::new(me.clone(), Arc::clone(state), takeover);
        let tasks: Vec<JoinHandle<()>> = notifier.as_ref().and_then(watchdog).into_iter().collect();
        Ok(NodeHandover {
            me,
            notifier,
            server,
            acquired: Some(acquired),
            state_file: None,
            tasks,
        })
    }

    /// The lease the previous vxmeshd held, if we take its dataplane over.
    pub fn inherited_lease(&self) -> Option<(Subnet, i64)> {
        self.acquired
            .as_ref()?
            .inherited
            .as_ref()
            .and_then(|i| i.state.lease)
    }

    /// Starts the dataplane: on the inherited descriptors (then lets the old
    /// process stop), or cold. Then serves successors and, under systemd, stores
    /// the descriptors and says READY=1 once routes are programmed.
    pub async fn start_dataplane(
        &mut self,
        kind: DataplaneKind,
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<NodeDataplane> {
        let acq = self
            .acquired
            .take()
            .context("internal: start_dataplane called twice")?;
        let mut info = StartInfo::default();
        let mut listener = acq.listener;
        let mut state_file = acq.state_file.map(StateFile::from_file);
        let (dp, handovers, cold_starts) = match acq.inherited {
            Some(inh) => {
                let super::Inherited {
                    state: old,
                    fds,
                    how,
                    version,
                    session,
                } = inh;
                let nfds = u32::try_from(fds.count()).unwrap_or(u32::MAX);
                let t = Instant::now();
                let started_ms = unix_ms();
                let dp =
                    match NodeDataplane::adopt(nl, setup, state, fds, &old.peers, old.tap_offloads)
                        .await
                    {
                        Ok(dp) => dp,
                        Err(e) => {
                            if let Some(s) = session {
                                s.abort(&format!("{e:#}"));
                            }
                            return Err(e.context("taking over the running dataplane"));
                        }
                    };
                let fin = match session {
                    Some(s) => tokio::task::spawn_blocking(move || s.finish(t))
                        .await
                        .context("handover task")??,
                    None => super::Finished {
                        gap: store_gap(&old, started_ms),
                        ..Default::default()
                    },
                };
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                info = StartInfo {
                    how,
                    from_pid: Some(old.pid),
                    from_build: Some(old.build.clone()),
                    protocol_version: Some(version),
                    fds_taken_over: nfds,
                    gap_ms: fin.gap.map(ms),
                    overlap_ms: fin.overlap.map(ms),
                    old_stop_ms: fin.old_stop.map(ms),
                    ..info
                };
                tracing::info!(
                    how,
                    from_pid = old.pid,
                    from_build = %old.build,
                    fds = nfds,
                    peers = old.peers.len(),
                    gap_ms = ?info.gap_ms,
                    overlap_ms = ?info.overlap_ms,
                    old_stop_ms = ?info.old_stop_ms,
                    "took the dataplane over"
                );
                state.event(
                    "handover_in",
                    format!(
                        "{how} from pid {} (build {}): {nfds} descriptors, {} peers, gap {}",
                        old.pid,
                        old.build,
                        old.peers.len(),
                        info.gap_ms
                            .map(|g| format!("{g:.1} ms"))
                            .unwrap_or_else(|| "unknown".into())
                    ),
                );
                (dp, old.handovers.saturating_add(1), old.cold_starts)
            }
            None => {
                let wait = if acq.dropped_store {
                    STORE_DROP_WAIT
                } else {
                    Duration::ZERO
                };
                let (dp, adopted) = NodeDataplane::start(kind, nl, setup, state, wait).await?;
                info.how = "cold";
                info.adopted_tap = adopted;
                info.cold_reason = acq.cold_reason;
                state.event(
                    "cold_start",
                    format!(
                        "{} dataplane; {}; {}",
                        kind.as_str(),
                        if adopted {
                            "attached to the TAP an earlier run left"
                        } else {
                            "new device"
                        },
                        info.cold_reason
                            .as_deref()
                            .unwrap_or("no vxmeshd to take over from")
                    ),
                );
                (dp, acq.handovers, acq.cold_starts.saturating_add(1))
            }
        };
        info.handovers_total = handovers;
        info.cold_starts_total = cold_starts;
        if let Ok(mut g) = state.start.lock() {
            *g = info;
        }

        self.serve_running(&dp, setup, handovers, cold_starts)?;
        // The old process's listener came with the offer; if not, its name is free
        // once the old process has exited.
        if listener.is_none() {
            let name = socket_name(&self.me.tap);
            listener = Some(
                tokio::task::spawn_blocking(move || bind_when_free(&name, super::STEP_TIMEOUT))
                    .await
                    .context("handover task")??,
            );
        }
        if let Some(l) = listener {
            self.server
                .serve(l)
                .context("starting the handover listener")?;
        }

        if let (Some(n), Some(u)) = (&self.notifier, dp.userspace()) {
            let file = match state_file.take() {
                Some(f) => f,
                None => StateFile::create().context("creating the state file for systemd")?,
            };
            let file = Arc::new(Mutex::new(file));
            refresh(&self.server, &file, self.me.versions);
            let stored = store_fds(n, u);
            if let Ok(g) = file.lock() {
                if let Err(e) = n.store_fds(STATE_FD_NAME, &[g.as_fd()]) {
                    tracing::warn!(error = %e, "cannot store the state file in systemd's store");
                }
            }
            tracing::info!(
                fds = stored + 1,
                "descriptors kept in systemd's store: a restart (or a crash) takes them back"
            );
            let (server, f, v) = (
                Arc::clone(&self.server),
                Arc::clone(&file),
                self.me.versions,
            );
            self.tasks.push(tokio::spawn(async move {
                let mut t = tokio::time::interval(STATE_REFRESH);
                loop {
                    t.tick().await;
                    refresh(&server, &f, v);
                }
            }));
            self.state_file = Some(file);
        }
        if let Some(n) = &self.notifier {
            self.tasks
                .push(tokio::spawn(notify_ready(Arc::clone(n), Arc::clone(state))));
        }
        Ok(dp)
    }

    /// What a successor is offered: second descriptors of the running userspace
    /// dataplane (the kernel dataplane has nothing to hand on).
    fn serve_running(
        &self,
        dp: &NodeDataplane,
        setup: &DataplaneSetup,
        handovers: u32,
        cold_starts: u32,
    ) -> anyhow::Result<()> {
        let Some(u) = dp.userspace() else {
            return Ok(());
        };
        let f = u.handover_fds();
        let fds = super::DataplaneFds {
            taps: f
                .taps
                .iter()
                .map(|x| x.try_clone())
                .collect::<std::io::Result<_>>()?,
            udp_rx: f.udp_rx.try_clone()?,
            udp_rx6: f.udp_rx6.as_ref().map(|x| x.try_clone()).transpose()?,
            udp_tx: f
                .udp_tx
                .iter()
                .map(|x| x.try_clone())
                .collect::<std::io::Result<_>>()?,
        };
        self.server.set_running(Some(Running {
            fds,
            vtep_mac: setup.local.vtep_mac,
            mtu: setup.mtu,
            tap_offloads: u.tap_offloads(),
            handovers,
            cold_starts,
        }));
        Ok(())
    }

    /// The overlay device was deleted under the running agent: stops `old` and
    /// starts the dataplane again from `setup` (a new device, new sockets), as a
    /// cold start would. Every copy of the old descriptors goes first — the one a
    /// successor would be offered and systemd's store — so the VXLAN port is free,
    /// and the new ones take their place. The caller gives the new device its
    /// address and peers.
    pub async fn rebuild_dataplane(
        &self,
        old: NodeDataplane,
        kind: DataplaneKind,
        nl: &Netlink,
        setup: &DataplaneSetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<NodeDataplane> {
        self.server.set_running(None);
        if let (Some(n), Some(u)) = (&self.notifier, old.userspace()) {
            for (role, _) in u.handover_fds().with_roles() {
                if let Err(e) = n.remove_fds(&role.store_name()) {
                    tracing::warn!(error = %e, "cannot drop a descriptor from systemd's store");
                }
            }
        }
        let took = old.discard();
        // systemd closes what it was asked to drop on its own time.
        let wait = if self.notifier.is_some() {
            STORE_DROP_WAIT
        } else {
            Duration::ZERO
        };
        let (dp, _) = NodeDataplane::start(kind, nl, setup, state, wait).await?;
        let st = state.start_info();
        self.serve_running(&dp, setup, st.handovers_total, st.cold_starts_total)?;
        if let (Some(n), Some(u)) = (&self.notifier, dp.userspace()) {
            let stored = store_fds(n, u);
            tracing::info!(
                fds = stored,
                "the new dataplane's descriptors are in systemd's store"
            );
        }
        tracing::info!(
            old_stop_ms = took.as_secs_f64() * 1000.0,
            "{} dataplane started again",
            kind.as_str()
        );
        Ok(dp)
    }

    /// The underlay moved to PublicIP `ip`: a successor must name it.
    pub fn moved(&self, ip: std::net::Ipv4Addr) {
        self.server.set_public_ip(ip);
    }

    /// The agent ends without a dataplane (one could not be started again after its
    /// device was deleted): nothing is left to hand on.
    pub fn abandon(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(n) = &self.notifier {
            let _ = n.notify("STOPPING=1");
        }
        self.server.set_running(None);
    }

    /// After the agent's loop: hand on (a successor took over: stop our threads,
    /// tell it) or stop (our threads stop; the TAP and its routes stay; under
    /// systemd the state file says when, for the next start).
    pub async fn stop(self, dp: NodeDataplane, takeover: Option<Pending>) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(p) = takeover {
            let took = dp.stop();
            let _ = tokio::task::spawn_blocking(move || p.stopped(took)).await;
            return;
        }
        if let Some(n) = &self.notifier {
            let _ = n.notify("STOPPING=1");
        }
        let last = self.server.snapshot(false);
        self.server.set_running(None);
        let took = dp.stop();
        tracing::info!(
            took_ms = took.as_secs_f64() * 1000.0,
            "dataplane threads stopped"
        );
        if let (Some(f), Some(mut s)) = (&self.state_file, last) {
            s.stopped = true;
            s.at_ms = unix_ms();
            let v = s.stored_version(self.me.versions);
            if let Ok(mut g) = f.lock() {
                if let Err(e) = g.write(v, &s.for_version(v)) {
                    tracing::warn!(error = %e, "cannot write the final state for systemd's store");
                }
            }
        }
    }
}

/// WATCHDOG=1 from the control loop's runtime from now on, when systemd asks for it
/// (a start that waits for etcd is bounded by TimeoutStartSec=).
fn watchdog(n: &Arc<Notifier>) -> Option<JoinHandle<()>> {
    let var = |k| std::env::var(k).ok();
    let every = crate::sd_notify::watchdog_interval(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )?;
    let n = Arc::clone(n);
    Some(tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        loop {
            t.tick().await;
            let _ = n.notify("WATCHDOG=1");
        }
    }))
}

/// systemd's side of a node with no dataplane to hand over: an IPv6-only network's,
/// whose pods' traffic the kernel's `flannel-v6.<VNI>` carries and which outlives any
/// process (docs/decisions/0030). READY=1 once lease, routes and subnet file are in
/// place, WATCHDOG=1, STOPPING=1 at the end, as [`NodeHandover`] says them; and what
/// systemd's descriptor store kept from an earlier run of another kind (an IPv4 or
/// dual-stack node's TAP and sockets) is dropped, so that it is neither kept open nor
/// handed to a later start.
#[derive(Debug)]
pub struct Notifications {
    notifier: Option<Arc<Notifier>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Notifications {
    pub fn start(launch: Launch, state: &Arc<AgentState>) -> Notifications {
        let notifier = launch.notifier.map(Arc::new);
        let mut names: Vec<String> = launch.stored_fds.into_iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        if !names.is_empty() {
            tracing::info!(?names, "dropping what systemd's descriptor store kept from an earlier run: an IPv6-only node hands nothing over");
            for name in &names {
                let Some(n) = &notifier else { break };
                if let Err(e) = n.remove_fds(name) {
                    tracing::warn!(error = %e, name, "cannot drop a descriptor from systemd's store");
                }
            }
        }
        // Always cold: /v1/status and vxmesh_dataplane_start_info say so, and why
        // when something was there.
        if let Ok(mut g) = state.start.lock() {
            *g = StartInfo {
                how: "cold",
                cold_reason: (!names.is_empty()).then(|| {
                    "an IPv6-only node takes nothing over: the descriptors systemd kept were dropped".to_string()
                }),
                cold_starts_total: 1,
                ..StartInfo::default()
            };
        }
        let mut tasks = Vec::new();
        if let Some(n) = &notifier {
            tasks.extend(watchdog(n));
            tasks.push(tokio::spawn(notify_ready(Arc::clone(n), Arc::clone(state))));
        }
        Notifications { notifier, tasks }
    }

    /// The agent stops: STOPPING=1.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(n) = &self.notifier {
            let _ = n.notify("STOPPING=1");
        }
    }
}

/// An IPv6-only node's hold on its node: the handover socket name bound as every
/// vxmeshd binds it, so that a second vxmeshd started on the node (by hand, a second
/// unit) meets this one and is refused (`decide::answer_hello`: `me` is an
/// [`identity_ipv6_only`], which has nothing to hand over) instead of running beside it —
/// two agents would each put the lease under their own etcd lease and program the
/// same device — and `vxmeshctl cleanup-tap` sees that a vxmeshd runs. A vxmeshd
/// already running there is asked as any successor asks: it refuses (it keeps
/// running; this start fails with its reason), or, a build with no common protocol
/// version, releases the node and exits. Nothing is handed over either way.
pub async fn hold_ipv6_only(
    me: Identity,
    takeover: mpsc::Sender<Pending>,
    state: &Arc<AgentState>,
) -> anyhow::Result<()> {
    let who = me.clone();
    let acquired = tokio::task::spawn_blocking(move || acquire(&who, Vec::new(), None))
        .await
        .context("handover task")??;
    if let Some(inh) = acquired.inherited {
        // A running vxmeshd never offers to an IPv6-only node's fingerprint (its
        // dataplane and network differ); should one, it keeps its dataplane.
        if let Some(s) = inh.session {
            s.abort("an IPv6-only node takes no dataplane over");
        }
        anyhow::bail!(
            "vxmeshd pid {} offered its dataplane of {} to this node of an IPv6-only network, which has no use for it: stop it first (systemctl stop vxmeshd)",
            inh.state.pid,
            me.tap
        );
    }
    if let Some(why) = &acquired.cold_reason {
        tracing::warn!("{why}; it released the node to this one");
    }
    let listener = match acquired.listener {
        Some(l) => l,
        None => {
            let name = socket_name(&me.tap);
            tokio::task::spawn_blocking(move || bind_when_free(&name, super::STEP_TIMEOUT))
                .await
                .context("handover task")??
        }
    };
    Server::new(me, Arc::clone(state), takeover)
        .serve(listener)
        .context("starting the handover listener")?;
    Ok(())
}

/// Puts the userspace dataplane's descriptors in systemd's store; how many went in.
fn store_fds(n: &Notifier, u: &crate::node_dataplane::userspace::Userspace) -> usize {
    let mut stored = 0;
    for (role, fd) in u.handover_fds().with_roles() {
        match n.store_fds(&role.store_name(), &[fd]) {
            Ok(()) => stored += 1,
            Err(e) => {
                tracing::warn!(error = %e, "cannot store a descriptor in systemd's store")
            }
        }
    }
    stored
}

/// Writes the running dataplane's state into the store's file, at the oldest version
/// that carries it ([`super::wire::DataplaneState::stored_version`]).
fn refresh(server: &Server, file: &Mutex<StateFile>, versions: super::wire::Versions) {
    if let (Some(s), Ok(mut g)) = (server.snapshot(false), file.lock()) {
        let v = s.stored_version(versions);
        if let Err(e) = g.write(v, &s.for_version(v)) {
            tracing::warn!(error = %e, "cannot refresh the state file in systemd's store");
        }
    }
}

/// READY=1 once lease, routes and subnet file are in place (what `Type=notify`
/// units, flanneld's included, wait for), with a STATUS line.
async fn notify_ready(n: Arc<Notifier>, state: Arc<AgentState>) {
    let mut t = tokio::time::interval(Duration::from_millis(20));
    loop {
        t.tick().await;
        if state.ready.ready() {
            let i = state.info();
            let st = state.start_info();
            // An IPv6-only node's subnet and peers are IPv6 ones.
            let subnet = match (i.subnet, i.ipv6_subnet) {
                (Some(s), _) => s.to_string(),
                (None, Some(s6)) => s6.to_string(),
                (None, None) => String::new(),
            };
            let msg = format!(
                "READY=1\nSTATUS=forwarding: subnet {subnet}, {} peers, started {}",
                i.peers.len() + i.ipv6_only_peers.len(),
                st.how
            );
            if let Err(e) = n.notify(&msg) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
            return;
        }
    }
}

/// The fingerprint of a node of an IPv6-only network: the kernel's device, no IPv4
/// network and no PublicIP ([`super::wire::Fingerprint::ipv6_only`]).
pub fn identity_ipv6_only(
    tap: &vxmesh_dataplane::ifname::IfName,
    vni: u32,
    port: u16,
    etcd_prefix: &str,
) -> Identity {
    identity(
        tap,
        DataplaneKind::Kernel,
        1,
        false,
        std::net::Ipv4Addr::UNSPECIFIED,
        Subnet::ALL,
        vni,
        port,
        etcd_prefix,
        false,
    )
}

/// The fingerprint of this vxmeshd's dataplane: what a successor must match.
#[allow(clippy::too_many_arguments)]
pub fn identity(
    tap: &vxmesh_dataplane::ifname::IfName,
    kind: DataplaneKind,
    tap_queues: usize,
    offloads: bool,
    public_ip: std::net::Ipv4Addr,
    network: Subnet,
    vni: u32,
    port: u16,
    etcd_prefix: &str,
    ipv6_in_threads: bool,
) -> Identity {
    Identity {
        fingerprint: super::wire::Fingerprint {
            tap: tap.to_string(),
            dataplane: kind.as_str().to_string(),
            tap_queues: u16::try_from(tap_queues.max(1)).unwrap_or(u16::MAX),
            vnet_hdr: offloads,
            public_ip,
            network,
            vni,
            port,
            etcd_prefix: etcd_prefix.to_string(),
            ipv6_dataplane: if ipv6_in_threads {
                "userspace"
            } else {
                "kernel"
            }
            .to_string(),
        },
        versions: super::our_versions(),
        build: super::build_id(),
        tap: tap.clone(),
    }
}
