//! End to end over loopback sockets: a LocalCluster of 3 backends behind a frontend, driven by
//! client threads that each own one connection and have one request in flight at a time.
//!
//! The configurations run in the same process, one after the other:
//! - `paper`: `FrontendConfig::default().paper()`, a random entry backend that relays to its
//!   successor until the owner is reached (one relay per request on average with 3 backends);
//! - `r1`, `r2`, `r3`: `FrontendConfig::default()` (the chain's head or tail as entry backend,
//!   direct routing, 4096 partitions) with one, two or three copies of every key: a PUT is
//!   applied by each member of its chain in turn, a GET answered by the tail.
//!
//! The difference between paper and r1 is the cost of relaying; between r1 and r3, the cost of
//! replication. Clients, frontend and backends share
//! the machine's CPUs, so the figures are those of the whole system on this host, not of a
//! server measured from outside.

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::time::Instant;

use common::{print_header, run_threads, Pick, Plan};
use ringkv::{BackendConfig, FrontendConfig, LocalCluster, Request};
use traffic::{preload, print_run, Op, Worker, VALUE_LEN};

const BACKENDS: usize = 3;
/// Keys preloaded before any run, so every GET finds its key.
const KEYS: usize = 10_000;
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
    println!(
        "# config r1, r2, r3: FrontendConfig::default() (owner entry, direct routing) keeping \
         1, 2 or 3 copies of every key: writes go to the chain's head and down to its tail, \
         reads to the tail (r3 is the default)"
    );
    println!(
        "# config r3_untagged: r3 without safe retries: PUTs are sent as plain PUT, which the \
         frontend forwards untagged and does not resend (the others send Client::put's \
         PUT_ONCE, and the frontend tags pipelined PUTs): the cost of the write tags and the \
         heads' memory of them"
    );
    println!(
        "# *_pipeline{PIPELINE_BATCH}_1t: one client sending batches of {PIPELINE_BATCH} GETs \
         with Client::pipeline; its latency is per batch"
    );
    println!(
        "# *_50t_pipeline{DEPTH}: 50 clients each sending batches of {DEPTH} requests; latency is \
         per batch"
    );
    println!("# *_relays: mean relays per request over the median runs of that configuration");

    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("key-{i:012}").into_bytes())
        .collect();
    let paper = FrontendConfig::default().paper();
    let replicas = |r| FrontendConfig {
        replicas: Some(r),
        ..FrontendConfig::default()
    };
    let untagged = FrontendConfig {
        safe_retries: false,
        ..replicas(3)
    };
    for (name, config) in [
        ("paper", paper),
        ("r1", replicas(1)),
        ("r2", replicas(2)),
        ("r3", replicas(3)),
        ("r3_untagged", untagged),
    ] {
        bench_config(&plan, name, config, &keys);
    }
}

fn bench_config(plan: &Plan, name: &str, config: FrontendConfig, keys: &[Vec<u8>]) {
    let plain = !config.safe_retries;
    let mut cluster = LocalCluster::start(BACKENDS, BackendConfig::default(), config)
        .expect("the local cluster starts");
    let addr = cluster.frontend_addr().to_string();
    preload(&addr, keys, PIPELINE_BATCH);
    let worker = |seed: u64| {
        let mut worker = Worker::new(&addr, seed);
        worker.plain_writes = plain;
        worker
    };

    let mut relays = 0u64;
    let mut requests = 0u64;
    for op in [Op::Put, Op::Get] {
        for threads in [1usize, 16, 50] {
            let run = plan.measure(|| {
                let workers = (0..threads)
                    .map(|t| worker(0xc1_u64 << 32 | t as u64))
                    .collect();
                run_threads(workers, plan.run_time, |w: &mut Worker| w.one(op, keys))
                    .map_states(Worker::finish)
            });
            print_run(
                &format!("cluster_{name}_{}_{threads}t", op.name()),
                &run,
                false,
            );
            for seen in &run.states {
                relays += seen.relays;
                requests += seen.requests;
            }
        }
    }

    // 50 clients with DEPTH requests in flight each: the chain hops carry batches.
    for op in [Op::Put, Op::Get] {
        let run = plan.measure(|| {
            let workers = (0..50).map(|t| worker(0xc2_u64 << 32 | t as u64)).collect();
            run_threads(workers, plan.run_time, |w: &mut Worker| {
                pipelined(w, op, keys, DEPTH)
            })
            .map_states(Worker::finish)
        });
        print_run(
            &format!("cluster_{name}_{}_50t_pipeline{DEPTH}", op.name()),
            &run,
            false,
        );
    }

    let run = plan.measure(|| {
        run_threads(
            vec![worker(0xc1_u64 << 32)],
            plan.run_time,
            |w: &mut Worker| pipelined_gets(w, keys),
        )
        .map_states(Worker::finish)
    });
    print_run(
        &format!("cluster_{name}_get_pipeline{PIPELINE_BATCH}_1t"),
        &run,
        false,
    );

    println!(
        "cluster_{name}_relays: {:.2} per request",
        relays as f64 / requests as f64
    );
    cluster.shutdown();
}

/// Requests in flight per client in the `_pipeline16` runs.
const DEPTH: usize = 16;

/// One batch of `depth` PUTs or GETs of random keys, timed as a whole (the latency of each of
/// its requests, from the batch's send to the last answer); returns the requests made.
fn pipelined(worker: &mut Worker, op: Op, keys: &[Vec<u8>], depth: usize) -> u64 {
    let requests: Vec<Request> = (0..depth)
        .map(|_| {
            let key = keys[worker.rng.below(keys.len() as u64) as usize].clone();
            match op {
                Op::Put => Request::Put {
                    key,
                    value: vec![b'w'; VALUE_LEN],
                },
                Op::Get => Request::Get { key },
            }
        })
        .collect();
    let sent = Instant::now();
    let replies = worker.client.pipeline(&requests).expect("a pipeline");
    worker.record(sent.elapsed());
    for reply in replies {
        reply.into_result().expect("a pipelined request succeeds");
    }
    depth as u64
}

/// One client sending batches of [`PIPELINE_BATCH`] GETs; returns the requests made.
fn pipelined_gets(worker: &mut Worker, keys: &[Vec<u8>]) -> u64 {
    let gets: Vec<Request> = (0..PIPELINE_BATCH)
        .map(|_| Request::Get {
            key: keys[worker.rng.below(keys.len() as u64) as usize].clone(),
        })
        .collect();
    let sent = Instant::now();
    let replies = worker.client.pipeline(&gets).expect("a GET pipeline");
    worker.record(sent.elapsed());
    assert_eq!(replies.len(), PIPELINE_BATCH, "answers went missing");
    for reply in replies {
        let value = reply.into_result().expect("a pipelined GET");
        assert!(value.is_some(), "a preloaded key is missing");
    }
    PIPELINE_BATCH as u64
}
