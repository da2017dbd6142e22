//! Pipelines end to end: a client's pipelined requests cross the frontend, and each relay, in
//! batches (one round trip for many requests), with their order and their answers intact.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::{client, raw, read_frame_buffered, request_bytes};
use ringkv::protocol::{Frame, Opcode, Status};
use ringkv::{
    Backend, BackendConfig, Entry, Frontend, FrontendConfig, LocalCluster, Placement, Request,
    Ring, Routing,
};

/// A backend that takes any view, then holds key requests until `batch` of them have arrived
/// and only then answers them all, in order, with the key as the value. A server that forwards
/// a pipeline one request at a time would wait for the first answer forever: the batch would
/// never fill, and after a few seconds this backend gives up and closes the connection.
struct GatheringBackend {
    addr: String,
    /// The number of key requests each gathered batch held.
    batches: mpsc::Receiver<usize>,
}

impl GatheringBackend {
    fn start(batch: usize) -> GatheringBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (gathered, batches) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let gathered = gathered.clone();
                std::thread::spawn(move || serve_gathering(stream, batch, gathered));
            }
        });
        GatheringBackend { addr, batches }
    }
}

fn serve_gathering(mut stream: TcpStream, batch: usize, gathered: mpsc::Sender<usize>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = Vec::new();
    let mut held: Vec<Frame> = Vec::new();
    while let Some(request) = read_frame_buffered(&mut stream, &mut buf) {
        if request.opcode == Opcode::VIEW_INSTALL {
            let answer = request.reply(Status::OK, Vec::new());
            if stream.write_all(&answer.encode()).is_err() {
                return;
            }
            continue;
        }
        held.push(request);
        if held.len() < batch {
            continue;
        }
        let _ = gathered.send(held.len());
        let mut out = Vec::new();
        for request in held.drain(..) {
            request
                .reply(Status::OK, request.key.clone())
                .encode_into(&mut out);
        }
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Writes every request in one go and reads the answers.
fn pipeline_raw(stream: &mut TcpStream, requests: &[Vec<u8>]) -> Vec<Frame> {
    stream.write_all(&requests.concat()).unwrap();
    let mut buf = Vec::new();
    (0..requests.len())
        .map(|i| read_frame_buffered(stream, &mut buf).unwrap_or_else(|| panic!("no answer {i}")))
        .collect()
}

#[test]
fn the_frontend_forwards_a_pipeline_as_one_batch() {
    const DEPTH: usize = 20;
    let backend = GatheringBackend::start(DEPTH);
    let frontend = Frontend::start(FrontendConfig {
        backends: vec![backend.addr.clone()],
        threads: 2,
        startup_timeout: common::BOUND,
        // The stand-in backend counts every frame it gets; the keeper's probes would be some.
        keeper: None,
        ..FrontendConfig::default()
    })
    .unwrap();
    let mut stream = raw(frontend.local_addr());
    let requests: Vec<Vec<u8>> = (0..DEPTH)
        .map(|i| {
            request_bytes(
                Opcode::GET,
                i as u64 + 1,
                format!("key-{i}").as_bytes(),
                b"",
            )
        })
        .collect();
    let answers = pipeline_raw(&mut stream, &requests);
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.status, Status::OK, "{answer:?}");
        assert_eq!(answer.request_id, i as u64 + 1);
        assert_eq!(answer.value, format!("key-{i}").as_bytes());
    }
    assert_eq!(backend.batches.recv_timeout(common::BOUND).unwrap(), DEPTH);
}

#[test]
fn a_backend_relays_a_pipeline_as_one_batch() {
    const DEPTH: usize = 20;
    let relaying = Backend::start(BackendConfig::default()).unwrap();
    let gathering = GatheringBackend::start(DEPTH);
    let nodes = vec![relaying.local_addr().to_string(), gathering.addr.clone()];
    let frontend = Frontend::start(FrontendConfig {
        backends: nodes.clone(),
        routing: Routing::Direct,
        threads: 2,
        startup_timeout: common::BOUND,
        // One copy per key, each with one owner; and no probes counted as requests.
        replicas: Some(1),
        keeper: None,
        ..FrontendConfig::default()
    })
    .unwrap();
    let ring = Ring::new(frontend.view().clone()).unwrap();
    let keys: Vec<String> = (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| ring.owner_of_key(k.as_bytes()) == 1)
        .take(DEPTH)
        .collect();
    // Straight to the backend that does not own them: it relays them all to the owner.
    let mut stream = raw(relaying.local_addr());
    let requests: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| request_bytes(Opcode::GET, i as u64 + 1, k.as_bytes(), b""))
        .collect();
    let answers = pipeline_raw(&mut stream, &requests);
    for (answer, key) in answers.iter().zip(&keys) {
        assert_eq!(answer.status, Status::OK, "{answer:?}");
        assert_eq!(answer.value, key.as_bytes());
        assert_eq!(answer.hops, 1);
    }
    assert_eq!(
        gathering.batches.recv_timeout(common::BOUND).unwrap(),
        DEPTH
    );
}

