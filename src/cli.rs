//! What the binaries share beyond flag parsing: the paper's built-in test and the tables that
//! `kvcli` prints.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientOptions, Request};
use crate::connection::Timeouts;
use crate::error::{Error, Result};
use crate::frontend::{Entry, FrontendConfig};
use crate::protocol::payload::NodeReport;
use crate::protocol::{Limits, Status};
use crate::ring::{
    position_hex, position_to_f64, NodeState, Placement, Position, Ring, Routing, View,
};
use crate::rng::Rng;
use crate::server::ServerOptions;

/// Parses the command line into `T` (see [`parse_words`]).
pub fn parse_args<T: argh::FromArgs>() -> T {
    parse_words(std::env::args().collect())
}

/// Parses `words` (the program name first) into `T`. `--help` prints and exits 0, and so does
/// `--version` as the first argument ([`version_request`]); a usage error prints the problem
/// and exits 2, so that the binaries keep 1 for "not found".
pub fn parse_words<T: argh::FromArgs>(words: Vec<String>) -> T {
    // argh has no version flag of its own.
    if let Some(version) = version_request(&words) {
        println!("{version}");
        std::process::exit(0);
    }
    let command = words.first().map_or("ringkv", String::as_str);
    let rest: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
    match T::from_args(&[command], &rest) {
        Ok(args) => args,
        Err(exit) => {
            if exit.status.is_ok() {
                print!("{}", exit.output);
                std::process::exit(0);
            }
            eprintln!("{}", exit.output.trim_end());
            eprintln!("Run {command} --help for usage.");
            std::process::exit(2);
        }
    }
}

/// What `PROGRAM --version` prints, `NAME VERSION` (`kvcli 0.1.0`), when `--version` is the first
/// argument after the program's name in `words`; `None` otherwise, and argh parses them.
pub fn version_request(words: &[String]) -> Option<String> {
    if words.get(1).map(String::as_str) != Some("--version") {
        return None;
    }
    let name = words
        .first()
        .and_then(|program| std::path::Path::new(program).file_stem())
        .and_then(|stem| stem.to_str())
        .unwrap_or("ringkv");
    Some(format!("{name} {}", env!("CARGO_PKG_VERSION")))
}

/// Where a client connects: the `--frontend` flag if given, else `$RINGKV_FRONTEND`, else the
/// address `ringkv local` listens on by default.
pub fn frontend_address(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("RINGKV_FRONTEND").ok())
        .unwrap_or_else(|| DEFAULT_FRONTEND.to_string())
}

/// The frontend address `ringkv frontend` and `ringkv local` listen on unless told otherwise.
pub const DEFAULT_FRONTEND: &str = "127.0.0.1:7000";

/// The entry policy, routing mode and placement from the servers' flags: each flag given wins;
/// the others come from the paper's design with `--paper`, else from ringkv's defaults (owner,
/// direct, 4096 partitions). `--vnodes` and `--partitions` exclude each other.
pub fn ring_design(
    paper: bool,
    entry: Option<Entry>,
    routing: Option<Routing>,
    vnodes: Option<u16>,
    partitions: Option<u32>,
) -> Result<(Entry, Routing, Placement)> {
    let base = if paper {
        FrontendConfig::default().paper()
    } else {
        FrontendConfig::default()
    };
    let placement = match (vnodes, partitions) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(
                "--vnodes and --partitions exclude each other".into(),
            ))
        }
        (Some(per_node), None) => Placement::Hashed { per_node },
        (None, Some(count)) => Placement::Partitions { count },
        (None, None) => base.placement,
    };
    Ok((
        entry.unwrap_or(base.entry),
        routing.unwrap_or(base.routing),
        placement,
    ))
}

/// The replication factor from `--replicas`: as given, else one copy with `--paper`, else the
/// default for the number of backends.
pub fn replicas(paper: bool, asked: Option<usize>) -> Result<Option<usize>> {
    match asked {
        Some(r) if r == 0 || r > crate::ring::MAX_REPLICAS => Err(Error::Config(format!(
            "--replicas must be from 1 to {}",
            crate::ring::MAX_REPLICAS
        ))),
        Some(r) => Ok(Some(r)),
        None if paper => Ok(Some(1)),
        None => Ok(None),
    }
}

/// The view keeper's settings from `--ping-interval` and `--ping-timeout` (milliseconds); an
/// interval of 0 runs no keeper.
pub fn keeper_options(
    interval_ms: u64,
    timeout_ms: u64,
) -> Result<Option<crate::cluster::keeper::KeeperOptions>> {
    if interval_ms == 0 {
        return Ok(None);
    }
    if timeout_ms == 0 {
        return Err(Error::Config("--ping-timeout must be at least 1".into()));
    }
    Ok(Some(crate::cluster::keeper::KeeperOptions {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
    }))
}

/// Server options from the flags both servers take.
pub fn server_options(
    max_connections: usize,
    max_key_bytes: usize,
    max_value_bytes: usize,
    io_timeout_secs: u64,
    idle_timeout_secs: u64,
) -> Result<ServerOptions> {
    if max_connections == 0 || io_timeout_secs == 0 || idle_timeout_secs == 0 {
        return Err(Error::Config(
            "connection limit and timeouts must be at least 1".into(),
        ));
    }
    let frame_room = crate::protocol::MIN_FRAME + max_key_bytes + max_value_bytes;
    if frame_room > u32::MAX as usize {
        return Err(Error::Config(
            "key plus value limits must stay under 4 GiB".into(),
        ));
    }
    Ok(ServerOptions {
        limits: Limits::new(max_key_bytes, max_value_bytes),
        timeouts: Timeouts {
            io: Duration::from_secs(io_timeout_secs),
            idle: Duration::from_secs(idle_timeout_secs),
            frame: Duration::from_secs(io_timeout_secs),
            ..Timeouts::default()
        },
        max_connections,
        ..ServerOptions::default()
    })
}

/// The paper's built-in test: unique random keys of 10-20 letters, values of 20-40 digits.
#[derive(Debug, Clone)]
pub struct PaperTest {
    /// Number of keys.
    pub count: usize,
    /// Client connections working in parallel.
    pub threads: usize,
    /// Requests sent per pipelined batch.
    pub batch: usize,
    /// Seed of the key and value generator.
    pub seed: u64,
}

