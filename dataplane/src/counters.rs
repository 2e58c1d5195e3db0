//! Dataplane counters: packets, bytes, syscalls and drops by reason.
//!
//! The hot-path threads count into plain local [`LocalCounts`] and publish them
//! once per batch with relaxed atomic adds, so counting costs no lock and no
//! shared-cache-line traffic per packet. Readers (metrics, `vxmeshctl`) take a
//! [`CounterSnapshot`].
//!
//! Per peer the same way: the threads tally packets and bytes by the peer's slot in
//! the forwarding table ([`PeerTallies`]) and add the tallies to the peer's shared
//! [`PeerCounters`] once per batch, and always before they take a new table
//! generation (slots are per generation). Per-peer drops are rare and go straight to
//! the peer's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::fib::ForwardingTable;

/// Why a packet was not forwarded. One counter each; never a log line per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Egress: the destination MAC is no peer's VtepMAC.
    UnknownDestination,
    /// Egress: broadcast/multicast that is not an ARP request or a Neighbor
    /// Solicitation we answer (MLD, router solicitations, ...).
    Multicast,
    /// Egress: an ARP request or a Neighbor Solicitation for an address that is no
    /// peer's VTEP address (of that family).
    ArpUnknownTarget,
    /// Egress: a frame from the TAP that does not parse (bad virtio header, headers,
    /// GSO type we cannot segment).
    EgressMalformed,
    /// Egress: the UDP send failed (no route to the peer, buffer full, ...).
    SendFailed,
    /// Ingress: the datagram's source address is not a leased peer's PublicIP.
    UnknownSource,
    /// Ingress: the VXLAN VNI is not ours.
    WrongVni,
    /// Ingress: too short, no I flag, or an inner frame that does not parse.
    IngressMalformed,
    /// Ingress: the inner destination MAC is none of our VtepMACs (nor broadcast).
    NotForUs,
    /// Ingress: writing the frame to the TAP failed.
    TapWriteFailed,
    /// Ingress: the inner frame is broadcast. The overlay is pure L3 like flannel's
    /// vxlan backend: no peer floods, each answers ARP for VTEP addresses itself.
    Broadcast,
    /// Ingress: active queue management (CoDel) chose this packet to tell its sender
    /// of a standing queue in the receive socket, and it is not ECN-capable (an
    /// ECN-capable one is marked instead: `aqm_ce_marked`).
    Congestion,
    /// Ingress: the inner frame is not IP from the sending peer's subnet to this
    /// node's subnet (of its family) (a forged inner source behind a peer's outer address, or traffic
    /// that would use this node as a relay).
    InnerAddress,
    /// Ingress: the outer header says CE (an underlay router marked congestion), but
    /// the inner packet is not ECN-capable, so the mark cannot be passed on: RFC 6040
    /// drops it, as Linux's vxlan driver does (the sender's encapsulator set an outer
    /// ECN field its inner packet did not have).
    CeOnNotEct,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::UnknownDestination,
        DropReason::Multicast,
        DropReason::ArpUnknownTarget,
        DropReason::EgressMalformed,
        DropReason::SendFailed,
        DropReason::UnknownSource,
        DropReason::WrongVni,
        DropReason::IngressMalformed,
        DropReason::NotForUs,
        DropReason::TapWriteFailed,
        DropReason::Broadcast,
        DropReason::Congestion,
        DropReason::InnerAddress,
        DropReason::CeOnNotEct,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::Multicast => "multicast",
            DropReason::ArpUnknownTarget => "arp_unknown_target",
            DropReason::EgressMalformed => "egress_malformed",
            DropReason::SendFailed => "send_failed",
            DropReason::UnknownSource => "unknown_source",
            DropReason::WrongVni => "wrong_vni",
            DropReason::IngressMalformed => "ingress_malformed",
            DropReason::NotForUs => "not_for_us",
            DropReason::TapWriteFailed => "tap_write_failed",
            DropReason::Broadcast => "broadcast",
            DropReason::Congestion => "congestion",
            DropReason::InnerAddress => "inner_address",
            DropReason::CeOnNotEct => "ce_on_not_ect",
        }
    }

    /// "egress" (TAP → UDP) or "ingress" (UDP → TAP).
    pub fn direction(self) -> &'static str {
        match self {
            DropReason::UnknownDestination
            | DropReason::Multicast
            | DropReason::ArpUnknownTarget
            | DropReason::EgressMalformed
            | DropReason::SendFailed => "egress",
            _ => "ingress",
        }
    }
}

