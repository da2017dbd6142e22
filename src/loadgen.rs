//! `kvcli bench`: a load generator. N client threads, one connection each, send GETs and PUTs of
//! uniformly random keys in batches of the pipeline depth, and record every answer's latency in
//! an HDR histogram.
//!
//! A request's latency runs from the moment its batch starts going out to the arrival of its own
//! answer, so with pipelining the later answers of a batch include the wait behind the earlier
//! ones, as a client of a pipelined server sees it. Only successful answers (OK, NOT_FOUND) are
//! timed; error answers and requests lost with a broken connection are counted as errors.

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::thousands;
use crate::client::ClientOptions;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{Frame, Opcode, Status, MIN_FRAME};
use crate::rng::Rng;

/// Keys are `key:` and this many digits, so the key space can hold at most 10^12 keys.
pub const KEY_DIGITS: usize = 12;
/// The largest key space the key format can address.
pub const MAX_KEYSPACE: u64 = 1_000_000_000_000;
/// More client threads than this would measure the machine's scheduler, not the store.
pub const MAX_CLIENTS: usize = 4096;
/// Distinct failure messages kept for the report.
const MAX_FAILURES: usize = 5;
/// A batch whose requests and answers fit in this many bytes is written before its answers are
/// read; a bigger one is written on a second thread, so that neither side can fill its socket
/// buffer and wait for the other forever.
const INLINE_BATCH_BYTES: usize = 64 * 1024;
/// PUTs per pipelined batch while preloading (not measured, so as deep as is useful).
const PRELOAD_BATCH: usize = 256;
/// Latencies above this are recorded as this (the i/o timeout ends a request long before).
const LATENCY_CEILING_NS: u64 = 600_000_000_000;

/// The share of GETs among the requests; the rest are PUTs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    get_fraction: f64,
}

impl Mix {
    /// Only GETs.
    pub const GET: Mix = Mix { get_fraction: 1.0 };
    /// Only PUTs.
    pub const PUT: Mix = Mix { get_fraction: 0.0 };
    /// Half GETs, half PUTs.
    pub const HALF: Mix = Mix { get_fraction: 0.5 };

    /// A mix with `get_fraction` GETs, which must lie in 0..=1.
    pub fn with_get_fraction(get_fraction: f64) -> Result<Mix> {
        if (0.0..=1.0).contains(&get_fraction) {
            Ok(Mix { get_fraction })
        } else {
            Err(Error::Config(format!(
                "the mix must be get, put or a fraction of GETs from 0 to 1, not {get_fraction}"
            )))
        }
    }

    /// The share of GETs, from 0 to 1.
    pub fn get_fraction(self) -> f64 {
        self.get_fraction
    }

    /// Draws the kind of the next request.
    pub fn pick(self, rng: &mut Rng) -> OpKind {
        // 53 random bits make a uniform f64 in [0, 1), so a fraction of 1 always picks GET and
        // a fraction of 0 never does.
        let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.get_fraction {
            OpKind::Get
        } else {
            OpKind::Put
        }
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix::HALF
    }
}

impl FromStr for Mix {
    type Err = Error;

    fn from_str(text: &str) -> Result<Mix> {
        match text.trim().to_ascii_lowercase().as_str() {
            "get" => Ok(Mix::GET),
            "put" => Ok(Mix::PUT),
            other => {
                let fraction: f64 = other.parse().map_err(|_| {
                    Error::Config(format!(
                        "the mix must be get, put or a fraction of GETs such as 0.9, not {text:?}"
                    ))
                })?;
                Mix::with_get_fraction(fraction)
            }
        }
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.get_fraction == 1.0 {
            f.write_str("get")
        } else if self.get_fraction == 0.0 {
            f.write_str("put")
        } else {
            write!(f, "{}", self.get_fraction)
        }
    }
}

/// The two kinds of request the benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put,
}

