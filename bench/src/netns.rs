//! Network namespaces for tests and benchmarks.
//!
//! [`Netns`] creates a namespace with `ip netns add` and removes it, with every
//! process still inside, when dropped (also when a test panics). Names carry the
//! process id ([`unique_prefix`]) so parallel runs on one machine cannot collide.
//! [`Netns::run`] runs a closure on a fresh thread that has `setns(2)`-ed into the
//! namespace: sockets and TAP devices it opens belong to that namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};

/// Whether privileged tests must run. With `VXMESH_PRIVILEGED_TESTS=1` they must
/// (and fail loudly if they cannot); otherwise they print a SKIP line and return.
pub fn privileged(test: &str) -> bool {
    if std::env::var("VXMESH_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "{test}: VXMESH_PRIVILEGED_TESTS=1 but not running as root"
        );
        true
    } else {
        eprintln!("SKIP: {test} needs root and network namespaces; set VXMESH_PRIVILEGED_TESTS=1");
        false
    }
}

/// A short prefix unique to this process, for namespace and interface names
/// (interface names must stay under 16 bytes: keep what you append short).
pub fn unique_prefix() -> String {
    format!("vx{}", std::process::id() % 100_000)
}

/// Runs a command, returning stdout; an error carries the command line and stderr.
pub fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    check(program, args, out)
}

fn check(program: &str, args: &[&str], out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{} {}` failed ({}): {}",
            program,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A network namespace that is deleted (with its processes) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (removing a stale one of the same name first) and
    /// brings its loopback up.
    pub fn new(name: &str) -> io::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes charge of an existing namespace (e.g. one a killed run left
    /// behind): dropping the guard kills its processes and deletes it.
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `ip netns exec <ns> <program> <args>`, waited for; stdout on success.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str(), program];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// A `Command` that runs `program` inside the namespace (to spawn daemons).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name.as_str(), program]);
        c
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path)?;
        let h = std::thread::spawn(move || -> io::Result<T> {
            // SAFETY: setns on this thread only (CLONE_NEWNET); `file` is an open
            // namespace fd that outlives the call.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        h.join()
            .map_err(|_| io::Error::other("thread in netns panicked"))?
    }

    /// Pids of processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run("ip", &["netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair, addresses each end (CIDR) and brings
/// both up. Returns nothing; the pair dies with either namespace.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_cidr: &str,
    b: &Netns,
    b_if: &str,
    b_cidr: &str,
) -> io::Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["addr", "add", a_cidr, "dev", a_if])?;
    b.ip(&["addr", "add", b_cidr, "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}
