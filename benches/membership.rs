//! Membership changes: how much a join or a leave moves, how long the move takes, and what it
//! costs the clients while it runs.
//!
//! 1. **Placement only** (no servers, counts over 200,000 keys `key-0`, `key-1`, ...): the
//!    fraction of keys whose owner changes when a 9th node joins 8 and when one of 9 leaves,
//!    with the default placement (4,096 partitions, the owner tables that
//!    `cluster::membership::begin` and `commit` make), and at R = 3 the fraction of copies
//!    (key, chain member) that are new: a member of the key's new chain that was not in its old
//!    one, so a copy that has to be sent. The ideal for both is 1/9: the newcomer's share (or
//!    the leaver's) and nothing else. Then the paper's placement (one hashed position per node)
//!    for the same join, the 9th node appended to the node list.
//! 2. **Rebalance**: 8 in-memory backends behind a frontend keeping 3 copies of every key, N
//!    keys loaded (16-byte keys, 32-byte values). A 9th backend joins, then one of the first 8
//!    leaves; each prints the time from the MEMBER_JOIN or MEMBER_LEAVE call until the change
//!    is done (polled every 20 ms; see [`Watch`]), the keys and bytes the backends took in
//!    (their STATS counters `handoff_keys` and `handoff_bytes`, summed by
//!    `Client::change_progress`) and the rate. A sample of 1,000 keys must read back
//!    afterwards.
//! 3. **Clients during a move**: 16 client threads, each with one request in flight, GET and
//!    PUT half and half over the loaded keys, with latency in an HDR histogram: first for 3 s
//!    with no move, then from just before the join of a 10th backend until it is done. Errors
//!    (any `Err` from `get` or `put`, after the client's own retries of a write) are counted
//!    and printed, and so are reads that did not return the last value written: each thread
//!    alone writes its share of the keys, so it knows what every read of them must see.
//!
//! `RINGKV_MEMBERSHIP_KEYS` sets N (default 1,000,000). `RINGKV_MEMBERSHIP_WATCH=progress`
//! polls `change_progress` every 20 ms instead of the view, to see what that polling costs.
//! `RINGKV_BENCH_QUICK=1` is a smoke test: 20,000 keys and a 0.3 s baseline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringkv::cluster::membership;
use ringkv::ring::{join_owners, leave_owners, DEFAULT_PLACEMENT};
use ringkv::rng::Rng;
use ringkv::{
    Backend, BackendConfig, Change, Client, Error, Frontend, FrontendConfig, Placement, Request,
    Ring, Routing, View,
};

/// Backends of the cluster before the first join.
const BACKENDS: usize = 8;
const REPLICAS: usize = 3;
/// Keys of the placement-only counts.
const PLACEMENT_KEYS: usize = 200_000;
/// Threads and batch size of the pipelined load.
const LOADERS: usize = 16;
const PIPELINE: usize = 256;
/// Client threads of the closed-loop load of part 3.
const LOAD_CLIENTS: usize = 16;
/// Keys read back after each part.
const SAMPLE: usize = 1000;
/// How often a change's progress is polled.
const POLL: Duration = Duration::from_millis(20);
/// A change that takes longer than this has hung.
const CHANGE_BOUND: Duration = Duration::from_secs(600);

