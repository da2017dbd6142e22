//! A storage engine that survives restarts: the in-memory map, with every mutation written to a
//! [write-ahead log](crate::wal) first and replayed from it on open.
//!
//! A write is applied to the map and appended to the log while no other write to the same key
//! can run, so the log holds each key's writes in the order the map saw them. The write then
//! waits as the fsync policy says, so under `always` it is acknowledged only once on disk. A
//! read may see a value a moment before its fsync ends, as with Redis: the value is never
//! acknowledged to its writer before it is durable.
//!
//! # Compaction
//!
//! Compaction rewrites the live set into a new file beside the log and renames it over the log
//! ([`crate::wal`] has the steps), so while it runs the disk holds the old log *and* a copy of
//! the live set. "Live" below is what that copy takes: a header and one put record per key, which
//! for a key that expires carries its time (8 bytes more). Expired keys are copied too, with
//! their time: a node's clock can go back, and an expired key is removed by the delete its
//! head's sweep sends down the chain, so that every copy and log agree. A compaction is started
//! in the background, after a write or when the store is opened, when
//!
//! - dead records dominate: the log is at least twice the live set and at least
//!   [`DurableOptions::compact_min_bytes`] long (1 MiB by default, so a small store that is
//!   overwritten again and again is compacted too, and a restart over a mostly dead log
//!   compacts it at once); or
//! - under a disk budget of B bytes, the log plus the live set has reached 3/4 of B and at
//!   least B/8 of the log is dead (so each compaction frees a good share of the budget and
//!   compactions cannot follow each other for nothing).
//!
//! # The disk budget
//!
//! [`DurableOptions::max_disk_bytes`] (`--max-disk-bytes`) bounds the disk the log takes,
//! the copy a compaction writes included. A write is admitted only while the log, once the
//! record is appended, plus the room a compaction would need beside it, stays within the
//! budget: that room is the live set after the write, or while a compaction runs the most
//! it may still write (the live set when it began, plus twice everything appended since,
//! which it copies). So the peak, log plus copy, never passes the budget, and a compaction can
//! always run. Live data can therefore reach only about half the budget.
//!
//! A write that does not fit is not refused at once: if it would fit once the log is
//! compacted, the writer waits for the compaction that is running or runs one itself, and
//! tries once more. What still does not fit is refused with [`StoreError::DiskBudget`]
//! (STORAGE_FULL to a client) and changes nothing: neither the map nor the log.
//!
//! A delete never needs room: its tombstone is never larger than the record it ends, so it
//! does not raise the log plus the live set, and under the rule above it always fits. Such a
//! write, one that does not raise log plus live, is admitted even over the budget (when no
//! compaction runs), since a store opened under a budget lower than it was written with may
//! have no other way back under it.
//!
//! # A full disk
//!
//! Without a budget, or on a disk shared with other files, a write may meet ENOSPC. It is
//! refused with [`StoreError::DiskFull`] (STORAGE_FULL) and cut back off the log, and if dead
//! records dominate (whatever the log's length) a compaction is started at once to free the
//! disk. It needs room for the live set; if the disk has less, it fails, and its partial file
//! is removed so that it does not hold the space it was to free. Automatic compactions that
//! fail are tried again only after a pause that doubles from 1 s to at most 60 s, so that a
//! full disk is not hammered with copies that cannot finish. Only a budget guarantees the
//! room: a full disk with less free space than the live set stays full until space is freed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{Engine, MemStore, SizeChange, StoreError, StoreSize, Unsettled};
use crate::wal::{
    self, AppendError, Compaction, CrashPoint, FsyncPolicy, OpenError, Record, Recovery, Wal,
    WalOptions,
};

/// How to open a durable store.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    pub fsync: FsyncPolicy,
    /// Most bytes of keys plus values stored; `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Most bytes the log may take on disk, the room kept to compact it included (see the
    /// module doc); `None`: only the disk's size limits it.
    pub max_disk_bytes: Option<u64>,
    /// Open a log that is damaged before its tail by cutting it back to its last intact record
    /// (the original is saved beside it).
    pub repair: bool,
    /// A log shorter than this is not compacted for being mostly dead (a disk budget or a
    /// full disk may still have it compacted).
    pub compact_min_bytes: u64,
    #[doc(hidden)]
    pub disk_budget: Option<u64>,
    #[doc(hidden)]
    pub crash_at: Option<CrashPoint>,
}

