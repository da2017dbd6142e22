//! Prometheus metrics: what the servers count, in the text exposition format (version 0.0.4),
//! served over HTTP on `--metrics-listen ADDR` (`GET /metrics`; any other path is 404).
//!
//! The counters are the servers' own: the STATS counters of PROTOCOL.md section 7.2 (each
//! exported as `ringkv_NAME_total`, or `ringkv_NAME` for the few that are gauges), requests by
//! opcode and answer status, and a latency histogram kept here ([`RequestMetrics`]). A scrape
//! only loads atomics (and counts the open connections under their registry's lock): it never
//! walks the store, so scraping a backend of millions of keys costs what scraping an empty one
//! does. Every sample carries `role` (`frontend` or `backend`) and `node` (its address) labels,
//! so that the one endpoint of `ringkv local` tells its parts apart ([`Sources`]).
//!
//! Why [`httparse`] and a small server of our own, not tiny_http: the servers are synchronous
//! and thread-based (no async runtime), and all a scrape needs is one GET answered from memory.
//! tiny_http 0.12 (the obvious synchronous server crate) was tried first and fails the one thing
//! an endpoint beside a data path must do, stay bounded: it sets no timeouts and offers no way
//! to (a receive timeout on its listener stops its accept loop), reads every connection on a
//! thread of its own, and its thread pool can queue a new connection behind connections that
//! stall: with four sockets that sent half a request, a whole scrape sent after them waited
//! until they closed (tried in `tests/metrics.rs`, whose test now checks the opposite). httparse is the HTTP/1.x request parser hyper is built on:
//! small, dependency-free, fuzzed and maintained, so no HTTP parsing is written here; what is
//! ours is the bounded loop around it:
//!
//! - one acceptor thread that only accepts, gives each socket its timeouts and hands it to
//!   [`SCRAPE_THREADS`] scrape threads through a queue of [`SCRAPE_QUEUE`]; past that a new
//!   connection is closed at once (a scraper tries again at its next interval);
//! - a scrape thread serves one request per connection (`Connection: close`): the request head
//!   must arrive within [`SCRAPE_READ_TIMEOUT`] and fit in [`MAX_REQUEST_HEAD`] bytes, and the
//!   answer must be taken within [`SCRAPE_WRITE_TIMEOUT`] in all, so a slow or silent scraper
//!   holds a scrape thread for a few seconds at most, and never a thread of the servers.

use std::fmt::{self, Write as _};
use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::protocol::{Opcode, Status};

/// Upper bounds of the latency buckets, in microseconds: a request answered in at most
/// `LATENCY_BUCKETS_US[i]` µs counts in bucket `i` and every later one; the last bucket, `+Inf`,
/// holds them all. STATS names them `latency_us_le_N` and `latency_us_le_inf`.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Buckets of a [`LatencyHistogram`]: one per bound, then `+Inf`.
const LATENCY_SLOTS: usize = LATENCY_BUCKETS_US.len() + 1;

/// Threads answering scrapes. Two, so that one slow scraper leaves room for another.
pub const SCRAPE_THREADS: usize = 2;

/// How long writing a scrape's answer may block before the connection is given up.
pub const SCRAPE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Request latencies in fixed buckets ([`LATENCY_BUCKETS_US`]). Each bucket counts only its
/// own requests (one atomic add per observation); the cumulative counts are summed when read.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_SLOTS],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records `requests` requests that each took `elapsed` (the requests of one batch are
    /// answered together, so they share one measurement).
    pub fn observe(&self, requests: u64, elapsed: Duration) {
        if requests == 0 {
            return;
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| nanos <= bound * 1_000)
            .unwrap_or(LATENCY_SLOTS - 1);
        self.buckets[slot].fetch_add(requests, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(requests), Ordering::Relaxed);
    }

    /// Requests answered in at most each bound, the last entry being all of them (`+Inf`).
    pub fn cumulative(&self) -> [u64; LATENCY_SLOTS] {
        let mut counts = [0; LATENCY_SLOTS];
        let mut running = 0u64;
        for (count, bucket) in counts.iter_mut().zip(&self.buckets) {
            running += bucket.load(Ordering::Relaxed);
            *count = running;
        }
        counts
    }

    /// Total time of every observed request, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The STATS counters: `latency_us_le_50` ... `latency_us_le_1000000`, `latency_us_le_inf`,
    /// cumulative, every one listed even when 0 (readers compute percentiles from them).
    pub fn stats_counters(&self) -> impl Iterator<Item = (String, u64)> {
        let names = LATENCY_BUCKETS_US
            .iter()
            .map(|bound| format!("latency_us_le_{bound}"))
            .chain(std::iter::once("latency_us_le_inf".to_string()));
        names.zip(self.cumulative())
    }
}

