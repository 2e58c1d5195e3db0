//! What the agent knows about itself, shared with the HTTP endpoints.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::events::EventLog;
use crate::handover::StartInfo;
use crate::peers::{Peer, PeerChange};
use crate::pool::PoolUsage;
use crate::registry::{LeaseStats, WatchStats};
use crate::subnet::Subnet;
use vxmesh_dataplane::counters::Counters;
use vxmesh_dataplane::engine::EngineStatus;
use vxmesh_dataplane::fib::SharedTable;
use vxmesh_dataplane::flows::SharedFlows;

/// Facts that change rarely (lease, peers), behind one mutex; never touched by
/// the hot path.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Info {
    pub version: &'static str,
    /// The version, and `+<id>` for a build made with `VXMESH_BUILD_ID`.
    pub build: String,
    pub public_ip: Option<Ipv4Addr>,
    pub iface: Option<String>,
    pub vtep_mac: Option<String>,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub network: Option<Subnet>,
    pub subnet: Option<Subnet>,
    /// Dual stack: the lease's PublicIPv6 and IPv6 subnet (the IPv6 device,
    /// `flannel-v6.<VNI>`, carries it node to node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<crate::subnet6::Subnet6>,
    pub lease_id: Option<String>,
    /// The subnet is a reservation: its key has no etcd lease (no TTL).
    pub reservation: bool,
    pub lease_ttl_secs: u64,
    pub mtu: Option<u32>,
    pub tap: Option<String>,
    pub dataplane: &'static str,
    /// How etcd is reached: endpoints, TLS files, user (never the password).
    pub etcd: Option<String>,
    pub peers: StatusPeers,
    /// On an IPv6-only network (`EnableIPv4` false): its IPv6Network, and the peers,
    /// which are IPv6 halves alone (`peers` is then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<crate::subnet6::Subnet6>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ipv6_only_peers: Vec<crate::peers::PeerIpv6>,
    /// The leases rejected as peers now (see `peers`), and why.
    pub rejected: Vec<RejectedLease>,
    pub last_error: Option<String>,
}

/// The peers `/v1/status` shows, by subnet (the peer table's order), changed with
/// each batch of peer changes rather than copied from the peer table: O(log N) per
/// change instead of O(N) per batch. Serialized as the list of peers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusPeers(std::collections::BTreeMap<Subnet, Peer>);

impl StatusPeers {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Peer> + '_ {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies a batch of the peer table's changes, in order.
    pub(crate) fn apply(&mut self, changes: &[PeerChange]) {
        for c in changes {
            match c {
                PeerChange::Added(p) => {
                    self.0.insert(p.subnet, *p);
                }
                PeerChange::Updated { old, new } => {
                    self.0.remove(&old.subnet);
                    self.0.insert(new.subnet, *new);
                }
                PeerChange::Removed(p) => {
                    self.0.remove(&p.subnet);
                }
            }
        }
    }
}

impl FromIterator<Peer> for StatusPeers {
    fn from_iter<I: IntoIterator<Item = Peer>>(iter: I) -> Self {
        StatusPeers(iter.into_iter().map(|p| (p.subnet, p)).collect())
    }
}

impl serde::Serialize for StatusPeers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

/// The table's rejected leases when they changed since the generation in `shown`
/// (which it then records).
fn rejected_since<P: crate::peers::PeerKind>(
    table: &crate::peers::PeerTable<P>,
    shown: &mut Option<u64>,
) -> Option<Vec<RejectedLease>> {
    let generation = table.rejections_generation();
    let rejected = (*shown != Some(generation)).then(|| {
        table
            .rejected()
            .map(|(key, r)| RejectedLease {
                key: key.to_string(),
                reason: r.reason.as_str(),
                why: r.why.clone(),
            })
            .collect()
    });
    *shown = Some(generation);
    rejected
}

/// A lease that is not a peer: its key, the reason (the metric's label) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RejectedLease {
    pub key: String,
    pub reason: &'static str,
    pub why: String,
}

