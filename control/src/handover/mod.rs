//! Handing the userspace dataplane from a running vxmeshd to its successor without
//! losing a packet, and getting it back from systemd's descriptor store after a
//! restart.
//!
//! **Live handover.** Every vxmeshd listens on the abstract unix socket
//! `vxmesh/handover/<tap>` ([`socket_name`]). Abstract names live in the network
//! namespace, exactly where the TAP lives, vanish with the process (nothing stale
//! on disk) and can be bound by one process only — binding the name is how a
//! vxmeshd claims the node's TAP. A new vxmeshd that finds the name taken connects
//! and says `Hello` (protocol versions, its [`Fingerprint`]); both ends check the
//! other's credentials (`SO_PEERCRED`: our user or root). If the running one finds
//! it a valid successor ([`decide::answer_hello`]) it sends an `Offer`: its state
//! (lease, forwarding table, offloads) with the TAP queues, the UDP sockets and this
//! listener attached (`SCM_RIGHTS`: the same open files). The new one starts its
//! threads on them and says `Started`; only then does the old one stop its threads
//! (each flushes its batch) and say `Stopped`, and exit 0 without touching the TAP,
//! routes or lease. Between `Started` and `Stopped` both read the same queues and
//! sockets — each packet is read by exactly one — so nothing is dropped. The lease
//! id travels too: the new one keeps the same etcd lease alive.
//!
//! A build that speaks no common protocol version gets `Incompatible`, asks the
//! old one to `Release` (stop and exit, leaving the persistent TAP) and starts cold;
//! a conflicting newcomer (another network, VNI, port, public IP, queue count,
//! dataplane) gets `Refuse` and exits with the reason, the old one keeps running.
//!
//! **systemd.** `systemctl restart` stops the old process before starting the new
//! one, so there is no one to talk to. Instead, a vxmeshd under systemd stores its
//! descriptors in the service's descriptor store (`FDSTORE=1`), plus a memory file
//! with its state ([`StateFile`], refreshed while running, final at stop). After
//! the restart systemd passes them back (`LISTEN_FDS`); the kernel kept queueing
//! packets on them meanwhile, so the new process reads what arrived while no one
//! did. [`decide::judge_stored`] decides whether they can be used; if not, they are
//! dropped from the store and the start is cold.
//!
//! The codec and the decisions are pure ([`wire`], [`decide`]); this module is the
//! socket shell. Descriptor passing itself is `vxmesh_dataplane::sys::fdpass`.

pub mod decide;
pub mod node;
pub mod wire;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

use crate::sd_notify::Notifier;
use crate::state::AgentState;
use decide::{HelloAnswer, StoredVerdict};
use vxmesh_dataplane::ifname::IfName;
use vxmesh_dataplane::sys::fdpass;
use vxmesh_dataplane::wire::MacAddr;
use wire::{DataplaneState, FdRole, Fingerprint, Frame, Message, Versions};

/// Name of the state file in systemd's descriptor store.
pub const STATE_FD_NAME: &str = "vxmesh-state";
/// How long either side waits for the other's next message.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Test hook: makes this build claim protocol version N only, to test what two
/// builds that do not share a version do. Never set it in production.
pub const TEST_VERSION_ENV: &str = "VXMESH_TEST_HANDOVER_VERSION";

/// The abstract socket a vxmeshd for `tap` listens on (no leading NUL here).
pub fn socket_name(tap: &IfName) -> String {
    format!("vxmesh/handover/{tap}")
}

