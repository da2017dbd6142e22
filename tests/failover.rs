//! Replication and failover against real processes: every backend its own `ringkv backend`
//! process (`--fsync always`), a `ringkv frontend` keeping R = 3 copies, and eight client threads
//! writing, reading and deleting a shared set of keys while backends are killed with SIGKILL or
//! stopped with SIGSTOP. Every operation is recorded (invoke and return, value) and each key's
//! history is checked for linearizability with stateright's checker: an acknowledged write that
//! is lost, reverted, applied twice or overtaken by an older write fails the check.

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::Server;
use common::TempDir;
use linearizability::{Op, Outcome, Recorder};
use ringkv::{Client, ClientOptions, Ring};

/// Client threads of the load.
const CLIENTS: usize = 8;

/// Longest any one operation may take, failover included: detection within the keeper's ping
/// interval and two probe timeouts (0.2 s + 2 x 0.4 s), then the requests waiting on the dead
/// node are cut.
const SLOWEST_OPERATION: Duration = Duration::from_secs(5);

fn temp_dir(name: &str) -> TempDir {
    TempDir::new("failover", name)
}

/// Backends and a frontend, each a process of its own.
struct Cluster {
    backends: Vec<Option<Server>>,
    frontend: Server,
    addr: String,
    /// Each backend's address and data directory, to start it again where it was.
    backend_addrs: Vec<String>,
    dirs: Vec<TempDir>,
}

/// The cluster token file every process of a test cluster is given, in `dir`: view installs,
/// chain writes and state transfers all go through connections that presented it.
fn token_file(dir: &TempDir) -> String {
    let path = dir.path().join("cluster-token");
    std::fs::write(&path, "failover-test-token\n").unwrap();
    path.to_str().unwrap().to_string()
}

fn start_backend(listen: &str, dir: &TempDir) -> Server {
    let token = token_file(dir);
    Server::start(&[
        "backend",
        "--listen",
        listen,
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--fsync",
        "always",
        "--cluster-token-file",
        &token,
    ])
}

