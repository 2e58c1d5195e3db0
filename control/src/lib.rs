//! vxmesh control plane.
//!
//! Pure cores (no I/O, no clock): [`config`] (flannel's network config),
//! [`config_watch`] (etcd's config against the running one),
//! [`subnet`] (IPv4 CIDR newtype), [`subnet6`] (its IPv6 counterpart), [`duration`] (flag durations), [`lease`] (flannel's lease keys and values),
//! [`allocator`] (which subnet to claim), [`lease_machine`] (acquire, hold,
//! re-acquire), [`own_key`] (whether registry news takes our subnet away),
//! [`peers`] (the peer set and its changes), [`vtep_mac`],
//! [`registry_events`] (what the registry reports, as plain data), and
//! [`handover::wire`] and [`handover::decide`] (the handover protocol and who may
//! take over).
//!
//! Shells: [`registry`] (etcd), [`netlink`] (links, addresses, routes,
//! neighbours), [`subnet_env`] (the subnet file), [`health`] (HTTP: /healthz,
//! /readyz, /metrics, /v1/status), [`handover`] (passing the dataplane to a
//! successor), [`sd_notify`] (systemd's notify and descriptor store), and
//! [`agent`], which wires them to the dataplane.
pub mod agent;
pub mod allocator;
pub mod blackhole;
pub mod cli;
pub mod config;
pub mod config_watch;
pub mod duration;
pub mod etcd_access;
pub mod events;
pub mod flags;
pub mod handover;
pub mod health;
pub mod ingress6;
pub mod lease;
pub mod lease_machine;
pub mod masq;
pub mod netlink;
pub mod netlink_batch;
pub mod node_dataplane;
pub mod outage;
pub mod own_key;
pub mod peers;
pub mod pool;
pub mod registry;
pub mod registry_events;
pub mod sd_notify;
pub mod state;
pub mod subnet;
pub mod subnet6;
pub mod subnet_env;
pub mod underlay;
pub mod vtep_mac;
