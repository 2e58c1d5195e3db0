//! Round-trip property tests across both halves: a TSO frame as the kernel writes it
//! is segmented by `tso`, the segments (prefix stripped, as the peer decapsulates
//! them) go through a `gro::Coalescer`, and what comes out must be the original
//! payload byte for byte, with headers the kernel accepts. Checked with etherparse.

use proptest::prelude::*;

use super::testutil::{complete_checksum, expand, oracle_tcp, payload, timestamps, Out, Tcp};
use super::{max_output_len, segment, Coalescer, Layout};
use crate::wire::ip::tcp_flags::{ACK, FIN, PSH};
use crate::wire::virtio::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use crate::wire::VirtioNetHdr;

const VXLAN: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 0x01, 0];

/// Segments `frame` and returns the inner frames with the VXLAN prefix removed.
fn tso(vh: &VirtioNetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; max_output_len(vh, frame.len(), VXLAN.len())];
    let s = segment(vh, frame, &VXLAN, &mut out).unwrap();
    (0..s.count)
        .map(|i| {
            let d = &out[s.datagram(i).unwrap()];
            assert_eq!(d[..8], VXLAN);
            d[8..].to_vec()
        })
        .collect()
}

fn coalesce(c: &mut Coalescer, frames: &[Vec<u8>]) -> Out {
    let mut out = Vec::new();
    let mut emit = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
    for f in frames {
        c.push(f, &mut emit);
    }
    c.flush(&mut emit);
    let s = c.stats();
    assert_eq!(s.frames_in, s.frames_out + s.merged);
    assert_eq!(s.frames_out as usize, out.len());
    out
}

/// Every output is either unchanged input (NONE) or a well-formed GSO frame whose
/// checksum, completed as the kernel does, verifies; returns the completed frames.
///
/// A plain frame may also come out `NEEDS_CSUM`: a finished checksum that happens to
/// equal the pseudo-header sum (one segment in 65,536) is indistinguishable from one a
/// kernel sender left partial (see `partial`). That is harmless only if completing it
/// leaves the frame as it is, which is checked here.
fn check_outputs(out: &Out) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let mut done = Vec::new();
    for (h, f) in out {
        let mut f = f.clone();
        if h.gso_type == GSO_NONE && h.flags == F_NEEDS_CSUM {
            prop_assert!(h.csum_offset == 16 || h.csum_offset == 6);
            let before = f.clone();
            complete_checksum(h, &mut f);
            prop_assert_eq!(&f, &before, "completing a finished checksum changed it");
        } else if h.gso_type != GSO_NONE {
            prop_assert_eq!(h.flags, F_NEEDS_CSUM);
            prop_assert!(h.gso_type == GSO_TCPV4 || h.gso_type == GSO_TCPV6);
            prop_assert_eq!(h.csum_offset, 16);
            prop_assert!(f.len() - usize::from(h.hdr_len) > usize::from(h.gso_size));
            complete_checksum(h, &mut f);
            let p = oracle_tcp(&f).map_err(TestCaseError::fail)?;
            prop_assert_eq!(usize::from(h.hdr_len), p.hdr_len);
            prop_assert_eq!(usize::from(h.csum_start), if p.v6 { 54 } else { 34 });
            prop_assert_eq!(p.flags & !PSH, ACK);
        } else {
            prop_assert_eq!(*h, VirtioNetHdr::NONE);
        }
        done.push(f);
    }
    Ok(done)
}

fn options(i: usize) -> Vec<u8> {
    match i {
        0 => vec![],
        1 => timestamps(0x1234_5678, 0x9abc_def0),
        2 => vec![1, 1, 1, 0],
        _ => [timestamps(1, 2), vec![1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2]].concat(),
    }
}

