//! The example programs run as real processes against an in-process cluster, and what they
//! claim is checked in the store itself.
//!
//! `cargo test` builds the examples next to the binaries; `cargo test --test examples` alone does
//! not, so build them first (`cargo build --release --examples`) when running only this file.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{run_bounded, Finished, Server};
use common::resp::{bulk, multibulk, ok, Conn, Resp};
use common::{client, cluster, BOUND};
use ringkv::{Entry, Routing};

/// The path of example `name`, built by cargo next to the `ringkv` binary.
fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ringkv"));
    let path = bin
        .parent()
        .expect("the ringkv binary has a directory")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build the examples first (`cargo build --release --examples`, or a plain \
         `cargo test --release`, which builds them)",
        path.display()
    );
    // `cargo test --test examples` does not rebuild the examples, so an edit since the last
    // build would otherwise go untested.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).unwrap();
    assert!(
        modified(&path) >= modified(&source),
        "{} is older than {}: rebuild it (`cargo build --release --examples`)",
        path.display(),
        source.display()
    );
    path
}

/// Runs `program args` with `stdin` as its input and waits for it to finish, at most [`BOUND`].
fn run(program: &Path, args: &[&str], stdin: &[u8]) -> Finished {
    run_bounded(Command::new(program).args(args), stdin, BOUND)
}

/// The lines of the bulk-load test file and, per key, the value it should leave in the store.
fn bulk_file(count: usize) -> (Vec<u8>, HashMap<Vec<u8>, Vec<u8>>) {
    let mut file = Vec::new();
    let mut expected = HashMap::new();
    let mut line = |key: &[u8], value: &[u8], file: &mut Vec<u8>| {
        file.extend_from_slice(key);
        file.push(b'\t');
        file.extend_from_slice(value);
        file.push(b'\n');
        expected.insert(key.to_vec(), value.to_vec());
    };
    // Spaces, a tab (only the first one splits), a NUL and bytes that are not UTF-8.
    line(
        b"binary-ish",
        b"two  spaces\tand a tab \x00\x01\x7f\xfe\xff end",
        &mut file,
    );
    line(b"key with spaces", b" leading and trailing ", &mut file);
    line(b"empty-value", b"", &mut file);
    file.extend_from_slice(b"this line has no tab\n");
    file.extend_from_slice(b"\tvalue-without-key\n");
    for i in 0..count {
        let value = format!("value {i} {}", "x".repeat(i % 50));
        line(
            format!("key-{i:05}").as_bytes(),
            value.as_bytes(),
            &mut file,
        );
    }
    // A key given twice: the later line wins.
    line(b"key-00000", b"overwritten", &mut file);
    (file, expected)
}

fn assert_store_holds(addr: std::net::SocketAddr, expected: &HashMap<Vec<u8>, Vec<u8>>) {
    let mut client = client(addr);
    for (key, value) in expected {
        assert_eq!(
            client.get(key).unwrap().as_deref(),
            Some(value.as_slice()),
            "the value of {} in the store",
            key.escape_ascii()
        );
    }
}

