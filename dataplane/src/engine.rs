//! The hot path: one thread per TAP queue for egress (TAP → UDP) and one thread for
//! ingress (UDP → TAP). No async runtime, no lock and no allocation per packet.
//!
//! Egress reads frames from the TAP until it would block, segments large ones
//! ([`offload::tso`]), prefixes each datagram with the VXLAN header into one batch
//! buffer, and sends the batch with as few `sendmmsg`+GSO calls as the shape allows.
//! Ingress reads up to [`RX_MESSAGES`] GRO messages per `recvmmsg`, checks each
//! datagram ([`verdict::classify_ingress`]), merges in-order TCP segments
//! ([`offload::gro`]) and writes the result to the TAP with one `writev` per frame.
//!
//! The forwarding table is re-read from the [`SharedTable`] at least every
//! [`TABLE_RELOAD_EVERY`] packets and whenever a thread goes idle, so control-plane
//! changes take effect without stalling traffic. Counters are published per batch.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::counters::{Counters, DropReason, LocalCounts};
use crate::fib::SharedTable;
use crate::offload::{self, Coalescer};
use crate::sys::udp::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::sys::{wait_readable, RecvBatch, SendEntry, Tap, UdpRx, UdpTx};
use crate::verdict::{classify_egress, classify_ingress, Egress, Ingress};
use crate::wire::{VirtioNetHdr, VxlanHeader};

/// GRO messages read per `recvmmsg` (each up to 64 KiB).
pub const RX_MESSAGES: usize = 8;
/// Packets between two reloads of the forwarding table under continuous load.
pub const TABLE_RELOAD_EVERY: u32 = 256;
/// Egress batch buffer: several 64 KiB bursts per flush.
const TX_BUFFER: usize = 512 * 1024;
/// Most send entries per flush.
const TX_ENTRIES: usize = 512;
/// How long an idle thread sleeps in poll(2) before re-checking the stop flag.
const IDLE_POLL_MS: i32 = 100;
/// Flows the receive coalescer tracks at once.
const GRO_FLOWS: usize = 8;

/// Offload modes in force, for logs and metrics.
#[derive(Debug)]
pub struct EngineStatus {
    pub tap: crate::sys::TapOffloads,
    pub udp_gro: bool,
    /// Cleared if the kernel refuses UDP GSO at send time.
    pub udp_gso: AtomicBool,
    pub tx_sockets: usize,
    pub tx_source_ports: Vec<u16>,
}

/// What the engine runs on.
#[derive(Debug)]
pub struct EngineConfig {
    /// One or more queues of the TAP (one egress thread each; ingress writes to the first).
    pub tap: Vec<Tap>,
    pub udp_tx: UdpTx,
    pub udp_rx: UdpRx,
    pub table: SharedTable,
    pub counters: Arc<Counters>,
}

/// The running threads. Dropping it stops them too.
#[derive(Debug)]
pub struct Engine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    status: Arc<EngineStatus>,
}

