//! Netlink: the links, addresses, routes and neighbours the agent owns.
//!
//! A thin shell over `rtnetlink`: every change is idempotent (`replace`, and
//! deletes that treat "already gone" as done), so the agent can re-apply its whole
//! state after a restart or a lost event without special cases. Routes are added
//! with `onlink` so the kernel accepts a next hop (`<peer subnet>.0`) that is not on
//! any local subnet, exactly like flannel's vxlan backend.
//!
//! For the kernel dataplane it also creates and inspects vxlan links
//! (`ip link add … type vxlan`) and manages their forwarding database
//! (`bridge fdb replace <mac> dev <vxlan> dst <ip> self permanent`), and dumps what a
//! device carries (routes, neighbours, fdb entries) so stale entries can be pruned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as KernelLinkInfo,
    LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::netlink_batch::{Answer, BatchWriter};
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;
use vxmesh_dataplane::wire::MacAddr;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no interface {0}")]
    NoSuchLink(String),
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    /// One request of a batch failed (the others were carried out).
    #[error("netlink: {what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Failed { what: String, errno: i32 },
    /// One request of a batch got no answer: its outcome is unknown.
    #[error("netlink: {what}: no answer from the kernel ({why})")]
    Unanswered { what: String, why: String },
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            m.code.map(|c| is_gone_errno(-c.get())).unwrap_or(false)
        }
        _ => false,
    }
}

fn is_gone_errno(errno: i32) -> bool {
    matches!(errno, ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Whether a netlink request failed because an address or port is in use (a vxlan
/// device brought up while a socket holds its UDP port).
pub fn is_addr_in_use(e: &NetlinkError) -> bool {
    match e {
        NetlinkError::Request { source, .. } => errno(source) == Some(libc::EADDRINUSE),
        NetlinkError::Failed { errno, .. } => *errno == libc::EADDRINUSE,
        _ => false,
    }
}

/// Whether a netlink request failed because the object already exists.
pub fn is_exists(e: &NetlinkError) -> bool {
    matches!(e, NetlinkError::Request { source, .. } if errno(source) == Some(EEXIST))
}

/// A kernel vxlan device as the kernel reports it (`ip -d link show type vxlan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    pub vni: Option<u32>,
    /// Destination UDP port (`dstport`).
    pub port: Option<u16>,
    /// Source address of the outer packets (`local`: IPv4, or IPv6 on an IPv6
    /// device such as `flannel-v6.<VNI>`).
    pub local: Option<IpAddr>,
    /// The underlay device (`dev`).
    pub underlay_index: Option<u32>,
    pub learning: Option<bool>,
}

/// A kernel vxlan device to create, the way flannel's vxlan backend creates it:
/// `ip link add <name> address <mac> mtu <mtu> type vxlan id <vni> local <local>
/// dev <underlay> dstport <port> nolearning`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// IPv4 for `flannel.<VNI>`, IPv6 for `flannel-v6.<VNI>` (VXLAN over IPv6).
    pub local: Option<IpAddr>,
    pub underlay_index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
}

/// One forwarding-database entry of a vxlan device: frames to `mac` go to `dst`
/// (an IPv4 underlay's, or with `A = Ipv6Addr` an IPv6 one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry<A = Ipv4Addr> {
    pub mac: MacAddr,
    pub dst: Option<A>,
}

/// One neighbour entry of a device (IPv4, or IPv6 with `A = Ipv6Addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourEntry<A = Ipv4Addr> {
    pub ip: A,
    pub mac: Option<MacAddr>,
    pub permanent: bool,
}

/// A route in the main table leaving through a device (not the kernel's own prefix
/// routes): IPv4, or IPv6 with `A = Ipv6Addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRoute<A = Ipv4Addr> {
    /// The device it leaves through.
    pub oif: Option<u32>,
    pub destination: A,
    pub prefix_len: u8,
    pub gateway: Option<A>,
    message: RouteMessage,
}

impl DeviceRoute {
    /// A route as a dump of the main table reports it (`proto static`), for tests and
    /// plans.
    pub fn new(oif: u32, destination: Ipv4Addr, prefix_len: u8, gateway: Option<Ipv4Addr>) -> Self {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, prefix_len)
            .output_interface(oif);
        if let Some(g) = gateway {
            b = b.gateway(g);
        }
        DeviceRoute {
            oif: Some(oif),
            destination,
            prefix_len,
            gateway,
            message: b.build(),
        }
    }
}

impl DeviceRoute<Ipv6Addr> {
    /// An IPv6 route as a dump of the main table reports it, for tests and plans.
    pub fn new6(
        oif: u32,
        destination: Ipv6Addr,
        prefix_len: u8,
        gateway: Option<Ipv6Addr>,
    ) -> Self {
        let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(destination, prefix_len)
            .output_interface(oif);
        if let Some(g) = gateway {
            b = b.gateway(g);
        }
        DeviceRoute {
            oif: Some(oif),
            destination,
            prefix_len,
            gateway,
            message: b.build(),
        }
    }
}

/// An interface as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub ipv4: Vec<Ipv4Addr>,
}

/// What [`Netlink::link_identity`] finds out about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkIdentity {
    pub index: u32,
    /// The link kind (`"tun"` for TAP and TUN devices); empty for physical ones.
    pub kind: String,
    pub alias: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// The transmit queue's length (`ip link` `qlen`), in frames.
    pub txqueuelen: u32,
    /// Administratively up.
    pub up: bool,
}

/// One change to a device's per-peer state, for [`Netlink::apply`]. Adds replace
/// whatever is there; deletes treat "already gone" as done — the same requests the
/// single-shot methods ([`Netlink::replace_neighbour`] …) send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOp {
    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`
    Neighbour {
        index: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    },
    DeleteNeighbour {
        index: u32,
        ip: Ipv4Addr,
    },
    /// `ip route replace <subnet> via <subnet>.0 dev <index> onlink`
    PeerRoute {
        index: u32,
        subnet: Subnet,
    },
    DeletePeerRoute {
        index: u32,
        subnet: Subnet,
    },
    /// `ip route replace <subnet> via <via> dev <index>` (DirectRouting)
    DirectRoute {
        index: u32,
        subnet: Subnet,
        via: Ipv4Addr,
    },
    DeleteDirectRoute {
        index: u32,
        subnet: Subnet,
        via: Ipv4Addr,
    },
    /// `bridge fdb replace <mac> dev <index> dst <dst> self permanent`
    Fdb {
        index: u32,
        mac: MacAddr,
        dst: Ipv4Addr,
    },
    DeleteFdb {
        index: u32,
        mac: MacAddr,
        dst: Ipv4Addr,
    },
    /// Deletes a route as a dump found it (a stale one).
    DeleteRoute(DeviceRoute),
    /// IPv6 (`flannel-v6.<VNI>`): `ip -6 neigh replace <ip> lladdr <mac> dev <index>
    /// nud permanent`
    Neighbour6 {
        index: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    },
    DeleteNeighbour6 {
        index: u32,
        ip: Ipv6Addr,
    },
    /// `ip -6 route replace <subnet> via <subnet's first address> dev <index> onlink`
    PeerRoute6 {
        index: u32,
        subnet: Subnet6,
    },
    DeletePeerRoute6 {
        index: u32,
        subnet: Subnet6,
    },
    /// `bridge fdb replace <mac> dev <index> dst <IPv6> self permanent`
    Fdb6 {
        index: u32,
        mac: MacAddr,
        dst: Ipv6Addr,
    },
    DeleteFdb6 {
        index: u32,
        mac: MacAddr,
        dst: Ipv6Addr,
    },
    /// Deletes an IPv6 route as a dump found it (a stale one).
    DeleteRoute6(DeviceRoute<Ipv6Addr>),
    /// `ip -6 route replace <subnet> via <PublicIPv6> dev <index>` (DirectRouting)
    DirectRoute6 {
        index: u32,
        subnet: Subnet6,
        via: Ipv6Addr,
    },
    DeleteDirectRoute6 {
        index: u32,
        subnet: Subnet6,
        via: Ipv6Addr,
    },
}

impl PeerOp {
    fn is_delete(&self) -> bool {
        !matches!(
            self,
            PeerOp::Neighbour { .. }
                | PeerOp::PeerRoute { .. }
                | PeerOp::DirectRoute { .. }
                | PeerOp::Fdb { .. }
                | PeerOp::Neighbour6 { .. }
                | PeerOp::PeerRoute6 { .. }
                | PeerOp::Fdb6 { .. }
                | PeerOp::DirectRoute6 { .. }
        )
    }

