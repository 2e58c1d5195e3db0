//! The lease state machine: acquire a subnet, hold it, get it back when lost.
//!
//! Pure: it never touches etcd or the clock. The driver asks [`LeaseMachine::poll`]
//! what to do, does it, and reports the outcome with [`LeaseMachine::handle`]:
//!
//! ```text
//!   NeedList ──List──► Listing ──Listed──► Claiming ──Claimed──► Held
//!      ▲                  │                   │  ▲                  │
//!      │            RegistryError       RaceLost (next candidate)  LeaseLost
//!      └──── Backoff ◄────┴───────────────────┘  (all lost → relist) │
//!      └─────────────────────────────────────────────────────────────┘
//!                         (relist, preferring the subnet just held)
//! ```
//! Differences from flannel, on purpose: a lost compare-and-swap moves on to the
//! next candidate instead of failing; a lost lease is re-acquired (the same subnet
//! when still free) instead of exiting; registry errors back off 100 ms → 5 s, each
//! wait drawn between half and all of its step ([`jittered`]), so a thousand agents
//! failing together (etcd restarted under them) do not come back together.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::allocator::{plan_for, Claim, ExistingLease, Hints, NoFreeSubnet, Work};
use crate::config::NetworkConfig;
use crate::lease::{LeaseKey, NodeId};
use crate::subnet::Subnet;
use crate::subnet6::Subnet6;

/// How many candidates one listing yields.
pub const CANDIDATES_PER_LISTING: usize = 16;
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often to look again when the pool is full (a node may leave): at most this
/// long, at least half of it.
pub const EXHAUSTED_RETRY: Duration = Duration::from_secs(10);

/// A wait of between half and all of `step`, uniformly ("equal jitter"): callers
/// that fail together spread out, and each still waits at least half its step. `seed`
/// advances (splitmix64: deterministic under test).
pub fn jittered(step: Duration, seed: &mut u64) -> Duration {
    let half = step / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(crate::allocator::splitmix(seed) % spread.saturating_add(1))
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum LeaseAction {
    /// List `<prefix>/subnets/` and report [`LeaseEvent::Listed`].
    List,
    /// Grant an etcd lease and try this claim by compare-and-swap; report
    /// [`LeaseEvent::Claimed`] or [`LeaseEvent::RaceLost`].
    Claim(Claim),
    /// We hold `key` (IPv4, dual stack: one key names both subnets, or IPv6 only)
    /// under etcd lease `lease_id`: keep it alive, publish it. Returned once per
    /// acquisition.
    Acquired {
        key: LeaseKey,
        lease_id: i64,
        /// The etcd revision of the claim.
        revision: i64,
        /// The key held before, when this one replaces its subnet (pods must
        /// renumber): see [`renumbers`].
        changed_from: Option<LeaseKey>,
    },
    /// The pool is full; returned once per listing that found it full.
    Exhausted(NoFreeSubnet),
    /// Nothing to do before `until` unless an event arrives.
    Wait { until: Instant },
    /// Holding the lease: wait for an event.
    Idle,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Listed(Vec<ExistingLease>),
    /// The claim in flight won, written at etcd `revision`.
    Claimed {
        lease_id: i64,
        revision: i64,
    },
    RaceLost,
    RegistryError,
    /// The held lease expired, was revoked, or our key was deleted or taken.
    LeaseLost,
    /// Our key now holds a value that is not a lease at all (an operator's typo,
    /// another tool): nobody holds the subnet, so the key is taken back.
    KeyGarbled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    NeedList,
    Listing,
    Claiming {
        queue: VecDeque<Claim>,
        in_flight: Option<Claim>,
    },
    Held {
        key: LeaseKey,
        lease_id: i64,
        revision: i64,
        announced: bool,
    },
    Backoff {
        until: Instant,
    },
    Exhausted {
        until: Instant,
        err: Option<NoFreeSubnet>,
    },
}

/// See the module documentation.
#[derive(Debug)]
pub struct LeaseMachine {
    cfg: NetworkConfig,
    me: NodeId,
    hint: Hints,
    seed: u64,
    state: State,
    backoff: Duration,
    /// The key held before a loss, to report a change of subnet.
    previous: Option<LeaseKey>,
    reacquisitions: u64,
    /// The key held when this node's PublicIP moved, and the PublicIP it still
    /// names in etcd, until it is put again with the new one ([`LeaseMachine::moved`]).
    moving: Option<Move>,
    /// The next acquisition is a move's, not a re-acquisition.
    moved: bool,
    /// The key this node held whose value is no longer a lease, until taken back.
    retake: Option<LeaseKey>,
}

/// A held key to be put again under a new PublicIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Move {
    key: LeaseKey,
    old: NodeId,
}