/// What the paper's test saw.
#[derive(Debug, Clone, Default)]
pub struct PaperTestOutcome {
    pub count: usize,
    pub put_time: Duration,
    pub get_time: Duration,
    /// GETs that returned another value or none.
    pub mismatches: usize,
    /// Requests answered with an error status.
    pub errors: usize,
    /// The first few problems, for the report.
    pub problems: Vec<String>,
    /// Sum and maximum of the relays every request took.
    pub relays_total: u64,
    pub relays_max: u16,
    /// The cluster's SIZE answer after the test.
    pub reports: Vec<NodeReport>,
}

impl PaperTestOutcome {
    /// True when every value came back and no request failed.
    pub fn passed(&self) -> bool {
        self.mismatches == 0 && self.errors == 0
    }
}

const MAX_PROBLEMS: usize = 10;

/// Generates the test's keys and values: `count` distinct keys.
pub fn paper_data(count: usize, seed: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = Rng::seeded(seed);
    let mut seen = HashSet::with_capacity(count);
    let mut data = Vec::with_capacity(count);
    while data.len() < count {
        let key_len = rng.between(10, 20) as usize;
        let key: Vec<u8> = (0..key_len)
            .map(|_| {
                let letter = rng.below(52) as u8;
                if letter < 26 {
                    b'a' + letter
                } else {
                    b'A' + letter - 26
                }
            })
            .collect();
        if !seen.insert(key.clone()) {
            continue;
        }
        let value_len = rng.between(20, 40) as usize;
        let value = (0..value_len).map(|_| b'0' + rng.below(10) as u8).collect();
        data.push((key, value));
    }
    data
}

/// Runs the paper's test against the frontend at `addr`: PUT every key, then GET every key and
/// compare, then ask SIZE.
pub fn run_paper_test(
    addr: &str,
    test: &PaperTest,
    options: ClientOptions,
) -> Result<PaperTestOutcome> {
    let data = paper_data(test.count, test.seed);
    let threads = test.threads.clamp(1, 256);
    let chunk = data.len().div_ceil(threads).max(1);
    let batch = test.batch.max(1);
    let mut outcome = PaperTestOutcome {
        count: data.len(),
        ..PaperTestOutcome::default()
    };
    for phase in [Phase::Put, Phase::Get] {
        let started = Instant::now();
        let parts: Vec<Result<PhaseResult>> = std::thread::scope(|scope| {
            let options = &options;
            let workers: Vec<_> = data
                .chunks(chunk)
                .map(|part| scope.spawn(move || run_phase(addr, options, part, batch, phase)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(Error::Config("a test thread panicked".into())))
                })
                .collect()
        });
        let elapsed = started.elapsed();
        match phase {
            Phase::Put => outcome.put_time = elapsed,
            Phase::Get => outcome.get_time = elapsed,
        }
        for part in parts {
            let part = part?;
            outcome.mismatches += part.mismatches;
            outcome.errors += part.errors;
            outcome.relays_total += part.relays_total;
            outcome.relays_max = outcome.relays_max.max(part.relays_max);
            for problem in part.problems {
                if outcome.problems.len() < MAX_PROBLEMS {
                    outcome.problems.push(problem);
                }
            }
        }
    }
    outcome.reports = Client::connect_with(addr, options)?.size()?;
    Ok(outcome)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Put,
    Get,
}

#[derive(Default)]
struct PhaseResult {
    mismatches: usize,
    errors: usize,
    relays_total: u64,
    relays_max: u16,
    problems: Vec<String>,
}

fn run_phase(
    addr: &str,
    options: &ClientOptions,
    data: &[(Vec<u8>, Vec<u8>)],
    batch: usize,
    phase: Phase,
) -> Result<PhaseResult> {
    let mut client = Client::connect_with(addr, options.clone())?;
    let mut result = PhaseResult::default();
    for part in data.chunks(batch) {
        let requests: Vec<Request> = part
            .iter()
            .map(|(key, value)| match phase {
                Phase::Put => Request::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                Phase::Get => Request::Get { key: key.clone() },
            })
            .collect();
        let replies = client.pipeline(&requests)?;
        for ((key, value), reply) in part.iter().zip(replies) {
            result.relays_total += u64::from(reply.hops);
            result.relays_max = result.relays_max.max(reply.hops);
            let key_text = String::from_utf8_lossy(key);
            let problem = match (phase, reply.status) {
                (Phase::Put, Status::OK) => None,
                (Phase::Get, Status::OK) if &reply.value == value => None,
                (Phase::Get, Status::OK) => {
                    result.mismatches += 1;
                    Some(format!(
                        "GET {key_text}: expected {}, got {}",
                        String::from_utf8_lossy(value),
                        String::from_utf8_lossy(&reply.value)
                    ))
                }
                (Phase::Get, Status::NOT_FOUND) => {
                    result.mismatches += 1;
                    Some(format!("GET {key_text}: not found"))
                }
                (_, status) => {
                    result.errors += 1;
                    Some(format!(
                        "{} {key_text}: {status}: {}",
                        if phase == Phase::Put { "PUT" } else { "GET" },
                        String::from_utf8_lossy(&reply.value)
                    ))
                }
            };
            if let Some(problem) = problem {
                if result.problems.len() < MAX_PROBLEMS {
                    result.problems.push(problem);
                }
            }
        }
    }
    Ok(result)
}

/// Groups digits in threes: 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const BAR_WIDTH: usize = 40;

