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
//! A dual-stack peer's IPv6 half is decided the same way on its own
//! ([`DirectRouting::path6`]): a PublicIPv6 in one of the underlay's own IPv6 prefixes
//! (link-local ones left out) gets `<peer IPv6 subnet> via <PublicIPv6> dev <underlay>`,
//! as flanneld routes it; otherwise it goes over `flannel-v6.<VNI>`. The two halves may
//! differ (a peer on-link for IPv4 behind a router for IPv6, or the other way round).
//!
//! Not covered: underlay address changes after start (the prefixes are read when the
//! dataplane starts).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::subnet::Subnet;
use crate::subnet6::Subnet6;

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

/// A network the underlay interface is directly connected to over IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Connected6 {
    /// Whether `ip` is in this network (prefix lengths above 128 contain nothing).
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        if self.prefix_len > 128 {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u128::from(self.addr) & mask == u128::from(ip) & mask
    }

    /// Whether `ip` is this network's subnet-router anycast address (host bits zero),
    /// which no node holds as its own.
    fn is_anycast(&self, ip: Ipv6Addr) -> bool {
        self.prefix_len < 127 && u128::from(ip) & (u128::MAX >> self.prefix_len) == 0
    }
}

/// How a peer's subnet is reached (`A`: the address family of its PublicIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum PeerPath<A = Ipv4Addr> {
    /// Through the overlay device (VXLAN): neighbour, fdb entry (kernel dataplane) and
    /// onlink route, as without DirectRouting.
    Overlay,
    /// `<peer subnet> via <PublicIP> dev <underlay>`, unencapsulated.
    Direct { via: A },
}

/// The DirectRouting decision for one node: whether it is on, and the underlay
/// interface's networks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectRouting {
    enabled: bool,
    connected: Vec<Connected>,
    connected6: Vec<Connected6>,
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
            connected6: Vec::new(),
        }
    }

    /// With the underlay's IPv6 addresses and their prefix lengths (dual stack).
    pub fn with_ipv6(mut self, connected: impl IntoIterator<Item = (Ipv6Addr, u8)>) -> Self {
        self.connected6 = connected
            .into_iter()
            .map(|(addr, prefix_len)| Connected6 { addr, prefix_len })
            .collect();
        self
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

    /// How to reach the IPv6 half of the peer whose PublicIPv6 is `public_ipv6`.
    pub fn path6(&self, public_ipv6: Ipv6Addr) -> PeerPath<Ipv6Addr> {
        if !self.enabled || !is_unicast6(public_ipv6) {
            return PeerPath::Overlay;
        }
        if self.connected6.iter().any(|c| c.addr == public_ipv6) {
            return PeerPath::Overlay;
        }
        let on_link = self
            .connected6
            .iter()
            .any(|c| c.prefix_len < 128 && c.contains(public_ipv6) && !c.is_anycast(public_ipv6));
        if on_link {
            PeerPath::Direct { via: public_ipv6 }
        } else {
            PeerPath::Overlay
        }
    }
}

/// [`is_stale_direct_route`] for IPv6: a route with a gateway to a subnet of
/// `subnet_len` (IPv6SubnetLen) inside the IPv6 Network that no `(peer IPv6 subnet,
/// PublicIPv6)` in `wanted` matches.
pub fn is_stale_direct_route6(
    network: &Subnet6,
    subnet_len: u8,
    destination: Ipv6Addr,
    prefix_len: u8,
    gateway: Option<Ipv6Addr>,
    wanted: &[(Subnet6, Ipv6Addr)],
) -> bool {
    let Some(gw) = gateway else { return false };
    if prefix_len != subnet_len {
        return false;
    }
    let Ok(dst) = Subnet6::new_exact(destination, prefix_len) else {
        return false;
    };
    if !network.contains_subnet(&dst) {
        return false;
    }
    !wanted.iter().any(|(s, via)| *s == dst && *via == gw)
}

fn is_unicast6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || ip.to_ipv4_mapped().is_some())
}

