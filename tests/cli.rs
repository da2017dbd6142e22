//! The `ringkv` and `kvcli` binaries driven as a user drives them: separate processes, real
//! sockets, exit codes and printed output.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::process::{local_cluster, run_bounded, Finished, Server};
use common::BOUND;
use common::{number, table_row as row};

const KVCLI: &str = env!("CARGO_BIN_EXE_kvcli");

/// Runs kvcli with `args` and `stdin` as its input, and waits for it, at most [`BOUND`].
fn kvcli_with(args: &[&str], stdin: &[u8], env: Option<(&str, &str)>) -> Finished {
    let mut command = Command::new(KVCLI);
    command.args(args);
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    run_bounded(&mut command, stdin, BOUND)
}

fn kvcli(args: &[&str]) -> Finished {
    kvcli_with(args, b"", None)
}

/// `kvcli --frontend ADDR args...`.
fn kvcli_at(addr: &str, args: &[&str]) -> Finished {
    let mut all = vec!["--frontend", addr];
    all.extend_from_slice(args);
    kvcli(&all)
}

/// The `most-loaded / mean (bytes): X` figure of a distribution table.
fn most_loaded_over_mean(table: &str) -> f64 {
    table
        .lines()
        .find_map(|line| line.strip_prefix("most-loaded / mean (bytes): "))
        .unwrap_or_else(|| panic!("no most-loaded / mean line:\n{table}"))
        .parse()
        .unwrap()
}

