//! Keys with a time to live, through the native protocol: they read as absent from their expiry
//! time on, the head's sweep removes them through the chain, and the expiry time itself (the
//! absolute instant the head computed) survives failover, joins and leaves unchanged.

mod common;

use std::time::Duration;

use common::{client, raw, raw_call, retry, split_total, sum, BOUND};
use ringkv::protocol::{Opcode, Status};
use ringkv::update::{Condition, TimeToLive, Ttl, Update, When};
use ringkv::{BackendConfig, Client, Error, LocalCluster};

fn cluster(backends: usize, replicas: usize) -> LocalCluster {
    common::replicated_cluster(backends, replicas)
}

/// The Unix time in milliseconds `key` expires at, as its head answers.
fn expires_at(c: &mut Client, key: &[u8]) -> u64 {
    match c.ttl(key).unwrap() {
        TimeToLive::Left { at, .. } => at,
        other => panic!("{}: {other:?}", String::from_utf8_lossy(key)),
    }
}

fn keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

#[test]
fn an_expired_key_reads_as_absent_and_the_sweep_removes_every_copy() {
    let cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    let short = keys("short", 40);
    for key in &short {
        c.put_with_ttl(key, b"cached", Duration::from_millis(300))
            .unwrap();
    }
    c.put(b"kept", b"for ever").unwrap();
    c.put_with_ttl(b"long", b"a minute", Duration::from_secs(60))
        .unwrap();
    assert_eq!(c.get(&short[0]).unwrap().as_deref(), Some(&b"cached"[..]));
    match c.ttl(&short[0]).unwrap() {
        TimeToLive::Left { ms, .. } => assert!((1..=300).contains(&ms), "{ms} ms left"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.ttl(b"kept").unwrap(), TimeToLive::Forever);
    assert_eq!(c.ttl(b"never stored").unwrap(), TimeToLive::Absent);
    let stats = c.stats().unwrap();
    let (nodes, _) = split_total(&stats);
    assert_eq!(
        sum(nodes, "expiring_keys"),
        short.len() as u64 + 1,
        "each counted once"
    );

    // Put one after another, each expires no later than the next: the last goes last.
    retry(BOUND, "the short keys expire", || {
        c.get(short.last().unwrap())
            .unwrap()
            .is_none()
            .then_some(())
    });
    for key in &short {
        assert_eq!(c.get(key).unwrap(), None);
        assert_eq!(c.ttl(key).unwrap(), TimeToLive::Absent);
    }
    // SCAN does not list them even before the sweep has removed them.
    let mut listed = c.scan_all(b"", 100).unwrap();
    listed.sort();
    assert!(
        listed.iter().all(|key| !key.starts_with(b"short")),
        "{listed:?}"
    );

    // Every copy of each (three per key) goes, by the heads' deletes down the chains.
    retry(
        Duration::from_secs(20),
        "the sweep removes every copy",
        || {
            let reports = c.size().unwrap();
            let (_, total) = split_total(&reports);
            (total.counter("keys") == 2).then_some(())
        },
    );
    let stats = c.stats().unwrap();
    let (nodes, _) = split_total(&stats);
    assert_eq!(sum(nodes, "expired_removed"), short.len() as u64);
    assert_eq!(sum(nodes, "expiring_keys"), 1, "the long one is left");
    assert_eq!(
        sum(nodes, "replica_keys"),
        4,
        "two keys left, two more copies each"
    );
    assert_eq!(c.get(b"kept").unwrap().as_deref(), Some(&b"for ever"[..]));
    assert_eq!(c.get(b"long").unwrap().as_deref(), Some(&b"a minute"[..]));
}

#[test]
fn writes_keep_or_clear_the_time_to_live_as_redis_does() {
    let cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    c.put_with_ttl(b"n", b"1", Duration::from_secs(100))
        .unwrap();
    let at = expires_at(&mut c, b"n");
    assert_eq!(c.incr_by(b"n", 5).unwrap(), 6);
    assert_eq!(c.append(b"n", b"0").unwrap(), 2);
    assert_eq!(
        expires_at(&mut c, b"n"),
        at,
        "an increment and an append keep it"
    );
    assert_eq!(c.get(b"n").unwrap().as_deref(), Some(&b"60"[..]));
    assert!(c.expire(b"n", Duration::from_secs(5)).unwrap());
    assert!(expires_at(&mut c, b"n") < at);
    assert!(c.persist(b"n").unwrap());
    assert!(!c.persist(b"n").unwrap(), "nothing left to take away");
    assert_eq!(c.ttl(b"n").unwrap(), TimeToLive::Forever);
    assert!(!c.expire(b"absent", Duration::from_secs(5)).unwrap());

    // A plain PUT, like SET, leaves the key without one.
    c.put_with_ttl(b"p", b"v", Duration::from_secs(100))
        .unwrap();
    c.put(b"p", b"v2").unwrap();
    assert_eq!(c.ttl(b"p").unwrap(), TimeToLive::Forever);
    // Expiring it now deletes it, through the chain.
    assert!(c.expire(b"p", Duration::ZERO).unwrap());
    assert_eq!(c.get(b"p").unwrap(), None);
    assert_eq!(c.ttl(b"p").unwrap(), TimeToLive::Absent);

    // A set with an absolute time, KEEPTTL, and a refused zero time.
    let at = ringkv::expiry::now_ms() + 50_000;
    let set = |value: &[u8], ttl| Update::Set {
        value: value.to_vec(),
        condition: Condition::Always,
        ttl,
        get_old: false,
    };
    let mut frontend = raw(cluster.frontend_addr());
    let reply = raw_call(
        &mut frontend,
        Opcode::UPDATE,
        1,
        b"abs",
        &set(b"v", Ttl::Expires(When::At(at as i64))).encode(),
    );
    assert_eq!(
        (reply.status, reply.value.as_slice()),
        (Status::OK, &[1][..])
    );
    assert_eq!(expires_at(&mut c, b"abs"), at);
    let reply = raw_call(
        &mut frontend,
        Opcode::UPDATE,
        2,
        b"abs",
        &set(b"v2", Ttl::Keep).encode(),
    );
    assert_eq!(reply.status, Status::OK);
    assert_eq!(expires_at(&mut c, b"abs"), at);
    let reply = raw_call(
        &mut frontend,
        Opcode::UPDATE,
        3,
        b"abs",
        &set(b"v3", Ttl::Expires(When::In(0))).encode(),
    );
    assert_eq!(reply.status, Status::BAD_REQUEST);
    assert!(
        reply.message().contains("invalid expire time"),
        "{}",
        reply.message()
    );
    assert_eq!(c.get(b"abs").unwrap().as_deref(), Some(&b"v2"[..]));
    match c.put_with_ttl(b"abs", b"v4", Duration::ZERO) {
        Err(Error::Status { status, .. }) => assert_eq!(status, Status::BAD_REQUEST),
        other => panic!("a zero time to live: {other:?}"),
    }
    // Malformed operations and the internal chain form from a client are refused.
    for (id, bad) in [
        (4, vec![7u8, 8, 0]),
        (5, vec![8, 9, 2, 0, 0]),
        (6, vec![10, 1]),
    ] {
        let reply = raw_call(&mut frontend, Opcode::UPDATE, id, b"abs", &bad);
        assert_eq!(
            reply.status,
            Status::BAD_REQUEST,
            "{bad:?}: {}",
            reply.message()
        );
    }
    let chain = ringkv::cluster::chain::expiring_value(at, b"forged");
    let reply = raw_call(&mut frontend, Opcode::CHAIN_PUT_EXPIRING, 7, b"abs", &chain);
    assert_eq!(reply.status, Status::UNKNOWN_OPCODE);
    assert_eq!(c.get(b"abs").unwrap().as_deref(), Some(&b"v2"[..]));
}

#[test]
fn the_expiry_time_survives_the_heads_death_unchanged() {
    let mut cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    let keys = keys("failover", 30);
    let mut times = Vec::new();
    for key in &keys {
        c.put_with_ttl(key, key, Duration::from_secs(120)).unwrap();
        times.push(expires_at(&mut c, key));
    }
    let dead = cluster.backend_addrs()[0].clone();
    cluster.kill_backend(0);
    retry(
        Duration::from_secs(30),
        "a view without the dead node",
        || {
            let view = c.view().ok()?;
            let index = view.nodes.iter().position(|n| *n == dead)?;
            (view.states[index] != ringkv::NodeState::Up).then_some(())
        },
    );
    for (key, at) in keys.iter().zip(&times) {
        let read = retry(BOUND, "the key is served again", || c.get(key).ok());
        assert_eq!(read.as_deref(), Some(key.as_slice()));
        let now = retry(BOUND, "its head answers", || match c.ttl(key) {
            Ok(TimeToLive::Left { at, .. }) => Some(at),
            Ok(other) => panic!("{other:?}"),
            Err(_) => None,
        });
        assert_eq!(now, *at, "the new head expires it at the same instant");
    }
}

#[test]
fn a_join_and_a_leave_move_keys_with_their_expiry_times() {
    let cluster = cluster(3, 1);
    let addr = cluster.frontend_addr().to_string();
    let mut c = Client::connect(&addr).unwrap();
    let keys = keys("moving", 600);
    let mut times = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if i % 3 == 0 {
            c.put(key, key).unwrap();
            times.push(None);
        } else {
            c.put_with_ttl(key, key, Duration::from_secs(100 + i as u64))
                .unwrap();
            times.push(Some(expires_at(&mut c, key)));
        }
    }
    let check = |c: &mut Client| {
        for (key, at) in keys.iter().zip(&times) {
            assert_eq!(c.get(key).unwrap().as_deref(), Some(key.as_slice()));
            let ttl = c.ttl(key).unwrap();
            match at {
                Some(at) => assert!(
                    matches!(ttl, TimeToLive::Left { at: now, .. } if now == *at),
                    "{ttl:?}, expected {at}"
                ),
                None => assert_eq!(ttl, TimeToLive::Forever),
            }
        }
    };
    let wait = |c: &mut Client, change: &ringkv::Change, begun: u64| {
        retry(BOUND, "the change is done", || {
            let outcome = c.change_outcome(change, begun).unwrap()?;
            outcome.unwrap_or_else(|e| panic!("{change}: {e}"));
            Some(())
        })
    };
    let joiner = ringkv::Backend::start(BackendConfig::default()).unwrap();
    let joiner_addr = joiner.local_addr().to_string();
    let begun = c.join(&joiner_addr).unwrap();
    wait(&mut c, &ringkv::Change::Join(joiner_addr.clone()), begun);
    let mut direct = Client::connect(&joiner_addr).unwrap();
    assert!(
        direct.size().unwrap()[0].counter("keys") > 600 / 8,
        "the joiner took its share"
    );
    check(&mut c);
    let leaver = cluster.backend_addrs()[0].clone();
    let begun = c.leave(&leaver).unwrap();
    wait(&mut c, &ringkv::Change::Leave(leaver), begun);
    check(&mut c);
}