#[test]
fn bulk_load_loads_a_file_skips_malformed_lines_and_verifies() {
    let bulk_load = example("bulk_load");
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    let (file, expected) = bulk_file(1_200);
    let dir = std::env::temp_dir().join(format!("ringkv-bulk-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.tsv");
    std::fs::write(&path, &file).unwrap();
    let lines = file.iter().filter(|&&b| b == b'\n').count();

    let out = run(
        &bulk_load,
        &["--frontend", &addr, path.to_str().unwrap(), "--verify"],
        b"",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    let loaded = lines - 2;
    assert!(
        out.text()
            .contains(&format!("loaded {loaded} lines from {}", path.display())),
        "{out:?}"
    );
    assert!(
        out.text().contains("2 malformed lines skipped; 0 refused"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("line 4: no tab between key and value, skipped"),
        "{out:?}"
    );
    assert!(out.stderr.contains("line 5: empty key, skipped"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 2, "{out:?}");
    assert!(
        out.text()
            .contains(&format!("verified {} keys", expected.len())),
        "{out:?}"
    );
    assert!(out.text().contains("all match"), "{out:?}");
    assert_store_holds(cluster.frontend_addr(), &expected);
    let reports = client(cluster.frontend_addr()).size().unwrap();
    let (_, total) = common::split_total(&reports);
    assert_eq!(total.counter("keys"), expected.len() as u64);
}

#[test]
fn bulk_load_reads_stdin_in_uneven_batches() {
    let bulk_load = example("bulk_load");
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    let (file, expected) = bulk_file(100);
    // 7 does not divide the line count, so the last batch is a short one.
    let out = run(
        &bulk_load,
        &["--frontend", &addr, "-", "--batch", "7", "--verify"],
        &file,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.text().contains("lines from stdin"), "{out:?}");
    assert!(out.text().contains("all match"), "{out:?}");
    assert_store_holds(cluster.frontend_addr(), &expected);
}

#[test]
fn bulk_load_reports_refused_lines_and_fails() {
    let bulk_load = example("bulk_load");
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    // Longer than the default key limit, so the frontend answers TOO_LARGE for this line only.
    let long_key = "k".repeat(20_000);
    let input = format!("before\t1\n{long_key}\tv\nafter\t2\n");
    let out = run(
        &bulk_load,
        &["--frontend", &addr, "-", "--verify"],
        input.as_bytes(),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("line 2: PUT"), "{out:?}");
    assert!(out.stderr.contains("TOO_LARGE"), "{out:?}");
    assert!(out.text().contains("loaded 2 lines"), "{out:?}");
    assert!(out.text().contains("1 refused"), "{out:?}");
    assert!(out.text().contains("verified 2 keys"), "{out:?}");
    let mut client = client(cluster.frontend_addr());
    assert_eq!(client.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get(b"after").unwrap().as_deref(), Some(&b"2"[..]));
}

#[test]
fn bulk_load_fails_clearly_on_a_missing_file_or_a_dead_frontend() {
    let bulk_load = example("bulk_load");
    let cluster = cluster(1, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();

    let missing = std::env::temp_dir().join("ringkv-bulk-load-no-such-file.tsv");
    let out = run(
        &bulk_load,
        &["--frontend", &addr, missing.to_str().unwrap()],
        b"",
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot open {}", missing.display())),
        "{out:?}"
    );

    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let out = run(&bulk_load, &["--frontend", &dead, "-"], b"k\tv\n");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!("cannot connect to {dead}")),
        "{out:?}"
    );
}

/// The number of primes below each of `inputs`, by a sieve (not the example's trial division).
fn prime_counts(inputs: &[u64]) -> HashMap<u64, u64> {
    let limit = inputs.iter().copied().max().unwrap_or(0) as usize;
    let mut composite = vec![false; limit.max(2)];
    let mut below = vec![0u64; limit + 1];
    for k in 2..limit {
        if !composite[k] {
            for multiple in (k * k..limit).step_by(k) {
                composite[multiple] = true;
            }
        }
        below[k + 1] = below[k] + u64::from(!composite[k]);
    }
    inputs.iter().map(|&n| (n, below[n as usize])).collect()
}

/// One `call ...` line of memo_cache: the input, the result and whether it was a hit.
struct Call {
    input: u64,
    result: u64,
    hit: bool,
}

/// The calls memo_cache printed, and the key prefix it announced.
fn memo_calls(out: &Finished) -> (String, Vec<Call>) {
    let text = out.text();
    let prefix = text
        .lines()
        .find_map(|line| line.split_once(" under ").map(|(_, key)| key))
        .and_then(|key| key.strip_suffix("<n>"))
        .unwrap_or_else(|| panic!("no key prefix announced: {out:?}"))
        .to_string();
    let calls = text
        .lines()
        .filter(|line| line.starts_with("call "))
        .map(|line| {
            let (_, rest) = line.split_once("primes_below(").unwrap();
            let (input, rest) = rest.split_once(") = ").unwrap();
            let (result, rest) = rest.split_once(", ").unwrap();
            Call {
                input: input.parse().unwrap(),
                result: result.parse().unwrap(),
                hit: rest.starts_with("hit in "),
            }
        })
        .collect();
    (prefix, calls)
}

fn total(out: &Finished, name: &str) -> u64 {
    let label = format!("{name}: ");
    out.text()
        .lines()
        .find(|line| line.starts_with("calls: "))
        .and_then(|line| line.split("  ").find_map(|part| part.strip_prefix(&label)))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the totals: {out:?}"))
}

#[test]
fn memo_cache_misses_once_per_input_then_hits_with_correct_results() {
    let memo_cache = example("memo_cache");
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    let args = [
        "--frontend",
        &addr,
        "--calls",
        "15",
        "--distinct",
        "3",
        "--seed",
        "11",
    ];

    let first = run(&memo_cache, &args, b"");
    assert!(first.status.success(), "{first:?}");
    let (prefix, calls) = memo_calls(&first);
    assert_eq!(calls.len(), 15, "{first:?}");
    let inputs: Vec<u64> = calls.iter().map(|c| c.input).collect();
    let truth = prime_counts(&inputs);
    let mut seen = std::collections::HashSet::new();
    for call in &calls {
        assert_eq!(call.result, truth[&call.input], "{first:?}");
        // On an empty store the first call with an input misses and every later one hits.
        assert_eq!(call.hit, !seen.insert(call.input), "{first:?}");
    }
    assert!((2..=3).contains(&seen.len()), "{first:?}");
    assert_eq!(total(&first, "misses"), seen.len() as u64, "{first:?}");
    assert_eq!(total(&first, "hits"), 15 - seen.len() as u64, "{first:?}");
    assert_eq!(total(&first, "wrong"), 0, "{first:?}");

    let mut client = client(cluster.frontend_addr());
    for input in &seen {
        let key = format!("{prefix}{input}");
        let stored = client.get(key.as_bytes()).unwrap();
        assert_eq!(
            stored,
            Some(truth[input].to_string().into_bytes()),
            "{key} in the store"
        );
    }

    // The results outlive the process: the same workload again is all hits.
    let second = run(&memo_cache, &args, b"");
    assert!(second.status.success(), "{second:?}");
    let (_, again) = memo_calls(&second);
    assert!(again.iter().all(|c| c.hit), "{second:?}");
    assert!(
        again.iter().all(|c| c.result == truth[&c.input]),
        "{second:?}"
    );
    assert_eq!(total(&second, "hits"), 15, "{second:?}");
    assert_eq!(total(&second, "misses"), 0, "{second:?}");
}

#[test]
fn memo_cache_detects_and_repairs_a_wrong_cached_result() {
    let memo_cache = example("memo_cache");
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    let args = ["--frontend", &addr, "--calls", "4", "--distinct", "1"];
    let first = run(&memo_cache, &args, b"");
    assert!(first.status.success(), "{first:?}");
    let (prefix, calls) = memo_calls(&first);
    let input = calls[0].input;
    let right = prime_counts(&[input])[&input];
    let key = format!("{prefix}{input}");

    let mut client = client(cluster.frontend_addr());
    client.put(key.as_bytes(), b"12").unwrap();
    let second = run(&memo_cache, &args, b"");
    assert!(!second.status.success(), "{second:?}");
    assert_eq!(total(&second, "wrong"), 1, "{second:?}");
    assert!(
        second.text().contains("WRONG: the cache held 12"),
        "{second:?}"
    );
    let (_, calls) = memo_calls(&second);
    assert!(calls.iter().all(|c| c.result == right), "{second:?}");
    assert_eq!(
        client.get(key.as_bytes()).unwrap(),
        Some(right.to_string().into_bytes())
    );
}

/// The floor servers of `benches/compare-redis.sh`, with and without the hop, answer what
/// redis-benchmark sends (SET, GET, PING, CONFIG GET) the way Redis does, pipelined requests in
/// order, and end a connection that sends malformed input with a protocol error after the replies
/// before it, other connections unharmed.
#[test]
fn thread_floor_answers_set_get_ping_and_config_like_redis() {
    thread_floor_answers_like_redis(&[]);
    thread_floor_answers_like_redis(&["--hop"]);
    thread_floor_answers_like_redis(&["--hop", "--backends", "3"]);
    thread_floor_answers_like_redis(&["--hop", "--backends", "3", "--lone-yield"]);
}

fn thread_floor_answers_like_redis(mode: &[&str]) {
    let args: Vec<&str> = ["--listen", "127.0.0.1:0"]
        .iter()
        .chain(mode)
        .copied()
        .collect();
    let server = Server::start_program(&example("thread_floor"), &args);
    let addr: std::net::SocketAddr = server.listening("floor").parse().unwrap();

    let mut conn = Conn::open(addr);
    assert_eq!(conn.cmd(&["GET", "k"]), Resp::Nil);
    assert_eq!(conn.cmd(&["set", "k", "v1"]), ok());
    assert_eq!(conn.cmd(&["GET", "k"]), bulk(b"v1"));
    assert_eq!(conn.cmd(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(
        conn.cmd(&["CONFIG", "GET", "save", "appendonly"]),
        Resp::Array(vec![
            bulk(b"save"),
            bulk(b""),
            bulk(b"appendonly"),
            bulk(b"")
        ])
    );
    assert!(matches!(conn.cmd(&["DEL", "k"]), Resp::Error(_)));

    // A pipeline of 16 SETs and 16 GETs in one write is answered in order.
    let mut pipeline = Vec::new();
    for i in 0..16 {
        let (key, value) = (format!("p{i}"), format!("value {i}"));
        pipeline.extend(multibulk(&[b"SET", key.as_bytes(), value.as_bytes()]));
    }
    for i in 0..16 {
        pipeline.extend(multibulk(&[b"GET", format!("p{i}").as_bytes()]));
    }
    conn.send(&pipeline);
    for _ in 0..16 {
        assert_eq!(conn.reply(), ok());
    }
    for i in 0..16 {
        assert_eq!(conn.reply(), bulk(format!("value {i}").as_bytes()));
    }

    let mut bad = Conn::open(addr);
    let mut input = multibulk(&[b"GET", b"p1"]);
    input.extend_from_slice(b"*1\r\n$x\r\n");
    bad.send(&input);
    assert_eq!(bad.reply(), bulk(b"value 1"), "{mode:?}");
    assert!(matches!(bad.reply(), Resp::Error(e) if e.starts_with("ERR Protocol error")));
    bad.assert_closed();
    assert_eq!(conn.cmd(&["GET", "p3"]), bulk(b"value 3"));
}
