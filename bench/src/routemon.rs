//! Watches the peer routes of many network namespaces at once, and stamps when each
//! route appeared or vanished, so the scale harness can say when the last node had
//! every route, and when a joining or leaving node's route appeared or vanished on
//! each node — without spawning `ip route` a million times. It works in two ways:
//!
//! - **Sweeping** (how it starts): one namespace after another, skipping those that
//!   already hold every expected peer route ([`Monitor::expect`]), then a pause of
//!   [`SWEEP_PAUSE`]. Each namespace's main table is counted (`fib_triestat`, a walk
//!   of the trie), and its routes read through a dump socket inside it, subscribed to
//!   nothing, once the count is close to complete. A route is stamped when the dump
//!   that found it ended; how late a namespace's completing stamp can be is reported
//!   ([`SweepStats::max_late`]). Used while a thousand agents program a million
//!   routes: neither read takes a lock the agents' route inserts wait on, where a
//!   listener adds to every one of them (below).
//! - **Listening** (after [`Monitor::listen`]): ONE netlink socket in the harness's
//!   namespace subscribed to IPv4 route changes (`RTMGRP_IPV4_ROUTE`, what `ip monitor
//!   route` listens to) with `NETLINK_LISTEN_ALL_NSID`, so it hears every namespace
//!   that has an id here (the monitor gives each watched namespace one: `ip netns set
//!   <name> auto`); each message says which namespace it came from (a
//!   `NETLINK_LISTEN_ALL_NSID` control message). Every change is stamped when it
//!   arrives: exact, for the few changes of a join or a removal.
//!
//! Why not listen all along: the kernel sends each route notification from inside
//! the system call that changed the route, under the host-wide RTNL lock, and for a
//! listener in another namespace it looks the source namespace's id up with a linear
//! walk over every id the listener's namespace holds (`peernet_has_id`,
//! `peernet2id`: 1,000 ids here). Measured on 2 vCPUs: 1,000 namespaces given 999
//! routes and 999 neighbours each by `ip -batch` (two at a time) took 40.8 s, and
//! 70.8 s with one `ip monitor route all-nsid` listening. A socket per namespace is
//! no cheaper: every rtnetlink notification then walks all N sockets.
//!
//! A peer route is what vxmeshd installs for a peer (`<subnet> via <subnet>.0 …
//! onlink`): a main-table IPv4 route inside the Network, SubnetLen long, whose gateway
//! is its own first address. If a socket's buffer overflows (`ENOBUFS`: notifications
//! were lost), that namespace's routes are read again with a dump.
//!
//! [`parse`] is pure (bytes in, route events out) and tested over bytes the kernel
//! sent; the sockets are a thin shell around it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vxmesh_dataplane::priority::ThreadPriority;

const NLMSG_HDR: usize = 16;
const RTMSG: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const AF_INET: u8 = 2;
/// Receive buffer of each socket: the event socket hears every node, and a thousand
/// nodes learning a thousand peers each is a million notifications (about 1 KiB each
/// with overhead) if the reader falls behind; it gets what the kernel allows
/// (`SO_RCVBUFFORCE`, root), and a lost notification costs a re-read of every node.
const RCVBUF: libc::c_int = 512 << 20;

/// The pause between two sweeps.
pub const SWEEP_PAUSE: Duration = Duration::from_millis(250);
/// The scheduling of the monitor's thread while it sweeps.
const SWEEP_PRIORITY: ThreadPriority = ThreadPriority::Nice(-10);
/// Every this many sweeps, each unfinished namespace is dumped whatever its count.
const DUMP_EVERY: u64 = 100;
/// A namespace is dumped once its count is this close to the expected peer routes
/// (the count's guess of the node's other routes may be off by a few).
const SLACK: usize = 8;
/// `NETLINK_ADD_MEMBERSHIP` (linux/netlink.h) and the group number of IPv4 route
/// changes (`RTNLGRP_IPV4_ROUTE`).
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const RTNLGRP_IPV4_ROUTE: libc::c_int = 7;

/// One IPv4 main-table route change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteChange {
    pub added: bool,
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// What one datagram held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub changes: Vec<RouteChange>,
    /// A dump ended (`NLMSG_DONE`) or was refused (`NLMSG_ERROR`).
    pub done: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

