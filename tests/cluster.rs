//! Whole clusters on loopback, driven through real sockets: the paper's test at the sizes where
//! the original crashed, round-trips of awkward keys and values, the relay bounds of each entry
//! policy and routing mode, the STATS counters, a backend that dies, one that restarts empty,
//! and a frontend that starts before its backend.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{client, cluster, retry, split_total, sum};
use ringkv::cli::{paper_data, render_paper_test, run_paper_test, PaperTest};
use ringkv::protocol::payload::encode_reports;
use ringkv::protocol::Opcode;
use ringkv::protocol::Status;
use ringkv::ring::DEFAULT_PLACEMENT;
use ringkv::{
    Backend, BackendConfig, ClientOptions, Entry, Error, Frontend, FrontendConfig, Placement,
    Request, Ring, Routing,
};

/// Runs the paper's test with `count` keys against a fresh cluster of `n` backends (random entry,
/// successor routing: the paper's setup) and checks everything it reports.
fn paper_test(n: usize, count: usize, seed: u64) {
    let cluster = cluster(n, Entry::Random, Routing::Successor);
    let test = PaperTest {
        count,
        threads: 4,
        batch: 200,
        seed,
    };
    let addr = cluster.frontend_addr().to_string();
    let outcome = run_paper_test(&addr, &test, ClientOptions::default()).unwrap();
    assert!(
        outcome.passed(),
        "{} mismatches, {} errors: {:?}",
        outcome.mismatches,
        outcome.errors,
        outcome.problems
    );
    assert_eq!(outcome.count, count);
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    // Successor routing from a random entry: at most N-1 relays, and over this many keys the
    // farthest entry (1 in N requests) certainly occurs.
    assert_eq!(usize::from(outcome.relays_max), n - 1);

    let (nodes, total) = split_total(&outcome.reports);
    assert_eq!(nodes.len(), n);
    let expected_bytes: u64 = paper_data(count, seed)
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    for (report, addr) in nodes.iter().zip(cluster.backend_addrs()) {
        assert_eq!(report.status, Status::OK, "{report:?}");
        assert_eq!(report.addr, addr);
    }
    assert_eq!(sum(nodes, "keys"), count as u64);
    assert_eq!(sum(nodes, "bytes"), expected_bytes);
    assert_eq!(total.status, Status::OK);
    assert!(total.message.is_empty(), "{}", total.message);
    assert_eq!(total.counter("keys"), count as u64);
    assert_eq!(total.counter("bytes"), expected_bytes);
}

#[test]
fn paper_test_10_000_keys_on_3_backends() {
    paper_test(3, 10_000, 1);
}

#[test]
fn paper_test_100_000_keys_on_3_backends() {
    paper_test(3, 100_000, 2);
}

#[test]
fn paper_test_10_000_keys_on_5_backends() {
    paper_test(5, 10_000, 3);
}

