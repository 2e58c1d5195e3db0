//! Privileged end to end: vxmeshd started the way a flanneld unit starts flanneld, in
//! a node of the netns lab (scripts/lab.sh). Runs when VXMESH_PRIVILEGED_TESTS=1 (root).
//!
//! The lab's node 2 agent is stopped and replaced by vxmeshd run with a Go-style
//! flanneld command line and an environment holding only `FLANNELD_*` variables (as a
//! unit's `EnvironmentFile=` gives them) plus `PATH` and systemd's `NOTIFY_SOCKET`.
//! The node has no default route, so it comes up only if `FLANNELD_IFACE` is read.
//! Checks: READY=1 reaches the notify socket, the node becomes ready on eth0 with its
//! subnet, pods on both nodes reach each other, the effective flags are logged, and
//! after `iptables -F` (filter and nat) in the node the rules are back within the
//! resync period (`-iptables-resync=1`). Then behind NAT: restarted with
//! `-public-ip=203.0.113.12` (not a local address; n1 reaches it through DNAT/SNAT as
//! through a NAT gateway) and the interface found by `-iface-can-reach` after a
//! missing `-iface` and a `-iface-regex` that matches nothing, vxmeshd sends from
//! eth0's own address, advertises the public one, and the pods reach each other again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use vxmesh_testkit::{require_etcd, require_root, wait_for};

/// Kills and reaps the vxmeshd this test started (also after a failed assertion);
/// declared after the lab so it drops first.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iptables_ok(lab: &Lab, node: &str, args: &[&str]) -> bool {
    let ns = lab.ns(node);
    let mut a = vec!["netns", "exec", ns.as_str(), "iptables", "-w"];
    a.extend_from_slice(args);
    Command::new("ip")
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn rules_in_place(lab: &Lab) -> bool {
    let hook = |table: &str, chain: &str, target: &str| {
        iptables_ok(
            lab,
            "n2",
            &[
                "-t",
                table,
                "-C",
                chain,
                "-m",
                "comment",
                "--comment",
                "vxmesh",
                "-j",
                target,
            ],
        )
    };
    hook("nat", "POSTROUTING", "VXMESH-POSTRTG")
        && hook("filter", "FORWARD", "VXMESH-FWD")
        && iptables_ok(
            lab,
            "n2",
            &[
                "-t",
                "filter",
                "-C",
                "VXMESH-FWD",
                "-s",
                "10.244.0.0/16",
                "-m",
                "comment",
                "--comment",
                "vxmesh forward",
                "-j",
                "ACCEPT",
            ],
        )
}