fn any_tcp() -> impl Strategy<Value = Tcp> {
    (
        any::<bool>(),
        0usize..4,
        any::<u32>(),
        any::<u16>(),
        any::<bool>(),
        prop_oneof![
            Just(ACK),
            Just(ACK | PSH),
            Just(ACK | FIN),
            Just(ACK | PSH | FIN)
        ],
    )
        .prop_map(|(v6, opts, seq, ip_id, df, flags)| Tcp {
            v6,
            options: options(opts),
            seq,
            ip_id,
            df,
            flags,
            ..Tcp::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// segment -> coalesce -> the original payload in one frame (two with FIN: a FIN
    /// segment is never merged), and re-segmenting gives the same wire frames.
    #[test]
    fn tso_then_gro_restores_the_frame(
        t in any_tcp(),
        len in 1usize..65_000,
        mss in prop_oneof![Just(1398u16), Just(1448), 88u16..9000],
        salt in any::<u8>(),
    ) {
        let data = payload(len, salt);
        let (vh, frame) = t.tso(&data, mss);
        let segs = tso(&vh, &frame);
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
        let mut seq = t.seq;
        for (i, s) in segs.iter().enumerate() {
            let p = oracle_tcp(s).map_err(TestCaseError::fail)?;
            prop_assert!(p.payload.len() <= usize::from(mss));
            prop_assert_eq!(p.seq, seq);
            seq = seq.wrapping_add(p.payload.len() as u32);
            let last = i + 1 == segs.len();
            prop_assert_eq!(p.flags, if last { t.flags } else { ACK });
            if !t.v6 {
                prop_assert_eq!(p.ip_id, t.ip_id.wrapping_add(i as u16));
            }
        }

        let mut c = Coalescer::new(8);
        let out = coalesce(&mut c, &segs);
        let done = check_outputs(&out)?;
        let fin_alone = t.flags & FIN != 0 && segs.len() > 1;
        prop_assert_eq!(out.len(), if fin_alone { 2 } else { 1 });
        let joined: Vec<u8> = done.iter().flat_map(|f| oracle_tcp(f).unwrap().payload).collect();
        prop_assert_eq!(&joined, &data);
        let first = oracle_tcp(&done[0]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(first.seq, t.seq);
        if out.len() == 1 && segs.len() > 1 {
            // The merged frame is the original TSO frame with a full checksum.
            prop_assert_eq!(done[0].len(), frame.len());
            prop_assert_eq!(&done[0][..frame.len() - len], &{
                let mut h = frame[..frame.len() - len].to_vec();
                let at = usize::from(vh.csum_start) + 16;
                h[at..at + 2].copy_from_slice(&done[0][at..at + 2]);
                h
            }[..]);
        }
        prop_assert_eq!(expand(&out), segs);
    }

    /// Any order of one flow's segments, with duplicates and gaps: never wrong bytes,
    /// never a reordering (expanding the outputs gives back exactly the inputs).
    #[test]
    fn shuffled_duplicated_gapped_orders(
        t in any_tcp(),
        len in 1usize..20_000,
        mss in 200u16..2000,
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        runs in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..8), 0..6),
    ) {
        let data = payload(len, 3);
        let (vh, frame) = t.tso(&data, mss);
        let segs = tso(&vh, &frame);
        // Random picks interleaved with in-order runs (so merges do happen).
        let mut order = Vec::new();
        for (k, p) in picks.iter().enumerate() {
            order.push(p.index(segs.len()));
            if let Some((start, n)) = runs.get(k % 7) {
                if k % 7 == 0 {
                    let s = start.index(segs.len());
                    order.extend(s..(s + n).min(segs.len()));
                }
            }
        }
        let input: Vec<Vec<u8>> = order.iter().map(|&i| segs[i].clone()).collect();
        let out = coalesce(&mut Coalescer::new(4), &input);
        let done = check_outputs(&out)?;
        for f in &done {
            let p = oracle_tcp(f).map_err(TestCaseError::fail)?;
            let off = p.seq.wrapping_sub(t.seq) as usize;
            prop_assert_eq!(&data[off..off + p.payload.len()], &p.payload[..]);
        }
        prop_assert_eq!(expand(&out), input);
    }

    /// Several flows interleaved, plus non-TCP frames: per flow nothing is lost or
    /// reordered; the other frames come out unchanged.
    #[test]
    fn interleaved_flows_and_other_traffic(
        lens in proptest::collection::vec(1usize..12_000, 1..5),
        v6 in proptest::collection::vec(any::<bool>(), 5),
        slots in 0usize..6,
        choice in proptest::collection::vec(any::<prop::sample::Index>(), 0..400),
    ) {
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let t = Tcp { v6: v6[i], src_port: 1000 + i as u16, flags: ACK | PSH, ..Tcp::default() };
                let (vh, f) = t.tso(&payload(n, i as u8), 1000);
                tso(&vh, &f).into()
            })
            .collect();
        let others = [
            crate::wire::testdata::INNER_ICMP_REQUEST.to_vec(),
            crate::wire::testdata::ARP_REQUEST.to_vec(),
            Tcp::default().udp(&payload(50, 1), false),
        ];
        let per_flow: Vec<Vec<Vec<u8>>> = queues.iter().map(|q| q.iter().cloned().collect()).collect();
        let mut input = Vec::new();
        let mut k = 0;
        while queues.iter().any(|q| !q.is_empty()) {
            // Once the random choices run out, drain the flows in turn.
            let i = match choice.get(k) {
                Some(c) => c.index(queues.len() + 1),
                None => queues.iter().position(|q| !q.is_empty()).unwrap_or(0),
            };
            k += 1;
            if i >= queues.len() {
                input.push(others[k % 3].clone());
            } else if let Some(f) = queues[i].pop_front() {
                input.push(f);
            }
        }
        let out = coalesce(&mut Coalescer::new(slots), &input);
        check_outputs(&out)?;
        let expanded = expand(&out);
        prop_assert_eq!(expanded.len(), input.len());
        for (i, flow) in per_flow.iter().enumerate() {
            let port = (1000 + i as u16).to_be_bytes();
            let mine: Vec<Vec<u8>> = expanded
                .iter()
                .filter(|f| {
                    matches!(Layout::parse(f), Ok(l) if l.proto == 6 && l.v6 == v6[i] && f[l.l4_off..l.l4_off + 2] == port)
                })
                .cloned()
                .collect();
            prop_assert_eq!(&mine, flow);
        }
        let not_tcp = |f: &Vec<u8>| others.contains(f);
        prop_assert_eq!(
            expanded.iter().filter(|f| not_tcp(f)).count(),
            input.iter().filter(|f| not_tcp(f)).count()
        );
    }

    /// NEEDS_CSUM on a plain (non-GSO) frame: the completed TCP or UDP checksum verifies.
    #[test]
    fn needs_csum_completion_verifies(v6 in any::<bool>(), udp in any::<bool>(), len in 0usize..3000, salt in any::<u8>()) {
        let t = Tcp { v6, ..Tcp::default() };
        let l4 = t.eth_ip_len();
        let (frame, off) = if udp {
            (t.udp(&payload(len, salt), true), 6)
        } else {
            (t.tso(&payload(len, salt), 1398).1, 16)
        };
        let vh = VirtioNetHdr { flags: F_NEEDS_CSUM, csum_start: l4 as u16, csum_offset: off, ..VirtioNetHdr::NONE };
        let segs = tso(&vh, &frame);
        prop_assert_eq!(segs.len(), 1);
        let f = &segs[0];
        prop_assert_eq!(&f[..l4 + off as usize], &frame[..l4 + off as usize]);
        prop_assert_eq!(&f[l4 + off as usize + 2..], &frame[l4 + off as usize + 2..]);
        if udp {
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            let Some(etherparse::TransportSlice::Udp(u)) = p.transport else { unreachable!() };
            let want = match p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => u.to_header().calc_checksum_ipv4_raw(ip.header().source(), ip.header().destination(), u.payload()).unwrap(),
                Some(etherparse::NetSlice::Ipv6(ip)) => u.to_header().calc_checksum_ipv6_raw(ip.header().source(), ip.header().destination(), u.payload()).unwrap(),
                _ => unreachable!(),
            };
            prop_assert_eq!(u.checksum(), want);
        } else {
            let p = oracle_tcp(f).map_err(TestCaseError::fail)?;
            prop_assert_eq!(p.payload, payload(len, salt));
        }
    }

    /// Arbitrary frames (valid segments with random edits, truncations, garbage):
    /// no panic, counts add up, unmerged frames unchanged, merged ones well formed.
    #[test]
    fn coalescer_never_panics(
        frames in proptest::collection::vec(
            prop_oneof![
                (any::<bool>(), 0usize..3000, any::<u32>(), proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3))
                    .prop_map(|(v6, n, seq, edits)| {
                        let mut f = Tcp { v6, seq: seq % 4 * 1000, ..Tcp::default() }.frame(&payload(n, 1));
                        for (at, b) in edits {
                            let len = f.len();
                            f[at % len] = b;
                        }
                        f
                    }),
                proptest::collection::vec(any::<u8>(), 0..120),
            ],
            0..40,
        ),
        slots in 0usize..4,
    ) {
        let out = coalesce(&mut Coalescer::new(slots), &frames);
        let done = check_outputs(&out)?;
        let _ = done;
        for (h, f) in &out {
            if h.gso_type == GSO_NONE {
                prop_assert!(frames.contains(f));
            }
        }
        let expanded = expand(&out);
        prop_assert_eq!(expanded.len(), frames.len());
    }
}

