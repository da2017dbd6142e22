//! The frontend's Redis-protocol door: RESP2 requests (multibulk and inline) turned into protocol
//! frames for the frontend's [`Handler`], and its answers turned back into RESP replies.
//!
//! Commands: those of the table `COMMANDS` (GET, SET with its NX, XX, GET and expiry options,
//! the INCR family, SETEX, EXPIRE, TTL and the other time-to-live commands, SCAN, INFO, ...);
//! anything else is answered `-ERR unknown command`. Keys and values are the bytes the binary
//! protocol sees, so either door reads what the other wrote.
//!
//! Every request already received on a connection is answered with one
//! [`Handler::handle_batch`] call, so a pipeline of 16 SETs, or one MSET of 16 keys, is one batch
//! of 16 frames for the frontend to forward.
//!
//! How answers map to replies: OK is the command's reply (`+OK`, a bulk string, an integer or an
//! array); NOT_FOUND is a nil bulk for GET and MGET and counts 0 for DEL and EXISTS;
//! STORAGE_FULL is `-OOM STORAGE_FULL: <message>`; every other status is
//! `-ERR <STATUS>: <message>`. A command of several keys (DEL, EXISTS, MGET, MSET) whose frames
//! get an error is answered with the first error, and its other keys may have been changed.
//!
//! Malformed input is answered as Redis answers it: `-ERR Protocol error: ...`, then the
//! connection is closed after the replies before it have been written.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Session;
use crate::budget::{Held, MemoryBudget};
use crate::connection::SpareBuffers;
use crate::error::{Error, Result};
use crate::protocol::payload::{self, NodeReport};
use crate::protocol::{Frame, Limits, Opcode, Status};
use crate::server::outbox::{self, AnswerOnce, Outbox};
use crate::server::{
    value_reads_per_batch, write_all_within, Activity, Handler, RecentLargest, Registry,
    ServerHandle, ServerOptions,
};
use crate::update::{self, Condition, ExpireCondition, TimeToLive, Ttl, Update, When};

/// Most keys KEYS lists; past it, it is refused (SCAN walks any number).
const KEYS_LIMIT: usize = 100_000;

/// Longest inline request line, and longest `*N` or `$N` line, that is waited for (Redis's
/// PROTO_INLINE_MAX_SIZE): past it, the bytes cannot be a request.
pub const MAX_INLINE: usize = 64 * 1024;

/// Most arguments in one multibulk request (Redis's historic limit).
pub const MAX_ARGS: usize = 1024 * 1024;

/// Most requests answered as one batch, so answers to a deep pipeline start flowing early.
const MAX_BATCH_REQUESTS: usize = 128;

/// Frames past which no further request joins a batch (one MGET may bring more on its own).
const MAX_BATCH_FRAMES: usize = 1024;

/// Bytes read from the socket at a time, at least.
const READ_CHUNK: usize = 16 * 1024;

/// What one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most arguments of a multibulk request, the command name included.
    pub max_args: usize,
    /// Longest bulk string read at all: the binary frame limit (or the key or value limit, if
    /// longer). A key or value between its limit and this is read and answered TOO_LARGE.
    pub max_bulk: usize,
    /// Longest inline line and `*N` / `$N` line.
    pub max_inline: usize,
    /// Most bytes one request's arguments may take together, counting a small overhead per
    /// argument so that a million empty arguments count too.
    pub max_request: usize,
}

impl RequestLimits {
    /// The limits that go with the frontend's key, value and frame limits: one request may take
    /// as much memory as two of the largest binary frames.
    pub fn for_limits(limits: &Limits) -> RequestLimits {
        RequestLimits {
            max_args: MAX_ARGS,
            // Up to the binary protocol's frame limit, so that a key or value somewhat over its
            // limit is read and refused TOO_LARGE, and the connection kept, as there.
            max_bulk: limits.max_frame.max(limits.max_key).max(limits.max_value),
            max_inline: MAX_INLINE,
            max_request: limits.max_frame.saturating_mul(2),
        }
    }
}

/// Why the bytes received cannot be a request. The text follows Redis's, after
/// `Protocol error: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// An inline line longer than [`RequestLimits::max_inline`].
    InlineTooBig,
    /// An inline line with a quote that is not closed, or closed and not followed by a space.
    UnbalancedQuotes,
    /// A `*N` line with no end in sight.
    MultibulkCountTooBig,
    /// `*N` where N is not a number or is over [`RequestLimits::max_args`].
    InvalidMultibulkLength,
    /// A `$N` line with no end in sight.
    BulkCountTooBig,
    /// An argument of a multibulk request that does not start with `$`.
    ExpectedDollar(u8),
    /// `$N` where N is not a number, is negative or is over [`RequestLimits::max_bulk`].
    InvalidBulkLength,
    /// The arguments together are over [`RequestLimits::max_request`].
    RequestTooBig { limit: usize },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::InlineTooBig => f.write_str("too big inline request"),
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
            ProtocolError::MultibulkCountTooBig => f.write_str("too big mbulk count string"),
            ProtocolError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::BulkCountTooBig => f.write_str("too big bulk count string"),
            ProtocolError::ExpectedDollar(found) => {
                let shown = if found.is_ascii_graphic() || *found == b' ' {
                    *found as char
                } else {
                    ' '
                };
                write!(f, "expected '$', got '{shown}'")
            }
            ProtocolError::InvalidBulkLength => f.write_str("invalid bulk length"),
            ProtocolError::RequestTooBig { limit } => {
                write!(f, "request is over the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A multibulk request whose arguments are still arriving.
struct Multibulk {
    remaining: usize,
    /// The arguments so far: the first `filled`; past them, buffers of an earlier request
    /// that the next arguments are read into instead of fresh ones.
    args: Vec<Vec<u8>>,
    filled: usize,
    bytes: usize,
    /// The length of the bulk string whose `$N` line has been read and whose bytes have not.
    bulk_len: Option<usize>,
}

/// Turns the bytes of a connection into requests, holding partial input between reads. It keeps
/// the state of a multibulk request that is half in, so arguments arriving one read at a time
/// are each looked at once.
pub struct Parser {
    limits: RequestLimits,
    buf: Vec<u8>,
    /// Bytes of `buf` already turned into requests.
    pos: usize,
    partial: Option<Multibulk>,
    /// What the buffer and the arguments of a half-read request count against the in-flight
    /// budget, if they count ([`crate::budget`]).
    held: Held,
    /// Where a read of at most [`READ_CHUNK`] lands before its bytes join `buf`: zeroed once,
    /// where growing `buf` for each read would zero a chunk per read.
    chunk: Vec<u8>,
    /// An earlier request's argument list, given back by [`Parser::recycle`]: the next
    /// request is read into it, so that its list and short arguments the caller did not take
    /// (a command's name) are not allocated again.
    spare: Vec<Vec<u8>>,
    /// Buffers of answered requests to read arguments into ([`SpareBuffers`]).
    buffers: SpareBuffers,
}

/// Memory an argument takes besides its bytes, counted against [`RequestLimits::max_request`].
const ARG_OVERHEAD: usize = std::mem::size_of::<Vec<u8>>();

/// The most arguments, and the longest argument, a recycled list keeps for the next request:
/// enough for a command's name, little enough that an idle connection holds next to nothing.
const SPARE_ARGS: usize = 8;
const SPARE_ARG_BYTES: usize = 32;

impl Parser {
    /// A parser with nothing received yet.
    pub fn new(limits: RequestLimits) -> Parser {
        Parser {
            limits,
            buf: Vec::new(),
            pos: 0,
            partial: None,
            held: Held::exempt(),
            chunk: Vec::new(),
            spare: Vec::new(),
            buffers: SpareBuffers::default(),
        }
    }

    /// Takes back a request's argument list once the caller is done with it (arguments it
    /// moved out are left empty), to read the next request into.
    pub fn recycle(&mut self, mut args: Vec<Vec<u8>>) {
        if args.capacity() > SPARE_ARGS {
            return;
        }
        for arg in &mut args {
            if arg.capacity() > SPARE_ARG_BYTES {
                *arg = Vec::new();
            }
        }
        self.spare = args;
    }

    /// Counts what it holds, beyond a small allowance, against `budget`: see
    /// [`Parser::read_from_until`].
    pub fn count_against(&mut self, budget: Arc<MemoryBudget>) {
        self.held = Held::in_budget(budget);
    }

    /// Bytes it holds: the buffer, and the arguments of a request half in.
    fn holding(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |m| m.bytes)
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Reads once from `src` into the buffer; `Ok(0)` when the peer closed the connection.
    pub fn read_from<R: Read>(&mut self, src: &mut R) -> io::Result<usize> {
        self.read_from_until(src, None)
    }

    /// Like [`Parser::read_from`]; a parser that counts against a budget and needs more room
    /// than it has waits for it until `deadline` (`None`: not at all), and fails with
    /// [`io::ErrorKind::OutOfMemory`] if none comes, having read nothing.
    pub fn read_from_until<R: Read>(
        &mut self,
        src: &mut R,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        self.compact();
        let waiting_for = match &self.partial {
            Some(Multibulk {
                bulk_len: Some(len),
                ..
            }) => (len + 2).saturating_sub(self.buf.len() - self.pos),
            _ => 0,
        };
        let start = self.buf.len();
        // Memory follows the bytes that arrive, not an announced bulk length: at most twice
        // what is held (and a chunk).
        let room = waiting_for.max(READ_CHUNK).min(start.max(READ_CHUNK));
        let partial = self.holding() - self.buf.capacity();
        let needed = partial + self.buf.capacity().max(start + room);
        // Only growth waits: an idle connection whose buffer stayed large is never refused.
        if self.held.covers(needed) {
            self.held.cover_now(needed);
        } else if !self.held.cover(needed, deadline) {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the in-flight budget stayed taken",
            ));
        }
        if room <= READ_CHUNK {
            if self.chunk.is_empty() {
                self.chunk = vec![0; READ_CHUNK];
            }
            let result = src.read(&mut self.chunk[..room]);
            if let Ok(read) = result {
                self.buf.extend_from_slice(&self.chunk[..read]);
            }
            return result;
        }
        self.buf.resize(start + room, 0);
        let result = src.read(&mut self.buf[start..]);
        let read = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(start + read);
        result
    }

    /// True when part of a request has been received and the rest has not.
    pub fn has_partial(&self) -> bool {
        self.pos < self.buf.len() || self.partial.is_some()
    }

    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            if self.buf.capacity() > 4 * READ_CHUNK + MAX_INLINE {
                self.buf = Vec::new();
            }
        } else {
            self.buf.drain(..self.pos);
        }
        self.pos = 0;
    }

    /// The next whole request, as its arguments (never empty): `Ok(None)` when more bytes are
    /// needed. Empty requests (a blank inline line, `*0`) are skipped, as Redis does.
    pub fn next_request(&mut self) -> std::result::Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            if self.partial.is_none() {
                let Some(&first) = self.buf.get(self.pos) else {
                    return Ok(None);
                };
                if first != b'*' {
                    match self.inline()? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    }
                }
                let Some(count) = self.multibulk_count()? else {
                    return Ok(None);
                };
                if count == 0 {
                    continue;
                }
                let mut args = std::mem::take(&mut self.spare);
                args.reserve(count.min(64).saturating_sub(args.len()));
                self.partial = Some(Multibulk {
                    remaining: count,
                    args,
                    filled: 0,
                    bytes: 0,
                    bulk_len: None,
                });
            }
            if !self.fill_multibulk()? {
                return Ok(None);
            }
            if let Some(mut done) = self.partial.take() {
                done.args.truncate(done.filled);
                return Ok(Some(done.args));
            }
        }
    }

    /// The line at `pos` up to its `\r` (Redis looks for the `\r` and skips the byte after it
    /// unseen), and the bytes it takes with its ending; `None` while it is incomplete.
    fn count_line(
        &self,
        too_big: ProtocolError,
    ) -> std::result::Result<Option<(usize, usize)>, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let window = &rest[..rest.len().min(self.limits.max_inline + 1)];
        match window.iter().position(|&b| b == b'\r') {
            Some(cr) if cr + 1 < rest.len() => Ok(Some((cr, cr + 2))),
            Some(_) => Ok(None),
            None if rest.len() > self.limits.max_inline => Err(too_big),
            None => Ok(None),
        }
    }

    /// Reads `*N`: `Some(0)` for a request with no arguments (N of 0 or less).
    fn multibulk_count(&mut self) -> std::result::Result<Option<usize>, ProtocolError> {
        let Some((end, used)) = self.count_line(ProtocolError::MultibulkCountTooBig)? else {
            return Ok(None);
        };
        let digits = &self.buf[self.pos + 1..self.pos + end];
        let count = parse_integer(digits).ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count > self.limits.max_args as i64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        self.pos += used;
        Ok(Some(count.max(0) as usize))
    }

    /// Reads arguments of the multibulk request in progress; true when it has all of them.
    fn fill_multibulk(&mut self) -> std::result::Result<bool, ProtocolError> {
        loop {
            let Some(partial) = &self.partial else {
                return Ok(true);
            };
            if partial.remaining == 0 {
                return Ok(true);
            }
            let bulk_len = match partial.bulk_len {
                Some(len) => len,
                None => {
                    let Some((end, used)) = self.count_line(ProtocolError::BulkCountTooBig)? else {
                        return Ok(false);
                    };
                    let line = &self.buf[self.pos..self.pos + end];
                    match line.first() {
                        Some(b'$') => {}
                        Some(&other) => return Err(ProtocolError::ExpectedDollar(other)),
                        None => return Err(ProtocolError::ExpectedDollar(b'\r')),
                    }
                    let len = parse_integer(&line[1..])
                        .filter(|&n| n >= 0 && n as u64 <= self.limits.max_bulk as u64)
                        .ok_or(ProtocolError::InvalidBulkLength)?
                        as usize;
                    let bytes = partial.bytes.saturating_add(len + ARG_OVERHEAD);
                    if bytes > self.limits.max_request {
                        return Err(ProtocolError::RequestTooBig {
                            limit: self.limits.max_request,
                        });
                    }
                    self.pos += used;
                    if let Some(partial) = &mut self.partial {
                        partial.bulk_len = Some(len);
                        partial.bytes = bytes;
                    }
                    len
                }
            };
            // Redis does not look at the two bytes after a bulk string either; it skips them.
            if self.buf.len() - self.pos < bulk_len + 2 {
                return Ok(false);
            }
            let bytes = &self.buf[self.pos..self.pos + bulk_len];
            if let Some(partial) = &mut self.partial {
                match partial.args.get_mut(partial.filled) {
                    Some(spare) => {
                        if spare.capacity() < bytes.len() {
                            if let Some(buffer) = self.buffers.take() {
                                *spare = buffer;
                            }
                        }
                        spare.clear();
                        spare.extend_from_slice(bytes);
                    }
                    None => partial.args.push(self.buffers.filled_with(bytes)),
                }
                partial.filled += 1;
                partial.remaining -= 1;
                partial.bulk_len = None;
            }
            self.pos += bulk_len + 2;
        }
    }

    /// Reads an inline request: one line split like a shell would (Redis's `sdssplitargs`).
    fn inline(&mut self) -> std::result::Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let window = &rest[..rest.len().min(self.limits.max_inline + 1)];
        let Some(newline) = window.iter().position(|&b| b == b'\n') else {
            return if rest.len() > self.limits.max_inline {
                Err(ProtocolError::InlineTooBig)
            } else {
                Ok(None)
            };
        };
        let line_end = if newline > 0 && rest[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        let args = split_inline(&rest[..line_end]).ok_or(ProtocolError::UnbalancedQuotes)?;
        self.pos += newline + 1;
        Ok(Some(args))
    }
}

