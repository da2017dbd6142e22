//! The Prometheus endpoint (`--metrics-listen`): scraped over a plain socket, parsed with a
//! Prometheus text-format parser, and checked against the requests the test made; and the STATS
//! counters it mirrors, against PROTOCOL.md's table.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::process::Server;
use common::{client, retry, BOUND};
use prometheus_parse::{Sample, Scrape, Value};
use ringkv::protocol::Opcode;
use ringkv::{Backend, BackendConfig, Frontend, FrontendConfig, LocalCluster};

/// An HTTP answer: status code, Content-Type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET path` over a fresh connection, written and read by hand.
fn http_get(addr: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, BOUND).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.set_write_timeout(Some(BOUND)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringkv-test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("the answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// Scrapes `/metrics`, checks that it is the text format with a HELP and TYPE for every
/// family, and parses it.
fn scrape(addr: SocketAddr) -> Scrape {
    let answer = http_get(addr, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "content type {:?}",
        answer.content_type
    );
    for line in answer.body.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = series.strip_suffix(suffix)?;
                answer
                    .body
                    .contains(&format!("# TYPE {base} histogram\n"))
                    .then_some(base)
            })
            .unwrap_or(series);
        assert!(
            answer.body.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
        assert!(
            answer.body.contains(&format!("# TYPE {family} ")),
            "no TYPE for {family}"
        );
    }
    Scrape::parse(answer.body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The samples of `metric` whose labels include every one of `labels`.
fn samples<'a>(
    scrape: &'a Scrape,
    metric: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> {
    scrape.samples.iter().filter(move |s| {
        s.metric == metric
            && labels
                .iter()
                .all(|(name, value)| s.labels.get(name) == Some(*value))
    })
}

fn number(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", sample.metric),
    }
}

/// The sum of `metric` over the samples with `labels`.
fn total(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, metric, labels).map(number).sum()
}

/// The one sample of `metric` with `labels`.
fn one(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples(scrape, metric, labels).collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    number(found[0])
}

/// A part's latency histogram: its cumulative buckets (bound, count) and its `_count`.
fn histogram(scrape: &Scrape, labels: &[(&str, &str)]) -> (Vec<(f64, f64)>, f64) {
    let found: Vec<&Sample> = samples(scrape, "ringkv_request_duration_seconds", labels).collect();
    assert_eq!(found.len(), 1, "one histogram for {labels:?}");
    let Value::Histogram(buckets) = &found[0].value else {
        panic!("not a histogram: {:?}", found[0]);
    };
    let mut buckets: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = one(scrape, "ringkv_request_duration_seconds_count", labels);
    (buckets, count)
}

/// Checks a histogram's shape and returns its count of requests.
fn checked_histogram(scrape: &Scrape, labels: &[(&str, &str)]) -> f64 {
    let (buckets, count) = histogram(scrape, labels);
    assert_eq!(buckets.len(), 15, "14 bounds and +Inf: {buckets:?}");
    assert_eq!(buckets[0].0, 50e-6);
    assert_eq!(buckets[13].0, 1.0);
    assert!(buckets[14].0.is_infinite());
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets[14].1, count, "+Inf is the count");
    let sum = one(scrape, "ringkv_request_duration_seconds_sum", labels);
    assert!(count == 0.0 || sum > 0.0, "sum {sum} of {count} requests");
    count
}

/// The key requests a part answered, by its request counters.
fn key_requests(scrape: &Scrape, labels: &[(&str, &str)]) -> f64 {
    let keyed = [
        "PUT",
        "GET",
        "DELETE",
        "PUT_ONCE",
        "DELETE_ONCE",
        "CHAIN_PUT",
        "CHAIN_DELETE",
        "CHAIN_PUT_ONCE",
        "CHAIN_DELETE_ONCE",
    ];
    keyed
        .iter()
        .map(|opcode| {
            let mut labels = labels.to_vec();
            labels.push(("opcode", opcode));
            total(scrape, "ringkv_requests_total", &labels)
        })
        .sum()
}

fn put_get_delete(addr: SocketAddr, keys: usize, deleted: usize) {
    let mut c = client(addr);
    for i in 0..keys {
        c.put(format!("key-{i}").as_bytes(), b"value").unwrap();
    }
    for i in 0..keys {
        assert_eq!(
            c.get(format!("key-{i}").as_bytes()).unwrap().as_deref(),
            Some(&b"value"[..])
        );
    }
    for i in 0..5 {
        assert_eq!(c.get(format!("missing-{i}").as_bytes()).unwrap(), None);
    }
    for i in 0..deleted {
        assert!(c.delete(format!("key-{i}").as_bytes()).unwrap());
    }
}

