//! `kvcli bench` run as a user runs it, against an in-process cluster: its figures must add up,
//! its JSON must parse, its PUTs must really store values, and a dead frontend must fail loudly.

mod common;

use std::process::Command;

use common::process::{run_bounded, Finished};
use common::BOUND;
use ringkv::loadgen::{key, value_for};
use ringkv::{BackendConfig, Client, FrontendConfig, LocalCluster};

const KVCLI: &str = env!("CARGO_BIN_EXE_kvcli");

/// The keys every `--json` report must have.
const JSON_KEYS: &[&str] = &[
    "clients",
    "pipeline",
    "value_size",
    "keyspace",
    "mix",
    "requests",
    "errors",
    "seconds",
    "ops_per_sec",
    "latency_us",
    "get",
    "put",
];

fn cluster() -> LocalCluster {
    LocalCluster::start(3, BackendConfig::default(), FrontendConfig::default()).unwrap()
}

/// `kvcli --frontend ADDR bench ARGS... --no-progress`, waited for at most [`BOUND`].
fn bench(addr: &str, args: &[&str]) -> Finished {
    let mut command = Command::new(KVCLI);
    command
        .args([
            "--frontend",
            addr,
            "--timeout",
            "5",
            "bench",
            "--no-progress",
        ])
        .args(args);
    run_bounded(&mut command, b"", BOUND)
}

/// Parses `json` with Python's parser, checks that it has every key of [`JSON_KEYS`], and
/// returns the values at the dotted `paths` (`null` as NaN).
fn json_fields(json: &[u8], paths: &[&str]) -> Vec<f64> {
    const SCRIPT: &str = r#"
import json, sys
report = json.load(sys.stdin)
missing = [k for k in sys.argv[1].split(",") if k not in report]
if missing:
    sys.exit("missing keys: %s" % missing)
for path in sys.argv[2:]:
    value = report
    for part in path.split("."):
        value = value[part]
    print("nan" if value is None else float(value))
"#;
    let mut command = Command::new("python3");
    command
        .args(["-c", SCRIPT, &JSON_KEYS.join(",")])
        .args(paths);
    let out = run_bounded(&mut command, json, BOUND);
    assert_eq!(
        out.code(),
        Some(0),
        "python3 refused the report:\n{}\n{out:?}",
        String::from_utf8_lossy(json)
    );
    let values: Vec<f64> = out
        .text()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert_eq!(values.len(), paths.len(), "{out:?}");
    values
}

/// The columns of the table row whose first column is `name`, commas removed.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|columns| columns.first() == Some(&name))
        .unwrap_or_else(|| panic!("no {name} row in:\n{table}"))
        .iter()
        .map(|c| c.replace(',', ""))
        .collect()
}

fn number(column: &str) -> f64 {
    column
        .parse()
        .unwrap_or_else(|e| panic!("{column:?} is not a number: {e}"))
}

