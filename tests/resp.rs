//! The Redis-protocol door over real sockets: raw RESP2 edge cases, the same keys through both
//! doors, limits and timeouts, batching into the handler, and redis-cli / redis-benchmark driven
//! as processes.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{run_bounded, ChildGuard, Finished};
use common::resp::{bulk, multibulk, ok, Conn, Resp};
use common::{client, small_limits, BOUND};
use ringkv::connection::Timeouts;
use ringkv::protocol::{Frame, Opcode, Status};
use ringkv::server::Handler;
use ringkv::{BackendConfig, FrontendConfig, LocalCluster, ServerOptions};

const RINGKV: &str = env!("CARGO_BIN_EXE_ringkv");

fn error_starting(reply: &Resp, prefix: &str) -> bool {
    matches!(reply, Resp::Error(text) if text.starts_with(prefix))
}

/// A cluster of `backends` backends whose frontend opens the RESP door on a free port.
fn cluster_with(backends: usize, server: ServerOptions) -> LocalCluster {
    LocalCluster::start(
        backends,
        BackendConfig::default(),
        FrontendConfig {
            threads: 8,
            startup_timeout: Duration::from_secs(5),
            resp_listen: Some("127.0.0.1:0".into()),
            server,
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

fn cluster() -> LocalCluster {
    cluster_with(3, ServerOptions::default())
}

fn resp_addr(cluster: &LocalCluster) -> SocketAddr {
    cluster.resp_addr().expect("the RESP door is open")
}

#[test]
fn inline_and_multibulk_commands_answer_like_redis() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.call(&[b"PING"]), Resp::Simple("PONG".into()));
    assert_eq!(conn.call(&[b"ping", b"hi"]), bulk(b"hi"));
    assert_eq!(conn.call(&[b"ECHO", b"x y"]), bulk(b"x y"));
    conn.send(b"SET inline-key \"two words\"\r\n");
    assert_eq!(conn.reply(), ok());
    conn.send(b"GET inline-key\n");
    assert_eq!(conn.reply(), bulk(b"two words"));
    assert_eq!(conn.call(&[b"get", b"absent"]), Resp::Nil);
    assert_eq!(
        conn.call(&[b"MSET", b"m1", b"v1", b"m2", b"v2"]),
        ok(),
        "MSET"
    );
    assert_eq!(
        conn.call(&[b"MGET", b"m1", b"absent", b"m2"]),
        Resp::Array(vec![bulk(b"v1"), Resp::Nil, bulk(b"v2")])
    );
    assert_eq!(
        conn.call(&[b"EXISTS", b"m1", b"m1", b"absent"]),
        Resp::Int(2)
    );
    assert_eq!(conn.call(&[b"DBSIZE"]), Resp::Int(3));
    assert_eq!(conn.call(&[b"DEL", b"m1", b"absent", b"m2"]), Resp::Int(2));
    assert_eq!(conn.call(&[b"DBSIZE"]), Resp::Int(1));
    assert_eq!(conn.call(&[b"SELECT", b"0"]), ok());
    assert!(error_starting(
        &conn.call(&[b"SELECT", b"1"]),
        "ERR DB index is out of range"
    ));
}

#[test]
fn a_pipeline_of_mixed_commands_is_answered_in_order() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        let key = format!("pipe-{i}");
        let value = format!("value-{i}");
        pipeline.extend(multibulk(&[b"SET", key.as_bytes(), value.as_bytes()]));
        expected.push(ok());
        pipeline.extend(format!("GET {key}\r\n").into_bytes());
        expected.push(bulk(value.as_bytes()));
        pipeline.extend_from_slice(b"PING\r\n");
        expected.push(Resp::Simple("PONG".into()));
        if i % 10 == 9 {
            pipeline.extend(multibulk(&[b"MGET", key.as_bytes(), b"nope"]));
            expected.push(Resp::Array(vec![bulk(value.as_bytes()), Resp::Nil]));
            pipeline.extend(multibulk(&[b"NOSUCH", key.as_bytes()]));
            expected.push(Resp::Error(format!(
                "ERR unknown command 'NOSUCH', with args beginning with: '{key}' "
            )));
            pipeline.extend(multibulk(&[b"DEL", key.as_bytes()]));
            expected.push(Resp::Int(1));
        }
    }
    conn.send(&pipeline);
    let replies: Vec<Resp> = (0..expected.len()).map(|_| conn.reply()).collect();
    assert_eq!(replies, expected);
    assert_eq!(conn.call(&[b"DBSIZE"]), Resp::Int(36));
}

