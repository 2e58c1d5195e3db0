//! The handover protocol's messages and their byte form. Pure: bytes in, typed
//! messages out, and back; no socket, no clock.
//!
//! A running vxmeshd (the *old* one) and its successor (the *new* one) talk over a
//! unix stream socket; the same encoding is the state file a stopping vxmeshd
//! leaves in systemd's descriptor store ([`Message::Stored`]). Every message is one
//! frame:
//!
//! ```text
//!  0       4      5       6        8            12           16
//!  +-------+------+-------+--------+------------+------------+---------------
//!  | VXHO  | kind | 0     | 0      | body len   | FNV-1a 32  | body: fields
//!  +-------+------+-------+--------+------------+------------+---------------
//!                                   (u32 BE)     (of the body, BE)
//! ```
//!
//! The body is a sequence of fields `tag u8, length u16 BE, value`. A decoder skips
//! tags it does not know (a newer build may add fields); a field it needs and does
//! not find is an error, as is a known field with the wrong length. `PEER` and `FD`
//! repeat; any other tag twice is an error.
//!
//! Version 2 (IPv6 in the threads, `--ipv6-dataplane userspace`): a `PEER` may carry
//! the peer's IPv6 half (54 bytes instead of 15), and an `FD` may be the IPv6 receive
//! socket ([`FdRole::UdpRx6`]). An offer at version 1 has neither
//! ([`DataplaneState::for_version`]): a version-1 build would refuse both (it is
//! refused before: it sends no `IPV6_DATAPLANE`, read as `kernel`).
//!
//! Frozen for every protocol version, so that two builds can always tell each other
//! that they cannot take over: the header, the kinds `Hello` (its `VERSION_MIN` and
//! `VERSION_MAX` fields), `Refuse`, `Incompatible`, `Release` and `Released`.
//! The conversation (see `handover/mod.rs`):
//!
//! ```text
//!   new → old  Hello{versions, pid, build, fingerprint}
//!   old → new  Refuse{reason}                       (not a valid successor)
//!            | Incompatible{versions, build}        (no common version) → new: Release
//!            | Offer{version, state} + descriptors  → new starts its threads: Started
//!   old → new  Stopped{took}                        (old's threads quit; it exits 0)
//!   new → old  Release  →  old → new  Released      (old stopped; new starts cold)
//!   new → old  Abort{reason}                        (new could not use the descriptors)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::peers::{Peer, PeerIpv6};
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;
use vxmesh_dataplane::wire::MacAddr;

pub const MAGIC: [u8; 4] = *b"VXHO";
pub const HEADER_LEN: usize = 16;
/// Largest body accepted (about 60 000 peers).
pub const MAX_BODY: usize = 1 << 20;
/// The protocol versions this build speaks.
pub const VERSIONS: Versions = Versions { min: 1, max: 2 };
/// The first version whose peers carry IPv6 halves and whose descriptors may include
/// the IPv6 receive socket.
pub const VERSION_IPV6: u16 = 2;

/// A range of protocol versions, `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub min: u16,
    pub max: u16,
}

impl Versions {
    /// The highest version both sides speak.
    pub fn best_common(self, other: Versions) -> Option<u16> {
        let hi = self.max.min(other.max);
        (hi >= self.min.max(other.min)).then_some(hi)
    }
}

impl std::fmt::Display for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// What must be the same for a new vxmeshd to take over a running dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub tap: String,
    /// `userspace` or `kernel`.
    pub dataplane: String,
    pub tap_queues: u16,
    /// TAP frames carry virtio-net headers (offloads on).
    pub vnet_hdr: bool,
    pub public_ip: Ipv4Addr,
    pub network: Subnet,
    pub vni: u32,
    pub port: u16,
    pub etcd_prefix: String,
    /// Who carries a dual-stack node's IPv6: `userspace` (the threads,
    /// `--ipv6-dataplane userspace`) or `kernel` (`flannel-v6.<VNI>`, or no IPv6). A
    /// build before the field sends none: `kernel`.
    pub ipv6_dataplane: String,
}

impl Fingerprint {
    /// A node of an IPv6-only network: no IPv4 network and no PublicIP
    /// (`handover::node::identity_ipv6_only`), nothing to hand over.
    pub fn ipv6_only(&self) -> bool {
        self.network.prefix_len() == 0 && self.public_ip.is_unspecified()
    }
}

/// What a passed descriptor is, in the order the descriptors travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FdRole {
    /// TAP queue `i`.
    Tap(u8),
    /// The VXLAN receive socket.
    UdpRx,
    /// Send socket `i` (IPv4 or IPv6: the receiver asks each its family).
    UdpTx(u8),
    /// The handover listener itself (so its name is never free).
    Listener,
    /// The VXLAN-over-IPv6 receive socket, when the threads carry IPv6
    /// (`--ipv6-dataplane userspace`). A release before it refuses an offer that
    /// lists it (an unknown role), so it is listed only when there is one.
    UdpRx6,
}

impl FdRole {
    fn to_bytes(self) -> [u8; 2] {
        match self {
            FdRole::Tap(i) => [1, i],
            FdRole::UdpRx => [2, 0],
            FdRole::UdpTx(i) => [3, i],
            FdRole::Listener => [4, 0],
            FdRole::UdpRx6 => [5, 0],
        }
    }

    fn from_bytes(b: [u8; 2]) -> Option<FdRole> {
        match b {
            [1, i] => Some(FdRole::Tap(i)),
            [2, 0] => Some(FdRole::UdpRx),
            [3, i] => Some(FdRole::UdpTx(i)),
            [4, 0] => Some(FdRole::Listener),
            [5, 0] => Some(FdRole::UdpRx6),
            _ => None,
        }
    }

    /// The name used in systemd's descriptor store (`FDNAME=`).
    pub fn store_name(self) -> String {
        match self {
            FdRole::Tap(i) => format!("vxmesh-tap{i}"),
            FdRole::UdpRx => "vxmesh-udp-rx".into(),
            FdRole::UdpTx(i) => format!("vxmesh-udp-tx{i}"),
            FdRole::Listener => "vxmesh-handover".into(),
            FdRole::UdpRx6 => "vxmesh-udp-rx6".into(),
        }
    }