/// The paper's per-node table: bytes and keys per node with a bar each, the total, and the
/// most-loaded node over the mean. The last report, if addressed `total`, is the total.
pub fn render_distribution(reports: &[NodeReport]) -> String {
    let (nodes, total) = split_total(reports);
    let width = nodes.iter().map(|r| r.addr.len()).max().unwrap_or(4).max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>12}  {:>14}  {:>6}",
        "node", "keys", "bytes", "share"
    );
    let total_bytes: u64 = nodes.iter().map(|r| r.counter("bytes")).sum();
    let total_keys: u64 = nodes.iter().map(|r| r.counter("keys")).sum();
    let most = nodes.iter().map(|r| r.counter("bytes")).max().unwrap_or(0);
    for report in &nodes {
        if report.status != Status::OK {
            let _ = writeln!(
                out,
                "{:<width$}  {}: {}",
                report.addr, report.status, report.message
            );
            continue;
        }
        let bytes = report.counter("bytes");
        let share = if total_bytes == 0 {
            0.0
        } else {
            bytes as f64 / total_bytes as f64
        };
        let bar = if most == 0 {
            0
        } else {
            // A node holding anything keeps a visible bar, however small its share.
            ((bytes as f64 / most as f64 * BAR_WIDTH as f64).round() as usize)
                .max(usize::from(bytes > 0))
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>12}  {:>14}  {:>5.1}%  {}",
            report.addr,
            thousands(report.counter("keys")),
            thousands(bytes),
            share * 100.0,
            "#".repeat(bar)
        );
    }
    let _ = writeln!(
        out,
        "{:<width$}  {:>12}  {:>14}",
        "total",
        thousands(total.map_or(total_keys, |t| t.counter("keys"))),
        thousands(total.map_or(total_bytes, |t| t.counter("bytes")))
    );
    if let Some(t) = total.filter(|t| !t.message.is_empty()) {
        let _ = writeln!(out, "note: {}", t.message);
    }
    let answered = nodes.iter().filter(|r| r.status == Status::OK).count();
    if answered > 0 && total_bytes > 0 {
        let mean = total_bytes as f64 / answered as f64;
        let _ = writeln!(out, "most-loaded / mean (bytes): {:.2}", most as f64 / mean);
    }
    let replicas: u64 = nodes.iter().map(|r| r.counter("replica_keys")).sum();
    if replicas > 0 {
        let _ = writeln!(
            out,
            "\nreplica copies (each key above is also held by the rest of its chain):"
        );
        let _ = writeln!(out, "{:<width$}  {:>12}  {:>14}", "node", "keys", "bytes");
        for report in nodes.iter().filter(|r| r.status == Status::OK) {
            let _ = writeln!(
                out,
                "{:<width$}  {:>12}  {:>14}",
                report.addr,
                thousands(report.counter("replica_keys")),
                thousands(report.counter("replica_bytes"))
            );
        }
        let _ = writeln!(
            out,
            "{:<width$}  {:>12}  {:>14}",
            "total",
            thousands(replicas),
            thousands(nodes.iter().map(|r| r.counter("replica_bytes")).sum())
        );
    }
    out
}

/// What `kvcli stats` prints: the distribution of keys and bytes, every other counter per node,
/// the relay histogram with the mean and maximum relays per served request, and the latency
/// histogram (`latency_us_le_*`) with the 99th percentile, when the nodes export one.
pub fn render_stats(reports: &[NodeReport]) -> String {
    let is_shown_elsewhere = |name: &str| {
        matches!(
            name,
            "keys" | "bytes" | "replica_keys" | "replica_bytes" | "hops"
        )
    };
    let mut names: Vec<&str> = Vec::new();
    let mut buckets: Vec<&str> = Vec::new();
    let mut latency_buckets: Vec<&str> = Vec::new();
    for report in reports {
        for (name, _) in &report.counters {
            let list = if name.starts_with("relays_") {
                &mut buckets
            } else if name.starts_with(LATENCY_COUNTER_PREFIX) {
                &mut latency_buckets
            } else if is_shown_elsewhere(name) {
                continue;
            } else {
                &mut names
            };
            if !list.contains(&name.as_str()) {
                list.push(name);
            }
        }
    }
    buckets.sort_by_key(|name| relay_bucket(name));
    latency_buckets.sort_by_key(|name| latency_bucket(name));
    let mut out = render_distribution(reports);
    out.push('\n');
    out.push_str(&render_counter_table(reports, &names, |n| n.to_string()));
    let (nodes, _) = split_total(reports);
    if !buckets.is_empty() {
        let _ = writeln!(out, "\nrequests served, by relays taken:");
        out.push_str(&render_counter_table(reports, &buckets, |n| {
            n.trim_start_matches("relays_").to_string()
        }));
        let served: u64 = nodes.iter().map(|r| r.counter("served")).sum();
        let hops: u64 = nodes.iter().map(|r| r.counter("hops")).sum();
        let max = buckets
            .iter()
            .filter(|b| nodes.iter().any(|r| r.counter(b) > 0))
            .map(|b| b.trim_start_matches("relays_"))
            .next_back()
            .unwrap_or("0");
        if served > 0 {
            let _ = writeln!(
                out,
                "relays per served request: mean {:.2}, max {max}",
                hops as f64 / served as f64
            );
        }
    }
    if !latency_buckets.is_empty() {
        let _ = writeln!(
            out,
            "\nkey requests answered within each latency (cumulative), since the nodes started:"
        );
        out.push_str(&render_counter_table(
            reports,
            &latency_buckets,
            |n| match latency_bucket(n) {
                u64::MAX => "all".to_string(),
                bound => LatencyBound::AtMost(bound).to_string(),
            },
        ));
        let together = nodes
            .iter()
            .filter(|r| r.status == Status::OK)
            .filter_map(|r| LatencyHistogram::from_report(r))
            .reduce(|sum, node| sum.plus(&node));
        if let Some(p99) = together.as_ref().and_then(LatencyHistogram::p99) {
            let _ = writeln!(out, "p99 latency of the nodes' key requests: {p99}");
        }
    }
    out
}

/// The bound, in microseconds, a latency counter name stands for (`latency_us_le_inf`, the
/// bucket of every request, sorts last).
fn latency_bucket(name: &str) -> u64 {
    name.trim_start_matches(LATENCY_COUNTER_PREFIX)
        .parse()
        .unwrap_or(u64::MAX)
}

/// The relay count a histogram counter name stands for (`relays_16+` sorts after `relays_15`).
fn relay_bucket(name: &str) -> u32 {
    name.trim_start_matches("relays_")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(u32::MAX)
}

