//! The simulation of issue 16: thousands of nodes in one process, over the control
//! plane's pure cores — each node's [`LeaseMachine`] and allocator as vxmeshd runs
//! them — and an in-memory registry ([`crate::memreg`]) with etcd's compare-and-swap,
//! leases and watch fan-out. Time is virtual (milliseconds; each registry request
//! takes one round trip), so 5000 nodes run in seconds and the same seed gives the
//! same run.
//!
//! Phases: every node starts within `start_spread_ms` (allocation races included);
//! churn (nodes leave — their keys deleted — and new ones join); a restart storm
//! (every node restarts while etcd is unreachable for `outage_ms`, then all come
//! back: the jittered backoff decides how they spread). Every node is counted as a
//! watcher (each event it is sent, each listing it reads), and `observers` of them
//! run the agent's whole per-event path as main's agent does, one event at a time:
//! judge it ([`PeerTable::apply`]), republish the forwarding table from the peer set
//! and copy the peers into the status — timed on the real clock, with their work counted ([`TableWork`]). What is
//! not simulated: netlink (the harness measures that), gRPC, etcd's own CPU.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::Serialize;
use vxmesh_control::allocator::NoFreeSubnet;
use vxmesh_control::config::{Ipv4Pool, NetworkConfig};
use vxmesh_control::lease::{LeaseAttrs, LeaseKey};
use vxmesh_control::lease_machine::{LeaseAction, LeaseEvent, LeaseMachine};
use vxmesh_control::peers::{LocalNode, PeerChange, PeerRules, PeerTable, TableWork, Update};
use vxmesh_control::registry::{Listing, WatchEvent};
use vxmesh_control::state::AgentState;
use vxmesh_control::subnet::Subnet;
use vxmesh_dataplane::fib::{ForwardingTable, LocalVtep, SharedTable};
use vxmesh_dataplane::wire::{MacAddr, Vni};

use crate::memreg::{MemRegistry, RegStats};

const PREFIX: &str = "/coreos.com/network";
/// How often an observer handles what queued up (virtual ms).
const OBSERVER_TICK_MS: u64 = 5;
/// Width of the buckets the storm's request rate is counted in.
const BUCKET_MS: u64 = 100;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimPlan {
    pub nodes: usize,
    pub network: String,
    pub subnet_len: u8,
    /// Nodes that run the full per-event path (peer table, forwarding table).
    pub observers: usize,
    /// Round trip of one registry request (virtual ms).
    pub rtt_ms: u64,
    /// Nodes start within this many virtual ms.
    pub start_spread_ms: u64,
    /// Nodes that leave and as many that join.
    pub churn: usize,
    /// etcd unreachable for this long when the storm starts.
    pub outage_ms: u64,
    /// The storm with every node's backoff seeded alike (the behaviour without
    /// jitter: everyone retries at the same instants), for comparison.
    pub same_seeds: bool,
    pub seed: u64,
}

impl SimPlan {
    pub fn new(nodes: usize) -> SimPlan {
        SimPlan {
            nodes,
            network: "10.0.0.0/8".into(),
            subnet_len: 24,
            observers: 4,
            rtt_ms: 2,
            start_spread_ms: 1000,
            churn: nodes / 20,
            outage_ms: 5000,
            same_seeds: false,
            seed: 1,
        }
    }
}

/// The registry's load in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseLoad {
    /// Virtual ms from the phase's start until every node held a lease.
    pub all_held_ms: u64,
    pub registry: RegStats,
    /// Most requests (listings and claims) in one 100 ms bucket.
    pub peak_requests_per_100ms: u64,
    /// The same once etcd is reachable again (the storm's outage over).
    pub peak_after_outage_per_100ms: u64,
    /// Listings per node, on average (the lease machine's; the watch begins with the last of them).
    pub ranges_per_node: f64,
    /// Watch events delivered per node.
    pub delivered_per_node: f64,
}

/// What the observers (full per-event path) did in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObserverWork {
    /// Watch events handled, per observer.
    pub events: u64,
    /// Passes (bursts handled at once), per observer.
    pub passes: u64,
    pub work: TableWork,
    /// Real CPU time of the pure cores per event (µs): judging, the forwarding
    /// table republished, the status copied and the pool's usage counted.
    pub us_per_event: f64,
    /// The slowest pass (µs).
    pub max_pass_us: f64,
    /// Every observer's peers equal the registry's leases but its own.
    pub consistent: bool,
}

