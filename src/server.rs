//! What the backend and frontend servers share: the accept loop with its connection limit, the
//! per-connection frame loop, and shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::{Password, Session};
use crate::budget::{Held, MemoryBudget};
use crate::cluster::token::{self, ClusterToken};
use crate::connection::{FrameReader, ReadError, Timeouts};
use crate::error::{Error, Result};
use crate::pool::{Backlog, ThreadPool};
use crate::protocol::{self, Frame, Kind, Limits, Opcode, Status};

pub(crate) mod outbox;
use outbox::{AnswerOnce, Outbox};

/// Settings every server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// Key, value and frame limits for incoming frames.
    pub limits: Limits,
    /// Socket timeouts.
    pub timeouts: Timeouts,
    /// Open client connections allowed at once. At the limit, the connection that has had
    /// nothing going on longest is closed to make room, if that is at least
    /// `evict_idle_after`; otherwise the newcomer gets BUSY and is closed.
    pub max_connections: usize,
    /// How long a connection must have been idle to be closed for a newcomer at the limit.
    pub evict_idle_after: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_connections: 1024,
            evict_idle_after: EVICTABLE_AFTER,
        }
    }
}

/// Answers requests. Called from many connection threads at once.
pub trait Handler: Send + Sync + 'static {
    /// The answer to one well-formed request that is within the limits.
    fn handle(&self, request: Frame) -> Frame;
    /// The answers to requests a client sent without waiting, in the same order. A handler
    /// that forwards requests elsewhere overrides it to forward them in batches, one round
    /// trip for many requests instead of one each.
    fn handle_batch(&self, requests: Vec<Frame>) -> Vec<Frame> {
        requests.into_iter().map(|r| self.handle(r)).collect()
    }
    /// Whether [`start_batch`](Handler::start_batch) may return before its requests are
    /// answered. The connection's thread then goes on reading while they are on their way, and
    /// whichever thread finishes them writes their answers.
    fn answers_later(&self) -> bool {
        false
    }
    /// Starts answering `requests` and may return at once: `then` gets their answers, one per
    /// request in the same order, exactly once, from whichever thread has them; that thread
    /// must not wait on the client. Without [`answers_later`](Handler::answers_later), it is
    /// [`handle_batch`](Handler::handle_batch) on the calling thread.
    fn start_batch(&self, requests: Vec<Frame>, then: AnswersThen) {
        then(self.handle_batch(requests), Vec::new())
    }
    /// Told about every error answer the connection loop itself sends (malformed, too large,
    /// busy, unauthorized), so that the server can count it.
    fn refused(&self, _status: Status) {}
    /// The cluster token that peer-only requests need (see [`crate::cluster::token`]); `None`
    /// takes them from anyone.
    fn cluster_token(&self) -> Option<&ClusterToken> {
        None
    }
    /// The password every connection must present (AUTH) before anything else is answered;
    /// `None` serves anyone. A connection that presented the cluster token needs none.
    fn password(&self) -> Option<&Password> {
        None
    }
}

/// Where a handler that answers later ([`Handler::start_batch`]) sends the answers, and with
/// them the requests it was given, if it still has them (else an empty list): the connection's
/// thread reads its next requests into their buffers, which saves it an allocation for each
/// one it would otherwise have to free on another thread.
pub type AnswersThen = Box<dyn FnOnce(Vec<Frame>, Vec<Frame>) + Send>;

/// The sockets of open connections, so that shutdown can close them and the acceptor can count
/// them against the limit.
pub(crate) struct Registry {
    open: Mutex<HashMap<u64, (TcpStream, Activity)>>,
    next_id: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

/// When a connection last had something going on (milliseconds since [`clock_start`]), or
/// [`Activity::BUSY`] while a request of it is being answered.
#[derive(Clone, Default)]
pub(crate) struct Activity(Arc<AtomicU64>);

impl Activity {
    const BUSY: u64 = u64::MAX;
    /// A cluster member's connection (it presented the cluster token): never closed for room.
    const PEER: u64 = u64::MAX - 1;

    fn now() -> u64 {
        clock_start().elapsed().as_millis() as u64
    }

    /// A frame arrived, or its answers went out.
    pub(crate) fn touch(&self) {
        self.0.store(Activity::now(), Ordering::Relaxed);
    }

    /// A request of this connection is being answered: it is not idle, whatever the clock says.
    pub(crate) fn busy(&self) {
        self.0.store(Activity::BUSY, Ordering::Relaxed);
    }

    /// It is a cluster member's.
    fn peer(&self) {
        self.0.store(Activity::PEER, Ordering::Relaxed);
    }

    /// How long it has had nothing going on; `None` while busy, or for a peer's.
    fn idle_for(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            Activity::BUSY | Activity::PEER => None,
            last => Some(Duration::from_millis(Activity::now().saturating_sub(last))),
        }
    }
}

