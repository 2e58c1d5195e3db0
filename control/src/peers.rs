//! The set of peer nodes, judged from the registry's leases (no I/O).
//!
//! Anyone who can write the etcd prefix — another tool, a typo, a half-migrated node,
//! an attacker — can put anything under `<prefix>/subnets/`, and every node turns what
//! it finds there into routes. So a lease becomes a peer (route, neighbour, forwarding
//! entry) only if
//! 1. its key is `<ip>-<len>` (or flannel's dual-stack `<ip>-<len>&<ipv6>-<len>`: the IPv4
//!    part is judged, the IPv6 half kept as [`PeerIpv6`]); its value is at most [`MAX_LEASE_VALUE_BYTES`] (larger
//!    values are refused unread), parses, is a vxlan lease and carries our VNI;
//! 2. its subnet lies inside the Network and is exactly SubnetLen long — never
//!    `0.0.0.0/0`, the whole Network, a node's `<PublicIP>/32`, or a /25 inside a /24;
//! 3. it conflicts neither with this node nor with an earlier lease: no overlapping
//!    subnet, no shared PublicIP, no shared VtepMAC, and no subnet containing a node's
//!    PublicIP (or PublicIP inside a node's subnet: a route for it would pull that
//!    node's VXLAN into the overlay). Of two conflicting leases the one with the lower
//!    etcd create revision — the first writer — wins; this node's own lease always
//!    wins. The loser is rejected, and judged again whenever anything changes: when
//!    the winner goes, it becomes a peer.
//!
//! Everything else is rejected with a [`RejectReason`]; each rejection is reported
//! once ([`Skip`]) until its reason changes, so a bad key never floods the log, and the
//! current rejections stay readable ([`PeerTable::rejected`]) for `/metrics`, `/v1/status`
//! and `vxmeshctl leases`, which runs this same table over a listing.
//!
//! The table is fed a full listing ([`PeerTable::reset`]), single watch events
//! ([`PeerTable::put`], [`PeerTable::delete`]) or a burst of them ([`PeerTable::apply`]);
//! each returns the net change for the dataplane. Values are parsed once per put. A
//! new lease, a deleted one, or a changed one when no lease is rejected for a conflict,
//! is judged on its own in O(log n) for n leases; the full conflict pass (O(n log n))
//! runs for listings, a change of our own subnet, and the events that may change
//! another lease's verdict ([`TableWork`] counts both).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::config::NetworkConfig;
use crate::lease::{parse_lease_key, LeaseAttrs, LeaseKey, LeaseKeyError, MAX_LEASE_VALUE_BYTES};
use crate::pool::LeasedSubnets;
use crate::registry_events::Entry;
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;
use vxmesh_dataplane::fib::{PeerVtep, PeerVtep6};
use vxmesh_dataplane::wire::MacAddr;

/// A remote node reachable through the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Peer {
    pub subnet: Subnet,
    pub public_ip: Ipv4Addr,
    #[serde(serialize_with = "ser_mac")]
    pub vtep_mac: MacAddr,
    /// The IPv6 half of a dual-stack lease: programmed on `flannel-v6.<VNI>` (either
    /// dataplane; not judged beyond its own VNI: see [`PeerIpv6`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PeerIpv6>,
}

/// The IPv6 half of a peer's dual-stack lease: the key's IPv6 subnet
/// (`10.244.3.0-24&fd00:10:244:3::-64`), `PublicIPv6` and `BackendV6Data.VtepMAC`.
/// Read when the config is dual stack, all three are there and `BackendV6Data.VNI`
/// is ours; the dataplane programs it on `flannel-v6.<VNI>`. Judged as the IPv4 part
/// is (inside IPv6Network at IPv6SubnetLen, a usable PublicIPv6, no overlap or
/// shared PublicIPv6 or IPv6 VtepMAC with this node or an earlier lease): a lease
/// whose IPv6 half fails is rejected whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PeerIpv6 {
    #[serde(serialize_with = "ser_display")]
    pub subnet: Subnet6,
    pub public_ipv6: std::net::Ipv6Addr,
    #[serde(serialize_with = "ser_mac")]
    pub vtep_mac: MacAddr,
}

fn ser_display<S: serde::Serializer, T: fmt::Display>(t: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

fn ser_mac<S: serde::Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

impl Peer {
    /// The peer's VTEP address, `<subnet>.0`: next hop of its route.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    /// The forwarding table's view of this peer: its IPv4 VTEP, and its IPv6 one
    /// from the IPv6 half (the first address of its IPv6 subnet is its IPv6 VTEP
    /// address, as on `flannel-v6.<VNI>`).
    pub fn to_vtep(&self) -> PeerVtep {
        PeerVtep {
            vtep_mac: self.vtep_mac,
            public_ip: self.public_ip,
            vtep_ip: self.vtep_ip(),
            v6: self.ipv6.map(|h| PeerVtep6 {
                vtep_mac: h.vtep_mac,
                public_ip: h.public_ipv6,
                vtep_ip: h.subnet.addr(),
            }),
        }
    }
}

/// What changed in the peer set. A batch lists removals first, then updates, then
/// additions, so that a VtepMAC or PublicIP passing from one lease to another is
/// released before it is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum PeerChange<P = Peer> {
    Added(P),
    /// Same subnet, new PublicIP and/or VtepMAC (or a new IPv6 half, which the IPv4
    /// dataplane programs as an unchanged peer).
    Updated {
        old: P,
        new: P,
    },
    Removed(P),
}

impl PeerChange {
    /// The forwarding-table delta of a batch of changes: the VTEPs to remove and the
    /// VTEPs to add (an update is both).
    pub fn vtep_delta(changes: &[PeerChange]) -> (Vec<PeerVtep>, Vec<PeerVtep>) {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for c in changes {
            match c {
                PeerChange::Added(p) => added.push(p.to_vtep()),
                PeerChange::Updated { old, new } => {
                    removed.push(old.to_vtep());
                    added.push(new.to_vtep());
                }
                PeerChange::Removed(p) => removed.push(p.to_vtep()),
            }
        }
        (removed, added)
    }
}

/// What a lease must match to be a peer: the network config's Network, SubnetLen
/// and VNI, and on a dual-stack config its IPv6Network and IPv6SubnetLen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRules {
    pub network: Subnet,
    pub subnet_len: u8,
    pub vni: u32,
    /// `None` unless the config is dual stack: then leases' IPv6 halves are ignored.
    pub ipv6: Option<Ipv6Rules>,
}

/// What a lease's IPv6 half must match: the config's IPv6Network and IPv6SubnetLen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Rules {
    pub network: Subnet6,
    pub subnet_len: u8,
}

impl PeerRules {
    /// The rules of an IPv4 or dual-stack config; `None` for an IPv6-only one, whose
    /// leases name no IPv4 subnet.
    pub fn from_config(cfg: &NetworkConfig) -> Option<PeerRules> {
        let pool4 = cfg.ipv4.as_ref()?;
        Some(PeerRules {
            network: pool4.network,
            subnet_len: pool4.subnet_len,
            vni: cfg.backend.vni.get(),
            ipv6: cfg.ipv6.map(|p| Ipv6Rules {
                network: p.network,
                subnet_len: p.subnet_len,
            }),
        })
    }
}

/// What an IPv6-only network's leases must match: IPv6Network, IPv6SubnetLen and the
/// VNI (in `BackendV6Data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6OnlyRules {
    pub ipv6: Ipv6Rules,
    pub vni: u32,
}

impl Ipv6OnlyRules {
    /// The rules of an IPv6-only config; `None` for one that carries IPv4.
    pub fn from_config(cfg: &NetworkConfig) -> Option<Ipv6OnlyRules> {
        if cfg.ipv4.is_some() {
            return None;
        }
        let p = cfg.ipv6?;
        Some(Ipv6OnlyRules {
            ipv6: Ipv6Rules {
                network: p.network,
                subnet_len: p.subnet_len,
            },
            vni: cfg.backend.vni.get(),
        })
    }
}

/// This node on an IPv6-only network: its PublicIPv6 and IPv6 VtepMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalNode6 {
    pub public_ipv6: Ipv6Addr,
    pub vtep_mac: MacAddr,
}

/// This node: its PublicIP and VtepMAC (and, dual stack, its PublicIPv6 and IPv6
/// VtepMAC) are never another lease's, and its own lease (its subnet with its
/// PublicIP) is not a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalNode {
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// This node's PublicIPv6 and `BackendV6Data.VtepMAC`, when it leases IPv6 too.
    pub ipv6: Option<(Ipv6Addr, MacAddr)>,
}

/// Why a lease is not a peer. The label ([`RejectReason::as_str`]) is the `reason`
/// of the `vxmesh_rejected_leases` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The key is not `<ip>-<len>` with the host bits clear.
    BadKey,
    /// The value is larger than [`MAX_LEASE_VALUE_BYTES`].
    TooLarge,
    /// The value is not flannel's lease JSON.
    Unparseable,
    /// Another backend (udp, host-gw, wireguard…): vxmesh cannot reach that node.
    NotVxlan,
    /// A vxlan lease with IPv6 backend data only (an IPv6-only node, key
    /// `0.0.0.0-0&<ipv6>-<len>`) in a network that carries IPv4.
    Ipv6Only,
    /// A lease with no IPv6 half (key, PublicIPv6 or `BackendV6Data`) in an
    /// IPv6-only network.
    NoIpv6,
    /// A vxlan lease of another VNI.
    WrongVni,
    /// The subnet is not inside the Network.
    OutsideNetwork,
    /// The subnet is inside the Network but not SubnetLen long.
    WrongSubnetLen,
    /// The subnet overlaps this node's or an earlier lease's.
    Overlap,
    /// The PublicIP is this node's or an earlier lease's.
    DuplicatePublicIp,
    /// The PublicIP (or PublicIPv6) cannot be a node's underlay address: unspecified,
    /// loopback, multicast, broadcast, reserved, or (IPv6) link-local.
    BadPublicIp,
    /// The VtepMAC is this node's or an earlier lease's.
    DuplicateVtepMac,
    /// The subnet contains a node's PublicIP, or the PublicIP lies in a node's subnet.
    PublicIpInSubnet,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        RejectReason::BadKey,
        RejectReason::TooLarge,
        RejectReason::Unparseable,
        RejectReason::NotVxlan,
        RejectReason::Ipv6Only,
        RejectReason::NoIpv6,
        RejectReason::WrongVni,
        RejectReason::OutsideNetwork,
        RejectReason::WrongSubnetLen,
        RejectReason::Overlap,
        RejectReason::DuplicatePublicIp,
        RejectReason::DuplicateVtepMac,
        RejectReason::PublicIpInSubnet,
        RejectReason::BadPublicIp,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::BadKey => "bad_key",
            RejectReason::TooLarge => "too_large",
            RejectReason::Unparseable => "unparseable",
            RejectReason::NotVxlan => "not_vxlan",
            RejectReason::Ipv6Only => "ipv6_only",
            RejectReason::NoIpv6 => "no_ipv6",
            RejectReason::WrongVni => "wrong_vni",
            RejectReason::OutsideNetwork => "outside_network",
            RejectReason::WrongSubnetLen => "wrong_subnet_len",
            RejectReason::Overlap => "overlap",
            RejectReason::DuplicatePublicIp => "duplicate_public_ip",
            RejectReason::DuplicateVtepMac => "duplicate_vtep_mac",
            RejectReason::PublicIpInSubnet => "public_ip_in_subnet",
            RejectReason::BadPublicIp => "bad_public_ip",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lease that is not a peer: the reason, and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub why: String,
}

impl Rejection {
    fn new(reason: RejectReason, why: String) -> Rejection {
        Rejection { reason, why }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.why, self.reason)
    }
}

/// The judgement on one lease key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<P = Peer> {
    Peer(P),
    /// This node's own lease.
    Own,
    Rejected(Rejection),
}

/// A lease newly rejected (or rejected for a new reason): warn about it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub key: String,
    pub rejection: Rejection,
}

/// Who a lease names: its subnet of the table's family and the node's address in it.
/// This node's own lease is the one that names this node's subnet and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    V4(Subnet, Ipv4Addr),
    V6(Subnet6, Ipv6Addr),
}

/// What a peer holds that no other lease may hold: its IPv4 subnet, PublicIP and
/// VtepMAC, and its IPv6 half's (on their own device, `flannel-v6.<VNI>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holds {
    pub v4: Option<(Subnet, Ipv4Addr, MacAddr)>,
    pub v6: Option<PeerIpv6>,
}

/// This node's IPv4 and IPv6 underlay addresses with their VtepMACs.
pub type LocalAddrs = (Option<(Ipv4Addr, MacAddr)>, Option<(Ipv6Addr, MacAddr)>);

/// The peers one kind of table judges: [`Peer`] (IPv4, with a dual-stack lease's
/// IPv6 half) on a network that carries IPv4, [`PeerIpv6`] on an IPv6-only one. The
/// table's judgement (conflicts, the first writer wins, this node's own lease) is the
/// same for both.
pub trait PeerKind: Copy + Eq + Ord + fmt::Debug {
    /// What the table's peers are keyed by: the subnet of the table's family.
    type Id: Copy + Ord + fmt::Debug;
    /// What a lease must match.
    type Rules: Copy + fmt::Debug;
    /// This node, as leases are judged against it.
    type Local: Copy + fmt::Debug + PartialEq;

    fn id(&self) -> Self::Id;
    fn holds(&self) -> Holds;
    /// This node's addresses and VtepMACs (IPv4, IPv6): never another lease's.
    fn local_addrs(local: &Self::Local) -> LocalAddrs;
    /// Whom a lease names (its key and parsed value), if it names anyone.
    fn owner(key: &str, attrs: &LeaseAttrs) -> Option<Owner>;
    /// Whom this node's own lease names.
    fn own_owner(own: LeaseKey, local: &Self::Local) -> Option<Owner>;
    /// A lease judged on its own: the peer it would be, or why it cannot be one
    /// whatever the other leases are. `attrs` is `None` when the value was too large
    /// to read.
    fn read(
        rules: &Self::Rules,
        key: &str,
        value_len: usize,
        attrs: Option<Result<LeaseAttrs, crate::lease::LeaseParseError>>,
    ) -> Result<Self, Rejection>;
}

/// The IPv4 part of a key, read only from a key in one of flannel's exact forms: a
/// key whose IPv6 half is misspelt is not read as an IPv4-only one.
/// (`0.0.0.0-0` is spelt right: it is judged as the subnet it names.)
fn ipv4_part(key: &str) -> Option<Subnet> {
    match LeaseKey::parse(key) {
        Ok(_) | Err(LeaseKeyError::NoSubnet(_)) => parse_lease_key(key),
        Err(LeaseKeyError::Syntax(_)) => None,
    }
}

