//! Receive side: coalesce the TCP segments decapsulated from VXLAN into large frames
//! before they are written to the TAP, so the kernel sees one 64 KiB GSO frame instead
//! of ~45 MTU-sized ones (what Linux `tcp_gro_receive` does for a NIC).
//!
//! The [`Coalescer`] has a fixed table of flow slots, each with its own buffer,
//! allocated once in [`Coalescer::new`]. [`Coalescer::push`] takes one inner Ethernet
//! frame; a segment that continues an open slot is appended to it, anything else first
//! emits its flow's slot (so a flow is never reordered), then opens a slot or is
//! emitted unchanged. [`Coalescer::flush`] emits every open slot at the end of a batch.
//!
//! A segment is merged only when all of these hold (Linux `tcp_gro_receive` and
//! `inet_gro_receive`/`ipv6_gro_receive` rules; wireguard-go does the same for TUN):
//! - IPv4 without fragmentation, or IPv6 with TCP as the next header; the frame ends
//!   where the IP length says (no Ethernet padding); the IPv4 header checksum
//!   verifies, and the TCP checksum verifies or was left partial by the sending kernel
//!   ([`super::partial`]: then it is not summed at all). A bad one is emitted untouched
//!   for the kernel to drop, and counted;
//! - same Ethernet header, same IP header except length/id/checksum (so the same
//!   addresses, TOS/TTL or traffic class/flow label/hop limit, DF and options); IPv4
//!   ids incrementing unless DF is set (RFC 6864: then the id carries nothing);
//! - same ports, `seq` equal to the next expected sequence number, same ack number and
//!   window (one merged header carries one of each; Linux flushes on either too), same
//!   data offset and identical option bytes;
//! - flags exactly ACK, or ACK|PSH: PSH ends the merge (it is kept on the merged
//!   header). SYN/FIN/RST/URG/ECE/CWR segments and segments without payload are never
//!   merged;
//! - payload no longer than the first segment's (`gso_size`); a shorter one ends the
//!   merge; the IP length stays within 65,535 bytes.
//!
//! A TCP frame longer than the TAP's MTU (given with [`Coalescer::with_tap_mtu`]) is a
//! kernel sender's GSO frame that crossed a virtual underlay uncut
//! ([`super::unsegmented`]): it flushes its flow and goes out alone as a GSO frame
//! (`gso_size` from the MTU), its checksum field set to the pseudo-header sum.
//!
//! A slot holding one segment is emitted exactly as received, with
//! [`VirtioNetHdr::NONE`] — or, when its checksum was left partial, with the
//! `NEEDS_CSUM` header of [`PartialCsum::vnet_hdr`]. Frames that are never merged
//! (other protocols, SYN/FIN/RST, pure ACKs, UDP) pass the same way: a partial TCP or
//! UDP checksum gets the `NEEDS_CSUM` header, anything else [`VirtioNetHdr::NONE`] and
//! the kernel's own check. A merged one gets its IP length (and IPv4 header checksum)
//! fixed, the pseudo-header sum in the TCP checksum field (`CHECKSUM_PARTIAL`), and a
//! header with `F_NEEDS_CSUM`, `GSO_TCPV4`/`GSO_TCPV6`, `gso_size` = the first
//! payload length. Not done here: UDP coalescing, IPv6 extension headers, VLANs.

use super::partial::{detect_in, PartialCsum};
use super::unsegmented::{self, Unsegmented};
use super::{pseudo_with_len, Layout};
use crate::wire::checksum::verifies;
use crate::wire::ip::{tcp_flags, PROTO_TCP};
use crate::wire::virtio::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use crate::wire::{be16, be32, Ipv4Packet, Ipv6Packet, TcpHeader, VirtioNetHdr};

/// Bytes per slot buffer: the largest frame a slot can hold (Ethernet + IPv6 header +
/// a 65,535-byte payload; an IPv4 frame stops at a 65,535-byte total length).
pub const SLOT_BUF_LEN: usize = 14 + 40 + 0xffff;

/// Largest value of the IPv4 total length and IPv6 payload length fields.
const MAX_IP_LEN: usize = 0xffff;

/// Counters of what the coalescer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalesceStats {
    /// Frames offered to [`Coalescer::push`].
    pub frames_in: u64,
    /// Frames handed to `emit` (merged or not). After a flush,
    /// `frames_in == frames_out + merged`.
    pub frames_out: u64,
    /// Segments appended to an open slot (each one frame fewer on the TAP).
    pub merged: u64,
    /// Frames emitted with a GSO header (two or more segments).
    pub gso_frames_out: u64,
    /// TCP segments whose IPv4 header or TCP checksum did not verify (passed through).
    pub bad_checksum: u64,
    /// Frames whose TCP or UDP checksum the sender left partial (passed on or merged
    /// without summing; see [`super::partial`]).
    pub partial_checksum: u64,
    /// TCP frames longer than the TAP's MTU handed on as GSO frames (a kernel sender's
    /// GSO frame that crossed a virtual underlay uncut; see [`super::unsegmented`]).
    pub oversized: u64,
    /// Slots emitted early because the table was full.
    pub evicted: u64,
}

/// Which flow a TCP segment belongs to: direction-sensitive 5-tuple.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
}

