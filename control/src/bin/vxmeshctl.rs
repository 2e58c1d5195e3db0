//! `vxmeshctl`: the operator's view of vxmesh — the registry's leases (from etcd)
//! and one node's agent (lease, peers, offloads, counters, from its HTTP endpoint).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::Value;
use vxmesh_control::lease::{parse_lease_key, LeaseAttrs, LeaseKey, MAX_LEASE_VALUE_BYTES};
use vxmesh_control::peers::{Ipv6OnlyRules, PeerKind, PeerRules, PeerTable, Rejection, Verdict};
use vxmesh_control::registry::Registry;

#[derive(Debug, Parser)]
#[command(
    name = "vxmeshctl",
    version,
    about = "Inspect a vxmesh cluster and node"
)]
struct Cli {
    /// The node agent's HTTP endpoint (vxmeshd --healthz-ip/--healthz-port).
    #[arg(
        long,
        global = true,
        env = "VXMESHCTL_AGENT",
        default_value = "http://127.0.0.1:8471"
    )]
    agent: String,
    #[command(flatten)]
    etcd: vxmesh_control::cli::EtcdArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// This node: subnet, VTEP, readiness, offloads.
    Status,
    /// This node's peers (what its routes point at) and the traffic to and from
    /// each: packets, bytes, drops, last seen. Sorted by bytes: who talks most.
    Peers,
    /// The top flows (inner 5-tuples) crossing the overlay at this node, refreshing
    /// like top (Ctrl-C to quit); once with --json. Estimated from samples.
    Flows {
        /// How many flows to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        top: usize,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Print once and exit (no screen clearing).
        #[arg(long)]
        once: bool,
    },
    /// This node's dataplane counters and drops by reason.
    Counters,
    /// Every lease in the registry (flannel and vxmesh nodes alike), with TTLs, and
    /// whether the nodes take it as a peer or reject it (and why).
    Leases,
    /// The network config from the registry, with defaults filled in.
    Config,
    /// What the agent did (lease acquired/renewed/lost, peers added/changed/removed/
    /// rejected, offloads chosen), as it happens; Ctrl-C to quit. --json: one JSON
    /// object a line.
    Events {
        /// Print what the agent holds now and exit.
        #[arg(long)]
        once: bool,
    },
    /// Remove the masquerade/forward (and --vxlan-notrack) rules vxmeshd installed,
    /// and the IPv6 device's ingress check: iptables chains and the nftables tables
    /// (after uninstall).
    CleanupIptables,
    /// Delete the userspace dataplane's TAP — persistent, it outlives vxmeshd so
    /// restarts lose nothing — with its address, routes and neighbours, and a
    /// dual-stack node's IPv6 device (`flannel-v6.<VNI>`). Refuses while a vxmeshd
    /// runs on it, and touches no link vxmesh did not make.
    CleanupTap {
        /// The TAP's name (vxmeshd --tap-name).
        #[arg(long, env = "VXMESHD_TAP_NAME", default_value = "vxmesh0")]
        tap_name: String,
        /// The subnet file vxmeshd wrote (vxmeshd --subnet-file): its
        /// FLANNEL_NETWORK says which DirectRouting routes (`<peer subnet> via
        /// <PublicIP>` inside the Network) to remove with the TAP.
        #[arg(
            long,
            env = "VXMESHD_SUBNET_FILE",
            default_value = "/run/flannel/subnet.env"
        )]
        subnet_file: std::path::PathBuf,
    },
    /// Wait until the agent reports ready (exit 1 on timeout).
    WaitReady {
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// A minimal HTTP/1.0 GET (the agent speaks plain HTTP on a local port).
fn http_get(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let rest = base
        .strip_prefix("http://")
        .with_context(|| format!("--agent {base}: only http:// URLs are supported"))?;
    let hostport = rest.trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("--agent {base}: cannot resolve {hostport}"))?
        .next()
        .with_context(|| format!("--agent {base}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the agent at {base} (is vxmeshd running on this node, and is this its --healthz-port?)"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP response from {base}"))?;
    Ok((code, body.to_string()))
}

fn status(cli: &Cli) -> anyhow::Result<Value> {
    get_json(cli, "/v1/status")
}

fn get_json(cli: &Cli, path: &str) -> anyhow::Result<Value> {
    let (code, body) = http_get(&cli.agent, path)?;
    if code != 200 {
        bail!("agent answered {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("agent's {path} is not JSON"))
}

/// Bytes with a binary unit (1.5Mi).
fn human(v: u64) -> String {
    let mut x = v as f64;
    for unit in ["", "Ki", "Mi", "Gi", "Ti"] {
        if x < 1024.0 || unit == "Ti" {
            return if unit.is_empty() {
                format!("{v}")
            } else {
                format!("{x:.1}{unit}")
            };
        }
        x /= 1024.0;
    }
    format!("{v}")
}

/// "3s ago" from a Unix-ms stamp (0: never).
fn ago(ms: &Value, now_ms: u64) -> String {
    match ms.as_u64() {
        None | Some(0) => "never".into(),
        Some(t) => format!("{}s ago", now_ms.saturating_sub(t) / 1000),
    }
}

/// How GSO frames to a peer leave (`vxmeshctl peers`' EGRESS): `whole` through the
/// underlay TAP once the path is proven; `cut` here while it is not; `idle` when
/// nothing was sent to the peer for longer than a proof lasts (proofs are refreshed
/// only while traffic flows, so an idle peer's has lapsed, which says nothing about
/// the path).
fn egress_state(proven: bool, last_tx_ms: u64, now_ms: u64) -> &'static str {
    if proven {
        "whole"
    } else if now_ms.saturating_sub(last_tx_ms) > vxmesh_dataplane::path_probe::VALID_MS {
        "idle"
    } else {
        "cut"
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// One event as a line: UTC time, kind, detail.
fn event_line(e: &Value) -> String {
    let ms = u(&e["unix_ms"]);
    let rem = (ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z  {:<16}  {}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000,
        s(&e["kind"]),
        s(&e["detail"])
    )
}

/// The flows table as text (one screen of `vxmeshctl flows`).
fn flows_text(f: &Value, now: u64) -> String {
    let mut rows = Vec::new();
    for x in f["flows"].as_array().into_iter().flatten() {
        let proto = match u(&x["proto"]) {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 => "icmp".to_string(),
            58 => "icmp6".to_string(),
            p => p.to_string(),
        };
        let secs =
            (u(&x["last_seen_unix_ms"]).saturating_sub(u(&x["first_seen_unix_ms"])) / 1000).max(1);
        rows.push(vec![
            proto,
            format!("{}:{}", s(&x["src"]), s(&x["src_port"])),
            format!("{}:{}", s(&x["dst"]), s(&x["dst_port"])),
            s(&x["direction"]),
            s(&x["peer"]),
            human(u(&x["bytes"])),
            u(&x["packets"]).to_string(),
            format!("{}/s", human(u(&x["bytes"]) / secs)),
            if u(&x["error_bytes"]) > 0 {
                format!("±{}", human(u(&x["error_bytes"])))
            } else {
                String::new()
            },
            ago(&x["last_seen_unix_ms"], now),
        ]);
    }
    let mut o = format!(
        "top flows (sampled: one frame per {} on average, {} samples, table of {})\n",
        human(u(&f["sample_bytes"])),
        u(&f["samples"]),
        u(&f["capacity"])
    );
    o.push_str(&table_text(
        &[
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "DIR",
            "PEER",
            "BYTES",
            "PKTS",
            "AVG-RATE",
            "ERROR",
            "LAST",
        ],
        &rows,
    ));
    o
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `vxmeshctl counters`' rows for the IPv6 ingress check (docs/decisions/0031): its
/// drops by reason, and the `inner_address` ones by peer. None on a node without an
/// IPv6 subnet that counted nothing.
fn ipv6_check_rows(st: &Value) -> Vec<Vec<String>> {
    let reasons = st["ipv6_ingress_drops"].as_object();
    let by_peer = st["ipv6_ingress_drops_by_peer"].as_array();
    let any = reasons
        .into_iter()
        .flatten()
        .any(|(_, v)| v.as_u64().unwrap_or(0) != 0);
    if st["node"]["ipv6_subnet"].is_null() && !any {
        return Vec::new();
    }
    let mut rows: Vec<Vec<String>> = reasons
        .into_iter()
        .flatten()
        .map(|(k, v)| vec![format!("ipv6_check_dropped:{k}"), s(v)])
        .collect();
    rows.extend(by_peer.into_iter().flatten().map(|p| {
        vec![
            format!(
                "ipv6_check_dropped:inner_address:{} ({})",
                s(&p["public_ipv6"]),
                s(&p["subnet"])
            ),
            s(&p["inner_address"]),
        ]
    }));
    rows
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table_text(headers, rows));
}

/// `s` with its control characters escaped (`\u{1b}`, `\n`, …): table cells and
/// rejection lines carry text from etcd (keys, BackendType), which anyone who can
/// write the prefix chooses, and must not drive the operator's terminal.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let rows = &rows;
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut o = String::new();
    let mut line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = w[i]))
            .collect();
        o.push_str(parts.join("  ").trim_end());
        o.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
    o
}

fn main() -> std::process::ExitCode {
    // Output piped into `head` or `less` that stops reading ends this process quietly,
    // as it ends `ip` or `ls` (Rust ignores SIGPIPE, so a print would panic instead).
    // SAFETY: sets a signal's disposition to the default, before any other thread
    // exists; no Rust code runs as a handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    vxmesh_control::cli::exit(run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Status => {
            let st = status(&cli)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            let n = &st["node"];
            println!(
                "ready:        {}{}",
                st["ready"],
                if st["ready"] == true {
                    String::new()
                } else {
                    format!(" (waiting for {})", s(&st["waiting_for"]))
                }
            );
            if n["ipv6_network"].is_string() {
                // An IPv6-only network: no IPv4 subnet, no PublicIP.
                println!(
                    "subnet:       {}  (IPv6-only network {}, iface {})",
                    s(&n["ipv6_subnet"]),
                    s(&n["ipv6_network"]),
                    s(&n["iface"])
                );
                println!("public ipv6:  {}", s(&n["public_ipv6"]));
            } else {
                println!(
                    "subnet:       {}  (network {})",
                    s(&n["subnet"]),
                    s(&n["network"])
                );
                println!(
                    "public ip:    {}  (iface {})",
                    s(&n["public_ip"]),
                    s(&n["iface"])
                );
            }
            if n["ipv6_subnet"].is_string() && !n["ipv6_network"].is_string() {
                println!(
                    "ipv6:         {}  public ipv6 {}",
                    s(&n["ipv6_subnet"]),
                    s(&n["public_ipv6"])
                );
            }
            println!(
                "vtep:         {} mac {}  vni {}  port {}  mtu {}",
                s(&n["tap"]),
                s(&n["vtep_mac"]),
                s(&n["vni"]),
                s(&n["port"]),
                s(&n["mtu"])
            );
            if n["reservation"] == true {
                println!(
                    "lease:        reservation (no etcd lease: never expires, never renewed)  reacquired {}x",
                    st["lease_reacquisitions"]
                );
            } else {
                println!(
                    "lease:        {}  ttl {}s  expires in {}s unless renewed  renewed {}x  reacquired {}x",
                    s(&n["lease_id"]),
                    s(&n["lease_ttl_secs"]),
                    s(&st["lease_expires_in_secs"]),
                    st["lease_renewals"],
                    st["lease_reacquisitions"]
                );
            }
            // The underlay TAP path, where the agent reports it (userspace dataplane).
            let whole = match st["offloads"]["egress_tunnel_gso"].as_bool() {
                Some(on) => format!("  egress_tunnel_gso {on}"),
                None => String::new(),
            };
            println!(
                "dataplane:    {}  offloads: {}  udp_gso {}  udp_gro {}{whole}",
                s(&n["dataplane"]),
                s(&st["offloads"]["tap"]),
                s(&st["offloads"]["udp_gso"]),
                s(&st["offloads"]["udp_gro"])
            );
            // Where traffic waits inside a userspace node (decisions 0026 and 0027).
            let q = &st["queues"];
            if q.is_object() {
                let mib = |v: &Value| {
                    v.as_u64().map_or("-".to_string(), |b| {
                        format!("{:.1} MiB", b as f64 / 1048576.0)
                    })
                };
                println!(
                    "queues:       TAP {} frames  VXLAN receive socket {} (the kernel counts {})",
                    s(&q["tap_txqueuelen"]),
                    mib(&q["vxlan_rcvbuf_bytes"]),
                    mib(&q["vxlan_rcvbuf_kernel_bytes"])
                );
            }
            let start = &st["start"];
            if start.is_object() {
                let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1} ms"));
                let from = match start["from_pid"].as_u64() {
                    Some(pid) => format!(" from pid {pid} (build {})", s(&start["from_build"])),
                    None => String::new(),
                };
                let how = s(&start["how"]);
                let detail = if how == "cold" {
                    let mut d = String::new();
                    if start["adopted_tap"] == true {
                        d.push_str(", attached to the TAP an earlier run left");
                    }
                    if let Some(r) = start["cold_reason"].as_str() {
                        d.push_str(&format!(" ({r})"));
                    }
                    d
                } else {
                    format!(
                        ", {} descriptors, gap {}, overlap {}",
                        s(&start["fds_taken_over"]),
                        ms(&start["gap_ms"]),
                        ms(&start["overlap_ms"])
                    )
                };
                println!(
                    "start:        {how}{from}{detail}; handovers {}, cold starts {}, refused {}",
                    s(&start["handovers_total"]),
                    s(&start["cold_starts_total"]),
                    s(&st["handovers_refused"])
                );
            }
            let down = match st["etcd_unreachable_for_secs"].as_u64() {
                Some(t) => format!("  UNREACHABLE for {t} s (no peer change reaches this node)"),
                None => String::new(),
            };
            println!("etcd:         {}{down}", s(&n["etcd"]));
            let config = &st["config_in_etcd"];
            match config["state"].as_str() {
                None | Some("same") => {}
                Some(state) => println!(
                    "config:       {} in etcd{}: this node still runs the config it started with (vxmeshctl events says more)",
                    state.to_uppercase(),
                    config["detail"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
            }
            println!(
                "peers:        {}",
                n["peers"].as_array().map_or(0, |a| a.len())
                    + n["ipv6_only_peers"].as_array().map_or(0, |a| a.len())
            );
            if let Some(e) = n["last_error"].as_str() {
                println!("last error:   {e}");
            }
            for r in n["rejected"].as_array().into_iter().flatten() {
                println!(
                    "rejected:     {}: {} ({})",
                    s(&r["key"]),
                    s(&r["why"]),
                    s(&r["reason"])
                );
            }
        }
        Cmd::Peers => {
            let mut peers = get_json(&cli, "/v1/peers")?
                .as_array()
                .cloned()
                .unwrap_or_default();
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
                return Ok(());
            }
            peers.sort_by_key(|p| std::cmp::Reverse(u(&p["tx_bytes"]) + u(&p["rx_bytes"])));
            let now = now_ms();
            // With the underlay TAP path: how each peer's GSO frames leave (`whole`
            // once its path is proven, else `cut` here).
            let egress = get_json(&cli, "/v1/status")
                .ok()
                .and_then(|st| st["offloads"]["egress_tunnel_gso"].as_bool())
                .unwrap_or(false);
            let rows: Vec<Vec<String>> = peers
                .iter()
                .flat_map(|p| {
                    let drops: Vec<String> = p["drops"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    let last = u(&p["last_tx_unix_ms"]).max(u(&p["last_rx_unix_ms"]));
                    // An IPv6-only network's peer has a PublicIPv6 alone.
                    let public = if p["public_ip"].is_string() {
                        &p["public_ip"]
                    } else {
                        &p["public_ipv6"]
                    };
                    let mut row = vec![
                        s(&p["subnet"]),
                        s(public),
                        s(&p["vtep_mac"]),
                        format!("{}/{}", human(u(&p["tx_bytes"])), u(&p["tx_packets"])),
                        format!("{}/{}", human(u(&p["rx_bytes"])), u(&p["rx_packets"])),
                        if drops.is_empty() {
                            "0".into()
                        } else {
                            drops.join(",")
                        },
                        ago(&Value::from(last), now),
                    ];
                    if egress {
                        let whole = p["underlay_tap_path"].as_bool() == Some(true);
                        row.push(egress_state(whole, u(&p["last_tx_unix_ms"]), now).into());
                    }
                    // A dual-stack peer's IPv6 half, on its own line (no counters: the
                    // kernel's device carries it).
                    let v6 = &p["ipv6"];
                    let row6 = v6.is_object().then(|| {
                        let mut r =
                            vec![s(&v6["subnet"]), s(&v6["public_ipv6"]), s(&v6["vtep_mac"])];
                        r.extend(std::iter::repeat_n(
                            "-".to_string(),
                            4 + usize::from(egress),
                        ));
                        r
                    });
                    std::iter::once(row).chain(row6)
                })
                .collect();
            let mut headers = vec![
                "SUBNET",
                "PUBLIC-IP",
                "VTEP-MAC",
                "TX-BYTES/PKTS",
                "RX-BYTES/PKTS",
                "DROPS",
                "LAST-SEEN",
            ];
            if egress {
                headers.push("EGRESS");
            }
            table(&headers, &rows);
        }
        Cmd::Flows {
            top,
            interval,
            once,
        } => {
            let path = format!("/v1/flows?n={top}");
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&get_json(&cli, &path)?)?);
                return Ok(());
            }
            loop {
                let text = flows_text(&get_json(&cli, &path)?, now_ms());
                if *once {
                    print!("{text}");
                    return Ok(());
                }
                // Clear the screen and home the cursor, like top.
                print!("\x1b[2J\x1b[H{text}");
                std::io::stdout().flush()?;
                std::thread::sleep(Duration::from_secs((*interval).max(1)));
            }
        }
        Cmd::Counters => {
            let st = status(&cli)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "counters": st["counters"],
                        "drops": st["drops"],
                        "ipv6_ingress_drops": st["ipv6_ingress_drops"],
                        "ipv6_ingress_drops_by_peer": st["ipv6_ingress_drops_by_peer"],
                    }))?
                );
                return Ok(());
            }
            let mut rows: Vec<Vec<String>> = st["counters"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), s(v)])
                .collect();
            rows.extend(
                st["drops"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| vec![format!("dropped:{k}"), s(v)]),
            );
            rows.extend(ipv6_check_rows(&st));
            table(&["COUNTER", "VALUE"], &rows);
        }
        Cmd::Events { once } => {
            let mut since = 0u64;
            loop {
                let page = get_json(&cli, &format!("/v1/events?since={since}"))?;
                let last = u(&page["last"]);
                if last < since {
                    // The agent restarted: its sequence began again.
                    since = 0;
                    continue;
                }
                if u(&page["missed"]) > 0 {
                    eprintln!("({} older events no longer held)", u(&page["missed"]));
                }
                for e in page["events"].as_array().into_iter().flatten() {
                    if cli.json {
                        println!("{e}");
                    } else {
                        println!("{}", event_line(e));
                    }
                }
                std::io::stdout().flush()?;
                since = last;
                if *once {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Cmd::Leases | Cmd::Config => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(registry_cmd(&cli))?;
        }
        Cmd::CleanupIptables => {
            vxmesh_control::masq::remove()?;
            vxmesh_control::ingress6::remove()?;
            println!(
                "removed the {}, {} and {} chains and their hooks (iptables and ip6tables), and nftables tables ip {}, ip6 {} and ip6 {}",
                vxmesh_control::masq::NAT_CHAIN,
                vxmesh_control::masq::FWD_CHAIN,
                vxmesh_control::masq::RAW_CHAIN,
                vxmesh_control::masq::NFT_TABLE,
                vxmesh_control::masq::NFT_TABLE,
                vxmesh_control::ingress6::NFT_TABLE
            );
        }
        Cmd::CleanupTap {
            tap_name,
            subnet_file,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(cleanup_tap(tap_name, subnet_file))?;
        }
        Cmd::WaitReady { timeout } => {
            let deadline = Instant::now() + Duration::from_secs(*timeout);
            let mut last;
            loop {
                match http_get(&cli.agent, "/readyz") {
                    Ok((200, _)) => {
                        println!("ready");
                        return Ok(());
                    }
                    Ok((_, body)) => last = body.trim().to_string(),
                    Err(e) => last = format!("{e:#}"),
                }
                if Instant::now() >= deadline {
                    bail!("agent not ready after {timeout}s: {last}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Ok(())
}

/// The IPv4 and IPv6 Networks the subnet file names (FLANNEL_NETWORK,
/// FLANNEL_IPV6_NETWORK), each with the length of the node subnets cut from it (that
/// of FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET): DirectRouting's routes are such subnets
/// inside them. None when the file is missing or unreadable, or names no subnet
/// (said on stderr).
fn networks_in(path: &std::path::Path) -> DirectNetworks {
    let env = vxmesh_control::subnet_env::read_file(path)
        .map_err(|e| e.to_string())
        .and_then(|b| vxmesh_subnet_env::SubnetEnv::parse(&b).map_err(|e| e.to_string()));
    match env {
        Ok(env) => (
            env.subnet
                .map(|s| {
                    env.networks
                        .iter()
                        .filter_map(|n| {
                            vxmesh_control::subnet::Subnet::new(n.network(), n.prefix()).ok()
                        })
                        .map(|n| (n, s.prefix()))
                        .collect()
                })
                .unwrap_or_default(),
            env.ipv6_subnet
                .map(|s| {
                    env.ipv6_networks
                        .iter()
                        .filter_map(|n| {
                            vxmesh_control::subnet6::Subnet6::new(n.network(), n.prefix()).ok()
                        })
                        .map(|n| (n, s.prefix()))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Err(e) => {
            eprintln!(
                "{}: {e}; direct routes (DirectRouting) are left alone",
                path.display()
            );
            (Vec::new(), Vec::new())
        }
    }
}

/// Networks with their node subnets' length, IPv4 and IPv6 ([`networks_in`]).
type DirectNetworks = (
    Vec<(vxmesh_control::subnet::Subnet, u8)>,
    Vec<(vxmesh_control::subnet6::Subnet6, u8)>,
);

/// Removes DirectRouting's routes: node subnets inside the `networks` (IPv4, IPv6),
/// with a gateway, through any device but `tap`. Returns how many went.
async fn remove_direct_routes(
    nl: &vxmesh_control::netlink::Netlink,
    (networks, networks6): &DirectNetworks,
    tap: u32,
) -> anyhow::Result<usize> {
    use vxmesh_control::node_dataplane::direct::{is_stale_direct_route, is_stale_direct_route6};
    let mut n = 0;
    for r in nl.gateway_routes(tap).await? {
        if networks.iter().any(|(net, len)| {
            is_stale_direct_route(net, *len, r.destination, r.prefix_len, r.gateway, &[])
        }) {
            nl.delete_route(&r).await?;
            n += 1;
        }
    }
    if networks6.is_empty() {
        return Ok(n);
    }
    for r in nl.gateway_routes6(tap).await? {
        if networks6.iter().any(|(net, len)| {
            is_stale_direct_route6(net, *len, r.destination, r.prefix_len, r.gateway, &[])
        }) {
            nl.delete_route(&r).await?;
            n += 1;
        }
    }
    Ok(n)
}

async fn cleanup_tap(name: &str, subnet_file: &std::path::Path) -> anyhow::Result<()> {
    use vxmesh_control::node_dataplane::kernel::DEVICE6_PREFIX;
    use vxmesh_control::node_dataplane::userspace::TAP_ALIAS;
    let tap = vxmesh_dataplane::ifname::IfName::new(name)?;
    if let Some(pid) = vxmesh_control::handover::running_agent(&tap) {
        bail!("vxmeshd (pid {pid}) runs on {tap}: stop it first (systemctl stop vxmeshd)");
    }
    let nl = vxmesh_control::netlink::Netlink::connect()?;
    match nl.link_identity(tap.as_str()).await? {
        None => println!("no link {tap}: nothing to remove"),
        Some(l) if l.kind == "tun" && l.alias.as_deref() == Some(TAP_ALIAS) => {
            // Only while vxmesh's TAP is there: the routes are then vxmeshd's (a
            // node running flanneld's kernel device keeps its own), and so is a
            // dual-stack node's IPv6 device (the kernel dataplane deletes the TAP),
            // deleted first with its routes (they have gateways inside the IPv6 Network).
            let mut v6 = Vec::new();
            for x in nl.vxlan_links().await? {
                if x.name.starts_with(&format!("{DEVICE6_PREFIX}.")) {
                    nl.delete_link(x.index).await?;
                    v6.push(x.name);
                }
            }
            let direct = remove_direct_routes(&nl, &networks_in(subnet_file), l.index).await?;
            nl.delete_link(l.index).await?;
            println!(
                "removed {tap} with its address, routes and neighbours, and {direct} direct routes"
            );
            for name in v6 {
                println!("removed the IPv6 device {name} with its routes and neighbours");
            }
        }
        Some(l) => bail!(
            "{tap} is not vxmesh's TAP (kind {:?}, alias {:?}): not touching it",
            l.kind,
            l.alias.unwrap_or_default()
        ),
    }
    // --ip-blackhole-route's routes (vxmesh's metric, either dataplane).
    let removed = vxmesh_control::blackhole::apply(&nl, &[]).await?.remove;
    if !removed.is_empty() {
        let list: Vec<String> = removed.iter().map(ToString::to_string).collect();
        println!(
            "removed the blackhole routes of --ip-blackhole-route: {}",
            list.join(", ")
        );
    }
    Ok(())
}

/// A pool's usage line of `vxmeshctl leases` (`ipv6`: the IPv6 pool of a dual-stack
/// network), with a warning near exhaustion.
fn pool_line(p: &vxmesh_control::pool::PoolUsage, ipv6: bool) -> String {
    let (name, fields) = if ipv6 {
        ("ipv6 pool", "IPv6Network/IPv6SubnetMin/IPv6SubnetMax")
    } else {
        ("pool", "Network/SubnetMin/SubnetMax")
    };
    let mut l = format!(
        "{name}: {} of {} subnets used ({}%), {} free",
        p.used,
        p.total,
        p.used_percent(),
        p.free()
    );
    if p.nearly_full() {
        l.push_str(&format!(
            "\nWARNING: the {name} is nearly exhausted (>= {}%): new nodes will get no subnet; widen {fields} or remove stale leases",
            vxmesh_control::pool::WARN_PERCENT
        ));
    }
    l
}

/// The usage lines of both pools (the IPv6 one only with a dual-stack config).
fn pool_lines(
    pool: Option<vxmesh_control::pool::PoolUsage>,
    pool6: Option<vxmesh_control::pool::PoolUsage>,
) -> Option<String> {
    let mut lines: Vec<String> = pool.iter().map(|p| pool_line(p, false)).collect();
    lines.extend(pool6.iter().map(|p| pool_line(p, true)));
    (!lines.is_empty()).then(|| lines.join("\n"))
}

async fn registry_cmd(cli: &Cli) -> anyhow::Result<()> {
    let reg = Registry::connect_with(&cli.etcd.access()?, &cli.etcd.etcd_prefix).await?;
    if let Cmd::Config = cli.cmd {
        let c = reg.network_config().await?;
        if cli.json {
            println!(
                "{}",
                serde_json::json!({
                    "EnableIPv4": c.ipv4.is_some(),
                    "Network": c.ipv4.map(|v| v.network.to_string()),
                    "SubnetLen": c.ipv4.map(|v| v.subnet_len),
                    "SubnetMin": c.ipv4.map(|v| v.subnet_min.to_string()),
                    "SubnetMax": c.ipv4.map(|v| v.subnet_max.to_string()),
                    "Backend": {"Type": "vxlan", "VNI": c.backend.vni.get(), "Port": c.backend.port, "MTU": c.backend.mtu, "DirectRouting": c.backend.direct_routing},
                    "EnableIPv6": c.ipv6.is_some(),
                    "IPv6Network": c.ipv6.map(|v| v.network.to_string()),
                    "IPv6SubnetLen": c.ipv6.map(|v| v.subnet_len),
                    "IPv6SubnetMin": c.ipv6.map(|v| v.subnet_min.to_string()),
                    "IPv6SubnetMax": c.ipv6.map(|v| v.subnet_max.to_string()),
                    "notes": c.notes,
                })
            );
        } else {
            match &c.ipv4 {
                Some(v4) => {
                    println!("network:   {}", v4.network);
                    println!("pool:      {}", v4.describe_pool());
                }
                None => println!("network:   IPv6 only (EnableIPv4 false)"),
            }
            match (&c.ipv4, &c.ipv6) {
                (Some(_), Some(v6)) => println!(
                    "ipv6 pool: {} (dual stack: leased in flannel's dual-stack keys, carried on flannel-v6.<VNI>)",
                    v6.describe_pool()
                ),
                (None, Some(v6)) => println!(
                    "ipv6 pool: {} (IPv6 only: leased in flannel's IPv6-only keys 0.0.0.0-0&<subnet>)",
                    v6.describe_pool()
                ),
                (_, None) => {}
            }
            println!(
                "backend:   vxlan  vni {}  port {}  mtu {}{}",
                c.backend.vni,
                c.backend.port,
                c.backend
                    .mtu
                    .map_or("underlay-50".to_string(), |m| format!("{m}-50")),
                if c.backend.direct_routing {
                    "  direct routing (same-L2 peers unencapsulated)"
                } else {
                    ""
                }
            );
            for n in &c.notes {
                println!("note:      {n}");
            }
        }
        return Ok(());
    }
    let listing = reg.list_subnets().await?;
    // The agents' own judgement (peers::PeerTable), run over the same listing with the
    // same config: every agent reaches these verdicts about other nodes' leases.
    let (mut pool, mut pool6) = (None, None);
    // Each key's rejection, if it has one.
    type Verdicts = BTreeMap<String, Option<Rejection>>;
    fn judged<P: PeerKind>(t: &PeerTable<P>) -> Verdicts {
        t.verdicts()
            .map(|(k, v)| {
                let r = match v {
                    Verdict::Rejected(r) => Some(r.clone()),
                    Verdict::Peer(_) | Verdict::Own => None,
                };
                (k.to_string(), r)
            })
            .collect()
    }
    let verdicts: Result<Verdicts, String> = match reg.network_config().await {
        Ok(cfg) => {
            let (verdicts, leased) = match (
                PeerRules::from_config(&cfg),
                Ipv6OnlyRules::from_config(&cfg),
            ) {
                (Some(rules), _) => {
                    let mut t = PeerTable::new(rules, None);
                    let _ = t.reset(&listing.entries, &mut Vec::new());
                    (judged(&t), t.leased().clone())
                }
                (None, Some(rules)) => {
                    let mut t = PeerTable::ipv6_only(rules, None);
                    let _ = t.reset(&listing.entries, &mut Vec::new());
                    (judged(&t), t.leased().clone())
                }
                (None, None) => anyhow::bail!("the network config carries neither IPv4 nor IPv6"),
            };
            // The pools counted as the agents count them, from the table's keys.
            pool = cfg.ipv4.as_ref().map(|p4| leased.usage(p4));
            pool6 = cfg.ipv6.as_ref().map(|p6| leased.usage6(p6));
            Ok(verdicts)
        }
        Err(e) => {
            eprintln!("vxmeshctl: cannot judge the leases without a valid network config: {e}");
            Err(e.to_string())
        }
    };
    let ttls = reg
        .lease_ttls(listing.entries.iter().map(|e| e.lease))
        .await;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut reasons = Vec::new();
    for (e, ttl) in listing.entries.iter().zip(ttls) {
        // An IPv6-only key (`0.0.0.0-0&<ipv6>-<len>`) names no IPv4 subnet: one row.
        let ipv6_only = LeaseKey::parse(&e.key).is_ok_and(|k| k.ipv4_subnet().is_none());
        let subnet =
            parse_lease_key(&e.key).map_or_else(|| format!("? {}", e.key), |s| s.to_string());
        let attrs = LeaseAttrs::parse(&e.value).ok();
        let (ip, backend, mac) = match &attrs {
            Some(a) => (
                a.public_ip.to_string(),
                a.backend_type.clone(),
                a.vxlan.map_or("-".into(), |v| v.vtep_mac.to_string()),
            ),
            None => ("?".into(), "?".into(), "-".into()),
        };
        // A dual-stack key's IPv6 half: its subnet, PublicIPv6 and IPv6 VtepMAC.
        let subnet6 = LeaseKey::parse(&e.key).ok().and_then(|k| k.ipv6_subnet());
        let ip6 = attrs.as_ref().and_then(|a| a.public_ipv6);
        let mac6 = attrs.as_ref().and_then(|a| a.vxlan_v6).map(|v| v.vtep_mac);
        let ttl = if e.lease == 0 {
            "reservation".to_string()
        } else {
            ttl.map_or("-".to_string(), |t| format!("{t}s"))
        };
        let (status, reason, why) = match verdicts.as_ref().map(|v| v.get(&e.key)) {
            Ok(Some(Some(r))) => {
                reasons.push(format!("{}: {}", e.key, r.why));
                ("rejected", Some(r.reason.as_str()), Some(r.why.clone()))
            }
            Ok(Some(None)) => ("ok", None, None),
            Ok(None) | Err(_) => ("unknown", None, None),
        };
        let value = (e.value.len() <= MAX_LEASE_VALUE_BYTES)
            .then(|| String::from_utf8_lossy(&e.value).into_owned());
        json.push(serde_json::json!({
            "key": e.key, "subnet": (!ipv6_only).then_some(&subnet),
            "public_ip": (!ipv6_only).then_some(&ip), "backend": backend, "vtep_mac": mac,
            "ttl": ttl, "reservation": e.lease == 0, "status": status, "reason": reason, "why": why,
            "create_revision": e.create_revision, "value": value, "value_bytes": e.value.len(),
            "ipv6_subnet": subnet6.map(|s| s.to_string()),
            "public_ipv6": ip6.map(|ip| ip.to_string()),
            "vtep_mac_v6": mac6.map(|m| m.to_string()),
        }));
        let status = match reason {
            Some(r) => format!("rejected: {r}"),
            None => status.to_string(),
        };
        if !ipv6_only {
            rows.push(vec![
                subnet,
                ip,
                backend.clone(),
                mac,
                ttl.clone(),
                status.clone(),
            ]);
        }
        if let Some(s6) = subnet6 {
            let text = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            rows.push(vec![
                s6.to_string(),
                text(ip6.map(|ip| ip.to_string())),
                backend,
                text(mac6.map(|m| m.to_string())),
                ttl,
                status,
            ]);
        }
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        if let Some(p) = pool_lines(pool, pool6) {
            eprintln!("{p}");
        }
    } else {
        table(
            &[
                "SUBNET",
                "PUBLIC-IP",
                "BACKEND",
                "VTEP-MAC",
                "TTL-LEFT",
                "STATUS",
            ],
            &rows,
        );
        if let Some(p) = pool_lines(pool, pool6) {
            println!("\n{p}");
        }
        if !reasons.is_empty() {
            println!("\nrejected (no node routes to these; see docs/troubleshooting.md):");
            for r in reasons {
                println!("  {}", printable(&r));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv6 check's rows: by reason and by peer on a node with an IPv6 subnet;
    /// none on an IPv4 node that counted nothing (the status as vxmeshd writes it).
    #[test]
    fn counters_show_the_ipv6_checks_drops() {
        let st = serde_json::json!({
            "node": {"ipv6_subnet": "fd00:10:244:3::/64"},
            "ipv6_ingress_drops": {"ingress_malformed": 0, "unknown_source": 4, "inner_address": 2},
            "ipv6_ingress_drops_by_peer": [
                {"public_ipv6": "fd00:64::12", "subnet": "fd00:10:244:2::/64", "inner_address": 2}
            ],
        });
        let rows = ipv6_check_rows(&st);
        let text = table_text(&["COUNTER", "VALUE"], &rows);
        for want in [
            "ipv6_check_dropped:unknown_source",
            "ipv6_check_dropped:inner_address:fd00:64::12 (fd00:10:244:2::/64)  2",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert_eq!(rows.len(), 4, "{text}");
        let ipv4_node = serde_json::json!({
            "node": {"ipv6_subnet": null},
            "ipv6_ingress_drops": {"ingress_malformed": 0, "unknown_source": 0, "inner_address": 0},
            "ipv6_ingress_drops_by_peer": [],
        });
        assert!(ipv6_check_rows(&ipv4_node).is_empty());
    }

    /// A lease key or BackendType with a terminal escape (an OSC title sequence,
    /// a colour, a newline that forges a row) is shown escaped, the columns intact.
    #[test]
    fn etcd_text_cannot_drive_the_terminal() {
        let rows = vec![vec![
            "? /coreos.com/network/subnets/\u{1b}]0;owned\u{7}".to_string(),
            "\u{1b}[31mvxlan\nforged row".to_string(),
        ]];
        let out = table_text(&["SUBNET", "BACKEND"], &rows);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains(r"\u{1b}]0;owned\u{7}"), "{out}");
        assert!(out.contains(r"\u{1b}[31mvxlan\nforged row"), "{out}");
        assert_eq!(printable("10.244.3.0/24"), "10.244.3.0/24");
    }

    #[test]
    fn egress_column_tells_an_idle_peer_from_a_cut_path() {
        let now = 1_000_000;
        assert_eq!(egress_state(true, now - 200, now), "whole");
        assert_eq!(egress_state(false, now - 200, now), "cut");
        assert_eq!(egress_state(false, now - 3_500, now), "cut");
        assert_eq!(egress_state(false, now - 3_501, now), "idle");
        // Never sent to (0), or a clock that went back: no panic.
        assert_eq!(egress_state(false, 0, now), "idle");
        assert_eq!(egress_state(false, now + 5, now), "cut");
    }
}