/// Readiness: all three must hold for /readyz to answer 200.
#[derive(Debug, Default)]
pub struct Readiness {
    pub lease: AtomicBool,
    pub routes: AtomicBool,
    pub subnet_env: AtomicBool,
    /// The underlay address is gone from its interface and nothing replaces it yet:
    /// peers' VXLAN cannot reach this node.
    pub underlay_lost: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.lease.load(Ordering::Relaxed)
            && self.routes.load(Ordering::Relaxed)
            && self.subnet_env.load(Ordering::Relaxed)
            && !self.underlay_lost.load(Ordering::Relaxed)
    }

    /// What is missing, for the /readyz body.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.lease.load(Ordering::Relaxed) {
            m.push("subnet lease");
        }
        if !self.routes.load(Ordering::Relaxed) {
            m.push("peer routes");
        }
        if !self.subnet_env.load(Ordering::Relaxed) {
            m.push("subnet file");
        }
        if self.underlay_lost.load(Ordering::Relaxed) {
            m.push("underlay address");
        }
        m
    }
}

/// Raised while this agent hands its dataplane and lease to a successor. From the offer
/// on the lease is the successor's: it may re-claim it (a changed config deletes our key
/// in its claim), and a lease task that re-acquired on seeing that would undo the
/// successor's claim. So the lease task waits out a lease change it sees while the gate
/// is up; the gate comes down only if the handover fails (then the change is handled),
/// and a completed handover stops the agent with it still up.
#[derive(Debug, Default)]
pub struct HandoverGate {
    up: AtomicBool,
    down: tokio::sync::Notify,
}

impl HandoverGate {
    /// Raises the gate until the returned guard is dropped, or for good with
    /// [`HandingOver::completed`].
    pub fn raise(&self) -> HandingOver<'_> {
        self.up.store(true, Ordering::SeqCst);
        HandingOver {
            gate: self,
            completed: false,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Returns once the gate is down (at once when it is).
    pub async fn until_down(&self) {
        loop {
            let down = self.down.notified();
            tokio::pin!(down);
            // Registered before the check, so a lowering in between is not missed.
            down.as_mut().enable();
            if !self.is_up() {
                return;
            }
            down.await;
        }
    }
}

/// An outgoing handover in progress (see [`HandoverGate`]).
#[derive(Debug)]
pub struct HandingOver<'a> {
    gate: &'a HandoverGate,
    completed: bool,
}

impl HandingOver<'_> {
    /// The successor took over: the gate stays up while this agent stops.
    pub fn completed(mut self) {
        self.completed = true;
    }
}

impl Drop for HandingOver<'_> {
    fn drop(&mut self) {
        if !self.completed {
            self.gate.up.store(false, Ordering::SeqCst);
            self.gate.down.notify_waiters();
        }
    }
}

/// Everything the HTTP endpoints read.
#[derive(Debug, Default)]
pub struct AgentState {
    pub info: Mutex<Info>,
    pub ready: Readiness,
    pub counters: Arc<Counters>,
    pub engine: Mutex<Option<Arc<EngineStatus>>>,
    /// The userspace dataplane's forwarding table (per-peer counters), once running.
    pub fib: Mutex<Option<SharedTable>>,
    /// The top-flows table the dataplane samples into.
    pub flows: Arc<SharedFlows>,
    /// What the agent did (lease, peers, offloads), bounded.
    pub events: Arc<EventLog>,
    /// How full the subnet pool is, from the registry's listing (None before it).
    pub pool: Mutex<Option<PoolUsage>>,
    /// The IPv6 pool's, with a dual-stack config (None otherwise).
    pub pool6: Mutex<Option<PoolUsage>>,
    pub watch: Arc<WatchStats>,
    pub lease: Arc<LeaseStats>,
    pub lease_reacquisitions: AtomicU64,
    /// Warnings about rejected leases (one per lease and reason).
    pub skipped_leases: AtomicU64,
    pub route_errors: AtomicU64,
    /// Times the overlay device's MAC had been changed by someone else and was restored.
    pub device_repairs: AtomicU64,
    /// Times the underlay address moved and the node followed it (decision 0024).
    pub underlay_moves: AtomicU64,
    /// Times the subnet file was found removed or changed and written again.
    pub subnet_file_repairs: AtomicU64,
    /// How this process's dataplane started (cold, handover, systemd's store).
    pub start: Mutex<StartInfo>,
    /// Would-be successors refused (another network, conflicting flags).
    pub handovers_refused: AtomicU64,
    /// Times the iptables rules had been changed by someone else and were restored.
    pub iptables_repairs: AtomicU64,
    /// VXLAN over IPv6 the IPv6 ingress check dropped (`crate::ingress6`), by reason
    /// and peer, as read from its counters every `--iptables-resync`.
    pub ipv6_ingress_drops: Mutex<crate::ingress6::Drops6>,
    /// Up while the dataplane and lease are being handed to a successor.
    pub handover_gate: HandoverGate,
    /// etcd's network config against the one this node runs (`config_watch`).
    pub config_in_etcd: Mutex<crate::config_watch::Stored>,
}

