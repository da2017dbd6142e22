//! What the benchmarks share: the machine header, how long each figure is measured, and a
//! runner that times a piece of work on one or more threads.
//!
//! Every figure is the best or the median of a few runs (each bench says which), each of which
//! repeats its work until a time budget is spent. `RINGKV_BENCH_QUICK=1` shrinks the budget to a
//! few milliseconds and one run, so CI can check that the benchmarks still run without waiting
//! for stable numbers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Which of a figure's runs is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The fastest run. For work that only needs the CPU, interference from other tenants of a
    /// shared machine can only slow a run down, so the fastest run is the closest to what the
    /// code itself costs.
    Best,
    /// The run with the median rate. For work through sockets and many threads, where the
    /// scheduler is part of what is measured, a typical run says more than a lucky one.
    Median,
}

/// How long each run lasts, how many runs make one figure, and which run is reported.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Smoke-test mode: numbers are printed but mean nothing.
    pub quick: bool,
    /// Least time one run spends on its work.
    pub run_time: Duration,
    /// Runs per figure.
    pub runs: usize,
    pub pick: Pick,
}

impl Plan {
    /// The plan the environment asks for: full unless `RINGKV_BENCH_QUICK` is set to something
    /// other than `0` or the empty string.
    pub fn from_env(pick: Pick) -> Plan {
        let quick = std::env::var("RINGKV_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Plan {
                quick,
                run_time: Duration::from_millis(5),
                runs: 1,
                pick,
            }
        } else {
            Plan {
                quick,
                run_time: Duration::from_secs(1),
                runs: 5,
                pick,
            }
        }
    }

    /// Runs `run` [`runs`](Plan::runs) times and keeps the one [`pick`](Plan::pick) selects.
    pub fn measure<T>(&self, mut run: impl FnMut() -> Measured<T>) -> Measured<T> {
        let mut results: Vec<Measured<T>> = (0..self.runs).map(|_| run()).collect();
        results.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let keep = match self.pick {
            Pick::Best => results.len() - 1,
            Pick::Median => results.len() / 2,
        };
        results.swap_remove(keep)
    }
}

/// Prints the lines that say where and how the figures below were measured. They start with
/// `#` so that a reader of the `name: value unit` lines can skip them.
pub fn print_header(bench: &str, plan: &Plan) {
    println!("# ringkv benchmark: {bench}");
    println!("# cpu: {}", cpu_model());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# logical cpus: {cpus}");
    println!("# os: {}", os_release());
    let profile = if cfg!(debug_assertions) {
        "unoptimized, debug assertions on (figures are not representative)"
    } else {
        "optimized, debug assertions off"
    };
    println!("# profile: {profile}");
    if plan.quick {
        println!(
            "# method: RINGKV_BENCH_QUICK smoke test, one run of a few ms per figure; \
             the numbers mean nothing"
        );
    } else {
        println!(
            "# method: each figure is the {} of {} runs, each run lasting at least {:.1} s",
            match plan.pick {
                Pick::Best => "best (fastest)",
                Pick::Median => "median",
            },
            plan.runs,
            plan.run_time.as_secs_f64()
        );
    }
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

fn os_release() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    };
    match (
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
    ) {
        (Some(os), Some(release)) => format!("{os} {release}"),
        (None, Some(release)) => format!("{} {release}", std::env::consts::OS),
        _ => format!("{} (release unknown)", std::env::consts::OS),
    }
}

/// One run: how many operations were done in how long, and what the threads collected besides.
#[derive(Debug)]
pub struct Measured<T> {
    pub ops: u64,
    pub elapsed: Duration,
    /// Each thread's state after the run, in thread order.
    pub states: Vec<T>,
}

impl<T> Measured<T> {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The same run with each thread's state turned into what is kept of it, so that resources
    /// a state holds (connections, buffers) are released before the next run starts.
    pub fn map_states<U>(self, keep: impl FnMut(T) -> U) -> Measured<U> {
        Measured {
            ops: self.ops,
            elapsed: self.elapsed,
            states: self.states.into_iter().map(keep).collect(),
        }
    }
}

/// Runs `step` on one thread per state, all starting together, until `run_time` has passed;
/// `step` does a small batch of work and returns how many operations it did. A step in progress
/// when time is up finishes and counts, and the clock runs until it has, so the rate stays
/// honest however long one step is.
pub fn run_threads<S, F>(states: Vec<S>, run_time: Duration, step: F) -> Measured<S>
where
    S: Send,
    F: Fn(&mut S) -> u64 + Sync,
{
    let start_line = Barrier::new(states.len() + 1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = states
            .into_iter()
            .map(|mut state| {
                let (start_line, stop, step) = (&start_line, &stop, &step);
                scope.spawn(move || {
                    start_line.wait();
                    let mut ops = 0;
                    while !stop.load(Ordering::Relaxed) {
                        ops += step(&mut state);
                    }
                    (ops, state)
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        // The timer only decides when to stop; the elapsed time is read after every worker
        // has returned.
        std::thread::sleep(run_time);
        stop.store(true, Ordering::Relaxed);
        let mut ops = 0;
        let mut states = Vec::with_capacity(workers.len());
        for worker in workers {
            let (done, state) = worker.join().expect("a benchmark thread panicked");
            ops += done;
            states.push(state);
        }
        Measured {
            ops,
            elapsed: started.elapsed(),
            states,
        }
    })
}

/// Bytes per second as MB/s.
pub fn mb_per_s(bytes_per_op: usize, ops_per_s: f64) -> f64 {
    bytes_per_op as f64 * ops_per_s / 1e6
}

/// A directory of its own for a benchmark's files, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `ringkv-bench-NAME-PID` in the temporary directory, empty.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ringkv-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the bench directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
