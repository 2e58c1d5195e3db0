//! Top flows: which inner 5-tuples carry the overlay's bytes, in fixed memory.
//!
//! Three pure parts, no I/O and no clock (every entry point takes `now_ms`):
//! - [`FlowKey::parse`] reads the inner 5-tuple (protocol, addresses, TCP/UDP ports)
//!   of an Ethernet frame; IPv4 and IPv6, ports 0 for other protocols and fragments.
//! - [`Sampler`] picks frames by bytes: on average one per `mean` bytes, at random
//!   intervals (uniform in `mean/2 .. 3·mean/2`, so no periodic traffic pattern can
//!   hide a flow). A picked frame stands for every byte and datagram since the
//!   previous pick ([`Weight`]), so the weights of all samples add up to the traffic
//!   exactly (up to the last unfinished interval), and a flow's share is estimated in
//!   proportion to its bytes. A frame larger than the interval is always picked.
//! - [`FlowTable`] keeps at most `capacity` flows — the "space-saving" heavy-hitter
//!   algorithm (Metwally, Agrawal, El Abbadi, *Efficient computation of frequent and
//!   top-k elements in data streams*, ICDT 2005): a sample of a known flow adds to it;
//!   a new flow takes a free slot, else the slot of a flow idle for `idle_ms`
//!   (starting from zero: that flow has ended), else the slot of the flow with the
//!   fewest bytes, inheriting its bytes as its possible over-count (`error_bytes`).
//!   Every flow with more than 1/`capacity` of the sampled bytes (since the idle
//!   flows went) is in the table, and its bytes are over-counted by at most
//!   `error_bytes`. Memory is allocated once, at [`FlowTable::new`]: a flood of
//!   distinct 5-tuples replaces entries, it never grows the table.
//!
//! The engine samples on its threads into a small buffer per thread and hands the
//! samples to the shared table ([`SharedFlows`]) once per batch, under a mutex that
//! readers hold only to copy the entries out.

use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::FxHasher;

use crate::wire::ip::{PROTO_TCP, PROTO_UDP};
use crate::wire::{EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet};

/// Flows the agent's table holds (≈ 100 bytes each).
pub const DEFAULT_CAPACITY: usize = 1024;
/// Mean bytes between two samples.
pub const DEFAULT_SAMPLE_BYTES: u64 = 128 * 1024;
/// A flow with no sample for this long gives its slot to a new flow first.
pub const DEFAULT_IDLE_MS: u64 = 60_000;
/// Samples a thread buffers before it hands them to the shared table.
pub const SAMPLE_BUFFER: usize = 64;

/// The inner 5-tuple of a frame crossing the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6...).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP/UDP ports; 0 for other protocols and IPv4 fragments.
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    /// The 5-tuple of an Ethernet frame, or `None` if it is not IPv4/IPv6 or does not
    /// parse. IPv6 extension headers are not walked: the protocol is the first next
    /// header, ports only when that is TCP or UDP.
    pub fn parse(frame: &[u8]) -> Option<FlowKey> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let (proto, src, dst, (src_port, dst_port)) = match eth.ethertype() {
            EtherType::IPV4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
                let ports = if ip.is_fragment() {
                    (0, 0)
                } else {
                    ports(ip.protocol(), ip.payload())
                };
                (
                    ip.protocol(),
                    IpAddr::V4(ip.src()),
                    IpAddr::V4(ip.dst()),
                    ports,
                )
            }
            EtherType::IPV6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
                let nh = ip.next_header();
                let ports = ports(nh, ip.payload());
                (nh, IpAddr::V6(ip.src()), IpAddr::V6(ip.dst()), ports)
            }
            _ => return None,
        };
        Some(FlowKey {
            proto,
            src,
            dst,
            src_port,
            dst_port,
        })
    }
}

/// TCP/UDP source and destination ports at the start of `l4`, else zeros.
fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    match l4 {
        [a, b, c, d, ..] if proto == PROTO_TCP || proto == PROTO_UDP => {
            (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
        }
        _ => (0, 0),
    }
}

/// Which way a flow crosses the overlay, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a local pod to a peer (TAP → VXLAN).
    ToPeer,
    /// From a peer to a local pod (VXLAN → TAP).
    FromPeer,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToPeer => "tx",
            Direction::FromPeer => "rx",
        }
    }
}

/// What one sample stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Weight {
    /// Inner frame bytes since the previous sample, this frame's included.
    pub bytes: u64,
    /// Datagrams since the previous sample, this frame's included.
    pub packets: u64,
}

/// Picks one frame per `mean` bytes on average; see the module documentation.
#[derive(Debug, Clone)]
pub struct Sampler {
    mean: u64,
    /// Bytes until the next pick.
    left: u64,
    since: Weight,
    rng: u64,
}

impl Sampler {
    /// `mean` bytes between samples (at least 2); `seed` makes the intervals
    /// reproducible in tests.
    pub fn new(mean: u64, seed: u64) -> Sampler {
        let mut s = Sampler {
            mean: mean.max(2),
            left: 0,
            since: Weight::default(),
            rng: seed,
        };
        s.left = s.interval();
        s
    }

