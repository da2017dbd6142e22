//! The view keeper: the frontend's thread that watches every backend and publishes a new view
//! when one dies, hangs, restarts or comes back.
//!
//! Every `interval` it probes each backend on a connection of its own, with `timeout` for the
//! whole exchange, and confirms a miss with a second probe on a fresh connection (HEALTH, an internal PING). The answer carries the epoch it holds and, in its value, the
//! incarnation it was started with (PROTOCOL.md section 5), so the keeper tells apart a backend
//! that is alive from one that died and was started again: the second may have lost writes it
//! acknowledged (a log synced every second, or none) and must not count as a copy.
//!
//! A backend that is up in the view and misses a ping, or has restarted, is marked down in a
//! new view (epoch + 1); the keeper installs it on every node it can reach, and only then routes
//! by it. A backend that is down and answers again is sent the view, so it knows it is fenced,
//! and comes back through a state transfer ([`crate::cluster::transfer`]): marked syncing, then,
//! once it reports its copy done for the current epoch, up at the tail of its chains. One node
//! comes back per view, in a view that changes nothing else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::view_install_frame;
use crate::cluster::membership::{self, Changes};
use crate::cluster::{handoff, transfer};
use crate::connection::{Connection, Timeouts};
use crate::peers::Peers;
use crate::protocol::{Frame, Opcode, Status};
use crate::ring::{NodeState, Ring, View};

/// How long a joining backend has to take its first view (see `Watch::joiner_timeouts`).
const JOINER_INSTALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How the keeper watches the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeeperOptions {
    /// Time between two pings of a backend.
    pub interval: Duration,
    /// How long a backend has to answer a ping (connect included) before it counts as dead.
    pub timeout: Duration,
}

impl Default for KeeperOptions {
    /// A dead or hung backend is noticed within 1 s: at most one interval until its next
    /// probe, and two probes' timeouts (a miss is confirmed by a second probe).
    fn default() -> Self {
        KeeperOptions {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(400),
        }
    }
}

/// The view the frontend routes by, replaced as a whole when the keeper publishes a new one.
pub struct CurrentView {
    ring: Mutex<Arc<Ring>>,
    changed: Condvar,
    /// Set to an epoch when a write sent under it was left unacknowledged somewhere in a chain:
    /// its key stays blocked at the head until a newer view, so the keeper publishes one even if
    /// no node changed, unless the current view is newer already (a write that failed because
    /// a view change overtook it needs no further change, or view changes would feed on the
    /// failures they cause).
    new_epoch_wanted: AtomicU64,
}

