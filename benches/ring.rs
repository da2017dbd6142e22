//! The ring: how many relays a lookup takes in each routing mode, how evenly each placement
//! spreads keys, how many keys move when a node joins, what a lookup and a ring build cost, and
//! then the routing modes end to end over loopback sockets.
//!
//! Everything up to the end-to-end part runs in this process on `Ring` alone, without sockets.
//! Relay, balance and movement figures are counts over keys, the same on every run and machine;
//! only the nanosecond, millisecond and ops/s figures are timings.
//!
//! Keys are the paper's shape (10 to 20 random lowercase letters) drawn from a seeded generator,
//! and hashed once: every ring of the balance and movement tables sees the same positions.

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{print_header, run_threads, Pick, Plan};
use ringkv::ring::{key_position, Position, DEFAULT_PLACEMENT};
use ringkv::rng::Rng;
use ringkv::{BackendConfig, FrontendConfig, LocalCluster, Placement, Ring, Routing, View};
use traffic::{preload, print_run, Op, Worker, VALUE_LEN};

/// Ring sizes of the relay table.
const RELAY_NODES: [usize; 7] = [4, 8, 16, 32, 64, 128, 256];
/// Ring sizes of the balance and movement tables. Real clusters are rarely a power of two in
/// size, and a partition count that a power of two divides exactly hides the rounding that
/// other sizes show, so 100 and 200 are in.
const BALANCE_NODES: [usize; 9] = [4, 8, 16, 32, 64, 100, 128, 200, 256];
/// The ring size the design's balance aim and the default's choice are stated for.
const AIM_NODES: usize = 8;
/// Most-loaded node over the mean that the design aims for.
const BALANCE_AIM: f64 = 1.05;
/// Keys moved by a join over the ideal 1/(N+1) that the choice of default accepts.
const MOVED_AIM: f64 = 1.1;
/// Ring size of the lookup and build timings.
const TIMING_NODES: usize = 256;
/// Backends of the end-to-end runs.
const CLUSTER_BACKENDS: usize = 8;
/// Lookups per timed step, so that reading the clock costs nothing next to the work.
const BATCH: usize = 1024;

const PLACEMENTS: [Placement; 8] = [
    Placement::Hashed { per_node: 1 },
    Placement::Hashed { per_node: 16 },
    Placement::Hashed { per_node: 64 },
    Placement::Hashed { per_node: 256 },
    Placement::Hashed { per_node: 1024 },
    Placement::Partitions { count: 1024 },
    Placement::Partitions { count: 4096 },
    Placement::Partitions { count: 16384 },
];

/// How much work each part does: the full run, or a smoke test that only checks that every
/// part still runs.
struct Sizes {
    /// Keys of the balance and movement tables, and the pool the other parts draw from.
    keys: usize,
    /// Lookups per cell of the relay table.
    relay_lookups: usize,
    /// Keys preloaded into each end-to-end cluster.
    cluster_keys: usize,
    /// Client threads of the end-to-end runs.
    cluster_threads: [usize; 2],
}

