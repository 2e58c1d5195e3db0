//! Whatever a writer of the etcd prefix puts there, against a real etcd (started by
//! the test on loopback): hostile keys are judged from what etcd reports (create
//! revisions included) and never become peers, the first writer of a contested
//! subnet wins and the next takes over when it goes; reservations (keys without an
//! etcd lease) are held as reservations and never claimed by other nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::{rt, Etcd};
use tokio::sync::mpsc;
use vxmesh_control::agent::acquire;
use vxmesh_control::lease::{LeaseAttrs, LeaseKey};
use vxmesh_control::lease_machine::LeaseMachine;
use vxmesh_control::peers::{
    LocalNode, PeerChange, PeerRules, PeerTable, RejectReason, Skip, Verdict,
};
use vxmesh_control::registry::{Registry, WatchEvent, WatchFrom, WatchStats};
use vxmesh_testkit::require_etcd;

const PREFIX: &str = "/coreos.com/network";
const TTL: Duration = Duration::from_secs(30);

fn node(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, i)
}

fn attrs(ip: Ipv4Addr) -> LeaseAttrs {
    LeaseAttrs::vxlan(ip, 1, vxmesh_control::vtep_mac::derive(ip, 1))
}

fn key(s: &str) -> String {
    format!("{PREFIX}/subnets/{s}")
}

async fn next(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch runs")
}

/// Feeds one event to the table, as the agent does.
fn apply(t: &mut PeerTable, ev: &WatchEvent, skips: &mut Vec<Skip>) -> Vec<PeerChange> {
    match ev {
        WatchEvent::Snapshot(l) => t.reset(&l.entries, skips),
        WatchEvent::Put(e) => t.put(e, skips),
        WatchEvent::Delete { key, .. } => t.delete(key, skips),
    }
}

