//! What the agent did, in a bounded in-memory log: lease acquired, renewed or lost;
//! peer added, changed, removed or rejected; offload chosen. Served at
//! `/v1/events?since=SEQ`; `vxmeshctl events` polls it and prints each event once.
//!
//! Each event has a sequence number, so a reader asks for what came after the last
//! one it saw; when the log has wrapped past that, the reply says how many were
//! lost (`missed`).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept (≈ 200 bytes each).
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// 1, 2, 3... in order of recording.
    pub seq: u64,
    pub unix_ms: u64,
    /// `lease_acquired`, `lease_renewed`, `lease_lost`, `peer_added`,
    /// `peer_changed`, `peer_removed`, `peer_rejected`, `offload`, `pool_nearly_full`,
    /// `cold_start`, `handover_in`, `handover_out`, `handover_released`,
    /// `handover_refused`, `device_recreated`, `etcd_unreachable`, `etcd_reachable`.
    pub kind: &'static str,
    pub detail: String,
}

/// The events after some sequence number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Page {
    pub events: Vec<Event>,
    /// Events after `since` that the log no longer holds.
    pub missed: u64,
    /// The sequence number of the newest event (0: none yet): pass it as `since`.
    pub last: u64,
}

/// A ring of the last `capacity` events.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    buf: VecDeque<Event>,
    capacity: usize,
    last: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(CAPACITY)
    }
}

impl EventLog {
    pub fn new(capacity: usize) -> EventLog {
        let capacity = capacity.max(1);
        EventLog {
            inner: Mutex::new(Ring {
                buf: VecDeque::with_capacity(capacity),
                capacity,
                last: 0,
            }),
        }
    }

    /// Records an event at `unix_ms`; the oldest goes when the log is full.
    pub fn record(&self, kind: &'static str, detail: impl Into<String>, unix_ms: u64) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.last += 1;
        let seq = r.last;
        if r.buf.len() == r.capacity {
            r.buf.pop_front();
        }
        r.buf.push_back(Event {
            seq,
            unix_ms,
            kind,
            detail: detail.into(),
        });
    }

    /// Records a routine event that supersedes one of the same kind just before it
    /// (a lease renewal every few seconds): that one is dropped from the log, so hours
    /// of renewals do not push the events that matter out of the ring. A reader that
    /// follows the log still sees each one as it comes.
    pub fn record_superseding(&self, kind: &'static str, detail: impl Into<String>, unix_ms: u64) {
        {
            let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if r.buf.back().is_some_and(|e| e.kind == kind) {
                r.buf.pop_back();
            }
        }
        self.record(kind, detail, unix_ms);
    }

    /// The events with a sequence number above `since`, oldest first.
    pub fn since(&self, since: u64) -> Page {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first = r.buf.front().map_or(r.last + 1, |e| e.seq);
        let events: Vec<Event> = r.buf.iter().filter(|e| e.seq > since).cloned().collect();
        Page {
            missed: first.saturating_sub(since.saturating_add(1)),
            events,
            last: r.last,
        }
    }
}

/// Wall-clock Unix milliseconds, for event stamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renewals after renewals keep only the latest; the other events stay, and a
    /// renewal after another event is kept beside the one before it.
    #[test]
    fn a_routine_event_supersedes_the_one_just_before_it() {
        let log = EventLog::new(8);
        log.record("peer_added", "p", 1);
        for i in 0..100u64 {
            log.record_superseding("lease_renewed", format!("renewal {i}"), 10 + i);
        }
        log.record("peer_removed", "p", 200);
        log.record_superseding("lease_renewed", "renewal 100", 210);
        let p = log.since(0);
        let got: Vec<(&str, &str)> = p
            .events
            .iter()
            .map(|e| (e.kind, e.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("peer_added", "p"),
                ("lease_renewed", "renewal 99"),
                ("peer_removed", "p"),
                ("lease_renewed", "renewal 100")
            ]
        );
        assert_eq!((p.missed, p.last), (0, 103));
        // A follower that had seen up to the peer's addition gets the rest in order.
        let seqs: Vec<u64> = log.since(1).events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [101, 102, 103]);
    }

    #[test]
    fn bounded_in_order_and_tells_what_was_missed() {
        let log = EventLog::new(3);
        assert_eq!(
            log.since(0),
            Page {
                events: vec![],
                missed: 0,
                last: 0
            }
        );
        for i in 0..5u64 {
            log.record("peer_added", format!("peer {i}"), 1_000 + i);
        }
        let p = log.since(0);
        // Events 1 and 2 fell out of the ring of 3.
        assert_eq!(p.missed, 2);
        assert_eq!(p.last, 5);
        let seqs: Vec<u64> = p.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(p.events[0].detail, "peer 2");
        assert_eq!(p.events[0].unix_ms, 1_002);
        // A reader that saw up to 4 gets only 5, nothing missed.
        let p = log.since(4);
        assert_eq!((p.events.len(), p.missed, p.events[0].seq), (1, 0, 5));
        // Up to date: nothing.
        let p = log.since(5);
        assert!(p.events.is_empty() && p.missed == 0);
        // A reader from the future (agent restarted): nothing missed, nothing new.
        assert_eq!(log.since(99).missed, 0);
    }

    /// Golden: the `/v1/events` JSON.
    #[test]
    fn page_json_golden() {
        let log = EventLog::new(4);
        log.record(
            "lease_acquired",
            "subnet 10.244.1.0/24 lease 694d7a0c2f8e3b01",
            1_800_000_000_000,
        );
        let got = serde_json::to_string(&log.since(0)).unwrap();
        assert_eq!(
            got,
            r#"{"events":[{"seq":1,"unix_ms":1800000000000,"kind":"lease_acquired","detail":"subnet 10.244.1.0/24 lease 694d7a0c2f8e3b01"}],"missed":0,"last":1}"#
        );
    }
}