fn main() {
    let started = Instant::now();
    let base = Plan::from_env(Pick::Best);
    // Lookups are CPU work, so the fastest run counts; sockets and threads are measured by the
    // median run. Both are shorter than the common plan's, to keep the whole run near a minute.
    let (cpu_plan, socket_plan, sizes) = if base.quick {
        let sizes = Sizes {
            keys: 50_000,
            relay_lookups: 500,
            cluster_keys: 1_000,
            cluster_threads: [1, 4],
        };
        (base, Plan::from_env(Pick::Median), sizes)
    } else {
        let cpu = Plan {
            run_time: Duration::from_millis(100),
            runs: 5,
            ..base
        };
        let socket = Plan {
            run_time: Duration::from_millis(500),
            runs: 3,
            pick: Pick::Median,
            ..base
        };
        let sizes = Sizes {
            keys: 1_000_000,
            relay_lookups: 20_000,
            cluster_keys: 10_000,
            cluster_threads: [1, 16],
        };
        (cpu, socket, sizes)
    };
    print_header(
        "ring (ringkv::Ring in process, then LocalCluster over 127.0.0.1)",
        &cpu_plan,
    );
    println!(
        "# method: relay, balance and movement figures are counts over seeded random keys, not \
         timings; end-to-end figures are the median of {} runs of at least {:.1} s",
        socket_plan.runs,
        socket_plan.run_time.as_secs_f64()
    );
    println!(
        "# data: {} keys of 10-20 random lowercase letters (seeded), hashed once; nodes are \
         named 10.0.X.Y:7001; new nodes are appended to the node list",
        sizes.keys
    );
    println!(
        "# placements: hashedK = K hashed positions per node (hashed1 is the paper), \
         partitionsC = C equal partitions; the default is {}",
        short_name(DEFAULT_PLACEMENT)
    );

    let keys = paper_keys(sizes.keys);
    let positions: Vec<Position> = keys.iter().map(|k| key_position(k)).collect();

    relay_table(&positions[..sizes.relay_lookups]);
    let spread = spread_tables(&positions);
    let timings = timing_table(&cpu_plan, &keys, &positions);
    cluster_runs(&socket_plan, &sizes, &keys);
    choose_default(&spread, &timings);
    println!("# whole run: {:.1} s", started.elapsed().as_secs_f64());
}

/// `count` keys of 10 to 20 random lowercase letters, the shape of the paper's test data.
fn paper_keys(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::seeded(0x5eed_5eed);
    (0..count)
        .map(|_| {
            let len = rng.between(10, 20) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect()
}

fn node_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("10.0.{}.{}:7001", i / 256, i % 256))
        .collect()
}

fn build(nodes: usize, placement: Placement, routing: Routing) -> Ring {
    Ring::new(View::new(1, routing, placement, 1, node_names(nodes)))
        .unwrap_or_else(|e| panic!("a ring of {nodes} nodes with {placement}: {e}"))
}

fn short_name(placement: Placement) -> String {
    match placement {
        Placement::Hashed { per_node } => format!("hashed{per_node}"),
        Placement::Partitions { count } => format!("partitions{count}"),
    }
}

/// One table row: a label, then right-aligned cells.
fn print_row(label: &str, cells: &[String]) {
    let mut line = format!("{label:<26}");
    for cell in cells {
        line.push_str(&format!(" {cell:>11}"));
    }
    println!("{}", line.trim_end());
}

fn node_heading(label: &str, nodes: &[usize]) {
    let cells: Vec<String> = nodes.iter().map(|n| format!("N={n}")).collect();
    print_row(&format!("# {label}"), &cells);
}

/// Relays a request for `position` takes from `start` to the owner, walking `next_hop`.
fn relays(ring: &Ring, start: usize, position: &Position) -> usize {
    let owner = ring.owner(position);
    let mut at = start;
    let mut taken = 0;
    while at != owner {
        at = ring.next_hop(at, position);
        taken += 1;
        assert!(
            taken <= ring.relay_bound(),
            "{} routing over {} nodes loops",
            ring.view().routing,
            ring.len()
        );
    }
    taken
}

/// Mean and most relays per lookup, from a random entry node and from the owner.
fn relay_table(positions: &[Position]) {
    println!();
    println!(
        "# relays per lookup: mean/max over {} keys, each from a random entry node \
         (the paper's entry), walking Ring::next_hop to Ring::owner",
        positions.len()
    );
    node_heading("placement routing", &RELAY_NODES);
    // Relays total, most relays and walks from the key's owner, per ring size.
    let mut from_owner = vec![(0usize, 0usize, 0usize); RELAY_NODES.len()];
    for placement in [Placement::Hashed { per_node: 1 }, DEFAULT_PLACEMENT] {
        for routing in [Routing::Successor, Routing::Finger, Routing::Direct] {
            let mut cells = Vec::new();
            for (column, &nodes) in RELAY_NODES.iter().enumerate() {
                let ring = build(nodes, placement, routing);
                let mut rng = Rng::seeded(0xe7_u64 << 32 | nodes as u64);
                let (mut total, mut most) = (0usize, 0usize);
                for position in positions {
                    let taken = relays(&ring, rng.below(nodes as u64) as usize, position);
                    total += taken;
                    most = most.max(taken);
                    let owned = relays(&ring, ring.owner(position), position);
                    from_owner[column].0 += owned;
                    from_owner[column].1 = from_owner[column].1.max(owned);
                    from_owner[column].2 += 1;
                }
                cells.push(format!(
                    "{:.2}/{most}",
                    total as f64 / positions.len() as f64
                ));
            }
            print_row(&format!("{} {routing}", short_name(placement)), &cells);
        }
    }
    let owner_cells: Vec<String> = from_owner
        .iter()
        .map(|&(total, most, walks)| format!("{:.2}/{most}", total as f64 / walks as f64))
        .collect();
    print_row("owner entry, every row", &owner_cells);
    let targets = |f: &dyn Fn(f64) -> String| -> Vec<String> {
        RELAY_NODES.iter().map(|&n| f(n as f64)).collect()
    };
    print_row("# target direct max", &targets(&|_| "<= 1".to_string()));
    print_row(
        "# target finger mean",
        &targets(&|n| format!("<= {:.2}", 0.5 * n.log2() + 0.5)),
    );
    print_row(
        "# target successor mean",
        &targets(&|n| format!("~ {:.0}", n / 2.0)),
    );
}

