//! When a packet thread whose queue ran dry checks again before it sleeps
//! (docs/decisions/0021 and 0028). Pure: the engine's threads report what they
//! carried and when they slept, and ask how long to keep checking.
//!
//! A wake-up costs a thread tens of µs on a VM (an IPI, a VM exit), and bulk
//! traffic that a sender paces (BBR does; so does any TCP behind `fq`) arrives at
//! gaps of a few tens of µs: a thread that sleeps in each gap pays a wake-up per
//! burst and leaves the frames waiting meanwhile. A thread that has just carried a
//! burst keeps checking for a short budget instead, and so do the engine's other
//! threads while it does: the thread that carries a bulk flow's ACKs sees one small
//! packet at a time, yet its wake-ups delay the sender as much. A thread that has
//! carried one small packet (a ping, a request) while no thread of its engine is in
//! a burst sleeps at once, as before, so light traffic costs nothing more.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A packet thread's busy-polling policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// How long a thread keeps checking for traffic before it sleeps (zero: off).
    pub budget: Duration,
    /// Only after a burst ([`SpinGate`]): the default, `auto`. Otherwise after
    /// every packet (`--busy-poll DURATION`).
    pub after_burst_only: bool,
}

impl BusyPoll {
    /// Never: a thread sleeps as soon as its queue runs dry.
    pub const OFF: BusyPoll = BusyPoll {
        budget: Duration::ZERO,
        after_burst_only: false,
    };

    /// The default's budget: longer than the gap between a paced sender's bursts
    /// at multi-Gbit/s (a 64 KiB TSO frame every 50–65 µs at 8–10 Gbit/s), shorter
    /// than a request/response exchange's round trip through two nodes.
    pub const AUTO_BUDGET: Duration = Duration::from_micros(50);

    /// The default (`--busy-poll auto`): [`Self::AUTO_BUDGET`], after a burst only.
    pub const AUTO: BusyPoll = BusyPoll {
        budget: Self::AUTO_BUDGET,
        after_burst_only: true,
    };

    /// After every packet, for `budget` (`--busy-poll DURATION`).
    pub fn always(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            after_burst_only: false,
        }
    }

    pub fn is_off(&self) -> bool {
        self.budget.is_zero()
    }
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll::AUTO
    }
}

impl fmt::Display for BusyPoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            f.write_str("off")
        } else if self.after_burst_only {
            write!(f, "auto ({:?} after a burst)", self.budget)
        } else {
            write!(f, "{:?} after every packet", self.budget)
        }
    }
}

/// How many of an engine's threads are in a burst now, shared between them: while
/// one is, the others' after-a-burst budget applies too.
#[derive(Debug, Default)]
pub struct Bursting(AtomicU32);

impl Bursting {
    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// What a packet thread has carried since it last slept, which decides whether an
/// after-a-burst budget applies when its queue runs dry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpinGate {
    packets: u64,
    bytes: u64,
    /// This thread counts itself in the engine's [`Bursting`].
    counted: bool,
}

impl SpinGate {
    /// A burst: this many packets (frames read from the TAP, datagrams received)
    /// since the thread last slept…
    pub const BURST_PACKETS: u64 = 8;
    /// …or this many bytes (half a TSO frame).
    pub const BURST_BYTES: u64 = 32 * 1024;

