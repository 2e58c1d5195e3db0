//! The underlay UDP sockets: batched sends with UDP GSO, batched receives with UDP GRO.
//!
//! Transmit: a handful of sockets bound to the node's PublicIP on ephemeral ports;
//! the inner flow hash picks one, so the outer source port varies per flow (RFC 7348
//! §5) while one flow always leaves from one socket (no reordering). With an IPv6
//! underlay (flannel's `PublicIPv6`), as many IPv6 sockets again, bound to that
//! address: a datagram leaves from the socket of its index in its destination's
//! family. One `sendmmsg(2)` carries up to 64 messages; each message may carry many
//! equal-sized VXLAN datagrams with a `UDP_SEGMENT` control message (Linux UDP GSO),
//! so a 64 KiB TCP burst costs one or two system calls instead of ~45.
//!
//! Receive: one socket on the VXLAN port with `UDP_GRO`, read with `recvmmsg(2)`;
//! each message may hold several datagrams of one size (given in a `UDP_GRO`
//! control message), which [`RecvBatch::datagrams`] splits again. An IPv6 underlay
//! has a socket of its own on the same port (`IPV6_V6ONLY`, beside the IPv4 one).
//!
//! If the kernel refuses GSO at send time (EIO: no checksum offload on the route;
//! EINVAL) we fall back to one datagram per message for good, count it and say so.
//! Which messages a call carries and what a partial call sent is decided by the pure
//! [`crate::send_batch`]; this module only makes the calls. Control messages are laid
//! out with libc's `CMSG_*` functions, so the layout is the target's.
//! Read first: Linux `udp(7)` (UDP_SEGMENT, UDP_GRO), `sendmmsg(2)`, `recvmmsg(2)`,
//! `ip(7)` (IP_TOS) and `ipv6(7)` (IPV6_TCLASS, IPV6_V6ONLY, IPV6_MTU_DISCOVER).

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::counters::{DropReason, LocalCounts};
use crate::send_batch::{self, Message, Next, SendCursor, SendPlan};
pub use crate::send_batch::{SendEntry, BATCH, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Control bytes for one UDP_SEGMENT message: a header and a u16, padded.
// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const GSO_CONTROL_LEN: usize =
    unsafe { libc::CMSG_SPACE(size_of::<u16>() as libc::c_uint) } as usize;
/// Control bytes for one IP_TOS or IPV6_TCLASS message: a header and an int, padded.
// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const TOS_CONTROL_LEN: usize =
    unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as libc::c_uint) } as usize;
/// Room for both, in words, so that the buffer is aligned like `cmsghdr`.
const GSO_CONTROL_WORDS: usize = (GSO_CONTROL_LEN + TOS_CONTROL_LEN).div_ceil(size_of::<usize>());
const _: () = assert!(std::mem::align_of::<libc::cmsghdr>() <= std::mem::align_of::<usize>());

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("cannot create UDP socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot bind UDP {addr}: {source} (is another VXLAN endpoint, e.g. a kernel vxlan device or flanneld, using this port on this node?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {what} on UDP socket: {source}")]
    Option {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads an int socket option.
fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, opt: libc::c_int) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, a live c_int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// Checks that a passed descriptor is a bound UDP socket, IPv4 or IPv6; its address
/// (which says the family: `getsockname`).
fn adopt_udp(fd: OwnedFd) -> io::Result<(Socket, SocketAddr)> {
    let s = Socket::from(fd);
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if s.r#type()? != Type::DGRAM {
        return Err(bad("the descriptor is not a datagram socket".into()));
    }
    match s.local_addr()?.as_socket() {
        Some(a) if a.port() != 0 => Ok((s, a)),
        other => Err(bad(format!(
            "the descriptor is not a bound IPv4 or IPv6 UDP socket ({other:?})"
        ))),
    }
}

/// Sets a socket buffer size, with the root-only FORCE variant first so the
/// system-wide `rmem_max`/`wmem_max` caps do not apply.
fn set_buffer(sock: &Socket, bytes: usize, send: bool) {
    let (force, plain) = if send {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    } else {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    };
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, force, v).is_err() {
        let _ = setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, plain, v);
    }
}

