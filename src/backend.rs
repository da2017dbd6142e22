//! The backend server: owns a share of the keys, serves them from its store, and relays requests
//! for other keys towards their owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::peers::Peers;
use crate::protocol::payload::{self, NodeReport};
use crate::protocol::{Frame, Opcode, Status, DEFAULT_HOP_LIMIT};
use crate::ring::Ring;
use crate::server::{self, Dispatch, Handler, ServerHandle, ServerOptions};
use crate::store::{Engine, MemStore, Unsettled};

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
    /// When logged writes are forced to disk (with a data directory).
    pub fsync: crate::wal::FsyncPolicy,
    /// Open a log damaged before its tail by cutting it back to its last intact record.
    pub repair: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: "127.0.0.1:0".into(),
            server: ServerOptions::default(),
            max_bytes: None,
            data_dir: None,
            fsync: crate::wal::FsyncPolicy::default(),
            repair: false,
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
}

/// The ring as this node knows it, with its own place in it.
struct Membership {
    ring: Ring,
    me: usize,
}

struct BackendState {
    store: Arc<dyn Engine>,
    membership: RwLock<Option<Arc<Membership>>>,
    peers: Peers,
    counters: Counters,
    /// The address it listens on, to name itself by until a view says how others reach it.
    listening: std::sync::OnceLock<String>,
}

/// A running backend. Dropping it stops it.
pub struct Backend {
    state: Arc<BackendState>,
    server: ServerHandle,
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
        let state = Arc::new(BackendState {
            store,
            membership: RwLock::new(None),
            peers: Peers::new(config.server.timeouts, config.server.limits),
            counters: Counters::default(),
            listening: std::sync::OnceLock::new(),
        });
        let server = server::serve(
            "backend",
            &config.listen,
            config.server,
            Dispatch::ThreadPerConnection,
            Arc::clone(&state) as Arc<dyn Handler>,
        )?;
        let _ = state.listening.set(server.local_addr().to_string());
        Ok(Backend { state, server })
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
        self.server.shutdown();
    }
}

impl BackendState {
    fn membership(&self) -> Option<Arc<Membership>> {
        match self.membership.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn my_addr(&self) -> String {
        match self.membership() {
            Some(m) => m.ring.node(m.me).to_string(),
            None => self.listening.get().cloned().unwrap_or_default(),
        }
    }

    /// VIEW_INSTALL: the key is this node's own address in the view, the value the view.
    fn install_view(&self, request: &Frame) -> Frame {
        let view = match payload::decode_view(request.epoch, &request.value) {
            Ok(view) => view,
            Err(e) => return request.error_reply(Status::BAD_REQUEST, e.to_string()),
        };
        let me = String::from_utf8_lossy(&request.key).into_owned();
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
            let epoch = current.ring.view().epoch;
            if request.epoch < epoch {
                return request.error_reply(
                    Status::STALE_VIEW,
                    format!(
                        "view epoch {} is older than the installed {epoch}",
                        request.epoch
                    ),
                );
            }
        }
        log::info!(
            "{me}: installed view epoch {} with {} nodes ({} routing, {})",
            request.epoch,
            ring.len(),
            ring.view().routing,
            ring.view().placement
        );
        *slot = Some(Arc::new(Membership { ring, me: index }));
        request.reply(Status::OK, Vec::new())
    }

    /// PUT, GET, DELETE: serve if this node owns the key, otherwise relay.
    fn key_request(&self, request: Frame) -> Frame {
        let mut writes = Unsettled::NONE;
        match self.route(request, &mut writes) {
            Route::Answered(mut answer) => {
                self.settle(writes, [&mut answer]);
                answer
            }
            Route::Relay {
                request,
                relayed,
                membership,
                next,
            } => {
                let result = self.relay(&membership, &next, &relayed);
                self.relay_answer(&request, &next, result)
            }
        }
    }

