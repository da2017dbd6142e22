//! The client library: one connection to a frontend (or, for debugging, a backend).

use std::time::{Duration, Instant};

use crate::auth::{Credentials, Password};
use crate::cluster::membership::Change;
use crate::cluster::token::ClusterToken;
use crate::connection::{Connection, Timeouts};
use crate::error::{Error, Result};
use crate::protocol::payload::{self, NodeReport, WriteTag};
use crate::protocol::{Frame, FrameError, Limits, Opcode, Status};
use crate::ring::View;

/// Timeouts, limits and password of a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one read or write may block.
    pub io_timeout: Duration,
    /// Largest answer accepted, in bytes on the wire.
    pub max_frame: usize,
    /// Presented (AUTH) on every connection opened, for servers started with `--require-auth`
    /// (a server without a password takes it too).
    pub password: Option<Password>,
}

impl ClientOptions {
    /// A framed connection to `addr` with these timeouts and limits, that has presented the
    /// password if there is one, for callers that drive the protocol themselves.
    pub fn open(&self, addr: &str) -> Result<Connection> {
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            io: self.io_timeout,
            ..Timeouts::default()
        };
        let limits = Limits {
            max_frame: self.max_frame,
            ..Limits::default()
        };
        let mut conn = Connection::open(addr, &timeouts, &limits)?;
        let credentials = Credentials {
            token: None,
            password: self.password.clone(),
        };
        credentials.present(&mut conn, addr)?;
        Ok(conn)
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        let timeouts = Timeouts::default();
        ClientOptions {
            connect_timeout: timeouts.connect,
            io_timeout: timeouts.io,
            max_frame: Limits::default().max_frame,
            password: None,
        }
    }
}

/// One request of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Put { key: Vec<u8>, value: Vec<u8> },
    Get { key: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// The answer to one pipelined request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// OK, NOT_FOUND or an error status.
    pub status: Status,
    /// GET's value; for an error status, the server's message.
    pub value: Vec<u8>,
    /// Relays the request took between backends.
    pub hops: u16,
}

impl Reply {
    /// The reply as a result: an error status becomes [`Error::Status`].
    pub fn into_result(self) -> Result<Option<Vec<u8>>> {
        match self.status {
            Status::OK => Ok(Some(self.value)),
            Status::NOT_FOUND => Ok(None),
            status => Err(Error::Status {
                status,
                message: String::from_utf8_lossy(&self.value).into_owned(),
            }),
        }
    }
}

/// A connection to a ringkv server.
///
/// ```no_run
/// let mut client = ringkv::Client::connect("127.0.0.1:7000")?;
/// client.put(b"greeting", b"hello")?;
/// assert_eq!(client.get(b"greeting")?.as_deref(), Some(&b"hello"[..]));
/// # Ok::<(), ringkv::Error>(())
/// ```
///
/// [`put`](Client::put) and [`delete`](Client::delete) are *safe to retry*: they are sent as
/// PUT_ONCE and DELETE_ONCE under this client's random id and a sequence number, and when the
/// connection fails or times out, or the answer is UNAVAILABLE or BUSY, the client sends the same
/// write again (at most [`WRITE_ATTEMPTS`] times in all, on a new connection if the old one
/// broke). The servers apply it once and answer every copy with its first result.
pub struct Client {
    /// `None` after a failure, until the next request connects again.
    conn: Option<Connection>,
    addr: String,
    options: ClientOptions,
    next_id: u64,
    last_hops: u16,
    /// This client's id in write tags.
    client_id: u64,
    /// The sequence number of its next tagged write.
    next_seq: u64,
    /// Presented (PEER_AUTH) on every connection this client opens, for joins and leaves.
    cluster_token: Option<ClusterToken>,
}

/// Whether `change`, begun in view `begun`, is over in `view`, and how it ended.
fn outcome_in(view: &View, change: &Change, begun: u64) -> Option<std::result::Result<(), String>> {
    if view.epoch <= begun || view.is_moving() {
        return None;
    }
    let at = view.nodes.iter().position(|n| n == change.addr());
    let owning = view.owning();
    match (change, at) {
        (Change::Join(_), Some(at)) if owning[at] => Some(Ok(())),
        (Change::Join(addr), None) => Some(Err(format!(
            "the join of {addr} was called off (a partition it was to take would have had no \
             live member); see the frontend's log"
        ))),
        (Change::Leave(_), None) => Some(Ok(())),
        // Handed off, not yet taken out: a round of the keeper away.
        _ => None,
    }
}