#[test]
fn values_are_binary_safe_and_may_be_empty() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let tricky: &[&[u8]] = &[
        b"a\r\nb",
        b"\r\n",
        b"$3\r\n*1\r\n",
        b"\0\0",
        &every_byte,
        b"",
    ];
    for (i, value) in tricky.iter().enumerate() {
        let key = format!("bin\r\n{i}\0");
        assert_eq!(conn.call(&[b"SET", key.as_bytes(), value]), ok());
        assert_eq!(
            conn.call(&[b"GET", key.as_bytes()]),
            bulk(value),
            "value {i}"
        );
    }
    assert_eq!(
        conn.call(&[b"EXISTS", b"bin\r\n5\0"]),
        Resp::Int(1),
        "empty value"
    );
}

#[test]
fn the_same_keys_are_seen_through_both_doors() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let mut native = client(cluster.frontend_addr());
    assert_eq!(conn.call(&[b"SET", b"from-resp", b"r\r\nvalue"]), ok());
    assert_eq!(
        native.get(b"from-resp").unwrap().as_deref(),
        Some(&b"r\r\nvalue"[..])
    );
    native.put(b"from-native", b"n\0value").unwrap();
    assert_eq!(conn.call(&[b"GET", b"from-native"]), bulk(b"n\0value"));
    assert_eq!(conn.call(&[b"DEL", b"from-native"]), Resp::Int(1));
    assert_eq!(native.get(b"from-native").unwrap(), None);
    let total: u64 = native
        .size()
        .unwrap()
        .last()
        .map(|total| total.counter("keys"))
        .unwrap();
    assert_eq!(conn.call(&[b"DBSIZE"]), Resp::Int(total as i64));
}