/// Parses the netlink messages of one datagram: IPv4 main-table route adds and
/// deletes; anything else is skipped, and a truncated message ends the parse.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        let Some(msg) = buf.get(at..at + len).filter(|_| len >= NLMSG_HDR) else {
            break;
        };
        match kind {
            NLMSG_DONE | NLMSG_ERROR => out.done = true,
            RTM_NEWROUTE | RTM_DELROUTE => {
                if let Some(c) = route(&msg[NLMSG_HDR..], kind == RTM_NEWROUTE) {
                    out.changes.push(c);
                }
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    out
}

/// One `rtmsg` and its attributes.
fn route(body: &[u8], added: bool) -> Option<RouteChange> {
    let hdr = body.get(..RTMSG)?;
    if hdr[0] != AF_INET {
        return None;
    }
    let mut table = u32::from(hdr[4]);
    let mut c = RouteChange {
        added,
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: hdr[1],
        gateway: None,
        oif: None,
    };
    let mut at = RTMSG;
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = usize::from(len);
        let Some(data) = body.get(at + 4..at + len).filter(|_| len >= 4) else {
            break;
        };
        match kind {
            RTA_DST => c.dst = ipv4(data)?,
            RTA_GATEWAY => c.gateway = ipv4(data),
            RTA_OIF => c.oif = u32_at(data, 0),
            RTA_TABLE => table = u32_at(data, 0)?,
            _ => {}
        }
        at += (len + 3) & !3;
    }
    (table == RT_TABLE_MAIN).then_some(c)
}

/// Which routes are peer routes: inside `network` (address, prefix length), exactly
/// `subnet_len` long, via their own first address.
#[derive(Debug, Clone, Copy)]
pub struct PeerRoutes {
    pub network: Ipv4Addr,
    pub network_len: u8,
    pub subnet_len: u8,
}

impl PeerRoutes {
    pub fn is_peer(&self, c: &RouteChange) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.network_len))
            .unwrap_or(0);
        c.prefix_len == self.subnet_len
            && u32::from(c.dst) & mask == u32::from(self.network) & mask
            && c.gateway == Some(c.dst)
    }
}

/// What is known about one namespace's peer routes.
#[derive(Debug, Default, Clone)]
pub struct NodeRoutes {
    /// Peer routes present now, with when each (last) appeared.
    pub present: HashMap<Ipv4Addr, Instant>,
    /// Peer routes deleted, with when.
    pub removed: HashMap<Ipv4Addr, Instant>,
    /// How many times a present route went away: unchanged since a reading, the routes
    /// that reading found are all still there.
    pub removals: u64,
    /// Notifications read (adds and deletes of peer routes).
    pub events: u64,
    /// Times notifications were lost and the routes were read again.
    pub resyncs: u64,
    /// While sweeping: the peer routes as last counted (the main table's prefixes
    /// less the node's other routes as its last dump, or before one its first count,
    /// showed them). Between dumps `present` lags; this does not.
    pub counted: usize,
    /// The main table's prefixes that are not peer routes (see `counted`).
    others: Option<usize>,
}

impl NodeRoutes {
    fn apply(&mut self, c: &RouteChange, at: Instant) {
        self.events += 1;
        if c.added {
            self.present.entry(c.dst).or_insert(at);
            self.removed.remove(&c.dst);
        } else if self.present.remove(&c.dst).is_some() {
            self.removed.insert(c.dst, at);
            self.removals += 1;
        }
    }

    /// Records a full reading of the namespace's peer routes taken at `at`: what is
    /// new appeared then, what is missing vanished then.
    fn snapshot(&mut self, now: &HashSet<Ipv4Addr>, at: Instant) {
        for dst in now {
            self.present.entry(*dst).or_insert(at);
            self.removed.remove(dst);
        }
        let gone: Vec<Ipv4Addr> = self
            .present
            .keys()
            .filter(|d| !now.contains(d))
            .copied()
            .collect();
        for dst in gone {
            self.present.remove(&dst);
            self.removed.insert(dst, at);
            self.removals += 1;
        }
    }
}

