//! Per-attachment state on disk: the rendered delegate config, one file per attachment.
//!
//! Layout: `<dataDir>/<containerID>:<ifname>` holds exactly the JSON the delegate got on ADD
//! (flannel keeps the same content under `<dataDir>/<containerID>`; vxmesh adds the interface
//! name so GC, which speaks in (containerID, ifname) pairs, can match files to attachments —
//! neither part may contain ':', so the name splits unambiguously). Files are mode 0600 and
//! written atomically: temp file, fsync, rename, fsync of the directory.
//!
//! Concurrency: every operation that reads or changes state holds an exclusive `flock` on the
//! data directory itself for its whole duration, delegate execution included. Runtimes may run
//! ADDs in parallel; they are serialized here, which also keeps GC from seeing a half-made
//! attachment. The lock is released when the [`StateDir`] is dropped or the process exits.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::env::{Attachment, ContainerId, IfName};

/// The most any file the plugin reads may hold (state files, flannel's, host-local's,
/// the subnet file): each is a few hundred bytes; a bigger one is damaged or is not
/// what the configuration says (`"subnetFile": "/dev/zero"`).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads the file at `path`, refusing one of more than [`MAX_FILE_BYTES`] (`InvalidData`)
/// instead of reading without end. Opened non-blocking, so a FIFO without a writer reads
/// as empty instead of hanging the plugin.
pub fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds more than {MAX_FILE_BYTES} bytes", path.display()),
        ));
    }
    Ok(out)
}

/// The longest file name [`StateDir::save`] writes for `att` (its temporary file), and
/// whether it fits a file name (255 bytes on Linux file systems).
pub fn name_fits(att: &Attachment) -> bool {
    // ".<name>.tmp<pid>", the pid at most 10 digits.
    file_name(att).len() + ".".len() + ".tmp".len() + 10 <= 255
}

/// Whether `e` says a path cannot exist: a name longer than the file system allows
/// (a container ID too long for [`name_fits`]) names no attachment.
pub(crate) fn cannot_exist(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENAMETOOLONG)
}

/// The data directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// The open directory; holding it holds the flock.
    dir: File,
}

/// The file name for an attachment.
pub fn file_name(att: &Attachment) -> String {
    format!("{}:{}", att.container_id, att.ifname)
}

/// The attachment a file name stands for; `None` for anything else (temp files, strays).
pub fn parse_file_name(name: &str) -> Option<Attachment> {
    let (cid, ifname) = name.split_once(':')?;
    Some(Attachment {
        container_id: ContainerId::new(cid)?,
        ifname: IfName::new(ifname).ok()?,
    })
}

impl StateDir {
    /// Creates the directory (0700) if needed and takes the exclusive lock, waiting for it.
    pub fn open_locked(path: &Path) -> io::Result<StateDir> {
        DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        let dir = File::open(path)?;
        loop {
            // SAFETY: `dir` is an open file descriptor owned by this function for the duration
            // of the call; flock does not touch memory.
            let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(StateDir {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Path of an attachment's file.
    pub fn path_of(&self, att: &Attachment) -> PathBuf {
        self.path.join(file_name(att))
    }

    /// Writes an attachment's file atomically and durably (0600).
    pub fn save(&self, att: &Attachment, bytes: &[u8]) -> io::Result<()> {
        let final_path = self.path_of(att);
        let tmp = self
            .path
            .join(format!(".{}.tmp{}", file_name(att), std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &final_path)?;
            self.dir.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads an attachment's file; `None` when there is none.
    pub fn load(&self, att: &Attachment) -> io::Result<Option<Vec<u8>>> {
        match read_capped(&self.path_of(att)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if cannot_exist(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes an attachment's file (absent is fine) and syncs the directory.
    pub fn remove(&self, att: &Attachment) -> io::Result<()> {
        match fs::remove_file(self.path_of(att)) {
            Ok(()) => self.dir.sync_all(),
            Err(e) if cannot_exist(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every attachment with a file, sorted. Other entries are ignored.
    pub fn list(&self) -> io::Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if let Some(att) = entry.file_name().to_str().and_then(parse_file_name) {
                out.push(att);
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn att(cid: &str, ifname: &str) -> Attachment {
        Attachment {
            container_id: ContainerId::new(cid).unwrap(),
            ifname: IfName::new(ifname).unwrap(),
        }
    }

    #[test]
    fn file_names_split_unambiguously() {
        let a = att("a-b", "c-d");
        assert_eq!(file_name(&a), "a-b:c-d");
        assert_eq!(parse_file_name("a-b:c-d"), Some(a));
        assert_eq!(parse_file_name(".a:eth0.tmp1"), None);
        assert_eq!(parse_file_name("noifname"), None);
        assert_eq!(parse_file_name("a:b:c"), None);
    }

    #[test]
    fn save_load_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/data");
        let s = StateDir::open_locked(&dir).unwrap();
        let a = att("c1", "eth0");
        assert_eq!(s.load(&a).unwrap(), None);
        s.save(&a, b"{\"type\":\"bridge\"}").unwrap();
        s.save(&att("c0", "net1"), b"{}").unwrap();
        fs::write(dir.join("stray"), b"x").unwrap();
        assert_eq!(
            s.load(&a).unwrap().as_deref(),
            Some(&b"{\"type\":\"bridge\"}"[..])
        );
        let mode = fs::metadata(s.path_of(&a)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(s.list().unwrap(), vec![att("c0", "net1"), a.clone()]);
        s.remove(&a).unwrap();
        s.remove(&a).unwrap();
        assert_eq!(s.load(&a).unwrap(), None);
    }

    #[test]
    fn lock_is_exclusive_across_open_file_descriptions() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateDir::open_locked(tmp.path()).unwrap();
        let other = File::open(tmp.path()).unwrap();
        // SAFETY: `other` is an open descriptor; flock does not touch memory.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(
            rc, -1,
            "a second lock must not be granted while the first is held"
        );
        drop(first);
        // SAFETY: as above.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
    }
}
