//! An exhaustive [stateright] model of ringkv's rejoin with state transfer, checked for
//! linearizability.
//!
//! **Protocol.** Three backends N0, N1, N2 hold one or two keys. A view gives every node a state
//! (Up, Down or Syncing) and a number `since`; a key's chain is the view's Up members ordered by
//! `since` ascending (ties: N0 before N1 before N2). Syncing and Down nodes are in no chain. An Up
//! node's `since` is the epoch it became Up; a node going Up -> Down gets the new epoch; a
//! Syncing node keeps the `since` it had when Down. At epoch 1 the rejoining node X (N2 unless
//! the test says otherwise) is Down and holds stale data; the other two are Up, `since` 0.
//! - Chain replication is the one of `chain_model.rs`, per key: a PUT enters at the head, which
//!   holds the key's lock until the tail's answer is back; each member applies a chain write
//!   only if it carries exactly its own epoch and passes it on; the tail acks; an answer counts
//!   only if it is an ack of the write's epoch and the receiver still holds it, else UNAVAILABLE
//!   (indeterminate) and the head blocks the key for that epoch. A GET goes to the tail, stamped
//!   with the epoch; a member answers only its own epoch (else STALE_VIEW, which the frontend
//!   retries). A member installs only higher epochs; installing severs calls waiting on nodes
//!   that are no longer in the chain.
//! - Rejoin. (1) The keeper (in the frontend's process) publishes a view with X Syncing. (2) X,
//!   installing a view where it is Syncing, takes the chain's tail as its source S and sends it
//!   SYNC_BEGIN stamped with its epoch; S accepts only in exactly that epoch (else STALE_VIEW: X
//!   tries again under the view it then holds). S registers a *tracker* for X, which from then on
//!   records every key S writes (as head, middle or tail) when it applies the write, then lists
//!   the keys it holds (its snapshot). X deletes its own keys, then copies the snapshot one key
//!   per SYNC_COPY (each read at S when S answers), then takes non-final SYNC_DELTAs (S hands
//!   over the recorded keys with their current values or absence, and forgets them) until one
//!   comes back empty, and reports *copied* for the epoch it holds. A newer view where X is still
//!   Syncing under the same tail lets it go on (and report copied again for that epoch); another
//!   tail makes it start over. (3) The keeper, told copied for its current epoch E, publishes
//!   E + 1 with X Up, `since` E + 1: X is the tail, after S. (4) X, installing the view that made
//!   it Up, *catches up*: it marks *dirty* every key it writes through the chain, answers no GET,
//!   and sends S a final SYNC_DELTA stamped with that epoch; S answers STALE_VIEW below that epoch
//!   (X asks again while S is Up in its view, else gives up), and otherwise *freezes* the tracker
//!   and hands over the recorded keys; X applies each unless it is dirty, sends SYNC_END and
//!   serves. A source that cannot finish (crashed, or without the tracker) fails the catch-up: X
//!   never serves and reports it, and the keeper marks X Down. (5) S drops its tracker at
//!   SYNC_END, or when it installs a view where X is Down.
//! - The keeper also removes a node (declared dead or hung) at any time, within the test's
//!   budget: the removed node gets no view any more (it crashed, or is alive on its old view),
//!   and a removed Syncing node's copy is over. It bumps the epoch (same members) when the
//!   frontend asks for a newer one after an unacknowledged write, as in `chain_model.rs`.
//!
//! **Invariant.** Every history of the clients' operations is linearizable with respect to one
//! register per key (linearizability is local: the history is linearizable if each key's is).
//! Operations that ended UNAVAILABLE stay in flight for the tester.
//!
//! **Deliberate simplifications** are marked `Model:` below. The main ones: one rejoining node
//! and at most one rejoin; no call timeouts (a call fails when its node crashes or a view change
//! severs it); the "last standing" case (a node published Up directly because no member is Up)
//! is left out; a delta is read at the source in one step (the real one takes the keys out of
//! the record, then reads them one by one: a write in between is recorded again); the final
//! delta is one call (the tracker is frozen, so the next would come back empty); the keeper acts
//! on a report at once; a GET at a node that is catching up is sent back to the frontend, which
//! sends it again (the real node holds it until the catch-up ends, or refuses it). Clients are
//! as in `chain_model.rs`: two clients with short programs, next to the frontend, each operation
//! its own tester thread. States that can only differ in ways that no longer matter are merged
//! ([`RejoinModel`]).
//!
//! **What the checker says** (one test each below; state counts and times in their comments,
//! release build, one core):
//! - The protocol as described is linearizable through a rejoin (Syncing, copied, Up, catch-up)
//!   while both clients write and read: one key ([`a_rejoin_is_linearizable`], 443,750 states),
//!   two keys ([`a_rejoin_with_two_keys_is_linearizable`], 343,999), the source removed after
//!   the rejoin (535,347) or at any time (1,139,287), the syncing node removed at any time
//!   (529,126), the source crashing at any time (931,455). Larger bounds are `#[ignore]`d tests:
//!   an epoch bump (5.8 million states), a removal of N0 or N1 after the rejoin (10.3 million),
//!   of any node at any time (21 million), N0 rejoining then two removals (3.5 million).
//! - Each deliberately broken variant ([`Bug`]) is caught: final-delta values applied over dirty
//!   keys ([`known_counterexample_a_pulled_value_overwrites_a_newer_write`] replays it), a
//!   tracker that starts recording only after the snapshot (with a key outside the snapshot),
//!   reads served before the catch-up, a syncing node that keeps its own stale keys, and a
//!   rejoined node placed at its natural position instead of the tail. The last one needs N0 to
//!   rejoin (N2's natural position is the tail anyway) and two removals after it, so that the
//!   rejoined head ends up serving: it copied the tail, which may lack an unacknowledged write
//!   that the members before it hold ([`known_counterexample_a_rejoined_head`]).
//! - No counterexample for the protocol as described, within these bounds.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use stateright::actor::{
    model_timeout, Actor, ActorModel, ActorModelAction, ActorModelState, Envelope, Id, Network, Out,
};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use stateright::{Checker, Expectation, Model, Path, Property};

type Value = u8;
type Epoch = u8;
/// A backend, by index; its actor id is the same number.
type Node = u8;
type Key = u8;
/// An operation: (client, index of the operation in the client's program). It names the
/// operation's tester thread and its chain write.
type OpId = (u8, u8);
type Tester = LinearizabilityTester<OpId, Register<Value>>;

const NODES: usize = 3;
/// Keys 0 and 1; a program may use only key 0.
const KEYS: usize = 2;
/// The frontend's actor id (it is also the keeper).
const FRONTEND: usize = NODES;
/// A key's value; 0 is "absent" (never written, or deleted).
const ABSENT: Value = 0;

/// What the checker keeps of the clients' operations: a tester per key.
#[derive(Clone, Debug, Hash)]
struct History {
    /// Shared between states until it changes (most steps leave it as it is).
    testers: [Arc<Tester>; KEYS],
    /// Whether each key's tester is linearizable, worked out once per change.
    linearizable: [bool; KEYS],
    /// How many operations the clients' programs have, and how many have been answered.
    operations: u8,
    answered: u8,
    /// A message was delivered after every operation had been answered: nothing can change
    /// the history any more, so the state is not explored further (see [`within_boundary`]).
    over: bool,
}

impl History {
    fn new(programs: Programs, initial: [Value; KEYS]) -> History {
        History {
            testers: initial.map(|v| Arc::new(LinearizabilityTester::new(Register(v)))),
            linearizable: [true; KEYS],
            operations: programs.iter().map(|p| p.len() as u8).sum(),
            answered: 0,
            over: false,
        }
    }

    fn update(&mut self, key: Key, change: impl FnOnce(&mut Tester)) {
        let k = usize::from(key);
        let tester = Arc::make_mut(&mut self.testers[k]);
        change(tester);
        self.linearizable[k] = tester.serialized_history().is_some();
    }

    fn linearizable(&self) -> bool {
        self.linearizable.iter().all(|&l| l)
    }

    fn all_answered(&self) -> bool {
        self.answered == self.operations
    }
}

/// Clients' programs, one per client; written values are distinct and differ from the initial
/// and stale ones, so the tester can tell every write apart.
type Programs = &'static [&'static [ClientOp]];
/// One key: two clients that each write it, then read it.
const ONE_KEY: Programs = &[
    &[ClientOp::Put(0, 1), ClientOp::Get(0)],
    &[ClientOp::Put(0, 2), ClientOp::Get(0)],
];
/// Two keys, each client writing one and reading the other: key 0 is in the source's snapshot,
/// key 1 (absent at the start) is not.
const TWO_KEYS: Programs = &[
    &[ClientOp::Put(0, 1), ClientOp::Get(1)],
    &[ClientOp::Put(1, 2), ClientOp::Get(0)],
];
/// One client writes key 0; the other reads it twice (the smaller program the tests with a
/// removal use).
const WRITE_AND_READ_READ: Programs = &[
    &[ClientOp::Put(0, 1)],
    &[ClientOp::Get(0), ClientOp::Get(0)],
];
/// One client writes key 0; the other reads it (the tests with crashes).
const WRITE_AND_READ: Programs = &[&[ClientOp::Put(0, 1)], &[ClientOp::Get(0)]];