/// A whole decimal integer as Redis's `string2ll` reads it: an optional `-`, no `+`, no
/// leading zeros, no spaces, no overflow.
fn parse_integer(digits: &[u8]) -> Option<i64> {
    let (negative, body) = match digits.split_first() {
        Some((b'-', body)) => (true, body),
        _ => (false, digits),
    };
    match body {
        [] => return None,
        [b'0'] => return (!negative).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &b in body {
        if !b.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(b - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    Some(value)
}

/// Splits an inline request line into arguments as Redis's `sdssplitargs` does: spaces separate
/// them; "double quotes" take `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH` and `\<any>` escapes;
/// 'single quotes' take only `\'`. A quote left open, or a closing quote followed by anything but
/// a space, makes the line unusable (`None`). A NUL byte ends the line, as in C.
pub fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(i);
            if in_double {
                if c == b'\\'
                    && at(i + 1) == b'x'
                    && hex_value(at(i + 2)).is_some()
                    && hex_value(at(i + 3)).is_some()
                {
                    let (hi, lo) = (hex_value(at(i + 2))?, hex_value(at(i + 3))?);
                    current.push(hi * 16 + lo);
                    i += 3;
                } else if c == b'\\' && at(i + 1) != 0 {
                    i += 1;
                    current.push(match at(i) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(i + 1) != 0 && !is_space(at(i + 1)) {
                        return None;
                    }
                    i += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(i + 1) == b'\'' {
                    i += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(i + 1) != 0 && !is_space(at(i + 1)) {
                        return None;
                    }
                    i += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            i += 1;
        }
        args.push(current);
    }
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One command of the table: what COMMAND reports and how many arguments it takes (Redis's
/// arity: N means exactly N with the name, -N at least N).
struct CommandSpec {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
}

const COMMANDS: &[CommandSpec] = &[
    spec("get", 2, &["readonly", "fast"], 1, 1, 1),
    spec("set", -3, &["write", "denyoom"], 1, 1, 1),
    spec("del", -2, &["write"], 1, -1, 1),
    spec("exists", -2, &["readonly", "fast"], 1, -1, 1),
    spec("mget", -2, &["readonly", "fast"], 1, -1, 1),
    spec("mset", -3, &["write", "denyoom"], 1, -1, 2),
    spec("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    spec("ping", -1, &["fast", "stale"], 0, 0, 0),
    spec("echo", 2, &["fast", "stale"], 0, 0, 0),
    spec("info", -1, &["stale"], 0, 0, 0),
    spec("command", -1, &["stale"], 0, 0, 0),
    spec("config", -2, &["admin", "stale"], 0, 0, 0),
    spec("select", 2, &["fast", "stale"], 0, 0, 0),
    spec("quit", -1, &["fast", "stale"], 0, 0, 0),
    spec("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("getset", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("getdel", 2, &["write", "fast"], 1, 1, 1),
    spec("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    spec("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    spec("type", 2, &["readonly", "fast"], 1, 1, 1),
    spec("setex", 4, &["write", "denyoom"], 1, 1, 1),
    spec("psetex", 4, &["write", "denyoom"], 1, 1, 1),
    spec("expire", -3, &["write", "fast"], 1, 1, 1),
    spec("pexpire", -3, &["write", "fast"], 1, 1, 1),
    spec("expireat", -3, &["write", "fast"], 1, 1, 1),
    spec("pexpireat", -3, &["write", "fast"], 1, 1, 1),
    spec("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    spec("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    spec("expiretime", 2, &["readonly", "fast"], 1, 1, 1),
    spec("pexpiretime", 2, &["readonly", "fast"], 1, 1, 1),
    spec("persist", 2, &["write", "fast"], 1, 1, 1),
    spec("time", 1, &["random", "loading", "stale", "fast"], 0, 0, 0),
    spec(
        "client",
        -2,
        &["admin", "noscript", "loading", "stale"],
        0,
        0,
        0,
    ),
    spec("scan", -2, &["readonly"], 0, 0, 0),
    spec("keys", 2, &["readonly"], 0, 0, 0),
    spec("flushall", -1, &["write"], 0, 0, 0),
    spec("flushdb", -1, &["write"], 0, 0, 0),
    spec(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no-auth"],
        0,
        0,
        0,
    ),
    spec(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no-auth"],
        0,
        0,
        0,
    ),
];

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key,
        last_key,
        step,
    }
}

fn find_command(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

fn arity_ok(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

/// Writers of RESP2 replies.
mod reply {
    use std::io::Write;

    /// Text for a simple string or error: line breaks would end the reply early, so they become
    /// spaces, as Redis does.
    fn line(out: &mut Vec<u8>, text: &str) {
        out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }

    pub fn simple(out: &mut Vec<u8>, text: &str) {
        out.push(b'+');
        line(out, text);
    }

    /// An error reply; `text` starts with its code (`ERR`, `OOM`, ...).
    pub fn error(out: &mut Vec<u8>, text: &str) {
        out.push(b'-');
        line(out, text);
    }

    pub fn integer(out: &mut Vec<u8>, n: i64) {
        let _ = write!(out, ":{n}\r\n");
    }

    pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        let _ = write!(out, "${}\r\n", bytes.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }

    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    pub fn nil_array(out: &mut Vec<u8>) {
        out.extend_from_slice(b"*-1\r\n");
    }

    pub fn array(out: &mut Vec<u8>, len: usize) {
        let _ = write!(out, "*{len}\r\n");
    }
}

/// The error reply for an answer whose status is not a success.
fn status_error(out: &mut Vec<u8>, answer: &Frame) {
    let message = answer.message();
    let code = if answer.status == Status::STORAGE_FULL {
        "OOM"
    } else {
        "ERR"
    };
    if message.is_empty() {
        reply::error(out, &format!("{code} {}", answer.status));
    } else {
        reply::error(out, &format!("{code} {}: {message}", answer.status));
    }
}

/// An update's error as Redis words it where Redis has words for it; `command` names the
/// command in the words for a refused expiry time.
fn update_error(out: &mut Vec<u8>, answer: &Frame, command: Option<&str>) {
    let message = answer.message();
    if answer.status == Status::BAD_REQUEST && message.contains("not an integer") {
        return reply::error(out, "ERR value is not an integer or out of range");
    }
    if let (Some(command), true) = (
        command,
        answer.status == Status::BAD_REQUEST && message.contains("invalid expire time"),
    ) {
        return invalid_expire_time(out, command);
    }
    if answer.status == Status::TOO_LARGE {
        return reply::error(out, &format!("ERR TOO_LARGE: {message}"));
    }
    status_error(out, answer)
}

fn invalid_expire_time(out: &mut Vec<u8>, command: &str) {
    reply::error(
        out,
        &format!("ERR invalid expire time in '{command}' command"),
    );
}

fn not_an_integer(out: &mut Vec<u8>) {
    reply::error(out, "ERR value is not an integer or out of range");
}

fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    reply::error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
}

/// Redis's answer to a command it does not know, quoting the start of its arguments.
fn unknown_command(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    let name: String = String::from_utf8_lossy(&args[0])
        .chars()
        .take(128)
        .collect();
    let mut quoted = String::new();
    for arg in &args[1..] {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        let text: String = String::from_utf8_lossy(arg).chars().take(room).collect();
        quoted.push_str(&format!("'{text}' "));
    }
    reply::error(
        out,
        &format!("ERR unknown command '{name}', with args beginning with: {quoted}"),
    );
}

/// What is left to do for a command once its frames are answered.
enum Finish {
    Get,
    Set,
    /// SET with options, SETEX, PSETEX (the command, for its errors): with GET what the key
    /// held, or nil; without, +OK if it stored the value, else nil.
    SetWith {
        get_old: bool,
        command: &'static str,
    },
    /// An increment: the sum.
    Sum,
    /// SETNX, the EXPIRE family, PERSIST (the command, for its errors): 1 if it did, else 0.
    Stored(&'static str),
    /// GETSET, GETDEL: what the key held, or nil.
    Old,
    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME: the time left or the time it expires at (`absolute`),
    /// in milliseconds or rounded to seconds; -2 for an absent key, -1 for one that never
    /// expires.
    Ttl {
        millis: bool,
        absolute: bool,
    },
    /// APPEND: the new length.
    Len,
    /// STRLEN: the value's length, 0 for an absent key.
    Strlen,
    /// TYPE: string or none.
    Type,
    /// SCAN: the next cursor and the keys.
    Scan,
    /// KEYS: every key, if they fit the bound.
    Keys,
    /// FLUSHALL: +OK once every key is deleted.
    Flush,
    Del,
    Exists,
    Mget,
    Mset,
    DbSize,
    Info(InfoSections),
}

/// A batch's commands. Most batches are one command (a client at pipeline 1), kept inline.
type PlannedList = smallvec::SmallVec<[Planned; 1]>;

/// A command of a batch: its reply, or the frames whose answers make it.
enum Planned {
    Ready(Vec<u8>),
    Frames {
        first: usize,
        count: usize,
        finish: Finish,
    },
}

/// How a command gives a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeForm {
    /// From now (EX, SETEX, EXPIRE).
    Seconds,
    /// From now (PX, PSETEX, PEXPIRE).
    Millis,
    /// Unix time (EXAT, EXPIREAT).
    UnixSeconds,
    /// Unix time (PXAT, PEXPIREAT).
    UnixMillis,
}

impl TimeForm {
    /// The form of a SETEX, PSETEX or EXPIRE-family command's time.
    fn of(command: &str) -> TimeForm {
        match (command.starts_with('p'), command.ends_with("at")) {
            (false, false) => TimeForm::Seconds,
            (true, false) => TimeForm::Millis,
            (false, true) => TimeForm::UnixSeconds,
            (true, true) => TimeForm::UnixMillis,
        }
    }
}

/// Why a time is refused at the door, before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeRefusal {
    NotAnInteger,
    /// Not positive where it must be, or past what an i64 of milliseconds holds.
    Invalid,
}

impl TimeRefusal {
    fn reply(self, out: &mut Vec<u8>, command: &str) {
        match self {
            TimeRefusal::NotAnInteger => not_an_integer(out),
            TimeRefusal::Invalid => invalid_expire_time(out, command),
        }
    }
}

/// A command's time as the head takes it, checked as Redis checks it: a decimal integer,
/// positive unless `past_allowed`, and in milliseconds (added to now, for a relative time)
/// within i64. The head checks the sum again against its own clock.
fn read_time(
    time: &[u8],
    form: TimeForm,
    past_allowed: bool,
) -> std::result::Result<When, TimeRefusal> {
    let time = parse_integer(time).ok_or(TimeRefusal::NotAnInteger)?;
    if time <= 0 && !past_allowed {
        return Err(TimeRefusal::Invalid);
    }
    let ms = match form {
        TimeForm::Seconds | TimeForm::UnixSeconds => {
            time.checked_mul(1000).ok_or(TimeRefusal::Invalid)?
        }
        TimeForm::Millis | TimeForm::UnixMillis => time,
    };
    match form {
        TimeForm::Seconds | TimeForm::Millis => {
            let now = crate::expiry::now_ms().min(i64::MAX as u64) as i64;
            if ms > i64::MAX - now {
                return Err(TimeRefusal::Invalid);
            }
            Ok(When::In(ms))
        }
        TimeForm::UnixSeconds | TimeForm::UnixMillis => Ok(When::At(ms)),
    }
}

/// The sections INFO can print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InfoSections {
    server: bool,
    clients: bool,
    keyspace: bool,
    nodes: bool,
}

impl InfoSections {
    /// The sections named by INFO's arguments: all of them with none, `default`, `all` or
    /// `everything`; an unknown name adds nothing, as in Redis.
    fn from_args(args: &[Vec<u8>]) -> InfoSections {
        let all = InfoSections {
            server: true,
            clients: true,
            keyspace: true,
            nodes: true,
        };
        if args.is_empty() {
            return all;
        }
        let mut sections = InfoSections::default();
        for arg in args {
            match arg.to_ascii_lowercase().as_slice() {
                b"default" | b"all" | b"everything" => return all,
                b"server" => sections.server = true,
                b"clients" => sections.clients = true,
                b"keyspace" => sections.keyspace = true,
                b"nodes" => sections.nodes = true,
                _ => {}
            }
        }
        sections
    }

    /// True when the sections need the nodes' reports.
    fn needs_stats(&self) -> bool {
        self.keyspace || self.nodes
    }
}

/// What the door's threads share.
struct Door {
    handler: Arc<dyn Handler>,
    options: ServerOptions,
    request_limits: RequestLimits,
    shutdown: Arc<AtomicBool>,
    registry: Arc<Registry>,
    local_addr: SocketAddr,
    started: Instant,
    /// The largest value answered lately, which bounds the GETs of a batch.
    largest_answer: RecentLargest,
    /// The process's in-flight budget ([`crate::budget`]).
    budget: Arc<MemoryBudget>,
}

/// What one Redis connection has said of itself.
struct Client {
    /// Its number, as HELLO reports it.
    id: u64,
    /// The request id of its next frame.
    next_id: u64,
    /// Whether it has given the password (where one is required).
    auth: Session,
    /// What HELLO ... SETNAME named it.
    name: Option<Vec<u8>>,
    /// The frames and commands of its last batch: the next one's lists start that long, so
    /// that a client's batches of equal size do not grow them step by step.
    last_batch: (usize, usize),
}

impl Client {
    fn new(door: &Door) -> Client {
        static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);
        Client {
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            next_id: 0,
            auth: Session::new(door.handler.password().is_some()),
            name: None,
            last_batch: (0, 0),
        }
    }
}

/// The requests of one batch turned into frames, and how to reply to each.
struct Batch<'a> {
    door: &'a Door,
    frames: Vec<Frame>,
    planned: PlannedList,
    client: &'a mut Client,
    /// GET frames in the batch, and how many it may hold (see [`value_reads_per_batch`]).
    value_reads: usize,
    most_value_reads: usize,
}

impl<'a> Batch<'a> {
    fn new(door: &'a Door, client: &'a mut Client) -> Batch<'a> {
        let (frames, commands) = client.last_batch;
        Batch {
            door,
            frames: Vec::with_capacity(frames.min(MAX_BATCH_FRAMES)),
            planned: PlannedList::with_capacity(commands.min(MAX_BATCH_REQUESTS)),
            client,
            value_reads: 0,
            // While the in-flight budget is taken, one large value at a time.
            most_value_reads: value_reads_per_batch(
                door.largest_answer.get(),
                if door.budget.exhausted() {
                    1
                } else {
                    MAX_BATCH_FRAMES
                },
            ),
        }
    }

    /// True when no further request should join this batch.
    fn is_full(&self) -> bool {
        self.planned.len() >= MAX_BATCH_REQUESTS
            || self.frames.len() >= MAX_BATCH_FRAMES
            || self.value_reads >= self.most_value_reads
    }

    fn request(&mut self, opcode: Opcode, key: Vec<u8>, value: Vec<u8>) -> Frame {
        self.client.next_id = self.client.next_id.wrapping_add(1);
        Frame::request(opcode, self.client.next_id, key, value)
    }

    fn ready(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        let mut out = Vec::new();
        build(&mut out);
        self.planned.push(Planned::Ready(out));
    }

    /// Adds the frames of one command, unless one of them is over the key or value limits: then
    /// none is sent and the command is answered TOO_LARGE.
    fn frames(&mut self, frames: Vec<Frame>, finish: Finish) {
        if self.admit(&frames, finish) {
            self.frames.extend(frames);
        }
    }

    /// [`Batch::frames`] for a command of one frame.
    fn frame(&mut self, frame: Frame, finish: Finish) {
        if self.admit(std::slice::from_ref(&frame), finish) {
            self.frames.push(frame);
        }
    }

    /// Plans the reply to a command of `frames` and true, or answers TOO_LARGE and false.
    fn admit(&mut self, frames: &[Frame], finish: Finish) -> bool {
        for frame in frames {
            if let Err(message) = self.door.options.limits.check(frame) {
                self.door.handler.refused(Status::TOO_LARGE);
                self.ready(|out| reply::error(out, &format!("ERR TOO_LARGE: {message}")));
                return false;
            }
        }
        self.value_reads += frames.iter().filter(|f| f.opcode == Opcode::GET).count();
        self.planned.push(Planned::Frames {
            first: self.frames.len(),
            count: frames.len(),
            finish,
        });
        true
    }

    /// Plans the reply to one request (never empty). False for QUIT, and after the last wrong
    /// password a connection may give: the connection ends after its reply. Arguments it
    /// keeps are taken out of `args`; what is left may be given back to the parser.
    fn plan(&mut self, args: &mut Vec<Vec<u8>>) -> bool {
        let Some(spec) = find_command(&args[0]) else {
            self.ready(|out| unknown_command(out, args));
            return true;
        };
        if !arity_ok(spec.arity, args.len())
            || (spec.name == "mset" && args.len().is_multiple_of(2))
        {
            self.ready(|out| wrong_arity(out, spec.name));
            return true;
        }
        if !self.client.auth.authenticated && !matches!(spec.name, "auth" | "hello" | "quit") {
            self.door.handler.refused(Status::UNAUTHORIZED);
            self.ready(|out| reply::error(out, "NOAUTH Authentication required."));
            return true;
        }
        // The commands sent most take their key and value and leave the name to be reused.
        match spec.name {
            "get" => {
                let frame = self.request(Opcode::GET, std::mem::take(&mut args[1]), Vec::new());
                self.frame(frame, Finish::Get);
            }
            "set" if args.len() == 3 => {
                let key = std::mem::take(&mut args[1]);
                let value = std::mem::take(&mut args[2]);
                let frame = self.request(Opcode::PUT, key, value);
                self.frame(frame, Finish::Set);
            }
            _ => return self.plan_taking(spec, std::mem::take(args)),
        }
        true
    }

    /// [`Batch::plan`] for the commands that take all their arguments.
    fn plan_taking(&mut self, spec: &'static CommandSpec, args: Vec<Vec<u8>>) -> bool {
        let mut rest = args.into_iter();
        rest.next();
        match spec.name {
            "set" => {
                let key = rest.next().unwrap_or_default();
                let value = rest.next().unwrap_or_default();
                let options: Vec<Vec<u8>> = rest.collect();
                self.set_with_options(key, value, &options);
            }
            "del" => {
                let frames = rest
                    .map(|key| self.request(Opcode::DELETE, key, Vec::new()))
                    .collect();
                self.frames(frames, Finish::Del);
            }
            "exists" | "mget" => {
                let frames = rest
                    .map(|key| self.request(Opcode::GET, key, Vec::new()))
                    .collect();
                let finish = if spec.name == "exists" {
                    Finish::Exists
                } else {
                    Finish::Mget
                };
                self.frames(frames, finish);
            }
            "mset" => {
                let mut frames = Vec::with_capacity(rest.len() / 2);
                while let (Some(key), Some(value)) = (rest.next(), rest.next()) {
                    frames.push(self.request(Opcode::PUT, key, value));
                }
                self.frames(frames, Finish::Mset);
            }
            "incr" | "decr" | "incrby" | "decrby" => {
                let key = rest.next().unwrap_or_default();
                let by = match rest.next() {
                    None => Some(1),
                    Some(digits) => parse_integer(&digits),
                };
                let by = match (by, spec.name.starts_with("decr")) {
                    (Some(by), false) => Some(by),
                    (Some(by), true) => by.checked_neg(),
                    (None, _) => None,
                };
                match by {
                    Some(by) => self.update(key, Update::IncrBy(by), Finish::Sum),
                    None => self.ready(|out| {
                        reply::error(out, "ERR value is not an integer or out of range")
                    }),
                }
            }
            "setnx" | "getset" | "append" => {
                let key = rest.next().unwrap_or_default();
                let value = rest.next().unwrap_or_default();
                let (update, finish) = match spec.name {
                    "setnx" => (Update::SetIfAbsent(value), Finish::Stored("setnx")),
                    "getset" => (Update::GetSet(value), Finish::Old),
                    _ => (Update::Append(value), Finish::Len),
                };
                self.update(key, update, finish);
            }
            "getdel" => {
                let key = rest.next().unwrap_or_default();
                self.update(key, Update::GetDelete, Finish::Old);
            }
            "setex" | "psetex" => {
                let key = rest.next().unwrap_or_default();
                let time = rest.next().unwrap_or_default();
                let value = rest.next().unwrap_or_default();
                match read_time(&time, TimeForm::of(spec.name), false) {
                    Ok(when) => self.update(
                        key,
                        Update::Set {
                            value,
                            condition: Condition::Always,
                            ttl: Ttl::Expires(when),
                            get_old: false,
                        },
                        Finish::SetWith {
                            get_old: false,
                            command: spec.name,
                        },
                    ),
                    Err(refusal) => self.ready(|out| refusal.reply(out, spec.name)),
                }
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                let key = rest.next().unwrap_or_default();
                let time = rest.next().unwrap_or_default();
                let options: Vec<Vec<u8>> = rest.collect();
                self.expire(spec.name, key, &time, &options);
            }
            "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
                let key = rest.next().unwrap_or_default();
                let finish = Finish::Ttl {
                    millis: spec.name.starts_with('p'),
                    absolute: spec.name.ends_with("time"),
                };
                self.update(key, Update::Ttl, finish);
            }
            "persist" => {
                let key = rest.next().unwrap_or_default();
                self.update(key, Update::Persist, Finish::Stored("persist"));
            }
            "strlen" | "type" => {
                let key = rest.next().unwrap_or_default();
                let frame = self.request(Opcode::GET, key, Vec::new());
                let finish = if spec.name == "strlen" {
                    Finish::Strlen
                } else {
                    Finish::Type
                };
                self.frame(frame, finish);
            }
            "time" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                self.ready(|out| {
                    reply::array(out, 2);
                    reply::bulk(out, now.as_secs().to_string().as_bytes());
                    reply::bulk(out, now.subsec_micros().to_string().as_bytes());
                });
            }
            "client" => {
                let rest: Vec<Vec<u8>> = rest.collect();
                self.client_command(&rest);
            }
            "scan" => {
                let rest: Vec<Vec<u8>> = rest.collect();
                self.scan(&rest);
            }
            "flushall" | "flushdb" => {
                // ASYNC and SYNC both wait: the reply comes once every key is deleted.
                let mode_ok = rest.len() <= 1
                    && rest.as_slice().iter().all(|m| {
                        m.eq_ignore_ascii_case(b"ASYNC") || m.eq_ignore_ascii_case(b"SYNC")
                    });
                if mode_ok {
                    let frame = self.request(Opcode::FLUSH, Vec::new(), Vec::new());
                    self.frame(frame, Finish::Flush);
                } else {
                    self.ready(|out| reply::error(out, "ERR syntax error"));
                }
            }
            "keys" => {
                let pattern = rest.next().unwrap_or_default();
                let value = crate::scan::encode_scan(0, KEYS_LIMIT as u32 + 1, &pattern);
                let frame = self.request(Opcode::SCAN, Vec::new(), value);
                self.frame(frame, Finish::Keys);
            }
            "dbsize" => {
                let frame = self.request(Opcode::SIZE, Vec::new(), Vec::new());
                self.frame(frame, Finish::DbSize);
            }
            "ping" => match rest.next() {
                None => self.ready(|out| reply::simple(out, "PONG")),
                Some(message) if rest.len() == 0 => self.ready(|out| reply::bulk(out, &message)),
                Some(_) => self.ready(|out| wrong_arity(out, "ping")),
            },
            "echo" => {
                let message = rest.next().unwrap_or_default();
                self.ready(|out| reply::bulk(out, &message));
            }
            "info" => {
                let sections = InfoSections::from_args(rest.as_slice());
                if sections.needs_stats() {
                    let frame = self.request(Opcode::STATS, Vec::new(), Vec::new());
                    self.frame(frame, Finish::Info(sections));
                } else {
                    let text = info_text(self.door, sections, None);
                    self.ready(|out| reply::bulk(out, text.as_bytes()));
                }
            }
            "command" => {
                let rest = rest.as_slice();
                self.ready(|out| command_reply(out, rest));
            }
            "config" => {
                let door = self.door;
                let rest = rest.as_slice();
                self.ready(|out| config_reply(out, door, rest));
            }
            "select" => {
                let index = rest.next().unwrap_or_default();
                self.ready(|out| match parse_integer(&index) {
                    Some(0) => reply::simple(out, "OK"),
                    Some(_) => reply::error(out, "ERR DB index is out of range"),
                    None => reply::error(out, "ERR value is not an integer or out of range"),
                });
            }
            "quit" => {
                self.ready(|out| reply::simple(out, "OK"));
                return false;
            }
            "auth" => {
                let rest = rest.as_slice();
                return self.auth(rest);
            }
            "hello" => {
                let rest = rest.as_slice();
                return self.hello(rest);
            }
            other => {
                log::error!("resp: command {other} is in the table but has no handling");
                self.ready(|out| reply::error(out, "ERR INTERNAL: command not handled"));
            }
        }
        true
    }

    /// Plans an UPDATE of `key` whose answer `finish` turns into the reply.
    fn update(&mut self, key: Vec<u8>, update: Update, finish: Finish) {
        let frame = self.request(Opcode::UPDATE, key, update.encode());
        self.frame(frame, finish);
    }

    /// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT unix-s | PXAT unix-ms | KEEPTTL]: one
    /// UPDATE at the key's head. Options are read as Redis 7 reads them: in any order, NX and
    /// GET together allowed, an option repeated allowed (the last time wins), two different
    /// expiry options or one with KEEPTTL a syntax error; the time is read only once every
    /// option has been.
    fn set_with_options(&mut self, key: Vec<u8>, value: Vec<u8>, options: &[Vec<u8>]) {
        let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
        let mut expiry: Option<(TimeForm, &[u8])> = None;
        let mut i = 0;
        while i < options.len() {
            let option = options[i].to_ascii_uppercase();
            let form = match option.as_slice() {
                b"EX" => Some(TimeForm::Seconds),
                b"PX" => Some(TimeForm::Millis),
                b"EXAT" => Some(TimeForm::UnixSeconds),
                b"PXAT" => Some(TimeForm::UnixMillis),
                _ => None,
            };
            match (option.as_slice(), form, options.get(i + 1)) {
                (b"NX", ..) if !xx => nx = true,
                (b"XX", ..) if !nx => xx = true,
                (b"GET", ..) => get = true,
                (b"KEEPTTL", ..) if expiry.is_none() => keep = true,
                (_, Some(form), Some(time))
                    if !keep && expiry.is_none_or(|(had, _)| had == form) =>
                {
                    expiry = Some((form, time));
                    i += 1;
                }
                _ => return self.ready(|out| reply::error(out, "ERR syntax error")),
            }
            i += 1;
        }
        let ttl = match expiry {
            None if keep => Ttl::Keep,
            None => Ttl::Clear,
            Some((form, time)) => match read_time(time, form, false) {
                Ok(when) => Ttl::Expires(when),
                Err(refusal) => return self.ready(|out| refusal.reply(out, "set")),
            },
        };
        let condition = match (nx, xx) {
            (true, _) => Condition::IfAbsent,
            (_, true) => Condition::IfPresent,
            _ => Condition::Always,
        };
        let update = Update::Set {
            value,
            condition,
            ttl,
            get_old: get,
        };
        let finish = Finish::SetWith {
            get_old: get,
            command: "set",
        };
        self.update(key, update, finish);
    }

    /// EXPIRE, PEXPIRE, EXPIREAT or PEXPIREAT (`command`) key time [NX | XX | GT | LT]: the
    /// options are checked before the time, as Redis does.
    fn expire(&mut self, command: &'static str, key: Vec<u8>, time: &[u8], options: &[Vec<u8>]) {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for option in options {
            match option.to_ascii_uppercase().as_slice() {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"GT" => gt = true,
                b"LT" => lt = true,
                _ => {
                    let option = String::from_utf8_lossy(option).into_owned();
                    return self.ready(|out| {
                        reply::error(out, &format!("ERR Unsupported option {option}"))
                    });
                }
            }
        }
        if nx && (xx || gt || lt) {
            return self.ready(|out| {
                reply::error(
                    out,
                    "ERR NX and XX, GT or LT options at the same time are not compatible",
                )
            });
        }
        if gt && lt {
            return self.ready(|out| {
                reply::error(
                    out,
                    "ERR GT and LT options at the same time are not compatible",
                )
            });
        }
        // Unlike SET's, EXPIRE's time may be zero or negative: the key is deleted.
        let at = match read_time(time, TimeForm::of(command), true) {
            Ok(at) => at,
            Err(refusal) => return self.ready(|out| refusal.reply(out, command)),
        };
        let condition = match (nx, xx, gt, lt) {
            (true, ..) => ExpireCondition::IfNone,
            // GT already leaves a key without a time to live alone, so XX adds nothing to it.
            (_, _, true, _) => ExpireCondition::IfLater,
            (_, true, _, true) => ExpireCondition::IfSomeAndSooner,
            (_, false, _, true) => ExpireCondition::IfSooner,
            (_, true, ..) => ExpireCondition::IfSome,
            _ => ExpireCondition::Always,
        };
        self.update(
            key,
            Update::Expire { at, condition },
            Finish::Stored(command),
        );
    }

    /// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]: one SCAN request.
    fn scan(&mut self, args: &[Vec<u8>]) {
        let syntax = |out: &mut Vec<u8>| reply::error(out, "ERR syntax error");
        let Some(cursor) = args
            .first()
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok())
        else {
            return self.ready(|out| reply::error(out, "ERR invalid cursor"));
        };
        let (mut pattern, mut count, mut strings) = (Vec::new(), crate::scan::DEFAULT_COUNT, true);
        let mut options = args[1..].iter();
        while let Some(option) = options.next() {
            let Some(operand) = options.next() else {
                return self.ready(syntax);
            };
            match option.to_ascii_uppercase().as_slice() {
                b"MATCH" => pattern = operand.clone(),
                b"COUNT" => match parse_integer(operand) {
                    Some(n) if n >= 1 => count = n.min(i64::from(u32::MAX)) as u32,
                    Some(_) => return self.ready(syntax),
                    None => {
                        return self.ready(|out| {
                            reply::error(out, "ERR value is not an integer or out of range")
                        })
                    }
                },
                // Every value is a string.
                b"TYPE" => strings = operand.eq_ignore_ascii_case(b"string"),
                _ => return self.ready(syntax),
            }
        }
        if !strings {
            return self.ready(|out| {
                reply::array(out, 2);
                reply::bulk(out, b"0");
                reply::array(out, 0);
            });
        }
        let value = crate::scan::encode_scan(cursor, count, &pattern);
        let frame = self.request(Opcode::SCAN, Vec::new(), value);
        self.frame(frame, Finish::Scan);
    }

    /// CLIENT SETNAME name, GETNAME, ID.
    fn client_command(&mut self, args: &[Vec<u8>]) {
        let sub = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        match (sub.as_slice(), &args[1..]) {
            (b"SETNAME", [name]) => {
                if name.iter().any(|b| *b <= b' ' || *b >= 0x7f) {
                    return self.ready(|out| {
                        reply::error(
                            out,
                            "ERR Client names cannot contain spaces, newlines or special \
                             characters.",
                        )
                    });
                }
                // An empty name removes it, as in Redis.
                self.client.name = (!name.is_empty()).then(|| name.clone());
                self.ready(|out| reply::simple(out, "OK"));
            }
            (b"GETNAME", []) => {
                let name = self.client.name.clone();
                self.ready(|out| match name {
                    Some(name) => reply::bulk(out, &name),
                    None => reply::nil(out),
                });
            }
            (b"ID", []) => {
                let id = self.client.id;
                self.ready(|out| reply::integer(out, id as i64));
            }
            (b"SETNAME" | b"GETNAME" | b"ID", _) => {
                let sub = String::from_utf8_lossy(&sub).to_ascii_lowercase();
                self.ready(|out| {
                    reply::error(
                        out,
                        &format!("ERR wrong number of arguments for 'client|{sub}' command"),
                    )
                });
            }
            _ => {
                let sub = String::from_utf8_lossy(&sub).into_owned();
                self.ready(|out| {
                    reply::error(
                        out,
                        &format!(
                            "ERR unknown subcommand '{sub}'. ringkv's CLIENT knows SETNAME, \
                             GETNAME and ID."
                        ),
                    )
                });
            }
        }
    }

    /// AUTH password, or AUTH username password (the only user is `default`, as in Redis
    /// without ACLs). False when the connection is to be closed.
    fn auth(&mut self, args: &[Vec<u8>]) -> bool {
        let password = self.door.handler.password();
        match args {
            [_] if password.is_none() => {
                self.ready(|out| {
                    reply::error(
                        out,
                        "ERR AUTH <password> called without any password configured for the \
                         default user. Are you sure your configuration is correct?",
                    )
                });
                true
            }
            [offered] => self.log_in(b"default", offered, |out| reply::simple(out, "OK")),
            [user, offered] => self.log_in(user, offered, |out| reply::simple(out, "OK")),
            _ => {
                self.ready(|out| reply::error(out, "ERR syntax error"));
                true
            }
        }
    }

    /// Checks `user` and `offered` and plans `success` or WRONGPASS. False when that was the
    /// last wrong password the connection may give.
    fn log_in(&mut self, user: &[u8], offered: &[u8], success: impl FnOnce(&mut Vec<u8>)) -> bool {
        let password = self.door.handler.password();
        let accepted = if user == b"default" {
            self.client.auth.offer(password, offered).is_ok()
        } else {
            // An unknown user counts as a wrong password.
            self.client.auth.failures += 1;
            false
        };
        if accepted {
            self.ready(success);
            return true;
        }
        self.door.handler.refused(Status::UNAUTHORIZED);
        log::warn!(
            "resp: a client offered a wrong password ({} on its connection)",
            self.client.auth.failures
        );
        self.ready(|out| {
            reply::error(
                out,
                "WRONGPASS invalid username-password pair or user is disabled.",
            )
        });
        !self.client.auth.locked_out()
    }

    /// HELLO [protover [AUTH username password] [SETNAME clientname]]: only RESP2 is spoken.
    fn hello(&mut self, args: &[Vec<u8>]) -> bool {
        let mut rest = args.iter();
        if let Some(version) = rest.next() {
            match parse_integer(version) {
                Some(2) => {}
                Some(_) => {
                    self.ready(|out| {
                        reply::error(
                            out,
                            "NOPROTO sorry, this protocol version is not supported.",
                        )
                    });
                    return true;
                }
                None => {
                    self.ready(|out| {
                        reply::error(
                            out,
                            "ERR Protocol version is not an integer or out of range",
                        )
                    });
                    return true;
                }
            }
        }
        let mut credentials: Option<(&[u8], &[u8])> = None;
        let mut name: Option<&[u8]> = None;
        while let Some(option) = rest.next() {
            if option.eq_ignore_ascii_case(b"AUTH") {
                match (rest.next(), rest.next()) {
                    (Some(user), Some(password)) => credentials = Some((user, password)),
                    _ => return self.hello_syntax_error(option),
                }
            } else if option.eq_ignore_ascii_case(b"SETNAME") {
                match rest.next() {
                    Some(given) => name = Some(given),
                    None => return self.hello_syntax_error(option),
                }
            } else {
                return self.hello_syntax_error(option);
            }
        }
        if name.is_some_and(|n| n.iter().any(|b| *b <= b' ' || *b >= 0x7f)) {
            self.ready(|out| {
                reply::error(
                    out,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                )
            });
            return true;
        }
        let id = self.client.id;
        let info = move |out: &mut Vec<u8>| hello_reply(out, id);
        if let Some((user, password)) = credentials {
            let open = self.log_in(user, password, info);
            if let (true, Some(name)) = (self.client.auth.authenticated, name) {
                self.client.name = Some(name.to_vec());
            }
            return open;
        }
        if !self.client.auth.authenticated {
            self.door.handler.refused(Status::UNAUTHORIZED);
            self.ready(|out| {
                reply::error(
                    out,
                    "NOAUTH HELLO must be called with the client already authenticated, \
                     otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                     authenticate the client and select the RESP protocol version at the same \
                     time",
                )
            });
            return true;
        }
        if let Some(name) = name {
            self.client.name = Some(name.to_vec());
        }
        self.ready(info);
        true
    }

    fn hello_syntax_error(&mut self, option: &[u8]) -> bool {
        let option = String::from_utf8_lossy(option).replace(['\r', '\n'], " ");
        self.ready(|out| {
            reply::error(out, &format!("ERR Syntax error in HELLO option '{option}'"))
        });
        true
    }

    /// Hands every frame of the batch to the handler in one call, then writes the replies in
    /// request order. A handler that panics, or answers a different number of frames, fails
    /// the commands that had frames with INTERNAL and nothing else.
    fn run(self) -> Vec<u8> {
        self.client.last_batch = (self.frames.len(), self.planned.len());
        let door = self.door;
        let sent = self.frames.len();
        let answers = if sent == 0 {
            Some(Vec::new())
        } else {
            let handler = &*door.handler;
            let frames = self.frames;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler.handle_batch(frames)
            })) {
                Ok(answers) => checked_answers(door, sent, answers),
                Err(_) => {
                    log::error!("resp: the request handler panicked; answering INTERNAL");
                    None
                }
            }
        };
        let mut out = Vec::new();
        replies(door, self.planned, answers.as_deref(), &mut out);
        out
    }

    /// Hands every frame of the batch to the handler without waiting for the answers: the
    /// thread that has them makes the replies and writes them, after every earlier batch's
    /// ([`Outbox`]).
    fn start(self, door: &Arc<Door>, outbox: &Arc<Outbox>) {
        self.client.last_batch = (self.frames.len(), self.planned.len());
        let sent = self.frames.len();
        let number = outbox.begin(sent);
        let planned = self.planned;
        if sent == 0 {
            outbox.finish(number, 0, 0, Vec::new(), |out| {
                replies(door, planned, Some(&[]), out)
            });
            return;
        }
        // Answered once: with the handler's answers, or, if it panics or drops the batch,
        // every command that had frames with INTERNAL.
        let reply = {
            let door = Arc::clone(door);
            let outbox = Arc::clone(outbox);
            AnswerOnce::new(move |answers: Option<Vec<Frame>>, spent: Vec<Frame>| {
                let answers = answers.and_then(|answers| checked_answers(&door, sent, answers));
                let answers = answers.as_deref();
                let largest = answers.map_or(0, outbox::largest_get);
                outbox.finish(number, sent, largest, spent, |out| {
                    replies(&door, planned, answers, out)
                });
            })
        };
        let then: crate::server::AnswersThen =
            Box::new(move |answers, spent| reply.answer(answers, spent));
        let handler = &*door.handler;
        let frames = self.frames;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.start_batch(frames, then)
        }))
        .is_err()
        {
            log::error!("resp: the request handler panicked; answering INTERNAL");
        }
    }
}