impl LeaseMachine {
    /// `hint`: the subnet from this node's subnet file, if any. `seed` randomises
    /// the order of free candidates.
    pub fn new(cfg: NetworkConfig, me: Ipv4Addr, hint: Option<Subnet>, seed: u64) -> Self {
        LeaseMachine::for_node(cfg, NodeId::V4(me), Hints::ipv4(hint), seed)
    }

    /// A machine for the node `me` (its PublicIP, or on an IPv6-only network its
    /// PublicIPv6), trying the subnets of `hint` first when free.
    pub fn for_node(cfg: NetworkConfig, me: NodeId, hint: Hints, seed: u64) -> Self {
        LeaseMachine {
            cfg,
            me,
            hint,
            seed,
            state: State::NeedList,
            backoff: BACKOFF_MIN,
            previous: None,
            reacquisitions: 0,
            moving: None,
            moved: false,
            retake: None,
        }
    }

    /// A machine that already holds `subnet` under etcd lease `lease_id`, handed
    /// over by the vxmeshd that ran before us. Its first poll announces it
    /// ([`LeaseAction::Acquired`], not counted as a re-acquisition), so the driver
    /// keeps that same lease alive; if the lease turns out to be gone, the usual
    /// [`LeaseEvent::LeaseLost`] re-acquires, preferring this subnet.
    pub fn holding(
        cfg: NetworkConfig,
        me: Ipv4Addr,
        subnet: Subnet,
        lease_id: i64,
        seed: u64,
    ) -> Self {
        let mut m = LeaseMachine::new(cfg, me, Some(subnet), seed);
        // The predecessor's claim revision is not handed over: 0 lets every later
        // registry event judge the key (a listing without it is a loss, as always).
        m.state = State::Held {
            key: LeaseKey::dual(subnet, None),
            lease_id,
            revision: 0,
            announced: false,
        };
        m
    }

    /// Dual stack: the IPv6 subnet from this node's subnet file (a dual-stack
    /// flanneld's `FLANNEL_IPV6_SUBNET`), tried first for the IPv6 half when free.
    pub fn with_ipv6_hint(mut self, hint: Option<Subnet6>) -> Self {
        self.hint.ipv6 = hint;
        self
    }

    /// This node's addresses moved: its PublicIP is now `me` (the same, when only
    /// its PublicIPv6 moved). The key it holds is put again with the new value under
    /// a new etcd lease — after a listing, so the claim compares the key as it is
    /// now, and only while the key still names the old PublicIP: a node that took the
    /// subnet meanwhile keeps it, and this one claims another as after a loss. The
    /// subnet stays, so pods keep their addresses; the new [`LeaseAction::Acquired`]
    /// is not counted as a re-acquisition. Not holding a key, later claims carry the
    /// new PublicIP.
    pub fn moved(&mut self, me: NodeId) {
        let old = std::mem::replace(&mut self.me, me);
        if let State::Held { key, .. } = self.state {
            self.moving = Some(Move { key, old });
            self.hint = Hints::of(key);
            self.state = State::NeedList;
        }
    }

    /// Who this node claims as (its PublicIP, or PublicIPv6 on an IPv6-only network).
    pub fn node(&self) -> NodeId {
        self.me
    }

    /// The key and etcd lease held now, if any.
    pub fn held(&self) -> Option<(LeaseKey, i64)> {
        match self.state {
            State::Held { key, lease_id, .. } => Some((key, lease_id)),
            _ => None,
        }
    }

    /// The key held now (both halves, dual stack), if any.
    pub fn held_key(&self) -> Option<LeaseKey> {
        self.held().map(|(k, _)| k)
    }