    /// What the request does, for an error message.
    pub fn describe(&self) -> String {
        match self {
            PeerOp::Neighbour { index, ip, mac } => {
                format!("neighbour {ip} lladdr {mac} on #{index}")
            }
            PeerOp::DeleteNeighbour { index, ip } => format!("delete neighbour {ip} on #{index}"),
            PeerOp::PeerRoute { index, subnet } => {
                format!("route {subnet} via {} onlink dev #{index}", subnet.addr())
            }
            PeerOp::DeletePeerRoute { index, subnet } => {
                format!("delete route {subnet} dev #{index}")
            }
            PeerOp::DirectRoute { index, subnet, via } => {
                format!("route {subnet} via {via} dev #{index} (direct)")
            }
            PeerOp::DeleteDirectRoute { index, subnet, via } => {
                format!("delete route {subnet} via {via} dev #{index}")
            }
            PeerOp::Fdb { index, mac, dst } => format!("fdb {mac} dst {dst} on #{index}"),
            PeerOp::DeleteFdb { index, mac, dst } => {
                format!("delete fdb {mac} dst {dst} on #{index}")
            }
            PeerOp::DeleteRoute(r) => format!(
                "delete route {}/{} via {:?}",
                r.destination, r.prefix_len, r.gateway
            ),
            PeerOp::Neighbour6 { index, ip, mac } => {
                format!("neighbour {ip} lladdr {mac} on #{index}")
            }
            PeerOp::DeleteNeighbour6 { index, ip } => format!("delete neighbour {ip} on #{index}"),
            PeerOp::PeerRoute6 { index, subnet } => {
                format!("route {subnet} via {} onlink dev #{index}", subnet.addr())
            }
            PeerOp::DeletePeerRoute6 { index, subnet } => {
                format!("delete route {subnet} dev #{index}")
            }
            PeerOp::Fdb6 { index, mac, dst } => format!("fdb {mac} dst {dst} on #{index}"),
            PeerOp::DeleteFdb6 { index, mac, dst } => {
                format!("delete fdb {mac} dst {dst} on #{index}")
            }
            PeerOp::DeleteRoute6(r) => format!(
                "delete route {}/{} via {:?}",
                r.destination, r.prefix_len, r.gateway
            ),
            PeerOp::DirectRoute6 { index, subnet, via } => {
                format!("route {subnet} via {via} dev #{index} (direct)")
            }
            PeerOp::DeleteDirectRoute6 { index, subnet, via } => {
                format!("delete route {subnet} via {via} dev #{index}")
            }
        }
    }

    /// The request, serialized (sequence number 0; [`BatchWriter`] numbers it).
    fn serialize(&self) -> Vec<u8> {
        use rtnetlink::packet_core::{
            NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
            NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage as M;
        let replace = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let delete = NLM_F_REQUEST | NLM_F_ACK;
        let (flags, payload) = match self {
            PeerOp::Neighbour { index, ip, mac } => (
                replace,
                M::NewNeighbour(Netlink::permanent_neighbour((*ip).into(), *index, *mac)),
            ),
            PeerOp::DeleteNeighbour { index, ip } => (
                delete,
                M::DelNeighbour(Netlink::neighbour_key(*index, (*ip).into())),
            ),
            PeerOp::Neighbour6 { index, ip, mac } => (
                replace,
                M::NewNeighbour(Netlink::permanent_neighbour((*ip).into(), *index, *mac)),
            ),
            PeerOp::DeleteNeighbour6 { index, ip } => (
                delete,
                M::DelNeighbour(Netlink::neighbour_key(*index, (*ip).into())),
            ),
            PeerOp::PeerRoute6 { index, subnet } => {
                (replace, M::NewRoute(Netlink::peer_route6(subnet, *index)))
            }
            PeerOp::DeletePeerRoute6 { index, subnet } => {
                (delete, M::DelRoute(Netlink::peer_route6(subnet, *index)))
            }
            PeerOp::Fdb6 { index, mac, dst } => (
                replace,
                M::NewNeighbour(Netlink::fdb_message(*index, *mac, (*dst).into())),
            ),
            PeerOp::DeleteFdb6 { index, mac, dst } => (
                delete,
                M::DelNeighbour(Netlink::fdb_message(*index, *mac, (*dst).into())),
            ),
            PeerOp::DeleteRoute6(r) => (delete, M::DelRoute(r.message.clone())),
            PeerOp::DirectRoute6 { index, subnet, via } => (
                replace,
                M::NewRoute(Netlink::direct_route6(subnet, *via, *index)),
            ),
            PeerOp::DeleteDirectRoute6 { index, subnet, via } => (
                delete,
                M::DelRoute(Netlink::direct_route6(subnet, *via, *index)),
            ),
            PeerOp::PeerRoute { index, subnet } => {
                (replace, M::NewRoute(Netlink::peer_route(subnet, *index)))
            }
            PeerOp::DeletePeerRoute { index, subnet } => {
                (delete, M::DelRoute(Netlink::peer_route(subnet, *index)))
            }
            PeerOp::DirectRoute { index, subnet, via } => (
                replace,
                M::NewRoute(Netlink::direct_route(subnet, *via, *index)),
            ),
            PeerOp::DeleteDirectRoute { index, subnet, via } => (
                delete,
                M::DelRoute(Netlink::direct_route(subnet, *via, *index)),
            ),
            PeerOp::Fdb { index, mac, dst } => (
                replace,
                M::NewNeighbour(Netlink::fdb_message(*index, *mac, (*dst).into())),
            ),
            PeerOp::DeleteFdb { index, mac, dst } => (
                delete,
                M::DelNeighbour(Netlink::fdb_message(*index, *mac, (*dst).into())),
            ),
            PeerOp::DeleteRoute(r) => (delete, M::DelRoute(r.message.clone())),
        };
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// Requests per `sendmsg`: their acknowledgements (36 bytes each with
/// `NETLINK_CAP_ACK`, each in its own skb) must fit the socket's receive buffer.
pub const BATCH_MESSAGES: usize = 128;
/// The batch socket's receive buffer (room for a batch's acknowledgements).
const BATCH_RCVBUF: usize = 1 << 20;

/// The socket [`Netlink::apply`] sends batches on: non-blocking, because rtnetlink
/// handles a request inside the `sendmsg` that carries it — when `send` returns,
/// every answer is already queued.
#[derive(Debug)]
struct BatchSocket {
    socket: rtnetlink::sys::Socket,
    next_seq: u32,
    buf: Vec<u8>,
}

impl BatchSocket {
    fn open() -> std::io::Result<BatchSocket> {
        let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.set_non_blocking(true)?;
        // Errors echo only the request's header, not the whole request.
        socket.set_cap_ack(true)?;
        socket.set_rx_buf_sz(BATCH_RCVBUF)?;
        Ok(BatchSocket {
            socket,
            next_seq: 1,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends one batch of serialized requests and collects what the kernel said to
    /// each (pure decisions in [`crate::netlink_batch`]), in order.
    fn exchange(&mut self, messages: &[Vec<u8>]) -> Vec<Exchanged> {
        let mut w = BatchWriter::new(self.next_seq);
        let mut out: Vec<Option<Exchanged>> = (0..messages.len()).map(|_| None).collect();
        let mut sent = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match w.push(m) {
                Ok(_) => sent.push(i),
                Err(e) => out[i] = Some(Exchanged::Unanswered(e.to_string())),
            }
        }
        self.next_seq = self.next_seq.wrapping_add(w.len() as u32);
        let mut answers = w.answers();
        let mut why = String::from("the receive buffer overflowed");
        let kernel = rtnetlink::sys::SocketAddr::new(0, 0);
        if !w.is_empty() {
            match self.socket.send_to(w.bytes(), &kernel, 0) {
                Ok(_) => {
                    while answers.pending() > 0 {
                        self.buf.clear();
                        match self.socket.recv(&mut self.buf, 0) {
                            Ok(_) => {
                                if let Err(e) = answers.handle(&self.buf) {
                                    why = e.to_string();
                                    break;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                why = e.to_string();
                                break;
                            }
                        }
                    }
                }
                Err(e) => why = format!("sendmsg: {e}"),
            }
        }
        for (i, (a, reply)) in sent.into_iter().zip(answers.finish_with_replies()) {
            out[i] = Some(match a {
                Answer::Unanswered => Exchanged::Unanswered(why.clone()),
                a => Exchanged::Answered(a, reply),
            });
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Exchanged::Unanswered(why.clone())))
            .collect()
    }

    /// Sends one batch of changes; the outcome of each.
    fn send(&mut self, ops: &[PeerOp]) -> Vec<Result<(), NetlinkError>> {
        let messages: Vec<Vec<u8>> = ops.iter().map(PeerOp::serialize).collect();
        ops.iter()
            .zip(self.exchange(&messages))
            .map(|(op, x)| match x {
                Exchanged::Answered(Answer::Failed(e), _) if op.is_delete() && is_gone_errno(e) => {
                    Ok(())
                }
                Exchanged::Answered(Answer::Failed(errno), _) => Err(NetlinkError::Failed {
                    what: op.describe(),
                    errno,
                }),
                Exchanged::Answered(_, _) => Ok(()),
                Exchanged::Unanswered(why) => Err(NetlinkError::Unanswered {
                    what: op.describe(),
                    why,
                }),
            })
            .collect()
    }
}

/// What the kernel said to one request of a batch.
#[derive(Debug)]
enum Exchanged {
    /// Done or failed, with the message a get request returned.
    Answered(Answer, Option<Vec<u8>>),
    /// Not sent, or no answer came: why.
    Unanswered(String),
}

/// `RTM_GETNEIGH` for `ip` on device `index` (sequence number 0; the batch numbers it).
fn get_neighbour_request(index: u32, ip: Ipv4Addr) -> Vec<u8> {
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let payload = M::GetNeighbour(Netlink::neighbour_key(index, ip.into()));
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// The IPv4 entry in a neighbour message; None for anything else.
fn neighbour_entry(m: &NeighbourMessage) -> Option<NeighbourEntry> {
    neighbour_entry_of(m, |a| match a {
        NeighbourAddress::Inet(v) => Some(*v),
        _ => None,
    })
}

/// The IPv6 entry in a neighbour message; None for anything else.
fn neighbour_entry6(m: &NeighbourMessage) -> Option<NeighbourEntry<Ipv6Addr>> {
    neighbour_entry_of(m, |a| match a {
        NeighbourAddress::Inet6(v) => Some(*v),
        _ => None,
    })
}

fn neighbour_entry_of<A>(
    m: &NeighbourMessage,
    family: impl Fn(&NeighbourAddress) -> Option<A>,
) -> Option<NeighbourEntry<A>> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = family(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
            _ => {}
        }
    }
    Some(NeighbourEntry {
        ip: ip?,
        mac,
        permanent: m.header.state == NeighbourState::Permanent,
    })
}

/// A get's reply (one netlink message, header included) as a neighbour entry; None
/// if it is not an `RTM_NEWNEIGH` carrying an IPv4 entry.
fn parse_neighbour_reply(bytes: &[u8]) -> Option<NeighbourEntry> {
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage as M;
    match NetlinkMessage::<M>::deserialize(bytes).ok()?.payload {
        NetlinkPayload::InnerMessage(M::NewNeighbour(m)) => neighbour_entry(&m),
        _ => None,
    }
}

/// A netlink connection (its I/O task runs on the current tokio runtime).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
    /// Held while a dump is read. The kernel runs one dump per netlink socket at a
    /// time and refuses a second that arrives before the first is read out with
    /// EBUSY (`netlink_dump_start`); clones of this connection (the agent's loop and
    /// its blackhole-route task) would otherwise fail each other's dumps.
    dumps: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// A second socket that sends many requests in one `sendmsg` ([`Netlink::apply`]).
    batch: std::sync::Arc<std::sync::Mutex<BatchSocket>>,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        let batch = BatchSocket::open().map_err(NetlinkError::Connect)?;
        Ok(Netlink {
            handle,
            dumps: std::sync::Arc::default(),
            batch: std::sync::Arc::new(std::sync::Mutex::new(batch)),
        })
    }

    /// Carries out `ops` in order, [`BATCH_MESSAGES`] requests per `sendmsg` (the
    /// kernel handles the requests of one datagram in order and answers each); the
    /// outcome of each op, in the same order. Every op is tried whatever failed
    /// before it; a delete of something already gone counts as done.
    pub fn apply(&self, ops: &[PeerOp]) -> Vec<Result<(), NetlinkError>> {
        // A poisoned lock only means a panic elsewhere; the socket is still usable.
        let mut s = self
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(BATCH_MESSAGES) {
            out.extend(s.send(chunk));
        }
        out
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Serializes dumps on this connection (see [`Netlink::dumps`]); hold the guard
    /// until the dump's stream has ended.
    async fn dumping(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.dumps.lock().await
    }

    fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let what = what.into();
        move |source| NetlinkError::Request { what, source }
    }

    /// Looks an interface up by name.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(self.link_info(m).await?)),
            Ok(None) => Ok(None),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(Self::req(format!("get link {name}"))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(self.link_info(m).await?)),
            Ok(None) => Ok(None),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(Self::req(format!("get link #{index}"))(e)),
        }
    }