impl FlowKey {
    fn of(frame: &[u8], lay: &Layout) -> FlowKey {
        let ip = Layout::ETH_LEN;
        let mut k = FlowKey {
            v6: lay.v6,
            ..FlowKey::default()
        };
        if lay.v6 {
            k.src.copy_from_slice(&frame[ip + 8..ip + 24]);
            k.dst.copy_from_slice(&frame[ip + 24..ip + 40]);
        } else {
            k.src[..4].copy_from_slice(&frame[ip + 12..ip + 16]);
            k.dst[..4].copy_from_slice(&frame[ip + 16..ip + 20]);
        }
        k.ports.copy_from_slice(&frame[lay.l4_off..lay.l4_off + 4]);
        k
    }
}

/// A TCP segment that may be merged: checked, with the fields merging needs.
#[derive(Debug, Clone, Copy)]
struct Segment {
    lay: Layout,
    key: FlowKey,
    seq: u32,
    psh: bool,
    payload_len: usize,
    /// The TCP checksum was left partial by the sender (not verified, not needed).
    partial: Option<PartialCsum>,
}

/// What [`classify`] decided about a frame.
#[derive(Debug, Clone, Copy)]
enum Class {
    /// Not TCP over IPv4/IPv6 (or not parseable): emit as is (marked `NEEDS_CSUM` when
    /// a UDP checksum was left partial), no flow to flush.
    Other(Option<PartialCsum>),
    /// A TCP segment that is never merged: flush its flow, then emit as is (marked
    /// `NEEDS_CSUM` when its checksum was left partial).
    Unmergeable(FlowKey, Option<PartialCsum>),
    /// A checksum does not verify: count, flush its flow, emit as is.
    BadChecksum(FlowKey),
    /// Longer than the TAP's MTU, checked: flush its flow, emit alone as GSO with
    /// `hdr` (the checksum field set to the pseudo-header sum unless `partial`).
    Oversized {
        key: FlowKey,
        lay: Layout,
        hdr: VirtioNetHdr,
        partial: bool,
    },
    /// A segment that can open or continue a slot.
    Candidate(Segment),
}

fn classify(frame: &[u8], tap_mtu: Option<usize>) -> Class {
    let Ok(lay) = Layout::parse(frame) else {
        return Class::Other(None);
    };
    let partial = detect_in(frame, &lay);
    if lay.proto != PROTO_TCP {
        return Class::Other(partial);
    }
    let key = FlowKey::of(frame, &lay);
    if let Some(mtu) = tap_mtu {
        match unsegmented::check(frame, &lay, partial, mtu) {
            Unsegmented::No => {}
            Unsegmented::Refused => return Class::Unmergeable(key, partial),
            Unsegmented::BadChecksum => return Class::BadChecksum(key),
            Unsegmented::Gso { hdr, partial } => {
                return Class::Oversized {
                    key,
                    lay,
                    hdr,
                    partial,
                }
            }
        }
    }
    let l4 = lay.l4_off;
    let flags = frame[l4 + 13];
    let payload_len = lay.end - lay.hdr_len();
    if frame.len() != lay.end
        || payload_len == 0
        || (flags != tcp_flags::ACK && flags != tcp_flags::ACK | tcp_flags::PSH)
    {
        return Class::Unmergeable(key, partial);
    }
    if !lay.v6 && !verifies(&frame[Layout::ETH_LEN..l4]) {
        return Class::BadChecksum(key);
    }
    // A partial checksum carries nothing to verify: the sender never summed the data
    // (see `partial` for why this does not let other checksums through).
    if partial.is_none() {
        let mut c = pseudo_with_len(lay.pseudo_base(frame), lay.end - l4);
        c.add_bytes(&frame[l4..lay.end]);
        if c.fold() != 0xffff {
            return Class::BadChecksum(key);
        }
    }
    Class::Candidate(Segment {
        lay,
        key,
        seq: be32(frame, l4 + 4),
        psh: flags & tcp_flags::PSH != 0,
        payload_len,
        partial,
    })
}