/// What the Up members hold at the start, per key: key 0 a value from before the model (in the
/// source's snapshot), key 1 nothing.
const INITIAL: [Value; KEYS] = [5, ABSENT];
/// What the rejoining node holds at the start: it missed the writes of 5 and a delete of key 1.
const STALE: [Value; KEYS] = [4, 4];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum NodeState {
    Up,
    Down,
    Syncing,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct View {
    epoch: Epoch,
    states: [NodeState; NODES],
    since: [Epoch; NODES],
    /// The chain (the same for every key): the Up members by `since`, computed by the keeper
    /// when it publishes the view (`Ring::chain`).
    chain: Vec<Node>,
}

impl View {
    /// Epoch 1: `rejoiner` went Down (at epoch 1), the others are Up since 0.
    fn initial(rejoiner: Node) -> View {
        let mut view = View {
            epoch: 1,
            states: [NodeState::Up; NODES],
            since: [0; NODES],
            chain: Vec::new(),
        };
        view.states[usize::from(rejoiner)] = NodeState::Down;
        view.since[usize::from(rejoiner)] = 1;
        view.order(false);
        view
    }

    /// Model: what a crashed node holds; it is never looked at.
    fn none() -> View {
        View {
            epoch: 0,
            states: [NodeState::Down; NODES],
            since: [0; NODES],
            chain: Vec::new(),
        }
    }

    /// The chain rule: Up members by `since` ascending, ties by natural order; with `natural`
    /// ([`Bug::NaturalOrder`]), by natural order only.
    fn order(&mut self, natural: bool) {
        let mut chain: Vec<Node> = (0..NODES as Node)
            .filter(|&n| self.state(n) == NodeState::Up)
            .collect();
        if !natural {
            chain.sort_by_key(|&n| (self.since[usize::from(n)], n));
        }
        self.chain = chain;
    }

    fn state(&self, node: Node) -> NodeState {
        self.states[usize::from(node)]
    }

    fn head(&self) -> Option<Node> {
        self.chain.first().copied()
    }

    fn tail(&self) -> Option<Node> {
        self.chain.last().copied()
    }

    fn position(&self, node: Node) -> Option<usize> {
        self.chain.iter().position(|&n| n == node)
    }

    fn successor(&self, node: Node) -> Option<Node> {
        self.chain.get(self.position(node)? + 1).copied()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClientOp {
    Put(Key, Value),
    Get(Key),
}

impl ClientOp {
    fn key(self) -> Key {
        match self {
            ClientOp::Put(key, _) | ClientOp::Get(key) => key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Outcome {
    WriteOk,
    ReadOk(Value),
    /// UNAVAILABLE: the operation may or may not have taken effect.
    Indeterminate,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Msg {
    /// A client's next operation: invoked when the frontend takes it (sent to itself).
    Request(OpId, ClientOp),
    /// The answer to the client: the operation returns when the frontend sends it (to itself,
    /// never taken: it only marks the return).
    Reply(OpId, Outcome),

    /// Frontend to the head of its view.
    Put {
        op: OpId,
        key: Key,
        val: Value,
        epoch: Epoch,
    },
    /// Frontend to the tail of its view.
    Get {
        op: OpId,
        key: Key,
        epoch: Epoch,
    },
    PutOk {
        op: OpId,
        epoch: Epoch,
    },
    GetOk {
        op: OpId,
        val: Value,
        epoch: Epoch,
    },
    /// Wrong epoch or wrong member, or (a PUT) its key is blocked; not applied.
    StaleView {
        op: OpId,
        epoch: Epoch,
    },
    /// Head to frontend: applied here, not acknowledged by the rest of the chain.
    Unavailable {
        op: OpId,
        epoch: Epoch,
    },
    /// The tail is catching up and answers no read yet. Model: the real node holds the GET
    /// until its catch-up ends (or a bound passes); here it goes back to the frontend, which
    /// sends it again: to the history, the same.
    NotYet(OpId),
    /// To the frontend: the connection to a crashed node failed.
    CallFailed(OpId),

    /// A member to its successor.
    ChainWrite {
        op: OpId,
        key: Key,
        val: Value,
        epoch: Epoch,
    },
    ChainAck {
        op: OpId,
        epoch: Epoch,
    },
    /// STALE_VIEW, BAD_REQUEST or UNAVAILABLE: not acknowledged.
    ChainFailed(OpId),

    /// Keeper to every node it has not declared dead, and to the frontend.
    ViewInstall(View),

    /// Syncing node to its source, stamped with the epoch it holds (which names the session:
    /// the real one is a random number).
    SyncBegin {
        epoch: Epoch,
    },
    /// Source to itself: the second half of a SYNC_BEGIN (the tracker registered, the snapshot
    /// next; [`Bug::TrackAfterSnapshot`]: the other way round). Writes may come in between.
    Snapshot {
        node: Node,
        session: Epoch,
    },
    BeginOk {
        session: Epoch,
    },
    /// The snapshot's keys from index `from`.
    SyncCopy {
        session: Epoch,
        from: u8,
    },
    /// Model: one key per batch (the next present snapshot key, read now), or `None` past the
    /// end; `next` is where to go on.
    CopyBatch {
        session: Epoch,
        entry: Option<(Key, Value)>,
        next: u8,
    },
    /// `final_epoch`: 0 for a delta while syncing, else the epoch that made the node Up.
    SyncDelta {
        session: Epoch,
        final_epoch: Epoch,
    },
    /// The recorded keys with their current values (`ABSENT`: deleted).
    DeltaBatch {
        session: Epoch,
        entries: Vec<(Key, Value)>,
    },
    /// STALE_VIEW to a SYNC_BEGIN or a final SYNC_DELTA.
    SyncStale {
        session: Epoch,
    },
    /// No such tracker (dropped, or replaced).
    NoSession {
        session: Epoch,
    },
    /// The connection to a crashed source failed.
    SyncFailed {
        session: Epoch,
    },
    SyncEnd {
        session: Epoch,
    },

    /// Syncing node to keeper (its HEALTH answers): copied, for this epoch.
    Copied(Epoch),
    /// Syncing node to keeper: its copy or catch-up failed (in this epoch).
    Failed(Epoch),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Timer {
    /// The keeper declares this node dead.
    Remove(Node),
    /// The keeper sees the rejoining node alive again.
    Rejoin,
    /// This member crashes (see [`within_boundary`]).
    Crash,
}

/// Deliberately broken variants, to show that the checker catches what it should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// The catching-up node applies final-delta values without the dirty check: a value the
    /// source read before a newer chain write overwrites it.
    NoDirtyCheck,
    /// The source takes its snapshot first and registers the tracker after: a write of a key
    /// not in the snapshot, in between, is lost.
    TrackAfterSnapshot,
    /// The rejoined node answers GETs as soon as it is Up, before its catch-up is done.
    ServesBeforeCatchUp,
    /// The chain orders Up members by natural order, ignoring `since`: a rejoined N0 is the head
    /// instead of the tail.
    NaturalOrder,
    /// The syncing node does not delete its own keys before copying.
    KeepsOwnKeys,
}

/// The removals the keeper may make (besides marking a failed rejoining node Down): each a
/// node declared dead or hung, at any time within these bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Removals {
    /// How many.
    count: u8,
    /// The nodes that may be removed (and, with [`Cfg::crash`], crash).
    victims: &'static [Node],
    /// Only while the keeper has the rejoining node Up.
    after_rejoin: bool,
}

const NO_REMOVAL: Removals = Removals {
    count: 0,
    victims: &[],
    after_rejoin: false,
};

impl Removals {
    /// One removal of one of `victims`, once the rejoining node is Up.
    const fn after_rejoin(victims: &'static [Node]) -> Removals {
        Removals {
            count: 1,
            victims,
            after_rejoin: true,
        }
    }

    /// One removal of one of `victims`, at any time.
    const fn any_time(victims: &'static [Node]) -> Removals {
        Removals {
            count: 1,
            victims,
            after_rejoin: false,
        }
    }
}

#[derive(Clone)]
struct Cfg {
    programs: Programs,
    /// What the Up members hold at the start, and the rejoining node.
    initial: [Value; KEYS],
    stale: [Value; KEYS],
    rejoiner: Node,
    /// How many times the keeper may move the rejoining node Down -> Syncing.
    rejoins: u8,
    removals: Removals,
    /// How many epoch bumps the keeper may make when the frontend asks.
    bumps: u8,
    /// Whether a node may crash (one, and it is the first the keeper removes).
    crash: bool,
    bug: Option<Bug>,
}

#[derive(Clone)]
enum Proc {
    Member {
        rules: Rules,
        crash: bool,
        start: MemberState,
    },
    Frontend {
        rules: FrontendRules,
        keeper: KeeperLimits,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    Member(MemberState),
    Frontend(FrontendState),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MemberState {
    view: View,
    values: [Value; KEYS],
    /// Per key: the lock, held by the write this node heads until its chain has answered.
    locked_by: [Option<OpId>; KEYS],
    /// Per key: the epoch in which it is blocked at this head (0: not blocked).
    blocked: [Epoch; KEYS],
    /// PUTs waiting for their key's lock, in arrival order: (op, key, value, epoch).
    waiting: VecDeque<(OpId, Key, Value, Epoch)>,
    /// Writes applied here and passed down, waiting for the successor's answer.
    pending: BTreeMap<OpId, Pending>,
    /// As a source: the tracker of the syncing node (at most one syncs in the model).
    tracker: Option<Tracker>,
    /// As the syncing node: its transfer under way (syncing, copied or catching up).
    sync: Option<Sync>,
    /// Keys written through the chain while catching up (all false otherwise).
    dirty: [bool; KEYS],
    /// The copy or the catch-up failed: no read is answered until a view makes it Down.
    failed: bool,
    crashed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pending {
    upstream: Id,
    heads: bool,
    epoch: Epoch,
    downstream: Node,
    key: Key,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Tracker {
    node: Node,
    session: Epoch,
    /// SYNC_BEGIN has been answered (both halves are done).
    ready: bool,
    /// Whether writes are recorded (from the start; [`Bug::TrackAfterSnapshot`]: once ready).
    recording: bool,
    snapshot: Vec<Key>,
    /// Keys written since registration (or the last delta).
    changed: [bool; KEYS],
    /// A final delta stopped the recording.
    frozen: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Sync {
    source: Node,
    session: Epoch,
    stage: Stage,
}

/// Where the syncing node stands; in every stage but `Copied` it waits for one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Stage {
    Begin,
    Copy,
    Delta,
    Copied,
    /// Catching up: the final delta stamped with this epoch.
    Final(Epoch),
}

#[derive(Clone, Copy)]
struct Rules {
    me: Node,
    bug: Option<Bug>,
}

#[derive(Clone, Copy)]
struct FrontendRules {
    me: Id,
    programs: Programs,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FrontendState {
    view: View,
    /// Operations being served.
    pending: BTreeMap<OpId, ClientOp>,
    keeper: KeeperState,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KeeperState {
    view: View,
    /// Nodes declared dead: they get no view any more.
    removed: Vec<Node>,
    rejoins: u8,
    bumps: u8,
    /// The epoch of the last view that made the rejoining node Syncing.
    rejoined_at: Epoch,
}

fn node_id(node: Node) -> Id {
    Id::from(usize::from(node))
}

fn frontend() -> Id {
    Id::from(FRONTEND)
}

impl MemberState {
    fn new(view: View, values: [Value; KEYS]) -> MemberState {
        MemberState {
            view,
            values,
            locked_by: [None; KEYS],
            blocked: [0; KEYS],
            waiting: VecDeque::new(),
            pending: BTreeMap::new(),
            tracker: None,
            sync: None,
            dirty: [false; KEYS],
            failed: false,
            crashed: false,
        }
    }

    fn catching_up(&self) -> bool {
        matches!(
            self.sync,
            Some(Sync {
                stage: Stage::Final(_),
                ..
            })
        )
    }

    /// Model: as in `chain_model.rs`, a flag rather than stateright's crash action. Every call
    /// waiting on the node fails.
    fn crash(&mut self, o: &mut Out<Proc>) {
        for (op, p) in std::mem::take(&mut self.pending) {
            let failed = if p.heads {
                Msg::CallFailed(op)
            } else {
                Msg::ChainFailed(op)
            };
            o.send(p.upstream, failed);
        }
        for (op, _, _, _) in std::mem::take(&mut self.waiting) {
            o.send(frontend(), Msg::CallFailed(op));
        }
        if let Some(t) = &self.tracker {
            if !t.ready {
                let session = t.session;
                o.send(node_id(t.node), Msg::SyncFailed { session });
            }
        }
        // A crashed node never comes back and processes nothing: its states are made alike.
        *self = MemberState {
            crashed: true,
            ..MemberState::new(View::none(), [ABSENT; KEYS])
        };
    }

    /// At a crashed node the connection a request arrives on fails; anything else is lost.
    fn refuse(src: Id, msg: Msg, o: &mut Out<Proc>) {
        match msg {
            Msg::Put { op, .. } | Msg::Get { op, .. } => o.send(src, Msg::CallFailed(op)),
            Msg::ChainWrite { op, .. } => o.send(src, Msg::ChainFailed(op)),
            Msg::SyncBegin { epoch: session }
            | Msg::SyncCopy { session, .. }
            | Msg::SyncDelta { session, .. } => o.send(src, Msg::SyncFailed { session }),
            _ => {}
        }
    }

    /// Applies a write (by any path): the tracker records it, and while catching up it is
    /// dirty, in the same step.
    fn apply_write(&mut self, key: Key, val: Value) {
        let k = usize::from(key);
        self.values[k] = val;
        if let Some(t) = &mut self.tracker {
            if t.recording && !t.frozen {
                t.changed[k] = true;
            }
        }
        if self.catching_up() {
            self.dirty[k] = true;
        }
    }

    fn on_msg(&mut self, r: Rules, src: Id, msg: Msg, o: &mut Out<Proc>) {
        if self.crashed {
            return MemberState::refuse(src, msg, o);
        }
        match msg {
            Msg::Put {
                op,
                key,
                val,
                epoch,
            } => {
                if epoch != self.view.epoch || self.view.head() != Some(r.me) {
                    o.send(src, Msg::StaleView { op, epoch });
                } else if self.locked_by[usize::from(key)].is_some() {
                    self.waiting.push_back((op, key, val, epoch));
                } else {
                    self.start_write(r, op, key, val, epoch, o);
                }
            }
            Msg::ChainWrite {
                op,
                key,
                val,
                epoch,
            } => {
                let after_head = matches!(self.view.position(r.me), Some(at) if at > 0);
                if epoch != self.view.epoch || !after_head {
                    o.send(src, Msg::ChainFailed(op));
                    return;
                }
                self.apply_write(key, val);
                match self.view.successor(r.me) {
                    None => o.send(src, Msg::ChainAck { op, epoch }),
                    Some(next) => self.pass_down(src, false, op, key, val, epoch, next, o),
                }
            }
            Msg::ChainAck { op, epoch } => self.answered(r, src, op, Some(epoch), o),
            Msg::ChainFailed(op) => self.answered(r, src, op, None, o),
            Msg::Get { op, key, epoch } => {
                if epoch != self.view.epoch || self.view.tail() != Some(r.me) {
                    o.send(src, Msg::StaleView { op, epoch });
                } else if self.failed
                    || self.catching_up() && r.bug != Some(Bug::ServesBeforeCatchUp)
                {
                    o.send(src, Msg::NotYet(op));
                } else {
                    let val = self.values[usize::from(key)];
                    o.send(src, Msg::GetOk { op, val, epoch });
                }
            }
            Msg::ViewInstall(view) => self.install(r, view, o),
            Msg::SyncBegin { epoch } => {
                if epoch != self.view.epoch {
                    o.send(src, Msg::SyncStale { session: epoch });
                    return;
                }
                let node = usize::from(src) as Node;
                let late = r.bug == Some(Bug::TrackAfterSnapshot);
                // Registered first, so every write from here on is recorded; the snapshot is
                // taken in a second step (`Trackers::open`, then `take_snapshot`).
                self.tracker = Some(Tracker {
                    node,
                    session: epoch,
                    ready: false,
                    recording: !late,
                    snapshot: if late { self.present() } else { Vec::new() },
                    changed: [false; KEYS],
                    frozen: false,
                });
                o.send(
                    node_id(r.me),
                    Msg::Snapshot {
                        node,
                        session: epoch,
                    },
                );
            }
            Msg::Snapshot { node, session } => {
                let present = self.present();
                match &mut self.tracker {
                    Some(t) if t.node == node && t.session == session && !t.ready => {
                        if t.recording {
                            t.snapshot = present;
                        } else {
                            t.recording = true;
                        }
                        t.ready = true;
                        o.send(node_id(node), Msg::BeginOk { session });
                    }
                    _ => o.send(node_id(node), Msg::NoSession { session }),
                }
            }
            Msg::SyncCopy { session, from } => {
                let values = self.values;
                let Some(t) = self.session(src, session) else {
                    return o.send(src, Msg::NoSession { session });
                };
                // The next snapshot key still present, with its value now (one deleted since
                // is skipped: its delete is recorded).
                let found = (usize::from(from)..t.snapshot.len())
                    .find(|&i| values[usize::from(t.snapshot[i])] != ABSENT);
                let (entry, next) = match found {
                    Some(i) => {
                        let key = t.snapshot[i];
                        (Some((key, values[usize::from(key)])), i as u8 + 1)
                    }
                    None => (None, t.snapshot.len() as u8),
                };
                o.send(
                    src,
                    Msg::CopyBatch {
                        session,
                        entry,
                        next,
                    },
                );
            }
            Msg::SyncDelta {
                session,
                final_epoch,
            } => {
                let values = self.values;
                let epoch = self.view.epoch;
                let Some(t) = self.session(src, session) else {
                    return o.send(src, Msg::NoSession { session });
                };
                if final_epoch != 0 && epoch < final_epoch {
                    // No write of an older epoch may still come here: wait until this node
                    // holds the epoch that made the syncing node Up.
                    return o.send(src, Msg::SyncStale { session });
                }
                if final_epoch != 0 {
                    t.frozen = true;
                    t.snapshot.clear();
                }
                let entries = (0..KEYS)
                    .filter(|&k| std::mem::take(&mut t.changed[k]))
                    .map(|k| (k as Key, values[k]))
                    .collect();
                o.send(src, Msg::DeltaBatch { session, entries });
            }
            Msg::SyncEnd { session } if self.session(src, session).is_some() => {
                self.tracker = None;
            }
            Msg::BeginOk { .. }
            | Msg::CopyBatch { .. }
            | Msg::DeltaBatch { .. }
            | Msg::SyncStale { .. }
            | Msg::NoSession { .. }
            | Msg::SyncFailed { .. }
                if self.awaits(src, &msg) =>
            {
                self.on_sync_answer(r, msg, o);
            }
            _ => {}
        }
    }

    /// The keys it holds (a snapshot).
    fn present(&self) -> Vec<Key> {
        (0..KEYS as Key)
            .filter(|&k| self.values[usize::from(k)] != ABSENT)
            .collect()
    }

    /// Its tracker, if it is `src`'s of `session` and SYNC_BEGIN has been answered.
    fn session(&mut self, src: Id, session: Epoch) -> Option<&mut Tracker> {
        self.tracker
            .as_mut()
            .filter(|t| node_id(t.node) == src && t.session == session && t.ready)
    }

    /// Whether `msg` from `src` is the answer its transfer waits for.
    fn awaits(&self, src: Id, msg: &Msg) -> bool {
        let Some(s) = &self.sync else {
            return false;
        };
        let (session, fits) = match *msg {
            Msg::BeginOk { session } => (session, s.stage == Stage::Begin),
            Msg::CopyBatch { session, .. } => (session, s.stage == Stage::Copy),
            Msg::DeltaBatch { session, .. } => {
                (session, matches!(s.stage, Stage::Delta | Stage::Final(_)))
            }
            Msg::SyncStale { session } => {
                (session, matches!(s.stage, Stage::Begin | Stage::Final(_)))
            }
            Msg::NoSession { session } | Msg::SyncFailed { session } => {
                (session, s.stage != Stage::Copied)
            }
            _ => return false,
        };
        fits && node_id(s.source) == src && s.session == session
    }

    /// The syncing node's step on its source's answer (one it waits for).
    fn on_sync_answer(&mut self, r: Rules, msg: Msg, o: &mut Out<Proc>) {
        let s = self.sync.clone().expect("awaits an answer");
        let source = node_id(s.source);
        let session = s.session;
        let set_stage = |me: &mut MemberState, stage| {
            if let Some(s) = &mut me.sync {
                s.stage = stage;
            }
        };
        match msg {
            Msg::BeginOk { .. } => {
                // What it kept from before is stale: the copy brings the live keys.
                if r.bug != Some(Bug::KeepsOwnKeys) {
                    self.values = [ABSENT; KEYS];
                }
                set_stage(self, Stage::Copy);
                o.send(source, Msg::SyncCopy { session, from: 0 });
            }
            Msg::CopyBatch { entry, next, .. } => match entry {
                Some((key, val)) => {
                    self.values[usize::from(key)] = val;
                    o.send(
                        source,
                        Msg::SyncCopy {
                            session,
                            from: next,
                        },
                    );
                }
                None => {
                    set_stage(self, Stage::Delta);
                    let final_epoch = 0;
                    o.send(
                        source,
                        Msg::SyncDelta {
                            session,
                            final_epoch,
                        },
                    );
                }
            },
            Msg::DeltaBatch { entries, .. } => match s.stage {
                Stage::Final(_) => {
                    for (key, val) in entries {
                        let k = usize::from(key);
                        if !self.dirty[k] || r.bug == Some(Bug::NoDirtyCheck) {
                            self.values[k] = val;
                        }
                    }
                    // Model: the tracker is frozen, so a further final delta would come back
                    // empty: the catch-up is done.
                    o.send(source, Msg::SyncEnd { session });
                    self.sync = None;
                    self.dirty = [false; KEYS];
                }
                _ => {
                    let empty = entries.is_empty();
                    for (key, val) in entries {
                        self.values[usize::from(key)] = val;
                    }
                    if empty {
                        set_stage(self, Stage::Copied);
                        o.send(frontend(), Msg::Copied(self.view.epoch));
                    } else {
                        let final_epoch = 0;
                        o.send(
                            source,
                            Msg::SyncDelta {
                                session,
                                final_epoch,
                            },
                        );
                    }
                }
            },
            Msg::SyncStale { .. } => match s.stage {
                // The source is on another epoch: whichever is behind catches up; try again
                // under the view this node holds now.
                Stage::Begin => self.begin(o),
                // Model: the real node asks again until a deadline; here, while the source is
                // Up in its view (else it will not get that epoch: failed).
                Stage::Final(final_epoch) => {
                    if self.view.state(s.source) == NodeState::Up {
                        o.send(
                            source,
                            Msg::SyncDelta {
                                session,
                                final_epoch,
                            },
                        );
                    } else {
                        self.fail(o);
                    }
                }
                _ => unreachable!("no STALE_VIEW to a copy or a delta"),
            },
            Msg::NoSession { .. } | Msg::SyncFailed { .. } => self.fail(o),
            _ => unreachable!("not an answer of a transfer"),
        }
    }

    /// Starts (over) the copy from the chain's tail, under the epoch it holds.
    fn begin(&mut self, o: &mut Out<Proc>) {
        self.failed = false;
        self.dirty = [false; KEYS];
        let Some(source) = self.view.tail() else {
            self.sync = None;
            return;
        };
        let epoch = self.view.epoch;
        self.sync = Some(Sync {
            source,
            session: epoch,
            stage: Stage::Begin,
        });
        o.send(node_id(source), Msg::SyncBegin { epoch });
    }

    /// The copy or the catch-up cannot finish: no read is answered, and the keeper hears of it.
    fn fail(&mut self, o: &mut Out<Proc>) {
        self.sync = None;
        self.dirty = [false; KEYS];
        self.failed = true;
        o.send(frontend(), Msg::Failed(self.view.epoch));
    }

    fn install(&mut self, r: Rules, view: View, o: &mut Out<Proc>) {
        if view.epoch <= self.view.epoch {
            return;
        }
        self.view = view;
        for blocked in &mut self.blocked {
            if *blocked < self.view.epoch {
                *blocked = 0;
            }
        }
        // Severs the calls waiting on nodes no longer in the chain.
        let severed: Vec<(OpId, Id)> = self
            .pending
            .iter()
            .filter(|(_, p)| self.view.position(p.downstream).is_none())
            .map(|(op, p)| (*op, node_id(p.downstream)))
            .collect();
        for (op, downstream) in severed {
            self.answered(r, downstream, op, None, o);
        }
        // A source drops the tracker of a node Down in the view (`Trackers::retain_live`).
        if matches!(&self.tracker, Some(t) if self.view.state(t.node) == NodeState::Down) {
            self.tracker = None;
        }
        let epoch = self.view.epoch;
        match self.view.state(r.me) {
            NodeState::Syncing => match &self.sync {
                Some(s) if Some(s.source) == self.view.tail() && s.stage != Stage::Final(0) => {
                    // The same source: the copy goes on, and holds for this epoch too.
                    if s.stage == Stage::Copied {
                        o.send(frontend(), Msg::Copied(epoch));
                    }
                }
                _ => self.begin(o),
            },
            NodeState::Up => match self.sync.clone() {
                Some(Sync {
                    source,
                    session,
                    stage: Stage::Copied,
                }) => {
                    self.sync = Some(Sync {
                        source,
                        session,
                        stage: Stage::Final(epoch),
                    });
                    self.dirty = [false; KEYS];
                    o.send(
                        node_id(source),
                        Msg::SyncDelta {
                            session,
                            final_epoch: epoch,
                        },
                    );
                }
                // Catching up already: it goes on.
                Some(Sync {
                    stage: Stage::Final(_),
                    ..
                }) => {}
                // Made Up before its copy was done (the keeper never does that).
                Some(_) => self.fail(o),
                None => {}
            },
            NodeState::Down => {
                self.sync = None;
                self.dirty = [false; KEYS];
                self.failed = false;
            }
        }
    }

    /// A PUT holding its key's lock (or the lock being free): applied here and passed down, or
    /// refused if the view changed while it waited or the key is blocked in this epoch.
    fn start_write(
        &mut self,
        r: Rules,
        op: OpId,
        key: Key,
        val: Value,
        epoch: Epoch,
        o: &mut Out<Proc>,
    ) {
        let k = usize::from(key);
        if epoch != self.view.epoch || self.view.head() != Some(r.me) {
            o.send(frontend(), Msg::StaleView { op, epoch });
            return;
        }
        let next = self.view.successor(r.me);
        if next.is_some() && self.blocked[k] >= self.view.epoch {
            o.send(frontend(), Msg::StaleView { op, epoch });
            return;
        }
        self.apply_write(key, val);
        match next {
            None => o.send(frontend(), Msg::PutOk { op, epoch }),
            Some(next) => {
                self.locked_by[k] = Some(op);
                self.pass_down(frontend(), true, op, key, val, epoch, next, o);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pass_down(
        &mut self,
        upstream: Id,
        heads: bool,
        op: OpId,
        key: Key,
        val: Value,
        epoch: Epoch,
        next: Node,
        o: &mut Out<Proc>,
    ) {
        let pending = Pending {
            upstream,
            heads,
            epoch,
            downstream: next,
            key,
        };
        self.pending.insert(op, pending);
        o.send(
            node_id(next),
            Msg::ChainWrite {
                op,
                key,
                val,
                epoch,
            },
        );
    }

    /// The successor answered a chain write (`acked`: an ack and its epoch), or the call
    /// failed (`None`).
    fn answered(&mut self, r: Rules, src: Id, op: OpId, acked: Option<Epoch>, o: &mut Out<Proc>) {
        match self.pending.get(&op) {
            Some(p) if node_id(p.downstream) == src => {}
            _ => return,
        }
        let p = self.pending.remove(&op).unwrap();
        let counts = acked == Some(p.epoch) && self.view.epoch == p.epoch;
        let answer = match (p.heads, counts) {
            (true, true) => Msg::PutOk { op, epoch: p.epoch },
            (true, false) => Msg::Unavailable { op, epoch: p.epoch },
            (false, true) => Msg::ChainAck { op, epoch: p.epoch },
            (false, false) => Msg::ChainFailed(op),
        };
        o.send(p.upstream, answer);
        let k = usize::from(p.key);
        if p.heads && !counts && p.epoch == self.view.epoch {
            self.blocked[k] = p.epoch;
        }
        if self.locked_by[k] == Some(op) {
            self.locked_by[k] = None;
            while self.locked_by[k].is_none() {
                let Some(at) = self.waiting.iter().position(|w| w.1 == p.key) else {
                    break;
                };
                let (op, key, val, epoch) = self.waiting.remove(at).unwrap();
                self.start_write(r, op, key, val, epoch, o);
            }
        }
    }
}

impl FrontendState {
    fn dispatch(&mut self, op: OpId, o: &mut Out<Proc>) {
        let epoch = self.view.epoch;
        // Model: a chain always has a member (the keeper never removes the last one).
        match self.pending[&op] {
            ClientOp::Put(key, val) => {
                let head = self.view.head().expect("a chain has a head");
                o.send(
                    node_id(head),
                    Msg::Put {
                        op,
                        key,
                        val,
                        epoch,
                    },
                );
            }
            ClientOp::Get(key) => {
                let tail = self.view.tail().expect("a chain has a tail");
                o.send(node_id(tail), Msg::Get { op, key, epoch });
            }
        }
    }

    fn finish(&mut self, r: FrontendRules, op: OpId, outcome: Outcome, o: &mut Out<Proc>) {
        if self.pending.remove(&op).is_some() {
            o.send(r.me, Msg::Reply(op, outcome));
            let (client, index) = op;
            if let Some(&next) = r.programs[usize::from(client)].get(usize::from(index) + 1) {
                o.send(r.me, Msg::Request((client, index + 1), next));
            }
        }
    }

    fn on_msg(&mut self, r: FrontendRules, k: &KeeperLimits, msg: Msg, o: &mut Out<Proc>) {
        match msg {
            Msg::Request(op, client_op) => {
                self.pending.insert(op, client_op);
                self.dispatch(op, o);
            }
            Msg::PutOk { op, .. } => self.finish(r, op, Outcome::WriteOk, o),
            Msg::GetOk { op, val, .. } => self.finish(r, op, Outcome::ReadOk(val), o),
            Msg::Unavailable { op, epoch } => {
                if matches!(self.pending.get(&op), Some(ClientOp::Put(..))) {
                    self.keeper.bump(k, epoch, o);
                }
                self.finish(r, op, Outcome::Indeterminate, o);
            }
            Msg::CallFailed(op) => self.finish(r, op, Outcome::Indeterminate, o),
            Msg::StaleView { op, epoch } if self.pending.contains_key(&op) => {
                self.keeper.bump(k, epoch, o);
                self.dispatch(op, o);
            }
            Msg::NotYet(op) if self.pending.contains_key(&op) => self.dispatch(op, o),
            Msg::ViewInstall(view) if view.epoch > self.view.epoch => self.view = view,
            Msg::Copied(epoch) => self.keeper.copied(k, epoch, o),
            Msg::Failed(epoch) => self.keeper.failed(k, epoch, o),
            _ => {}
        }
    }
}

/// The keeper's limits, from [`Cfg`].
#[derive(Clone)]
struct KeeperLimits {
    rejoiner: Node,
    rejoins: u8,
    removals: Removals,
    bumps: u8,
    natural: bool,
}

impl KeeperState {
    fn may_remove(&self, k: &KeeperLimits, victim: Node) -> bool {
        let r = k.removals;
        self.removals_left(k)
            && r.victims.contains(&victim)
            && (!r.after_rejoin || self.view.state(k.rejoiner) == NodeState::Up)
    }

    fn removals_left(&self, k: &KeeperLimits) -> bool {
        self.removed.len() < usize::from(k.removals.count)
    }

    /// The keeper declares `victim` dead (crashed or hung): the next view has it Down.
    fn remove(&mut self, k: &KeeperLimits, victim: Node, o: &mut Out<Proc>) {
        let state = self.view.state(victim);
        let last_up = state == NodeState::Up && self.view.chain.len() <= 1;
        if !self.may_remove(k, victim) || state == NodeState::Down || last_up {
            return;
        }
        self.set_down(victim);
        self.removed.push(victim);
        if !self.removals_left(k) {
            for node in 0..NODES as Node {
                o.cancel_timer(Timer::Remove(node));
            }
        }
        self.publish(k, o);
    }

    fn set_down(&mut self, node: Node) {
        let n = usize::from(node);
        if self.view.states[n] == NodeState::Up {
            self.view.since[n] = self.view.epoch + 1;
        }
        self.view.states[n] = NodeState::Down;
    }

    /// The rejoining node answers again: Syncing, if a chain has a member to copy from.
    /// Model: its "last standing" case (no member Up) is left out.
    fn rejoin(&mut self, k: &KeeperLimits, o: &mut Out<Proc>) {
        let x = k.rejoiner;
        if self.view.state(x) != NodeState::Down
            || self.removed.contains(&x)
            || self.rejoins >= k.rejoins
            || self.view.chain.is_empty()
        {
            return;
        }
        self.view.states[usize::from(x)] = NodeState::Syncing;
        self.rejoins += 1;
        self.rejoined_at = self.view.epoch + 1;
        o.cancel_timer(Timer::Rejoin);
        self.publish(k, o);
    }

    /// The rejoining node reports copied for `epoch`: if that is the current view, the next one
    /// makes it Up (at the tail: `since` is the new epoch).
    fn copied(&mut self, k: &KeeperLimits, epoch: Epoch, o: &mut Out<Proc>) {
        let x = k.rejoiner;
        if epoch != self.view.epoch || self.view.state(x) != NodeState::Syncing {
            return;
        }
        self.view.states[usize::from(x)] = NodeState::Up;
        self.view.since[usize::from(x)] = self.view.epoch + 1;
        self.publish(k, o);
    }

    /// The rejoining node's copy or catch-up failed: it is marked Down (it may come back, within
    /// the budget).
    fn failed(&mut self, k: &KeeperLimits, epoch: Epoch, o: &mut Out<Proc>) {
        let x = k.rejoiner;
        // Model: not the last Up member (a chain always has one); it stays Up, failed, and
        // answers no read.
        let last_up = self.view.chain == [x];
        if self.view.state(x) == NodeState::Down || epoch < self.rejoined_at || last_up {
            return;
        }
        self.set_down(x);
        if self.rejoins < k.rejoins {
            o.set_timer(Timer::Rejoin, model_timeout());
        }
        self.publish(k, o);
    }

    /// The frontend asked for an epoch after `asked`: unless the view is newer already, the same
    /// view under epoch + 1.
    fn bump(&mut self, k: &KeeperLimits, asked: Epoch, o: &mut Out<Proc>) {
        if asked >= self.view.epoch && self.bumps < k.bumps {
            self.bumps += 1;
            self.publish(k, o);
        }
    }

    fn publish(&mut self, k: &KeeperLimits, o: &mut Out<Proc>) {
        self.view.epoch += 1;
        self.view.order(k.natural);
        let install = Msg::ViewInstall(self.view.clone());
        // Model: a node declared dead gets nothing: crashed, or alive on its old view.
        for node in 0..NODES as Node {
            if !self.removed.contains(&node) {
                o.send(node_id(node), install.clone());
            }
        }
        o.send(frontend(), install);
    }
}

impl Actor for Proc {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;

    fn on_start(&self, _: Id, o: &mut Out<Self>) -> State {
        match self {
            Proc::Member { crash, start, .. } => {
                if *crash {
                    o.set_timer(Timer::Crash, model_timeout());
                }
                State::Member(start.clone())
            }
            Proc::Frontend { rules, keeper } => {
                for (client, program) in rules.programs.iter().enumerate() {
                    o.send(rules.me, Msg::Request((client as u8, 0), program[0]));
                }
                if keeper.removals.count > 0 {
                    for &node in keeper.removals.victims {
                        o.set_timer(Timer::Remove(node), model_timeout());
                    }
                }
                if keeper.rejoins > 0 {
                    o.set_timer(Timer::Rejoin, model_timeout());
                }
                let view = View::initial(keeper.rejoiner);
                State::Frontend(FrontendState {
                    view: view.clone(),
                    pending: BTreeMap::new(),
                    keeper: KeeperState {
                        view,
                        removed: Vec::new(),
                        rejoins: 0,
                        bumps: 0,
                        rejoined_at: 0,
                    },
                })
            }
        }
    }

    fn on_msg(&self, _: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let mut next = (**state).clone();
        match (self, &mut next) {
            (Proc::Member { rules, .. }, State::Member(s)) => s.on_msg(*rules, src, msg, o),
            (Proc::Frontend { rules, keeper }, State::Frontend(s)) => {
                s.on_msg(*rules, keeper, msg, o)
            }
            _ => {}
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }

    fn on_timeout(&self, _: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        let mut next = (**state).clone();
        match (self, &mut next, timer) {
            (Proc::Member { .. }, State::Member(s), Timer::Crash) => s.crash(o),
            (Proc::Frontend { keeper, .. }, State::Frontend(s), Timer::Remove(victim)) => {
                s.keeper.remove(keeper, *victim, o)
            }
            (Proc::Frontend { keeper, .. }, State::Frontend(s), Timer::Rejoin) => {
                s.keeper.rejoin(keeper, o)
            }
            _ => {}
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }
}

impl Cfg {
    /// The protocol as described: N2 rejoins once while the clients run [`ONE_KEY`]; no
    /// removal, no crash, no epoch bump (a key left blocked by an unacknowledged write stays so
    /// until the next view change: enough for safety, and it keeps the checks short).
    fn faithful() -> Cfg {
        Cfg {
            programs: ONE_KEY,
            initial: INITIAL,
            stale: STALE,
            rejoiner: 2,
            rejoins: 1,
            removals: NO_REMOVAL,
            bumps: 0,
            crash: false,
            bug: None,
        }
    }

    fn into_model(self) -> RejoinModel {
        let view = View::initial(self.rejoiner);
        let actors = ActorModel::new(self.clone(), History::new(self.programs, self.initial))
            .actors((0..NODES as Node).map(|node| {
                let values = if node == self.rejoiner {
                    self.stale
                } else {
                    self.initial
                };
                Proc::Member {
                    rules: Rules {
                        me: node,
                        bug: self.bug,
                    },
                    crash: self.crash && self.removals.victims.contains(&node),
                    start: MemberState::new(view.clone(), values),
                }
            }))
            .actor(Proc::Frontend {
                rules: FrontendRules {
                    me: frontend(),
                    programs: self.programs,
                },
                keeper: KeeperLimits {
                    rejoiner: self.rejoiner,
                    rejoins: self.rejoins,
                    removals: self.removals,
                    bumps: self.bumps,
                    natural: self.bug == Some(Bug::NaturalOrder),
                },
            })
            .init_network(Network::new_unordered_nonduplicating([]))
            .record_msg_in(record_invocation)
            .record_msg_out(record_return);
        RejoinModel {
            actors,
            sometimes: true,
        }
    }
}

type SysState = ActorModelState<Proc, History>;

/// The actor model, with states told apart only by what can still matter.
///
/// Model: as in `chain_model.rs`, a message whose delivery would change nothing, and never can
/// again, is dropped ([`RejoinModel::is_dead`]): an answer about a call that is over (a chain
/// write's, a client operation's, a transfer step's the syncing node no longer waits for), a view
/// no newer than the receiver's, a report the keeper can no longer act on, anything but a
/// request to a crashed node. A state is not explored past the point where every operation has
/// been answered (see [`History::over`]).
#[derive(Clone)]
struct RejoinModel {
    actors: ActorModel<Proc, Cfg, History>,
    /// Whether to check the `sometimes` properties too.
    sometimes: bool,
}

fn member(state: &SysState, node: usize) -> &MemberState {
    match &*state.actor_states[node] {
        State::Member(m) => m,
        _ => unreachable!("members come first"),
    }
}

fn front(state: &SysState) -> &FrontendState {
    match &*state.actor_states[FRONTEND] {
        State::Frontend(f) => f,
        _ => unreachable!("the frontend comes last"),
    }
}

impl RejoinModel {
    fn cfg(&self) -> &Cfg {
        &self.actors.cfg
    }

    fn is_dead(&self, state: &SysState, env: &Envelope<&Msg>) -> bool {
        let dst = usize::from(env.dst);
        match (&*state.actor_states[dst], env.msg) {
            (
                State::Member(_),
                Msg::Put { .. }
                | Msg::Get { .. }
                | Msg::ChainWrite { .. }
                | Msg::SyncBegin { .. }
                | Msg::SyncCopy { .. }
                | Msg::SyncDelta { .. },
            ) => false,
            (State::Member(m), _) if m.crashed => true,
            (State::Member(m), Msg::ViewInstall(view)) => view.epoch <= m.view.epoch,
            (State::Member(m), Msg::ChainAck { op, .. } | Msg::ChainFailed(op)) => {
                !matches!(m.pending.get(op), Some(p) if node_id(p.downstream) == env.src)
            }
            (State::Member(m), Msg::SyncEnd { session }) => {
                !matches!(&m.tracker, Some(t) if node_id(t.node) == env.src && t.session == *session)
            }
            (
                State::Member(m),
                msg @ (Msg::BeginOk { .. }
                | Msg::CopyBatch { .. }
                | Msg::DeltaBatch { .. }
                | Msg::SyncStale { .. }
                | Msg::NoSession { .. }
                | Msg::SyncFailed { .. }),
            ) => !m.awaits(env.src, msg),
            (State::Frontend(f), Msg::ViewInstall(view)) => view.epoch <= f.view.epoch,
            (
                State::Frontend(f),
                Msg::PutOk { op, .. }
                | Msg::GetOk { op, .. }
                | Msg::Unavailable { op, .. }
                | Msg::CallFailed(op)
                | Msg::StaleView { op, .. }
                | Msg::NotYet(op),
            ) => !f.pending.contains_key(op),
            (State::Frontend(f), Msg::Copied(epoch)) => {
                let k = &f.keeper;
                *epoch != k.view.epoch || k.view.state(self.cfg().rejoiner) != NodeState::Syncing
            }
            (State::Frontend(f), Msg::Failed(epoch)) => {
                let k = &f.keeper;
                k.view.state(self.cfg().rejoiner) == NodeState::Down || *epoch < k.rejoined_at
            }
            _ => false,
        }
    }

    fn normalize(&self, mut state: SysState) -> SysState {
        let dead = |env: &Envelope<&Msg>| self.is_dead(&state, env);
        if state.network.iter_deliverable().any(|env| dead(&env)) {
            let live: Vec<Envelope<Msg>> = state
                .network
                .iter_all()
                .filter(|env| !dead(env))
                .map(|env| env.to_cloned_msg())
                .collect();
            state.network = Network::new_unordered_nonduplicating(live);
        }
        state
    }

    /// Whether the rejoining node's first source may be removed.
    fn source_may_go(&self) -> bool {
        let cfg = self.cfg();
        let first = View::initial(cfg.rejoiner)
            .tail()
            .expect("a chain at the start");
        cfg.removals.count > 0 && cfg.removals.victims.contains(&first)
    }

    fn rejoiner<'a>(&self, state: &'a SysState) -> &'a MemberState {
        member(state, usize::from(self.cfg().rejoiner))
    }
}

impl Model for RejoinModel {
    type State = SysState;
    type Action = ActorModelAction<Msg, Timer>;

    fn init_states(&self) -> Vec<SysState> {
        let states = self.actors.init_states();
        states.into_iter().map(|s| self.normalize(s)).collect()
    }

    fn actions(&self, state: &SysState, actions: &mut Vec<Self::Action>) {
        self.actors.actions(state, actions)
    }

    fn next_state(&self, state: &SysState, action: Self::Action) -> Option<SysState> {
        let next = self.actors.next_state(state, action)?;
        Some(self.normalize(next))
    }

    fn within_boundary(&self, state: &SysState) -> bool {
        within_boundary(self.cfg(), state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always("linearizable", |_, state: &SysState| {
                state.history.linearizable()
            }),
            Property::sometimes(
                "the rejoined node serves a read",
                |model: &RejoinModel, state: &SysState| {
                    let x = node_id(model.cfg().rejoiner);
                    state
                        .network
                        .iter_deliverable()
                        .any(|env| env.src == x && matches!(env.msg, Msg::GetOk { .. }))
                },
            ),
            Property::sometimes(
                "a write is dirty at the rejoined node while it catches up",
                |model: &RejoinModel, state: &SysState| {
                    model.rejoiner(state).dirty.iter().any(|&d| d)
                },
            ),
            Property::sometimes(
                "a final delta brings a dirty key",
                |model: &RejoinModel, state: &SysState| {
                    let x = model.rejoiner(state);
                    x.catching_up()
                        && state.network.iter_deliverable().any(|env| match env.msg {
                            Msg::DeltaBatch { entries, .. } => {
                                entries.iter().any(|&(k, _)| x.dirty[usize::from(k)])
                            }
                            _ => false,
                        })
                },
            ),
            Property::sometimes(
                "a write is recorded between the tracker's registration and the snapshot",
                |_, state: &SysState| {
                    (0..NODES).any(|n| {
                        matches!(&member(state, n).tracker,
                            Some(t) if !t.ready && t.changed.iter().any(|&c| c))
                    })
                },
            ),
            Property::sometimes(
                "the rejoined node serves a read after another node is removed (when one may be)",
                |model: &RejoinModel, state: &SysState| {
                    let cfg = model.cfg();
                    let x = cfg.rejoiner;
                    let others_down = |view: &View| {
                        (0..NODES as Node).any(|n| n != x && view.state(n) == NodeState::Down)
                    };
                    !cfg.removals.victims.iter().any(|&v| v != x)
                        || others_down(&model.rejoiner(state).view)
                            && state.network.iter_deliverable().any(|env| {
                                env.src == node_id(x) && matches!(env.msg, Msg::GetOk { .. })
                            })
                },
            ),
            Property::sometimes(
                "the rejoined node's catch-up fails (when its source may be removed)",
                |model: &RejoinModel, state: &SysState| {
                    let x = model.rejoiner(state);
                    !model.source_may_go()
                        || x.failed && x.view.state(model.cfg().rejoiner) == NodeState::Up
                },
            ),
            Property::sometimes(
                "the syncing node starts over from another source (when its source may be removed \
                 while it syncs)",
                |model: &RejoinModel, state: &SysState| {
                    let cfg = model.cfg();
                    let first = View::initial(cfg.rejoiner).tail();
                    !model.source_may_go()
                        || cfg.removals.after_rejoin
                        || matches!(&model.rejoiner(state).sync, Some(s) if Some(s.source) != first)
                },
            ),
        ];
        if !self.sometimes {
            properties.truncate(1);
        }
        properties
    }
}

/// The failure budget: at most one crashed node, and it is the first one the keeper removes.
fn within_boundary(_cfg: &Cfg, state: &SysState) -> bool {
    if state.history.over {
        return false;
    }
    let keeper = &front(state).keeper;
    let mut crashed = (0..NODES).filter(|&node| member(state, node).crashed);
    match (crashed.next(), crashed.next()) {
        (None, _) => true,
        (Some(node), None) => !matches!(keeper.removed.first(), Some(&r) if usize::from(r) != node),
        (Some(_), Some(_)) => false,
    }
}

fn record_invocation(_: &Cfg, history: &History, env: Envelope<&Msg>) -> Option<History> {
    if history.all_answered() {
        let mut history = history.clone();
        history.over = true;
        return Some(history);
    }
    let Msg::Request(op, client_op) = env.msg else {
        return None;
    };
    let mut history = history.clone();
    let op_spec = match client_op {
        ClientOp::Put(_, val) => RegisterOp::Write(*val),
        ClientOp::Get(_) => RegisterOp::Read,
    };
    history.update(client_op.key(), |tester| {
        let _ = tester.on_invoke(*op, op_spec);
    });
    Some(history)
}

fn record_return(cfg: &Cfg, history: &History, env: Envelope<&Msg>) -> Option<History> {
    let Msg::Reply(op, outcome) = env.msg else {
        return None;
    };
    let mut history = history.clone();
    history.answered += 1;
    let ret = match outcome {
        Outcome::WriteOk => RegisterRet::WriteOk,
        Outcome::ReadOk(val) => RegisterRet::ReadOk(*val),
        // Indeterminate: the operation stays in flight forever.
        Outcome::Indeterminate => return Some(history),
    };
    let key = cfg.programs[usize::from(op.0)][usize::from(op.1)].key();
    history.update(key, |tester| {
        let _ = tester.on_return(*op, ret);
    });
    Some(history)
}

type Trace = Path<SysState, ActorModelAction<Msg, Timer>>;

/// A counterexample in plain lines: who received what, what the clients were told, and the
/// histories that failed.
fn describe(path: Trace) -> String {
    let name = |id: Id| {
        let i = usize::from(id);
        if i < NODES {
            format!("N{i}")
        } else {
            "frontend (keeper)".to_string()
        }
    };
    let client = |op: &OpId| (b'A' + op.0) as char;
    let replies = |state: &SysState| -> Vec<String> {
        let mut replies: Vec<String> = state
            .network
            .iter_all()
            .filter_map(|env| match env.msg {
                Msg::Reply(op, outcome) => Some(format!("{op:?} {outcome:?}")),
                _ => None,
            })
            .collect();
        replies.sort();
        replies
    };
    let mut out = String::new();
    let steps = path.into_vec();
    for (at, (state, action)) in steps.iter().enumerate() {
        let line = match action {
            Some(ActorModelAction::Deliver {
                msg: Msg::Request(op, client_op),
                ..
            }) => format!("client {} invokes {op:?} {client_op:?}", client(op)),
            Some(ActorModelAction::Deliver { src, dst, msg }) => {
                format!("{} -> {}: {:?}", name(*src), name(*dst), msg)
            }
            Some(ActorModelAction::Timeout(id, timer)) => {
                format!("{} fires {:?}", name(*id), timer)
            }
            Some(other) => format!("{other:?}"),
            None => continue,
        };
        out.push_str(&line);
        out.push('\n');
        if let Some((next, _)) = steps.get(at + 1) {
            let before = replies(state);
            for reply in replies(next) {
                if !before.contains(&reply) {
                    out.push_str(&format!("  the client is answered: {reply}\n"));
                }
            }
        }
    }
    if let Some((last, _)) = steps.last() {
        for (key, tester) in last.history.testers.iter().enumerate() {
            if !last.history.linearizable[key] {
                out.push_str(&format!("history of key {key}: {tester:?}\n"));
            }
        }
    }
    out
}

/// How [`check`] searches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Search {
    /// Every state, breadth first, with every property.
    Exhaustive,
    /// For linearizability only, until a counterexample: breadth first (the shortest one) or
    /// depth first (found sooner in a large space).
    BreadthFirst,
    DepthFirst,
}

/// What [`check`] found.
struct Checked {
    states: usize,
    counterexample: Option<Trace>,
    /// The `sometimes` properties without an example.
    unreached: Vec<&'static str>,
}

/// Checks `cfg`; prints what it found.
fn check(label: &str, cfg: Cfg, search: Search) -> Checked {
    fn summary(label: &str, started: Instant, checker: impl Checker<RejoinModel>) -> Checked {
        println!(
            "{label}: {} unique states ({} generated), max depth {}, in {:.1?}",
            checker.unique_state_count(),
            checker.state_count(),
            checker.max_depth(),
            started.elapsed()
        );
        let unreached = checker
            .model()
            .properties()
            .into_iter()
            .filter(|p| p.expectation == Expectation::Sometimes)
            .filter(|p| checker.discovery(p.name).is_none())
            .map(|p| p.name)
            .collect();
        Checked {
            states: checker.unique_state_count(),
            counterexample: checker.discovery("linearizable"),
            unreached,
        }
    }
    let started = Instant::now();
    let mut model = cfg.into_model();
    model.sometimes = search == Search::Exhaustive;
    let checked = match search {
        Search::Exhaustive | Search::BreadthFirst => {
            summary(label, started, model.checker().spawn_bfs().join())
        }
        Search::DepthFirst => summary(label, started, model.checker().spawn_dfs().join()),
    };
    if let Some(path) = &checked.counterexample {
        let trace = describe(path.clone());
        println!("{label}: NOT linearizable:\n{trace}");
    }
    checked
}

/// Checks `cfg` exhaustively and asserts that every history is linearizable, that the
/// interesting paths were reached, and that the check explored at least `min_states` states.
fn assert_linearizable(label: &str, cfg: Cfg, min_states: usize) {
    let checked = check(label, cfg, Search::Exhaustive);
    if let Some(path) = checked.counterexample {
        panic!("{label}: not linearizable:\n{}", describe(path));
    }
    assert!(
        checked.unreached.is_empty(),
        "{label}: never reached: {:?}",
        checked.unreached
    );
    assert!(
        checked.states > min_states,
        "{label}: only {} states",
        checked.states
    );
}

/// Checks `cfg` and asserts that the checker finds a history that is not linearizable.
fn assert_not_linearizable(label: &str, cfg: Cfg, search: Search) {
    let checked = check(label, cfg, search);
    assert!(
        checked.counterexample.is_some(),
        "{label}: expected a counterexample"
    );
}

/// The rejoin of N2 (Syncing, copied, Up, catch-up) while both clients write and read key 0, in
/// any interleaving with the transfer. Linearizable: 443,750 states, about 5 s.
#[test]
fn a_rejoin_is_linearizable() {
    assert_linearizable("rejoin, one key", Cfg::faithful(), 400_000);
}

/// Two keys: key 0 in the source's snapshot, key 1 not (absent at the source, stale at N2, so
/// N2 must delete it); each client writes one and reads the other. Linearizable: 343,999
/// states, about 4 s.
#[test]
fn a_rejoin_with_two_keys_is_linearizable() {
    let cfg = Cfg {
        programs: TWO_KEYS,
        ..Cfg::faithful()
    };
    assert_linearizable("rejoin, two keys", cfg, 300_000);
}

/// Once N2 is Up (catching up or caught up), the keeper removes its source N1 (hung: alive on
/// its old view, it still answers the final delta if it holds the epoch; or it never installs
/// it, and the catch-up fails). [`WRITE_AND_READ_READ`]. Linearizable: 535,347 states, about
/// 6 s.
#[test]
fn a_removal_of_the_source_after_the_rejoin_is_linearizable() {
    let cfg = Cfg {
        programs: WRITE_AND_READ_READ,
        removals: Removals::after_rejoin(&[1]),
        ..Cfg::faithful()
    };
    assert_linearizable("source removed after the rejoin", cfg, 500_000);
}

/// The keeper removes the source N1 at any time: before the rejoin, while N2 syncs (N2 starts
/// over from N0), or after. [`WRITE_AND_READ_READ`]. Linearizable: 1,139,287 states, about
/// 12 s (the longest default test).
#[test]
fn a_removal_of_the_source_at_any_time_is_linearizable() {
    let cfg = Cfg {
        programs: WRITE_AND_READ_READ,
        removals: Removals::any_time(&[1]),
        ..Cfg::faithful()
    };
    assert_linearizable("source removed at any time", cfg, 1_000_000);
}

/// The keeper removes the rejoining node N2 at any time (Syncing, or Up while it catches up):
/// it goes on on its old view; its source drops the tracker once it sees it Down.
/// [`WRITE_AND_READ_READ`]. Linearizable: 529,126 states, about 5 s.
#[test]
fn a_removal_of_the_syncing_node_is_linearizable() {
    let cfg = Cfg {
        programs: WRITE_AND_READ_READ,
        removals: Removals::any_time(&[2]),
        ..Cfg::faithful()
    };
    assert_linearizable("syncing node removed", cfg, 500_000);
}

/// The source N1 may crash at any time, and the keeper removes it at any time: a copy or a
/// catch-up from it fails (N2 reports it and is marked Down), calls waiting on it fail.
/// [`WRITE_AND_READ`]. Linearizable: 931,455 states, about 11 s.
#[test]
fn a_crash_of_the_source_is_linearizable() {
    let cfg = Cfg {
        programs: WRITE_AND_READ,
        removals: Removals::any_time(&[1]),
        crash: true,
        ..Cfg::faithful()
    };
    assert_linearizable("source crashes", cfg, 900_000);
}

/// [`Bug::NoDirtyCheck`]: NOT linearizable, as
/// [`known_counterexample_a_pulled_value_overwrites_a_newer_write`] replays. Breadth first
/// (the shortest counterexample, 37 steps): found after 444,156 states, about 4 s.
#[test]
fn a_final_delta_without_the_dirty_check_is_caught() {
    let cfg = Cfg {
        bug: Some(Bug::NoDirtyCheck),
        ..Cfg::faithful()
    };
    assert_not_linearizable("no dirty check", cfg, Search::BreadthFirst);
}

/// [`Bug::TrackAfterSnapshot`]: a PUT of key 1 (absent, so not in the snapshot) lands at the
/// source between its snapshot and its tracker's registration, and is acknowledged; N2 never
/// gets it and, once Up and caught up, reads key 1 as absent. Needs a key outside the snapshot:
/// with [`ONE_KEY`] (key 0 is in the snapshot, and copied with its value when copied) it is
/// not caught. [`TWO_KEYS`], breadth first: found after 338,602 states, about 3 s.
#[test]
fn a_tracker_registered_after_the_snapshot_is_caught() {
    let cfg = Cfg {
        programs: TWO_KEYS,
        bug: Some(Bug::TrackAfterSnapshot),
        ..Cfg::faithful()
    };
    assert_not_linearizable("tracker after the snapshot", cfg, Search::BreadthFirst);
}

/// [`Bug::ServesBeforeCatchUp`]: a PUT acknowledged in the epoch before N2 became Up (recorded
/// at the source, not yet pulled) and a GET at N2, the new tail, before its final delta: the
/// read goes back in time. Breadth first: found after 141,590 states, about 1 s.
#[test]
fn reads_served_before_the_catch_up_are_caught() {
    let cfg = Cfg {
        bug: Some(Bug::ServesBeforeCatchUp),
        ..Cfg::faithful()
    };
    assert_not_linearizable("serves before the catch-up", cfg, Search::BreadthFirst);
}

/// [`Bug::KeepsOwnKeys`]: N2 keeps its stale key 1 (deleted at the others while it was Down) and
/// serves it. [`TWO_KEYS`], breadth first: found after 123,727 states, under a second.
#[test]
fn a_syncing_node_keeping_its_own_keys_is_caught() {
    let cfg = Cfg {
        programs: TWO_KEYS,
        bug: Some(Bug::KeepsOwnKeys),
        ..Cfg::faithful()
    };
    assert_not_linearizable("keeps its own keys", cfg, Search::BreadthFirst);
}

/// The configuration of [`a_rejoined_node_at_the_head_is_caught`]: N0 rejoins, then the keeper
/// may remove N2 and N1, one after the other, once N0 is Up.
fn rejoin_of_n0_then_two_removals() -> Cfg {
    Cfg {
        programs: WRITE_AND_READ_READ,
        rejoiner: 0,
        removals: Removals {
            count: 2,
            victims: &[1, 2],
            after_rejoin: true,
        },
        ..Cfg::faithful()
    }
}

/// [`Bug::NaturalOrder`]: N0 rejoins at the head instead of the tail. Caught, but only once the
/// rejoined node serves, which takes two removals after the rejoin (with one, the tail is N1 or
/// N2): the copy comes from the tail, which may lack a write that members before it applied
/// and that was never acknowledged; at the tail the rejoined node keeps the chain's order (each
/// member holds at least what its successor holds), at the head it breaks it, and a read goes
/// back in time ([`known_counterexample_a_rejoined_head`]). Depth first: found after 1,114,085
/// states, about 9 s (breadth first: 3,399,017 states, 32 steps, 43 s).
#[test]
fn a_rejoined_node_at_the_head_is_caught() {
    let cfg = Cfg {
        bug: Some(Bug::NaturalOrder),
        ..rejoin_of_n0_then_two_removals()
    };
    assert_not_linearizable("rejoined at the head", cfg, Search::DepthFirst);
}

/// The same with the chain rule (`since`): linearizable, 3,487,791 states, about 50 s.
#[test]
#[ignore = "slow: 3.5 million states, about 50 s"]
fn a_rejoin_of_n0_then_two_removals_is_linearizable() {
    assert_linearizable(
        "N0 rejoins, two removals",
        rejoin_of_n0_then_two_removals(),
        3_000_000,
    );
}

/// With one epoch bump (the frontend asks for one after an unacknowledged write or a refusal):
/// linearizable, 5,786,372 states, about 75 s.
#[test]
#[ignore = "slow: 5.8 million states, about 75 s"]
fn a_rejoin_with_an_epoch_bump_is_linearizable() {
    let cfg = Cfg {
        bumps: 1,
        ..Cfg::faithful()
    };
    assert_linearizable("rejoin with a bump", cfg, 5_000_000);
}

/// [`ONE_KEY`], and one removal of N0 or N1 once N2 is Up. Linearizable: 10,322,760 states,
/// about 2.5 minutes.
#[test]
#[ignore = "slow: 10 million states, minutes"]
fn a_removal_of_another_node_after_the_rejoin_is_linearizable() {
    let cfg = Cfg {
        removals: Removals::after_rejoin(&[0, 1]),
        ..Cfg::faithful()
    };
    assert_linearizable("a removal after the rejoin", cfg, 10_000_000);
}

/// [`ONE_KEY`], and one removal of any node at any time. Linearizable: 21,051,772 states, about
/// 5 minutes.
#[test]
#[ignore = "slow: 21 million states, minutes"]
fn a_removal_at_any_time_is_linearizable() {
    let cfg = Cfg {
        removals: Removals::any_time(&[0, 1, 2]),
        ..Cfg::faithful()
    };
    assert_linearizable("a removal at any time", cfg, 20_000_000);
}

/// Carries out `steps` from the initial state, checking that each is possible and stays within
/// the failure budget; returns the state reached.
fn replay(model: &RejoinModel, steps: &[ActorModelAction<Msg, Timer>]) -> SysState {
    let mut state = model.init_states().remove(0);
    let mut enabled = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        enabled.clear();
        model.actions(&state, &mut enabled);
        assert!(enabled.contains(step), "step {i} is not possible: {step:?}");
        state = model
            .next_state(&state, step.clone())
            .expect("a step that does something");
        assert!(
            model.within_boundary(&state),
            "step {i} leaves the failure budget"
        );
    }
    state
}

fn view(epoch: Epoch, states: [NodeState; NODES], since: [Epoch; NODES], chain: &[Node]) -> View {
    View {
        epoch,
        states,
        since,
        chain: chain.to_vec(),
    }
}

/// The shortest counterexample the checker finds for [`Bug::NoDirtyCheck`]. A's PUT(1) enters
/// the chain [N0, N1] in epoch 2 while N2 syncs from N1; N2 copies 5, reports copied, and the
/// keeper makes it Up in epoch 3. N1 applies PUT(1) (recorded) and installs epoch 3; N2's final
/// delta reaches N1, which freezes the tracker and answers (key 0, 1). B's PUT(2) then goes down
/// [N0, N1, N2] in epoch 3 and N2 applies it (dirty) before that answer arrives: without the
/// check the pulled 1 overwrites 2, and A's GET, after both PUTs returned, reads 1. With the
/// check (the same steps), N2 keeps 2.
#[test]
fn known_counterexample_a_pulled_value_overwrites_a_newer_write() {
    use ActorModelAction::{Deliver, Timeout};
    use NodeState::{Syncing, Up};
    let [n0, n1, n2, fe] = [0, 1, 2, 3].map(Id::from);
    let d = |src, dst, msg| Deliver { src, dst, msg };
    let (pa, pb, ga) = ((0, 0), (1, 0), (0, 1));
    let e2 = Msg::ViewInstall(view(2, [Up, Up, Syncing], [0, 0, 1], &[0, 1]));
    let e3 = Msg::ViewInstall(view(3, [Up, Up, Up], [0, 0, 3], &[0, 1, 2]));
    #[rustfmt::skip]
    let steps = vec![
        Timeout(fe, Timer::Rejoin),
        d(fe, n0, e2.clone()),
        d(fe, n2, e2.clone()),
        d(fe, n1, e2.clone()),
        d(fe, fe, e2),
        d(fe, fe, Msg::Request(pa, ClientOp::Put(0, 1))),
        d(fe, n0, Msg::Put { op: pa, key: 0, val: 1, epoch: 2 }),
        // N2 copies from N1: the tracker, the snapshot [key 0], its value, an empty delta.
        d(n2, n1, Msg::SyncBegin { epoch: 2 }),
        d(n1, n1, Msg::Snapshot { node: 2, session: 2 }),
        d(n1, n2, Msg::BeginOk { session: 2 }),
        d(n2, n1, Msg::SyncCopy { session: 2, from: 0 }),
        d(n1, n2, Msg::CopyBatch { session: 2, entry: Some((0, 5)), next: 1 }),
        d(n2, n1, Msg::SyncCopy { session: 2, from: 1 }),
        d(n1, n2, Msg::CopyBatch { session: 2, entry: None, next: 1 }),
        d(n2, n1, Msg::SyncDelta { session: 2, final_epoch: 0 }),
        d(n1, n2, Msg::DeltaBatch { session: 2, entries: vec![] }),
        d(n2, fe, Msg::Copied(2)),
        // The keeper makes N2 Up in epoch 3; N2 installs it and asks for its final delta.
        d(fe, n2, e3.clone()),
        d(fe, fe, e3.clone()),
        // PUT(1) reaches N1, the tail of epoch 2: recorded.
        d(n0, n1, Msg::ChainWrite { op: pa, key: 0, val: 1, epoch: 2 }),
        d(n1, n0, Msg::ChainAck { op: pa, epoch: 2 }),
        d(fe, n1, e3.clone()),
        // N1 holds epoch 3: it freezes the tracker and answers (key 0, 1), on its way.
        d(n2, n1, Msg::SyncDelta { session: 2, final_epoch: 3 }),
        d(n0, fe, Msg::PutOk { op: pa, epoch: 2 }),
        d(fe, fe, Msg::Request(pb, ClientOp::Put(0, 2))),
        d(fe, n0, e3),
        d(fe, n0, Msg::Put { op: pb, key: 0, val: 2, epoch: 3 }),
        d(n0, n1, Msg::ChainWrite { op: pb, key: 0, val: 2, epoch: 3 }),
        // N2 applies PUT(2) first (key 0 is dirty), then the pulled value.
        d(n1, n2, Msg::ChainWrite { op: pb, key: 0, val: 2, epoch: 3 }),
        d(n1, n2, Msg::DeltaBatch { session: 2, entries: vec![(0, 1)] }),
        d(n2, n1, Msg::ChainAck { op: pb, epoch: 3 }),
        d(n1, n0, Msg::ChainAck { op: pb, epoch: 3 }),
        d(n0, fe, Msg::PutOk { op: pb, epoch: 3 }),
        d(fe, fe, Msg::Request(ga, ClientOp::Get(0))),
        d(fe, n2, Msg::Get { op: ga, key: 0, epoch: 3 }),
    ];
    let read = |val| {
        d(
            n2,
            fe,
            Msg::GetOk {
                op: ga,
                val,
                epoch: 3,
            },
        )
    };

    let broken = Cfg {
        bug: Some(Bug::NoDirtyCheck),
        ..Cfg::faithful()
    }
    .into_model();
    let mut bad = steps.clone();
    bad.push(read(1));
    let state = replay(&broken, &bad);
    assert!(!state.history.linearizable());

    let fixed = Cfg::faithful().into_model();
    let mut good = steps;
    good.push(read(2));
    let state = replay(&fixed, &good);
    assert_eq!([0, 1, 2].map(|n| member(&state, n).values[0]), [2, 2, 2]);
    assert!(state.history.linearizable());
}

/// The shortest counterexample the checker finds for [`Bug::NaturalOrder`] (32 steps). A's
/// PUT(1) is applied at N1, the head of epoch 1, and never gets further (N2 installs epoch 2,
/// where N0 syncs, and would refuse it): N1 holds 1, the tail N2 holds 5. N0 copies 5 from N2
/// and is made Up at the head: [N0, N1, N2]. The keeper removes N2: B reads 1 at the tail N1
/// (A's PUT may have taken effect). It removes N1: B reads 5 at N0, back in time. Under the
/// chain rule epoch 3 has N0 at the tail, [N1, N2, N0], after the nodes whose data it lacks.
#[test]
fn known_counterexample_a_rejoined_head() {
    use ActorModelAction::{Deliver, Timeout};
    use NodeState::{Down, Syncing, Up};
    let [n0, n1, n2, fe] = [0, 1, 2, 3].map(Id::from);
    let d = |src, dst, msg| Deliver { src, dst, msg };
    let (pa, ga, gb) = ((0, 0), (1, 0), (1, 1));
    let e2 = Msg::ViewInstall(view(2, [Syncing, Up, Up], [1, 0, 0], &[1, 2]));
    let e3 = Msg::ViewInstall(view(3, [Up, Up, Up], [3, 0, 0], &[0, 1, 2]));
    let e4 = Msg::ViewInstall(view(4, [Up, Up, Down], [3, 0, 4], &[0, 1]));
    let e5 = Msg::ViewInstall(view(5, [Up, Down, Down], [3, 5, 4], &[0]));
    #[rustfmt::skip]
    let start = vec![
        d(fe, fe, Msg::Request(pa, ClientOp::Put(0, 1))),
        // N1 applies 1 and sends it on to N2, which never takes it.
        d(fe, n1, Msg::Put { op: pa, key: 0, val: 1, epoch: 1 }),
        Timeout(fe, Timer::Rejoin),
        d(fe, n2, e2.clone()),
        d(fe, n0, e2),
        d(n0, n2, Msg::SyncBegin { epoch: 2 }),
        d(n2, n2, Msg::Snapshot { node: 0, session: 2 }),
        d(n2, n0, Msg::BeginOk { session: 2 }),
        d(n0, n2, Msg::SyncCopy { session: 2, from: 0 }),
        d(n2, n0, Msg::CopyBatch { session: 2, entry: Some((0, 5)), next: 1 }),
        d(n0, n2, Msg::SyncCopy { session: 2, from: 1 }),
        d(n2, n0, Msg::CopyBatch { session: 2, entry: None, next: 1 }),
        d(n0, n2, Msg::SyncDelta { session: 2, final_epoch: 0 }),
        d(n2, n0, Msg::DeltaBatch { session: 2, entries: vec![] }),
        d(n0, fe, Msg::Copied(2)),
    ];
    #[rustfmt::skip]
    let rest = [
        d(fe, n0, e3.clone()),
        d(fe, n2, e3),
        d(n0, n2, Msg::SyncDelta { session: 2, final_epoch: 3 }),
        d(n2, n0, Msg::DeltaBatch { session: 2, entries: vec![] }),
        Timeout(fe, Timer::Remove(2)),
        d(fe, fe, e4.clone()),
        d(fe, fe, Msg::Request(ga, ClientOp::Get(0))),
        d(fe, n1, e4),
        d(fe, n1, Msg::Get { op: ga, key: 0, epoch: 4 }),
        d(n1, fe, Msg::GetOk { op: ga, val: 1, epoch: 4 }),
        Timeout(fe, Timer::Remove(1)),
        d(fe, n0, e5.clone()),
        d(fe, fe, e5),
        d(fe, fe, Msg::Request(gb, ClientOp::Get(0))),
        d(fe, n0, Msg::Get { op: gb, key: 0, epoch: 5 }),
        d(n0, fe, Msg::GetOk { op: gb, val: 5, epoch: 5 }),
    ];
    let broken = Cfg {
        bug: Some(Bug::NaturalOrder),
        ..rejoin_of_n0_then_two_removals()
    }
    .into_model();
    let mut steps = start.clone();
    steps.extend(rest);
    let state = replay(&broken, &steps);
    assert!(!state.history.linearizable());

    // Under the chain rule the same start makes N0 the tail of epoch 3.
    let fixed = rejoin_of_n0_then_two_removals().into_model();
    let state = replay(&fixed, &start);
    assert_eq!(front(&state).keeper.view.chain, [1, 2, 0]);
    assert_eq!(member(&state, 1).values[0], 1);
    assert_eq!(member(&state, 0).values[0], 5);
}
