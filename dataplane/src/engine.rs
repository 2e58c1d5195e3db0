//! The hot path: one thread per TAP queue for egress (TAP → UDP) and one thread for
//! ingress (UDP → TAP). No async runtime, no lock and no allocation per packet.
//!
//! Egress reads frames from the TAP until it would block, segments large ones
//! ([`offload::tso`]), prefixes each datagram with the VXLAN header into one
//! [`TxBatch`] (which decides which datagrams share a GSO send), and sends the batch
//! with as few `sendmmsg`+GSO calls as the shape allows.
//! Ingress reads up to [`RX_MESSAGES`] GRO messages per `recvmmsg`, checks each
//! datagram ([`verdict::classify_ingress`]), merges in-order TCP segments
//! ([`offload::gro`]) and writes the result to the TAP with one `writev` per frame.
//!
//! The forwarding table (and the VXLAN header built from its VNI) is re-read from the
//! [`SharedTable`] at least every [`TABLE_RELOAD_EVERY`] packets (TAP frames on egress,
//! datagrams on ingress) and whenever a thread goes idle, so control-plane changes
//! take effect without stalling traffic. Counters are published per batch.
//! [`Engine::start`] starts every thread or none.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::counters::{Counters, DropReason, LocalCounts};
use crate::fib::{ForwardingTable, SharedTable};
use crate::offload::{self, Coalescer};
use crate::send_batch::TxBatch;
use crate::sys::{wait_readable, RecvBatch, Tap, UdpRx, UdpTx};
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

