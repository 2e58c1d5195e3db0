//! Test support shared by the tests of every vxmesh crate and by the benchmark harness.
//!
//! - Prerequisites. Tests that need root, network namespaces or an etcd binary are marked
//!   `#[ignore = "needs …"]`, so a plain `cargo test` lists them as ignored instead of
//!   passing them silently. `scripts/test.sh` runs them with `cargo test -- --include-ignored`
//!   (as root, etcd installed); a test that runs must have what it needs, so the first line
//!   of each is [`require_root`] / [`require_etcd`] / [`require_commands`], which fail the
//!   test with what is missing and how to get it.
//! - [`netns`]: network namespaces as guards (deleted with their processes on drop), veth
//!   pairs, closures run inside a namespace ([`in_netns`]).
//! - Names: [`unique_prefix`] (the process id, for names other runs must not reuse) and
//!   [`unique`] (a counter within the process).
//! - [`wait_for`]: bounded polling; [`run`] / [`sh`] / [`try_sh`]: commands.
//!
//! Not a place for one crate's fixtures (a CNI node, the etcd lab): those stay with their
//! tests and build on these.

pub mod netns;

use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use netns::{in_netns, veth, Netns};

/// How to run the ignored tests, for failure messages.
const HOW: &str = "scripts/test.sh runs the ignored tests as root with \
                   `cargo test --workspace -- --include-ignored`";

/// Fails the calling test unless it runs as root (network namespaces, TAP devices,
/// netlink and iptables need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, devices, netlink) and runs as uid {euid}; {HOW}"
    );
}

/// Fails the calling test unless every command is found on PATH.
pub fn require_commands(commands: &[&str]) {
    let missing: Vec<&str> = commands.iter().copied().filter(|c| !on_path(c)).collect();
    assert!(
        missing.is_empty(),
        "this test needs {} on PATH (scripts/install-deps.sh installs them); {HOW}",
        missing.join(", ")
    );
}

/// Fails the calling test unless `etcd` and `etcdctl` are installed (each etcd test starts
/// its own member on loopback ports).
pub fn require_etcd() {
    let missing: Vec<&str> = ["etcd", "etcdctl"]
        .into_iter()
        .filter(|c| !on_path(c))
        .collect();
    assert!(
        missing.is_empty(),
        "this test needs etcd: {} not found (apt-get install etcd-server etcd-client); {HOW}",
        missing.join(", ")
    );
}

/// Whether an executable file named `command` is in a PATH directory.
fn on_path(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        dir.join(command)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A short prefix unique to this process, for namespace and interface names (interface
/// names must stay under 16 bytes: keep what you append short).
pub fn unique_prefix() -> String {
    format!("vx{}", std::process::id() % 100_000)
}

/// A number unique within this process.
pub fn unique() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Polls `f` every 20 ms for up to `limit`; how long it took to become true, or `None`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command, returning stdout; an error carries the command line and stderr.
pub fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {program}: {e}")))?;
    check(program, args, out)
}

fn check(program: &str, args: &[&str], out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{} {}` failed ({}): {}{}",
            program,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `argv` (program first), panicking with its output when it fails; its stdout.
#[allow(clippy::panic)]
pub fn sh(argv: &[&str]) -> String {
    let Some((program, args)) = argv.split_first() else {
        panic!("sh: empty command line");
    };
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `argv` (program first), quietly; whether it succeeded.
pub fn try_sh(argv: &[&str]) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_their_errors() {
        assert_eq!(sh(&["echo", "hi"]), "hi\n");
        assert!(try_sh(&["true"]));
        assert!(!try_sh(&["false"]));
        assert!(!try_sh(&["/nonexistent/program"]));
        assert!(!try_sh(&[]));
        let e = run("sh", &["-c", "echo out; echo err >&2; exit 3"]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("`sh -c echo out; echo err >&2; exit 3` failed")
                && e.contains("out")
                && e.contains("err"),
            "{e}"
        );
        assert!(run("/nonexistent/program", &[])
            .unwrap_err()
            .to_string()
            .contains("cannot run /nonexistent/program"));
    }

    #[test]
    fn path_lookup() {
        assert!(on_path("sh"));
        assert!(!on_path("vxmesh-no-such-command"));
        require_commands(&["sh"]);
        let r = std::panic::catch_unwind(|| require_commands(&["sh", "vxmesh-no-such-command"]));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(
            msg.contains("needs vxmesh-no-such-command on PATH"),
            "{msg}"
        );
    }

    #[test]
    fn waits_are_bounded() {
        let mut n = 0;
        let took = wait_for(Duration::from_secs(5), || {
            n += 1;
            n == 3
        });
        assert!(took.is_some_and(|t| t < Duration::from_secs(5)));
        let t = Instant::now();
        assert_eq!(wait_for(Duration::from_millis(50), || false), None);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn names() {
        assert_ne!(unique(), unique());
        let p = unique_prefix();
        assert!(p.starts_with("vx") && p.len() <= 7, "{p}");
    }
}