/// One flow's pending merged frame.
#[derive(Debug)]
struct Slot {
    buf: Box<[u8]>,
    open: bool,
    key: FlowKey,
    lay: Layout,
    /// Bytes of `buf` in use: the first frame plus every appended payload.
    len: usize,
    /// Payload length of the first segment.
    gso_size: usize,
    next_seq: u32,
    first_id: u16,
    segs: u16,
    /// The first segment's checksum was left partial: alone, it goes out marked so.
    first_partial: Option<PartialCsum>,
    /// When the slot was opened (a counter), to find the oldest.
    born: u64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            buf: vec![0u8; SLOT_BUF_LEN].into_boxed_slice(),
            open: false,
            key: FlowKey::default(),
            lay: Layout {
                v6: false,
                proto: PROTO_TCP,
                l4_off: 0,
                l4_hdr_len: 0,
                end: 0,
            },
            len: 0,
            gso_size: 0,
            next_seq: 0,
            first_id: 0,
            segs: 0,
            first_partial: None,
            born: 0,
        }
    }

    /// Largest `len` this slot may reach.
    fn limit(&self) -> usize {
        let ip_hdr = if self.lay.v6 {
            Ipv6Packet::<&[u8]>::HEADER_LEN
        } else {
            0
        };
        (Layout::ETH_LEN + ip_hdr + MAX_IP_LEN).min(self.buf.len())
    }

    /// Starts the slot with `frame` (a candidate whose length fits the buffer).
    fn open(&mut self, frame: &[u8], seg: &Segment, born: u64) {
        self.buf[..frame.len()].copy_from_slice(frame);
        self.open = true;
        self.key = seg.key;
        self.lay = seg.lay;
        self.len = frame.len();
        self.gso_size = seg.payload_len;
        self.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        self.first_id = if seg.lay.v6 {
            0
        } else {
            be16(frame, Layout::ETH_LEN + 4)
        };
        self.segs = 1;
        self.first_partial = seg.partial;
        self.born = born;
    }

    /// True when `frame` (a candidate of this slot's flow) continues it.
    fn continues(&self, frame: &[u8], seg: &Segment) -> bool {
        let a = &self.buf[..self.len];
        let b = frame;
        let lay = &self.lay;
        let (ip, l4, hdr) = (Layout::ETH_LEN, lay.l4_off, lay.hdr_len());
        if seg.lay.l4_off != l4
            || seg.lay.hdr_len() != hdr
            || seg.seq != self.next_seq
            || seg.payload_len > self.gso_size
            || self.len + seg.payload_len > self.limit()
            || self.segs == u16::MAX
        {
            return false;
        }
        // Same Ethernet header.
        if a[..ip] != b[..ip] {
            return false;
        }
        if lay.v6 {
            // Version/class/flow label; next header and hop limit; (addresses keyed).
            if a[ip..ip + 4] != b[ip..ip + 4] || a[ip + 6..ip + 8] != b[ip + 6..ip + 8] {
                return false;
            }
        } else {
            // Version/IHL/TOS; flags/fragment/TTL/protocol; addresses and options.
            if a[ip..ip + 2] != b[ip..ip + 2]
                || a[ip + 6..ip + 10] != b[ip + 6..ip + 10]
                || a[ip + 12..l4] != b[ip + 12..l4]
            {
                return false;
            }
            let df = b[ip + 6] & 0x40 != 0;
            let id = be16(b, ip + 4);
            if !df && id != self.first_id.wrapping_add(self.segs) {
                return false;
            }
        }
        // Ack number, data offset, window; option bytes. Flags were checked by
        // `classify` (and an open slot never holds a PSH segment).
        a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
            && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
            && a[l4 + 20..hdr] == b[l4 + 20..hdr]
    }

    /// Appends the payload of `frame`, a segment [`Slot::continues`] accepted.
    fn append(&mut self, frame: &[u8], seg: &Segment) {
        let payload = &frame[seg.lay.hdr_len()..seg.lay.end];
        self.buf[self.len..self.len + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
        self.segs += 1;
        if seg.psh {
            self.buf[self.lay.l4_off + 13] |= tcp_flags::PSH;
        }
    }

    /// No segment can follow: it ended with PSH or a short payload, or the slot is
    /// full. (A slot with room for less than a full segment stays open: a short last
    /// segment may still fit.)
    fn is_closed(&self, last: &Segment) -> bool {
        last.psh
            || last.payload_len < self.gso_size
            || self.len >= self.limit()
            || self.segs == u16::MAX
    }

    /// Emits the slot (fixing the headers of a merged frame) and closes it.
    fn emit(&mut self, stats: &mut CoalesceStats, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        if !self.open {
            return;
        }
        self.open = false;
        stats.frames_out += 1;
        let frame = &mut self.buf[..self.len];
        if self.segs < 2 {
            let hdr = self
                .first_partial
                .map_or(VirtioNetHdr::NONE, |p| p.vnet_hdr());
            emit(&hdr, frame);
            return;
        }
        stats.gso_frames_out += 1;
        let lay = self.lay;
        let ip = Layout::ETH_LEN;
        // `limit` kept both lengths within 16 bits.
        let gso_type = if lay.v6 {
            let pl = self.len - ip - Ipv6Packet::<&[u8]>::HEADER_LEN;
            Ipv6Packet::new_unchecked(&mut frame[ip..]).set_payload_len(pl as u16);
            GSO_TCPV6
        } else {
            let mut h = Ipv4Packet::new_unchecked(&mut frame[ip..lay.l4_off]);
            h.set_total_len((self.len - ip) as u16);
            h.fill_checksum();
            GSO_TCPV4
        };
        let partial = pseudo_with_len(lay.pseudo_base(frame), self.len - lay.l4_off).fold();
        TcpHeader::new_unchecked(&mut frame[lay.l4_off..]).set_checksum(partial);
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: lay.hdr_len() as u16,
            gso_size: self.gso_size as u16,
            csum_start: lay.l4_off as u16,
            csum_offset: TcpHeader::<&[u8]>::CHECKSUM_OFFSET as u16,
        };
        emit(&hdr, frame);
    }
}

/// Receive-side coalescing of inner frames decapsulated from VXLAN, before they are
/// written to the TAP (with a virtio-net header, via `writev([hdr, frame])`).
#[derive(Debug)]
pub struct Coalescer {
    slots: Vec<Slot>,
    clock: u64,
    stats: CoalesceStats,
    /// The TAP's MTU, when known: longer TCP frames are handed on as GSO.
    tap_mtu: Option<usize>,
    /// Room to fix the checksum field of an oversized frame (allocated with the MTU).
    scratch: Box<[u8]>,
}