impl PeerKind for Peer {
    type Id = Subnet;
    type Rules = PeerRules;
    type Local = LocalNode;

    fn id(&self) -> Subnet {
        self.subnet
    }

    fn holds(&self) -> Holds {
        Holds {
            v4: Some((self.subnet, self.public_ip, self.vtep_mac)),
            v6: self.ipv6,
        }
    }

    fn local_addrs(l: &LocalNode) -> LocalAddrs {
        (Some((l.public_ip, l.vtep_mac)), l.ipv6)
    }

    fn owner(key: &str, attrs: &LeaseAttrs) -> Option<Owner> {
        ipv4_part(key).map(|s| Owner::V4(s, attrs.public_ip))
    }

    fn own_owner(own: LeaseKey, l: &LocalNode) -> Option<Owner> {
        own.ipv4_subnet().map(|s| Owner::V4(s, l.public_ip))
    }

    fn read(
        rules: &PeerRules,
        key: &str,
        value_len: usize,
        attrs: Option<Result<LeaseAttrs, crate::lease::LeaseParseError>>,
    ) -> Result<Peer, Rejection> {
        let ipv6 = match &attrs {
            Some(Ok(a)) => ipv6_half(rules, key, a),
            _ => Ok(None),
        };
        judge_alone(rules, ipv4_part(key), value_len, attrs)
            .and_then(|p| Ok(Peer { ipv6: ipv6?, ..p }))
    }
}

impl PeerKind for PeerIpv6 {
    type Id = Subnet6;
    type Rules = Ipv6OnlyRules;
    type Local = LocalNode6;

    fn id(&self) -> Subnet6 {
        self.subnet
    }

    fn holds(&self) -> Holds {
        Holds {
            v4: None,
            v6: Some(*self),
        }
    }

    fn local_addrs(l: &LocalNode6) -> LocalAddrs {
        (None, Some((l.public_ipv6, l.vtep_mac)))
    }

    fn owner(key: &str, attrs: &LeaseAttrs) -> Option<Owner> {
        let s = LeaseKey::parse(key).ok()?.ipv6_subnet()?;
        Some(Owner::V6(s, attrs.public_ipv6?))
    }

    fn own_owner(own: LeaseKey, l: &LocalNode6) -> Option<Owner> {
        own.ipv6_subnet().map(|s| Owner::V6(s, l.public_ipv6))
    }

    fn read(
        rules: &Ipv6OnlyRules,
        key: &str,
        value_len: usize,
        attrs: Option<Result<LeaseAttrs, crate::lease::LeaseParseError>>,
    ) -> Result<PeerIpv6, Rejection> {
        let subnet = LeaseKey::parse(key).map_err(|_| {
            Rejection::new(
                RejectReason::BadKey,
                "the key is not in flannel's form: 0.0.0.0-0&<ipv6>-<len> (0.0.0.0-0&fd00:0:0:3::-64) or <ip>-<len>&<ipv6>-<len>, host bits clear, spelt as flannel writes it (IPv6 lower-case and shortest)".into(),
            )
        })?;
        let attrs = read_value(value_len, attrs)?;
        let Some(v6) = attrs.vxlan_v6 else {
            return Err(if attrs.vxlan.is_some() {
                Rejection::new(
                    RejectReason::NoIpv6,
                    "a vxlan lease with IPv4 backend data only (no BackendV6Data) in an IPv6-only network (EnableIPv4 false): its node carries no pod IPv6".into(),
                )
            } else {
                not_vxlan(&attrs)
            });
        };
        if v6.vni != rules.vni {
            return Err(Rejection::new(
                RejectReason::WrongVni,
                format!(
                    "BackendV6Data VNI {} differs from ours ({})",
                    v6.vni, rules.vni
                ),
            ));
        }
        let (Some(subnet), Some(public_ipv6)) = (subnet.ipv6_subnet(), attrs.public_ipv6) else {
            return Err(Rejection::new(
                RejectReason::NoIpv6,
                "the lease names no IPv6 subnet in its key or no PublicIPv6 in its value; an IPv6-only network (EnableIPv4 false) has nothing else to route".into(),
            ));
        };
        judge_ipv6(&rules.ipv6, subnet, public_ipv6, v6.vtep_mac)
    }
}

/// One lease as read on its own (parsed once per put).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known<P> {
    create_revision: i64,
    /// Whom key and value name, to recognise this node's lease.
    owner: Option<Owner>,
    /// The peer it would be, or why it cannot be one whatever the other leases are.
    alone: Result<P, Rejection>,
}

impl<P: PeerKind> Known<P> {
    fn read(rules: &P::Rules, e: &Entry) -> Known<P> {
        let attrs = (e.value.len() <= MAX_LEASE_VALUE_BYTES).then(|| LeaseAttrs::parse(&e.value));
        let owner = match &attrs {
            Some(Ok(a)) => P::owner(&e.key, a),
            _ => None,
        };
        Known {
            create_revision: e.create_revision,
            owner,
            alone: P::read(rules, &e.key, e.value.len(), attrs),
        }
    }
}

/// The IPv6 half of a dual-stack lease (see [`PeerIpv6`]), judged on its own:
/// `Ok(None)` when the config is not dual stack or the lease has no complete IPv6
/// half of our VNI; an error when the half it has cannot be programmed.
fn ipv6_half(
    rules: &PeerRules,
    key: &str,
    attrs: &LeaseAttrs,
) -> Result<Option<PeerIpv6>, Rejection> {
    let Some(r6) = rules.ipv6 else {
        return Ok(None);
    };
    let half = LeaseKey::parse(key).ok().and_then(|k| k.ipv6_subnet()).zip(
        attrs
            .vxlan_v6
            .filter(|v| v.vni == rules.vni)
            .zip(attrs.public_ipv6),
    );
    let Some((subnet, (v6, public_ipv6))) = half else {
        return Ok(None);
    };
    judge_ipv6(&r6, subnet, public_ipv6, v6.vtep_mac).map(Some)
}

/// An IPv6 subnet and PublicIPv6 judged against IPv6Network and IPv6SubnetLen.
fn judge_ipv6(
    r6: &Ipv6Rules,
    subnet: Subnet6,
    public_ipv6: Ipv6Addr,
    vtep_mac: MacAddr,
) -> Result<PeerIpv6, Rejection> {
    if !r6.network.contains_subnet(&subnet) {
        return Err(Rejection::new(
            RejectReason::OutsideNetwork,
            format!(
                "IPv6 subnet {subnet} is not inside IPv6Network {}",
                r6.network
            ),
        ));
    }
    if subnet.prefix_len() != r6.subnet_len {
        return Err(Rejection::new(
            RejectReason::WrongSubnetLen,
            format!(
                "IPv6 subnet {subnet} is a /{}, but IPv6Network {} is cut into /{}s (IPv6SubnetLen)",
                subnet.prefix_len(),
                r6.network,
                r6.subnet_len
            ),
        ));
    }
    if let Some(what) = unusable_public_ipv6(public_ipv6) {
        return Err(Rejection::new(
            RejectReason::BadPublicIp,
            format!("PublicIPv6 {public_ipv6} is {what}, not a node's underlay address"),
        ));
    }
    Ok(PeerIpv6 {
        subnet,
        public_ipv6,
        vtep_mac,
    })
}

/// Why a PublicIP cannot be a node's underlay address, if it cannot: VXLAN sent
/// there would stay on this node (loopback, `0.0.0.0/8`), reach every node of a
/// segment (multicast, broadcast), or go nowhere (reserved `240.0.0.0/4`).
pub fn unusable_public_ip(ip: Ipv4Addr) -> Option<&'static str> {
    let first = ip.octets()[0];
    if first == 0 {
        Some("in 0.0.0.0/8 (\"this network\")")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if first >= 240 {
        Some("in the reserved 240.0.0.0/4")
    } else {
        None
    }
}

/// As [`unusable_public_ip`], for a PublicIPv6: unspecified, loopback, multicast,
/// or link-local (which needs an interface to mean anything; a lease carries none).
pub fn unusable_public_ipv6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("the loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_unicast_link_local() {
        Some("a link-local address")
    } else if crate::subnet6::is_ipv4_embedded(ip) {
        Some("an IPv4-compatible or -mapped address")
    } else {
        None
    }
}

/// A lease's value, read: too large, unparseable, or its attributes.
fn read_value(
    value_len: usize,
    attrs: Option<Result<LeaseAttrs, crate::lease::LeaseParseError>>,
) -> Result<LeaseAttrs, Rejection> {
    attrs
        .ok_or_else(|| {
            Rejection::new(
                RejectReason::TooLarge,
                format!(
                    "the value is {value_len} bytes, more than the {MAX_LEASE_VALUE_BYTES} a lease can be; not read"
                ),
            )
        })?
        .map_err(|e| Rejection::new(RejectReason::Unparseable, e.to_string()))
}

/// The rejection of a lease of another backend.
fn not_vxlan(attrs: &LeaseAttrs) -> Rejection {
    let why = if attrs.backend_type.is_empty() {
        // flannel's udp backend leaves BackendType empty (omitted in the JSON).
        "no BackendType (a flannel udp-backend lease), not vxlan; vxmesh cannot reach that node"
            .into()
    } else {
        format!(
            "backend type {:?} is not vxlan; vxmesh cannot reach that node",
            attrs.backend_type
        )
    };
    Rejection::new(RejectReason::NotVxlan, why)
}

fn judge_alone(
    rules: &PeerRules,
    subnet: Option<Subnet>,
    value_len: usize,
    attrs: Option<Result<LeaseAttrs, crate::lease::LeaseParseError>>,
) -> Result<Peer, Rejection> {
    let subnet = subnet.ok_or_else(|| {
        Rejection::new(
            RejectReason::BadKey,
            "the key is not in flannel's form: <ip>-<len> (10.244.3.0-24) or <ip>-<len>&<ipv6>-<len> (10.244.3.0-24&fd00:0:0:3::-64), host bits clear, spelt as flannel writes it (no leading zeros or signs, IPv6 lower-case and shortest)".into(),
        )
    })?;
    let attrs = read_value(value_len, attrs)?;
    if let (None, Some(v6)) = (&attrs.vxlan, &attrs.vxlan_v6) {
        return Err(Rejection::new(
            RejectReason::Ipv6Only,
            format!(
                "an IPv6-only lease (PublicIPv6 {}, BackendV6Data VtepMAC {}, no IPv4 BackendData) in a network that carries IPv4: its node has no IPv4 subnet to route (an IPv6-only network sets EnableIPv4 false)",
                attrs
                    .public_ipv6
                    .map_or_else(|| "null".to_string(), |ip| ip.to_string()),
                v6.vtep_mac
            ),
        ));
    }
    let Some(vx) = attrs.vxlan else {
        return Err(not_vxlan(&attrs));
    };
    if vx.vni != rules.vni {
        return Err(Rejection::new(
            RejectReason::WrongVni,
            format!("VNI {} differs from ours ({})", vx.vni, rules.vni),
        ));
    }
    if !rules.network.contains_subnet(&subnet) {
        return Err(Rejection::new(
            RejectReason::OutsideNetwork,
            format!("subnet {subnet} is not inside Network {}", rules.network),
        ));
    }
    if subnet.prefix_len() != rules.subnet_len {
        return Err(Rejection::new(
            RejectReason::WrongSubnetLen,
            format!(
                "subnet {subnet} is a /{}, but Network {} is cut into /{}s (SubnetLen)",
                subnet.prefix_len(),
                rules.network,
                rules.subnet_len
            ),
        ));
    }
    if let Some(what) = unusable_public_ip(attrs.public_ip) {
        return Err(Rejection::new(
            RejectReason::BadPublicIp,
            format!(
                "PublicIP {} is {what}, not a node's underlay address",
                attrs.public_ip
            ),
        ));
    }
    Ok(Peer {
        ipv6: None,
        subnet,
        public_ip: attrs.public_ip,
        vtep_mac: vx.vtep_mac,
    })
}

/// Who already holds a subnet, PublicIP or VtepMAC in the conflict pass.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    ThisNode,
    Lease(Arc<str>),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::ThisNode => f.write_str("this node"),
            Holder::Lease(k) => write!(f, "{k}, written earlier"),
        }
    }
}

/// What the accepted leases (and this node) hold, for conflict lookups. The subnets
/// never overlap each other (that is what the pass enforces), so the only subnet that
/// can contain an address or overlap a subnet starting at `a` is the last one starting
/// at or before it, or one starting inside it. Kept between events: it is the state
/// the last judgement left, which a single new lease is judged against.
#[derive(Debug, Clone, Default)]
struct Taken {
    subnets: BTreeMap<(u32, u8), (Subnet, Holder)>,
    ips: BTreeMap<Ipv4Addr, Holder>,
    macs: BTreeMap<MacAddr, Holder>,
    /// The IPv6 halves. A VtepMAC is taken across both families: where the threads
    /// carry IPv6 (`--ipv6-dataplane userspace`), the TAP's neighbours and the one
    /// forwarding table map both families' MACs, so one node's IPv6 VtepMAC equal to
    /// another's IPv4 one would send one node's traffic to the other (on
    /// `flannel-v6.<VNI>` the two would not meet; flannel's MACs never collide).
    subnets6: BTreeMap<(u128, u8), (Subnet6, Holder)>,
    ips6: BTreeMap<Ipv6Addr, Holder>,
    macs6: BTreeMap<MacAddr, Holder>,
}

/// A conflict: the rejection, and whether it is with another lease (and so may change
/// when that lease does) or with this node.
type Conflict = (Rejection, bool);

impl Taken {
    fn new(local: LocalAddrs, own: Option<LeaseKey>) -> Taken {
        let mut taken = Taken::default();
        if let Some((ip, mac)) = local.0 {
            taken.ips.insert(ip, Holder::ThisNode);
            taken.macs.insert(mac, Holder::ThisNode);
        }
        if let Some((ip6, mac6)) = local.1 {
            taken.ips6.insert(ip6, Holder::ThisNode);
            taken.macs6.insert(mac6, Holder::ThisNode);
        }
        if let Some(s) = own.and_then(|k| k.ipv4_subnet()) {
            taken
                .subnets
                .insert((u32::from(s.addr()), s.prefix_len()), (s, Holder::ThisNode));
        }
        if let Some(s) = own.and_then(|k| k.ipv6_subnet()) {
            taken.subnets6.insert(
                (u128::from(s.addr()), s.prefix_len()),
                (s, Holder::ThisNode),
            );
        }
        taken
    }

