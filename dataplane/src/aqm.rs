//! Active queue management on ingress: CoDel (RFC 8289) on the time datagrams waited in
//! the VXLAN receive socket, and ECN marking of the inner packet (RFC 3168).
//!
//! The receiving agent is the slowest stage of a userspace path under load, so the
//! queue a TCP sender builds sits in its socket (up to the receive buffer,
//! `--vxlan-rcvbuf`: milliseconds to tens of milliseconds). The kernel stamps each
//! datagram when it arrives (`SO_TIMESTAMPNS`); the ingress thread gives the wait of
//! each message it reads to [`Codel::on_dequeue`], which says when a packet must carry
//! a congestion signal.
//! The thread then marks that packet's inner IP header CE if its sender is ECN-capable
//! ([`mark_ce`]), and drops it otherwise, as fq_codel does. TCP slows down and the
//! queue drains to about `target`.
//!
//! Pure: times are nanoseconds given by the caller, and bytes; no clock, no I/O.

use crate::wire::ecn;

/// CoDel's two parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodelConfig {
    /// The standing queue delay to keep to (ns).
    pub target_ns: u64,
    /// How long the delay must stay above `target` before the first signal, and the
    /// base of the spacing between signals (ns): about the largest RTT of the flows.
    pub interval_ns: u64,
}

impl CodelConfig {
    /// Parameters for an overlay inside one cluster, whose round trips are well under
    /// a millisecond (the internet's 5 ms / 100 ms would allow a standing queue 20
    /// times the path's own delay). vxmeshd's `--aqm-interval` defaults to this
    /// interval; AQM itself is off unless `--aqm-target` is given (decision 0016).
    pub const DEFAULT: CodelConfig = CodelConfig {
        target_ns: 1_000_000,
        interval_ns: 20_000_000,
    };
}

/// The CoDel state machine of one queue.
#[derive(Debug, Clone)]
pub struct Codel {
    cfg: CodelConfig,
    /// When the delay, above target since then, will have been so for an interval.
    first_above: Option<u64>,
    /// In the signalling state (delay above target for over an interval).
    dropping: bool,
    /// When the next signal is due while `dropping`.
    drop_next: u64,
    /// Signals in this signalling state (sets the spacing).
    count: u32,
    /// `count` when the last signalling state began.
    last_count: u32,
}

impl Codel {
    pub fn new(cfg: CodelConfig) -> Codel {
        Codel {
            cfg,
            first_above: None,
            dropping: false,
            drop_next: 0,
            count: 0,
            last_count: 0,
        }
    }

    pub fn config(&self) -> CodelConfig {
        self.cfg
    }

    /// A packet leaves the queue at `now` (a monotonic clock, ns) after waiting
    /// `sojourn_ns`; `queue_empty` when nothing waits behind it. True when this packet
    /// is to carry a congestion signal (CE mark, or drop).
    ///
    /// RFC 8289's dequeue with one change: it signals at most once per packet and never
    /// takes the next packet itself (the caller's next packet is its next call), as
    /// Linux's CoDel does when it marks instead of dropping.
    pub fn on_dequeue(&mut self, now: u64, sojourn_ns: u64, queue_empty: bool) -> bool {
        let ok_to_signal = self.above_target_long_enough(now, sojourn_ns, queue_empty);
        if self.dropping {
            if !ok_to_signal {
                self.dropping = false;
                return false;
            }
            if now >= self.drop_next {
                self.count = self.count.saturating_add(1);
                self.drop_next = self.control_law(self.drop_next);
                return true;
            }
            return false;
        }
        if !ok_to_signal {
            return false;
        }
        self.dropping = true;
        // Coming back soon after the last signalling state: resume near its rate
        // rather than from one signal per interval.
        let delta = self.count.saturating_sub(self.last_count);
        let recent = now.saturating_sub(self.drop_next) < self.cfg.interval_ns.saturating_mul(16);
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.drop_next = self.control_law(now);
        self.last_count = self.count;
        true
    }

