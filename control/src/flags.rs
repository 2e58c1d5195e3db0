//! `vxmeshd`'s command line and environment, read the way flanneld reads its own, so
//! a flanneld unit — its `ExecStart=` line and its `EnvironmentFile=` — starts
//! vxmeshd unchanged.
//!
//! Syntax is that of Go's `flag` package, which flanneld uses:
//! - `-name` and `--name` are the same flag (`-etcd-endpoints=…`, `--iface eth1`);
//! - a value follows after `=` or as the next word (`-iface=eth1`, `-iface eth1`);
//! - a bool flag is true when bare (`--ip-masq`) and takes a value only after `=`
//!   (`-ip-masq=false`; `1 0 t f T F true false TRUE FALSE True False`);
//! - a flag given twice keeps its last value, except the repeatable ones (`--iface`,
//!   `--iface-regex`), which keep every value in order.
//!
//! Where Go silently stops at the first word that is not a flag (flanneld then runs
//! without the flags after it), vxmeshd departs: `true` or `false` right after a bare
//! bool flag is its value (`--ip-masq false`, vxmeshd's syntax before it read Go's;
//! a note says so), and any other such word is an error.
//!
//! Every flag can also come from the environment: `VXMESHD_<NAME>` for all of them
//! and, for flanneld's flags, `FLANNELD_<NAME>` (flannel's rule: upper case, `-`
//! becomes `_`, so `-v` is `FLANNELD_V`). Precedence: the command line, then
//! `VXMESHD_*`, then `FLANNELD_*`, then the default. An empty variable counts as
//! unset, and a repeatable flag takes one value from a variable, both as in flannel.
//!
//! Flags of flanneld's Kubernetes mode (and of its removed client/server mode) are
//! refused with what to do instead. Flags accepted but not acted on are listed in
//! [`DaemonFlags::notes`], for the agent to log once.
//!
//! Pure: arguments and environment in, [`Invocation`] out; nothing is read or opened.
//! The flag table is the one source of the names, the variables, `--help` and
//! [`DaemonFlags::canonical`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

use crate::duration::{format_short_ns, parse_short_ns};
use crate::etcd_access::AccessFlags;
use crate::node_dataplane::DataplaneKind;
use vxmesh_dataplane::aqm::CodelConfig;
use vxmesh_dataplane::busy_poll::BusyPoll;
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::priority::ThreadPriority;

/// The lease TTL when neither `--subnet-lease-ttl` nor `--subnet-lease-renew-margin`
/// says otherwise (docs/decisions/0004).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3600);
/// `--tap-txqueuelen`'s default (frames); the flag table's default text says the same.
pub const DEFAULT_TAP_TXQUEUELEN: u32 = 256;
/// `--vxlan-rcvbuf`'s default (bytes); the flag table's default text says the same.
pub const DEFAULT_VXLAN_RCVBUF: usize = 4 << 20;
/// How much longer than `--subnet-lease-renew-margin` the lease lives: one keepalive
/// interval (at most 30 s) and slack for the round trip.
pub const RENEW_MARGIN_SLACK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
    /// Repeatable; every value kept in order.
    List,
}

/// Whose flag it is: decides which variables are read and whether it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// vxmesh's own: `VXMESHD_<NAME>`.
    Vxmesh,
    /// flanneld's (etcd mode), with flanneld's meaning: `VXMESHD_<NAME>` and
    /// `FLANNELD_<NAME>`.
    Flanneld,
    /// flanneld's, for a mode vxmesh does not have: refused with this advice.
    Refused(&'static str),
}

#[derive(Debug)]
struct Spec {
    name: &'static str,
    kind: Kind,
    family: Family,
    /// `--help`: what the value is ("" for bools), its default ("" for none), and one line.
    value: &'static str,
    default: &'static str,
    help: &'static str,
}

const KUBE_MODE: &str = "belongs to flanneld's Kubernetes mode (--kube-subnet-mgr), which vxmesh does not have: drop it; vxmesh keeps leases in etcd (--etcd-endpoints, --etcd-prefix)";
const NET_CONF: &str = "is where flanneld's Kubernetes mode reads the network config; vxmesh reads it from etcd: `etcdctl put /coreos.com/network/config \"$(cat net-conf.json)\"` (under your --etcd-prefix) and drop the flag";
const CLIENT_SERVER: &str = "belongs to flanneld's client/server mode, removed in flannel v0.8: drop it and point --etcd-endpoints at etcd";
const KUBE_SUBNET_MGR: &str = "asks for flanneld's Kubernetes mode, which vxmesh does not have: vxmesh keeps leases in etcd (flanneld's etcd mode) — drop it, point --etcd-endpoints at etcd and put the network config at <etcd-prefix>/config";

macro_rules! spec {
    ($name:literal, $kind:ident, $family:expr, $value:literal, $default:literal, $help:literal) => {
        Spec {
            name: $name,
            kind: Kind::$kind,
            family: $family,
            value: $value,
            default: $default,
            help: $help,
        }
    };
}

use Family::{Flanneld, Refused, Vxmesh};

/// Every flag vxmeshd knows, in `--help` order.
const SPECS: &[Spec] = &[
    spec!("etcd-endpoints", Value, Flanneld, "URLS", "http://127.0.0.1:2379", "etcd endpoints, comma separated"),
    spec!("etcd-prefix", Value, Flanneld, "PATH", "/coreos.com/network", "etcd key prefix holding config and subnets/ (flannel's layout)"),
    spec!("etcd-cafile", Value, Flanneld, "FILE", "", "CA certificate (PEM) of etcd's server certificate (https:// endpoints); default: the system's roots"),
    spec!("etcd-certfile", Value, Flanneld, "FILE", "", "client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-keyfile"),
    spec!("etcd-keyfile", Value, Flanneld, "FILE", "", "private key (PEM) of --etcd-certfile"),
    spec!("etcd-username", Value, Flanneld, "USER", "", "etcd user (etcd `auth enable`); needs --etcd-password"),
    spec!("etcd-password", Value, Flanneld, "PASSWORD", "", "password of --etcd-username; prefer the variable in a 0600 EnvironmentFile (ps shows command lines)"),
    spec!("iface", List, Flanneld, "NAME|IP", "", "underlay interface, by name or one of its IPv4 addresses; repeatable, the first that exists and has an address wins"),
    spec!("iface-regex", List, Flanneld, "REGEX", "", "underlay: the first interface whose IPv4 address, else whose name, matches; repeatable, tried after every --iface"),
    spec!("iface-can-reach", Value, Flanneld, "IP", "", "underlay: the interface of the route to this address (`ip route get IP`), tried last"),
    spec!("public-ip", Value, Flanneld, "IP", "", "address advertised to peers (behind NAT: the public one; VXLAN is still sent from the interface's own)"),
    spec!("public-ipv6", Value, Flanneld, "IP", "", "IPv6 address advertised in a dual-stack lease (PublicIPv6); default: the underlay interface's global IPv6 address"),
    spec!("subnet-file", Value, Flanneld, "FILE", "/run/flannel/subnet.env", "where to write flannel's subnet file (read by CNI plugins)"),
    spec!("subnet-lease-ttl", Value, Vxmesh, "DURATION", "1h", "TTL of the subnet lease, renewed every third of it (at most every 30 s); a dead node's subnet is free this long after it stops (90s, 30m, 1h, 2d)"),
    spec!("subnet-lease-renew-margin", Value, Flanneld, "MINUTES", "", "flanneld's: how long the lease must survive without etcd (1-1439); raises the default TTL to this + 1 minute"),
    spec!("ip-masq", Bool, Flanneld, "", "true", "masquerade pod traffic leaving the Network (never pod to pod); writes FLANNEL_IPMASQ=true"),
    spec!("ip-masq-fully-random-disable", Bool, Flanneld, "", "false", "masquerade without --random-fully"),
    spec!("iptables-forward-rules", Bool, Flanneld, "", "true", "accept the Network's traffic in FORWARD (needed where Docker sets its policy to DROP)"),
    spec!("vxlan-notrack", Bool, Vxmesh, "", "false", "leave the outer VXLAN packets (UDP to the VXLAN port, to or from this node) out of conntrack, which --ip-masq loads; a host firewall must then accept that port without a state match (docs/decisions/0013)"),
    spec!("iptables-resync", Value, Flanneld, "SECONDS", "5", "how often the iptables (with EnableNFTables: nftables) rules are checked and restored when removed"),
    spec!("ip-blackhole-route", Bool, Flanneld, "", "false", "add a blackhole route for this node's subnet (and its IPv6 subnet), kept every --iptables-resync seconds, so traffic to an address no pod holds is dropped here rather than sent out by the default route; at the highest metric, so the bridge's own route to the subnet still carries the pods"),
    spec!("healthz-ip", Value, Flanneld, "IP", "127.0.0.1", "address of /healthz, /readyz, /metrics and /v1/status"),
    spec!("healthz-port", Value, Flanneld, "PORT", "8471", "port of the HTTP endpoints; 0 disables them (vxmeshctl needs them)"),
    spec!("dataplane", Value, Vxmesh, "userspace|kernel", "userspace", "vxmesh's userspace VXLAN, or the kernel's vxlan driver programmed like flannel's vxlan backend"),
    spec!("ipv6-dataplane", Value, Vxmesh, "userspace|kernel", "kernel", "dual stack on the userspace dataplane: who carries pods' IPv6 — the userspace threads, through the TAP and VXLAN over UDP/IPv6 from the PublicIPv6 (flannel's IPv6 layout: the IPv6 VtepMAC, port and VNI of flannel-v6.<VNI>), or the kernel's vxlan driver on flannel-v6.<VNI> (docs/decisions/0018, 0034)"),
    spec!("tap-name", Value, Vxmesh, "NAME", "vxmesh0", "TAP device carrying pod traffic (userspace dataplane)"),
    spec!("tx-sockets", Value, Vxmesh, "N", "8", "UDP send sockets (distinct outer source ports for flow entropy)"),
    spec!("tap-queues", Value, Vxmesh, "N", "1", "TAP queues, one sending thread each"),
    spec!("tap-txqueuelen", Value, Vxmesh, "FRAMES", "256", "userspace dataplane: the TAP's transmit queue, in frames (each up to 64 KiB): how much pod traffic waits for the sending thread before the kernel drops, which is the only congestion signal a pod's TCP gets from this dataplane (16 to 65536; docs/decisions/0026)"),
    spec!("vxlan-rcvbuf", Value, Vxmesh, "BYTES", "4MiB", "userspace dataplane: the VXLAN receive socket's buffer, as the kernel counts it (each datagram's whole allocation; KiB, MiB or GiB, or bytes): what arrives while the receiving thread waits for a CPU, and while a restart hands over; beyond it the kernel drops, which a loss-based TCP sender (cubic) needs to stop filling it, so its size is the delay other flows wait behind (64KiB to 512MiB; docs/decisions/0027)"),
    spec!("aqm-target", Value, Vxmesh, "DURATION|off", "off", "userspace dataplane, experimental: active queue management (CoDel) on received VXLAN, the queue delay to keep to; a packet that waited longer, for over --aqm-interval, is marked CE if ECN-capable, else dropped (e.g. 500us, 1ms, 5ms; docs/decisions/0016)"),
    spec!("aqm-interval", Value, Vxmesh, "DURATION", "20ms", "with --aqm-target: CoDel's interval: how long the queue delay may stay above --aqm-target before the first signal (about the largest round trip of pod flows; 1ms to 10s)"),
    spec!("engine-priority", Value, Vxmesh, "normal|nice:N|fifo:N", "normal", "userspace dataplane: the scheduling of its packet threads: as inherited, a nice value (-20 to 19), or real time (SCHED_FIFO, 1 to 99), which cut a ping's delay under 8 TCP streams from 3.2-3.8 ms to 0.10-0.12 ms and the streams from 12.0-12.8 to 8.3-9.1 Gbit/s where measured, and can take the CPUs from the node's other processes under a flood; busy polling is then off unless --busy-poll asks for it (docs/decisions/0020, 0032)"),
    spec!("busy-poll", Value, Vxmesh, "auto|DURATION|off", "auto", "userspace dataplane: when its queue runs dry, a packet thread keeps checking for traffic before it sleeps. auto: for 50us, and only while it or another packet thread has carried a burst (8 packets or 32 KiB since it last slept), so bulk traffic that a sender paces, and its ACKs, find the threads awake while a ping or a request wakes them as before; DURATION (1us to 1s): that long after every packet, so a reply that comes within it finds the thread awake, at up to a CPU per thread while traffic arrives at gaps shorter than it; off: never, and the default with --engine-priority fifo:N (docs/decisions/0021, 0028, 0032)"),
    spec!("egress-tunnel-gso", Bool, Vxmesh, "", "true", "userspace dataplane: send each GSO frame from the TAP whole, as one UDP-tunnel GSO packet through a second TAP (<tap-name>u) that the kernel forwards to the underlay, instead of cutting it into datagrams here; to each peer only once a probe sent that way was answered (so a firewall that drops forwarded UDP costs speed, not reachability); needs Linux 6.17 or later (else the usual path, with a note in the log); false: always cut here (docs/decisions/0022)"),
    spec!("no-offloads", Bool, Vxmesh, "", "false", "disable TAP/UDP offloads (debugging; much slower)"),
    spec!("log-format", Value, Vxmesh, "text|json", "text", "log format"),
    spec!("v", Value, Flanneld, "LEVEL", "0", "flanneld's (klog) verbosity: 0 info, 1-4 debug, 5+ trace; RUST_LOG overrides"),
    spec!("version", Bool, Flanneld, "", "", "print the version and exit"),
    // Accepted for flanneld's sake, not acted on (a note is logged).
    spec!("vmodule", Value, Flanneld, "PATTERN", "", "accepted, not acted on (use RUST_LOG)"),
    spec!("log_backtrace_at", Value, Flanneld, "FILE:LINE", "", "accepted, not acted on"),
    spec!("logtostderr", Bool, Flanneld, "", "", "flanneld before v0.8 (glog): accepted, not acted on (vxmeshd logs to stderr)"),
    spec!("alsologtostderr", Bool, Flanneld, "", "", "flanneld before v0.8 (glog): accepted, not acted on"),
    spec!("stderrthreshold", Value, Flanneld, "LEVEL", "", "flanneld before v0.8 (glog): accepted, not acted on"),
    spec!("log_dir", Value, Flanneld, "DIR", "", "flanneld before v0.8 (glog): accepted, not acted on"),
    spec!("kube-subnet-mgr", Bool, Flanneld, "", "false", "refused when true: vxmesh is flanneld's etcd mode"),
    // Refused whenever given.
    spec!("kube-api-url", Value, Refused(KUBE_MODE), "URL", "", ""),
    spec!("kubeconfig-file", Value, Refused(KUBE_MODE), "FILE", "", ""),
    spec!("kube-annotation-prefix", Value, Refused(KUBE_MODE), "PREFIX", "", ""),
    spec!("set-node-network-unavailable", Bool, Refused(KUBE_MODE), "", "", ""),
    spec!("net-config-path", Value, Refused(NET_CONF), "FILE", "", ""),
    spec!("listen", Value, Refused(CLIENT_SERVER), "ADDR", "", ""),
    spec!("remote", Value, Refused(CLIENT_SERVER), "ADDR", "", ""),
    spec!("remote-keyfile", Value, Refused(CLIENT_SERVER), "FILE", "", ""),
    spec!("remote-certfile", Value, Refused(CLIENT_SERVER), "FILE", "", ""),
    spec!("remote-cafile", Value, Refused(CLIENT_SERVER), "FILE", "", ""),
];