fn main() {
    // The servers' logs on stderr: errors only, unless RUST_LOG asks for more.
    env_logger::init();
    let quick = std::env::var("RINGKV_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let default_keys = if quick { 20_000 } else { 1_000_000 };
    let keys: usize = std::env::var("RINGKV_MEMBERSHIP_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_keys)
        .max(LOAD_CLIENTS);
    let baseline = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(3)
    };
    let watch = match std::env::var("RINGKV_MEMBERSHIP_WATCH").as_deref() {
        Ok("progress") => Watch::Progress,
        Ok("view") | Err(_) => Watch::View,
        Ok(other) => panic!("RINGKV_MEMBERSHIP_WATCH={other:?}: expected view or progress"),
    };
    print_header(keys, quick, watch);
    placement_only();
    let mut cluster = rebalance(keys, watch);
    clients_during_a_move(&mut cluster, keys, baseline, watch);
}

fn print_header(keys: usize, quick: bool, watch: Watch) {
    println!("# ringkv benchmark: membership (join and leave: placement, rebalance, clients)");
    println!("# cpu: {}", cpu_model());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# logical cpus: {cpus}");
    let profile = if cfg!(debug_assertions) {
        "unoptimized, debug assertions on (figures are not representative)"
    } else {
        "optimized, debug assertions off"
    };
    println!("# profile: {profile}");
    if quick {
        println!("# method: RINGKV_BENCH_QUICK smoke test; the numbers mean little");
    }
    println!(
        "# cluster: {BACKENDS} in-memory backends, {REPLICAS} copies per key, {keys} keys of \
         16 bytes with 32-byte values; one run of each figure"
    );
    let watching = match watch {
        Watch::View => "the view (VIEW_GET) every 20 ms, change_progress once it is over",
        Watch::Progress => "change_progress (VIEW_GET and STATS of every backend) every 20 ms",
    };
    println!("# a change is watched by polling {watching}");
    println!("# units: MB = 1,000,000 bytes, us = microseconds");
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

// Part 1: placement only.

/// What moves between two rings, as fractions.
struct Movement {
    /// Keys whose owner (the head of the chain) is another node.
    owners: f64,
    /// (key, chain member) copies of the new ring that the old ring did not have.
    copies: f64,
}

/// Compares the owner and the chain of every key under `before` and `after`. Nodes are compared
/// by address, because a leave renumbers the nodes after the leaver.
fn movement(before: &Ring, after: &Ring) -> Movement {
    let (mut owners_moved, mut copies_new, mut copies) = (0usize, 0usize, 0usize);
    for i in 0..PLACEMENT_KEYS {
        let key = format!("key-{i}");
        let key = key.as_bytes();
        if before.node(before.owner_of_key(key)) != after.node(after.owner_of_key(key)) {
            owners_moved += 1;
        }
        let old_chain: Vec<&str> = before
            .chain_of_key(key)
            .members()
            .map(|m| before.node(m))
            .collect();
        for member in after.chain_of_key(key).members() {
            copies += 1;
            if !old_chain.contains(&after.node(member)) {
                copies_new += 1;
            }
        }
    }
    Movement {
        owners: owners_moved as f64 / PLACEMENT_KEYS as f64,
        copies: copies_new as f64 / copies.max(1) as f64,
    }
}

fn node_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("10.0.0.{}:7001", i + 1))
        .collect()
}

fn placement_view(placement: Placement, nodes: Vec<String>) -> View {
    View::new(1, Routing::Direct, placement, REPLICAS, nodes)
}

fn ring_of(view: View) -> Ring {
    Ring::new(view).expect("a valid view")
}

fn placement_only() {
    println!("# part 1: keys moved by a join and a leave, placement only ({PLACEMENT_KEYS} keys)");
    let ideal = 1.0 / (BACKENDS + 1) as f64;

    // A join, 8 -> 9, through the keeper's own steps: begin (the target table from
    // join_owners), then commit (the target becomes the owners).
    let eight = placement_view(DEFAULT_PLACEMENT, node_names(BACKENDS));
    let newcomer = node_names(BACKENDS + 1).pop().expect("a ninth name");
    let moving = membership::begin(&eight, &Change::Join(newcomer.clone())).expect("a join");
    assert_eq!(
        moving.target,
        join_owners(&eight.owners, BACKENDS, &newcomer),
        "begin deals the newcomer in with join_owners"
    );
    let nine = membership::commit(&moving);
    let join = movement(&ring_of(eight.clone()), &ring_of(nine));
    println!(
        "join {BACKENDS}->{} (partitions): owners moved {:.3} of keys (ideal {ideal:.3}), \
         copies moved {:.3} (R={REPLICAS}, ideal {ideal:.3})",
        BACKENDS + 1,
        join.owners,
        join.copies
    );

    // A leave, 9 -> 8: begin (leave_owners), commit, then the leaver, owning nothing, is taken
    // out of the node list.
    let nine = placement_view(DEFAULT_PLACEMENT, node_names(BACKENDS + 1));
    let leaver = 3;
    let moving =
        membership::begin(&nine, &Change::Leave(nine.nodes[leaver].clone())).expect("a leave");
    assert_eq!(
        Some(moving.target.clone()),
        leave_owners(&nine.owners, leaver),
        "begin deals the leaver's partitions out with leave_owners"
    );
    let handed_off = membership::commit(&moving);
    assert_eq!(membership::left(&handed_off), vec![leaver]);
    let eight_again = membership::remove(&handed_off, leaver);
    let leave = movement(&ring_of(nine), &ring_of(eight_again));
    println!(
        "leave {}->{BACKENDS} (partitions): owners moved {:.3} of keys (ideal {ideal:.3}), \
         copies moved {:.3} (R={REPLICAS}, ideal {ideal:.3})",
        BACKENDS + 1,
        leave.owners,
        leave.copies
    );

    // The paper's placement: one hashed position per node, the 9th appended to the list.
    let hashed = Placement::Hashed { per_node: 1 };
    let join = movement(
        &ring_of(placement_view(hashed, node_names(BACKENDS))),
        &ring_of(placement_view(hashed, node_names(BACKENDS + 1))),
    );
    println!(
        "join {BACKENDS}->{} (hashed, 1 per node): owners moved {:.3} of keys (ideal {ideal:.3}, \
         {:.2}x ideal), copies moved {:.3} (R={REPLICAS}, ideal {ideal:.3})",
        BACKENDS + 1,
        join.owners,
        join.owners / ideal,
        join.copies
    );
}

