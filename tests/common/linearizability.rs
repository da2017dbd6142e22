//! A linearizability checker for the histories that fault-injection tests record.
//!
//! Include it with `#[path = "common/linearizability.rs"] mod linearizability;`.
//!
//! # What it checks
//!
//! Client threads record each operation with a shared [`Recorder`]: [`Recorder::invoke`] right
//! before the request goes out and [`Recorder::complete`] right after its answer (or error) came
//! back. Both push onto one `Mutex<Vec<Event>>`, so the order of the recorded events is a valid
//! real-time order: an operation that completed before another was invoked is recorded so.
//!
//! [`Recorder::check`] then decides whether the history is *linearizable*: whether every
//! operation can be given a single point in time between its invocation and its return such
//! that, taken in that order, the operations behave like a sequential key-value map. Keys are
//! independent registers, each starting absent (linearizability is compositional, so checking
//! each key's history on its own is exact): `Put(v)` stores `v`, `Get` returns the stored value
//! or `None`, `Delete` removes the value and reports whether one was there. The search itself is
//! stateright's [`LinearizabilityTester`] over a per-key register [`SequentialSpec`]; this module
//! only records, splits by key, maps clients to tester threads and explains failures.
//!
//! # Unknown outcomes
//!
//! [`Outcome::Unknown`] (an error or a timeout) means the operation may or may not have taken
//! effect, and if it did, at any time after its invocation, even long after the client gave up.
//! Such an operation is handed to the tester as invoked and never returned, i.e. it stays in
//! flight forever: it may be linearized anywhere after its invocation, or not at all. Because the
//! tester allows one in-flight operation per thread, the client's later operations are given to
//! the tester under a fresh thread id (one per `(client, generation)`). A [`Pending`] that is
//! dropped without [`Recorder::complete`] (say the client thread bailed out early) is recorded as
//! `Unknown` too.
//!
//! Two reductions keep the search small, and neither changes the verdict:
//! - an unknown `Get` is left out altogether (a read has no effect and its answer was not seen);
//! - an unknown write whose effect nobody could have observed is left out: an unknown `Put(x)`
//!   when no operation returning after its invocation read `Some(x)` or deleted with
//!   `found: true`, and an unknown `Delete` when no operation returning after its invocation read
//!   `None` or deleted with `found: false`. (Any linearization that uses such a write stays valid
//!   without it: the ops between it and the next write would have to observe its state.)
//!
//! # Cost bounds
//!
//! The tester is a depth-first search over interleavings without memoization, and each step
//! copies the remaining history of the key. So, per key with `n` operations:
//! - a history whose operations rarely overlap costs about `n²` work and memory, and the
//!   recursion is `n` deep (the search runs on its own thread with a large stack). Keep each
//!   key below about 2,000 operations; spread load over many keys instead (hundreds of
//!   operations per key is the sweet spot).
//! - overlapping operations and unknown writes that must stay in (see above) multiply the
//!   orders to try, and the worst case is a *failing* history, where the search has to rule out
//!   every order: roughly `(n/2)^u` prefixes for `u` kept unknown writes on the key.
//!
//! Measured (release, 2 cores): 8 clients, 200 keys, 20,000 operations with 1% unknown outcomes
//! and random delays check in about MEASURED; the same history with one stale read fails in
//! about MEASURED_FAIL.
//!
//! So that a hard history cannot hang a test, each key's search has a step budget
//! ([`DEFAULT_STEP_BUDGET`] calls of the register spec, see [`Recorder::check_with_budget`]);
//! when it is used up, `check` returns `Err` saying the key's history is *inconclusive* (not
//! shown to be linearizable). Keep histories bounded (fewer unknowns and less contention per
//! key) if that happens.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// How long `check` may search before it gives up as inconclusive.
pub const DEFAULT_TIME_BUDGET: Duration = Duration::from_secs(60);

/// The stack of the checking thread: the tester recurses once per operation of a key.
const CHECK_STACK_BYTES: usize = 512 << 20;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put(Vec<u8>),
    Get,
    Delete,
}

/// What came back. `Unknown`: an error or timeout, the operation may or may not have taken
/// effect (it may take effect at any later time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Put,
    Get(Option<Vec<u8>>),
    Delete { found: bool },
    Unknown,
}