/// The handler's answers to a batch of `sent` frames, if there is one for each; the large
/// values among them noted.
fn checked_answers(door: &Door, sent: usize, answers: Vec<Frame>) -> Option<Vec<Frame>> {
    if answers.len() != sent {
        log::error!(
            "resp: the handler answered {} of a batch of {sent} frames",
            answers.len()
        );
        return None;
    }
    for answer in answers.iter().filter(|a| a.opcode == Opcode::GET) {
        door.largest_answer.note(answer.value.len());
    }
    Some(answers)
}

/// The replies of a batch's commands, in order, from the answers to its frames (`None`: the
/// handler failed, and every command that had frames is answered INTERNAL).
fn replies(door: &Door, planned: PlannedList, answers: Option<&[Frame]>, out: &mut Vec<u8>) {
    // Room for the usual replies at once: a value and its framing, or a short status.
    let values: usize = answers.map_or(0, |a| a.iter().map(|f| f.value.len()).sum());
    let ready: usize = planned
        .iter()
        .map(|p| match p {
            Planned::Ready(bytes) => bytes.len(),
            Planned::Frames { .. } => 0,
        })
        .sum();
    out.reserve(values + ready + 16 * planned.len());
    for planned in planned {
        match planned {
            Planned::Ready(bytes) => out.extend_from_slice(&bytes),
            Planned::Frames {
                first,
                count,
                finish,
            } => match answers {
                Some(answers) => finish_reply(door, finish, &answers[first..first + count], out),
                None => reply::error(out, "ERR INTERNAL: the server failed on this request"),
            },
        }
    }
}

