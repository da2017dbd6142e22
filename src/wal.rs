//! The write-ahead log that makes a backend durable: its file format, the writer with its three
//! fsync policies, recovery, and compaction.
//!
//! # Format
//!
//! A log is one file, `wal.log`, in the backend's data directory. It starts with a 16-byte
//! header: the magic `RINGKVWL`, the format version (u32, little-endian) and four reserved zero
//! bytes. A version newer than [`FORMAT_VERSION`] is refused: its records may mean something this
//! build does not know.
//!
//! Then come records, each self-checking:
//!
//! ```text
//! len: u32 LE | type: u8 | key_len: u32 LE | key | [expires_at: u64 LE] | value | crc: u32 LE
//!               \__________________________ body: len bytes ____________________/
//! ```
//!
//! The types:
//!
//! - 1, put: the key's value, which never expires.
//! - 2, delete: no value.
//! - 3, put expiring: the key's value, and right after the key the time it expires, in Unix
//!   milliseconds (u64, little-endian): body = type, key_len, key, expires_at, value. Its body is
//!   at least 1 + 4 + key_len + 8 bytes; a shorter one fails its checks like any bad record.
//!
//! The CRC-32 covers the length field and the body, so a damaged length is caught as surely as a
//! damaged key or value. A record costs [`RECORD_OVERHEAD`] bytes beyond its key and value, and
//! a put expiring [`EXPIRY_LEN`] more: `RECORD_OVERHEAD + 8`.
//!
//! Version 1 knew types 1 and 2 only; version 2 added type 3. A build that reads only version 1
//! refuses a version-2 log, so it cannot replay a put expiring as unknown or drop its time. A
//! version-1 log is still read: on open, before any record is appended to it, its header's
//! version field is rewritten to 2 in place and fsynced. Compaction and new logs write version 2.
//!
//! # Writing and fsync policies
//!
//! Every mutation is appended with one `write` under the log's lock, straight to the file (there
//! is no buffer in the process, so a killed process loses nothing the kernel has). Then:
//!
//! - [`FsyncPolicy::Always`]: the writer returns only once an fsync has covered its record. Group
//!   commit: a writer that finds no fsync in progress becomes the syncer and fsyncs everything
//!   appended so far; writers that arrive meanwhile wait, and the next fsync covers them all, so
//!   N concurrent writers share one fsync instead of queueing for N.
//! - [`FsyncPolicy::EverySec`]: a background thread fsyncs once a second if anything was
//!   appended; an operating-system crash or power loss may lose about the last second.
//! - [`FsyncPolicy::Never`]: the operating system writes back when it likes (typically within
//!   30 s on Linux).
//!
//! A write that fails (a full disk, ENOSPC) is cut back off the file, so the log ends with whole
//! records and stays readable; if even that fails, or an fsync fails, the log refuses every later
//! write, since after a failed fsync the kernel's view of what is on disk can no longer be trusted.
//!
//! # Recovery
//!
//! On open the records are replayed in order. The first record that fails its checks (too short,
//! a length out of range, a bad CRC, a bad type or key length, a put expiring with no room for
//! its time) at offset X is judged by what follows it:
//!
//! - no whole valid record starts anywhere after X: this is a torn tail, what a crash in the
//!   middle of an append leaves (a partial record, or zeros or stale bytes where the file grew but
//!   the data never reached the disk). The file is cut back to X, fsynced, and the bytes dropped
//!   are logged. Such records were never acknowledged under `always`. The record at X is then
//!   judged once more:
//!   - partial (fewer than 4 bytes left, a length out of range, or fewer bytes left than its
//!     length says): the ordinary crash mid-append; the cut is logged as a warning.
//!   - complete (its length in range and all its bytes present) but failing its CRC, type or key
//!     length check: a torn write and a damaged disk look the same here, and the second may have
//!     hit an acknowledged write. It is still the end of the log and still cut, as databases do,
//!     but first the bytes from X on are saved beside the log as `wal.log.damaged-X` (fsynced,
//!     with the directory; an existing copy is not overwritten, the new one is numbered
//!     `.2`, `.3`, ...), the cut is logged as an error naming the file, X, the reason and the
//!     copy, and [`Recovery::damaged_last_record`] holds the copy's path. A damaged length field
//!     can make a whole record look partial; that case stays a warning.
//! - a valid record starts after X: records were written after the damaged one, so the damage is
//!   not a crash mid-append but corruption of data that was once whole. Opening stops with an
//!   error naming the file and X, unless `repair` is set; then the original is kept beside the log
//!   as `wal.log.corrupt-X` and the log is cut back to X, keeping the longest prefix of history
//!   that is intact (skipping only the bad record instead would replay a state that never
//!   existed).
//!
//! The rule errs on the side of stopping: a crash that persisted a later page of a multi-record
//! append but not an earlier one also has a valid record after the damage, and needs `repair`.
//!
//! # Compaction
//!
//! When dead records dominate, the live set is rewritten (see [`Wal::compact`]):
//!
//! 1. note the current end P of the log; write a put record for every live key into
//!    `wal.log.compact` (a put expiring for a key with an expiry time, even one already past:
//!    a clock can go back, and expired keys are removed by deletes that go down their chain).
//!    Writes go on meanwhile, so this snapshot is fuzzy: each key holds its value at P or a
//!    later one.
//! 2. copy the log's bytes from P on to the new file (catch-up), fsync it, and catch up again.
//!    Replaying, in order, every record written after P over a fuzzy snapshot gives each key the
//!    value of its last record, the same as replaying the whole old log, so nothing is lost or
//!    resurrected.
//! 3. handover, under the log's lock so that no write slips between: copy the last few records,
//!    fsync, rename the new file over `wal.log`, fsync the directory, and append from then on to
//!    the new file.
//!
//! A crash at any point leaves either the old log whole (the temporary file is deleted on the
//! next open) or the new one whole (it was fsynced before the rename). A compaction that fails
//! (ENOSPC, say) deletes its file at once, so that it does not hold the space it was to free.
//!
//! When to compact is the store's choice ([`crate::durable`] has its rule).
//!
//! # The disk budget
//!
//! While a compaction runs the disk holds the old log and the new file, so the peak is the log
//! plus a copy of the live set (plus the records the catch-up copies). The log keeps count of
//! what its live set takes rewritten, one put per key, [`EXPIRY_LEN`] more for a key that
//! expires (each append says by how much it changes it), and under
//! [`WalOptions::max_disk_bytes`] it admits a record only if, once the record is written,
//!
//! ```text
//! log + reserve <= budget, where reserve is
//!     live set after the record                          (no compaction running)
//!     live set at the compaction's start + 2 * (log - P)  (a compaction from P running)
//! ```
//!
//! The second form bounds what the running compaction may still write: its fuzzy snapshot
//! holds at most the live set at P plus every put since, and it copies every record since P.
//! So the peak stays within the budget and a compaction always has room. A record that does
//! not raise log plus live set (a delete, or a put that shrinks its key's record by at least the
//! new record's size) is admitted even over the budget when no compaction runs: it leaves
//! compaction as much room as before. A refused record is not written at all
//! ([`AppendError::OverBudget`], which says whether it would fit once the log is compacted).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The first bytes of every log.
pub const MAGIC: &[u8; 8] = b"RINGKVWL";
/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes of the file header.
pub const HEADER_LEN: u64 = 16;
/// Bytes a record costs beyond its key and value: length, type, key length, CRC.
pub const RECORD_OVERHEAD: u64 = 4 + 1 + 4 + 4;
/// Bytes a put expiring (type 3) costs beyond [`RECORD_OVERHEAD`]: its expiry time.
pub const EXPIRY_LEN: u64 = 8;
/// The log's file name inside the data directory.
pub const LOG_FILE: &str = "wal.log";
/// The file a compaction writes before it is renamed over the log.
pub const COMPACT_FILE: &str = "wal.log.compact";