fn clock_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Registry {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (TcpStream, Activity)>> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn register(self: &Arc<Self>, stream: &TcpStream) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Activity::default();
        activity.touch();
        if let Ok(clone) = stream.try_clone() {
            self.lock().insert(id, (clone, activity.clone()));
        }
        Registered {
            registry: Arc::clone(self),
            id,
            activity,
        }
    }

    pub(crate) fn close_all(&self) {
        for (stream, _) in self.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Closes the connection that has been idle longest, if it has been idle at least
    /// `at_least`; true if one was closed (and no longer counts).
    pub(crate) fn close_idlest(&self, at_least: Duration) -> bool {
        let mut open = self.lock();
        let idlest = open
            .iter()
            .filter_map(|(id, (_, activity))| activity.idle_for().map(|idle| (*id, idle)))
            .filter(|(_, idle)| *idle >= at_least)
            .max_by_key(|(_, idle)| *idle);
        match idlest.and_then(|(id, _)| open.remove(&id)) {
            Some((stream, _)) => {
                let _ = stream.shutdown(Shutdown::Both);
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when its thread is done with it.
pub(crate) struct Registered {
    registry: Arc<Registry>,
    id: u64,
    activity: Activity,
}

impl Registered {
    /// What the acceptor sees of the connection, for its thread to keep up to date.
    pub(crate) fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Which threads answer requests. Every connection has a thread of its own that waits for its
/// requests (the connection limit bounds them); requests are answered on that thread or by a pool.
pub(crate) enum Dispatch {
    /// The connection's thread answers its requests itself (backends).
    ThreadPerConnection,
    /// A fixed pool of workers answers them (the frontend). A connection with requests is lent
    /// to a worker, which answers them and goes on serving it while requests keep coming within
    /// [`LINGER`]; when it falls quiet, when its client is slow to take its answers, or when other
    /// connections wait for a worker, the worker gives it back to the connection's thread. So a
    /// busy client is served without a thread hand-off per request, and an idle or slow one holds
    /// no worker. When every worker is busy and the queue is full, requests get BUSY and the
    /// connection stays open.
    Pool { threads: usize, queue: usize },
}

/// A connection with nothing going on for this long may be closed to make room for a new one
/// when the server is at its connection limit.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// How long a worker keeps a connection that has gone quiet, waiting for its next request
/// before giving it back: longer than a client's turn-around between an answer and its next
/// request on a busy connection, short enough that a worker is not wasted on an idle one.
const LINGER: Duration = Duration::from_millis(1);

/// Most requests answered as one batch, so answers to a deep pipeline start flowing early and one
/// client cannot keep a worker while others wait.
const MAX_BATCH: usize = 512;

/// Answer bytes gathered before they are written, so big values do not pile up in memory.
const FLUSH_AT: usize = 256 * 1024;

/// Most requests handed to the handler at once: a batch's answers are all in memory before
/// any is written, so this bounds what one connection can make the server hold (with values
/// up to the value limit).
const HANDLER_BATCH: usize = 32;

/// Answer bytes one handler batch should make a connection hold at most: a batch's answers are
/// all in memory before any is written, so batches hold fewer GETs once values are known to be
/// large ([`value_reads_per_batch`]).
pub(crate) const ANSWER_BUDGET: usize = 16 << 20;

/// The smallest answer [`RecentLargest`] takes note of: a batch of even the Redis door's most
/// frames (1,024) of smaller ones stays within [`ANSWER_BUDGET`].
const NOTEWORTHY_ANSWER: usize = ANSWER_BUDGET / 1024;

/// How long the largest answer a server made keeps its batches small.
const LARGE_ANSWERS_REMEMBERED: Duration = Duration::from_secs(10);

/// The largest answer value a server made lately: a server that has just been asked for big
/// values expects more of them, on every connection, so that many clients asking at once for
/// big values without reading the answers cost it [`ANSWER_BUDGET`] each, not a whole batch of
/// the largest values each.
#[derive(Default)]
pub(crate) struct RecentLargest {
    bytes: AtomicU64,
    at_ms: AtomicU64,
}

impl RecentLargest {
    /// An answer of `bytes` was made.
    pub(crate) fn note(&self, bytes: usize) {
        // Answers this small never limit a batch: nothing to remember, no clock to read and no
        // shared line to write on the path of every small GET.
        if bytes < NOTEWORTHY_ANSWER {
            return;
        }
        let now = Activity::now();
        let stale = now.saturating_sub(self.at_ms.load(Ordering::Relaxed))
            > LARGE_ANSWERS_REMEMBERED.as_millis() as u64;
        if stale || bytes as u64 >= self.bytes.load(Ordering::Relaxed) {
            self.bytes.store(bytes as u64, Ordering::Relaxed);
            self.at_ms.store(now, Ordering::Relaxed);
        }
    }

    /// The largest answer made within [`LARGE_ANSWERS_REMEMBERED`] (0 if none).
    pub(crate) fn get(&self) -> usize {
        if self.bytes.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let age = Activity::now().saturating_sub(self.at_ms.load(Ordering::Relaxed));
        if age > LARGE_ANSWERS_REMEMBERED.as_millis() as u64 {
            0
        } else {
            self.bytes.load(Ordering::Relaxed) as usize
        }
    }
}

/// How many GETs one batch may hold when answers have lately been up to `largest` bytes: as many
/// as fit [`ANSWER_BUDGET`], at least one, at most `most`.
pub(crate) fn value_reads_per_batch(largest: usize, most: usize) -> usize {
    (ANSWER_BUDGET / largest.max(1)).clamp(1, most.max(1))
}

/// Whether the answer to a request of `opcode` is a status and at most a short message: the
/// writes that answer nothing else (UPDATE may answer the value it replaced).
fn answers_a_status(opcode: Opcode) -> bool {
    opcode.is_chain_write()
        || matches!(
            opcode,
            Opcode::PUT | Opcode::DELETE | Opcode::PUT_ONCE | Opcode::DELETE_ONCE | Opcode::PING
        )
}

/// What every thread serving requests shares: the handler, the options, and the shutdown flag.
struct Serving {
    handler: Arc<dyn Handler>,
    options: ServerOptions,
    shutdown: Arc<AtomicBool>,
    /// The largest answer lately, which bounds the GETs of a batch.
    largest_answer: RecentLargest,
}

/// What the acceptor and the connection threads share: the above, and the frontend's workers
/// (`None` on a backend). The workers hold only the [`Serving`] part, so they never own the pool.
struct Connections {
    serving: Arc<Serving>,
    pool: Option<ThreadPool<Lent>>,
}

/// A connection lent to a pool worker, with requests waiting to be answered. The worker sends
/// the connection back when it is done with it, or `None` when it closed it.
struct Lent {
    conn: ClientConn,
    back: mpsc::SyncSender<Option<ClientConn>>,
}

/// One accepted connection and what has been read from it or is still to be written to it.
struct ClientConn {
    stream: TcpStream,
    reader: FrameReader,
    /// Requests read and not yet answered, oldest first.
    pending: VecDeque<Frame>,
    /// Encoded answers not yet written.
    out: Vec<u8>,
    /// How much of `out` has been written.
    written: usize,
    peer: String,
    idle_since: Instant,
    /// What it has presented: the cluster token, the password.
    session: Session,
    /// When the answers now in `out` started to be written: all of them must be out within
    /// the write timeout, however slowly the client takes them.
    write_started: Option<Instant>,
    /// The write timeout for a whole batch of answers.
    write_limit: Duration,
    /// The socket's write timeout in the current mode (a worker's is shorter).
    mode_write_timeout: Duration,
    /// What the acceptor sees of it, to close the idlest connection at the limit.
    activity: Activity,
    /// The largest GET answer it was sent.
    largest_answer: usize,
    /// What `pending` and `out` count against the process's in-flight budget
    /// ([`crate::budget`]); the reader counts its own buffer.
    pending_held: Held,
    out_held: Held,
}

/// What a thread does with a connection after a read or write.
enum Flow {
    /// Keep serving it.
    Continue,
    /// It is finished (closed by the peer, broken, refused, or idle too long).
    Close,
}

impl ClientConn {
    fn new(stream: TcpStream, serving: &Serving) -> Option<ClientConn> {
        let options = &serving.options;
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let budget = MemoryBudget::process();
        let mut reader = FrameReader::new(options.limits.max_frame, options.timeouts.frame);
        reader.count_against(Arc::clone(&budget));
        let mut conn = ClientConn {
            reader,
            pending: VecDeque::new(),
            stream,
            out: Vec::new(),
            written: 0,
            peer,
            idle_since: Instant::now(),
            session: Session::new(serving.handler.password().is_some()),
            write_started: None,
            write_limit: options.timeouts.io,
            mode_write_timeout: options.timeouts.io,
            activity: Activity::default(),
            largest_answer: 0,
            pending_held: Held::in_budget(Arc::clone(&budget)),
            out_held: Held::in_budget(budget),
        };
        let _ = conn.stream.set_nodelay(true);
        conn.patient(&options.timeouts).then_some(conn)
    }

    /// Socket timeouts for the connection's own thread, which may wait as long as the peer may.
    fn patient(&mut self, timeouts: &Timeouts) -> bool {
        self.mode_write_timeout = timeouts.io;
        self.stream.set_read_timeout(Some(timeouts.frame)).is_ok()
            && self.stream.set_write_timeout(Some(timeouts.io)).is_ok()
    }

    /// Socket timeouts for a worker, which must not wait on one client for long.
    fn hurried(&mut self) -> bool {
        self.mode_write_timeout = LINGER;
        self.stream.set_read_timeout(Some(LINGER)).is_ok()
            && self.stream.set_write_timeout(Some(LINGER)).is_ok()
    }

    /// Queues `first` and every further whole request already received, up to [`MAX_BATCH`].
    fn gather(&mut self, first: Frame) {
        // Not idle from the first frame until its answers are out.
        self.activity.busy();
        self.pending.push_back(first);
        // A buffered frame that turns out malformed is left for the next read to report.
        while self.pending.len() < MAX_BATCH && self.reader.has_buffered_frame() {
            match self.reader.read_frame(&mut self.stream) {
                Ok(Some(frame)) => self.pending.push_back(frame),
                _ => break,
            }
        }
        self.idle_since = Instant::now();
        self.count_held();
    }

    /// Counts what `pending` and `out` hold now against the in-flight budget. They are in
    /// memory already, so they never wait; they make requests still arriving wait instead.
    fn count_held(&mut self) {
        if self.pending_held.is_counted() {
            let pending: usize = self
                .pending
                .iter()
                .map(|f| protocol::HEADER_LEN + f.key.len() + f.value.len())
                .sum();
            self.pending_held.cover_now(pending);
        }
        self.out_held.cover_now(self.out.len());
    }

    /// A cluster member's connection counts against no budget (see [`crate::budget`]).
    fn exempt_from_budget(&mut self) {
        self.reader.exempt_from_budget();
        self.pending_held.exempt_from_now();
        self.out_held.exempt_from_now();
    }

    /// Answers the pending requests in order, writing the answers as they pile up. Stops early
    /// (`Ok(false)`, the rest stays pending) when the client is slow to take its answers (the
    /// write timeout passed), so a client asking for many big values without reading them costs
    /// the server one batch of answers ([`ANSWER_BUDGET`] once values are known to be large),
    /// not all of them; and, on a worker, as soon as
    /// other connections wait in `backlog`, so a deep pipeline cannot keep them waiting. An error
    /// means the connection is gone.
    fn answer_pending(
        &mut self,
        serving: &Serving,
        backlog: Option<&Backlog>,
    ) -> std::io::Result<bool> {
        while !self.pending.is_empty() {
            let largest = serving.largest_answer.get().max(self.largest_answer);
            // While the budget is taken, one large value at a time.
            let most = if self.out_held.budget_exhausted() {
                1
            } else {
                HANDLER_BATCH
            };
            let take = self.batch_len(value_reads_per_batch(largest, most));
            let batch: Vec<Frame> = self.pending.drain(..take).collect();
            for answer in answer_batch(serving, batch, &mut self.session, &self.peer) {
                if answer.opcode == Opcode::GET {
                    serving.largest_answer.note(answer.value.len());
                    self.largest_answer = self.largest_answer.max(answer.value.len());
                }
                answer.encode_into(&mut self.out);
            }
            if self.session.trusted && self.out_held.is_counted() {
                self.exempt_from_budget();
            }
            self.count_held();
            if self.session.locked_out() {
                // The answers so far go out; the requests after the last wrong password do not.
                self.pending.clear();
                let _ = self.flush();
                let _ = self.stream.shutdown(Shutdown::Both);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "closed after too many wrong passwords",
                ));
            }
            if self.out.len() - self.written >= FLUSH_AT && !self.flush()? {
                return Ok(false);
            }
            if !self.pending.is_empty() && backlog.is_some_and(|b| b.waiting() > 0) {
                self.flush()?;
                return Ok(false);
            }
        }
        self.flush()
    }

    /// How many pending requests the next batch takes, as [`ClientConn::answer_pending`]
    /// would, when answers have lately been up to `largest` bytes.
    fn next_batch_len(&self, largest: usize) -> usize {
        let most = if self.out_held.budget_exhausted() {
            1
        } else {
            HANDLER_BATCH
        };
        self.batch_len(value_reads_per_batch(largest, most))
    }

    /// How many pending requests the next handler batch takes: at most [`MAX_BATCH`], of which
    /// at most `value_reads` GETs and at most [`HANDLER_BATCH`] that may answer more than a
    /// status (writes answer a status: a batch of them holds little however long it is, and a
    /// long one crosses each chain hop as one batch).
    fn batch_len(&self, value_reads: usize) -> usize {
        let mut reads = 0;
        let mut valued = 0;
        let mut take = 0;
        for request in self.pending.iter().take(MAX_BATCH) {
            if request.opcode == Opcode::GET {
                if reads == value_reads {
                    break;
                }
                reads += 1;
            }
            if !answers_a_status(request.opcode) {
                if valued == HANDLER_BATCH {
                    break;
                }
                valued += 1;
            }
            take += 1;
        }
        take.max(1)
    }

    /// Answers every pending request BUSY, because no worker can take them.
    fn refuse_pending(&mut self, serving: &Serving, message: &str) -> std::io::Result<bool> {
        for request in self.pending.drain(..) {
            serving.handler.refused(Status::BUSY);
            request
                .error_reply(Status::BUSY, message)
                .encode_into(&mut self.out);
        }
        self.flush()
    }

    /// Writes queued answers until none are left (`Ok(true)`) or the write timeout passes
    /// (`Ok(false)`, the rest stays queued). The timeout counts from the first attempt to write
    /// these answers, not per write call: a client that takes them a few bytes at a time is not
    /// given more time for it.
    fn flush(&mut self) -> std::io::Result<bool> {
        let resumed = self.write_started.is_some();
        if self.written < self.out.len() && !resumed {
            self.write_started = Some(Instant::now());
        }
        let mut shortened = false;
        let mut first = true;
        while self.written < self.out.len() {
            if resumed || !first {
                let spent = self.write_started.map_or(Duration::ZERO, |t| t.elapsed());
                let left = self.write_limit.saturating_sub(spent);
                if left.is_zero() {
                    return Ok(false);
                }
                if left < self.mode_write_timeout {
                    self.stream.set_write_timeout(Some(left))?;
                    shortened = true;
                }
            }
            first = false;
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            }
        }
        if shortened {
            self.stream
                .set_write_timeout(Some(self.mode_write_timeout))?;
        }
        self.out.clear();
        if self.out.capacity() > 4 * FLUSH_AT {
            // A batch of large answers must not stay allocated once it is out.
            self.out = Vec::new();
        }
        self.out_held.release();
        self.written = 0;
        self.write_started = None;
        if self.pending.is_empty() {
            self.mark_quiet();
        }
        Ok(true)
    }

    /// Nothing of it is being answered: it may be closed for room once it has been quiet
    /// long enough, unless it is a cluster member's.
    fn mark_quiet(&self) {
        if self.session.trusted {
            self.activity.peer();
        } else {
            self.activity.touch();
        }
    }

    /// Writes everything queued, however long the write timeout lets it take.
    fn flush_all(&mut self) -> Flow {
        match self.flush() {
            Ok(true) => Flow::Continue,
            Ok(false) => {
                log::debug!(
                    "connection from {}: answers not read within the i/o timeout",
                    self.peer
                );
                Flow::Close
            }
            Err(e) => {
                log::debug!("connection from {}: write failed: {e}", self.peer);
                Flow::Close
            }
        }
    }

    /// Deals with a read that produced no frame.
    fn after_read_error(&mut self, error: ReadError, serving: &Serving) -> Flow {
        let peer = &self.peer;
        match error {
            ReadError::Idle => {
                let idle = serving.options.timeouts.idle;
                if self.idle_since.elapsed() < idle {
                    return Flow::Continue;
                }
                log::debug!("connection from {peer}: idle for {idle:?}, closing");
            }
            ReadError::Stalled { buffered } => {
                log::info!(
                    "connection from {peer}: dropped a frame stalled after {buffered} bytes"
                );
            }
            ReadError::Truncated { buffered } => {
                log::debug!("connection from {peer}: closed mid-frame after {buffered} bytes");
            }
            ReadError::OverBudget {
                request_id,
                buffered,
            } => {
                let budget = MemoryBudget::process();
                log::warn!(
                    "connection from {peer}: refused a frame after {buffered} bytes: the \
                     {} bytes of the in-flight budget stayed taken for the frame timeout",
                    budget.limit()
                );
                serving.handler.refused(Status::BUSY);
                let message = format!(
                    "the server's {} bytes for requests and answers in flight stayed taken \
                     for the frame timeout; the request was not read and nothing was done",
                    budget.limit()
                );
                Frame::error_for_id(request_id, Status::BUSY, message).encode_into(&mut self.out);
                let _ = self.flush_all();
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            ReadError::Frame { error, request_id } => {
                log::info!("connection from {peer}: malformed frame: {error}");
                serving.handler.refused(error.status());
                let answer = Frame::error_for_id(request_id, error.status(), error.to_string());
                answer.encode_into(&mut self.out);
                // The answers before it are written first, in order; then the connection ends.
                let _ = self.flush_all();
                let _ = self.stream.shutdown(Shutdown::Both);
            }
            ReadError::Io(e) => {
                log::debug!("connection from {peer}: read failed: {e}");
            }
        }
        Flow::Close
    }
}

/// The answers to well-formed frames, in order: a frame that is not a request or breaks the
/// limits is refused, the others go to the handler in one batch. A handler that panics must not
/// take the thread with it (a pool worker would be lost for good): its requests are answered
/// INTERNAL.
fn answer_batch(
    serving: &Serving,
    requests: Vec<Frame>,
    session: &mut Session,
    peer: &str,
) -> Vec<Frame> {
    let handler = &*serving.handler;
    let Screened { answers, accepted } = screen(serving, requests, session, peer);
    let handled = if accepted.len() == 1 {
        let request = accepted.into_iter();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            request.map(|r| handler.handle(r)).collect::<Vec<_>>()
        }))
    } else if accepted.is_empty() {
        Ok(Vec::new())
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.handle_batch(accepted)
        }))
    };
    let handled = handled.unwrap_or_else(|_| {
        log::error!("a request handler panicked; answering INTERNAL");
        Vec::new()
    });
    merge(answers, handled)
}

