//! The backend server: owns a share of the keys, serves them from its store, and relays requests
//! for other keys towards their owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::auth::{Credentials, Password};
use crate::cluster::chain::{self, KeyLocks};
use crate::cluster::dedup::{Seen, WriteWindows};
use crate::cluster::handoff::{self, Incoming};
use crate::cluster::token::ClusterToken;
use crate::cluster::transfer::{self, Receiver, Trackers};
use crate::cluster::view_file::{self, SavedView};
use crate::error::Result;
use crate::metrics::{self, Collect, Exposition, MetricsServer, RequestMetrics};
use crate::peers::Peers;
use crate::protocol::payload::{self, NodeReport, WriteTag};
use crate::protocol::{Frame, Opcode, Status, DEFAULT_HOP_LIMIT};
use crate::ring::{Position, Ring};
use crate::server::{self, Dispatch, Handler, ServerHandle, ServerOptions};
use crate::store::{Engine, MemStore, StoreSize, Unsettled};
use crate::update::{Refusal, Update, Write as UpdateWrite};

/// How to run a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Limits, timeouts and the connection bound.
    pub server: ServerOptions,
    /// Most bytes of keys plus values stored; `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Where the write-ahead log lives; `None` keeps the store in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// Most bytes the log may take on disk, the room kept to compact it included
    /// ([`crate::durable`]); `None`: only the disk's size limits it. Only with a data directory.
    pub max_disk_bytes: Option<u64>,
    /// When logged writes are forced to disk (with a data directory).
    pub fsync: crate::wal::FsyncPolicy,
    /// Open a log damaged before its tail by cutting it back to its last intact record.
    pub repair: bool,
    /// The secret that view installs, chain writes and state transfers must come with
    /// ([`crate::cluster::token`]); `None` takes them from anyone.
    pub cluster_token: Option<ClusterToken>,
    /// The password clients must present (AUTH) before anything else is answered
    /// ([`crate::auth`]); `None` serves anyone. Also presented to the other backends.
    pub password: Option<Password>,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`, [`crate::metrics`]);
    /// `None` serves none.
    pub metrics_listen: Option<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: "127.0.0.1:0".into(),
            server: ServerOptions::default(),
            max_bytes: None,
            data_dir: None,
            max_disk_bytes: None,
            fsync: crate::wal::FsyncPolicy::default(),
            repair: false,
            cluster_token: None,
            password: None,
            metrics_listen: None,
        }
    }
}

/// Counters reported by STATS.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    puts: AtomicU64,
    gets: AtomicU64,
    deletes: AtomicU64,
    served: AtomicU64,
    relayed: AtomicU64,
    hops: AtomicU64,
    errors: AtomicU64,
    /// Writes this node applied and passed down a chain to its successor.
    chain_relayed: AtomicU64,
    /// Writes this node applied as a non-head chain member.
    chain_applied: AtomicU64,
    /// Views installed (a restart's saved view included).
    view_changes: AtomicU64,
    /// Requests and chain answers refused because they belong to another epoch.
    stale_refused: AtomicU64,
    /// State transfers this node served as a source.
    transfers_begun: AtomicU64,
    /// Tagged writes sent again and answered with their first result, not applied again.
    retries_answered: AtomicU64,
    /// Tagged writes sent again that this head had applied without the chain's
    /// acknowledgement: the key's value was sent down the chain again.
    retries_completed: AtomicU64,
    /// Tagged writes refused as older than their client's window (TOO_OLD).
    retries_too_old: AtomicU64,
    /// Peer-only requests and PEER_AUTHs refused for a missing or wrong cluster token.
    unauthorized: AtomicU64,
    /// Requests served by how many relays they took; the last bucket holds the rest.
    relays: [AtomicU64; RELAY_BUCKETS],
}

/// Buckets of the relay histogram: 0 to 15 relays, then 16 or more.
const RELAY_BUCKETS: usize = 17;

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where a key request goes from here.
enum Route {
    /// Answered here: served, or refused.
    Answered(Frame),
    /// To be relayed to `next` as `relayed`.
    Relay {
        request: Frame,
        relayed: Frame,
        membership: Arc<Membership>,
        next: String,
    },
    /// A write applied here that the rest of its chain must apply before it is acknowledged:
    /// `forward` goes to `next`; `answer` is what this node answers once `next` acknowledges.
    Chain {
        answer: Frame,
        forward: Frame,
        next: String,
        /// Whether `next` is the chain's tail, which applies the write and answers without
        /// waiting for any other node.
        to_tail: bool,
    },
}

/// The writes a batch applied here: how far the store must settle before any is acknowledged,
/// and the tags to forget if that fails.
#[derive(Default)]
struct Applied {
    unsettled: Unsettled,
    tags: Vec<WriteTag>,
}

/// The ring as this node knows it, with its own place in it.
pub(crate) struct Membership {
    ring: Arc<Ring>,
    me: usize,
    /// False for a view resumed from disk after a restart, until the keeper (or, with one copy
    /// per key, any frontend) installs it again or a newer one: a restarted node may have lost
    /// writes it acknowledged, and must not serve before the keeper has decided about it.
    confirmed: bool,
}

impl Membership {
    /// Whether this node is the head of `key`'s chain.
    fn heads(&self, key: &[u8]) -> bool {
        self.ring.chain_of_key(key).head() == Some(self.me)
    }
}

struct BackendState {
    store: Arc<dyn Engine>,
    /// Taken for reading while a request is checked against the epoch and applied, and for
    /// writing to install a view: a request is applied under exactly the epoch it was checked
    /// against.
    membership: RwLock<Option<Arc<Membership>>>,
    /// The per-key write order of the chains this node heads.
    key_locks: KeyLocks,
    /// The tagged writes this node applied, per client, so that a retry is not applied twice.
    windows: WriteWindows,
    cluster_token: Option<ClusterToken>,
    password: Option<Password>,
    /// The transfers this node is the source of.
    trackers: Trackers,
    /// This node's own state transfer, when it comes back.
    receiver: Receiver,
    /// The partitions a join or leave brings this node.
    incoming: Incoming,
    /// The sweep that deletes the expired keys this node heads.
    sweeper: crate::expiry::Sweeper,
    /// Where the view is kept across restarts (with a data directory).
    data_dir: Option<std::path::PathBuf>,
    peers: Peers,
    counters: Counters,
    /// Requests by opcode and status, and key request latency (STATS and `/metrics`).
    requests: RequestMetrics,
    /// The address it listens on, to name itself by until a view says how others reach it.
    listening: std::sync::OnceLock<String>,
    /// Chosen at random when the process starts and sent with every PING answer, so that the
    /// view keeper can tell a backend that restarted (and may have lost writes) from one that
    /// stayed up.
    incarnation: u64,
}

/// A running backend. Dropping it stops it.
pub struct Backend {
    state: Arc<BackendState>,
    server: ServerHandle,
    /// The state transfer and handoff threads, stopped with the backend.
    drivers: Vec<std::thread::JoinHandle<()>>,
    /// What a metrics scrape reads of this backend.
    collector: Arc<BackendCollector>,
    /// Its own metrics endpoint, with [`BackendConfig::metrics_listen`].
    metrics: Option<MetricsServer>,
}

impl Backend {
    /// Starts a backend with an in-memory store, logged to `data_dir` if there is one (its log
    /// is replayed first).
    ///
    /// ```
    /// let backend = ringkv::Backend::start(ringkv::BackendConfig::default()).unwrap();
    /// assert_ne!(backend.local_addr().port(), 0);
    /// ```
    pub fn start(config: BackendConfig) -> Result<Backend> {
        let store: Arc<dyn Engine> = match &config.data_dir {
            Some(dir) => Arc::new(
                crate::durable::DurableStore::open(
                    dir,
                    crate::durable::DurableOptions {
                        fsync: config.fsync,
                        max_bytes: config.max_bytes,
                        max_disk_bytes: config.max_disk_bytes,
                        repair: config.repair,
                        ..crate::durable::DurableOptions::default()
                    },
                )
                .map_err(crate::error::Error::Storage)?,
            ),
            None => Arc::new(MemStore::new(config.max_bytes)),
        };
        Backend::with_engine(config, store)
    }

    /// Starts a backend over the given storage engine.
    pub fn with_engine(config: BackendConfig, store: Arc<dyn Engine>) -> Result<Backend> {
        let membership = match &config.data_dir {
            Some(dir) => saved_membership(dir)?,
            None => None,
        };
        let state = Arc::new(BackendState {
            store,
            membership: RwLock::new(membership.map(Arc::new)),
            key_locks: KeyLocks::default(),
            windows: WriteWindows::default(),
            trackers: Trackers::default(),
            receiver: Receiver::default(),
            incoming: Incoming::default(),
            sweeper: crate::expiry::Sweeper::default(),
            data_dir: config.data_dir.clone(),
            peers: Peers::new(config.server.timeouts, config.server.limits)
                .with_credentials(Credentials {
                    token: config.cluster_token.clone(),
                    password: config.password.clone(),
                })
                .with_leaf_links(1),
            cluster_token: config.cluster_token.clone(),
            password: config.password.clone(),
            counters: Counters::default(),
            requests: RequestMetrics::default(),
            listening: std::sync::OnceLock::new(),
            incarnation: crate::rng::Rng::from_entropy().next_u64() | 1,
        });
        let server = server::serve(
            "backend",
            &config.listen,
            config.server,
            Dispatch::ThreadPerConnection,
            Arc::clone(&state) as Arc<dyn Handler>,
        )?;
        let _ = state.listening.set(server.local_addr().to_string());
        let collector = Arc::new(BackendCollector {
            state: Arc::clone(&state),
            connections: server.connections(),
        });
        let metrics = MetricsServer::start_for(
            config.metrics_listen.as_deref(),
            Arc::clone(&collector) as Arc<dyn Collect>,
        )?;
        if let Some(m) = state.membership() {
            state
                .receiver
                .view_installed(None, m.ring.view().states[m.me], m.ring.view().epoch);
            state.incoming.view_installed(&m.ring, m.me);
        }
        let spawn = |name: &str, run: fn(&BackendState)| {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || run(&state))
                .map_err(|e| crate::error::Error::Config(format!("cannot start a thread: {e}")))
        };
        let drivers = vec![
            spawn("state-transfer", |s| transfer::run(s))?,
            spawn("handoff", |s| handoff::run(s))?,
            spawn("expiry-sweep", |s| crate::expiry::run(s, &s.sweeper))?,
        ];
        Ok(Backend {
            state,
            server,
            drivers,
            collector,
            metrics,
        })
    }

    /// The address of its metrics endpoint, when it serves one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// What a metrics scrape reads of this backend, for an endpoint that reports several parts
    /// of a process (`ringkv local`'s).
    pub(crate) fn metrics_source(&self) -> Arc<dyn Collect> {
        Arc::clone(&self.collector) as Arc<dyn Collect>
    }

    /// The address the backend listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The epoch of the installed view, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.state.membership().map(|m| m.ring.view().epoch)
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(&mut self) {
        if let Some(metrics) = &mut self.metrics {
            metrics.shutdown();
        }
        self.server.shutdown();
        self.stop_drivers();
    }

    fn stop_drivers(&mut self) {
        self.state.receiver.stop();
        self.state.incoming.stop();
        self.state.sweeper.stop();
        for driver in self.drivers.drain(..) {
            let _ = driver.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop_drivers();
    }
}