/// What `kvcli bench` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Client threads, one connection each.
    pub clients: usize,
    /// Requests in all, spread over the clients; ignored when `duration` is set.
    pub requests: u64,
    /// Run for this long instead of for a number of requests.
    pub duration: Option<Duration>,
    /// Requests sent before the answers are read.
    pub pipeline: usize,
    /// Bytes of every PUT's value.
    pub value_size: usize,
    /// Keys are drawn uniformly from `0..keyspace`.
    pub keyspace: u64,
    /// GETs versus PUTs.
    pub mix: Mix,
    /// PUT every key of the key space once before measuring.
    pub preload: bool,
    /// Draw a progress bar on standard error while measuring.
    pub progress: bool,
    /// Seed of the key and mix generators; `None` draws one from the clock.
    pub seed: Option<u64>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            clients: 50,
            requests: 100_000,
            duration: None,
            pipeline: 1,
            value_size: 32,
            keyspace: 100_000,
            mix: Mix::HALF,
            preload: false,
            progress: false,
            seed: None,
        }
    }
}

impl BenchConfig {
    /// Rejects settings that cannot run.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.clients == 0 || self.clients > MAX_CLIENTS {
            format!("--clients must be from 1 to {MAX_CLIENTS}")
        } else if self.pipeline == 0 {
            "--pipeline must be at least 1".to_string()
        } else if self.keyspace == 0 || self.keyspace > MAX_KEYSPACE {
            format!("--keyspace must be from 1 to {}", thousands(MAX_KEYSPACE))
        } else if self.duration.is_none() && self.requests == 0 {
            "--requests must be at least 1".to_string()
        } else if self.duration.is_some_and(|d| d.is_zero()) {
            "--duration must be at least 1 second".to_string()
        } else {
            return Ok(());
        };
        Err(Error::Config(problem))
    }
}

/// The key with index `index`: `key:` and twelve digits.
pub fn key(index: u64) -> Vec<u8> {
    format!("key:{index:0width$}", width = KEY_DIGITS).into_bytes()
}

/// The value PUT under key `index`: the key's digits repeated to `size` bytes, so a value read
/// back can be checked against its key.
pub fn value_for(index: u64, size: usize) -> Vec<u8> {
    let digits = format!("{index:0width$}", width = KEY_DIGITS).into_bytes();
    digits.iter().copied().cycle().take(size).collect()
}

/// Draws the benchmark's requests: uniformly random keys and the configured mix.
#[derive(Debug, Clone)]
pub struct Workload {
    keyspace: u64,
    mix: Mix,
    rng: Rng,
}

impl Workload {
    /// A generator over `0..keyspace` (`keyspace` > 0).
    pub fn new(keyspace: u64, mix: Mix, rng: Rng) -> Workload {
        Workload { keyspace, mix, rng }
    }

    /// The kind and key index of the next request.
    pub fn next_op(&mut self) -> (OpKind, u64) {
        let kind = self.mix.pick(&mut self.rng);
        (kind, self.rng.below(self.keyspace))
    }
}

/// Counts and latencies of one kind of request.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Requests of this kind the benchmark tried: answered, refused or lost.
    pub requests: u64,
    /// Answered OK.
    pub ok: u64,
    /// Answered NOT_FOUND (a GET of a key never PUT).
    pub not_found: u64,
    /// Answered with an error status, or lost with a broken connection.
    pub errors: u64,
    /// Latency of every successful answer, in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            requests: 0,
            ok: 0,
            not_found: 0,
            errors: 0,
            latency_ns: new_histogram(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_CEILING_NS, 3)
        .expect("constant histogram bounds are valid")
}

impl OpStats {
    /// Answers that succeeded (OK or NOT_FOUND).
    pub fn answered(&self) -> u64 {
        self.ok + self.not_found
    }

    fn merge(&mut self, other: &OpStats) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.errors += other.errors;
        self.latency_ns
            .add(&other.latency_ns)
            .expect("histograms of equal bounds add");
    }
}

/// The latency figures the report shows, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// The figures of `histogram` (nanoseconds), or `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Percentiles> {
        if histogram.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Percentiles {
            p50: us(histogram.value_at_quantile(0.5)),
            p90: us(histogram.value_at_quantile(0.9)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        })
    }
}

/// What preloading did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreloadOutcome {
    pub keys: u64,
    pub seconds: f64,
    /// PUTs answered with an error status.
    pub errors: u64,
}

/// What a benchmark run measured.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub config: BenchConfig,
    /// Wall time of the measured part, from the first request to the last answer.
    pub seconds: f64,
    pub get: OpStats,
    pub put: OpStats,
    /// The first few distinct reasons requests failed.
    pub failures: Vec<String>,
    pub preload: Option<PreloadOutcome>,
}

impl BenchOutcome {
    /// Requests tried, of both kinds.
    pub fn requests(&self) -> u64 {
        self.get.requests + self.put.requests
    }