/// Whether the kernel knows UDP_SEGMENT: it accepts the socket option.
fn probe_gso(s: &Socket) -> bool {
    setsockopt_int(s.as_fd(), SOL_UDP, UDP_SEGMENT, 1400).is_ok()
        && setsockopt_int(s.as_fd(), SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

/// One send socket bound to `addr` (an ephemeral port), of `addr`'s family.
fn open_tx(addr: SocketAddr, sndbuf: usize) -> Result<Socket, UdpError> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(UdpError::Socket)?;
    let option = |what| move |source| UdpError::Option { what, source };
    match addr {
        SocketAddr::V4(_) => {
            s.bind(&SockAddr::from(addr))
                .map_err(|source| UdpError::Bind { addr, source })?;
            // Like the kernel vxlan driver's default: outer packets do not set DF.
            setsockopt_int(
                s.as_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
            .map_err(option("IP_MTU_DISCOVER"))?;
        }
        SocketAddr::V6(_) => {
            // IPv6 only: the IPv4 underlay has sockets of its own.
            s.set_only_v6(true).map_err(option("IPV6_V6ONLY"))?;
            s.bind(&SockAddr::from(addr))
                .map_err(|source| UdpError::Bind { addr, source })?;
            // IPv6 has no DF bit: routers never fragment, only the sender may. Linux's
            // vxlan6 path (`vxlan_xmit_one`) lowers the inner route's PMTU when an outer
            // packet does not fit (`skb_tunnel_check_pmtu`), then `ip6_fragment` drops
            // that packet: `skb_scrub_packet` cleared its `ignore_df`. A UDP socket below
            // IPV6_PMTUDISC_DO sends `ignore_df` packets (`ip6_sk_ignore_df`), so the
            // kernel fragments our outer datagrams here, to the path MTU it knows,
            // rather than failing the send with EMSGSIZE: as near as IPv6 comes to the
            // DF-clear outer packets of the IPv4 sockets. WANT, the default, sends the
            // same; DONT says it, whatever the default becomes.
            setsockopt_int(
                s.as_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DONT,
            )
            .map_err(option("IPV6_MTU_DISCOVER"))?;
        }
    }
    set_buffer(&s, sndbuf, true);
    Ok(s)
}

/// The transmit side.
#[derive(Debug)]
pub struct UdpTx {
    /// Bound to the node's IPv4 PublicIP; never empty.
    sockets: Vec<Socket>,
    /// Bound to its PublicIPv6: as many as `sockets`, or none without an IPv6 underlay.
    sockets6: Vec<Socket>,
    gso: bool,
}

impl UdpTx {
    /// Opens `count` sockets bound to `bind_ip` on ephemeral ports.
    pub fn open(bind_ip: Ipv4Addr, count: usize, sndbuf: usize) -> Result<UdpTx, UdpError> {
        let addr = SocketAddr::V4(SocketAddrV4::new(bind_ip, 0));
        let sockets = (0..count.max(1))
            .map(|_| open_tx(addr, sndbuf))
            .collect::<Result<Vec<_>, _>>()?;
        let gso = sockets.first().is_some_and(probe_gso);
        Ok(UdpTx {
            sockets,
            sockets6: Vec::new(),
            gso,
        })
    }

    /// Opens as many IPv6 sockets as there are IPv4 ones, bound to `bind_ip` on
    /// ephemeral ports, for peers over an IPv6 underlay (replacing any opened before).
    /// GSO stays on only if these take it too.
    pub fn add_ipv6(&mut self, bind_ip: Ipv6Addr, sndbuf: usize) -> Result<(), UdpError> {
        let addr = SocketAddr::V6(SocketAddrV6::new(bind_ip, 0, 0, 0));
        let sockets6 = (0..self.sockets.len().max(1))
            .map(|_| open_tx(addr, sndbuf))
            .collect::<Result<Vec<_>, _>>()?;
        self.gso &= sockets6.first().is_some_and(probe_gso);
        self.sockets6 = sockets6;
        Ok(())
    }

    /// Another handle on the same sockets (same source ports), for a second
    /// egress thread.
    pub fn try_clone(&self) -> io::Result<UdpTx> {
        let clone = |v: &[Socket]| {
            v.iter()
                .map(Socket::try_clone)
                .collect::<io::Result<Vec<_>>>()
        };
        Ok(UdpTx {
            sockets: clone(&self.sockets)?,
            sockets6: clone(&self.sockets6)?,
            gso: self.gso,
        })
    }

    /// Takes send sockets another process opened (descriptors passed to us, as
    /// [`UdpTx::try_clone_fds`] lists them), sorting them into families by their
    /// bound address and probing UDP GSO again. At least one must be IPv4, and
    /// IPv6 ones, if any, as many as those.
    pub fn from_fds(fds: Vec<OwnedFd>) -> io::Result<UdpTx> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
        let (mut sockets, mut sockets6) = (Vec::new(), Vec::new());
        for fd in fds {
            match adopt_udp(fd)? {
                (s, SocketAddr::V4(_)) => sockets.push(s),
                (s, SocketAddr::V6(_)) => sockets6.push(s),
            }
        }
        if sockets.is_empty() {
            return Err(bad("no IPv4 send socket"));
        }
        if !sockets6.is_empty() && sockets6.len() != sockets.len() {
            return Err(bad("not as many IPv6 send sockets as IPv4 ones"));
        }
        // Probed on a socket of our own, not on these: a predecessor may still be
        // sending on them, and for the moment UDP_SEGMENT is 1400 the kernel would cut
        // its longer datagrams sent without a segment size.
        let fresh = |d: Domain| {
            Socket::new(d, Type::DGRAM.cloexec(), Some(Protocol::UDP)).is_ok_and(|s| probe_gso(&s))
        };
        let gso = fresh(Domain::IPV4) && (sockets6.is_empty() || fresh(Domain::IPV6));
        Ok(UdpTx {
            sockets,
            sockets6,
            gso,
        })
    }

    /// Second descriptors for the send sockets (to pass to another process): the
    /// IPv4 ones, then the IPv6 ones.
    pub fn try_clone_fds(&self) -> io::Result<Vec<OwnedFd>> {
        self.sockets
            .iter()
            .chain(&self.sockets6)
            .map(|s| s.as_fd().try_clone_to_owned())
            .collect()
    }

    /// The address the send sockets are bound to (the first one's; all share it).
    pub fn local_ip(&self) -> Option<Ipv4Addr> {
        match self.sockets.first()?.local_addr().ok()?.as_socket()? {
            SocketAddr::V4(a) => Some(*a.ip()),
            SocketAddr::V6(_) => None,
        }
    }

    /// Whether there are IPv6 send sockets ([`UdpTx::add_ipv6`]).
    pub fn has_ipv6(&self) -> bool {
        !self.sockets6.is_empty()
    }

    /// The address the IPv6 send sockets are bound to, if there are any.
    pub fn local_ip6(&self) -> Option<Ipv6Addr> {
        match self.sockets6.first()?.local_addr().ok()?.as_socket()? {
            SocketAddr::V6(a) => Some(*a.ip()),
            SocketAddr::V4(_) => None,
        }
    }

    /// Whether sends use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Turns GSO off (tests, or an operator's `--no-udp-gso`).
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    /// The number of IPv4 send sockets; there are as many IPv6 ones, or none.
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// The local source ports of the IPv4 sockets, for logs and tests.
    pub fn local_ports(&self) -> Vec<u16> {
        ports(&self.sockets)
    }

    /// The local source ports of the IPv6 sockets (none without them).
    pub fn local_ports6(&self) -> Vec<u16> {
        ports(&self.sockets6)
    }

    /// Sends every entry from the socket of its index among those of its
    /// destination's family (consecutive entries for one socket share a sendmmsg).
    /// Datagrams that cannot be sent, among them those to IPv6 peers when there are
    /// no IPv6 sockets, are counted as [`DropReason::SendFailed`].
    pub fn send(&mut self, buf: &[u8], entries: &[SendEntry], counts: &mut LocalCounts) {
        let (sockets, sockets6) = (&self.sockets, &self.sockets6);
        send_all(
            buf.len(),
            entries,
            sockets.len(),
            !sockets6.is_empty(),
            &mut self.gso,
            counts,
            |ipv6, sock, messages| {
                let family = if ipv6 { sockets6 } else { sockets };
                match family.get(sock) {
                    Some(s) => sendmmsg(s, buf, messages),
                    // Not reached: the plan picks an index below `sockets.len()`, and
                    // there are as many IPv6 sockets (or none, checked by `send_all`).
                    None => Err(io::Error::from_raw_os_error(libc::EBADF)),
                }
            },
        );
    }
}

fn ports(sockets: &[Socket]) -> Vec<u16> {
    sockets
        .iter()
        .filter_map(|s| s.local_addr().ok()?.as_socket().map(|a| a.port()))
        .collect()
}

/// Sends `entries` (laid out in a buffer of `buf_len` bytes) with `call`, one
/// `sendmmsg` on a socket each, as [`send_batch::plan`] cuts them, and counts what
/// went out and what was lost. `call` gets whether the messages go to IPv6 peers,
/// the socket index within that family, and the messages; without IPv6 sockets
/// (`ipv6` false) the datagrams to IPv6 peers are lost without a call. Turns `gso`
/// off for good when the kernel refuses it.
fn send_all(
    buf_len: usize,
    entries: &[SendEntry],
    sockets: usize,
    ipv6: bool,
    gso: &mut bool,
    counts: &mut LocalCounts,
    mut call: impl FnMut(bool, usize, &[Message]) -> io::Result<usize>,
) {
    let mut at = SendCursor::default();
    let mut plan = SendPlan::default();
    loop {
        match send_batch::plan(entries, buf_len, at, *gso, sockets, &mut plan) {
            Next::Done => return,
            Next::Drop { datagrams, next } => {
                for _ in 0..datagrams {
                    counts.drop(DropReason::SendFailed);
                }
                at = next;
                continue;
            }
            Next::Send => {}
        }
        if plan.ipv6() && !ipv6 {
            // No IPv6 socket to send these from (`UdpTx::add_ipv6` was not called).
            let progress = plan.abandon();
            for _ in 0..progress.lost {
                counts.drop(DropReason::SendFailed);
            }
            at = progress.next;
            continue;
        }
        let progress = match call(plan.ipv6(), plan.socket(), plan.messages()) {
            Ok(sent) => {
                counts.udp_send_syscalls += 1;
                plan.sent(sent)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if plan.messages().first().is_some_and(|m| m.segment.is_some())
                    && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
            {
                // The route cannot checksum-offload (EIO) or refuses this
                // segmentation (EINVAL): stop using GSO and send the same
                // datagrams again, one per message.
                *gso = false;
                counts.udp_gso_fallbacks += 1;
                tracing::warn!(error = %e, "UDP GSO send refused; falling back to one datagram per send");
                continue;
            }
            Err(_) => {
                counts.udp_send_syscalls += 1;
                plan.failed()
            }
        };
        counts.udp_datagrams_sent += progress.sent as u64;
        counts.udp_bytes_sent += progress.bytes as u64;
        for _ in 0..progress.lost {
            counts.drop(DropReason::SendFailed);
        }
        at = progress.next;
    }
}

/// A message's peer address as `msg_name` holds it: a `sockaddr_in` or a
/// `sockaddr_in6`, in room for the larger. Always made as [`SockName::ZERO`], so that
/// every byte is initialised whichever member is written.
#[derive(Clone, Copy)]
#[repr(C)]
union SockName {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockName {
    /// All zero (`sockaddr_in6` covers every byte: it has no padding).
    const ZERO: SockName = SockName {
        v6: libc::sockaddr_in6 {
            sin6_family: 0,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
            sin6_scope_id: 0,
        },
    };

    /// Writes `a`; returns its length, for `msg_namelen`.
    fn set(&mut self, a: SocketAddr) -> libc::socklen_t {
        match a {
            SocketAddr::V4(a) => {
                self.v4 = sockaddr_in(a);
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                self.v6 = sockaddr_in6(a);
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    /// The address the kernel wrote, `len` bytes of it, if of a family we know.
    fn get(&self, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = usize::try_from(len).ok()?;
        // SAFETY: every byte is initialised (made ZERO, then written by the kernel or
        // `set`), and both members are plain old data that start with the family.
        let family = libc::c_int::from(unsafe { self.v6.sin6_family });
        match family {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: as above.
                let sa = unsafe { self.v4 };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                    u16::from_be(sa.sin_port),
                )))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above.
                let sa = unsafe { self.v6 };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sa.sin6_addr.s6_addr),
                    u16::from_be(sa.sin6_port),
                    sa.sin6_flowinfo,
                    sa.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

const _: () = assert!(size_of::<SockName>() == size_of::<libc::sockaddr_in6>());

/// One `sendmmsg` of `messages` (at most [`BATCH`], each inside `buf`) on `sock`:
/// how many went out, or the error of the first.
fn sendmmsg(sock: &Socket, buf: &[u8], messages: &[Message]) -> io::Result<usize> {
    let n = messages.len().min(BATCH);
    let mut names = [SockName::ZERO; BATCH];
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    let mut control = [[0usize; GSO_CONTROL_WORDS]; BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, m) in messages[..n].iter().enumerate() {
        let namelen = names[i].set(m.dst);
        // `send_batch::plan` makes messages only inside the buffer it was given.
        iovs[i] = iovec(&buf[m.offset..m.offset + m.len]);
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = (&mut names[i] as *mut SockName).cast();
        h.msg_namelen = namelen;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        set_control(h, &mut control[i], m.segment, m.tos, m.dst.is_ipv6());
    }
    // SAFETY: `msgs[..n]` point at `names`, `iovs` and `control`, locals that live
    // until the call returns; each iovec points into `buf`, borrowed for the call.
    let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Points `h` at `control` holding the message's control messages: UDP_SEGMENT of
/// `segment` bytes when set, and when `tos` is not 0 (the outer ECN field) IP_TOS, or
/// for an IPv6 destination (`ipv6`) IPV6_TCLASS, an int either way; none at all
/// leaves `h` without control.
fn set_control(
    h: &mut libc::msghdr,
    control: &mut [usize; GSO_CONTROL_WORDS],
    segment: Option<u16>,
    tos: u8,
    ipv6: bool,
) {
    let len = segment.map_or(0, |_| GSO_CONTROL_LEN) + if tos != 0 { TOS_CONTROL_LEN } else { 0 };
    if len == 0 {
        return;
    }
    *control = [0; GSO_CONTROL_WORDS];
    h.msg_control = control.as_mut_ptr().cast();
    h.msg_controllen = len as _;
    let (level, ty) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_TOS)
    };
    // SAFETY: `h` now points at `control`, zeroed, aligned for cmsghdr and at least
    // `len` bytes long: CMSG_SPACE(2) for the segment size and CMSG_SPACE(int) for the
    // TOS, each only when written. CMSG_FIRSTHDR returns the buffer's start (not null:
    // `len` holds a header); CMSG_NXTHDR after a written header returns the next
    // header inside `len` bytes, which the second message's space provides.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        if let Some(segment) = segment {
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as libc::c_uint) as _;
            libc::CMSG_DATA(c).cast::<u16>().write_unaligned(segment);
            if tos == 0 {
                return;
            }
            c = libc::CMSG_NXTHDR(h, c);
            if c.is_null() {
                // Cannot happen with the lengths above; send without the TOS then.
                h.msg_controllen = GSO_CONTROL_LEN as _;
                return;
            }
        }
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as libc::c_uint) as _;
        libc::CMSG_DATA(c)
            .cast::<libc::c_int>()
            .write_unaligned(libc::c_int::from(tos));
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// As std and socket2 lay it out: the flow information and scope as given.
fn sockaddr_in6(a: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        sin6_flowinfo: a.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// The source of a message the kernel gave none we could read.
const NO_SOURCE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// One receive slot: 64 KiB is the largest a GRO-coalesced message can be.
const RECV_BUF: usize = 65_536;
/// Control buffer per message: room for UDP_GRO's int, SO_TIMESTAMPNS's timespec and
/// IP_TOS's byte or (an IPv6 socket) IPV6_TCLASS's int. (Earlier releases, which may
/// share the IPv4 socket during a handover, have 64 bytes: the kernel puts IP_TOS last,
/// so with time stamps on — `--aqm-target` — they lose only that, which they do not
/// read.)
const CMSG_BUF: usize = 80;
// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const _: () = assert!(
    unsafe {
        libc::CMSG_SPACE(size_of::<libc::c_int>() as libc::c_uint)
            + libc::CMSG_SPACE(size_of::<libc::timespec>() as libc::c_uint)
            + if libc::CMSG_SPACE(1) > libc::CMSG_SPACE(size_of::<libc::c_int>() as _) {
                libc::CMSG_SPACE(1)
            } else {
                libc::CMSG_SPACE(size_of::<libc::c_int>() as _)
            }
    } as usize
        <= CMSG_BUF
);
const _: () = assert!(CMSG_BUF % size_of::<usize>() == 0);

/// Buffers for one `recvmmsg` call, allocated once.
#[derive(Debug)]
pub struct RecvBatch {
    data: Vec<u8>,
    /// `CMSG_BUF` bytes per message, in words so that each is aligned like `cmsghdr`.
    control: Vec<usize>,
    lens: Vec<usize>,
    srcs: Vec<SocketAddr>,
    segs: Vec<usize>,
    /// When the kernel received each message (ns since the epoch), if it was asked to
    /// say ([`UdpRx::set_timestamps`]).
    stamps: Vec<Option<u64>>,
    /// Each message's outer IPv4 TOS byte (`IP_RECVTOS`) or IPv6 traffic class
    /// (`IPV6_RECVTCLASS`); 0 when the kernel did not say.
    tos: Vec<u8>,
    /// Cut short, or from an address family we do not know: unusable.
    truncated: Vec<bool>,
    count: usize,
    /// Messages the next call asks for (1 to the capacity).
    limit: usize,
}

impl RecvBatch {
    pub fn new(messages: usize) -> RecvBatch {
        let m = messages.clamp(1, BATCH);
        RecvBatch {
            data: vec![0; m * RECV_BUF],
            control: vec![0; m * CMSG_BUF / size_of::<usize>()],
            lens: vec![0; m],
            srcs: vec![NO_SOURCE; m],
            segs: vec![0; m],
            stamps: vec![None; m],
            tos: vec![0; m],
            truncated: vec![false; m],
            count: 0,
            limit: m,
        }
    }

    /// How far into the batch's data the last call wrote: each message has its own
    /// 64 KiB slot, so `n` messages reach into the `n`th.
    pub fn footprint(&self) -> usize {
        match self.count.checked_sub(1) {
            Some(last) => last * RECV_BUF + self.lens[last],
            None => 0,
        }
    }

    /// Gives the batch's data pages back to the system (see
    /// [`super::release_pages`]); the batch stays usable. Returns the bytes released.
    pub fn release_pages(&mut self) -> usize {
        self.count = 0;
        super::release_pages(&mut self.data)
    }

    /// A batch as if `recvmmsg` had returned `messages`: (source, GRO segment size or
    /// 0, bytes), each at most 64 KiB. For tests of what consumes batches.
    #[cfg(test)]
    pub(crate) fn with_messages(messages: &[(SocketAddr, usize, &[u8])]) -> RecvBatch {
        let mut b = RecvBatch::new(messages.len());
        for (i, (src, seg, bytes)) in messages.iter().enumerate() {
            b.tos[i] = 0;
            b.data[i * RECV_BUF..i * RECV_BUF + bytes.len()].copy_from_slice(bytes);
            b.lens[i] = bytes.len();
            b.srcs[i] = *src;
            b.segs[i] = *seg;
        }
        b.count = messages.len();
        b
    }

    /// When the kernel received message `i` (ns since the epoch, CLOCK_REALTIME), if
    /// the socket stamps messages.
    pub fn stamp_ns(&self, i: usize) -> Option<u64> {
        if i < self.count {
            self.stamps[i]
        } else {
            None
        }
    }

    /// The most messages one call can receive.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// How many messages the next call asks for: `messages`, at least one and at most
    /// the capacity. Buffers beyond it stay untouched.
    pub fn set_limit(&mut self, messages: usize) {
        self.limit = messages.clamp(1, self.capacity());
    }

    /// How many messages a call asks for ([`RecvBatch::set_limit`]; the capacity
    /// unless set).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes received by the last call, all messages together.
    pub fn bytes(&self) -> usize {
        self.lens[..self.count].iter().sum()
    }

    /// Sets the outer TOS bytes of the messages, as the kernel would. For tests.
    #[cfg(test)]
    pub(crate) fn set_tos(&mut self, tos: &[u8]) {
        for (s, t) in self.tos.iter_mut().zip(tos) {
            *s = *t;
        }
    }

    /// Sets the time stamps of the messages, as the kernel would. For tests.
    #[cfg(test)]
    pub(crate) fn set_stamps(&mut self, stamps: &[Option<u64>]) {
        for (s, t) in self.stamps.iter_mut().zip(stamps) {
            *s = *t;
        }
    }

    /// Messages received by the last call.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Message `i`: its source, and its datagrams (split at the GRO segment size).
    /// A truncated message, or one from an address family we do not know, yields
    /// `None` (count it as malformed).
    pub fn datagrams(&self, i: usize) -> Option<(SocketAddr, std::slice::Chunks<'_, u8>)> {
        self.message(i).map(|m| (m.src, m.datagrams))
    }

    /// The segment size message `i` is split at (see [`RecvBatch::message`]).
    fn segment(&self, i: usize) -> usize {
        let msg = &self.data[i * RECV_BUF..i * RECV_BUF + self.lens[i]];
        let gro = self.segs[i];
        if gro == 0 || crate::offload::udp_burst::is_one_datagram(msg, gro) {
            msg.len().max(1)
        } else {
            gro
        }
    }

    /// Writes `to` over the inner destination MAC (the six bytes after the 8-byte VXLAN
    /// header) of every datagram of message `i` that has `from` there; returns how many
    /// it rewrote. VXLAN over IPv6 in flannel's layout is sent to the node's IPv6
    /// VtepMAC, and the TAP takes only frames to its own MAC: rewritten in place, before
    /// the datagrams are judged, rather than copied one by one.
    pub fn rewrite_inner_dst(&mut self, i: usize, from: [u8; 6], to: [u8; 6]) -> usize {
        if i >= self.count || self.truncated[i] {
            return 0;
        }
        let seg = self.segment(i);
        let msg = &mut self.data[i * RECV_BUF..i * RECV_BUF + self.lens[i]];
        let mut n = 0;
        for d in msg.chunks_mut(seg) {
            if let Some(dst) = d.get_mut(8..14).filter(|m| **m == from) {
                dst.copy_from_slice(&to);
                n += 1;
            }
        }
        n
    }

    /// Message `i` as [`RecvBatch::datagrams`] gives it, and whether it is one whole UDP
    /// GSO burst of a kernel sender rather than a train of datagrams: then its one
    /// datagram's inner UDP frame is to be cut into pieces of `inner_segment` payload
    /// bytes (see `offload::udp_burst`).
    pub fn message(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let msg = &self.data[i * RECV_BUF..i * RECV_BUF + self.lens[i]];
        let gro = self.segs[i];
        let burst = crate::offload::udp_burst::is_one_datagram(msg, gro);
        let seg = self.segment(i);
        Some(Received {
            src: self.srcs[i],
            datagrams: msg.chunks(seg),
            inner_segment: burst.then_some(gro),
            outer_ecn: self.tos[i] & 0b11,
        })
    }
}

/// One received message: see [`RecvBatch::message`].
#[derive(Debug)]
pub struct Received<'a> {
    pub src: SocketAddr,
    pub datagrams: std::slice::Chunks<'a, u8>,
    /// Set for a whole UDP GSO burst: the payload size of its inner datagrams.
    pub inner_segment: Option<usize>,
    /// The outer IPv4 or IPv6 header's ECN field, the same for every datagram of the
    /// message (the kernel's GRO merges only datagrams whose TOS or traffic class is
    /// equal).
    pub outer_ecn: u8,
}

/// What the control messages of a received message say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    /// The UDP_GRO segment size.
    gro: Option<usize>,
    /// When the kernel received it (`SO_TIMESTAMPNS`, CLOCK_REALTIME), ns since the epoch.
    stamp_ns: Option<u64>,
    /// The outer IPv4 TOS byte (`IP_RECVTOS`) or IPv6 traffic class (`IPV6_RECVTCLASS`).
    tos: u8,
}

