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

/// Parses `words` (the program name first) into `T`. `--help` prints and exits 0; a usage error
/// prints the problem and exits 2, so that the binaries keep 1 for "not found".
pub fn parse_words<T: argh::FromArgs>(words: Vec<String>) -> T {
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
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
/// and the relay histogram with the mean and maximum relays per served request.
pub fn render_stats(reports: &[NodeReport]) -> String {
    let is_shown_elsewhere = |name: &str| {
        matches!(
            name,
            "keys" | "bytes" | "replica_keys" | "replica_bytes" | "hops"
        ) || name.starts_with("relays_")
    };
    let mut names: Vec<&str> = Vec::new();
    let mut buckets: Vec<&str> = Vec::new();
    for report in reports {
        for (name, _) in &report.counters {
            let list = if name.starts_with("relays_") {
                &mut buckets
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
    let mut out = render_distribution(reports);
    out.push('\n');
    out.push_str(&render_counter_table(reports, &names, |n| n.to_string()));
    if buckets.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nrequests served, by relays taken:");
    out.push_str(&render_counter_table(reports, &buckets, |n| {
        n.trim_start_matches("relays_").to_string()
    }));
    let (nodes, _) = split_total(reports);
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
    out
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
