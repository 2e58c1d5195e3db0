//! How the engine threads ask to be scheduled (`--engine-priority`).
//!
//! On a busy node the engine threads wait for a CPU behind the pods' processes, and
//! their queues fill meanwhile: measured on 2 vCPUs, a ping under 8 TCP streams took
//! 3.2–3.8 ms at the default priority and at nice −10 alike, and 0.10–0.12 ms at
//! `SCHED_FIFO` 1, which also cost 25–50 % of the throughput (docs/decisions/0020,
//! 0032). So the default leaves them alone, and an operator can choose. A real-time
//! thread does not busy-poll unless asked to (its yields would not reach the pods).

use std::fmt;
use std::io;

/// The scheduling an engine thread sets for itself when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPriority {
    /// Left as inherited from the agent.
    #[default]
    Normal,
    /// `SCHED_OTHER` at this nice value (−20 to 19).
    Nice(i8),
    /// `SCHED_FIFO` at this real-time priority (1 to 99).
    Fifo(u8),
}

impl ThreadPriority {
    /// `normal`, `nice:<-20..19>` or `fifo:<1..99>` (pure).
    pub fn parse(s: &str) -> Result<ThreadPriority, String> {
        let s = s.trim();
        if s == "normal" {
            return Ok(ThreadPriority::Normal);
        }
        let bad = || format!("{s:?}: use normal, nice:<-20 to 19> or fifo:<1 to 99>");
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        let n: i32 = value.trim().parse().map_err(|_| bad())?;
        match kind.trim() {
            "nice" if (-20..=19).contains(&n) => Ok(ThreadPriority::Nice(n as i8)),
            "fifo" if (1..=99).contains(&n) => Ok(ThreadPriority::Fifo(n as u8)),
            _ => Err(bad()),
        }
    }

    /// Whether this is a real-time policy, whose threads run before every normal
    /// one and whose `sched_yield` gives the CPU only to other real-time threads.
    pub fn is_realtime(self) -> bool {
        matches!(self, ThreadPriority::Fifo(_))
    }

    /// Sets this scheduling for the calling thread only. A refusal says what the
    /// agent lacks.
    pub fn apply_to_current_thread(self) -> io::Result<()> {
        let r = match self {
            ThreadPriority::Normal => return Ok(()),
            ThreadPriority::Nice(n) => {
                // SAFETY: gettid has no preconditions; setpriority(PRIO_PROCESS, tid)
                // names only this thread on Linux and reads nothing from memory.
                unsafe {
                    libc::setpriority(
                        libc::PRIO_PROCESS,
                        libc::gettid() as libc::id_t,
                        libc::c_int::from(n),
                    )
                }
            }
            ThreadPriority::Fifo(p) => {
                let param = libc::sched_param {
                    sched_priority: libc::c_int::from(p),
                };
                // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
                // that outlives the call.
                unsafe {
                    libc::sched_setscheduler(
                        0,
                        libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
                        &param,
                    )
                }
            }
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => {
                "; it needs CAP_SYS_NICE (vxmeshd runs as root), or a RLIMIT_NICE/RLIMIT_RTPRIO that allows it, and under cgroup v2 with CPU controller a real-time budget; or use --engine-priority normal"
            }
            _ => "",
        };
        Err(io::Error::new(
            e.kind(),
            format!("cannot set {self} for an engine thread: {e}{hint}"),
        ))
    }
}

impl fmt::Display for ThreadPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThreadPriority::Normal => f.write_str("normal"),
            ThreadPriority::Nice(n) => write!(f, "nice:{n}"),
            ThreadPriority::Fifo(p) => write!(f, "fifo:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        for (text, p) in [
            ("normal", ThreadPriority::Normal),
            ("nice:-10", ThreadPriority::Nice(-10)),
            ("nice:19", ThreadPriority::Nice(19)),
            ("nice:-20", ThreadPriority::Nice(-20)),
            ("fifo:1", ThreadPriority::Fifo(1)),
            ("fifo:99", ThreadPriority::Fifo(99)),
        ] {
            assert_eq!(ThreadPriority::parse(text), Ok(p), "{text}");
            assert_eq!(p.to_string(), text);
        }
        assert_eq!(
            ThreadPriority::parse(" nice: 5 "),
            Ok(ThreadPriority::Nice(5))
        );
    }

    #[test]
    fn refuses_what_the_kernel_would() {
        for bad in [
            "",
            "high",
            "nice",
            "nice:",
            "nice:20",
            "nice:-21",
            "fifo:0",
            "fifo:100",
            "rr:1",
            "fifo:1.5",
            "nice:-10:1",
            "NICE:1",
        ] {
            let e = ThreadPriority::parse(bad).unwrap_err();
            assert!(e.contains("use normal, nice:"), "{bad}: {e}");
        }
    }

    /// Raising the nice value needs no privilege: a thread can do it to itself, and
    /// only to itself.
    #[test]
    fn a_nice_value_is_set_on_the_calling_thread_only() {
        fn nice_of(tid: &str) -> i32 {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            // Field 19 (nice), counted after the command's closing parenthesis.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split(' ').nth(16).unwrap().parse().unwrap()
        }
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() }.to_string();
        let before = nice_of(&me);
        let (inner, after) = std::thread::spawn(move || {
            // SAFETY: as above.
            let tid = unsafe { libc::gettid() }.to_string();
            let target = (before + 3).min(19);
            ThreadPriority::Nice(target as i8)
                .apply_to_current_thread()
                .unwrap();
            (nice_of(&tid), target)
        })
        .join()
        .unwrap();
        assert_eq!(inner, after);
        assert_eq!(nice_of(&me), before);
        assert!(ThreadPriority::Normal.apply_to_current_thread().is_ok());
    }
}