    fn interval(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        self.mean / 2 + z % self.mean
    }

    /// Accounts a frame of `bytes` that became `packets` datagrams; returns the
    /// weight when this frame is picked.
    #[inline]
    pub fn offer(&mut self, bytes: u64, packets: u64) -> Option<Weight> {
        self.since.bytes += bytes;
        self.since.packets += packets;
        if bytes < self.left {
            self.left -= bytes;
            return None;
        }
        self.left = self.interval();
        Some(std::mem::take(&mut self.since))
    }
}

/// One picked frame: its flow, direction, peer and weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub key: FlowKey,
    pub dir: Direction,
    /// The peer's PublicIP (where it went to, or came from).
    pub peer: Ipv4Addr,
    pub weight: Weight,
}

/// One flow as the table knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowStat {
    pub key: FlowKey,
    pub dir: Direction,
    pub peer: Ipv4Addr,
    /// Estimated inner frame bytes (at most `error_bytes` too many).
    pub bytes: u64,
    /// Estimated datagrams.
    pub packets: u64,
    /// How much of `bytes` may belong to flows this one replaced (0: exact estimate).
    pub error_bytes: u64,
    /// First and last sample (Unix ms).
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

const EMPTY: u32 = u32::MAX;

/// At most `capacity` flows; see the module documentation.
#[derive(Debug, Clone)]
pub struct FlowTable {
    entries: Vec<FlowStat>,
    /// Open addressing, linear probing: entry index or [`EMPTY`]. Twice the capacity
    /// rounded up to a power of two, so at most half full.
    index: Box<[u32]>,
    capacity: usize,
    idle_ms: u64,
    seed: u64,
}