/// Whether a route found on the underlay interface is a DirectRouting route that no
/// current peer accounts for: it has a gateway, its destination is one node subnet
/// (`subnet_len` long: SubnetLen) inside the cluster `network`, and no `(peer
/// subnet, PublicIP)` in `wanted` matches it. Such routes are what this module (or
/// flanneld with DirectRouting) installs; a route with another shape — the default
/// route, anything outside the Network, a route of another length (an operator's
/// `10.50.0.0/16 via …` inside a 10.0.0.0/8 Network), a route without a gateway —
/// is never stale.
pub fn is_stale_direct_route(
    network: &Subnet,
    subnet_len: u8,
    destination: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    wanted: &[(Subnet, Ipv4Addr)],
) -> bool {
    let Some(gw) = gateway else { return false };
    if prefix_len != subnet_len {
        return false;
    }
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
            24,
            ip("10.244.2.0"),
            24,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            24,
            ip("0.0.0.0"),
            0,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            24,
            ip("10.9.0.0"),
            24,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            24,
            ip("10.244.7.0"),
            24,
            None,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            24,
            ip("10.244.0.0"),
            15,
            gw,
            &wanted
        ));
        assert!(!is_stale_direct_route(
            &net,
            24,
            ip("10.244.7.1"),
            24,
            gw,
            &wanted
        ));
        // An operator's route inside a wide Network, of another length than the
        // node subnets (10.0.0.0/8 cut into /24s, and 10.50.0.0/16 via a router): not
        // DirectRouting's, never removed.
        let wide = Subnet::new(ip("10.0.0.0"), 8).unwrap();
        assert!(!is_stale_direct_route(
            &wide,
            24,
            ip("10.50.0.0"),
            16,
            gw,
            &[]
        ));
        assert!(!is_stale_direct_route(
            &wide,
            24,
            ip("10.50.0.0"),
            25,
            gw,
            &[]
        ));
        assert!(is_stale_direct_route(
            &wide,
            24,
            ip("10.50.0.0"),
            24,
            gw,
            &[]
        ));
        // A subnet nobody leases any more, or a peer that moved: stale.
        assert!(is_stale_direct_route(
            &net,
            24,
            ip("10.244.7.0"),
            24,
            gw,
            &wanted
        ));
        assert!(is_stale_direct_route(
            &net,
            24,
            ip("10.244.2.0"),
            24,
            Some(ip("192.168.100.99")),
            &wanted
        ));
        assert!(is_stale_direct_route(
            &net,
            24,
            ip("10.244.2.0"),
            24,
            gw,
            &[]
        ));
    }

    #[test]
    fn ipv6_halves_are_decided_on_their_own() {
        let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let dr = lab_node().with_ipv6([(ip6("fd00:64::11"), 64), (ip6("2001:db8:1::5"), 127)]);
        assert_eq!(
            dr.path6(ip6("fd00:64::12")),
            PeerPath::Direct {
                via: ip6("fd00:64::12")
            }
        );
        assert_eq!(
            dr.path6(ip6("2001:db8:1::4")),
            PeerPath::Direct {
                via: ip6("2001:db8:1::4")
            }
        );
        for overlay in [
            "fd00:65::12",    // behind a router
            "fd00:64::11",    // our own address
            "fd00:64::",      // the subnet-router anycast address
            "fe80::12",       // link-local
            "ff02::1",        // multicast
            "::",             // unspecified
            "::1",            // loopback
            "::ffff:1.2.3.4", // IPv4-mapped
        ] {
            assert_eq!(dr.path6(ip6(overlay)), PeerPath::Overlay, "{overlay}");
        }
        // Off, or no IPv6 address on the underlay: everything over flannel-v6.
        assert_eq!(lab_node().path6(ip6("fd00:64::12")), PeerPath::Overlay);
        let off = DirectRouting::new(false, []).with_ipv6([(ip6("fd00:64::11"), 64)]);
        assert_eq!(off.path6(ip6("fd00:64::12")), PeerPath::Overlay);
    }

    #[test]
    fn stale_direct_routes6() {
        let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let net: Subnet6 = "fd00:10:244::/56".parse().unwrap();
        let s2: Subnet6 = "fd00:10:244:2::/64".parse().unwrap();
        let wanted = [(s2, ip6("fd00:64::12"))];
        let gw = Some(ip6("fd00:64::12"));
        let stale =
            |dst: &str, len, gw| is_stale_direct_route6(&net, 64, ip6(dst), len, gw, &wanted);
        assert!(!stale("fd00:10:244:2::", 64, gw));
        assert!(!stale("::", 0, gw));
        assert!(!stale("fd00:64::", 64, None));
        assert!(!stale("fd00:10:244::", 55, gw));
        assert!(!stale("fd00:10:244:2::1", 64, gw));
        assert!(stale("fd00:10:244:7::", 64, gw));
        assert!(stale("fd00:10:244:2::", 64, Some(ip6("fd00:64::99"))));
        // Another length inside the IPv6 Network: an operator's route, left alone.
        assert!(!stale("fd00:10:244:80::", 57, gw));
        assert!(!stale("fd00:10:244:7::", 80, gw));
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