// Part 2: rebalancing a loaded cluster.

/// The running cluster. Backends are kept until the end, the one that left included (it is
/// shut down once it is out).
struct Cluster {
    // Fields drop in this order: the frontend (and its keeper) first, so that the backends
    // stopping after it are not reported down.
    frontend: Frontend,
    backends: Vec<Backend>,
    addr: String,
}

fn key(i: usize) -> String {
    format!("mkey:{i:011}")
}

/// The value of key `i` written with `tag` (0: the initial load): 32 bytes.
fn value(i: usize, tag: u64) -> String {
    format!("{tag:010}-{i:021}")
}

/// PUTs keys `0..keys` with tag 0 through the frontend, pipelined, from several threads.
fn load(addr: &str, keys: usize) {
    let threads: Vec<_> = (0..LOADERS)
        .map(|t| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).expect("connect");
                let mine: Vec<usize> = (t..keys).step_by(LOADERS).collect();
                for chunk in mine.chunks(PIPELINE) {
                    let requests: Vec<Request> = chunk
                        .iter()
                        .map(|&i| Request::Put {
                            key: key(i).into_bytes(),
                            value: value(i, 0).into_bytes(),
                        })
                        .collect();
                    for reply in client.pipeline(&requests).expect("pipeline") {
                        reply.into_result().expect("a PUT is acknowledged");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a loader");
    }
}

/// How a change is watched until it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// The view (VIEW_GET) every 20 ms, and `change_progress` once the view says the move is
    /// over. The default: VIEW_GET costs the cluster next to nothing.
    View,
    /// `change_progress` every 20 ms (`RINGKV_MEMBERSHIP_WATCH=progress`), as `kvcli join`
    /// does every 200 ms. Each call asks every backend for STATS, and a backend answers STATS
    /// by hashing every key it holds (to count those it heads), so with many keys this polling
    /// takes CPU from the move and from the clients.
    Progress,
}

/// What one join or leave took.
struct Moved {
    /// From the MEMBER_JOIN or MEMBER_LEAVE call until the change was seen done.
    took: Duration,
    /// Until the view with the target as its owners (the commit) was seen; a leave is done one
    /// keeper round later, when the leaver is taken out.
    committed: Duration,
    keys: u64,
    bytes: u64,
    begun_epoch: u64,
    done_epoch: u64,
    /// Times the change was asked for again because another was still finishing.
    refused: u32,
}

impl Moved {
    fn print(&self, name: &str) {
        let secs = self.took.as_secs_f64();
        println!(
            "{name}: done in {secs:.2} s (committed at {:.2} s; epoch {} to {}): {} keys, {:.1} MB \
             copied: {:.0} keys/s, {:.1} MB/s{}",
            self.committed.as_secs_f64(),
            self.begun_epoch,
            self.done_epoch,
            self.keys,
            self.bytes as f64 / 1e6,
            self.keys as f64 / secs,
            self.bytes as f64 / 1e6 / secs,
            if self.refused > 0 {
                format!(" (asked {} times: another change was finishing)", self.refused + 1)
            } else {
                String::new()
            }
        );
    }
}