#[test]
fn pipelined_requests_for_one_key_keep_their_order_on_every_path() {
    // The paper's design: a random entry and relays along the ring, so a key's requests could
    // take different paths if they were not kept together.
    let cluster = LocalCluster::start(
        5,
        BackendConfig::default(),
        FrontendConfig {
            threads: 4,
            startup_timeout: common::BOUND,
            ..FrontendConfig::default().paper()
        },
    )
    .unwrap();
    let mut c = client(cluster.frontend_addr());
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
    let mut requests = Vec::new();
    for step in 0..3u8 {
        for key in &keys {
            requests.push(Request::Put {
                key: key.clone(),
                value: vec![step; 3],
            });
            requests.push(Request::Get { key: key.clone() });
        }
    }
    for key in keys.iter().step_by(2) {
        requests.push(Request::Delete { key: key.clone() });
        requests.push(Request::Get { key: key.clone() });
    }
    let replies = c.pipeline(&requests).unwrap();
    for (request, reply) in requests.iter().zip(&replies) {
        match request {
            Request::Put { .. } => assert_eq!(reply.status, Status::OK),
            Request::Delete { .. } => assert_eq!(reply.status, Status::OK),
            Request::Get { .. } => {}
        }
    }
    // Each GET sees the PUT just before it, and the GET after a DELETE sees nothing.
    let mut expected = Vec::new();
    for step in 0..3u8 {
        for _ in &keys {
            expected.push(Some(vec![step; 3]));
        }
    }
    for _ in keys.iter().step_by(2) {
        expected.push(None);
    }
    let gets: Vec<&ringkv::Reply> = replies.iter().skip(1).step_by(2).collect();
    assert_eq!(gets.len(), expected.len());
    for (reply, expected) in gets.into_iter().zip(expected) {
        match expected {
            Some(value) => {
                assert_eq!(reply.status, Status::OK, "{reply:?}");
                assert_eq!(reply.value, value);
            }
            None => assert_eq!(reply.status, Status::NOT_FOUND, "{reply:?}"),
        }
    }
}

#[test]
fn other_requests_in_a_pipeline_see_the_key_requests_before_them() {
    let cluster = common::cluster(3, Entry::Owner, Routing::Direct);
    let mut stream = raw(cluster.frontend_addr());
    let requests = vec![
        request_bytes(Opcode::PUT, 1, b"a", b"1"),
        request_bytes(Opcode::PUT, 2, b"b", b"22"),
        request_bytes(Opcode::SIZE, 3, b"", b""),
        request_bytes(Opcode::DELETE, 4, b"a", b""),
        request_bytes(Opcode::PING, 5, b"", b""),
        request_bytes(Opcode::SIZE, 6, b"", b""),
        request_bytes(Opcode::GET, 7, b"", b""),
        request_bytes(Opcode::GET, 8, b"b", b""),
    ];
    let answers = pipeline_raw(&mut stream, &requests);
    let ids: Vec<u64> = answers.iter().map(|a| a.request_id).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<u64>>());
    let keys = |answer: &Frame| {
        ringkv::protocol::payload::decode_reports(&answer.value)
            .unwrap()
            .pop()
            .unwrap()
            .counter("keys")
    };
    assert_eq!(keys(&answers[2]), 2);
    assert_eq!(keys(&answers[5]), 1);
    assert_eq!(answers[4].status, Status::OK);
    assert_eq!(answers[6].status, Status::BAD_REQUEST);
    assert_eq!(answers[7].value, b"22");
}

