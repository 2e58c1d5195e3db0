//! Attachments that flannel's CNI plugin made, so that a node whose conflist changed from
//! `"type": "flannel"` to `"type": "vxmesh"` still releases their addresses.
//!
//! What flannel's plugin keeps (github.com/flannel-io/cni-plugin, `flannel.go`:
//! `loadFlannelNetConf`, `saveScratchNetConf`, `consumeScratchNetConf`; `flannel_linux.go`:
//! `doCmdAdd`, `doCmdDel`):
//! - ADD writes the delegate config it rendered — exactly the bytes the delegate gets on stdin,
//!   Go's `json.Marshal` of a map (compact, keys sorted) — to `<dataDir>/<containerID>`, mode
//!   0600, before running the delegate. `dataDir` comes from its netconf, default
//!   `/var/lib/cni/flannel`. The file name carries no interface name.
//! - DEL reads that file (absent: success, nothing done), runs the delegate's DEL with the
//!   bytes unchanged, and removes the file only when the DEL succeeded. A file that does not
//!   decode is logged and left in place, and DEL succeeds.
//! - CHECK does nothing; there is no GC.
//!
//! vxmesh does the same for such files when it has no state of its own for an attachment
//! (see `plugin.rs`). It looks in the netconf's `dataDir` (a flannel conflist that set one
//! keeps it when only `type` changes) and in flannel's default directory (a conflist that
//! relied on flannel's default, or was replaced by vxmesh's example), and uses a file only
//! when the network `name` saved in it is this network's: the name is also host-local's
//! reservation directory, and flannel's file names hold only the container ID, so a file of
//! another network is not this attachment's.
//!
//! Everything here is pure except [`lookup`]'s and [`list`]'s directory reads.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::env::ContainerId;
use crate::netconf::NetConf;

/// flannel's `defaultDataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// host-local's default data directory (its `defaultDataDir`).
pub const HOST_LOCAL_DATA_DIR: &str = "/var/lib/cni/networks";

/// The directories that may hold flannel's state for this netconf, in search order: the
/// netconf's `dataDir`, then flannel's default.
pub fn data_dirs(nc: &NetConf) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(&nc.data_dir)];
    if Path::new(&nc.data_dir) != Path::new(DEFAULT_DATA_DIR) {
        dirs.push(PathBuf::from(DEFAULT_DATA_DIR));
    }
    dirs
}

/// What a flannel state file holds, as far as one network is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// A delegate config of this network.
    Ours(Map<String, Value>),
    /// A delegate config of another network (its name, if it has one).
    OtherNetwork(Option<String>),
    /// Not a delegate config (flannel logs and keeps such a file): why.
    Unreadable(String),
}

/// Classifies the bytes of a flannel state file for the network `network`.
pub fn classify(bytes: &[u8], network: &str) -> Saved {
    let map = match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Saved::Unreadable("not a JSON object".into()),
        Err(e) => return Saved::Unreadable(e.to_string()),
    };
    match map.get("type") {
        Some(Value::String(t)) if crate::exec::plugin_name_ok(t) => {}
        _ => return Saved::Unreadable("no delegate type".into()),
    }
    match map.get("name").and_then(Value::as_str) {
        Some(n) if n == network => Saved::Ours(map),
        other => Saved::OtherNetwork(other.map(str::to_string)),
    }
}

/// A flannel state file of this network.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Where it is.
    pub path: PathBuf,
    /// Its exact bytes: what the delegate gets on DEL.
    pub bytes: Vec<u8>,
    /// Its content.
    pub config: Map<String, Value>,
}

/// The outcome of looking for one container's flannel state.
#[derive(Debug, Default)]
pub struct Lookup {
    /// The first file of this network, if any.
    pub found: Option<Found>,
    /// Files passed over, each with why (for the log).
    pub skipped: Vec<String>,
}