/// The default of [`DurableOptions::compact_min_bytes`].
pub const COMPACT_MIN_BYTES: u64 = 1 << 20;

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            fsync: FsyncPolicy::default(),
            max_bytes: None,
            max_disk_bytes: None,
            repair: false,
            compact_min_bytes: COMPACT_MIN_BYTES,
            disk_budget: None,
            crash_at: None,
        }
    }
}

/// The first pause before an automatic compaction that failed is tried again; it doubles with
/// each failure in a row, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// When the next automatic compaction may be tried, after failures.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn allows(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    fn failed(&mut self, now: Instant) {
        let wait = RETRY_FIRST
            .saturating_mul(1 << self.failures.min(6))
            .min(RETRY_MAX);
        self.failures += 1;
        self.retry_at = Some(now + wait);
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

/// Why a background compaction was started, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    DeadDominates,
    NearBudget,
    DiskFull,
}

impl Trigger {
    fn describe(self) -> &'static str {
        match self {
            Trigger::DeadDominates => "dead records dominate",
            Trigger::NearBudget => "the log nears its disk budget",
            Trigger::DiskFull => "the disk is full",
        }
    }
}

struct Inner {
    mem: MemStore,
    wal: Wal,
    compact_min_bytes: u64,
    max_disk_bytes: Option<u64>,
    /// A background compaction has been started and not yet finished.
    compacting: AtomicBool,
    /// Held while a compaction runs, so that a writer short of room can wait for it; says when
    /// an automatic one may be tried again.
    gate: Mutex<Backoff>,
    /// Compactions run (finished or failed) since open: a writer that finds this moved on
    /// since it was refused need not compact again.
    compactions: AtomicU64,
}

/// A poisoned lock only means another thread panicked while holding it; the backoff it guards
/// is updated in single steps.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An [`Engine`] whose writes are logged to a directory and replayed from it on open.
pub struct DurableStore {
    inner: Arc<Inner>,
    dir: PathBuf,
    recovery: Recovery,
    compactor: Mutex<Option<JoinHandle<()>>>,
}

fn store_error(wal: &Wal, e: io::Error) -> StoreError {
    let message = format!("{}: {e}", wal.path().display());
    if wal::is_disk_full(&e) {
        StoreError::DiskFull(message)
    } else {
        StoreError::Io(message)
    }
}

