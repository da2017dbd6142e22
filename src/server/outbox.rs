//! A connection's answers when its handler answers later (the frontend over multiplexed
//! links, [`crate::mux`]): the connection's thread reads requests and hands them on without
//! waiting, and whichever thread finishes a batch (the reader of a backend link, most often)
//! writes the answers that are ready, in request order, straight to the client.
//!
//! That takes a thread wake-up off every request: the thread that read a backend's answer does
//! not hand it to a waiting thread to write; it writes it. Such a thread must never wait on one
//! client, so it only writes what the socket takes at once; what is left (a client slow to
//! read) is written by the connection's own thread, which is patient: it wakes often while
//! answers are owed (see [`SHORT_READ`]) and writes them with the full write timeout.

use std::collections::BTreeMap;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::budget::{Held, MemoryBudget};
use crate::connection::SpareBuffers;
use crate::protocol::{Frame, Opcode};

/// The connection thread's read timeout while answers are in flight or owed: how soon it
/// writes what a finishing thread could not write without waiting.
pub(crate) const SHORT_READ: Duration = Duration::from_millis(10);

/// How long a connection's thread waits for the answers of what it handed on before it gives
/// the connection up: the i/o timeout this many times. Every request is answered well within
/// it (an attempt fails at the i/o timeout, and a request is sent at most three times, each
/// after a view change of a second or two); it only bounds a wait that a fault of ours would
/// make endless.
pub(crate) const ANSWER_WAIT_IN_IO_TIMEOUTS: u32 = 10;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The answers of one connection on their way out.
pub(crate) struct Outbox {
    /// The connection's socket (a second handle on it), for writes that never wait.
    stream: TcpStream,
    state: Mutex<State>,
    /// Signalled when batches finish or writing stops, if the connection's thread waits.
    progressed: Condvar,
}

struct State {
    /// The number the next batch handed on gets.
    next_batch: u64,
    /// The batch whose answers go out next.
    next_out: u64,
    /// Batches finished ahead of an earlier one.
    finished: BTreeMap<u64, Finished>,
    /// Encoded answers not yet on the socket, in request order.
    out: Vec<u8>,
    /// Whether a thread is writing `out` (the others only append).
    writing: bool,
    /// Requests handed on and not yet answered.
    requests: usize,
    /// Set when a write failed: the connection is finished.
    broken: bool,
    /// Whether the connection's thread waits on `progressed`.
    waited_on: bool,
    /// What `out` counts against the in-flight budget.
    held: Held,
    /// The largest GET answer this connection was sent.
    largest_answer: usize,
    /// Buffers of answered requests, for the connection's thread to take.
    spare: SpareBuffers,
}

impl State {
    /// Batch `next_out`, of `requests` requests whose largest GET value is `largest`, has
    /// its answers in `out` (or dropped, once broken).
    fn next_is_out(&mut self, requests: usize, largest: usize) {
        self.next_out += 1;
        self.requests = self.requests.saturating_sub(requests);
        self.largest_answer = self.largest_answer.max(largest);
    }
}

/// A batch's encoded answers, finished ahead of an earlier batch.
struct Finished {
    bytes: Vec<u8>,
    /// The requests they answer.
    requests: usize,
    /// The largest GET answer among them.
    largest: usize,
}

/// The largest value among `answers` to GET.
pub(crate) fn largest_get(answers: &[Frame]) -> usize {
    answers
        .iter()
        .filter(|a| a.opcode == Opcode::GET)
        .map(|a| a.value.len())
        .max()
        .unwrap_or(0)
}

/// Appends `answers`, encoded, to `out`.
pub(crate) fn encode_frames(answers: &[Frame], out: &mut Vec<u8>) {
    out.reserve(answers.iter().map(Frame::encoded_len).sum());
    for answer in answers {
        answer.encode_into(out);
    }
}

/// Calls its finish once: with the handler's answers when they come ([`AnswerOnce::answer`]),
/// or with none if it is dropped first, as when the handler panicked or lost the batch. So a
/// batch handed on is always answered, and what the finish needs is kept in no shared slot.
pub(crate) struct AnswerOnce<F: FnOnce(Option<Vec<Frame>>, Vec<Frame>)> {
    finish: Option<F>,
}

impl<F: FnOnce(Option<Vec<Frame>>, Vec<Frame>)> AnswerOnce<F> {
    pub(crate) fn new(finish: F) -> AnswerOnce<F> {
        AnswerOnce {
            finish: Some(finish),
        }
    }

