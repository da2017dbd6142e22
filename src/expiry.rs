//! Keys with a time to live: the clock expiry is measured by, and the sweep that removes expired
//! keys from a backend.
//!
//! An expiring key carries the absolute time it expires, in Unix milliseconds, which the head of
//! its chain computes once from the client's relative or absolute time to live and passes down the
//! chain, into the log and through state transfers unchanged: every copy expires at the same
//! instant, whoever's clock reads it. A key at or past its time reads as absent everywhere
//! (GET, UPDATE, SCAN) before anything removes it; the head's sweep then deletes it through the
//! chain like any other delete, so that memory and the log follow.

use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::Engine;

/// Now, in Unix milliseconds (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// How long the sweep waits between steps that found little to do. One store part a step: a
/// MemStore's 64 parts are all visited every 3.2 s, each step a read of 1/64 of the store.
pub const STEP_PAUSE: Duration = Duration::from_millis(50);
/// The most keys one step deletes; a part with more is visited again at once, so memory held
/// by expired keys is given back as fast as deletes go, in steps that hold no part's lock long.
pub const MOST_PER_STEP: usize = 256;

/// Whether the node heads a key's chain.
pub type HeadTest<'a> = Box<dyn Fn(&[u8]) -> bool + 'a>;

/// What the sweep needs of the backend it runs in.
pub trait SweepHost: Send + Sync {
    /// Its store.
    fn store(&self) -> &dyn Engine;
    /// Which keys it heads in the view it serves by; `None` while it serves none.
    fn heads(&self) -> Option<HeadTest<'_>>;
    /// Deletes `keys` if they have expired, each through its chain as the head's own write
    /// (UPDATE delete-if-expired: under the key's lock, so a key written since is kept);
    /// how many it deleted.
    fn delete_expired(&self, keys: Vec<Vec<u8>>) -> u64;
}

/// A backend's sweep of expired keys: its stop switch and what it removed.
#[derive(Default)]
pub struct Sweeper {
    stopped: Mutex<bool>,
    wake: Condvar,
    /// Expired keys the sweep deleted (STATS `expired_removed`).
    pub removed: AtomicU64,
}

impl Sweeper {
    /// Stops [`run`] at its next pause.
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits `pause`, or less if stopped meanwhile; whether it is stopped.
    fn pause(&self, pause: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, pause, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *stopped
    }
}

/// The keys of store part `part` that expired at or before `now` and that `heads` says this
/// node heads, at most `most`, and whether there were more.
pub fn expired_in(
    store: &dyn Engine,
    part: usize,
    now: u64,
    heads: &dyn Fn(&[u8]) -> bool,
    most: usize,
) -> (Vec<Vec<u8>>, bool) {
    let mut found = Vec::new();
    let mut more = false;
    store.for_each_key_in(part, &mut |key, expires_at| {
        if expires_at.is_some_and(|at| at <= now) && heads(key) {
            if found.len() < most {
                found.push(key.to_vec());
            } else {
                more = true;
            }
        }
    });
    (found, more)
}

