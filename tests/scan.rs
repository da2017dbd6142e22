//! SCAN (0x21): a walk over every key of the cluster, a step at a time, listing each key once
//! whatever its number of copies; a cursor is refused after a view change; Redis's SCAN and
//! KEYS on top of it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{client, BOUND};
use ringkv::protocol::Status;
use ringkv::{BackendConfig, Error, FrontendConfig, LocalCluster};

fn cluster(backends: usize, replicas: usize) -> LocalCluster {
    cluster_with(backends, replicas, false)
}

fn cluster_with(backends: usize, replicas: usize, allow_flush: bool) -> LocalCluster {
    LocalCluster::start(
        backends,
        BackendConfig::default(),
        FrontendConfig {
            allow_flush,
            replicas: Some(replicas),
            startup_timeout: Duration::from_secs(5),
            resp_listen: Some("127.0.0.1:0".into()),
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

fn put_keys(c: &mut ringkv::Client, count: usize) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    for i in 0..count {
        let key = if i % 4 == 0 {
            format!("user:{i}:name")
        } else {
            format!("item-{i}")
        };
        c.put(key.as_bytes(), b"v").unwrap();
        keys.insert(key.into_bytes());
    }
    keys
}

#[test]
fn a_walk_lists_every_key_once_whatever_its_copies() {
    for (backends, replicas) in [(3, 3), (4, 1)] {
        let cluster = cluster(backends, replicas);
        let mut c = client(cluster.frontend_addr());
        let keys = put_keys(&mut c, 1_500);
        for count in [1, 7, 500, 100_000] {
            let mut listed = Vec::new();
            let mut cursor = 0;
            let mut steps = 0;
            loop {
                let (next, found) = c.scan(cursor, count, b"").unwrap();
                steps += 1;
                listed.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let unique: BTreeSet<Vec<u8>> = listed.iter().cloned().collect();
            assert_eq!(unique.len(), listed.len(), "a key was listed twice");
            assert_eq!(
                unique, keys,
                "{backends} backends, R = {replicas}, count {count}"
            );
            if count == 1 {
                assert!(steps > 100, "count 1 took {steps} steps");
            }
        }
        let users: BTreeSet<Vec<u8>> = c
            .scan_all(b"user:*:name", 50)
            .unwrap()
            .into_iter()
            .collect();
        let expected: BTreeSet<Vec<u8>> = keys
            .iter()
            .filter(|k| k.starts_with(b"user:"))
            .cloned()
            .collect();
        assert_eq!(users, expected);
        assert!(c.scan_all(b"nothing-*", 10).unwrap().is_empty());
    }
}

#[test]
fn a_cursor_from_before_a_view_change_is_refused() {
    let mut cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    put_keys(&mut c, 300);
    let (cursor, _) = c.scan(0, 5, b"").unwrap();
    assert_ne!(cursor, 0);
    let epoch = c.view().unwrap().epoch;
    cluster.kill_backend(2);
    let deadline = Instant::now() + BOUND;
    while c.view().unwrap().epoch == epoch {
        assert!(
            Instant::now() < deadline,
            "the keeper did not mark the backend down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    match c.scan(cursor, 5, b"") {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::STALE_VIEW);
            assert!(message.contains("start the scan again"), "{message}");
        }
        other => panic!("expected STALE_VIEW, got {other:?}"),
    }
    // A walk begun in the new view lists every key: the dead node's keys are headed by others.
    assert_eq!(c.scan_all(b"", 100).unwrap().len(), 300);
}

#[test]
fn redis_scan_and_keys_walk_the_cluster() {
    use std::io::{Read, Write};
    let cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    let keys = put_keys(&mut c, 200);
    let resp = cluster.resp_addr().unwrap();
    let mut stream = std::net::TcpStream::connect(resp).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    // A reply read whole: a few KB at most here.
    let mut call = |command: &str| -> String {
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        let mut reply = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = stream.read(&mut chunk).unwrap();
            reply.extend_from_slice(&chunk[..n]);
            if complete(&reply) {
                return String::from_utf8(reply).unwrap();
            }
        }
    };
    let mut listed = BTreeSet::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = call(&format!("SCAN {cursor} MATCH * COUNT 25"));
        let lines: Vec<&str> = reply.split("\r\n").collect();
        assert_eq!(lines[0], "*2", "{reply}");
        cursor = lines[2].to_string();
        for key in lines[4..].iter().skip(1).step_by(2) {
            if !key.is_empty() {
                assert!(listed.insert(key.as_bytes().to_vec()), "{key} twice");
            }
        }
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(listed, keys);
    let reply = call("KEYS user:*");
    assert!(
        reply.starts_with("*50\r\n"),
        "{}",
        &reply[..20.min(reply.len())]
    );
    assert_eq!(call("SCAN 0 TYPE hash"), "*2\r\n$1\r\n0\r\n*0\r\n");
    assert!(call("SCAN notanumber").starts_with("-ERR invalid cursor"));
    assert!(call("SCAN 0 COUNT 0").starts_with("-ERR syntax error"));
}

/// True when `reply` holds one whole RESP reply (of the shapes SCAN and KEYS give).
fn complete(reply: &[u8]) -> bool {
    fn one(buf: &[u8]) -> Option<usize> {
        let cr = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[1..cr]).ok()?;
        match buf[0] {
            b'+' | b'-' | b':' => Some(cr + 2),
            b'$' => {
                let len: usize = line.parse().ok()?;
                (buf.len() >= cr + 2 + len + 2).then_some(cr + 2 + len + 2)
            }
            b'*' => {
                let n: usize = line.parse().ok()?;
                let mut at = cr + 2;
                for _ in 0..n {
                    at += one(&buf[at..])?;
                }
                Some(at)
            }
            _ => None,
        }
    }
    one(reply) == Some(reply.len())
}

#[test]
fn flushall_deletes_every_key_only_where_it_is_allowed() {
    use std::io::{Read, Write};
    let call = |addr: std::net::SocketAddr, command: &str| -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        let mut reply = vec![0u8; 4096];
        let n = stream.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..n]).into_owned()
    };
    let refusing = cluster(3, 3);
    let mut c = client(refusing.frontend_addr());
    put_keys(&mut c, 50);
    let reply = call(refusing.resp_addr().unwrap(), "FLUSHALL");
    assert!(
        reply.starts_with("-ERR BAD_REQUEST: FLUSH is off"),
        "{reply}"
    );
    assert_eq!(c.scan_all(b"", 100).unwrap().len(), 50, "nothing deleted");

    let allowing = cluster_with(3, 3, true);
    let mut c = client(allowing.frontend_addr());
    put_keys(&mut c, 2_500);
    assert_eq!(
        call(allowing.resp_addr().unwrap(), "FLUSHALL SYNC"),
        "+OK\r\n"
    );
    assert!(c.scan_all(b"", 100).unwrap().is_empty());
    assert_eq!(call(allowing.resp_addr().unwrap(), "DBSIZE"), ":0\r\n");
    assert!(call(allowing.resp_addr().unwrap(), "FLUSHALL NOW").starts_with("-ERR syntax error"));
    c.put(b"after", b"v").unwrap();
    assert_eq!(c.get(b"after").unwrap().as_deref(), Some(&b"v"[..]));
}
