//! Multiplexed connections to a peer: the requests of many callers share a few sockets.
//!
//! A pooled connection ([`crate::peers`]) carries one caller's batch at a time, so fifty client
//! connections with a request each make fifty round trips to a backend, and the backend wakes
//! once for each. Here every caller's frames go onto one of a small, fixed number of links per
//! peer:
//!
//! - **Combining writer.** A caller encodes its frames with link-unique request ids (the
//!   original ids are restored on the answers) and appends them to the link's pending bytes. If
//!   no one is writing, it becomes the writer and writes whatever is pending, again and again,
//!   until nothing is: callers that arrive meanwhile only append, and their frames go out in the
//!   writer's next write, together. So the peer reads many callers' requests per wake-up and
//!   answers them in one write. A writer with a single request yields its CPU once first, so
//!   that the threads other clients' requests woke can add theirs.
//! - **Answers matched by id.** Each link has a reader thread that takes the answers as they
//!   come and hands each to the caller waiting for it; a caller with requests on several peers
//!   waits once for all of them. A caller that does not wait ([`MuxPool::call_batch_then`])
//!   leaves a completion instead, which the reader that fills in the batch's last answer runs:
//!   the frontend's writes the answers to the client, so no thread is woken to do it. The
//!   reader also fails the link when a request on it is overdue, since no caller may be
//!   waiting to notice.
//! - **Failures.** A link that fails (the peer closed it, a read or write error, a caller's
//!   answers not back within the i/o timeout, [`MuxPool::sever`]) fails every request on it and
//!   is replaced on next use. A request whose bytes no writer had yet handed to the socket is
//!   sent once more on a fresh link, as [`crate::peers::Peers::call`] does for a pooled
//!   connection found closed; once written, never again.
//!
//! A peer answers a link's requests in order, one batch after the other, so a request that waits
//! long (a chain write whose successor is slow) holds up the ones behind it on its link. That is
//! why a frontend uses these towards backends, which never call it back, and a backend only for
//! the writes it passes to a chain's tail ([`crate::peers::Peers::call_batch_to_leaves`]), which
//! the tail applies without waiting for anyone. Other calls between backends take a connection
//! each: on a shared link, a request that went round the ring (entry, relays, head, chain) could
//! come back to a link it is already waiting on, and wait for itself.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::auth::Credentials;
use crate::connection::{Connection, FrameReader, ReadError, Timeouts};
use crate::error::{Error, Result};
use crate::protocol::{Frame, FrameRef, Limits, Status};
use smallvec::SmallVec;

/// Most bytes that may wait to be written on one link; a caller that finds more waits for the
/// writer to take them.
const MOST_PENDING: usize = 8 * 1024 * 1024;

/// `0..len` as a list: borrowed from a table for the usual short batch, not allocated.
fn all_indexes(len: usize) -> std::borrow::Cow<'static, [usize]> {
    const SHORT: usize = 128;
    static FIRST: [usize; SHORT] = {
        let mut table = [0; SHORT];
        let mut i = 0;
        while i < SHORT {
            table[i] = i;
            i += 1;
        }
        table
    };
    match FIRST.get(..len) {
        Some(short) => std::borrow::Cow::Borrowed(short),
        None => std::borrow::Cow::Owned((0..len).collect()),
    }
}

/// The largest write buffer a link keeps for its next write.
const SPARE_BYTES: usize = 256 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    match lock.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The links to every peer.
pub struct MuxPool {
    links_per_peer: usize,
    /// Read by every request's thread, written once per new peer: a lock that readers share.
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    timeouts: Timeouts,
    limits: Limits,
    credentials: Credentials,
}

/// One peer's links, used in turn.
struct Peer {
    /// Read by every request's thread, written when a link is opened or failed.
    slots: Vec<RwLock<Option<Arc<Link>>>>,
    /// One per slot, held while a link is opened for it: callers that find the slot empty
    /// wait for that one rather than open more, and [`MuxPool::sever`], which takes only the
    /// slot, never waits for a connect.
    opening: Vec<Mutex<()>>,
    /// Counts the severs, so that a link whose opening a sever crossed is not kept.
    severed: AtomicUsize,
    turn: AtomicUsize,
}

