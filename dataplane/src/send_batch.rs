//! The egress send batch, without I/O: which VXLAN datagrams share one UDP GSO
//! message, how a batch is cut into the messages of one `sendmmsg(2)` call, and what
//! a partial or failed call sent and what is left to send.
//!
//! [`TxBatch`] holds datagrams back to back in one buffer and describes them as
//! [`SendEntry`]s: runs of datagrams to one destination from one socket, every one
//! `stride` bytes except the last, which may be shorter: the shape one UDP_SEGMENT
//! send takes. [`TxBatch::push`] decides when a datagram joins the previous run.
//!
//! [`plan`] cuts the entries, from a [`SendCursor`] on, into the messages of one
//! `sendmmsg` on one socket: one message per run with GSO (at most
//! [`GSO_MAX_SEGMENTS`] datagrams and [`GSO_MAX_BYTES`] bytes each), one per datagram
//! without. IPv4 and IPv6 destinations are sent from sockets of their own family, so
//! neither a run nor a call mixes them. The kernel answers with the number of messages it sent, or with an error
//! for the first one; [`SendPlan::sent`] and [`SendPlan::failed`] turn that answer
//! into datagrams sent or lost and the cursor to continue from. The cursor counts
//! datagrams, so a partly sent run is neither counted as sent nor sent twice.
//!
//! The system calls are made by [`crate::sys::udp`]. Read first: Linux `udp(7)`
//! (`UDP_SEGMENT`), `sendmmsg(2)` (RETURN VALUE).
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use crate::offload::Segments;

/// Most datagrams one GSO send may carry (`UDP_MAX_SEGMENTS`).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes one IPv4 UDP send may carry (65,535 less the IPv4 and UDP
/// headers). An IPv6 send may carry 65,527 (its payload length leaves the IPv6 header
/// out), so one limit, the smaller, holds for both families.
pub const GSO_MAX_BYTES: usize = 65_507;
/// Messages per `sendmmsg` call.
pub const BATCH: usize = 64;

/// One run of a send batch: `len` bytes at `offset` of the batch buffer, cut into
/// datagrams of `stride` bytes (the last may be shorter), to `dst`, from transmit
/// socket `socket` (an index among the sockets of `dst`'s family), with outer TOS
/// byte (IPv4) or traffic class (IPv6) `tos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendEntry {
    pub dst: SocketAddr,
    pub offset: usize,
    pub len: usize,
    pub stride: usize,
    pub socket: usize,
    /// The outer header's TOS: the inner packets' ECN field as RFC 6040 copies it out
    /// (`wire::ecn::encapsulated`), 0 for packets that are not ECN-capable.
    pub tos: u8,
}

impl SendEntry {
    /// Number of datagrams this entry carries.
    pub fn datagrams(&self) -> usize {
        if self.stride == 0 || self.len <= self.stride {
            1
        } else {
            self.len.div_ceil(self.stride)
        }
    }

    /// Byte range of datagram `i` in the batch buffer.
    pub fn datagram(&self, i: usize) -> Option<Range<usize>> {
        if i >= self.datagrams() {
            return None;
        }
        let step = self.step();
        let end = self.offset.saturating_add(self.len);
        let start = self.offset.saturating_add(i * step);
        Some(start..start.saturating_add(step).min(end))
    }

    /// The length of every datagram but the last.
    fn step(&self) -> usize {
        if self.stride == 0 || self.len <= self.stride {
            self.len
        } else {
            self.stride
        }
    }
}

/// Whether one datagram of `len` bytes written at `at` continues `last`'s GSO run.
fn continues_run(
    last: &SendEntry,
    at: usize,
    len: usize,
    dst: SocketAddr,
    socket: usize,
    tos: u8,
) -> bool {
    last.dst == dst
        && last.socket == socket
        && last.tos == tos
        && last.offset + last.len == at
        // every datagram so far is a full stride: none was short
        && last.stride > 0
        && last.len % last.stride == 0
        && len <= last.stride
        && last.datagrams() < GSO_MAX_SEGMENTS
        && last.len + len <= GSO_MAX_BYTES
}

/// Datagrams laid out back to back, and the runs they are sent in. Allocated once.
#[derive(Debug)]
pub struct TxBatch {
    buf: Vec<u8>,
    used: usize,
    /// The furthest `used` has reached since the pages were last given back.
    written: usize,
    entries: Vec<SendEntry>,
}

impl TxBatch {
    /// A batch of `bytes` bytes, with room for `entries` runs before it allocates.
    pub fn new(bytes: usize, entries: usize) -> TxBatch {
        TxBatch {
            buf: vec![0; bytes],
            used: 0,
            written: 0,
            entries: Vec::with_capacity(entries),
        }
    }

    /// Gives the buffer's pages back to the system when nothing waits in it (see
    /// [`crate::sys::release_pages`]). Returns the bytes released.
    pub fn release_pages(&mut self) -> usize {
        if self.used != 0 {
            return 0;
        }
        self.written = 0;
        crate::sys::release_pages(&mut self.buf)
    }