/// Flags whose only effect is a note.
const NOTED: &[(&str, &str)] = &[
    (
        "vmodule",
        "per-module verbosity is RUST_LOG's (e.g. RUST_LOG=info,vxmesh_control::registry=debug)",
    ),
    ("log_backtrace_at", "vxmeshd does not log backtraces"),
    ("logtostderr", "vxmeshd always logs to stderr"),
    ("alsologtostderr", "vxmeshd always logs to stderr"),
    (
        "stderrthreshold",
        "vxmeshd always logs to stderr; the level is -v's or RUST_LOG's",
    ),
    (
        "log_dir",
        "vxmeshd always logs to stderr (the journal under systemd)",
    ),
];

fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// `VXMESHD_ETCD_ENDPOINTS`, `FLANNELD_V`: flannel's rule (upper case, `-` → `_`).
pub fn env_name(prefix: &str, flag: &str) -> String {
    format!("{prefix}_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// What is wrong with the command line or environment, naming where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("unknown flag {0} (see vxmeshd --help)")]
    Unknown(String),
    #[error("bad flag syntax: {0} (flags look like -name, --name, -name=value or -name value)")]
    Syntax(String),
    #[error("flag needs a value: {0}")]
    NeedsValue(String),
    #[error("unexpected argument {0:?}: vxmeshd takes only flags (-name, --name, -name=value or -name value); write a bool flag's value after '=' (--ip-masq=false)")]
    Positional(String),
    #[error("{from}: invalid value {value:?}: {why}")]
    Invalid {
        from: String,
        value: String,
        why: String,
    },
    #[error("{from} {advice}")]
    Refused { from: String, advice: &'static str },
    #[error("{0}")]
    Conflict(String),
}

/// What vxmeshd was asked to do.
#[derive(Debug, Clone)]
pub enum Invocation {
    Run(Box<DaemonFlags>),
    /// `-h`, `-help`, `--help`: print [`usage`] and exit.
    Help,
    /// `--version` (command line only, as in flanneld): print it and exit.
    Version,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How the underlay is chosen (see [`crate::underlay`]).
#[derive(Debug, Clone, Default)]
pub struct UnderlayFlags {
    /// `--iface`, in order: names or IPv4 addresses.
    pub ifaces: Vec<String>,
    /// `--iface-regex`, in order, compiled.
    pub iface_regexes: Vec<Regex>,
    pub iface_can_reach: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: the PublicIPv6 of a dual-stack lease.
    pub public_ipv6: Option<Ipv6Addr>,
}

/// Everything vxmeshd was told, checked and with every default filled in.
#[derive(Debug, Clone)]
pub struct DaemonFlags {
    /// As given; [`crate::etcd_access::EtcdAccess::new`] checks the combination.
    pub etcd: AccessFlags,
    pub etcd_prefix: String,
    pub underlay: UnderlayFlags,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub ip_masq: bool,
    pub masq_random_fully: bool,
    pub iptables_forward_rules: bool,
    pub vxlan_notrack: bool,
    pub iptables_resync: Duration,
    /// `--ip-blackhole-route`.
    pub ip_blackhole_route: bool,
    /// Where to serve the HTTP endpoints; `None` with `--healthz-port 0`.
    pub healthz: Option<SocketAddr>,
    pub dataplane: DataplaneKind,
    /// `--ipv6-dataplane`: who carries a dual-stack node's IPv6 on the userspace
    /// dataplane (the kernel dataplane's is always the kernel's).
    pub ipv6_dataplane: DataplaneKind,
    pub tap_name: IfName,
    pub tx_sockets: usize,
    pub tap_queues: usize,
    /// `--tap-txqueuelen`: the TAP's transmit queue, in frames.
    pub tap_txqueuelen: u32,
    /// `--vxlan-rcvbuf`: the VXLAN receive socket's buffer, in bytes.
    pub vxlan_rcvbuf: usize,
    /// `--aqm-target`/`--aqm-interval`, or none (`--aqm-target off`).
    pub aqm: Option<CodelConfig>,
    /// `--engine-priority`.
    pub engine_priority: ThreadPriority,
    /// `--busy-poll`.
    pub busy_poll: BusyPoll,
    /// `--egress-tunnel-gso`.
    pub egress_tunnel_gso: bool,
    pub offloads: bool,
    pub log_format: LogFormat,
    /// klog's `-v`.
    pub verbosity: i32,
    /// Said once at start: flags accepted but not acted on, values adjusted, variables
    /// that look like ours but are not.
    pub notes: Vec<String>,
}

impl DaemonFlags {
    /// The tracing level `-v` asks for: 0 info, 1-4 debug, 5 and more trace.
    pub fn log_level(&self) -> &'static str {
        match self.verbosity {
            i32::MIN..=0 => "info",
            1..=4 => "debug",
            _ => "trace",
        }
    }

    /// The effective settings as one canonical command line (`--name=value`, every
    /// flag that has an effect, defaults included; the password redacted): logged at
    /// start, and what the golden tests compare.
    pub fn canonical(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut push = |name: &str, value: String| v.push(format!("--{name}={value}"));
        push("etcd-endpoints", self.etcd.endpoints.join(","));
        push("etcd-prefix", self.etcd_prefix.clone());
        for (name, p) in [
            ("etcd-cafile", &self.etcd.cafile),
            ("etcd-certfile", &self.etcd.certfile),
            ("etcd-keyfile", &self.etcd.keyfile),
        ] {
            if let Some(p) = p {
                push(name, p.display().to_string());
            }
        }
        if let Some(u) = &self.etcd.username {
            push("etcd-username", u.clone());
        }
        if self.etcd.password.is_some() {
            push("etcd-password", "<redacted>".into());
        }
        for i in &self.underlay.ifaces {
            push("iface", i.clone());
        }
        for r in &self.underlay.iface_regexes {
            push("iface-regex", r.as_str().to_string());
        }
        if let Some(ip) = self.underlay.iface_can_reach {
            push("iface-can-reach", ip.to_string());
        }
        if let Some(ip) = self.underlay.public_ip {
            push("public-ip", ip.to_string());
        }
        if let Some(ip) = self.underlay.public_ipv6 {
            push("public-ipv6", ip.to_string());
        }
        push("subnet-file", self.subnet_file.display().to_string());
        push("subnet-lease-ttl", format!("{}s", self.lease_ttl.as_secs()));
        push("ip-masq", self.ip_masq.to_string());
        push(
            "ip-masq-fully-random-disable",
            (!self.masq_random_fully).to_string(),
        );
        push(
            "iptables-forward-rules",
            self.iptables_forward_rules.to_string(),
        );
        push("vxlan-notrack", self.vxlan_notrack.to_string());
        push(
            "iptables-resync",
            self.iptables_resync.as_secs().to_string(),
        );
        push("ip-blackhole-route", self.ip_blackhole_route.to_string());
        match self.healthz {
            Some(a) => {
                push("healthz-ip", a.ip().to_string());
                push("healthz-port", a.port().to_string());
            }
            None => push("healthz-port", "0".into()),
        }
        push("dataplane", self.dataplane.as_str().into());
        push("ipv6-dataplane", self.ipv6_dataplane.as_str().into());
        push("tap-name", self.tap_name.to_string());
        push("tx-sockets", self.tx_sockets.to_string());
        push("tap-queues", self.tap_queues.to_string());
        push("tap-txqueuelen", self.tap_txqueuelen.to_string());
        push("vxlan-rcvbuf", format_bytes(self.vxlan_rcvbuf));
        match self.aqm {
            Some(c) => {
                push("aqm-target", format_short_ns(c.target_ns));
                push("aqm-interval", format_short_ns(c.interval_ns));
            }
            None => push("aqm-target", "off".into()),
        }
        push("engine-priority", self.engine_priority.to_string());
        push(
            "busy-poll",
            if self.busy_poll.is_off() {
                "off".into()
            } else if self.busy_poll == BusyPoll::AUTO {
                "auto".into()
            } else {
                format_short_ns(u64::try_from(self.busy_poll.budget.as_nanos()).unwrap_or(u64::MAX))
            },
        );
        push("egress-tunnel-gso", self.egress_tunnel_gso.to_string());
        push("no-offloads", (!self.offloads).to_string());
        push(
            "log-format",
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        );
        push("v", self.verbosity.to_string());
        v
    }
}

/// Where a value came from, as the operator wrote it: `-iface=eth1`,
/// `FLANNELD_IFACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Arg(String),
    Env(String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Arg(a) => a.clone(),
            Source::Env(v) => v.clone(),
        }
    }

    fn is_explicit_vxmesh(&self) -> bool {
        match self {
            Source::Arg(_) => true,
            Source::Env(v) => v.starts_with("VXMESHD_"),
        }
    }
}

