//! The process's budget for bytes in flight: requests still arriving and answers not yet
//! taken by their clients.
//!
//! Each connection's buffers already grow only with the bytes that actually arrive, so a peer
//! that announces a large frame and sends nothing costs nothing. What is left is many peers
//! that do send: 1,000 connections each halfway through an 8 MiB frame hold 4 GiB however well
//! each buffer is sized. So every byte a client connection holds beyond a small allowance
//! ([`FREE_PER_CONNECTION`], which ordinary requests and answers never pass) is counted against
//! one budget per process (`--max-inflight-bytes`, by default an eighth of the machine's
//! memory). A request buffer that would take the budget over its limit waits for room, up to
//! its frame's deadline, with its bytes left in the kernel (so the sender is slowed by TCP);
//! if no room comes, the request is refused BUSY and its connection closed. Answers already
//! made are counted but never wait (their memory is already taken): they make arriving
//! requests wait, and make batches hold one large value at a time.
//!
//! Connections between cluster members (those that presented the cluster token) are not
//! counted: a frontend's requests to its backends must never wait behind the very clients
//! whose bytes fill the budget.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

/// Bytes of buffers a connection may hold without counting them against the budget: ordinary
/// requests and answers stay under it, so they never wait.
pub const FREE_PER_CONNECTION: usize = 128 * 1024;

/// The least the default budget is, on a machine with little memory.
const LEAST_DEFAULT: u64 = 256 << 20;

/// A limit on bytes in flight, shared by every connection that counts against it.
///
/// The count is an atomic, so that the checks every batch makes ([`MemoryBudget::exhausted`])
/// and the common case of taking room that is there cost no lock; only a buffer that has to
/// wait for room takes the mutex, to sleep on the condition variable.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    /// Buffers waiting for room; room given back wakes them only if there are any. It and
    /// `used` are read and written in one total order (SeqCst), so a waiter that found no room
    /// is seen by the give_back that makes room.
    waiting: AtomicUsize,
    sleep: Mutex<()>,
    freed: Condvar,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            freed: Condvar::new(),
        })
    }

    /// The budget every server of this process counts against: [`set_process_limit`]'s, or
    /// [`default_limit`].
    pub fn process() -> Arc<MemoryBudget> {
        Arc::clone(PROCESS.get_or_init(|| MemoryBudget::new(default_limit())))
    }

    /// Most bytes it admits.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes counted now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// True when what is counted has reached the limit.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Takes `bytes` if they fit now.
    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                let after = used.saturating_add(bytes);
                (after <= self.limit).then_some(after)
            })
            .is_ok()
    }

    /// Takes `bytes` if they fit, waiting for room until `deadline` (`None`: not at all).
    fn take(&self, bytes: u64, deadline: Option<Instant>) -> bool {
        if self.try_take(bytes) {
            return true;
        }
        let Some(deadline) = deadline else {
            return false;
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // The mutex orders this check against a give_back's wake-up: room given back after
        // the check below finds this thread asleep, and wakes it.
        let mut guard = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        let taken = loop {
            if self.try_take(bytes) {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            guard = match self.freed.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        };
        drop(guard);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        taken
    }

    /// Counts `bytes` that are already in memory, over the limit if need be.
    fn force(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    fn give_back(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(bytes))
            });
        if self.waiting.load(Ordering::SeqCst) > 0 {
            // Taken so that a waiter between its check and its sleep is not missed.
            drop(self.sleep.lock().unwrap_or_else(|p| p.into_inner()));
            self.freed.notify_all();
        }
    }
}

static PROCESS: OnceLock<Arc<MemoryBudget>> = OnceLock::new();

/// Sets the process's budget; only before any server starts (false if it was already set,
/// then it stays as it was).
pub fn set_process_limit(limit: u64) -> bool {
    PROCESS.set(MemoryBudget::new(limit)).is_ok()
}

/// An eighth of the machine's memory (`MemTotal` in /proc/meminfo), at least 256 MiB; 1 GiB
/// where the memory cannot be read.
pub fn default_limit() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| mem_total(&info));
    total.map_or(1 << 30, |bytes| (bytes / 8).max(LEAST_DEFAULT))
}

/// `MemTotal` from the text of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// What one connection's buffer counts against a budget; given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<MemoryBudget>>,
    bytes: u64,
}

impl Held {
    /// Counts against `budget`.
    pub fn in_budget(budget: Arc<MemoryBudget>) -> Held {
        Held {
            budget: Some(budget),
            bytes: 0,
        }
    }