#[test]
fn a_dead_backend_fails_only_its_share_of_a_pipeline() {
    let mut cluster = LocalCluster::start(
        3,
        BackendConfig::default(),
        FrontendConfig {
            threads: 4,
            placement: Placement::Partitions { count: 64 },
            startup_timeout: common::BOUND,
            // One copy per key: the dead backend's keys have no other.
            replicas: Some(1),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let mut c = client(cluster.frontend_addr());
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("key{i}").into_bytes()).collect();
    let puts: Vec<Request> = keys
        .iter()
        .map(|k| Request::Put {
            key: k.clone(),
            value: k.clone(),
        })
        .collect();
    assert!(c
        .pipeline(&puts)
        .unwrap()
        .iter()
        .all(|r| r.status == Status::OK));
    let ring = Ring::new(cluster.frontend().view().clone()).unwrap();
    let dead = cluster.backend_addrs()[1].clone();
    cluster.kill_backend(1);
    let gets: Vec<Request> = keys
        .iter()
        .map(|k| Request::Get { key: k.clone() })
        .collect();
    let replies = c.pipeline(&gets).unwrap();
    let mut unavailable = 0;
    for (key, reply) in keys.iter().zip(&replies) {
        if ring.owner_of_key(key) == 1 {
            assert_eq!(reply.status, Status::UNAVAILABLE, "{reply:?}");
            assert!(
                String::from_utf8_lossy(&reply.value).contains(&dead),
                "{reply:?}"
            );
            unavailable += 1;
        } else {
            assert_eq!(reply.status, Status::OK, "{reply:?}");
            assert_eq!(&reply.value, key);
        }
    }
    assert!(unavailable > 50, "{unavailable}");
    // The connection is still good.
    c.ping().unwrap();
}

#[test]
fn a_client_stuck_behind_a_silent_backend_does_not_hold_up_another_client() {
    // The silent backend answers only batches of 1000, which never come: requests for its keys
    // hang until the frontend's i/o timeout.
    let silent = GatheringBackend::start(1000);
    let healthy = Backend::start(BackendConfig::default()).unwrap();
    let frontend = Frontend::start(FrontendConfig {
        backends: vec![silent.addr.clone(), healthy.local_addr().to_string()],
        threads: 2,
        startup_timeout: common::BOUND,
        // One copy per key, and no keeper: the point is a backend that stays in the view.
        replicas: Some(1),
        keeper: None,
        ..FrontendConfig::default()
    })
    .unwrap();
    let ring = Ring::new(frontend.view().clone()).unwrap();
    let key_on = |node: usize| {
        (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| ring.owner_of_key(k.as_bytes()) == node)
            .unwrap()
    };
    let (stuck_key, healthy_key) = (key_on(0), key_on(1));
    let mut stuck = raw(frontend.local_addr());
    let pipeline: Vec<Vec<u8>> = (0..8)
        .map(|i| request_bytes(Opcode::GET, i + 1, stuck_key.as_bytes(), b""))
        .collect();
    stuck.write_all(&pipeline.concat()).unwrap();

    let mut other = client(frontend.local_addr());
    for i in 0..200 {
        let value = format!("v{i}");
        other.put(healthy_key.as_bytes(), value.as_bytes()).unwrap();
        assert_eq!(
            other.get(healthy_key.as_bytes()).unwrap(),
            Some(value.into_bytes())
        );
    }
    // The other client was served while the stuck one still waits: had it queued behind the
    // stuck requests, it would have waited for their i/o timeout, and they would be answered.
    stuck.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let waiting = matches!(
        std::io::Read::read(&mut stuck, &mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(waiting, "the stuck client was answered already");
}

/// A directory under the system's temporary directory, removed when dropped.
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let path = std::env::temp_dir().join(format!("ringkv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pipelined_writes_to_a_log_synced_on_every_write_share_their_fsyncs() {
    use ringkv::durable::{DurableOptions, DurableStore};
    use ringkv::wal::FsyncPolicy;
    const WRITES: usize = 64;
    let dir = ScratchDir::new("pipelined-fsync");
    let store = std::sync::Arc::new(
        DurableStore::open(
            &dir.0,
            DurableOptions {
                fsync: FsyncPolicy::Always,
                ..DurableOptions::default()
            },
        )
        .unwrap(),
    );
    let backend = Backend::with_engine(
        BackendConfig::default(),
        std::sync::Arc::clone(&store) as std::sync::Arc<dyn ringkv::store::Engine>,
    )
    .unwrap();
    let frontend = Frontend::start(FrontendConfig {
        backends: vec![backend.local_addr().to_string()],
        threads: 2,
        startup_timeout: common::BOUND,
        ..FrontendConfig::default()
    })
    .unwrap();
    let before = store.fsyncs();
    let mut stream = raw(frontend.local_addr());
    let requests: Vec<Vec<u8>> = (0..WRITES)
        .map(|i| {
            let key = format!("key-{i}");
            request_bytes(Opcode::PUT, i as u64 + 1, key.as_bytes(), b"value")
        })
        .collect();
    for answer in pipeline_raw(&mut stream, &requests) {
        assert_eq!(answer.status, Status::OK, "{answer:?}");
    }
    // Every acknowledged write is on disk, and they took far fewer fsyncs than writes: one per
    // batch the backend received (at most 32 requests each).
    let fsyncs = store.fsyncs() - before;
    assert!(fsyncs >= 1, "no fsync at all");
    assert!(
        fsyncs <= (WRITES / 2) as u64,
        "{fsyncs} fsyncs for {WRITES} writes"
    );
    drop(frontend);
    drop(backend);
    drop(store);
    let reopened = DurableStore::open(&dir.0, DurableOptions::default()).unwrap();
    for i in 0..WRITES {
        let key = format!("key-{i}");
        assert_eq!(
            ringkv::store::Engine::get(&reopened, key.as_bytes()),
            Some(b"value".to_vec())
        );
    }
}

/// A deep pipeline is handed on in batches, and batches of distinct keys travel at once; a
/// batch touching a key of one still on its way waits for it. With three copies, writes go to
/// a chain's head and reads to its tail, so a GET sent on early would find the old value.
#[test]
fn batches_on_their_way_together_never_let_a_read_pass_an_earlier_write() {
    let cluster = common::replicated_cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    let keys: Vec<Vec<u8>> = (0..96).map(|i| format!("deep-{i}").into_bytes()).collect();
    let mut requests = Vec::new();
    for round in 0..3u8 {
        for key in &keys {
            requests.push(Request::Put {
                key: key.clone(),
                value: vec![round; 4],
            });
        }
        for key in &keys {
            requests.push(Request::Get { key: key.clone() });
        }
    }
    let replies = c.pipeline(&requests).unwrap();
    assert_eq!(replies.len(), requests.len());
    for (n, (request, reply)) in requests.iter().zip(&replies).enumerate() {
        let round = (n / (2 * keys.len())) as u8;
        match request {
            Request::Put { .. } => assert_eq!(reply.status, Status::OK, "{n}: {reply:?}"),
            Request::Get { .. } => {
                assert_eq!(reply.status, Status::OK, "{n}: {reply:?}");
                assert_eq!(reply.value, vec![round; 4], "request {n}");
            }
            _ => unreachable!(),
        }
    }
}

/// Both ways of waiting for the backends (`--answering workers` and `direct`) give the same
/// answers, in order, to single requests and to a pipeline that mixes keys, reads, writes,
/// deletes and a request that is not a key request.
#[test]
fn both_answering_modes_answer_alike() {
    use ringkv::frontend::Answering;
    let mut seen = Vec::new();
    for answering in [Answering::Workers, Answering::Direct] {
        let cluster = LocalCluster::start(
            3,
            BackendConfig::default(),
            FrontendConfig {
                replicas: Some(3),
                answering,
                startup_timeout: common::BOUND,
                ..FrontendConfig::default()
            },
        )
        .unwrap();
        let mut c = client(cluster.frontend_addr());
        c.put(b"single", b"1").unwrap();
        assert_eq!(
            c.get(b"single").unwrap(),
            Some(b"1".to_vec()),
            "{answering}"
        );
        let mut requests = Vec::new();
        for i in 0..70u32 {
            let key = format!("mixed-{}", i % 23).into_bytes();
            requests.push(match i % 4 {
                0 | 1 => Request::Put {
                    key,
                    value: i.to_be_bytes().to_vec(),
                },
                2 => Request::Get { key },
                _ => Request::Delete { key },
            });
        }
        let replies: Vec<(Status, Vec<u8>)> = c
            .pipeline(&requests)
            .unwrap()
            .into_iter()
            .map(|r| (r.status, r.value))
            .collect();
        assert_eq!(replies.len(), requests.len(), "{answering}");
        seen.push(replies);
    }
    assert_eq!(seen[0], seen[1], "the two modes answered differently");
}
