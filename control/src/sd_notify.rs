//! systemd's readiness notification (`sd_notify(3)`): one datagram `READY=1` to the
//! socket named by `$NOTIFY_SOCKET`.
//!
//! flanneld's units say `Type=notify` and flanneld sends `READY=1` once its subnet
//! file is written; without the same message systemd would hold such a unit in
//! "activating" and kill vxmeshd after `TimeoutStartSec`. Where `$NOTIFY_SOCKET` is
//! unset (`Type=simple`, a shell) nothing is sent. The variable names a filesystem
//! socket (`/run/systemd/notify`) or, with a leading `@`, one in the abstract
//! namespace; other forms (`vsock:`) are not handled.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    Path(PathBuf),
    /// The name after the `@`.
    Abstract(Vec<u8>),
}

/// Reads `$NOTIFY_SOCKET`'s value; `None` for an empty or unsupported one.
pub fn target(var: &str) -> Option<NotifyTarget> {
    if let Some(name) = var.strip_prefix('@') {
        return (!name.is_empty()).then(|| NotifyTarget::Abstract(name.as_bytes().to_vec()));
    }
    var.starts_with('/')
        .then(|| NotifyTarget::Path(PathBuf::from(var)))
}

/// Sends `msg` (e.g. `READY=1`) to `target`.
pub fn send(target: &NotifyTarget, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match target {
        NotifyTarget::Path(p) => sock.send_to(msg.as_bytes(), p).map(|_| ()),
        NotifyTarget::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr).map(|_| ())
        }
    }
}

/// `READY=1` to `$NOTIFY_SOCKET` if it is set; `Ok(false)` when it is not.
pub fn ready() -> io::Result<bool> {
    match std::env::var("NOTIFY_SOCKET")
        .ok()
        .as_deref()
        .and_then(target)
    {
        Some(t) => send(&t, "READY=1").map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    fn datagram_arrives_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(&target(path.to_str().unwrap()).unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn datagram_arrives_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("vxmesh-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&target(&format!("@{name}")).unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