    fn subnet6_containing(&self, ip: Ipv6Addr) -> Option<(Subnet6, &Holder)> {
        self.subnets6
            .range(..=(u128::from(ip), u8::MAX))
            .next_back()
            .map(|(_, (s, h))| (*s, h))
            .filter(|(s, _)| s.contains(ip))
    }

    fn overlapping6(&self, s: &Subnet6) -> Option<(Subnet6, &Holder)> {
        self.subnet6_containing(s.addr()).or_else(|| {
            self.subnets6
                .range((u128::from(s.addr()), 0)..=(u128::from(s.last()), u8::MAX))
                .next()
                .map(|(_, (s, h))| (*s, h))
        })
    }

    /// The conflicts of an IPv6 half, as [`Taken::conflict`] finds them for the
    /// IPv4 part.
    fn conflict6(&self, v6: &PeerIpv6) -> Option<(Rejection, &Holder)> {
        if let Some((s, h)) = self.overlapping6(&v6.subnet) {
            let why = match h {
                Holder::ThisNode => format!("IPv6 subnet {} is this node's own", v6.subnet),
                Holder::Lease(_) => format!(
                    "IPv6 subnet {} overlaps {s} of {h} (the lease created first wins)",
                    v6.subnet
                ),
            };
            return Some((Rejection::new(RejectReason::Overlap, why), h));
        }
        if let Some(h) = self.ips6.get(&v6.public_ipv6) {
            let why = match h {
                Holder::ThisNode => format!(
                    "PublicIPv6 {} is this node's, but this is not its lease (stale or forged)",
                    v6.public_ipv6
                ),
                Holder::Lease(_) => format!(
                    "PublicIPv6 {} is already claimed by {h} (the lease created first wins)",
                    v6.public_ipv6
                ),
            };
            return Some((Rejection::new(RejectReason::DuplicatePublicIp, why), h));
        }
        if let Some(h) = self
            .macs6
            .get(&v6.vtep_mac)
            .or_else(|| self.macs.get(&v6.vtep_mac))
        {
            let why = format!(
                "IPv6 VtepMAC {} is already used by {h} (the lease created first wins)",
                v6.vtep_mac
            );
            return Some((Rejection::new(RejectReason::DuplicateVtepMac, why), h));
        }
        if let Some((ip, h)) = self.ips6.range(v6.subnet.addr()..=v6.subnet.last()).next() {
            let why = format!(
                "IPv6 subnet {} contains the PublicIPv6 {ip} of {h}: a route for it would pull that node's VXLAN into the overlay",
                v6.subnet
            );
            return Some((Rejection::new(RejectReason::PublicIpInSubnet, why), h));
        }
        if let Some((s, h)) = self.subnet6_containing(v6.public_ipv6) {
            let why = format!(
                "PublicIPv6 {} lies inside IPv6 subnet {s} of {h}: its VXLAN would be routed into the overlay",
                v6.public_ipv6
            );
            return Some((Rejection::new(RejectReason::PublicIpInSubnet, why), h));
        }
        None
    }

    fn subnet_containing(&self, ip: Ipv4Addr) -> Option<(Subnet, &Holder)> {
        self.subnets
            .range(..=(u32::from(ip), u8::MAX))
            .next_back()
            .map(|(_, (s, h))| (*s, h))
            .filter(|(s, _)| s.contains(ip))
    }

    fn overlapping(&self, s: &Subnet) -> Option<(Subnet, &Holder)> {
        self.subnet_containing(s.addr()).or_else(|| {
            self.subnets
                .range((u32::from(s.addr()), 0)..=(u32::from(s.last()), u8::MAX))
                .next()
                .map(|(_, (s, h))| (*s, h))
        })
    }

    fn conflict(&self, holds: &Holds) -> Option<Conflict> {
        let with_lease = |h: &Holder| matches!(h, Holder::Lease(_));
        if let Some((subnet, public_ip, vtep_mac)) = holds.v4 {
            if let Some(c) = self.conflict4(subnet, public_ip, vtep_mac) {
                return Some(c);
            }
        }
        let v6 = holds.v6.as_ref()?;
        self.conflict6(v6).map(|(r, h)| (r, with_lease(h)))
    }

    /// The conflicts of an IPv4 part.
    fn conflict4(
        &self,
        subnet: Subnet,
        public_ip: Ipv4Addr,
        vtep_mac: MacAddr,
    ) -> Option<Conflict> {
        let with_lease = |h: &Holder| matches!(h, Holder::Lease(_));
        if let Some((s, h)) = self.overlapping(&subnet) {
            return Some((
                Rejection::new(
                    RejectReason::Overlap,
                    match h {
                        Holder::ThisNode => {
                            format!("subnet {} is this node's own subnet", subnet)
                        }
                        Holder::Lease(_) => format!(
                            "subnet {} overlaps {s} of {h} (the lease created first wins)",
                            subnet
                        ),
                    },
                ),
                with_lease(h),
            ));
        }
        if let Some(h) = self.ips.get(&public_ip) {
            return Some((
                Rejection::new(
                    RejectReason::DuplicatePublicIp,
                    match h {
                        Holder::ThisNode => format!(
                            "PublicIP {} is this node's, but this is not its lease (stale or forged)",
                            public_ip
                        ),
                        Holder::Lease(_) => format!(
                            "PublicIP {} is already claimed by {h} (the lease created first wins)",
                            public_ip
                        ),
                    },
                ),
                with_lease(h),
            ));
        }
        if let Some(h) = self
            .macs
            .get(&vtep_mac)
            .or_else(|| self.macs6.get(&vtep_mac))
        {
            return Some((
                Rejection::new(
                    RejectReason::DuplicateVtepMac,
                    format!(
                        "VtepMAC {} is already used by {h} (the lease created first wins)",
                        vtep_mac
                    ),
                ),
                with_lease(h),
            ));
        }
        if let Some((ip, h)) = self.ips.range(subnet.addr()..=subnet.last()).next() {
            return Some((
                Rejection::new(
                    RejectReason::PublicIpInSubnet,
                    format!(
                        "subnet {} contains the PublicIP {ip} of {h}: a route for it would pull that node's VXLAN into the overlay",
                        subnet
                    ),
                ),
                with_lease(h),
            ));
        }
        if let Some((s, h)) = self.subnet_containing(public_ip) {
            return Some((
                Rejection::new(
                    RejectReason::PublicIpInSubnet,
                    format!(
                        "PublicIP {} lies inside subnet {s} of {h}: its VXLAN would be routed into the overlay",
                        public_ip
                    ),
                ),
                with_lease(h),
            ));
        }
        None
    }

    fn take(&mut self, p: &Holds, key: &Arc<str>) {
        let h = || Holder::Lease(Arc::clone(key));
        if let Some((subnet, public_ip, vtep_mac)) = p.v4 {
            self.subnets.insert(
                (u32::from(subnet.addr()), subnet.prefix_len()),
                (subnet, h()),
            );
            self.ips.insert(public_ip, h());
            self.macs.insert(vtep_mac, h());
        }
        if let Some(v6) = &p.v6 {
            self.subnets6.insert(
                (u128::from(v6.subnet.addr()), v6.subnet.prefix_len()),
                (v6.subnet, h()),
            );
            self.ips6.insert(v6.public_ipv6, h());
            self.macs6.insert(v6.vtep_mac, h());
        }
    }

    /// Gives back what an accepted lease held.
    fn release(&mut self, p: &Holds) {
        if let Some((subnet, public_ip, vtep_mac)) = p.v4 {
            self.subnets
                .remove(&(u32::from(subnet.addr()), subnet.prefix_len()));
            self.ips.remove(&public_ip);
            self.macs.remove(&vtep_mac);
        }
        if let Some(v6) = &p.v6 {
            self.subnets6
                .remove(&(u128::from(v6.subnet.addr()), v6.subnet.prefix_len()));
            self.ips6.remove(&v6.public_ipv6);
            self.macs6.remove(&v6.vtep_mac);
        }
    }
}

/// A verdict, and for a conflict whether it was with another lease.
#[derive(Debug, Clone)]
struct Judged<P> {
    verdict: Verdict<P>,
    conflict: Option<bool>,
}

/// Whether a lease naming `owner` is this node's own.
fn is_own<P: PeerKind>(
    local: Option<P::Local>,
    own: Option<LeaseKey>,
    owner: Option<Owner>,
) -> bool {
    let mine = own.zip(local).and_then(|(o, l)| P::own_owner(o, &l));
    mine.is_some() && owner == mine
}

/// Judges one lease against what is taken (taking nothing).
fn judge<P: PeerKind>(
    local: Option<P::Local>,
    own: Option<LeaseKey>,
    k: &Known<P>,
    taken: &Taken,
) -> Judged<P> {
    if is_own::<P>(local, own, k.owner) {
        return Judged {
            verdict: Verdict::Own,
            conflict: None,
        };
    }
    match &k.alone {
        Err(r) => Judged {
            verdict: Verdict::Rejected(r.clone()),
            conflict: None,
        },
        Ok(p) => match taken.conflict(&p.holds()) {
            Some((r, with_lease)) => Judged {
                verdict: Verdict::Rejected(r),
                conflict: Some(with_lease),
            },
            None => Judged {
                verdict: Verdict::Peer(*p),
                conflict: None,
            },
        },
    }
}

type Judgement<P> = (BTreeMap<Arc<str>, Judged<P>>, Taken);

/// The conflict pass over every known lease: this node first, then by create
/// revision (ties, which only a multi-key transaction makes, by key).
fn resolve<P: PeerKind>(
    local: Option<P::Local>,
    own: Option<LeaseKey>,
    leases: &BTreeMap<Arc<str>, Known<P>>,
) -> Judgement<P> {
    let addrs = local.map_or((None, None), |l| P::local_addrs(&l));
    let mut taken = Taken::new(addrs, own);
    let mut order: Vec<(&Arc<str>, &Known<P>)> = leases.iter().collect();
    order.sort_by_key(|(_, k)| k.create_revision); // stable: key order within a revision
    let mut out = BTreeMap::new();
    for (key, k) in order {
        let j = judge(local, own, k, &taken);
        if let Verdict::Peer(p) = &j.verdict {
            taken.take(&p.holds(), key);
        }
        out.insert(Arc::clone(key), j);
    }
    (out, taken)
}

/// How the table did its judging, for tests and benchmarks that check that the work
/// per event does not grow with the number of leases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableWork {
    /// Full conflict passes (O(n log n) each): listings, a change of our own subnet,
    /// and events whose outcome may change other leases' verdicts.
    pub full_passes: u64,
    /// Events judged on their own (O(log n) each).
    pub single: u64,
}

/// See the module documentation.
///
/// Most events are judged on their own, in O(log n): a new lease (created after every
/// lease known, so judged last in the pass), a deletion, or a change of a lease, when no
/// other lease is rejected for a conflict (the only verdicts one lease's coming or
/// going can change). Anything else takes a full pass. Both give the same verdicts: the
/// property test below and the `peer_events` fuzz target compare every step with a
/// fresh judgement.
#[derive(Debug, Clone)]
pub struct PeerTable<P: PeerKind = Peer> {
    rules: P::Rules,
    local: Option<P::Local>,
    own: Option<LeaseKey>,
    leases: BTreeMap<Arc<str>, Known<P>>,
    verdicts: BTreeMap<Arc<str>, Verdict<P>>,
    peers: BTreeMap<P::Id, P>,
    /// What the accepted leases and this node hold now.
    taken: Taken,
    /// Keys rejected for a conflict with another lease, and with this node.
    against_lease: BTreeSet<Arc<str>>,
    against_node: BTreeSet<Arc<str>>,
    /// The highest create revision ever seen: a new key above it is judged last.
    newest: i64,
    /// Bumped whenever the set of rejected leases or their reasons change.
    rejections_generation: u64,
    /// The subnets the keys of `verdicts` name (the pools' usage).
    leased: LeasedSubnets,
    work: TableWork,
}

impl PeerTable<Peer> {
    /// The table of a network that carries IPv4 (dual stack too). `local`: this node
    /// (None for an outside view, as `vxmeshctl leases` has).
    pub fn new(rules: PeerRules, local: Option<LocalNode>) -> Self {
        PeerTable::with(rules, local)
    }
}

impl PeerTable<PeerIpv6> {
    /// The table of an IPv6-only network: leases are judged by their IPv6 half.
    pub fn ipv6_only(rules: Ipv6OnlyRules, local: Option<LocalNode6>) -> Self {
        PeerTable::with(rules, local)
    }
}

