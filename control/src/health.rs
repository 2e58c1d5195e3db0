//! The agent's HTTP endpoints (default 127.0.0.1:8471):
//! `/healthz` (alive), `/readyz` (200 only once lease, routes and subnet file are in
//! place), `/metrics` (Prometheus text format 0.0.4) and `/v1/status` (JSON, what
//! `vxmeshctl` shows), `/v1/peers` (each peer with its traffic counters) and
//! `/v1/flows?n=N` (the top flows crossing the overlay).
//!
//! `/v1/flows` names pods' connections (addresses, ports, bytes), so it answers only
//! callers on this host — from loopback, or from the very address they connected to —
//! even when `--healthz-ip` opens the rest to the network for a Prometheus scraper.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::peers::Peer;
use crate::peers::RejectReason;
use crate::registry::LeaseStats;
use crate::state::AgentState;
use vxmesh_dataplane::counters::{DropReason, PeerCounterSnapshot};
use vxmesh_dataplane::engine::EngineStatus;
use vxmesh_dataplane::fib::ForwardingTable;
use vxmesh_dataplane::flows::FlowStat;

/// Who is calling: the connection's two ends.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Caller {
    /// Whether the caller is on this host: a loopback source, or a source equal to the
    /// address it connected to (a host reaching one of its own addresses).
    pub fn on_this_host(&self) -> bool {
        let ip = self.remote.ip().to_canonical();
        ip.is_loopback() || self.local.is_some_and(|l| l.ip().to_canonical() == ip)
    }
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller {
            remote: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// Serves the endpoints on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<Caller>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/flows", get(flows))
        .route("/v1/events", get(events))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AgentState>>) -> Response {
    if s.ready.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", s.ready.missing().join(", ")),
        )
            .into_response()
    }
}

/// The two queues where traffic waits inside a userspace node (docs/decisions/0026
/// and 0027), as the kernel holds them now.
struct QueueLengths {
    /// The TAP's transmit queue, in frames: what the kernel holds for the engine's
    /// reader before it drops. Read live, so a change made with `ip link` shows.
    tap_txqueuelen: Option<u32>,
    /// The VXLAN receive socket's buffer as the kernel counts it (twice
    /// `--vxlan-rcvbuf`).
    vxlan_rcvbuf_kernel: Option<usize>,
}

/// `tap`: the TAP's name, from the `Info` the caller already holds.
fn queue_lengths(tap: Option<&str>, e: &EngineStatus) -> QueueLengths {
    let tap_txqueuelen = tap
        .and_then(|t| vxmesh_dataplane::ifname::IfName::new(t).ok())
        .and_then(|t| vxmesh_dataplane::sys::tap::txqueuelen(&t).ok());
    QueueLengths {
        tap_txqueuelen,
        vxlan_rcvbuf_kernel: e.udp_rcvbuf,
    }
}

