//! Self-tests of the linearizability checker in `tests/common/linearizability.rs`: histories
//! that must pass, histories that must fail, unknown outcomes, and a realistic multi-threaded
//! history recorded from a real (mutex-protected, hence linearizable) in-memory map.

#[path = "common/linearizability.rs"]
mod linearizability;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use linearizability::{Event, Op, Outcome, Recorder};

fn put(v: &str) -> Op {
    Op::Put(v.as_bytes().to_vec())
}

fn got(v: &str) -> Outcome {
    Outcome::Get(Some(v.as_bytes().to_vec()))
}

/// Invokes and completes at once: the operation overlaps nothing.
fn run(r: &Recorder, client: usize, key: &str, op: Op, outcome: Outcome) {
    let p = r.invoke(client, key.as_bytes(), op);
    r.complete(p, outcome);
}

fn assert_fails(r: &Recorder, key: &str) -> String {
    let err = r.check().expect_err("history must not be linearizable");
    assert!(err.contains("NOT linearizable"), "{err}");
    assert!(
        err.contains(&format!("{key:?}")),
        "error must name key {key:?}: {err}"
    );
    err
}

// 1. -------------------------------------------------------------------------------------------

#[test]
fn sequential_history_is_linearizable() {
    let r = Recorder::new();
    run(&r, 0, "k", Op::Get, Outcome::Get(None));
    run(&r, 0, "k", Op::Delete, Outcome::Delete { found: false });
    run(&r, 0, "k", put("a"), Outcome::Put);
    run(&r, 0, "k", Op::Get, got("a"));
    run(&r, 0, "k", put("b"), Outcome::Put);
    run(&r, 0, "k", Op::Get, got("b"));
    run(&r, 0, "k", Op::Delete, Outcome::Delete { found: true });
    run(&r, 0, "k", Op::Get, Outcome::Get(None));
    run(&r, 0, "k", put("a"), Outcome::Put);
    run(&r, 0, "k", Op::Get, got("a"));
    assert_eq!(r.len(), 10);
    let summary = r.check().expect("sequential history");
    assert!(
        summary.contains("1 keys, 10 operations, 0 with unknown"),
        "{summary}"
    );

    // The same client reading what it did not write last fails.
    run(&r, 0, "k", Op::Get, got("b"));
    assert_fails(&r, "k");
}

#[test]
fn keys_are_independent_registers() {
    let r = Recorder::new();
    run(&r, 0, "k1", put("a"), Outcome::Put);
    run(&r, 1, "k2", Op::Get, Outcome::Get(None));
    run(&r, 1, "k2", put("b"), Outcome::Put);
    run(&r, 0, "k1", Op::Get, got("a"));
    run(&r, 0, "k2", Op::Get, got("b"));
    let summary = r.check().expect("independent keys");
    assert!(summary.contains("2 keys, 5 operations"), "{summary}");

    // A value written to one key is not visible under another.
    run(&r, 1, "k3", Op::Get, got("a"));
    assert_fails(&r, "k3");
}

// 2. -------------------------------------------------------------------------------------------

/// Client 1 puts a, client 2 puts b, client 3 reads, all overlapping; then, after all of them,
/// client 4 reads `later_reads` in turn. With later reads [b], only "Put(a), Get->a, Put(b),
/// Get->b" explains it.
fn overlapping_history(sequential_puts: bool, later_reads: &[&str]) -> Recorder {
    let r = Recorder::new();
    let a = r.invoke(1, b"k", put("a"));
    if sequential_puts {
        r.complete(a, Outcome::Put);
        run(&r, 2, "k", put("b"), Outcome::Put);
        run(&r, 3, "k", Op::Get, got("a"));
    } else {
        let b = r.invoke(2, b"k", put("b"));
        let g = r.invoke(3, b"k", Op::Get);
        r.complete(a, Outcome::Put);
        r.complete(g, got("a"));
        r.complete(b, Outcome::Put);
    }
    for read in later_reads {
        run(&r, 4, "k", Op::Get, got(read));
    }
    r
}

#[test]
fn overlapping_operations_linearizable_in_one_order_pass() {
    overlapping_history(false, &["b"])
        .check()
        .expect("Put(a), Get->a, Put(b), Get->b");
    // Without the overlap the same answers are impossible: Put(b) completed before the read.
    assert_fails(&overlapping_history(true, &["b"]), "k");
    // Reads after all puts settle on one last value: a (Put(b), Put(a)) or b, not both.
    overlapping_history(false, &["a", "a"])
        .check()
        .expect("Put(b), Put(a), Get->a, Get->a, Get->a");
    assert_fails(&overlapping_history(false, &["a", "b"]), "k");
    assert_fails(&overlapping_history(false, &["b", "a"]), "k");
}