/// Slots of the request table: every known opcode, then one for unknown ones.
const OPCODE_SLOTS: usize = Opcode::ALL.len() + 1;
/// Every known status, then one for unknown ones.
const STATUS_SLOTS: usize = Status::ALL.len() + 1;

fn opcode_slot(opcode: Opcode) -> usize {
    Opcode::ALL
        .iter()
        .position(|&known| known == opcode)
        .unwrap_or(OPCODE_SLOTS - 1)
}

fn status_slot(status: Status) -> usize {
    Status::ALL
        .iter()
        .position(|&known| known == status)
        .unwrap_or(STATUS_SLOTS - 1)
}

fn opcode_name(slot: usize) -> &'static str {
    Opcode::ALL
        .get(slot)
        .and_then(|opcode| opcode.name())
        .unwrap_or("UNKNOWN")
}

fn status_name(slot: usize) -> &'static str {
    Status::ALL
        .get(slot)
        .and_then(|status| status.name())
        .unwrap_or("UNKNOWN")
}

/// What a server counts of the requests it answers: how many of each opcode got each status,
/// and how long its key requests took.
pub struct RequestMetrics {
    /// `OPCODE_SLOTS × STATUS_SLOTS` counters, opcode-major.
    answered: Vec<AtomicU64>,
    /// Latency of the key requests (PUT, GET, DELETE and their tagged and chain forms): what a
    /// client waits for, apart from probes, transfers and reports, whose times differ in kind.
    pub latency: LatencyHistogram,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            answered: (0..OPCODE_SLOTS * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: LatencyHistogram::default(),
        }
    }
}

impl RequestMetrics {
    /// Counts one request of `opcode` answered with `status`.
    pub fn count(&self, opcode: Opcode, status: Status) {
        let cell = opcode_slot(opcode) * STATUS_SLOTS + status_slot(status);
        self.answered[cell].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered, by opcode and status name, leaving out the pairs never seen.
    pub fn answered(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut seen = Vec::new();
        for (cell, counter) in self.answered.iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                let (opcode, status) = (cell / STATUS_SLOTS, cell % STATUS_SLOTS);
                seen.push((opcode_name(opcode), status_name(status), count));
            }
        }
        seen
    }

    /// The STATS counters `requests_OPCODE` (lower case, `requests_unknown` for opcodes the
    /// server does not know): requests of each opcode, whatever their answer. Opcodes never
    /// received are left out.
    pub fn stats_counters(&self) -> Vec<(String, u64)> {
        let mut per_opcode: Vec<(String, u64)> = Vec::new();
        for (opcode, _, count) in self.answered() {
            let name = format!("requests_{}", opcode.to_ascii_lowercase());
            match per_opcode.iter_mut().find(|(n, _)| *n == name) {
                Some((_, sum)) => *sum += count,
                None => per_opcode.push((name, count)),
            }
        }
        per_opcode
    }
}

/// What a metric family is, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset when the process starts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets with `_sum` and `_count`.
    Histogram,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        })
    }
}