#[test]
fn put_get_delete_overwrite_and_awkward_values() {
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let mut c = client(cluster.frontend_addr());

    assert_eq!(c.get(b"absent").unwrap(), None);
    assert!(!c.delete(b"absent").unwrap());

    c.put(b"k", b"first").unwrap();
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"first"[..]));
    c.put(b"k", b"second, longer than the first").unwrap();
    assert_eq!(
        c.get(b"k").unwrap().as_deref(),
        Some(&b"second, longer than the first"[..])
    );
    assert!(c.delete(b"k").unwrap());
    assert_eq!(c.get(b"k").unwrap(), None);
    assert!(!c.delete(b"k").unwrap());

    // Every byte value, in keys and in values.
    let all: Vec<u8> = (0..=255u8).collect();
    c.put(&all, &all).unwrap();
    assert_eq!(c.get(&all).unwrap(), Some(all.clone()));
    for b in 0..=255u8 {
        c.put(&[b], &[b, 0, b]).unwrap();
    }
    for b in 0..=255u8 {
        assert_eq!(c.get(&[b]).unwrap(), Some(vec![b, 0, b]), "key {b}");
    }

    // An empty value is a value, not an absence.
    c.put(b"empty", b"").unwrap();
    assert_eq!(c.get(b"empty").unwrap(), Some(Vec::new()));

    // 1 MiB, and exactly the default value limit (4 MiB).
    for len in [1 << 20, ringkv::protocol::Limits::default().max_value] {
        let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let key = format!("big-{len}");
        c.put(key.as_bytes(), &value).unwrap();
        let back = c.get(key.as_bytes()).unwrap().unwrap();
        assert_eq!(back.len(), len);
        assert!(back == value, "the {len}-byte value came back changed");
        assert!(c.delete(key.as_bytes()).unwrap());
        assert_eq!(c.get(key.as_bytes()).unwrap(), None);
    }

    // One byte over the value limit is refused and stores nothing.
    let over = vec![7u8; ringkv::protocol::Limits::default().max_value + 1];
    match c.put(b"over", &over) {
        Err(Error::Status { status, .. }) => assert_eq!(status, Status::TOO_LARGE),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert_eq!(c.get(b"over").unwrap(), None);

    // SIZE agrees with what is stored: 1 + 256 + 1 keys.
    let reports = c.size().unwrap();
    let (nodes, total) = split_total(&reports);
    assert_eq!(sum(nodes, "keys"), 258);
    assert_eq!(total.counter("keys"), 258);
    let bytes = 512 + 256 * 4 + 5;
    assert_eq!(total.counter("bytes"), bytes);
}