/// Writes the replies no other thread is writing, with the full write timeout; false if the
/// connection is finished.
fn write_owed(stream: &mut TcpStream, outbox: &Outbox, timeout: Duration, peer: &str) -> bool {
    outbox.write_owed(|owed| write_replies(stream, &owed, timeout, peer))
}

/// Writes `bytes` within `timeout`; whether it did.
fn write_replies(stream: &mut TcpStream, bytes: &[u8], timeout: Duration, peer: &str) -> bool {
    match write_all_within(stream, bytes, timeout) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("resp: connection from {peer}: write failed: {e}");
            false
        }
    }
}

/// Waits (writing what is owed meanwhile, within `io` each time) until every batch handed on
/// is answered and its replies written; false if the connection is finished, or the answers
/// did not come within `timeout`.
fn wait_until_answered(
    stream: &mut TcpStream,
    outbox: &Outbox,
    (timeout, io): (Duration, Duration),
    peer: &str,
) -> bool {
    let mut write = |owed: Vec<u8>| write_replies(stream, &owed, io, peer);
    // Most often every earlier batch is answered already: no deadline to reckon.
    if !outbox.write_owed(&mut write) {
        return false;
    }
    if !outbox.busy() {
        return true;
    }
    let until = Instant::now() + timeout;
    if outbox.drain(until, write) {
        return true;
    }
    if !outbox.broken() && Instant::now() >= until {
        log::warn!(
            "resp: connection from {peer}: its commands were not answered within {timeout:?}; \
             closing it"
        );
    }
    false
}

