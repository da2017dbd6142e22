//! Handoff: how partitions move to their new chains when a node joins or leaves, while reads
//! and writes go on.
//!
//! **The views of a move.** The view keeper starts a move by publishing a view with a `target`
//! owner table beside the current `owners` ([`crate::ring::View`]): a joining node is listed
//! (up, owning nothing yet), and [`crate::ring::join_owners`] or
//! [`crate::ring::leave_owners`] says which partitions change hands. Chains still follow the
//! current owners, so nothing changes for requests. Every node that is up and will be in a
//! partition's chain under the target without being in it now (a *receiver*) copies that
//! partition ([`plan`]), through the same SYNC calls as a returning node
//! ([`crate::cluster::transfer`]): the source records every write of those partitions from the
//! moment the copy begins, so the copy plus its deltas misses nothing. When every receiver
//! reports its copy done for the current epoch, the keeper publishes the *commit*: the target
//! becomes the owners, in a view that changes nothing else. Each receiver then catches up with
//! final deltas, as a returning node does, answering no read of those partitions until it has;
//! the members that left a chain drop its keys once no transfer needs them (`sweep`).
//!
//! **Where a receiver copies from.** Under the chain rule a receiver may land anywhere in its
//! new chain (members are ordered by `since`, not by when they entered a chain). It copies from
//! the member nearest before it in the new chain that is also in the current one, or, when none
//! is, from the current head. At the commit the source holds the epoch of the commit before it
//! answers the final delta, so the receiver ends with exactly what the source held at the end of
//! the old epoch: no more than the members before it (which were before the source in the old
//! chain, or the source itself) and no less than the members after it (which were after the
//! source). Invariant 2 of [`crate::cluster`] holds through the move.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::cluster::transfer::{self, relock, Intake, Interrupted, Phase, Plan, Source, Transfer};
use crate::ring::{key_position, Ring};

/// The ring a move under way leads to, if one is.
pub fn target_ring(ring: &Ring) -> Option<Ring> {
    if !ring.view().is_moving() {
        return None;
    }
    Ring::new(ring.view().moved()).ok()
}

/// The partitions node `me` must copy before the move under way in `ring` can be committed,
/// each with its source; empty when no move is under way or `me` is not up. An error says why
/// a partition cannot be copied now (no member of its chain is up).
pub fn plan(ring: &Ring, me: usize) -> Result<Plan, String> {
    let view = ring.view();
    if !view.is_moving() || !view.is_up(me) {
        return Ok(Plan::default());
    }
    let target = Ring::new(view.moved()).map_err(|e| e.to_string())?;
    let mut points = Vec::new();
    for point in 0..ring.point_count() {
        if !target.natural_members(point).any(|m| m == me)
            || ring.natural_members(point).any(|m| m == me)
        {
            continue;
        }
        let now = ring.chain_at(point);
        let then = target.chain_at(point);
        let source = then
            .members()
            .take_while(|&m| m != me)
            .filter(|&m| now.position(m).is_some())
            .last()
            .or_else(|| now.head());
        match source {
            Some(source) => points.push((point as u32, Source::Copy(source))),
            None => {
                return Err(format!(
                    "no member of partition {point}'s chain is up to copy it from"
                ))
            }
        }
    }
    Ok(Plan { points })
}

/// Number of partitions whose chain changes in the move under way in `ring` (0 when none is).
pub fn moving_partitions(ring: &Ring) -> usize {
    let Some(target) = target_ring(ring) else {
        return 0;
    };
    (0..ring.point_count())
        .filter(|&p| !ring.natural_members(p).eq(target.natural_members(p)))
        .count()
}

/// What a moving node needs of the backend it runs in.
pub trait Host: transfer::Host {
    /// Its receiving side of moves.
    fn incoming(&self) -> &Incoming;
    /// How many transfers it is the source of now.
    fn sources_open(&self) -> usize;
}

