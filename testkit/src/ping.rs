//! A continuous ping from inside a network namespace, for loss and gap figures: how many
//! echoes were lost while a fault was injected, and how long the longest silence lasted.
//!
//! [`Pinger::start`] runs iputils `ping -D -i <interval>` in the namespace; [`Pinger::stop`]
//! interrupts it (SIGINT: ping prints its summary) and parses what it printed
//! ([`PingReport::parse`], pure). Each reply carries the wall-clock time ping received it
//! (`-D`), so a gap can be compared with when a fault was injected or healed.

use std::io::{self, Read};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One echo reply: its sequence number and when it was received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    pub seq: u64,
    pub at: SystemTime,
}

/// What one ping run saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PingReport {
    /// Echo requests sent (ping's summary).
    pub sent: u64,
    /// Replies received (ping's summary).
    pub received: u64,
    /// Every reply, in the order printed.
    pub replies: Vec<Reply>,
}

impl PingReport {
    /// Parses `ping -D` output: reply lines and the summary line.
    pub fn parse(text: &str) -> Result<PingReport, String> {
        let mut replies = Vec::new();
        let mut summary = None;
        for line in text.lines() {
            if let Some(r) = reply_line(line) {
                replies.push(r);
            } else if line.contains(" packets transmitted, ") {
                summary = Some(summary_line(line).ok_or_else(|| format!("bad summary: {line}"))?);
            }
        }
        let (sent, received) = summary.ok_or_else(|| format!("no ping summary in:\n{text}"))?;
        Ok(PingReport {
            sent,
            received,
            replies,
        })
    }

    /// Echoes without a reply.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Lost echoes as a percentage of those sent (0 when none were sent).
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.lost() as f64 * 100.0 / self.sent as f64
    }

    /// The longest time between two consecutive replies (zero with fewer than two).
    pub fn longest_gap(&self) -> Duration {
        self.replies
            .windows(2)
            .filter_map(|w| w[1].at.duration_since(w[0].at).ok())
            .max()
            .unwrap_or_default()
    }

    /// The first reply received at or after `t`.
    pub fn first_reply_after(&self, t: SystemTime) -> Option<SystemTime> {
        self.replies.iter().map(|r| r.at).find(|at| *at >= t)
    }

    /// The last reply received at or before `t`.
    pub fn last_reply_before(&self, t: SystemTime) -> Option<SystemTime> {
        self.replies.iter().map(|r| r.at).rfind(|at| *at <= t)
    }

    /// A one-line summary for figures: `sent 500, lost 3 (0.6 %), longest gap 0.31 s`.
    pub fn describe(&self) -> String {
        format!(
            "sent {}, lost {} ({:.1} %), longest gap {:.2} s",
            self.sent,
            self.lost(),
            self.loss_percent(),
            self.longest_gap().as_secs_f64()
        )
    }
}

/// `[1764467879.123456] 64 bytes from 10.0.0.2: icmp_seq=5 ttl=62 time=0.512 ms`
fn reply_line(line: &str) -> Option<Reply> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once(']')?;
    if !rest.contains(" bytes from ") {
        return None;
    }
    let seq = rest
        .split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_seq="))?
        .parse()
        .ok()?;
    let (secs, micros) = stamp.split_once('.')?;
    let at = UNIX_EPOCH
        + Duration::from_secs(secs.parse().ok()?)
        + Duration::from_micros(micros.parse().ok()?);
    Some(Reply { seq, at })
}

/// `400 packets transmitted, 263 received, +2 errors, 34.25% packet loss, time 42210ms`
fn summary_line(line: &str) -> Option<(u64, u64)> {
    let mut parts = line.split(", ");
    let sent = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let received = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some((sent, received))
}

/// A ping running in a namespace until [`Pinger::stop`].
#[derive(Debug)]
pub struct Pinger {
    child: Child,
    output: Option<JoinHandle<String>>,
}

impl Pinger {
    /// Starts `ping -D -i <interval> <dst>` inside namespace `ns` (intervals under 0.2 s
    /// need root).
    pub fn start(ns: &str, dst: &str, interval: Duration) -> io::Result<Pinger> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-D", "-n", "-W", "1", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(dst)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let output = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Ok(Pinger {
            child,
            output: Some(output),
        })
    }

    /// Interrupts ping (it prints its summary) and returns what it saw.
    pub fn stop(mut self) -> io::Result<PingReport> {
        let pid = i32::try_from(self.child.id()).map_err(io::Error::other)?;
        // `ip netns exec` execs ping, so the child is ping itself.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.child.wait()?;
        let text = self
            .output
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        PingReport::parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if self.output.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Output of `ping -D -n -W 1 -i 0.2 10.244.158.2` across a partition (shortened).
    const OUTPUT: &str = "PING 10.244.158.2 (10.244.158.2) 56(84) bytes of data.
[1764466679.700000] 64 bytes from 10.244.158.2: icmp_seq=1 ttl=62 time=0.512 ms
[1764466679.900000] 64 bytes from 10.244.158.2: icmp_seq=2 ttl=62 time=0.410 ms
[1764466680.101000] From 10.244.164.1 icmp_seq=3 Destination Net Unreachable
[1764466681.300000] 64 bytes from 10.244.158.2: icmp_seq=9 ttl=62 time=0.602 ms
[1764466681.500000] 64 bytes from 10.244.158.2: icmp_seq=10 ttl=62 time=16.160 ms

--- 10.244.158.2 ping statistics ---
10 packets transmitted, 4 received, +1 errors, 60% packet loss, time 1800ms
rtt min/avg/max/mdev = 0.410/4.421/16.160/6.781 ms
";

    #[test]
    fn parses_replies_and_summary() {
        let r = PingReport::parse(OUTPUT).unwrap();
        assert_eq!((r.sent, r.received, r.lost()), (10, 4, 6));
        assert_eq!(
            r.replies.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 9, 10]
        );
        assert!((r.loss_percent() - 60.0).abs() < 1e-9);
        assert_eq!(r.longest_gap(), Duration::from_millis(1400));
        let t = UNIX_EPOCH + Duration::from_millis(1_764_466_680_000);
        assert_eq!(
            r.first_reply_after(t),
            Some(UNIX_EPOCH + Duration::from_millis(1_764_466_681_300))
        );
        assert_eq!(
            r.last_reply_before(t),
            Some(UNIX_EPOCH + Duration::from_millis(1_764_466_679_900))
        );
        assert_eq!(r.describe(), "sent 10, lost 6 (60.0 %), longest gap 1.40 s");
    }

    #[test]
    fn no_summary_is_an_error() {
        assert!(PingReport::parse("PING x\n").is_err());
        assert!(PingReport::parse("x packets transmitted, y received\n").is_err());
        let r = PingReport::parse("1 packets transmitted, 0 received, 100% packet loss\n").unwrap();
        assert_eq!((r.sent, r.lost(), r.longest_gap()), (1, 1, Duration::ZERO));
        assert_eq!(r.first_reply_after(UNIX_EPOCH), None);
    }
}
