use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::prelude::*;

use super::*;

/// Peer `n` over an IPv4 underlay.
fn peer(n: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, n), 8472))
}

/// Peer `n` over an IPv6 underlay.
fn peer6(n: u8) -> SocketAddr {
    let ip = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, u16::from(n));
    SocketAddr::V6(SocketAddrV6::new(ip, 8472, 0, 0))
}

/// Destination `n` of a generated test: 2 and 3 over IPv4, 4 and 5 over IPv6.
fn dest(n: u8) -> SocketAddr {
    if n < 4 {
        peer(n)
    } else {
        peer6(n)
    }
}

/// What `offload::segment` returns for `count` datagrams of `stride` bytes, the last `last`.
fn segs(stride: usize, count: usize, last: usize) -> Segments {
    Segments {
        stride,
        count,
        len: (count - 1) * stride + last,
    }
}

fn one(len: usize) -> Segments {
    segs(len, 1, len)
}

fn entry(offset: usize, len: usize, stride: usize) -> SendEntry {
    SendEntry {
        dst: peer(2),
        offset,
        len,
        stride,
        socket: 0,
        tos: 0,
    }
}

fn push(b: &mut TxBatch, s: Segments, dst: SocketAddr, socket: usize, gso: bool) {
    assert!(b.push(s, dst, socket, gso, 0), "{s:?} refused");
}

#[test]
fn entry_datagram_count_and_ranges() {
    assert_eq!(entry(0, 100, 0).datagrams(), 1);
    assert_eq!(entry(0, 100, 100).datagrams(), 1);
    assert_eq!(entry(0, 201, 100).datagrams(), 3);
    assert_eq!(entry(0, 200, 100).datagrams(), 2);
    let e = entry(10, 201, 100);
    assert_eq!(e.datagram(0), Some(10..110));
    assert_eq!(e.datagram(2), Some(210..211));
    assert_eq!(e.datagram(3), None);
    assert_eq!(entry(5, 50, 0).datagram(0), Some(5..55));
    assert_eq!(entry(5, 50, 80).datagram(0), Some(5..55));
}

#[test]
fn equal_datagrams_to_one_peer_share_a_run() {
    let mut b = TxBatch::new(1 << 20, 16);
    for _ in 0..3 {
        push(&mut b, one(1000), peer(2), 1, true);
    }
    assert_eq!(
        b.entries(),
        &[SendEntry {
            dst: peer(2),
            offset: 0,
            len: 3000,
            stride: 1000,
            socket: 1,
            tos: 0,
        }]
    );
    assert_eq!(b.bytes().len(), 3000);
}

#[test]
fn a_short_datagram_ends_the_run() {
    let mut b = TxBatch::new(1 << 20, 16);
    push(&mut b, one(1000), peer(2), 0, true);
    push(&mut b, one(500), peer(2), 0, true);
    // joins: shorter may be last
    assert_eq!(b.entries().len(), 1);
    assert_eq!(b.entries()[0].len, 1500);
    // nothing after a short one, not even a datagram of its size
    push(&mut b, one(500), peer(2), 0, true);
    push(&mut b, one(1000), peer(2), 0, true);
    let lens: Vec<_> = b
        .entries()
        .iter()
        .map(|e| (e.offset, e.len, e.stride))
        .collect();
    assert_eq!(
        lens,
        vec![(0, 1500, 1000), (1500, 500, 500), (2000, 1000, 1000)]
    );
}

#[test]
fn a_longer_datagram_starts_a_run() {
    let mut b = TxBatch::new(1 << 20, 16);
    push(&mut b, one(1000), peer(2), 0, true);
    push(&mut b, one(1001), peer(2), 0, true);
    assert_eq!(b.entries().len(), 2);
}