/// The receiving side of moves, in a backend.
pub struct Incoming {
    phase: Mutex<Phase>,
    changed: Condvar,
    /// The points of the copy made (set when it is done), so that the commit can be recognised.
    copied: Mutex<Vec<u32>>,
    /// Per point of the ring, whether its reads wait for the catch-up; empty when none does.
    catching: RwLock<Vec<bool>>,
    catching_any: AtomicBool,
    stop: AtomicBool,
    /// The epoch whose foreign keys were last dropped.
    swept: AtomicU64,
    /// When this node last became a member of partitions by a move, and which: the writes it
    /// got of them came with no write tags, so a resend of one it has no record of may have
    /// been applied (see [`Incoming::recently_gained`]).
    gained: Mutex<Option<(Instant, Vec<bool>)>>,
    /// What the copies bring in.
    pub intake: Intake,
    /// Partitions planned and copied in the move under way, for STATS.
    pub partitions_planned: AtomicU64,
    pub partitions_copied: AtomicU64,
    /// Keys dropped because this node left their chains.
    pub keys_dropped: AtomicU64,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming {
            phase: Mutex::new(Phase::Serving),
            changed: Condvar::new(),
            copied: Mutex::new(Vec::new()),
            catching: RwLock::new(Vec::new()),
            catching_any: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            swept: AtomicU64::new(0),
            gained: Mutex::new(None),
            intake: Intake::default(),
            partitions_planned: AtomicU64::new(0),
            partitions_copied: AtomicU64::new(0),
            keys_dropped: AtomicU64::new(0),
        }
    }
}

impl Incoming {
    /// The current phase (its code goes in HEALTH answers).
    pub fn phase(&self) -> Phase {
        relock(&self.phase).clone()
    }

    fn set(&self, phase: Phase) {
        let catching_up = matches!(phase, Phase::CatchingUp { .. });
        self.intake.set_catching_up(catching_up);
        if !catching_up && !matches!(phase, Phase::Failed { .. }) {
            self.set_catching(Vec::new());
        }
        *relock(&self.phase) = phase;
        self.changed.notify_all();
    }

    fn set_catching(&self, points: Vec<bool>) {
        self.catching_any
            .store(points.iter().any(|&p| p), Ordering::SeqCst);
        match self.catching.write() {
            Ok(mut guard) => *guard = points,
            Err(poisoned) => *poisoned.into_inner() = points,
        }
    }

    /// Follows a view change to `ring`, where this node is `me`. Called while the view is being
    /// installed, before any request of its epoch is applied, so that a catch-up's dirty keys are
    /// recorded from its first write. True when the view commits this node's copy: it is now a
    /// member of the partitions it copied.
    pub fn view_installed(&self, ring: &Ring, me: usize) -> bool {
        let view = ring.view();
        let phase = self.phase();
        let committed = || {
            let copied = relock(&self.copied);
            !copied.is_empty()
                && copied
                    .iter()
                    .all(|&p| ring.natural_members(p as usize).any(|m| m == me))
        };
        let next = match &phase {
            _ if !view.is_up(me) => Phase::Serving,
            Phase::CatchingUp { .. } => return false,
            Phase::Copying { .. } | Phase::Copied { .. } if view.is_moving() => {
                // The driver checks whether its plan still holds.
                self.changed.notify_all();
                return false;
            }
            Phase::Copied { .. } if committed() => {
                let mut points = vec![false; ring.point_count()];
                for &p in relock(&self.copied).iter() {
                    if let Some(slot) = points.get_mut(p as usize) {
                        *slot = true;
                    }
                }
                *relock(&self.gained) = Some((Instant::now(), points.clone()));
                self.set_catching(points);
                Phase::CatchingUp { epoch: view.epoch }
            }
            Phase::Copying { .. } if committed() => Phase::Failed {
                epoch: view.epoch,
                why: "made a member of partitions before its copy of them was done".into(),
            },
            _ if view.is_moving() => Phase::Copying { epoch: view.epoch },
            Phase::Failed { .. } => return false,
            _ => Phase::Serving,
        };
        if next == phase {
            return false;
        }
        log::info!("handoff: {phase:?} -> {next:?}");
        let commits = matches!(next, Phase::CatchingUp { .. });
        self.set(next);
        commits
    }

    /// Whether a read of point `point` must wait for the catch-up.
    pub fn refuses_read(&self, point: usize) -> bool {
        if !self.catching_any.load(Ordering::SeqCst) {
            return false;
        }
        match self.catching.read() {
            Ok(points) => points.get(point).copied().unwrap_or(false),
            Err(poisoned) => poisoned.into_inner().get(point).copied().unwrap_or(false),
        }
    }