    /// Finishes with `answers`; `spent` are the requests they answer, if the handler gave
    /// them back (see [`crate::server::AnswersThen`]).
    pub(crate) fn answer(mut self, answers: Vec<Frame>, spent: Vec<Frame>) {
        if let Some(finish) = self.finish.take() {
            finish(Some(answers), spent);
        }
    }
}

impl<F: FnOnce(Option<Vec<Frame>>, Vec<Frame>)> Drop for AnswerOnce<F> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            if !std::thread::panicking() {
                // A panic is logged where it is caught.
                log::error!("a batch was dropped unanswered; answering INTERNAL");
            }
            finish(None, Vec::new());
        }
    }
}

impl Outbox {
    pub(crate) fn new(stream: TcpStream) -> Outbox {
        Outbox {
            stream,
            state: Mutex::new(State {
                next_batch: 0,
                next_out: 0,
                finished: BTreeMap::new(),
                out: Vec::new(),
                writing: false,
                requests: 0,
                broken: false,
                waited_on: false,
                held: Held::in_budget(MemoryBudget::process()),
                largest_answer: 0,
                spare: SpareBuffers::default(),
            }),
            progressed: Condvar::new(),
        }
    }

    /// Numbers a batch of `requests` about to be handed on.
    pub(crate) fn begin(&self, requests: usize) -> u64 {
        let mut state = lock(&self.state);
        state.requests += requests;
        state.next_batch += 1;
        state.next_batch - 1
    }

    /// The answers of batch `batch`, to `requests` requests, the largest GET value among
    /// them `largest`, as `encode` appends them: written, with every batch before it, as far
    /// as the socket takes them now. A batch finished twice keeps its first answers. The
    /// buffers of `spent`, the requests answered, are kept for
    /// [`take_spare`](Self::take_spare) as far as [`SpareBuffers`] has room.
    ///
    /// `encode` runs under the outbox's lock: for the batch that goes out next (most are),
    /// it encodes straight into what is written.
    pub(crate) fn finish(
        &self,
        batch: u64,
        requests: usize,
        largest: usize,
        mut spent: Vec<Frame>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        let mut state = lock(&self.state);
        if batch < state.next_out || state.finished.contains_key(&batch) {
            return;
        }
        if !state.broken {
            state.spare.keep_from(&mut spent);
        }
        // Once broken, nobody will write answers: they are not encoded.
        if batch == state.next_out {
            if !state.broken {
                encode(&mut state.out);
            }
            state.next_is_out(requests, largest);
        } else {
            let mut bytes = Vec::new();
            if !state.broken {
                encode(&mut bytes);
            }
            let answers = Finished {
                bytes,
                requests,
                largest,
            };
            state.finished.insert(batch, answers);
        }
        while let Some(done) = {
            let next = state.next_out;
            state.finished.remove(&next)
        } {
            state.next_is_out(done.requests, done.largest);
            if state.broken {
                continue;
            }
            if state.out.is_empty() {
                state.out = done.bytes;
            } else {
                state.out.extend_from_slice(&done.bytes);
            }
        }
        let owed = state.out.len();
        state.held.cover_now(owed);
        if state.writing || state.broken || owed == 0 {
            self.wake(&mut state);
            return;
        }
        state.writing = true;
        loop {
            let bytes = std::mem::take(&mut state.out);
            drop(state);
            let sent = send_now(&self.stream, &bytes);
            state = lock(&self.state);
            match sent {
                Ok(n) if n == bytes.len() => {
                    if state.out.is_empty() {
                        // Its room is kept for the next answers.
                        let mut bytes = bytes;
                        bytes.clear();
                        state.out = bytes;
                        break;
                    }
                }
                Ok(n) => {
                    // The client is slow to read: the rest is its own thread's to write.
                    let appended = std::mem::take(&mut state.out);
                    let mut rest = bytes;
                    rest.drain(..n);
                    rest.extend_from_slice(&appended);
                    state.out = rest;
                    break;
                }
                Err(e) => {
                    log::debug!("a connection's answers could not be written: {e}");
                    state.broken = true;
                    state.out = Vec::new();
                    break;
                }
            }
        }
        state.writing = false;
        let owed = state.out.len();
        state.held.cover_now(owed);
        self.wake(&mut state);
    }

    /// [`finish`](Self::finish) with the answers to a batch of frames.
    pub(crate) fn finish_frames(&self, batch: u64, answers: &[Frame]) {
        self.finish(
            batch,
            answers.len(),
            largest_get(answers),
            Vec::new(),
            |out| encode_frames(answers, out),
        );
    }

