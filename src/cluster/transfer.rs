//! State transfer: how a node that was down is copied up to date before it counts again.
//!
//! **Who copies from whom.** A node that answers again after being marked down is made
//! *syncing* by the view keeper: it is in no chain, so it serves nothing and no write waits for
//! it. For every partition its place on the ring puts it in ([`plan`]), its *source* is the
//! partition's current tail: the member it will follow, since a node that comes back joins its
//! chains at the tail (the chain rule, [`crate::ring::Ring::chain`]). A partition with no member
//! up is kept as the node has it if the node was the last to leave it, which makes it hold every
//! write acknowledged there; otherwise the node cannot come back until that last member does.
//!
//! **The copy, while writes go on** (SYNC_BEGIN, SYNC_COPY, SYNC_DELTA, SYNC_END; PROTOCOL.md
//! section 5). The syncing node asks each source to begin. The source first registers a
//! *tracker*, which from then on records every key of those partitions that the source writes,
//! by any path, as it applies the write; only then does it list the keys it holds there (its
//! snapshot). The syncing node deletes its own keys of those partitions (what it kept from before
//! is stale) and fetches the snapshot in bounded batches, each key with its value as the source
//! holds it when the batch is made; then it fetches the recorded keys (deltas) until few are
//! left. Every write the source applied after it registered the tracker is recorded, and every
//! write before is in what the snapshot reads, so the copy misses nothing. The node then reports
//! *copied* for the epoch it holds (in its HEALTH answers); if the view moves on and any source
//! changes, it starts over.
//!
//! **The switch.** The keeper then makes the node up, at the tail of its chains, in a new view
//! E. From installing E the node takes chain writes (and acknowledges them, as the tail), and
//! *catches up*: it asks each source for a final delta stamped E. A source answers it only once
//! it holds E itself, so no write of an older epoch can still be applied there; it then stops
//! recording (*freezes*) and hands over what is recorded. The node applies those keys, except
//! the ones it has written through the chain since installing E (*dirty*: a value the source
//! read before a newer chain write must not overwrite it). Until it is done it answers no read;
//! if a source cannot finish (it died, or dropped the transfer), the node reports that its catch
//! up failed and the keeper marks it down again. A source drops a tracker when the node ends
//! it, when it installs a view where the node is down, and when the recorded keys outgrow their
//! bound (the node then starts over).
//!
//! Bounds: a batch carries at most [`BATCH_BYTES`] (or one entry, however large), a tracker
//! records at most [`MAX_RECORDED_BYTES`] of keys, a source keeps at most one tracker per node of
//! the view, and every call has the servers' i/o timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::payload::{TransferBatch, TransferEntry};
use crate::ring::{NodeState, Ring};
use crate::store::Engine;

/// Most bytes of entries in one transfer batch (a single larger entry still goes alone).
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Most bytes of keys a tracker records before it gives up (the syncing node starts over).
pub const MAX_RECORDED_BYTES: usize = 64 * 1024 * 1024;

/// A delta with fewer keys than this ends the copy: the rest waits for the catch-up.
const SMALL_DELTA: usize = 64;

/// Where a syncing node gets one partition from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A copy from this node (the partition's tail).
    Copy(usize),
    /// Nothing to copy: the node was the last to leave the partition and keeps what it holds.
    Keep,
}

/// For each point (partition) a node's place puts it in, where its data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// (point index, source), ascending by point.
    pub points: Vec<(u32, Source)>,
}

impl Plan {
    /// The points to copy, grouped by the node they come from.
    pub fn by_source(&self) -> BTreeMap<usize, Vec<u32>> {
        let mut sources: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for &(point, source) in &self.points {
            if let Source::Copy(node) = source {
                sources.entry(node).or_default().push(point);
            }
        }
        sources
    }

    /// Whether nothing needs copying.
    pub fn is_keep_only(&self) -> bool {
        self.points.iter().all(|(_, s)| *s == Source::Keep)
    }
}

/// Where node `me` (not up in `ring`) would get each of its partitions from, or why it cannot
/// come back yet: a partition with no member up whose last member to leave was another node.
pub fn plan(ring: &Ring, me: usize) -> Result<Plan, String> {
    let view = ring.view();
    let mut points = Vec::new();
    for point in 0..ring.point_count() {
        if !ring.natural_members(point).any(|m| m == me) {
            continue;
        }
        let chain = ring.chain_at(point);
        let source = match chain.tail() {
            Some(tail) if tail != me => Source::Copy(tail),
            Some(_) => Source::Keep,
            None => {
                let last = ring
                    .natural_members(point)
                    .filter(|&m| m != me)
                    .max_by_key(|&m| view.since[m]);
                match last {
                    Some(other) if view.since[other] > view.since[me] => {
                        return Err(format!(
                            "no member of one of its partitions is up, and {} left it after \
                             this node (epoch {} against {}): that node must come back first",
                            view.nodes[other], view.since[other], view.since[me]
                        ));
                    }
                    _ => Source::Keep,
                }
            }
        };
        points.push((point as u32, source));
    }
    Ok(Plan { points })
}