impl Cluster {
    fn start(n: usize, frontend_args: &[&str]) -> Cluster {
        let mut dirs = Vec::new();
        let mut backends = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let dir = temp_dir(&format!("b{i}"));
            let backend = start_backend("127.0.0.1:0", &dir);
            addrs.push(backend.listening("backend"));
            backends.push(Some(backend));
            dirs.push(dir);
        }
        let token = token_file(&dirs[0]);
        let mut args = vec![
            "frontend",
            "--listen",
            "127.0.0.1:0",
            "--cluster-token-file",
            &token,
        ];
        args.extend_from_slice(frontend_args);
        args.extend(addrs.iter().map(String::as_str));
        let frontend = Server::start(&args);
        let addr = frontend.listening("frontend");
        Cluster {
            backends,
            frontend,
            addr,
            backend_addrs: addrs,
            dirs,
        }
    }

    fn client(&self) -> Client {
        Client::connect_with(&self.addr, ClientOptions::default()).unwrap()
    }

    fn ring(&self) -> Ring {
        Ring::new(self.client().view().unwrap()).unwrap()
    }

    fn kill(&mut self, index: usize) {
        self.backends[index].take().expect("running").kill();
    }

    /// Starts a killed backend again, on its address and over its data directory.
    fn restart(&mut self, index: usize) {
        assert!(self.backends[index].is_none(), "backend {index} is running");
        let backend = start_backend(&self.backend_addrs[index], &self.dirs[index]);
        self.backends[index] = Some(backend);
    }

    /// Kills the frontend (SIGKILL) and starts another, on a new port, given the backends at
    /// `order` (indexes into the first list) and `frontend_args`.
    fn replace_frontend(&mut self, frontend_args: &[&str], order: &[usize]) {
        self.frontend.kill_now();
        let token = token_file(&self.dirs[0]);
        let mut args = vec![
            "frontend",
            "--listen",
            "127.0.0.1:0",
            "--cluster-token-file",
            &token,
        ];
        args.extend_from_slice(frontend_args);
        args.extend(order.iter().map(|&i| self.backend_addrs[i].as_str()));
        self.frontend = Server::start(&args);
        self.addr = self.frontend.listening("frontend");
    }

    /// A counter from backend `index`'s STATS.
    fn counter(&self, index: usize, name: &str) -> u64 {
        let mut c = Client::connect(&self.backend_addrs[index]).unwrap();
        c.stats().unwrap()[0].counter(name)
    }

    fn backend(&self, index: usize) -> &Server {
        self.backends[index].as_ref().expect("running")
    }

    /// Waits (bounded) until the frontend routes by a view where `pred` holds.
    fn wait_for_view(&self, what: &str, pred: impl Fn(&ringkv::View) -> bool) -> ringkv::View {
        let deadline = Instant::now() + common::BOUND;
        loop {
            let view = self.client().view().unwrap();
            if pred(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "no view where {what} within {:?}; last {view:?}; frontend log:\n{}",
                common::BOUND,
                self.frontend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A load of [`CLIENTS`] threads over `keys` until stopped, recording every operation.
struct Load {
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    acked_writes: Arc<AtomicU64>,
    successes: Arc<AtomicU64>,
    slowest: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, keys: Arc<Vec<Vec<u8>>>) -> Load {
        let recorder = Recorder::new();
        let stop = Arc::new(AtomicBool::new(false));
        let acked_writes = Arc::new(AtomicU64::new(0));
        let successes = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let threads = (0..CLIENTS)
            .map(|client| {
                let (addr, keys, recorder) =
                    (addr.to_string(), Arc::clone(&keys), recorder.clone());
                let (stop, acked_writes, successes, slowest) = (
                    Arc::clone(&stop),
                    Arc::clone(&acked_writes),
                    Arc::clone(&successes),
                    Arc::clone(&slowest),
                );
                std::thread::spawn(move || {
                    let mut rng = ringkv::rng::Rng::seeded(client as u64 + 1);
                    let mut conn: Option<Client> = None;
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = &keys[rng.below(keys.len() as u64) as usize];
                        let roll = rng.below(20);
                        seq += 1;
                        // Every value is unique: client and sequence number, so a write applied
                        // twice or out of order shows up as a value read at the wrong time.
                        let value = format!("c{client}-s{seq}").into_bytes();
                        let op = match roll {
                            0..=8 => Op::Put(value.clone()),
                            9..=17 => Op::Get,
                            _ => Op::Delete,
                        };
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match Client::connect_with(&addr, ClientOptions::default()) {
                                Ok(c) => conn.insert(c),
                                Err(_) => continue,
                            },
                        };
                        let started = Instant::now();
                        let pending = recorder.invoke(client, key, op.clone());
                        let outcome = match &op {
                            Op::Put(v) => c.put(key, v).map(|()| Outcome::Put),
                            Op::Get => c.get(key).map(Outcome::Get),
                            Op::Delete => c.delete(key).map(|found| Outcome::Delete { found }),
                        };
                        let took = started.elapsed().as_micros() as u64;
                        slowest.fetch_max(took, Ordering::Relaxed);
                        match outcome {
                            Ok(outcome) => {
                                if !matches!(op, Op::Get) {
                                    acked_writes.fetch_add(1, Ordering::Relaxed);
                                }
                                successes.fetch_add(1, Ordering::Relaxed);
                                recorder.complete(pending, outcome);
                            }
                            Err(e) => {
                                recorder.complete(pending, Outcome::Unknown);
                                if !matches!(e, ringkv::Error::Status { .. }) {
                                    conn = None;
                                }
                                // As a real client would: back off before trying again, rather
                                // than pile up operations whose outcome nobody knows.
                                std::thread::sleep(Duration::from_millis(25));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            recorder,
            stop,
            acked_writes,
            successes,
            slowest,
            threads,
        }
    }

    /// Waits (bounded) until `more` further operations have succeeded.
    fn wait_for_successes(&self, more: u64, cluster: &Cluster) {
        let target = self.successes.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.successes.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the load stalled: {} of {target} successes; frontend log:\n{}",
                self.successes.load(Ordering::Relaxed),
                cluster.frontend.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients, reads every key once more (recorded too) and checks the history.
    fn finish(self, cluster: &Cluster, keys: &[Vec<u8>]) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let mut c = cluster.client();
        for key in keys {
            let pending = self.recorder.invoke(CLIENTS, key, Op::Get);
            let value = c.get(key).unwrap_or_else(|e| {
                panic!(
                    "reading back {key:?} after the faults: {e}; frontend log:\n{}",
                    cluster.frontend.log()
                )
            });
            self.recorder.complete(pending, Outcome::Get(value));
        }
        let acked = self.acked_writes.load(Ordering::Relaxed);
        assert!(
            acked > 200,
            "only {acked} writes were acknowledged: the test proves little"
        );
        let slowest = Duration::from_micros(self.slowest.load(Ordering::Relaxed));
        assert!(
            slowest <= SLOWEST_OPERATION,
            "an operation took {slowest:?}; frontend log:\n{}",
            cluster.frontend.log()
        );
        self.recorder.check().unwrap_or_else(|e| {
            panic!(
                "not linearizable: {e}\nfrontend log:\n{}",
                cluster.frontend.log()
            )
        })
    }
}

fn keys(count: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (0..count)
            .map(|i| format!("key-{i}").into_bytes())
            .collect(),
    )
}

/// Keys whose chain is exactly `chain`.
fn keys_of_chain(ring: &Ring, chain: &[usize], count: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (0..)
            .map(|i| format!("chain-key-{i}").into_bytes())
            .filter(|k| ring.chain_of_key(k).members().collect::<Vec<_>>() == chain)
            .take(count)
            .collect(),
    )
}

#[test]
fn killing_any_two_of_four_backends_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    let keys = keys(48);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    cluster.kill(1);
    load.wait_for_successes(300, &cluster);
    cluster.kill(3);
    cluster.wait_for_view("two backends are down", |v| !v.is_up(1) && !v.is_up(3));
    load.wait_for_successes(500, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
}

/// Kills the chain member at `role` (0 head, 1 middle, 2 tail) of one chain while the load
/// works on that chain's keys only.
fn kill_chain_member(role: usize) {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    let ring = cluster.ring();
    let chain: Vec<usize> = ring.chain_of_key(b"anchor").members().collect();
    assert_eq!(chain.len(), 3);
    let keys = keys_of_chain(&ring, &chain, 64);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let victim = chain[role];
    cluster.kill(victim);
    cluster.wait_for_view("the victim is down", |v| !v.is_up(victim));
    // The first acknowledged write after the kill comes within the failover time.
    load.wait_for_successes(400, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("role {role}: {summary}");
}

#[test]
fn killing_the_head_of_a_chain_loses_nothing() {
    kill_chain_member(0);
}

#[test]
fn killing_the_middle_of_a_chain_loses_nothing() {
    kill_chain_member(1);
}

#[test]
fn killing_the_tail_of_a_chain_loses_nothing() {
    kill_chain_member(2);
}

#[test]
fn a_stopped_backend_is_marked_down_and_fenced_when_it_wakes() {
    let cluster = Cluster::start(4, &["--replicas", "3"]);
    let keys = keys(48);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let stopped = 2;
    cluster.backend(stopped).signal("STOP");
    let view = cluster.wait_for_view("the stopped backend is down", |v| !v.is_up(stopped));
    load.wait_for_successes(400, &cluster);
    cluster.backend(stopped).signal("CONT");
    // Awake, it is sent the view that marks it down: it holds that epoch, or is told so.
    let deadline = Instant::now() + common::BOUND;
    let woken = ringkv::Client::connect(&cluster_backend_addr(&view, stopped)).unwrap();
    let mut woken = woken;
    loop {
        let epoch = woken.view().map(|v| v.epoch).unwrap_or(0);
        if epoch >= view.epoch {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the woken backend never got the view"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    load.wait_for_successes(400, &cluster);
    // It comes back only through a copy: syncing first, then up at the tail of its chains.
    let back = cluster.wait_for_view("the woken backend is copied and up again", |v| {
        v.is_up(stopped)
    });
    assert!(back.since[stopped] > view.epoch, "{back:?}");
    load.wait_for_successes(400, &cluster);
    let summary = load.finish(&cluster, &keys);
    assert!(cluster.counter(stopped, "catchup_keys") > 0);
    eprintln!("{summary}");
}

fn cluster_backend_addr(view: &ringkv::View, index: usize) -> String {
    view.nodes[index].clone()
}

/// The race the issue found with one copy per key: a PUT of A that timed out on a stopped
/// backend sat in its socket buffer and was applied after a later PUT of B. Now the stopped
/// backend is marked down, the PUT of A fails fast, and whatever the woken backend does with A
/// happens under the old epoch, before it is marked up again: B, acknowledged after, wins.
#[test]
fn a_write_that_failed_on_a_stopped_backend_never_overwrites_a_later_one() {
    let cluster = Cluster::start(3, &["--replicas", "1"]);
    let ring = cluster.ring();
    let stopped = 0;
    let key = (0..)
        .map(|i| format!("late-{i}").into_bytes())
        .find(|k| ring.owner_of_key(k) == stopped)
        .unwrap();
    let mut c = cluster.client();
    c.put(&key, b"before").unwrap();
    cluster.backend(stopped).signal("STOP");
    let started = Instant::now();
    let a = c.put(&key, b"A");
    assert!(a.is_err(), "a PUT to a stopped backend was acknowledged");
    assert!(
        started.elapsed() < SLOWEST_OPERATION,
        "the PUT waited {:?}",
        started.elapsed()
    );
    cluster.wait_for_view("the stopped backend is down", |v| !v.is_up(stopped));
    cluster.backend(stopped).signal("CONT");
    // With one copy per key it comes back as it is, in a newer view.
    let view = cluster.wait_for_view("the woken backend is up again", |v| v.is_up(stopped));
    assert!(view.epoch >= 3, "{view:?}");
    let mut c = cluster.client();
    c.put(&key, b"B").unwrap();
    // Whatever is left of A in any buffer is refused for its epoch by now; B stays.
    for _ in 0..20 {
        assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"B"[..]));
    }
}

/// Eighty clients whose keys' chains hold a backend that is then stopped take every frontend
/// worker; a client of a key on healthy backends still gets its answers within the failover
/// time, not after the i/o timeout.
#[test]
fn a_hung_backend_does_not_hold_up_keys_on_healthy_backends() {
    let cluster = Cluster::start(4, &["--replicas", "3"]);
    let ring = cluster.ring();
    let stopped = 1;
    let (on_stopped, healthy): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (0..400)
        .map(|i| format!("hung-{i}").into_bytes())
        .partition(|k| ring.chain_of_key(k).members().any(|m| m == stopped));
    let healthy_key = healthy
        .first()
        .expect("a key away from the stopped node")
        .clone();
    let on_stopped = Arc::new(on_stopped);
    let stop = Arc::new(AtomicBool::new(false));
    let crowd: Vec<_> = (0..80)
        .map(|t| {
            let (addr, keys, stop) = (
                cluster.addr.clone(),
                Arc::clone(&on_stopped),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut c = Client::connect(&addr).unwrap();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 80;
                    let _ = c.put(&keys[i % keys.len()], b"crowd");
                }
            })
        })
        .collect();
    let mut c = cluster.client();
    c.put(&healthy_key, b"fine").unwrap();
    cluster.backend(stopped).signal("STOP");
    let started = Instant::now();
    let mut marked_down = false;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        assert_eq!(c.get(&healthy_key).unwrap().as_deref(), Some(&b"fine"[..]));
        slowest = slowest.max(asked.elapsed());
        marked_down |= !c.view().unwrap().is_up(stopped);
    }
    cluster.backend(stopped).signal("CONT");
    stop.store(true, Ordering::Relaxed);
    for thread in crowd {
        thread.join().unwrap();
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a GET of a key on healthy backends took {slowest:?}; frontend log:\n{}",
        cluster.frontend.log()
    );
    assert!(marked_down, "the stopped backend was never marked down");
}

/// A client pipelining more than one batch of writes of one key (the frontend sends the second
/// only when the first is answered) while the key's head is stopped (SIGSTOP): the first batch
/// waits for the view that marks the head down and is sent again under it, the second follows,
/// and the client gets every answer, in order, on the connection it opened; the last value
/// written is the one read back.
#[test]
fn a_pipeline_held_up_by_a_stopped_head_is_answered_in_full_on_its_connection() {
    let cluster = Cluster::start(4, &["--replicas", "3"]);
    let ring = cluster.ring();
    let key = b"pipelined-across-a-stop".to_vec();
    let head = ring.chain_of_key(&key).head().expect("a head");
    let mut c = cluster.client();
    c.put(&key, b"before").unwrap();
    // A batch holds at most 512 writes (PROTOCOL.md section 10).
    const BATCH: usize = 512;
    let requests: Vec<ringkv::Request> = (0..BATCH as u32 + 48)
        .map(|i| ringkv::Request::Put {
            key: key.clone(),
            value: i.to_be_bytes().to_vec(),
        })
        .collect();
    cluster.backend(head).signal("STOP");
    let replies = c.pipeline(&requests);
    cluster.backend(head).signal("CONT");
    let replies = replies.unwrap_or_else(|e| {
        panic!(
            "the pipeline failed: {e}; frontend log:\n{}",
            cluster.frontend.log()
        )
    });
    assert_eq!(replies.len(), requests.len());
    use ringkv::protocol::Status;
    for (i, reply) in replies.iter().enumerate() {
        match reply.status {
            Status::OK => {}
            // The first batch, sent again to the member that took the head's place less than
            // the dedup horizon after the cluster started: it cannot know whether the first
            // copy was applied (PROTOCOL.md 13.1), so it may have been, and is not now.
            Status::TOO_OLD if i < BATCH => {}
            _ => panic!("write {i}: {reply:?}"),
        }
    }
    // The batches after the first went under the new view: the last write is what is read.
    assert!(replies[BATCH..].iter().all(|r| r.status == Status::OK));
    let last = requests.len() as u32 - 1;
    assert_eq!(c.get(&key).unwrap(), Some(last.to_be_bytes().to_vec()));
}

/// A killed backend started again (same address, same data directory) is copied up to date
/// from its chains while the load goes on, and rejoins at their tails; then two other backends
/// are killed, so that some keys are left with the rejoined node's copy alone: every
/// acknowledged write is still read back, and the history stays linearizable.
#[test]
fn a_restarted_backend_is_copied_up_to_date_and_then_two_others_can_die() {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    let keys = keys(64);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let returning = 1;
    cluster.kill(returning);
    let down = cluster.wait_for_view("the killed backend is down", |v| !v.is_up(returning));
    // Writes it misses while it is down.
    load.wait_for_successes(400, &cluster);
    cluster.restart(returning);
    let back = cluster.wait_for_view("the restarted backend is up", |v| v.is_up(returning));
    assert!(back.since[returning] > down.epoch, "{back:?}");
    assert!(cluster.counter(returning, "catchup_keys") > 0);
    load.wait_for_successes(400, &cluster);
    cluster.kill(2);
    load.wait_for_successes(200, &cluster);
    cluster.kill(3);
    cluster.wait_for_view("two more backends are down", |v| !v.is_up(2) && !v.is_up(3));
    load.wait_for_successes(400, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
}

/// Every backend killed at once (a power cut) and started again: the keeper brings back first
/// a node that left its chains last, whose copy is complete, copies the others from it, and
/// every write acknowledged before the cut reads back.
#[test]
fn a_cluster_whose_backends_all_died_comes_back_with_every_acknowledged_write() {
    let mut cluster = Cluster::start(3, &["--replicas", "3"]);
    let keys = keys(48);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(400, &cluster);
    for node in 0..3 {
        cluster.kill(node);
    }
    cluster.wait_for_view("every backend is down", |v| (0..3).all(|n| !v.is_up(n)));
    for node in 0..3 {
        cluster.restart(node);
    }
    cluster.wait_for_view("every backend is up again", |v| (0..3).all(|n| v.is_up(n)));
    load.wait_for_successes(400, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
}

/// A node that died first holds the oldest copy: when every member of its chains is down it
/// must not come back on its own (reads would go back in time). It waits, down, until the node
/// that left last is back, and is then copied from it.
#[test]
fn the_member_that_died_first_waits_for_the_one_that_died_last() {
    let mut cluster = Cluster::start(3, &["--replicas", "3"]);
    let keys = keys(128);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(200, &cluster);
    cluster.kill(0);
    cluster.wait_for_view("the first backend is down", |v| !v.is_up(0));
    // Writes that only backends 1 and 2 hold.
    load.wait_for_successes(200, &cluster);
    cluster.kill(1);
    cluster.kill(2);
    cluster.wait_for_view("every backend is down", |v| (0..3).all(|n| !v.is_up(n)));
    cluster.restart(0);
    // It answers, but its copy is older than what the others acknowledged: it stays down.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let view = cluster.client().view().unwrap();
        assert_eq!(view.states[0], ringkv::NodeState::Down, "{view:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cluster
            .frontend
            .log()
            .contains("answers again but stays down"),
        "{}",
        cluster.frontend.log()
    );
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_for_view("every backend is up again", |v| (0..3).all(|n| v.is_up(n)));
    load.wait_for_successes(200, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
}

/// A PUT_ONCE or DELETE_ONCE of `key` as client `client`'s write `seq`, sent for the
/// `attempt`th time.
fn tagged(
    opcode: ringkv::protocol::Opcode,
    client: u64,
    seq: u64,
    attempt: u32,
    key: &[u8],
    value: &[u8],
) -> ringkv::protocol::Frame {
    let tag = ringkv::protocol::payload::WriteTag {
        client,
        seq,
        below: 0,
        attempt,
    };
    ringkv::protocol::Frame::request(opcode, seq, key.to_vec(), tag.prefix(value))
}

fn status_of(c: &mut Client, request: &ringkv::protocol::Frame) -> ringkv::protocol::Status {
    c.raw_call(request).unwrap().status
}

/// A tagged write sent again is answered with its first result and not applied twice: not
/// by the head that took it, and not by the member that takes over when that head dies.
#[test]
fn a_write_sent_again_is_applied_once_even_after_its_head_dies() {
    use ringkv::protocol::{Opcode, Status};
    let mut cluster = Cluster::start(3, &[]);
    let ring = cluster.ring();
    let key = b"sent-twice".to_vec();
    let head = ring.chain_of_key(&key).head().unwrap();
    let client_id = 0x5eed_0001;
    let mut c = cluster.client();
    let put_a = |attempt| tagged(Opcode::PUT_ONCE, client_id, 1, attempt, &key, b"A");
    let delete = |attempt| tagged(Opcode::DELETE_ONCE, client_id, 2, attempt, &key, b"");

    assert_eq!(status_of(&mut c, &put_a(1)), Status::OK);
    c.put(&key, b"B").unwrap();
    assert_eq!(status_of(&mut c, &put_a(2)), Status::OK, "the first result");
    assert_eq!(
        c.get(&key).unwrap().as_deref(),
        Some(&b"B"[..]),
        "A was applied again"
    );

    assert_eq!(status_of(&mut c, &delete(1)), Status::OK);
    assert_eq!(
        status_of(&mut c, &delete(2)),
        Status::OK,
        "a repeat says what the first found"
    );
    c.put(&key, b"C").unwrap();

    cluster.kill(head);
    cluster.wait_for_view("the head is down", |v| !v.is_up(head));
    let new_head = cluster.ring().chain_of_key(&key).head().unwrap();
    assert_ne!(new_head, head);
    let answered_before = cluster.counter(new_head, "retries_answered");
    assert_eq!(status_of(&mut c, &put_a(3)), Status::OK);
    assert_eq!(status_of(&mut c, &delete(3)), Status::OK);
    assert_eq!(
        c.get(&key).unwrap().as_deref(),
        Some(&b"C"[..]),
        "a retry undid C"
    );
    assert_eq!(
        cluster.counter(new_head, "retries_answered"),
        answered_before + 2,
        "the new head answered both from its memory"
    );

    // Below what the client said it will send again: refused, not applied.
    let mut late = tagged(Opcode::PUT_ONCE, client_id, 3, 1, &key, b"D");
    late.value = ringkv::protocol::payload::WriteTag {
        client: client_id,
        seq: 3,
        below: 10,
        attempt: 1,
    }
    .prefix(b"D");
    assert_eq!(status_of(&mut c, &late), Status::TOO_OLD);
    // A resend of a write the node has no record of, so soon after it started: it cannot
    // know whether an earlier copy was applied, so it refuses.
    let unknown = tagged(Opcode::PUT_ONCE, client_id + 1, 1, 2, &key, b"E");
    assert_eq!(status_of(&mut c, &unknown), Status::TOO_OLD);
    assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"C"[..]));
}

/// A tagged write whose chain fails under it (its tail hangs) is applied by the members before
/// the tail only. The frontend sends it again under the view without the tail; the head finds it
/// applied but not acknowledged, sends the key's value down the new chain and answers OK: the
/// client sees one success instead of an UNAVAILABLE that may or may not have taken effect.
#[test]
fn a_write_whose_tail_hangs_is_completed_by_the_frontend_retry() {
    use ringkv::protocol::{Opcode, Status};
    let cluster = Cluster::start(3, &[]);
    let ring = cluster.ring();
    let key = b"tail-hangs".to_vec();
    let chain: Vec<usize> = ring.chain_of_key(&key).members().collect();
    let (head, tail) = (chain[0], chain[2]);
    let mut c = cluster.client();
    c.put(&key, b"before").unwrap();
    cluster.backend(tail).signal("STOP");
    let started = Instant::now();
    let answer = c
        .raw_call(&tagged(Opcode::PUT_ONCE, 0x5eed_0002, 1, 1, &key, b"after"))
        .unwrap();
    assert_eq!(answer.status, Status::OK, "{}", answer.message());
    assert!(
        started.elapsed() < SLOWEST_OPERATION,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(cluster.counter(head, "retries_completed"), 1);
    assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"after"[..]));
    cluster.backend(tail).signal("CONT");
    cluster.wait_for_view("the tail is back", |v| v.is_up(tail));
    assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"after"[..]));
}