/// Balance and movement of one placement at each of [`BALANCE_NODES`].
struct Spread {
    placement: Placement,
    /// Most keys on one node over the mean number of keys per node.
    keys_max_over_mean: Vec<f64>,
    /// The same for the share of the key space, exact (no sampling noise).
    share_max_over_mean: Vec<f64>,
    /// Fraction of keys whose owner changes from N to N+1 nodes, over 1/(N+1).
    moved_over_ideal: Vec<f64>,
    /// Keys that changed owner but not to the new node; consistent placement keeps this 0.
    moved_between_old_nodes: u64,
}

fn spread_tables(positions: &[Position]) -> Vec<Spread> {
    // The counts do not depend on the order of the keys, and looking them up in ring order
    // keeps each binary search in cache.
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    let spread: Vec<Spread> = PLACEMENTS
        .iter()
        .map(|&placement| spread_of(placement, &sorted))
        .collect();

    println!();
    println!(
        "# balance: most-loaded node / mean, over {} keys (the design aims for <= {BALANCE_AIM} \
         at {AIM_NODES} nodes; the paper's run: 2.24)",
        positions.len()
    );
    node_heading("placement", &BALANCE_NODES);
    for s in &spread {
        print_row(&short_name(s.placement), &fixed(&s.keys_max_over_mean, 3));
    }
    println!();
    println!(
        "# balance without sampling noise: largest share of the key space / mean share \
         (Ring::shares)"
    );
    node_heading("placement", &BALANCE_NODES);
    for s in &spread {
        print_row(&short_name(s.placement), &fixed(&s.share_max_over_mean, 3));
    }
    println!();
    println!(
        "# keys moved when a node joins (N -> N+1, appended), as a multiple of the ideal \
         1/(N+1), over {} keys",
        positions.len()
    );
    node_heading("placement", &BALANCE_NODES);
    for s in &spread {
        print_row(&short_name(s.placement), &fixed(&s.moved_over_ideal, 2));
    }
    let strays: u64 = spread.iter().map(|s| s.moved_between_old_nodes).sum();
    println!(
        "moved_between_old_nodes: {strays} keys (a join should only move keys to the new node)"
    );
    spread
}

fn spread_of(placement: Placement, sorted: &[Position]) -> Spread {
    let keys = sorted.len() as f64;
    let mut spread = Spread {
        placement,
        keys_max_over_mean: Vec::new(),
        share_max_over_mean: Vec::new(),
        moved_over_ideal: Vec::new(),
        moved_between_old_nodes: 0,
    };
    for &nodes in &BALANCE_NODES {
        let before = build(nodes, placement, Routing::Direct);
        let after = build(nodes + 1, placement, Routing::Direct);
        let mut held = vec![0u64; nodes];
        let mut moved = 0u64;
        for position in sorted {
            let owner = before.owner(position);
            held[owner] += 1;
            let new_owner = after.owner(position);
            if new_owner != owner {
                moved += 1;
                if new_owner != nodes {
                    spread.moved_between_old_nodes += 1;
                }
            }
        }
        let most = held.iter().copied().max().unwrap_or(0);
        spread
            .keys_max_over_mean
            .push(most as f64 * nodes as f64 / keys);
        let largest_share = before.shares().into_iter().fold(0.0, f64::max);
        spread
            .share_max_over_mean
            .push(largest_share * nodes as f64);
        spread
            .moved_over_ideal
            .push(moved as f64 / keys * (nodes + 1) as f64);
    }
    spread
}