/// A batch after the connection's own checks: the answers it made itself, in place, with an
/// `Err` holding the request id of each request it accepted for the handler.
struct Screened {
    answers: Vec<std::result::Result<Frame, u64>>,
    accepted: Vec<Frame>,
}

/// The handler's answers put in the places [`screen`] left for them; a request the handler
/// did not answer (it panicked) is answered INTERNAL.
fn merge(answers: Vec<std::result::Result<Frame, u64>>, handled: Vec<Frame>) -> Vec<Frame> {
    let mut handled = handled.into_iter();
    answers
        .into_iter()
        .map(|answer| match answer {
            Ok(answer) => answer,
            Err(id) => handled.next().unwrap_or_else(|| {
                Frame::error_for_id(id, Status::INTERNAL, "the server failed on this request")
            }),
        })
        .collect()
}

/// The connection's own checks of a batch, in order: a frame that is not a request or breaks
/// the limits is refused, AUTH and PEER_AUTH are answered, and a request the session may not
/// make is refused; the rest are for the handler.
fn screen(serving: &Serving, requests: Vec<Frame>, session: &mut Session, peer: &str) -> Screened {
    let handler = &*serving.handler;
    let mut answers: Vec<std::result::Result<Frame, u64>> = Vec::with_capacity(requests.len());
    let mut accepted = Vec::with_capacity(requests.len());
    for request in requests {
        if request.kind != Kind::Request {
            handler.refused(Status::BAD_REQUEST);
            answers.push(Ok(
                request.error_reply(Status::BAD_REQUEST, "a server accepts requests only")
            ));
        } else if let Err(message) = serving.options.limits.check(&request) {
            handler.refused(Status::TOO_LARGE);
            answers.push(Ok(request.error_reply(Status::TOO_LARGE, message)));
        } else if request.opcode == Opcode::PEER_AUTH {
            answers.push(Ok(peer_auth(handler, &request, session, peer)));
        } else if request.opcode == Opcode::AUTH {
            answers.push(Ok(client_auth(handler, &request, session, peer)));
        } else if session.locked_out() {
            // Past the last wrong password nothing more is taken; the connection closes.
            break;
        } else if !session.authenticated {
            handler.refused(Status::UNAUTHORIZED);
            answers.push(Ok(request.error_reply(
                Status::UNAUTHORIZED,
                "authentication required: send AUTH with the password first",
            )));
        } else if !session.trusted
            && token::is_peer_only(request.opcode)
            && handler.cluster_token().is_some()
        {
            handler.refused(Status::UNAUTHORIZED);
            log::warn!(
                "refused {} from {peer}: the connection did not present the cluster token",
                request.opcode
            );
            answers.push(Ok(request.error_reply(
                Status::UNAUTHORIZED,
                format!(
                    "{} is taken only from cluster members: send PEER_AUTH with the cluster \
                     token first",
                    request.opcode
                ),
            )));
        } else {
            answers.push(Err(request.request_id));
            accepted.push(request);
        }
    }
    Screened { answers, accepted }
}