/// One recorded event. `id` numbers operations in invocation order, from 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Invoke {
        id: usize,
        client: usize,
        key: Vec<u8>,
        op: Op,
    },
    Return {
        id: usize,
        outcome: Outcome,
    },
}

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    /// Operations invoked so far (the next id).
    ops: usize,
    /// Per client, the id of its operation in flight.
    in_flight: HashMap<usize, usize>,
}

/// A thread-safe history recorder (cheap to clone: all clones share one history).
#[derive(Clone, Default)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
}

/// An invoked operation, waiting for [`Recorder::complete`]. Dropping it without completing
/// records `Outcome::Unknown`.
#[must_use = "complete the operation with Recorder::complete"]
pub struct Pending {
    recorder: Recorder,
    id: usize,
    client: usize,
    key: Vec<u8>,
    op: Op,
    done: bool,
}

impl Pending {
    /// Drops it without recording a return: the operation stays in flight.
    fn leave_open(mut self) {
        self.done = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.recorder
                .push_return(self.id, self.client, Outcome::Unknown);
        }
    }
}

fn outcome_fits(op: &Op, outcome: &Outcome) -> bool {
    matches!(
        (op, outcome),
        (_, Outcome::Unknown)
            | (Op::Put(_), Outcome::Put)
            | (Op::Get, Outcome::Get(_))
            | (Op::Delete, Outcome::Delete { .. })
    )
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panicking client thread must not take the history down with it.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the invocation now (call right before sending the request). `client` identifies
    /// the calling client thread; one client has at most one operation in flight.
    pub fn invoke(&self, client: usize, key: &[u8], op: Op) -> Pending {
        let mut log = self.lock();
        if let Some(&other) = log.in_flight.get(&client) {
            drop(log);
            panic!(
                "linearizability recorder: client {client} invoked {op:?} on key {} while its \
                 operation #{other} is still in flight (one operation per client at a time)",
                show_bytes(key)
            );
        }
        let id = log.ops;
        log.ops += 1;
        log.in_flight.insert(client, id);
        log.events.push(Event::Invoke {
            id,
            client,
            key: key.to_vec(),
            op: op.clone(),
        });
        drop(log);
        Pending {
            recorder: self.clone(),
            id,
            client,
            key: key.to_vec(),
            op,
            done: false,
        }
    }

    /// Records the return now (call right after the answer arrived, or after the error).
    pub fn complete(&self, mut pending: Pending, outcome: Outcome) {
        pending.done = true;
        if !outcome_fits(&pending.op, &outcome) {
            panic!(
                "linearizability recorder: client {} completed {:?} on key {} with the \
                 outcome {outcome:?}, which does not belong to that operation",
                pending.client,
                pending.op,
                show_bytes(&pending.key)
            );
        }
        assert!(
            Arc::ptr_eq(&self.log, &pending.recorder.log),
            "linearizability recorder: operation #{} completed on a different recorder",
            pending.id
        );
        self.push_return(pending.id, pending.client, outcome);
    }

    fn push_return(&self, id: usize, client: usize, outcome: Outcome) {
        let mut log = self.lock();
        if log.in_flight.get(&client) == Some(&id) {
            log.in_flight.remove(&client);
        }
        log.events.push(Event::Return { id, outcome });
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.lock().ops
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the recorded events, in real-time order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// A recorder holding `events` (as returned by [`Recorder::events`], possibly edited), for
    /// replaying or doctoring a history. Validates it like `invoke` and `complete` do.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Recorder {
        let recorder = Recorder::new();
        let mut pending = HashMap::new();
        for event in events {
            match event {
                Event::Invoke {
                    id,
                    client,
                    key,
                    op,
                } => {
                    let p = recorder.invoke(client, &key, op);
                    assert!(
                        pending.insert(id, p).is_none(),
                        "from_events: operation #{id} invoked twice"
                    );
                }
                Event::Return { id, outcome } => {
                    let p = pending
                        .remove(&id)
                        .unwrap_or_else(|| panic!("from_events: return of #{id} without invoke"));
                    recorder.complete(p, outcome);
                }
            }
        }
        // Operations still open stay open (in flight forever) rather than become `Unknown`.
        for (_, p) in pending {
            p.leave_open();
        }
        recorder
    }

    /// Checks every key's history for linearizability (keys are independent registers, each
    /// starting absent). Ok with a short summary (keys, ops, unknown ops); Err naming the first
    /// key whose history is not linearizable and showing that key's history in a readable form.
    pub fn check(&self) -> Result<String, String> {
        self.check_with_budget(DEFAULT_TIME_BUDGET)
    }

    /// [`Recorder::check`] with a given time budget for the whole search; if it runs out, the
    /// check fails as *inconclusive*, naming the key it was searching.
    pub fn check_with_budget(&self, budget: Duration) -> Result<String, String> {
        let history = History::build(&self.events());
        let deadline = Instant::now() + budget;
        let verdict = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("linearizability-check".into())
                .stack_size(CHECK_STACK_BYTES)
                .spawn_scoped(scope, || history.check(deadline, budget))
                .expect("spawn the linearizability checking thread")
                .join()
        });
        verdict.unwrap_or_else(|payload| panic::resume_unwind(payload))
    }
}

