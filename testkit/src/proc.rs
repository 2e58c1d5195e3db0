//! What a running process holds, read from `/proc`: resident memory and open file
//! descriptors, for "RSS and fds stay flat" figures of long-running agents.

use std::fmt;
use std::fs;
use std::io;

/// One sample of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: usize,
    /// Threads (`Threads`).
    pub threads: u64,
}

impl fmt::Display for ProcSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} fds, {} threads",
            self.rss_kib as f64 / 1024.0,
            self.fds,
            self.threads
        )
    }
}

/// The number after `key` on its line of a /proc text (`VmRSS:   10068 kB` in
/// `status`, `Private_Dirty:   1384 kB` in `smaps_rollup`).
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples process `pid`; an error when it is gone.
pub fn sample(pid: i32) -> io::Result<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> io::Result<u64> {
        number_after(&status, name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status has no {name}"),
            )
        })
    };
    let rss_kib = field("VmRSS:")?;
    let threads = field("Threads:")?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(ProcSample {
        rss_kib,
        fds,
        threads,
    })
}

/// The pid written in a pid file (a daemon the lab started).
pub fn pid_from_file(path: &std::path::Path) -> io::Result<i32> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}: {text:?}", path.display()),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A `sleep` child with `extra` descriptors open besides 0, 1 and 2,
    /// sampled once it runs `sleep` (before its exec it still holds the
    /// parent's close-on-exec descriptors). A child, not this process: the
    /// other tests of this binary open and close files in parallel threads, so
    /// this process's own count moves under the test (it failed CI once so).
    fn sleeper(extra: usize) -> (std::process::Child, ProcSample) {
        use std::process::{Command, Stdio};
        let redirects: String = (3..3 + extra)
            .map(|fd| format!(" {fd}</dev/null"))
            .collect();
        let mut child = Command::new("sh")
            .args(["-c", &format!("exec sleep 30{redirects}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        for _ in 0..500 {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return (child, sample(pid).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.kill().ok();
        child.wait().ok();
        panic!("child {pid} did not exec sleep within 5 s");
    }

    /// A plain sleeper's and one with three more descriptors' samples.
    fn two_sleepers() -> (ProcSample, ProcSample) {
        let (mut plain, before) = sleeper(0);
        let (mut more, with) = sleeper(3);
        plain.kill().ok();
        more.kill().ok();
        plain.wait().ok();
        more.wait().ok();
        (before, with)
    }

    #[test]
    fn samples_a_process() {
        // 0, 1, 2 and whatever this test binary holds without close-on-exec (a
        // jobserver pipe, a CI runner's descriptor), the same for both children —
        // unless another test's thread had a descriptor open without close-on-exec
        // while one child was spawned (CI saw one more once). So up to three pairs.
        let mut tries = Vec::new();
        let with = loop {
            let (before, with) = two_sleepers();
            assert!(before.rss_kib > 0 && before.threads == 1, "{before}");
            assert!(before.fds >= 3, "{before}");
            if with.fds == before.fds + 3 {
                break with;
            }
            tries.push(format!("{before} then {with}"));
            assert!(
                tries.len() < 3,
                "never exactly 3 more descriptors: {tries:?}"
            );
        };
        assert!(sample(i32::MAX).is_err(), "no such process");
        assert!(format!("{with}").contains(&format!(" {} fds, ", with.fds)));
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(sample(me).unwrap().threads >= 1);
    }

    #[test]
    fn pid_files() {
        let dir = std::env::temp_dir().join(format!("vxkit-pid-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.pid"), "1234\n").unwrap();
        fs::write(dir.join("b.pid"), "x").unwrap();
        assert_eq!(pid_from_file(&dir.join("a.pid")).unwrap(), 1234);
        assert!(pid_from_file(&dir.join("b.pid")).is_err());
        assert!(pid_from_file(&dir.join("none.pid")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