    fn above_target_long_enough(&mut self, now: u64, sojourn_ns: u64, queue_empty: bool) -> bool {
        if sojourn_ns < self.cfg.target_ns || queue_empty {
            self.first_above = None;
            return false;
        }
        match self.first_above {
            None => {
                self.first_above = Some(now.saturating_add(self.cfg.interval_ns));
                false
            }
            Some(t) => now >= t,
        }
    }

    /// The next signal: `interval / sqrt(count)` after `t`.
    fn control_law(&self, t: u64) -> u64 {
        let step = self.cfg.interval_ns as f64 / f64::from(self.count.max(1)).sqrt();
        t.saturating_add(step as u64)
    }
}

/// What [`mark_ce`] did to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The inner packet was ECN-capable: it now says CE (and its IPv4 header checksum
    /// was updated).
    Marked,
    /// It said CE already.
    AlreadyCe,
    /// Not ECN-capable (or not IP, or too short to tell): drop it instead.
    NotEct,
}

/// Sets the ECN field of an Ethernet frame's IPv4 or IPv6 packet to CE when it is
/// ECT(0) or ECT(1). The IPv4 header checksum is updated incrementally (RFC 1624), so a
/// header that arrived with a wrong checksum keeps it wrong.
pub fn mark_ce(frame: &mut [u8]) -> Marked {
    match ecn::of_frame(frame) {
        None | Some(ecn::NOT_ECT) => Marked::NotEct,
        Some(ecn::CE) => Marked::AlreadyCe,
        Some(_) if ecn::set_in_frame(frame, ecn::CE) => Marked::Marked,
        Some(_) => Marked::NotEct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::Checksum;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const CFG: CodelConfig = CodelConfig {
        target_ns: 5 * MS,
        interval_ns: 100 * MS,
    };

    /// Feeds one packet every `step` ns with the sojourn `delay(t)`; returns the times
    /// of the signals.
    fn run(cfg: CodelConfig, until: u64, step: u64, delay: impl Fn(u64) -> u64) -> Vec<u64> {
        let mut c = Codel::new(cfg);
        let mut out = Vec::new();
        let mut t = 1_000 * MS;
        while t < 1_000 * MS + until {
            if c.on_dequeue(t, delay(t - 1_000 * MS), false) {
                out.push(t - 1_000 * MS);
            }
            t += step;
        }
        out
    }

    #[test]
    fn no_signal_below_target() {
        assert!(run(CFG, 2_000 * MS, MS / 10, |_| 4 * MS).is_empty());
    }

    #[test]
    fn first_signal_one_interval_after_the_delay_rose() {
        let s = run(
            CFG,
            1_000 * MS,
            MS,
            |t| if t >= 300 * MS { 8 * MS } else { 0 },
        );
        // Above target from 300 ms: the first packet at or after 400 ms is signalled.
        assert_eq!(s.first(), Some(&(400 * MS)), "{s:?}");
    }

    #[test]
    fn signals_come_faster_while_the_delay_stays() {
        let s = run(CFG, 2_000 * MS, MS, |_| 20 * MS);
        assert!(s.len() >= 5, "{s:?}");
        let gaps: Vec<u64> = s.windows(2).map(|w| w[1] - w[0]).collect();
        // interval / sqrt(count): 100, 70.7, 57.7, 50 ms ... (to the next 1 ms packet).
        assert_eq!(gaps[0], 100 * MS, "{gaps:?}");
        assert_eq!(gaps[1], 71 * MS, "{gaps:?}");
        assert_eq!(gaps[2], 58 * MS, "{gaps:?}");
        // Never wider than the one before, but for the 1 ms the packets are apart.
        assert!(gaps.windows(2).all(|w| w[1] <= w[0] + MS), "{gaps:?}");
        assert!(*gaps.last().unwrap() < 15 * MS, "{gaps:?}");
    }

    #[test]
    fn a_drained_queue_stops_the_signals() {
        let mut c = Codel::new(CFG);
        let mut t = 0;
        let mut signals = 0;
        for _ in 0..1_000 {
            t += MS;
            signals += u32::from(c.on_dequeue(t, 30 * MS, false));
        }
        assert!(signals > 3);
        // One packet with nothing behind it, however old: the queue is gone.
        assert!(!c.on_dequeue(t + MS, 30 * MS, true));
        // Delay back above target: a whole interval again before the next signal.
        for i in 1..100 {
            assert!(!c.on_dequeue(t + MS + i * MS, 30 * MS, false), "at {i} ms");
        }
    }

    #[test]
    fn returning_soon_resumes_near_the_last_rate() {
        let mut c = Codel::new(CFG);
        let mut t = 0;
        for _ in 0..2_000 {
            t += MS;
            c.on_dequeue(t, 30 * MS, false);
        }
        let count = c.count;
        assert!(count > 5, "{count}");
        // A short dip below target, then above again.
        t += MS;
        c.on_dequeue(t, 0, false);
        let mut first = None;
        for _ in 0..500 {
            t += MS;
            if c.on_dequeue(t, 30 * MS, false) {
                first = Some(t);
                break;
            }
        }
        assert!(first.is_some());
        // The new state starts from the signals of the last one, not from 1.
        assert!(c.count > 1, "count {} (was {count})", c.count);
    }

    #[test]
    fn times_near_the_ends_of_the_clock_do_not_panic() {
        let mut c = Codel::new(CodelConfig {
            target_ns: 0,
            interval_ns: u64::MAX,
        });
        for t in [0, 1, u64::MAX - 1, u64::MAX, u64::MAX] {
            c.on_dequeue(t, u64::MAX, false);
        }
    }

    proptest! {
        /// Whatever the delays: no signal on a packet below target, none before the
        /// delay has been above target for an interval, and never two closer than
        /// interval / sqrt(signals so far + 1).
        #[test]
        fn signals_only_after_an_interval_above_target(
            delays in proptest::collection::vec((0u64..20 * MS, any::<bool>()), 1..3_000),
        ) {
            let mut c = Codel::new(CFG);
            let mut above_since: Option<u64> = None;
            let mut t = 0u64;
            for (d, empty) in delays {
                t += MS / 2;
                let s = c.on_dequeue(t, d, empty);
                if d < CFG.target_ns || empty {
                    above_since = None;
                    prop_assert!(!s);
                } else {
                    let since = *above_since.get_or_insert(t);
                    if s {
                        prop_assert!(t - since >= CFG.interval_ns);
                    }
                }
            }
        }

        /// Marking sets CE on ECT packets, keeps the IPv4 header checksum valid, and
        /// changes nothing else.
        #[test]
        fn marking_keeps_the_header_valid(
            tos in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 18),
        ) {
            let mut f = vec![0u8; 14];
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, tos];
            ip.extend_from_slice(&rest);
            ip[10] = 0;
            ip[11] = 0;
            let mut sum = Checksum::new();
            sum.add_bytes(&ip);
            let c = sum.finish();
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            let before = f.clone();
            let m = mark_ce(&mut f);
            let expect = match tos & 3 { 0 => Marked::NotEct, 3 => Marked::AlreadyCe, _ => Marked::Marked };
            prop_assert_eq!(m, expect);
            if m == Marked::Marked {
                prop_assert_eq!(f[15] & 3, 3);
                prop_assert_eq!(f[15] & !3, tos & !3);
                let mut check = Checksum::new();
                check.add_bytes(&f[14..34]);
                prop_assert_eq!(check.finish(), 0, "header no longer sums to zero");
                let changed: Vec<usize> = (0..f.len()).filter(|&i| f[i] != before[i]).collect();
                prop_assert!(changed.iter().all(|&i| [15, 24, 25].contains(&i)), "{:?}", changed);
            } else {
                prop_assert_eq!(f, before);
            }
        }

        #[test]
        fn marking_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut b = bytes;
            let _ = mark_ce(&mut b);
        }
    }

    #[test]
    fn ipv6_traffic_class_gets_ce() {
        // ECT(0) (traffic class 0x02), flow label 0.
        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14] = 0x60;
        f[15] = 0x20;
        assert_eq!(mark_ce(&mut f), Marked::Marked);
        assert_eq!((f[14], f[15]), (0x60, 0x30));
        assert_eq!(mark_ce(&mut f), Marked::AlreadyCe);
        f[15] = 0x00;
        assert_eq!(mark_ce(&mut f), Marked::NotEct);
        // Not IP at all.
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(mark_ce(&mut f), Marked::NotEct);
    }
}
