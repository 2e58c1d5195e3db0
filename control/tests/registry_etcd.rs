//! The registry against a real etcd (started by the test on loopback):
//! racing allocators, restart, lost leases, compaction, config errors. Needs etcd:
//! ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::{rt, Etcd};
use tokio::sync::mpsc;
use vxmesh_control::agent::acquire;
use vxmesh_control::config::ConfigError;
use vxmesh_control::lease::LeaseAttrs;
use vxmesh_control::lease_machine::LeaseMachine;
use vxmesh_control::registry::{
    LeaseStats, Registry, RegistryError, WatchEvent, WatchFrom, WatchStats,
};
use vxmesh_control::subnet::Subnet;
use vxmesh_testkit::require_etcd;

const PREFIX: &str = "/coreos.com/network";
const TTL: Duration = Duration::from_secs(30);

fn node(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 56, i)
}

fn attrs(ip: Ipv4Addr) -> LeaseAttrs {
    LeaseAttrs::vxlan(ip, 1, vxmesh_control::vtep_mac::derive(ip, 1))
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn twenty_allocators_race_for_fifteen_subnets() {
    require_etcd();
    let etcd = Etcd::start();
    // /24 cut into /28s: 16 subnets, the first is never handed out → a pool of 15.
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.5.0.0/24","SubnetLen":28,"Backend":{"Type":"vxlan"}}"#,
    );
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        assert_eq!(cfg.ipv4.unwrap().pool_size(), 15);
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let reg = reg.clone();
            let cfg = cfg.clone();
            // Same seed everywhere: every allocator tries the same candidates in the
            // same order, the worst case for races.
            tasks.push(tokio::spawn(async move {
                let mut m = LeaseMachine::new(cfg, node(10 + i), None, 7);
                acquire(&reg, &mut m, &attrs(node(10 + i)), TTL).await
            }));
        }
        let mut won = Vec::new();
        let mut lost = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(h) => won.push(h.subnet().unwrap()),
                Err(e) => lost.push(e),
            }
        }
        assert_eq!(won.len(), 15, "every subnet of the pool is handed out");
        assert_eq!(
            won.iter().collect::<HashSet<_>>().len(),
            15,
            "no duplicate subnet: {won:?}"
        );
        assert_eq!(lost.len(), 5);
        for e in &lost {
            let msg = e.to_string();
            assert!(
                msg.contains("no free subnet in Network 10.5.0.0/24"),
                "{msg}"
            );
            assert_eq!(e.leased, 15);
        }
        let listing = reg.list_subnets().await.unwrap();
        assert_eq!(listing.entries.len(), 15);
        for e in &listing.entries {
            // flannel's exact value format
            let a = LeaseAttrs::parse(&e.value).unwrap();
            assert_eq!(a.to_json().as_bytes(), &e.value[..]);
            assert_ne!(e.lease, 0, "every lease key carries an etcd lease");
        }
    });
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn restart_reclaims_the_same_subnet_and_a_lost_lease_is_reacquired() {
    require_etcd();
    let etcd = Etcd::start();
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16"}"#,
    );
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        let me = node(11);
        let first = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, None, 1),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        // Restart: a new agent, same PublicIP, old lease still alive → same subnet.
        let again = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, None, 999),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(again.subnet().unwrap(), first.subnet().unwrap());
        assert_ne!(
            again.lease_id, first.lease_id,
            "the key moved to the new etcd lease"
        );

        // The key expires while the node is away; the subnet file remembers it.
        etcd.ctl(&[
            "del",
            &format!("{PREFIX}/subnets/{}", first.subnet().unwrap().key_form()),
        ])
        .unwrap();
        let back = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, Some(first.subnet().unwrap()), 5),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(back.subnet().unwrap(), first.subnet().unwrap());

        // keep_alive renews (every second for a 3 s TTL) and records it: etcd answers
        // with the TTL granted at claim time (30 s), which sets the expiry.
        let stats = LeaseStats::default();
        let renewing = tokio::time::timeout(
            Duration::from_millis(2500),
            reg.keep_alive(back.lease_id, Duration::from_secs(3), &stats),
        )
        .await;
        assert!(renewing.is_err(), "still renewing: {renewing:?}");
        assert!(stats.renewals.load(Relaxed) >= 2, "{stats:?}");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let left = stats.expires_unix_ms.load(Relaxed).saturating_sub(now_ms);
        assert!((25_000..=30_000).contains(&left), "expires in {left} ms");
        assert!(stats.renewed_unix_ms.load(Relaxed) <= now_ms);

        // keep_alive notices a revoked lease.
        etcd.ctl(&["lease", "revoke", &format!("{:x}", back.lease_id)])
            .unwrap();
        let why = tokio::time::timeout(
            Duration::from_secs(30),
            reg.keep_alive(back.lease_id, Duration::from_secs(6), &stats),
        )
        .await
        .expect("keepalive must report the loss");
        assert!(why.contains("expired or was revoked"), "{why}");
    });
}