/// Reads the UDP_GRO segment size, the receive time and the outer TOS or traffic class
/// among the control messages of a received message.
///
/// # Safety
/// `h.msg_control` must point at `h.msg_controllen` readable bytes aligned for
/// `cmsghdr` (as `recvmmsg` leaves them), or `h.msg_controllen` must be 0.
unsafe fn control_info(h: &libc::msghdr) -> Control {
    let mut out = Control::default();
    let start = h.msg_control as usize;
    #[allow(clippy::unnecessary_cast)] // socklen_t on some targets
    let Some(end) = start.checked_add(h.msg_controllen as usize) else {
        return out;
    };
    // SAFETY: arithmetic only.
    let int_len = unsafe { libc::CMSG_LEN(size_of::<libc::c_int>() as libc::c_uint) } as usize;
    // SAFETY: arithmetic only.
    let ts_len = unsafe { libc::CMSG_LEN(size_of::<libc::timespec>() as libc::c_uint) } as usize;
    // SAFETY: arithmetic only.
    let tos_len = unsafe { libc::CMSG_LEN(1) } as usize;
    // SAFETY: the caller vouches for the control buffer; CMSG_FIRSTHDR returns null
    // unless a whole header fits in it.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(h) };
    while !c.is_null() {
        // SAFETY: `c` is a whole header inside the buffer (CMSG_FIRSTHDR/CMSG_NXTHDR
        // return only such headers, or null).
        let (level, ty, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize) };
        let fits =
            |need: usize| len >= need && (c as usize).checked_add(need).is_some_and(|e| e <= end);
        if level == SOL_UDP && ty == UDP_GRO && fits(int_len) {
            // SAFETY: the header says, and `fits` checks, that an int follows it inside
            // the buffer; CMSG_DATA may be unaligned for it, hence read_unaligned.
            let v = unsafe { libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned() };
            out.gro = usize::try_from(v).ok().filter(|&v| v > 0);
        } else if level == libc::IPPROTO_IP && ty == libc::IP_TOS && fits(tos_len) {
            // SAFETY: as above, for the one byte the kernel puts there.
            out.tos = unsafe { libc::CMSG_DATA(c).read() };
        } else if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_TCLASS && fits(int_len) {
            // SAFETY: as above, for the int the kernel puts there (`ipv6(7)`).
            let v = unsafe { libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned() };
            out.tos = u8::try_from(v & 0xff).unwrap_or(0);
        } else if level == libc::SOL_SOCKET && ty == libc::SCM_TIMESTAMPNS && fits(ts_len) {
            // SAFETY: as above, for a timespec.
            let ts = unsafe { libc::CMSG_DATA(c).cast::<libc::timespec>().read_unaligned() };
            out.stamp_ns = u64::try_from(ts.tv_sec)
                .ok()
                .zip(
                    u64::try_from(ts.tv_nsec)
                        .ok()
                        .filter(|&n| n < 1_000_000_000),
                )
                .and_then(|(s, n)| s.checked_mul(1_000_000_000)?.checked_add(n));
        }
        // SAFETY: `c` is a header of this buffer; CMSG_NXTHDR returns the next whole
        // header inside it, or null.
        c = unsafe { libc::CMSG_NXTHDR(h, c) };
    }
    out
}