#[test]
fn runs_never_mix_destinations_or_sockets() {
    let mut b = TxBatch::new(1 << 20, 16);
    push(&mut b, one(1000), peer(2), 0, true);
    push(&mut b, one(1000), peer(3), 0, true);
    push(&mut b, one(1000), peer(3), 1, true);
    push(&mut b, one(1000), peer(3), 1, true);
    let runs: Vec<_> = b
        .entries()
        .iter()
        .map(|e| (e.dst, e.socket, e.len))
        .collect();
    assert_eq!(
        runs,
        vec![(peer(2), 0, 1000), (peer(3), 0, 1000), (peer(3), 1, 2000)]
    );
}

/// An IPv6 peer is a destination like any other: its datagrams share a run, which
/// never takes in the IPv4 address it maps (nor that one's port).
#[test]
fn runs_never_mix_address_families() {
    let mapped = SocketAddr::V6(SocketAddrV6::new(
        Ipv4Addr::new(192, 168, 77, 2).to_ipv6_mapped(),
        8472,
        0,
        0,
    ));
    let mut b = TxBatch::new(1 << 20, 16);
    push(&mut b, one(1000), peer6(2), 0, true);
    push(&mut b, one(1000), peer6(2), 0, true);
    push(&mut b, one(1000), peer(2), 0, true);
    push(&mut b, one(1000), mapped, 0, true);
    push(&mut b, one(1000), peer6(2), 0, true);
    let runs: Vec<_> = b.entries().iter().map(|e| (e.dst, e.len)).collect();
    assert_eq!(
        runs,
        vec![
            (peer6(2), 2000),
            (peer(2), 1000),
            (mapped, 1000),
            (peer6(2), 1000)
        ]
    );
}

#[test]
fn runs_stop_at_the_gso_limits() {
    // 64 datagrams of 100 bytes, then a new run
    let mut b = TxBatch::new(1 << 20, 16);
    for _ in 0..65 {
        push(&mut b, one(100), peer(2), 0, true);
    }
    let lens: Vec<_> = b.entries().iter().map(|e| e.datagrams()).collect();
    assert_eq!(lens, vec![GSO_MAX_SEGMENTS, 1]);
    // 44 datagrams of 1472 bytes fit 65,507; the 45th does not
    let mut b = TxBatch::new(1 << 20, 16);
    for _ in 0..45 {
        push(&mut b, one(1472), peer(2), 0, true);
    }
    let lens: Vec<_> = b.entries().iter().map(|e| e.len).collect();
    assert_eq!(lens, vec![44 * 1472, 1472]);
}

#[test]
fn a_segmented_frame_is_cut_at_the_limits_and_may_be_continued() {
    let mut b = TxBatch::new(1 << 20, 16);
    // 46 full datagrams of a TSO frame: 44 + 2, then a single one continues the 2
    push(&mut b, segs(1472, 46, 1472), peer(2), 0, true);
    push(&mut b, one(1472), peer(2), 0, true);
    let runs: Vec<_> = b.entries().iter().map(|e| (e.len, e.stride)).collect();
    assert_eq!(runs, vec![(44 * 1472, 1472), (3 * 1472, 1472)]);
    // a frame whose last segment is short is never continued
    push(&mut b, segs(1472, 3, 100), peer(2), 0, true);
    push(&mut b, one(100), peer(2), 0, true);
    assert_eq!(b.entries().len(), 4);
}

#[test]
fn without_gso_every_datagram_is_its_own_entry() {
    let mut b = TxBatch::new(1 << 20, 16);
    push(&mut b, one(1000), peer(2), 0, false);
    push(&mut b, one(1000), peer(2), 0, false);
    push(&mut b, segs(1000, 3, 10), peer(2), 0, false);
    let runs: Vec<_> = b
        .entries()
        .iter()
        .map(|e| (e.offset, e.len, e.stride))
        .collect();
    assert_eq!(
        runs,
        vec![
            (0, 1000, 1000),
            (1000, 1000, 1000),
            (2000, 1000, 1000),
            (3000, 1000, 1000),
            (4000, 10, 10)
        ]
    );
}

