//! The control plane: views and their epochs, chain replication, and the view keeper.
//!
//! **Views.** A view ([`crate::ring::View`]) lists the backends in the order they joined, each
//! up, down or syncing, with the replication factor R, and is numbered by an epoch. The frontend is the
//! view keeper ([`keeper`]): it watches every backend and publishes a new view, with the epoch
//! one higher, whenever a node is found dead or hung. A backend installs a view only if its
//! epoch is higher than the one it holds (or the same view again), keeps it in its data
//! directory ([`view_file`]) before it acknowledges it, and from then on refuses every request
//! stamped with another epoch.
//!
//! **Chains.** A key's chain ([`crate::ring::Ring::chain`]) is the owner of its position
//! followed by the next R − 1 nodes (in the node list with equal partitions, so that a node's
//! partitions share one chain; clockwise with hashed points), leaving out the nodes that are
//! down. A node going down therefore only removes itself from chains; the others keep their
//! order and no key changes owner. Writes enter at the head and are applied member after member
//! down to the tail ([`chain`]); the tail's answer travels back up, so a write is acknowledged
//! only when every member holds it. Reads are answered by the tail.
//!
//! **Invariants, and where each is enforced.**
//! 1. *Per key, every member applies writes in the head's order.* The head holds the key's lock
//!    ([`chain::KeyLocks`]) from applying a write until the tail's answer is back, so a member
//!    never has two writes of one key in flight ([`crate::backend`]'s chain write path).
//! 2. *Each member holds a superset of the writes of the members after it.* A member applies a
//!    write before passing it on, and a view change only removes members or adds one at the
//!    tail, so a new tail (the old tail's predecessor) holds everything the old tail did: a read
//!    never goes back in time.
//! 3. *Nothing from an old epoch is acknowledged.* A member checks the epoch of every request
//!    and chain write against its view under the same lock that installing a view takes, and an
//!    answer counts only if it carries the request's epoch and the member still holds that epoch
//!    when it arrives. A node that was declared dead but wakes up (SIGSTOP, SIGCONT) still holds
//!    the old epoch: whatever it applies is refused by the members of the new view, so it
//!    cannot acknowledge a write, and the frontend no longer sends it anything.
//! 4. *An error says whether a write may have taken effect.* STALE_VIEW and NO_VIEW from the
//!    head mean it was not applied (the frontend retries under the new view); a failure further
//!    down the chain is answered UNAVAILABLE: applied at some members, perhaps at all.
//!
//! 2. (continued) A node that comes back joins its chains at the tail, after a copy of the tail
//!    ([`transfer`]): it holds no more than the member before it.
//!
//! **Safe retries.** A write sent as PUT_ONCE or DELETE_ONCE carries its client's id and
//! sequence number; every member remembers the ones it applied ([`dedup`]), so the head answers
//! a retry with the first result instead of applying it again, even when the head is a member
//! that took over from a dead one.
//!
//! **Coming back.** A node that answers again after being marked down is copied up to date from
//! the tails of its chains while writes go on, and only then made up, at the tail; with one copy
//! per key, or when it left each of its chains last, it holds the latest copy already and comes
//! back as it is ([`transfer::plan`]).
//!
//! **Joins and leaves.** The view carries the placement as an owner table, changed only by joins
//! and leaves ([`membership`]): the keeper publishes the table the change leads to beside the
//! current one, the nodes that the new table puts in chains copy those partitions while the
//! current chains serve ([`handoff`]), and the keeper commits the new table once every copy is
//! done. A receiver copies from the member it will follow in its new chain, so invariant 2 holds
//! across the move as it does across a rejoin.

pub mod chain;
pub mod dedup;
pub mod follower;
pub mod handoff;
pub mod keeper;
pub mod membership;
pub mod resume;
pub mod token;
pub mod transfer;
pub mod view_file;
