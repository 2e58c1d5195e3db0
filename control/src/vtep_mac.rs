//! The VTEP MAC address: stable for a node, with no state to keep.
//!
//! Peers cache it (neighbour and fdb entries, flannel #1795), so it must not change
//! when the agent restarts or the node reboots. It is derived from the node's
//! PublicIP and the VNI with FNV-1a (a fixed, documented function: the result does
//! not depend on the Rust version), marked locally administered and unicast.
//!
//! A dual-stack lease advertises a second VTEP, flannel's `flannel-v6.<VNI>`, with
//! its own MAC in `BackendV6Data`: [`derive_v6`], the same function over
//! `"vxmesh-vtep6"`, the PublicIPv6 and the VNI (docs/decisions/0014).

use std::net::{Ipv4Addr, Ipv6Addr};

use vxmesh_dataplane::wire::MacAddr;

/// The VtepMAC for a node with this PublicIP on this VNI.
pub fn derive(public_ip: Ipv4Addr, vni: u32) -> MacAddr {
    fnv_mac(b"vxmesh-vtep", &public_ip.octets(), vni)
}

/// The IPv6 VtepMAC (`BackendV6Data.VtepMAC`) for a node with this PublicIPv6 on
/// this VNI.
pub fn derive_v6(public_ipv6: Ipv6Addr, vni: u32) -> MacAddr {
    fnv_mac(b"vxmesh-vtep6", &public_ipv6.octets(), vni)
}

fn fnv_mac(label: &[u8], ip: &[u8], vni: u32) -> MacAddr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label
        .iter()
        .chain(ip.iter())
        .chain(vni.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // Locally administered (bit 1 set), unicast (bit 0 clear).
    MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast_and_distinct() {
        let a = derive(Ipv4Addr::new(192, 168, 56, 11), 1);
        assert_eq!(a, derive(Ipv4Addr::new(192, 168, 56, 11), 1));
        assert!(a.is_unicast() && a.is_local());
        assert_ne!(a, derive(Ipv4Addr::new(192, 168, 56, 12), 1));
        assert_ne!(a, derive(Ipv4Addr::new(192, 168, 56, 11), 2));
        // Pinned: changing the derivation would change every node's VtepMAC on upgrade.
        assert_eq!(a.to_string(), "e2:6e:84:df:a4:7a");
    }

    #[test]
    fn ipv6_vtep_mac_is_stable_and_its_own() {
        let ip6: Ipv6Addr = "fd00:64::3".parse().unwrap();
        let m = derive_v6(ip6, 1);
        assert_eq!(m, derive_v6(ip6, 1));
        assert!(m.is_unicast() && m.is_local());
        assert_ne!(m, derive_v6("fd00:64::4".parse().unwrap(), 1));
        assert_ne!(m, derive_v6(ip6, 2));
        assert_ne!(m, derive(Ipv4Addr::new(192, 168, 64, 3), 1));
        // Pinned, as the IPv4 one.
        assert_eq!(m.to_string(), "66:cb:49:ea:b2:bb");
    }
}