    /// How far into the buffer datagrams have been taken in since its pages were last
    /// given back (across sends).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Where the next datagrams are written, before [`TxBatch::push`] takes them in.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Bytes left for more datagrams.
    pub fn spare_len(&self) -> usize {
        self.buf.len() - self.used
    }

    /// Size of the whole buffer.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The datagrams taken in so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    /// The runs they are sent in.
    pub fn entries(&self) -> &[SendEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything (after a send).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }

    /// Takes in `segs`, just written at the start of [`TxBatch::spare`], to `dst`
    /// from socket `socket` with outer TOS `tos`. With `gso`, a single datagram joins the
    /// previous run when it continues it: same destination (so the same address
    /// family), socket and TOS, every datagram so far a full
    /// stride, not longer than the stride, and the run stays within
    /// [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`]; several datagrams become runs of
    /// their own, cut at those limits. Without `gso`, every datagram is a run.
    ///
    /// Returns false, taking nothing in, if `segs` does not describe datagrams that
    /// fit in the spare room (every one `stride` bytes but the last, 1 to `stride`).
    #[must_use]
    pub fn push(
        &mut self,
        segs: Segments,
        dst: SocketAddr,
        socket: usize,
        gso: bool,
        tos: u8,
    ) -> bool {
        let Segments { stride, count, len } = segs;
        let shaped = stride > 0
            && count > 0
            && len > 0
            && (count - 1)
                .checked_mul(stride)
                .is_some_and(|full| full < len)
            && count.checked_mul(stride).is_some_and(|max| len <= max);
        if !shaped || len > self.spare_len() {
            return false;
        }
        let base = self.used;
        self.used += len;
        self.written = self.written.max(self.used);
        if gso && count == 1 {
            if let Some(last) = self.entries.last_mut() {
                if continues_run(last, base, len, dst, socket, tos) {
                    last.len += len;
                    return true;
                }
            }
        }
        if gso {
            for r in segs.batches(GSO_MAX_SEGMENTS, GSO_MAX_BYTES) {
                self.entries.push(SendEntry {
                    dst,
                    offset: base + r.start,
                    len: r.len(),
                    stride,
                    socket,
                    tos,
                });
            }
        } else {
            for r in (0..count).filter_map(|i| segs.datagram(i)) {
                self.entries.push(SendEntry {
                    dst,
                    offset: base + r.start,
                    len: r.len(),
                    stride: r.len(),
                    socket,
                    tos,
                });
            }
        }
        true
    }
}

/// How far a batch has been sent: the next datagram to send is datagram `datagram`
/// of entry `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct SendCursor {
    pub entry: usize,
    pub datagram: usize,
}

/// One message of a `sendmmsg` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub dst: SocketAddr,
    /// Its payload: `len` bytes at `offset` of the batch buffer.
    pub offset: usize,
    pub len: usize,
    /// The `UDP_SEGMENT` size, when the message carries more than one datagram.
    pub segment: Option<u16>,
    /// The outer TOS byte (an `IP_TOS` or `IPV6_TCLASS` control message when not 0).
    pub tos: u8,
    /// Datagrams it carries.
    pub datagrams: usize,
    /// Where the batch stands once this message is sent.
    pub end: SendCursor,
}

impl Message {
    const EMPTY: Message = Message {
        dst: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        offset: 0,
        len: 0,
        segment: None,
        tos: 0,
        datagrams: 0,
        end: SendCursor {
            entry: 0,
            datagram: 0,
        },
    };
}

/// The messages of one `sendmmsg` call, all from one socket. Filled by [`plan`];
/// make one per batch and reuse it.
#[derive(Debug, Clone)]
pub struct SendPlan {
    socket: usize,
    ipv6: bool,
    messages: [Message; BATCH],
    n: usize,
}

/// What one call achieved, and where to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Progress {
    /// Datagrams sent.
    pub sent: usize,
    /// Their payload bytes.
    pub bytes: usize,
    /// Datagrams given up on (count them as failed sends).
    pub lost: usize,
    /// Where the next call starts.
    pub next: SendCursor,
}

impl Default for SendPlan {
    fn default() -> Self {
        SendPlan {
            socket: 0,
            ipv6: false,
            messages: [Message::EMPTY; BATCH],
            n: 0,
        }
    }
}

impl SendPlan {
    /// The socket to send from (an index into the transmit sockets).
    pub fn socket(&self) -> usize {
        self.socket
    }

    /// Whether the messages go to IPv6 destinations, from an IPv6 socket (all of them
    /// or none: a plan never mixes families).
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// At most [`BATCH`] messages; one or more after [`plan`] returned [`Next::Send`].
    pub fn messages(&self) -> &[Message] {
        &self.messages[..self.n]
    }