#[derive(Debug)]
struct Given {
    spec: &'static Spec,
    value: String,
    source: Source,
}

enum Scanned {
    Help,
    /// The flags, and notes on how they were read.
    Flags(Vec<Given>, Vec<String>),
}

/// Go's `flag.FlagSet.Parse`, except that a non-flag word is an error, and that
/// `true` or `false` right after a bare bool flag is its value (vxmeshd's own syntax
/// before it read Go's, `--ip-masq false`; Go would stop reading there).
fn scan(args: &[String]) -> Result<Scanned, FlagError> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            return match args.get(i) {
                Some(next) => Err(FlagError::Positional(next.clone())),
                None => Ok(Scanned::Flags(out, notes)),
            };
        }
        let name_and_value = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(rest) if !rest.is_empty() => rest,
            _ => return Err(FlagError::Positional(arg.clone())),
        };
        if name_and_value.starts_with('-') || name_and_value.starts_with('=') {
            return Err(FlagError::Syntax(arg.clone()));
        }
        let (name, inline) = match name_and_value.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name_and_value, None),
        };
        let Some(spec) = spec(name) else {
            if name == "h" || name == "help" {
                return Ok(Scanned::Help);
            }
            // The name only: a mistyped --etcd-pasword=… must not print the password.
            let dashes = &arg[..arg.len() - name_and_value.len()];
            return Err(FlagError::Unknown(format!("{dashes}{name}")));
        };
        let value = match (spec.kind, inline) {
            (_, Some(v)) => v.to_string(),
            (Kind::Bool, None) => match args.get(i).map(String::as_str) {
                Some(word @ ("true" | "false")) => {
                    i += 1;
                    notes.push(format!(
                        "{arg} {word}: read as {arg}={word}; flanneld would read {arg} (true) and ignore every flag after it — write {arg}={word}"
                    ));
                    word.to_string()
                }
                _ => "true".to_string(),
            },
            (_, None) => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(FlagError::NeedsValue(arg.clone())),
            },
        };
        out.push(Given {
            spec,
            value,
            source: Source::Arg(arg.clone()),
        });
    }
    Ok(Scanned::Flags(out, notes))
}

/// strconv.ParseBool.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses a lease TTL: "90", "90s", "30m", "1h", "2d", from 5 s (the lease must
/// survive a keepalive round trip) to etcd's longest lease; see [`crate::duration`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse_lease_ttl(s).map_err(|e| e.to_string())
}

/// The flags resolved against the environment: one place for precedence.
struct Resolver {
    given: Vec<Given>,
    env: BTreeMap<String, String>,
}

impl Resolver {
    /// Every value of a flag by precedence: all command-line values (the caller takes
    /// the last, or all for a list), else `VXMESHD_*`, else `FLANNELD_*`.
    fn values(&self, name: &str) -> Vec<(String, Source)> {
        let from_args: Vec<(String, Source)> = self
            .given
            .iter()
            .filter(|g| g.spec.name == name)
            .map(|g| (g.value.clone(), g.source.clone()))
            .collect();
        if !from_args.is_empty() {
            return from_args;
        }
        let Some(spec) = spec(name) else {
            return Vec::new();
        };
        let mut prefixes = vec!["VXMESHD"];
        if spec.family != Vxmesh {
            prefixes.push("FLANNELD");
        }
        for p in prefixes {
            let var = env_name(p, name);
            if let Some(v) = self.env.get(&var).filter(|v| !v.is_empty()) {
                return vec![(v.clone(), Source::Env(var))];
            }
        }
        Vec::new()
    }

    fn last(&self, name: &str) -> Option<(String, Source)> {
        self.values(name).pop()
    }

    fn text(&self, name: &str, default: &str) -> String {
        self.last(name)
            .map_or_else(|| default.to_string(), |(v, _)| v)
    }

    /// A value that may be absent; an empty one (`--etcd-cafile=`) counts as absent.
    fn opt(&self, name: &str) -> Option<String> {
        self.last(name).map(|(v, _)| v).filter(|v| !v.is_empty())
    }

    fn typed<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<(T, Source)>, FlagError> {
        match self.last(name) {
            None => Ok(None),
            Some((v, src)) => match parse(&v) {
                Ok(t) => Ok(Some((t, src))),
                Err(why) => Err(FlagError::Invalid {
                    from: src.describe(),
                    value: v,
                    why,
                }),
            },
        }
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, FlagError> {
        Ok(self
            .typed(name, |s| {
                go_bool(s).ok_or_else(|| "not a bool (true, false, 1, 0, t, f)".to_string())
            })?
            .map_or(default, |(b, _)| b))
    }
}

fn int(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .map_err(|_| "not a whole number".to_string())
}

/// A size in bytes: a whole number, optionally with a binary unit (`KiB`, `MiB`,
/// `GiB`; `K`, `M`, `G` mean the same, as in `ip` and systemd).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    if num.is_empty() {
        return Err("not a size (a whole number, then KiB, MiB or GiB)".to_string());
    }
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: give bytes, or KiB, MiB or GiB"
            ))
        }
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| "not a size (a whole number, then KiB, MiB or GiB)".to_string())
}

/// The shortest exact form of a size that [`parse_bytes`] reads back.
fn format_bytes(n: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

fn ipv4(s: &str) -> Result<Ipv4Addr, String> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err("an IPv6 address where an IPv4 one is needed (a dual-stack lease takes the node's IPv6 address from --public-ipv6)".into()),
        Err(_) => Err("not an IPv4 address".into()),
    }
}

/// An IPv4 address a node can advertise as its PublicIP: every peer refuses a
/// lease with one it cannot send VXLAN to ([`crate::peers::unusable_public_ip`]).
fn public_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    let ip = ipv4(s)?;
    match crate::peers::unusable_public_ip(ip) {
        Some(what) => Err(format!(
            "{what}, which no peer can send VXLAN to: give the node's underlay address"
        )),
        None => Ok(ip),
    }
}

/// An IPv6 address a node can send VXLAN from: not unspecified, loopback,
/// multicast, link-local, or an IPv4-compatible/-mapped form (a lease cannot carry
/// those; [`crate::peers::unusable_public_ipv6`]).
fn ipv6_underlay(s: &str) -> Result<Ipv6Addr, String> {
    let ip = match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => ip,
        Ok(IpAddr::V4(_)) => return Err("an IPv4 address: give the node's IPv6 address".into()),
        Err(_) => return Err("not an IPv6 address".into()),
    };
    match crate::peers::unusable_public_ipv6(ip) {
        Some(what) => Err(format!(
            "{what}, not a unicast IPv6 address a peer can reach: give the node's underlay IPv6 address"
        )),
        None => Ok(ip),
    }
}

