//! DirectRouting (flannel's `Backend.DirectRouting`): which peers are routed straight
//! to their PublicIP, unencapsulated, and which through the overlay. A pure decision:
//! the networks the underlay interface is connected to and the peer's PublicIP in, a
//! [`PeerPath`] out; the dataplane shell turns it into routes.
//!
//! A peer whose PublicIP lies in a network directly connected to the underlay
//! interface (one of the interface's own address prefixes, so the peer is on the same
//! L2 segment) gets `<peer subnet> via <PublicIP> dev <underlay>` — no VXLAN, no
//! neighbour or fdb entry on the overlay device. Every other peer (behind a router)
//! keeps the overlay route. In the userspace dataplane the direct route bypasses the
//! TAP entirely: the dataplane never sees that traffic. Both ends decide the same way
//! for each other, so a flannel node with DirectRouting and a vxmesh node on one L2
//! segment exchange pod traffic unencapsulated in both directions.
//!
//! flannel decides with `ip route get <PublicIP>` (direct when the answer is a single
//! route without a gateway, on whatever interface); vxmesh looks at the underlay
//! interface's own prefixes, so a peer that is on-link only through *another*
//! interface (or through a hand-made `scope link` route) stays on the overlay. In the
//! topologies flannel documents (nodes on one subnet, or subnets joined by routers)
//! both give the same answer.
//!
//! Not covered: IPv6 (vxmesh carries IPv4 only); underlay address changes after start
//! (the prefixes are read when the dataplane starts).

use std::net::Ipv4Addr;

use crate::subnet::Subnet;

/// A network the underlay interface is directly connected to: one of its
/// addresses and that address's prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Connected {
    /// Whether `ip` is in this network (prefix lengths above 32 contain nothing).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        if self.prefix_len > 32 {
            return false;
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(ip) & mask
    }

    /// Whether `ip` is the network or broadcast address of this network (only
    /// meaningful for prefixes of /30 and shorter, which have both).
    fn is_edge(&self, ip: Ipv4Addr) -> bool {
        if self.prefix_len > 30 {
            return false;
        }
        let host_bits = u32::MAX >> self.prefix_len;
        let h = u32::from(ip) & host_bits;
        h == 0 || h == host_bits
    }
}

/// How a peer's subnet is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum PeerPath {
    /// Through the overlay device (VXLAN): neighbour, fdb entry (kernel dataplane) and
    /// onlink route, as without DirectRouting.
    Overlay,
    /// `<peer subnet> via <PublicIP> dev <underlay>`, unencapsulated.
    Direct { via: Ipv4Addr },
}

/// The DirectRouting decision for one node: whether it is on, and the underlay
/// interface's networks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectRouting {
    enabled: bool,
    connected: Vec<Connected>,
}

impl DirectRouting {
    /// `enabled` is `Backend.DirectRouting`; `connected` the underlay's addresses
    /// with their prefix lengths.
    pub fn new(enabled: bool, connected: impl IntoIterator<Item = (Ipv4Addr, u8)>) -> Self {
        DirectRouting {
            enabled,
            connected: connected
                .into_iter()
                .map(|(addr, prefix_len)| Connected { addr, prefix_len })
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How to reach the peer whose PublicIP is `public_ip`.
    pub fn path(&self, public_ip: Ipv4Addr) -> PeerPath {
        if !self.enabled || !is_unicast(public_ip) {
            return PeerPath::Overlay;
        }
        // A peer claiming one of our own addresses is misconfigured (or NATed
        // oddly): routing its pods to ourselves would loop.
        if self.connected.iter().any(|c| c.addr == public_ip) {
            return PeerPath::Overlay;
        }
        let on_link = self
            .connected
            .iter()
            .any(|c| c.prefix_len < 32 && c.contains(public_ip) && !c.is_edge(public_ip));
        if on_link {
            PeerPath::Direct { via: public_ip }
        } else {
            PeerPath::Overlay
        }
    }
}

/// Whether a route found on the underlay interface is a DirectRouting route that no
/// current peer accounts for: it has a gateway, its destination is a subnet inside
/// the cluster `network`, and no `(peer subnet, PublicIP)` in `wanted` matches it.
/// Such routes are what this module (or flanneld with DirectRouting) installs; a
/// route with another shape — the default route, anything outside the Network, a
/// route without a gateway — is never stale.
pub fn is_stale_direct_route(
    network: &Subnet,
    destination: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    wanted: &[(Subnet, Ipv4Addr)],
) -> bool {
    let Some(gw) = gateway else { return false };
    let Ok(dst) = Subnet::new_exact(destination, prefix_len) else {
        return false;
    };
    if !network.contains_subnet(&dst) {
        return false;
    }
    !wanted.iter().any(|(s, via)| *s == dst && *via == gw)
}

fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_link_local())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The lab's node 1: eth0 192.168.100.11/24.
    fn lab_node() -> DirectRouting {
        DirectRouting::new(true, [(ip("192.168.100.11"), 24)])
    }