/// The cluster's membership is what its backends hold: a frontend started again, with the
/// backends listed in another order, or with one missing, takes up their view (its epoch, its
/// order, its copies per key, a node marked down) and says how its command line differs; no key
/// is hidden and the epochs go on from there.
#[test]
fn a_restarted_frontend_takes_up_the_view_the_backends_hold() {
    let mut cluster = Cluster::start(3, &[]);
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("kept-{i}").into_bytes()).collect();
    let mut c = cluster.client();
    for key in &keys {
        c.put(key, key).unwrap();
    }
    cluster.kill(2);
    let before = cluster.wait_for_view("backend 2 is down", |v| !v.is_up(2));

    cluster.replace_frontend(&[], &[1, 0]);
    let view = cluster.client().view().unwrap();
    assert_eq!(view.nodes, before.nodes, "the cluster's order and members");
    assert!(view.epoch >= before.epoch, "{view:?} after {before:?}");
    assert!(!view.is_up(2), "{view:?}");
    assert_eq!(view.replicas, 3);
    let log = cluster.frontend.log();
    assert!(
        log.contains(&format!("{} is a member", cluster.backend_addrs[2])),
        "{log}"
    );
    assert!(log.contains("serving it"), "{log}");
    let mut c = cluster.client();
    for key in &keys {
        assert_eq!(c.get(key).unwrap().as_deref(), Some(&key[..]), "{key:?}");
    }

    // The node that was down comes back through the new frontend's keeper, copied up to date.
    cluster.restart(2);
    let back = cluster.wait_for_view("backend 2 is back", |v| v.is_up(2));
    assert!(back.epoch > view.epoch);
    c.put(b"after", b"restart").unwrap();
    cluster.kill(0);
    cluster.kill(1);
    cluster.wait_for_view("only backend 2 is up", |v| !v.is_up(0) && !v.is_up(1));
    let mut c = cluster.client();
    for key in &keys {
        assert_eq!(c.get(key).unwrap().as_deref(), Some(&key[..]), "{key:?}");
    }
    assert_eq!(c.get(b"after").unwrap().as_deref(), Some(&b"restart"[..]));
}

