//! Buffered reading and writing of frames on one socket.
//!
//! [`FrameReader`] turns a byte stream into frames, holding partial input between reads; it never
//! buffers more than the frame limit. [`Connection`] is an outgoing connection (client to
//! frontend, frontend to backend, backend to backend) that sends requests and reads answers.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::{Held, MemoryBudget};
use crate::error::{Error, Result};
use crate::protocol::{self, Frame, FrameError, Limits, Status};

/// Socket timeouts. Every socket ringkv opens or accepts gets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a connect may take.
    pub connect: Duration,
    /// How long one read or write may block while a request or answer is in flight.
    pub io: Duration,
    /// How long a server keeps a connection that sends nothing between frames.
    pub idle: Duration,
    /// How long a frame may take to arrive once its first byte has; a stalled half-frame is
    /// dropped after this.
    pub frame: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            frame: Duration::from_secs(10),
        }
    }
}

/// Why [`FrameReader::read_frame`] returned without a frame.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a frame; `request_id` is read from the header when it got that far.
    Frame { error: FrameError, request_id: u64 },
    /// The socket's read timeout passed with nothing buffered (or, for
    /// [`FrameReader::read_frame_if_prompt`], with no whole frame): the peer is idle.
    Idle,
    /// Part of a frame arrived and the rest did not come in time.
    Stalled { buffered: usize },
    /// The peer closed the connection half-way through a frame.
    Truncated { buffered: usize },
    /// The frame needs more buffer than the process's in-flight budget had room for before its
    /// deadline ([`crate::budget`]); the rest of it was not read.
    OverBudget { request_id: u64, buffered: usize },
    /// Any other socket error.
    Io(io::Error),
}

/// Byte buffers of requests already answered, for a connection's thread to read its next
/// requests into. That thread allocates every request's key and value, and the thread that
/// finishes the batch would free them: so the first never finds freed memory in its
/// allocator's per-thread cache, and the second overflows its own; both take the allocator's
/// slow path, and with it the lock of an arena shared with other threads. Bounded: at most
/// [`SpareBuffers::MOST`] buffers of at most [`SpareBuffers::LARGEST`] bytes, and
/// [`SpareBuffers::BYTES`] in all.
#[derive(Default)]
pub struct SpareBuffers {
    /// The next to be taken last.
    buffers: Vec<Vec<u8>>,
    /// The capacity of `buffers` in all.
    bytes: usize,
}

impl SpareBuffers {
    /// The largest buffer kept: a larger one is freed.
    pub const LARGEST: usize = 512;
    /// The most buffers kept.
    pub const MOST: usize = 256;
    /// The most bytes kept in all.
    pub const BYTES: usize = 8 * 1024;

    /// Keeps the keys and values of `requests` there is room for, taken in request order
    /// (the first request's key first), so that a like request finds a buffer of its size.
    pub fn keep_from(&mut self, requests: &mut [Frame]) {
        for request in requests.iter_mut().rev() {
            self.keep(&mut request.value);
            self.keep(&mut request.key);
        }
    }

    fn keep(&mut self, buffer: &mut Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity == 0
            || capacity > Self::LARGEST
            || self.bytes + capacity > Self::BYTES
            || self.buffers.len() >= Self::MOST
        {
            return;
        }
        self.bytes += capacity;
        self.buffers.push(std::mem::take(buffer));
    }

    /// A kept buffer holding `bytes`, or a new one if none is kept (or `bytes` is empty,
    /// which needs no buffer).
    pub fn filled_with(&mut self, bytes: &[u8]) -> Vec<u8> {
        if bytes.is_empty() {
            return Vec::new();
        }
        match self.take() {
            Some(mut buffer) => {
                buffer.extend_from_slice(bytes);
                buffer
            }
            None => bytes.to_vec(),
        }
    }