    /// Moves the buffers kept from answered requests into `spare`, as many as it has room for.
    pub(crate) fn take_spare(&self, spare: &mut SpareBuffers) {
        spare.take_from(&mut lock(&self.state).spare);
    }

    fn wake(&self, state: &mut State) {
        if state.waited_on {
            state.waited_on = false;
            self.progressed.notify_all();
        }
    }

    /// Whether requests are in flight or answers are being written or wait to be. (A thread
    /// writing holds the answers out of `out`, and may leave some of them owed.)
    pub(crate) fn busy(&self) -> bool {
        let state = lock(&self.state);
        state.requests > 0 || state.writing || !state.out.is_empty()
    }

    /// Whether a write failed, which ends the connection.
    pub(crate) fn broken(&self) -> bool {
        lock(&self.state).broken
    }

    /// The number of batches answered: every batch numbered below it.
    pub(crate) fn answered(&self) -> u64 {
        lock(&self.state).next_out
    }

    /// Requests handed on and not yet answered.
    pub(crate) fn requests_in_flight(&self) -> usize {
        lock(&self.state).requests
    }

    /// The largest GET answer this connection was sent.
    pub(crate) fn largest_answer(&self) -> usize {
        lock(&self.state).largest_answer
    }

    /// Takes the answers no thread is writing, for the connection's thread to write with the
    /// full write timeout; `None` if there are none (or another thread is writing them).
    pub(crate) fn take_owed(&self) -> Option<Vec<u8>> {
        let mut state = lock(&self.state);
        if state.writing || state.broken || state.out.is_empty() {
            return None;
        }
        state.writing = true;
        Some(std::mem::take(&mut state.out))
    }

    /// After [`take_owed`](Self::take_owed): the write is over, `failed` if it did not finish.
    pub(crate) fn owed_written(&self, failed: bool) {
        let mut state = lock(&self.state);
        state.writing = false;
        if failed {
            state.broken = true;
            state.out = Vec::new();
        }
        let owed = state.out.len();
        state.held.cover_now(owed);
        self.wake(&mut state);
    }