/// Puts and gets `keys` keys through a pipeline and one by one; returns the largest relay count
/// seen after checking every value and every relay count against `bound`.
fn round_trip_with_bound(cluster: &ringkv::LocalCluster, keys: usize, bound: u16) -> u16 {
    let mut c = client(cluster.frontend_addr());
    let data: Vec<(Vec<u8>, Vec<u8>)> = (0..keys)
        .map(|i| {
            (
                format!("key-{i}").into_bytes(),
                format!("value-{i}").into_bytes(),
            )
        })
        .collect();
    let puts: Vec<Request> = data
        .iter()
        .map(|(k, v)| Request::Put {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    let gets: Vec<Request> = data
        .iter()
        .map(|(k, _)| Request::Get { key: k.clone() })
        .collect();
    let mut most = 0;
    for reply in c.pipeline(&puts).unwrap() {
        assert_eq!(reply.status, Status::OK, "{reply:?}");
        assert!(reply.hops <= bound, "{} relays over {bound}", reply.hops);
        most = most.max(reply.hops);
    }
    for ((_, value), reply) in data.iter().zip(c.pipeline(&gets).unwrap()) {
        assert_eq!(reply.status, Status::OK, "{reply:?}");
        assert_eq!(&reply.value, value);
        assert!(reply.hops <= bound, "{} relays over {bound}", reply.hops);
        most = most.max(reply.hops);
    }
    // The same through single calls and last_hops.
    for (key, value) in data.iter().take(50) {
        assert_eq!(c.get(key).unwrap().as_ref(), Some(value));
        assert!(c.last_hops() <= bound);
        most = most.max(c.last_hops());
        c.put(key, value).unwrap();
        assert!(c.last_hops() <= bound);
        most = most.max(c.last_hops());
    }
    most
}

#[test]
fn single_calls_report_their_relays() {
    const N: usize = 4;
    let owner = cluster(N, Entry::Owner, Routing::Direct);
    assert_eq!(round_trip_with_bound(&owner, 400, 0), 0);
    drop(owner);
    // Random entry: the entry is the owner 1 time in N, so over 800 requests every relay count
    // up to the bound occurs.
    let paper = ringkv::LocalCluster::start(
        N,
        BackendConfig::default(),
        FrontendConfig {
            threads: 4,
            ..FrontendConfig::default().paper()
        },
    )
    .unwrap();
    assert_eq!(
        round_trip_with_bound(&paper, 400, N as u16 - 1),
        N as u16 - 1
    );
}

/// Relays every reply took, after checking it is OK and (for GETs) carries `value`.
fn checked_relays(replies: Vec<ringkv::Reply>, values: &[Vec<u8>], gets: bool) -> Vec<u16> {
    assert_eq!(replies.len(), values.len());
    replies
        .into_iter()
        .zip(values)
        .map(|(reply, value)| {
            assert_eq!(reply.status, Status::OK, "{reply:?}");
            if gets {
                assert_eq!(&reply.value, value);
            }
            reply.hops
        })
        .collect()
}

#[test]
fn a_hundred_thousand_keys_come_back_in_every_routing_mode_within_its_relay_bound() {
    const N: usize = 8;
    const KEYS: usize = 100_000;
    let log2_n = (N as f64).log2();
    // (entry, routing, placement, largest relay count allowed, mean allowed)
    let modes = [
        (Entry::Owner, Routing::Direct, DEFAULT_PLACEMENT, 0, 0.0),
        (Entry::Random, Routing::Direct, DEFAULT_PLACEMENT, 1, 1.0),
        (
            Entry::Random,
            Routing::Finger,
            DEFAULT_PLACEMENT,
            N - 1,
            0.5 * log2_n + 0.5,
        ),
        (
            Entry::Random,
            Routing::Finger,
            Placement::Hashed { per_node: 1 },
            N - 1,
            0.5 * log2_n + 0.5,
        ),
        // The paper: about N/2 on average (0 to N-1 relays from a random entry).
        (
            Entry::Random,
            Routing::Successor,
            Placement::Hashed { per_node: 1 },
            N - 1,
            N as f64 / 2.0 + 0.5,
        ),
    ];
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| format!("k{i:06}").into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("v{}", i * 7).into_bytes())
        .collect();
    std::thread::scope(|scope| {
        for (entry, routing, placement, most, mean) in modes {
            let (keys, values) = (&keys, &values);
            scope.spawn(move || {
                let cluster = ringkv::LocalCluster::start(
                    N,
                    BackendConfig::default(),
                    FrontendConfig {
                        entry,
                        routing,
                        placement,
                        threads: 4,
                        startup_timeout: common::BOUND,
                        ..FrontendConfig::default()
                    },
                )
                .unwrap();
                let mut c = client(cluster.frontend_addr());
                let mut relays = Vec::with_capacity(2 * KEYS);
                for (k, v) in keys.chunks(2000).zip(values.chunks(2000)) {
                    let puts: Vec<Request> = k
                        .iter()
                        .zip(v)
                        .map(|(key, value)| Request::Put {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect();
                    relays.extend(checked_relays(c.pipeline(&puts).unwrap(), v, false));
                }
                for (k, v) in keys.chunks(2000).zip(values.chunks(2000)) {
                    let gets: Vec<Request> = k
                        .iter()
                        .map(|key| Request::Get { key: key.clone() })
                        .collect();
                    relays.extend(checked_relays(c.pipeline(&gets).unwrap(), v, true));
                }
                let label = format!("{entry} entry, {routing} routing, {placement}");
                let max = *relays.iter().max().unwrap() as usize;
                let avg = relays.iter().map(|&r| f64::from(r)).sum::<f64>() / relays.len() as f64;
                assert!(max <= most, "{label}: {max} relays, bound {most}");
                assert!(avg <= mean, "{label}: mean {avg:.3} relays, bound {mean}");
                if entry == Entry::Random && routing != Routing::Direct {
                    // A random entry must actually relay; 0 everywhere would mean no routing.
                    assert!(max >= 2, "{label}: at most {max} relays");
                }
                let total = c.size().unwrap().pop().unwrap();
                assert_eq!(total.counter("keys"), KEYS as u64, "{label}");
            });
        }
    });
}

#[test]
fn stats_counters_follow_the_requests() {
    let cluster = cluster(3, Entry::Random, Routing::Successor);
    let mut c = client(cluster.frontend_addr());
    const PUTS: usize = 600;
    const GETS: usize = 700; // 100 of them for keys never stored
    const DELETES: usize = 150;
    let mut requests: Vec<Request> = (0..PUTS)
        .map(|i| Request::Put {
            key: format!("s{i}").into_bytes(),
            value: vec![b'v'; i % 50],
        })
        .collect();
    requests.extend((0..GETS).map(|i| Request::Get {
        key: format!("s{i}").into_bytes(),
    }));
    requests.extend((0..DELETES).map(|i| Request::Delete {
        key: format!("s{i}").into_bytes(),
    }));
    let replies = c.pipeline(&requests).unwrap();
    let observed_hops: u64 = replies.iter().map(|r| u64::from(r.hops)).sum();
    let not_found = replies
        .iter()
        .filter(|r| r.status == Status::NOT_FOUND)
        .count();
    assert!(replies.iter().all(|r| r.status.is_success()));
    assert_eq!(not_found, GETS - PUTS);

    let reports = c.stats().unwrap();
    let (nodes, total) = split_total(&reports);
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|r| r.status == Status::OK));
    assert_eq!(sum(nodes, "puts"), PUTS as u64);
    assert_eq!(sum(nodes, "gets"), GETS as u64);
    assert_eq!(sum(nodes, "deletes"), DELETES as u64);
    assert_eq!(sum(nodes, "served"), (PUTS + GETS + DELETES) as u64);
    assert_eq!(sum(nodes, "keys"), (PUTS - DELETES) as u64);
    // Every relay is counted once where it leaves and once (as a hop) where it is served, and
    // the answers carry the same count back.
    let relayed = sum(nodes, "relayed");
    assert!(relayed > 0, "random entry over 3 nodes never relayed");
    assert_eq!(relayed, sum(nodes, "hops"));
    assert_eq!(relayed, observed_hops);
    // NOT_FOUND is a success; nothing failed.
    assert_eq!(sum(nodes, "errors"), 0);
    for name in [
        "puts", "gets", "deletes", "served", "relayed", "keys", "bytes",
    ] {
        assert_eq!(total.counter(name), sum(nodes, name), "{name}");
    }

    // Counters only move forward, by exactly what was asked.
    c.put(b"one more", b"x").unwrap();
    let after = c.stats().unwrap();
    let (after_nodes, _) = split_total(&after);
    assert_eq!(sum(after_nodes, "puts"), PUTS as u64 + 1);
    assert_eq!(
        sum(after_nodes, "served"),
        (PUTS + GETS + DELETES) as u64 + 1
    );
}

/// Which backend index owns each of many keys, by the cluster's own ring.
fn keys_by_owner(cluster: &ringkv::LocalCluster, per_node: usize) -> Vec<Vec<Vec<u8>>> {
    let ring = Ring::new(cluster.frontend().view().clone()).unwrap();
    let mut owned = vec![Vec::new(); ring.len()];
    let mut i = 0;
    while owned
        .iter()
        .any(|keys: &Vec<Vec<u8>>| keys.len() < per_node)
    {
        let key = format!("owned-{i}").into_bytes();
        let owner = ring.owner_of_key(&key);
        if owned[owner].len() < per_node {
            owned[owner].push(key);
        }
        i += 1;
        assert!(i < 1_000_000, "a node owns almost nothing");
    }
    owned
}

fn expect_unavailable(result: ringkv::Result<Option<Vec<u8>>>, dead: &str) {
    match result {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::UNAVAILABLE, "{message}");
            assert!(
                message.contains(dead),
                "the message {message:?} does not name the dead backend {dead}"
            );
        }
        other => panic!("expected UNAVAILABLE naming {dead}, got {other:?}"),
    }
}