/// PEER_AUTH: the connection is a peer's if it carries the token (or the server has none).
/// A server with a token also takes it as the password: its peers need not know the password.
fn peer_auth(handler: &dyn Handler, request: &Frame, session: &mut Session, peer: &str) -> Frame {
    match handler.cluster_token() {
        Some(token) if !token.matches(&request.value) => {
            session.trusted = false;
            handler.refused(Status::UNAUTHORIZED);
            log::warn!("{peer} presented a wrong cluster token");
            request.error_reply(Status::UNAUTHORIZED, "wrong cluster token")
        }
        Some(_) => {
            session.trusted = true;
            session.authenticated = true;
            request.reply(Status::OK, Vec::new())
        }
        None => {
            session.trusted = true;
            request.reply(Status::OK, Vec::new())
        }
    }
}

/// AUTH: the connection may go on if it carries the password (or the server requires none).
fn client_auth(handler: &dyn Handler, request: &Frame, session: &mut Session, peer: &str) -> Frame {
    match session.offer(handler.password(), &request.value) {
        Ok(()) => request.reply(Status::OK, Vec::new()),
        Err(message) => {
            handler.refused(Status::UNAUTHORIZED);
            log::warn!(
                "{peer} offered a wrong password ({} on this connection)",
                session.failures
            );
            request.error_reply(Status::UNAUTHORIZED, message)
        }
    }
}

