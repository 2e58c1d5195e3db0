//! systemd's service protocol, the parts vxmeshd speaks: `sd_notify` (READY=1,
//! STOPPING=1, STATUS=, WATCHDOG=1, and FDSTORE=1 with descriptors attached) and
//! `sd_listen_fds` (taking back the descriptors systemd kept for us).
//!
//! A notification is one datagram of `KEY=VALUE` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); descriptors
//! for the store ride along as `SCM_RIGHTS`, all under the one `FDNAME=` of the
//! message. After a restart systemd hands them back from fd 3 on with
//! `$LISTEN_FDS` (how many), `$LISTEN_FDNAMES` (their names, `:`-separated) and
//! `$LISTEN_PID` (for whom). flanneld's units say `Type=notify` too: without
//! READY=1 systemd would hold such a unit in "activating" and kill vxmeshd after
//! `TimeoutStartSec`. Where `$NOTIFY_SOCKET` is unset (`Type=simple`, a shell)
//! nothing is sent; other forms than a path or `@name` (`vsock:`) are not handled.
//! Why our own ~150 lines and not a crate:
//! docs/decisions/0010-sd-notify-own-module.md.
//!
//! Read first: `sd_notify(3)`, `sd_listen_fds(3)`, `systemd.service(5)`
//! (`Type=notify`, `FileDescriptorStoreMax=`, `WatchdogSec=`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

use vxmesh_dataplane::sys::fdpass;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    Path(PathBuf),
    /// The name after the `@`.
    Abstract(Vec<u8>),
}

/// Reads `$NOTIFY_SOCKET`'s value; `None` for an empty or unsupported one. Pure.
pub fn target(var: &str) -> Option<NotifyTarget> {
    if let Some(name) = var.strip_prefix('@') {
        return (!name.is_empty()).then(|| NotifyTarget::Abstract(name.as_bytes().to_vec()));
    }
    var.starts_with('/')
        .then(|| NotifyTarget::Path(PathBuf::from(var)))
}

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; `None` when not started by systemd as `Type=notify`.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(s) if !s.is_empty() => Notifier::connect(&s).map(Some),
            _ => Ok(None),
        }
    }

    /// Connects to `addr`: a path, or `@name` for an abstract socket.
    pub fn connect(addr: &str) -> io::Result<Notifier> {
        let sock = UnixDatagram::unbound()?;
        match target(addr) {
            Some(NotifyTarget::Abstract(name)) => {
                sock.connect_addr(&SocketAddr::from_abstract_name(name)?)?
            }
            Some(NotifyTarget::Path(p)) => sock.connect(p)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                    "NOTIFY_SOCKET={addr:?} is neither a path nor @name (vsock: is not supported)"
                ),
                ))
            }
        }
        Ok(Notifier { sock })
    }

    /// Sends one notification, e.g. `"READY=1\nSTATUS=forwarding"`.
    pub fn notify(&self, message: &str) -> io::Result<()> {
        self.sock.send(message.as_bytes()).map(|_| ())
    }

    /// Puts `fds` into the service's descriptor store under `name` (systemd drops
    /// a descriptor it already holds, so storing again is harmless).
    pub fn store_fds(&self, name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        check_name(name)?;
        let msg = format!("FDSTORE=1\nFDNAME={name}");
        fdpass::send_with_fds(self.sock.as_fd(), msg.as_bytes(), fds).map(|_| ())
    }

    /// Removes (and closes in systemd) every stored descriptor named `name`.
    pub fn remove_fds(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }
}

/// systemd's rule for descriptor names: up to 255 printable ASCII characters, no `:`.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name.len() > 255
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid descriptor name"),
        ));
    }
    Ok(())
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when it is meant for
/// us (`$WATCHDOG_PID` unset or our pid). Pure.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let us: u64 = usec?.trim().parse().ok().filter(|&v| v > 0)?;
    Some(Duration::from_micros(us / 2))
}

/// Why `$LISTEN_*` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenFdsError {
    #[error("LISTEN_FDS={0:?} is not a number")]
    Count(String),
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={count}")]
    Names { count: usize, names: usize },
    #[error("LISTEN_FDS={0} is implausible (vxmeshd takes at most {MAX_LISTEN_FDS}); check the unit's FileDescriptorStoreMax and what sets LISTEN_FDS")]
    TooMany(usize),
}

/// The most descriptors `$LISTEN_FDS` may name (as [`fdpass::take_inherited_fds`]
/// takes): checked before anything is sized by the count.
pub const MAX_LISTEN_FDS: usize = fdpass::MAX_FDS * 4;

/// Reads the `$LISTEN_*` variables: how many descriptors and their names, or
/// `None` when they are absent or meant for another process (`LISTEN_PID`). A
/// missing name list names them all `unknown`, as sd_listen_fds does. Pure.
pub fn listen_fds_spec(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Option<Vec<String>>, ListenFdsError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(me) {
        return Ok(None);
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| ListenFdsError::Count(fds.to_string()))?;
    if count == 0 {
        return Ok(None);
    }
    if count > MAX_LISTEN_FDS {
        return Err(ListenFdsError::TooMany(count));
    }
    let names: Vec<String> = match names {
        Some(n) => n.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(ListenFdsError::Names {
            count,
            names: names.len(),
        });
    }
    Ok(Some(names))
}