/// The JSON behind `/v1/status`.
pub fn status_json(s: &AgentState) -> serde_json::Value {
    let info = s.info();
    let config = s.config_in_etcd();
    let c = s.counters.snapshot();
    let mut counters = serde_json::Map::new();
    for (k, v) in c.fields() {
        counters.insert(k.to_string(), v.into());
    }
    let mut drops = serde_json::Map::new();
    for r in DropReason::ALL {
        drops.insert(r.as_str().to_string(), c.dropped(r).into());
    }
    let offloads = s.engine_status().map(|e| {
        serde_json::json!({
            "tap": e.tap.describe(),
            "tap_vnet_hdr": e.tap.vnet_hdr,
            "tap_tso": e.tap.tso(),
            "tap_uso": e.tap.uso(),
            "udp_gso": e.udp_gso.load(Ordering::Relaxed),
            "udp_gro": e.udp_gro,
            "tx_sockets": e.tx_sockets,
            "tx_source_ports": e.tx_source_ports,
            "engine_priority": e.priority.to_string(),
            "busy_poll_us": u64::try_from(e.busy_poll.budget.as_micros()).unwrap_or(u64::MAX),
            "busy_poll": e.busy_poll.to_string(),
            "egress_tunnel_gso": e.underlay_tap,
            // The threads carry IPv6 (--ipv6-dataplane userspace): VXLAN over IPv6.
            "ipv6": e.ipv6.as_ref().map(|v6| serde_json::json!({
                "udp_gro": v6.udp_gro,
                "tx_source_ports": v6.tx_source_ports,
            })),
        })
    });
    let queues = s.engine_status().map(|e| {
        let q = queue_lengths(info.tap.as_deref(), &e);
        serde_json::json!({
            "tap_txqueuelen": q.tap_txqueuelen,
            "vxlan_rcvbuf_bytes": q.vxlan_rcvbuf_kernel.map(|k| k / 2),
            "vxlan_rcvbuf_kernel_bytes": q.vxlan_rcvbuf_kernel,
        })
    });
    let ipv6_drops = s.ipv6_ingress_drops();
    serde_json::json!({
        "pid": std::process::id(),
        "ready": s.ready.ready(),
        "waiting_for": s.ready.missing(),
        "node": info,
        "counters": counters,
        "drops": drops,
        "offloads": offloads,
        "queues": queues,
        "pool": s.pool().map(pool_json),
        "pool6": s.pool6().map(pool_json),
        "lease_reacquisitions": s.lease_reacquisitions.load(Ordering::Relaxed),
        "lease_renewals": s.lease.renewals.load(Ordering::Relaxed),
        "lease_expires_in_secs": lease_expires_in_secs(&s.lease, SystemTime::now()),
        "watch_restarts": s.watch.restarts.load(Ordering::Relaxed),
        "watch_compactions": s.watch.compactions.load(Ordering::Relaxed),
        "watch_listings": s.watch.listings.load(Ordering::Relaxed),
        "etcd_unreachable_for_secs": s.watch.down_for(SystemTime::now()).map(|d| d.as_secs()),
        "device_mac_repairs": s.device_repairs.load(Ordering::Relaxed),
        "underlay_moves": s.underlay_moves.load(Ordering::Relaxed),
        "subnet_file_repairs": s.subnet_file_repairs.load(Ordering::Relaxed),
        "start": s.start_info(),
        "handovers_refused": s.handovers_refused.load(Ordering::Relaxed),
        "iptables_repairs": s.iptables_repairs.load(Ordering::Relaxed),
        "ipv6_ingress_dropped": ipv6_drops.total(),
        "ipv6_ingress_drops": ipv6_drops
            .by_reason()
            .iter()
            .map(|(r, n)| (r.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>(),
        "ipv6_ingress_drops_by_peer": ipv6_drops
            .inner_address
            .iter()
            .filter(|(_, (_, n))| *n != 0)
            .map(|(ip, (subnet, n))| serde_json::json!({
                "public_ipv6": ip.to_string(),
                "subnet": subnet.to_string(),
                "inner_address": n,
            }))
            .collect::<Vec<_>>(),
        "config_in_etcd": {
            "state": config.as_str(),
            "detail": config.detail(),
        },
    })
}

/// A pool's usage as `/v1/status` shows it.
fn pool_json(p: crate::pool::PoolUsage) -> serde_json::Value {
    serde_json::json!({
        "total": p.total, "used": p.used, "free": p.free(),
        "used_percent": p.used_percent(), "nearly_full": p.nearly_full(),
    })
}

/// Seconds until the lease expires unless renewed (negative once past), or None
/// before the first grant.
fn lease_expires_in_secs(l: &LeaseStats, now: SystemTime) -> Option<i64> {
    let at = l.expires_unix_ms.load(Ordering::Relaxed);
    if at == 0 {
        return None;
    }
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Some((i64::try_from(at).unwrap_or(i64::MAX) - now_ms).div_euclid(1000))
}

/// Each peer with its dataplane counters (zero before the dataplane runs or when
/// the kernel dataplane forwards: it counts nothing per peer).
pub fn peer_stats<'p>(
    peers: impl IntoIterator<Item = &'p Peer>,
    table: Option<&ForwardingTable>,
) -> Vec<(Peer, PeerCounterSnapshot)> {
    peers
        .into_iter()
        .map(|p| {
            let c = table
                .and_then(|t| {
                    let (_, slot) = t.peer_slot_by_mac(&p.vtep_mac)?;
                    t.peer_counters(slot)
                })
                .map(|c| c.snapshot())
                .unwrap_or_default();
            (*p, c)
        })
        .collect()
}

/// The JSON behind `/v1/peers` (and `vxmeshctl peers --json`).
pub fn peers_json(stats: &[(Peer, PeerCounterSnapshot)]) -> serde_json::Value {
    stats
        .iter()
        .map(|(p, c)| {
            let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r) != 0)
                .map(|r| (r.as_str().to_string(), c.dropped(*r).into()))
                .collect();
            let mut v = serde_json::json!({
                "subnet": p.subnet.to_string(),
                "public_ip": p.public_ip.to_string(),
                "vtep_mac": p.vtep_mac.to_string(),
                "tx_packets": c.tx_packets,
                "tx_bytes": c.tx_bytes,
                "rx_packets": c.rx_packets,
                "rx_bytes": c.rx_bytes,
                "drops": drops,
                "last_tx_unix_ms": c.last_tx_unix_ms,
                "last_rx_unix_ms": c.last_rx_unix_ms,
                "underlay_tap_path": c.underlay_path,
            });
            // A dual-stack peer's IPv6 half (on flannel-v6.<VNI>, either dataplane).
            if let (Some(v6), Some(o)) = (&p.ipv6, v.as_object_mut()) {
                o.insert(
                    "ipv6".into(),
                    serde_json::json!({
                        "subnet": v6.subnet.to_string(),
                        "public_ipv6": v6.public_ipv6.to_string(),
                        "vtep_mac": v6.vtep_mac.to_string(),
                    }),
                );
            }
            v
        })
        .collect()
}

fn agent_peer_stats(s: &AgentState) -> Vec<(Peer, PeerCounterSnapshot)> {
    let table = s.fib().map(|t| t.load());
    peer_stats(s.info().peers.iter(), table.as_deref())
}

async fn peers(State(s): State<Arc<AgentState>>) -> Response {
    let mut out = peers_json(&agent_peer_stats(&s));
    if let Some(list) = out.as_array_mut() {
        list.extend(peers6_json(&s.info().ipv6_only_peers));
    }
    axum::Json(out).into_response()
}

/// An IPv6-only network's peers in `/v1/peers`: each IPv6 subnet with its PublicIPv6
/// and VtepMAC (`flannel-v6.<VNI>` counts nothing per peer).
pub fn peers6_json(peers: &[crate::peers::PeerIpv6]) -> Vec<serde_json::Value> {
    peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "subnet": p.subnet.to_string(),
                "public_ip": null,
                "public_ipv6": p.public_ipv6.to_string(),
                "vtep_mac": p.vtep_mac.to_string(),
                "tx_packets": 0, "tx_bytes": 0, "rx_packets": 0, "rx_bytes": 0,
                "drops": {},
            })
        })
        .collect()
}

/// The JSON behind `/v1/flows` (and `vxmeshctl flows --json`).
pub fn flows_json(
    top: &[FlowStat],
    capacity: usize,
    sample_bytes: u64,
    samples: u64,
) -> serde_json::Value {
    let flows: Vec<serde_json::Value> = top
        .iter()
        .map(|f| {
            serde_json::json!({
                "proto": f.key.proto,
                "src": f.key.src.to_string(),
                "src_port": f.key.src_port,
                "dst": f.key.dst.to_string(),
                "dst_port": f.key.dst_port,
                "direction": f.dir.as_str(),
                "peer": f.peer.to_string(),
                "bytes": f.bytes,
                "packets": f.packets,
                "error_bytes": f.error_bytes,
                "first_seen_unix_ms": f.first_seen_ms,
                "last_seen_unix_ms": f.last_seen_ms,
            })
        })
        .collect();
    serde_json::json!({
        "capacity": capacity,
        "sample_bytes": sample_bytes,
        "samples": samples,
        "flows": flows,
    })
}