    /// Every address of interface `index`, both families (`ip addr show dev <index>`).
    async fn link_addresses(
        &self,
        index: u32,
    ) -> Result<Vec<rtnetlink::packet_route::address::AddressMessage>, NetlinkError> {
        let _dump = self.dumping().await;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(Self::req(format!("get addresses of #{index}")))?
        {
            // Only this link's, whoever applied the filter.
            if a.header.index == index {
                out.push(a);
            }
        }
        Ok(out)
    }

    async fn link_info(
        &self,
        m: rtnetlink::packet_route::link::LinkMessage,
    ) -> Result<LinkInfo, NetlinkError> {
        let index = m.header.index;
        let mut info = LinkInfo {
            index,
            name: String::new(),
            mtu: 1500,
            mac: None,
            ipv4: Vec::new(),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => info.name = n,
                LinkAttribute::Mtu(v) => info.mtu = v,
                LinkAttribute::Address(b) => info.mac = MacAddr::from_slice(&b),
                _ => {}
            }
        }
        for a in self.link_addresses(index).await? {
            for attr in a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    if !info.ipv4.contains(&ip) {
                        info.ipv4.push(ip);
                    }
                }
            }
        }
        Ok(info)
    }

    /// The output interface of the IPv4 default route (lowest metric first), if any.
    pub async fn default_route_oif(&self) -> Result<Option<u32>, NetlinkError> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.best_default_oif(dump, AddressFamily::Inet).await
    }

    /// The interface of the IPv6 default route with the lowest metric, if any.
    pub async fn default_route6_oif(&self) -> Result<Option<u32>, NetlinkError> {
        let dump = RouteMessageBuilder::<Ipv6Addr>::new().build();
        self.best_default_oif(dump, AddressFamily::Inet6).await
    }

    async fn best_default_oif(
        &self,
        dump: RouteMessage,
        family: AddressFamily,
    ) -> Result<Option<u32>, NetlinkError> {
        let mut routes = self.handle.route().get(dump).execute();
        let mut best: Option<(u32, u32)> = None; // (metric, oif)
        while let Some(r) = routes.try_next().await.map_err(Self::req("dump routes"))? {
            if r.header.destination_prefix_length != 0 || r.header.address_family != family {
                continue;
            }
            let mut oif = None;
            let mut metric = 0;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if let Some(oif) = oif {
                if best.is_none_or(|(m, _)| metric < m) {
                    best = Some((metric, oif));
                }
            }
        }
        Ok(best.map(|(_, oif)| oif))
    }

    pub async fn interfaces(&self) -> Result<Vec<crate::underlay::Interface>, NetlinkError> {
        use crate::underlay::{IfAddr, Interface};
        let mut out: Vec<Interface> = Vec::new();
        let _dump = self.dumping().await;
        let mut links = self.handle.link().get().execute();
        while let Some(m) = links.try_next().await.map_err(Self::req("dump links"))? {
            let name = link_name(&m);
            out.push(Interface {
                index: m.header.index,
                name,
                addrs: Vec::new(),
            });
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(Self::req("dump addresses"))?
        {
            if a.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links and the same as IFA_LOCAL elsewhere.
            let (mut local, mut address, mut flags) = (None, None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                    AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                    AddressAttribute::Flags(f) => flags = Some(*f),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            let flags = flags.unwrap_or_else(|| {
                AddressFlags::from_bits_retain(u32::from(a.header.flags.bits()))
            });
            if let Some(i) = out.iter_mut().find(|i| i.index == a.header.index) {
                i.addrs.push(IfAddr {
                    ip,
                    permanent: flags.contains(AddressFlags::Permanent),
                    deprecated: flags.contains(AddressFlags::Deprecated),
                });
            }
        }
        out.sort_by_key(|i| i.index);
        Ok(out)
    }

    /// The IPv6 addresses of interface `index` with their flags, in the kernel's
    /// order: what [`crate::underlay::choose_public_ipv6`] picks from.
    pub async fn ipv6_addresses(
        &self,
        index: u32,
    ) -> Result<Vec<crate::underlay::IfAddr6>, NetlinkError> {
        let mut out = Vec::new();
        for a in self.link_addresses(index).await? {
            if a.header.family != AddressFamily::Inet6 {
                continue;
            }
            let (mut ip, mut flags) = (None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Address(IpAddr::V6(v6)) => ip = Some(*v6),
                    AddressAttribute::Flags(f) => flags = Some(*f),
                    _ => {}
                }
            }
            let Some(ip) = ip else { continue };
            let flags = flags.unwrap_or_else(|| {
                AddressFlags::from_bits_retain(u32::from(a.header.flags.bits()))
            });
            out.push(crate::underlay::IfAddr6 {
                ip,
                permanent: flags.contains(AddressFlags::Permanent),
                deprecated: flags.contains(AddressFlags::Deprecated),
            });
        }
        Ok(out)
    }

    /// The route the kernel would use to `dst`: `ip route get <dst>`.
    pub async fn route_to(&self, dst: Ipv4Addr) -> Result<crate::underlay::RouteTo, NetlinkError> {
        let what = format!("ip route get {dst}");
        let mut routes = self
            .handle
            .route()
            .get(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst, 32)
                    .build(),
            )
            .execute();
        let r = routes
            .try_next()
            .await
            .map_err(Self::req(what))?
            .ok_or(NetlinkError::NoRoute(dst))?;
        let mut oif = None;
        let mut src = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(*ip),
                _ => {}
            }
        }
        Ok(crate::underlay::RouteTo {
            oif: oif.ok_or(NetlinkError::NoRoute(dst))?,
            src,
        })
    }

    /// Sets MAC, MTU and brings the link up.
    pub async fn configure_link(
        &self,
        index: u32,
        mac: MacAddr,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.0.to_vec())
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Self::req(format!(
                "set link #{index} mac {mac} mtu {mtu} up"
            )))
    }

    /// The kind of the named link (`"vxlan"`, `"tun"`, …) and its index, if it exists.
    pub async fn link_kind(&self, name: &str) -> Result<Option<(u32, String)>, NetlinkError> {
        Ok(self
            .link_identity(name)
            .await?
            .map(|id| (id.index, id.kind)))
    }

    /// Index, kind (`"tun"`, …) and alias (`ip link set … alias`) of the named link,
    /// if it exists: how the userspace dataplane recognises a TAP it left behind.
    pub async fn link_identity(&self, name: &str) -> Result<Option<LinkIdentity>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let mut id = LinkIdentity {
                    index: m.header.index,
                    kind: String::new(),
                    alias: None,
                    mac: None,
                    mtu: 0,
                    txqueuelen: 0,
                    up: m.header.flags.contains(LinkFlags::Up),
                };
                for a in &m.attributes {
                    match a {
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                if let KernelLinkInfo::Kind(k) = i {
                                    id.kind = k.to_string();
                                }
                            }
                        }
                        LinkAttribute::IfAlias(a) => id.alias = Some(a.clone()),
                        LinkAttribute::Address(b) => id.mac = MacAddr::from_slice(b),
                        LinkAttribute::Mtu(v) => id.mtu = *v,
                        LinkAttribute::TxQueueLen(v) => id.txqueuelen = *v,
                        _ => {}
                    }
                }
                Ok(Some(id))
            }
            Ok(None) => Ok(None),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(Self::req(format!("get link {name}"))(e)),
        }
    }

    /// Sets a link's alias (`ip link set <dev> alias <text>`).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Self::req(format!("set link #{index} alias {alias:?}")))
    }

    /// Every vxlan device in this network namespace.
    pub async fn vxlan_links(&self) -> Result<Vec<VxlanLink>, NetlinkError> {
        let _dump = self.dumping().await;
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(Self::req("dump links"))? {
            if let Some(v) = vxlan_of(m) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// The named vxlan device; `None` if there is no link of that name or it is
    /// not a vxlan device.
    pub async fn vxlan_by_name(&self, name: &str) -> Result<Option<VxlanLink>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(vxlan_of(m)),
            Ok(None) => Ok(None),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(Self::req(format!("get link {name}"))(e)),
        }
    }

    /// Creates a vxlan device (fails with EEXIST if the name, or the VNI on this
    /// port, is taken: see [`is_exists`]); returns its index. It is left down.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<u32, NetlinkError> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay_index)
            .port(spec.port)
            .learning(false);
        match spec.local {
            Some(IpAddr::V4(l)) => b = b.local(l),
            Some(IpAddr::V6(l)) => b = b.local6(l),
            None => {}
        }
        let msg = b.address(spec.mac.0.to_vec()).mtu(spec.mtu).build();
        let what = format!(
            "create vxlan device {} (id {} dstport {} local {} dev #{} nolearning address {} mtu {})",
            spec.name,
            spec.vni,
            spec.port,
            spec.local
                .map(|l| l.to_string())
                .unwrap_or_else(|| "any".into()),
            spec.underlay_index,
            spec.mac,
            spec.mtu
        );
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(Self::req(what))?;
        match self.link_kind(&spec.name).await? {
            Some((index, _)) => Ok(index),
            None => Err(NetlinkError::NoSuchLink(spec.name.clone())),
        }
    }

    /// Brings a link up, setting its MAC and MTU only when given: setting a MAC, even
    /// the same one, makes the kernel flush the device's neighbour entries
    /// (NETDEV_CHANGEADDR), permanent ones included.
    pub async fn set_link_up(
        &self,
        index: u32,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(mac) = mac {
            b = b.address(mac.0.to_vec());
        }
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(Self::req(format!(
                "set link #{index}{}{} up",
                mac.map(|m| format!(" address {m}")).unwrap_or_default(),
                mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
            )))
    }

    /// Sets the transmit queue length (for a TAP: how many frames the kernel holds for
    /// the reader before dropping).
    pub async fn set_txqueuelen(&self, index: u32, len: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).txqueuelen(len).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(Self::req(format!("set link #{index} txqueuelen {len}")))
    }

    /// The link's root qdisc: its kind (`"mq"`, `"noqueue"`, `"fq_codel"`, …) and its
    /// handle's major number (0 for one the kernel attached by default, as `tc` shows
    /// `mq 0:`); `None` when it has none yet (a device never brought up has the
    /// kernel's placeholder, which a dump does not show).
    pub async fn root_qdisc(&self, index: u32) -> Result<Option<(String, u16)>, NetlinkError> {
        let ifindex = i32::try_from(index).unwrap_or(i32::MAX);
        let _dump = self.dumping().await;
        let mut s = self.handle.qdisc().get().index(ifindex).execute();
        // Read to the end: a dump left half read would still be running in the
        // kernel when the next one is sent.
        let mut root = None;
        while let Some(m) = s
            .try_next()
            .await
            .map_err(Self::req(format!("dump qdiscs of link #{index}")))?
        {
            if root.is_some() || m.header.index != ifindex || m.header.parent != TcHandle::ROOT {
                continue;
            }
            let major = m.header.handle.major;
            root = Some(m.attributes.into_iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some((k, major)),
                _ => None,
            }));
        }
        Ok(root.flatten())
    }

    /// Makes `noqueue` the link's root qdisc (`tc qdisc replace dev … root noqueue`):
    /// frames go straight to the driver, as on a veth or the kernel's vxlan device.
    pub async fn set_root_noqueue(&self, index: u32) -> Result<(), NetlinkError> {
        use rtnetlink::packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::tc::TcMessage;
        use rtnetlink::packet_route::RouteNetlinkMessage as M;
        let what = || format!("set link #{index} root qdisc noqueue");
        // rtnetlink's qdisc request cannot name a kind: the message is built here.
        let mut tc = TcMessage::with_index(i32::try_from(index).unwrap_or(i32::MAX));
        tc.header.parent = TcHandle::ROOT;
        tc.attributes.push(TcAttribute::Kind("noqueue".to_string()));
        let mut req = NetlinkMessage::from(M::NewQueueDiscipline(tc));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut answers = self
            .handle
            .clone()
            .request(req)
            .map_err(Self::req(what()))?;
        while let Some(m) = answers.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(Self::req(what())(rtnetlink::Error::NetlinkError(e)));
                }
            }
        }
        Ok(())
    }

    /// Deletes a link; Ok if it is already gone.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_gone(&e) => Err(Self::req(format!("delete link #{index}"))(e)),
            _ => Ok(()),
        }
    }

    /// Whether the link is administratively up.
    pub async fn link_is_up(&self, index: u32) -> Result<bool, NetlinkError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(m.header.flags.contains(LinkFlags::Up)),
            Ok(None) => Ok(false),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(Self::req(format!("get link #{index}"))(e)),
        }
    }

    /// Makes `addr/len` the link's only IPv4 address.
    pub async fn set_only_address(
        &self,
        index: u32,
        addr: Ipv4Addr,
        len: u8,
    ) -> Result<(), NetlinkError> {
        self.set_only(index, IpAddr::V4(addr), len).await
    }

    /// Makes `addr/len` the link's only address of its family (an IPv6 link-local one
    /// stays: the kernel's, needed by IPv6 itself). An IPv6 one is added without
    /// duplicate address detection: it is the node's by its lease, and a vxlan device
    /// without a multicast fdb entry has no one to ask; with DAD it would stay tentative
    /// (unusable as a source) for a second.
    async fn set_only(&self, index: u32, addr: IpAddr, len: u8) -> Result<(), NetlinkError> {
        let mut stale = Vec::new();
        for a in self.link_addresses(index).await? {
            let have = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) if ip.is_ipv4() == addr.is_ipv4() => Some(*ip),
                _ => None,
            });
            let link_local =
                |ip: &IpAddr| matches!(ip, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80);
            if let Some(v) = have.filter(|v| !link_local(v)) {
                if v != addr || a.header.prefix_len != len {
                    stale.push(a);
                }
            }
        }
        for a in stale {
            if let Err(e) = self.handle.address().del(a).execute().await {
                if !is_gone(&e) {
                    return Err(Self::req("delete stale address")(e));
                }
            }
        }
        let mut req = self.handle.address().add(index, addr, len).replace();
        let nodad = addr.is_ipv6();
        if nodad {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(Self::req(format!(
            "add address {addr}/{len}{}",
            if nodad { " nodad" } else { "" }
        )))
    }

    fn peer_route(subnet: &Subnet, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.addr(), subnet.prefix_len())
            .gateway(subnet.addr())
            .output_interface(index)
            .onlink()
            .build()
    }

    fn direct_route(subnet: &Subnet, via: Ipv4Addr, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.addr(), subnet.prefix_len())
            .gateway(via)
            .output_interface(index)
            .build()
    }

    /// `ip route replace <subnet> via <via> dev <index>`: a peer on the underlay's L2
    /// network, reached without encapsulation (DirectRouting). It replaces an onlink
    /// overlay route for the same subnet, and the other way round.
    pub async fn replace_direct_route(
        &self,
        subnet: &Subnet,
        via: Ipv4Addr,
        index: u32,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(Self::direct_route(subnet, via, index))
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!("route {subnet} via {via} (direct)")))
    }

    /// Removes a direct route; Ok if it is already gone (or was replaced by another).
    pub async fn delete_direct_route(
        &self,
        subnet: &Subnet,
        via: Ipv4Addr,
        index: u32,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(Self::direct_route(subnet, via, index))
            .execute()
            .await
        {
            Err(e) if !is_gone(&e) => Err(Self::req(format!("delete route {subnet} via {via}"))(e)),
            _ => Ok(()),
        }
    }

    /// The IPv4 addresses of a link with their prefix lengths: the networks it is
    /// directly connected to.
    pub async fn ipv4_prefixes(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        Ok(self
            .prefixes(index)
            .await?
            .into_iter()
            .filter_map(|(ip, len)| match ip {
                IpAddr::V4(v4) => Some((v4, len)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// The same for IPv6, link-local addresses left out.
    pub async fn ipv6_prefixes(&self, index: u32) -> Result<Vec<(Ipv6Addr, u8)>, NetlinkError> {
        Ok(self
            .prefixes(index)
            .await?
            .into_iter()
            .filter_map(|(ip, len)| match ip {
                IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some((v6, len)),
                _ => None,
            })
            .collect())
    }

    async fn prefixes(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut out = Vec::new();
        for a in self.link_addresses(index).await? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    if !out.contains(&(*ip, a.header.prefix_len)) {
                        out.push((*ip, a.header.prefix_len));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `ip route replace <subnet> via <subnet>.0 dev <index> onlink`
    pub async fn replace_peer_route(
        &self,
        subnet: &Subnet,
        index: u32,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(Self::peer_route(subnet, index))
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!(
                "route {subnet} via {} onlink",
                subnet.addr()
            )))
    }

    /// Removes the route; Ok if it is already gone.
    pub async fn delete_peer_route(&self, subnet: &Subnet, index: u32) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(Self::peer_route(subnet, index))
            .execute()
            .await
        {
            Err(e) if !is_gone(&e) => Err(Self::req(format!("delete route {subnet}"))(e)),
            _ => Ok(()),
        }
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!("neighbour {ip} lladdr {mac}")))
    }

    /// The neighbour entry `ip` of device `index`, as a delete names it.
    fn neighbour_key(index: u32, ip: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = index;
        let (family, dst) = match ip {
            IpAddr::V4(v) => (AddressFamily::Inet, NeighbourAddress::Inet(v)),
            IpAddr::V6(v) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v)),
        };
        msg.header.family = family;
        msg.attributes.push(NeighbourAttribute::Destination(dst));
        msg
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`, as a message.
    fn permanent_neighbour(ip: IpAddr, index: u32, mac: MacAddr) -> NeighbourMessage {
        let mut m = Self::neighbour_key(index, ip);
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m
    }

    /// Removes a neighbour entry; Ok if it is already gone.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = Self::neighbour_key(index, ip.into());
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if !is_gone(&e) => Err(Self::req(format!("delete neighbour {ip}"))(e)),
            _ => Ok(()),
        }
    }
}

impl Netlink {
    fn fdb_message(index: u32, mac: MacAddr, dst: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(v) => NeighbourAddress::Inet(v),
                IpAddr::V6(v) => NeighbourAddress::Inet6(v),
            }));
        msg
    }

    /// `bridge fdb replace <mac> dev <vxlan> dst <dst> self permanent`: frames to
    /// `mac` are sent to `dst`. Replace, not append: a unicast MAC has one remote,
    /// and replacing it is how a changed PublicIP takes effect (the kernel ignores
    /// an append to an existing unicast entry).
    pub async fn replace_fdb(
        &self,
        index: u32,
        mac: MacAddr,
        dst: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let mut req = self.handle.neighbours().add_bridge(index, &mac.0).replace();
        *req.message_mut() = Self::fdb_message(index, mac, dst.into());
        req.execute()
            .await
            .map_err(Self::req(format!("fdb {mac} dst {dst} on #{index}")))
    }

    /// `bridge fdb del <mac> dev <vxlan> dst <dst> self`; Ok if there is no such
    /// entry (an entry of `mac` pointing elsewhere is left alone).
    pub async fn delete_fdb(
        &self,
        index: u32,
        mac: MacAddr,
        dst: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let msg = Self::fdb_message(index, mac, dst.into());
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if !is_gone(&e) => {
                Err(Self::req(format!("delete fdb {mac} dst {dst} on #{index}"))(e))
            }
            _ => Ok(()),
        }
    }

    /// The neighbour table of one family, entries of device `index` only.
    async fn dump_neighbours(
        &self,
        family: AddressFamily,
        index: u32,
    ) -> Result<Vec<rtnetlink::packet_route::neighbour::NeighbourMessage>, NetlinkError> {
        let _dump = self.dumping().await;
        let mut s = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(Self::req(format!("dump neighbours ({family:?})")))?
        {
            if m.header.ifindex == index {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The forwarding database of one device (`bridge fdb show dev <dev>`), entries
    /// with an IPv4 destination (or none).
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        Ok(self
            .fdb_dump(index)
            .await?
            .into_iter()
            .filter_map(|(mac, dst)| match dst {
                None => Some(FdbEntry { mac, dst: None }),
                Some(IpAddr::V4(v)) => Some(FdbEntry { mac, dst: Some(v) }),
                Some(IpAddr::V6(_)) => None,
            })
            .collect())
    }

    /// The same for an IPv6 device (`flannel-v6.<VNI>`): entries with an IPv6
    /// destination (or none).
    pub async fn fdb_entries6(&self, index: u32) -> Result<Vec<FdbEntry<Ipv6Addr>>, NetlinkError> {
        Ok(self
            .fdb_dump(index)
            .await?
            .into_iter()
            .filter_map(|(mac, dst)| match dst {
                None => Some(FdbEntry { mac, dst: None }),
                Some(IpAddr::V6(v)) => Some(FdbEntry { mac, dst: Some(v) }),
                Some(IpAddr::V4(_)) => None,
            })
            .collect())
    }

    async fn fdb_dump(&self, index: u32) -> Result<Vec<(MacAddr, Option<IpAddr>)>, NetlinkError> {
        let mut out = Vec::new();
        for m in self.dump_neighbours(AddressFamily::Bridge, index).await? {
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
                    NeighbourAttribute::Destination(d) => dst = fdb_destination(d),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push((mac, dst));
            }
        }
        Ok(out)
    }

    /// The IPv4 neighbour entries of one device (`ip -4 neigh show dev <dev>`).
    ///
    /// A dump walks the kernel's neighbour table, which every network namespace of
    /// the host shares: its cost grows with the host's entries, not this device's.
    /// To check known entries, [`Netlink::lookup_neighbours`] costs only theirs.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<NeighbourEntry>, NetlinkError> {
        Ok(self
            .dump_neighbours(AddressFamily::Inet, index)
            .await?
            .iter()
            .filter_map(neighbour_entry)
            .collect())
    }

    /// The IPv6 neighbour entries of one device (`ip -6 neigh show dev <dev>`).
    pub async fn neighbours6(
        &self,
        index: u32,
    ) -> Result<Vec<NeighbourEntry<Ipv6Addr>>, NetlinkError> {
        Ok(self
            .dump_neighbours(AddressFamily::Inet6, index)
            .await?
            .iter()
            .filter_map(neighbour_entry6)
            .collect())
    }

    /// The entries of device `index` for `ips` that exist (`ip -4 neigh get <ip> dev
    /// <dev>` for each, [`BATCH_MESSAGES`] per `sendmsg`): one hash lookup each in the
    /// kernel, whatever else the host's neighbour table holds. An address without an
    /// entry is left out; any other failure is an error.
    pub fn lookup_neighbours(
        &self,
        index: u32,
        ips: &[Ipv4Addr],
    ) -> Result<Vec<NeighbourEntry>, NetlinkError> {
        let mut s = self
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for chunk in ips.chunks(BATCH_MESSAGES) {
            let messages: Vec<Vec<u8>> = chunk
                .iter()
                .map(|ip| get_neighbour_request(index, *ip))
                .collect();
            for (ip, x) in chunk.iter().zip(s.exchange(&messages)) {
                let what = || format!("get neighbour {ip} on #{index}");
                match x {
                    Exchanged::Answered(Answer::Done, Some(reply)) => {
                        match parse_neighbour_reply(&reply) {
                            Some(e) if e.ip == *ip => out.push(e),
                            _ => {
                                return Err(NetlinkError::Unanswered {
                                    what: what(),
                                    why: "the reply is not that neighbour entry".into(),
                                })
                            }
                        }
                    }
                    Exchanged::Answered(Answer::Failed(ENOENT), _) => {}
                    Exchanged::Answered(Answer::Failed(errno), _) => {
                        return Err(NetlinkError::Failed {
                            what: what(),
                            errno,
                        })
                    }
                    Exchanged::Answered(_, _) => {
                        return Err(NetlinkError::Unanswered {
                            what: what(),
                            why: "acknowledged without a reply".into(),
                        })
                    }
                    Exchanged::Unanswered(why) => {
                        return Err(NetlinkError::Unanswered { what: what(), why })
                    }
                }
            }
        }
        Ok(out)
    }

    /// IPv4 routes of the main table that leave through `index`, except the
    /// kernel's own (proto kernel) prefix routes.
    pub async fn routes_via(&self, index: u32) -> Result<Vec<DeviceRoute>, NetlinkError> {
        self.main_routes(Some(index)).await
    }

    /// IPv4 routes of the main table through any device (but `except`) that have a
    /// gateway, except the kernel's own: where direct routes are looked for when the
    /// underlay interface is not known.
    pub async fn gateway_routes(&self, except: u32) -> Result<Vec<DeviceRoute>, NetlinkError> {
        let all = self.main_routes(None).await?;
        Ok(all
            .into_iter()
            .filter(|r| r.gateway.is_some() && r.oif != Some(except))
            .collect())
    }

    /// IPv6 routes of the main table with a gateway, through any device but `except`
    /// (the kernel's own left out).
    pub async fn gateway_routes6(
        &self,
        except: u32,
    ) -> Result<Vec<DeviceRoute<Ipv6Addr>>, NetlinkError> {
        let all = self.main_routes6(None).await?;
        Ok(all
            .into_iter()
            .filter(|r| r.gateway.is_some() && r.oif != Some(except))
            .collect())
    }

    /// IPv4 routes of the main table through any device, except the kernel's own:
    /// one dump, for a reconcile that looks at several devices.
    pub async fn main_table_routes(&self) -> Result<Vec<DeviceRoute>, NetlinkError> {
        self.main_routes(None).await
    }

    async fn main_routes(&self, index: Option<u32>) -> Result<Vec<DeviceRoute>, NetlinkError> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.main_routes_of(request, index, Ipv4Addr::UNSPECIFIED, |a| match a {
            RouteAddress::Inet(v) => Some(*v),
            _ => None,
        })
        .await
    }

    /// The main table's routes of one family (the request's), except the kernel's own,
    /// through `index` or any device; `addr` reads that family's addresses.
    async fn main_routes_of<A: Copy>(
        &self,
        request: RouteMessage,
        index: Option<u32>,
        unspecified: A,
        addr: impl Fn(&RouteAddress) -> Option<A>,
    ) -> Result<Vec<DeviceRoute<A>>, NetlinkError> {
        let family = request.header.address_family;
        let _dump = self.dumping().await;
        let mut s = self.handle.route().get(request).execute();
        let mut out = Vec::new();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(Self::req(format!("dump routes ({family:?})")))?
        {
            if r.header.address_family != family || r.header.protocol == RouteProtocol::Kernel {
                continue;
            }
            let mut oif = None;
            let mut table = u32::from(r.header.table);
            let mut destination = unspecified;
            let mut gateway = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(d) => destination = addr(d).unwrap_or(unspecified),
                    RouteAttribute::Gateway(g) => gateway = addr(g),
                    _ => {}
                }
            }
            if index.is_some_and(|i| oif != Some(i))
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
            {
                continue;
            }
            out.push(DeviceRoute {
                oif,
                destination,
                prefix_len: r.header.destination_prefix_length,
                gateway,
                message: r,
            });
        }
        Ok(out)
    }

    /// The main table's IPv4 blackhole routes with metric `metric`, as subnets (a
    /// route whose destination is not a subnet's first address cannot be one).
    pub async fn blackholes(&self, metric: u32) -> Result<Vec<Subnet>, NetlinkError> {
        Ok(self
            .main_routes(None)
            .await?
            .iter()
            .filter(|r| is_blackhole_with(&r.message, metric))
            .filter_map(|r| Subnet::new_exact(r.destination, r.prefix_len).ok())
            .collect())
    }

    /// [`Netlink::blackholes`] for IPv6.
    pub async fn blackholes6(&self, metric: u32) -> Result<Vec<Subnet6>, NetlinkError> {
        Ok(self
            .main_routes6(None)
            .await?
            .iter()
            .filter(|r| is_blackhole_with(&r.message, metric))
            .filter_map(|r| Subnet6::new_exact(r.destination, r.prefix_len).ok())
            .collect())
    }

    /// `ip route replace blackhole <subnet> metric <metric>` (IPv4 or IPv6).
    pub async fn replace_blackhole(&self, subnet: IpNet, metric: u32) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(blackhole_route(subnet, metric))
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!(
                "route blackhole {subnet} metric {metric}"
            )))
    }

    /// Removes that route; Ok if it is already gone.
    pub async fn delete_blackhole(&self, subnet: IpNet, metric: u32) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(blackhole_route(subnet, metric))
            .execute()
            .await
        {
            Err(e) if !is_gone(&e) => Err(Self::req(format!(
                "delete route blackhole {subnet} metric {metric}"
            ))(e)),
            _ => Ok(()),
        }
    }

    /// Deletes a route found by [`Netlink::routes_via`]; Ok if it is already gone.
    pub async fn delete_route<A: std::fmt::Display>(
        &self,
        route: &DeviceRoute<A>,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(route.message.clone())
            .execute()
            .await
        {
            Err(e) if !is_gone(&e) => Err(Self::req(format!(
                "delete route {}/{}",
                route.destination, route.prefix_len
            ))(e)),
            _ => Ok(()),
        }
    }
}