fn fixed(values: &[f64], decimals: usize) -> Vec<String> {
    values.iter().map(|v| format!("{v:.decimals$}")).collect()
}

/// What a lookup and a build cost for one placement at [`TIMING_NODES`] nodes.
struct Timing {
    placement: Placement,
    points: usize,
    build_ms: f64,
}

fn timing_table(plan: &Plan, keys: &[Vec<u8>], positions: &[Position]) -> Vec<Timing> {
    println!();
    println!(
        "# lookup and build cost at {TIMING_NODES} nodes: owner_of_key hashes the key (SHA-1) \
         then looks it up, owner looks up a precomputed position; keys in random order"
    );
    print_row(
        "# placement",
        &[
            "points".into(),
            "key ns".into(),
            "position ns".into(),
            "build ms".into(),
        ],
    );
    // Enough keys to leave the caches, few enough to be quick to hash.
    let sample = keys.len().min(100_000);
    let (keys, positions) = (&keys[..sample], &positions[..sample]);
    let mut timings = Vec::new();
    for placement in PLACEMENTS {
        let ring = build(TIMING_NODES, placement, Routing::Direct);
        let per_key = lookup_ns(plan, |at| {
            black_box(ring.owner_of_key(black_box(&keys[at % keys.len()])));
        });
        let per_position = lookup_ns(plan, |at| {
            black_box(ring.owner(black_box(&positions[at % positions.len()])));
        });
        let builds = plan.measure(|| {
            run_threads(vec![()], plan.run_time, |_| {
                black_box(build(TIMING_NODES, placement, Routing::Direct));
                1
            })
        });
        let timing = Timing {
            placement,
            points: ring.point_count(),
            build_ms: 1e3 / builds.rate(),
        };
        print_row(
            &short_name(placement),
            &[
                timing.points.to_string(),
                format!("{per_key:.0}"),
                format!("{per_position:.0}"),
                format!("{:.2}", timing.build_ms),
            ],
        );
        timings.push(timing);
    }
    timings
}

/// Nanoseconds per call of `lookup`, which is given a running index to pick its input with.
fn lookup_ns(plan: &Plan, lookup: impl Fn(usize) + Sync) -> f64 {
    let run = plan.measure(|| {
        run_threads(vec![0usize], plan.run_time, |next: &mut usize| {
            for at in *next..*next + BATCH {
                lookup(at);
            }
            *next += BATCH;
            BATCH as u64
        })
    });
    1e9 / run.rate()
}

/// The routing modes end to end: a LocalCluster of [`CLUSTER_BACKENDS`] backends per mode.
fn cluster_runs(plan: &Plan, sizes: &Sizes, keys: &[Vec<u8>]) {
    let paper = FrontendConfig::default().paper();
    let modes = [
        ("paper", paper.clone()),
        (
            "random_finger",
            FrontendConfig {
                routing: Routing::Finger,
                ..paper.clone()
            },
        ),
        (
            "random_direct",
            FrontendConfig {
                routing: Routing::Direct,
                ..paper
            },
        ),
        ("owner_direct", FrontendConfig::default()),
    ];
    println!();
    println!(
        "# end to end: {CLUSTER_BACKENDS} backends and a frontend in this process on 127.0.0.1, \
         {} preloaded keys, {VALUE_LEN}-byte values; each client thread has one connection and \
         one request in flight; latency from send to answer; relays from each answer's hop count",
        sizes.cluster_keys
    );
    for (name, config) in &modes {
        println!(
            "# config {name}: entry {}, {} routing, {}",
            config.entry, config.routing, config.placement
        );
    }
    let keys = &keys[..sizes.cluster_keys];
    for (name, config) in modes {
        let mut cluster = LocalCluster::start(CLUSTER_BACKENDS, BackendConfig::default(), config)
            .expect("the local cluster starts");
        let addr = cluster.frontend_addr().to_string();
        preload(&addr, keys, 100);
        for op in [Op::Put, Op::Get] {
            for threads in sizes.cluster_threads {
                let run = plan.measure(|| {
                    let workers = (0..threads)
                        .map(|t| Worker::new(&addr, 0x7e_u64 << 32 | t as u64))
                        .collect();
                    run_threads(workers, plan.run_time, |w: &mut Worker| w.one(op, keys))
                        .map_states(Worker::finish)
                });
                print_run(
                    &format!("ring_e2e_{name}_{}_{threads}t", op.name()),
                    &run,
                    true,
                );
            }
        }
        cluster.shutdown();
    }
}

