//! "Can this vxmeshd take over that dataplane?" — pure decisions over what the two
//! sides say about themselves, with the reason in words an operator can act on.
//!
//! Two places ask: a running vxmeshd answering a successor's `Hello`
//! ([`answer_hello`]), and a starting vxmeshd looking at the state systemd kept in
//! its descriptor store ([`judge_stored`]). The rules are the same; what differs is
//! what happens on a conflict. While the old process runs, a conflicting newcomer
//! is refused (two agents must never fight over one TAP); once the old process is
//! gone (systemd restarted the unit), its leftovers are dropped and the new one
//! starts cold.

use super::wire::{DataplaneState, FdRole, Fingerprint, Versions};

/// What the running vxmeshd does with a successor's `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum HelloAnswer {
    /// Hand over in protocol `version`.
    Offer { version: u16 },
    /// No common protocol version: say so; the successor may ask us to release.
    Incompatible,
    /// Not a valid successor: refuse, keep running.
    Refuse { reason: String },
}

/// What a starting vxmeshd does with the state found in systemd's descriptor store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum StoredVerdict {
    /// Take the descriptors and the state.
    Adopt,
    /// Drop them and start cold, for this reason.
    ColdStart { reason: String },
}

/// The differences between two fingerprints that forbid a takeover, in words
/// (empty: compatible). `theirs` is the running (or stored) dataplane's.
pub fn conflicts(ours: &Fingerprint, theirs: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |what: &str, ours: String, theirs: String| {
        if ours != theirs {
            out.push(format!("{what} {theirs} there, {ours} here"));
        }
    };
    differ("TAP", ours.tap.clone(), theirs.tap.clone());
    differ(
        "--dataplane",
        ours.dataplane.clone(),
        theirs.dataplane.clone(),
    );
    differ(
        "--tap-queues",
        ours.tap_queues.to_string(),
        theirs.tap_queues.to_string(),
    );
    let offl = |v: bool| if v { "offloads on" } else { "--no-offloads" }.to_string();
    differ("TAP offloads:", offl(ours.vnet_hdr), offl(theirs.vnet_hdr));
    differ(
        "public IP",
        ours.public_ip.to_string(),
        theirs.public_ip.to_string(),
    );
    differ(
        "network",
        ours.network.to_string(),
        theirs.network.to_string(),
    );
    differ("VNI", ours.vni.to_string(), theirs.vni.to_string());
    differ("VXLAN port", ours.port.to_string(), theirs.port.to_string());
    differ(
        "--etcd-prefix",
        ours.etcd_prefix.clone(),
        theirs.etcd_prefix.clone(),
    );
    // The IPv6 port is held by the threads' socket on one side and by flannel-v6 on
    // the other: a switch is a restart (stop, then start), not a handover.
    differ(
        "--ipv6-dataplane",
        ours.ipv6_dataplane.clone(),
        theirs.ipv6_dataplane.clone(),
    );
    out
}

/// The running vxmeshd's answer to `Hello{versions, fingerprint}`. `ready` is
/// whether our dataplane runs (a vxmeshd still starting has nothing to hand over).
pub fn answer_hello(
    ours: &Fingerprint,
    our_versions: Versions,
    ready: bool,
    their_versions: Versions,
    theirs: &Fingerprint,
) -> HelloAnswer {
    let Some(version) = our_versions.best_common(their_versions) else {
        return HelloAnswer::Incompatible;
    };
    if ours.ipv6_only() {
        return HelloAnswer::Refuse {
            reason: format!(
                "the running vxmeshd is a node of an IPv6-only network: the kernel's {}.{} carries its pods' traffic across a restart, so there is nothing to hand over; stop it first (systemctl stop vxmeshd)",
                crate::node_dataplane::kernel::DEVICE6_PREFIX,
                ours.vni
            ),
        };
    }
    if ours.dataplane != "userspace" {
        return HelloAnswer::Refuse {
            reason: format!(
                "the running vxmeshd uses --dataplane {}, which keeps forwarding across restarts without a handover; stop it first",
                ours.dataplane
            ),
        };
    }
    let c = conflicts(theirs, ours);
    if !c.is_empty() {
        return HelloAnswer::Refuse {
            reason: format!(
                "not a valid successor: {}; stop the running vxmeshd first (systemctl stop vxmeshd) or give this one another --tap-name",
                c.join(", ")
            ),
        };
    }
    if !ready {
        return HelloAnswer::Refuse {
            reason: "the running vxmeshd has not started its dataplane yet; try again once it is ready (vxmeshctl wait-ready)".into(),
        };
    }
    HelloAnswer::Offer { version }
}