/// One syncing node's transfer at this source.
struct Tracker {
    session: u64,
    /// Per point of the ring, whether this transfer covers it.
    points: Vec<bool>,
    /// The keys held in those points when the transfer began.
    snapshot: Vec<Vec<u8>>,
    /// Keys written since it began, not yet handed over.
    recorded: HashSet<Vec<u8>>,
    recorded_bytes: usize,
    /// The final delta has begun: nothing more is recorded.
    frozen: bool,
    /// Recording outgrew its bound; the transfer is void.
    overflowed: bool,
}

/// Why a source cannot serve a transfer call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// No transfer of that session is open here.
    NoSession(String),
    /// The keys written during the transfer outgrew [`MAX_RECORDED_BYTES`].
    Overflowed,
    /// A point index the ring does not have.
    BadPoint(u32),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::NoSession(node) => {
                write!(f, "no transfer to {node} with that session is open here")
            }
            TransferError::Overflowed => write!(
                f,
                "the keys written during the transfer outgrew {MAX_RECORDED_BYTES} bytes; start over"
            ),
            TransferError::BadPoint(point) => write!(f, "point {point} is not on the ring"),
        }
    }
}

/// A source's open transfers, by syncing node's address.
#[derive(Default)]
pub struct Trackers {
    open: Mutex<HashMap<String, Tracker>>,
    /// How many are open: writes skip the lock when none is.
    count: AtomicUsize,
    /// Keys and bytes handed over, for STATS.
    pub keys_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl Trackers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Tracker>> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Notes a write of `key` (in point `point`) applied here. Called for every write, while the
    /// epoch it was applied under is held.
    pub fn record(&self, point: usize, key: &[u8]) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        for tracker in self.lock().values_mut() {
            if tracker.frozen
                || tracker.overflowed
                || !tracker.points.get(point).copied().unwrap_or(false)
            {
                continue;
            }
            if tracker.recorded.contains(key) {
                continue;
            }
            tracker.recorded_bytes += key.len();
            if tracker.recorded_bytes > MAX_RECORDED_BYTES {
                tracker.overflowed = true;
                tracker.recorded = HashSet::new();
                tracker.snapshot = Vec::new();
                continue;
            }
            tracker.recorded.insert(key.to_vec());
        }
    }

    /// Opens a transfer of `points` to `node`, replacing any it had, and returns its session.
    /// Must be called while this node holds the epoch the syncing node asked under; from here
    /// on every write of those points is recorded, so the snapshot
    /// ([`take_snapshot`](Trackers::take_snapshot)), taken after, leaves no gap.
    pub fn open(&self, node: &str, points: &[u32], ring: &Ring) -> Result<u64, TransferError> {
        let mut covered = vec![false; ring.point_count()];
        for &point in points {
            *covered
                .get_mut(point as usize)
                .ok_or(TransferError::BadPoint(point))? = true;
        }
        let session = crate::rng::Rng::from_entropy().next_u64();
        let mut open = self.lock();
        // At most one per node of the view: a node's new transfer replaces its old one.
        if !open.contains_key(node) && open.len() >= ring.len() {
            return Err(TransferError::NoSession(node.to_string()));
        }
        open.insert(
            node.to_string(),
            Tracker {
                session,
                points: covered,
                snapshot: Vec::new(),
                recorded: HashSet::new(),
                recorded_bytes: 0,
                frozen: false,
                overflowed: false,
            },
        );
        self.count.store(open.len(), Ordering::Release);
        Ok(session)
    }

    /// Lists the keys of an opened transfer's points that `store` holds; their number.
    pub fn take_snapshot(
        &self,
        node: &str,
        session: u64,
        ring: &Ring,
        store: &dyn Engine,
    ) -> Result<u64, TransferError> {
        let covered = self.with_session(node, session, |t| t.points.clone())?;
        let mut snapshot = Vec::new();
        store.for_each(&mut |key, _, _| {
            let point = ring.point_index(&crate::ring::key_position(key));
            if covered.get(point).copied().unwrap_or(false) {
                snapshot.push(key.to_vec());
            }
        });
        let len = snapshot.len() as u64;
        self.with_session(node, session, |t| t.snapshot = snapshot)?;
        Ok(len)
    }

    fn with_session<T>(
        &self,
        node: &str,
        session: u64,
        act: impl FnOnce(&mut Tracker) -> T,
    ) -> Result<T, TransferError> {
        let mut open = self.lock();
        match open.get_mut(node) {
            Some(tracker) if tracker.session == session && tracker.overflowed => {
                open.remove(node);
                self.count.store(open.len(), Ordering::Release);
                Err(TransferError::Overflowed)
            }
            Some(tracker) if tracker.session == session => Ok(act(tracker)),
            _ => Err(TransferError::NoSession(node.to_string())),
        }
    }

    /// The snapshot's keys from index `from`, with their current values, up to a batch.
    pub fn copy(
        &self,
        node: &str,
        session: u64,
        from: u64,
        store: &dyn Engine,
    ) -> Result<TransferBatch, TransferError> {
        // The keys are taken under the lock and read after it, so writes are never held up by
        // the store's reads.
        let keys: Vec<Vec<u8>> = self.with_session(node, session, |tracker| {
            let start = (from as usize).min(tracker.snapshot.len());
            let mut bytes = 0;
            tracker.snapshot[start..]
                .iter()
                .take_while(|key| {
                    bytes += key.len();
                    bytes <= BATCH_BYTES
                })
                .cloned()
                .collect()
        })?;
        let mut batch = TransferBatch {
            next: from,
            entries: Vec::new(),
        };
        let mut bytes = 0;
        for key in keys {
            // Expired keys are left out like deleted ones: the receiver dropped its own copies
            // of these partitions before the copy began.
            let Some((value, expires_at)) = store.get_expiring(&key) else {
                // Deleted since: the delete is recorded.
                batch.next += 1;
                continue;
            };
            let len = TransferBatch::entry_len(&key, Some(&value), expires_at);
            if !batch.entries.is_empty() && bytes + len > BATCH_BYTES {
                break;
            }
            bytes += len;
            batch.next += 1;
            batch.entries.push(TransferEntry {
                key,
                value: Some(value),
                expires_at,
            });
        }
        if batch.entries.is_empty() && batch.next == from {
            // Past the end of the snapshot: say where it ends.
            batch.next = self.with_session(node, session, |t| t.snapshot.len() as u64)?;
        }
        self.count_sent(&batch);
        Ok(batch)
    }

    /// The keys recorded since the last delta, with their current values or their absence, up
    /// to a batch; `final_delta` stops the recording first (the syncing node holds the epoch
    /// that made it up, and so does this node).
    pub fn delta(
        &self,
        node: &str,
        session: u64,
        final_delta: bool,
        store: &dyn Engine,
    ) -> Result<TransferBatch, TransferError> {
        let (keys, left) = self.with_session(node, session, |tracker| {
            if final_delta {
                tracker.frozen = true;
                // The snapshot is no longer needed.
                tracker.snapshot = Vec::new();
            }
            let mut bytes = 0;
            let keys: Vec<Vec<u8>> = tracker
                .recorded
                .iter()
                .take_while(|key| {
                    bytes += key.len();
                    bytes <= BATCH_BYTES
                })
                .cloned()
                .collect();
            for key in &keys {
                tracker.recorded.remove(key);
                tracker.recorded_bytes -= key.len();
            }
            (keys, tracker.recorded.len())
        })?;
        // Taken out of the record before their values are read: a write after this is recorded
        // again and goes in a later delta.
        let mut batch = TransferBatch {
            next: left as u64,
            entries: Vec::with_capacity(keys.len()),
        };
        let mut bytes = 0;
        let mut keys = keys.into_iter();
        for key in keys.by_ref() {
            // An expired key goes as deleted: the receiver must not keep an older copy.
            let (value, expires_at) = match store.get_expiring(&key) {
                Some((value, at)) => (Some(value), at),
                None => (None, None),
            };
            let len = TransferBatch::entry_len(&key, value.as_deref(), expires_at);
            if !batch.entries.is_empty() && bytes + len > BATCH_BYTES {
                // Too much for this batch: back into the record for the next one.
                self.rerecord(node, session, key);
                break;
            }
            bytes += len;
            batch.entries.push(TransferEntry {
                key,
                value,
                expires_at,
            });
        }
        for key in keys {
            self.rerecord(node, session, key);
        }
        self.count_sent(&batch);
        Ok(batch)
    }

    fn rerecord(&self, node: &str, session: u64, key: Vec<u8>) {
        let _ = self.with_session(node, session, |tracker| {
            tracker.recorded_bytes += key.len();
            tracker.recorded.insert(key);
        });
    }

    fn count_sent(&self, batch: &TransferBatch) {
        self.keys_sent
            .fetch_add(batch.entries.len() as u64, Ordering::Relaxed);
        let bytes: usize = batch
            .entries
            .iter()
            .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len))
            .sum();
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Closes `node`'s transfer of `session`.
    pub fn end(&self, node: &str, session: u64) -> Result<(), TransferError> {
        let mut open = self.lock();
        match open.get(node) {
            Some(tracker) if tracker.session == session => {
                open.remove(node);
                self.count.store(open.len(), Ordering::Release);
                Ok(())
            }
            _ => Err(TransferError::NoSession(node.to_string())),
        }
    }

    /// Drops the transfers to nodes that `ring` does not have syncing or up.
    pub fn retain_live(&self, ring: &Ring) {
        let mut open = self.lock();
        open.retain(|node, _| {
            ring.index_of(node)
                .is_some_and(|i| ring.view().states[i] != NodeState::Down)
        });
        self.count.store(open.len(), Ordering::Release);
    }

    /// Drops every transfer: this node is no longer up, so it is no one's source.
    pub fn clear(&self) {
        let mut open = self.lock();
        open.clear();
        self.count.store(0, Ordering::Release);
    }

    /// Number of open transfers.
    pub fn open_count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// Where the receiving side of a node's state transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not syncing: up and complete, or down.
    Serving,
    /// Syncing in this epoch: the copy is under way.
    Copying { epoch: u64 },
    /// Syncing: the copy is done, as of this epoch; it waits to be made up.
    Copied { epoch: u64 },
    /// Made up in this epoch; taking the final deltas. Reads wait.
    CatchingUp { epoch: u64 },
    /// The copy or the catch-up could not finish; reads are refused until the node is down.
    Failed { epoch: u64, why: String },
}