/// One row per report with the named counters as columns, headed by `heading(name)`.
fn render_counter_table(
    reports: &[NodeReport],
    names: &[&str],
    heading: impl Fn(&str) -> String,
) -> String {
    let width = reports
        .iter()
        .map(|r| r.addr.len())
        .max()
        .unwrap_or(4)
        .max(5);
    let column = names
        .iter()
        .map(|n| heading(n).len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = String::new();
    let _ = write!(out, "{:<width$}", "node");
    for name in names {
        let _ = write!(out, "  {:>column$}", heading(name));
    }
    out.push('\n');
    for report in reports {
        let _ = write!(out, "{:<width$}", report.addr);
        if report.status != Status::OK {
            let _ = writeln!(out, "  {}: {}", report.status, report.message);
            continue;
        }
        for name in names {
            let _ = write!(out, "  {:>column$}", thousands(report.counter(name)));
        }
        out.push('\n');
    }
    out
}

/// What `kvcli ring` prints: the view's design, then per node its points (positions, or
/// partition ranges) and the share of the key space it owns.
pub fn render_ring(view: &View) -> Result<String> {
    let ring = Ring::new(view.clone())?;
    let shares = ring.shares();
    let mut out = String::new();
    let count = |state| view.states.iter().filter(|s| **s == state).count();
    let _ = writeln!(
        out,
        "view epoch {}: {} nodes ({} down, {} syncing), {} replicas, {}, {} routing ({} points \
         on the ring)",
        view.epoch,
        view.nodes.len(),
        count(NodeState::Down),
        count(NodeState::Syncing),
        view.replicas,
        view.placement,
        view.routing,
        ring.point_count()
    );
    let mut points_of: Vec<Vec<&Position>> = vec![Vec::new(); ring.len()];
    for (position, node) in ring.points() {
        points_of[node].push(position);
    }
    let width = view.nodes.iter().map(String::len).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:>7}  {:>5}  {:>7}  {:>6}  points",
        "node", "state", "since", "share", "count"
    );
    for (index, node) in view.nodes.iter().enumerate() {
        let points = &points_of[index];
        let listed = match view.placement {
            Placement::Partitions { count } => partition_ranges(points, count),
            Placement::Hashed { .. } => {
                let mut hexes: Vec<String> =
                    points.iter().take(3).map(|p| position_hex(p)).collect();
                if points.len() > 3 {
                    hexes.push(format!("... ({} more)", points.len() - 3));
                }
                hexes.join(" ")
            }
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>7}  {:>5}  {:>6.2}%  {:>6}  {listed}",
            node,
            view.states[index].to_string(),
            view.since[index],
            shares[index] * 100.0,
            points.len()
        );
    }
    let owning = view.owning().iter().filter(|&&o| o).count().max(1);
    let mean = 1.0 / owning as f64;
    let most = shares.iter().cloned().fold(0.0, f64::max);
    let _ = writeln!(out, "largest share / mean: {:.3}", most / mean);
    out.push_str(&render_move(&ring));
    out.push_str(&render_chains(&ring));
    Ok(out)
}

/// What `kvcli ring` and `kvcli size` add while a join or leave is under way: how many
/// partitions change chains, and per node how many it owns now and will own.
pub fn render_move(ring: &Ring) -> String {
    let view = ring.view();
    if !view.is_moving() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "a join or leave is under way: {} of {} partitions change chains",
        crate::cluster::handoff::moving_partitions(ring),
        ring.point_count()
    );
    let held =
        |table: &[u16], node: usize| table.iter().filter(|&&o| usize::from(o) == node).count();
    for (index, node) in view.nodes.iter().enumerate() {
        let (now, then) = (held(&view.owners, index), held(&view.target, index));
        if now != then {
            let _ = writeln!(out, "  {node}: {now} partitions now, {then} after the move");
        }
    }
    out
}

/// Most chains `kvcli ring` lists one by one.
const CHAINS_SHOWN: usize = 24;

/// The chains of the ring's spans, grouped: each distinct chain (head first, tail last), how
/// many points' spans (partitions) have it, and their share of the key space.
fn render_chains(ring: &Ring) -> String {
    let mut groups: Vec<(Vec<usize>, usize, f64)> = Vec::new();
    let points: Vec<&Position> = ring.points().map(|(p, _)| p).collect();
    for (index, start) in points.iter().enumerate() {
        let chain: Vec<usize> = ring.chain_at(index).members().collect();
        // The last point's span wraps round zero up to the first point.
        let end = points
            .get(index + 1)
            .map_or(1.0 + position_to_f64(points[0]), |p| position_to_f64(p));
        let span = end - position_to_f64(start);
        match groups.iter_mut().find(|(c, _, _)| *c == chain) {
            Some((_, count, share)) => {
                *count += 1;
                *share += span;
            }
            None => groups.push((chain, 1, span)),
        }
    }
    groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = String::new();
    let unavailable: usize = groups.iter().filter(|g| g.0.is_empty()).map(|g| g.1).sum();
    let _ = writeln!(
        out,
        "chains (head first, tail last): {} distinct{}",
        groups.len(),
        if unavailable > 0 {
            format!(", {unavailable} spans with no member up (unavailable)")
        } else {
            String::new()
        }
    );
    for (chain, count, share) in groups.iter().take(CHAINS_SHOWN) {
        let members = if chain.is_empty() {
            "(none up: unavailable)".to_string()
        } else {
            chain
                .iter()
                .map(|&n| ring.node(n))
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        let _ = writeln!(
            out,
            "  {count:>6} spans  {:>6.2}%  {members}",
            share * 100.0
        );
    }
    if groups.len() > CHAINS_SHOWN {
        let _ = writeln!(out, "  ... {} more chains", groups.len() - CHAINS_SHOWN);
    }
    out
}

/// Partition numbers of sorted partition starts, as ranges: `0-3 17 40-41`, cut after a few.
fn partition_ranges(points: &[&Position], count: u32) -> String {
    let bits = count.trailing_zeros();
    let number = |p: &Position| {
        if bits == 0 {
            0
        } else {
            (u64::from_be_bytes(p[..8].try_into().unwrap_or([0; 8])) >> (64 - bits)) as u32
        }
    };
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for p in points {
        let n = number(p);
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => ranges.push((n, n)),
        }
    }
    const SHOWN: usize = 6;
    let mut text: Vec<String> = ranges
        .iter()
        .take(SHOWN)
        .map(|&(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > SHOWN {
        text.push(format!("... ({} more ranges)", ranges.len() - SHOWN));
    }
    format!("partitions {}", text.join(" "))
}

fn split_total(reports: &[NodeReport]) -> (Vec<&NodeReport>, Option<&NodeReport>) {
    match reports.split_last() {
        Some((last, rest)) if last.addr == "total" => (rest.iter().collect(), Some(last)),
        _ => (reports.iter().collect(), None),
    }
}

/// The report `kvcli test` prints.
pub fn render_paper_test(outcome: &PaperTestOutcome) -> String {
    let mut out = String::new();
    let rate = |d: Duration| outcome.count as f64 / d.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "PUT {} keys in {:.2?} ({:.0} ops/s); GET {} keys in {:.2?} ({:.0} ops/s)",
        thousands(outcome.count as u64),
        outcome.put_time,
        rate(outcome.put_time),
        thousands(outcome.count as u64),
        outcome.get_time,
        rate(outcome.get_time)
    );
    let requests = (outcome.count * 2).max(1) as f64;
    let _ = writeln!(
        out,
        "relays per request: mean {:.2}, max {}",
        outcome.relays_total as f64 / requests,
        outcome.relays_max
    );
    out.push('\n');
    out.push_str(&render_distribution(&outcome.reports));
    out.push('\n');
    if outcome.passed() {
        let _ = writeln!(
            out,
            "PASS: all {} values came back",
            thousands(outcome.count as u64)
        );
    } else {
        let _ = writeln!(
            out,
            "FAIL: {} mismatches, {} errors",
            outcome.mismatches, outcome.errors
        );
        for problem in &outcome.problems {
            let _ = writeln!(out, "  {problem}");
        }
    }
    out
}

/// The prefix of the cumulative latency counters of a backend's STATS (PROTOCOL.md section
/// 7.2): `latency_us_le_<N>` counts the key requests it answered within N microseconds of their
/// arrival, and `latency_us_le_inf` all of them.
pub const LATENCY_COUNTER_PREFIX: &str = "latency_us_le_";

/// A node's latency histogram, from its cumulative `latency_us_le_*` counters: for each bound
/// (in microseconds, ascending) the requests answered within it, and all requests counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `(bound_us, requests answered within bound_us)`, bounds ascending.
    pub within: Vec<(u64, u64)>,
    /// Every request counted (the `inf` bucket).
    pub all: u64,
}

