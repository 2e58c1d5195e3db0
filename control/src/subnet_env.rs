//! flannel's subnet file (`/run/flannel/subnet.env`), written atomically.
//!
//! Readers — the CNI plugin (ours or flannel's), Docker's `--bip`, and this agent on
//! restart — see either the old file or the new one, never a partial write: we
//! write a temporary file in the same directory, fsync it, rename it over the old
//! one and fsync the directory.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;

use crate::subnet::Subnet;

/// The four values flannel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Subnet,
    pub subnet: Subnet,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file's contents. `FLANNEL_SUBNET` is the subnet's first host address
    /// (the bridge/gateway address) with the subnet's length, as flannel writes it.
    pub fn render(&self) -> String {
        let gw = self.subnet.nth(1).unwrap_or(self.subnet.addr());
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            gw,
            self.subnet.prefix_len(),
            self.mtu,
            self.ipmasq
        )
    }

    /// Reads FLANNEL_SUBNET out of a subnet file's text, if present and valid.
    pub fn subnet_from(text: &str) -> Option<Subnet> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))
            .next_back()
            .and_then(|v| {
                let (ip, len) = v.trim().split_once('/')?;
                Subnet::new(ip.parse::<Ipv4Addr>().ok()?, len.parse().ok()?).ok()
            })
    }

    /// Writes the file atomically, creating its directory if needed.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        write_atomic(path, self.render().as_bytes(), 0o644)
    }
}

/// Writes `data` to `path` through a temporary file + fsync + rename + dir fsync.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            mtu: 1450,
            ipmasq: false,
        }
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
        assert_eq!(SubnetEnv::subnet_from(&env().render()), Some(env().subnet));
        assert_eq!(SubnetEnv::subnet_from("FLANNEL_SUBNET=junk\n"), None);
        assert_eq!(SubnetEnv::subnet_from(""), None);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/flannel/subnet.env");
        env().write_atomic(&p).unwrap();
        let mut e2 = env();
        e2.mtu = 1400;
        e2.write_atomic(&p).unwrap();
        assert!(fs::read_to_string(&p).unwrap().contains("FLANNEL_MTU=1400"));
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
