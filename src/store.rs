//! The storage engine behind a backend: a narrow trait and an in-memory implementation.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// How much a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreSize {
    /// Number of keys.
    pub keys: u64,
    /// Bytes of keys plus values.
    pub bytes: u64,
}

/// Why a write failed. After `Full` and `DiskFull` nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The write would take the store over its byte limit.
    Full { needed: u64, used: u64, limit: u64 },
    /// The disk holding the log is full; the message names the file.
    DiskFull(String),
    /// Writing or syncing the log failed; the message names the file and the cause.
    Io(String),
}

impl StoreError {
    /// True for the errors a client should see as "storage full".
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. } | StoreError::DiskFull(_))
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
            StoreError::DiskFull(message) => write!(f, "storage full: disk full: {message}"),
            StoreError::Io(message) => write!(f, "storage i/o error: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What a backend needs of its storage. Implementations are shared by every connection thread.
pub trait Engine: Send + Sync {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Stores `value` under `key`, replacing what was there.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; true if it was stored.
    fn delete(&self, key: &[u8]) -> Result<bool, StoreError>;
    /// Keys and bytes stored.
    fn size(&self) -> StoreSize;
}

type Shard = RwLock<HashMap<Box<[u8]>, Box<[u8]>>>;

/// An in-memory engine: a hash map cut into shards, each behind its own lock, so that
/// connections working on different keys rarely wait for each other.
pub struct MemStore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    keys: AtomicU64,
    bytes: AtomicU64,
    max_bytes: Option<u64>,
}

const SHARDS: usize = 64;

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
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_bytes,
        }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Stores `value` under `key` if it fits, calling `log` first, while no other write to the
    /// key can run: so a log sees each key's writes in the order the map does, and a write
    /// `log` refuses changes nothing.
    pub fn put_logged<T>(
        &self,
        key: &[u8],
        value: &[u8],
        log: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut shard = lock!(self.shard(key), write);
        let added = (key.len() + value.len()) as u64;
        let removed = shard.get(key).map_or(0, |v| (key.len() + v.len()) as u64);
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
        let logged = match log() {
            Ok(logged) => logged,
            Err(e) => {
                self.bytes.fetch_add(removed, Ordering::AcqRel);
                self.bytes.fetch_sub(added, Ordering::AcqRel);
                return Err(e);
            }
        };
        match shard.get_mut(key) {
            Some(slot) => *slot = value.into(),
            None => {
                shard.insert(key.into(), value.into());
                self.keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(logged)
    }

    /// Removes `key` if it is stored, calling `log` first (see [`MemStore::put_logged`]);
    /// `None` if the key was absent, in which case `log` is not called.
    pub fn delete_logged<T>(
        &self,
        key: &[u8],
        log: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut shard = lock!(self.shard(key), write);
        if !shard.contains_key(key) {
            return Ok(None);
        }
        let logged = log()?;
        if let Some(value) = shard.remove(key) {
            self.keys.fetch_sub(1, Ordering::Relaxed);
            self.bytes
                .fetch_sub((key.len() + value.len()) as u64, Ordering::Relaxed);
        }
        Ok(Some(logged))
    }

    /// Stores `value` under `key` whatever the byte limit: replaying a log must restore what
    /// was acknowledged even if the limit has since been lowered.
    pub fn load(&self, key: &[u8], value: &[u8]) {
        let mut shard = lock!(self.shard(key), write);
        let added = (key.len() + value.len()) as u64;
        match shard.insert(key.into(), value.into()) {
            Some(old) => {
                self.bytes.fetch_add(added, Ordering::Relaxed);
                self.bytes
                    .fetch_sub((key.len() + old.len()) as u64, Ordering::Relaxed);
            }
            None => {
                self.keys.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(added, Ordering::Relaxed);
            }
        }
    }

    /// Calls `visit` with every key and value, one shard at a time; a shard's writers wait
    /// while it is visited. Stops at the first error.
    pub fn try_for_each<E>(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for shard in self.shards.iter() {
            for (key, value) in lock!(shard, read).iter() {
                visit(key, value)?;
            }
        }
        Ok(())
    }
}

impl Engine for MemStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock!(self.shard(key), read).get(key).map(|v| v.to_vec())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put_logged(key, value, || Ok(()))
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.delete_logged(key, || Ok(()))?.is_some())
    }

    fn size(&self) -> StoreSize {
        StoreSize {
            keys: self.keys.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
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
            .put_logged(b"k", b"new value", || Err::<(), _>(refused.clone()))
            .unwrap_err();
        assert_eq!(err, refused);
        assert_eq!(store.get(b"k").as_deref(), Some(&b"old"[..]));
        assert_eq!(store.size(), StoreSize { keys: 1, bytes: 4 });
        let err = store
            .delete_logged(b"k", || Err::<(), _>(refused.clone()))
            .unwrap_err();
        assert_eq!(err, refused);
        assert_eq!(store.get(b"k").as_deref(), Some(&b"old"[..]));
        // An absent key is not logged at all.
        assert_eq!(
            store.delete_logged(b"absent", || -> Result<(), StoreError> {
                panic!("logged a delete of an absent key")
            }),
            Ok(None)
        );
    }

    #[test]
    fn load_ignores_the_limit_and_keeps_counts() {
        let store = MemStore::new(Some(4));
        store.load(b"key", b"long value");
        store.load(b"key", b"v");
        store.load(b"other", b"xy");
        assert_eq!(store.size(), StoreSize { keys: 2, bytes: 11 });
        let mut seen = Vec::new();
        store
            .try_for_each(|k, v| {
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
}
