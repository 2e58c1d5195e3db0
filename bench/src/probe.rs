//! What a system call and a thread wake-up cost on this machine, measured before a
//! benchmark run and printed with its conditions (issue 15).
//!
//! A userspace dataplane pays for both on every batch: the TAP read and the UDP send
//! are system calls, and handing a packet from one thread to another wakes a thread.
//! CPU mitigations, the hypervisor and the kernel build change both costs between
//! machines that look alike. A figure that moved between two machines can be read
//! against these two numbers.
//!
//! - System call: `getppid(2)` in a loop. It does no work in the kernel and glibc does
//!   not cache it, so the loop measures the entry and exit path.
//! - Thread wake-up: two threads pass one byte back and forth over a Unix socket pair.
//!   Each read blocks, so every message puts a sleeping thread back on a CPU. Half a
//!   round trip is one wake-up, including the write and the read that cause and end
//!   it.
//!
//! Each figure is the median of [`ROUNDS`] rounds.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Rounds per figure (the median is reported).
pub const ROUNDS: usize = 5;
const SYSCALLS_PER_ROUND: u32 = 100_000;
const ROUND_TRIPS_PER_ROUND: u32 = 2_000;

/// The two costs, in nanoseconds (median of [`ROUNDS`] rounds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    pub syscall_ns: f64,
    pub wakeup_ns: f64,
}

/// Measures both costs; an error only when the socket pair or its thread fails.
pub fn measure() -> std::io::Result<Costs> {
    let mut sys = Vec::with_capacity(ROUNDS);
    let mut wake = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        sys.push(syscall_round());
        wake.push(wakeup_round()?);
    }
    Ok(Costs {
        syscall_ns: crate::stats::median(&sys).unwrap_or(f64::NAN),
        wakeup_ns: crate::stats::median(&wake).unwrap_or(f64::NAN),
    })
}

fn syscall_round() -> f64 {
    let t = Instant::now();
    for _ in 0..SYSCALLS_PER_ROUND {
        // SAFETY: getppid takes no arguments, cannot fail and touches no memory.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    t.elapsed().as_nanos() as f64 / f64::from(SYSCALLS_PER_ROUND)
}

fn wakeup_round() -> std::io::Result<f64> {
    let (mut a, mut b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        for _ in 0..ROUND_TRIPS_PER_ROUND {
            b.read_exact(&mut byte)?;
            b.write_all(&byte)?;
        }
        Ok(())
    });
    let mut byte = [7u8; 1];
    let t = Instant::now();
    let mut result = Ok(());
    for _ in 0..ROUND_TRIPS_PER_ROUND {
        if let Err(e) = a.write_all(&byte).and_then(|()| a.read_exact(&mut byte)) {
            result = Err(e);
            break;
        }
    }
    let elapsed = t.elapsed();
    // Closing our end ends the echo thread's read if we stopped early.
    drop(a);
    let joined = echo
        .join()
        .map_err(|_| std::io::Error::other("the echo thread panicked"))?;
    result?;
    joined?;
    Ok(elapsed.as_nanos() as f64 / f64::from(ROUND_TRIPS_PER_ROUND) / 2.0)
}

/// `system call 110 ns, thread wake-up 6.2 µs` (what the report prints).
pub fn describe(c: &Costs) -> String {
    format!(
        "system call {:.0} ns, thread wake-up {:.1} µs (getppid loop; half a socket-pair \
         round trip between two threads; medians of {ROUNDS})",
        c.syscall_ns,
        c.wakeup_ns / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both are measured, and a wake-up costs more than a bare system call: half a
    /// round trip holds a write and a read besides the sleep.
    #[test]
    fn a_wake_up_costs_more_than_a_system_call() {
        let c = measure().expect("socket pair");
        assert!(c.syscall_ns.is_finite() && c.syscall_ns > 0.0, "{c:?}");
        assert!(
            c.wakeup_ns.is_finite() && c.wakeup_ns > c.syscall_ns,
            "{c:?}"
        );
    }

    #[test]
    fn description() {
        let c = Costs {
            syscall_ns: 104.4,
            wakeup_ns: 6_249.0,
        };
        assert_eq!(
            describe(&c),
            "system call 104 ns, thread wake-up 6.2 µs (getppid loop; half a socket-pair round trip between two threads; medians of 5)"
        );
    }
}
