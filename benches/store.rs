//! The in-memory engine on its own: GET of present keys, PUT overwriting them, and a 90/10
//! GET/PUT mix, on 1 and 4 threads, over 100,000 keys of 16 bytes with 32-byte values. Each
//! thread picks keys uniformly at random. Then the fill of an empty store with 1,000,000 new
//! keys on one thread, its tables growing on the way (as a backend's do in `kvcli test`).

mod common;

use std::hint::black_box;

use common::{print_header, run_threads, Pick, Plan};
use ringkv::rng::Rng;
use ringkv::store::{Engine, MemStore};

const KEYS: usize = 100_000;
const VALUE_LEN: usize = 32;
/// Operations per timed step, so that checking the clock costs nothing next to the work.
const BATCH: u64 = 256;
/// New keys put into an empty store by the fill figure.
const FILL_KEYS: usize = 1_000_000;

#[derive(Clone, Copy)]
enum Workload {
    Get,
    Put,
    /// One PUT in ten, the rest GETs.
    Mixed,
}

fn main() {
    let plan = Plan::from_env(Pick::Best);
    print_header("store (ringkv::store::MemStore)", &plan);
    println!("# data: {KEYS} keys of 16 bytes, {VALUE_LEN}-byte values, uniform random keys");

    let keys: Vec<[u8; 16]> = (0..KEYS).map(key).collect();
    let store = MemStore::default();
    let first_value = [b'v'; VALUE_LEN];
    for k in &keys {
        store
            .put(k, &first_value)
            .expect("an unlimited store accepts");
    }
    assert_eq!(store.size().keys, KEYS as u64, "keys collided");

    for (name, workload) in [
        ("get", Workload::Get),
        ("put", Workload::Put),
        ("mix90get", Workload::Mixed),
    ] {
        for threads in [1usize, 4] {
            let run = plan.measure(|| {
                let states = (0..threads)
                    .map(|t| Rng::seeded(0x5eed + t as u64))
                    .collect();
                run_threads(states, plan.run_time, |rng: &mut Rng| {
                    let value = [b'w'; VALUE_LEN];
                    for _ in 0..BATCH {
                        let k = &keys[rng.below(KEYS as u64) as usize];
                        let write = match workload {
                            Workload::Get => false,
                            Workload::Put => true,
                            Workload::Mixed => rng.below(10) == 0,
                        };
                        if write {
                            black_box(store.put(k, black_box(&value))).expect("an overwrite fits");
                        } else {
                            black_box(store.get(black_box(k)).expect("a preloaded key"));
                        }
                    }
                    BATCH
                })
            });
            println!("store_{name}_{threads}t: {:.0} ops/s", run.rate());
        }
    }
    assert_eq!(
        store.size().keys,
        KEYS as u64,
        "overwrites changed the key count"
    );

    let fill_keys: Vec<[u8; 16]> = (KEYS..KEYS + FILL_KEYS).map(key).collect();
    let run = plan.measure(|| {
        let empty = MemStore::default();
        let started = std::time::Instant::now();
        for k in &fill_keys {
            black_box(empty.put(k, black_box(&first_value))).expect("an unlimited store accepts");
        }
        let elapsed = started.elapsed();
        assert_eq!(empty.size().keys, FILL_KEYS as u64, "keys collided");
        common::Measured {
            ops: FILL_KEYS as u64,
            elapsed,
            states: Vec::<()>::new(),
        }
    });
    println!("store_fill_1t: {:.0} ops/s", run.rate());
}

/// The `i`th key: 16 bytes, distinct for every `i` below 10^12.
fn key(i: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(format!("key-{i:012}").as_bytes());
    out
}
