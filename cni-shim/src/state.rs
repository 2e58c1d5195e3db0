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
//! A call waits for it at most [`LOCK_WAIT`]: a holder hung for that long (a delegate that
//! never returns) makes the waiters fail with the holder's pid instead of piling up for
//! ever behind it.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// Whether `name` is a temporary file of [`StateDir::save`]: `.`, an attachment's file
/// name, `.tmp` and a process id.
fn is_save_temporary(name: &str) -> bool {
    let Some((base, pid)) = name
        .strip_prefix('.')
        .and_then(|rest| rest.rsplit_once(".tmp"))
    else {
        return false;
    };
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && parse_file_name(base).is_some()
}

/// How long a call waits for the data directory's lock before it gives up (code 11).
/// ADDs are serialized per node and take well under a second each, so a minute covers a
/// burst of pods; a holder still busy after it is hung, and the runtime retries the call.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why the data directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Creating, opening or locking it failed.
    Io(io::Error),
    /// Another process held the lock for the whole wait.
    Busy {
        waited: Duration,
        /// The process holding it, as `/proc/locks` names it (when it does).
        holder: Option<u32>,
    },
}

impl StateDir {
    /// Creates the directory (0700) if needed and takes the exclusive lock, waiting for it
    /// at most [`LOCK_WAIT`].
    pub fn open_locked(path: &Path) -> Result<StateDir, LockError> {
        Self::open_locked_within(path, LOCK_WAIT)
    }

    /// [`StateDir::open_locked`] with another wait.
    pub fn open_locked_within(path: &Path, wait: Duration) -> Result<StateDir, LockError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(LockError::Io)?;
        let dir = File::open(path).map_err(LockError::Io)?;
        let start = Instant::now();
        // Polled, not a blocking flock: a blocking one cannot be given up on without a
        // signal. The pause doubles from 1 ms to 20 ms, so a lock freed by a short ADD
        // is taken within a few ms.
        let mut pause = Duration::from_millis(1);
        loop {
            // SAFETY: `dir` is an open file descriptor owned by this function for the duration
            // of the call; flock does not touch memory.
            let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Err(LockError::Io(err)),
            }
            let waited = start.elapsed();
            if waited >= wait {
                return Err(LockError::Busy {
                    waited,
                    holder: lock_holder(&dir),
                });
            }
            std::thread::sleep(pause.min(wait - waited));
            pause = (pause * 2).min(Duration::from_millis(20));
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

    /// Removes the temporary files that a call killed between [`StateDir::save`]'s write
    /// and its rename left behind (`.<container>:<ifname>.tmp<pid>`; nothing else reads
    /// them, and no later save reuses the name). With the lock held no save is under
    /// way, so every such file is a leftover. Returns how many were removed.
    pub fn sweep_temporaries(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_save_temporary(name) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if removed > 0 {
            self.dir.sync_all()?;
        }
        Ok(removed)
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

/// The process holding a `flock` on `file`, read from `/proc/locks`; `None` when it
/// cannot be told (no procfs, the lock freed meanwhile, a holder in another pid namespace).
fn lock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let text = read_capped(Path::new("/proc/locks")).ok()?;
    flock_holder(
        &String::from_utf8_lossy(&text),
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
    )
}

/// The pid that holds (not waits for) a `FLOCK` on the file `major:minor:inode`, in
/// `/proc/locks`' format: `1: FLOCK  ADVISORY  WRITE 4242 00:2b:1234 0 EOF`, a waiter's
/// line having `->` after the number, the device in hex.
fn flock_holder(locks: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    let want = format!("{major:02x}:{minor:02x}:{inode}");
    locks.lines().find_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        if fields.next()? != "FLOCK" {
            return None;
        }
        let mut fields = fields.skip(2);
        let pid = fields.next()?.parse().ok()?;
        (fields.next()? == want).then_some(pid)
    })
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
        // A save killed before its rename leaves its temporary file; the sweep (GC's)
        // removes those and nothing else.
        fs::write(dir.join(".c9:eth0.tmp4242"), b"{}").unwrap();
        fs::write(dir.join(".c8:net1.tmp1"), b"{}").unwrap();
        for other in [".stray.tmp12", ".c7:eth0.tmp", ".c7:eth0.tmpx1", "c6.tmp3"] {
            fs::write(dir.join(other), b"x").unwrap();
        }
        assert_eq!(s.sweep_temporaries().unwrap(), 2);
        assert!(!dir.join(".c9:eth0.tmp4242").exists());
        for kept in [
            "stray",
            ".stray.tmp12",
            ".c7:eth0.tmp",
            ".c7:eth0.tmpx1",
            "c6.tmp3",
        ] {
            assert!(dir.join(kept).exists(), "{kept}");
        }
        assert_eq!(s.sweep_temporaries().unwrap(), 0);
        assert_eq!(s.list().unwrap().len(), 2);
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

    #[test]
    fn a_waiter_gives_up_on_a_held_lock_and_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateDir::open_locked(tmp.path()).unwrap();
        let t0 = Instant::now();
        let err = StateDir::open_locked_within(tmp.path(), Duration::from_millis(150))
            .expect_err("the lock is held");
        assert!(t0.elapsed() >= Duration::from_millis(150));
        match err {
            LockError::Busy { waited, holder } => {
                assert!(waited >= Duration::from_millis(150));
                // flock locks are listed with the pid that took them: this process.
                assert_eq!(holder, Some(std::process::id()));
            }
            LockError::Io(e) => panic!("{e}"),
        }
        drop(first);
        StateDir::open_locked_within(tmp.path(), Duration::ZERO).unwrap();
    }

    #[test]
    fn a_waiter_takes_the_lock_once_it_is_freed() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateDir::open_locked(tmp.path()).unwrap();
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first);
        });
        let t0 = Instant::now();
        StateDir::open_locked_within(tmp.path(), Duration::from_secs(10)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
        freer.join().unwrap();
    }

    #[test]
    fn flock_holders_are_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 700 00:2b:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4343 fd:01:1234 0 EOF\n\
                     3: OFDLCK ADVISORY  READ -1 00:05:1234 0 EOF\n\
                     garbage\n";
        assert_eq!(flock_holder(locks, 0xfd, 1, 1234), Some(4242));
        // A POSIX lock on the file is not a flock; another device is another file.
        assert_eq!(flock_holder(locks, 0, 0x2b, 99), None);
        assert_eq!(flock_holder(locks, 0, 5, 1234), None);
        assert_eq!(flock_holder(locks, 0xfd, 1, 12345), None);
        assert_eq!(flock_holder("", 0, 0, 0), None);
        // Only the waiter is left: nobody holds it.
        let waiting = "2: -> FLOCK  ADVISORY  WRITE 4343 fd:01:1234 0 EOF\n";
        assert_eq!(flock_holder(waiting, 0xfd, 1, 1234), None);
    }
}