impl Coalescer {
    /// A coalescer with `max_flows` slots of [`SLOT_BUF_LEN`] bytes each. The only
    /// allocation this type ever makes. With zero slots every frame passes through.
    pub fn new(max_flows: usize) -> Self {
        Coalescer {
            slots: (0..max_flows).map(|_| Slot::new()).collect(),
            clock: 0,
            stats: CoalesceStats::default(),
            tap_mtu: None,
            scratch: Box::default(),
        }
    }

    /// Tells the coalescer the TAP's MTU (the largest IP packet it carries uncut), so
    /// that longer TCP frames — a kernel sender's GSO frames that crossed a virtual
    /// underlay whole — go out as GSO frames instead of being dropped by the kernel.
    /// Allocates one more buffer of [`SLOT_BUF_LEN`] bytes.
    pub fn with_tap_mtu(mut self, mtu: usize) -> Self {
        self.tap_mtu = Some(mtu);
        self.scratch = vec![0u8; SLOT_BUF_LEN].into_boxed_slice();
        self
    }

    /// Offers one inner Ethernet frame. If it continues an open flow slot it is
    /// appended; otherwise the flow's slot (if any) is emitted first, then the frame
    /// either opens a slot (a mergeable TCP segment) or is emitted as is with
    /// [`VirtioNetHdr::NONE`].
    pub fn push(&mut self, frame: &[u8], emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        self.stats.frames_in += 1;
        let seg = match classify(frame, self.tap_mtu) {
            Class::Other(partial) => return self.pass(frame, partial, emit),
            Class::Unmergeable(key, partial) => {
                self.flush_flow(&key, emit);
                return self.pass(frame, partial, emit);
            }
            Class::BadChecksum(key) => {
                self.stats.bad_checksum += 1;
                self.flush_flow(&key, emit);
                return self.pass(frame, None, emit);
            }
            Class::Oversized {
                key,
                lay,
                hdr,
                partial,
            } => {
                self.flush_flow(&key, emit);
                self.stats.oversized += 1;
                self.stats.frames_out += 1;
                if partial {
                    self.stats.partial_checksum += 1;
                    return emit(&hdr, frame);
                }
                // A verified, finished checksum: NEEDS_CSUM wants the pseudo-header
                // sum in the field. `classify` saw frame.len() == lay.end.
                let Some(buf) = self.scratch.get_mut(..frame.len()) else {
                    return emit(&VirtioNetHdr::NONE, frame);
                };
                buf.copy_from_slice(frame);
                let sum = unsegmented::pseudo_sum(buf, &lay);
                TcpHeader::new_unchecked(&mut buf[lay.l4_off..]).set_checksum(sum);
                return emit(&hdr, buf);
            }
            Class::Candidate(seg) => seg,
        };
        if seg.partial.is_some() {
            self.stats.partial_checksum += 1;
        }
        if let Some(i) = self.find(&seg.key) {
            let slot = &mut self.slots[i];
            if slot.continues(frame, &seg) {
                slot.append(frame, &seg);
                self.stats.merged += 1;
                if slot.is_closed(&seg) {
                    slot.emit(&mut self.stats, emit);
                }
                return;
            }
            slot.emit(&mut self.stats, emit);
        }
        // A segment that ends a merge by itself would go out alone anyway.
        if seg.psh || frame.len() > SLOT_BUF_LEN {
            return self.pass_counted(frame, seg.partial, emit);
        }
        let Some(i) = self.free_slot(emit) else {
            return self.pass_counted(frame, seg.partial, emit);
        };
        self.clock += 1;
        self.slots[i].open(frame, &seg, self.clock);
    }

    /// Emits every open slot (call at the end of each receive batch).
    pub fn flush(&mut self, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        for slot in &mut self.slots {
            slot.emit(&mut self.stats, emit);
        }
    }

    pub fn stats(&self) -> CoalesceStats {
        self.stats
    }

    /// Number of slots currently holding a frame.
    pub fn open_flows(&self) -> usize {
        self.slots.iter().filter(|s| s.open).count()
    }

    /// Emits a frame that is not merged: as received, or — its checksum left partial
    /// by the sender — up to the end of its IP datagram, marked `NEEDS_CSUM`.
    fn pass(
        &mut self,
        frame: &[u8],
        partial: Option<PartialCsum>,
        emit: &mut impl FnMut(&VirtioNetHdr, &[u8]),
    ) {
        if partial.is_some() {
            self.stats.partial_checksum += 1;
        }
        self.pass_counted(frame, partial, emit);
    }

