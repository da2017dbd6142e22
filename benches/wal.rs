//! The durable engine (`DurableStore`: the in-memory map plus its write-ahead log):
//!
//! - PUT operations per second under each fsync policy with 1 and 16 writers, and how many
//!   PUTs each fsync covered (what group commit buys);
//! - recovery speed, in records per second, replaying a log of 1,000,000 PUT records;
//! - log bytes per record beyond key and value;
//! - resident memory per stored key beyond key and value, measured in a child process that only
//!   replays the log, beside Redis's figure for the same keys and values.
//!
//! Keys are 16 bytes and values 32 bytes throughout. The logs live under the system's
//! temporary directory, whose file system decides what an fsync costs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{print_header, run_threads, Pick, Plan, Scratch};
use ringkv::durable::{DurableOptions, DurableStore};
use ringkv::rng::Rng;
use ringkv::store::Engine;
use ringkv::wal::{FsyncPolicy, HEADER_LEN};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 32;
/// Distinct keys the PUT figures write to, uniformly at random.
const PUT_KEYS: u64 = 100_000;
/// When set, this process is the child that measures resident memory; its value is the log's
/// directory.
const MEMORY_CHILD: &str = "RINGKV_BENCH_WAL_MEMORY_DIR";

fn main() {
    if let Ok(dir) = std::env::var(MEMORY_CHILD) {
        measure_memory_child(Path::new(&dir));
        return;
    }
    let plan = Plan::from_env(Pick::Median);
    print_header("wal (ringkv::durable::DurableStore)", &plan);
    let scratch = Scratch::new("wal");
    println!(
        "# data: {KEY_LEN}-byte keys, {VALUE_LEN}-byte values; logs under {}",
        scratch.0.display()
    );

    put_rates(&plan, &scratch);
    let records = if plan.quick { 20_000 } else { 1_000_000 };
    let dir = scratch.0.join("recovery");
    write_log(&dir, records);
    recovery_rate(&plan, &dir, records);
    memory_per_key(&dir, records);
}

/// The `i`th key: 16 bytes, distinct for every `i` below 10^12.
fn key(i: u64) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(format!("key-{i:012}").as_bytes());
    out
}