const TYPE_PUT: u8 = 1;
const TYPE_DELETE: u8 = 2;
const TYPE_PUT_EXPIRING: u8 = 3;
/// The oldest format version this build reads (and upgrades on open).
const OLDEST_FORMAT_VERSION: u32 = 1;
/// Where the header keeps the format version.
const VERSION_OFFSET: u64 = 8;
/// The smallest body: type and key length.
const MIN_BODY: u32 = 1 + 4;
/// A body longer than this is taken as a damaged length rather than a record.
const MAX_BODY: u32 = 1 << 30;
/// Catch-up rounds stop once less than this is left to copy under the lock.
const HANDOVER_BYTES: u64 = 64 * 1024;
/// Linux and macOS both number ENOSPC 28.
const ENOSPC: i32 = 28;

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Before each write is acknowledged (concurrent writers share an fsync).
    Always,
    /// Once a second, in the background.
    #[default]
    EverySec,
    /// When the operating system decides.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy {other:?}: expected always, everysec or never"
            )),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::Never => "never",
        })
    }
}

/// Points in a compaction where a test can make it stop as if the process had died there.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The live set is written to the temporary file, nothing fsynced.
    AfterSnapshot,
    /// The temporary file is caught up and fsynced once.
    AfterCatchUp,
    /// The temporary file is complete and fsynced, not yet renamed.
    AfterTempSync,
    /// The rename is done, the directory not yet fsynced, appends still go to the old file.
    AfterRename,
}

impl CrashPoint {
    /// Every crash point, in the order a compaction reaches them.
    pub const ALL: [CrashPoint; 4] = [
        CrashPoint::AfterSnapshot,
        CrashPoint::AfterCatchUp,
        CrashPoint::AfterTempSync,
        CrashPoint::AfterRename,
    ];
}

/// How to open a log.
#[derive(Debug, Clone, Default)]
pub struct WalOptions {
    pub fsync: FsyncPolicy,
    /// Cut the log back to its last intact record even when the damage is not a torn tail.
    pub repair: bool,
    /// Most bytes the log may take on disk with the room kept to compact it; see
    /// [the module doc](self#the-disk-budget). `None`: only the disk's size limits it.
    pub max_disk_bytes: Option<u64>,
    /// Tests only: a disk of this many bytes holding the log and the compaction's file and
    /// nothing else; a write that does not fit is written in part and fails with ENOSPC, as on
    /// a full disk.
    #[doc(hidden)]
    pub disk_budget: Option<u64>,
    /// Tests only: compaction stops at this point and the log refuses further writes.
    #[doc(hidden)]
    pub crash_at: Option<CrashPoint>,
}

/// One mutation, as appended to the log and replayed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// `key` holds `value`, until `expires_at` (Unix milliseconds) if that is set: a put
    /// (type 1) without it, a put expiring (type 3) with it.
    Put {
        key: &'a [u8],
        value: &'a [u8],
        expires_at: Option<u64>,
    },
    Delete {
        key: &'a [u8],
    },
}

/// Why a log could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Reading, writing or creating `path` failed.
    Io { path: PathBuf, source: io::Error },
    /// `path` does not start with a ringkv log header.
    NotALog { path: PathBuf },
    /// `path` was written by a newer format version.
    NewerVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Records after `offset` follow damaged bytes: not a torn tail.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            OpenError::NotALog { path } => {
                write!(f, "{} is not a ringkv log (bad header)", path.display())
            }
            OpenError::NewerVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} was written by log format version {found}; this build reads up to \
                 version {supported}",
                path.display()
            ),
            OpenError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{} is corrupt at byte offset {offset} ({reason}) and valid records follow, so \
                 this is not a torn tail; start with the repair flag to keep the records before \
                 offset {offset} (the original is saved beside it)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What opening a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whole records replayed.
    pub records: u64,
    /// Bytes cut off the end (a torn tail, or everything from the damage on under repair).
    pub dropped_bytes: u64,
    /// Where the damaged original was saved, when repair cut it.
    pub saved_corrupt: Option<PathBuf>,
    /// Where the bytes were saved when the last record was whole (its length in range, all its
    /// bytes present) but failed its checks: cut off like a torn tail, but kept and logged as
    /// an error, since it may be a damaged disk rather than a crash mid-append.
    pub damaged_last_record: Option<PathBuf>,
    /// The log's length once opened.
    pub log_bytes: u64,
    /// A compaction's temporary file was left by a crash and deleted.
    pub removed_partial_compaction: bool,
    /// The log was written in this older format version, and its header now says
    /// [`FORMAT_VERSION`].
    pub upgraded_from: Option<u32>,
}

/// What [`Wal::compact`] calls with an `emit` to hand it the live set:
/// `emit(key, expires_at, value)` once per live key.
pub type LiveSet<'a> =
    dyn FnMut(&mut dyn FnMut(&[u8], Option<u64>, &[u8]) -> io::Result<()>) -> io::Result<()> + 'a;

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Why [`Wal::append`] wrote nothing, or failed part way (the part is cut off again).
#[derive(Debug)]
pub enum AppendError {
    /// The record does not fit in the disk budget: the log and the room kept to compact it
    /// would take `needed` bytes of the `limit`. `fits_once_compacted`: it would fit after a
    /// compaction, so one is worth running before asking again.
    OverBudget {
        needed: u64,
        limit: u64,
        fits_once_compacted: bool,
    },
    /// Writing failed (ENOSPC among others), or the log refuses writes after an earlier failure.
    Io(io::Error),
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::OverBudget { needed, limit, .. } => write!(
                f,
                "the log would need {needed} bytes on disk, room to compact it included, over \
                 its budget of {limit}"
            ),
            AppendError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppendError::OverBudget { .. } => None,
            AppendError::Io(e) => Some(e),
        }
    }
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> AppendError {
        AppendError::Io(e)
    }
}

/// Where a running compaction began, which fixes how much disk it may still take.
#[derive(Debug, Clone, Copy)]
struct CompactionStart {
    /// The log's length when the live set was taken: every record after it is copied.
    from: u64,
    /// What the live set took rewritten then.
    live: u64,
}

struct LogState {
    file: Arc<File>,
    /// Length of the current file: every byte below it belongs to a whole record.
    file_len: u64,
    /// Bytes the live set takes rewritten as a log (header included), kept in step with the
    /// records appended: what a compaction would write.
    live: u64,
    /// The compaction that is running, if one is.
    compaction: Option<CompactionStart>,
    /// Bytes appended since open, across compactions: what the syncer's progress is counted in.
    appended: u64,
    /// Set once the log can no longer be trusted; every later write fails with it.
    failed: Option<String>,
    scratch: Vec<u8>,
}

struct SyncState {
    /// Every byte below this (in `appended` terms) is on disk.
    synced: u64,
    syncing: bool,
}

struct Shared {
    dir: PathBuf,
    path: PathBuf,
    options: WalOptions,
    state: Mutex<LogState>,
    sync: Mutex<SyncState>,
    synced_changed: Condvar,
    fsyncs: AtomicU64,
    compacting: AtomicBool,
    /// `file_len`, readable without the state lock (a compaction writes its file while the
    /// handover holds that lock).
    log_len: AtomicU64,
    /// Bytes written so far to the compaction's file; 0 when none runs.
    temp_len: AtomicU64,
    /// The most the log and the compaction's file have taken on disk together.
    peak_disk: AtomicU64,
    /// Bytes taken on the simulated disk of `WalOptions::disk_budget`.
    simulated_used: AtomicU64,
    stop: Mutex<bool>,
    stop_changed: Condvar,
}

/// An open log. Dropping it stops its background syncer (after a last fsync under `everysec`).
pub struct Wal {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

/// A poisoned lock only means another thread panicked while holding it; the state it guards is
/// updated in single steps, so it is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when `e` says the disk (or the quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ENOSPC)
}

/// The disk budget's rule (see the module doc): a record of `len` bytes is admitted if, once
/// written, the log and the most a compaction could still need beside it stay within `limit`.
fn admit(
    state: &LogState,
    len: u64,
    live_change: i64,
    live_after: u64,
    limit: u64,
) -> Result<(), AppendError> {
    let after = state.file_len + len;
    let reserve = match state.compaction {
        None => live_after,
        // The fuzzy snapshot holds at most the live set at the start plus every put since, and
        // each record since is copied once more by the catch-up.
        Some(start) => start.live + 2 * (after - start.from),
    };
    let needed = after + reserve;
    // A record that does not raise the log plus its live set (a delete: its tombstone is never
    // larger than the record it ends) leaves compaction as much room as before, and may be the
    // only way back under a budget lowered since the log was written.
    let grows = len as i64 + live_change > 0;
    if needed <= limit || (!grows && state.compaction.is_none()) {
        return Ok(());
    }
    Err(AppendError::OverBudget {
        needed,
        limit,
        fits_once_compacted: state.live + len + live_after <= limit,
    })
}

