//! How a retried etcd call reports an outage: its first failure at `warn` with the
//! error, then a reminder once a minute while it lasts, and its end at `info` with how
//! long it lasted. (Each retry used to log a warning: two per agent every 3–5 s while
//! etcd was down, each with the client's whole error chain.)
//!
//! Pure: the caller gives the time; [`Outage`] says what to log.

use std::time::{Duration, Instant};

/// How often a lasting outage is reported again.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// One retried call's view of etcd (the keepalive's, the watch's).
#[derive(Debug, Default, Clone)]
pub struct Outage {
    /// The call, as the log names it ("lease keepalive", "subnet watch").
    what: &'static str,
    /// Since when the call has been failing, and when that was last reported.
    down: Option<(Instant, Instant)>,
    /// Failures since `down` began.
    failures: u64,
}

/// What to log for a failure or a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure after success: log it (warn) with the error.
    Began,
    /// Still failing; time for the reminder (warn): for how long, how many tries.
    Lasts { down: Duration, failures: u64 },
    /// Nothing to log (a failure reported recently, or a success after successes).
    Quiet,
    /// The first success after failures (info): how long it lasted, how many failed.
    Ended { down: Duration, failures: u64 },
}

impl Outage {
    pub fn new(what: &'static str) -> Outage {
        Outage {
            what,
            ..Outage::default()
        }
    }

    /// The call failed just now with `error`: logs what [`Outage::failed`] says.
    pub fn fail(&mut self, error: &dyn std::fmt::Display) -> Report {
        let r = self.failed(Instant::now());
        log(self.what, r, error);
        r
    }

    /// The call succeeded just now: logs what [`Outage::succeeded`] says.
    pub fn ok(&mut self) -> Report {
        let r = self.succeeded(Instant::now());
        log(self.what, r, &"");
        r
    }

    /// The call failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Report {
        self.failures = self.failures.saturating_add(1);
        match &mut self.down {
            None => {
                self.down = Some((now, now));
                self.failures = 1;
                Report::Began
            }
            Some((since, reported)) => {
                if now.saturating_duration_since(*reported) >= REMIND_EVERY {
                    *reported = now;
                    Report::Lasts {
                        down: now.saturating_duration_since(*since),
                        failures: self.failures,
                    }
                } else {
                    Report::Quiet
                }
            }
        }
    }

    /// The call succeeded at `now`.
    pub fn succeeded(&mut self, now: Instant) -> Report {
        match self.down.take() {
            None => Report::Quiet,
            Some((since, _)) => Report::Ended {
                down: now.saturating_duration_since(since),
                failures: std::mem::take(&mut self.failures),
            },
        }
    }

    /// Whether the call is failing now.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }
}

/// Logs what `report` says for the call `what`, whose failure was `error` (ignored
/// for a success).
fn log(what: &str, report: Report, error: &dyn std::fmt::Display) {
    match report {
        Report::Began => tracing::warn!(
            error = %error,
            "{what} failed; retrying (reported again every {} s while it fails)",
            REMIND_EVERY.as_secs()
        ),
        Report::Lasts { down, failures } => tracing::warn!(
            error = %error,
            failures,
            "{what} still failing after {} s",
            down.as_secs()
        ),
        Report::Ended { down, failures } => tracing::info!(
            failures,
            "{what} working again after {:.1} s",
            down.as_secs_f64()
        ),
        Report::Quiet => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_when_it_begins_once_a_minute_and_when_it_ends() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Outage::default();
        assert_eq!(o.succeeded(at(0)), Report::Quiet);
        assert!(!o.is_down());
        assert_eq!(o.failed(at(1)), Report::Began);
        assert!(o.is_down());
        // Retries every few seconds: quiet until a minute after the first report.
        for s in (4..61).step_by(3) {
            assert_eq!(o.failed(at(s)), Report::Quiet, "{s} s");
        }
        assert_eq!(
            o.failed(at(61)),
            Report::Lasts {
                down: Duration::from_secs(60),
                failures: 21
            }
        );
        assert_eq!(o.failed(at(64)), Report::Quiet);
        assert_eq!(
            o.succeeded(at(70)),
            Report::Ended {
                down: Duration::from_secs(69),
                failures: 22
            }
        );
        assert!(!o.is_down());
        assert_eq!(o.succeeded(at(71)), Report::Quiet);
        // The next outage counts from its own beginning.
        assert_eq!(o.failed(at(100)), Report::Began);
        assert_eq!(
            o.succeeded(at(100)),
            Report::Ended {
                down: Duration::ZERO,
                failures: 1
            }
        );
    }

    /// A clock read out of order (two tasks' `now`) does not panic or go negative.
    #[test]
    fn times_out_of_order_are_harmless() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut o = Outage::default();
        assert_eq!(o.failed(t0), Report::Began);
        assert_eq!(o.failed(t0 - Duration::from_secs(50)), Report::Quiet);
        assert_eq!(
            o.succeeded(t0 - Duration::from_secs(10)),
            Report::Ended {
                down: Duration::ZERO,
                failures: 2
            }
        );
    }
}