impl AgentState {
    pub fn info(&self) -> Info {
        self.info.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn update(&self, f: impl FnOnce(&mut Info)) {
        if let Ok(mut g) = self.info.lock() {
            f(&mut g);
        }
    }

    /// Shows `table`'s peers in /v1/status and /metrics, and its rejected leases when
    /// they changed since the generation in `shown` (which it then records). With
    /// `changes`, the batch that brought the table to its state, the peers shown are
    /// changed by it; without (after a full listing, or a change of our own subnet),
    /// or if they would not then count as many as the table, they are copied afresh.
    pub fn show_peers(
        &self,
        table: &crate::peers::PeerTable,
        changes: Option<&[PeerChange]>,
        shown: &mut Option<u64>,
    ) {
        let rejected = rejected_since(table, shown);
        let afresh = || table.peers().copied().collect::<StatusPeers>();
        self.update(|i| {
            match changes {
                Some(c) => i.peers.apply(c),
                None => i.peers = afresh(),
            }
            if i.peers.len() != table.len() {
                // Never seen: the changes are the table's own (the peer table's
                // property test replays them); a guard all the same.
                tracing::warn!(
                    shown = i.peers.len(),
                    peers = table.len(),
                    "the status's peers went astray from the peer table; copied afresh"
                );
                i.peers = afresh();
            }
            if let Some(r) = rejected {
                i.rejected = r;
            }
        });
    }

    /// [`AgentState::show_peers`] for an IPv6-only network's table: its peers are
    /// copied whole (a list of IPv6 halves), the rejections when they changed.
    pub fn show_peers6(
        &self,
        table: &crate::peers::PeerTable<crate::peers::PeerIpv6>,
        shown: &mut Option<u64>,
    ) {
        let rejected = rejected_since(table, shown);
        self.update(|i| {
            i.ipv6_only_peers = table.peers().copied().collect();
            if let Some(r) = rejected {
                i.rejected = r;
            }
        });
    }

    /// The IPv6 ingress check's drops as last read.
    pub fn ipv6_ingress_drops(&self) -> crate::ingress6::Drops6 {
        self.ipv6_ingress_drops
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    pub fn config_in_etcd(&self) -> crate::config_watch::Stored {
        self.config_in_etcd
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    pub fn start_info(&self) -> StartInfo {
        self.start.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn pool(&self) -> Option<PoolUsage> {
        self.pool.lock().ok().and_then(|g| *g)
    }

    pub fn pool6(&self) -> Option<PoolUsage> {
        self.pool6.lock().ok().and_then(|g| *g)
    }

    /// Records an event now.
    pub fn event(&self, kind: &'static str, detail: impl Into<String>) {
        self.events.record(kind, detail, crate::events::now_ms());
    }

    pub fn fib(&self) -> Option<SharedTable> {
        self.fib.lock().ok().and_then(|g| g.clone())
    }

    pub fn engine_status(&self) -> Option<Arc<EngineStatus>> {
        self.engine.lock().ok().and_then(|g| g.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn the_handover_gate_holds_a_lease_change_until_the_handover_fails() {
        let gate = Arc::new(HandoverGate::default());
        rt().block_on(async {
            // Down: nothing to wait for.
            tokio::time::timeout(Duration::from_millis(100), gate.until_down())
                .await
                .expect("down at once");
            // Up: a waiter waits until the guard goes (the successor aborted).
            let guard = gate.raise();
            assert!(gate.is_up());
            let g = Arc::clone(&gate);
            let waiter = tokio::spawn(async move { g.until_down().await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiter.is_finished(), "held while the handover runs");
            drop(guard);
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("released when the handover fails")
                .unwrap();
            assert!(!gate.is_up());
            // Completed: the gate stays up (the agent stops with it up).
            gate.raise().completed();
            assert!(gate.is_up());
            let held = tokio::time::timeout(Duration::from_millis(100), gate.until_down()).await;
            assert!(held.is_err(), "a completed handover keeps the gate up");
        });
    }
}
