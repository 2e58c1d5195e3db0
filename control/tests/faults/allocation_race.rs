//! Allocation race: 20 allocators start together, 100 rounds, on a pool of exactly 20
//! subnets. Each allocator is the agent's own lease machine (`LeaseMachine`) driven against
//! a real etcd through the agent's `Registry` — what `vxmeshd` runs at start-up, minus the
//! devices — so 20 of them are cheap enough for 100 rounds (20 netns agents would measure
//! namespace set-up, not the race). Every round must end with 20 distinct subnets, each key
//! holding the PublicIP of the allocator that believes it won it: 0 duplicates. Half the
//! rounds give every allocator the same seed (all try the same candidates in the same order,
//! the worst case); the other half random seeds, as agents have.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use vxmesh_control::config::NetworkConfig;
use vxmesh_control::lease::LeaseAttrs;
use vxmesh_control::lease_machine::{LeaseAction, LeaseEvent, LeaseMachine};
use vxmesh_control::registry::Registry;
use vxmesh_control::subnet::Subnet;
use vxmesh_testkit::require_etcd;

use crate::common::{rt, Etcd};
use crate::support::{figure, serial};

const TEST: &str = "allocation-race";
const PREFIX: &str = "/coreos.com/network";
const ALLOCATORS: u8 = 20;
const ROUNDS: u64 = 100;
const TTL: Duration = Duration::from_secs(30);

/// What one allocator did to get its subnet.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    lists: u64,
    claims: u64,
    races_lost: u64,
    errors: u64,
}

fn node(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 57, 10 + i)
}

/// Drives a fresh lease machine until it holds a subnet, counting what it took.
async fn allocate(
    reg: Registry,
    cfg: NetworkConfig,
    me: Ipv4Addr,
    seed: u64,
    start: Arc<Barrier>,
) -> (Subnet, Tally) {
    let attrs = LeaseAttrs::vxlan(me, 1, vxmesh_control::vtep_mac::derive(me, 1));
    let mut m = LeaseMachine::new(cfg, me, None, seed);
    let mut t = Tally::default();
    start.wait().await;
    loop {
        let ev = match m.poll(Instant::now()) {
            LeaseAction::List => {
                t.lists += 1;
                match reg.list_subnets().await {
                    Ok(l) => LeaseEvent::Listed(l.existing_leases()),
                    Err(_) => {
                        t.errors += 1;
                        LeaseEvent::RegistryError
                    }
                }
            }
            LeaseAction::Claim(c) => {
                t.claims += 1;
                match reg.claim(&c, &attrs, TTL).await {
                    Ok(Some(won)) => LeaseEvent::Claimed {
                        lease_id: won.lease_id,
                        revision: won.revision,
                    },
                    Ok(None) => {
                        t.races_lost += 1;
                        LeaseEvent::RaceLost
                    }
                    Err(_) => {
                        t.errors += 1;
                        LeaseEvent::RegistryError
                    }
                }
            }
            LeaseAction::Acquired { key, .. } => return (key.ipv4_subnet().unwrap(), t),
            LeaseAction::Exhausted(e) => panic!("{me}: {e} although the pool fits everyone"),
            LeaseAction::Wait { until } => {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                continue;
            }
            LeaseAction::Idle => panic!("{me}: idle without a lease"),
        };
        m.handle(ev, Instant::now());
    }
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn twenty_allocators_hundred_rounds_no_duplicate() {
    require_etcd();
    let _serial = serial();
    let t0 = Instant::now();
    let etcd = Etcd::start();
    // Exactly 20 subnets: 10.5.1.0/24 … 10.5.20.0/24.
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.20.0","Backend":{"Type":"vxlan"}}"#,
    );
    let subnets_prefix = format!("{PREFIX}/subnets/");
    let mut total = Tally::default();
    let mut worst_claims = 0u64;
    let mut slowest = Duration::ZERO;
    rt().block_on(async {
        let reg = Registry::connect(std::slice::from_ref(&etcd.endpoint), PREFIX)
            .await
            .unwrap();
        let cfg = reg.network_config().await.unwrap();
        assert_eq!(cfg.ipv4.unwrap().pool_size(), u64::from(ALLOCATORS));
        for round in 0..ROUNDS {
            etcd.ctl(&["del", "--prefix", &subnets_prefix]).unwrap();
            let start = Arc::new(Barrier::new(usize::from(ALLOCATORS)));
            let t = Instant::now();
            let tasks: Vec<_> = (0..ALLOCATORS)
                .map(|i| {
                    let seed = if round % 2 == 0 {
                        round
                    } else {
                        round * 1000 + u64::from(i)
                    };
                    tokio::spawn(allocate(
                        reg.clone(),
                        cfg.clone(),
                        node(i),
                        seed,
                        Arc::clone(&start),
                    ))
                })
                .collect();
            let mut won = Vec::new();
            let mut round_claims = 0;
            for (i, task) in tasks.into_iter().enumerate() {
                let (subnet, tally) = task.await.unwrap();
                won.push((subnet, node(u8::try_from(i).unwrap())));
                round_claims += tally.claims;
                total.lists += tally.lists;
                total.claims += tally.claims;
                total.races_lost += tally.races_lost;
                total.errors += tally.errors;
            }
            slowest = slowest.max(t.elapsed());
            worst_claims = worst_claims.max(round_claims);
            let distinct: BTreeSet<Subnet> = won.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                distinct.len(),
                usize::from(ALLOCATORS),
                "round {round}: duplicate subnet among the winners: {won:?}"
            );
            // etcd agrees: one key per subnet, holding its winner's PublicIP.
            let listing = reg.list_subnets().await.unwrap();
            assert_eq!(
                listing.entries.len(),
                usize::from(ALLOCATORS),
                "round {round}"
            );
            for e in listing.existing_leases() {
                let owner = e.attrs.unwrap().public_ip;
                assert!(
                    won.contains(&(e.subnet, owner)),
                    "round {round}: {} held by {owner} in etcd, not by its winner: {won:?}",
                    e.subnet
                );
            }
        }
    });
    figure(
        TEST,
        &format!(
            "{ROUNDS} rounds × {ALLOCATORS} allocators (lease machine + registry against one etcd) on a pool of {ALLOCATORS}: 0 duplicates; {} claims ({} races lost and retried), {} listings, {} registry errors; worst round {} claims, slowest round {} ms; test took {:.0} s",
            total.claims,
            total.races_lost,
            total.lists,
            total.errors,
            worst_claims,
            slowest.as_millis(),
            t0.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(
        total.claims - total.races_lost,
        ROUNDS * u64::from(ALLOCATORS),
        "every claim either won once or was lost and retried"
    );
}
