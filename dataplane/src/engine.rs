//! The hot path: one thread per TAP queue for egress (TAP → UDP) and one thread for
//! ingress (UDP → TAP). No async runtime, no lock and no allocation per packet.
//!
//! Egress reads frames from the TAP until it would block, segments large ones
//! ([`offload::tso`]), prefixes each datagram with the VXLAN header into one
//! [`TxBatch`] (which decides which datagrams share a GSO send), and sends the batch
//! with as few `sendmmsg`+GSO calls as the shape allows.
//! Ingress reads up to [`RX_MESSAGES`] GRO messages per `recvmmsg` (as many as make
//! about [`RX_BATCH_BYTES`] at the size the last call's messages had), checks each
//! datagram ([`verdict::classify_ingress`]), merges in-order TCP segments
//! ([`offload::gro`]) and writes the result to the TAP with one `writev` per frame.
//!
//! The forwarding table (and the VXLAN header built from its VNI) is re-read from the
//! [`SharedTable`] at least every [`TABLE_RELOAD_EVERY`] packets (TAP frames on egress,
//! datagrams on ingress), when a thread goes idle and when it wakes, so control-plane changes
//! take effect without stalling traffic. Counters are published per batch: the
//! node's, each peer's (tallied by the peer's slot in the table, published before
//! the table is swapped: slots are per generation), and the flow samples
//! ([`crate::flows`]: one frame per ~128 KiB, into the shared top-flows table).
//! [`Engine::start`] starts every thread or none.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::aqm::{mark_ce, Codel, CodelConfig, Marked};
use crate::busy_poll::{Bursting, BusyPoll, SpinGate};
use crate::counters::{Counters, DropReason, LocalCounts, PeerTallies};
use crate::fib::{ForwardingTable, SharedTable};
use crate::flows::{Direction, FlowSampler, SharedFlows};
use crate::offload::{self, Coalescer};
use crate::path_probe;
use crate::priority::ThreadPriority;
use crate::send_batch::TxBatch;
use crate::sys::{ready_either, wait_either, RecvBatch, Tap, UdpRx, UdpTx, UnderlayTap, Wake};
use crate::verdict::{classify_egress, classify_ingress, Egress, Ingress};
use crate::wire::ecn::{self, Decapsulated};
use crate::wire::{MacAddr, VirtioNetHdr, VxlanHeader};

/// The most GRO messages one `recvmmsg` reads (each up to 64 KiB).
pub const RX_MESSAGES: usize = 64;
/// The fewest messages a `recvmmsg` asks for: a batch of whole 64 KiB GRO messages.
pub const RX_MIN_MESSAGES: usize = 8;
/// What one `recvmmsg` is sized to bring in. Whole GRO messages (64 KiB each) fill it
/// with [`RX_MIN_MESSAGES`], as the batch always was; datagrams that arrive one by one
/// (an underlay that does no GRO, small packets) take [`RX_MESSAGES`] per call instead
/// of eight, which cut the receive thread's system calls per byte (docs/decisions/0025).
/// Asking for 64 whole GRO messages showed no gain.
pub const RX_BATCH_BYTES: usize = RX_MIN_MESSAGES * 65_536;

// The AQM keeps one bit per message of a batch in a u64.
const _: () = assert!(RX_MESSAGES <= 64);

/// How many messages the next `recvmmsg` asks for, given how many the last one
/// brought and their bytes: about [`RX_BATCH_BYTES`] at that average size, between
/// [`RX_MIN_MESSAGES`] and [`RX_MESSAGES`]. Nothing brought: the fewest. (The first
/// call asks for the fewest; a call that finds the socket empty changes nothing.)
pub fn next_rx_messages(messages: usize, bytes: usize) -> usize {
    if messages == 0 {
        return RX_MIN_MESSAGES;
    }
    let average = (bytes / messages).max(1);
    (RX_BATCH_BYTES / average).clamp(RX_MIN_MESSAGES, RX_MESSAGES)
}

/// Packets between two reloads of the forwarding table under continuous load.
pub const TABLE_RELOAD_EVERY: u32 = 256;
/// Egress batch buffer: several 64 KiB bursts per flush.
const TX_BUFFER: usize = 512 * 1024;
/// Most send entries per flush.
const TX_ENTRIES: usize = 512;
/// How long a thread pauses after an unexpected I/O error (so a broken descriptor
/// cannot spin a core).
const BACK_OFF_MS: u64 = 100;
/// Flows the receive coalescer tracks at once.
const GRO_FLOWS: usize = 8;

/// Offload modes in force, for logs and metrics.
#[derive(Debug)]
pub struct EngineStatus {
    pub tap: crate::sys::TapOffloads,
    pub udp_gro: bool,
    /// The VXLAN receive socket's buffer as the kernel counts it (`SO_RCVBUF`:
    /// twice what was set, the other half its bookkeeping); `None` if it could not
    /// be read. Only this socket's owner sets it, at start, so it stays current.
    pub udp_rcvbuf: Option<usize>,
    /// Cleared if the kernel refuses UDP GSO at send time.
    pub udp_gso: AtomicBool,
    pub tx_sockets: usize,
    pub tx_source_ports: Vec<u16>,
    /// The scheduling every engine thread set for itself.
    pub priority: ThreadPriority,
    /// When a thread keeps checking for traffic before it sleeps.
    pub busy_poll: BusyPoll,
    /// Egress frames leave whole through the underlay TAP ([`UnderlayTx`]), to
    /// each peer once the path is proven ([`path_probe`]).
    pub underlay_tap: bool,
    /// This node's VTEP address (`<subnet>.0`), the source of the path probes;
    /// unspecified (0) until [`Engine::set_vtep_ip`]: no probe, so no frame takes
    /// the underlay TAP.
    vtep_ip: AtomicU32,
    /// The threads carry IPv6 (a VXLAN-over-IPv6 receive socket): its GRO, and the
    /// IPv6 send sockets' source ports. `None`: IPv4 only.
    pub ipv6: Option<Ipv6Status>,
    /// This node's IPv6 VTEP address (the lease's first IPv6 address): inner IPv6
    /// destinations from peers must lie in its subnet; unspecified until
    /// [`Engine::set_vtep_ip6`]. Read once per receive batch.
    vtep_ip6: arc_swap::ArcSwap<Ipv6Addr>,
    /// The key of this engine's probe tags, which their answers must echo.
    probe_key: path_probe::ProbeKey,
}

/// What the engine's IPv6 path runs with (see [`EngineStatus::ipv6`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Status {
    /// The VXLAN-over-IPv6 receive socket has UDP GRO.
    pub udp_gro: bool,
    /// The IPv6 send sockets' source ports.
    pub tx_source_ports: Vec<u16>,
}

impl EngineStatus {
    /// This node's VTEP address as the engine knows it (see [`Engine::set_vtep_ip`]).
    pub fn vtep_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.vtep_ip.load(Ordering::Relaxed))
    }

    /// This node's IPv6 VTEP address as the engine knows it (see
    /// [`Engine::set_vtep_ip6`]).
    pub fn vtep_ip6(&self) -> Ipv6Addr {
        **self.vtep_ip6.load()
    }
}

/// The underlay TAP path ([`offload::tunnel`]): a queue of the device and what the
/// outer headers need.
#[derive(Debug)]
pub struct UnderlayTx {
    pub tap: UnderlayTap,
    /// The underlay TAP's MAC (the outer destination, so the kernel takes the frame
    /// as its own).
    pub tap_mac: MacAddr,
    /// The node's underlay address: the outer source.
    pub local_ip: Ipv4Addr,
}

/// What the engine runs on.
#[derive(Debug)]
pub struct EngineConfig {
    /// One or more queues of the TAP (one egress thread each; ingress writes to the first).
    pub tap: Vec<Tap>,
    /// The send sockets: IPv4, and IPv6 too when the threads carry IPv6
    /// ([`UdpTx::add_ipv6`]).
    pub udp_tx: UdpTx,
    pub udp_rx: UdpRx,
    /// The VXLAN-over-IPv6 receive socket, when the threads carry IPv6: read by a
    /// receive thread of its own.
    pub udp_rx6: Option<UdpRx>,
    pub table: SharedTable,
    pub counters: Arc<Counters>,
    /// The top-flows table the threads sample into.
    pub flows: Arc<SharedFlows>,
    /// Active queue management on ingress (CoDel on the receive socket's queue), or
    /// none. Needs the receive socket's time stamps ([`UdpRx::set_timestamps`]).
    pub aqm: Option<CodelConfig>,
    /// The scheduling each thread sets for itself before it handles a packet.
    pub priority: ThreadPriority,
    /// Busy polling: when its queue runs dry, a thread checks again for up to the
    /// budget (yielding the CPU between checks) before it sleeps; by default only
    /// after a burst ([`BusyPoll::AUTO`]; see [`MAX_BUSY_POLL`]).
    pub busy_poll: BusyPoll,
    /// Send egress frames whole through this underlay TAP instead of segmenting them
    /// into UDP datagrams (`None`: the UDP sockets carry everything).
    pub underlay: Option<UnderlayTx>,
}

/// The longest busy-polling budget [`Engine::start`] takes: beyond the gap between
/// the packets of any flow that benefits, a longer budget only spins longer after
/// the traffic has stopped.
pub const MAX_BUSY_POLL: Duration = Duration::from_secs(1);