impl DurableStore {
    /// Opens the store kept in `dir` (created if missing), replaying its log. A log that
    /// calls for compaction (mostly dead, or near its budget) is compacted in the background
    /// at once.
    pub fn open(dir: impl AsRef<Path>, options: DurableOptions) -> Result<DurableStore, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let mem = MemStore::new(options.max_bytes);
        let started = Instant::now();
        let (wal, recovery) = Wal::open(
            &dir,
            WalOptions {
                fsync: options.fsync,
                repair: options.repair,
                max_disk_bytes: options.max_disk_bytes,
                disk_budget: options.disk_budget,
                crash_at: options.crash_at,
            },
            &mut |record| match record {
                Record::Put {
                    key,
                    value,
                    expires_at,
                } => mem.load(key, value, expires_at),
                Record::Delete { key } => {
                    let _ = mem.delete_logged(key, |_| Ok(()));
                }
            },
        )?;
        let size = mem.size();
        wal.set_live_bytes(live_log_bytes(size, mem.expiring_keys()));
        log::info!(
            "{}: replayed {} records in {:.2?}: {} keys, {} bytes of keys and values{}",
            wal.path().display(),
            recovery.records,
            started.elapsed(),
            size.keys,
            size.bytes,
            match recovery.dropped_bytes {
                0 => String::new(),
                n => format!("; {n} bytes dropped from the end"),
            }
        );
        if let Some(limit) = options.max_bytes {
            if size.bytes > limit {
                log::warn!(
                    "{}: holds {} bytes, over the limit of {limit}: only deletes and shrinking \
                     writes will be accepted",
                    dir.display(),
                    size.bytes
                );
            }
        }
        if let Some(limit) = options.max_disk_bytes {
            let (log, live) = wal.len_and_live();
            if log + live > limit {
                log::warn!(
                    "{}: the log ({log} bytes) and the room to compact it ({live} bytes) are \
                     over the disk budget of {limit} bytes: until compaction brings them under \
                     it, only deletes and shrinking writes will be accepted",
                    dir.display()
                );
            }
        }
        let store = DurableStore {
            inner: Arc::new(Inner {
                mem,
                wal,
                compact_min_bytes: options.compact_min_bytes,
                max_disk_bytes: options.max_disk_bytes,
                compacting: AtomicBool::new(false),
                gate: Mutex::new(Backoff::default()),
                compactions: AtomicU64::new(0),
            }),
            dir,
            recovery,
            compactor: Mutex::new(None),
        };
        store.maybe_compact();
        Ok(store)
    }

    /// What opening found: records replayed, bytes dropped, copies saved of damaged bytes.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's length in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.inner.wal.len()
    }

    /// Bytes the live set takes rewritten as a log: what a compaction writes.
    pub fn live_log_bytes(&self) -> u64 {
        self.inner.wal.len_and_live().1
    }

    /// The most the log and a compaction's file have taken on disk together since open.
    pub fn peak_disk_bytes(&self) -> u64 {
        self.inner.wal.peak_disk_bytes()
    }

    /// Fsyncs of the log since it was opened.
    pub fn fsyncs(&self) -> u64 {
        self.inner.wal.fsyncs()
    }

    /// Forces every write so far to disk, whatever the policy.
    pub fn sync(&self) -> Result<(), StoreError> {
        let wal = &self.inner.wal;
        wal.sync().map_err(|e| store_error(wal, e))
    }

    /// Compacts the log now, in this thread; `None` if a compaction is already running.
    pub fn compact(&self) -> io::Result<Option<Compaction>> {
        let mut backoff = match self.inner.gate.try_lock() {
            Ok(backoff) => backoff,
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        self.inner.compact(&mut backoff)
    }

    /// Waits for a background compaction, if one runs.
    pub fn wait_for_compaction(&self) {
        let running = lock(&self.compactor).take();
        if let Some(thread) = running {
            let _ = thread.join();
        }
    }

    /// Starts a background compaction if the log calls for one (see the module doc).
    fn maybe_compact(&self) {
        if let Some(trigger) = self.inner.wanted() {
            self.start_compaction(trigger);
        }
    }

    /// After ENOSPC: frees the disk if dead records dominate, however short the log.
    fn after_disk_full(&self) {
        let (log, live) = self.inner.wal.len_and_live();
        if log >= 2 * live && self.start_compaction(Trigger::DiskFull) {
            log::warn!(
                "{}: the disk is full; compacting the log ({log} bytes, {live} of them live)",
                self.inner.wal.path().display()
            );
        }
    }

    /// Starts a background compaction unless one runs or a failed one is still pausing;
    /// true if started.
    fn start_compaction(&self, trigger: Trigger) -> bool {
        let inner = &self.inner;
        // A held gate means a compaction is running: nothing to start.
        let allowed = match inner.gate.try_lock() {
            Ok(backoff) => backoff.allows(Instant::now()),
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Poisoned(p)) => p.into_inner().allows(Instant::now()),
        };
        if !allowed || inner.compacting.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut slot = lock(&self.compactor);
        if let Some(finished) = slot.take() {
            let _ = finished.join();
        }
        let worker = Arc::clone(inner);
        let spawned = std::thread::Builder::new()
            .name("wal-compactor".into())
            .spawn(move || {
                worker.compact_in_background(trigger);
                worker.compacting.store(false, Ordering::Release);
            });
        match spawned {
            Ok(thread) => {
                *slot = Some(thread);
                true
            }
            Err(e) => {
                log::error!("cannot start a compaction thread: {e}");
                inner.compacting.store(false, Ordering::Release);
                false
            }
        }
    }

    /// Makes room for a write refused by the disk budget that would fit once compacted: waits
    /// for the running compaction, or runs one unless another ran since the write was refused
    /// (`seen`: the count of compactions before it was tried). True if it is worth trying the
    /// write again.
    fn make_room(&self, seen: u64) -> bool {
        let inner = &self.inner;
        let mut backoff = lock(&inner.gate);
        if inner.compactions.load(Ordering::Acquire) != seen {
            return true;
        }
        if !backoff.allows(Instant::now()) {
            return false;
        }
        match inner.compact(&mut backoff) {
            Ok(done) => {
                if let Some(done) = done {
                    log::debug!(
                        "{}: compacted {} -> {} bytes to make room for a write",
                        inner.wal.path().display(),
                        done.bytes_before,
                        done.bytes_after
                    );
                }
                true
            }
            Err(e) => {
                log::error!(
                    "{}: compaction failed, the log stays as it was: {e}",
                    inner.wal.path().display()
                );
                false
            }
        }
    }

    /// Runs `attempt` (a write; it sets its argument when the disk budget refused it but a
    /// compaction would make room) and, while compacting would help, compacts and runs it
    /// again, a few times at most. A full disk starts a compaction in the background.
    fn write<T>(
        &self,
        mut attempt: impl FnMut(&mut bool) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // More than one round only when the compaction waited for was not the last to start
        // (another began before the write was tried again): the reserve a running compaction
        // keeps can refuse what fits once it is done.
        const ROUNDS: usize = 3;
        let mut round = 1;
        let result = loop {
            let seen = self.inner.compactions.load(Ordering::Acquire);
            let mut compactable = false;
            match attempt(&mut compactable) {
                Err(StoreError::DiskBudget { .. })
                    if compactable && round < ROUNDS && self.make_room(seen) =>
                {
                    round += 1;
                }
                other => break other,
            }
        };
        if let Err(StoreError::DiskFull(_)) = &result {
            self.after_disk_full();
        }
        result
    }
}