#[test]
fn a_dead_backend_is_reported_quickly_and_the_rest_keeps_working() {
    let mut cluster = cluster(3, Entry::Owner, Routing::Successor);
    let owned = keys_by_owner(&cluster, 20);
    let mut c = client(cluster.frontend_addr());
    for keys in &owned {
        for key in keys {
            c.put(key, key).unwrap();
        }
    }
    const DEAD: usize = 1;
    let dead = cluster.backend_addrs()[DEAD].clone();
    cluster.kill_backend(DEAD);

    for key in &owned[DEAD] {
        let started = Instant::now();
        expect_unavailable(c.get(key), &dead);
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }
    // Owner entry reaches the live nodes directly.
    for (index, keys) in owned.iter().enumerate().filter(|(i, _)| *i != DEAD) {
        for key in keys {
            assert_eq!(c.get(key).unwrap().as_ref(), Some(key), "node {index}");
        }
    }
    let started = Instant::now();
    let reports = c.size().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let (nodes, total) = split_total(&reports);
    for (index, report) in nodes.iter().enumerate() {
        if index == DEAD {
            assert_ne!(report.status, Status::OK, "{report:?}");
            assert_eq!(report.addr, dead);
        } else {
            assert_eq!(report.status, Status::OK, "{report:?}");
            assert_eq!(report.counter("keys"), 20);
        }
    }
    assert_eq!(total.counter("keys"), 40);
    assert!(!total.message.is_empty());

    // Other clients, old and new, are still served.
    let mut other = client(cluster.frontend_addr());
    other.ping().unwrap();
    let live = &owned[(DEAD + 1) % 3][0];
    assert_eq!(other.get(live).unwrap().as_ref(), Some(live));
    other.put(live, b"changed").unwrap();
    assert_eq!(c.get(live).unwrap().as_deref(), Some(&b"changed"[..]));
    expect_unavailable(other.get(&owned[DEAD][0]), &dead);
}