impl Engine {
    pub fn start(cfg: EngineConfig) -> io::Result<Engine> {
        let EngineConfig {
            tap,
            udp_tx,
            udp_rx,
            table,
            counters,
        } = cfg;
        let Some(first) = tap.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no TAP queue"));
        };
        let status = Arc::new(EngineStatus {
            tap: first.offloads(),
            udp_gro: udp_rx.gro(),
            udp_gso: AtomicBool::new(udp_tx.gso()),
            tx_sockets: udp_tx.socket_count(),
            tx_source_ports: udp_tx.local_ports(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let taps: Vec<Arc<Tap>> = tap.into_iter().map(Arc::new).collect();
        let mut threads = Vec::new();

        // One egress thread per queue, each with its own handles on the same sockets.
        for (i, q) in taps.iter().enumerate() {
            let w = EgressWorker {
                tap: Arc::clone(q),
                udp: udp_tx.try_clone()?,
                table: table.clone(),
                counters: Arc::clone(&counters),
                stop: Arc::clone(&stop),
                status: Arc::clone(&status),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("vxmesh-tx{i}"))
                    .spawn(move || w.run())?,
            );
        }
        let w = IngressWorker {
            tap: Arc::clone(&taps[0]),
            udp: udp_rx,
            table,
            counters,
            stop: Arc::clone(&stop),
        };
        threads.push(
            std::thread::Builder::new()
                .name("vxmesh-rx0".into())
                .spawn(move || w.run())?,
        );
        Ok(Engine {
            stop,
            threads,
            status,
        })
    }

    pub fn status(&self) -> &Arc<EngineStatus> {
        &self.status
    }

    /// Stops the threads and waits for them (at most about one idle poll interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Logs an I/O error at most once per interval, with how many were suppressed.
struct RateLimitedLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(what: &'static str) -> Self {
        RateLimitedLog {
            what,
            last: None,
            suppressed: 0,
        }
    }

    fn error(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "{}", self.what);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Sleeps until `fd` is readable (or the idle interval ends, to see the stop flag).
fn idle(fd: std::os::fd::BorrowedFd<'_>, log: &mut RateLimitedLog) {
    if let Err(e) = wait_readable(fd, IDLE_POLL_MS) {
        back_off(&e, log);
    }
}

/// After an unexpected I/O error: log (rate-limited) and pause, so a broken fd
/// cannot spin a core.
fn back_off(e: &io::Error, log: &mut RateLimitedLog) {
    log.error(e);
    std::thread::sleep(Duration::from_millis(IDLE_POLL_MS as u64));
}

struct EgressWorker {
    tap: Arc<Tap>,
    udp: UdpTx,
    table: SharedTable,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    status: Arc<EngineStatus>,
}

/// The egress batch: datagrams laid out back to back, and how to send them.
struct TxBatch {
    buf: Vec<u8>,
    used: usize,
    entries: Vec<SendEntry>,
}

impl TxBatch {
    /// Appends `segs` (just written at `used`) as send entries, merging a single
    /// datagram into the previous entry when it continues an equal-stride GSO run
    /// to the same destination from the same socket.
    fn push(&mut self, segs: offload::Segments, dst: SocketAddrV4, socket: usize, gso: bool) {
        let base = self.used;
        if segs.count == 1 && gso {
            if let Some(last) = self.entries.last_mut() {
                if last.dst == dst
                    && last.socket == socket
                    && last.offset + last.len == base
                    && last.len % last.stride == 0
                    && segs.len <= last.stride
                    && last.datagrams() < GSO_MAX_SEGMENTS
                    && last.len + segs.len <= GSO_MAX_BYTES
                {
                    last.len += segs.len;
                    self.used += segs.len;
                    return;
                }
            }
        }
        if gso {
            for r in segs.batches(GSO_MAX_SEGMENTS, GSO_MAX_BYTES) {
                self.entries.push(SendEntry {
                    dst,
                    offset: base + r.start,
                    len: r.len(),
                    stride: segs.stride.max(1),
                    socket,
                });
            }
        } else {
            for i in 0..segs.count {
                if let Some(r) = segs.datagram(i) {
                    self.entries.push(SendEntry {
                        dst,
                        offset: base + r.start,
                        len: r.len(),
                        stride: r.len(),
                        socket,
                    });
                }
            }
        }
        self.used += segs.len;
    }
}

impl EgressWorker {
    fn run(mut self) {
        let vnet = self.tap.offloads().vnet_hdr;
        let hdr_len = if vnet { VirtioNetHdr::LEN } else { 0 };
        let mut rbuf = vec![0u8; hdr_len + 65_536 + 256];
        let mut batch = TxBatch {
            buf: vec![0u8; TX_BUFFER],
            used: 0,
            entries: Vec::with_capacity(TX_ENTRIES),
        };
        let mut counts = LocalCounts::default();
        let mut table = self.table.load();
        let mut vxlan = VxlanHeader {
            vni: table.local().vni,
        }
        .to_bytes();
        let mut since_reload = 0u32;
        let mut log = RateLimitedLog::new("TAP read failed");
        let nsock = self.udp.socket_count().max(1);

        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.tap.read(&mut rbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush(&mut batch, &mut counts);
                    self.counters.publish(&mut counts);
                    table = self.table.load();
                    vxlan = VxlanHeader {
                        vni: table.local().vni,
                    }
                    .to_bytes();
                    since_reload = 0;
                    idle(self.tap.as_fd(), &mut log);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    back_off(&e, &mut log);
                    continue;
                }
            };
            counts.tap_syscalls += 1;
            counts.tap_frames_read += 1;
            since_reload += 1;
            if since_reload >= TABLE_RELOAD_EVERY {
                table = self.table.load();
                since_reload = 0;
            }
            let (vh, frame) = if vnet {
                match VirtioNetHdr::parse(&rbuf[..n]) {
                    Ok(vh) => (vh, &rbuf[VirtioNetHdr::LEN..n]),
                    Err(_) => {
                        counts.drop(DropReason::EgressMalformed);
                        continue;
                    }
                }
            } else {
                (VirtioNetHdr::NONE, &rbuf[..n])
            };
            counts.tap_bytes_read += frame.len() as u64;
            match classify_egress(frame, &table) {
                Egress::Forward { peer, flow_hash } => {
                    let need = offload::max_output_len(&vh, frame.len(), VxlanHeader::LEN);
                    if batch.used + need > batch.buf.len() || batch.entries.len() + 64 > TX_ENTRIES
                    {
                        self.flush(&mut batch, &mut counts);
                    }
                    if need > batch.buf.len() {
                        counts.drop(DropReason::EgressMalformed);
                        continue;
                    }
                    match offload::segment(&vh, frame, &vxlan, &mut batch.buf[batch.used..]) {
                        Ok(segs) => {
                            if segs.count > 1 {
                                counts.tso_frames_segmented += 1;
                            }
                            let dst = SocketAddrV4::new(peer, table.local().port);
                            let socket = flow_hash as usize % nsock;
                            batch.push(segs, dst, socket, self.udp.gso());
                        }
                        Err(_) => counts.drop(DropReason::EgressMalformed),
                    }
                }
                Egress::ArpReply(reply) => {
                    counts.tap_syscalls += 1;
                    match self.tap.write_frame(&VirtioNetHdr::NONE.to_bytes(), &reply) {
                        Ok(_) => counts.arp_replies += 1,
                        Err(_) => counts.drop(DropReason::TapWriteFailed),
                    }
                }
                Egress::Drop(reason) => counts.drop(reason),
            }
        }
        self.flush(&mut batch, &mut counts);
        self.counters.publish(&mut counts);
    }

