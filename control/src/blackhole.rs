//! flanneld's `--ip-blackhole-route`: a blackhole route for the node's own subnet,
//! so that traffic to an address of that subnet no pod holds is dropped here instead
//! of following the default route out of the node (where the bridge plugin is not
//! used, e.g. Canal's per-pod routes; with the bridge, the bridge's own route
//! carries the subnet).
//!
//! flanneld adds it at metric 0, where it collides with the bridge's prefix route
//! (same destination, same metric): the add fails while the bridge is up, or the
//! blackhole comes first and the node's own pods are dropped. vxmesh adds it at
//! [`METRIC`], the highest: every other route to the subnet wins, and the blackhole
//! carries only what no other route does. The routes with that metric are vxmesh's;
//! one for a subnet no longer held (a new lease, a changed config) is removed, and
//! with the flag off every one is.
//!
//! [`plan`] is the pure decision; [`keep`] is the task that applies it every
//! `--iptables-resync` seconds (as flanneld re-adds the route) and on a lease change.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::agent::{Held, Resync};
use crate::netlink::{IpNet, Netlink, NetlinkError};
use crate::state::AgentState;

/// The metric of vxmesh's blackhole routes: the lowest preference, so any other
/// route to the same destination (the bridge's) is used first.
pub const METRIC: u32 = u32::MAX;

/// What to change so that exactly `want` has a blackhole route of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// `want`: the subnets that should have a blackhole route (the held lease's, none
/// with the flag off); `ours`: the blackhole routes with [`METRIC`] now present.
pub fn plan(want: &[IpNet], ours: &[IpNet]) -> Plan {
    let mut remove: Vec<IpNet> = Vec::new();
    for o in ours {
        if !want.contains(o) && !remove.contains(o) {
            remove.push(*o);
        }
    }
    Plan {
        add: want.iter().filter(|w| !ours.contains(w)).copied().collect(),
        remove,
    }
}

/// The subnets of a lease that get a blackhole route: its IPv4 subnet, and its
/// IPv6 subnet when the node carries IPv6 (`ipv6`).
pub fn wanted(held: &Held, ipv6: bool) -> Vec<IpNet> {
    let v4 = held.subnet().map(IpNet::V4);
    let v6 = held.ipv6().filter(|_| ipv6).map(IpNet::V6);
    v4.into_iter().chain(v6).collect()
}

/// One pass: reads our blackhole routes and makes them `want`. Returns the plan
/// carried out.
pub async fn apply(nl: &Netlink, want: &[IpNet]) -> Result<Plan, NetlinkError> {
    let mut ours: Vec<IpNet> = nl
        .blackholes(METRIC)
        .await?
        .into_iter()
        .map(IpNet::V4)
        .collect();
    // A host without IPv6 (ipv6.disable=1) may refuse the IPv6 dump: then it has no
    // IPv6 route of ours, and only a wanted IPv6 route makes that an error.
    match nl.blackholes6(METRIC).await {
        Ok(v6) => ours.extend(v6.into_iter().map(IpNet::V6)),
        Err(e) if want.iter().any(|w| matches!(w, IpNet::V6(_))) => return Err(e),
        Err(e) => tracing::debug!("no IPv6 routes to look at: {e}"),
    }
    let p = plan(want, &ours);
    for s in &p.remove {
        nl.delete_blackhole(*s, METRIC).await?;
    }
    for s in &p.add {
        nl.replace_blackhole(*s, METRIC).await?;
    }
    Ok(p)
}