impl<P: PeerKind> PeerTable<P> {
    fn with(rules: P::Rules, local: Option<P::Local>) -> Self {
        PeerTable {
            rules,
            local,
            own: None,
            leases: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            peers: BTreeMap::new(),
            taken: Taken::new(local.map_or((None, None), |l| P::local_addrs(&l)), None),
            against_lease: BTreeSet::new(),
            against_node: BTreeSet::new(),
            newest: i64::MIN,
            rejections_generation: 0,
            leased: LeasedSubnets::default(),
            work: TableWork::default(),
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers.values()
    }

    /// This node, as the table judges leases against it.
    pub fn local(&self) -> Option<P::Local> {
        self.local
    }

    /// The peer that owns `subnet`, if any.
    pub fn peer(&self, subnet: &P::Id) -> Option<&P> {
        self.peers.get(subnet)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The verdict on every known key, by key.
    pub fn verdicts(&self) -> impl Iterator<Item = (&str, &Verdict<P>)> {
        self.verdicts.iter().map(|(k, v)| (&**k, v))
    }

    /// The leases rejected now, by key.
    pub fn rejected(&self) -> impl Iterator<Item = (&str, &Rejection)> {
        self.verdicts().filter_map(|(k, v)| match v {
            Verdict::Rejected(r) => Some((k, r)),
            _ => None,
        })
    }

    /// Why `key` is rejected now, if it is (one lookup, not a scan of every key).
    pub fn rejection(&self, key: &str) -> Option<&Rejection> {
        match self.verdicts.get(key) {
            Some(Verdict::Rejected(r)) => Some(r),
            _ => None,
        }
    }

    /// Whether `key` is rejected now for naming this node's PublicIP (or PublicIPv6)
    /// in a lease that is not this node's. That is also how the node's own new lease
    /// looks for the moment between its claim (the watch delivers it) and the lease
    /// task's report of it ([`PeerTable::set_own`] then judges it the node's own).
    pub fn names_this_node(&self, key: &str) -> bool {
        self.against_node.contains(key)
            && matches!(
                self.verdicts.get(key),
                Some(Verdict::Rejected(r)) if r.reason == RejectReason::DuplicatePublicIp
            )
    }

    /// Changes whenever [`PeerTable::rejected`] would list something else: a caller
    /// showing the rejections copies them only then.
    pub fn rejections_generation(&self) -> u64 {
        self.rejections_generation
    }

    /// The subnets every known key names, accepted or not: what the pools' usage
    /// counts (a key takes its subnet from the allocator whatever its value).
    pub fn leased(&self) -> &LeasedSubnets {
        &self.leased
    }

    /// How the events so far were judged.
    pub fn work(&self) -> TableWork {
        self.work
    }

    /// Sets our own lease (its lease is never a peer, and nothing may overlap either
    /// of its subnets).
    pub fn set_own(&mut self, own: Option<LeaseKey>, skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        self.own = own;
        self.rejudge(skips)
    }

    /// This node's PublicIP (or VTEP) changed: its old address is free for a peer to
    /// hold, and a peer already advertising the new one is judged again.
    /// This node's own key is read as naming the new address at once: the move puts
    /// it again so (a value someone else puts there instead is judged when it comes).
    pub fn set_local(
        &mut self,
        local: Option<P::Local>,
        skips: &mut Vec<Skip>,
    ) -> Vec<PeerChange<P>> {
        let owner = |l: Option<P::Local>| self.own.zip(l).and_then(|(o, l)| P::own_owner(o, &l));
        let (old, new) = (owner(self.local), owner(local));
        self.local = local;
        if let (Some(old), Some(new)) = (old, new) {
            for k in self.leases.values_mut() {
                if k.owner == Some(old) {
                    k.owner = Some(new);
                }
            }
        }
        self.rejudge(skips)
    }

    /// A lease was created or changed.
    pub fn put(&mut self, e: &Entry, skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        self.apply(std::iter::once(Update::Put(e)), skips)
    }

    /// A lease was deleted (or expired).
    pub fn delete(&mut self, key: &str, skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        self.apply(std::iter::once(Update::Delete(key)), skips)
    }

    /// Replaces everything known with a listing; returns the difference.
    pub fn reset(&mut self, entries: &[Entry], skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        self.apply(std::iter::once(Update::Reset(entries)), skips)
    }

    /// Applies several registry updates in order and returns their net effect on the
    /// peer set: a burst of watch events becomes one batch of changes (a peer added
    /// and removed within it is not reported at all). Removals come first, then
    /// updates, then additions, as in every batch.
    pub fn apply<'e>(
        &mut self,
        updates: impl IntoIterator<Item = Update<'e>>,
        skips: &mut Vec<Skip>,
    ) -> Vec<PeerChange<P>> {
        // The peer each touched subnet had before the batch.
        let mut before: BTreeMap<P::Id, Option<P>> = BTreeMap::new();
        for u in updates {
            let step = match u {
                Update::Put(e) => self.put_one(e, skips),
                Update::Delete(key) => self.delete_one(key, skips),
                Update::Reset(entries) => {
                    self.leases.clear();
                    for e in entries {
                        let k = Known::<P>::read(&self.rules, e);
                        self.newest = self.newest.max(k.create_revision);
                        self.leases.insert(Arc::from(e.key.as_str()), k);
                    }
                    self.rejudge(skips)
                }
            };
            for c in step {
                let (subnet, was) = match c {
                    PeerChange::Added(p) => (p.id(), None),
                    PeerChange::Updated { old, .. } => (old.id(), Some(old)),
                    PeerChange::Removed(p) => (p.id(), Some(p)),
                };
                before.entry(subnet).or_insert(was);
            }
        }
        let mut removed = Vec::new();
        let mut updated = Vec::new();
        let mut added = Vec::new();
        for (subnet, was) in before {
            match (was, self.peers.get(&subnet)) {
                (Some(old), None) => removed.push(PeerChange::Removed(old)),
                (Some(old), Some(new)) if old != *new => {
                    updated.push(PeerChange::Updated { old, new: *new })
                }
                (None, Some(new)) => added.push(PeerChange::Added(*new)),
                _ => {}
            }
        }
        removed.extend(updated);
        removed.extend(added);
        removed
    }

    fn put_one(&mut self, e: &Entry, skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        let known = Known::<P>::read(&self.rules, e);
        let existing = self.leases.get_key_value(e.key.as_str());
        if existing.is_some_and(|(_, old)| *old == known) {
            return Vec::new();
        }
        let key = existing.map_or_else(|| Arc::from(e.key.as_str()), |(k, _)| Arc::clone(k));
        let is_new = existing.is_none();
        let judged_last = is_new && known.create_revision > self.newest;
        self.newest = self.newest.max(known.create_revision);
        // Verdicts that depend on other leases, besides this key's own.
        let dependent = self.against_lease.len() + self.against_node.len()
            - usize::from(self.against_lease.contains(&key))
            - usize::from(self.against_node.contains(&key));
        if judged_last || dependent == 0 {
            if let Some(changes) = self.single(&key, &known, judged_last, skips) {
                self.leases.insert(key, known);
                return changes;
            }
        }
        self.leases.insert(key, known);
        self.rejudge(skips)
    }

    /// Judges `known` for `key` on its own, when that gives what a full pass would
    /// (see [`PeerTable`]); `None` when it cannot tell, with nothing changed.
    fn single(
        &mut self,
        key: &Arc<str>,
        known: &Known<P>,
        judged_last: bool,
        skips: &mut Vec<Skip>,
    ) -> Option<Vec<PeerChange<P>>> {
        let old_peer = match self.verdicts.get(key) {
            Some(Verdict::Peer(p)) => Some(*p),
            _ => None,
        };
        if let Some(p) = &old_peer {
            self.taken.release(&p.holds());
        }
        let j = judge(self.local, self.own, known, &self.taken);
        if j.conflict.is_some() && !judged_last {
            // A lease created later may lose to this one in a full pass.
            if let Some(p) = &old_peer {
                self.taken.take(&p.holds(), key);
            }
            return None;
        }
        self.work.single += 1;
        let mut changes = Vec::new();
        if let Some(p) = old_peer {
            self.peers.remove(&p.id());
            changes.push(PeerChange::Removed(p));
        }
        if let Verdict::Peer(p) = &j.verdict {
            self.taken.take(&p.holds(), key);
            if let Some(prev) = self.peers.insert(p.id(), *p) {
                // Cannot happen (the subnet was free in `taken`); keep the batch exact.
                changes.push(PeerChange::Removed(prev));
            }
            changes.push(PeerChange::Added(*p));
        }
        self.record(key, j, skips);
        // Removed + Added of one subnet is an update; `apply` nets them.
        Some(changes)
    }

    /// Stores a verdict reached on its own, reporting a new rejection once.
    fn record(&mut self, key: &Arc<str>, j: Judged<P>, skips: &mut Vec<Skip>) {
        self.against_lease.remove(key);
        self.against_node.remove(key);
        match j.conflict {
            Some(true) => {
                self.against_lease.insert(Arc::clone(key));
            }
            Some(false) => {
                self.against_node.insert(Arc::clone(key));
            }
            None => {}
        }
        let old = self.verdicts.insert(Arc::clone(key), j.verdict);
        if old.is_none() {
            self.leased.add_key(key);
        }
        let new = self.verdicts.get(key);
        if old.as_ref() != new {
            let was_rejected = matches!(old, Some(Verdict::Rejected(_)));
            if let Some(Verdict::Rejected(r)) = new {
                skips.push(Skip {
                    key: key.to_string(),
                    rejection: r.clone(),
                });
                self.rejections_generation += 1;
            } else if was_rejected {
                self.rejections_generation += 1;
            }
        }
    }

    fn delete_one(&mut self, key: &str, skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        if self.leases.remove(key).is_none() {
            return Vec::new();
        }
        match self.verdicts.get(key) {
            // A peer going can promote a lease rejected for conflicting with it.
            Some(Verdict::Peer(_)) if !self.against_lease.is_empty() => self.rejudge(skips),
            // Nothing else depends on it: it held nothing others were judged against
            // (or nobody conflicted with what it held).
            _ => {
                self.work.single += 1;
                self.against_lease.remove(key);
                self.against_node.remove(key);
                let mut changes = Vec::new();
                let gone = self.verdicts.remove(key);
                if gone.is_some() {
                    self.leased.remove_key(key);
                }
                match gone {
                    Some(Verdict::Peer(p)) => {
                        self.taken.release(&p.holds());
                        self.peers.remove(&p.id());
                        changes.push(PeerChange::Removed(p));
                    }
                    Some(Verdict::Rejected(_)) => self.rejections_generation += 1,
                    _ => {}
                }
                changes
            }
        }
    }

    fn rejudge(&mut self, skips: &mut Vec<Skip>) -> Vec<PeerChange<P>> {
        self.work.full_passes += 1;
        let (judged, taken) = resolve(self.local, self.own, &self.leases);
        let mut against_lease = BTreeSet::new();
        let mut against_node = BTreeSet::new();
        let mut verdicts = BTreeMap::new();
        for (key, j) in judged {
            if let Verdict::Rejected(r) = &j.verdict {
                if self.verdicts.get(&key) != Some(&j.verdict) {
                    skips.push(Skip {
                        key: key.to_string(),
                        rejection: r.clone(),
                    });
                }
            }
            match j.conflict {
                Some(true) => {
                    against_lease.insert(Arc::clone(&key));
                }
                Some(false) => {
                    against_node.insert(Arc::clone(&key));
                }
                None => {}
            }
            verdicts.insert(key, j.verdict);
        }
        let rejected = |v: &BTreeMap<Arc<str>, Verdict<P>>| -> Vec<(Arc<str>, Rejection)> {
            v.iter()
                .filter_map(|(k, v)| match v {
                    Verdict::Rejected(r) => Some((Arc::clone(k), r.clone())),
                    _ => None,
                })
                .collect()
        };
        if rejected(&self.verdicts) != rejected(&verdicts) {
            self.rejections_generation += 1;
        }
        let peers: BTreeMap<P::Id, P> = verdicts
            .values()
            .filter_map(|v| match v {
                Verdict::Peer(p) => Some((p.id(), *p)),
                _ => None,
            })
            .collect();
        let mut removed = Vec::new();
        let mut updated = Vec::new();
        let mut added = Vec::new();
        for (s, old) in &self.peers {
            match peers.get(s) {
                None => removed.push(PeerChange::Removed(*old)),
                Some(new) if new != old => updated.push(PeerChange::Updated {
                    old: *old,
                    new: *new,
                }),
                Some(_) => {}
            }
        }
        for (s, new) in &peers {
            if !self.peers.contains_key(s) {
                added.push(PeerChange::Added(*new));
            }
        }
        if !self.verdicts.keys().eq(verdicts.keys()) {
            self.leased = LeasedSubnets::from_keys(verdicts.keys().map(|k| &**k));
        }
        self.verdicts = verdicts;
        self.peers = peers;
        self.taken = taken;
        self.against_lease = against_lease;
        self.against_node = against_node;
        removed.extend(updated);
        removed.extend(added);
        removed
    }
}

/// One registry update for [`PeerTable::apply`].
#[derive(Debug, Clone, Copy)]
pub enum Update<'e> {
    Put(&'e Entry),
    Delete(&'e str),
    /// A full listing: replaces everything known.
    Reset(&'e [Entry]),
}

impl<'e> From<&'e crate::registry_events::WatchEvent> for Update<'e> {
    fn from(ev: &'e crate::registry_events::WatchEvent) -> Update<'e> {
        use crate::registry_events::WatchEvent;
        match ev {
            WatchEvent::Snapshot(l) => Update::Reset(&l.entries),
            WatchEvent::Put(e) => Update::Put(e),
            WatchEvent::Delete { key, .. } => Update::Delete(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/coreos.com/network/subnets/";

    /// The netns lab (scripts/lab.sh): Network 10.244.0.0/16, SubnetLen 24, VNI 1.
    fn lab_rules() -> PeerRules {
        let cfg = NetworkConfig::parse(
            "/coreos.com/network/config",
            br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        PeerRules::from_config(&cfg).unwrap()
    }

    // Lab node 3 (this node) at 192.168.100.13 holds 10.244.35.0/24; node 1 at .11
    // holds 10.244.94.0/24, node 2 at .12 holds 10.244.228.0/24.
    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 13);
    const MY_MAC: &str = "7e:7c:cc:c4:31:1e";

    fn me() -> LocalNode {
        LocalNode {
            public_ip: ME,
            vtep_mac: MY_MAC.parse().unwrap(),
            ipv6: None,
        }
    }

    fn val(ip: &str, mac: &str) -> Vec<u8> {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#).into_bytes()
    }

    fn entry(key: &str, value: Vec<u8>, created: i64) -> Entry {
        Entry {
            key: format!("{P}{key}"),
            value,
            create_revision: created,
            mod_revision: created,
            lease: 0x694d_8543_30fc_5110,
        }
    }

    fn n1(created: i64) -> Entry {
        entry(
            "10.244.94.0-24",
            val("192.168.100.11", "9a:da:93:19:2b:bd"),
            created,
        )
    }

    fn n2(created: i64) -> Entry {
        entry(
            "10.244.228.0-24",
            val("192.168.100.12", "72:cd:eb:99:b3:cf"),
            created,
        )
    }

    fn mine(created: i64) -> Entry {
        entry("10.244.35.0-24", val("192.168.100.13", MY_MAC), created)
    }

    /// Node 3's table holding its own subnet, fed the three nodes' leases.
    fn lab_table() -> PeerTable {
        let mut t = PeerTable::new(lab_rules(), Some(me()));
        let mut skips = vec![];
        assert!(t
            .set_own(LeaseKey::parse("10.244.35.0-24").ok(), &mut skips)
            .is_empty());
        let changes = t.reset(&[n1(2), n2(3), mine(4)], &mut skips);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(skips.is_empty(), "{skips:?}");
        t
    }

    #[test]
    fn a_moved_node_keeps_its_lease_and_frees_its_old_address() {
        // Node 3's underlay address moves from .13 to .23; its lease is put again
        // naming .23, and later a new node comes up on .13.
        let mut t = lab_table();
        let mut skips = vec![];
        let moved = LocalNode {
            public_ip: Ipv4Addr::new(192, 168, 100, 23),
            ..me()
        };
        let c = t.set_local(Some(moved), &mut skips);
        assert!(c.is_empty(), "{c:?} {skips:?}");
        let mine_moved = entry("10.244.35.0-24", val("192.168.100.23", MY_MAC), 5);
        assert!(
            t.put(&mine_moved, &mut skips).is_empty(),
            "its own lease, no peer"
        );
        assert_eq!(
            t.verdicts()
                .find(|(k, _)| k.ends_with("10.244.35.0-24"))
                .map(|(_, v)| v),
            Some(&Verdict::Own)
        );
        let newcomer = entry(
            "10.244.50.0-24",
            val("192.168.100.13", "0e:00:00:00:00:50"),
            6,
        );
        let c = t.put(&newcomer, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Added(p)] if p.public_ip == ME),
            "the old address is free for a peer: {c:?} {skips:?}"
        );
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(t.len(), 3);
    }

    /// The lab's dual-stack config (`VXLAB_IPV6=1`): IPv6Network fd00:10:244::/48 of
    /// /64s beside the IPv4 Network.
    fn dual_rules() -> PeerRules {
        let cfg = NetworkConfig::parse(
            "/coreos.com/network/config",
            br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        PeerRules::from_config(&cfg).unwrap()
    }

    const ME6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0x13);
    const MY_MAC6: &str = "4e:00:00:00:06:13";

    fn me_dual() -> LocalNode {
        LocalNode {
            ipv6: Some((ME6, MY_MAC6.parse().unwrap())),
            ..me()
        }
    }

    /// A dual-stack lease as flanneld writes it.
    fn dual_val(ip: &str, mac: &str, ip6: &str, mac6: &str) -> Vec<u8> {
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#).into_bytes()
    }

    /// Node 3 of the dual-stack lab, holding 10.244.35.0/24 and fd00:10:244:23::/64,
    /// with node 1 (dual stack) and node 2 (IPv4 only) as peers.
    fn dual_table() -> PeerTable {
        let mut t = PeerTable::new(dual_rules(), Some(me_dual()));
        let mut skips = vec![];
        let _ = t.set_own(
            LeaseKey::parse("10.244.35.0-24&fd00:10:244:23::-64").ok(),
            &mut skips,
        );
        let n1 = entry(
            "10.244.94.0-24&fd00:10:244:5e::-64",
            dual_val(
                "192.168.100.11",
                "9a:da:93:19:2b:bd",
                "fd00:64::11",
                "4e:2f:6c:01:7d:a2",
            ),
            2,
        );
        let mine = entry(
            "10.244.35.0-24&fd00:10:244:23::-64",
            dual_val("192.168.100.13", MY_MAC, "fd00:64::13", MY_MAC6),
            4,
        );
        let changes = t.reset(&[n1, n2(3), mine], &mut skips);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(skips.is_empty(), "{skips:?}");
        t
    }

    /// A lease's IPv6 half goes on `flannel-v6.<VNI>` as a route, a neighbour and an
    /// fdb entry, so it is judged as strictly as the IPv4 part: a forged half must
    /// not take this node's IPv6 pods, another node's, or the whole IPv6Network.
    #[test]
    fn ipv6_halves_are_judged_like_the_ipv4_part() {
        let cases: Vec<(Entry, RejectReason, &str)> = vec![
            (
                entry(
                    "10.244.40.0-24&fd00:10:245:1::-64",
                    dual_val("192.168.100.40", "0e:00:00:00:00:40", "fd00:64::40", "4e:00:00:00:06:40"),
                    10,
                ),
                RejectReason::OutsideNetwork,
                "IPv6 subnet fd00:10:245:1::/64 is not inside IPv6Network fd00:10:244::/48",
            ),
            (
                entry(
                    "10.244.41.0-24&fd00:10:244::-48",
                    dual_val("192.168.100.41", "0e:00:00:00:00:41", "fd00:64::41", "4e:00:00:00:06:41"),
                    11,
                ),
                RejectReason::WrongSubnetLen,
                "IPv6 subnet fd00:10:244::/48 is a /48, but IPv6Network fd00:10:244::/48 is cut into /64s",
            ),
            (
                entry(
                    "10.244.42.0-24&fd00:10:244:23::-64",
                    dual_val("192.168.100.42", "0e:00:00:00:00:42", "fd00:64::42", "4e:00:00:00:06:42"),
                    12,
                ),
                RejectReason::Overlap,
                "IPv6 subnet fd00:10:244:23::/64 is this node's own",
            ),
            (
                entry(
                    "10.244.43.0-24&fd00:10:244:5e::-64",
                    dual_val("192.168.100.43", "0e:00:00:00:00:43", "fd00:64::43", "4e:00:00:00:06:43"),
                    13,
                ),
                RejectReason::Overlap,
                "IPv6 subnet fd00:10:244:5e::/64 overlaps fd00:10:244:5e::/64 of /coreos.com/network/subnets/10.244.94.0-24&fd00:10:244:5e::-64, written earlier",
            ),
            (
                entry(
                    "10.244.44.0-24&fd00:10:244:2c::-64",
                    dual_val("192.168.100.44", "0e:00:00:00:00:44", "fd00:64::11", "4e:00:00:00:06:44"),
                    14,
                ),
                RejectReason::DuplicatePublicIp,
                "PublicIPv6 fd00:64::11 is already claimed by",
            ),
            (
                entry(
                    "10.244.45.0-24&fd00:10:244:2d::-64",
                    dual_val("192.168.100.45", "0e:00:00:00:00:45", "fd00:64::13", "4e:00:00:00:06:45"),
                    15,
                ),
                RejectReason::DuplicatePublicIp,
                "PublicIPv6 fd00:64::13 is this node's",
            ),
            (
                entry(
                    "10.244.46.0-24&fd00:10:244:2e::-64",
                    dual_val("192.168.100.46", "0e:00:00:00:00:46", "fd00:64::46", MY_MAC6),
                    16,
                ),
                RejectReason::DuplicateVtepMac,
                "IPv6 VtepMAC 4e:00:00:00:06:13 is already used by this node",
            ),
            (
                entry(
                    "10.244.47.0-24&fd00:10:244:2f::-64",
                    dual_val("192.168.100.47", "0e:00:00:00:00:47", "fd00:10:244:5e::7", "4e:00:00:00:06:47"),
                    17,
                ),
                RejectReason::PublicIpInSubnet,
                "PublicIPv6 fd00:10:244:5e::7 lies inside IPv6 subnet fd00:10:244:5e::/64",
            ),
            (
                entry(
                    "10.244.48.0-24&fd00:10:244:30::-64",
                    dual_val("192.168.100.48", "0e:00:00:00:00:48", "::1", "4e:00:00:00:06:48"),
                    18,
                ),
                // flannel's own decoder cannot read `::1` (it writes it dotted).
                RejectReason::Unparseable,
                "PublicIPv6 ::1 is an IPv4-compatible",
            ),
            (
                entry(
                    "10.244.49.0-24&fd00:10:244:31::-64",
                    dual_val("192.168.100.49", "0e:00:00:00:00:49", "ff02::1", "4e:00:00:00:06:49"),
                    19,
                ),
                RejectReason::BadPublicIp,
                "a multicast address",
            ),
            (
                entry(
                    "10.244.50.0-24&fd00:10:244:32::-64",
                    dual_val("192.168.100.50", "0e:00:00:00:00:50", "fe80::50", "4e:00:00:00:06:50"),
                    20,
                ),
                RejectReason::BadPublicIp,
                "a link-local address",
            ),
        ];
        let mut t = dual_table();
        put_each_rejected(&mut t, &cases);
        let mut skips = vec![];
        // An IPv6 VtepMAC equal to another node's IPv4 one is refused (the threads
        // carrying IPv6 map both families' MACs on one TAP and in one table); one the
        // same node's IPv4 half has is its own business.
        let shared = entry(
            "10.244.51.0-24&fd00:10:244:33::-64",
            dual_val(
                "192.168.100.51",
                "0e:00:00:00:00:51",
                "fd00:64::51",
                "9a:da:93:19:2b:bd",
            ),
            21,
        );
        let c = t.put(&shared, &mut skips);
        assert!(c.is_empty(), "{c:?}");
        let r = t.rejection(&shared.key).expect("rejected");
        assert_eq!(r.reason, RejectReason::DuplicateVtepMac, "{r:?}");
        assert!(r.why.contains("IPv6 VtepMAC 9a:da:93:19:2b:bd"), "{r:?}");
        let own = entry(
            "10.244.52.0-24&fd00:10:244:34::-64",
            dual_val(
                "192.168.100.52",
                "0e:00:00:00:00:52",
                "fd00:64::52",
                "0e:00:00:00:00:52",
            ),
            22,
        );
        let c = t.put(&own, &mut skips);
        assert!(
            matches!(c.as_slice(), [PeerChange::Added(p)] if p.ipv6.is_some()),
            "{c:?}"
        );
        // The first writer of an IPv6 subnet keeps it; the later one is promoted when
        // it goes.
        let first = "/coreos.com/network/subnets/10.244.94.0-24&fd00:10:244:5e::-64";
        let c = t.delete(first, &mut skips);
        assert!(
            c.contains(&PeerChange::Removed(Peer {
                subnet: "10.244.94.0/24".parse().unwrap(),
                public_ip: Ipv4Addr::new(192, 168, 100, 11),
                vtep_mac: "9a:da:93:19:2b:bd".parse().unwrap(),
                ipv6: Some(PeerIpv6 {
                    subnet: "fd00:10:244:5e::/64".parse().unwrap(),
                    public_ipv6: "fd00:64::11".parse().unwrap(),
                    vtep_mac: "4e:2f:6c:01:7d:a2".parse().unwrap(),
                }),
            })),
            "{c:?}"
        );
        assert!(
            t.peer(&"10.244.43.0/24".parse().unwrap()).is_some(),
            "{c:?}"
        );
        // A config that is not dual stack ignores IPv6 halves: no IPv6 device.
        let mut v4 = PeerTable::new(lab_rules(), Some(me()));
        let _ = v4.set_own(LeaseKey::parse("10.244.35.0-24").ok(), &mut skips);
        let mut skips = vec![];
        let readable: Vec<Entry> = cases
            .iter()
            .filter(|c| c.1 != RejectReason::Unparseable)
            .map(|c| c.0.clone())
            .collect();
        let _ = v4.reset(&readable, &mut skips);
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(v4.len(), readable.len());
        assert!(v4.peers().all(|p| p.ipv6.is_none()));
    }

    #[test]
    fn a_dual_stack_peer_works_for_ipv4_and_keeps_its_ipv6_half() {
        // Node 1 as a dual-stack flanneld writes it (key and value bytes).
        let dual = entry(
            "10.244.94.0-24&fd00:10:244:5e::-64",
            br#"{"PublicIP":"192.168.100.11","PublicIPv6":"fd00:64::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"9a:da:93:19:2b:bd"},"BackendV6Data":{"VNI":1,"VtepMAC":"4e:2f:6c:01:7d:a2"}}"#.to_vec(),
            2,
        );
        let mut t = PeerTable::new(dual_rules(), Some(me_dual()));
        let mut skips = vec![];
        let _ = t.set_own(LeaseKey::parse("10.244.35.0-24").ok(), &mut skips);
        let changes = t.reset(&[dual, n2(3), mine(4)], &mut skips);
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(changes.len(), 2);
        let p = *t.peer(&"10.244.94.0/24".parse().unwrap()).unwrap();
        // The IPv4 half exactly as from an IPv4 lease.
        assert_eq!(
            (p.public_ip, p.vtep_mac.to_string().as_str()),
            (Ipv4Addr::new(192, 168, 100, 11), "9a:da:93:19:2b:bd")
        );
        // The forwarding table's view: the IPv4 VTEP as from an IPv4 lease, and the
        // IPv6 one beside it (its VTEP address the subnet's first address).
        let v = p.to_vtep();
        assert_eq!(
            PeerVtep { v6: None, ..v },
            Peer { ipv6: None, ..p }.to_vtep()
        );
        assert_eq!(
            v.v6,
            Some(PeerVtep6 {
                vtep_mac: "4e:2f:6c:01:7d:a2".parse().unwrap(),
                public_ip: "fd00:64::11".parse().unwrap(),
                vtep_ip: "fd00:10:244:5e::".parse().unwrap(),
            })
        );
        assert_eq!(
            p.ipv6,
            Some(PeerIpv6 {
                subnet: "fd00:10:244:5e::/64".parse().unwrap(),
                public_ipv6: "fd00:64::11".parse().unwrap(),
                vtep_mac: "4e:2f:6c:01:7d:a2".parse().unwrap(),
            })
        );
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains(r#""ipv6":{"subnet":"fd00:10:244:5e::/64","public_ipv6":"fd00:64::11","vtep_mac":"4e:2f:6c:01:7d:a2"}"#),
            "{json}"
        );
        // An IPv4 peer has no IPv6 half, and shows none.
        let p2 = *t.peer(&"10.244.228.0/24".parse().unwrap()).unwrap();
        assert_eq!(p2.ipv6, None);
        assert!(!serde_json::to_string(&p2).unwrap().contains("ipv6"));
        // BackendV6Data of another VNI: the IPv4 half stays a peer, without an IPv6 half.
        let other_vni = entry(
            "10.244.94.0-24&fd00:10:244:5e::-64",
            br#"{"PublicIP":"192.168.100.11","PublicIPv6":"fd00:64::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"9a:da:93:19:2b:bd"},"BackendV6Data":{"VNI":2,"VtepMAC":"4e:2f:6c:01:7d:a2"}}"#.to_vec(),
            5,
        );
        let _ = t.put(&other_vni, &mut skips);
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(
            t.peer(&"10.244.94.0/24".parse().unwrap()).unwrap().ipv6,
            None
        );
    }

    fn peer_subnets(t: &PeerTable) -> Vec<String> {
        t.peers().map(|p| p.subnet.to_string()).collect()
    }

    fn rejected(t: &PeerTable, key: &str) -> Option<Rejection> {
        t.rejected()
            .find(|(k, _)| k.ends_with(&format!("/{key}")))
            .map(|(_, r)| r.clone())
    }

    /// Puts each case into `t`: each changes no peer, is rejected with its reason and
    /// words, warned about once; the lab's two peers stay.
    fn put_each_rejected(t: &mut PeerTable, cases: &[(Entry, RejectReason, &str)]) {
        let mut skips = vec![];
        for (e, reason, words) in cases {
            let c = t.put(e, &mut skips);
            assert!(c.is_empty(), "{}: {c:?}", e.key);
            let r = rejected(t, e.key.rsplit('/').next().unwrap())
                .unwrap_or_else(|| panic!("{} not rejected", e.key));
            assert_eq!(r.reason, *reason, "{}: {r}", e.key);
            assert!(r.why.contains(words), "{}: {r}", e.key);
        }
        assert_eq!(skips.len(), cases.len(), "one warning each: {skips:#?}");
        assert_eq!(peer_subnets(t), ["10.244.94.0/24", "10.244.228.0/24"]);
    }

    #[test]
    fn put_update_delete() {
        let mut t = lab_table();
        let mut skips = vec![];
        assert_eq!(peer_subnets(&t), ["10.244.94.0/24", "10.244.228.0/24"]);
        assert_eq!(
            t.verdicts()
                .find(|(k, _)| k.ends_with("10.244.35.0-24"))
                .map(|(_, v)| v),
            Some(&Verdict::Own)
        );
        assert!(t.put(&n2(3), &mut skips).is_empty(), "no-op put");
        let mut moved = n2(3);
        moved.value = val("192.168.100.12", "72:cd:eb:99:b3:00");
        let c = t.put(&moved, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Updated { old, new }] if old.vtep_mac != new.vtep_mac),
            "{c:?}"
        );
        let c = t.delete(&format!("{P}10.244.228.0-24"), &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Removed(p)] if p.vtep_ip() == Ipv4Addr::new(10, 244, 228, 0))
        );
        assert!(t
            .delete(&format!("{P}10.244.228.0-24"), &mut skips)
            .is_empty());
        assert_eq!(t.len(), 1);
        assert!(skips.is_empty());
    }