impl Peer {
    /// The slot the next caller uses: the links take turns.
    fn next_turn(&self) -> usize {
        match self.slots.len() {
            1 => 0,
            n => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// The link in slot `turn`, if it is open and has not failed.
    fn live(&self, turn: usize) -> Option<Arc<Link>> {
        read(&self.slots[turn])
            .as_ref()
            .filter(|link| !link.has_failed())
            .cloned()
    }
}

/// One socket and what is in flight on it.
struct Link {
    addr: String,
    stream: TcpStream,
    out: Mutex<Outgoing>,
    /// Signalled when the writer has taken the pending bytes.
    taken: Condvar,
    inflight: Mutex<Inflight>,
    /// Set once `inflight.failed` is: every request's thread asks whether a link failed
    /// before it uses it, and should not queue on the lock its reader and writers take.
    failed: AtomicBool,
}

#[derive(Default)]
struct Outgoing {
    pending: Vec<u8>,
    /// The link ids of the frames in `pending`.
    ids: Vec<u64>,
    /// The lists the writer wrote last, emptied: the next `pending` and `ids`, so that a busy
    /// link does not allocate them for every write.
    spare: (Vec<u8>, Vec<u64>),
    /// Whether a caller is writing.
    writing: bool,
    /// Callers waiting for the writer to take the pending bytes (on `taken`).
    waiting_for_room: usize,
}

struct Inflight {
    next_id: u64,
    /// When a request was last registered.
    last_sent: Instant,
    waiting: HashMap<u64, Waiter, BuildHasherDefault<LinkIdHasher>>,
    /// Why the link failed, once it has.
    failed: Option<String>,
    /// Set when it failed because the peer was at its connection limit.
    busy: bool,
}

/// Hashes the ids a link gives its own requests. They come from the link's counter, never from
/// a peer (an answer's id is only looked up), so nobody can choose colliding ones and SipHash's
/// protection buys nothing; a multiplication spreads consecutive ids over the table.
#[derive(Default)]
struct LinkIdHasher(u64);

impl Hasher for LinkIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A request on a link: whose it is and what id it had.
struct Waiter {
    ticket: Arc<Ticket>,
    index: usize,
    request_id: u64,
    /// Whether its bytes were handed to the socket.
    written: bool,
    /// When it was put on the link: the reader fails the link if it waits past the i/o
    /// timeout, which is the only bound a batch has when no caller waits for it.
    since: Instant,
}

/// What is done with a batch's answers, in the thread that fills in the last one, when no
/// caller waits for them ([`MuxPool::call_batch_then`]): the answers in request order, and the
/// indexes of those that failed before their bytes were written (never seen by the peer).
pub type Then = Box<dyn FnOnce(Vec<Result<Frame>>, Vec<usize>) + Send>;

/// A caller's batch: its answers, filled in by the links' readers.
struct Ticket {
    state: Mutex<TicketState>,
    done: Condvar,
    then: Mutex<Option<Then>>,
}

struct TicketState {
    answers: Vec<Option<Result<Frame>>>,
    missing: usize,
    /// Requests that failed before their bytes were written: they may be sent again.
    unsent: Vec<usize>,
    /// Whether a caller sleeps on `done`: a notify is a system call even when no one waits,
    /// and most batches have no one waiting (their answers go to a completion).
    waited_on: bool,
}

impl TicketState {
    /// The answers, in request order; one never filled in is an error.
    fn take_answers(&mut self) -> Vec<Result<Frame>> {
        std::mem::take(&mut self.answers)
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(Error::Unanswered {
                        addr: String::new(),
                        reason: "not sent".into(),
                    })
                })
            })
            .collect()
    }
}

impl Ticket {
    fn new(len: usize) -> Arc<Ticket> {
        Arc::new(Ticket {
            state: Mutex::new(TicketState {
                answers: (0..len).map(|_| None).collect(),
                missing: len,
                unsent: Vec::new(),
                waited_on: false,
            }),
            done: Condvar::new(),
            then: Mutex::new(None),
        })
    }

    /// Called with no link's lock held: the last answer may run the batch's `then`, which may
    /// put requests on the same links.
    fn fill(&self, index: usize, answer: Result<Frame>, unsent: bool) {
        let mut state = lock(&self.state);
        if state.answers[index].is_some() {
            return;
        }
        state.answers[index] = Some(answer);
        if unsent {
            state.unsent.push(index);
        }
        state.missing -= 1;
        if state.missing > 0 {
            return;
        }
        if state.waited_on {
            self.done.notify_all();
        }
        let Some(then) = lock(&self.then).take() else {
            return;
        };
        let answers = state.take_answers();
        let unsent = std::mem::take(&mut state.unsent);
        drop(state);
        // A reader thread must outlive whatever the callback does wrong.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(answers, unsent))).is_err()
        {
            log::error!("a multiplexed batch's completion panicked");
        }
    }