impl LatencyHistogram {
    /// The histogram in `report`'s counters; `None` when it has no `latency_us_le_inf` (the node
    /// does not export latencies).
    pub fn from_report(report: &NodeReport) -> Option<LatencyHistogram> {
        let mut histogram = LatencyHistogram::default();
        let mut has_all = false;
        for (name, value) in &report.counters {
            let Some(bound) = name.strip_prefix(LATENCY_COUNTER_PREFIX) else {
                continue;
            };
            if bound == "inf" {
                histogram.all = *value;
                has_all = true;
            } else if let Ok(bound) = bound.parse::<u64>() {
                histogram.within.push((bound, *value));
            }
        }
        histogram.within.sort_unstable();
        histogram.within.dedup_by_key(|(bound, _)| *bound);
        has_all.then_some(histogram)
    }

    /// Requests answered within `bound_us`, as far as the buckets tell: the count of the
    /// largest bound not above it. A bound the node did not list is read so, which is exact for a
    /// node that leaves out its empty buckets and errs towards slower for one with coarser ones.
    pub fn within(&self, bound_us: u64) -> u64 {
        self.within
            .iter()
            .take_while(|(bound, _)| *bound <= bound_us)
            .last()
            .map_or(0, |(_, count)| *count)
    }

    /// The union of both histograms' bounds, ascending.
    fn bounds_with(&self, other: &LatencyHistogram) -> Vec<u64> {
        let mut bounds: Vec<u64> = self
            .within
            .iter()
            .chain(&other.within)
            .map(|(bound, _)| *bound)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        bounds
    }

    /// What was counted since `earlier`, bucket by bucket; `None` when a count went down (the
    /// node restarted in between).
    pub fn since(&self, earlier: &LatencyHistogram) -> Option<LatencyHistogram> {
        let within = self
            .bounds_with(earlier)
            .into_iter()
            .map(|bound| {
                Some((
                    bound,
                    self.within(bound).checked_sub(earlier.within(bound))?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(LatencyHistogram {
            within,
            all: self.all.checked_sub(earlier.all)?,
        })
    }

    /// Both histograms' requests together, bucket by bucket.
    pub fn plus(&self, other: &LatencyHistogram) -> LatencyHistogram {
        LatencyHistogram {
            within: self
                .bounds_with(other)
                .into_iter()
                .map(|bound| (bound, self.within(bound) + other.within(bound)))
                .collect(),
            all: self.all + other.all,
        }
    }

    /// The bucket holding the 99th percentile: the smallest bound within which at least 99% of
    /// the requests were answered, or "over the largest bound". `None` when no request was
    /// counted.
    pub fn p99(&self) -> Option<LatencyBound> {
        if self.all == 0 {
            return None;
        }
        // ceil(0.99 * all), in integers so that no rounding moves a request across a bucket.
        let rank = (u128::from(self.all) * 99).div_ceil(100);
        match self
            .within
            .iter()
            .find(|(_, count)| u128::from(*count) >= rank)
        {
            Some((bound, _)) => Some(LatencyBound::AtMost(*bound)),
            None => self
                .within
                .last()
                .map(|(bound, _)| LatencyBound::Over(*bound)),
        }
    }
}

/// Where a latency percentile lies, as far as histogram buckets tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyBound {
    /// Within this many microseconds (the bucket's upper bound).
    AtMost(u64),
    /// Over this many microseconds (the largest bound: the bucket without an upper bound).
    Over(u64),
}

impl std::fmt::Display for LatencyBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LatencyBound::AtMost(us) => write!(f, "<={}", micros_text(*us)),
            LatencyBound::Over(us) => write!(f, ">{}", micros_text(*us)),
        }
    }
}

/// Microseconds in the largest unit that keeps them at least 1: `250us`, `2.5ms`, `1s`.
fn micros_text(us: u64) -> String {
    let (value, unit) = if us < 1_000 {
        return format!("{us}us");
    } else if us < 1_000_000 {
        (us as f64 / 1e3, "ms")
    } else {
        (us as f64 / 1e6, "s")
    };
    let digits = format!("{value:.3}");
    format!(
        "{}{unit}",
        digits.trim_end_matches('0').trim_end_matches('.')
    )
}

/// One row of `kvcli top`: what a node did between two STATS answers.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    /// The node's address, or `total`.
    pub node: String,
    /// The status and message of a node that did not answer the later STATS.
    pub failure: Option<String>,
    /// Requests handled per second (counter `requests`); `None` when the node is not in both
    /// answers with the counter, or the counter went down (it restarted).
    pub ops_per_sec: Option<f64>,
    /// Keys and bytes it holds as the head of their chains, at the later answer.
    pub keys: u64,
    pub bytes: u64,
    /// Error answers it sent in the interval (counter `errors`), `None` as for `ops_per_sec`.
    pub errors: Option<u64>,
    /// The bucket of its 99th-percentile latency over the interval; `None` when it exports no
    /// latency counters or answered no request.
    pub p99: Option<LatencyBound>,
}

