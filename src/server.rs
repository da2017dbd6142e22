//! What the backend and frontend servers share: the accept loop with its connection limit, the
//! per-connection frame loop, and shutdown.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::connection::{FrameReader, ReadError, Timeouts};
use crate::error::{Error, Result};
use crate::pool::ThreadPool;
use crate::protocol::{Frame, Kind, Limits, Status};

/// Settings every server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// Key, value and frame limits for incoming frames.
    pub limits: Limits,
    /// Socket timeouts.
    pub timeouts: Timeouts,
    /// Open client connections allowed at once; one more gets BUSY and is closed.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_connections: 1024,
        }
    }
}

/// Answers requests. Called from many connection threads at once.
pub trait Handler: Send + Sync + 'static {
    /// The answer to one well-formed request that is within the limits.
    fn handle(&self, request: Frame) -> Frame;
    /// Told about every error answer the connection loop itself sends (malformed, too large,
    /// busy), so that the server can count it.
    fn refused(&self, _status: Status) {}
}

/// The sockets of open connections, so that shutdown can close them and the acceptor can count
/// them against the limit.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn register(self: &Arc<Self>, stream: &TcpStream) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            self.lock().insert(id, clone);
        }
        Registered {
            registry: Arc::clone(self),
            id,
        }
    }

    fn close_all(&self) {
        for stream in self.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Removes a connection from the registry when its thread is done with it.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Which threads answer requests. Every connection has its own thread reading its frames (the
/// connection limit bounds them); requests are answered either on that thread or by a pool.
pub(crate) enum Dispatch {
    /// The connection's thread answers its requests itself (backends).
    ThreadPerConnection,
    /// A fixed pool of workers answers requests, taken from a bounded queue in batches (the
    /// frontend). An idle connection holds no worker, so idle clients cannot starve busy ones;
    /// when every worker is busy and the queue is full, requests get BUSY and the connection
    /// stays open.
    Pool { threads: usize, queue: usize },
}

/// Requests a connection thread has read, on their way to a pool worker, with the channel their
/// answers (in the same order) go back on.
pub(crate) struct Batch {
    requests: Vec<Frame>,
    answers: mpsc::SyncSender<Vec<Frame>>,
}

/// Where a connection's requests are answered.
enum Answerer {
    Inline(Arc<dyn Handler>),
    Pool {
        pool: Arc<ThreadPool<Batch>>,
        handler: Arc<dyn Handler>,
    },
}

/// Most requests handed to a worker at once, so one pipelining client cannot keep a worker to
/// itself for long.
const MAX_BATCH: usize = 128;

/// Answer bytes gathered before they are written, so big values do not pile up in memory.
const FLUSH_AT: usize = 256 * 1024;

impl Answerer {
    fn handler(&self) -> &dyn Handler {
        match self {
            Answerer::Inline(handler) | Answerer::Pool { handler, .. } => &**handler,
        }
    }

    /// The answers to `requests`, in order.
    fn answer(&self, requests: Vec<Frame>, limits: &Limits) -> Vec<Frame> {
        match self {
            Answerer::Inline(handler) => requests
                .into_iter()
                .map(|request| answer_one(&**handler, limits, request))
                .collect(),
            Answerer::Pool { pool, handler } => {
                let ids: Vec<u64> = requests.iter().map(|r| r.request_id).collect();
                let (sender, receiver) = mpsc::sync_channel(1);
                match pool.try_submit(Batch {
                    requests,
                    answers: sender,
                }) {
                    Ok(()) => match receiver.recv() {
                        Ok(answers) if answers.len() == ids.len() => answers,
                        // The worker failed without answering (a bug in a handler): what became
                        // of the requests is unknown, and the client must hear so.
                        _ => ids
                            .iter()
                            .map(|&id| {
                                Frame::error_for_id(id, Status::INTERNAL, "the request was lost")
                            })
                            .collect(),
                    },
                    Err(rejected) => rejected
                        .requests
                        .into_iter()
                        .map(|request| {
                            handler.refused(Status::BUSY);
                            request.error_reply(
                                Status::BUSY,
                                format!(
                                    "all {} workers are busy and the queue is full",
                                    pool.threads()
                                ),
                            )
                        })
                        .collect(),
                }
            }
        }
    }
}

/// The answer to one well-formed frame: refused when it is not a request or breaks the limits,
/// otherwise the handler's.
fn answer_one(handler: &dyn Handler, limits: &Limits, request: Frame) -> Frame {
    if request.kind != Kind::Request {
        handler.refused(Status::BAD_REQUEST);
        request.error_reply(Status::BAD_REQUEST, "a server accepts requests only")
    } else if let Err(message) = limits.check(&request) {
        handler.refused(Status::TOO_LARGE);
        request.error_reply(Status::TOO_LARGE, message)
    } else {
        handler.handle(request)
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
    /// The address the server listens on (with the real port when it was asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
    let shutdown = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(Registry::default());

    let answerer = Arc::new(match dispatch {
        Dispatch::ThreadPerConnection => Answerer::Inline(Arc::clone(&handler)),
        Dispatch::Pool { threads, queue } => {
            let worker_handler = Arc::clone(&handler);
            let pool = ThreadPool::new(
                &format!("{name}-worker"),
                threads,
                queue,
                move |batch: Batch| {
                    // A panicking handler must not take the worker with it; the connection
                    // thread answers INTERNAL when the answers do not come back.
                    let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        batch
                            .requests
                            .into_iter()
                            .map(|request| answer_one(&*worker_handler, &options.limits, request))
                            .collect::<Vec<Frame>>()
                    }));
                    if let Ok(answers) = answers {
                        let _ = batch.answers.send(answers);
                    }
                },
            )
            .map_err(bind_error)?;
            Answerer::Pool {
                pool: Arc::new(pool),
                handler: Arc::clone(&handler),
            }
        }
    });
    let acceptor = {
        let shutdown = Arc::clone(&shutdown);
        let registry = Arc::clone(&registry);
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-acceptor"))
            .spawn(move || accept_loop(&name, listener, options, &shutdown, &registry, answerer))
            .map_err(bind_error)?
    };
    Ok(ServerHandle {
        local_addr,
        shutdown,
        registry,
        acceptor: Some(acceptor),
    })
}

