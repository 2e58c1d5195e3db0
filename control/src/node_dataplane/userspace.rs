//! The userspace dataplane: a TAP device and vxmesh's VXLAN threads.
//!
//! Per peer the kernel gets a permanent neighbour (`<peer subnet>.0` → peer VtepMAC)
//! and an onlink route (`<peer subnet> via <peer subnet>.0 dev vxmesh0`), so it never
//! ARPs (and if it does, the dataplane answers); the threads map the VtepMAC to the
//! peer's PublicIP through the forwarding table published here.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;

use super::DataplaneSetup;
use crate::netlink::{write_sysctl, Netlink, NetlinkError};
use crate::peers::{Peer, PeerTable};
use crate::state::AgentState;
use vxmesh_dataplane::engine::{Engine, EngineConfig};
use vxmesh_dataplane::fib::{ForwardingTable, SharedTable};
use vxmesh_dataplane::sys::{Tap, TapOptions, UdpRx, UdpTx};

/// Socket buffer sizes: room for several 64 KiB GSO bursts in flight.
const SNDBUF: usize = 4 << 20;
/// Receive buffer: the ingress thread may be descheduled for a while under load (the
/// benchmark saw RcvbufErrors at 8 MiB with 8 TCP streams); 32 MiB rides it out.
const RCVBUF: usize = 32 << 20;
/// TAP transmit queue (frames; each up to 64 KiB with TSO). The default, 1000, drops
/// under 8-stream load in the benchmark.
const TAP_TXQUEUELEN: u32 = 4096;

#[derive(Debug)]
pub struct Userspace {
    engine: Engine,
    tap_index: u32,
    table: SharedTable,
}

impl Userspace {
    pub async fn start(
        nl: &Netlink,
        s: &DataplaneSetup,
        state: &Arc<AgentState>,
    ) -> anyhow::Result<Userspace> {
        let name = &s.device_name;
        let taps = Tap::open(
            name,
            TapOptions {
                vnet_hdr: s.offloads,
                uso: s.offloads,
                queues: s.tap_queues.max(1),
            },
        )
        .with_context(|| format!("creating TAP device {name}"))?;
        let link = nl
            .link_by_name(name.as_str())
            .await?
            .with_context(|| format!("TAP {name} vanished right after creation"))?;
        // IPv6 on the TAP would only emit router solicitations the overlay drops.
        let _ = write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
        nl.configure_link(link.index, s.local.vtep_mac, s.mtu)
            .await?;
        // The kernel queues frames for the TAP's reader up to txqueuelen and drops
        // beyond: room for bursts while the egress thread is busy sending.
        nl.set_txqueuelen(link.index, TAP_TXQUEUELEN).await?;
        write_sysctl("net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        let udp_tx = UdpTx::open(s.local_ip, s.tx_sockets.max(1), SNDBUF)
            .context("opening the VXLAN send sockets")?;
        let udp_rx = UdpRx::open(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, s.local.port),
            RCVBUF,
            s.offloads,
        )
        .context("opening the VXLAN receive socket")?;
        let table = SharedTable::new(ForwardingTable::new(s.local, []));
        let engine = Engine::start(EngineConfig {
            tap: taps,
            udp_tx,
            udp_rx,
            table: table.clone(),
            counters: Arc::clone(&state.counters),
            flows: Arc::clone(&state.flows),
        })
        .context("starting dataplane threads")?;
        let st = engine.status();
        tracing::info!(
            tap = %name,
            tap_offloads = %st.tap.describe(),
            udp_gso = st.udp_gso.load(Ordering::Relaxed),
            udp_gro = st.udp_gro,
            tx_source_ports = ?st.tx_source_ports,
            "userspace dataplane running"
        );
        state.event(
            "offload",
            format!(
                "TAP {}; UDP GSO {}; UDP GRO {}",
                st.tap.describe(),
                st.udp_gso.load(Ordering::Relaxed),
                st.udp_gro
            ),
        );
        if !st.tap.tso() {
            tracing::warn!("TAP segmentation offload unavailable: throughput will be far lower (one frame per system call)");
        }
        if let Ok(mut g) = state.engine.lock() {
            *g = Some(Arc::clone(st));
        }
        if let Ok(mut g) = state.fib.lock() {
            *g = Some(table.clone());
        }
        Ok(Userspace {
            engine,
            tap_index: link.index,
            table,
        })
    }

    pub fn tap_index(&self) -> u32 {
        self.tap_index
    }

    pub fn publish(&self, peers: &PeerTable) {
        // The peers that stay keep their counters.
        self.table.update(peers.peers().map(|p| p.to_vtep()));
    }

    /// Neighbour first, then the route: the kernel must never need to ARP.
    pub async fn add_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        nl.replace_neighbour(self.tap_index, p.vtep_ip(), p.vtep_mac)
            .await?;
        nl.replace_peer_route(&p.subnet, self.tap_index).await
    }

    /// A new PublicIP only changes the forwarding table; a new VtepMAC replaces the
    /// neighbour entry (same address, so nothing stale is left).
    pub async fn update_peer(
        &self,
        nl: &Netlink,
        _old: &Peer,
        new: &Peer,
    ) -> Result<(), NetlinkError> {
        self.add_peer(nl, new).await
    }

    /// Route first, then the neighbour (reverse of adding).
    pub async fn remove_peer(&self, nl: &Netlink, p: &Peer) -> Result<(), NetlinkError> {
        let a = nl.delete_peer_route(&p.subnet, self.tap_index).await;
        let b = nl.delete_neighbour(self.tap_index, p.vtep_ip()).await;
        a.and(b)
    }

    /// Stops the threads; closing the TAP removes the device with its addresses.
    pub fn stop(self) {
        self.engine.stop();
    }
}