/// This build: the crate version, and `+<id>` when built with `VXMESH_BUILD_ID`.
pub fn build_id() -> String {
    match option_env!("VXMESH_BUILD_ID") {
        Some(id) if !id.is_empty() => format!("{}+{id}", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The protocol versions we advertise ([`wire::VERSIONS`], or the test hook's).
pub fn our_versions() -> Versions {
    match std::env::var(TEST_VERSION_ENV)
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
    {
        Some(v) => {
            tracing::warn!("{TEST_VERSION_ENV}={v}: claiming handover protocol version {v} (a test of mixed builds)");
            Versions { min: v, max: v }
        }
        None => wire::VERSIONS,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Who we are, for the handshake.
#[derive(Debug, Clone)]
pub struct Identity {
    pub fingerprint: Fingerprint,
    pub versions: Versions,
    pub build: String,
    pub tap: IfName,
}

/// Second descriptors of a running userspace dataplane.
#[derive(Debug)]
pub struct DataplaneFds {
    /// TAP queues, queue 0 first.
    pub taps: Vec<OwnedFd>,
    pub udp_rx: OwnedFd,
    pub udp_tx: Vec<OwnedFd>,
    /// The VXLAN-over-IPv6 receive socket (`--ipv6-dataplane userspace`).
    pub udp_rx6: Option<OwnedFd>,
}

impl DataplaneFds {
    /// Every descriptor with its role, in the order they travel.
    pub fn with_roles(&self) -> Vec<(FdRole, BorrowedFd<'_>)> {
        let mut v: Vec<(FdRole, BorrowedFd<'_>)> = self
            .taps
            .iter()
            .enumerate()
            .map(|(i, f)| (FdRole::Tap(i as u8), f.as_fd()))
            .collect();
        v.push((FdRole::UdpRx, self.udp_rx.as_fd()));
        if let Some(fd) = &self.udp_rx6 {
            v.push((FdRole::UdpRx6, fd.as_fd()));
        }
        v.extend(
            self.udp_tx
                .iter()
                .enumerate()
                .map(|(i, f)| (FdRole::UdpTx(i as u8), f.as_fd())),
        );
        v
    }

    /// Sorts received descriptors by role; the listener, if one came, apart.
    /// `Err` names what is missing or out of place.
    fn from_roles(
        pairs: impl IntoIterator<Item = (FdRole, OwnedFd)>,
    ) -> Result<(DataplaneFds, Option<OwnedFd>), String> {
        let mut taps = Vec::new();
        let mut tx = Vec::new();
        let mut rx = None;
        let mut rx6 = None;
        let mut listener = None;
        for (role, fd) in pairs {
            match role {
                FdRole::Tap(i) => taps.push((i, fd)),
                FdRole::UdpTx(i) => tx.push((i, fd)),
                FdRole::UdpRx if rx.is_none() => rx = Some(fd),
                FdRole::UdpRx6 if rx6.is_none() => rx6 = Some(fd),
                FdRole::Listener if listener.is_none() => listener = Some(fd),
                r => return Err(format!("{} twice", r.store_name())),
            }
        }
        taps.sort_by_key(|(i, _)| *i);
        tx.sort_by_key(|(i, _)| *i);
        if taps.is_empty()
            || taps
                .iter()
                .enumerate()
                .any(|(n, (i, _))| usize::from(*i) != n)
        {
            return Err(format!(
                "TAP queues {:?} are not 0..n",
                taps.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            ));
        }
        let udp_rx = rx.ok_or("no receive socket")?;
        Ok((
            DataplaneFds {
                taps: taps.into_iter().map(|(_, f)| f).collect(),
                udp_rx,
                udp_tx: tx.into_iter().map(|(_, f)| f).collect(),
                udp_rx6: rx6,
            },
            listener,
        ))
    }

    fn count(&self) -> usize {
        self.taps.len() + 1 + self.udp_tx.len() + usize::from(self.udp_rx6.is_some())
    }
}

/// How this process's dataplane came to be (for logs, /metrics and /v1/status).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StartInfo {
    /// `cold`, `handover` (from a running vxmeshd) or `fd-store` (from systemd).
    pub how: &'static str,
    pub from_pid: Option<u32>,
    pub from_build: Option<String>,
    pub protocol_version: Option<u16>,
    /// Why the start was cold although something was there to take over.
    pub cold_reason: Option<String>,
    /// A cold start attached to the TAP an earlier run left (after a crash or stop).
    pub adopted_tap: bool,
    pub fds_taken_over: u32,
    /// Time with no vxmeshd reading the dataplane: 0 for a live handover; for a
    /// restart through systemd's store, from the old threads' stop to ours starting
    /// (the kernel queued packets meanwhile). Unknown after a crash.
    pub gap_ms: Option<f64>,
    /// Live handover: how long both processes read the same queues.
    pub overlap_ms: Option<f64>,
    /// Live handover: how long the old threads took to stop.
    pub old_stop_ms: Option<f64>,
    /// Handovers since the dataplane last started cold (this one included).
    pub handovers_total: u32,
    /// Cold starts of this dataplane (as far as the handed state remembers).
    pub cold_starts_total: u32,
}

/// What a starting vxmeshd takes over.
#[derive(Debug)]
pub struct Inherited {
    pub state: DataplaneState,
    pub fds: DataplaneFds,
    /// `handover` or `fd-store`.
    pub how: &'static str,
    pub version: u16,
    /// The live handover's connection (to say `Started` and hear `Stopped`).
    pub session: Option<Session>,
}

/// The new side of a live handover after the offer: lets the old process stop.
#[derive(Debug)]
pub struct Session(Conn);

/// The result of [`acquire`].
#[derive(Debug)]
pub struct Acquired {
    pub inherited: Option<Inherited>,
    /// Our listener (bound, or handed over); `None` until the old process exits
    /// when it came without one.
    pub listener: Option<UnixListener>,
    pub cold_reason: Option<String>,
    /// Lineage to continue when starting cold after dropping a state.
    pub handovers: u32,
    pub cold_starts: u32,
    /// The descriptor store's state file, when its state was adopted.
    pub state_file: Option<File>,
    /// Stale descriptors were dropped from systemd's store (they may take a moment
    /// to be closed: retry a busy TAP or port briefly).
    pub dropped_store: bool,
}

/// Finds out what to take over, in this order: the descriptors systemd passed
/// (`stored`, from `LISTEN_FDS`); else a running vxmeshd on our socket; else
/// nothing (cold). Blocking: run it off the async runtime.
pub fn acquire(
    me: &Identity,
    stored: Vec<(String, OwnedFd)>,
    notifier: Option<&Notifier>,
) -> anyhow::Result<Acquired> {
    let mut out = Acquired {
        inherited: None,
        listener: None,
        cold_reason: None,
        handovers: 0,
        cold_starts: 0,
        state_file: None,
        dropped_store: false,
    };
    if !stored.is_empty() {
        let names: Vec<String> = stored.iter().map(|(n, _)| n.clone()).collect();
        match adopt_stored(me, stored) {
            Ok((inh, file)) => {
                tracing::info!(
                    from_pid = inh.state.pid, from_build = %inh.state.build, fds = inh.fds.count(),
                    "taking the dataplane back from systemd's descriptor store"
                );
                out.inherited = Some(inh);
                out.state_file = Some(file);
            }
            Err(d) => {
                tracing::warn!(
                    "cold start: cannot use what systemd's descriptor store kept: {}",
                    d.reason
                );
                if let Some(n) = notifier {
                    for name in &names {
                        if let Err(e) = n.remove_fds(name) {
                            tracing::warn!(error = %e, name, "cannot drop a descriptor from systemd's store");
                        }
                    }
                }
                out.dropped_store = true;
                out.cold_reason = Some(d.reason);
                out.handovers = d.handovers;
                out.cold_starts = d.cold_starts;
            }
        }
    }
    let name = socket_name(&me.tap);
    match bind(&name) {
        Ok(l) => out.listener = Some(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if out.inherited.is_some() {
                bail!("another vxmeshd listens on @{name} although systemd handed this one the dataplane of {}; stop it", me.tap);
            }
            match talk_to_running(me, &name)? {
                Talk::Took(inh, listener) => {
                    out.inherited = Some(*inh);
                    out.listener = listener;
                }
                Talk::Released(reason) => {
                    out.cold_reason = Some(reason);
                    out.listener = Some(bind_when_free(&name, STEP_TIMEOUT)?);
                }
                Talk::Gone => out.listener = Some(bind_when_free(&name, STEP_TIMEOUT)?),
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on @{name}")),
    }
    Ok(out)
}

fn addr(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

fn bind(name: &str) -> io::Result<UnixListener> {
    UnixListener::bind_addr(&addr(name)?)
}

/// Binds `name`, waiting up to `limit` for a previous owner to exit.
pub fn bind_when_free(name: &str, limit: Duration) -> anyhow::Result<UnixListener> {
    let t = Instant::now();
    loop {
        match bind(name) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && t.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "@{name} is still taken after {limit:?}: the previous vxmeshd did not exit"
                    )
                })
            }
        }
    }
}

/// Whether a vxmeshd listens on the handover socket for `tap` here (for
/// `vxmeshctl cleanup-tap`).
pub fn running_agent(tap: &IfName) -> Option<u32> {
    let s = UnixStream::connect_addr(&addr(&socket_name(tap)).ok()?).ok()?;
    fdpass::peer_cred(s.as_fd()).ok().map(|c| c.pid)
}

/// A framed connection: messages out with descriptors, messages in with the
/// descriptors that came while reading them.
#[derive(Debug)]
struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
    peer_pid: u32,
}

impl Conn {
    fn new(s: UnixStream) -> anyhow::Result<Conn> {
        let cred = fdpass::peer_cred(s.as_fd()).context("SO_PEERCRED")?;
        let me = fdpass::euid();
        if cred.uid != me && cred.uid != 0 {
            bail!(
                "handover peer pid {} runs as uid {}, not as us ({me}) or root",
                cred.pid,
                cred.uid
            );
        }
        s.set_read_timeout(Some(STEP_TIMEOUT))?;
        s.set_write_timeout(Some(STEP_TIMEOUT))?;
        Ok(Conn {
            s,
            buf: Vec::new(),
            peer_pid: cred.pid,
        })
    }

    fn send(&mut self, m: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let b = m.encode();
        let n = fdpass::send_with_fds(self.s.as_fd(), &b, fds)?;
        if n < b.len() {
            self.s.write_all(&b[n..])?;
        }
        Ok(())
    }

    /// The next frame's bytes, and any descriptors that arrived with it.
    fn recv_frame(&mut self) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut fds = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((_, used)) = Frame::parse(&self.buf)? {
                let frame: Vec<u8> = self.buf.drain(..used).collect();
                return Ok((frame, fds));
            }
            let r = fdpass::recv_with_fds(self.s.as_fd(), &mut chunk).map_err(|e| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    anyhow::anyhow!("no answer within {STEP_TIMEOUT:?}")
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            fds.extend(r.fds);
            if r.len == 0 {
                bail!("the other vxmeshd closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..r.len]);
        }
    }

    fn recv(&mut self) -> anyhow::Result<(Message, Vec<OwnedFd>)> {
        let (frame, fds) = self.recv_frame()?;
        let (f, _) = Frame::parse(&frame)?.context("internal: incomplete frame")?;
        Ok((Message::decode(f)?, fds))
    }
}

enum Talk {
    Took(Box<Inherited>, Option<UnixListener>),
    Released(String),
    /// The old one went away before answering (it was exiting): bind when free.
    Gone,
}

/// The new side of a live handover, up to having the descriptors.
fn talk_to_running(me: &Identity, name: &str) -> anyhow::Result<Talk> {
    let s = match UnixStream::connect_addr(&addr(name)?) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Talk::Gone),
        Err(e) => return Err(e).with_context(|| format!("cannot connect to @{name}")),
    };
    let mut c = Conn::new(s)?;
    let old = c.peer_pid;
    tracing::info!(pid = old, tap = %me.tap, "a vxmeshd runs this TAP; asking it to hand over");
    c.send(
        &Message::Hello {
            versions: me.versions,
            pid: std::process::id(),
            build: me.build.clone(),
            fingerprint: me.fingerprint.clone(),
        },
        &[],
    )?;
    let (msg, fds) = match c.recv() {
        Ok(x) => x,
        Err(e) if e.to_string().contains("closed the connection") => return Ok(Talk::Gone),
        Err(e) => return Err(e.context(format!("handover from vxmeshd pid {old}"))),
    };
    match msg {
        Message::Refuse { reason } => bail!(
            "vxmeshd pid {old} runs the dataplane of {} and refused to hand it over: {reason}",
            me.tap
        ),
        Message::Incompatible { versions, build } => {
            let reason = format!(
                "vxmeshd pid {old} (build {build}) speaks handover protocol {versions}, this build ({}) {}: it cannot hand over",
                me.build, me.versions
            );
            tracing::warn!("{reason}; asking it to release the dataplane and starting cold (traffic pauses until this one forwards)");
            c.send(&Message::Release, &[])?;
            match c.recv()? {
                (Message::Released, _) => Ok(Talk::Released(reason)),
                (m, _) => bail!("vxmeshd pid {old} answered Release with {m:?}"),
            }
        }
        Message::Offer { version, state } => {
            let split = decide::check_offer(&state, fds.len())
                .and_then(|()| DataplaneFds::from_roles(state.fds.iter().copied().zip(fds)));
            match split {
                Ok((dfds, listener)) => Ok(Talk::Took(
                    Box::new(Inherited {
                        state,
                        fds: dfds,
                        how: "handover",
                        version,
                        session: Some(Session(c)),
                    }),
                    listener.map(UnixListener::from),
                )),
                Err(why) => {
                    let _ = c.send(
                        &Message::Abort {
                            reason: why.clone(),
                        },
                        &[],
                    );
                    bail!("vxmeshd pid {old} offered an unusable handover: {why}")
                }
            }
        }
        m => bail!("vxmeshd pid {old} answered Hello with {m:?}"),
    }
}

/// Reads systemd's stored descriptors: the state file and the dataplane's.
struct Dropped {
    reason: String,
    handovers: u32,
    cold_starts: u32,
}

fn adopt_stored(
    me: &Identity,
    stored: Vec<(String, OwnedFd)>,
) -> Result<(Inherited, File), Dropped> {
    let drop_it = |reason: String| Dropped {
        reason,
        handovers: 0,
        cold_starts: 0,
    };
    let mut file = None;
    let mut pairs = Vec::new();
    for (name, fd) in stored {
        if name == STATE_FD_NAME {
            file = Some(File::from(fd));
        } else if let Some(role) = FdRole::from_store_name(&name) {
            pairs.push((role, fd));
        } else {
            tracing::warn!(name, "ignoring an unknown descriptor from systemd's store");
        }
    }
    let file = file.ok_or_else(|| drop_it(format!("no {STATE_FD_NAME} in the store")))?;
    let bytes = read_from_start(&file)
        .map_err(|e| drop_it(format!("cannot read the stored state: {e}")))?;
    let (version, state) = match Message::parse(&bytes) {
        Ok(Some((Message::Stored { version, state }, _))) => (version, state),
        Ok(Some((m, _))) => return Err(drop_it(format!("the stored state is a {m:?}"))),
        Ok(None) => return Err(drop_it("the stored state is cut short".into())),
        Err(e) => return Err(drop_it(format!("the stored state is unreadable: {e}"))),
    };
    let roles: Vec<FdRole> = pairs.iter().map(|(r, _)| *r).collect();
    let lineage = |reason| Dropped {
        reason,
        handovers: state.handovers,
        cold_starts: state.cold_starts,
    };
    if let StoredVerdict::ColdStart { reason } =
        decide::judge_stored(&me.fingerprint, me.versions, version, &state, &roles)
    {
        return Err(lineage(reason));
    }
    let (fds, _) = DataplaneFds::from_roles(pairs).map_err(lineage)?;
    Ok((
        Inherited {
            state,
            fds,
            how: "fd-store",
            version,
            session: None,
        },
        file,
    ))
}

/// The whole file, read from offset 0 without moving the file offset: a stored
/// descriptor shares its offset with every process that held it before.
fn read_from_start(f: &File) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = f.read_at(&mut chunk, out.len() as u64)?;
        if n == 0 || out.len() + n > wire::HEADER_LEN + wire::MAX_BODY {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// What the handover took, for [`StartInfo`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Finished {
    pub gap: Option<Duration>,
    pub overlap: Option<Duration>,
    pub old_stop: Option<Duration>,
}

impl Session {
    /// Our threads run on the handed-over descriptors (since `engine_started`): let
    /// the old process stop, and wait until it has.
    pub fn finish(mut self, engine_started: Instant) -> anyhow::Result<Finished> {
        let c = &mut self.0;
        let pid = c.peer_pid;
        // Our threads already run on the descriptors: whatever the old process does
        // now (it may have been stopped by a signal meanwhile), the dataplane is ours.
        let answer = c
            .send(&Message::Started, &[])
            .map_err(anyhow::Error::new)
            .and_then(|()| c.recv());
        match answer {
            Ok((Message::Stopped { took_us, .. }, _)) => Ok(Finished {
                gap: Some(Duration::ZERO),
                overlap: Some(engine_started.elapsed()),
                old_stop: Some(Duration::from_micros(took_us)),
            }),
            Ok((m, _)) => bail!("vxmeshd pid {pid} answered Started with {m:?}"),
            Err(e) => {
                tracing::warn!(
                    pid,
                    "the old vxmeshd went away without confirming its stop ({e:#}); carrying on"
                );
                Ok(Finished {
                    gap: Some(Duration::ZERO),
                    ..Finished::default()
                })
            }
        }
    }

    /// Tells the old process we cannot use what it offered: it keeps running.
    pub fn abort(mut self, reason: &str) {
        let _ = self.0.send(
            &Message::Abort {
                reason: reason.to_string(),
            },
            &[],
        );
    }
}

/// The gap of a restart through systemd's store: from the old threads' stop (the
/// state says when, if the stop was clean) to ours starting at `engine_started_ms`
/// (Unix ms). `None` after a crash: the state only says when it was refreshed.
pub fn store_gap(state: &DataplaneState, engine_started_ms: u64) -> Option<Duration> {
    state
        .stopped
        .then(|| Duration::from_millis(engine_started_ms.saturating_sub(state.at_ms)))
}

/// Wall clock now, Unix ms.
pub fn unix_ms() -> u64 {
    now_ms()
}

/// The state file kept in systemd's descriptor store: rewritten in place when the
/// state changes, so systemd's copy (the same file) is always current.
#[derive(Debug)]
pub struct StateFile {
    file: File,
    last: Vec<u8>,
}

impl StateFile {
    pub fn create() -> io::Result<StateFile> {
        Ok(StateFile {
            file: fdpass::memfd(c"vxmesh-state")?,
            last: Vec::new(),
        })
    }

    pub fn from_file(file: File) -> StateFile {
        StateFile {
            file,
            last: Vec::new(),
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Writes `state` unless it is what the file holds already. A torn write (a
    /// crash in the middle) fails the frame checksum: the next start is cold.
    pub fn write(&mut self, version: u16, state: &DataplaneState) -> io::Result<()> {
        let b = Message::Stored {
            version,
            state: state.clone(),
        }
        .encode();
        if b == self.last {
            return Ok(());
        }
        self.file.write_all_at(&b, 0)?;
        self.file.set_len(b.len() as u64)?;
        self.last = b;
        Ok(())
    }
}

/// What a running vxmeshd knows about its dataplane, for a successor.
#[derive(Debug)]
pub struct Running {
    pub fds: DataplaneFds,
    pub vtep_mac: MacAddr,
    pub mtu: u32,
    pub tap_offloads: u32,
    pub handovers: u32,
    pub cold_starts: u32,
}

/// A takeover the agent must carry out: stop its threads, then call
/// [`Pending::stopped`].
#[derive(Debug)]
pub struct Pending {
    took: std::sync::mpsc::SyncSender<Duration>,
    sent: std::sync::mpsc::Receiver<()>,
}

impl Pending {
    /// Our threads have stopped (after `took`): tell the successor, and wait until
    /// it has been told (so the process does not exit before).
    pub fn stopped(self, took: Duration) {
        if self.took.send(took).is_ok() {
            let _ = self.sent.recv_timeout(Duration::from_secs(2));
        }
    }
}

/// The running side: answers successors on the listener.
#[derive(Debug)]
pub struct Server {
    me: Identity,
    /// The PublicIP the running dataplane's underlay moved to since the start, which
    /// a successor's fingerprint must name.
    moved_to: Mutex<Option<std::net::Ipv4Addr>>,
    state: Arc<AgentState>,
    running: Mutex<Option<Running>>,
    takeover: tokio::sync::mpsc::Sender<Pending>,
}

impl Server {
    pub fn new(
        me: Identity,
        state: Arc<AgentState>,
        takeover: tokio::sync::mpsc::Sender<Pending>,
    ) -> Arc<Server> {
        Arc::new(Server {
            me,
            moved_to: Mutex::new(None),
            state,
            running: Mutex::new(None),
            takeover,
        })
    }

    /// The underlay moved: the running dataplane's PublicIP is now `ip`.
    pub fn set_public_ip(&self, ip: std::net::Ipv4Addr) {
        if let Ok(mut g) = self.moved_to.lock() {
            *g = Some(ip);
        }
    }

    /// Our fingerprint as it is now (a moved underlay's PublicIP in it).
    fn fingerprint(&self) -> Fingerprint {
        let mut f = self.me.fingerprint.clone();
        if let Some(ip) = self.moved_to.lock().ok().and_then(|g| *g) {
            f.public_ip = ip;
        }
        f
    }

    /// The dataplane runs (or, `None`, no longer): successors may be offered it.
    pub fn set_running(&self, r: Option<Running>) {
        if let Ok(mut g) = self.running.lock() {
            *g = r;
        }
    }

    /// Our current state, as a successor or the store gets it.
    pub fn snapshot(&self, with_listener: bool) -> Option<DataplaneState> {
        let g = self.running.lock().ok()?;
        let r = g.as_ref()?;
        let info = self.state.info();
        let lease = if self.state.ready.lease.load(Ordering::Relaxed) {
            info.subnet.zip(
                info.lease_id
                    .as_deref()
                    .and_then(|s| i64::from_str_radix(s, 16).ok()),
            )
        } else {
            None
        };
        let mut fds: Vec<FdRole> = r.fds.with_roles().into_iter().map(|(r, _)| r).collect();
        if with_listener {
            fds.push(FdRole::Listener);
        }
        Some(DataplaneState {
            fingerprint: self.fingerprint(),
            lease,
            vtep_mac: r.vtep_mac,
            mtu: r.mtu,
            tap_offloads: r.tap_offloads,
            fds,
            peers: info.peers.iter().copied().collect(),
            handovers: r.handovers,
            cold_starts: r.cold_starts,
            pid: std::process::id(),
            build: self.me.build.clone(),
            at_ms: now_ms(),
            stopped: false,
        })
    }

    /// Serves successors on `listener` from a thread, until one takes over.
    pub fn serve(self: &Arc<Server>, listener: UnixListener) -> io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("vxmesh-handover".into())
            .spawn(move || {
                for s in listener.incoming() {
                    let s = match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "handover socket: accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    match me.session(s, &listener) {
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(e) => tracing::warn!("handover attempt failed: {e:#}"),
                    }
                }
            })
            .map(|_| ())
    }

    /// One successor; `Ok(true)` once it has taken over (we are stopping).
    fn session(&self, s: UnixStream, listener: &UnixListener) -> anyhow::Result<bool> {
        let mut c = Conn::new(s)?;
        let (frame, _) = c.recv_frame()?;
        let (f, _) = Frame::parse(&frame)?.context("internal: incomplete frame")?;
        let their_versions = f.versions()?;
        let fingerprint = match Message::decode(f) {
            Ok(Message::Hello { fingerprint, .. }) => Some(fingerprint),
            Ok(m) => bail!("expected Hello, got {m:?}"),
            // A build with no common version may send a Hello we cannot read.
            Err(_) if self.me.versions.best_common(their_versions).is_none() => None,
            Err(e) => {
                let reason = format!("cannot read your Hello: {e}");
                c.send(
                    &Message::Refuse {
                        reason: reason.clone(),
                    },
                    &[],
                )?;
                bail!("{reason}");
            }
        };
        let ready = self.running.lock().map(|g| g.is_some()).unwrap_or(false);
        let answer = match &fingerprint {
            Some(fp) => decide::answer_hello(
                &self.fingerprint(),
                self.me.versions,
                ready,
                their_versions,
                fp,
            ),
            None => HelloAnswer::Incompatible,
        };
        match answer {
            HelloAnswer::Refuse { reason } => {
                self.state.handovers_refused.fetch_add(1, Ordering::Relaxed);
                self.state.event(
                    "handover_refused",
                    format!("to pid {}: {reason}", c.peer_pid),
                );
                tracing::warn!(pid = c.peer_pid, "refused to hand the dataplane to a vxmeshd that is not a valid successor: {reason}");
                c.send(&Message::Refuse { reason }, &[])?;
                Ok(false)
            }
            HelloAnswer::Incompatible => {
                tracing::warn!(pid = c.peer_pid, theirs = %their_versions, ours = %self.me.versions,
                    "a vxmeshd that speaks no common handover protocol version wants this TAP; it may ask us to release it");
                c.send(
                    &Message::Incompatible {
                        versions: self.me.versions,
                        build: self.me.build.clone(),
                    },
                    &[],
                )?;
                match c.recv() {
                    Ok((Message::Release, _)) => {
                        tracing::warn!(
                            pid = c.peer_pid,
                            "releasing the dataplane to a vxmeshd that starts cold"
                        );
                        self.state.event(
                            "handover_released",
                            format!("to pid {} (no common protocol version)", c.peer_pid),
                        );
                        self.stop_agent(&mut c, |_| Message::Released)?;
                        Ok(true)
                    }
                    Ok((m, _)) => bail!("expected Release, got {m:?}"),
                    Err(_) => Ok(false),
                }
            }
            HelloAnswer::Offer { version } => {
                let (state, fds) = {
                    let g = self
                        .running
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let r = g.as_ref().context("the dataplane stopped meanwhile")?;
                    // A successor of protocol version 1 knows no IPv6 receive socket.
                    let fds: Vec<OwnedFd> = r
                        .fds
                        .with_roles()
                        .into_iter()
                        .filter(|(role, _)| {
                            version >= wire::VERSION_IPV6 || *role != FdRole::UdpRx6
                        })
                        .map(|(_, f)| f.try_clone_to_owned())
                        .collect::<io::Result<_>>()?;
                    drop(g);
                    (
                        self.snapshot(true)
                            .context("the dataplane stopped meanwhile")?
                            .for_version(version),
                        fds,
                    )
                };
                let mut all: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                all.push(listener.as_fd());
                tracing::info!(
                    pid = c.peer_pid,
                    version,
                    fds = all.len(),
                    peers = state.peers.len(),
                    "handing the dataplane over"
                );
                // From the offer on the lease is the successor's (the gate comes
                // down again unless it takes over).
                let handing = self.state.handover_gate.raise();
                c.send(&Message::Offer { version, state }, &all)?;
                match c.recv()? {
                    (Message::Started, _) => {
                        self.state.event(
                            "handover_out",
                            format!(
                                "to pid {} (protocol v{version}): {} descriptors",
                                c.peer_pid,
                                all.len()
                            ),
                        );
                        self.stop_agent(&mut c, |took| Message::Stopped {
                            took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                            at_ms: now_ms(),
                        })?;
                        handing.completed();
                        Ok(true)
                    }
                    (Message::Abort { reason }, _) => {
                        tracing::warn!(
                            pid = c.peer_pid,
                            "the successor could not take over ({reason}); carrying on"
                        );
                        Ok(false)
                    }
                    (m, _) => bail!("expected Started, got {m:?}"),
                }
            }
        }
    }

    /// Asks the agent to stop its threads and reports that with `reply(took)`.
    fn stop_agent(
        &self,
        c: &mut Conn,
        reply: impl FnOnce(Duration) -> Message,
    ) -> anyhow::Result<()> {
        let (took_tx, took_rx) = std::sync::mpsc::sync_channel(1);
        let (sent_tx, sent_rx) = std::sync::mpsc::sync_channel(1);
        self.takeover
            .blocking_send(Pending {
                took: took_tx,
                sent: sent_rx,
            })
            .map_err(|_| anyhow::anyhow!("the agent is gone"))?;
        let took = took_rx
            .recv_timeout(STEP_TIMEOUT)
            .context("the agent did not stop its threads")?;
        let r = c.send(&reply(took), &[]);
        let _ = sent_tx.send(());
        r.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::Peer;
    use std::io::{Read, Seek, SeekFrom};
    use std::net::{Ipv4Addr, UdpSocket};
    use wire::VERSIONS;

    fn me(tag: &str, queues: u16, versions: Versions) -> Identity {
        let tap = IfName::new(&format!("{tag}{}", std::process::id() % 100_000)).unwrap();
        Identity {
            fingerprint: Fingerprint {
                tap: tap.to_string(),
                dataplane: "userspace".into(),
                tap_queues: queues,
                vnet_hdr: true,
                public_ip: Ipv4Addr::new(192, 168, 100, 12),
                network: "10.244.0.0/16".parse().unwrap(),
                vni: 1,
                port: 8472,
                etcd_prefix: "/coreos.com/network".into(),
                ipv6_dataplane: "kernel".into(),
            },
            versions,
            build: "test".into(),
            tap,
        }
    }

    /// Stand-ins for a dataplane's descriptors: a memory file as "TAP queue 0"
    /// (so the test can see the passed descriptor is the same open file) and two
    /// UDP sockets on loopback.
    fn fds(tap_content: &[u8]) -> DataplaneFds {
        let mut f = fdpass::memfd(c"fake-tap").unwrap();
        f.write_all(tap_content).unwrap();
        let udp = || OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        DataplaneFds {
            taps: vec![OwnedFd::from(f)],
            udp_rx: udp(),
            udp_tx: vec![udp()],
            udp_rx6: None,
        }
    }

    fn content(fd: OwnedFd) -> String {
        let mut f = File::from(fd);
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    fn peer() -> Peer {
        Peer {
            ipv6: None,
            subnet: "10.244.9.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 100, 11),
            vtep_mac: MacAddr([0x0e, 1, 2, 3, 4, 5]),
        }
    }

    /// A running side: server on the abstract socket, a fake dataplane, and a
    /// thread playing the agent (stops "threads" when asked, after 3 ms).
    fn running(me: &Identity) -> (Arc<AgentState>, std::thread::JoinHandle<bool>) {
        let state = Arc::new(AgentState::default());
        state.ready.lease.store(true, Ordering::Relaxed);
        state.update(|i| {
            i.subnet = Some("10.244.7.0/24".parse().unwrap());
            i.lease_id = Some("694d7c1e22a30b11".into());
            i.peers = [peer()].into_iter().collect();
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let server = Server::new(me.clone(), Arc::clone(&state), tx);
        server.set_running(Some(Running {
            fds: fds(b"queue 0"),
            vtep_mac: MacAddr([0x0e, 9, 9, 9, 9, 9]),
            mtu: 1450,
            tap_offloads: 0x2f,
            handovers: 4,
            cold_starts: 1,
        }));
        server.serve(bind(&socket_name(&me.tap)).unwrap()).unwrap();
        let agent = std::thread::spawn(move || match rx.blocking_recv() {
            Some(p) => {
                p.stopped(Duration::from_millis(3));
                true
            }
            None => false,
        });
        (state, agent)
    }

    #[test]
    fn a_live_handover_passes_the_same_files_state_and_lease() {
        let id = me("hoa", 1, VERSIONS);
        let (state, agent) = running(&id);
        let acq = acquire(&id, vec![], None).unwrap();
        let inh = acq.inherited.unwrap();
        assert_eq!((inh.how, inh.version), ("handover", VERSIONS.max));
        assert_eq!(
            inh.state.lease,
            Some(("10.244.7.0/24".parse().unwrap(), 0x694d_7c1e_22a3_0b11))
        );
        assert_eq!(inh.state.peers, vec![peer()]);
        assert_eq!((inh.state.handovers, inh.state.tap_offloads), (4, 0x2f));
        assert_eq!(
            inh.state.fds,
            vec![
                FdRole::Tap(0),
                FdRole::UdpRx,
                FdRole::UdpTx(0),
                FdRole::Listener
            ]
        );
        assert!(acq.listener.is_some(), "the listener came along");
        let super::Inherited { fds, session, .. } = inh;
        assert_eq!(content(fds.taps.into_iter().next().unwrap()), "queue 0");
        let fin = session.unwrap().finish(Instant::now()).unwrap();
        assert_eq!(fin.gap, Some(Duration::ZERO));
        assert_eq!(fin.old_stop, Some(Duration::from_millis(3)));
        assert!(agent.join().unwrap(), "the old agent was asked to stop");
        assert_eq!(event_kinds(&state), ["handover_out"]);
    }

    /// The kinds of the events `state` recorded, oldest first.
    fn event_kinds(state: &AgentState) -> Vec<&'static str> {
        state
            .events
            .since(0)
            .events
            .iter()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn a_conflicting_successor_is_refused_and_nothing_stops() {
        let id = me("hor", 1, VERSIONS);
        let (state, _agent) = running(&id);
        let mut other = id.clone();
        other.fingerprint.tap_queues = 2;
        let e = acquire(&other, vec![], None).unwrap_err().to_string();
        assert!(e.contains("refused to hand it over"), "{e}");
        assert!(e.contains("--tap-queues 1 there, 2 here"), "{e}");
        assert_eq!(state.handovers_refused.load(Ordering::Relaxed), 1);
        assert_eq!(event_kinds(&state), ["handover_refused"]);
        // still serving: a valid successor gets it
        let acq = acquire(&id, vec![], None).unwrap();
        assert_eq!(acq.inherited.unwrap().how, "handover");
    }

    #[test]
    fn another_protocol_version_releases_then_starts_cold() {
        let id = me("hov", 1, VERSIONS);
        let (state, agent) = running(&id);
        let mut newer = id.clone();
        newer.versions = Versions { min: 7, max: 9 };
        let acq = acquire(&newer, vec![], None).unwrap();
        assert!(acq.inherited.is_none());
        let why = acq.cold_reason.unwrap();
        assert!(
            why.contains("speaks handover protocol 1") && why.contains("7-9"),
            "{why}"
        );
        assert!(acq.listener.is_some(), "bound once the old one let go");
        assert!(agent.join().unwrap(), "the old agent was asked to stop");
        assert_eq!(event_kinds(&state), ["handover_released"]);
    }

    #[test]
    fn a_node_with_nothing_to_hand_over_refuses_every_successor() {
        // An IPv6-only node: no dataplane, its own fingerprint; a successor with the
        // very same one is refused with the node's reason, every time, and the agent
        // is never asked to stop.
        let tap = IfName::new(&format!("ho6{}", std::process::id() % 100_000)).unwrap();
        let id = node::identity_ipv6_only(&tap, 1, 8472, "/coreos.com/network");
        let state = Arc::new(AgentState::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        Server::new(id.clone(), Arc::clone(&state), tx)
            .serve(bind(&socket_name(&id.tap)).unwrap())
            .unwrap();
        for n in 1..=2u64 {
            let e = acquire(&id, vec![], None).unwrap_err().to_string();
            assert!(
                e.contains("refused to hand it over: the running vxmeshd is a node of an IPv6-only network"),
                "{e}"
            );
            assert_eq!(state.handovers_refused.load(Ordering::Relaxed), n);
        }
        assert!(rx.try_recv().is_err(), "the agent was asked to stop");
        // A build with no common version may still ask it to release the node.
        let agent = std::thread::spawn(move || match rx.blocking_recv() {
            Some(p) => {
                p.stopped(Duration::ZERO);
                true
            }
            None => false,
        });
        let mut newer = id.clone();
        newer.versions = Versions { min: 7, max: 9 };
        let acq = acquire(&newer, vec![], None).unwrap();
        assert!(acq.inherited.is_none() && acq.listener.is_some());
        assert!(agent.join().unwrap(), "the agent was asked to stop");
        assert_eq!(
            event_kinds(&state),
            ["handover_refused", "handover_refused", "handover_released"]
        );
    }

    fn stored(id: &Identity, version: u16, state_bytes: Option<Vec<u8>>) -> Vec<(String, OwnedFd)> {
        let mut file = StateFile::create().unwrap();
        let f = fds(b"stored queue");
        let mut st = DataplaneState {
            fingerprint: id.fingerprint.clone(),
            lease: None,
            vtep_mac: MacAddr([0x0e, 9, 9, 9, 9, 9]),
            mtu: 1450,
            tap_offloads: 0,
            fds: f.with_roles().into_iter().map(|(r, _)| r).collect(),
            peers: vec![peer()],
            handovers: 2,
            cold_starts: 3,
            pid: 1,
            build: "old".into(),
            at_ms: 1000,
            stopped: true,
        };
        file.write(version, &st).unwrap();
        st.peers.clear();
        // writing again in place: a shorter state replaces a longer one
        file.write(version, &st).unwrap();
        if let Some(b) = state_bytes {
            file.file.write_all_at(&b, 0).unwrap();
        }
        let mut v = vec![(STATE_FD_NAME.to_string(), OwnedFd::from(file.file))];
        let DataplaneFds {
            taps,
            udp_rx,
            udp_tx,
            udp_rx6: _,
        } = f;
        v.push(("vxmesh-tap0".into(), taps.into_iter().next().unwrap()));
        v.push(("vxmesh-udp-rx".into(), udp_rx));
        v.push(("vxmesh-udp-tx0".into(), udp_tx.into_iter().next().unwrap()));
        v
    }

    #[test]
    fn the_descriptor_store_is_adopted_or_dropped() {
        let id = me("hos", 1, VERSIONS);
        let (inh, _file) =
            adopt_stored(&id, stored(&id, 1, None)).unwrap_or_else(|d| panic!("{}", d.reason));
        assert_eq!(inh.how, "fd-store");
        assert!(inh.state.peers.is_empty(), "the last write wins");
        assert_eq!(
            content(inh.fds.taps.into_iter().next().unwrap()),
            "stored queue"
        );
        assert_eq!(
            store_gap(&inh.state, 1250),
            Some(Duration::from_millis(250))
        );
        // the next process reads it again although the last one left the shared offset
        // at the end (a crash after an adoption)
        let mut v = stored(&id, 1, None);
        let mut f = File::from(v[0].1.try_clone().unwrap());
        f.read_to_end(&mut Vec::new()).unwrap();
        v[0].1 = OwnedFd::from(f);
        assert!(adopt_stored(&id, v).is_ok(), "read from offset 0");
        // another version: dropped, lineage kept
        let newer = VERSIONS.max + 1;
        let d = adopt_stored(&id, stored(&id, newer, None)).err().unwrap();
        assert!(
            d.reason.contains(&format!("version {newer}")),
            "{}",
            d.reason
        );
        assert_eq!((d.handovers, d.cold_starts), (2, 3));
        // a torn write fails the checksum
        let d = adopt_stored(
            &id,
            stored(&id, 1, Some(b"VXHO\x0a\0\0\0\0\0\0\x20XXXX".to_vec())),
        )
        .err()
        .unwrap();
        assert!(d.reason.contains("unreadable"), "{}", d.reason);
        // flags changed across the restart
        let mut two = id.clone();
        two.fingerprint.tap_queues = 2;
        let d = adopt_stored(&two, stored(&id, 1, None)).err().unwrap();
        assert!(
            d.reason.contains("--tap-queues 1 there, 2 here"),
            "{}",
            d.reason
        );
        // no state file at all
        let mut v = stored(&id, 1, None);
        v.remove(0);
        assert!(adopt_stored(&id, v)
            .err()
            .unwrap()
            .reason
            .contains("no vxmesh-state"));
    }

    #[test]
    fn descriptors_sorted_by_role() {
        let f = fds(b"");
        let roles: Vec<FdRole> = f.with_roles().into_iter().map(|(r, _)| r).collect();
        let DataplaneFds {
            taps,
            udp_rx,
            udp_tx,
            udp_rx6,
        } = f;
        assert!(udp_rx6.is_none());
        let all: Vec<OwnedFd> = taps.into_iter().chain([udp_rx]).chain(udp_tx).collect();
        let mut pairs: Vec<(FdRole, OwnedFd)> = roles.into_iter().zip(all).collect();
        pairs.reverse();
        let (d, l) = DataplaneFds::from_roles(pairs).unwrap();
        assert_eq!((d.taps.len(), d.udp_tx.len(), l.is_none()), (1, 1, true));
        assert!(d.udp_rx6.is_none());
        let m = |r| (r, OwnedFd::from(fdpass::memfd(c"x").unwrap()));
        // The IPv6 receive socket travels only when there is one, and only once.
        let mut with6 = fds(b"");
        with6.udp_rx6 = Some(OwnedFd::from(fdpass::memfd(c"rx6").unwrap()));
        let roles: Vec<FdRole> = with6.with_roles().into_iter().map(|(r, _)| r).collect();
        assert!(roles.contains(&FdRole::UdpRx6), "{roles:?}");
        assert_eq!(with6.count(), roles.len());
        let (d, _) = DataplaneFds::from_roles([
            m(FdRole::UdpRx6),
            m(FdRole::Tap(0)),
            m(FdRole::UdpRx),
            m(FdRole::UdpTx(0)),
        ])
        .unwrap();
        assert!(d.udp_rx6.is_some());
        assert!(DataplaneFds::from_roles([
            m(FdRole::Tap(0)),
            m(FdRole::UdpRx),
            m(FdRole::UdpRx6),
            m(FdRole::UdpRx6)
        ])
        .unwrap_err()
        .contains("twice"));
        assert!(
            DataplaneFds::from_roles([m(FdRole::Tap(1)), m(FdRole::UdpRx)])
                .unwrap_err()
                .contains("not 0..n")
        );
        assert!(DataplaneFds::from_roles([m(FdRole::Tap(0))])
            .unwrap_err()
            .contains("no receive socket"));
        assert!(
            DataplaneFds::from_roles([m(FdRole::Tap(0)), m(FdRole::UdpRx), m(FdRole::UdpRx)])
                .unwrap_err()
                .contains("twice")
        );
    }
}
