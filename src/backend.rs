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
use crate::store::{Engine, MemStore};

/// How to run a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Limits, timeouts and the connection bound.
    pub server: ServerOptions,
    /// Most bytes of keys plus values stored; `None` for no limit.
    pub max_bytes: Option<u64>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: "127.0.0.1:0".into(),
            server: ServerOptions::default(),
            max_bytes: None,
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
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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
    /// Starts a backend with an in-memory store.
    ///
    /// ```
    /// let backend = ringkv::Backend::start(ringkv::BackendConfig::default()).unwrap();
    /// assert_ne!(backend.local_addr().port(), 0);
    /// ```
    pub fn start(config: BackendConfig) -> Result<Backend> {
        Backend::with_engine(config.clone(), Arc::new(MemStore::new(config.max_bytes)))
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
            "{me}: installed view epoch {} with {} nodes ({} routing, {} position(s) per node)",
            request.epoch,
            ring.len(),
            ring.view().routing,
            ring.view().vnodes
        );
        *slot = Some(Arc::new(Membership { ring, me: index }));
        request.reply(Status::OK, Vec::new())
    }

    /// PUT, GET, DELETE: serve if this node owns the key, otherwise relay.
    fn key_request(&self, request: Frame) -> Frame {
        if request.key.is_empty() {
            return request.error_reply(Status::BAD_REQUEST, "the key is empty");
        }
        let Some(membership) = self.membership() else {
            return request.error_reply(
                Status::NO_VIEW,
                "this backend has not been given a view yet",
            );
        };
        let ring = &membership.ring;
        let epoch = ring.view().epoch;
        if request.epoch != 0 && request.epoch != epoch {
            return request.error_reply(
                Status::STALE_VIEW,
                format!(
                    "request carries view epoch {}, this node has {epoch}",
                    request.epoch
                ),
            );
        }
        let position = crate::ring::key_position(&request.key);
        let owner = ring.owner(&position);
        if owner == membership.me {
            return self.serve_locally(request);
        }
        let limit = match request.hop_limit {
            0 => DEFAULT_HOP_LIMIT,
            limit => limit,
        };
        if request.hops >= limit {
            return request.error_reply(
                Status::LOOP,
                format!(
                    "{} relays reached the hop limit of {limit} before the owner",
                    request.hops
                ),
            );
        }
        let next = ring
            .node(ring.next_hop(membership.me, &position))
            .to_string();
        bump(&self.counters.relayed);
        let mut relayed = request.clone();
        relayed.hops = request.hops + 1;
        relayed.hop_limit = limit;
        relayed.epoch = epoch;
        match self.relay(&membership, &next, &relayed) {
            Ok(mut answer) => {
                answer.request_id = request.request_id;
                answer
            }
            Err(e) => {
                self.peers.forget(&next);
                request.error_reply(
                    Status::UNAVAILABLE,
                    format!("node {next} is unavailable: {e}"),
                )
            }
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

    fn serve_locally(&self, request: Frame) -> Frame {
        bump(&self.counters.served);
        self.counters
            .hops
            .fetch_add(u64::from(request.hops), Ordering::Relaxed);
        match request.opcode {
            Opcode::PUT => {
                bump(&self.counters.puts);
                match self.store.put(&request.key, &request.value) {
                    Ok(()) => request.reply(Status::OK, Vec::new()),
                    Err(e) => request
                        .error_reply(Status::STORAGE_FULL, format!("{}: {e}", self.my_addr())),
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
                if self.store.delete(&request.key) {
                    request.reply(Status::OK, Vec::new())
                } else {
                    request.reply(Status::NOT_FOUND, Vec::new())
                }
            }
        }
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
        let answer = match request.opcode {
            Opcode::PUT | Opcode::GET | Opcode::DELETE => self.key_request(request),
            Opcode::PING => request.reply(Status::OK, Vec::new()),
            Opcode::SIZE | Opcode::STATS => {
                let report = self.report(request.opcode);
                request.reply(Status::OK, payload::encode_reports(&[report]))
            }
            Opcode::VIEW_INSTALL => self.install_view(&request),
            other => request.error_reply(
                Status::UNKNOWN_OPCODE,
                format!("opcode 0x{:02x} is not known to this backend", other.0),
            ),
        };
        if !answer.status.is_success() {
            bump(&self.counters.errors);
        }
        answer
    }

    fn refused(&self, _status: Status) {
        bump(&self.counters.errors);
    }
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
