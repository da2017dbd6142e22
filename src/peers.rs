//! Persistent, pooled connections to other servers (frontend to backends, backend to backend).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::auth::Credentials;
use crate::connection::{Connection, Timeouts};
use crate::error::{Error, Result};
use crate::mux::MuxPool;
use crate::protocol::{Frame, FrameRef, Limits};
use crate::server::Registry;

/// Idle connections kept per peer; more are opened under load and closed after use.
const MAX_IDLE_PER_PEER: usize = 64;

/// Most request bytes written to one peer before its answers are read: well under the smallest
/// socket buffers, so a chunk never waits for the peer to read.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// One peer's share of a batch: its requests (indexes into the batch), cut into chunks.
struct PeerBatch<'a> {
    addr: &'a str,
    chunks: VecDeque<Vec<usize>>,
    chunk_bytes: usize,
    conn: Option<Result<Connection>>,
}

impl<'a> PeerBatch<'a> {
    fn new(addr: &'a str) -> PeerBatch<'a> {
        PeerBatch {
            addr,
            chunks: VecDeque::new(),
            chunk_bytes: 0,
            conn: None,
        }
    }

    fn push(&mut self, index: usize, request: &Frame) {
        let bytes = request.encoded_len();
        match self.chunks.back_mut() {
            Some(chunk) if self.chunk_bytes + bytes <= CHUNK_BYTES => {
                chunk.push(index);
                self.chunk_bytes += bytes;
            }
            _ => {
                self.chunks.push_back(vec![index]);
                self.chunk_bytes = bytes;
            }
        }
    }
}

/// A pool of open connections per peer address.
pub struct Peers {
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    /// Every open connection's socket, by peer, idle or in use: [`Peers::sever`] cuts them.
    open: Mutex<HashMap<String, Arc<Registry>>>,
    timeouts: Timeouts,
    limits: Limits,
    /// Presented on every new connection, so that the peer takes its peer-only requests.
    credentials: Credentials,
    /// With [`Peers::multiplexed`]: every call goes over a few shared links per peer instead.
    mux: Option<MuxPool>,
    /// With [`Peers::with_leaf_links`]: the calls of [`Peers::call_batch_to_leaves`].
    leaf_mux: Option<MuxPool>,
}

impl Peers {
    /// The key and value limits its connections accept (the server's own).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// An empty pool whose connections use `timeouts` and accept answers within `limits`.
    pub fn new(timeouts: Timeouts, limits: Limits) -> Peers {
        Peers {
            idle: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            timeouts,
            limits,
            credentials: Credentials::default(),
            mux: None,
            leaf_mux: None,
        }
    }

    /// The same pool, carrying every call over `links` shared connections per peer
    /// ([`crate::mux`]); 0 keeps a connection per call in flight.
    pub fn multiplexed(self, links: usize) -> Peers {
        let mux = (links > 0)
            .then(|| MuxPool::new(links, self.timeouts, self.limits, self.credentials.clone()));
        Peers { mux, ..self }
    }

    /// The same pool, carrying the calls of [`Peers::call_batch_to_leaves`] over `links` shared
    /// connections per peer; 0: as any other call. Call after
    /// [`with_credentials`](Peers::with_credentials): the links present the credentials the
    /// pool has now.
    pub fn with_leaf_links(self, links: usize) -> Peers {
        let leaf_mux = (links > 0)
            .then(|| MuxPool::new(links, self.timeouts, self.limits, self.credentials.clone()));
        Peers { leaf_mux, ..self }
    }

    /// [`call_batch`](Peers::call_batch) for calls the peer answers without waiting for any
    /// other node (a chain's tail applying a write): on shared links, if the pool has them, so
    /// that calls made at once by many threads go out in one write and arrive as one batch.
    /// Calls that may wait for another node must not use them: two such nodes could each
    /// hold a link the other's answer is queued behind.
    pub fn call_batch_to_leaves(&self, calls: &[(&str, &Frame)]) -> Vec<Result<Frame>> {
        match &self.leaf_mux {
            Some(mux) => mux.call_batch(calls),
            None => self.call_batch(calls),
        }
    }

