//! A storage engine that survives restarts: the in-memory map, with every mutation written to a
//! [write-ahead log](crate::wal) first and replayed from it on open.
//!
//! A write is applied to the map and appended to the log while no other write to the same key
//! can run, so the log holds each key's writes in the order the map saw them. The write then
//! waits as the fsync policy says, so under `always` it is acknowledged only once on disk. A
//! read may see a value a moment before its fsync ends, as with Redis: the value is never
//! acknowledged to its writer before it is durable.
//!
//! The log is compacted in the background when it is at least
//! [`DurableOptions::compact_min_bytes`] long and more than half of it is dead records (the live
//! set, rewritten, would take less than half the file).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::{Engine, MemStore, StoreError, StoreSize, Unsettled};
use crate::wal::{
    self, Compaction, CrashPoint, FsyncPolicy, OpenError, Record, Recovery, Wal, WalOptions,
};

/// How to open a durable store.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    pub fsync: FsyncPolicy,
    /// Most bytes of keys plus values stored; `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Open a log that is damaged before its tail by cutting it back to its last intact record
    /// (the original is saved beside it).
    pub repair: bool,
    /// A log shorter than this is never compacted.
    pub compact_min_bytes: u64,
    #[doc(hidden)]
    pub disk_budget: Option<u64>,
    #[doc(hidden)]
    pub crash_at: Option<CrashPoint>,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            fsync: FsyncPolicy::default(),
            max_bytes: None,
            repair: false,
            compact_min_bytes: 64 << 20,
            disk_budget: None,
            crash_at: None,
        }
    }
}

struct Inner {
    mem: MemStore,
    wal: Wal,
    compact_min_bytes: u64,
    /// A background compaction has been started and not yet finished.
    compacting: AtomicBool,
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
    /// Opens the store kept in `dir` (created if missing), replaying its log.
    pub fn open(dir: impl AsRef<Path>, options: DurableOptions) -> Result<DurableStore, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let mem = MemStore::new(options.max_bytes);
        let started = std::time::Instant::now();
        let (wal, recovery) = Wal::open(
            &dir,
            WalOptions {
                fsync: options.fsync,
                repair: options.repair,
                disk_budget: options.disk_budget,
                crash_at: options.crash_at,
            },
            &mut |record| match record {
                Record::Put { key, value } => mem.load(key, value),
                Record::Delete { key } => {
                    let _ = mem.delete_logged(key, || Ok(()));
                }
            },
        )?;
        let size = mem.size();
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
        Ok(DurableStore {
            inner: Arc::new(Inner {
                mem,
                wal,
                compact_min_bytes: options.compact_min_bytes,
                compacting: AtomicBool::new(false),
            }),
            dir,
            recovery,
            compactor: Mutex::new(None),
        })
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
        self.inner.compact()
    }

    /// Waits for a background compaction, if one runs.
    pub fn wait_for_compaction(&self) {
        let running = self
            .compactor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = running {
            let _ = thread.join();
        }
    }

    /// Starts a background compaction if dead records dominate and none is running.
    fn maybe_compact(&self) {
        let inner = &self.inner;
        let log_bytes = inner.wal.len();
        if log_bytes < inner.compact_min_bytes || log_bytes < 2 * inner.live_bytes() {
            return;
        }
        if inner.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut slot = self.compactor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(finished) = slot.take() {
            let _ = finished.join();
        }
        let worker = Arc::clone(inner);
        let spawned = std::thread::Builder::new()
            .name("wal-compactor".into())
            .spawn(move || {
                match worker.compact() {
                    Ok(Some(done)) => log::info!(
                        "{}: compacted {} -> {} bytes",
                        worker.wal.path().display(),
                        done.bytes_before,
                        done.bytes_after
                    ),
                    Ok(None) => {}
                    Err(e) => log::error!(
                        "{}: compaction failed, the log stays as it was: {e}",
                        worker.wal.path().display()
                    ),
                }
                worker.compacting.store(false, Ordering::Release);
            });
        match spawned {
            Ok(thread) => *slot = Some(thread),
            Err(e) => {
                log::error!("cannot start a compaction thread: {e}");
                inner.compacting.store(false, Ordering::Release);
            }
        }
    }
}

impl Inner {
    /// Bytes the live set takes when rewritten as a log.
    fn live_bytes(&self) -> u64 {
        let size = self.mem.size();
        wal::HEADER_LEN + size.bytes + size.keys * wal::RECORD_OVERHEAD
    }

    fn compact(&self) -> io::Result<Option<Compaction>> {
        let mem = &self.mem;
        self.wal
            .compact(&mut |emit| mem.try_for_each(|key, value| emit(key, value)))
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

    fn for_each(&self, visit: &mut dyn FnMut(&[u8], &[u8])) {
        self.inner.mem.for_each(visit)
    }

    fn put_unsettled(&self, key: &[u8], value: &[u8]) -> Result<Unsettled, StoreError> {
        let wal = &self.inner.wal;
        let position = self.inner.mem.put_logged(key, value, || {
            wal.append(Record::Put { key, value })
                .map_err(|e| store_error(wal, e))
        })?;
        Ok(Unsettled(position))
    }

    fn delete_unsettled(&self, key: &[u8]) -> Result<(bool, Unsettled), StoreError> {
        let wal = &self.inner.wal;
        let logged = self.inner.mem.delete_logged(key, || {
            wal.append(Record::Delete { key })
                .map_err(|e| store_error(wal, e))
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