#[test]
fn errors_keep_the_connection_usable() {
    let cluster = cluster_with(
        1,
        ServerOptions {
            limits: small_limits(),
            ..ServerOptions::default()
        },
    );
    let mut conn = Conn::open(resp_addr(&cluster));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (multibulk(&[b"LPUSH"]), "ERR unknown command 'LPUSH'"),
        (
            multibulk(&[b"GET"]),
            "ERR wrong number of arguments for 'get' command",
        ),
        (
            multibulk(&[b"GET", b"a", b"b"]),
            "ERR wrong number of arguments for 'get' command",
        ),
        (
            multibulk(&[b"MSET", b"a"]),
            "ERR wrong number of arguments for 'mset' command",
        ),
        (
            multibulk(&[b"MSET", b"a", b"1", b"b"]),
            "ERR wrong number of arguments for 'mset' command",
        ),
        (
            multibulk(&[b"SET", b"a", b"1", b"EX", b"0"]),
            "ERR invalid expire time in 'set' command",
        ),
        (
            multibulk(&[b"SET", b"a", b"1", b"NOPE"]),
            "ERR syntax error",
        ),
        (multibulk(&[b"SET", b"", b"1"]), "ERR BAD_REQUEST: "),
        (multibulk(&[b"SELECT", b"x"]), "ERR value is not an integer"),
        (
            multibulk(&[b"CONFIG", b"SET", b"a", b"b"]),
            "ERR unknown subcommand 'SET'",
        ),
        (
            multibulk(&[b"GET", &[b'k'; 65]]),
            "ERR TOO_LARGE: key of 65 bytes",
        ),
        (
            b"bogus\r\n".to_vec(),
            "ERR unknown command 'bogus', with args beginning with: ",
        ),
    ];
    for (request, prefix) in cases {
        conn.send(&request);
        let reply = conn.reply();
        assert!(
            error_starting(&reply, prefix),
            "{}: {reply:?}",
            String::from_utf8_lossy(&request)
        );
    }
    // A value at the limit is fine; one byte over it is TOO_LARGE, and the connection stays.
    // An MSET with one key over the limit changes nothing.
    assert_eq!(conn.call(&[b"SET", b"k", &[b'v'; 1024]]), ok());
    assert!(error_starting(
        &conn.call(&[b"SET", b"k", &[b'v'; 1025]]),
        "ERR TOO_LARGE: value of 1025 bytes"
    ));
    assert!(error_starting(
        &conn.call(&[b"MSET", b"k2", b"x", &[b'k'; 65], b"y"]),
        "ERR TOO_LARGE: key of 65 bytes"
    ));
    assert_eq!(conn.call(&[b"EXISTS", b"k2", b"k"]), Resp::Int(1));
    assert_eq!(conn.call(&[b"PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn malformed_requests_get_a_protocol_error_and_the_connection_closes() {
    let cluster = cluster_with(
        1,
        ServerOptions {
            limits: small_limits(),
            ..ServerOptions::default()
        },
    );
    let addr = resp_addr(&cluster);
    let oversized_bulk = {
        // Over the frame limit (8 MiB at least): refused from its header, before it arrives.
        let mut bytes = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n".to_vec();
        bytes.extend(vec![b'v'; 2000]);
        bytes
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"*1\r\n$-1\r\n".to_vec(), "invalid bulk length"),
        (b"*1\r\n$abc\r\n".to_vec(), "invalid bulk length"),
        (
            b"*1\r\n$99999999999999999999999\r\n".to_vec(),
            "invalid bulk length",
        ),
        (oversized_bulk, "invalid bulk length"),
        (b"*abc\r\n".to_vec(), "invalid multibulk length"),
        (b"*99999999999\r\n".to_vec(), "invalid multibulk length"),
        (b"*1\r\nPING\r\n".to_vec(), "expected '$', got 'P'"),
        (
            b"SET k \"unterminated\r\n".to_vec(),
            "unbalanced quotes in request",
        ),
        (vec![b'x'; 70 * 1024], "too big inline request"),
        (
            [b"*".as_slice(), &[b'1'; 70 * 1024]].concat(),
            "too big mbulk count string",
        ),
    ];
    for (request, text) in cases {
        let mut conn = Conn::open(addr);
        // The request before the bad one is answered first, in order.
        conn.send(b"PING\r\n");
        conn.send(&request);
        assert_eq!(conn.reply(), Resp::Simple("PONG".into()));
        let reply = conn.reply();
        assert_eq!(
            reply,
            Resp::Error(format!("ERR Protocol error: {text}")),
            "{:?}",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
        conn.assert_closed();
    }
    // Nothing of that harmed the door.
    assert_eq!(
        Conn::open(addr).call(&[b"PING"]),
        Resp::Simple("PONG".into())
    );
}

#[test]
fn empty_requests_are_ignored_and_quit_closes() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    conn.send(b"\r\n   \r\n*0\r\n*-1\r\nPING\r\n");
    assert_eq!(conn.reply(), Resp::Simple("PONG".into()));
    conn.send(b"QUIT\r\nPING\r\n");
    assert_eq!(conn.reply(), ok());
    conn.assert_closed();
}

#[test]
fn garbage_never_takes_the_door_down() {
    let cluster = cluster();
    let addr = resp_addr(&cluster);
    let mut rng = ringkv::rng::Rng::seeded(5);
    let blobs: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            let len = 1 + rng.below(300) as usize;
            let alphabet: &[u8] = if i % 2 == 0 {
                b"*$\r\n-0123456789 \"'\\x"
            } else {
                &[]
            };
            (0..len)
                .map(|_| {
                    if alphabet.is_empty() {
                        rng.below(256) as u8
                    } else {
                        alphabet[rng.below(alphabet.len() as u64) as usize]
                    }
                })
                .collect()
        })
        .chain([
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
            ringkv::protocol::Frame::request(Opcode::PUT, 1, b"k".to_vec(), b"v".to_vec()).encode(),
        ])
        .collect();
    for blob in blobs {
        let mut conn = Conn::open(addr);
        conn.send(&blob);
        // Whatever it is answered, the connection either waits for more (then the client's
        // half-close ends it) or closes by itself; both within the bound.
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        match conn.stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the door neither answered nor closed: {e}"),
        }
    }
    assert_eq!(
        Conn::open(addr).call(&[b"PING"]),
        Resp::Simple("PONG".into())
    );
}