/// Keys and bytes the backends of the frontend's view have taken in by moves so far, leaving
/// out `except`.
fn copied_so_far(admin: &mut Client, except: Option<&str>) -> (u64, u64) {
    let reports = admin.stats().expect("STATS");
    let counted = reports
        .iter()
        .filter(|r| r.addr != "total" && Some(r.addr.as_str()) != except);
    counted.fold((0, 0), |(keys, bytes), r| {
        (
            keys + r.counter("handoff_keys"),
            bytes + r.counter("handoff_bytes"),
        )
    })
}

/// Asks the frontend's keeper for `change` and waits until it is done, watching as `watch`
/// says.
fn change_and_wait(frontend_addr: &str, change: &Change, watch: Watch) -> Moved {
    let mut admin = Client::connect(frontend_addr).expect("connect");
    // `change_progress` sums the counters of the backends in the frontend's view, and a leave
    // is done when the leaver is out of it; the leaver's own counts (from earlier moves) are
    // left out of the figure before, so that the difference is what this leave copied.
    let leaver = match change {
        Change::Leave(addr) => Some(addr.as_str()),
        Change::Join(_) => None,
    };
    let (keys_before, bytes_before) = copied_so_far(&mut admin, leaver);
    let started = Instant::now();
    let mut refused = 0;
    let begun_epoch = loop {
        let asked = match change {
            Change::Join(addr) => admin.join(addr),
            Change::Leave(addr) => admin.leave(addr),
        };
        match asked {
            Ok(epoch) => break epoch,
            // UNAVAILABLE: not now (the last change's receivers may still be finishing).
            Err(Error::Status { status, .. })
                if status == ringkv::protocol::Status::UNAVAILABLE
                    && started.elapsed() < CHANGE_BOUND =>
            {
                refused += 1;
                std::thread::sleep(POLL);
            }
            Err(e) => panic!("the {change} was refused: {e}"),
        }
    };
    let mut committed = None;
    loop {
        let over = match watch {
            Watch::View => {
                let view = admin.view().expect("the frontend's view");
                view.epoch > begun_epoch && !view.is_moving()
            }
            Watch::Progress => true,
        };
        if over {
            let progress = admin
                .change_progress(change, begun_epoch)
                .expect("the change's progress");
            if progress.epoch > begun_epoch && progress.moving_partitions == 0 {
                committed.get_or_insert_with(|| started.elapsed());
            }
            match progress.outcome {
                Some(Ok(())) => {
                    let took = started.elapsed();
                    return Moved {
                        took,
                        committed: committed.unwrap_or(took),
                        keys: progress.keys_copied.saturating_sub(keys_before),
                        bytes: progress.bytes_copied.saturating_sub(bytes_before),
                        begun_epoch,
                        done_epoch: progress.epoch,
                        refused,
                    };
                }
                Some(Err(e)) => panic!("the {change} failed: {e}"),
                None => {}
            }
        }
        assert!(
            started.elapsed() < CHANGE_BOUND,
            "the {change} did not finish within {CHANGE_BOUND:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Reads back keys spread over `0..keys`; `expected` gives the tag each must hold (`None`: not
/// checked). Panics on the first mismatch; the number of keys checked.
fn read_back(addr: &str, keys: usize, expected: impl Fn(usize) -> Option<u64>) -> usize {
    let mut client = Client::connect(addr).expect("connect");
    let mut checked = 0;
    for i in (0..keys).step_by((keys / SAMPLE).max(1)).take(SAMPLE) {
        let Some(tag) = expected(i) else { continue };
        let got = client.get(key(i).as_bytes()).expect("read back");
        assert_eq!(
            got.as_deref(),
            Some(value(i, tag).as_bytes()),
            "key {i} read back wrong"
        );
        checked += 1;
    }
    checked
}

fn start_backend() -> Backend {
    Backend::start(BackendConfig::default()).expect("a backend starts")
}

fn rebalance(keys: usize, watch: Watch) -> Cluster {
    println!("# part 2: time to rebalance {keys} keys");
    let mut backends: Vec<Backend> = (0..BACKENDS).map(|_| start_backend()).collect();
    let frontend = Frontend::start(FrontendConfig {
        backends: backends
            .iter()
            .map(|b| b.local_addr().to_string())
            .collect(),
        replicas: Some(REPLICAS),
        ..FrontendConfig::default()
    })
    .expect("the frontend starts");
    let addr = frontend.local_addr().to_string();
    let loaded = Instant::now();
    load(&addr, keys);
    println!(
        "load: {keys} keys in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );

    let joiner = start_backend();
    // What one poll of change_progress asks of the cluster besides VIEW_GET.
    let mut admin = Client::connect(&addr).expect("connect");
    let asked = Instant::now();
    admin.stats().expect("STATS");
    println!(
        "stats: one STATS through the frontend (each backend hashes every key it holds) takes \
         {:.0} ms with {keys} keys",
        asked.elapsed().as_secs_f64() * 1e3
    );

    let join = change_and_wait(&addr, &Change::Join(joiner.local_addr().to_string()), watch);
    backends.push(joiner);
    join.print(&format!("join {BACKENDS}->{}", BACKENDS + 1));

    let leaver = 0;
    let leave = change_and_wait(
        &addr,
        &Change::Leave(backends[leaver].local_addr().to_string()),
        watch,
    );
    leave.print(&format!("leave {}->{BACKENDS}", BACKENDS + 1));
    // It owns nothing and is out of the view: stopping it must change nothing for clients.
    backends[leaver].shutdown();

    let checked = read_back(&addr, keys, |_| Some(0));
    println!("read back: a sample of {checked} keys matches (after the join and the leave)");
    Cluster {
        frontend,
        backends,
        addr,
    }
}

// Part 3: clients during a move.

/// One client thread of the closed-loop load. It alone writes the keys `i` with
/// `i % LOAD_CLIENTS == slot`, so it knows what each of them holds.
struct Worker {
    client: Client,
    slot: usize,
    rng: Rng,
    /// The tag of its next PUT (0 is the initial load's).
    next_tag: u64,
    /// The tag of the last acknowledged PUT of each key it wrote; keys absent hold tag 0.
    written: HashMap<usize, u64>,
    /// Keys whose last PUT failed: it may or may not have taken effect, so their reads are not
    /// checked until the next PUT of them succeeds.
    uncertain: HashSet<usize>,
}

/// What the threads saw in one window of load.
struct Window {
    /// Nanoseconds per request that was answered without error.
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
    /// GETs that did not return the last value written.
    wrong_reads: u64,
    /// The first few errors and wrong reads, to say what they were.
    examples: Vec<String>,
    elapsed: Duration,
}

impl Window {
    fn new() -> Window {
        Window {
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            wrong_reads: 0,
            examples: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Counts a request answered without error and records its latency.
    fn record(&mut self, took: Duration) {
        self.ok += 1;
        self.latency
            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < 5 {
            self.examples.push(example);
        }
    }

    fn add(&mut self, other: Window) {
        self.latency
            .add(&other.latency)
            .expect("histograms of equal bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.wrong_reads += other.wrong_reads;
        for example in other.examples {
            self.note(example);
        }
    }

    fn ops_per_s(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn us(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn print(&self, name: &str) {
        println!(
            "{name}: {:.0} ops/s, p50 {:.1} us, p99 {:.1} us, errors {}, wrong reads {} \
             ({} requests answered in {:.2} s)",
            self.ops_per_s(),
            self.us(0.50),
            self.us(0.99),
            self.errors,
            self.wrong_reads,
            self.ok,
            self.elapsed.as_secs_f64()
        );
        for example in &self.examples {
            println!("#   {name}: {example}");
        }
    }
}

impl Worker {
    /// One GET or PUT (half and half) of one of its keys, timed.
    fn one(&mut self, keys: usize, window: &mut Window) {
        let own_keys = (keys - self.slot).div_ceil(LOAD_CLIENTS);
        let i = self.slot + LOAD_CLIENTS * self.rng.below(own_keys as u64) as usize;
        let key = key(i);
        let is_put = self.rng.below(2) == 0;
        let sent = Instant::now();
        if is_put {
            let tag = self.next_tag;
            self.next_tag += 1;
            let result = self.client.put(key.as_bytes(), value(i, tag).as_bytes());
            let took = sent.elapsed();
            match result {
                Ok(()) => {
                    self.written.insert(i, tag);
                    self.uncertain.remove(&i);
                    window.record(took);
                }
                Err(e) => {
                    self.uncertain.insert(i);
                    window.errors += 1;
                    window.note(format!("PUT {key}: {e}"));
                }
            }
        } else {
            let result = self.client.get(key.as_bytes());
            let took = sent.elapsed();
            match result {
                Ok(got) => {
                    window.record(took);
                    if !self.uncertain.contains(&i) {
                        let tag = self.written.get(&i).copied().unwrap_or(0);
                        if got.as_deref() != Some(value(i, tag).as_bytes()) {
                            window.wrong_reads += 1;
                            window.note(format!(
                                "GET {key} returned {:?}, expected {:?}",
                                got.map(|v| String::from_utf8_lossy(&v).into_owned()),
                                value(i, tag)
                            ));
                        }
                    }
                }
                Err(e) => {
                    window.errors += 1;
                    window.note(format!("GET {key}: {e}"));
                }
            }
        }
    }

    /// The tag key `i` (one of its own) must hold, or `None` if its last PUT failed.
    fn expected(&self, i: usize) -> Option<u64> {
        if self.uncertain.contains(&i) {
            None
        } else {
            Some(self.written.get(&i).copied().unwrap_or(0))
        }
    }
}

/// Runs the load on every worker while `during` runs on this thread, then stops it; the
/// window's time runs from the start of the load until every thread has stopped.
fn run_load<T>(workers: &mut [Worker], keys: usize, during: impl FnOnce() -> T) -> (Window, T) {
    let start_line = Barrier::new(workers.len() + 1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let threads: Vec<_> = workers
            .iter_mut()
            .map(|worker| {
                let (start_line, stop) = (&start_line, &stop);
                scope.spawn(move || {
                    let mut window = Window::new();
                    start_line.wait();
                    while !stop.load(Ordering::Relaxed) {
                        worker.one(keys, &mut window);
                    }
                    window
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        let outcome = during();
        stop.store(true, Ordering::Relaxed);
        let mut total = Window::new();
        for thread in threads {
            total.add(thread.join().expect("a load thread"));
        }
        total.elapsed = started.elapsed();
        (total, outcome)
    })
}

fn clients_during_a_move(cluster: &mut Cluster, keys: usize, baseline: Duration, watch: Watch) {
    println!(
        "# part 3: {LOAD_CLIENTS} client threads, one request in flight each, GET/PUT 50/50 over \
         the {keys} keys; latency of requests answered without error"
    );
    let mut workers: Vec<Worker> = (0..LOAD_CLIENTS)
        .map(|slot| Worker {
            client: Client::connect(&cluster.addr).expect("connect"),
            slot,
            rng: Rng::seeded(0x6d65_6d62 + slot as u64),
            next_tag: 1,
            written: HashMap::new(),
            uncertain: HashSet::new(),
        })
        .collect();

    let (no_move, ()) = run_load(&mut workers, keys, || std::thread::sleep(baseline));
    no_move.print("no move");

    let joiner = start_backend();
    let joiner_addr = joiner.local_addr().to_string();
    cluster.backends.push(joiner);
    let nodes = cluster.frontend.view().nodes.len();
    let (during_join, join) = run_load(&mut workers, keys, || {
        change_and_wait(&cluster.addr, &Change::Join(joiner_addr.clone()), watch)
    });
    during_join.print("during join");
    join.print(&format!("join {nodes}->{} under load", nodes + 1));
    println!(
        "during join / no move: throughput {:.2}x, p99 {:.2}x",
        during_join.ops_per_s() / no_move.ops_per_s(),
        during_join.us(0.99) / no_move.us(0.99)
    );

    let writes: usize = workers.iter().map(|w| w.written.len()).sum();
    let checked = read_back(&cluster.addr, keys, |i| {
        workers[i % LOAD_CLIENTS].expected(i)
    });
    println!(
        "read back: a sample of {checked} keys holds the last value written ({writes} keys \
         rewritten by the load)"
    );
}