/// Reads a file (at most `state::MAX_FILE_BYTES`); `None` when it does not exist or its
/// name is too long to exist.
fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match crate::state::read_capped(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if crate::state::cannot_exist(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Looks for `<dir>/<containerID>` in `dirs`, in order, and returns the first of this
/// network. Read errors other than "not found" are returned, as flannel's DEL returns them.
pub fn lookup(dirs: &[PathBuf], cid: &ContainerId, network: &str) -> io::Result<Lookup> {
    let mut out = Lookup::default();
    for dir in dirs {
        let path = dir.join(cid.as_str());
        let Some(bytes) = read_optional(&path)? else {
            continue;
        };
        match classify(&bytes, network) {
            Saved::Ours(config) => {
                out.found = Some(Found {
                    path,
                    bytes,
                    config,
                });
                break;
            }
            Saved::OtherNetwork(name) => out.skipped.push(format!(
                "{} belongs to network {}, not {network}",
                path.display(),
                name.as_deref().unwrap_or("(none)")
            )),
            Saved::Unreadable(why) => out.skipped.push(format!(
                "{} is not a delegate config ({why}); left in place, as flannel does",
                path.display()
            )),
        }
    }
    Ok(out)
}

/// The container IDs that have a state file in `dir` (absent directory: none). Entries whose
/// name is not a container ID — vxmesh's own `<containerID>:<ifname>` files, temp files — are
/// not flannel's and are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<ContainerId>> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(cid) = entry.file_name().to_str().and_then(ContainerId::new) {
            out.push(cid);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a flannel state file; absent is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// host-local's reservation directory for a saved delegate config
/// (`<ipam.dataDir or /var/lib/cni/networks>/<name>`), when its IPAM is host-local.
pub fn host_local_dir(config: &Map<String, Value>) -> Option<PathBuf> {
    let ipam = config.get("ipam")?.as_object()?;
    if ipam.get("type").and_then(Value::as_str) != Some("host-local") {
        return None;
    }
    let base = match ipam.get("dataDir").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => d,
        _ => HOST_LOCAL_DATA_DIR,
    };
    let name = config.get("name")?.as_str()?;
    Some(Path::new(base).join(name))
}

/// What host-local has reserved for one container, read from its reservation files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Interface names of reservations written as `<containerID>\r\n<ifname>`.
    pub ifnames: BTreeSet<String>,
    /// A reservation written by host-local before it recorded interface names (the file
    /// holds the container ID alone); its DEL releases that for any interface name.
    pub legacy: bool,
}

impl Reserved {
    /// Whether anything is reserved.
    pub fn any(&self) -> bool {
        self.legacy || !self.ifnames.is_empty()
    }
}

/// Which of host-local's reservation files (their contents) belong to `cid`. The format is
/// host-local's disk backend (containernetworking/plugins,
/// plugins/ipam/host-local/backend/disk/backend.go: `Reserve` writes
/// `id + "\r\n" + ifname`, `ReleaseByID` compares the whitespace-trimmed content).
pub fn reserved_for<'a>(
    cid: &ContainerId,
    contents: impl IntoIterator<Item = &'a str>,
) -> Reserved {
    let mut out = Reserved::default();
    for text in contents {
        let text = text.trim();
        match text.split_once("\r\n") {
            Some((id, ifname)) if id.trim() == cid.as_str() && !ifname.is_empty() => {
                out.ifnames.insert(ifname.to_string());
            }
            Some(_) => {}
            None if text == cid.as_str() => out.legacy = true,
            None => {}
        }
    }
    out
}