    /// Requests that failed, of both kinds.
    pub fn errors(&self) -> u64 {
        self.get.errors + self.put.errors
    }

    /// Requests that succeeded, of both kinds.
    pub fn answered(&self) -> u64 {
        self.get.answered() + self.put.answered()
    }

    /// True when requests were tried and none succeeded.
    pub fn all_failed(&self) -> bool {
        self.answered() == 0 && (self.errors() > 0 || self.requests() == 0)
    }

    /// Successful answers per second, or for one kind.
    pub fn ops_per_sec(&self, kind: Option<OpKind>) -> f64 {
        let answered = match kind {
            None => self.answered(),
            Some(OpKind::Get) => self.get.answered(),
            Some(OpKind::Put) => self.put.answered(),
        };
        if self.seconds > 0.0 {
            answered as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Latencies of both kinds together.
    pub fn latency_ns(&self) -> Histogram<u64> {
        let mut all = self.get.latency_ns.clone();
        all.add(&self.put.latency_ns)
            .expect("histograms of equal bounds add");
        all
    }

    /// The share of answered GETs that found a value, or `None` without answered GETs.
    pub fn hit_rate(&self) -> Option<f64> {
        let answered = self.get.answered();
        (answered > 0).then(|| self.get.ok as f64 / answered as f64)
    }
}

/// Runs the benchmark against the frontend at `addr`: preloads if asked, connects every client,
/// then measures. Fails only on a bad configuration; failed requests are counted in the outcome
/// with the first few reasons.
pub fn run(addr: &str, config: &BenchConfig, options: ClientOptions) -> Result<BenchOutcome> {
    config.validate()?;
    let mut failures = Vec::new();
    let preload = config.preload.then(|| {
        let (outcome, why) = preload(addr, config, &options);
        failures = why;
        outcome
    });
    let mut seeds = config.seed.map_or_else(Rng::from_entropy, Rng::seeded);
    let client_seeds: Vec<u64> = (0..config.clients).map(|_| seeds.next_u64()).collect();
    let quotas = split_evenly(config.requests, config.clients);
    let done = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    // Every client connects first; the clock starts when all are ready, and each client's
    // deadline counts from that one start, so the run lasts at least the duration asked.
    let ready = Barrier::new(config.clients + 1);
    let go = Barrier::new(config.clients + 1);
    let start = OnceLock::new();
    let (seconds, parts) = std::thread::scope(|scope| {
        let workers: Vec<_> = client_seeds
            .iter()
            .zip(&quotas)
            .map(|(&seed, &quota)| {
                let clock = Clock {
                    ready: &ready,
                    go: &go,
                    start: &start,
                };
                let (done, finished, options) = (&done, &finished, &options);
                scope.spawn(move || {
                    let part = measure(addr, config, options, seed, quota, clock, done);
                    finished.fetch_add(1, Ordering::Release);
                    part
                })
            })
            .collect();
        ready.wait();
        let started = *start.get_or_init(Instant::now);
        go.wait();
        if config.progress {
            show_progress(config, started, &done, &finished);
        }
        let parts: Vec<ClientPart> = workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    let mut part = ClientPart::default();
                    part.note("a client thread panicked".into());
                    part
                })
            })
            .collect();
        (started.elapsed().as_secs_f64(), parts)
    });
    let mut outcome = BenchOutcome {
        config: config.clone(),
        seconds,
        get: OpStats::default(),
        put: OpStats::default(),
        failures,
        preload,
    };
    for part in parts {
        outcome.get.merge(&part.get);
        outcome.put.merge(&part.put);
        for failure in part.failures {
            if outcome.failures.len() < MAX_FAILURES && !outcome.failures.contains(&failure) {
                outcome.failures.push(failure);
            }
        }
    }
    Ok(outcome)
}

/// `total` split into `parts` shares that differ by at most one.
fn split_evenly(total: u64, parts: usize) -> Vec<u64> {
    let parts_u64 = parts as u64;
    (0..parts_u64)
        .map(|i| total / parts_u64 + u64::from(i < total % parts_u64))
        .collect()
}