/// Bytes a live set of `size`, `expiring` of whose keys have an expiry time, takes rewritten as
/// a log.
fn live_log_bytes(size: StoreSize, expiring: u64) -> u64 {
    wal::HEADER_LEN + size.bytes + size.keys * wal::RECORD_OVERHEAD + expiring * wal::EXPIRY_LEN
}

impl Inner {
    /// Why the log should be compacted now, if it should (see the module doc).
    fn wanted(&self) -> Option<Trigger> {
        let (log, live) = self.wal.len_and_live();
        if log >= 2 * live && log >= self.compact_min_bytes {
            return Some(Trigger::DeadDominates);
        }
        let limit = self.max_disk_bytes?;
        (log + live >= limit - limit / 4 && log.saturating_sub(live) >= limit / 8)
            .then_some(Trigger::NearBudget)
    }

    /// Compacts now; the caller holds the gate, whose `backoff` this updates.
    fn compact(&self, backoff: &mut Backoff) -> io::Result<Option<Compaction>> {
        let mem = &self.mem;
        // Expired keys are written too, with their time (see the module doc).
        let result = self.wal.compact(&mut |emit| mem.try_for_each(emit));
        self.compactions.fetch_add(1, Ordering::AcqRel);
        match &result {
            Ok(Some(_)) => backoff.succeeded(),
            Ok(None) => {}
            Err(_) => backoff.failed(Instant::now()),
        }
        result
    }

    fn compact_in_background(&self, trigger: Trigger) {
        let mut backoff = lock(&self.gate);
        // A writer short of room may have compacted while this thread waited for the gate.
        let still = match trigger {
            Trigger::DiskFull => {
                let (log, live) = self.wal.len_and_live();
                log >= 2 * live
            }
            _ => self.wanted().is_some(),
        };
        if !still || !backoff.allows(Instant::now()) {
            return;
        }
        let path = self.wal.path().display();
        match self.compact(&mut backoff) {
            Ok(Some(done)) if trigger == Trigger::DiskFull => log::info!(
                "{path}: compacted {} -> {} bytes ({})",
                done.bytes_before,
                done.bytes_after,
                trigger.describe()
            ),
            Ok(Some(done)) => log::debug!(
                "{path}: compacted {} -> {} bytes ({})",
                done.bytes_before,
                done.bytes_after,
                trigger.describe()
            ),
            Ok(None) => {}
            Err(e) => log::error!(
                "{path}: compaction ({}) failed, the log stays as it was: {e}",
                trigger.describe()
            ),
        }
    }

    /// Appends `record` for a write that changes the store by `change`; sets `compactable` if
    /// the disk budget refused it but a compaction would make room.
    fn append(
        &self,
        record: Record<'_>,
        change: SizeChange,
        compactable: &mut bool,
    ) -> Result<u64, StoreError> {
        let live_change = change.keys * wal::RECORD_OVERHEAD as i64
            + change.bytes
            + change.expiring * wal::EXPIRY_LEN as i64;
        self.wal.append(record, live_change).map_err(|e| match e {
            AppendError::OverBudget {
                needed,
                limit,
                fits_once_compacted,
            } => {
                *compactable = fits_once_compacted;
                StoreError::DiskBudget { needed, limit }
            }
            AppendError::Io(e) => store_error(&self.wal, e),
        })
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        // The compactor must finish before the directory can be opened again.
        self.wait_for_compaction();
    }
}

