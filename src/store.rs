//! The storage engine behind a backend: a narrow trait and an in-memory implementation.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use hashbrown::hash_table::{Entry as Slot, HashTable};

/// How much a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSize {
    /// Number of keys.
    pub keys: u64,
    /// Bytes of keys plus values.
    pub bytes: u64,
}

/// What a write does to a store's size, as [`MemStore::put_logged`] and
/// [`MemStore::delete_logged`] tell their log: a log that keeps count of what its live set takes
/// needs the change before the write is made, to refuse it if it does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeChange {
    /// 1 for a new key, -1 for a removed one, 0 for an overwrite.
    pub keys: i64,
    /// Bytes of keys plus values gained (or, negative, freed).
    pub bytes: i64,
    /// 1 when the key gains an expiry time (a new expiring key, or an expiring overwrite of a
    /// key that had none), -1 when it loses one (a delete of an expiring key, or an overwrite
    /// that never expires), 0 otherwise: a log keeps an expiring key's time beside it.
    pub expiring: i64,
}

/// Why a write failed. After `Full`, `DiskBudget` and `DiskFull` nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The write would take the store over its byte limit.
    Full { needed: u64, used: u64, limit: u64 },
    /// The write would take the log, with the room kept to compact it, over its disk budget,
    /// even after compacting: `needed` bytes of the `limit`.
    DiskBudget { needed: u64, limit: u64 },
    /// The disk holding the log is full; the message names the file.
    DiskFull(String),
    /// Writing or syncing the log failed; the message names the file and the cause.
    Io(String),
}