#[test]
fn info_command_and_config_describe_the_cluster() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    assert_eq!(conn.call(&[b"MSET", b"i1", b"a", b"i2", b"b"]), ok());
    let Resp::Bulk(info) = conn.call(&[b"INFO"]) else {
        panic!("INFO is not a bulk string")
    };
    let info = String::from_utf8(info).unwrap();
    for section in ["# Server", "# Clients", "# Keyspace", "# Nodes"] {
        assert!(info.contains(section), "{section} missing:\n{info}");
    }
    assert!(info.contains("db0:keys=2,"), "{info}");
    assert!(info.contains("nodes:3\r\n"), "{info}");
    let node_lines: Vec<&str> = info.lines().filter(|l| l.starts_with("node")).collect();
    assert_eq!(node_lines.len(), 4, "{info}");
    for (i, addr) in cluster.backend_addrs().iter().enumerate() {
        assert!(
            info.contains(&format!("node{i}:addr={addr},status=OK,keys=")),
            "{info}"
        );
    }
    let Resp::Bulk(server_only) = conn.call(&[b"INFO", b"server"]) else {
        panic!("INFO server is not a bulk string")
    };
    let server_only = String::from_utf8(server_only).unwrap();
    assert!(server_only.starts_with("# Server\r\n") && !server_only.contains("# Nodes"));

    assert_eq!(
        conn.call(&[b"CONFIG", b"GET", b"save"]),
        Resp::Array(vec![bulk(b"save"), bulk(b"")])
    );
    assert_eq!(
        conn.call(&[b"config", b"get", b"appendonly"]),
        Resp::Array(vec![bulk(b"appendonly"), bulk(b"no")])
    );
    assert_eq!(
        conn.call(&[b"CONFIG", b"GET", b"no-such-parameter"]),
        Resp::Array(vec![])
    );
    let Resp::Int(count) = conn.call(&[b"COMMAND", b"COUNT"]) else {
        panic!("COMMAND COUNT is not an integer")
    };
    let Resp::Array(table) = conn.call(&[b"COMMAND"]) else {
        panic!("COMMAND is not an array")
    };
    assert_eq!(table.len() as i64, count);
    assert_eq!(
        conn.call(&[b"COMMAND", b"INFO", b"get", b"nosuch"]),
        Resp::Array(vec![
            Resp::Array(vec![
                bulk(b"get"),
                Resp::Int(2),
                Resp::Array(vec![
                    Resp::Simple("readonly".into()),
                    Resp::Simple("fast".into())
                ]),
                Resp::Int(1),
                Resp::Int(1),
                Resp::Int(1),
            ]),
            Resp::NilArray,
        ])
    );
}

#[test]
fn connections_over_the_limit_are_refused() {
    let cluster = cluster_with(
        1,
        ServerOptions {
            max_connections: 2,
            // Nothing is idle long enough to be closed for room here.
            evict_idle_after: Duration::from_secs(600),
            ..ServerOptions::default()
        },
    );
    let addr = resp_addr(&cluster);
    let mut held: Vec<Conn> = (0..2).map(|_| Conn::open(addr)).collect();
    for conn in &mut held {
        assert_eq!(conn.call(&[b"PING"]), Resp::Simple("PONG".into()));
    }
    let mut refused = Conn::open(addr);
    assert_eq!(
        refused.reply(),
        Resp::Error("ERR max number of clients reached".into())
    );
    refused.assert_closed();
    drop(held);
    // The slots come back once their connections are gone.
    common::retry(BOUND, "a connection accepted again", || {
        let mut conn = Conn::open(addr);
        conn.send(b"PING\r\n");
        (conn.try_reply()? == Resp::Simple("PONG".into())).then_some(())
    });
}

