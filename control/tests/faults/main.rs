//! The fault campaign (issue 11): a netns lab (scripts/lab.sh) or a real etcd broken on
//! purpose, and what vxmesh does about it, measured. Every test prints its figures as
//! `FIGURE <test>: …` lines on stderr (visible in CI logs without `--nocapture`);
//! docs/reliability.md tabulates them with the rules they check and the command that
//! reproduces each:
//!
//!   cargo build --release --workspace --bins
//!   VXMESH_BIN_DIR=$PWD/target/release cargo test -p vxmesh-control --test faults -- --include-ignored <name>
//!
//! Tests that need root and etcd are `#[ignore]`d (scripts/test.sh runs them). They run one
//! at a time ([`support::serial`]): labs compete for the same CPUs, and the figures are
//! timings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
mod support;

mod agent_crash;
mod allocation_race;
mod etcd_cluster;
mod etcd_partition;
mod hostile_underlay;
mod soak;