    /// Whether this node became a member of point `point`'s chain by a move less than the
    /// retry horizon ago ([`crate::cluster::dedup::HORIZON`]): its memory of tagged writes there
    /// does not reach back far enough to call a resend it has no record of new.
    pub fn recently_gained(&self, point: usize) -> bool {
        match &*relock(&self.gained) {
            Some((at, points)) => {
                at.elapsed() < crate::cluster::dedup::HORIZON
                    && points.get(point).copied().unwrap_or(false)
            }
            None => false,
        }
    }

    /// Whether any read waits for a catch-up.
    pub fn refuses_some_reads(&self) -> bool {
        self.catching_any.load(Ordering::SeqCst)
    }

    /// Waits at most `bound` for the catch-up to end; whether it has.
    pub fn wait_for_reads(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let mut phase = relock(&self.phase);
        while matches!(*phase, Phase::CatchingUp { .. }) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            phase = match self.changed.wait_timeout(phase, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        !matches!(*phase, Phase::Failed { .. })
    }

    /// Asks the driver to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

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
        let mut current = relock(&self.phase);
        if &*current != from {
            return false;
        }
        if let Phase::Failed { why, .. } = &to {
            log::error!("handoff failed: {why}");
        } else {
            log::info!("handoff: {from:?} -> {to:?}");
        }
        let catching_up = matches!(to, Phase::CatchingUp { .. });
        self.intake.set_catching_up(catching_up);
        if !catching_up && !matches!(to, Phase::Failed { .. }) {
            self.set_catching(Vec::new());
        }
        *current = to;
        drop(current);
        self.changed.notify_all();
        true
    }
}

