//! The agent's side of flannel's subnet file (`/run/flannel/subnet.env`).
//!
//! The format — its line rules, reader and atomic writer — lives in the
//! `vxmesh-subnet-env` crate, which the CNI plugin reads the file with too, so the two
//! cannot disagree about what a file says. This module only speaks the agent's types: it
//! writes the file from a lease's [`Subnet`] and reads the subnet back as the restart hint
//! (and a dual-stack flanneld's `FLANNEL_IPV6_SUBNET` as the IPv6 one; vxmeshd writes no
//! IPv6 lines while no pod can get an IPv6 address).

use std::io;
use std::path::Path;

use vxmesh_subnet_env::{self as file, Ipv4Network, Ipv6Network};

use crate::subnet::Subnet;
use crate::subnet6::Subnet6;

/// The values the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The Network and the lease's subnet (`FLANNEL_NETWORK`, `FLANNEL_SUBNET`);
    /// `None` on an IPv6-only network, whose file has the IPv6 lines alone.
    pub ipv4: Option<(Subnet, Subnet)>,
    pub mtu: u32,
    pub ipmasq: bool,
    /// Dual stack, when this node's dataplane carries IPv6, or IPv6 only: the IPv6
    /// Network and the lease's IPv6 subnet (`FLANNEL_IPV6_NETWORK`,
    /// `FLANNEL_IPV6_SUBNET`).
    pub ipv6: Option<(Subnet6, Subnet6)>,
}

fn ipv4_network(s: Subnet) -> Ipv4Network {
    // Cannot fail: a Subnet's length is at most 32.
    Ipv4Network::new(s.addr(), s.prefix_len()).unwrap_or_else(|_| Ipv4Network::from(s.addr()))
}

fn ipv6_network(s: Subnet6) -> Ipv6Network {
    // Cannot fail: a Subnet6's length is at most 128.
    Ipv6Network::new(s.addr(), s.prefix_len()).unwrap_or_else(|_| Ipv6Network::from(s.addr()))
}

impl SubnetEnv {
    fn file(&self) -> file::SubnetEnv {
        let f = match self.ipv4 {
            Some((network, subnet)) => file::SubnetEnv::for_lease(
                ipv4_network(network),
                ipv4_network(subnet),
                self.mtu,
                self.ipmasq,
            ),
            None => file::SubnetEnv::for_ipv6_only_lease(self.mtu, self.ipmasq),
        };
        match self.ipv6 {
            Some((network, subnet)) => f.with_ipv6(ipv6_network(network), ipv6_network(subnet)),
            None => f,
        }
    }

    /// The file's contents. `FLANNEL_SUBNET` is the subnet's first host address
    /// (the bridge/gateway address) with the subnet's length, as flannel writes it.
    pub fn render(&self) -> String {
        self.file().render()
    }

    /// The subnet recorded in a subnet file's text (FLANNEL_SUBNET alone, as flanneld
    /// reads it on restart), host bits cleared. A value that is there but unusable is
    /// logged: the agent then acquires without its hint and may get another subnet.
    pub fn subnet_from(text: &str) -> Option<Subnet> {
        match file::subnet_hint(text.as_bytes()) {
            Ok(hint) => hint.and_then(|n| Subnet::new(n.ip(), n.prefix()).ok()),
            Err(e) => {
                tracing::warn!(
                    "subnet file: {e}; acquiring a subnet without the previous one as a hint"
                );
                None
            }
        }
    }

    /// The IPv6 subnet recorded in a subnet file's text (FLANNEL_IPV6_SUBNET alone, as
    /// a dual-stack flanneld reads it on restart), host bits cleared; logged and `None`
    /// when there but unusable.
    pub fn ipv6_subnet_from(text: &str) -> Option<Subnet6> {
        match file::ipv6_subnet_hint(text.as_bytes()) {
            Ok(hint) => hint.and_then(|n| Subnet6::new(n.ip(), n.prefix()).ok()),
            Err(e) => {
                tracing::warn!(
                    "subnet file: {e}; acquiring an IPv6 subnet without the previous one as a hint"
                );
                None
            }
        }
    }

    /// Writes the file atomically, creating its directory if needed.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        self.file().write_atomic(path)
    }
}

/// The most bytes [`read_file`] reads: a subnet file is a few hundred.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Reads the subnet file at `path` (to compare it with what was written, or for the
/// restart hint): a regular file of at most [`MAX_FILE_BYTES`], opened without
/// blocking, so that whatever another party puts at the path (a FIFO, a device, a
/// huge file) is an error here instead of a hang or an unbounded read on the agent's
/// only runtime thread.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut out = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds more than {MAX_FILE_BYTES} bytes", path.display()),
        ));
    }
    Ok(out)
}

/// How a subnet file on disk differs from what the agent wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    Removed,
    Changed,
    /// Something [`read_file`] refuses (not a regular file, too large) or cannot read.
    Unreadable,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Drift::Removed => "removed",
            Drift::Changed => "changed",
            Drift::Unreadable => "replaced by something unreadable",
        })
    }
}