/// Judges the state systemd kept: `version` is the stored state's protocol version,
/// `roles` the descriptor names systemd passed (already mapped to roles).
pub fn judge_stored(
    ours: &Fingerprint,
    our_versions: Versions,
    version: u16,
    state: &DataplaneState,
    roles: &[FdRole],
) -> StoredVerdict {
    let cold = |reason: String| StoredVerdict::ColdStart { reason };
    if version < our_versions.min || version > our_versions.max {
        return cold(format!(
            "the stored state is protocol version {version}, this build speaks {our_versions}"
        ));
    }
    let c = conflicts(ours, &state.fingerprint);
    if !c.is_empty() {
        return cold(format!(
            "the stored dataplane does not match this configuration: {}",
            c.join(", ")
        ));
    }
    if let Some(missing) = needed_roles(&state.fingerprint)
        .into_iter()
        .find(|r| !roles.contains(r))
    {
        return cold(format!(
            "descriptor {} is missing from the store",
            missing.store_name()
        ));
    }
    StoredVerdict::Adopt
}

/// The descriptors a dataplane cannot run without: every TAP queue and the
/// receive socket (send sockets can be opened afresh).
pub fn needed_roles(f: &Fingerprint) -> Vec<FdRole> {
    let mut v: Vec<FdRole> = (0..f.tap_queues.clamp(1, 256))
        .map(|i| FdRole::Tap(i as u8))
        .collect();
    v.push(FdRole::UdpRx);
    v
}

