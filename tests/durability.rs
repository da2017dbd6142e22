//! Durable backends: the write-ahead log survives kill -9, torn tails, corruption, compaction
//! crashes, full stores and full disks, and a whole cluster restarted over its data serves the
//! same keys.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::{run_bounded, Server};
use common::BOUND;
use ringkv::durable::{DurableOptions, DurableStore};
use ringkv::protocol::Status;
use ringkv::store::{Engine, StoreError};
use ringkv::wal::{
    CrashPoint, FsyncPolicy, OpenError, COMPACT_FILE, EXPIRY_LEN, FORMAT_VERSION, HEADER_LEN,
    LOG_FILE, RECORD_OVERHEAD,
};
use ringkv::{BackendConfig, Client, Error, FrontendConfig, LocalCluster};

const RINGKV: &str = env!("CARGO_BIN_EXE_ringkv");

/// A fresh directory for one test, removed when dropped.
struct TempDir(common::TempDir);

impl TempDir {
    fn new(name: &str) -> TempDir {
        TempDir(common::TempDir::new("durability", name))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn log(&self) -> PathBuf {
        self.path().join(LOG_FILE)
    }
}

fn options(fsync: FsyncPolicy) -> DurableOptions {
    DurableOptions {
        fsync,
        ..DurableOptions::default()
    }
}

fn open(dir: &Path) -> DurableStore {
    DurableStore::open(dir, options(FsyncPolicy::Never)).unwrap()
}

/// One mutation and the model of the store it is checked against.
#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Op {
    /// Bytes the op takes in the log.
    fn log_bytes(&self) -> u64 {
        RECORD_OVERHEAD
            + match self {
                Op::Put(k, v) => (k.len() + v.len()) as u64,
                Op::Delete(k) => k.len() as u64,
            }
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(store: &dyn Engine, model: &mut Model, op: &Op) {
    match op {
        Op::Put(k, v) => {
            store.put(k, v).unwrap();
            model.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            assert_eq!(store.delete(k).unwrap(), model.remove(k).is_some());
        }
    }
}

/// Puts, overwrites (of varied lengths, empty included) and deletes of keys that exist, so
/// every op writes exactly one record.
fn history(n: usize) -> Vec<Op> {
    let mut live: Vec<Vec<u8>> = Vec::new();
    (0..n)
        .map(|i| {
            if i % 7 == 6 && !live.is_empty() {
                Op::Delete(live.remove(i % live.len()))
            } else {
                let key = format!("key-{}", i % 11).into_bytes();
                if !live.contains(&key) {
                    live.push(key.clone());
                }
                Op::Put(key, vec![b'a' + (i % 26) as u8; (i * 13) % 50])
            }
        })
        .collect()
}

/// Asserts that `store` holds exactly `model`.
fn assert_holds(store: &dyn Engine, model: &Model, universe: &[Vec<u8>], what: &str) {
    for key in universe {
        assert_eq!(
            store.get(key),
            model.get(key).cloned(),
            "{what}: key {:?}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(store.size().keys, model.len() as u64, "{what}: key count");
    let bytes: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(store.size().bytes, bytes as u64, "{what}: byte count");
}

fn keys_of(ops: &[Op]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = ops
        .iter()
        .map(|op| match op {
            Op::Put(k, _) | Op::Delete(k) => k.clone(),
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Writes `ops` to a fresh log in `dir`; returns the offset where each record ends (the first
/// entry is the end of the header).
fn write_log(dir: &Path, ops: &[Op]) -> Vec<u64> {
    let store = open(dir);
    let mut model = Model::new();
    let mut ends = vec![HEADER_LEN];
    for op in ops {
        apply(&store, &mut model, op);
        ends.push(ends.last().unwrap() + op.log_bytes());
    }
    assert_eq!(store.log_bytes(), *ends.last().unwrap());
    ends
}

fn model_after(ops: &[Op]) -> Model {
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                model.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                model.remove(k);
            }
        }
    }
    model
}

#[test]
fn truncating_the_log_anywhere_keeps_exactly_the_whole_records_before_the_cut() {
    let source = TempDir::new("truncate-source");
    let ops = history(40);
    let universe = keys_of(&ops);
    let ends = write_log(source.path(), &ops);
    let bytes = std::fs::read(source.log()).unwrap();
    let mut cuts: Vec<u64> = Vec::new();
    for pair in ends.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        // Every boundary, and inside each record: in the length, the type, the key length,
        // the key or value, and one byte short of the CRC's end.
        cuts.extend([start, start + 1, start + 4, start + 5, start + 9]);
        cuts.extend([(start + end) / 2, end - 1]);
    }
    cuts.push(*ends.last().unwrap());
    cuts.sort();
    cuts.dedup();
    for cut in cuts {
        let dir = TempDir::new("truncated");
        std::fs::write(dir.log(), &bytes[..cut as usize]).unwrap();
        let whole = ends.iter().rposition(|&end| end <= cut).unwrap();
        let store = open(dir.path());
        let what = format!("cut at {cut}");
        assert_eq!(store.recovery().records, whole as u64, "{what}");
        assert_eq!(store.recovery().dropped_bytes, cut - ends[whole], "{what}");
        assert_eq!(store.log_bytes(), ends[whole], "{what}");
        // A cut never leaves a whole record, so nothing counts as damaged.
        assert_eq!(store.damaged_records(), 0, "{what}");
        assert_holds(&store, &model_after(&ops[..whole]), &universe, &what);
        drop(store);
        // The cut log is whole again: opening it once more drops nothing.
        let again = open(dir.path());
        assert_eq!(again.recovery().dropped_bytes, 0, "{what}, reopened");
        assert_eq!(again.recovery().records, whole as u64, "{what}, reopened");
    }
}

#[test]
fn a_log_cut_inside_its_header_is_refused_without_panicking() {
    let source = TempDir::new("header-source");
    write_log(source.path(), &history(3));
    let bytes = std::fs::read(source.log()).unwrap();
    for cut in 0..HEADER_LEN as usize {
        let dir = TempDir::new("header-cut");
        std::fs::write(dir.log(), &bytes[..cut]).unwrap();
        let err = DurableStore::open(dir.path(), DurableOptions::default()).err();
        assert!(
            matches!(err, Some(OpenError::NotALog { .. })),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn a_flipped_bit_before_the_tail_is_refused_and_repair_keeps_the_records_before_it() {
    let source = TempDir::new("flip-source");
    let ops = history(30);
    let universe = keys_of(&ops);
    let ends = write_log(source.path(), &ops);
    let original = std::fs::read(source.log()).unwrap();
    // Record 10 is damaged in its length field, then (separately) in the middle of its bytes.
    for damaged_byte in [ends[10] + 1, (ends[10] + ends[11]) / 2] {
        let dir = TempDir::new("flipped");
        let mut bytes = original.clone();
        bytes[damaged_byte as usize] ^= 0x10;
        std::fs::write(dir.log(), &bytes).unwrap();
        let err = DurableStore::open(dir.path(), DurableOptions::default())
            .err()
            .expect("a corrupt log was opened");
        match &err {
            OpenError::Corrupt { path, offset, .. } => {
                assert_eq!(*offset, ends[10], "byte {damaged_byte}");
                assert_eq!(path, &dir.log());
            }
            other => panic!("byte {damaged_byte}: expected Corrupt, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&dir.log().display().to_string())
                && message.contains(&format!("offset {}", ends[10])),
            "{message}"
        );
        assert_eq!(
            std::fs::read(dir.log()).unwrap(),
            bytes,
            "a refused log is not changed"
        );

        let repaired = DurableStore::open(
            dir.path(),
            DurableOptions {
                repair: true,
                ..DurableOptions::default()
            },
        )
        .unwrap();
        assert_eq!(repaired.recovery().records, 10);
        assert_holds(
            &repaired,
            &model_after(&ops[..10]),
            &universe,
            "after repair",
        );
        let saved = repaired.recovery().saved_corrupt.clone().unwrap();
        assert_eq!(
            std::fs::read(saved).unwrap(),
            bytes,
            "the original is saved"
        );
    }
}

#[test]
fn damage_in_the_whole_last_record_is_cut_as_a_torn_tail_but_saved_and_counted() {
    let source = TempDir::new("last-source");
    let ops = history(12);
    let ends = write_log(source.path(), &ops);
    let mut bytes = std::fs::read(source.log()).unwrap();
    let last = ends[ends.len() - 2];
    bytes[(last + 6) as usize] ^= 1;
    std::fs::write(source.log(), &bytes).unwrap();
    let store = open(source.path());
    assert_eq!(store.recovery().records, 11);
    assert_eq!(store.recovery().dropped_bytes, ends[12] - ends[11]);
    assert_holds(
        &store,
        &model_after(&ops[..11]),
        &keys_of(&ops),
        "after the cut",
    );
    let saved = source.path().join(format!("{LOG_FILE}.damaged-{last}"));
    assert_eq!(store.recovery().damaged_last_record.as_ref(), Some(&saved));
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        &bytes[last as usize..],
        "the dropped bytes are saved"
    );
    assert_eq!(store.damaged_records(), 1);
    drop(store);
    let again = open(source.path());
    assert_eq!(again.damaged_records(), 0, "reopened");
    assert_eq!(again.recovery().records, 11, "reopened");
}

#[test]
fn a_backend_over_a_damaged_last_record_starts_and_logs_an_error_naming_the_saved_copy() {
    let dir = TempDir::new("damaged-process");
    let ops = history(8);
    let ends = write_log(dir.path(), &ops);
    let mut bytes = std::fs::read(dir.log()).unwrap();
    let last = ends[ends.len() - 2];
    bytes[(last + 10) as usize] ^= 0x04;
    std::fs::write(dir.log(), &bytes).unwrap();
    let mut backend = Server::start(&[
        "backend",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let addr = backend.listening("backend");
    // An operator sees it in STATS.
    let stats = ringkv::Client::connect(&addr).unwrap().stats().unwrap();
    assert_eq!(stats[0].counter("wal_damaged_records"), 1);
    backend.terminate();
    let saved = dir.path().join(format!("{LOG_FILE}.damaged-{last}"));
    // The log reader thread may still be draining the pipe after the exit.
    let deadline = std::time::Instant::now() + BOUND;
    let error = loop {
        let log = backend.log();
        if let Some(line) = log.lines().find(|line| line.contains("ERROR")) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no error logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        error.contains(&dir.log().display().to_string())
            && error.contains(&format!("offset {last}"))
            && error.contains(&saved.display().to_string()),
        "{error}"
    );
    assert_eq!(std::fs::read(&saved).unwrap(), &bytes[last as usize..]);
    assert_holds(
        &open(dir.path()),
        &model_after(&ops[..7]),
        &keys_of(&ops),
        "after the cut",
    );
}

#[test]
fn a_log_from_a_newer_format_version_or_of_another_kind_is_refused() {
    let dir = TempDir::new("version");
    write_log(dir.path(), &history(5));
    let mut bytes = std::fs::read(dir.log()).unwrap();
    assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(dir.log(), &bytes).unwrap();
    let err = DurableStore::open(dir.path(), DurableOptions::default()).err();
    assert!(
        matches!(
            err,
            Some(OpenError::NewerVersion { found, supported, .. })
                if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read(dir.log()).unwrap(), bytes, "left untouched");
    bytes[0] = b'X';
    std::fs::write(dir.log(), &bytes).unwrap();
    let err = DurableStore::open(dir.path(), DurableOptions::default()).err();
    assert!(matches!(err, Some(OpenError::NotALog { .. })), "{err:?}");
}

/// Overwrites each of 100 keys five times and deletes every fourth.
fn churn(store: &DurableStore, model: &mut Model) {
    for round in 0..5u8 {
        for i in 0..100 {
            let op = Op::Put(format!("k{i}").into_bytes(), vec![round; 20 + i % 7]);
            apply(store, model, &op);
        }
    }
    for i in (0..100).step_by(4) {
        apply(store, model, &Op::Delete(format!("k{i}").into_bytes()));
    }
}

fn universe() -> Vec<Vec<u8>> {
    (0..100).map(|i| format!("k{i}").into_bytes()).collect()
}

fn live_log_bytes(model: &Model) -> u64 {
    HEADER_LEN
        + model
            .iter()
            .map(|(k, v)| RECORD_OVERHEAD + (k.len() + v.len()) as u64)
            .sum::<u64>()
}

#[test]
fn compaction_keeps_the_latest_value_of_every_key_and_drops_deleted_ones() {
    let dir = TempDir::new("compact");
    let store = open(dir.path());
    let mut model = Model::new();
    churn(&store, &mut model);
    let before = store.log_bytes();
    let done = store.compact().unwrap().expect("no other compaction runs");
    assert_eq!(done.bytes_before, before);
    assert_eq!(done.bytes_after, live_log_bytes(&model));
    assert_eq!(store.log_bytes(), live_log_bytes(&model));
    assert_holds(&store, &model, &universe(), "after compaction");
    // The compacted log takes writes as the old one did.
    apply(
        &store,
        &mut model,
        &Op::Put(b"k1".to_vec(), b"after".to_vec()),
    );
    apply(&store, &mut model, &Op::Delete(b"k2".to_vec()));
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(reopened.recovery().records, 75 + 2);
    assert_holds(&reopened, &model, &universe(), "reopened");
}

#[test]
fn a_crash_at_any_step_of_compaction_loses_nothing() {
    for point in CrashPoint::ALL {
        let dir = TempDir::new("compact-crash");
        let store = DurableStore::open(
            dir.path(),
            DurableOptions {
                fsync: FsyncPolicy::EverySec,
                crash_at: Some(point),
                ..DurableOptions::default()
            },
        )
        .unwrap();
        let mut model = Model::new();
        churn(&store, &mut model);
        assert!(
            store.compact().is_err(),
            "{point:?}: the crash was injected"
        );
        // A crashed process writes nothing more; neither does the log after the crash point.
        assert!(matches!(store.put(b"late", b"x"), Err(StoreError::Io(_))));
        drop(store);

        let reopened = open(dir.path());
        assert_eq!(
            reopened.recovery().removed_partial_compaction,
            point != CrashPoint::AfterRename,
            "{point:?}"
        );
        assert_eq!(reopened.recovery().dropped_bytes, 0, "{point:?}");
        assert_holds(&reopened, &model, &universe(), &format!("{point:?}"));
        apply(
            &reopened,
            &mut model,
            &Op::Put(b"k3".to_vec(), b"new".to_vec()),
        );
        reopened.compact().unwrap();
        drop(reopened);
        assert_holds(
            &open(dir.path()),
            &model,
            &universe(),
            &format!("{point:?}, compacted again"),
        );
    }
}

/// Each key's value and expiry time.
type ExpiringModel = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

/// Puts, some expiring (one, k7, already expired), overwrites that switch keys between expiring and
/// not, and deletes of both kinds.
fn expiring_churn(store: &DurableStore, model: &mut ExpiringModel, now: u64) {
    for round in 0..4u64 {
        for i in 0..40u64 {
            let key = format!("k{i}").into_bytes();
            let value = vec![b'a' + round as u8; (i % 9) as usize];
            let at = match (i + round) % 3 {
                _ if i == 7 => Some(now - 1),
                0 => None,
                1 => Some(now + 3_600_000 + i),
                _ => Some(now + 60_000 * (round + 1)),
            };
            let writes = store.put_expiring_unsettled(&key, &value, at).unwrap();
            store.settle(writes).unwrap();
            model.insert(key, (value, at));
        }
    }
    for i in (0..40).step_by(5) {
        let key = format!("k{i}").into_bytes();
        assert!(store.delete(&key).unwrap());
        model.remove(&key);
    }
}

/// Asserts that `store` holds exactly `model`, expiry times and expired keys included.
fn assert_holds_expiring(store: &DurableStore, model: &ExpiringModel, now: u64, what: &str) {
    for i in 0..40 {
        let key = format!("k{i}").into_bytes();
        let expected = model
            .get(&key)
            .filter(|(_, at)| at.is_none_or(|at| at > now))
            .cloned();
        assert_eq!(store.get_expiring(&key), expected, "{what}: key k{i}");
    }
    let mut held = BTreeMap::new();
    for part in 0..store.parts() {
        store.for_each_key_in(part, &mut |key, at| {
            held.insert(key.to_vec(), at);
        });
    }
    let expected: BTreeMap<Vec<u8>, Option<u64>> =
        model.iter().map(|(k, (_, at))| (k.clone(), *at)).collect();
    assert_eq!(
        held, expected,
        "{what}: every key and its time, expired ones too"
    );
}

fn expiring_live_log_bytes(model: &ExpiringModel) -> u64 {
    HEADER_LEN
        + model
            .iter()
            .map(|(k, (v, at))| {
                RECORD_OVERHEAD
                    + (k.len() + v.len()) as u64
                    + if at.is_some() { EXPIRY_LEN } else { 0 }
            })
            .sum::<u64>()
}

#[test]
fn expiry_times_survive_compaction_and_a_crash_at_any_step_of_it() {
    let now = ringkv::expiry::now_ms();
    for point in CrashPoint::ALL {
        let dir = TempDir::new("expiring-compact-crash");
        let store = DurableStore::open(
            dir.path(),
            DurableOptions {
                fsync: FsyncPolicy::EverySec,
                crash_at: Some(point),
                ..DurableOptions::default()
            },
        )
        .unwrap();
        let mut model = ExpiringModel::new();
        expiring_churn(&store, &mut model, now);
        assert!(
            store.compact().is_err(),
            "{point:?}: the crash was injected"
        );
        drop(store);

        let reopened = open(dir.path());
        assert_holds_expiring(&reopened, &model, now, &format!("{point:?}"));
        let done = reopened
            .compact()
            .unwrap()
            .expect("no other compaction runs");
        assert_eq!(
            done.bytes_after,
            expiring_live_log_bytes(&model),
            "{point:?}: a compaction writes each expiring key's time"
        );
        drop(reopened);
        let compacted = open(dir.path());
        assert_eq!(compacted.recovery().records, model.len() as u64);
        assert_holds_expiring(
            &compacted,
            &model,
            now,
            &format!("{point:?}, compacted again"),
        );
    }
}

#[test]
fn writes_that_arrive_during_compaction_are_kept() {
    let dir = TempDir::new("compact-concurrent");
    let store = Arc::new(open(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut model = Model::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) || i < 2_000 {
                    let key = format!("t{t}-{}", i % 50).into_bytes();
                    if i % 9 == 8 {
                        let _ = store.delete(&key).unwrap();
                        model.remove(&key);
                    } else {
                        let value = i.to_le_bytes().repeat(4);
                        store.put(&key, &value).unwrap();
                        model.insert(key, value);
                    }
                    i += 1;
                }
                model
            })
        })
        .collect();
    let mut compactions = 0;
    while compactions < 20 {
        if store.compact().unwrap().is_some() {
            compactions += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut model = Model::new();
    for writer in writers {
        model.extend(writer.join().unwrap());
    }
    let universe: Vec<Vec<u8>> = (0..4)
        .flat_map(|t| (0..50).map(move |i| format!("t{t}-{i}").into_bytes()))
        .collect();
    assert_holds(&*store, &model, &universe, "in memory");
    drop(store);
    assert_holds(&open(dir.path()), &model, &universe, "reopened");
}

#[test]
fn the_log_is_compacted_in_the_background_once_dead_records_dominate() {
    let dir = TempDir::new("compact-background");
    let min = 64 * 1024;
    let store = DurableStore::open(
        dir.path(),
        DurableOptions {
            fsync: FsyncPolicy::Never,
            compact_min_bytes: min,
            ..DurableOptions::default()
        },
    )
    .unwrap();
    let mut model = Model::new();
    let mut written = 0;
    for i in 0..5_000u32 {
        let op = Op::Put(format!("k{}", i % 10).into_bytes(), vec![7; 100]);
        written += op.log_bytes();
        apply(&store, &mut model, &op);
    }
    assert!(written > 5 * min);
    store.wait_for_compaction();
    // A write after the background work settled finds the log small or compacts it once more.
    apply(
        &store,
        &mut model,
        &Op::Put(b"k0".to_vec(), b"last".to_vec()),
    );
    store.wait_for_compaction();
    assert!(
        store.log_bytes() < min,
        "the log holds {} bytes after {written} written",
        store.log_bytes()
    );
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i}").into_bytes()).collect();
    drop(store);
    assert_holds(&open(dir.path()), &model, &keys, "reopened");
}

#[test]
fn a_full_store_refuses_puts_and_keeps_what_it_had() {
    let dir = TempDir::new("full");
    let limited = DurableOptions {
        max_bytes: Some(100),
        ..options(FsyncPolicy::Always)
    };
    let store = DurableStore::open(dir.path(), limited.clone()).unwrap();
    store.put(b"a", &[1; 60]).unwrap();
    let log_before = store.log_bytes();
    let err = store.put(b"b", &[2; 60]).unwrap_err();
    assert!(
        matches!(err, StoreError::Full { limit: 100, .. }),
        "{err:?}"
    );
    assert!(err.is_full());
    assert_eq!(store.log_bytes(), log_before, "a refused put is not logged");
    assert_eq!(store.get(b"a"), Some(vec![1; 60]));
    assert_eq!(store.get(b"b"), None);
    drop(store);
    let reopened = DurableStore::open(dir.path(), limited).unwrap();
    assert_eq!(reopened.get(b"a"), Some(vec![1; 60]));
    assert_eq!(reopened.size().keys, 1);
}

#[test]
fn a_full_cluster_answers_storage_full_naming_the_backend() {
    let dir = TempDir::new("full-cluster");
    let cluster = LocalCluster::start(
        1,
        BackendConfig {
            max_bytes: Some(50),
            data_dir: Some(dir.path().to_path_buf()),
            ..BackendConfig::default()
        },
        FrontendConfig {
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap();
    let mut client = Client::connect(&cluster.frontend_addr().to_string()).unwrap();
    client.put(b"kept", &[b'v'; 40]).unwrap();
    match client.put(b"refused", &[b'v'; 40]) {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::STORAGE_FULL);
            assert!(message.contains(&cluster.backend_addrs()[0]), "{message}");
        }
        other => panic!("expected STORAGE_FULL, got {other:?}"),
    }
    assert_eq!(client.get(b"kept").unwrap(), Some(vec![b'v'; 40]));
    assert_eq!(client.get(b"refused").unwrap(), None);
}

#[test]
fn a_full_disk_fails_the_write_and_leaves_the_log_readable() {
    let dir = TempDir::new("enospc");
    // Room for three puts and a delete, not for a fourth put.
    let budget = HEADER_LEN + 3 * (RECORD_OVERHEAD + 2 + 30) + 20;
    let full_disk = DurableOptions {
        disk_budget: Some(budget),
        ..options(FsyncPolicy::Always)
    };
    let store = DurableStore::open(dir.path(), full_disk.clone()).unwrap();
    let mut model = Model::new();
    for i in 0..3 {
        apply(
            &store,
            &mut model,
            &Op::Put(format!("k{i}").into_bytes(), vec![i; 30]),
        );
    }
    let log_before = store.log_bytes();
    let err = store.put(b"k0", &[9; 30]).unwrap_err();
    assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
    assert!(err.is_full() && err.to_string().contains(LOG_FILE), "{err}");
    assert_eq!(store.log_bytes(), log_before);
    assert_eq!(
        std::fs::metadata(dir.log()).unwrap().len(),
        log_before,
        "the part that was written is cut off"
    );
    assert_eq!(store.get(b"k0"), Some(vec![0; 30]), "the old value stays");
    // The store goes on: a delete fits and frees room.
    apply(&store, &mut model, &Op::Delete(b"k1".to_vec()));
    drop(store);
    let reopened = DurableStore::open(dir.path(), full_disk).unwrap();
    assert_eq!(reopened.recovery().dropped_bytes, 0);
    let keys: Vec<Vec<u8>> = (0..3).map(|i| format!("k{i}").into_bytes()).collect();
    assert_holds(&reopened, &model, &keys, "reopened");
}

fn frontend_over(backend: &str) -> (Server, String) {
    let frontend = Server::start(&[
        "frontend",
        "--listen",
        "127.0.0.1:0",
        "--startup-timeout",
        "5",
        backend,
    ]);
    let addr = frontend.listening("frontend");
    (frontend, addr)
}

#[test]
fn kill_9_after_acknowledged_puts_with_fsync_always_loses_none_of_them() {
    let dir = TempDir::new("kill9");
    let data_dir = dir.path().to_str().unwrap();
    let backend_args = [
        "backend",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
        "--fsync",
        "always",
    ];
    let backend = Server::start(&backend_args);
    let backend_addr = backend.listening("backend");
    let (frontend, frontend_addr) = frontend_over(&backend_addr);
    // Concurrent writers, so acknowledgements also come from shared (group) fsyncs.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let addr = frontend_addr.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                for i in 0..100 {
                    client
                        .put(
                            format!("w{t}-{i}").as_bytes(),
                            format!("value {t} {i}").as_bytes(),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    backend.kill();
    frontend.kill();

    let backend = Server::start(&backend_args);
    let backend_addr = backend.listening("backend");
    let (_frontend, frontend_addr) = frontend_over(&backend_addr);
    let mut client = Client::connect(&frontend_addr).unwrap();
    for t in 0..4 {
        for i in 0..100 {
            assert_eq!(
                client.get(format!("w{t}-{i}").as_bytes()).unwrap(),
                Some(format!("value {t} {i}").into_bytes()),
                "w{t}-{i}"
            );
        }
    }
}

#[test]
fn a_whole_cluster_restarted_over_its_data_serves_the_same_keys() {
    let dir = TempDir::new("cluster-restart");
    let args = [
        "local",
        "--backends",
        "3",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--fsync",
        "always",
    ];
    let cluster = Server::start(&args);
    let frontend = cluster.listening("frontend");
    cluster.listening("resp");
    let backends: Vec<String> = (0..3).map(|_| cluster.listening("backend")).collect();
    let mut client = Client::connect(&frontend).unwrap();
    for i in 0..300 {
        client
            .put(
                format!("key {i}").as_bytes(),
                format!("value {i}").as_bytes(),
            )
            .unwrap();
    }
    for i in (0..300).step_by(10) {
        assert!(client.delete(format!("key {i}").as_bytes()).unwrap());
    }
    drop(client);
    cluster.kill();

    let cluster = Server::start(&args);
    let frontend = cluster.listening("frontend");
    cluster.listening("resp");
    let again: Vec<String> = (0..3).map(|_| cluster.listening("backend")).collect();
    assert_eq!(again, backends, "each backend listens where it did before");
    // Restarted backends serve again once the view keeper has confirmed them: each comes back
    // in a view of its own (the first one as it is, the others copied from it).
    let mut client = Client::connect(&frontend).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // One view per look: its states and its epoch must be judged together.
    let back = |view: ringkv::View| {
        view.epoch > 1 && view.states.iter().all(|s| *s == ringkv::NodeState::Up)
    };
    while !back(client.view().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted backends never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for i in 0..300 {
        let expected = (i % 10 != 0).then(|| format!("value {i}").into_bytes());
        assert_eq!(
            client.get(format!("key {i}").as_bytes()).unwrap(),
            expected,
            "key {i}"
        );
    }
    // Only the backends' own reports: the frontend adds a total.
    let keys: u64 = client
        .size()
        .unwrap()
        .iter()
        .filter(|node| again.contains(&node.addr))
        .map(|node| {
            node.counters
                .iter()
                .find(|(name, _)| name == "keys")
                .map_or(0, |(_, n)| *n)
        })
        .sum();
    assert_eq!(keys, 270);
}

#[test]
fn a_backend_over_a_corrupt_log_stops_naming_the_file_and_offset_unless_told_to_repair() {
    let dir = TempDir::new("corrupt-process");
    let ops = history(20);
    let ends = write_log(dir.path(), &ops);
    let mut bytes = std::fs::read(dir.log()).unwrap();
    bytes[(ends[5] + 7) as usize] ^= 0x40;
    std::fs::write(dir.log(), &bytes).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let refused = run_bounded(
        Command::new(RINGKV).args(["backend", "--listen", "127.0.0.1:0", "--data-dir", data_dir]),
        b"",
        BOUND,
    );
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains(&dir.log().display().to_string())
            && refused.stderr.contains(&format!("offset {}", ends[5])),
        "{refused:?}"
    );
    let repaired = Server::start(&[
        "backend",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
        "--repair-log",
    ]);
    repaired.listening("backend");
    repaired.kill();
    assert_holds(
        &open(dir.path()),
        &model_after(&ops[..5]),
        &keys_of(&ops),
        "after repair",
    );
}

/// Options under a disk budget of `max_disk_bytes`; with `ratio` false the log is never
/// compacted for being mostly dead, so that the budget alone has to keep it small.
fn budgeted(max_disk_bytes: u64, ratio: bool) -> DurableOptions {
    DurableOptions {
        max_disk_bytes: Some(max_disk_bytes),
        compact_min_bytes: if ratio {
            DurableOptions::default().compact_min_bytes
        } else {
            u64::MAX
        },
        ..options(FsyncPolicy::Never)
    }
}

/// Bytes the log and an unfinished compaction's file take on disk now.
fn on_disk(dir: &Path) -> u64 {
    [LOG_FILE, COMPACT_FILE]
        .iter()
        .map(|name| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn overwrites_of_a_small_store_under_a_disk_budget_are_never_refused_and_stay_within_it() {
    const BUDGET: u64 = 8 << 20;
    for ratio in [true, false] {
        let dir = TempDir::new("budget-overwrites");
        let store = DurableStore::open(dir.path(), budgeted(BUDGET, ratio)).unwrap();
        let mut model = Model::new();
        let mut written = 0;
        // 200 keys of about 1 KB: some 200 KB live, overwritten with three budgets' worth.
        for i in 0..25_000u32 {
            let key = format!("key-{}", i % 200).into_bytes();
            let value = vec![(i % 251) as u8; 1_000 + (i % 50) as usize];
            written += RECORD_OVERHEAD + (key.len() + value.len()) as u64;
            store
                .put(&key, &value)
                .unwrap_or_else(|e| panic!("ratio {ratio}: put {i} was refused: {e}"));
            model.insert(key, value);
            let disk = on_disk(dir.path());
            assert!(
                disk <= BUDGET,
                "ratio {ratio}: {disk} bytes on disk after put {i}"
            );
        }
        assert!(written > 3 * BUDGET, "{written}");
        assert!(
            store.peak_disk_bytes() <= BUDGET,
            "ratio {ratio}: the log and a compaction's copy took {} bytes at their peak",
            store.peak_disk_bytes()
        );
        store.wait_for_compaction();
        let universe: Vec<Vec<u8>> = model.keys().cloned().collect();
        assert_holds(&store, &model, &universe, "in memory");
        drop(store);
        let reopened = DurableStore::open(dir.path(), budgeted(BUDGET, ratio)).unwrap();
        assert_holds(&reopened, &model, &universe, "reopened");
    }
}

#[test]
fn concurrent_overwrites_under_a_disk_budget_are_never_refused() {
    const BUDGET: u64 = 2 << 20;
    let dir = TempDir::new("budget-concurrent");
    let store = Arc::new(DurableStore::open(dir.path(), budgeted(BUDGET, false)).unwrap());
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut model = Model::new();
                for i in 0..5_000u32 {
                    let key = format!("t{t}-{}", i % 50).into_bytes();
                    let value = vec![i as u8; 500];
                    store
                        .put(&key, &value)
                        .unwrap_or_else(|e| panic!("writer {t}: put {i} was refused: {e}"));
                    model.insert(key, value);
                }
                model
            })
        })
        .collect();
    let mut model = Model::new();
    for writer in writers {
        model.extend(writer.join().unwrap());
    }
    assert!(
        store.peak_disk_bytes() <= BUDGET,
        "{}",
        store.peak_disk_bytes()
    );
    let universe: Vec<Vec<u8>> = model.keys().cloned().collect();
    assert_holds(&*store, &model, &universe, "in memory");
}

#[test]
fn a_write_that_fits_only_once_compacted_is_written_after_a_compaction() {
    const BUDGET: u64 = 64 << 10;
    let dir = TempDir::new("budget-foreground");
    let store = DurableStore::open(dir.path(), budgeted(BUDGET, false)).unwrap();
    let mut model = Model::new();
    apply(
        &store,
        &mut model,
        &Op::Put(b"big".to_vec(), vec![1; 28_000]),
    );
    let small = |round: u8| Op::Put(b"s".to_vec(), vec![round; 2_000]);
    // Each overwrite leaves a dead record; too few to compact for, until the fourth would
    // not fit beside the room kept for a compaction.
    for round in 0..3 {
        apply(&store, &mut model, &small(round));
    }
    assert_eq!(
        store.log_bytes(),
        HEADER_LEN
            + Op::Put(b"big".to_vec(), vec![1; 28_000]).log_bytes()
            + 3 * small(0).log_bytes()
    );
    apply(&store, &mut model, &small(3));
    assert_eq!(
        store.log_bytes(),
        live_log_bytes(&model) + small(3).log_bytes(),
        "compacted, then written"
    );
    drop(store);
    let reopened = DurableStore::open(dir.path(), budgeted(BUDGET, false)).unwrap();
    assert_holds(
        &reopened,
        &model,
        &[b"big".to_vec(), b"s".to_vec()],
        "reopened",
    );
}

#[test]
fn a_write_that_cannot_fit_even_after_compaction_is_refused_and_not_applied() {
    const BUDGET: u64 = 64 << 10;
    let dir = TempDir::new("budget-refused");
    let limited = DurableOptions {
        fsync: FsyncPolicy::Always,
        ..budgeted(BUDGET, false)
    };
    let store = DurableStore::open(dir.path(), limited.clone()).unwrap();
    let mut model = Model::new();
    apply(
        &store,
        &mut model,
        &Op::Put(b"big".to_vec(), vec![1; 28_000]),
    );
    apply(&store, &mut model, &Op::Put(b"s".to_vec(), vec![2; 2_000]));
    let log_before = store.log_bytes();
    // The live set would pass half the budget: no compaction can make room for these.
    for (key, value) in [(&b"new"[..], vec![3; 3_000]), (b"big", vec![4; 29_000])] {
        let err = store.put(key, &value).unwrap_err();
        assert!(
            matches!(err, StoreError::DiskBudget { limit: BUDGET, .. }),
            "{err:?}"
        );
        assert!(err.is_full() && err.to_string().contains("budget"), "{err}");
        assert_eq!(
            store.log_bytes(),
            log_before,
            "a refused write is not logged"
        );
        assert_eq!(std::fs::metadata(dir.log()).unwrap().len(), log_before);
    }
    assert_eq!(store.get(b"new"), None);
    assert_eq!(store.get(b"big"), Some(vec![1; 28_000]));
    // A delete always fits: it frees more than its tombstone takes.
    apply(&store, &mut model, &Op::Delete(b"s".to_vec()));
    drop(store);
    let reopened = DurableStore::open(dir.path(), limited).unwrap();
    assert_eq!(reopened.recovery().records, 3, "two puts and the delete");
    assert_holds(
        &reopened,
        &model,
        &[b"big".to_vec(), b"s".to_vec(), b"new".to_vec()],
        "reopened",
    );
}

/// Overwrites 20 keys of 1 KB `rounds` times, never compacting for dead records.
fn mostly_dead_log(dir: &Path, rounds: u32) -> Model {
    let store = DurableStore::open(
        dir,
        DurableOptions {
            compact_min_bytes: u64::MAX,
            ..options(FsyncPolicy::Never)
        },
    )
    .unwrap();
    let mut model = Model::new();
    for round in 0..rounds {
        for i in 0..20 {
            let op = Op::Put(format!("k{i}").into_bytes(), vec![round as u8; 1_000]);
            apply(&store, &mut model, &op);
        }
    }
    model
}

#[test]
fn reopening_a_mostly_dead_log_compacts_it_even_on_a_nearly_full_disk() {
    let dir = TempDir::new("reopen-dead");
    let model = mostly_dead_log(dir.path(), 100);
    let log = std::fs::metadata(dir.log()).unwrap().len();
    let live = live_log_bytes(&model);
    assert!(log > 50 * live, "{log} vs {live}");
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    // The probe's restart: a disk the log has filled but for a little more than the live set.
    let full = DurableOptions {
        disk_budget: Some(log + live + 4_096),
        ..options(FsyncPolicy::Never)
    };
    let reopened = DurableStore::open(dir.path(), full.clone()).unwrap();
    reopened.wait_for_compaction();
    assert_eq!(reopened.log_bytes(), live, "compacted on open");
    assert_eq!(std::fs::metadata(dir.log()).unwrap().len(), live);
    assert_holds(&reopened, &model, &keys, "compacted on open");
    // And it takes overwrites again (fewer than the room left: without a budget, a writer
    // faster than the compactor can fill a disk before the compactor frees it).
    let mut model = model;
    for round in 0..1_000u32 {
        let op = Op::Put(format!("k{}", round % 20).into_bytes(), vec![7; 1_000]);
        apply(&reopened, &mut model, &op);
    }
    drop(reopened);
    assert_holds(
        &DurableStore::open(dir.path(), full).unwrap(),
        &model,
        &keys,
        "reopened again",
    );
}

#[test]
fn a_full_disk_refuses_the_write_and_starts_a_compaction_that_frees_it() {
    // Larger than the least a log must be to be compacted for its dead records on open.
    const DISK: u64 = 2 << 20;
    let dir = TempDir::new("enospc-compact");
    // The old rule, for the overwrites to fill the disk: no compaction for dead records.
    let full_disk = DurableOptions {
        disk_budget: Some(DISK),
        compact_min_bytes: u64::MAX,
        ..options(FsyncPolicy::Never)
    };
    let store = DurableStore::open(dir.path(), full_disk.clone()).unwrap();
    let mut model = Model::new();
    let overwrite = |store: &DurableStore, model: &mut Model, round: u32| {
        let key = format!("k{}", round % 10).into_bytes();
        let value = vec![round as u8; 1_000];
        let done = store.put(&key, &value);
        if done.is_ok() {
            model.insert(key, value);
        }
        done
    };
    let mut round = 0;
    while store.log_bytes() < DISK - 20_000 {
        overwrite(&store, &mut model, round).unwrap();
        round += 1;
    }
    // A large value meets the full disk: refused, and a compaction frees the dead records.
    let err = store.put(b"large", &[9; 30_000]).unwrap_err();
    assert!(
        matches!(err, StoreError::DiskFull(_)) && err.is_full(),
        "{err:?}"
    );
    assert_eq!(store.get(b"large"), None);
    store.wait_for_compaction();
    assert_eq!(store.log_bytes(), live_log_bytes(&model), "compacted");
    apply(
        &store,
        &mut model,
        &Op::Put(b"large".to_vec(), vec![9; 30_000]),
    );

    // Filled again to the last byte, there is no room even for a copy of the live set: the
    // compaction fails and removes its partial file, which would hold what little is left.
    let err = loop {
        match overwrite(&store, &mut model, round) {
            Ok(()) => round += 1,
            Err(err) => break err,
        }
    };
    assert!(matches!(err, StoreError::DiskFull(_)), "{err:?}");
    store.wait_for_compaction();
    assert!(!dir.path().join(COMPACT_FILE).exists());
    let log = store.log_bytes();
    assert_eq!(std::fs::metadata(dir.log()).unwrap().len(), log);
    let mut keys: Vec<Vec<u8>> = (0..10).map(|i| format!("k{i}").into_bytes()).collect();
    keys.push(b"large".to_vec());
    assert_holds(&store, &model, &keys, "after the failed compaction");
    drop(store);
    // Restarted once some space is free again (here: just enough for the copy), it compacts.
    let freed = DurableOptions {
        disk_budget: Some(log + live_log_bytes(&model) + 1_000),
        compact_min_bytes: DurableOptions::default().compact_min_bytes,
        ..full_disk
    };
    let reopened = DurableStore::open(dir.path(), freed).unwrap();
    reopened.wait_for_compaction();
    assert_eq!(reopened.log_bytes(), live_log_bytes(&model));
    assert_holds(&reopened, &model, &keys, "reopened");
    overwrite(&reopened, &mut model, round).unwrap();
}

#[test]
fn a_cluster_with_a_disk_budget_keeps_accepting_overwrites_and_refuses_what_cannot_fit() {
    const BUDGET: u64 = 256 << 10;
    let dir = TempDir::new("budget-cluster");
    let budget = BUDGET.to_string();
    let cluster = Server::start(&[
        "local",
        "--backends",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--max-disk-bytes",
        &budget,
    ]);
    let frontend = cluster.listening("frontend");
    cluster.listening("resp");
    let backend = cluster.listening("backend");
    let log_dir = dir.path().join("backend-0");
    let mut client = Client::connect(&frontend).unwrap();
    // Twenty keys of 2 KB overwritten with about sixteen budgets' worth.
    for i in 0..2_000u32 {
        let value = vec![(i % 251) as u8; 2_000];
        client
            .put(format!("key {}", i % 20).as_bytes(), &value)
            .unwrap_or_else(|e| panic!("put {i} was refused: {e}"));
        let disk = on_disk(&log_dir);
        assert!(disk <= BUDGET, "{disk} bytes on disk after put {i}");
    }
    for k in 0..20u32 {
        let last = 2_000 - 20 + k;
        assert_eq!(
            client.get(format!("key {k}").as_bytes()).unwrap(),
            Some(vec![(last % 251) as u8; 2_000]),
            "key {k}"
        );
    }
    // A value over half the budget can never have room to be compacted.
    match client.put(b"too large", &vec![1; 150_000]) {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::STORAGE_FULL);
            assert!(
                message.contains(&backend) && message.contains("budget"),
                "{message}"
            );
        }
        other => panic!("expected STORAGE_FULL, got {other:?}"),
    }
    assert_eq!(client.get(b"too large").unwrap(), None);
    client.put(b"key 0", b"still accepted").unwrap();

    // A budget without a log to bound is a usage error, not silently ignored.
    let refused = run_bounded(
        Command::new(RINGKV).args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--max-disk-bytes",
            "1000",
        ]),
        b"",
        BOUND,
    );
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--data-dir"), "{refused:?}");
}
