//! ringkv as a memo cache in front of a slow function.
//!
//! ```sh
//! cargo run --release --example memo_cache -- [--frontend ADDR] [--calls N] [--distinct N] [--check]
//! ```
//!
//! The slow function counts the primes below `n` by trial division (tens of milliseconds for the
//! inputs used here). Its results are stored under `memo:primes_below:v1:<n>`: the namespace keeps
//! them apart from other data in the store, and the version is bumped whenever the function
//! changes, so that results of an old version are never served. A workload of `--calls` calls
//! over `--distinct` inputs, picked at random (`--seed`), shows which calls hit the cache and how
//! long each took. Run it twice against the same cluster and the second run is all hits.
//!
//! A cache must not hand out wrong answers: the first hit of each input (every hit with
//! `--check`) is compared with the function's own result (remembered from this run's miss, or
//! computed then), outside the timed call. A wrong entry is
//! reported and replaced, and the program then exits non-zero.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use ringkv::rng::Rng;
use ringkv::Client;

/// Cache a slow function's results in ringkv and show hits, misses and time saved.
#[derive(FromArgs)]
struct Args {
    /// frontend address (default 127.0.0.1:7000, or $RINGKV_FRONTEND)
    #[argh(option)]
    frontend: Option<String>,
    /// number of calls (default 40)
    #[argh(option, default = "40")]
    calls: u64,
    /// number of distinct inputs the calls pick from (default 8)
    #[argh(option, default = "8")]
    distinct: u64,
    /// seed of the input sequence (default 1)
    #[argh(option, default = "1")]
    seed: u64,
    /// compare every hit with a fresh computation, not only the first hit of each input
    #[argh(switch)]
    check: bool,
}

/// Cache keys are this prefix followed by the input.
const KEY_PREFIX: &str = "memo:primes_below:v1:";

/// The number of primes below `n`, by trial division: deliberately naive so that it is slow.
fn primes_below(n: u64) -> u64 {
    let is_prime = |k: u64| {
        (2..)
            .take_while(|d| d * d <= k)
            .all(|d| !k.is_multiple_of(d))
    };
    (2..n).filter(|&k| is_prime(k)).count() as u64
}

/// The `index`-th distinct input.
fn input(index: u64) -> u64 {
    300_000 + 20_000 * index
}

/// Runs `f` and measures how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("memo_cache: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    if args.distinct == 0 {
        return Err("--distinct must be at least 1".into());
    }
    let addr = ringkv::cli::frontend_address(args.frontend.clone());
    let mut client = Client::connect(&addr)?;
    println!("caching primes_below(n) in ringkv at {addr} under {KEY_PREFIX}<n>");

    let mut rng = Rng::seeded(args.seed);
    // What this run computed itself: each input's result and how long computing it took.
    let mut computed: HashMap<u64, (u64, Duration)> = HashMap::new();
    let mut checked: HashSet<u64> = HashSet::new();
    let (mut hits, mut misses, mut wrong, mut checks) = (0u64, 0u64, 0u64, 0u64);
    let (mut call_time, mut saved, mut check_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);

    for call in 1..=args.calls {
        let n = input(rng.below(args.distinct));
        let key = format!("{KEY_PREFIX}{n}");
        let (cached, lookup) = timed(|| client.get(key.as_bytes()));
        let Some(bytes) = cached? else {
            let (result, cost) = timed(|| primes_below(n));
            let (stored, put_time) =
                timed(|| client.put(key.as_bytes(), result.to_string().as_bytes()));
            stored?;
            computed.insert(n, (result, cost));
            misses += 1;
            let elapsed = lookup + cost + put_time;
            call_time += elapsed;
            println!("call {call}: primes_below({n}) = {result}, miss in {elapsed:.2?}");
            continue;
        };
        hits += 1;
        call_time += lookup;
        let cached = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.parse::<u64>().ok());
        let mut result = cached;
        let mut note = String::new();
        if args.check || checked.insert(n) || cached.is_none() {
            let ((expected, _), spent) = timed(|| {
                *computed
                    .entry(n)
                    .or_insert_with(|| timed(|| primes_below(n)))
            });
            checks += 1;
            check_time += spent;
            result = Some(expected);
            note = if cached == Some(expected) {
                " (checked)".into()
            } else {
                wrong += 1;
                client.put(key.as_bytes(), expected.to_string().as_bytes())?;
                format!(
                    " (WRONG: the cache held {}; replaced)",
                    bytes.escape_ascii()
                )
            };
        }
        if cached == result {
            // Every input that hits has been computed by now: its first hit is always checked.
            saved += computed[&n].1.saturating_sub(lookup);
        }
        let result = result.expect("a hit that is not a number is always checked");
        println!("call {call}: primes_below({n}) = {result}, hit in {lookup:.2?}{note}");
    }

    println!(
        "calls: {}  hits: {hits}  misses: {misses}  wrong: {wrong}",
        args.calls
    );
    println!("time in calls: {call_time:.2?}; the hits saved about {saved:.2?} of computing");
    println!("checking {checks} hits took {check_time:.2?} (not counted above)");
    if wrong > 0 {
        eprintln!("memo_cache: {wrong} cached results were wrong");
    }
    Ok(wrong == 0)
}