/// `<prefix>/subnets/<s>`.
fn key(s: &str) -> String {
    format!("{PREFIX}/subnets/{s}")
}

/// A vxlan lease value of the node at `ip`.
fn value(ip: &str) -> String {
    attrs(ip.parse().unwrap()).to_json()
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn compacted_watch_relists_and_resumes() {
    require_etcd();
    let etcd = Etcd::start();
    etcd.put(&key("10.244.1.0-24"), &value("192.168.56.1"));
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let stale = reg.list_subnets().await.unwrap().revision;
        etcd.put(&key("10.244.2.0-24"), &value("192.168.56.2"));
        etcd.put(&key("10.244.3.0-24"), &value("192.168.56.3"));
        etcd.ctl(&["del", &key("10.244.1.0-24")]).unwrap();
        let now = reg.list_subnets().await.unwrap().revision;
        etcd.ctl(&["compact", &now.to_string()]).unwrap();

        // Resume from before the compaction, as after a long disconnect.
        let (tx, mut rx) = mpsc::channel(16);
        let stats = Arc::new(WatchStats::default());
        let st = Arc::clone(&stats);
        let r = reg.clone();
        let w = tokio::spawn(async move {
            r.watch_subnets(WatchFrom::Revision(stale + 1), tx, &st)
                .await
        });
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let WatchEvent::Snapshot(l) = first else {
            panic!("expected a fresh listing, got {first:?}")
        };
        let keys: Vec<_> = l.entries.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, vec![key("10.244.2.0-24"), key("10.244.3.0-24")]);
        assert_eq!(
            stats.compactions.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            stats.listings.load(Relaxed),
            1,
            "the listing after compaction"
        );

        // ...and keeps following from the listing's revision, with each key's create
        // revision (what orders conflicting leases) carried through.
        let created = |k: &str| {
            l.entries
                .iter()
                .find(|e| e.key == key(k))
                .unwrap()
                .create_revision
        };
        assert!(created("10.244.2.0-24") < created("10.244.3.0-24"));
        etcd.put(&key("10.244.4.0-24"), &value("192.168.56.4"));
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let WatchEvent::Put(e) = ev else {
            panic!("expected a put, got {ev:?}")
        };
        assert_eq!(e.key, key("10.244.4.0-24"));
        assert_eq!(e.value, value("192.168.56.4").into_bytes());
        assert_eq!(e.create_revision, e.mod_revision, "a new key");
        assert_eq!(e.lease, 0, "written without an etcd lease");
        etcd.put(&key("10.244.3.0-24"), &value("192.168.56.33"));
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let WatchEvent::Put(e) = ev else {
            panic!("expected a put, got {ev:?}")
        };
        assert_eq!(
            e.create_revision,
            created("10.244.3.0-24"),
            "a changed key keeps its create revision"
        );
        assert!(e.mod_revision > e.create_revision);
        etcd.ctl(&["del", &key("10.244.2.0-24")]).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let WatchEvent::Delete {
            key: gone,
            revision,
        } = ev
        else {
            panic!("expected a delete, got {ev:?}")
        };
        assert_eq!(gone, key("10.244.2.0-24"));
        assert!(revision > created("10.244.3.0-24"));
        drop(rx);
        w.abort();
    });
}

