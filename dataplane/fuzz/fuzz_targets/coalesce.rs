//! `offload::Coalescer` on arbitrary frame sequences: no panic; counts add up
//! (`frames_in == frames_out + merged`); every frame emitted without a GSO header is
//! an input, unchanged, its header `NONE` or — only for a checksum left partial by the
//! sender (`offload::partial`) — exactly that frame's `NEEDS_CSUM` header; every merged
//! frame is well formed, its checksum completed per its virtio-net header verifies,
//! and re-segmenting it yields segments that are inputs (same addresses, ports, seq,
//! flags and payload bytes; a partial input counts as its completed form); every input
//! comes out exactly once; and within a flow the order is the input order.
//!
//! Input: a slot count, two flow templates and a TSO burst per flow (segmented with
//! `offload::segment`), then ops: push segment k, push it corrupted, push it with other
//! flags (re-checksummed), push it with its checksum left partial (as a kernel sender
//! over a veth leaves it), push a whole burst uncut (as a kernel sender's GSO frame
//! arrives over a veth), push raw bytes.
//!
//! The same inputs then go through a coalescer that knows the TAP's MTU (from the
//! input): counts add up, every GSO output completes to a verifying frame and cuts into
//! segments no longer than the MTU, and the TCP payload bytes of every flow come out in
//! input order.
#![no_main]

use fuzz_support::{checked, complete_checksum, slices, Bytes, Template};
use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::offload::{max_output_len, partial, segment, Coalescer};
use vxmesh_dataplane::wire::checksum::Checksum;
use vxmesh_dataplane::wire::virtio::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use vxmesh_dataplane::wire::VirtioNetHdr;

/// Segments of one TSO burst of template `t`.
fn burst(t: &Template, len: usize, mss: u16, salt: u8) -> Vec<Vec<u8>> {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt)
        .collect();
    let frame = t.frame(&payload, true);
    let vh = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if t.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        gso_size: mss,
        ..VirtioNetHdr::NONE
    };
    split(&vh, &frame).unwrap_or_default()
}

fn split(vh: &VirtioNetHdr, frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = vec![0u8; max_output_len(vh, frame.len(), 0)];
    let s = segment(vh, frame, &[], &mut out).ok()?;
    Some(
        (0..s.count)
            .map(|i| out[s.datagram(i).unwrap()].to_vec())
            .collect(),
    )
}

/// Recomputes the TCP checksum of a frame whose headers parse.
fn refresh_tcp_checksum(f: &mut [u8]) {
    let Some(s) = slices(f) else { return };
    if !s.tcp {
        return;
    }
    let l4_len = s.end - s.l4_off;
    let mut c = Checksum::new();
    if s.v6 {
        c.add_bytes(&f[22..54]);
    } else {
        c.add_bytes(&f[26..34]);
    }
    c.add_u16(6);
    c.add_u16((l4_len >> 16) as u16);
    c.add_u16(l4_len as u16);
    f[s.l4_off + 16..s.l4_off + 18].fill(0);
    c.add_bytes(&f[s.l4_off..s.end]);
    let v = c.finish();
    f[s.l4_off + 16..s.l4_off + 18].copy_from_slice(&v.to_be_bytes());
}

/// Leaves the L4 checksum of a frame whose headers parse partial: the pseudo-header
/// sum in the field, as a Linux sender does for CHECKSUM_PARTIAL.
fn make_partial(f: &mut [u8]) {
    let Some(s) = slices(f) else { return };
    let l4_len = s.end - s.l4_off;
    let mut c = Checksum::new();
    if s.v6 {
        c.add_bytes(&f[22..54]);
    } else {
        c.add_bytes(&f[26..34]);
    }
    c.add_u16(if s.tcp { 6 } else { 17 });
    c.add_u16((l4_len >> 16) as u16);
    c.add_u16(l4_len as u16);
    let at = s.l4_off + if s.tcp { 16 } else { 6 };
    f[at..at + 2].copy_from_slice(&c.fold().to_be_bytes());
}

