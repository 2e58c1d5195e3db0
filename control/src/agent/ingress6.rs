//! Keeps the IPv6 device's ingress check ([`crate::ingress6`]) in place on a node of
//! the userspace dataplane that runs `flannel-v6.<VNI>` (dual stack, IPv6 only): the
//! node's loop publishes its IPv6 peers after each batch, and a task applies the
//! check for the held IPv6 subnet and those peers, restores it every
//! `--iptables-resync` when a firewall reload removed it, and reports as the
//! masquerade rules' task does. Always in nftables, whichever backend the masquerade
//! rules use (decision 0031). Other nodes remove a check an earlier run left.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{report_rules, Held, Resync};
use crate::ingress6::{Check6, Drops6};
use crate::masq::{MasqError, Snapshot};
use crate::state::AgentState;
use crate::subnet6::Subnet6;

/// How long a change of the peers waits for the next ones (a burst of leases at a
/// cluster's start is applied once, not once per batch).
const SETTLE: Duration = Duration::from_millis(100);

/// The IPv6 peers the node's loop published: `None` until its first listing is
/// judged. Nothing is applied before: a check with no peers would drop every
/// peer's traffic, and a restarted agent finds its predecessor's check in place.
type Peers6 = Option<Vec<(Ipv6Addr, Subnet6)>>;

/// The running check: where the node's loop publishes its IPv6 peers.
pub(super) struct Ingress6 {
    peers: watch::Sender<Peers6>,
    pub(super) task: JoinHandle<()>,
}

/// What the check needs to know of the node.
pub(super) struct Ingress6Setup {
    pub network: Subnet6,
    pub port: u16,
    pub every: Duration,
}

impl Ingress6 {
    /// Starts the task when `setup` is given; otherwise removes a check an earlier
    /// run left (best effort: a host without the tools has none).
    pub(super) fn start(
        setup: Option<Ingress6Setup>,
        held: watch::Receiver<Option<Held>>,
        state: &Arc<AgentState>,
    ) -> Option<Ingress6> {
        let Some(setup) = setup else {
            tokio::task::spawn_blocking(|| {
                if let Err(e) = crate::ingress6::remove() {
                    tracing::debug!(error = %e, "no IPv6 ingress check of an earlier run removed");
                }
            });
            return None;
        };
        let (peers, rx) = watch::channel(None);
        let task = tokio::spawn(keep(setup, rx, held, Arc::clone(state)));
        Some(Ingress6 { peers, task })
    }

    /// The node's IPv6 peers now (PublicIPv6, IPv6 subnet); a change wakes the task.
    pub(super) fn publish(&self, now: impl Iterator<Item = (Ipv6Addr, Subnet6)>) {
        let now: Vec<_> = now.collect();
        self.peers.send_if_modified(|v| {
            if v.as_ref() == Some(&now) {
                return false;
            }
            *v = Some(now);
            true
        });
    }
}

async fn keep(
    setup: Ingress6Setup,
    mut peers: watch::Receiver<Peers6>,
    held: watch::Receiver<Option<Held>>,
    state: Arc<AgentState>,
) {
    let mut resync = Resync::new(setup.every, held);
    let mut last: Option<Snapshot<Check6>> = None;
    let mut failing = false;
    // The drops counted by tables replaced since (each new table counts from 0).
    let mut earlier = Drops6::default();
    loop {
        let h = tokio::select! {
            h = resync.next() => match h {
                Some(h) => h,
                None => return,
            },
            r = peers.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
                match resync.current() {
                    Some(h) => h,
                    None => continue,
                }
            }
        };
        let (Some(own), Some(now)) = (h.ipv6(), peers.borrow_and_update().clone()) else {
            continue;
        };
        let check = Check6 {
            port: setup.port,
            network: setup.network,
            own,
            peers: now,
        };
        let mut snapshot = last.take();
        // The counters are read before and after: a table replaced by `ensure`
        // starts again from 0, and what the old one had counted is kept.
        let Ok((r, snapshot, before, after)) = tokio::task::spawn_blocking(move || {
            let before = crate::ingress6::dropped().ok().flatten();
            let r = crate::ingress6::ensure(&check, &mut snapshot);
            let after = crate::ingress6::dropped().ok().flatten();
            (r, snapshot, before, after)
        })
        .await
        else {
            return;
        };
        last = snapshot;
        if matches!(
            r,
            Ok(crate::masq::Ensured::Applied | crate::masq::Ensured::Restored { .. })
        ) {
            if let Some(before) = &before {
                earlier.add(before);
            }
        }
        if let Some(now) = after {
            let mut all = earlier.clone();
            all.add(&now);
            if let Ok(mut shown) = state.ipv6_ingress_drops.lock() {
                *shown = all;
            }
        }
        if let Ok(crate::masq::Ensured::Applied) = r {
            tracing::debug!("IPv6 ingress check applied");
        }
        // Not the masquerade's hint: without the tool, VXLAN over IPv6 goes unchecked.
        let r = r.map_err(|e| match e {
            MasqError::Spawn {
                cmd,
                package,
                source,
            } => MasqError::Failed {
                cmd: cmd.into(),
                stderr: format!(
                    "cannot run it: {source} (install {package}; until then VXLAN over IPv6 is not checked)"
                ),
            },
            e => e,
        });
        report_rules(r, "nftables", " (IPv6 ingress check)", &mut failing, &state);
    }
}