impl Netlink {
    /// `ip -6 route replace <subnet> via <subnet's first address> dev <index> onlink`,
    /// as flannel routes a peer's IPv6 subnet on `flannel-v6.<VNI>`.
    fn peer_route6(subnet: &Subnet6, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(subnet.addr(), subnet.prefix_len())
            .gateway(subnet.addr())
            .output_interface(index)
            .onlink()
            .build()
    }

    fn direct_route6(subnet: &Subnet6, via: Ipv6Addr, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(subnet.addr(), subnet.prefix_len())
            .gateway(via)
            .output_interface(index)
            .build()
    }

    /// IPv6 routes of the main table that leave through `index`, except the kernel's
    /// own (its prefix, link-local and multicast routes).
    pub async fn routes6_via(
        &self,
        index: u32,
    ) -> Result<Vec<DeviceRoute<Ipv6Addr>>, NetlinkError> {
        self.main_routes6(Some(index)).await
    }

    /// [`Self::main_routes`] for IPv6.
    async fn main_routes6(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<DeviceRoute<Ipv6Addr>>, NetlinkError> {
        let request = RouteMessageBuilder::<Ipv6Addr>::new().build();
        self.main_routes_of(request, index, Ipv6Addr::UNSPECIFIED, |a| match a {
            RouteAddress::Inet6(v) => Some(*v),
            _ => None,
        })
        .await
    }

    /// Makes `addr/len` the link's only global IPv6 address (see [`Self::set_only`]).
    pub async fn set_only_address6(
        &self,
        index: u32,
        addr: Ipv6Addr,
        len: u8,
    ) -> Result<(), NetlinkError> {
        self.set_only(index, IpAddr::V6(addr), len).await
    }
}

/// An fdb entry's destination. AF_BRIDGE messages carry NDA_DST undecoded (the
/// family does not say which IP version it is): four bytes are an IPv4 address,
/// sixteen an IPv6 one.
fn fdb_destination(d: &NeighbourAddress) -> Option<IpAddr> {
    match d {
        NeighbourAddress::Inet(v) => Some(IpAddr::V4(*v)),
        NeighbourAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|o| Ipv4Addr::from(o).into()),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|o| Ipv6Addr::from(o).into()),
            _ => None,
        },
        _ => None,
    }
}