/// A frame as the receiving kernel will see it: a partial checksum completed (and
/// the frame cut at its IP length, which is what the coalescer hands on).
fn normalize(f: &[u8]) -> Vec<u8> {
    match partial::detect(f) {
        Some(p) => {
            let mut v = f[..p.end].to_vec();
            p.complete(&mut v);
            v
        }
        None => f.to_vec(),
    }
}

/// Flow of a TCP frame as the coalescer keys it: addresses and ports.
fn flow(f: &[u8]) -> Option<Vec<u8>> {
    let s = slices(f)?;
    if !s.tcp {
        return None;
    }
    let mut k = if s.v6 {
        f[22..54].to_vec()
    } else {
        f[26..34].to_vec()
    };
    k.extend_from_slice(&f[s.l4_off..s.l4_off + 4]);
    Some(k)
}

/// What must survive coalescing: for a verifying TCP frame (after completing a partial
/// checksum) its addresses, ports, seq, flags and payload; for anything else the bytes
/// themselves.
fn identity(f: &[u8]) -> Vec<u8> {
    let f = &normalize(f)[..];
    match (checked(f), flow(f)) {
        (Some(c), Some(k)) if c.s.tcp && f.len() == c.s.end => {
            let mut v = vec![1u8];
            v.extend_from_slice(&k);
            v.extend_from_slice(&c.seq.to_be_bytes());
            v.push(c.flags);
            v.extend_from_slice(&c.payload);
            v
        }
        _ => [&[0u8][..], f].concat(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let slots = usize::from(b.u8() % 6);
    let tap_mtu = usize::from(b.u16() % 9000) + 68;
    let mut flows = Vec::new();
    let mut whole = Vec::new();
    for i in 0..2u8 {
        let mut t = Template::read(&mut b);
        t.udp = t.udp && i == 1;
        t.ports[1] = t.ports[1].wrapping_add(i);
        let len = usize::from(b.u16() % 12_000);
        let mss = b.u16() % 2000 + 1;
        flows.push(burst(&t, len, mss, i));
        let payload: Vec<u8> = (0..len)
            .map(|k| (k as u8).wrapping_mul(31) ^ i)
            .collect();
        whole.push(t.frame(&payload, true));
    }

    let mut inputs: Vec<Vec<u8>> = Vec::new();
    while !b.is_empty() && inputs.len() < 2000 {
        let op = b.u8();
        let fl = &flows[usize::from(op & 1)];
        let pick = |k: u8| fl.get(usize::from(k) % fl.len().max(1)).cloned();
        match op >> 5 {
            0..=1 => inputs.extend(pick(b.u8())),
            2 => inputs.push(whole[usize::from(op & 1)].clone()),
            3 => {
                if let Some(mut f) = pick(b.u8()) {
                    make_partial(&mut f);
                    assert!(partial::detect(&f).is_some(), "made partial, not detected");
                    inputs.push(f);
                }
            }
            4 => {
                if let Some(mut f) = pick(b.u8()) {
                    let at = usize::from(b.u16()) % f.len().max(1);
                    let x = b.u8() | 1;
                    if let Some(v) = f.get_mut(at) {
                        *v ^= x;
                    }
                    inputs.push(f);
                }
            }
            5 => {
                if let Some(mut f) = pick(b.u8()) {
                    let flags = b.u8();
                    if let Some(s) = slices(&f) {
                        if s.tcp {
                            f[s.l4_off + 13] = flags;
                            refresh_tcp_checksum(&mut f);
                        }
                    }
                    inputs.push(f);
                }
            }
            _ => {
                let n = usize::from(b.u8());
                inputs.push(b.take(n).to_vec());
            }
        }
    }

    let mut c = Coalescer::new(slots);
    let mut out: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
    let mut emit = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
    for f in &inputs {
        c.push(f, &mut emit);
    }
    c.flush(&mut emit);
    let st = c.stats();
    assert_eq!(st.frames_in as usize, inputs.len());
    assert_eq!(st.frames_in, st.frames_out + st.merged);
    assert_eq!(st.frames_out as usize, out.len());
    assert_eq!(c.open_flows(), 0);

    // Expand the outputs back into the frames they stand for.
    let mut expanded: Vec<Vec<u8>> = Vec::new();
    let mut gso = 0u64;
    let mut needs_csum = 0u64;
    for (h, f) in &out {
        if h.gso_type == GSO_NONE {
            if *h != VirtioNetHdr::NONE {
                let p = partial::detect(f).expect("NEEDS_CSUM on a frame that is not partial");
                assert_eq!(*h, p.vnet_hdr());
                assert_eq!(p.end, f.len());
                needs_csum += 1;
            }
            expanded.push(f.clone());
            continue;
        }
        gso += 1;
        let s = slices(f).expect("merged frame does not parse");
        assert_eq!(s.end, f.len());
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(usize::from(h.hdr_len), s.hdr_len);
        assert_eq!(usize::from(h.csum_start), s.l4_off);
        assert_eq!(h.csum_offset, 16);
        assert!(f.len() - s.hdr_len > usize::from(h.gso_size));
        let mut done = f.clone();
        assert!(complete_checksum(h, &mut done));
        assert!(
            checked(&done).is_some(),
            "completed checksum does not verify"
        );
        let pieces = split(h, f).expect("merged frame does not re-segment");
        assert!(pieces.len() >= 2);
        expanded.extend(pieces);
    }
    assert_eq!(gso, st.gso_frames_out);
    assert_eq!(expanded.len(), inputs.len());
    // Partial checksums are only ever found where the sender left them.
    let partial_in = inputs
        .iter()
        .filter(|f| partial::detect(f).is_some())
        .count() as u64;
    assert!(needs_csum <= st.partial_checksum && st.partial_checksum <= partial_in);

    // Every input exactly once (as a multiset of identities) ...
    let mut want: Vec<Vec<u8>> = inputs.iter().map(|f| identity(f)).collect();
    let mut got: Vec<Vec<u8>> = expanded.iter().map(|f| identity(f)).collect();
    want.sort();
    got.sort();
    assert!(want == got, "outputs are not the inputs");

    // ... and, per TCP flow, in input order.
    let per_flow = |frames: &[Vec<u8>]| {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = frames
            .iter()
            .filter_map(|f| flow(f).map(|k| (k, identity(f))))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0)); // stable: keeps the order within a flow
        v
    };
    assert!(
        per_flow(&inputs) == per_flow(&expanded),
        "a flow was reordered"
    );

    // With the TAP's MTU: uncut frames go out as GSO.
    let mut c = Coalescer::new(slots).with_tap_mtu(tap_mtu);
    let mut out: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
    let mut emit = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
    for f in &inputs {
        c.push(f, &mut emit);
    }
    c.flush(&mut emit);
    let st = c.stats();
    assert_eq!(st.frames_in, st.frames_out + st.merged);
    assert_eq!(st.frames_out as usize, out.len());
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for (h, f) in &out {
        if h.gso_type == GSO_NONE {
            pieces.push(f.clone());
            continue;
        }
        let s = slices(f).expect("gso frame does not parse");
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(usize::from(h.csum_start), s.l4_off);
        let mut done = f.clone();
        assert!(complete_checksum(h, &mut done));
        assert!(checked(&done).is_some(), "completed gso frame does not verify");
        let cut = split(h, f).expect("gso frame does not cut");
        // Merged frames only hold segments within the MTU; uncut ones are cut to it.
        for p in &cut {
            assert!(p.len() <= tap_mtu + 14, "a segment longer than the MTU");
        }
        pieces.extend(cut);
    }
    // Per flow, the TCP payload bytes of the verifying inputs come out in order.
    let stream = |frames: &[Vec<u8>]| {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for f in frames {
            let f = normalize(f);
            if let (Some(c), Some(k)) = (checked(&f), flow(&f)) {
                if c.s.tcp && f.len() == c.s.end {
                    v.push((k, c.payload));
                }
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut joined: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (k, p) in v {
            match joined.last_mut() {
                Some((lk, lp)) if *lk == k => lp.extend(p),
                _ => joined.push((k, p)),
            }
        }
        joined
    };
    assert!(
        stream(&inputs) == stream(&pieces),
        "payload changed or reordered with the MTU known"
    );
});
