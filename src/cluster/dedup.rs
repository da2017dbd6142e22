//! Safe retries: what a node remembers of the tagged writes (PUT_ONCE, DELETE_ONCE) it applied,
//! so that a write sent again, after a timeout or a failover, is answered with its first result
//! instead of being applied twice.
//!
//! Every chain member records each tagged write it applies, with its result, and marks it
//! *acknowledged* once every member after it holds the write (at the tail: at once). The head
//! asks the window before it applies a tagged write:
//! - never seen: apply it;
//! - acknowledged: every member of the chain holds it (a node that joins later is copied from
//!   the tail, which held it): answer the first result, apply nothing;
//! - applied here but not acknowledged (the chain failed under it): the members after this one
//!   may or may not hold it, so the head sends the key's current value down the chain again
//!   (a member never holds a newer write of a key than the members before it, so this only
//!   brings the rest up to the head) and then answers the first result;
//! - older than the client's window: refused, not applied (TOO_OLD);
//! - not seen, but marked as a resend while this node's memory does not reach back far enough
//!   to be sure (it started, or had to forget, less than [`HORIZON`] ago): an earlier copy may
//!   have been applied before, so it is refused too (TOO_OLD), never applied twice.
//!
//! Senders resend a write only within [`RESEND_WITHIN`] of its first send, well inside the
//! horizon, so a window that is complete for the horizon knows every copy that could matter.
//!
//! Bounds: per client the records of at most [`PER_CLIENT`] writes, those not yet below the
//! client's `below` (a client that leaves more unanswered loses its oldest: they become too
//! old); per node at most [`MAX_CLIENTS`] clients. A client's window is kept at least
//! [`IDLE`] after its last write here; a node that is full of clients younger than that
//! refuses the writes of new clients as BUSY (not applied) at the head.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::payload::WriteTag;
use crate::protocol::Status;

/// Records kept per client: more of its writes than this unanswered at once makes the oldest
/// too old.
pub const PER_CLIENT: usize = 256;
/// Clients remembered per node.
pub const MAX_CLIENTS: usize = 8192;
/// A client's window is kept at least this long after its last write reached the node.
pub const IDLE: Duration = Duration::from_secs(120);

/// How far back a node's memory must reach for it to take a resent write it has no record of
/// as new.
pub const HORIZON: Duration = Duration::from_secs(60);
/// Senders (the frontend, `ringkv::Client`) resend a tagged write only this long after first
/// sending it.
pub const RESEND_WITHIN: Duration = Duration::from_secs(30);

/// Shards of the client table: writes of different clients rarely wait for each other.
const SHARDS: usize = 64;

/// What the head should do with a tagged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen: apply it.
    New,
    /// Applied and acknowledged by the whole chain, with this result.
    Done(Status),
    /// Applied here with this result, not acknowledged by the members after this one.
    Unfinished(Status),
    /// Below what the node remembers of the client: not to be applied.
    TooOld,
    /// A resend this node has no record of, while its memory is too short to know that no
    /// earlier copy was applied here: not to be applied.
    Unknowable,
    /// No room for another client.
    Full,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    status: Status,
    acknowledged: bool,
}

#[derive(Debug)]
struct ClientWindow {
    /// Writes numbered below this are forgotten: the client said it will not send them again,
    /// or they were pushed out by newer ones.
    floor: u64,
    records: BTreeMap<u64, Record>,
    last_write: Instant,
}

impl ClientWindow {
    fn new(now: Instant) -> ClientWindow {
        ClientWindow {
            floor: 0,
            records: BTreeMap::new(),
            last_write: now,
        }
    }

    /// Takes in the client's `below` and forgets what is under the floor.
    fn advance(&mut self, below: u64, now: Instant) {
        self.last_write = now;
        if below > self.floor {
            self.floor = below;
            // One at a time from the front: `split_off` would build a new tree for the rest.
            while self
                .records
                .first_key_value()
                .is_some_and(|(&n, _)| n < below)
            {
                self.records.pop_first();
            }
        }
    }
}

