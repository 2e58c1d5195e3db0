//! File descriptors that cross a process boundary: sent over a unix socket
//! (`SCM_RIGHTS`), inherited from the parent (systemd's `LISTEN_FDS` protocol),
//! a memory file for state that travels with them (`memfd_create`), and who is at
//! the other end of a unix socket (`SO_PEERCRED`).
//!
//! This is what lets a new vxmeshd take the TAP queues and UDP sockets of a running
//! one (the handover) or get them back from systemd's file descriptor store: a
//! passed descriptor refers to the same open file, so the TAP queue stays attached
//! and the socket keeps its port and its queued datagrams.
//!
//! Read first: `unix(7)` (SCM_RIGHTS, SO_PEERCRED, MSG_CMSG_CLOEXEC), `cmsg(3)`,
//! `memfd_create(2)`, `sd_listen_fds(3)`. The control-message layout is parsed
//! from bytes ([`parse_rights`]), never by trusting a length the peer wrote.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Most descriptors one message may carry (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 64;
/// The first descriptor a `LISTEN_FDS` parent passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

const HDR: usize = size_of::<libc::cmsghdr>();

/// `CMSG_SPACE(n * sizeof(int))`: header plus data, padded to the header's alignment.
const fn cmsg_space(fds: usize) -> usize {
    HDR + ((fds * size_of::<libc::c_int>() + size_of::<usize>() - 1) & !(size_of::<usize>() - 1))
}

/// A control buffer for one SCM_RIGHTS message, aligned like a `cmsghdr`.
#[repr(C)]
struct RightsCmsg {
    hdr: libc::cmsghdr,
    fds: [libc::c_int; MAX_FDS],
}

/// Sends `data` with `fds` attached (one `sendmsg`); returns the bytes sent. The
/// receiver gets its own descriptors for the same open files.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message (at most {MAX_FDS})",
                fds.len()
            ),
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: cmsghdr and msghdr are plain old data; all-zero is a valid value.
    let mut cmsg: RightsCmsg = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        cmsg.hdr.cmsg_len = (HDR + fds.len() * size_of::<libc::c_int>()) as _;
        cmsg.hdr.cmsg_level = libc::SOL_SOCKET;
        cmsg.hdr.cmsg_type = libc::SCM_RIGHTS;
        for (slot, fd) in cmsg.fds.iter_mut().zip(fds) {
            *slot = fd.as_raw_fd();
        }
        msg.msg_control = (&mut cmsg as *mut RightsCmsg).cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
    }
    loop {
        // SAFETY: `msg` points at `iov` (into `data`, borrowed for the call) and at
        // `cmsg`, both live locals; msg_controllen ≤ size_of::<RightsCmsg>() since
        // fds.len() ≤ MAX_FDS. MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What one [`recv_with_fds`] returned.
#[derive(Debug)]
pub struct Received {
    /// Bytes written to the caller's buffer (0: the peer closed the connection).
    pub len: usize,
    /// Descriptors that came with them, close-on-exec, owned by us now.
    pub fds: Vec<OwnedFd>,
}

/// Receives into `buf`, collecting any descriptors sent with the data. Errors if
/// the peer sent more descriptors than [`MAX_FDS`] (the kernel closed the rest).
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain old data; all-zero is valid.
    let mut cmsg: RightsCmsg = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut cmsg as *mut RightsCmsg).cast();
    msg.msg_controllen = size_of::<RightsCmsg>() as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (into `buf`, borrowed mutably for the call)
        // and at `cmsg`, live locals of the sizes declared.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let clen = (msg.msg_controllen as usize).min(size_of::<RightsCmsg>());
    // SAFETY: the first `clen` bytes of `cmsg` are initialised (zeroed, then
    // written by the kernel) and lie inside it.
    let control =
        unsafe { std::slice::from_raw_parts((&cmsg as *const RightsCmsg).cast::<u8>(), clen) };
    let fds = parse_rights(control)
        .into_iter()
        // SAFETY: the kernel just installed these descriptors in our table for this
        // message; nothing else in the process knows their numbers yet.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect::<Vec<_>>();
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer sent more than {MAX_FDS} descriptors in one message"),
        ));
    }
    Ok(Received { len: n, fds })
}

/// The descriptor numbers in a control buffer's SCM_RIGHTS messages. Pure: a
/// length that points past the buffer ends the walk.
pub fn parse_rights(control: &[u8]) -> Vec<RawFd> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + HDR <= control.len() {
        let Some(len) = read_usize(control, at) else {
            break;
        };
        let (Some(level), Some(ty)) = (
            read_i32(control, at + size_of::<usize>()),
            read_i32(control, at + size_of::<usize>() + 4),
        ) else {
            break;
        };
        if len < HDR || at + len > control.len() {
            break;
        }
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            let mut p = at + HDR;
            while p + 4 <= at + len {
                if let Some(fd) = read_i32(control, p) {
                    out.push(fd);
                }
                p += 4;
            }
        }
        at += (len + size_of::<usize>() - 1) & !(size_of::<usize>() - 1);
    }
    out
}

