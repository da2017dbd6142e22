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

/// Why a write was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The write would take the store over its byte limit.
    Full { needed: u64, used: u64, limit: u64 },
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
    fn delete(&self, key: &[u8]) -> bool;
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

impl Engine for MemStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock!(self.shard(key), read).get(key).map(|v| v.to_vec())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
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
        match shard.get_mut(key) {
            Some(slot) => *slot = value.into(),
            None => {
                shard.insert(key.into(), value.into());
                self.keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> bool {
        let removed = lock!(self.shard(key), write).remove(key);
        match removed {
            Some(value) => {
                self.keys.fetch_sub(1, Ordering::Relaxed);
                self.bytes
                    .fetch_sub((key.len() + value.len()) as u64, Ordering::Relaxed);
                true
            }
            None => false,
        }
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
        assert!(store.delete(b"k"));
        assert!(!store.delete(b"k"));
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
                            store.delete(key.as_bytes());
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
}