/// Where a join or leave stands ([`Client::change_progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeProgress {
    /// The epoch of the view the frontend routes by.
    pub epoch: u64,
    /// Partitions whose chains are changing (0 once no move is under way).
    pub moving_partitions: usize,
    /// Partitions the receiving backends are to copy, and have copied, summed over them.
    pub partitions_planned: u64,
    pub partitions_copied: u64,
    /// Keys and bytes the backends have taken in by moves since they started.
    pub keys_copied: u64,
    pub bytes_copied: u64,
    /// `None` while the change runs; then whether it was carried out.
    pub outcome: Option<std::result::Result<(), String>>,
}

/// How many times [`Client::put`] and [`Client::delete`] send a write at most.
pub const WRITE_ATTEMPTS: u32 = 3;

/// Whether a write that failed with `error` may succeed when sent again: the connection broke
/// or timed out, or the server was at its connection limit. Not when the peer answered
/// something else than the request's answer, or bytes that are not a frame (it is not a
/// ringkv server, or a broken one: another try only waits on a new connection), or refused us.
fn is_worth_sending_again(error: &Error) -> bool {
    matches!(
        error,
        Error::Connect { .. } | Error::Io { .. } | Error::Closed { .. } | Error::Busy { .. }
    )
}

/// An answer with opcode 0: the server's refusal of the connection or of a malformed or
/// oversized frame, after which it closes the connection (PROTOCOL.md section 9).
fn is_connection_level(answer: &Frame) -> bool {
    answer.opcode.0 == 0 && !answer.status.is_success()
}

/// After writing `request` failed with `write_failed`: the server's answer refusing it, if the
/// server sent one before it closed the connection (PROTOCOL.md section 9: a client whose
/// write fails "SHOULD then still read, because the error answer may be waiting"). Only a
/// closed or reset connection is read from; one that timed out is not waited on again.
fn refusal_after_failed_write(
    conn: &mut Connection,
    request: &Frame,
    write_failed: &Error,
) -> Option<Frame> {
    let Error::Io { source, .. } = write_failed else {
        return None;
    };
    let closed_by_peer = matches!(
        source.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
    );
    if !closed_by_peer {
        return None;
    }
    let answer = conn.recv().ok()?;
    // The refusal names the request when the server had read its header, else request 0.
    let refuses_this_request = answer.request_id == request.request_id || answer.request_id == 0;
    (is_connection_level(&answer) && refuses_this_request).then_some(answer)
}

/// A sentence saying that the peer behind `error` is not a ringkv server, when the bytes it
/// sent cannot begin any ringkv frame: another protocol's greeting or error (an SSH banner, an
/// HTTP status line, a Redis `-ERR`) or another version of this one. `None` for every other
/// error, a corrupted frame or an answer over the client's frame limit among them.
pub fn not_a_ringkv_server(error: &Error) -> Option<String> {
    let Error::Frame { addr, source } = error else {
        return None;
    };
    match source {
        // A length prefix of printable text is at least 0x20202020 bytes (512 MiB): far over any
        // client's limit, and what a text protocol's first four characters read as.
        FrameError::TooLarge { len, .. } => {
            let prefix = len
                .checked_sub(crate::protocol::LEN_PREFIX as u64)
                .and_then(|prefix| u32::try_from(prefix).ok())?
                .to_be_bytes();
            let is_text = prefix
                .iter()
                .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
            is_text.then(|| {
                format!(
                    "{addr} is not a ringkv server: it answered with text beginning {:?}, not a \
                     ringkv frame",
                    String::from_utf8_lossy(&prefix)
                )
            })
        }
        FrameError::TooShort { .. } | FrameError::BadMagic { .. } | FrameError::BadKind { .. } => {
            Some(format!(
                "{addr} is not a ringkv server: its answer is not a ringkv frame ({source})"
            ))
        }
        FrameError::BadVersion { .. } => Some(format!(
            "{addr} is not a ringkv server of this version: {source}"
        )),
        FrameError::LengthMismatch { .. } | FrameError::BadCrc { .. } => None,
    }
}

