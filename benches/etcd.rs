//! ringkv keeping three copies of every key against etcd 3.4 with three members, on this
//! machine: PUT and GET throughput and latency, 50 clients with one request in flight each,
//! 32-byte values, uniform random keys out of 10,000 preloaded into both.
//!
//! - `etcd`: three `etcd` processes, each with its own data directory and etcd's defaults: a
//!   write is acknowledged once a majority of the members has it in its fsynced log; a read is
//!   linearizable (etcd's default, a quorum read). It is driven through etcd's HTTP/JSON gateway
//!   (`POST /v3/kv/put`, `POST /v3/kv/range`), each client keeping one connection open to one
//!   member and the clients spread evenly over the members, as etcd's own client spreads them.
//!   The gateway hands each request to etcd's gRPC server inside the same process, so etcd
//!   does a little more per request here than behind a gRPC client, and the HTTP clients cost
//!   this process more than ringkv's binary ones: both count against etcd.
//! - `ringkv_fsync_always`: a `LocalCluster` of three backends keeping three copies, its logs
//!   in a data directory, `--fsync always`: a PUT is acknowledged once every member of its chain
//!   has it in its fsynced log (all three, where etcd waits for two). A GET is answered by the
//!   chain's tail, which is linearizable in chain replication.
//! - `ringkv_fsync_everysec`: the same with ringkv's default fsync policy: acknowledged once
//!   every member has it in its log, on disk within a second.
//!
//! The three run in rounds, the order rotating from round to round; each figure is the median
//! round's. The ratios below compare ringkv with the same promise as etcd's (`fsync always`).
//!
//! etcd is the `etcd` program on the PATH, or the one `ETCD_BIN` names; without one the benchmark
//! says so and stops (Debian: `apt-get install etcd-server`; `ETCD=1 bash
//! benches/compare-redis.sh` installs it and runs this).

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{print_header, run_threads, Measured, Pick, Plan, Scratch};
use ringkv::rng::Rng;
use ringkv::{BackendConfig, FrontendConfig, LocalCluster};
use traffic::{latency_histogram, preload, print_run, Op, Seen, Worker, VALUE_LEN};

const MEMBERS: usize = 3;
const CLIENTS: usize = 50;
const KEYS: usize = 10_000;