/// At the limit the door closes the connection idle longest to make room, as the binary port
/// does, instead of locking newcomers out until the idle timeout; one in use is kept.
#[test]
fn at_the_limit_the_connection_idle_longest_makes_room() {
    let cluster = cluster_with(
        1,
        ServerOptions {
            max_connections: 2,
            evict_idle_after: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    );
    let addr = resp_addr(&cluster);
    let mut quiet = Conn::open(addr);
    let mut active = Conn::open(addr);
    assert_eq!(active.call(&[b"PING"]), Resp::Simple("PONG".into()));
    // Waits out the idle time the quiet connection needs (a time condition, not a readiness).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(active.call(&[b"PING"]), Resp::Simple("PONG".into()));
    let mut newcomer = Conn::open(addr);
    assert_eq!(newcomer.call(&[b"SET", b"k", b"v"]), ok());
    quiet.assert_closed();
    assert_eq!(active.call(&[b"GET", b"k"]), bulk(b"v"));
}

/// The write timeout covers a whole reply, not each write call: a client that takes its
/// replies a trickle at a time is cut off soon after it, not served for as long as it keeps
/// taking a few bytes.
#[test]
fn a_client_that_reads_a_trickle_is_cut_off_after_the_write_timeout() {
    let io = Duration::from_secs(1);
    let cluster = cluster_with(
        1,
        ServerOptions {
            timeouts: Timeouts {
                io,
                ..Timeouts::default()
            },
            ..ServerOptions::default()
        },
    );
    let addr = resp_addr(&cluster);
    let value = vec![b'v'; 1 << 20];
    let mut writer = Conn::open(addr);
    assert_eq!(writer.call(&[b"SET", b"big", &value]), ok());
    // 64 MiB of replies asked for at once, more than any socket buffers hold.
    let mut slow = TcpStream::connect(addr).unwrap();
    let requests: Vec<u8> = (0..64).flat_map(|_| multibulk(&[b"GET", b"big"])).collect();
    slow.write_all(&requests).unwrap();
    let (closed_after, taken) = common::read_a_trickle_until_closed(&mut slow);
    assert!(taken < 64 << 20, "every reply was taken ({taken} bytes)");
    eprintln!("cut off after {closed_after:?}, {taken} bytes taken");
    // The socket buffers fill at once; from then on the stalled batch has one timeout, and what
    // is already in the socket buffers still drains to the client before it sees the close.
    assert!(
        closed_after < Duration::from_secs(15),
        "cut off only after {closed_after:?}"
    );
    assert_eq!(writer.call(&[b"GET", b"missing"]), Resp::Nil);
}

#[test]
fn idle_and_stalled_connections_are_closed() {
    let timeouts = Timeouts {
        idle: Duration::from_millis(400),
        frame: Duration::from_millis(200),
        ..Timeouts::default()
    };
    let cluster = cluster_with(
        1,
        ServerOptions {
            timeouts,
            ..ServerOptions::default()
        },
    );
    let addr = resp_addr(&cluster);
    let started = Instant::now();
    let mut idle = Conn::open(addr);
    assert_eq!(idle.call(&[b"PING"]), Resp::Simple("PONG".into()));
    let mut stalled = Conn::open(addr);
    stalled.send(b"*2\r\n$3\r\nGET\r\n$5\r\nab");
    stalled.assert_closed();
    idle.assert_closed();
    assert!(
        started.elapsed() >= timeouts.idle,
        "closed before the idle timeout"
    );
}

#[test]
fn shutdown_closes_open_connections() {
    let mut cluster = cluster();
    let addr = resp_addr(&cluster);
    let mut conn = Conn::open(addr);
    assert_eq!(conn.call(&[b"PING"]), Resp::Simple("PONG".into()));
    cluster.shutdown();
    conn.assert_closed();
    assert!(
        TcpStream::connect_timeout(&addr, BOUND).is_err(),
        "still listening"
    );
}

/// A handler that records the size of every batch it is given and keeps values in a map.
#[derive(Default)]
struct Recording {
    batches: Mutex<Vec<usize>>,
    stored: Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
}

impl Handler for Recording {
    fn handle(&self, request: Frame) -> Frame {
        if request.key == b"panic" {
            panic!("a handler failing on one key");
        }
        let mut stored = self.stored.lock().unwrap();
        match request.opcode {
            Opcode::PUT => {
                stored.insert(request.key.clone(), request.value.clone());
                request.reply(Status::OK, Vec::new())
            }
            Opcode::GET => match stored.get(&request.key) {
                Some(value) => request.reply(Status::OK, value.clone()),
                None => request.reply(Status::NOT_FOUND, Vec::new()),
            },
            Opcode::DELETE if request.key == b"full" => {
                request.error_reply(Status::STORAGE_FULL, "no room")
            }
            _ => request.error_reply(Status::UNAVAILABLE, "backend 10.0.0.1:1 is unavailable"),
        }
    }

    fn handle_batch(&self, requests: Vec<Frame>) -> Vec<Frame> {
        self.batches.lock().unwrap().push(requests.len());
        requests.into_iter().map(|r| self.handle(r)).collect()
    }
}

#[test]
fn requests_already_read_go_to_the_handler_as_one_batch() {
    let handler = Arc::new(Recording::default());
    let door = ringkv::resp::serve(
        "127.0.0.1:0",
        ServerOptions::default(),
        Arc::clone(&handler) as Arc<dyn Handler>,
    )
    .unwrap();
    let mut conn = Conn::open(door.local_addr());
    let mut pipeline = Vec::new();
    for i in 0..16 {
        pipeline.extend(multibulk(&[b"SET", format!("k{i}").as_bytes(), b"v"]));
    }
    conn.send(&pipeline);
    for _ in 0..16 {
        assert_eq!(conn.reply(), ok());
    }
    // MGET and MSET expand into one frame per key, in the same batch as the commands around
    // them; PING needs no frame.
    let mut mixed = multibulk(&[b"MGET", b"k0", b"k1", b"none"]);
    mixed.extend(multibulk(&[b"PING"]));
    mixed.extend(multibulk(&[b"MSET", b"a", b"1", b"b", b"2"]));
    mixed.extend(multibulk(&[b"GET", b"a"]));
    conn.send(&mixed);
    assert_eq!(
        conn.reply(),
        Resp::Array(vec![bulk(b"v"), bulk(b"v"), Resp::Nil])
    );
    assert_eq!(conn.reply(), Resp::Simple("PONG".into()));
    assert_eq!(conn.reply(), ok());
    assert_eq!(conn.reply(), bulk(b"1"));
    assert_eq!(*handler.batches.lock().unwrap(), vec![16, 6]);
}

#[test]
fn handler_statuses_map_to_redis_errors() {
    let handler = Arc::new(Recording::default());
    let door = ringkv::resp::serve(
        "127.0.0.1:0",
        ServerOptions::default(),
        Arc::clone(&handler) as Arc<dyn Handler>,
    )
    .unwrap();
    let mut conn = Conn::open(door.local_addr());
    assert_eq!(
        conn.call(&[b"DEL", b"full"]),
        Resp::Error("OOM STORAGE_FULL: no room".into())
    );
    assert_eq!(
        conn.call(&[b"DBSIZE"]),
        Resp::Error("ERR UNAVAILABLE: backend 10.0.0.1:1 is unavailable".into())
    );
    assert_eq!(
        conn.call(&[b"GET", b"panic"]),
        Resp::Error("ERR INTERNAL: the server failed on this request".into())
    );
    assert_eq!(conn.call(&[b"SET", b"after", b"panic"]), ok());
}

/// Whether redis-cli and redis-benchmark can be run. Missing tools fail the test when
/// RINGKV_REQUIRE_REDIS_TOOLS=1 (CI installs them); otherwise the test is skipped with a note.
fn redis_tools_present() -> bool {
    let present = ["redis-cli", "redis-benchmark"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !present {
        assert!(
            std::env::var("RINGKV_REQUIRE_REDIS_TOOLS").as_deref() != Ok("1"),
            "redis-cli and redis-benchmark are required (RINGKV_REQUIRE_REDIS_TOOLS=1); \
             install Debian's redis-tools"
        );
        eprintln!("note: redis-cli or redis-benchmark is missing; skipping (install redis-tools)");
    }
    present
}

const TOOL_BOUND: Duration = Duration::from_secs(60);

fn redis_cli(addr: SocketAddr, args: &[&str]) -> Finished {
    let finished = run_bounded(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(args),
        b"",
        TOOL_BOUND,
    );
    assert_eq!(finished.code(), Some(0), "redis-cli {args:?}: {finished:?}");
    finished
}

#[test]
fn redis_cli_reads_and_writes() {
    if !redis_tools_present() {
        return;
    }
    let cluster = cluster();
    let addr = resp_addr(&cluster);
    assert_eq!(
        redis_cli(addr, &["set", "cli-key", "cli value"]).text(),
        "OK\n"
    );
    assert_eq!(redis_cli(addr, &["get", "cli-key"]).text(), "cli value\n");
    assert_eq!(redis_cli(addr, &["get", "absent"]).text(), "\n");
    assert_eq!(redis_cli(addr, &["dbsize"]).text(), "1\n");
    let info = redis_cli(addr, &["info"]).text();
    assert!(
        info.contains("# Nodes") && info.contains("node2:addr="),
        "{info}"
    );
    assert_eq!(
        client(cluster.frontend_addr())
            .get(b"cli-key")
            .unwrap()
            .as_deref(),
        Some(&b"cli value"[..])
    );
}

#[test]
fn redis_benchmark_runs_set_and_get() {
    if !redis_tools_present() {
        return;
    }
    let cluster = cluster();
    let addr = resp_addr(&cluster);
    let finished = run_bounded(
        Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-t",
            "set,get",
            "-n",
            "2000",
            "-q",
        ]),
        b"",
        TOOL_BOUND,
    );
    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let text = finished.text();
    for test in ["SET", "GET"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{test}: ")) && l.contains("requests per second")),
            "no {test} figure:\n{finished:?}"
        );
    }
    assert!(
        !finished.stderr.contains("ERR") && !text.contains("ERR"),
        "{finished:?}"
    );
    // The benchmark's key is there, written through the RESP door.
    let mut native = client(cluster.frontend_addr());
    assert_eq!(
        native.get(b"key:__rand_int__").unwrap().map(|v| v.len()),
        Some(3)
    );
}