/// What the sweeping has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SweepStats {
    /// Sweeps finished.
    pub sweeps: u64,
    /// Namespace dumps read.
    pub dumps: u64,
    /// How late a stamp that completed a namespace can be, at most: the longest
    /// time from the namespace last shown incomplete to the dump that found it
    /// complete.
    pub max_late: Duration,
    /// The longest sweep (the pauses between sweeps not counted).
    pub max_sweep: Duration,
}

/// The shared view: one [`NodeRoutes`] per watched namespace, in the order given.
#[derive(Debug)]
pub struct Monitor {
    nodes: Arc<Mutex<Vec<NodeRoutes>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the harness and the monitor's thread share besides the view.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Asked to listen instead of sweeping.
    listen: AtomicBool,
    /// Listening (subscribed, and every namespace read once since).
    listening: AtomicBool,
    /// A sweep skips a namespace holding at least this many peer routes.
    expected: AtomicUsize,
    sweep: Mutex<SweepStats>,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, SweepStats> {
        self.sweep
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sockets: one for every namespace's notifications, one per namespace for dumps.
struct Watched {
    events: OwnedFd,
    /// Namespace id (as the harness's namespace numbers it) → index in `dumps`.
    by_nsid: HashMap<i32, usize>,
    dumps: Vec<OwnedFd>,
    /// Per namespace, its `/proc/net/fib_triestat` (None where it could not be opened:
    /// that namespace is dumped every sweep).
    counts: Vec<Option<std::fs::File>>,
}

/// The number of prefixes in the main table's trie from `/proc/net/fib_triestat`
/// (pure): the `Prefixes:` line of the `Main:` section. While no policy rule splits
/// them, the kernel keeps the local table in the same trie, so its prefixes are
/// counted too. None when there is no main table yet or the text is not understood.
pub fn main_prefixes(text: &str) -> Option<usize> {
    let mut in_main = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            in_main = line.trim_end() == "Main:";
            continue;
        }
        if in_main {
            if let Some(n) = line.trim().strip_prefix("Prefixes:") {
                return n.trim().parse().ok();
            }
        }
    }
    None
}

/// Reads a namespace's prefix count through its open `fib_triestat`.
fn count(file: &std::fs::File, buf: &mut [u8]) -> Option<usize> {
    use std::os::unix::fs::FileExt as _;
    // Reading from 0 makes the kernel compute the statistics afresh (a walk of the
    // trie under RCU; no lock that route changes take).
    let n = file.read_at(buf, 0).ok()?;
    main_prefixes(std::str::from_utf8(&buf[..n]).ok()?)
}

/// `SOL_NETLINK` and its `NETLINK_LISTEN_ALL_NSID` option (linux/netlink.h).
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;

/// The namespace id in the control messages of one `recvmsg` (pure): the data of a
/// `cmsghdr` of level `SOL_NETLINK`, type `NETLINK_LISTEN_ALL_NSID`. None for a
/// message from the socket's own namespace (the kernel adds no id) or a malformed
/// buffer. Layout: `cmsg_len` (size_t), level, type (ints), data aligned to size_t.
pub fn nsid_from_cmsgs(buf: &[u8]) -> Option<i32> {
    const W: usize = std::mem::size_of::<usize>();
    let align = |n: usize| (n + W - 1) & !(W - 1);
    let hdr = W + 8;
    let mut at = 0;
    while buf.len().saturating_sub(at) >= hdr {
        let len = usize::from_ne_bytes(buf[at..at + W].try_into().ok()?);
        if len < hdr || len > buf.len() - at {
            return None;
        }
        let level = i32::from_ne_bytes(buf[at + W..at + W + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(buf[at + W + 4..at + W + 8].try_into().ok()?);
        let data = &buf[at + align(hdr)..at + len.max(align(hdr))];
        if level == SOL_NETLINK && kind == NETLINK_LISTEN_ALL_NSID && data.len() >= 4 {
            return Some(i32::from_ne_bytes(data[..4].try_into().ok()?));
        }
        at += align(len);
    }
    None
}

/// The namespace ids of `names` as the calling namespace numbers them, giving one
/// to each that has none (`ip netns set <name> auto`, one batch); parsed from
/// `ip netns list` ("name (id: 7)").
fn namespace_ids(names: &[String]) -> io::Result<HashMap<String, i32>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        for n in names {
            // Already numbered: "File exists", and -force goes on.
            writeln!(stdin, "netns set {n} auto")?;
        }
    }
    child.wait()?;
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(parse_netns_ids(&String::from_utf8_lossy(&out.stdout)))
}

