//! Chain replication's per-member rules: per-key write order at the head, and which answers
//! from further down a chain count.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use crate::protocol::{Frame, Opcode, Status};

/// Stripes of [`KeyLocks`]: enough that unrelated keys rarely share one.
const STRIPES: usize = 1024;

/// The head's per-key order: a write holds its key's stripe from being applied until the tail
/// has answered, so a chain never carries two writes of one key at once and every member
/// applies them in the head's order. Keys share stripes by hash, which only costs waiting.
///
/// A write the rest of the chain did not acknowledge (a member failed or timed out) may still be
/// on its way down, and a later write could overtake it at a member further down. So its stripe
/// is *blocked* for the epoch: no further write of its keys enters the chain until a newer view
/// is installed, and every member refuses writes of the old epoch once it holds the new one, so
/// the stray write either lands before the view change or never.
pub struct KeyLocks {
    /// Per stripe, the epoch in which it is blocked (0: never).
    stripes: Vec<Mutex<u64>>,
    /// The highest epoch in which some stripe was blocked: the node asks the view keeper for a
    /// newer view (in its HEALTH answers) while it holds that epoch.
    highest_blocked: std::sync::atomic::AtomicU64,
}

/// The stripes a batch of writes holds, taken in ascending order so that two batches can
/// never wait for each other.
pub struct HeldKeys<'a> {
    /// In ascending order of stripe.
    guards: Vec<(usize, MutexGuard<'a, u64>)>,
    highest_blocked: &'a std::sync::atomic::AtomicU64,
    /// No stripe held is blocked past this epoch: `highest_blocked` once they were all taken
    /// (a stripe is blocked under its lock, and the highest raised before it is let go).
    most_blocked: u64,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            highest_blocked: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl KeyLocks {
    fn stripe(key: &[u8]) -> usize {
        // The key's position is SHA-1, already computed for routing; crc32 is cheaper here and
        // only has to spread keys.
        crate::protocol::crc32(key) as usize % STRIPES
    }

    /// Locks the stripes of every key in `keys`.
    pub fn lock<'a, 'k>(&'a self, keys: impl IntoIterator<Item = &'k [u8]>) -> HeldKeys<'a> {
        let mut stripes: Vec<usize> = keys.into_iter().map(KeyLocks::stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let guards = stripes
            .into_iter()
            .map(|s| {
                let guard = match self.stripes[s].lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                (s, guard)
            })
            .collect();
        HeldKeys {
            guards,
            highest_blocked: &self.highest_blocked,
            most_blocked: self.highest_blocked(),
        }
    }

    /// The highest epoch in which writes of some key were blocked (0: none yet).
    pub fn highest_blocked(&self) -> u64 {
        self.highest_blocked
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl HeldKeys<'_> {
    fn slot(&mut self, key: &[u8]) -> Option<&mut u64> {
        let stripe = KeyLocks::stripe(key);
        let at = self
            .guards
            .binary_search_by_key(&stripe, |(s, _)| *s)
            .ok()?;
        Some(&mut *self.guards[at].1)
    }

    /// Whether writes of `key` wait for a view newer than `epoch` (see [`KeyLocks`]). A key
    /// whose stripe this batch does not hold is not headed here and never blocked.
    pub fn is_blocked(&mut self, key: &[u8], epoch: u64) -> bool {
        // Most often nothing is: no need to find the key's stripe.
        epoch <= self.most_blocked && self.slot(key).is_some_and(|blocked| *blocked >= epoch)
    }

    /// Blocks writes of `key` (and its stripe) until a view newer than `epoch`.
    pub fn block(&mut self, key: &[u8], epoch: u64) {
        if let Some(blocked) = self.slot(key) {
            *blocked = (*blocked).max(epoch);
            self.highest_blocked
                .fetch_max(epoch, std::sync::atomic::Ordering::SeqCst);
            self.most_blocked = self.most_blocked.max(epoch);
        }
    }
}

/// Cuts a pipeline of key requests into runs that may each be carried out at once. Writes of a
/// key go to its chain's head and reads to its tail, two different paths: a read of a key after
/// a write of it (or the other way round) must wait for the run before it, or it could overtake
/// it. Requests of different keys, and several reads or several writes of one key (which take
/// one path, in order), share a run.
pub fn waves(requests: &[Frame]) -> Vec<Range<usize>> {
    if !requests.is_empty() && all_reads_or_all_writes(requests) {
        return std::iter::once(0..requests.len()).collect();
    }
    let mut waves = Vec::new();
    let mut start = 0;
    let mut seen: HashMap<&[u8], bool> = HashMap::new();
    for (index, request) in requests.iter().enumerate() {
        let reads = is_read(request);
        match seen.get(request.key.as_slice()) {
            Some(&was_read) if was_read != reads => {
                waves.push(start..index);
                start = index;
                seen.clear();
            }
            _ => {}
        }
        seen.insert(request.key.as_slice(), reads);
    }
    if start < requests.len() {
        waves.push(start..requests.len());
    }
    waves
}

/// Whether [`waves`] makes at most one run of `requests`.
pub fn is_one_wave(requests: &[Frame]) -> bool {
    all_reads_or_all_writes(requests) || waves(requests).len() <= 1
}

/// All reads or all writes take one path: one run, and no need to look at the keys.
fn all_reads_or_all_writes(requests: &[Frame]) -> bool {
    requests
        .first()
        .is_none_or(|first| requests.iter().all(|r| is_read(r) == is_read(first)))
}

fn is_read(request: &Frame) -> bool {
    request.opcode == Opcode::GET
}

/// The opcode that carries a write (a client's, or a chain member's) down a chain.
pub fn chain_opcode(write: Opcode) -> Opcode {
    if matches!(
        write,
        Opcode::CHAIN_PUT_EXPIRING | Opcode::CHAIN_PUT_ONCE_EXPIRING
    ) {
        return write;
    }
    match (write.is_delete(), write.is_tagged()) {
        (true, false) => Opcode::CHAIN_DELETE,
        (false, false) => Opcode::CHAIN_PUT,
        (true, true) => Opcode::CHAIN_DELETE_ONCE,
        (false, true) => Opcode::CHAIN_PUT_ONCE,
    }
}

/// Bytes of the expiry time before a CHAIN_PUT_EXPIRING's value.
pub const EXPIRY_LEN: usize = 8;

/// A CHAIN_PUT_EXPIRING's value: `value`, expiring at `expires_at` (Unix milliseconds).
pub fn expiring_value(expires_at: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(EXPIRY_LEN + value.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The expiry time and the value a CHAIN_PUT_EXPIRING carries; `None` if it is too short to
/// hold a time.
pub fn split_expiring(value: &[u8]) -> Option<(u64, &[u8])> {
    let at = value.get(..EXPIRY_LEN)?;
    Some((
        u64::from_be_bytes(at.try_into().ok()?),
        &value[EXPIRY_LEN..],
    ))
}

/// Whether a member's answer to a chain write means every member after it applied the write:
/// a success, for the epoch the write was sent under, while this node still holds that epoch.
/// Anything else leaves the write applied here and perhaps further down, but not acknowledged.
pub fn acknowledges(answer: &Frame, sent_epoch: u64, epoch_now: u64) -> bool {
    answer.status.is_success() && answer.epoch == sent_epoch && epoch_now == sent_epoch
}

/// The answer a member gives upstream when the rest of its chain did not acknowledge a write
/// that it applied itself: UNAVAILABLE, which says the write may have taken effect.
pub fn unacknowledged(request: &Frame, next: &str, why: &str) -> Frame {
    request.error_reply(
        Status::UNAVAILABLE,
        format!(
            "chain member {next} did not acknowledge the write ({why}); it was applied by the \
             members before it and may take effect"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_success_of_the_same_epoch_acknowledges() {
        let request = Frame::request(Opcode::CHAIN_PUT, 1, b"k".to_vec(), b"v".to_vec());
        let mut answer = request.reply(Status::OK, Vec::new());
        answer.epoch = 4;
        assert!(acknowledges(&answer, 4, 4));
        assert!(!acknowledges(&answer, 4, 5), "this node moved on");
        assert!(!acknowledges(&answer, 3, 3), "answer of another epoch");
        answer.status = Status::STALE_VIEW;
        assert!(!acknowledges(&answer, 4, 4));
    }

    #[test]
    fn a_delete_stays_a_delete_all_the_way_down() {
        assert_eq!(chain_opcode(Opcode::DELETE), Opcode::CHAIN_DELETE);
        assert_eq!(chain_opcode(Opcode::CHAIN_DELETE), Opcode::CHAIN_DELETE);
        assert_eq!(chain_opcode(Opcode::PUT), Opcode::CHAIN_PUT);
        assert_eq!(chain_opcode(Opcode::CHAIN_PUT), Opcode::CHAIN_PUT);
        assert_eq!(chain_opcode(Opcode::DELETE_ONCE), Opcode::CHAIN_DELETE_ONCE);
        assert_eq!(chain_opcode(Opcode::PUT_ONCE), Opcode::CHAIN_PUT_ONCE);
        assert_eq!(chain_opcode(Opcode::CHAIN_PUT_ONCE), Opcode::CHAIN_PUT_ONCE);
        assert_eq!(
            chain_opcode(Opcode::CHAIN_PUT_EXPIRING),
            Opcode::CHAIN_PUT_EXPIRING
        );
        assert_eq!(
            chain_opcode(Opcode::CHAIN_PUT_ONCE_EXPIRING),
            Opcode::CHAIN_PUT_ONCE_EXPIRING
        );
        let value = expiring_value(0x0102_0304_0506_0708, b"v");
        assert_eq!(
            split_expiring(&value),
            Some((0x0102_0304_0506_0708, &b"v"[..]))
        );
        assert_eq!(split_expiring(&value[..7]), None);
    }

    #[test]
    fn a_read_after_a_write_of_the_same_key_waits_for_it() {
        let frame = |opcode, key: &[u8]| Frame::request(opcode, 1, key.to_vec(), Vec::new());
        let batch = vec![
            frame(Opcode::PUT, b"a"),
            frame(Opcode::GET, b"b"),
            frame(Opcode::PUT, b"a"),
            frame(Opcode::GET, b"a"),
            frame(Opcode::DELETE, b"c"),
            frame(Opcode::GET, b"a"),
            frame(Opcode::PUT, b"a"),
        ];
        assert_eq!(waves(&batch), vec![0..3, 3..6, 6..7]);
        assert_eq!(waves(&batch[..3]), vec![0..3]);
        let reads = vec![frame(Opcode::GET, b"a"), frame(Opcode::GET, b"a")];
        assert_eq!(waves(&reads), vec![0..2]);
        let writes = vec![frame(Opcode::PUT, b"a"), frame(Opcode::DELETE, b"a")];
        assert_eq!(waves(&writes), vec![0..2]);
        assert!(waves(&[]).is_empty());
        for one in [&batch[..3], &reads, &writes, &[]] {
            assert!(is_one_wave(one));
        }
        assert!(!is_one_wave(&batch));
    }

    #[test]
    fn a_batch_locks_each_stripe_once() {
        let locks = KeyLocks::default();
        let keys: Vec<&[u8]> = vec![b"a", b"b", b"a"];
        let held = locks.lock(keys.iter().copied());
        assert_eq!(held.guards.len(), 2);
    }

    #[test]
    fn an_unacknowledged_write_blocks_its_key_until_a_newer_epoch() {
        let locks = KeyLocks::default();
        let mut held = locks.lock([&b"k"[..]]);
        assert!(!held.is_blocked(b"k", 3));
        held.block(b"k", 3);
        drop(held);
        let mut held = locks.lock([&b"k"[..]]);
        assert!(held.is_blocked(b"k", 3));
        assert!(!held.is_blocked(b"k", 4));
        assert!(!held.is_blocked(b"not held", 3));
        drop(held);
        assert_eq!(locks.highest_blocked(), 3);
    }

    #[test]
    fn among_many_held_stripes_only_the_blocked_keys_are() {
        let locks = KeyLocks::default();
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("key-{i}").into_bytes()).collect();
        let mut held = locks.lock(keys.iter().map(Vec::as_slice));
        assert!(keys.iter().all(|k| !held.is_blocked(k, 1)));
        held.block(&keys[7], 5);
        // Seen at once by the batch that blocked it, and by the next to hold its stripe.
        assert!(held.is_blocked(&keys[7], 5));
        drop(held);
        let mut held = locks.lock(keys.iter().map(Vec::as_slice));
        let stripe = KeyLocks::stripe(&keys[7]);
        for key in &keys {
            assert_eq!(
                held.is_blocked(key, 5),
                KeyLocks::stripe(key) == stripe,
                "{}",
                String::from_utf8_lossy(key)
            );
            assert!(!held.is_blocked(key, 6));
        }
    }
}