/// How each STATS counter of a backend is exported: its kind and help text. The metric is
/// `ringkv_NAME_total` for a counter, `ringkv_NAME` for a gauge. STATS counters that are not
/// here are exported in another form: `requests` is the sum of `ringkv_requests_total`,
/// `relays_H` is `ringkv_served_by_relays_total{relays="H"}`, `requests_OPCODE` and
/// `latency_us_le_N` are `ringkv_requests_total` and `ringkv_request_duration_seconds`, and
/// the sizes (`keys`, `bytes`, `replica_*`) are `ringkv_stored_keys` and `ringkv_stored_bytes`,
/// which count every copy because telling primaries apart means walking the store.
pub const STATS_METRICS: &[(&str, Kind, &str)] = &[
    ("puts", Kind::Counter, "PUTs served as the key's owner."),
    ("gets", Kind::Counter, "GETs served as the key's owner."),
    (
        "deletes",
        Kind::Counter,
        "DELETEs served as the key's owner.",
    ),
    (
        "served",
        Kind::Counter,
        "Key requests served as the owner (puts + gets + deletes).",
    ),
    (
        "relayed",
        Kind::Counter,
        "Key requests forwarded to a next hop.",
    ),
    (
        "hops",
        Kind::Counter,
        "Sum of the relays the served requests had taken.",
    ),
    (
        "errors",
        Kind::Counter,
        "Answers with a status other than OK and NOT_FOUND, and frames refused.",
    ),
    (
        "chain_relayed",
        Kind::Counter,
        "Writes applied and passed down the chain to the successor.",
    ),
    (
        "chain_applied",
        Kind::Counter,
        "Writes applied as a chain member after the head.",
    ),
    ("view_changes", Kind::Counter, "Views installed."),
    (
        "stale_refused",
        Kind::Counter,
        "Requests, chain answers and views refused for carrying another epoch.",
    ),
    (
        "transfers_begun",
        Kind::Counter,
        "State transfers begun as a source.",
    ),
    (
        "retries_answered",
        Kind::Counter,
        "Tagged writes sent again and answered with their first result.",
    ),
    (
        "retries_completed",
        Kind::Counter,
        "Tagged writes sent again whose value was passed down the chain again.",
    ),
    (
        "retries_too_old",
        Kind::Counter,
        "Tagged writes refused as older than their client's window (TOO_OLD).",
    ),
    (
        "expired_removed",
        Kind::Counter,
        "Expired keys this head's sweep deleted through their chains.",
    ),
    (
        "unauthorized",
        Kind::Counter,
        "Requests refused for a missing or wrong cluster token or password.",
    ),
    (
        "catchup_keys",
        Kind::Counter,
        "Keys taken in by state transfer after coming back.",
    ),
    (
        "catchup_bytes",
        Kind::Counter,
        "Key plus value bytes taken in by state transfer after coming back.",
    ),
    (
        "transfer_keys_sent",
        Kind::Counter,
        "Keys handed to syncing nodes.",
    ),
    (
        "transfer_bytes_sent",
        Kind::Counter,
        "Key plus value bytes handed to syncing nodes.",
    ),
    (
        "handoff_keys",
        Kind::Counter,
        "Keys taken in by the copies of joins and leaves.",
    ),
    (
        "handoff_bytes",
        Kind::Counter,
        "Key plus value bytes taken in by the copies of joins and leaves.",
    ),
    (
        "handoff_partitions_planned",
        Kind::Gauge,
        "Partitions the latest join or leave gives this node to copy.",
    ),
    (
        "handoff_partitions_copied",
        Kind::Gauge,
        "Partitions of the latest join or leave this node has copied.",
    ),
    (
        "handoff_keys_dropped",
        Kind::Counter,
        "Keys deleted because a join or leave took this node out of their chains.",
    ),
    (
        "wal_damaged_records",
        Kind::Gauge,
        "Damaged last records found in the write-ahead log at start (0 or 1).",
    ),
];

/// One metric family being gathered: its samples, rendered, in the order they came.
struct Family {
    name: String,
    kind: Kind,
    help: &'static str,
    samples: String,
}

