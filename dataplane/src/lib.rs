//! vxmesh dataplane: VXLAN (RFC 7348) encapsulation and decapsulation in userspace.
//!
//! Pure cores, no I/O:
//! - [`wire`]: typed views over packet bytes (Ethernet, ARP, IPv4/6, TCP/UDP, VXLAN,
//!   virtio-net header) and the Internet checksum.
//! - [`fib`]: the forwarding table (VtepMAC → PublicIP, VTEP address → VtepMAC,
//!   allowed sources), swapped atomically by the control plane.
//! - [`verdict`]: per-frame decisions, egress (TAP → peer) and ingress (peer → TAP).
//! - [`offload`]: TCP/UDP segmentation on transmit, TCP coalescing on receive.
//! - [`send_batch`]: which datagrams share a UDP GSO send, how a batch is cut into
//!   `sendmmsg` messages, and what a partial send sent.
//! - [`counters`]: packet/byte/syscall counters and drops by reason, per node and
//!   per peer.
//! - [`aqm`]: CoDel on the receive queue's delay, and ECN (CE) marking.
//! - [`flows`]: the top flows (sampled inner 5-tuples in a fixed-size table).
//! - [`ifname`]: checked interface names.
//!
//! Thin shells:
//! - [`sys`]: the TAP device (IFF_VNET_HDR, TUNSETOFFLOAD) and the UDP sockets
//!   (UDP_SEGMENT, UDP_GRO, sendmmsg/recvmmsg).
//! - [`engine`]: the two hot-path threads that connect them.
pub mod aqm;
pub mod busy_poll;
pub mod counters;
pub mod engine;
pub mod fib;
pub mod flows;
pub mod ifname;
pub mod offload;
pub mod path_probe;
pub mod priority;
pub mod send_batch;
pub mod sys;
pub mod verdict;
pub mod wire;
