//! End to end over loopback sockets: a LocalCluster of 3 backends behind a frontend, driven by
//! client threads that each own one connection and have one request in flight at a time.
//!
//! Two configurations run in the same process, one after the other:
//! - `paper`: `FrontendConfig::default().paper()`, a random entry backend that relays to its
//!   successor until the owner is reached (one relay per request on average with 3 backends);
//! - `default`: `FrontendConfig::default()`, the owner as entry backend (direct routing, 4096
//!   partitions), so no request is relayed.
//!
//! The difference between the two is the cost of relaying. Clients, frontend and backends share
//! the machine's CPUs, so the figures are those of the whole system on this host, not of a
//! server measured from outside.

mod common;

use std::time::{Duration, Instant};

use common::{print_header, run_threads, Measured, Pick, Plan};
use hdrhistogram::Histogram;
use ringkv::rng::Rng;
use ringkv::{BackendConfig, Client, FrontendConfig, LocalCluster, Request};

const BACKENDS: usize = 3;
/// Keys preloaded before any run, so every GET finds its key.
const KEYS: usize = 10_000;
const VALUE_LEN: usize = 32;
const PIPELINE_BATCH: usize = 100;

fn main() {
    let plan = Plan::from_env(Pick::Median);
    print_header(
        "cluster (LocalCluster over 127.0.0.1, ringkv::Client)",
        &plan,
    );
    println!(
        "# data: {BACKENDS} backends, {KEYS} preloaded keys of 16 bytes, {VALUE_LEN}-byte values, \
         uniform random keys; latency is per request, from send to answer"
    );
    println!(
        "# config paper: FrontendConfig::default().paper() (random entry, successor routing, \
         1 position per node)"
    );
    println!("# config default: FrontendConfig::default() (owner entry, direct routing: no relay)");
    println!(
        "# *_pipeline{PIPELINE_BATCH}_1t: one client sending batches of {PIPELINE_BATCH} GETs \
         with Client::pipeline; its latency is per batch"
    );
    println!("# *_relays: mean relays per request over the median runs of that configuration");

    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("key-{i:012}").into_bytes())
        .collect();
    let paper = FrontendConfig::default().paper();
    let default = FrontendConfig::default();
    for (name, config) in [("paper", paper), ("default", default)] {
        bench_config(&plan, name, config, &keys);
    }
}

fn bench_config(plan: &Plan, name: &str, config: FrontendConfig, keys: &[Vec<u8>]) {
    let mut cluster = LocalCluster::start(BACKENDS, BackendConfig::default(), config)
        .expect("the local cluster starts");
    let addr = cluster.frontend_addr().to_string();
    preload(&addr, keys);

    let mut relays = 0u64;
    let mut requests = 0u64;
    for op in [Op::Put, Op::Get] {
        for threads in [1usize, 16] {
            let run = plan.measure(|| {
                let workers = (0..threads).map(|t| Worker::new(&addr, t)).collect();
                run_threads(workers, plan.run_time, |w: &mut Worker| w.one(op, keys))
                    .map_states(Worker::finish)
            });
            print_run(&format!("cluster_{name}_{}_{threads}t", op.name()), &run);
            for seen in &run.states {
                relays += seen.relays;
                requests += seen.requests;
            }
        }
    }

    let run = plan.measure(|| {
        run_threads(
            vec![Worker::new(&addr, 0)],
            plan.run_time,
            |w: &mut Worker| w.pipelined_gets(keys),
        )
        .map_states(Worker::finish)
    });
    print_run(
        &format!("cluster_{name}_get_pipeline{PIPELINE_BATCH}_1t"),
        &run,
    );

    println!(
        "cluster_{name}_relays: {:.2} per request",
        relays as f64 / requests as f64
    );
    cluster.shutdown();
}

/// Stores every key through the frontend, a pipeline at a time.
fn preload(addr: &str, keys: &[Vec<u8>]) {
    let mut client = Client::connect(addr).expect("a client connects");
    let value = vec![b'v'; VALUE_LEN];
    for chunk in keys.chunks(PIPELINE_BATCH) {
        let puts: Vec<Request> = chunk
            .iter()
            .map(|k| Request::Put {
                key: k.clone(),
                value: value.clone(),
            })
            .collect();
        for reply in client.pipeline(&puts).expect("the preload pipeline") {
            reply.into_result().expect("a preload PUT");
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// One client thread's connection and what it has seen.
struct Worker {
    client: Client,
    rng: Rng,
    value: Vec<u8>,
    seen: Seen,
}

/// What a client thread measured.
struct Seen {
    /// Nanoseconds per request (per batch when pipelining).
    latency: Histogram<u64>,
    relays: u64,
    requests: u64,
}

impl Worker {
    fn new(addr: &str, index: usize) -> Worker {
        Worker {
            client: Client::connect(addr).expect("a client connects"),
            rng: Rng::seeded(0xc1_u64 << 32 | index as u64),
            value: vec![b'w'; VALUE_LEN],
            seen: Seen {
                latency: latency_histogram(),
                relays: 0,
                requests: 0,
            },
        }
    }

    /// Closes the connection and keeps the measurements. A figure keeps several runs until it
    /// picks one, and the frontend serves each open connection with one of its worker threads,
    /// so connections left open by earlier runs would take workers from the next one.
    fn finish(self) -> Seen {
        self.seen
    }

    fn one(&mut self, op: Op, keys: &[Vec<u8>]) -> u64 {
        let key = &keys[self.rng.below(keys.len() as u64) as usize];
        let sent = Instant::now();
        match op {
            Op::Put => self.client.put(key, &self.value).expect("a PUT"),
            Op::Get => {
                let value = self.client.get(key).expect("a GET");
                assert!(value.is_some(), "a preloaded key is missing");
            }
        }
        self.record(sent.elapsed());
        self.seen.relays += u64::from(self.client.last_hops());
        self.seen.requests += 1;
        1
    }

    fn pipelined_gets(&mut self, keys: &[Vec<u8>]) -> u64 {
        let gets: Vec<Request> = (0..PIPELINE_BATCH)
            .map(|_| Request::Get {
                key: keys[self.rng.below(keys.len() as u64) as usize].clone(),
            })
            .collect();
        let sent = Instant::now();
        let replies = self.client.pipeline(&gets).expect("a GET pipeline");
        self.record(sent.elapsed());
        assert_eq!(replies.len(), PIPELINE_BATCH, "answers went missing");
        for reply in replies {
            let value = reply.into_result().expect("a pipelined GET");
            assert!(value.is_some(), "a preloaded key is missing");
        }
        PIPELINE_BATCH as u64
    }

    fn record(&mut self, took: Duration) {
        self.seen
            .latency
            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Nanoseconds from 1 ns to a minute, three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn print_run(name: &str, run: &Measured<Seen>) {
    let mut latency = latency_histogram();
    for seen in &run.states {
        latency
            .add(&seen.latency)
            .expect("histograms of equal bounds");
    }
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name}: {:.0} ops/s p50 {:.1} us p99 {:.1} us",
        run.rate(),
        us(0.50),
        us(0.99)
    );
}
