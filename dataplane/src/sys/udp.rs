//! The underlay UDP sockets: batched sends with UDP GSO, batched receives with UDP GRO.
//!
//! Transmit: a handful of sockets bound to the node's PublicIP on ephemeral ports;
//! the inner flow hash picks one, so the outer source port varies per flow (RFC 7348
//! §5) while one flow always leaves from one socket (no reordering). One
//! `sendmmsg(2)` carries up to 64 messages; each message may carry many equal-sized
//! VXLAN datagrams with a `UDP_SEGMENT` control message (Linux UDP GSO), so a 64 KiB
//! TCP burst costs one or two system calls instead of ~45.
//!
//! Receive: one socket on the VXLAN port with `UDP_GRO`, read with `recvmmsg(2)`;
//! each message may hold several datagrams of one size (given in a `UDP_GRO`
//! control message), which [`RecvBatch::datagrams`] splits again.
//!
//! If the kernel refuses GSO at send time (EIO: no checksum offload on the route;
//! EINVAL) we fall back to one datagram per message for good, count it and say so.
//! Read first: Linux `udp(7)` (UDP_SEGMENT, UDP_GRO), `sendmmsg(2)`, `recvmmsg(2)`.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::counters::{DropReason, LocalCounts};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Most datagrams one GSO send may carry (`UDP_MAX_SEGMENTS`).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes one IPv4 UDP send may carry.
pub const GSO_MAX_BYTES: usize = 65_507;
/// Messages per sendmmsg/recvmmsg call.
pub const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("cannot create UDP socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot bind UDP {addr}: {source} (is another VXLAN endpoint, e.g. a kernel vxlan device or flanneld, using this port on this node?)")]
    Bind {
        addr: SocketAddrV4,
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

/// One message of a send batch: `len` bytes at `offset` of the batch buffer, cut
/// into datagrams of `stride` bytes (the last may be shorter), to `dst`, from
/// transmit socket `socket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendEntry {
    pub dst: SocketAddrV4,
    pub offset: usize,
    pub len: usize,
    pub stride: usize,
    pub socket: usize,
}

impl SendEntry {
    /// Number of datagrams this entry carries.
    pub fn datagrams(&self) -> usize {
        if self.stride == 0 || self.len <= self.stride {
            1
        } else {
            self.len.div_ceil(self.stride)
        }
    }
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

/// Checks that a passed descriptor is a bound IPv4 UDP socket; its address.
fn adopt_udp(fd: OwnedFd) -> io::Result<(Socket, SocketAddrV4)> {
    let s = Socket::from(fd);
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if s.r#type()? != Type::DGRAM {
        return Err(bad("the descriptor is not a datagram socket".into()));
    }
    match s.local_addr()?.as_socket() {
        Some(SocketAddr::V4(a)) if a.port() != 0 => Ok((s, a)),
        other => Err(bad(format!(
            "the descriptor is not a bound IPv4 UDP socket ({other:?})"
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

/// The transmit side.
#[derive(Debug)]
pub struct UdpTx {
    sockets: Vec<Socket>,
    gso: bool,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    hdr: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

impl UdpTx {
    /// Opens `count` sockets bound to `bind_ip` on ephemeral ports.
    pub fn open(bind_ip: Ipv4Addr, count: usize, sndbuf: usize) -> Result<UdpTx, UdpError> {
        let mut sockets = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))
                .map_err(UdpError::Socket)?;
            let addr = SocketAddrV4::new(bind_ip, 0);
            s.bind(&SockAddr::from(addr))
                .map_err(|source| UdpError::Bind { addr, source })?;
            // Like the kernel vxlan driver's default: outer packets do not set DF.
            setsockopt_int(
                s.as_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
            .map_err(|source| UdpError::Option {
                what: "IP_MTU_DISCOVER",
                source,
            })?;
            set_buffer(&s, sndbuf, true);
            sockets.push(s);
        }
        // Probe: the kernel knows UDP_SEGMENT if it accepts the socket option.
        let gso = setsockopt_int(sockets[0].as_fd(), SOL_UDP, UDP_SEGMENT, 1400).is_ok()
            && setsockopt_int(sockets[0].as_fd(), SOL_UDP, UDP_SEGMENT, 0).is_ok();
        Ok(UdpTx { sockets, gso })
    }

    /// Another handle on the same sockets (same source ports), for a second
    /// egress thread.
    pub fn try_clone(&self) -> io::Result<UdpTx> {
        let sockets = self
            .sockets
            .iter()
            .map(Socket::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(UdpTx {
            sockets,
            gso: self.gso,
        })
    }

    /// Takes send sockets another process opened (descriptors passed to us),
    /// probing UDP GSO again.
    pub fn from_fds(fds: Vec<OwnedFd>) -> io::Result<UdpTx> {
        if fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no send socket",
            ));
        }
        let sockets = fds
            .into_iter()
            .map(|fd| adopt_udp(fd).map(|(s, _)| s))
            .collect::<io::Result<Vec<_>>>()?;
        let gso = setsockopt_int(sockets[0].as_fd(), SOL_UDP, UDP_SEGMENT, 1400).is_ok()
            && setsockopt_int(sockets[0].as_fd(), SOL_UDP, UDP_SEGMENT, 0).is_ok();
        Ok(UdpTx { sockets, gso })
    }

    /// Second descriptors for the send sockets (to pass to another process).
    pub fn try_clone_fds(&self) -> io::Result<Vec<OwnedFd>> {
        self.sockets
            .iter()
            .map(|s| s.as_fd().try_clone_to_owned())
            .collect()
    }

    /// Whether sends use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Turns GSO off (tests, or an operator's `--no-udp-gso`).
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// The local source ports, for logs and tests.
    pub fn local_ports(&self) -> Vec<u16> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok()?.as_socket().map(|a| a.port()))
            .collect()
    }

