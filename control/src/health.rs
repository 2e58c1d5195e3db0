//! The agent's HTTP endpoints (default 127.0.0.1:8471):
//! `/healthz` (alive), `/readyz` (200 only once lease, routes and subnet file are in
//! place), `/metrics` (Prometheus text format 0.0.4) and `/v1/status` (JSON, what
//! `vxmeshctl` shows).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::peers::RejectReason;
use crate::registry::LeaseStats;
use crate::state::AgentState;
use vxmesh_dataplane::counters::DropReason;

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
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

/// The JSON behind `/v1/status`.
pub fn status_json(s: &AgentState) -> serde_json::Value {
    let info = s.info();
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
        })
    });
    serde_json::json!({
        "pid": std::process::id(),
        "ready": s.ready.ready(),
        "waiting_for": s.ready.missing(),
        "node": info,
        "counters": counters,
        "drops": drops,
        "offloads": offloads,
        "lease_reacquisitions": s.lease_reacquisitions.load(Ordering::Relaxed),
        "lease_renewals": s.lease.renewals.load(Ordering::Relaxed),
        "lease_expires_in_secs": lease_expires_in_secs(&s.lease, SystemTime::now()),
        "watch_restarts": s.watch.restarts.load(Ordering::Relaxed),
        "watch_compactions": s.watch.compactions.load(Ordering::Relaxed),
        "device_mac_repairs": s.device_repairs.load(Ordering::Relaxed),
        "start": s.start_info(),
        "handovers_refused": s.handovers_refused.load(Ordering::Relaxed),
        "iptables_repairs": s.iptables_repairs.load(Ordering::Relaxed),
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
        info.peers.len() as u64,
    );
    let _ = writeln!(
        o,
        "# HELP vxmesh_lease_info The subnet this node holds\n# TYPE vxmesh_lease_info gauge\nvxmesh_lease_info{{subnet=\"{}\",public_ip=\"{}\",vtep_mac=\"{}\"}} {}",
        label(&info.subnet.map(|x| x.to_string()).unwrap_or_default()),
        label(&info.public_ip.map(|x| x.to_string()).unwrap_or_default()),
        label(info.vtep_mac.as_deref().unwrap_or("")),
        u64::from(info.subnet.is_some())
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
        "vxmesh_iptables_repairs_total",
        "Times the masquerade/forward rules were found changed and restored",
        s.iptables_repairs.load(Ordering::Relaxed),
    );

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
    if let Some(e) = s.engine_status() {
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

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