#[test]
fn paper_test_passes_and_prints_a_bar_per_node() {
    let (_server, frontend, backends) = local_cluster();
    let out = kvcli_at(&frontend, &["test", "--count", "10000", "--seed", "7"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let table = out.text();
    assert!(table.contains("PUT 10,000 keys in "), "{out:?}");
    assert!(table.contains("relays per request: mean "), "{out:?}");
    assert!(
        table
            .lines()
            .any(|l| l == "PASS: all 10,000 values came back"),
        "{out:?}"
    );

    let rows: Vec<Vec<&str>> = backends.iter().map(|b| row(&table, b)).collect();
    let keys: u64 = rows.iter().map(|r| number::<u64>(r[1])).sum();
    let bytes: u64 = rows.iter().map(|r| number::<u64>(r[2])).sum();
    assert_eq!(keys, 10_000, "{out:?}");
    let total = row(&table, "total");
    assert_eq!(number::<u64>(total[1]), 10_000, "{out:?}");
    assert_eq!(number::<u64>(total[2]), bytes, "{out:?}");

    // The bar is scaled to the most-loaded node, which gets the full width.
    let bar = |r: &Vec<&str>| r.get(4).map_or(0, |bar| bar.len());
    let most = rows.iter().max_by_key(|r| number::<u64>(r[2])).unwrap();
    assert!(bar(most) > 0, "{out:?}");
    assert!(rows.iter().all(|r| bar(r) <= bar(most)), "{out:?}");
    let mean = bytes as f64 / backends.len() as f64;
    let ratio = most_loaded_over_mean(&table);
    assert!(
        (ratio - number::<u64>(most[2]) as f64 / mean).abs() < 0.01,
        "{out:?}"
    );
}

#[test]
fn put_get_delete_exit_with_0_found_1_not_found_2_error() {
    let (_server, frontend, _) = local_cluster();
    let out = kvcli_at(&frontend, &["put", "greeting", "hello"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"OK\n", "{out:?}");

    let out = kvcli_at(&frontend, &["get", "greeting"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    // Not a terminal, so the raw value and nothing else.
    assert_eq!(out.stdout, b"hello", "{out:?}");

    let out = kvcli_at(&frontend, &["delete", "greeting"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"deleted\n", "{out:?}");

    for command in ["get", "delete"] {
        let out = kvcli_at(&frontend, &[command, "greeting"]);
        assert_eq!(out.code(), Some(1), "{command}: {out:?}");
        assert!(out.stdout.is_empty(), "{command}: {out:?}");
        assert_eq!(
            out.stderr, "kvcli: greeting not found\n",
            "{command}: {out:?}"
        );
    }

    // Errors: one the server reports, and two kvcli finds before sending anything.
    let long_key = "k".repeat(20_000);
    let out = kvcli_at(&frontend, &["put", &long_key, "v"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("TOO_LARGE"), "{out:?}");

    let out = kvcli_at(&frontend, &["put", "k", "v", "--file", "/dev/null"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("not both"), "{out:?}");

    let missing = std::env::temp_dir().join("ringkv-cli-no-such-file");
    let missing = missing.to_str().unwrap();
    let out = kvcli_at(&frontend, &["put", "k", "--file", missing]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains(missing), "{out:?}");
    assert_eq!(
        kvcli_at(&frontend, &["get", "k"]).code(),
        Some(1),
        "a failed put stored something"
    );
}

#[test]
fn binary_values_round_trip_byte_exact_from_a_file_and_from_stdin() {
    let (_server, frontend, _) = local_cluster();
    // Every byte value, NUL and newlines included, and long enough to need several reads.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let dir = std::env::temp_dir().join(format!("ringkv-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blob.bin");
    std::fs::write(&path, &bytes).unwrap();

    let out = kvcli_at(
        &frontend,
        &["put", "from-file", "--file", path.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = kvcli_at(&frontend, &["get", "from-file"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout == bytes, "the value read back differs");

    let reversed: Vec<u8> = bytes.iter().rev().copied().collect();
    let out = kvcli_with(
        &["--frontend", &frontend, "put", "from-stdin"],
        &reversed,
        None,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = kvcli_at(&frontend, &["get", "from-stdin"]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout == reversed, "the value read back differs");

    // An empty value is a value: found (0), not missing (1).
    let out = kvcli_with(&["--frontend", &frontend, "put", "empty"], b"", None);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = kvcli_at(&frontend, &["get", "empty"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn size_stats_and_ping_describe_the_cluster() {
    let (_server, frontend, backends) = local_cluster();
    let keys = ["alpha", "beta", "gamma", "delta", "epsilon"];
    for key in keys {
        let out = kvcli_at(&frontend, &["put", key, "0123456789"]);
        assert_eq!(out.code(), Some(0), "{out:?}");
    }

    let out = kvcli_at(&frontend, &["size"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let table = out.text();
    let per_node: u64 = backends
        .iter()
        .map(|b| number::<u64>(row(&table, b)[1]))
        .sum();
    assert_eq!(per_node, keys.len() as u64, "{out:?}");
    let total = row(&table, "total");
    assert_eq!(number::<u64>(total[1]), keys.len() as u64, "{out:?}");
    let stored_bytes: usize = keys.iter().map(|k| k.len() + 10).sum();
    assert_eq!(number::<u64>(total[2]), stored_bytes as u64, "{out:?}");
    assert!(most_loaded_over_mean(&table) >= 1.0, "{out:?}");

    let out = kvcli_at(&frontend, &["stats"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    // The distribution first (as `kvcli size`), then the other counters.
    let text = out.text();
    let sections: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(
        number::<u64>(row(sections[0], "total")[1]),
        keys.len() as u64,
        "{out:?}"
    );
    // Every key has two more copies, on the rest of its chain of three.
    let replicas = sections
        .iter()
        .find(|s| s.starts_with("replica copies"))
        .unwrap_or_else(|| panic!("no replica copies: {out:?}"));
    assert_eq!(
        number::<u64>(row(replicas, "total")[1]),
        2 * keys.len() as u64,
        "{out:?}"
    );
    let table = sections
        .iter()
        .find(|s| s.lines().next().is_some_and(|l| l.contains(" puts ")))
        .unwrap_or_else(|| panic!("no counter table: {out:?}"));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|&h| h == name)
            .unwrap_or_else(|| panic!("no {name} column:\n{table}"))
    };
    let total = row(table, "total");
    assert_eq!(
        number::<u64>(total[column("puts")]),
        keys.len() as u64,
        "{out:?}"
    );
    let served: u64 = backends
        .iter()
        .map(|b| number::<u64>(row(table, b)[column("served")]))
        .sum();
    assert_eq!(served, keys.len() as u64, "{out:?}");

    let out = kvcli_at(&frontend, &["ping"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.text().starts_with(&format!("PONG from {frontend} in ")),
        "{out:?}"
    );

    // $RINGKV_FRONTEND stands in for --frontend.
    let out = kvcli_with(&["ping"], b"", Some(("RINGKV_FRONTEND", &frontend)));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.text().starts_with(&format!("PONG from {frontend} in ")),
        "{out:?}"
    );
}

#[test]
fn a_dead_frontend_is_an_error_naming_its_address() {
    let (_port, dead) = common::dead_addr();
    for args in [&["ping"][..], &["get", "k"], &["put", "k", "v"], &["size"]] {
        let out = kvcli_at(&dead, args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains(&dead), "{args:?}: {out:?}");
        assert!(out.elapsed < Duration::from_secs(5), "{args:?}: {out:?}");
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let out = kvcli(&["frobnicate"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("frobnicate"), "{out:?}");
    assert!(out.stderr.contains("--help"), "{out:?}");

    let out = kvcli(&[]);
    assert_eq!(out.code(), Some(2), "{out:?}");

    let out = kvcli(&["get"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("key"), "{out:?}");

    let out = kvcli(&["--help"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    for command in ["put", "get", "delete", "size", "stats", "ping", "test"] {
        assert!(out.text().contains(command), "{command}: {out:?}");
    }
}

#[test]
fn sigterm_stops_ringkv_local_cleanly() {
    let (mut server, frontend, _) = local_cluster();
    assert_eq!(kvcli_at(&frontend, &["ping"]).code(), Some(0));
    let status = server.terminate();
    assert!(status.success(), "{status}; log:\n{}", server.log());
    let out = kvcli_at(&frontend, &["ping"]);
    assert_eq!(out.code(), Some(2), "still answering after exit: {out:?}");
}

#[test]
fn separate_backend_and_frontend_processes_serve_requests() {
    let mut first = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
    let mut second = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
    let backends = [first.listening("backend"), second.listening("backend")];
    let mut frontend = Server::start(&[
        "frontend",
        "--listen",
        "127.0.0.1:0",
        &backends[0],
        &backends[1],
    ]);
    let addr = frontend.listening("frontend");

    let out = kvcli_at(&addr, &["put", "across", "processes"]);
    assert_eq!(out.code(), Some(0), "{out:?}; log:\n{}", frontend.log());
    let out = kvcli_at(&addr, &["get", "across"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, b"processes", "{out:?}");

    let out = kvcli_at(&addr, &["size"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let table = out.text();
    let per_node: u64 = backends
        .iter()
        .map(|b| number::<u64>(row(&table, b)[1]))
        .sum();
    assert_eq!(per_node, 1, "{out:?}");
    assert_eq!(number::<u64>(row(&table, "total")[1]), 1, "{out:?}");

    for server in [&mut frontend, &mut first, &mut second] {
        let status = server.terminate();
        assert!(status.success(), "{status}; log:\n{}", server.log());
    }
}

#[test]
fn kvcli_test_fails_with_exit_2_when_a_backend_is_down() {
    let mut first = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
    let mut second = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
    let backends = [first.listening("backend"), second.listening("backend")];
    let frontend = Server::start(&[
        "frontend",
        "--listen",
        "127.0.0.1:0",
        "--io-timeout",
        "2",
        // One copy per key, so that the keys of the backend that stops have none left.
        "--replicas",
        "1",
        &backends[0],
        &backends[1],
    ]);
    let addr = frontend.listening("frontend");
    assert_eq!(kvcli_at(&addr, &["test", "--count", "200"]).code(), Some(0));

    let status = second.terminate();
    assert!(status.success(), "{status}");
    let out = kvcli_at(&addr, &["test", "--count", "200", "--seed", "3"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    let text = out.text();
    // Keys whose PUT failed and whose GET then finds nothing count as mismatches, so only the
    // errors can be counted on.
    let errors = text
        .lines()
        .find_map(|line| line.strip_prefix("FAIL: "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|part| part.strip_suffix(" errors"))
        .unwrap_or_else(|| panic!("no FAIL line: {out:?}"));
    assert!(number::<u64>(errors) > 0, "{out:?}");
    // Named as unreachable, or (once the keeper has marked it down) as the keys' owner.
    assert!(
        text.contains(&format!("{} is unavailable", backends[1]))
            || text.contains(&format!("is down (view epoch 2, owner {})", backends[1])),
        "the dead backend is not named: {out:?}"
    );
    // The table still shows the live node and says which one did not answer.
    assert!(row(&text, &backends[0]).len() > 2, "{out:?}");
    assert!(
        row(&text, &backends[1])[1].starts_with("UNAVAILABLE"),
        "{out:?}"
    );
    let status = first.terminate();
    assert!(status.success(), "{status}");
}

/// The relay histogram `kvcli stats` prints: (relays, requests) summed over the nodes.
fn relay_histogram(stats: &str) -> Vec<(u32, u64)> {
    let section = stats
        .split("\n\n")
        .find(|s| s.starts_with("requests served, by relays taken:"))
        .unwrap_or_else(|| panic!("no relay histogram:\n{stats}"));
    let mut lines = section.lines().skip(1);
    let header: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|h| h.trim_end_matches('+').parse().unwrap())
        .collect();
    let total = lines
        .find(|l| l.starts_with("total "))
        .unwrap_or_else(|| panic!("no total row:\n{section}"));
    let counts = total.split_whitespace().skip(1).map(number);
    header.into_iter().zip(counts).collect()
}

#[test]
fn the_paper_design_relays_and_stats_and_ring_show_it() {
    let server = Server::start(&[
        "local",
        "--backends",
        "4",
        "--listen",
        "127.0.0.1:0",
        "--paper",
    ]);
    let frontend = server.listening("frontend");
    server.listening("resp");
    let out = kvcli_at(&frontend, &["test", "--count", "2000", "--seed", "3"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let max_line = out
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("relays per request: mean ")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("{out:?}"));
    let max: u32 = max_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((1..=3).contains(&max), "{out:?}");

    let stats = kvcli_at(&frontend, &["stats"]);
    assert_eq!(stats.code(), Some(0), "{stats:?}");
    let histogram = relay_histogram(&stats.text());
    let served: u64 = histogram.iter().map(|(_, n)| n).sum();
    assert_eq!(served, 4000, "{stats:?}");
    assert!(
        histogram.iter().all(|&(relays, _)| relays <= 3),
        "{stats:?}"
    );
    assert!(
        histogram.iter().any(|&(relays, n)| relays == max && n > 0),
        "{stats:?}"
    );
    assert!(
        stats.text().contains("relays per served request: mean "),
        "{stats:?}"
    );

    let ring = kvcli_at(&frontend, &["ring"]);
    assert_eq!(ring.code(), Some(0), "{ring:?}");
    let text = ring.text();
    assert!(
        text.starts_with(
            "view epoch 1: 4 nodes (0 down, 0 syncing), 1 replicas, 1 hashed position per node, successor routing"
        ),
        "{ring:?}"
    );
    let shares: f64 = text
        .lines()
        .skip(2)
        .take(4)
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .strip_suffix('%')?
                .parse::<f64>()
                .ok()
        })
        .sum();
    assert!((shares - 100.0).abs() < 0.1, "{ring:?}");
}

#[test]
fn kvcli_ring_shows_equal_partitions_by_default() {
    let (_server, frontend, backends) = local_cluster();
    let out = kvcli_at(&frontend, &["ring"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let text = out.text();
    assert!(
        text.starts_with(
            "view epoch 1: 3 nodes (0 down, 0 syncing), 3 replicas, 4096 equal partitions, direct routing"
        ),
        "{out:?}"
    );
    for backend in &backends {
        let columns = row(&text, backend);
        assert_eq!(columns[1], "up", "{out:?}");
        assert_eq!(columns[2], "0", "up since the first view: {out:?}");
        let share: f64 = columns[3].trim_end_matches('%').parse().unwrap();
        assert!((share - 100.0 / 3.0).abs() < 0.05, "{out:?}");
        let count = number::<u64>(columns[4]);
        assert!(count == 1365 || count == 1366, "{out:?}");
        assert_eq!(columns[5], "partitions", "{out:?}");
    }
    assert!(text.contains("largest share / mean: 1.000"), "{out:?}");
    // Every chain holds all three backends, head first; the spans add up to the whole ring.
    let chains: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("chains (head first, tail last)"))
        .skip(1)
        .collect();
    assert!(!chains.is_empty() && chains.len() <= 6, "{out:?}");
    let mut spans = 0;
    let mut share = 0.0;
    for line in &chains {
        let words: Vec<&str> = line.split_whitespace().collect();
        spans += number::<u64>(words[0]);
        share += words[2].trim_end_matches('%').parse::<f64>().unwrap();
        let members: Vec<&str> = words[3..].iter().copied().filter(|w| *w != "->").collect();
        assert_eq!(members.len(), 3, "{line}");
        for backend in &backends {
            assert!(members.contains(&backend.as_str()), "{line}");
        }
    }
    assert_eq!(spans, 4096, "{out:?}");
    assert!((share - 100.0).abs() < 0.1, "{out:?}");
}

#[test]
fn size_and_stats_exit_2_when_a_backend_does_not_answer() {
    let cluster = common::process::TwoBackends::start();
    let [_first, second] = cluster.backends;
    let (backends, addr) = (cluster.backend_addrs, cluster.addr);
    let _frontend = cluster.frontend;
    for command in ["size", "stats"] {
        let out = kvcli_at(&addr, &[command]);
        assert_eq!(out.code(), Some(0), "{command}: {out:?}");
    }
    second.kill();
    for command in ["size", "stats"] {
        let out = kvcli_at(&addr, &[command]);
        assert_eq!(out.code(), Some(2), "{command}: {out:?}");
        // The table is still printed, with the missing node named on it and on stderr.
        assert!(out.text().contains(&backends[1]), "{command}: {out:?}");
        assert!(out.stderr.contains(&backends[1]), "{command}: {out:?}");
    }
}

/// `ringkv local` grown by a backend started by hand and shrunk again, as the README's tour
/// does it: `kvcli join` and `kvcli leave` with the token file `local` wrote, and without it.
#[test]
fn kvcli_join_and_leave_grow_and_shrink_a_local_cluster() {
    let dir = common::TempDir::new("cli", "join");
    let token = dir.path().join("cluster-token");
    let token = token.to_str().unwrap();
    let server = Server::start(&[
        "local",
        "--backends",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--cluster-token-file",
        token,
    ]);
    let frontend = server.listening("frontend");
    for i in 0..200 {
        let key = format!("grow-{i}");
        assert_eq!(kvcli_at(&frontend, &["put", &key, "v"]).code(), Some(0));
    }
    let newcomer = Server::start(&[
        "backend",
        "--listen",
        "127.0.0.1:0",
        "--cluster-token-file",
        token,
    ]);
    let addr = newcomer.listening("backend");
    // Without the token nobody may change the members.
    let refused = kvcli_at(&frontend, &["join", &addr]);
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("UNAUTHORIZED"), "{refused:?}");
    let joined = kvcli_at(&frontend, &["join", &addr, "--cluster-token-file", token]);
    assert_eq!(joined.code(), Some(0), "{joined:?}");
    assert!(joined.text().contains("is done"), "{}", joined.text());
    let ring = kvcli_at(&frontend, &["ring"]);
    assert!(ring.text().contains(&addr), "{}", ring.text());
    assert!(ring.text().contains("3 nodes"), "{}", ring.text());
    // The newcomer holds keys now, and every key still reads back.
    let mut c = ringkv::Client::connect(&addr).unwrap();
    let held = c.size().unwrap()[0].counter("keys") + c.size().unwrap()[0].counter("replica_keys");
    assert!(held > 0, "the newcomer holds nothing");
    for i in 0..200 {
        let got = kvcli_at(&frontend, &["get", &format!("grow-{i}")]);
        assert_eq!(got.code(), Some(0), "grow-{i}: {}", got.text());
    }
    // A second join of a member is refused with the reason.
    let again = kvcli_at(&frontend, &["join", &addr, "--cluster-token-file", token]);
    assert_eq!(again.code(), Some(2));
    assert!(again.stderr.contains("member already"), "{again:?}");
    let left = kvcli_with(
        &["--frontend", &frontend, "leave", &addr, "--no-wait"],
        b"",
        Some((
            "RINGKV_CLUSTER_TOKEN",
            &std::fs::read_to_string(token).unwrap(),
        )),
    );
    assert_eq!(left.code(), Some(0), "{}", left.text());
    assert!(left.text().contains("has begun"), "{}", left.text());
    common::retry(BOUND, "the leaver is out of the view", || {
        let ring = kvcli_at(&frontend, &["ring"]);
        (!ring.text().contains(&addr)).then_some(())
    });
    for i in 0..200 {
        let got = kvcli_at(&frontend, &["get", &format!("grow-{i}")]);
        assert_eq!(got.code(), Some(0), "grow-{i}: {}", got.text());
    }
}

#[test]
fn version_prints_the_name_and_version_of_either_binary() {
    let version = env!("CARGO_PKG_VERSION");
    for (program, name) in [(KVCLI, "kvcli"), (env!("CARGO_BIN_EXE_ringkv"), "ringkv")] {
        let out = run_bounded(Command::new(program).arg("--version"), b"", BOUND);
        assert_eq!(out.code(), Some(0), "{name}: {out:?}");
        assert_eq!(out.text(), format!("{name} {version}\n"), "{out:?}");
        assert!(out.stderr.is_empty(), "{name}: {out:?}");
    }
    // Only as the first argument: elsewhere it is an unknown flag.
    let out = kvcli(&["ping", "--version"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
}

#[test]
fn ping_exits_2_when_the_frontend_answers_but_no_backend_does() {
    let cluster = common::process::TwoBackends::start();
    let [first, second] = cluster.backends;
    let (backends, addr) = (cluster.backend_addrs, cluster.addr);
    let _frontend = cluster.frontend;
    let out = kvcli_at(&addr, &["ping"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");

    // One backend left: the cluster still answers, and the silent one is named.
    second.kill();
    let out = kvcli_at(&addr, &["ping"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.text().starts_with(&format!("PONG from {addr} in ")),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("1 of 2 backends did not answer") && out.stderr.contains(&backends[1]),
        "{out:?}"
    );

    first.kill();
    let out = kvcli_at(&addr, &["ping"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{addr} answers, but none of its 2 backend(s) does"
        )),
        "{out:?}"
    );
    for backend in &backends {
        assert!(out.stderr.contains(backend.as_str()), "{out:?}");
    }
}

#[test]
fn a_value_over_the_limits_gets_the_too_large_answer_not_a_broken_pipe() {
    let (_server, frontend, _) = local_cluster();
    let dir = common::TempDir::new("cli", "too-large");
    // Over the value limit (4 MiB) and within the frame limit (8 MiB): refused politely.
    // Over the frame limit too: the server answers and closes while kvcli is still writing.
    for (mib, limit) in [(5, "4194304"), (9, "8388608")] {
        let path = dir.path().join(format!("{mib}-MiB"));
        std::fs::write(&path, vec![b'v'; mib << 20]).unwrap();
        let out = kvcli_at(&frontend, &["put", "big", "--file", path.to_str().unwrap()]);
        assert_eq!(out.code(), Some(2), "{mib} MiB: {out:?}");
        assert!(
            out.stderr.starts_with("kvcli: TOO_LARGE: ") && out.stderr.contains(limit),
            "{mib} MiB: {out:?}"
        );
        assert!(out.elapsed < Duration::from_secs(5), "{mib} MiB: {out:?}");
        assert_eq!(kvcli_at(&frontend, &["get", "big"]).code(), Some(1));
    }
    // The frontend still serves.
    assert_eq!(kvcli_at(&frontend, &["put", "small", "v"]).code(), Some(0));
}

#[test]
fn a_port_that_is_not_ringkv_fails_fast_with_a_clear_message() {
    let greetings: [&[u8]; 4] = [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"-ERR unknown command\r\n",
        // Binary, and too short for a frame's header.
        b"\x00\x00\x00\x05hello",
    ];
    for greeting in greetings {
        for stays_open in [false, true] {
            for args in [
                &["ping"][..],
                &["get", "k"],
                &["put", "k", "v"],
                &["size"],
                &["top", "--once", "--interval", "0.1"],
            ] {
                // One connection only: a kvcli that tried again on a second one would wait for
                // an answer that never comes.
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let impostor = std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut stream, _) = listener.accept().unwrap();
                    let _ = stream.write_all(greeting);
                    if stays_open {
                        // Until kvcli hangs up.
                        let _ = stream.read_to_end(&mut Vec::new());
                    }
                });
                let what = format!(
                    "{:?}, open: {stays_open}, {args:?}",
                    String::from_utf8_lossy(greeting)
                );
                let out = kvcli_at(&addr, args);
                assert_eq!(out.code(), Some(2), "{what}: {out:?}");
                assert!(
                    out.stderr
                        .starts_with(&format!("kvcli: {addr} is not a ringkv server: ")),
                    "{what}: {out:?}"
                );
                assert!(out.elapsed < Duration::from_secs(2), "{what}: {out:?}");
                impostor.join().unwrap();
            }
        }
    }
}

#[test]
fn kvcli_scan_prints_every_key_or_those_matching() {
    let (_server, addr, _) = local_cluster();
    for i in 0..40 {
        let key = if i % 2 == 0 {
            format!("user:{i}")
        } else {
            format!("item:{i}")
        };
        assert_eq!(kvcli_at(&addr, &["put", &key, "v"]).code(), Some(0));
    }
    let all = kvcli_at(&addr, &["scan", "--count", "3"]);
    assert_eq!(all.code(), Some(0), "{all:?}");
    let mut keys: Vec<String> = all.text().lines().map(str::to_string).collect();
    keys.sort();
    let mut expected: Vec<String> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                format!("user:{i}")
            } else {
                format!("item:{i}")
            }
        })
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    let users = kvcli_at(&addr, &["scan", "--match", "user:*"]);
    assert_eq!(users.code(), Some(0), "{users:?}");
    assert_eq!(users.text().lines().count(), 20);
    assert!(users.text().lines().all(|k| k.starts_with("user:")));
    assert_eq!(kvcli_at(&addr, &["scan", "--match", "none*"]).text(), "");
}

#[test]
fn kvcli_puts_with_a_ttl_and_reads_sets_and_takes_away_times_to_live() {
    let (_server, addr, _) = local_cluster();
    let put = kvcli_at(&addr, &["put", "session", "token", "--ttl", "30"]);
    assert_eq!(
        (put.code(), put.text()),
        (Some(0), "OK\n".into()),
        "{put:?}"
    );
    let ttl = kvcli_at(&addr, &["ttl", "session"]);
    assert_eq!(ttl.code(), Some(0), "{ttl:?}");
    let left: f64 = number(ttl.text().trim().trim_end_matches(" s"));
    assert!(left > 25.0 && left <= 30.0, "{ttl:?}");
    assert_eq!(kvcli_at(&addr, &["persist", "session"]).code(), Some(0));
    assert_eq!(
        kvcli_at(&addr, &["ttl", "session"]).text(),
        "never expires\n"
    );
    let again = kvcli_at(&addr, &["persist", "session"]);
    assert_eq!(again.code(), Some(1), "{again:?}");
    assert!(again.stderr.contains("has no time to live"), "{again:?}");
    assert_eq!(
        kvcli_at(&addr, &["expire", "session", "0.2"]).code(),
        Some(0)
    );
    common::retry(BOUND, "the key expires", || {
        (kvcli_at(&addr, &["get", "session"]).code() == Some(1)).then_some(())
    });
    let gone = kvcli_at(&addr, &["ttl", "session"]);
    assert_eq!(gone.code(), Some(1), "{gone:?}");
    assert!(gone.stderr.contains("not found"), "{gone:?}");
    assert_eq!(kvcli_at(&addr, &["expire", "absent", "10"]).code(), Some(1));
    for bad in [
        &["put", "k", "v", "--ttl", "0"][..],
        &["put", "k", "v", "--ttl", "-1"],
    ] {
        let refused = kvcli_at(&addr, bad);
        assert_eq!(refused.code(), Some(2), "{refused:?}");
    }
    assert_eq!(
        kvcli_at(&addr, &["get", "k"]).code(),
        Some(1),
        "nothing was stored"
    );
}