/// Starts a named thread; [`Engine::start`] uses `std::thread::Builder`, tests a
/// spawner that fails.
type Spawn<'a> = &'a mut dyn FnMut(String, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>;

impl Engine {
    /// Starts one egress thread per TAP queue and the ingress thread. All or
    /// nothing: if a socket cannot be duplicated or a thread cannot be spawned, the
    /// threads already started are stopped and joined before the error is returned.
    pub fn start(cfg: EngineConfig) -> io::Result<Engine> {
        Self::start_with(cfg, &mut |name, work| {
            std::thread::Builder::new().name(name).spawn(work)
        })
    }

    fn start_with(cfg: EngineConfig, spawn: Spawn<'_>) -> io::Result<Engine> {
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
        let taps: Vec<Arc<Tap>> = tap.into_iter().map(Arc::new).collect();
        // Made before the first thread: on any error below, dropping it stops and
        // joins the threads started so far.
        let mut engine = Engine {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::with_capacity(taps.len() + 1),
            status: Arc::clone(&status),
        };

        // One egress thread per queue, each with its own handles on the same sockets.
        for (i, q) in taps.iter().enumerate() {
            let w = EgressWorker {
                tap: Arc::clone(q),
                udp: udp_tx.try_clone()?,
                table: table.clone(),
                counters: Arc::clone(&counters),
                stop: Arc::clone(&engine.stop),
                status: Arc::clone(&status),
            };
            engine
                .threads
                .push(spawn(format!("vxmesh-tx{i}"), Box::new(move || w.run()))?);
        }
        let w = IngressWorker {
            tap: Arc::clone(&taps[0]),
            udp: udp_rx,
            table,
            counters,
            stop: Arc::clone(&engine.stop),
        };
        engine
            .threads
            .push(spawn("vxmesh-rx0".into(), Box::new(move || w.run()))?);
        Ok(engine)
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

/// The forwarding table a worker uses and the VXLAN header built from its VNI.
/// Reloaded from the [`SharedTable`] when the worker goes idle and after every
/// [`TABLE_RELOAD_EVERY`] packets, both through [`TableView::reload`], so the header
/// never carries an older table's VNI.
struct TableView {
    shared: SharedTable,
    table: Arc<ForwardingTable>,
    vxlan: [u8; VxlanHeader::LEN],
    since_reload: u32,
}

impl TableView {
    fn new(shared: SharedTable) -> TableView {
        let table = shared.load();
        let vxlan = VxlanHeader {
            vni: table.local().vni,
        }
        .to_bytes();
        TableView {
            shared,
            table,
            vxlan,
            since_reload: 0,
        }
    }

    /// Takes the current table, and the header for its VNI.
    fn reload(&mut self) {
        self.table = self.shared.load();
        self.vxlan = VxlanHeader {
            vni: self.table.local().vni,
        }
        .to_bytes();
        self.since_reload = 0;
    }

    /// Counts one packet handled; reloads after [`TABLE_RELOAD_EVERY`] of them.
    #[inline]
    fn count_packet(&mut self) {
        self.since_reload += 1;
        if self.since_reload >= TABLE_RELOAD_EVERY {
            self.reload();
        }
    }
}

impl EgressWorker {
    fn run(mut self) {
        let vnet = self.tap.offloads().vnet_hdr;
        let hdr_len = if vnet { VirtioNetHdr::LEN } else { 0 };
        let mut rbuf = vec![0u8; hdr_len + 65_536 + 256];
        let mut batch = TxBatch::new(TX_BUFFER, TX_ENTRIES);
        let mut counts = LocalCounts::default();
        let mut view = TableView::new(self.table.clone());
        let mut log = RateLimitedLog::new("TAP read failed");
        let nsock = self.udp.socket_count().max(1);

        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.tap.read(&mut rbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush(&mut batch, &mut counts);
                    self.counters.publish(&mut counts);
                    view.reload();
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
            view.count_packet();
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
            match classify_egress(frame, &view.table) {
                Egress::Forward { peer, flow_hash } => {
                    let need = offload::max_output_len(&vh, frame.len(), VxlanHeader::LEN);
                    if need > batch.spare_len() || batch.entries().len() + 64 > TX_ENTRIES {
                        self.flush(&mut batch, &mut counts);
                    }
                    if need > batch.capacity() {
                        counts.drop(DropReason::EgressMalformed);
                        continue;
                    }
                    match offload::segment(&vh, frame, &view.vxlan, batch.spare()) {
                        Ok(segs) => {
                            if segs.count > 1 {
                                counts.tso_frames_segmented += 1;
                            }
                            let dst = SocketAddrV4::new(peer, view.table.local().port);
                            let socket = flow_hash as usize % nsock;
                            if !batch.push(segs, dst, socket, self.udp.gso()) {
                                counts.drop(DropReason::EgressMalformed);
                            }
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
        if !batch.is_empty() {
            self.udp.send(batch.bytes(), batch.entries(), counts);
            if !self.udp.gso() {
                self.status.udp_gso.store(false, Ordering::Relaxed);
            }
        }
        batch.clear();
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
        // Merging needs the virtio header to hand the kernel a GSO frame.
        let mut gro = vnet.then(|| Coalescer::new(GRO_FLOWS));
        let mut counts = LocalCounts::default();
        let mut view = TableView::new(self.table.clone());
        let mut log = RateLimitedLog::new("UDP receive failed");
        let mut merged_seen = 0u64;
        let tap = &*self.tap;

        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.udp.recv(&mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.publish(&mut counts);
                    view.reload();
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
            deliver_batch(&batch, n, &mut view, gro.as_mut(), &mut counts, &emit);
            if let Some(g) = gro.as_mut() {
                g.flush(&mut |vh, f| emit(vh, f, &mut counts));
                let merged = g.stats().merged;
                counts.gro_segments_merged += merged - merged_seen;
                merged_seen = merged;
            }
            self.counters.publish(&mut counts);
        }
        self.counters.publish(&mut counts);
    }
}

/// Checks the datagrams of the first `n` messages of `batch` and hands the frames to
/// deliver to `emit`, through `gro` when set (the caller flushes it). Every datagram
/// counts as one packet towards the next table reload.
fn deliver_batch(
    batch: &RecvBatch,
    n: usize,
    view: &mut TableView,
    mut gro: Option<&mut Coalescer>,
    counts: &mut LocalCounts,
    emit: &impl Fn(&VirtioNetHdr, &[u8], &mut LocalCounts),
) {
    for i in 0..n {
        let Some((src, datagrams)) = batch.datagrams(i) else {
            counts.drop(DropReason::IngressMalformed);
            continue;
        };
        for d in datagrams {
            counts.udp_datagrams_received += 1;
            counts.udp_bytes_received += d.len() as u64;
            match classify_ingress(*src.ip(), d, &view.table) {
                Ingress::Deliver { inner } => {
                    counts.frames_delivered += 1;
                    let frame = &d[inner..];
                    match gro.as_mut() {
                        Some(g) => g.push(frame, &mut |vh, f| emit(vh, f, counts)),
                        None => emit(&VirtioNetHdr::NONE, frame, counts),
                    }
                }
                Ingress::Drop(reason) => counts.drop(reason),
            }
            view.count_packet();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs::File;
    use std::net::Ipv4Addr;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::fib::{LocalVtep, PeerVtep};
    use crate::ifname::IfName;
    use crate::wire::Vni;

    const ME: &str = "0e:5a:11:22:33:44";
    const PEER_MAC: &str = "c6:d2:32:6f:8f:44";
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

    fn table(vni: u32, with_peer: bool) -> ForwardingTable {
        ForwardingTable::new(
            LocalVtep {
                vtep_mac: ME.parse().unwrap(),
                vni: Vni::new(vni).unwrap(),
                port: 8472,
            },
            with_peer.then(|| PeerVtep {
                vtep_mac: PEER_MAC.parse().unwrap(),
                public_ip: PEER_IP,
                vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
            }),
        )
    }

    fn header(vni: u32) -> [u8; VxlanHeader::LEN] {
        VxlanHeader {
            vni: Vni::new(vni).unwrap(),
        }
        .to_bytes()
    }

    /// The defect: the periodic reload took the new table but kept the old VNI in
    /// the VXLAN header; only the idle path rebuilt it.
    #[test]
    fn periodic_reload_puts_the_new_vni_in_the_header() {
        let shared = SharedTable::new(table(1, true));
        let mut view = TableView::new(shared.clone());
        assert_eq!(view.vxlan, header(1));
        shared.store(table(7, true));
        for _ in 1..TABLE_RELOAD_EVERY {
            view.count_packet();
        }
        assert_eq!(view.table.local().vni.get(), 1, "reloaded too early");
        view.count_packet();
        assert_eq!(view.table.local().vni.get(), 7);
        assert_eq!(view.vxlan, header(7));
        // the idle path goes through the same reload
        shared.store(table(9, true));
        view.reload();
        assert_eq!(view.vxlan, header(9));
        assert_eq!(view.since_reload, 0);
    }

    /// A VXLAN datagram from the peer: header, then a minimal IPv4 frame to us.
    fn datagram() -> Vec<u8> {
        let mut d = header(1).to_vec();
        let me: crate::wire::MacAddr = ME.parse().unwrap();
        let peer: crate::wire::MacAddr = PEER_MAC.parse().unwrap();
        d.extend_from_slice(&me.0);
        d.extend_from_slice(&peer.0);
        d.extend_from_slice(&[0x08, 0x00]);
        d.extend_from_slice(&[0u8; 46]);
        d
    }

    /// The defect: ingress counted messages (up to 64 datagrams each with GRO)
    /// towards the reload, so a changed table could go unnoticed for 64 times longer.
    #[test]
    fn ingress_counts_datagrams_towards_the_reload() {
        let shared = SharedTable::new(table(1, true));
        let mut view = TableView::new(shared.clone());
        shared.store(table(1, false)); // the peer's lease is gone
        let d = datagram();
        let every = TABLE_RELOAD_EVERY as usize;
        let per_message = every * 3 / 4;
        let msg = d.repeat(per_message);
        let src = SocketAddrV4::new(PEER_IP, 40_000);
        let batch = RecvBatch::with_messages(&[(src, d.len(), &msg), (src, d.len(), &msg)]);
        let delivered = Cell::new(0);
        let mut counts = LocalCounts::default();
        deliver_batch(&batch, 2, &mut view, None, &mut counts, &|vh, f, _| {
            assert_eq!(*vh, VirtioNetHdr::NONE);
            assert_eq!(f, &d[VxlanHeader::LEN..]);
            delivered.set(delivered.get() + 1);
        });
        assert_eq!(counts.udp_datagrams_received, 2 * per_message as u64);
        // with the old table up to the reload, with the new one after it
        assert_eq!(delivered.get(), every);
        assert_eq!(
            counts.drops[DropReason::UnknownSource as usize],
            (2 * per_message - every) as u64
        );
    }

    /// An engine on socket pairs instead of TAP queues and on loopback UDP sockets.
    /// Returns the other ends of the pairs too: they must stay open.
    fn test_config(queues: usize, counters: &Arc<Counters>) -> (EngineConfig, Vec<UnixDatagram>) {
        let mut peers = Vec::new();
        let mut tap = Vec::new();
        for i in 0..queues {
            let (ours, theirs) = UnixDatagram::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            let name = IfName::new(&format!("test{i}")).unwrap();
            tap.push(Tap::over_file(File::from(OwnedFd::from(ours)), name));
            peers.push(theirs);
        }
        let cfg = EngineConfig {
            tap,
            udp_tx: UdpTx::open(Ipv4Addr::LOCALHOST, 2, 1 << 16).unwrap(),
            udp_rx: UdpRx::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1 << 16, false).unwrap(),
            table: SharedTable::new(table(1, true)),
            counters: Arc::clone(counters),
        };
        (cfg, peers)
    }

    /// The defect: when a later thread could not be started, the ones already
    /// running were left running, with no handle to stop them.
    #[test]
    fn start_is_all_or_nothing() {
        // Two queues: three threads (tx0, tx1, rx0). Fail each spawn in turn.
        for fail_at in 0..3 {
            let counters = Arc::new(Counters::default());
            let (cfg, _peers) = test_config(2, &counters);
            let finished = Arc::new(AtomicUsize::new(0));
            let mut spawned = 0;
            let r = Engine::start_with(cfg, &mut |name, work| {
                if spawned == fail_at {
                    return Err(io::Error::other(format!("no thread for {name}")));
                }
                spawned += 1;
                let finished = Arc::clone(&finished);
                std::thread::Builder::new().name(name).spawn(move || {
                    work();
                    finished.fetch_add(1, Ordering::SeqCst);
                })
            });
            let err = r.expect_err("a spawn failed");
            assert!(
                err.to_string().starts_with("no thread for vxmesh-"),
                "{err}"
            );
            // every thread started has stopped and been joined before start returned
            assert_eq!(finished.load(Ordering::SeqCst), fail_at);
            assert_eq!(Arc::strong_count(&counters), 1, "a worker still runs");
        }
        // Nothing fails: all three run until stopped.
        let counters = Arc::new(Counters::default());
        let (cfg, _peers) = test_config(2, &counters);
        let finished = Arc::new(AtomicUsize::new(0));
        let engine = Engine::start_with(cfg, &mut |name, work| {
            let finished = Arc::clone(&finished);
            std::thread::Builder::new().name(name).spawn(move || {
                work();
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .unwrap();
        assert_eq!(engine.threads.len(), 3);
        assert_eq!(finished.load(Ordering::SeqCst), 0);
        engine.stop();
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        assert_eq!(Arc::strong_count(&counters), 1);
    }
}
