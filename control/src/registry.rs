//! The etcd registry, in flannel's layout (`<prefix>/config`, `<prefix>/subnets/`).
//!
//! A thin shell over `etcd-client` (etcd v3 API): read the config, list leases,
//! claim a subnet by compare-and-swap under an etcd lease, keep that lease alive, and
//! watch the subnets prefix from a listing's revision + 1 — re-listing when the
//! revision was compacted, reconnecting with backoff (100 ms → 5 s) on errors.
//! Decisions live in the pure cores ([`crate::lease_machine`], [`crate::peers`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use crate::allocator::Claim;
use crate::config::{example_put, ConfigError, NetworkConfig};
use crate::etcd_access::{AccessError, EtcdAccess, TlsMaterial};
use crate::lease::{config_key, lease_key_of, subnets_prefix, LeaseAttrs};
use crate::outage::{self, Outage};
pub use crate::registry_events::{Entry, Listing, WatchEvent};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "etcd {what} failed: {} (--etcd-endpoints {endpoints}: {hint})",
        chain(source)
    )]
    Etcd {
        what: &'static str,
        endpoints: String,
        hint: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// What to check, given what etcd said: auth refusals get their own advice.
fn hint_for(default: &'static str, e: &etcd_client::Error) -> &'static str {
    let msg = e.to_string();
    if msg.contains("user name is empty") {
        "etcd has auth enabled: give --etcd-username and --etcd-password (VXMESHD_ETCD_PASSWORD)"
    } else if msg.contains("permission denied") {
        "the etcd user lacks access: grant its role readwrite on the prefix, e.g. etcdctl role grant-permission ROLE --prefix=true readwrite /coreos.com/network/"
    } else {
        default
    }
}

/// An error and its causes on one line: transport errors hide the useful part
/// ("invalid peer certificate: UnknownIssuer") in their sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

/// A claim that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Won {
    /// The etcd lease the key is now attached to.
    pub lease_id: i64,
    /// The etcd revision of the write: registry news older than this predates it.
    pub revision: i64,
}

/// A handle on etcd under one prefix. Cheap to clone (one shared channel).
#[derive(Clone)]
pub struct Registry {
    /// Shared by every clone, and replaced by [`Registry::reconnect`].
    client: Arc<RwLock<Client>>,
    /// Counts [`Registry::reconnect`]s: a watch moves to the new connection.
    reconnects: Arc<tokio::sync::watch::Sender<u64>>,
    access: EtcdAccess,
    prefix: String,
    endpoints: String,
    hint: &'static str,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// Backoff for reconnects: steps of 100 ms doubling to 5 s, each wait drawn between
/// half and all of its step ([`crate::lease_machine::jittered`]), so agents that lose
/// etcd together (a restart, a leader change) do not all come back at once.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    step: Duration,
    seed: u64,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);

impl Default for Backoff {
    /// Seeded at random (each agent differently).
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        Backoff::with_seed(
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        )
    }
}

impl Backoff {
    pub fn with_seed(seed: u64) -> Backoff {
        Backoff {
            step: BACKOFF_FIRST,
            seed,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = crate::lease_machine::jittered(self.step, &mut self.seed);
        self.step = (self.step * 2).min(BACKOFF_LAST);
        d
    }

    pub fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
    }
}

