//! Network namespaces for tests and benchmarks.
//!
//! [`Netns`] creates a namespace with `ip netns add` and removes it, with every process
//! still inside, when dropped (also when a test panics). [`Netns::unique`] names it after
//! the process id and a counter so parallel tests and runs cannot collide.
//! [`in_netns`] / [`Netns::run`] run a closure on a fresh thread that has `setns(2)`-ed into
//! the namespace: sockets, TAP devices and netlink connections it opens belong there.
//! Errors are `io::Result`s (the benchmark harness uses this too); tests unwrap them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{run, unique, unique_prefix};

/// A network namespace that is deleted (with its processes) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates the namespace `name` (removing a stale one of the same name first) and
    /// brings its loopback up.
    pub fn new(name: &str) -> io::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace named `<unique_prefix>-<tag>-<n>`: unique to this process and call.
    pub fn unique(tag: &str) -> io::Result<Netns> {
        Netns::new(&format!("{}-{tag}-{}", unique_prefix(), unique()))
    }

    /// Takes charge of an existing namespace (e.g. one a killed run left behind):
    /// dropping the guard kills its processes and deletes it.
    pub fn adopt(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            deleted: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what CNI_NETNS and `nsenter --net=` take.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Kills the processes inside and deletes the namespace now (e.g. to play a container
    /// that is gone); dropping the guard afterwards does nothing.
    pub fn delete(&mut self) -> io::Result<()> {
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        run("ip", &["netns", "del", &self.name])?;
        self.deleted = true;
        Ok(())
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Adds the IPv6 address `cidr` to `dev`, usable at once (no duplicate address
    /// detection).
    pub fn add_ipv6(&self, cidr: &str, dev: &str) -> io::Result<String> {
        self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
    }

    /// `<program> -n <ns> -j <args>` (`ip`, `bridge`) parsed; an empty array when the tool
    /// prints nothing.
    pub fn json(&self, program: &str, args: &[&str]) -> io::Result<Value> {
        let mut a = vec!["-n", self.name.as_str(), "-j"];
        a.extend_from_slice(args);
        let out = run(program, &a)?;
        if out.trim().is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{program} {a:?}: {e}: {out}"),
            )
        })
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
        in_netns(&self.name, f)
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
        if !self.deleted {
            let _ = self.delete();
        }
    }
}

/// Runs `f` on a new thread that has joined the network namespace `name` (one created
/// with `ip netns add`, by [`Netns`] or by a script) and returns its result.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let h = std::thread::spawn(move || -> io::Result<T> {
        // SAFETY: setns on this thread only (CLONE_NEWNET); `file` is an open namespace
        // fd that outlives the call.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    });
    match h.join() {
        Ok(r) => r,
        // A panic inside (a failed assertion) is the caller's: pass it on unchanged.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Joins two namespaces with a veth pair, addresses each end (CIDR) and brings both up.
/// The pair dies with either namespace.
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;

    use super::*;
    use crate::{require_root, wait_for};

    /// The interface index of `name` in the calling thread's namespace (0: none).
    fn if_index(name: &str) -> u32 {
        let c = CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    fn listed(name: &str) -> bool {
        run("ip", &["netns", "list"])
            .unwrap()
            .split_whitespace()
            .any(|n| n == name)
    }

    #[test]
    #[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
    fn guard_runs_code_inside_and_cleans_up() {
        require_root();
        let ns = Netns::unique("kit").unwrap();
        let name = ns.name().to_string();
        assert!(listed(&name), "{name} not in `ip netns list`");
        assert_eq!(ns.path(), format!("/run/netns/{name}"));

        // A device made in the namespace is visible to a closure run there, not outside.
        let dev = format!("kit{}", std::process::id() % 100_000);
        let peer = format!("{dev}p");
        ns.ip(&["link", "add", &dev, "type", "veth", "peer", "name", &peer])
            .unwrap();
        let d = dev.clone();
        assert_ne!(ns.run(move || if_index(&d)).unwrap(), 0);
        assert_eq!(if_index(&dev), 0, "{dev} leaked into the test's namespace");
        let link = ns.json("ip", &["link", "show", "dev", &dev]).unwrap();
        assert_eq!(link[0]["ifname"], dev.as_str());
        let none = ns.json("ip", &["route", "show", "table", "main"]).unwrap();
        assert_eq!(none, Value::Array(vec![]), "nothing printed: an empty list");
        assert!(ns
            .json("ip", &["link", "show", "dev", "nonexistent0"])
            .is_err());

        // A failed assertion inside reaches the caller as the same panic.
        let r = std::panic::catch_unwind(|| ns.run(|| panic!("inside the namespace")));
        let msg = *r.unwrap_err().downcast::<&str>().unwrap();
        assert_eq!(msg, "inside the namespace");

        // Dropping the guard kills what runs inside and deletes the namespace.
        let mut child = ns.command("sleep").arg("30").spawn().unwrap();
        assert!(wait_for(Duration::from_secs(5), || !ns.pids().is_empty()).is_some());
        drop(ns);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(!listed(&name), "{name} still listed after drop");
    }

    #[test]
    #[ignore = "needs root and network namespaces: scripts/test.sh runs it"]
    fn delete_now_and_veth_pairs() {
        require_root();
        let a = Netns::unique("kita").unwrap();
        let mut b = Netns::unique("kitb").unwrap();
        veth(&a, "va", "192.0.2.1/24", &b, "vb", "192.0.2.2/24").unwrap();
        a.exec("ping", &["-c", "1", "-W", "2", "192.0.2.2"])
            .unwrap();
        let name = b.name().to_string();
        b.delete().unwrap();
        assert!(!listed(&name));
        // The pair died with b; a's end goes with it (asynchronously).
        assert!(
            wait_for(Duration::from_secs(5), || a
                .ip(&["link", "show", "va"])
                .is_err())
            .is_some(),
            "va survived its peer's namespace"
        );
        drop(b); // nothing left to do: no error, no second delete
        assert!(Netns::adopt(&name).delete().is_err(), "already gone");
    }
}