fn main() {
    let quick = Plan::from_env(Pick::Median).quick;
    let plan = if quick {
        Plan::from_env(Pick::Median)
    } else {
        Plan {
            quick,
            run_time: Duration::from_secs(3),
            runs: 3,
            pick: Pick::Median,
        }
    };
    print_header(
        "etcd (three etcd members against ringkv with three copies)",
        &plan,
    );
    let Some(etcd) = etcd_program() else {
        println!(
            "# etcd not found: set ETCD_BIN to its path or put it on the PATH (Debian: apt-get \
             install etcd-server); nothing measured"
        );
        return;
    };
    println!("# etcd: {} ({})", etcd.display(), etcd_version(&etcd));
    println!(
        "# data: {CLIENTS} clients with one request in flight each, {KEYS} preloaded keys of 16 \
         bytes, {VALUE_LEN}-byte values, uniform random keys; latency is per request"
    );
    println!(
        "# targets: etcd ({MEMBERS} members, defaults, HTTP/JSON gateway), \
         ringkv_fsync_always and ringkv_fsync_everysec ({MEMBERS} backends, 3 copies, \
         a data directory); rounds interleaved, the order rotating"
    );

    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("key-{i:012}").into_bytes())
        .collect();
    let scratch = Scratch::new("etcd");
    let etcd_cluster = EtcdCluster::start(&etcd, &scratch.0.join("etcd"));
    let etcd_keys = EtcdKeys::new(&keys);
    etcd_preload(&etcd_cluster, &etcd_keys);
    let ringkv = |name: &str, fsync| {
        let backend = BackendConfig {
            data_dir: Some(scratch.0.join(name)),
            fsync,
            ..BackendConfig::default()
        };
        let frontend = FrontendConfig {
            replicas: Some(3),
            ..FrontendConfig::default()
        };
        let cluster = LocalCluster::start(MEMBERS, backend, frontend).expect("ringkv starts");
        preload(&cluster.frontend_addr().to_string(), &keys, 100);
        cluster
    };
    let always = ringkv("ringkv-always", ringkv::wal::FsyncPolicy::Always);
    let everysec = ringkv("ringkv-everysec", ringkv::wal::FsyncPolicy::EverySec);

    const TARGETS: [&str; 3] = ["etcd", "ringkv_fsync_always", "ringkv_fsync_everysec"];
    // runs[target][op] holds one run per round.
    let mut runs: Vec<[Vec<Measured<Seen>>; 2]> =
        TARGETS.iter().map(|_| [vec![], vec![]]).collect();
    for round in 0..plan.runs {
        for turn in 0..TARGETS.len() {
            let target = (round + turn) % TARGETS.len();
            for (slot, op) in [Op::Put, Op::Get].into_iter().enumerate() {
                let seed = (round as u64) << 40 | (target as u64) << 32;
                let run = match target {
                    0 => {
                        let clients = (0..CLIENTS)
                            .map(|c| EtcdClient::new(&etcd_cluster, c, seed | c as u64))
                            .collect();
                        run_threads(clients, plan.run_time, |c: &mut EtcdClient| {
                            c.one(op, &etcd_keys)
                        })
                        .map_states(|c| c.seen)
                    }
                    _ => {
                        let cluster = if target == 1 { &always } else { &everysec };
                        let addr = cluster.frontend_addr().to_string();
                        let clients = (0..CLIENTS)
                            .map(|c| Worker::new(&addr, seed | c as u64))
                            .collect();
                        run_threads(clients, plan.run_time, |w: &mut Worker| w.one(op, &keys))
                            .map_states(Worker::finish)
                    }
                };
                runs[target][slot].push(run);
            }
        }
    }

    let mut medians: Vec<[Figures; 2]> = Vec::new();
    for (target, name) in TARGETS.iter().enumerate() {
        let mut figures = [Figures::default(); 2];
        for (slot, op) in [Op::Put, Op::Get].into_iter().enumerate() {
            let mut done = std::mem::take(&mut runs[target][slot]);
            done.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let median = done.swap_remove(done.len() / 2);
            print_run(
                &format!("etcd_compare_{name}_{}_50t", op.name()),
                &median,
                false,
            );
            figures[slot] = Figures::of(&median);
        }
        medians.push(figures);
    }
    for (slot, op) in [Op::Put, Op::Get].into_iter().enumerate() {
        let (etcd, ringkv) = (medians[0][slot], medians[1][slot]);
        println!(
            "etcd_compare_ratio_{}_rate: {:.2} ringkv_fsync_always / etcd",
            op.name(),
            ringkv.rate / etcd.rate
        );
        println!(
            "etcd_compare_ratio_{}_p99: {:.2} ringkv_fsync_always / etcd",
            op.name(),
            ringkv.p99_ns / etcd.p99_ns
        );
    }
}

/// What the ratios are made of: requests per second and the 99th percentile's nanoseconds.
#[derive(Clone, Copy, Default)]
struct Figures {
    rate: f64,
    p99_ns: f64,
}

impl Figures {
    fn of(run: &Measured<Seen>) -> Figures {
        let mut latency = latency_histogram();
        for seen in &run.states {
            latency
                .add(&seen.latency)
                .expect("histograms of equal bounds");
        }
        Figures {
            rate: run.rate(),
            p99_ns: latency.value_at_quantile(0.99) as f64,
        }
    }
}

fn etcd_program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

