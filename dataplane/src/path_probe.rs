//! Proof that the underlay TAP path reaches a peer, before egress frames take it.
//!
//! Frames written to the underlay TAP ([`crate::offload::tunnel`]) enter the kernel as
//! packets *received* on that device: they cross PREROUTING and FORWARD, where the UDP
//! sockets' datagrams cross OUTPUT. A host firewall that drops forwarded UDP would
//! black-hole them, and nothing on this node would see it. So a peer's frames take the
//! path only while it is proven to reach that peer:
//!
//! - The egress thread sends, through the underlay TAP, an ICMP echo request from this
//!   node's VTEP address to the peer's (`<subnet>.0`, which flanneld and vxmesh put on
//!   their VXLAN device or TAP, so the peer's kernel answers), carrying the time it was
//!   sent and a tag over that time and the peer's address that only this engine can
//!   make ([`ProbeKey`], [`probe_frame`]).
//! - The ingress thread takes the echo reply, which comes back over whichever path the
//!   peer uses, as proof for [`VALID_MS`] from the time the probe was sent
//!   ([`reply_from`], [`PathState::answered`]). A reply more than [`MAX_REPLY_AGE_MS`]
//!   old is not taken: whoever can see the underlay sees the tags, and replaying an
//!   old answer must not keep a path that stopped working in use (an answer replayed
//!   while it is still young proves no longer than the genuine one did).
//! - While frames flow to the peer it is probed again every [`REFRESH_MS`], so a path
//!   that stops working (a firewall reloaded without vxmesh's rule) is left within
//!   [`VALID_MS`]. An unproven peer is probed every [`RETRY_MS`] while frames flow to
//!   it, and after [`QUICK_TRIES`] unanswered probes every [`SLOW_RETRY_MS`]: a peer
//!   that never answers (its firewall drops ICMP) keeps the usual path, at the cost of
//!   one small packet per peer every ten seconds.
//!
//! The state is per peer ([`PathState`], kept with its counters, so it outlives table
//! generations) and works on a caller-given clock (ms, [`PathState::decide`] and
//! [`PathState::answered`] take `now`; the engine passes [`clock_ms`]): nothing here
//! does I/O.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::wire::checksum::{checksum, verifies};
use crate::wire::ip::PROTO_ICMP;
use crate::wire::MacAddr;

/// How long one answer proves the path.
pub const VALID_MS: u64 = 3_500;
/// Probes of a proven path, while frames flow: three go unanswered before it lapses,
/// so frames stop taking a path that broke (a firewall reloaded) within [`VALID_MS`].
pub const REFRESH_MS: u64 = 1_000;
/// Probes of an unproven path, while frames flow.
pub const RETRY_MS: u64 = 1_000;
/// Unanswered probes after which an unproven path is probed only every
/// [`SLOW_RETRY_MS`] (and the engine says so, once).
pub const QUICK_TRIES: u32 = 5;
/// Probes of a path that has not answered [`QUICK_TRIES`] times.
pub const SLOW_RETRY_MS: u64 = 10_000;

/// An answer to a probe sent longer ago than this is not taken (see the module doc).
/// Far above any round trip within a cluster, well below [`VALID_MS`].
pub const MAX_REPLY_AGE_MS: u64 = 2_000;

/// The ICMP identifier of every probe ("vx").
pub const PROBE_ICMP_ID: u16 = 0x7678;
/// ICMP payload: the time the probe was sent (the caller's ms, 8 bytes) and its tag.
const PAYLOAD_LEN: usize = 16;
const ICMP_LEN: usize = 8 + PAYLOAD_LEN;
const IP_LEN: usize = 20 + ICMP_LEN;
/// A probe frame: Ethernet, IPv4 without options, ICMP echo with the payload.
pub const PROBE_LEN: usize = 14 + IP_LEN;
/// No reply to a probe is longer than this (the peer echoes [`PROBE_LEN`] bytes; a
/// path may pad a short frame to 60). Longer frames are not looked at.
pub const MAX_REPLY_LEN: usize = 128;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The key of one engine's probe tags: a SipHash-2-4 key drawn when the engine starts.
/// Another engine (another agent, the one before a restart or a handover) has another,
/// and nobody who only sees the probes and their answers on the underlay can tag a
/// probe time of their choosing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProbeKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

