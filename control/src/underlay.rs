//! Which interface carries VXLAN, and which address is advertised: flanneld's
//! choice (its `ipmatch.LookupExtIface`), as a pure function of the host's
//! interfaces and routes.
//!
//! In order, the first that yields an interface with a usable IPv4 address wins:
//! 1. each `--iface` in turn: an IPv4 address names the interface holding it (and is
//!    the address used), anything else an interface name (its first usable address);
//! 2. each `--iface-regex` in turn: first the interfaces, in index order, one of whose
//!    addresses matches (that address is used), then those whose name matches;
//! 3. `--iface-can-reach`: the interface of the route to that address (`ip route get`),
//!    with the route's preferred source address when it has one.
//!
//! With none of the three: the interface holding `--public-ip` if one does, else the
//! interface of the default route. The advertised PublicIP is `--public-ip`, else the
//! interface address; VXLAN is always sent from the interface address, so a node
//! behind NAT binds locally and advertises its public address.
//!
//! Usable addresses are flannel's: IPv4 unicast (not loopback, unspecified,
//! broadcast or multicast), not deprecated; global ones before link-local ones,
//! permanent before dynamic. Unlike flanneld, a regex that matches a name without a
//! usable address goes on to the next matching name instead of failing.
//!
//! A dual-stack network also needs the lease's PublicIPv6 ([`choose_public_ipv6`]):
//! `--public-ipv6`, else the chosen interface's first global IPv6 address (as
//! flanneld takes its interface's IPv6 address): not link-local, loopback,
//! multicast or deprecated, permanent before dynamic.
//!
//! The netlink lookups that build a [`Host`] live in [`crate::netlink`].

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::flags::UnderlayFlags;

/// One IPv4 address of an interface, with the flags that order them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    pub ip: Ipv4Addr,
    /// IFA_F_PERMANENT: configured, not from DHCP.
    pub permanent: bool,
    /// IFA_F_DEPRECATED: never used.
    pub deprecated: bool,
}

/// An interface as the choice needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub addrs: Vec<IfAddr>,
}

impl Interface {
    /// The addresses flannel would use, best first.
    pub fn usable(&self) -> Vec<Ipv4Addr> {
        let mut a: Vec<&IfAddr> = self
            .addrs
            .iter()
            .filter(|a| {
                let ip = a.ip;
                !a.deprecated
                    && !ip.is_loopback()
                    && !ip.is_unspecified()
                    && !ip.is_broadcast()
                    && !ip.is_multicast()
            })
            .collect();
        // Stable: the kernel's order within each class.
        a.sort_by_key(|a| (a.ip.is_link_local(), !a.permanent));
        a.into_iter().map(|a| a.ip).collect()
    }

    fn holds(&self, ip: Ipv4Addr) -> bool {
        self.addrs.iter().any(|a| a.ip == ip)
    }
}

/// The route the kernel would use to a destination (`ip route get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    pub oif: u32,
    pub src: Option<Ipv4Addr>,
}

/// What the choice depends on; the shell fills it from netlink.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Every interface, in index order.
    pub interfaces: Vec<Interface>,
    /// Output interface of the best IPv4 default route.
    pub default_route: Option<u32>,
    /// `ip route get <--iface-can-reach>`, looked up only when that flag is set
    /// (`Err`: the kernel's answer, e.g. "network unreachable").
    pub route_to_can_reach: Option<Result<RouteTo, String>>,
}

/// The chosen underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub index: u32,
    pub name: String,
    /// The interface address VXLAN is sent from.
    pub local_ip: Ipv4Addr,
    /// The address advertised to peers (the lease's PublicIP).
    pub public_ip: Ipv4Addr,
    /// Which rule chose it, for the log: `--iface eth1`, `default route`.
    pub by: String,
    /// Candidates that did not work out, in the order tried (logged at info, as
    /// flanneld does).
    pub passed_over: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnderlayError {
    #[error("no default IPv4 route: pass --iface (the underlay interface, e.g. eth1), --iface-regex, --iface-can-reach or --public-ip")]
    NoDefaultRoute,
    #[error("interface {0} (of the default route) has no usable IPv4 address: pass --iface or --public-ip")]
    DefaultHasNoAddress(String),
    #[error("no interface matches {tried}; interfaces here: {available}")]
    NoMatch { tried: String, available: String },
}

