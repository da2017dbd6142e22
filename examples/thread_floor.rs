//! The floor of the design card: the least a thread-per-connection RESP server costs on this
//! machine, to hold ringkv's figures against.
//!
//! ```sh
//! cargo run --release --example thread_floor -- [--listen ADDR] [--hop [--backends N] [--lone-yield]]
//! ```
//!
//! Each client connection gets a thread that blocks in `read`, answers every whole request it
//! has received (SET and GET from an in-process map of 64 mutex-guarded shards; PING, and
//! CONFIG GET with empty values, for redis-benchmark) and writes the replies of that read in
//! one `write`, as ringkv's RESP door does. There is no log, no expiry, no routing table, no
//! limits beyond the parser's.
//!
//! Without `--hop` there is no hop either: whatever a thread-per-connection server does, it does
//! at least this much per request, so a target this misses against twemproxy in front of Redis
//! is out of the design card's reach on this machine. With `--hop` the requests take ringkv's
//! way to their keys (see `Hop`), so what ringkv costs beyond this is its own work, and
//! `--lone-yield` adds the one trick ringkv plays at pipeline 1 (its lone writer's yield).
//! `benches/compare-redis.sh` runs all three, as its `floor`, `floor-hop` and `floor-hop-yield`
//! rows.
//!
//! It prints `floor listening on ADDR` once it accepts connections, as ringkv's servers print
//! theirs.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argh::FromArgs;
use ringkv::protocol::Limits;
use ringkv::resp::{Parser, RequestLimits};

/// A thread-per-connection RESP server with no work behind it (SET and GET on an in-process map).
#[derive(FromArgs)]
struct Args {
    /// address to listen on (default 127.0.0.1:0: a free port, printed)
    #[argh(option, default = "String::from(\"127.0.0.1:0\")")]
    listen: String,
    /// most client connections at once; more are closed at once (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
    /// put one hop between the connections and the map: backend threads, each behind one
    /// loopback connection that every client connection shares (see `Hop`)
    #[argh(switch)]
    hop: bool,
    /// with --hop: the number of backend threads, each behind its own connection (default 1)
    #[argh(option, default = "1")]
    backends: usize,
    /// with --hop: a thread that takes a connection's writer's turn for a single request first
    /// yields its CPU once, so that requests other clients' threads are about to add go in the
    /// same write (ringkv's lone writer, step 10 in README's Speed section)
    #[argh(switch)]
    lone_yield: bool,
}

const SHARDS: usize = 64;

/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// A reply that cannot be written within this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Map {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Map {
    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        lock(&self.shards[index])
    }
}

