//! The frontend server: the only address clients know. It installs the view on every backend,
//! forwards each key request to an entry backend, and gathers SIZE and STATS from all of them. It
//! keeps no key-value data.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::auth::{Credentials, Password};
use crate::backend::{view_answer, view_install_frame};
use crate::cluster::dedup;
use crate::cluster::follower::Follower;
use crate::cluster::keeper::{CurrentView, Keeper, KeeperOptions};
use crate::cluster::membership::{Change, Changes};
use crate::cluster::resume;
use crate::cluster::token::ClusterToken;
use crate::error::{Error, Result};
use crate::metrics::{self, Collect, Exposition, MetricsServer, RequestMetrics};
use crate::mux::MuxPool;
use crate::peers::Peers;
use crate::pool::{Backlog, ThreadPool};
use crate::protocol::payload::{self, NodeReport, WriteTag};
use crate::protocol::{Frame, FrameRef, Opcode, Status, DEFAULT_HOP_LIMIT};
use crate::resp::{self, RespServer};
use crate::ring::{default_replicas, Placement, Ring, Routing, View, DEFAULT_PLACEMENT};
use crate::rng::Rng;
use crate::server::{self, AnswersThen, Dispatch, Handler, ServerHandle, ServerOptions};
use smallvec::SmallVec;

/// Which backend the frontend hands a request to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A backend chosen at random, which relays towards the owner (the paper).
    Random,
    /// The key's owner itself: no relay.
    Owner,
}

impl std::str::FromStr for Entry {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Entry, String> {
        match s {
            "random" => Ok(Entry::Random),
            "owner" => Ok(Entry::Owner),
            _ => Err(format!(
                "unknown entry policy {s:?} (expected random or owner)"
            )),
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entry::Random => "random",
            Entry::Owner => "owner",
        })
    }
}

/// Shared connections per backend a frontend uses unless told otherwise.
pub const DEFAULT_BACKEND_CONNECTIONS: usize = 1;

/// Who waits for the backends' answers to a client connection's key requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Answering {
    /// The connection is lent to a pool worker, which sends its requests, waits for their
    /// answers and writes them to the client.
    Workers,
    /// The connection's own thread sends its requests over the shared links
    /// ([`FrontendConfig::backend_connections`], at least 1) and goes back to reading; the
    /// thread that reads a backend's answers writes them to the client. The pool takes only
    /// the requests that must be sent again (under a newer view). One thread wake-up less
    /// per request.
    #[default]
    Direct,
}

impl std::str::FromStr for Answering {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Answering, String> {
        match s {
            "workers" => Ok(Answering::Workers),
            "direct" => Ok(Answering::Direct),
            other => Err(format!(
                "unknown answering '{other}': expected workers or direct"
            )),
        }
    }
}

impl std::fmt::Display for Answering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Answering::Workers => "workers",
            Answering::Direct => "direct",
        })
    }
}