/// What a metrics scrape reads of a backend: its counters, and its server's open connections.
struct BackendCollector {
    state: Arc<BackendState>,
    connections: Arc<server::Registry>,
}

impl Collect for BackendCollector {
    fn collect(&self, out: &mut Exposition) {
        let state = &*self.state;
        let node = state.my_addr();
        let labels = [("role", "backend"), ("node", node.as_str())];
        let epoch = state.membership().map_or(0, |m| m.ring.view().epoch);
        metrics::common(out, &labels, &state.requests, self.connections.len(), epoch);
        // Every copy: telling primaries from replicas walks the store (STATS does that).
        let size = state.store.size();
        out.gauge(
            "ringkv_stored_keys",
            "Keys held, every copy (primary and replica) counted.",
            &labels,
            size.keys,
        );
        out.gauge(
            "ringkv_stored_bytes",
            "Key plus value bytes held, every copy counted.",
            &labels,
            size.bytes,
        );
        out.gauge(
            "ringkv_stored_expiring_keys",
            "Keys held with an expiry time (expired ones the sweep has not yet deleted \
             included), every copy counted.",
            &labels,
            state.store.expiring_keys(),
        );
        for (relays, counter) in state.counters.relays.iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                let plus = if relays == RELAY_BUCKETS - 1 { "+" } else { "" };
                let bucket = format!("{relays}{plus}");
                let mut labels = labels.to_vec();
                labels.push(("relays", bucket.as_str()));
                out.counter(
                    "ringkv_served_by_relays_total",
                    "Key requests served as the owner, by the relays they had taken.",
                    &labels,
                    count,
                );
            }
        }
        for (name, count) in state.named_counters() {
            let Some(&(_, kind, help)) = metrics::STATS_METRICS.iter().find(|(n, ..)| *n == name)
            else {
                // `requests` is the sum of ringkv_requests_total.
                continue;
            };
            match kind {
                metrics::Kind::Gauge => out.gauge(&format!("ringkv_{name}"), help, &labels, count),
                _ => out.counter(&format!("ringkv_{name}_total"), help, &labels, count),
            }
        }
    }
}

impl transfer::Host for BackendState {
    fn ring(&self) -> Option<(Arc<Ring>, usize)> {
        self.membership().map(|m| (Arc::clone(&m.ring), m.me))
    }

    fn store(&self) -> &dyn Engine {
        &*self.store
    }

    fn call(&self, addr: &str, request: &Frame) -> Result<Frame> {
        self.peers.call(addr, request)
    }

    fn receiver(&self) -> &Receiver {
        &self.receiver
    }

    fn io_timeout(&self) -> std::time::Duration {
        self.peers.timeouts().io
    }
}

impl handoff::Host for BackendState {
    fn incoming(&self) -> &Incoming {
        &self.incoming
    }

    fn sources_open(&self) -> usize {
        self.trackers.open_count()
    }
}

impl crate::expiry::SweepHost for BackendState {
    fn store(&self) -> &dyn Engine {
        &*self.store
    }

    fn heads(&self) -> Option<crate::expiry::HeadTest<'_>> {
        let membership = self.membership().filter(|m| m.confirmed)?;
        Some(Box::new(move |key| membership.heads(key)))
    }

    fn delete_expired(&self, keys: Vec<Vec<u8>>) -> u64 {
        let Some(epoch) = self.membership().map(|m| m.ring.view().epoch) else {
            return 0;
        };
        let operation = Update::DeleteIfExpired.encode();
        let requests = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let mut request = Frame::request(Opcode::UPDATE, i as u64, key, operation.clone());
                request.epoch = epoch;
                request
            })
            .collect();
        self.key_batch(requests)
            .iter()
            .filter(|answer| answer.status == Status::OK && answer.value == [1])
            .count() as u64
    }
}

impl BackendState {
    fn membership(&self) -> Option<Arc<Membership>> {
        self.read_membership().clone()
    }

    fn read_membership(&self) -> RwLockReadGuard<'_, Option<Arc<Membership>>> {
        match self.membership.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn my_addr(&self) -> String {
        match self.membership() {
            Some(m) => m.ring.node(m.me).to_string(),
            None => self.listening.get().cloned().unwrap_or_default(),
        }
    }