/// `ip netns list` output → name → id (pure); names without an id are left out.
pub fn parse_netns_ids(text: &str) -> HashMap<String, i32> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(" (id: ")?;
            let id = rest.strip_suffix(')')?.parse().ok()?;
            Some((name.trim().to_string(), id))
        })
        .collect()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A netlink route socket in the calling thread's namespace, bound to `groups`.
fn netlink_socket(groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags =
        libc::SOCK_RAW | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_ROUTE) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a valid sockaddr_nl and its size is passed with it.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    let size = RCVBUF;
    // SAFETY: the option value is a c_int of the size passed. SO_RCVBUFFORCE needs
    // CAP_NET_ADMIN (the harness runs as root); without it the default buffer stays.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// `RTM_GETROUTE` dump request for IPv4.
fn dump_request() -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + RTMSG);
    b.extend_from_slice(&((NLMSG_HDR + RTMSG) as u32).to_ne_bytes());
    b.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    b.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    let mut rt = [0u8; RTMSG];
    rt[0] = AF_INET;
    b.extend_from_slice(&rt);
    b
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads every IPv4 route of a namespace through its (blocking) dump socket.
fn dump(fd: RawFd, buf: &mut [u8]) -> io::Result<Vec<RouteChange>> {
    let req = dump_request();
    // SAFETY: `req` is valid for reads of its length; the kernel is the destination
    // (a netlink socket without a connected peer sends to the kernel).
    let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let n = recv(fd, buf)?;
        let p = parse(&buf[..n]);
        out.extend(p.changes);
        if p.done {
            return Ok(out);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "route dump did not end",
    ))
}