fn reason(t: &PeerTable, k: &str) -> Option<RejectReason> {
    t.rejected()
        .find(|(key, _)| *key == self::key(k))
        .map(|(_, r)| r.reason)
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn hostile_keys_from_etcd_never_become_peers() {
    require_etcd();
    let etcd = Etcd::start();
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    // Three nodes, as in the netns lab; this node is 192.168.100.13.
    let me = node(13);
    etcd.put(&key("10.244.94.0-24"), &attrs(node(11)).to_json());
    etcd.put(&key("10.244.228.0-24"), &attrs(node(12)).to_json());
    etcd.put(&key("10.244.35.0-24"), &attrs(me).to_json());
    let well_formed = attrs(node(70)).to_json();
    let hostile = [
        ("192.168.100.12-32", RejectReason::OutsideNetwork),
        ("0.0.0.0-0", RejectReason::OutsideNetwork),
        ("10.245.1.0-24", RejectReason::OutsideNetwork),
        ("10.244.0.0-16", RejectReason::WrongSubnetLen),
        ("10.244.94.128-25", RejectReason::WrongSubnetLen),
    ];
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        let local = LocalNode {
            public_ip: me,
            vtep_mac: vxmesh_control::vtep_mac::derive(me, 1),
            ipv6: None,
        };
        let mut t = PeerTable::new(PeerRules::from_config(&cfg).unwrap(), Some(local));
        let mut skips = Vec::new();
        let _ = t.set_own(LeaseKey::parse("10.244.35.0-24").ok(), &mut skips);

        let (tx, mut rx) = mpsc::channel(64);
        let stats = Arc::new(WatchStats::default());
        let st = Arc::clone(&stats);
        let r = reg.clone();
        let w = tokio::spawn(async move { r.watch_subnets(WatchFrom::List, tx, &st).await });
        let first = next(&mut rx).await;
        assert!(matches!(first, WatchEvent::Snapshot(_)), "{first:?}");
        let c = apply(&mut t, &first, &mut skips);
        assert_eq!(c.len(), 2, "nodes 1 and 2: {c:?}");

        // Each hostile key, written by "someone": rejected, no change to the peers.
        for (k, why) in hostile {
            etcd.put(&key(k), &well_formed);
            let ev = next(&mut rx).await;
            let c = apply(&mut t, &ev, &mut skips);
            assert!(c.is_empty(), "{k}: {c:?}");
            assert_eq!(reason(&t, k), Some(why), "{k}");
        }
        // A value far above any lease's size: refused unread.
        etcd.put(&key("10.244.61.0-24"), &" ".repeat(64 * 1024));
        let ev = next(&mut rx).await;
        assert!(apply(&mut t, &ev, &mut skips).is_empty());
        assert_eq!(reason(&t, "10.244.61.0-24"), Some(RejectReason::TooLarge));

        // Node 2's subnet again under the dual-stack key form, written later: etcd's
        // create revisions decide, the later one is rejected...
        etcd.put(
            &key("10.244.228.0-24&fc00::-64"),
            &attrs(node(82)).to_json(),
        );
        let ev = next(&mut rx).await;
        assert!(apply(&mut t, &ev, &mut skips).is_empty());
        assert_eq!(
            reason(&t, "10.244.228.0-24&fc00::-64"),
            Some(RejectReason::Overlap)
        );
        // ...and takes over when the first one goes.
        etcd.ctl(&["del", &key("10.244.228.0-24")]).unwrap();
        let ev = next(&mut rx).await;
        let c = apply(&mut t, &ev, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Updated { old, new }]
                if old.public_ip == node(12) && new.public_ip == node(82)),
            "{c:?}"
        );
        // A rewrite keeps the create revision: node 2 coming back now is the later one.
        etcd.put(&key("10.244.228.0-24"), &attrs(node(12)).to_json());
        let ev = next(&mut rx).await;
        assert!(apply(&mut t, &ev, &mut skips).is_empty());
        assert_eq!(reason(&t, "10.244.228.0-24"), Some(RejectReason::Overlap));

        // A node's PublicIP claimed by a second key, and this node's own PublicIP.
        etcd.put(&key("10.244.80.0-24"), &attrs(node(11)).to_json());
        etcd.put(&key("10.244.81.0-24"), &attrs(me).to_json());
        for _ in 0..2 {
            let ev = next(&mut rx).await;
            assert!(apply(&mut t, &ev, &mut skips).is_empty());
        }
        assert_eq!(
            reason(&t, "10.244.80.0-24"),
            Some(RejectReason::DuplicatePublicIp)
        );
        assert_eq!(
            reason(&t, "10.244.81.0-24"),
            Some(RejectReason::DuplicatePublicIp)
        );

        // A fresh listing (what a restarted agent sees) reaches the same verdicts.
        let listing = reg.list_subnets().await.unwrap();
        let mut fresh = PeerTable::new(PeerRules::from_config(&cfg).unwrap(), Some(local));
        let _ = fresh.set_own(LeaseKey::parse("10.244.35.0-24").ok(), &mut Vec::new());
        let _ = fresh.reset(&listing.entries, &mut Vec::new());
        let verdicts = |t: &PeerTable| -> Vec<(String, Verdict)> {
            t.verdicts()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        assert_eq!(verdicts(&fresh), verdicts(&t));
        let peers: Vec<String> = t
            .peers()
            .map(|p| format!("{} {}", p.subnet, p.public_ip))
            .collect();
        assert_eq!(
            peers,
            [
                "10.244.94.0/24 192.168.100.11",
                "10.244.228.0/24 192.168.100.82"
            ]
        );
        assert_eq!(t.rejected().count(), 9, "{:#?}", verdicts(&t));
        // One warning per rejection: the 9, and the dual-stack key's before it took over.
        assert_eq!(skips.len(), 10, "{skips:#?}");
        drop(rx);
        w.abort();
    });
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn reservations_are_held_as_reservations_and_never_claimed() {
    require_etcd();
    let etcd = Etcd::start();
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16"}"#,
    );
    let me = node(11);
    // An operator pins both nodes' subnets: keys put without --lease. Ours names only
    // the PublicIP (docs/operations.md says that is enough); node 12's is complete.
    etcd.put(&key("10.244.7.0-24"), r#"{"PublicIP":"192.168.100.11"}"#);
    etcd.put(&key("10.244.8.0-24"), &attrs(node(12)).to_json());
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        let r = &reg;
        let entry = |k: &str| {
            let k = key(k);
            async move {
                r.list_subnets()
                    .await
                    .unwrap()
                    .entries
                    .into_iter()
                    .find(|e| e.key == k)
                    .unwrap()
            }
        };

        // Our node starts: it holds its reservation, with no etcd lease, and puts its
        // own VtepMAC in the value — still without a lease.
        let held = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, None, 1),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(held.subnet().unwrap().to_string(), "10.244.7.0/24");
        assert_eq!(held.lease_id, 0, "a reservation has nothing to keep alive");
        let e = entry("10.244.7.0-24").await;
        assert_eq!(e.lease, 0, "never rewritten under a TTL");
        assert_eq!(e.value, attrs(me).to_json().into_bytes());

        // A restart: the value is ours already, nothing is written.
        let again = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), me, Some(held.subnet().unwrap()), 2),
            &attrs(me),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!((again.subnet(), again.lease_id), (held.subnet(), 0));
        let e2 = entry("10.244.7.0-24").await;
        assert_eq!(e2.mod_revision, e.mod_revision, "nothing written");
        assert_eq!(e2.lease, 0);

        // Another node, whose subnet file names node 12's reserved subnet, gets a
        // subnet of its own.
        let other = node(13);
        let got = acquire(
            &reg,
            &mut LeaseMachine::new(
                cfg.clone(),
                other,
                Some("10.244.8.0/24".parse().unwrap()),
                3,
            ),
            &attrs(other),
            TTL,
        )
        .await
        .unwrap();
        assert!(
            !["10.244.7.0/24", "10.244.8.0/24"]
                .contains(&got.subnet().unwrap().to_string().as_str()),
            "took a reserved subnet: {}",
            got.subnet().unwrap()
        );
        assert_ne!(got.lease_id, 0, "an ordinary lease has a TTL");

        // Node 12 holds its own reservation as it is.
        let n12 = acquire(
            &reg,
            &mut LeaseMachine::new(cfg.clone(), node(12), None, 4),
            &attrs(node(12)),
            TTL,
        )
        .await
        .unwrap();
        assert_eq!(
            (n12.subnet().unwrap().to_string().as_str(), n12.lease_id),
            ("10.244.8.0/24", 0)
        );
        assert_eq!(entry("10.244.8.0-24").await.lease, 0);

        // etcd leases and TTLs: only node 13's key has one.
        let listing = reg.list_subnets().await.unwrap();
        let ttls = reg
            .lease_ttls(listing.entries.iter().map(|e| e.lease))
            .await;
        let with_ttl: Vec<&str> = listing
            .entries
            .iter()
            .zip(&ttls)
            .filter(|(_, t)| t.is_some())
            .map(|(e, _)| e.key.as_str())
            .collect();
        assert_eq!(with_ttl, [key(&got.subnet().unwrap().key_form()).as_str()]);
    });
}