impl Client {
    /// Connects with default timeouts.
    pub fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, ClientOptions::default())
    }

    /// Connects with the given timeouts and limits.
    pub fn connect_with(addr: &str, options: ClientOptions) -> Result<Client> {
        Ok(Client {
            conn: Some(options.open(addr)?),
            addr: addr.to_string(),
            options,
            next_id: 1,
            last_hops: 0,
            client_id: crate::rng::unique_id(),
            next_seq: 1,
            cluster_token: None,
        })
    }

    /// This client, presenting `token` (PEER_AUTH) on its connection now and on every one it
    /// opens later: joins and leaves need it when the cluster has a token.
    pub fn with_cluster_token(mut self, token: ClusterToken) -> Result<Client> {
        let mut conn = self.options.open(&self.addr)?;
        Client::present(&mut conn, &token)?;
        self.conn = Some(conn);
        self.cluster_token = Some(token);
        Ok(self)
    }

    fn present(conn: &mut Connection, token: &ClusterToken) -> Result<()> {
        let auth = Frame::request(Opcode::PEER_AUTH, 0, Vec::new(), token.as_bytes().to_vec());
        Client::expect_success(conn.call(&auth)?).map(drop)
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The id this client tags its writes with.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The connection, opened again if the last one failed.
    fn conn(&mut self) -> Result<&mut Connection> {
        if self.conn.is_none() {
            let mut conn = self.options.open(&self.addr)?;
            if let Some(token) = &self.cluster_token {
                Client::present(&mut conn, token)?;
            }
            self.conn = Some(conn);
        }
        match &mut self.conn {
            Some(conn) => Ok(conn),
            None => Err(Error::Config("no connection".into())),
        }
    }

    /// Sends `request` and reads its answer; a failed connection is dropped, so the next
    /// request opens a new one.
    ///
    /// A server that refuses a frame before reading all of it (over its frame limit, out of
    /// in-flight budget) answers and closes the connection while the rest is still being
    /// written, so the write fails. Its answer is waiting then, and says more than "broken
    /// pipe": it is returned as the answer (the connection is dropped all the same).
    fn exchange(&mut self, request: &Frame) -> Result<Frame> {
        let conn = self.conn()?;
        conn.send(request);
        let result = match conn.flush() {
            Ok(()) => conn.recv_answer(request),
            Err(write_failed) => match refusal_after_failed_write(conn, request, &write_failed) {
                Some(answer) => Ok(answer),
                None => Err(write_failed),
            },
        };
        let answered_and_open = match &result {
            Ok(answer) => !is_connection_level(answer),
            Err(_) => false,
        };
        if !answered_and_open {
            self.conn = None;
        }
        result
    }

    /// Relays taken by the last answered request.
    pub fn last_hops(&self) -> u16 {
        self.last_hops
    }

    fn frame(&mut self, opcode: Opcode, key: Vec<u8>, value: Vec<u8>) -> Frame {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        Frame::request(opcode, id, key, value)
    }

    fn call(&mut self, opcode: Opcode, key: &[u8], value: &[u8]) -> Result<Frame> {
        let request = self.frame(opcode, key.to_vec(), value.to_vec());
        let answer = self.exchange(&request)?;
        self.last_hops = answer.hops;
        Ok(answer)
    }

    /// A write under the next tag, sent until it is answered with something other than
    /// UNAVAILABLE or BUSY, or [`WRITE_ATTEMPTS`] times.
    fn tagged_write(&mut self, opcode: Opcode, key: &[u8], value: &[u8]) -> Result<Frame> {
        let mut tag = WriteTag {
            client: self.client_id,
            seq: self.next_seq,
            // Calls are made one at a time: every earlier write has its answer, or was given
            // up on, and is never sent again.
            below: self.next_seq,
            attempt: 1,
        };
        self.next_seq += 1;
        let started = Instant::now();
        let mut request = self.frame(opcode, key.to_vec(), tag.prefix(value));
        loop {
            let result = self.exchange(&request);
            let again = match &result {
                Ok(answer) => matches!(answer.status, Status::UNAVAILABLE | Status::BUSY),
                Err(e) => is_worth_sending_again(e),
            };
            let pause = Duration::from_millis(100) * tag.attempt;
            if !again
                || tag.attempt >= WRITE_ATTEMPTS
                || started.elapsed() + pause >= crate::cluster::dedup::RESEND_WITHIN
            {
                let answer = result?;
                self.last_hops = answer.hops;
                return Ok(answer);
            }
            std::thread::sleep(pause);
            tag = tag.resent();
            request = self.frame(opcode, key.to_vec(), tag.prefix(value));
        }
    }

    fn expect_success(answer: Frame) -> Result<Frame> {
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(Error::Status {
                status: answer.status,
                message: answer.message(),
            })
        }
    }

    /// Stores `value` under `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let answer = Client::expect_success(self.tagged_write(Opcode::PUT_ONCE, key, value)?)?;
        match answer.status {
            Status::OK => Ok(()),
            status => Err(Error::Status {
                status,
                message: "PUT answered NOT_FOUND".into(),
            }),
        }
    }

    /// The value stored under `key`, or `None`.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let answer = Client::expect_success(self.call(Opcode::GET, key, &[])?)?;
        Ok((answer.status == Status::OK).then_some(answer.value))
    }

    /// Removes `key`; true if it was stored.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let answer = Client::expect_success(self.tagged_write(Opcode::DELETE_ONCE, key, &[])?)?;
        Ok(answer.status == Status::OK)
    }

    /// Sends `update` of `key` (an UPDATE, sent once: an error answer may mean it took
    /// effect, as PROTOCOL.md says) and returns the answer's value.
    fn update(&mut self, key: &[u8], update: &crate::update::Update) -> Result<Vec<u8>> {
        let answer = Client::expect_success(self.call(Opcode::UPDATE, key, &update.encode())?)?;
        Ok(answer.value)
    }

    /// Adds `by` to the decimal integer stored under `key` (absent: 0), atomically at the
    /// key's head, and returns the sum (Redis's INCRBY).
    pub fn incr_by(&mut self, key: &[u8], by: i64) -> Result<i64> {
        let answer = self.update(key, &crate::update::Update::IncrBy(by))?;
        crate::update::decode_sum(&answer)
    }

    /// Stores `value` only if `key` is absent; true if it did (Redis's SETNX).
    pub fn put_if_absent(&mut self, key: &[u8], value: &[u8]) -> Result<bool> {
        let answer = self.update(key, &crate::update::Update::SetIfAbsent(value.to_vec()))?;
        crate::update::decode_stored(&answer)
    }

    /// Stores `value` only if `key` is present; true if it did (Redis's SET ... XX).
    pub fn put_if_present(&mut self, key: &[u8], value: &[u8]) -> Result<bool> {
        let answer = self.update(key, &crate::update::Update::SetIfPresent(value.to_vec()))?;
        crate::update::decode_stored(&answer)
    }

    /// Stores `value` and returns what it replaced (Redis's GETSET).
    pub fn get_and_put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        let answer = self.update(key, &crate::update::Update::GetSet(value.to_vec()))?;
        crate::update::decode_old(&answer)
    }

    /// Removes `key` and returns what it held (Redis's GETDEL).
    pub fn get_and_delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let answer = self.update(key, &crate::update::Update::GetDelete)?;
        crate::update::decode_old(&answer)
    }

    /// Appends `suffix` to the value under `key` (absent: empty); returns the new length.
    pub fn append(&mut self, key: &[u8], suffix: &[u8]) -> Result<u64> {
        let answer = self.update(key, &crate::update::Update::Append(suffix.to_vec()))?;
        crate::update::decode_len(&answer)
    }

    /// Stores `value` under `key` for `ttl` (rounded up to a millisecond), after which the
    /// key reads as absent and is removed: a PUT with a time to live (UPDATE set, section 7.7).
    /// A zero `ttl` is refused BAD_REQUEST.
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let set = crate::update::Update::Set {
            value: value.to_vec(),
            condition: crate::update::Condition::Always,
            ttl: crate::update::Ttl::Expires(crate::update::When::In(millis(ttl))),
            get_old: false,
        };
        let answer = self.update(key, &set)?;
        crate::update::decode_set(&answer, false).map(|_| ())
    }

    /// Gives `key` a time to live of `ttl` (Redis's PEXPIRE; zero deletes it); false if the
    /// key is absent.
    pub fn expire(&mut self, key: &[u8], ttl: Duration) -> Result<bool> {
        let expire = crate::update::Update::Expire {
            at: crate::update::When::In(millis(ttl)),
            condition: crate::update::ExpireCondition::Always,
        };
        let answer = self.update(key, &expire)?;
        crate::update::decode_stored(&answer)
    }

    /// Takes `key`'s time to live away; false if it had none or is absent (Redis's PERSIST).
    pub fn persist(&mut self, key: &[u8]) -> Result<bool> {
        let answer = self.update(key, &crate::update::Update::Persist)?;
        crate::update::decode_stored(&answer)
    }

    /// `key`'s time to live, as its head's clock reads it (Redis's PTTL).
    pub fn ttl(&mut self, key: &[u8]) -> Result<crate::update::TimeToLive> {
        let answer = self.update(key, &crate::update::Update::Ttl)?;
        crate::update::decode_ttl(&answer)
    }

    /// One step of a walk over every key (SCAN): the keys after `cursor` (0 to start) that
    /// match `pattern` (Redis glob; empty for all), about `count` of them, and the cursor to
    /// go on from (0 when the walk is done). A cursor is good only in the view it was made in:
    /// after a view change the step is refused STALE_VIEW, and the walk starts again.
    pub fn scan(&mut self, cursor: u64, count: u32, pattern: &[u8]) -> Result<(u64, Vec<Vec<u8>>)> {
        let value = crate::scan::encode_scan(cursor, count, pattern);
        let answer = Client::expect_success(self.call(Opcode::SCAN, &[], &value)?)?;
        crate::scan::decode_keys(&answer.value)
    }

    /// Every key that matches `pattern`, by SCAN steps of `count`; a walk cut short by a view
    /// change starts again (at most three times), so a key is never listed twice.
    pub fn scan_all(&mut self, pattern: &[u8], count: u32) -> Result<Vec<Vec<u8>>> {
        let mut restarts = 0;
        'walk: loop {
            let mut keys = Vec::new();
            let mut cursor = 0;
            loop {
                match self.scan(cursor, count, pattern) {
                    Ok((next, found)) => {
                        keys.extend(found);
                        if next == 0 {
                            return Ok(keys);
                        }
                        cursor = next;
                    }
                    Err(e) if e.status() == Status::STALE_VIEW && restarts < 3 => {
                        restarts += 1;
                        continue 'walk;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn reports(&mut self, opcode: Opcode) -> Result<Vec<NodeReport>> {
        let answer = Client::expect_success(self.call(opcode, &[], &[])?)?;
        payload::decode_reports(&answer.value)
    }

    /// Keys and bytes per node (counters `keys` and `bytes`). Through a frontend, one report per
    /// backend and a last one addressed `total`.
    pub fn size(&mut self) -> Result<Vec<NodeReport>> {
        self.reports(Opcode::SIZE)
    }

    /// Every counter per node, as [`size`](Client::size) lays them out.
    pub fn stats(&mut self) -> Result<Vec<NodeReport>> {
        self.reports(Opcode::STATS)
    }

    /// The view the server holds: members, routing, placement and epoch.
    pub fn view(&mut self) -> Result<View> {
        let answer = Client::expect_success(self.call(Opcode::VIEW_GET, &[], &[])?)?;
        payload::decode_view(answer.epoch, &answer.value)
    }

    /// Asks the view keeper (through its frontend) to add the backend at `addr`, which must be
    /// running, with no view of another cluster, and the cluster's token if it has one. Returns
    /// once the join has begun, with the epoch of the view that began it; the partitions then
    /// move in the background ([`change_progress`](Client::change_progress)).
    pub fn join(&mut self, addr: &str) -> Result<u64> {
        self.change(Opcode::MEMBER_JOIN, addr)
    }

    /// Asks the view keeper to hand off the partitions of the backend at `addr` and then take
    /// it out of the cluster; like [`join`](Client::join).
    pub fn leave(&mut self, addr: &str) -> Result<u64> {
        self.change(Opcode::MEMBER_LEAVE, addr)
    }

    fn change(&mut self, opcode: Opcode, addr: &str) -> Result<u64> {
        let answer = Client::expect_success(self.call(opcode, addr.as_bytes(), &[])?)?;
        let epoch = answer
            .value
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Error::Payload("a membership answer carries an epoch".into()))?;
        Ok(epoch)
    }

    /// Whether `change`, begun in view `begun`, is over, from the frontend's view alone (one
    /// VIEW_GET, cheap enough to ask often): `None` while it runs, then whether it was carried
    /// out.
    pub fn change_outcome(
        &mut self,
        change: &Change,
        begun: u64,
    ) -> Result<Option<std::result::Result<(), String>>> {
        let view = self.view()?;
        Ok(outcome_in(&view, change, begun))
    }

    /// Where `change`, begun in view `begun`, stands: from the frontend's view and the
    /// backends' handoff counters (a STATS of every backend, which costs each a pass over its
    /// keys: ask it every few seconds, and [`change_outcome`](Client::change_outcome) between).
    pub fn change_progress(&mut self, change: &Change, begun: u64) -> Result<ChangeProgress> {
        let view = self.view()?;
        let ring = crate::ring::Ring::new(view.clone())?;
        let mut progress = ChangeProgress {
            epoch: view.epoch,
            moving_partitions: crate::cluster::handoff::moving_partitions(&ring),
            partitions_planned: 0,
            partitions_copied: 0,
            keys_copied: 0,
            bytes_copied: 0,
            outcome: None,
        };
        for report in self.stats()?.iter().filter(|r| r.addr != "total") {
            let counter = |name: &str| {
                report
                    .counters
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, v)| *v)
            };
            progress.partitions_planned += counter("handoff_partitions_planned");
            progress.partitions_copied += counter("handoff_partitions_copied");
            progress.keys_copied += counter("handoff_keys");
            progress.bytes_copied += counter("handoff_bytes");
        }
        progress.outcome = outcome_in(&view, change, begun);
        Ok(progress)
    }

    /// Round-trip time of a PING.
    pub fn ping(&mut self) -> Result<Duration> {
        let started = Instant::now();
        Client::expect_success(self.call(Opcode::PING, &[], &[])?)?;
        Ok(started.elapsed())
    }

    /// Sends every request before reading the answers, which come back in request order. A
    /// request that fails on the server gets an error [`Reply`]; the call itself fails only when
    /// the connection does.
    pub fn pipeline(&mut self, requests: &[Request]) -> Result<Vec<Reply>> {
        let frames: Vec<Frame> = requests
            .iter()
            .map(|r| match r {
                Request::Put { key, value } => self.frame(Opcode::PUT, key.clone(), value.clone()),
                Request::Get { key } => self.frame(Opcode::GET, key.clone(), Vec::new()),
                Request::Delete { key } => self.frame(Opcode::DELETE, key.clone(), Vec::new()),
            })
            .collect();
        let answers = self.conn()?.pipeline(&frames);
        if answers.is_err() {
            self.conn = None;
        }
        let answers = answers?;
        if let Some(last) = answers.last() {
            self.last_hops = last.hops;
        }
        Ok(answers
            .into_iter()
            .map(|a| Reply {
                status: a.status,
                value: a.value,
                hops: a.hops,
            })
            .collect())
    }

    /// Sends an arbitrary frame and returns the raw answer (for tools and tests).
    pub fn raw_call(&mut self, request: &Frame) -> Result<Frame> {
        self.exchange(request)
    }
}

/// `ttl` in whole milliseconds, rounded up (so that only zero is zero), within i64.
fn millis(ttl: Duration) -> i64 {
    let nanos = ttl.as_nanos().div_ceil(1_000_000);
    i64::try_from(nanos).unwrap_or(i64::MAX)
}