/// What a kernel VXLAN sender at default offloads puts through a veth: one uncut GSO
/// frame per burst (payload many MSS long), checksum left partial.
fn kernel_burst(t: &Tcp, len: usize, salt: u8) -> Vec<u8> {
    t.partial_frame(&payload(len, salt))
}

#[test]
fn uncut_kernel_gso_frames_go_out_as_gso_and_cut_back_to_the_payload() {
    for v6 in [false, true] {
        let t = Tcp {
            v6,
            flags: ACK | PSH,
            ..Tcp::default()
        };
        let burst = kernel_burst(&t, 40_000, 1);
        // Without the MTU the coalescer cannot know: the frame passes as a plain
        // frame (the kernel would drop it on forwarding), marked NEEDS_CSUM.
        let out = coalesce(&mut Coalescer::new(4), std::slice::from_ref(&burst));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.gso_type, GSO_NONE);
        // With it: a GSO frame, bytes unchanged, cut by the kernel into MTU-sized
        // segments whose payloads are the burst's.
        let mut c = Coalescer::new(4).with_tap_mtu(1450);
        let out = coalesce(&mut c, std::slice::from_ref(&burst));
        assert_eq!(out.len(), 1);
        let (h, f) = &out[0];
        assert_eq!(f, &burst);
        assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(usize::from(h.gso_size), 1450 - (t.hdr_len() - 14));
        let pieces = expand(&out);
        assert!(pieces.iter().all(|p| p.len() - 14 <= 1450));
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|p| oracle_tcp(p).unwrap().payload)
            .collect();
        assert_eq!(joined, payload(40_000, 1));
        let st = c.stats();
        assert_eq!((st.oversized, st.partial_checksum), (1, 1));
    }
}

