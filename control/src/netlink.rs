//! Netlink: the links, addresses, routes and neighbours the agent owns.
//!
//! A thin shell over `rtnetlink`: every change is idempotent (`replace`, and
//! deletes that treat "already gone" as done), so the agent can re-apply its whole
//! state after a restart or a lost event without special cases. Routes are added
//! with `onlink` so the kernel accepts a next hop (`<peer subnet>.0`) that is not on
//! any local subnet, exactly like flannel's vxlan backend.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::subnet::Subnet;
use vxmesh_dataplane::wire::MacAddr;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
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
    #[error(
        "no default IPv4 route: pass --iface (the underlay interface, e.g. eth1) or --public-ip"
    )]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address: pass --public-ip or pick another --iface")]
    NoAddress(String),
    #[error("no interface has address {0}: --iface must name an interface or one of this node's IPv4 addresses")]
    NoLinkWithAddress(Ipv4Addr),
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => m
            .code
            .map(|c| matches!(-c.get(), ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL))
            .unwrap_or(false),
        _ => false,
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

/// A netlink connection (its I/O task runs on the current tokio runtime).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
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
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(Self::req(format!("get addresses of {}", info.name)))?
        {
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

    /// The interface of the IPv4 default route (lowest metric first).
    pub async fn default_route_link(&self) -> Result<LinkInfo, NetlinkError> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut best: Option<(u32, u32)> = None; // (metric, oif)
        while let Some(r) = routes.try_next().await.map_err(Self::req("dump routes"))? {
            if r.header.destination_prefix_length != 0
                || r.header.address_family != AddressFamily::Inet
            {
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
        let (_, oif) = best.ok_or(NetlinkError::NoDefaultRoute)?;
        self.link_by_index(oif)
            .await?
            .ok_or(NetlinkError::NoDefaultRoute)
    }

    /// The interface holding `ip`.
    pub async fn link_with_address(&self, ip: Ipv4Addr) -> Result<LinkInfo, NetlinkError> {
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(Self::req("dump addresses"))?
        {
            let has = a
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip));
            if has {
                return self
                    .link_by_index(a.header.index)
                    .await?
                    .ok_or(NetlinkError::NoLinkWithAddress(ip));
            }
        }
        Err(NetlinkError::NoLinkWithAddress(ip))
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
        let mut existing = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        while let Some(a) = existing
            .try_next()
            .await
            .map_err(Self::req("get addresses"))?
        {
            let v4 = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if let Some(v) = v4 {
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
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), len)
            .replace()
            .execute()
            .await
            .map_err(Self::req(format!("add address {addr}/{len}")))
    }

    fn peer_route(subnet: &Subnet, index: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.addr(), subnet.prefix_len())
            .gateway(subnet.addr())
            .output_interface(index)
            .onlink()
            .build()
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

    /// Removes a neighbour entry; Ok if it is already gone.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut msg = rtnetlink::packet_route::neighbour::NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Err(e) if !is_gone(&e) => Err(Self::req(format!("delete neighbour {ip}"))(e)),
            _ => Ok(()),
        }
    }
}

/// Writes a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`).
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
}