    /// The role behind a descriptor-store name.
    pub fn from_store_name(s: &str) -> Option<FdRole> {
        let num = |rest: &str| rest.parse::<u8>().ok();
        if let Some(r) = s.strip_prefix("vxmesh-tap") {
            return num(r).map(FdRole::Tap);
        }
        if let Some(r) = s.strip_prefix("vxmesh-udp-tx") {
            return num(r).map(FdRole::UdpTx);
        }
        match s {
            "vxmesh-udp-rx" => Some(FdRole::UdpRx),
            "vxmesh-udp-rx6" => Some(FdRole::UdpRx6),
            "vxmesh-handover" => Some(FdRole::Listener),
            _ => None,
        }
    }
}

/// A running dataplane as its successor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneState {
    pub fingerprint: Fingerprint,
    /// Subnet and etcd lease id, when one is held.
    pub lease: Option<(Subnet, i64)>,
    pub vtep_mac: MacAddr,
    pub mtu: u32,
    /// The `TUN_F_*` flags the TAP was granted.
    pub tap_offloads: u32,
    /// The roles of the descriptors that come with this state, in order.
    pub fds: Vec<FdRole>,
    /// The forwarding table's peers.
    pub peers: Vec<Peer>,
    /// Handovers since the dataplane last started cold (this one not counted).
    pub handovers: u32,
    /// Cold starts of this dataplane that left state (crash adoptions are cold).
    pub cold_starts: u32,
    pub pid: u32,
    pub build: String,
    /// Wall clock (Unix ms) of this state: when the old threads stopped if
    /// `stopped`, else when it was last refreshed.
    pub at_ms: u64,
    pub stopped: bool,
}

impl DataplaneState {
    /// The version to keep this state at in systemd's store, of those `ours` speaks: the
    /// oldest that carries all of it — version 1 unless the threads carry IPv6 — so that
    /// a rollback to a build of that version still takes the store over.
    pub fn stored_version(&self, ours: Versions) -> u16 {
        let need = if self.fds.contains(&FdRole::UdpRx6) {
            VERSION_IPV6
        } else {
            1
        };
        need.clamp(ours.min, ours.max)
    }

    /// What a build speaking `version` may be sent: before [`VERSION_IPV6`], no IPv6
    /// halves of peers and no IPv6 receive socket (whose descriptor the caller leaves
    /// out as well: [`DataplaneState::fds`] lists them in order).
    pub fn for_version(mut self, version: u16) -> DataplaneState {
        if version < VERSION_IPV6 {
            self.fds.retain(|r| *r != FdRole::UdpRx6);
            for p in &mut self.peers {
                p.ipv6 = None;
            }
        }
        self
    }
}

/// One protocol message (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello {
        versions: Versions,
        pid: u32,
        build: String,
        fingerprint: Fingerprint,
    },
    Refuse {
        reason: String,
    },
    Incompatible {
        versions: Versions,
        build: String,
    },
    Offer {
        version: u16,
        state: DataplaneState,
    },
    Started,
    Abort {
        reason: String,
    },
    Stopped {
        /// How long the old threads took to quit.
        took_us: u64,
        /// When they had quit (Unix ms).
        at_ms: u64,
    },
    Release,
    Released,
    /// The state file kept in systemd's descriptor store.
    Stored {
        version: u16,
        state: DataplaneState,
    },
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a vxmesh handover frame (magic {0:02x?}, want \"VXHO\")")]
    Magic([u8; 4]),
    #[error("frame body of {0} bytes is larger than {MAX_BODY}")]
    TooLong(usize),
    #[error("frame checksum mismatch (torn or corrupted)")]
    Checksum,
    #[error("unknown message kind {0:#04x}")]
    Kind(u8),
    #[error("field {tag:#04x} runs past the end of the body")]
    Truncated { tag: u8 },
    #[error("field {name} ({tag:#04x}) has length {len}, want {want}")]
    Length {
        name: &'static str,
        tag: u8,
        len: usize,
        want: usize,
    },
    #[error("field {0} appears twice")]
    Duplicate(&'static str),
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {name}: {why}")]
    Value { name: &'static str, why: String },
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const REFUSE: u8 = 0x02;
    pub const INCOMPATIBLE: u8 = 0x03;
    pub const OFFER: u8 = 0x04;
    pub const STARTED: u8 = 0x05;
    pub const ABORT: u8 = 0x06;
    pub const STOPPED: u8 = 0x07;
    pub const RELEASE: u8 = 0x08;
    pub const RELEASED: u8 = 0x09;
    pub const STORED: u8 = 0x0a;
}

/// Field tags, with names for errors.
mod tag {
    pub const VERSION_MIN: u8 = 0x01;
    pub const VERSION_MAX: u8 = 0x02;
    pub const VERSION: u8 = 0x03;
    pub const PID: u8 = 0x04;
    pub const BUILD: u8 = 0x05;
    pub const REASON: u8 = 0x06;
    pub const TAP: u8 = 0x10;
    pub const DATAPLANE: u8 = 0x11;
    pub const TAP_QUEUES: u8 = 0x12;
    pub const VNET_HDR: u8 = 0x13;
    pub const PUBLIC_IP: u8 = 0x14;
    pub const NETWORK: u8 = 0x15;
    pub const VNI: u8 = 0x16;
    pub const PORT: u8 = 0x17;
    pub const ETCD_PREFIX: u8 = 0x18;
    pub const IPV6_DATAPLANE: u8 = 0x19;
    pub const LEASE: u8 = 0x20;
    pub const VTEP_MAC: u8 = 0x21;
    pub const MTU: u8 = 0x22;
    pub const TAP_OFFLOADS: u8 = 0x23;
    pub const FD: u8 = 0x24;
    pub const PEER: u8 = 0x25;
    pub const HANDOVERS: u8 = 0x26;
    pub const COLD_STARTS: u8 = 0x27;
    pub const AT_MS: u8 = 0x28;
    pub const STOPPED: u8 = 0x29;
    pub const TOOK_US: u8 = 0x2a;

    pub fn name(t: u8) -> &'static str {
        match t {
            VERSION_MIN => "VERSION_MIN",
            VERSION_MAX => "VERSION_MAX",
            VERSION => "VERSION",
            PID => "PID",
            BUILD => "BUILD",
            REASON => "REASON",
            TAP => "TAP",
            DATAPLANE => "DATAPLANE",
            TAP_QUEUES => "TAP_QUEUES",
            VNET_HDR => "VNET_HDR",
            PUBLIC_IP => "PUBLIC_IP",
            NETWORK => "NETWORK",
            VNI => "VNI",
            PORT => "PORT",
            IPV6_DATAPLANE => "IPV6_DATAPLANE",
            ETCD_PREFIX => "ETCD_PREFIX",
            LEASE => "LEASE",
            VTEP_MAC => "VTEP_MAC",
            MTU => "MTU",
            TAP_OFFLOADS => "TAP_OFFLOADS",
            FD => "FD",
            PEER => "PEER",
            HANDOVERS => "HANDOVERS",
            COLD_STARTS => "COLD_STARTS",
            AT_MS => "AT_MS",
            STOPPED => "STOPPED",
            TOOK_US => "TOOK_US",
            _ => "unknown",
        }
    }
}