/// Checks an offer's descriptor list against what it says it hands over: every
/// needed role present, nothing listed that did not come. `Err` is the reason.
pub fn check_offer(state: &DataplaneState, fds_received: usize) -> Result<(), String> {
    if state.fds.len() != fds_received {
        return Err(format!(
            "the offer lists {} descriptors but {fds_received} came with it",
            state.fds.len()
        ));
    }
    if let Some(missing) = needed_roles(&state.fingerprint)
        .into_iter()
        .find(|r| !state.fds.contains(r))
    {
        return Err(format!("the offer has no {}", missing.store_name()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::wire::VERSIONS;
    use std::net::Ipv4Addr;
    use vxmesh_dataplane::wire::MacAddr;

    fn fp() -> Fingerprint {
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

    fn state(f: Fingerprint) -> DataplaneState {
        DataplaneState {
            fingerprint: f,
            lease: None,
            vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, 1]),
            mtu: 1450,
            tap_offloads: 0,
            fds: vec![FdRole::Tap(0), FdRole::UdpRx, FdRole::UdpTx(0)],
            peers: vec![],
            handovers: 0,
            cold_starts: 1,
            pid: 1,
            build: "0.1.0".into(),
            at_ms: 0,
            stopped: true,
        }
    }

    #[test]
    fn same_setup_is_offered_the_best_common_version() {
        let theirs = Versions { min: 1, max: 3 };
        assert_eq!(
            answer_hello(&fp(), VERSIONS, true, theirs, &fp()),
            HelloAnswer::Offer { version: 2 }
        );
        // A build of version 1 (before IPv6 in the threads) is offered version 1.
        let old = Versions { min: 1, max: 1 };
        assert_eq!(
            answer_hello(&fp(), VERSIONS, true, old, &fp()),
            HelloAnswer::Offer { version: 1 }
        );
    }

    #[test]
    fn no_common_version_is_incompatible_whatever_the_setup() {
        let mut other = fp();
        other.vni = 2;
        for f in [fp(), other] {
            assert_eq!(
                answer_hello(&fp(), VERSIONS, true, Versions { min: 3, max: 4 }, &f),
                HelloAnswer::Incompatible
            );
        }
    }

    #[test]
    fn conflicting_successors_are_refused_with_every_reason() {
        let mut f = fp();
        f.vni = 7;
        f.tap_queues = 2;
        f.public_ip = Ipv4Addr::new(10, 0, 0, 1);
        let HelloAnswer::Refuse { reason } = answer_hello(&fp(), VERSIONS, true, VERSIONS, &f)
        else {
            panic!("must refuse")
        };
        assert!(reason.contains("VNI 1 there, 7 here"), "{reason}");
        assert!(reason.contains("--tap-queues 1 there, 2 here"), "{reason}");
        assert!(
            reason.contains("public IP 192.168.100.11 there, 10.0.0.1 here"),
            "{reason}"
        );
        assert!(reason.contains("systemctl stop vxmeshd"), "{reason}");
        // IPv6 in the threads on one side only: the IPv6 port changes hands, so a
        // restart, not a handover.
        let mut t = fp();
        t.ipv6_dataplane = "userspace".into();
        let HelloAnswer::Refuse { reason } = answer_hello(&fp(), VERSIONS, true, VERSIONS, &t)
        else {
            panic!("must refuse")
        };
        assert!(
            reason.contains("--ipv6-dataplane kernel there, userspace here"),
            "{reason}"
        );
        for change in [
            |f: &mut Fingerprint| f.network = "10.9.0.0/16".parse().unwrap(),
            |f: &mut Fingerprint| f.port = 4789,
            |f: &mut Fingerprint| f.vnet_hdr = false,
            |f: &mut Fingerprint| f.etcd_prefix = "/other".into(),
            |f: &mut Fingerprint| f.dataplane = "kernel".into(),
            |f: &mut Fingerprint| f.tap = "vx1".into(),
            |f: &mut Fingerprint| f.ipv6_dataplane = "userspace".into(),
        ] {
            let mut f = fp();
            change(&mut f);
            assert!(matches!(
                answer_hello(&fp(), VERSIONS, true, VERSIONS, &f),
                HelloAnswer::Refuse { .. }
            ));
        }
    }

    #[test]
    fn a_kernel_dataplane_or_a_starting_agent_refuses() {
        let mut k = fp();
        k.dataplane = "kernel".into();
        let HelloAnswer::Refuse { reason } = answer_hello(&k, VERSIONS, true, VERSIONS, &k) else {
            panic!()
        };
        assert!(reason.contains("--dataplane kernel"), "{reason}");
        let HelloAnswer::Refuse { reason } = answer_hello(&fp(), VERSIONS, false, VERSIONS, &fp())
        else {
            panic!()
        };
        assert!(reason.contains("not started its dataplane"), "{reason}");
    }

    #[test]
    fn an_ipv6_only_node_refuses_even_its_twin() {
        let tap = vxmesh_dataplane::ifname::IfName::new("vxmesh0").unwrap();
        let v6 = crate::handover::node::identity_ipv6_only(&tap, 1, 8472, "/coreos.com/network")
            .fingerprint;
        let HelloAnswer::Refuse { reason } = answer_hello(&v6, VERSIONS, false, VERSIONS, &v6)
        else {
            panic!()
        };
        assert!(
            reason.contains("is a node of an IPv6-only network: the kernel's flannel-v6.1"),
            "{reason}"
        );
        // A build with no common version may still ask it to release the node.
        assert_eq!(
            answer_hello(&v6, VERSIONS, false, Versions { min: 7, max: 9 }, &v6),
            HelloAnswer::Incompatible
        );
    }

    #[test]
    fn stored_state_adopted_or_dropped() {
        let roles = [FdRole::Tap(0), FdRole::UdpRx, FdRole::UdpTx(0)];
        assert_eq!(
            judge_stored(&fp(), VERSIONS, 1, &state(fp()), &roles),
            StoredVerdict::Adopt
        );
        // a newer build's state
        let StoredVerdict::ColdStart { reason } =
            judge_stored(&fp(), VERSIONS, 3, &state(fp()), &roles)
        else {
            panic!()
        };
        assert!(reason.contains("version 3"), "{reason}");
        // configuration changed across the restart
        let mut f = fp();
        f.port = 4789;
        let StoredVerdict::ColdStart { reason } =
            judge_stored(&fp(), VERSIONS, 1, &state(f), &roles)
        else {
            panic!()
        };
        assert!(
            reason.contains("VXLAN port 4789 there, 8472 here"),
            "{reason}"
        );
        // the receive socket did not make it into the store
        let StoredVerdict::ColdStart { reason } =
            judge_stored(&fp(), VERSIONS, 1, &state(fp()), &[FdRole::Tap(0)])
        else {
            panic!()
        };
        assert!(reason.contains("vxmesh-udp-rx"), "{reason}");
    }

    #[test]
    fn offers_must_carry_what_they_list() {
        let s = state(fp());
        assert_eq!(check_offer(&s, 3), Ok(()));
        assert!(check_offer(&s, 2)
            .unwrap_err()
            .contains("3 descriptors but 2"));
        let mut no_rx = s.clone();
        no_rx.fds = vec![FdRole::Tap(0), FdRole::UdpTx(0)];
        assert!(check_offer(&no_rx, 2)
            .unwrap_err()
            .contains("vxmesh-udp-rx"));
        let mut two_queues = s;
        two_queues.fingerprint.tap_queues = 2;
        assert!(check_offer(&two_queues, 3)
            .unwrap_err()
            .contains("vxmesh-tap1"));
    }
}
