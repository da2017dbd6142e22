//! State transfer rate: a backend that held every key of a three-node cluster (three copies of
//! each) is stopped, misses some writes, and is started again on its address; the keeper marks
//! it syncing and it copies every key back from its chains' tails before it is up again.
//!
//! Prints the keys and bytes it took in, the time from the view that made it syncing to the
//! view that made it up, and the rate in keys/s and MB/s. `RINGKV_TRANSFER_KEYS` sets the key
//! count (default 1,000,000; values 32 bytes, keys about 16).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv::{Backend, BackendConfig, Client, Frontend, FrontendConfig, NodeState, Request};

const BACKENDS: usize = 3;
const LOADERS: usize = 16;
const PIPELINE: usize = 256;

fn main() {
    let keys: usize = std::env::var("RINGKV_TRANSFER_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut backends: Vec<Option<Backend>> = (0..BACKENDS)
        .map(|_| Some(Backend::start(BackendConfig::default()).expect("a backend starts")))
        .collect();
    let addrs: Vec<String> = backends
        .iter()
        .flatten()
        .map(|b| b.local_addr().to_string())
        .collect();
    let frontend = Frontend::start(FrontendConfig {
        backends: addrs.clone(),
        replicas: Some(3),
        ..FrontendConfig::default()
    })
    .expect("the frontend starts");
    let addr = frontend.local_addr().to_string();
    println!(
        "# transfer: {BACKENDS} backends (in memory), 3 copies per key, {keys} keys of 32-byte values"
    );
    let loaded = Instant::now();
    load(&addr, 0..keys, "before");
    println!(
        "load: {keys} keys in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );

    let victim = 2;
    if let Some(mut backend) = backends[victim].take() {
        backend.shutdown();
    }
    let down = wait_for(&frontend, |s| s == NodeState::Down);
    // Writes it misses while it is down: overwrites and new keys.
    load(&addr, keys / 2..keys / 2 + keys / 10, "while down");
    let restarted = Backend::start(BackendConfig {
        listen: addrs[victim].clone(),
        ..BackendConfig::default()
    })
    .expect("the backend starts again on its address");
    let syncing = wait_for(&frontend, |s| s == NodeState::Syncing);
    let up = wait_for(&frontend, |s| s == NodeState::Up);
    let mut c = Client::connect(&addrs[victim]).expect("connect to the restarted backend");
    let report = c.stats().expect("stats").remove(0);
    let copied_keys = report.counter("catchup_keys");
    let copied_bytes = report.counter("catchup_bytes");
    let took = up.1.duration_since(syncing.1);
    println!(
        "views: down at epoch {}, syncing at epoch {}, up at epoch {}",
        down.0, syncing.0, up.0
    );
    println!(
        "transfer: {copied_keys} keys, {:.1} MB in {:.2} s (syncing to up): {:.0} keys/s, {:.1} MB/s",
        copied_bytes as f64 / 1e6,
        took.as_secs_f64(),
        copied_keys as f64 / took.as_secs_f64(),
        copied_bytes as f64 / 1e6 / took.as_secs_f64()
    );
    // Everything reads back, now with the restarted node as a tail.
    let mut client = Client::connect(&addr).expect("connect");
    for i in (0..keys).step_by(keys / 1000 + 1) {
        let expected = if (keys / 2..keys / 2 + keys / 10).contains(&i) {
            "while down"
        } else {
            "before"
        };
        let got = client.get(key(i).as_bytes()).expect("read back");
        assert_eq!(
            got.as_deref(),
            Some(value(i, expected).as_bytes()),
            "key {i} after the transfer"
        );
    }
    println!("read back: a sample of 1,000 keys matches");
    drop(restarted);
}

fn key(i: usize) -> String {
    format!("tkey:{i:010}")
}

fn value(i: usize, phase: &str) -> String {
    format!("{phase:>10}-{i:021}")
}

/// PUTs `range` through the frontend, pipelined, from several threads.
fn load(addr: &str, range: std::ops::Range<usize>, phase: &'static str) {
    let range = Arc::new(range);
    let threads: Vec<_> = (0..LOADERS)
        .map(|t| {
            let (addr, range) = (addr.to_string(), Arc::clone(&range));
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).expect("connect");
                let mine: Vec<usize> = (*range).clone().skip(t).step_by(LOADERS).collect();
                for chunk in mine.chunks(PIPELINE) {
                    let requests: Vec<Request> = chunk
                        .iter()
                        .map(|&i| Request::Put {
                            key: key(i).into_bytes(),
                            value: value(i, phase).into_bytes(),
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

/// Waits until the frontend's view has the victim in a state `pred` accepts; the epoch and
/// when it was seen.
fn wait_for(frontend: &Frontend, pred: impl Fn(NodeState) -> bool) -> (u64, Instant) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let view = frontend.view();
        if pred(view.states[2]) {
            return (view.epoch, Instant::now());
        }
        assert!(Instant::now() < deadline, "the victim never changed state");
        std::thread::sleep(Duration::from_millis(1));
    }
}