/// The running threads. Dropping it stops them too.
#[derive(Debug)]
pub struct Engine {
    stop: Arc<AtomicBool>,
    /// Signalled with `stop`: wakes the threads waiting for traffic.
    wake: Arc<Wake>,
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
            udp_rx6,
            table,
            counters,
            flows,
            aqm,
            priority,
            busy_poll,
            underlay,
        } = cfg;
        let Some(first) = tap.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no TAP queue"));
        };
        if busy_poll.budget > MAX_BUSY_POLL {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "busy-polling budget {:?} is above the {MAX_BUSY_POLL:?} maximum",
                    busy_poll.budget
                ),
            ));
        }
        let status = Arc::new(EngineStatus {
            tap: first.offloads(),
            udp_gro: udp_rx.gro(),
            udp_rcvbuf: udp_rx.rcvbuf(),
            udp_gso: AtomicBool::new(udp_tx.gso()),
            tx_sockets: udp_tx.socket_count(),
            tx_source_ports: udp_tx.local_ports(),
            priority,
            busy_poll,
            underlay_tap: underlay.is_some(),
            vtep_ip: AtomicU32::new(0),
            ipv6: udp_rx6.as_ref().map(|rx| Ipv6Status {
                udp_gro: rx.gro(),
                tx_source_ports: udp_tx.local_ports6(),
            }),
            vtep_ip6: arc_swap::ArcSwap::from_pointee(Ipv6Addr::UNSPECIFIED),
            probe_key: path_probe::ProbeKey::random(),
        });
        let underlay = underlay.map(Arc::new);
        // Each thread sets its scheduling first and says how that went; one that
        // could not goes no further, and the engine does not start.
        let (said, hear) = std::sync::mpsc::channel::<io::Result<()>>();
        let prioritized = |work: Box<dyn FnOnce() + Send>| -> Box<dyn FnOnce() + Send> {
            let said = said.clone();
            Box::new(move || {
                let r = priority.apply_to_current_thread();
                let ok = r.is_ok();
                let _ = said.send(r);
                if ok {
                    work();
                }
            })
        };
        let taps: Vec<Arc<Tap>> = tap.into_iter().map(Arc::new).collect();
        let bursting = Arc::new(Bursting::default());
        // Made before the first thread: on any error below, dropping it stops and
        // joins the threads started so far.
        let mut engine = Engine {
            stop: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Wake::new()?),
            threads: Vec::with_capacity(taps.len() + 2),
            status: Arc::clone(&status),
        };

        // One egress thread per queue, each with its own handles on the same sockets.
        for (i, q) in taps.iter().enumerate() {
            let w = EgressWorker {
                tap: Arc::clone(q),
                udp: udp_tx.try_clone()?,
                table: table.clone(),
                counters: Arc::clone(&counters),
                flows: FlowTap::new(&flows, i as u64),
                stop: Arc::clone(&engine.stop),
                wake: Arc::clone(&engine.wake),
                busy_poll,
                bursting: Arc::clone(&bursting),
                status: Arc::clone(&status),
                underlay: underlay.clone(),
                ident: first_ident(i),
                underlay_log: RateLimitedLog::new("underlay TAP write failed"),
            };
            engine.threads.push(spawn(
                format!("vxmesh-tx{i}"),
                prioritized(Box::new(move || w.run())),
            )?);
        }
        let ingress = |udp: UdpRx, thread: u64| IngressWorker {
            tap: Arc::clone(&taps[0]),
            udp,
            table: table.clone(),
            counters: Arc::clone(&counters),
            flows: FlowTap::new(&flows, thread),
            stop: Arc::clone(&engine.stop),
            wake: Arc::clone(&engine.wake),
            busy_poll,
            bursting: Arc::clone(&bursting),
            aqm: IngressAqm::new(aqm),
            probe_key: underlay.is_some().then_some(status.probe_key),
            status: Arc::clone(&status),
        };
        let w = ingress(udp_rx, u64::MAX);
        engine.threads.push(spawn(
            "vxmesh-rx0".into(),
            prioritized(Box::new(move || w.run())),
        )?);
        // VXLAN over IPv6 has a receive thread of its own: the two sockets' traffic is
        // read in parallel, and the IPv4 thread's loop stays as it was.
        if let Some(rx6) = udp_rx6 {
            let w = ingress(rx6, u64::MAX - 1);
            engine.threads.push(spawn(
                "vxmesh-rx6".into(),
                prioritized(Box::new(move || w.run())),
            )?);
        }
        drop(said);
        for _ in 0..engine.threads.len() {
            hear.recv().map_err(|_| {
                io::Error::other("an engine thread ended before it set its scheduling")
            })??;
        }
        Ok(engine)
    }

    pub fn status(&self) -> &Arc<EngineStatus> {
        &self.status
    }

    /// Tells the engine this node's VTEP address (`<subnet>.0`, on the TAP): the
    /// source of the underlay TAP path probes, which peers answer.
    pub fn set_vtep_ip(&self, ip: Ipv4Addr) {
        self.status.vtep_ip.store(u32::from(ip), Ordering::Relaxed);
    }

    /// Tells the engine this node's IPv6 VTEP address (the lease's first IPv6
    /// address, on the TAP): inner IPv6 destinations from peers must lie in its
    /// subnet.
    pub fn set_vtep_ip6(&self, ip: Ipv6Addr) {
        self.status.vtep_ip6.store(Arc::new(ip));
    }

    /// Stops the threads and waits for them (an idle one wakes at once).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(e) = self.wake.signal() {
            // Cannot happen with a valid eventfd; the threads would then wait for
            // their next packet.
            tracing::error!(error = %e, "cannot wake the dataplane threads to stop them");
        }
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

/// Whether a TAP write error means the device is gone (deleted while open: tun
/// answers EBADFD on a detached queue; ENODEV and ENXIO for a device going away).
fn underlay_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::ENODEV | libc::ENXIO)
    )
}

/// How long a packet thread that carried traffic stays quiet before it gives its
/// buffers' pages back to the system ([`crate::sys::release_pages`]): one wake-up per
/// quiet spell, after which it sleeps with no timeout again.
pub const RELEASE_PAGES_AFTER: Duration = Duration::from_secs(2);

/// How far into its buffers a thread must have written for their pages to be worth
/// giving back: a ping or an ACK now and then writes the first page or two, which is
/// not worth a wake-up; a burst writes hundreds.
pub const RELEASE_WORTH: usize = 128 * 1024;

/// How [`idle`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// The descriptor (or the stop) is readable, or an error was logged: read again.
    Ready,
    /// Nothing came for [`RELEASE_PAGES_AFTER`]: release the buffers, then idle again.
    Quiet,
}

/// Waits until `fd` is readable or the engine stops. With a busy-polling budget
/// (by default only after a burst: `gate`) it first checks again for up to that
/// long, yielding the CPU between checks, so traffic that comes back within it finds
/// the thread awake (no wake-up, no halted CPU to rouse). Then it sleeps — at most
/// [`RELEASE_PAGES_AFTER`] when `touched` (the thread's buffers hold pages to give
/// back), else with no timeout: an idle thread costs nothing until traffic comes.
fn idle(
    fd: std::os::fd::BorrowedFd<'_>,
    wake: &Wake,
    busy_poll: BusyPoll,
    (gate, bursting): (&mut SpinGate, &Bursting),
    touched: bool,
    log: &mut RateLimitedLog,
) -> Woke {
    let budget = gate.budget(busy_poll, bursting);
    if !budget.is_zero() && spin_until_ready(fd, wake, budget, log) {
        return Woke::Ready;
    }
    gate.slept(bursting);
    let waited = if touched {
        crate::sys::wait_either_for(fd, wake, RELEASE_PAGES_AFTER)
    } else {
        wait_either(fd, wake).map(|()| true)
    };
    match waited {
        Ok(true) => Woke::Ready,
        Ok(false) => Woke::Quiet,
        Err(e) => {
            back_off(&e, log);
            Woke::Ready
        }
    }
}