    /// Sends every entry (consecutive entries for one socket share a sendmmsg).
    /// Failures are counted as [`DropReason::SendFailed`] per datagram.
    pub fn send(&mut self, buf: &[u8], entries: &[SendEntry], counts: &mut LocalCounts) {
        let mut i = 0;
        while i < entries.len() {
            let sock = entries[i].socket % self.sockets.len();
            let mut j = i + 1;
            while j < entries.len()
                && j - i < BATCH
                && entries[j].socket % self.sockets.len() == sock
            {
                j += 1;
            }
            self.send_run(sock, buf, &entries[i..j], counts);
            i = j;
        }
    }

    fn send_run(&mut self, sock: usize, buf: &[u8], run: &[SendEntry], counts: &mut LocalCounts) {
        let mut k = 0;
        while k < run.len() {
            let use_gso = self.gso;
            match self.sendmmsg(sock, buf, &run[k..], use_gso) {
                Ok(sent) => {
                    for e in &run[k..k + sent] {
                        counts.udp_datagrams_sent += e.datagrams() as u64;
                        counts.udp_bytes_sent += e.len as u64;
                    }
                    counts.udp_send_syscalls += 1;
                    k += sent;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if use_gso
                        && run[k].datagrams() > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    // The route cannot checksum-offload (EIO) or refuses this
                    // segmentation (EINVAL): stop using GSO and resend this entry
                    // one datagram at a time.
                    self.gso = false;
                    counts.udp_gso_fallbacks += 1;
                    tracing::warn!(error = %e, "UDP GSO send refused; falling back to one datagram per send");
                }
                Err(_) => {
                    counts.udp_send_syscalls += 1;
                    for _ in 0..run[k].datagrams() {
                        counts.drop(DropReason::SendFailed);
                    }
                    k += 1;
                }
            }
        }
    }