/// How to run a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Address to listen on for clients.
    pub listen: String,
    /// Every backend's address, as the frontend and the other backends reach it.
    pub backends: Vec<String>,
    /// Worker threads: with [`Answering::Workers`] they answer client requests (forwarding
    /// them to backends); with [`Answering::Direct`] they take only the requests sent again
    /// under a newer view. Each client connection also has a thread of its own that waits for
    /// its requests.
    pub threads: usize,
    /// Connections with requests that may wait for a free worker; past it, requests get BUSY.
    pub queue: usize,
    /// Who waits for the backends' answers to the key requests of both doors.
    pub answering: Answering,
    /// Shared connections per backend that carry every worker's requests, written together
    /// and matched back by request id ([`crate::mux`]); 0 gives each worker's call a pooled
    /// connection of its own, as before.
    pub backend_connections: usize,
    /// Limits, timeouts and the connection bound.
    pub server: ServerOptions,
    /// Which backend receives each request.
    pub entry: Entry,
    /// How backends relay (part of the view).
    pub routing: Routing,
    /// Where the backends sit on the ring (part of the view).
    pub placement: Placement,
    /// How long start-up waits for a backend that is not up yet.
    pub startup_timeout: Duration,
    /// Address of the Redis-protocol (RESP2) door, if it is to be opened; it shares `server`'s
    /// limits, timeouts and connection bound (counted apart from the binary door's).
    pub resp_listen: Option<String>,
    /// Copies kept of every key (the chains' length); `None` for
    /// [`default_replicas`] of the backends.
    pub replicas: Option<usize>,
    /// How the view keeper watches the backends; `None` runs no keeper (a view that never
    /// changes, as the paper's frontend).
    pub keeper: Option<KeeperOptions>,
    /// Tag every PUT and DELETE (PUT_ONCE, DELETE_ONCE) so that one whose backend failed or
    /// timed out is sent again under the next view without being applied twice. Off in the
    /// paper's design, where a failed write is simply reported.
    pub safe_retries: bool,
    /// Serve beside another frontend that is the view keeper: take up the views the backends
    /// hold, polled every keeper interval ([`crate::cluster::follower`]), and never install or
    /// publish one.
    pub follow: bool,
    /// Presented to the backends (PEER_AUTH) so that they take this frontend's views
    /// ([`crate::cluster::token`]).
    pub cluster_token: Option<ClusterToken>,
    /// The password clients must present (AUTH, or Redis's AUTH / HELLO ... AUTH) before
    /// anything else is answered ([`crate::auth`]); `None` serves anyone. Also presented to the
    /// backends, which may require it too.
    pub password: Option<Password>,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`, [`crate::metrics`]);
    /// `None` serves none. A [`crate::LocalCluster`] serves its one endpoint for all its parts
    /// here.
    pub metrics_listen: Option<String>,
    /// Answer FLUSH (Redis's FLUSHALL) by deleting every key; off by default, so that one
    /// mistyped command cannot empty a cluster.
    pub allow_flush: bool,
}

impl FrontendConfig {
    /// This configuration with the paper's design: a random entry backend, relays to the
    /// successor, one position per backend.
    pub fn paper(self) -> FrontendConfig {
        FrontendConfig {
            entry: Entry::Random,
            routing: Routing::Successor,
            placement: Placement::Hashed { per_node: 1 },
            replicas: Some(1),
            safe_retries: false,
            ..self
        }
    }
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            listen: "127.0.0.1:0".into(),
            backends: Vec::new(),
            threads: 64,
            backend_connections: DEFAULT_BACKEND_CONNECTIONS,
            answering: Answering::default(),
            queue: 128,
            server: ServerOptions::default(),
            entry: Entry::Owner,
            routing: Routing::Direct,
            placement: DEFAULT_PLACEMENT,
            startup_timeout: Duration::from_secs(30),
            resp_listen: None,
            replicas: None,
            keeper: Some(KeeperOptions::default()),
            safe_retries: true,
            follow: false,
            cluster_token: None,
            password: None,
            metrics_listen: None,
            allow_flush: false,
        }
    }
}

struct FrontendState {
    view: Arc<CurrentView>,
    entry: Entry,
    peers: Arc<Peers>,
    /// How long a request that met a newer view waits for the keeper to publish it.
    view_wait: Duration,
    /// Whether client writes are tagged and retried (see [`FrontendConfig::safe_retries`]).
    safe_retries: bool,
    writers: Writers,
    /// Whether this frontend gives its view to a backend that has none (only a view keeper,
    /// and only with one copy per key: with more, the keeper judges a node without a view).
    installs_views: bool,
    /// Whether FLUSH is answered (see [`FrontendConfig::allow_flush`]).
    allow_flush: bool,
    /// Where joins and leaves go to this frontend's view keeper; `None` when it has none.
    changes: Option<Arc<Changes>>,
    /// Asked of whoever sends a join or leave, as of the backends' peers.
    cluster_token: Option<ClusterToken>,
    password: Option<Password>,
    /// Requests by opcode and status, and key request latency (`/metrics`), both doors'.
    requests: RequestMetrics,
    /// Who waits for the backends' answers ([`FrontendConfig::answering`]).
    answering: Answering,
    /// Waves whose first answers call for sending again, when the connection threads do not
    /// wait for their answers ([`Answering::Direct`]).
    retries: Option<ThreadPool<RetryJob>>,
    /// Itself, for the completions of waves it sends without waiting.
    me: Weak<FrontendState>,
}

/// Times a key request is sent at most: a first try and two more under newer views.
const ATTEMPTS: usize = 3;

/// A wave of key requests between attempts (see [`FrontendState::forward_wave`]).
struct Wave {
    started: Instant,
    /// Lent for the whole wave, so that its tags' `below` holds.
    writers: LentWriters,
    /// Each request's write tag; empty when the wave tags none.
    tags: Tags,
    answers: Vec<Option<Frame>>,
    /// Which requests are sent again after a failure (and marked so); empty until one is.
    resends: Vec<bool>,
    /// The requests the next attempt sends; `None`: every one (the first attempt).
    todo: Option<Vec<usize>>,
    ring: Arc<Ring>,
    /// Attempts made before the next one.
    attempt: usize,
    /// The random entry of the current attempt.
    random: usize,
}

/// An attempt's frames: the request's index in its wave, its backend's index in the wave's
/// view, how the request is forwarded.
///
/// Most batches are one request (a client at pipeline 1): these lists, and the wave's tags, keep
/// one inline instead of allocating for it.
type Sent = SmallVec<[(usize, usize, Forward); 1]>;

/// Each request's write tag (see [`Wave::tags`]).
type Tags = SmallVec<[Option<WriteTag>; 1]>;

/// An attempt's frames with their backends' addresses, as the peers take them.
type Calls<'a> = SmallVec<[(&'a str, FrameRef<'a>); 1]>;

impl Wave {
    /// An attempt's frames with their backends' addresses, as the peers take them.
    fn calls<'a>(&'a self, requests: &'a [Frame], sent: &'a Sent) -> Calls<'a> {
        sent.iter()
            .map(|(index, node, forward)| (self.ring.node(*node), forward.frame(&requests[*index])))
            .collect()
    }
}

/// What a forwarded request has of its own (the client's request lends it the rest): the
/// header fields the frontend sets and the write tag that starts the value, if the frontend
/// tags the write or marks the client's own tag as sent again.
struct Forward {
    opcode: Opcode,
    epoch: u64,
    hop_limit: u16,
    tag: Option<[u8; WriteTag::LEN]>,
    /// The client's value is sent from this byte on: past its own tag once `tag` replaces it.
    value_from: usize,
}

impl Forward {
    /// The frame sent for `request`.
    fn frame<'a>(&'a self, request: &'a Frame) -> FrameRef<'a> {
        FrameRef {
            opcode: self.opcode,
            epoch: self.epoch,
            hops: 0,
            hop_limit: self.hop_limit,
            value_head: self.tag.as_ref().map_or(&[][..], |tag| &tag[..]),
            value: request.value.get(self.value_from..).unwrap_or_default(),
            ..request.borrowed()
        }
    }

    /// Marks a tagged write of `request` as sent once more, whether the frontend or the client
    /// tagged it: an earlier copy may have been applied.
    fn mark_resent(&mut self, request: &Frame) {
        let (current, value_from) = match &self.tag {
            Some(bytes) => (&bytes[..], self.value_from),
            None if request.opcode.is_tagged() => (&request.value[..], WriteTag::LEN),
            None => return,
        };
        if let Ok((tag, _)) = WriteTag::split(current) {
            self.tag = Some(tag.resent().bytes());
            self.value_from = value_from;
        }
    }

    /// Whether it may be sent again after a failure or a timeout: a read, or a tagged write.
    fn may_resend(&self) -> bool {
        self.opcode == Opcode::GET || self.opcode.is_tagged()
    }
}

/// A wave whose first attempt went over the shared links and whose answers call for more
/// than the reading thread may do (send again, wait for a view): a retry worker's job.
struct Retry {
    state: Arc<FrontendState>,
    requests: Vec<Frame>,
    wave: Wave,
    /// The first attempt's frames, answers, and those of them never written.
    sent: Sent,
    results: Vec<Result<Frame>>,
    unsent: Vec<usize>,
    then: AnswersThen,
}

/// A [`Retry`], with the first attempt's settling if it was done already.
struct RetryJob {
    retry: Retry,
    settled: Option<Settled>,
}

impl Retry {
    /// Sends again the first attempt's frames that were never written (at once: the backend
    /// never saw them), settles the attempt, and goes on as a waiting wave does.
    fn run(mut self, settled: Option<Settled>) {
        let state = Arc::clone(&self.state);
        let settled = match settled {
            Some(settled) => settled,
            None => {
                let mut results = std::mem::take(&mut self.results);
                let unsent: Vec<usize> = std::mem::take(&mut self.unsent);
                if !unsent.is_empty() {
                    let ring = &self.wave.ring;
                    let again: Vec<usize> = unsent
                        .into_iter()
                        .filter(|&k| k < self.sent.len())
                        .collect();
                    let calls: Vec<(&str, FrameRef<'_>)> = again
                        .iter()
                        .map(|&k| {
                            let (index, node, forward) = &self.sent[k];
                            (ring.node(*node), forward.frame(&self.requests[*index]))
                        })
                        .collect();
                    for (&k, answer) in again.iter().zip(state.peers.call_batch_refs(&calls)) {
                        results[k] = answer;
                    }
                }
                state.wave_settle(&self.requests, &mut self.wave, &self.sent, results)
            }
        };
        self.finish_settled(settled);
    }

    /// Goes on from a settled attempt until the wave is over, then hands on its answers.
    fn finish_settled(mut self, settled: Settled) {
        let state = Arc::clone(&self.state);
        if state.wave_next(&self.requests, &mut self.wave, settled) {
            state.wave_run(&self.requests, &mut self.wave);
        }
        state.finish_counted(self.requests, self.wave, self.then);
    }
}

/// The requests an attempt's answers send again.
#[derive(Default)]
struct Settled {
    /// Refused for their epoch: sent again in any case.
    refused: Vec<usize>,
    /// Failed: sent again only under a newer view.
    failed: Vec<usize>,
}

impl Settled {
    fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.failed.is_empty()
    }
}

/// A client id the frontend tags writes with, and its next sequence number. One is lent to a
/// batch at a time, so every write tagged with it before the batch is answered: that is the
/// `below` the batch sends. As many exist as batches ever ran at once (bounded by the worker
/// threads and the Redis door's connections), however many connections come and go, so the
/// backends' memory holds few of the frontend's clients.
#[derive(Debug)]
struct Writer {
    client: u64,
    next: u64,
}

/// The writers not lent out.
#[derive(Default)]
struct Writers {
    idle: std::sync::Mutex<Vec<Writer>>,
}

impl Writers {
    fn lend(&self) -> Writer {
        let idle = match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        idle.unwrap_or_else(|| Writer {
            client: crate::rng::unique_id(),
            next: 1,
        })
    }

    fn give_back(&self, writer: Writer) {
        match self.idle.lock() {
            Ok(mut idle) => idle.push(writer),
            Err(poisoned) => poisoned.into_inner().push(writer),
        }
    }
}

/// The writers a wave holds: most waves hold one or none, which takes no list.
#[derive(Default)]
struct LentWriters {
    first: Option<Writer>,
    more: Vec<Writer>,
}

impl LentWriters {
    /// Lends one more writer from `writers`; the one now lent last.
    fn lend_another(&mut self, writers: &Writers) -> &mut Writer {
        let writer = writers.lend();
        match &mut self.first {
            None => self.first.insert(writer),
            Some(_) => {
                self.more.push(writer);
                self.more.last_mut().expect("just pushed")
            }
        }
    }

    /// The writer lent last, if any.
    fn last_mut(&mut self) -> Option<&mut Writer> {
        match self.more.last_mut() {
            Some(writer) => Some(writer),
            None => self.first.as_mut(),
        }
    }

    fn give_back(self, writers: &Writers) {
        for writer in self.first.into_iter().chain(self.more) {
            writers.give_back(writer);
        }
    }
}

/// Tags for the untagged writes of `requests`, from writers lent from `writers` into `lent`:
/// a writer for each [`dedup::PER_CLIENT`] writes, so that no client id has more writes
/// unanswered at once than a backend remembers of one.
fn tag_writes(writers: &Writers, lent: &mut LentWriters, requests: &[Frame]) -> Tags {
    let mut below = 0;
    let mut tagged_by_last = dedup::PER_CLIENT;
    requests
        .iter()
        .map(|r| {
            if !matches!(r.opcode, Opcode::PUT | Opcode::DELETE) {
                return None;
            }
            if tagged_by_last == dedup::PER_CLIENT {
                below = lent.lend_another(writers).next;
                tagged_by_last = 0;
            }
            let writer = lent.last_mut()?;
            let tag = WriteTag {
                client: writer.client,
                seq: writer.next,
                below,
                attempt: 1,
            };
            writer.next += 1;
            tagged_by_last += 1;
            Some(tag)
        })
        .collect()
}

/// A running frontend. Dropping it stops it.
pub struct Frontend {
    state: Arc<FrontendState>,
    server: ServerHandle,
    resp: Option<RespServer>,
    /// What a metrics scrape reads of this frontend.
    collector: Arc<FrontendCollector>,
    /// Its own metrics endpoint, with [`FrontendConfig::metrics_listen`].
    metrics: Option<MetricsServer>,
    /// What keeps the view current: its own keeper, or a follower of another frontend's.
    _keeper: Option<Keeper>,
    _follower: Option<Follower>,
}

thread_local! {
    static ENTRY_RNG: RefCell<Rng> = RefCell::new(Rng::from_entropy());
}

impl Frontend {
    /// Starts listening, then hands the view to every backend, waiting up to the start-up
    /// timeout for backends that are not up yet. A backend that missed the view gets it the
    /// first time it answers NO_VIEW.
    pub fn start(config: FrontendConfig) -> Result<Frontend> {
        if config.backends.is_empty() {
            return Err(Error::Config(
                "the frontend needs at least one backend address".into(),
            ));
        }
        let replicas = config
            .replicas
            .unwrap_or_else(|| default_replicas(config.backends.len()));
        let configured = View::new(
            1,
            config.routing,
            config.placement,
            replicas,
            config.backends.clone(),
        );
        // Checked before anything is asked, so that a bad command line fails at once.
        Ring::new(configured.clone())?;
        let peers = Arc::new(
            Peers::new(config.server.timeouts, config.server.limits)
                .with_credentials(Credentials {
                    token: config.cluster_token.clone(),
                    password: config.password.clone(),
                })
                .multiplexed(config.backend_connections),
        );
        let held = resume::ask(&peers, &config.backends, config.startup_timeout);
        let start = resume::choose(
            &configured,
            config.replicas.is_some(),
            &config.backends,
            &held,
        );
        let (view, resumed) = match start {
            resume::Start::Resume(view, differences) => {
                log::info!(
                    "the backends hold view epoch {} ({} nodes, {} copies of every key): \
                     serving it (the membership is what the backends hold; the command line \
                     only says where to find them)",
                    view.epoch,
                    view.nodes.len(),
                    view.replicas
                );
                for difference in differences {
                    log::warn!("{difference}");
                }
                (view, true)
            }
            resume::Start::Fresh(..) if config.follow => {
                return Err(Error::Config(
                    "a following frontend (--follow) takes up the view the backends hold, and \
                     none of its backends holds one: start the view keeper first"
                        .into(),
                ));
            }
            resume::Start::Fresh(view, why) => {
                for reason in why {
                    log::warn!("{reason}");
                }
                (view, false)
            }
        };
        let replicas = view.replicas;
        let ring = Ring::new(view)?;
        if config.follow && config.keeper.is_none() {
            return Err(Error::Config(
                "a following frontend polls the backends every --ping-interval; it cannot be 0"
                    .into(),
            ));
        }
        if config.keeper.is_none() && replicas > 1 {
            return Err(Error::Config(
                "keeping more than one copy of each key needs the view keeper (--ping-interval \
                 above 0): a chain that loses a member waits for the next view"
                    .into(),
            ));
        }
        if config.threads == 0 {
            return Err(Error::Config(
                "the frontend needs at least one thread".into(),
            ));
        }
        let answering = if config.backend_connections == 0 {
            Answering::Workers
        } else {
            config.answering
        };
        let retries = match answering {
            Answering::Workers => None,
            Answering::Direct => Some(
                ThreadPool::new(
                    "frontend-retry",
                    config.threads,
                    config.queue,
                    |job: RetryJob, _: &Backlog| job.retry.run(job.settled),
                )
                .map_err(|e| Error::Config(format!("cannot start the frontend's threads: {e}")))?,
            ),
        };
        let state = Arc::new_cyclic(|me| FrontendState {
            view: Arc::new(CurrentView::new(ring)),
            entry: config.entry,
            peers,
            view_wait: config
                .keeper
                .map_or(Duration::ZERO, |k| 2 * (k.interval + k.timeout)),
            safe_retries: config.safe_retries,
            writers: Writers::default(),
            installs_views: !config.follow && replicas == 1,
            allow_flush: config.allow_flush,
            changes: (config.keeper.is_some() && !config.follow)
                .then(|| Arc::new(Changes::default())),
            cluster_token: config.cluster_token.clone(),
            password: config.password.clone(),
            requests: RequestMetrics::default(),
            answering,
            retries,
            me: me.clone(),
        });
        let dispatch = match answering {
            Answering::Workers => Dispatch::Pool {
                threads: config.threads,
                queue: config.queue,
            },
            Answering::Direct => Dispatch::ThreadPerConnection,
        };
        let server = server::serve(
            "frontend",
            &config.listen,
            config.server,
            dispatch,
            Arc::clone(&state) as Arc<dyn Handler>,
        )?;
        let resp = match &config.resp_listen {
            Some(addr) => Some(resp::serve(
                addr,
                config.server,
                Arc::clone(&state) as Arc<dyn Handler>,
            )?),
            None => None,
        };
        // A view taken up from the backends is theirs already; the keeper gives it to any that
        // lack it, and judges the ones that restarted. Without a keeper it is installed here.
        if !resumed || config.keeper.is_none() {
            state.install_everywhere(config.startup_timeout);
        }
        let bind_error = |source| Error::Bind {
            addr: config.listen.clone(),
            source,
        };
        let (view, peers) = (Arc::clone(&state.view), Arc::clone(&state.peers));
        let (keeper, follower) = match config.keeper {
            Some(options) if config.follow => (
                None,
                Some(Follower::start(options, view, peers).map_err(bind_error)?),
            ),
            Some(options) => {
                let changes = state.changes.clone().unwrap_or_default();
                (
                    Some(Keeper::start(options, view, peers, changes).map_err(bind_error)?),
                    None,
                )
            }
            None => (None, None),
        };
        let collector = Arc::new(FrontendCollector {
            state: Arc::clone(&state),
            connections: server.connections(),
            resp_connections: resp.as_ref().map(RespServer::connections),
            node: server.local_addr().to_string(),
        });
        let metrics = MetricsServer::start_for(
            config.metrics_listen.as_deref(),
            Arc::clone(&collector) as Arc<dyn Collect>,
        )?;
        Ok(Frontend {
            state,
            server,
            resp,
            collector,
            metrics,
            _keeper: keeper,
            _follower: follower,
        })
    }

    /// The address of its metrics endpoint, when it serves one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// What a metrics scrape reads of this frontend, for an endpoint that reports several
    /// parts of a process (`ringkv local`'s).
    pub(crate) fn metrics_source(&self) -> Arc<dyn Collect> {
        Arc::clone(&self.collector) as Arc<dyn Collect>
    }

    /// The address of the Redis-protocol door, when it is open.
    pub fn resp_addr(&self) -> Option<std::net::SocketAddr> {
        self.resp.as_ref().map(RespServer::local_addr)
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The view the frontend routes by now.
    pub fn view(&self) -> View {
        self.state.view.get().view().clone()
    }

    /// Stops listening and closes every client connection.
    pub fn shutdown(&mut self) {
        if let Some(metrics) = &mut self.metrics {
            metrics.shutdown();
        }
        self.server.shutdown();
        if let Some(resp) = &mut self.resp {
            resp.shutdown();
        }
    }
}

/// What a metrics scrape reads of a frontend: its request counts, its binary door's open
/// connections and the view it routes by.
struct FrontendCollector {
    state: Arc<FrontendState>,
    connections: Arc<server::Registry>,
    /// The Redis door's connections, when it is open.
    resp_connections: Option<Arc<server::Registry>>,
    /// The address clients reach it at.
    node: String,
}

impl Collect for FrontendCollector {
    fn collect(&self, out: &mut Exposition) {
        let labels = [("role", "frontend"), ("node", self.node.as_str())];
        let ring = self.state.view.get();
        let view = ring.view();
        metrics::common(
            out,
            &labels,
            &self.state.requests,
            self.connections.len(),
            view.epoch,
        );
        if let Some(resp) = &self.resp_connections {
            out.gauge(
                "ringkv_resp_open_connections",
                "Open connections on the Redis-protocol door.",
                &labels,
                resp.len() as u64,
            );
        }
        for (state, name) in [
            (crate::ring::NodeState::Up, "up"),
            (crate::ring::NodeState::Down, "down"),
            (crate::ring::NodeState::Syncing, "syncing"),
        ] {
            let count = view.states.iter().filter(|&&s| s == state).count();
            out.gauge(
                "ringkv_view_backends",
                "Backends in the view this frontend routes by, by state.",
                &[labels[0], labels[1], ("state", name)],
                count as u64,
            );
        }
    }
}

impl FrontendState {
    fn install(&self, ring: &Ring, addr: &str) -> Result<Frame> {
        self.peers
            .call(addr, &view_install_frame(ring.view(), addr, 0))
    }

    fn install_everywhere(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let ring = self.view.get();
        let ring = &*ring;
        std::thread::scope(|scope| {
            for addr in &ring.view().nodes {
                scope.spawn(move || {
                    let mut pause = Duration::from_millis(20);
                    let mut last_log: Option<Instant> = None;
                    loop {
                        match self.install(ring, addr) {
                            Ok(answer) if answer.status == Status::OK => {
                                log::debug!("backend {addr} has the view");
                                return;
                            }
                            Ok(answer) => {
                                log::error!(
                                    "backend {addr} refused the view: {}: {}",
                                    answer.status,
                                    answer.message()
                                );
                                return;
                            }
                            Err(e) => {
                                if Instant::now() >= deadline {
                                    log::warn!(
                                        "backend {addr} is still not reachable after {timeout:?} \
                                         ({e}); serving without it, it gets the view when it answers"
                                    );
                                    return;
                                }
                                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                                    log::info!("waiting for backend {addr}: {e}");
                                    last_log = Some(Instant::now());
                                }
                                std::thread::sleep(pause.min(deadline - Instant::now()));
                                pause = (pause * 2).min(Duration::from_secs(1));
                            }
                        }
                    }
                });
            }
        });
    }

    /// A random backend that is up, for the paper's entry policy (0 under any other, which
    /// does not look at it).
    fn random_entry(&self, ring: &Ring) -> usize {
        if self.entry != Entry::Random {
            return 0;
        }
        let is_up = |n: &usize| ring.view().is_up(*n);
        let up = (0..ring.len()).filter(is_up).count();
        let pick = ENTRY_RNG.with(|rng| rng.borrow_mut().below(up.max(1) as u64) as usize);
        (0..ring.len()).filter(is_up).nth(pick).unwrap_or(0)
    }

    /// The backend a key request enters the ring at: the head of its chain for a write, the
    /// tail for a read, unless the paper's random entry is chosen (`random`). `None` when
    /// every node of the key's chain is down.
    fn entry_for<'r>(&self, ring: &'r Ring, request: &Frame, random: usize) -> Option<&'r str> {
        self.entry_node(ring, request, random)
            .map(|node| ring.node(node))
    }

    /// [`entry_for`](Self::entry_for), as the node's index in the view.
    fn entry_node(&self, ring: &Ring, request: &Frame, random: usize) -> Option<usize> {
        match self.entry {
            Entry::Random => Some(random),
            Entry::Owner => {
                let chain = ring.chain_of_key(&request.key);
                if request.opcode == Opcode::GET {
                    chain.tail()
                } else {
                    chain.head()
                }
            }
        }
    }

    /// How the wave's request `index` goes to the backends: tagged if the wave tagged it, marked
    /// as sent again if the wave sends it again after a failure, this view's epoch, no relays
    /// yet, and a hop limit that only stops loops, never a request on its way.
    fn to_backend(&self, wave: &Wave, requests: &[Frame], index: usize) -> Forward {
        let (ring, request) = (&wave.ring, &requests[index]);
        let tag = wave.tags.get(index).and_then(Option::as_ref);
        let opcode = match (tag, request.opcode) {
            (None, opcode) => opcode,
            (Some(_), Opcode::DELETE) => Opcode::DELETE_ONCE,
            (Some(_), _) => Opcode::PUT_ONCE,
        };
        let mut forward = Forward {
            opcode,
            epoch: ring.view().epoch,
            hop_limit: ring
                .relay_bound()
                .clamp(usize::from(DEFAULT_HOP_LIMIT), usize::from(u16::MAX))
                as u16,
            tag: tag.map(WriteTag::bytes),
            value_from: 0,
        };
        if wave.resends.get(index) == Some(&true) {
            forward.mark_resent(request);
        }
        forward
    }

    /// PUT, GET, DELETE: to the entry backend, which serves or relays.
    fn forward(&self, request: Frame) -> Frame {
        self.forward_batch(std::slice::from_ref(&request))
            .pop()
            .unwrap_or_else(|| request.error_reply(Status::INTERNAL, "no answer"))
    }

    /// Key requests of one pipeline, forwarded together: one batch per backend, one round trip
    /// each, all backends at once. A random entry is drawn once per batch, so that requests
    /// for one key take one path and keep their order.
    ///
    /// A request refused because it carried an old epoch (STALE_VIEW, NO_VIEW: nothing was
    /// applied) is sent again under the newer view once the keeper has published it; the
    /// requests of one key are retried together, so their order holds.
    fn forward_batch(&self, requests: &[Frame]) -> Vec<Frame> {
        let waves = crate::cluster::chain::waves(requests);
        if waves.len() <= 1 {
            return self.forward_wave(requests);
        }
        waves
            .into_iter()
            .flat_map(|wave| self.forward_wave(&requests[wave]))
            .collect()
    }

    /// Key requests that may be carried out at once (see [`crate::cluster::chain::waves`]).
    ///
    /// A request refused for its epoch (STALE_VIEW, NO_VIEW: not applied) is sent again under
    /// the next view. So is a read or a tagged write whose backend failed, timed out or
    /// answered UNAVAILABLE, once the keeper has published a newer view: the head that takes
    /// the tagged write again answers it with its first result if it was applied. Requests are
    /// sent again in their order, so the writes of one key keep theirs.
    fn forward_wave(&self, requests: &[Frame]) -> Vec<Frame> {
        let mut wave = self.wave_begin(requests);
        self.wave_run(requests, &mut wave);
        self.wave_finish(requests, wave)
    }

    /// The wave's attempts from the next one on, each waiting for its answers.
    fn wave_run(&self, requests: &[Frame], wave: &mut Wave) {
        loop {
            let sent = self.wave_attempt(requests, wave);
            let results = self.peers.call_batch_refs(&wave.calls(requests, &sent));
            let settled = self.wave_settle(requests, wave, &sent, results);
            if !self.wave_next(requests, wave, settled) {
                return;
            }
        }
    }

    /// Sends a wave's first attempt over the shared links and returns at once: the thread that
    /// reads the last answer finishes the wave and hands its answers to `then`, unless some are
    /// to be sent again, which a retry worker does (it may wait for a newer view).
    fn start_wave(
        &self,
        me: Arc<FrontendState>,
        mux: &MuxPool,
        requests: Vec<Frame>,
        then: AnswersThen,
    ) {
        let mut wave = self.wave_begin(&requests);
        let sent = self.wave_attempt(&requests, &mut wave);
        if sent.is_empty() {
            return self.finish_counted(requests, wave, then);
        }
        // The frames are encoded before this returns, so the completion may own their parts.
        let sending = mux.call_batch_start(&wave.calls(&requests, &sent));
        sending.then(Box::new(move |results, unsent| {
            let retry = Retry {
                state: Arc::clone(&me),
                requests,
                wave,
                sent,
                results,
                unsent,
                then,
            };
            me.after_first_attempt(retry)
        }));
    }

    /// A wave's first answers, in the thread that read the last of them: finished here if
    /// nothing is to be sent again, else handed to a retry worker (which may wait for a view,
    /// as this thread must not); with every worker busy and the queue full, finished with the
    /// answers as they are (each says what happened).
    fn after_first_attempt(&self, mut retry: Retry) {
        // Frames never written are sent again by the worker before the attempt is settled.
        let settled = if retry.unsent.is_empty() {
            let results = std::mem::take(&mut retry.results);
            let settled = self.wave_settle(&retry.requests, &mut retry.wave, &retry.sent, results);
            if settled.is_empty() {
                return self.finish_counted(retry.requests, retry.wave, retry.then);
            }
            Some(settled)
        } else {
            None
        };
        let job = RetryJob { retry, settled };
        let refused = match &self.retries {
            Some(retries) => retries.try_submit(job).err(),
            None => Some(job),
        };
        if let Some(RetryJob { mut retry, settled }) = refused {
            if settled.is_none() {
                let results = std::mem::take(&mut retry.results);
                self.wave_settle(&retry.requests, &mut retry.wave, &retry.sent, results);
            }
            self.finish_counted(retry.requests, retry.wave, retry.then);
        }
    }

    /// A wave's first state: its writes tagged, every request still to send.
    fn wave_begin(&self, requests: &[Frame]) -> Wave {
        let writes = requests
            .iter()
            .any(|r| matches!(r.opcode, Opcode::PUT | Opcode::DELETE));
        let mut writers = LentWriters::default();
        let tags = if self.safe_retries && writes {
            tag_writes(&self.writers, &mut writers, requests)
        } else {
            Tags::new()
        };
        Wave {
            started: Instant::now(),
            writers,
            tags,
            answers: vec![None; requests.len()],
            resends: Vec::new(),
            todo: None,
            ring: self.view.get(),
            attempt: 0,
            random: 0,
        }
    }

    /// The frames of the wave's next attempt, each with its backend; a request whose every
    /// node is down is answered here instead.
    fn wave_attempt(&self, requests: &[Frame], wave: &mut Wave) -> Sent {
        let ring = Arc::clone(&wave.ring);
        wave.random = self.random_entry(&ring);
        // Taken out while the wave notes the answers of requests it cannot send, then put back.
        let todo_list = wave.todo.take();
        let todo = todo_list.as_deref();
        let mut sent = Sent::with_capacity(todo.map_or(requests.len(), <[usize]>::len));
        // In request order, so that the requests of one key keep theirs (`todo` is sorted).
        let sends = |index: &usize| todo.is_none_or(|todo| todo.binary_search(index).is_ok());
        for index in (0..requests.len()).filter(sends) {
            let request = &requests[index];
            match self.entry_node(&ring, request, wave.random) {
                Some(node) => sent.push((index, node, self.to_backend(wave, requests, index))),
                None => {
                    wave.answers[index] = Some(request.error_reply(
                        Status::UNAVAILABLE,
                        format!(
                            "every node holding this key is down (view epoch {}, owner {})",
                            ring.view().epoch,
                            ring.node(ring.owner_of_key(&request.key))
                        ),
                    ))
                }
            }
        }
        wave.todo = todo_list;
        sent
    }

    /// Takes an attempt's answers: which requests are to be sent again. Never waits.
    fn wave_settle(
        &self,
        requests: &[Frame],
        wave: &mut Wave,
        sent: &[(usize, usize, Forward)],
        results: Vec<Result<Frame>>,
    ) -> Settled {
        let last = wave.attempt + 1 == ATTEMPTS;
        // Refused for the epoch: sent again in any case. Failed: only under a newer view.
        let mut settled = Settled::default();
        let ring = Arc::clone(&wave.ring);
        for ((index, node, forward), result) in sent.iter().zip(results) {
            let request = &requests[*index];
            let addr = ring.node(*node);
            match result {
                Ok(answer)
                    if !last
                        && (answer.status == Status::STALE_VIEW
                            || answer.status == Status::NO_VIEW) =>
                {
                    log::debug!(
                        "backend {addr} answered {}: {}",
                        answer.status,
                        answer.message()
                    );
                    settled.refused.push(*index);
                    wave.answers[*index] = Some(answer);
                }
                Ok(answer) => {
                    if answer.status == Status::UNAVAILABLE && request.opcode != Opcode::GET {
                        // A chain left the write unacknowledged: the head blocks the key
                        // until the next view.
                        self.view.want_epoch_after(forward.epoch);
                    }
                    if !last && answer.status == Status::UNAVAILABLE && forward.may_resend() {
                        settled.failed.push(*index);
                    }
                    wave.answers[*index] = Some(answer);
                }
                Err(e) if e.status() == Status::BUSY => {
                    self.peers.forget(addr);
                    wave.answers[*index] = Some(request.error_reply(Status::BUSY, e.to_string()));
                }
                Err(e) => {
                    self.peers.forget(addr);
                    if !last && forward.may_resend() {
                        settled.failed.push(*index);
                    }
                    wave.answers[*index] = Some(request.error_reply(
                        Status::UNAVAILABLE,
                        format!("backend {addr} is unavailable: {e}"),
                    ));
                }
            }
        }
        settled
    }

    /// Readies the wave's next attempt, waiting for a newer view if the answers call for one;
    /// false when there is none to make.
    fn wave_next(&self, requests: &[Frame], wave: &mut Wave, settled: Settled) -> bool {
        let Settled {
            mut refused,
            failed,
        } = settled;
        if refused.is_empty() && failed.is_empty() {
            return false;
        }
        // A backend ahead of us: the keeper is publishing a newer view. A head that blocks a
        // key until the next view, or a backend that failed: the keeper is asked for one. A
        // backend behind us (it restarted, or missed an install): it is given ours.
        let epoch = wave.ring.view().epoch;
        self.view.want_epoch_after(epoch);
        match self.view.newer_than(epoch, self.view_wait) {
            Some(newer) if wave.started.elapsed() < dedup::RESEND_WITHIN => {
                wave.ring = newer;
                // Marked as sent again, so that a head that cannot remember that far back
                // refuses it rather than apply it twice.
                if !failed.is_empty() {
                    wave.resends.resize(requests.len(), false);
                }
                for &index in &failed {
                    wave.resends[index] = true;
                }
                refused.extend(failed);
            }
            Some(newer) => {
                wave.ring = newer;
            }
            None => {
                for &index in refused.iter().filter(|_| self.installs_views) {
                    if let Some(addr) = self.entry_for(&wave.ring, &requests[index], wave.random) {
                        let _ = self.install(&wave.ring, addr);
                    }
                }
                if refused.is_empty() {
                    return false;
                }
            }
        }
        refused.sort_unstable();
        wave.todo = Some(refused);
        wave.attempt += 1;
        wave.attempt < ATTEMPTS
    }

    /// [`wave_finish`](Self::wave_finish) for a wave sent without waiting, its requests and
    /// latency counted as [`handle_batch`](Handler::handle_batch) counts a waiting batch's.
    /// The requests go back with the answers, for the door to read its next ones into.
    fn finish_counted(&self, requests: Vec<Frame>, wave: Wave, then: AnswersThen) {
        let started = wave.started;
        let answers = self.wave_finish(&requests, wave);
        let elapsed = started.elapsed();
        for answer in &answers {
            self.requests.count(answer.opcode, answer.status);
        }
        self.requests.latency.observe(answers.len() as u64, elapsed);
        then(answers, requests)
    }

    /// The wave's answers, under the clients' request ids and opcodes.
    fn wave_finish(&self, requests: &[Frame], wave: Wave) -> Vec<Frame> {
        wave.writers.give_back(&self.writers);
        wave.answers
            .into_iter()
            .zip(requests)
            .map(|(answer, request)| {
                let mut answer =
                    answer.unwrap_or_else(|| request.error_reply(Status::INTERNAL, "no answer"));
                answer.request_id = request.request_id;
                answer.opcode = request.opcode;
                answer
            })
            .collect()
    }

    /// SIZE, STATS: every backend's report, asked in parallel, in view order, then the total.
    fn gather(&self, request: &Frame) -> Frame {
        let ring = self.view.get();
        let nodes = &ring.view().nodes;
        let mut reports: Vec<NodeReport> = std::thread::scope(|scope| {
            let asks: Vec<_> = nodes
                .iter()
                .map(|addr| scope.spawn(move || self.report_of(addr, request)))
                .collect();
            asks.into_iter()
                .zip(nodes)
                .map(|(ask, addr)| {
                    ask.join().unwrap_or_else(|_| {
                        NodeReport::failed(addr, Status::INTERNAL, "report thread failed")
                    })
                })
                .collect()
        });
        reports.push(total(&reports));
        request.reply(Status::OK, payload::encode_reports(&reports))
    }

    fn report_of(&self, addr: &str, request: &Frame) -> NodeReport {
        let ask = Frame::request(request.opcode, request.request_id, Vec::new(), Vec::new());
        let answer = match self.peers.call(addr, &ask) {
            Ok(answer) => answer,
            Err(e) => {
                self.peers.forget(addr);
                return NodeReport::failed(addr, Status::UNAVAILABLE, e.to_string());
            }
        };
        if answer.status != Status::OK {
            return NodeReport::failed(addr, answer.status, answer.message());
        }
        match payload::decode_reports(&answer.value) {
            Ok(mut list) if list.len() == 1 => {
                let mut report = list.remove(0);
                report.addr = addr.to_string();
                report
            }
            Ok(list) => NodeReport::failed(
                addr,
                Status::INTERNAL,
                format!("backend sent {} reports instead of one", list.len()),
            ),
            Err(e) => NodeReport::failed(addr, Status::INTERNAL, e.to_string()),
        }
    }
}

/// The sum of every counter over the nodes that answered, addressed `total`.
fn total(reports: &[NodeReport]) -> NodeReport {
    let mut counters: Vec<(String, u64)> = Vec::new();
    for report in reports.iter().filter(|r| r.status == Status::OK) {
        for (name, value) in &report.counters {
            match counters.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += value,
                None => counters.push((name.clone(), *value)),
            }
        }
    }
    let missing = reports.iter().filter(|r| r.status != Status::OK).count();
    NodeReport {
        addr: "total".into(),
        status: Status::OK,
        message: if missing == 0 {
            String::new()
        } else {
            format!("{missing} node(s) did not answer and are not counted")
        },
        counters,
    }
}

impl Handler for FrontendState {
    fn cluster_token(&self) -> Option<&ClusterToken> {
        self.cluster_token.as_ref()
    }

    fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    fn answers_later(&self) -> bool {
        self.answering == Answering::Direct && self.peers.mux().is_some()
    }

    /// A batch of key requests that may all go at once is sent without waiting (see
    /// [`FrontendState::start_wave`]); any other batch is answered here.
    fn start_batch(&self, requests: Vec<Frame>, then: AnswersThen) {
        let (Some(me), Some(mux)) = (self.me.upgrade(), self.peers.mux()) else {
            return then(self.handle_batch(requests), Vec::new());
        };
        let sendable = requests
            .iter()
            .all(|r| is_key_request(r.opcode) && !r.key.is_empty())
            && crate::cluster::chain::is_one_wave(&requests);
        if !sendable || self.answering != Answering::Direct {
            return then(self.handle_batch(requests), Vec::new());
        }
        self.start_wave(me, mux, requests, then);
    }

    /// Runs of key requests go to the backends in batches; any other request is answered in
    /// its place in the order, after the key requests before it.
    fn handle_batch(&self, requests: Vec<Frame>) -> Vec<Frame> {
        let started = Instant::now();
        let answers = self.answer_batch(&requests);
        // Every answer of the batch leaves together, so each key request waited this long.
        let elapsed = started.elapsed();
        for (request, answer) in requests.iter().zip(&answers) {
            self.requests.count(request.opcode, answer.status);
        }
        let key_requests = requests.iter().filter(|r| is_key_request(r.opcode)).count();
        self.requests.latency.observe(key_requests as u64, elapsed);
        answers
    }

    fn handle(&self, request: Frame) -> Frame {
        let started = Instant::now();
        let opcode = request.opcode;
        let answer = self.answer(request);
        self.requests.count(opcode, answer.status);
        if is_key_request(opcode) {
            self.requests.latency.observe(1, started.elapsed());
        }
        answer
    }
}

impl FrontendState {
    /// The answers to a batch, in order (see [`Handler::handle_batch`]).
    fn answer_batch(&self, requests: &[Frame]) -> Vec<Frame> {
        let is_batched = |r: &Frame| is_key_request(r.opcode) && !r.key.is_empty();
        let mut answers = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while let Some(first) = rest.first() {
            if !is_batched(first) {
                answers.push(self.answer(first.clone()));
                rest = &rest[1..];
                continue;
            }
            let run = rest.iter().take_while(|r| is_batched(r)).count();
            if run == 1 {
                answers.push(self.forward(first.clone()));
            } else {
                answers.extend(self.forward_batch(&rest[..run]));
            }
            rest = &rest[run..];
        }
        answers
    }

    /// The answer to one request.
    fn answer(&self, request: Frame) -> Frame {
        match request.opcode {
            opcode if is_key_request(opcode) => {
                if request.key.is_empty() {
                    request.error_reply(Status::BAD_REQUEST, "the key is empty")
                } else {
                    self.forward(request)
                }
            }
            Opcode::SIZE | Opcode::STATS => self.gather(&request),
            Opcode::SCAN => self.scan(&self.view.get(), &request),
            Opcode::FLUSH => self.flush(&request),
            Opcode::PING => request.reply(Status::OK, Vec::new()),
            Opcode::VIEW_GET => view_answer(&request, self.view.get().view()),
            Opcode::VIEW_INSTALL => request.error_reply(
                Status::BAD_REQUEST,
                "the frontend makes views; it does not accept them",
            ),
            Opcode::MEMBER_JOIN | Opcode::MEMBER_LEAVE => self.change_membership(&request),
            other => request.error_reply(
                Status::UNKNOWN_OPCODE,
                format!("opcode 0x{:02x} is not known to the frontend", other.0),
            ),
        }
    }
}

impl FrontendState {
    /// One step of a SCAN over the backends ([`crate::scan`]).
    fn scan(&self, ring: &Ring, request: &Frame) -> Frame {
        crate::scan::serve_scan(ring, request, &|addr, step| {
            let answer = self.peers.call(addr, step);
            if answer.is_err() {
                self.peers.forget(addr);
            }
            answer
        })
    }

    /// FLUSH: walks every key and deletes it, a step at a time (not atomic: a key written
    /// meanwhile may stay). A walk cut short by a view change starts again. Answers the count
    /// of keys deleted (u64).
    fn flush(&self, request: &Frame) -> Frame {
        const STEP: u32 = 1_000;
        const FLUSH_BATCH: usize = 64;
        if !self.allow_flush {
            return request.error_reply(
                Status::BAD_REQUEST,
                "FLUSH is off at this frontend (start it with --allow-flushall); nothing deleted",
            );
        }
        let mut deleted: u64 = 0;
        let mut restarts = 0;
        let mut cursor = 0;
        loop {
            let value = crate::scan::encode_scan(cursor, STEP, b"");
            let step = Frame::request(Opcode::SCAN, request.request_id, Vec::new(), value);
            let answer = self.scan(&self.view.get(), &step);
            if answer.status == Status::STALE_VIEW && restarts < 3 {
                restarts += 1;
                cursor = 0;
                continue;
            }
            let listed = if answer.status == Status::OK {
                crate::scan::decode_keys(&answer.value).map_err(|e| e.to_string())
            } else {
                Err(format!("{}: {}", answer.status, answer.message()))
            };
            let (next, keys) = match listed {
                Ok(listed) => listed,
                Err(why) => {
                    return request.error_reply(
                        Status::UNAVAILABLE,
                        format!("FLUSH stopped after deleting {deleted} keys: {why}"),
                    )
                }
            };
            let deletes: Vec<Frame> = keys
                .into_iter()
                .map(|key| Frame::request(Opcode::DELETE, request.request_id, key, Vec::new()))
                .collect();
            // In batches no larger than a client's pipeline, which the backends' memory of
            // tagged writes is sized for.
            let answers = deletes
                .chunks(FLUSH_BATCH)
                .flat_map(|batch| self.forward_batch(batch));
            for answer in answers {
                match answer.status {
                    Status::OK => deleted += 1,
                    Status::NOT_FOUND => {}
                    status => {
                        return request.error_reply(
                            status,
                            format!(
                                "FLUSH stopped after deleting {deleted} keys: {}",
                                answer.message()
                            ),
                        )
                    }
                }
            }
            if next == 0 {
                return request.reply(Status::OK, deleted.to_be_bytes().to_vec());
            }
            cursor = next;
        }
    }

    /// MEMBER_JOIN or MEMBER_LEAVE: handed to the view keeper, answered once the change has
    /// begun (with the epoch of the view that began it) or was refused.
    fn change_membership(&self, request: &Frame) -> Frame {
        let Some(changes) = &self.changes else {
            return request.error_reply(
                Status::BAD_REQUEST,
                "this frontend is not the view keeper (it follows another): send joins and \
                 leaves to the keeper",
            );
        };
        let addr = match std::str::from_utf8(&request.key) {
            Ok(addr) if !addr.is_empty() => addr.to_string(),
            _ => {
                return request
                    .error_reply(Status::BAD_REQUEST, "the key must be a backend's address")
            }
        };
        let change = if request.opcode == Opcode::MEMBER_JOIN {
            Change::Join(addr)
        } else {
            Change::Leave(addr)
        };
        match changes.submit(change, CHANGE_WAIT) {
            Ok(epoch) => request.reply(Status::OK, epoch.to_be_bytes().to_vec()),
            Err(e) => request.error_reply(e.status(), e.to_string()),
        }
    }
}

/// How long a join or leave waits for the keeper to begin it.
const CHANGE_WAIT: Duration = Duration::from_secs(5);

/// The key requests a client may send: PUT, GET, DELETE, the tagged writes and UPDATE.
fn is_key_request(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::PUT
            | Opcode::GET
            | Opcode::DELETE
            | Opcode::PUT_ONCE
            | Opcode::DELETE_ONCE
            | Opcode::UPDATE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_tags_each_write_once_and_reports_the_earlier_writes_answered() {
        let write = |opcode| Frame::request(opcode, 1, b"k".to_vec(), b"v".to_vec());
        let batch = [
            write(Opcode::PUT),
            write(Opcode::GET),
            write(Opcode::DELETE),
        ];
        let writers = Writers::default();
        let mut lent = LentWriters::default();
        let first = tag_writes(&writers, &mut lent, &batch);
        assert!(first[1].is_none(), "a read is not tagged");
        let (a, b) = (first[0].unwrap(), first[2].unwrap());
        assert_eq!((a.client, a.below, a.attempt), (b.client, a.seq, 1));
        assert_eq!(b.seq, a.seq + 1);
        let busy = writers.lend();
        assert_ne!(busy.client, a.client, "two batches at once are two clients");
        lent.give_back(&writers);
        let mut lent = LentWriters::default();
        let c = tag_writes(&writers, &mut lent, &batch[..1])[0].unwrap();
        assert_eq!((c.client, c.seq, c.below), (a.client, b.seq + 1, b.seq + 1));

        // A batch of more writes than a backend remembers of one client takes one more.
        let many = vec![write(Opcode::PUT); dedup::PER_CLIENT + 1];
        let mut lent = LentWriters::default();
        let tags: Vec<WriteTag> = tag_writes(&writers, &mut lent, &many)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert!(lent.first.is_some() && lent.more.len() == 1, "two writers");
        let (first, last) = (tags[0], tags[dedup::PER_CLIENT]);
        assert!(tags[..dedup::PER_CLIENT]
            .iter()
            .all(|t| t.client == first.client && t.below == first.seq));
        assert_ne!(last.client, first.client);
        assert_eq!(last.below, last.seq);

        let mut forward = Forward {
            opcode: Opcode::PUT_ONCE,
            epoch: 7,
            hop_limit: 4,
            tag: Some(a.bytes()),
            value_from: 0,
        };
        let request = Frame::request(Opcode::PUT, 9, b"k".to_vec(), b"v".to_vec());
        forward.mark_resent(&request);
        let sent = forward.frame(&request).to_frame();
        assert_eq!(sent.value, a.resent().prefix(b"v"));
        let (resent, value) = WriteTag::split(&sent.value).unwrap();
        assert_eq!((resent.seq, resent.attempt, value), (a.seq, 2, &b"v"[..]));
        assert_eq!(
            (
                sent.opcode,
                sent.epoch,
                sent.hop_limit,
                sent.request_id,
                &sent.key[..]
            ),
            (Opcode::PUT_ONCE, 7, 4, 9, &b"k"[..])
        );
        let untagged = Forward {
            opcode: Opcode::PUT,
            tag: None,
            ..forward
        };
        assert!(forward.may_resend() && !untagged.may_resend());

        // A write the client tagged itself is sent again with its tag marked so.
        let own = WriteTag {
            client: 11,
            seq: 3,
            below: 3,
            attempt: 1,
        };
        let request = Frame::request(Opcode::PUT_ONCE, 9, b"k".to_vec(), own.prefix(b"v"));
        let mut forward = Forward {
            opcode: Opcode::PUT_ONCE,
            epoch: 7,
            hop_limit: 4,
            tag: None,
            value_from: 0,
        };
        assert_eq!(forward.frame(&request).to_frame().value, own.prefix(b"v"));
        forward.mark_resent(&request);
        assert_eq!(
            forward.frame(&request).to_frame().value,
            own.resent().prefix(b"v")
        );
        forward.mark_resent(&request);
        assert_eq!(
            forward.frame(&request).to_frame().value,
            own.resent().resent().prefix(b"v")
        );
    }
}