fn show_progress(config: &BenchConfig, started: Instant, done: &AtomicU64, finished: &AtomicUsize) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    // By time when the run is timed, else by requests.
    let (length, template) = match config.duration {
        Some(d) => (d.as_millis() as u64, "{elapsed_precise} [{bar:40}] {msg}"),
        None => (
            config.requests,
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} requests, {msg}, eta {eta}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    while finished.load(Ordering::Acquire) < config.clients {
        let count = done.load(Ordering::Relaxed);
        let rate = count as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let rate = thousands(rate.round() as u64);
        match config.duration {
            Some(_) => {
                bar.set_position((started.elapsed().as_millis() as u64).min(length));
                bar.set_message(format!("{} requests, {rate} ops/s", thousands(count)));
            }
            None => {
                bar.set_position(count);
                bar.set_message(format!("{rate} ops/s"));
            }
        }
        // A screen refresh rate; the clients do not wait for it.
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// What one client thread saw.
#[derive(Default)]
struct ClientPart {
    get: OpStats,
    put: OpStats,
    failures: Vec<String>,
}

impl ClientPart {
    fn note(&mut self, failure: String) {
        if self.failures.len() < MAX_FAILURES && !self.failures.contains(&failure) {
            self.failures.push(failure);
        }
    }

    fn stats(&mut self, kind: OpKind) -> &mut OpStats {
        match kind {
            OpKind::Get => &mut self.get,
            OpKind::Put => &mut self.put,
        }
    }
}

/// One client thread's measured part: `quota` requests, or requests until the configured
/// duration has passed.
/// How the clients of a run start together: all wait at `ready` once connected; the run's
/// start is then set, and `go` lets them begin.
#[derive(Clone, Copy)]
struct Clock<'a> {
    ready: &'a Barrier,
    go: &'a Barrier,
    start: &'a OnceLock<Instant>,
}

fn measure(
    addr: &str,
    config: &BenchConfig,
    options: &ClientOptions,
    seed: u64,
    quota: u64,
    clock: Clock<'_>,
    done: &AtomicU64,
) -> ClientPart {
    let mut part = ClientPart::default();
    let mut conn = match options.open(addr) {
        Ok(conn) => Some(conn),
        Err(e) => {
            part.note(e.to_string());
            None
        }
    };
    // After a connect that failed, the client gives up instead of hammering a dead address.
    let mut gave_up = conn.is_none();
    clock.ready.wait();
    clock.go.wait();
    let started = *clock.start.get_or_init(Instant::now);
    let deadline = config.duration.map(|d| started + d);
    let mut workload = Workload::new(config.keyspace, config.mix, Rng::seeded(seed));
    let mut next_id = 1u64;
    let mut remaining = quota;
    let mut ops: Vec<(OpKind, u64)> = Vec::with_capacity(config.pipeline);
    let mut frames: Vec<Frame> = Vec::with_capacity(config.pipeline);
    loop {
        let size = match deadline {
            Some(deadline) if Instant::now() >= deadline => break,
            Some(_) => config.pipeline,
            None if remaining == 0 => break,
            None => config.pipeline.min(remaining as usize),
        };
        remaining = remaining.saturating_sub(size as u64);
        ops.clear();
        ops.extend((0..size).map(|_| workload.next_op()));
        for &(kind, _) in &ops {
            part.stats(kind).requests += 1;
        }
        if conn.is_none() && !gave_up {
            match options.open(addr) {
                Ok(fresh) => conn = Some(fresh),
                Err(e) => {
                    part.note(e.to_string());
                    gave_up = true;
                }
            }
        }
        let Some(connection) = conn.as_mut() else {
            // Counted though never sent, so that the requests asked for still add up.
            for &(kind, _) in &ops {
                part.stats(kind).errors += 1;
            }
            done.fetch_add(size as u64, Ordering::Relaxed);
            if deadline.is_some() {
                break;
            }
            continue;
        };
        frames.clear();
        for &(kind, index) in &ops {
            let frame = match kind {
                OpKind::Get => Frame::request(Opcode::GET, next_id, key(index), Vec::new()),
                OpKind::Put => Frame::request(
                    Opcode::PUT,
                    next_id,
                    key(index),
                    value_for(index, config.value_size),
                ),
            };
            next_id = next_id.wrapping_add(1);
            frames.push(frame);
        }
        let exchanged = exchange(
            connection,
            &frames,
            config.value_size,
            |i, answer, latency| {
                let kind = ops[i].0;
                let stats = part.stats(kind);
                match answer.status {
                    Status::OK => stats.ok += 1,
                    Status::NOT_FOUND => stats.not_found += 1,
                    status => {
                        stats.errors += 1;
                        let name = if kind == OpKind::Get { "GET" } else { "PUT" };
                        let message = answer.message();
                        part.note(format!("{name} answered {status}: {message}"));
                        return;
                    }
                }
                stats
                    .latency_ns
                    .saturating_record((latency.as_nanos() as u64).max(1));
            },
        );
        if let Err((answered, e)) = exchanged {
            for &(kind, _) in &ops[answered..] {
                part.stats(kind).errors += 1;
            }
            part.note(e.to_string());
            conn = None;
        }
        done.fetch_add(size as u64, Ordering::Relaxed);
    }
    part
}

/// Sends `frames` as one batch and reads their answers in order, calling `on_answer` with each
/// answer's index, the answer, and the time since the batch started going out. On a broken
/// connection, returns how many answers arrived and why it broke.
fn exchange(
    conn: &mut Connection,
    frames: &[Frame],
    value_size: usize,
    mut on_answer: impl FnMut(usize, &Frame, Duration),
) -> std::result::Result<(), (usize, Error)> {
    let in_flight: usize = frames
        .iter()
        .map(|f| f.encoded_len() + MIN_FRAME + value_size)
        .sum();
    let started = Instant::now();
    let mut read_answers = |conn: &mut Connection| {
        for (i, request) in frames.iter().enumerate() {
            let answer = conn.recv_answer(request).map_err(|e| (i, e))?;
            on_answer(i, &answer, started.elapsed());
        }
        Ok(())
    };
    if in_flight <= INLINE_BATCH_BYTES {
        for frame in frames {
            conn.send(frame);
        }
        conn.flush().map_err(|e| (0, e))?;
        return read_answers(conn);
    }
    let mut bytes = Vec::with_capacity(in_flight);
    for frame in frames {
        frame.encode_into(&mut bytes);
    }
    let io_error = |source| Error::Io {
        addr: conn.addr().to_string(),
        source,
    };
    let mut writer = conn.stream().try_clone().map_err(|e| (0, io_error(e)))?;
    let addr = conn.addr().to_string();
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || writer.write_all(&bytes));
        let read = read_answers(conn);
        if read.is_err() {
            // Unblocks the writer if it waits on a full socket.
            let _ = conn.stream().shutdown(std::net::Shutdown::Both);
        }
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        read?;
        sent.map_err(|source| (frames.len(), Error::Io { addr, source }))
    })
}

