//! UPDATE (opcode 0x20): read-modify-write operations carried out at a key's head under its
//! lock, so that concurrent increments never lose one, and passed down the chain as the plain
//! write they amount to.

mod common;

use std::collections::BTreeSet;

use common::{client, raw, raw_call};
use ringkv::protocol::{Opcode, Status};
use ringkv::update::Update;
use ringkv::{Error, LocalCluster};

fn cluster(backends: usize, replicas: usize) -> LocalCluster {
    common::replicated_cluster(backends, replicas)
}

/// Many clients incrementing one key at once: every increment counts once, and each answer is
/// a distinct sum, so no two of them read the same value.
fn concurrent_increments_lose_nothing(replicas: usize) {
    const THREADS: usize = 8;
    const EACH: usize = 150;
    let cluster = cluster(3, replicas);
    let addr = cluster.frontend_addr();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = client(addr);
                (0..EACH)
                    .map(|_| c.incr_by(b"counter", 1).unwrap())
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut sums = BTreeSet::new();
    for worker in workers {
        for sum in worker.join().unwrap() {
            assert!(sums.insert(sum), "two increments answered {sum}");
        }
    }
    let total = (THREADS * EACH) as i64;
    assert_eq!(sums, (1..=total).collect());
    let mut c = client(addr);
    assert_eq!(
        c.get(b"counter").unwrap(),
        Some(total.to_string().into_bytes())
    );
    assert_eq!(c.incr_by(b"counter", -total).unwrap(), 0);
}

#[test]
fn concurrent_increments_lose_nothing_with_three_copies() {
    concurrent_increments_lose_nothing(3);
}

#[test]
fn concurrent_increments_lose_nothing_with_one_copy() {
    concurrent_increments_lose_nothing(1);
}

#[test]
fn every_copy_holds_what_an_update_stored() {
    let cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    assert_eq!(c.append(b"log", b"one,").unwrap(), 4);
    assert_eq!(c.append(b"log", b"two").unwrap(), 7);
    assert_eq!(c.incr_by(b"n", 41).unwrap(), 41);
    assert_eq!(c.incr_by(b"n", 1).unwrap(), 42);
    // SIZE counts what each node holds, as head or as a copy: both keys, at their full length
    // ("one,two" and "42" under "log" and "n"), on all three.
    for report in c.size().unwrap() {
        if report.addr == "total" {
            continue;
        }
        let keys = report.counter("keys") + report.counter("replica_keys");
        let bytes = report.counter("bytes") + report.counter("replica_bytes");
        assert_eq!((keys, bytes), (2, 3 + 7 + 1 + 2), "{report:?}");
    }
    assert_eq!(c.get(b"log").unwrap().as_deref(), Some(&b"one,two"[..]));
}

#[test]
fn conditional_sets_swaps_and_appends_answer_like_redis() {
    let cluster = cluster(3, 3);
    let mut c = client(cluster.frontend_addr());
    assert!(c.put_if_absent(b"k", b"first").unwrap());
    assert!(!c.put_if_absent(b"k", b"second").unwrap());
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"first"[..]));
    assert!(c.put_if_present(b"k", b"third").unwrap());
    assert!(!c.put_if_present(b"absent", b"x").unwrap());
    assert_eq!(c.get(b"absent").unwrap(), None);
    assert_eq!(
        c.get_and_put(b"k", b"fourth").unwrap().as_deref(),
        Some(&b"third"[..])
    );
    assert_eq!(c.get_and_put(b"fresh", b"v").unwrap(), None);
    assert_eq!(c.get(b"fresh").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(
        c.get_and_delete(b"k").unwrap().as_deref(),
        Some(&b"fourth"[..])
    );
    assert_eq!(c.get(b"k").unwrap(), None);
    assert_eq!(c.get_and_delete(b"k").unwrap(), None);
    assert_eq!(c.append(b"new", b"abc").unwrap(), 3);
}

#[test]
fn an_update_that_cannot_apply_changes_nothing_and_says_why() {
    let cluster = cluster(2, 2);
    let mut c = client(cluster.frontend_addr());
    c.put(b"text", b"not a number").unwrap();
    match c.incr_by(b"text", 1) {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::BAD_REQUEST);
            assert!(message.contains("not an integer"), "{message}");
        }
        other => panic!("expected BAD_REQUEST, got {other:?}"),
    }
    c.put(b"max", i64::MAX.to_string().as_bytes()).unwrap();
    assert!(c.incr_by(b"max", 1).is_err(), "overflow");
    assert_eq!(
        c.get(b"max").unwrap(),
        Some(i64::MAX.to_string().into_bytes())
    );
    let limit = ringkv::protocol::Limits::default().max_value;
    c.put(b"big", &vec![b'x'; limit - 1]).unwrap();
    match c.append(b"big", b"yz") {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::TOO_LARGE);
            assert!(message.contains("nothing changed"), "{message}");
        }
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }
    assert_eq!(c.get(b"big").unwrap().map(|v| v.len()), Some(limit - 1));
    // Malformed operations, by hand.
    let mut stream = raw(cluster.frontend_addr());
    for (id, value) in [(1, vec![]), (2, vec![1, 2, 3]), (3, vec![77])] {
        let answer = raw_call(&mut stream, Opcode::UPDATE, id, b"k", &value);
        assert_eq!(answer.status, Status::BAD_REQUEST, "{value:?}: {answer:?}");
    }
    let answer = raw_call(
        &mut stream,
        Opcode::UPDATE,
        4,
        b"",
        &Update::GetDelete.encode(),
    );
    assert_eq!(answer.status, Status::BAD_REQUEST);
    let answer = raw_call(
        &mut stream,
        Opcode::UPDATE,
        5,
        b"n",
        &Update::IncrBy(7).encode(),
    );
    assert_eq!(
        (answer.status, answer.value),
        (Status::OK, 7i64.to_be_bytes().to_vec())
    );
}