/// FNV-1a, 32 bits: catches a torn state file, not an attacker (the socket is
/// root-only and the peer's credentials are checked).
pub fn fnv1a32(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}

/// A frame whose header and checksum are valid; its body not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The first frame in `buf`: `Ok(None)` if more bytes are needed, else the frame
    /// and the bytes it took.
    pub fn parse(buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, DecodeError> {
        if buf.len() < HEADER_LEN {
            // A wrong magic is reported as soon as it is visible.
            let n = buf.len().min(4);
            if buf[..n] != MAGIC[..n] {
                let mut m = [0u8; 4];
                m[..n].copy_from_slice(&buf[..n]);
                return Err(DecodeError::Magic(m));
            }
            return Ok(None);
        }
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        let len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if len > MAX_BODY {
            return Err(DecodeError::TooLong(len));
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..HEADER_LEN + len];
        if fnv1a32(body) != u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]) {
            return Err(DecodeError::Checksum);
        }
        Ok(Some((Frame { kind: buf[4], body }, HEADER_LEN + len)))
    }

    /// The versions a `Hello` or `Incompatible` advertises, read from the frozen
    /// fields only: works whatever else a newer build put in the frame.
    pub fn versions(&self) -> Result<Versions, DecodeError> {
        let f = Fields::parse(self.body)?;
        Ok(Versions {
            min: f.u16(tag::VERSION_MIN)?,
            max: f.u16(tag::VERSION_MAX)?,
        })
    }
}

/// The fields of one body, looked up by tag.
struct Fields<'a> {
    items: Vec<(u8, &'a [u8])>,
}

impl<'a> Fields<'a> {
    fn parse(body: &'a [u8]) -> Result<Fields<'a>, DecodeError> {
        let mut items = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let t = body[at];
            let Some(lb) = body.get(at + 1..at + 3) else {
                return Err(DecodeError::Truncated { tag: t });
            };
            let len = usize::from(u16::from_be_bytes([lb[0], lb[1]]));
            let Some(v) = body.get(at + 3..at + 3 + len) else {
                return Err(DecodeError::Truncated { tag: t });
            };
            if t != tag::PEER && t != tag::FD && items.iter().any(|(x, _)| *x == t) {
                return Err(DecodeError::Duplicate(tag::name(t)));
            }
            items.push((t, v));
            at += 3 + len;
        }
        Ok(Fields { items })
    }

    fn get(&self, t: u8) -> Option<&'a [u8]> {
        self.items.iter().find(|(x, _)| *x == t).map(|(_, v)| *v)
    }

    fn all(&self, t: u8) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.items
            .iter()
            .filter(move |(x, _)| *x == t)
            .map(|(_, v)| *v)
    }

    fn fixed<const N: usize>(&self, t: u8) -> Result<Option<[u8; N]>, DecodeError> {
        match self.get(t) {
            None => Ok(None),
            Some(v) => sized(t, v).map(Some),
        }
    }

    fn need<const N: usize>(&self, t: u8) -> Result<[u8; N], DecodeError> {
        self.fixed(t)?.ok_or(DecodeError::Missing(tag::name(t)))
    }

    fn u16(&self, t: u8) -> Result<u16, DecodeError> {
        self.need::<2>(t).map(u16::from_be_bytes)
    }

    fn u32(&self, t: u8) -> Result<u32, DecodeError> {
        self.need::<4>(t).map(u32::from_be_bytes)
    }

    fn u64(&self, t: u8) -> Result<u64, DecodeError> {
        self.need::<8>(t).map(u64::from_be_bytes)
    }

    fn flag(&self, t: u8) -> Result<bool, DecodeError> {
        match self.need::<1>(t)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [x] => Err(DecodeError::Value {
                name: tag::name(t),
                why: format!("{x} is not 0 or 1"),
            }),
        }
    }

    fn string(&self, t: u8) -> Result<String, DecodeError> {
        let v = self.get(t).ok_or(DecodeError::Missing(tag::name(t)))?;
        String::from_utf8(v.to_vec()).map_err(|_| DecodeError::Value {
            name: tag::name(t),
            why: "not UTF-8".into(),
        })
    }
}

/// A `PEER` with its IPv6 half: the IPv4 half's 15 bytes, then the IPv6 subnet (16 + 1),
/// PublicIPv6 (16) and IPv6 VtepMAC (6).
const PEER_V6_LEN: usize = 15 + 17 + 16 + 6;