/// PUTs every key of the key space once, spread over the clients. Keys a broken connection
/// left unwritten count as errors, and the reasons are returned with the outcome.
fn preload(
    addr: &str,
    config: &BenchConfig,
    options: &ClientOptions,
) -> (PreloadOutcome, Vec<String>) {
    let started = Instant::now();
    let shares = split_evenly(config.keyspace, config.clients);
    let mut first = 0u64;
    let ranges: Vec<(u64, u64)> = shares
        .iter()
        .map(|&share| {
            let range = (first, first + share);
            first += share;
            range
        })
        .filter(|(start, end)| start < end)
        .collect();
    let parts: Vec<(u64, Option<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = ranges
            .iter()
            .map(|&(start, end)| {
                scope.spawn(move || preload_range(addr, config, options, start, end))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| (0, Some("a preload thread panicked".to_string())))
            })
            .collect()
    });
    let mut outcome = PreloadOutcome {
        keys: config.keyspace,
        ..PreloadOutcome::default()
    };
    let mut failures = Vec::new();
    for (errors, failure) in parts {
        outcome.errors += errors;
        if let Some(failure) = failure.map(|f| format!("preload: {f}")) {
            if failures.len() < MAX_FAILURES && !failures.contains(&failure) {
                failures.push(failure);
            }
        }
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    (outcome, failures)
}