#[test]
fn a_finished_uncut_frame_gets_the_pseudo_sum_and_a_corrupt_one_passes() {
    let t = Tcp::default();
    let full = t.frame(&payload(9000, 2));
    let mut c = Coalescer::new(4).with_tap_mtu(1450);
    let out = coalesce(&mut c, std::slice::from_ref(&full));
    let (h, f) = &out[0];
    assert_eq!(h.gso_type, GSO_TCPV4);
    // The field now holds what NEEDS_CSUM wants; completing it gives the original.
    assert_eq!(f, &kernel_burst(&t, 9000, 2));
    let mut done = f.clone();
    complete_checksum(h, &mut done);
    assert_eq!(done, full);
    // A corrupt one is handed on untouched, for the kernel to drop.
    let mut bad = full.clone();
    bad[200] ^= 4;
    let mut c = Coalescer::new(4).with_tap_mtu(1450);
    let out = coalesce(&mut c, std::slice::from_ref(&bad));
    assert_eq!(out, vec![(VirtioNetHdr::NONE, bad)]);
    assert_eq!((c.stats().bad_checksum, c.stats().oversized), (1, 0));
}

#[test]
fn uncut_frames_keep_their_flow_in_order() {
    let t = Tcp::default();
    let mss = 1398;
    let small: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            Tcp {
                seq: t.seq + i * mss as u32,
                ip_id: t.ip_id + i as u16,
                ..t.clone()
            }
            .partial_frame(&payload(mss, 3))
        })
        .collect();
    let big = Tcp {
        seq: t.seq + 3 * mss as u32,
        ip_id: t.ip_id + 3,
        ..t.clone()
    }
    .partial_frame(&payload(5 * mss, 4));
    let frames = [small.clone(), vec![big.clone()]].concat();
    let out = coalesce(&mut Coalescer::new(4).with_tap_mtu(1450), &frames);
    assert_eq!(out.len(), 2, "the merged three, then the uncut one");
    let seqs: Vec<u32> = expand(&out)
        .iter()
        .map(|p| oracle_tcp(p).unwrap().seq)
        .collect();
    let want: Vec<u32> = (0..8).map(|i| t.seq + i * mss as u32).collect();
    assert_eq!(seqs, want);
}