#[test]
fn concurrent_read_may_see_old_or_new_value() {
    for seen in [None, Some("a")] {
        let r = Recorder::new();
        let g = r.invoke(2, b"k", Op::Get);
        run(&r, 1, "k", put("a"), Outcome::Put);
        r.complete(g, Outcome::Get(seen.map(|v| v.as_bytes().to_vec())));
        r.check()
            .expect("a read overlapping a write sees either value");
    }
}

// 3. -------------------------------------------------------------------------------------------

#[test]
fn stale_read_fails() {
    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 2, "k", Op::Get, Outcome::Get(None));
    let err = assert_fails(&r, "k");
    // The history is shown in readable form.
    assert!(err.contains("client 1   Put(\"a\") -> ok"), "{err}");
    assert!(err.contains("client 2   Get -> None"), "{err}");
}

#[test]
fn read_of_a_value_never_written_fails() {
    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 2, "k", Op::Get, got("zzz"));
    assert_fails(&r, "k");
}

#[test]
fn new_then_old_fails() {
    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 1, "k", put("b"), Outcome::Put);
    run(&r, 2, "k", Op::Get, got("b"));
    run(&r, 3, "k", Op::Get, got("a"));
    assert_fails(&r, "k");
}

#[test]
fn first_failing_key_is_named() {
    let r = Recorder::new();
    run(&r, 1, "good", put("a"), Outcome::Put);
    run(&r, 2, "good", Op::Get, got("a"));
    run(&r, 1, "bad", put("a"), Outcome::Put);
    run(&r, 2, "bad", Op::Get, Outcome::Get(None));
    let err = assert_fails(&r, "bad");
    assert!(!err.contains("\"good\""), "{err}");
}

// 4. -------------------------------------------------------------------------------------------

#[test]
fn unknown_put_may_take_effect_much_later() {
    let r = Recorder::new();
    run(&r, 1, "k", put("x"), Outcome::Unknown);
    run(&r, 2, "k", Op::Get, Outcome::Get(None));
    // The same client goes on after its unknown operation.
    run(&r, 1, "k", put("y"), Outcome::Put);
    run(&r, 2, "k", Op::Get, got("y"));
    run(&r, 1, "k", Op::Get, got("y"));
    // ... and x lands only now.
    run(&r, 2, "k", Op::Get, got("x"));
    run(&r, 1, "k", Op::Get, got("x"));
    let summary = r.check().expect("the unknown Put(x) took effect late");
    assert!(
        summary.contains("7 operations, 1 with unknown"),
        "{summary}"
    );

    // Once it took effect, it cannot be undone by itself.
    run(&r, 2, "k", Op::Get, got("y"));
    assert_fails(&r, "k");
}

#[test]
fn unknown_put_may_never_take_effect() {
    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 1, "k", put("x"), Outcome::Unknown);
    run(&r, 2, "k", Op::Get, got("a"));
    run(&r, 1, "k", Op::Get, got("a"));
    r.check().expect("the unknown Put(x) never took effect");
}

#[test]
fn dropped_pending_counts_as_unknown() {
    let r = Recorder::new();
    drop(r.invoke(1, b"k", put("x")));
    run(&r, 1, "k", Op::Get, Outcome::Get(None));
    run(&r, 2, "k", Op::Get, got("x"));
    let summary = r.check().expect("dropped Pending is unknown");
    assert!(summary.contains("1 with unknown"), "{summary}");
}

#[test]
fn read_without_any_put_fails_even_with_unknowns_around() {
    let r = Recorder::new();
    run(&r, 1, "k", put("y"), Outcome::Unknown);
    run(&r, 3, "k", Op::Delete, Outcome::Unknown);
    run(&r, 2, "k", Op::Get, got("x"));
    assert_fails(&r, "k");
}

#[test]
fn unknown_put_invoked_after_the_read_returned_fails() {
    let r = Recorder::new();
    run(&r, 2, "k", Op::Get, got("x"));
    run(&r, 1, "k", put("x"), Outcome::Unknown);
    assert_fails(&r, "k");

    // Whereas an unknown Put invoked before the read returned is fine.
    let r = Recorder::new();
    let g = r.invoke(2, b"k", Op::Get);
    run(&r, 1, "k", put("x"), Outcome::Unknown);
    r.complete(g, got("x"));
    r.check().expect("overlapping unknown put");
}