/// HELLO's reply in RESP2: its map as a flat array of names and values.
fn hello_reply(out: &mut Vec<u8>, id: u64) {
    reply::array(out, 14);
    reply::bulk(out, b"server");
    reply::bulk(out, b"ringkv");
    reply::bulk(out, b"version");
    reply::bulk(out, env!("CARGO_PKG_VERSION").as_bytes());
    reply::bulk(out, b"proto");
    reply::integer(out, 2);
    reply::bulk(out, b"id");
    reply::integer(out, id as i64);
    reply::bulk(out, b"mode");
    reply::bulk(out, b"standalone");
    reply::bulk(out, b"role");
    reply::bulk(out, b"master");
    reply::bulk(out, b"modules");
    reply::array(out, 0);
}

/// The reply to a command from the answers to its frames.
fn finish_reply(door: &Door, finish: Finish, answers: &[Frame], out: &mut Vec<u8>) {
    let failed = |success: fn(Status) -> bool| answers.iter().find(|a| !success(a.status));
    let ok_or_missing = |s: Status| s.is_success();
    let ok_only = |s: Status| s == Status::OK;
    match finish {
        Finish::Get | Finish::Mget => {
            if let Some(failure) = failed(ok_or_missing) {
                return status_error(out, failure);
            }
            if matches!(finish, Finish::Mget) {
                reply::array(out, answers.len());
            }
            for answer in answers {
                if answer.status == Status::OK {
                    reply::bulk(out, &answer.value);
                } else {
                    reply::nil(out);
                }
            }
        }
        Finish::Sum
        | Finish::Stored(_)
        | Finish::SetWith { .. }
        | Finish::Old
        | Finish::Len
        | Finish::Ttl { .. } => {
            let Some(answer) = answers.first() else {
                return reply::error(out, "ERR INTERNAL: no answer");
            };
            if answer.status != Status::OK {
                let command = match finish {
                    Finish::Stored(command) | Finish::SetWith { command, .. } => Some(command),
                    _ => None,
                };
                return update_error(out, answer, command);
            }
            let value = &answer.value;
            let decoded = match finish {
                Finish::Sum => update::decode_sum(value).map(|n| reply::integer(out, n)),
                Finish::Stored(_) => update::decode_stored(value)
                    .map(|stored| reply::integer(out, i64::from(stored))),
                // With GET, Redis answers what the key held, whether it stored or not.
                Finish::SetWith { get_old, .. } => {
                    update::decode_set(value, get_old).map(|(stored, old)| match (get_old, old) {
                        (true, Some(old)) => reply::bulk(out, &old),
                        (false, _) if stored => reply::simple(out, "OK"),
                        _ => reply::nil(out),
                    })
                }
                Finish::Ttl { millis, absolute } => update::decode_ttl(value)
                    .map(|ttl| reply::integer(out, ttl_reply(ttl, millis, absolute))),
                Finish::Old => update::decode_old(value).map(|old| match old {
                    Some(old) => reply::bulk(out, &old),
                    None => reply::nil(out),
                }),
                _ => update::decode_len(value)
                    .map(|len| reply::integer(out, i64::try_from(len).unwrap_or(i64::MAX))),
            };
            if let Err(e) = decoded {
                reply::error(out, &format!("ERR INTERNAL: {e}"));
            }
        }
        Finish::Flush => match answers.first() {
            Some(answer) if answer.status == Status::OK => reply::simple(out, "OK"),
            Some(answer) => status_error(out, answer),
            None => reply::error(out, "ERR INTERNAL: no answer"),
        },
        Finish::Scan | Finish::Keys => {
            let Some(answer) = answers.first() else {
                return reply::error(out, "ERR INTERNAL: no answer");
            };
            if answer.status != Status::OK {
                return status_error(out, answer);
            }
            let (next, keys) = match crate::scan::decode_keys(&answer.value) {
                Ok(decoded) => decoded,
                Err(e) => return reply::error(out, &format!("ERR INTERNAL: {e}")),
            };
            if matches!(finish, Finish::Keys) {
                if next != 0 || keys.len() > KEYS_LIMIT {
                    return reply::error(
                        out,
                        &format!(
                            "ERR KEYS lists at most {KEYS_LIMIT} keys and 4 MiB of them; use \
                             SCAN to walk more"
                        ),
                    );
                }
            } else {
                reply::array(out, 2);
                reply::bulk(out, next.to_string().as_bytes());
            }
            reply::array(out, keys.len());
            for key in &keys {
                reply::bulk(out, key);
            }
        }
        Finish::Strlen | Finish::Type => {
            if let Some(failure) = failed(ok_or_missing) {
                return status_error(out, failure);
            }
            let found = answers.first().filter(|a| a.status == Status::OK);
            match (finish, found) {
                (Finish::Strlen, found) => {
                    reply::integer(out, found.map_or(0, |a| a.value.len() as i64))
                }
                (_, Some(_)) => reply::simple(out, "string"),
                (_, None) => reply::simple(out, "none"),
            }
        }
        Finish::Set | Finish::Mset => match failed(ok_only) {
            Some(failure) => status_error(out, failure),
            None => reply::simple(out, "OK"),
        },
        Finish::Del | Finish::Exists => match failed(ok_or_missing) {
            Some(failure) => status_error(out, failure),
            None => {
                let found = answers.iter().filter(|a| a.status == Status::OK).count();
                reply::integer(out, found as i64);
            }
        },
        Finish::DbSize => match reports_of(answers) {
            Err(()) => status_error(out, &answers[0]),
            Ok(Err(message)) => reply::error(out, &format!("ERR INTERNAL: {message}")),
            Ok(Ok(reports)) => match reports.iter().find(|r| r.status != Status::OK) {
                Some(down) => reply::error(
                    out,
                    &format!(
                        "ERR {}: node {} did not report its size: {}",
                        down.status, down.addr, down.message
                    ),
                ),
                None => {
                    let keys = reports.last().map_or(0, |total| total.counter("keys"));
                    reply::integer(out, i64::try_from(keys).unwrap_or(i64::MAX));
                }
            },
        },
        Finish::Info(sections) => {
            let stats = match reports_of(answers) {
                Err(()) => Err(format!("{}: {}", answers[0].status, answers[0].message())),
                Ok(decoded) => decoded,
            };
            let text = info_text(door, sections, Some(stats));
            reply::bulk(out, text.as_bytes());
        }
    }
}