fn etcd_version(etcd: &Path) -> String {
    Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// Three etcd members on loopback, stopped when dropped.
struct EtcdCluster {
    members: Vec<Child>,
    client_urls: Vec<String>,
}

impl EtcdCluster {
    fn start(etcd: &Path, dir: &Path) -> EtcdCluster {
        // etcd must be told every member's peer address before any starts, so the ports are
        // picked by binding port 0 and letting go just before etcd binds them.
        let listeners: Vec<TcpListener> = (0..2 * MEMBERS)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let url = |l: &TcpListener| format!("http://{}", l.local_addr().expect("a bound port"));
        let client_urls: Vec<String> = listeners[..MEMBERS].iter().map(url).collect();
        let peer_urls: Vec<String> = listeners[MEMBERS..].iter().map(url).collect();
        drop(listeners);
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(i, peer)| format!("m{i}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let data = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&data).expect("an etcd data directory");
            let log = std::fs::File::create(data.with_extension("log")).expect("an etcd log");
            let child = Command::new(etcd)
                .arg(format!("--name=m{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={}", client_urls[i]))
                .arg(format!("--advertise-client-urls={}", client_urls[i]))
                .arg(format!("--listen-peer-urls={}", peer_urls[i]))
                .arg(format!("--initial-advertise-peer-urls={}", peer_urls[i]))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=ringkv-bench")
                .arg("--log-level=error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd starts");
            members.push(child);
        }
        let cluster = EtcdCluster {
            members,
            client_urls,
        };
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every member says it is healthy (it has a leader and can commit).
    fn wait_healthy(&self) {
        let agent = http_agent();
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in &self.client_urls {
            loop {
                let healthy = agent
                    .get(format!("{url}/health"))
                    .call()
                    .ok()
                    .and_then(|mut answer| answer.body_mut().read_to_string().ok())
                    .is_some_and(|body| body.contains(r#""health":"true""#));
                if healthy {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {url} was not healthy within 30 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

/// The keys and the value as etcd's JSON wants them (base64).
struct EtcdKeys {
    keys: Vec<String>,
    value: String,
}

impl EtcdKeys {
    fn new(keys: &[Vec<u8>]) -> EtcdKeys {
        let b64 = base64::engine::general_purpose::STANDARD;
        EtcdKeys {
            keys: keys.iter().map(|k| b64.encode(k)).collect(),
            value: b64.encode([b'w'; VALUE_LEN]),
        }
    }
}

/// One client of one etcd member over one kept-alive HTTP connection.
struct EtcdClient {
    agent: ureq::Agent,
    base: String,
    rng: Rng,
    seen: Seen,
}

impl EtcdClient {
    fn new(cluster: &EtcdCluster, index: usize, seed: u64) -> EtcdClient {
        EtcdClient {
            agent: http_agent(),
            base: cluster.client_urls[index % cluster.client_urls.len()].clone(),
            rng: Rng::seeded(seed),
            seen: Seen {
                latency: latency_histogram(),
                relays: 0,
                requests: 0,
            },
        }
    }

    fn put(&self, key: &str, value: &str) {
        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
        self.agent
            .post(format!("{}/v3/kv/put", self.base))
            .header("content-type", "application/json")
            .send(body.as_str())
            .and_then(|mut answer| answer.body_mut().read_to_string())
            .expect("an etcd put");
    }

    /// One PUT or GET of a random key, timed; returns the number of requests made (1).
    fn one(&mut self, op: Op, keys: &EtcdKeys) -> u64 {
        let key = &keys.keys[self.rng.below(keys.keys.len() as u64) as usize];
        let sent = Instant::now();
        match op {
            Op::Put => self.put(key, &keys.value),
            Op::Get => {
                let body = self
                    .agent
                    .post(format!("{}/v3/kv/range", self.base))
                    .header("content-type", "application/json")
                    .send(format!(r#"{{"key":"{key}"}}"#).as_str())
                    .and_then(|mut answer| answer.body_mut().read_to_string())
                    .expect("an etcd range");
                assert!(body.contains(r#""kvs""#), "a preloaded key is missing");
            }
        }
        let took = sent.elapsed();
        self.seen
            .latency
            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        self.seen.requests += 1;
        1
    }
}

/// Stores every key in etcd, the keys dealt over the clients.
fn etcd_preload(cluster: &EtcdCluster, keys: &EtcdKeys) {
    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let client = EtcdClient::new(cluster, c, c as u64);
            scope.spawn(move || {
                for key in keys.keys.iter().skip(c).step_by(CLIENTS) {
                    client.put(key, &keys.value);
                }
            });
        }
    });
}