/// A running server: its address, and the means to stop it. Dropping it stops it too.
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    registry: Arc<Registry>,
    acceptor: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The handle of a server listening on `local_addr`, whose acceptor thread watches
    /// `shutdown` and whose open connections are in `registry`.
    pub(crate) fn new(
        local_addr: SocketAddr,
        shutdown: Arc<AtomicBool>,
        registry: Arc<Registry>,
        acceptor: JoinHandle<()>,
    ) -> ServerHandle {
        ServerHandle {
            local_addr,
            shutdown,
            registry,
            acceptor: Some(acceptor),
        }
    }

    /// The address the server listens on (with the real port when it was asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's open connections, shared, so that a metrics scrape can count them while
    /// the server runs.
    pub(crate) fn connections(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Stops accepting, closes every open connection and waits for the acceptor to end.
    pub fn shutdown(&mut self) {
        if self.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        // Open connections are closed first, so that their threads end and let go of the pool.
        self.registry.close_all();
        // The acceptor blocks in accept(); a connection of our own wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&self.local_addr, std::time::Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.registry.close_all();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `addr` and serves every connection with `handler`.
pub(crate) fn serve(
    name: &str,
    addr: &str,
    options: ServerOptions,
    dispatch: Dispatch,
    handler: Arc<dyn Handler>,
) -> Result<ServerHandle> {
    let bind_error = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    warn_if_open(name, local_addr, &*handler);
    let shutdown = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(Registry::default());

    let serving = Arc::new(Serving {
        handler,
        options,
        shutdown: Arc::clone(&shutdown),
        largest_answer: RecentLargest::default(),
    });
    let pool = match dispatch {
        Dispatch::ThreadPerConnection => None,
        Dispatch::Pool { threads, queue } => {
            let serving = Arc::clone(&serving);
            Some(
                ThreadPool::new(
                    &format!("{name}-worker"),
                    threads,
                    queue,
                    move |lent: Lent, backlog: &Backlog| serve_lent(lent, &serving, backlog),
                )
                .map_err(bind_error)?,
            )
        }
    };
    let connections = Arc::new(Connections { serving, pool });
    let acceptor = {
        let shutdown = Arc::clone(&shutdown);
        let registry = Arc::clone(&registry);
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-acceptor"))
            .spawn(move || accept_loop(&name, listener, &shutdown, &registry, connections))
            .map_err(bind_error)?
    };
    Ok(ServerHandle::new(local_addr, shutdown, registry, acceptor))
}

/// Says so in the log when a server anyone on the network may reach serves without a password.
pub(crate) fn warn_if_open(name: &str, addr: SocketAddr, handler: &dyn Handler) {
    if !addr.ip().is_loopback() && handler.password().is_none() {
        log::warn!(
            "{name} listens on {addr}, beyond this machine, without --require-auth: anyone who \
             can reach it can read and write every key"
        );
    }
}

fn accept_loop(
    name: &str,
    listener: TcpListener,
    shutdown: &AtomicBool,
    registry: &Arc<Registry>,
    connections: Arc<Connections>,
) {
    let max_connections = connections.serving.options.max_connections;
    for incoming in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                log::warn!("{name}: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        // At the limit, the connection idle longest makes room (one that says nothing must not
        // lock the others out); only when none has been idle for a while is the newcomer refused.
        let evictable = connections.serving.options.evict_idle_after;
        if registry.len() >= max_connections && !registry.close_idlest(evictable) {
            refuse_busy(
                stream,
                &format!("{name} is at its limit of {max_connections} connections"),
                &*connections.serving.handler,
            );
            continue;
        }
        let registered = registry.register(&stream);
        let connections = Arc::clone(&connections);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                serve_connection(stream, &connections, registered.activity.clone());
                drop(registered);
            });
        if let Err(e) = spawned {
            log::warn!("{name}: cannot start a connection thread: {e}");
        }
    }
}