/// What TTL (neither flag), PTTL (`millis`), EXPIRETIME (`absolute`) or PEXPIRETIME (both)
/// answers for a key's time to live.
fn ttl_reply(ttl: TimeToLive, millis: bool, absolute: bool) -> i64 {
    match ttl {
        TimeToLive::Absent => -2,
        TimeToLive::Forever => -1,
        TimeToLive::Left { ms, at } => {
            let time = if absolute { at } else { ms };
            // Redis rounds to the nearest second, the Unix time as well as the time left.
            let time = if millis { time } else { (time + 500) / 1000 };
            i64::try_from(time).unwrap_or(i64::MAX)
        }
    }
}

/// Node reports, the total last, or why they could not be read.
type Reports = std::result::Result<Vec<NodeReport>, String>;

/// The node reports of a SIZE or STATS answer, the total last: `Err(())` when the answer is an
/// error, `Ok(Err(_))` when its payload does not decode.
fn reports_of(answers: &[Frame]) -> std::result::Result<Reports, ()> {
    match answers.first() {
        Some(answer) if answer.status == Status::OK => {
            Ok(payload::decode_reports(&answer.value).map_err(|e| e.to_string()))
        }
        _ => Err(()),
    }
}

/// INFO's text: `# Section` headers, `name:value` lines, a blank line between sections. The
/// Nodes section is ringkv's own: one line per backend with its counters.
fn info_text(door: &Door, sections: InfoSections, stats: Option<Reports>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if sections.server {
        parts.push(format!(
            "# Server\r\nringkv_version:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            door.local_addr.port(),
            door.started.elapsed().as_secs()
        ));
    }
    if sections.clients {
        parts.push(format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n",
            door.registry.len(),
            door.options.max_connections
        ));
    }
    let stats = stats.unwrap_or_else(|| Err("not asked".into()));
    let clean = |text: &str| text.replace(['\r', '\n'], " ");
    if sections.keyspace {
        let mut part = String::from("# Keyspace\r\n");
        match &stats {
            Ok(reports) => {
                let total = |name| reports.last().map_or(0, |total| total.counter(name));
                let (keys, expires) = (total("keys"), total("expiring_keys"));
                // Redis lists only databases that hold keys. Nothing keeps the mean time left,
                // so `avg_ttl` stays 0 (as Redis's does before it has sampled): clients parse
                // all three fields.
                if keys > 0 {
                    part.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
                }
            }
            Err(message) => part.push_str(&format!("keyspace_error:{}\r\n", clean(message))),
        }
        parts.push(part);
    }
    if sections.nodes {
        let mut part = String::from("# Nodes\r\n");
        match &stats {
            Ok(reports) => {
                let nodes = &reports[..reports.len().saturating_sub(1)];
                part.push_str(&format!("nodes:{}\r\n", nodes.len()));
                for (i, node) in nodes.iter().enumerate() {
                    part.push_str(&format!(
                        "node{i}:addr={},status={}",
                        node.addr, node.status
                    ));
                    if node.status == Status::OK {
                        for (name, value) in &node.counters {
                            part.push_str(&format!(",{name}={value}"));
                        }
                    } else {
                        part.push_str(&format!(",message={}", clean(&node.message)));
                    }
                    part.push_str("\r\n");
                }
            }
            Err(message) => part.push_str(&format!("nodes_error:{}\r\n", clean(message))),
        }
        parts.push(part);
    }
    parts.join("\r\n")
}

