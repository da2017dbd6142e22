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

/// At a cut, at most this many ways to split the unknown writes that may matter on either
/// side are tried; with more, the stretches are merged.
const MAX_CHOICES: usize = 64;

/// At most this many sets of unknown writes are followed from stretch to stretch; with more,
/// the stretches are merged.
const MAX_STATES: usize = 16;

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
// tester's many copies of the history stay cheap; each operation carries its id (ignored by
// the spec) so that a found linearization tells which unknown writes it used.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegOp {
    Put { value: u32, id: usize },
    Get { id: usize },
    Delete { id: usize },
}

impl RegOp {
    fn id(&self) -> usize {
        match *self {
            RegOp::Put { id, .. } | RegOp::Get { id } | RegOp::Delete { id } => id,
        }
    }
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
            RegOp::Put { value, .. } => {
                self.value = Some(value);
                RegRet::Put
            }
            RegOp::Get { .. } => RegRet::Get(self.value),
            RegOp::Delete { .. } => RegRet::Delete {
                found: self.value.take().is_some(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The history, split by key, and each key's history into stretches.

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

    /// The register's state right after this (known) operation.
    fn state_after(&self) -> Option<Vec<u8>> {
        match (&self.op, &self.returned) {
            (Op::Put(v), _) => Some(v.clone()),
            (Op::Get, Some((_, Outcome::Get(v)))) => v.clone(),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A stretch of one key's history that can be checked on its own (see
/// [`History::stretches`]).
#[derive(Default)]
struct Segment {
    /// The event position after which its operations were invoked (0 for the first).
    starts_at: usize,
    /// The state it starts from (the state the lone operation before it left).
    initial: Option<Vec<u8>>,
    /// Unknown writes invoked before it that are available in it: in flight from its start.
    carried: Vec<usize>,
    /// The events given to the tester (unknown reads and unobservable writes left out).
    events: Vec<KeyEvent>,
}

struct History {
    ops: Vec<OpRecord>,
    keys: BTreeMap<Vec<u8>, KeyHistory>,
    /// Per operation, the generation of its client: the tester thread is `(client, generation)`.
    generation: Vec<usize>,
}

/// Unknown writes that are interchangeable in a stretch and after it (see [`History::class`]);
/// `Own`: one invoked in the stretch itself, like no other.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Delete,
    /// A Put whose value nobody reads from the stretch on.
    UnreadPut,
    Put(Vec<u8>),
    Own(usize),
}

/// Where an unknown write in flight at a cut may take effect (see [`History::side`]).
enum Side {
    Here,
    Later,
    Either,
}

enum Search {
    /// With the ids of the unknown writes the linearization found used.
    Linearizable(Vec<usize>),
    NotLinearizable,
    Inconclusive,
}

/// A key's operations as the tester sees them: values interned, unknown answers `None`.
struct KeyOps {
    op: HashMap<usize, RegOp>,
    ret: HashMap<usize, Option<RegRet>>,
    /// Left out altogether (see [`History::can_skip`]).
    skip: HashMap<usize, bool>,
    values: HashMap<Vec<u8>, u32>,
}

impl KeyOps {
    fn new(history: &History, key: &KeyHistory) -> KeyOps {
        let mut ops = KeyOps {
            op: HashMap::new(),
            ret: HashMap::new(),
            skip: HashMap::new(),
            values: HashMap::new(),
        };
        for &id in &key.ops {
            let record = &history.ops[id];
            let op = match &record.op {
                Op::Put(v) => RegOp::Put {
                    value: ops.intern(v),
                    id,
                },
                Op::Get => RegOp::Get { id },
                Op::Delete => RegOp::Delete { id },
            };
            let ret = match &record.returned {
                Some((_, Outcome::Put)) => Some(RegRet::Put),
                Some((_, Outcome::Get(v))) => {
                    Some(RegRet::Get(v.as_deref().map(|v| ops.intern(v))))
                }
                Some((_, Outcome::Delete { found })) => Some(RegRet::Delete { found: *found }),
                Some((_, Outcome::Unknown)) | None => None,
            };
            ops.op.insert(id, op);
            ops.ret.insert(id, ret);
            ops.skip.insert(id, history.can_skip(key, id));
        }
        ops
    }

    fn intern(&mut self, value: &[u8]) -> u32 {
        let next = self.values.len() as u32;
        *self.values.entry(value.to_vec()).or_insert(next)
    }
}

enum Verdict {
    Linearizable,
    /// The stretch with the violation.
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

    /// How many operations of `key` that returned in `(after, before)` match `answer`.
    fn answers(
        &self,
        key: &KeyHistory,
        after: usize,
        before: usize,
        answer: impl Fn(&Outcome) -> bool,
    ) -> usize {
        key.ops
            .iter()
            .filter(|&&id| {
                matches!(&self.ops[id].returned,
                    Some((at, outcome)) if after < *at && *at < before && answer(outcome))
            })
            .count()
    }

    /// Whether an operation of `key` that returned in `(after, before)` may have observed
    /// the state left by the unknown write `write`.
    fn observed(&self, key: &KeyHistory, write: usize, after: usize, before: usize) -> bool {
        key.ops.iter().any(|&id| {
            let op = &self.ops[id];
            matches!(op.returned, Some((at, _)) if after < at && at < before)
                && op.may_observe(&self.ops[write].op)
        })
    }

    /// How many reads of `key` that returned in `(after, before)` saw `value`.
    fn reads(&self, key: &KeyHistory, value: &[u8], after: usize, before: usize) -> usize {
        self.answers(
            key,
            after,
            before,
            |outcome| matches!(outcome, Outcome::Get(Some(v)) if v.as_slice() == value),
        )
    }

    /// Whether the tester can leave operation `id` out without changing the verdict: an
    /// unknown read, or an unknown write that no later answer may have observed.
    fn can_skip(&self, key: &KeyHistory, id: usize) -> bool {
        let record = &self.ops[id];
        record.is_unknown()
            && (record.op == Op::Get || !self.observed(key, id, record.invoked_at, usize::MAX))
    }

    /// Splits a key's history (the events given to the tester) into stretches, after each
    /// *lone* known operation: one invoked when every known operation invoked before it had
    /// returned, and that returned before anything else was invoked. Every linearization puts
    /// the known operations before it first, then it, then the rest, and the state it leaves
    /// is known (what it put, read or deleted): the rest can be checked from that state,
    /// apart, up to the unknown writes in flight at the cut (see [`History::check_key`]).
    fn stretches(&self, fed: &[KeyEvent]) -> Vec<Segment> {
        let mut stretches = vec![Segment::default()];
        let mut open_known = 0usize;
        for (i, &event) in fed.iter().enumerate() {
            stretches
                .last_mut()
                .expect("one stretch")
                .events
                .push(event);
            match event {
                KeyEvent::Invoke(id) if !self.ops[id].is_unknown() => open_known += 1,
                KeyEvent::Return(id) if !self.ops[id].is_unknown() => {
                    open_known -= 1;
                    let lone = open_known == 0 && i > 0 && fed[i - 1] == KeyEvent::Invoke(id);
                    if lone && i + 1 < fed.len() {
                        let op = &self.ops[id];
                        stretches.push(Segment {
                            starts_at: op.returned.as_ref().expect("known").0,
                            initial: op.state_after(),
                            ..Segment::default()
                        });
                    }
                }
                _ => {}
            }
        }
        stretches
    }

    /// On which side of the cut at `t` (the return of a lone operation, after which the state
    /// is `cut_state`) the unknown write `u` may matter, when it can take effect only after
    /// `s` (the start of the stretch it is in flight in).
    fn side(
        &self,
        key: &KeyHistory,
        u: usize,
        s: usize,
        t: usize,
        cut_state: &Option<Vec<u8>>,
    ) -> Side {
        let write = &self.ops[u];
        let from = write.invoked_at.max(s);
        let until = t.saturating_add(1); // up to and including t
        if let Op::Put(x) = &write.op {
            // A read of a value only `u` wrote needs `u` as the last write before it. If the
            // read is before the cut, so is `u`; if after, so is `u`, unless `x` is the state
            // at the cut (which the rest starts from).
            let unique = key
                .ops
                .iter()
                .filter(|&&o| self.ops[o].op == write.op)
                .count()
                == 1;
            if unique && self.reads(key, x, from, until) > 0 {
                return Side::Here;
            }
            if unique && cut_state.as_ref() != Some(x) && self.reads(key, x, t, usize::MAX) > 0 {
                return Side::Later;
            }
        }
        let before = self.observed(key, u, from, until);
        let after = self.observed(key, u, t, usize::MAX);
        match (before, after) {
            (_, false) => Side::Here,
            (false, true) => Side::Later,
            (true, true) => Side::Either,
        }
    }

    /// The class of an unknown write `u` carried into a stretch starting at `s`: within the
    /// stretch and after it, the writes of one class are interchangeable.
    fn class(&self, key: &KeyHistory, u: usize, s: usize) -> Class {
        match &self.ops[u].op {
            Op::Delete => Class::Delete,
            Op::Put(x) if self.reads(key, x, s, usize::MAX) == 0 => Class::UnreadPut,
            Op::Put(x) => Class::Put(x.clone()),
            Op::Get => unreachable!("unknown reads are left out"),
        }
    }

    /// How many writes of `class` can matter in the stretch `(s, t]`: each one that matters
    /// is the last write before an answer that observes it, so at most the number of those.
    fn useful(&self, key: &KeyHistory, class: &Class, s: usize, t: usize) -> usize {
        let until = t.saturating_add(1);
        match class {
            Class::Own(_) => 1,
            Class::Delete => self.answers(key, s, until, |outcome| {
                matches!(
                    outcome,
                    Outcome::Get(None) | Outcome::Delete { found: false }
                )
            }),
            Class::UnreadPut => self.answers(key, s, until, |outcome| {
                matches!(outcome, Outcome::Delete { found: true })
            }),
            Class::Put(x) => self.answers(key, s, until, |outcome| match outcome {
                Outcome::Get(Some(v)) => v == x,
                Outcome::Delete { found } => *found,
                _ => false,
            }),
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

    /// Checks one key, stretch by stretch (see [`History::stretches`]).
    ///
    /// What links the stretches, besides the state at each cut, are the unknown writes, each
    /// of which takes effect at most once. At the cut `t` after a stretch, each one in flight
    /// in it is, by [`History::side`], of use only up to `t` (`Here`: the stretch gets it, the
    /// rest does not), only after (`Later`: carried into the rest, in flight from its start)
    /// or possibly on either side. Carried writes of one [`Class`] are interchangeable, and a
    /// stretch can use at most [`History::useful`] of them. For the writes of either side,
    /// the stretch needs some choice of them (how many of each group); the rest gets the
    /// others. More writes in flight can only help a stretch, so it suffices to follow, from
    /// stretch to stretch, the maximal sets of writes still available ("states"), i.e. the
    /// minimal sufficient choices: the key is linearizable exactly when its last stretch is,
    /// from one of them. The stretch is checked with every write first; if the linearization
    /// found used none of either side, that is the one minimal choice, else every smaller
    /// choice is tried, fewest first. Where that would take too many checks (more than
    /// [`MAX_CHOICES`] choices, or more than [`MAX_STATES`] states), the stretch is merged
    /// with the next one instead, which is always exact.
    fn check_key(&self, history: &KeyHistory, deadline: Instant) -> Verdict {
        let mut ops = KeyOps::new(self, history);
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
        let mut states: Vec<Vec<usize>> = vec![Vec::new()];
        let mut block: Option<Segment> = None;
        while let Some(stretch) = stretches.next() {
            let mut block_now = match block.take() {
                None => stretch,
                Some(mut merged) => {
                    merged.events.extend(stretch.events);
                    merged
                }
            };
            let own_unknown: Vec<usize> = block_now
                .events
                .iter()
                .filter_map(|event| match *event {
                    KeyEvent::Invoke(id) if ops.ret[&id].is_none() => Some(id),
                    _ => None,
                })
                .collect();
            let s = block_now.starts_at;
            let last = stretches.peek().is_none();
            let (t, cut_state) = stretches.peek().map_or((usize::MAX, None), |next| {
                (next.starts_at, next.initial.clone())
            });

            let mut next_states: Vec<Vec<usize>> = Vec::new();
            let mut merge = false;
            'states: for carried in &states {
                block_now.carried = carried.clone();
                let mut groups: BTreeMap<Class, Vec<usize>> = BTreeMap::new();
                for &u in carried {
                    groups.entry(self.class(history, u, s)).or_default().push(u);
                }
                for &u in &own_unknown {
                    groups.insert(Class::Own(u), vec![u]);
                }
                let (mut give, mut keep) = (Vec::new(), Vec::new());
                let mut choices: Vec<(Vec<usize>, usize)> = Vec::new();
                for (class, members) in groups {
                    let cap = members.len().min(self.useful(history, &class, s, t));
                    // The members of a group are on the same side.
                    match self.side(history, members[0], s, t, &cut_state) {
                        Side::Here => give.extend(&members[..cap]),
                        Side::Later => keep.extend(members),
                        Side::Either => choices.push((members, cap)),
                    }
                }
                let combinations = choices
                    .iter()
                    .try_fold(1usize, |n, (_, cap)| n.checked_mul(cap + 1))
                    .filter(|&n| n <= MAX_CHOICES);
                let Some(combinations) = combinations else {
                    merge = true;
                    break;
                };
                let split = |count: &[usize]| {
                    let mut available = give.clone();
                    let mut kept = keep.clone();
                    for ((members, _), &n) in choices.iter().zip(count) {
                        available.extend(&members[..n]);
                        kept.extend(&members[n..]);
                    }
                    kept.sort_unstable();
                    (available, kept)
                };

                // First with everything.
                let full: Vec<usize> = choices.iter().map(|&(_, cap)| cap).collect();
                let used = match self.search(&mut ops, &block_now, &split(&full).0, deadline) {
                    Search::Linearizable(used) => used,
                    Search::NotLinearizable => continue 'states,
                    Search::Inconclusive => return Verdict::Inconclusive(block_now),
                };
                if last {
                    return Verdict::Linearizable;
                }
                // How many of each group the found linearization used: a sufficient choice.
                let found: Vec<usize> = choices
                    .iter()
                    .map(|(members, _)| members.iter().filter(|u| used.contains(u)).count())
                    .collect();
                let mut sufficient = vec![found.clone()];
                if found.iter().any(|&n| n > 0) {
                    // Every smaller choice, fewest writes first; one that includes a
                    // sufficient choice is not minimal.
                    let mut counts: Vec<Vec<usize>> = (0..combinations)
                        .map(|mut n| {
                            choices
                                .iter()
                                .map(|(_, cap)| {
                                    let count = n % (cap + 1);
                                    n /= cap + 1;
                                    count
                                })
                                .collect()
                        })
                        .collect();
                    counts.sort_by_key(|count| count.iter().sum::<usize>());
                    for count in counts {
                        let includes =
                            |other: &Vec<usize>| other.iter().zip(&count).all(|(o, c)| o <= c);
                        if sufficient.iter().any(includes) {
                            continue;
                        }
                        match self.search(&mut ops, &block_now, &split(&count).0, deadline) {
                            Search::Linearizable(_) => sufficient.push(count),
                            Search::NotLinearizable => {}
                            Search::Inconclusive => return Verdict::Inconclusive(block_now),
                        }
                    }
                }
                for count in &sufficient {
                    let minimal = !sufficient.iter().any(|other| {
                        other != count && other.iter().zip(count).all(|(o, c)| o <= c)
                    });
                    if minimal {
                        next_states.push(split(count).1);
                    }
                }
                if next_states.len() > MAX_STATES {
                    merge = true;
                    break;
                }
            }
            if merge && !last {
                block = Some(block_now);
                continue;
            }
            if next_states.is_empty() {
                block_now.carried = states.swap_remove(0);
                return Verdict::NotLinearizable(block_now);
            }
            // Keep the maximal sets only.
            next_states.sort();
            next_states.dedup();
            states = next_states
                .iter()
                .filter(|set| {
                    !next_states.iter().any(|other| {
                        other.len() > set.len() && set.iter().all(|u| other.contains(u))
                    })
                })
                .cloned()
                .collect();
        }
        unreachable!("the last stretch decides")
    }

    /// Runs stateright's tester on `segment`, with the unknown writes `in_flight` available
    /// (carried ones invoked first; the segment's others are left out).
    fn search(
        &self,
        ops: &mut KeyOps,
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

        let initial = segment.initial.as_deref().map(|v| ops.intern(v));
        let mut tester = LinearizabilityTester::new(KeyRegister {
            value: initial,
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
            Ok(Some(order)) => Search::Linearizable(
                order
                    .iter()
                    .map(|(op, _)| op.id())
                    .filter(|id| ops.ret[id].is_none())
                    .collect(),
            ),
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
            .map(|&(KeyEvent::Invoke(id) | KeyEvent::Return(id))| self.ops[id].invoked_at)
            .max()
            .unwrap_or(0);
        // The stretch's operations (those left out of the search included), the lone one
        // before it, and the unknown writes carried into it.
        let shown: Vec<usize> = history
            .ops
            .iter()
            .copied()
            .filter(|&id| {
                let op = &self.ops[id];
                let lone_before = segment.starts_at > 0
                    && op.returned.as_ref().map(|r| r.0) == Some(segment.starts_at);
                segment.carried.contains(&id)
                    || lone_before
                    || (segment.starts_at <= op.invoked_at && op.invoked_at <= ends_at)
            })
            .collect();
        let mut out = format!(
            "the history of key {} {verdict} ({} operations, {unknown} with unknown outcome).\n",
            show_bytes(key),
            history.ops.len(),
        );
        if shown.len() < history.ops.len() {
            let initial = match &segment.initial {
                Some(v) => format!("holding {}", show_bytes(v)),
                None => "absent".to_string(),
            };
            let _ = writeln!(
                out,
                "Shown: the stretch that fails, after event {}, where the key is {initial} \
                 (left so by the lone operation returning there, shown first; the rest is \
                 checked apart), with the unknown writes from before that may take effect in \
                 it: {} of the operations.",
                segment.starts_at,
                shown.len(),
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