/// The whole simulation's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    pub nodes: usize,
    pub network: String,
    pub subnet_len: u8,
    pub observers: usize,
    pub start: PhaseLoad,
    pub start_observers: ObserverWork,
    pub churn: PhaseLoad,
    pub churn_observers: ObserverWork,
    pub storm: PhaseLoad,
    pub storm_outage_ms: u64,
    pub storm_same_seeds: bool,
    /// Real time of one allocator plan at the end of the start (µs, median / max).
    pub plan_us_median: f64,
    pub plan_us_max: f64,
    /// Claims that lost a race, over the whole run.
    pub races_lost: u64,
    /// Memory of one node's control-plane state at `nodes - 1` peers (peer table,
    /// forwarding table, status map), KiB, measured as RSS growth over 8 copies.
    pub node_state_kib: f64,
    /// Of which the forwarding table, KiB: two generations, the current one and the
    /// one the next delta goes to (see `SharedTable::apply_delta`).
    pub forwarding_table_kib: f64,
    /// Real seconds the simulation took.
    pub wall_s: f64,
}

struct Node {
    ip: Ipv4Addr,
    mac: MacAddr,
    machine: LeaseMachine,
    held: Option<(LeaseKey, i64)>,
    /// Registry requests it made, for the storm's buckets.
    watching: bool,
    /// Where its last listing was taken (the agent's watch begins there).
    listed_at: usize,
    gone: bool,
}

struct Observer {
    node: usize,
    rules: PeerRules,
    /// Whether its node watches yet (a snapshot taken).
    watching: bool,
    /// Its node's last listing, which its watch begins with.
    listed: Option<Listing>,
    table: PeerTable,
    fib: SharedTable,
    status: AgentState,
    /// The Network's config: the pool whose usage the agent shows after each pass.
    pool: Ipv4Pool,
    /// The rejections generation copied into the status.
    shown_rejections: Option<u64>,
    cursor: usize,
    work: ObserverWork,
    /// The table's work counters when the current phase started.
    table_work_at_phase: TableWork,
    cpu: Duration,
}

struct Sim {
    plan: SimPlan,
    cfg: NetworkConfig,
    reg: MemRegistry,
    nodes: Vec<Node>,
    observers: Vec<Observer>,
    queue: BinaryHeap<Reverse<(u64, usize)>>,
    base: Instant,
    now: u64,
    down_until: u64,
    buckets: BTreeMap<u64, u64>,
    races_lost: u64,
    plan_times: Vec<f64>,
}

fn splitmix(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn node_ip(i: usize) -> Ipv4Addr {
    // 172.16.0.0/12: outside any 10/8 Network.
    Ipv4Addr::from(0xac10_0000u32 + i as u32 + 1)
}

fn node_mac(i: usize) -> MacAddr {
    let b = (i as u32 + 1).to_be_bytes();
    MacAddr([0x0e, 0x5a, b[0], b[1], b[2], b[3]])
}

/// Resident memory of this process (KiB).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vxmesh_testkit::proc::number_after(&s, "VmRSS:"))
        .unwrap_or(0)
}

impl Sim {
    fn instant(&self, t: u64) -> Instant {
        self.base + Duration::from_millis(t)
    }

