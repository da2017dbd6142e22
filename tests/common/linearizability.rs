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
//! or `None`, `Delete` removes the value and reports whether one was there. The search is
//! stateright's [`LinearizabilityTester`] over a per-key register [`SequentialSpec`]; this
//! module records, splits the history into pieces the tester can take (below), maps clients
//! to tester threads and explains failures.
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
//! `Unknown` too. Calling `invoke` twice for one client without completing the first, or
//! completing with an outcome of another kind of operation, is a bug in the test: it panics.
//!
//! # What the tester is given
//!
//! The tester is a depth-first search over interleavings, without memoization, that copies the
//! remaining history at every step: fine for tens of operations, hopeless for thousands. So
//! each key's history is cut into pieces first, by steps that never change the verdict:
//! - An unknown `Get` is left out (a read has no effect and its answer was not seen), and so is
//!   an unknown write whose effect no answer returned after its invocation could reflect
//!   (say an unknown `Put(x)` when nobody read `x` and no delete found a value later).
//! - An unknown `Put(x)` of a value no other Put wrote, that someone read, certainly took
//!   effect before the first such read: it becomes a Put that returned with that read.
//! - The history is cut after every *lone* operation: one invoked when all earlier known
//!   operations had returned, and that returned before anything else was invoked. Every
//!   linearization puts it after everything before and before everything after, and the state
//!   it leaves is known, so the stretch after it is checked on its own, from that state.
//! - What still links the stretches are the unknown writes in flight across a cut: each takes
//!   effect in one stretch at most. Those that can matter only on one side go to that side;
//!   for the others, the stretch is checked first with all of them and the rest gets those the
//!   linearization found did not use; only if the rest then fails are the other ways to share
//!   them tried (see `History::check_from`). Interchangeable writes (deletes; puts of values
//!   nobody reads later) are counted rather than told apart.
//!
//! During development the result was compared with a brute-force search on hundreds of
//! thousands of random small histories with 25% unknown outcomes; `tests/linearizability.rs`
//! keeps a smaller such comparison.
//!
//! # Cost bounds
//!
//! What costs is a stretch: operations on one key that keep overlapping, with no lone
//! operation among them, plus the unknown writes in flight in it. A stretch of `n` operations
//! costs at least `n²` (copies) and, in the worst case, exponentially many orders in the number
//! of operations overlapping at a time and of unknown writes; a failing stretch must rule out
//! all of them. So spread the operations over keys: a key's history should see lone operations
//! now and then. Measured in release on 2 (busy) cores, with the generator of
//! `tests/linearizability.rs` (clients always busy, random short delays, 45% puts, 45% gets,
//! 10% deletes, unique values):
//!
//! | clients | keys | operations | unknown | check     | with one stale read |
//! |--------:|-----:|-----------:|--------:|----------:|--------------------:|
//! |       8 |  200 |     20,000 |      1% |  0.06-0.2 s |       0.03-0.2 s |
//! |       8 |  200 |     20,000 |      5% |  0.05-0.1 s |       0.05-0.1 s |
//! |       8 |   50 |     20,000 |      1% |     0.1 s |               0.1 s |
//! |       8 |   10 |     20,000 |      1% |  0.3-0.9 s |      0.05-0.35 s |
//! |       8 |    8 |      8,000 |      1% |      11 s |          0.02-11 s |
//! |       8 |    4 |      4,000 |      1% |       2 s |           0.3-2 s |
//! |       2 |    1 |      2,000 |      1% |     0.2 s |             < 0.01 s |
//! |       4 |    1 |      1,000 |      1% |       4 s |            0.02 s |
//! |       8 |    1 |        200 |      1% |   up to 15 s |          < 0.1 s |
//! |       8 |    1 |        400 |      1% | over 60 s |                     |
//!
//! Times vary from run to run with the interleaving. So: with `c` busy clients, use at
//! least `c` keys (better many more) and at most about a thousand operations per key; with
//! all clients on one key, a few hundred operations in all. The search runs on a thread of its
//! own with a 512 MiB stack (the tester recurses once per operation of a stretch).
//!
//! So that a hard history cannot hang a test, the search has a time budget
//! ([`DEFAULT_TIME_BUDGET`], see [`Recorder::check_with_budget`]); when it runs out, `check`
//! returns `Err` saying the key's history is *inconclusive* (not shown to be linearizable, nor
//! not). Bound the history (fewer clients per key, fewer operations) if that happens.
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
/// side are considered; with more, the stretches are merged.
const MAX_CHOICES: usize = 64;

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
    /// key whose history is not linearizable and showing that key's history in a readable form:
    /// the stretch of it that fails (see the module doc), with the state it starts from.
    /// Err too if the search runs out of [`DEFAULT_TIME_BUDGET`] (*inconclusive*).
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
#[derive(Clone, Default)]
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
    /// Unknown Puts of a value no other Put wrote, that someone read: they certainly took
    /// effect, before the first such read was linearized. Each is given to the tester as a
    /// Put that returned together with that read (keyed here by the read), which allows
    /// exactly the same linearizations and spares the search an operation in flight forever.
    pinned: HashMap<usize, Vec<usize>>,
    values: HashMap<Vec<u8>, u32>,
}

