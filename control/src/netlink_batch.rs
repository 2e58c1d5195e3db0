//! Netlink batches: many rtnetlink requests in one `sendmsg`, each answered on its
//! own (a pure codec over bytes; the socket is [`crate::netlink::Netlink::apply`]'s).
//!
//! The kernel handles the messages of one datagram in order and acknowledges each
//! request that carries `NLM_F_ACK` with an `NLMSG_ERROR` message whose error is 0
//! (done) or a negative errno, and whose header carries the request's sequence
//! number; a failed request does not stop the ones after it (`netlink_rcv_skb`).
//! So a batch is: requests numbered `first_seq, first_seq + 1, …` in one buffer
//! ([`BatchWriter`]), and an answer per number collected from whatever datagrams
//! come back ([`Answers`]). A request nobody answered (the socket's receive buffer
//! overflowed, or the connection broke) is reported as such, never as done.
//!
//! Read first: netlink(7) ("Message format", `NLMSG_ERROR`, `NETLINK_CAP_ACK`) and
//! RFC 3549 §2.3.2. Byte order is the host's, as netlink's.

/// `struct nlmsghdr`: length u32, type u16, flags u16, seq u32, port id u32.
pub const HEADER_LEN: usize = 16;
/// `NLMSG_ERROR`: an acknowledgement (error 0) or an error.
pub const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST | NLM_F_ACK`, set on every request of a batch.
const REQUEST_ACK: u16 = 0x1 | 0x4;

mod field {
    use std::ops::Range;
    pub const LENGTH: Range<usize> = 0..4;
    pub const TYPE: Range<usize> = 4..6;
    pub const FLAGS: Range<usize> = 6..8;
    pub const SEQ: Range<usize> = 8..12;
    /// In an `NLMSG_ERROR` payload: the (negative) errno, 0 for an acknowledgement.
    pub const ERROR: Range<usize> = 16..20;
}

fn u16_at(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[r]);
    u16::from_ne_bytes(a)
}

fn u32_at(b: &[u8], r: std::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_ne_bytes(a)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A message handed to [`BatchWriter::push`] is not one netlink message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a netlink message: {len} bytes, header says {said}")]
pub struct NotAMessage {
    pub len: usize,
    pub said: u32,
}

/// A datagram from the kernel that does not parse as netlink messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink answer at byte {offset}: {what}")]
pub struct MalformedAnswer {
    pub offset: usize,
    pub what: &'static str,
}

/// Builds one batch: serialized requests back to back, numbered from `first_seq`.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    first_seq: u32,
    count: u32,
    buf: Vec<u8>,
}

impl BatchWriter {
    pub fn new(first_seq: u32) -> Self {
        BatchWriter {
            first_seq,
            count: 0,
            buf: Vec::new(),
        }
    }

    /// Appends one serialized request (header included, its length field right),
    /// giving it the next sequence number and `NLM_F_REQUEST | NLM_F_ACK`; returns
    /// that sequence number.
    pub fn push(&mut self, message: &[u8]) -> Result<u32, NotAMessage> {
        let said = if message.len() >= HEADER_LEN {
            u32_at(message, field::LENGTH)
        } else {
            0
        };
        if message.len() < HEADER_LEN || said as usize != message.len() {
            return Err(NotAMessage {
                len: message.len(),
                said,
            });
        }
        let seq = self.first_seq.wrapping_add(self.count);
        let at = self.buf.len();
        self.buf.extend_from_slice(message);
        let flags = u16_at(message, field::FLAGS) | REQUEST_ACK;
        self.buf[at + field::FLAGS.start..at + field::FLAGS.end]
            .copy_from_slice(&flags.to_ne_bytes());
        self.buf[at + field::SEQ.start..at + field::SEQ.end].copy_from_slice(&seq.to_ne_bytes());
        // NLMSG_ALIGN: the next message starts on a 4-byte boundary.
        self.buf.resize(align4(self.buf.len()), 0);
        self.count += 1;
        Ok(seq)
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes to send (one `sendmsg`).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Where the answers to this batch are collected.
    pub fn answers(&self) -> Answers {
        Answers::new(self.first_seq, self.len())
    }
}

/// The kernel's answer to one request of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Done,
    /// The errno (positive: `ENOENT` is 2).
    Failed(i32),
    /// No answer came (the receive buffer overflowed, or the socket failed).
    Unanswered,
}

/// Collects the answers to a batch, by sequence number.
#[derive(Debug, Clone)]
pub struct Answers {
    first_seq: u32,
    /// Per request: `None` until answered, then the error code (0: done).
    codes: Vec<Option<i32>>,
    /// Per request: the first other message carrying its number — what a get
    /// request (`RTM_GETNEIGH` …) returns, ahead of its acknowledgement.
    replies: Vec<Option<Vec<u8>>>,
    pending: usize,
}

/// `NLMSG_DONE`: the end of a dump (never a reply to a single get).
const NLMSG_DONE: u16 = 3;

impl Answers {
    pub fn new(first_seq: u32, count: usize) -> Self {
        Answers {
            first_seq,
            codes: vec![None; count],
            replies: vec![None; count],
            pending: count,
        }
    }

    /// Requests not answered yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Reads one datagram from the kernel (one or more messages). Answers to other
    /// sequence numbers (an earlier batch's, given up on) and other message types
    /// are ignored; a second answer to the same request does not count. What was
    /// read before a malformed message stays recorded.
    pub fn handle(&mut self, datagram: &[u8]) -> Result<(), MalformedAnswer> {
        let mut at = 0;
        while datagram.len() - at >= HEADER_LEN {
            let m = &datagram[at..];
            let len = u32_at(m, field::LENGTH) as usize;
            if len < HEADER_LEN || len > m.len() {
                return Err(MalformedAnswer {
                    offset: at,
                    what: "length field outside the datagram",
                });
            }
            let kind = u16_at(m, field::TYPE);
            if kind != NLMSG_ERROR && kind != NLMSG_DONE {
                let i = u32_at(m, field::SEQ).wrapping_sub(self.first_seq) as usize;
                if let Some(slot @ None) = self.replies.get_mut(i) {
                    *slot = Some(m[..len].to_vec());
                }
            }
            if kind == NLMSG_ERROR {
                if len < field::ERROR.end {
                    return Err(MalformedAnswer {
                        offset: at,
                        what: "NLMSG_ERROR without an error code",
                    });
                }
                let seq = u32_at(m, field::SEQ);
                let code = u32_at(m, field::ERROR) as i32;
                let i = seq.wrapping_sub(self.first_seq) as usize;
                if let Some(slot @ None) = self.codes.get_mut(i) {
                    *slot = Some(code);
                    self.pending -= 1;
                }
            }
            at += align4(len).min(m.len());
        }
        if at != datagram.len() {
            return Err(MalformedAnswer {
                offset: at,
                what: "trailing bytes shorter than a header",
            });
        }
        Ok(())
    }

    /// The answer to each request, in the batch's order.
    pub fn finish(self) -> Vec<Answer> {
        self.finish_with_replies()
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    }

    /// The answer to each request with the message it returned, if any (a get's
    /// reply: header included), in the batch's order.
    pub fn finish_with_replies(self) -> Vec<(Answer, Option<Vec<u8>>)> {
        self.codes
            .into_iter()
            .zip(self.replies)
            .map(|(c, r)| {
                let a = match c {
                    Some(0) => Answer::Done,
                    Some(e) => Answer::Failed(e.checked_neg().unwrap_or(i32::MAX)),
                    None => Answer::Unanswered,
                };
                (a, r)
            })
            .collect()
    }
}

#[cfg(all(test, target_endian = "little"))]
pub(crate) mod tests {
    use super::*;

    /// `ip -4 neigh replace 10.244.2.0 lladdr 0e:5a:11:22:33:44 dev #7 nud permanent`
    /// (RTM_NEWNEIGH, NLM_F_REQUEST|ACK|CREATE|REPLACE), seq 0, laid out by hand after
    /// rtnetlink(7): nlmsghdr, ndmsg (family 2, ifindex 7, state 0x80), NDA_DST,
    /// NDA_LLADDR. `netlink::tests` checks that the agent's own request for it is
    /// these bytes.
    pub(crate) const NEIGH: [u8; 48] = [
        0x30, 0, 0, 0, 0x1c, 0, 0x05, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
        0x02, 0, 0, 0, 0x07, 0, 0, 0, 0x80, 0, 0, 0, // ndmsg
        0x08, 0, 0x01, 0, 10, 244, 2, 0, // NDA_DST
        0x0a, 0, 0x02, 0, 0x0e, 0x5a, 0x11, 0x22, 0x33, 0x44, 0, 0, // NDA_LLADDR + pad
    ];
    /// `ip route del 10.244.3.0/24 dev #7` (RTM_DELROUTE, NLM_F_REQUEST), seq 0: an
    /// rtmsg and RTA_DST, RTA_OIF.
    pub(crate) const DEL_ROUTE: [u8; 44] = [
        0x2c, 0, 0, 0, 0x19, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
        0x02, 0x18, 0, 0, 0xfe, 0, 0, 0, 0, 0, 0, 0, // rtmsg: inet, /24, main
        0x08, 0, 0x01, 0, 10, 244, 3, 0, // RTA_DST
        0x08, 0, 0x04, 0, 0x07, 0, 0, 0, // RTA_OIF
    ];

    /// An acknowledgement as the kernel sends it with NETLINK_CAP_ACK: NLMSG_ERROR,
    /// flags NLM_F_CAPPED, the request's seq, our port id; error; the request's header.
    fn ack(seq: u32, error: i32, request_type: u8) -> Vec<u8> {
        let mut m = vec![0x24, 0, 0, 0, 0x02, 0, 0x00, 0x01];
        m.extend_from_slice(&seq.to_le_bytes());
        m.extend_from_slice(&[0x39, 0x30, 0, 0]); // port id 12345
        m.extend_from_slice(&error.to_le_bytes());
        m.extend_from_slice(&[0x30, 0, 0, 0, request_type, 0, 0x05, 0x05]);
        m.extend_from_slice(&seq.to_le_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m
    }

    #[test]
    fn several_requests_in_one_buffer_numbered_in_order() {
        let mut w = BatchWriter::new(1000);
        assert_eq!(w.push(&NEIGH), Ok(1000));
        assert_eq!(w.push(&DEL_ROUTE), Ok(1001));
        assert_eq!(w.push(&NEIGH), Ok(1002));
        assert_eq!(w.len(), 3);
        let b = w.bytes();
        assert_eq!(b.len(), 48 + 44 + 48);
        // Each header: its own length, type, flags with ACK added, its seq.
        assert_eq!(
            &b[..16],
            &[0x30, 0, 0, 0, 0x1c, 0, 0x05, 0x05, 0xe8, 0x03, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            &b[48..64],
            &[0x2c, 0, 0, 0, 0x19, 0, 0x05, 0, 0xe9, 0x03, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&b[92..96], &[0x30, 0, 0, 0]);
        assert_eq!(&b[100..104], &[0xea, 0x03, 0, 0]);
        // The bodies are untouched.
        assert_eq!(&b[16..48], &NEIGH[16..]);
        assert_eq!(&b[64..92], &DEL_ROUTE[16..]);
        assert_eq!(&b[108..], &NEIGH[16..]);
    }

    #[test]
    fn unaligned_messages_are_padded() {
        let mut odd = NEIGH[..46].to_vec();
        odd[0] = 46;
        let mut w = BatchWriter::new(7);
        w.push(&odd).unwrap();
        w.push(&NEIGH).unwrap();
        assert_eq!(w.bytes().len(), 48 + 48);
        assert_eq!(&w.bytes()[46..48], &[0, 0]);
        assert_eq!(w.bytes()[48], 0x30);
    }

    #[test]
    fn a_message_whose_length_field_lies_is_refused() {
        let mut w = BatchWriter::new(1);
        assert_eq!(w.push(&NEIGH[..40]), Err(NotAMessage { len: 40, said: 48 }));
        assert_eq!(w.push(&[0; 8]), Err(NotAMessage { len: 8, said: 0 }));
        assert!(w.is_empty());
        assert!(w.bytes().is_empty());
    }

    /// Three requests; the middle one fails (EEXIST, -17); the answers arrive one
    /// datagram each, out of order, with a stale answer from an earlier batch.
    #[test]
    fn acks_matched_per_sequence_with_one_error_in_the_middle() {
        let mut w = BatchWriter::new(500);
        for m in [&NEIGH[..], &DEL_ROUTE[..], &NEIGH[..]] {
            w.push(m).unwrap();
        }
        let mut a = w.answers();
        assert_eq!(a.pending(), 3);
        a.handle(&ack(499, -1, 0x1c)).unwrap(); // an earlier batch's
        a.handle(&ack(502, 0, 0x1c)).unwrap();
        a.handle(&ack(501, -17, 0x19)).unwrap();
        assert_eq!(a.pending(), 1);
        a.handle(&ack(500, 0, 0x1c)).unwrap();
        assert_eq!(a.pending(), 0);
        assert_eq!(
            a.finish(),
            vec![Answer::Done, Answer::Failed(17), Answer::Done]
        );
    }

    /// Several acknowledgements in one datagram; one never comes.
    #[test]
    fn acks_in_one_datagram_and_a_missing_one() {
        let mut a = Answers::new(u32::MAX - 1, 4); // wraps: MAX-1, MAX, 0, 1
        let mut d = ack(u32::MAX - 1, 0, 0x1c);
        d.extend(ack(0, -2, 0x19));
        d.extend(ack(1, 0, 0x1c));
        // A duplicate does not count twice.
        d.extend(ack(1, -22, 0x1c));
        a.handle(&d).unwrap();
        assert_eq!(a.pending(), 1);
        assert_eq!(
            a.finish(),
            vec![
                Answer::Done,
                Answer::Unanswered,
                Answer::Failed(2),
                Answer::Done
            ]
        );
    }

    #[test]
    fn malformed_answers_are_errors_and_keep_what_came_before() {
        let mut a = Answers::new(10, 2);
        let mut d = ack(10, 0, 0x1c);
        let mut bad = ack(11, 0, 0x1c);
        bad[0] = 0xff; // longer than the datagram
        d.extend(&bad);
        assert_eq!(
            a.handle(&d),
            Err(MalformedAnswer {
                offset: 36,
                what: "length field outside the datagram"
            })
        );
        let mut short = ack(11, 0, 0x1c)[..18].to_vec();
        short[0] = 18;
        short.extend([0, 0]);
        assert_eq!(
            a.handle(&short),
            Err(MalformedAnswer {
                offset: 0,
                what: "NLMSG_ERROR without an error code"
            })
        );
        assert!(a.handle(&[0x24, 0, 0]).is_err());
        assert_eq!(a.finish(), vec![Answer::Done, Answer::Unanswered]);
    }

    /// Other message types (NLMSG_DONE, a multicast notification) are skipped.
    #[test]
    fn other_messages_are_skipped() {
        let mut a = Answers::new(3, 1);
        let mut d = vec![
            0x14, 0, 0, 0, 0x03, 0, 0x02, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        d.extend(ack(3, -19, 0x1c));
        a.handle(&d).unwrap();
        assert_eq!(a.finish(), vec![Answer::Failed(19)]);
    }

    /// A get request's reply (`ip -4 neigh get 10.244.2.0 dev #7`: RTM_NEWNEIGH
    /// with the request's number) comes before its acknowledgement and is kept with
    /// it; a get of an entry that does not exist is ENOENT with no reply.
    #[test]
    fn a_get_keeps_its_reply() {
        let mut reply = NEIGH.to_vec();
        reply[8..12].copy_from_slice(&40u32.to_le_bytes());
        let mut a = Answers::new(40, 2);
        let mut d = reply.clone();
        d.extend(ack(40, 0, 0x1e));
        d.extend(ack(41, -2, 0x1e));
        a.handle(&d).unwrap();
        // A second message with the same number does not replace the first.
        let mut again = NEIGH.to_vec();
        again[8..12].copy_from_slice(&40u32.to_le_bytes());
        again[20] = 9;
        a.handle(&again).unwrap();
        assert_eq!(
            a.finish_with_replies(),
            vec![(Answer::Done, Some(reply)), (Answer::Failed(2), None)]
        );
    }

    proptest::proptest! {
        /// Any bytes: no panic; answers never exceed the batch.
        #[test]
        fn answers_never_panic(first in proptest::num::u32::ANY, n in 0usize..8,
                               d in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut a = Answers::new(first, n);
            let _ = a.handle(&d);
            proptest::prop_assert!(a.pending() <= n);
            proptest::prop_assert_eq!(a.finish().len(), n);
        }

        /// Every request of a batch answered in any order: each answer lands on its
        /// request.
        #[test]
        fn answers_land_on_their_requests(first in proptest::num::u32::ANY,
                                          codes in proptest::collection::vec(-200i32..=0, 1..40),
                                          rot in 0usize..40) {
            let mut a = Answers::new(first, codes.len());
            let mut order: Vec<usize> = (0..codes.len()).collect();
            order.rotate_left(rot % codes.len());
            for i in order {
                a.handle(&ack(first.wrapping_add(i as u32), codes[i], 0x1c)).unwrap();
            }
            let want: Vec<Answer> = codes.iter().map(|&c| if c == 0 { Answer::Done } else { Answer::Failed(-c) }).collect();
            proptest::prop_assert_eq!(a.finish(), want);
        }
    }
}