#[test]
fn unknown_writes_explain_deletes_and_absences() {
    // An unknown Put explains a later Delete that found something.
    let r = Recorder::new();
    run(&r, 1, "k", put("x"), Outcome::Unknown);
    run(&r, 2, "k", Op::Delete, Outcome::Delete { found: true });
    run(&r, 2, "k", Op::Get, Outcome::Get(None));
    r.check().expect("unknown put, found by delete");
    // But not twice.
    run(&r, 2, "k", Op::Delete, Outcome::Delete { found: true });
    assert_fails(&r, "k");

    // An unknown Delete explains a later absence.
    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 1, "k", Op::Delete, Outcome::Unknown);
    run(&r, 2, "k", Op::Get, got("a"));
    run(&r, 2, "k", Op::Get, Outcome::Get(None));
    run(&r, 2, "k", Op::Delete, Outcome::Delete { found: false });
    r.check()
        .expect("unknown delete took effect between the reads");
    run(&r, 2, "k", Op::Get, got("a"));
    assert_fails(&r, "k");

    // An unknown Get constrains nothing.
    let r = Recorder::new();
    run(&r, 1, "k", Op::Get, Outcome::Unknown);
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 1, "k", Op::Get, got("a"));
    r.check().expect("unknown get");
}

#[test]
fn search_budget_makes_a_hard_history_inconclusive() {
    // Twelve unknown puts, all read in turn, then a read of a value nobody wrote: the search
    // has to try a great many orders of the unknown puts before giving up.
    let r = Recorder::new();
    for c in 0..12 {
        run(&r, c, "k", put(&format!("v{c}")), Outcome::Unknown);
    }
    for c in 0..12 {
        run(&r, 100, "k", Op::Get, got(&format!("v{}", c % 5)));
    }
    run(&r, 100, "k", Op::Get, got("never"));
    let err = r.check_with_budget(Duration::ZERO).expect_err("budget");
    assert!(err.contains("inconclusive"), "{err}");
    assert!(!err.contains("NOT linearizable"), "{err}");
}

#[test]
#[should_panic(expected = "does not belong to that operation")]
fn mismatched_outcome_panics() {
    let r = Recorder::new();
    run(&r, 1, "k", Op::Get, Outcome::Put);
}

#[test]
#[should_panic(expected = "still in flight")]
fn two_operations_in_flight_on_one_client_panics() {
    let r = Recorder::new();
    let _first = r.invoke(1, b"k", Op::Get);
    let _second = r.invoke(1, b"j", Op::Get);
}

// 6. -------------------------------------------------------------------------------------------

#[test]
fn delete_that_found_an_absent_key_fails() {
    let r = Recorder::new();
    run(&r, 1, "k", Op::Delete, Outcome::Delete { found: true });
    assert_fails(&r, "k");

    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 1, "k", Op::Delete, Outcome::Delete { found: true });
    run(&r, 2, "k", Op::Delete, Outcome::Delete { found: true });
    assert_fails(&r, "k");
}

#[test]
fn delete_then_get_none_passes() {
    let r = Recorder::new();
    run(&r, 1, "k", put("a"), Outcome::Put);
    run(&r, 1, "k", Op::Delete, Outcome::Delete { found: true });
    run(&r, 2, "k", Op::Get, Outcome::Get(None));
    run(&r, 2, "k", Op::Delete, Outcome::Delete { found: false });
    r.check().expect("delete, then absent");
    // A delete that missed a present value fails.
    run(&r, 1, "k", put("b"), Outcome::Put);
    run(&r, 2, "k", Op::Delete, Outcome::Delete { found: false });
    assert_fails(&r, "k");
}

// Differential: the checker against brute force on small random histories. -----------------

/// A recorded operation for the brute-force reference: invocation and return positions
/// (`usize::MAX`: unknown) and outcome.
struct Small {
    op: Op,
    invoked: usize,
    returned: usize,
    outcome: Outcome,
}