/// `ringkv local` prints the RESP door's address right after the frontend's, and serves on it.
#[test]
fn ringkv_local_opens_the_door_unless_told_off() {
    let lines_of = |args: &[&str]| {
        let mut child = Command::new(RINGKV)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (ChildGuard(child), rx)
    };
    let next = |rx: &mpsc::Receiver<String>| rx.recv_timeout(BOUND).expect("a line from ringkv");

    let (_on, rx) = lines_of(&["local", "--listen", "127.0.0.1:0", "--backends", "1"]);
    assert!(next(&rx).starts_with("frontend listening on 127.0.0.1:"));
    let resp_line = next(&rx);
    let addr: SocketAddr = resp_line
        .strip_prefix("resp listening on ")
        .unwrap_or_else(|| panic!("expected the resp line, got {resp_line:?}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(
        Conn::open(addr).call(&[b"PING"]),
        Resp::Simple("PONG".into())
    );

    let (_off, rx) = lines_of(&[
        "local",
        "--listen",
        "127.0.0.1:0",
        "--backends",
        "1",
        "--resp-listen",
        "off",
    ]);
    assert!(next(&rx).starts_with("frontend listening on "));
    assert!(next(&rx).starts_with("backend listening on "));
}

fn int(n: i64) -> Resp {
    Resp::Int(n)
}

/// The commands a Redis user types first: increments, conditional sets, swaps and appends run
/// at the key's head (UPDATE), STRLEN and TYPE read it, TIME and CLIENT answer at the door.
#[test]
fn the_commands_people_type_first_answer_like_redis() {
    let cluster = cluster();
    let mut conn = Conn::open(resp_addr(&cluster));
    let not_integer = Resp::Error("ERR value is not an integer or out of range".into());
    assert_eq!(conn.call(&[b"INCR", b"n"]), int(1));
    assert_eq!(conn.call(&[b"INCRBY", b"n", b"10"]), int(11));
    assert_eq!(conn.call(&[b"DECR", b"n"]), int(10));
    assert_eq!(conn.call(&[b"DECRBY", b"n", b"20"]), int(-10));
    assert_eq!(conn.call(&[b"GET", b"n"]), bulk(b"-10"));
    assert_eq!(conn.call(&[b"INCRBY", b"n", b"ten"]), not_integer);
    assert_eq!(
        conn.call(&[b"DECRBY", b"n", b"-9223372036854775808"]),
        not_integer
    );
    assert_eq!(conn.call(&[b"SET", b"text", b"abc"]), ok());
    assert_eq!(conn.call(&[b"INCR", b"text"]), not_integer);
    assert_eq!(conn.call(&[b"GET", b"text"]), bulk(b"abc"));

    assert_eq!(conn.call(&[b"SETNX", b"k", b"v1"]), int(1));
    assert_eq!(conn.call(&[b"SETNX", b"k", b"v2"]), int(0));
    assert_eq!(conn.call(&[b"SET", b"k", b"v3", b"NX"]), Resp::Nil);
    assert_eq!(conn.call(&[b"SET", b"k", b"v3", b"xx"]), ok());
    assert_eq!(conn.call(&[b"SET", b"absent", b"v", b"XX"]), Resp::Nil);
    assert_eq!(conn.call(&[b"SET", b"fresh", b"v", b"NX"]), ok());
    assert_eq!(conn.call(&[b"SET", b"k", b"v4", b"GET"]), bulk(b"v3"));
    assert_eq!(conn.call(&[b"GETSET", b"k", b"v5"]), bulk(b"v4"));
    assert_eq!(conn.call(&[b"GETSET", b"new", b"v"]), Resp::Nil);
    assert_eq!(conn.call(&[b"GETDEL", b"k"]), bulk(b"v5"));
    assert_eq!(conn.call(&[b"GETDEL", b"k"]), Resp::Nil);
    assert_eq!(conn.call(&[b"GET", b"k"]), Resp::Nil);
    assert!(error_starting(
        &conn.call(&[b"SET", b"k", b"v", b"NX", b"XX"]),
        "ERR syntax error"
    ));

    assert_eq!(conn.call(&[b"APPEND", b"a", b"hello"]), int(5));
    assert_eq!(conn.call(&[b"APPEND", b"a", b" world"]), int(11));
    assert_eq!(conn.call(&[b"GET", b"a"]), bulk(b"hello world"));
    assert_eq!(conn.call(&[b"STRLEN", b"a"]), int(11));
    assert_eq!(conn.call(&[b"STRLEN", b"absent"]), int(0));
    assert_eq!(conn.call(&[b"TYPE", b"a"]), Resp::Simple("string".into()));
    assert_eq!(
        conn.call(&[b"TYPE", b"absent"]),
        Resp::Simple("none".into())
    );
    assert_eq!(conn.call(&[b"EXISTS", b"a", b"absent", b"a"]), int(2));

    match conn.call(&[b"TIME"]) {
        Resp::Array(parts) => {
            let numbers: Vec<u64> = parts
                .iter()
                .map(|p| match p {
                    Resp::Bulk(b) => String::from_utf8_lossy(b).parse().unwrap(),
                    other => panic!("TIME part {other:?}"),
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(
                numbers[0].abs_diff(now) < 60 && numbers[1] < 1_000_000,
                "{numbers:?}"
            );
        }
        other => panic!("TIME answered {other:?}"),
    }
    assert_eq!(conn.call(&[b"CLIENT", b"GETNAME"]), Resp::Nil);
    assert_eq!(conn.call(&[b"CLIENT", b"SETNAME", b"worker-1"]), ok());
    assert_eq!(conn.call(&[b"CLIENT", b"GETNAME"]), bulk(b"worker-1"));
    assert!(matches!(conn.call(&[b"CLIENT", b"ID"]), Resp::Int(id) if id > 0));
    assert!(error_starting(
        &conn.call(&[b"CLIENT", b"SETNAME", b"two words"]),
        "ERR Client names cannot contain spaces"
    ));
    assert!(error_starting(
        &conn.call(&[b"CLIENT", b"KILL"]),
        "ERR unknown subcommand"
    ));
    // What the door wrote, the binary protocol reads.
    let mut native = client(cluster.frontend_addr());
    assert_eq!(
        native.get(b"a").unwrap().as_deref(),
        Some(&b"hello world"[..])
    );
    assert_eq!(native.incr_by(b"n", 10).unwrap(), 0);
}

#[test]
fn redis_cli_increments_and_swaps() {
    if !redis_tools_present() {
        return;
    }
    let cluster = cluster();
    let addr = resp_addr(&cluster);
    assert_eq!(redis_cli(addr, &["incr", "hits"]).text(), "1\n");
    assert_eq!(redis_cli(addr, &["incrby", "hits", "41"]).text(), "42\n");
    assert_eq!(redis_cli(addr, &["setnx", "lock", "me"]).text(), "1\n");
    assert_eq!(redis_cli(addr, &["setnx", "lock", "you"]).text(), "0\n");
    assert_eq!(redis_cli(addr, &["getdel", "lock"]).text(), "me\n");
    assert_eq!(redis_cli(addr, &["append", "log", "a"]).text(), "1\n");
    assert_eq!(redis_cli(addr, &["type", "log"]).text(), "string\n");
    // redis-cli walks SCAN's cursor to the end.
    for i in 0..30 {
        redis_cli(addr, &["set", &format!("scan:{i}"), "v"]);
    }
    let scanned = redis_cli(addr, &["--scan", "--pattern", "scan:*"]).text();
    let mut keys: Vec<&str> = scanned.lines().collect();
    keys.sort_unstable();
    let mut expected: Vec<String> = (0..30).map(|i| format!("scan:{i}")).collect();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(redis_cli(addr, &["keys", "lo*"]).text(), "log\n");
}