/// Picks, from the figures above, the placement they support as the default: it must meet the
/// design's balance aim at [`AIM_NODES`] nodes and move at most [`MOVED_AIM`] times the ideal
/// when a node joins; among those that do, the one that stays within both at the most ring sizes
/// of the tables (by exact share, since with many nodes the key counts are dominated by
/// sampling noise), then the one with the fewest points (cheapest to build, hold and search).
fn choose_default(spread: &[Spread], timings: &[Timing]) {
    let aim = BALANCE_NODES
        .iter()
        .position(|&n| n == AIM_NODES)
        .expect("the aim's ring size is in the table");
    let qualifies = |s: &&Spread| {
        s.keys_max_over_mean[aim] <= BALANCE_AIM && s.moved_over_ideal[aim] <= MOVED_AIM
    };
    let sizes_within = |s: &Spread| {
        s.share_max_over_mean
            .iter()
            .zip(&s.moved_over_ideal)
            .filter(|&(&share, &moved)| share <= BALANCE_AIM && moved <= MOVED_AIM)
            .count()
    };
    let points = |s: &Spread| {
        timings
            .iter()
            .find(|t| t.placement == s.placement)
            .map_or(usize::MAX, |t| t.points)
    };
    let passing: Vec<&Spread> = spread.iter().filter(qualifies).collect();
    println!();
    println!(
        "# meeting max/mean <= {BALANCE_AIM} at {AIM_NODES} nodes and moved/ideal <= {MOVED_AIM} \
         at {AIM_NODES} -> {}: {}",
        AIM_NODES + 1,
        if passing.is_empty() {
            "none".to_string()
        } else {
            passing
                .iter()
                .map(|s| {
                    format!(
                        "{} (within both at {} of {} sizes, {} points at {TIMING_NODES} nodes)",
                        short_name(s.placement),
                        sizes_within(s),
                        BALANCE_NODES.len(),
                        points(s)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!(
        "# choice among them: within both aims (balance by exact share) at the most ring sizes \
         of the tables, then the fewest points"
    );
    let chosen = passing
        .iter()
        .max_by_key(|s| (sizes_within(s), std::cmp::Reverse(points(s))));
    match chosen {
        Some(s) => {
            let build_ms = timings
                .iter()
                .find(|t| t.placement == s.placement)
                .map_or(f64::NAN, |t| t.build_ms);
            println!(
                "chosen default: {} (max/mean {:.3} at {AIM_NODES} nodes, moved/ideal {:.2} at \
                 {AIM_NODES} -> {}, within both at {} of {} ring sizes up to {}, builds in {:.2} \
                 ms at {TIMING_NODES} nodes); DEFAULT_PLACEMENT is {}{}",
                short_name(s.placement),
                s.keys_max_over_mean[aim],
                s.moved_over_ideal[aim],
                AIM_NODES + 1,
                sizes_within(s),
                BALANCE_NODES.len(),
                BALANCE_NODES[BALANCE_NODES.len() - 1],
                build_ms,
                short_name(DEFAULT_PLACEMENT),
                if s.placement == DEFAULT_PLACEMENT {
                    ", the same"
                } else {
                    ", which these figures do not pick"
                }
            );
        }
        None => println!(
            "chosen default: none of the placements meets both aims at {AIM_NODES} nodes; \
             DEFAULT_PLACEMENT is {}",
            short_name(DEFAULT_PLACEMENT)
        ),
    }
}