/// Asks for each message's outer TOS byte (`IP_RECVTOS`), or on an IPv6 socket its
/// traffic class (`IPV6_RECVTCLASS`), for decapsulating ECN (`wire::ecn`). Linux has
/// had them since 2.2 and 2.6.14; without them every message reads 0 (Not-ECT), which
/// leaves the inner packets as they are.
fn recv_tos(s: &Socket, ipv6: bool) {
    let (level, opt) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVTOS)
    };
    let _ = setsockopt_int(s.as_fd(), level, opt, 1);
}

/// The receive side: one socket on the VXLAN port.
#[derive(Debug)]
pub struct UdpRx {
    socket: Socket,
    gro: bool,
}

impl UdpRx {
    /// Binds `addr` (usually 0.0.0.0:8472, or [::]:8472 for an IPv6 underlay),
    /// non-blocking, asking for UDP GRO. An IPv6 socket takes IPv6 only
    /// (`IPV6_V6ONLY`), so that it binds beside the IPv4 one on the same port.
    pub fn open(addr: SocketAddr, rcvbuf: usize, want_gro: bool) -> Result<UdpRx, UdpError> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.cloexec().nonblocking(),
            Some(Protocol::UDP),
        )
        .map_err(UdpError::Socket)?;
        if addr.is_ipv6() {
            s.set_only_v6(true).map_err(|source| UdpError::Option {
                what: "IPV6_V6ONLY",
                source,
            })?;
        }
        s.bind(&SockAddr::from(addr))
            .map_err(|source| UdpError::Bind { addr, source })?;
        set_buffer(&s, rcvbuf, false);
        let gro = want_gro && setsockopt_int(s.as_fd(), SOL_UDP, UDP_GRO, 1).is_ok();
        recv_tos(&s, addr.is_ipv6());
        Ok(UdpRx { socket: s, gro })
    }

    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Sets the receive buffer (`SO_RCVBUFFORCE`, else `SO_RCVBUF` within
    /// `rmem_max`), e.g. on a socket taken over from a predecessor that set another.
    pub fn set_rcvbuf(&self, bytes: usize) {
        set_buffer(&self.socket, bytes, false);
    }

    /// The receive buffer the kernel applies, in bytes: twice what was asked
    /// (`socket(7)`: the other half is its bookkeeping).
    pub fn rcvbuf(&self) -> Option<usize> {
        getsockopt_int(self.socket.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF)
            .ok()
            .and_then(|v| usize::try_from(v).ok())
    }

    /// Asks the kernel to stamp each datagram with its arrival time (`SO_TIMESTAMPNS`),
    /// for [`RecvBatch::stamp_ns`]. The option belongs to the socket, shared with a
    /// predecessor or successor that holds it too. Enabling it makes the kernel take a
    /// time stamp for every packet it receives, on every interface (tens of ns each).
    pub fn set_timestamps(&self, on: bool) -> io::Result<()> {
        setsockopt_int(
            self.socket.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            i32::from(on),
        )
    }

    /// Takes the receive socket another process opened (descriptor passed to us):
    /// must be a bound UDP socket, IPv4 or IPv6; non-blocking and UDP GRO are read back
    /// from it (they belong to the shared socket, not to a process).
    pub fn from_fd(fd: OwnedFd) -> io::Result<UdpRx> {
        let (socket, addr) = adopt_udp(fd)?;
        socket.set_nonblocking(true)?;
        let gro = getsockopt_int(socket.as_fd(), SOL_UDP, UDP_GRO).is_ok_and(|v| v != 0);
        // A socket of an earlier release did not ask; the option belongs to the socket.
        recv_tos(&socket, addr.is_ipv6());
        Ok(UdpRx { socket, gro })
    }

    /// A second descriptor for the socket (to pass to another process).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.socket.as_fd().try_clone_to_owned()
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()?.as_socket()
    }

    /// One `recvmmsg`: fills `batch`, returns the number of messages, or
    /// `WouldBlock` when nothing is waiting.
    pub fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        // At most the capacity, which is at most BATCH.
        let m = batch.limit;
        let mut names = [SockName::ZERO; BATCH];
        // SAFETY: mmsghdr is plain old data; zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        let data = batch.data.as_mut_ptr();
        let control = batch.control.as_mut_ptr().cast::<u8>();
        for i in 0..m {
            // SAFETY: i < m <= capacity and `data` holds capacity * RECV_BUF bytes.
            iovs[i].iov_base = unsafe { data.add(i * RECV_BUF) }.cast();
            iovs[i].iov_len = RECV_BUF;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut SockName).cast();
            h.msg_namelen = size_of::<SockName>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            // SAFETY: i < m <= capacity and `control` holds capacity * CMSG_BUF bytes
            // (word-aligned).
            h.msg_control = unsafe { control.add(i * CMSG_BUF) }.cast();
            h.msg_controllen = CMSG_BUF as _;
        }
        // SAFETY: every mmsghdr points at live buffers owned by `batch` or this
        // frame (`names`, `iovs`), sized as declared; MSG_DONTWAIT never blocks.
        let r = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                m as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            batch.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for i in 0..n {
            let h = &msgs[i].msg_hdr;
            batch.lens[i] = (msgs[i].msg_len as usize).min(RECV_BUF);
            let src = names[i].get(h.msg_namelen);
            batch.truncated[i] = h.msg_flags & libc::MSG_TRUNC != 0 || src.is_none();
            batch.srcs[i] = src.unwrap_or(NO_SOURCE);
            let h = &mut msgs[i].msg_hdr;
            h.msg_controllen = h.msg_controllen.min(CMSG_BUF as _);
            // SAFETY: msg_control of message i points at its CMSG_BUF initialised,
            // word-aligned bytes of `batch.control`, and msg_controllen is at most that.
            let control = unsafe { control_info(h) };
            batch.segs[i] = control.gro.unwrap_or(0);
            batch.stamps[i] = control.stamp_ns;
            batch.tos[i] = control.tos;
        }
        batch.count = n;
        Ok(n)
    }
}