fn sized<const N: usize>(t: u8, v: &[u8]) -> Result<[u8; N], DecodeError> {
    v.try_into().map_err(|_| DecodeError::Length {
        name: tag::name(t),
        tag: t,
        len: v.len(),
        want: N,
    })
}

fn subnet(t: u8, b: &[u8]) -> Result<Subnet, DecodeError> {
    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Subnet::new_exact(ip, b[4]).map_err(|e| DecodeError::Value {
        name: tag::name(t),
        why: e.to_string(),
    })
}

fn subnet_bytes(s: &Subnet) -> [u8; 5] {
    let o = s.addr().octets();
    [o[0], o[1], o[2], o[3], s.prefix_len()]
}

/// Builds a body.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn field(&mut self, t: u8, v: &[u8]) {
        // Strings longer than a field holds are cut (names and reasons only).
        let v = &v[..v.len().min(usize::from(u16::MAX))];
        self.buf.push(t);
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
    }

    fn str(&mut self, t: u8, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.field(t, &s.as_bytes()[..end]);
    }

    fn fingerprint(&mut self, f: &Fingerprint) {
        self.str(tag::TAP, &f.tap);
        self.str(tag::DATAPLANE, &f.dataplane);
        self.field(tag::TAP_QUEUES, &f.tap_queues.to_be_bytes());
        self.field(tag::VNET_HDR, &[u8::from(f.vnet_hdr)]);
        self.field(tag::PUBLIC_IP, &f.public_ip.octets());
        self.field(tag::NETWORK, &subnet_bytes(&f.network));
        self.field(tag::VNI, &f.vni.to_be_bytes());
        self.field(tag::PORT, &f.port.to_be_bytes());
        self.str(tag::ETCD_PREFIX, &f.etcd_prefix);
        self.str(tag::IPV6_DATAPLANE, &f.ipv6_dataplane);
    }

    fn state(&mut self, s: &DataplaneState) {
        self.fingerprint(&s.fingerprint);
        if let Some((subnet, id)) = s.lease {
            let mut v = subnet_bytes(&subnet).to_vec();
            v.extend_from_slice(&id.to_be_bytes());
            self.field(tag::LEASE, &v);
        }
        self.field(tag::VTEP_MAC, &s.vtep_mac.0);
        self.field(tag::MTU, &s.mtu.to_be_bytes());
        self.field(tag::TAP_OFFLOADS, &s.tap_offloads.to_be_bytes());
        for r in &s.fds {
            self.field(tag::FD, &r.to_bytes());
        }
        for p in &s.peers {
            let mut v = subnet_bytes(&p.subnet).to_vec();
            v.extend_from_slice(&p.public_ip.octets());
            v.extend_from_slice(&p.vtep_mac.0);
            if let Some(v6) = &p.ipv6 {
                v.extend_from_slice(&v6.subnet.addr().octets());
                v.push(v6.subnet.prefix_len());
                v.extend_from_slice(&v6.public_ipv6.octets());
                v.extend_from_slice(&v6.vtep_mac.0);
            }
            self.field(tag::PEER, &v);
        }
        self.field(tag::HANDOVERS, &s.handovers.to_be_bytes());
        self.field(tag::COLD_STARTS, &s.cold_starts.to_be_bytes());
        self.field(tag::PID, &s.pid.to_be_bytes());
        self.str(tag::BUILD, &s.build);
        self.field(tag::AT_MS, &s.at_ms.to_be_bytes());
        self.field(tag::STOPPED, &[u8::from(s.stopped)]);
    }

    fn versions(&mut self, v: Versions) {
        self.field(tag::VERSION_MIN, &v.min.to_be_bytes());
        self.field(tag::VERSION_MAX, &v.max.to_be_bytes());
    }
}

fn read_fingerprint(f: &Fields<'_>) -> Result<Fingerprint, DecodeError> {
    Ok(Fingerprint {
        tap: f.string(tag::TAP)?,
        dataplane: f.string(tag::DATAPLANE)?,
        tap_queues: f.u16(tag::TAP_QUEUES)?,
        vnet_hdr: f.flag(tag::VNET_HDR)?,
        public_ip: Ipv4Addr::from(f.need::<4>(tag::PUBLIC_IP)?),
        network: subnet(tag::NETWORK, &f.need::<5>(tag::NETWORK)?)?,
        vni: f.u32(tag::VNI)?,
        port: f.u16(tag::PORT)?,
        etcd_prefix: f.string(tag::ETCD_PREFIX)?,
        ipv6_dataplane: match f.get(tag::IPV6_DATAPLANE) {
            None => "kernel".into(),
            Some(_) => f.string(tag::IPV6_DATAPLANE)?,
        },
    })
}