impl CurrentView {
    /// The view `ring` to start with.
    pub fn new(ring: Ring) -> CurrentView {
        CurrentView {
            ring: Mutex::new(Arc::new(ring)),
            changed: Condvar::new(),
            new_epoch_wanted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Ring>> {
        match self.ring.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The current ring.
    pub fn get(&self) -> Arc<Ring> {
        Arc::clone(&self.lock())
    }

    fn set(&self, ring: Ring) {
        *self.lock() = Arc::new(ring);
        self.changed.notify_all();
    }

    /// Asks the keeper for an epoch above `epoch` soon, whether or not a node changed.
    pub fn want_epoch_after(&self, epoch: u64) {
        self.new_epoch_wanted.fetch_max(epoch, Ordering::SeqCst);
    }

    /// Routes by `ring` from now on, if it is newer than the current view.
    pub(crate) fn replace_if_newer(&self, ring: Ring) {
        let mut guard = self.lock();
        if ring.view().epoch > guard.view().epoch {
            *guard = Arc::new(ring);
            self.changed.notify_all();
        }
    }

    /// Whether a newer epoch is wanted than the current view's.
    pub(crate) fn is_newer_epoch_wanted(&self, current: u64) -> bool {
        self.new_epoch_wanted.load(Ordering::SeqCst) >= current
    }

    /// The current ring once its epoch is above `epoch`, waiting at most `bound` for it;
    /// `None` if no newer view came.
    pub fn newer_than(&self, epoch: u64, bound: Duration) -> Option<Arc<Ring>> {
        let deadline = Instant::now() + bound;
        let mut guard = self.lock();
        loop {
            if guard.view().epoch > epoch {
                return Some(Arc::clone(&guard));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = match self.changed.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// What one ping found out about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// It answered, holding `epoch`, started as `incarnation`.
    Alive(Alive),
    /// No answer within the timeout.
    Dead,
}

/// A backend's HEALTH answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alive {
    epoch: u64,
    incarnation: u64,
    /// False while it holds a view resumed from disk after a restart.
    confirmed: bool,
    /// Its state transfer's phase ([`crate::cluster::transfer::Phase::code`]) and epoch.
    phase: u8,
    phase_epoch: u64,
    /// The highest epoch in which it blocked a key's writes until a newer view.
    blocked_epoch: u64,
    /// Its handoff's phase (same codes) and epoch, while a move gives it partitions.
    move_phase: u8,
    move_epoch: u64,
}

/// Phase codes of a HEALTH answer (see [`crate::cluster::transfer::Phase`]).
const PHASE_SERVING: u8 = 0;
const PHASE_COPYING: u8 = 1;
const PHASE_COPIED: u8 = 2;
const PHASE_CATCHING_UP: u8 = 3;
const PHASE_FAILED: u8 = 4;

impl Alive {
    fn parse(answer: &Frame) -> Alive {
        let v = &answer.value;
        let u64_at = |at: usize| {
            v.get(at..at + 8)
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
        };
        Alive {
            epoch: answer.epoch,
            incarnation: u64_at(0),
            // An answer without the field comes from a node that does not resume views.
            confirmed: v.get(8).is_none_or(|&c| c == 1),
            phase: v.get(9).copied().unwrap_or(PHASE_SERVING),
            phase_epoch: u64_at(10),
            blocked_epoch: u64_at(34),
            move_phase: v.get(42).copied().unwrap_or(PHASE_SERVING),
            move_epoch: u64_at(43),
        }
    }
}

/// A running keeper. Dropping it stops its thread.
pub struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts watching the backends of `view`; views it publishes go to `view` and are
    /// installed through `peers`, whose connections to nodes marked down are cut.
    pub fn start(
        options: KeeperOptions,
        view: Arc<CurrentView>,
        peers: Arc<Peers>,
        changes: Arc<Changes>,
    ) -> std::io::Result<Keeper> {
        let stop = Arc::new(AtomicBool::new(false));
        let watch = Watch {
            options,
            view,
            peers,
            changes,
            begun: None,
            links: Vec::new(),
            incarnations: Vec::new(),
            phases: Vec::new(),
            waiting: Vec::new(),
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("view-keeper".into())
                .spawn(move || watch.run(&stop))?
        };
        Ok(Keeper {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The keeper thread's state.
struct Watch {
    options: KeeperOptions,
    view: Arc<CurrentView>,
    peers: Arc<Peers>,
    /// Joins and leaves asked for.
    changes: Arc<Changes>,
    /// The change whose first view is being published, to be answered once it is.
    begun: Option<u64>,
    /// A ping connection per node, indexed like the view's nodes.
    links: Vec<Option<Connection>>,
    /// The incarnation each node last answered with.
    incarnations: Vec<Option<u64>>,
    /// The transfer phase each node last answered with.
    phases: Vec<u8>,
    /// Why each node that answers stays down, as last logged.
    waiting: Vec<Option<String>>,
}

impl Watch {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let ring = self.view.get();
            let health = self.ping_all(&ring);
            self.act(&ring, &health);
            let pause = self.options.interval.saturating_sub(started.elapsed());
            // Sleeps in short steps so that a stopping frontend, or a wanted epoch, is not held
            // up.
            let until = Instant::now() + pause;
            while !stop.load(Ordering::SeqCst)
                && Instant::now() < until
                && !self
                    .view
                    .is_newer_epoch_wanted(self.view.get().view().epoch)
            {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(5)));
            }
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.options.timeout,
            io: self.options.timeout,
            ..Timeouts::default()
        }
    }

    /// For the first view a joining backend takes. Not a liveness probe: the joiner writes the
    /// view to disk before it answers, which on a busy disk outlasts a ping's timeout, and a
    /// join refused for that alone would be refused for nothing.
    fn joiner_timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.options.timeout,
            io: self.options.timeout.max(JOINER_INSTALL_TIMEOUT),
            ..Timeouts::default()
        }
    }

    /// Pings every node at once, each on its own connection.
    fn ping_all(&mut self, ring: &Ring) -> Vec<Health> {
        let nodes = &ring.view().nodes;
        self.links.resize_with(nodes.len(), || None);
        self.incarnations.resize(nodes.len(), None);
        self.phases.resize(nodes.len(), PHASE_SERVING);
        self.waiting.resize(nodes.len(), None);
        let timeouts = self.timeouts();
        let peers = &*self.peers;
        std::thread::scope(|scope| {
            let pings: Vec<_> = self
                .links
                .iter_mut()
                .zip(nodes)
                .map(|(link, addr)| scope.spawn(move || ping(link, addr, &timeouts, peers)))
                .collect();
            pings
                .into_iter()
                .map(|p| p.join().unwrap_or(Health::Dead))
                .collect()
        })
    }

    /// Publishes the view the pings call for, if it differs from the current one.
    ///
    /// Nodes leave chains at once (any number per view); they come back one per view, and
    /// only in a view that changes nothing else, so that a node's copy is judged against the
    /// chains it was made for.
    fn act(&mut self, ring: &Ring, health: &[Health]) {
        let view = ring.view();
        let mut next = view.clone();
        let new_epoch = view.epoch + 1;
        let mut returning: Option<(usize, NodeState)> = None;
        for (node, found) in health.iter().enumerate() {
            let addr = &view.nodes[node];
            let alive = match *found {
                Health::Alive(alive) => alive,
                Health::Dead => {
                    match view.states[node] {
                        NodeState::Up => {
                            log::warn!(
                                "backend {addr} did not answer a ping within {:?}; marking it down",
                                self.options.timeout
                            );
                            next.states[node] = NodeState::Down;
                            next.since[node] = self.left_up_epoch(node, new_epoch);
                        }
                        NodeState::Syncing => {
                            log::warn!(
                                "backend {addr} stopped answering while it was being copied"
                            );
                            next.states[node] = NodeState::Down;
                        }
                        NodeState::Down => {}
                    }
                    continue;
                }
            };
            if alive.blocked_epoch != 0 && alive.blocked_epoch == view.epoch {
                // A write some frontend sent left a key blocked there until the next view.
                self.view.want_epoch_after(view.epoch);
            }
            let restarted = self.incarnations[node].is_some_and(|known| known != alive.incarnation)
                || !alive.confirmed
                || alive.epoch == 0;
            self.incarnations[node] = Some(alive.incarnation);
            let previous_phase = std::mem::replace(&mut self.phases[node], alive.phase);
            match view.states[node] {
                NodeState::Up if restarted && view.replicas > 1 => {
                    log::warn!(
                        "backend {addr} restarted and may have lost writes; marking it down \
                         until it is copied up to date"
                    );
                    next.states[node] = NodeState::Down;
                    // What it held before it restarted counted as a full copy only if its
                    // last answer said it was complete.
                    next.since[node] = if previous_phase == PHASE_SERVING {
                        new_epoch
                    } else {
                        0
                    };
                }
                NodeState::Up
                    if alive.phase == PHASE_FAILED || alive.move_phase == PHASE_FAILED =>
                {
                    log::warn!("backend {addr} could not catch up after its copy; marking it down");
                    next.states[node] = NodeState::Down;
                    // It never held a complete copy: it is never the last one standing.
                    next.since[node] = 0;
                }
                // With one copy per key, a restarted node holds all there is of its keys: a
                // new epoch confirms it.
                NodeState::Up if restarted => {
                    log::info!("backend {addr} restarted; confirming it in a new view");
                    self.view.want_epoch_after(view.epoch);
                }
                // It missed an install: it is given the view; if it cannot take it, it
                // cannot serve it.
                NodeState::Up if alive.epoch != view.epoch && !self.install(view, addr) => {
                    next.states[node] = NodeState::Down;
                    next.since[node] = self.left_up_epoch(node, new_epoch);
                }
                NodeState::Up => {}
                NodeState::Syncing if restarted || alive.phase == PHASE_FAILED => {
                    log::warn!("backend {addr}'s copy failed or it restarted; marking it down");
                    next.states[node] = NodeState::Down;
                }
                NodeState::Syncing => {
                    if alive.epoch != view.epoch {
                        self.install(view, addr);
                    }
                    match transfer::plan(ring, node) {
                        Err(why) => {
                            log::warn!("backend {addr} cannot be copied up to date now: {why}");
                            next.states[node] = NodeState::Down;
                        }
                        Ok(_) if alive.phase == PHASE_COPIED && alive.phase_epoch == view.epoch => {
                            returning.get_or_insert((node, NodeState::Up));
                        }
                        Ok(_) => {}
                    }
                }
                NodeState::Down => {
                    if alive.epoch != view.epoch {
                        // Fenced: it learns it is out.
                        self.install(view, addr);
                    }
                    match transfer::plan(ring, node) {
                        Ok(plan) if plan.is_keep_only() => {
                            returning.get_or_insert((node, NodeState::Up));
                        }
                        Ok(_) => {
                            returning.get_or_insert((node, NodeState::Syncing));
                        }
                        Err(why) => {
                            if self.waiting[node].as_deref() != Some(why.as_str()) {
                                log::warn!("backend {addr} answers again but stays down: {why}");
                                self.waiting[node] = Some(why);
                            }
                        }
                    }
                }
            }
        }
        let leaving = next.states != view.states;
        if let Some((node, state)) = returning.filter(|_| !leaving) {
            let addr = &view.nodes[node];
            match state {
                NodeState::Up if view.states[node] == NodeState::Down => log::info!(
                    "backend {addr} answers again and holds the latest copy of all its keys \
                     (it left each of their chains last); marking it up"
                ),
                NodeState::Up => {
                    log::info!("backend {addr} is copied up to date; marking it up")
                }
                _ => log::info!("backend {addr} answers again; copying it up to date"),
            }
            next.states[node] = state;
            if state == NodeState::Up {
                next.since[node] = new_epoch;
            }
            self.waiting[node] = None;
        }
        let wanted = self.view.is_newer_epoch_wanted(view.epoch);
        if next.states != view.states || wanted {
            next.epoch = new_epoch;
            self.publish(next);
            return;
        }
        // Membership moves one step at a time, in views that change nothing else.
        if let Some(step) = self.membership_step(ring, health) {
            let epoch = step.epoch;
            self.publish(step);
            // Answered only now: whoever asked may rely on the backends holding the view.
            if let Some(id) = self.begun.take() {
                self.changes.answer(id, Ok(epoch));
            }
        }
    }

    /// The next view of a join or leave, if one is due: the commit of a move whose copies are
    /// done (or its end, if a node that was to gain partitions is not up), the removal of a
    /// node that has left, or the beginning of a change asked for.
    fn membership_step(&mut self, ring: &Ring, health: &[Health]) -> Option<View> {
        let view = ring.view();
        let alive = |node: usize| match health.get(node) {
            Some(Health::Alive(alive)) => Some(*alive),
            _ => None,
        };
        if view.is_moving() {
            if let Some(why) = membership::stranded(ring) {
                log::warn!("calling the move off: {why}");
                return Some(membership::abort(view));
            }
            // The nodes that are not up copy nothing now: they are copied when they come back.
            let receivers: Vec<usize> = membership::gaining(ring)
                .into_iter()
                .filter(|&n| view.is_up(n))
                .collect();
            let copied = receivers.iter().all(|&n| {
                alive(n).is_some_and(|a| a.move_phase == PHASE_COPIED && a.move_epoch == view.epoch)
            });
            if !copied || receivers.iter().any(|&n| handoff::plan(ring, n).is_err()) {
                return None;
            }
            log::info!(
                "every node has copied the partitions it takes ({} moving); committing the move",
                handoff::moving_partitions(ring)
            );
            return Some(membership::commit(view));
        }
        let settling = (0..view.nodes.len()).any(|n| {
            alive(n).is_some_and(|a| {
                matches!(
                    a.move_phase,
                    PHASE_COPYING | PHASE_COPIED | PHASE_CATCHING_UP
                )
            })
        });
        if !settling {
            if let Some(&out) = membership::left(view).first() {
                log::info!(
                    "backend {} has handed off its partitions; taking it out of the view",
                    view.nodes[out]
                );
                let mut next = membership::remove(view, out);
                next.epoch = view.epoch + 1;
                return Some(next);
            }
        }
        let (id, change) = self.changes.take()?;
        let result = membership::begin(view, &change).and_then(|next| {
            if let membership::Change::Join(addr) = &change {
                // The newcomer takes the view first, or the change is not begun: it may be
                // unreachable, hold another cluster's view, or not have the cluster token.
                self.install_or_why(&next, addr, self.joiner_timeouts())
                    .map_err(|why| membership::ChangeError::Refused(format!("{addr}: {why}")))?;
            }
            Ok(next)
        });
        match result {
            Ok(next) => {
                log::info!("beginning the {change} in view epoch {}", next.epoch);
                self.begun = Some(id);
                Some(next)
            }
            Err(e) => {
                log::warn!("the {change} was refused: {e}");
                self.changes.answer(id, Err(e));
                None
            }
        }
    }

    /// The `since` of a node that stops being up in `epoch`: that epoch, if its copy was
    /// complete as far as the keeper knows; else 0, so that it never counts as the member that
    /// left a chain last.
    fn left_up_epoch(&self, node: usize, epoch: u64) -> u64 {
        if self.phases[node] == PHASE_SERVING {
            epoch
        } else {
            0
        }
    }

    /// Installs `view` on `addr`; true if it took it.
    fn install(&self, view: &View, addr: &str) -> bool {
        match self.install_or_why(view, addr, self.timeouts()) {
            Ok(()) => true,
            Err(why) => {
                log::warn!(
                    "backend {addr} did not take view epoch {}: {why}",
                    view.epoch
                );
                false
            }
        }
    }

    /// Installs `view` on `addr`, or says why it did not take it.
    fn install_or_why(&self, view: &View, addr: &str, timeouts: Timeouts) -> Result<(), String> {
        let frame = view_install_frame(view, addr, 0);
        match self
            .peers
            .open_own(addr, &timeouts)
            .and_then(|mut c| c.call(&frame))
        {
            Ok(answer) if answer.status == Status::OK => Ok(()),
            Ok(answer) => Err(format!(
                "refused view epoch {}: {}: {}",
                view.epoch,
                answer.status,
                answer.message()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Installs `view` on every node that can take it, then routes by it. A node marked up
    /// that cannot take it will be marked down by the next round of pings.
    fn publish(&mut self, view: View) {
        let ring = match Ring::new(view) {
            Ok(ring) => ring,
            Err(e) => {
                log::error!("the keeper built an unusable view: {e}");
                return;
            }
        };
        let view = ring.view();
        self.follow_node_list(&self.view.get().view().nodes.clone(), &view.nodes);
        log::info!(
            "publishing view epoch {}: {}",
            view.epoch,
            view.nodes
                .iter()
                .zip(&view.states)
                .map(|(n, s)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (node, addr) in view.nodes.iter().enumerate() {
            if view.states[node] == NodeState::Down {
                self.peers.sever(addr);
                self.links[node] = None;
            }
        }
        let this = &*self;
        std::thread::scope(|scope| {
            for (node, addr) in view.nodes.iter().enumerate() {
                if view.states[node] != NodeState::Down {
                    scope.spawn(move || this.install(view, addr));
                }
            }
        });
        self.view.set(ring);
    }
}

impl Watch {
    /// Keeps what the keeper knows of each node with that node when the node list changes (a
    /// node taken out shifts the ones after it).
    fn follow_node_list(&mut self, before: &[String], after: &[String]) {
        if before == after {
            return;
        }
        let at = |addr: &String| before.iter().position(|b| b == addr);
        let links = std::mem::take(&mut self.links);
        let mut links: Vec<Option<Option<Connection>>> = links.into_iter().map(Some).collect();
        self.links = after
            .iter()
            .map(|a| at(a).and_then(|i| links.get_mut(i)?.take()).flatten())
            .collect();
        self.incarnations = after
            .iter()
            .map(|a| at(a).and_then(|i| self.incarnations.get(i).copied().flatten()))
            .collect();
        self.phases = after
            .iter()
            .map(|a| {
                at(a)
                    .and_then(|i| self.phases.get(i).copied())
                    .unwrap_or(PHASE_SERVING)
            })
            .collect();
        self.waiting = after
            .iter()
            .map(|a| at(a).and_then(|i| self.waiting.get(i).cloned()).flatten())
            .collect();
    }
}

/// A probe of `addr` on `link`; a miss is confirmed at once by a second probe on a fresh
/// connection, so one lost or late answer (a busy machine) does not take a node out.
fn ping(link: &mut Option<Connection>, addr: &str, timeouts: &Timeouts, peers: &Peers) -> Health {
    match probe(link, addr, timeouts, peers) {
        Health::Dead => probe(link, addr, timeouts, peers),
        alive => alive,
    }
}

/// One probe of `addr` on `link` (opened when missing, dropped when it fails).
fn probe(link: &mut Option<Connection>, addr: &str, timeouts: &Timeouts, peers: &Peers) -> Health {
    if link.is_none() {
        // Presenting the cluster token and the password, which a backend may require.
        *link = peers.open_own(addr, timeouts).ok();
    }
    let Some(conn) = link.as_mut() else {
        return Health::Dead;
    };
    let request = Frame::request(Opcode::HEALTH, 1, Vec::new(), Vec::new());
    match conn.call(&request) {
        Ok(answer) if answer.status == Status::OK => Health::Alive(Alive::parse(&answer)),
        _ => {
            *link = None;
            Health::Dead
        }
    }
}