/// Starts vxmeshd in node 2 as a flanneld unit would: `args` on the command line, only
/// `FLANNELD_*` variables (plus PATH and NOTIFY_SOCKET) in the environment; returns
/// once READY=1 arrived, failing with the log if vxmeshd exits first.
fn start_as_flanneld(lab: &Lab, args: &[&str], log_name: &str) -> (Agent, std::path::PathBuf) {
    let notify_path = lab.state.join(format!("{log_name}.sock"));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let log_path = lab.state.join(format!("{log_name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("n2")])
        .arg(lab.bin.join("vxmeshd"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLANNELD_ETCD_ENDPOINTS", "http://192.168.100.2:2379")
        .env("FLANNELD_IFACE", "eth0")
        .env("FLANNELD_SUBNET_FILE", lab.state.join("n2/subnet.env"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = Agent(child);
    let started = Instant::now();
    // vxmeshd also stores its descriptors (FDSTORE=1, with SCM_RIGHTS, dropped here)
    // before it is ready: wait for the message with a READY=1 line.
    let mut buf = [0u8; 4096];
    let msg = loop {
        if let Ok(n) = notify.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == "READY=1") {
                break msg;
            }
            continue;
        }
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(Some(status)) = agent.0.try_wait() {
            panic!("vxmeshd exited ({status}) before it was ready:\n{}", log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no READY=1 from vxmeshd within 60 s:\n{}",
            log()
        );
    };
    assert!(
        msg.starts_with("READY=1\nSTATUS=forwarding"),
        "READY=1 with the status line: {msg:?}"
    );
    println!("{log_name}: READY=1 after {:?}", started.elapsed());
    lab.exec(
        "n2",
        &[
            lab.bin.join("vxmeshctl").to_str().unwrap(),
            "wait-ready",
            "--timeout",
            "30",
        ],
    );
    (agent, log_path)
}

#[test]
#[ignore = "needs root, network namespaces and etcd: scripts/test.sh runs it"]
fn flanneld_command_line_and_environment_start_vxmeshd() {
    require_root();
    require_etcd();
    let lab = Lab::new(
        "vxf",
        &[
            ("VXLAB_NODES", "2"),
            ("VXLAB_PODS", "1"),
            ("VXLAB_IPERF_SECONDS", "1"),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    println!("{out}");
    assert!(ok, "lab up failed");
    let subnet = lab.subnet_of(2);
    lab.must(&["stop-agent", "2"]);

    // A Go-style flanneld command line (single dashes, bare bool, a value after a space,
    // -v) and only FLANNELD_* variables: no --iface and no default route in the node,
    // so FLANNELD_IFACE decides.
    let (agent, log_path) = start_as_flanneld(
        &lab,
        &[
            "-etcd-prefix=/coreos.com/network",
            "-ip-masq",
            "-iptables-resync=1",
            "-subnet-lease-renew-margin",
            "1",
            "-v=1",
        ],
        "vxmeshd-n2-flanneld",
    );
    let st = lab.status("n2");
    assert_eq!(st["node"]["iface"], "eth0", "{st}");
    assert_eq!(st["node"]["public_ip"], "192.168.100.12", "{st}");
    assert_eq!(lab.subnet_of(2), subnet, "same subnet as before the switch");
    assert_eq!(st["node"]["lease_ttl_secs"], 3600, "{st}");
    let log_text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log_text.contains("flags: --etcd-endpoints=http://192.168.100.2:2379 --etcd-prefix=/coreos.com/network --iface=eth0"),
        "{log_text}"
    );
    assert!(log_text.contains("--iptables-resync=1"), "{log_text}");
    assert!(log_text.contains("--v=1"), "{log_text}");
    lab.check(2, "vxmeshd started as flanneld on n2");

    // iptables: flush both tables; the rules are back within the resync period.
    assert!(rules_in_place(&lab), "rules missing before the flush");
    assert!(iptables_ok(&lab, "n2", &["-t", "filter", "-F"]));
    assert!(iptables_ok(&lab, "n2", &["-t", "nat", "-F"]));
    assert!(!rules_in_place(&lab), "the flush did not remove the rules");
    let took = wait_for(Duration::from_secs(5), || rules_in_place(&lab)).unwrap_or_else(|| {
        panic!(
            "iptables rules not restored within 5 s (resync 1 s):\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    println!("iptables rules restored {took:?} after the flush (--iptables-resync=1)");
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    lab.assert_repair_counted("n2");
    lab.check(2, "after the iptables flush and repair");
    drop(agent);

    // Behind NAT: n2 advertises 203.0.113.12, which n1 reaches through a DNAT, and n2's
    // VXLAN reaches n1 SNATed to that address — as through a NAT gateway. vxmeshd binds
    // on eth0's own address and advertises the public one.
    let public = "203.0.113.12";
    let key = format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"));
    lab.etcdctl(&["del", &key]); // a new PublicIP is a new identity: free the old lease
    lab.exec(
        "n1",
        &["ip", "route", "add", "203.0.113.12/32", "dev", "eth0"],
    );
    lab.exec(
        "n1",
        &[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            public,
            "-p",
            "udp",
            "-j",
            "DNAT",
            "--to-destination",
            "192.168.100.12",
        ],
    );
    lab.exec(
        "n1",
        &[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "INPUT",
            "-s",
            "192.168.100.12",
            "-p",
            "udp",
            "--dport",
            "8472",
            "-j",
            "SNAT",
            "--to-source",
            public,
        ],
    );
    let (_agent, log_path) = start_as_flanneld(
        &lab,
        // The interface this time by route (`ip route get`): the --iface (overriding
        // FLANNELD_IFACE) and the regex match nothing and are passed over.
        &[
            &format!("-public-ip={public}"),
            "-ip-masq",
            "-iface=eth9",
            "-iface-regex=^nomatch$",
            "-iface-can-reach=192.168.100.11",
        ],
        "vxmeshd-n2-nat",
    );
    let st = lab.status("n2");
    assert_eq!(st["node"]["public_ip"], public, "{st}");
    assert_eq!(lab.subnet_of(2), subnet, "the subnet file's subnet again");
    let kv = lab.etcdctl(&["get", &key, "--print-value-only"]);
    assert!(kv.contains(&format!("\"PublicIP\":\"{public}\"")), "{kv}");
    let log_text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log_text.contains("local_ip=192.168.100.12 public_ip=203.0.113.12"),
        "{log_text}"
    );
    for line in [
        "underlay: passed over --iface eth9: no such interface",
        "underlay: passed over --iface-regex ^nomatch$",
        "by=--iface-can-reach 192.168.100.11",
    ] {
        assert!(log_text.contains(line), "{line}:\n{log_text}");
    }
    lab.check(2, "n2 behind NAT, advertising 203.0.113.12");
}