    /// VIEW_INSTALL: the key is this node's own address in the view, the value the view. A
    /// view is taken only if its epoch is higher than the installed one's, or it is the
    /// installed view again; with a data directory it is on disk before it is acknowledged.
    fn install_view(&self, request: &Frame) -> Frame {
        let view = match payload::decode_view(request.epoch, &request.value) {
            Ok(view) => view,
            Err(e) => return request.error_reply(Status::BAD_REQUEST, e.to_string()),
        };
        let me = String::from_utf8_lossy(&request.key).into_owned();
        if view.epoch == 0 {
            return request.error_reply(Status::BAD_REQUEST, "a view's epoch is at least 1");
        }
        let ring = match Ring::new(view) {
            Ok(ring) => ring,
            Err(e) => return request.error_reply(Status::BAD_REQUEST, e.to_string()),
        };
        let Some(index) = ring.index_of(&me) else {
            return request.error_reply(
                Status::BAD_REQUEST,
                format!("this node's address {me:?} is not in the view"),
            );
        };
        let mut slot = match self.membership.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(current) = slot.as_ref() {
            let installed = current.ring.view();
            if let Some(refusal) = refuse_view(installed, ring.view(), current.me, index) {
                log::warn!("{me}: refused a view of epoch {}: {refusal}", request.epoch);
                bump(&self.counters.stale_refused);
                return request.error_reply(Status::STALE_VIEW, refusal);
            }
            if installed == ring.view() {
                // The same view confirms a restarted node only with one copy per key, where
                // it holds all there is; with more, only the keeper's next view does.
                if !current.confirmed && installed.replicas == 1 {
                    log::info!("{me}: view epoch {} confirmed", installed.epoch);
                    *slot = Some(Arc::new(Membership {
                        ring: Arc::clone(&current.ring),
                        me: current.me,
                        confirmed: true,
                    }));
                }
                return request.reply(Status::OK, Vec::new());
            }
        }
        if let Some(dir) = &self.data_dir {
            let saved = SavedView {
                me: me.clone(),
                view: ring.view().clone(),
            };
            if let Err(e) = view_file::save(dir, &saved) {
                log::error!("{me}: cannot keep view epoch {}: {e}", request.epoch);
                return request.error_reply(
                    Status::INTERNAL,
                    format!("{me}: cannot keep the view on disk: {e}"),
                );
            }
        }
        log::info!(
            "{me}: installed view epoch {} with {} nodes ({} down, {} syncing), {} replicas ({} \
             routing, {})",
            request.epoch,
            ring.len(),
            count_in(ring.view(), crate::ring::NodeState::Down),
            count_in(ring.view(), crate::ring::NodeState::Syncing),
            ring.view().replicas,
            ring.view().routing,
            ring.view().placement
        );
        // A call still waiting on a node that is now down fails at once instead of holding
        // its keys' locks until its timeout.
        for (node, addr) in ring.view().nodes.iter().enumerate() {
            if !ring.view().is_up(node) {
                self.peers.sever(addr);
            }
        }
        bump(&self.counters.view_changes);
        let before = slot.as_ref().map(|m| m.ring.view().states[m.me]);
        self.receiver
            .view_installed(before, ring.view().states[index], ring.view().epoch);
        if ring.view().states[index] != crate::ring::NodeState::Up {
            // Down or being copied: what it applied alone may not survive the copy.
            self.windows.forget_unacknowledged();
        } else if before == Some(crate::ring::NodeState::Syncing) {
            // The copy and its deltas brought writes without their tags.
            self.windows.mark_incomplete();
        }
        // Likewise for the partitions a move made it a member of, but only for them
        // (`Incoming::recently_gained`, looked at by `head_tagged`).
        self.incoming.view_installed(&ring, index);
        if ring.view().is_up(index) {
            self.trackers.retain_live(&ring);
        } else {
            self.trackers.clear();
        }
        *slot = Some(Arc::new(Membership {
            ring: Arc::new(ring),
            me: index,
            confirmed: true,
        }));
        request.reply(Status::OK, Vec::new())
    }

    /// Key requests (PUT, GET, DELETE, and the chain's own writes), in order: each is served
    /// here, refused, relayed towards the chain member it is for, or applied here and passed
    /// down its chain. The relays and chain hops of the whole batch go out together, one batch
    /// per next node, so a pipeline crosses each hop in one round trip.
    fn key_batch(&self, mut requests: Vec<Frame>) -> Vec<Frame> {
        let waves = chain::waves(&requests);
        if waves.len() <= 1 {
            return self.key_wave(requests);
        }
        // Cut from the back, carry out from the front.
        let mut parts = Vec::with_capacity(waves.len());
        for wave in waves.into_iter().rev() {
            parts.push(requests.split_off(wave.start));
        }
        parts
            .into_iter()
            .rev()
            .flat_map(|part| self.key_wave(part))
            .collect()
    }

    /// Key requests that may be carried out at once (see [`chain::waves`]).
    fn key_wave(&self, requests: Vec<Frame>) -> Vec<Frame> {
        // A node catching up after a state transfer answers reads only once it is done: a
        // short wait, bounded by the i/o timeout (then it refuses them).
        if !self.receiver.serves_reads() && requests.iter().any(|r| r.opcode == Opcode::GET) {
            self.receiver.wait_for_reads(self.peers.timeouts().io);
        }
        // So does one catching up on the partitions a move gave it, and it takes no client
        // write of them either: as their head it would answer from a copy still behind (a
        // DELETE's found or not, a retried write's first result).
        if self.incoming.refuses_some_reads()
            && requests
                .iter()
                .any(|r| r.opcode == Opcode::GET || is_client_write(r.opcode))
        {
            self.incoming.wait_for_reads(self.peers.timeouts().io);
        }
        // The writes this node heads take their keys' locks before anything is applied, and
        // keep them until the rest of the chain has answered (invariant 1 in `cluster`).
        let snapshot = self.membership();
        // SHA-1 is a large part of a request's cost here: each key's is taken once.
        let positions: Vec<Position> = requests
            .iter()
            .map(|r| crate::ring::key_position(&r.key))
            .collect();
        // A tagged write takes its key's lock even where no chain follows, so that two copies
        // of it arriving at once cannot both find it new.
        let headed: Vec<&[u8]> = match &snapshot {
            Some(m) => requests
                .iter()
                .zip(&positions)
                .filter(|(r, position)| {
                    if !is_client_write(r.opcode) {
                        return false;
                    }
                    let chain = m.ring.chain(position);
                    // An update reads the key before it writes it: only one at a time.
                    let alone = r.opcode.is_tagged() || r.opcode == Opcode::UPDATE;
                    chain.head() == Some(m.me) && (chain.len() > 1 || alone)
                })
                .map(|(r, _)| r.key.as_slice())
                .collect(),
            None => Vec::new(),
        };
        let mut held = self.key_locks.lock(headed);
        let mut writes = Applied::default();
        let routes: Vec<Route> = {
            let guard = self.read_membership();
            let current = guard.as_ref();
            let moved = match (&snapshot, current) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            let epoch = current.map_or(0, |m| m.ring.view().epoch);
            requests
                .into_iter()
                .zip(&positions)
                .map(|(request, position)| {
                    if !is_client_write(request.opcode) {
                        self.route(current, request, position, &mut writes)
                    } else if moved {
                        Route::Answered(request.error_reply(
                            Status::STALE_VIEW,
                            "the view changed while the write waited for its key; not applied",
                        ))
                    } else if held.is_blocked(&request.key, epoch) {
                        bump(&self.counters.stale_refused);
                        Route::Answered(request.error_reply(
                            Status::STALE_VIEW,
                            format!(
                                "an earlier write of this key was not acknowledged in epoch \
                                 {epoch}; writes of it wait for the next view (not applied)"
                            ),
                        ))
                    } else {
                        self.route(current, request, position, &mut writes)
                    }
                })
                .collect()
        };
        // Chain hops first, while the keys' locks are held; relays after the locks are let go,
        // because a relay may wait on another node whose own relays wait on these locks.
        let mut chain_results = self.call_chains(&routes).into_iter();
        let epoch_now = self.membership().map_or(0, |m| m.ring.view().epoch);
        let routes: Vec<Route> = routes
            .into_iter()
            .map(|route| match route {
                Route::Chain {
                    answer,
                    forward,
                    next,
                    ..
                } => {
                    let answer =
                        self.chain_answer(answer, &forward, &next, chain_results.next(), epoch_now);
                    if !answer.status.is_success() {
                        // It may still be on its way down: nothing may overtake it.
                        held.block(&forward.key, forward.epoch);
                    } else if let Some(tag) = tag_of(&forward) {
                        self.windows.acknowledge(&tag);
                    }
                    Route::Answered(answer)
                }
                other => other,
            })
            .collect();
        drop(held);
        let relay_calls: Vec<(&str, &Frame)> = routes
            .iter()
            .filter_map(|route| match route {
                Route::Relay { relayed, next, .. } => Some((next.as_str(), relayed)),
                _ => None,
            })
            .collect();
        let mut results = self.call_all(&relay_calls).into_iter();
        drop(relay_calls);
        let mut answers: Vec<Frame> = routes
            .into_iter()
            .map(|route| match route {
                Route::Relay {
                    request,
                    relayed,
                    membership,
                    next,
                } => {
                    let result = match results.next() {
                        // A next hop that restarted gets the view and this request again.
                        Some(Ok(answer)) if answer.status == Status::NO_VIEW => {
                            self.relay(&membership, &next, &relayed)
                        }
                        Some(result) => result,
                        None => Err(crate::error::Error::Unanswered {
                            addr: next.clone(),
                            reason: "not sent".into(),
                        }),
                    };
                    self.relay_answer(&request, &next, result)
                }
                Route::Answered(answer) | Route::Chain { answer, .. } => answer,
            })
            .collect();
        // One wait (one fsync under `always`) for every write applied here, before any of
        // them is acknowledged upstream.
        self.settle(writes, answers.iter_mut());
        answers
    }

