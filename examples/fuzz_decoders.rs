//! A long fuzz run of the decoders, for local use: the properties of `tests/fuzz.rs` (frame
//! decoding, the frame reader, the payload decoders, the RESP parser, and both doors of a local
//! cluster end to end) with many more cases than CI gives them.
//!
//! ```text
//! cargo run --release --example fuzz_decoders              # 100,000 cases per property
//! cargo run --release --example fuzz_decoders -- 1000000   # or FUZZ_CASES=1000000
//! FUZZ_SEED=42 cargo run --release --example fuzz_decoders # repeat a run
//! ```
//!
//! The end-to-end properties cost a few connections per case and get a share of the count (see
//! `Property::long_cases`). A failing property prints its minimal failing input; the run then
//! goes on with the others and exits with status 1.

#[allow(dead_code)]
#[path = "../tests/fuzz.rs"]
mod fuzz;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

const DEFAULT_CASES: u32 = 100_000;

fn parse_count(text: &str) -> Option<u32> {
    text.trim().replace('_', "").parse().ok()
}

fn main() {
    let cases = match std::env::args().nth(1) {
        Some(arg) => parse_count(&arg).unwrap_or_else(|| {
            eprintln!("usage: fuzz_decoders [CASES] (or FUZZ_CASES=N); {arg:?} is not a count");
            std::process::exit(2);
        }),
        None => std::env::var("FUZZ_CASES")
            .ok()
            .and_then(|v| parse_count(&v))
            .unwrap_or(DEFAULT_CASES),
    };
    // Every property reads its seed from FUZZ_SEED; one is chosen and shown so that the run
    // can be repeated.
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    std::env::set_var("FUZZ_SEED", seed.to_string());
    println!("fuzz_decoders: {cases} cases per property, FUZZ_SEED={seed}");

    let started = Instant::now();
    let mut failed = Vec::new();
    for property in fuzz::PROPERTIES {
        let wanted = property.long_cases(cases);
        match (property.run)(wanted) {
            Ok(ran) => {
                println!(
                    "{:<44} {:>9} cases  {:>9.2?}  ({:.0} cases/s)",
                    property.name,
                    ran.cases,
                    ran.elapsed,
                    f64::from(ran.cases) / ran.elapsed.as_secs_f64().max(1e-9)
                );
                if !ran.tally.is_empty() {
                    println!("{:<44} {}", "", ran.tally_text());
                }
            }
            Err(failure) => {
                println!("{:<44} FAILED", property.name);
                eprintln!("{} failed: {failure}", property.name);
                failed.push(property.name);
            }
        }
    }
    println!(
        "{} properties, {} failed, in {:.1?}",
        fuzz::PROPERTIES.len(),
        failed.len(),
        started.elapsed()
    );
    if !failed.is_empty() {
        eprintln!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
