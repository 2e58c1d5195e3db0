//! Handing the userspace dataplane from a running vxmeshd to its successor without
//! losing a packet, and getting it back from systemd's descriptor store after a
//! restart.
//!
//! **Live handover.** Every vxmeshd listens on the abstract unix socket
//! `vxmesh/handover/<tap>` ([`socket_name`]). Abstract names live in the network
//! namespace, exactly where the TAP lives, vanish with the process (nothing stale
//! on disk) and can be bound by one process only — binding the name is how a
//! vxmeshd claims the node's TAP. A new vxmeshd that finds the name taken connects
//! and says `Hello` (protocol versions, its [`Fingerprint`]); both ends check the
//! other's credentials (`SO_PEERCRED`: our user or root). If the running one finds
//! it a valid successor ([`decide::answer_hello`]) it sends an `Offer`: its state
//! (lease, forwarding table, offloads) with the TAP queues, the UDP sockets and this
//! listener attached (`SCM_RIGHTS`: the same open files). The new one starts its
//! threads on them and says `Started`; only then does the old one stop its threads
//! (each flushes its batch) and say `Stopped`, and exit 0 without touching the TAP,
//! routes or lease. Between `Started` and `Stopped` both read the same queues and
//! sockets — each packet is read by exactly one — so nothing is dropped. The lease
//! id travels too: the new one keeps the same etcd lease alive.
//!
//! A build that speaks no common protocol version gets `Incompatible`, asks the
//! old one to `Release` (stop and exit, leaving the persistent TAP) and starts cold;
//! a conflicting newcomer (another network, VNI, port, public IP, queue count,
//! dataplane) gets `Refuse` and exits with the reason, the old one keeps running.
//!
//! **systemd.** `systemctl restart` stops the old process before starting the new
//! one, so there is no one to talk to. Instead, a vxmeshd under systemd stores its
//! descriptors in the service's descriptor store (`FDSTORE=1`), plus a memory file
//! with its state ([`StateFile`], refreshed while running, final at stop). After
//! the restart systemd passes them back (`LISTEN_FDS`); the kernel kept queueing
//! packets on them meanwhile, so the new process reads what arrived while no one
//! did. [`decide::judge_stored`] decides whether they can be used; if not, they are
//! dropped from the store and the start is cold.
//!
//! The codec and the decisions are pure ([`wire`], [`decide`]); this module is the
//! socket shell. Descriptor passing itself is `vxmesh_dataplane::sys::fdpass`.

pub mod decide;
pub mod wire;