    /// What to do with a key request under `membership` (held by the caller for reading):
    /// answer it here (served, or refused), relay it, or apply it and pass it down its chain.
    /// A write applied here extends `writes`, which the caller settles.
    fn route(
        &self,
        membership: Option<&Arc<Membership>>,
        request: Frame,
        position: &Position,
        writes: &mut Applied,
    ) -> Route {
        if request.key.is_empty() {
            return Route::Answered(request.error_reply(Status::BAD_REQUEST, "the key is empty"));
        }
        let Some(membership) = membership else {
            return Route::Answered(request.error_reply(
                Status::NO_VIEW,
                "this backend has not been given a view yet",
            ));
        };
        let ring = &membership.ring;
        let epoch = ring.view().epoch;
        if !membership.confirmed {
            return Route::Answered(request.error_reply(
                Status::NO_VIEW,
                format!(
                    "this backend restarted and holds view epoch {epoch} from before; it serves \
                     nothing until the view keeper installs a view again"
                ),
            ));
        }
        let tag = if request.opcode.is_tagged() {
            match WriteTag::split(&request.value) {
                Ok((tag, _)) => Some(tag),
                Err(e) => {
                    return Route::Answered(request.error_reply(Status::BAD_REQUEST, e.to_string()))
                }
            }
        } else {
            None
        };
        let is_chain_write = request.opcode.is_chain_write();
        if is_expiring_put(request.opcode) && chain::split_expiring(stored_part(&request)).is_none()
        {
            return Route::Answered(request.error_reply(
                Status::BAD_REQUEST,
                format!(
                    "{}'s value is shorter than its 8-byte expiry time",
                    request.opcode
                ),
            ));
        }
        // Requests from clients may carry no epoch (0: debugging by hand); chain writes must
        // carry this node's.
        if (request.epoch != 0 || is_chain_write) && request.epoch != epoch {
            bump(&self.counters.stale_refused);
            return Route::Answered(request.error_reply(
                Status::STALE_VIEW,
                format!(
                    "request carries view epoch {}, this node has {epoch}",
                    request.epoch
                ),
            ));
        }
        let chain = ring.chain(position);
        if chain.is_empty() {
            return Route::Answered(request.error_reply(
                Status::UNAVAILABLE,
                format!(
                    "every node holding this key is down (view epoch {epoch}, owner {})",
                    ring.node(ring.owner(position))
                ),
            ));
        }
        if is_chain_write {
            return match chain.position(membership.me) {
                Some(at) if at > 0 => {
                    bump(&self.counters.chain_applied);
                    let answer = self.apply(ring, position, &request, writes);
                    if let Some(tag) = &tag {
                        self.remember(tag, &answer, &chain, membership.me, writes);
                    }
                    self.pass_down(answer, request, ring, &chain, membership.me, epoch)
                }
                _ => Route::Answered(request.error_reply(
                    Status::BAD_REQUEST,
                    format!(
                        "{} is not a member after the head of this key's chain in epoch {epoch}",
                        ring.node(membership.me)
                    ),
                )),
            };
        }
        let target = match request.opcode {
            Opcode::GET => chain.tail(),
            _ => chain.head(),
        }
        .unwrap_or(membership.me);
        if target == membership.me {
            if request.opcode == Opcode::GET && !self.receiver.serves_reads() {
                return Route::Answered(request.error_reply(
                    Status::UNAVAILABLE,
                    format!(
                        "{} is catching up after a state transfer ({:?}); not read",
                        ring.node(membership.me),
                        self.receiver.phase()
                    ),
                ));
            }
            if self.incoming.refuses_read(ring.point_index(position)) {
                let what = if request.opcode == Opcode::GET {
                    "not read"
                } else {
                    "not applied"
                };
                return Route::Answered(request.error_reply(
                    Status::UNAVAILABLE,
                    format!(
                        "{} is catching up on this key's partition after a move ({:?}); {what}",
                        ring.node(membership.me),
                        self.incoming.phase()
                    ),
                ));
            }
            if request.opcode == Opcode::UPDATE {
                return self.head_update(ring, position, request, &chain, membership.me, writes);
            }
            if let Some(tag) = &tag {
                return self.head_tagged(
                    ring,
                    position,
                    request,
                    tag,
                    &chain,
                    membership.me,
                    writes,
                );
            }
            let answer = self.serve_locally(ring, position, &request, writes);
            if request.opcode == Opcode::GET {
                return Route::Answered(answer);
            }
            return self.pass_down(answer, request, ring, &chain, membership.me, epoch);
        }
        let limit = match request.hop_limit {
            0 => DEFAULT_HOP_LIMIT,
            limit => limit,
        };
        if request.hops >= limit {
            return Route::Answered(request.error_reply(
                Status::LOOP,
                format!(
                    "{} relays reached the hop limit of {limit} before the owner",
                    request.hops
                ),
            ));
        }
        let next = ring
            .node(next_hop(ring, membership.me, position, &chain, target))
            .to_string();
        bump(&self.counters.relayed);
        let mut relayed = request.clone();
        relayed.hops = request.hops + 1;
        relayed.hop_limit = limit;
        relayed.epoch = epoch;
        Route::Relay {
            request,
            relayed,
            membership: Arc::clone(membership),
            next,
        }
    }

    /// An UPDATE this node heads, under its key's lock: the key is read, the result computed
    /// ([`crate::update`]) and applied as the PUT or DELETE it amounts to, which goes down the
    /// chain like any other; the client is answered what the update says.
    fn head_update(
        &self,
        ring: &Ring,
        position: &Position,
        request: Frame,
        chain: &crate::ring::Chain,
        me: usize,
        writes: &mut Applied,
    ) -> Route {
        let update = match Update::decode(&request.value) {
            Ok(update) => update,
            Err(e) => {
                return Route::Answered(request.error_reply(Status::BAD_REQUEST, e.to_string()))
            }
        };
        let current = self.store.get_expiring(&request.key);
        let current = current.as_ref().map(|(value, at)| (value.as_slice(), *at));
        let now = crate::expiry::now_ms();
        let outcome = match update.apply(current, now, self.peers.limits().max_value) {
            Ok(outcome) => outcome,
            Err(refusal) => {
                let status = match refusal {
                    Refusal::TooLarge { .. } => Status::TOO_LARGE,
                    Refusal::NotAnInteger | Refusal::BadExpiry => Status::BAD_REQUEST,
                };
                return Route::Answered(request.error_reply(status, refusal.to_string()));
            }
        };
        let (opcode, value) = match outcome.write {
            UpdateWrite::Nothing => {
                bump(&self.counters.served);
                return Route::Answered(request.reply(Status::OK, outcome.answer));
            }
            UpdateWrite::Put {
                value,
                expires_at: None,
            } => (Opcode::PUT, value),
            UpdateWrite::Put {
                value,
                expires_at: Some(at),
            } => (
                Opcode::CHAIN_PUT_EXPIRING,
                chain::expiring_value(at, &value),
            ),
            UpdateWrite::Delete => (Opcode::DELETE, Vec::new()),
        };
        let mut write = Frame::request(opcode, request.request_id, request.key.clone(), value);
        write.epoch = request.epoch;
        write.hops = request.hops;
        write.hop_limit = request.hop_limit;
        let applied = self.serve_locally(ring, position, &write, writes);
        let answer = if applied.status.is_success() {
            let answer = match update {
                // The sweep counts what it removed.
                Update::DeleteIfExpired => vec![u8::from(applied.status == Status::OK)],
                _ => outcome.answer,
            };
            request.reply(Status::OK, answer)
        } else {
            let mut refused = applied;
            refused.opcode = Opcode::UPDATE;
            refused
        };
        self.pass_down(answer, write, ring, chain, me, ring.view().epoch)
    }