    /// One sendmmsg call; returns how many entries were sent (≥ 1) or the error
    /// of the first one.
    fn sendmmsg(&self, sock: usize, buf: &[u8], run: &[SendEntry], gso: bool) -> io::Result<usize> {
        // Without GSO every datagram of an entry is its own message.
        let mut names: [libc::sockaddr_in; BATCH] =
            [sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH];
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: cmsghdr is plain old data; all-zero is a valid value.
        let zero_hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        let mut cmsgs = [GsoCmsg {
            hdr: zero_hdr,
            segment: 0,
            _pad: [0; 6],
        }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };

        let mut n = 0; // messages
        let mut entries_used = 0;
        'outer: for e in run {
            if gso || e.datagrams() == 1 {
                if n == BATCH {
                    break;
                }
                names[n] = sockaddr_in(e.dst);
                iovs[n] = iovec(&buf[e.offset..e.offset + e.len]);
                if gso && e.datagrams() > 1 {
                    cmsgs[n].hdr.cmsg_len = cmsg_len(size_of::<u16>());
                    cmsgs[n].hdr.cmsg_level = SOL_UDP;
                    cmsgs[n].hdr.cmsg_type = UDP_SEGMENT;
                    cmsgs[n].segment = e.stride as u16;
                }
                n += 1;
            } else {
                // Only whole entries: an entry's datagrams must not straddle calls.
                if n + e.datagrams() > BATCH {
                    if n == 0 {
                        // Larger than one batch: send it in pieces right here.
                        return self.send_split(sock, buf, e).map(|()| 1);
                    }
                    break 'outer;
                }
                let mut off = e.offset;
                let end = e.offset + e.len;
                while off < end {
                    let l = e.stride.min(end - off);
                    names[n] = sockaddr_in(e.dst);
                    iovs[n] = iovec(&buf[off..off + l]);
                    n += 1;
                    off += l;
                }
            }
            entries_used += 1;
        }
        for i in 0..n {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if cmsgs[i].hdr.cmsg_len != 0 {
                h.msg_control = (&mut cmsgs[i] as *mut GsoCmsg).cast();
                h.msg_controllen = size_of::<GsoCmsg>() as _;
            }
        }
        // SAFETY: `msgs[..n]` point at `names`, `iovs` and `cmsgs`, locals that live
        // until the call returns; each iovec points into `buf`, borrowed for the call.
        let r = unsafe {
            libc::sendmmsg(
                self.sockets[sock].as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let sent_msgs = r as usize;
        if sent_msgs == n {
            return Ok(entries_used.max(1));
        }
        // Partial: count whole entries covered by the messages that went out.
        let mut covered = 0;
        let mut msgs_seen = 0;
        for e in &run[..entries_used] {
            let m = if gso { 1 } else { e.datagrams() };
            if msgs_seen + m > sent_msgs {
                break;
            }
            msgs_seen += m;
            covered += 1;
        }
        Ok(covered.max(1))
    }

    /// Sends one entry as single datagrams in as many calls as it takes.
    fn send_split(&self, sock: usize, buf: &[u8], e: &SendEntry) -> io::Result<()> {
        let mut off = e.offset;
        let end = e.offset + e.len;
        let addr = SockAddr::from(e.dst);
        while off < end {
            let l = e.stride.min(end - off);
            self.sockets[sock].send_to(&buf[off..off + l], &addr)?;
            off += l;
        }
        Ok(())
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

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

fn cmsg_len(data: usize) -> usize {
    size_of::<libc::cmsghdr>() + data
}

/// One receive slot: 64 KiB is the largest a GRO-coalesced message can be.
const RECV_BUF: usize = 65_536;
/// Control buffer per message: room for UDP_GRO's int (and a spare header).
const CMSG_BUF: usize = 64;

/// Buffers for one `recvmmsg` call, allocated once.
#[derive(Debug)]
pub struct RecvBatch {
    data: Vec<u8>,
    control: Vec<u64>,
    lens: Vec<usize>,
    srcs: Vec<SocketAddrV4>,
    segs: Vec<usize>,
    truncated: Vec<bool>,
    count: usize,
}

impl RecvBatch {
    pub fn new(messages: usize) -> RecvBatch {
        let m = messages.clamp(1, BATCH);
        RecvBatch {
            data: vec![0; m * RECV_BUF],
            control: vec![0; m * CMSG_BUF / 8],
            lens: vec![0; m],
            srcs: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); m],
            segs: vec![0; m],
            truncated: vec![false; m],
            count: 0,
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
    /// A truncated message yields `None` (count it as malformed).
    pub fn datagrams(&self, i: usize) -> Option<(SocketAddrV4, std::slice::Chunks<'_, u8>)> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let msg = &self.data[i * RECV_BUF..i * RECV_BUF + self.lens[i]];
        let seg = if self.segs[i] == 0 {
            msg.len().max(1)
        } else {
            self.segs[i]
        };
        Some((self.srcs[i], msg.chunks(seg)))
    }
}

/// Reads the UDP_GRO segment size out of a control buffer, if present.
fn parse_gro_cmsg(control: &[u8]) -> Option<usize> {
    let hdr = size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + hdr <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + size_of::<usize>()].try_into().ok()?);
        let level_at = at + size_of::<usize>();
        let level = i32::from_ne_bytes(control[level_at..level_at + 4].try_into().ok()?);
        let ty = i32::from_ne_bytes(control[level_at + 4..level_at + 8].try_into().ok()?);
        if len < hdr || at + len > control.len() {
            return None;
        }
        if level == SOL_UDP && ty == UDP_GRO && len >= hdr + 4 {
            let v = i32::from_ne_bytes(control[at + hdr..at + hdr + 4].try_into().ok()?);
            return usize::try_from(v).ok().filter(|&v| v > 0);
        }
        at += (len + 7) & !7;
    }
    None
}

/// The receive side: one socket on the VXLAN port.
#[derive(Debug)]
pub struct UdpRx {
    socket: Socket,
    gro: bool,
}