async fn next_event(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("still watching")
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn a_watch_begun_from_an_earlier_listing_misses_nothing_and_repeats_nothing() {
    require_etcd();
    let etcd = Etcd::start();
    etcd.put(&key("10.244.1.0-24"), &value("192.168.56.1"));
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        // The agent's order: list (to allocate), claim, set the node up, then watch
        // from that listing; others write meanwhile.
        let listing = reg.list_subnets().await.unwrap();
        etcd.put(&key("10.244.2.0-24"), &value("192.168.56.2"));
        etcd.ctl(&["del", &key("10.244.1.0-24")]).unwrap();

        let (tx, mut rx) = mpsc::channel(16);
        let stats = Arc::new(WatchStats::default());
        let st = Arc::clone(&stats);
        let r = reg.clone();
        let from = WatchFrom::Listing(listing.clone());
        let w = tokio::spawn(async move { r.watch_subnets(from, tx, &st).await });
        assert_eq!(
            next_event(&mut rx).await,
            WatchEvent::Snapshot(listing.clone())
        );
        let WatchEvent::Put(e) = next_event(&mut rx).await else {
            panic!("expected the put made after the listing")
        };
        assert_eq!(e.key, key("10.244.2.0-24"));
        assert_eq!(e.mod_revision, listing.revision + 1);
        let WatchEvent::Delete { key: gone, .. } = next_event(&mut rx).await else {
            panic!("expected the delete made after the listing")
        };
        assert_eq!(gone, key("10.244.1.0-24"));
        // Live from here on, and nothing was read twice: no second listing.
        etcd.put(&key("10.244.3.0-24"), &value("192.168.56.3"));
        let WatchEvent::Put(e) = next_event(&mut rx).await else {
            panic!("expected a live put")
        };
        assert_eq!(e.key, key("10.244.3.0-24"));
        assert!(rx.try_recv().is_err(), "nothing else was sent");
        assert_eq!(stats.compactions.load(Relaxed), 0);
        assert_eq!(stats.listings.load(Relaxed), 0, "no listing of its own");
        drop(rx);
        w.abort();
    });
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn missing_or_bad_config_is_a_clear_error() {
    require_etcd();
    let etcd = Etcd::start();
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let e = reg.network_config().await.unwrap_err();
        assert!(matches!(
            e,
            RegistryError::Config(ConfigError::Missing { .. })
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("/coreos.com/network/config") && msg.contains("etcdctl put"),
            "{msg}"
        );
        etcd.put(
            &format!("{PREFIX}/config"),
            r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#,
        );
        let msg = reg.network_config().await.unwrap_err().to_string();
        assert!(msg.contains("SubnetLen"), "{msg}");
    });
    // An unreachable etcd names the endpoint.
    rt().block_on(async {
        let r = Registry::connect(&["http://127.0.0.1:1".to_string()], PREFIX).await;
        let msg = match r {
            Err(e) => e.to_string(),
            Ok(reg) => reg.network_config().await.unwrap_err().to_string(),
        };
        assert!(msg.contains("http://127.0.0.1:1"), "{msg}");
    });
}

#[test]
fn subnet_keys_parse_back() {
    let s: Subnet = "10.244.7.0/24".parse().unwrap();
    assert_eq!(
        vxmesh_control::lease::parse_lease_key(&vxmesh_control::lease::lease_key(PREFIX, &s)),
        Some(s)
    );
}

/// A TCP relay to etcd that can be cut: once `cut`, it keeps the connections open but
/// forwards nothing, as a firewall dropping packets does (no reset, no error: requests just
/// go unanswered).
struct Blackhole {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    fn to(endpoint: &str) -> Blackhole {
        use std::io::{Read, Write};
        let upstream = endpoint.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = Arc::clone(&cut);
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { return };
                let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let cut = Arc::clone(&c);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                return;
                            }
                            if !cut.load(Relaxed) && to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Blackhole { addr, cut }
    }
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn keepalive_reports_the_loss_when_the_lease_expires_with_etcd_unreachable() {
    require_etcd();
    let etcd = Etcd::start();
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16"}"#,
    );
    let hole = Blackhole::to(&etcd.endpoint);
    rt().block_on(async {
        let reg = Registry::connect(&[format!("http://{}", hole.addr)], PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        let me = node(12);
        let ttl = Duration::from_secs(3);
        let held = acquire(
            &reg,
            &mut LeaseMachine::new(cfg, me, None, 1),
            &attrs(me),
            ttl,
        )
        .await
        .unwrap();
        let stats = LeaseStats::default();
        let keeping = reg.keep_alive(held.lease_id, ttl, &stats);
        tokio::pin!(keeping);
        // Renewing through the relay.
        assert!(
            tokio::time::timeout(Duration::from_millis(2500), &mut keeping)
                .await
                .is_err(),
            "keepalive gave up while etcd was reachable"
        );
        assert!(stats.renewals.load(Relaxed) >= 1, "{stats:?}");
        // Packets dropped from now on: the lease expires at most one TTL after the last
        // renewal, and the loss must be reported then (the client's own request timeout
        // is 10 s: without the bound the report came that much later).
        hole.cut.store(true, Relaxed);
        let t = std::time::Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(30), &mut keeping)
            .await
            .expect("keepalive never reported the loss");
        let took = t.elapsed();
        assert!(why.contains("could not be renewed"), "{why}");
        assert!(
            took <= ttl + Duration::from_millis(500),
            "loss reported {took:?} after etcd became unreachable (TTL {ttl:?})"
        );
    });
}

fn dual_attrs(ip: Ipv4Addr, ip6: &str) -> LeaseAttrs {
    let ip6: std::net::Ipv6Addr = ip6.parse().unwrap();
    attrs(ip).with_ipv6(ip6, 1, vxmesh_control::vtep_mac::derive_v6(ip6, 1))
}