/// Reads the command line (without the program name) and the environment.
pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Invocation, FlagError> {
    let (given, mut notes) = match scan(args)? {
        Scanned::Help => return Ok(Invocation::Help),
        Scanned::Flags(g, n) => (g, n),
    };
    // flanneld looks at --version before reading its environment; so does vxmeshd.
    if let Some(g) = given.iter().rev().find(|g| g.spec.name == "version") {
        match go_bool(&g.value) {
            Some(true) => return Ok(Invocation::Version),
            Some(false) => {}
            None => {
                return Err(FlagError::Invalid {
                    from: g.source.describe(),
                    value: g.value.clone(),
                    why: "not a bool".into(),
                })
            }
        }
    }
    let r = Resolver {
        given,
        env: env.iter().cloned().collect(),
    };

    for s in SPECS {
        if let Family::Refused(advice) = s.family {
            if let Some((_, src)) = r.last(s.name) {
                return Err(FlagError::Refused {
                    from: src.describe(),
                    advice,
                });
            }
        }
    }
    if let Some((true, src)) = r.typed("kube-subnet-mgr", |s| {
        go_bool(s).ok_or_else(|| "not a bool".to_string())
    })? {
        return Err(FlagError::Refused {
            from: src.describe(),
            advice: KUBE_SUBNET_MGR,
        });
    }
    for (name, why) in NOTED {
        if let Some((v, src)) = r.last(name) {
            let off =
                spec(name).is_some_and(|s| s.kind == Kind::Bool) && go_bool(&v) == Some(false);
            if !off {
                notes.push(format!("{}: accepted, not acted on: {why}", src.describe()));
            }
        }
    }
    for (var, _) in env {
        for prefix in ["VXMESHD_", "FLANNELD_"] {
            let Some(rest) = var.strip_prefix(prefix) else {
                continue;
            };
            let p = prefix.trim_end_matches('_');
            let known = SPECS
                .iter()
                .any(|s| env_name(p, s.name) == *var && (p == "VXMESHD" || s.family != Vxmesh));
            if !known {
                notes.push(format!(
                    "{var} is not a {} variable vxmeshd knows ({}); ignored",
                    if prefix == "FLANNELD_" {
                        "flanneld"
                    } else {
                        "vxmeshd"
                    },
                    rest.to_ascii_lowercase().replace('_', "-")
                ));
            }
        }
    }

    let endpoints: Vec<String> = r
        .text("etcd-endpoints", "http://127.0.0.1:2379")
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let etcd = AccessFlags {
        endpoints,
        cafile: r.opt("etcd-cafile").map(PathBuf::from),
        certfile: r.opt("etcd-certfile").map(PathBuf::from),
        keyfile: r.opt("etcd-keyfile").map(PathBuf::from),
        username: r.opt("etcd-username"),
        password: r.opt("etcd-password"),
    };

    let ifaces: Vec<String> = r
        .values("iface")
        .into_iter()
        .map(|(v, _)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let mut iface_regexes = Vec::new();
    for (v, src) in r.values("iface-regex") {
        if v.is_empty() {
            continue;
        }
        let re = Regex::new(&v).map_err(|e| FlagError::Invalid {
            from: src.describe(),
            value: v.clone(),
            why: format!("not a regular expression: {e}"),
        })?;
        iface_regexes.push(re);
    }
    let nonempty_ipv4 = |s: &str| ipv4(s.trim());
    let underlay = UnderlayFlags {
        ifaces,
        iface_regexes,
        iface_can_reach: opt_typed(&r, "iface-can-reach", nonempty_ipv4)?,
        public_ip: opt_typed(&r, "public-ip", |s| public_ipv4(s.trim()))?,
        public_ipv6: opt_typed(&r, "public-ipv6", |s| ipv6_underlay(s.trim()))?,
    };

    let margin = r
        .typed("subnet-lease-renew-margin", |s| {
            let m = int(s)?;
            if (1..=1439).contains(&m) {
                Ok(Duration::from_secs(m.unsigned_abs() * 60))
            } else {
                Err("flanneld accepts 1 to 1439 minutes".into())
            }
        })?
        .map(|(d, _)| d);
    let ttl = r.typed("subnet-lease-ttl", parse_duration)?;
    let lease_ttl = lease_ttl(
        ttl.as_ref().map(|(d, s)| (*d, s.is_explicit_vxmesh())),
        margin,
        &mut notes,
    )?;

    let resync = r
        .typed("iptables-resync", |s| match int(s)? {
            n @ 1..=86_400 => Ok(Duration::from_secs(n.unsigned_abs())),
            _ => Err("use 1 to 86400 seconds".into()),
        })?
        .map_or(Duration::from_secs(5), |(d, _)| d);

    let healthz_ip = r
        .typed("healthz-ip", |s| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| "not an IP address".to_string())
        })?
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |(ip, _)| ip);
    let healthz_port = r
        .typed("healthz-port", |s| match int(s)? {
            // flanneld serves only when the port is > 0.
            n if n <= 0 => Ok(0),
            n => u16::try_from(n).map_err(|_| "not a port (1-65535, 0 disables)".to_string()),
        })?
        .map_or(8471, |(p, _)| p);

    let dataplane = r
        .typed("dataplane", |s| match s {
            "userspace" => Ok(DataplaneKind::Userspace),
            "kernel" => Ok(DataplaneKind::Kernel),
            _ => Err("use userspace or kernel".into()),
        })?
        .map_or(DataplaneKind::Userspace, |(d, _)| d);
    let ipv6_dataplane = r
        .typed("ipv6-dataplane", |s| match s {
            "userspace" => Ok(DataplaneKind::Userspace),
            "kernel" => Ok(DataplaneKind::Kernel),
            _ => Err("use userspace or kernel".into()),
        })?
        .map_or(DataplaneKind::Kernel, |(d, _)| d);
    if ipv6_dataplane == DataplaneKind::Userspace && dataplane == DataplaneKind::Kernel {
        return Err(FlagError::Conflict(
            "--ipv6-dataplane userspace needs --dataplane userspace (the kernel dataplane has no userspace threads to carry IPv6); drop one of the two".into(),
        ));
    }
    let tap_name = r
        .typed("tap-name", |s| IfName::new(s).map_err(|e| e.to_string()))?
        .map_or_else(
            || IfName::new("vxmesh0").map_err(|e| FlagError::Conflict(e.to_string())),
            |(n, _)| Ok(n),
        )?;
    let count = |s: &str| match int(s)? {
        n @ 1..=1024 => Ok(n.unsigned_abs() as usize),
        _ => Err("use 1 to 1024".to_string()),
    };
    let tx_sockets = r.typed("tx-sockets", count)?.map_or(8, |(n, _)| n);
    let tap_queues = r.typed("tap-queues", count)?.map_or(1, |(n, _)| n);
    let tap_txqueuelen = r
        .typed("tap-txqueuelen", |s| match int(s)? {
            n @ 16..=65_536 => Ok(n.unsigned_abs() as u32),
            _ => Err("use 16 to 65536 (frames)".to_string()),
        })?
        .map_or(DEFAULT_TAP_TXQUEUELEN, |(n, _)| n);
    if r.last("tap-txqueuelen").is_some() && dataplane == DataplaneKind::Kernel {
        notes.push(
            "--tap-txqueuelen has no effect with --dataplane kernel (there is no TAP)".into(),
        );
    }
    let vxlan_rcvbuf = r
        .typed("vxlan-rcvbuf", |s| match parse_bytes(s)? {
            n @ 65_536..=536_870_912 => Ok(n),
            _ => Err("use 64KiB to 512MiB".to_string()),
        })?
        .map_or(DEFAULT_VXLAN_RCVBUF, |(n, _)| n);
    if r.last("vxlan-rcvbuf").is_some() && dataplane == DataplaneKind::Kernel {
        notes.push(
            "--vxlan-rcvbuf has no effect with --dataplane kernel (the kernel's vxlan driver receives)"
                .into(),
        );
    }
    let aqm_target = r
        .typed("aqm-target", |s| match s.trim() {
            "off" | "0" => Ok(None),
            s => parse_short_ns(s, 10_000, 1_000_000_000).map(Some),
        })?
        .and_then(|(t, _)| t);
    let aqm_interval = r
        .typed("aqm-interval", |s| {
            parse_short_ns(s, 1_000_000, 10_000_000_000)
        })?
        .map(|(i, _)| i);
    let aqm = match (aqm_target, aqm_interval) {
        (None, Some(_)) => {
            notes.push("--aqm-interval has no effect with --aqm-target off".into());
            None
        }
        (None, None) => None,
        (Some(target_ns), interval) => {
            let interval_ns = interval.unwrap_or(CodelConfig::DEFAULT.interval_ns);
            if interval_ns <= target_ns {
                return Err(FlagError::Conflict(format!(
                    "--aqm-interval ({}) must be longer than --aqm-target ({}): the interval is how long the delay may stay above the target",
                    format_short_ns(interval_ns),
                    format_short_ns(target_ns)
                )));
            }
            Some(CodelConfig {
                target_ns,
                interval_ns,
            })
        }
    };
    let engine_priority = r
        .typed("engine-priority", ThreadPriority::parse)?
        .map_or(ThreadPriority::Normal, |(p, _)| p);
    if engine_priority != ThreadPriority::Normal && dataplane == DataplaneKind::Kernel {
        notes.push(format!(
            "--engine-priority {engine_priority} has no effect with --dataplane kernel (the kernel forwards in its own context)"
        ));
    }
    let busy_poll = r
        .typed("busy-poll", |s| match s.trim() {
            "off" | "0" => Ok(BusyPoll::OFF),
            "auto" => Ok(BusyPoll::AUTO),
            s => parse_short_ns(s, 1_000, 1_000_000_000)
                .map(|ns| BusyPoll::always(Duration::from_nanos(ns))),
        })?
        .map(|(b, _)| b);
    // A note only for a budget the operator asked for: the default applies to the
    // userspace dataplane alone.
    if busy_poll.is_some_and(|b| !b.is_off()) && dataplane == DataplaneKind::Kernel {
        notes.push(
            "--busy-poll has no effect with --dataplane kernel (the kernel forwards in its own context)"
                .into(),
        );
    }
    // A real-time thread's sched_yield gives its CPU only to real-time threads: a
    // spinning one keeps it from every process of the node for its whole budget
    // (docs/decisions/0032). So under a real-time priority busy polling is off unless
    // asked for, and asking for it is said to cost that.
    let busy_poll = match busy_poll {
        Some(b) => {
            if !b.is_off() && engine_priority.is_realtime() && dataplane != DataplaneKind::Kernel {
                notes.push(format!(
                    "--busy-poll with --engine-priority {engine_priority}: a real-time packet thread that spins keeps its CPU from every other process of the node (its yields go to real-time threads only) for each busy-polling budget; 8 TCP streams ran at 6.3 Gbit/s against 8.3-9.1 with --busy-poll off where measured (docs/decisions/0032)"
                ));
            }
            b
        }
        None if engine_priority.is_realtime() => BusyPoll::OFF,
        None => BusyPoll::default(),
    };
    let egress_tunnel_gso = r.bool("egress-tunnel-gso", true)?;
    if egress_tunnel_gso
        && r.last("egress-tunnel-gso").is_some()
        && dataplane == DataplaneKind::Kernel
    {
        notes.push(
            "--egress-tunnel-gso has no effect with --dataplane kernel (the kernel's vxlan device already sends whole GSO packets)"
                .into(),
        );
    }
    let log_format = r
        .typed("log-format", |s| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("use text or json".into()),
        })?
        .map_or(LogFormat::Text, |(f, _)| f);
    let verbosity = r
        .typed("v", |s| {
            i32::try_from(int(s)?).map_err(|_| "out of range".to_string())
        })?
        .map_or(0, |(v, _)| v);

    Ok(Invocation::Run(Box::new(DaemonFlags {
        etcd,
        etcd_prefix: r.text("etcd-prefix", "/coreos.com/network"),
        underlay,
        subnet_file: PathBuf::from(r.text("subnet-file", "/run/flannel/subnet.env")),
        lease_ttl,
        ip_masq: r.bool("ip-masq", true)?,
        masq_random_fully: !r.bool("ip-masq-fully-random-disable", false)?,
        iptables_forward_rules: r.bool("iptables-forward-rules", true)?,
        vxlan_notrack: r.bool("vxlan-notrack", false)?,
        iptables_resync: resync,
        ip_blackhole_route: r.bool("ip-blackhole-route", false)?,
        healthz: (healthz_port != 0).then_some(SocketAddr::new(healthz_ip, healthz_port)),
        dataplane,
        ipv6_dataplane,
        tap_name,
        tx_sockets,
        tap_queues,
        tap_txqueuelen,
        vxlan_rcvbuf,
        aqm,
        engine_priority,
        busy_poll,
        egress_tunnel_gso,
        offloads: !r.bool("no-offloads", false)?,
        log_format,
        verbosity,
        notes,
    })))
}