/// A scrape's answer being gathered. Samples of one family may come from several parts (a
/// local cluster's frontend and backends); they are printed together under one `# HELP` and
/// `# TYPE`, as the format requires, families in the order they first came.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// A counter sample of `ringkv_NAME_total`-style family `name`.
    pub fn counter(&mut self, name: &str, help: &'static str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, Kind::Counter, help, name, labels, None, value);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &'static str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, Kind::Gauge, help, name, labels, None, value);
    }

    /// A histogram's samples: one `_bucket` per bound (in seconds) and `+Inf`, `_sum` (seconds)
    /// and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        histogram: &LatencyHistogram,
    ) {
        let counts = histogram.cumulative();
        let bucket = format!("{name}_bucket");
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(counts) {
            let le = (*bound as f64 / 1e6).to_string();
            self.sample(
                name,
                Kind::Histogram,
                help,
                &bucket,
                labels,
                Some(&le),
                count,
            );
        }
        let all = counts[LATENCY_SLOTS - 1];
        let kind = Kind::Histogram;
        self.sample(name, kind, help, &bucket, labels, Some("+Inf"), all);
        self.sample(
            name,
            kind,
            help,
            &format!("{name}_sum"),
            labels,
            None,
            histogram.sum_seconds(),
        );
        self.sample(
            name,
            kind,
            help,
            &format!("{name}_count"),
            labels,
            None,
            all,
        );
    }

    /// One sample line `series{labels,le="..."} value` of family `family`.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &mut self,
        family: &str,
        kind: Kind,
        help: &'static str,
        series: &str,
        labels: &[(&str, &str)],
        le: Option<&str>,
        value: impl fmt::Display,
    ) {
        let index = match self.families.iter().position(|f| f.name == family) {
            Some(index) => index,
            None => {
                self.families.push(Family {
                    name: family.to_string(),
                    kind,
                    help,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let out = &mut self.families[index];
        debug_assert_eq!(out.kind, kind, "metric family {family} has one kind");
        out.samples.push_str(series);
        let mut labels = labels.iter().copied().chain(le.map(|le| ("le", le)));
        if let Some((name, value)) = labels.next() {
            let _ = write!(out.samples, "{{{name}=\"{}\"", escape_label(value));
            for (name, value) in labels {
                let _ = write!(out.samples, ",{name}=\"{}\"", escape_label(value));
            }
            out.samples.push('}');
        }
        let _ = writeln!(out.samples, " {value}");
    }

    /// The text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for family in &self.families {
            let _ = writeln!(text, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(text, "# TYPE {} {}", family.name, family.kind);
            text.push_str(&family.samples);
        }
        text
    }
}

/// A label value as the format spells it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
        .into()
}

/// The figures of one request-answering part: the requests table, the latency histogram,
/// open connections and view epoch, with its labels. Both servers export these under the
/// same names.
pub(crate) fn common(
    out: &mut Exposition,
    labels: &[(&str, &str)],
    requests: &RequestMetrics,
    open_connections: usize,
    epoch: u64,
) {
    for (opcode, status, count) in requests.answered() {
        let mut labels = labels.to_vec();
        labels.extend([("opcode", opcode), ("status", status)]);
        out.counter(
            "ringkv_requests_total",
            "Requests answered, by opcode and answer status.",
            &labels,
            count,
        );
    }
    out.histogram(
        "ringkv_request_duration_seconds",
        "Time from a key request's arrival to its answer (a pipelined batch's requests share \
         the batch's time).",
        labels,
        &requests.latency,
    );
    out.gauge(
        "ringkv_open_connections",
        "Open client and peer connections on the binary protocol port.",
        labels,
        open_connections as u64,
    );
    out.gauge(
        "ringkv_view_epoch",
        "Epoch of the view this node holds (0: none yet).",
        labels,
        epoch,
    );
}

/// A part of a process that has figures to report: a frontend or a backend.
pub trait Collect: Send + Sync {
    /// Adds this part's samples, labelled with its role and address.
    fn collect(&self, out: &mut Exposition);
}

/// The parts one metrics endpoint reports. `ringkv local` has one endpoint for its frontend
/// and all its backends, and takes a stopped backend out.
#[derive(Default)]
pub struct Sources {
    parts: Mutex<Vec<(u64, Arc<dyn Collect>)>>,
    next_id: AtomicU64,
}

impl Sources {
    /// Adds a part; the id takes it out again ([`remove`](Sources::remove)).
    pub fn add(&self, part: Arc<dyn Collect>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, part));
        id
    }

    /// Stops reporting the part added as `id`.
    pub fn remove(&self, id: u64) {
        self.lock().retain(|(part, _)| *part != id);
    }

    /// Every part's samples, in the text format.
    pub fn scrape(&self) -> String {
        // Collected outside the lock, so that a part being added or removed never waits for a
        // scrape.
        let parts: Vec<Arc<dyn Collect>> = self.lock().iter().map(|(_, p)| p.clone()).collect();
        let mut out = Exposition::default();
        for part in parts {
            part.collect(&mut out);
        }
        out.render()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Arc<dyn Collect>)>> {
        match self.parts.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The HTTP endpoint: `GET /metrics` answers [`Sources::scrape`]. Dropping it stops it.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    /// The acceptor first, then the scrape threads.
    threads: Vec<JoinHandle<()>>,
}