/// What `kvcli top` shows for one interval: a row per node and the total.
#[derive(Debug, Clone, PartialEq)]
pub struct TopTable {
    /// Seconds between the two STATS answers.
    pub seconds: f64,
    pub nodes: Vec<TopRow>,
    /// The nodes' figures summed (p99 over their requests together); nodes without figures
    /// are left out.
    pub total: TopRow,
}

impl TopTable {
    /// The rows of nodes that did not answer the later STATS.
    pub fn missing(&self) -> impl Iterator<Item = &TopRow> {
        self.nodes.iter().filter(|row| row.failure.is_some())
    }
}

/// The value of counter `name` in `report`, if the report has it.
fn counter_in(report: &NodeReport, name: &str) -> Option<u64> {
    report
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| *value)
}

/// The `kvcli top` table from two STATS answers (per-node reports, a `total` report last or
/// not) taken `seconds` apart. Nodes are matched by address and listed as in `later`.
pub fn top_table(earlier: &[NodeReport], later: &[NodeReport], seconds: f64) -> TopTable {
    let (earlier_nodes, _) = split_total(earlier);
    let (later_nodes, _) = split_total(later);
    let seconds = seconds.max(1e-9);
    let mut nodes = Vec::with_capacity(later_nodes.len());
    let mut latency_total: Option<LatencyHistogram> = None;
    let mut total = TopRow {
        node: "total".to_string(),
        failure: None,
        ops_per_sec: None,
        keys: 0,
        bytes: 0,
        errors: None,
        p99: None,
    };
    for report in later_nodes {
        if report.status != Status::OK {
            nodes.push(TopRow {
                node: report.addr.clone(),
                failure: Some(format!("{}: {}", report.status, report.message)),
                ops_per_sec: None,
                keys: 0,
                bytes: 0,
                errors: None,
                p99: None,
            });
            continue;
        }
        let before = earlier_nodes
            .iter()
            .find(|r| r.addr == report.addr && r.status == Status::OK);
        let delta = |name: &str| counter_in(report, name)?.checked_sub(counter_in(before?, name)?);
        let requests = delta("requests");
        let errors = delta("errors");
        let latency = before.and_then(|before| {
            LatencyHistogram::from_report(report)?.since(&LatencyHistogram::from_report(before)?)
        });
        let row = TopRow {
            node: report.addr.clone(),
            failure: None,
            ops_per_sec: requests.map(|n| n as f64 / seconds),
            keys: report.counter("keys"),
            bytes: report.counter("bytes"),
            errors,
            p99: latency.as_ref().and_then(LatencyHistogram::p99),
        };
        total.keys += row.keys;
        total.bytes += row.bytes;
        if let Some(rate) = row.ops_per_sec {
            total.ops_per_sec = Some(total.ops_per_sec.unwrap_or(0.0) + rate);
        }
        if let Some(errors) = row.errors {
            total.errors = Some(total.errors.unwrap_or(0) + errors);
        }
        if let Some(latency) = latency {
            latency_total = Some(match latency_total {
                Some(sum) => sum.plus(&latency),
                None => latency,
            });
        }
        nodes.push(row);
    }
    total.p99 = latency_total.as_ref().and_then(LatencyHistogram::p99);
    TopTable {
        seconds,
        nodes,
        total,
    }
}

/// Requests per second with one decimal and grouped digits: `1,234.5`.
fn rate_text(rate: f64) -> String {
    let tenths = (rate * 10.0).round().max(0.0) as u64;
    format!("{}.{}", thousands(tenths / 10), tenths % 10)
}