    /// Waits until every answer is in or `deadline` passes; whether they are all in.
    fn wait(&self, deadline: Instant) -> bool {
        let mut state = lock(&self.state);
        while state.missing > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state.waited_on = true;
            state = match self.done.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

/// A batch sent by [`MuxPool::call_batch_start`], its completion not yet named.
#[must_use = "its answers are dropped unless `then` names what is done with them"]
pub struct Sending {
    ticket: Arc<Ticket>,
}

impl Sending {
    /// Hands the batch's answers to `then`: in the thread of whichever link fills in the last
    /// one, or in this one if they are all in already.
    pub fn then(self, then: Then) {
        let mut state = lock(&self.ticket.state);
        if state.missing > 0 {
            // Set under the state's lock, which the last answer's `fill` takes first: so
            // either it finds `then` here, or this finds every answer in.
            *lock(&self.ticket.then) = Some(then);
            return;
        }
        let answers = state.take_answers();
        let unsent = std::mem::take(&mut state.unsent);
        drop(state);
        then(answers, unsent);
    }
}

impl MuxPool {
    /// Links of `links_per_peer` sockets per peer (at least 1), with `timeouts`, accepting
    /// answers within `limits`, presenting `credentials` on each new socket.
    pub fn new(
        links_per_peer: usize,
        timeouts: Timeouts,
        limits: Limits,
        credentials: Credentials,
    ) -> MuxPool {
        MuxPool {
            links_per_peer: links_per_peer.max(1),
            peers: RwLock::new(HashMap::new()),
            timeouts,
            limits,
            credentials,
        }
    }

    /// Sends every `(addr, request)` and returns the answers in the same order; each peer's
    /// share goes onto one of its links, and all peers work at once.
    pub fn call_batch(&self, calls: &[(&str, &Frame)]) -> Vec<Result<Frame>> {
        let calls: Vec<(&str, FrameRef<'_>)> =
            calls.iter().map(|(a, f)| (*a, f.borrowed())).collect();
        self.call_batch_refs(&calls)
    }

    /// [`MuxPool::call_batch`] for frames whose key and value are borrowed.
    pub fn call_batch_refs(&self, calls: &[(&str, FrameRef<'_>)]) -> Vec<Result<Frame>> {
        let ticket = Ticket::new(calls.len());
        let mut used = Vec::new();
        self.submit(calls, &all_indexes(calls.len()), &ticket, |link| {
            used.push(link)
        });
        self.wait(&ticket, &used);
        // Requests a link failed before writing them were never seen by the peer: once more,
        // on fresh links.
        let unsent = std::mem::take(&mut lock(&ticket.state).unsent);
        if !unsent.is_empty() {
            let again = Ticket::new(calls.len());
            {
                let mut state = lock(&again.state);
                state.missing = unsent.len();
                for (index, answer) in state.answers.iter_mut().enumerate() {
                    if !unsent.contains(&index) {
                        *answer = Some(Err(Error::Unanswered {
                            addr: String::new(),
                            reason: "answered on the first attempt".into(),
                        }));
                    }
                }
            }
            let mut used = Vec::new();
            self.submit(calls, &unsent, &again, |link| used.push(link));
            self.wait(&again, &used);
            let mut retried = lock(&again.state);
            let mut first = lock(&ticket.state);
            for &index in &unsent {
                first.answers[index] = retried.answers[index].take();
            }
        }
        let answers = lock(&ticket.state).take_answers();
        answers
    }

    /// Sends every `(addr, request)` like [`MuxPool::call_batch`] but returns at once: `then`
    /// gets the answers, in the thread of whichever link fills in the last one (or this one,
    /// if every request failed at once). It must not block. A request that failed before its
    /// bytes were written is not sent again here: `then` is told which, and may send it.
    pub fn call_batch_then(&self, calls: &[(&str, FrameRef<'_>)], then: Then) {
        self.call_batch_start(calls).then(then);
    }

    /// [`MuxPool::call_batch_then`] in two steps: the requests are on their way when this
    /// returns, so what the completion owns need not outlive the frames borrowed in `calls`
    /// (it may own them), and [`Sending::then`] names the completion.
    pub fn call_batch_start(&self, calls: &[(&str, FrameRef<'_>)]) -> Sending {
        let ticket = Ticket::new(calls.len());
        self.submit(calls, &all_indexes(calls.len()), &ticket, |_| {});
        Sending { ticket }
    }

    /// Puts the requests at `indexes` onto their peers' links, handing each link used to
    /// `used`.
    fn submit(
        &self,
        calls: &[(&str, FrameRef<'_>)],
        indexes: &[usize],
        ticket: &Arc<Ticket>,
        mut used: impl FnMut(Arc<Link>),
    ) {
        // Most batches have one peer: no need to group them.
        if let Some(&first) = indexes.first() {
            let addr = calls[first].0;
            if indexes.iter().all(|&index| calls[index].0 == addr) {
                return self.submit_to(addr, calls, indexes, ticket, &mut used);
            }
        }
        // Inline lists: a batch of a pipeline grew a list per peer a push at a time.
        let mut peers: SmallVec<[&str; 8]> = SmallVec::new();
        for &index in indexes {
            let addr = calls[index].0;
            if !peers.contains(&addr) {
                peers.push(addr);
            }
        }
        let mut group: SmallVec<[usize; 64]> = SmallVec::new();
        for addr in peers {
            group.clear();
            group.extend(indexes.iter().copied().filter(|&i| calls[i].0 == addr));
            self.submit_to(addr, calls, &group, ticket, &mut used);
        }
    }

    /// [`MuxPool::submit`] for requests that all go to `addr`.
    fn submit_to(
        &self,
        addr: &str,
        calls: &[(&str, FrameRef<'_>)],
        group: &[usize],
        ticket: &Arc<Ticket>,
        used: &mut impl FnMut(Arc<Link>),
    ) {
        match self.link(addr) {
            Ok(link) => {
                link.send(calls, group, ticket, &self.timeouts);
                used(link);
            }
            Err(e) => {
                let busy = matches!(e, Error::Busy { .. });
                let message = e.to_string();
                let mut first = Some(e);
                for &index in group {
                    let error = first
                        .take()
                        .unwrap_or_else(|| failure(addr, &message, busy));
                    ticket.fill(index, Err(error), false);
                }
            }
        }
    }

    /// Waits for `ticket` up to the i/o timeout; a link whose answers are not all back by then
    /// is failed, which fills in the rest.
    fn wait(&self, ticket: &Ticket, used: &[Arc<Link>]) {
        let deadline = Instant::now() + self.timeouts.io;
        if ticket.wait(deadline) {
            return;
        }
        for link in used {
            if link.holds_any_of(ticket) {
                link.fail(&format!(
                    "no answer within the i/o timeout ({:?})",
                    self.timeouts.io
                ));
            }
        }
    }

    /// A live link to `addr`, opened if need be.
    fn link(&self, addr: &str) -> Result<Arc<Link>> {
        // Every request's thread comes here. The usual case, a live link, writes to no line
        // the other threads share beyond the read lock and the link's count: the peer is not
        // counted a user, and with one link a peer no turn is taken.
        let known = {
            let peers = read(&self.peers);
            match peers.get(addr) {
                Some(peer) => {
                    let turn = peer.next_turn();
                    match peer.live(turn) {
                        Some(link) => return Ok(link),
                        None => Some((Arc::clone(peer), turn)),
                    }
                }
                None => None,
            }
        };
        let (peer, turn) = match known {
            Some(known) => known,
            None => {
                let mut peers = write(&self.peers);
                let entry = peers.entry(addr.to_string());
                let peer = Arc::clone(entry.or_insert_with(|| self.new_peer()));
                let turn = peer.next_turn();
                (peer, turn)
            }
        };
        let live = || peer.live(turn);
        if let Some(link) = live() {
            return Ok(link);
        }
        let _opening = lock(&peer.opening[turn]);
        // Opened by the caller this one waited for.
        if let Some(link) = live() {
            return Ok(link);
        }
        let severs = peer.severed.load(Ordering::SeqCst);
        let link = Link::open(addr, &self.timeouts, &self.limits, &self.credentials)?;
        let mut slot = write(&peer.slots[turn]);
        if peer.severed.load(Ordering::SeqCst) != severs {
            drop(slot);
            let reason = "the peer was declared down while a connection to it was opened";
            link.fail(reason);
            return Err(failure(addr, reason, false));
        }
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    /// A peer with no link open yet.
    fn new_peer(&self) -> Arc<Peer> {
        Arc::new(Peer {
            slots: (0..self.links_per_peer)
                .map(|_| RwLock::new(None))
                .collect(),
            opening: (0..self.links_per_peer).map(|_| Mutex::new(())).collect(),
            severed: AtomicUsize::new(0),
            turn: AtomicUsize::new(0),
        })
    }

    /// Fails every link to `addr`: a call waiting on a peer declared dead or hung fails now
    /// instead of at the end of its timeout.
    pub fn sever(&self, addr: &str) {
        let peer = read(&self.peers).get(addr).cloned();
        if let Some(peer) = peer {
            peer.severed.fetch_add(1, Ordering::SeqCst);
            for slot in &peer.slots {
                if let Some(link) = write(slot).take() {
                    link.fail("the peer was declared down");
                }
            }
        }
    }
}

impl Drop for MuxPool {
    fn drop(&mut self) {
        // The readers hold their links; a closed socket ends them.
        for peer in read(&self.peers).values() {
            for slot in &peer.slots {
                if let Some(link) = write(slot).take() {
                    link.fail("the pool was closed");
                }
            }
        }
    }
}

/// The error a request on a failed link gets.
fn failure(addr: &str, reason: &str, busy: bool) -> Error {
    if busy {
        Error::Busy {
            addr: addr.to_string(),
            message: reason.to_string(),
        }
    } else {
        Error::Unanswered {
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl Link {
    /// Connects, presents the credentials, and starts the reader.
    fn open(
        addr: &str,
        timeouts: &Timeouts,
        limits: &Limits,
        credentials: &Credentials,
    ) -> Result<Arc<Link>> {
        let mut conn = Connection::open(addr, timeouts, limits)?;
        credentials.present(&mut conn, addr)?;
        let (stream, reader) = conn.into_parts();
        // The reader wakes at least this often to fail requests overdue.
        let slice = (timeouts.io / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        stream
            .set_read_timeout(Some(slice))
            .map_err(|e| Error::Io {
                addr: addr.to_string(),
                source: e,
            })?;
        let io_timeout = timeouts.io;
        let link = Arc::new(Link {
            addr: addr.to_string(),
            stream,
            out: Mutex::new(Outgoing::default()),
            taken: Condvar::new(),
            inflight: Mutex::new(Inflight {
                next_id: 1,
                last_sent: Instant::now(),
                waiting: HashMap::default(),
                failed: None,
                busy: false,
            }),
            failed: AtomicBool::new(false),
        });
        let reading = Arc::clone(&link);
        // Well within the peer's own idle timeout (the same setting on every server).
        let idle_for = timeouts.idle / 4;
        std::thread::Builder::new()
            .name(format!("mux-{addr}"))
            .spawn(move || reading.read_answers(reader, idle_for, io_timeout))
            .map_err(|e| Error::Config(format!("cannot start a thread: {e}")))?;
        Ok(link)
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the link failed for `reason` (the first reason stays), under its lock.
    fn mark_failed(&self, inflight: &mut Inflight, reason: &str) {
        if inflight.failed.is_none() {
            inflight.failed = Some(reason.to_string());
        }
        self.failed.store(true, Ordering::Release);
    }

    fn holds_any_of(&self, ticket: &Ticket) -> bool {
        lock(&self.inflight)
            .waiting
            .values()
            .any(|w| std::ptr::eq(&*w.ticket, ticket))
    }

    /// Registers `calls[indexes]` under fresh ids and writes them (or leaves them to the
    /// writer at work).
    fn send(
        &self,
        calls: &[(&str, FrameRef<'_>)],
        indexes: &[usize],
        ticket: &Arc<Ticket>,
        timeouts: &Timeouts,
    ) {
        let now = Instant::now();
        let first = {
            let mut inflight = lock(&self.inflight);
            // An idle link may have been closed by the peer a moment ago, before the reader
            // noticed: found now, the requests go on a fresh link instead of being lost on
            // this one.
            if inflight.failed.is_none()
                && inflight.waiting.is_empty()
                && crate::connection::peer_has_closed(&self.stream)
            {
                self.mark_failed(&mut inflight, "the peer closed the connection");
            }
            if let Some(reason) = &inflight.failed {
                let reason = failure(&self.addr, reason, inflight.busy).to_string();
                drop(inflight);
                for &index in indexes {
                    ticket.fill(index, Err(failure(&self.addr, &reason, false)), true);
                }
                return;
            }
            let first = inflight.next_id;
            inflight.next_id += indexes.len() as u64;
            inflight.last_sent = now;
            for (k, &index) in indexes.iter().enumerate() {
                inflight.waiting.insert(
                    first + k as u64,
                    Waiter {
                        ticket: Arc::clone(ticket),
                        index,
                        request_id: calls[index].1.request_id,
                        written: false,
                        since: now,
                    },
                );
            }
            first
        };
        let size: usize = indexes.iter().map(|&i| calls[i].1.encoded_len()).sum();
        let encode = |bytes: &mut Vec<u8>| {
            bytes.reserve(size);
            for (k, &index) in indexes.iter().enumerate() {
                calls[index].1.encode_into_with_id(first + k as u64, bytes);
            }
        };
        let ids = first..first + indexes.len() as u64;
        self.write(encode, ids, calls.len() == 1, now + timeouts.io);
    }

    /// Has `encode` append frames to what is pending and, if no one is writing, writes until
    /// nothing is.
    ///
    /// A writer with one `lone` request first yields its CPU once: the threads that other
    /// clients' requests woke get to append theirs, and the peer reads them all in one wake-up
    /// instead of one each. A batch is worth its write at once.
    fn write(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        ids: std::ops::Range<u64>,
        lone: bool,
        deadline: Instant,
    ) {
        let mut out = lock(&self.out);
        while out.writing && out.pending.len() >= MOST_PENDING {
            let now = Instant::now();
            if now >= deadline {
                drop(out);
                self.fail("the link's writer made no room within the i/o timeout");
                return;
            }
            out.waiting_for_room += 1;
            out = match self.taken.wait_timeout(out, deadline - now) {
                Ok((out, _)) => out,
                Err(poisoned) => poisoned.into_inner().0,
            };
            out.waiting_for_room -= 1;
        }
        // Encoded in place: a frame is a copy and a checksum, short next to a write.
        encode(&mut out.pending);
        out.ids.extend(ids);
        if out.writing {
            return;
        }
        out.writing = true;
        if lone {
            drop(out);
            std::thread::yield_now();
            out = lock(&self.out);
        }
        loop {
            let (spare_bytes, spare_ids) = std::mem::take(&mut out.spare);
            let mut bytes = std::mem::replace(&mut out.pending, spare_bytes);
            let mut ids = std::mem::replace(&mut out.ids, spare_ids);
            let room_awaited = out.waiting_for_room > 0;
            drop(out);
            if room_awaited {
                self.taken.notify_all();
            }
            // Marked before the write, not after: bytes that reached the socket may be acted
            // on, so a failure from here on must not send them again.
            {
                let mut inflight = lock(&self.inflight);
                for id in &ids {
                    if let Some(waiter) = inflight.waiting.get_mut(id) {
                        waiter.written = true;
                    }
                }
            }
            if let Err(e) = (&self.stream).write_all(&bytes) {
                self.fail(&format!("write failed: {e}"));
            }
            bytes.clear();
            ids.clear();
            out = lock(&self.out);
            // A list grown by a burst is not kept for an idle link.
            if bytes.capacity() <= SPARE_BYTES && out.spare.0.capacity() == 0 {
                out.spare = (bytes, ids);
            }
            if out.pending.is_empty() {
                out.writing = false;
                return;
            }
        }
    }

    /// The reader: hands each answer to its waiter until the link fails.
    fn read_answers(&self, mut reader: FrameReader, idle_for: Duration, io_timeout: Duration) {
        let check_every = (io_timeout / 8).max(Duration::from_millis(10));
        let mut checked = Instant::now();
        loop {
            // Checked before the reader may wait, not between the answers of one read.
            if !reader.has_buffered_frame() && checked.elapsed() >= check_every {
                checked = Instant::now();
                if self.fail_if_overdue(io_timeout) {
                    return;
                }
            }
            let reason = match reader.read_frame(&mut &self.stream) {
                Ok(Some(answer)) => {
                    // A server at its connection limit says so before reading anything.
                    if answer.opcode.0 == 0
                        && answer.status == Status::BUSY
                        && answer.request_id == 0
                    {
                        lock(&self.inflight).busy = true;
                        self.fail(&answer.message());
                        return;
                    }
                    let waiter = lock(&self.inflight).waiting.remove(&answer.request_id);
                    // No waiter: an answer to a request given up on.
                    if let Some(waiter) = waiter {
                        let mut answer = answer;
                        answer.request_id = waiter.request_id;
                        waiter.ticket.fill(waiter.index, Ok(answer), false);
                    }
                    continue;
                }
                Err(ReadError::Idle) => {
                    if self.has_failed() || self.close_if_idle(idle_for) {
                        return;
                    }
                    continue;
                }
                Ok(None) | Err(ReadError::Truncated { .. }) => {
                    "the peer closed the connection".to_string()
                }
                Err(ReadError::Frame { error, .. }) => format!("a malformed answer: {error}"),
                Err(ReadError::Stalled { .. }) | Err(ReadError::OverBudget { .. }) => {
                    "an answer stalled half-way".to_string()
                }
                Err(ReadError::Io(e)) => format!("read failed: {e}"),
            };
            self.fail(&reason);
            return;
        }
    }

    /// Fails the link if a request on it has waited longer than `io_timeout`; whether it did.
    fn fail_if_overdue(&self, io_timeout: Duration) -> bool {
        let overdue = lock(&self.inflight)
            .waiting
            .values()
            .any(|w| w.since.elapsed() > io_timeout);
        if overdue {
            self.fail(&format!(
                "no answer within the i/o timeout ({io_timeout:?})"
            ));
        }
        overdue
    }

    /// Closes the link if nothing has been sent on it for `idle_for` and nothing is waiting:
    /// before the peer's own idle timeout closes it, which could cross a request on its way.
    /// Checked and marked under one lock, so a request either finds the link closed (and
    /// takes a fresh one) or keeps it open.
    fn close_if_idle(&self, idle_for: Duration) -> bool {
        {
            let mut inflight = lock(&self.inflight);
            if !inflight.waiting.is_empty() || inflight.last_sent.elapsed() < idle_for {
                return false;
            }
            self.mark_failed(&mut inflight, "closed after being idle");
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        true
    }

    /// Fails the link and every request on it; the socket is closed, which ends the reader.
    fn fail(&self, reason: &str) {
        let (waiting, busy) = {
            let mut inflight = lock(&self.inflight);
            self.mark_failed(&mut inflight, reason);
            (std::mem::take(&mut inflight.waiting), inflight.busy)
        };
        let _ = self.stream.shutdown(Shutdown::Both);
        {
            let mut out = lock(&self.out);
            out.pending.clear();
            out.ids.clear();
        }
        self.taken.notify_all();
        for waiter in waiting.into_values() {
            let error = failure(&self.addr, reason, busy);
            waiter
                .ticket
                .fill(waiter.index, Err(error), !waiter.written && !busy);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::Opcode;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    /// How a fake peer treats its connections.
    #[derive(Clone, Copy, PartialEq)]
    pub(crate) enum Peer {
        /// Answers every request with its key as the value, a read's worth at a time.
        Echo,
        /// Reads and never answers.
        Silent,
        /// Answers BUSY (opcode 0, id 0) and closes, as a server at its limit does.
        Busy,
    }

    pub(crate) struct FakePeer {
        pub(crate) addr: String,
        /// Open connections it accepted, to close them from the test.
        pub(crate) accepted: Arc<Mutex<Vec<TcpStream>>>,
    }

    pub(crate) fn fake_peer(kind: Peer) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                lock(&kept).push(stream.try_clone().unwrap());
                std::thread::spawn(move || {
                    if kind == Peer::Busy {
                        let busy = Frame::error_for_id(0, Status::BUSY, "at the limit");
                        let _ = stream.write_all(&busy.encode());
                        return;
                    }
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 64 * 1024];
                    loop {
                        let n = match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let mut out = Vec::new();
                        while let Ok(Some((frame, used))) = crate::protocol::decode(&buf, 1 << 24) {
                            buf.drain(..used);
                            frame
                                .reply(Status::OK, frame.key.clone())
                                .encode_into(&mut out);
                        }
                        if kind == Peer::Echo && stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakePeer { addr, accepted }
    }

    fn pool(io: Duration) -> MuxPool {
        let timeouts = Timeouts {
            io,
            ..Timeouts::default()
        };
        MuxPool::new(1, timeouts, Limits::default(), Credentials::default())
    }

    /// An address nothing listens on: a listener's, closed.
    fn closed_addr() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn get(id: u64, key: &str) -> Frame {
        Frame::request(Opcode::GET, id, key.as_bytes().to_vec(), Vec::new())
    }

    #[test]
    fn many_callers_share_one_link_and_each_gets_its_own_answers() {
        let peer = fake_peer(Peer::Echo);
        let pool = Arc::new(pool(Duration::from_secs(10)));
        let callers: Vec<_> = (0..16)
            .map(|t| {
                let (pool, addr) = (Arc::clone(&pool), peer.addr.clone());
                std::thread::spawn(move || {
                    for round in 0..50 {
                        // Every caller uses the same request ids: the link gives them its own.
                        let requests: Vec<Frame> = (0..3)
                            .map(|i| get(i, &format!("{t}-{round}-{i}")))
                            .collect();
                        let calls: Vec<(&str, &Frame)> =
                            requests.iter().map(|r| (addr.as_str(), r)).collect();
                        for (request, answer) in requests.iter().zip(pool.call_batch(&calls)) {
                            let answer = answer.unwrap();
                            assert_eq!(answer.request_id, request.request_id);
                            assert_eq!(answer.value, request.key);
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        assert_eq!(lock(&peer.accepted).len(), 1, "one link carried them all");
    }

    #[test]
    fn a_batch_nobody_waits_for_ends_in_its_completion_answered_or_overdue() {
        let echo = fake_peer(Peer::Echo);
        let pool = pool(Duration::from_millis(300));
        let (done, answers) = std::sync::mpsc::channel();
        let requests = [get(4, "a"), get(5, "b")];
        let calls: Vec<(&str, FrameRef<'_>)> = requests
            .iter()
            .map(|r| (echo.addr.as_str(), r.borrowed()))
            .collect();
        let sender = done.clone();
        pool.call_batch_then(
            &calls,
            Box::new(move |answers, unsent| sender.send((answers, unsent)).unwrap()),
        );
        let (got, unsent) = answers.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(unsent.is_empty());
        let got: Vec<(u64, Vec<u8>)> = got
            .into_iter()
            .map(|a| a.map(|a| (a.request_id, a.value)).unwrap())
            .collect();
        assert_eq!(got, [(4, b"a".to_vec()), (5, b"b".to_vec())]);

        // No caller waits to notice a silent peer: the link's reader fails the request once
        // it is overdue, and the completion hears of it.
        let silent = fake_peer(Peer::Silent);
        let started = Instant::now();
        let request = get(6, "c");
        pool.call_batch_then(
            &[(&silent.addr, request.borrowed())],
            Box::new(move |answers, unsent| done.send((answers, unsent)).unwrap()),
        );
        let (got, unsent) = answers.recv_timeout(Duration::from_secs(5)).unwrap();
        let waited = started.elapsed();
        assert!(matches!(got[0], Err(Error::Unanswered { .. })), "{got:?}");
        assert!(unsent.is_empty(), "it was written");
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }

    #[test]
    fn a_closed_link_fails_what_it_carried_and_the_next_call_opens_another() {
        let peer = fake_peer(Peer::Echo);
        let pool = pool(Duration::from_secs(10));
        let request = get(7, "k");
        let first = pool.call_batch(&[(&peer.addr, &request)]);
        assert_eq!(first[0].as_ref().unwrap().value, b"k");
        for stream in lock(&peer.accepted).drain(..) {
            stream.shutdown(Shutdown::Both).unwrap();
        }
        // The reader sees the close and fails the link; a call finds it failed and opens
        // another, or (crossing the close) is sent again on one.
        let again = pool.call_batch(&[(&peer.addr, &request)]);
        assert_eq!(again[0].as_ref().unwrap().value, b"k");
        assert_eq!(lock(&peer.accepted).len(), 1, "a second link");
    }

    #[test]
    fn a_silent_peer_fails_the_call_after_the_io_timeout_and_sever_fails_it_at_once() {
        let peer = fake_peer(Peer::Silent);
        let quick = pool(Duration::from_millis(300));
        let request = get(1, "k");
        let started = Instant::now();
        let answer = quick.call_batch(&[(&peer.addr, &request)]);
        let waited = started.elapsed();
        assert!(
            matches!(answer[0], Err(Error::Unanswered { .. })),
            "{answer:?}"
        );
        assert!(waited >= Duration::from_millis(300), "{waited:?}");

        let slow = Arc::new(pool(Duration::from_secs(30)));
        let waiting = {
            let (slow, addr) = (Arc::clone(&slow), peer.addr.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = slow.call_batch(&[(&addr, &get(2, "k"))]);
                (started.elapsed(), answer)
            })
        };
        // Severed until the call returns: a sever that comes before its request is written
        // only sends it onto a fresh link, which the next sever cuts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !waiting.is_finished() {
            assert!(Instant::now() < deadline, "sever did not end the call");
            slow.sever(&peer.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        let (waited, answer) = waiting.join().unwrap();
        assert!(answer[0].is_err(), "{answer:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }

    #[test]
    fn a_peer_at_its_limit_is_busy() {
        let peer = fake_peer(Peer::Busy);
        let pool = pool(Duration::from_secs(5));
        let answers = pool.call_batch(&[(&peer.addr, &get(1, "a")), (&peer.addr, &get(2, "b"))]);
        for answer in &answers {
            assert!(matches!(answer, Err(Error::Busy { .. })), "{answers:?}");
        }
    }

    #[test]
    fn a_refused_connection_fails_each_call() {
        let addr = closed_addr();
        let pool = pool(Duration::from_secs(5));
        let answers = pool.call_batch(&[(&addr, &get(1, "a")), (&addr, &get(2, "b"))]);
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
    }

    #[test]
    fn a_completion_named_after_every_answer_is_in_runs_at_once_in_the_naming_thread() {
        let addr = closed_addr();
        let pool = pool(Duration::from_secs(5));
        // A refused connection fails both requests before `call_batch_start` returns.
        let (a, b) = (get(1, "a"), get(2, "b"));
        let sending = pool.call_batch_start(&[(&addr, a.borrowed()), (&addr, b.borrowed())]);
        let here = std::thread::current().id();
        let ran = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&ran);
        sending.then(Box::new(move |answers, unsent| {
            let failed = answers.iter().filter(|a| a.is_err()).count();
            *lock(&seen) = Some((std::thread::current().id(), failed, unsent.len()));
        }));
        let ran = lock(&ran).take();
        assert_eq!(
            ran,
            Some((here, 2, 0)),
            "ran before `then` returned, in this thread"
        );

        // A batch of none has nothing to wait for either.
        let (done, got) = std::sync::mpsc::channel();
        pool.call_batch_start(&[])
            .then(Box::new(move |answers, unsent| {
                done.send((answers.len(), unsent.len())).unwrap()
            }));
        assert_eq!(got.try_recv(), Ok((0, 0)));
    }
}