fn put_rates(plan: &Plan, scratch: &Scratch) {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::EverySec,
        FsyncPolicy::Never,
    ] {
        for writers in [1usize, 16] {
            let dir = scratch.0.join(format!("put-{policy}-{writers}"));
            let store = DurableStore::open(
                &dir,
                DurableOptions {
                    fsync: policy,
                    ..DurableOptions::default()
                },
            )
            .expect("opening a fresh log");
            // One PUT per step under `always`, where each may wait milliseconds for its fsync,
            // so that a run does not overshoot its time by much.
            let batch = if policy == FsyncPolicy::Always { 1 } else { 64 };
            let (mut puts, mut fsyncs) = (0u64, 0u64);
            let run = plan.measure(|| {
                let fsyncs_before = store.fsyncs();
                let states = (0..writers)
                    .map(|t| Rng::seeded(0x5eed + t as u64))
                    .collect();
                let run = run_threads(states, plan.run_time, |rng: &mut Rng| {
                    let value = [b'v'; VALUE_LEN];
                    for _ in 0..batch {
                        store
                            .put(&key(rng.below(PUT_KEYS)), &value)
                            .expect("an unlimited store accepts");
                    }
                    batch
                });
                puts += run.ops;
                fsyncs += store.fsyncs() - fsyncs_before;
                run
            });
            let per_fsync = match fsyncs {
                0 => "no fsync".to_string(),
                n => format!("{:.1} puts per fsync", puts as f64 / n as f64),
            };
            println!(
                "put_fsync_{policy}_{writers}w: {:.0} ops/s ({per_fsync})",
                run.rate()
            );
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A log of `records` PUTs of distinct keys.
fn write_log(dir: &Path, records: u64) {
    let store = DurableStore::open(
        dir,
        DurableOptions {
            fsync: FsyncPolicy::Never,
            ..DurableOptions::default()
        },
    )
    .expect("opening a fresh log");
    let value = [b'v'; VALUE_LEN];
    for i in 0..records {
        store.put(&key(i), &value).expect("an unlimited store");
    }
    store.sync().expect("syncing the log");
    let per_record = (store.log_bytes() - HEADER_LEN) as f64 / records as f64;
    println!(
        "log_bytes_per_record_overhead: {:.1} bytes (a record of {} bytes holds {KEY_LEN} + \
         {VALUE_LEN} bytes of key and value)",
        per_record - (KEY_LEN + VALUE_LEN) as f64,
        per_record
    );
}

fn recovery_rate(plan: &Plan, dir: &Path, records: u64) {
    let runs = if plan.quick { 1 } else { 3 };
    // The log was just written, so it is in the page cache: this is replay speed, not disk
    // read speed.
    let best = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let store = DurableStore::open(dir, DurableOptions::default()).expect("replaying");
            let elapsed = started.elapsed();
            assert_eq!(store.recovery().records, records);
            assert_eq!(store.size().keys, records);
            elapsed
        })
        .min()
        .expect("at least one run");
    let bytes = std::fs::metadata(dir.join(ringkv::wal::LOG_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "recovery_{records}_records: {:.0} records/s ({:.0} MB/s of log, {:.2?} in all; best of \
         {runs})",
        records as f64 / best.as_secs_f64(),
        bytes as f64 / best.as_secs_f64() / 1e6,
        best
    );
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Run in a child process, so that nothing the parent allocated earlier blurs the figure: opens
/// the log (replaying every record) and prints the keys and the resident growth.
fn measure_memory_child(dir: &Path) {
    let before = rss_bytes();
    let store = DurableStore::open(dir, DurableOptions::default()).expect("replaying");
    let after = rss_bytes();
    println!("{} {}", store.size().keys, after.saturating_sub(before));
}

fn memory_per_key(dir: &Path, records: u64) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let output = Command::new(exe)
        .env(MEMORY_CHILD, dir)
        .stderr(Stdio::null())
        .output()
        .expect("running the memory child");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
    let (keys, grown) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    assert_eq!(keys, records, "the memory child replayed the log");
    let payload = (KEY_LEN + VALUE_LEN) as f64;
    println!(
        "memory_per_key_overhead_ringkv: {:.1} bytes (resident growth {:.1} MB for {keys} keys, \
         less {payload} bytes of key and value each)",
        grown as f64 / keys as f64 - payload,
        grown as f64 / 1e6
    );
    match redis_memory(records) {
        Ok(used) => println!(
            "memory_per_key_overhead_redis: {:.1} bytes (growth of INFO used_memory for the same \
             {records} keys and values, less {payload} bytes each; the allocator's count, \
             without fragmentation, where ringkv's figure is resident memory)",
            used as f64 / records as f64 - payload
        ),
        Err(why) => println!("memory_per_key_overhead_redis: not measured: {why}"),
    }
}

/// A redis-server child, killed when dropped.
struct Redis {
    child: Child,
    socket: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Growth of Redis's `used_memory` after SETting the same keys and values.
fn redis_memory(records: u64) -> Result<u64, String> {
    let socket =
        std::env::temp_dir().join(format!("ringkv-bench-redis-{}.sock", std::process::id()));
    let child = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server could not be started ({e})"))?;
    let redis = Redis { child, socket };
    // redis-server has no readiness line on a pipe we could wait for; its socket appearing
    // and accepting is the signal, polled with a bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&redis.socket) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("redis-server did not open its socket: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let used_before = redis_used_memory(&mut writer, &mut reader)?;
    let value = [b'v'; VALUE_LEN];
    let mut start = 0;
    while start < records {
        let end = (start + 1_000).min(records);
        let mut batch = Vec::new();
        for i in start..end {
            resp_command(&mut batch, &[b"SET", &key(i), &value]);
        }
        writer.write_all(&batch).map_err(|e| e.to_string())?;
        for _ in start..end {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line != "+OK\r\n" {
                return Err(format!("SET answered {line:?}"));
            }
        }
        start = end;
    }
    let used_after = redis_used_memory(&mut writer, &mut reader)?;
    Ok(used_after.saturating_sub(used_before))
}

fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// `used_memory` from INFO memory.
fn redis_used_memory(
    writer: &mut UnixStream,
    reader: &mut BufReader<UnixStream>,
) -> Result<u64, String> {
    let mut request = Vec::new();
    resp_command(&mut request, &[b"INFO", b"memory"]);
    writer.write_all(&request).map_err(|e| e.to_string())?;
    let mut header = String::new();
    reader.read_line(&mut header).map_err(|e| e.to_string())?;
    let len: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("INFO answered {header:?}"))?;
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&body);
    body.lines()
        .find_map(|line| line.strip_prefix("used_memory:")?.trim().parse().ok())
        .ok_or_else(|| "INFO memory has no used_memory".to_string())
}
