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

/// An eventfd that, once signalled, stays readable: the engine's threads wait on it
/// beside their data descriptor, so a stop wakes them at once and an idle thread
/// needs no timeout (no periodic wake-ups: a thousand idle agents on one host cost
/// nothing while nothing arrives).
#[derive(Debug)]
pub struct Wake(std::os::fd::OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor this function owns and nothing else holds.
        Ok(Wake(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable for good (it is never read).
    pub fn signal(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which outlives the call, to an fd we own.
        let n = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // Already at the counter's maximum: readable anyway.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

/// `poll(2)` until `fd` or `wake` is readable, without a timeout. Returns on a
/// signal too (`EINTR`); the caller loops.
pub fn wait_either(fd: std::os::fd::BorrowedFd<'_>, wake: &Wake) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut pfds = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `pfds` is a valid array of two pollfds for the duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}