fn encode(out: &mut Vec<u8>, record: Record<'_>) {
    let (kind, key, expires_at, value): (u8, &[u8], Option<u64>, &[u8]) = match record {
        Record::Put {
            key,
            value,
            expires_at: None,
        } => (TYPE_PUT, key, None, value),
        Record::Put {
            key,
            value,
            expires_at: Some(at),
        } => (TYPE_PUT_EXPIRING, key, Some(at), value),
        Record::Delete { key } => (TYPE_DELETE, key, None, &[]),
    };
    let expiry_len = if expires_at.is_some() { EXPIRY_LEN } else { 0 };
    let body = MIN_BODY as usize + key.len() + expiry_len as usize + value.len();
    let start = out.len();
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    if let Some(at) = expires_at {
        out.extend_from_slice(&at.to_le_bytes());
    }
    out.extend_from_slice(value);
    let crc = crate::protocol::crc32(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes the record whose length field is `len_bytes` and whose body and CRC are `rest`.
fn decode<'a>(len_bytes: [u8; 4], rest: &'a [u8]) -> Result<Record<'a>, String> {
    let (body, crc) = rest.split_at(rest.len() - 4);
    let mut hasher = crate::protocol::crc32_hasher();
    hasher.update(&len_bytes);
    hasher.update(body);
    let computed = hasher.finalize();
    let stored = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    if computed != stored {
        return Err(format!(
            "CRC mismatch: stored {stored:08x}, computed {computed:08x}"
        ));
    }
    let key_len = u32::from_le_bytes(body[1..5].try_into().expect("four bytes")) as usize;
    if key_len > body.len() - 5 {
        return Err(format!("key length {key_len} exceeds the record"));
    }
    let key = &body[5..5 + key_len];
    let rest = &body[5 + key_len..];
    match body[0] {
        TYPE_PUT => Ok(Record::Put {
            key,
            value: rest,
            expires_at: None,
        }),
        TYPE_PUT_EXPIRING if rest.len() < EXPIRY_LEN as usize => Err(format!(
            "a put-expiring record has {} byte(s) after its key, too few for its expiry time",
            rest.len()
        )),
        TYPE_PUT_EXPIRING => {
            let (at, value) = rest.split_at(EXPIRY_LEN as usize);
            Ok(Record::Put {
                key,
                value,
                expires_at: Some(u64::from_le_bytes(at.try_into().expect("eight bytes"))),
            })
        }
        TYPE_DELETE if rest.is_empty() => Ok(Record::Delete { key }),
        TYPE_DELETE => Err("a delete record carries a value".into()),
        other => Err(format!("unknown record type {other}")),
    }
}

/// Whether a whole valid record starts anywhere in `tail` after its first byte.
fn valid_record_after(tail: &[u8]) -> bool {
    let min = (4 + MIN_BODY + 4) as usize;
    (1..tail.len().saturating_sub(min - 1)).any(|p| {
        let len_bytes: [u8; 4] = tail[p..p + 4].try_into().expect("four bytes");
        let len = u32::from_le_bytes(len_bytes);
        if !(MIN_BODY..=MAX_BODY).contains(&len) {
            return false;
        }
        let end = p + 4 + len as usize + 4;
        end <= tail.len() && decode(len_bytes, &tail[p + 4..end]).is_ok()
    })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    let version = VERSION_OFFSET as usize;
    header[version..version + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Rewrites the version in the header of the log at `path`, an older version's log whose
/// records this build has just replayed, to [`FORMAT_VERSION`], and fsyncs it. This must reach
/// the disk before a put expiring is appended, or a build that knows only the older version
/// would take the log for its own and meet a record type it does not know. The write is four
/// bytes within the first sector, of which only the low byte changes, so a crash leaves either
/// version, never a mix; either way the records that follow are read as before.
fn upgrade_header(path: &Path, from: u32) -> Result<(), OpenError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all_at(&FORMAT_VERSION.to_le_bytes(), VERSION_OFFSET)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            let what = format!("upgrading its header from format version {from}: {e}");
            io_err(path)(io::Error::new(e.kind(), what))
        })?;
    log::info!(
        "{}: upgraded from log format version {from} to {FORMAT_VERSION}",
        path.display()
    );
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates an empty log at `path` atomically: a crash leaves either no log or a whole header.
fn create_log(dir: &Path, path: &Path) -> Result<(), OpenError> {
    let temp = dir.join(COMPACT_FILE);
    let mut file = File::create(&temp).map_err(io_err(&temp))?;
    file.write_all(&header()).map_err(io_err(&temp))?;
    file.sync_all().map_err(io_err(&temp))?;
    fs::rename(&temp, path).map_err(io_err(path))?;
    sync_dir(dir).map_err(io_err(dir))
}

/// Writes `tail`, the bytes of the log at `path` from `offset` on, to a new file beside it,
/// `wal.log.damaged-OFFSET`, and fsyncs it and the directory, so that the copy is on disk before
/// the log is cut. An earlier copy of that name is never overwritten (the same offset can be
/// damaged again after a cut); the new one is then numbered, `wal.log.damaged-OFFSET.2` and on.
fn save_damaged_tail(path: &Path, offset: u64, tail: &[u8]) -> Result<PathBuf, OpenError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = format!("{LOG_FILE}.damaged-{offset}");
    let mut copy = 1;
    loop {
        let saved = match copy {
            1 => path.with_file_name(&name),
            n => path.with_file_name(format!("{name}.{n}")),
        };
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&saved) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                copy += 1;
                continue;
            }
            Err(e) => return Err(io_err(&saved)(e)),
        };
        if let Err(e) = file.write_all(tail).and_then(|()| file.sync_all()) {
            // A partial copy would pass for the whole tail.
            let _ = fs::remove_file(&saved);
            return Err(io_err(&saved)(e));
        }
        sync_dir(dir).map_err(io_err(dir))?;
        return Ok(saved);
    }
}