    /// The same pool, presenting `credentials` (the cluster token, the password) on each
    /// connection it opens.
    pub fn with_credentials(self, credentials: Credentials) -> Peers {
        Peers {
            credentials,
            ..self
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Connection>>> {
        match self.idle.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A pooled connection to `addr` that is still open, dropping any found dead.
    fn take(&self, addr: &str) -> Option<Connection> {
        loop {
            let mut conn = self.lock().get_mut(addr).and_then(Vec::pop)?;
            if conn.is_reusable() {
                return Some(conn);
            }
            log::debug!("pooled connection to {addr} was closed by the peer; dropping it");
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.lock();
        let list = idle.entry(conn.addr().to_string()).or_default();
        if list.len() < MAX_IDLE_PER_PEER {
            list.push(conn);
        }
    }

    /// The timeouts its connections use.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends `request` to `addr` and returns the answer.
    ///
    /// A pooled connection is checked before use, but the peer may still close it in the
    /// instant before the request goes out; a request whose bytes could not be written is tried
    /// once more on a fresh connection. Once a request is written it is never sent again: the
    /// peer may have carried it out, and a repeated PUT or DELETE could undo a later one.
    pub fn call(&self, addr: &str, request: &Frame) -> Result<Frame> {
        if let Some(mux) = &self.mux {
            return mux.call_batch(&[(addr, request)]).pop().unwrap_or_else(|| {
                Err(Error::Unanswered {
                    addr: addr.to_string(),
                    reason: "not sent".into(),
                })
            });
        }
        if let Some(mut conn) = self.take(addr) {
            conn.send(request);
            match conn.flush() {
                Ok(()) => {
                    let answer = conn.recv_answer(request)?;
                    self.give_back(conn);
                    return Ok(answer);
                }
                Err(e) => log::debug!("pooled connection to {addr} failed ({e}); reconnecting"),
            }
        }
        let mut conn = self.connect(addr)?;
        let answer = conn.call(request)?;
        self.give_back(conn);
        Ok(answer)
    }

    /// The shared links, if calls are multiplexed: what [`MuxPool::call_batch_then`] needs.
    pub(crate) fn mux(&self) -> Option<&MuxPool> {
        self.mux.as_ref()
    }

    /// [`Peers::call_batch`] for frames whose key and value are borrowed: shared links encode
    /// them as they are, pooled connections take copies.
    pub fn call_batch_refs(&self, calls: &[(&str, FrameRef<'_>)]) -> Vec<Result<Frame>> {
        if let Some(mux) = &self.mux {
            return mux.call_batch_refs(calls);
        }
        let frames: Vec<Frame> = calls.iter().map(|(_, frame)| frame.to_frame()).collect();
        let calls: Vec<(&str, &Frame)> = calls
            .iter()
            .zip(&frames)
            .map(|((addr, _), frame)| (*addr, frame))
            .collect();
        self.call_batch(&calls)
    }

    /// Sends every `(addr, request)` and returns the answers in the same order: the requests for
    /// one peer go out together on one connection and their answers are read together, one round
    /// trip for many requests, and the peers work on their shares at the same time.
    ///
    /// A peer's requests go out in chunks of at most [`CHUNK_BYTES`] (or one bigger frame), and
    /// each chunk's answers are read before the next chunk is written: a chunk always fits in
    /// the socket buffers, so neither side can wait for the other forever. The retry rule is
    /// [`call`](Peers::call)'s: a chunk that could not be written on a pooled connection is sent
    /// once more on a fresh one; once written, never again. A failure fails that peer's requests
    /// from the failed chunk on, each with its own error.
    pub fn call_batch(&self, calls: &[(&str, &Frame)]) -> Vec<Result<Frame>> {
        if let Some(mux) = &self.mux {
            return mux.call_batch(calls);
        }
        let mut answers: Vec<Option<Result<Frame>>> = calls.iter().map(|_| None).collect();
        let mut groups: Vec<PeerBatch> = Vec::new();
        for (index, (addr, request)) in calls.iter().enumerate() {
            match groups.iter_mut().find(|g| g.addr == *addr) {
                Some(group) => group.push(index, request),
                None => {
                    let mut group = PeerBatch::new(addr);
                    group.push(index, request);
                    groups.push(group);
                }
            }
        }
        while groups.iter().any(|g| !g.chunks.is_empty()) {
            for group in groups.iter_mut().filter(|g| !g.chunks.is_empty()) {
                group.conn = self.write_chunk(group, calls);
            }
            for group in groups.iter_mut() {
                let Some(chunk) = group.chunks.pop_front() else {
                    continue;
                };
                // A peer at its connection limit refused the whole connection.
                let mut busy = None;
                let failure = match group.conn.take() {
                    Some(Ok(mut conn)) => {
                        let mut failure = None;
                        for &index in &chunk {
                            match conn.recv_answer(calls[index].1) {
                                Ok(answer) => answers[index] = Some(Ok(answer)),
                                Err(e) => {
                                    if let Error::Busy { message, .. } = &e {
                                        busy = Some(message.clone());
                                    }
                                    failure = Some(e.to_string());
                                    answers[index] = Some(Err(e));
                                    break;
                                }
                            }
                        }
                        if failure.is_none() {
                            group.conn = Some(Ok(conn));
                        }
                        failure
                    }
                    Some(Err(e)) => {
                        let message = e.to_string();
                        answers[chunk[0]] = Some(Err(e));
                        Some(message)
                    }
                    None => Some("no connection".to_string()),
                };
                if let Some(reason) = failure {
                    for index in group.chunks.drain(..).flatten().chain(chunk) {
                        if answers[index].is_none() {
                            let addr = group.addr.to_string();
                            answers[index] = Some(Err(match &busy {
                                Some(message) => Error::Busy {
                                    addr,
                                    message: message.clone(),
                                },
                                None => Error::Unanswered {
                                    addr,
                                    reason: reason.clone(),
                                },
                            }));
                        }
                    }
                }
            }
        }
        for group in groups {
            if let Some(Ok(conn)) = group.conn {
                self.give_back(conn);
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(Error::Unanswered {
                        addr: String::new(),
                        reason: "not sent".into(),
                    })
                })
            })
            .collect()
    }

    /// Writes `group`'s next chunk on its connection (a pooled one, or a fresh one when the
    /// pooled one fails before the chunk is out).
    fn write_chunk(
        &self,
        group: &mut PeerBatch,
        calls: &[(&str, &Frame)],
    ) -> Option<Result<Connection>> {
        let chunk = group.chunks.front()?;
        let write = |conn: &mut Connection| {
            for &index in chunk {
                conn.send(calls[index].1);
            }
            conn.flush()
        };
        let pooled = match group.conn.take() {
            Some(Ok(conn)) => Some(conn),
            _ => self.take(group.addr),
        };
        if let Some(mut conn) = pooled {
            match write(&mut conn) {
                Ok(()) => return Some(Ok(conn)),
                Err(e) => log::debug!(
                    "pooled connection to {} failed ({e}); reconnecting",
                    group.addr
                ),
            }
        }
        let fresh = self
            .connect(group.addr)
            .and_then(|mut conn| write(&mut conn).map(|()| conn));
        Some(fresh)
    }

    /// Closes every idle connection to `addr` (after the peer was found dead or restarted).
    pub fn forget(&self, addr: &str) {
        self.lock().remove(addr);
    }

    /// Cuts every connection to `addr`, idle or in use: a call waiting on a peer that was
    /// declared dead or hung fails now instead of at the end of its timeout.
    pub fn sever(&self, addr: &str) {
        for mux in self.mux.iter().chain(&self.leaf_mux) {
            mux.sever(addr);
        }
        self.forget(addr);
        let registry = self.registry_of(addr);
        registry.close_all();
    }

    fn registry_of(&self, addr: &str) -> Arc<Registry> {
        let mut open = match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(open.entry(addr.to_string()).or_default())
    }

    /// A new connection to `addr`, registered so that [`Peers::sever`] can cut it.
    fn connect(&self, addr: &str) -> Result<Connection> {
        let mut conn = Connection::open(addr, &self.timeouts, &self.limits)?;
        conn.register_in(&self.registry_of(addr));
        self.credentials.present(&mut conn, addr)?;
        Ok(conn)
    }

    /// A connection of its own to `addr` with `timeouts`, outside the pool, that has presented
    /// the token (for the view keeper, which must not wait as long as requests may).
    pub fn open_own(&self, addr: &str, timeouts: &Timeouts) -> Result<Connection> {
        let mut conn = Connection::open(addr, timeouts, &self.limits)?;
        self.credentials.present(&mut conn, addr)?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::tests::{fake_peer, Peer};
    use crate::protocol::Opcode;

    fn connections_accepted(peer: &crate::mux::tests::FakePeer) -> usize {
        match peer.accepted.lock() {
            Ok(accepted) => accepted.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    #[test]
    fn calls_to_leaves_from_many_threads_share_one_link_and_each_gets_its_answers() {
        let peer = fake_peer(Peer::Echo);
        let peers = Arc::new(Peers::new(Timeouts::default(), Limits::default()).with_leaf_links(1));
        let start = Arc::new(std::sync::Barrier::new(8));
        let callers: Vec<_> = (0..8)
            .map(|t| {
                let (peers, start, addr) =
                    (Arc::clone(&peers), Arc::clone(&start), peer.addr.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for round in 0..20 {
                        let requests: Vec<Frame> = (0..5)
                            .map(|i| {
                                let key = format!("{t}-{round}-{i}").into_bytes();
                                Frame::request(Opcode::CHAIN_PUT, i, key, b"v".to_vec())
                            })
                            .collect();
                        let calls: Vec<(&str, &Frame)> =
                            requests.iter().map(|r| (addr.as_str(), r)).collect();
                        let answers = peers.call_batch_to_leaves(&calls);
                        for (request, answer) in requests.iter().zip(answers) {
                            assert_eq!(answer.unwrap().value, request.key);
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        assert_eq!(connections_accepted(&peer), 1, "one shared link");

        // Without leaf links they are calls like any other, on pooled connections.
        let peer = fake_peer(Peer::Echo);
        let plain = Peers::new(Timeouts::default(), Limits::default());
        let request = Frame::request(Opcode::CHAIN_PUT, 1, b"k".to_vec(), b"v".to_vec());
        let answers = plain.call_batch_to_leaves(&[(peer.addr.as_str(), &request)]);
        assert_eq!(answers[0].as_ref().unwrap().value, b"k");
        assert_eq!(connections_accepted(&peer), 1);
    }
}