impl UdpRx {
    /// Binds `addr` (usually 0.0.0.0:8472), non-blocking, asking for UDP GRO.
    pub fn open(addr: SocketAddrV4, rcvbuf: usize, want_gro: bool) -> Result<UdpRx, UdpError> {
        let s = Socket::new(
            Domain::IPV4,
            Type::DGRAM.cloexec().nonblocking(),
            Some(Protocol::UDP),
        )
        .map_err(UdpError::Socket)?;
        s.bind(&SockAddr::from(addr))
            .map_err(|source| UdpError::Bind { addr, source })?;
        set_buffer(&s, rcvbuf, false);
        let gro = want_gro && setsockopt_int(s.as_fd(), SOL_UDP, UDP_GRO, 1).is_ok();
        Ok(UdpRx { socket: s, gro })
    }

    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Takes the receive socket another process opened (descriptor passed to us):
    /// must be a bound UDP socket; non-blocking and UDP GRO are read back from it
    /// (they belong to the shared socket, not to a process).
    pub fn from_fd(fd: OwnedFd) -> io::Result<UdpRx> {
        let (socket, _) = adopt_udp(fd)?;
        socket.set_nonblocking(true)?;
        let gro = getsockopt_int(socket.as_fd(), SOL_UDP, UDP_GRO).is_ok_and(|v| v != 0);
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
        let m = batch.lens.len();
        // SAFETY: sockaddr_in and mmsghdr are plain old data; zero is valid.
        let mut names: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        let data = batch.data.as_mut_ptr();
        let control = batch.control.as_mut_ptr().cast::<u8>();
        for i in 0..m {
            // SAFETY: i < m and `data` holds m * RECV_BUF bytes.
            iovs[i].iov_base = unsafe { data.add(i * RECV_BUF) }.cast();
            iovs[i].iov_len = RECV_BUF;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            // SAFETY: i < m and `control` holds m * CMSG_BUF bytes (8-byte aligned).
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
            batch.truncated[i] = h.msg_flags & libc::MSG_TRUNC != 0;
            let sa = &names[i];
            batch.srcs[i] = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            );
            let clen = (h.msg_controllen as usize).min(CMSG_BUF);
            // SAFETY: the control area of message i is CMSG_BUF initialised bytes
            // (the Vec is zero-filled) inside `batch.control`.
            let ctl = unsafe { std::slice::from_raw_parts(control.add(i * CMSG_BUF), clen) };
            batch.segs[i] = parse_gro_cmsg(ctl).unwrap_or(0);
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

    #[test]
    fn entry_datagram_count() {
        let e = |len, stride| SendEntry {
            dst: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            offset: 0,
            len,
            stride,
            socket: 0,
        };
        assert_eq!(e(100, 0).datagrams(), 1);
        assert_eq!(e(100, 100).datagrams(), 1);
        assert_eq!(e(201, 100).datagrams(), 3);
        assert_eq!(e(200, 100).datagrams(), 2);
    }

    #[test]
    fn gro_cmsg_parse() {
        let hdr = size_of::<libc::cmsghdr>();
        let mut b = vec![0u8; 64];
        b[..8].copy_from_slice(&(hdr + 4).to_ne_bytes());
        b[8..12].copy_from_slice(&SOL_UDP.to_ne_bytes());
        b[12..16].copy_from_slice(&UDP_GRO.to_ne_bytes());
        b[hdr..hdr + 4].copy_from_slice(&1472i32.to_ne_bytes());
        assert_eq!(parse_gro_cmsg(&b[..hdr + 8]), Some(1472));
        assert_eq!(parse_gro_cmsg(&[]), None);
        assert_eq!(parse_gro_cmsg(&b[..hdr - 1]), None);
        // a length field that points past the buffer is ignored, not trusted
        b[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(parse_gro_cmsg(&b), None);
    }

    /// Loopback only: GSO-send a burst and GRO-receive it, byte for byte.
    #[test]
    fn gso_send_gro_receive_on_loopback() {
        let rx = UdpRx::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 2, 1 << 20).unwrap();
        let mut buf = vec![0u8; 10 * 1000 + 500];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let entries = [SendEntry {
            dst,
            offset: 0,
            len: 10_500,
            stride: 1000,
            socket: 0,
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
                        assert_eq!(*src.ip(), Ipv4Addr::LOCALHOST);
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
        let rx = UdpRx::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, true).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 2, 1 << 20).unwrap();
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut counts = LocalCounts::default();
        let e = |socket| SendEntry {
            dst,
            offset: 0,
            len: 100,
            stride: 100,
            socket,
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
    fn non_gso_fallback_sends_each_datagram() {
        let rx = UdpRx::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 20, false).unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open(Ipv4Addr::LOCALHOST, 1, 1 << 20).unwrap();
        tx.disable_gso();
        let buf = vec![7u8; 3000];
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut counts = LocalCounts::default();
        tx.send(
            &buf,
            &[SendEntry {
                dst,
                offset: 0,
                len: 3000,
                stride: 1400,
                socket: 0,
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
}