impl Phase {
    /// Its code in a HEALTH answer (PROTOCOL.md section 5).
    pub fn code(&self) -> u8 {
        match self {
            Phase::Serving => 0,
            Phase::Copying { .. } => 1,
            Phase::Copied { .. } => 2,
            Phase::CatchingUp { .. } => 3,
            Phase::Failed { .. } => 4,
        }
    }

    /// The epoch it refers to (0 for serving).
    pub fn epoch(&self) -> u64 {
        match self {
            Phase::Serving => 0,
            Phase::Copying { epoch }
            | Phase::Copied { epoch }
            | Phase::CatchingUp { epoch }
            | Phase::Failed { epoch, .. } => *epoch,
        }
    }
}

/// Where copied entries go in: the keys written through the chain while a catch-up runs, so
/// that a final delta never overwrites them, and the counts of what came in. A returning node's
/// [`Receiver`] and a moving node's [`crate::cluster::handoff::Incoming`] each have one.
#[derive(Default)]
pub struct Intake {
    /// Set while catching up: writes then go through `dirty`.
    catching_up: AtomicBool,
    /// Keys written through the chain since the catch-up began.
    dirty: Mutex<HashSet<Vec<u8>>>,
    /// Keys and bytes taken in by copies, for STATS and HEALTH.
    pub keys_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
}