impl Engine for DurableStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.mem.get(key)
    }

    fn get_expiring(&self, key: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
        self.inner.mem.get_expiring(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let writes = self.put_unsettled(key, value)?;
        self.settle(writes)
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        let (found, writes) = self.delete_unsettled(key)?;
        self.settle(writes)?;
        Ok(found)
    }

    fn size(&self) -> StoreSize {
        self.inner.mem.size()
    }

    fn for_each(&self, visit: &mut crate::store::EntryVisitor<'_>) {
        self.inner.mem.for_each(visit)
    }

    fn expiring_keys(&self) -> u64 {
        self.inner.mem.expiring_keys()
    }

    fn parts(&self) -> usize {
        self.inner.mem.parts()
    }

    fn for_each_key_in(&self, part: usize, visit: &mut dyn FnMut(&[u8], Option<u64>)) {
        self.inner.mem.for_each_key_in(part, visit)
    }

    fn put_unsettled(&self, key: &[u8], value: &[u8]) -> Result<Unsettled, StoreError> {
        self.put_expiring_unsettled(key, value, None)
    }

    fn put_expiring_unsettled(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
    ) -> Result<Unsettled, StoreError> {
        let inner = &*self.inner;
        let record = Record::Put {
            key,
            value,
            expires_at,
        };
        self.write(|compactable| {
            inner.mem.put_logged(key, value, expires_at, |change| {
                inner.append(record, change, compactable)
            })
        })
        .map(Unsettled)
    }

    fn delete_unsettled(&self, key: &[u8]) -> Result<(bool, Unsettled), StoreError> {
        let inner = &*self.inner;
        let logged = self.write(|compactable| {
            inner.mem.delete_logged(key, |change| {
                inner.append(Record::Delete { key }, change, compactable)
            })
        })?;
        Ok(match logged {
            Some(position) => (true, Unsettled(position)),
            None => (false, Unsettled::NONE),
        })
    }

    fn settle(&self, writes: Unsettled) -> Result<(), StoreError> {
        if writes == Unsettled::NONE {
            return Ok(());
        }
        let wal = &self.inner.wal;
        wal.commit(writes.0).map_err(|e| store_error(wal, e))?;
        self.maybe_compact();
        Ok(())
    }

    fn damaged_records(&self) -> u64 {
        u64::from(self.recovery.damaged_last_record.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_compaction_pauses_the_next_automatic_one_doubling_up_to_a_minute() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        assert!(backoff.allows(start));
        let mut waits = Vec::new();
        for _ in 0..9 {
            backoff.failed(start);
            let at = backoff.retry_at.unwrap();
            assert!(!backoff.allows(at - Duration::from_millis(1)));
            assert!(backoff.allows(at));
            waits.push((at - start).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        backoff.succeeded();
        assert!(backoff.allows(start));
        backoff.failed(start);
        assert_eq!(backoff.retry_at, Some(start + RETRY_FIRST));
    }

    /// A directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "ringkv-durable-{}-{}-{name}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &TempDir) -> DurableStore {
        DurableStore::open(&dir.0, DurableOptions::default()).unwrap()
    }

    fn put_expiring(store: &DurableStore, key: &[u8], value: &[u8], at: Option<u64>) {
        let writes = store.put_expiring_unsettled(key, value, at).unwrap();
        store.settle(writes).unwrap();
    }

    /// Every key of `store`, when it expires (expired or not) and its value, sorted.
    fn contents(store: &DurableStore) -> Vec<(Vec<u8>, Option<u64>, Vec<u8>)> {
        let mut all = Vec::new();
        store
            .inner
            .mem
            .try_for_each(|key, at, value| {
                all.push((key.to_vec(), at, value.to_vec()));
                Ok::<(), ()>(())
            })
            .unwrap();
        all.sort();
        all
    }

    /// Asserts that the live set the log counts is what a compaction of `store` writes, and
    /// leaves the log compacted.
    fn assert_live_is_what_compaction_writes(store: &DurableStore, what: &str) {
        let live = store.live_log_bytes();
        let mem = &store.inner.mem;
        assert_eq!(
            live,
            live_log_bytes(mem.size(), mem.expiring_keys()),
            "{what}"
        );
        let done = store.compact().unwrap().expect("no other compaction runs");
        assert_eq!(done.bytes_after, live, "{what}: what the compaction wrote");
        assert_eq!(store.log_bytes(), live, "{what}: the compacted log");
        assert_eq!(store.live_log_bytes(), live, "{what}: after compacting");
    }

    #[test]
    fn the_live_set_the_log_counts_follows_every_kind_of_write() {
        let dir = TempDir::new("live");
        let store = open(&dir);
        let now = crate::expiry::now_ms();
        let (soon, later) = (Some(now + 60_000), Some(now + 120_000));
        assert_live_is_what_compaction_writes(&store, "empty");
        store.put(b"a", b"one").unwrap();
        store.put(b"b", &[1; 100]).unwrap();
        assert_live_is_what_compaction_writes(&store, "puts");
        store.put(b"a", b"a longer value").unwrap();
        store.put(b"b", b"").unwrap();
        assert_live_is_what_compaction_writes(&store, "overwrites");
        // A key that gains an expiry time, a new expiring key, one that keeps expiring at
        // another time, one that loses its time, one that gains it with a shorter value.
        put_expiring(&store, b"a", b"one", soon);
        put_expiring(&store, b"c", &[2; 40], soon);
        assert_live_is_what_compaction_writes(&store, "expiring puts");
        put_expiring(&store, b"a", b"a longer value", later);
        store.put(b"c", b"kept").unwrap();
        put_expiring(&store, b"b", b"x", later);
        assert_live_is_what_compaction_writes(&store, "overwrites switching kind");
        // An expired key is still in the live set until it is deleted.
        put_expiring(&store, b"d", b"gone", Some(now - 1));
        assert_eq!(store.get(b"d"), None);
        assert_live_is_what_compaction_writes(&store, "an expired key");
        assert!(store.delete(b"a").unwrap());
        assert!(store.delete(b"c").unwrap());
        assert!(!store.delete(b"a").unwrap());
        assert_live_is_what_compaction_writes(&store, "deletes");
        // Uncompacted records over the compacted log, counted again from scratch on open.
        put_expiring(&store, b"e", b"five", soon);
        store.put(b"b", b"plain again").unwrap();
        let before = contents(&store);
        drop(store);
        let reopened = open(&dir);
        assert_eq!(contents(&reopened), before);
        assert_eq!(reopened.inner.mem.expiring_keys(), 2);
        assert_live_is_what_compaction_writes(&reopened, "reopened");
        drop(reopened);
        let compacted = open(&dir);
        assert_eq!(contents(&compacted), before);
        assert_live_is_what_compaction_writes(&compacted, "reopened after compaction");
    }

    #[test]
    fn an_expiry_time_survives_reopen_and_compaction_and_an_expired_key_stays_expired() {
        let dir = TempDir::new("expiry");
        let now = crate::expiry::now_ms();
        let at = now + 3_600_000;
        let store = open(&dir);
        put_expiring(&store, b"later", b"value", Some(at));
        put_expiring(&store, b"gone", b"old", Some(now - 1));
        store.put(b"kept", b"for ever").unwrap();
        let expect = |store: &DurableStore, what: &str| {
            assert_eq!(
                store.get_expiring(b"later"),
                Some((b"value".to_vec(), Some(at))),
                "{what}"
            );
            assert_eq!(
                store.get_expiring(b"kept"),
                Some((b"for ever".to_vec(), None)),
                "{what}"
            );
            assert_eq!(store.get(b"gone"), None, "{what}");
            assert_eq!(store.get_expiring(b"gone"), None, "{what}");
            // Kept, with its time, until a delete removes it.
            assert_eq!(
                contents(store),
                [
                    (b"gone".to_vec(), Some(now - 1), b"old".to_vec()),
                    (b"kept".to_vec(), None, b"for ever".to_vec()),
                    (b"later".to_vec(), Some(at), b"value".to_vec()),
                ],
                "{what}"
            );
        };
        expect(&store, "written");
        drop(store);
        let reopened = open(&dir);
        expect(&reopened, "reopened");
        reopened
            .compact()
            .unwrap()
            .expect("no other compaction runs");
        expect(&reopened, "compacted");
        drop(reopened);
        let compacted = open(&dir);
        assert_eq!(compacted.recovery().records, 3);
        expect(&compacted, "reopened after compaction");
        // A plain put makes the key persistent, and the log says so.
        compacted.put(b"later", b"value").unwrap();
        drop(compacted);
        let persistent = open(&dir);
        assert_eq!(
            persistent.get_expiring(b"later"),
            Some((b"value".to_vec(), None))
        );
    }
}