/// The sweep: walks the store a part at a time and deletes the expired keys this node heads,
/// until `sweeper` is stopped. Only heads sweep: their deletes go down the chain, so the other
/// copies follow, and a copy whose clock runs ahead never deletes on its own what its head
/// still serves.
pub fn run(host: &dyn SweepHost, sweeper: &Sweeper) {
    let mut part = 0;
    loop {
        let parts = host.store().parts().max(1);
        part %= parts;
        // A store with no key that expires is not walked: the walk costs a pass over every
        // key, which an idle node holding many keys would make twenty times a second.
        let (expired, more) = match host.heads() {
            Some(heads) if host.store().expiring_keys() > 0 => {
                expired_in(host.store(), part, now_ms(), &*heads, MOST_PER_STEP)
            }
            _ => (Vec::new(), false),
        };
        let asked = expired.len();
        let removed = if expired.is_empty() {
            0
        } else {
            host.delete_expired(expired)
        };
        sweeper
            .removed
            .fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        // A full step that removed what it found goes on with the same part at once; one the
        // chain refused (a view change, a member down) waits like an idle one.
        let busy = more && removed as usize == asked;
        if !busy {
            part += 1;
        }
        let pause = if busy { Duration::ZERO } else { STEP_PAUSE };
        if sweeper.pause(pause) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn a_step_lists_only_expired_keys_this_node_heads_and_says_when_there_are_more() {
        let store = MemStore::default();
        let now = now_ms();
        for i in 0..40u32 {
            let key = format!("k{i}");
            let at = if i % 2 == 0 { now - 1 } else { now + 60_000 };
            store
                .put_expiring_unsettled(key.as_bytes(), b"v", Some(at))
                .unwrap();
        }
        store.put(b"forever", b"v").unwrap();
        let heads_all = |_: &[u8]| true;
        let heads_low = |key: &[u8]| key < &b"k2"[..];
        let mut all = Vec::new();
        let mut low = Vec::new();
        for part in 0..store.parts() {
            let (keys, more) = expired_in(&store, part, now, &heads_all, usize::MAX);
            assert!(!more);
            all.extend(keys);
            low.extend(expired_in(&store, part, now, &heads_low, usize::MAX).0);
        }
        all.sort();
        let expected: Vec<Vec<u8>> = {
            let mut keys: Vec<Vec<u8>> = (0..40u32)
                .filter(|i| i % 2 == 0)
                .map(|i| format!("k{i}").into_bytes())
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(all, expected);
        assert!(low.iter().all(|key| key.as_slice() < &b"k2"[..]));
        assert_eq!(
            low.len(),
            expected
                .iter()
                .filter(|k| k.as_slice() < &b"k2"[..])
                .count()
        );
        // A bound below what a part holds: that many, and "more".
        let busiest = (0..store.parts())
            .max_by_key(|&part| {
                expired_in(&store, part, now, &heads_all, usize::MAX)
                    .0
                    .len()
            })
            .unwrap();
        let held = expired_in(&store, busiest, now, &heads_all, usize::MAX)
            .0
            .len();
        if held > 1 {
            let (keys, more) = expired_in(&store, busiest, now, &heads_all, 1);
            assert_eq!((keys.len(), more), (1, true));
        }
    }

    struct Host {
        store: MemStore,
        deleted: Mutex<Vec<Vec<u8>>>,
    }

    impl SweepHost for Host {
        fn store(&self) -> &dyn Engine {
            &self.store
        }
        fn heads(&self) -> Option<HeadTest<'_>> {
            Some(Box::new(|_| true))
        }
        fn delete_expired(&self, keys: Vec<Vec<u8>>) -> u64 {
            let mut removed = 0;
            for key in keys {
                if self.store.delete(&key).unwrap() {
                    removed += 1;
                    self.deleted.lock().unwrap().push(key);
                }
            }
            removed
        }
    }

    #[test]
    fn the_sweep_empties_the_store_of_expired_keys_and_stops_when_told() {
        let host = std::sync::Arc::new(Host {
            store: MemStore::default(),
            deleted: Mutex::new(Vec::new()),
        });
        let now = now_ms();
        // More than a step's worth in some parts.
        for i in 0..(MOST_PER_STEP as u32 * 80) {
            host.store
                .put_expiring_unsettled(&i.to_be_bytes(), b"v", Some(now - 1))
                .unwrap();
        }
        host.store.put(b"kept", b"v").unwrap();
        let sweeper = std::sync::Arc::new(Sweeper::default());
        let running = {
            let (host, sweeper) = (host.clone(), sweeper.clone());
            std::thread::spawn(move || run(&*host, &sweeper))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while host.store.size().keys > 1 {
            assert!(std::time::Instant::now() < deadline, "the sweep is stuck");
            std::thread::sleep(Duration::from_millis(20));
        }
        sweeper.stop();
        running.join().unwrap();
        assert_eq!(host.store.get(b"kept").as_deref(), Some(&b"v"[..]));
        assert_eq!(
            sweeper.removed.load(std::sync::atomic::Ordering::Relaxed),
            MOST_PER_STEP as u64 * 80
        );
    }
}