fn accept_loop(
    name: &str,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: &Arc<AtomicBool>,
    registry: &Arc<Registry>,
    answerer: Arc<Answerer>,
) {
    for incoming in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                log::warn!("{name}: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        let open = registry.len();
        if open >= options.max_connections {
            refuse_busy(
                stream,
                &format!(
                    "{name} is at its limit of {} connections",
                    options.max_connections
                ),
                answerer.handler(),
            );
            continue;
        }
        let registered = registry.register(&stream);
        let answerer = Arc::clone(&answerer);
        let shutdown = Arc::clone(shutdown);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                serve_connection(stream, &answerer, &options, &shutdown);
                drop(registered);
            });
        if let Err(e) = spawned {
            log::warn!("{name}: cannot start a connection thread: {e}");
        }
    }
}

fn refuse_busy(mut stream: TcpStream, message: &str, handler: &dyn Handler) {
    log::debug!("refusing a connection: {message}");
    handler.refused(Status::BUSY);
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = stream.write_all(&Frame::error_for_id(0, Status::BUSY, message).encode());
    let _ = stream.shutdown(Shutdown::Both);
}

/// Answers frames on one connection until the peer closes it, misbehaves, idles out, or the
/// server shuts down. Answers are written in request order. When a client pipelines, every whole
/// request already read is answered as one batch (up to [`MAX_BATCH`]) and the answers are
/// written together.
fn serve_connection(
    mut stream: TcpStream,
    answerer: &Answerer,
    options: &ServerOptions,
    shutdown: &AtomicBool,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let timeouts = options.timeouts;
    if stream.set_read_timeout(Some(timeouts.frame)).is_err()
        || stream.set_write_timeout(Some(timeouts.io)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let limits = options.limits;
    let mut reader = FrameReader::new(limits.max_frame, timeouts.frame);
    let mut batch = Vec::new();
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    // Answers the requests read so far and writes the answers; false when the write failed.
    let mut answer_batch = |batch: &mut Vec<Frame>, stream: &mut TcpStream| -> bool {
        if batch.is_empty() {
            return true;
        }
        let answers = answerer.answer(std::mem::take(batch), &limits);
        let count = answers.len();
        for (index, answer) in answers.into_iter().enumerate() {
            answer.encode_into(&mut out);
            if out.len() >= FLUSH_AT || index + 1 == count {
                if let Err(e) = stream.write_all(&out) {
                    log::debug!("connection from {peer}: write failed: {e}");
                    return false;
                }
                out.clear();
            }
        }
        true
    };
    while !shutdown.load(Ordering::Relaxed) {
        match reader.read_frame(&mut stream) {
            Ok(Some(request)) => {
                idle_since = Instant::now();
                batch.push(request);
                // More whole requests already buffered join the batch without blocking.
                if reader.has_buffered_frame() && batch.len() < MAX_BATCH {
                    continue;
                }
                if !answer_batch(&mut batch, &mut stream) {
                    return;
                }
            }
            Ok(None) => {
                answer_batch(&mut batch, &mut stream);
                return;
            }
            Err(ReadError::Idle) => {
                if idle_since.elapsed() >= timeouts.idle {
                    log::debug!(
                        "connection from {peer}: idle for {:?}, closing",
                        timeouts.idle
                    );
                    return;
                }
            }
            Err(ReadError::Stalled { buffered }) => {
                log::info!(
                    "connection from {peer}: dropped a frame stalled after {buffered} bytes"
                );
                return;
            }
            Err(ReadError::Truncated { buffered }) => {
                log::debug!("connection from {peer}: closed mid-frame after {buffered} bytes");
                return;
            }
            Err(ReadError::Frame { error, request_id }) => {
                // The requests before the bad frame are answered first, in order.
                if !answer_batch(&mut batch, &mut stream) {
                    return;
                }
                log::info!("connection from {peer}: malformed frame: {error}");
                answerer.handler().refused(error.status());
                let answer = Frame::error_for_id(request_id, error.status(), error.to_string());
                let _ = stream.write_all(&answer.encode());
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Err(ReadError::Io(e)) => {
                log::debug!("connection from {peer}: read failed: {e}");
                return;
            }
        }
    }
}