/// Keeps the blackhole routes as `enabled` says for the lease `held` carries:
/// checked every `every` and on each lease change. With `enabled` false it only
/// removes any left by an earlier run with the flag, once.
pub async fn keep(
    nl: Netlink,
    enabled: bool,
    ipv6: bool,
    held: watch::Receiver<Option<Held>>,
    every: Duration,
    state: Arc<AgentState>,
) {
    if !enabled {
        match apply(&nl, &[]).await {
            Ok(p) if !p.remove.is_empty() => {
                tracing::info!(removed = ?p.remove, "removed the blackhole routes of an earlier run with --ip-blackhole-route");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "cannot check for blackhole routes left by --ip-blackhole-route: {e}"
            ),
        }
        return;
    }
    let mut resync = Resync::new(every, held);
    let mut failing = false;
    let mut installed: Vec<IpNet> = Vec::new();
    while let Some(h) = resync.next().await {
        let want = wanted(&h, ipv6);
        match apply(&nl, &want).await {
            Ok(p) => {
                if failing {
                    tracing::info!("blackhole routes in place again");
                    failing = false;
                }
                for s in &p.remove {
                    tracing::info!(subnet = %s, "removed the blackhole route of a subnet no longer held");
                }
                for s in &p.add {
                    if installed.contains(s) {
                        tracing::warn!(subnet = %s, "the blackhole route was removed behind vxmesh's back; restored");
                    } else {
                        tracing::info!(subnet = %s, metric = METRIC, "blackhole route added (--ip-blackhole-route)");
                    }
                }
                installed = want;
            }
            Err(e) => {
                if !failing {
                    tracing::error!(
                        "cannot keep the blackhole route (--ip-blackhole-route) in place: {e}"
                    );
                    failing = true;
                }
                state.update(|i| i.last_error = Some(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseKey;
    use crate::subnet::Subnet;
    use crate::subnet6::Subnet6;

    fn v4(s: &str) -> IpNet {
        let (a, l) = s.split_once('/').unwrap();
        IpNet::V4(Subnet::new_exact(a.parse().unwrap(), l.parse().unwrap()).unwrap())
    }

    fn v6(s: &str) -> IpNet {
        let (a, l) = s.split_once('/').unwrap();
        IpNet::V6(Subnet6::new_exact(a.parse().unwrap(), l.parse().unwrap()).unwrap())
    }

    #[test]
    fn a_missing_route_is_added_and_a_present_one_left() {
        let want = [v4("10.244.3.0/24")];
        assert_eq!(
            plan(&want, &[]),
            Plan {
                add: want.to_vec(),
                remove: vec![]
            }
        );
        assert!(plan(&want, &want).is_empty());
    }

    #[test]
    fn the_route_of_a_subnet_no_longer_held_is_removed() {
        // A new lease after a SubnetLen change: the /24 goes, the /25 comes.
        let p = plan(
            &[v4("10.244.3.0/25")],
            &[v4("10.244.3.0/24"), v4("10.244.9.0/24")],
        );
        assert_eq!(p.add, vec![v4("10.244.3.0/25")]);
        assert_eq!(p.remove, vec![v4("10.244.3.0/24"), v4("10.244.9.0/24")]);
    }

    #[test]
    fn with_the_flag_off_every_route_of_ours_goes() {
        let ours = [v4("10.244.3.0/24"), v6("fd00:10:244:3::/64")];
        let p = plan(&[], &ours);
        assert!(p.add.is_empty());
        assert_eq!(p.remove, ours.to_vec());
    }

    #[test]
    fn both_families_are_planned_apart() {
        let want = [v4("10.244.3.0/24"), v6("fd00:10:244:3::/64")];
        let p = plan(&want, &[v4("10.244.3.0/24"), v6("fd00:10:244:7::/64")]);
        assert_eq!(p.add, vec![v6("fd00:10:244:3::/64")]);
        assert_eq!(p.remove, vec![v6("fd00:10:244:7::/64")]);
    }

    #[test]
    fn the_ipv6_half_only_when_the_node_carries_ipv6() {
        let s6 = Subnet6::new_exact("fd00:10:244:3::".parse().unwrap(), 64).unwrap();
        let h = Held {
            key: LeaseKey::dual(
                Subnet::new_exact("10.244.3.0".parse().unwrap(), 24).unwrap(),
                Some(s6),
            ),
            lease_id: 1,
            revision: 1,
        };
        assert_eq!(wanted(&h, false), vec![v4("10.244.3.0/24")]);
        assert_eq!(wanted(&h, true), vec![v4("10.244.3.0/24"), IpNet::V6(s6)]);
    }
}