impl AsFd for UdpRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `port` on the IPv4 loopback.
    fn lo(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    /// `port` on the IPv6 loopback.
    fn lo6(port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0))
    }

    /// Whether this host has an IPv6 loopback to test on; says so when not.
    fn ipv6_loopback() -> bool {
        match std::net::UdpSocket::bind(lo6(0)) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("SKIP: no IPv6 loopback here: {e}");
                false
            }
        }
    }

    /// One received datagram: its message's source and outer ECN field, and its bytes.
    type Got = (SocketAddr, u8, Vec<u8>);

    /// Receives from `rx` until `want` datagrams came (or a second went by): the
    /// datagrams, and in how many messages they came.
    fn receive(rx: &UdpRx, want: usize) -> (Vec<Got>, usize) {
        let mut batch = RecvBatch::new(16);
        let (mut got, mut messages) = (Vec::new(), 0);
        for _ in 0..200 {
            match rx.recv(&mut batch) {
                Ok(n) => {
                    for i in 0..n {
                        let m = batch.message(i).expect("a whole message");
                        let (src, ecn) = (m.src, m.outer_ecn);
                        got.extend(m.datagrams.map(|d| (src, ecn, d.to_vec())));
                        messages += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() >= want {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        (got, messages)
    }

    fn entry(offset: usize, len: usize, stride: usize) -> SendEntry {
        SendEntry {
            dst: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 2), 8472)),
            offset,
            len,
            stride,
            socket: 0,
            tos: 0,
        }
    }

    /// A stand-in for the kernel's `sendmmsg`: sends at most `per_call` messages
    /// per call, in order, stopping at the first one `fails` refuses (an error if that
    /// is the first), and records every datagram it sent as a byte range.
    struct FakeKernel {
        per_call: usize,
        sent: Vec<std::ops::Range<usize>>,
        calls: usize,
    }

    impl FakeKernel {
        fn new(per_call: usize) -> Self {
            FakeKernel {
                per_call,
                sent: Vec::new(),
                calls: 0,
            }
        }

        fn call(
            &mut self,
            messages: &[Message],
            fails: impl Fn(&Message) -> Option<i32>,
        ) -> io::Result<usize> {
            self.calls += 1;
            for (i, m) in messages.iter().take(self.per_call).enumerate() {
                if let Some(errno) = fails(m) {
                    return if i == 0 {
                        Err(io::Error::from_raw_os_error(errno))
                    } else {
                        Ok(i)
                    };
                }
                let step = m.segment.map_or(m.len, usize::from);
                let mut at = m.offset;
                while at < m.offset + m.len {
                    let end = (at + step).min(m.offset + m.len);
                    self.sent.push(at..end);
                    at = end;
                }
            }
            Ok(messages.len().min(self.per_call))
        }
    }

    fn all_datagrams(entries: &[SendEntry]) -> Vec<std::ops::Range<usize>> {
        entries
            .iter()
            .flat_map(|e| (0..e.datagrams()).map(|i| e.datagram(i).unwrap()))
            .collect()
    }

    /// The defect: a partial sendmmsg counted a partly sent entry as sent (without
    /// GSO) and sent it again whole when earlier entries had gone out.
    #[test]
    fn the_footprint_is_how_far_into_the_slots_a_call_wrote() {
        let src = lo(1);
        assert_eq!(RecvBatch::new(4).footprint(), 0);
        let one = RecvBatch::with_messages(&[(src, 0, &[0u8; 98])]);
        assert_eq!(one.footprint(), 98, "a ping writes its slot's first page");
        let three = RecvBatch::with_messages(&[
            (src, 0, &[0u8; 98]),
            (src, 0, &[0u8; 98]),
            (src, 0, &[0u8; 1500]),
        ]);
        assert_eq!(three.footprint(), 2 * RECV_BUF + 1500);
        let mut b = three;
        assert!(b.release_pages() > 0);
        assert_eq!(b.footprint(), 0);
    }

    #[test]
    fn partial_sends_count_what_went_out_and_send_nothing_twice() {
        let entries = [
            entry(0, 100, 100),
            entry(100, 2500, 1000),
            entry(2600, 2000, 1000),
        ];
        for (gso, per_call) in [(false, 1), (false, 2), (false, 3), (true, 1), (true, 2)] {
            let mut kernel = FakeKernel::new(per_call);
            let mut counts = LocalCounts::default();
            let mut on = gso;
            send_all(4600, &entries, 1, false, &mut on, &mut counts, |_, _, m| {
                kernel.call(m, |_| None)
            });
            assert_eq!(
                kernel.sent,
                all_datagrams(&entries),
                "gso {gso}, {per_call} per call"
            );
            assert_eq!(counts.udp_datagrams_sent, 6);
            assert_eq!(counts.udp_bytes_sent, 4600);
            assert_eq!(counts.udp_send_syscalls, kernel.calls as u64);
            assert_eq!(counts.drops.iter().sum::<u64>(), 0);
        }
    }

    #[test]
    fn refused_gso_falls_back_and_sends_each_datagram_once() {
        let entries = [entry(0, 100, 100), entry(100, 2500, 1000)];
        let mut kernel = FakeKernel::new(64);
        let mut counts = LocalCounts::default();
        let mut gso = true;
        send_all(
            2600,
            &entries,
            1,
            false,
            &mut gso,
            &mut counts,
            |_, _, m| kernel.call(m, |m| m.segment.map(|_| libc::EIO)),
        );
        assert!(!gso);
        assert_eq!(counts.udp_gso_fallbacks, 1);
        // the single datagram went out before the call that was refused
        assert_eq!(kernel.sent, all_datagrams(&entries));
        assert_eq!(counts.udp_datagrams_sent, 4);
        assert_eq!(counts.drops.iter().sum::<u64>(), 0);
    }

    #[test]
    fn a_failed_message_is_a_counted_drop_and_the_rest_goes_out() {
        let entries = [entry(0, 2500, 1000), entry(2500, 100, 100)];
        for gso in [false, true] {
            let mut kernel = FakeKernel::new(64);
            let mut counts = LocalCounts::default();
            let mut on = gso;
            send_all(2600, &entries, 1, false, &mut on, &mut counts, |_, _, m| {
                kernel.call(m, |m| {
                    (m.offset == 1000 || m.offset == 0 && gso).then_some(libc::ENOBUFS)
                })
            });
            let lost = if gso { 3 } else { 1 };
            assert_eq!(
                counts.drops[DropReason::SendFailed as usize],
                lost,
                "gso {gso}"
            );
            assert_eq!(counts.udp_datagrams_sent, 4 - lost);
            assert_eq!(kernel.sent.len() as u64, 4 - lost);
            assert!(on == gso, "ENOBUFS is no reason to give up GSO");
        }
    }

    #[test]
    fn entries_outside_the_buffer_are_counted_not_sent() {
        let entries = [
            entry(0, 100, 100),
            entry(50, 3000, 1000),
            entry(100, 10, 10),
        ];
        let mut kernel = FakeKernel::new(64);
        let mut counts = LocalCounts::default();
        send_all(
            110,
            &entries,
            1,
            false,
            &mut true,
            &mut counts,
            |_, _, m| kernel.call(m, |_| None),
        );
        assert_eq!(kernel.sent, vec![0..100, 100..110]);
        assert_eq!(counts.drops[DropReason::SendFailed as usize], 3);
    }

    #[test]
    fn runs_go_to_their_socket() {
        let mut entries = [entry(0, 10, 10), entry(10, 10, 10), entry(20, 10, 10)];
        entries[1].socket = 1;
        entries[2].socket = 2; // 2 % 2 == 0
        let mut used = Vec::new();
        let mut counts = LocalCounts::default();
        send_all(
            30,
            &entries,
            2,
            false,
            &mut true,
            &mut counts,
            |_, sock, m| {
                used.push((sock, m.len()));
                Ok(m.len())
            },
        );
        assert_eq!(used, vec![(0, 1), (1, 1), (0, 1)]);
    }

    /// Writes control messages of one int each, the way the kernel lays them out.
    fn control_with(
        buf: &mut [usize; 16],
        cmsgs: &[(libc::c_int, libc::c_int, libc::c_int)],
    ) -> libc::msghdr {
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_control = buf.as_mut_ptr().cast();
        h.msg_controllen = size_of_val(buf) as _;
        let mut used = 0;
        // SAFETY: `h` points at `buf`, word-aligned and zeroed; every header written is
        // one CMSG_FIRSTHDR/CMSG_NXTHDR returned (inside the buffer, or null: checked).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h);
            for &(level, ty, v) in cmsgs {
                assert!(!c.is_null());
                (*c).cmsg_level = level;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as _) as _;
                libc::CMSG_DATA(c).cast::<libc::c_int>().write_unaligned(v);
                used += libc::CMSG_SPACE(size_of::<libc::c_int>() as _) as usize;
                c = libc::CMSG_NXTHDR(&h, c);
            }
        }
        h.msg_controllen = used as _;
        h
    }

    #[test]
    fn gro_segment_is_read_from_the_control_messages() {
        let mut buf = [0usize; 16];
        let h = control_with(&mut buf, &[(SOL_UDP, UDP_GRO, 1472)]);
        // SAFETY: `h` points at `buf`, alive and word-aligned.
        assert_eq!(unsafe { control_info(&h) }.gro, Some(1472));
        // after another control message (IP_TOS)
        let mut buf = [0usize; 16];
        let h = control_with(
            &mut buf,
            &[
                (libc::IPPROTO_IP, libc::IP_TOS, 0),
                (SOL_UDP, UDP_GRO, 1400),
            ],
        );
        // SAFETY: as above.
        assert_eq!(unsafe { control_info(&h) }.gro, Some(1400));
        // none, a nonsense size, or a truncated control area
        for (cmsgs, cut) in [
            (vec![], 0),
            (vec![(libc::IPPROTO_IP, libc::IP_TOS, 0)], 0),
            (vec![(SOL_UDP, UDP_GRO, 0)], 0),
            (vec![(SOL_UDP, UDP_GRO, -5)], 0),
            (vec![(SOL_UDP, UDP_GRO, 1472)], 1),
        ] {
            let mut buf = [0usize; 16];
            let mut h = control_with(&mut buf, &cmsgs);
            // SAFETY: CMSG_LEN only does arithmetic.
            let full = unsafe { libc::CMSG_LEN(size_of::<libc::c_int>() as _) } as usize;
            if cut > 0 {
                h.msg_controllen = (full - cut) as _;
            }
            // SAFETY: as above; msg_controllen only shrinks.
            assert_eq!(unsafe { control_info(&h) }.gro, None, "{cmsgs:?} cut {cut}");
        }
    }

    /// The outer ECN field comes from IP_TOS's byte on an IPv4 socket and from
    /// IPV6_TCLASS's int on an IPv6 one; a traffic class cut short is not read.
    #[test]
    fn the_traffic_class_is_read_from_the_control_messages() {
        let mut buf = [0usize; 16];
        let h = control_with(
            &mut buf,
            &[
                (SOL_UDP, UDP_GRO, 1400),
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 0xb9),
            ],
        );
        // SAFETY: `h` points at `buf`, alive and word-aligned.
        let got = unsafe { control_info(&h) };
        assert_eq!((got.gro, got.tos), (Some(1400), 0xb9));
        let mut buf = [0usize; 16];
        let mut h = control_with(&mut buf, &[(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 3)]);
        // SAFETY: as above.
        assert_eq!(unsafe { control_info(&h) }.tos, 3);
        // SAFETY: CMSG_LEN only does arithmetic.
        h.msg_controllen = unsafe { libc::CMSG_LEN(2) } as _;
        // SAFETY: as above; msg_controllen only shrank.
        assert_eq!(unsafe { control_info(&h) }.tos, 0);
    }

    /// A source address round-trips through `msg_name` in either family; a name of
    /// another family, or cut short, gives none (the message is then unusable).
    #[test]
    fn source_addresses_are_read_by_their_family() {
        let v6 = SocketAddr::V6(SocketAddrV6::new("fe80::1:2".parse().unwrap(), 8472, 0, 3));
        for a in [lo(40_000), v6, lo6(1)] {
            let mut n = SockName::ZERO;
            let len = n.set(a);
            assert_eq!(n.get(len), Some(a));
            assert_eq!(n.get(len - 1), None, "{a} cut short");
        }
        let mut n = SockName::ZERO;
        assert_eq!(n.get(size_of::<SockName>() as _), None, "no family");
        n.v4 = sockaddr_in(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        n.v4.sin_family = libc::AF_UNIX as _;
        assert_eq!(n.get(size_of::<SockName>() as _), None, "another family");
    }

    #[test]
    fn the_receive_time_is_read_from_the_control_messages() {
        let mut buf = [0usize; 16];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_control = buf.as_mut_ptr().cast();
        h.msg_controllen = size_of_val(&buf) as _;
        let ts = libc::timespec {
            tv_sec: 1_764_500_000,
            tv_nsec: 123_456_789,
        };
        // SAFETY: `h` points at `buf`, word-aligned and zeroed, room for both messages
        // (checked below); the headers are the ones CMSG_FIRSTHDR/NXTHDR return.
        let used = unsafe {
            let c = libc::CMSG_FIRSTHDR(&h);
            assert!(!c.is_null());
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_TIMESTAMPNS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::timespec>() as _) as _;
            libc::CMSG_DATA(c)
                .cast::<libc::timespec>()
                .write_unaligned(ts);
            let c = libc::CMSG_NXTHDR(&h, c);
            assert!(!c.is_null());
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_GRO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as _) as _;
            libc::CMSG_DATA(c)
                .cast::<libc::c_int>()
                .write_unaligned(1400);
            (libc::CMSG_SPACE(size_of::<libc::timespec>() as _)
                + libc::CMSG_SPACE(size_of::<libc::c_int>() as _)) as usize
        };
        assert!(used <= CMSG_BUF);
        h.msg_controllen = used as _;
        // SAFETY: `h` points at `buf`, alive and word-aligned.
        let got = unsafe { control_info(&h) };
        assert_eq!(got.gro, Some(1400));
        assert_eq!(got.stamp_ns, Some(1_764_500_000_123_456_789));
        // A time stamp cut short is not read.
        // SAFETY: arithmetic only.
        h.msg_controllen = unsafe { libc::CMSG_LEN(8) } as _;
        // SAFETY: msg_controllen only shrank.
        assert_eq!(unsafe { control_info(&h) }, Control::default());
    }

    /// Loopback only: with time stamps on, each message says when it arrived.
    #[test]
    fn received_messages_carry_their_arrival_time() {
        let rx = UdpRx::open(lo(0), 1 << 20, true).unwrap();
        rx.set_timestamps(true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        let before = now();
        tx.send_to(&[7u8; 100], ("127.0.0.1", port)).unwrap();
        let mut batch = RecvBatch::new(4);
        let mut n = 0;
        for _ in 0..200 {
            if let Ok(k) = rx.recv(&mut batch) {
                n = k;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let after = now();
        assert_eq!(n, 1);
        let stamp = batch.stamp_ns(0).expect("a time stamp");
        assert!(
            before <= stamp && stamp <= after,
            "{before} {stamp} {after}"
        );
        assert_eq!(batch.stamp_ns(1), None);
        // Off again: no stamp.
        rx.set_timestamps(false).unwrap();
        tx.send_to(&[7u8; 100], ("127.0.0.1", port)).unwrap();
        for _ in 0..200 {
            if rx.recv(&mut batch).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.stamp_ns(0), None);
    }

    #[test]
    fn the_gso_control_message_is_what_the_kernel_reads() {
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        let mut control = [0usize; GSO_CONTROL_WORDS];
        set_control(&mut h, &mut control, Some(1472), 0, false);
        // SAFETY: `h` points at `control`, alive; CMSG_* stay inside msg_controllen.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&h);
            assert!(!c.is_null());
            assert_eq!(((*c).cmsg_level, (*c).cmsg_type), (SOL_UDP, UDP_SEGMENT));
            assert_eq!((*c).cmsg_len as usize, size_of::<libc::cmsghdr>() + 2);
            assert_eq!(libc::CMSG_DATA(c).cast::<u16>().read_unaligned(), 1472);
            assert!(libc::CMSG_NXTHDR(&h, c).is_null());
        }
    }

    /// The segment size and the outer TOS together, the TOS alone, and neither (no
    /// control at all), laid out as CMSG_* read them back; for an IPv6 destination the
    /// TOS is an IPV6_TCLASS message.
    #[test]
    fn the_tos_control_message_follows_the_segment_size() {
        let read = |h: &libc::msghdr| {
            let mut out = Vec::new();
            // SAFETY: `h` points at its control buffer, alive; CMSG_* stay inside it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    let v = match ((*c).cmsg_level, (*c).cmsg_type) {
                        (SOL_UDP, UDP_SEGMENT) => {
                            i64::from(libc::CMSG_DATA(c).cast::<u16>().read_unaligned())
                        }
                        _ => i64::from(libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned()),
                    };
                    out.push(((*c).cmsg_level, (*c).cmsg_type, v));
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            out
        };
        let tclass = (libc::IPPROTO_IPV6, libc::IPV6_TCLASS);
        for (segment, tos, ipv6, want) in [
            (
                Some(1400),
                2,
                false,
                vec![
                    (SOL_UDP, UDP_SEGMENT, 1400),
                    (libc::IPPROTO_IP, libc::IP_TOS, 2),
                ],
            ),
            (None, 1, false, vec![(libc::IPPROTO_IP, libc::IP_TOS, 1)]),
            (None, 0, false, vec![]),
            (
                Some(1400),
                3,
                true,
                vec![(SOL_UDP, UDP_SEGMENT, 1400), (tclass.0, tclass.1, 3)],
            ),
            (None, 2, true, vec![(tclass.0, tclass.1, 2)]),
            (Some(1400), 0, true, vec![(SOL_UDP, UDP_SEGMENT, 1400)]),
            (None, 0, true, vec![]),
        ] {
            // SAFETY: msghdr is plain old data; all-zero is a valid value.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            let mut control = [7usize; GSO_CONTROL_WORDS];
            set_control(&mut h, &mut control, segment, tos, ipv6);
            if want.is_empty() {
                assert!(h.msg_control.is_null());
                assert_eq!(h.msg_controllen, 0);
            }
            assert_eq!(read(&h), want, "{segment:?} {tos} {ipv6}");
        }
    }

    /// Loopback only: datagrams sent with an outer TOS (alone, and as a GSO run) arrive
    /// with it, and the receiver reads it back per message (`IP_RECVTOS`).
    #[test]
    fn the_outer_tos_is_sent_and_read_back() {
        let rx = UdpRx::open(lo(0), 1 << 20, true).unwrap();
        let dst = lo(rx.local_addr().unwrap().port());
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 1, 1 << 20).unwrap();
        let buf = vec![9u8; 3000];
        let mut counts = LocalCounts::default();
        for (len, stride, tos) in [(300, 300, 2u8), (3000, 1000, 1), (300, 300, 0)] {
            let e = SendEntry {
                dst,
                offset: 0,
                len,
                stride,
                socket: 0,
                tos,
            };
            tx.send(&buf, &[e], &mut counts);
            let mut batch = RecvBatch::new(8);
            let mut got = Vec::new();
            for _ in 0..100 {
                if let Ok(n) = rx.recv(&mut batch) {
                    got.extend((0..n).map(|i| batch.message(i).unwrap().outer_ecn));
                }
                if got.len() == len / stride {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(!got.is_empty(), "nothing received for tos {tos}");
            assert!(got.iter().all(|&e| e == tos), "sent {tos}, read {got:?}");
        }
        assert_eq!(counts.drops[DropReason::SendFailed as usize], 0);
    }

    /// Loopback only: GSO-send a burst and GRO-receive it, byte for byte.
    #[test]
    fn gso_send_gro_receive_on_loopback() {
        let rx = UdpRx::open(lo(0), 1 << 20, true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 2, 1 << 20).unwrap();
        let mut buf = vec![0u8; 10 * 1000 + 500];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let dst = lo(port);
        let entries = [SendEntry {
            dst,
            offset: 0,
            len: 10_500,
            stride: 1000,
            socket: 0,
            tos: 0,
        }];
        let mut counts = LocalCounts::default();
        tx.send(&buf, &entries, &mut counts);
        assert_eq!(counts.udp_datagrams_sent, 11);
        assert_eq!(counts.drops.iter().sum::<u64>(), 0);

        let mut got = Vec::new();
        let mut batch = RecvBatch::new(16);
        for _ in 0..200 {
            match rx.recv(&mut batch) {
                Ok(n) => {
                    for i in 0..n {
                        let (src, dgrams) = batch.datagrams(i).unwrap();
                        assert_eq!(src.ip(), Ipv4Addr::LOCALHOST);
                        for d in dgrams {
                            got.push(d.to_vec());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == 11 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 11);
        assert!(got[..10].iter().all(|d| d.len() == 1000));
        assert_eq!(got[10].len(), 500);
        assert_eq!(got.concat(), buf);
    }

    /// A receive socket taken over through a second descriptor keeps its port, its
    /// GRO setting and the datagrams queued before the takeover.
    #[test]
    fn taken_over_sockets_keep_port_gro_and_queue() {
        let rx = UdpRx::open(lo(0), 1 << 20, true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 2, 1 << 20).unwrap();
        let dst = lo(port);
        let mut counts = LocalCounts::default();
        let e = |socket| SendEntry {
            dst,
            offset: 0,
            len: 100,
            stride: 100,
            socket,
            tos: 0,
        };
        tx.send(&[1u8; 100], &[e(0)], &mut counts);
        let rx2 = UdpRx::from_fd(rx.try_clone_fd().unwrap()).unwrap();
        drop(rx);
        assert_eq!(rx2.local_addr().unwrap().port(), port);
        assert_eq!(
            rx2.gro(),
            getsockopt_int(rx2.as_fd(), SOL_UDP, UDP_GRO).unwrap() != 0
        );
        let mut tx2 = UdpTx::from_fds(tx.try_clone_fds().unwrap()).unwrap();
        assert_eq!(tx2.local_ports(), tx.local_ports());
        assert_eq!(tx2.local_ip(), Some(Ipv4Addr::LOCALHOST));
        drop(tx);
        tx2.send(&[2u8; 100], &[e(1)], &mut counts);
        let mut batch = RecvBatch::new(8);
        let mut got = Vec::new();
        for _ in 0..100 {
            if let Ok(n) = rx2.recv(&mut batch) {
                for i in 0..n {
                    got.extend(batch.datagrams(i).unwrap().1.map(|d| d[0]));
                }
            }
            if got.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got.sort();
        assert_eq!(got, vec![1, 2], "queued before and sent after the takeover");
        // not a UDP socket: refused
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(UdpRx::from_fd(OwnedFd::from(t)).is_err());
        assert!(UdpTx::from_fds(vec![]).is_err());
    }

    #[test]
    fn a_call_takes_no_more_messages_than_its_limit() {
        // GRO off: each datagram is its own message.
        let rx = UdpRx::open(lo(0), 1 << 20, false).unwrap();
        let dst = rx.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..10u8 {
            tx.send_to(&[i; 300], dst).unwrap();
        }
        let mut batch = RecvBatch::new(8);
        assert_eq!(batch.limit(), 8, "the capacity unless set");
        batch.set_limit(0);
        assert_eq!(batch.limit(), 1, "at least one");
        batch.set_limit(100);
        assert_eq!(batch.limit(), 8, "at most the capacity");
        batch.set_limit(3);
        let mut calls = Vec::new();
        for _ in 0..100 {
            match rx.recv(&mut batch) {
                Ok(n) => {
                    assert_eq!(batch.len(), n);
                    assert_eq!(batch.bytes(), 300 * n);
                    let first = batch.datagrams(0).unwrap().1.next().unwrap()[0];
                    calls.push((n, first));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if calls.iter().map(|c| c.0).sum::<usize>() == 10 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        // Loopback queues all ten before the first call: three per call, in order.
        assert_eq!(calls, vec![(3, 0), (3, 3), (3, 6), (1, 9)]);
    }

    #[test]
    fn receive_buffer_set_and_read_back() {
        // Below the default rmem_max (208 KiB), so the result is the same with or
        // without CAP_NET_ADMIN: the kernel keeps twice what was asked.
        let rx = UdpRx::open(lo(0), 128 << 10, false).unwrap();
        assert_eq!(rx.rcvbuf(), Some(256 << 10));
        rx.set_rcvbuf(96 << 10);
        assert_eq!(rx.rcvbuf(), Some(192 << 10));
        // A socket taken over from another process keeps its buffer until set again.
        let again = UdpRx::from_fd(rx.try_clone_fd().unwrap()).unwrap();
        assert_eq!(again.rcvbuf(), Some(192 << 10));
    }

    #[test]
    fn non_gso_fallback_sends_each_datagram() {
        let rx = UdpRx::open(lo(0), 1 << 20, false).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 1, 1 << 20).unwrap();
        tx.disable_gso();
        let buf = vec![7u8; 3000];
        let dst = lo(port);
        let mut counts = LocalCounts::default();
        tx.send(
            &buf,
            &[SendEntry {
                dst,
                offset: 0,
                len: 3000,
                stride: 1400,
                socket: 0,
                tos: 0,
            }],
            &mut counts,
        );
        assert_eq!(counts.udp_datagrams_sent, 3);
        let mut batch = RecvBatch::new(8);
        let mut sizes = Vec::new();
        for _ in 0..100 {
            if let Ok(n) = rx.recv(&mut batch) {
                for i in 0..n {
                    sizes.extend(batch.datagrams(i).unwrap().1.map(|d| d.len()));
                }
            }
            if sizes.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(sizes, vec![1400, 1400, 200]);
    }

    /// A sender with IPv6 sockets next to its IPv4 ones, on the loopbacks.
    fn dual_tx(count: usize) -> UdpTx {
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, count, 1 << 20).unwrap();
        tx.add_ipv6(Ipv6Addr::LOCALHOST, 1 << 20).unwrap();
        tx
    }

    /// Loopback only: a GSO run to an IPv6 peer leaves from the IPv6 socket of its
    /// index and arrives, GRO-merged, whole: every datagram, its size, its bytes, from
    /// that socket's address.
    #[test]
    fn ipv6_gso_send_gro_receive_on_loopback() {
        if !ipv6_loopback() {
            return;
        }
        let rx = UdpRx::open(lo6(0), 1 << 20, true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = dual_tx(2);
        assert!(tx.has_ipv6());
        assert_eq!(tx.local_ip(), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(tx.local_ip6(), Some(Ipv6Addr::LOCALHOST));
        assert_eq!(tx.socket_count(), 2);
        let ports6 = tx.local_ports6();
        assert_eq!(ports6.len(), 2);
        assert!(ports6.iter().all(|&p| p != 0));
        let buf: Vec<u8> = (0..8 * 1200).map(|i| (i % 251) as u8).collect();
        let entries = [SendEntry {
            dst: lo6(port),
            offset: 0,
            len: buf.len(),
            stride: 1200,
            socket: 1,
            tos: 0,
        }];
        let mut counts = LocalCounts::default();
        tx.send(&buf, &entries, &mut counts);
        assert_eq!(counts.udp_datagrams_sent, 8);
        assert_eq!(counts.drops.iter().sum::<u64>(), 0);
        let (got, messages) = receive(&rx, 8);
        assert_eq!(got.len(), 8);
        assert!(got.iter().all(|g| g.0 == lo6(ports6[1])), "{:?}", got[0].0);
        assert!(got.iter().all(|g| g.2.len() == 1200));
        let bytes: Vec<u8> = got.into_iter().flat_map(|g| g.2).collect();
        assert_eq!(bytes, buf);
        if tx.gso() && rx.gro() {
            assert!(messages < 8, "GSO sent, GRO on, yet {messages} messages");
        }
    }

    /// Loopback only: an outer ECN field sent to an IPv6 peer (alone, and as a GSO run)
    /// travels in the traffic class and is read back per message (`IPV6_RECVTCLASS`).
    #[test]
    fn the_outer_traffic_class_is_sent_and_read_back() {
        if !ipv6_loopback() {
            return;
        }
        let rx = UdpRx::open(lo6(0), 1 << 20, true).unwrap();
        let dst = lo6(rx.local_addr().unwrap().port());
        let mut tx = dual_tx(1);
        let buf = vec![9u8; 3000];
        let mut counts = LocalCounts::default();
        // ECT(0) alone, CE as a GSO run, ECT(1), and Not-ECT
        for (len, stride, tos) in [
            (300, 300, 2u8),
            (3000, 1000, 3),
            (300, 300, 1),
            (300, 300, 0),
        ] {
            let e = SendEntry {
                dst,
                offset: 0,
                len,
                stride,
                socket: 0,
                tos,
            };
            tx.send(&buf, &[e], &mut counts);
            let (got, _) = receive(&rx, len / stride);
            assert_eq!(got.len(), len / stride, "tos {tos}");
            let ecn: Vec<_> = got.iter().map(|g| g.1).collect();
            assert!(ecn.iter().all(|&e| e == tos), "sent {tos}, read {ecn:?}");
        }
        assert_eq!(counts.drops[DropReason::SendFailed as usize], 0);
    }

    /// Loopback only: a batch that goes back and forth between IPv4 and IPv6 peers,
    /// and between sockets, reaches both, each in order, from the socket of each
    /// datagram's index in its family.
    #[test]
    fn a_mixed_batch_reaches_both_families_in_order() {
        if !ipv6_loopback() {
            return;
        }
        let rx4 = UdpRx::open(lo(0), 1 << 20, true).unwrap();
        let rx6 = UdpRx::open(lo6(0), 1 << 20, true).unwrap();
        let (p4, p6) = (
            rx4.local_addr().unwrap().port(),
            rx6.local_addr().unwrap().port(),
        );
        let mut tx = dual_tx(2);
        let mut batch = crate::send_batch::TxBatch::new(1 << 16, 32);
        let mut want4 = Vec::new();
        let mut want6 = Vec::new();
        for k in 0..24u8 {
            // runs of one to three datagrams per family, on either socket
            let ipv6 = k % 5 < 2;
            let socket = usize::from(k / 3 % 2);
            let (dst, want, from) = if ipv6 {
                (lo6(p6), &mut want6, lo6(tx.local_ports6()[socket]))
            } else {
                (lo(p4), &mut want4, lo(tx.local_ports()[socket]))
            };
            batch.spare()[..100].fill(k);
            let one = crate::offload::Segments {
                stride: 100,
                count: 1,
                len: 100,
            };
            assert!(batch.push(one, dst, socket, tx.gso(), 0));
            want.push((from, k));
        }
        let mut counts = LocalCounts::default();
        tx.send(batch.bytes(), batch.entries(), &mut counts);
        assert_eq!(counts.udp_datagrams_sent, 24);
        assert_eq!(counts.drops.iter().sum::<u64>(), 0);
        let firsts = |got: Vec<Got>| {
            got.into_iter()
                .map(|(src, _, d)| (src, d[0]))
                .collect::<Vec<_>>()
        };
        assert_eq!(firsts(receive(&rx4, want4.len()).0), want4);
        assert_eq!(firsts(receive(&rx6, want6.len()).0), want6);
    }

    /// Without IPv6 sockets, datagrams to IPv6 peers are counted as failed sends, one
    /// by one, and those to IPv4 peers around them still go out.
    #[test]
    fn ipv6_datagrams_without_ipv6_sockets_are_counted_failed() {
        let rx = UdpRx::open(lo(0), 1 << 20, false).unwrap();
        let dst = lo(rx.local_addr().unwrap().port());
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 2, 1 << 20).unwrap();
        assert!(!tx.has_ipv6());
        assert_eq!((tx.local_ip6(), tx.local_ports6()), (None, vec![]));
        let entry = |dst, offset, len, stride, socket| SendEntry {
            dst,
            offset,
            len,
            stride,
            socket,
            tos: 2,
        };
        let entries = [
            entry(dst, 0, 100, 100, 0),
            entry(lo6(8472), 100, 3000, 1000, 1),
            entry(lo6(8472), 3100, 100, 100, 0),
            entry(dst, 3200, 100, 100, 1),
        ];
        for gso in [true, false] {
            if !gso {
                tx.disable_gso();
            }
            let mut counts = LocalCounts::default();
            tx.send(&[5u8; 3300], &entries, &mut counts);
            assert_eq!(
                counts.drops[DropReason::SendFailed as usize],
                4,
                "gso {gso}"
            );
            assert_eq!(counts.udp_datagrams_sent, 2);
            assert_eq!(receive(&rx, 2).0.len(), 2);
        }
    }

    /// The send sockets of both families survive a handover as a list of descriptors:
    /// sorted back into their families, in their order, whatever the order of the list;
    /// a list that is not one sender's is refused.
    #[test]
    fn a_dual_sender_is_taken_over_with_both_families() {
        if !ipv6_loopback() {
            return;
        }
        let tx = dual_tx(3);
        let fds = tx.try_clone_fds().unwrap();
        assert_eq!(fds.len(), 6);
        let again = UdpTx::from_fds(fds).unwrap();
        assert_eq!(again.local_ports(), tx.local_ports());
        assert_eq!(again.local_ports6(), tx.local_ports6());
        assert_eq!(again.local_ip(), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(again.local_ip6(), Some(Ipv6Addr::LOCALHOST));
        assert_eq!((again.socket_count(), again.gso()), (3, tx.gso()));
        // interleaved: the same sockets, in the same order per family
        let mut fds = tx.try_clone_fds().unwrap();
        let six = fds.split_off(3);
        let mixed: Vec<_> = six.into_iter().zip(fds).flat_map(|(a, b)| [a, b]).collect();
        let mut again = UdpTx::from_fds(mixed).unwrap();
        assert_eq!(again.local_ports(), tx.local_ports());
        assert_eq!(again.local_ports6(), tx.local_ports6());
        // a clone has both families too, and sends from them
        let clone = again.try_clone().unwrap();
        assert_eq!(clone.local_ports6(), tx.local_ports6());
        let rx = UdpRx::open(lo6(0), 1 << 20, false).unwrap();
        let e = SendEntry {
            dst: lo6(rx.local_addr().unwrap().port()),
            offset: 0,
            len: 100,
            stride: 100,
            socket: 2,
            tos: 0,
        };
        drop(tx);
        let mut counts = LocalCounts::default();
        again.send(&[3u8; 100], &[e], &mut counts);
        let (got, _) = receive(&rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, lo6(clone.local_ports6()[2]));
        // not as many IPv6 sockets as IPv4 ones, or no IPv4 one: refused
        let mut fds = clone.try_clone_fds().unwrap();
        fds.pop();
        assert!(UdpTx::from_fds(fds).is_err());
        let fds = clone.try_clone_fds().unwrap().split_off(3);
        assert!(UdpTx::from_fds(fds).is_err());
    }

    /// The IPv6 receive socket binds beside the IPv4 one on the same port, takes IPv6
    /// only, and shares its port with no other socket; taken over through a second
    /// descriptor it still asks for the traffic class.
    #[test]
    fn the_ipv6_receive_socket_sits_beside_the_ipv4_one() {
        if !ipv6_loopback() {
            return;
        }
        let rx4 = UdpRx::open(lo(0), 1 << 20, true).unwrap();
        let port = rx4.local_addr().unwrap().port();
        let rx6 = UdpRx::open(lo6(port), 1 << 20, true).unwrap();
        assert_eq!(rx6.local_addr(), Some(lo6(port)));
        assert_eq!(rx6.gro(), rx4.gro());
        assert!(rx6.socket.only_v6().unwrap());
        match UdpRx::open(lo6(port), 1 << 20, true) {
            Err(UdpError::Bind { addr, source }) => {
                assert_eq!(addr, lo6(port));
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            }
            other => panic!("a second IPv6 socket on the port: {other:?}"),
        }
        let tclass = |rx: &UdpRx| {
            getsockopt_int(rx.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS).unwrap()
        };
        assert_eq!(tclass(&rx6), 1);
        // taken over: the option is asked for again (a predecessor may not have)
        setsockopt_int(rx6.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 0).unwrap();
        let rx6 = UdpRx::from_fd(rx6.try_clone_fd().unwrap()).unwrap();
        assert_eq!(rx6.local_addr(), Some(lo6(port)));
        assert_eq!(tclass(&rx6), 1);
        assert_eq!(
            getsockopt_int(rx4.as_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS).unwrap(),
            1
        );
        // each gets its own family's datagrams
        let mut tx = dual_tx(1);
        let e = |dst, offset| SendEntry {
            dst,
            offset,
            len: 100,
            stride: 100,
            socket: 0,
            tos: 0,
        };
        let buf: Vec<u8> = [[4u8; 100], [6u8; 100]].concat();
        let mut counts = LocalCounts::default();
        tx.send(&buf, &[e(lo(port), 0), e(lo6(port), 100)], &mut counts);
        let (got4, _) = receive(&rx4, 1);
        let (got6, _) = receive(&rx6, 1);
        assert_eq!((got4.len(), got4[0].2[0]), (1, 4));
        assert_eq!((got6.len(), got6[0].2[0]), (1, 6));
    }

    #[test]
    fn inner_destination_macs_rewritten_in_place() {
        let from = [0x06, 0, 0, 0, 0, 2];
        let to = [0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44];
        let other = [0x06, 0, 0, 0, 0, 9];
        // Three 30-byte datagrams in one GRO message, the second to another MAC; a
        // datagram too short to hold a destination MAC; a message of one datagram.
        let dg = |mac: [u8; 6]| {
            let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            d.extend_from_slice(&mac);
            d.extend_from_slice(&[0xaa; 16]);
            d
        };
        let mut train = dg(from);
        train.extend(dg(other));
        train.extend(dg(from));
        train.extend_from_slice(&[0x08, 0, 0]);
        let one = dg(from);
        let src: SocketAddr = "[fd00:64::12]:4789".parse().unwrap();
        let mut b = RecvBatch::with_messages(&[(src, 30, &train), (src, 0, &one)]);
        assert_eq!(b.rewrite_inner_dst(0, from, to), 2);
        assert_eq!(b.rewrite_inner_dst(1, from, to), 1);
        assert_eq!(b.rewrite_inner_dst(2, from, to), 0, "no such message");
        let m = b.message(0).unwrap();
        let got: Vec<&[u8]> = m.datagrams.map(|d| d.get(8..14).unwrap_or(&[])).collect();
        assert_eq!(got, [&to[..], &other[..], &to[..], &[][..]]);
        // Everything else as it was.
        let all: Vec<u8> = b.message(0).unwrap().datagrams.flatten().copied().collect();
        let mut want = dg(to);
        want.extend(dg(other));
        want.extend(dg(to));
        want.extend_from_slice(&[0x08, 0, 0]);
        assert_eq!(all, want);
        assert_eq!(b.message(1).unwrap().datagrams.next().unwrap(), &dg(to)[..]);
        // Done again, nothing left to rewrite.
        assert_eq!(b.rewrite_inner_dst(0, from, to), 0);
    }
}