    /// The thread carried `packets` packets of `bytes` bytes in all.
    #[inline]
    pub fn carried(&mut self, packets: u64, bytes: u64) {
        self.packets = self.packets.saturating_add(packets);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Whether what this thread carried since it last slept is a burst.
    pub fn in_burst(&self) -> bool {
        self.packets >= Self::BURST_PACKETS || self.bytes >= Self::BURST_BYTES
    }

    /// How long to keep checking now that the queue ran dry: the policy's budget
    /// unless it applies after a burst only and neither this thread nor another of
    /// its engine (`bursting`) is in one. Counts this thread in `bursting` from its
    /// burst until it sleeps.
    pub fn budget(&mut self, policy: BusyPoll, bursting: &Bursting) -> Duration {
        if self.in_burst() && !self.counted {
            bursting.0.fetch_add(1, Ordering::Relaxed);
            self.counted = true;
        }
        if !policy.after_burst_only || bursting.any() {
            policy.budget
        } else {
            Duration::ZERO
        }
    }

    /// The thread is going to sleep (its budget passed with nothing to read, or it
    /// had none): its burst is over, and the next counts from here.
    pub fn slept(&mut self, bursting: &Bursting) {
        if self.counted {
            bursting.0.fetch_sub(1, Ordering::Relaxed);
        }
        *self = SpinGate::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn auto_spins_after_a_burst_only() {
        let b = Bursting::default();
        let mut g = SpinGate::default();
        // One ping, one request: sleep at once.
        g.carried(1, 98);
        assert_eq!(g.budget(BusyPoll::AUTO, &b), Duration::ZERO);
        // Seven small packets are not yet a burst; the eighth is.
        g.carried(6, 6 * 98);
        assert_eq!(g.budget(BusyPoll::AUTO, &b), Duration::ZERO);
        assert!(!b.any());
        g.carried(1, 98);
        assert_eq!(g.budget(BusyPoll::AUTO, &b), BusyPoll::AUTO_BUDGET);
        assert!(b.any());
        // The burst holds while the thread keeps finding traffic within its budget
        // (asking again counts it once), and ends when it sleeps.
        g.carried(1, 60);
        assert_eq!(g.budget(BusyPoll::AUTO, &b), BusyPoll::AUTO_BUDGET);
        g.slept(&b);
        assert!(!b.any());
        assert_eq!(g.budget(BusyPoll::AUTO, &b), Duration::ZERO);
        // One TSO frame of a paced sender is a burst by its bytes.
        g.carried(1, 62_000);
        assert_eq!(g.budget(BusyPoll::AUTO, &b), BusyPoll::AUTO_BUDGET);
        g.slept(&b);
        assert!(!b.any());
    }

    /// The thread that carries a bulk flow's ACKs (one small packet per wake-up)
    /// spins while the thread carrying its data is in a burst, and not after.
    #[test]
    fn a_burst_on_one_thread_keeps_the_others_awake() {
        let b = Bursting::default();
        let (mut data, mut acks) = (SpinGate::default(), SpinGate::default());
        acks.carried(1, 66);
        assert_eq!(acks.budget(BusyPoll::AUTO, &b), Duration::ZERO);
        data.carried(1, 65_000);
        assert_eq!(data.budget(BusyPoll::AUTO, &b), BusyPoll::AUTO_BUDGET);
        acks.carried(1, 66);
        assert_eq!(acks.budget(BusyPoll::AUTO, &b), BusyPoll::AUTO_BUDGET);
        // The ACK thread's own sleep does not end the data thread's burst.
        acks.slept(&b);
        assert!(b.any());
        data.slept(&b);
        acks.carried(1, 66);
        assert_eq!(acks.budget(BusyPoll::AUTO, &b), Duration::ZERO);
        // Off stays off whatever the others do.
        data.carried(1, 65_000);
        assert_eq!(data.budget(BusyPoll::AUTO, &b), BusyPoll::AUTO_BUDGET);
        assert_eq!(acks.budget(BusyPoll::OFF, &b), Duration::ZERO);
        data.slept(&b);
        assert!(!b.any());
    }

    #[test]
    fn off_and_always_ignore_the_gate() {
        let b = Bursting::default();
        let mut g = SpinGate::default();
        assert_eq!(g.budget(BusyPoll::OFF, &b), Duration::ZERO);
        let always = BusyPoll::always(Duration::from_millis(1));
        assert_eq!(g.budget(always, &b), Duration::from_millis(1));
        g.carried(1_000, 1 << 30);
        assert_eq!(g.budget(BusyPoll::OFF, &b), Duration::ZERO);
        assert_eq!(g.budget(always, &b), Duration::from_millis(1));
        g.slept(&b);
        assert!(!b.any());
    }

    #[test]
    fn described_as_the_operator_set_it() {
        assert_eq!(BusyPoll::OFF.to_string(), "off");
        assert_eq!(BusyPoll::AUTO.to_string(), "auto (50µs after a burst)");
        assert_eq!(
            BusyPoll::always(Duration::from_micros(200)).to_string(),
            "200µs after every packet"
        );
        assert_eq!(BusyPoll::default(), BusyPoll::AUTO);
    }

    proptest! {
        /// The budget is the policy's or nothing; a thread's burst is monotone in
        /// what it carried and ends with its sleep; the engine's count of bursting
        /// threads is the number of threads counted in it; counting never overflows.
        #[test]
        fn the_gate_is_monotone(
            steps in proptest::collection::vec((0usize..3, 0u64..u64::MAX, 0u64..u64::MAX, proptest::bool::ANY), 0..40)
        ) {
            let b = Bursting::default();
            let mut gates = [SpinGate::default(); 3];
            for (t, p, bytes, sleep) in steps {
                let was = gates[t].in_burst();
                gates[t].carried(p % 16, bytes % 100_000);
                prop_assert!(gates[t].in_burst() || !was);
                let budget = gates[t].budget(BusyPoll::AUTO, &b);
                prop_assert!(budget == Duration::ZERO || budget == BusyPoll::AUTO_BUDGET);
                if gates[t].in_burst() {
                    prop_assert_eq!(budget, BusyPoll::AUTO_BUDGET);
                }
                if sleep {
                    gates[t].slept(&b);
                    prop_assert!(!gates[t].in_burst());
                }
                let counted = gates.iter().filter(|g| g.counted).count() as u32;
                prop_assert_eq!(b.0.load(Ordering::Relaxed), counted);
            }
        }
    }
}
