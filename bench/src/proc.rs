//! Child processes with bounds: daemons that die with their guard, and commands
//! that must finish within a timeout.
//!
//! Children run in their own process group, so a Ctrl-C at the terminal reaches
//! only the harness, which then stops them in order (see [`crate::stop`]).
//! `ip netns exec` execs the program in place, so a child's pid is the program's.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vxmesh_testkit::Netns;

use crate::stop;

/// A background process (iperf3 server, etcd, vxmeshd) stopped when dropped:
/// SIGTERM, a grace period, then SIGKILL.
#[derive(Debug)]
pub struct Daemon {
    what: String,
    child: Child,
    done: bool,
}

impl Daemon {
    /// Spawns `program args` inside `ns`, stdout and stderr appended to `log`.
    pub fn spawn(ns: &Netns, program: &str, args: &[&str], log: &Path) -> anyhow::Result<Daemon> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = ns.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {program} in {}", ns.name()))?;
        Ok(Daemon {
            what: format!("{program} in {}", ns.name()),
            child,
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.done {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            _ => {
                self.done = true;
                false
            }
        }
    }

    /// Fails if the process has already exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            Ok(())
        } else {
            bail!("{} exited early", self.what)
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        if self.done {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; `pid` is our child,
        // not yet reaped (so the pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.done = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// What a bounded command produced.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it after `timeout` (an error) or on
/// interruption; stdout and stderr are captured.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> anyhow::Result<Finished> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {desc}"))?;
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    // Drain both pipes on threads: iperf3's JSON can exceed a pipe buffer.
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = so.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = se.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop::requested() || Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            let _ = err_t.join();
            stop::check()?;
            bail!("timed out after {timeout:?}: {desc}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// [`run_bounded`] inside `ns`; a non-zero exit is an error carrying stderr.
pub fn ns_output(
    ns: &Netns,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut cmd = ns.command(program);
    cmd.args(args);
    let f = run_bounded(cmd, timeout)?;
    if !f.status.success() {
        bail!(
            "`{program} {}` in {} failed ({}): {}",
            args.join(" "),
            ns.name(),
            f.status,
            f.stderr.trim()
        );
    }
    Ok(f.stdout)
}
