//! The crate's one error type.
//!
//! Every variant carries what happened and where (an address, a file, a frame field), so that one
//! log line is enough to act on.

use std::fmt;
use std::io;

use crate::protocol::{FrameError, Status};

/// Everything that can go wrong in ringkv, with its context.
#[derive(Debug)]
pub enum Error {
    /// Connecting to `addr` failed or timed out.
    Connect { addr: String, source: io::Error },
    /// Reading or writing on an established connection to `addr` failed.
    Io { addr: String, source: io::Error },
    /// The peer at `addr` sent bytes that are not a valid frame.
    Frame { addr: String, source: FrameError },
    /// The peer at `addr` closed the connection before answering.
    Closed { addr: String },
    /// A request of a batch to `addr` got no answer because an earlier one failed (`reason`).
    Unanswered { addr: String, reason: String },
    /// The peer answered a different request than the one we sent.
    Mismatch {
        addr: String,
        expected: u64,
        got: u64,
    },
    /// The server answered with an error status; `message` is its explanation.
    Status { status: Status, message: String },
    /// The peer at `addr` is at its connection limit: it refused the connection (BUSY) before
    /// reading any request, so nothing was done.
    Busy { addr: String, message: String },
    /// The server at `addr` refused this side's cluster token or password (`reason`).
    Unauthorized { addr: String, reason: String },
    /// A payload (SIZE, STATS or view body) could not be parsed.
    Payload(String),
    /// A view is unusable (no nodes, duplicate addresses, ...).
    View(String),
    /// A configuration value is out of range or an address does not parse.
    Config(String),
    /// Binding a listening socket failed.
    Bind { addr: String, source: io::Error },
    /// A backend's data directory could not be opened (its message names the file).
    Storage(crate::wal::OpenError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Error::Io { addr, source } => write!(f, "i/o error talking to {addr}: {source}"),
            Error::Frame { addr, source } => write!(f, "bad frame from {addr}: {source}"),
            Error::Closed { addr } => write!(f, "{addr} closed the connection"),
            Error::Unanswered { addr, reason } => {
                write!(f, "no answer from {addr}: {reason}")
            }
            Error::Mismatch {
                addr,
                expected,
                got,
            } => write!(
                f,
                "{addr} answered request {got} while request {expected} was outstanding"
            ),
            Error::Status { status, message } => {
                if message.is_empty() {
                    write!(f, "{status}")
                } else {
                    write!(f, "{status}: {message}")
                }
            }
            Error::Busy { addr, message } => {
                write!(
                    f,
                    "{addr} is at its connection limit ({message}); nothing was done"
                )
            }
            Error::Unauthorized { addr, reason } => write!(f, "{addr} {reason}"),
            Error::Payload(msg) => write!(f, "bad payload: {msg}"),
            Error::View(msg) => write!(f, "bad view: {msg}"),
            Error::Config(msg) => write!(f, "bad configuration: {msg}"),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Storage(source) => write!(f, "cannot open the data directory: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. }
            | Error::Io { source, .. }
            | Error::Bind { source, .. } => Some(source),
            Error::Frame { source, .. } => Some(source),
            Error::Storage(source) => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// The status a server should answer with when this error ends a request.
    pub fn status(&self) -> Status {
        match self {
            Error::Status { status, .. } => *status,
            Error::Busy { .. } => Status::BUSY,
            Error::Payload(_) | Error::View(_) | Error::Config(_) => Status::BAD_REQUEST,
            _ => Status::UNAVAILABLE,
        }
    }

    /// True when the peer could not be reached or stopped answering (as opposed to answering "no").
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Io { .. }
                | Error::Closed { .. }
                | Error::Frame { .. }
                | Error::Mismatch { .. }
        )
    }
}