impl ProbeKey {
    /// A fresh key from the process's random source (std's `RandomState`, seeded from
    /// the operating system) and the clock.
    pub fn random() -> ProbeKey {
        use std::hash::BuildHasher;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let state = std::collections::hash_map::RandomState::new();
        ProbeKey {
            k0: state.hash_one((0u8, now, std::process::id())),
            k1: state.hash_one((1u8, now, std::process::id())),
        }
    }

    /// A key with these words (tests).
    pub const fn from_words(k0: u64, k1: u64) -> ProbeKey {
        ProbeKey { k0, k1 }
    }

    /// The tag of a probe sent at `sent_ms` to `peer` (its VTEP address).
    pub fn tag(&self, sent_ms: u64, peer: Ipv4Addr) -> u64 {
        let mut m = [0u8; 12];
        m[..8].copy_from_slice(&sent_ms.to_be_bytes());
        m[8..].copy_from_slice(&peer.octets());
        siphash24(self.k0, self.k1, &m)
    }
}

/// SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) of
/// `msg` under the key `(k0, k1)`, the key's bytes read little-endian as the paper
/// does. Checked against the paper's test vectors and std's (deprecated) `SipHasher`.
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut compress = |m: u64| {
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    };
    let mut chunks = msg.chunks_exact(8);
    for c in chunks.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        compress(u64::from_le_bytes(w));
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    // The message length mod 256 in the top byte (truncation intended).
    last[7] = msg.len() as u8;
    compress(u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Writes the echo request `src` sends `dst` as probe `seq` at `sent_ms`, tagged
/// with `key`: the inner frame that goes through the underlay TAP, complete
/// (checksums filled in).
pub fn probe_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seq: u16,
    key: &ProbeKey,
    sent_ms: u64,
) -> [u8; PROBE_LEN] {
    let mut f = [0u8; PROBE_LEN];
    f[..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&src_mac.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..14 + 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(IP_LEN as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip[6] = 0x40; // DF: a probe is never fragmented.
    ip[8] = 64;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[34..];
    icmp[0] = ICMP_ECHO_REQUEST;
    icmp[4..6].copy_from_slice(&PROBE_ICMP_ID.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..16].copy_from_slice(&sent_ms.to_be_bytes());
    icmp[16..24].copy_from_slice(&key.tag(sent_ms, dst).to_be_bytes());
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f
}

/// An answer to one of this engine's probes ([`reply_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The address that answered (the IPv4 source), which the caller checks against
    /// the peer's VTEP address; the tag binds it.
    pub from: Ipv4Addr,
    /// When the probe it answers was sent (the caller's ms).
    pub sent_ms: u64,
}

/// If `frame` (an inner frame from a peer), seen at `now`, is the echo reply to one of
/// the probes this engine (`key`) sent at most [`MAX_REPLY_AGE_MS`] ago, what it
/// answers. Anything else, including a malformed frame, a forged or stale answer and
/// another engine's, is `None` and goes on as usual.
pub fn reply_from(frame: &[u8], key: &ProbeKey, now: u64) -> Option<Reply> {
    if frame.len() > MAX_REPLY_LEN || frame.len() < PROBE_LEN {
        return None;
    }
    if frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    // No options, not a fragment, ICMP, and long enough for what it says it holds.
    if ip[0] != 0x45 || ip[9] != PROTO_ICMP || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total != IP_LEN || !verifies(&ip[..20]) {
        return None;
    }
    let icmp = &ip[20..IP_LEN];
    if icmp[0] != ICMP_ECHO_REPLY
        || icmp[1] != 0
        || icmp[4..6] != PROBE_ICMP_ID.to_be_bytes()
        || !verifies(icmp)
    {
        return None;
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&icmp[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let (sent_ms, tag) = (word(8), word(16));
    let from = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let fresh = sent_ms <= now && now - sent_ms <= MAX_REPLY_AGE_MS;
    (fresh && tag == key.tag(sent_ms, from)).then_some(Reply { from, sent_ms })
}

/// The clock of the path states: monotonic ms since the first call, from 1.
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// The probe as a peer's kernel echoes it (for tests here and in the engine):
/// addresses and MACs swapped, type 0, the ICMP checksum recomputed, TTL 64 and a
/// fresh IPv4 ID with its checksum.
#[cfg(test)]
pub(crate) fn kernel_reply(probe: &[u8; PROBE_LEN]) -> Vec<u8> {
    let mut r = probe.to_vec();
    r[..6].copy_from_slice(&probe[6..12]);
    r[6..12].copy_from_slice(&probe[..6]);
    r[14 + 12..14 + 16].copy_from_slice(&probe[14 + 16..14 + 20]);
    r[14 + 16..14 + 20].copy_from_slice(&probe[14 + 12..14 + 16]);
    r[14 + 4..14 + 6].copy_from_slice(&[0x9a, 0x31]);
    r[14 + 6] = 0; // Linux clears DF on echo replies that fit.
    r[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&r[14..34]);
    r[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    r[34] = ICMP_ECHO_REPLY;
    r[36..38].copy_from_slice(&[0, 0]);
    let c = checksum(&r[34..]);
    r[36..38].copy_from_slice(&c.to_be_bytes());
    r
}

/// What the egress thread does with a frame for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The path is proven: the frame may go through the underlay TAP.
    pub underlay: bool,
    /// Send a probe first (this thread won the turn).
    pub probe: bool,
    /// Probes sent since the last answer, counting this one when `probe`.
    pub unanswered: u32,
}

/// One peer's underlay TAP path, shared by the egress threads (which probe and read
/// it) and the ingress thread (which records answers).
#[derive(Debug, Default)]
pub struct PathState {
    /// Until when (caller's ms) the path is proven; 0: not yet.
    ok_until: AtomicU64,
    /// When the next probe is due.
    next_probe: AtomicU64,
    /// Probes sent since the last answer.
    unanswered: AtomicU32,
}

impl PathState {
    /// Whether a frame sent at `now` may take the path, and whether to probe first.
    /// Of threads deciding at the same time only one gets the probe.
    pub fn decide(&self, now: u64) -> Decision {
        let underlay = now < self.ok_until.load(Ordering::Relaxed);
        let due = self.next_probe.load(Ordering::Relaxed);
        let mut unanswered = self.unanswered.load(Ordering::Relaxed);
        if now < due {
            return Decision {
                underlay,
                probe: false,
                unanswered,
            };
        }
        let wait = if underlay {
            REFRESH_MS
        } else if unanswered < QUICK_TRIES {
            RETRY_MS
        } else {
            SLOW_RETRY_MS
        };
        let probe = self
            .next_probe
            .compare_exchange(
                due,
                now.saturating_add(wait),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if probe {
            unanswered = self.unanswered.fetch_add(1, Ordering::Relaxed) + 1;
        }
        Decision {
            underlay,
            probe,
            unanswered,
        }
    }

    /// Records, at `now`, an answer to the probe sent at `sent_ms`: the path is
    /// proven for [`VALID_MS`] from when that probe left. Returns whether the path was
    /// not proven before (for a log line).
    pub fn answered(&self, sent_ms: u64, now: u64) -> bool {
        let before = self
            .ok_until
            .fetch_max(sent_ms.saturating_add(VALID_MS), Ordering::Relaxed);
        self.unanswered.store(0, Ordering::Relaxed);
        // The probe that found it unproven asked for the next one a retry away.
        self.next_probe
            .fetch_max(now.saturating_add(REFRESH_MS), Ordering::Relaxed);
        before <= now
    }

    /// Whether the path is proven at `now`.
    pub fn proven(&self, now: u64) -> bool {
        now < self.ok_until.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_MAC: MacAddr = MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
    const B_MAC: MacAddr = MacAddr([0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44]);
    const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 0);
    const KEY: ProbeKey = ProbeKey::from_words(0x0123_4567_89ab_cdef, 0x5eed_0000_1234_abcd);
    const SENT: u64 = 41_000;

    #[test]
    fn probe_is_a_valid_echo_request() {
        let f = probe_frame(A_MAC, B_MAC, A, B, 7, &KEY, SENT);
        let eth = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = eth.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().source_addr(), A);
        assert_eq!(ip.header().destination_addr(), B);
        assert!(ip.header().dont_fragment());
        assert!(verifies(&f[14..34]));
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = eth.transport else {
            panic!("not ICMP");
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 0x7678, seq: 7 })
        );
        assert!(verifies(&f[34..]));
        assert_eq!(&icmp.payload()[..8], &SENT.to_be_bytes());
        assert_eq!(&icmp.payload()[8..], &KEY.tag(SENT, B).to_be_bytes());
    }

    #[test]
    fn the_kernels_reply_is_recognised() {
        let f = probe_frame(A_MAC, B_MAC, A, B, 7, &KEY, SENT);
        let r = kernel_reply(&f);
        let answer = Some(Reply {
            from: B,
            sent_ms: SENT,
        });
        assert_eq!(reply_from(&r, &KEY, SENT + 3), answer);
        // Padded to Ethernet's minimum on some hop: still the reply.
        let mut padded = r.clone();
        padded.resize(60, 0);
        assert_eq!(reply_from(&padded, &KEY, SENT + 3), answer);
        // Seen at once, and at the edge of its age.
        assert_eq!(reply_from(&r, &KEY, SENT), answer);
        assert_eq!(reply_from(&r, &KEY, SENT + MAX_REPLY_AGE_MS), answer);
    }

    #[test]
    fn anything_else_is_not_a_reply() {
        let f = probe_frame(A_MAC, B_MAC, A, B, 7, &KEY, SENT);
        let r = kernel_reply(&f);
        let now = SENT + 3;
        // Another engine's key, the request itself, a corrupted payload, a cut frame.
        let other = ProbeKey::from_words(0x0123_4567_89ab_cdef, 0x5eed_0000_1234_abcc);
        assert_eq!(reply_from(&r, &other, now), None);
        assert_eq!(reply_from(&f, &KEY, now), None);
        let mut bad = r.clone();
        bad[50] ^= 0x10;
        assert_eq!(reply_from(&bad, &KEY, now), None);
        for n in 0..r.len() {
            assert_eq!(reply_from(&r[..n], &KEY, now), None, "cut at {n}");
        }
        // Another ICMP identifier, a fragment, IPv6, a frame too long to be one.
        let mut other_id = r.clone();
        other_id[38] = 0x11;
        assert_eq!(reply_from(&other_id, &KEY, now), None);
        let mut frag = r.clone();
        frag[14 + 7] = 1;
        assert_eq!(reply_from(&frag, &KEY, now), None);
        let mut v6 = r.clone();
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(reply_from(&v6, &KEY, now), None);
        let mut long = r.clone();
        long.resize(MAX_REPLY_LEN + 1, 0);
        assert_eq!(reply_from(&long, &KEY, now), None);
    }

    /// The ICMP checksum recomputed after an edit of `r`'s payload.
    fn reseal(r: &mut [u8]) {
        r[36..38].copy_from_slice(&[0, 0]);
        let c = checksum(&r[34..]);
        r[36..38].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn stale_replayed_or_forged_answers_are_not_taken() {
        let r = kernel_reply(&probe_frame(A_MAC, B_MAC, A, B, 7, &KEY, SENT));
        // Replayed once its probe is older than MAX_REPLY_AGE_MS, much later, or
        // from "before" the probe was sent (a clock that is not ours).
        for now in [SENT + MAX_REPLY_AGE_MS + 1, SENT + 3_600_000, SENT - 1, 0] {
            assert_eq!(reply_from(&r, &KEY, now), None, "seen at {now}");
        }
        // An old answer with its time moved forward: the tag no longer fits.
        let mut moved = r.clone();
        moved[42..50].copy_from_slice(&(SENT + 10_000).to_be_bytes());
        reseal(&mut moved);
        assert!(verifies(&moved[34..]));
        assert_eq!(reply_from(&moved, &KEY, SENT + 10_001), None);
        // B's answer made to come from C (another peer's VTEP address): the tag is
        // bound to the address the probe went to.
        let c = Ipv4Addr::new(10, 244, 3, 0);
        let mut elsewhere = r.clone();
        elsewhere[26..30].copy_from_slice(&c.octets());
        elsewhere[24..26].copy_from_slice(&[0, 0]);
        let sum = checksum(&elsewhere[14..34]);
        elsewhere[24..26].copy_from_slice(&sum.to_be_bytes());
        assert!(verifies(&elsewhere[14..34]));
        assert_eq!(reply_from(&elsewhere, &KEY, SENT + 3), None);
    }

    #[test]
    fn keys_differ_and_hide_in_debug() {
        let (a, b) = (ProbeKey::random(), ProbeKey::random());
        assert_ne!(a, b);
        assert_ne!(a.tag(SENT, B), b.tag(SENT, B));
        assert_eq!(format!("{a:?}"), "ProbeKey(..)");
    }

    /// The test vectors of the SipHash paper (appendix A and its reference
    /// implementation's table): key 00 01 .. 0f, messages 00 01 .. (n-1).
    #[test]
    fn siphash_matches_the_papers_vectors() {
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(siphash24(k0, k1, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash24(k0, k1, &msg[..8]), 0x93f5_f579_9a93_2462);
        assert_eq!(siphash24(k0, k1, &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    proptest::proptest! {
        /// The same as std's SipHash-2-4 (`SipHasher`, deprecated as a `Hasher` for
        /// hash tables but the same function) for any key and message.
        #[test]
        fn siphash_matches_std(k0 in 0u64.., k1 in 0u64.., msg in proptest::collection::vec(0u8.., 0..40)) {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
            std::hash::Hasher::write(&mut h, &msg);
            proptest::prop_assert_eq!(siphash24(k0, k1, &msg), std::hash::Hasher::finish(&h));
        }

        /// No frame makes the reader panic, whatever the clock says.
        #[test]
        fn reply_from_never_panics(frame in proptest::collection::vec(0u8.., 0..140), now in 0u64..) {
            let _ = reply_from(&frame, &KEY, now);
        }
    }

    #[test]
    fn unproven_until_answered_then_refreshed() {
        let p = PathState::default();
        let d = p.decide(1_000);
        assert_eq!(
            d,
            Decision {
                underlay: false,
                probe: true,
                unanswered: 1
            }
        );
        // Nothing more until a retry is due.
        assert!(!p.decide(1_500).probe);
        assert!(p.answered(1_002, 1_002));
        assert!(p.decide(1_003).underlay);
        assert!(!p.answered(1_004, 1_004), "already proven");
        // Refreshed every REFRESH_MS while frames flow; proven meanwhile.
        assert!(!p.decide(1_004 + REFRESH_MS - 1).probe);
        let d = p.decide(1_004 + REFRESH_MS);
        assert!(d.underlay && d.probe);
        // The last answer (1_004) counts.
        assert!(p.proven(1_004 + VALID_MS - 1));
        assert!(!p.proven(1_004 + VALID_MS));
    }

    #[test]
    fn an_answer_proves_the_path_from_when_its_probe_left() {
        let p = PathState::default();
        p.decide(1_000);
        assert!(p.answered(1_000, 1_800));
        assert!(p.proven(1_000 + VALID_MS - 1));
        assert!(!p.proven(1_000 + VALID_MS));
        // An answer to an older probe seen later does not shorten it.
        assert!(!p.answered(900, 1_900));
        assert!(p.proven(1_000 + VALID_MS - 1));
    }

    #[test]
    fn a_path_that_stops_answering_lapses() {
        let p = PathState::default();
        p.decide(0);
        p.answered(1, 1);
        let mut t = 1;
        let mut probes = 0;
        loop {
            let d = p.decide(t);
            if !d.underlay {
                break;
            }
            probes += u32::from(d.probe);
            t += 100;
        }
        // Lapsed VALID_MS after the answer, after three refresh probes went unanswered.
        assert_eq!(t, 1 + VALID_MS);
        assert!(probes >= 2, "{probes}");
    }

    #[test]
    fn retries_slow_down_after_quick_tries() {
        let p = PathState::default();
        let mut sent = Vec::new();
        let mut t = 0;
        while t < 120_000 {
            let d = p.decide(t);
            if d.probe {
                sent.push((t, d.unanswered));
            }
            assert!(!d.underlay);
            t += 100;
        }
        let times: Vec<u64> = sent.iter().map(|s| s.0).collect();
        assert_eq!(
            &times[..7],
            &[0, 1_000, 2_000, 3_000, 4_000, 5_000, 15_000],
            "{times:?}"
        );
        assert_eq!(sent[4].1, QUICK_TRIES);
        // An answer at last: proven, and the count starts over.
        assert!(p.answered(t, t));
        assert!(p.decide(t + 1).underlay);
    }

    #[test]
    fn one_probe_per_turn_across_threads() {
        let p = std::sync::Arc::new(PathState::default());
        let probes: u32 = (0..4)
            .map(|_| {
                let p = std::sync::Arc::clone(&p);
                std::thread::spawn(move || (0..1000).filter(|_| p.decide(500).probe).count() as u32)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(probes, 1);
    }
}