/// Reads host-local's reservation files in `dir` (not its `lock` and `last_reserved_ip.*`).
pub fn read_reservations(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "lock" || name.starts_with("last_reserved_ip.") || !entry.file_type()?.is_file()
        {
            continue;
        }
        match crate::state::read_capped(&entry.path()) {
            Ok(b) => out.push(String::from_utf8_lossy(&b).into_owned()),
            // Released between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::netconf;

    /// flannel's state file for kube-flannel.yml's netconf (cniVersion 0.3.1, network cbr0,
    /// delegate {hairpinMode, isDefaultGateway}) on a node with FLANNEL_SUBNET=10.244.3.1/24,
    /// FLANNEL_MTU=1450, FLANNEL_IPMASQ=true: what `doCmdAdd` renders and `saveScratchNetConf`
    /// writes (Go marshals maps with sorted keys; a route without gw is `{"dst":…}`).
    const KUBE_FLANNEL: &[u8] = include_bytes!("../testdata/flannel/kube-flannel-0.3.1");
    /// The same with dataDir/ipam.dataDir set, cniVersion 1.0.0, dual stack
    /// (FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET), FLANNEL_IPMASQ=false, a runtimeConfig.
    const DUAL_STACK: &[u8] = include_bytes!("../testdata/flannel/dual-stack-1.0.0");

    fn cid(s: &str) -> ContainerId {
        ContainerId::new(s).unwrap()
    }

    #[test]
    fn golden_files_are_flannels_delegate_configs() {
        let Saved::Ours(c) = classify(KUBE_FLANNEL, "cbr0") else {
            panic!("kube-flannel state not recognised");
        };
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["cniVersion"], "0.3.1");
        assert_eq!(
            crate::delegate::saved_subnet(&c).as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(
            host_local_dir(&c),
            Some(PathBuf::from("/var/lib/cni/networks/cbr0"))
        );
        // Go's encoding: compact, keys sorted at every level — serde_json's Map is sorted
        // too, so re-encoding gives the same bytes.
        assert_eq!(
            serde_json::to_vec(&Value::Object(c)).unwrap(),
            KUBE_FLANNEL.strip_suffix(b"\n").unwrap_or(KUBE_FLANNEL)
        );

        let Saved::Ours(c) = classify(DUAL_STACK, "flannel-ds") else {
            panic!("dual-stack state not recognised");
        };
        assert_eq!(
            crate::delegate::saved_subnet(&c).as_deref(),
            Some("10.244.7.0/24")
        );
        assert_eq!(
            host_local_dir(&c),
            Some(PathBuf::from("/srv/cni/ipam/flannel-ds"))
        );
    }

    #[test]
    fn other_networks_and_garbage_are_not_ours() {
        assert_eq!(
            classify(KUBE_FLANNEL, "vxmesh"),
            Saved::OtherNetwork(Some("cbr0".into()))
        );
        assert_eq!(
            classify(br#"{"type":"bridge"}"#, "cbr0"),
            Saved::OtherNetwork(None)
        );
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"\"bridge\"",
            br#"{"name":"cbr0"}"#,
            br#"{"name":"cbr0","type":7}"#,
            br#"{"name":"cbr0","type":"../bin/x"}"#,
        ] {
            assert!(
                matches!(classify(bad, "cbr0"), Saved::Unreadable(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn data_dirs_are_the_netconfs_then_flannels_default() {
        let nc =
            netconf::parse(br#"{"cniVersion":"0.3.1","name":"cbr0","type":"vxmesh"}"#).unwrap();
        assert_eq!(
            data_dirs(&nc),
            [netconf::DEFAULT_DATA_DIR, DEFAULT_DATA_DIR].map(PathBuf::from)
        );
        let nc = netconf::parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"vxmesh","dataDir":"/var/lib/cni/flannel"}"#,
        )
        .unwrap();
        assert_eq!(data_dirs(&nc), [PathBuf::from(DEFAULT_DATA_DIR)]);
        let nc = netconf::parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"vxmesh","dataDir":"/srv/flannel"}"#,
        )
        .unwrap();
        assert_eq!(
            data_dirs(&nc),
            ["/srv/flannel", DEFAULT_DATA_DIR].map(PathBuf::from)
        );
    }

    #[test]
    fn lookup_takes_the_first_file_of_this_network() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let c = tmp.path().join("c");
        for d in [&a, &b, &c] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(a.join("ctr1"), b"garbage").unwrap();
        fs::write(b.join("ctr1"), br#"{"name":"other","type":"bridge"}"#).unwrap();
        fs::write(c.join("ctr1"), KUBE_FLANNEL).unwrap();
        let dirs = [a.clone(), tmp.path().join("missing"), b, c.clone()];
        let l = lookup(&dirs, &cid("ctr1"), "cbr0").unwrap();
        let found = l.found.unwrap();
        assert_eq!(found.path, c.join("ctr1"));
        assert_eq!(found.bytes, KUBE_FLANNEL);
        assert_eq!(l.skipped.len(), 2, "{:?}", l.skipped);
        assert!(l.skipped[0].contains("left in place"));
        assert!(l.skipped[1].contains("network other"));

        let l = lookup(&dirs, &cid("ctr2"), "cbr0").unwrap();
        assert!(l.found.is_none() && l.skipped.is_empty());
    }

    #[test]
    fn list_finds_container_id_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["b2", "a1", "c1:eth0", ".c1:eth0.tmp7"] {
            fs::write(tmp.path().join(name), b"{}").unwrap();
        }
        fs::create_dir(tmp.path().join("d1")).unwrap();
        assert_eq!(list(tmp.path()).unwrap(), vec![cid("a1"), cid("b2")]);
        assert!(list(&tmp.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn reservations_name_the_interfaces() {
        let files = [
            "ctr1\r\neth0",
            "ctr1\r\nnet1\n",
            "ctr10\r\neth0",
            "other\r\neth0",
            "",
        ];
        let r = reserved_for(&cid("ctr1"), files);
        assert_eq!(
            r.ifnames,
            ["eth0", "net1"].map(String::from).into_iter().collect()
        );
        assert!(!r.legacy && r.any());
        let r = reserved_for(&cid("old"), ["old\n", "ctr1\r\neth0"]);
        assert!(r.legacy && r.ifnames.is_empty());
        assert!(!reserved_for(&cid("none"), files).any());
    }

    #[test]
    fn reservation_files_are_read_without_host_locals_own() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("10.244.3.2"), b"ctr1\r\neth0").unwrap();
        fs::write(tmp.path().join("lock"), b"").unwrap();
        fs::write(tmp.path().join("last_reserved_ip.0"), b"10.244.3.2").unwrap();
        assert_eq!(
            read_reservations(tmp.path()).unwrap(),
            vec!["ctr1\r\neth0".to_string()]
        );
        assert!(read_reservations(&tmp.path().join("absent"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn host_local_dir_needs_host_local() {
        let Saved::Ours(mut c) = classify(KUBE_FLANNEL, "cbr0") else {
            panic!()
        };
        c["ipam"]["type"] = Value::String("dhcp".into());
        assert_eq!(host_local_dir(&c), None);
        c.remove("ipam");
        assert_eq!(host_local_dir(&c), None);
    }
}