#[test]
fn a_local_cluster_exports_what_each_part_served() {
    let cluster = LocalCluster::start(
        3,
        BackendConfig::default(),
        FrontendConfig {
            metrics_listen: Some("127.0.0.1:0".into()),
            threads: 4,
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let addr = cluster.metrics_addr().expect("a metrics endpoint");
    assert_ne!(addr.port(), 0);
    let (keys, deleted) = (20, 5);
    put_get_delete(cluster.frontend_addr(), keys, deleted);
    let scrape = scrape(addr);

    let frontend_addr = cluster.frontend_addr().to_string();
    let frontend = [("role", "frontend"), ("node", frontend_addr.as_str())];
    let count = |opcode: &str, status: &str| {
        let mut labels = frontend.to_vec();
        labels.extend([("opcode", opcode), ("status", status)]);
        total(&scrape, "ringkv_requests_total", &labels)
    };
    assert_eq!(count("PUT_ONCE", "OK"), keys as f64);
    assert_eq!(count("GET", "OK"), keys as f64);
    assert_eq!(count("GET", "NOT_FOUND"), 5.0);
    assert_eq!(count("DELETE_ONCE", "OK"), deleted as f64);
    let answered = checked_histogram(&scrape, &frontend);
    assert_eq!(answered, key_requests(&scrape, &frontend));
    assert_eq!(answered, (2 * keys + 5 + deleted) as f64);
    assert!(one(&scrape, "ringkv_view_epoch", &frontend) > 0.0);
    let mut up = frontend.to_vec();
    up.push(("state", "up"));
    assert_eq!(one(&scrape, "ringkv_view_backends", &up), 3.0);

    let backend_addrs = cluster.backend_addrs();
    let mut gets_ok = 0.0;
    for node in &backend_addrs {
        let backend = [("role", "backend"), ("node", node.as_str())];
        // Three copies of every key on three backends: each holds them all.
        assert_eq!(
            one(&scrape, "ringkv_stored_keys", &backend),
            (keys - deleted) as f64,
            "{node}"
        );
        assert!(one(&scrape, "ringkv_stored_bytes", &backend) > 0.0);
        assert!(one(&scrape, "ringkv_view_epoch", &backend) > 0.0);
        assert!(one(&scrape, "ringkv_open_connections", &backend) >= 1.0);
        assert!(one(&scrape, "ringkv_view_changes_total", &backend) >= 1.0);
        assert_eq!(one(&scrape, "ringkv_wal_damaged_records", &backend), 0.0);
        let answered = checked_histogram(&scrape, &backend);
        assert_eq!(answered, key_requests(&scrape, &backend), "{node}");
        let mut ok_gets = backend.to_vec();
        ok_gets.extend([("opcode", "GET"), ("status", "OK")]);
        gets_ok += total(&scrape, "ringkv_requests_total", &ok_gets);
    }
    // Each GET is answered by its chain's tail (again, if the frontend had to send it again).
    assert!(gets_ok >= keys as f64, "{gets_ok}");
    let chain = |name: &str| total(&scrape, name, &[("role", "backend")]);
    // Every write passes the head and the middle on, and the middle and tail apply it.
    let writes = (keys + deleted) as f64;
    assert!(chain("ringkv_chain_relayed_total") >= 2.0 * writes);
    assert!(chain("ringkv_chain_applied_total") >= 2.0 * writes);
    assert!(chain("ringkv_served_total") >= (2 * keys + 5 + deleted) as f64);

    // A stopped backend is no longer reported; the others still are.
    let mut cluster = cluster;
    cluster.kill_backend(0);
    let after = self::scrape(addr);
    let nodes: HashSet<&str> = samples(&after, "ringkv_view_epoch", &[("role", "backend")])
        .filter_map(|s| s.labels.get("node"))
        .collect();
    assert_eq!(
        nodes,
        backend_addrs[1..].iter().map(String::as_str).collect()
    );
    cluster.shutdown();
}

#[test]
fn stats_carry_latency_buckets_and_per_opcode_counts_matching_the_metrics() {
    let mut backend = Backend::start(BackendConfig {
        metrics_listen: Some("127.0.0.1:0".into()),
        ..BackendConfig::default()
    })
    .unwrap();
    let backend_addr = backend.local_addr().to_string();
    let mut frontend = Frontend::start(FrontendConfig {
        backends: vec![backend_addr.clone()],
        metrics_listen: Some("127.0.0.1:0".into()),
        replicas: Some(1),
        threads: 2,
        startup_timeout: Duration::from_secs(5),
        ..FrontendConfig::default()
    })
    .unwrap();
    put_get_delete(frontend.local_addr(), 10, 3);

    // Each server has an endpoint of its own, reporting itself only.
    let frontend_scrape = scrape(frontend.metrics_addr().unwrap());
    let roles: HashSet<&str> = frontend_scrape
        .samples
        .iter()
        .filter_map(|s| s.labels.get("role"))
        .collect();
    assert_eq!(roles, HashSet::from(["frontend"]));
    let backend_metrics = backend.metrics_addr().unwrap();
    let labels = [("role", "backend"), ("node", backend_addr.as_str())];
    let stats = {
        let mut direct = client(backend.local_addr());
        let mut reports = direct.stats().unwrap();
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    };
    let scraped = scrape(backend_metrics);
    assert_eq!(one(&scraped, "ringkv_stored_keys", &labels), 7.0);

    // The STATS latency buckets: every one listed, cumulative, the last one all key requests,
    // the same counts as the histogram's.
    let bounds = [
        "50", "100", "250", "500", "1000", "2500", "5000", "10000", "25000", "50000", "100000",
        "250000", "500000", "1000000", "inf",
    ];
    let names: Vec<String> = bounds
        .iter()
        .map(|b| format!("latency_us_le_{b}"))
        .collect();
    for name in &names {
        assert!(
            stats.counters.iter().any(|(n, _)| n == name),
            "STATS lists {name}"
        );
    }
    let cumulative: Vec<u64> = names.iter().map(|n| stats.counter(n)).collect();
    assert!(
        cumulative.windows(2).all(|w| w[0] <= w[1]),
        "{cumulative:?}"
    );
    let served = stats.counter("latency_us_le_inf");
    assert_eq!(
        served,
        10 + 10 + 5 + 3,
        "every key request the frontend sent"
    );
    let (buckets, count) = histogram(&scraped, &labels);
    assert_eq!(count, served as f64);
    let counts: Vec<u64> = buckets.iter().map(|(_, c)| *c as u64).collect();
    assert_eq!(counts, cumulative);

    // Per-opcode request counts, adding up to `requests` but for the STATS request being
    // answered (counted by opcode only once it has its answer).
    assert_eq!(stats.counter("requests_put_once"), 10);
    assert_eq!(stats.counter("requests_get"), 15);
    assert_eq!(stats.counter("requests_delete_once"), 3);
    let per_opcode: u64 = stats
        .counters
        .iter()
        .filter(|(n, _)| n.starts_with("requests_"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(per_opcode + 1, stats.counter("requests"));

    // Every STATS counter is exported: as ringkv_NAME_total or ringkv_NAME, or in a structured
    // form (sizes, relay and latency histograms, per-opcode requests).
    let families: HashSet<&str> = scraped.samples.iter().map(|s| s.metric.as_str()).collect();
    for (name, _) in &stats.counters {
        let structured = [
            "requests",
            "keys",
            "bytes",
            "replica_keys",
            "replica_bytes",
            "expiring_keys",
        ]
        .contains(&name.as_str())
            || ["relays_", "requests_", "latency_us_le_"]
                .iter()
                .any(|prefix| name.starts_with(prefix));
        assert!(
            structured
                || families.contains(format!("ringkv_{name}_total").as_str())
                || families.contains(format!("ringkv_{name}").as_str()),
            "STATS counter {name} has no metric"
        );
    }
    assert!(families.contains("ringkv_served_by_relays_total"));
    assert!(families.contains("ringkv_stored_expiring_keys"));

    // Stopping a server stops its endpoint.
    backend.shutdown();
    frontend.shutdown();
    retry(BOUND, "the stopped endpoint to refuse connections", || {
        TcpStream::connect_timeout(&backend_metrics, BOUND)
            .is_err()
            .then_some(())
    });
}

#[test]
fn only_metrics_is_served_and_idle_connections_do_not_block_scrapes() {
    let mut backend = Backend::start(BackendConfig {
        metrics_listen: Some("127.0.0.1:0".into()),
        ..BackendConfig::default()
    })
    .unwrap();
    let addr = backend.metrics_addr().unwrap();
    for path in ["/", "/metricsx", "/other", "/metrics/extra"] {
        assert_eq!(http_get(addr, path).status, 404, "{path}");
    }
    assert_eq!(http_get(addr, "/metrics?name[]=x").status, 200);

    let mut garbage = TcpStream::connect_timeout(&addr, BOUND).unwrap();
    garbage.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
    garbage.set_read_timeout(Some(BOUND)).unwrap();
    let mut answer = String::new();
    garbage.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");

    // A scraper that sends half a request and stalls holds one scrape thread, not the
    // endpoint: a whole request is still answered at once; and the stalled one is cut off
    // after the read timeout.
    let mut stalled = TcpStream::connect_timeout(&addr, BOUND).unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x")
        .unwrap();
    let scraped = scrape(addr);
    assert_eq!(
        one(&scraped, "ringkv_view_epoch", &[("role", "backend")]),
        0.0,
        "a backend without a view"
    );
    stalled.set_read_timeout(Some(BOUND)).unwrap();
    let mut rest = Vec::new();
    let cut = stalled.read_to_end(&mut rest);
    assert!(
        matches!(cut, Ok(0))
            || cut
                .as_ref()
                .is_err_and(|e| e.kind() != ErrorKind::WouldBlock),
        "the stalled connection was closed: {cut:?} {rest:?}"
    );
    backend.shutdown();
}

/// PROTOCOL.md's counter table (section 7.2) names every counter a backend's STATS lists.
#[test]
fn every_stats_counter_is_documented() {
    let doc = include_str!("../PROTOCOL.md");
    let table = doc
        .split("### 7.2 Counters")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("PROTOCOL.md has section 7.2");
    let mut documented = HashSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        for name in first.split('`').skip(1).step_by(2) {
            documented.insert(name.to_string());
        }
    }
    // The relay histogram's row names its first, last and open-ended buckets.
    let relays = |name: &str| {
        name.strip_prefix("relays_")
            .and_then(|h| h.parse::<u32>().ok())
            .is_some_and(|h| h <= 15)
    };
    // The per-opcode row gives the rule: `requests_` and the opcode's name in lower case.
    let per_opcode = |name: &str| {
        name.strip_prefix("requests_").is_some_and(|op| {
            op == "unknown"
                || Opcode::ALL
                    .iter()
                    .any(|o| o.name().map(str::to_ascii_lowercase).as_deref() == Some(op))
        })
    };
    assert!(documented.contains("requests_put") && documented.contains("latency_us_le_inf"));

    let backend = Backend::start(BackendConfig::default()).unwrap();
    let mut direct = client(backend.local_addr());
    direct.ping().unwrap();
    // A PUT without a view is refused, but counted: a per-opcode counter is listed.
    let _ = direct.put(b"k", b"v");
    let report = direct.stats().unwrap().remove(0);
    assert!(report.counter("requests_ping") >= 1);
    for (name, _) in &report.counters {
        assert!(
            documented.contains(name) || relays(name) || per_opcode(name),
            "STATS counter {name} is not in PROTOCOL.md's table (section 7.2)"
        );
    }
}

#[test]
fn local_as_a_process_exposes_the_frontend_and_every_backend() {
    let server = Server::start(&[
        "local",
        "--listen",
        "127.0.0.1:0",
        "--resp-listen",
        "off",
        "--backends",
        "3",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let frontend: SocketAddr = server.listening("frontend").parse().unwrap();
    let backends: Vec<String> = (0..3).map(|_| server.listening("backend")).collect();
    let metrics: SocketAddr = server.listening("metrics").parse().unwrap();
    put_get_delete(frontend, 6, 2);
    let scrape = scrape(metrics);
    let frontend_addr = frontend.to_string();
    let frontend_labels = [("role", "frontend"), ("node", frontend_addr.as_str())];
    let mut gets = frontend_labels.to_vec();
    gets.extend([("opcode", "GET"), ("status", "OK")]);
    assert!(total(&scrape, "ringkv_requests_total", &gets) >= 6.0);
    assert!(one(&scrape, "ringkv_view_epoch", &frontend_labels) > 0.0);
    for node in &backends {
        let labels = [("role", "backend"), ("node", node.as_str())];
        assert!(one(&scrape, "ringkv_view_epoch", &labels) > 0.0, "{node}");
        assert_eq!(one(&scrape, "ringkv_stored_keys", &labels), 4.0, "{node}");
        checked_histogram(&scrape, &labels);
    }
    let mut server = server;
    assert!(server.terminate().success(), "{}", server.log());
}

#[test]
fn the_redis_doors_connections_are_counted_apart() {
    let cluster = LocalCluster::start(
        1,
        BackendConfig::default(),
        FrontendConfig {
            metrics_listen: Some("127.0.0.1:0".into()),
            resp_listen: Some("127.0.0.1:0".into()),
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let door = cluster.resp_addr().expect("the Redis door is open");
    // Each answered PING shows its connection registered.
    let doors: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut conn = TcpStream::connect(door).unwrap();
            conn.set_read_timeout(Some(BOUND)).unwrap();
            conn.write_all(b"PING\r\n").unwrap();
            let mut pong = [0u8; 7];
            conn.read_exact(&mut pong).unwrap();
            assert_eq!(&pong, b"+PONG\r\n");
            conn
        })
        .collect();
    let frontend_addr = cluster.frontend_addr().to_string();
    let frontend = [("role", "frontend"), ("node", frontend_addr.as_str())];
    let scraped = scrape(cluster.metrics_addr().unwrap());
    assert_eq!(
        total(&scraped, "ringkv_resp_open_connections", &frontend),
        3.0
    );
    drop(doors);
    retry(
        BOUND,
        "the closed door connections are no longer counted",
        || {
            let scraped = scrape(cluster.metrics_addr().unwrap());
            (total(&scraped, "ringkv_resp_open_connections", &frontend) == 0.0).then_some(())
        },
    );
}