#[test]
fn push_refuses_what_does_not_fit_or_is_misshaped() {
    let mut b = TxBatch::new(3000, 16);
    push(&mut b, one(1000), peer(2), 0, true);
    for bad in [
        one(2001), // larger than the spare room
        Segments {
            stride: 0,
            count: 1,
            len: 10,
        }, // no stride
        Segments {
            stride: 10,
            count: 0,
            len: 10,
        }, // no datagram
        Segments {
            stride: 10,
            count: 1,
            len: 0,
        }, // empty
        Segments {
            stride: 10,
            count: 3,
            len: 100,
        }, // more bytes than datagrams
        Segments {
            stride: 10,
            count: 3,
            len: 20,
        }, // last datagram empty
        Segments {
            stride: usize::MAX,
            count: 3,
            len: 5,
        }, // overflowing shape
    ] {
        assert!(!b.push(bad, peer(2), 0, true, 0), "{bad:?} accepted");
    }
    assert_eq!(b.entries().len(), 1);
    assert_eq!(b.spare_len(), 2000);
    b.clear();
    assert!(b.is_empty());
    assert_eq!(b.spare_len(), b.capacity());
}

/// The datagrams an entry list stands for, in order: (byte range, dst, socket).
fn cut(entries: &[SendEntry]) -> Vec<(Range<usize>, SocketAddr, usize, u8)> {
    entries
        .iter()
        .flat_map(|e| {
            (0..e.datagrams()).map(move |i| (e.datagram(i).unwrap(), e.dst, e.socket, e.tos))
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Push {
    segs: Segments,
    dst: u8,
    socket: usize,
    tos: u8,
}

fn arb_push() -> impl Strategy<Value = Push> {
    let stride = prop_oneof![
        Just(100usize),
        Just(1472),
        Just(1473),
        Just(9000),
        Just(32_753),
        Just(65_507),
        Just(65_600),
        1usize..=64,
    ];
    let count = prop_oneof![3 => Just(1usize), 1 => 1usize..=70];
    (
        stride,
        count,
        any::<u32>(),
        any::<bool>(),
        2u8..6,
        0usize..2,
        prop_oneof![3 => Just(0u8), 1 => 0u8..4],
    )
        .prop_map(|(stride, count, r, longer_stride, dst, socket, tos)| {
            let count = count.min((300_000 / stride).max(1));
            let last = 1 + r as usize % stride;
            // a single datagram is usually its own stride, as `segment` returns it
            let segs = if count == 1 && !longer_stride {
                one(last)
            } else {
                segs(stride, count, last)
            };
            Push {
                segs,
                dst,
                socket,
                tos,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every datagram pushed is in exactly one entry, in order, with its own
    /// destination, socket and outer TOS; entries stay within the GSO limits, and without GSO
    /// carry one datagram each.
    #[test]
    fn push_keeps_every_datagram_once_within_limits(
        pushes in prop::collection::vec(arb_push(), 1..80),
        gso_until in 0usize..100,
        cap in prop_oneof![Just(512 * 1024), 1000usize..200_000],
    ) {
        let mut b = TxBatch::new(cap, 8);
        let mut model = Vec::new();
        let mut pushed_with_gso = Vec::new();
        for (i, p) in pushes.iter().enumerate() {
            let gso = i < gso_until;
            let (before_used, before_entries) = (b.bytes().len(), b.entries().to_vec());
            let fits = p.segs.len <= b.spare_len();
            let ok = b.push(p.segs, dest(p.dst), p.socket, gso, p.tos);
            prop_assert_eq!(ok, fits);
            if !ok {
                prop_assert_eq!(b.bytes().len(), before_used);
                prop_assert_eq!(b.entries(), &before_entries[..]);
                continue;
            }
            for d in 0..p.segs.count {
                let r = p.segs.datagram(d).unwrap();
                model.push((
                    before_used + r.start..before_used + r.end,
                    dest(p.dst),
                    p.socket,
                    p.tos,
                ));
                pushed_with_gso.push(gso);
            }
        }
        prop_assert_eq!(cut(b.entries()), model);
        let (mut at, mut d) = (0, 0);
        for e in b.entries() {
            prop_assert_eq!(e.offset, at);
            at += e.len;
            prop_assert!(e.stride > 0);
            prop_assert!(e.datagrams() <= GSO_MAX_SEGMENTS, "{:?}", e);
            prop_assert!(e.len <= GSO_MAX_BYTES || e.datagrams() == 1, "{:?}", e);
            let n = e.datagrams();
            if pushed_with_gso[d..d + n].iter().any(|g| !g) {
                prop_assert_eq!(n, 1, "{:?}", e);
                prop_assert_eq!(e.stride, e.len);
            }
            d += n;
        }
        prop_assert_eq!(at, b.bytes().len());
    }
}

// ---- plan: cutting entries into sendmmsg messages and reading the kernel's answer

/// `plan` into a fresh [`SendPlan`], which it must fill.
fn expect_send(
    entries: &[SendEntry],
    buf_len: usize,
    at: SendCursor,
    gso: bool,
    sockets: usize,
) -> SendPlan {
    let mut p = SendPlan::default();
    match plan(entries, buf_len, at, gso, sockets, &mut p) {
        Next::Send => p,
        other => panic!("expected messages, got {other:?}"),
    }
}

fn plan_only(
    entries: &[SendEntry],
    buf_len: usize,
    at: SendCursor,
    gso: bool,
    sockets: usize,
) -> Next {
    plan(entries, buf_len, at, gso, sockets, &mut SendPlan::default())
}

fn shape(p: &SendPlan) -> Vec<(usize, usize, Option<u16>, usize)> {
    p.messages()
        .iter()
        .map(|m| (m.offset, m.len, m.segment, m.datagrams))
        .collect()
}

const AT0: SendCursor = SendCursor {
    entry: 0,
    datagram: 0,
};

fn at(entry: usize, datagram: usize) -> SendCursor {
    SendCursor { entry, datagram }
}

#[test]
fn with_gso_one_message_per_entry() {
    let e = [entry(0, 2500, 1000), entry(2500, 100, 100)];
    let p = expect_send(&e, 2600, AT0, true, 1);
    assert_eq!(
        shape(&p),
        vec![(0, 2500, Some(1000), 3), (2500, 100, None, 1)]
    );
    assert_eq!(p.messages()[1].end, at(2, 0));
    assert!(matches!(plan_only(&e, 2600, at(2, 0), true, 1), Next::Done));
}

#[test]
fn without_gso_one_message_per_datagram() {
    let e = [entry(0, 2500, 1000)];
    let p = expect_send(&e, 2500, AT0, false, 1);
    assert_eq!(
        shape(&p),
        vec![
            (0, 1000, None, 1),
            (1000, 1000, None, 1),
            (2000, 500, None, 1)
        ]
    );
}

/// The defect: without GSO a partly sent entry counted as fully sent.
#[test]
fn a_partly_sent_entry_counts_only_what_went_out() {
    let e = [entry(0, 2500, 1000)];
    let p = expect_send(&e, 2500, AT0, false, 1);
    let got = p.sent(1);
    assert_eq!(
        got,
        Progress {
            sent: 1,
            bytes: 1000,
            lost: 0,
            next: at(0, 1)
        }
    );
    // the rest follows, from the second datagram on
    let p = expect_send(&e, 2500, got.next, false, 1);
    assert_eq!(shape(&p), vec![(1000, 1000, None, 1), (2000, 500, None, 1)]);
    let got = p.sent(2);
    assert_eq!((got.sent, got.bytes, got.next), (2, 1500, at(1, 0)));
    assert!(matches!(
        plan_only(&e, 2500, got.next, false, 1),
        Next::Done
    ));
}

/// The defect: when earlier entries went out, the partly sent one was resent whole.
#[test]
fn after_a_partial_send_nothing_is_sent_twice() {
    let e = [entry(0, 100, 100), entry(100, 3000, 1000)];
    let p = expect_send(&e, 3100, AT0, false, 1);
    assert_eq!(p.messages().len(), 4);
    let got = p.sent(2); // the single datagram and the first of the three
    assert_eq!((got.sent, got.bytes, got.next), (2, 1100, at(1, 1)));
    let p = expect_send(&e, 3100, got.next, false, 1);
    assert_eq!(
        shape(&p),
        vec![(1100, 1000, None, 1), (2100, 1000, None, 1)]
    );
}

#[test]
fn a_partial_gso_send_resumes_at_the_next_entry() {
    let e = [
        entry(0, 2000, 1000),
        entry(2000, 2000, 1000),
        entry(4000, 10, 10),
    ];
    let p = expect_send(&e, 4010, AT0, true, 1);
    let got = p.sent(1);
    assert_eq!((got.sent, got.bytes, got.next), (2, 2000, at(1, 0)));
    let got = p.sent(99); // more than asked: clamped
    assert_eq!((got.sent, got.bytes, got.next), (5, 4010, at(3, 0)));
}

#[test]
fn a_failed_call_loses_the_first_message_only() {
    let e = [entry(0, 2500, 1000), entry(2500, 100, 100)];
    let p = expect_send(&e, 2600, AT0, false, 1);
    assert_eq!(
        p.failed(),
        Progress {
            sent: 0,
            bytes: 0,
            lost: 1,
            next: at(0, 1)
        }
    );
    let p = expect_send(&e, 2600, AT0, true, 1);
    assert_eq!(p.failed().lost, 3);
    assert_eq!(p.failed().next, at(1, 0));
    // sendmmsg never returns 0 for a non-empty call; if it did, no endless retry
    assert_eq!(p.sent(0), p.failed());
}

#[test]
fn a_call_stops_where_the_socket_changes() {
    let mut e = [
        entry(0, 100, 100),
        entry(100, 100, 100),
        entry(200, 100, 100),
    ];
    e[1].socket = 1;
    e[2].socket = 3; // 3 % 2 == 1: the same socket as entry 1
    let p = expect_send(&e, 300, AT0, true, 2);
    assert_eq!((p.socket(), p.messages().len()), (0, 1));
    let p = expect_send(&e, 300, at(1, 0), true, 2);
    assert_eq!((p.socket(), p.messages().len()), (1, 2));
    // zero sockets is taken as one
    let p = expect_send(&e, 300, AT0, true, 0);
    assert_eq!((p.socket(), p.messages().len()), (0, 3));
}

/// IPv4 and IPv6 destinations are sent from sockets of their own family: a call stops
/// where the family changes, even on the same socket index.
#[test]
fn a_call_stops_where_the_address_family_changes() {
    let mut e = [
        entry(0, 100, 100),
        entry(100, 100, 100),
        entry(200, 2000, 1000),
        entry(2200, 100, 100),
    ];
    e[1].dst = peer6(2);
    e[2].dst = peer6(3);
    let p = expect_send(&e, 2300, AT0, true, 2);
    assert_eq!((p.ipv6(), p.socket(), p.messages().len()), (false, 0, 1));
    let p = expect_send(&e, 2300, at(1, 0), true, 2);
    assert_eq!((p.ipv6(), p.socket(), p.messages().len()), (true, 0, 2));
    assert_eq!(p.messages()[1].dst, peer6(3));
    let p = expect_send(&e, 2300, at(3, 0), true, 2);
    assert_eq!((p.ipv6(), p.messages().len()), (false, 1));
}

/// A plan that cannot be sent at all (no socket of its family) loses every datagram
/// it carries, and the batch goes on after it.
#[test]
fn an_abandoned_plan_loses_all_its_datagrams() {
    let mut e = [
        entry(0, 2500, 1000),
        entry(2500, 100, 100),
        entry(2600, 100, 100),
    ];
    e[0].dst = peer6(2);
    e[1].dst = peer6(2);
    let p = expect_send(&e, 2700, AT0, true, 1);
    assert_eq!(
        p.abandon(),
        Progress {
            sent: 0,
            bytes: 0,
            lost: 4,
            next: at(2, 0)
        }
    );
    let p = expect_send(&e, 2700, AT0, false, 1);
    assert_eq!(p.abandon().lost, 4);
    assert_eq!(p.abandon().next, at(2, 0));
    assert_eq!(SendPlan::default().abandon().lost, 0);
}

#[test]
fn a_call_carries_at_most_batch_messages() {
    let e: Vec<_> = (0..100).map(|i| entry(i * 10, 10, 10)).collect();
    let p = expect_send(&e, 1000, AT0, true, 1);
    assert_eq!(p.messages().len(), BATCH);
    let next = p.sent(BATCH).next;
    assert_eq!(next, at(BATCH, 0));
    let p = expect_send(&e, 1000, next, true, 1);
    assert_eq!(p.messages().len(), 100 - BATCH);
    // without GSO one entry may span calls
    let e = [entry(0, 100 * 10, 10)];
    let p = expect_send(&e, 1000, AT0, false, 1);
    assert_eq!(p.messages().len(), BATCH);
    assert_eq!(p.sent(BATCH).next, at(0, BATCH));
}

#[test]
fn an_entry_beyond_the_gso_limits_is_cut_into_several_messages() {
    let e = [entry(0, 100_000, 1000)];
    let p = expect_send(&e, 100_000, AT0, true, 1);
    assert_eq!(
        shape(&p),
        vec![
            (0, 64_000, Some(1000), 64),
            (64_000, 36_000, Some(1000), 36)
        ]
    );
    let e = [entry(0, 100 * 1472, 1472)];
    let p = expect_send(&e, 100 * 1472, AT0, true, 1);
    let counts: Vec<_> = p.messages().iter().map(|m| m.datagrams).collect();
    assert_eq!(counts, vec![44, 44, 12]);
    // the byte limit counts the short last datagram as it is, not as a full stride:
    // 44 × 1472 + 100 = 64,868 bytes go in one message
    let e = [entry(0, 44 * 1472 + 100, 1472)];
    let p = expect_send(&e, 44 * 1472 + 100, AT0, true, 1);
    assert_eq!(shape(&p), vec![(0, 44 * 1472 + 100, Some(1472), 45)]);
    // a stride that does not fit UDP_SEGMENT's 16 bits: one datagram per message,
    // no segment size at all (the kernel refuses oversized datagrams, counted)
    let e = [entry(0, 140_000, 70_000)];
    let p = expect_send(&e, 140_000, AT0, true, 1);
    assert_eq!(
        shape(&p),
        vec![(0, 70_000, None, 1), (70_000, 70_000, None, 1)]
    );
}

#[test]
fn an_entry_that_cannot_be_sent_is_dropped_counted() {
    let e = [
        entry(0, 100, 100),
        entry(100, 3000, 1000),  // past the end of the buffer
        entry(3100, 0, 0),       // empty
        entry(usize::MAX, 2, 1), // overflowing
    ];
    let p = expect_send(&e, 1000, AT0, true, 1);
    assert_eq!(p.messages().len(), 1, "stops before the bad entry");
    let n = plan_only(&e, 1000, at(1, 0), true, 1);
    assert!(
        matches!(n, Next::Drop { datagrams: 3, next } if next == at(2, 0)),
        "{n:?}"
    );
    let n = plan_only(&e, 1000, at(1, 2), false, 1);
    assert!(
        matches!(n, Next::Drop { datagrams: 1, next } if next == at(2, 0)),
        "{n:?}"
    );
    let n = plan_only(&e, 1000, at(2, 0), true, 1);
    assert!(
        matches!(n, Next::Drop { datagrams: 1, next } if next == at(3, 0)),
        "{n:?}"
    );
    let n = plan_only(&e, 1000, at(3, 0), true, 1);
    assert!(
        matches!(n, Next::Drop { datagrams: 2, next } if next == at(4, 0)),
        "{n:?}"
    );
    // a cursor past an entry's last datagram moves to the next entry
    let e = [entry(0, 100, 100), entry(100, 100, 100)];
    let p = expect_send(&e, 200, at(0, 1), true, 1);
    assert_eq!(shape(&p), vec![(100, 100, None, 1)]);
}

fn arb_entries() -> impl Strategy<Value = (Vec<SendEntry>, usize)> {
    let e = (
        prop_oneof![4 => 1usize..5000, 1 => Just(0), 1 => 60_000usize..140_000],
        prop_oneof![3 => 1usize..2000, 1 => Just(0), 1 => 30_000usize..80_000],
        0usize..3,
        2u8..6,
        prop_oneof![9 => Just(false), 1 => Just(true)],
    );
    prop::collection::vec(e, 1..120).prop_map(|v| {
        let mut at = 0;
        let mut out = Vec::new();
        for (len, stride, socket, dst, outside) in v {
            out.push(SendEntry {
                dst: dest(dst),
                offset: if outside { usize::MAX - 5 } else { at },
                len,
                stride,
                socket,
                tos: 0,
            });
            if !outside {
                at += len;
            }
        }
        (out, at)
    })
}

/// The kernel's answer to one call: an error for the first message, or 1..=n sent.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Error,
    Sent(usize),
}

fn arb_answers() -> impl Strategy<Value = Vec<Answer>> {
    prop::collection::vec(
        prop_oneof![1 => Just(Answer::Error), 6 => (0usize..=BATCH + 1).prop_map(Answer::Sent)],
        1..64,
    )
}

fn step(e: &[SendEntry], c: SendCursor) -> SendCursor {
    if c.datagram + 1 >= e[c.entry].datagrams() {
        at(c.entry + 1, 0)
    } else {
        at(c.entry, c.datagram + 1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the kernel answers, every datagram is sent or counted lost exactly
    /// once, in order; every message is one socket's, within the GSO limits, and
    /// covers exactly the datagrams between its start and end cursors.
    #[test]
    fn every_datagram_is_sent_or_lost_exactly_once(
        (entries, buf_len) in arb_entries(),
        answers in arb_answers(),
        gso in any::<bool>(),
        sockets in 1usize..4,
    ) {
        let mut sent = vec![Vec::new(); entries.len()];
        let mut lost = vec![Vec::new(); entries.len()];
        let mut cur = AT0;
        let total: usize = entries.iter().map(|e| e.datagrams()).sum();
        let mut calls = 0;
        let (mut sent_total, mut bytes_total) = (0, 0);
        // one plan reused across calls, as the shell does: nothing may leak between them
        let mut p = SendPlan::default();
        loop {
            prop_assert!(calls <= total + 1, "no progress");
            calls += 1;
            match plan(&entries, buf_len, cur, gso, sockets, &mut p) {
                Next::Done => break,
                Next::Drop { datagrams, next } => {
                    prop_assert_eq!(datagrams, entries[cur.entry].datagrams() - cur.datagram);
                    let mut c = cur;
                    while c != next {
                        lost[c.entry].push(c.datagram);
                        c = step(&entries, c);
                    }
                    cur = next;
                }
                Next::Send => {
                    prop_assert!(!p.messages().is_empty() && p.messages().len() <= BATCH);
                    let mut c = cur;
                    let mut spans = Vec::new();
                    for m in p.messages() {
                        let e = &entries[c.entry];
                        prop_assert_eq!(e.socket % sockets, p.socket());
                        prop_assert_eq!(m.dst, e.dst);
                        prop_assert_eq!(m.dst.is_ipv6(), p.ipv6(), "one family per call");
                        let first = e.datagram(c.datagram).unwrap();
                        let mut span = Vec::new();
                        let mut last = first.clone();
                        while c != m.end {
                            prop_assert_eq!(c.entry, span.first().map_or(c.entry, |s: &SendCursor| s.entry));
                            last = entries[c.entry].datagram(c.datagram).unwrap();
                            span.push(c);
                            c = step(&entries, c);
                        }
                        prop_assert_eq!(span.len(), m.datagrams);
                        prop_assert_eq!((m.offset, m.len), (first.start, last.end - first.start));
                        prop_assert!(m.offset + m.len <= buf_len);
                        prop_assert!(m.datagrams <= GSO_MAX_SEGMENTS);
                        if m.datagrams > 1 {
                            prop_assert!(gso);
                            prop_assert!(m.len <= GSO_MAX_BYTES);
                            prop_assert_eq!(m.segment.map(usize::from), Some(first.len()));
                        } else {
                            prop_assert_eq!(m.segment, None);
                        }
                        spans.push(span);
                    }
                    let answer = answers[calls % answers.len()];
                    let progress = match answer {
                        Answer::Error => p.failed(),
                        Answer::Sent(k) => p.sent(k),
                    };
                    let k = match answer {
                        Answer::Sent(k) if k > 0 => k.min(spans.len()),
                        _ => 0,
                    };
                    let mut bytes = 0;
                    for span in &spans[..k] {
                        for c in span {
                            sent[c.entry].push(c.datagram);
                            bytes += entries[c.entry].datagram(c.datagram).unwrap().len();
                        }
                    }
                    if k == 0 {
                        for c in &spans[0] {
                            lost[c.entry].push(c.datagram);
                        }
                        prop_assert_eq!(progress.lost, spans[0].len());
                        prop_assert_eq!(progress.next, p.messages()[0].end);
                    } else {
                        prop_assert_eq!(progress.lost, 0);
                        prop_assert_eq!(progress.next, p.messages()[k - 1].end);
                    }
                    prop_assert_eq!(progress.sent, spans[..k].iter().map(Vec::len).sum::<usize>());
                    prop_assert_eq!(progress.bytes, bytes);
                    prop_assert!(progress.next > cur);
                    sent_total += progress.sent;
                    bytes_total += progress.bytes;
                    cur = progress.next;
                }
            }
        }
        let mut n = 0;
        for (i, e) in entries.iter().enumerate() {
            let mut all: Vec<usize> = sent[i].iter().chain(&lost[i]).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..e.datagrams()).collect::<Vec<_>>(), "entry {} {:?}", i, e);
            let ok = e.len > 0 && e.offset.checked_add(e.len).is_some_and(|end| end <= buf_len);
            if !ok {
                prop_assert!(sent[i].is_empty());
            }
            n += e.datagrams();
        }
        prop_assert_eq!(n, total);
        prop_assert_eq!(sent_total, sent.iter().map(Vec::len).sum::<usize>());
        prop_assert!(bytes_total <= buf_len);
    }
}

/// How far the batch was written is remembered across sends, until its pages are
/// given back; a batch with datagrams waiting keeps its pages.
#[test]
fn written_spans_sends_until_the_pages_are_given_back() {
    let mut b = TxBatch::new(256 * 1024, 8);
    assert_eq!(b.written(), 0);
    push(&mut b, segs(1400, 100, 1400), peer(2), 0, true);
    assert_eq!(b.written(), 140_000);
    assert_eq!(b.release_pages(), 0, "datagrams wait in it");
    b.clear();
    push(&mut b, one(98), peer(2), 0, true);
    assert_eq!(b.written(), 140_000, "a small send after a big one");
    b.clear();
    assert!(b.release_pages() > 0);
    assert_eq!(b.written(), 0);
}