/// The keys under `<prefix>/subnets/`, as etcdctl lists them.
fn subnet_keys(etcd: &Etcd) -> Vec<String> {
    let out = etcd
        .ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{PREFIX}/subnets/"),
        ])
        .unwrap();
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn dual_stack_lease_is_one_key_kept_across_restarts_and_moved_from_an_ipv4_key() {
    require_etcd();
    let etcd = Etcd::start();
    let me = node(21);
    // This node ran IPv4-only, then EnableIPv6 was turned on.
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16"}"#,
    );
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let v4_cfg = reg.network_config().await.unwrap();
        let v4 = acquire(
            &reg,
            &mut LeaseMachine::new(v4_cfg, me, None, 1),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(v4.ipv6(), None);
        assert_eq!(
            subnet_keys(&etcd),
            [format!("{PREFIX}/subnets/{}", v4.subnet().unwrap().key_form())]
        );

        etcd.put(
            &format!("{PREFIX}/config"),
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        );
        let cfg = reg.network_config().await.unwrap();
        let value = dual_attrs(me, "fd00:64::21");
        let dual = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, None, 2),
            &value,
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(dual.subnet().unwrap(), v4.subnet().unwrap(), "the IPv4 subnet stays (pods keep it)");
        let v6 = dual.ipv6().expect("an IPv6 half");
        assert!(cfg.ipv6.unwrap().fits(&v6));
        let key = format!("{PREFIX}/subnets/{}&{}", v4.subnet().unwrap().key_form(), v6.key_form());
        assert_eq!(subnet_keys(&etcd), std::slice::from_ref(&key), "the IPv4 key moved, in one step");
        let stored = etcd.ctl(&["get", "--print-value-only", &key]).unwrap();
        assert_eq!(stored.trim(), value.to_json(), "flanneld's dual-stack value");

        // Restart: the same key, found by PublicIP, re-put under a new etcd lease.
        let again = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, None, 999),
            &value,
            TTL,
        )
        .await
        .unwrap();
        assert_eq!((again.subnet().unwrap(), again.ipv6()), (dual.subnet().unwrap(), dual.ipv6()));
        assert_ne!(again.lease_id, dual.lease_id);
        assert_eq!(subnet_keys(&etcd), std::slice::from_ref(&key));

        // A second dual-stack node gets other subnets of both families.
        let other = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), node(22), None, 2),
            &dual_attrs(node(22), "fd00:64::22"),
            TTL,
        )
        .await
        .unwrap();
        assert_ne!(other.subnet().unwrap(), dual.subnet().unwrap());
        assert_ne!(other.ipv6(), dual.ipv6());
        assert!(other.ipv6().is_some());
    });
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn a_lease_that_no_longer_fits_the_config_is_deleted_when_the_node_claims_a_new_one() {
    require_etcd();
    let etcd = Etcd::start();
    let me = node(31);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetLen":24}"#,
    );
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let old_cfg = reg.network_config().await.unwrap();
        let old = acquire(
            &reg,
            &mut LeaseMachine::new(old_cfg.clone(), me, None, 1),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        // Another node of the old config: its lease is its own business.
        let theirs = acquire(
            &reg,
            &mut LeaseMachine::new(old_cfg, node(32), None, 2),
            &attrs(node(32)),
            TTL,
        )
        .await
        .unwrap();

        // The operator shrinks SubnetLen; this node restarts.
        etcd.put(
            &format!("{PREFIX}/config"),
            r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#,
        );
        let cfg = reg.network_config().await.unwrap();
        assert!(!cfg.fits(&old.subnet().unwrap()));
        let new = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, Some(old.subnet().unwrap()), 3),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert!(
            cfg.fits(&new.subnet().unwrap()),
            "{}",
            new.subnet().unwrap()
        );
        assert!(
            !new.subnet().unwrap().overlaps(&old.subnet().unwrap())
                && !new.subnet().unwrap().overlaps(&theirs.subnet().unwrap())
        );
        let mut keys = subnet_keys(&etcd);
        keys.sort();
        let mut want = vec![
            format!("{PREFIX}/subnets/{}", new.subnet().unwrap().key_form()),
            format!("{PREFIX}/subnets/{}", theirs.subnet().unwrap().key_form()),
        ];
        want.sort();
        assert_eq!(
            keys, want,
            "the old /24 key is gone, the other node's stays"
        );

        // Restarted again: the new key is found and reused, nothing else moves.
        let again = acquire(
            &reg,
            &mut LeaseMachine::new(cfg, me, None, 4),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(again.subnet().unwrap(), new.subnet().unwrap());
        let mut keys = subnet_keys(&etcd);
        keys.sort();
        assert_eq!(keys, want);
    });
}