/// PUTs keys `start..end` on one connection: the PUTs that failed, and why the connection did.
fn preload_range(
    addr: &str,
    config: &BenchConfig,
    options: &ClientOptions,
    start: u64,
    end: u64,
) -> (u64, Option<String>) {
    let mut conn = match options.open(addr) {
        Ok(conn) => conn,
        Err(e) => return (end - start, Some(e.to_string())),
    };
    let mut errors = 0u64;
    let mut index = start;
    while index < end {
        let batch_end = end.min(index + PRELOAD_BATCH as u64);
        let frames: Vec<Frame> = (index..batch_end)
            .map(|i| Frame::request(Opcode::PUT, i + 1, key(i), value_for(i, config.value_size)))
            .collect();
        let mut refused = None;
        let exchanged = exchange(&mut conn, &frames, config.value_size, |_, answer, _| {
            if answer.status != Status::OK {
                errors += 1;
                refused.get_or_insert_with(|| {
                    format!("PUT answered {}: {}", answer.status, answer.message())
                });
            }
        });
        if let Err((answered, e)) = exchanged {
            return (
                errors + (end - index) - answered as u64,
                Some(e.to_string()),
            );
        }
        if refused.is_some() {
            return (errors, refused);
        }
        index = batch_end;
    }
    (errors, None)
}

/// The human report: a header, a table of rates and latency percentiles, errors and hit rate.
pub fn render_text(outcome: &BenchOutcome) -> String {
    let config = &outcome.config;
    let mut out = String::new();
    let amount = match config.duration {
        Some(d) => format!("for {} s", d.as_secs_f64()),
        None => format!("{} requests", thousands(config.requests)),
    };
    let _ = writeln!(
        out,
        "{} clients, pipeline {}, {amount}, values of {} B, {} keys, {:.0}% GET / {:.0}% PUT",
        config.clients,
        config.pipeline,
        thousands(config.value_size as u64),
        thousands(config.keyspace),
        config.mix.get_fraction() * 100.0,
        (1.0 - config.mix.get_fraction()) * 100.0
    );
    if let Some(preload) = &outcome.preload {
        let _ = writeln!(
            out,
            "preloaded {} keys in {:.2} s ({} errors)",
            thousands(preload.keys),
            preload.seconds,
            thousands(preload.errors)
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<4} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "op", "requests", "errors", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    let all = outcome.latency_ns();
    let rows = [
        ("all", outcome.requests(), outcome.errors(), None, &all),
        (
            "GET",
            outcome.get.requests,
            outcome.get.errors,
            Some(OpKind::Get),
            &outcome.get.latency_ns,
        ),
        (
            "PUT",
            outcome.put.requests,
            outcome.put.errors,
            Some(OpKind::Put),
            &outcome.put.latency_ns,
        ),
    ];
    for (name, requests, errors, kind, latency) in rows {
        if kind.is_some() && requests == 0 {
            continue;
        }
        let _ = write!(
            out,
            "{name:<4} {:>12} {:>12} {:>12}",
            thousands(requests),
            thousands(errors),
            thousands(outcome.ops_per_sec(kind).round() as u64)
        );
        match Percentiles::of(latency) {
            Some(p) => {
                let _ = writeln!(
                    out,
                    " {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    p.p50, p.p90, p.p99, p.p999, p.max
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    " {:>10} {:>10} {:>10} {:>10} {:>10}",
                    "-", "-", "-", "-", "-"
                );
            }
        }
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{} requests in {:.2} s: {} answered, {} errors",
        thousands(outcome.requests()),
        outcome.seconds,
        thousands(outcome.answered()),
        thousands(outcome.errors())
    );
    if let Some(rate) = outcome.hit_rate() {
        let _ = writeln!(
            out,
            "GET hit rate: {:.1}% ({} of {})",
            rate * 100.0,
            thousands(outcome.get.ok),
            thousands(outcome.get.answered())
        );
    }
    for failure in &outcome.failures {
        let _ = writeln!(out, "error: {failure}");
    }
    out
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A finite number as JSON (JSON has no NaN or infinity).
fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "null".to_string()
    }
}

fn json_latency(histogram: &Histogram<u64>) -> String {
    match Percentiles::of(histogram) {
        Some(p) => format!(
            "{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            json_number(p.p50),
            json_number(p.p90),
            json_number(p.p99),
            json_number(p.p999),
            json_number(p.max)
        ),
        None => "null".to_string(),
    }
}