fn vxlan_of(m: LinkMessage) -> Option<VxlanLink> {
    let mut v = VxlanLink {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        vni: None,
        port: None,
        local: None,
        underlay_index: None,
        learning: None,
    };
    let mut is_vxlan = false;
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => v.name = n,
            LinkAttribute::Mtu(x) => v.mtu = x,
            LinkAttribute::Address(b) => v.mac = MacAddr::from_slice(&b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        KernelLinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                        KernelLinkInfo::Data(InfoData::Vxlan(data)) => {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(x) => v.vni = Some(x),
                                    InfoVxlan::Port(x) => v.port = Some(x),
                                    InfoVxlan::Local(x) => v.local = Some(x.into()),
                                    InfoVxlan::Local6(x) => v.local = Some(x.into()),
                                    InfoVxlan::Link(x) => v.underlay_index = Some(x),
                                    InfoVxlan::Learning(x) => v.learning = Some(x),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    is_vxlan.then_some(v)
}

/// Sets a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`) unless it already holds
/// `value`. Reading first matters: a write of `ip_forward` takes the host-wide RTNL lock
/// (the kernel restarts the write while another task holds it, a busy loop when many
/// agents start together), and a host that set the value already may mount /proc/sys
/// read-only for the agent.
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    ensure_file_value(&Path::new("/proc/sys").join(key), value)
}

fn ensure_file_value(path: &Path, value: &str) -> std::io::Result<()> {
    if let Ok(current) = std::fs::read_to_string(path) {
        if current.trim() == value.trim() {
            return Ok(());
        }
    }
    std::fs::write(path, value)
}

/// A link the kernel announced deleted (`RTM_DELLINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedLink {
    pub index: u32,
    /// Empty if the announcement carried no name.
    pub name: String,
}