/// Brute force, the definition itself: some order of the known operations and of any subset of
/// the unknown ones, each after every operation that returned before it was invoked, in which
/// a sequential register gives the recorded answers. Only for this comparison; the checker is
/// stateright's search.
fn brute_force_linearizable(ops: &[Small]) -> bool {
    fn extend(ops: &[Small], used: &mut [bool], state: Option<Vec<u8>>) -> bool {
        let known_left = ops
            .iter()
            .zip(used.iter())
            .any(|(op, &u)| !u && op.outcome != Outcome::Unknown);
        if !known_left {
            return true;
        }
        for i in 0..ops.len() {
            let must_wait = ops
                .iter()
                .zip(used.iter())
                .any(|(other, &u)| !u && other.returned < ops[i].invoked);
            if used[i] || must_wait {
                continue;
            }
            let (answer, next) = match &ops[i].op {
                Op::Put(v) => (Outcome::Put, Some(v.clone())),
                Op::Get => (Outcome::Get(state.clone()), state.clone()),
                Op::Delete => (
                    Outcome::Delete {
                        found: state.is_some(),
                    },
                    None,
                ),
            };
            if ops[i].outcome != Outcome::Unknown && ops[i].outcome != answer {
                continue;
            }
            used[i] = true;
            let found = extend(ops, used, next);
            used[i] = false;
            if found {
                return true;
            }
        }
        false
    }
    extend(ops, &mut vec![false; ops.len()], None)
}

#[test]
fn agrees_with_brute_force_on_random_small_histories() {
    let mut rng = Rng(0xD1FF);
    let mut verdicts = [0usize; 2];
    for case in 0..4_000 {
        // Values from a small set (repeats) or unique; answers at random (mostly wrong).
        let unique = case % 2 == 0;
        let clients = 1 + rng.below(4) as usize;
        let mut left: Vec<u64> = (0..clients).map(|_| 1 + rng.below(4)).collect();
        let mut open: Vec<Option<(linearizability::Pending, usize)>> =
            (0..clients).map(|_| None).collect();
        let recorder = Recorder::new();
        let mut ops: Vec<Small> = Vec::new();
        let mut time = 0;
        loop {
            let ready: Vec<usize> = (0..clients)
                .filter(|&c| open[c].is_some() || left[c] > 0)
                .collect();
            if ready.is_empty() {
                break;
            }
            let c = ready[rng.below(ready.len() as u64) as usize];
            time += 1;
            if let Some((pending, i)) = open[c].take() {
                let outcome = if rng.below(4) == 0 {
                    Outcome::Unknown
                } else {
                    match ops[i].op {
                        Op::Put(_) => Outcome::Put,
                        Op::Delete => Outcome::Delete {
                            found: rng.below(2) == 0,
                        },
                        Op::Get => {
                            let written: Vec<&Vec<u8>> = ops
                                .iter()
                                .filter_map(|o| match &o.op {
                                    Op::Put(v) => Some(v),
                                    _ => None,
                                })
                                .collect();
                            match rng.below(written.len() as u64 + 1) {
                                0 => Outcome::Get(None),
                                k => Outcome::Get(Some(written[k as usize - 1].clone())),
                            }
                        }
                    }
                };
                if outcome != Outcome::Unknown {
                    ops[i].returned = time;
                }
                ops[i].outcome = outcome.clone();
                recorder.complete(pending, outcome);
            } else {
                left[c] -= 1;
                let op = match rng.below(3) {
                    0 if unique => Op::Put(format!("u{}", ops.len()).into_bytes()),
                    0 => Op::Put(vec![b'a' + rng.below(3) as u8]),
                    1 => Op::Get,
                    _ => Op::Delete,
                };
                open[c] = Some((recorder.invoke(c, b"k", op.clone()), ops.len()));
                ops.push(Small {
                    op,
                    invoked: time,
                    returned: usize::MAX,
                    outcome: Outcome::Unknown,
                });
            }
        }
        let expected = brute_force_linearizable(&ops);
        let verdict = recorder.check();
        assert_eq!(verdict.is_ok(), expected, "case {case}: {verdict:?}");
        verdicts[expected as usize] += 1;
    }
    // Both verdicts were exercised.
    assert!(verdicts[0] > 500 && verdicts[1] > 500, "{verdicts:?}");
}

// 5. -------------------------------------------------------------------------------------------

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// The real register: one atomic step under the store's mutex.
fn apply(store: &Store, key: &[u8], op: &Op) -> Outcome {
    let mut map = store.lock().unwrap();
    match op {
        Op::Put(v) => {
            map.insert(key.to_vec(), v.clone());
            Outcome::Put
        }
        Op::Get => Outcome::Get(map.get(key).cloned()),
        Op::Delete => Outcome::Delete {
            found: map.remove(key).is_some(),
        },
    }
}

