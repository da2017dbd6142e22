//! The Python example client (examples/python/ringkv_client.py), written from PROTOCOL.md alone,
//! against an in-process cluster: its self-check must pass, and data written by either client must
//! read back byte for byte through the other.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{run_bounded, Finished};

use ringkv::{BackendConfig, Entry, FrontendConfig, LocalCluster, Placement, Routing};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/ringkv_client.py"
);

/// The longest a Python run may take before the test kills it and fails.
const PYTHON_BOUND: Duration = Duration::from_secs(60);

/// Fails with a clear message when python3 is missing or older than the client needs.
fn require_python() {
    let output = match Command::new("python3").arg("--version").output() {
        Ok(output) => output,
        Err(e) => panic!(
            "python3 is needed to run the Python example client, but it cannot be started ({e}); \
             install Python 3.9 or newer"
        ),
    };
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let version: Vec<u32> = text
        .trim()
        .trim_start_matches("Python ")
        .split('.')
        .take(2)
        .filter_map(|part| part.parse().ok())
        .collect();
    assert!(
        output.status.success() && version.len() == 2 && (version[0], version[1]) >= (3, 9),
        "the Python example client needs python3 3.9 or newer; `python3 --version` says {text:?}"
    );
}

/// Runs the client script with `args`, waiting at most [`PYTHON_BOUND`].
fn run_python(args: &[&str]) -> Finished {
    require_python();
    run_bounded(
        Command::new("python3").arg(SCRIPT).args(args),
        b"",
        PYTHON_BOUND,
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the self-check against `cluster` and asserts that every check passed.
fn assert_self_check_passes(cluster: &LocalCluster) {
    let addr = cluster.frontend_addr().to_string();
    let run = run_python(&[&addr]);
    assert!(
        run.status.success(),
        "the Python self-check failed:\n{:?}",
        run
    );
    let text = run.text();
    let lines: Vec<&str> = text.lines().collect();
    let passed = lines.iter().filter(|l| l.starts_with("ok ")).count();
    assert!(!lines.iter().any(|l| l.starts_with("FAIL")), "{:?}", run);
    assert_eq!(
        lines.last().copied(),
        Some(format!("all {passed} checks passed").as_str()),
        "{:?}",
        run
    );
    assert!(passed >= 15, "only {passed} checks ran:\n{:?}", run);

    // The self-check pipelines 500 PUTs of fresh keys; the Rust client must see them stored.
    let reports = common::client(cluster.frontend_addr()).size().unwrap();
    let (nodes, total) = common::split_total(&reports);
    assert!(
        total.counter("keys") >= 500,
        "{} keys stored",
        total.counter("keys")
    );
    assert_eq!(total.counter("keys"), common::sum(nodes, "keys"));
}

#[test]
fn python_self_check_passes_against_a_paper_style_cluster() {
    let cluster = common::cluster(3, Entry::Random, Routing::Successor);
    assert_self_check_passes(&cluster);
}

#[test]
fn python_self_check_passes_with_direct_routing_and_virtual_nodes() {
    let cluster = LocalCluster::start(
        5,
        BackendConfig::default(),
        FrontendConfig {
            entry: Entry::Owner,
            routing: Routing::Direct,
            placement: Placement::Hashed { per_node: 8 },
            threads: 8,
            startup_timeout: common::BOUND,
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    assert_self_check_passes(&cluster);
}

/// Keys and values that a text-minded client would mangle: every byte value, NUL, invalid UTF-8,
/// multi-byte UTF-8, an empty value and a value too big for one socket read.
fn binary_pairs(tag: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let mut key_all = every_byte.clone();
    key_all.extend_from_slice(tag.as_bytes());
    let big: Vec<u8> = (0..32 * 1024u32)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 8)) as u8)
        .collect();
    vec![
        (key_all, every_byte.iter().rev().copied().collect()),
        (
            [b"\0nul\xff\xfe".as_slice(), tag.as_bytes()].concat(),
            b"\0".to_vec(),
        ),
        (format!("ключ-{tag}").into_bytes(), "значение ✓".into()),
        (format!("empty-{tag}").into_bytes(), Vec::new()),
        (format!("big-{tag}").into_bytes(), big),
    ]
}

#[test]
fn rust_writes_and_python_reads_binary_keys_and_values() {
    let cluster = common::cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    let mut client = common::client(cluster.frontend_addr());
    for (key, value) in binary_pairs("from-rust") {
        client.put(&key, &value).unwrap();
        let run = run_python(&[&addr, "--hex", "--get", &hex(&key)]);
        assert!(
            run.status.success(),
            "Python could not read key {}:\n{:?}",
            hex(&key),
            run
        );
        assert_eq!(
            run.text().trim_end(),
            hex(&value),
            "Python read a different value for key {}",
            hex(&key)
        );
    }
    let run = run_python(&[&addr, "--hex", "--get", &hex(b"never stored")]);
    assert_eq!(
        run.status.code(),
        Some(3),
        "a missing key should exit 3:\n{:?}",
        run
    );
    assert_eq!(run.stderr.trim(), "NOT_FOUND");
}

#[test]
fn python_writes_and_rust_reads_binary_keys_and_values() {
    let cluster = common::cluster(3, Entry::Random, Routing::Successor);
    let addr = cluster.frontend_addr().to_string();
    let mut client = common::client(cluster.frontend_addr());
    for (key, value) in binary_pairs("from-python") {
        let run = run_python(&[&addr, "--hex", "--put", &hex(&key), &hex(&value)]);
        assert!(
            run.status.success(),
            "Python could not store key {}:\n{:?}",
            hex(&key),
            run
        );
        assert_eq!(
            client.get(&key).unwrap().as_deref(),
            Some(value.as_slice()),
            "Rust read a different value for key {}",
            hex(&key)
        );
        let run = run_python(&[&addr, "--hex", "--delete", &hex(&key)]);
        assert!(run.status.success(), "{:?}", run);
        assert_eq!(client.get(&key).unwrap(), None, "the delete did not stick");
    }
}