/// COMMAND, COMMAND COUNT, COMMAND INFO name..., COMMAND LIST and COMMAND DOCS (no docs: an
/// empty answer, which redis-cli takes as "no hints").
fn command_reply(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    let entry = |out: &mut Vec<u8>, spec: &CommandSpec| {
        reply::array(out, 6);
        reply::bulk(out, spec.name.as_bytes());
        reply::integer(out, spec.arity);
        reply::array(out, spec.flags.len());
        for flag in spec.flags {
            reply::simple(out, flag);
        }
        reply::integer(out, spec.first_key);
        reply::integer(out, spec.last_key);
        reply::integer(out, spec.step);
    };
    let Some(sub) = args.first() else {
        reply::array(out, COMMANDS.len());
        for spec in COMMANDS {
            entry(out, spec);
        }
        return;
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"count" if args.len() == 1 => reply::integer(out, COMMANDS.len() as i64),
        b"list" if args.len() == 1 => {
            reply::array(out, COMMANDS.len());
            for spec in COMMANDS {
                reply::bulk(out, spec.name.as_bytes());
            }
        }
        b"info" => {
            reply::array(out, args.len() - 1);
            for name in &args[1..] {
                match find_command(name) {
                    Some(spec) => entry(out, spec),
                    None => reply::nil_array(out),
                }
            }
        }
        b"docs" => reply::array(out, 0),
        b"count" | b"list" => wrong_arity(
            out,
            &format!("command|{}", String::from_utf8_lossy(sub).to_lowercase()),
        ),
        _ => reply::error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. ringkv knows COMMAND, COMMAND COUNT, COMMAND DOCS, \
                 COMMAND INFO and COMMAND LIST",
                String::from_utf8_lossy(sub)
            ),
        ),
    }
}

/// CONFIG GET pattern...: the few parameters clients ask about (redis-benchmark asks `save` and
/// `appendonly`), as name/value pairs.
fn config_reply(out: &mut Vec<u8>, door: &Door, args: &[Vec<u8>]) {
    let sub = args.first().map(Vec::as_slice).unwrap_or_default();
    if !sub.eq_ignore_ascii_case(b"get") {
        return reply::error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. ringkv knows CONFIG GET only",
                String::from_utf8_lossy(sub)
            ),
        );
    }
    if args.len() < 2 {
        return wrong_arity(out, "config|get");
    }
    let parameters = [
        ("save", String::new()),
        ("appendonly", "no".to_string()),
        ("databases", "1".to_string()),
        ("maxclients", door.options.max_connections.to_string()),
        ("timeout", door.options.timeouts.idle.as_secs().to_string()),
        (
            "proto-max-bulk-len",
            door.request_limits.max_bulk.to_string(),
        ),
    ];
    let matching: Vec<&(&str, String)> = parameters
        .iter()
        .filter(|(name, _)| args[1..].iter().any(|p| glob_match(p, name.as_bytes())))
        .collect();
    reply::array(out, matching.len() * 2);
    for (name, value) in matching {
        reply::bulk(out, name.as_bytes());
        reply::bulk(out, value.as_bytes());
    }
}

/// Case-insensitive glob match with `*` and `?`, enough for CONFIG GET patterns.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob_match(rest, &name[skip..])),
        Some((&p, rest)) => match name.split_first() {
            Some((&n, name_rest)) if p == b'?' || p.eq_ignore_ascii_case(&n) => {
                glob_match(rest, name_rest)
            }
            _ => false,
        },
    }
}

/// The running door: its address, and the means to stop it. Dropping it stops it too.
pub type RespServer = ServerHandle;

/// Binds `addr` and serves RESP2 on it with `handler`, one thread per connection, at most
/// `options.max_connections` of them; `options` also gives the key and value limits and the
/// timeouts.
pub fn serve(addr: &str, options: ServerOptions, handler: Arc<dyn Handler>) -> Result<RespServer> {
    let bind_error = |source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(Registry::default());
    let door = Arc::new(Door {
        handler,
        options,
        request_limits: RequestLimits::for_limits(&options.limits),
        shutdown: Arc::clone(&shutdown),
        registry: Arc::clone(&registry),
        local_addr,
        started: Instant::now(),
        largest_answer: RecentLargest::default(),
        budget: MemoryBudget::process(),
    });
    let acceptor = std::thread::Builder::new()
        .name("resp-acceptor".into())
        .spawn(move || accept_loop(listener, door))
        .map_err(bind_error)?;
    Ok(ServerHandle::new(local_addr, shutdown, registry, acceptor))
}