    /// A tagged write this node heads: applied if it is new, else answered from what this node
    /// remembers of it (see [`crate::cluster::dedup`]).
    #[allow(clippy::too_many_arguments)]
    fn head_tagged(
        &self,
        ring: &Ring,
        position: &Position,
        request: Frame,
        tag: &WriteTag,
        chain: &crate::ring::Chain,
        me: usize,
        writes: &mut Applied,
    ) -> Route {
        let epoch = ring.view().epoch;
        let seen = match self.windows.check(tag) {
            // A partition it took over in a move: the copy brought its writes without tags.
            Seen::New
                if tag.is_resend() && self.incoming.recently_gained(ring.point_index(position)) =>
            {
                Seen::Unknowable
            }
            seen => seen,
        };
        match seen {
            Seen::New => {
                let answer = self.serve_locally(ring, position, &request, writes);
                self.remember(tag, &answer, chain, me, writes);
                self.pass_down(answer, request, ring, chain, me, epoch)
            }
            Seen::Done(status) => {
                bump(&self.counters.retries_answered);
                Route::Answered(request.reply(status, Vec::new()))
            }
            Seen::Unfinished(status) => {
                // The members after this one may lack it. None of them holds anything newer
                // of the key than this node, so its current value, sent down, completes it.
                bump(&self.counters.retries_completed);
                let mut refresh = request.clone();
                (refresh.opcode, refresh.value) = match self.store.get_expiring(&request.key) {
                    // Its time to live goes too, or a member after it would keep the key for
                    // ever.
                    Some((value, Some(at))) => (
                        Opcode::CHAIN_PUT_ONCE_EXPIRING,
                        tag.prefix(&chain::expiring_value(at, &value)),
                    ),
                    Some((value, None)) => (Opcode::PUT_ONCE, tag.prefix(&value)),
                    None => (Opcode::DELETE_ONCE, tag.prefix(&[])),
                };
                let answer = request.reply(status, Vec::new());
                if chain.successor(me).is_none() {
                    self.windows.acknowledge(tag);
                }
                self.pass_down(answer, refresh, ring, chain, me, epoch)
            }
            Seen::TooOld => {
                bump(&self.counters.retries_too_old);
                Route::Answered(request.error_reply(
                    Status::TOO_OLD,
                    format!(
                        "write {} of client {:016x} is older than what this node remembers of \
                         that client; not applied now (an earlier attempt may have taken effect)",
                        tag.seq, tag.client
                    ),
                ))
            }
            Seen::Unknowable => {
                bump(&self.counters.retries_too_old);
                Route::Answered(request.error_reply(
                    Status::TOO_OLD,
                    format!(
                        "write {} of client {:016x} is sent again, and this node's memory of \
                         writes does not reach back far enough (it started, had to forget, or \
                         took over this key's partition less than {}s ago) to know that no \
                         earlier copy was applied; not applied now (an earlier attempt may have \
                         taken effect)",
                        tag.seq,
                        tag.client,
                        crate::cluster::dedup::HORIZON.as_secs()
                    ),
                ))
            }
            Seen::Full => Route::Answered(request.error_reply(
                Status::BUSY,
                "this node remembers as many clients as it can; not applied",
            )),
        }
    }

    /// Records a tagged write this member applied with `answer` (nothing, if it failed here).
    fn remember(
        &self,
        tag: &WriteTag,
        answer: &Frame,
        chain: &crate::ring::Chain,
        me: usize,
        writes: &mut Applied,
    ) {
        if answer.status.is_success() {
            let last = chain.successor(me).is_none();
            self.windows.record(tag, answer.status, last);
            writes.tags.push(*tag);
        }
    }

    /// The chain hops of `routes`, answered in their order. Those to a chain's tail share the
    /// leaf links ([`Peers::call_batch_to_leaves`]): the tail waits for no other node, so the
    /// hops of many batches can queue on one link without waiting for each other. The others
    /// (to a member that passes the write on) each take a connection of their own. A batch
    /// that has both (a chain shortened by a node that is down) waits for its hops to tails
    /// before it sends the others.
    fn call_chains(&self, routes: &[Route]) -> Vec<Result<Frame>> {
        let hops: Vec<(&str, &Frame, bool)> = routes
            .iter()
            .filter_map(|route| match route {
                Route::Chain {
                    forward,
                    next,
                    to_tail,
                    ..
                } => Some((next.as_str(), forward, *to_tail)),
                _ => None,
            })
            .collect();
        let calls_where = |tail: bool| -> Vec<(&str, &Frame)> {
            hops.iter()
                .filter(|hop| hop.2 == tail)
                .map(|hop| (hop.0, hop.1))
                .collect()
        };
        let (to_tails, inner) = (calls_where(true), calls_where(false));
        let mut tail_answers = if to_tails.is_empty() {
            Vec::new()
        } else {
            self.peers.call_batch_to_leaves(&to_tails)
        }
        .into_iter();
        let mut inner_answers = self.call_all(&inner).into_iter();
        let not_sent = |addr: &str| crate::error::Error::Unanswered {
            addr: addr.to_string(),
            reason: "not sent".into(),
        };
        hops.iter()
            .map(|&(addr, _, tail)| {
                let answer = if tail {
                    tail_answers.next()
                } else {
                    inner_answers.next()
                };
                answer.unwrap_or_else(|| Err(not_sent(addr)))
            })
            .collect()
    }

    /// Every call of `calls`, batched per peer; nothing to do for none.
    fn call_all(&self, calls: &[(&str, &Frame)]) -> Vec<Result<Frame>> {
        if calls.is_empty() {
            Vec::new()
        } else {
            self.peers.call_batch(calls)
        }
    }

    /// What this chain member answers for a write it applied and passed to `next` as
    /// `forward`: its own `answer` if the rest of the chain acknowledged it, else UNAVAILABLE.
    fn chain_answer(
        &self,
        answer: Frame,
        forward: &Frame,
        next: &str,
        result: Option<Result<Frame>>,
        epoch_now: u64,
    ) -> Frame {
        match result {
            Some(Ok(reply)) if chain::acknowledges(&reply, forward.epoch, epoch_now) => answer,
            Some(Ok(reply)) => {
                if reply.status == Status::STALE_VIEW || reply.epoch != forward.epoch {
                    bump(&self.counters.stale_refused);
                }
                let why = format!("{}: {}", reply.status, reply.message());
                chain::unacknowledged(&answer, next, &why)
            }
            Some(Err(e)) => {
                self.peers.forget(next);
                chain::unacknowledged(&answer, next, &e.to_string())
            }
            None => chain::unacknowledged(&answer, next, "not sent"),
        }
    }

    /// After applying a write as chain member `me`: the answer itself at the tail (or when the
    /// write failed here), else the chain write for the next member, which takes the request's
    /// key and value (no copy: the request is done with).
    fn pass_down(
        &self,
        answer: Frame,
        request: Frame,
        ring: &Ring,
        chain: &crate::ring::Chain,
        me: usize,
        epoch: u64,
    ) -> Route {
        let next = match chain.successor(me) {
            Some(next) if answer.status.is_success() => next,
            _ => return Route::Answered(answer),
        };
        bump(&self.counters.chain_relayed);
        let mut forward = Frame::request(
            chain::chain_opcode(request.opcode),
            request.request_id,
            request.key,
            request.value,
        );
        forward.epoch = epoch;
        forward.hops = request.hops;
        Route::Chain {
            answer,
            forward,
            next: ring.node(next).to_string(),
            to_tail: chain.successor(next).is_none(),
        }
    }

