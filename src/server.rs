//! What the backend and frontend servers share: the accept loop with its connection limit, the
//! per-connection frame loop, and shutdown.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// An accepted connection on its way to the thread that serves it.
pub(crate) struct Accepted {
    stream: TcpStream,
    _registered: Registered,
}

/// How accepted connections get a thread.
pub(crate) enum Dispatch {
    /// A new thread for each connection (backends).
    ThreadPerConnection,
    /// A fixed pool of workers with a bounded queue (the frontend).
    Pool { threads: usize, queue: usize },
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
        // Open connections are closed first: the acceptor joins the pool's workers on its way
        // out, and they are busy with those connections.
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

    let serve_one = {
        let handler = Arc::clone(&handler);
        let shutdown = Arc::clone(&shutdown);
        move |accepted: Accepted| {
            serve_connection(accepted.stream, &*handler, &options, &shutdown);
        }
    };
    let pool = match dispatch {
        Dispatch::ThreadPerConnection => None,
        Dispatch::Pool { threads, queue } => Some(
            ThreadPool::new(&format!("{name}-worker"), threads, queue, serve_one.clone())
                .map_err(bind_error)?,
        ),
    };
    let acceptor = {
        let shutdown = Arc::clone(&shutdown);
        let registry = Arc::clone(&registry);
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-acceptor"))
            .spawn(move || {
                accept_loop(
                    &name, listener, options, &shutdown, &registry, pool, serve_one, &*handler,
                )
            })
            .map_err(bind_error)?
    };
    Ok(ServerHandle {
        local_addr,
        shutdown,
        registry,
        acceptor: Some(acceptor),
    })
}

#[allow(clippy::too_many_arguments)]
fn accept_loop<F>(
    name: &str,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: &AtomicBool,
    registry: &Arc<Registry>,
    pool: Option<ThreadPool<Accepted>>,
    serve_one: F,
    handler: &dyn Handler,
) where
    F: Fn(Accepted) + Send + Clone + 'static,
{
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
                handler,
            );
            continue;
        }
        let accepted = Accepted {
            _registered: registry.register(&stream),
            stream,
        };
        match &pool {
            Some(pool) => {
                if let Err(rejected) = pool.try_submit(accepted) {
                    refuse_busy(
                        rejected.stream,
                        &format!(
                            "{name} has all {} workers busy and its queue full",
                            pool.threads()
                        ),
                        handler,
                    );
                }
            }
            None => {
                let serve_one = serve_one.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{name}-conn"))
                    .spawn(move || serve_one(accepted));
                if let Err(e) = spawned {
                    log::warn!("{name}: cannot start a connection thread: {e}");
                }
            }
        }
    }
    // Dropping the pool here joins its workers once their connections are closed.
    drop(pool);
}

fn refuse_busy(mut stream: TcpStream, message: &str, handler: &dyn Handler) {
    log::debug!("refusing a connection: {message}");
    handler.refused(Status::BUSY);
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = stream.write_all(&Frame::error_for_id(0, Status::BUSY, message).encode());
    let _ = stream.shutdown(Shutdown::Both);
}

/// Answers frames on one connection until the peer closes it, misbehaves, idles out, or the
/// server shuts down. Answers are written in request order; when a client pipelines, answers are
/// gathered and written together once no further whole request is buffered.
fn serve_connection(
    mut stream: TcpStream,
    handler: &dyn Handler,
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
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    const FLUSH_AT: usize = 256 * 1024;
    while !shutdown.load(Ordering::Relaxed) {
        match reader.read_frame(&mut stream) {
            Ok(Some(request)) => {
                idle_since = Instant::now();
                let answer = if request.kind != Kind::Request {
                    handler.refused(Status::BAD_REQUEST);
                    request.error_reply(Status::BAD_REQUEST, "a server accepts requests only")
                } else if let Err(message) = limits.check(&request) {
                    handler.refused(Status::TOO_LARGE);
                    request.error_reply(Status::TOO_LARGE, message)
                } else {
                    handler.handle(request)
                };
                answer.encode_into(&mut out);
                if out.len() >= FLUSH_AT || !reader.has_buffered_frame() {
                    if let Err(e) = stream.write_all(&out) {
                        log::debug!("connection from {peer}: write failed: {e}");
                        return;
                    }
                    out.clear();
                }
            }
            Ok(None) => return,
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
                log::info!("connection from {peer}: malformed frame: {error}");
                handler.refused(error.status());
                let answer = Frame::error_for_id(request_id, error.status(), error.to_string());
                answer.encode_into(&mut out);
                let _ = stream.write_all(&out);
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
