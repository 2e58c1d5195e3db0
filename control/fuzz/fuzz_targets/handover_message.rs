//! The handover protocol's decoder over arbitrary bytes (what another process wrote
//! to the socket, or a torn state file in systemd's store): no panic; a stream of
//! frames is consumed without ever reading past the input; every accepted message
//! re-encodes to bytes that decode to itself; the frozen version fields of a Hello
//! are readable whenever the whole Hello is; the decisions taken on what was decoded
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::handover::decide;
use vxmesh_control::handover::wire::{Frame, Message, VERSIONS};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        let Ok(Some((frame, used))) = Frame::parse(&data[at..]) else {
            break;
        };
        assert!(used >= 16 && at + used <= data.len());
        if let Ok(m) = Message::decode(frame) {
            let again = m.encode();
            let (back, n) = Message::parse(&again).expect("our encoding parses").expect("complete");
            assert_eq!(n, again.len());
            assert_eq!(back, m);
            match &m {
                Message::Hello { versions, fingerprint, .. } => {
                    assert_eq!(frame.versions().ok(), Some(*versions));
                    let _ = decide::answer_hello(fingerprint, VERSIONS, true, *versions, fingerprint);
                }
                Message::Offer { state, .. } => {
                    let _ = decide::check_offer(state, state.fds.len());
                }
                Message::Stored { version, state } => {
                    let _ = decide::judge_stored(&state.fingerprint, VERSIONS, *version, state, &state.fds);
                }
                _ => {}
            }
        }
        at += used;
    }
});