impl FlowTable {
    /// A table of `capacity` flows (at least 1, at most 2²⁰), allocated now and never
    /// again. `seed` keys the hash (pass a random one: 5-tuples come from the network).
    pub fn new(capacity: usize, idle_ms: u64, seed: u64) -> FlowTable {
        let capacity = capacity.clamp(1, 1 << 20);
        let slots = (capacity * 2).next_power_of_two();
        FlowTable {
            entries: Vec::with_capacity(capacity),
            index: vec![EMPTY; slots].into_boxed_slice(),
            capacity,
            idle_ms,
            seed,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the table holds on the heap, fixed at creation.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<FlowStat>()
            + self.index.len() * std::mem::size_of::<u32>()
    }

    fn hash(&self, key: &FlowKey, dir: Direction) -> usize {
        let mut h = FxHasher::default();
        h.write_u64(self.seed);
        std::hash::Hash::hash(key, &mut h);
        h.write_u8(dir as u8);
        let v = h.finish();
        // Fx leaves the low bits weak: fold the high ones in.
        (v ^ (v >> 29) ^ (v >> 47)) as usize
    }

    /// The index slot holding `key`, or the empty slot where it would go.
    fn probe(&self, key: &FlowKey, dir: Direction) -> (usize, Option<usize>) {
        let mask = self.index.len() - 1;
        let mut i = self.hash(key, dir) & mask;
        loop {
            match self.index[i] {
                EMPTY => return (i, None),
                e => {
                    let f = &self.entries[e as usize];
                    if f.key == *key && f.dir == dir {
                        return (i, Some(e as usize));
                    }
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes index slot `i` and closes the gap (backward-shift deletion: no
    /// tombstones, so probes stay short however many flows come and go).
    fn unindex(&mut self, mut i: usize) {
        let mask = self.index.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.index[j];
            if e == EMPTY {
                break;
            }
            let f = &self.entries[e as usize];
            let home = self.hash(&f.key, f.dir) & mask;
            // Move j's entry back to i unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.index[i] = e;
                i = j;
            }
        }
        self.index[i] = EMPTY;
    }

    /// Adds one sample, seen at `now_ms`.
    pub fn record(&mut self, s: &Sample, now_ms: u64) {
        let (slot, found) = self.probe(&s.key, s.dir);
        if let Some(e) = found {
            let f = &mut self.entries[e];
            f.bytes = f.bytes.saturating_add(s.weight.bytes);
            f.packets = f.packets.saturating_add(s.weight.packets);
            f.peer = s.peer;
            f.last_seen_ms = f.last_seen_ms.max(now_ms);
            return;
        }
        let fresh = FlowStat {
            key: s.key,
            dir: s.dir,
            peer: s.peer,
            bytes: s.weight.bytes,
            packets: s.weight.packets,
            error_bytes: 0,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
        };
        if self.entries.len() < self.capacity {
            self.index[slot] = self.entries.len() as u32;
            self.entries.push(fresh);
            return;
        }
        // Full: an idle flow's slot, else the smallest flow's.
        let mut victim = 0;
        let mut idle = false;
        for (i, f) in self.entries.iter().enumerate() {
            if now_ms.saturating_sub(f.last_seen_ms) >= self.idle_ms {
                victim = i;
                idle = true;
                break;
            }
            if f.bytes < self.entries[victim].bytes {
                victim = i;
            }
        }
        let old = self.entries[victim];
        let (vslot, _) = self.probe(&old.key, old.dir);
        self.unindex(vslot);
        let new = if idle {
            fresh
        } else {
            FlowStat {
                bytes: old.bytes.saturating_add(fresh.bytes),
                packets: old.packets.saturating_add(fresh.packets),
                error_bytes: old.bytes,
                ..fresh
            }
        };
        self.entries[victim] = new;
        // The gap closed: find the new flow's place again.
        let (slot, _) = self.probe(&new.key, new.dir);
        self.index[slot] = victim as u32;
    }

    /// The flow for `key` and `dir`, if the table holds it.
    pub fn get(&self, key: &FlowKey, dir: Direction) -> Option<&FlowStat> {
        self.probe(key, dir).1.map(|e| &self.entries[e])
    }

    /// Up to `n` flows, most bytes first.
    pub fn top(&self, n: usize) -> Vec<FlowStat> {
        let mut v = self.entries.clone();
        by_bytes(&mut v);
        v.truncate(n);
        v
    }
}

/// A thread's sampler and its buffer of samples not yet in the shared table.
#[derive(Debug)]
pub struct FlowSampler {
    sampler: Sampler,
    buf: Vec<Sample>,
    /// Picked frames whose 5-tuple did not parse (not IP): their weight is lost.
    pub unparsed: u64,
}

impl FlowSampler {
    pub fn new(mean: u64, seed: u64) -> FlowSampler {
        FlowSampler {
            sampler: Sampler::new(mean, seed),
            buf: Vec::with_capacity(SAMPLE_BUFFER),
            unparsed: 0,
        }
    }

    /// Offers `frame` (the inner Ethernet frame; `bytes` and `packets` as it crosses
    /// the underlay). Returns true when the buffer is full: hand it over now.
    #[inline]
    pub fn offer(
        &mut self,
        frame: &[u8],
        bytes: u64,
        packets: u64,
        dir: Direction,
        peer: Ipv4Addr,
    ) -> bool {
        let Some(weight) = self.sampler.offer(bytes, packets) else {
            return false;
        };
        match FlowKey::parse(frame) {
            Some(key) => self.buf.push(Sample {
                key,
                dir,
                peer,
                weight,
            }),
            None => self.unparsed += 1,
        }
        self.buf.len() >= SAMPLE_BUFFER
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The agent's table, shared by the engine threads (writers, once per batch) and
/// the readers (`/v1/flows`).
#[derive(Debug)]
pub struct SharedFlows {
    table: Mutex<FlowTable>,
    sample_bytes: u64,
    samples: AtomicU64,
}

impl Default for SharedFlows {
    fn default() -> Self {
        SharedFlows::new(
            DEFAULT_CAPACITY,
            DEFAULT_SAMPLE_BYTES,
            DEFAULT_IDLE_MS,
            random_seed(),
        )
    }
}

/// A random seed from std's per-process hash keys.
pub fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Most bytes first; among equals, the older flow first.
fn by_bytes(v: &mut [FlowStat]) {
    v.sort_unstable_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.first_seen_ms.cmp(&b.first_seen_ms))
    });
}

impl SharedFlows {
    pub fn new(capacity: usize, sample_bytes: u64, idle_ms: u64, seed: u64) -> SharedFlows {
        SharedFlows {
            table: Mutex::new(FlowTable::new(capacity, idle_ms, seed)),
            sample_bytes: sample_bytes.max(2),
            samples: AtomicU64::new(0),
        }
    }

    /// A sampler for one engine thread (`seed` distinct per thread).
    pub fn sampler(&self, seed: u64) -> FlowSampler {
        FlowSampler::new(self.sample_bytes, seed)
    }

    /// Mean bytes between samples.
    pub fn sample_bytes(&self) -> u64 {
        self.sample_bytes
    }

    /// Samples taken so far.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// Moves `s`'s buffered samples into the table, stamped `now_ms`.
    pub fn absorb(&self, s: &mut FlowSampler, now_ms: u64) {
        if s.buf.is_empty() {
            return;
        }
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for x in &s.buf {
            t.record(x, now_ms);
        }
        drop(t);
        self.samples
            .fetch_add(s.buf.len() as u64, Ordering::Relaxed);
        s.buf.clear();
    }

    /// Up to `n` flows, most bytes first, and the table's capacity.
    pub fn top(&self, n: usize) -> (Vec<FlowStat>, usize) {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let cap = t.capacity();
        let mut v = t.entries.clone();
        drop(t);
        by_bytes(&mut v);
        v.truncate(n);
        (v, cap)
    }

    /// The table's heap bytes (fixed).
    pub fn memory_bytes(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory_bytes()
    }
}

#[cfg(test)]
mod tests;
