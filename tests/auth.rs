//! Client authentication (`--require-auth`): what a connection may do before and after AUTH, on
//! the native door, the Redis door and directly at a backend; and the clients that take the
//! password (ringkv::Client, kvcli, redis-cli, the Python client).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{run_bounded, Finished, Server};
use common::{assert_closed, raw, raw_call, TempDir};
use ringkv::auth::MAX_FAILURES;
use ringkv::protocol::{Opcode, Status};
use ringkv::{
    BackendConfig, Client, ClientOptions, ClusterToken, FrontendConfig, LocalCluster, Password,
};

/// What a finished process wrote, stdout and stderr.
fn output(finished: &Finished) -> String {
    format!("{}{}", finished.text(), finished.stderr)
}

const PASSWORD: &[u8] = b"correct horse battery staple";

fn password() -> Password {
    Password::new(PASSWORD.to_vec()).unwrap()
}

fn guarded_cluster(token: Option<ClusterToken>) -> LocalCluster {
    LocalCluster::start(
        3,
        BackendConfig {
            password: Some(password()),
            cluster_token: token.clone(),
            ..BackendConfig::default()
        },
        FrontendConfig {
            password: Some(password()),
            cluster_token: token,
            resp_listen: Some("127.0.0.1:0".into()),
            startup_timeout: Duration::from_secs(5),
            threads: 8,
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

fn with_password(password: Option<Password>) -> ClientOptions {
    ClientOptions {
        password,
        ..ClientOptions::default()
    }
}

#[test]
fn native_requests_wait_for_the_password_and_wrong_ones_close_the_connection() {
    let cluster = guarded_cluster(None);
    let addr = cluster.frontend_addr();

    // Nothing is answered before AUTH, not even PING, and nothing is done.
    let mut stream = raw(addr);
    for (id, opcode, key, value) in [
        (1, Opcode::PUT, &b"k"[..], &b"stolen"[..]),
        (2, Opcode::GET, b"k", b""),
        (3, Opcode::PING, b"", b""),
        (4, Opcode::STATS, b"", b""),
    ] {
        let answer = raw_call(&mut stream, opcode, id, key, value);
        assert_eq!(answer.status, Status::UNAUTHORIZED, "{opcode}: {answer:?}");
        assert!(answer.message().contains("AUTH"), "{}", answer.message());
    }
    let answer = raw_call(&mut stream, Opcode::AUTH, 5, b"", PASSWORD);
    assert_eq!(answer.status, Status::OK, "{answer:?}");
    let answer = raw_call(&mut stream, Opcode::GET, 6, b"k", b"");
    assert_eq!(
        answer.status,
        Status::NOT_FOUND,
        "the refused PUT was not applied"
    );
    let answer = raw_call(&mut stream, Opcode::PUT, 7, b"k", b"mine");
    assert_eq!(answer.status, Status::OK, "{answer:?}");

    // Wrong passwords are answered, and the last one allowed closes the connection.
    let mut stream = raw(addr);
    for attempt in 1..=MAX_FAILURES {
        let answer = raw_call(&mut stream, Opcode::AUTH, attempt as u64, b"", b"guess");
        assert_eq!(answer.status, Status::UNAUTHORIZED, "{answer:?}");
    }
    assert_closed(&mut stream);

    // The same, pipelined in one write with requests after the last wrong password: those are
    // not answered, and the connection closes at once after the answers before them.
    let mut stream = raw(addr);
    let mut pipeline = Vec::new();
    for attempt in 1..=MAX_FAILURES {
        pipeline.extend(common::request_bytes(
            Opcode::AUTH,
            attempt as u64,
            b"",
            b"guess",
        ));
    }
    pipeline.extend(common::request_bytes(Opcode::GET, 99, b"k", b""));
    pipeline.extend(common::request_bytes(Opcode::PING, 100, b"", b""));
    stream.write_all(&pipeline).unwrap();
    let mut buf = Vec::new();
    for attempt in 1..=MAX_FAILURES {
        let answer = common::read_frame_buffered(&mut stream, &mut buf).expect("an answer");
        assert_eq!(
            (answer.request_id, answer.status),
            (attempt as u64, Status::UNAUTHORIZED)
        );
    }
    assert!(
        buf.is_empty(),
        "nothing answered after the last wrong password"
    );
    assert_closed(&mut stream);

    // The library's clients present the password on every connection they open.
    let mut client =
        Client::connect_with(&addr.to_string(), with_password(Some(password()))).unwrap();
    assert_eq!(client.get(b"k").unwrap(), Some(b"mine".to_vec()));
    client.put(b"k2", b"v2").unwrap();
    let wrong = Password::new(b"nope".to_vec()).unwrap();
    let refused = Client::connect_with(&addr.to_string(), with_password(Some(wrong)));
    let error = refused
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(error.contains("refused the password"), "{error}");
    let mut anonymous = Client::connect(&addr.to_string()).unwrap();
    let error = anonymous.get(b"k").unwrap_err().to_string();
    assert!(error.contains("UNAUTHORIZED"), "{error}");
}

#[test]
fn a_backend_requires_the_password_or_the_cluster_token() {
    let token = ClusterToken::new(b"the cluster's own token".to_vec()).unwrap();
    let cluster = guarded_cluster(Some(token.clone()));
    let mut client = Client::connect_with(
        &cluster.frontend_addr().to_string(),
        with_password(Some(password())),
    )
    .unwrap();
    for i in 0..30 {
        client.put(format!("key-{i}").as_bytes(), b"v").unwrap();
    }
    let backend: SocketAddr = cluster.backend_addrs()[0].parse().unwrap();

    // Straight at a backend, a client without the password gets nothing.
    let mut stream = raw(backend);
    let answer = raw_call(&mut stream, Opcode::SIZE, 1, b"", b"");
    assert_eq!(answer.status, Status::UNAUTHORIZED, "{answer:?}");
    let answer = raw_call(&mut stream, Opcode::AUTH, 2, b"", PASSWORD);
    assert_eq!(answer.status, Status::OK);
    let answer = raw_call(&mut stream, Opcode::SIZE, 3, b"", b"");
    assert_eq!(answer.status, Status::OK, "{answer:?}");
    // The password lets a client in, not take part in the cluster.
    let answer = raw_call(&mut stream, Opcode::SYNC_END, 4, b"", b"");
    assert_eq!(answer.status, Status::UNAUTHORIZED, "{answer:?}");

    // A peer that presents the token needs no password (the cluster's servers do that).
    let mut peer = raw(backend);
    let answer = raw_call(&mut peer, Opcode::PEER_AUTH, 1, b"", token.as_bytes());
    assert_eq!(answer.status, Status::OK);
    let answer = raw_call(&mut peer, Opcode::SIZE, 2, b"", b"");
    assert_eq!(answer.status, Status::OK, "{answer:?}");
    // A wrong token lets nobody in.
    let mut forger = raw(backend);
    let answer = raw_call(&mut forger, Opcode::PEER_AUTH, 1, b"", b"forged");
    assert_eq!(answer.status, Status::UNAUTHORIZED);
    let answer = raw_call(&mut forger, Opcode::SIZE, 2, b"", b"");
    assert_eq!(answer.status, Status::UNAUTHORIZED, "{answer:?}");
}

#[test]
fn a_cluster_without_a_token_authenticates_its_peers_with_the_password() {
    // The keeper's probes, relays and chain writes all present the password: the cluster
    // replicates and serves as without one.
    let cluster = guarded_cluster(None);
    let mut client = Client::connect_with(
        &cluster.frontend_addr().to_string(),
        with_password(Some(password())),
    )
    .unwrap();
    for i in 0..50 {
        client.put(format!("key-{i}").as_bytes(), b"v").unwrap();
    }
    let reports = client.size().unwrap();
    let (nodes, _) = common::split_total(&reports);
    assert_eq!(
        common::sum(nodes, "keys") + common::sum(nodes, "replica_keys"),
        50 * 3,
        "every key on its three chain members"
    );
    let unauthorized: u64 = client
        .stats()
        .unwrap()
        .iter()
        .map(|r| r.counter("unauthorized"))
        .sum();
    assert_eq!(unauthorized, 0, "no peer was refused");
}

/// One RESP reply, read whole: a line, or a bulk string, or an array of them.
fn resp_reply(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_string();
    match line.as_bytes().first() {
        Some(b'$') if line != "$-1" => {
            let len: usize = line[1..].parse().ok()?;
            let mut bulk = vec![0u8; len + 2];
            reader.read_exact(&mut bulk).ok()?;
            Some(String::from_utf8_lossy(&bulk[..len]).into_owned())
        }
        Some(b'*') => {
            let len: usize = line[1..].parse().ok()?;
            let items: Option<Vec<String>> = (0..len).map(|_| resp_reply(reader)).collect();
            Some(format!("[{}]", items?.join(" ")))
        }
        _ => Some(line),
    }
}

fn resp_call(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, args: &[&[u8]]) -> String {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out).unwrap();
    resp_reply(reader).expect("a reply")
}

#[test]
fn the_redis_door_takes_auth_and_hello_as_redis_does() {
    let cluster = guarded_cluster(None);
    let addr = cluster.resp_addr().unwrap();
    let mut stream = raw(addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut call = |args: &[&[u8]]| resp_call(&mut stream, &mut reader, args);

    assert_eq!(
        call(&[b"SET", b"r", b"stolen"]),
        "-NOAUTH Authentication required."
    );
    assert_eq!(call(&[b"GET", b"r"]), "-NOAUTH Authentication required.");
    assert_eq!(call(&[b"PING"]), "-NOAUTH Authentication required.");
    assert!(call(&[b"HELLO", b"2"]).starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(
        call(&[b"AUTH", b"wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        call(&[b"AUTH", b"someone", PASSWORD]),
        "-WRONGPASS invalid username-password pair or user is disabled.",
        "the only user is `default`"
    );
    assert_eq!(call(&[b"AUTH", b"default", PASSWORD]), "+OK");
    assert_eq!(
        call(&[b"GET", b"r"]),
        "$-1",
        "the refused SET was not applied"
    );
    assert_eq!(call(&[b"SET", b"r", b"mine"]), "+OK");
    let hello = call(&[b"HELLO", b"2"]);
    assert!(hello.starts_with("[server ringkv version "), "{hello}");
    assert!(hello.contains(" proto :2 id :"), "{hello}");
    assert_eq!(
        call(&[b"HELLO", b"3"]),
        "-NOPROTO sorry, this protocol version is not supported."
    );

    // HELLO ... AUTH logs a new connection in, SETNAME and all, in one round trip.
    let mut stream = raw(addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let hello = resp_call(
        &mut stream,
        &mut reader,
        &[
            b"HELLO", b"2", b"AUTH", b"default", PASSWORD, b"SETNAME", b"app",
        ],
    );
    assert!(hello.starts_with("[server ringkv"), "{hello}");
    assert_eq!(resp_call(&mut stream, &mut reader, &[b"GET", b"r"]), "mine");

    // The last wrong password a connection may give closes it.
    let mut stream = raw(addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..MAX_FAILURES {
        let reply = resp_call(&mut stream, &mut reader, &[b"AUTH", b"guess"]);
        assert!(reply.starts_with("-WRONGPASS"), "{reply}");
    }
    assert_eq!(resp_reply(&mut reader), None, "the connection is closed");
}

#[test]
fn auth_at_a_redis_door_without_a_password_is_refused_as_redis_refuses_it() {
    let cluster = LocalCluster::start(
        1,
        BackendConfig::default(),
        FrontendConfig {
            resp_listen: Some("127.0.0.1:0".into()),
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let mut stream = raw(cluster.resp_addr().unwrap());
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let reply = resp_call(&mut stream, &mut reader, &[b"AUTH", b"anything"]);
    assert!(
        reply.starts_with("-ERR AUTH <password> called without any password configured"),
        "{reply}"
    );
    assert_eq!(resp_call(&mut stream, &mut reader, &[b"PING"]), "+PONG");
    // The native door takes AUTH when it needs none, so a client given a password works anyway.
    let mut client = Client::connect_with(
        &cluster.frontend_addr().to_string(),
        with_password(Some(password())),
    )
    .unwrap();
    client.put(b"k", b"v").unwrap();
}

/// `ringkv local --require-auth FILE`, and the clients that read the password from a flag or
/// the environment.
#[test]
fn the_command_line_clients_take_the_password_from_a_file_or_the_environment() {
    let dir = TempDir::new("auth", "cli");
    let file = dir.path().join("password");
    std::fs::write(&file, [PASSWORD, b"\n"].concat()).unwrap();
    let file_arg = file.to_str().unwrap();
    let server = Server::start(&[
        "local",
        "--backends",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--resp-listen",
        "127.0.0.1:0",
        "--require-auth",
        file_arg,
    ]);
    let frontend = server.listening("frontend");
    let resp: SocketAddr = server.listening("resp").parse().unwrap();

    let kvcli = |args: &[&str], env: Option<&[u8]>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kvcli"));
        command.args(["--frontend", &frontend]).args(args);
        command.env_remove(ringkv::auth::PASSWORD_ENV);
        if let Some(value) = env {
            command.env(
                ringkv::auth::PASSWORD_ENV,
                std::str::from_utf8(value).unwrap(),
            );
        }
        run_bounded(&mut command, b"", Duration::from_secs(30))
    };
    let refused = kvcli(&["put", "k", "v"], None);
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(output(&refused).contains("UNAUTHORIZED"), "{refused:?}");
    let put = kvcli(&["--password-file", file_arg, "put", "k", "v"], None);
    assert_eq!(put.code(), Some(0), "{put:?}");
    let get = kvcli(&["get", "k"], Some(PASSWORD));
    assert_eq!(get.code(), Some(0), "{get:?}");
    assert_eq!(get.stdout, b"v");
    let wrong = kvcli(&["get", "k"], Some(b"wrong"));
    assert_eq!(wrong.code(), Some(2), "{wrong:?}");
    assert!(output(&wrong).contains("refused the password"), "{wrong:?}");

    // The Python client reads the same variable.
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/python/ringkv_client.py"
        );
        let python = |env: Option<&str>| {
            let mut command = Command::new("python3");
            command.args([script, &frontend, "--get", "k"]);
            command.env_remove(ringkv::auth::PASSWORD_ENV);
            if let Some(value) = env {
                command.env(ringkv::auth::PASSWORD_ENV, value);
            }
            run_bounded(&mut command, b"", Duration::from_secs(30))
        };
        let got = python(Some(std::str::from_utf8(PASSWORD).unwrap()));
        assert_eq!(got.code(), Some(0), "{got:?}");
        assert_eq!(got.stdout, b"v");
        let refused = python(None);
        assert_eq!(refused.code(), Some(1), "{refused:?}");
        assert!(output(&refused).contains("UNAUTHORIZED"), "{refused:?}");
    }

    // redis-cli -a, as Redis users pass a password.
    if Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let redis_cli = |args: &[&str]| {
            run_bounded(
                Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &resp.port().to_string()])
                    .args(args),
                b"",
                Duration::from_secs(30),
            )
        };
        let got = redis_cli(&[
            "--no-auth-warning",
            "-a",
            "correct horse battery staple",
            "GET",
            "k",
        ]);
        assert_eq!(got.code(), Some(0), "{got:?}");
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
        let refused = redis_cli(&["GET", "k"]);
        assert!(output(&refused).contains("NOAUTH"), "{refused:?}");
    } else {
        assert!(
            std::env::var("RINGKV_REQUIRE_REDIS_TOOLS").as_deref() != Ok("1"),
            "redis-cli is required (RINGKV_REQUIRE_REDIS_TOOLS=1)"
        );
    }
}

#[test]
fn a_server_bound_beyond_loopback_without_a_password_says_so() {
    let open = Server::start(&["backend", "--listen", "0.0.0.0:0"]);
    open.listening("backend");
    let dir = TempDir::new("auth", "bound");
    let file = dir.path().join("password");
    std::fs::write(&file, PASSWORD).unwrap();
    let guarded = Server::start(&[
        "backend",
        "--listen",
        "0.0.0.0:0",
        "--require-auth",
        file.to_str().unwrap(),
    ]);
    guarded.listening("backend");
    let loopback = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
    loopback.listening("backend");
    // The warning is logged before the listening line is printed.
    assert!(
        open.log().contains("without --require-auth"),
        "{}",
        open.log()
    );
    assert!(
        !guarded.log().contains("without --require-auth"),
        "{}",
        guarded.log()
    );
    assert!(
        !loopback.log().contains("without --require-auth"),
        "{}",
        loopback.log()
    );
}
