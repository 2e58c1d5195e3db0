//! CPU time from procfs: the whole machine (`/proc/stat`) and single processes
//! (`/proc/<pid>/stat`), in clock ticks, turned into seconds by [`clk_tck`].
//! See proc(5). Busy time is user + nice + system + irq + softirq + steal
//! (guest time is already inside user); idle and iowait are not busy.

use std::io;

/// Aggregate CPU counters of the machine, in ticks, summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    pub busy: u64,
    pub total: u64,
    /// Part of `busy` spent in softirq (where kernel VXLAN and veth work lands).
    pub softirq: u64,
}

impl MachineTicks {
    /// Ticks elapsed from `earlier` to `self`.
    pub fn since(&self, earlier: &MachineTicks) -> MachineTicks {
        MachineTicks {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
            softirq: self.softirq.saturating_sub(earlier.softirq),
        }
    }
}

/// Parses the first (`cpu `) line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if v.len() < 8 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(MachineTicks {
        busy,
        total: busy + v[3] + v[4],
        softirq: v[6],
    })
}

/// The machine's CPU counters now.
pub fn machine() -> io::Result<MachineTicks> {
    let s = std::fs::read_to_string("/proc/stat")?;
    parse_proc_stat(&s).ok_or_else(|| io::Error::other("cannot parse /proc/stat"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command
/// name may contain spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks (user + system, all threads) used so far by process `pid`.
pub fn process_ticks(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_pid_stat(&s).ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_first_line() {
        let s = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\nintr 1 2\n";
        let t = parse_proc_stat(s).unwrap();
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 7 + 2);
        assert_eq!(t.total, t.busy + 1000 + 20);
        assert_eq!(t.softirq, 7);
        let later = MachineTicks {
            busy: t.busy + 10,
            total: t.total + 30,
            softirq: 9,
        };
        assert_eq!(later.since(&t).busy, 10);
        assert!(parse_proc_stat("cpu0 1 2 3\n").is_none());
    }

    #[test]
    fn pid_stat_with_odd_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        let s = "4242 (vx mesh) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 321 123 0 0 20 0 9 0";
        assert_eq!(parse_pid_stat(s), Some(444));
        assert_eq!(parse_pid_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(process_ticks(std::process::id()).is_ok());
        assert!(machine().unwrap().total > 0);
        assert!(clk_tck() > 0.0);
    }
}
