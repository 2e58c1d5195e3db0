//! Timestamped output of a long-running command (`ip monitor route`, `etcdctl watch`):
//! each line is stamped with the wall-clock time it was read, so a test can measure how long
//! after one event another one happened (a lease deleted in etcd → a route removed on a node)
//! without polling.

use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A child process whose stdout lines are collected with the time each was read; killed,
/// with everything it started (its own process group), when dropped.
#[derive(Debug)]
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<(SystemTime, String)>>>,
}

impl Monitor {
    /// Spawns `cmd` in a process group of its own, with its stdout captured (stderr
    /// discarded).
    pub fn spawn(mut cmd: Command) -> io::Result<Monitor> {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let now = SystemTime::now();
                if let Ok(mut l) = sink.lock() {
                    l.push((now, line));
                }
            }
        });
        Ok(Monitor { child, lines })
    }

    /// Every line read so far, with when it was read.
    pub fn lines(&self) -> Vec<(SystemTime, String)> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// When the first line matching `pred` was read, waiting up to `limit` for it.
    pub fn wait_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<SystemTime> {
        let mut found = None;
        crate::wait_for(limit, || {
            found = self
                .lines()
                .into_iter()
                .find(|(_, l)| pred(l))
                .map(|(t, _)| t);
            found.is_some()
        });
        found
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // The whole group: a shell's children (`sh -c "…; sleep 30"`) would outlive it.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group the child leads
            // (spawned with process_group(0)); it touches no memory of ours.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_in_order() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo one; sleep 0.3; echo two; sleep 30"]);
        let t0 = SystemTime::now();
        let m = Monitor::spawn(c).unwrap();
        let two = m.wait_line(Duration::from_secs(5), |l| l == "two").unwrap();
        let lines = m.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1, "one");
        let gap = two.duration_since(lines[0].0).unwrap();
        assert!(gap >= Duration::from_millis(250), "{gap:?}");
        assert!(two.duration_since(t0).unwrap() < Duration::from_secs(5));
        assert_eq!(
            m.wait_line(Duration::from_millis(50), |l| l == "three"),
            None
        );
        // Dropping kills the shell and its `sleep 30`: nothing of the group is left.
        let pgid = m.child.id();
        drop(m);
        assert!(t0.elapsed().unwrap() < Duration::from_secs(10));
        // SIGKILL is delivered at once but a process takes a moment to die (the orphaned
        // `sleep` was seen still `R` right after the kill, under load): wait, bounded.
        let group_left = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid pgrp …: the group is the 3rd field after the comm.
                    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
                    let f: Vec<&str> = after.split_whitespace().collect();
                    f.get(2) == Some(&pgid.to_string().as_str())
                        && !matches!(f.first(), Some(&"Z") | Some(&"X"))
                })
                .collect()
        };
        crate::wait_for(Duration::from_secs(5), || group_left().is_empty());
        let left = group_left();
        assert!(
            left.is_empty(),
            "processes of the monitor's group left 5 s after the kill: {left:?}"
        );
    }
}