/// The moving side's thread: copies the partitions a move brings this node, catches up when the
/// move is committed, and drops the keys of chains it left. Returns when [`Incoming::stop`] is
/// called.
pub fn run(host: &dyn Host) {
    let incoming = host.incoming();
    let mut transfer: Option<Transfer> = None;
    let mut waiting: Option<String> = None;
    while !incoming.stopped() {
        incoming.wait_for_work(Duration::from_millis(100));
        if incoming.stopped() {
            return;
        }
        let phase = incoming.phase();
        let Some((ring, me)) = host.ring() else {
            continue;
        };
        match &phase {
            Phase::Copying { .. } => {
                let plan = match plan(&ring, me) {
                    Ok(plan) => plan,
                    Err(why) => {
                        if waiting.as_deref() != Some(why.as_str()) {
                            log::warn!("handoff: cannot copy yet: {why}");
                            waiting = Some(why);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if let Some(t) = transfer.take() {
                    transfer::end_sessions(host, &t);
                }
                if plan.points.is_empty() {
                    incoming.advance(&phase, Phase::Serving);
                    continue;
                }
                incoming
                    .partitions_planned
                    .store(plan.points.len() as u64, Ordering::Relaxed);
                incoming.partitions_copied.store(0, Ordering::Relaxed);
                let points: Vec<u32> = plan.points.iter().map(|&(p, _)| p).collect();
                match transfer::begin(host, &ring, me, plan, &incoming.intake) {
                    Ok(t) => {
                        waiting = None;
                        *relock(&incoming.copied) = points;
                        incoming
                            .partitions_copied
                            .store(t.plan.points.len() as u64, Ordering::Relaxed);
                        transfer = Some(t);
                        incoming.advance(
                            &phase,
                            Phase::Copied {
                                epoch: ring.view().epoch,
                            },
                        );
                    }
                    Err(Interrupted::Again) => std::thread::sleep(Duration::from_millis(20)),
                    Err(Interrupted::Failed(why)) => {
                        // A source died or refused, or this store is full: the keeper's next
                        // view says who copies from whom; until then, try again (saying why
                        // once, not at every try).
                        if waiting.as_deref() != Some(why.as_str()) {
                            log::warn!("handoff: copy failed, trying again: {why}");
                            waiting = Some(why);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            Phase::Copied { epoch } => {
                if ring.view().epoch == *epoch || !ring.view().is_moving() {
                    if let Some(t) = &transfer {
                        let _ = transfer::deltas(host, t, None, Some(64), &incoming.intake);
                    }
                    continue;
                }
                let still = transfer
                    .as_ref()
                    .zip(plan(&ring, me).ok())
                    .is_some_and(|(t, p)| t.plan == p);
                let epoch = ring.view().epoch;
                let next = if still {
                    Phase::Copied { epoch }
                } else {
                    Phase::Copying { epoch }
                };
                incoming.advance(&phase, next);
            }
            Phase::CatchingUp { epoch } => {
                let result = match &transfer {
                    Some(t) => transfer::catch_up(host, t, *epoch, &incoming.intake),
                    None => Err("no copy to catch up from".to_string()),
                };
                transfer = None;
                relock(&incoming.copied).clear();
                let next = match result {
                    Ok(()) => Phase::Serving,
                    Err(why) => Phase::Failed { epoch: *epoch, why },
                };
                incoming.advance(&phase, next);
            }
            Phase::Serving => {
                if let Some(t) = transfer.take() {
                    transfer::end_sessions(host, &t);
                }
                relock(&incoming.copied).clear();
                sweep(host, &ring, me);
            }
            Phase::Failed { .. } => {
                if let Some(t) = transfer.take() {
                    transfer::end_sessions(host, &t);
                }
            }
        }
    }
}

/// Most keys deleted before the sweep looks at the view again.
const SWEEP_BATCH: usize = 1024;

/// Drops the keys this node holds in partitions whose chains it is not in: what a move left
/// behind. Only on a node that is up, in a view with no move under way, while it is the source
/// of no transfer (a receiver's final delta may still read them), once per epoch; it stops when
/// the view changes.
fn sweep(host: &dyn Host, ring: &Ring, me: usize) {
    let incoming = host.incoming();
    let view = ring.view();
    if view.is_moving()
        || !view.is_up(me)
        || host.sources_open() > 0
        || incoming.swept.load(Ordering::Relaxed) == view.epoch
    {
        return;
    }
    let store = host.store();
    let mut foreign = Vec::new();
    store.for_each(&mut |key, _, _| {
        let point = ring.point_index(&key_position(key));
        if !ring.natural_members(point).any(|m| m == me) {
            foreign.push(key.to_vec());
        }
    });
    for batch in foreign.chunks(SWEEP_BATCH) {
        let still = host
            .ring()
            .is_some_and(|(now, _)| now.view().epoch == view.epoch);
        if !still || host.sources_open() > 0 || incoming.stopped() {
            return;
        }
        let mut last = crate::store::Unsettled::NONE;
        for key in batch {
            if let Ok((true, written)) = store.delete_unsettled(key) {
                last = last.max(written);
                incoming.keys_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = store.settle(last) {
            log::error!("handoff: cannot drop the keys of chains this node left: {e}");
            return;
        }
    }
    if !foreign.is_empty() {
        log::info!(
            "{}: dropped {} keys of partitions it no longer holds (view epoch {})",
            ring.node(me),
            foreign.len(),
            view.epoch
        );
    }
    incoming.swept.store(view.epoch, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{join_owners, leave_owners, NodeState, Placement, Routing, View};

    fn view(nodes: usize, replicas: usize) -> View {
        View::new(
            3,
            Routing::Direct,
            Placement::Partitions { count: 256 },
            replicas,
            (0..nodes).map(|i| format!("10.0.0.{i}:7001")).collect(),
        )
    }

    /// Every partition of the target whose chain gains `node` is copied by it, from a member
    /// of the current chain that stays before it or from the current head.
    fn check_plan(ring: &Ring, node: usize) -> Plan {
        let plan = plan(ring, node).unwrap();
        let target = target_ring(ring).unwrap();
        for &(point, source) in &plan.points {
            let Source::Copy(source) = source else {
                panic!("a move never keeps")
            };
            let now = ring.chain_at(point as usize);
            let then = target.chain_at(point as usize);
            assert!(
                now.position(source).is_some(),
                "the source serves the point now"
            );
            assert!(then.position(node).is_some());
            assert!(now.position(node).is_none());
            let mine = then.position(node).unwrap();
            match then.position(source) {
                Some(at) if at < mine => {}
                _ => {
                    assert_eq!(Some(source), now.head(), "else the current head");
                    assert!(
                        then.members().take(mine).all(|m| now.position(m).is_none()),
                        "no member before the receiver serves the point now"
                    );
                }
            }
        }
        plan
    }

    #[test]
    fn a_joining_node_copies_its_new_partitions_and_nobody_else_copies() {
        // Joining at its natural place (since 0, as the keeper does it) or at the tail.
        for (replicas, since) in [(1, 0), (2, 0), (3, 0), (3, 3)] {
            let mut moving = view(4, replicas);
            moving.nodes.push("10.0.0.9:7001".into());
            moving.states.push(NodeState::Up);
            moving.since.push(since);
            moving.target = join_owners(&moving.owners, 4, "10.0.0.9:7001");
            let ring = Ring::new(moving).unwrap();
            let plan = check_plan(&ring, 4);
            // It owns 1/5 of the partitions and sits in the chains of about R/5 of them.
            assert!(
                plan.points.len() >= 256 / 5,
                "R={replicas}: {}",
                plan.points.len()
            );
            // The others copy only where the newcomer's partitions push them into a chain.
            let copied: usize = (0..5).map(|n| plan_for(&ring, n).len()).sum();
            assert_eq!(copied, gained(&ring), "R={replicas}");
            assert!(moving_partitions(&ring) <= copied);
        }
    }

    /// How many (partition, node) memberships the move creates.
    fn gained(ring: &Ring) -> usize {
        let target = target_ring(ring).unwrap();
        (0..ring.point_count())
            .map(|p| {
                target
                    .natural_members(p)
                    .filter(|m| !ring.natural_members(p).any(|n| n == *m))
                    .count()
            })
            .sum()
    }

    fn plan_for(ring: &Ring, node: usize) -> Vec<(u32, Source)> {
        check_plan(ring, node).points
    }

    #[test]
    fn a_leave_has_the_heirs_copy_from_the_chains_they_join() {
        let mut moving = view(5, 3);
        moving.target = leave_owners(&moving.owners, 2).unwrap();
        let ring = Ring::new(moving).unwrap();
        assert!(plan_for(&ring, 2).is_empty(), "the leaver copies nothing");
        let copied: usize = [0, 1, 3, 4].iter().map(|&n| plan_for(&ring, n).len()).sum();
        assert_eq!(copied, gained(&ring));
        assert!(moving_partitions(&ring) <= copied);
        // A leaver that is down: the others copy from the members that are up.
        let mut down = ring.view().clone();
        down.states[2] = NodeState::Down;
        let ring = Ring::new(down).unwrap();
        for n in [0, 1, 3, 4] {
            for (point, source) in plan_for(&ring, n) {
                assert_ne!(source, Source::Copy(2), "point {point}");
            }
        }
    }

    #[test]
    fn a_committed_copy_catches_up_and_marks_only_its_points_as_recently_gained() {
        let mut moving = view(4, 3);
        moving.nodes.push("10.0.0.9:7001".into());
        moving.states.push(NodeState::Up);
        moving.since.push(0);
        moving.target = join_owners(&moving.owners, 4, "10.0.0.9:7001");
        let ring = Ring::new(moving.clone()).unwrap();
        let incoming = Incoming::default();
        assert!(!incoming.view_installed(&ring, 4));
        assert_eq!(incoming.phase(), Phase::Copying { epoch: 3 });
        let copied: Vec<u32> = plan(&ring, 4).unwrap().points.iter().map(|p| p.0).collect();
        *relock(&incoming.copied) = copied.clone();
        assert!(incoming.advance(&Phase::Copying { epoch: 3 }, Phase::Copied { epoch: 3 }));
        let mut done = moving.moved();
        done.epoch = 4;
        let done = Ring::new(done).unwrap();
        assert!(incoming.view_installed(&done, 4), "the commit");
        assert_eq!(incoming.phase(), Phase::CatchingUp { epoch: 4 });
        let other = (0..256u32).find(|p| !copied.contains(p)).unwrap();
        assert!(
            incoming.refuses_read(copied[0] as usize) && !incoming.refuses_read(other as usize)
        );
        assert!(incoming.recently_gained(copied[0] as usize));
        assert!(!incoming.recently_gained(other as usize));
    }

    #[test]
    fn no_move_no_plan_and_a_chain_with_nobody_up_waits() {
        let ring = Ring::new(view(3, 2)).unwrap();
        assert!(plan(&ring, 0).unwrap().points.is_empty());
        assert_eq!(moving_partitions(&ring), 0);
        let mut moving = view(3, 1);
        moving.nodes.push("10.0.0.9:7001".into());
        moving.states.push(NodeState::Up);
        moving.since.push(3);
        moving.target = join_owners(&moving.owners, 3, "10.0.0.9:7001");
        moving.states[0] = NodeState::Down;
        let ring = Ring::new(moving).unwrap();
        assert!(
            plan(&ring, 3).is_err(),
            "a partition of the down node has no source"
        );
    }
}