/// The deleted link a netlink message announces, if it announces one.
fn deleted_link_of(
    msg: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> Option<DeletedLink> {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) = &msg.payload else {
        return None;
    };
    Some(DeletedLink {
        index: l.header.index,
        name: link_name(l),
    })
}

/// Whether a message announces an address added or removed (IPv4 or IPv6).
fn is_address_news(
    msg: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> bool {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
    matches!(
        &msg.payload,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a))
            if matches!(a.header.family, AddressFamily::Inet | AddressFamily::Inet6)
    )
}

/// A link message's name (empty if it carries none).
fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What the link watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkNews {
    Deleted(DeletedLink),
    /// An address was added or removed somewhere in the namespace (the underlay's
    /// may have moved).
    Addresses,
    /// The socket's buffer filled and the kernel dropped announcements (ENOBUFS): any
    /// link may have been deleted meanwhile.
    Lost,
}

/// Subscribes to the kernel's link and address announcements (`RTNLGRP_LINK`,
/// `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`) in this network namespace and sends
/// each deleted link, and each address change, on the returned channel, from a task on the current runtime
/// (abort its handle to stop it). Announcements lost to a full socket buffer are
/// reported as [`LinkNews::Lost`]; the channel closes if the socket fails.
pub fn watch_link_deletions() -> Result<
    (
        tokio::sync::mpsc::Receiver<LinkNews>,
        tokio::task::JoinHandle<()>,
    ),
    NetlinkError,
