//! `vxmeshd`: the vxmesh node agent. See `docs/operations.md`; `vxmeshd --help`.
//!
//! Reads flanneld's command lines and `FLANNELD_*` variables as well as its own
//! (`control/src/flags.rs`), and tells systemd when it is ready (`Type=notify`).

use std::net::SocketAddr;
use std::sync::Arc;

use vxmesh_control::agent::{self, AgentOptions};
use vxmesh_control::flags::{self, Invocation, LogFormat};
use vxmesh_control::state::AgentState;

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

fn main() -> std::process::ExitCode {
    vxmesh_control::cli::exit(run())
}

fn run() -> anyhow::Result<()> {
    // Descriptors systemd kept for us (FDSTORE) come back from fd 3 on: take them
    // before anything else opens a descriptor.
    let stored_fds = vxmesh_control::sd_notify::take_listen_fds();
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let f = match flags::parse(&args, &env) {
        Ok(Invocation::Run(f)) => *f,
        Ok(Invocation::Help) => {
            print!("{}", flags::usage());
            return Ok(());
        }
        Ok(Invocation::Version) => {
            println!("vxmeshd {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Err(e) => {
            eprintln!("vxmeshd: {e}");
            std::process::exit(2);
        }
    };
    // RUST_LOG, when set, is more precise than -v.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(f.log_level()));
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
    // READY=1 (once routes are programmed), WATCHDOG=1, STOPPING=1 and the
    // descriptor store all go through this (see handover::node).
    let notifier = vxmesh_control::sd_notify::Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("cannot reach systemd's NOTIFY_SOCKET, not notifying: {e}");
        None
    });
    if !stored_fds.is_empty() {
        tracing::info!(count = stored_fds.len(), names = ?stored_fds.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), "systemd passed stored descriptors");
    }
    tracing::info!("flags: {}", f.canonical().join(" "));
    for n in &f.notes {
        tracing::warn!("{n}");
    }
    // Wrong etcd flags or unreadable TLS files are fatal now, not retried forever.
    let etcd = vxmesh_control::etcd_access::EtcdAccess::new(f.etcd.clone())?;
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
        if let Some(addr) = f.healthz {
            let listener = bind_http(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /healthz: {e} (choose another --healthz-port, or 0 to disable)"))?;
            tracing::info!(%addr, "serving /healthz /readyz /metrics /v1/status");
            let mut rx = stop_rx.clone();
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let _ = vxmesh_control::health::serve(listener, state, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            });
        }
        let opts = AgentOptions {
            etcd,
            etcd_prefix: f.etcd_prefix,
            underlay: f.underlay,
            subnet_file: f.subnet_file,
            tap_name: f.tap_name,
            lease_ttl: f.lease_ttl,
            tx_sockets: f.tx_sockets,
            tap_queues: f.tap_queues,
            tap_txqueuelen: f.tap_txqueuelen,
            vxlan_rcvbuf: f.vxlan_rcvbuf,
            offloads: f.offloads,
            aqm: f.aqm,
            engine_priority: f.engine_priority,
            busy_poll: f.busy_poll,
            egress_tunnel_gso: f.egress_tunnel_gso,
            ip_masq: f.ip_masq,
            masq_random_fully: f.masq_random_fully,
            vxlan_notrack: f.vxlan_notrack,
            iptables_forward_rules: f.iptables_forward_rules,
            iptables_resync: f.iptables_resync,
            ip_blackhole_route: f.ip_blackhole_route,
            dataplane: f.dataplane,
            ipv6_dataplane: f.ipv6_dataplane,
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