impl KeyOps {
    fn new(history: &History, key: &KeyHistory) -> KeyOps {
        let mut ops = KeyOps {
            op: HashMap::new(),
            ret: HashMap::new(),
            skip: HashMap::new(),
            pinned: HashMap::new(),
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
        for &id in &key.ops {
            if let (Some(read), Some(None)) = (history.first_read_of(key, id), ops.ret.get(&id)) {
                ops.ret.insert(id, Some(RegRet::Put));
                ops.pinned.entry(read).or_default().push(id);
            }
        }
        ops
    }

    fn intern(&mut self, value: &[u8]) -> u32 {
        let next = self.values.len() as u32;
        *self.values.entry(value.to_vec()).or_insert(next)
    }
}

/// The search over one key's stretches.
struct KeyCheck<'a> {
    history: &'a KeyHistory,
    stretches: Vec<Segment>,
    deadline: Instant,
    /// `(first stretch, carried writes)` from which the rest is known not to be linearizable,
    /// with the stretch that failed.
    failed: HashMap<(usize, Vec<usize>), Segment>,
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

    /// For an unknown Put of a value that no other Put of `key` wrote: the read of that value
    /// that returned first after its invocation, if any.
    fn first_read_of(&self, key: &KeyHistory, id: usize) -> Option<usize> {
        let write = &self.ops[id];
        let (Op::Put(x), true) = (&write.op, write.is_unknown()) else {
            return None;
        };
        if key
            .ops
            .iter()
            .filter(|&&o| self.ops[o].op == write.op)
            .count()
            != 1
        {
            return None;
        }
        key.ops
            .iter()
            .filter_map(|&o| match &self.ops[o].returned {
                Some((at, Outcome::Get(Some(v)))) if v == x && *at > write.invoked_at => {
                    Some((*at, o))
                }
                _ => None,
            })
            .min()
            .map(|(_, o)| o)
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
    fn stretches(&self, ops: &KeyOps, fed: &[KeyEvent]) -> Vec<Segment> {
        let mut stretches = vec![Segment::default()];
        let mut open_known = 0usize;
        for (i, &event) in fed.iter().enumerate() {
            stretches
                .last_mut()
                .expect("one stretch")
                .events
                .push(event);
            match event {
                KeyEvent::Invoke(id) if ops.ret[&id].is_some() => open_known += 1,
                KeyEvent::Return(id) if ops.ret[&id].is_some() => {
                    open_known -= 1;
                    let lone = open_known == 0
                        && i > 0
                        && fed[i - 1] == KeyEvent::Invoke(id)
                        && !self.ops[id].is_unknown(); // not a pinned one
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
    fn check_key(&self, history: &KeyHistory, deadline: Instant) -> Verdict {
        let mut ops = KeyOps::new(self, history);
        let mut fed: Vec<KeyEvent> = Vec::new();
        for &event in &history.events {
            match event {
                KeyEvent::Invoke(id) if !ops.skip[&id] => fed.push(event),
                // The return of an unknown operation means nothing to the tester.
                KeyEvent::Return(id) if !self.ops[id].is_unknown() => {
                    fed.push(event);
                    if let Some(pinned) = ops.pinned.get(&id) {
                        fed.extend(pinned.iter().map(|&u| KeyEvent::Return(u)));
                    }
                }
                _ => {}
            }
        }
        let mut key = KeyCheck {
            history,
            stretches: self.stretches(&ops, &fed),
            deadline,
            failed: HashMap::new(),
        };
        self.check_from(&mut key, &mut ops, 0, Vec::new())
    }

    /// Whether the key's history from stretch `first` on is linearizable, given the unknown
    /// writes `carried` (sorted) from before, in flight from its start.
    ///
    /// What links the stretches, besides the state at each cut, are the unknown writes, each
    /// of which takes effect at most once. At the cut `t` after a stretch, each one in flight
    /// in it is, by [`History::side`], of use only up to `t` (`Here`: the stretch gets it, the
    /// rest does not), only after (`Later`: carried into the rest) or possibly on either side.
    /// Carried writes of one [`Class`] are interchangeable, and a stretch can use at most
    /// [`History::useful`] of them. The stretch is checked with all of them first: if that
    /// fails, nothing will do. Else the linearization found shows how many of each group of
    /// either side it used, and the rest is checked with the others. Only if the rest fails is
    /// every other choice tried (fewest first), skipping those that leave the rest no more
    /// than a choice that already failed: more writes in flight can only help. A linearizable
    /// history thus costs one search per stretch. Where there would be more than
    /// [`MAX_CHOICES`] choices, the stretch is merged with the next one instead, which is
    /// always exact.
    fn check_from(
        &self,
        key: &mut KeyCheck<'_>,
        ops: &mut KeyOps,
        first: usize,
        carried: Vec<usize>,
    ) -> Verdict {
        let mut end = first; // the block is stretches[first..=end]
        let (block, give, choices) = loop {
            let stretch = &key.stretches[first];
            let block = Segment {
                starts_at: stretch.starts_at,
                initial: stretch.initial.clone(),
                carried: carried.clone(),
                events: key.stretches[first..=end]
                    .iter()
                    .flat_map(|s| s.events.iter().copied())
                    .collect(),
            };
            let s = block.starts_at;
            let (t, cut_state) = key
                .stretches
                .get(end + 1)
                .map_or((usize::MAX, None), |next| {
                    (next.starts_at, next.initial.clone())
                });
            let mut groups: BTreeMap<Class, Vec<usize>> = BTreeMap::new();
            for &u in &carried {
                groups
                    .entry(self.class(key.history, u, s))
                    .or_default()
                    .push(u);
            }
            for event in &block.events {
                if let KeyEvent::Invoke(u) = *event {
                    if ops.ret[&u].is_none() {
                        groups.insert(Class::Own(u), vec![u]);
                    }
                }
            }
            let (mut give, mut keep) = (Vec::new(), Vec::new());
            let mut choices: Vec<(Vec<usize>, usize)> = Vec::new();
            for (class, members) in groups {
                let cap = members.len().min(self.useful(key.history, &class, s, t));
                // The members of a group are on the same side.
                match self.side(key.history, members[0], s, t, &cut_state) {
                    Side::Here => give.extend(&members[..cap]),
                    Side::Later => keep.extend(members),
                    Side::Either => choices.push((members, cap)),
                }
            }
            let combinations = choices
                .iter()
                .try_fold(1usize, |n, (_, cap)| n.checked_mul(cap + 1));
            if combinations.is_none_or(|n| n > MAX_CHOICES) && end + 1 < key.stretches.len() {
                end += 1;
                continue;
            }
            break (block, give, (choices, keep));
        };
        let (choices, keep) = choices;
        let last = end + 1 == key.stretches.len();
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
        let used = match self.search(ops, &block, &split(&full).0, key.deadline) {
            Search::Linearizable(used) => used,
            Search::NotLinearizable => return Verdict::NotLinearizable(block),
            Search::Inconclusive => return Verdict::Inconclusive(block),
        };
        if last {
            return Verdict::Linearizable;
        }
        // How many of each group the linearization found used: a sufficient choice.
        let found: Vec<usize> = choices
            .iter()
            .map(|(members, _)| members.iter().filter(|u| used.contains(u)).count())
            .collect();
        let mut first_failure = None;
        let mut failed_choices: Vec<Vec<usize>> = Vec::new();
        let mut counts: Vec<Vec<usize>> = vec![found];
        let combinations = full.iter().map(|cap| cap + 1).product::<usize>();
        let mut others: Vec<Vec<usize>> = (0..combinations)
            .map(|mut n| {
                full.iter()
                    .map(|cap| {
                        let count = n % (cap + 1);
                        n /= cap + 1;
                        count
                    })
                    .collect()
            })
            .collect();
        others.sort_by_key(|count| count.iter().sum::<usize>());
        counts.extend(others);
        for (i, count) in counts.into_iter().enumerate() {
            // A choice that includes one whose rest failed leaves the rest less: it fails too.
            if failed_choices
                .iter()
                .any(|f| f.iter().zip(&count).all(|(f, c)| f <= c))
            {
                continue;
            }
            let (available, kept) = split(&count);
            if i > 0 {
                match self.search(ops, &block, &available, key.deadline) {
                    Search::Linearizable(_) => {}
                    Search::NotLinearizable => continue,
                    Search::Inconclusive => return Verdict::Inconclusive(block),
                }
            }
            let verdict = match key.failed.get(&(end + 1, kept.clone())) {
                Some(segment) => Verdict::NotLinearizable(segment.clone()),
                None => self.check_from(key, ops, end + 1, kept.clone()),
            };
            match verdict {
                Verdict::Linearizable => return Verdict::Linearizable,
                Verdict::Inconclusive(segment) => return Verdict::Inconclusive(segment),
                Verdict::NotLinearizable(segment) => {
                    key.failed.insert((end + 1, kept), segment.clone());
                    first_failure.get_or_insert(segment);
                    failed_choices.push(count);
                }
            }
        }
        Verdict::NotLinearizable(first_failure.expect("the found choice was tried"))
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

        // Tester thread ids: the search tries threads in id order, so the threads that end
        // with an unknown operation (in flight forever, or pinned) come last. That operation
        // is then linearized lazily, when nothing else fits (say, when a read needs its
        // value), instead of eagerly at the earliest point, which in a linearizable history
        // would be undone by a backtrack over everything in between.
        let thread_of = |id: usize| (self.ops[id].client, self.generation[id]);
        let mut threads: HashMap<(usize, usize), (bool, usize)> = HashMap::new();
        for event in &events {
            if let KeyEvent::Invoke(id) = *event {
                let next = threads.len();
                let thread = threads.entry(thread_of(id)).or_insert((false, next));
                thread.0 |= self.ops[id].is_unknown();
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
