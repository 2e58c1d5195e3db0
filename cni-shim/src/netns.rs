//! Looking into a container's network namespace: does an interface exist, what is its MAC.
//!
//! Read first: setns(2) and netdevice(7) (SIOCGIFHWADDR). Work inside a namespace happens on a
//! dedicated, short-lived thread that calls `setns(CLONE_NEWNET)`; sockets created on that
//! thread belong to the namespace. The rest of the process is never moved.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;

/// Opens `path` for reading without blocking: a FIFO put where a namespace should be
/// does not hang the plugin (setns then refuses it).
fn open_nonblocking(path: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Whether `path` is a network namespace (a file of the kernel's nsfs, as
/// `/proc/<pid>/ns/net` and the bind mounts under `/run/netns` are). A leftover empty
/// file where a namespace was mounted is not.
pub fn is_netns(path: &str) -> bool {
    /// `NSFS_MAGIC` of linux/magic.h.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(f) = open_nonblocking(path) else {
        return false;
    };
    // SAFETY: statfs is a plain C struct for which all-zero bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open descriptor for the duration of the call and `st` is a
    // valid, writable statfs the kernel fills in.
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    let magic = st.f_type as i64;
    rc == 0 && magic == NSFS_MAGIC
}

/// Runs `f` on a new thread that has entered the network namespace at `netns_path`.
pub fn with_netns<T: Send>(netns_path: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = open_nonblocking(netns_path)?;
    thread::scope(|s| {
        s.spawn(move || -> io::Result<T> {
            // SAFETY: `ns` is an open descriptor for the duration of the call; setns only
            // changes this thread's namespace, which ends with the thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns worker thread panicked")))
    })
}

/// True when an interface named `ifname` exists in the calling thread's namespace.
fn link_exists_here(ifname: &str) -> io::Result<bool> {
    let name = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index != 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(false),
        _ => Err(err),
    }
}

/// The MAC of `ifname` in the calling thread's namespace, as `aa:bb:cc:dd:ee:ff`.
fn link_mac_here(ifname: &str) -> io::Result<String> {
    if ifname.len() >= libc::IFNAMSIZ || ifname.as_bytes().contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a properly initialised ifreq with a NUL-terminated name (the length was
    // checked above and the struct was zeroed); the kernel writes only within it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mac: Vec<String> = data
        .iter()
        .take(6)
        .map(|b| format!("{:02x}", *b as u8))
        .collect();
    Ok(mac.join(":"))
}

/// Whether `ifname` exists inside the namespace at `netns_path`.
pub fn link_exists(netns_path: &str, ifname: &str) -> io::Result<bool> {
    with_netns(netns_path, || link_exists_here(ifname))?
}

/// The MAC of `ifname` inside the namespace at `netns_path`.
pub fn link_mac(netns_path: &str, ifname: &str) -> io::Result<String> {
    with_netns(netns_path, || link_mac_here(ifname))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_in_own_namespace() {
        // Entering our own namespace is allowed for root and a no-op; without CAP_SYS_ADMIN
        // setns fails with EPERM, which is fine to observe too.
        match link_exists("/proc/self/ns/net", "lo") {
            Ok(found) => assert!(found),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
        assert!(link_exists_here("lo").unwrap());
        assert!(!link_exists_here("vxnope0").unwrap());
        assert_eq!(link_mac_here("lo").unwrap(), "00:00:00:00:00:00");
        assert!(link_mac_here("vxnope0").is_err());
        assert!(link_mac_here("0123456789abcdefg").is_err());
    }

    #[test]
    fn not_a_namespace_is_an_error() {
        assert!(with_netns("/nonexistent/ns", || ()).is_err());
        assert!(with_netns("/proc/self/status", || ()).is_err());
    }

    #[test]
    fn namespaces_are_told_from_other_files() {
        assert!(is_netns("/proc/self/ns/net"));
        assert!(!is_netns("/proc/self/status"));
        assert!(!is_netns("/nonexistent/ns"));
        let dir = std::env::temp_dir().join(format!("vxmesh-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A leftover mount point (an empty file) and a FIFO: neither is a namespace, and
        // neither blocks the check or setns.
        let stale = dir.join("stale");
        std::fs::write(&stale, b"").unwrap();
        let fifo = dir.join("fifo");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for p in [&stale, &fifo] {
            let p = p.to_str().unwrap();
            assert!(!is_netns(p), "{p}");
            assert!(with_netns(p, || ()).is_err(), "{p}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
