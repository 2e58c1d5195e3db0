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

/// Gives the pages wholly inside `buf` back to the system (`madvise(MADV_DONTNEED)`):
/// they read as zeros afterwards and cost a page fault each when written again. For
/// a packet thread's buffers after it has gone quiet: a burst touches up to 4 MiB of
/// them, which otherwise stay resident for as long as the agent runs. Returns the
/// bytes released (0 when `buf` holds no whole page or the call fails).
pub fn release_pages(buf: &mut [u8]) -> usize {
    let page = page_size();
    let start = buf.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) & !(page - 1);
    if end <= first {
        return 0;
    }
    let len = end - first;
    // SAFETY: [first, first + len) lies inside `buf`, which this function borrows
    // mutably, so nothing else reads or writes it during or after the call without
    // going through that borrow. The memory is the process's private anonymous memory
    // (the allocator's), where MADV_DONTNEED makes the pages read as zeros: a valid
    // value for every `u8`.
    let r = unsafe { libc::madvise(first as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if r == 0 {
        len
    } else {
        0
    }
}

/// The page size (4 KiB where the system will not say).
fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

/// How many of `buf`'s whole pages are resident (`mincore(2)`): for tests of
/// [`release_pages`].
#[cfg(test)]
pub(crate) fn resident_pages(buf: &[u8]) -> io::Result<usize> {
    let page = page_size();
    let start = buf.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) & !(page - 1);
    if end <= first {
        return Ok(0);
    }
    let mut vec = vec![0u8; (end - first) / page];
    // SAFETY: the range lies inside `buf`, which outlives the call; `vec` has one byte
    // per page of it, as mincore writes.
    let r = unsafe { libc::mincore(first as *mut libc::c_void, end - first, vec.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|b| *b & 1 == 1).count())
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

/// `poll(2)` until `fd` or `wake` is readable (true) or `timeout` has passed (false).
/// A signal reads as "not yet" (false), which only releases pages a little early.
pub fn wait_either_for(
    fd: std::os::fd::BorrowedFd<'_>,
    wake: &Wake,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    poll_either(fd, wake, ms)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_leave_memory_and_read_as_zeros() {
        // 1 MiB, like a receive batch: the allocator maps it fresh (nothing resident yet).
        let mut buf = vec![0u8; 1 << 20];
        buf.iter_mut().step_by(512).for_each(|b| *b = 0xab);
        let pages = resident_pages(&buf).unwrap();
        assert!(pages >= 250, "touched pages are resident: {pages}");
        let released = release_pages(&mut buf);
        assert!(
            released >= (1 << 20) - 2 * page_size(),
            "released {released}"
        );
        assert_eq!(resident_pages(&buf).unwrap(), 0);
        // The pages inside read as zeros; only the partial pages at the ends kept data.
        let page = page_size();
        let start = buf.as_ptr() as usize;
        let skip = start.next_multiple_of(page) - start;
        assert!(buf[skip..skip + released].iter().all(|b| *b == 0));
        // Written again, they come back.
        buf.iter_mut().for_each(|b| *b = 1);
        assert!(resident_pages(&buf).unwrap() >= 250);
        assert!(buf.iter().all(|b| *b == 1));
    }

    #[test]
    fn a_buffer_without_a_whole_page_releases_nothing() {
        let mut small = vec![7u8; 100];
        assert_eq!(release_pages(&mut small), 0);
        assert!(small.iter().all(|b| *b == 7));
        assert_eq!(release_pages(&mut []), 0);
    }
}