impl MetricsServer {
    /// A server on `listen`, if one is asked for, answering scrapes of `collector` alone.
    pub fn start_for(
        listen: Option<&str>,
        collector: Arc<dyn Collect>,
    ) -> Result<Option<MetricsServer>> {
        let Some(addr) = listen else {
            return Ok(None);
        };
        let sources = Arc::new(Sources::default());
        sources.add(collector);
        MetricsServer::start(addr, sources).map(Some)
    }

    /// Listens on `addr` (port 0 picks a free one) and answers scrapes of `sources` from
    /// [`SCRAPE_THREADS`] threads.
    pub fn start(addr: &str, sources: Arc<Sources>) -> Result<MetricsServer> {
        let bind_error = |source| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (queue, waiting) = mpsc::sync_channel::<TcpStream>(SCRAPE_QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        let mut server = MetricsServer {
            local_addr,
            stopping: Arc::new(AtomicBool::new(false)),
            threads: Vec::with_capacity(1 + SCRAPE_THREADS),
        };
        let stopping = Arc::clone(&server.stopping);
        server.threads.push(
            std::thread::Builder::new()
                .name("metrics-acceptor".into())
                .spawn(move || accept_scrapers(&listener, &queue, &stopping))
                .map_err(bind_error)?,
        );
        for n in 0..SCRAPE_THREADS {
            let (waiting, sources) = (Arc::clone(&waiting), Arc::clone(&sources));
            server.threads.push(
                std::thread::Builder::new()
                    .name(format!("metrics-{n}"))
                    .spawn(move || answer_scrapes(&waiting, &sources))
                    .map_err(bind_error)?,
            );
        }
        Ok(server)
    }

    /// The address it listens on (with the real port when it was asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and answering. A scrape being answered is finished first (within the
    /// read and write timeouts).
    pub fn shutdown(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // The acceptor blocks in accept(); a connection of our own wakes it to see the flag.
        // When it ends, the queue's sender goes with it and the scrape threads end too.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connections waiting for a scrape thread; past this they are closed at once.
pub const SCRAPE_QUEUE: usize = 16;

/// How long a request head may take to arrive in all.
pub const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most headers a request may have.
const MAX_HEADERS: usize = 32;

/// The acceptor: hands each connection to the scrape threads, or closes it when they are all
/// taken and the queue is full.
fn accept_scrapers(listener: &TcpListener, queue: &SyncSender<TcpStream>, stopping: &AtomicBool) {
    let mut last_error_logged: Option<Instant> = None;
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors, most likely: logged at most once a minute, and a pause so
                // as not to spin.
                if last_error_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    log::warn!("metrics endpoint cannot accept a connection: {e}");
                    last_error_logged = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let timeouts = stream
            .set_read_timeout(Some(SCRAPE_READ_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(SCRAPE_WRITE_TIMEOUT)));
        if timeouts.is_err() {
            continue;
        }
        match queue.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(stream)) => {
                log::debug!("metrics scrapers all busy: a connection is closed unanswered");
                drop(stream);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// A scrape thread: answers one request per connection until the acceptor ends.
fn answer_scrapes(waiting: &Mutex<Receiver<TcpStream>>, sources: &Sources) {
    loop {
        let next = match waiting.lock() {
            Ok(waiting) => waiting.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(mut stream) = next else {
            return;
        };
        if let Err(e) = answer_connection(&mut stream, sources) {
            log::debug!("a metrics scrape was not answered: {e}");
        }
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Reads one request head, then writes its answer.
fn answer_connection(stream: &mut TcpStream, sources: &Sources) -> std::io::Result<()> {
    let (head_only, (status, content_type, body)) = match read_request(stream)? {
        Ok((method, path)) => (method == "HEAD", answer(&method, &path, sources)),
        Err(problem) => (false, (400, TEXT, format!("{problem}\n"))),
    };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut answer = head.into_bytes();
    if !head_only {
        answer.extend_from_slice(body.as_bytes());
    }
    crate::server::write_all_within(stream, &answer, SCRAPE_WRITE_TIMEOUT)
}

/// The method and path of the request on `stream`, or why it is not one. An i/o error (the
/// peer went away, or was too slow) ends the connection unanswered.
fn read_request(
    stream: &mut TcpStream,
) -> std::io::Result<std::result::Result<(String, String), &'static str>> {
    let deadline = Instant::now() + SCRAPE_READ_TIMEOUT;
    let mut head = vec![0u8; MAX_REQUEST_HEAD];
    let mut filled = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default().to_string();
                let path = request.path.unwrap_or_default().to_string();
                return Ok(Ok((method, path)));
            }
            Ok(httparse::Status::Partial) if filled == head.len() => {
                return Ok(Err("the request head is too long"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Err("too many headers")),
            Err(_) => return Ok(Err("not an HTTP/1.x request")),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut head[filled..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Status code, Content-Type and body for a request (a HEAD is answered as a GET, and its
/// body left out).
fn answer(method: &str, path: &str, sources: &Sources) -> (u16, &'static str, String) {
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    if path != "/metrics" {
        return (404, TEXT, "not found: metrics are at /metrics\n".into());
    }
    match method {
        "GET" | "HEAD" => (200, EXPOSITION, sources.scrape()),
        _ => (405, TEXT, "only GET is answered here\n".into()),
    }
}

/// The Content-Type of the text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Content-Type of error answers.
const TEXT: &str = "text/plain; charset=utf-8";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_and_inclusive() {
        let histogram = LatencyHistogram::default();
        histogram.observe(1, Duration::from_micros(50));
        histogram.observe(2, Duration::from_nanos(50_001));
        histogram.observe(1, Duration::from_secs(2));
        let counts = histogram.cumulative();
        assert_eq!(counts[0], 1, "50 µs is at most 50 µs");
        assert_eq!(counts[1], 3);
        assert_eq!(counts[LATENCY_SLOTS - 2], 3, "2 s is over the last bound");
        assert_eq!(counts[LATENCY_SLOTS - 1], 4);
        let names: Vec<String> = histogram.stats_counters().map(|(n, _)| n).collect();
        assert_eq!(names.first().map(String::as_str), Some("latency_us_le_50"));
        assert_eq!(names[13], "latency_us_le_1000000");
        assert_eq!(names.last().map(String::as_str), Some("latency_us_le_inf"));
        assert!((histogram.sum_seconds() - 2.000_150_002).abs() < 1e-9);
    }

    #[test]
    fn requests_are_counted_by_opcode_and_status() {
        let requests = RequestMetrics::default();
        requests.count(Opcode::GET, Status::OK);
        requests.count(Opcode::GET, Status::NOT_FOUND);
        requests.count(Opcode::GET, Status::OK);
        requests.count(Opcode(0xee), Status(0xee));
        let answered = requests.answered();
        assert!(answered.contains(&("GET", "OK", 2)));
        assert!(answered.contains(&("GET", "NOT_FOUND", 1)));
        assert!(answered.contains(&("UNKNOWN", "UNKNOWN", 1)));
        assert_eq!(
            requests.stats_counters(),
            vec![
                ("requests_get".to_string(), 3),
                ("requests_unknown".to_string(), 1)
            ]
        );
    }

    #[test]
    fn families_gather_the_samples_of_every_part_under_one_header() {
        let mut out = Exposition::default();
        out.counter("ringkv_x_total", "X.", &[("node", "a")], 1);
        out.gauge("ringkv_y", "Y.", &[], 7);
        out.counter("ringkv_x_total", "X.", &[("node", "b\"\\\n")], 2);
        assert_eq!(
            out.render(),
            "# HELP ringkv_x_total X.\n# TYPE ringkv_x_total counter\n\
             ringkv_x_total{node=\"a\"} 1\nringkv_x_total{node=\"b\\\"\\\\\\n\"} 2\n\
             # HELP ringkv_y Y.\n# TYPE ringkv_y gauge\nringkv_y 7\n"
        );
        let histogram = LatencyHistogram::default();
        histogram.observe(1, Duration::from_micros(75));
        let mut out = Exposition::default();
        out.histogram("ringkv_d_seconds", "D.", &[("role", "backend")], &histogram);
        let text = out.render();
        assert!(text.contains("# TYPE ringkv_d_seconds histogram\n"));
        assert!(text.contains("ringkv_d_seconds_bucket{role=\"backend\",le=\"0.00005\"} 0\n"));
        assert!(text.contains("ringkv_d_seconds_bucket{role=\"backend\",le=\"0.0001\"} 1\n"));
        assert!(text.contains("ringkv_d_seconds_bucket{role=\"backend\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("ringkv_d_seconds_count{role=\"backend\"} 1\n"));
    }
}
