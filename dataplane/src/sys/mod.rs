//! The thin system-call shells under the dataplane: the TAP device, the UDP
//! sockets, and passing their descriptors between processes (the handover).
//! Everything `unsafe` in the dataplane lives here, one syscall per block, each
//! with a `// SAFETY:` line.

pub mod fdpass;
pub mod tap;
pub mod udp;

pub use tap::{Tap, TapError, TapOffloads, TapOptions, UnderlayTap};
pub use udp::{RecvBatch, SendEntry, UdpError, UdpRx, UdpTx};

use std::io;

/// Returns the heap's free memory to the kernel (`malloc_trim(0)`, glibc): after a
/// burst — a node starting into a big cluster decodes, judges and programs a thousand
/// leases at once — the allocator keeps the freed pages, and the agent's RSS stays at
/// the burst's peak. A no-op where the C library has no such call. Returns whether
/// anything was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only walks the allocator's own
        // arenas, under their locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

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
    poll_either(fd, wake, -1).map(|_| ())
}

/// Whether `fd` or `wake` is readable now: `poll(2)` with a zero timeout, for a
/// thread that checks again before it sleeps (`--busy-poll`). A signal (`EINTR`)
/// reads as "not yet".
pub fn ready_either(fd: std::os::fd::BorrowedFd<'_>, wake: &Wake) -> io::Result<bool> {
    poll_either(fd, wake, 0)
}

/// `poll(2)` on `fd` and `wake` for `timeout_ms` (-1: no timeout); whether either is
/// readable.
fn poll_either(fd: std::os::fd::BorrowedFd<'_>, wake: &Wake, timeout_ms: i32) -> io::Result<bool> {
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
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok(false);
    }
    Ok(n > 0)
}
