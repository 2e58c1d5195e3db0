//! `offload::for_plain_tap` (ingress to a TAP without virtio-net headers) on arbitrary
//! bytes and on TCP/UDP frames built from a template, whole (a kernel sender's uncut
//! GSO frame) or with the checksum left partial: no panic; `Cut(n)` emits exactly n
//! frames, each no longer than the MTU (plus the Ethernet header) and verifying, whose
//! payloads concatenate to the input's; `Finished` emits one frame of the input's
//! length, which for a built frame verifies and carries the input's payload;
//! `Unchanged` emits the input itself.
#![no_main]

use fuzz_support::{checked, Bytes, Template};
use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::offload::{for_plain_tap, PlainTap, PLAIN_TAP_SCRATCH};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let mtu = 576 + usize::from(b.u16()) % 9000;
    let frame = if mode & 1 == 0 {
        b.rest().to_vec()
    } else {
        let mut t = Template::read(&mut b);
        t.udp = mode & 8 != 0;
        // Payloads beyond the input's length repeat it: a whole GSO frame is long.
        let rest = b.rest();
        let want = if mode & 4 != 0 { rest.len() * 40 } else { rest.len() };
        let payload: Vec<u8> = rest.iter().copied().cycle().take(want.min(60_000)).collect();
        t.frame(&payload, mode & 2 != 0)
    };
    let mut scratch = vec![0u8; PLAIN_TAP_SCRATCH];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let r = for_plain_tap(&frame, Some(mtu), &mut scratch, &mut |f| out.push(f.to_vec()));
    match r {
        PlainTap::Unchanged => assert_eq!(out, [frame]),
        PlainTap::Finished => {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].len(), frame.len());
            // Built frames have a right IPv4 header checksum (raw bytes need not:
            // only the partial L4 checksum is finished).
            if mode & 1 == 1 {
                let done = checked(&out[0]).expect("a finished checksum verifies");
                let s = fuzz_support::slices(&frame).expect("a finished frame parses");
                assert_eq!(done.payload, frame[s.hdr_len..s.end]);
            }
        }
        PlainTap::Cut(n) => {
            assert_eq!(out.len(), n);
            assert!(n >= 2, "a cut frame was longer than the MTU");
            let mut joined = Vec::new();
            for f in &out {
                assert!(f.len() <= mtu + 14, "{} > MTU {mtu}", f.len());
                let c = checked(f).expect("every cut segment verifies");
                joined.extend_from_slice(&c.payload);
            }
            let whole = fuzz_support::slices(&frame).expect("a cut frame parses");
            assert_eq!(joined, frame[whole.hdr_len..whole.end]);
        }
    }
});