    fn flush(&mut self, batch: &mut TxBatch, counts: &mut LocalCounts) {
        if !batch.entries.is_empty() {
            self.udp
                .send(&batch.buf[..batch.used], &batch.entries, counts);
            if !self.udp.gso() {
                self.status.udp_gso.store(false, Ordering::Relaxed);
            }
        }
        batch.entries.clear();
        batch.used = 0;
    }
}

struct IngressWorker {
    tap: Arc<Tap>,
    udp: UdpRx,
    table: SharedTable,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl IngressWorker {
    fn run(self) {
        let vnet = self.tap.offloads().vnet_hdr;
        let mut batch = RecvBatch::new(RX_MESSAGES);
        // Frames longer than the TAP's MTU (a kernel peer's uncut GSO frames) go out
        // as GSO; merging needs the virtio header to hand the kernel a GSO frame.
        let tap_mtu = self.tap.mtu().ok();
        let mut gro = vnet.then(|| match tap_mtu {
            Some(m) => Coalescer::new(GRO_FLOWS).with_tap_mtu(m),
            None => Coalescer::new(GRO_FLOWS),
        });
        let mut counts = LocalCounts::default();
        let mut table = self.table.load();
        let mut since_reload = 0u32;
        let mut log = RateLimitedLog::new("UDP receive failed");
        let mut merged_seen = 0u64;
        let (mut partial_seen, mut oversized_seen) = (0u64, 0u64);
        // Without virtio-net headers partial checksums are finished and uncut GSO
        // frames cut here, in a copy.
        let mut plain_buf = if vnet {
            Vec::new()
        } else {
            vec![0u8; offload::PLAIN_TAP_SCRATCH]
        };
        let tap = &*self.tap;

        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.udp.recv(&mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.publish(&mut counts);
                    table = self.table.load();
                    since_reload = 0;
                    idle(self.udp.as_fd(), &mut log);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    back_off(&e, &mut log);
                    continue;
                }
            };
            counts.udp_recv_syscalls += 1;
            since_reload += n as u32;
            if since_reload >= TABLE_RELOAD_EVERY {
                table = self.table.load();
                since_reload = 0;
            }
            let emit = |vh: &VirtioNetHdr, frame: &[u8], counts: &mut LocalCounts| {
                counts.tap_syscalls += 1;
                match tap.write_frame(&vh.to_bytes(), frame) {
                    Ok(_) => {
                        counts.tap_frames_written += 1;
                        counts.tap_bytes_written += frame.len() as u64;
                    }
                    Err(_) => counts.drop(DropReason::TapWriteFailed),
                }
            };
            for i in 0..n {
                let Some((src, datagrams)) = batch.datagrams(i) else {
                    counts.drop(DropReason::IngressMalformed);
                    continue;
                };
                for d in datagrams {
                    counts.udp_datagrams_received += 1;
                    counts.udp_bytes_received += d.len() as u64;
                    match classify_ingress(*src.ip(), d, &table) {
                        Ingress::Deliver { inner } => {
                            counts.frames_delivered += 1;
                            let frame = &d[inner..];
                            match gro.as_mut() {
                                Some(g) => g.push(frame, &mut |vh, f| emit(vh, f, &mut counts)),
                                None => {
                                    let done = offload::for_plain_tap(
                                        frame,
                                        tap_mtu,
                                        &mut plain_buf,
                                        &mut |f| emit(&VirtioNetHdr::NONE, f, &mut counts),
                                    );
                                    match done {
                                        offload::PlainTap::Unchanged => {}
                                        offload::PlainTap::Finished => {
                                            counts.ingress_partial_checksums += 1
                                        }
                                        offload::PlainTap::Cut(_) => counts.ingress_gso_frames += 1,
                                    }
                                }
                            }
                        }
                        Ingress::Drop(reason) => counts.drop(reason),
                    }
                }
            }
            if let Some(g) = gro.as_mut() {
                g.flush(&mut |vh, f| emit(vh, f, &mut counts));
                let merged = g.stats().merged;
                counts.gro_segments_merged += merged - merged_seen;
                merged_seen = merged;
                let st = g.stats();
                counts.ingress_partial_checksums += st.partial_checksum - partial_seen;
                counts.ingress_gso_frames += st.oversized - oversized_seen;
                (partial_seen, oversized_seen) = (st.partial_checksum, st.oversized);
            }
            self.counters.publish(&mut counts);
        }
        self.counters.publish(&mut counts);
    }
}