    /// What to do with a key request: answer it here (served, or refused), or relay it. A
    /// write served here extends `writes`, which the caller settles.
    fn route(&self, request: Frame, writes: &mut Unsettled) -> Route {
        if request.key.is_empty() {
            return Route::Answered(request.error_reply(Status::BAD_REQUEST, "the key is empty"));
        }
        let Some(membership) = self.membership() else {
            return Route::Answered(request.error_reply(
                Status::NO_VIEW,
                "this backend has not been given a view yet",
            ));
        };
        let ring = &membership.ring;
        let epoch = ring.view().epoch;
        if request.epoch != 0 && request.epoch != epoch {
            return Route::Answered(request.error_reply(
                Status::STALE_VIEW,
                format!(
                    "request carries view epoch {}, this node has {epoch}",
                    request.epoch
                ),
            ));
        }
        let position = crate::ring::key_position(&request.key);
        let owner = ring.owner(&position);
        if owner == membership.me {
            return Route::Answered(self.serve_locally(request, writes));
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
            .node(ring.next_hop(membership.me, &position))
            .to_string();
        bump(&self.counters.relayed);
        let mut relayed = request.clone();
        relayed.hops = request.hops + 1;
        relayed.hop_limit = limit;
        relayed.epoch = epoch;
        Route::Relay {
            request,
            relayed,
            membership,
            next,
        }
    }

    /// The answer to the client of a relayed `request`, from what the next hop said.
    fn relay_answer(&self, request: &Frame, next: &str, result: Result<Frame>) -> Frame {
        match result {
            Ok(mut answer) => {
                answer.request_id = request.request_id;
                answer
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
            Opcode::PUT | Opcode::GET | Opcode::DELETE => self.key_request(request),
            Opcode::PING => request.reply(Status::OK, Vec::new()),
            Opcode::SIZE | Opcode::STATS => {
                let report = self.report(request.opcode);
                request.reply(Status::OK, payload::encode_reports(&[report]))
            }
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

    /// Waits for the writes behind `answers` to be durable. If that fails, no write is
    /// acknowledged: every successful answer to a PUT or DELETE becomes the storage error.
    fn settle<'a>(&self, writes: Unsettled, answers: impl IntoIterator<Item = &'a mut Frame>) {
        let Err(e) = self.store.settle(writes) else {
            return;
        };
        for answer in answers {
            let is_write = matches!(answer.opcode, Opcode::PUT | Opcode::DELETE);
            if is_write && answer.status == Status::OK {
                *answer = self.store_error(answer, e.clone());
            }
        }
    }

    fn count_answer(&self, answer: &Frame) {
        if !answer.status.is_success() {
            bump(&self.counters.errors);
        }
    }

    /// Sends `request` to `next`; a next hop that has no view (it restarted) is given ours and
    /// asked again.
    fn relay(&self, membership: &Membership, next: &str, request: &Frame) -> Result<Frame> {
        let answer = self.peers.call(next, request)?;
        if answer.status != Status::NO_VIEW {
            return Ok(answer);
        }
        let install = view_install_frame(membership.ring.view(), next, request.request_id);
        let installed = self.peers.call(next, &install)?;
        if installed.status != Status::OK {
            return Ok(answer);
        }
        self.peers.call(next, request)
    }

    /// Serves a key this node owns. Writes are not settled here: the caller settles `writes`
    /// (grown to cover this one) before any answer leaves, so a batch shares one wait.
    fn serve_locally(&self, request: Frame, writes: &mut Unsettled) -> Frame {
        bump(&self.counters.served);
        self.counters
            .hops
            .fetch_add(u64::from(request.hops), Ordering::Relaxed);
        bump(&self.counters.relays[usize::from(request.hops).min(RELAY_BUCKETS - 1)]);
        match request.opcode {
            Opcode::PUT => {
                bump(&self.counters.puts);
                match self.store.put_unsettled(&request.key, &request.value) {
                    Ok(written) => {
                        *writes = (*writes).max(written);
                        request.reply(Status::OK, Vec::new())
                    }
                    Err(e) => self.store_error(&request, e),
                }
            }
            Opcode::GET => {
                bump(&self.counters.gets);
                match self.store.get(&request.key) {
                    Some(value) => request.reply(Status::OK, value),
                    None => request.reply(Status::NOT_FOUND, Vec::new()),
                }
            }
            _ => {
                bump(&self.counters.deletes);
                match self.store.delete_unsettled(&request.key) {
                    Ok((found, written)) => {
                        *writes = (*writes).max(written);
                        let status = if found { Status::OK } else { Status::NOT_FOUND };
                        request.reply(status, Vec::new())
                    }
                    Err(e) => self.store_error(&request, e),
                }
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

    fn report(&self, opcode: Opcode) -> NodeReport {
        let size = self.store.size();
        let mut counters = vec![
            ("keys".to_string(), size.keys),
            ("bytes".to_string(), size.bytes),
        ];
        if opcode == Opcode::STATS {
            let c = &self.counters;
            for (name, counter) in [
                ("requests", &c.requests),
                ("puts", &c.puts),
                ("gets", &c.gets),
                ("deletes", &c.deletes),
                ("served", &c.served),
                ("relayed", &c.relayed),
                ("hops", &c.hops),
                ("errors", &c.errors),
            ] {
                counters.push((name.to_string(), counter.load(Ordering::Relaxed)));
            }
            for (relays, counter) in c.relays.iter().enumerate() {
                let count = counter.load(Ordering::Relaxed);
                if count > 0 {
                    let plus = if relays == RELAY_BUCKETS - 1 { "+" } else { "" };
                    counters.push((format!("relays_{relays}{plus}"), count));
                }
            }
        }
        NodeReport {
            addr: self.my_addr(),
            status: Status::OK,
            message: String::new(),
            counters,
        }
    }
}

impl Handler for BackendState {
    fn handle(&self, request: Frame) -> Frame {
        bump(&self.counters.requests);
        let answer = self.answer(request);
        self.count_answer(&answer);
        answer
    }

    /// Serves what it owns at once and relays the rest in batches, one per next hop, so a
    /// pipeline crosses each relay in one round trip. Requests for one key take one path, so
    /// their order holds.
    fn handle_batch(&self, requests: Vec<Frame>) -> Vec<Frame> {
        let mut answers: Vec<Option<Frame>> = Vec::with_capacity(requests.len());
        let mut relays = Vec::new();
        let mut writes = Unsettled::NONE;
        for request in requests {
            bump(&self.counters.requests);
            let is_key = matches!(request.opcode, Opcode::PUT | Opcode::GET | Opcode::DELETE);
            if !is_key {
                answers.push(Some(self.answer(request)));
                continue;
            }
            match self.route(request, &mut writes) {
                Route::Answered(answer) => answers.push(Some(answer)),
                Route::Relay {
                    request,
                    relayed,
                    membership,
                    next,
                } => {
                    relays.push((answers.len(), request, relayed, membership, next));
                    answers.push(None);
                }
            }
        }
        // One wait (one fsync under `always`) for every write served here.
        self.settle(writes, answers.iter_mut().flatten());
        let calls: Vec<(&str, &Frame)> = relays
            .iter()
            .map(|(_, _, relayed, _, next)| (next.as_str(), relayed))
            .collect();
        let results = self.peers.call_batch(&calls);
        for ((index, request, relayed, membership, next), result) in relays.iter().zip(results) {
            let result = match result {
                // A next hop that restarted gets the view and this request again.
                Ok(answer) if answer.status == Status::NO_VIEW => {
                    self.relay(membership, next, relayed)
                }
                other => other,
            };
            answers[*index] = Some(self.relay_answer(request, next, result));
        }
        answers
            .into_iter()
            .map(|answer| {
                let answer = answer.unwrap_or_else(|| {
                    Frame::error_for_id(0, Status::INTERNAL, "a relayed request got no answer")
                });
                self.count_answer(&answer);
                answer
            })
            .collect()
    }

    fn refused(&self, _status: Status) {
        bump(&self.counters.errors);
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