/// Whether the file as [`read_file`] read it is still what `env` renders.
pub fn drift(env: &SubnetEnv, on_disk: &io::Result<Vec<u8>>) -> Option<Drift> {
    match on_disk {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Drift::Removed),
        Err(_) => Some(Drift::Unreadable),
        Ok(b) if b == env.render().as_bytes() => None,
        Ok(_) => Some(Drift::Changed),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            ipv4: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
            )),
            mtu: 1450,
            ipmasq: false,
            ipv6: None,
        }
    }

    #[test]
    fn dual_stack_renders_like_flanneld_and_reads_back() {
        let e = SubnetEnv {
            ipv6: Some((
                "fd00:10:244::/56".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            )),
            ..env()
        };
        let text = e.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(
            SubnetEnv::ipv6_subnet_from(&text),
            Some("fd00:10:244:3::/64".parse().unwrap())
        );
        // What the CNI plugin reads.
        let parsed = file::SubnetEnv::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.ipv6_networks.len(), 1);
        assert_eq!(
            parsed.ipv6_subnet.unwrap().to_string(),
            "fd00:10:244:3::1/64"
        );
    }

    /// An IPv6-only network's file: the IPv6 lines alone (flanneld writes the IPv4
    /// ones only with EnableIPv4), which the CNI plugin reads and the agent takes its
    /// restart hint from.
    #[test]
    fn ipv6_only_renders_the_ipv6_lines_alone() {
        let e = SubnetEnv {
            ipv4: None,
            mtu: 1430,
            ipmasq: true,
            ipv6: Some((
                "fd00:10:244::/56".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            )),
        };
        let text = e.render();
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        let parsed = file::SubnetEnv::parse(text.as_bytes()).unwrap();
        assert!(parsed.networks.is_empty() && parsed.subnet.is_none());
        assert_eq!(
            parsed.ipv6_subnet.unwrap().to_string(),
            "fd00:10:244:3::1/64"
        );
        assert_eq!(SubnetEnv::subnet_from(&text), None);
        assert_eq!(
            SubnetEnv::ipv6_subnet_from(&text),
            Some("fd00:10:244:3::/64".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_hint_from_a_dual_stack_flanneld_file() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(
            SubnetEnv::ipv6_subnet_from(text),
            Some("fd00:10:244:3::/64".parse().unwrap())
        );
        assert_eq!(SubnetEnv::subnet_from(text), Some(env().ipv4.unwrap().1));
        assert_eq!(SubnetEnv::ipv6_subnet_from(&env().render()), None);
        assert_eq!(
            SubnetEnv::ipv6_subnet_from("FLANNEL_IPV6_SUBNET=junk\n"),
            None
        );
    }

    #[test]
    fn renders_like_flannel() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn reads_subnet_back() {
        assert_eq!(
            SubnetEnv::subnet_from(&env().render()),
            Some(env().ipv4.unwrap().1)
        );
        assert_eq!(SubnetEnv::subnet_from("FLANNEL_SUBNET=junk\n"), None);
        assert_eq!(SubnetEnv::subnet_from(""), None);
    }

    /// Regression: the agent kept a trailing `# comment` in the value and lost its restart
    /// hint (so could come back with another subnet), while the CNI plugin, which strips
    /// comments, read the same file fine. Every file the plugin accepts gives the agent
    /// the subnet the plugin sees.
    #[test]
    fn hint_survives_what_the_plugin_accepts() {
        let want: Subnet = "10.244.3.0/24".parse().unwrap();
        for text in [
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24   # restored by hand\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24#gw\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            "FLANNEL_NETWORK=10.244.0.0/16\r\nFLANNEL_SUBNET = 10.244.3.1/24\r\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=false\r\n",
            "FLANNEL_NETWORK=10.244.0.0/16\nexport FLANNEL_SUBNET=\"10.244.3.1/24\"\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        ] {
            let plugin = file::SubnetEnv::parse(text.as_bytes()).unwrap();
            let seen = plugin.subnet.unwrap();
            assert_eq!(
                Subnet::new(seen.network(), seen.prefix()).unwrap(),
                want,
                "{text:?}"
            );
            assert_eq!(SubnetEnv::subnet_from(text), Some(want), "{text:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/flannel/subnet.env");
        env().write_atomic(&p).unwrap();
        let mut e2 = env();
        e2.mtu = 1400;
        e2.write_atomic(&p).unwrap();
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("FLANNEL_MTU=1400"));
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn drift_of_the_file_on_disk() {
        let e = env();
        assert_eq!(drift(&e, &Ok(e.render().into_bytes())), None);
        let gone = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(drift(&e, &Err(gone)), Some(Drift::Removed));
        let fifo = io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
        assert_eq!(drift(&e, &Err(fifo)), Some(Drift::Unreadable));
        assert_eq!(drift(&e, &Ok(vec![])), Some(Drift::Changed));
        let other = SubnetEnv {
            ipv4: Some((
                "10.244.0.0/16".parse().unwrap(),
                "10.244.4.0/24".parse().unwrap(),
            )),
            ..e
        };
        assert_eq!(
            drift(&e, &Ok(other.render().into_bytes())),
            Some(Drift::Changed)
        );
    }

    /// What another party can put at the path is refused at once: a FIFO (whose
    /// blocking open would wait for a writer for ever), a directory, a huge file.
    #[test]
    fn read_file_takes_only_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subnet.env");
        std::fs::write(&file, env().render()).unwrap();
        assert_eq!(read_file(&file).unwrap(), env().render().into_bytes());
        assert_eq!(
            read_file(&dir.path().join("absent")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_file(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(read_file(dir.path()).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = read_file(&big).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read_file(&big).unwrap().len(), MAX_FILE_BYTES as usize);
    }
}