    /// Every hostile or broken key from issue 11, into node 3's table: each rejected
    /// for its reason, no route for any, and nodes 1 and 2 stay peers.
    #[test]
    fn every_reason_with_the_hostile_keys() {
        let good = |ip: &str, mac: &str| val(ip, mac);
        let cases: Vec<(Entry, RejectReason, &str)> = vec![
            (
                entry("garbage", good("192.168.100.50", "0e:00:00:00:00:50"), 10),
                RejectReason::BadKey,
                "not in flannel's form",
            ),
            // Other spellings of a subnet: flanneld would not read them as the same key.
            (
                entry("10.244.64.0-024", good("192.168.100.64", "0e:00:00:00:00:64"), 10),
                RejectReason::BadKey,
                "not in flannel's form",
            ),
            (
                entry("10.244.65.0-+24", good("192.168.100.65", "0e:00:00:00:00:65"), 10),
                RejectReason::BadKey,
                "not in flannel's form",
            ),
            // A misspelt IPv6 half is not silently dropped (the key is not an IPv4 one).
            (
                entry(
                    "10.244.66.0-24&FD00:0:0:42::-64",
                    good("192.168.100.66", "0e:00:00:00:00:66"),
                    10,
                ),
                RejectReason::BadKey,
                "not in flannel's form",
            ),
            (
                entry("10.244.60.0-24", vec![b' '; 5000], 11),
                RejectReason::TooLarge,
                "5000 bytes",
            ),
            (
                entry("10.244.61.0-24", b"not json".to_vec(), 12),
                RejectReason::Unparseable,
                "flannel's format",
            ),
            (
                entry(
                    "10.244.62.0-24",
                    br#"{"PublicIP":"192.168.100.62","PublicIPv6":null,"BackendType":"udp","BackendData":null}"#.to_vec(),
                    13,
                ),
                RejectReason::NotVxlan,
                "\"udp\"",
            ),
            // A flanneld IPv6-only node's lease, key and value as flannel writes them.
            (
                entry(
                    "0.0.0.0-0&fd00:0:0:62::-64",
                    br#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::62","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:62"}}"#.to_vec(),
                    13,
                ),
                RejectReason::Ipv6Only,
                "an IPv6-only lease (PublicIPv6 fd00::62",
            ),
            (
                entry(
                    "10.244.63.0-24",
                    br#"{"PublicIP":"192.168.100.63","BackendType":"vxlan","BackendData":{"VNI":2,"VtepMAC":"0e:00:00:00:00:63"}}"#.to_vec(),
                    14,
                ),
                RejectReason::WrongVni,
                "VNI 2",
            ),
            // A node's PublicIP as a /32: every node would route node 2's underlay
            // address into vxmesh0 (measured: cross-node traffic 6/6 → 2/6).
            (
                entry("192.168.100.12-32", good("192.168.100.70", "0e:00:00:00:00:70"), 15),
                RejectReason::OutsideNetwork,
                "192.168.100.12/32 is not inside Network 10.244.0.0/16",
            ),
            (
                entry("0.0.0.0-0", good("192.168.100.71", "0e:00:00:00:00:71"), 16),
                RejectReason::OutsideNetwork,
                "0.0.0.0/0 is not inside",
            ),
            (
                entry("10.245.1.0-24", good("192.168.100.72", "0e:00:00:00:00:72"), 17),
                RejectReason::OutsideNetwork,
                "10.245.1.0/24",
            ),
            (
                entry("10.244.0.0-16", good("192.168.100.73", "0e:00:00:00:00:73"), 18),
                RejectReason::WrongSubnetLen,
                "is a /16, but Network 10.244.0.0/16 is cut into /24s",
            ),
            (
                entry("10.244.94.128-25", good("192.168.100.74", "0e:00:00:00:00:74"), 19),
                RejectReason::WrongSubnetLen,
                "is a /25",
            ),
            // flannel's dual-stack key form names node 2's subnet again.
            (
                entry(
                    "10.244.228.0-24&fc00::-64",
                    good("192.168.100.75", "0e:00:00:00:00:75"),
                    20,
                ),
                RejectReason::Overlap,
                "overlaps 10.244.228.0/24 of /coreos.com/network/subnets/10.244.228.0-24, written earlier",
            ),
            (
                entry(
                    "10.244.35.0-24&fc00::-64",
                    good("192.168.100.76", "0e:00:00:00:00:76"),
                    21,
                ),
                RejectReason::Overlap,
                "this node's own subnet",
            ),
            (
                entry("10.244.80.0-24", good("192.168.100.12", "0e:00:00:00:00:80"), 22),
                RejectReason::DuplicatePublicIp,
                "PublicIP 192.168.100.12 is already claimed by /coreos.com/network/subnets/10.244.228.0-24",
            ),
            (
                entry("10.244.81.0-24", good("192.168.100.13", "0e:00:00:00:00:81"), 23),
                RejectReason::DuplicatePublicIp,
                "is this node's, but this is not its lease",
            ),
            (
                entry("10.244.82.0-24", good("192.168.100.82", "9a:da:93:19:2b:bd"), 24),
                RejectReason::DuplicateVtepMac,
                "VtepMAC 9a:da:93:19:2b:bd is already used by /coreos.com/network/subnets/10.244.94.0-24",
            ),
            (
                entry("10.244.83.0-24", good("192.168.100.83", MY_MAC), 25),
                RejectReason::DuplicateVtepMac,
                "this node",
            ),
            (
                entry("10.244.84.0-24", good("10.244.94.7", "0e:00:00:00:00:84"), 26),
                RejectReason::PublicIpInSubnet,
                "PublicIP 10.244.94.7 lies inside subnet 10.244.94.0/24",
            ),
            // VXLAN to these would stay on this node, reach a whole segment, or go
            // nowhere.
            (
                entry("10.244.85.0-24", good("127.0.0.1", "0e:00:00:00:00:85"), 27),
                RejectReason::BadPublicIp,
                "PublicIP 127.0.0.1 is a loopback address",
            ),
            (
                entry("10.244.86.0-24", good("224.0.0.251", "0e:00:00:00:00:86"), 28),
                RejectReason::BadPublicIp,
                "a multicast address",
            ),
            (
                entry("10.244.87.0-24", good("255.255.255.255", "0e:00:00:00:00:87"), 29),
                RejectReason::BadPublicIp,
                "the broadcast address",
            ),
            (
                entry("10.244.88.0-24", good("0.0.0.0", "0e:00:00:00:00:88"), 30),
                RejectReason::BadPublicIp,
                "in 0.0.0.0/8",
            ),
            (
                entry("10.244.89.0-24", good("240.0.0.1", "0e:00:00:00:00:89"), 31),
                RejectReason::BadPublicIp,
                "reserved 240.0.0.0/4",
            ),
        ];
        let mut t = lab_table();
        put_each_rejected(&mut t, &cases);
        let seen: std::collections::BTreeSet<_> = cases.iter().map(|c| c.1).collect();
        // `NoIpv6` is an IPv6-only network's (`ipv6_only_table_judges_ipv6_halves`).
        assert_eq!(
            seen.len(),
            RejectReason::ALL.len() - 1,
            "every reason covered"
        );
        assert!(!seen.contains(&RejectReason::NoIpv6));
        // The whole listing again: same verdicts, nothing new to warn about.
        let mut all: Vec<Entry> = cases.into_iter().map(|c| c.0).collect();
        all.extend([n1(2), n2(3), mine(4)]);
        let mut again = vec![];
        assert!(t.reset(&all, &mut again).is_empty());
        assert!(again.is_empty(), "{again:?}");
    }