    /// A kept buffer, empty, if there is one.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let mut buffer = self.buffers.pop()?;
        self.bytes -= buffer.capacity();
        buffer.clear();
        Some(buffer)
    }

    /// Whether no buffer is kept.
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Moves `other`'s buffers here, as many as there is room for (all of them, if this holds
    /// none: the usual case, with no copying).
    pub fn take_from(&mut self, other: &mut SpareBuffers) {
        if self.buffers.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        while let Some(mut buffer) = other.buffers.pop() {
            other.bytes -= buffer.capacity();
            self.keep(&mut buffer);
        }
    }
}

/// Reads frames from a byte stream, keeping what has arrived of the next one.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
    frame_deadline: Duration,
    /// When the first byte of the frame now being assembled arrived.
    frame_started: Option<Instant>,
    /// When the last read returned: the bytes buffered behind a decoded frame arrived then, so
    /// the next frame's time starts there without reading the clock once per frame.
    last_read: Instant,
    /// What `buf` counts against the in-flight budget, if it counts.
    held: Held,
    /// Buffers handed back by the thread that finished earlier frames, to decode into.
    spare: SpareBuffers,
}

const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    /// A reader that refuses frames over `max_frame` bytes and gives up on a frame that takes
    /// longer than `frame_deadline` to arrive.
    pub fn new(max_frame: usize, frame_deadline: Duration) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame,
            frame_deadline,
            frame_started: None,
            last_read: Instant::now(),
            held: Held::exempt(),
            spare: SpareBuffers::default(),
        }
    }

    /// Counts the buffer, beyond a small allowance, against `budget` ([`crate::budget`]): a
    /// frame that needs more waits for room until its deadline, and is refused if none comes.
    pub fn count_against(&mut self, budget: Arc<MemoryBudget>) {
        self.held = Held::in_budget(budget);
        self.held.cover_now(self.buf.len());
    }

    /// No longer counts against a budget (the peer turned out to be a cluster member).
    pub fn exempt_from_budget(&mut self) {
        self.held.exempt_from_now();
    }

    /// The buffers it decodes keys and values into before it allocates any: a connection's
    /// thread fills them with those of its requests that another thread answered.
    pub fn spare(&mut self) -> &mut SpareBuffers {
        &mut self.spare
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// True when a whole frame is already buffered, so the next `read_frame` will not block.
    pub fn has_buffered_frame(&self) -> bool {
        matches!(
            protocol::frame_len(&self.buf[self.start..self.end], self.max_frame),
            Ok(Some(total)) if total <= self.buffered()
        )
    }

    /// The next frame: `Ok(None)` when the peer closed the connection cleanly between frames.
    /// A read timeout with part of a frame buffered keeps waiting, up to the frame deadline.
    pub fn read_frame<R: Read>(
        &mut self,
        src: &mut R,
    ) -> std::result::Result<Option<Frame>, ReadError> {
        self.read(src, true)
    }

    /// Like [`FrameReader::read_frame`], but a read timeout returns [`ReadError::Idle`] even with
    /// part of a frame buffered: for a thread that only serves a connection while it is busy.
    /// The part is kept, and its frame deadline keeps running.
    pub fn read_frame_if_prompt<R: Read>(
        &mut self,
        src: &mut R,
    ) -> std::result::Result<Option<Frame>, ReadError> {
        self.read(src, false)
    }

    fn read<R: Read>(
        &mut self,
        src: &mut R,
        patient: bool,
    ) -> std::result::Result<Option<Frame>, ReadError> {
        loop {
            let pending = &self.buf[self.start..self.end];
            let spare = &mut self.spare;
            match protocol::decode_with(pending, self.max_frame, |bytes| spare.filled_with(bytes)) {
                Ok(Some((frame, used))) => {
                    self.start += used;
                    self.frame_started = if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                        if self.buf.len() > 4 * READ_CHUNK {
                            self.buf = Vec::new();
                            self.held.release();
                        }
                        None
                    } else {
                        Some(self.last_read)
                    };
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(ReadError::Frame {
                        request_id: protocol::peek_request_id(pending),
                        error,
                    })
                }
            }
            // `frame_len` has been checked against the limit by `decode`.
            let needed = match protocol::frame_len(pending, self.max_frame) {
                Ok(Some(total)) => total,
                _ => protocol::LEN_PREFIX,
            };
            if let Some(started) = self.frame_started {
                if started.elapsed() > self.frame_deadline {
                    return Err(ReadError::Stalled {
                        buffered: self.buffered(),
                    });
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // Memory follows the bytes that arrive, not the length a peer announces: the buffer
            // grows to at most twice what it holds (and a chunk), however large the frame.
            let ahead = self.end + READ_CHUNK.min(self.max_frame);
            let want = needed.max(ahead).min(self.end + READ_CHUNK.max(self.end));
            if self.buf.len() < want {
                // A patient reader waits for room until the frame's deadline; one that serves
                // only while the connection is busy leaves the wait to the connection's thread.
                let deadline = match (patient, self.frame_started) {
                    (true, Some(started)) => Some(started + self.frame_deadline),
                    _ => None,
                };
                if !self.held.cover(want, deadline) {
                    if !patient {
                        return Err(ReadError::Idle);
                    }
                    return Err(ReadError::OverBudget {
                        request_id: protocol::peek_request_id(&self.buf[..self.end]),
                        buffered: self.end,
                    });
                }
                self.buf.resize(want, 0);
            }
            match src.read(&mut self.buf[self.end..]) {
                Ok(0) if self.end == 0 => return Ok(None),
                Ok(0) => return Err(ReadError::Truncated { buffered: self.end }),
                Ok(n) => {
                    self.last_read = Instant::now();
                    if self.end == 0 {
                        self.frame_started = Some(self.last_read);
                    }
                    self.end += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    if self.end == 0 || !patient {
                        return Err(ReadError::Idle);
                    }
                    if self
                        .frame_started
                        .is_some_and(|s| s.elapsed() > self.frame_deadline)
                    {
                        return Err(ReadError::Stalled { buffered: self.end });
                    }
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// Connects to `addr` (host:port, resolved now) within `timeout`, trying each resolved address.
pub fn connect(addr: &str, timeouts: &Timeouts) -> Result<TcpStream> {
    let resolved = addr.to_socket_addrs().map_err(|source| Error::Connect {
        addr: addr.to_string(),
        source,
    })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for sock_addr in resolved {
        match TcpStream::connect_timeout(&sock_addr, timeouts.connect) {
            Ok(stream) => {
                let configured = stream
                    .set_read_timeout(Some(timeouts.io))
                    .and_then(|_| stream.set_write_timeout(Some(timeouts.io)))
                    .and_then(|_| stream.set_nodelay(true));
                return match configured {
                    Ok(()) => Ok(stream),
                    Err(source) => Err(Error::Connect {
                        addr: addr.to_string(),
                        source,
                    }),
                };
            }
            Err(e) => last = e,
        }
    }
    Err(Error::Connect {
        addr: addr.to_string(),
        source: last,
    })
}

/// An outgoing connection that sends requests and reads their answers, in order.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    reader: FrameReader,
    out: Vec<u8>,
    /// Keeps the socket in its owner's registry while the connection lives, so that the owner
    /// can cut it from another thread (a peer declared dead).
    _registered: Option<crate::server::Registered>,
}

impl Connection {
    /// Connects to `addr` with the given timeouts; answers over `limits.max_frame` are refused.
    pub fn open(addr: &str, timeouts: &Timeouts, limits: &Limits) -> Result<Connection> {
        let stream = connect(addr, timeouts)?;
        Ok(Connection {
            addr: addr.to_string(),
            stream,
            reader: FrameReader::new(limits.max_frame, timeouts.io),
            out: Vec::new(),
            _registered: None,
        })
    }

    /// Puts the socket in `registry` for as long as the connection lives.
    pub(crate) fn register_in(&mut self, registry: &std::sync::Arc<crate::server::Registry>) {
        self._registered = Some(registry.register(&self.stream));
    }

    /// Its socket and reader, for a connection whose reads and writes go on in two threads
    /// from now on ([`crate::mux`]).
    pub(crate) fn into_parts(self) -> (TcpStream, FrameReader) {
        (self.stream, self.reader)
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket, for splitting reads and writes across threads.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Queues `frame`; it goes out with the next [`flush`](Connection::flush).
    pub fn send(&mut self, frame: &Frame) {
        frame.encode_into(&mut self.out);
    }

    /// Writes every queued frame.
    pub fn flush(&mut self) -> Result<()> {
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        result.map_err(|e| self.io_error(e))
    }

    /// Reads the next answer.
    pub fn recv(&mut self) -> Result<Frame> {
        match self.reader.read_frame(&mut self.stream) {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) | Err(ReadError::Truncated { .. }) => Err(Error::Closed {
                addr: self.addr.clone(),
            }),
            Err(ReadError::Frame { error, .. }) => Err(Error::Frame {
                addr: self.addr.clone(),
                source: error,
            }),
            Err(ReadError::Idle)
            | Err(ReadError::Stalled { .. })
            | Err(ReadError::OverBudget { .. }) => Err(self.io_error(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within the i/o timeout",
            ))),
            Err(ReadError::Io(e)) => Err(self.io_error(e)),
        }
    }

    /// Sends `request` and reads its answer, checking that the answer carries the same id.
    pub fn call(&mut self, request: &Frame) -> Result<Frame> {
        self.send(request);
        self.flush()?;
        self.recv_answer(request)
    }

    /// Whether a connection that sat idle can carry another request: the peer has not closed
    /// it and has sent nothing unasked. Checked before reuse so that a request is never sent
    /// on a connection already known to be dead, and so never needs sending twice.
    pub fn is_reusable(&mut self) -> bool {
        if !self.out.is_empty() || self.reader.buffered() > 0 {
            return false;
        }
        peer_is_quiet(&self.stream)
    }

    /// Reads the answer to `request`, checking that it carries the same id.
    pub fn recv_answer(&mut self, request: &Frame) -> Result<Frame> {
        let answer = self.recv()?;
        // A server at its connection limit answers a new connection so before it reads a
        // thing: not an answer to this request, and not a broken peer.
        if answer.opcode.0 == 0 && answer.status == Status::BUSY && answer.request_id == 0 {
            return Err(Error::Busy {
                addr: self.addr.clone(),
                message: answer.message(),
            });
        }
        if answer.request_id != request.request_id {
            return Err(Error::Mismatch {
                addr: self.addr.clone(),
                expected: request.request_id,
                got: answer.request_id,
            });
        }
        Ok(answer)
    }

    /// Reads answers from `self` while `frames` are written on a second thread, so that neither
    /// side can fill its socket buffer and wait for the other forever.
    pub fn pipeline(&mut self, frames: &[Frame]) -> Result<Vec<Frame>> {
        let mut writer = self.stream.try_clone().map_err(|e| self.io_error(e))?;
        let addr = self.addr.clone();
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || -> Result<()> {
                let mut out = Vec::with_capacity(READ_CHUNK);
                for frame in frames {
                    frame.encode_into(&mut out);
                    if out.len() >= READ_CHUNK {
                        writer.write_all(&out).map_err(|source| Error::Io {
                            addr: addr.clone(),
                            source,
                        })?;
                        out.clear();
                    }
                }
                writer
                    .write_all(&out)
                    .map_err(|source| Error::Io { addr, source })
            });
            let mut answers = Vec::with_capacity(frames.len());
            let mut failure = None;
            for request in frames {
                match self.recv() {
                    Ok(answer) if answer.request_id == request.request_id => answers.push(answer),
                    Ok(answer) => {
                        failure = Some(Error::Mismatch {
                            addr: self.addr.clone(),
                            expected: request.request_id,
                            got: answer.request_id,
                        });
                        break;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_some() {
                // Unblock the writer if it is stuck on a full socket.
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
            }
            let sent = sender.join().unwrap_or_else(|_| {
                Err(Error::Closed {
                    addr: self.addr.clone(),
                })
            });
            match failure {
                Some(e) => Err(e),
                None => sent.map(|()| answers),
            }
        })
    }
}

/// A one-byte `recv(MSG_PEEK | MSG_DONTWAIT)` of `stream`: what recv returned (1 data waiting,
/// 0 the peer closed, -1 with WouldBlock nothing yet). It neither reads nor changes the socket's
/// mode, so a thread blocked reading the socket is not disturbed, where std's `peek` would need
/// it switched to non-blocking and back (three calls).
#[cfg(unix)]
fn peek_one(stream: &TcpStream) -> (isize, io::ErrorKind) {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: the descriptor belongs to `stream`, which outlives the call, and the buffer is
    // one byte that lives on this stack frame; recv writes at most one byte into it.
    let received = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let kind = if received < 0 {
        io::Error::last_os_error().kind()
    } else {
        io::ErrorKind::Other
    };
    (received, kind)
}

/// Whether `stream`'s peer has neither closed it nor sent anything (checked on every request
/// forwarded over a pooled connection).
#[cfg(unix)]
fn peer_is_quiet(stream: &TcpStream) -> bool {
    matches!(peek_one(stream), (-1, io::ErrorKind::WouldBlock))
}

/// Whether the peer has closed `stream` (its end of file is already in).
#[cfg(unix)]
pub(crate) fn peer_has_closed(stream: &TcpStream) -> bool {
    peek_one(stream).0 == 0
}

/// Elsewhere a peek would need the socket made non-blocking, under a reader: never checked.
#[cfg(not(unix))]
pub(crate) fn peer_has_closed(_stream: &TcpStream) -> bool {
    false
}

#[cfg(not(unix))]
fn peer_is_quiet(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let quiet = matches!(
        stream.peek(&mut byte),
        Err(ref e) if e.kind() == io::ErrorKind::WouldBlock
    );
    stream.set_nonblocking(false).is_ok() && quiet
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Opcode;

    fn spare_put(key: &[u8], value: &[u8]) -> Frame {
        Frame::request(Opcode::PUT, 1, key.to_vec(), value.to_vec())
    }

    #[test]
    fn spare_buffers_keep_no_more_than_their_bounds() {
        let mut spare = SpareBuffers::default();
        let mut many: Vec<Frame> = (0..2 * SpareBuffers::MOST)
            .map(|i| spare_put(format!("{i:04}").as_bytes(), b""))
            .collect();
        spare.keep_from(&mut many);
        assert_eq!(spare.buffers.len(), SpareBuffers::MOST);
        let mut large: Vec<Frame> = (0..64)
            .map(|_| spare_put(&[1; SpareBuffers::LARGEST], b""))
            .collect();
        let mut other = SpareBuffers::default();
        other.keep_from(&mut large);
        assert!(other.bytes <= SpareBuffers::BYTES);
        assert_eq!(
            other.buffers.len(),
            SpareBuffers::BYTES / SpareBuffers::LARGEST
        );
        // Moved into one that holds some: only what fits.
        spare.take();
        spare.take_from(&mut other);
        assert!(spare.buffers.len() <= SpareBuffers::MOST);
        assert!(spare.bytes <= SpareBuffers::BYTES);
        assert!(other.is_empty() && other.bytes == 0);
        let total: usize = spare.buffers.iter().map(Vec::capacity).sum();
        assert_eq!(total, spare.bytes);
    }

    #[test]
    fn frames_are_decoded_into_spare_buffers_before_new_ones() {
        let mut bytes = Vec::new();
        Frame::request(Opcode::PUT, 7, b"key".to_vec(), b"value".to_vec()).encode_into(&mut bytes);
        Frame::request(Opcode::GET, 8, b"other".to_vec(), Vec::new()).encode_into(&mut bytes);
        let mut reader = FrameReader::new(1 << 20, Duration::from_secs(5));
        let mut answered = vec![spare_put(&[0; 30], &[0; 60])];
        reader.spare().keep_from(&mut answered);
        let mut src = &bytes[..];
        let first = reader.read_frame(&mut src).unwrap().unwrap();
        assert_eq!(
            (&first.key[..], &first.value[..]),
            (&b"key"[..], &b"value"[..])
        );
        assert_eq!((first.key.capacity(), first.value.capacity()), (30, 60));
        // An empty value takes no buffer; the rest are allocated as before.
        let second = reader.read_frame(&mut src).unwrap().unwrap();
        assert_eq!(
            (&second.key[..], second.value.capacity()),
            (&b"other"[..], 0)
        );
        assert!(reader.spare().is_empty());
    }

    /// Hands out its bytes a few at a time, like a slow socket.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn frames() -> Vec<Frame> {
        (0..20u64)
            .map(|i| {
                Frame::request(
                    Opcode::PUT,
                    i,
                    format!("k{i}").into_bytes(),
                    vec![i as u8; (i * 997) as usize],
                )
            })
            .collect()
    }

    #[test]
    fn reads_back_to_back_frames_in_any_chunking() {
        let frames = frames();
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode_into(&mut bytes);
        }
        for step in [1, 3, 41, 4096, 1 << 20] {
            let mut src = Trickle {
                data: bytes.clone(),
                at: 0,
                step,
            };
            let mut reader = FrameReader::new(1 << 20, Duration::from_secs(5));
            for f in &frames {
                assert_eq!(reader.read_frame(&mut src).unwrap().as_ref(), Some(f));
            }
            assert!(reader.read_frame(&mut src).unwrap().is_none());
        }
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let bytes = frames()[3].encode();
        let mut src = Trickle {
            data: bytes[..bytes.len() - 1].to_vec(),
            at: 0,
            step: 7,
        };
        let mut reader = FrameReader::new(1 << 20, Duration::from_secs(5));
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(ReadError::Truncated { .. })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut bytes = frames()[0].encode();
        bytes[0..4].copy_from_slice(&(100_000_000u32).to_be_bytes());
        let mut src = Trickle {
            data: bytes[..8].to_vec(),
            at: 0,
            step: 8,
        };
        let mut reader = FrameReader::new(1 << 20, Duration::from_secs(5));
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(ReadError::Frame {
                error: FrameError::TooLarge { .. },
                ..
            })
        ));
        assert!(reader.buf.len() <= READ_CHUNK);
    }

    #[test]
    fn a_connection_the_peer_closed_or_wrote_to_is_not_reused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let timeouts = Timeouts::default();
        let limits = Limits::default();

        let mut open = Connection::open(&addr, &timeouts, &limits).unwrap();
        let (_kept, _) = listener.accept().unwrap();
        assert!(open.is_reusable());

        let mut closed = Connection::open(&addr, &timeouts, &limits).unwrap();
        drop(listener.accept().unwrap());
        let mut chatty = Connection::open(&addr, &timeouts, &limits).unwrap();
        let (mut talker, _) = listener.accept().unwrap();
        talker.write_all(b"unasked").unwrap();
        // The FIN and the bytes travel asynchronously; wait until the client side can see them
        // (a blocking peek returns as soon as either arrives).
        let mut byte = [0u8; 1];
        closed.stream().peek(&mut byte).unwrap();
        chatty.stream().peek(&mut byte).unwrap();
        assert!(!closed.is_reusable());
        assert!(!chatty.is_reusable());
        assert!(open.is_reusable(), "checking twice changes nothing");
    }
}