    /// The answer to the client of a relayed `request`, from what the next hop said.
    fn relay_answer(&self, request: &Frame, next: &str, result: Result<Frame>) -> Frame {
        match result {
            Ok(mut answer) => {
                answer.request_id = request.request_id;
                answer
            }
            Err(e) if e.status() == Status::BUSY => {
                self.peers.forget(next);
                request.error_reply(Status::BUSY, e.to_string())
            }
            Err(e) => {
                self.peers.forget(next);
                request.error_reply(
                    Status::UNAVAILABLE,
                    format!("node {next} is unavailable: {e}"),
                )
            }
        }
    }

    /// Any request but a key request's relay.
    fn answer(&self, request: Frame) -> Frame {
        match request.opcode {
            opcode if is_key_opcode(opcode) => {
                let mut answers = self.key_batch(vec![request]);
                answers.pop().unwrap_or_else(|| {
                    Frame::error_for_id(0, Status::INTERNAL, "a key request got no answer")
                })
            }
            Opcode::PING => request.reply(Status::OK, Vec::new()),
            // The epoch installed here and this process's incarnation, so that the keeper sees
            // a node that restarted.
            Opcode::HEALTH => self.health(&request),
            Opcode::SYNC_BEGIN => self.sync_begin(&request),
            Opcode::SYNC_COPY | Opcode::SYNC_DELTA | Opcode::SYNC_END => self.sync_serve(&request),
            Opcode::SIZE | Opcode::STATS => {
                let report = self.report(request.opcode);
                request.reply(Status::OK, payload::encode_reports(&[report]))
            }
            Opcode::SCAN_PART => self.scan_part(&request),
            Opcode::VIEW_INSTALL => self.install_view(&request),
            Opcode::VIEW_GET => match self.membership() {
                Some(membership) => view_answer(&request, membership.ring.view()),
                None => request.error_reply(
                    Status::NO_VIEW,
                    "this backend has not been given a view yet",
                ),
            },
            other => request.error_reply(
                Status::UNKNOWN_OPCODE,
                format!("opcode 0x{:02x} is not known to this backend", other.0),
            ),
        }
    }

    /// SCAN_PART: one step of a walk over the keys this node heads ([`crate::scan`]), under
    /// the view the walk is in. A node still catching up has not every key it heads yet: it
    /// says so rather than leave keys out.
    fn scan_part(&self, request: &Frame) -> Frame {
        let guard = self.read_membership();
        let Some(membership) = guard.as_ref().filter(|m| m.confirmed) else {
            return request.error_reply(
                Status::NO_VIEW,
                "this backend holds no confirmed view; it lists no keys",
            );
        };
        let epoch = membership.ring.view().epoch;
        if request.epoch != epoch {
            return request.error_reply(
                Status::STALE_VIEW,
                format!(
                    "the scan is in view epoch {}, this node has {epoch}: start it again",
                    request.epoch
                ),
            );
        }
        if !self.receiver.serves_reads() || self.incoming.refuses_some_reads() {
            return request.error_reply(
                Status::UNAVAILABLE,
                "this backend is catching up on keys it heads",
            );
        }
        crate::scan::serve_part(&*self.store, &|key| membership.heads(key), request)
    }

    /// HEALTH: the epoch in the header; in the value, this process's incarnation (so that the
    /// keeper sees a node that restarted), whether its view is confirmed, and where its own
    /// state transfer stands (PROTOCOL.md section 5).
    fn health(&self, request: &Frame) -> Frame {
        let membership = self.membership();
        let phase = self.receiver.phase();
        let mut value = Vec::with_capacity(51);
        value.extend_from_slice(&self.incarnation.to_be_bytes());
        value.push(u8::from(membership.as_ref().is_some_and(|m| m.confirmed)));
        value.push(phase.code());
        value.extend_from_slice(&phase.epoch().to_be_bytes());
        for counter in [
            &self.receiver.intake.keys_copied,
            &self.receiver.intake.bytes_copied,
        ] {
            value.extend_from_slice(&counter.load(Ordering::Relaxed).to_be_bytes());
        }
        // Keys it blocks until a newer view: whichever frontend's write left them so, the
        // keeper learns here that a new epoch is wanted.
        value.extend_from_slice(&self.key_locks.highest_blocked().to_be_bytes());
        let moving = self.incoming.phase();
        value.push(moving.code());
        value.extend_from_slice(&moving.epoch().to_be_bytes());
        let mut answer = request.reply(Status::OK, value);
        answer.epoch = membership.map_or(0, |m| m.ring.view().epoch);
        answer
    }

    /// SYNC_BEGIN from a syncing node (its address is the key, the points it wants the value):
    /// taken only under the very epoch it was sent in, where the node is syncing and this one
    /// up. The tracker is opened under that epoch; the snapshot is listed after it is let go,
    /// so installing a view never waits for a long listing.
    fn sync_begin(&self, request: &Frame) -> Frame {
        let node = String::from_utf8_lossy(&request.key).into_owned();
        let points = match payload::decode_points(&request.value) {
            Ok(points) => points,
            Err(e) => return request.error_reply(Status::BAD_REQUEST, e.to_string()),
        };
        let (ring, session) = {
            let guard = self.read_membership();
            let Some(m) = guard.as_ref().filter(|m| m.confirmed) else {
                return request
                    .error_reply(Status::NO_VIEW, "this backend has no view to copy under");
            };
            let view = m.ring.view();
            if request.epoch != view.epoch {
                bump(&self.counters.stale_refused);
                return request.error_reply(
                    Status::STALE_VIEW,
                    format!(
                        "transfer asked under view epoch {}, this node has {}",
                        request.epoch, view.epoch
                    ),
                );
            }
            // A node copies when it comes back (syncing) or when a move gives it partitions.
            let copies = m.ring.index_of(&node).is_some_and(|i| {
                view.states[i] == crate::ring::NodeState::Syncing
                    || view.is_moving() && view.is_up(i)
            });
            if !copies || !view.is_up(m.me) {
                return request.error_reply(
                    Status::BAD_REQUEST,
                    format!(
                        "in view epoch {} {node} is neither syncing nor up in a move, or this \
                         node is not up",
                        view.epoch
                    ),
                );
            }
            match self.trackers.open(&node, &points, &m.ring) {
                Ok(session) => (Arc::clone(&m.ring), session),
                Err(e) => return request.error_reply(Status::BAD_REQUEST, e.to_string()),
            }
        };
        bump(&self.counters.transfers_begun);
        log::info!(
            "{}: copying {} partitions to {node} (view epoch {})",
            self.my_addr(),
            points.len(),
            ring.view().epoch
        );
        match self
            .trackers
            .take_snapshot(&node, session, &ring, &*self.store)
        {
            Ok(keys) => {
                let mut value = session.to_be_bytes().to_vec();
                value.extend_from_slice(&keys.to_be_bytes());
                request.reply(Status::OK, value)
            }
            Err(e) => request.error_reply(Status::UNAVAILABLE, e.to_string()),
        }
    }

    /// SYNC_COPY, SYNC_DELTA and SYNC_END of an open transfer (the session is the value's
    /// first 8 bytes). A final delta is answered only once this node holds the epoch it was
    /// sent in, so no write of an older epoch can still be applied here.
    fn sync_serve(&self, request: &Frame) -> Frame {
        let node = String::from_utf8_lossy(&request.key).into_owned();
        let Some(session) = request
            .value
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        else {
            return request.error_reply(Status::BAD_REQUEST, "the value must start with a session");
        };
        let store = &*self.store;
        let result = match request.opcode {
            Opcode::SYNC_COPY => {
                let Some(from) = request
                    .value
                    .get(8..16)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                else {
                    return request.error_reply(
                        Status::BAD_REQUEST,
                        "SYNC_COPY needs a session and an index",
                    );
                };
                self.trackers.copy(&node, session, from, store)
            }
            Opcode::SYNC_DELTA => {
                let final_delta = request.value.get(8) == Some(&1);
                if final_delta {
                    let epoch = self.membership().map_or(0, |m| m.ring.view().epoch);
                    if epoch < request.epoch {
                        return request.error_reply(
                            Status::STALE_VIEW,
                            format!(
                                "final delta asked under view epoch {}, this node has {epoch} yet",
                                request.epoch
                            ),
                        );
                    }
                }
                self.trackers.delta(&node, session, final_delta, store)
            }
            _ => {
                return match self.trackers.end(&node, session) {
                    Ok(()) => {
                        log::info!("{}: transfer to {node} done", self.my_addr());
                        request.reply(Status::OK, Vec::new())
                    }
                    Err(e) => request.error_reply(Status::UNAVAILABLE, e.to_string()),
                }
            }
        };
        match result {
            Ok(batch) => request.reply(Status::OK, payload::encode_transfer_batch(&batch)),
            Err(e) => request.error_reply(Status::UNAVAILABLE, e.to_string()),
        }
    }