fn main() -> io::Result<()> {
    let args: Args = argh::from_env();
    let listener = TcpListener::bind(&args.listen)?;
    let map = Arc::new(Map {
        hasher: RandomState::new(),
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
    });
    let hop = if args.hop {
        Some(Hop::start(
            Arc::clone(&map),
            args.backends,
            args.lone_yield,
        )?)
    } else {
        None
    };
    println!("floor listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= args.max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (map, hop, open) = (Arc::clone(&map), hop.clone(), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("floor-conn".into())
            .spawn(move || {
                let served = match &hop {
                    None => serve(stream, &map),
                    Some(hop) => hop.serve(stream),
                };
                if let Err(e) = served {
                    eprintln!("thread_floor: connection ended: {e}");
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("thread_floor: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)
}

fn new_parser() -> Parser {
    Parser::new(RequestLimits::for_limits(&Limits::default()))
}

fn protocol_error(out: &mut Vec<u8>, error: &ringkv::resp::ProtocolError) {
    let _ = write!(out, "-ERR Protocol error: {error}\r\n");
}

fn serve(mut stream: TcpStream, map: &Map) -> io::Result<()> {
    configure(&stream)?;
    let mut parser = new_parser();
    let mut out = Vec::new();
    loop {
        if parser.read_from(&mut stream)? == 0 {
            return Ok(());
        }
        loop {
            match parser.next_request() {
                Ok(Some(mut request)) => {
                    answer(&mut request, map, &mut out);
                    parser.recycle(request);
                }
                Ok(None) => break,
                Err(error) => {
                    protocol_error(&mut out, &error);
                    stream.write_all(&out)?;
                    return Ok(());
                }
            }
        }
        stream.write_all(&out)?;
        out.clear();
    }
}

/// The hop: requests travel to backend threads, each behind one loopback connection shared by
/// all client connections (a request goes to the backend its key hashes to), and each backend's
/// answers come back to a reader thread that puts every client's replies back in order and
/// writes them to it. This is ringkv's shape (multiplexed backend connections, a combining
/// writer, replies written by the thread that reads the answers) with none of ringkv's work.
///
/// Records both ways: connection id (u32), sequence number within the connection (u64), kind
/// ([`REQUEST`] or [`LAST`]), length (u32) and that many bytes: a request's arguments, each
/// u32-length prefixed, or a reply to pass back as it is; from the backend, the RESP reply.
struct Hop {
    hasher: RandomState,
    links: Vec<Link>,
    lone_yield: bool,
    clients: Mutex<HashMap<u32, Arc<Mutex<Replies>>>>,
    next_id: AtomicU32,
}

/// One backend's connection, as the client connections share it.
struct Link {
    to_backend: TcpStream,
    /// Records waiting for the writer's turn, a spare buffer, and whether a thread has the turn.
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    records: Vec<u8>,
    spare: Vec<u8>,
    writing: bool,
}

/// A client connection's replies on their way back: those that came before an earlier one
/// wait until it is in.
struct Replies {
    stream: TcpStream,
    next: u64,
    early: BTreeMap<u64, (u8, Vec<u8>)>,
    out: Vec<u8>,
    last: bool,
}

impl Replies {
    fn accept(&mut self, seq: u64, kind: u8, reply: &[u8]) {
        if seq != self.next {
            self.early.insert(seq, (kind, reply.to_vec()));
            return;
        }
        self.take(kind, reply);
        while let Some((kind, reply)) = self.early.remove(&self.next) {
            self.take(kind, &reply);
        }
    }

    fn take(&mut self, kind: u8, reply: &[u8]) {
        self.out.extend_from_slice(reply);
        self.next += 1;
        self.last |= kind == LAST;
    }
}

/// How a client connection's forwarding ended.
enum Ended {
    Closed,
    ByLastReply,
}

/// A thread that panicked holding a lock left what it guards whole: every change under these
/// locks is a single insert, remove or append.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Record<'a> {
    id: u32,
    seq: u64,
    kind: u8,
    body: &'a [u8],
}

const HEADER: usize = 4 + 8 + 1 + 4;

/// The whole records at the front of `buf`, and the bytes they take.
fn records(buf: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(header) = buf.get(at..at + HEADER) {
        let (id, rest) = header.split_at(4);
        let (seq, rest) = rest.split_at(8);
        let len = u32::from_be_bytes(rest[1..].try_into().unwrap_or_default()) as usize;
        let Some(body) = buf.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        found.push(Record {
            id: u32::from_be_bytes(id.try_into().unwrap_or_default()),
            seq: u64::from_be_bytes(seq.try_into().unwrap_or_default()),
            kind: rest[0],
            body,
        });
        at += HEADER + len;
    }
    (found, at)
}

fn push_record(out: &mut Vec<u8>, id: u32, seq: u64, kind: u8, body: &[u8]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads records from `stream` until it closes, handing each read's whole records to `each`.
fn read_records(
    mut stream: &TcpStream,
    mut each: impl FnMut(&[Record<'_>]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0; READ_CHUNK];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let read = stream.read(&mut buf[filled..])?;
        if read == 0 {
            return Ok(());
        }
        filled += read;
        let (found, used) = records(&buf[..filled]);
        each(&found)?;
        buf.copy_within(used..filled, 0);
        filled -= used;
    }
}

const READ_CHUNK: usize = 64 * 1024;

/// A record's kind: a request to answer, or the connection's last reply (to be written, then
/// the connection closed).
const REQUEST: u8 = 0;
const LAST: u8 = 1;

impl Hop {
    fn start(map: Arc<Map>, backends: usize, lone_yield: bool) -> io::Result<Arc<Hop>> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut links = Vec::new();
        for _ in 0..backends.max(1) {
            let to_backend = TcpStream::connect(listener.local_addr()?)?;
            let (at_backend, _) = listener.accept()?;
            to_backend.set_nodelay(true)?;
            at_backend.set_nodelay(true)?;
            let map = Arc::clone(&map);
            std::thread::Builder::new()
                .name("floor-backend".into())
                .spawn(move || {
                    if let Err(e) = serve_backend(&at_backend, &map) {
                        eprintln!("thread_floor: a backend connection failed: {e}");
                        std::process::exit(1);
                    }
                })?;
            links.push(Link {
                to_backend,
                pending: Mutex::new(Pending::default()),
            });
        }
        let hop = Arc::new(Hop {
            hasher: RandomState::new(),
            links,
            lone_yield,
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(0),
        });
        for index in 0..hop.links.len() {
            let reader = Arc::clone(&hop);
            std::thread::Builder::new()
                .name("floor-reader".into())
                .spawn(move || {
                    if let Err(e) = reader.read_answers(index) {
                        eprintln!("thread_floor: reading a backend's answers failed: {e}");
                        std::process::exit(1);
                    }
                })?;
        }
        Ok(hop)
    }

    fn serve(&self, mut stream: TcpStream) -> io::Result<()> {
        configure(&stream)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replies = Replies {
            stream: stream.try_clone()?,
            next: 0,
            early: BTreeMap::new(),
            out: Vec::new(),
            last: false,
        };
        lock(&self.clients).insert(id, Arc::new(Mutex::new(replies)));
        let served = self.forward(&mut stream, id);
        // After a protocol error the reader forgets the connection, once it has the last reply.
        if !matches!(served, Ok(Ended::ByLastReply)) {
            lock(&self.clients).remove(&id);
        }
        served.map(|_| ())
    }

    /// Forwards the client's requests until it closes; the reader threads write the replies.
    fn forward(&self, stream: &mut TcpStream, id: u32) -> io::Result<Ended> {
        let mut parser = new_parser();
        let mut outgoing: Vec<Vec<u8>> = vec![Vec::new(); self.links.len()];
        let mut counts = vec![0; self.links.len()];
        let mut body = Vec::new();
        let mut seq = 0;
        loop {
            if parser.read_from(stream)? == 0 {
                return Ok(Ended::Closed);
            }
            let mut ended = None;
            loop {
                body.clear();
                let (link, kind) = match parser.next_request() {
                    Ok(Some(request)) => {
                        encode_request(&request, &mut body);
                        let link = request.get(1).map_or(0, |key| {
                            self.hasher.hash_one(key) as usize % self.links.len()
                        });
                        parser.recycle(request);
                        (link, REQUEST)
                    }
                    Ok(None) => break,
                    Err(error) => {
                        // It goes the requests' way, so that it is written after their
                        // replies, and the reader closes the connection after it.
                        protocol_error(&mut body, &error);
                        ended = Some(Ended::ByLastReply);
                        (0, LAST)
                    }
                };
                push_record(&mut outgoing[link], id, seq, kind, &body);
                counts[link] += 1;
                seq += 1;
                if ended.is_some() {
                    break;
                }
            }
            for ((link, records), count) in self.links.iter().zip(&mut outgoing).zip(&mut counts) {
                if !records.is_empty() {
                    link.send(records, self.lone_yield && *count == 1)?;
                }
                *count = 0;
            }
            if let Some(ended) = ended {
                return Ok(ended);
            }
        }
    }

    fn read_answers(&self, index: usize) -> io::Result<()> {
        let mut touched: HashMap<u32, Arc<Mutex<Replies>>> = HashMap::new();
        read_records(&self.links[index].to_backend, |answers| {
            {
                let clients = lock(&self.clients);
                for answer in answers {
                    if let Some(replies) = clients.get(&answer.id) {
                        touched
                            .entry(answer.id)
                            .or_insert_with(|| Arc::clone(replies));
                    }
                }
            }
            for answer in answers {
                if let Some(replies) = touched.get(&answer.id) {
                    lock(replies).accept(answer.seq, answer.kind, answer.body);
                }
            }
            for (id, replies) in touched.drain() {
                let mut replies = lock(&replies);
                let replies = &mut *replies;
                if replies.out.is_empty() {
                    continue;
                }
                // A client that stops reading holds this reader up for the write timeout, then
                // loses its connection: enough for a benchmark's floor, not for a server.
                if replies.stream.write_all(&replies.out).is_err() || replies.last {
                    let _ = replies.stream.shutdown(std::net::Shutdown::Both);
                    lock(&self.clients).remove(&id);
                }
                replies.out.clear();
            }
            Ok(())
        })
    }
}

impl Link {
    /// Adds `records` to what waits for the backend; the thread that finds nobody writing
    /// writes everything waiting, its own and what others add meanwhile, until none is left.
    /// That thread first yields once if `lone` (see `Args::lone_yield`).
    fn send(&self, records: &mut Vec<u8>, lone: bool) -> io::Result<()> {
        let mut pending = lock(&self.pending);
        pending.records.append(records);
        if pending.writing {
            return Ok(());
        }
        pending.writing = true;
        if lone {
            drop(pending);
            std::thread::yield_now();
            pending = lock(&self.pending);
        }
        loop {
            let mut batch = std::mem::take(&mut pending.spare);
            std::mem::swap(&mut batch, &mut pending.records);
            drop(pending);
            let written = (&self.to_backend).write_all(&batch);
            batch.clear();
            pending = lock(&self.pending);
            pending.spare = batch;
            if written.is_err() || pending.records.is_empty() {
                pending.writing = false;
                return written;
            }
        }
    }
}

/// A request as the backend reads it: its arguments, each u32-length prefixed.
fn encode_request(request: &[Vec<u8>], out: &mut Vec<u8>) {
    for arg in request {
        out.extend_from_slice(&(arg.len() as u32).to_be_bytes());
        out.extend_from_slice(arg);
    }
}

fn decode_request(mut bytes: &[u8], args: &mut Vec<Vec<u8>>) {
    args.clear();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap_or_default()) as usize;
        let end = (4 + len).min(bytes.len());
        args.push(bytes[4..end].to_vec());
        bytes = &bytes[end..];
    }
}

fn serve_backend(stream: &TcpStream, map: &Map) -> io::Result<()> {
    let mut out = Vec::new();
    let mut reply = Vec::new();
    let mut args = Vec::new();
    read_records(stream, |requests| {
        for request in requests {
            reply.clear();
            if request.kind == REQUEST {
                decode_request(request.body, &mut args);
                if args.is_empty() {
                    reply.extend_from_slice(b"-ERR an empty request\r\n");
                } else {
                    answer(&mut args, map, &mut reply);
                }
            } else {
                reply.extend_from_slice(request.body);
            }
            push_record(&mut out, request.id, request.seq, request.kind, &reply);
        }
        let written = (&*stream).write_all(&out);
        out.clear();
        written
    })
}

fn answer(request: &mut [Vec<u8>], map: &Map, out: &mut Vec<u8>) {
    let is = |name: &[u8]| request[0].eq_ignore_ascii_case(name);
    if is(b"SET") && request.len() == 3 {
        let value = std::mem::take(&mut request[2]);
        let key = std::mem::take(&mut request[1]);
        map.shard(&key).insert(key, value);
        out.extend_from_slice(b"+OK\r\n");
    } else if is(b"GET") && request.len() == 2 {
        match map.shard(&request[1]).get(&request[1]) {
            Some(value) => {
                // Writing into a Vec cannot fail.
                let _ = write!(out, "${}\r\n", value.len());
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"$-1\r\n"),
        }
    } else if is(b"PING") {
        out.extend_from_slice(b"+PONG\r\n");
    } else if is(b"CONFIG") {
        // CONFIG GET name...: each name with an empty value, which is all redis-benchmark needs.
        let names = request.get(2..).unwrap_or_default();
        let _ = write!(out, "*{}\r\n", 2 * names.len());
        for name in names {
            let _ = write!(out, "${}\r\n", name.len());
            out.extend_from_slice(name);
            out.extend_from_slice(b"\r\n$0\r\n\r\n");
        }
    } else {
        out.extend_from_slice(b"-ERR the floor server knows SET, GET, PING and CONFIG\r\n");
    }
}