/// Checks `fd` and `wake` until either is readable (true) or `budget` has passed
/// (false), yielding the CPU between checks so that runnable work on this CPU goes
/// first. An error is logged and paused on, and returns true: the caller's next
/// read meets it again.
fn spin_until_ready(
    fd: std::os::fd::BorrowedFd<'_>,
    wake: &Wake,
    budget: Duration,
    log: &mut RateLimitedLog,
) -> bool {
    let until = Instant::now() + budget;
    loop {
        match ready_either(fd, wake) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => {
                back_off(&e, log);
                return true;
            }
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}

/// After an unexpected I/O error: log (rate-limited) and pause, so a broken fd
/// cannot spin a core.
fn back_off(e: &io::Error, log: &mut RateLimitedLog) {
    log.error(e);
    std::thread::sleep(Duration::from_millis(BACK_OFF_MS));
}

/// Wall-clock time in Unix milliseconds, for "last seen" stamps (read per batch).
fn unix_ms() -> u64 {
    unix_ns() / 1_000_000
}

/// A thread's flow sampler and the shared table its samples go to.
struct FlowTap {
    sampler: FlowSampler,
    shared: Arc<SharedFlows>,
}

impl FlowTap {
    fn new(shared: &Arc<SharedFlows>, thread: u64) -> FlowTap {
        FlowTap {
            sampler: shared.sampler(crate::flows::random_seed() ^ thread),
            shared: Arc::clone(shared),
        }
    }

    /// Offers a frame crossing the overlay (see [`FlowSampler::offer`]).
    #[inline]
    fn offer(
        &mut self,
        frame: &[u8],
        bytes: usize,
        packets: usize,
        dir: Direction,
        peer: Ipv4Addr,
    ) {
        if self
            .sampler
            .offer(frame, bytes as u64, packets as u64, dir, peer)
        {
            self.publish();
        }
    }

    /// Hands the buffered samples to the shared table.
    fn publish(&mut self) {
        if !self.sampler.is_empty() {
            self.shared.absorb(&mut self.sampler, unix_ms());
        }
    }
}

struct EgressWorker {
    tap: Arc<Tap>,
    udp: UdpTx,
    table: SharedTable,
    counters: Arc<Counters>,
    flows: FlowTap,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    busy_poll: BusyPoll,
    /// The engine's threads in a burst now (shared).
    bursting: Arc<Bursting>,
    status: Arc<EngineStatus>,
    underlay: Option<Arc<UnderlayTx>>,
    /// The outer IPv4 identification of the next underlay TAP packet. The kernel numbers
    /// a packet's segments on from it, so it advances by the segments sent: the outer
    /// packets leave with DF clear, as the UDP sockets' do, and a fragmented one must
    /// not share its ID with a recent one.
    ident: u16,
    /// Why underlay TAP writes fail (the device brought down, say), rate-limited.
    underlay_log: RateLimitedLog,
}

/// The forwarding table a worker uses and the VXLAN header built from its VNI.
/// Reloaded from the [`SharedTable`] when the worker goes idle and after every
/// [`TABLE_RELOAD_EVERY`] packets, both through [`TableView::reload`], so the header
/// never carries an older table's VNI. Holds the thread's per-peer tallies, by slot
/// of `table`: they are published before another generation is taken.
struct TableView {
    shared: SharedTable,
    table: Arc<ForwardingTable>,
    /// An empty table held in `table` while the thread sleeps (see
    /// [`TableView::release`]).
    asleep: Arc<ForwardingTable>,
    vxlan: [u8; VxlanHeader::LEN],
    since_reload: u32,
    peers: PeerTallies,
}

impl TableView {
    fn new(shared: SharedTable) -> TableView {
        let table = shared.load();
        let vxlan = VxlanHeader {
            vni: table.local().vni,
        }
        .to_bytes();
        TableView {
            peers: PeerTallies::new(table.peers().len()),
            asleep: Arc::new(ForwardingTable::new(*table.local(), [])),
            shared,
            table,
            vxlan,
            since_reload: 0,
        }
    }

    /// Adds the per-peer tallies to the peers' counters.
    fn publish_peers(&mut self) {
        if !self.peers.is_empty() {
            self.peers.publish(&self.table, unix_ms());
        }
    }

    /// Takes the current table, and the header for its VNI (the tallies of the
    /// previous one published first).
    fn reload(&mut self) {
        self.publish_peers();
        self.table = self.shared.load();
        self.peers.resize(self.table.peers().len());
        self.vxlan = VxlanHeader {
            vni: self.table.local().vni,
        }
        .to_bytes();
        self.since_reload = 0;
    }

    /// Lets go of the shared generation before the thread sleeps (the tallies
    /// published first), so that the control plane can apply its next delta to it
    /// in place (`SharedTable::apply_delta`) rather than copy the current table;
    /// [`TableView::reload`] takes the current generation on waking. Until then the
    /// view holds an empty table.
    fn release(&mut self) {
        self.publish_peers();
        self.table = Arc::clone(&self.asleep);
        self.peers.resize(0);
    }

    /// Counts one packet handled; reloads after [`TABLE_RELOAD_EVERY`] of them.
    /// Returns whether it reloaded (slots taken before are void).
    #[inline]
    fn count_packet(&mut self) -> bool {
        self.since_reload += 1;
        if self.since_reload >= TABLE_RELOAD_EVERY {
            self.reload();
            return true;
        }
        false
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
        let mut gate = SpinGate::default();
        // Whether the buffers hold pages written since they were last given back.
        let mut touched = false;
        let nsock = self.udp.socket_count().max(1);
        // The outer source port of a flow is its send socket's port, on either path.
        let ports = self.status.tx_source_ports.clone();

        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.tap.read(&mut rbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    touched |= batch.written() >= RELEASE_WORTH;
                    self.flush(&mut batch, &mut counts);
                    self.publish(&mut counts, &mut view);
                    view.release();
                    let woke = idle(
                        self.tap.as_fd(),
                        &self.wake,
                        self.busy_poll,
                        (&mut gate, &self.bursting),
                        touched,
                        &mut log,
                    );
                    if woke == Woke::Quiet {
                        batch.release_pages();
                        crate::sys::release_pages(&mut rbuf);
                        touched = false;
                    }
                    // The table may have changed while this thread slept (a peer added
                    // right before the frame that woke it): take it again.
                    view.reload();
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
            // A TSO frame: the read buffer's pages, and the send batch's after it.
            touched |= n >= RELEASE_WORTH / 4;
            gate.carried(1, n as u64);
            let _ = view.count_packet();
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
                Egress::Forward {
                    peer,
                    slot,
                    flow_hash,
                } => {
                    let node = node_ip(&view.table, Some(slot));
                    // The underlay TAP path builds IPv4 outer headers only.
                    let whole_gso =
                        self.underlay.is_some() && vh.gso_kind() != crate::wire::virtio::GSO_NONE;
                    if let (IpAddr::V4(peer), true) = (peer, whole_gso) {
                        if self.path_proven(slot, &view, &mut counts) {
                            let port = ports.get(flow_hash as usize % nsock).copied();
                            match self.send_whole(
                                &vh,
                                frame,
                                peer,
                                port,
                                &view,
                                &mut batch,
                                &mut counts,
                            ) {
                                Whole::Sent(dg, inner) => {
                                    let bytes = dg * VxlanHeader::LEN + inner;
                                    view.peers.tx(slot, dg as u64, bytes as u64);
                                    self.flows.offer(frame, inner, dg, Direction::ToPeer, peer);
                                    continue;
                                }
                                Whole::Cannot => counts.underlay_tap_fallbacks += 1,
                            }
                        }
                    }
                    let need = offload::max_output_len(&vh, frame.len(), VxlanHeader::LEN);
                    if need > batch.spare_len() || batch.entries().len() + 64 > TX_ENTRIES {
                        self.flush(&mut batch, &mut counts);
                        self.publish(&mut counts, &mut view);
                    }
                    let malformed = |counts: &mut LocalCounts, view: &TableView| {
                        counts.drop(DropReason::EgressMalformed);
                        if let Some(c) = view.table.peer_counters(slot) {
                            c.count_drop(DropReason::EgressMalformed);
                        }
                    };
                    if need > batch.capacity() {
                        malformed(&mut counts, &view);
                        continue;
                    }
                    match offload::segment(&vh, frame, &view.vxlan, batch.spare()) {
                        Ok(segs) => {
                            if segs.count > 1 {
                                counts.tso_frames_segmented += 1;
                            }
                            let dst = SocketAddr::new(peer, view.table.local().port);
                            let socket = flow_hash as usize % nsock;
                            // RFC 6040: the inner packet's ECN field in the outer header.
                            let tos = ecn::encapsulated(ecn::of_frame(frame).unwrap_or(0));
                            if batch.push(segs, dst, socket, self.udp.gso(), tos) {
                                view.peers.tx(slot, segs.count as u64, segs.len as u64);
                                let inner = segs.len - segs.count * VxlanHeader::LEN;
                                self.flows
                                    .offer(frame, inner, segs.count, Direction::ToPeer, node);
                            } else {
                                malformed(&mut counts, &view);
                            }
                        }
                        Err(_) => malformed(&mut counts, &view),
                    }
                }
                Egress::ArpReply(reply) => {
                    counts.tap_syscalls += 1;
                    match self.tap.write_frame(&VirtioNetHdr::NONE.to_bytes(), &reply) {
                        Ok(_) => counts.arp_replies += 1,
                        Err(_) => counts.drop(DropReason::TapWriteFailed),
                    }
                }
                Egress::NeighborAdvert(advert) => {
                    counts.tap_syscalls += 1;
                    match self
                        .tap
                        .write_frame(&VirtioNetHdr::NONE.to_bytes(), &advert)
                    {
                        Ok(_) => counts.ndp_replies += 1,
                        Err(_) => counts.drop(DropReason::TapWriteFailed),
                    }
                }
                Egress::Drop(reason) => counts.drop(reason),
            }
        }
        self.flush(&mut batch, &mut counts);
        self.publish(&mut counts, &mut view);
    }

    /// Whether GSO frames to the peer in `slot` may take the underlay TAP: the path
    /// was proven, lately. Sends the peer a probe when one is due
    /// ([`path_probe::PathState::decide`]). Frames without GSO always go the usual
    /// way: the sockets batch them, one system call for many.
    fn path_proven(&mut self, slot: usize, view: &TableView, counts: &mut LocalCounts) -> bool {
        let Some(c) = view.table.peer_counters(slot) else {
            return false;
        };
        let d = c.path.decide(path_probe::clock_ms());
        if d.probe {
            if let Some(p) = view.table.peers().get(slot) {
                self.probe(p, view, counts);
                if d.unanswered == path_probe::QUICK_TRIES + 1 {
                    tracing::warn!(
                        peer = %p.public_ip,
                        vtep = %p.vtep_ip,
                        probes = path_probe::QUICK_TRIES,
                        "the underlay TAP path to this peer is not proven: its VTEP address answered none of the probes sent that way, so frames to it are cut into datagrams here (slower; probed again every {} s). Does the host's firewall forward UDP from {} to port {}, and does the peer answer ping on its VTEP address? See docs/troubleshooting.md",
                        path_probe::SLOW_RETRY_MS / 1000,
                        self.underlay.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |u| u.local_ip),
                        view.table.local().port,
                    );
                }
            }
        }
        d.underlay
    }

    /// The outer headers of the next underlay TAP packet to `dst` from `sport`.
    fn outer(
        &self,
        u: &UnderlayTx,
        view: &TableView,
        dst: Ipv4Addr,
        sport: u16,
    ) -> offload::tunnel::Outer {
        let local = view.table.local();
        offload::tunnel::Outer {
            dst_mac: u.tap_mac,
            src_mac: local.vtep_mac,
            src: u.local_ip,
            dst,
            sport,
            dport: local.port,
            vxlan: view.vxlan,
            ident: self.ident,
        }
    }

    /// Sends `peer` a path probe through the underlay TAP (see [`path_probe`]).
    fn probe(&mut self, peer: &crate::fib::PeerVtep, view: &TableView, counts: &mut LocalCounts) {
        let src = self.status.vtep_ip();
        let Some(u) = self.underlay.as_ref() else {
            return;
        };
        if src.is_unspecified() {
            return;
        }
        let local = view.table.local();
        let frame = path_probe::probe_frame(
            local.vtep_mac,
            peer.vtep_mac,
            src,
            peer.vtep_ip,
            self.ident,
            &self.status.probe_key,
            path_probe::clock_ms(),
        );
        let outer = self.outer(u, view, peer.public_ip, local.port);
        let mut prefix = [0u8; offload::tunnel::PREFIX_LEN];
        if offload::tunnel::prefix(&VirtioNetHdr::NONE, &frame, &outer, &mut prefix).is_err() {
            return;
        }
        counts.tap_syscalls += 1;
        match u.tap.write(&prefix, &frame) {
            Ok(_) => {
                self.ident = self.ident.wrapping_add(1);
                counts.underlay_probes_sent += 1;
            }
            Err(e) => self.underlay_failed(&e),
        }
    }

    /// A write to the underlay TAP failed. If the device is gone (deleted under the
    /// running agent: the descriptor answers EBADFD), this thread stops using it at
    /// once — its frames go the segmenting way, as to an unproven peer — instead of
    /// failing every frame until the proofs run out; the agent's device check starts
    /// the dataplane again on a new one.
    fn underlay_failed(&mut self, e: &io::Error) {
        self.underlay_log.error(e);
        if underlay_gone(e) && self.underlay.take().is_some() {
            tracing::warn!(
                error = %e,
                "the underlay TAP is gone (deleted?): GSO frames are cut into datagrams here until the dataplane starts again on a new one"
            );
        }
    }

    /// Sends `frame` whole through the underlay TAP. Whatever the batch holds goes
    /// first, so a flow's packets leave in order across the two paths.
    #[allow(clippy::too_many_arguments)]
    fn send_whole(
        &mut self,
        vh: &VirtioNetHdr,
        frame: &[u8],
        peer: Ipv4Addr,
        sport: Option<u16>,
        view: &TableView,
        batch: &mut TxBatch,
        counts: &mut LocalCounts,
    ) -> Whole {
        let Some(u) = self.underlay.as_ref() else {
            return Whole::Cannot;
        };
        let outer = self.outer(u, view, peer, sport.unwrap_or(view.table.local().port));
        let mut prefix = [0u8; offload::tunnel::PREFIX_LEN];
        let Ok((dg, inner)) = offload::tunnel::prefix(vh, frame, &outer, &mut prefix) else {
            return Whole::Cannot;
        };
        if !batch.is_empty() {
            self.flush(batch, counts);
        }
        let Some(u) = self.underlay.as_ref() else {
            return Whole::Cannot;
        };
        counts.tap_syscalls += 1;
        match u.tap.write(&prefix, frame) {
            Ok(_) => {
                self.ident = self.ident.wrapping_add(dg as u16);
                counts.underlay_tap_frames += 1;
                counts.udp_datagrams_sent += dg as u64;
                counts.udp_bytes_sent += (dg * VxlanHeader::LEN + inner) as u64;
                Whole::Sent(dg, inner)
            }
            // Not lost: the frame goes the segmenting way (the batch is empty, so the
            // flow stays in order).
            Err(e) => {
                self.underlay_failed(&e);
                Whole::Cannot
            }
        }
    }

    /// Publishes the node's counts, the peers' tallies and the flow samples.
    fn publish(&mut self, counts: &mut LocalCounts, view: &mut TableView) {
        self.counters.publish(counts);
        view.publish_peers();
        self.flows.publish();
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

/// Where egress thread `i` starts numbering its outer IPv4 packets: apart from the
/// other threads' and from the last run's (the clock's nanoseconds).
fn first_ident(i: usize) -> u16 {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (ns as u16).wrapping_add((i as u16).wrapping_mul(0x4000))
}

/// What became of a frame offered to the underlay TAP path.
enum Whole {
    /// Written; it leaves as this many datagrams, with this many inner bytes.
    Sent(usize, usize),
    /// The path cannot carry it, or the write failed: send it the segmenting way.
    Cannot,
}

struct IngressWorker {
    tap: Arc<Tap>,
    udp: UdpRx,
    table: SharedTable,
    counters: Arc<Counters>,
    flows: FlowTap,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    busy_poll: BusyPoll,
    /// The engine's threads in a burst now (shared).
    bursting: Arc<Bursting>,
    aqm: IngressAqm,
    /// With the underlay TAP path: the key of this engine's path probes, whose
    /// answers the ingress thread takes ([`path_probe::reply_from`]).
    probe_key: Option<path_probe::ProbeKey>,
    /// This node's VTEP address, read per batch: inner destinations must lie in its
    /// subnet ([`crate::verdict::classify_ingress`]).
    status: Arc<EngineStatus>,
}

/// What the ingress thread knows of this node beyond the table.
#[derive(Debug, Clone, Copy)]
struct IngressLocal {
    /// See [`IngressWorker`]'s `probe_key`.
    probe_key: Option<path_probe::ProbeKey>,
    /// This node's VTEP address (unspecified before the first lease).
    vtep_ip: Ipv4Addr,
    /// This node's IPv6 VTEP address (unspecified before the first dual-stack lease,
    /// and without IPv6 in the threads).
    vtep_ip6: Ipv6Addr,
}

#[cfg(test)]
impl IngressLocal {
    /// No probes, no VTEP address yet.
    const NONE: IngressLocal = IngressLocal {
        probe_key: None,
        vtep_ip: Ipv4Addr::UNSPECIFIED,
        vtep_ip6: Ipv6Addr::UNSPECIFIED,
    };
}

/// CoDel on the receive socket's queue: which messages of a batch carry a congestion
/// signal, and a buffer for the marked copy of a frame.
struct IngressAqm {
    codel: Option<Codel>,
    /// CoDel's clock: ns since this.
    epoch: Instant,
    /// Bit `i`: message `i` of the current batch is to carry a signal.
    pending: u64,
    /// The CE-marked copy of a frame (a datagram's inner frame: at most 64 KiB).
    copy: Vec<u8>,
}

impl IngressAqm {
    fn new(cfg: Option<CodelConfig>) -> IngressAqm {
        IngressAqm {
            codel: cfg.map(Codel::new),
            epoch: Instant::now(),
            pending: 0,
            copy: if cfg.is_some() {
                vec![0; 65_536]
            } else {
                Vec::new()
            },
        }
    }

    /// Judges the first `n` messages of `batch`, dequeued now. `drained`: the read
    /// emptied the socket, so nothing waits behind the last message. Once per batch,
    /// out of line. One bit of `pending` per message of a batch.
    #[inline(never)]
    fn judge(&mut self, batch: &RecvBatch, n: usize, drained: bool) {
        self.pending = 0;
        let Some(codel) = self.codel.as_mut() else {
            return;
        };
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let wall = unix_ns();
        for i in 0..n.min(64) {
            // No stamp (time stamps refused), or a clock stepped back: no wait seen.
            let sojourn = batch.stamp_ns(i).map_or(0, |t| wall.saturating_sub(t));
            if codel.on_dequeue(now, sojourn, drained && i + 1 == n) {
                self.pending |= 1 << i;
            }
        }
    }

    /// Whether message `i` carries a signal (asked once per message).
    fn signal(&mut self, i: usize) -> bool {
        let bit = 1u64.checked_shl(i as u32).unwrap_or(0);
        let on = self.pending & bit != 0;
        self.pending &= !bit;
        on
    }

    /// Copies `frame` into `self.copy`; returns its length.
    fn copy_of(&mut self, frame: &[u8]) -> usize {
        if self.copy.len() < frame.len() {
            self.copy.resize(frame.len(), 0);
        }
        self.copy[..frame.len()].copy_from_slice(frame);
        frame.len()
    }

    /// Copies `frame` with `ecn` written into its IP header (RFC 6040 decapsulation);
    /// returns the copy's length. Rare (an outer CE, or ECT(1) over ECT(0)): kept out
    /// of the per-datagram loop's code.
    #[cold]
    #[inline(never)]
    fn copy_with_ecn(&mut self, frame: &[u8], ecn: u8) -> usize {
        let len = self.copy_of(frame);
        self.set_ecn_in_copy(len, ecn)
    }

    /// Copies `frame` with `mac` written over its destination; returns the copy's
    /// length. For a frame to this node's IPv6 VtepMAC that the receive thread did not
    /// rewrite in place (see [`RecvBatch::rewrite_inner_dst`]): rare, out of line.
    #[cold]
    #[inline(never)]
    fn copy_with_dst(&mut self, frame: &[u8], mac: MacAddr) -> usize {
        let len = self.copy_of(frame);
        // A frame judged deliverable holds a whole Ethernet header.
        if let Some(dst) = self.copy.get_mut(..6).filter(|_| len >= 6) {
            dst.copy_from_slice(&mac.0);
        }
        len
    }

    /// Writes `ecn` into the IP header of the copy of `len` bytes in `self.copy`.
    fn set_ecn_in_copy(&mut self, len: usize, ecn: u8) -> usize {
        if let Some(f) = self.copy.get_mut(..len) {
            ecn::set_in_frame(f, ecn);
        }
        len
    }

    /// The signal on the copy of `len` bytes in `self.copy`: marked CE, or `None` when
    /// it is to be dropped (not ECN-capable).
    fn mark_copy(&mut self, len: usize) -> Option<usize> {
        match mark_ce(self.copy.get_mut(..len)?) {
            Marked::Marked | Marked::AlreadyCe => Some(len),
            Marked::NotEct => None,
        }
    }

    /// The signal on `frame`: the length of its CE-marked copy in `self.copy`, or
    /// `None` when it is to be dropped (not ECN-capable). Rare: kept out of the
    /// per-datagram loop's code.
    #[cold]
    #[inline(never)]
    fn mark(&mut self, frame: &[u8]) -> Option<usize> {
        let len = self.copy_of(frame);
        self.mark_copy(len)
    }
}

/// The wall clock in ns since the epoch (0 before it, saturating after 2554).
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl IngressWorker {
    fn run(mut self) {
        let vnet = self.tap.offloads().vnet_hdr;
        let over_ipv6 = self.udp.local_addr().is_some_and(|a| a.is_ipv6());
        let mut batch = RecvBatch::new(RX_MESSAGES);
        batch.set_limit(RX_MIN_MESSAGES);
        // Frames longer than the TAP's MTU (a kernel peer's uncut GSO frames) go out
        // as GSO; merging needs the virtio header to hand the kernel a GSO frame.
        let tap_mtu = self.tap.mtu().ok();
        let mut gro = vnet.then(|| match tap_mtu {
            Some(m) => Coalescer::new(GRO_FLOWS).with_tap_mtu(m),
            None => Coalescer::new(GRO_FLOWS),
        });
        let mut counts = LocalCounts::default();
        let mut view = TableView::new(self.table.clone());
        let mut log = RateLimitedLog::new("UDP receive failed");
        let mut gate = SpinGate::default();
        // Whether the buffers hold pages written since they were last given back.
        let mut touched = false;
        let mut merged_seen = 0u64;
        let (mut partial_seen, mut oversized_seen) = (0u64, 0u64);
        // Without virtio-net headers partial checksums are finished and uncut GSO
        // frames cut here, in a copy; a kernel sender's whole UDP GSO burst is cut here
        // either way.
        let mut plain_buf = vec![0u8; offload::PLAIN_TAP_SCRATCH];
        let tap = &*self.tap;

        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.udp.recv(&mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.publish(&mut counts);
                    self.flows.publish();
                    view.release();
                    let woke = idle(
                        self.udp.as_fd(),
                        &self.wake,
                        self.busy_poll,
                        (&mut gate, &self.bursting),
                        touched,
                        &mut log,
                    );
                    if woke == Woke::Quiet {
                        batch.release_pages();
                        crate::sys::release_pages(&mut plain_buf);
                        touched = false;
                    }
                    // As on egress: the first datagram after a sleep sees the table as it
                    // is now, not as it was when the thread went idle.
                    view.reload();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    back_off(&e, &mut log);
                    continue;
                }
            };
            counts.udp_recv_syscalls += 1;
            touched |= batch.footprint() >= RELEASE_WORTH;
            gate.carried(n as u64, batch.bytes() as u64);
            self.aqm.judge(&batch, n, n < batch.limit());
            batch.set_limit(next_rx_messages(n, batch.bytes()));
            // VXLAN over IPv6 comes to this node's IPv6 VtepMAC (flannel's layout), and
            // the TAP takes only frames to its own: rewritten in place, batch by batch,
            // on the IPv6 socket's thread (the IPv4 one's datagrams are not to it).
            let local = *view.table.local();
            if let Some(v6) = local
                .v6
                .filter(|v6| over_ipv6 && v6.vtep_mac != local.vtep_mac)
            {
                for i in 0..n {
                    batch.rewrite_inner_dst(i, v6.vtep_mac.0, local.vtep_mac.0);
                }
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
            let mut to_tap = match gro.as_mut() {
                Some(g) => ToTap::Gro {
                    gro: g,
                    scratch: &mut plain_buf,
                },
                None => ToTap::Plain {
                    tap_mtu,
                    scratch: &mut plain_buf,
                },
            };
            deliver_batch(
                &batch,
                n,
                &mut view,
                &mut to_tap,
                &mut counts,
                &mut self.flows,
                &mut self.aqm,
                IngressLocal {
                    probe_key: self.probe_key,
                    vtep_ip: self.status.vtep_ip(),
                    vtep_ip6: self.status.vtep_ip6(),
                },
                &emit,
            );
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
            view.publish_peers();
            self.flows.publish();
        }
        self.counters.publish(&mut counts);
        view.publish_peers();
        self.flows.publish();
    }
}