/// Reads the header and replays every whole record into `apply`; decides what to do with a bad
/// record (see the module doc). Returns the length of the intact log and its format version.
fn replay(
    path: &Path,
    repair: bool,
    apply: &mut dyn FnMut(Record<'_>),
    recovery: &mut Recovery,
) -> Result<(u64, u32), OpenError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut head = [0u8; HEADER_LEN as usize];
    if file_len < HEADER_LEN || reader.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
        return Err(OpenError::NotALog {
            path: path.to_path_buf(),
        });
    }
    let at = VERSION_OFFSET as usize;
    let version = u32::from_le_bytes(head[at..at + 4].try_into().expect("four bytes"));
    if version > FORMAT_VERSION {
        return Err(OpenError::NewerVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < OLDEST_FORMAT_VERSION {
        return Err(OpenError::NotALog {
            path: path.to_path_buf(),
        });
    }
    let mut offset = HEADER_LEN;
    let mut buf = Vec::new();
    // `complete`: the record at `offset` has a length in range and all its bytes are in the
    // file, so it was written whole and then damaged, or torn in a way no length check sees.
    let (damage, complete) = loop {
        if offset == file_len {
            return Ok((offset, version));
        }
        let remaining = file_len - offset;
        if remaining < 4 {
            break (
                format!("{remaining} byte(s) where a record should start"),
                false,
            );
        }
        let mut len_bytes = [0u8; 4];
        reader.read_exact(&mut len_bytes).map_err(io_err(path))?;
        let len = u32::from_le_bytes(len_bytes);
        if !(MIN_BODY..=MAX_BODY).contains(&len) {
            break (format!("record length {len} is out of range"), false);
        }
        let whole = 4 + u64::from(len) + 4;
        if whole > remaining {
            break (
                format!("a record of {whole} bytes but only {remaining} left in the file"),
                false,
            );
        }
        buf.resize(len as usize + 4, 0);
        reader.read_exact(&mut buf).map_err(io_err(path))?;
        match decode(len_bytes, &buf) {
            Ok(record) => apply(record),
            Err(reason) => break (reason, true),
        }
        recovery.records += 1;
        offset += whole;
    };
    drop(reader);
    let file = File::open(path).map_err(io_err(path))?;
    let mut tail = vec![0u8; (file_len - offset) as usize];
    file.read_exact_at(&mut tail, offset)
        .map_err(io_err(path))?;
    if valid_record_after(&tail) {
        if !repair {
            return Err(OpenError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: damage,
            });
        }
        let saved = path.with_file_name(format!("{LOG_FILE}.corrupt-{offset}"));
        fs::copy(path, &saved).map_err(io_err(&saved))?;
        File::open(&saved)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&saved))?;
        log::warn!(
            "{}: corrupt at offset {offset} ({damage}); repair keeps the {} records before it \
             and drops {} bytes; the original is saved as {}",
            path.display(),
            recovery.records,
            file_len - offset,
            saved.display()
        );
        recovery.saved_corrupt = Some(saved);
    } else if complete {
        // A crash mid-append leaves a record short; one whose bytes are all there may be a
        // damaged disk. It is still the end of the log (nothing valid follows), but its bytes
        // are kept and an operator is told, since an acknowledged write may be among them.
        let saved = save_damaged_tail(path, offset, &tail)?;
        log::error!(
            "{}: the last record, at offset {offset}, is whole but damaged ({damage}); the log \
             is cut back to the {} records before it, dropping {} bytes, which are saved as {}",
            path.display(),
            recovery.records,
            file_len - offset,
            saved.display()
        );
        recovery.damaged_last_record = Some(saved);
    } else {
        log::warn!(
            "{}: torn tail at offset {offset} ({damage}); dropped {} bytes after {} whole records",
            path.display(),
            file_len - offset,
            recovery.records
        );
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(offset).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    recovery.dropped_bytes = file_len - offset;
    Ok((offset, version))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying every record into `apply` first.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        apply: &mut dyn FnMut(Record<'_>),
    ) -> Result<(Wal, Recovery), OpenError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOG_FILE);
        let mut recovery = Recovery::default();
        let temp = dir.join(COMPACT_FILE);
        if temp.exists() {
            fs::remove_file(&temp).map_err(io_err(&temp))?;
            recovery.removed_partial_compaction = true;
            log::warn!(
                "{}: removed a compaction left unfinished by a crash; {} is whole",
                temp.display(),
                path.display()
            );
        }
        if !path.exists() {
            create_log(dir, &path)?;
        }
        let (len, version) = replay(&path, options.repair, apply, &mut recovery)?;
        if version < FORMAT_VERSION {
            upgrade_header(&path, version)?;
            recovery.upgraded_from = Some(version);
        }
        recovery.log_bytes = len;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            path,
            options,
            state: Mutex::new(LogState {
                file: Arc::new(file),
                file_len: len,
                live: HEADER_LEN,
                compaction: None,
                appended: 0,
                failed: None,
                scratch: Vec::new(),
            }),
            sync: Mutex::new(SyncState {
                synced: 0,
                syncing: false,
            }),
            synced_changed: Condvar::new(),
            fsyncs: AtomicU64::new(0),
            compacting: AtomicBool::new(false),
            log_len: AtomicU64::new(len),
            temp_len: AtomicU64::new(0),
            peak_disk: AtomicU64::new(len),
            simulated_used: AtomicU64::new(len),
            stop: Mutex::new(false),
            stop_changed: Condvar::new(),
        });
        let syncer = (shared.options.fsync == FsyncPolicy::EverySec).then(|| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("wal-syncer".into())
                .spawn(move || shared.sync_every_second())
                .expect("spawning the log's syncer thread")
        });
        Ok((Wal { shared, syncer }, recovery))
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Appends `record`, which changes the bytes the live set takes rewritten by
    /// `live_change`; returns the position to pass to [`Wal::commit`]. Under a disk budget a
    /// record that does not fit is refused and nothing is written.
    pub fn append(&self, record: Record<'_>, live_change: i64) -> Result<u64, AppendError> {
        let shared = &*self.shared;
        let mut state = lock(&shared.state);
        if let Some(why) = &state.failed {
            return Err(io::Error::other(format!("the log refuses writes: {why}")).into());
        }
        let mut scratch = std::mem::take(&mut state.scratch);
        scratch.clear();
        encode(&mut scratch, record);
        let len = scratch.len() as u64;
        let live_after = state.live.saturating_add_signed(live_change);
        if let Some(limit) = shared.options.max_disk_bytes {
            if let Err(refused) = admit(&state, len, live_change, live_after, limit) {
                state.scratch = scratch;
                return Err(refused);
            }
        }
        let written = shared.write(&state.file, &scratch);
        state.scratch = scratch;
        match written {
            Ok(()) => {
                state.file_len += len;
                state.appended += len;
                state.live = live_after;
                shared.log_len.store(state.file_len, Ordering::Release);
                shared.note_disk(state.file_len);
                Ok(state.appended)
            }
            Err(e) => {
                // Part of the record may be in the file; cut it off so the log ends whole.
                if let Err(cut) = state.file.set_len(state.file_len) {
                    state.failed = Some(format!(
                        "a failed write ({e}) could not be cut back off {}: {cut}",
                        shared.path.display()
                    ));
                }
                Err(e.into())
            }
        }
    }

    /// Sets what the live set takes rewritten as a log, header included; for the store that
    /// replayed the log, which alone knows which records are live.
    pub fn set_live_bytes(&self, bytes: u64) {
        lock(&self.shared.state).live = bytes;
    }

    /// The log's length and what its live set takes rewritten, read together.
    pub fn len_and_live(&self) -> (u64, u64) {
        let state = lock(&self.shared.state);
        (state.file_len, state.live)
    }

    /// The most the log and a compaction's file have taken on disk together since open.
    pub fn peak_disk_bytes(&self) -> u64 {
        self.shared.peak_disk.load(Ordering::Acquire)
    }

    /// Returns once the record ending at `position` is as durable as the policy promises.
    pub fn commit(&self, position: u64) -> io::Result<()> {
        match self.shared.options.fsync {
            FsyncPolicy::Always => self.shared.sync_to(position),
            FsyncPolicy::EverySec | FsyncPolicy::Never => Ok(()),
        }
    }

    /// Forces everything appended so far to disk.
    pub fn sync(&self) -> io::Result<()> {
        let target = lock(&self.shared.state).appended;
        self.shared.sync_to(target)
    }

    /// The log file's length in bytes.
    pub fn len(&self) -> u64 {
        lock(&self.shared.state).file_len
    }

    /// True when the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == HEADER_LEN
    }

    /// How many fsyncs of the log were made since it was opened.
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Whether a compaction is running.
    pub fn is_compacting(&self) -> bool {
        self.shared.compacting.load(Ordering::Acquire)
    }

    /// Rewrites the log as the live set that `live` produces (it calls its argument once per
    /// live key) followed by whatever was appended meanwhile; see the module doc. Writes go on
    /// while it runs. `None` if another compaction is running.
    pub fn compact(&self, live: &mut LiveSet<'_>) -> io::Result<Option<Compaction>> {
        let shared = &*self.shared;
        if shared.compacting.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let temp = shared.dir.join(COMPACT_FILE);
        let result = match shared.compact_into(&temp, live) {
            Ok(done) => Ok(Some(done)),
            Err(Stop::Io(e)) => {
                // A partial copy left behind would hold the very disk space it was to free.
                match fs::remove_file(&temp) {
                    Ok(()) => {}
                    Err(gone) if gone.kind() == io::ErrorKind::NotFound => {}
                    Err(stuck) => log::error!(
                        "{}: cannot remove the unfinished compaction: {stuck}",
                        temp.display()
                    ),
                }
                let mut state = lock(&shared.state);
                state.compaction = None;
                let written = shared.temp_len.swap(0, Ordering::AcqRel);
                if shared.options.disk_budget.is_some() {
                    shared.simulated_used.fetch_sub(written, Ordering::AcqRel);
                }
                Err(e)
            }
            Err(Stop::Crashed(point)) => Err(io::Error::other(format!(
                "compaction stopped by a test crash at {point:?}"
            ))),
        };
        // Only now: a compaction started earlier could see its new file removed above.
        shared.compacting.store(false, Ordering::Release);
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.stop_changed.notify_all();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}

