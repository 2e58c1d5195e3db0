//! Dataplane counters: packets, bytes, syscalls and drops by reason.
//!
//! The hot-path threads count into plain local [`LocalCounts`] and publish them
//! once per batch with relaxed atomic adds, so counting costs no lock and no
//! shared-cache-line traffic per packet. Readers (metrics, `vxmeshctl`) take a
//! [`CounterSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was not forwarded. One counter each; never a log line per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Egress: the destination MAC is no peer's VtepMAC.
    UnknownDestination,
    /// Egress: broadcast/multicast that is not an ARP request we answer (IPv6 ND, ...).
    Multicast,
    /// Egress: an ARP request for an address that is no peer's VTEP address.
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
    /// Ingress: the inner destination MAC is not our VtepMAC (nor broadcast).
    NotForUs,
    /// Ingress: writing the frame to the TAP failed.
    TapWriteFailed,
    /// Ingress: the inner frame is broadcast. The overlay is pure L3 like flannel's
    /// vxlan backend: no peer floods, each answers ARP for VTEP addresses itself.
    Broadcast,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
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
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
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
    /// Inner segments merged into a larger frame on receive.
    gro_segments_merged,
    /// ARP requests answered locally for peers' VTEP addresses.
    arp_replies,
    /// Times UDP GSO was found unusable and the sender fell back to one datagram per send.
    udp_gso_fallbacks,
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
}
