//! The top-flows table over arbitrary frames: `FlowKey::parse` on any bytes, and a
//! small table fed samples of whatever parsed, with clock jumps.
//! Asserts: no panic; the table never holds more than its capacity; every flow it
//! lists is found again by `get` (the index and the entries agree) and is listed once;
//! the top list is sorted by bytes.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::flows::{Direction, FlowKey, FlowTable, Sample, Weight};

fuzz_target!(|data: &[u8]| {
    let mut table = FlowTable::new(8, 5_000, 1);
    let mut now = 0u64;
    // Frames are length-prefixed by one byte; the byte after the frame moves the
    // clock and picks the direction, so idle replacement and both directions occur.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        let ctl = tail.first().copied().unwrap_or(0);
        rest = tail.get(1..).unwrap_or(&[]);
        now += u64::from(ctl >> 1) * 100;
        let Some(key) = FlowKey::parse(frame) else { continue };
        let dir = if ctl & 1 == 0 { Direction::ToPeer } else { Direction::FromPeer };
        let s = Sample {
            key,
            dir,
            peer: Ipv4Addr::new(192, 168, 0, ctl),
            weight: Weight { bytes: frame.len() as u64 + 1, packets: 1 },
        };
        table.record(&s, now);
        assert!(table.len() <= table.capacity());
    }
    let top = table.top(usize::MAX);
    assert_eq!(top.len(), table.len());
    for (i, f) in top.iter().enumerate() {
        assert_eq!(table.get(&f.key, f.dir), Some(f), "listed flow not found by get");
        assert!(!top[..i].iter().any(|g| g.key == f.key && g.dir == f.dir), "listed twice");
        if i > 0 {
            assert!(top[i - 1].bytes >= f.bytes, "top is not sorted by bytes");
        }
    }
});