impl Monitor {
    /// Numbers the namespaces (by `ip netns` name) here, opens the event socket here
    /// (subscribed to nothing until [`Monitor::listen`]) and a dump socket inside each,
    /// and starts the thread, sweeping. Only peer routes (per `which`) are recorded.
    pub fn start(namespaces: &[String], which: PeerRoutes) -> io::Result<Monitor> {
        let ids = namespace_ids(namespaces)?;
        let mut by_nsid = HashMap::with_capacity(namespaces.len());
        let mut dumps = Vec::with_capacity(namespaces.len());
        let mut counts = Vec::with_capacity(namespaces.len());
        for (i, ns) in namespaces.iter().enumerate() {
            let id = ids.get(ns).copied().ok_or_else(|| {
                io::Error::other(format!(
                    "namespace {ns} has no id here (ip netns set {ns} auto)"
                ))
            })?;
            by_nsid.insert(id, i);
            // Opened inside: the file keeps the namespace it was opened in.
            let (dump, stat) = vxmesh_testkit::in_netns(ns, || {
                (
                    netlink_socket(0, false),
                    std::fs::File::open("/proc/thread-self/net/fib_triestat").ok(),
                )
            })?;
            let dump = dump?;
            counts.push(stat);
            // A dump blocks at most this long per read.
            let tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            // SAFETY: the option value is a timeval of the size passed.
            let _ = unsafe {
                libc::setsockopt(
                    dump.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::addr_of!(tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            dumps.push(dump);
        }
        let watched = Watched {
            events: netlink_socket(0, true)?,
            by_nsid,
            dumps,
            counts,
        };
        let nodes = Arc::new(Mutex::new(vec![NodeRoutes::default(); namespaces.len()]));
        let shared = Arc::new(Shared {
            expected: AtomicUsize::new(usize::MAX),
            ..Shared::default()
        });
        let (n2, s2) = (Arc::clone(&nodes), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("routemon".into())
            .spawn(move || run(&watched, which, &n2, &s2))?;
        Ok(Monitor {
            nodes,
            shared,
            thread: Some(thread),
        })
    }

    /// The per-namespace view (lock held while the guard lives: keep it short).
    pub fn nodes(&self) -> MutexGuard<'_, Vec<NodeRoutes>> {
        lock(&self.nodes)
    }

    /// Sweeps skip a namespace that holds at least `peers` peer routes (for a start,
    /// when routes only come: the nodes but one).
    pub fn expect(&self, peers: usize) {
        self.shared.expected.store(peers, Ordering::Relaxed);
    }

    /// What the sweeping has done so far.
    pub fn sweep_stats(&self) -> SweepStats {
        *self.shared.stats()
    }

    /// Stops sweeping and listens: subscribes the event socket, then reads every
    /// namespace once (so nothing between the last sweep and the subscription is
    /// missed). Returns once that is done, or fails after `timeout`.
    pub fn listen(&self, timeout: Duration) -> io::Result<()> {
        self.shared.listen.store(true, Ordering::Relaxed);
        let end = Instant::now() + timeout;
        while !self.shared.listening.load(Ordering::Relaxed) {
            if Instant::now() >= end || self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the route monitor did not start listening",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

fn lock(m: &Mutex<Vec<NodeRoutes>>) -> MutexGuard<'_, Vec<NodeRoutes>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `recvmsg` on the event socket: the datagram's length and the namespace id
/// its control message carries.
fn recv_with_nsid(
    fd: RawFd,
    buf: &mut [u8],
    control: &mut [u8],
) -> io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: `msg` points at `iov` (valid for `buf`) and `control`, all of which
    // outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let clen = (msg.msg_controllen as usize).min(control.len());
    Ok((n as usize, nsid_from_cmsgs(&control[..clen])))
}

/// The monitor's thread: sweeps until asked to listen, then listens until stopped.
fn run(watched: &Watched, which: PeerRoutes, nodes: &Mutex<Vec<NodeRoutes>>, shared: &Shared) {
    // A thousand agents share two CPUs with this thread; at their priority a sweep
    // waits for a CPU most of its time, and its stamps come late. Its own work is
    // small. Best effort: without the privilege the thread stays at its nice value.
    let _ = SWEEP_PRIORITY.apply_to_current_thread();
    let mut buf = vec![0u8; 1 << 16];
    let mut incomplete_at = vec![Instant::now(); watched.dumps.len()];
    while !shared.stop.load(Ordering::Relaxed) && !shared.listen.load(Ordering::Relaxed) {
        sweep(watched, which, nodes, shared, &mut buf, &mut incomplete_at);
        let end = Instant::now() + SWEEP_PAUSE;
        while Instant::now() < end
            && !shared.stop.load(Ordering::Relaxed)
            && !shared.listen.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if shared.stop.load(Ordering::Relaxed) {
        return;
    }
    // Listening, stamps come as the notifications do; back to the priority of the
    // harness's other readers (its etcd key watch), whose stamps they are set against.
    let _ = ThreadPriority::Nice(0).apply_to_current_thread();
    if let Err(e) = subscribe(watched.events.as_raw_fd()) {
        eprintln!("route monitor: cannot listen for route changes: {e}");
        return;
    }
    reread_all(watched, which, nodes, &mut buf, false);
    shared.listening.store(true, Ordering::Relaxed);
    read_loop(watched, which, nodes, &shared.stop, &mut buf);
}

/// Reads every namespace's routes and records what differs; from here `present` is
/// exact (and `counted` no longer needed). `lost` counts it as a resync: notifications
/// were lost.
fn reread_all(
    watched: &Watched,
    which: PeerRoutes,
    nodes: &Mutex<Vec<NodeRoutes>>,
    buf: &mut [u8],
    lost: bool,
) {
    for (i, d) in watched.dumps.iter().enumerate() {
        if let Ok(routes) = dump(d.as_raw_fd(), buf) {
            let mut g = lock(nodes);
            let n = &mut g[i];
            n.snapshot(&peer_set(&routes, which), Instant::now());
            n.counted = 0;
            n.resyncs += u64::from(lost);
        }
    }
}

/// One pass over the namespaces that do not yet hold every expected peer route.
/// Each is counted (cheap) and dumped (which stamps its routes) only when the count
/// comes within [`SLACK`] of the expected routes — or every [`DUMP_EVERY`]th sweep
/// regardless, so that no stamp waits on a wrong guess of the other routes.
///
/// How late a namespace's completing stamp can be: from the last moment it was
/// shown incomplete (a dump that lacked routes, or a count more than [`SLACK`]
/// short) to the end of the dump that found it complete.
fn sweep(
    watched: &Watched,
    which: PeerRoutes,
    nodes: &Mutex<Vec<NodeRoutes>>,
    shared: &Shared,
    buf: &mut [u8],
    incomplete_at: &mut [Instant],
) {
    let expected = shared.expected.load(Ordering::Relaxed);
    let round = shared.stats().sweeps;
    let (mut dumps, mut max_late, began) = (0, Duration::ZERO, Instant::now());
    for (i, d) in watched.dumps.iter().enumerate() {
        if shared.stop.load(Ordering::Relaxed) || shared.listen.load(Ordering::Relaxed) {
            break;
        }
        if lock(nodes)[i].present.len() >= expected {
            continue;
        }
        let counted = watched.counts[i].as_ref().and_then(|f| count(f, buf));
        let at = Instant::now();
        // Without an expectation ([`Monitor::expect`]) no count says "short":
        // every namespace is dumped every sweep.
        let short = counted.is_some_and(|c| {
            let mut g = lock(nodes);
            let n = &mut g[i];
            let others = *n.others.get_or_insert(c);
            n.counted = c.saturating_sub(others);
            expected != usize::MAX && n.counted.saturating_add(SLACK) < expected
        });
        if short {
            incomplete_at[i] = at;
            if round % DUMP_EVERY != 0 {
                continue;
            }
        }
        let Ok(routes) = dump(d.as_raw_fd(), buf) else {
            continue;
        };
        let end = Instant::now();
        dumps += 1;
        let peers = peer_set(&routes, which);
        let mut g = lock(nodes);
        let n = &mut g[i];
        n.snapshot(&peers, end);
        n.counted = peers.len();
        if let Some(c) = counted {
            n.others = Some(c.saturating_sub(peers.len()));
        }
        if n.present.len() >= expected {
            max_late = max_late.max(end - incomplete_at[i]);
        } else {
            incomplete_at[i] = at;
        }
    }
    let mut st = shared.stats();
    st.sweeps += 1;
    st.dumps += dumps;
    st.max_late = st.max_late.max(max_late);
    st.max_sweep = st.max_sweep.max(began.elapsed());
}

fn peer_set(routes: &[RouteChange], which: PeerRoutes) -> HashSet<Ipv4Addr> {
    routes
        .iter()
        .filter(|c| which.is_peer(c))
        .map(|c| c.dst)
        .collect()
}

/// Joins the event socket to the IPv4 route group and to every namespace's
/// notifications.
fn subscribe(fd: RawFd) -> io::Result<()> {
    for (opt, val) in [
        (NETLINK_ADD_MEMBERSHIP, RTNLGRP_IPV4_ROUTE),
        (NETLINK_LISTEN_ALL_NSID, 1),
    ] {
        // SAFETY: the option value is a c_int of the size passed.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                SOL_NETLINK,
                opt,
                std::ptr::addr_of!(val).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

fn read_loop(
    watched: &Watched,
    which: PeerRoutes,
    nodes: &Mutex<Vec<NodeRoutes>>,
    stop: &AtomicBool,
    buf: &mut [u8],
) {
    let mut pfd = libc::pollfd {
        fd: watched.events.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut control = vec![0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `pfd` is a valid pollfd and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        loop {
            match recv_with_nsid(pfd.fd, buf, &mut control) {
                Ok((n, Some(id))) => {
                    let Some(&i) = watched.by_nsid.get(&id) else {
                        continue;
                    };
                    let at = Instant::now();
                    let parsed = parse(&buf[..n]);
                    let mut g = lock(nodes);
                    for c in parsed.changes.iter().filter(|c| which.is_peer(c)) {
                        g[i].apply(c, at);
                    }
                }
                // Our own namespace's routes: not watched.
                Ok((_, None)) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Notifications were lost, from any namespace: read them all again.
                    reread_all(watched, which, nodes, buf, true);
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Captured in a namespace with a socket bound to RTMGRP_IPV4_ROUTE (python3:
    // socket(AF_NETLINK, SOCK_RAW, 0).bind((0, 0x40))) while running
    //   ip route replace 10.244.7.0/24 via 10.244.7.0 dev d0 onlink
    //   ip route del 10.244.7.0/24 via 10.244.7.0 dev d0 onlink
    const ADDED: &str = "3c0000001800000603d50c6bb377000002180000fe0300011400000008000f00fe000000080001000af40700080005000af407000800040002000000";
    const DELETED: &str = "3c0000001900000003d50c6bb577000002180000fe0300011400000008000f00fe000000080001000af40700080005000af407000800040002000000";

    fn lab() -> PeerRoutes {
        PeerRoutes {
            network: Ipv4Addr::new(10, 244, 0, 0),
            network_len: 16,
            subnet_len: 24,
        }
    }

    #[test]
    fn kernel_notifications() {
        let want = RouteChange {
            added: true,
            dst: Ipv4Addr::new(10, 244, 7, 0),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 244, 7, 0)),
            oif: Some(2),
        };
        let p = parse(&unhex(ADDED));
        assert_eq!(p.changes, [want]);
        assert!(!p.done);
        assert!(lab().is_peer(&want));
        let p = parse(&unhex(DELETED));
        assert_eq!(
            p.changes,
            [RouteChange {
                added: false,
                ..want
            }]
        );
        // Two messages in one datagram (as a dump sends them), then the dump's end.
        let mut two = unhex(ADDED);
        two.extend(unhex(DELETED));
        let mut done = vec![0u8; 20];
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        two.extend(done);
        let p = parse(&two);
        assert_eq!(p.changes.len(), 2);
        assert!(p.done);
    }

    #[test]
    fn what_is_a_peer_route() {
        let r = |dst: [u8; 4], len: u8, gw: Option<[u8; 4]>| RouteChange {
            added: true,
            dst: Ipv4Addr::from(dst),
            prefix_len: len,
            gateway: gw.map(Ipv4Addr::from),
            oif: Some(3),
        };
        assert!(lab().is_peer(&r([10, 244, 9, 0], 24, Some([10, 244, 9, 0]))));
        assert!(!lab().is_peer(&r([10, 244, 9, 0], 24, None)), "no gateway");
        assert!(!lab().is_peer(&r([10, 244, 9, 0], 24, Some([10, 244, 9, 1]))));
        assert!(
            !lab().is_peer(&r([10, 244, 0, 0], 16, Some([10, 244, 0, 0]))),
            "the Network"
        );
        assert!(
            !lab().is_peer(&r([10, 245, 9, 0], 24, Some([10, 245, 9, 0]))),
            "outside"
        );
    }

    #[test]
    fn truncated_or_foreign_input_is_skipped() {
        let full = unhex(ADDED);
        for cut in 0..full.len() {
            let p = parse(&full[..cut]);
            assert!(p.changes.is_empty(), "{cut}");
        }
        // A length field pointing past the end, and one below the header size.
        let mut bad = full.clone();
        bad[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&bad).changes.is_empty());
        bad[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(parse(&bad).changes.is_empty());
        // IPv6 is not ours.
        let mut v6 = full;
        v6[NLMSG_HDR] = 10;
        assert!(parse(&v6).changes.is_empty());
    }

    /// A control message as the kernel writes it on x86-64 for a socket with
    /// NETLINK_LISTEN_ALL_NSID (python3 `recvmsg` gave [(270, 8, b'\\x07\\0\\0\\0')]):
    /// cmsg_len 20, level 270, type 8, the id, padding.
    #[test]
    #[cfg(all(target_pointer_width = "64", target_endian = "little"))]
    fn namespace_id_from_control_messages() {
        let mut c = vec![20, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0x01, 0, 0, 8, 0, 0, 0];
        c.extend([7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(nsid_from_cmsgs(&c), Some(7));
        // Another control message first (SOL_SOCKET, SCM_CREDENTIALS: 12 bytes).
        let mut two = vec![28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        two.extend([0u8; 16]);
        two.extend(&c);
        assert_eq!(nsid_from_cmsgs(&two), Some(7));
        assert_eq!(nsid_from_cmsgs(&[]), None);
        // Lengths that lie: shorter than a header, longer than the buffer.
        let mut bad = c.clone();
        bad[0] = 4;
        assert_eq!(nsid_from_cmsgs(&bad), None);
        bad[0] = 200;
        assert_eq!(nsid_from_cmsgs(&bad), None);
        for cut in 0..c.len() {
            let _ = nsid_from_cmsgs(&c[..cut]);
        }
    }

    #[test]
    fn netns_ids_from_ip_netns_list() {
        let ids = parse_netns_ids("vxs1-n2 (id: 5)\nvxs1-n1 (id: 0)\nplain\nodd (id: x)\n");
        assert_eq!(ids.len(), 2);
        assert_eq!(ids["vxs1-n2"], 5);
        assert_eq!(ids["vxs1-n1"], 0);
    }

    #[test]
    fn node_view_records_times() {
        let t0 = Instant::now();
        let mut n = NodeRoutes::default();
        let add = parse(&unhex(ADDED)).changes[0];
        let del = parse(&unhex(DELETED)).changes[0];
        n.apply(&add, t0);
        n.apply(&add, t0 + Duration::from_secs(1)); // a replace keeps the first time
        assert_eq!(n.present[&add.dst], t0);
        n.apply(&del, t0 + Duration::from_secs(2));
        assert!(n.present.is_empty());
        assert_eq!(n.removed[&add.dst], t0 + Duration::from_secs(2));
        assert_eq!(n.events, 3);
        assert_eq!(n.removals, 1);
        // Deleting what is not there removes nothing.
        n.apply(&del, t0 + Duration::from_secs(3));
        assert_eq!(n.removals, 1);
    }

    #[test]
    fn a_snapshot_stamps_what_came_and_what_went() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let (a, b, c) = (
            Ipv4Addr::new(10, 244, 1, 0),
            Ipv4Addr::new(10, 244, 2, 0),
            Ipv4Addr::new(10, 244, 3, 0),
        );
        let mut n = NodeRoutes::default();
        n.snapshot(&HashSet::from([a, b]), t0);
        n.snapshot(&HashSet::from([b, c]), t1);
        assert_eq!(n.present, HashMap::from([(b, t0), (c, t1)]));
        assert_eq!(n.removed, HashMap::from([(a, t1)]));
        assert_eq!(n.removals, 1);
        // A snapshot is not a notification.
        assert_eq!(n.events, 0);
        // The same reading again: nothing went away.
        n.snapshot(&HashSet::from([b, c]), t1);
        assert_eq!(n.removals, 1);
    }

    /// `/proc/net/fib_triestat` of a namespace holding 999 routes via distinct
    /// gateways and one local address (`cat` inside it, Linux 6.18: the local table
    /// shares the main table's trie, so both sections count the same), and of a
    /// namespace with no address at all.
    #[test]
    fn main_table_prefixes_from_fib_triestat() {
        let section = "\tAver depth:     1.00\n\
                       \tMax depth:      1\n\
                       \tLeaves:         1000\n\
                       \tPrefixes:       1000\n\
                       \tInternal nodes: 1\n\
                       \t  11: 1\n\
                       \tPointers: 2048\n\
                       Null ptrs: 1048\n\
                       Total size: 118  kB\n";
        let busy = format!(
            "Basic info: size of leaf: 48 bytes, size of tnode: 40 bytes.\nMain:\n{section}Local:\n{section}"
        );
        assert_eq!(main_prefixes(&busy), Some(1000));
        let empty = "Basic info: size of leaf: 48 bytes, size of tnode: 40 bytes.\n";
        assert_eq!(main_prefixes(empty), None);
        // Only the Main section counts; a garbled figure is no figure.
        assert_eq!(main_prefixes("Local:\n\tPrefixes: 7\n"), None);
        assert_eq!(main_prefixes("Main:\n\tPrefixes: lots\n"), None);
    }
}
