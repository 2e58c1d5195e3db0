//! Watches the peer routes of many network namespaces at once, as the kernel reports
//! them: ONE netlink socket in the harness's namespace subscribed to IPv4 route
//! changes (`RTMGRP_IPV4_ROUTE`, what `ip monitor route` listens to) with
//! `NETLINK_LISTEN_ALL_NSID`, so it hears every namespace that has an id here (the
//! monitor gives each watched namespace one: `ip netns set <name> auto`); each
//! message says which namespace it came from (a `NETLINK_LISTEN_ALL_NSID` control
//! message). Every route add and delete is stamped when it arrives, so the scale
//! harness can say when the last node had every route, and when a joining or leaving
//! node's route appeared or vanished on each node — without spawning `ip route` a
//! million times.
//!
//! Why one socket: the kernel delivers a notification by walking every netlink socket
//! subscribed to any rtnetlink group, in every namespace of the host. A socket per
//! namespace made each of the agents' route and neighbour changes walk N sockets
//! (10^6 changes × 10^3 sockets at 1,000 nodes), inside the agents' own system calls
//! and under the host-wide RTNL lock: the measurement was most of the load it measured.
//!
//! A peer route is what vxmeshd installs for a peer (`<subnet> via <subnet>.0 …
//! onlink`): a main-table IPv4 route inside the Network, SubnetLen long, whose gateway
//! is its own first address. If a socket's buffer overflows (`ENOBUFS`: notifications
//! were lost), that namespace's routes are read again with a dump.
//!
//! [`parse`] is pure (bytes in, route events out) and tested over bytes the kernel
//! sent; the sockets are a thin shell around it.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
/// `RTMGRP_IPV4_ROUTE`: the multicast group of IPv4 route changes.
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// Receive buffer of each socket: the event socket hears every node, and a thousand
/// nodes learning a thousand peers each is a million notifications (about 1 KiB each
/// with overhead) if the reader falls behind; it gets what the kernel allows
/// (`SO_RCVBUFFORCE`, root), and a lost notification costs a re-read of every node.
const RCVBUF: libc::c_int = 512 << 20;

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
    /// Notifications read (adds and deletes of peer routes).
    pub events: u64,
    /// Times notifications were lost and the routes were read again.
    pub resyncs: u64,
}

impl NodeRoutes {
    fn apply(&mut self, c: &RouteChange, at: Instant) {
        self.events += 1;
        if c.added {
            self.present.entry(c.dst).or_insert(at);
            self.removed.remove(&c.dst);
        } else if self.present.remove(&c.dst).is_some() {
            self.removed.insert(c.dst, at);
        }
    }
}

/// The shared view: one [`NodeRoutes`] per watched namespace, in the order given.
#[derive(Debug)]
pub struct Monitor {
    nodes: Arc<Mutex<Vec<NodeRoutes>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The sockets: one for every namespace's notifications, one per namespace for dumps.
struct Watched {
    events: OwnedFd,
    /// Namespace id (as the harness's namespace numbers it) → index in `dumps`.
    by_nsid: HashMap<i32, usize>,
    dumps: Vec<OwnedFd>,
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
    /// and a dump socket inside each, and starts the reader thread. Only peer routes
    /// (per `which`) are recorded.
    pub fn start(namespaces: &[String], which: PeerRoutes) -> io::Result<Monitor> {
        let ids = namespace_ids(namespaces)?;
        let mut by_nsid = HashMap::with_capacity(namespaces.len());
        let mut dumps = Vec::with_capacity(namespaces.len());
        for (i, ns) in namespaces.iter().enumerate() {
            let id = ids.get(ns).copied().ok_or_else(|| {
                io::Error::other(format!(
                    "namespace {ns} has no id here (ip netns set {ns} auto)"
                ))
            })?;
            by_nsid.insert(id, i);
            let dump = vxmesh_testkit::in_netns(ns, || netlink_socket(0, false))??;
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
        let events = netlink_socket(RTMGRP_IPV4_ROUTE, true)?;
        let on: libc::c_int = 1;
        // SAFETY: the option value is a c_int of the size passed.
        cvt(unsafe {
            libc::setsockopt(
                events.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_LISTEN_ALL_NSID,
                std::ptr::addr_of!(on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        let watched = Watched {
            events,
            by_nsid,
            dumps,
        };
        let nodes = Arc::new(Mutex::new(vec![NodeRoutes::default(); namespaces.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let (n2, s2) = (Arc::clone(&nodes), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("routemon".into())
            .spawn(move || read_loop(&watched, which, &n2, &s2))?;
        Ok(Monitor {
            nodes,
            stop,
            thread: Some(thread),
        })
    }

    /// The per-namespace view (lock held while the guard lives: keep it short).
    pub fn nodes(&self) -> MutexGuard<'_, Vec<NodeRoutes>> {
        lock(&self.nodes)
    }
}

fn lock(m: &Mutex<Vec<NodeRoutes>>) -> MutexGuard<'_, Vec<NodeRoutes>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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

fn read_loop(
    watched: &Watched,
    which: PeerRoutes,
    nodes: &Mutex<Vec<NodeRoutes>>,
    stop: &AtomicBool,
) {
    let mut pfd = libc::pollfd {
        fd: watched.events.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut control = vec![0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `pfd` is a valid pollfd and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n <= 0 {
            continue;
        }
        loop {
            match recv_with_nsid(pfd.fd, &mut buf, &mut control) {
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
                    for (i, d) in watched.dumps.iter().enumerate() {
                        resync(d.as_raw_fd(), which, &mut buf, &mut lock(nodes)[i]);
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// Notifications were lost: reads the namespace's routes and records the difference.
fn resync(fd: RawFd, which: PeerRoutes, buf: &mut [u8], node: &mut NodeRoutes) {
    let Ok(routes) = dump(fd, buf) else {
        return;
    };
    let at = Instant::now();
    node.resyncs += 1;
    let now: std::collections::HashSet<Ipv4Addr> = routes
        .iter()
        .filter(|c| which.is_peer(c))
        .map(|c| c.dst)
        .collect();
    for dst in &now {
        node.present.entry(*dst).or_insert(at);
        node.removed.remove(dst);
    }
    let gone: Vec<Ipv4Addr> = node
        .present
        .keys()
        .filter(|d| !now.contains(d))
        .copied()
        .collect();
    for dst in gone {
        node.present.remove(&dst);
        node.removed.insert(dst, at);
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
    }
}