/// `since` from a `?since=SEQ` query (default 0: everything held).
fn events_since(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("since=")?.parse().ok())
        .unwrap_or(0)
}

async fn events(State(s): State<Arc<AgentState>>, uri: Uri) -> Response {
    axum::Json(s.events.since(events_since(uri.query()))).into_response()
}

/// `n` from a `?n=N` query: how many flows (default 20, at most the table).
fn flows_wanted(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("n=")?.parse().ok())
        .unwrap_or(20)
}

async fn flows(
    State(s): State<Arc<AgentState>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    uri: Uri,
) -> Response {
    if !caller.on_this_host() {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "/v1/flows names pods' connections and is served to this host only (not to {}): run `vxmeshctl flows` on the node\n",
                caller.remote.ip()
            ),
        )
            .into_response();
    }
    let (top, cap) = s.flows.top(flows_wanted(uri.query()));
    axum::Json(flows_json(
        &top,
        cap,
        s.flows.sample_bytes(),
        s.flows.samples(),
    ))
    .into_response()
}

async fn status(State(s): State<Arc<AgentState>>) -> Response {
    axum::Json(status_json(&s)).into_response()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric in the Prometheus text format.
pub fn render_metrics(s: &AgentState) -> String {
    let mut o = String::new();
    let info = s.info();
    let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        &mut o,
        "vxmesh_ready",
        "1 when lease, routes and subnet file are in place",
        u64::from(s.ready.ready()),
    );
    gauge(
        &mut o,
        "vxmesh_peers",
        "Peer nodes with a route through the overlay",
        (info.peers.len() + info.ipv6_only_peers.len()) as u64,
    );
    // An IPv6-only node holds an IPv6 subnet alone: its labels are the IPv6 ones, the
    // IPv4 ones empty (its VtepMAC is the IPv6 device's).
    let _ = writeln!(
        o,
        "# HELP vxmesh_lease_info The subnets this node holds\n# TYPE vxmesh_lease_info gauge\nvxmesh_lease_info{{subnet=\"{}\",public_ip=\"{}\",vtep_mac=\"{}\",ipv6_subnet=\"{}\",public_ipv6=\"{}\"}} {}",
        label(&info.subnet.map(|x| x.to_string()).unwrap_or_default()),
        label(&info.public_ip.map(|x| x.to_string()).unwrap_or_default()),
        label(info.vtep_mac.as_deref().unwrap_or("")),
        label(&info.ipv6_subnet.map(|x| x.to_string()).unwrap_or_default()),
        label(&info.public_ipv6.map(|x| x.to_string()).unwrap_or_default()),
        u64::from(info.subnet.is_some() || info.ipv6_subnet.is_some())
    );
    gauge(
        &mut o,
        "vxmesh_lease_reservation",
        "1 when the subnet is held as a reservation (its key has no etcd lease: no TTL, no renewals)",
        u64::from(info.reservation),
    );
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    if let Some(p) = s.pool() {
        gauge(
            &mut o,
            "vxmesh_pool_subnets_free",
            "Subnets of the pool (SubnetMin..SubnetMax) no lease holds",
            p.free(),
        );
        gauge(
            &mut o,
            "vxmesh_pool_subnets_total",
            "Subnets in the pool (SubnetMin..SubnetMax at SubnetLen)",
            p.total,
        );
    }
    if let Some(p) = s.pool6() {
        gauge(
            &mut o,
            "vxmesh_ipv6_pool_subnets_free",
            "Subnets of the IPv6 pool (IPv6SubnetMin..IPv6SubnetMax) no lease holds (dual stack)",
            p.free(),
        );
        gauge(
            &mut o,
            "vxmesh_ipv6_pool_subnets_total",
            "Subnets in the IPv6 pool (IPv6SubnetMin..IPv6SubnetMax at IPv6SubnetLen; at most 2^64-1)",
            p.total,
        );
    }
    counter(
        &mut o,
        "vxmesh_lease_renewals_total",
        "Successful etcd keepalives of the subnet lease",
        s.lease.renewals.load(Ordering::Relaxed),
    );
    let secs = |ms: u64| ms as f64 / 1000.0;
    let _ = writeln!(
        o,
        "# HELP vxmesh_lease_last_renewal_timestamp_seconds When the subnet lease was last granted or renewed (0: never)\n# TYPE vxmesh_lease_last_renewal_timestamp_seconds gauge\nvxmesh_lease_last_renewal_timestamp_seconds {:.3}",
        secs(s.lease.renewed_unix_ms.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        o,
        "# HELP vxmesh_lease_expiry_timestamp_seconds When the subnet lease expires unless renewed (alert when close: etcd unreachable)\n# TYPE vxmesh_lease_expiry_timestamp_seconds gauge\nvxmesh_lease_expiry_timestamp_seconds {:.3}",
        secs(s.lease.expires_unix_ms.load(Ordering::Relaxed))
    );
    counter(
        &mut o,
        "vxmesh_lease_reacquisitions_total",
        "Times a lost subnet lease was acquired again",
        s.lease_reacquisitions.load(Ordering::Relaxed),
    );
    let config = s.config_in_etcd();
    let _ = writeln!(
        o,
        "# HELP vxmesh_config_in_etcd etcd's network config against the one this node runs: 1 for the state it is in (same, changed, deleted, invalid)\n# TYPE vxmesh_config_in_etcd gauge"
    );
    for state in crate::config_watch::Stored::STATES {
        let _ = writeln!(
            o,
            "vxmesh_config_in_etcd{{state=\"{state}\"}} {}",
            u8::from(config.as_str() == state)
        );
    }
    gauge(
        &mut o,
        "vxmesh_etcd_watch_up",
        "1 while the etcd watch works; 0 while it fails (etcd unreachable: no peer change reaches this node)",
        u64::from(s.watch.down_for(SystemTime::now()).is_none()),
    );
    counter(
        &mut o,
        "vxmesh_watch_restarts_total",
        "Times the etcd watch was restarted",
        s.watch.restarts.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "vxmesh_watch_compactions_total",
        "Times the watch revision was compacted and the subnets re-listed",
        s.watch.compactions.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "vxmesh_watch_listings_total",
        "Full listings of the subnets prefix read by the watch (none at start: it begins with the listing the subnet was allocated from)",
        s.watch.listings.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "vxmesh_skipped_leases_total",
        "Warnings about leases rejected as peers (one per lease and reason)",
        s.skipped_leases.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        o,
        "# HELP vxmesh_rejected_leases Leases in the registry rejected as peers now, by reason\n# TYPE vxmesh_rejected_leases gauge"
    );
    for r in RejectReason::ALL {
        let n = info
            .rejected
            .iter()
            .filter(|x| x.reason == r.as_str())
            .count();
        let _ = writeln!(o, "vxmesh_rejected_leases{{reason=\"{}\"}} {n}", r.as_str());
    }
    counter(
        &mut o,
        "vxmesh_route_errors_total",
        "Failed route or neighbour updates",
        s.route_errors.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "vxmesh_underlay_moves_total",
        "Times the underlay address moved and the node followed it (lease, dataplane)",
        s.underlay_moves.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "vxmesh_subnet_file_repairs_total",
        "Times the subnet file was found removed or changed and written again",
        s.subnet_file_repairs.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "vxmesh_iptables_repairs_total",
        "Times the masquerade/forward rules were found changed and restored",
        s.iptables_repairs.load(Ordering::Relaxed),
    );
    ipv6_ingress_drops(&mut o, &s.ipv6_ingress_drops());

    let st = s.start_info();
    let _ = writeln!(
        o,
        "# HELP vxmesh_dataplane_start_info How this process's dataplane started: cold, handover (from a running vxmeshd) or fd-store (from systemd after a restart)\n# TYPE vxmesh_dataplane_start_info gauge\nvxmesh_dataplane_start_info{{how=\"{}\",adopted_tap=\"{}\"}} 1",
        label(st.how),
        st.adopted_tap
    );
    counter(
        &mut o,
        "vxmesh_handovers_total",
        "Handovers of the dataplane to a new vxmeshd since it last started cold (live and through systemd's store)",
        u64::from(st.handovers_total),
    );
    counter(
        &mut o,
        "vxmesh_cold_starts_total",
        "Cold starts of the dataplane (new descriptors), as far as the handed-over state remembers",
        u64::from(st.cold_starts_total),
    );
    gauge(
        &mut o,
        "vxmesh_handover_fds",
        "Descriptors (TAP queues, UDP sockets) this process took over at start",
        u64::from(st.fds_taken_over),
    );
    if let Some(g) = st.gap_ms {
        let _ = writeln!(
            o,
            "# HELP vxmesh_handover_gap_seconds Time no vxmeshd read the dataplane during the handover into this process (0 for a live handover; the kernel queued packets meanwhile)\n# TYPE vxmesh_handover_gap_seconds gauge\nvxmesh_handover_gap_seconds {:.6}",
            g / 1000.0
        );
    }
    if let Some(v) = st.overlap_ms {
        let _ = writeln!(
            o,
            "# HELP vxmesh_handover_overlap_seconds Live handover: time both processes read the same TAP queues and sockets\n# TYPE vxmesh_handover_overlap_seconds gauge\nvxmesh_handover_overlap_seconds {:.6}",
            v / 1000.0
        );
    }
    counter(
        &mut o,
        "vxmesh_handovers_refused_total",
        "vxmeshd processes refused as successors (another network, conflicting flags)",
        s.handovers_refused.load(Ordering::Relaxed),
    );

    let c = s.counters.snapshot();
    for (name, v) in c.fields() {
        let _ = writeln!(
            o,
            "# TYPE vxmesh_dataplane_{name}_total counter\nvxmesh_dataplane_{name}_total {v}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP vxmesh_dataplane_dropped_packets_total Packets not forwarded, by direction and reason\n# TYPE vxmesh_dataplane_dropped_packets_total counter"
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            o,
            "vxmesh_dataplane_dropped_packets_total{{direction=\"{}\",reason=\"{}\"}} {}",
            r.direction(),
            r.as_str(),
            c.dropped(r)
        );
    }
    render_peer_metrics(&mut o, &agent_peer_stats(s));
    if let Some(e) = s.engine_status() {
        let q = queue_lengths(info.tap.as_deref(), &e);
        if let Some(n) = q.tap_txqueuelen {
            let _ = writeln!(
                o,
                "# HELP vxmesh_tap_txqueuelen Frames the kernel holds for the TAP's reader before it drops\n# TYPE vxmesh_tap_txqueuelen gauge\nvxmesh_tap_txqueuelen {n}"
            );
        }
        if let Some(n) = q.vxlan_rcvbuf_kernel {
            let _ = writeln!(
                o,
                "# HELP vxmesh_vxlan_rcvbuf_bytes The VXLAN receive socket's buffer as the kernel counts it (twice --vxlan-rcvbuf)\n# TYPE vxmesh_vxlan_rcvbuf_bytes gauge\nvxmesh_vxlan_rcvbuf_bytes {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP vxmesh_offload_enabled 1 when the offload is in use\n# TYPE vxmesh_offload_enabled gauge"
        );
        for (k, v) in [
            ("tap_vnet_hdr", e.tap.vnet_hdr),
            ("tap_csum", e.tap.csum()),
            ("tap_tso", e.tap.tso()),
            ("tap_uso", e.tap.uso()),
            ("udp_gso", e.udp_gso.load(Ordering::Relaxed)),
            ("udp_gro", e.udp_gro),
        ] {
            let _ = writeln!(
                o,
                "vxmesh_offload_enabled{{feature=\"{k}\"}} {}",
                u8::from(v)
            );
        }
    }
    o
}

/// Per-peer counters, labelled with the peer's subnet and PublicIP.
fn render_peer_metrics(o: &mut String, stats: &[(Peer, PeerCounterSnapshot)]) {
    type Field = fn(&PeerCounterSnapshot) -> u64;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "vxmesh_peer_tx_packets_total",
            "counter",
            "VXLAN datagrams sent to the peer",
            |c| c.tx_packets,
        ),
        (
            "vxmesh_peer_tx_bytes_total",
            "counter",
            "UDP payload bytes sent to the peer",
            |c| c.tx_bytes,
        ),
        (
            "vxmesh_peer_rx_packets_total",
            "counter",
            "VXLAN datagrams received from the peer",
            |c| c.rx_packets,
        ),
        (
            "vxmesh_peer_rx_bytes_total",
            "counter",
            "UDP payload bytes received from the peer",
            |c| c.rx_bytes,
        ),
        (
            "vxmesh_peer_last_tx_timestamp_seconds",
            "gauge",
            "When a datagram was last sent to the peer (0: never)",
            |c| c.last_tx_unix_ms / 1000,
        ),
        (
            "vxmesh_peer_last_rx_timestamp_seconds",
            "gauge",
            "When a datagram was last received from the peer (0: never)",
            |c| c.last_rx_unix_ms / 1000,
        ),
    ];
    let labels = |p: &Peer| {
        format!(
            "subnet=\"{}\",public_ip=\"{}\"",
            label(&p.subnet.to_string()),
            p.public_ip
        )
    };
    for (name, kind, help, f) in families {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (p, c) in stats {
            let _ = writeln!(o, "{name}{{{}}} {}", labels(p), f(c));
        }
    }
    let _ = writeln!(
        o,
        "# HELP vxmesh_peer_dropped_packets_total Packets to or from the peer not forwarded, by reason\n# TYPE vxmesh_peer_dropped_packets_total counter"
    );
    for (p, c) in stats {
        for r in DropReason::ALL {
            if c.dropped(r) != 0 {
                let _ = writeln!(
                    o,
                    "vxmesh_peer_dropped_packets_total{{{},direction=\"{}\",reason=\"{}\"}} {}",
                    labels(p),
                    r.direction(),
                    r.as_str(),
                    c.dropped(r)
                );
            }
        }
    }
}