impl Intake {
    /// Starts (or ends) marking written keys dirty; a start forgets earlier marks.
    pub fn set_catching_up(&self, on: bool) {
        if on {
            relock(&self.dirty).clear();
        } else {
            *relock(&self.dirty) = HashSet::new();
        }
        self.catching_up.store(on, Ordering::SeqCst);
    }

    /// Applies a write of `key` through `write`; while catching up, the key is marked dirty
    /// in the same step, so a final delta never overwrites it.
    pub fn write<T>(&self, key: &[u8], write: impl FnOnce() -> T) -> T {
        if !self.catching_up.load(Ordering::SeqCst) {
            return write();
        }
        let mut dirty = relock(&self.dirty);
        let result = write();
        dirty.insert(key.to_vec());
        result
    }

    /// Applies an entry of a final delta through `write`, unless the key is dirty.
    fn apply_unless_dirty<T>(&self, key: &[u8], write: impl FnOnce() -> T) -> Option<T> {
        let dirty = relock(&self.dirty);
        if dirty.contains(key) {
            return None;
        }
        let result = write();
        drop(dirty);
        Some(result)
    }
}

/// The receiving side of state transfer, in a backend.
pub struct Receiver {
    phase: Mutex<Phase>,
    changed: Condvar,
    /// Set while catching up or failed: every read checks it, so it is kept apart from the
    /// phase's lock.
    refuses_reads: AtomicBool,
    stop: AtomicBool,
    /// What the copies bring in.
    pub intake: Intake,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            phase: Mutex::new(Phase::Serving),
            changed: Condvar::new(),
            refuses_reads: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            intake: Intake::default(),
        }
    }
}

