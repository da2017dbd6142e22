//! Membership changes: a node joins or leaves a running cluster.
//!
//! A change comes to the view keeper's frontend (MEMBER_JOIN, MEMBER_LEAVE; PROTOCOL.md
//! section 15) and is queued in [`Changes`]; the keeper takes it in its next round when nothing
//! else is changing and carries it out in views, each one epoch higher:
//!
//! 1. **Begin** ([`begin`]): the view with a `target` owner table. A joining node is appended to
//!    the node list, up, owning nothing yet; [`crate::ring::join_owners`] deals it its share. A
//!    leaving node's partitions are dealt to the others ([`crate::ring::leave_owners`]). The
//!    nodes that the target puts in chains they are not in now copy those partitions
//!    ([`crate::cluster::handoff`]).
//! 2. **Commit** ([`commit`]): once every such node that is up reports its copy done for the
//!    current epoch, the target becomes the owners, in a view that changes nothing else (a node
//!    that is down is copied when it comes back). If some partition whose chain changes has no
//!    member up, or would have none after the move ([`stranded`]), the move is called off
//!    instead ([`abort`]): a joining node is taken out again, and the user may try once more.
//! 3. **Out** ([`remove`]): a node that owns nothing once no move is under way, and no node is
//!    still catching up, is taken out of the node list. It holds the last view that named it,
//!    in which it owns nothing, and may be stopped.
//!
//! One change runs at a time; a change asked for while another runs, or while a node is being
//! copied up to date after a failure, is refused with `UNAVAILABLE`, to be asked again.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::transfer::relock;
use crate::protocol::Status;
use crate::ring::{join_owners, leave_owners, NodeState, Placement, Ring, View};

/// The longest backend address a join takes.
const MAX_ADDR_LEN: usize = 255;

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add the backend at this address.
    Join(String),
    /// Take the backend at this address out, after handing off its partitions.
    Leave(String),
}

impl Change {
    /// The backend the change is about.
    pub fn addr(&self) -> &str {
        match self {
            Change::Join(addr) | Change::Leave(addr) => addr,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Join(addr) => write!(f, "join of {addr}"),
            Change::Leave(addr) => write!(f, "leave of {addr}"),
        }
    }
}

/// Why a change was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// It cannot be carried out as asked (`BAD_REQUEST`).
    Refused(String),
    /// Not now: another change, or a recovery, is under way (`UNAVAILABLE`); ask again.
    NotNow(String),
}

