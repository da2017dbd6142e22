//! Failover time: how long the keys of a backend that dies are without an acknowledged write.
//!
//! A LocalCluster of 4 backends keeps 3 copies of every key (the default keeper: a probe every
//! 200 ms, 400 ms to answer, a miss confirmed by a second probe). Eight client threads write
//! keys whose chain the victim heads (the worst case: every write of those keys has to enter at
//! it) and keys it is no part of. The
//! victim is shut down as a crash looks from outside (listener and connections closed at once),
//! and the run reports, per round: the time from the kill to the first acknowledged write of
//! the victim's keys, how many writes failed meanwhile (by status), and that no write of the
//! other keys failed. Then the same with the victim as the chain's tail.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv::{BackendConfig, Client, Error, FrontendConfig, LocalCluster, Ring};

const BACKENDS: usize = 4;
const CLIENTS: usize = 8;
const ROUNDS: usize = 3;

/// What the writers saw after the kill.
#[derive(Default)]
struct Seen {
    first_ack_after_kill: Option<Duration>,
    failures: BTreeMap<String, u64>,
    other_failures: BTreeMap<String, u64>,
    writes_after_kill: u64,
}

fn main() {
    println!("# failover: LocalCluster of {BACKENDS} backends, 3 copies per key, {CLIENTS} writer threads");
    println!(
        "# columns: role of the killed backend in the written keys' chain; time from the kill to \
         the first acknowledged write of those keys; writes of them that failed meanwhile, by \
         status; writes of keys the victim holds no copy of that failed (should be 0)"
    );
    for role in ["head", "tail"] {
        let mut times = Vec::new();
        for round in 0..ROUNDS {
            let seen = failover_round(role, round);
            let time = seen
                .first_ack_after_kill
                .expect("no write was acknowledged after the kill");
            times.push(time);
            println!(
                "failover_{role}_round{round}: first ack after {:.0} ms; failed: {}; other keys failed: {}; writes after the kill: {}",
                time.as_secs_f64() * 1e3,
                by_status(&seen.failures),
                by_status(&seen.other_failures),
                seen.writes_after_kill
            );
        }
        times.sort();
        println!(
            "failover_{role}: median {:.0} ms, max {:.0} ms over {ROUNDS} rounds",
            times[ROUNDS / 2].as_secs_f64() * 1e3,
            times[ROUNDS - 1].as_secs_f64() * 1e3
        );
    }
}

fn failover_round(role: &str, round: usize) -> Seen {
    let mut cluster = LocalCluster::start(
        BACKENDS,
        BackendConfig::default(),
        FrontendConfig {
            replicas: Some(3),
            ..FrontendConfig::default()
        },
    )
    .expect("the local cluster starts");
    let addr = cluster.frontend_addr().to_string();
    let ring = Ring::new(cluster.frontend().view()).expect("a valid view");
    let victim = round % BACKENDS;
    let member = |k: &Vec<u8>| {
        let chain = ring.chain_of_key(k);
        match role {
            "head" => chain.head() == Some(victim),
            _ => chain.tail() == Some(victim),
        }
    };
    let candidates = (0..).map(|i| format!("failover-{round}-{i}").into_bytes());
    let victims: Vec<Vec<u8>> = candidates.clone().filter(member).take(64).collect();
    let others: Vec<Vec<u8>> = candidates
        .filter(|k| !ring.chain_of_key(k).members().any(|m| m == victim))
        .take(64)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (addr, stop, killed_at, seen) = (
                addr.clone(),
                Arc::clone(&stop),
                Arc::clone(&killed_at),
                Arc::clone(&seen),
            );
            let (victims, others) = (victims.clone(), others.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).expect("connect");
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += CLIENTS;
                    let on_victim = i % 2 == 0;
                    let keys = if on_victim { &victims } else { &others };
                    let key = &keys[(i / 2) % keys.len()];
                    let sent = Instant::now();
                    let result = client.put(key, b"value");
                    let done = Instant::now();
                    // Only writes sent after the kill count: one in flight at the kill may
                    // still have been acknowledged by the whole old chain.
                    let Some(kill) = *killed_at.lock().unwrap() else {
                        continue;
                    };
                    if sent < kill {
                        continue;
                    }
                    let mut seen = seen.lock().unwrap();
                    seen.writes_after_kill += 1;
                    match (result, on_victim) {
                        (Ok(()), true) => {
                            let took = done.saturating_duration_since(kill);
                            if seen.first_ack_after_kill.is_none_or(|t| took < t) {
                                seen.first_ack_after_kill = Some(took);
                            }
                        }
                        (Ok(()), false) => {}
                        (Err(e), true) => {
                            // Only failures before the first acknowledgement count.
                            if seen.first_ack_after_kill.is_none() {
                                *seen.failures.entry(status_of(&e)).or_default() += 1;
                            }
                        }
                        (Err(e), false) => {
                            if std::env::var_os("FAILOVER_DEBUG").is_some()
                                && seen.other_failures.is_empty()
                            {
                                eprintln!("other key failed: {e}");
                            }
                            *seen.other_failures.entry(status_of(&e)).or_default() += 1
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    cluster.kill_backend(victim);
    *killed_at.lock().unwrap() = Some(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().first_ack_after_kill.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("a writer thread");
    }
    cluster.shutdown();
    Arc::try_unwrap(seen)
        .ok()
        .expect("writers are done")
        .into_inner()
        .unwrap()
}

fn status_of(e: &Error) -> String {
    match e {
        Error::Status { status, .. } => status.to_string(),
        _ => "connection".to_string(),
    }
}

fn by_status(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}