#[test]
fn delete_if_expired_removes_only_an_expired_key() {
    let cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    c.put_with_ttl(b"live", b"v", Duration::from_secs(60))
        .unwrap();
    c.put(b"forever", b"v").unwrap();
    c.put_with_ttl(b"brief", b"v", Duration::from_millis(1))
        .unwrap();
    retry(BOUND, "the brief key expires", || {
        c.get(b"brief").unwrap().is_none().then_some(())
    });
    let mut frontend = raw(cluster.frontend_addr());
    let operation = Update::DeleteIfExpired.encode();
    for (id, key, answer) in [
        (1, &b"live"[..], 0u8),
        (2, b"forever", 0),
        (3, b"absent", 0),
    ] {
        let reply = raw_call(&mut frontend, Opcode::UPDATE, id, key, &operation);
        assert_eq!((reply.status, reply.value), (Status::OK, vec![answer]));
    }
    // The sweep may have removed it first; either way it is gone and nothing else is.
    let reply = raw_call(&mut frontend, Opcode::UPDATE, 4, b"brief", &operation);
    assert_eq!(reply.status, Status::OK);
    assert!(
        reply.value == [0] || reply.value == [1],
        "{:?}",
        reply.value
    );
    assert_eq!(c.get(b"live").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(c.get(b"forever").unwrap().as_deref(), Some(&b"v"[..]));
    retry(BOUND, "only the two live keys are left", || {
        let reports = c.size().unwrap();
        (split_total(&reports).1.counter("keys") == 2).then_some(())
    });
}