    /// Waits for the writes behind `answers` to be durable. If that fails, no write is
    /// acknowledged: every successful answer to a write becomes the storage error.
    fn settle<'a>(&self, writes: Applied, answers: impl IntoIterator<Item = &'a mut Frame>) {
        let Err(e) = self.store.settle(writes.unsettled) else {
            return;
        };
        for tag in &writes.tags {
            self.windows.forget(tag);
        }
        for answer in answers {
            if is_write(answer.opcode) && answer.status.is_success() {
                *answer = self.store_error(answer, e.clone());
            }
        }
    }

    fn count_answer(&self, answer: &Frame) {
        // "No view yet" is what a new backend truthfully says to a frontend that asks before
        // it takes up a view, not a failure.
        let no_view_yet = answer.opcode == Opcode::VIEW_GET && answer.status == Status::NO_VIEW;
        if !answer.status.is_success() && !no_view_yet {
            bump(&self.counters.errors);
        }
    }

    /// Sends `request` to `next`; a next hop that has no view (it restarted) is given ours and
    /// asked again, when that is safe: with one copy per key, where it holds all there is.
    fn relay(&self, membership: &Membership, next: &str, request: &Frame) -> Result<Frame> {
        let answer = self.peers.call(next, request)?;
        if answer.status != Status::NO_VIEW || membership.ring.view().replicas > 1 {
            return Ok(answer);
        }
        let install = view_install_frame(membership.ring.view(), next, request.request_id);
        let installed = self.peers.call(next, &install)?;
        if installed.status != Status::OK {
            return Ok(answer);
        }
        self.peers.call(next, request)
    }

    /// Applies a write this node holds a copy of; the answer is unsettled (see
    /// [`serve_locally`](BackendState::serve_locally)).
    fn apply(
        &self,
        ring: &Ring,
        position: &Position,
        request: &Frame,
        writes: &mut Applied,
    ) -> Frame {
        let result = self.write_key(ring, position, request);
        match result {
            Ok((status, written)) => {
                writes.unsettled = writes.unsettled.max(written);
                request.reply(status, Vec::new())
            }
            Err(e) => self.store_error(request, e),
        }
    }

    /// Applies a PUT or DELETE (a client's or a chain member's) to the store: through the
    /// receiver, which marks the key written while a catch-up runs, and into every transfer
    /// this node is the source of. Called under the epoch the write was checked against.
    fn write_key(
        &self,
        ring: &Ring,
        position: &Position,
        request: &Frame,
    ) -> std::result::Result<(Status, Unsettled), crate::store::StoreError> {
        let is_delete = request.opcode.is_delete();
        let (value, expires_at) = stored_value(request);
        let result = self.incoming.intake.write(&request.key, || {
            self.receiver.write(&request.key, || {
                if is_delete {
                    self.store
                        .delete_unsettled(&request.key)
                        .map(|(found, written)| {
                            (if found { Status::OK } else { Status::NOT_FOUND }, written)
                        })
                } else {
                    self.store
                        .put_expiring_unsettled(&request.key, value, expires_at)
                        .map(|written| (Status::OK, written))
                }
            })
        });
        if result.is_ok() {
            self.trackers
                .record(ring.point_index(position), &request.key);
        }
        result
    }

    /// Serves a key this node owns. Writes are not settled here: the caller settles `writes`
    /// (grown to cover this one) before any answer leaves, so a batch shares one wait.
    fn serve_locally(
        &self,
        ring: &Ring,
        position: &Position,
        request: &Frame,
        writes: &mut Applied,
    ) -> Frame {
        bump(&self.counters.served);
        self.counters
            .hops
            .fetch_add(u64::from(request.hops), Ordering::Relaxed);
        bump(&self.counters.relays[usize::from(request.hops).min(RELAY_BUCKETS - 1)]);
        match request.opcode {
            Opcode::GET => {
                bump(&self.counters.gets);
                match self.store.get(&request.key) {
                    Some(value) => request.reply(Status::OK, value),
                    None => request.reply(Status::NOT_FOUND, Vec::new()),
                }
            }
            _ => {
                if matches!(
                    request.opcode,
                    Opcode::PUT | Opcode::PUT_ONCE | Opcode::CHAIN_PUT_EXPIRING
                ) {
                    bump(&self.counters.puts);
                } else {
                    bump(&self.counters.deletes);
                }
                self.apply(ring, position, request, writes)
            }
        }
    }

    /// A full store or disk answers STORAGE_FULL; any other storage failure is INTERNAL.
    fn store_error(&self, request: &Frame, e: crate::store::StoreError) -> Frame {
        let status = if e.is_full() {
            Status::STORAGE_FULL
        } else {
            log::error!("{}: {e}", self.my_addr());
            Status::INTERNAL
        };
        request.error_reply(status, format!("{}: {e}", self.my_addr()))
    }

    /// Keys and bytes this node holds as the head of their chain (each key is counted once
    /// over the cluster), the other copies it holds, and how many of the first have an expiry
    /// time.
    fn sizes(&self) -> (StoreSize, StoreSize, u64) {
        let size = self.store.size();
        let membership = match self.membership() {
            Some(m) if m.ring.view().replicas > 1 => m,
            // One copy per key: every key here is this node's own.
            _ => return (size, StoreSize::default(), self.store.expiring_keys()),
        };
        let mut primary = StoreSize::default();
        let mut expiring = 0;
        self.store.for_each(&mut |key, expires_at, value| {
            if membership.heads(key) {
                primary.keys += 1;
                primary.bytes += (key.len() + value.len()) as u64;
                expiring += u64::from(expires_at.is_some());
            }
        });
        let replica = StoreSize {
            keys: size.keys.saturating_sub(primary.keys),
            bytes: size.bytes.saturating_sub(primary.bytes),
        };
        (primary, replica, expiring)
    }

    fn report(&self, opcode: Opcode) -> NodeReport {
        let (primary, replica, expiring) = self.sizes();
        let mut counters = vec![
            ("keys".to_string(), primary.keys),
            ("bytes".to_string(), primary.bytes),
            ("replica_keys".to_string(), replica.keys),
            ("replica_bytes".to_string(), replica.bytes),
        ];
        if opcode == Opcode::STATS {
            counters.push(("expiring_keys".to_string(), expiring));
            counters.extend(
                self.named_counters()
                    .into_iter()
                    .map(|(name, count)| (name.to_string(), count)),
            );
            for (relays, counter) in self.counters.relays.iter().enumerate() {
                let count = counter.load(Ordering::Relaxed);
                if count > 0 {
                    let plus = if relays == RELAY_BUCKETS - 1 { "+" } else { "" };
                    counters.push((format!("relays_{relays}{plus}"), count));
                }
            }
            counters.extend(self.requests.stats_counters());
            counters.extend(self.requests.latency.stats_counters());
        }
        NodeReport {
            addr: self.my_addr(),
            status: Status::OK,
            message: String::new(),
            counters,
        }
    }

    /// The STATS counters that are one number each (not the sizes, the relay histogram, the
    /// per-opcode counts or the latency buckets), in STATS order.
    fn named_counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let mut named: Vec<(&'static str, u64)> = [
            ("requests", &c.requests),
            ("puts", &c.puts),
            ("gets", &c.gets),
            ("deletes", &c.deletes),
            ("served", &c.served),
            ("relayed", &c.relayed),
            ("hops", &c.hops),
            ("errors", &c.errors),
            ("chain_relayed", &c.chain_relayed),
            ("chain_applied", &c.chain_applied),
            ("view_changes", &c.view_changes),
            ("stale_refused", &c.stale_refused),
            ("transfers_begun", &c.transfers_begun),
            ("retries_answered", &c.retries_answered),
            ("retries_completed", &c.retries_completed),
            ("retries_too_old", &c.retries_too_old),
            ("unauthorized", &c.unauthorized),
            ("catchup_keys", &self.receiver.intake.keys_copied),
            ("catchup_bytes", &self.receiver.intake.bytes_copied),
            ("transfer_keys_sent", &self.trackers.keys_sent),
            ("transfer_bytes_sent", &self.trackers.bytes_sent),
            ("handoff_keys", &self.incoming.intake.keys_copied),
            ("handoff_bytes", &self.incoming.intake.bytes_copied),
            (
                "handoff_partitions_planned",
                &self.incoming.partitions_planned,
            ),
            (
                "handoff_partitions_copied",
                &self.incoming.partitions_copied,
            ),
            ("handoff_keys_dropped", &self.incoming.keys_dropped),
            ("expired_removed", &self.sweeper.removed),
        ]
        .into_iter()
        .map(|(name, counter)| (name, counter.load(Ordering::Relaxed)))
        .collect();
        named.push(("wal_damaged_records", self.store.damaged_records()));
        named
    }
}