fn opt_typed<T>(
    r: &Resolver,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, FlagError> {
    if r.opt(name).is_none() {
        return Ok(None);
    }
    Ok(r.typed(name, parse)?.map(|(t, _)| t))
}

/// The lease TTL from `--subnet-lease-ttl` (with whether the operator set it) and
/// flanneld's `--subnet-lease-renew-margin`.
///
/// flanneld holds a 24 h lease and renews it `margin` before it expires, retrying
/// every second: the margin is how long etcd may be unreachable without the lease
/// being lost. vxmesh renews continuously (KeepAlive every 30 s at most), so that
/// time is the TTL itself (less one interval): the TTL becomes at least margin + 1
/// minute. An explicit `--subnet-lease-ttl` shorter than that contradicts the margin.
pub fn lease_ttl(
    ttl: Option<(Duration, bool)>,
    renew_margin: Option<Duration>,
    notes: &mut Vec<String>,
) -> Result<Duration, FlagError> {
    let (ttl, explicit) = ttl.unwrap_or((DEFAULT_LEASE_TTL, false));
    let Some(margin) = renew_margin else {
        return Ok(ttl);
    };
    let needed = margin + RENEW_MARGIN_SLACK;
    if ttl >= needed {
        return Ok(ttl);
    }
    if explicit {
        return Err(FlagError::Conflict(format!(
            "--subnet-lease-renew-margin {} asks the lease to outlast {} min without etcd, but --subnet-lease-ttl {}s lets it expire sooner: raise --subnet-lease-ttl to {}s or more, or drop the margin",
            margin.as_secs() / 60,
            margin.as_secs() / 60,
            ttl.as_secs(),
            needed.as_secs()
        )));
    }
    notes.push(format!(
        "--subnet-lease-renew-margin {}: lease TTL {}s instead of {}s, so the lease outlasts {} min without etcd (vxmesh renews every 30 s instead of once a day)",
        margin.as_secs() / 60,
        needed.as_secs(),
        ttl.as_secs(),
        margin.as_secs() / 60
    ));
    Ok(needed)
}

/// `vxmeshd --help`.
pub fn usage() -> String {
    let mut s = String::from(
        "vxmeshd: leases a pod subnet from etcd (flannel-compatible) and carries pod traffic to\n\
         the other nodes as VXLAN.\n\n\
         Usage: vxmeshd [FLAG]...\n\n\
         Flags take one or two dashes and a value after '=' or a space (-iface=eth1, --iface eth1);\n\
         bools are true when bare and take a value only after '=' (--ip-masq=false). Every flag is\n\
         also a variable VXMESHD_<FLAG>, and each of flanneld's (marked *) also FLANNELD_<FLAG>\n\
         (upper case, '-' -> '_'); precedence: command line, VXMESHD_*, FLANNELD_*, default.\n\n",
    );
    for sp in SPECS {
        if matches!(sp.family, Refused(_)) {
            continue;
        }
        let mut head = format!("  --{}", sp.name);
        if !sp.value.is_empty() {
            let _ = write!(head, " {}", sp.value);
        }
        let star = if sp.family == Flanneld { "*" } else { " " };
        let _ = write!(s, "{star}{head:<40} {}", sp.help);
        if !sp.default.is_empty() {
            let _ = write!(s, " [default: {}]", sp.default);
        }
        s.push('\n');
    }
    s.push_str(
        "\nRefused (flanneld's Kubernetes and client/server modes): --kube-subnet-mgr, --kube-api-url,\n\
         --kubeconfig-file, --kube-annotation-prefix, --set-node-network-unavailable, --net-config-path,\n\
         --listen, --remote, --remote-keyfile, --remote-certfile, --remote-cafile.\n\
         See docs/operations.md and docs/flannel-compatibility.md.\n",
    );
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn env(e: &[(&str, &str)]) -> Vec<(String, String)> {
        e.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn try_run(args: &[&str], e: &[(&str, &str)]) -> Result<DaemonFlags, FlagError> {
        match parse(&strings(args), &env(e))? {
            Invocation::Run(f) => Ok(*f),
            other => panic!("{args:?}: expected a run, got {other:?}"),
        }
    }

    fn run(args: &[&str], e: &[(&str, &str)]) -> DaemonFlags {
        try_run(args, e).unwrap_or_else(|err| panic!("{args:?} {e:?}: {err}"))
    }

    fn err(args: &[&str], e: &[(&str, &str)]) -> FlagError {
        match parse(&strings(args), &env(e)) {
            Err(err) => err,
            Ok(x) => panic!("{args:?} {e:?}: expected an error, got {x:?}"),
        }
    }

    /// What differs from `vxmeshd` with no flags: every canonical line that is not a
    /// default, and `-name` for a default line that went away.
    fn diff(f: &DaemonFlags) -> Vec<String> {
        let base = run(&[], &[]).canonical();
        let now = f.canonical();
        let name = |l: &str| l.split('=').next().unwrap_or_default().to_string();
        let mut d: Vec<String> = now.iter().filter(|l| !base.contains(l)).cloned().collect();
        for l in &base {
            if !now.iter().any(|n| name(n) == name(l)) {
                d.push(format!("-{}", name(l).trim_start_matches("--")));
            }
        }
        d
    }

    #[test]
    fn defaults() {
        assert_eq!(
            run(&[], &[]).canonical(),
            [
                "--etcd-endpoints=http://127.0.0.1:2379",
                "--etcd-prefix=/coreos.com/network",
                "--subnet-file=/run/flannel/subnet.env",
                "--subnet-lease-ttl=3600s",
                "--ip-masq=true",
                "--ip-masq-fully-random-disable=false",
                "--iptables-forward-rules=true",
                "--vxlan-notrack=false",
                "--iptables-resync=5",
                "--ip-blackhole-route=false",
                "--healthz-ip=127.0.0.1",
                "--healthz-port=8471",
                "--dataplane=userspace",
                "--ipv6-dataplane=kernel",
                "--tap-name=vxmesh0",
                "--tx-sockets=8",
                "--tap-queues=1",
                "--tap-txqueuelen=256",
                "--vxlan-rcvbuf=4MiB",
                "--aqm-target=off",
                "--engine-priority=normal",
                "--busy-poll=auto",
                "--egress-tunnel-gso=true",
                "--no-offloads=false",
                "--log-format=text",
                "--v=0",
            ]
        );
        assert!(run(&[], &[]).notes.is_empty());
    }

    #[test]
    fn egress_tunnel_gso_flag() {
        assert!(run(&[], &[]).egress_tunnel_gso);
        for args in [
            &["--egress-tunnel-gso"][..],
            &["-egress-tunnel-gso=true"],
            &["--egress-tunnel-gso=1"],
        ] {
            let f = run(args, &[]);
            assert!(f.egress_tunnel_gso, "{args:?}");
            assert!(f.notes.is_empty(), "{args:?}");
            assert!(diff(&f).is_empty(), "{args:?}");
        }
        for args in [
            &["--egress-tunnel-gso=false"][..],
            &["-egress-tunnel-gso=0"],
        ] {
            let f = run(args, &[]);
            assert!(!f.egress_tunnel_gso, "{args:?}");
            assert_eq!(diff(&f), ["--egress-tunnel-gso=false"]);
        }
        // The default says nothing on the kernel dataplane; asking for it does.
        assert!(run(&["--dataplane=kernel"], &[]).notes.is_empty());
        let f = run(&["--dataplane=kernel", "--egress-tunnel-gso"], &[]);
        assert!(
            f.notes
                .iter()
                .any(|n| n.contains("--egress-tunnel-gso has no effect")),
            "{:?}",
            f.notes
        );
        let e = err(&["--egress-tunnel-gso=maybe"], &[]).to_string();
        assert!(e.contains("egress-tunnel-gso"), "{e}");
    }

    #[test]
    fn ipv6_dataplane_flag() {
        assert_eq!(run(&[], &[]).ipv6_dataplane, DataplaneKind::Kernel);
        let f = run(&["--ipv6-dataplane=userspace"], &[]);
        assert_eq!(f.ipv6_dataplane, DataplaneKind::Userspace);
        assert_eq!(diff(&f), ["--ipv6-dataplane=userspace"]);
        assert_eq!(
            run(&["--ipv6-dataplane", "kernel"], &[]).ipv6_dataplane,
            DataplaneKind::Kernel
        );
        // The kernel dataplane has no threads to carry it: said, not ignored.
        let e = err(&["--dataplane=kernel", "--ipv6-dataplane=userspace"], &[]).to_string();
        assert!(e.contains("needs --dataplane userspace"), "{e}");
        assert!(run(&["--dataplane=kernel", "--ipv6-dataplane=kernel"], &[])
            .notes
            .is_empty());
        let e = err(&["--ipv6-dataplane=threads"], &[]).to_string();
        assert!(
            e.contains("ipv6-dataplane") && e.contains("userspace or kernel"),
            "{e}"
        );
    }

    #[test]
    fn aqm_flags() {
        let aqm = |args: &[&str], e: &[(&str, &str)]| run(args, e).aqm;
        // Off unless asked for (decision 0016); the interval defaults with a target.
        assert_eq!(aqm(&[], &[]), None);
        assert_eq!(
            aqm(&["--aqm-target=1ms"], &[]),
            Some(CodelConfig {
                target_ns: 1_000_000,
                interval_ns: CodelConfig::DEFAULT.interval_ns
            })
        );
        assert_eq!(
            aqm(&["--aqm-target=500us", "--aqm-interval=10ms"], &[]),
            Some(CodelConfig {
                target_ns: 500_000,
                interval_ns: 10_000_000
            })
        );
        assert_eq!(
            diff(&run(&["--aqm-target=5ms", "--aqm-interval=100ms"], &[])),
            ["--aqm-target=5ms", "--aqm-interval=100ms"]
        );
        assert_eq!(
            aqm(&[], &[("VXMESHD_AQM_TARGET", "2ms")]).map(|c| c.target_ns),
            Some(2_000_000)
        );
        for off in ["off", "0"] {
            let f = run(&["--aqm-target", off], &[]);
            assert_eq!(f.aqm, None);
            assert!(f.canonical().contains(&"--aqm-target=off".to_string()));
            assert!(!f
                .canonical()
                .iter()
                .any(|a| a.starts_with("--aqm-interval")));
        }
        let f = run(&["--aqm-target=off", "--aqm-interval=50ms"], &[]);
        assert_eq!(f.aqm, None);
        assert!(
            f.notes.iter().any(|n| n.contains("--aqm-interval")),
            "{:?}",
            f.notes
        );
        // flanneld has no such flag: no FLANNELD_ variable.
        assert_eq!(aqm(&[], &[("FLANNELD_AQM_TARGET", "2ms")]), None);
        for (args, says) in [
            (&["--aqm-target=1"][..], "whole number with us, ms or s"),
            (&["--aqm-target=1.5ms"], "whole number"),
            (&["--aqm-target=5us"], "use 10us to 1s"),
            (&["--aqm-target=2s"], "use 10us to 1s"),
            (
                &["--aqm-target=1ms", "--aqm-interval=500us"],
                "use 1ms to 10s",
            ),
            (&["--aqm-interval=99999999999999999999s"], "whole number"),
            (
                &["--aqm-target=20ms"],
                "must be longer than --aqm-target (20ms)",
            ),
            (
                &["--aqm-target=5ms", "--aqm-interval=5ms"],
                "must be longer",
            ),
        ] {
            let e = err(args, &[]).to_string();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn engine_priority_flag() {
        let prio = |args: &[&str], e: &[(&str, &str)]| run(args, e).engine_priority;
        // Left as inherited unless asked for (decision 0020).
        assert_eq!(prio(&[], &[]), ThreadPriority::Normal);
        assert_eq!(
            prio(&["--engine-priority=fifo:1"], &[]),
            ThreadPriority::Fifo(1)
        );
        assert_eq!(
            prio(&["-engine-priority", "nice:-10"], &[]),
            ThreadPriority::Nice(-10)
        );
        assert_eq!(
            prio(&[], &[("VXMESHD_ENGINE_PRIORITY", "nice:5")]),
            ThreadPriority::Nice(5)
        );
        // Busy polling goes off with a real-time priority (decision 0032).
        assert_eq!(
            diff(&run(&["--engine-priority=fifo:10"], &[])),
            ["--engine-priority=fifo:10", "--busy-poll=off"]
        );
        // Nothing to schedule on the kernel's dataplane: said, not refused.
        let f = run(&["--dataplane=kernel", "--engine-priority=fifo:1"], &[]);
        assert!(
            f.notes
                .iter()
                .any(|n| n.contains("--engine-priority fifo:1 has no effect")),
            "{:?}",
            f.notes
        );
        assert!(run(&["--engine-priority=nice:-5"], &[]).notes.is_empty());
        for bad in ["fifo:0", "nice:20", "rt", "fifo"] {
            let e = err(&["--engine-priority", bad], &[]).to_string();
            assert!(
                e.contains("--engine-priority") && e.contains("use normal, nice:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_real_time_priority_turns_busy_polling_off_unless_asked_for() {
        // Off by default under SCHED_FIFO: a real-time thread's yields never reach the
        // pods' processes (decision 0032).
        let f = run(&["--engine-priority=fifo:1"], &[]);
        assert_eq!(f.busy_poll, BusyPoll::OFF);
        assert!(f.notes.is_empty(), "{:?}", f.notes);
        // A nice value stays under the normal scheduler, whose yields reach them.
        assert_eq!(
            run(&["--engine-priority=nice:-10"], &[]).busy_poll,
            BusyPoll::AUTO
        );
        assert_eq!(run(&[], &[]).busy_poll, BusyPoll::AUTO);
        // Asked for, it is what the operator asked for, with its cost said.
        for (asked, want) in [
            ("auto", BusyPoll::AUTO),
            ("200us", BusyPoll::always(Duration::from_micros(200))),
        ] {
            let f = run(
                &["--engine-priority=fifo:5", &format!("--busy-poll={asked}")],
                &[],
            );
            assert_eq!(f.busy_poll, want);
            assert!(
                f.notes
                    .iter()
                    .any(|n| n.contains("--busy-poll with --engine-priority fifo:5")
                        && n.contains("keeps its CPU from every other process")),
                "{asked}: {:?}",
                f.notes
            );
        }
        let f = run(&["--engine-priority=fifo:5", "--busy-poll=off"], &[]);
        assert_eq!(f.busy_poll, BusyPoll::OFF);
        assert!(f.notes.is_empty(), "{:?}", f.notes);
        // The same from flanneld-style environment variables.
        assert_eq!(
            run(&[], &[("VXMESHD_ENGINE_PRIORITY", "fifo:2")]).busy_poll,
            BusyPoll::OFF
        );
    }

    #[test]
    fn busy_poll_flag() {
        let policy = |args: &[&str], e: &[(&str, &str)]| run(args, e).busy_poll;
        // After a burst by default (decision 0028).
        assert_eq!(policy(&[], &[]), BusyPoll::AUTO);
        assert_eq!(policy(&["--busy-poll=auto"], &[]), BusyPoll::AUTO);
        assert_eq!(policy(&["--busy-poll=off"], &[]), BusyPoll::OFF);
        assert_eq!(policy(&["--busy-poll", "0"], &[]), BusyPoll::OFF);
        assert_eq!(
            policy(&["--busy-poll=200us"], &[]),
            BusyPoll::always(Duration::from_micros(200))
        );
        // A duration is after every packet, even the default's 50us.
        assert_eq!(
            policy(&["--busy-poll=50us"], &[]),
            BusyPoll::always(Duration::from_micros(50))
        );
        assert_eq!(
            policy(&["-busy-poll", "20ms"], &[]),
            BusyPoll::always(Duration::from_millis(20))
        );
        assert_eq!(
            policy(&[], &[("VXMESHD_BUSY_POLL", "1s")]),
            BusyPoll::always(Duration::from_secs(1))
        );
        assert_eq!(policy(&[], &[("VXMESHD_BUSY_POLL", "off")]), BusyPoll::OFF);
        assert_eq!(diff(&run(&["--busy-poll=50us"], &[])), ["--busy-poll=50us"]);
        assert_eq!(diff(&run(&["--busy-poll=off"], &[])), ["--busy-poll=off"]);
        assert!(diff(&run(&["--busy-poll=auto"], &[])).is_empty());
        // The help's default is the policy's.
        let spec = SPECS.iter().find(|s| s.name == "busy-poll").unwrap();
        assert_eq!(spec.default, "auto");
        let f = run(&["--dataplane=kernel", "--busy-poll=1ms"], &[]);
        assert!(
            f.notes
                .iter()
                .any(|n| n.contains("--busy-poll has no effect")),
            "{:?}",
            f.notes
        );
        // The default says nothing on the kernel dataplane; an explicit auto does.
        assert!(run(&["--dataplane=kernel"], &[]).notes.is_empty());
        assert!(!run(&["--dataplane=kernel", "--busy-poll=auto"], &[])
            .notes
            .is_empty());
        assert!(run(&["--dataplane=kernel", "--busy-poll=off"], &[])
            .notes
            .is_empty());
        assert!(run(&["--busy-poll=1ms"], &[]).notes.is_empty());
        for bad in ["2s", "500ns", "1", "fast", "-1ms", "Auto", "on"] {
            let e = err(&["--busy-poll", bad], &[]).to_string();
            assert!(e.contains("--busy-poll"), "{bad}: {e}");
        }
    }

    #[test]
    fn tap_txqueuelen_flag() {
        let qlen = |args: &[&str], e: &[(&str, &str)]| run(args, e).tap_txqueuelen;
        assert_eq!(qlen(&[], &[]), DEFAULT_TAP_TXQUEUELEN);
        // The help's default is the constant's.
        let spec = SPECS.iter().find(|s| s.name == "tap-txqueuelen").unwrap();
        assert_eq!(spec.default, DEFAULT_TAP_TXQUEUELEN.to_string());
        assert_eq!(qlen(&["--tap-txqueuelen=512"], &[]), 512);
        assert_eq!(qlen(&["-tap-txqueuelen", "16"], &[]), 16);
        assert_eq!(qlen(&[], &[("VXMESHD_TAP_TXQUEUELEN", "65536")]), 65_536);
        assert_eq!(
            diff(&run(&["--tap-txqueuelen=100"], &[])),
            ["--tap-txqueuelen=100"]
        );
        let f = run(&["--dataplane=kernel", "--tap-txqueuelen=64"], &[]);
        assert!(
            f.notes
                .iter()
                .any(|n| n.contains("--tap-txqueuelen has no effect")),
            "{:?}",
            f.notes
        );
        assert!(run(&["--tap-txqueuelen=64"], &[]).notes.is_empty());
        for bad in ["0", "15", "65537", "-1"] {
            let e = err(&["--tap-txqueuelen", bad], &[]).to_string();
            assert!(
                e.contains("--tap-txqueuelen") && e.contains("16 to 65536"),
                "{bad}: {e}"
            );
        }
        for bad in ["many", "1e3", ""] {
            let e = err(&["--tap-txqueuelen", bad], &[]).to_string();
            assert!(e.contains("--tap-txqueuelen"), "{bad}: {e}");
        }
    }

    #[test]
    fn vxlan_rcvbuf_flag() {
        let buf = |args: &[&str], e: &[(&str, &str)]| run(args, e).vxlan_rcvbuf;
        assert_eq!(buf(&[], &[]), DEFAULT_VXLAN_RCVBUF);
        let spec = SPECS.iter().find(|s| s.name == "vxlan-rcvbuf").unwrap();
        assert_eq!(spec.default, format_bytes(DEFAULT_VXLAN_RCVBUF));
        assert_eq!(buf(&["--vxlan-rcvbuf=16MiB"], &[]), 16 << 20);
        assert_eq!(buf(&["--vxlan-rcvbuf", "4M"], &[]), 4 << 20);
        assert_eq!(buf(&["-vxlan-rcvbuf=512K"], &[]), 512 << 10);
        assert_eq!(buf(&["--vxlan-rcvbuf=1000000"], &[]), 1_000_000);
        assert_eq!(buf(&[], &[("VXMESHD_VXLAN_RCVBUF", "512MiB")]), 512 << 20);
        assert_eq!(
            diff(&run(&["--vxlan-rcvbuf=8M"], &[])),
            ["--vxlan-rcvbuf=8MiB"]
        );
        assert_eq!(
            diff(&run(&["--vxlan-rcvbuf=100000"], &[])),
            ["--vxlan-rcvbuf=100000"]
        );
        let f = run(&["--dataplane=kernel", "--vxlan-rcvbuf=4MiB"], &[]);
        assert!(
            f.notes
                .iter()
                .any(|n| n.contains("--vxlan-rcvbuf has no effect")),
            "{:?}",
            f.notes
        );
        assert!(run(&["--vxlan-rcvbuf=4MiB"], &[]).notes.is_empty());
        for bad in ["0", "65535", "513MiB", "1GiB", "99999999999999999999"] {
            let e = err(&["--vxlan-rcvbuf", bad], &[]).to_string();
            assert!(e.contains("--vxlan-rcvbuf"), "{bad}: {e}");
        }
        for (bad, why) in [
            ("4MB", "unknown unit"),
            ("4 MiB", "unknown unit"),
            ("MiB", "not a size"),
            ("-4MiB", "not a size"),
            ("", "not a size"),
            ("4.5MiB", "unknown unit"),
            ("18446744073709551615GiB", "not a size"),
        ] {
            let e = err(&["--vxlan-rcvbuf", bad], &[]).to_string();
            assert!(
                e.contains("--vxlan-rcvbuf") && e.contains(why),
                "{bad}: {e}"
            );
        }
        for n in [1, 1023, 1024, 65_536, 3 << 20, (1 << 30) + 1024, 5 << 30] {
            assert_eq!(parse_bytes(&format_bytes(n)), Ok(n), "{n}");
        }
    }

    #[test]
    fn go_flag_syntax() {
        for args in [
            &["-iface=eth1"][..],
            &["--iface=eth1"],
            &["-iface", "eth1"],
            &["--iface", "eth1"],
        ] {
            assert_eq!(diff(&run(args, &[])), ["--iface=eth1"], "{args:?}");
        }
        // A value may start with a dash, as in Go: the next word is the value.
        assert_eq!(run(&["-etcd-prefix", "-x"], &[]).etcd_prefix, "-x");
        // '=' inside a value stays in it.
        assert_eq!(
            run(&["--etcd-password=a=b", "--etcd-username=u"], &[])
                .etcd
                .password
                .as_deref(),
            Some("a=b")
        );
        // The last of a repeated flag wins; a repeatable one keeps all, in order.
        assert_eq!(
            run(&["-etcd-prefix=/a", "--etcd-prefix", "/b"], &[]).etcd_prefix,
            "/b"
        );
        assert_eq!(
            run(&["--iface", "eth9", "-iface=10.0.0.1", "--iface=eth0"], &[])
                .underlay
                .ifaces,
            ["eth9", "10.0.0.1", "eth0"]
        );
    }

    #[test]
    fn bools_as_go_reads_them() {
        assert!(!run(&["-ip-masq=false"], &[]).ip_masq);
        assert!(run(&["--ip-masq"], &[]).ip_masq);
        assert!(!run(&["--ip-masq=0"], &[]).ip_masq);
        assert!(!run(&["--ip-masq=F"], &[]).ip_masq);
        assert!(run(&["-ip-masq=false", "-ip-masq"], &[]).ip_masq);
        assert!(!run(&["--no-offloads"], &[]).offloads);
        assert!(!run(&["--iptables-forward-rules=false"], &[]).iptables_forward_rules);
        assert!(!run(&["--ip-masq-fully-random-disable"], &[]).masq_random_fully);
        assert!(!run(&[], &[]).ip_blackhole_route);
        let f = run(&["-ip-blackhole-route"], &[]);
        assert!(f.ip_blackhole_route);
        assert!(f.notes.is_empty(), "acted on, not noted: {:?}", f.notes);
        assert!(run(&[], &[("FLANNELD_IP_BLACKHOLE_ROUTE", "true")]).ip_blackhole_route);
        // Go reads "--ip-masq false" as --ip-masq and stops at "false", dropping the
        // rest; vxmeshd's own syntax before this module meant --ip-masq=false. Read
        // as that, and said.
        let f = run(&["--ip-masq", "false", "--iface", "eth1"], &[]);
        assert!(!f.ip_masq);
        assert_eq!(f.underlay.ifaces, ["eth1"]);
        assert_eq!(f.notes.len(), 1, "{:?}", f.notes);
        assert!(
            f.notes[0].starts_with("--ip-masq false: read as --ip-masq=false;"),
            "{}",
            f.notes[0]
        );
        assert!(run(&["-ip-masq", "true"], &[]).ip_masq);
        // Any other word after a bool is no value.
        let e = err(&["--ip-masq", "0"], &[]);
        assert_eq!(e, FlagError::Positional("0".into()));
        assert!(e.to_string().contains("--ip-masq=false"), "{e}");
        let e = err(&["--ip-masq=yes"], &[]);
        assert!(
            e.to_string()
                .starts_with("--ip-masq=yes: invalid value \"yes\""),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            err(&["---iface=x"], &[]),
            FlagError::Syntax("---iface=x".into())
        );
        assert_eq!(err(&["-=x"], &[]), FlagError::Syntax("-=x".into()));
        assert_eq!(
            err(&["--iface"], &[]),
            FlagError::NeedsValue("--iface".into())
        );
        assert_eq!(err(&["eth0"], &[]), FlagError::Positional("eth0".into()));
        assert_eq!(err(&["-"], &[]), FlagError::Positional("-".into()));
        assert_eq!(err(&["--", "x"], &[]), FlagError::Positional("x".into()));
        assert_eq!(run(&["--iface=a", "--"], &[]).underlay.ifaces, ["a"]);
        let e = err(&["--ifcae=eth0"], &[]);
        assert_eq!(e.to_string(), "unknown flag --ifcae (see vxmeshd --help)");
        assert_eq!(
            err(&["-etcd-pasword=s3cret"], &[]),
            FlagError::Unknown("-etcd-pasword".into())
        );
    }

    #[test]
    fn help_and_version() {
        for h in ["-h", "-help", "--help", "--h"] {
            assert!(
                matches!(parse(&strings(&[h]), &[]), Ok(Invocation::Help)),
                "{h}"
            );
        }
        assert!(matches!(
            parse(&strings(&["--version"]), &[]),
            Ok(Invocation::Version)
        ));
        assert!(matches!(
            parse(&strings(&["-version", "-v=2"]), &[]),
            Ok(Invocation::Version)
        ));
        // --version=false runs; FLANNELD_VERSION is ignored (flanneld checks --version
        // before it reads its environment).
        run(&["--version=false"], &[]);
        run(&[], &[("FLANNELD_VERSION", "true")]);
        let u = usage();
        for s in SPECS.iter().filter(|s| !matches!(s.family, Refused(_))) {
            assert!(
                u.contains(&format!("--{}", s.name)),
                "usage lacks --{}",
                s.name
            );
        }
    }

    #[test]
    fn environment_and_precedence() {
        let e = [
            ("FLANNELD_ETCD_PREFIX", "/flannel"),
            ("VXMESHD_ETCD_PREFIX", "/vxmesh"),
            ("FLANNELD_IFACE", "eth1"),
            ("FLANNELD_IP_MASQ", "false"),
        ];
        let f = run(&[], &e);
        assert_eq!(f.etcd_prefix, "/vxmesh", "VXMESHD_* over FLANNELD_*");
        assert_eq!(f.underlay.ifaces, ["eth1"]);
        assert!(!f.ip_masq);
        let f = run(&["-etcd-prefix=/cli", "-iface=eth2"], &e);
        assert_eq!(f.etcd_prefix, "/cli", "command line over both");
        assert_eq!(
            f.underlay.ifaces,
            ["eth2"],
            "command-line --iface replaces the variable's"
        );
        // An empty variable is unset (flagutil skips it), also for VXMESHD_*.
        let f = run(
            &[],
            &[("VXMESHD_ETCD_PREFIX", ""), ("FLANNELD_ETCD_PREFIX", "/f")],
        );
        assert_eq!(f.etcd_prefix, "/f");
        // One value per variable, as in flannel: no splitting of FLANNELD_IFACE.
        assert_eq!(
            run(&[], &[("FLANNELD_IFACE", "eth0,eth1")]).underlay.ifaces,
            ["eth0,eth1"]
        );
        // vxmesh's own flags have no FLANNELD_ name.
        let f = run(&[], &[("FLANNELD_TAP_NAME", "x0")]);
        assert_eq!(f.tap_name.to_string(), "vxmesh0");
        assert_eq!(f.notes.len(), 1, "{:?}", f.notes);
        assert!(f.notes[0].starts_with("FLANNELD_TAP_NAME is not a flanneld variable"));
        assert_eq!(
            run(&[], &[("VXMESHD_TAP_NAME", "x0")]).tap_name.to_string(),
            "x0"
        );
        // A bad value says which variable held it.
        let e = err(&[], &[("FLANNELD_IFACE_CAN_REACH", "gateway")]);
        assert_eq!(
            e.to_string(),
            "FLANNELD_IFACE_CAN_REACH: invalid value \"gateway\": not an IPv4 address"
        );
        // Variables that look like ours but are not: noted, not fatal.
        let f = run(
            &[],
            &[
                ("VXMESHD_IFAEC", "eth0"),
                ("FLANNELD_FOO", "1"),
                ("FLANNEL_OPTIONS", "-iface x"),
            ],
        );
        assert_eq!(f.notes.len(), 2, "{:?}", f.notes);
    }

    #[test]
    fn other_modes_are_refused() {
        let e = err(
            &["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"],
            &[],
        );
        assert!(
            e.to_string()
                .starts_with("--kube-subnet-mgr asks for flanneld's Kubernetes mode"),
            "{e}"
        );
        let e = err(&[], &[("FLANNELD_KUBE_SUBNET_MGR", "true")]);
        assert!(
            e.to_string().starts_with("FLANNELD_KUBE_SUBNET_MGR asks"),
            "{e}"
        );
        run(&["--kube-subnet-mgr=false"], &[]);
        for flag in [
            "--kube-api-url=https://10.0.0.1:6443",
            "--kubeconfig-file=/etc/kubernetes/flannel.conf",
            "-kube-annotation-prefix=x",
            "--set-node-network-unavailable=false",
            "--remote=10.0.0.1:8888",
        ] {
            let e = err(&[flag], &[]);
            assert!(matches!(e, FlagError::Refused { .. }), "{flag}: {e}");
            assert!(e.to_string().starts_with(flag), "{e}");
            assert!(e.to_string().contains("drop it"), "{e}");
        }
        let e = err(&["--net-config-path=/etc/kube-flannel/net-conf.json"], &[]);
        assert!(e.to_string().contains("etcdctl put"), "{e}");
        assert!(matches!(
            err(&[], &[("FLANNELD_KUBECONFIG_FILE", "/k")]),
            FlagError::Refused { .. }
        ));
    }

    #[test]
    fn public_ipv6_is_flanneds_flag_and_variable() {
        let want: Ipv6Addr = "fd00:64::3".parse().unwrap();
        let f = run(&["--public-ipv6=fd00:64::3"], &[]);
        assert_eq!(f.underlay.public_ipv6, Some(want));
        assert!(f.notes.is_empty(), "{:?}", f.notes);
        assert!(f
            .canonical()
            .contains(&"--public-ipv6=fd00:64::3".to_string()));
        let f = run(&[], &[("FLANNELD_PUBLIC_IPV6", "fd00:64::3")]);
        assert_eq!(f.underlay.public_ipv6, Some(want));
        assert_eq!(run(&["--public-ipv6="], &[]).underlay.public_ipv6, None);
        for bad in [
            "10.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "fd00::zz",
        ] {
            let e = err(&[&format!("--public-ipv6={bad}")], &[]).to_string();
            assert!(e.contains("public-ipv6") && e.contains(bad), "{bad}: {e}");
        }
        let e = err(&["--public-ipv6=fe80::1"], &[]).to_string();
        assert!(e.contains("a link-local address"), "{e}");
    }

    /// A PublicIP every peer would refuse (peers' `bad_public_ip`) is refused here,
    /// before a lease is written with it.
    #[test]
    fn public_ip_must_be_one_a_peer_can_reach() {
        for (bad, what) in [
            ("127.0.0.1", "a loopback address"),
            ("0.0.0.0", "in 0.0.0.0/8"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
        ] {
            let e = err(&[&format!("--public-ip={bad}")], &[]).to_string();
            assert!(
                e.contains("public-ip") && e.contains(bad) && e.contains(what),
                "{bad}: {e}"
            );
            let e = err(&[], &[("FLANNELD_PUBLIC_IP", bad)]).to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
        assert_eq!(
            run(&["--public-ip=203.0.113.7"], &[]).underlay.public_ip,
            Some(Ipv4Addr::new(203, 0, 113, 7))
        );
    }

    #[test]
    fn accepted_but_not_acted_on_is_said() {
        let f = run(
            &["--vmodule=main=4", "-logtostderr", "-alsologtostderr"],
            &[("FLANNELD_LOG_BACKTRACE_AT", "main.go:1")],
        );
        assert_eq!(f.notes.len(), 4, "{:?}", f.notes);
        assert!(f.notes.iter().all(|n| n.contains("accepted, not acted on")));
        assert!(
            f.notes[0].starts_with("--vmodule=main=4: "),
            "{}",
            f.notes[0]
        );
        assert!(f
            .notes
            .iter()
            .any(|n| n.starts_with("FLANNELD_LOG_BACKTRACE_AT: ")));
        assert_eq!(run(&["--log_dir=/var/log"], &[]).notes.len(), 1);
    }

    #[test]
    fn verbosity() {
        assert_eq!(run(&[], &[]).log_level(), "info");
        assert_eq!(run(&["-v", "1"], &[]).log_level(), "debug");
        assert_eq!(run(&["--v=4"], &[]).log_level(), "debug");
        assert_eq!(run(&["-v=5"], &[]).log_level(), "trace");
        assert_eq!(run(&[], &[("FLANNELD_V", "2")]).verbosity, 2);
        assert!(matches!(err(&["-v=high"], &[]), FlagError::Invalid { .. }));
    }

    #[test]
    fn renew_margin_and_ttl() {
        let ttl = |args: &[&str], e: &[(&str, &str)]| run(args, e).lease_ttl.as_secs();
        assert_eq!(ttl(&[], &[]), 3600);
        assert_eq!(ttl(&["--subnet-lease-ttl=90s"], &[]), 90);
        // flanneld's default margin (60 min) raises the 1 h default by a minute.
        let f = run(&["--subnet-lease-renew-margin=60"], &[]);
        assert_eq!(f.lease_ttl.as_secs(), 3660);
        assert_eq!(f.notes.len(), 1);
        assert!(
            f.notes[0].contains("lease TTL 3660s instead of 3600s"),
            "{}",
            f.notes[0]
        );
        assert_eq!(ttl(&["-subnet-lease-renew-margin", "30"], &[]), 3600);
        assert_eq!(
            ttl(&[], &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "1439")]),
            1440 * 60
        );
        assert_eq!(
            ttl(
                &["--subnet-lease-ttl=3h", "--subnet-lease-renew-margin=120"],
                &[]
            ),
            3 * 3600
        );
        // An explicit TTL the margin would outlive is a contradiction, said as one.
        let e = err(
            &["--subnet-lease-ttl=1h", "--subnet-lease-renew-margin=120"],
            &[],
        );
        assert!(
            e.to_string().contains("raise --subnet-lease-ttl to 7260s"),
            "{e}"
        );
        let e = err(
            &[],
            &[
                ("VXMESHD_SUBNET_LEASE_TTL", "1h"),
                ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "120"),
            ],
        );
        assert!(matches!(e, FlagError::Conflict(_)), "{e}");
        for bad in ["0", "1440", "-5", "1h"] {
            let e = err(&[&format!("--subnet-lease-renew-margin={bad}")], &[]);
            assert!(matches!(e, FlagError::Invalid { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        // n * 86400 overflows u64: refused, not wrapped (nor a panic in debug builds).
        assert!(parse_duration("213503982334601d").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn values_checked() {
        assert_eq!(run(&["--healthz-port=0"], &[]).healthz, None);
        assert_eq!(run(&["--healthz-port=-1"], &[]).healthz, None);
        assert_eq!(
            run(&["--healthz-ip=0.0.0.0", "--healthz-port=8081"], &[]).healthz,
            Some("0.0.0.0:8081".parse().unwrap())
        );
        assert!(matches!(
            err(&["--healthz-port=70000"], &[]),
            FlagError::Invalid { .. }
        ));
        assert_eq!(
            run(&["--iptables-resync=30"], &[]).iptables_resync,
            Duration::from_secs(30)
        );
        assert!(matches!(
            err(&["--iptables-resync=0"], &[]),
            FlagError::Invalid { .. }
        ));
        let e = err(&["--public-ip=fd00::1"], &[]);
        assert!(e.to_string().contains("where an IPv4 one is needed"), "{e}");
        assert_eq!(run(&["--public-ip="], &[]).underlay.public_ip, None);
        let e = err(&["--iface-regex=eth[0-"], &[]);
        assert!(
            e.to_string()
                .starts_with("--iface-regex=eth[0-: invalid value"),
            "{e}"
        );
        assert!(matches!(
            err(&["--tap-name=much-too-long-name"], &[]),
            FlagError::Invalid { .. }
        ));
        assert!(matches!(
            err(&["--dataplane=ebpf"], &[]),
            FlagError::Invalid { .. }
        ));
        assert!(matches!(
            err(&["--tx-sockets=0"], &[]),
            FlagError::Invalid { .. }
        ));
        assert_eq!(
            run(&["--dataplane", "kernel"], &[]).dataplane,
            DataplaneKind::Kernel
        );
        // Empty TLS flags are absent (an EnvironmentFile line `FLANNELD_ETCD_CAFILE=`).
        assert_eq!(run(&["--etcd-cafile="], &[]).etcd.cafile, None);
        assert_eq!(
            run(&["--etcd-endpoints=http://a:2379, http://b:2379,"], &[])
                .etcd
                .endpoints,
            ["http://a:2379", "http://b:2379"]
        );
    }

    /// Command lines and environments as flanneld's documentation and common unit files
    /// write them; each must start vxmeshd with flanneld's meaning.
    #[test]
    fn golden_flanneld_command_lines() {
        // flannel Documentation/running.md, "Multiple networks".
        let f = run(
            &["-subnet-file", "/vxlan.env", "-etcd-prefix=/vxlan/network"],
            &[],
        );
        assert_eq!(
            diff(&f),
            ["--etcd-prefix=/vxlan/network", "--subnet-file=/vxlan.env"]
        );

        // flannel Documentation/configuration.md, "Environment variables":
        // `--etcd-endpoints=http://10.0.0.2:2379` is FLANNELD_ETCD_ENDPOINTS=http://10.0.0.2:2379.
        let a = run(&["--etcd-endpoints=http://10.0.0.2:2379"], &[]);
        let b = run(&[], &[("FLANNELD_ETCD_ENDPOINTS", "http://10.0.0.2:2379")]);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(diff(&a), ["--etcd-endpoints=http://10.0.0.2:2379"]);

        // flannel Documentation/configuration.md, "Key command line options" (values as
        // documented): -v=0, --iface-can-reach=192.168.1.1, --iptables-resync=5,
        // --iptables-forward-rules, --healthz-port=0.
        let f = run(
            &[
                "-v=0",
                "--iface-can-reach=192.168.1.1",
                "--iptables-resync=5",
                "--iptables-forward-rules",
                "--healthz-port=0",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--iface-can-reach=192.168.1.1",
                "--healthz-port=0",
                "-healthz-ip"
            ]
        );

        // Fedora/CentOS `flannel` package: flanneld.service runs
        //   flanneld-start -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} -etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS
        // with /etc/sysconfig/flanneld's FLANNEL_ETCD_PREFIX="/atomic.io/network"; OpenStack
        // Magnum (magnum/drivers/common/templates/swarm/fragments/network-service.sh) sets
        // FLANNEL_OPTIONS="-etcd-cafile $CERT_DIR/ca.crt -etcd-certfile … -etcd-keyfile …".
        let f = run(
            &[
                "-etcd-endpoints=https://10.0.0.5:2379",
                "-etcd-prefix=/atomic.io/network",
                "-etcd-cafile",
                "/etc/docker/ca.crt",
                "-etcd-certfile",
                "/etc/docker/server.crt",
                "-etcd-keyfile",
                "/etc/docker/server.key",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=https://10.0.0.5:2379",
                "--etcd-prefix=/atomic.io/network",
                "--etcd-cafile=/etc/docker/ca.crt",
                "--etcd-certfile=/etc/docker/server.crt",
                "--etcd-keyfile=/etc/docker/server.key",
            ]
        );
        // Magnum's Kubernetes fragment of the same era: FLANNEL_OPTIONS="-iface eth0 --ip-masq"
        // (one and two dashes mixed on one line).
        let f = run(
            &[
                "-etcd-endpoints=http://10.0.0.5:2379",
                "-etcd-prefix=/atomic.io/network",
                "-iface",
                "eth0",
                "--ip-masq",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://10.0.0.5:2379",
                "--etcd-prefix=/atomic.io/network",
                "--iface=eth0"
            ]
        );

        // The binary-install guides' unit (e.g. lgphone/ansible-k8s-manager
        // roles/flanneld/templates/flanneld.service.tpl, after opsnull's
        // follow-me-install-kubernetes-cluster): Type=notify, single dashes, bare -ip-masq.
        let f = run(
            &[
                "-etcd-cafile=/opt/k8s/cert/ca.pem",
                "-etcd-certfile=/opt/k8s/cert/flanneld.pem",
                "-etcd-keyfile=/opt/k8s/cert/flanneld-key.pem",
                "-etcd-endpoints=https://192.168.1.10:2379,https://192.168.1.11:2379",
                "-etcd-prefix=/kubernetes/network",
                "-iface=ens33",
                "-ip-masq",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=https://192.168.1.10:2379,https://192.168.1.11:2379",
                "--etcd-prefix=/kubernetes/network",
                "--etcd-cafile=/opt/k8s/cert/ca.pem",
                "--etcd-certfile=/opt/k8s/cert/flanneld.pem",
                "--etcd-keyfile=/opt/k8s/cert/flanneld-key.pem",
                "--iface=ens33",
            ]
        );

        // skiplee85/k8s master/flannel/start.sh: -ip-masq then -subnet-file.
        let f = run(
            &[
                "-etcd-endpoints=http://10.0.0.5:2379",
                "-ip-masq",
                "-subnet-file=/srv/kubernetes/flannel/subnet.env",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://10.0.0.5:2379",
                "--subnet-file=/srv/kubernetes/flannel/subnet.env"
            ]
        );

        // lijunyong/kubernetes-1.16 flanneld.md: a CentOS unit, Type=notify, single dashes,
        // three endpoints.
        let f = run(
            &[
                "-etcd-endpoints=http://172.20.0.113:2379,http://172.20.0.114:2379,http://172.20.0.115:2379",
                "-etcd-prefix=/kube-centos/network",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://172.20.0.113:2379,http://172.20.0.114:2379,http://172.20.0.115:2379",
                "--etcd-prefix=/kube-centos/network",
            ]
        );

        // gomesuit/vagrant-kubernetes install-flanneld.sh: the CentOS package's unit
        // (`-etcd-endpoints=${FLANNEL_ETCD} -etcd-prefix=${FLANNEL_ETCD_KEY} $FLANNEL_OPTIONS`
        // in that release) with FLANNEL_OPTIONS="--iface=eth1".
        let f = run(
            &[
                "-etcd-endpoints=http://master01:2379",
                "-etcd-prefix=/atomic.io/network",
                "--iface=eth1",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://master01:2379",
                "--etcd-prefix=/atomic.io/network",
                "--iface=eth1"
            ]
        );

        // flannel Documentation/kube-flannel.yml: the Kubernetes mode — refused, with advice.
        let e = err(
            &["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"],
            &[],
        );
        assert!(matches!(e, FlagError::Refused { .. }), "{e}");

        // NixOS (nixpkgs nixos/modules/services/networking/flannel.nix): no arguments,
        // everything in FLANNELD_* variables.
        let f = run(
            &[],
            &[
                ("FLANNELD_PUBLIC_IP", "192.168.1.20"),
                ("FLANNELD_IFACE", "enp1s0"),
                ("FLANNELD_ETCD_ENDPOINTS", "https://192.168.1.2:2379"),
                (
                    "FLANNELD_ETCD_KEYFILE",
                    "/var/lib/kubernetes/secrets/flannel-client-key.pem",
                ),
                (
                    "FLANNELD_ETCD_CERTFILE",
                    "/var/lib/kubernetes/secrets/flannel-client.pem",
                ),
                ("FLANNELD_ETCD_CAFILE", "/var/lib/kubernetes/secrets/ca.pem"),
                ("ETCDCTL_API", "3"),
            ],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=https://192.168.1.2:2379",
                "--etcd-cafile=/var/lib/kubernetes/secrets/ca.pem",
                "--etcd-certfile=/var/lib/kubernetes/secrets/flannel-client.pem",
                "--etcd-keyfile=/var/lib/kubernetes/secrets/flannel-client-key.pem",
                "--iface=enp1s0",
                "--public-ip=192.168.1.20",
            ]
        );
        assert!(f.notes.is_empty(), "{:?}", f.notes);
        let access = crate::etcd_access::EtcdAccess::new(f.etcd.clone()).unwrap();
        assert!(access
            .tls
            .is_some_and(|t| t.client.is_some() && t.ca.is_some()));

        // What issue 13 measured: only these three variables, as a flanneld unit's
        // EnvironmentFile sets them.
        let f = run(
            &[],
            &[
                ("FLANNELD_ETCD_ENDPOINTS", "http://192.168.100.2:2379"),
                ("FLANNELD_IFACE", "eth0"),
                ("FLANNELD_SUBNET_FILE", "/run/flannel/subnet.env"),
            ],
        );
        assert_eq!(
            diff(&f),
            ["--etcd-endpoints=http://192.168.100.2:2379", "--iface=eth0"]
        );

        // Every flanneld etcd-mode flag at once, Go style, from the flag list in
        // flannel's main.go.
        let f = run(
            &[
                "-etcd-endpoints=http://10.0.0.2:2379",
                "-etcd-prefix=/p",
                "-etcd-username=flannel",
                "-etcd-password=secret",
                "-iface=eth9",
                "-iface=eth1",
                "-iface-regex=^ens",
                "-iface-regex",
                "10\\.1\\..*",
                "-iface-can-reach=10.0.0.1",
                "-subnet-file=/run/f.env",
                "-public-ip=203.0.113.7",
                "-subnet-lease-renew-margin=30",
                "-ip-masq",
                "-ip-masq-fully-random-disable",
                "-healthz-ip=0.0.0.0",
                "-healthz-port=8081",
                "-iptables-resync=10",
                "-iptables-forward-rules=false",
                "-v=2",
                "-kube-subnet-mgr=false",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://10.0.0.2:2379",
                "--etcd-prefix=/p",
                "--etcd-username=flannel",
                "--etcd-password=<redacted>",
                "--iface=eth9",
                "--iface=eth1",
                "--iface-regex=^ens",
                "--iface-regex=10\\.1\\..*",
                "--iface-can-reach=10.0.0.1",
                "--public-ip=203.0.113.7",
                "--subnet-file=/run/f.env",
                "--ip-masq-fully-random-disable=true",
                "--iptables-forward-rules=false",
                "--iptables-resync=10",
                "--healthz-ip=0.0.0.0",
                "--healthz-port=8081",
                "--v=2",
            ]
        );
    }

    /// vxmeshctl (clap, `crate::cli`) and vxmeshd find etcd at the same place by default.
    #[test]
    fn vxmeshctl_has_the_same_etcd_defaults() {
        #[derive(clap::Parser)]
        struct Ctl {
            #[command(flatten)]
            etcd: crate::cli::EtcdArgs,
        }
        let ctl = <Ctl as clap::Parser>::try_parse_from(["vxmeshctl"]).unwrap();
        let d = run(&[], &[]);
        assert_eq!(ctl.etcd.etcd_endpoints, d.etcd.endpoints);
        assert_eq!(ctl.etcd.etcd_prefix, d.etcd_prefix);
    }

    /// Shapes seen in unit files and start scripts whose origin could not be pinned down
    /// (so not golden): the same checks, without a citation.
    #[test]
    fn more_flanneld_shapes() {
        // -ip-masq=true with a value among single-dash flags.
        let f = run(
            &[
                "-etcd-endpoints=http://10.0.0.5:2379",
                "-iface=bond0",
                "-ip-masq=true",
                "-etcd-prefix=/cluster/network",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://10.0.0.5:2379",
                "--etcd-prefix=/cluster/network",
                "--iface=bond0"
            ]
        );

        // Two dashes and spaces throughout, --iface and --public-ip both the host's address.
        let f = run(
            &[
                "--etcd-cafile",
                "/etc/hyades/certs/kube/etcd-ca.pem",
                "--etcd-certfile",
                "/etc/hyades/certs/kube/etcd-cert.pem",
                "--etcd-keyfile",
                "/etc/hyades/certs/kube/local-key.pem",
                "--etcd-endpoints",
                "https://10.0.0.2:2379",
                "--iface",
                "10.0.0.7",
                "--ip-masq",
                "--public-ip",
                "10.0.0.7",
            ],
            &[],
        );
        assert_eq!(f.underlay.ifaces, ["10.0.0.7"]);
        assert_eq!(f.underlay.public_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));

        // flanneld's iptables work turned off, NAT left to others.
        let f = run(
            &[
                "--etcd-endpoints=http://10.0.0.5:2379",
                "--etcd-prefix=/coreos.com/network",
                "--subnet-file=/run/flannel/subnet.env",
                "--iptables-forward-rules=false",
                "--ip-masq=false",
            ],
            &[],
        );
        assert_eq!(
            diff(&f),
            [
                "--etcd-endpoints=http://10.0.0.5:2379",
                "--ip-masq=false",
                "--iptables-forward-rules=false"
            ]
        );
    }

    /// The operator's reference lists every flag vxmeshd accepts.
    #[test]
    fn operations_doc_lists_every_flag() {
        let doc = include_str!("../../docs/operations.md");
        for s in SPECS {
            assert!(
                doc.contains(&format!("`--{}", s.name)),
                "docs/operations.md lacks `--{}`",
                s.name
            );
        }
    }

    proptest::proptest! {
        /// Whatever the words, parsing answers (never panics).
        #[test]
        fn any_arguments(args in proptest::collection::vec("-{0,3}[a-z_-]{0,12}(=[ -~]{0,8})?", 0..6),
                         vals in proptest::collection::vec(("(VXMESHD|FLANNELD)_[A-Z_]{1,12}", "[ -~]{0,10}"), 0..4)) {
            let _ = parse(&args, &vals);
        }
        /// What vxmeshd logs as its effective flags reads back as the same settings.
        #[test]
        fn canonical_reads_back(picks in proptest::collection::vec((0..SPECS.len(), "[ -~]{0,12}", 0..3u8), 0..8)) {
            let args: Vec<String> = picks
                .iter()
                .filter(|(i, _, _)| !matches!(SPECS[*i].family, Refused(_)) && SPECS[*i].name != "version")
                .flat_map(|(i, v, style)| {
                    let name = SPECS[*i].name;
                    let v = &if SPECS[*i].kind == Kind::Bool {
                        (v.len() % 2 == 0).to_string()
                    } else {
                        v.clone()
                    };
                    match style {
                        0 => vec![format!("--{name}={v}")],
                        1 => vec![format!("-{name}={v}")],
                        _ => vec![format!("-{name}"), v.clone()],
                    }
                })
                .collect();
            if let Ok(Invocation::Run(f)) = parse(&args, &[]) {
                let again = match parse(&f.canonical(), &[]) {
                    Ok(Invocation::Run(g)) => g,
                    other => panic!("{:?} -> {:?}", f.canonical(), other),
                };
                proptest::prop_assert_eq!(f.canonical(), again.canonical());
            }
        }
        #[test]
        fn any_known_flag(i in 0..SPECS.len(), v in "[ -~]{0,12}") {
            let name = SPECS[i].name;
            let _ = parse(&[format!("--{name}={v}")], &[]);
            let _ = parse(&[format!("-{name}"), v.clone()], &[]);
            let _ = parse(&[], &[(env_name("FLANNELD", name), v.clone()), (env_name("VXMESHD", name), v)]);
        }
    }
}