/// Writes all of `bytes` within `limit` in all, not per write call: a client that takes its
/// answers a few bytes at a time is cut off as surely as one that does not read (`TimedOut`).
/// The socket's write timeout is restored to `limit` afterwards.
pub(crate) fn write_all_within(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    let started = Instant::now();
    let mut written = 0;
    let mut shortened = false;
    let result = loop {
        if written == bytes.len() {
            break Ok(());
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            break Err(std::io::ErrorKind::TimedOut.into());
        }
        if left < limit {
            if let Err(e) = stream.set_write_timeout(Some(left)) {
                break Err(e);
            }
            shortened = true;
        }
        match stream.write(&bytes[written..]) {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    if shortened {
        stream.set_write_timeout(Some(limit))?;
    }
    result
}

fn refuse_busy(mut stream: TcpStream, message: &str, handler: &dyn Handler) {
    log::debug!("refusing a connection: {message}");
    handler.refused(Status::BUSY);
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = stream.write_all(&Frame::error_for_id(0, Status::BUSY, message).encode());
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves one connection on its own thread until the peer closes it, misbehaves, idles out, or
/// the server shuts down. Answers are written in request order; when a client pipelines, the
/// requests already received are answered together and their answers written together.
fn serve_connection(stream: TcpStream, connections: &Connections, activity: Activity) {
    let serving = &*connections.serving;
    let Some(mut conn) = ClientConn::new(stream, serving) else {
        return;
    };
    conn.activity = activity;
    if connections.pool.is_none() && serving.handler.answers_later() {
        serve_answering_later(conn, &connections.serving);
        return;
    }
    while !serving.shutdown.load(Ordering::Relaxed) {
        // Answers a slow client has not taken yet, with the full write timeout.
        if let Flow::Close = conn.flush_all() {
            return;
        }
        if conn.pending.is_empty() {
            // Before a read that may sleep, the CPU is given up once: on a busy machine the
            // threads that feed this connection (a frontend's links, a chain's members) append
            // their next frames meanwhile, and the read takes them without this thread sleeping
            // and being woken. At pipeline 16 a backend's reads per request fell by a third
            // and the kernel time per request by a fifth.
            if !conn.reader.has_buffered_frame() {
                std::thread::yield_now();
            }
            let first = match conn.reader.read_frame(&mut conn.stream) {
                Ok(Some(first)) => first,
                Ok(None) => return,
                Err(error) => match conn.after_read_error(error, serving) {
                    Flow::Continue => continue,
                    Flow::Close => return,
                },
            };
            conn.gather(first);
        }
        let Some(pool) = &connections.pool else {
            if let Err(e) = conn.answer_pending(serving, None) {
                log::debug!("connection from {}: write failed: {e}", conn.peer);
                return;
            }
            continue;
        };
        conn = match lend(pool, conn, serving) {
            Some(conn) => conn,
            None => return,
        };
    }
}

/// Serves a connection whose handler answers later ([`outbox`]): its requests are handed on a
/// batch at a time as [`ClientConn::answer_pending`] takes them, the next when the last is
/// answered, and their answers written by whichever thread finishes them.
fn serve_answering_later(mut conn: ClientConn, serving: &Arc<Serving>) {
    let Ok(stream) = conn.stream.try_clone() else {
        return;
    };
    let outbox = Arc::new(Outbox::new(stream));
    let timeouts = &serving.options.timeouts;
    let answer_wait = timeouts.io * outbox::ANSWER_WAIT_IN_IO_TIMEOUTS;
    let mut reading_short = false;
    // The batches on their way, with the keys they touch (`None`: any key).
    let mut flying: Vec<(u64, Option<Independent>)> = Vec::new();
    while !serving.shutdown.load(Ordering::Relaxed) {
        if let Flow::Close = write_owed(&mut conn, &outbox) {
            return;
        }
        if !conn.pending.is_empty() {
            let answered = outbox.answered();
            flying.retain(|(batch, _)| *batch >= answered);
            let largest = serving.largest_answer.get().max(outbox.largest_answer());
            let take = conn.next_batch_len(largest);
            // A batch may pass requests of an earlier one on their way (a GET to a chain's
            // tail before a PUT to its head), or, answered here, not see them: it goes at once
            // only if it and every batch on its way touch distinct keys; else when they are in.
            let keys = independent_keys(&conn.pending, take);
            let overlaps = match &keys {
                Some(ours) => {
                    let flying_bytes: usize = flying
                        .iter()
                        .filter_map(|(_, theirs)| theirs.as_ref().map(|t| t.bytes))
                        .sum();
                    !flying.is_empty()
                        && value_reads_per_batch(largest, MAX_BATCH) == MAX_BATCH
                        && outbox.requests_in_flight() + take <= MAX_BATCH
                        && flying_bytes + ours.bytes <= FLUSH_AT
                        && flying.iter().all(|(_, theirs)| {
                            theirs.as_ref().is_some_and(|theirs| {
                                ours.keys.iter().all(|k| !theirs.keys.contains(k))
                            })
                        })
                }
                None => false,
            };
            if !flying.is_empty() && !overlaps {
                let until = Instant::now() + answer_wait;
                if !outbox.wait_idle(until) {
                    if outbox.broken() {
                        return;
                    }
                    if Instant::now() >= until {
                        log::warn!(
                            "connection from {}: its requests were not answered within \
                             {answer_wait:?}; closing it",
                            conn.peer
                        );
                        return;
                    }
                }
                continue;
            }
            match hand_on(&mut conn, &outbox, serving, take) {
                Ok(number) => flying.push((number, keys)),
                Err(()) => return,
            }
            continue;
        }
        // While answers are on their way, the thread wakes often, to write what a finishing
        // thread could not; once a short wait finds nothing on its way, it waits as long as a
        // client may take to send. (Switched lazily: a busy client would switch twice per
        // request.)
        let busy = outbox.busy();
        if busy && !reading_short {
            if conn
                .stream
                .set_read_timeout(Some(outbox::SHORT_READ))
                .is_err()
            {
                return;
            }
            reading_short = true;
        }
        if !busy {
            conn.mark_quiet();
        }
        if conn.reader.spare().is_empty() {
            outbox.take_spare(conn.reader.spare());
        }
        match conn.reader.read_frame_if_prompt(&mut conn.stream) {
            Ok(Some(first)) => conn.gather(first),
            Ok(None) => {
                finish_answering(&mut conn, &outbox, answer_wait);
                return;
            }
            Err(ReadError::Idle) => {
                if outbox.busy() {
                    continue;
                }
                if reading_short {
                    if conn.stream.set_read_timeout(Some(timeouts.frame)).is_err() {
                        return;
                    }
                    reading_short = false;
                }
                conn.mark_quiet();
                if let Flow::Close = conn.after_read_error(ReadError::Idle, serving) {
                    return;
                }
            }
            Err(error) => {
                // The answers before it go out first, in order.
                finish_answering(&mut conn, &outbox, answer_wait);
                let _ = conn.after_read_error(error, serving);
                return;
            }
        }
    }
}

/// Hands the first `take` pending requests to the handler as one batch; its number. An error
/// means the connection is finished.
fn hand_on(
    conn: &mut ClientConn,
    outbox: &Arc<Outbox>,
    serving: &Arc<Serving>,
    take: usize,
) -> std::result::Result<u64, ()> {
    let batch: Vec<Frame> = conn.pending.drain(..take).collect();
    conn.count_held();
    let Screened { answers, accepted } = screen(serving, batch, &mut conn.session, &conn.peer);
    // Counted as answered, not as taken: past a last wrong password the rest is not answered.
    let number = outbox.begin(answers.len());
    if conn.session.trusted && conn.out_held.is_counted() {
        conn.exempt_from_budget();
        outbox.exempt_from_budget();
    }
    if accepted.is_empty() {
        outbox.finish_frames(number, &merge(answers, Vec::new()));
    } else {
        // Answered once: by the handler, or, if it panics or drops the batch, with INTERNAL.
        let reply = {
            let outbox = Arc::clone(outbox);
            let serving = Arc::clone(serving);
            AnswerOnce::new(move |handled: Option<Vec<Frame>>, spent| {
                let answers = merge(answers, handled.unwrap_or_default());
                let largest = outbox::largest_get(&answers);
                serving.largest_answer.note(largest);
                outbox.finish(number, answers.len(), largest, spent, |out| {
                    outbox::encode_frames(&answers, out)
                })
            })
        };
        let then: AnswersThen = Box::new(move |handled, spent| reply.answer(handled, spent));
        let handler = &*serving.handler;
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.start_batch(accepted, then)
        }));
        if started.is_err() {
            log::error!("a request handler panicked; answering INTERNAL");
        }
    }
    if conn.session.locked_out() {
        // The answers so far go out; the requests after the last wrong password do not.
        conn.pending.clear();
        finish_answering(
            conn,
            outbox,
            serving.options.timeouts.io * outbox::ANSWER_WAIT_IN_IO_TIMEOUTS,
        );
        let _ = conn.stream.shutdown(Shutdown::Both);
        return Err(());
    }
    Ok(number)
}