impl Handler for BackendState {
    fn handle(&self, request: Frame) -> Frame {
        let started = std::time::Instant::now();
        bump(&self.counters.requests);
        let opcode = request.opcode;
        let answer = self.answer(request);
        self.count_answer(&answer);
        self.requests.count(opcode, answer.status);
        if is_key_opcode(opcode) {
            self.requests.latency.observe(1, started.elapsed());
        }
        answer
    }

    /// Runs of key requests go through [`key_batch`](BackendState::key_batch) together (their
    /// relays and chain hops batched per next node); any other request is answered in its
    /// place, after the key requests before it. Requests for one key take one path, so their
    /// order holds.
    fn handle_batch(&self, requests: Vec<Frame>) -> Vec<Frame> {
        let started = std::time::Instant::now();
        let opcodes: Vec<Opcode> = requests.iter().map(|r| r.opcode).collect();
        let mut answers = Vec::with_capacity(requests.len());
        let mut run = Vec::new();
        for request in requests {
            bump(&self.counters.requests);
            if is_key_opcode(request.opcode) {
                run.push(request);
                continue;
            }
            if !run.is_empty() {
                answers.extend(self.key_batch(std::mem::take(&mut run)));
            }
            answers.push(self.answer(request));
        }
        if !run.is_empty() {
            answers.extend(self.key_batch(run));
        }
        // Every answer of the batch leaves together, so each key request waited this long.
        let elapsed = started.elapsed();
        for (answer, &opcode) in answers.iter().zip(&opcodes) {
            self.count_answer(answer);
            self.requests.count(opcode, answer.status);
        }
        let key_requests = opcodes.iter().filter(|&&op| is_key_opcode(op)).count();
        self.requests.latency.observe(key_requests as u64, elapsed);
        answers
    }

    fn refused(&self, status: Status) {
        bump(&self.counters.errors);
        if status == Status::UNAUTHORIZED {
            bump(&self.counters.unauthorized);
        }
    }

    fn cluster_token(&self) -> Option<&ClusterToken> {
        self.cluster_token.as_ref()
    }

    fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }
}

/// The answer to VIEW_GET: the view, with its epoch in the header.
pub(crate) fn view_answer(request: &Frame, view: &crate::ring::View) -> Frame {
    let mut answer = request.reply(Status::OK, payload::encode_view(view));
    answer.epoch = view.epoch;
    answer
}

/// The VIEW_INSTALL request that tells the node at `addr` about `view`.
pub(crate) fn view_install_frame(view: &crate::ring::View, addr: &str, request_id: u64) -> Frame {
    let mut frame = Frame::request(
        Opcode::VIEW_INSTALL,
        request_id,
        addr.as_bytes().to_vec(),
        payload::encode_view(view),
    );
    frame.epoch = view.epoch;
    frame
}

/// How many nodes of `view` are in `state`.
fn count_in(view: &crate::ring::View, state: crate::ring::NodeState) -> usize {
    view.states.iter().filter(|s| **s == state).count()
}

/// PUT and DELETE as clients send them, tagged or not.
fn is_client_write(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::PUT | Opcode::DELETE | Opcode::PUT_ONCE | Opcode::DELETE_ONCE | Opcode::UPDATE
    )
}

/// Every opcode that changes a key, a client's or a chain member's.
fn is_write(opcode: Opcode) -> bool {
    is_client_write(opcode) || opcode.is_chain_write()
}

/// The tag of a tagged write (already checked when it was routed).
fn tag_of(request: &Frame) -> Option<WriteTag> {
    if request.opcode.is_tagged() {
        WriteTag::split(&request.value).ok().map(|(tag, _)| tag)
    } else {
        None
    }
}

/// A write's value after the tag of a tagged one.
fn stored_part(request: &Frame) -> &[u8] {
    if request.opcode.is_tagged() {
        request.value.get(WriteTag::LEN..).unwrap_or_default()
    } else {
        &request.value
    }
}

/// Whether a write carries an expiry time before its value.
fn is_expiring_put(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::CHAIN_PUT_EXPIRING | Opcode::CHAIN_PUT_ONCE_EXPIRING
    )
}

/// The bytes a PUT stores (its value, after the tag of a tagged one and the expiry time of an
/// expiring one) and when they expire.
fn stored_value(request: &Frame) -> (&[u8], Option<u64>) {
    let stored = stored_part(request);
    if !is_expiring_put(request.opcode) {
        return (stored, None);
    }
    // Checked when it was routed.
    match chain::split_expiring(stored) {
        Some((at, value)) => (value, Some(at)),
        None => (&[], Some(0)),
    }
}

/// Every opcode that names a key.
fn is_key_opcode(opcode: Opcode) -> bool {
    is_write(opcode) || opcode == Opcode::GET
}

/// Where `me` sends a request that chain member `target` must handle. Direct routing, and a
/// node in the key's chain, go straight to it; otherwise the ring's routing walks towards the
/// key's owner, going straight to `target` rather than through a node that is down.
fn next_hop(
    ring: &Ring,
    me: usize,
    position: &Position,
    chain: &crate::ring::Chain,
    target: usize,
) -> usize {
    if ring.view().routing == crate::ring::Routing::Direct || chain.position(me).is_some() {
        return target;
    }
    let hop = ring.next_hop(me, position);
    if ring.view().is_up(hop) {
        hop
    } else {
        target
    }
}

/// Why a backend holding `installed` (where it is node `me_now`) must refuse `offered` (where
/// it would be node `me_offered`), or `None` when it may take it: an epoch never goes back, and
/// one epoch names one view.
fn refuse_view(
    installed: &crate::ring::View,
    offered: &crate::ring::View,
    me_now: usize,
    me_offered: usize,
) -> Option<String> {
    if offered.epoch < installed.epoch {
        return Some(format!(
            "view epoch {} is older than the installed {}",
            offered.epoch, installed.epoch
        ));
    }
    if offered.epoch == installed.epoch && (offered != installed || me_now != me_offered) {
        return Some(format!(
            "a different view of epoch {} is already installed",
            offered.epoch
        ));
    }
    None
}

/// The view kept in `dir` by an earlier run, rebuilt.
fn saved_membership(dir: &std::path::Path) -> Result<Option<Membership>> {
    let Some(saved) = view_file::load(dir)
        .map_err(|e| crate::error::Error::Config(format!("cannot read the saved view: {e}")))?
    else {
        return Ok(None);
    };
    let ring = Ring::new(saved.view)?;
    let Some(me) = ring.index_of(&saved.me) else {
        return Err(crate::error::Error::Config(format!(
            "the saved view in {} does not list this node's address {}",
            dir.display(),
            saved.me
        )));
    };
    log::info!(
        "{}: resumed view epoch {} from {}",
        saved.me,
        ring.view().epoch,
        dir.display()
    );
    Ok(Some(Membership {
        ring: Arc::new(ring),
        me,
        confirmed: false,
    }))
}