    /// Times a lost lease was acquired again.
    pub fn reacquisitions(&self) -> u64 {
        self.reacquisitions
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    pub fn poll(&mut self, now: Instant) -> LeaseAction {
        match &mut self.state {
            State::NeedList => {
                self.state = State::Listing;
                LeaseAction::List
            }
            State::Listing => LeaseAction::Idle,
            State::Claiming { queue, in_flight } => {
                if in_flight.is_some() {
                    return LeaseAction::Idle;
                }
                match queue.pop_front() {
                    Some(c) => {
                        *in_flight = Some(c);
                        LeaseAction::Claim(c)
                    }
                    // Every candidate was taken under us: look again.
                    None => {
                        self.state = State::NeedList;
                        self.poll(now)
                    }
                }
            }
            State::Held {
                key,
                lease_id,
                revision,
                announced,
            } => {
                if *announced {
                    return LeaseAction::Idle;
                }
                *announced = true;
                let changed_from = self.previous.filter(|p| renumbers(p, key));
                if self.previous.is_some() && !std::mem::take(&mut self.moved) {
                    self.reacquisitions += 1;
                }
                self.previous = Some(*key);
                LeaseAction::Acquired {
                    key: *key,
                    lease_id: *lease_id,
                    revision: *revision,
                    changed_from,
                }
            }
            State::Backoff { until } | State::Exhausted { until, err: None } => {
                if now >= *until {
                    self.state = State::NeedList;
                    return self.poll(now);
                }
                LeaseAction::Wait { until: *until }
            }
            State::Exhausted { err, .. } => match err.take() {
                Some(e) => LeaseAction::Exhausted(e),
                None => LeaseAction::Idle,
            },
        }
    }

    pub fn handle(&mut self, ev: LeaseEvent, now: Instant) {
        match (ev, &mut self.state) {
            (LeaseEvent::Listed(mut leases), State::Listing) => {
                if let Some(m) = self.moving {
                    own_again(&mut leases, m, self.me);
                }
                if let Some(k) = self.retake {
                    garbled_is_ours(&mut leases, k, self.me);
                }
                match plan_for(
                    &self.cfg,
                    self.me,
                    &leases,
                    self.hint,
                    self.seed,
                    CANDIDATES_PER_LISTING,
                    &mut Work::default(),
                ) {
                    Ok(claims) => {
                        self.state = State::Claiming {
                            queue: claims.into(),
                            in_flight: None,
                        };
                    }
                    Err(e) => {
                        self.state = State::Exhausted {
                            until: now + jittered(EXHAUSTED_RETRY, &mut self.seed),
                            err: Some(e),
                        };
                    }
                }
                self.seed = self.seed.wrapping_add(1);
            }
            (
                LeaseEvent::Claimed { lease_id, revision },
                State::Claiming {
                    in_flight: Some(c), ..
                },
            ) => {
                let key = c.key();
                self.backoff = BACKOFF_MIN;
                self.moved = self.moving.take().is_some();
                self.retake = None;
                self.hint = Hints::of(key);
                self.state = State::Held {
                    key,
                    lease_id,
                    revision,
                    announced: false,
                };
            }
            (LeaseEvent::RaceLost, State::Claiming { in_flight, .. }) => {
                *in_flight = None;
            }
            (LeaseEvent::RegistryError, State::Listing | State::Claiming { .. }) => {
                self.state = State::Backoff {
                    until: now + jittered(self.backoff, &mut self.seed),
                };
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
            (LeaseEvent::KeyGarbled, State::Held { key, .. }) => {
                self.retake = Some(*key);
                self.hint = Hints::of(*key);
                self.state = State::NeedList;
            }
            (LeaseEvent::LeaseLost, State::Held { key, .. }) => {
                // Prefer the subnets we just had: pods keep their addresses if free.
                self.hint = Hints::of(*key);
                self.state = State::NeedList;
            }
            // Anything else is stale (e.g. a keepalive failure reported after we
            // already moved on) and changes nothing.
            _ => {}
        }
    }
}

/// The listing as the allocator must read it while a move is under way: the key
/// this node held, still naming the old PublicIP, is this node's.
fn own_again(leases: &mut [ExistingLease], m: Move, me: NodeId) {
    for l in leases {
        if l.key() != Some(m.key) {
            continue;
        }
        if let Some(a) = l.attrs.as_mut().filter(|a| m.old.names(a)) {
            me.stamp(a);
        }
    }
}

/// Whether holding `now` after `before` strands addresses the node's pods have: a
/// subnet `before` named is not `now`'s subnet of its family (another one, or the
/// family gone). A family gained (EnableIPv6 turned on, which keeps the IPv4 subnet)
/// strands nothing. The CNI plugin's CHECK judges an attachment the same way.
pub fn renumbers(before: &LeaseKey, now: &LeaseKey) -> bool {
    let v4 = before
        .ipv4_subnet()
        .is_some_and(|s| now.ipv4_subnet() != Some(s));
    let v6 = before
        .ipv6_subnet()
        .is_some_and(|s| now.ipv6_subnet() != Some(s));
    v4 || v6
}

/// The listing as the allocator must read it after this node's key was overwritten
/// with something that is not a lease: that key, still not a lease, is this node's to
/// take back under a new etcd lease (a compare-and-swap on its revision), not a
/// subnet someone holds. A lease that replaced the garbage meanwhile is judged as any.
fn garbled_is_ours(leases: &mut [ExistingLease], key: LeaseKey, me: NodeId) {
    for l in leases {
        if l.key() != Some(key) || l.attrs.is_some() {
            continue;
        }
        l.attrs = Some(me.attrs());
        // Not a reservation of ours: whatever lease the garbage has (none, when put
        // by hand), the key is claimed under a new one.
        if l.lease_id == 0 {
            l.lease_id = -1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use std::net::Ipv6Addr;

    fn cfg() -> NetworkConfig {
        NetworkConfig::parse("/k", br#"{"Network":"10.1.0.0/26"}"#).unwrap()
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    fn held(s: &str, ip: Ipv4Addr) -> ExistingLease {
        ExistingLease {
            ipv6: None,
            subnet: s.parse().unwrap(),
            attrs: Some(LeaseAttrs::vxlan(
                ip,
                1,
                "0e:00:00:00:00:01".parse().unwrap(),
            )),
            mod_revision: 3,
            lease_id: 0x694d_8543_30fc_5110,
        }
    }

    /// Holds `s` as `ME` (listed, claimed at revision 19, announced).
    fn holding(s: Subnet) -> LeaseMachine {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, Some(s), 0);
        assert_eq!(m.poll(t), LeaseAction::List);
        m.handle(LeaseEvent::Listed(vec![]), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert_eq!(c.subnet().unwrap(), s, "the free hint comes first");
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 9,
                revision: 19,
            },
            t,
        );
        assert!(matches!(m.poll(t), LeaseAction::Acquired { .. }));
        m
    }

    const MOVED: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);

    #[test]
    fn a_moved_node_puts_its_key_again_with_the_new_public_ip() {
        let t = Instant::now();
        let s: Subnet = "10.1.0.16/28".parse().unwrap();
        let mut m = holding(s);
        m.moved(NodeId::V4(MOVED));
        assert_eq!(m.node(), NodeId::V4(MOVED));
        assert_eq!(m.poll(t), LeaseAction::List);
        // The registry still has the key with the old PublicIP (at revision 19),
        // and another node's lease beside it.
        let mut mine = held("10.1.0.16/28", ME);
        mine.mod_revision = 19;
        m.handle(
            LeaseEvent::Listed(vec![
                mine,
                held("10.1.0.32/28", Ipv4Addr::new(192, 168, 1, 11)),
            ]),
            t,
        );
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Reuse {
                key: LeaseKey::dual(s, None),
                mod_revision: 19
            }),
            "the held key, taken over while unchanged"
        );
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 10,
                revision: 23,
            },
            t,
        );
        assert_eq!(
            m.poll(t),
            LeaseAction::Acquired {
                key: LeaseKey::dual(s, None),
                lease_id: 10,
                revision: 23,
                changed_from: None
            }
        );
        assert_eq!(m.reacquisitions(), 0, "a move is not a re-acquisition");
        // A later loss re-acquires as the new PublicIP (the old one is not ours).
        m.handle(LeaseEvent::LeaseLost, t);
        assert_eq!(m.poll(t), LeaseAction::List);
        m.handle(LeaseEvent::Listed(vec![held("10.1.0.16/28", ME)]), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert_ne!(
            c.subnet().unwrap(),
            s,
            "the old PublicIP's key is not this node's any more"
        );
    }