/// Waits (bounded) until the frontend at `addr` routes by a view of at least `epoch`.
fn wait_for_epoch(addr: &str, epoch: u64, log: impl Fn() -> String) -> ringkv::View {
    let deadline = Instant::now() + common::BOUND;
    loop {
        let view = Client::connect(addr).unwrap().view().unwrap();
        if view.epoch >= epoch {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the frontend at {addr} never reached epoch {epoch}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second frontend started with `--follow` serves the same keys beside the view keeper, takes
/// up each view the keeper publishes (here: a backend marked down), and keeps serving when the
/// keeper's frontend is gone.
#[test]
fn a_following_frontend_serves_beside_the_keeper_and_follows_its_views() {
    let mut cluster = Cluster::start(3, &[]);
    let token = token_file(&cluster.dirs[0]);
    let mut args = vec![
        "frontend",
        "--listen",
        "127.0.0.1:0",
        "--follow",
        "--cluster-token-file",
        &token,
    ];
    args.extend(cluster.backend_addrs.iter().rev().map(String::as_str));
    let follower = Server::start(&args);
    let follower_addr = follower.listening("frontend");
    let mut through_follower = Client::connect(&follower_addr).unwrap();
    let mut through_keeper = cluster.client();
    let key = |i: usize| format!("both-{i}").into_bytes();
    for i in 0..100 {
        through_keeper.put(&key(i), b"one").unwrap();
        through_follower.put(&key(i + 100), b"two").unwrap();
    }
    for i in 0..100 {
        assert_eq!(
            through_follower.get(&key(i)).unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            through_keeper.get(&key(i + 100)).unwrap().as_deref(),
            Some(&b"two"[..])
        );
    }

    cluster.kill(1);
    let down = cluster.wait_for_view("backend 1 is down", |v| !v.is_up(1));
    let followed = wait_for_epoch(&follower_addr, down.epoch, || follower.log());
    assert!(!followed.is_up(1), "{followed:?}");
    for i in 0..200 {
        through_follower.put(&key(i), b"three").unwrap();
    }
    for i in 0..200 {
        assert_eq!(
            through_keeper.get(&key(i)).unwrap().as_deref(),
            Some(&b"three"[..])
        );
    }

    // Without the keeper, the follower still serves by the last view it learned.
    cluster.frontend.kill_now();
    for i in 0..200 {
        through_follower.put(&key(i), b"four").unwrap();
        assert_eq!(
            through_follower.get(&key(i)).unwrap().as_deref(),
            Some(&b"four"[..])
        );
    }
    let log = follower.log();
    assert!(
        log.contains(&format!("following view epoch {}", down.epoch)),
        "{log}"
    );
    assert!(
        !log.contains("publishing view"),
        "a follower published a view:\n{log}"
    );
}

// Membership at run time: joins and leaves move partitions while the load runs.

/// Begins `change` through the frontend (presenting the cluster token) and waits, bounded,
/// until it is done.
fn change_and_wait(cluster: &Cluster, change: ringkv::Change) -> ringkv::View {
    let mut c = admin(cluster);
    let begun = match &change {
        ringkv::Change::Join(addr) => c.join(addr),
        ringkv::Change::Leave(addr) => c.leave(addr),
    }
    .unwrap_or_else(|e| panic!("{change}: {e}; frontend log:\n{}", cluster.frontend.log()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outcome = c.change_outcome(&change, begun).unwrap();
        match outcome {
            Some(Ok(())) => return c.view().unwrap(),
            Some(Err(e)) => panic!("{change}: {e}; frontend log:\n{}", cluster.frontend.log()),
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "the {change} did not finish; frontend log:\n{}",
            cluster.frontend.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Per backend of `view`: the keys it heads, and all it stores (as head or as a copy).
fn stored_per_node(view: &ringkv::View) -> Vec<(u64, u64)> {
    view.nodes
        .iter()
        .map(|addr| {
            let report = Client::connect(addr).unwrap().size().unwrap().remove(0);
            let heads = report.counter("keys");
            (heads, heads + report.counter("replica_keys"))
        })
        .collect()
}

/// Whether every figure is within `share` of their mean.
fn within_of_the_mean(share: f64, figures: impl Iterator<Item = u64> + Clone) -> bool {
    let count = figures.clone().count().max(1) as f64;
    let mean = figures.clone().sum::<u64>() as f64 / count;
    figures
        .into_iter()
        .all(|f| (f as f64 - mean).abs() <= share * mean)
}

/// `count` keys with values of varied lengths, stored through the frontend.
fn load_bulk(cluster: &Cluster, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let bulk: Vec<(Vec<u8>, Vec<u8>)> = (0..count)
        .map(|i| {
            let key = format!("bulk-{i}").into_bytes();
            let value = format!("value-{i}-{}", "v".repeat(i % 50)).into_bytes();
            (key, value)
        })
        .collect();
    let mut c = cluster.client();
    for chunk in bulk.chunks(500) {
        let requests: Vec<ringkv::Request> = chunk
            .iter()
            .map(|(key, value)| ringkv::Request::Put {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        for reply in c.pipeline(&requests).unwrap() {
            assert_eq!(reply.status, ringkv::protocol::Status::OK);
        }
    }
    bulk
}

/// Every key of `bulk` reads back with its value through the frontend.
fn assert_bulk_reads_back(cluster: &Cluster, bulk: &[(Vec<u8>, Vec<u8>)]) {
    let mut c = cluster.client();
    for (key, value) in bulk {
        let got = c
            .get(key)
            .unwrap_or_else(|e| panic!("{key:?}: {e}; frontend log:\n{}", cluster.frontend.log()));
        assert_eq!(got.as_ref(), Some(value), "{key:?}");
    }
}

/// Starts a new backend process (not yet a member) and notes it in `cluster`; its address.
fn start_joiner(cluster: &mut Cluster, name: &str) -> String {
    let dir = temp_dir(name);
    let backend = start_backend("127.0.0.1:0", &dir);
    let addr = backend.listening("backend");
    cluster.backends.push(Some(backend));
    cluster.dirs.push(dir);
    cluster.backend_addrs.push(addr.clone());
    addr
}

fn admin(cluster: &Cluster) -> Client {
    let token = ringkv::ClusterToken::new(b"failover-test-token".to_vec()).unwrap();
    cluster.client().with_cluster_token(token).unwrap()
}

/// A joiner killed (SIGKILL) as soon as its join has begun: the move is called off and the joiner
/// taken out again, or, if the move was committed first, it is a member that died and can be
/// made to leave while down. Either way nothing is lost and a fresh backend can then join.
#[test]
fn a_joiner_killed_during_its_move_costs_nothing() {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    let bulk = load_bulk(&cluster, 3000);
    let keys = keys(128);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let doomed = start_joiner(&mut cluster, "doomed");
    admin(&cluster).join(&doomed).unwrap();
    cluster.backends[4].as_mut().expect("running").kill_now();
    let view = cluster.wait_for_view("the move is over", |v| {
        !v.is_moving()
            && v.nodes
                .iter()
                .position(|n| *n == doomed)
                .is_none_or(|at| !v.is_up(at))
    });
    if view.nodes.contains(&doomed) {
        // Committed before it died: a dead member, handed off from its chains' survivors.
        let gone = change_and_wait(&cluster, ringkv::Change::Leave(doomed.clone()));
        assert!(!gone.nodes.contains(&doomed));
    }
    load.wait_for_successes(300, &cluster);
    let fresh = start_joiner(&mut cluster, "fresh");
    let view = change_and_wait(&cluster, ringkv::Change::Join(fresh.clone()));
    assert_eq!(view.nodes.len(), 5, "{view:?}");
    load.wait_for_successes(300, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
    assert_bulk_reads_back(&cluster, &bulk);
}

/// The view keeper killed (SIGKILL) right after a join began: a new frontend takes up the moving
/// view from the backends and commits the move once the copies are done.
#[test]
fn a_move_outlives_the_view_keeper() {
    let mut cluster = Cluster::start(3, &["--replicas", "2"]);
    let bulk = load_bulk(&cluster, 3000);
    let joiner = start_joiner(&mut cluster, "joiner");
    let begun = admin(&cluster).join(&joiner).unwrap();
    cluster.replace_frontend(&["--replicas", "2"], &[2, 0, 1]);
    let view = cluster.wait_for_view("the joiner owns partitions", |v| {
        v.epoch > begun
            && !v.is_moving()
            && v.nodes
                .iter()
                .position(|n| *n == joiner)
                .is_some_and(|at| v.owning()[at] && v.is_up(at))
    });
    assert_eq!(view.nodes.len(), 4);
    assert_bulk_reads_back(&cluster, &bulk);
    assert!(cluster.counter(3, "handoff_keys") > 0);
}

#[test]
fn two_joins_then_two_leaves_under_load_lose_nothing_and_even_out() {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    // Keys loaded before the moves, some of them deleted while the first one runs.
    let bulk = load_bulk(&cluster, 4000);
    let mut c = cluster.client();
    let keys = keys(128);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let mut joined = Vec::new();
    for n in 0..2 {
        let addr = start_joiner(&mut cluster, &format!("joiner{n}"));
        if n == 0 {
            // DELETEs while the move runs stay deleted.
            let mut admin = admin(&cluster);
            let begun = admin.join(&addr).unwrap();
            for (key, _) in bulk.iter().step_by(10) {
                match c.delete(key) {
                    Ok(found) => assert!(found, "{key:?} was stored"),
                    // Retried across the commit to a head that took the partition over and
                    // cannot know whether the first copy was applied (PROTOCOL.md 13.1): it
                    // may have been; a new DELETE settles it either way.
                    Err(ringkv::Error::Status {
                        status: ringkv::protocol::Status::TOO_OLD,
                        ..
                    }) => {
                        c.delete(key).unwrap();
                    }
                    Err(e) => panic!("deleting {key:?} during a move: {e}"),
                }
            }
            let change = ringkv::Change::Join(addr.clone());
            while admin
                .change_progress(&change, begun)
                .unwrap()
                .outcome
                .is_none()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            change_and_wait(&cluster, ringkv::Change::Join(addr.clone()));
        }
        load.wait_for_successes(300, &cluster);
        joined.push(addr);
    }
    let six = c.view().unwrap();
    assert_eq!(six.nodes.len(), 6, "{six:?}");
    assert!(six.owning().iter().all(|&o| o));
    for leaving in [0, 1] {
        let addr = cluster.backend_addrs[leaving].clone();
        let view = change_and_wait(&cluster, ringkv::Change::Leave(addr.clone()));
        assert!(!view.nodes.contains(&addr), "{view:?}");
        load.wait_for_successes(300, &cluster);
    }
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
    let four = c.view().unwrap();
    assert_eq!(four.nodes.len(), 4);
    for (i, (key, value)) in bulk.iter().enumerate() {
        let got = c.get(key).unwrap();
        if i % 10 == 0 {
            assert_eq!(got, None, "{key:?} was deleted during a move");
        } else {
            assert_eq!(got.as_ref(), Some(value), "{key:?}");
        }
    }
    // The leavers own nothing and dropped what they held; the others hold an even share.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let stored = stored_per_node(&four);
        // Even in what they store, and in what they head (writes enter there). The partitions
        // are dealt exactly evenly; the keys in them are not: a node heads about 900 of these
        // keys, and which partitions it ends up with depends on the (random) addresses, so
        // its share strays past a tenth in about 1 run in 500 (it did in CI) and past 15% in
        // none of 2000 simulated. What each stores sums three chains and strays less.
        let even = within_of_the_mean(0.1, stored.iter().map(|s| s.1))
            && within_of_the_mean(0.15, stored.iter().map(|s| s.0));
        let leavers_empty = [0, 1].iter().all(|&i| {
            let mut left = Client::connect(&cluster.backend_addrs[i]).unwrap();
            left.size().unwrap()[0].counter("keys")
                + left.size().unwrap()[0].counter("replica_keys")
                == 0
        });
        if even && leavers_empty {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "stored per node {stored:?}, leavers empty {leavers_empty}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("keys stored per node after the moves: {stored:?}");
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{}", cluster.frontend.log());
    }
    assert!(cluster.counter(4, "handoff_keys") > 0);
}

/// A backend killed and started again on another address, over its data directory (a machine
/// replaced): the new address joins, the old one, down, is made to leave, and every key reads
/// back while the load runs.
#[test]
fn a_backend_restarted_on_another_address_joins_and_its_old_address_leaves() {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    let bulk = load_bulk(&cluster, 3000);
    let keys = keys(128);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let moved = 1;
    cluster.kill(moved);
    cluster.wait_for_view("the killed backend is down", |v| !v.is_up(moved));
    let elsewhere = start_backend("127.0.0.1:0", &cluster.dirs[moved]);
    let new_addr = elsewhere.listening("backend");
    cluster.backends[moved] = Some(elsewhere);
    load.wait_for_successes(200, &cluster);
    let view = change_and_wait(&cluster, ringkv::Change::Join(new_addr.clone()));
    assert_eq!(view.nodes.len(), 5);
    let old_addr = cluster.backend_addrs[moved].clone();
    let view = change_and_wait(&cluster, ringkv::Change::Leave(old_addr.clone()));
    assert!(!view.nodes.contains(&old_addr) && view.nodes.contains(&new_addr));
    assert!(
        view.states.iter().all(|s| *s == ringkv::NodeState::Up),
        "{view:?}"
    );
    load.wait_for_successes(300, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
    assert_bulk_reads_back(&cluster, &bulk);
}

/// A member stopped (SIGSTOP) while a join copies from it: the keeper marks it down, the joiner
/// copies from the rest of the chains instead, the move is committed, and the member, woken,
/// is fenced and copied back; nothing is lost and the history is linearizable.
#[test]
fn a_source_stopped_during_a_join_is_replaced_and_the_join_completes() {
    let mut cluster = Cluster::start(4, &["--replicas", "3"]);
    let bulk = load_bulk(&cluster, 3000);
    let keys = keys(128);
    let load = Load::start(&cluster.addr, Arc::clone(&keys));
    load.wait_for_successes(300, &cluster);
    let joiner = start_joiner(&mut cluster, "joiner");
    let begun = admin(&cluster).join(&joiner).unwrap();
    let stopped = 0;
    cluster.backend(stopped).signal("STOP");
    let done = cluster.wait_for_view("the join is committed", |v| {
        v.epoch > begun
            && !v.is_moving()
            && v.nodes
                .iter()
                .position(|n| *n == joiner)
                .is_some_and(|at| v.owning()[at])
    });
    load.wait_for_successes(300, &cluster);
    cluster.backend(stopped).signal("CONT");
    cluster.wait_for_view("the stopped member is back", |v| {
        v.epoch > done.epoch && (0..v.nodes.len()).all(|n| v.is_up(n))
    });
    load.wait_for_successes(300, &cluster);
    let summary = load.finish(&cluster, &keys);
    eprintln!("{summary}");
    assert_bulk_reads_back(&cluster, &bulk);
}

/// The log file under a backend's data directory.
fn log_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join(ringkv::wal::LOG_FILE);
    assert!(path.exists(), "no log at {}", path.display());
    path
}

/// A backend whose last logged record is damaged on disk (complete, but its checksum fails)
/// drops it when it restarts, as a torn write, and counts it; with R = 3 the state transfer that
/// brings it back copies that key from its chain, so the write is still there when the node is
/// the only one left.
#[test]
fn a_damaged_last_record_is_caught_up_from_the_chain() {
    let mut cluster = Cluster::start(3, &["--replicas", "3"]);
    let mut client = cluster.client();
    for i in 0..20 {
        client.put(format!("before-{i}").as_bytes(), b"v").unwrap();
    }
    client.put(b"the last write", b"acknowledged").unwrap();
    let damaged = 1;
    cluster.kill(damaged);
    cluster.wait_for_view("the killed backend is down", |v| !v.is_up(damaged));
    let log = log_file(&cluster.dirs[damaged]);
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&log, &bytes).unwrap();

    cluster.restart(damaged);
    cluster.wait_for_view("the restarted backend is up", |v| v.is_up(damaged));
    assert_eq!(cluster.counter(damaged, "wal_damaged_records"), 1);
    let saved = std::fs::read_dir(cluster.dirs[damaged].path())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .any(|entry| entry.file_name().to_string_lossy().contains(".damaged-"));
    assert!(saved, "the damaged bytes are kept beside the log");

    for other in [0, 2] {
        cluster.kill(other);
    }
    cluster.wait_for_view("only the restarted backend is up", |v| {
        v.is_up(damaged) && !v.is_up(0) && !v.is_up(2)
    });
    let mut client = cluster.client();
    assert_eq!(
        client.get(b"the last write").unwrap().as_deref(),
        Some(&b"acknowledged"[..])
    );
    for i in 0..20 {
        assert_eq!(
            client
                .get(format!("before-{i}").as_bytes())
                .unwrap()
                .as_deref(),
            Some(&b"v"[..]),
            "before-{i}"
        );
    }
}

/// The Unix time in milliseconds `key` expires at, as its head answers.
fn expiry_of(client: &mut Client, key: &[u8]) -> u64 {
    match client.ttl(key).unwrap() {
        ringkv::update::TimeToLive::Left { at, .. } => at,
        other => panic!("{}: {other:?}", String::from_utf8_lossy(key)),
    }
}

/// `n` keys named after `prefix`, each put to live 300 s, and the instant each expires at.
fn put_expiring(client: &mut Client, prefix: &str, n: usize) -> Vec<(Vec<u8>, u64)> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}-{i}").into_bytes();
            client
                .put_with_ttl(&key, b"v", Duration::from_secs(300))
                .unwrap();
            let at = expiry_of(client, &key);
            (key, at)
        })
        .collect()
}

/// Keys with a time to live, through kill -9, a restart over the log and the state transfer
/// that catches the restarted node up: the one node left at the end holds every key, those
/// written while it was down too, with the very instant its head first computed, and the keys
/// that expired meanwhile stay expired. (The log's own keeping of the times is in
/// tests/durability.rs and the wal and durable unit tests.)
#[test]
fn times_to_live_survive_kill_9_the_log_and_the_catch_up() {
    let mut cluster = Cluster::start(3, &["--replicas", "3"]);
    let mut client = cluster.client();
    let mut times = put_expiring(&mut client, "logged", 20);
    client
        .put_with_ttl(b"brief-before", b"v", Duration::from_millis(400))
        .unwrap();
    let returning = 1;
    cluster.kill(returning);
    cluster.wait_for_view("the killed backend is down", |v| !v.is_up(returning));
    times.extend(put_expiring(&mut client, "missed", 20));
    client
        .put_with_ttl(b"brief-while-down", b"v", Duration::from_millis(400))
        .unwrap();
    cluster.restart(returning);
    cluster.wait_for_view("the restarted backend is up", |v| v.is_up(returning));
    for other in [0, 2] {
        cluster.kill(other);
    }
    cluster.wait_for_view("only the restarted backend is up", |v| {
        v.is_up(returning) && !v.is_up(0) && !v.is_up(2)
    });
    let mut client = cluster.client();
    for (key, at) in &times {
        assert_eq!(client.get(key).unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            expiry_of(&mut client, key),
            *at,
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    common::retry(common::BOUND, "the brief keys expire", || {
        let mut gone = |key: &[u8]| matches!(client.get(key), Ok(None));
        (gone(b"brief-before") && gone(b"brief-while-down")).then_some(())
    });
}

/// With one copy per key the log is all there is: every backend killed with SIGKILL and started
/// again over its data directory gives each key back with its expiry instant.
#[test]
fn with_one_copy_the_log_alone_keeps_times_to_live_through_kill_9() {
    let mut cluster = Cluster::start(3, &["--replicas", "1"]);
    let mut client = cluster.client();
    let times = put_expiring(&mut client, "single", 30);
    client.put(b"forever", b"v").unwrap();
    for node in 0..3 {
        cluster.kill(node);
    }
    cluster.wait_for_view("every backend is down", |v| (0..3).all(|n| !v.is_up(n)));
    for node in 0..3 {
        cluster.restart(node);
    }
    cluster.wait_for_view("every backend is up again", |v| (0..3).all(|n| v.is_up(n)));
    let mut client = cluster.client();
    for (key, at) in &times {
        let ttl = common::retry(common::BOUND, "the key is served", || client.ttl(key).ok());
        assert!(
            matches!(ttl, ringkv::update::TimeToLive::Left { at: read, .. } if read == *at),
            "{ttl:?}, expected to expire at {at}"
        );
    }
    assert_eq!(
        client.ttl(b"forever").unwrap(),
        ringkv::update::TimeToLive::Forever
    );
}

/// A retried write that its head applied but its chain never acknowledged is completed by
/// sending the key's current value down the chain again; a key given a time to live since goes
/// down with its expiry time, so the member that takes over from the head expires it at the
/// same instant instead of keeping it for ever.
#[test]
fn a_completed_retry_carries_the_keys_time_to_live() {
    use ringkv::protocol::{Opcode, Status};
    let mut cluster = Cluster::start(3, &[]);
    let key = b"retry-with-ttl".to_vec();
    let chain: Vec<usize> = cluster.ring().chain_of_key(&key).members().collect();
    let (head, tail) = (chain[0], chain[2]);
    let mut c = cluster.client();
    c.put(&key, b"before").unwrap();
    cluster.backend(tail).signal("STOP");
    // Straight to the head, so that no frontend sends it again: applied before the tail only.
    let mut direct = Client::connect(&cluster.backend_addrs[head]).unwrap();
    let write = |attempt| tagged(Opcode::PUT_ONCE, 0x5eed_0003, 1, attempt, &key, b"tagged");
    let first = direct.raw_call(&write(1)).unwrap();
    assert_eq!(first.status, Status::UNAVAILABLE, "{}", first.message());
    cluster.wait_for_view("the tail is down", |v| !v.is_up(tail));
    c.put_with_ttl(&key, b"expiring", Duration::from_secs(300))
        .unwrap();
    let at = expiry_of(&mut c, &key);
    let again = direct.raw_call(&write(2)).unwrap();
    assert_eq!(again.status, Status::OK, "{}", again.message());
    assert_eq!(cluster.counter(head, "retries_completed"), 1);
    cluster.kill(head);
    cluster.wait_for_view("the head is down", |v| !v.is_up(head));
    let mut c = cluster.client();
    assert_eq!(c.get(&key).unwrap().as_deref(), Some(&b"expiring"[..]));
    assert_eq!(
        expiry_of(&mut c, &key),
        at,
        "the new head keeps the time to live"
    );
    cluster.backend(tail).signal("CONT");
}