pub(crate) fn relock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    match lock.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Receiver {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        relock(&self.phase).clone()
    }

    fn set(&self, phase: Phase) {
        let catching_up = matches!(phase, Phase::CatchingUp { .. });
        self.intake.set_catching_up(catching_up);
        let refuses_reads = catching_up || matches!(phase, Phase::Failed { .. });
        let mut current = relock(&self.phase);
        *current = phase;
        self.refuses_reads.store(refuses_reads, Ordering::SeqCst);
        drop(current);
        self.changed.notify_all();
    }

    /// Follows a view change: `before` and `after` are this node's states in the old and new
    /// view (`None` without one), `epoch` the new view's. Called while the view is being
    /// installed, before any request of the new epoch is applied, so that a catch-up's dirty
    /// keys are recorded from its first write.
    pub fn view_installed(&self, before: Option<NodeState>, after: NodeState, epoch: u64) {
        let phase = self.phase();
        let next = match (after, &phase) {
            (NodeState::Syncing, Phase::Copied { .. })
            | (NodeState::Syncing, Phase::Copying { .. }) => {
                // The driver checks whether its sources still hold.
                self.changed.notify_all();
                return;
            }
            (NodeState::Syncing, _) => Phase::Copying { epoch },
            (NodeState::Up, Phase::Copied { .. }) => Phase::CatchingUp { epoch },
            (NodeState::Up, Phase::Copying { .. }) => Phase::Failed {
                epoch,
                why: "made up before its copy was done".into(),
            },
            (NodeState::Up, _) if before == Some(NodeState::Syncing) => Phase::Failed {
                epoch,
                why: "made up while it was not copying".into(),
            },
            (NodeState::Up, _) => return,
            (NodeState::Down, Phase::Serving) => return,
            (NodeState::Down, _) => Phase::Serving,
        };
        if next != phase {
            log::info!("state transfer: {phase:?} -> {next:?}");
        }
        self.set(next);
    }

    /// Whether reads may be answered: not while catching up or after a failed transfer.
    pub fn serves_reads(&self) -> bool {
        !self.refuses_reads.load(Ordering::SeqCst)
    }

    /// Waits at most `bound` for the catch-up to end; whether reads may be answered.
    pub fn wait_for_reads(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let mut phase = relock(&self.phase);
        loop {
            match *phase {
                Phase::CatchingUp { .. } => {}
                Phase::Failed { .. } => return false,
                _ => return true,
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            phase = match self.changed.wait_timeout(phase, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Applies a write of `key` through `write` (see [`Intake::write`]).
    pub fn write<T>(&self, key: &[u8], write: impl FnOnce() -> T) -> T {
        self.intake.write(key, write)
    }

    /// Asks the driver to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits until the phase is one the driver acts on, or `bound` passes.
    fn wait_for_work(&self, bound: Duration) {
        let phase = relock(&self.phase);
        if matches!(*phase, Phase::Copying { .. } | Phase::CatchingUp { .. }) || self.stopped() {
            return;
        }
        let _ = self.changed.wait_timeout(phase, bound);
    }

    /// Moves from `from` to `to` only if nothing changed the phase meanwhile (a view install
    /// wins over the driver).
    fn advance(&self, from: &Phase, to: Phase) -> bool {
        let current = self.phase();
        if &current != from {
            return false;
        }
        if let Phase::Failed { why, .. } = &to {
            log::error!("state transfer failed: {why}");
        } else {
            log::info!("state transfer: {current:?} -> {to:?}");
        }
        self.set(to);
        true
    }
}

/// What the driver needs of the backend it runs in.
pub trait Host: Send + Sync {
    /// The ring this node holds and its index in it, if it has a view.
    fn ring(&self) -> Option<(std::sync::Arc<Ring>, usize)>;
    /// Its store.
    fn store(&self) -> &dyn Engine;
    /// Sends a request to a peer.
    fn call(
        &self,
        addr: &str,
        request: &crate::protocol::Frame,
    ) -> crate::error::Result<crate::protocol::Frame>;
    /// Its receiver.
    fn receiver(&self) -> &Receiver;
    /// How long a source may take to answer.
    fn io_timeout(&self) -> Duration;
}

/// One source's transfer, as the receiving node sees it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    addr: String,
    id: u64,
}

/// A transfer under way: its plan and its sessions.
pub(crate) struct Transfer {
    pub(crate) plan: Plan,
    sessions: Vec<Session>,
}

/// Why a copy did not end in `Copied`.
pub(crate) enum Interrupted {
    /// The view moved or a source refused for its epoch: look again.
    Again,
    /// It cannot finish.
    Failed(String),
}

/// The receiving side's thread: copies while the node is syncing and catches up when it is
/// made up. Returns when [`Receiver::stop`] is called.
pub fn run(host: &dyn Host) {
    let receiver = host.receiver();
    let mut transfer: Option<Transfer> = None;
    while !receiver.stopped() {
        receiver.wait_for_work(Duration::from_millis(100));
        if receiver.stopped() {
            return;
        }
        let phase = receiver.phase();
        match &phase {
            Phase::Copying { .. } => match copy(host, &mut transfer) {
                Ok(epoch) => {
                    receiver.advance(&phase, Phase::Copied { epoch });
                }
                Err(Interrupted::Again) => std::thread::sleep(Duration::from_millis(20)),
                Err(Interrupted::Failed(why)) => {
                    transfer = None;
                    receiver.advance(
                        &phase,
                        Phase::Failed {
                            epoch: phase.epoch(),
                            why,
                        },
                    );
                }
            },
            Phase::Copied { epoch } => {
                // Still syncing in a newer view: the copy holds if every source does.
                let Some((ring, me)) = host.ring() else {
                    continue;
                };
                if ring.view().epoch == *epoch || ring.view().states[me] != NodeState::Syncing {
                    // Keeps the final delta small while it waits to be made up.
                    if let Some(t) = &transfer {
                        let _ = deltas(host, t, None, Some(SMALL_DELTA), &receiver.intake);
                    }
                    continue;
                }
                let still = transfer
                    .as_ref()
                    .zip(plan(&ring, me).ok())
                    .is_some_and(|(t, p)| t.plan == p);
                let next = if still {
                    Phase::Copied {
                        epoch: ring.view().epoch,
                    }
                } else {
                    Phase::Copying {
                        epoch: ring.view().epoch,
                    }
                };
                receiver.advance(&phase, next);
            }
            Phase::CatchingUp { epoch } => {
                let result = match &transfer {
                    Some(t) => catch_up(host, t, *epoch, &receiver.intake),
                    None => Err("no copy to catch up from".to_string()),
                };
                transfer = None;
                let next = match result {
                    Ok(()) => Phase::Serving,
                    Err(why) => Phase::Failed { epoch: *epoch, why },
                };
                receiver.advance(&phase, next);
            }
            Phase::Serving | Phase::Failed { .. } => {
                if let Some(t) = transfer.take() {
                    end_sessions(host, &t);
                }
            }
        }
    }
}

fn request(
    opcode: crate::protocol::Opcode,
    epoch: u64,
    me: &str,
    value: Vec<u8>,
) -> crate::protocol::Frame {
    let mut frame = crate::protocol::Frame::request(opcode, 1, me.as_bytes().to_vec(), value);
    frame.epoch = epoch;
    frame
}

/// Runs the copy for the view the node holds; the epoch it is complete for.
fn copy(host: &dyn Host, transfer: &mut Option<Transfer>) -> Result<u64, Interrupted> {
    let (ring, me) = host.ring().ok_or(Interrupted::Again)?;
    let view = ring.view();
    if view.states[me] != NodeState::Syncing {
        return Err(Interrupted::Again);
    }
    let plan = plan(&ring, me).map_err(Interrupted::Failed)?;
    if let Some(t) = transfer.take() {
        end_sessions(host, &t);
    }
    let t = begin(host, &ring, me, plan, &host.receiver().intake)?;
    *transfer = Some(t);
    Ok(view.epoch)
}

/// Copies `plan`'s points into this node (`me` in `ring`, whose epoch the sources must hold):
/// opens a session at each source, drops this node's own keys of those points, fetches the
/// snapshots, then deltas until few keys are left. The sessions stay open for the catch-up.
pub(crate) fn begin(
    host: &dyn Host,
    ring: &Ring,
    me: usize,
    plan: Plan,
    intake: &Intake,
) -> Result<Transfer, Interrupted> {
    use crate::protocol::{Opcode, Status};
    let view = ring.view();
    let me_addr = ring.node(me).to_string();
    let store = host.store();
    // Its own keys of those points are stale (they take no writes here while it copies): one
    // pass over the store drops them all, rather than one pass per source.
    // (Only the points it copies: the ones it keeps are the latest copy there is.)
    let copied: Vec<u32> = plan.by_source().into_values().flatten().collect();
    drop_points(store, ring, &copied);
    let mut sessions = Vec::new();
    for (source, points) in plan.by_source() {
        let addr = ring.node(source).to_string();
        let begin = request(
            Opcode::SYNC_BEGIN,
            view.epoch,
            &me_addr,
            crate::protocol::payload::encode_points(&points),
        );
        let answer = host
            .call(&addr, &begin)
            .map_err(|e| Interrupted::Failed(format!("source {addr}: {e}")))?;
        if answer.status == Status::STALE_VIEW || answer.status == Status::NO_VIEW {
            // The source is on another epoch: whichever of us is behind catches up first.
            end_all(host, &sessions);
            return Err(Interrupted::Again);
        }
        if answer.status != Status::OK || answer.value.len() < 16 {
            end_all(host, &sessions);
            return Err(Interrupted::Failed(format!(
                "source {addr} refused the transfer: {}: {}",
                answer.status,
                answer.message()
            )));
        }
        let id = u64::from_be_bytes(answer.value[..8].try_into().unwrap_or_default());
        let session = Session { addr, id };
        sessions.push(session.clone());
        let mut from = 0u64;
        loop {
            let mut value = id.to_be_bytes().to_vec();
            value.extend_from_slice(&from.to_be_bytes());
            let batch = match call_batch(
                host,
                &session,
                request(Opcode::SYNC_COPY, 0, &me_addr, value),
            ) {
                Ok(batch) => batch,
                Err(e) => {
                    end_all(host, &sessions);
                    return Err(e);
                }
            };
            let done = batch.entries.is_empty() && batch.next <= from;
            from = batch.next;
            if let Err(e) = apply_batch(host, batch.entries, false, intake) {
                end_all(host, &sessions);
                return Err(e);
            }
            if done {
                break;
            }
        }
    }
    let t = Transfer { plan, sessions };
    if let Err(e) = deltas(host, &t, None, Some(SMALL_DELTA), intake) {
        end_sessions(host, &t);
        return Err(e);
    }
    Ok(t)
}

/// Deletes this node's own keys in `points`: they are stale, and the copy brings the live ones.
fn drop_points(store: &dyn Engine, ring: &Ring, points: &[u32]) {
    let covered: HashSet<u32> = points.iter().copied().collect();
    let mut stale = Vec::new();
    store.for_each(&mut |key, _, _| {
        let point = ring.point_index(&crate::ring::key_position(key)) as u32;
        if covered.contains(&point) {
            stale.push(key.to_vec());
        }
    });
    let mut last = crate::store::Unsettled::NONE;
    for key in stale {
        if let Ok((_, written)) = store.delete_unsettled(&key) {
            last = last.max(written);
        }
    }
    let _ = store.settle(last);
}

/// One SYNC_COPY or SYNC_DELTA call of `session`.
fn call_batch(
    host: &dyn Host,
    session: &Session,
    request: crate::protocol::Frame,
) -> Result<TransferBatch, Interrupted> {
    use crate::protocol::Status;
    let answer = host
        .call(&session.addr, &request)
        .map_err(|e| Interrupted::Failed(format!("source {}: {e}", session.addr)))?;
    if answer.status == Status::STALE_VIEW {
        return Err(Interrupted::Again);
    }
    if answer.status != Status::OK {
        return Err(Interrupted::Failed(format!(
            "source {}: {}: {}",
            session.addr,
            answer.status,
            answer.message()
        )));
    }
    crate::protocol::payload::decode_transfer_batch(&answer.value)
        .map_err(|e| Interrupted::Failed(format!("source {}: {e}", session.addr)))
}

/// Applies copied entries; a final delta's skip the keys written since the catch-up began. A
/// key that cannot be stored (a full disk) fails the copy: a node missing keys must never count
/// as holding a partition, or it would answer NOT_FOUND for keys that exist.
fn apply_batch(
    host: &dyn Host,
    entries: Vec<TransferEntry>,
    final_delta: bool,
    intake: &Intake,
) -> Result<(), Interrupted> {
    let store = host.store();
    let mut last = crate::store::Unsettled::NONE;
    for entry in entries {
        let bytes = entry.key.len() + entry.value.as_ref().map_or(0, Vec::len);
        let write = || match &entry.value {
            Some(value) => store.put_expiring_unsettled(&entry.key, value, entry.expires_at),
            None => store.delete_unsettled(&entry.key).map(|(_, w)| w),
        };
        let written = if final_delta {
            intake.apply_unless_dirty(&entry.key, write)
        } else {
            Some(write())
        };
        match written {
            Some(Ok(w)) => last = last.max(w),
            Some(Err(e)) => {
                let _ = store.settle(last);
                return Err(Interrupted::Failed(format!(
                    "cannot store a copied key: {e}"
                )));
            }
            None => {}
        }
        intake.keys_copied.fetch_add(1, Ordering::Relaxed);
        intake
            .bytes_copied
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    store
        .settle(last)
        .map_err(|e| Interrupted::Failed(format!("cannot settle copied keys: {e}")))
}

/// Fetches deltas from every session until one has at most `small` keys left (`None`: until
/// none is left), stamped `epoch` when final.
pub(crate) fn deltas(
    host: &dyn Host,
    transfer: &Transfer,
    final_epoch: Option<u64>,
    small: Option<usize>,
    intake: &Intake,
) -> Result<(), Interrupted> {
    use crate::protocol::Opcode;
    let (ring, me) = host.ring().ok_or(Interrupted::Again)?;
    let me_addr = ring.node(me).to_string();
    for session in &transfer.sessions {
        loop {
            let mut value = session.id.to_be_bytes().to_vec();
            value.push(u8::from(final_epoch.is_some()));
            let frame = request(
                Opcode::SYNC_DELTA,
                final_epoch.unwrap_or(0),
                &me_addr,
                value,
            );
            let batch = call_batch(host, session, frame)?;
            let taken = batch.entries.len();
            let left = batch.next as usize;
            apply_batch(host, batch.entries, final_epoch.is_some(), intake)?;
            let enough = match small {
                Some(small) => taken + left <= small,
                None => left == 0 && taken == 0,
            };
            if enough {
                break;
            }
        }
    }
    Ok(())
}

/// The final deltas, once every source holds `epoch`; then the sessions are closed.
pub(crate) fn catch_up(
    host: &dyn Host,
    transfer: &Transfer,
    epoch: u64,
    intake: &Intake,
) -> Result<(), String> {
    // A source that has not installed the view yet answers STALE_VIEW; the keeper installs it
    // everywhere at once, so this is a short wait.
    let deadline = Instant::now() + host.io_timeout();
    loop {
        match deltas(host, transfer, Some(epoch), None, intake) {
            Ok(()) => break,
            Err(Interrupted::Again) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(Interrupted::Again) => {
                return Err(format!(
                    "a source did not install view epoch {epoch} within {:?}",
                    host.io_timeout()
                ))
            }
            Err(Interrupted::Failed(why)) => return Err(why),
        }
    }
    end_sessions(host, transfer);
    Ok(())
}

pub(crate) fn end_sessions(host: &dyn Host, transfer: &Transfer) {
    end_all(host, &transfer.sessions);
}

fn end_all(host: &dyn Host, sessions: &[Session]) {
    let Some((ring, me)) = host.ring() else {
        return;
    };
    for session in sessions {
        // A source the view has down (dead, or hung: a connection to a stopped process is
        // accepted and then never answered) is not waited on; it dropped or will drop the
        // transfer when it learns it is down.
        let up = ring
            .index_of(&session.addr)
            .is_some_and(|i| ring.view().is_up(i));
        if !up {
            continue;
        }
        let frame = request(
            crate::protocol::Opcode::SYNC_END,
            0,
            ring.node(me),
            session.id.to_be_bytes().to_vec(),
        );
        let _ = host.call(&session.addr, &frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Placement, Routing, View};
    use crate::store::MemStore;

    fn ring(states: &[NodeState], since: &[u64]) -> Ring {
        let nodes: Vec<String> = (0..states.len())
            .map(|i| format!("10.0.0.{i}:7001"))
            .collect();
        let mut view = View::new(
            5,
            Routing::Direct,
            Placement::Partitions { count: 64 },
            3,
            nodes,
        );
        view.states = states.to_vec();
        view.since = since.to_vec();
        Ring::new(view).unwrap()
    }

    #[test]
    fn a_returning_node_copies_each_partition_from_its_tail() {
        use NodeState::*;
        let ring = ring(&[Up, Up, Down, Up], &[0, 0, 3, 0]);
        let plan = plan(&ring, 2).unwrap();
        assert!(!plan.points.is_empty());
        for &(point, source) in &plan.points {
            let tail = ring.chain_at(point as usize).tail().unwrap();
            assert_eq!(source, Source::Copy(tail));
            assert_ne!(tail, 2);
        }
        // About 3 of every 4 chains, with 3 copies over 4 nodes.
        assert!(
            (32..64).contains(&plan.points.len()),
            "{}",
            plan.points.len()
        );
    }

    #[test]
    fn a_partition_with_nobody_up_waits_for_the_member_that_left_it_last() {
        use NodeState::*;
        // Three nodes, three copies: every partition has all three; node 1 left last.
        let ring = ring(&[Down, Down, Down], &[4, 7, 6]);
        assert!(plan(&ring, 0).is_err());
        assert!(plan(&ring, 2).is_err());
        let last = plan(&ring, 1).unwrap();
        assert!(last.is_keep_only());
        // Once it is up, the others copy from it.
        let ring = super::tests::ring(&[Down, Up, Down], &[4, 8, 6]);
        let plan = plan(&ring, 0).unwrap();
        assert!(plan.points.iter().all(|(_, s)| *s == Source::Copy(1)));
    }

    #[test]
    fn a_tracker_records_writes_from_its_start_and_hands_them_over_once() {
        use NodeState::*;
        let ring = ring(&[Up, Up, Syncing], &[0, 0, 3]);
        let store = MemStore::new(None);
        for i in 0..100u32 {
            store.put(&i.to_be_bytes(), b"old").unwrap();
        }
        let trackers = Trackers::default();
        let all: Vec<u32> = (0..ring.point_count() as u32).collect();
        let session = trackers.open("n2", &all, &ring).unwrap();
        assert_eq!(
            trackers
                .take_snapshot("n2", session, &ring, &store)
                .unwrap(),
            100
        );
        // Written during the copy: recorded.
        let key = 7u32.to_be_bytes();
        store.put(&key, b"new").unwrap();
        let point = ring.point_index(&crate::ring::key_position(&key));
        trackers.record(point, &key);
        store.delete(&8u32.to_be_bytes()).unwrap();
        trackers.record(
            ring.point_index(&crate::ring::key_position(&8u32.to_be_bytes())),
            &8u32.to_be_bytes(),
        );
        let mut copied = 0;
        let mut from = 0;
        loop {
            let batch = trackers.copy("n2", session, from, &store).unwrap();
            if batch.entries.is_empty() && batch.next == from {
                break;
            }
            copied += batch.entries.len();
            from = batch.next;
        }
        assert_eq!(copied, 99, "the deleted key is skipped");
        let delta = trackers.delta("n2", session, false, &store).unwrap();
        assert_eq!(delta.next, 0);
        let mut entries = delta.entries;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            entries,
            vec![
                TransferEntry {
                    key: key.to_vec(),
                    value: Some(b"new".to_vec()),
                    expires_at: None,
                },
                TransferEntry {
                    key: 8u32.to_be_bytes().to_vec(),
                    value: None,
                    expires_at: None,
                },
            ]
        );
        assert!(trackers
            .delta("n2", session, false, &store)
            .unwrap()
            .entries
            .is_empty());
        // Frozen by the final delta: later writes are not recorded.
        assert!(trackers
            .delta("n2", session, true, &store)
            .unwrap()
            .entries
            .is_empty());
        trackers.record(point, &key);
        assert!(trackers
            .delta("n2", session, true, &store)
            .unwrap()
            .entries
            .is_empty());
        assert!(trackers.copy("n2", session + 1, 0, &store).is_err());
        trackers.end("n2", session).unwrap();
        assert!(trackers.delta("n2", session, true, &store).is_err());
        assert_eq!(trackers.open_count(), 0);
    }

    #[test]
    fn a_final_delta_never_overwrites_a_key_written_during_the_catch_up() {
        let receiver = Receiver::default();
        receiver.set(Phase::Copied { epoch: 4 });
        receiver.view_installed(Some(NodeState::Syncing), NodeState::Up, 5);
        assert_eq!(receiver.phase(), Phase::CatchingUp { epoch: 5 });
        assert!(!receiver.serves_reads());
        let store = MemStore::new(None);
        receiver
            .write(b"k", || store.put(b"k", b"from the chain"))
            .unwrap();
        let applied = receiver
            .intake
            .apply_unless_dirty(b"k", || store.put(b"k", b"stale copy"));
        assert!(applied.is_none());
        assert_eq!(store.get(b"k").unwrap(), b"from the chain");
        assert!(receiver
            .intake
            .apply_unless_dirty(b"other", || store.put(b"other", b"copy"))
            .is_some());
        assert!(!receiver.wait_for_reads(Duration::from_millis(10)));
        receiver.set(Phase::Serving);
        assert!(receiver.wait_for_reads(Duration::from_millis(10)));
    }

    #[test]
    fn being_made_up_before_the_copy_is_done_fails_the_transfer() {
        let receiver = Receiver::default();
        receiver.view_installed(Some(NodeState::Down), NodeState::Syncing, 3);
        assert_eq!(receiver.phase(), Phase::Copying { epoch: 3 });
        receiver.view_installed(Some(NodeState::Syncing), NodeState::Up, 4);
        assert!(matches!(receiver.phase(), Phase::Failed { .. }));
        assert!(!receiver.serves_reads());
        receiver.view_installed(Some(NodeState::Up), NodeState::Down, 5);
        assert_eq!(receiver.phase(), Phase::Serving);
    }
}