    #[test]
    fn a_move_of_the_ipv6_address_alone_puts_the_same_key_again() {
        let t = Instant::now();
        let s: Subnet = "10.1.0.16/28".parse().unwrap();
        let mut m = holding(s);
        m.moved(NodeId::V4(ME));
        assert_eq!(m.poll(t), LeaseAction::List);
        let mut mine = held("10.1.0.16/28", ME);
        mine.mod_revision = 19;
        m.handle(LeaseEvent::Listed(vec![mine]), t);
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Reuse {
                key: LeaseKey::dual(s, None),
                mod_revision: 19
            })
        );
    }

    /// Holds `s`, then hears that its key holds garbage: lists again.
    fn garbled(s: Subnet) -> LeaseMachine {
        let t = Instant::now();
        let mut m = holding(s);
        m.handle(LeaseEvent::KeyGarbled, t);
        assert_eq!(m.poll(t), LeaseAction::List);
        m
    }

    #[test]
    fn a_key_overwritten_with_garbage_is_taken_back() {
        let t = Instant::now();
        let s: Subnet = "10.1.0.16/28".parse().unwrap();
        let mut m = garbled(s);
        // `etcdctl put <key> oops`: no lease, not a lease value.
        let garbage = ExistingLease {
            subnet: s,
            ipv6: None,
            attrs: None,
            mod_revision: 30,
            lease_id: 0,
        };
        m.handle(LeaseEvent::Listed(vec![garbage.clone()]), t);
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Reuse {
                key: LeaseKey::dual(s, None),
                mod_revision: 30
            }),
            "the same key, under a new etcd lease, if still at revision 30"
        );
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 12,
                revision: 31,
            },
            t,
        );
        assert!(matches!(
            m.poll(t),
            LeaseAction::Acquired { key, changed_from: None, .. } if key.ipv4_subnet() == Some(s)
        ));
        // Another node's garbage is never taken: only the key this node held.
        let mut m = garbled(s);
        let theirs = ExistingLease {
            subnet: "10.1.0.32/28".parse().unwrap(),
            ..garbage.clone()
        };
        m.handle(LeaseEvent::Listed(vec![theirs]), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert_eq!(
            c,
            Claim::Create {
                key: LeaseKey::dual(s, None)
            }
        );
        // A real lease that replaced the garbage meanwhile is someone's.
        let mut m = garbled(s);
        m.handle(
            LeaseEvent::Listed(vec![held("10.1.0.16/28", Ipv4Addr::new(192, 168, 1, 12))]),
            t,
        );
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert_ne!(c.subnet().unwrap(), s);
    }

    #[test]
    fn a_moved_node_whose_subnet_was_taken_meanwhile_claims_another() {
        let t = Instant::now();
        let s: Subnet = "10.1.0.16/28".parse().unwrap();
        let mut m = holding(s);
        m.moved(NodeId::V4(MOVED));
        assert_eq!(m.poll(t), LeaseAction::List);
        // Someone else's value under the key now: not ours, whatever it was before.
        m.handle(
            LeaseEvent::Listed(vec![held("10.1.0.16/28", Ipv4Addr::new(192, 168, 1, 12))]),
            t,
        );
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert!(matches!(c, Claim::Create { .. }));
        assert_ne!(c.subnet().unwrap(), s);
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 11,
                revision: 30,
            },
            t,
        );
        assert!(matches!(
            m.poll(t),
            LeaseAction::Acquired { changed_from: Some(from), .. } if from.ipv4_subnet() == Some(s)
        ));
    }

    #[test]
    fn a_move_lost_to_a_registry_error_is_tried_again() {
        let t = Instant::now();
        let s: Subnet = "10.1.0.16/28".parse().unwrap();
        let mut m = holding(s);
        m.moved(NodeId::V4(MOVED));
        assert_eq!(m.poll(t), LeaseAction::List);
        m.handle(LeaseEvent::RegistryError, t);
        let LeaseAction::Wait { until } = m.poll(t) else {
            panic!()
        };
        assert_eq!(m.poll(until), LeaseAction::List);
        m.handle(LeaseEvent::Listed(vec![held("10.1.0.16/28", ME)]), t);
        assert!(
            matches!(m.poll(t), LeaseAction::Claim(Claim::Reuse { key, .. }) if key.ipv4_subnet() == Some(s)),
            "still this node's key after the retry"
        );
    }

    #[test]
    fn a_handed_over_lease_is_announced_then_kept() {
        let t = Instant::now();
        let s: Subnet = "10.1.0.16/28".parse().unwrap();
        let mut m = LeaseMachine::holding(cfg(), ME, s, 0x77, 0);
        assert_eq!(m.held(), Some((LeaseKey::dual(s, None), 0x77)));
        assert_eq!(
            m.poll(t),
            LeaseAction::Acquired {
                key: LeaseKey::dual(s, None),
                lease_id: 0x77,
                revision: 0,
                changed_from: None
            }
        );
        assert_eq!(m.poll(t), LeaseAction::Idle);
        assert_eq!(m.reacquisitions(), 0, "a handover is not a re-acquisition");
        // the handed lease had expired: re-acquired, preferring the same subnet
        m.handle(LeaseEvent::LeaseLost, t);
        assert_eq!(m.poll(t), LeaseAction::List);
        m.handle(LeaseEvent::Listed(vec![]), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert_eq!(c.subnet().unwrap(), s);
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 0x78,
                revision: 9,
            },
            t,
        );
        assert!(matches!(
            m.poll(t),
            LeaseAction::Acquired {
                lease_id: 0x78,
                changed_from: None,
                ..
            }
        ));
        assert_eq!(m.reacquisitions(), 1);
    }

    #[test]
    fn acquires_then_idles() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        assert_eq!(m.poll(t), LeaseAction::List);
        assert_eq!(m.poll(t), LeaseAction::Idle, "waits for the listing");
        m.handle(LeaseEvent::Listed(vec![]), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 9,
                revision: 19,
            },
            t,
        );
        assert_eq!(
            m.poll(t),
            LeaseAction::Acquired {
                key: LeaseKey::dual(c.subnet().unwrap(), None),
                lease_id: 9,
                revision: 19,
                changed_from: None
            }
        );
        assert_eq!(m.poll(t), LeaseAction::Idle);
        assert_eq!(m.held(), Some((c.key(), 9)));
    }

    #[test]
    fn lost_race_tries_the_next_candidate_then_relists() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        let _ = m.poll(t);
        m.handle(LeaseEvent::Listed(vec![]), t);
        let mut tried = Vec::new();
        for _ in 0..3 {
            let LeaseAction::Claim(c) = m.poll(t) else {
                panic!()
            };
            tried.push(c.subnet().unwrap());
            m.handle(LeaseEvent::RaceLost, t);
        }
        tried.sort();
        tried.dedup();
        assert_eq!(
            tried.len(),
            3,
            "three distinct candidates of the 3-subnet pool"
        );
        assert_eq!(m.poll(t), LeaseAction::List, "all lost: list again");
        // now the pool is full
        m.handle(
            LeaseEvent::Listed(vec![
                held("10.1.0.16/28", Ipv4Addr::new(1, 1, 1, 1)),
                held("10.1.0.32/28", Ipv4Addr::new(1, 1, 1, 2)),
                held("10.1.0.48/28", Ipv4Addr::new(1, 1, 1, 3)),
            ]),
            t,
        );
        let LeaseAction::Exhausted(e) = m.poll(t) else {
            panic!()
        };
        assert_eq!(e.leased, 3);
        assert!(matches!(m.poll(t), LeaseAction::Wait { .. }));
        assert_eq!(m.poll(t + EXHAUSTED_RETRY), LeaseAction::List);
    }

    #[test]
    fn restart_reuses_my_lease() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        let _ = m.poll(t);
        m.handle(LeaseEvent::Listed(vec![held("10.1.0.32/28", ME)]), t);
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Reuse {
                key: LeaseKey::dual("10.1.0.32/28".parse().unwrap(), None),
                mod_revision: 3
            })
        );
    }

    #[test]
    fn restart_holds_my_reservation_without_a_lease() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        let _ = m.poll(t);
        let mine = ExistingLease {
            lease_id: 0,
            ..held("10.1.0.32/28", ME)
        };
        m.handle(LeaseEvent::Listed(vec![mine]), t);
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Reserved {
                key: LeaseKey::dual("10.1.0.32/28".parse().unwrap(), None),
                mod_revision: 3
            })
        );
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 0,
                revision: 3,
            },
            t,
        );
        assert_eq!(
            m.poll(t),
            LeaseAction::Acquired {
                key: LeaseKey::dual("10.1.0.32/28".parse().unwrap(), None),
                lease_id: 0,
                revision: 3,
                changed_from: None
            }
        );
    }

    #[test]
    fn lost_lease_is_reacquired_preferring_the_same_subnet() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        let _ = m.poll(t);
        m.handle(LeaseEvent::Listed(vec![]), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 1,
                revision: 11,
            },
            t,
        );
        let _ = m.poll(t);
        m.handle(LeaseEvent::LeaseLost, t);
        assert_eq!(m.poll(t), LeaseAction::List);
        m.handle(LeaseEvent::Listed(vec![]), t);
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Create {
                key: LeaseKey::dual(c.subnet().unwrap(), None)
            })
        );
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 2,
                revision: 12,
            },
            t,
        );
        assert_eq!(
            m.poll(t),
            LeaseAction::Acquired {
                key: LeaseKey::dual(c.subnet().unwrap(), None),
                lease_id: 2,
                revision: 12,
                changed_from: None
            }
        );
        assert_eq!(m.reacquisitions(), 1);
    }

    #[test]
    fn lost_lease_whose_subnet_was_taken_reports_the_change() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, Some("10.1.0.16/28".parse().unwrap()), 0);
        let _ = m.poll(t);
        m.handle(LeaseEvent::Listed(vec![]), t);
        assert_eq!(
            m.poll(t),
            LeaseAction::Claim(Claim::Create {
                key: LeaseKey::dual("10.1.0.16/28".parse().unwrap(), None)
            })
        );
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 1,
                revision: 11,
            },
            t,
        );
        let _ = m.poll(t);
        m.handle(LeaseEvent::LeaseLost, t);
        let _ = m.poll(t);
        m.handle(
            LeaseEvent::Listed(vec![held("10.1.0.16/28", Ipv4Addr::new(9, 9, 9, 9))]),
            t,
        );
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        assert_ne!(c.subnet().unwrap(), "10.1.0.16/28".parse().unwrap());
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 2,
                revision: 12,
            },
            t,
        );
        let LeaseAction::Acquired { changed_from, .. } = m.poll(t) else {
            panic!()
        };
        assert_eq!(
            changed_from,
            LeaseKey::ipv4("10.1.0.16/28".parse().unwrap())
        );
    }

    #[test]
    fn registry_errors_back_off_exponentially() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        let mut waits = Vec::new();
        let mut now = t;
        for _ in 0..8 {
            assert_eq!(m.poll(now), LeaseAction::List);
            m.handle(LeaseEvent::RegistryError, now);
            let LeaseAction::Wait { until } = m.poll(now) else {
                panic!()
            };
            waits.push(until - now);
            now = until;
        }
        // Each wait is between half and all of its step: 100 ms, 200 ms, … 5 s.
        let steps = [1, 2, 4, 8, 16, 32, 50, 50].map(|n| BACKOFF_MIN * n);
        for (w, step) in waits.iter().zip(steps) {
            assert!(*w >= step / 2 && *w <= step, "{w:?} for a step of {step:?}");
        }
        assert!(waits[7] >= BACKOFF_MAX / 2);
    }

    /// Agents failing together (etcd restarted under them) spread their retries: of
    /// 1000 machines with different seeds, the waits are not one value but spread
    /// over the step's second half.
    #[test]
    fn backoff_is_jittered_across_agents() {
        let t = Instant::now();
        // The fourth wait in a row (a step of 800 ms) of 1000 agents.
        let mut fourth: Vec<Duration> = (0..1000u64)
            .map(|seed| {
                let mut m =
                    LeaseMachine::new(cfg(), ME, None, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut now = t;
                let mut last = Duration::ZERO;
                for _ in 0..4 {
                    assert_eq!(m.poll(now), LeaseAction::List);
                    m.handle(LeaseEvent::RegistryError, now);
                    let LeaseAction::Wait { until } = m.poll(now) else {
                        panic!()
                    };
                    last = until - now;
                    now = until;
                }
                last
            })
            .collect();
        fourth.sort();
        let step = BACKOFF_MIN * 8;
        assert!(fourth[0] >= step / 2 && fourth[999] <= step, "{fourth:?}");
        // Spread over the whole half-step (uniform: the middle half spans ~200 ms).
        assert!(
            fourth[750] - fourth[250] >= Duration::from_millis(150),
            "{:?}",
            &fourth[240..760]
        );
        let mut seed = 7;
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), &mut seed);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }

    fn dual_cfg() -> NetworkConfig {
        NetworkConfig::parse(
            "/k",
            br#"{"Network":"10.1.0.0/24","EnableIPv6":true,"IPv6Network":"fd00:1::/60"}"#,
        )
        .unwrap()
    }

    /// Claims with `m` on an empty registry; returns the key won.
    fn claim_fresh(m: &mut LeaseMachine, t: Instant, listing: Vec<ExistingLease>) -> Claim {
        assert_eq!(m.poll(t), LeaseAction::List);
        m.handle(LeaseEvent::Listed(listing), t);
        let LeaseAction::Claim(c) = m.poll(t) else {
            panic!()
        };
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 0x51,
                revision: 30,
            },
            t,
        );
        c
    }

    /// An IPv6-only network: keys `0.0.0.0-0&<ipv6>`, the node known by its PublicIPv6
    /// through a restart, a loss to another node (which renumbers its pods), a move of
    /// its address and a garbled key.
    #[test]
    fn an_ipv6_only_lease_is_held_found_again_lost_and_moved_by_public_ipv6() {
        let t = Instant::now();
        let mut cfg = dual_cfg();
        cfg.ipv4 = None;
        let me6: Ipv6Addr = "fd00:64::10".parse().unwrap();
        let node = NodeId::V6(me6);
        let mac: vxmesh_dataplane::wire::MacAddr = "0e:00:00:00:06:0a".parse().unwrap();
        let listing_of = |key: LeaseKey, ip: Ipv6Addr, rev: i64| {
            crate::registry_events::Listing {
                revision: rev + 1,
                entries: vec![crate::registry_events::Entry {
                    key: crate::lease::lease_key_of("/coreos.com/network", &key),
                    value: LeaseAttrs::vxlan_ipv6_only(ip, 1, mac)
                        .to_json()
                        .into_bytes(),
                    create_revision: rev,
                    mod_revision: rev,
                    lease: 0x51,
                }],
            }
            .existing_leases()
        };
        let mut m = LeaseMachine::for_node(cfg.clone(), node, Hints::default(), 3);
        let c = claim_fresh(&mut m, t, vec![]);
        assert!(matches!(c, Claim::Create { .. }));
        assert_eq!(c.subnet(), None);
        let key = c.key();
        assert!(key.key_form().starts_with("0.0.0.0-0&fd00:1:"), "{key:?}");
        assert!(
            matches!(m.poll(t), LeaseAction::Acquired { key: k, changed_from: None, .. } if k == key)
        );

        // A restart finds it by PublicIPv6; another IPv6-only node (PublicIP 0.0.0.0
        // too) does not take it.
        let mut after = LeaseMachine::for_node(cfg.clone(), node, Hints::default(), 99);
        let again = claim_fresh(&mut after, t, listing_of(key, me6, 30));
        assert_eq!(
            again,
            Claim::Reuse {
                key,
                mod_revision: 30
            }
        );
        let other: Ipv6Addr = "fd00:64::11".parse().unwrap();
        let mut stranger =
            LeaseMachine::for_node(cfg.clone(), NodeId::V6(other), Hints::default(), 5);
        let theirs = claim_fresh(&mut stranger, t, listing_of(key, me6, 30));
        assert!(matches!(theirs, Claim::Create { .. }) && theirs.key() != key);

        // Lost to that node: a new subnet, and the pods must renumber.
        assert!(matches!(after.poll(t), LeaseAction::Acquired { .. }));
        after.handle(LeaseEvent::LeaseLost, t);
        let new = claim_fresh(&mut after, t, listing_of(key, other, 40));
        assert_ne!(new.key(), key);
        assert_eq!(
            after.poll(t),
            LeaseAction::Acquired {
                key: new.key(),
                lease_id: 0x51,
                revision: 30,
                changed_from: Some(key)
            }
        );

        // The PublicIPv6 moves: the held key is put again naming the new address.
        let moved: Ipv6Addr = "fd00:64::20".parse().unwrap();
        after.moved(NodeId::V6(moved));
        assert_eq!(after.node(), NodeId::V6(moved));
        let c = claim_fresh(&mut after, t, listing_of(new.key(), me6, 50));
        assert_eq!(
            c,
            Claim::Reuse {
                key: new.key(),
                mod_revision: 50
            }
        );

        // Its key garbled: taken back.
        assert!(matches!(
            after.poll(t),
            LeaseAction::Acquired {
                changed_from: None,
                ..
            }
        ));
        after.handle(LeaseEvent::KeyGarbled, t);
        assert_eq!(after.poll(t), LeaseAction::List);
        let garbage = crate::registry_events::Listing {
            revision: 61,
            entries: vec![crate::registry_events::Entry {
                key: crate::lease::lease_key_of("/coreos.com/network", &new.key()),
                value: b"garbage".to_vec(),
                create_revision: 60,
                mod_revision: 60,
                lease: 0,
            }],
        };
        after.handle(LeaseEvent::Listed(garbage.existing_leases()), t);
        assert_eq!(
            after.poll(t),
            LeaseAction::Claim(Claim::Reuse {
                key: new.key(),
                mod_revision: 60
            })
        );
    }

    #[test]
    fn a_dual_stack_lease_is_claimed_held_and_found_again_after_a_restart() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(dual_cfg(), ME, None, 3);
        let c = claim_fresh(&mut m, t, vec![]);
        let ipv6 = c.ipv6().expect("dual stack: one key names both subnets");
        assert!(matches!(c, Claim::Create { .. }));
        assert_eq!(
            m.poll(t),
            LeaseAction::Acquired {
                key: LeaseKey::dual(c.subnet().unwrap(), Some(ipv6)),
                lease_id: 0x51,
                revision: 30,
                changed_from: None
            }
        );
        let key = m.held_key().unwrap();
        assert_eq!(key, c.key());
        assert_eq!(
            key.key_form(),
            format!("{}&{}", c.subnet().unwrap().key_form(), ipv6.key_form())
        );

        // What the agent wrote under that key (flanneld's dual-stack value).
        let value = LeaseAttrs::vxlan(ME, 1, "0e:00:00:00:00:0a".parse().unwrap())
            .with_ipv6(
                "fd00:64::10".parse().unwrap(),
                1,
                "0e:00:00:00:06:0a".parse().unwrap(),
            )
            .to_json();
        let listing = crate::registry_events::Listing {
            revision: 31,
            entries: vec![crate::registry_events::Entry {
                key: crate::lease::lease_key_of("/coreos.com/network", &key),
                value: value.into_bytes(),
                create_revision: 30,
                mod_revision: 30,
                lease: 0x51,
            }],
        };

        // The agent restarts: a new machine, another seed, no subnet file.
        let mut after = LeaseMachine::new(dual_cfg(), ME, None, 99);
        assert_eq!(after.poll(t), LeaseAction::List);
        after.handle(LeaseEvent::Listed(listing.existing_leases()), t);
        assert_eq!(
            after.poll(t),
            LeaseAction::Claim(Claim::Reuse {
                key: LeaseKey::dual(c.subnet().unwrap(), Some(ipv6)),
                mod_revision: 30
            })
        );
        after.handle(
            LeaseEvent::Claimed {
                lease_id: 0x52,
                revision: 32,
            },
            t,
        );
        assert!(matches!(
            after.poll(t),
            LeaseAction::Acquired { key, changed_from: None, .. } if key.ipv6_subnet() == Some(ipv6)
        ));
        assert_eq!(after.held_key(), Some(key), "the same key after a restart");

        // The key expired while the node was away: a subnet file written by a
        // dual-stack flanneld names both halves, tried first.
        let v6: Subnet6 = "fd00:1:0:7::/64".parse().unwrap();
        let mut hinted =
            LeaseMachine::new(dual_cfg(), ME, Some("10.1.0.128/26".parse().unwrap()), 5)
                .with_ipv6_hint(Some(v6));
        assert_eq!(
            claim_fresh(&mut hinted, t, vec![]),
            Claim::Create {
                key: LeaseKey::dual("10.1.0.128/26".parse().unwrap(), Some(v6))
            }
        );

        // The lease is lost (expired, deleted): both halves are tried again together.
        m.handle(LeaseEvent::LeaseLost, t);
        assert_eq!(m.held_key(), None);
        let again = claim_fresh(&mut m, t, vec![]);
        assert_eq!(
            again,
            Claim::Create {
                key: LeaseKey::dual(c.subnet().unwrap(), Some(ipv6))
            }
        );
    }

    #[test]
    fn stale_events_are_ignored() {
        let t = Instant::now();
        let mut m = LeaseMachine::new(cfg(), ME, None, 0);
        m.handle(LeaseEvent::LeaseLost, t);
        m.handle(
            LeaseEvent::Claimed {
                lease_id: 4,
                revision: 14,
            },
            t,
        );
        m.handle(LeaseEvent::RaceLost, t);
        assert_eq!(m.poll(t), LeaseAction::List);
        assert!(m.held().is_none());
    }
}