impl Registry {
    /// Connects to plain http:// endpoints without credentials.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Registry, RegistryError> {
        Registry::connect_with(&EtcdAccess::plain(endpoints), prefix).await
    }

    /// Connects (lazily: the first request fails if etcd is down, and later ones
    /// reconnect on their own). TLS files are read here, once: the client's own
    /// reconnects reuse them, so rotated files take effect with a new `Registry`
    /// (an agent restart). With credentials, etcd is asked for a token now, and
    /// again whenever it expires.
    pub async fn connect_with(
        access: &EtcdAccess,
        prefix: &str,
    ) -> Result<Registry, RegistryError> {
        let client = Registry::client_for(access).await?;
        Ok(Registry {
            client: Arc::new(RwLock::new(client)),
            reconnects: Arc::new(tokio::sync::watch::Sender::new(0)),
            access: access.clone(),
            prefix: prefix.trim_end_matches('/').to_string(),
            endpoints: access.endpoints.join(","),
            hint: access.hint(),
        })
    }

    /// Replaces the connection of this registry and all its clones with a new one:
    /// when the node's address moved, requests on the old connection would wait for
    /// their timeouts (their packets leave from an address that is gone). Calls
    /// already in flight finish on the old one; a running watch resumes on the new.
    pub async fn reconnect(&self) -> Result<(), RegistryError> {
        let fresh = Registry::client_for(&self.access).await?;
        match self.client.write() {
            Ok(mut g) => *g = fresh,
            Err(p) => *p.into_inner() = fresh,
        }
        self.reconnects.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The connection to use for one call.
    fn client(&self) -> Client {
        match self.client.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    async fn client_for(access: &EtcdAccess) -> Result<Client, RegistryError> {
        let joined = access.endpoints.join(",");
        let hint = access.hint();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(files) = &access.tls {
            let m = TlsMaterial::load(files)?;
            let mut tls = TlsOptions::new();
            tls = match m.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = m.client {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(tls);
        }
        if let Some(a) = &access.auth {
            opts = opts
                .with_user(a.username.clone(), a.password.clone())
                .with_auto_token_refresh(true);
        }
        let client = Client::connect(&access.endpoints, Some(opts))
            .await
            .map_err(|source| RegistryError::Etcd {
                what: "connect",
                endpoints: joined.clone(),
                hint: hint_for(hint, &source),
                source,
            })?;
        Ok(client)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn err(&self, what: &'static str) -> impl FnOnce(etcd_client::Error) -> RegistryError + '_ {
        move |source| RegistryError::Etcd {
            what,
            endpoints: self.endpoints.clone(),
            hint: hint_for(self.hint, &source),
            source,
        }
    }

    /// Reads and checks `<prefix>/config`.
    pub async fn network_config(&self) -> Result<NetworkConfig, RegistryError> {
        let key = config_key(&self.prefix);
        let resp = self
            .client()
            .get(key.clone(), None)
            .await
            .map_err(self.err("get config"))?;
        let Some(kv) = resp.kvs().first() else {
            return Err(ConfigError::Missing {
                example: example_put(&key),
                key,
            }
            .into());
        };
        Ok(NetworkConfig::parse(&key, kv.value())?)
    }

    /// Lists `<prefix>/subnets/`.
    pub async fn list_subnets(&self) -> Result<Listing, RegistryError> {
        let resp = self
            .client()
            .get(
                subnets_prefix(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(self.err("list subnets"))?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let entries = resp.kvs().iter().map(entry).collect();
        Ok(Listing { revision, entries })
    }

    /// Tries one claim: grants an etcd lease of `ttl`, then writes the lease value
    /// only if the key is absent (Create) or unchanged since listed (Reuse); a Rekey
    /// writes the new key only if it is absent and deletes our old key in the same
    /// transaction, only if that is unchanged since listed. A reservation (Reserved)
    /// gets no etcd lease: it is held as it is when its value is already ours, else
    /// rewritten without a lease, if unchanged since listed.
    /// `Ok(Some(_))` when won, `Ok(None)` when someone else got there first.
    pub async fn claim(
        &self,
        claim: &Claim,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<Won>, RegistryError> {
        let key = lease_key_of(&self.prefix, &claim.key());
        let value = attrs.to_json();
        let absent = Compare::version(key.clone(), CompareOp::Equal, 0);
        let (cmps, delete) = match claim {
            Claim::Reserved { mod_revision, .. } => {
                return self.hold_reservation(key, value, *mod_revision).await;
            }
            Claim::Create { .. } => (vec![absent], None),
            Claim::Reuse { mod_revision, .. } => (
                vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *mod_revision,
                )],
                None,
            ),
            Claim::Rekey {
                from,
                from_mod_revision,
                ..
            } => {
                let old = lease_key_of(&self.prefix, from);
                (
                    vec![
                        absent,
                        Compare::mod_revision(old.clone(), CompareOp::Equal, *from_mod_revision),
                    ],
                    Some(TxnOp::delete(old, None)),
                )
            }
        };
        let mut c = self.client();
        let ttl_s = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = c
            .lease_grant(ttl_s, None)
            .await
            .map_err(self.err("lease grant"))?;
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease.id())));
        let ops: Vec<TxnOp> = delete.into_iter().chain([put]).collect();
        let resp = c
            .txn(Txn::new().when(cmps).and_then(ops))
            .await
            .map_err(self.err("claim transaction"))?;
        if resp.succeeded() {
            Ok(Some(Won {
                lease_id: lease.id(),
                revision: resp.header().map_or(0, |h| h.revision()),
            }))
        } else {
            // Lost the race: give the unused lease back (best effort; it expires anyway).
            let _ = c.lease_revoke(lease.id()).await;
            Ok(None)
        }
    }

    /// Holds our reservation at `key`: nothing is written when it still is exactly
    /// `value` at `mod_revision`; otherwise `value` is put without a lease, if the key
    /// is still at `mod_revision`.
    async fn hold_reservation(
        &self,
        key: String,
        value: String,
        mod_revision: i64,
    ) -> Result<Option<Won>, RegistryError> {
        let mut c = self.client();
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision);
        let resp = c
            .txn(Txn::new().when([
                unchanged.clone(),
                Compare::value(key.clone(), CompareOp::Equal, value.clone()),
            ]))
            .await
            .map_err(self.err("reservation check"))?;
        let won = |r: &etcd_client::TxnResponse| Won {
            lease_id: 0,
            revision: r.header().map_or(0, |h| h.revision()),
        };
        if resp.succeeded() {
            return Ok(Some(won(&resp)));
        }
        let resp = c
            .txn(
                Txn::new()
                    .when([unchanged])
                    .and_then([TxnOp::put(key, value, None)]),
            )
            .await
            .map_err(self.err("reservation update"))?;
        Ok(resp.succeeded().then(|| won(&resp)))
    }

    /// Remaining TTL of each etcd lease id (None for 0 or unknown), for `vxmeshctl`.
    pub async fn lease_ttls(&self, ids: impl Iterator<Item = i64>) -> Vec<Option<i64>> {
        let mut out = Vec::new();
        let mut c = self.client();
        for id in ids {
            let ttl = if id == 0 {
                None
            } else {
                c.lease_time_to_live(id, None)
                    .await
                    .ok()
                    .map(|r| r.ttl())
                    .filter(|t| *t >= 0)
            };
            out.push(ttl);
        }
        out
    }

    /// Keeps `lease_id` alive until it is lost; returns why. Renews every third of
    /// the TTL (at most every 30 s, at least every second); rides out etcd outages
    /// shorter than the remaining TTL by reconnecting.
    /// Each renewal is recorded in `stats` (for /metrics: an operator alerts when the
    /// expiry comes close, i.e. renewals stopped while etcd is unreachable).
    /// Revokes etcd lease `lease_id` (one no key is attached to any more): best
    /// effort, as it expires anyway.
    pub async fn revoke(&self, lease_id: i64) -> Result<(), RegistryError> {
        self.client()
            .lease_revoke(lease_id)
            .await
            .map(|_| ())
            .map_err(self.err("lease revoke"))
    }

    pub async fn keep_alive(&self, lease_id: i64, ttl: Duration, stats: &LeaseStats) -> String {
        let interval = (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut deadline = tokio::time::Instant::now() + ttl;
        stats.stamp(ttl);
        let mut backoff = Backoff::default();
        let mut outage = Outage::new("lease keepalive");
        let unrenewed =
            || format!("etcd lease {lease_id:x} could not be renewed before it expired");
        // Every request is bounded by the lease's expiry: with etcd unreachable (packets
        // dropped) a request only fails after the client's own timeout, and the lease must
        // be reported lost when it expires, not that much later.
        loop {
            let mut c = self.client();
            match tokio::time::timeout_at(deadline, c.lease_keep_alive(lease_id)).await {
                Err(_) => return unrenewed(),
                Ok(Ok((mut keeper, mut stream))) => loop {
                    match tokio::time::timeout_at(deadline, keeper.keep_alive()).await {
                        Err(_) => return unrenewed(),
                        Ok(Err(e)) => {
                            outage.fail(&e);
                            break;
                        }
                        Ok(Ok(())) => {}
                    }
                    match tokio::time::timeout(interval, stream.message()).await {
                        Ok(Ok(Some(resp))) => {
                            let Some(left) = ttl_left(resp.ttl()) else {
                                return format!("etcd lease {lease_id:x} expired or was revoked");
                            };
                            backoff.reset();
                            outage.ok();
                            deadline = tokio::time::Instant::now() + left;
                            stats.renewed(left);
                        }
                        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                            let e = "the keepalive stream broke";
                            outage.fail(&e);
                            break;
                        }
                    }
                    tokio::time::sleep(interval).await;
                },
                Ok(Err(e)) => {
                    outage.fail(&e);
                }
            }
            // etcd may be reachable but the stream broke: ask whether the lease still exists.
            if let Ok(Ok(r)) =
                tokio::time::timeout_at(deadline, self.client().lease_time_to_live(lease_id, None))
                    .await
            {
                if r.ttl() <= 0 {
                    return format!("etcd lease {lease_id:x} expired or was revoked");
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return unrenewed();
            }
            let retry = (tokio::time::Instant::now() + backoff.next_delay()).min(deadline);
            tokio::time::sleep_until(retry).await;
        }
    }

    /// Streams the subnets prefix into `tx` until `tx` is closed: a snapshot, then
    /// events from its revision + 1; a fresh snapshot after compaction; resumes after
    /// errors with backoff. `from` says where to begin (see [`WatchFrom`]).
    pub async fn watch_subnets(
        &self,
        from: WatchFrom,
        tx: mpsc::Sender<WatchEvent>,
        stats: &WatchStats,
    ) {
        let mut next_rev = match from {
            WatchFrom::List => None,
            WatchFrom::Revision(r) => Some(r),
            WatchFrom::Listing(l) => {
                let r = l.revision + 1;
                if tx.send(WatchEvent::Snapshot(l)).await.is_err() {
                    return;
                }
                Some(r)
            }
        };
        let mut backoff = Backoff::default();
        let mut outage = Outage::new("subnet watch");
        let prefix = subnets_prefix(&self.prefix);
        let mut reconnected = self.reconnects.subscribe();
        while !tx.is_closed() {
            let rev = match next_rev {
                Some(r) => r,
                None => match self.list_subnets().await {
                    Ok(l) => {
                        stats.note(outage.ok());
                        stats
                            .listings
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let r = l.revision + 1;
                        if tx.send(WatchEvent::Snapshot(l)).await.is_err() {
                            return;
                        }
                        r
                    }
                    Err(e) => {
                        let e = format!("cannot list subnets: {e}");
                        stats.note(outage.fail(&e));
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                },
            };
            next_rev = Some(rev);
            // No previous values (with_prev_key): nothing reads them, and every event
            // would carry its value twice to every node.
            let opts = WatchOptions::new().with_prefix().with_start_revision(rev);
            // A reconnect from here on moves the watch (this one starts on the
            // connection there is now).
            reconnected.mark_unchanged();
            let mut stream = match self.client().watch(prefix.clone(), Some(opts)).await {
                Ok(s) => {
                    stats.note(outage.ok());
                    s
                }
                Err(e) => {
                    let e = format!("cannot start the watch: {e}");
                    stats.note(outage.fail(&e));
                    stats
                        .restarts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    r = reconnected.changed() => {
                        if r.is_ok() {
                            tracing::info!("the etcd connection was made again; the watch resumes on the new one");
                        }
                        break;
                    }
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                tracing::warn!(
                                    from = rev,
                                    compacted_to = resp.compact_revision(),
                                    "watch revision was compacted; re-listing subnets"
                                );
                                stats
                                    .compactions
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                next_rev = None;
                            } else {
                                tracing::warn!(
                                    reason = resp.cancel_reason(),
                                    "watch canceled by etcd; restarting"
                                );
                            }
                            break;
                        }
                        backoff.reset();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            next_rev = Some(kv.mod_revision() + 1);
                            let msg = match ev.event_type() {
                                EventType::Put => WatchEvent::Put(entry(kv)),
                                EventType::Delete => WatchEvent::Delete {
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    revision: kv.mod_revision(),
                                },
                            };
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        let e = "the watch stream ended";
                        stats.note(outage.fail(&e));
                        break;
                    }
                    Err(e) => {
                        stats.note(outage.fail(&e));
                        break;
                    }
                }
            }
            stats
                .restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Follows `<prefix>/config`: sends its value (None while the key is absent) once
    /// read, and again after each change of the key, until `tx` is closed. Each change
    /// is read afresh (the watch only says that something changed), so a compacted or
    /// broken watch loses nothing: it starts over with a read. Errors are retried with
    /// backoff and not reported: the subnet watch reports etcd's outages.
    pub async fn watch_config(&self, tx: mpsc::Sender<Option<Vec<u8>>>) {
        let key = config_key(&self.prefix);
        let mut backoff = Backoff::default();
        let mut reconnected = self.reconnects.subscribe();
        while !tx.is_closed() {
            reconnected.mark_unchanged();
            let client = self.client();
            let read = client.clone().get(key.clone(), None).await.map(|r| {
                let value = r.kvs().first().map(|kv| kv.value().to_vec());
                (value, r.header().map_or(0, |h| h.revision()))
            });
            let Ok((value, revision)) = read else {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            };
            if tx.send(value).await.is_err() {
                return;
            }
            let opts = WatchOptions::new().with_start_revision(revision + 1);
            let Ok(mut stream) = client.clone().watch(key.clone(), Some(opts)).await else {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            };
            // Until the key changes (an event), or the watch ends, fails, is
            // cancelled or its connection is replaced: then read again.
            let changed = loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(r)) if r.canceled() => break false,
                        // The watch's creation (or a progress notice): no change.
                        Ok(Some(r)) if r.events().is_empty() => {}
                        Ok(Some(_)) => break true,
                        Ok(None) | Err(_) => break false,
                    },
                    _ = reconnected.changed() => break true,
                    () = tx.closed() => return,
                }
            };
            if changed {
                backoff.reset();
            } else {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Where [`Registry::watch_subnets`] begins.
#[derive(Debug)]
pub enum WatchFrom {
    /// List the prefix, then watch from the listing's revision + 1.
    List,
    /// Watch from this revision, no listing first (a resumed watch; tests).
    Revision(i64),
    /// Pass on a listing already taken (the one the subnet was allocated from), then
    /// watch from its revision + 1: the same events as listing again, without a
    /// second read of the whole prefix per node start. A revision compacted
    /// meanwhile makes etcd cancel the watch, and the prefix is listed afresh.
    Listing(Listing),
}

/// The subnet lease's renewals, exported as metrics.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Successful renewals (keepalive answers with a TTL left).
    pub renewals: std::sync::atomic::AtomicU64,
    /// Wall-clock time of the last grant or renewal, Unix milliseconds (0: none yet).
    pub renewed_unix_ms: std::sync::atomic::AtomicU64,
    /// When the lease expires unless renewed, Unix milliseconds (0: no lease).
    pub expires_unix_ms: std::sync::atomic::AtomicU64,
    /// Where renewals are recorded as events (the agent's log, once set).
    pub events: std::sync::OnceLock<std::sync::Arc<crate::events::EventLog>>,
}

/// What a keepalive answer's TTL leaves of the lease: `None` when it expired (≤ 0);
/// never more than etcd's longest lease, so that an answer no etcd gives (a broken or
/// hostile server) cannot overflow the deadline's arithmetic.
fn ttl_left(ttl: i64) -> Option<Duration> {
    let secs = u64::try_from(ttl).ok().filter(|&s| s > 0)?;
    Some(Duration::from_secs(
        secs.min(crate::duration::ETCD_MAX_LEASE_TTL_SECS),
    ))
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LeaseStats {
    fn renewed(&self, left: Duration) {
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stamp(left);
        if let Some(e) = self.events.get() {
            e.record_superseding(
                "lease_renewed",
                format!(
                    "{}s left ({} renewals since the start)",
                    left.as_secs(),
                    self.renewals.load(std::sync::atomic::Ordering::Relaxed)
                ),
                crate::events::now_ms(),
            );
        }
    }

    /// Records that the subnet is held without an etcd lease (a reservation): nothing
    /// expires, nothing is renewed.
    pub fn no_ttl(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.renewed_unix_ms.store(0, Relaxed);
        self.expires_unix_ms.store(0, Relaxed);
    }

    /// Records a grant or renewal now, with `left` until expiry.
    fn stamp(&self, left: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now();
        self.renewed_unix_ms.store(unix_ms(now), Relaxed);
        self.expires_unix_ms.store(unix_ms(now + left), Relaxed);
    }
}

/// Watch health counters, exported as metrics.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub restarts: std::sync::atomic::AtomicU64,
    pub compactions: std::sync::atomic::AtomicU64,
    /// Full listings of the prefix the watch read itself (none after a start that
    /// handed it the allocation's listing; one per compaction).
    pub listings: std::sync::atomic::AtomicU64,
    /// Since when the watch has been failing, Unix milliseconds (0: it works, or has
    /// not failed yet): while it fails, no change of a peer reaches this node.
    pub down_since_unix_ms: std::sync::atomic::AtomicU64,
    /// Where the outages are recorded as events (the agent's log, once set).
    pub events: std::sync::OnceLock<std::sync::Arc<crate::events::EventLog>>,
}

impl WatchStats {
    /// Records what an attempt of the watch found (see [`Outage`]).
    fn note(&self, r: outage::Report) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = unix_ms(std::time::SystemTime::now()).max(1);
        let event = |kind, detail: String| {
            if let Some(e) = self.events.get() {
                e.record(kind, detail, now);
            }
        };
        match r {
            outage::Report::Began => {
                self.down_since_unix_ms.store(now, Relaxed);
                event(
                    "etcd_unreachable",
                    "the subnet watch fails: peer changes wait until etcd is back".into(),
                );
            }
            outage::Report::Ended { down, failures } => {
                self.down_since_unix_ms.store(0, Relaxed);
                event(
                    "etcd_reachable",
                    format!(
                        "the subnet watch works again after {:.1} s ({failures} failed tries)",
                        down.as_secs_f64()
                    ),
                );
            }
            outage::Report::Lasts { .. } | outage::Report::Quiet => {}
        }
    }

    /// How long the watch has been failing at `now`, if it is.
    pub fn down_for(&self, now: std::time::SystemTime) -> Option<Duration> {
        match self
            .down_since_unix_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            t => Some(Duration::from_millis(unix_ms(now).saturating_sub(t))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime};

    /// A keepalive answer's TTL: expired at 0 or below, and never trusted beyond etcd's
    /// longest lease, so neither the deadline nor the expiry stamp can overflow.
    #[test]
    fn a_keepalive_ttl_is_bounded() {
        assert_eq!(ttl_left(0), None);
        assert_eq!(ttl_left(-1), None);
        assert_eq!(ttl_left(i64::MIN), None);
        assert_eq!(ttl_left(60), Some(Duration::from_secs(60)));
        let most = Duration::from_secs(crate::duration::ETCD_MAX_LEASE_TTL_SECS);
        assert_eq!(ttl_left(i64::MAX), Some(most));
        let _ = tokio::time::Instant::now() + most;
        let stats = LeaseStats::default();
        stats.renewed(most);
    }

    /// The watch's outage shows in `down_for` from its first failure until its first
    /// success, and reminders or quiet failures do not move its start.
    #[test]
    fn watch_down_for_follows_the_outage() {
        let w = WatchStats::default();
        let log = std::sync::Arc::new(crate::events::EventLog::new(16));
        let _ = w.events.set(std::sync::Arc::clone(&log));
        assert_eq!(w.down_for(SystemTime::now()), None);
        let mut o = Outage::default();
        let t0 = Instant::now();
        w.note(o.failed(t0));
        let since = w
            .down_since_unix_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(since > 0);
        w.note(o.failed(t0 + Duration::from_secs(1)));
        w.note(o.failed(t0 + Duration::from_secs(61)));
        assert_eq!(
            w.down_since_unix_ms
                .load(std::sync::atomic::Ordering::Relaxed),
            since
        );
        let later = SystemTime::now() + Duration::from_secs(30);
        let d = w.down_for(later).unwrap();
        assert!(d >= Duration::from_secs(30), "{d:?}");
        // A clock that went back: zero, not a panic.
        assert_eq!(w.down_for(SystemTime::UNIX_EPOCH), Some(Duration::ZERO));
        w.note(o.succeeded(t0 + Duration::from_secs(70)));
        assert_eq!(w.down_for(later), None);
        // One event when it began and one when it ended, none for the retries.
        let kinds: Vec<&str> = log.since(0).events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["etcd_unreachable", "etcd_reachable"]);
        assert!(
            log.since(0).events[1]
                .detail
                .contains("70.0 s (3 failed tries)"),
            "{:?}",
            log.since(0).events[1]
        );
    }
}