#[test]
fn plain_tap_finishes_partial_checksums_and_cuts_uncut_frames() {
    use super::{for_plain_tap, PlainTap, PLAIN_TAP_SCRATCH};
    let t = Tcp::default();
    let mut scratch = vec![0u8; PLAIN_TAP_SCRATCH];
    let run = |f: &[u8], mtu: Option<usize>, scratch: &mut [u8]| {
        let mut out = Vec::new();
        let r = for_plain_tap(f, mtu, scratch, &mut |x| out.push(x.to_vec()));
        (r, out)
    };
    let full = t.frame(&payload(1000, 5));
    assert_eq!(
        run(&full, Some(1450), &mut scratch),
        (PlainTap::Unchanged, vec![full.clone()])
    );
    let part = t.partial_frame(&payload(1000, 5));
    assert_eq!(
        run(&part, Some(1450), &mut scratch),
        (PlainTap::Finished, vec![full.clone()])
    );
    let big = kernel_burst(&t, 64_000, 6);
    let (r, pieces) = run(&big, Some(1450), &mut scratch);
    assert_eq!(r, PlainTap::Cut(pieces.len()));
    assert!(pieces.len() > 40);
    let joined: Vec<u8> = pieces
        .iter()
        .flat_map(|p| {
            assert!(p.len() - 14 <= 1450);
            oracle_tcp(p).unwrap().payload
        })
        .collect();
    assert_eq!(joined, payload(64_000, 6));
    // No MTU known: only the checksum is finished.
    let (r, out) = run(&big, None, &mut scratch);
    assert_eq!((r, out.len()), (PlainTap::Finished, 1));
    // Too little scratch: unchanged.
    assert_eq!(
        run(&part, Some(1450), &mut [0u8; 16]),
        (PlainTap::Unchanged, vec![part.clone()])
    );
    // Garbage: unchanged.
    assert_eq!(
        run(&[1, 2, 3], Some(1450), &mut scratch),
        (PlainTap::Unchanged, vec![vec![1, 2, 3]])
    );
}