#[test]
fn a_dead_backend_on_the_relay_path_is_named() {
    // Random entry and successor routing: a key of the dead node fails whether the entry is the
    // dead node itself or a live node whose relays end at it.
    let mut cluster = cluster(3, Entry::Random, Routing::Successor);
    let owned = keys_by_owner(&cluster, 30);
    const DEAD: usize = 2;
    let dead = cluster.backend_addrs()[DEAD].clone();
    cluster.kill_backend(DEAD);
    let mut c = client(cluster.frontend_addr());
    let started = Instant::now();
    for key in &owned[DEAD] {
        expect_unavailable(c.get(key), &dead);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "30 failures took {elapsed:?}"
    );
    // Keys of live nodes either work or fail naming the dead node (when the random entry's
    // relay path crosses it); nothing else.
    let mut worked = 0;
    for keys in owned.iter().take(DEAD) {
        for key in keys {
            match c.put(key, b"v") {
                Ok(()) => worked += 1,
                Err(e) => expect_unavailable(Err(e), &dead),
            }
        }
    }
    assert!(worked > 0);
    c.ping().unwrap();
}

/// Binds `addr` for a new backend, retrying while the port is still held (bounded).
fn start_backend_at(addr: SocketAddr) -> Backend {
    retry(Duration::from_secs(5), "rebinding the backend port", || {
        Backend::start(BackendConfig {
            listen: addr.to_string(),
            ..BackendConfig::default()
        })
        .ok()
    })
}