    /// A Network that contains the underlay (a misconfiguration that happens): a lease
    /// whose subnet holds a node's PublicIP would route that node's VXLAN into itself.
    #[test]
    fn a_subnet_containing_a_public_ip_is_rejected() {
        let rules = PeerRules {
            network: "10.0.0.0/8".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            ipv6: None,
        };
        let local = LocalNode {
            public_ip: Ipv4Addr::new(10, 1, 0, 11),
            vtep_mac: "0e:00:00:00:01:11".parse().unwrap(),
            ipv6: None,
        };
        let mut t = PeerTable::new(rules, Some(local));
        let mut skips = vec![];
        let _ = t.set_own(LeaseKey::parse("10.200.1.0-24").ok(), &mut skips);
        let _ = t.reset(
            &[
                entry("10.200.2.0-24", val("10.1.0.12", "0e:00:00:00:01:12"), 5),
                entry("10.1.0.0-24", val("10.9.0.1", "0e:00:00:00:09:01"), 6),
                entry("10.2.0.0-24", val("10.9.0.2", "0e:00:00:00:09:02"), 7),
            ],
            &mut skips,
        );
        let r = rejected(&t, "10.1.0.0-24").unwrap();
        assert_eq!(r.reason, RejectReason::PublicIpInSubnet);
        // Both node 10.1.0.11 (this one) and 10.1.0.12 are in it; the lookup names one.
        assert!(
            r.why
                .contains("subnet 10.1.0.0/24 contains the PublicIP 10.1.0.11 of this node"),
            "{r}"
        );
        assert_eq!(peer_subnets(&t), ["10.2.0.0/24", "10.200.2.0/24"]);
    }