macro_rules! counters {
    ($( $(#[$fm:meta])* $name:ident ),* $(,)?) => {
        /// Per-thread counts, published with [`Counters::publish`].
        #[derive(Debug, Default, Clone)]
        pub struct LocalCounts {
            $( $(#[$fm])* pub $name: u64, )*
            pub drops: [u64; DropReason::COUNT],
        }

        /// The shared counters.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $name: AtomicU64, )*
            drops: [AtomicU64; DropReason::COUNT],
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $( $(#[$fm])* pub $name: u64, )*
            pub drops: [u64; DropReason::COUNT],
        }

        impl Counters {
            /// Adds `local` into the shared counters and zeroes it.
            pub fn publish(&self, local: &mut LocalCounts) {
                $(
                    if local.$name != 0 {
                        self.$name.fetch_add(local.$name, Ordering::Relaxed);
                        local.$name = 0;
                    }
                )*
                for (i, d) in local.drops.iter_mut().enumerate() {
                    if *d != 0 {
                        self.drops[i].fetch_add(*d, Ordering::Relaxed);
                        *d = 0;
                    }
                }
            }

            pub fn snapshot(&self) -> CounterSnapshot {
                let mut drops = [0u64; DropReason::COUNT];
                for (i, d) in self.drops.iter().enumerate() {
                    drops[i] = d.load(Ordering::Relaxed);
                }
                CounterSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                    drops,
                }
            }

            /// Name/value pairs of the non-drop counters, for exporters.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($name)),*];
        }

        impl CounterSnapshot {
            /// Name/value pairs of the non-drop counters, in [`Counters::FIELDS`] order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name) ),*]
            }
        }
    };
}

counters! {
    /// Frames read from the TAP.
    tap_frames_read,
    /// Bytes read from the TAP (frames, without virtio headers).
    tap_bytes_read,
    /// Frames written to the TAP (after coalescing).
    tap_frames_written,
    /// Bytes written to the TAP.
    tap_bytes_written,
    /// TAP read/write system calls.
    tap_syscalls,
    /// VXLAN datagrams sent to peers.
    udp_datagrams_sent,
    /// Bytes of UDP payload sent.
    udp_bytes_sent,
    /// UDP send system calls (sendmsg/sendmmsg).
    udp_send_syscalls,
    /// VXLAN datagrams received (after GRO is split back into datagrams).
    udp_datagrams_received,
    /// Bytes of UDP payload received.
    udp_bytes_received,
    /// UDP receive system calls.
    udp_recv_syscalls,
    /// Inner frames delivered to the TAP from peers (before coalescing).
    frames_delivered,
    /// Large TAP frames split into segments (TSO done in userspace).
    tso_frames_segmented,
    /// TAP frames sent whole through the underlay TAP (`--egress-tunnel-gso`): the
    /// kernel or the NIC cuts them.
    underlay_tap_frames,
    /// Frames the underlay TAP path could not carry (too large, or a GSO type it
    /// does not take), sent the segmenting way instead.
    underlay_tap_fallbacks,
    /// Probes of the underlay TAP path sent to peers ([`crate::path_probe`]): a GSO
    /// frame takes that path only to a peer that answered one.
    underlay_probes_sent,
    /// Answers to those probes.
    underlay_probes_answered,
    /// Inner segments merged into a larger frame on receive.
    gro_segments_merged,
    /// Inner frames whose TCP/UDP checksum the sending kernel left partial
    /// (CHECKSUM_PARTIAL over a virtual NIC), passed to the TAP marked NEEDS_CSUM.
    ingress_partial_checksums,
    /// Inner TCP frames longer than the TAP MTU (a kernel sender's GSO frame that
    /// crossed a virtual underlay uncut), handed to the TAP as GSO frames.
    ingress_gso_frames,
    /// ARP requests answered locally for peers' VTEP addresses.
    arp_replies,
    /// Neighbor Solicitations answered locally for peers' IPv6 VTEP addresses (the
    /// threads carrying IPv6).
    ndp_replies,
    /// Times UDP GSO was found unusable and the sender fell back to one datagram per send.
    udp_gso_fallbacks,
    /// Inner packets marked CE (ECN) by active queue management on ingress, because
    /// they waited too long in the receive socket (a drop when not ECN-capable:
    /// reason `congestion`).
    aqm_ce_marked,
    /// Inner packets set CE on receive because the outer header arrived CE (an
    /// underlay router marked congestion; RFC 6040 decapsulation, `wire::ecn`).
    ecn_marks_passed_on,
}

impl LocalCounts {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

impl CounterSnapshot {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// One peer's counters, shared by the hot-path threads (writers) and the exporters.
/// Owned by the peer's entry in the forwarding table and carried over to the next
/// generation while the peer stays ([`ForwardingTable::next`]).
#[derive(Debug, Default)]
pub struct PeerCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
    last_tx_unix_ms: AtomicU64,
    last_rx_unix_ms: AtomicU64,
    /// Whether the underlay TAP path reaches the peer (`--egress-tunnel-gso`).
    pub path: crate::path_probe::PathState,
}

/// A point-in-time copy of [`PeerCounters`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerCounterSnapshot {
    /// VXLAN datagrams queued for sending to the peer.
    pub tx_packets: u64,
    /// Their bytes (UDP payload: VXLAN header and inner frame).
    pub tx_bytes: u64,
    /// VXLAN datagrams received from the peer's PublicIP (delivered or dropped).
    pub rx_packets: u64,
    /// Their bytes (UDP payload).
    pub rx_bytes: u64,
    /// Packets to or from this peer dropped, by reason (see [`DropReason`]).
    pub drops: [u64; DropReason::COUNT],
    /// When a datagram was last sent to / received from the peer (Unix ms; 0 never).
    pub last_tx_unix_ms: u64,
    pub last_rx_unix_ms: u64,
    /// GSO frames to the peer take the underlay TAP path: it answered a probe lately
    /// (`--egress-tunnel-gso`, [`crate::path_probe`]).
    pub underlay_path: bool,
}

impl PeerCounters {
    /// Adds sent datagrams, seen at `now_ms`.
    pub fn add_tx(&self, packets: u64, bytes: u64, now_ms: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_tx_unix_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Adds received datagrams, seen at `now_ms`.
    pub fn add_rx(&self, packets: u64, bytes: u64, now_ms: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_rx_unix_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Counts one dropped packet (straight to the shared counter: drops are rare).
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PeerCounterSnapshot {
        let mut drops = [0u64; DropReason::COUNT];
        for (i, d) in self.drops.iter().enumerate() {
            drops[i] = d.load(Ordering::Relaxed);
        }
        PeerCounterSnapshot {
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            drops,
            last_tx_unix_ms: self.last_tx_unix_ms.load(Ordering::Relaxed),
            last_rx_unix_ms: self.last_rx_unix_ms.load(Ordering::Relaxed),
            underlay_path: self.path.proven(crate::path_probe::clock_ms()),
        }
    }
}

impl PeerCounterSnapshot {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// One thread's counts for one peer since the last publish.
#[derive(Debug, Default, Clone, Copy)]
struct PeerTally {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

/// One thread's per-peer counts by slot of one forwarding-table generation, and
/// which slots have any (so publishing costs the peers that sent or received, not
/// every peer).
#[derive(Debug, Default)]
pub struct PeerTallies {
    slots: Vec<PeerTally>,
    touched: Vec<u32>,
}

impl PeerTallies {
    /// Tallies for a table of `peers` slots.
    pub fn new(peers: usize) -> PeerTallies {
        let mut t = PeerTallies::default();
        t.resize(peers);
        t
    }

    /// Makes room for `peers` slots. Only after [`PeerTallies::publish`]: the slots
    /// of the next generation mean other peers.
    pub fn resize(&mut self, peers: usize) {
        debug_assert!(self.touched.is_empty());
        self.slots.clear();
        self.slots.resize(peers, PeerTally::default());
    }

    #[inline]
    fn slot(&mut self, slot: usize) -> Option<&mut PeerTally> {
        let t = self.slots.get_mut(slot)?;
        if t.tx_packets == 0 && t.rx_packets == 0 {
            self.touched.push(slot as u32);
        }
        Some(t)
    }

    /// Counts `packets` datagrams of `bytes` queued for the peer in `slot`.
    #[inline]
    pub fn tx(&mut self, slot: usize, packets: u64, bytes: u64) {
        if let Some(t) = self.slot(slot) {
            t.tx_packets += packets;
            t.tx_bytes += bytes;
        }
    }

    /// Counts `packets` datagrams of `bytes` received from the peer in `slot`.
    #[inline]
    pub fn rx(&mut self, slot: usize, packets: u64, bytes: u64) {
        if let Some(t) = self.slot(slot) {
            t.rx_packets += packets;
            t.rx_bytes += bytes;
        }
    }

    /// Whether anything awaits publishing.
    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }

    /// Adds the tallies to the peers' counters in `table` (the generation the slots
    /// were taken from), stamped `now_ms`, and zeroes them.
    pub fn publish(&mut self, table: &ForwardingTable, now_ms: u64) {
        for &s in &self.touched {
            let s = s as usize;
            let t = std::mem::take(&mut self.slots[s]);
            if let Some(c) = table.peer_counters(s) {
                if t.tx_packets != 0 {
                    c.add_tx(t.tx_packets, t.tx_bytes, now_ms);
                }
                if t.rx_packets != 0 {
                    c.add_rx(t.rx_packets, t.rx_bytes, now_ms);
                }
            }
        }
        self.touched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_adds_and_resets() {
        let c = Counters::default();
        let mut l = LocalCounts {
            tap_frames_read: 3,
            ..Default::default()
        };
        l.drop(DropReason::WrongVni);
        l.drop(DropReason::WrongVni);
        c.publish(&mut l);
        c.publish(&mut l);
        let s = c.snapshot();
        assert_eq!(s.tap_frames_read, 3);
        assert_eq!(s.dropped(DropReason::WrongVni), 2);
        assert_eq!(l.tap_frames_read, 0);
        assert_eq!(s.fields().len(), Counters::FIELDS.len());
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn peer_tallies_publish_to_their_generation() {
        use crate::fib::{LocalVtep, PeerVtep};
        use crate::wire::{MacAddr, Vni};
        use std::net::Ipv4Addr;
        let peer = |n: u8| PeerVtep {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, n]),
            public_ip: Ipv4Addr::new(192, 168, 77, n),
            vtep_ip: Ipv4Addr::new(10, 244, n, 0),
            v6: None,
        };
        let local = LocalVtep {
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 99]),
            vni: Vni::new(1).unwrap(),
            port: 8472,
            inner: Some(crate::fib::InnerCheck::lab()),
            v6: None,
        };
        let t = ForwardingTable::new(local, [peer(1), peer(2), peer(3)]);
        let mut tl = PeerTallies::new(t.peers().len());
        tl.tx(0, 46, 64_000);
        tl.tx(0, 1, 100);
        tl.rx(2, 3, 4_500);
        tl.rx(7, 1, 1); // no such slot: ignored
        assert_eq!(tl.touched, vec![0, 2]);
        tl.publish(&t, 1_700_000_000_000);
        assert!(tl.is_empty());
        let a = t.peer_counters(0).unwrap().snapshot();
        assert_eq!((a.tx_packets, a.tx_bytes, a.rx_packets), (47, 64_100, 0));
        assert_eq!(
            (a.last_tx_unix_ms, a.last_rx_unix_ms),
            (1_700_000_000_000, 0)
        );
        let c = t.peer_counters(2).unwrap().snapshot();
        assert_eq!((c.rx_packets, c.rx_bytes), (3, 4_500));
        assert_eq!(
            t.peer_counters(1).unwrap().snapshot(),
            PeerCounterSnapshot::default()
        );
        // published once: a second publish adds nothing
        tl.publish(&t, 1_700_000_000_001);
        assert_eq!(t.peer_counters(0).unwrap().snapshot().tx_packets, 47);
        t.peer_counters(1).unwrap().count_drop(DropReason::WrongVni);
        assert_eq!(
            t.peer_counters(1)
                .unwrap()
                .snapshot()
                .dropped(DropReason::WrongVni),
            1
        );
    }
}