    /// [`Coalescer::pass`] for a frame whose partial checksum is already counted.
    fn pass_counted(
        &mut self,
        frame: &[u8],
        partial: Option<PartialCsum>,
        emit: &mut impl FnMut(&VirtioNetHdr, &[u8]),
    ) {
        self.stats.frames_out += 1;
        match partial {
            Some(p) => emit(&p.vnet_hdr(), &frame[..p.end]),
            None => emit(&VirtioNetHdr::NONE, frame),
        }
    }

    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.slots.iter().position(|s| s.open && s.key == *key)
    }

    fn flush_flow(&mut self, key: &FlowKey, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        if let Some(i) = self.find(key) {
            self.slots[i].emit(&mut self.stats, emit);
        }
    }

    /// A closed slot, or the oldest open one after emitting it; `None` with no slots.
    fn free_slot(&mut self, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) -> Option<usize> {
        if let Some(i) = self.slots.iter().position(|s| !s.open) {
            return Some(i);
        }
        let (i, _) = self.slots.iter().enumerate().min_by_key(|(_, s)| s.born)?;
        self.stats.evicted += 1;
        self.slots[i].emit(&mut self.stats, emit);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::offload::testutil::{
        complete_checksum, expand, oracle_tcp, payload, timestamps, Out, Tcp,
    };
    use crate::wire::ip::tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG};

    fn push_all(c: &mut Coalescer, frames: &[Vec<u8>]) -> Out {
        let mut out = Vec::new();
        let mut emit = |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec()));
        for f in frames {
            c.push(f, &mut emit);
        }
        out
    }

    fn run(c: &mut Coalescer, frames: &[Vec<u8>]) -> Out {
        let mut out = push_all(c, frames);
        c.flush(&mut |h: &VirtioNetHdr, f: &[u8]| out.push((*h, f.to_vec())));
        let s = c.stats();
        assert_eq!(s.frames_in, s.frames_out + s.merged, "{s:?}");
        out
    }

    /// `n` consecutive segments of `t`'s flow, payload sizes from `sizes`.
    fn segments(t: &Tcp, sizes: &[usize], salt: u8) -> Vec<Vec<u8>> {
        let mut seq = t.seq;
        let mut id = t.ip_id;
        sizes
            .iter()
            .map(|&n| {
                let f = Tcp {
                    seq,
                    ip_id: id,
                    ..t.clone()
                }
                .frame(&payload(n, salt.wrapping_add(seq as u8)));
                seq = seq.wrapping_add(n as u32);
                id = id.wrapping_add(1);
                f
            })
            .collect()
    }

    fn payload_of(frames: &[Vec<u8>]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| oracle_tcp(f).unwrap().payload)
            .collect()
    }

    /// Checks a merged output as the kernel will: header fields, then the checksum
    /// completed per the virtio header verifies; returns the completed frame.
    fn check_merged(h: &VirtioNetHdr, f: &[u8], first: &[u8], segs: usize) -> Vec<u8> {
        let first = oracle_tcp(first).unwrap();
        let v6 = first.v6;
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(usize::from(h.hdr_len), first.hdr_len);
        assert_eq!(usize::from(h.gso_size), first.payload.len());
        assert_eq!(usize::from(h.csum_start), if v6 { 54 } else { 34 });
        assert_eq!(h.csum_offset, 16);
        let data = f.len() - first.hdr_len;
        assert_eq!(data.div_ceil(first.payload.len()), segs);
        let mut done = f.to_vec();
        complete_checksum(h, &mut done);
        let p = oracle_tcp(&done).unwrap();
        assert_eq!(p.seq, first.seq);
        assert_eq!(p.ip_id, first.ip_id);
        done
    }

    /// Same addresses and ports (a frame of `b`'s flow).
    pub(crate) fn same_flow(a: &[u8], b: &[u8]) -> bool {
        let (Ok(la), Ok(lb)) = (Layout::parse(a), Layout::parse(b)) else {
            return false;
        };
        la.proto == lb.proto && FlowKey::of(a, &la) == FlowKey::of(b, &lb)
    }

    #[test]
    fn merges_in_order_segments_v4_and_v6() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            let segs = segments(&t, &[1398, 1398, 1398, 1398, 500], 1);
            let mut c = Coalescer::new(4);
            // The short last segment closes the slot: out before the flush.
            let out = push_all(&mut c, &segs);
            assert_eq!(out.len(), 1);
            let done = check_merged(&out[0].0, &out[0].1, &segs[0], 5);
            assert_eq!(oracle_tcp(&done).unwrap().payload, payload_of(&segs));
            assert_eq!(oracle_tcp(&done).unwrap().flags, ACK);
            let s = c.stats();
            assert_eq!(
                (s.frames_in, s.frames_out, s.merged, s.gso_frames_out),
                (5, 1, 4, 1)
            );
            assert_eq!(c.open_flows(), 0);
        }
    }

    #[test]
    fn psh_closes_and_stays_on_the_merged_header() {
        let t = Tcp::default();
        let mut segs = segments(&t, &[1000, 1000, 1000], 2);
        segs[2] = Tcp {
            seq: t.seq + 2000,
            ip_id: t.ip_id + 2,
            flags: ACK | PSH,
            ..t.clone()
        }
        .frame(&oracle_tcp(&segs[2]).unwrap().payload);
        let mut c = Coalescer::new(4);
        let out = push_all(&mut c, &segs);
        assert_eq!(out.len(), 1);
        let done = check_merged(&out[0].0, &out[0].1, &segs[0], 3);
        assert_eq!(oracle_tcp(&done).unwrap().flags, ACK | PSH);
        assert_eq!(oracle_tcp(&done).unwrap().payload, payload_of(&segs));
    }

    #[test]
    fn single_segment_is_emitted_unchanged() {
        let t = Tcp::default();
        let segs = segments(&t, &[1398], 3);
        let out = run(&mut Coalescer::new(4), &segs);
        assert_eq!(out, vec![(VirtioNetHdr::NONE, segs[0].clone())]);
        // A PSH segment alone, too (without waiting for the flush).
        let f = Tcp {
            flags: ACK | PSH,
            ..t
        }
        .frame(&payload(10, 3));
        let out = push_all(&mut Coalescer::new(4), std::slice::from_ref(&f));
        assert_eq!(out, vec![(VirtioNetHdr::NONE, f)]);
    }

    #[test]
    fn other_frames_pass_unchanged() {
        let t = Tcp::default();
        let frames = vec![
            crate::wire::testdata::INNER_ICMP_REQUEST.to_vec(),
            crate::wire::testdata::ARP_REQUEST.to_vec(),
            t.udp(&payload(100, 4), false),
            Tcp {
                v6: true,
                ..t.clone()
            }
            .udp(&payload(100, 4), false),
            vec![],
            vec![0xff; 13],
            vec![0x45; 200],
        ];
        let out = run(&mut Coalescer::new(4), &frames);
        let expect: Out = frames
            .iter()
            .map(|f| (VirtioNetHdr::NONE, f.clone()))
            .collect();
        assert_eq!(out, expect);
    }

    #[test]
    fn control_flags_flush_the_flow_and_pass() {
        for flag in [SYN, FIN, RST, URG, CWR, ECE, 0] {
            let t = Tcp::default();
            let segs = segments(&t, &[1398, 1398], 5);
            let ctl = Tcp {
                seq: t.seq + 2796,
                ip_id: t.ip_id + 2,
                flags: ACK | flag,
                ..t.clone()
            }
            .frame(&payload(1398, 5));
            let more = segments(
                &Tcp {
                    seq: t.seq + 3 * 1398,
                    ..t.clone()
                },
                &[1398, 1398],
                6,
            );
            let frames = [segs.clone(), vec![ctl.clone()], more.clone()].concat();
            let out = run(&mut Coalescer::new(4), &frames);
            if flag == 0 {
                // A plain ACK segment in the middle just continues the merge.
                assert_eq!(out.len(), 1);
                check_merged(&out[0].0, &out[0].1, &segs[0], 5);
                continue;
            }
            assert_eq!(out.len(), 3, "flag {flag:#x}");
            check_merged(&out[0].0, &out[0].1, &segs[0], 2);
            assert_eq!(out[1], (VirtioNetHdr::NONE, ctl));
            check_merged(&out[2].0, &out[2].1, &more[0], 2);
        }
    }

    #[test]
    fn zero_payload_and_padded_frames_pass() {
        let t = Tcp::default();
        let segs = segments(&t, &[1398, 1398], 7);
        let ack = Tcp {
            seq: t.seq + 2796,
            ..t.clone()
        }
        .frame(&[]);
        let mut padded = Tcp {
            seq: t.seq + 2796,
            ..t.clone()
        }
        .frame(&[1, 2]);
        padded.extend_from_slice(&[0; 6]);
        let out = run(
            &mut Coalescer::new(4),
            &[segs.clone(), vec![ack.clone(), padded.clone()]].concat(),
        );
        assert_eq!(out.len(), 3);
        check_merged(&out[0].0, &out[0].1, &segs[0], 2);
        assert_eq!(out[1], (VirtioNetHdr::NONE, ack));
        assert_eq!(out[2], (VirtioNetHdr::NONE, padded));
    }

    #[test]
    fn bad_checksums_pass_untouched_and_are_counted() {
        let t = Tcp::default();
        let mut segs = segments(&t, &[1398, 1398, 1398, 1398], 8);
        let n = segs[2].len();
        segs[2][n - 1] ^= 0x01; // payload corrupted
        segs[3][24] ^= 0x80; // ipv4 header checksum corrupted
        let mut c = Coalescer::new(4);
        let out = run(&mut c, &segs);
        assert_eq!(c.stats().bad_checksum, 2);
        assert_eq!(out.len(), 3);
        check_merged(&out[0].0, &out[0].1, &segs[0], 2);
        assert_eq!(out[1], (VirtioNetHdr::NONE, segs[2].clone()));
        assert_eq!(out[2], (VirtioNetHdr::NONE, segs[3].clone()));
    }

    #[test]
    fn gaps_and_header_changes_start_a_new_slot() {
        let t = Tcp::default();
        let base = |seq: u32, id: u16| Tcp {
            seq,
            ip_id: id,
            ..t.clone()
        };
        let p = payload(1000, 9);
        let changes: Vec<(&str, Tcp)> = vec![
            ("gap", base(t.seq + 2000, 1)),
            (
                "ack",
                Tcp {
                    ack: 9,
                    ..base(t.seq + 1000, 1)
                },
            ),
            (
                "window",
                Tcp {
                    window: 9,
                    ..base(t.seq + 1000, 1)
                },
            ),
            (
                "options",
                Tcp {
                    options: timestamps(9, 9),
                    ..base(t.seq + 1000, 1)
                },
            ),
            (
                "no options",
                Tcp {
                    options: vec![],
                    ..base(t.seq + 1000, 1)
                },
            ),
            (
                "tos",
                Tcp {
                    tos: 4,
                    ..base(t.seq + 1000, 1)
                },
            ),
            (
                "ttl",
                Tcp {
                    ttl: 9,
                    ..base(t.seq + 1000, 1)
                },
            ),
            (
                "df",
                Tcp {
                    df: false,
                    ..base(t.seq + 1000, 1)
                },
            ),
            ("retransmit", base(t.seq, 1)),
        ];
        for (what, second) in changes {
            let first = base(t.seq, 0).frame(&p);
            let second = second.frame(&p);
            let out = run(&mut Coalescer::new(4), &[first.clone(), second.clone()]);
            let expect = vec![(VirtioNetHdr::NONE, first), (VirtioNetHdr::NONE, second)];
            assert_eq!(out, expect, "{what}");
        }
        // v6: flow label and hop limit.
        let t6 = Tcp {
            v6: true,
            ..t.clone()
        };
        for second in [
            Tcp {
                flow_label: 1,
                seq: t.seq + 1000,
                ..t6.clone()
            },
            Tcp {
                ttl: 1,
                seq: t.seq + 1000,
                ..t6.clone()
            },
        ] {
            let out = run(&mut Coalescer::new(4), &[t6.frame(&p), second.frame(&p)]);
            assert_eq!(out.len(), 2);
            assert!(out.iter().all(|(h, _)| *h == VirtioNetHdr::NONE));
        }
    }

    #[test]
    fn ipv4_id_must_increment_unless_df() {
        let t = Tcp {
            df: false,
            ..Tcp::default()
        };
        let p = payload(1000, 10);
        let fr = |seq_off: u32, id: u16, df: bool| {
            Tcp {
                seq: t.seq + seq_off,
                ip_id: id,
                df,
                ..t.clone()
            }
            .frame(&p)
        };
        // DF clear, incrementing (and wrapping): merged.
        let out = run(
            &mut Coalescer::new(2),
            &[fr(0, 0xffff, false), fr(1000, 0, false), fr(2000, 1, false)],
        );
        assert_eq!(out.len(), 1);
        check_merged(&out[0].0, &out[0].1, &fr(0, 0xffff, false), 3);
        // DF clear, fixed id: not merged.
        let out = run(
            &mut Coalescer::new(2),
            &[fr(0, 5, false), fr(1000, 5, false)],
        );
        assert_eq!(out.len(), 2);
        // DF set, any ids: merged.
        let out = run(
            &mut Coalescer::new(2),
            &[fr(0, 5, true), fr(1000, 5, true), fr(2000, 77, true)],
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn sizes_larger_after_smaller_and_the_64k_limit() {
        let t = Tcp::default();
        // A bigger segment after the first: new slot.
        let segs = segments(&t, &[1000, 1398], 11);
        let out = run(&mut Coalescer::new(2), &segs);
        assert_eq!(out.len(), 2);
        // 50 full segments: the first frame stops below 65,535 bytes of IP length.
        let segs = segments(&t, &[1398; 50], 12);
        let out = run(&mut Coalescer::new(2), &segs);
        assert_eq!(out.len(), 2);
        let ip_len = |f: &[u8]| usize::from(u16::from_be_bytes([f[16], f[17]]));
        assert_eq!(ip_len(&out[0].1), 20 + 32 + 46 * 1398);
        assert_eq!(out[0].1.len(), 14 + ip_len(&out[0].1));
        let a = check_merged(&out[0].0, &out[0].1, &segs[0], 46);
        let b = check_merged(&out[1].0, &out[1].1, &segs[46], 4);
        let joined = [
            oracle_tcp(&a).unwrap().payload,
            oracle_tcp(&b).unwrap().payload,
        ]
        .concat();
        assert_eq!(joined, payload_of(&segs));
    }

    #[test]
    fn interleaved_flows_and_a_full_table() {
        let a = Tcp::default();
        let b = Tcp {
            src_port: 40_001,
            ..Tcp::default()
        };
        let c6 = Tcp {
            v6: true,
            ..Tcp::default()
        };
        let sa = segments(&a, &[1000; 4], 13);
        let sb = segments(&b, &[1000; 4], 14);
        let sc = segments(&c6, &[1000; 4], 15);
        let mut frames = Vec::new();
        for i in 0..4 {
            frames.extend([sa[i].clone(), sb[i].clone(), sc[i].clone()]);
        }
        let out = run(&mut Coalescer::new(3), &frames);
        assert_eq!(out.len(), 3);
        for (o, s) in out.iter().zip([&sa, &sb, &sc]) {
            let done = check_merged(&o.0, &o.1, &s[0], 4);
            assert_eq!(oracle_tcp(&done).unwrap().payload, payload_of(s));
        }
        // Two slots for three flows: the oldest is evicted each time.
        let mut c = Coalescer::new(2);
        let out = run(&mut c, &frames);
        assert!(c.stats().evicted > 0);
        assert_eq!(out.len() as u64, c.stats().frames_out);
        // Nothing lost, per-flow order kept: re-segmenting the outputs gives back
        // each flow's input frames, in order.
        let expanded = expand(&out);
        for s in [&sa, &sb, &sc] {
            let mine: Vec<Vec<u8>> = expanded
                .iter()
                .filter(|f| same_flow(f, &s[0]))
                .cloned()
                .collect();
            assert_eq!(&mine, s);
        }
        // Zero slots: everything passes.
        let out = run(&mut Coalescer::new(0), &frames);
        let expect: Out = frames
            .iter()
            .map(|f| (VirtioNetHdr::NONE, f.clone()))
            .collect();
        assert_eq!(out, expect);
    }

    /// `segments`, with the checksum left partial as a kernel sender leaves it.
    fn partial_segments(t: &Tcp, sizes: &[usize], salt: u8) -> Vec<Vec<u8>> {
        segments(t, sizes, salt)
            .iter()
            .map(|f| {
                let p = oracle_tcp(f).unwrap();
                Tcp {
                    seq: p.seq,
                    ip_id: p.ip_id,
                    flags: p.flags,
                    ..t.clone()
                }
                .partial_frame(&p.payload)
            })
            .collect()
    }

    #[test]
    fn partial_checksums_merge_like_verified_ones() {
        for v6 in [false, true] {
            let t = Tcp {
                v6,
                ..Tcp::default()
            };
            let full = segments(&t, &[1398, 1398, 1398, 700], 21);
            let part = partial_segments(&t, &[1398, 1398, 1398, 700], 21);
            assert!(
                part.iter().all(|f| oracle_tcp(f).is_err()),
                "really partial"
            );
            // All partial, and partial mixed with finished ones (a sender whose
            // offloads changed): one merged frame either way, the same bytes once the
            // kernel completes the checksum.
            let mixed = vec![
                part[0].clone(),
                full[1].clone(),
                part[2].clone(),
                full[3].clone(),
            ];
            for input in [&part, &mixed] {
                let mut c = Coalescer::new(4);
                let out = run(&mut c, input);
                assert_eq!(out.len(), 1);
                let done = check_merged(&out[0].0, &out[0].1, &full[0], 4);
                assert_eq!(oracle_tcp(&done).unwrap().payload, payload_of(&full));
                assert_eq!(c.stats().bad_checksum, 0);
                let partial_in = input.iter().filter(|f| oracle_tcp(f).is_err()).count();
                assert_eq!(c.stats().partial_checksum, partial_in as u64);
            }
        }
    }

    #[test]
    fn a_lone_partial_segment_goes_out_marked_needs_csum() {
        let t = Tcp::default();
        let full = segments(&t, &[1398], 22);
        let part = partial_segments(&t, &[1398], 22);
        let mut c = Coalescer::new(4);
        let out = run(&mut c, &part);
        assert_eq!(out.len(), 1);
        let (h, f) = &out[0];
        assert_eq!(f, &part[0], "bytes unchanged");
        assert_eq!(
            *h,
            super::super::partial::detect(&part[0]).unwrap().vnet_hdr()
        );
        assert_eq!(
            (h.flags, h.gso_type, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, 0, 34, 16)
        );
        let mut done = f.clone();
        complete_checksum(h, &mut done);
        assert_eq!(done, full[0]);
        assert_eq!(c.stats().partial_checksum, 1);
    }

    #[test]
    fn partial_frames_that_never_merge_pass_marked() {
        let t = Tcp::default();
        let syn = Tcp {
            flags: SYN,
            options: vec![],
            ..t.clone()
        };
        let ack = t.clone();
        let psh = Tcp {
            flags: ACK | PSH,
            ..t.clone()
        };
        let frames = vec![
            syn.partial_frame(&[]),
            ack.partial_frame(&[]),
            psh.partial_frame(&payload(10, 23)),
            t.udp(&payload(100, 23), true),
            Tcp {
                v6: true,
                ..t.clone()
            }
            .udp(&payload(100, 23), true),
        ];
        let finished = [
            syn.frame(&[]),
            ack.frame(&[]),
            psh.frame(&payload(10, 23)),
            t.udp(&payload(100, 23), false),
            Tcp {
                v6: true,
                ..t.clone()
            }
            .udp(&payload(100, 23), false),
        ];
        let mut c = Coalescer::new(4);
        let out = run(&mut c, &frames);
        assert_eq!(out.len(), frames.len());
        for ((h, f), want) in out.iter().zip(&finished) {
            assert!(h.needs_csum() && h.gso_type == 0, "{h:?}");
            let mut done = f.clone();
            complete_checksum(h, &mut done);
            assert_eq!(&done, want);
        }
        assert_eq!(c.stats().partial_checksum, frames.len() as u64);
        // Padded: handed on without the padding, which the checksum does not cover.
        let mut padded = ack.partial_frame(&[1, 2]);
        padded.extend_from_slice(&[0; 6]);
        let out = run(&mut Coalescer::new(4), std::slice::from_ref(&padded));
        assert_eq!(out[0].1, &padded[..padded.len() - 6]);
        assert!(out[0].0.needs_csum());
    }

    #[test]
    fn wrong_checksums_are_not_taken_for_partial() {
        let t = Tcp::default();
        let mut part = partial_segments(&t, &[1398, 1398, 1398], 24);
        part[1][34 + 17] ^= 0x01; // neither the pseudo-header sum nor a correct one
        let mut full = segments(&t, &[1398], 25).remove(0);
        full[34 + 16] ^= 0x80;
        let mut c = Coalescer::new(4);
        let out = run(&mut c, &[part.clone(), vec![full.clone()]].concat());
        assert_eq!(c.stats().bad_checksum, 2);
        assert_eq!(c.stats().partial_checksum, 2);
        assert_eq!(out.len(), 4);
        assert_eq!(out[1], (VirtioNetHdr::NONE, part[1].clone()));
        assert_eq!(out[3], (VirtioNetHdr::NONE, full));
    }
}