    #[test]
    fn the_first_writer_wins_and_the_next_is_promoted_when_it_goes() {
        let mut t = lab_table();
        let mut skips = vec![];
        // Created before node 2's lease (revision 3), though its key sorts after.
        let twin = entry(
            "10.244.9.0-24",
            val("192.168.100.12", "0e:00:00:00:00:09"),
            1,
        );
        let c = t.put(&twin, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Removed(old), PeerChange::Added(new)]
                if old.subnet.to_string() == "10.244.228.0/24" && new.subnet.to_string() == "10.244.9.0/24"),
            "{c:?}"
        );
        assert_eq!(
            rejected(&t, "10.244.228.0-24").unwrap().reason,
            RejectReason::DuplicatePublicIp
        );
        // The keyed lookup says the same as the scan, for the rejected key and the
        // peer's, and knows no key it never saw.
        let loser = format!("{P}10.244.228.0-24");
        assert_eq!(
            t.rejection(&loser).map(|r| r.reason),
            Some(RejectReason::DuplicatePublicIp)
        );
        assert_eq!(t.rejection(&twin.key), None);
        assert_eq!(t.rejection(&format!("{P}10.244.77.0-24")), None);
        // The earlier one goes: node 2's lease becomes a peer again.
        let c = t.delete(&twin.key, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Removed(old), PeerChange::Added(new)]
                if old.subnet.to_string() == "10.244.9.0/24" && new.subnet.to_string() == "10.244.228.0/24"),
            "{c:?}"
        );
        assert_eq!(t.rejected().count(), 0);
        assert_eq!(t.rejection(&loser), None);
        // A later duplicate of node 1's subnet under the dual-stack key: rejected,
        // promoted when node 1's own key goes.
        let dup = entry(
            "10.244.94.0-24&fc00::-64",
            val("192.168.100.91", "0e:00:00:00:00:91"),
            30,
        );
        assert!(t.put(&dup, &mut skips).is_empty());
        let c = t.delete(&n1(2).key, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Updated { old, new }]
                if old.public_ip == Ipv4Addr::new(192, 168, 100, 11) && new.public_ip == Ipv4Addr::new(192, 168, 100, 91)),
            "{c:?}"
        );
    }

    #[test]
    fn our_own_lease_wins_even_when_created_later() {
        let mut t = PeerTable::new(lab_rules(), Some(me()));
        let mut skips = vec![];
        let _ = t.set_own(LeaseKey::parse("10.244.35.0-24").ok(), &mut skips);
        // Someone else's lease on our subnet, created before ours.
        let squatter = entry(
            "10.244.35.0-24&fc00::-64",
            val("192.168.100.99", "0e:00:00:00:00:99"),
            1,
        );
        let c = t.reset(&[squatter, mine(4), n1(2)], &mut skips);
        assert_eq!(c.len(), 1, "only node 1: {c:?}");
        assert_eq!(
            rejected(&t, "10.244.35.0-24&fc00::-64").unwrap().reason,
            RejectReason::Overlap
        );
        // Our key overwritten by another node: not a peer (own_key reports the loss).
        let mut taken = mine(4);
        taken.value = val("192.168.100.12", "72:cd:eb:99:b3:cf");
        let c = t.put(&taken, &mut skips);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(
            rejected(&t, "10.244.35.0-24").unwrap().reason,
            RejectReason::Overlap
        );
        // Our subnet changes: the old key is someone else's business now.
        let c = t.set_own(LeaseKey::parse("10.244.36.0-24").ok(), &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Added(p)] if p.subnet.to_string() == "10.244.35.0/24"),
            "{c:?}"
        );
    }

    #[test]
    fn our_new_lease_seen_before_it_is_reported_names_this_node() {
        let mut t = lab_table();
        let mut skips = vec![];
        // Lost to another node and re-acquired elsewhere: the watch delivers the new
        // key before the lease task reports it.
        let fresh = entry("10.244.77.0-24", val("192.168.100.13", MY_MAC), 9);
        let key = fresh.key.clone();
        let c = t.put(&fresh, &mut skips);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(skips.len(), 1, "{skips:?}");
        assert_eq!(skips[0].rejection.reason, RejectReason::DuplicatePublicIp);
        assert!(t.names_this_node(&key), "held back by the agent");
        // Reported: it is the node's own, no longer rejected.
        let _ = t.set_own(LeaseKey::parse("10.244.77.0-24").ok(), &mut skips);
        assert!(!t.names_this_node(&key));
        assert!(rejected(&t, "10.244.77.0-24").is_none());
        // Another node's PublicIP claimed twice, or a subnet overlapping ours: warned
        // about at once.
        let twice = entry(
            "10.244.78.0-24",
            val("192.168.100.11", "0e:00:00:00:00:78"),
            10,
        );
        let _ = t.put(&twice, &mut skips);
        assert_eq!(
            rejected(&t, "10.244.78.0-24").unwrap().reason,
            RejectReason::DuplicatePublicIp
        );
        assert!(!t.names_this_node(&twice.key));
        let inside = entry(
            "10.244.77.128-25",
            val("192.168.100.50", "0e:00:00:00:00:50"),
            11,
        );
        let _ = t.put(&inside, &mut skips);
        assert!(!t.names_this_node(&inside.key));
    }

    #[test]
    fn rejections_are_reported_once_per_reason() {
        let mut t = lab_table();
        let mut skips = vec![];
        let udp =
            br#"{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"udp","BackendData":null}"#;
        for _ in 0..3 {
            let _ = t.put(&entry("10.244.3.0-24", udp.to_vec(), 40), &mut skips);
            let _ = t.put(&entry("10.244.4.0-24", b"garbage".to_vec(), 41), &mut skips);
        }
        let _ = t.reset(
            &[
                n1(2),
                n2(3),
                mine(4),
                entry("10.244.3.0-24", udp.to_vec(), 40),
                entry("10.244.4.0-24", b"garbage".to_vec(), 41),
            ],
            &mut skips,
        );
        assert_eq!(skips.len(), 2, "{skips:?}");
        assert!(skips[0].rejection.why.contains("udp"));
        // A new reason is a new warning; accepted and rejected again, too.
        let _ = t.put(
            &entry(
                "10.244.4.0-24",
                val("192.168.100.12", "0e:00:00:00:00:04"),
                41,
            ),
            &mut skips,
        );
        assert_eq!(skips.len(), 3);
        assert_eq!(skips[2].rejection.reason, RejectReason::DuplicatePublicIp);
        let _ = t.put(
            &entry(
                "10.244.4.0-24",
                val("192.168.100.4", "0e:00:00:00:00:04"),
                41,
            ),
            &mut skips,
        );
        let _ = t.put(&entry("10.244.4.0-24", b"garbage".to_vec(), 41), &mut skips);
        assert_eq!(skips.len(), 4);
        assert_eq!(t.rejected().count(), 2);
    }

    #[test]
    fn a_value_turning_bad_removes_the_peer() {
        let mut t = lab_table();
        let mut skips = vec![];
        let mut bad = n2(3);
        bad.value = b"{}".to_vec();
        assert!(matches!(
            &t.put(&bad, &mut skips)[..],
            [PeerChange::Removed(_)]
        ));
        assert_eq!(skips.len(), 1);
    }

    #[test]
    fn reset_diffs() {
        let mut t = lab_table();
        let mut skips = vec![];
        let mut n2_moved = n2(3);
        n2_moved.value = val("192.168.100.22", "72:cd:eb:99:b3:cf");
        let changes = t.reset(
            &[
                n2_moved,
                mine(4),
                entry(
                    "10.244.4.0-24&fc00::-64",
                    val("192.168.100.14", "0e:00:00:00:00:04"),
                    9,
                ),
            ],
            &mut skips,
        );
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(
            matches!(&changes[0], PeerChange::Removed(p) if p.public_ip == Ipv4Addr::new(192, 168, 100, 11))
        );
        assert!(
            matches!(&changes[1], PeerChange::Updated { new, .. } if new.public_ip == Ipv4Addr::new(192, 168, 100, 22))
        );
        assert!(
            matches!(&changes[2], PeerChange::Added(p) if p.subnet == "10.244.4.0/24".parse().unwrap())
        );
    }

    #[test]
    fn an_outside_view_judges_without_a_node() {
        // vxmeshctl leases: no local node, no own subnet; node 3's lease is a peer.
        let mut t = PeerTable::new(lab_rules(), None);
        let mut skips = vec![];
        let dup = entry(
            "10.244.50.0-24",
            val("192.168.100.13", "0e:00:00:00:00:50"),
            9,
        );
        let _ = t.reset(&[n1(2), n2(3), mine(4), dup], &mut skips);
        assert_eq!(t.len(), 3);
        assert_eq!(
            rejected(&t, "10.244.50.0-24").unwrap().reason,
            RejectReason::DuplicatePublicIp
        );
    }

    /// A node joining a cluster of n: its lease, judged on its own — no full pass,
    /// whatever n is (the pass over every lease was the per-event cost that grew with
    /// the cluster). Deletions and changes are judged on their own too while no lease
    /// is rejected for a conflict.
    #[test]
    fn events_are_judged_alone() {
        let rules = PeerRules {
            network: "10.0.0.0/8".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            ipv6: None,
        };
        let node = |i: u32| {
            entry(
                &format!("10.{}.{}.0-24", i / 250 + 1, i % 250),
                val(
                    &format!("172.20.{}.{}", i / 250, i % 250 + 1),
                    &format!("0e:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
                ),
                i64::from(i) + 10,
            )
        };
        let mut t = PeerTable::new(rules, Some(me()));
        let mut skips = vec![];
        let _ = t.set_own(LeaseKey::parse("10.200.0.0-24").ok(), &mut skips);
        let _ = t.reset(&[], &mut skips);
        let base = t.work();
        assert_eq!(base.full_passes, 2);
        for i in 0..2000 {
            let c = t.put(&node(i), &mut skips);
            assert!(matches!(&c[..], [PeerChange::Added(_)]), "{i}: {c:?}");
        }
        assert_eq!(t.len(), 2000);
        for i in (0..2000).step_by(2) {
            let c = t.delete(&node(i).key, &mut skips);
            assert!(matches!(&c[..], [PeerChange::Removed(_)]), "{i}: {c:?}");
        }
        for i in (1..200).step_by(2) {
            let mut moved = node(i);
            moved.value = val(
                &format!("172.21.{}.{}", i / 250, i % 250 + 1),
                &format!("0e:00:00:01:{:02x}:{:02x}", i / 256, i % 256),
            );
            let c = t.put(&moved, &mut skips);
            assert!(matches!(&c[..], [PeerChange::Updated { .. }]), "{i}: {c:?}");
        }
        let w = t.work();
        assert_eq!(w.full_passes, base.full_passes, "no full pass: {w:?}");
        assert_eq!(w.single, 2000 + 1000 + 100);
        assert!(skips.is_empty());
        // A lease rejected for a conflict with another: while it is there, the
        // winner's going needs a full pass (the loser is promoted).
        let dup = entry(
            "10.250.1.0-24",
            val("172.21.0.2", "0e:00:00:00:ff:01"), // node 1's PublicIP (since it moved)
            100_000,
        );
        assert!(t.put(&dup, &mut skips).is_empty());
        assert_eq!(skips.len(), 1);
        assert_eq!(
            t.work().full_passes,
            base.full_passes,
            "a new lease is still alone"
        );
        let c = t.delete(&node(1).key, &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Removed(a), PeerChange::Added(b)] if a.public_ip == b.public_ip),
            "{c:?}"
        );
        assert_eq!(t.work().full_passes, base.full_passes + 1);
    }

    /// A burst of events is one batch of net changes.
    #[test]
    fn a_burst_nets_out() {
        use crate::registry_events::{Listing, WatchEvent};
        let mut t = lab_table();
        let mut skips = vec![];
        let n4 = entry(
            "10.244.4.0-24",
            val("192.168.100.14", "0e:00:00:00:00:14"),
            10,
        );
        let n5 = entry(
            "10.244.5.0-24",
            val("192.168.100.15", "0e:00:00:00:00:15"),
            11,
        );
        let mut n5b = n5.clone();
        n5b.value = val("192.168.100.25", "0e:00:00:00:00:15");
        let burst = [
            WatchEvent::Put(n4.clone()),
            WatchEvent::Put(n5.clone()),
            WatchEvent::Delete {
                key: n4.key.clone(),
                revision: 12,
            },
            WatchEvent::Put(n5b.clone()),
            // node 2 goes and comes back unchanged: nothing to do for it
            WatchEvent::Delete {
                key: n2(3).key,
                revision: 13,
            },
            WatchEvent::Put(n2(3)),
        ];
        let c = t.apply(burst.iter().map(Update::from), &mut skips);
        assert!(
            matches!(&c[..], [PeerChange::Added(p)] if p.public_ip == Ipv4Addr::new(192, 168, 100, 25)),
            "{c:?}"
        );
        // A listing within a burst: the net change against the state before the burst.
        let listing = WatchEvent::Snapshot(Listing {
            revision: 20,
            entries: vec![n1(2), mine(4), n5b.clone()],
        });
        let burst = [
            WatchEvent::Put(n4.clone()),
            listing,
            WatchEvent::Delete {
                key: n5b.key.clone(),
                revision: 21,
            },
        ];
        let c = t.apply(burst.iter().map(Update::from), &mut skips);
        assert_eq!(
            c.iter()
                .map(|c| match c {
                    PeerChange::Removed(p) => format!("-{}", p.subnet),
                    PeerChange::Added(p) => format!("+{}", p.subnet),
                    PeerChange::Updated { new, .. } => format!("~{}", new.subnet),
                })
                .collect::<Vec<_>>(),
            ["-10.244.5.0/24", "-10.244.228.0/24"]
        );
        assert!(skips.is_empty());
    }

    /// One op of the property tests: put, delete or list; key, PublicIP, VtepMAC,
    /// VNI and IPv6 half chosen from small sets so that conflicts are frequent.
    type Op = (u8, usize, u8, u8, u8, u8, i64);

    /// The invariants below, on an IPv4 table (`dual` false: IPv6 halves ignored) or
    /// a dual-stack one (node 3 of the dual-stack lab).
    fn check_invariants(
        ops: Vec<Op>,
        dual: bool,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        const KEYS: [&str; 8] = [
            "10.244.1.0-24",
            "10.244.2.0-24",
            "10.244.1.0-24&fd00:10:244:1::-64",
            "10.244.35.0-24",
            "10.244.0.0-16",
            "10.244.2.128-25",
            "10.244.3.0-24&fd00:10:244:23::-64",
            "10.244.4.0-24&fd00:10:244::-60",
        ];
        let ips = [
            "192.168.100.11",
            "192.168.100.12",
            "192.168.100.13",
            "10.244.1.9",
            "10.244.2.7",
            "192.168.100.14",
        ];
        let macs = [
            "0e:00:00:00:00:01",
            "0e:00:00:00:00:02",
            MY_MAC,
            "0e:00:00:00:00:04",
        ];
        let ips6 = ["fd00:64::11", "fd00:64::13", "fd00:10:244:1::9", "fe80::1"];
        let macs6 = [
            "4e:00:00:00:06:01",
            MY_MAC6,
            "0e:00:00:00:00:01",
            "4e:00:00:00:06:04",
        ];
        let (rules, local, own) = if dual {
            (
                dual_rules(),
                me_dual(),
                "10.244.35.0-24&fd00:10:244:23::-64",
            )
        } else {
            (lab_rules(), me(), "10.244.35.0-24")
        };
        let new_table = || {
            let mut t = PeerTable::new(rules, Some(local));
            let _ = t.set_own(LeaseKey::parse(own).ok(), &mut vec![]);
            t
        };
        let mut t = new_table();
        let mut skips = vec![];
        let mut known: BTreeMap<String, Entry> = [n1(2), n2(3), mine(4)]
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        let all: Vec<Entry> = known.values().cloned().collect();
        let _ = t.reset(&all, &mut skips);
        let mut shown: crate::state::StatusPeers = t.peers().copied().collect();
        for (op, k, ip, mac, vni, v6, rev) in ops {
            let half = match v6 {
                0 => String::new(),
                n => format!(
                    r#","PublicIPv6":"{}","BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}"#,
                    ips6[usize::from(n % 4)],
                    macs6[usize::from(n / 2 % 4)]
                ),
            };
            let e = entry(KEYS[k], format!(r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":{},"VtepMAC":"{}"}}{half}}}"#, ips[usize::from(ip)], 1 + vni / 3, macs[usize::from(mac)]).into_bytes(), rev);
            let changes = match op {
                0 => {
                    known.insert(e.key.clone(), e.clone());
                    t.put(&e, &mut skips)
                }
                1 => {
                    known.remove(&e.key);
                    t.delete(&e.key, &mut skips)
                }
                _ => {
                    let all: Vec<Entry> = known.values().cloned().collect();
                    t.reset(&all, &mut skips)
                }
            };
            shown.apply(&changes);
            // Now and then the same event again together with a deletion, as a burst.
            if rev % 7 == 0 {
                let other = format!("{P}{}", KEYS[(k + 1) % KEYS.len()]);
                let burst = [Update::Put(&e), Update::Delete(&other)];
                known.insert(e.key.clone(), e.clone());
                known.remove(&other);
                shown.apply(&t.apply(burst, &mut skips));
            }
            // The status's peers, changed batch by batch, are the table's.
            proptest::prop_assert_eq!(
                shown.iter().collect::<Vec<_>>(),
                t.peers().collect::<Vec<_>>()
            );
            let peers: Vec<Peer> = t.peers().copied().collect();
            for (i, a) in peers.iter().enumerate() {
                proptest::prop_assert!(rules.network.contains_subnet(&a.subnet));
                proptest::prop_assert_eq!(a.subnet.prefix_len(), 24);
                proptest::prop_assert_ne!(a.subnet.to_string(), "10.244.35.0/24");
                proptest::prop_assert_ne!(a.public_ip, ME);
                proptest::prop_assert!(dual || a.ipv6.is_none());
                if let Some(a6) = a.ipv6 {
                    let r6 = rules.ipv6.unwrap();
                    proptest::prop_assert!(
                        r6.network.contains_subnet(&a6.subnet) && a6.subnet.prefix_len() == 64
                    );
                    proptest::prop_assert_ne!(a6.subnet.to_string(), "fd00:10:244:23::/64");
                    proptest::prop_assert_ne!(a6.public_ipv6, ME6);
                    proptest::prop_assert_ne!(a6.vtep_mac.to_string(), MY_MAC6);
                    proptest::prop_assert!(unusable_public_ipv6(a6.public_ipv6).is_none());
                }
                for b in &peers[i + 1..] {
                    proptest::prop_assert!(
                        !a.subnet.contains(b.subnet.addr()) && !b.subnet.contains(a.subnet.addr())
                    );
                    proptest::prop_assert_ne!(a.public_ip, b.public_ip);
                    proptest::prop_assert_ne!(a.vtep_mac, b.vtep_mac);
                    proptest::prop_assert!(
                        !a.subnet.contains(b.public_ip) && !b.subnet.contains(a.public_ip)
                    );
                    if let (Some(a6), Some(b6)) = (a.ipv6, b.ipv6) {
                        proptest::prop_assert!(!a6.subnet.overlaps(&b6.subnet));
                        proptest::prop_assert_ne!(a6.public_ipv6, b6.public_ipv6);
                        proptest::prop_assert_ne!(a6.vtep_mac, b6.vtep_mac);
                        proptest::prop_assert!(
                            !a6.subnet.contains(b6.public_ipv6)
                                && !b6.subnet.contains(a6.public_ipv6)
                        );
                    }
                }
            }
            let mut fresh = new_table();
            let all: Vec<Entry> = known.values().cloned().collect();
            let _ = fresh.reset(&all, &mut vec![]);
            proptest::prop_assert_eq!(
                fresh.peers().collect::<Vec<_>>(),
                t.peers().collect::<Vec<_>>()
            );
            // Not only the peers: every verdict, reasons and messages included.
            proptest::prop_assert_eq!(
                fresh.verdicts().collect::<Vec<_>>(),
                t.verdicts().collect::<Vec<_>>()
            );
            // The subnets kept for the pools' usage, as counted from the keys afresh.
            proptest::prop_assert_eq!(
                t.leased(),
                &LeasedSubnets::from_keys(t.verdicts().map(|(k, _)| k))
            );
            proptest::prop_assert_eq!(fresh.leased(), t.leased());
        }
        Ok(())
    }

    /// An IPv6-only network: `fd00:10:244::/48` cut into /64s, VNI 1.
    fn v6_only_rules() -> Ipv6OnlyRules {
        let cfg = NetworkConfig::parse(
            "/coreos.com/network/config",
            br#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(PeerRules::from_config(&cfg).is_none());
        Ipv6OnlyRules::from_config(&cfg).unwrap()
    }

    fn me6() -> LocalNode6 {
        LocalNode6 {
            public_ipv6: ME6,
            vtep_mac: MY_MAC6.parse().unwrap(),
        }
    }

    /// An IPv6-only lease as flannel writes it (PublicIP `0.0.0.0`, no BackendData).
    fn v6_val(ip6: &str, mac6: &str, vni: u32) -> Vec<u8> {
        format!(r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendV6Data":{{"VNI":{vni},"VtepMAC":"{mac6}"}}}}"#).into_bytes()
    }

    const MY_KEY6: &str = "0.0.0.0-0&fd00:10:244:23::-64";

    /// On an IPv6-only network a lease is judged by its IPv6 half, as strictly as an
    /// IPv4 lease is: this node's own lease (known by PublicIPv6, never by flannel's
    /// `0.0.0.0`), peers, and every reason a lease cannot be one.
    #[test]
    fn ipv6_only_table_judges_ipv6_halves() {
        let mut t = PeerTable::ipv6_only(v6_only_rules(), Some(me6()));
        let mut skips = vec![];
        let _ = t.set_own(LeaseKey::parse(MY_KEY6).ok(), &mut skips);
        let peer1 = entry(
            "0.0.0.0-0&fd00:10:244:5e::-64",
            v6_val("fd00:64::11", "4e:2f:6c:01:7d:a2", 1),
            2,
        );
        // A dual-stack node not yet switched: its IPv6 half is reachable.
        let dual = entry(
            "10.244.7.0-24&fd00:10:244:7::-64",
            dual_val(
                "192.168.100.12",
                "0e:00:00:00:00:12",
                "fd00:64::12",
                "4e:00:00:00:06:12",
            ),
            3,
        );
        let mine = entry(MY_KEY6, v6_val("fd00:64::13", MY_MAC6, 1), 4);
        let changes = t.reset(&[peer1, dual, mine], &mut skips);
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(changes.len(), 2, "{changes:?}");
        let subnets: Vec<String> = t.peers().map(|p| p.subnet.to_string()).collect();
        assert_eq!(subnets, ["fd00:10:244:7::/64", "fd00:10:244:5e::/64"]);
        assert_eq!(
            t.verdicts()
                .find(|(k, _)| k.ends_with(MY_KEY6))
                .map(|(_, v)| v),
            Some(&Verdict::Own)
        );
        let cases: Vec<(Entry, RejectReason, &str)> = vec![
            (entry("0.0.0.0-0", v6_val("fd00:64::20", "4e:00:00:00:06:20", 1), 10), RejectReason::BadKey, "not in flannel's form"),
            (entry("0.0.0.0-0&FD00:10:244:21::-64", v6_val("fd00:64::21", "4e:00:00:00:06:21", 1), 10), RejectReason::BadKey, "not in flannel's form"),
            (entry("0.0.0.0-0&fd00:10:244:22::-64", vec![b' '; 5000], 11), RejectReason::TooLarge, "5000 bytes"),
            (entry("0.0.0.0-0&fd00:10:244:24::-64", b"[]".to_vec(), 11), RejectReason::Unparseable, "flannel's format"),
            (entry("10.244.9.0-24", val("192.168.100.19", "0e:00:00:00:00:19"), 12), RejectReason::NoIpv6, "IPv4 backend data only"),
            (entry("0.0.0.0-0&fd00:10:244:25::-64", br#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:64::25","BackendType":"host-gw"}"#.to_vec(), 12), RejectReason::NotVxlan, "\"host-gw\" is not vxlan"),
            (entry("0.0.0.0-0&fd00:10:244:26::-64", v6_val("fd00:64::26", "4e:00:00:00:06:26", 2), 13), RejectReason::WrongVni, "VNI 2 differs"),
            (entry("0.0.0.0-0&fd00:99::-64", v6_val("fd00:64::27", "4e:00:00:00:06:27", 1), 14), RejectReason::OutsideNetwork, "not inside IPv6Network fd00:10:244::/48"),
            (entry("0.0.0.0-0&fd00:10:244:28::-80", v6_val("fd00:64::28", "4e:00:00:00:06:28", 1), 15), RejectReason::WrongSubnetLen, "is a /80"),
            (entry("0.0.0.0-0&fd00:10:244:29::-64", v6_val("fe80::29", "4e:00:00:00:06:29", 1), 16), RejectReason::BadPublicIp, "link-local"),
            (entry("0.0.0.0-0&fd00:10:244:2a::-64", br#"{"PublicIP":"0.0.0.0","PublicIPv6":null,"BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"4e:00:00:00:06:2a"}}"#.to_vec(), 17), RejectReason::NoIpv6, "no PublicIPv6"),
            // This node's PublicIPv6 in a key that is not its own: stale or forged.
            (entry("0.0.0.0-0&fd00:10:244:2b::-64", v6_val("fd00:64::13", "4e:00:00:00:06:2b", 1), 18), RejectReason::DuplicatePublicIp, "PublicIPv6 fd00:64::13 is this node's"),
            (entry("0.0.0.0-0&fd00:10:244:2c::-64", v6_val("fd00:64::11", "4e:00:00:00:06:2c", 1), 19), RejectReason::DuplicatePublicIp, "already claimed"),
            (entry("0.0.0.0-0&fd00:10:244:2d::-64", v6_val("fd00:64::2d", "4e:2f:6c:01:7d:a2", 1), 20), RejectReason::DuplicateVtepMac, "IPv6 VtepMAC"),
            (entry("10.244.50.0-24&fd00:10:244:23::-64", v6_val("fd00:64::2e", "4e:00:00:00:06:2e", 1), 21), RejectReason::Overlap, "this node's own"),
            (entry("0.0.0.0-0&fd00:10:244:2f::-64", v6_val("fd00:10:244:5e::9", "4e:00:00:00:06:2f", 1), 22), RejectReason::PublicIpInSubnet, "lies inside IPv6 subnet fd00:10:244:5e::/64"),
        ];
        put_each_rejected6(&mut t, &cases);
        assert_eq!(t.len(), 2);
        // The first writer wins; when it goes, the leases that lost to it are promoted
        // (its PublicIPv6, its VtepMAC, an address inside its subnet).
        let mut skips = vec![];
        let changes = t.delete(&format!("{P}0.0.0.0-0&fd00:10:244:5e::-64"), &mut skips);
        let added: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                PeerChange::Added(p) => Some(p.subnet.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            added,
            [
                "fd00:10:244:2c::/64",
                "fd00:10:244:2d::/64",
                "fd00:10:244:2f::/64"
            ],
            "{changes:?}"
        );
        assert!(
            matches!(changes[0], PeerChange::Removed(p) if p.subnet.to_string() == "fd00:10:244:5e::/64")
        );
        // This node moves to a new PublicIPv6: its own key is still its own (the move
        // puts it again), and a peer may now hold the old address.
        let moved = LocalNode6 {
            public_ipv6: "fd00:64::99".parse().unwrap(),
            ..me6()
        };
        let changes = t.set_local(Some(moved), &mut skips);
        assert_eq!(
            t.verdicts()
                .find(|(k, _)| k.ends_with(MY_KEY6))
                .map(|(_, v)| v),
            Some(&Verdict::Own)
        );
        // The lease that named the old address (rejected as stale or forged) is a
        // peer now.
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, PeerChange::Added(p) if p.public_ipv6 == ME6)),
            "{changes:?}"
        );
    }

    fn put_each_rejected6(t: &mut PeerTable<PeerIpv6>, cases: &[(Entry, RejectReason, &str)]) {
        for (e, reason, why) in cases {
            let mut skips = vec![];
            let changes = t.put(e, &mut skips);
            assert!(changes.is_empty(), "{}: {changes:?}", e.key);
            let (_, v) = t.verdicts().find(|(k, _)| **k == *e.key).unwrap();
            let Verdict::Rejected(r) = v else {
                panic!("{} was not rejected: {v:?}", e.key)
            };
            assert_eq!(r.reason, *reason, "{}: {}", e.key, r.why);
            assert!(r.why.contains(why), "{}: {}", e.key, r.why);
            assert_eq!(skips.len(), 1, "{}: warned once", e.key);
        }
    }

    /// The IPv6-only table's invariants over random puts, deletes and listings: peers
    /// lie inside IPv6Network at IPv6SubnetLen, never overlap, never share a PublicIPv6
    /// or VtepMAC, never contain a peer's PublicIPv6, are never this node's, and the
    /// table equals a fresh judgement of what it knows.
    fn check_invariants6(ops: Vec<Op>) -> Result<(), proptest::test_runner::TestCaseError> {
        const KEYS: [&str; 8] = [
            "0.0.0.0-0&fd00:10:244:1::-64",
            "0.0.0.0-0&fd00:10:244:2::-64",
            "10.244.1.0-24&fd00:10:244:1::-64",
            MY_KEY6,
            "0.0.0.0-0&fd00:10:244::-48",
            "0.0.0.0-0&fd00:10:244:2::-65",
            "10.244.3.0-24",
            "0.0.0.0-0&fd00:10:244:3::-64",
        ];
        let ips6 = [
            "fd00:64::11",
            "fd00:64::13",
            "fd00:10:244:1::9",
            "fe80::1",
            "fd00:64::14",
            "fd00:10:244:2::7",
        ];
        let macs6 = [
            "4e:00:00:00:06:01",
            MY_MAC6,
            "0e:00:00:00:00:01",
            "4e:00:00:00:06:04",
        ];
        let new_table = || {
            let mut t = PeerTable::ipv6_only(v6_only_rules(), Some(me6()));
            let _ = t.set_own(LeaseKey::parse(MY_KEY6).ok(), &mut vec![]);
            t
        };
        let mut t = new_table();
        let mut skips = vec![];
        let mut known: BTreeMap<String, Entry> = BTreeMap::new();
        for (op, k, ip, mac, vni, v4, rev) in ops {
            let value = if v4 % 4 == 0 {
                dual_val(
                    "192.168.100.11",
                    "0e:00:00:00:00:01",
                    ips6[usize::from(ip)],
                    macs6[usize::from(mac)],
                )
            } else {
                v6_val(
                    ips6[usize::from(ip)],
                    macs6[usize::from(mac)],
                    1 + u32::from(vni / 3),
                )
            };
            let e = entry(KEYS[k], value, rev);
            let _ = match op {
                0 => {
                    known.insert(e.key.clone(), e.clone());
                    t.put(&e, &mut skips)
                }
                1 => {
                    known.remove(&e.key);
                    t.delete(&e.key, &mut skips)
                }
                _ => {
                    let all: Vec<Entry> = known.values().cloned().collect();
                    t.reset(&all, &mut skips)
                }
            };
            let peers: Vec<PeerIpv6> = t.peers().copied().collect();
            let r6 = v6_only_rules().ipv6;
            for (i, a) in peers.iter().enumerate() {
                proptest::prop_assert!(
                    r6.network.contains_subnet(&a.subnet) && a.subnet.prefix_len() == 64
                );
                proptest::prop_assert_ne!(a.subnet.to_string(), "fd00:10:244:23::/64");
                proptest::prop_assert_ne!(a.public_ipv6, ME6);
                proptest::prop_assert_ne!(a.vtep_mac.to_string(), MY_MAC6);
                proptest::prop_assert!(unusable_public_ipv6(a.public_ipv6).is_none());
                for b in &peers[i + 1..] {
                    proptest::prop_assert!(!a.subnet.overlaps(&b.subnet));
                    proptest::prop_assert_ne!(a.public_ipv6, b.public_ipv6);
                    proptest::prop_assert_ne!(a.vtep_mac, b.vtep_mac);
                    proptest::prop_assert!(
                        !a.subnet.contains(b.public_ipv6) && !b.subnet.contains(a.public_ipv6)
                    );
                }
            }
            let mut fresh = new_table();
            let all: Vec<Entry> = known.values().cloned().collect();
            let _ = fresh.reset(&all, &mut vec![]);
            proptest::prop_assert_eq!(
                fresh.verdicts().collect::<Vec<_>>(),
                t.verdicts().collect::<Vec<_>>()
            );
            proptest::prop_assert_eq!(
                fresh.peers().collect::<Vec<_>>(),
                t.peers().collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            (0u8..3, 0usize..8, 0u8..6, 0u8..4, 0u8..4, 0u8..8, 1i64..50),
            0..40,
        )
    }

    proptest::proptest! {
        /// Whatever is put, deleted or listed: peers lie inside the Network at
        /// SubnetLen, never overlap, never share a PublicIP or VtepMAC, never contain
        /// a peer's PublicIP, and the table equals a fresh judgement of what it knows.
        #[test]
        fn invariants(ops in ops()) {
            check_invariants(ops, false)?;
        }

        /// The same on a dual-stack table, for both halves of every peer.
        #[test]
        fn invariants_dual_stack(ops in ops()) {
            check_invariants(ops, true)?;
        }

        /// The same on an IPv6-only table.
        #[test]
        fn invariants_ipv6_only(ops in ops()) {
            check_invariants6(ops)?;
        }
    }
}