/// The IPv6 ingress check's drops: by reason, and the `inner_address` ones by peer
/// (the peers that have any, as the IPv4 path's per-peer drops).
fn ipv6_ingress_drops(o: &mut String, d: &crate::ingress6::Drops6) {
    let _ = writeln!(
        o,
        "# HELP vxmesh_ipv6_ingress_dropped_packets_total VXLAN over IPv6 dropped by the IPv6 ingress check, by reason (userspace dataplane; read every --iptables-resync)\n# TYPE vxmesh_ipv6_ingress_dropped_packets_total counter"
    );
    for (reason, n) in d.by_reason() {
        let _ = writeln!(
            o,
            "vxmesh_ipv6_ingress_dropped_packets_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP vxmesh_peer_ipv6_ingress_dropped_packets_total VXLAN over IPv6 from the peer's PublicIPv6 dropped by the IPv6 ingress check (an inner frame not IPv6 from the peer's subnet, or from outside the Network, to this node's)\n# TYPE vxmesh_peer_ipv6_ingress_dropped_packets_total counter"
    );
    for (ip, (subnet, n)) in d.inner_address.iter().filter(|(_, (_, n))| *n != 0) {
        let _ = writeln!(
            o,
            "vxmesh_peer_ipv6_ingress_dropped_packets_total{{subnet=\"{subnet}\",public_ipv6=\"{ip}\",reason=\"inner_address\"}} {n}"
        );
    }
}

async fn metrics(State(s): State<Arc<AgentState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&s),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_check_drops_by_reason_and_peer() {
        let s = AgentState::default();
        let text = render_metrics(&s);
        assert!(
            text.contains("vxmesh_ipv6_ingress_dropped_packets_total{reason=\"unknown_source\"} 0")
        );
        assert!(!text.contains("vxmesh_peer_ipv6_ingress_dropped_packets_total{"));
        let peer = |ip: &str, subnet: &str, n| (ip.parse().unwrap(), (subnet.parse().unwrap(), n));
        *s.ipv6_ingress_drops.lock().unwrap() = crate::ingress6::Drops6 {
            malformed: 1,
            unknown_source: 5,
            inner_address: [
                peer("fd00:64::12", "fd00:10:244:2::/64", 3),
                peer("fd00:64::13", "fd00:10:244:3::/64", 0),
            ]
            .into_iter()
            .collect(),
        };
        let text = render_metrics(&s);
        for line in [
            "vxmesh_ipv6_ingress_dropped_packets_total{reason=\"ingress_malformed\"} 1",
            "vxmesh_ipv6_ingress_dropped_packets_total{reason=\"unknown_source\"} 5",
            "vxmesh_ipv6_ingress_dropped_packets_total{reason=\"inner_address\"} 3",
            "vxmesh_peer_ipv6_ingress_dropped_packets_total{subnet=\"fd00:10:244:2::/64\",public_ipv6=\"fd00:64::12\",reason=\"inner_address\"} 3",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        // A peer with none is not a series.
        assert_eq!(
            text.matches("vxmesh_peer_ipv6_ingress_dropped_packets_total{")
                .count(),
            1
        );
        let j = status_json(&s);
        assert_eq!(j["ipv6_ingress_dropped"], 9);
        assert_eq!(j["ipv6_ingress_drops"]["unknown_source"], 5);
        assert_eq!(
            j["ipv6_ingress_drops_by_peer"][0]["public_ipv6"],
            "fd00:64::12"
        );
        assert_eq!(j["ipv6_ingress_drops_by_peer"][0]["inner_address"], 3);
        assert_eq!(j["ipv6_ingress_drops_by_peer"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn metrics_are_well_formed() {
        let s = AgentState::default();
        s.ready.lease.store(true, Ordering::Relaxed);
        let text = render_metrics(&s);
        assert!(text.contains("vxmesh_ready 0"));
        assert!(text.contains(
            "vxmesh_dataplane_dropped_packets_total{direction=\"ingress\",reason=\"wrong_vni\"} 0"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(!name.is_empty());
            value.parse::<f64>().unwrap();
        }
        assert!(text.contains("vxmesh_rejected_leases{reason=\"overlap\"} 0"));
        s.update(|i| {
            i.rejected = vec![crate::state::RejectedLease {
                key: "/coreos.com/network/subnets/0.0.0.0-0".into(),
                reason: "outside_network",
                why: "subnet 0.0.0.0/0 is not inside Network 10.244.0.0/16".into(),
            }]
        });
        let text = render_metrics(&s);
        assert!(text.contains("vxmesh_rejected_leases{reason=\"outside_network\"} 1"));
        assert_eq!(
            text.matches("vxmesh_rejected_leases{").count(),
            RejectReason::ALL.len()
        );
        let j = status_json(&s);
        assert_eq!(j["node"]["rejected"][0]["reason"], "outside_network");
        assert_eq!(j["ready"], false);
        assert_eq!(j["waiting_for"][0], "peer routes");
        assert_eq!(j["lease_expires_in_secs"], serde_json::Value::Null);
        assert!(text.contains("vxmesh_lease_expiry_timestamp_seconds 0.000"));
        assert!(
            !text.contains("vxmesh_handover_gap_seconds"),
            "no gap before a handover"
        );
        // The pool's gauges once the registry was listed.
        assert!(!text.contains("vxmesh_pool_subnets_free"));
        *s.pool.lock().unwrap() = Some(crate::pool::PoolUsage {
            total: 255,
            used: 250,
        });
        let text = render_metrics(&s);
        assert!(text.contains("\nvxmesh_pool_subnets_free 5\n"), "{text}");
        assert!(text.contains("\nvxmesh_pool_subnets_total 255\n"));
        assert_eq!(status_json(&s)["pool"]["nearly_full"], true);
        // The IPv6 pool's only with a dual-stack config.
        assert!(!text.contains("vxmesh_ipv6_pool") && status_json(&s)["pool6"].is_null());
        *s.pool6.lock().unwrap() = Some(crate::pool::PoolUsage {
            total: 255,
            used: 3,
        });
        let text = render_metrics(&s);
        assert!(
            text.contains("\nvxmesh_ipv6_pool_subnets_free 252\n"),
            "{text}"
        );
        assert!(text.contains("\nvxmesh_ipv6_pool_subnets_total 255\n"));
        assert_eq!(status_json(&s)["pool6"]["used"], 3);
    }

    #[test]
    fn lease_info_names_either_family() {
        let s = AgentState::default();
        let info = |s: &AgentState| {
            render_metrics(s)
                .lines()
                .find(|l| l.starts_with("vxmesh_lease_info{"))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            info(&s),
            r#"vxmesh_lease_info{subnet="",public_ip="",vtep_mac="",ipv6_subnet="",public_ipv6=""} 0"#
        );
        // An IPv6-only node: the IPv6 half alone, and the lease counts as held.
        s.update(|i| {
            i.ipv6_subnet = Some("fd00:10:244:3::/64".parse().unwrap());
            i.public_ipv6 = Some("fd00:64::11".parse().unwrap());
            i.vtep_mac = Some("0e:00:00:00:00:01".into());
        });
        assert_eq!(
            info(&s),
            r#"vxmesh_lease_info{subnet="",public_ip="",vtep_mac="0e:00:00:00:00:01",ipv6_subnet="fd00:10:244:3::/64",public_ipv6="fd00:64::11"} 1"#
        );
        // Dual stack: both.
        s.update(|i| {
            i.subnet = Some("10.244.3.0/24".parse().unwrap());
            i.public_ip = Some("192.168.100.11".parse().unwrap());
        });
        assert_eq!(
            info(&s),
            r#"vxmesh_lease_info{subnet="10.244.3.0/24",public_ip="192.168.100.11",vtep_mac="0e:00:00:00:00:01",ipv6_subnet="fd00:10:244:3::/64",public_ipv6="fd00:64::11"} 1"#
        );
    }

    #[test]
    fn handover_figures_in_metrics_and_status() {
        let s = AgentState::default();
        if let Ok(mut g) = s.start.lock() {
            *g = crate::handover::StartInfo {
                how: "handover",
                from_pid: Some(41),
                fds_taken_over: 10,
                gap_ms: Some(0.0),
                overlap_ms: Some(103.5),
                handovers_total: 2,
                cold_starts_total: 1,
                ..Default::default()
            };
        }
        s.handovers_refused.fetch_add(1, Ordering::Relaxed);
        let text = render_metrics(&s);
        for want in [
            "vxmesh_dataplane_start_info{how=\"handover\",adopted_tap=\"false\"} 1",
            "vxmesh_handovers_total 2",
            "vxmesh_cold_starts_total 1",
            "vxmesh_handover_fds 10",
            "vxmesh_handover_gap_seconds 0.000000",
            "vxmesh_handover_overlap_seconds 0.103500",
            "vxmesh_handovers_refused_total 1",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        let j = status_json(&s);
        assert_eq!(j["start"]["how"], "handover");
        assert_eq!(j["start"]["from_pid"], 41);
        assert_eq!(j["start"]["fds_taken_over"], 10);
        assert_eq!(j["handovers_refused"], 1);
        assert_eq!(
            j["pid"],
            std::process::id(),
            "which process answered (two may, during a handover)"
        );
    }

    #[test]
    fn lease_expiry_is_relative_to_now() {
        let l = LeaseStats::default();
        let t0 = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(lease_expires_in_secs(&l, t0), None);
        l.expires_unix_ms
            .store(1_800_000_000_000 + 3_599_500, Ordering::Relaxed);
        assert_eq!(lease_expires_in_secs(&l, t0), Some(3599));
        // Past expiry: negative, rounded down.
        let later = t0 + std::time::Duration::from_secs(3601);
        assert_eq!(lease_expires_in_secs(&l, later), Some(-2));
    }

    fn two_peers() -> (Vec<Peer>, ForwardingTable) {
        use vxmesh_dataplane::fib::LocalVtep;
        use vxmesh_dataplane::wire::Vni;
        let peer = |n: u8| Peer {
            ipv6: None,
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: std::net::Ipv4Addr::new(192, 168, 77, n),
            vtep_mac: format!("0e:00:00:00:00:0{n}").parse().unwrap(),
        };
        let peers = vec![peer(2), peer(3)];
        let local = LocalVtep {
            vtep_mac: "0e:00:00:00:00:01".parse().unwrap(),
            vni: Vni::new(1).unwrap(),
            port: 8472,
            inner: Some(vxmesh_dataplane::fib::InnerCheck::lab()),
            v6: None,
        };
        // Slots in another order than the peer list: the join is by VtepMAC.
        let t = ForwardingTable::new(local, [peers[1].to_vtep(), peers[0].to_vtep()]);
        (peers, t)
    }

    /// A dual-stack peer carries its IPv6 half in `/v1/peers` (an IPv4 one has no key).
    #[test]
    fn peers_json_shows_the_ipv6_half() {
        let (mut peers, t) = two_peers();
        peers[0].ipv6 = Some(crate::peers::PeerIpv6 {
            subnet: "fd00:10:244:2::/64".parse().unwrap(),
            public_ipv6: "fd00:64::2".parse().unwrap(),
            vtep_mac: vxmesh_dataplane::wire::MacAddr([0x06, 0, 0, 0, 0, 2]),
        });
        let j = peers_json(&peer_stats(&peers, Some(&t)));
        assert_eq!(
            j[0]["ipv6"],
            serde_json::json!({"subnet": "fd00:10:244:2::/64", "public_ipv6": "fd00:64::2", "vtep_mac": "06:00:00:00:00:02"})
        );
        assert!(j[1].get("ipv6").is_none());
    }

    /// Golden: the `/v1/peers` JSON (vxmeshctl peers --json) and the per-peer
    /// metrics, from counters set through the dataplane's API.
    #[test]
    fn peers_json_and_metrics_golden() {
        let (peers, t) = two_peers();
        let c = t.peer_counters(1).unwrap(); // 10.244.2.0/24
        c.add_tx(46, 66_000, 1_800_000_000_123);
        c.add_rx(3, 4_500, 1_800_000_001_000);
        c.count_drop(DropReason::WrongVni);
        let stats = peer_stats(&peers, Some(&t));
        let got = serde_json::to_string_pretty(&peers_json(&stats)).unwrap();
        let want = r#"[
  {
    "drops": {
      "wrong_vni": 1
    },
    "last_rx_unix_ms": 1800000001000,
    "last_tx_unix_ms": 1800000000123,
    "public_ip": "192.168.77.2",
    "rx_bytes": 4500,
    "rx_packets": 3,
    "subnet": "10.244.2.0/24",
    "tx_bytes": 66000,
    "tx_packets": 46,
    "underlay_tap_path": false,
    "vtep_mac": "0e:00:00:00:00:02"
  },
  {
    "drops": {},
    "last_rx_unix_ms": 0,
    "last_tx_unix_ms": 0,
    "public_ip": "192.168.77.3",
    "rx_bytes": 0,
    "rx_packets": 0,
    "subnet": "10.244.3.0/24",
    "tx_bytes": 0,
    "tx_packets": 0,
    "underlay_tap_path": false,
    "vtep_mac": "0e:00:00:00:00:03"
  }
]"#;
        assert_eq!(got, want);
        // No dataplane table (kernel dataplane): the peers, counting nothing.
        assert_eq!(
            peer_stats(&peers, None)[0].1,
            PeerCounterSnapshot::default()
        );

        let mut o = String::new();
        render_peer_metrics(&mut o, &stats);
        for line in [
            "vxmesh_peer_tx_bytes_total{subnet=\"10.244.2.0/24\",public_ip=\"192.168.77.2\"} 66000",
            "vxmesh_peer_rx_packets_total{subnet=\"10.244.2.0/24\",public_ip=\"192.168.77.2\"} 3",
            "vxmesh_peer_tx_bytes_total{subnet=\"10.244.3.0/24\",public_ip=\"192.168.77.3\"} 0",
            "vxmesh_peer_last_tx_timestamp_seconds{subnet=\"10.244.2.0/24\",public_ip=\"192.168.77.2\"} 1800000000",
            "vxmesh_peer_dropped_packets_total{subnet=\"10.244.2.0/24\",public_ip=\"192.168.77.2\",direction=\"ingress\",reason=\"wrong_vni\"} 1",
        ] {
            assert!(o.lines().any(|l| l == line), "{line} missing from\n{o}");
        }
        assert_eq!(o.matches("vxmesh_peer_dropped_packets_total{").count(), 1);
    }

    /// Golden: the `/v1/flows` JSON (vxmeshctl flows --json).
    #[test]
    fn flows_json_golden() {
        use std::net::{IpAddr, Ipv4Addr};
        use vxmesh_dataplane::flows::{Direction, FlowKey};
        let f = FlowStat {
            key: FlowKey {
                proto: 6,
                src: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)),
                dst: IpAddr::V4(Ipv4Addr::new(10, 244, 2, 2)),
                src_port: 40_000,
                dst_port: 5201,
            },
            dir: Direction::ToPeer,
            peer: Ipv4Addr::new(192, 168, 77, 2),
            bytes: 33_554_432,
            packets: 23_000,
            error_bytes: 0,
            first_seen_ms: 1_800_000_000_000,
            last_seen_ms: 1_800_000_009_500,
        };
        let got = serde_json::to_string_pretty(&flows_json(&[f], 1024, 131_072, 256)).unwrap();
        let want = r#"{
  "capacity": 1024,
  "flows": [
    {
      "bytes": 33554432,
      "direction": "tx",
      "dst": "10.244.2.2",
      "dst_port": 5201,
      "error_bytes": 0,
      "first_seen_unix_ms": 1800000000000,
      "last_seen_unix_ms": 1800000009500,
      "packets": 23000,
      "peer": "192.168.77.2",
      "proto": 6,
      "src": "10.244.1.2",
      "src_port": 40000
    }
  ],
  "sample_bytes": 131072,
  "samples": 256
}"#;
        assert_eq!(got, want);
        assert_eq!(flows_wanted(Some("n=5")), 5);
        assert_eq!(flows_wanted(Some("x=1&n=7")), 7);
        assert_eq!(flows_wanted(Some("n=-1")), 20);
        assert_eq!(flows_wanted(None), 20);
        assert_eq!(events_since(Some("since=42")), 42);
        assert_eq!(events_since(Some("since=x")), 0);
    }

    /// The routes as vxmeshctl reaches them: a real HTTP server on loopback.
    #[test]
    fn peers_flows_and_events_are_served() {
        use std::io::{Read, Write};
        use vxmesh_dataplane::fib::SharedTable;
        use vxmesh_dataplane::flows::{Direction, SharedFlows};
        let (peers, t) = two_peers();
        t.peer_counters(0)
            .unwrap()
            .add_rx(2, 3_000, 1_800_000_000_000);
        let mut st = AgentState {
            flows: Arc::new(SharedFlows::new(8, 2, 60_000, 1)),
            ..AgentState::default()
        };
        st.update(|i| i.peers = peers.into_iter().collect());
        *st.fib.get_mut().unwrap() = Some(SharedTable::new(t));
        // Two flows sampled on egress (a 2-byte mean picks every frame).
        let mut sampler = st.flows.sampler(1);
        for (sport, n) in [(40_000u16, 3), (40_001, 1)] {
            let mut f = vec![0u8; 14 + 20 + 20];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&40u16.to_be_bytes());
            f[22] = 64;
            f[23] = 6;
            f[26..30].copy_from_slice(&[10, 244, 1, 2]);
            f[30..34].copy_from_slice(&[10, 244, 2, 2]);
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&5201u16.to_be_bytes());
            for _ in 0..n {
                sampler.offer(
                    &f,
                    1_000,
                    1,
                    Direction::ToPeer,
                    "192.168.77.2".parse().unwrap(),
                );
            }
        }
        st.flows.absorb(&mut sampler, 1_800_000_000_000);
        st.event("lease_acquired", "subnet 10.244.1.0/24");
        st.event("peer_added", "10.244.2.0/24 via 192.168.77.2");
        let state = Arc::new(st);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let get = |addr: std::net::SocketAddr, path: &str| -> serde_json::Value {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            let (head, body) = buf.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.0 200"), "{path}: {head}");
            serde_json::from_str(body).unwrap()
        };
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(serve(l, state, std::future::pending()));
            tokio::task::spawn_blocking(move || {
                let p = get(addr, "/v1/peers");
                assert_eq!(p[0]["subnet"], "10.244.2.0/24");
                assert_eq!(p[1]["rx_bytes"], 3_000, "{p}");
                let f = get(addr, "/v1/flows?n=1");
                assert_eq!(f["flows"].as_array().unwrap().len(), 1, "{f}");
                assert_eq!(f["flows"][0]["src_port"], 40_000);
                assert_eq!(f["flows"][0]["bytes"], 3_000);
                assert_eq!(get(addr, "/v1/flows")["flows"].as_array().unwrap().len(), 2);
                let e = get(addr, "/v1/events?since=1");
                assert_eq!(e["events"].as_array().unwrap().len(), 1, "{e}");
                assert_eq!(e["events"][0]["kind"], "peer_added");
                assert_eq!(e["last"], 2);
            })
            .await
            .unwrap();
        });
    }

    #[test]
    fn flows_go_to_callers_on_this_host_only() {
        let at = |remote: &str, local: Option<&str>| Caller {
            remote: remote.parse().unwrap(),
            local: local.map(|l| l.parse().unwrap()),
        };
        assert!(at("127.0.0.1:5000", Some("127.0.0.1:8471")).on_this_host());
        assert!(at("127.9.9.9:5000", None).on_this_host());
        assert!(at("[::1]:5000", Some("[::1]:8471")).on_this_host());
        assert!(at("[::ffff:127.0.0.1]:5000", Some("[::]:8471")).on_this_host());
        // The host reaching its own address (--healthz-ip 192.168.56.11).
        assert!(at("192.168.56.11:5000", Some("192.168.56.11:8471")).on_this_host());
        assert!(at("[::ffff:192.168.56.11]:5000", Some("192.168.56.11:8471")).on_this_host());
        // Anyone else: another node, a scraper.
        assert!(!at("192.168.56.12:5000", Some("192.168.56.11:8471")).on_this_host());
        assert!(!at("192.168.56.12:5000", None).on_this_host());
        assert!(!at("[fd00::12]:5000", Some("[fd00::11]:8471")).on_this_host());
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