impl Shared {
    /// Writes `bytes` at the end of `file`, on the simulated disk if a test set one.
    fn write(&self, mut file: &File, bytes: &[u8]) -> io::Result<()> {
        if self.options.disk_budget.is_none() {
            return file.write_all(bytes);
        }
        let n = bytes.len() as u64;
        if self.take_simulated(n, false) < n {
            let room = self.simulated_room() as usize;
            file.write_all(&bytes[..room.min(bytes.len())])?;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        file.write_all(bytes).inspect_err(|_| {
            self.simulated_used.fetch_sub(n, Ordering::AcqRel);
        })
    }

    /// Takes `n` bytes of the simulated disk, or with `partial` as many as are left; returns
    /// how many it took (0 or `n` without `partial`).
    fn take_simulated(&self, n: u64, partial: bool) -> u64 {
        let size = self.options.disk_budget.unwrap_or(u64::MAX);
        let mut taken = 0;
        let _ = self
            .simulated_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let room = size.saturating_sub(used);
                taken = if room >= n {
                    n
                } else if partial {
                    room
                } else {
                    0
                };
                (taken > 0).then_some(used + taken)
            });
        taken
    }

    fn simulated_room(&self) -> u64 {
        let size = self.options.disk_budget.unwrap_or(u64::MAX);
        size.saturating_sub(self.simulated_used.load(Ordering::Acquire))
    }

    /// Raises the high-water mark of disk use to the log's `log_len` plus the compaction's file.
    fn note_disk(&self, log_len: u64) {
        let temp = self.temp_len.load(Ordering::Acquire);
        self.peak_disk.fetch_max(log_len + temp, Ordering::AcqRel);
    }

    /// Group commit: returns once an fsync has covered `target`, doing it if no one else is.
    fn sync_to(&self, target: u64) -> io::Result<()> {
        let mut sync = lock(&self.sync);
        loop {
            if sync.synced >= target {
                return Ok(());
            }
            if sync.syncing {
                sync = self
                    .synced_changed
                    .wait(sync)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            sync.syncing = true;
            drop(sync);
            let (file, upto, failed) = {
                let state = lock(&self.state);
                (
                    Arc::clone(&state.file),
                    state.appended,
                    state.failed.clone(),
                )
            };
            let result = match failed {
                Some(why) => Err(io::Error::other(format!("the log refuses writes: {why}"))),
                None => {
                    self.fsyncs.fetch_add(1, Ordering::Relaxed);
                    file.sync_data()
                }
            };
            sync = lock(&self.sync);
            sync.syncing = false;
            self.synced_changed.notify_all();
            match result {
                Ok(()) => sync.synced = sync.synced.max(upto),
                Err(e) => {
                    drop(sync);
                    let mut state = lock(&self.state);
                    if state.failed.is_none() {
                        state.failed =
                            Some(format!("an fsync of {} failed: {e}", self.path.display()));
                    }
                    return Err(e);
                }
            }
        }
    }

    fn sync_every_second(&self) {
        let mut stop = lock(&self.stop);
        loop {
            if *stop {
                break;
            }
            stop = self
                .stop_changed
                .wait_timeout(stop, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            drop(stop);
            self.sync_pending();
            stop = lock(&self.stop);
        }
    }

    fn sync_pending(&self) {
        let (target, failed) = {
            let state = lock(&self.state);
            (state.appended, state.failed.is_some())
        };
        if failed || lock(&self.sync).synced >= target {
            return;
        }
        if let Err(e) = self.sync_to(target) {
            log::error!("{}: background fsync failed: {e}", self.path.display());
        }
    }

    /// Stops a compaction at `point` when a test asked for it. As after a real crash, the log
    /// then takes no more writes, so the files stay as this point left them for the next open.
    fn crash_point(&self, point: CrashPoint, state: &mut LogState) -> Result<(), Stop> {
        if self.options.crash_at != Some(point) {
            return Ok(());
        }
        state.failed = Some(format!("a test crash at {point:?}"));
        Err(Stop::Crashed(point))
    }

    fn compact_into(&self, temp: &Path, live: &mut LiveSet<'_>) -> Result<Compaction, Stop> {
        let (old, mut copied) = {
            let mut state = lock(&self.state);
            if let Some(why) = &state.failed {
                return Err(Stop::Io(io::Error::other(format!(
                    "the log refuses writes: {why}"
                ))));
            }
            self.temp_len.store(0, Ordering::Release);
            state.compaction = Some(CompactionStart {
                from: state.file_len,
                live: state.live,
            });
            (Arc::clone(&state.file), state.file_len)
        };
        let file = CompactionFile {
            file: File::create(temp)?,
            shared: self,
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header())?;
        let mut record = Vec::new();
        live(&mut |key, expires_at, value| {
            record.clear();
            encode(
                &mut record,
                Record::Put {
                    key,
                    value,
                    expires_at,
                },
            );
            out.write_all(&record)
        })?;
        self.crash_point(CrashPoint::AfterSnapshot, &mut lock(&self.state))?;
        // Only a compaction replaces the file and only one runs at a time, so `old` stays the
        // file appended to until the handover; the lock is taken just to read how far it grew.
        let mut chunk = vec![0u8; 1 << 20];
        let mut copy_up_to =
            |out: &mut BufWriter<CompactionFile<'_>>, copied: &mut u64, end: u64| {
                copy_range(&old, out, copied, end, &mut chunk)
            };
        loop {
            let end = lock(&self.state).file_len;
            let behind = end - copied;
            copy_up_to(&mut out, &mut copied, end)?;
            if behind < HANDOVER_BYTES {
                break;
            }
        }
        // The bulk is fsynced before the handover, so that writers wait only for the last few
        // records to be copied and fsynced.
        out.flush()?;
        out.get_ref().file.sync_data()?;
        self.crash_point(CrashPoint::AfterCatchUp, &mut lock(&self.state))?;

        let mut state = lock(&self.state);
        let bytes_before = state.file_len;
        copy_up_to(&mut out, &mut copied, bytes_before)?;
        let new = out.into_inner().map_err(|e| e.into_error())?;
        new.file.sync_all()?;
        drop(new);
        self.crash_point(CrashPoint::AfterTempSync, &mut state)?;
        fs::rename(temp, &self.path)?;
        // From here the path names the new file: appending to the old one would lose writes,
        // so any failure stops the log instead of leaving it on the old file.
        self.crash_point(CrashPoint::AfterRename, &mut state)?;
        let swapped = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .and_then(|file| {
                sync_dir(&self.dir)?;
                let len = file.metadata()?.len();
                Ok((file, len))
            });
        let (file, bytes_after) = match swapped {
            Ok(opened) => opened,
            Err(e) => {
                state.failed = Some(format!(
                    "a compaction renamed {} but could not switch to it: {e}",
                    self.path.display()
                ));
                return Err(Stop::Io(e));
            }
        };
        state.file = Arc::new(file);
        state.file_len = bytes_after;
        state.compaction = None;
        self.log_len.store(bytes_after, Ordering::Release);
        self.temp_len.store(0, Ordering::Release);
        if self.options.disk_budget.is_some() {
            // The old file is gone; the new one was counted as it was written.
            self.simulated_used
                .fetch_sub(bytes_before, Ordering::AcqRel);
        }
        let appended = state.appended;
        {
            let mut sync = lock(&self.sync);
            sync.synced = sync.synced.max(appended);
        }
        self.synced_changed.notify_all();
        Ok(Compaction {
            bytes_before,
            bytes_after,
        })
    }
}

/// The file a compaction writes, counted as it grows: towards the high-water mark of disk use,
/// and on the simulated disk of a test.
struct CompactionFile<'a> {
    file: File,
    shared: &'a Shared,
}

impl Write for CompactionFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = self.shared;
        let simulated = shared.options.disk_budget.is_some();
        let allowed = if simulated {
            match shared.take_simulated(buf.len() as u64, true) as usize {
                0 if !buf.is_empty() => return Err(io::Error::from_raw_os_error(ENOSPC)),
                n => n,
            }
        } else {
            buf.len()
        };
        let written = match self.file.write(&buf[..allowed]) {
            Ok(n) => n,
            Err(e) => {
                if simulated {
                    shared
                        .simulated_used
                        .fetch_sub(allowed as u64, Ordering::AcqRel);
                }
                return Err(e);
            }
        };
        if simulated {
            shared
                .simulated_used
                .fetch_sub((allowed - written) as u64, Ordering::AcqRel);
        }
        shared.temp_len.fetch_add(written as u64, Ordering::AcqRel);
        shared.note_disk(shared.log_len.load(Ordering::Acquire));
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Appends `from..end` of `old` to `out`, advancing `from`.
fn copy_range(
    old: &File,
    out: &mut impl Write,
    from: &mut u64,
    end: u64,
    chunk: &mut [u8],
) -> io::Result<()> {
    while *from < end {
        let n = chunk.len().min((end - *from) as usize);
        old.read_exact_at(&mut chunk[..n], *from)?;
        out.write_all(&chunk[..n])?;
        *from += n as u64;
    }
    Ok(())
}