impl ChangeError {
    /// The status a MEMBER_JOIN or MEMBER_LEAVE is answered with.
    pub fn status(&self) -> Status {
        match self {
            ChangeError::Refused(_) => Status::BAD_REQUEST,
            ChangeError::NotNow(_) => Status::UNAVAILABLE,
        }
    }
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Refused(why) | ChangeError::NotNow(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ChangeError {}

#[derive(Default)]
struct Slot {
    next_id: u64,
    /// The change waiting for the keeper, with its id.
    pending: Option<(u64, Change)>,
    /// The id of the change the keeper took last: from then on it may begin, so its asker
    /// waits for the answer rather than reporting that nothing changed.
    taken: u64,
    /// The keeper's answer to the change with that id: the epoch of the view that began it.
    answered: Option<(u64, Result<u64, ChangeError>)>,
}

/// Changes asked for, handed from the frontend's request threads to the keeper's.
#[derive(Default)]
pub struct Changes {
    slot: Mutex<Slot>,
    changed: Condvar,
}

impl Changes {
    /// Asks the keeper for `change` and waits at most `bound` for it to take it, then for its
    /// answer (at most `bound` again); the epoch of the view that began it. Not taken within
    /// `bound`, it is withdrawn: nothing changed. Taken and not answered in time, the error
    /// says that it may have begun.
    pub fn submit(&self, change: Change, bound: Duration) -> Result<u64, ChangeError> {
        let mut deadline = Instant::now() + bound;
        let mut extended = false;
        let mut slot = relock(&self.slot);
        if let Some((_, pending)) = &slot.pending {
            return Err(ChangeError::NotNow(format!(
                "the {pending} waits for the view keeper; ask again when it has begun"
            )));
        }
        slot.next_id += 1;
        let id = slot.next_id;
        slot.pending = Some((id, change));
        loop {
            if let Some((answered, _)) = &slot.answered {
                if *answered == id {
                    if let Some((_, result)) = slot.answered.take() {
                        return result;
                    }
                }
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                if slot.pending.as_ref().is_some_and(|(p, _)| *p == id) {
                    slot.pending = None;
                    return Err(ChangeError::NotNow(format!(
                        "the view keeper did not take the change within {bound:?}; nothing \
                         changed"
                    )));
                }
                if slot.taken == id && !extended {
                    extended = true;
                    deadline = Instant::now() + bound;
                    continue;
                }
                return Err(ChangeError::NotNow(format!(
                    "the view keeper took the change but did not answer within {bound:?} more: \
                     it may have begun; VIEW_GET tells"
                )));
            };
            slot = match self.changed.wait_timeout(slot, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// The change waiting, if any, taken out of the queue.
    pub(crate) fn take(&self) -> Option<(u64, Change)> {
        let mut slot = relock(&self.slot);
        let taken = slot.pending.take()?;
        slot.taken = taken.0;
        Some(taken)
    }

    /// Answers the change numbered `id`.
    pub(crate) fn answer(&self, id: u64, result: Result<u64, ChangeError>) {
        relock(&self.slot).answered = Some((id, result));
        self.changed.notify_all();
    }
}

/// The view that begins `change` in `view` (one epoch higher).
pub fn begin(view: &View, change: &Change) -> Result<View, ChangeError> {
    if !matches!(view.placement, Placement::Partitions { .. }) {
        return Err(ChangeError::Refused(format!(
            "a cluster with {} cannot change its members: joins and leaves need partition \
             placement (--placement partitions, the default)",
            view.placement
        )));
    }
    if view.is_moving() {
        return Err(ChangeError::NotNow(
            "partitions are moving for another join or leave; ask again when it is done".into(),
        ));
    }
    if let Some(node) = view.states.iter().position(|s| *s == NodeState::Syncing) {
        return Err(ChangeError::NotNow(format!(
            "{} is being copied up to date after a failure; ask again when it is up",
            view.nodes[node]
        )));
    }
    let owning = view.owning();
    let mut next = view.clone();
    next.epoch = view.epoch + 1;
    match change {
        Change::Join(addr) => {
            if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
                return Err(ChangeError::Refused(format!(
                    "{addr:?} is not a backend address"
                )));
            }
            if let Some(at) = view.nodes.iter().position(|n| n == addr) {
                let why = if owning[at] {
                    "is a member already"
                } else {
                    "is leaving; it can join again once it is out"
                };
                return Err(ChangeError::Refused(format!("{addr} {why}")));
            }
            if view.nodes.len() >= crate::ring::MAX_NODES {
                return Err(ChangeError::Refused(format!(
                    "a view holds at most {} nodes",
                    crate::ring::MAX_NODES
                )));
            }
            let members = owning.iter().filter(|&&o| o).count();
            if view.owners.len() < members + 1 {
                return Err(ChangeError::Refused(format!(
                    "{} partitions cannot be shared by {} nodes",
                    view.owners.len(),
                    members + 1
                )));
            }
            let newcomer = view.nodes.len();
            next.nodes.push(addr.clone());
            next.states.push(NodeState::Up);
            // Up since the first view, as far as chain order goes: it takes its natural place
            // in its chains (the head of the partitions it owns), so heads and tails, and with
            // them writes and reads, stay even. Its copy comes from wherever that place is.
            next.since.push(0);
            next.target = join_owners(&view.owners, newcomer, addr);
        }
        Change::Leave(addr) => {
            let Some(at) = view.nodes.iter().position(|n| n == addr) else {
                return Err(ChangeError::Refused(format!("{addr} is not a member")));
            };
            if !owning[at] {
                return Err(ChangeError::Refused(format!(
                    "{addr} owns nothing: it is leaving already"
                )));
            }
            let Some(target) = leave_owners(&view.owners, at) else {
                return Err(ChangeError::Refused(format!(
                    "{addr} is the last member: nobody could take its keys"
                )));
            };
            let heirs_up = (0..view.nodes.len()).any(|n| n != at && owning[n] && view.is_up(n));
            if !heirs_up {
                return Err(ChangeError::NotNow(format!(
                    "no other member is up to take {addr}'s keys"
                )));
            }
            next.target = target;
        }
    }
    Ring::new(next.clone()).map_err(|e| ChangeError::Refused(e.to_string()))?;
    Ok(next)
}

/// The nodes that the move under way in `ring` puts in chains they are not in now: each must
/// copy before the move can be committed.
pub fn gaining(ring: &Ring) -> Vec<usize> {
    let Some(target) = crate::cluster::handoff::target_ring(ring) else {
        return Vec::new();
    };
    let mut gains = vec![false; ring.view().nodes.len()];
    for point in 0..ring.point_count() {
        for node in target.natural_members(point) {
            if !ring.natural_members(point).any(|m| m == node) {
                gains[node] = true;
            }
        }
    }
    (0..gains.len()).filter(|&n| gains[n]).collect()
}

/// Why the move under way in `ring` cannot go on, if it cannot: a partition whose chain changes
/// has no member up now (nobody to copy it from, and its last copies might be dropped), or
/// would have none up after the move (its keys would be held by no node that has them).
pub fn stranded(ring: &Ring) -> Option<String> {
    let target = crate::cluster::handoff::target_ring(ring)?;
    for point in 0..ring.point_count() {
        if ring
            .natural_members(point)
            .eq(target.natural_members(point))
        {
            continue;
        }
        let now = ring.chain_at(point);
        if now.is_empty() {
            return Some(format!("no member of partition {point}'s chain is up"));
        }
        // Its members are up: each holds the partition now or copies it before the commit.
        if target.chain_at(point).is_empty() {
            return Some(format!(
                "no node that is up would hold partition {point} after the move"
            ));
        }
    }
    None
}

/// The view that commits the move under way in `ring`: its target becomes the owners. A node
/// that is not up and gains partitions never counts as the last to leave a chain (`since` 0):
/// it holds nothing of those partitions, and is copied when it comes back.
pub fn commit(view: &View) -> View {
    let mut next = view.moved();
    next.epoch = view.epoch + 1;
    let gainers = Ring::new(view.clone()).map(|ring| gaining(&ring));
    for node in gainers.unwrap_or_default() {
        if !view.is_up(node) {
            next.since[node] = 0;
        }
    }
    next
}

/// The view that calls off the move under way in `view`: no target, and a node that was
/// joining (it owns nothing) taken out again.
pub fn abort(view: &View) -> View {
    let mut next = view.clone();
    next.target = Vec::new();
    next.epoch = view.epoch + 1;
    let owning = next.owning();
    match (0..next.nodes.len()).rev().find(|&n| !owning[n]) {
        Some(joiner) => remove(&next, joiner),
        None => next,
    }
}

/// The nodes that own nothing while no move is under way: they have left, and are taken out.
pub fn left(view: &View) -> Vec<usize> {
    if view.is_moving() || view.owners.is_empty() {
        return Vec::new();
    }
    let owning = view.owning();
    (0..owning.len()).filter(|&n| !owning[n]).collect()
}

/// `view` without node `node` (which owns nothing): the owner tables renumbered, the epoch
/// unchanged.
pub fn remove(view: &View, node: usize) -> View {
    let mut next = view.clone();
    next.nodes.remove(node);
    next.states.remove(node);
    next.since.remove(node);
    let renumber = |owner: &mut u16| {
        if usize::from(*owner) > node {
            *owner -= 1;
        }
    };
    next.owners.iter_mut().for_each(renumber);
    next.target.iter_mut().for_each(renumber);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Routing;
    use std::sync::Arc;

    fn view(nodes: usize) -> View {
        View::new(
            4,
            Routing::Direct,
            Placement::Partitions { count: 64 },
            2,
            (0..nodes).map(|i| format!("10.0.0.{i}:7001")).collect(),
        )
    }

    #[test]
    fn a_change_not_taken_is_withdrawn_and_one_taken_is_waited_for() {
        // Long enough that a busy machine still lets the spinning keeper below take the
        // change within it.
        let bound = Duration::from_millis(400);
        let changes = Arc::new(Changes::default());
        let join = Change::Join("10.0.0.9:7001".into());
        let e = changes.submit(join.clone(), bound).unwrap_err();
        assert!(e.to_string().contains("nothing changed"), "{e}");
        assert!(changes.take().is_none(), "withdrawn");

        // Taken at once, answered after the first bound has passed: still the answer.
        let keeper = {
            let changes = Arc::clone(&changes);
            std::thread::spawn(move || loop {
                if let Some((id, _)) = changes.take() {
                    // Past the asker's first bound.
                    std::thread::sleep(Duration::from_millis(600));
                    changes.answer(id, Ok(7));
                    return;
                }
                std::thread::yield_now();
            })
        };
        assert_eq!(changes.submit(join.clone(), bound), Ok(7));
        keeper.join().unwrap();

        // Taken and never answered: the error says it may have begun.
        let keeper = {
            let changes = Arc::clone(&changes);
            std::thread::spawn(move || {
                while changes.take().is_none() {
                    std::thread::yield_now();
                }
            })
        };
        let e = changes.submit(join, bound).unwrap_err();
        keeper.join().unwrap();
        assert_eq!(e.status(), Status::UNAVAILABLE);
        assert!(e.to_string().contains("may have begun"), "{e}");
    }

    #[test]
    fn a_join_begins_commits_and_leaves_an_even_table() {
        let start = view(3);
        let join = Change::Join("10.0.0.9:7001".into());
        let moving = begin(&start, &join).unwrap();
        assert_eq!((moving.epoch, moving.nodes.len()), (5, 4));
        assert!(moving.is_moving() && !moving.owning()[3]);
        assert_eq!(
            begin(&moving, &Change::Join("10.0.0.8:7001".into())).unwrap_err(),
            ChangeError::NotNow(
                "partitions are moving for another join or leave; ask again when it is done".into()
            )
        );
        let ring = Ring::new(moving.clone()).unwrap();
        assert!(gaining(&ring).contains(&3));
        let done = commit(&moving);
        assert_eq!(done.epoch, 6);
        assert!(!done.is_moving() && done.owning()[3]);
        assert!(left(&done).is_empty());
        assert!(matches!(begin(&done, &join), Err(ChangeError::Refused(_))));
        // Called off: the joiner is taken out again.
        let off = abort(&moving);
        assert_eq!(off.nodes, start.nodes);
        assert_eq!(off.owners, start.owners);
    }

    #[test]
    fn a_leave_hands_off_then_takes_the_node_out() {
        let start = view(4);
        let leave = Change::Leave("10.0.0.1:7001".into());
        let moving = begin(&start, &leave).unwrap();
        assert!(
            moving.owning()[1],
            "it owns its partitions until the commit"
        );
        let done = commit(&moving);
        assert_eq!(left(&done), vec![1]);
        let out = remove(&done, 1);
        assert_eq!(out.nodes.len(), 3);
        let ring = Ring::new(out.clone()).unwrap();
        assert!(ring.view().owning().iter().all(|&o| o));
        // Every partition keeps the node it had, under its new number.
        for p in 0..64 {
            assert_eq!(
                out.nodes[usize::from(out.owners[p])],
                done.nodes[usize::from(done.owners[p])]
            );
        }
        let alone = view(1);
        assert!(matches!(
            begin(&alone, &Change::Leave("10.0.0.0:7001".into())),
            Err(ChangeError::Refused(_))
        ));
        assert!(matches!(
            begin(&start, &Change::Leave("10.9.9.9:1".into())),
            Err(ChangeError::Refused(_))
        ));
    }

    #[test]
    fn a_move_that_would_strand_a_partition_is_called_off_and_a_down_gainer_holds_nothing() {
        // One copy per key and the joiner dead: its partitions would be held by nobody.
        let mut single = view(3);
        single.replicas = 1;
        let mut moving = begin(&single, &Change::Join("10.0.0.9:7001".into())).unwrap();
        assert_eq!(stranded(&Ring::new(moving.clone()).unwrap()), None);
        moving.states[3] = NodeState::Down;
        assert!(stranded(&Ring::new(moving).unwrap()).is_some());
        // Three copies: a member that is down and gains partitions in the move does not stop it,
        // but it never counts as the last to leave a chain afterwards.
        let triple = View::new(
            4,
            Routing::Direct,
            Placement::Partitions { count: 4096 },
            3,
            (0..4).map(|i| format!("10.0.0.{i}:7001")).collect(),
        );
        let mut moving = begin(&triple, &Change::Join("10.0.0.9:7001".into())).unwrap();
        let ring = Ring::new(moving.clone()).unwrap();
        let down = gaining(&ring)
            .into_iter()
            .find(|&n| n != 4)
            .expect("a join also shifts some chains onto members already there");
        moving.states[down] = NodeState::Down;
        moving.since[down] = 4;
        let ring = Ring::new(moving.clone()).unwrap();
        assert_eq!(stranded(&ring), None);
        assert_eq!(commit(&moving).since[down], 0);
    }

    #[test]
    fn changes_wait_for_the_keeper_and_one_waits_at_a_time() {
        let changes = std::sync::Arc::new(Changes::default());
        let keeper = {
            let changes = std::sync::Arc::clone(&changes);
            std::thread::spawn(move || loop {
                if let Some((id, change)) = changes.take() {
                    changes.answer(id, Ok(change.addr().len() as u64));
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            })
        };
        let got = changes.submit(Change::Join("abc".into()), Duration::from_secs(10));
        assert_eq!(got, Ok(3));
        keeper.join().unwrap();
        let late = changes.submit(Change::Leave("x".into()), Duration::from_millis(10));
        assert!(matches!(late, Err(ChangeError::NotNow(_))));
        assert!(
            changes.take().is_none(),
            "a change given up on is not carried out"
        );
    }
}