impl StoreError {
    /// True for the errors a client should see as "storage full".
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            StoreError::Full { .. } | StoreError::DiskBudget { .. } | StoreError::DiskFull(_)
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full {
                needed,
                used,
                limit,
            } => write!(
                f,
                "storage full: {used} of {limit} bytes used, the write needs {needed} more"
            ),
            StoreError::DiskBudget { needed, limit } => write!(
                f,
                "storage full: the log would need {needed} bytes on disk, room to compact it \
                 included, over its budget of {limit}"
            ),
            StoreError::DiskFull(message) => write!(f, "storage full: disk full: {message}"),
            StoreError::Io(message) => write!(f, "storage i/o error: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What [`Engine::for_each`] calls with each entry: its key, when it expires, its value.
pub type EntryVisitor<'a> = dyn FnMut(&[u8], Option<u64>, &[u8]) + 'a;

/// What a backend needs of its storage. Implementations are shared by every connection thread.
pub trait Engine: Send + Sync {
    /// The value stored under `key`, unless it has expired.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// The value stored under `key` and when it expires (`None`: never), unless it has expired.
    fn get_expiring(&self, key: &[u8]) -> Option<(Vec<u8>, Option<u64>)>;
    /// Stores `value` under `key`, replacing what was there.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; true if it was stored.
    fn delete(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// Keys and bytes stored.
    fn size(&self) -> StoreSize;
    /// Like [`put`](Engine::put), but may return before the write is as durable as the store
    /// promises; [`settle`](Engine::settle) waits for that. A batch of writes settled once
    /// shares one wait (one fsync, for a log synced on every write).
    fn put_unsettled(&self, key: &[u8], value: &[u8]) -> Result<Unsettled, StoreError> {
        self.put(key, value).map(|()| Unsettled::NONE)
    }
    /// Like [`put_unsettled`](Engine::put_unsettled), for a value that expires at
    /// `expires_at` (Unix time in milliseconds; `None`: never, as a plain put). A store that
    /// cannot keep the time refuses the write rather than keep the key for ever.
    fn put_expiring_unsettled(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
    ) -> Result<Unsettled, StoreError> {
        match expires_at {
            None => self.put_unsettled(key, value),
            Some(_) => Err(StoreError::Io(
                "this store cannot keep a key's time to live".into(),
            )),
        }
    }
    /// Like [`delete`](Engine::delete), but settled later, as [`put_unsettled`](Engine::put_unsettled).
    fn delete_unsettled(&self, key: &[u8]) -> Result<(bool, Unsettled), StoreError> {
        self.delete(key).map(|found| (found, Unsettled::NONE))
    }
    /// Returns once every write up to `writes` is as durable as the store promises.
    fn settle(&self, _writes: Unsettled) -> Result<(), StoreError> {
        Ok(())
    }
    /// Calls `visit` with every key, when it expires and its value, expired or not, a part of
    /// the store at a time (writers of that part wait meanwhile).
    fn for_each(&self, visit: &mut EntryVisitor<'_>);
    /// How many parts [`for_each_key_in`](Engine::for_each_key_in) cuts the store into: a
    /// scan walks them one at a time, so that one step costs one part, not the whole store.
    fn parts(&self) -> usize {
        1
    }
    /// Calls `visit` with every key of part `part` (below [`parts`](Engine::parts)) and when
    /// it expires, expired or not; the same key is always in the same part.
    fn for_each_key_in(&self, part: usize, visit: &mut dyn FnMut(&[u8], Option<u64>)) {
        if part == 0 {
            self.for_each(&mut |key, expires_at, _| visit(key, expires_at));
        }
    }
    /// Keys that have an expiry time, expired or not.
    fn expiring_keys(&self) -> u64 {
        let mut expiring = 0;
        self.for_each(&mut |_, expires_at, _| expiring += u64::from(expires_at.is_some()));
        expiring
    }
    /// Damaged last records found in the store's log when it opened: 0 or 1 (a whole record
    /// that failed its checks, cut off and saved beside the log). 0 for a store without a log.
    fn damaged_records(&self) -> u64 {
        0
    }
}

/// Writes not yet known to be durable: the point in the store's history they reach. Later
/// writes compare greater, so a batch keeps the greatest and settles it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Unsettled(pub u64);

impl Unsettled {
    /// Nothing to wait for.
    pub const NONE: Unsettled = Unsettled(0);
}

/// A key and its value in one allocation: a LEB128 varint of the key's length shifted left by
/// one, its low bit set when the key expires; the key; for an expiring key the time it expires
/// (Unix milliseconds, u64 little-endian); then the value. One allocation per key instead of two
/// halves what malloc adds in headers and rounding, and a table slot holds one fat pointer
/// instead of two; a key that never expires pays nothing for the keys that do.
///
/// An entry hashes and compares as its key alone, and borrows as its key, so that a shard is a
/// set of entries that can be searched with a plain `&[u8]` key.
struct Entry(Box<[u8]>);

impl Entry {
    fn new(key: &[u8], value: &[u8], expires_at: Option<u64>) -> Entry {
        let tag = (key.len() << 1) | usize::from(expires_at.is_some());
        let expiry_len = if expires_at.is_some() { EXPIRY_LEN } else { 0 };
        let mut bytes = Vec::with_capacity(varint_len(tag) + key.len() + expiry_len + value.len());
        put_varint(&mut bytes, tag);
        bytes.extend_from_slice(key);
        if let Some(at) = expires_at {
            bytes.extend_from_slice(&at.to_le_bytes());
        }
        bytes.extend_from_slice(value);
        // The capacity is exact, so this does not reallocate.
        Entry(bytes.into_boxed_slice())
    }

    /// The key, when it expires, and the value.
    #[inline]
    fn parts(&self) -> (&[u8], Option<u64>, &[u8]) {
        let (tag, header) = get_varint(&self.0);
        let (key, rest) = self.0[header..].split_at(tag >> 1);
        if tag & 1 == 0 {
            return (key, None, rest);
        }
        let (at, value) = rest.split_at(EXPIRY_LEN);
        let at = u64::from_le_bytes(at.try_into().expect("eight bytes"));
        (key, Some(at), value)
    }

    #[inline]
    fn key_and_value(&self) -> (&[u8], &[u8]) {
        let (key, _, value) = self.parts();
        (key, value)
    }

    #[inline]
    fn key(&self) -> &[u8] {
        let (tag, header) = get_varint(&self.0);
        &self.0[header..header + (tag >> 1)]
    }

    #[inline]
    fn expires_at(&self) -> Option<u64> {
        self.parts().1
    }

    /// The value, unless the key expired at or before `now` (which is read only for a key that
    /// expires).
    #[inline]
    fn live_value(&self, now: impl FnOnce() -> u64) -> Option<&[u8]> {
        match self.parts() {
            (_, Some(at), _) if at <= now() => None,
            (_, _, value) => Some(value),
        }
    }

    /// Replaces the value and expiry time in place, if they take the room the old ones took
    /// (a value of the same length, an expiry time or none as before); whether it did. An
    /// overwrite of a key with a value of its size, the usual update, then neither allocates
    /// nor frees.
    fn overwrite(&mut self, value: &[u8], expires_at: Option<u64>) -> bool {
        let (tag, header) = get_varint(&self.0);
        if (tag & 1 == 1) != expires_at.is_some() {
            return false;
        }
        let at = header + (tag >> 1);
        let value_at = at + expires_at.map_or(0, |_| EXPIRY_LEN);
        if self.0.len() - value_at != value.len() {
            return false;
        }
        if let Some(expires_at) = expires_at {
            self.0[at..value_at].copy_from_slice(&expires_at.to_le_bytes());
        }
        self.0[value_at..].copy_from_slice(value);
        true
    }

    /// Bytes of key plus value, as the store counts them.
    #[inline]
    fn payload_len(&self) -> u64 {
        let (key, value) = self.key_and_value();
        (key.len() + value.len()) as u64
    }
}

/// Bytes of an expiring entry's expiry time.
const EXPIRY_LEN: usize = 8;

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The number at the start of `bytes` and how many bytes it took. `bytes` always starts with a
/// varint [`put_varint`] wrote, so it is well formed.
#[inline]
fn get_varint(bytes: &[u8]) -> (usize, usize) {
    // Every lookup compares keys through this, so the usual case, a key shorter than 128 bytes,
    // is kept small enough to inline and the rest is out of line.
    match bytes.first() {
        Some(&byte) if byte < 0x80 => (byte as usize, 1),
        _ => get_long_varint(bytes),
    }
}

#[cold]
#[inline(never)]
fn get_long_varint(bytes: &[u8]) -> (usize, usize) {
    let mut n = 0usize;
    for (i, &byte) in bytes.iter().enumerate() {
        n |= ((byte & 0x7f) as usize) << (7 * i);
        if byte < 0x80 {
            return (n, i + 1);
        }
    }
    unreachable!("an entry starts with a complete varint")
}

/// A shard's entries, in a table that is handed each key's hash: so a key is hashed once per
/// request, for its shard and its slot both, and a write finds its slot in one probe.
type Shard = RwLock<HashTable<Entry>>;

/// An in-memory engine: a hash map cut into shards, each behind its own lock, so that
/// connections working on different keys rarely wait for each other.
pub struct MemStore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// The shard of each slice of the hash space; see [`slice_owners`].
    slice_owners: Box<[u8; SLICES]>,
    keys: AtomicU64,
    bytes: AtomicU64,
    /// Keys that have an expiry time, expired or not.
    expiring: AtomicU64,
    max_bytes: Option<u64>,
}

const SHARDS: usize = 64;
/// A key's shard is picked by the top `SLICE_BITS` bits of its hash: 4096 slices, 44 to 88 a
/// shard.
const SLICE_BITS: u32 = 12;
const SLICES: usize = 1 << SLICE_BITS;

/// Which shard each slice of the hash space goes to. Shard `i` gets a share proportional to
/// 2^(i/64), so the shards' sizes are spread evenly, on a log scale, over one doubling.
///
/// A shard's table doubles its slots when they are 7/8 full, so just after it grew it is less
/// than half full. With equal shards, all 64 would grow at about the same key count and the
/// store's table overhead per key would nearly halve between just after one doubling and just
/// before the next. Spread like this, at any key count the shards sit at every point of their
/// growth cycle, and the overhead stays near its average over the cycle. The price: the largest
/// shard takes twice the traffic of the smallest, so two threads meet on a shard's lock about 4%
/// more often than with equal shards (1 in 61.6 instead of 1 in 64).
fn slice_owners() -> Box<[u8; SLICES]> {
    let weights: Vec<f64> = (0..SHARDS)
        .map(|i| (i as f64 / SHARDS as f64).exp2())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut owners = Vec::with_capacity(SLICES);
    let mut cumulative = 0.0;
    for (shard, weight) in weights.iter().enumerate() {
        cumulative += weight;
        let end =
            ((cumulative / total * SLICES as f64).round() as usize).clamp(owners.len(), SLICES);
        owners.resize(end, shard as u8);
    }
    owners.resize(SLICES, (SHARDS - 1) as u8);
    owners
        .into_boxed_slice()
        .try_into()
        .expect("exactly SLICES owners")
}

/// A poisoned lock means a thread panicked mid-update of a map; the map itself is still a valid
/// map, so we keep serving rather than take the whole node down.
macro_rules! lock {
    ($lock:expr, $how:ident) => {
        match $lock.$how() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    };
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new(None)
    }
}

impl MemStore {
    /// An empty store holding at most `max_bytes` of keys plus values (no limit if `None`).
    pub fn new(max_bytes: Option<u64>) -> MemStore {
        MemStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
            slice_owners: slice_owners(),
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            expiring: AtomicU64::new(0),
            max_bytes,
        }
    }

    /// `key`'s shard, and its hash within the shard's table.
    fn shard(&self, key: &[u8]) -> (&Shard, u64) {
        let hash = self.hasher.hash_one(key);
        let slice = hash >> (u64::BITS - SLICE_BITS);
        // The top bits chose the shard, so they tell its keys apart badly; the table reads a
        // slot's tag off its hash's top bits and the slot's place off the bottom ones.
        let in_shard = hash.rotate_right(SLICE_BITS);
        (
            &self.shards[self.slice_owners[slice as usize] as usize],
            in_shard,
        )
    }

    /// The hash within its shard of a stored entry, for a table that grows.
    fn rehash(&self) -> impl Fn(&Entry) -> u64 + '_ {
        |entry| self.shard(entry.key()).1
    }