/// The report as one JSON object on one line. Latencies are in microseconds; a `latency_us`
/// is null when no request of its kind succeeded.
pub fn render_json(outcome: &BenchOutcome) -> String {
    let config = &outcome.config;
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"clients\":{},\"pipeline\":{},\"value_size\":{},\"keyspace\":{},\"mix\":{},",
        config.clients,
        config.pipeline,
        config.value_size,
        config.keyspace,
        json_number(config.mix.get_fraction())
    );
    let duration = config
        .duration
        .map_or_else(|| "null".to_string(), |d| json_number(d.as_secs_f64()));
    let _ = write!(
        out,
        "\"duration\":{duration},\"requests\":{},\"answered\":{},\"errors\":{},\"seconds\":{},\"ops_per_sec\":{},\"latency_us\":{},",
        outcome.requests(),
        outcome.answered(),
        outcome.errors(),
        json_number(outcome.seconds),
        json_number(outcome.ops_per_sec(None)),
        json_latency(&outcome.latency_ns())
    );
    let hit_rate = outcome
        .hit_rate()
        .map_or_else(|| "null".to_string(), json_number);
    let _ = write!(
        out,
        "\"get\":{{\"requests\":{},\"errors\":{},\"hits\":{},\"misses\":{},\"hit_rate\":{hit_rate},\"ops_per_sec\":{},\"latency_us\":{}}},",
        outcome.get.requests,
        outcome.get.errors,
        outcome.get.ok,
        outcome.get.not_found,
        json_number(outcome.ops_per_sec(Some(OpKind::Get))),
        json_latency(&outcome.get.latency_ns)
    );
    let _ = write!(
        out,
        "\"put\":{{\"requests\":{},\"errors\":{},\"ops_per_sec\":{},\"latency_us\":{}}},",
        outcome.put.requests,
        outcome.put.errors,
        json_number(outcome.ops_per_sec(Some(OpKind::Put))),
        json_latency(&outcome.put.latency_ns)
    );
    let preload = outcome.preload.as_ref().map_or_else(
        || "null".to_string(),
        |p| {
            format!(
                "{{\"keys\":{},\"seconds\":{},\"errors\":{}}}",
                p.keys,
                json_number(p.seconds),
                p.errors
            )
        },
    );
    let failures: Vec<String> = outcome.failures.iter().map(|f| json_string(f)).collect();
    let _ = write!(
        out,
        "\"preload\":{preload},\"failures\":[{}]}}",
        failures.join(",")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_twelve_digits_and_values_repeat_them() {
        assert_eq!(key(12345), b"key:000000012345");
        assert_eq!(key(MAX_KEYSPACE - 1), b"key:999999999999");
        assert_eq!(value_for(12345, 5), b"00000");
        assert_eq!(value_for(7, 14), b"00000000000700");
        assert!(value_for(7, 0).is_empty());
    }

    #[test]
    fn mix_parses_names_and_fractions_and_refuses_the_rest() {
        assert_eq!("get".parse::<Mix>().unwrap(), Mix::GET);
        assert_eq!("PUT".parse::<Mix>().unwrap(), Mix::PUT);
        assert_eq!("0.9".parse::<Mix>().unwrap().get_fraction(), 0.9);
        assert_eq!("1".parse::<Mix>().unwrap(), Mix::GET);
        for bad in ["1.5", "-0.1", "NaN", "half", ""] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(Mix::GET.to_string(), "get");
        assert_eq!(Mix::HALF.to_string(), "0.5");
    }

    #[test]
    fn workload_stays_in_the_keyspace_and_follows_the_mix() {
        let draws = 100_000;
        let mut workload = Workload::new(1_000, "0.9".parse().unwrap(), Rng::seeded(3));
        let mut gets = 0;
        let mut seen = vec![0u32; 1_000];
        for _ in 0..draws {
            let (kind, index) = workload.next_op();
            gets += usize::from(kind == OpKind::Get);
            seen[index as usize] += 1;
        }
        let share = gets as f64 / draws as f64;
        assert!((share - 0.9).abs() < 0.01, "GET share {share}");
        // Uniform: every key drawn, none far above its expected 100 draws.
        assert!(seen.iter().all(|&n| n > 0 && n < 200), "{seen:?}");

        for (mix, only) in [(Mix::GET, OpKind::Get), (Mix::PUT, OpKind::Put)] {
            let mut workload = Workload::new(10, mix, Rng::seeded(5));
            assert!((0..10_000).all(|_| workload.next_op().0 == only));
        }
    }

    #[test]
    fn requests_split_evenly_and_add_up() {
        assert_eq!(split_evenly(10, 3), vec![4, 3, 3]);
        assert_eq!(split_evenly(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split_evenly(100_000, 50).iter().sum::<u64>(), 100_000);
    }

    #[test]
    fn config_validation_refuses_what_cannot_run() {
        assert!(BenchConfig::default().validate().is_ok());
        let bad = [
            BenchConfig {
                clients: 0,
                ..BenchConfig::default()
            },
            BenchConfig {
                pipeline: 0,
                ..BenchConfig::default()
            },
            BenchConfig {
                keyspace: MAX_KEYSPACE + 1,
                ..BenchConfig::default()
            },
            BenchConfig {
                requests: 0,
                ..BenchConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        let timed = BenchConfig {
            requests: 0,
            duration: Some(Duration::from_secs(1)),
            ..BenchConfig::default()
        };
        assert!(timed.validate().is_ok());
    }

    /// An outcome with known counts: 3 GETs (2 hits, 1 miss) at 100, 200 and 300 µs, and 2
    /// PUTs, one answered at 1 ms and one failed.
    fn sample_outcome() -> BenchOutcome {
        let mut get = OpStats {
            requests: 3,
            ok: 2,
            not_found: 1,
            ..OpStats::default()
        };
        for us in [100, 200, 300] {
            get.latency_ns.record(us * 1000).unwrap();
        }
        let mut put = OpStats {
            requests: 2,
            ok: 1,
            errors: 1,
            ..OpStats::default()
        };
        put.latency_ns.record(1_000_000).unwrap();
        BenchOutcome {
            config: BenchConfig {
                clients: 2,
                requests: 5,
                ..BenchConfig::default()
            },
            seconds: 0.5,
            get,
            put,
            failures: vec!["PUT answered BUSY: \"full\"\n".into()],
            preload: None,
        }
    }

    #[test]
    fn json_report_has_every_key_and_escapes_messages() {
        let json = render_json(&sample_outcome());
        for expected in [
            "{\"clients\":2,\"pipeline\":1,\"value_size\":32,\"keyspace\":100000,\"mix\":0.500,",
            "\"requests\":5,\"answered\":4,\"errors\":1,\"seconds\":0.500,\"ops_per_sec\":8.000,",
            "\"get\":{\"requests\":3,\"errors\":0,\"hits\":2,\"misses\":1,\"hit_rate\":0.667,\"ops_per_sec\":6.000,",
            "\"put\":{\"requests\":2,\"errors\":1,\"ops_per_sec\":2.000,",
            "\"preload\":null,",
            "\"failures\":[\"PUT answered BUSY: \\\"full\\\"\\n\"]}",
        ] {
            assert!(json.contains(expected), "no {expected} in {json}");
        }
        // HDR buckets round up a little; the figures stay within its 3 significant digits.
        let field = |name: &str| -> f64 {
            let at = json.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
            let end = json[at..].find([',', '}']).unwrap();
            json[at..at + end].parse().unwrap()
        };
        assert!((field("p50") - 200.0).abs() < 1.0, "{json}");
        assert!((field("max") - 1000.0).abs() < 2.0, "{json}");
        assert!(!json.contains('\n'));
    }

    #[test]
    fn json_report_without_answers_has_null_latencies() {
        let outcome = BenchOutcome {
            config: BenchConfig::default(),
            seconds: 0.0,
            get: OpStats {
                requests: 4,
                errors: 4,
                ..OpStats::default()
            },
            put: OpStats::default(),
            failures: Vec::new(),
            preload: None,
        };
        assert!(outcome.all_failed());
        let json = render_json(&outcome);
        assert!(
            json.contains("\"ops_per_sec\":0.000,\"latency_us\":null,"),
            "{json}"
        );
        assert!(json.contains("\"hit_rate\":null"), "{json}");
    }

    #[test]
    fn text_report_shows_rates_percentiles_errors_and_hit_rate() {
        let text = render_text(&sample_outcome());
        let row = |name: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} row in\n{text}"))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(row("all")[1..4], ["5", "1", "8"], "{text}");
        assert_eq!(row("GET")[1..4], ["3", "0", "6"], "{text}");
        assert_eq!(row("PUT")[1..4], ["2", "1", "2"], "{text}");
        assert!(row("GET")[4].starts_with("200."), "{text}");
        assert!(text.contains("GET hit rate: 66.7% (2 of 3)"), "{text}");
        assert!(
            text.contains("5 requests in 0.50 s: 4 answered, 1 errors"),
            "{text}"
        );
        assert!(text.contains("error: PUT answered BUSY"), "{text}");
    }
}