    /// The kernel sent the first `messages` messages (`sendmmsg`'s return value).
    /// It reports an error rather than 0; 0 is taken as a failure of the first message,
    /// so that every call makes progress.
    pub fn sent(&self, messages: usize) -> Progress {
        if messages == 0 {
            return self.failed();
        }
        let done = &self.messages()[..messages.min(self.n)];
        Progress {
            sent: done.iter().map(|m| m.datagrams).sum(),
            bytes: done.iter().map(|m| m.len).sum(),
            lost: 0,
            next: done.last().map_or(SendCursor::default(), |m| m.end),
        }
    }

    /// No call can be made (there is no socket of the plan's family): every datagram of
    /// the plan is lost, the batch goes on after it.
    pub fn abandon(&self) -> Progress {
        Progress {
            sent: 0,
            bytes: 0,
            lost: self.messages().iter().map(|m| m.datagrams).sum(),
            next: self
                .messages()
                .last()
                .map_or(SendCursor::default(), |m| m.end),
        }
    }

    /// The call failed for the first message: its datagrams are lost, the rest of the
    /// plan is sent by the next call.
    pub fn failed(&self) -> Progress {
        match self.messages().first() {
            Some(first) => Progress {
                sent: 0,
                bytes: 0,
                lost: first.datagrams,
                next: first.end,
            },
            None => Progress {
                sent: 0,
                bytes: 0,
                lost: 0,
                next: SendCursor::default(),
            },
        }
    }
}

/// What to do next with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Next {
    /// Everything has been sent (or given up on).
    Done,
    /// Make one `sendmmsg` call with the messages of the [`SendPlan`].
    Send,
    /// The entry at the cursor cannot be sent (empty, outside the buffer): count
    /// `datagrams` failed sends and go on at `next`.
    Drop { datagrams: usize, next: SendCursor },
}

/// The message at `at`, or `None` if the entry cannot be sent.
fn message(e: &SendEntry, at: SendCursor, buf_len: usize, gso: bool) -> Option<Message> {
    let total = e.datagrams();
    if e.len == 0 || e.offset.checked_add(e.len).is_none_or(|end| end > buf_len) {
        return None;
    }
    let step = e.step();
    let left = total.checked_sub(at.datagram).filter(|&l| l > 0)?;
    let first = e.datagram(at.datagram)?;
    let mut take = if gso { left.min(GSO_MAX_SEGMENTS) } else { 1 };
    let mut last = e.datagram(at.datagram + take - 1)?;
    if last.end - first.start > GSO_MAX_BYTES {
        // Only the entry's last datagram may be short, so as many whole strides as
        // fit (at least one datagram, sent without a segment size if it is too big).
        take = (GSO_MAX_BYTES / step).clamp(1, take);
        last = e.datagram(at.datagram + take - 1)?;
    }
    // take > 1 means step <= GSO_MAX_BYTES / 2, so the size fits 16 bits; if it ever
    // did not, the entry is dropped rather than sent with a truncated segment size.
    let segment = if take > 1 {
        Some(u16::try_from(step).ok()?)
    } else {
        None
    };
    let end = if at.datagram + take == total {
        SendCursor {
            entry: at.entry + 1,
            datagram: 0,
        }
    } else {
        SendCursor {
            entry: at.entry,
            datagram: at.datagram + take,
        }
    };
    Some(Message {
        dst: e.dst,
        offset: first.start,
        len: last.end - first.start,
        segment,
        tos: e.tos,
        datagrams: take,
        end,
    })
}

/// The next step for `entries` (laid out in a buffer of `buf_len` bytes), sent from
/// `at` on: fills `p` with the messages for one `sendmmsg` on socket
/// `entry.socket % sockets` of the destination's family (both families have `sockets`
/// sockets), up to [`BATCH`] of them, stopping where the socket or the family changes
/// or an entry cannot be sent.
pub fn plan(
    entries: &[SendEntry],
    buf_len: usize,
    at: SendCursor,
    gso: bool,
    sockets: usize,
    p: &mut SendPlan,
) -> Next {
    let sockets = sockets.max(1);
    let mut at = at;
    if entries
        .get(at.entry)
        .is_some_and(|e| at.datagram >= e.datagrams())
    {
        at = SendCursor {
            entry: at.entry + 1,
            datagram: 0,
        };
    }
    p.n = 0;
    let Some(first) = entries.get(at.entry) else {
        return Next::Done;
    };
    let socket = first.socket % sockets;
    let ipv6 = first.dst.is_ipv6();
    p.socket = socket;
    p.ipv6 = ipv6;
    while p.n < BATCH {
        let Some(e) = entries.get(at.entry) else {
            break;
        };
        if e.socket % sockets != socket || e.dst.is_ipv6() != ipv6 {
            break;
        }
        let Some(m) = message(e, at, buf_len, gso) else {
            if p.n == 0 {
                return Next::Drop {
                    datagrams: e.datagrams().saturating_sub(at.datagram),
                    next: SendCursor {
                        entry: at.entry + 1,
                        datagram: 0,
                    },
                };
            }
            break;
        };
        p.messages[p.n] = m;
        p.n += 1;
        at = m.end;
    }
    Next::Send
}

#[cfg(test)]
mod tests;