> {
    use rtnetlink::sys::AsyncSocket;
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    let groups = rtnetlink::sys::SocketAddr::new(
        0,
        rtnetlink::constants::RTMGRP_LINK
            | rtnetlink::constants::RTMGRP_IPV4_IFADDR
            | rtnetlink::constants::RTMGRP_IPV6_IFADDR,
    );
    conn.socket_mut()
        .socket_mut()
        .bind(&groups)
        .map_err(NetlinkError::Connect)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(async move {
        let forward = async {
            while let Some((msg, _)) = messages.next().await {
                let news = match &msg.payload {
                    rtnetlink::packet_core::NetlinkPayload::Overrun(_) => Some(LinkNews::Lost),
                    _ if is_address_news(&msg) => Some(LinkNews::Addresses),
                    _ => deleted_link_of(&msg).map(LinkNews::Deleted),
                };
                if let Some(n) = news {
                    // A full channel already holds news for the reader to act on.
                    match tx.try_send(n) {
                        Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        };
        tokio::select! {
            () = conn => {}
            () = forward => {}
        }
    });
    Ok((rx, task))
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink_batch::tests::NEIGH;

    /// The deleted link the bytes of a netlink message announce (`None` for anything
    /// else, or bytes that do not parse).
    fn deleted_link(bytes: &[u8]) -> Option<DeletedLink> {
        use rtnetlink::packet_core::NetlinkMessage;
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).ok()?;
        deleted_link_of(&msg)
    }

    /// An `RTM_DELLINK` announcement as the kernel sends it for `ip link del vxmesh0`
    /// (header, ifinfomsg, IFLA_IFNAME; the kernel's other attributes left out), and
    /// what is not one.
    #[test]
    fn deleted_link_read_from_an_announcement() {
        let mut m = vec![
            0, 0, 0, 0, // length, set below
            17, 0, // RTM_DELLINK
            0, 0, // flags
            0, 0, 0, 0, // sequence
            0, 0, 0, 0, // port id
            0, 0, // ifi_family AF_UNSPEC, pad
            1, 0, // ARPHRD_ETHER
            7, 0, 0, 0, // ifi_index 7
            0x02, 0x10, 0, 0, // IFF_BROADCAST | IFF_MULTICAST
            0, 0, 0, 0, // ifi_change
            12, 0, 3, 0, // IFLA_IFNAME, 12 bytes
        ];
        m.extend_from_slice(b"vxmesh0\0");
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            deleted_link(&m),
            Some(DeletedLink {
                index: 7,
                name: "vxmesh0".into()
            })
        );
        // RTM_NEWLINK: not a deletion.
        let mut new = m.clone();
        new[4] = 16;
        assert_eq!(deleted_link(&new), None);
        // Cut short, or garbage: nothing, no panic.
        for n in 0..m.len() {
            assert_eq!(deleted_link(&m[..n]), None, "{n} bytes");
        }
        assert_eq!(deleted_link(&[0xff; 64]), None);
    }

    /// The address announcements the link watch passes on: added or removed
    /// (`ip addr add/del 192.168.100.31/24 dev eth0`, the same for IPv6), not a link's.
    #[test]
    fn address_news_read_from_an_announcement() {
        use rtnetlink::packet_core::NetlinkMessage;
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let news = |bytes: &[u8]| {
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .is_ok_and(|m| is_address_news(&m))
        };
        let mut m = vec![
            0, 0, 0, 0, // length, set below
            21, 0, // RTM_DELADDR
            0, 0, // flags
            0, 0, 0, 0, // sequence
            0, 0, 0, 0, // port id
            2, 24, 0x80, 0, // AF_INET, /24, IFA_F_PERMANENT, scope global
            2, 0, 0, 0, // ifa_index 2
            8, 0, 1, 0, 192, 168, 100, 31, // IFA_ADDRESS
            8, 0, 2, 0, 192, 168, 100, 31, // IFA_LOCAL
        ];
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_le_bytes());
        assert!(news(&m), "RTM_DELADDR");
        m[4] = 20;
        assert!(news(&m), "RTM_NEWADDR");
        let mut v6 = vec![
            0, 0, 0, 0, // length, set below
            20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // RTM_NEWADDR
            10, 64, 0x80, 0, // AF_INET6, /64, IFA_F_PERMANENT, scope global
            2, 0, 0, 0, // ifa_index 2
            20, 0, 1, 0, // IFA_ADDRESS, fd00:64::31
        ];
        v6.extend_from_slice(&[0xfd, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x31]);
        let len = v6.len() as u32;
        v6[..4].copy_from_slice(&len.to_le_bytes());
        assert!(news(&v6), "IPv6 RTM_NEWADDR");
        let mut link = m.clone();
        link[4] = 17; // RTM_DELLINK: the same bytes are no address
        assert!(!news(&link));
        for n in 0..m.len() {
            assert!(!news(&m[..n]), "{n} bytes");
        }
    }

    /// A sysctl that already holds the value is not written (a read-only file stays
    /// fine); one that differs is.
    #[test]
    fn sysctl_written_only_when_it_differs() {
        let dir = std::env::temp_dir().join(format!("vxmesh-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ip_forward");
        std::fs::write(&f, "1\n").unwrap();
        let mut perms = std::fs::metadata(&f).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&f, perms.clone()).unwrap();
        // Root ignores the mode bits, so "not written" is checked by the mtime too.
        let before = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        ensure_file_value(&f, "1").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), before);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "1\n");
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&f, perms).unwrap();
        std::fs::write(&f, "0\n").unwrap();
        ensure_file_value(&f, "1").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "1");
        // A file that cannot be read is written (the write's error is the answer).
        let missing = dir.join("absent/ip_forward");
        assert!(ensure_file_value(&missing, "1").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The batch's neighbour request is the one laid out by hand after rtnetlink(7).
    #[test]
    fn neighbour_request_bytes() {
        let op = PeerOp::Neighbour {
            index: 7,
            ip: Ipv4Addr::new(10, 244, 2, 0),
            mac: MacAddr([0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44]),
        };
        assert_eq!(op.serialize(), NEIGH.to_vec());
    }

    /// `ip -4 neigh get 10.244.2.0 dev #7`: RTM_GETNEIGH (30), NLM_F_REQUEST, an
    /// ndmsg with family, ifindex and nothing else (the kernel refuses a get with a
    /// state or type set), NDA_DST.
    #[test]
    fn neighbour_get_request_bytes() {
        assert_eq!(
            get_neighbour_request(7, Ipv4Addr::new(10, 244, 2, 0)),
            vec![
                0x24, 0, 0, 0, 0x1e, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
                0x02, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0, // ndmsg
                0x08, 0, 0x01, 0, 10, 244, 2, 0, // NDA_DST
            ]
        );
    }

    /// The kernel's reply to a get is an RTM_NEWNEIGH like the one we send to add
    /// the entry; anything else is not an entry.
    #[test]
    fn neighbour_replies_parse() {
        assert_eq!(
            parse_neighbour_reply(&NEIGH),
            Some(NeighbourEntry {
                ip: Ipv4Addr::new(10, 244, 2, 0),
                mac: Some(MacAddr([0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44])),
                permanent: true,
            })
        );
        let mut reachable = NEIGH;
        reachable[24] = 0x02; // NUD_REACHABLE
        assert!(!parse_neighbour_reply(&reachable).unwrap().permanent);
        let mut delete = NEIGH;
        delete[4] = 0x1d; // RTM_DELNEIGH
        assert_eq!(parse_neighbour_reply(&delete), None);
        assert_eq!(parse_neighbour_reply(&NEIGH[..30]), None);
        assert_eq!(parse_neighbour_reply(&[]), None);
    }

    /// Every op serializes to one well-formed message a batch accepts.
    #[test]
    fn every_op_is_one_message() {
        let subnet = Subnet::new(Ipv4Addr::new(10, 244, 3, 0), 24).unwrap();
        let mac = MacAddr([0x0e, 0, 0, 0, 0, 3]);
        let ip = Ipv4Addr::new(192, 168, 1, 3);
        let ops = [
            PeerOp::DeleteNeighbour { index: 7, ip },
            PeerOp::PeerRoute { index: 7, subnet },
            PeerOp::DeletePeerRoute { index: 7, subnet },
            PeerOp::DirectRoute {
                index: 2,
                subnet,
                via: ip,
            },
            PeerOp::DeleteDirectRoute {
                index: 2,
                subnet,
                via: ip,
            },
            PeerOp::Fdb {
                index: 7,
                mac,
                dst: ip,
            },
            PeerOp::DeleteFdb {
                index: 7,
                mac,
                dst: ip,
            },
        ];
        let mut w = BatchWriter::new(1);
        for op in &ops {
            w.push(&op.serialize()).unwrap();
        }
        assert_eq!(w.len(), ops.len());
        // Route requests: RTM_NEWROUTE 24 / RTM_DELROUTE 25, replace flags on adds.
        let route = PeerOp::PeerRoute { index: 7, subnet }.serialize();
        assert_eq!(&route[4..8], &[24, 0, 0x05, 0x05]);
        let del = PeerOp::DeletePeerRoute { index: 7, subnet }.serialize();
        assert_eq!(&del[4..8], &[25, 0, 0x05, 0x00]);
    }

    /// The IPv6 ops are the same requests in the IPv6 family: an ndmsg of family
    /// AF_INET6 (10) with a 16-byte NDA_DST; an fdb entry of family AF_BRIDGE (7) whose
    /// NDA_DST is 16 bytes; a route of family AF_INET6 with the onlink flag.
    #[test]
    fn ipv6_ops_are_ipv6_requests() {
        let ip: Ipv6Addr = "fd00:10:244:3::".parse().unwrap();
        let mac = MacAddr([0x06, 0, 0, 0, 0, 3]);
        let neigh = PeerOp::Neighbour6 { index: 9, ip, mac }.serialize();
        assert_eq!(&neigh[4..6], &[28, 0], "RTM_NEWNEIGH");
        assert_eq!(neigh[16], 10, "AF_INET6");
        assert_eq!(&neigh[20..24], &9u32.to_ne_bytes());
        assert_eq!(&neigh[24..26], &0x80u16.to_ne_bytes(), "NUD_PERMANENT");
        // NDA_DST: length 20, type 1, the address
        assert_eq!(&neigh[28..32], &[20, 0, 1, 0]);
        assert_eq!(&neigh[32..48], &ip.octets());
        let dst: Ipv6Addr = "fd00:64::3".parse().unwrap();
        let fdb = PeerOp::Fdb6 { index: 9, mac, dst }.serialize();
        assert_eq!(fdb[16], 7, "AF_BRIDGE");
        assert!(fdb.windows(16).any(|w| w == dst.octets()));
        let subnet: Subnet6 = "fd00:10:244:3::/64".parse().unwrap();
        let route = PeerOp::PeerRoute6 { index: 9, subnet }.serialize();
        assert_eq!(&route[4..8], &[24, 0, 0x05, 0x05]);
        assert_eq!(route[16], 10, "AF_INET6");
        assert_eq!(route[17], 64, "prefix length");
        // rtm_flags (RTNH_F_ONLINK = 4) at the end of the rtmsg
        assert_eq!(&route[24..28], &4u32.to_ne_bytes());
        let mut w = BatchWriter::new(1);
        for op in [
            PeerOp::DeleteNeighbour6 { index: 9, ip },
            PeerOp::DeletePeerRoute6 { index: 9, subnet },
            PeerOp::DeleteFdb6 { index: 9, mac, dst },
            PeerOp::DeleteRoute6(DeviceRoute::new6(9, ip, 64, Some(ip))),
        ] {
            assert!(op.is_delete());
            w.push(&op.serialize()).unwrap();
        }
        assert_eq!(w.len(), 4);
    }

    /// AF_BRIDGE dumps carry NDA_DST undecoded: its length says the family.
    #[test]
    fn fdb_destinations_by_length() {
        let v4 = NeighbourAddress::Other(vec![192, 0, 2, 3]);
        assert_eq!(fdb_destination(&v4), Some("192.0.2.3".parse().unwrap()));
        let six: Ipv6Addr = "fd00:64::3".parse().unwrap();
        let v6 = NeighbourAddress::Other(six.octets().to_vec());
        assert_eq!(fdb_destination(&v6), Some(IpAddr::V6(six)));
        assert_eq!(
            fdb_destination(&NeighbourAddress::Other(vec![1, 2, 3])),
            None
        );
        assert_eq!(fdb_destination(&NeighbourAddress::Other(vec![])), None);
    }
}

/// A destination of either family, for the routes that exist in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpNet {
    V4(Subnet),
    V6(Subnet6),
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpNet::V4(s) => s.fmt(f),
            IpNet::V6(s) => s.fmt(f),
        }
    }
}

fn blackhole_route(subnet: IpNet, metric: u32) -> RouteMessage {
    match subnet {
        IpNet::V4(s) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(s.addr(), s.prefix_len())
            .kind(RouteType::BlackHole)
            .priority(metric)
            .build(),
        IpNet::V6(s) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(s.addr(), s.prefix_len())
            .kind(RouteType::BlackHole)
            .priority(metric)
            .build(),
    }
}

/// Whether a dumped route is a blackhole route with this metric.
fn is_blackhole_with(m: &RouteMessage, metric: u32) -> bool {
    m.header.kind == RouteType::BlackHole
        && m.attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Priority(p) if *p == metric))
}