    fn vms(&self, i: Instant) -> u64 {
        u64::try_from(i.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn new_node(&self, i: usize, hint: Option<Subnet>, seed: u64) -> Node {
        Node {
            ip: node_ip(i),
            mac: node_mac(i),
            machine: LeaseMachine::new(self.cfg.clone(), node_ip(i), hint, seed),
            held: None,
            watching: false,
            listed_at: 0,
            gone: false,
        }
    }

    fn request(&mut self) {
        *self.buckets.entry(self.now / BUCKET_MS).or_default() += 1;
    }

    /// One step of node `i` at `self.now`.
    fn step(&mut self, i: usize) {
        if self.nodes[i].gone {
            return;
        }
        let now = self.instant(self.now);
        let action = self.nodes[i].machine.poll(now);
        let rtt = self.plan.rtt_ms;
        match action {
            LeaseAction::List => {
                self.request();
                let ev = if self.now < self.down_until {
                    LeaseEvent::RegistryError
                } else {
                    self.nodes[i].listed_at = self.reg.cursor();
                    if let Some(o) = self.observers.iter_mut().find(|o| o.node == i) {
                        o.listed = Some(self.reg.listing_uncounted());
                    }
                    LeaseEvent::Listed(self.reg.list_for_allocator())
                };
                let t = Instant::now();
                self.nodes[i].machine.handle(ev, now);
                self.plan_times.push(t.elapsed().as_secs_f64() * 1e6);
                self.queue.push(Reverse((self.now + rtt, i)));
            }
            LeaseAction::Claim(c) => {
                self.request();
                let ev = if self.now < self.down_until {
                    LeaseEvent::RegistryError
                } else {
                    let n = &self.nodes[i];
                    let attrs = LeaseAttrs::vxlan(n.ip, 1, n.mac);
                    match self.reg.claim(&c, &attrs, 3_600_000, self.now) {
                        Some((lease_id, revision)) => LeaseEvent::Claimed { lease_id, revision },
                        None => {
                            self.races_lost += 1;
                            LeaseEvent::RaceLost
                        }
                    }
                };
                self.nodes[i].machine.handle(ev, now);
                self.queue.push(Reverse((self.now + rtt, i)));
            }
            LeaseAction::Acquired { key, lease_id, .. } => {
                self.nodes[i].held = Some((key, lease_id));
                if !self.nodes[i].watching {
                    // The agent's watch: the listing the subnet was claimed after,
                    // then every event since (`WatchFrom::Listing`, no second range).
                    self.request();
                    self.nodes[i].watching = true;
                    let cursor = self.reg.add_watcher_from(self.nodes[i].listed_at);
                    if let Some(o) = self.observers.iter_mut().find(|o| o.node == i) {
                        let listing = o.listed.take().unwrap_or_else(|| self.reg.list());
                        let n = &self.nodes[i];
                        // The work of the table it replaces, this phase, still counts.
                        let t = o.table.work();
                        o.work.work.full_passes +=
                            t.full_passes - o.table_work_at_phase.full_passes;
                        o.work.work.single += t.single - o.table_work_at_phase.single;
                        o.table_work_at_phase = TableWork::default();
                        o.table = PeerTable::new(
                            o.rules,
                            Some(LocalNode {
                                public_ip: n.ip,
                                vtep_mac: n.mac,
                                ipv6: None,
                            }),
                        );
                        let _ = o.table.set_own(Some(key), &mut Vec::new());
                        o.cursor = cursor;
                        o.watching = true;
                        o.handle(&[WatchEvent::Snapshot(listing)]);
                    }
                }
                self.queue.push(Reverse((self.now, i)));
            }
            LeaseAction::Exhausted(NoFreeSubnet { .. }) => {
                self.queue.push(Reverse((self.now, i)));
            }
            LeaseAction::Wait { until } => {
                let t = self.vms(until).max(self.now + 1);
                self.queue.push(Reverse((t, i)));
            }
            LeaseAction::Idle => {}
        }
    }

    fn observe(&mut self) {
        for o in &mut self.observers {
            if !o.watching {
                continue;
            }
            let (events, next) = self.reg.events_since(o.cursor);
            if events.is_empty() {
                continue;
            }
            let batch: Vec<WatchEvent> = events.to_vec();
            o.cursor = next;
            o.handle(&batch);
        }
    }

    /// Runs until the queue is empty (every node idle) or `until_ms`.
    fn run(&mut self, until_ms: u64) {
        let mut next_tick = self.now - self.now % OBSERVER_TICK_MS + OBSERVER_TICK_MS;
        while let Some(Reverse((t, i))) = self.queue.pop() {
            if t > until_ms {
                self.queue.push(Reverse((t, i)));
                break;
            }
            while next_tick <= t {
                self.now = next_tick;
                self.observe();
                next_tick += OBSERVER_TICK_MS;
            }
            self.now = t;
            self.step(i);
        }
        self.observe();
    }

    fn all_held(&self) -> bool {
        self.nodes.iter().all(|n| n.gone || n.held.is_some())
    }

    /// Every observer's peers are exactly the registry's other leases.
    fn consistent(&mut self) -> bool {
        let truth: BTreeMap<Subnet, Ipv4Addr> = self
            .reg
            .list_for_allocator()
            .into_iter()
            .filter_map(|l| Some((l.subnet, l.attrs?.public_ip)))
            .collect();
        self.reg.stats.ranges -= 1;
        self.reg.stats.range_keys -= truth.len() as u64;
        self.observers.iter().all(|o| {
            let own = self.nodes[o.node].ip;
            let want: Vec<(Subnet, Ipv4Addr)> = truth
                .iter()
                .filter(|(_, ip)| **ip != own)
                .map(|(s, ip)| (*s, *ip))
                .collect();
            let have: Vec<(Subnet, Ipv4Addr)> =
                o.table.peers().map(|p| (p.subnet, p.public_ip)).collect();
            let fib = o.fib.load();
            have == want
                && fib.peers().len() == want.len()
                && o.table
                    .peers()
                    .all(|p| fib.peer_by_mac(&p.vtep_mac) == Some(p.public_ip.into()))
                && o.status.info().peers.len() == want.len()
        })
    }

    fn phase(&mut self, start_stats: RegStats, start_ms: u64, live: usize) -> PhaseLoad {
        let s = self.reg.stats;
        let registry = RegStats {
            ranges: s.ranges - start_stats.ranges,
            range_keys: s.range_keys - start_stats.range_keys,
            txns: s.txns - start_stats.txns,
            txns_failed: s.txns_failed - start_stats.txns_failed,
            lease_grants: s.lease_grants - start_stats.lease_grants,
            events: s.events - start_stats.events,
            delivered: s.delivered - start_stats.delivered,
        };
        let peak = self
            .buckets
            .range(start_ms / BUCKET_MS..)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        let after_outage = self
            .buckets
            .range(start_ms.max(self.down_until) / BUCKET_MS..)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        PhaseLoad {
            all_held_ms: self.now.saturating_sub(start_ms),
            registry,
            peak_requests_per_100ms: peak,
            peak_after_outage_per_100ms: after_outage,
            ranges_per_node: registry.ranges as f64 / live.max(1) as f64,
            delivered_per_node: registry.delivered as f64 / live.max(1) as f64,
        }
    }

    fn observer_work(&mut self) -> ObserverWork {
        let k = self.observers.len().max(1) as u64;
        let mut w = ObserverWork::default();
        let mut cpu = Duration::ZERO;
        for o in &mut self.observers {
            w.events += o.work.events;
            w.passes += o.work.passes;
            w.max_pass_us = w.max_pass_us.max(o.work.max_pass_us);
            let t = o.table.work();
            w.work.full_passes +=
                o.work.work.full_passes + t.full_passes - o.table_work_at_phase.full_passes;
            w.work.single += o.work.work.single + t.single - o.table_work_at_phase.single;
            o.table_work_at_phase = t;
            cpu += o.cpu;
            o.work = ObserverWork::default();
            o.cpu = Duration::ZERO;
        }
        w.us_per_event = cpu.as_secs_f64() * 1e6 / w.events.max(1) as f64;
        w.events /= k;
        w.passes /= k;
        w.work.full_passes /= k;
        w.work.single /= k;
        w.consistent = self.consistent();
        w
    }
}

impl Observer {
    /// The agent's path for what queued up, as `agent::Running::on_registry` runs
    /// it: the burst judged as one batch ([`PeerTable::apply`]), the forwarding table
    /// changed by the batch's delta (rebuilt after a listing), the peers copied into
    /// the status, the rejections only when they changed. One pass per burst.
    fn handle(&mut self, events: &[WatchEvent]) {
        if events.is_empty() {
            return;
        }
        let t = Instant::now();
        let changes = self
            .table
            .apply(events.iter().map(Update::from), &mut Vec::new());
        let listing = events.iter().any(|e| matches!(e, WatchEvent::Snapshot(_)));
        if listing {
            self.fib.update(self.table.peers().map(|p| p.to_vtep()));
        } else {
            let (removed, added) = PeerChange::vtep_delta(&changes);
            self.fib.apply_delta(&removed, &added);
        }
        // as the agent does after each pass: the peers and the pool's usage shown
        self.status.show_peers(
            &self.table,
            (!listing).then_some(&changes[..]),
            &mut self.shown_rejections,
        );
        let usage = self.table.leased().usage(&self.pool);
        if let Ok(mut p) = self.status.pool.lock() {
            *p = Some(usage);
        }
        let took = t.elapsed();
        self.cpu += took;
        self.work.events += events.len() as u64;
        self.work.passes += 1;
        self.work.max_pass_us = self.work.max_pass_us.max(took.as_secs_f64() * 1e6);
    }
}

/// Runs the simulation.
pub fn simulate(plan: &SimPlan) -> anyhow::Result<SimReport> {
    let wall = Instant::now();
    let cfg = NetworkConfig::parse(
        &format!("{PREFIX}/config"),
        format!(
            r#"{{"Network":"{}","SubnetLen":{},"Backend":{{"Type":"vxlan"}}}}"#,
            plan.network, plan.subnet_len
        )
        .as_bytes(),
    )?;
    let pool4 = cfg
        .ipv4
        .ok_or_else(|| anyhow::anyhow!("the simulated network has no IPv4 pool"))?;
    if (pool4.pool_size() as usize) < plan.nodes + plan.churn {
        anyhow::bail!(
            "{} holds {} subnets: fewer than {} nodes",
            pool4.describe_pool(),
            pool4.pool_size(),
            plan.nodes + plan.churn
        );
    }
    let rules = PeerRules::from_config(&cfg)
        .ok_or_else(|| anyhow::anyhow!("the simulated network has no IPv4 pool"))?;
    let mut sim = Sim {
        plan: plan.clone(),
        cfg,
        reg: MemRegistry::new(PREFIX),
        nodes: Vec::new(),
        observers: Vec::new(),
        queue: BinaryHeap::new(),
        base: Instant::now(),
        now: 0,
        down_until: 0,
        buckets: BTreeMap::new(),
        races_lost: 0,
        plan_times: Vec::new(),
    };
    let mut rng = plan.seed;
    for i in 0..plan.nodes {
        let seed = splitmix(&mut rng);
        let n = sim.new_node(i, None, seed);
        sim.nodes.push(n);
        let at = splitmix(&mut rng) % plan.start_spread_ms.max(1);
        sim.queue.push(Reverse((at, i)));
    }
    for k in 0..plan.observers.min(plan.nodes) {
        let node = k * plan.nodes / plan.observers.max(1);
        let n = &sim.nodes[node];
        let local = LocalVtep {
            vtep_mac: n.mac,
            vni: Vni::new(1).ok_or_else(|| anyhow::anyhow!("VNI 1 out of range"))?,
            port: 8472,
            inner: Some(vxmesh_dataplane::fib::InnerCheck::lab()),
            v6: None,
        };
        sim.observers.push(Observer {
            node,
            rules,
            watching: false,
            listed: None,
            table: PeerTable::new(rules, None),
            fib: SharedTable::new(ForwardingTable::new(local, [])),
            status: AgentState::default(),
            pool: pool4,
            shown_rejections: None,
            cursor: 0,
            work: ObserverWork::default(),
            table_work_at_phase: TableWork::default(),
            cpu: Duration::ZERO,
        });
    }

    // 1. Everyone starts.
    sim.run(u64::MAX);
    if !sim.all_held() {
        anyhow::bail!("not every node got a subnet");
    }
    let mut report = SimReport {
        nodes: plan.nodes,
        network: plan.network.clone(),
        subnet_len: plan.subnet_len,
        observers: sim.observers.len(),
        ..Default::default()
    };
    report.start = sim.phase(RegStats::default(), 0, plan.nodes);
    report.start_observers = sim.observer_work();
    let mut pt = std::mem::take(&mut sim.plan_times);
    pt.sort_by(f64::total_cmp);
    report.plan_us_median = pt.get(pt.len() / 2).copied().unwrap_or(0.0);
    report.plan_us_max = pt.last().copied().unwrap_or(0.0);

    // 2. Churn: nodes leave (their keys deleted, as an expired lease does) and new
    // ones join, one of each every 10 ms.
    let t0 = sim.now + 1000;
    let s0 = sim.reg.stats;
    let mut leaving = Vec::new();
    for c in 0..plan.churn {
        let victim = (splitmix(&mut rng) as usize) % plan.nodes;
        if sim.observers.iter().any(|o| o.node == victim) || leaving.contains(&victim) {
            continue;
        }
        leaving.push(victim);
        let at = t0 + c as u64 * 10;
        sim.now = at;
        sim.run(at);
        if let Some((_, lease)) = sim.nodes[victim].held {
            sim.reg.revoke(lease);
        }
        sim.nodes[victim].gone = true;
        sim.reg.remove_watcher();
        let i = sim.nodes.len();
        let seed = splitmix(&mut rng);
        let n = sim.new_node(i, None, seed);
        sim.nodes.push(n);
        sim.queue.push(Reverse((at, i)));
    }
    sim.run(u64::MAX);
    let live = sim.nodes.iter().filter(|n| !n.gone).count();
    report.churn = sim.phase(s0, t0, live);
    report.churn_observers = sim.observer_work();

    // 3. Restart storm: every node restarts while etcd is unreachable, then it is back.
    let t1 = sim.now + 1000;
    sim.now = t1;
    sim.down_until = t1 + plan.outage_ms;
    let s1 = sim.reg.stats;
    for i in 0..sim.nodes.len() {
        if sim.nodes[i].gone {
            continue;
        }
        let hint = sim.nodes[i].held.and_then(|(k, _)| k.ipv4_subnet());
        let seed = if plan.same_seeds {
            plan.seed
        } else {
            splitmix(&mut rng)
        };
        sim.nodes[i] = sim.new_node(i, hint, seed);
        sim.reg.remove_watcher();
        sim.queue.push(Reverse((t1, i)));
    }
    for o in &mut sim.observers {
        o.watching = false;
    }
    sim.run(u64::MAX);
    if !sim.all_held() {
        anyhow::bail!("not every node got its subnet back after the storm");
    }
    report.storm = sim.phase(s1, t1, live);
    report.storm_same_seeds = plan.same_seeds;
    report.storm_outage_ms = plan.outage_ms;
    report.races_lost = sim.races_lost;
    let _ = sim.observer_work();

    // Memory of one node's state at nodes - 1 peers: RSS growth over 8 copies.
    let listing = sim.reg.list();
    let own = &sim.nodes[0];
    let (own_ip, own_mac, own_subnet) = (own.ip, own.mac, own.held.map(|h| h.0));
    let before = rss_kib();
    let mut keep = Vec::new();
    for _ in 0..8 {
        let mut t = PeerTable::new(
            rules,
            Some(LocalNode {
                public_ip: own_ip,
                vtep_mac: own_mac,
                ipv6: None,
            }),
        );
        let _ = t.set_own(own_subnet, &mut Vec::new());
        let _ = t.reset(&listing.entries, &mut Vec::new());
        let status = AgentState::default();
        status.show_peers(&t, None, &mut None);
        keep.push((t, status));
    }
    let mid = rss_kib();
    let local = LocalVtep {
        vtep_mac: own_mac,
        vni: Vni::new(1).ok_or_else(|| anyhow::anyhow!("VNI 1 out of range"))?,
        port: 8472,
        inner: Some(vxmesh_dataplane::fib::InnerCheck::lab()),
        v6: None,
    };
    let mut fibs = Vec::new();
    for (t, _) in &keep {
        // As the agent holds it once a batch has changed it: the current
        // generation and the one before, kept for the next delta.
        let shared = SharedTable::new(ForwardingTable::new(local, t.peers().map(|p| p.to_vtep())));
        shared.apply_delta(&[], &[]);
        fibs.push(shared);
    }
    let after = rss_kib();
    report.forwarding_table_kib = after.saturating_sub(mid) as f64 / 8.0;
    report.node_state_kib = after.saturating_sub(before) as f64 / 8.0;
    drop(fibs);
    drop(keep);
    report.wall_s = wall.elapsed().as_secs_f64();
    Ok(report)
}

/// The figures as text.
pub fn render(r: &SimReport) -> String {
    let n = r.nodes as f64;
    format!(
        "simulated {} nodes (Network {}, SubnetLen {}), {} observers running the agent's per-event path; {:.1} s real time\n\
         start-up: every node held a subnet after {} virtual ms; {} listings ({:.1} per node), {} keys listed ({:.0} per node: one listing to allocate, which the watch then begins with, of about N/2 keys when all start together; N² in all), {} claims ({} lost races), {} watch events delivered ({:.0} per node: every lease created after the node listed, about N/2; N² in all)\n\
         allocator plan per listing: median {:.0} µs, max {:.0} µs\n\
         observers at start-up: {} events in {} passes each ({:.1} events per pass), {} full passes and {} events judged alone; {:.2} µs per event (judge + forwarding table + status + pool usage), slowest pass {:.0} µs; consistent: {}\n\
         churn: {} events delivered; observers {:.2} µs per event, {} full passes; consistent: {}\n\
         restart storm ({} ms without etcd{}): every subnet held again {} virtual ms after the restart; peak {} requests per 100 ms once etcd is back (of {} nodes); {} listings, {} keys listed, {} events delivered\n\
         one node's control-plane state at {} peers: {:.0} KiB ({:.0} bytes per peer), of which the forwarding table {:.0} KiB (two generations: the current one and the one the next delta goes to)",
        r.nodes,
        r.network,
        r.subnet_len,
        r.observers,
        r.wall_s,
        r.start.all_held_ms,
        r.start.registry.ranges,
        r.start.ranges_per_node,
        r.start.registry.range_keys,
        r.start.registry.range_keys as f64 / n,
        r.start.registry.txns,
        r.races_lost,
        r.start.registry.delivered,
        r.start.delivered_per_node,
        r.plan_us_median,
        r.plan_us_max,
        r.start_observers.events,
        r.start_observers.passes,
        r.start_observers.events as f64 / r.start_observers.passes.max(1) as f64,
        r.start_observers.work.full_passes,
        r.start_observers.work.single,
        r.start_observers.us_per_event,
        r.start_observers.max_pass_us,
        r.start_observers.consistent,
        r.churn.registry.delivered,
        r.churn_observers.us_per_event,
        r.churn_observers.work.full_passes,
        r.churn_observers.consistent,
        r.storm_outage_ms,
        if r.storm_same_seeds { ", every backoff seeded alike" } else { "" },
        r.storm.all_held_ms,
        r.storm.peak_after_outage_per_100ms,
        r.nodes,
        r.storm.registry.ranges,
        r.storm.registry.range_keys,
        r.storm.registry.delivered,
        r.nodes - 1,
        r.node_state_kib,
        r.node_state_kib * 1024.0 / (n - 1.0).max(1.0),
        r.forwarding_table_kib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small cluster through every phase: everyone gets a subnet, the observers
    /// stay exact, per-event work stays single (no full passes after the snapshot),
    /// and the jittered storm spreads its retries where same-seeded backoff does not.
    #[test]
    fn three_hundred_nodes() {
        let mut plan = SimPlan::new(300);
        plan.outage_ms = 3000;
        let r = simulate(&plan).unwrap();
        assert!(r.start_observers.consistent && r.churn_observers.consistent);
        // Each observer: one full pass for its own subnet, one for the snapshot.
        assert!(
            r.start_observers.work.full_passes <= 2,
            "{:?}",
            r.start_observers.work
        );
        assert_eq!(
            r.churn_observers.work.full_passes, 0,
            "{:?}",
            r.churn_observers.work
        );
        // N watchers each sent every event: about N per node over the start.
        assert!(
            r.start.delivered_per_node <= 300.0 + 1.0,
            "{}",
            r.start.delivered_per_node
        );
        let mut same = plan.clone();
        same.same_seeds = true;
        let s = simulate(&same).unwrap();
        // When etcd comes back, jittered retries arrive spread out; same-seeded
        // ones all at once.
        assert!(s.storm.peak_after_outage_per_100ms >= 300, "{:?}", s.storm);
        assert!(
            r.storm.peak_after_outage_per_100ms * 3 < s.storm.peak_after_outage_per_100ms,
            "jittered peak {} vs same-seeded {}",
            r.storm.peak_after_outage_per_100ms,
            s.storm.peak_after_outage_per_100ms
        );
    }
}