#[test]
fn a_backend_restarted_empty_gets_the_view_again() {
    let mut backend = Backend::start(BackendConfig::default()).unwrap();
    let addr = backend.local_addr();
    let frontend = Frontend::start(FrontendConfig {
        backends: vec![addr.to_string()],
        threads: 2,
        startup_timeout: Duration::from_secs(5),
        // No keeper, which would give the restarted backend the view by itself: this test is
        // about the frontend doing it when a request meets NO_VIEW.
        keeper: None,
        ..FrontendConfig::default()
    })
    .unwrap();
    assert_eq!(backend.epoch(), Some(1));
    let mut c = client(frontend.local_addr());
    c.put(b"before", b"1").unwrap();

    backend.shutdown();
    drop(backend);
    let restarted = start_backend_at(addr);
    assert_eq!(restarted.epoch(), None);
    // Asked directly before it has a view, it names itself by the address it listens on.
    let reports = client(addr).size().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].addr, addr.to_string());
    assert_eq!(reports[0].counter("keys"), 0);

    // The frontend's pooled connection is dead and the new backend has no view: the PUT still
    // succeeds, because the frontend reconnects and reinstalls the view on NO_VIEW.
    c.put(b"after", b"2").unwrap();
    assert_eq!(restarted.epoch(), Some(1));
    assert_eq!(c.get(b"after").unwrap().as_deref(), Some(&b"2"[..]));
    // It restarted empty.
    assert_eq!(c.get(b"before").unwrap(), None);
}

#[test]
fn a_frontend_started_before_its_backend_waits_for_it() {
    // Reserve a free port for the backend; until the backend starts, a stand-in listener there
    // shows when the frontend is trying to reach it.
    let stand_in = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = stand_in.local_addr().unwrap();
    const STARTUP: Duration = Duration::from_secs(8);

    let starting = std::thread::spawn(move || {
        let started = Instant::now();
        let frontend = Frontend::start(FrontendConfig {
            backends: vec![backend_addr.to_string()],
            threads: 2,
            startup_timeout: STARTUP,
            ..FrontendConfig::default()
        });
        (frontend, started.elapsed())
    });
    // The frontend asks the backend for its view before anything else; its first attempt
    // reaches the stand-in, which hangs up: from then on it is waiting.
    let waited_from = Instant::now();
    let (first_try, _) = stand_in.accept().unwrap();
    drop(first_try);
    drop(stand_in);
    assert!(
        !starting.is_finished(),
        "Frontend::start returned although its backend is not up"
    );

    let backend = start_backend_at(backend_addr);
    let (frontend, took) = starting.join().unwrap();
    let frontend = frontend.unwrap();
    assert!(
        took < STARTUP,
        "start gave up after {took:?} instead of finding the backend"
    );
    assert!(waited_from.elapsed() < STARTUP);
    // The view was installed during start, not later on demand.
    assert_eq!(backend.epoch(), Some(1));
    let mut c = client(frontend.local_addr());
    c.put(b"late", b"but here").unwrap();
    assert_eq!(c.get(b"late").unwrap().as_deref(), Some(&b"but here"[..]));
}