fn accept_loop(listener: TcpListener, door: Arc<Door>) {
    let max_connections = door.options.max_connections;
    for incoming in listener.incoming() {
        if door.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors and similar: back off instead of spinning.
                log::warn!("resp: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        // At the limit, the connection idle longest makes room, as on the binary port.
        if door.registry.len() >= max_connections
            && !door.registry.close_idlest(door.options.evict_idle_after)
        {
            log::debug!("resp: refusing a connection: at the limit of {max_connections}");
            door.handler.refused(Status::BUSY);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
            close_after_reply(&stream);
            continue;
        }
        let registered = door.registry.register(&stream);
        let door = Arc::clone(&door);
        let spawned = std::thread::Builder::new()
            .name("resp-conn".into())
            .spawn(move || {
                serve_connection(stream, &door, registered.activity());
                drop(registered);
            });
        if let Err(e) = spawned {
            log::warn!("resp: cannot start a connection thread: {e}");
        }
    }
}

/// Ends a connection whose last reply has been written: the write side is closed first and what
/// the client still sends is read for a moment, so that closing does not reset the connection
/// (and lose the reply) while the client's bytes are unread.
fn close_after_reply(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 16 * 1024];
    let mut reader = stream;
    while Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves one connection until the client closes it, sends QUIT or malformed input, idles out,
/// stalls half-way through a request, or the door shuts down.
fn serve_connection(mut stream: TcpStream, door: &Arc<Door>, activity: Activity) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let timeouts = door.options.timeouts;
    let configured = stream
        .set_read_timeout(Some(timeouts.frame))
        .and_then(|_| stream.set_write_timeout(Some(timeouts.io)));
    if configured.is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut parser = Parser::new(door.request_limits);
    parser.count_against(Arc::clone(&door.budget));
    let mut out_held = Held::in_budget(Arc::clone(&door.budget));
    let mut client = Client::new(door);
    let mut idle_since = Instant::now();
    // When the request now arriving was first seen incomplete; reset by every whole request.
    let mut partial_since: Option<Instant> = None;
    // With a handler that answers later, replies are written by whichever thread has the
    // answers (see `crate::server::outbox`), and this thread only reads and hands on.
    let outbox = door
        .handler
        .answers_later()
        .then(|| stream.try_clone().ok().map(|s| Arc::new(Outbox::new(s))))
        .flatten();
    let mut reading_short = false;
    // How long answers may take to come, and each write of them.
    let waits = (
        timeouts.io * outbox::ANSWER_WAIT_IN_IO_TIMEOUTS,
        timeouts.io,
    );
    while !door.shutdown.load(Ordering::Relaxed) {
        if let Some(outbox) = &outbox {
            if !write_owed(&mut stream, outbox, timeouts.io, &peer) {
                return;
            }
            if parser.buffers.is_empty() {
                outbox.take_spare(&mut parser.buffers);
            }
        }
        let mut batch = Batch::new(door, &mut client);
        let mut ending: Option<std::result::Result<(), ProtocolError>> = None;
        let mut whole = 0;
        while !batch.is_full() {
            match parser.next_request() {
                Ok(Some(mut args)) => {
                    whole += 1;
                    let more = batch.plan(&mut args);
                    parser.recycle(args);
                    if !more {
                        ending = Some(Ok(()));
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    ending = Some(Err(error));
                    break;
                }
            }
        }
        let more_buffered = ending.is_none() && batch.is_full();
        if whole > 0 {
            // Not to be closed for room while its requests are answered or their replies wait.
            activity.busy();
        }
        let mut out = match &outbox {
            None => batch.run(),
            Some(outbox) => {
                if whole > 0 {
                    // One batch at a time, so that a batch never passes an earlier one.
                    if !wait_until_answered(&mut stream, outbox, waits, &peer) {
                        return;
                    }
                    batch.start(door, outbox);
                }
                if ending.is_some() && !wait_until_answered(&mut stream, outbox, waits, &peer) {
                    return;
                }
                Vec::new()
            }
        };
        if let Some(Err(error)) = &ending {
            log::info!("resp: connection from {peer}: protocol error: {error}");
            door.handler.refused(Status::BAD_FRAME);
            reply::error(&mut out, &format!("ERR Protocol error: {error}"));
        }
        if !out.is_empty() {
            out_held.cover_now(out.len());
            let written = write_all_within(&mut stream, &out, timeouts.io);
            out_held.release();
            if let Err(e) = written {
                log::debug!("resp: connection from {peer}: write failed: {e}");
                return;
            }
        }
        let quiet = outbox.as_ref().is_none_or(|o| !o.busy());
        if whole > 0 && quiet {
            activity.touch();
        }
        if ending.is_some() {
            close_after_reply(&stream);
            return;
        }
        if whole > 0 {
            idle_since = Instant::now();
            partial_since = None;
        }
        if more_buffered {
            continue;
        }
        // Just read above if this pass took requests.
        let now = if whole > 0 {
            idle_since
        } else {
            Instant::now()
        };
        if parser.has_partial() {
            partial_since.get_or_insert(now);
        }
        let deadline = partial_since.unwrap_or(now) + timeouts.frame;
        // While replies are on their way, the thread wakes often, to write what a finishing
        // thread could not; once a short wait finds nothing on its way, it waits long again.
        let busy = outbox.as_ref().is_some_and(|o| o.busy());
        if busy && !reading_short {
            if stream.set_read_timeout(Some(outbox::SHORT_READ)).is_err() {
                return;
            }
            reading_short = true;
        }
        match parser.read_from_until(&mut stream, Some(deadline)) {
            Ok(0) => return,
            Ok(_) => idle_since = Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                let limit = door.budget.limit();
                log::warn!(
                    "resp: connection from {peer}: refused a request: the {limit} bytes of the \
                     in-flight budget stayed taken for the frame timeout"
                );
                door.handler.refused(Status::BUSY);
                let mut out = Vec::new();
                reply::error(
                    &mut out,
                    &format!(
                        "ERR BUSY: the server's {limit} bytes for requests and replies in \
                         flight stayed taken for the frame timeout; the request was not read \
                         and nothing was done"
                    ),
                );
                let _ = write_all_within(&mut stream, &out, timeouts.io);
                close_after_reply(&stream);
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if reading_short && !outbox.as_ref().is_some_and(|o| o.busy()) {
                    if stream.set_read_timeout(Some(timeouts.frame)).is_err() {
                        return;
                    }
                    reading_short = false;
                    activity.touch();
                }
                if partial_since.is_none() && idle_since.elapsed() >= timeouts.idle {
                    log::debug!(
                        "resp: connection from {peer}: idle for {:?}, closing",
                        timeouts.idle
                    );
                    return;
                }
            }
            Err(e) => {
                log::debug!("resp: connection from {peer}: read failed: {e}");
                return;
            }
        }
        if partial_since.is_some_and(|since| since.elapsed() > timeouts.frame) {
            log::info!(
                "resp: connection from {peer}: dropped a request stalled for {:?}",
                timeouts.frame
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_args: 8,
            max_bulk: 32,
            max_inline: 64,
            max_request: 200,
        }
    }

    fn args(list: &[&[u8]]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.to_vec()).collect()
    }

    /// Every request in `input` (fed whole), and the error that ended it, if any.
    fn parse_all(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
        let mut parser = Parser::new(limits());
        parser.feed(input);
        let mut requests = Vec::new();
        loop {
            match parser.next_request() {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => return (requests, None),
                Err(e) => return (requests, Some(e)),
            }
        }
    }

    #[test]
    fn multibulk_requests_come_out_whole_and_in_order() {
        let (requests, error) =
            parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(error, None);
        assert_eq!(
            requests,
            vec![args(&[b"SET", b"k", b"v1"]), args(&[b"PING"])]
        );
    }

    #[test]
    fn bulk_strings_are_binary_safe() {
        let (requests, error) = parse_all(b"*2\r\n$4\r\na\r\nb\r\n$0\r\n\r\n");
        assert_eq!(error, None);
        assert_eq!(requests, vec![args(&[b"a\r\nb", b""])]);
    }

    /// Gives a request's list back as [`Batch::plan`] leaves it: the key taken out.
    fn recycle_as_a_batch_does(parser: &mut Parser, mut request: Vec<Vec<u8>>) {
        if let Some(key) = request.get_mut(1) {
            std::mem::take(key);
        }
        parser.recycle(request);
    }

    #[test]
    fn a_recycled_list_keeps_only_short_arguments_for_the_next_request() {
        let mut parser = Parser::new(limits());
        let long = vec![b'v'; SPARE_ARG_BYTES + 1];
        parser.recycle(vec![b"SET".to_vec(), Vec::new(), long]);
        let capacities: Vec<usize> = parser.spare.iter().map(Vec::capacity).collect();
        assert_eq!(capacities[1..], [0, 0]);
        assert!(capacities[0] >= 3);
        parser.feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let request = parser.next_request().unwrap().expect("a whole request");
        assert_eq!(request, args(&[b"GET", b"k"]));
        parser.recycle(request);
        // A list longer than a command's usual arguments is not kept: the last one stays.
        parser.recycle((0..=SPARE_ARGS).map(|_| Vec::new()).collect());
        assert_eq!(parser.spare, args(&[b"GET", b"k"]));
    }

    #[test]
    fn arguments_are_read_into_the_buffers_of_answered_requests() {
        let mut parser = Parser::new(limits());
        // As on a connection past its first request: the command's name has its place.
        parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        let first = parser.next_request().unwrap().expect("a whole request");
        recycle_as_a_batch_does(&mut parser, first);
        let mut answered = vec![Frame::request(
            Opcode::PUT,
            1,
            Vec::with_capacity(40),
            Vec::with_capacity(50),
        )];
        parser.buffers.keep_from(&mut answered);
        parser.feed(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n");
        let request = parser.next_request().unwrap().expect("a whole request");
        assert_eq!(request, args(&[b"SET", b"key", b"value"]));
        // The key went into the first request's key, the value into its value.
        assert_eq!(request[1].capacity(), 40);
        assert_eq!(request[2].capacity(), 50);
        assert!(parser.buffers.is_empty());
        recycle_as_a_batch_does(&mut parser, request);
        // None left: allocated as before.
        parser.feed(b"*2\r\n$3\r\nGET\r\n$2\r\nk2\r\n");
        let request = parser.next_request().unwrap().expect("a whole request");
        assert_eq!(request, args(&[b"GET", b"k2"]));
    }

    #[test]
    fn every_split_point_gives_the_same_requests() {
        let input: &[u8] =
            b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\r\n\r\n";
        let (whole, _) = parse_all(input);
        assert_eq!(whole.len(), 3);
        for cut in 0..input.len() {
            let mut parser = Parser::new(limits());
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                parser.feed(part);
                while let Some(request) = parser.next_request().unwrap() {
                    got.push(request.clone());
                    recycle_as_a_batch_does(&mut parser, request);
                }
            }
            assert_eq!(got, whole, "split at {cut}");
            assert!(!parser.has_partial(), "split at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_input_gives_the_same_requests() {
        let input: &[u8] = b"*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\nset k \"v w\"\r\n";
        let mut parser = Parser::new(limits());
        let mut got = Vec::new();
        for byte in input {
            parser.feed(std::slice::from_ref(byte));
            while let Some(request) = parser.next_request().unwrap() {
                got.push(request.clone());
                recycle_as_a_batch_does(&mut parser, request);
            }
        }
        assert_eq!(
            got,
            vec![args(&[b"ECHO", b"abc"]), args(&[b"set", b"k", b"v w"])]
        );
    }

    #[test]
    fn empty_requests_are_skipped() {
        let (requests, error) = parse_all(b"*0\r\n*-1\r\n\r\n   \r\n\nPING\r\n");
        assert_eq!(error, None);
        assert_eq!(requests, vec![args(&[b"PING"])]);
    }

    #[test]
    fn inline_requests_split_like_redis() {
        let (requests, error) = parse_all(b"SET  k   v\r\nGET k\n");
        assert_eq!(error, None);
        assert_eq!(
            requests,
            vec![args(&[b"SET", b"k", b"v"]), args(&[b"GET", b"k"])]
        );
        let split = |line: &[u8]| split_inline(line);
        assert_eq!(
            split(b"set \"a b\" 'c d'"),
            Some(args(&[b"set", b"a b", b"c d"]))
        );
        assert_eq!(
            split(b"x \"\\x41\\n\\t\\\"\\\\\" 'it\\'s'"),
            Some(args(&[b"x", b"A\n\t\"\\", b"it's"]))
        );
        assert_eq!(split(b"\"\""), Some(args(&[b""])));
        assert_eq!(split(b"a\0b c"), Some(args(&[b"a"])));
        assert_eq!(split(b"\"open"), None);
        assert_eq!(split(b"'open"), None);
        assert_eq!(split(b"\"closed\"x"), None);
        assert_eq!(split(b"'closed'x"), None);
    }

    #[test]
    fn malformed_multibulk_is_a_protocol_error() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*01\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*+1\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*9\r\n", ProtocolError::InvalidMultibulkLength),
            (
                b"*99999999999999999999\r\n",
                ProtocolError::InvalidMultibulkLength,
            ),
            (b"*1\r\nPING\r\n", ProtocolError::ExpectedDollar(b'P')),
            (b"*1\r\n\r\n", ProtocolError::ExpectedDollar(b'\r')),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$33\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$abc\r\n", ProtocolError::InvalidBulkLength),
            (
                b"*1\r\n$99999999999999999999\r\n",
                ProtocolError::InvalidBulkLength,
            ),
            (b"\"unbalanced\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (input, expected) in cases {
            let (requests, error) = parse_all(input);
            assert!(requests.is_empty(), "{input:?}");
            assert_eq!(error.as_ref(), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn lines_without_an_end_are_refused_past_the_inline_limit() {
        let long = vec![b'a'; 65];
        assert_eq!(parse_all(&long).1, Some(ProtocolError::InlineTooBig));
        assert_eq!(
            parse_all(&long[..64]).1,
            None,
            "still waiting for the line end"
        );
        let mut count = b"*".to_vec();
        count.extend(vec![b'1'; 70]);
        assert_eq!(
            parse_all(&count).1,
            Some(ProtocolError::MultibulkCountTooBig)
        );
        let mut bulk = b"*1\r\n$".to_vec();
        bulk.extend(vec![b'1'; 70]);
        assert_eq!(parse_all(&bulk).1, Some(ProtocolError::BulkCountTooBig));
    }

    #[test]
    fn a_request_over_the_byte_limit_is_refused_before_it_arrives() {
        // Eight 32-byte arguments take more than 200 bytes with their overhead.
        let mut input = b"*8\r\n".to_vec();
        for _ in 0..8 {
            input.extend_from_slice(b"$32\r\n");
            input.extend(vec![b'x'; 32]);
            input.extend_from_slice(b"\r\n");
        }
        let (requests, error) = parse_all(&input);
        assert!(requests.is_empty());
        assert_eq!(error, Some(ProtocolError::RequestTooBig { limit: 200 }));
    }

    #[test]
    fn a_big_bulk_is_read_in_a_few_doubling_reads() {
        let mut parser = Parser::new(RequestLimits {
            max_bulk: 1 << 20,
            max_request: 4 << 20,
            ..limits()
        });
        let mut input = b"*2\r\n$3\r\nSET\r\n$1000000\r\n".to_vec();
        input.extend(vec![7u8; 1_000_000]);
        input.extend_from_slice(b"\r\n");
        let mut src = io::Cursor::new(input);
        let mut reads = 0;
        let request = loop {
            if let Some(request) = parser.next_request().unwrap() {
                break request;
            }
            assert!(parser.read_from(&mut src).unwrap() > 0);
            reads += 1;
        };
        assert_eq!(request[1].len(), 1_000_000);
        // The buffer at most doubles per read (memory follows the bytes that arrive): from
        // 64 KiB, 1 MB takes about five reads, not one per 64 KiB.
        assert!(reads <= 7, "{reads} reads for one value");
        assert!(
            parser.buf.capacity() <= 4 << 20,
            "{}",
            parser.buf.capacity()
        );
    }

    #[test]
    fn integers_are_read_as_string2ll_reads_them() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"-12"), Some(-12));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"007",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser() {
        let mut rng = crate::rng::Rng::seeded(7);
        let alphabet = b"*$\r\n0123456789-+ \"'\\xab";
        for _ in 0..2000 {
            let len = rng.below(40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let _ = parse_all(&input);
        }
    }

    #[test]
    fn glob_patterns_match_config_names() {
        assert!(glob_match(b"save", b"save"));
        assert!(glob_match(b"SAVE", b"save"));
        assert!(glob_match(b"*", b"appendonly"));
        assert!(glob_match(b"max*", b"maxclients"));
        assert!(glob_match(b"s?ve", b"save"));
        assert!(!glob_match(b"sav", b"save"));
        assert!(!glob_match(b"*x", b"save"));
    }

    #[test]
    fn error_text_never_breaks_the_reply_line() {
        let mut out = Vec::new();
        unknown_command(&mut out, &args(&[b"bad\r\ncmd", b"x\ny"]));
        assert_eq!(
            out,
            b"-ERR unknown command 'bad  cmd', with args beginning with: 'x y' \r\n".to_vec()
        );
    }
}