fn small_delay(rng: &mut Rng) {
    match rng.below(10) {
        0..=4 => {}
        5..=7 => thread::yield_now(),
        _ => thread::sleep(Duration::from_micros(rng.below(50))),
    }
}

/// `clients` threads doing `ops_per_client` random operations each on `keys` keys of a real
/// linearizable map. About `unknown_per_mille`/1000 of the operations report `Unknown`: applied
/// with the answer lost, not applied, or applied a few milliseconds later by another thread.
/// Every Put writes a distinct value.
fn realistic_history(
    clients: usize,
    keys: u64,
    ops_per_client: usize,
    unknown_per_mille: u64,
    seed: u64,
) -> Recorder {
    let recorder = Recorder::new();
    let store: Store = Arc::default();
    let (late_tx, late_rx) = mpsc::channel::<(Instant, Vec<u8>, Op)>();
    let late = {
        let store = store.clone();
        thread::spawn(move || {
            for (due, key, op) in late_rx {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                apply(&store, &key, &op);
            }
        })
    };
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let recorder = recorder.clone();
            let store = store.clone();
            let late_tx = late_tx.clone();
            thread::spawn(move || {
                let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
                for seq in 0..ops_per_client {
                    let key = format!("key-{}", rng.below(keys)).into_bytes();
                    let op = match rng.below(100) {
                        0..=44 => Op::Put(format!("c{client}-{seq}").into_bytes()),
                        45..=89 => Op::Get,
                        _ => Op::Delete,
                    };
                    let pending = recorder.invoke(client, &key, op.clone());
                    small_delay(&mut rng);
                    let outcome = if rng.below(1000) < unknown_per_mille {
                        match rng.below(3) {
                            0 => {
                                apply(&store, &key, &op);
                            }
                            1 => {}
                            _ => {
                                let due = Instant::now() + Duration::from_micros(rng.below(5000));
                                late_tx.send((due, key.clone(), op)).unwrap();
                            }
                        }
                        Outcome::Unknown
                    } else {
                        apply(&store, &key, &op)
                    };
                    small_delay(&mut rng);
                    recorder.complete(pending, outcome);
                }
            })
        })
        .collect();
    drop(late_tx);
    for t in threads {
        t.join().unwrap();
    }
    late.join().unwrap();
    recorder
}

struct Recorded {
    key: Vec<u8>,
    op: Op,
    invoked: usize,
    returned: Option<(usize, Outcome)>,
}

fn recorded_ops(events: &[Event]) -> Vec<Recorded> {
    let mut ops: Vec<Recorded> = Vec::new();
    for (at, event) in events.iter().enumerate() {
        match event {
            Event::Invoke { id, key, op, .. } => {
                assert_eq!(*id, ops.len());
                ops.push(Recorded {
                    key: key.clone(),
                    op: op.clone(),
                    invoked: at,
                    returned: None,
                });
            }
            Event::Return { id, outcome } => ops[*id].returned = Some((at, outcome.clone())),
        }
    }
    ops
}

/// A Get `g` and a value `v` such that some completed Put(v) finished before another completed
/// Put(w != v) was invoked, which in turn finished before `g` was invoked. With distinct values,
/// `g` reading `v` is then certainly not linearizable. Prefers keys with few unknown operations
/// (`fewest_unknown`) or with many.
fn stale_read_candidate(ops: &[Recorded], fewest_unknown: bool) -> (usize, Vec<u8>) {
    // Per key: unknown operations, and completed Puts as (invoked, returned, value).
    type Puts<'a> = Vec<(usize, usize, &'a [u8])>;
    let mut per_key: HashMap<&[u8], (usize, Puts)> = HashMap::new();
    for op in ops {
        let entry = per_key.entry(&op.key).or_default();
        match (&op.op, &op.returned) {
            (_, None | Some((_, Outcome::Unknown))) => entry.0 += 1,
            (Op::Put(v), Some((ret, Outcome::Put))) => entry.1.push((op.invoked, *ret, v)),
            _ => {}
        }
    }
    let mut best: Option<(usize, usize, Vec<u8>)> = None;
    for (id, g) in ops.iter().enumerate() {
        if !matches!((&g.op, &g.returned), (Op::Get, Some((_, Outcome::Get(_))))) {
            continue;
        }
        let (unknown, puts) = &per_key[g.key.as_slice()];
        let score = if fewest_unknown {
            *unknown
        } else {
            usize::MAX - unknown
        };
        if best.as_ref().is_some_and(|(s, _, _)| *s <= score) {
            continue;
        }
        let found = puts
            .iter()
            .filter(|(_, p_ret, _)| *p_ret < g.invoked)
            .find_map(|(p_inv, _, w)| {
                puts.iter()
                    .find(|(_, q_ret, v)| q_ret < p_inv && v != w)
                    .map(|(_, _, v)| v.to_vec())
            });
        if let Some(v) = found {
            best = Some((score, id, v));
        }
    }
    let (_, id, v) = best.expect("no Get preceded by two sequential Puts: history too short");
    (id, v)
}