/// A stand-in for a frontend that stores nothing and answers every GET with the same wrong value:
/// what the paper's test must catch.
fn start_lying_frontend() -> SocketAddr {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some(request) = common::read_frame_buffered(&mut stream, &mut buf) {
                    let answer = match request.opcode {
                        Opcode::GET => request.reply(Status::OK, b"not what was stored".to_vec()),
                        Opcode::SIZE => request.reply(Status::OK, encode_reports(&[])),
                        _ => request.reply(Status::OK, Vec::new()),
                    };
                    if stream.write_all(&answer.encode()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn the_paper_test_fails_on_values_that_do_not_come_back() {
    let addr = start_lying_frontend().to_string();
    let test = PaperTest {
        count: 50,
        threads: 2,
        batch: 7,
        seed: 4,
    };
    let outcome = run_paper_test(&addr, &test, ClientOptions::default()).unwrap();
    assert_eq!((outcome.mismatches, outcome.errors), (50, 0));
    assert!(!outcome.passed());
    let printed = render_paper_test(&outcome);
    assert!(
        printed.contains("FAIL: 50 mismatches, 0 errors"),
        "{printed}"
    );
}

#[test]
fn a_following_frontend_needs_a_cluster_that_has_a_view() {
    let backend = Backend::start(BackendConfig::default()).unwrap();
    let refused = Frontend::start(FrontendConfig {
        backends: vec![backend.local_addr().to_string()],
        threads: 2,
        startup_timeout: Duration::from_secs(2),
        follow: true,
        ..FrontendConfig::default()
    });
    let Err(e) = refused else {
        panic!("a follower started over backends without a view");
    };
    assert!(e.to_string().contains("start the view keeper first"), "{e}");
    assert_eq!(backend.epoch(), None, "the follower installed a view");
}

/// With one copy per key (the paper's replication) a join and a leave still lose nothing: the
/// joiner copies each partition it takes from its only owner, and the leaver hands off each of
/// its own before it is taken out.
#[test]
fn a_join_and_a_leave_with_one_copy_per_key_keep_every_key() {
    let cluster = ringkv::LocalCluster::start(
        3,
        ringkv::BackendConfig::default(),
        ringkv::FrontendConfig {
            replicas: Some(1),
            ..ringkv::FrontendConfig::default()
        },
    )
    .unwrap();
    let addr = cluster.frontend_addr().to_string();
    let mut client = ringkv::Client::connect(&addr).unwrap();
    let keys: Vec<String> = (0..2000).map(|i| format!("single-{i}")).collect();
    for key in &keys {
        client.put(key.as_bytes(), key.as_bytes()).unwrap();
    }
    let joiner = ringkv::Backend::start(ringkv::BackendConfig::default()).unwrap();
    let joiner_addr = joiner.local_addr().to_string();
    let wait = |client: &mut ringkv::Client, change: &ringkv::Change, begun: u64| {
        common::retry(common::BOUND, "the change is done", || {
            let outcome = client.change_outcome(change, begun).unwrap()?;
            outcome.unwrap_or_else(|e| panic!("{change}: {e}"));
            Some(())
        })
    };
    let join = ringkv::Change::Join(joiner_addr.clone());
    let begun = client.join(&joiner_addr).unwrap();
    wait(&mut client, &join, begun);
    let mut direct = ringkv::Client::connect(&joiner_addr).unwrap();
    assert!(
        direct.size().unwrap()[0].counter("keys") > 2000 / 8,
        "the joiner took its share"
    );
    for key in &keys {
        assert_eq!(
            client.get(key.as_bytes()).unwrap().as_deref(),
            Some(key.as_bytes())
        );
    }
    let leaver = cluster.backend_addrs()[0].clone();
    let leave = ringkv::Change::Leave(leaver.clone());
    let begun = client.leave(&leaver).unwrap();
    wait(&mut client, &leave, begun);
    assert!(!client.view().unwrap().nodes.contains(&leaver));
    for key in &keys {
        assert_eq!(
            client.get(key.as_bytes()).unwrap().as_deref(),
            Some(key.as_bytes())
        );
    }
}

/// The paper's placement (one hashed point per node) has no owner table to move: joins are
/// refused with the reason, and nothing changes.
#[test]
fn the_papers_placement_refuses_joins_with_the_reason() {
    let paper = ringkv::LocalCluster::start(
        2,
        BackendConfig::default(),
        FrontendConfig::default().paper(),
    )
    .unwrap();
    let mut client = ringkv::Client::connect(&paper.frontend_addr().to_string()).unwrap();
    let before = client.view().unwrap();
    match client.join("127.0.0.1:1") {
        Err(ringkv::Error::Status { status, message }) => {
            assert_eq!(status, ringkv::protocol::Status::BAD_REQUEST);
            assert!(message.contains("partition placement"), "{message}");
        }
        other => panic!("a join under hashed placement: {other:?}"),
    }
    assert_eq!(client.view().unwrap(), before);
}