/// One IPv6 address of an interface, with the flags that order them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr6 {
    pub ip: Ipv6Addr,
    /// IFA_F_PERMANENT: configured, not from SLAAC or DHCPv6.
    pub permanent: bool,
    /// IFA_F_DEPRECATED: never used.
    pub deprecated: bool,
}

/// The chosen interface has no IPv6 address to advertise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the network config is dual stack (EnableIPv6), so this node's lease needs a PublicIPv6, and interface {iface} has no global IPv6 address (only: {found}): give --public-ipv6 (FLANNELD_PUBLIC_IPV6) with this node's IPv6 underlay address, or add one to {iface}")]
pub struct NoPublicIpv6 {
    pub iface: String,
    pub found: String,
}

/// The PublicIPv6 of this node's dual-stack lease: `--public-ipv6`, else the first
/// global address of the underlay interface `iface` (see the module documentation).
pub fn choose_public_ipv6(
    flag: Option<Ipv6Addr>,
    iface: &str,
    addrs: &[IfAddr6],
) -> Result<Ipv6Addr, NoPublicIpv6> {
    if let Some(ip) = flag {
        return Ok(ip);
    }
    let mut usable: Vec<&IfAddr6> = addrs
        .iter()
        .filter(|a| {
            let ip = a.ip;
            !a.deprecated
                && !ip.is_loopback()
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && !ip.is_unicast_link_local()
                && !crate::subnet6::is_ipv4_embedded(ip)
        })
        .collect();
    usable.sort_by_key(|a| !a.permanent);
    match usable.first() {
        Some(a) => Ok(a.ip),
        None => Err(NoPublicIpv6 {
            iface: iface.to_string(),
            found: if addrs.is_empty() {
                "no IPv6 address".to_string()
            } else {
                addrs
                    .iter()
                    .map(|a| {
                        let mut t = a.ip.to_string();
                        if a.deprecated {
                            t.push_str(" (deprecated)");
                        }
                        t
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

fn by_index(host: &Host, index: u32) -> Option<&Interface> {
    host.interfaces.iter().find(|i| i.index == index)
}

fn pick(i: &Interface, local: Option<Ipv4Addr>, by: String) -> Result<Choice, String> {
    let local_ip = match local {
        Some(ip) => {
            if let Some(what) = crate::peers::unusable_public_ip(ip) {
                return Err(format!(
                    "{by}: {ip} is {what}, which no peer can send VXLAN to; name the underlay interface or its address"
                ));
            }
            ip
        }
        None => *i
            .usable()
            .first()
            .ok_or_else(|| format!("{by}: interface {} has no usable IPv4 address", i.name))?,
    };
    Ok(Choice {
        index: i.index,
        name: i.name.clone(),
        local_ip,
        public_ip: local_ip,
        by,
        passed_over: Vec::new(),
    })
}

fn by_iface(host: &Host, spec: &str) -> Result<Choice, String> {
    let by = format!("--iface {spec}");
    match spec.parse::<Ipv4Addr>() {
        Ok(ip) => {
            let i = host
                .interfaces
                .iter()
                .find(|i| i.holds(ip))
                .ok_or_else(|| format!("{by}: no interface has address {ip}"))?;
            pick(i, Some(ip), by)
        }
        Err(_) => {
            let i = host
                .interfaces
                .iter()
                .find(|i| i.name == spec)
                .ok_or_else(|| format!("{by}: no such interface"))?;
            pick(i, None, by)
        }
    }
}

fn by_regex(host: &Host, re: &regex::Regex) -> Result<Choice, String> {
    let by = format!("--iface-regex {}", re.as_str());
    for i in &host.interfaces {
        if let Some(ip) = i
            .usable()
            .into_iter()
            .find(|ip| re.is_match(&ip.to_string()))
        {
            return pick(i, Some(ip), by);
        }
    }
    for i in host.interfaces.iter().filter(|i| re.is_match(&i.name)) {
        if let Ok(c) = pick(i, None, by.clone()) {
            return Ok(c);
        }
    }
    Err(format!(
        "{by}: matches no usable address and no interface name with one"
    ))
}

fn by_route(host: &Host, dst: Ipv4Addr) -> Result<Choice, String> {
    let by = format!("--iface-can-reach {dst}");
    let route = match &host.route_to_can_reach {
        Some(Ok(r)) => *r,
        Some(Err(e)) => return Err(format!("{by}: no route: {e}")),
        None => return Err(format!("{by}: no route")),
    };
    let i = by_index(host, route.oif)
        .ok_or_else(|| format!("{by}: the route's interface #{} is gone", route.oif))?;
    let src = route.src.filter(|s| i.holds(*s));
    pick(i, src, by)
}

/// Chooses the underlay as flanneld would (see the module comment).
pub fn choose(flags: &UnderlayFlags, host: &Host) -> Result<Choice, UnderlayError> {
    let explicit = !flags.ifaces.is_empty()
        || !flags.iface_regexes.is_empty()
        || flags.iface_can_reach.is_some();
    let mut choice = if explicit {
        let mut passed_over = Vec::new();
        let attempts = flags
            .ifaces
            .iter()
            .map(|s| by_iface(host, s))
            .chain(flags.iface_regexes.iter().map(|re| by_regex(host, re)))
            .chain(flags.iface_can_reach.map(|dst| by_route(host, dst)));
        let mut found = None;
        for a in attempts {
            match a {
                Ok(c) => {
                    found = Some(c);
                    break;
                }
                Err(why) => passed_over.push(why),
            }
        }
        match found {
            Some(mut c) => {
                c.passed_over = passed_over;
                c
            }
            None => return Err(no_match(flags, host)),
        }
    } else {
        let holder = flags.public_ip.and_then(|ip| {
            host.interfaces
                .iter()
                .find(|i| i.holds(ip))
                .map(|i| (i, ip))
        });
        match holder {
            Some((i, ip)) => pick(i, Some(ip), format!("--public-ip {ip}"))
                .map_err(|_| UnderlayError::NoDefaultRoute)?,
            None => {
                let i = host
                    .default_route
                    .and_then(|oif| by_index(host, oif))
                    .ok_or(UnderlayError::NoDefaultRoute)?;
                pick(i, None, "default route".into())
                    .map_err(|_| UnderlayError::DefaultHasNoAddress(i.name.clone()))?
            }
        }
    };
    if let Some(ip) = flags.public_ip {
        choice.public_ip = ip;
    }
    Ok(choice)
}

/// The underlay interface of a node on an IPv6-only network (its PublicIPv6 is then
/// [`choose_public_ipv6`] of it): the first `--iface` that names an interface (or an
/// IPv4 address one holds), else the first interface whose name an `--iface-regex`
/// matches, else the interface of the IPv6 default route (`default6`), else that of
/// the IPv4 one (`host.default_route`). `--iface-can-reach` names an IPv4
/// destination and is not used here.
pub fn choose_ipv6_only(
    flags: &UnderlayFlags,
    host: &Host,
    default6: Option<u32>,
) -> Result<(u32, String, String), String> {
    let named = |spec: &String| {
        host.interfaces
            .iter()
            .find(|i| match spec.parse::<Ipv4Addr>() {
                Ok(ip) => i.holds(ip),
                Err(_) => i.name == *spec,
            })
            .map(|i| (i, format!("--iface {spec}")))
    };
    let matched = |re: &regex::Regex| {
        host.interfaces
            .iter()
            .find(|i| i.name != "lo" && re.is_match(&i.name))
            .map(|i| (i, format!("--iface-regex {}", re.as_str())))
    };
    let explicit = !flags.ifaces.is_empty() || !flags.iface_regexes.is_empty();
    let found = if explicit {
        flags
            .ifaces
            .iter()
            .find_map(named)
            .or_else(|| flags.iface_regexes.iter().find_map(matched))
    } else {
        default6
            .and_then(|oif| by_index(host, oif))
            .map(|i| (i, "IPv6 default route".to_string()))
            .or_else(|| {
                host.default_route
                    .and_then(|oif| by_index(host, oif))
                    .map(|i| (i, "IPv4 default route".to_string()))
            })
    };
    match found {
        Some((i, by)) => Ok((i.index, i.name.clone(), by)),
        None if explicit => Err(format!(
            "no interface matches --iface {:?} or --iface-regex {:?}; interfaces here: {}",
            flags.ifaces,
            flags.iface_regexes.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            host.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
        None => Err("no default route (IPv6 or IPv4) to choose the underlay by: give --iface (and --public-ipv6 if its address is not the one to advertise)".into()),
    }
}

/// What a running node does about its underlay, checked again ([`recheck`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Recheck {
    /// The address VXLAN is sent from is still on its interface: nothing, even if a
    /// fresh start would now choose otherwise (flanneld chooses once, at start).
    Unchanged,
    /// That address is gone from its interface (renumbered by hand, a DHCP lease
    /// that changed, an interface made again), and the flags choose this now.
    Moved(Choice),
    /// It is gone and nothing can be chosen now (between an address's removal and
    /// the next one's arrival): the node keeps what it has and looks again.
    Gone(UnderlayError),
}

/// Whether the node's PublicIPv6 (dual stack) moved: `Ok(None)` while `current` is
/// still one of the underlay interface's addresses `addrs`, or when `--public-ipv6`
/// gives it (`flag`: it never moves); else the address chosen now, as at the start
/// ([`choose_public_ipv6`]), or why there is none.
pub fn recheck_ipv6(
    flag: Option<Ipv6Addr>,
    iface: &str,
    addrs: &[IfAddr6],
    current: Ipv6Addr,
) -> Result<Option<Ipv6Addr>, NoPublicIpv6> {
    if flag.is_some() || addrs.iter().any(|a| a.ip == current) {
        return Ok(None);
    }
    choose_public_ipv6(None, iface, addrs).map(Some)
}

/// Whether the node's underlay moved: `local_ip` no longer on interface `index`,
/// then chosen again by the same flags as at the start.
pub fn recheck(flags: &UnderlayFlags, host: &Host, index: u32, local_ip: Ipv4Addr) -> Recheck {
    if host
        .interfaces
        .iter()
        .any(|i| i.index == index && i.holds(local_ip))
    {
        return Recheck::Unchanged;
    }
    match choose(flags, host) {
        Ok(c) => Recheck::Moved(c),
        Err(e) => Recheck::Gone(e),
    }
}

fn no_match(flags: &UnderlayFlags, host: &Host) -> UnderlayError {
    let mut tried: Vec<String> = flags
        .ifaces
        .iter()
        .map(|s| format!("--iface {s}"))
        .collect();
    tried.extend(
        flags
            .iface_regexes
            .iter()
            .map(|r| format!("--iface-regex {}", r.as_str())),
    );
    if let Some(ip) = flags.iface_can_reach {
        tried.push(format!("--iface-can-reach {ip}"));
    }
    let mut available = String::new();
    for (n, i) in host.interfaces.iter().enumerate() {
        if n > 0 {
            available.push_str(", ");
        }
        let addrs: Vec<String> = i.usable().iter().map(ToString::to_string).collect();
        let _ = write!(available, "{}[{}]", i.name, addrs.join(" "));
    }
    UnderlayError::NoMatch {
        tried: tried.join(", "),
        available,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a6(ip: &str, permanent: bool, deprecated: bool) -> IfAddr6 {
        IfAddr6 {
            ip: ip.parse().unwrap(),
            permanent,
            deprecated,
        }
    }

    #[test]
    fn public_ipv6_is_the_flag_else_the_first_global_address() {
        // `ip -6 addr show eth1` on a lab node: link-local, a SLAAC address, a static one.
        let addrs = [
            a6("fe80::5054:ff:fe12:3456", true, false),
            a6("2001:db8:64::5054:ff:fe12:3456", false, false),
            a6("fd00:64::3", true, false),
        ];
        let flag: Ipv6Addr = "fd00:99::1".parse().unwrap();
        assert_eq!(choose_public_ipv6(Some(flag), "eth1", &addrs), Ok(flag));
        assert_eq!(
            choose_public_ipv6(None, "eth1", &addrs),
            Ok("fd00:64::3".parse().unwrap()),
            "permanent before dynamic"
        );
        assert_eq!(
            choose_public_ipv6(None, "eth1", &addrs[..2]),
            Ok("2001:db8:64::5054:ff:fe12:3456".parse().unwrap())
        );
        let e = choose_public_ipv6(
            None,
            "eth1",
            &[
                addrs[0],
                a6("fd00:64::4", true, true),
                a6("::1", true, false),
            ],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("interface eth1 has no global IPv6 address")
                && msg.contains("fe80::5054:ff:fe12:3456, fd00:64::4 (deprecated), ::1")
                && msg.contains("--public-ipv6"),
            "{msg}"
        );
        let msg = choose_public_ipv6(None, "eth1", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(only: no IPv6 address)"), "{msg}");
    }
    use regex::Regex;

    fn addr(ip: &str) -> IfAddr {
        IfAddr {
            ip: ip.parse().unwrap(),
            permanent: true,
            deprecated: false,
        }
    }

    fn iface(index: u32, name: &str, addrs: &[&str]) -> Interface {
        Interface {
            index,
            name: name.into(),
            addrs: addrs.iter().map(|a| addr(a)).collect(),
        }
    }

    /// lo, eth0 (default route, 10.0.2.15, NAT'd by a VM host), eth1 (cluster network,
    /// 192.168.56.11), eth2 (down to nothing), docker0.
    fn host() -> Host {
        Host {
            interfaces: vec![
                iface(1, "lo", &["127.0.0.1"]),
                iface(2, "eth0", &["10.0.2.15"]),
                iface(3, "eth1", &["192.168.56.11", "192.168.56.200"]),
                iface(4, "eth2", &[]),
                iface(5, "docker0", &["172.17.0.1"]),
            ],
            default_route: Some(2),
            route_to_can_reach: None,
        }
    }

    fn flags() -> UnderlayFlags {
        UnderlayFlags::default()
    }

    /// An IPv6-only node's underlay: the flags as flanneld reads them (a name, an
    /// IPv4 address of the interface, a regex), else the IPv6 default route, else
    /// the IPv4 one; no IPv4 address is needed on it.
    #[test]
    fn an_ipv6_only_node_chooses_by_flags_then_the_ipv6_default_route() {
        let h = host();
        let by = |f: &UnderlayFlags, d6: Option<u32>| {
            choose_ipv6_only(f, &h, d6).map(|(i, name, by)| format!("{i} {name} {by}"))
        };
        assert_eq!(by(&flags(), Some(4)).unwrap(), "4 eth2 IPv6 default route");
        assert_eq!(by(&flags(), None).unwrap(), "2 eth0 IPv4 default route");
        let f = UnderlayFlags {
            ifaces: vec!["nope".into(), "192.168.56.200".into()],
            ..flags()
        };
        assert_eq!(by(&f, Some(4)).unwrap(), "3 eth1 --iface 192.168.56.200");
        let f = UnderlayFlags {
            iface_regexes: vec![regex::Regex::new("^docker").unwrap()],
            ..flags()
        };
        assert_eq!(by(&f, Some(4)).unwrap(), "5 docker0 --iface-regex ^docker");
        let f = UnderlayFlags {
            ifaces: vec!["nope".into()],
            ..flags()
        };
        let e = by(&f, Some(4)).unwrap_err();
        assert!(
            e.contains("no interface matches") && e.contains("eth2"),
            "{e}"
        );
        let none = Host {
            default_route: None,
            ..host()
        };
        let e = choose_ipv6_only(&flags(), &none, None).unwrap_err();
        assert!(e.contains("--iface"), "{e}");
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn recheck_ipv6_moves_only_when_the_address_is_gone() {
        let a6 = |ip: &str, permanent: bool| IfAddr6 {
            ip: ip.parse().unwrap(),
            permanent,
            deprecated: false,
        };
        let cur: Ipv6Addr = "fd00:64::11".parse().unwrap();
        let here = [a6("fe80::1", true), a6("fd00:64::11", true)];
        assert_eq!(recheck_ipv6(None, "eth1", &here, cur), Ok(None));
        // A new prefix (SLAAC renumbering): the old address gone, the new one chosen.
        let moved = [a6("fe80::1", true), a6("fd00:65::11", false)];
        assert_eq!(
            recheck_ipv6(None, "eth1", &moved, cur),
            Ok(Some("fd00:65::11".parse().unwrap()))
        );
        // --public-ipv6 never moves; nothing global left is an error saying so.
        assert_eq!(recheck_ipv6(Some(cur), "eth1", &moved, cur), Ok(None));
        let e = recheck_ipv6(None, "eth1", &[a6("fe80::1", true)], cur).unwrap_err();
        assert_eq!(e.iface, "eth1");
    }

    #[test]
    fn recheck_moves_only_when_the_address_is_gone() {
        let f = UnderlayFlags {
            ifaces: vec!["eth1".into()],
            ..flags()
        };
        // Still there, even beside a new address that a fresh choice might prefer.
        let mut h = host();
        h.interfaces[2].addrs.insert(0, addr("192.168.56.50"));
        assert_eq!(recheck(&f, &h, 3, ip("192.168.56.11")), Recheck::Unchanged);
        // Renumbered: .11 gone, .200 left and chosen.
        let mut h = host();
        h.interfaces[2].addrs.remove(0);
        let Recheck::Moved(c) = recheck(&f, &h, 3, ip("192.168.56.11")) else {
            panic!()
        };
        assert_eq!(
            (c.index, c.local_ip, c.public_ip),
            (3, ip("192.168.56.200"), ip("192.168.56.200"))
        );
        // Between two addresses: nothing to choose yet.
        h.interfaces[2].addrs.clear();
        assert!(matches!(
            recheck(&f, &h, 3, ip("192.168.56.11")),
            Recheck::Gone(UnderlayError::NoMatch { .. })
        ));
        // The interface made again under a new index, with the same address.
        let mut h = host();
        h.interfaces[2].index = 9;
        let Recheck::Moved(c) = recheck(&f, &h, 3, ip("192.168.56.11")) else {
            panic!()
        };
        assert_eq!((c.index, c.local_ip), (9, ip("192.168.56.11")));
        // Behind NAT the PublicIP stays what --public-ip says; the local address moves.
        let nat = UnderlayFlags {
            public_ip: Some(ip("203.0.113.7")),
            ..f
        };
        let mut h = host();
        h.interfaces[2].addrs.remove(0);
        let Recheck::Moved(c) = recheck(&nat, &h, 3, ip("192.168.56.11")) else {
            panic!()
        };
        assert_eq!(
            (c.local_ip, c.public_ip),
            (ip("192.168.56.200"), ip("203.0.113.7"))
        );
    }

    #[test]
    fn default_route_when_nothing_is_said() {
        let c = choose(&flags(), &host()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.local_ip, c.public_ip),
            ("eth0", ip("10.0.2.15"), ip("10.0.2.15"))
        );
        assert_eq!(c.by, "default route");
        let mut h = host();
        h.default_route = None;
        assert_eq!(choose(&flags(), &h), Err(UnderlayError::NoDefaultRoute));
        h.default_route = Some(4);
        assert_eq!(
            choose(&flags(), &h),
            Err(UnderlayError::DefaultHasNoAddress("eth2".into()))
        );
    }

    #[test]
    fn iface_in_order_first_that_works() {
        let f = UnderlayFlags {
            ifaces: vec!["eth9".into(), "eth2".into(), "eth1".into(), "eth0".into()],
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!((c.name.as_str(), c.local_ip), ("eth1", ip("192.168.56.11")));
        assert_eq!(c.by, "--iface eth1");
        assert_eq!(
            c.passed_over,
            [
                "--iface eth9: no such interface",
                "--iface eth2: interface eth2 has no usable IPv4 address"
            ]
        );
        // By address: that address, not the interface's first.
        let f = UnderlayFlags {
            ifaces: vec!["192.168.56.200".into()],
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.local_ip, c.public_ip),
            ("eth1", ip("192.168.56.200"), ip("192.168.56.200"))
        );
        // Nothing matches: say what was tried and what exists, do not fall back.
        let f = UnderlayFlags {
            ifaces: vec!["eth9".into()],
            ..flags()
        };
        let e = choose(&f, &host()).unwrap_err().to_string();
        assert_eq!(
            e,
            "no interface matches --iface eth9; interfaces here: lo[], eth0[10.0.2.15], eth1[192.168.56.11 192.168.56.200], eth2[], docker0[172.17.0.1]"
        );
    }

    /// `--iface 127.0.0.1` names an address no peer can send VXLAN to: passed over
    /// with the reason, not made the underlay.
    #[test]
    fn an_unusable_address_is_never_the_underlay() {
        let f = UnderlayFlags {
            ifaces: vec!["127.0.0.1".into(), "eth0".into()],
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!((c.name.as_str(), c.local_ip), ("eth0", ip("10.0.2.15")));
        assert_eq!(
            c.passed_over,
            ["--iface 127.0.0.1: 127.0.0.1 is a loopback address, which no peer can send VXLAN to; name the underlay interface or its address"]
        );
    }

    #[test]
    fn regex_addresses_first_then_names() {
        // An address match on a later interface wins over a name match on an earlier one.
        let f = UnderlayFlags {
            iface_regexes: vec![Regex::new("^(eth0|192\\.168\\.56\\.)").unwrap()],
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!((c.name.as_str(), c.local_ip), ("eth1", ip("192.168.56.11")));
        // Unanchored, as Go's MatchString.
        let f = UnderlayFlags {
            iface_regexes: vec![Regex::new("56\\.200").unwrap()],
            ..flags()
        };
        assert_eq!(choose(&f, &host()).unwrap().local_ip, ip("192.168.56.200"));
        // A name match without an address goes on to the next matching name (flanneld
        // would fail on eth2).
        let f = UnderlayFlags {
            iface_regexes: vec![Regex::new("^(eth2|docker0)$").unwrap()],
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!((c.name.as_str(), c.local_ip), ("docker0", ip("172.17.0.1")));
        // A regex that yields nothing hands over to the next one.
        let f = UnderlayFlags {
            iface_regexes: vec![
                Regex::new("^eth[2-9]$").unwrap(),
                Regex::new("^docker").unwrap(),
            ],
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!(c.name, "docker0");
        assert_eq!(c.passed_over, ["--iface-regex ^eth[2-9]$: matches no usable address and no interface name with one"]);
        // --iface first, regexes after every --iface.
        let f = UnderlayFlags {
            ifaces: vec!["eth9".into(), "eth0".into()],
            iface_regexes: vec![Regex::new("eth1").unwrap()],
            ..flags()
        };
        assert_eq!(choose(&f, &host()).unwrap().name, "eth0");
        // Loopback's address is never usable, even when the regex matches it.
        let f = UnderlayFlags {
            iface_regexes: vec![Regex::new("^127\\.|^lo$").unwrap()],
            ..flags()
        };
        assert!(matches!(
            choose(&f, &host()),
            Err(UnderlayError::NoMatch { .. })
        ));
    }

    #[test]
    fn can_reach_uses_the_route() {
        let f = UnderlayFlags {
            iface_can_reach: Some(ip("192.168.56.1")),
            ..flags()
        };
        let mut h = host();
        h.route_to_can_reach = Some(Ok(RouteTo {
            oif: 3,
            src: Some(ip("192.168.56.200")),
        }));
        let c = choose(&f, &h).unwrap();
        assert_eq!(
            (c.name.as_str(), c.local_ip),
            ("eth1", ip("192.168.56.200"))
        );
        assert_eq!(c.by, "--iface-can-reach 192.168.56.1");
        // No preferred source: the interface's first address.
        h.route_to_can_reach = Some(Ok(RouteTo { oif: 3, src: None }));
        assert_eq!(choose(&f, &h).unwrap().local_ip, ip("192.168.56.11"));
        // Tried after --iface and --iface-regex.
        let f2 = UnderlayFlags {
            ifaces: vec!["docker0".into()],
            ..f.clone()
        };
        assert_eq!(choose(&f2, &h).unwrap().name, "docker0");
        h.route_to_can_reach = Some(Err("Network is unreachable".into()));
        let e = choose(&f, &h).unwrap_err().to_string();
        assert!(
            e.starts_with("no interface matches --iface-can-reach 192.168.56.1;"),
            "{e}"
        );
    }

    #[test]
    fn public_ip_behind_nat() {
        // Not a local address: bind on the interface's, advertise the public one.
        let f = UnderlayFlags {
            ifaces: vec!["eth0".into()],
            public_ip: Some(ip("203.0.113.7")),
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!(
            (c.local_ip, c.public_ip),
            (ip("10.0.2.15"), ip("203.0.113.7"))
        );
        // Alone and local: the interface holding it, with that address.
        let f = UnderlayFlags {
            public_ip: Some(ip("192.168.56.200")),
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.local_ip, c.public_ip),
            ("eth1", ip("192.168.56.200"), ip("192.168.56.200"))
        );
        // Alone and not local: the default route's interface (flanneld would stop here).
        let f = UnderlayFlags {
            public_ip: Some(ip("203.0.113.7")),
            ..flags()
        };
        let c = choose(&f, &host()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.local_ip, c.public_ip),
            ("eth0", ip("10.0.2.15"), ip("203.0.113.7"))
        );
    }

    #[test]
    fn address_preference() {
        let i = Interface {
            index: 7,
            name: "ens3".into(),
            addrs: vec![
                IfAddr {
                    ip: ip("169.254.1.1"),
                    permanent: true,
                    deprecated: false,
                },
                IfAddr {
                    ip: ip("10.1.0.5"),
                    permanent: false,
                    deprecated: false,
                },
                IfAddr {
                    ip: ip("10.1.0.9"),
                    permanent: false,
                    deprecated: true,
                },
                IfAddr {
                    ip: ip("10.1.0.6"),
                    permanent: true,
                    deprecated: false,
                },
                IfAddr {
                    ip: ip("224.0.0.1"),
                    permanent: true,
                    deprecated: false,
                },
            ],
        };
        assert_eq!(
            i.usable(),
            [ip("10.1.0.6"), ip("10.1.0.5"), ip("169.254.1.1")]
        );
    }
}