// ---------------------------------------------------------------------------------------------
// The register spec handed to stateright. Values are interned per key (u32) so that the
// tester's many copies of the history stay cheap.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegOp {
    Put(u32),
    Get,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegRet {
    Put,
    Get(Option<u32>),
    Delete { found: bool },
}

/// The payload unwound through the tester when the budget runs out (no panic hook runs).
struct BudgetExceeded;

/// One key: a register holding a value or absent, plus the search deadline.
#[derive(Clone, Debug)]
struct KeyRegister {
    value: Option<u32>,
    deadline: Instant,
}

impl SequentialSpec for KeyRegister {
    type Op = RegOp;
    type Ret = RegRet;

    fn invoke(&mut self, op: &RegOp) -> RegRet {
        // Every step of the search passes through here; a step costs far more than reading
        // the clock (the tester copies the remaining history).
        if Instant::now() >= self.deadline {
            panic::resume_unwind(Box::new(BudgetExceeded));
        }
        match *op {
            RegOp::Put(v) => {
                self.value = Some(v);
                RegRet::Put
            }
            RegOp::Get => RegRet::Get(self.value),
            RegOp::Delete => RegRet::Delete {
                found: self.value.take().is_some(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The history, split by key, and each key's history split into segments.

struct OpRecord {
    client: usize,
    op: Op,
    invoked_at: usize,
    /// Event position of the return and the outcome; `None`: never returned.
    returned: Option<(usize, Outcome)>,
}

impl OpRecord {
    fn is_unknown(&self) -> bool {
        matches!(self.returned, None | Some((_, Outcome::Unknown)))
    }

    fn is_known_put(&self) -> bool {
        matches!(
            (&self.op, &self.returned),
            (Op::Put(_), Some((_, Outcome::Put)))
        )
    }

    /// Whether this operation returned an answer that could reflect the state left by `write`:
    /// the value `write` put (or "some value" for a delete that found one), or the absence
    /// `write` deleted.
    fn may_observe(&self, write: &Op) -> bool {
        let Some((_, outcome)) = &self.returned else {
            return false;
        };
        match (write, outcome) {
            (Op::Put(v), Outcome::Get(Some(got))) => got == v,
            (Op::Put(_), Outcome::Delete { found: true }) => true,
            (Op::Delete, Outcome::Get(None) | Outcome::Delete { found: false }) => true,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyEvent {
    Invoke(usize),
    Return(usize),
}

#[derive(Default)]
struct KeyHistory {
    /// Operation ids, in invocation order.
    ops: Vec<usize>,
    events: Vec<KeyEvent>,
}

/// A stretch of one key's history that can be checked on its own.
#[derive(Default)]
struct Segment {
    /// Unknown writes invoked before the segment that may matter in it or later: in flight
    /// from its start.
    carried: Vec<usize>,
    /// The events given to the tester.
    events: Vec<KeyEvent>,
    /// The event position where the segment starts (0 for the first).
    starts_at: usize,
}

struct History {
    ops: Vec<OpRecord>,
    keys: BTreeMap<Vec<u8>, KeyHistory>,
    /// Per operation, the generation of its client: the tester thread is `(client, generation)`.
    generation: Vec<usize>,
}

/// Where an unknown write in flight at a cut may take effect (see [`History::side`]).
enum Side {
    Here,
    Later,
    Either,
}

enum Search {
    Linearizable,
    NotLinearizable,
    Inconclusive,
}

/// A key's operations as the tester sees them: values interned, unknown answers `None`.
struct KeyOps {
    op: HashMap<usize, RegOp>,
    ret: HashMap<usize, Option<RegRet>>,
    /// Left out altogether (see [`History::can_skip`]).
    skip: HashMap<usize, bool>,
}

impl KeyOps {
    fn new(history: &History, key: &KeyHistory) -> KeyOps {
        let mut values: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut intern = |v: &[u8]| {
            let next = values.len() as u32;
            *values.entry(v.to_vec()).or_insert(next)
        };
        let mut ops = KeyOps {
            op: HashMap::new(),
            ret: HashMap::new(),
            skip: HashMap::new(),
        };
        for &id in &key.ops {
            let record = &history.ops[id];
            let op = match &record.op {
                Op::Put(v) => RegOp::Put(intern(v)),
                Op::Get => RegOp::Get,
                Op::Delete => RegOp::Delete,
            };
            let ret = match &record.returned {
                Some((_, Outcome::Put)) => Some(RegRet::Put),
                Some((_, Outcome::Get(v))) => Some(RegRet::Get(v.as_deref().map(&mut intern))),
                Some((_, Outcome::Delete { found })) => Some(RegRet::Delete { found: *found }),
                Some((_, Outcome::Unknown)) | None => None,
            };
            ops.op.insert(id, op);
            ops.ret.insert(id, ret);
            ops.skip.insert(id, history.can_skip(key, id));
        }
        ops
    }
}

enum Verdict {
    Linearizable,
    /// The segment with the violation.
    NotLinearizable(Segment),
    Inconclusive(Segment),
}

impl History {
    fn build(events: &[Event]) -> History {
        let mut ops: Vec<OpRecord> = Vec::new();
        let mut keys: BTreeMap<Vec<u8>, KeyHistory> = BTreeMap::new();
        let mut key_of: Vec<Vec<u8>> = Vec::new();
        let mut generation = Vec::new();
        let mut client_generation: HashMap<usize, usize> = HashMap::new();
        for (at, event) in events.iter().enumerate() {
            match event {
                Event::Invoke {
                    id,
                    client,
                    key,
                    op,
                } => {
                    assert_eq!(*id, ops.len(), "operation ids must be dense, in order");
                    ops.push(OpRecord {
                        client: *client,
                        op: op.clone(),
                        invoked_at: at,
                        returned: None,
                    });
                    generation.push(*client_generation.entry(*client).or_default());
                    let history = keys.entry(key.clone()).or_default();
                    history.ops.push(*id);
                    history.events.push(KeyEvent::Invoke(*id));
                    key_of.push(key.clone());
                }
                Event::Return { id, outcome } => {
                    let record = &mut ops[*id];
                    assert!(record.returned.is_none(), "operation #{id} returned twice");
                    record.returned = Some((at, outcome.clone()));
                    if *outcome == Outcome::Unknown {
                        // Still in flight forever: the client goes on as a new tester thread.
                        *client_generation.entry(record.client).or_default() += 1;
                    }
                    let history = keys.get_mut(&key_of[*id]).expect("key of an invoked op");
                    history.events.push(KeyEvent::Return(*id));
                }
            }
        }
        History {
            ops,
            keys,
            generation,
        }
    }

    /// Whether an operation of `key` that returned in the event positions `(after, before)`
    /// may have observed the state left by the unknown write `write`.
    fn observed(&self, key: &KeyHistory, write: usize, after: usize, before: usize) -> bool {
        key.ops.iter().any(|&id| {
            let op = &self.ops[id];
            matches!(op.returned, Some((at, _)) if after < at && at < before)
                && op.may_observe(&self.ops[write].op)
        })
    }

    /// Whether the tester can leave operation `id` out without changing the verdict: an
    /// unknown read, or an unknown write that no later answer may have observed.
    fn can_skip(&self, key: &KeyHistory, id: usize) -> bool {
        let record = &self.ops[id];
        record.is_unknown()
            && (record.op == Op::Get || !self.observed(key, id, record.invoked_at, usize::MAX))
    }

    /// Splits a key's history (the events given to the tester) into stretches at the points
    /// `t` where every known operation invoked before `t` has returned and the next one is a
    /// completed Put that returns before anything else is invoked. Every linearization puts
    /// the known operations before `t` first, then that Put, which makes the state before it
    /// irrelevant: the stretches can be checked apart, up to the unknown writes in flight at
    /// `t` (see [`History::check_key`]).
    fn stretches(&self, fed: &[KeyEvent]) -> Vec<Segment> {
        let mut stretches = vec![Segment::default()];
        let mut open_known = 0usize;
        for (i, &event) in fed.iter().enumerate() {
            let current = stretches.last().expect("one stretch");
            if let KeyEvent::Invoke(id) = event {
                if open_known == 0
                    && !current.events.is_empty()
                    && self.ops[id].is_known_put()
                    && fed.get(i + 1) == Some(&KeyEvent::Return(id))
                {
                    stretches.push(Segment {
                        starts_at: self.ops[id].invoked_at,
                        ..Segment::default()
                    });
                }
            }
            match event {
                KeyEvent::Invoke(id) if !self.ops[id].is_unknown() => open_known += 1,
                KeyEvent::Return(id) if !self.ops[id].is_unknown() => open_known -= 1,
                _ => {}
            }
            stretches
                .last_mut()
                .expect("one stretch")
                .events
                .push(event);
        }
        stretches
    }

    /// On which side of a cut at `t` the unknown write `u` (invoked before `t`) may matter.
    fn side(&self, key: &KeyHistory, u: usize, t: usize) -> Side {
        let write = &self.ops[u];
        if let Op::Put(x) = &write.op {
            // A read of a value only `u` wrote needs `u` as the last write before it; the
            // lone Put at `t` separates the two sides, so `u` takes effect on the reader's.
            let unique = key
                .ops
                .iter()
                .filter(|&&o| self.ops[o].op == write.op)
                .count()
                == 1;
            let read_within = |after: usize, before: usize| {
                key.ops.iter().any(|&o| {
                    matches!(&self.ops[o].returned,
                        Some((at, Outcome::Get(Some(v)))) if v == x && after < *at && *at < before)
                })
            };
            if unique && read_within(write.invoked_at, t) {
                return Side::Here;
            }
            if unique && read_within(t, usize::MAX) {
                return Side::Later;
            }
        }
        let before = self.observed(key, u, write.invoked_at, t);
        let after = self.observed(key, u, t, usize::MAX);
        match (before, after) {
            (_, false) => Side::Here,
            (false, true) => Side::Later,
            (true, true) => Side::Either,
        }
    }

    fn check(&self, deadline: Instant, budget: Duration) -> Result<String, String> {
        let mut unknown = 0;
        for (key, history) in &self.keys {
            unknown += history
                .ops
                .iter()
                .filter(|&&id| self.ops[id].is_unknown())
                .count();
            match self.check_key(history, deadline) {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable(segment) => {
                    return Err(self.explain(key, history, &segment, "is NOT linearizable"));
                }
                Verdict::Inconclusive(segment) => {
                    let verdict = format!(
                        "is inconclusive: the search ran out of its time budget of {budget:?} \
                         (too many overlapping or unknown operations on one key: bound the \
                         history, see the linearizability module's doc)"
                    );
                    return Err(self.explain(key, history, &segment, &verdict));
                }
            }
        }
        Ok(format!(
            "linearizable: {} keys, {} operations, {} with unknown outcome",
            self.keys.len(),
            self.ops.len(),
            unknown
        ))
    }

    /// Checks one key: stretch by stretch, merging stretches where an unknown write may be
    /// needed on both sides of the cut between them.
    ///
    /// At a cut `t`, each unknown write in flight is, by [`History::side`], needed only
    /// before `t` (`Here`; it is then dropped), only after (`Later`: carried into the rest,
    /// invoked before all of it) or possibly on either side. The stretch is checked with the
    /// `Here` ones. If that passes, the rest gets the others (the most it could have): the key
    /// is linearizable exactly when the rest is. If it fails and nothing was `Either`, the key
    /// is not linearizable. Otherwise the stretch is checked once more with every write in
    /// flight: if it still fails, the key is not linearizable, else it is merged with the next
    /// stretch. Each write thus takes effect in one stretch at most.
    fn check_key(&self, history: &KeyHistory, deadline: Instant) -> Verdict {
        let ops = KeyOps::new(self, history);
        let fed: Vec<KeyEvent> = history
            .events
            .iter()
            .copied()
            .filter(|event| {
                let (KeyEvent::Invoke(id) | KeyEvent::Return(id)) = *event;
                !ops.skip[&id]
            })
            .collect();
        let mut stretches = self.stretches(&fed).into_iter().peekable();
        let mut carried = Vec::new();
        let mut block: Option<Segment> = None;
        while let Some(stretch) = stretches.next() {
            let block_now = match block.take() {
                None => Segment {
                    carried: std::mem::take(&mut carried),
                    ..stretch
                },
                Some(mut merged) => {
                    merged.events.extend(stretch.events);
                    merged
                }
            };
            let in_flight: Vec<usize> = block_now
                .carried
                .iter()
                .copied()
                .chain(block_now.events.iter().filter_map(|event| match *event {
                    KeyEvent::Invoke(id) if ops.ret[&id].is_none() => Some(id),
                    _ => None,
                }))
                .collect();
            let Some(next) = stretches.peek() else {
                return match self.search(&ops, &block_now, &in_flight, deadline) {
                    Search::Linearizable => Verdict::Linearizable,
                    Search::NotLinearizable => Verdict::NotLinearizable(block_now),
                    Search::Inconclusive => Verdict::Inconclusive(block_now),
                };
            };
            let t = next.starts_at;
            let (mut here, mut later, mut either) = (Vec::new(), Vec::new(), Vec::new());
            for &u in &in_flight {
                match self.side(history, u, t) {
                    Side::Here => here.push(u),
                    Side::Later => later.push(u),
                    Side::Either => either.push(u),
                }
            }
            match self.search(&ops, &block_now, &here, deadline) {
                Search::Linearizable => {
                    carried = later;
                    carried.extend(either);
                }
                Search::Inconclusive => return Verdict::Inconclusive(block_now),
                Search::NotLinearizable if either.is_empty() => {
                    return Verdict::NotLinearizable(block_now)
                }
                Search::NotLinearizable => {
                    match self.search(&ops, &block_now, &in_flight, deadline) {
                        Search::Linearizable => block = Some(block_now),
                        Search::NotLinearizable => return Verdict::NotLinearizable(block_now),
                        Search::Inconclusive => return Verdict::Inconclusive(block_now),
                    }
                }
            }
        }
        Verdict::Linearizable
    }

    /// Runs stateright's tester on `segment`, with the unknown writes `in_flight` available
    /// (the segment's carried ones, invoked first, and its own; the others are left out).
    fn search(
        &self,
        ops: &KeyOps,
        segment: &Segment,
        in_flight: &[usize],
        deadline: Instant,
    ) -> Search {
        let feeds = |id: usize| ops.ret[&id].is_some() || in_flight.contains(&id);
        let events: Vec<KeyEvent> = segment
            .carried
            .iter()
            .filter(|&&id| feeds(id))
            .map(|&id| KeyEvent::Invoke(id))
            .chain(segment.events.iter().copied().filter(|event| {
                let (KeyEvent::Invoke(id) | KeyEvent::Return(id)) = *event;
                feeds(id)
            }))
            .collect();

        // Tester thread ids: the search tries threads in id order, so the threads left with
        // an operation in flight forever come last. Their operation is then linearized
        // lazily, when nothing else fits (say, when a read needs its value), instead of
        // eagerly at the earliest point, which in a linearizable history would be undone by a
        // backtrack over everything in between.
        let thread_of = |id: usize| (self.ops[id].client, self.generation[id]);
        let mut threads: HashMap<(usize, usize), (bool, usize)> = HashMap::new();
        for event in &events {
            if let KeyEvent::Invoke(id) = *event {
                let next = threads.len();
                let thread = threads.entry(thread_of(id)).or_insert((false, next));
                thread.0 |= ops.ret[&id].is_none();
            }
        }

        let mut tester = LinearizabilityTester::new(KeyRegister {
            value: None,
            deadline,
        });
        for event in events {
            let fed = match event {
                KeyEvent::Invoke(id) => tester
                    .on_invoke(threads[&thread_of(id)], ops.op[&id])
                    .map(|_| ()),
                KeyEvent::Return(id) => match ops.ret[&id] {
                    Some(ret) => tester.on_return(threads[&thread_of(id)], ret).map(|_| ()),
                    None => Ok(()), // unknown: in flight forever
                },
            };
            if let Err(e) = fed {
                panic!("linearizability checker: bad history fed to the tester: {e}");
            }
        }
        match panic::catch_unwind(AssertUnwindSafe(|| tester.serialized_history())) {
            Ok(Some(_)) => Search::Linearizable,
            Ok(None) => Search::NotLinearizable,
            Err(payload) if payload.is::<BudgetExceeded>() => Search::Inconclusive,
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    fn explain(
        &self,
        key: &[u8],
        history: &KeyHistory,
        segment: &Segment,
        verdict: &str,
    ) -> String {
        let unknown = history
            .ops
            .iter()
            .filter(|&&id| self.ops[id].is_unknown())
            .count();
        let ends_at = segment
            .events
            .iter()
            .map(|&(KeyEvent::Invoke(id) | KeyEvent::Return(id))| id)
            .max()
            .map_or(0, |last| self.ops[last].invoked_at);
        // The segment's operations, the carried ones and the ones left out included.
        let shown: Vec<usize> = history
            .ops
            .iter()
            .copied()
            .filter(|&id| {
                let at = self.ops[id].invoked_at;
                segment.carried.contains(&id) || (segment.starts_at <= at && at <= ends_at)
            })
            .collect();
        let mut out = format!(
            "the history of key {} {verdict} ({} operations, {unknown} with unknown outcome).\n",
            show_bytes(key),
            history.ops.len(),
        );
        if shown.len() < history.ops.len() {
            let _ = writeln!(
                out,
                "Shown: the {} operations of the stretch that fails; the rest is checked apart \
                 (the stretch begins with a lone Put, or with the first operation, so what \
                 came before it does not matter, except unknown writes shown here).",
                shown.len()
            );
        }
        out.push_str(
            "Each line: [invoked..returned] as positions in the global event order (`?`: no \
             answer, may take effect any time after its invocation, or never), client, \
             operation -> outcome. Keys start absent.\n",
        );
        let width = (2 * self.ops.len()).max(1).to_string().len() + 1;
        for id in shown {
            let record = &self.ops[id];
            let (ret_at, outcome) = match &record.returned {
                Some((at, Outcome::Unknown)) => (format!("{at}?"), "unknown".to_string()),
                Some((at, outcome)) => (at.to_string(), show_outcome(outcome)),
                None => ("?".to_string(), "never returned".to_string()),
            };
            let _ = writeln!(
                out,
                "  [{:>width$}..{:>width$}] client {:<3} {} -> {}",
                record.invoked_at,
                ret_at,
                record.client,
                show_op(&record.op),
                outcome,
            );
        }
        out
    }
}

/// A key or value for people: a quoted string if it is UTF-8, else hex.
pub fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("{s:?}"),
        Err(_) => {
            let mut hex = String::from("0x");
            for b in bytes {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    }
}

fn show_op(op: &Op) -> String {
    match op {
        Op::Put(v) => format!("Put({})", show_bytes(v)),
        Op::Get => "Get".to_string(),
        Op::Delete => "Delete".to_string(),
    }
}

fn show_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Put => "ok".to_string(),
        Outcome::Get(Some(v)) => format!("Some({})", show_bytes(v)),
        Outcome::Get(None) => "None".to_string(),
        Outcome::Delete { found: true } => "found".to_string(),
        Outcome::Delete { found: false } => "not found".to_string(),
        Outcome::Unknown => "unknown".to_string(),
    }
}