    /// Counts against nothing (a cluster member's connection, an outgoing one).
    pub fn exempt() -> Held {
        Held::default()
    }

    /// True if it counts against a budget.
    pub fn is_counted(&self) -> bool {
        self.budget.is_some()
    }

    /// No longer counts against a budget: what it held is given back.
    pub fn exempt_from_now(&mut self) {
        self.release();
        self.budget = None;
    }

    /// Makes what it holds cover a buffer of `len` bytes, waiting for room until `deadline`
    /// (`None`: not at all); false, holding what it held, if there is none.
    pub fn cover(&mut self, len: usize, deadline: Option<Instant>) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let wanted = len.saturating_sub(FREE_PER_CONNECTION) as u64;
        if wanted <= self.bytes {
            budget.give_back(self.bytes - wanted);
            self.bytes = wanted;
            return true;
        }
        if budget.take(wanted - self.bytes, deadline) {
            self.bytes = wanted;
            true
        } else {
            false
        }
    }

    /// True if what it holds already covers a buffer of `len` bytes (always, when it counts
    /// against nothing): growing to `len` needs no room.
    pub fn covers(&self, len: usize) -> bool {
        self.budget.is_none() || len.saturating_sub(FREE_PER_CONNECTION) as u64 <= self.bytes
    }

    /// Like [`Held::cover`] for bytes that are already in memory: counted at once, over the
    /// limit if need be.
    pub fn cover_now(&mut self, len: usize) {
        let Some(budget) = &self.budget else {
            return;
        };
        let wanted = len.saturating_sub(FREE_PER_CONNECTION) as u64;
        if wanted <= self.bytes {
            budget.give_back(self.bytes - wanted);
        } else {
            budget.force(wanted - self.bytes);
        }
        self.bytes = wanted;
    }

    /// Gives back all it holds.
    pub fn release(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.bytes);
        }
        self.bytes = 0;
    }

    /// True when its budget is exhausted (never for an exempt one).
    pub fn budget_exhausted(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.exhausted())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FREE: usize = FREE_PER_CONNECTION;

    #[test]
    fn buffers_within_the_allowance_are_not_counted() {
        let budget = MemoryBudget::new(1000);
        let mut held = Held::in_budget(Arc::clone(&budget));
        assert!(held.cover(FREE, None));
        assert_eq!(budget.used(), 0);
        assert!(held.cover(FREE + 600, None));
        assert_eq!(budget.used(), 600);
        assert!(held.cover(FREE + 100, None));
        assert_eq!(budget.used(), 100, "shrinking gives back");
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn past_the_limit_a_buffer_waits_until_room_is_given_back() {
        let budget = MemoryBudget::new(1000);
        let mut first = Held::in_budget(Arc::clone(&budget));
        assert!(first.cover(FREE + 800, None));
        let mut second = Held::in_budget(Arc::clone(&budget));
        assert!(!second.cover(FREE + 300, None), "no room, no wait");
        assert!(!second.cover(FREE + 300, Some(Instant::now() + Duration::from_millis(20))));
        assert_eq!(budget.used(), 800);
        let waiter = std::thread::spawn(move || {
            let granted = second.cover(FREE + 300, Some(Instant::now() + Duration::from_secs(30)));
            (granted, second)
        });
        // The waiter is woken by the release, not by its deadline.
        first.release();
        let (granted, second) = waiter.join().unwrap();
        assert!(granted);
        assert_eq!(budget.used(), 300);
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn answers_already_made_are_counted_over_the_limit_and_exempt_ones_not_at_all() {
        let budget = MemoryBudget::new(1000);
        let mut answers = Held::in_budget(Arc::clone(&budget));
        answers.cover_now(FREE + 5000);
        assert_eq!(budget.used(), 5000);
        assert!(answers.budget_exhausted());
        let mut request = Held::in_budget(Arc::clone(&budget));
        assert!(!request.cover(FREE + 1, None));
        let mut peer = Held::exempt();
        assert!(peer.cover(usize::MAX, None));
        assert!(!peer.budget_exhausted());
        answers.cover_now(0);
        assert_eq!(budget.used(), 0);
        answers.cover_now(FREE + 10);
        answers.exempt_from_now();
        assert_eq!(budget.used(), 0);
        answers.cover_now(FREE + 10);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_default_is_an_eighth_of_the_machine() {
        let info = "MemTotal:       16318412 kB\nMemFree:        1 kB\n";
        assert_eq!(mem_total(info), Some(16318412 * 1024));
        assert_eq!(mem_total("nothing"), None);
        assert!(default_limit() >= LEAST_DEFAULT);
    }
}
