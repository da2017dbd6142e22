//! Hostile and broken peers, as raw bytes over TCP, against a frontend and directly against a
//! backend: malformed frames, requests over the limits, stalled and vanishing clients, the
//! connection limit, random garbage and deep pipelining. After each case the server must still
//! serve a well-behaved client.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    assert_closed, assert_pings, assert_serves, client, raw, raw_call, read_frame,
    read_frame_buffered, request_bytes, retry, small_limits, split_total, sum,
};
use ringkv::connection::Timeouts;
use ringkv::protocol::{self, Frame, Kind, Opcode, Status};
use ringkv::rng::Rng;
use ringkv::{BackendConfig, FrontendConfig, LocalCluster, ServerOptions};

/// A cluster of two backends, its frontend and the address of its first backend (which has the
/// view, so it serves key requests directly too).
fn targets(server: ServerOptions) -> (LocalCluster, [SocketAddr; 2]) {
    let cluster = LocalCluster::start(
        2,
        BackendConfig {
            server,
            ..BackendConfig::default()
        },
        FrontendConfig {
            server,
            threads: 4,
            startup_timeout: Duration::from_secs(5),
            // One copy per key: the forged-header probes aim at a key's one owner.
            replicas: Some(1),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let backend = cluster.backend_addrs()[0].parse().unwrap();
    let frontend = cluster.frontend_addr();
    (cluster, [frontend, backend])
}

/// A PING frame, then `edit` applied to its bytes.
fn edited_ping(id: u64, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = request_bytes(Opcode::PING, id, b"key", b"value");
    edit(&mut bytes);
    bytes
}

/// Sends `bytes`, expects one error answer with `status` and then the connection closed.
fn expect_refused_and_closed(addr: SocketAddr, bytes: &[u8], status: Status, case: &str) {
    let mut stream = raw(addr);
    stream.write_all(bytes).unwrap();
    let answer = read_frame(&mut stream)
        .unwrap_or_else(|| panic!("{case}: closed without an error answer ({addr})"));
    assert_eq!(answer.kind, Kind::Response, "{case}");
    assert_eq!(answer.status, status, "{case}: {}", answer.message());
    assert!(!answer.message().is_empty(), "{case}: no explanation");
    assert_closed(&mut stream);
}

#[test]
fn malformed_frames_get_an_error_answer_then_the_connection_closes() {
    let (_cluster, addrs) = targets(ServerOptions::default());
    let max_frame = protocol::Limits::default().max_frame;
    let cases: Vec<(&str, Vec<u8>, Status)> = vec![
        (
            "bad magic",
            edited_ping(11, |b| b[4..6].copy_from_slice(b"XK")),
            Status::BAD_FRAME,
        ),
        (
            "bad version",
            edited_ping(12, |b| b[6] = 2),
            Status::BAD_FRAME,
        ),
        ("bad kind", edited_ping(13, |b| b[7] = 7), Status::BAD_FRAME),
        (
            "bad CRC",
            edited_ping(14, |b| {
                let last = b.len() - 1;
                b[last] ^= 0x01;
            }),
            Status::BAD_FRAME,
        ),
        (
            "bad CRC (body byte changed)",
            edited_ping(15, |b| b[40] ^= 0x80),
            Status::BAD_FRAME,
        ),
        (
            "key length too long for the body",
            edited_ping(16, |b| b[30..34].copy_from_slice(&4u32.to_be_bytes())),
            Status::BAD_FRAME,
        ),
        (
            "value length too short for the body",
            edited_ping(17, |b| b[34..38].copy_from_slice(&1u32.to_be_bytes())),
            Status::BAD_FRAME,
        ),
        (
            "lengths that overflow",
            edited_ping(18, |b| {
                b[30..34].copy_from_slice(&u32::MAX.to_be_bytes());
                b[34..38].copy_from_slice(&u32::MAX.to_be_bytes());
            }),
            Status::BAD_FRAME,
        ),
        (
            "length prefix over the frame limit",
            edited_ping(19, |b| {
                b[0..4].copy_from_slice(&(max_frame as u32 - 3).to_be_bytes())
            }),
            Status::TOO_LARGE,
        ),
        (
            "length prefix of 4 GiB",
            edited_ping(20, |b| b[0..4].copy_from_slice(&u32::MAX.to_be_bytes())),
            Status::TOO_LARGE,
        ),
        (
            "length prefix shorter than a header",
            {
                let mut b = 10u32.to_be_bytes().to_vec();
                b.extend_from_slice(b"RK\x01\x00\x06\x00\x00\x00\x00\x00");
                b
            },
            Status::BAD_FRAME,
        ),
        ("length prefix of zero", vec![0, 0, 0, 0], Status::BAD_FRAME),
    ];
    for addr in addrs {
        for (case, bytes, status) in &cases {
            expect_refused_and_closed(addr, bytes, *status, case);
            assert_serves(addr);
        }
    }
}

#[test]
fn a_malformed_frame_after_good_ones_names_its_request() {
    let (_cluster, addrs) = targets(ServerOptions::default());
    for addr in addrs {
        let mut stream = raw(addr);
        let answer = raw_call(&mut stream, Opcode::PING, 1, b"", b"");
        assert_eq!(answer.status, Status::OK);
        let bad = edited_ping(4242, |b| {
            let last = b.len() - 1;
            b[last] ^= 0xff;
        });
        stream.write_all(&bad).unwrap();
        let answer = read_frame(&mut stream).unwrap();
        assert_eq!(answer.status, Status::BAD_FRAME);
        assert_eq!(answer.request_id, 4242);
        assert!(answer.message().contains("CRC"), "{}", answer.message());
        assert_closed(&mut stream);
    }
}

#[test]
fn unknown_opcodes_and_bad_requests_keep_the_connection() {
    let (_cluster, addrs) = targets(ServerOptions::default());
    for addr in addrs {
        let mut stream = raw(addr);
        for (id, opcode) in [(1, 0x00), (2, 0x7f), (3, 0xff), (4, 0x30)] {
            let answer = raw_call(&mut stream, Opcode(opcode), id, b"some key", b"v");
            assert_eq!(answer.status, Status::UNKNOWN_OPCODE, "opcode {opcode:#x}");
            let answer = raw_call(&mut stream, Opcode::PING, 100 + id, b"", b"");
            assert_eq!(answer.status, Status::OK);
        }
        // An empty key.
        for (id, opcode) in [(10, Opcode::PUT), (11, Opcode::GET), (12, Opcode::DELETE)] {
            let answer = raw_call(&mut stream, opcode, id, b"", b"value");
            assert_eq!(answer.status, Status::BAD_REQUEST, "{opcode}");
        }
        // A response sent to a server.
        let mut response = Frame::request(Opcode::GET, 20, b"k".to_vec(), Vec::new());
        response.kind = Kind::Response;
        stream.write_all(&response.encode()).unwrap();
        let answer = read_frame(&mut stream).unwrap();
        assert_eq!(answer.request_id, 20);
        assert_eq!(answer.status, Status::BAD_REQUEST);
        // Still usable, and nothing was stored under the empty key.
        let answer = raw_call(&mut stream, Opcode::PUT, 30, b"fine", b"ok");
        assert_eq!(answer.status, Status::OK);
        let answer = raw_call(&mut stream, Opcode::GET, 31, b"fine", b"");
        assert_eq!(answer.status, Status::OK);
        assert_eq!(answer.value, b"ok");
        let answer = raw_call(&mut stream, Opcode::GET, 32, b"", b"");
        assert_eq!(answer.status, Status::BAD_REQUEST);
    }
    // The frontend makes views; it does not take them.
    let mut stream = raw(addrs[0]);
    let answer = raw_call(&mut stream, Opcode::VIEW_INSTALL, 40, b"x", b"y");
    assert_eq!(answer.status, Status::BAD_REQUEST);
    assert_pings(addrs[0]);
}

#[test]
fn forged_header_fields_and_views_sent_to_a_backend_are_refused() {
    let (cluster, [frontend, backend]) = targets(ServerOptions::default());
    let view = cluster.frontend().view().clone();
    let ring = ringkv::Ring::new(view.clone()).unwrap();
    let me = ring.index_of(&backend.to_string()).unwrap();
    let key_of = |owner_is_me: bool| {
        (0..)
            .map(|i| format!("forged-{i}").into_bytes())
            .find(|k| (ring.owner_of_key(k) == me) == owner_is_me)
            .unwrap()
    };
    let (mine, theirs) = (key_of(true), key_of(false));
    let mut stream = raw(backend);
    let mut call = |hops: u16, hop_limit: u16, epoch: u64, key: &[u8]| {
        let mut frame = Frame::request(Opcode::GET, 9, key.to_vec(), Vec::new());
        frame.hops = hops;
        frame.hop_limit = hop_limit;
        frame.epoch = epoch;
        stream.write_all(&frame.encode()).unwrap();
        read_frame(&mut stream).expect("closed instead of answering")
    };
    // A relay that would pass the hop limit ends with LOOP, whatever the counter says.
    for (hops, limit) in [(3, 3), (u16::MAX, 0), (u16::MAX, u16::MAX), (64, 0)] {
        let answer = call(hops, limit, 0, &theirs);
        assert_eq!(answer.status, Status::LOOP, "hops {hops} limit {limit}");
    }
    // One relay left: it is taken.
    let answer = call(0, 1, 0, &theirs);
    assert_eq!((answer.status, answer.hops), (Status::NOT_FOUND, 1));
    // The owner serves without looking at the counter.
    let answer = call(u16::MAX, 1, 0, &mine);
    assert_eq!(answer.status, Status::NOT_FOUND);
    // A request from another view.
    let answer = call(0, 0, view.epoch + 98, &mine);
    assert_eq!(answer.status, Status::STALE_VIEW);
    let answer = call(0, 0, view.epoch, &mine);
    assert_eq!(answer.status, Status::NOT_FOUND);

    // Views that cannot be installed are refused and change nothing.
    let mut install = |id: u64, node: &str, value: Vec<u8>| {
        let mut frame = Frame::request(Opcode::VIEW_INSTALL, id, node.as_bytes().to_vec(), value);
        frame.epoch = view.epoch;
        stream.write_all(&frame.encode()).unwrap();
        read_frame(&mut stream).expect("closed instead of answering")
    };
    let garbage_view = install(20, &backend.to_string(), vec![0xff; 33]);
    assert_eq!(garbage_view.status, Status::BAD_REQUEST);
    let elsewhere = ringkv::View {
        nodes: vec!["192.0.2.1:9".into()],
        states: vec![ringkv::NodeState::Up],
        since: vec![0],
        owners: Vec::new(),
        ..view.clone()
    };
    let not_in_it = install(
        21,
        &backend.to_string(),
        ringkv::protocol::payload::encode_view(&elsewhere),
    );
    assert_eq!(not_in_it.status, Status::BAD_REQUEST);
    assert!(not_in_it.message().contains("not in the view"));
    assert_eq!(
        raw_call(&mut stream, Opcode::PING, 22, b"", b"").status,
        Status::OK
    );
    assert_serves(frontend);
    assert_serves(backend);
}

#[test]
fn keys_and_values_over_the_limits_are_refused_and_the_connection_stays() {
    let limits = small_limits();
    let server = ServerOptions {
        limits,
        ..ServerOptions::default()
    };
    let (cluster, addrs) = targets(server);
    for addr in addrs {
        let mut stream = raw(addr);
        // At the limits: fine.
        let key = vec![b'k'; limits.max_key];
        let answer = raw_call(
            &mut stream,
            Opcode::PUT,
            1,
            &key,
            &vec![1; limits.max_value],
        );
        assert_eq!(answer.status, Status::OK, "{}", answer.message());
        assert_eq!(
            raw_call(&mut stream, Opcode::DELETE, 2, &key, b"").status,
            Status::OK
        );

        // One byte over the value limit.
        let answer = raw_call(
            &mut stream,
            Opcode::PUT,
            3,
            b"v-over",
            &vec![2; limits.max_value + 1],
        );
        assert_eq!(answer.status, Status::TOO_LARGE, "{}", answer.message());
        // One byte over the key limit.
        let long_key = vec![b'k'; limits.max_key + 1];
        let answer = raw_call(&mut stream, Opcode::PUT, 4, &long_key, b"x");
        assert_eq!(answer.status, Status::TOO_LARGE, "{}", answer.message());
        let answer = raw_call(&mut stream, Opcode::GET, 5, &long_key, b"");
        assert_eq!(answer.status, Status::TOO_LARGE);
        // A frame of exactly the frame limit whose value is far over the value limit.
        let fill = limits.max_frame - protocol::MIN_FRAME - 3;
        let answer = raw_call(&mut stream, Opcode::PUT, 6, b"big", &vec![3; fill]);
        assert_eq!(answer.status, Status::TOO_LARGE);

        // The connection is still usable and nothing was stored.
        assert_eq!(
            raw_call(&mut stream, Opcode::PING, 7, b"", b"").status,
            Status::OK
        );
        for (id, key) in [(8, &b"v-over"[..]), (9, &b"big"[..])] {
            assert_eq!(
                raw_call(&mut stream, Opcode::GET, id, key, b"").status,
                Status::NOT_FOUND
            );
        }

        // One byte over the frame limit ends the connection (the header alone says so).
        let mut header = request_bytes(Opcode::PUT, 10, b"big", &vec![3; fill + 1]);
        header.truncate(protocol::HEADER_LEN);
        expect_refused_and_closed(addr, &header, Status::TOO_LARGE, "frame over the limit");
        assert_serves(addr);
    }
    let mut c = client(cluster.frontend_addr());
    let reports = c.size().unwrap();
    let (nodes, total) = split_total(&reports);
    // Only the two keys assert_serves stored.
    assert_eq!(sum(nodes, "keys"), 2);
    assert_eq!(total.counter("keys"), 2);
}

/// Server options whose frame timeout is short.
fn short_frame_timeout() -> ServerOptions {
    ServerOptions {
        timeouts: Timeouts {
            frame: Duration::from_millis(300),
            ..Timeouts::default()
        },
        ..ServerOptions::default()
    }
}

#[test]
fn a_stalled_half_frame_is_dropped_after_the_frame_timeout() {
    let (_cluster, addrs) = targets(short_frame_timeout());
    for addr in addrs {
        let bytes = request_bytes(Opcode::PUT, 1, b"stalled", b"value");
        let mut stalled = raw(addr);
        stalled.write_all(&bytes[..bytes.len() / 2]).unwrap();
        let started = Instant::now();
        // Another client is served during the stall.
        assert_serves(addr);
        let mut stalled_reader = stalled.try_clone().unwrap();
        assert_closed(&mut stalled_reader);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(250),
            "dropped after {elapsed:?}, before the frame timeout"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "dropped after {elapsed:?}"
        );
        // The dropped request did nothing.
        let mut c = client(addr);
        assert_eq!(c.get(b"stalled").unwrap(), None);
    }
}

#[test]
fn a_trickling_frame_is_dropped_after_the_frame_timeout() {
    let (_cluster, addrs) = targets(short_frame_timeout());
    for addr in addrs {
        let bytes = request_bytes(Opcode::PUT, 1, b"trickled", b"value");
        let mut reader = raw(addr);
        let mut writer = reader.try_clone().unwrap();
        // One byte every 40 ms: the whole frame would take about 2 s.
        let trickle = std::thread::spawn(move || {
            for byte in bytes {
                if writer.write_all(&[byte]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            false
        });
        let started = Instant::now();
        assert_closed(&mut reader);
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(1500),
            "dropped after {elapsed:?}"
        );
        drop(reader);
        trickle.join().unwrap();
        let mut c = client(addr);
        assert_eq!(c.get(b"trickled").unwrap(), None);
        assert_serves(addr);
    }
}

#[test]
fn a_client_that_vanishes_mid_frame_does_no_harm() {
    let (_cluster, addrs) = targets(ServerOptions::default());
    for addr in addrs {
        for cut in [1, 3, 4, 10, 37, 50] {
            let bytes = request_bytes(Opcode::PUT, 1, b"vanished", &[9; 20]);
            let mut stream = raw(addr);
            stream.write_all(&bytes[..cut]).unwrap();
            drop(stream);
        }
        // Also after a complete request whose answer is never read.
        let mut stream = raw(addr);
        stream
            .write_all(&request_bytes(Opcode::PUT, 1, b"unread", &[1; 10]))
            .unwrap();
        drop(stream);
        assert_serves(addr);
        let mut c = client(addr);
        assert_eq!(c.get(b"vanished").unwrap(), None);
    }
}

/// A frontend configured as `frontend` (its listen address and backends aside) in front of one
/// default backend.
fn one_backend_cluster(frontend: FrontendConfig) -> LocalCluster {
    LocalCluster::start(
        1,
        BackendConfig::default(),
        FrontendConfig {
            startup_timeout: Duration::from_secs(5),
            ..frontend
        },
    )
    .unwrap()
}

/// A fresh connection that must be refused with BUSY (request id 0) and closed.
fn expect_busy(addr: SocketAddr) {
    let mut stream = raw(addr);
    let answer = read_frame(&mut stream).expect("closed without a BUSY answer");
    assert_eq!(answer.status, Status::BUSY, "{}", answer.message());
    assert_eq!(answer.request_id, 0);
    assert_closed(&mut stream);
}

/// Polls with fresh connections until one gets an OK answer to a PING (bounded).
fn wait_until_served(addr: SocketAddr) -> TcpStream {
    retry(
        Duration::from_secs(5),
        "a connection slot to free up",
        || {
            let mut stream = raw(addr);
            stream
                .write_all(&request_bytes(Opcode::PING, 5, b"", b""))
                .ok()?;
            let answer = read_frame(&mut stream)?;
            match answer.status {
                Status::OK => Some(stream),
                Status::BUSY => None,
                other => panic!("unexpected answer {other}: {}", answer.message()),
            }
        },
    )
}

#[test]
fn the_backend_connection_limit_answers_busy() {
    let backend = ringkv::Backend::start(BackendConfig {
        server: ServerOptions {
            max_connections: 2,
            // These connections only pause between requests: never closed for a newcomer.
            evict_idle_after: Duration::from_secs(3600),
            ..ServerOptions::default()
        },
        ..BackendConfig::default()
    })
    .unwrap();
    let addr = backend.local_addr();
    let mut first = raw(addr);
    let mut second = raw(addr);
    assert_eq!(
        raw_call(&mut first, Opcode::PING, 1, b"", b"").status,
        Status::OK
    );
    assert_eq!(
        raw_call(&mut second, Opcode::PING, 2, b"", b"").status,
        Status::OK
    );
    expect_busy(addr);
    expect_busy(addr);
    // The open ones are unaffected.
    assert_eq!(
        raw_call(&mut second, Opcode::PING, 3, b"", b"").status,
        Status::OK
    );
    drop(first);
    let mut third = wait_until_served(addr);
    assert_eq!(
        raw_call(&mut third, Opcode::PING, 6, b"", b"").status,
        Status::OK
    );
    // Two open again: the limit holds.
    expect_busy(addr);
    assert_eq!(
        raw_call(&mut second, Opcode::PING, 4, b"", b"").status,
        Status::OK
    );
}

#[test]
fn the_frontend_connection_limit_answers_busy() {
    let cluster = one_backend_cluster(FrontendConfig {
        server: ServerOptions {
            max_connections: 2,
            // These connections only pause between requests: never closed for a newcomer.
            evict_idle_after: Duration::from_secs(3600),
            ..ServerOptions::default()
        },
        ..FrontendConfig::default()
    });
    let addr = cluster.frontend_addr();
    let mut first = raw(addr);
    let mut second = raw(addr);
    for (stream, id) in [(&mut first, 1), (&mut second, 2)] {
        assert_eq!(
            raw_call(stream, Opcode::PING, id, b"", b"").status,
            Status::OK
        );
    }
    expect_busy(addr);
    expect_busy(addr);
    assert_eq!(
        raw_call(&mut second, Opcode::PUT, 3, b"k", b"v").status,
        Status::OK
    );
    drop(first);
    let mut third = wait_until_served(addr);
    assert_eq!(
        raw_call(&mut third, Opcode::GET, 7, b"k", b"").status,
        Status::OK
    );
}

#[test]
fn idle_client_connections_hold_no_frontend_worker() {
    let cluster = one_backend_cluster(FrontendConfig {
        threads: 1,
        queue: 1,
        ..FrontendConfig::default()
    });
    let addr = cluster.frontend_addr();
    // Connections that say nothing, and one that stops half-way through a frame.
    let idle: Vec<TcpStream> = (0..20).map(|_| raw(addr)).collect();
    let mut half = raw(addr);
    half.write_all(&request_bytes(Opcode::PUT, 9, b"half", b"sent")[..20])
        .unwrap();
    // One worker, yet everyone else is served at once.
    for _ in 0..3 {
        assert_serves(addr);
    }
    drop(idle);
}

#[test]
fn a_client_that_does_not_read_its_answers_holds_no_frontend_worker() {
    let cluster = one_backend_cluster(FrontendConfig {
        threads: 1,
        queue: 8,
        ..FrontendConfig::default()
    });
    let addr = cluster.frontend_addr();
    let value: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    client(addr).put(b"big", &value).unwrap();
    // 32 MiB of answers, far more than the socket buffers hold, and nobody reading them yet.
    let mut greedy = raw(addr);
    let mut requests = Vec::new();
    for id in 0..32 {
        requests.extend(request_bytes(Opcode::GET, id, b"big", b""));
    }
    greedy.write_all(&requests).unwrap();
    // The only worker is not stuck writing to it: others are served meanwhile.
    for _ in 0..3 {
        assert_serves(addr);
    }
    // And the greedy client still gets every answer, in order, once it reads.
    let mut buf = Vec::new();
    for id in 0..32 {
        let answer = read_frame_buffered(&mut greedy, &mut buf).expect("closed early");
        assert_eq!((answer.request_id, answer.status), (id, Status::OK));
        assert!(answer.value == value, "answer {id} has the wrong value");
    }
}

/// How a stand-in backend answers the frontend's control requests, as a real one would: it takes
/// the view (remembering its epoch in `epoch`), has none at first, and answers probes alive,
/// with the same incarnation, its view confirmed and nothing to copy. `None` for the rest.
fn stand_in_control(request: &Frame, epoch: &std::sync::atomic::AtomicU64) -> Option<Frame> {
    Some(match request.opcode {
        Opcode::VIEW_INSTALL => {
            epoch.store(request.epoch, Ordering::SeqCst);
            request.reply(Status::OK, Vec::new())
        }
        Opcode::VIEW_GET => request.reply(Status::NO_VIEW, Vec::new()),
        Opcode::HEALTH => {
            let mut health = request.reply(Status::OK, vec![0; 42]);
            health.value[7] = 7;
            health.value[8] = 1;
            health.epoch = epoch.load(Ordering::SeqCst);
            health
        }
        _ => return None,
    })
}

/// A backend that takes the frontend's view and then answers key requests only when told to:
/// it keeps the frontend's only worker busy for as long as a test needs.
struct StuckBackend {
    addr: String,
    /// Each key request it receives, as it arrives.
    received: std::sync::mpsc::Receiver<u64>,
    /// Lets every held request be answered (NOT_FOUND).
    release: Option<std::sync::mpsc::Sender<()>>,
}

impl StuckBackend {
    fn start() -> StuckBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen, received) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Arc::new(std::sync::Mutex::new(released));
        let epoch = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = seen.clone();
                let released = std::sync::Arc::clone(&released);
                let epoch = std::sync::Arc::clone(&epoch);
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    while let Some(request) = read_frame_buffered(&mut stream, &mut buf) {
                        let answer = match stand_in_control(&request, &epoch) {
                            Some(answer) => answer,
                            None => {
                                let _ = seen.send(request.request_id);
                                // Waits for the release (or for the test to end).
                                let _ = released.lock().unwrap().recv();
                                request.reply(Status::NOT_FOUND, Vec::new())
                            }
                        };
                        if stream.write_all(&answer.encode()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StuckBackend {
            addr,
            received,
            release: Some(release),
        }
    }
}

#[test]
fn a_full_frontend_queue_answers_busy_and_keeps_the_connection() {
    let backend = StuckBackend::start();
    let mut frontend = ringkv::Frontend::start(FrontendConfig {
        listen: "127.0.0.1:0".into(),
        backends: vec![backend.addr.clone()],
        threads: 1,
        queue: 1,
        // The pool of workers that wait for the backends is what this bounds.
        answering: ringkv::frontend::Answering::Workers,
        startup_timeout: Duration::from_secs(5),
        ..FrontendConfig::default()
    })
    .unwrap();
    let addr = frontend.local_addr();

    // The only worker is stuck forwarding the first GET.
    let mut first = raw(addr);
    first
        .write_all(&request_bytes(Opcode::GET, 1, b"a", b""))
        .unwrap();
    backend
        .received
        .recv_timeout(common::BOUND)
        .expect("the first GET never reached the backend");
    // One more request fits in the queue; the one after it does not. Which of the two is
    // queued depends on which the frontend reads first, so each is read on its own thread.
    let (answers, answered) = std::sync::mpsc::channel();
    let mut waiting = Vec::new();
    for id in [2u64, 3] {
        let mut stream = raw(addr);
        stream
            .write_all(&request_bytes(Opcode::GET, id, b"b", b""))
            .unwrap();
        let answers = answers.clone();
        waiting.push(std::thread::spawn(move || {
            let answer = read_frame(&mut stream).expect("closed without an answer");
            answers.send((answer.request_id, answer.status)).unwrap();
            stream
        }));
    }
    let (busy_id, status) = answered.recv_timeout(common::BOUND).unwrap();
    assert_eq!(status, Status::BUSY, "request {busy_id}");
    drop(backend.release);
    let (queued_id, status) = answered.recv_timeout(common::BOUND).unwrap();
    assert_eq!((queued_id, status), (5 - busy_id, Status::NOT_FOUND));
    let answer = read_frame(&mut first).unwrap();
    assert_eq!((answer.request_id, answer.status), (1, Status::NOT_FOUND));
    // The connection that heard BUSY is still open and is served now.
    for handle in waiting {
        let mut stream = handle.join().unwrap();
        assert_eq!(
            raw_call(&mut stream, Opcode::PING, 10, b"", b"").status,
            Status::OK
        );
    }
    frontend.shutdown();
}

/// One hostile byte string: random bytes, a plausible header with random contents, a valid
/// frame with bytes changed, or a valid frame cut short.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let random = |rng: &mut Rng, n: usize| -> Vec<u8> {
        (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()
    };
    let valid = |rng: &mut Rng| {
        let opcode = Opcode::ALL[rng.below(Opcode::ALL.len() as u64) as usize];
        let key_len = rng.below(40) as usize;
        let value_len = rng.below(100) as usize;
        let key = random(rng, key_len);
        let value = random(rng, value_len);
        request_bytes(opcode, rng.next_u64(), &key, &value)
    };
    match rng.below(4) {
        0 => {
            let n = rng.below(120) as usize;
            random(rng, n)
        }
        1 => {
            let body_len = rng.between(0, 200) as usize;
            let mut bytes = (body_len as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(b"RK\x01");
            bytes.push(rng.below(2) as u8);
            let rest = random(rng, body_len.saturating_sub(4));
            bytes.extend_from_slice(&rest);
            bytes
        }
        2 => {
            let mut bytes = valid(rng);
            for _ in 0..rng.between(1, 3) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            // A flip that happens to cancel another leaves the frame valid; change one more.
            if protocol::decode(&bytes, usize::MAX / 2).is_ok_and(|d| d.is_some()) {
                let last = bytes.len() - 1;
                bytes[last] ^= 0x55;
            }
            bytes
        }
        _ => {
            let mut bytes = valid(rng);
            let cut = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(cut);
            bytes
        }
    }
}

/// Throws `count` garbage strings at `addr`, each on a fresh connection whose write side is
/// closed after it; returns how many error answers came back. Every byte the server sends back
/// must be a well-formed error answer.
fn throw_garbage(addr: SocketAddr, rng: &mut Rng, count: usize) -> u64 {
    let mut answers = 0;
    for _ in 0..count {
        let bytes = garbage(rng);
        let mut stream = raw(addr);
        // The server may close before taking every byte: a failed write is part of the game.
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(Shutdown::Write);
        let mut buf = Vec::new();
        while let Some(answer) = read_frame_buffered(&mut stream, &mut buf) {
            assert_eq!(answer.kind, Kind::Response);
            assert!(
                matches!(answer.status, Status::BAD_FRAME | Status::TOO_LARGE),
                "garbage got {}: {}",
                answer.status,
                answer.message()
            );
            answers += 1;
        }
        assert!(buf.is_empty(), "the server sent a partial frame");
    }
    answers
}

#[test]
fn random_garbage_is_refused_and_the_servers_keep_serving() {
    let (cluster, addrs) = targets(ServerOptions::default());
    let [frontend, backend] = addrs;
    let backend_errors = || {
        let reports = client(backend).stats().unwrap();
        assert_eq!(reports.len(), 1);
        reports[0].counter("errors")
    };
    let errors_before = backend_errors();
    let mut rng = Rng::seeded(0x5eed);
    let started = Instant::now();
    let to_frontend = throw_garbage(frontend, &mut rng, 2500);
    let to_backend = throw_garbage(backend, &mut rng, 2500);
    let elapsed = started.elapsed();
    // Most strings are refused outright; the rest were cut short and closed silently.
    assert!(to_frontend > 1000, "only {to_frontend} error answers");
    assert!(to_backend > 1000, "only {to_backend} error answers");
    // Every refusal the backend counted was one we received.
    assert_eq!(backend_errors() - errors_before, to_backend);
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert_serves(frontend);
    assert_serves(backend);
    let mut c = client(cluster.frontend_addr());
    let reports = c.stats().unwrap();
    let (nodes, _) = split_total(&reports);
    assert!(nodes.iter().all(|r| r.status == Status::OK));
}

/// Writes 1,000 requests in one `write_all` and reads the answers back in order.
fn pipeline_raw(addr: SocketAddr, tag: &str) {
    const N: u64 = 1_000;
    let id = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let key = |i: u64| format!("{tag}-{}", i / 4).into_bytes();
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    // What is stored, as the server should see it after each request.
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for i in 0..N {
        // For each key: PUT, GET, DELETE, GET; a PING every now and then in their place.
        let k = key(i);
        let value = format!("value-{}", i / 4).into_bytes();
        let (opcode, frame_key, frame_value) = match i % 4 {
            _ if i % 97 == 0 => (Opcode::PING, Vec::new(), Vec::new()),
            0 => (Opcode::PUT, k.clone(), value.clone()),
            2 => (Opcode::DELETE, k.clone(), Vec::new()),
            _ => (Opcode::GET, k.clone(), Vec::new()),
        };
        let (status, answer) = match opcode {
            Opcode::PUT => {
                model.insert(k, value);
                (Status::OK, Vec::new())
            }
            Opcode::DELETE => match model.remove(&k) {
                Some(_) => (Status::OK, Vec::new()),
                None => (Status::NOT_FOUND, Vec::new()),
            },
            Opcode::GET => match model.get(&k) {
                Some(v) => (Status::OK, v.clone()),
                None => (Status::NOT_FOUND, Vec::new()),
            },
            _ => (Status::OK, Vec::new()),
        };
        Frame::request(opcode, id(i), frame_key, frame_value).encode_into(&mut bytes);
        expected.push((id(i), opcode, status, answer));
    }
    let mut stream = raw(addr);
    let mut writer = stream.try_clone().unwrap();
    // Written from another thread so that neither side can block the other on full buffers.
    let sender = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
    let mut buf = Vec::new();
    for (i, (id, opcode, status, value)) in expected.iter().enumerate() {
        let answer = read_frame_buffered(&mut stream, &mut buf)
            .unwrap_or_else(|| panic!("closed after {i} answers"));
        assert_eq!(answer.request_id, *id, "answer {i} out of order");
        assert_eq!(answer.opcode, *opcode, "answer {i}");
        assert_eq!(answer.status, *status, "answer {i}: {}", answer.message());
        assert_eq!(&answer.value, value, "answer {i}");
    }
    sender.join().unwrap();
    assert!(buf.is_empty());
    // The same connection goes on as usual.
    assert_eq!(
        raw_call(&mut stream, Opcode::PING, 123, b"", b"").status,
        Status::OK
    );
}

#[test]
fn a_thousand_pipelined_requests_come_back_in_order() {
    let (_cluster, addrs) = targets(ServerOptions::default());
    pipeline_raw(addrs[0], "via-frontend");
    pipeline_raw(addrs[1], "via-backend");
}

/// Sends `frame` on `stream` and reads its answer.
fn exchange(stream: &mut TcpStream, frame: &Frame) -> Frame {
    stream.write_all(&frame.encode()).unwrap();
    read_frame(stream).expect("the server closed the connection instead of answering")
}

/// With a cluster token, a backend takes views, chain writes and state transfers only from a
/// connection that presented it: a forged view or chain write from anyone else is refused
/// UNAUTHORIZED, counted, and changes nothing; clients' own requests need no token; and a
/// frontend without the token cannot give a new cluster its view.
#[test]
fn only_a_peer_with_the_cluster_token_installs_views_or_writes_down_a_chain() {
    use ringkv::cluster::token::ClusterToken;
    let token = ClusterToken::new(b"the right token".to_vec()).unwrap();
    let cluster = LocalCluster::start(
        3,
        BackendConfig {
            cluster_token: Some(token.clone()),
            ..BackendConfig::default()
        },
        FrontendConfig {
            cluster_token: Some(token.clone()),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let mut c = client(cluster.frontend_addr());
    c.put(b"guarded", b"value").unwrap();
    let view = c.view().unwrap();
    let target = cluster.backend_addrs()[0].clone();
    let backend: SocketAddr = target.parse().unwrap();

    // A one-node view that would make the target the only member, with a higher epoch.
    let mut forged_view = ringkv::View::new(
        view.epoch + 10,
        view.routing,
        view.placement,
        1,
        vec![target.clone()],
    );
    forged_view.since = vec![0];
    let mut forged = Frame::request(
        Opcode::VIEW_INSTALL,
        1,
        target.as_bytes().to_vec(),
        protocol::payload::encode_view(&forged_view),
    );
    forged.epoch = forged_view.epoch;
    let mut chain_write = Frame::request(
        Opcode::CHAIN_PUT,
        2,
        b"guarded".to_vec(),
        b"forged".to_vec(),
    );
    chain_write.epoch = view.epoch;
    let auth = |token: &[u8]| Frame::request(Opcode::PEER_AUTH, 3, Vec::new(), token.to_vec());

    let mut stranger = raw(backend);
    assert_eq!(
        exchange(&mut stranger, &forged).status,
        Status::UNAUTHORIZED
    );
    assert_eq!(
        exchange(&mut stranger, &chain_write).status,
        Status::UNAUTHORIZED
    );
    assert_eq!(
        exchange(&mut stranger, &auth(b"a wrong token")).status,
        Status::UNAUTHORIZED
    );
    assert_eq!(
        exchange(&mut stranger, &forged).status,
        Status::UNAUTHORIZED
    );
    // Clients' requests are served on the same connection.
    let get = Frame::request(Opcode::VIEW_GET, 4, Vec::new(), Vec::new());
    let held = exchange(&mut stranger, &get);
    assert_eq!((held.status, held.epoch), (Status::OK, view.epoch));
    let stats = client(backend).stats().unwrap();
    assert_eq!(stats[0].counter("unauthorized"), 4, "{stats:?}");
    assert_eq!(c.get(b"guarded").unwrap().as_deref(), Some(&b"value"[..]));

    // With the token, the same connection gets past the check: the stale view is judged on
    // its merits.
    let mut peer = raw(backend);
    assert_eq!(
        exchange(&mut peer, &auth(token.as_bytes())).status,
        Status::OK
    );
    let mut old = forged.clone();
    old.epoch = 1;
    old.value = protocol::payload::encode_view(&ringkv::View {
        epoch: 1,
        ..forged_view
    });
    assert_eq!(exchange(&mut peer, &old).status, Status::STALE_VIEW);

    // A frontend without the token over new backends that have one: its view is refused.
    let fresh = ringkv::Backend::start(BackendConfig {
        cluster_token: Some(token),
        ..BackendConfig::default()
    })
    .unwrap();
    let _outsider = ringkv::Frontend::start(FrontendConfig {
        backends: vec![fresh.local_addr().to_string()],
        threads: 2,
        replicas: Some(1),
        startup_timeout: Duration::from_secs(2),
        ..FrontendConfig::default()
    })
    .unwrap();
    assert_eq!(
        fresh.epoch(),
        None,
        "a frontend without the token installed its view"
    );
}

/// A backend at its connection limit refuses a new connection with BUSY (request id 0) before
/// reading anything. The frontend passes that on as BUSY (nothing was done), not as an
/// UNAVAILABLE or a protocol error.
#[test]
fn a_backend_at_its_connection_limit_is_reported_busy_not_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let epoch = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let epoch = std::sync::Arc::clone(&epoch);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some(request) = read_frame_buffered(&mut stream, &mut buf) {
                    let answer = match stand_in_control(&request, &epoch) {
                        Some(answer) => answer,
                        // The connection the frontend forwards key requests on: refused as a
                        // server at its limit refuses it.
                        None => {
                            let busy =
                                Frame::error_for_id(0, Status::BUSY, "at the connection limit");
                            let _ = stream.write_all(&busy.encode());
                            return;
                        }
                    };
                    if stream.write_all(&answer.encode()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut frontend = ringkv::Frontend::start(FrontendConfig {
        backends: vec![addr],
        threads: 2,
        replicas: Some(1),
        startup_timeout: Duration::from_secs(5),
        ..FrontendConfig::default()
    })
    .unwrap();
    let mut stream = raw(frontend.local_addr());
    let answer = raw_call(&mut stream, Opcode::GET, 5, b"k", b"");
    assert_eq!(answer.status, Status::BUSY, "{}", answer.message());
    assert!(
        answer.message().contains("connection limit"),
        "{}",
        answer.message()
    );
    // The connection is still usable.
    assert_eq!(
        raw_call(&mut stream, Opcode::PING, 6, b"", b"").status,
        Status::OK
    );
    frontend.shutdown();
}

/// The write timeout bounds the time to write a batch of answers, not each write call: a client
/// that takes its answers a trickle at a time is cut off about the timeout after its answers
/// stall, instead of holding the connection for as long as it keeps taking a few bytes.
#[test]
fn a_client_that_reads_a_trickle_is_cut_off_after_the_write_timeout() {
    let io = Duration::from_secs(1);
    let cluster = LocalCluster::start(
        1,
        BackendConfig {
            server: ServerOptions {
                timeouts: Timeouts {
                    io,
                    ..Timeouts::default()
                },
                ..ServerOptions::default()
            },
            ..BackendConfig::default()
        },
        FrontendConfig::default(),
    )
    .unwrap();
    // The backend itself: one thread per connection, the write timeout of 1 s.
    let addr: SocketAddr = cluster.backend_addrs()[0].parse().unwrap();
    let value = vec![b'v'; 1 << 20];
    let mut put = raw(addr);
    assert_eq!(
        raw_call(&mut put, Opcode::PUT, 1, b"big", &value).status,
        Status::OK
    );
    // 64 MiB of answers asked for at once, more than any socket buffers hold.
    let mut slow = raw(addr);
    let mut requests = Vec::new();
    for id in 0..64 {
        requests.extend(request_bytes(Opcode::GET, id, b"big", b""));
    }
    slow.write_all(&requests).unwrap();
    let (closed_after, taken) = common::read_a_trickle_until_closed(&mut slow);
    assert!(taken < 64 << 20, "every answer was taken ({taken} bytes)");
    eprintln!("cut off after {closed_after:?}, {taken} bytes taken");
    // The socket buffers fill at once; from then on the stalled batch has one timeout, and the
    // buffered bytes still drain to the client before it sees the close.
    assert!(
        closed_after < Duration::from_secs(15),
        "cut off only after {closed_after:?}"
    );
    // Others are still served.
    assert_serves(addr);
}

/// At its connection limit a server closes the connection that has been idle longest (here one
/// that never said a thing) to make room, instead of locking newcomers out until the idle
/// timeout; a connection in use is kept.
#[test]
fn at_its_connection_limit_a_server_closes_the_connection_idle_longest() {
    let cluster = one_backend_cluster(FrontendConfig {
        server: ServerOptions {
            max_connections: 2,
            evict_idle_after: Duration::from_millis(300),
            ..ServerOptions::default()
        },
        ..FrontendConfig::default()
    });
    let addr = cluster.frontend_addr();
    let mut quiet = raw(addr);
    let mut active = raw(addr);
    assert_eq!(
        raw_call(&mut active, Opcode::PING, 1, b"", b"").status,
        Status::OK
    );
    // Waits out the idle time the quiet connection needs (a time condition, not a readiness).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        raw_call(&mut active, Opcode::PING, 2, b"", b"").status,
        Status::OK
    );
    let mut newcomer = raw(addr);
    assert_eq!(
        raw_call(&mut newcomer, Opcode::PING, 3, b"", b"").status,
        Status::OK
    );
    assert_closed(&mut quiet);
    assert_eq!(
        raw_call(&mut active, Opcode::PING, 4, b"", b"").status,
        Status::OK
    );
}

/// The peak resident memory of process `pid` over `watch`, while `client` keeps making small
/// PUTs and GETs each answered within `bound`.
fn peak_while_served(
    client: &mut ringkv::Client,
    pid: u32,
    watch: Duration,
    bound: Duration,
) -> u64 {
    let mut peak = 0;
    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < watch {
        let asked = Instant::now();
        let key = format!("small-{step}");
        client.put(key.as_bytes(), b"v").unwrap();
        assert_eq!(
            client.get(key.as_bytes()).unwrap().as_deref(),
            Some(&b"v"[..])
        );
        assert!(
            asked.elapsed() < bound,
            "a small PUT and GET took {:?} beside the hostile clients",
            asked.elapsed()
        );
        peak = peak.max(resident(pid));
        step += 1;
        // Sampling, not synchronisation: the memory is read between requests.
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

/// Resident memory of process `pid`, in bytes (VmRSS).
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// 200 connections each announce a frame (or, on the Redis door, a bulk string) of nearly 8 MiB
/// and send only its first bytes: the servers' memory follows the bytes that arrived, not the
/// lengths announced (before, each such connection cost the whole announced length), and a
/// client keeps being served meanwhile.
#[test]
fn announced_lengths_cost_no_memory_until_the_bytes_arrive() {
    use common::process::one_backend_local;
    const CONNECTIONS: usize = 200;
    let server = one_backend_local(&[]);
    let frontend = server.listening("frontend");
    let resp: SocketAddr = server.listening("resp").parse().unwrap();
    let backend: SocketAddr = server.listening("backend").parse().unwrap();
    let mut client = ringkv::Client::connect(&frontend).unwrap();
    client.put(b"probe", b"before").unwrap();
    let before = resident(server.pid());
    let announced = (8 * 1024 * 1024 - 64) as u32;
    let mut held = Vec::new();
    for i in 0..CONNECTIONS {
        let mut native = raw(if i % 2 == 0 {
            backend
        } else {
            frontend.parse().unwrap()
        });
        let mut start = announced.to_be_bytes().to_vec();
        start.extend_from_slice(&[0u8; 1000]);
        native.write_all(&start).unwrap();
        held.push(native);
        let mut door = raw(resp);
        door.write_all(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", announced).as_bytes())
            .unwrap();
        door.write_all(&[b'x'; 1000]).unwrap();
        held.push(door);
    }
    // Served throughout, and the partial frames are all held.
    client.put(b"probe", b"during").unwrap();
    assert_eq!(
        client.get(b"probe").unwrap().as_deref(),
        Some(&b"during"[..])
    );
    let grown = resident(server.pid()).saturating_sub(before);
    // 400 partial requests: a chunk each, not 8 MiB each (3.2 GiB).
    assert!(
        grown < 160 * 1024 * 1024,
        "resident memory grew by {} MiB for {} announced 8 MiB requests",
        grown / (1024 * 1024),
        2 * CONNECTIONS
    );
    drop(held);
}

/// Clients that pipeline GETs of the largest values and never read the answers: once the
/// servers have made one large answer, every connection's batches hold only as many GETs as fit
/// 16 MiB (`ANSWER_BUDGET`), so each such client costs the servers about that much until the
/// write deadline cuts it off, not a batch of 32 values of 4 MiB (128 MiB) each; and a
/// well-behaved client is served throughout.
#[test]
fn clients_that_never_read_big_answers_hold_a_bounded_share_of_memory() {
    use common::process::one_backend_local;
    const GREEDY: usize = 6;
    const GETS: usize = 96;
    let server = one_backend_local(&["--resp-listen", "off"]);
    let frontend: SocketAddr = server.listening("frontend").parse().unwrap();
    let mut client = ringkv::Client::connect(&frontend.to_string()).unwrap();
    let big = vec![7u8; protocol::Limits::default().max_value];
    for i in 0..8 {
        client.put(format!("big-{i}").as_bytes(), &big).unwrap();
    }
    // One large answer, as any reader of big values makes: from then on batches are small.
    assert_eq!(
        client.get(b"big-0").unwrap().map(|v| v.len()),
        Some(big.len())
    );
    let before = resident(server.pid());
    let mut greedy = Vec::new();
    for c in 0..GREEDY {
        let mut stream = raw(frontend);
        let mut requests = Vec::new();
        for i in 0..GETS {
            let key = format!("big-{}", (c + i) % 8);
            requests.extend(request_bytes(
                Opcode::GET,
                i as u64 + 1,
                key.as_bytes(),
                b"",
            ));
        }
        stream.write_all(&requests).unwrap();
        greedy.push(stream);
    }
    // The peak over two seconds, while a well-behaved client keeps being served.
    let peak = peak_while_served(
        &mut client,
        server.pid(),
        Duration::from_secs(2),
        Duration::from_secs(2),
    );
    let grown = peak.saturating_sub(before);
    eprintln!(
        "{GREEDY} clients not reading {GETS} GETs of 4 MiB each: resident memory grew by {} MiB",
        grown >> 20
    );
    // About 40 MiB each: a batch's 16 MiB of answers and their encoded copy at the frontend,
    // the socket buffers, and the backend's answers in flight; before, a batch of 32 values
    // each (1.4 GiB in all, measured).
    assert!(
        grown < 400 << 20,
        "resident memory grew by {} MiB for {GREEDY} clients not reading their answers",
        grown >> 20
    );
    drop(greedy);
}

/// Many clients each sending most of a large frame, and none finishing it: the process's
/// in-flight budget (`--max-inflight-bytes`) bounds what their buffers hold together, the
/// readers past it wait with the bytes left in the kernel, and once the frame timeout passes
/// they are answered BUSY with their request id (nothing done) and closed. Small requests never
/// wait for the budget.
#[test]
fn the_in_flight_budget_bounds_what_many_large_requests_hold_together() {
    use common::process::one_backend_local;
    const SENDERS: usize = 48;
    const BUDGET: u64 = 32 << 20;
    let budget = BUDGET.to_string();
    let server = one_backend_local(&["--max-inflight-bytes", &budget]);
    let frontend: SocketAddr = server.listening("frontend").parse().unwrap();
    let resp: SocketAddr = server.listening("resp").parse().unwrap();
    let mut client = ringkv::Client::connect(&frontend.to_string()).unwrap();
    client.put(b"probe", b"before").unwrap();
    let before = resident(server.pid());
    let value = std::sync::Arc::new(vec![b'x'; protocol::Limits::default().max_value]);
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let value = std::sync::Arc::clone(&value);
            std::thread::spawn(move || {
                let id = 1_000 + i as u64;
                // Half on the binary port, half on the Redis door.
                let redis = i % 2 == 1;
                let frame = if redis {
                    let mut set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len())
                        .into_bytes();
                    set.extend_from_slice(&value);
                    set.extend_from_slice(b"\r\n");
                    set
                } else {
                    request_bytes(Opcode::PUT, id, b"big", &value)
                };
                let mut stream = raw(if redis { resp } else { frontend });
                stream
                    .set_write_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                // Most of the frame, never the end of it; a reader that waits for the budget
                // leaves the rest in the kernel, so the write may not finish.
                let _ = stream.write_all(&frame[..frame.len() * 7 / 8]);
                // A waiter is answered once its frame timeout (10 s) has passed; a sender whose
                // bytes were all taken in just stalls, and closes its end after that.
                stream
                    .set_read_timeout(Some(Duration::from_secs(12)))
                    .unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let answer = loop {
                    if redis && buf.ends_with(b"\r\n") {
                        break Some(Err(String::from_utf8_lossy(&buf).into_owned()));
                    }
                    if let Ok(Some((frame, _))) = protocol::decode(&buf, usize::MAX / 2) {
                        break Some(Ok(frame));
                    }
                    match std::io::Read::read(&mut stream, &mut chunk) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                (id, answer)
            })
        })
        .collect();
    // Served throughout, while the senders' bytes arrive.
    let peak = peak_while_served(
        &mut client,
        server.pid(),
        Duration::from_millis(1500),
        Duration::from_secs(1),
    );
    let grown = peak.saturating_sub(before);
    eprintln!(
        "{SENDERS} connections each sending 7/8 of a 4 MiB request under a budget of {} MiB: \
         resident memory grew by {} MiB",
        BUDGET >> 20,
        grown >> 20
    );
    // The budget, 128 KiB free per connection, and the copies a read makes as a buffer grows;
    // without the budget, 168 MiB of frames.
    assert!(
        grown < 100 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    let mut busy = 0;
    for sender in senders {
        let (id, answer) = sender.join().unwrap();
        // Those that had their buffer grown are dropped as stalled frames, without an answer;
        // those that waited for the budget are told BUSY.
        match answer {
            Some(Ok(answer)) => {
                assert_eq!(answer.status, Status::BUSY, "{answer:?}");
                assert_eq!(answer.request_id, id);
                assert!(answer.message().contains("in flight"), "{answer:?}");
                busy += 1;
            }
            Some(Err(reply)) => {
                assert!(reply.starts_with("-ERR BUSY: "), "{reply}");
                assert!(reply.contains("in flight"), "{reply}");
                busy += 1;
            }
            None => {}
        }
    }
    assert!(busy > 0, "no sender waited for the budget");
    eprintln!("{busy} of {SENDERS} senders were answered BUSY");
    assert_eq!(
        client.get(b"big").unwrap(),
        None,
        "no partial PUT was applied"
    );
    client.put(b"big", &vec![b'y'; 1 << 20]).unwrap();
    assert_eq!(client.get(b"big").unwrap().map(|v| v.len()), Some(1 << 20));
}