/// A shard's clients by id. Ids come from clients, so they are hashed with a seed of this
/// process's (foldhash), which an attacker cannot see, and a shard holds a bounded number
/// (`per_shard`) in any case; SipHash took about 100 instructions for each of a write's two
/// look-ups.
type Clients = HashMap<u64, ClientWindow, foldhash::fast::RandomState>;

/// The windows of every client that wrote through this node.
pub struct WriteWindows {
    shards: Vec<Mutex<Clients>>,
    per_shard: usize,
    idle: Duration,
    /// Since when this node has a record of every tagged write it applied: its start, or the
    /// last time it had to forget some.
    complete_since: Mutex<Instant>,
    horizon: Duration,
}

impl Default for WriteWindows {
    fn default() -> Self {
        WriteWindows::with_bounds(MAX_CLIENTS, IDLE)
    }
}

impl WriteWindows {
    /// Windows for at most `clients` clients (rounded up to a multiple of the shard count),
    /// each kept at least `idle` after its last write.
    pub fn with_bounds(clients: usize, idle: Duration) -> WriteWindows {
        WriteWindows {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Clients::default()))
                .collect(),
            per_shard: clients.div_ceil(SHARDS).max(1),
            idle,
            complete_since: Mutex::new(Instant::now()),
            horizon: HORIZON,
        }
    }

    /// This node took in writes without their tags (a state transfer's copy and deltas):
    /// resends are not trusted as new for a horizon from now.
    pub fn mark_incomplete(&self) {
        self.incomplete_from(Instant::now());
    }

    /// Some records are gone: resends are not trusted as new for a horizon from now.
    fn incomplete_from(&self, now: Instant) {
        let mut since = match self.complete_since.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *since = (*since).max(now);
    }

    /// Whether every write applied here in the last horizon before `now` is recorded.
    fn remembers_horizon(&self, now: Instant) -> bool {
        let since = match self.complete_since.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        now.duration_since(since) >= self.horizon
    }

    fn shard(&self, client: u64) -> MutexGuard<'_, Clients> {
        let shard = &self.shards[(client % SHARDS as u64) as usize];
        match shard.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `client`'s window in `shard`, made if there is room for it ([`make_room`](Self::make_room)
    /// with `force`); `None` if there is none. One look-up while the shard has room.
    fn window<'s>(
        &self,
        shard: &'s mut Clients,
        client: u64,
        now: Instant,
        force: bool,
    ) -> Option<&'s mut ClientWindow> {
        if shard.len() >= self.per_shard
            && !shard.contains_key(&client)
            && !self.make_room(shard, now, force)
        {
            return None;
        }
        Some(
            shard
                .entry(client)
                .or_insert_with(|| ClientWindow::new(now)),
        )
    }

    /// Room for one more client in `shard`: the longest-idle client goes, if it has been idle
    /// long enough, or if `force` (a chain member must record what it applied). False when
    /// there is none to spare.
    fn make_room(&self, shard: &mut Clients, now: Instant, force: bool) -> bool {
        if shard.len() < self.per_shard {
            return true;
        }
        let oldest = shard
            .iter()
            .min_by_key(|(_, w)| w.last_write)
            .map(|(client, w)| (*client, w.last_write));
        match oldest {
            Some((client, last)) if force || now.duration_since(last) >= self.idle => {
                if now.duration_since(last) < self.horizon {
                    self.incomplete_from(now);
                }
                shard.remove(&client);
                true
            }
            _ => false,
        }
    }

    /// What the head should do with the write `tag` (see the module documentation). Takes in
    /// the tag's `below`.
    pub fn check(&self, tag: &WriteTag) -> Seen {
        self.check_at(tag, Instant::now())
    }

    fn check_at(&self, tag: &WriteTag, now: Instant) -> Seen {
        let mut shard = self.shard(tag.client);
        let Some(window) = self.window(&mut shard, tag.client, now, false) else {
            return Seen::Full;
        };
        window.advance(tag.below, now);
        if tag.seq < window.floor {
            return Seen::TooOld;
        }
        match window.records.get(&tag.seq) {
            None if tag.is_resend() && !self.remembers_horizon(now) => Seen::Unknowable,
            None => Seen::New,
            Some(record) if record.acknowledged => Seen::Done(record.status),
            Some(record) => Seen::Unfinished(record.status),
        }
    }

    /// Records that this node applied `tag` with `status`; `acknowledged` when no member comes
    /// after it. A write already recorded keeps its first result.
    pub fn record(&self, tag: &WriteTag, status: Status, acknowledged: bool) {
        let now = Instant::now();
        let mut shard = self.shard(tag.client);
        let Some(window) = self.window(&mut shard, tag.client, now, true) else {
            return;
        };
        window.advance(tag.below, now);
        if tag.seq < window.floor {
            return;
        }
        let record = window.records.entry(tag.seq).or_insert(Record {
            status,
            acknowledged,
        });
        record.acknowledged |= acknowledged;
        while window.records.len() > PER_CLIENT {
            let Some((oldest, _)) = window.records.pop_first() else {
                break;
            };
            window.floor = window.floor.max(oldest.saturating_add(1));
        }
    }

    /// The members after this one hold `tag`'s write.
    pub fn acknowledge(&self, tag: &WriteTag) {
        let mut shard = self.shard(tag.client);
        if let Some(record) = shard
            .get_mut(&tag.client)
            .and_then(|w| w.records.get_mut(&tag.seq))
        {
            record.acknowledged = true;
        }
    }

    /// Forgets `tag`'s write: it did not become durable here.
    pub fn forget(&self, tag: &WriteTag) {
        // Its successors may hold it, and a resend must not be applied twice there.
        self.incomplete_from(Instant::now());
        let mut shard = self.shard(tag.client);
        if let Some(window) = shard.get_mut(&tag.client) {
            window.records.remove(&tag.seq);
        }
    }

    /// Forgets every write not acknowledged: this node's copy is being replaced by a state
    /// transfer, so what it applied on its own says nothing about what it will hold.
    pub fn forget_unacknowledged(&self) {
        self.incomplete_from(Instant::now());
        for shard in &self.shards {
            let mut shard = match shard.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            for window in shard.values_mut() {
                window.records.retain(|_, r| r.acknowledged);
            }
        }
    }

    /// Clients and records held, for STATS.
    pub fn sizes(&self) -> (u64, u64) {
        let mut clients = 0;
        let mut records = 0;
        for shard in &self.shards {
            let shard = match shard.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            clients += shard.len() as u64;
            records += shard.values().map(|w| w.records.len() as u64).sum::<u64>();
        }
        (clients, records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(client: u64, seq: u64, below: u64) -> WriteTag {
        WriteTag {
            client,
            seq,
            below,
            attempt: 1,
        }
    }

    /// Windows whose memory already reaches back a whole horizon.
    fn settled_windows() -> WriteWindows {
        let windows = WriteWindows::default();
        *windows.complete_since.lock().unwrap() = Instant::now() - HORIZON;
        windows
    }

    #[test]
    fn a_resend_it_has_no_record_of_is_new_only_once_memory_reaches_back_far_enough() {
        let windows = WriteWindows::default();
        let resend = tag(7, 1, 0).resent();
        assert_eq!(windows.check(&resend), Seen::Unknowable, "just started");
        assert_eq!(
            windows.check(&tag(7, 2, 0)),
            Seen::New,
            "a first send is new"
        );
        let later = Instant::now() + HORIZON;
        assert_eq!(windows.check_at(&resend, later), Seen::New);

        let windows = settled_windows();
        assert_eq!(windows.check(&resend), Seen::New);
        windows.record(&tag(7, 3, 0), Status::OK, false);
        windows.forget_unacknowledged();
        assert_eq!(
            windows.check(&resend),
            Seen::Unknowable,
            "it forgot writes just now"
        );
    }

    #[test]
    fn a_write_is_new_then_unfinished_then_done_with_its_first_result() {
        let windows = WriteWindows::default();
        assert_eq!(windows.check(&tag(7, 1, 0)), Seen::New);
        windows.record(&tag(7, 1, 0), Status::OK, false);
        assert_eq!(windows.check(&tag(7, 1, 0)), Seen::Unfinished(Status::OK));
        windows.record(&tag(7, 1, 0), Status::NOT_FOUND, false);
        windows.acknowledge(&tag(7, 1, 0));
        assert_eq!(windows.check(&tag(7, 1, 0)), Seen::Done(Status::OK));
        assert_eq!(windows.check(&tag(8, 1, 0)), Seen::New, "another client");
    }

    #[test]
    fn below_forgets_what_the_client_has_answered_and_refuses_it_after() {
        let windows = WriteWindows::default();
        for seq in 1..=3 {
            windows.record(&tag(7, seq, 1), Status::OK, true);
        }
        assert_eq!(windows.sizes(), (1, 3));
        assert_eq!(windows.check(&tag(7, 4, 3)), Seen::New);
        assert_eq!(windows.sizes(), (1, 1));
        assert_eq!(windows.check(&tag(7, 2, 3)), Seen::TooOld);
        assert_eq!(windows.check(&tag(7, 3, 3)), Seen::Done(Status::OK));
        // A lower `below` later (a late frame) moves nothing back.
        assert_eq!(windows.check(&tag(7, 2, 0)), Seen::TooOld);
    }

    #[test]
    fn a_client_with_too_many_unanswered_writes_loses_the_oldest() {
        let windows = WriteWindows::default();
        for seq in 1..=(PER_CLIENT as u64 + 2) {
            windows.record(&tag(7, seq, 0), Status::OK, true);
        }
        assert_eq!(windows.sizes(), (1, PER_CLIENT as u64));
        assert_eq!(windows.check(&tag(7, 1, 0)), Seen::TooOld);
        assert_eq!(windows.check(&tag(7, 2, 0)), Seen::TooOld);
        assert_eq!(windows.check(&tag(7, 3, 0)), Seen::Done(Status::OK));
    }

    #[test]
    fn a_full_node_refuses_new_clients_until_one_has_been_idle_long_enough() {
        let windows = WriteWindows::with_bounds(SHARDS, Duration::from_millis(50));
        // One client per shard fills every shard.
        for client in 0..SHARDS as u64 {
            assert_eq!(windows.check(&tag(client + 1, 1, 0)), Seen::New);
        }
        let newcomer = tag(SHARDS as u64 + 1, 1, 0);
        assert_eq!(windows.check(&newcomer), Seen::Full);
        // A chain member records anyway, pushing out the oldest client of the shard.
        windows.record(&newcomer, Status::OK, true);
        assert_eq!(windows.check(&newcomer), Seen::Done(Status::OK));
        assert_eq!(windows.sizes().0, SHARDS as u64);
        let later = Instant::now() + Duration::from_millis(60);
        assert_eq!(
            windows.check_at(&tag(2 * SHARDS as u64 + 2, 1, 0), later),
            Seen::New
        );
    }

    #[test]
    fn a_failed_settle_and_a_state_transfer_forget_what_they_must() {
        let windows = settled_windows();
        windows.record(&tag(7, 1, 0), Status::OK, true);
        windows.record(&tag(7, 2, 0), Status::OK, false);
        windows.record(&tag(7, 3, 0), Status::OK, true);
        windows.forget(&tag(7, 3, 0));
        assert_eq!(windows.check(&tag(7, 3, 0)), Seen::New);
        windows.forget_unacknowledged();
        assert_eq!(windows.check(&tag(7, 2, 0)), Seen::New);
        assert_eq!(windows.check(&tag(7, 1, 0)), Seen::Done(Status::OK));
    }
}