#[test]
fn table_counts_every_request_and_orders_its_percentiles() {
    let cluster = cluster();
    let addr = cluster.frontend_addr().to_string();
    let out = bench(
        &addr,
        &[
            "--clients",
            "8",
            "--requests",
            "3000",
            "--keyspace",
            "500",
            "--mix",
            "0.5",
        ],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let table = out.text();
    // op, requests, errors, ops/s, p50, p90, p99, p99.9, max
    let all = row(&table, "all");
    assert_eq!(number(&all[1]), 3000.0, "{out:?}");
    assert_eq!(number(&all[2]), 0.0, "{out:?}");
    assert!(number(&all[3]) > 0.0, "{out:?}");
    let latencies: Vec<f64> = all[4..9].iter().map(|c| number(c)).collect();
    assert!(latencies[0] > 0.0, "{out:?}");
    assert!(
        latencies.windows(2).all(|pair| pair[0] <= pair[1]),
        "percentiles out of order: {out:?}"
    );
    let (get, put) = (row(&table, "GET"), row(&table, "PUT"));
    assert_eq!(number(&get[1]) + number(&put[1]), 3000.0, "{out:?}");
    // An even mix over 3000 requests lands far from either extreme.
    assert!(
        number(&get[1]) > 1000.0 && number(&put[1]) > 1000.0,
        "{out:?}"
    );
    assert!(
        table.contains("3,000 requests in ") && table.contains(": 3,000 answered, 0 errors"),
        "{out:?}"
    );
    assert!(table.contains("GET hit rate: "), "{out:?}");
}

#[test]
fn pipelined_puts_report_valid_json_and_store_their_values() {
    let cluster = cluster();
    let addr = cluster.frontend_addr().to_string();
    // 4000 uniform PUTs over 50 keys miss a given key with probability (49/50)^4000 < 1e-35.
    let out = bench(
        &addr,
        &[
            "--json",
            "--mix",
            "put",
            "--clients",
            "4",
            "--pipeline",
            "16",
            "--requests",
            "4000",
            "--keyspace",
            "50",
            "--value-size",
            "100",
        ],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout.iter().filter(|&&b| b == b'\n').count(),
        1,
        "{out:?}"
    );
    let fields = json_fields(
        &out.stdout,
        &[
            "clients",
            "pipeline",
            "value_size",
            "keyspace",
            "mix",
            "requests",
            "errors",
            "ops_per_sec",
            "seconds",
            "put.requests",
            "get.requests",
            "latency_us.p50",
            "latency_us.p90",
            "latency_us.p99",
            "latency_us.p999",
            "latency_us.max",
        ],
    );
    assert_eq!(
        fields[..7],
        [4.0, 16.0, 100.0, 50.0, 0.0, 4000.0, 0.0],
        "{out:?}"
    );
    assert!(fields[7] > 0.0 && fields[8] > 0.0, "{out:?}");
    assert_eq!(fields[9..11], [4000.0, 0.0], "{out:?}");
    let latencies = &fields[11..];
    assert!(latencies[0] > 0.0, "{out:?}");
    assert!(latencies.windows(2).all(|p| p[0] <= p[1]), "{out:?}");

    let mut client = Client::connect(&addr).unwrap();
    for index in 0..50 {
        assert_eq!(
            client.get(&key(index)).unwrap(),
            Some(value_for(index, 100)),
            "key {index}"
        );
    }
    assert_eq!(
        client.get(&key(50)).unwrap(),
        None,
        "a key outside the key space"
    );
}

#[test]
fn preload_makes_every_get_hit() {
    let cluster = cluster();
    let addr = cluster.frontend_addr().to_string();
    let out = bench(
        &addr,
        &[
            "--json",
            "--preload",
            "--mix",
            "get",
            "--keyspace",
            "300",
            "--requests",
            "1000",
            "--clients",
            "5",
        ],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let fields = json_fields(
        &out.stdout,
        &[
            "preload.keys",
            "preload.errors",
            "get.requests",
            "get.hits",
            "get.misses",
            "get.hit_rate",
            "put.requests",
            "errors",
        ],
    );
    assert_eq!(
        fields,
        [300.0, 0.0, 1000.0, 1000.0, 0.0, 1.0, 0.0, 0.0],
        "{out:?}"
    );
    let size = Client::connect(&addr).unwrap().size().unwrap();
    let total = size.last().unwrap();
    assert_eq!(total.addr, "total");
    assert_eq!(total.counter("keys"), 300, "{size:?}");
}

#[test]
fn duration_runs_about_that_long() {
    let cluster = cluster();
    let addr = cluster.frontend_addr().to_string();
    let out = bench(
        &addr,
        &[
            "--json",
            "--duration",
            "0.5",
            "--clients",
            "2",
            "--keyspace",
            "100",
        ],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let fields = json_fields(&out.stdout, &["duration", "seconds", "requests", "errors"]);
    assert_eq!(fields[0], 0.5, "{out:?}");
    assert!(fields[1] >= 0.5 && fields[1] < 5.0, "{out:?}");
    assert!(fields[2] > 0.0 && fields[3] == 0.0, "{out:?}");
}

#[test]
fn dead_frontend_exits_2_and_says_why() {
    let (_port, addr) = common::dead_addr();
    let out = bench(&addr, &["--clients", "3", "--requests", "30"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("every request failed (30 of 30)")
            && out.stderr.contains(&format!("cannot connect to {addr}")),
        "{out:?}"
    );
    assert_eq!(number(&row(&out.text(), "all")[2]), 30.0, "{out:?}");

    // Scripts still get their report, with the failures in it.
    let out = bench(&addr, &["--json", "--clients", "3", "--duration", "1"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    let fields = json_fields(&out.stdout, &["requests", "errors", "ops_per_sec"]);
    assert!(fields[0] > 0.0, "{out:?}");
    assert_eq!(fields[1], fields[0], "{out:?}");
    assert_eq!(fields[2], 0.0, "{out:?}");
    assert!(out.text().contains("cannot connect to"), "{out:?}");
}

#[test]
fn impossible_settings_are_usage_errors() {
    let (_port, addr) = common::dead_addr();
    for (args, complaint) in [
        (&["--mix", "1.5"][..], "the mix must be"),
        (&["--pipeline", "0"][..], "--pipeline must be at least 1"),
        (&["--clients", "0"][..], "--clients must be"),
        (&["--duration", "-1"][..], "--duration must be"),
    ] {
        let out = bench(&addr, args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains(complaint), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}