/// Why a compaction stopped early.
enum Stop {
    Io(io::Error),
    Crashed(CrashPoint),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "ringkv-wal-{}-{}-{name}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    thread_local! {
        /// The warnings and errors logged on this thread, while a test captures them.
        static CAPTURED: RefCell<Option<Vec<(log::Level, String)>>> = const { RefCell::new(None) };
    }

    /// Keeps the warnings and errors of threads that asked for them; other tests' threads
    /// (which share the one global logger) keep nothing.
    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            CAPTURED.with(|captured| {
                if let Some(lines) = captured.borrow_mut().as_mut() {
                    lines.push((record.level(), record.args().to_string()));
                }
            });
        }

        fn flush(&self) {}
    }

    /// Runs `f`, returning what it returned and the warnings and errors it logged.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<(log::Level, String)>) {
        static LOGGER: Capture = Capture;
        // Tests run in parallel: the others wait here until the logger is in place.
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&LOGGER).expect("no other logger in the library's tests");
            log::set_max_level(log::LevelFilter::Warn);
        });
        CAPTURED.with(|captured| *captured.borrow_mut() = Some(Vec::new()));
        let result = f();
        let lines = CAPTURED.with(|captured| captured.borrow_mut().take().unwrap());
        (result, lines)
    }

    fn put<'a>(key: &'a [u8], value: &'a [u8]) -> Record<'a> {
        Record::Put {
            key,
            value,
            expires_at: None,
        }
    }

    fn put_expiring<'a>(key: &'a [u8], value: &'a [u8], at: u64) -> Record<'a> {
        Record::Put {
            key,
            value,
            expires_at: Some(at),
        }
    }

    /// A replayed record, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Replayed {
        Put(Vec<u8>, Vec<u8>, Option<u64>),
        Delete(Vec<u8>),
    }

    impl From<Record<'_>> for Replayed {
        fn from(record: Record<'_>) -> Replayed {
            match record {
                Record::Put {
                    key,
                    value,
                    expires_at,
                } => Replayed::Put(key.to_vec(), value.to_vec(), expires_at),
                Record::Delete { key } => Replayed::Delete(key.to_vec()),
            }
        }
    }

    /// Opens the log in `dir`; returns what recovery found and the records replayed.
    fn reopen(dir: &Path) -> (Recovery, Vec<Replayed>) {
        let mut records = Vec::new();
        let (_wal, recovery) = Wal::open(dir, WalOptions::default(), &mut |record| {
            records.push(Replayed::from(record))
        })
        .unwrap();
        (recovery, records)
    }

    /// The expiry times the last record of [`three_records`] is tried with: a plain put, and
    /// a put expiring.
    const LAST_EXPIRY: [Option<u64>; 2] = [None, Some(0x0102_0304_0506_0708)];

    /// Writes three records to a new log in `dir`, the last a put of key `b` expiring at
    /// `last_expires_at`; returns the log's bytes and where the last record starts.
    fn three_records(dir: &Path, last_expires_at: Option<u64>) -> (Vec<u8>, u64) {
        let (wal, _) = Wal::open(dir, WalOptions::default(), &mut |_| {}).unwrap();
        wal.append(put(b"a", b"one"), 0).unwrap();
        wal.append(Record::Delete { key: b"a" }, 0).unwrap();
        let last = wal.len();
        let last_record = Record::Put {
            key: b"b",
            value: &[9; 30],
            expires_at: last_expires_at,
        };
        wal.append(last_record, 0).unwrap();
        drop(wal);
        (fs::read(dir.join(LOG_FILE)).unwrap(), last)
    }

    /// The files beside the log whose names start with `wal.log.damaged-`.
    fn damaged_copies(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("wal.log.damaged-"))
            .collect();
        names.sort();
        names
    }

    /// The two records before the last one that [`three_records`] writes.
    fn the_first_two() -> Vec<Replayed> {
        vec![
            Replayed::Put(b"a".to_vec(), b"one".to_vec(), None),
            Replayed::Delete(b"a".to_vec()),
        ]
    }

    #[test]
    fn a_partial_last_record_is_cut_with_a_warning_and_nothing_saved() {
        for last_expires_at in LAST_EXPIRY {
            let source = TempDir::new("partial-source");
            let (bytes, last) = three_records(&source.0, last_expires_at);
            let last = last as usize;
            let mut zeros = bytes.clone();
            zeros.extend_from_slice(&[0; 100]);
            let tails = [
                // Cut inside the length field, inside the key length, inside the expiry time
                // of a put expiring (the value of a put), one byte short of the CRC's end.
                bytes[..last + 2].to_vec(),
                bytes[..last + 7].to_vec(),
                bytes[..last + 13].to_vec(),
                bytes[..bytes.len() - 1].to_vec(),
                // The file grew but the data never reached the disk.
                zeros,
            ];
            let whole = tails.len() - 1;
            for (case, log) in tails.iter().enumerate() {
                let what = format!("expiry {last_expires_at:?}, case {case}");
                let dir = TempDir::new("partial");
                fs::write(dir.0.join(LOG_FILE), log).unwrap();
                let ((recovery, records), lines) = logged(|| reopen(&dir.0));
                let mut expected = the_first_two();
                if case == whole {
                    expected.push(Replayed::Put(b"b".to_vec(), vec![9; 30], last_expires_at));
                }
                assert_eq!(records, expected, "{what}");
                assert_eq!(recovery.records, expected.len() as u64, "{what}");
                assert_eq!(recovery.damaged_last_record, None, "{what}");
                assert!(damaged_copies(&dir.0).is_empty(), "{what}");
                assert!(
                    lines
                        .iter()
                        .any(|(level, line)| *level == log::Level::Warn
                            && line.contains("torn tail")),
                    "{what}: {lines:?}"
                );
                assert!(
                    lines.iter().all(|(level, _)| *level != log::Level::Error),
                    "{what}: {lines:?}"
                );
            }
        }
    }

    #[test]
    fn a_whole_last_record_that_fails_its_checks_is_cut_saved_and_logged_as_an_error() {
        for last_expires_at in LAST_EXPIRY {
            let source = TempDir::new("whole-source");
            let (bytes, last) = three_records(&source.0, last_expires_at);
            let start = last as usize;
            // A byte flipped in the type, the key length, the expiry time of a put expiring
            // (the value of a put), the value, the CRC; and one in the value with zeros after
            // the record, which are saved with it.
            for (case, (flip, extra)) in [
                (4, 0),
                (6, 0),
                (12, 0),
                (20, 0),
                (bytes.len() - 1 - start, 0),
                (20, 7),
            ]
            .into_iter()
            .enumerate()
            {
                let what = format!("expiry {last_expires_at:?}, case {case}");
                let dir = TempDir::new("whole");
                let path = dir.0.join(LOG_FILE);
                let mut damaged = bytes.clone();
                damaged[start + flip] ^= 0x20;
                damaged.resize(damaged.len() + extra, 0);
                fs::write(&path, &damaged).unwrap();

                let ((recovery, records), lines) = logged(|| reopen(&dir.0));
                let saved = dir.0.join(format!("wal.log.damaged-{start}"));
                assert_eq!(recovery.records, 2, "{what}");
                assert_eq!(records, the_first_two(), "{what}");
                assert_eq!(recovery.dropped_bytes, (damaged.len() - start) as u64);
                assert_eq!(recovery.damaged_last_record.as_ref(), Some(&saved));
                assert_eq!(fs::read(&saved).unwrap(), &damaged[start..], "{what}");
                assert_eq!(fs::read(&path).unwrap(), &bytes[..start], "{what}");
                let error = lines
                    .iter()
                    .find(|(level, _)| *level == log::Level::Error)
                    .map(|(_, line)| line.clone())
                    .unwrap_or_else(|| panic!("{what}: no error logged: {lines:?}"));
                for part in [
                    path.display().to_string(),
                    format!("offset {start}"),
                    "CRC mismatch".to_string(),
                    saved.display().to_string(),
                ] {
                    assert!(error.contains(&part), "{what}: {part:?} in {error}");
                }

                // The cut log is whole: it reopens with the same records and nothing to report.
                let (again, records) = reopen(&dir.0);
                assert_eq!(records, the_first_two(), "{what}, reopened");
                assert_eq!(again.dropped_bytes, 0, "{what}, reopened");
                assert_eq!(again.damaged_last_record, None, "{what}, reopened");
                assert_eq!(damaged_copies(&dir.0).len(), 1, "{what}");
            }
        }
    }

    /// A record of type `kind` whose body after the type and key length is `rest`, with the
    /// key length `key_len` whatever `rest` holds, and a correct CRC.
    fn raw_record(kind: u8, key_len: u32, rest: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(MIN_BODY + rest.len() as u32).to_le_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&key_len.to_le_bytes());
        bytes.extend_from_slice(rest);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_put_expiring_too_short_for_its_time_fails_its_checks_even_with_a_good_crc() {
        // Key "k" and 7 bytes: one short of an expiry time.
        let short = raw_record(TYPE_PUT_EXPIRING, 1, b"k1234567");
        let len_bytes: [u8; 4] = short[..4].try_into().unwrap();
        let err = decode(len_bytes, &short[4..]).unwrap_err();
        assert!(err.contains("too few for its expiry time"), "{err}");
        // Exactly an expiry time and no value is a put expiring of an empty value.
        let empty = raw_record(TYPE_PUT_EXPIRING, 1, b"k\x01\0\0\0\0\0\0\0");
        let len_bytes: [u8; 4] = empty[..4].try_into().unwrap();
        assert_eq!(
            decode(len_bytes, &empty[4..]),
            Ok(put_expiring(b"k", b"", 1))
        );

        // As the last record of a log it is whole but damaged: cut, saved and named.
        let dir = TempDir::new("short-expiring");
        let (mut bytes, _) = three_records(&dir.0, None);
        let start = bytes.len();
        bytes.extend_from_slice(&short);
        let path = dir.0.join(LOG_FILE);
        fs::write(&path, &bytes).unwrap();
        let ((recovery, records), lines) = logged(|| reopen(&dir.0));
        assert_eq!(records.len(), 3);
        let saved = dir.0.join(format!("wal.log.damaged-{start}"));
        assert_eq!(recovery.damaged_last_record.as_ref(), Some(&saved));
        assert_eq!(fs::read(&path).unwrap(), &bytes[..start]);
        assert!(
            lines.iter().any(|(level, line)| *level == log::Level::Error
                && line.contains("too few for its expiry time")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_second_damaged_last_record_at_the_same_offset_does_not_overwrite_the_first_copy() {
        let dir = TempDir::new("twice");
        let (bytes, last) = three_records(&dir.0, LAST_EXPIRY[1]);
        let start = last as usize;
        let path = dir.0.join(LOG_FILE);
        let mut first = bytes.clone();
        first[start + 20] ^= 1;
        fs::write(&path, &first).unwrap();
        reopen(&dir.0);
        let mut second = bytes.clone();
        second[start + 21] ^= 1;
        fs::write(&path, &second).unwrap();
        let (recovery, _) = reopen(&dir.0);
        let numbered = dir.0.join(format!("wal.log.damaged-{start}.2"));
        assert_eq!(recovery.damaged_last_record.as_ref(), Some(&numbered));
        assert_eq!(
            fs::read(dir.0.join(format!("wal.log.damaged-{start}"))).unwrap(),
            &first[start..]
        );
        assert_eq!(fs::read(&numbered).unwrap(), &second[start..]);
    }

    #[test]
    fn every_record_type_round_trips_and_any_flipped_bit_is_caught() {
        let at = 1_700_000_000_123u64;
        for (record, kind, extra) in [
            (put(b"key", b"value"), TYPE_PUT, 0),
            (
                put_expiring(b"key", b"value", at),
                TYPE_PUT_EXPIRING,
                EXPIRY_LEN,
            ),
            (put_expiring(b"key", b"", 0), TYPE_PUT_EXPIRING, EXPIRY_LEN),
            (Record::Delete { key: b"key" }, TYPE_DELETE, 0),
        ] {
            let mut bytes = Vec::new();
            encode(&mut bytes, record);
            let payload = match record {
                Record::Put { key, value, .. } => key.len() + value.len(),
                Record::Delete { key } => key.len(),
            };
            assert_eq!(
                bytes.len() as u64,
                RECORD_OVERHEAD + extra + payload as u64,
                "{record:?}"
            );
            assert_eq!(bytes[4], kind, "{record:?}");
            assert_eq!(&bytes[5..9], &3u32.to_le_bytes(), "{record:?}");
            assert_eq!(&bytes[9..12], b"key", "{record:?}");
            if let Record::Put {
                value,
                expires_at: Some(expires_at),
                ..
            } = record
            {
                // The time right after the key, then the value.
                assert_eq!(&bytes[12..20], &expires_at.to_le_bytes());
                assert_eq!(&bytes[20..bytes.len() - 4], value);
            }
            let len_bytes: [u8; 4] = bytes[..4].try_into().unwrap();
            assert_eq!(decode(len_bytes, &bytes[4..]), Ok(record));
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                let len_bytes: [u8; 4] = damaged[..4].try_into().unwrap();
                let len = u32::from_le_bytes(len_bytes) as usize;
                if len + 8 == damaged.len() {
                    assert!(
                        decode(len_bytes, &damaged[4..]).is_err(),
                        "{record:?}, bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn puts_expiring_are_replayed_with_their_time_among_other_records() {
        let dir = TempDir::new("expiring-replay");
        let appended = [
            put_expiring(b"a", b"one", 5),
            put(b"b", b"two"),
            put_expiring(b"b", b"", u64::MAX),
            Record::Delete { key: b"a" },
            put_expiring(b"", b"empty key", 0),
            put(b"a", b"for ever"),
        ];
        let (wal, recovery) = Wal::open(&dir.0, WalOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(recovery.upgraded_from, None, "a new log is of this version");
        for record in appended {
            wal.append(record, 0).unwrap();
        }
        let len = wal.len();
        drop(wal);
        let (recovery, records) = reopen(&dir.0);
        let expected: Vec<Replayed> = appended.into_iter().map(Replayed::from).collect();
        assert_eq!(records, expected);
        assert_eq!(recovery.records, appended.len() as u64);
        assert_eq!(recovery.log_bytes, len);
        assert_eq!(recovery.dropped_bytes, 0);
    }

    #[test]
    fn a_compaction_writes_an_expiring_key_as_a_put_expiring() {
        let dir = TempDir::new("expiring-compact");
        let (wal, _) = Wal::open(&dir.0, WalOptions::default(), &mut |_| {}).unwrap();
        wal.append(put(b"k", b"old"), 0).unwrap();
        wal.append(put_expiring(b"k", b"new", 42), 0).unwrap();
        wal.append(put(b"p", b"kept"), 0).unwrap();
        let done = wal
            .compact(&mut |emit| {
                emit(b"k", Some(42), b"new")?;
                emit(b"p", None, b"kept")
            })
            .unwrap()
            .unwrap();
        let expected_len = HEADER_LEN + (RECORD_OVERHEAD + EXPIRY_LEN + 4) + (RECORD_OVERHEAD + 5);
        assert_eq!(done.bytes_after, expected_len);
        drop(wal);
        let bytes = fs::read(dir.0.join(LOG_FILE)).unwrap();
        assert_eq!(&bytes[..HEADER_LEN as usize], &header());
        let (_, records) = reopen(&dir.0);
        assert_eq!(
            records,
            [
                Replayed::Put(b"k".to_vec(), b"new".to_vec(), Some(42)),
                Replayed::Put(b"p".to_vec(), b"kept".to_vec(), None),
            ]
        );
    }

    #[test]
    fn a_version_1_log_is_replayed_and_upgraded_before_a_put_expiring_is_appended() {
        let dir = TempDir::new("upgrade");
        let path = dir.0.join(LOG_FILE);
        // What a version-1 build wrote: its header, and records of types 1 and 2, whose layout
        // version 2 keeps.
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&[0; 4]);
        v1.extend_from_slice(&raw_record(TYPE_PUT, 1, b"aone"));
        v1.extend_from_slice(&raw_record(TYPE_PUT, 1, b"btwo"));
        v1.extend_from_slice(&raw_record(TYPE_DELETE, 1, b"a"));
        fs::write(&path, &v1).unwrap();

        let mut records = Vec::new();
        let (wal, recovery) = Wal::open(&dir.0, WalOptions::default(), &mut |record| {
            records.push(Replayed::from(record))
        })
        .unwrap();
        assert_eq!(
            records,
            [
                Replayed::Put(b"a".to_vec(), b"one".to_vec(), None),
                Replayed::Put(b"b".to_vec(), b"two".to_vec(), None),
                Replayed::Delete(b"a".to_vec()),
            ]
        );
        assert_eq!(recovery.upgraded_from, Some(1));
        assert_eq!(recovery.dropped_bytes, 0);
        // Only the version changed, in place, and before anything was appended.
        let upgraded = fs::read(&path).unwrap();
        assert_eq!(&upgraded[8..12], &2u32.to_le_bytes());
        assert_eq!(&upgraded[..8], &v1[..8]);
        assert_eq!(&upgraded[12..], &v1[12..]);

        wal.append(put_expiring(b"b", b"three", 77), 0).unwrap();
        drop(wal);
        let (recovery, records) = reopen(&dir.0);
        assert_eq!(recovery.upgraded_from, None, "already upgraded");
        assert_eq!(
            records.last(),
            Some(&Replayed::Put(b"b".to_vec(), b"three".to_vec(), Some(77)))
        );
        assert_eq!(records.len(), 4);

        // A version-1 build would refuse the log now, as this one refuses the next version.
        let mut newer = fs::read(&path).unwrap();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        fs::write(&path, &newer).unwrap();
        match Wal::open(&dir.0, WalOptions::default(), &mut |_| {}) {
            Err(OpenError::NewerVersion {
                found, supported, ..
            }) => assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION)),
            Err(other) => panic!("expected NewerVersion, got {other}"),
            Ok(_) => panic!("a log of a newer version was opened"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            newer,
            "a refused log is left as it was"
        );
    }

    #[test]
    fn fsync_policies_parse_and_print() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::EverySec,
            FsyncPolicy::Never,
        ] {
            assert_eq!(policy.to_string().parse::<FsyncPolicy>(), Ok(policy));
        }
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }

    /// What a put of a new key adds to the live set rewritten: its whole record.
    fn put_len(key: &[u8], value: &[u8]) -> u64 {
        RECORD_OVERHEAD + (key.len() + value.len()) as u64
    }

    fn budgeted(dir: &Path, max_disk_bytes: u64) -> Wal {
        let options = WalOptions {
            max_disk_bytes: Some(max_disk_bytes),
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(dir, options, &mut |_| {}).unwrap();
        wal.set_live_bytes(HEADER_LEN);
        wal
    }

    #[test]
    fn the_budget_admits_a_record_only_with_room_to_compact_beside_it() {
        let dir = TempDir::new("budget");
        let value = [7u8; 30];
        let r = put_len(b"k", &value) as i64;
        let overwrite = put(b"k", &value);
        // Room for the log and the live set after two records, not after three.
        let budget = HEADER_LEN + 3 * r as u64 + (HEADER_LEN + r as u64) - 1;
        let wal = budgeted(&dir.0, budget);
        wal.append(overwrite, r).unwrap();
        wal.append(overwrite, 0).unwrap();
        let before = wal.len();
        match wal.append(overwrite, 0) {
            Err(AppendError::OverBudget {
                needed,
                limit,
                fits_once_compacted,
            }) => {
                assert_eq!(limit, budget);
                assert_eq!(needed, budget + 1);
                assert!(fits_once_compacted);
            }
            other => panic!("expected OverBudget, got {other:?}"),
        }
        assert_eq!(wal.len(), before, "a refused record is not written");
        assert_eq!(fs::metadata(dir.0.join(LOG_FILE)).unwrap().len(), before);
        // A put that could not fit even in a compacted log says so.
        let big = [1u8; 60];
        let big_len = put_len(b"b", &big) as i64;
        match wal.append(put(b"b", &big), big_len) {
            Err(AppendError::OverBudget {
                fits_once_compacted: false,
                ..
            }) => {}
            other => panic!("expected OverBudget that compaction cannot help, got {other:?}"),
        }
        // A delete never raises log plus live set, so it fits even here.
        wal.append(Record::Delete { key: b"k" }, -r).unwrap();
        assert_eq!(
            wal.len_and_live(),
            (before + RECORD_OVERHEAD + 1, HEADER_LEN)
        );
        assert!(wal.peak_disk_bytes() <= budget);
    }

    #[test]
    fn while_a_compaction_runs_the_budget_keeps_room_for_what_it_copies() {
        let dir = TempDir::new("budget-compacting");
        let value = [3u8; 40];
        let r = put_len(b"k", &value);
        let overwrite = put(b"k", &value);
        let live = HEADER_LEN + r;
        // Without a compaction, three more overwrites fit; while one runs, each also counts
        // twice towards what it copies, so only one does.
        let budget = (HEADER_LEN + 5 * r) + live;
        let wal = budgeted(&dir.0, budget);
        wal.append(overwrite, r as i64).unwrap();
        wal.append(overwrite, 0).unwrap();
        let mut during = Vec::new();
        let done = wal
            .compact(&mut |emit| {
                emit(b"k", None, &value)?;
                during.push(wal.append(overwrite, 0).is_ok());
                during.push(wal.append(overwrite, 0).is_ok());
                Ok(())
            })
            .unwrap()
            .expect("no other compaction");
        assert_eq!(during, [true, false]);
        assert_eq!(done.bytes_after, live + r);
        assert!(
            wal.peak_disk_bytes() <= budget,
            "{} > {budget}",
            wal.peak_disk_bytes()
        );
        // Once it is done the reserve is the live set again.
        wal.append(overwrite, 0).unwrap();
        wal.append(overwrite, 0).unwrap();
    }

    #[test]
    fn a_compaction_that_meets_a_full_disk_removes_its_file_and_frees_its_space() {
        let dir = TempDir::new("compact-enospc");
        let value = [5u8; 100];
        let r = put_len(b"k", &value);
        // A disk with the log of four records and room for a copy of two keys, not three.
        let disk = HEADER_LEN + 4 * r + HEADER_LEN + 2 * r;
        let options = WalOptions {
            disk_budget: Some(disk),
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(&dir.0, options, &mut |_| {}).unwrap();
        for _ in 0..4 {
            wal.append(put(b"k", &value), 0).unwrap();
        }
        let err = wal
            .compact(&mut |emit| {
                for key in [b"a", b"b", b"c"] {
                    emit(key, None, &value)?;
                }
                Ok(())
            })
            .unwrap_err();
        assert!(is_disk_full(&err), "{err}");
        assert!(
            !dir.0.join(COMPACT_FILE).exists(),
            "the partial copy is gone"
        );
        // What it had taken is free again: a record that fits beside the log is written, and
        // then exactly a copy of one key fits.
        wal.append(put(b"k", &value), 0).unwrap();
        // And a compaction that fits succeeds and frees the dead records.
        let done = wal
            .compact(&mut |emit| emit(b"k", None, &value))
            .unwrap()
            .unwrap();
        assert_eq!(done.bytes_after, HEADER_LEN + r);
        assert_eq!(
            fs::metadata(dir.0.join(LOG_FILE)).unwrap().len(),
            HEADER_LEN + r
        );
    }

    #[test]
    fn a_torn_record_is_not_taken_for_a_later_valid_one() {
        for record in [put(b"k", &[7; 40]), put_expiring(b"k", &[7; 40], 9)] {
            let mut bytes = Vec::new();
            encode(&mut bytes, record);
            for cut in 1..bytes.len() {
                assert!(
                    !valid_record_after(&bytes[..cut]),
                    "{record:?}, cut at {cut}"
                );
            }
            // A damaged record followed by a whole one, of either kind.
            for next in [Record::Delete { key: b"k" }, put_expiring(b"k", b"v", 1)] {
                let mut two = bytes.clone();
                encode(&mut two, next);
                two[6] ^= 1;
                assert!(valid_record_after(&two), "{record:?}, then {next:?}");
            }
        }
    }
}