fn read_usize(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from_ne_bytes(
        b.get(at..at + size_of::<usize>())?.try_into().ok()?,
    ))
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the `count` descriptors a parent passed from fd 3 on (the
/// `LISTEN_FDS` protocol), making them close-on-exec. Succeeds at most once per
/// process; call it early, before the process opens descriptors of its own, and
/// only when the parent said so (`LISTEN_PID` is our pid).
pub fn take_inherited_fds(count: usize) -> io::Result<Vec<OwnedFd>> {
    if count > MAX_FDS * 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("LISTEN_FDS={count} is implausible"),
        ));
    }
    if INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("inherited descriptors were already taken"));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let fd = LISTEN_FDS_START + i as RawFd;
        // SAFETY: F_GETFD only reads the flags of descriptor `fd` (EBADF if closed).
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "descriptor {fd} announced by LISTEN_FDS is not open: {}",
                    io::Error::last_os_error()
                ),
            ));
        }
        // SAFETY: F_SETFD sets this descriptor's flags; no memory is involved.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: the parent passed descriptors LISTEN_FDS_START.. to us (the caller
        // checked LISTEN_PID) and they are open (checked above); INHERITED_TAKEN makes
        // this run once, so each number becomes owned exactly once.
        out.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(out)
}

/// A memory-backed file (`memfd_create`, close-on-exec): state that can be passed
/// along with descriptors and outlives the process that wrote it while another
/// process (or systemd's descriptor store) holds it.
pub fn memfd(name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is a NUL-terminated string borrowed for the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this new descriptor; we are its only owner.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Process, user and group at the other end of a connected unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `SO_PEERCRED`: who connected (or listened), as the kernel recorded it.
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `c`, a live local of that size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: c.pid as u32,
        uid: c.uid,
        gid: c.gid,
    })
}

/// Our effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn cmsg_space_matches_libc() {
        for n in [0usize, 1, 2, 3, 7, 64] {
            // SAFETY: CMSG_SPACE is arithmetic on its argument.
            let want = unsafe { libc::CMSG_SPACE((n * 4) as u32) } as usize;
            assert_eq!(cmsg_space(n), want, "{n} fds");
        }
        assert!(cmsg_space(MAX_FDS) <= size_of::<RightsCmsg>());
    }

    #[test]
    fn parse_rights_walks_and_bounds() {
        let mut b = vec![0u8; cmsg_space(2) + cmsg_space(1)];
        let put = |b: &mut Vec<u8>, at: usize, len: usize, level: i32, ty: i32, fds: &[i32]| {
            b[at..at + 8].copy_from_slice(&len.to_ne_bytes());
            b[at + 8..at + 12].copy_from_slice(&level.to_ne_bytes());
            b[at + 12..at + 16].copy_from_slice(&ty.to_ne_bytes());
            for (i, fd) in fds.iter().enumerate() {
                b[at + HDR + 4 * i..at + HDR + 4 * i + 4].copy_from_slice(&fd.to_ne_bytes());
            }
        };
        put(
            &mut b,
            0,
            HDR + 8,
            libc::SOL_SOCKET,
            libc::SCM_RIGHTS,
            &[7, 9],
        );
        put(
            &mut b,
            cmsg_space(2),
            HDR + 4,
            libc::SOL_SOCKET,
            libc::SCM_RIGHTS,
            &[11],
        );
        assert_eq!(parse_rights(&b), vec![7, 9, 11]);
        // another message type is skipped
        put(&mut b, 0, HDR + 8, libc::SOL_SOCKET, 2, &[7, 9]);
        assert_eq!(parse_rights(&b), vec![11]);
        // a length past the end stops the walk; a too-short one too
        put(&mut b, 0, 4096, libc::SOL_SOCKET, libc::SCM_RIGHTS, &[7, 9]);
        assert_eq!(parse_rights(&b), Vec::<i32>::new());
        put(&mut b, 0, 3, libc::SOL_SOCKET, libc::SCM_RIGHTS, &[7, 9]);
        assert_eq!(parse_rights(&b), Vec::<i32>::new());
        assert_eq!(parse_rights(&[]), Vec::<i32>::new());
        assert_eq!(parse_rights(&b[..HDR - 1]), Vec::<i32>::new());
    }

    /// A file sent over a socket is the same open file on the other side: writes
    /// through one descriptor are read through the other.
    #[test]
    fn descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut f = memfd(c"vxmesh-test").unwrap();
        f.write_all(b"state").unwrap();
        let (p, q) = UnixDatagram::pair().unwrap();
        let sent = send_with_fds(a.as_fd(), b"hello", &[f.as_fd(), p.as_fd()]).unwrap();
        assert_eq!(sent, 5);
        let mut buf = [0u8; 16];
        let r = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert_eq!(r.fds.len(), 2);
        let mut it = r.fds.into_iter();
        let mut got = File::from(it.next().unwrap());
        got.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "state");
        let p2 = UnixDatagram::from(it.next().unwrap());
        p2.send(b"x").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(q.recv(&mut one).unwrap(), 1);
        // received descriptors are close-on-exec
        let fd = got.as_raw_fd();
        // SAFETY: F_GETFD reads flags only.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC != 0);
    }

    #[test]
    fn plain_data_and_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b"abc", &[]).unwrap();
        let mut buf = [0u8; 8];
        let r = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((r.len, r.fds.len()), (3, 0));
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf).unwrap().len, 0);
    }

    #[test]
    fn too_many_descriptors_refused_before_sending() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fds: Vec<BorrowedFd<'_>> = (0..MAX_FDS + 1).map(|_| a.as_fd()).collect();
        assert!(send_with_fds(a.as_fd(), b"x", &fds).is_err());
    }

    #[test]
    fn peer_credentials_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_cred(a.as_fd()).unwrap();
        assert_eq!(c.uid, euid());
        assert_eq!(c.pid, std::process::id());
    }
}
