//! `vxmeshd`: the vxmesh node agent. See `docs/operations.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vxmesh_control::agent::{self, AgentOptions};
use vxmesh_control::state::AgentState;
use vxmesh_dataplane::ifname::IfName;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Leases a pod subnet from etcd (flannel-compatible) and carries pod traffic to
/// the other nodes as VXLAN, encapsulated in userspace.
#[derive(Debug, Parser)]
#[command(name = "vxmeshd", version)]
struct Flags {
    #[command(flatten)]
    etcd: vxmesh_control::cli::EtcdArgs,
    /// Underlay interface (name or one of its IPv4 addresses); default: the interface of the default route.
    #[arg(long, env = "VXMESHD_IFACE")]
    iface: Option<String>,
    /// IPv4 address advertised to peers as this node's VTEP; default: --iface's first address.
    #[arg(long, env = "VXMESHD_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// Where to write flannel's subnet file (read by CNI plugins).
    #[arg(
        long,
        env = "VXMESHD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: PathBuf,
    /// Name of the TAP device carrying pod traffic.
    #[arg(long, env = "VXMESHD_TAP_NAME", default_value = "vxmesh0", value_parser = parse_ifname)]
    tap_name: IfName,
    /// TTL of the subnet lease in etcd, renewed continuously; a dead node's subnet
    /// is freed this long after it stops (e.g. 3600s, 30m, 1h). See docs/operations.md.
    #[arg(long, env = "VXMESHD_SUBNET_LEASE_TTL", default_value = "1h", value_parser = parse_duration)]
    subnet_lease_ttl: Duration,
    /// Address for /healthz, /readyz, /metrics and /v1/status.
    #[arg(long, env = "VXMESHD_HEALTHZ_IP", default_value = "127.0.0.1")]
    healthz_ip: IpAddr,
    /// Port for the HTTP endpoints; 0 disables them.
    #[arg(long, env = "VXMESHD_HEALTHZ_PORT", default_value_t = 8471)]
    healthz_port: u16,
    /// Log format.
    #[arg(long, env = "VXMESHD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// UDP send sockets (distinct outer source ports for flow entropy).
    #[arg(long, env = "VXMESHD_TX_SOCKETS", default_value_t = 8)]
    tx_sockets: usize,
    /// TAP queues, one sending thread each (more helps many flows, not one).
    #[arg(long, env = "VXMESHD_TAP_QUEUES", default_value_t = 1)]
    tap_queues: usize,
    /// Masquerade pod traffic that leaves the cluster Network (never traffic between
    /// pods); writes FLANNEL_IPMASQ=true so CNI bridges do not NAT as well.
    #[arg(long, env = "VXMESHD_IP_MASQ", default_value_t = true, action = clap::ArgAction::Set)]
    ip_masq: bool,
    /// Which dataplane carries pod traffic: vxmesh's userspace VXLAN, or the kernel's
    /// vxlan driver programmed like flannel's vxlan backend.
    #[arg(
        long,
        env = "VXMESHD_DATAPLANE",
        value_enum,
        default_value = "userspace"
    )]
    dataplane: vxmesh_control::node_dataplane::DataplaneKind,
    /// Disable TAP/UDP offloads (debugging; much slower).
    #[arg(long, env = "VXMESHD_NO_OFFLOADS")]
    no_offloads: bool,
}

fn parse_ifname(s: &str) -> Result<IfName, String> {
    IfName::new(s).map_err(|e| e.to_string())
}

/// Parses "90", "90s", "30m", "1h", "2d".
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    if secs < 5 {
        return Err(format!(
            "{s:?} is too short: the lease must survive a keepalive round trip (use 5s or more)"
        ));
    }
    Ok(Duration::from_secs(secs))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Binds the HTTP endpoint with SO_REUSEPORT: during a handover the old and the
/// new vxmeshd serve it side by side (every build that hands over sets it).
fn bind_http(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

fn main() -> anyhow::Result<()> {
    // Descriptors systemd kept for us (FDSTORE) come back from fd 3 on: take them
    // before anything else opens a descriptor.
    let stored_fds = vxmesh_control::sd_notify::take_listen_fds();
    let f = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match f.log_format {
        LogFormat::Text => sub.init(),
        LogFormat::Json => sub.json().init(),
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), build = %vxmesh_control::handover::build_id(), "vxmeshd starting");
    let stored_fds = stored_fds.map_err(|e| {
        anyhow::anyhow!("cannot take the descriptors systemd passed (LISTEN_FDS): {e}")
    })?;
    let notifier = vxmesh_control::sd_notify::Notifier::from_env()
        .map_err(|e| anyhow::anyhow!("cannot reach systemd's NOTIFY_SOCKET: {e}"))?;
    if !stored_fds.is_empty() {
        tracing::info!(count = stored_fds.len(), names = ?stored_fds.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), "systemd passed stored descriptors");
    }
    // Wrong etcd flags or unreadable TLS files are fatal now, not retried forever.
    let etcd = f.etcd.access()?;
    if let Some(files) = &etcd.tls {
        vxmesh_control::etcd_access::TlsMaterial::load(files)?;
    }
    tracing::info!(etcd = %etcd.describe(), "registry");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("vxmesh-control")
        .build()?;
    rt.block_on(async move {
        let state = Arc::new(AgentState::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if f.healthz_port != 0 {
            let addr = SocketAddr::new(f.healthz_ip, f.healthz_port);
            let listener = bind_http(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /healthz: {e} (choose another --healthz-port, or 0 to disable)"))?;
            tracing::info!(%addr, "serving /healthz /readyz /metrics /v1/status");
            let app = vxmesh_control::health::router(Arc::clone(&state));
            let mut rx = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            });
        }
        let opts = AgentOptions {
            etcd,
            etcd_prefix: f.etcd.etcd_prefix,
            iface: f.iface,
            public_ip: f.public_ip,
            subnet_file: f.subnet_file,
            tap_name: f.tap_name,
            lease_ttl: f.subnet_lease_ttl,
            tx_sockets: f.tx_sockets,
            tap_queues: f.tap_queues,
            offloads: !f.no_offloads,
            ip_masq: f.ip_masq,
            dataplane: f.dataplane,
        };
        let launch = agent::Launch {
            stored_fds,
            notifier,
        };
        let r = agent::run_with(opts, state, shutdown_signal(), launch).await;
        let _ = stop_tx.send(true);
        match &r {
            Ok(()) => tracing::info!("vxmeshd stopped"),
            Err(e) => tracing::error!("vxmeshd failed: {e:#}"),
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn flags_parse() {
        let f = Flags::try_parse_from([
            "vxmeshd",
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "--tap-name",
            "vx0",
        ])
        .unwrap();
        assert_eq!(f.etcd.etcd_endpoints.len(), 2);
        assert!(Flags::try_parse_from(["vxmeshd", "--tap-name", "this-name-is-too-long"]).is_err());
        let f = Flags::try_parse_from([
            "vxmeshd",
            "--etcd-endpoints",
            "https://a:2379",
            "--etcd-cafile",
            "/etc/vxmesh/etcd-ca.pem",
            "--etcd-certfile",
            "/etc/vxmesh/etcd-client.pem",
            "--etcd-keyfile",
            "/etc/vxmesh/etcd-client-key.pem",
            "--etcd-username",
            "vxmesh",
            "--etcd-password",
            "pw",
        ])
        .unwrap();
        let a = f.etcd.access().unwrap();
        assert!(a.tls.unwrap().client.is_some());
        assert_eq!(a.auth.unwrap().username, "vxmesh");
    }
}