/// Whether `frame`, from the peer in `slot`, answers one of this engine's recent path
/// probes; if so the peer's path is proven from when that probe left. Out of line:
/// short frames only.
#[inline(never)]
fn took_probe_reply(
    frame: &[u8],
    key: &path_probe::ProbeKey,
    slot: Option<usize>,
    table: &ForwardingTable,
) -> bool {
    let now = path_probe::clock_ms();
    let Some(reply) = path_probe::reply_from(frame, key, now) else {
        return false;
    };
    let Some((peer, c)) = slot.and_then(|s| Some((table.peers().get(s)?, table.peer_counters(s)?)))
    else {
        return false;
    };
    if peer.vtep_ip != reply.from {
        return false;
    }
    if c.path.answered(reply.sent_ms, now) {
        tracing::debug!(peer = %peer.public_ip, "the underlay TAP path to this peer is proven");
    }
    true
}

/// Where delivered frames go: through the coalescer (a TAP with virtio-net headers; the
/// caller flushes it), or straight to a plain TAP, with partial checksums finished and
/// uncut GSO frames cut in `scratch`. Either way a whole UDP GSO burst is cut in
/// `scratch` ([`offload::udp_burst`]).
enum ToTap<'a> {
    Gro {
        gro: &'a mut Coalescer,
        scratch: &'a mut [u8],
    },
    Plain {
        tap_mtu: Option<usize>,
        scratch: &'a mut [u8],
    },
}