/// A batch that may go beside others: the hashes of its keys, and the bytes of its keys and
/// values (the batches of a connection on their way at once hold at most [`FLUSH_AT`] together,
/// since no budget counts them once handed on).
struct Independent {
    keys: HashSet<u64>,
    bytes: usize,
}

/// `pending[..take]` as an [`Independent`] batch if each of its requests is a key request, no
/// key is both read and written in it (then a handler sends the batch as one wave), and it
/// holds at most [`FLUSH_AT`] bytes; `None` if it may touch anything or is too big to go beside
/// others.
fn independent_keys(pending: &VecDeque<Frame>, take: usize) -> Option<Independent> {
    use std::hash::Hasher;
    let mut keys: HashMap<u64, bool> = HashMap::with_capacity(take);
    let mut bytes = 0;
    for request in pending.iter().take(take) {
        bytes += request.key.len() + request.value.len();
        if bytes > FLUSH_AT {
            return None;
        }
        let is_read = match request.opcode {
            Opcode::GET => true,
            Opcode::PUT
            | Opcode::DELETE
            | Opcode::PUT_ONCE
            | Opcode::DELETE_ONCE
            | Opcode::UPDATE => false,
            _ => return None,
        };
        if request.key.is_empty() {
            return None;
        }
        // One fixed hash for every batch, so that the same key hashes alike in each (a
        // collision only makes a batch wait).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hasher.write(&request.key);
        if *keys.entry(hasher.finish()).or_insert(is_read) != is_read {
            // A key read and written in one batch: it is cut into waves.
            return None;
        }
    }
    Some(Independent {
        keys: keys.into_keys().collect(),
        bytes,
    })
}

