//! The thin system-call shells under the dataplane: the TAP device, the UDP
//! sockets, and passing their descriptors between processes (the handover).
//! Everything `unsafe` in the dataplane lives here, one syscall per block, each
//! with a `// SAFETY:` line.

pub mod fdpass;
pub mod tap;
pub mod udp;

pub use tap::{Tap, TapError, TapOffloads, TapOptions};
pub use udp::{RecvBatch, SendEntry, UdpError, UdpRx, UdpTx};

use std::io;

/// `poll(2)` one fd for readability; `Ok(false)` on timeout.
pub fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0)
}
