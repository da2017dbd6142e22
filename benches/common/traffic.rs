//! Traffic through a frontend for the end-to-end benchmarks: a preload, and client threads that
//! each own one connection and have one request in flight, recording latency and relays.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringkv::rng::Rng;
use ringkv::{Client, Request};

use crate::common::Measured;

/// Bytes of every value the benchmarks store.
pub const VALUE_LEN: usize = 32;

/// Stores every key through the frontend at `addr`, `batch` requests per pipeline.
pub fn preload(addr: &str, keys: &[Vec<u8>], batch: usize) {
    let mut client = Client::connect(addr).expect("a client connects");
    let value = vec![b'v'; VALUE_LEN];
    for chunk in keys.chunks(batch) {
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
pub enum Op {
    Put,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// One client thread's connection and what it has seen.
pub struct Worker {
    pub client: Client,
    pub rng: Rng,
    /// Send PUT rather than `Client::put`'s tagged PUT_ONCE (to measure what the tag costs, and
    /// for the paper's design, which has no tags).
    pub plain_writes: bool,
    value: Vec<u8>,
    seen: Seen,
}

/// What a client thread measured.
pub struct Seen {
    /// Nanoseconds per request (per batch when pipelining).
    pub latency: Histogram<u64>,
    pub relays: u64,
    pub requests: u64,
}

impl Worker {
    /// A client of `addr` whose keys are drawn from a generator seeded with `seed`.
    pub fn new(addr: &str, seed: u64) -> Worker {
        Worker {
            client: Client::connect(addr).expect("a client connects"),
            rng: Rng::seeded(seed),
            plain_writes: false,
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
    pub fn finish(self) -> Seen {
        self.seen
    }

    /// One PUT or GET of a random key, timed; returns the number of requests made (1).
    pub fn one(&mut self, op: Op, keys: &[Vec<u8>]) -> u64 {
        let key = &keys[self.rng.below(keys.len() as u64) as usize];
        let sent = Instant::now();
        match op {
            Op::Put if self.plain_writes => {
                let put = ringkv::protocol::Frame::request(
                    ringkv::protocol::Opcode::PUT,
                    1,
                    key.clone(),
                    self.value.clone(),
                );
                let answer = self.client.raw_call(&put).expect("a PUT");
                assert!(
                    answer.status.is_success(),
                    "a PUT failed: {}",
                    answer.message()
                );
            }
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

    /// Records one request's (or batch's) latency.
    pub fn record(&mut self, took: Duration) {
        self.seen
            .latency
            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Nanoseconds from 1 ns to a minute, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Prints `name: N ops/s p50 X us p99 Y us`, and the mean relays per request when asked.
pub fn print_run(name: &str, run: &Measured<Seen>, with_relays: bool) {
    let mut latency = latency_histogram();
    let (mut relays, mut requests) = (0u64, 0u64);
    for seen in &run.states {
        latency
            .add(&seen.latency)
            .expect("histograms of equal bounds");
        relays += seen.relays;
        requests += seen.requests;
    }
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let relays = if with_relays {
        format!(
            " relays {:.2} per request",
            relays as f64 / requests.max(1) as f64
        )
    } else {
        String::new()
    };
    println!(
        "{name}: {:.0} ops/s p50 {:.1} us p99 {:.1} us{relays}",
        run.rate(),
        us(0.50),
        us(0.99)
    );
}