/// The `kvcli top` table as text: a row per node (its error instead of figures if it did not
/// answer), the total, and a note when some nodes are not counted in it.
pub fn render_top(table: &TopTable) -> String {
    let width = table
        .nodes
        .iter()
        .map(|row| row.node.len())
        .max()
        .unwrap_or(4)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>12}  {:>12}  {:>14}  {:>8}  {:>8}",
        "node", "ops/s", "keys", "bytes", "errors", "p99"
    );
    let dash = || "-".to_string();
    for row in table.nodes.iter().chain(std::iter::once(&table.total)) {
        if let Some(failure) = &row.failure {
            let _ = writeln!(out, "{:<width$}  {failure}", row.node);
            continue;
        }
        let _ = writeln!(
            out,
            "{:<width$}  {:>12}  {:>12}  {:>14}  {:>8}  {:>8}",
            row.node,
            row.ops_per_sec.map_or_else(dash, rate_text),
            thousands(row.keys),
            thousands(row.bytes),
            row.errors.map_or_else(dash, thousands),
            row.p99.map_or_else(dash, |p99| p99.to_string()),
        );
    }
    let missing = table.missing().count();
    if missing > 0 {
        let _ = writeln!(
            out,
            "note: {missing} node(s) did not answer and are not counted in the total"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_in_progress_is_shown_with_each_nodes_partitions_now_and_after() {
        let view = View::new(
            2,
            Routing::Direct,
            Placement::Partitions { count: 64 },
            2,
            vec!["a:1".into(), "b:1".into()],
        );
        let still = Ring::new(view.clone()).unwrap();
        assert_eq!(render_move(&still), "");
        let moving = crate::cluster::membership::begin(
            &view,
            &crate::cluster::membership::Change::Join("c:1".into()),
        )
        .unwrap();
        let ring = Ring::new(moving).unwrap();
        let shown = render_move(&ring);
        assert!(
            shown.starts_with("a join or leave is under way: "),
            "{shown}"
        );
        assert!(
            shown.contains("c:1: 0 partitions now, 21 after the move"),
            "{shown}"
        );
        assert!(render_ring(ring.view()).unwrap().contains(&shown));
    }

    #[test]
    fn paper_data_has_the_papers_shape_and_unique_keys() {
        let data = paper_data(5_000, 42);
        let keys: HashSet<_> = data.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 5_000);
        for (key, value) in &data {
            assert!((10..=20).contains(&key.len()));
            assert!(key.iter().all(u8::is_ascii_alphabetic));
            assert!((20..=40).contains(&value.len()));
            assert!(value.iter().all(u8::is_ascii_digit));
        }
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn version_is_answered_only_as_the_first_argument() {
        let words = |list: &[&str]| list.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            version_request(&words(&["/usr/local/bin/kvcli", "--version"])),
            Some(format!("kvcli {version}"))
        );
        assert_eq!(
            version_request(&words(&["target/release/ringkv", "--version", "local"])),
            Some(format!("ringkv {version}"))
        );
        assert_eq!(
            version_request(&words(&["kvcli", "get", "--version"])),
            None
        );
        assert_eq!(version_request(&words(&["kvcli"])), None);
        assert_eq!(version_request(&words(&["kvcli", "ping"])), None);
    }

    /// A STATS report of a backend with `requests` and `errors`, and, given `latency`, the
    /// cumulative latency buckets: `(bound_us, count)` pairs then the `inf` count.
    fn stats_report(
        addr: &str,
        requests: u64,
        errors: u64,
        latency: Option<(&[(u64, u64)], u64)>,
    ) -> NodeReport {
        let mut counters = vec![
            ("keys".to_string(), 10),
            ("bytes".to_string(), 200),
            ("requests".to_string(), requests),
            ("errors".to_string(), errors),
        ];
        if let Some((buckets, all)) = latency {
            for (bound, count) in buckets {
                counters.push((format!("latency_us_le_{bound}"), *count));
            }
            counters.push(("latency_us_le_inf".to_string(), all));
        }
        NodeReport {
            addr: addr.into(),
            status: Status::OK,
            message: String::new(),
            counters,
        }
    }

    /// The buckets the backends export, cumulative, for `counts[i]` requests answered in the
    /// i-th bucket (the last one being over 1 s).
    fn cumulative(counts: &[u64; 15]) -> (Vec<(u64, u64)>, u64) {
        let bounds = [
            50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
            1000000,
        ];
        let mut running = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                running += count;
                (*bound, running)
            })
            .collect();
        (buckets, running + counts[14])
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_holding_the_99th_percentile() {
        let histogram = |counts: &[u64; 15]| {
            let (within, all) = cumulative(counts);
            LatencyHistogram { within, all }
        };
        // 100 requests: 98 within 50us, 1 within 250us, 1 within 2.5ms: the 99th is at 250us.
        let mut counts = [0; 15];
        counts[0] = 98;
        counts[2] = 1;
        counts[5] = 1;
        assert_eq!(histogram(&counts).p99(), Some(LatencyBound::AtMost(250)));
        // One more slow one: 2 of 101 over 250us, so the 99th (ceil(99.99) = 100th) is slower.
        counts[5] = 2;
        assert_eq!(histogram(&counts).p99(), Some(LatencyBound::AtMost(2500)));
        // Exactly 99 of 100 within 100us.
        let mut counts = [0; 15];
        counts[1] = 99;
        counts[14] = 1;
        assert_eq!(histogram(&counts).p99(), Some(LatencyBound::AtMost(100)));
        // Most of them over the largest bound.
        let mut counts = [0; 15];
        counts[0] = 5;
        counts[14] = 95;
        assert_eq!(
            histogram(&counts).p99(),
            Some(LatencyBound::Over(1_000_000))
        );
        // No request, no percentile.
        assert_eq!(histogram(&[0; 15]).p99(), None);

        assert_eq!(LatencyBound::AtMost(250).to_string(), "<=250us");
        assert_eq!(LatencyBound::AtMost(2500).to_string(), "<=2.5ms");
        assert_eq!(LatencyBound::AtMost(10000).to_string(), "<=10ms");
        assert_eq!(LatencyBound::AtMost(1_000_000).to_string(), "<=1s");
        assert_eq!(LatencyBound::Over(1_000_000).to_string(), ">1s");
    }

    #[test]
    fn top_rates_come_from_the_deltas_over_the_interval() {
        let earlier_counts = {
            let mut counts = [0; 15];
            counts[0] = 1_000;
            counts[6] = 1_000;
            counts
        };
        // In the interval: 390 within 50us, 8 within 500us, 2 within 5ms (400 requests).
        let mut later_counts = earlier_counts;
        later_counts[0] += 390;
        later_counts[3] += 8;
        later_counts[6] += 2;
        let (earlier_a, earlier_a_all) = cumulative(&earlier_counts);
        let (later_a, later_a_all) = cumulative(&later_counts);
        let earlier = vec![
            stats_report("a:1", 5_000, 7, Some((&earlier_a, earlier_a_all))),
            stats_report("b:1", 100, 0, None),
            stats_report("total", 5_100, 7, None),
        ];
        let later = vec![
            stats_report("a:1", 5_400, 9, Some((&later_a, later_a_all))),
            stats_report("b:1", 300, 0, None),
            stats_report("total", 5_700, 9, None),
        ];
        let table = top_table(&earlier, &later, 2.0);
        assert_eq!(table.nodes.len(), 2, "the total report is not a node");
        let a = &table.nodes[0];
        assert_eq!(a.node, "a:1");
        assert_eq!(a.ops_per_sec, Some(200.0));
        assert_eq!(a.errors, Some(2));
        assert_eq!((a.keys, a.bytes), (10, 200));
        // 396 of 400 within 500us: the 99th percentile, the earlier 2,000 left out.
        assert_eq!(a.p99, Some(LatencyBound::AtMost(500)));
        let b = &table.nodes[1];
        assert_eq!(b.ops_per_sec, Some(100.0));
        assert_eq!(b.p99, None, "b exports no latency counters");
        assert_eq!(table.total.ops_per_sec, Some(300.0));
        assert_eq!(table.total.errors, Some(2));
        assert_eq!((table.total.keys, table.total.bytes), (20, 400));
        assert_eq!(table.total.p99, Some(LatencyBound::AtMost(500)));
        assert_eq!(table.missing().count(), 0);

        let text = render_top(&table);
        let row = |name: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .find(|columns| columns.first().map(String::as_str) == Some(name))
                .unwrap_or_else(|| panic!("no row {name}:\n{text}"))
        };
        assert_eq!(
            text.lines()
                .next()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["node", "ops/s", "keys", "bytes", "errors", "p99"],
            "{text}"
        );
        assert_eq!(row("a:1"), ["a:1", "200.0", "10", "200", "2", "<=500us"]);
        assert_eq!(row("b:1"), ["b:1", "100.0", "10", "200", "0", "-"]);
        assert_eq!(
            row("total"),
            ["total", "300.0", "20", "400", "2", "<=500us"]
        );
    }

    #[test]
    fn top_total_p99_is_over_every_nodes_requests_together() {
        // a: 1,000 fast requests; b: 20 slow ones (within 50ms). Together 20 of 1,020 are slow,
        // more than 1%, so the total's 99th percentile is b's bucket, not a's.
        let mut fast = [0; 15];
        fast[0] = 1_000;
        let mut slow = [0; 15];
        slow[9] = 20;
        let (a, a_all) = cumulative(&fast);
        let (b, b_all) = cumulative(&slow);
        let zero = cumulative(&[0; 15]);
        let earlier = vec![
            stats_report("a:1", 0, 0, Some((&zero.0, zero.1))),
            stats_report("b:1", 0, 0, Some((&zero.0, zero.1))),
        ];
        let later = vec![
            stats_report("a:1", 1_000, 0, Some((&a, a_all))),
            stats_report("b:1", 20, 0, Some((&b, b_all))),
        ];
        let table = top_table(&earlier, &later, 1.0);
        assert_eq!(table.nodes[0].p99, Some(LatencyBound::AtMost(50)));
        assert_eq!(table.nodes[1].p99, Some(LatencyBound::AtMost(50_000)));
        assert_eq!(table.total.p99, Some(LatencyBound::AtMost(50_000)));
    }

    #[test]
    fn top_shows_dashes_where_a_node_has_no_interval_and_its_error_where_it_did_not_answer() {
        let (restarted_before, restarted_before_all) = cumulative(&[100; 15]);
        let (restarted_after, restarted_after_all) = cumulative(&[1; 15]);
        let earlier = vec![
            stats_report(
                "restarted:1",
                9_000,
                50,
                Some((&restarted_before, restarted_before_all)),
            ),
            stats_report("dies:1", 10, 0, None),
            NodeReport::failed("comes-back:1", Status::UNAVAILABLE, "refused"),
            stats_report("total", 9_010, 50, None),
        ];
        let later = vec![
            stats_report(
                "restarted:1",
                40,
                0,
                Some((&restarted_after, restarted_after_all)),
            ),
            NodeReport::failed(
                "dies:1",
                Status::UNAVAILABLE,
                "backend dies:1 is unavailable",
            ),
            stats_report("comes-back:1", 30, 1, None),
            stats_report("joined:1", 5, 0, None),
            stats_report("total", 75, 1, None),
        ];
        let table = top_table(&earlier, &later, 1.0);
        let restarted = &table.nodes[0];
        assert_eq!(
            (restarted.ops_per_sec, restarted.errors, restarted.p99),
            (None, None, None),
            "counters that went down say nothing about the interval"
        );
        assert_eq!(restarted.keys, 10, "the keys it holds now are still known");
        let missing: Vec<&TopRow> = table.missing().collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].node, "dies:1");
        assert_eq!(
            missing[0].failure.as_deref(),
            Some("UNAVAILABLE: backend dies:1 is unavailable")
        );
        for name in ["comes-back:1", "joined:1"] {
            let row = table.nodes.iter().find(|r| r.node == name).unwrap();
            assert_eq!(row.ops_per_sec, None, "{name} has no earlier figure");
        }
        assert_eq!(table.total.ops_per_sec, None, "no node has a rate");
        assert_eq!((table.total.keys, table.total.bytes), (30, 600));

        let text = render_top(&table);
        assert!(
            text.lines().any(|l| l.starts_with("dies:1")
                && l.ends_with("UNAVAILABLE: backend dies:1 is unavailable")),
            "{text}"
        );
        let restarted_line = text.lines().find(|l| l.starts_with("restarted:1")).unwrap();
        assert_eq!(
            restarted_line.split_whitespace().collect::<Vec<_>>(),
            ["restarted:1", "-", "10", "200", "-", "-"],
            "{text}"
        );
        assert!(
            text.contains("note: 1 node(s) did not answer and are not counted in the total"),
            "{text}"
        );
    }

    #[test]
    fn latency_buckets_a_node_leaves_out_count_as_the_next_smaller_one() {
        // Only the non-empty buckets listed: le_250 = 0 is left out, le_100 absent too.
        let report = |within_500: u64, all: u64| NodeReport {
            addr: "a:1".into(),
            status: Status::OK,
            message: String::new(),
            counters: vec![
                ("latency_us_le_500".into(), within_500),
                ("latency_us_le_inf".into(), all),
            ],
        };
        let earlier = LatencyHistogram::from_report(&report(10, 10)).unwrap();
        let later = LatencyHistogram::from_report(&report(110, 110)).unwrap();
        assert_eq!(later.within(250), 0);
        assert_eq!(later.within(1000), 110);
        let interval = later.since(&earlier).unwrap();
        assert_eq!(interval.all, 100);
        assert_eq!(interval.p99(), Some(LatencyBound::AtMost(500)));
        assert_eq!(earlier.since(&later), None, "a count that went down");
        let no_latency = NodeReport::failed("b:1", Status::OK, "");
        assert_eq!(LatencyHistogram::from_report(&no_latency), None);
    }

    #[test]
    fn stats_shows_the_latency_histogram_apart_with_the_p99() {
        let mut counts = [0; 15];
        counts[0] = 90;
        counts[4] = 10;
        let (buckets, all) = cumulative(&counts);
        let reports = vec![
            stats_report("a:1", 100, 0, Some((&buckets, all))),
            stats_report("total", 100, 0, Some((&buckets, all))),
        ];
        let text = render_stats(&reports);
        let counter_header = text
            .lines()
            .find(|l| l.contains(" requests "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(!counter_header.contains("latency"), "{text}");
        let section = text
            .split("\n\n")
            .find(|s| s.starts_with("key requests answered within each latency"))
            .unwrap_or_else(|| panic!("no latency section:\n{text}"));
        let header: Vec<&str> = section.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(header.len(), 16, "{section}");
        assert_eq!(
            (header[1], header[5], header[14], header[15]),
            ("<=50us", "<=1ms", "<=1s", "all")
        );
        let a: Vec<&str> = section
            .lines()
            .find(|l| l.starts_with("a:1"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!((a[1], a[4], a[5], a[15]), ("90", "90", "100", "100"));
        // 10 of 100 took up to 1 ms: the 99th is among them.
        assert!(
            text.contains("p99 latency of the nodes' key requests: <=1ms"),
            "{text}"
        );
    }

    #[test]
    fn distribution_table_shows_ratio() {
        let report = |addr: &str, keys, bytes| NodeReport {
            addr: addr.into(),
            status: Status::OK,
            message: String::new(),
            counters: vec![("keys".into(), keys), ("bytes".into(), bytes)],
        };
        let table = render_distribution(&[
            report("a", 1, 100),
            report("b", 3, 300),
            report("total", 4, 400),
        ]);
        assert!(
            table.contains("most-loaded / mean (bytes): 1.50"),
            "{table}"
        );
        assert!(table.contains("75.0%"), "{table}");
    }
}