fn corrupt(events: &[Event], get: usize, value: Vec<u8>) -> Recorder {
    let mut events = events.to_vec();
    let ret = events
        .iter_mut()
        .find_map(|e| match e {
            Event::Return { id, outcome } if *id == get => Some(outcome),
            _ => None,
        })
        .expect("the Get returned");
    assert_ne!(*ret, Outcome::Get(Some(value.clone())));
    *ret = Outcome::Get(Some(value));
    Recorder::from_events(events)
}

#[test]
fn realistic_history_passes_and_a_stale_read_in_it_fails() {
    let recorder = realistic_history(8, 200, 2_500, 10, 0x5EED);
    assert_eq!(recorder.len(), 20_000);

    let started = Instant::now();
    let summary = recorder
        .check()
        .expect("a mutex-protected map is linearizable");
    let took = started.elapsed();
    eprintln!("realistic history: {summary}; checked in {took:?}");
    assert!(summary.contains("200 keys, 20000 operations"), "{summary}");
    let unknown: usize = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" with unknown outcome"))
        .and_then(|n| n.parse().ok())
        .expect("unknown count in the summary");
    assert!(
        (100..=400).contains(&unknown),
        "about 1% unknown: {summary}"
    );

    let events = recorder.events();
    let replayed = Recorder::from_events(events.clone());
    assert_eq!(replayed.events(), events);

    let ops = recorded_ops(&events);
    for fewest_unknown in [true, false] {
        let (get, stale) = stale_read_candidate(&ops, fewest_unknown);
        let key = String::from_utf8(ops[get].key.clone()).unwrap();
        let started = Instant::now();
        let err = corrupt(&events, get, stale)
            .check()
            .expect_err("a stale read is not linearizable");
        eprintln!(
            "stale read on {key} (fewest unknown: {fewest_unknown}): failed in {:?}",
            started.elapsed()
        );
        assert!(err.contains("NOT linearizable"), "{err}");
        assert!(err.contains(&format!("{key:?}")), "{err}");
    }
}

/// Measurements of the checker's cost under heavier contention (run with `--ignored
/// --nocapture`).
#[test]
#[ignore]
fn measure_check_cost() {
    for (clients, keys, per_client, unknown) in [
        (8, 200, 2_500, 10),
        (8, 200, 2_500, 50),
        (8, 50, 2_500, 10),
        (8, 10, 2_500, 10),
        (8, 8, 1_000, 10),
        (8, 4, 500, 10),
        (2, 1, 1_000, 10),
        (4, 1, 250, 10),
        (8, 1, 25, 10),
        (8, 1, 50, 10),
    ] {
        let recorder = realistic_history(clients, keys, per_client, unknown, 7);
        let started = Instant::now();
        let verdict = recorder.check();
        let pass = started.elapsed();
        let events = recorder.events();
        let ops = recorded_ops(&events);
        let (get, stale) = stale_read_candidate(&ops, false);
        let started = Instant::now();
        let corrupted = corrupt(&events, get, stale).check();
        let fail = started.elapsed();
        eprintln!(
            "{clients} clients, {keys} keys, {} ops, {unknown}/1000 unknown: pass {:?} in \
             {pass:?}; stale read on the key with most unknowns: {} in {fail:?}",
            clients * per_client,
            verdict
                .as_ref()
                .map(|_| "ok")
                .map_err(|e| e.lines().next().unwrap()),
            corrupted
                .err()
                .map(|e| e.lines().next().unwrap().to_string())
                .unwrap_or_else(|| "PASSED (bug)".into())
        );
    }
}