fn read_state(f: &Fields<'_>) -> Result<DataplaneState, DecodeError> {
    let lease = match f.fixed::<13>(tag::LEASE)? {
        None => None,
        Some(v) => {
            let s = subnet(tag::LEASE, &v[..5])?;
            let mut id = [0u8; 8];
            id.copy_from_slice(&v[5..]);
            Some((s, i64::from_be_bytes(id)))
        }
    };
    let mut fds = Vec::new();
    for v in f.all(tag::FD) {
        let b = sized::<2>(tag::FD, v)?;
        let role = FdRole::from_bytes(b).ok_or_else(|| DecodeError::Value {
            name: "FD",
            why: format!("unknown descriptor role {b:?}"),
        })?;
        if fds.contains(&role) {
            return Err(DecodeError::Value {
                name: "FD",
                why: format!("{role:?} listed twice"),
            });
        }
        fds.push(role);
    }
    let mut peers = Vec::new();
    for v in f.all(tag::PEER) {
        // The IPv4 half alone (15 bytes), or with the IPv6 half (54, version 2).
        let (b, b6) = match v.len() {
            PEER_V6_LEN => (&v[..15], Some(&v[15..])),
            _ => (&sized::<15>(tag::PEER, v)?[..], None),
        };
        let ipv6 = match b6 {
            None => None,
            Some(x) => {
                let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&x[..16]).unwrap_or_default());
                Some(PeerIpv6 {
                    subnet: Subnet6::new_exact(addr, x[16]).map_err(|e| DecodeError::Value {
                        name: "PEER",
                        why: format!("IPv6 subnet {addr}/{}: {e}", x[16]),
                    })?,
                    public_ipv6: Ipv6Addr::from(
                        <[u8; 16]>::try_from(&x[17..33]).unwrap_or_default(),
                    ),
                    vtep_mac: MacAddr([x[33], x[34], x[35], x[36], x[37], x[38]]),
                })
            }
        };
        // A PublicIPv6 no peer could send from (an odd or damaged state): the half is
        // left for the successor's first listing to bring, as a version-1 state does.
        let ipv6 = ipv6.filter(|h| crate::peers::unusable_public_ipv6(h.public_ipv6).is_none());
        peers.push(Peer {
            ipv6,
            subnet: subnet(tag::PEER, &b[..5])?,
            public_ip: Ipv4Addr::new(b[5], b[6], b[7], b[8]),
            vtep_mac: MacAddr([b[9], b[10], b[11], b[12], b[13], b[14]]),
        });
    }
    Ok(DataplaneState {
        fingerprint: read_fingerprint(f)?,
        lease,
        vtep_mac: MacAddr(f.need::<6>(tag::VTEP_MAC)?),
        mtu: f.u32(tag::MTU)?,
        tap_offloads: f.u32(tag::TAP_OFFLOADS)?,
        fds,
        peers,
        handovers: f.u32(tag::HANDOVERS)?,
        cold_starts: f.u32(tag::COLD_STARTS)?,
        pid: f.u32(tag::PID)?,
        build: f.string(tag::BUILD)?,
        at_ms: f.u64(tag::AT_MS)?,
        stopped: f.flag(tag::STOPPED)?,
    })
}

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => kind::HELLO,
            Message::Refuse { .. } => kind::REFUSE,
            Message::Incompatible { .. } => kind::INCOMPATIBLE,
            Message::Offer { .. } => kind::OFFER,
            Message::Started => kind::STARTED,
            Message::Abort { .. } => kind::ABORT,
            Message::Stopped { .. } => kind::STOPPED,
            Message::Release => kind::RELEASE,
            Message::Released => kind::RELEASED,
            Message::Stored { .. } => kind::STORED,
        }
    }

    /// The message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer { buf: Vec::new() };
        match self {
            Message::Hello {
                versions,
                pid,
                build,
                fingerprint,
            } => {
                w.versions(*versions);
                w.field(tag::PID, &pid.to_be_bytes());
                w.str(tag::BUILD, build);
                w.fingerprint(fingerprint);
            }
            Message::Refuse { reason } | Message::Abort { reason } => w.str(tag::REASON, reason),
            Message::Incompatible { versions, build } => {
                w.versions(*versions);
                w.str(tag::BUILD, build);
            }
            Message::Offer { version, state } | Message::Stored { version, state } => {
                w.field(tag::VERSION, &version.to_be_bytes());
                w.state(state);
            }
            Message::Stopped { took_us, at_ms } => {
                w.field(tag::TOOK_US, &took_us.to_be_bytes());
                w.field(tag::AT_MS, &at_ms.to_be_bytes());
            }
            Message::Started | Message::Release | Message::Released => {}
        }
        let body = w.buf;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[self.kind(), 0, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&fnv1a32(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a frame's body.
    pub fn decode(frame: Frame<'_>) -> Result<Message, DecodeError> {
        let f = Fields::parse(frame.body)?;
        Ok(match frame.kind {
            kind::HELLO => Message::Hello {
                versions: frame.versions()?,
                pid: f.u32(tag::PID)?,
                build: f.string(tag::BUILD)?,
                fingerprint: read_fingerprint(&f)?,
            },
            kind::REFUSE => Message::Refuse {
                reason: f.string(tag::REASON)?,
            },
            kind::INCOMPATIBLE => Message::Incompatible {
                versions: frame.versions()?,
                build: f.string(tag::BUILD)?,
            },
            kind::OFFER => Message::Offer {
                version: f.u16(tag::VERSION)?,
                state: read_state(&f)?,
            },
            kind::STARTED => Message::Started,
            kind::ABORT => Message::Abort {
                reason: f.string(tag::REASON)?,
            },
            kind::STOPPED => Message::Stopped {
                took_us: f.u64(tag::TOOK_US)?,
                at_ms: f.u64(tag::AT_MS)?,
            },
            kind::RELEASE => Message::Release,
            kind::RELEASED => Message::Released,
            kind::STORED => Message::Stored {
                version: f.u16(tag::VERSION)?,
                state: read_state(&f)?,
            },
            k => return Err(DecodeError::Kind(k)),
        })
    }

    /// Decodes the first message in `buf`: `Ok(None)` if more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        match Frame::parse(buf)? {
            None => Ok(None),
            Some((frame, used)) => Ok(Some((Message::decode(frame)?, used))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn fingerprint() -> Fingerprint {
        Fingerprint {
            tap: "vxmesh0".into(),
            dataplane: "userspace".into(),
            tap_queues: 1,
            vnet_hdr: true,
            public_ip: Ipv4Addr::new(192, 168, 100, 11),
            network: "10.244.0.0/16".parse().unwrap(),
            vni: 1,
            port: 8472,
            etcd_prefix: "/coreos.com/network".into(),
            ipv6_dataplane: "kernel".into(),
        }
    }

    fn state() -> DataplaneState {
        DataplaneState {
            fingerprint: fingerprint(),
            lease: Some(("10.244.7.0/24".parse().unwrap(), 0x694d_7c1e_22a3_0b11)),
            vtep_mac: MacAddr([0x0e, 0x2a, 0xc0, 0xa8, 0x64, 0x0b]),
            mtu: 1450,
            tap_offloads: 0x6f,
            fds: vec![
                FdRole::Tap(0),
                FdRole::UdpRx,
                FdRole::UdpTx(0),
                FdRole::UdpTx(1),
            ],
            peers: vec![Peer {
                ipv6: None,
                subnet: "10.244.9.0/24".parse().unwrap(),
                public_ip: Ipv4Addr::new(192, 168, 100, 12),
                vtep_mac: MacAddr([0x0e, 0x2a, 0xc0, 0xa8, 0x64, 0x0c]),
            }],
            handovers: 3,
            cold_starts: 1,
            pid: 4242,
            build: "0.1.0".into(),
            at_ms: 1_800_000_000_123,
            stopped: false,
        }
    }

    /// A Hello from a build before `--ipv6-dataplane` has no such field: `kernel`.
    #[test]
    fn a_fingerprint_without_ipv6_dataplane_is_kernel() {
        let mut f = fingerprint();
        f.ipv6_dataplane = "userspace".into();
        let mut w = Writer { buf: Vec::new() };
        w.fingerprint(&f);
        let back = read_fingerprint(&Fields::parse(&w.buf).unwrap()).unwrap();
        assert_eq!(back, f);
        // The same bytes without the IPV6_DATAPLANE field (tag, u16 length, value).
        let at = w.buf.len() - (3 + "userspace".len());
        assert_eq!(w.buf[at], tag::IPV6_DATAPLANE);
        let old = &w.buf[..at];
        let back = read_fingerprint(&Fields::parse(old).unwrap()).unwrap();
        assert_eq!(back.ipv6_dataplane, "kernel");
    }

    /// Version 2: a peer's IPv6 half and the IPv6 receive socket travel, byte for byte
    /// as documented; an offer to a version-1 build has neither, and decodes there as
    /// version 1 always did (15-byte peers).
    #[test]
    fn ipv6_halves_and_the_ipv6_socket_from_version_2() {
        let mut st = state();
        st.fds.push(FdRole::UdpRx6);
        let v6 = PeerIpv6 {
            subnet: "fd00:10:244:9::/64".parse().unwrap(),
            public_ipv6: "fd00:64::12".parse().unwrap(),
            vtep_mac: MacAddr([0x06, 0, 0, 0, 0, 0x0c]),
        };
        st.peers[0].ipv6 = Some(v6);
        st.peers.push(Peer {
            ipv6: None,
            subnet: "10.244.10.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 100, 13),
            vtep_mac: MacAddr([0x0e, 0x2a, 0xc0, 0xa8, 0x64, 0x0d]),
        });
        let m = Message::Offer {
            version: 2,
            state: st.clone().for_version(2),
        };
        let bytes = m.encode();
        let (back, _) = Message::parse(&bytes).unwrap().unwrap();
        assert_eq!(back, m);
        // The IPv6 half's bytes: subnet, length, PublicIPv6, MAC after the IPv4 half.
        let mut want = vec![
            10, 244, 9, 0, 24, 192, 168, 100, 12, 0x0e, 0x2a, 0xc0, 0xa8, 0x64, 0x0c,
        ];
        want.extend_from_slice(&v6.subnet.addr().octets());
        want.push(64);
        want.extend_from_slice(&v6.public_ipv6.octets());
        want.extend_from_slice(&v6.vtep_mac.0);
        assert_eq!(want.len(), PEER_V6_LEN);
        assert!(bytes.windows(want.len()).any(|w| w == want.as_slice()));
        // Kept in systemd's store at version 2 only while the threads carry IPv6 (the
        // IPv6 socket is in it): a rollback to a version-1 build adopts the rest.
        assert_eq!(st.stored_version(VERSIONS), 2);
        let mut plain = state();
        assert_eq!(plain.stored_version(VERSIONS), 1);
        plain.peers[0].ipv6 = st.peers[0].ipv6;
        assert_eq!(plain.stored_version(VERSIONS), 1);
        assert_eq!(plain.stored_version(Versions { min: 2, max: 3 }), 2);
        // To a version-1 build: neither, and every PEER 15 bytes.
        let old = st.clone().for_version(1);
        assert!(!old.fds.contains(&FdRole::UdpRx6));
        assert!(old.peers.iter().all(|p| p.ipv6.is_none()));
        let bytes = Message::Offer {
            version: 1,
            state: old.clone(),
        }
        .encode();
        let f = Fields::parse(&bytes[HEADER_LEN..]).unwrap();
        assert!(f.all(tag::PEER).all(|v| v.len() == 15));
        assert!(f.all(tag::FD).all(|v| v != [5, 0]));
        // A half whose PublicIPv6 no peer sends from is left out (the listing brings
        // it), the peer kept.
        let mut mapped = st.clone();
        if let Some(h) = mapped.peers[0].ipv6.as_mut() {
            h.public_ipv6 = "::ffff:192.0.2.1".parse().unwrap();
        }
        let bytes = Message::Offer {
            version: 2,
            state: mapped,
        }
        .encode();
        let Some((Message::Offer { state: got, .. }, _)) = Message::parse(&bytes).unwrap() else {
            panic!("an offer")
        };
        assert_eq!(got.peers.len(), 2);
        assert!(got.peers[0].ipv6.is_none(), "{:?}", got.peers[0]);
        // A PEER of any other length, or an IPv6 half that is not a subnet, is refused.
        let mut bad = want.clone();
        bad[15 + 16] = 200;
        for v in [&want[..20], &bad[..]] {
            let mut w = Writer { buf: Vec::new() };
            w.state(&old);
            w.field(tag::PEER, v);
            w.field(tag::VERSION, &1u16.to_be_bytes());
            let f = Fields::parse(&w.buf).unwrap();
            assert!(read_state(&f).is_err(), "{v:?}");
        }
    }

    /// The exact bytes of the smallest messages: the frozen part of the protocol.
    #[test]
    fn frozen_frames_byte_for_byte() {
        assert_eq!(
            Message::Release.encode(),
            [b'V', b'X', b'H', b'O', 0x08, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x1c, 0x9d, 0xc5]
        );
        let inc = Message::Incompatible {
            versions: Versions { min: 1, max: 2 },
            build: "x".into(),
        }
        .encode();
        let body = [0x01, 0, 2, 0, 1, 0x02, 0, 2, 0, 2, 0x05, 0, 1, b'x'];
        assert_eq!(&inc[..5], b"VXHO\x03");
        assert_eq!(&inc[8..12], &(body.len() as u32).to_be_bytes());
        assert_eq!(&inc[12..16], &fnv1a32(&body).to_be_bytes());
        assert_eq!(&inc[16..], &body);
        // FNV-1a 32 reference values
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn every_kind_round_trips() {
        let msgs = vec![
            Message::Hello {
                versions: VERSIONS,
                pid: 7,
                build: "0.1.0".into(),
                fingerprint: fingerprint(),
            },
            Message::Refuse {
                reason: "different VNI".into(),
            },
            Message::Incompatible {
                versions: Versions { min: 2, max: 5 },
                build: "0.9.0".into(),
            },
            Message::Offer {
                version: 1,
                state: state(),
            },
            Message::Started,
            Message::Abort {
                reason: "no".into(),
            },
            Message::Stopped {
                took_us: 12_345,
                at_ms: 99,
            },
            Message::Release,
            Message::Released,
            Message::Stored {
                version: 1,
                state: DataplaneState {
                    lease: None,
                    peers: vec![],
                    stopped: true,
                    ..state()
                },
            },
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(m.encode());
        }
        let mut at = 0;
        for m in &msgs {
            let (got, used) = Message::parse(&stream[at..]).unwrap().unwrap();
            assert_eq!(&got, m);
            at += used;
        }
        assert_eq!(at, stream.len());
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let b = Message::Offer {
            version: 1,
            state: state(),
        }
        .encode();
        for n in 0..b.len() {
            assert_eq!(Message::parse(&b[..n]), Ok(None), "{n} bytes");
        }
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let good = Message::Started.encode();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(Message::parse(&b), Err(DecodeError::Magic(_))));
        assert!(matches!(
            Message::parse(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::Magic(_))
        ));
        assert!(matches!(Message::parse(b"GE"), Err(DecodeError::Magic(_))));
        let mut b = good.clone();
        b[4] = 0x7f;
        assert_eq!(Message::parse(&b), Err(DecodeError::Kind(0x7f)));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_be_bytes());
        assert_eq!(Message::parse(&b), Err(DecodeError::TooLong(MAX_BODY + 1)));
        // a flipped body bit fails the checksum
        let mut b = Message::Refuse { reason: "x".into() }.encode();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert_eq!(Message::parse(&b), Err(DecodeError::Checksum));
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&fnv1a32(body).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn field_rules() {
        // unknown tags are skipped
        let b = frame(
            kind::REFUSE,
            &[0x7e, 0, 2, 1, 2, tag::REASON, 0, 2, b'h', b'i'],
        );
        assert_eq!(
            Message::parse(&b).unwrap().unwrap().0,
            Message::Refuse {
                reason: "hi".into()
            }
        );
        // missing, duplicate, truncated, wrong length, bad value
        assert_eq!(
            Message::parse(&frame(kind::REFUSE, &[])),
            Err(DecodeError::Missing("REASON"))
        );
        assert_eq!(
            Message::parse(&frame(
                kind::REFUSE,
                &[tag::REASON, 0, 1, b'a', tag::REASON, 0, 1, b'b']
            )),
            Err(DecodeError::Duplicate("REASON"))
        );
        assert_eq!(
            Message::parse(&frame(kind::REFUSE, &[tag::REASON, 0, 9, b'a'])),
            Err(DecodeError::Truncated { tag: tag::REASON })
        );
        assert_eq!(
            Message::parse(&frame(kind::REFUSE, &[tag::REASON])),
            Err(DecodeError::Truncated { tag: tag::REASON })
        );
        assert!(matches!(
            Message::parse(&frame(kind::STOPPED, &[tag::TOOK_US, 0, 2, 0, 1])),
            Err(DecodeError::Length {
                name: "TOOK_US",
                ..
            })
        ));
        assert!(matches!(
            Message::parse(&frame(kind::REFUSE, &[tag::REASON, 0, 1, 0xff])),
            Err(DecodeError::Value { name: "REASON", .. })
        ));
        // a subnet with host bits set is refused
        let mut s = state();
        s.peers.clear();
        let mut b = Message::Offer {
            version: 1,
            state: s,
        }
        .encode();
        let body_at = HEADER_LEN;
        let net_at = (body_at..b.len())
            .find(|&i| b[i] == tag::NETWORK && b[i + 1..i + 3] == [0, 5])
            .unwrap();
        b[net_at + 6] = 1; // 10.244.0.1/16
        let body = b[HEADER_LEN..].to_vec();
        b[12..16].copy_from_slice(&fnv1a32(&body).to_be_bytes());
        assert!(matches!(
            Message::parse(&b),
            Err(DecodeError::Value {
                name: "NETWORK",
                ..
            })
        ));
    }

    /// A Hello from a future build with a field this build does not know and a
    /// version range it does not speak: its versions are still readable.
    #[test]
    fn versions_of_a_future_hello() {
        let body = [
            tag::VERSION_MIN,
            0,
            2,
            0,
            7,
            tag::VERSION_MAX,
            0,
            2,
            0,
            9,
            0x99,
            0,
            1,
            0,
        ];
        let b = frame(kind::HELLO, &body);
        let (f, _) = Frame::parse(&b).unwrap().unwrap();
        assert_eq!(f.versions(), Ok(Versions { min: 7, max: 9 }));
        assert!(Message::decode(f).is_err(), "the rest does not decode");
        assert_eq!(VERSIONS.best_common(Versions { min: 7, max: 9 }), None);
    }

    #[test]
    fn common_versions() {
        let v = |min, max| Versions { min, max };
        assert_eq!(v(1, 3).best_common(v(2, 5)), Some(3));
        assert_eq!(v(1, 1).best_common(v(1, 1)), Some(1));
        assert_eq!(v(1, 2).best_common(v(3, 4)), None);
        assert_eq!(v(3, 4).best_common(v(1, 2)), None);
        assert_eq!(v(3, 1).best_common(v(1, 3)), None, "an empty range");
    }

    #[test]
    fn store_names_round_trip() {
        for r in [
            FdRole::Tap(0),
            FdRole::Tap(15),
            FdRole::UdpRx,
            FdRole::UdpTx(7),
            FdRole::Listener,
            FdRole::UdpRx6,
        ] {
            assert_eq!(FdRole::from_store_name(&r.store_name()), Some(r));
        }
        for bad in [
            "",
            "vxmesh-tap",
            "vxmesh-tapx",
            "vxmesh-tap256",
            "other",
            "vxmesh-udp-tx-1",
        ] {
            assert_eq!(FdRole::from_store_name(bad), None, "{bad}");
        }
    }

    fn arb_subnet() -> impl Strategy<Value = Subnet> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Subnet::new(Ipv4Addr::from(a), l).unwrap())
    }

    fn arb_peer() -> impl Strategy<Value = Peer> {
        (arb_subnet(), any::<u32>(), any::<[u8; 6]>()).prop_map(|(subnet, ip, mac)| Peer {
            ipv6: None,
            subnet,
            public_ip: Ipv4Addr::from(ip),
            vtep_mac: MacAddr(mac),
        })
    }

    fn arb_fingerprint() -> impl Strategy<Value = Fingerprint> {
        (
            "[a-z0-9]{1,15}",
            "(userspace|kernel|\\PC{0,8})",
            any::<u16>(),
            any::<bool>(),
            any::<u32>(),
            arb_subnet(),
            any::<u32>(),
            any::<u16>(),
            "\\PC{0,40}",
        )
            .prop_map(
                |(tap, dataplane, tap_queues, vnet_hdr, ip, network, vni, port, etcd_prefix)| {
                    Fingerprint {
                        tap,
                        dataplane,
                        tap_queues,
                        vnet_hdr,
                        public_ip: Ipv4Addr::from(ip),
                        network,
                        vni,
                        port,
                        ipv6_dataplane: if vni % 2 == 0 { "kernel" } else { "userspace" }.into(),
                        etcd_prefix,
                    }
                },
            )
    }

    fn arb_state() -> impl Strategy<Value = DataplaneState> {
        (
            arb_fingerprint(),
            proptest::option::of((arb_subnet(), any::<i64>())),
            any::<[u8; 6]>(),
            any::<u32>(),
            any::<u32>(),
            proptest::sample::subsequence(
                vec![
                    FdRole::Tap(0),
                    FdRole::Tap(1),
                    FdRole::UdpRx,
                    FdRole::UdpTx(0),
                    FdRole::UdpTx(9),
                    FdRole::Listener,
                ],
                0..=6,
            ),
            proptest::collection::vec(arb_peer(), 0..20),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                "\\PC{0,20}",
                any::<u64>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    fingerprint,
                    lease,
                    mac,
                    mtu,
                    tap_offloads,
                    fds,
                    peers,
                    (h, c, pid, build, at_ms, stopped),
                )| {
                    DataplaneState {
                        fingerprint,
                        lease,
                        vtep_mac: MacAddr(mac),
                        mtu,
                        tap_offloads,
                        fds,
                        peers,
                        handovers: h,
                        cold_starts: c,
                        pid,
                        build,
                        at_ms,
                        stopped,
                    }
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let versions = (any::<u16>(), any::<u16>()).prop_map(|(min, max)| Versions { min, max });
        prop_oneof![
            (
                versions.clone(),
                any::<u32>(),
                "\\PC{0,20}",
                arb_fingerprint()
            )
                .prop_map(|(versions, pid, build, fingerprint)| Message::Hello {
                    versions,
                    pid,
                    build,
                    fingerprint
                }),
            "\\PC{0,80}".prop_map(|reason| Message::Refuse { reason }),
            (versions, "\\PC{0,20}")
                .prop_map(|(versions, build)| Message::Incompatible { versions, build }),
            (any::<u16>(), arb_state())
                .prop_map(|(version, state)| Message::Offer { version, state }),
            Just(Message::Started),
            "\\PC{0,80}".prop_map(|reason| Message::Abort { reason }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(took_us, at_ms)| Message::Stopped { took_us, at_ms }),
            Just(Message::Release),
            Just(Message::Released),
            (any::<u16>(), arb_state())
                .prop_map(|(version, state)| Message::Stored { version, state }),
        ]
    }

    proptest! {
        #[test]
        fn prop_round_trip(m in arb_message()) {
            let b = m.encode();
            let (got, used) = Message::parse(&b).unwrap().unwrap();
            prop_assert_eq!(used, b.len());
            prop_assert_eq!(got, m);
        }

        /// Any bytes: an error, a request for more, or a message that re-encodes to
        /// exactly the bytes it came from (modulo skipped unknown fields) — never a
        /// panic, never more bytes consumed than given.
        #[test]
        fn prop_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..256), kind in 1u8..=10) {
            let mut framed = frame(kind, &b);
            for input in [b.as_slice(), framed.as_slice()] {
                if let Ok(Some((m, used))) = Message::parse(input) {
                    prop_assert!(used <= input.len());
                    let again = m.encode();
                    prop_assert_eq!(Message::parse(&again).unwrap().unwrap().0, m);
                }
            }
            // truncating a frame never yields a message
            framed.pop();
            prop_assert!(!matches!(Message::parse(&framed), Ok(Some(_))));
        }

        /// A corrupted byte in a valid frame is caught (magic, length, checksum) or
        /// leaves the message as it was (a reserved byte).
        #[test]
        fn prop_corruption(m in arb_message(), at in any::<proptest::sample::Index>(), x in 1u8..=255) {
            let mut b = m.encode();
            let i = at.index(b.len());
            b[i] ^= x;
            if let Ok(Some((got, _))) = Message::parse(&b) {
                prop_assert!(got == m || i == 4, "byte {} changed the message", i);
            }
        }
    }
}
