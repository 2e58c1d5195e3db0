//! The kernel's answers to a netlink batch over arbitrary bytes: no panic; never more
//! answers than requests; an answer once recorded stays, whatever follows it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::netlink_batch::{Answer, Answers};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(head % 16);
    let first_seq = u32::from(head).wrapping_mul(0x0101_0101);
    let mut a = Answers::new(first_seq, count);
    // Split the rest into two datagrams: what the first recorded must survive the second.
    let cut = rest.len() / 2;
    let _ = a.handle(&rest[..cut]);
    let after_first = a.clone().finish();
    let _ = a.handle(&rest[cut..]);
    assert!(a.pending() <= count);
    let answers = a.finish();
    assert_eq!(answers.len(), count);
    for (before, now) in after_first.iter().zip(&answers) {
        if *before != Answer::Unanswered {
            assert_eq!(before, now, "a recorded answer changed");
        }
    }
});
