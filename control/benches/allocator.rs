//! The allocator (`plan`) and the peer table on cluster-sized inputs (issue 16):
//! - `plan` on a /8 cut into /30s (4 M candidates) with 5000 leases: the plan a
//!   joining node makes from a listing — milliseconds at most, whatever the pool;
//! - `plan` on flannel's default /16 of /24s with 250 leases, for scale;
//! - one new lease put into a peer table of 5000: the per-event work of an agent.
//!
//! Run: `cargo bench -p vxmesh-control --bench allocator`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use vxmesh_control::allocator::{plan, ExistingLease};
use vxmesh_control::config::NetworkConfig;
use vxmesh_control::lease::LeaseAttrs;
use vxmesh_control::peers::{LocalNode, PeerRules, PeerTable};
use vxmesh_control::registry::Entry;
use vxmesh_control::subnet::Subnet;

const ME: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 254);

fn leases(cfg: &NetworkConfig, n: u32) -> Vec<ExistingLease> {
    let step = 1u32 << (32 - u32::from(cfg.ipv4.unwrap().subnet_len));
    (0..n)
        .map(|i| ExistingLease {
            ipv6: None,
            subnet: Subnet::new(
                Ipv4Addr::from(
                    u32::from(cfg.ipv4.unwrap().subnet_min)
                        + (i * 7919 % cfg.ipv4.unwrap().pool_size() as u32) * step,
                ),
                cfg.ipv4.unwrap().subnet_len,
            )
            .unwrap(),
            attrs: Some(LeaseAttrs::vxlan(
                Ipv4Addr::from(0xac10_0000 + i),
                1,
                "0e:00:00:00:00:01".parse().unwrap(),
            )),
            mod_revision: i64::from(i),
            lease_id: 7,
        })
        .collect()
}

fn allocator(c: &mut Criterion) {
    let huge = NetworkConfig::parse("/k", br#"{"Network":"10.0.0.0/8","SubnetLen":30}"#).unwrap();
    let huge_leases = leases(&huge, 5000);
    c.bench_function("plan /8 of /30s, 5000 leases", |b| {
        let mut seed = 0u64;
        b.iter(|| {
            seed += 1;
            black_box(plan(&huge, ME, &huge_leases, None, seed, 16).unwrap())
        })
    });
    let flannel = NetworkConfig::parse("/k", br#"{"Network":"10.244.0.0/16"}"#).unwrap();
    let flannel_leases = leases(&flannel, 250);
    c.bench_function("plan /16 of /24s, 250 leases", |b| {
        let mut seed = 0u64;
        b.iter(|| {
            seed += 1;
            black_box(plan(&flannel, ME, &flannel_leases, None, seed, 16).unwrap())
        })
    });
}

fn entry(i: u32) -> Entry {
    Entry {
        key: format!("/coreos.com/network/subnets/10.{}.{}.0-24", i / 250 + 1, i % 250),
        value: format!(
            r#"{{"PublicIP":"172.20.{}.{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:{:02x}:{:02x}"}}}}"#,
            i / 250,
            i % 250 + 1,
            i / 256,
            i % 256
        )
        .into_bytes(),
        create_revision: i64::from(i) + 10,
        mod_revision: i64::from(i) + 10,
        lease: 7,
    }
}

fn peer_table(c: &mut Criterion) {
    let rules = PeerRules {
        network: "10.0.0.0/8".parse().unwrap(),
        subnet_len: 24,
        vni: 1,
        ipv6: None,
    };
    let local = LocalNode {
        public_ip: ME,
        vtep_mac: "0e:ff:00:00:00:01".parse().unwrap(),
        ipv6: None,
    };
    let mut table = PeerTable::new(rules, Some(local));
    let all: Vec<Entry> = (0..5000).map(entry).collect();
    let _ = table.reset(&all, &mut Vec::new());
    let joining = entry(5000);
    c.bench_function("peer table of 5000: one node joins", |b| {
        b.iter_batched_ref(
            || table.clone(),
            |t| black_box(t.put(&joining, &mut Vec::new())),
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, allocator, peer_table);
criterion_main!(benches);