    /// Stores `value` under `key` if it fits, calling `log` with the change first, while no
    /// other write to the key can run: so a log sees each key's writes in the order the map
    /// does, and a write `log` refuses changes nothing.
    pub fn put_logged<T>(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
        log: impl FnOnce(SizeChange) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (shard, hash) = self.shard(key);
        let mut shard = lock!(shard, write);
        let added = (key.len() + value.len()) as u64;
        let slot = shard.entry(hash, |entry| entry.key() == key, self.rehash());
        let existing = match &slot {
            Slot::Occupied(found) => {
                let entry = found.get();
                Some((entry.payload_len(), entry.expires_at().is_some()))
            }
            Slot::Vacant(_) => None,
        };
        let removed = existing.map_or(0, |(payload, _)| payload);
        let was_expiring = existing.is_some_and(|(_, expiring)| expiring);
        // The shard lock keeps `removed` stable; the byte count is shared by all shards, so the
        // limit is checked and the new total reserved in one atomic step.
        let limit = self.max_bytes.unwrap_or(u64::MAX);
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = (used + added).saturating_sub(removed);
                (after <= limit).then_some(after)
            })
            .map_err(|used| StoreError::Full {
                needed: added.saturating_sub(removed),
                used,
                limit,
            })?;
        let change = SizeChange {
            keys: i64::from(existing.is_none()),
            bytes: added as i64 - removed as i64,
            expiring: i64::from(expires_at.is_some()) - i64::from(was_expiring),
        };
        let logged = match log(change) {
            Ok(logged) => logged,
            Err(e) => {
                self.bytes.fetch_add(removed, Ordering::AcqRel);
                self.bytes.fetch_sub(added, Ordering::AcqRel);
                return Err(e);
            }
        };
        match slot {
            Slot::Occupied(mut found) => {
                let entry = found.get_mut();
                if !entry.overwrite(value, expires_at) {
                    *entry = Entry::new(key, value, expires_at);
                }
            }
            Slot::Vacant(free) => {
                free.insert(Entry::new(key, value, expires_at));
                self.keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count_expiring(was_expiring, expires_at.is_some());
        Ok(logged)
    }

    /// Removes `key` if it is stored, calling `log` first (see [`MemStore::put_logged`]);
    /// `None` if the key was absent, in which case `log` is not called.
    pub fn delete_logged<T>(
        &self,
        key: &[u8],
        log: impl FnOnce(SizeChange) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let (shard, hash) = self.shard(key);
        let mut shard = lock!(shard, write);
        let Ok(found) = shard.find_entry(hash, |entry| entry.key() == key) else {
            return Ok(None);
        };
        let (freed, expiring) = (
            found.get().payload_len(),
            found.get().expires_at().is_some(),
        );
        let logged = log(SizeChange {
            keys: -1,
            bytes: -(freed as i64),
            expiring: -i64::from(expiring),
        })?;
        found.remove();
        self.keys.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        self.count_expiring(expiring, false);
        Ok(Some(logged))
    }

    /// Stores `value` under `key`, expiring at `expires_at`, whatever the byte limit:
    /// replaying a log must restore what was acknowledged even if the limit has since been
    /// lowered.
    pub fn load(&self, key: &[u8], value: &[u8], expires_at: Option<u64>) {
        let (shard, hash) = self.shard(key);
        let mut shard = lock!(shard, write);
        let added = (key.len() + value.len()) as u64;
        let entry = Entry::new(key, value, expires_at);
        let was_expiring = match shard.entry(hash, |e| e.key() == key, self.rehash()) {
            Slot::Occupied(mut found) => {
                let old = std::mem::replace(found.get_mut(), entry);
                self.bytes.fetch_add(added, Ordering::Relaxed);
                self.bytes.fetch_sub(old.payload_len(), Ordering::Relaxed);
                old.expires_at().is_some()
            }
            Slot::Vacant(free) => {
                free.insert(entry);
                self.keys.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(added, Ordering::Relaxed);
                false
            }
        };
        self.count_expiring(was_expiring, expires_at.is_some());
    }

    /// Keys that have an expiry time, expired or not: a log that keeps each key's time needs
    /// the count to know what its live set takes.
    pub fn expiring_keys(&self) -> u64 {
        self.expiring.load(Ordering::Relaxed)
    }

    /// Keeps the count of expiring keys as a key goes from expiring (`before`) or not to
    /// expiring (`after`) or not; the caller holds the key's shard.
    fn count_expiring(&self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => {
                self.expiring.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.expiring.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Calls `visit` with every key, when it expires and its value, expired or not, one shard
    /// at a time; a shard's writers wait while it is visited. Stops at the first error.
    pub fn try_for_each<E>(
        &self,
        mut visit: impl FnMut(&[u8], Option<u64>, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for shard in self.shards.iter() {
            for entry in lock!(shard, read).iter() {
                let (key, expires_at, value) = entry.parts();
                visit(key, expires_at, value)?;
            }
        }
        Ok(())
    }
}

impl Engine for MemStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let (shard, hash) = self.shard(key);
        lock!(shard, read)
            .find(hash, |entry| entry.key() == key)
            .and_then(|entry| entry.live_value(crate::expiry::now_ms))
            .map(<[u8]>::to_vec)
    }

    fn get_expiring(&self, key: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
        let (shard, hash) = self.shard(key);
        let shard = lock!(shard, read);
        let entry = shard.find(hash, |entry| entry.key() == key)?;
        let value = entry.live_value(crate::expiry::now_ms)?;
        Some((value.to_vec(), entry.expires_at()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put_logged(key, value, None, |_| Ok(()))
    }

    fn put_expiring_unsettled(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<u64>,
    ) -> Result<Unsettled, StoreError> {
        self.put_logged(key, value, expires_at, |_| Ok(Unsettled::NONE))
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.delete_logged(key, |_| Ok(()))?.is_some())
    }

    fn size(&self) -> StoreSize {
        StoreSize {
            keys: self.keys.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn for_each(&self, visit: &mut EntryVisitor<'_>) {
        let _ = self.try_for_each(|key, expires_at, value| {
            visit(key, expires_at, value);
            Ok::<(), ()>(())
        });
    }

    fn parts(&self) -> usize {
        SHARDS
    }

    fn expiring_keys(&self) -> u64 {
        MemStore::expiring_keys(self)
    }

    fn for_each_key_in(&self, part: usize, visit: &mut dyn FnMut(&[u8], Option<u64>)) {
        if let Some(shard) = self.shards.get(part) {
            for entry in lock!(shard, read).iter() {
                let (key, expires_at, _) = entry.parts();
                visit(key, expires_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn put_get_delete_and_size() {
        let store = MemStore::default();
        assert_eq!(store.get(b"k"), None);
        store.put(b"k", b"value").unwrap();
        assert_eq!(store.get(b"k").as_deref(), Some(&b"value"[..]));
        assert_eq!(store.size(), StoreSize { keys: 1, bytes: 6 });
        store.put(b"k", b"v2").unwrap();
        assert_eq!(store.get(b"k").as_deref(), Some(&b"v2"[..]));
        assert_eq!(store.size(), StoreSize { keys: 1, bytes: 3 });
        assert_eq!(store.delete(b"k"), Ok(true));
        assert_eq!(store.delete(b"k"), Ok(false));
        assert_eq!(store.size(), StoreSize::default());
    }

    #[test]
    fn keys_of_every_varint_length_round_trip() {
        let store = MemStore::default();
        // 127 and 128 straddle the one-byte length; 16384 needs three bytes.
        let lengths = [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000];
        for &len in &lengths {
            let key = vec![len as u8 ^ 0x5a; len];
            let value = format!("value of a {len}-byte key");
            store.put(&key, value.as_bytes()).unwrap();
        }
        for &len in &lengths {
            let key = vec![len as u8 ^ 0x5a; len];
            let value = format!("value of a {len}-byte key");
            assert_eq!(
                store.get(&key),
                Some(value.into_bytes()),
                "key of {len} bytes"
            );
        }
        let mut visited = 0;
        store
            .try_for_each(|key, _, value| {
                visited += 1;
                assert_eq!(
                    value,
                    format!("value of a {}-byte key", key.len()).as_bytes()
                );
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(visited, lengths.len());
    }

    #[test]
    fn every_key_is_found_after_its_table_grew() {
        let store = MemStore::default();
        let keys: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| format!("grown-{i}").into_bytes())
            .collect();
        for key in &keys {
            store.put(key, b"first").unwrap();
        }
        // Each shard's table doubled several times on the way: an entry moved by a growth must
        // be where a lookup of its key looks, for reads, overwrites and deletes alike.
        for key in &keys {
            assert_eq!(store.get(key).as_deref(), Some(&b"first"[..]));
            store.put(key, b"second").unwrap();
        }
        assert_eq!(store.size().keys, keys.len() as u64);
        for key in &keys {
            assert_eq!(store.get(key).as_deref(), Some(&b"second"[..]));
            assert_eq!(store.delete(key), Ok(true));
        }
        assert_eq!(store.size(), StoreSize::default());
    }

    #[test]
    fn an_entry_keeps_its_key_apart_from_its_value() {
        let entry = Entry::new(b"key", b"value", None);
        let same_key = Entry::new(b"key", b"another value", Some(7));
        assert_eq!(same_key.key(), b"key");
        assert_ne!(entry.key(), Entry::new(b"ke", b"yvalue", None).key());
        assert_eq!(entry.key_and_value(), (&b"key"[..], &b"value"[..]));
        assert_eq!(entry.payload_len(), 8);
    }

    #[test]
    fn shard_shares_spread_over_one_doubling() {
        let owners = slice_owners();
        let mut shares = [0usize; SHARDS];
        for &owner in owners.iter() {
            shares[owner as usize] += 1;
        }
        assert!(owners.windows(2).all(|w| w[0] <= w[1]));
        for (shard, &share) in shares.iter().enumerate() {
            let ideal = SLICES as f64 * (shard as f64 / SHARDS as f64).exp2()
                / (0..SHARDS)
                    .map(|i| (i as f64 / SHARDS as f64).exp2())
                    .sum::<f64>();
            assert!(
                (share as f64 - ideal).abs() <= 1.0,
                "shard {shard}: {share} slices, ideally {ideal:.1}"
            );
        }
        let (smallest, largest) = (shares[0] as f64, shares[SHARDS - 1] as f64);
        assert!(
            (1.9..2.1).contains(&(largest / smallest)),
            "{smallest} to {largest}"
        );
    }

    #[test]
    fn empty_values_and_binary_keys() {
        let store = MemStore::default();
        store.put(&[0, 255, 10], b"").unwrap();
        assert_eq!(store.get(&[0, 255, 10]), Some(Vec::new()));
    }

    #[test]
    fn a_full_store_refuses_and_keeps_what_it_had() {
        let store = MemStore::new(Some(10));
        store.put(b"abc", b"defg").unwrap(); // 7 bytes
        let err = store.put(b"x", b"yyyy").unwrap_err(); // would be 12
        assert!(matches!(err, StoreError::Full { limit: 10, .. }));
        assert_eq!(store.get(b"abc").as_deref(), Some(&b"defg"[..]));
        assert_eq!(store.get(b"x"), None);
        // Replacing a value with a shorter one is always allowed.
        store.put(b"abc", b"d").unwrap();
        store.put(b"x", b"yyyy").unwrap();
        assert_eq!(store.size(), StoreSize { keys: 2, bytes: 9 });
    }

    #[test]
    fn concurrent_writers_keep_counts_exact() {
        let store = Arc::new(MemStore::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..2_000u32 {
                        let key = format!("{t}-{i}");
                        store.put(key.as_bytes(), b"12345").unwrap();
                        if i % 2 == 0 {
                            assert_eq!(store.delete(key.as_bytes()), Ok(true));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let size = store.size();
        assert_eq!(size.keys, 4_000);
        let key_bytes: u64 = (0..4)
            .flat_map(|t| {
                (0..2_000u32)
                    .filter(|i| i % 2 == 1)
                    .map(move |i| format!("{t}-{i}").len() as u64)
            })
            .sum();
        assert_eq!(size.bytes, key_bytes + 4_000 * 5);
    }

    #[test]
    fn a_refused_log_write_changes_nothing() {
        let store = MemStore::new(Some(100));
        store.put(b"k", b"old").unwrap();
        let refused = StoreError::Io("the disk went away".into());
        let err = store
            .put_logged(b"k", b"new value", None, |_| Err::<(), _>(refused.clone()))
            .unwrap_err();
        assert_eq!(err, refused);
        assert_eq!(store.get(b"k").as_deref(), Some(&b"old"[..]));
        assert_eq!(store.size(), StoreSize { keys: 1, bytes: 4 });
        let err = store
            .delete_logged(b"k", |_| Err::<(), _>(refused.clone()))
            .unwrap_err();
        assert_eq!(err, refused);
        assert_eq!(store.get(b"k").as_deref(), Some(&b"old"[..]));
        // An absent key is not logged at all.
        assert_eq!(
            store.delete_logged(b"absent", |_| -> Result<(), StoreError> {
                panic!("logged a delete of an absent key")
            }),
            Ok(None)
        );
    }

    #[test]
    fn a_logged_write_is_told_how_it_changes_the_size() {
        let store = MemStore::default();
        let mut changes = Vec::new();
        let mut note = |change| {
            changes.push(change);
            Ok::<(), StoreError>(())
        };
        store.put_logged(b"key", b"value", None, &mut note).unwrap();
        store.put_logged(b"key", b"v", Some(1), &mut note).unwrap();
        store.put_logged(b"key", b"vv", Some(2), &mut note).unwrap();
        store
            .put_logged(b"key", b"longer value", None, &mut note)
            .unwrap();
        store.delete_logged(b"key", &mut note).unwrap();
        store.delete_logged(b"key", &mut note).unwrap();
        store.put_logged(b"new", b"v", Some(3), &mut note).unwrap();
        store.delete_logged(b"new", &mut note).unwrap();
        let change = |keys, bytes, expiring| SizeChange {
            keys,
            bytes,
            expiring,
        };
        assert_eq!(
            changes,
            [
                change(1, 8, 0),
                change(0, -4, 1),
                change(0, 1, 0),
                change(0, 10, -1),
                change(-1, -15, 0),
                change(1, 4, 1),
                change(-1, -4, -1)
            ]
        );
        assert_eq!(store.size(), StoreSize::default());
        assert_eq!(store.expiring_keys(), 0);
    }

    #[test]
    fn the_expiring_key_count_follows_puts_loads_deletes_and_refused_writes() {
        let store = MemStore::new(Some(20));
        store.load(b"a", b"1", Some(5));
        store.load(b"a", b"2", Some(6));
        store.load(b"b", b"3", None);
        assert_eq!(store.expiring_keys(), 1);
        store.load(b"b", b"4", Some(7));
        assert_eq!(store.expiring_keys(), 2);
        store.load(b"a", b"5", None);
        assert_eq!(store.expiring_keys(), 1);
        store.put_expiring_unsettled(b"c", b"6", Some(8)).unwrap();
        assert_eq!(store.expiring_keys(), 2);
        // A write its log refuses, or one over the byte limit, changes no count.
        let refused = StoreError::Io("the disk went away".into());
        let err = store
            .put_logged(b"a", b"7", Some(9), |_| Err::<(), _>(refused.clone()))
            .unwrap_err();
        assert_eq!(err, refused);
        assert!(matches!(
            store.put_expiring_unsettled(b"d", &[0; 30], Some(9)),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(
            store.delete_logged(b"b", |_| Err::<(), _>(refused.clone())),
            Err(refused)
        );
        assert_eq!(store.expiring_keys(), 2);
        assert_eq!(store.delete(b"b"), Ok(true));
        assert_eq!(store.delete(b"a"), Ok(true));
        assert_eq!(store.expiring_keys(), 1);
        store.put(b"c", b"kept").unwrap();
        assert_eq!(store.expiring_keys(), 0);
    }

    #[test]
    fn load_ignores_the_limit_and_keeps_counts() {
        let store = MemStore::new(Some(4));
        store.load(b"key", b"long value", None);
        store.load(b"key", b"v", None);
        store.load(b"other", b"xy", Some(u64::MAX));
        assert_eq!(store.size(), StoreSize { keys: 2, bytes: 11 });
        let mut seen = Vec::new();
        store
            .try_for_each(|k, _, v| {
                seen.push((k.to_vec(), v.to_vec()));
                Ok::<(), ()>(())
            })
            .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (b"key".to_vec(), b"v".to_vec()),
                (b"other".to_vec(), b"xy".to_vec())
            ]
        );
    }

    #[test]
    fn an_expired_key_reads_as_absent_and_is_still_counted_until_removed() {
        let store = MemStore::default();
        let now = crate::expiry::now_ms();
        store
            .put_expiring_unsettled(b"gone", b"old", Some(now - 1))
            .unwrap();
        store
            .put_expiring_unsettled(b"later", b"soon", Some(now + 60_000))
            .unwrap();
        store.put(b"kept", b"for ever").unwrap();
        assert_eq!(store.get(b"gone"), None);
        assert_eq!(store.get_expiring(b"gone"), None);
        assert_eq!(
            store.get_expiring(b"later"),
            Some((b"soon".to_vec(), Some(now + 60_000)))
        );
        assert_eq!(
            store.get_expiring(b"kept"),
            Some((b"for ever".to_vec(), None))
        );
        // Bytes are keys plus values: the expiry time is not counted.
        assert_eq!(
            store.size(),
            StoreSize {
                keys: 3,
                bytes: 4 + 3 + 5 + 4 + 4 + 8
            }
        );
        let mut seen = Vec::new();
        for part in 0..store.parts() {
            store.for_each_key_in(part, &mut |key, at| seen.push((key.to_vec(), at)));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                (b"gone".to_vec(), Some(now - 1)),
                (b"kept".to_vec(), None),
                (b"later".to_vec(), Some(now + 60_000))
            ]
        );
        // A plain put of an expiring key makes it persistent, as SET does.
        store.put(b"later", b"now kept").unwrap();
        assert_eq!(
            store.get_expiring(b"later"),
            Some((b"now kept".to_vec(), None))
        );
        assert_eq!(store.delete(b"gone"), Ok(true));
    }

    #[test]
    fn expiring_keys_of_every_varint_length_round_trip() {
        let store = MemStore::default();
        // The flag takes the tag's low bit: 63 and 64 straddle its one-byte form.
        for len in [1usize, 63, 64, 8_191, 8_192, 70_000] {
            let key = vec![len as u8 ^ 0x33; len];
            store
                .put_expiring_unsettled(&key, b"v", Some(u64::MAX - len as u64))
                .unwrap();
            assert_eq!(
                store.get_expiring(&key),
                Some((b"v".to_vec(), Some(u64::MAX - len as u64))),
                "key of {len} bytes"
            );
            let entry = Entry::new(&key, b"value", Some(5));
            assert_eq!(entry.parts(), (&key[..], Some(5), &b"value"[..]));
            assert_eq!(entry.key(), &key[..]);
            assert_eq!(entry.payload_len(), len as u64 + 5);
        }
    }

    #[test]
    fn an_entry_is_overwritten_in_place_only_when_the_new_value_takes_the_same_room() {
        let mut entry = Entry::new(b"key", b"12345", None);
        let before = entry.0.as_ptr();
        assert!(entry.overwrite(b"abcde", None));
        assert_eq!(entry.parts(), (&b"key"[..], None, &b"abcde"[..]));
        assert_eq!(entry.0.as_ptr(), before, "same allocation");
        // Another length, or an expiry time gained or lost: a new entry is needed.
        assert!(!entry.overwrite(b"abcdef", None));
        assert!(!entry.overwrite(b"abcde", Some(7)));
        assert_eq!(
            entry.parts(),
            (&b"key"[..], None, &b"abcde"[..]),
            "unchanged"
        );
        let mut expiring = Entry::new(b"key", b"12345", Some(5));
        assert!(expiring.overwrite(b"vwxyz", Some(9)));
        assert_eq!(expiring.parts(), (&b"key"[..], Some(9), &b"vwxyz"[..]));
        assert!(!expiring.overwrite(b"vwxyz", None));
        assert!(!expiring.overwrite(b"v", Some(11)));
        assert_eq!(expiring.parts(), (&b"key"[..], Some(9), &b"vwxyz"[..]));

        // Through the store: every kind of overwrite reads back and counts right.
        let store = MemStore::default();
        store.put(b"k", b"aaaa").unwrap();
        store.put(b"k", b"bbbb").unwrap();
        assert_eq!(store.get(b"k").as_deref(), Some(&b"bbbb"[..]));
        store
            .put_expiring_unsettled(b"k", b"cccc", Some(u64::MAX))
            .unwrap();
        assert_eq!(
            store.get_expiring(b"k"),
            Some((b"cccc".to_vec(), Some(u64::MAX)))
        );
        assert_eq!(store.expiring_keys(), 1);
        store
            .put_expiring_unsettled(b"k", b"dddd", Some(u64::MAX - 1))
            .unwrap();
        assert_eq!(
            store.get_expiring(b"k"),
            Some((b"dddd".to_vec(), Some(u64::MAX - 1)))
        );
        store.put(b"k", b"e").unwrap();
        assert_eq!(store.get_expiring(b"k"), Some((b"e".to_vec(), None)));
        assert_eq!(store.expiring_keys(), 0);
        assert_eq!(store.size(), StoreSize { keys: 1, bytes: 2 });
    }
}