    /// Waits until no request is in flight and no thread is writing answers, or `until`
    /// passes; whether so. Answers owed end the wait too (false), for the caller to write them.
    pub(crate) fn wait_idle(&self, until: Instant) -> bool {
        let mut state = lock(&self.state);
        loop {
            if state.requests == 0 && !state.writing {
                return true;
            }
            let owed = !state.writing && !state.out.is_empty();
            let now = Instant::now();
            if state.broken || owed || now >= until {
                return false;
            }
            state.waited_on = true;
            state = match self.progressed.wait_timeout(state, until - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Writes with `write` (which says whether it wrote them all) the answers no other thread
    /// is writing, until there are none; false if the connection is finished.
    pub(crate) fn write_owed(&self, mut write: impl FnMut(Vec<u8>) -> bool) -> bool {
        while let Some(owed) = self.take_owed() {
            let written = write(owed);
            self.owed_written(!written);
            if !written {
                return false;
            }
        }
        !self.broken()
    }

    /// Waits until every batch handed on is answered and its answers written, writing what
    /// is owed meanwhile with `write` (as [`write_owed`](Self::write_owed)); false if the
    /// connection is finished or `until` passed first.
    pub(crate) fn drain(&self, until: Instant, mut write: impl FnMut(Vec<u8>) -> bool) -> bool {
        loop {
            if !self.write_owed(&mut write) {
                return false;
            }
            if !self.busy() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.wait_idle(until);
        }
    }

    /// A cluster member's connection counts against no budget.
    pub(crate) fn exempt_from_budget(&self) {
        lock(&self.state).held.exempt_from_now();
    }
}

/// Writes as much of `bytes` as the socket takes without waiting.
fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is a live, initialised buffer of `rest.len()` bytes, and `fd` is the
        // socket `stream` keeps open for the whole call.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => break,
            _ => return Err(error),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn answer(id: u64, value: Vec<u8>) -> Frame {
        Frame::request(Opcode::GET, id, b"k".to_vec(), Vec::new())
            .reply(crate::protocol::Status::OK, value)
    }

    /// A client's end of a loopback connection, and the server's.
    fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn read_answers(mut from: &TcpStream, n: usize) -> Vec<Frame> {
        let mut reader = crate::connection::FrameReader::new(64 << 20, Duration::from_secs(5));
        (0..n)
            .map(|_| reader.read_frame(&mut from).unwrap().unwrap())
            .collect()
    }

    #[test]
    fn batches_finished_out_of_order_are_written_in_order() {
        let (client, server) = connected();
        let outbox = Outbox::new(server);
        let first = outbox.begin(2);
        let second = outbox.begin(1);
        outbox.finish_frames(second, &[answer(3, b"c".to_vec())]);
        assert!(outbox.busy(), "the first batch is still out");
        let answers = [answer(1, b"a".to_vec()), answer(2, b"b".to_vec())];
        outbox.finish_frames(first, &answers);
        // Finished twice: the first answers stand.
        let again = [answer(9, Vec::new()), answer(9, Vec::new())];
        outbox.finish_frames(first, &again);
        assert!(!outbox.busy());
        let ids: Vec<u64> = read_answers(&client, 3)
            .iter()
            .map(|a| a.request_id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn what_the_socket_does_not_take_at_once_is_owed_to_the_connection_thread() {
        let (client, server) = connected();
        let outbox = Outbox::new(server.try_clone().unwrap());
        let big = vec![5u8; 16 << 20];
        let batch = outbox.begin(1);
        // Nobody reads: the finishing thread writes what fits and returns.
        outbox.finish_frames(batch, &[answer(1, big.clone())]);
        assert!(outbox.busy(), "answers are owed");
        let reader = std::thread::spawn(move || read_answers(&client, 1));
        let owed = outbox.take_owed().expect("owed bytes");
        assert!(outbox.take_owed().is_none(), "one writer at a time");
        (&server).write_all(&owed).unwrap();
        outbox.owed_written(false);
        assert!(!outbox.busy());
        let got = reader.join().unwrap();
        assert_eq!(got[0].value.len(), big.len());
        assert!(got[0].value == big);
    }

    #[test]
    fn a_batch_dropped_unanswered_is_finished_with_none_and_an_answered_one_once() {
        let (done, got) = std::sync::mpsc::channel();
        let sender = done.clone();
        let answered = AnswerOnce::new(move |answers: Option<Vec<Frame>>, _spent| {
            sender.send(answers.map(|a| a.len())).unwrap()
        });
        answered.answer(vec![answer(1, Vec::new())], Vec::new());
        assert_eq!(got.try_recv(), Ok(Some(1)));
        assert!(got.try_recv().is_err(), "finished once");
        // As when a handler panics holding the batch's completion.
        let lost = AnswerOnce::new(move |answers: Option<Vec<Frame>>, _spent| {
            done.send(answers.map(|a| a.len())).unwrap()
        });
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = lost;
            panic!("a handler failed");
        }));
        assert!(unwound.is_err());
        assert_eq!(got.try_recv(), Ok(None));
    }

    fn put(key: &[u8], value: &[u8]) -> Frame {
        Frame::request(Opcode::PUT, 1, key.to_vec(), value.to_vec())
    }

    #[test]
    fn answered_requests_leave_their_buffers_for_the_connection_thread_in_order() {
        let (_client, server) = connected();
        let outbox = Outbox::new(server);
        let batch = outbox.begin(2);
        let big = vec![0u8; SpareBuffers::LARGEST + 1];
        let spent = vec![put(b"k1", b"value-1"), put(b"key-2", &big)];
        let answers = [answer(1, Vec::new()), answer(2, Vec::new())];
        outbox.finish(batch, 2, 0, spent, |out| encode_frames(&answers, out));
        let mut spare = SpareBuffers::default();
        outbox.take_spare(&mut spare);
        // The first request's key first, then its value; a buffer over the largest is freed.
        let capacities: Vec<usize> = std::iter::from_fn(|| spare.take())
            .map(|b| {
                assert!(b.is_empty(), "handed out empty");
                b.capacity()
            })
            .collect();
        assert_eq!(capacities, [2, 7, 5]);
        let mut none = SpareBuffers::default();
        outbox.take_spare(&mut none);
        assert!(none.is_empty(), "taken once");
    }

    #[test]
    fn send_now_takes_what_fits_and_never_waits() {
        let (client, server) = connected();
        assert_eq!(send_now(&server, b"hello").unwrap(), 5);
        let mut got = [0u8; 5];
        (&client).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Nobody reads: the socket's buffers fill and the rest is left, at once.
        let big = vec![7u8; 64 << 20];
        let started = Instant::now();
        let n = send_now(&server, &big).unwrap();
        assert!(n > 0 && n < big.len(), "{n}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