    #[test]
    fn same_l2_peers_are_direct_others_overlay() {
        let dr = lab_node();
        assert_eq!(
            dr.path(ip("192.168.100.12")),
            PeerPath::Direct {
                via: ip("192.168.100.12")
            }
        );
        // Behind the router, on another segment.
        assert_eq!(dr.path(ip("192.168.101.13")), PeerPath::Overlay);
        assert_eq!(dr.path(ip("10.0.0.5")), PeerPath::Overlay);
    }

    #[test]
    fn off_means_overlay_for_everyone() {
        let dr = DirectRouting::new(false, [(ip("192.168.100.11"), 24)]);
        assert!(!dr.enabled());
        assert_eq!(dr.path(ip("192.168.100.12")), PeerPath::Overlay);
    }

    #[test]
    fn odd_public_ips_stay_on_the_overlay() {
        let dr = lab_node();
        for bad in [
            "192.168.100.11",  // our own address
            "192.168.100.0",   // network address
            "192.168.100.255", // broadcast
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
        ] {
            assert_eq!(dr.path(ip(bad)), PeerPath::Overlay, "{bad}");
        }
    }

    #[test]
    fn several_addresses_and_prefix_lengths() {
        // A /32 (cloud style: no L2 neighbours at all) and a /31 point-to-point link.
        let dr = DirectRouting::new(true, [(ip("10.1.2.3"), 32), (ip("172.16.0.0"), 31)]);
        assert_eq!(dr.path(ip("10.1.2.4")), PeerPath::Overlay);
        assert_eq!(
            dr.path(ip("172.16.0.1")),
            PeerPath::Direct {
                via: ip("172.16.0.1")
            }
        );
        // A second address on the interface makes its network direct too.
        let dr = DirectRouting::new(true, [(ip("192.168.100.11"), 24), (ip("10.9.0.1"), 16)]);
        assert!(matches!(dr.path(ip("10.9.200.7")), PeerPath::Direct { .. }));
        assert_eq!(dr.path(ip("10.10.0.1")), PeerPath::Overlay);
        // No addresses: nothing is direct.
        assert_eq!(
            DirectRouting::new(true, []).path(ip("192.168.100.12")),
            PeerPath::Overlay
        );
    }

    #[test]
    fn contains() {
        let c = Connected {
            addr: ip("192.168.100.11"),
            prefix_len: 24,
        };
        assert!(c.contains(ip("192.168.100.200")));
        assert!(!c.contains(ip("192.168.101.1")));
        let all = Connected {
            addr: ip("1.2.3.4"),
            prefix_len: 0,
        };
        assert!(all.contains(ip("9.9.9.9")));
        let bad = Connected {
            addr: ip("1.2.3.4"),
            prefix_len: 33,
        };
        assert!(!bad.contains(ip("1.2.3.4")));
    }

    #[test]
    fn stale_direct_routes() {
        let net = Subnet::new(ip("10.244.0.0"), 16).unwrap();
        let s2 = Subnet::new(ip("10.244.2.0"), 24).unwrap();
        let wanted = [(s2, ip("192.168.100.12"))];
        let gw = Some(ip("192.168.100.12"));
        // The wanted route, and routes of other shapes, stay.
        assert!(!is_stale_direct_route(
            &net,
            ip("10.244.2.0"),
            24,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(&net, ip("0.0.0.0"), 0, gw, &wanted));
        assert!(!is_stale_direct_route(
            &net,
            ip("10.9.0.0"),
            24,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            ip("10.244.7.0"),
            24,
            None,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            ip("10.244.0.0"),
            15,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            ip("10.244.7.1"),
            24,
            gw,
            &wanted
        ));
        // A subnet nobody leases any more, or a peer that moved: stale.
        assert!(is_stale_direct_route(
            &net,
            ip("10.244.7.0"),
            24,
            gw,
            &wanted
        ));
        assert!(is_stale_direct_route(
            &net,
            ip("10.244.2.0"),
            24,
            Some(ip("192.168.100.99")),
            &wanted
        ));
        assert!(is_stale_direct_route(&net, ip("10.244.2.0"), 24, gw, &[]));
    }

    proptest::proptest! {
        /// Direct only ever via the peer's own PublicIP, only when enabled, and only
        /// inside a connected network; never panics.
        #[test]
        fn decision_invariants(
            enabled in proptest::bool::ANY,
            nets in proptest::collection::vec((0u32.., 0u8..=34), 0..4),
            peer in 0u32..,
        ) {
            let dr = DirectRouting::new(enabled, nets.iter().map(|&(a, l)| (Ipv4Addr::from(a), l)));
            let peer = Ipv4Addr::from(peer);
            if let PeerPath::Direct { via } = dr.path(peer) {
                proptest::prop_assert!(enabled);
                proptest::prop_assert_eq!(via, peer);
                let inside = nets
                    .iter()
                    .any(|&(a, l)| Connected { addr: Ipv4Addr::from(a), prefix_len: l }.contains(peer));
                proptest::prop_assert!(inside);
                proptest::prop_assert!(nets.iter().all(|&(a, _)| Ipv4Addr::from(a) != peer));
            }
        }
    }
}