/// Writes the answers no other thread is writing, with the full write timeout.
fn write_owed(conn: &mut ClientConn, outbox: &Outbox) -> Flow {
    if outbox.write_owed(|owed| write_patiently(conn, owed)) {
        Flow::Continue
    } else {
        Flow::Close
    }
}

/// Writes `bytes` to the connection's client with the full write timeout; whether it did.
fn write_patiently(conn: &mut ClientConn, bytes: Vec<u8>) -> bool {
    conn.out = bytes;
    conn.written = 0;
    matches!(conn.flush_all(), Flow::Continue)
}

/// Waits (up to `bound`) for every request in flight to be answered and writes the answers.
fn finish_answering(conn: &mut ClientConn, outbox: &Outbox, bound: Duration) {
    outbox.drain(Instant::now() + bound, |owed| write_patiently(conn, owed));
}

/// Hands `conn` to a worker and waits until the worker gives it back; when the pool is full,
/// answers its pending requests BUSY instead. `None` when the connection was closed.
fn lend(pool: &ThreadPool<Lent>, conn: ClientConn, serving: &Serving) -> Option<ClientConn> {
    let (back, returned) = mpsc::sync_channel(1);
    match pool.try_submit(Lent { conn, back }) {
        Ok(()) => {
            let mut conn = returned.recv().ok().flatten()?;
            conn.patient(&serving.options.timeouts).then_some(conn)
        }
        Err(Lent { mut conn, .. }) => {
            let message = format!(
                "all {} workers are busy and the queue is full",
                pool.threads()
            );
            conn.refuse_pending(serving, &message).ok().map(|_| conn)
        }
    }
}

/// A worker's part: answers the lent connection's requests, and goes on serving it while its
/// requests come promptly, its client takes the answers promptly, and no other connection waits.
fn serve_lent(lent: Lent, serving: &Serving, backlog: &Backlog) {
    let Lent { mut conn, back } = lent;
    let open = conn.hurried()
        && loop {
            match conn.answer_pending(serving, Some(backlog)) {
                Ok(true) => {}
                // The client is slow to read (its own thread waits for it, with the full
                // timeout), or others wait for this worker (the connection queues again).
                Ok(false) => break true,
                Err(e) => {
                    log::debug!("connection from {}: write failed: {e}", conn.peer);
                    break false;
                }
            }
            if backlog.waiting() > 0 || serving.shutdown.load(Ordering::Relaxed) {
                break true;
            }
            match conn.reader.read_frame_if_prompt(&mut conn.stream) {
                Ok(Some(first)) => conn.gather(first),
                Ok(None) => break false,
                // Quiet, or part of a frame is still on its way: the connection's thread waits.
                Err(ReadError::Idle) => break true,
                Err(error) => {
                    let _ = conn.after_read_error(error, serving);
                    break false;
                }
            }
        };
    let _ = back.send(open.then_some(conn));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: Opcode, key: &str, value_len: usize) -> Frame {
        Frame::request(opcode, 1, key.as_bytes().to_vec(), vec![0; value_len])
    }

    #[test]
    fn a_batch_goes_beside_others_only_if_its_keys_and_size_allow() {
        let keys = |frames: Vec<Frame>| {
            let n = frames.len();
            independent_keys(&frames.into_iter().collect(), n).map(|k| k.keys.len())
        };
        let distinct = vec![
            frame(Opcode::PUT, "a", 3),
            frame(Opcode::GET, "b", 0),
            frame(Opcode::DELETE, "c", 0),
        ];
        assert_eq!(keys(distinct), Some(3));
        let written_twice = vec![frame(Opcode::PUT, "a", 3), frame(Opcode::PUT, "a", 3)];
        assert_eq!(
            keys(written_twice),
            Some(1),
            "one wave: the head keeps their order"
        );
        let read_after_write = vec![frame(Opcode::PUT, "a", 3), frame(Opcode::GET, "a", 0)];
        assert_eq!(keys(read_after_write), None, "cut into waves");
        assert_eq!(
            keys(vec![frame(Opcode::SCAN, "", 0)]),
            None,
            "not a key request"
        );
        assert_eq!(keys(vec![frame(Opcode::GET, "", 0)]), None, "no key");
        let big = vec![
            frame(Opcode::PUT, "a", FLUSH_AT),
            frame(Opcode::PUT, "b", 1),
        ];
        assert_eq!(keys(big), None, "too big to go beside others");
        let sized = independent_keys(&vec![frame(Opcode::PUT, "ab", 5)].into_iter().collect(), 1);
        assert_eq!(sized.map(|k| k.bytes), Some(7), "its key and value");
        // The same key hashes alike in every batch.
        let one = independent_keys(&vec![frame(Opcode::GET, "k", 0)].into_iter().collect(), 1);
        let two = independent_keys(&vec![frame(Opcode::PUT, "k", 1)].into_iter().collect(), 1);
        assert_eq!(one.map(|k| k.keys), two.map(|k| k.keys));
    }
}