impl ToTap<'_> {
    fn scratch(&mut self) -> &mut [u8] {
        match self {
            ToTap::Gro { scratch, .. } | ToTap::Plain { scratch, .. } => scratch,
        }
    }
}

/// Checks the datagrams of the first `n` messages of `batch` and hands the frames to
/// deliver to `emit`, through `gro` when set (the caller flushes it). Every datagram
/// counts as one packet towards the next table reload, and towards its peer's
/// tallies (the peer is looked up once per message: one source each).
#[allow(clippy::too_many_arguments)]
fn deliver_batch(
    batch: &RecvBatch,
    n: usize,
    view: &mut TableView,
    to_tap: &mut ToTap<'_>,
    counts: &mut LocalCounts,
    flows: &mut FlowTap,
    aqm: &mut IngressAqm,
    local: IngressLocal,
    emit: &impl Fn(&VirtioNetHdr, &[u8], &mut LocalCounts),
) {
    for i in 0..n {
        let Some(msg) = batch.message(i) else {
            counts.drop(DropReason::IngressMalformed);
            continue;
        };
        let src = msg.src.ip();
        let slot_of = |t: &ForwardingTable| match src {
            IpAddr::V4(ip) => t.slot_by_source(&ip),
            IpAddr::V6(ip) => t.slot_by_source6(&ip),
        };
        let mut slot = slot_of(&view.table);
        // A congestion signal goes to the message's first deliverable frame (not to a
        // kernel sender's whole UDP burst: that would hit all its datagrams).
        let mut signal = aqm.signal(i) && msg.inner_segment.is_none();
        for d in msg.datagrams {
            counts.udp_datagrams_received += 1;
            counts.udp_bytes_received += d.len() as u64;
            if let Some(s) = slot {
                view.peers.rx(s, 1, d.len() as u64);
            }
            let mut verdict = classify_ingress(src, d, &view.table, local.vtep_ip, local.vtep_ip6);
            let mut marked = None;
            // To this node's IPv6 VtepMAC, not rewritten in place by the receive loop
            // (see `IngressWorker::run`): the TAP gets a copy to its own MAC.
            if let Ingress::Deliver {
                inner,
                rewrite_dst: Some(mac),
            } = verdict
            {
                marked = Some(aqm.copy_with_dst(&d[inner..], mac));
            }
            // RFC 6040: an ECN-capable outer (a kernel peer copies the inner field out;
            // an underlay router may have marked it CE) passes its mark on.
            if msg.outer_ecn != ecn::NOT_ECT {
                if let Ingress::Deliver { inner, .. } = verdict {
                    let frame = match marked {
                        Some(len) => &aqm.copy[..len],
                        None => &d[inner..],
                    };
                    match ecn::of_frame(frame).map(|e| ecn::decapsulate(msg.outer_ecn, e)) {
                        Some(Decapsulated::Drop) => verdict = Ingress::Drop(DropReason::CeOnNotEct),
                        Some(Decapsulated::Set(e)) => {
                            counts.ecn_marks_passed_on += u64::from(e == ecn::CE);
                            marked = Some(match marked {
                                Some(len) => aqm.set_ecn_in_copy(len, e),
                                None => aqm.copy_with_ecn(&d[inner..], e),
                            });
                        }
                        Some(Decapsulated::Unchanged) | None => {}
                    }
                }
            }
            if signal {
                if let Ingress::Deliver { inner, .. } = verdict {
                    signal = false;
                    let done = match marked {
                        Some(len) => aqm.mark_copy(len),
                        None => aqm.mark(&d[inner..]),
                    };
                    match done {
                        Some(len) => {
                            counts.aqm_ce_marked += 1;
                            marked = Some(len);
                        }
                        None => verdict = Ingress::Drop(DropReason::Congestion),
                    }
                }
            }
            match verdict {
                Ingress::Deliver { inner, .. } => {
                    if let Some(key) = &local.probe_key {
                        if d.len() - inner <= path_probe::MAX_REPLY_LEN
                            && took_probe_reply(&d[inner..], key, slot, &view.table)
                        {
                            counts.underlay_probes_answered += 1;
                            if view.count_packet() {
                                slot = slot_of(&view.table);
                            }
                            continue;
                        }
                    }
                    counts.frames_delivered += 1;
                    let frame = match marked {
                        Some(len) => &aqm.copy[..len],
                        None => &d[inner..],
                    };
                    let node = node_ip(&view.table, slot);
                    flows.offer(frame, frame.len(), 1, Direction::FromPeer, node);
                    if let Some(seg) = msg.inner_segment {
                        if !cut_burst(frame, seg, to_tap.scratch(), counts, emit) {
                            let reason = DropReason::IngressMalformed;
                            counts.drop(reason);
                            if let Some(c) = slot.and_then(|s| view.table.peer_counters(s)) {
                                c.count_drop(reason);
                            }
                        }
                    } else {
                        match to_tap {
                            ToTap::Gro { gro: g, .. } => {
                                g.push(frame, &mut |vh, f| emit(vh, f, counts))
                            }
                            ToTap::Plain { tap_mtu, scratch } => {
                                let done =
                                    offload::for_plain_tap(frame, *tap_mtu, scratch, &mut |f| {
                                        emit(&VirtioNetHdr::NONE, f, counts)
                                    });
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
                }
                Ingress::Drop(reason) => {
                    counts.drop(reason);
                    if let Some(c) = slot.and_then(|s| view.table.peer_counters(s)) {
                        c.count_drop(reason);
                    }
                }
            }
            if view.count_packet() {
                slot = slot_of(&view.table);
            }
        }
    }
}

/// The PublicIP of the node in `slot`: it names the peer in the flow samples, whichever
/// family its VXLAN takes (IPv6 in the threads: UDP/IPv6 from its PublicIPv6). A frame
/// is sampled only once its peer is known, so `None` never names one.
fn node_ip(table: &ForwardingTable, slot: Option<usize>) -> Ipv4Addr {
    slot.and_then(|s| table.peers().get(s))
        .map_or(Ipv4Addr::UNSPECIFIED, |p| p.public_ip)
}

/// A kernel sender's whole UDP GSO burst: cut in `scratch` into the sender's datagrams,
/// each handed to `emit` as a plain frame; false when it is refused (a counted drop).
fn cut_burst(
    frame: &[u8],
    segment: usize,
    scratch: &mut [u8],
    counts: &mut LocalCounts,
    emit: &impl Fn(&VirtioNetHdr, &[u8], &mut LocalCounts),
) -> bool {
    let Ok(s) = offload::udp_burst::cut(frame, segment, scratch) else {
        return false;
    };
    counts.ingress_gso_frames += 1;
    for r in (0..s.count).filter_map(|i| s.datagram(i)) {
        emit(&VirtioNetHdr::NONE, &scratch[r], counts);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::AtomicUsize;

    use std::net::SocketAddrV4;

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
                inner: None,
                v6: None,
            },
            with_peer.then(|| PeerVtep {
                vtep_mac: PEER_MAC.parse().unwrap(),
                public_ip: PEER_IP,
                vtep_ip: Ipv4Addr::new(10, 244, 1, 0),
                v6: None,
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

    /// The defect: a thread asleep held the generation it loaded last, so the
    /// control plane's next delta found it in use and copied the whole table.
    /// Asleep, a view holds no generation; its tallies reach the peer's counters
    /// first, and on waking it has the current table again.
    #[test]
    fn a_sleeping_view_holds_no_generation() {
        let shared = SharedTable::new(table(1, true));
        let mut view = TableView::new(shared.clone());
        assert!(!view.table.peers().is_empty());
        view.peers.tx(0, 3, 4_500);
        // The shared table's own reference, this test's, the view's.
        assert_eq!(Arc::strong_count(&shared.load()), 3);
        view.release();
        assert_eq!(
            Arc::strong_count(&shared.load()),
            2,
            "asleep, the view holds none"
        );
        assert!(view.table.peers().is_empty());
        let now = shared.load();
        assert_eq!(now.peer_counters(0).unwrap().snapshot().tx_packets, 3);
        drop(now);
        shared.store(table(7, true));
        view.reload();
        assert_eq!(view.table.local().vni.get(), 7);
        assert_eq!(view.vxlan, header(7));
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

    /// The defect: a kernel sender's whole UDP GSO burst arrives as one message with a
    /// `UDP_GRO` segment size that is the *inner* datagrams' size; split at it as a
    /// train, every piece was dropped (`wrong_vni`, `ingress_malformed`). Now it is cut
    /// like the sender's NIC would have cut it, on either kind of TAP; a corrupted one
    /// is a counted drop.
    #[test]
    fn a_whole_udp_gso_burst_is_cut_not_split() {
        use crate::offload::testutil::{payload, Tcp};
        let me: crate::wire::MacAddr = ME.parse().unwrap();
        let peer: crate::wire::MacAddr = PEER_MAC.parse().unwrap();
        let data = payload(20 * 1_000 + 123, 5);
        let mut inner = Tcp::default().udp(&data, true);
        inner[..6].copy_from_slice(&me.0);
        inner[6..12].copy_from_slice(&peer.0);
        let mut burst = header(1).to_vec();
        burst.extend_from_slice(&inner);
        let mut corrupt = burst.clone();
        let at = VxlanHeader::LEN + 14 + 20 + 6; // the UDP checksum: neither right nor partial
        corrupt[at] ^= 0x5a;
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let batch = RecvBatch::with_messages(&[(src, 1_000, &burst), (src, 1_000, &corrupt)]);
        let mut scratch = vec![0u8; offload::PLAIN_TAP_SCRATCH];
        let mut gro = Coalescer::new(4);
        for vnet in [false, true] {
            let view_table = SharedTable::new(table(1, true));
            let mut view = TableView::new(view_table);
            let mut to_tap = if vnet {
                ToTap::Gro {
                    gro: &mut gro,
                    scratch: &mut scratch,
                }
            } else {
                ToTap::Plain {
                    tap_mtu: Some(1450),
                    scratch: &mut scratch,
                }
            };
            let got = std::cell::RefCell::new(Vec::new());
            let mut counts = LocalCounts::default();
            let mut flows = FlowTap::new(&Arc::new(SharedFlows::default()), 0);
            deliver_batch(
                &batch,
                2,
                &mut view,
                &mut to_tap,
                &mut counts,
                &mut flows,
                &mut IngressAqm::new(None),
                IngressLocal::NONE,
                &|vh, f, _| {
                    assert_eq!(*vh, VirtioNetHdr::NONE);
                    got.borrow_mut().push(f.to_vec());
                },
            );
            let got = got.into_inner();
            assert_eq!(got.len(), 21, "vnet {vnet}");
            let mut joined = Vec::new();
            for f in &got {
                let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
                let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
                    panic!("not udp")
                };
                assert!(crate::wire::checksum::verifies(&f[14..34]));
                assert_eq!(usize::from(u.length()), f.len() - 34);
                joined.extend_from_slice(u.payload());
            }
            assert_eq!(joined, data);
            assert_eq!(counts.ingress_gso_frames, 1);
            assert_eq!(counts.udp_datagrams_received, 2);
            assert_eq!(counts.drops[DropReason::IngressMalformed as usize], 1);
            assert_eq!(counts.drops[DropReason::WrongVni as usize], 0);
        }
    }

    #[test]
    fn the_receive_batch_is_sized_in_bytes() {
        // Nothing brought: the fewest.
        assert_eq!(next_rx_messages(0, 0), RX_MIN_MESSAGES);
        // Whole 64 KiB GRO messages (a veth, a NIC that GROs): eight, as before.
        assert_eq!(next_rx_messages(8, 8 * 65_536), 8);
        assert_eq!(next_rx_messages(3, 3 * 60_000), 8);
        // Datagrams one by one (an underlay that does no GRO): as many as allowed.
        assert_eq!(next_rx_messages(8, 8 * 1_450), RX_MESSAGES);
        assert_eq!(next_rx_messages(64, 64 * 114), RX_MESSAGES);
        // Jumbo frames in between: about 512 KiB worth.
        assert_eq!(next_rx_messages(10, 10 * 9_050), 57);
        // Half whole, half single: the average decides.
        assert_eq!(next_rx_messages(8, 4 * 65_536 + 4 * 1_450), 15);
        // Empty messages (zero-length datagrams) do not divide by zero.
        assert_eq!(next_rx_messages(5, 0), RX_MESSAGES);
    }

    proptest::proptest! {
        #[test]
        fn the_receive_batch_stays_in_bounds_and_shrinks_with_size(
            messages in 1usize..=RX_MESSAGES,
            size in 0usize..=65_536,
            more in 0usize..=65_536,
        ) {
            let n = next_rx_messages(messages, messages * size);
            proptest::prop_assert!((RX_MIN_MESSAGES..=RX_MESSAGES).contains(&n));
            let larger = next_rx_messages(messages, messages * (size + more).min(65_536));
            proptest::prop_assert!(larger <= n);
        }
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
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let batch = RecvBatch::with_messages(&[(src, d.len(), &msg), (src, d.len(), &msg)]);
        let delivered = Cell::new(0);
        let mut counts = LocalCounts::default();
        let mut flows = FlowTap::new(&Arc::new(SharedFlows::default()), 0);
        let mut plain = ToTap::Plain {
            tap_mtu: None,
            scratch: &mut [],
        };
        deliver_batch(
            &batch,
            2,
            &mut view,
            &mut plain,
            &mut counts,
            &mut flows,
            &mut IngressAqm::new(None),
            IngressLocal::NONE,
            &|vh, f, _| {
                assert_eq!(*vh, VirtioNetHdr::NONE);
                assert_eq!(f, &d[VxlanHeader::LEN..]);
                delivered.set(delivered.get() + 1);
            },
        );
        assert_eq!(counts.udp_datagrams_received, 2 * per_message as u64);
        // with the old table up to the reload, with the new one after it
        assert_eq!(delivered.get(), every);
        assert_eq!(
            counts.drops[DropReason::UnknownSource as usize],
            (2 * per_message - every) as u64
        );
    }

    /// Delivers the first `n` messages of `batch` to a plain TAP; returns the frames
    /// emitted and the counts.
    fn deliver_plain(
        batch: &RecvBatch,
        n: usize,
        view: &mut TableView,
        aqm: &mut IngressAqm,
        probe_key: Option<path_probe::ProbeKey>,
    ) -> (Vec<Vec<u8>>, LocalCounts) {
        let got = std::cell::RefCell::new(Vec::new());
        let mut counts = LocalCounts::default();
        let mut flows = FlowTap::new(&Arc::new(SharedFlows::default()), 0);
        deliver_batch(
            batch,
            n,
            view,
            &mut ToTap::Plain {
                tap_mtu: None,
                scratch: &mut [],
            },
            &mut counts,
            &mut flows,
            aqm,
            IngressLocal {
                probe_key,
                ..IngressLocal::NONE
            },
            &|_, f, _| got.borrow_mut().push(f.to_vec()),
        );
        (got.into_inner(), counts)
    }

    /// A VXLAN datagram from the peer whose inner frame is its kernel's echo reply to
    /// a path probe tagged with `key` and sent at `sent_ms`, from `from` (the peer's
    /// VTEP address when genuine).
    fn probe_reply(key: &path_probe::ProbeKey, sent_ms: u64, from: Ipv4Addr) -> Vec<u8> {
        let f = path_probe::kernel_reply(&path_probe::probe_frame(
            ME.parse().unwrap(),
            PEER_MAC.parse().unwrap(),
            Ipv4Addr::new(10, 244, 9, 0),
            from,
            3,
            key,
            sent_ms,
        ));
        let mut d = header(1).to_vec();
        d.extend_from_slice(&f);
        d
    }

    /// The ingress thread takes the answer to one of its engine's recent probes (it
    /// never reaches the TAP) and the peer's path is proven; an answer under another
    /// key, from another address than the peer's VTEP, or to a probe sent longer ago
    /// than `MAX_REPLY_AGE_MS` (a replay), and every other frame, go on.
    #[test]
    fn probe_answers_are_taken_and_prove_the_path() {
        let key = path_probe::ProbeKey::random();
        let now = path_probe::clock_ms();
        let vtep = Ipv4Addr::new(10, 244, 1, 0);
        // The process's clock may be young here, so the answer out of its time window
        // claims a probe time ahead of it (path_probe's tests cover the old ones).
        let stale = probe_reply(&key, now + path_probe::MAX_REPLY_AGE_MS + 60_000, vtep);
        let other_key = probe_reply(&path_probe::ProbeKey::random(), now, vtep);
        let other_source = probe_reply(&key, now, Ipv4Addr::new(10, 244, 7, 0));
        let genuine = probe_reply(&key, now, vtep);
        let shared = SharedTable::new(table(1, true));
        let mut view = TableView::new(shared.clone());
        let plain = datagram();
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let path = || Arc::clone(shared.load().peer_counters(0).unwrap());
        let inner = |d: &[u8]| d[VxlanHeader::LEN..].to_vec();
        // First the answer out of its window alone: it goes on, and proves nothing.
        let batch = RecvBatch::with_messages(&[(src, stale.len(), &stale)]);
        let (got, counts) =
            deliver_plain(&batch, 1, &mut view, &mut IngressAqm::new(None), Some(key));
        assert_eq!(got, [inner(&stale)]);
        assert_eq!(counts.underlay_probes_answered, 0);
        assert!(!path().path.proven(path_probe::clock_ms()));
        let batch = RecvBatch::with_messages(&[
            (src, plain.len(), &plain),
            (src, other_key.len(), &other_key),
            (src, genuine.len(), &genuine),
            (src, other_source.len(), &other_source),
        ]);
        let (got, counts) =
            deliver_plain(&batch, 4, &mut view, &mut IngressAqm::new(None), Some(key));
        assert_eq!(
            got,
            [inner(&plain), inner(&other_key), inner(&other_source)]
        );
        assert_eq!(counts.underlay_probes_answered, 1);
        assert_eq!(counts.frames_delivered, 3);
        assert_eq!(counts.udp_datagrams_received, 4);
        assert!(path().path.proven(path_probe::clock_ms()));
    }

    const ME6: &str = "0e:5a:11:22:33:66";
    const PEER_MAC6: &str = "c6:d2:32:6f:8f:66";
    const PEER_IP6: &str = "fd00:64::12";

    /// [`table`] with IPv6 halves: ours (the IPv6 VtepMAC [`ME6`]) and the peer's.
    fn table6() -> ForwardingTable {
        let t = table(1, true);
        let mut local = *t.local();
        local.v6 = Some(crate::fib::LocalVtep6 {
            vtep_mac: ME6.parse().unwrap(),
            inner: None,
        });
        let mut peer = t.peers()[0];
        peer.v6 = Some(crate::fib::PeerVtep6 {
            vtep_mac: PEER_MAC6.parse().unwrap(),
            public_ip: PEER_IP6.parse().unwrap(),
            vtep_ip: "fd00:10:244:1::".parse().unwrap(),
        });
        ForwardingTable::new(local, [peer])
    }

    /// A VXLAN datagram from the peer's IPv6 half to `dst`: an inner IPv6 UDP packet
    /// with this traffic class.
    fn datagram6(dst: &str, tclass: u8) -> Vec<u8> {
        let mut d = header(1).to_vec();
        let dst: crate::wire::MacAddr = dst.parse().unwrap();
        let src: crate::wire::MacAddr = PEER_MAC6.parse().unwrap();
        d.extend_from_slice(&dst.0);
        d.extend_from_slice(&src.0);
        d.extend_from_slice(&[0x86, 0xdd]);
        d.extend_from_slice(&[0x60 | (tclass >> 4), tclass << 4, 0, 0, 0, 8, 17, 64]);
        d.extend_from_slice(&"fd00:10:244:1::5".parse::<Ipv6Addr>().unwrap().octets());
        d.extend_from_slice(&"fd00:10:244:2::5".parse::<Ipv6Addr>().unwrap().octets());
        d.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
        d
    }

    /// VXLAN over IPv6 in flannel's layout: from a peer's PublicIPv6, to this node's
    /// IPv6 VtepMAC. Rewritten in place by the receive loop, or (when it was not)
    /// copied, every frame reaches the TAP addressed to the TAP's MAC, counted to the
    /// peer; an outer CE mark passes on to the copy too. From an IPv6 source no peer
    /// holds: counted received, dropped as unknown; the IPv4 messages around are
    /// delivered as ever.
    #[test]
    fn vxlan_over_ipv6_reaches_the_tap_addressed_to_it() {
        let shared = SharedTable::new(table6());
        let mut view = TableView::new(shared.clone());
        let me: crate::wire::MacAddr = ME.parse().unwrap();
        let d4 = datagram();
        let d6 = datagram6(ME6, 0b10);
        let two6 = d6.repeat(2);
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let src6: SocketAddr = format!("[{PEER_IP6}]:40000").parse().unwrap();
        let stranger: SocketAddr = "[fd00:64::99]:40000".parse().unwrap();
        let batch = RecvBatch::with_messages(&[
            (src, 0, &d4),
            (src6, d6.len(), &two6),
            (stranger, 0, &d6),
            (src, 0, &d4),
        ]);
        // Not rewritten in place: each IPv6 frame is copied with the TAP's MAC.
        let (got, counts) = deliver_plain(&batch, 4, &mut view, &mut IngressAqm::new(None), None);
        assert_eq!(got.len(), 4, "{counts:?}");
        for f in &got {
            assert_eq!(&f[..6], &me.0);
        }
        assert_eq!(
            &got[1][..],
            &{
                let mut f = d6[VxlanHeader::LEN..].to_vec();
                f[..6].copy_from_slice(&me.0);
                f
            }[..]
        );
        assert_eq!(counts.drops[DropReason::UnknownSource as usize], 1);
        assert_eq!(counts.drops.iter().sum::<u64>(), 1);
        assert_eq!(counts.udp_datagrams_received, 5);
        view.publish_peers();
        let p = shared.load().peer_counters(0).unwrap().snapshot();
        assert_eq!(
            p.rx_packets, 4,
            "both families count to the one peer: {p:?}"
        );
        // Rewritten in place first (what the receive loop does): the same frames, and
        // nothing left to copy.
        let mut batch = batch;
        let from: crate::wire::MacAddr = ME6.parse().unwrap();
        assert_eq!(batch.rewrite_inner_dst(1, from.0, me.0), 2);
        assert_eq!(batch.rewrite_inner_dst(2, from.0, me.0), 1);
        let (again, _) = deliver_plain(&batch, 4, &mut view, &mut IngressAqm::new(None), None);
        assert_eq!(again, got);
        // An outer CE over an ECT(0) inner packet: CE in the copy to the TAP's MAC.
        let mut ce = RecvBatch::with_messages(&[(src6, 0, &d6)]);
        ce.set_tos(&[ecn::CE]);
        let (marked, counts) = deliver_plain(&ce, 1, &mut view, &mut IngressAqm::new(None), None);
        assert_eq!(counts.ecn_marks_passed_on, 1);
        assert_eq!(&marked[0][..6], &me.0);
        assert_eq!(ecn::of_frame(&marked[0]), Some(ecn::CE));
        // To another MAC: not for us, as over IPv4.
        let other = datagram6(PEER_MAC6, 0);
        let b = RecvBatch::with_messages(&[(src6, 0, &other)]);
        let (none, counts) = deliver_plain(&b, 1, &mut view, &mut IngressAqm::new(None), None);
        assert!(none.is_empty());
        assert_eq!(counts.drops[DropReason::NotForUs as usize], 1);
    }

    /// A VXLAN datagram from the peer carrying an IPv4 UDP packet with this ECN field.
    fn datagram_ecn(ecn: u8) -> Vec<u8> {
        let me: crate::wire::MacAddr = ME.parse().unwrap();
        let peer: crate::wire::MacAddr = PEER_MAC.parse().unwrap();
        let mut inner = Vec::new();
        etherparse::PacketBuilder::ethernet2(peer.0, me.0)
            .ipv4([10, 244, 1, 5], [10, 244, 0, 5], 64)
            .udp(5000, 5001)
            .write(&mut inner, &[0x5a; 100])
            .unwrap();
        inner[15] = (inner[15] & !3) | ecn;
        inner[24..26].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum::checksum(&inner[14..34]);
        inner[24..26].copy_from_slice(&c.to_be_bytes());
        let mut d = header(1).to_vec();
        d.extend_from_slice(&inner);
        d
    }

    /// A congestion signal marks an ECN-capable packet CE (and its header still checks)
    /// and drops one that is not; other frames pass untouched.
    #[test]
    fn congestion_marks_ect_and_drops_the_rest() {
        let mut view = TableView::new(SharedTable::new(table(1, true)));
        let (ect, not_ect) = (datagram_ecn(0b10), datagram_ecn(0));
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let two_ect = [ect.clone(), ect.clone()].concat();
        let batch = RecvBatch::with_messages(&[
            (src, ect.len(), &two_ect),
            (src, 0, &not_ect),
            (src, 0, &not_ect),
        ]);
        let mut aqm = IngressAqm::new(Some(CodelConfig::DEFAULT));
        // Messages 0 and 1 carry a signal, 2 does not.
        aqm.pending = 0b011;
        let (got, counts) = deliver_plain(&batch, 3, &mut view, &mut aqm, None);
        let inner = |d: &[u8]| d[VxlanHeader::LEN..].to_vec();
        assert_eq!(
            got.len(),
            3,
            "the first message's two frames and the third message's"
        );
        // The first frame of message 0: CE, checksum still good, nothing else changed.
        let mut want = inner(&ect);
        want[15] |= 0b11;
        assert!(crate::wire::checksum::verifies(&got[0][14..34]));
        assert_eq!(got[0][..24], want[..24]);
        assert_eq!(got[0][26..], want[26..]);
        assert_eq!(got[1], inner(&ect), "one signal per message");
        assert_eq!(got[2], inner(&not_ect));
        assert_eq!(counts.aqm_ce_marked, 1);
        assert_eq!(counts.drops[DropReason::Congestion as usize], 1);
        assert_eq!(counts.frames_delivered, 3);
        assert_eq!(aqm.pending, 0);
    }

    /// RFC 6040 on receive: an outer CE reaches an ECN-capable inner packet (its header
    /// still checks), an outer ECT(1) turns an inner ECT(0) into ECT(1), an outer CE on
    /// a Not-ECT inner is dropped and counted, and an outer Not-ECT or ECT(0) changes
    /// nothing; a CE passed on and a congestion signal on the same frame make one CE.
    #[test]
    fn outer_ecn_is_decapsulated_as_rfc_6040_says() {
        use crate::wire::ecn::{CE, ECT_0, ECT_1, NOT_ECT};
        let mut view = TableView::new(SharedTable::new(table(1, true)));
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let inner = |d: &[u8]| d[VxlanHeader::LEN..].to_vec();
        let with = |d: &[u8], e: u8| {
            let mut f = inner(d);
            assert!(crate::wire::ecn::set_in_frame(&mut f, e));
            f
        };
        let (ect0, ect1, not_ect) = (datagram_ecn(ECT_0), datagram_ecn(ECT_1), datagram_ecn(0));
        let cases: [(&[u8], u8); 6] = [
            (&ect0, CE),
            (&ect1, CE),
            (&ect0, ECT_1),
            (&not_ect, CE),
            (&not_ect, ECT_0),
            (&ect0, NOT_ECT),
        ];
        let mut batch =
            RecvBatch::with_messages(&cases.iter().map(|(d, _)| (src, 0, *d)).collect::<Vec<_>>());
        batch.set_tos(&cases.iter().map(|&(_, e)| 0xb8 | e).collect::<Vec<_>>());
        let (got, counts) = deliver_plain(&batch, 6, &mut view, &mut IngressAqm::new(None), None);
        assert_eq!(
            got,
            [
                with(&ect0, CE),
                with(&ect1, CE),
                with(&ect0, ECT_1),
                inner(&not_ect),
                inner(&ect0),
            ]
        );
        for f in &got {
            assert!(crate::wire::checksum::verifies(&f[14..34]));
        }
        assert_eq!(counts.ecn_marks_passed_on, 2);
        assert_eq!(counts.drops[DropReason::CeOnNotEct as usize], 1);
        assert_eq!(counts.frames_delivered, 5);

        // Passed on and signalled by CoDel at once: one CE, counted by both.
        let mut batch = RecvBatch::with_messages(&[(src, 0, &ect0)]);
        batch.set_tos(&[CE]);
        let mut aqm = IngressAqm::new(Some(CodelConfig::DEFAULT));
        aqm.pending = 0b1;
        let (got, counts) = deliver_plain(&batch, 1, &mut view, &mut aqm, None);
        assert_eq!(got, [with(&ect0, CE)]);
        assert_eq!((counts.ecn_marks_passed_on, counts.aqm_ce_marked), (1, 1));
    }

    /// CoDel sees the wait the kernel's time stamps show: old messages in a queue that
    /// is not drained get a signal once the delay has lasted an interval.
    #[test]
    fn judging_reads_the_time_stamps() {
        let src = SocketAddr::V4(SocketAddrV4::new(PEER_IP, 40_000));
        let d = datagram();
        let mut batch = RecvBatch::with_messages(&[(src, 0, &d), (src, 0, &d)]);
        let cfg = CodelConfig {
            target_ns: 1_000_000,
            interval_ns: 2_000_000,
        };
        let mut aqm = IngressAqm::new(Some(cfg));
        // No time stamps: no wait seen, no signal ever.
        for _ in 0..5 {
            aqm.judge(&batch, 2, false);
            assert_eq!(aqm.pending, 0);
            std::thread::sleep(Duration::from_millis(1));
        }
        // Stamped 50 ms ago, queue never drained: signals after 2 ms above target.
        let old = unix_ns() - 50_000_000;
        batch.set_stamps(&[Some(old), Some(old)]);
        let mut signalled = false;
        for _ in 0..10 {
            aqm.judge(&batch, 2, false);
            signalled |= aqm.pending != 0;
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(signalled);
        // Stamps from the future (the clock stepped back since): no wait, no signal.
        let future = unix_ns() + 1_000_000_000;
        batch.set_stamps(&[Some(future), Some(future)]);
        aqm.judge(&batch, 2, false);
        assert_eq!(aqm.pending, 0);
        // Off: nothing.
        let mut off = IngressAqm::new(None);
        batch.set_stamps(&[Some(old), Some(old)]);
        off.judge(&batch, 2, false);
        assert_eq!(off.pending, 0);
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
            udp_rx: UdpRx::open((Ipv4Addr::LOCALHOST, 0).into(), 1 << 16, false).unwrap(),
            udp_rx6: None,
            table: SharedTable::new(table(1, true)),
            counters: Arc::clone(counters),
            flows: Arc::new(SharedFlows::default()),
            aqm: None,
            priority: Default::default(),
            busy_poll: BusyPoll::OFF,
            underlay: None,
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

    /// A thread that cannot set the scheduling asked for stops the start, and every
    /// other thread with it; the error says what was asked.
    #[test]
    fn a_scheduling_the_kernel_refuses_stops_the_start() {
        let counters = Arc::new(Counters::default());
        let (mut cfg, _peers) = test_config(2, &counters);
        // Real-time priority 0 is not a SCHED_FIFO priority, for root either.
        cfg.priority = ThreadPriority::Fifo(0);
        let err = Engine::start(cfg).expect_err("the kernel refuses fifo:0");
        assert!(
            err.to_string()
                .contains("cannot set fifo:0 for an engine thread"),
            "{err}"
        );
        assert_eq!(Arc::strong_count(&counters), 1, "a worker still runs");
    }

    /// Busy polling returns as soon as there is something to read, or the engine is
    /// stopping, and gives up after its budget. (A 60 s budget that is not cut short
    /// fails the assertion, after a minute, rather than passing.)
    #[test]
    fn busy_polling_ends_on_traffic_on_a_stop_or_after_its_budget() {
        let long = Duration::from_secs(60);
        let mut log = RateLimitedLog::new("test");
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let wake = Wake::new().unwrap();

        // Nothing comes: false once the budget has passed.
        let t = Instant::now();
        assert!(!spin_until_ready(
            ours.as_fd(),
            &wake,
            Duration::from_millis(5),
            &mut log
        ));
        assert!(t.elapsed() >= Duration::from_millis(5));

        // Already there.
        theirs.send(b"frame").unwrap();
        assert!(spin_until_ready(ours.as_fd(), &wake, long, &mut log));
        let mut buf = [0u8; 16];
        assert_eq!(ours.recv(&mut buf).unwrap(), 5);

        // Comes while the thread polls.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            theirs.send(b"later").unwrap();
            theirs
        });
        assert!(spin_until_ready(ours.as_fd(), &wake, long, &mut log));
        let _theirs = sender.join().unwrap();

        // A stop (the wake eventfd) ends it with nothing to read.
        assert_eq!(ours.recv(&mut buf).unwrap(), 5);
        wake.signal().unwrap();
        assert!(spin_until_ready(ours.as_fd(), &wake, long, &mut log));
    }

    /// A thread whose buffers were written waits at most [`RELEASE_PAGES_AFTER`] and
    /// then says it is quiet (once: the caller releases and sleeps without a timeout);
    /// traffic or a stop inside that time wakes it as before.
    #[test]
    fn a_touched_thread_is_told_it_went_quiet_after_the_release_delay() {
        let mut log = RateLimitedLog::new("test");
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let wake = Wake::new().unwrap();
        let mut gate = SpinGate::default();
        let bursting = Bursting::default();
        let mut idle_for = |touched| {
            idle(
                ours.as_fd(),
                &wake,
                BusyPoll::OFF,
                (&mut gate, &bursting),
                touched,
                &mut log,
            )
        };
        let t = Instant::now();
        let woke = idle_for(true);
        assert_eq!(woke, Woke::Quiet);
        assert!(t.elapsed() >= RELEASE_PAGES_AFTER, "{:?}", t.elapsed());

        // Traffic within the delay: ready, not quiet.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            theirs.send(b"frame").unwrap();
            theirs
        });
        let woke = idle_for(true);
        assert_eq!(woke, Woke::Ready);
        let _theirs = sender.join().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ours.recv(&mut buf).unwrap(), 5);

        // Untouched buffers: no timeout at all, only traffic or the stop wakes it.
        wake.signal().unwrap();
        let woke = idle_for(false);
        assert_eq!(woke, Woke::Ready);
    }

    /// An engine that busy-polls forwards what comes while it polls and after it has
    /// gone back to sleep, and stops at once (the stop does not wait out a budget).
    #[test]
    fn a_busy_polling_engine_forwards_and_stops() {
        let counters = Arc::new(Counters::default());
        let (mut cfg, peers) = test_config(1, &counters);
        cfg.busy_poll = BusyPoll::always(Duration::from_millis(30));
        let engine = Engine::start(cfg).unwrap();
        assert_eq!(
            engine.status().busy_poll,
            BusyPoll::always(Duration::from_millis(30))
        );
        let frame = egress_frame(40_000);
        // Gaps inside the budget (caught while polling) and beyond it (asleep).
        for (i, gap_ms) in [0u64, 5, 5, 80, 5, 80].into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(gap_ms));
            peers[0].send(&frame).unwrap();
            let t = Instant::now();
            while counters.snapshot().tap_frames_read < i as u64 + 1 {
                assert!(t.elapsed() < Duration::from_secs(10), "frame {i} not read");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        engine.stop();
        assert_eq!(Arc::strong_count(&counters), 1, "a worker still runs");

        // A budget above the maximum is refused before any thread starts.
        let (mut cfg, _peers) = test_config(1, &counters);
        cfg.busy_poll = BusyPoll::always(MAX_BUSY_POLL + Duration::from_millis(1));
        let err = Engine::start(cfg).expect_err("too long a budget");
        assert!(err.to_string().contains("busy-polling budget"), "{err}");
        assert_eq!(Arc::strong_count(&counters), 1);
    }

    /// A 1,400-byte IPv4/TCP frame from pod `10.244.1.2:<sport>` to a pod behind the
    /// peer, addressed to the peer's VtepMAC (as the kernel writes it to the TAP).
    fn egress_frame(sport: u16) -> Vec<u8> {
        let peer: crate::wire::MacAddr = PEER_MAC.parse().unwrap();
        let me: crate::wire::MacAddr = ME.parse().unwrap();
        let mut f = Vec::with_capacity(1400);
        f.extend_from_slice(&peer.0);
        f.extend_from_slice(&me.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let ip_len = (1400 - 14) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f.resize(1400, 0xab);
        f
    }

    /// Load for instruction counts (callgrind): the engine on a socket pair and
    /// loopback UDP moves `VXMESH_LOAD_FRAMES` (20,000) 1,400-byte frames each way,
    /// over 4 flows. Run in release under callgrind and read the inclusive cost of
    /// `EgressWorker::run` and `IngressWorker::run` (docs/benchmarks.md, "Counting cost"):
    /// `cargo test --release -p vxmesh-dataplane --lib engine_load -- --ignored --nocapture`
    #[test]
    #[ignore = "a load for measurements, not a check: run by hand under callgrind"]
    fn engine_load() {
        let frames: usize = std::env::var("VXMESH_LOAD_FRAMES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let counters = Arc::new(Counters::default());
        // Egress goes to a socket nobody reads (the kernel drops what does not fit).
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink_port = sink.local_addr().unwrap().port();
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let tap = Tap::over_file(
            File::from(OwnedFd::from(ours)),
            IfName::new("load0").unwrap(),
        );
        let udp_rx = UdpRx::open((Ipv4Addr::LOCALHOST, 0).into(), 4 << 20, false).unwrap();
        let rx_addr = udp_rx.local_addr().unwrap();
        let table = ForwardingTable::new(
            LocalVtep {
                vtep_mac: ME.parse().unwrap(),
                vni: Vni::new(1).unwrap(),
                port: sink_port,
                inner: None,
                v6: None,
            },
            [PeerVtep {
                vtep_mac: PEER_MAC.parse().unwrap(),
                public_ip: Ipv4Addr::LOCALHOST,
                vtep_ip: Ipv4Addr::new(10, 244, 2, 0),
                v6: None,
            }],
        );
        let engine = Engine::start(EngineConfig {
            tap: vec![tap],
            udp_tx: UdpTx::open(Ipv4Addr::LOCALHOST, 2, 4 << 20).unwrap(),
            udp_rx,
            udp_rx6: None,
            table: SharedTable::new(table),
            counters: Arc::clone(&counters),
            flows: Arc::new(SharedFlows::default()),
            aqm: None,
            priority: Default::default(),
            busy_poll: BusyPoll::OFF,
            underlay: None,
        })
        .unwrap();
        let theirs = Arc::new(theirs);
        // Drain what ingress writes to the "TAP".
        let reader = {
            let t = Arc::clone(&theirs);
            t.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while t.recv(&mut buf).is_ok() {}
            })
        };
        let flows: Vec<Vec<u8>> = (0..4).map(|i| egress_frame(40_000 + i)).collect();
        let mut datagram = header(1).to_vec();
        let mut inner = egress_frame(5201);
        inner[..6].copy_from_slice(&ME.parse::<crate::wire::MacAddr>().unwrap().0);
        inner[6..12].copy_from_slice(&PEER_MAC.parse::<crate::wire::MacAddr>().unwrap().0);
        datagram.extend_from_slice(&inner);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..frames {
            theirs.send(&flows[i % flows.len()]).unwrap();
            tx.send_to(&datagram, rx_addr).unwrap();
            if i % 64 == 63 {
                // let the engine keep up rather than the kernel dropping datagrams
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        wait_for_counts(&counters, frames);
        engine.stop();
        reader.join().unwrap();
        let c = counters.snapshot();
        println!(
            "engine_load: egress {} frames {} bytes; ingress {} datagrams {} bytes",
            c.tap_frames_read, c.tap_bytes_read, c.udp_datagrams_received, c.udp_bytes_received
        );
    }

    fn wait_for_counts(counters: &Counters, frames: usize) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(120) {
            let c = counters.snapshot();
            if c.tap_frames_read as usize >= frames
                && c.udp_datagrams_received as usize >= frames * 9 / 10
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