/// Takes the descriptors systemd passed (call early in `main`, before opening any
/// other descriptor), with their names, and clears `$LISTEN_*` so that children do
/// not see them. Empty when there are none for us.
pub fn take_listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    let var = |k| std::env::var(k).ok();
    let spec = listen_fds_spec(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let Some(names) = spec else {
        return Ok(Vec::new());
    };
    let fds = fdpass::take_inherited_fds(names.len())?;
    Ok(names.into_iter().zip(fds).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// A stand-in for systemd: a datagram socket that receives notifications and
    /// the descriptors that come with them.
    struct FakeSystemd {
        sock: UnixDatagram,
        _dir: tempfile::TempDir,
        path: String,
    }

    impl FakeSystemd {
        fn new() -> FakeSystemd {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify").to_str().unwrap().to_string();
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            FakeSystemd {
                sock,
                _dir: dir,
                path,
            }
        }

        fn recv(&self) -> (String, Vec<OwnedFd>) {
            let mut buf = [0u8; 4096];
            let r = fdpass::recv_with_fds(self.sock.as_fd(), &mut buf).unwrap();
            (String::from_utf8(buf[..r.len].to_vec()).unwrap(), r.fds)
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            target("/run/systemd/notify"),
            Some(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            target("@/org/freedesktop/systemd1/notify/123"),
            Some(NotifyTarget::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
        assert_eq!(target(""), None);
        assert_eq!(target("@"), None);
        assert_eq!(target("vsock:2:1234"), None);
        assert_eq!(target("relative/path"), None);
    }

    #[test]
    fn notifications_reach_a_path_socket() {
        let sd = FakeSystemd::new();
        let n = Notifier::connect(&sd.path).unwrap();
        n.notify("READY=1\nSTATUS=forwarding").unwrap();
        let (msg, fds) = sd.recv();
        assert_eq!(msg, "READY=1\nSTATUS=forwarding");
        assert!(fds.is_empty());
        n.remove_fds("vxmesh-tap0").unwrap();
        assert_eq!(sd.recv().0, "FDSTOREREMOVE=1\nFDNAME=vxmesh-tap0");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        let name = format!("vxmesh-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.notify("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let len = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        assert!(Notifier::connect("relative/path").is_err());
        assert!(Notifier::connect("vsock:2:1234").is_err());
        assert!(Notifier::connect("@").is_err());
    }

    /// FDSTORE=1 carries the descriptors themselves: what the fake systemd gets
    /// refers to the same open file as what we stored.
    #[test]
    fn store_passes_the_descriptors() {
        let sd = FakeSystemd::new();
        let n = Notifier::connect(&sd.path).unwrap();
        let mut f = fdpass::memfd(c"vxmesh-state").unwrap();
        f.write_all(b"state v1").unwrap();
        let (a, b) = UnixDatagram::pair().unwrap();
        n.store_fds("vxmesh-tap0", &[f.as_fd(), a.as_fd()]).unwrap();
        let (msg, fds) = sd.recv();
        assert_eq!(msg, "FDSTORE=1\nFDNAME=vxmesh-tap0");
        assert_eq!(fds.len(), 2);
        let mut it = fds.into_iter();
        let mut stored = std::fs::File::from(it.next().unwrap());
        // written after storing: systemd's copy sees it (same file)
        f.write_all(b"+").unwrap();
        stored.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        stored.read_to_string(&mut s).unwrap();
        assert_eq!(s, "state v1+");
        UnixDatagram::from(it.next().unwrap()).send(b"q").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(b.recv(&mut one).unwrap(), 1);
        assert!(n.store_fds("bad:name", &[f.as_fd()]).is_err());
        assert!(n.store_fds("", &[f.as_fd()]).is_err());
    }

    #[test]
    fn watchdog_interval_is_half_and_ours_only() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
    }

    #[test]
    fn listen_fds_spec_as_systemd_sets_it() {
        let names = "vxmesh-tap0:vxmesh-udp-rx:vxmesh-state";
        assert_eq!(
            listen_fds_spec(Some("42"), Some("3"), Some(names), 42),
            Ok(Some(vec![
                "vxmesh-tap0".to_string(),
                "vxmesh-udp-rx".to_string(),
                "vxmesh-state".to_string()
            ]))
        );
        // for another process (e.g. inherited through a fork): ignored
        assert_eq!(
            listen_fds_spec(Some("41"), Some("3"), Some(names), 42),
            Ok(None)
        );
        assert_eq!(listen_fds_spec(None, Some("3"), Some(names), 42), Ok(None));
        assert_eq!(listen_fds_spec(Some("42"), Some("0"), None, 42), Ok(None));
        assert_eq!(
            listen_fds_spec(Some("42"), Some("2"), None, 42),
            Ok(Some(vec!["unknown".to_string(), "unknown".to_string()]))
        );
        assert_eq!(
            listen_fds_spec(Some("42"), Some("2"), Some(names), 42),
            Err(ListenFdsError::Names { count: 2, names: 3 })
        );
        assert_eq!(
            listen_fds_spec(Some("42"), Some("two"), None, 42),
            Err(ListenFdsError::Count("two".into()))
        );
        // A huge count is refused before a name list is sized by it.
        assert_eq!(
            listen_fds_spec(Some("42"), Some("4000000000000"), None, 42),
            Err(ListenFdsError::TooMany(4_000_000_000_000))
        );
        assert_eq!(
            listen_fds_spec(
                Some("42"),
                Some(&(MAX_LISTEN_FDS + 1).to_string()),
                None,
                42
            ),
            Err(ListenFdsError::TooMany(MAX_LISTEN_FDS + 1))
        );
        assert_eq!(
            listen_fds_spec(Some("42"), Some(&MAX_LISTEN_FDS.to_string()), None, 42)
                .map(|n| n.map(|n| n.len())),
            Ok(Some(MAX_LISTEN_FDS))
        );
    }
}
