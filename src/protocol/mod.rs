//! The wire protocol: frame layout, encoding, decoding and limits.
//!
//! PROTOCOL.md is the normative description; this module is its one implementation. A frame on the
//! wire is a big-endian `u32` length followed by that many bytes of body:
//!
//! ```text
//! offset  size  field
//!      0     4  length of the body (everything below), big-endian
//!      4     2  magic "RK"
//!      6     1  version (1)
//!      7     1  kind: 0 request, 1 response
//!      8     1  opcode
//!      9     1  status (0 in requests)
//!     10     2  hops: relays this frame has taken so far
//!     12     2  hop limit: the most relays allowed (0: the receiver's default)
//!     14     8  request id, echoed in the answer
//!     22     8  view epoch the sender believes in (0: none)
//!     30     4  key length K
//!     34     4  value length V
//!     38     K  key
//!   38+K     V  value (for error answers: a UTF-8 message)
//! 38+K+V     4  CRC-32 of bytes 0 .. 38+K+V (length prefix included)
//! ```
//!
//! [`decode`] answers every byte sequence with a frame, a typed [`FrameError`] or "need more bytes"
//! (`Ok(None)`), and never allocates a length it has not checked against its limit.

pub mod payload;

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

/// The two bytes every frame body starts with.
pub const MAGIC: [u8; 2] = *b"RK";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes from the start of the frame (length prefix included) to the first key byte.
pub const HEADER_LEN: usize = 38;
/// Bytes of the CRC-32 trailer.
pub const CRC_LEN: usize = 4;
/// The smallest possible frame on the wire: header and trailer, empty key and value.
pub const MIN_FRAME: usize = HEADER_LEN + CRC_LEN;
/// Relays allowed when a request's hop limit is 0.
pub const DEFAULT_HOP_LIMIT: u16 = 64;

/// Size limits a receiver enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted, in bytes.
    pub max_key: usize,
    /// Longest value accepted, in bytes.
    pub max_value: usize,
    /// Longest frame read at all (length prefix included). A longer declared length ends the
    /// connection; a frame under it whose key or value breaks the limits above is refused with
    /// `TOO_LARGE` and the connection stays usable.
    pub max_frame: usize,
}

/// The frame limit never goes below this, whatever the key and value limits.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

impl Default for Limits {
    /// 16 KiB keys, 4 MiB values, 8 MiB frames.
    fn default() -> Self {
        Limits::new(16 * 1024, 4 * 1024 * 1024)
    }
}

impl Limits {
    /// Limits for the given longest key and value. The frame limit leaves room for a key or
    /// value somewhat over its limit to be refused politely (`TOO_LARGE`, connection kept)
    /// instead of by closing the connection: half as much again as the largest legal frame, at
    /// least [`DEFAULT_MAX_FRAME`], at most what the u32 length prefix can say.
    pub fn new(max_key: usize, max_value: usize) -> Limits {
        let largest = MIN_FRAME.saturating_add(max_key).saturating_add(max_value);
        Limits {
            max_key,
            max_value,
            max_frame: largest
                .saturating_add(largest / 2)
                .clamp(DEFAULT_MAX_FRAME, u32::MAX as usize),
        }
    }

    /// Checks a decoded frame's key and value against the limits.
    pub fn check(&self, frame: &Frame) -> Result<(), String> {
        if frame.key.len() > self.max_key {
            return Err(format!(
                "key of {} bytes is over the limit of {} bytes",
                frame.key.len(),
                self.max_key
            ));
        }
        // A tagged write's tag is not part of the value it stores; a view is not stored at all
        // (with its owner table it may outgrow a small value limit: the frame limit bounds it).
        let value_len = if frame.opcode == Opcode::CHAIN_PUT_ONCE_EXPIRING {
            frame
                .value
                .len()
                .saturating_sub(payload::WriteTag::LEN + crate::cluster::chain::EXPIRY_LEN)
        } else if frame.opcode.is_tagged() {
            frame.value.len().saturating_sub(payload::WriteTag::LEN)
        } else if frame.opcode == Opcode::CHAIN_PUT_EXPIRING {
            frame
                .value
                .len()
                .saturating_sub(crate::cluster::chain::EXPIRY_LEN)
        } else if frame.opcode == Opcode::VIEW_INSTALL {
            0
        } else if frame.opcode == Opcode::UPDATE {
            // The operation's header before its value; the head checks the value it would
            // store against the limit itself.
            frame
                .value
                .len()
                .saturating_sub(crate::update::LONGEST_HEADER)
        } else {
            frame.value.len()
        };
        if value_len > self.max_value {
            return Err(format!(
                "value of {value_len} bytes is over the limit of {} bytes",
                self.max_value
            ));
        }
        Ok(())
    }
}

macro_rules! named_codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$cmeta:meta])* $konst:ident = $value:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u8);

        impl $name {
            $($(#[$cmeta])* pub const $konst: $name = $name($value);)*

            /// The upper-case name of a known code, `None` for an unknown one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($konst)),)*
                    _ => None,
                }
            }

            /// Every known code.
            pub const ALL: &'static [$name] = &[$($name($value)),*];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{}(0x{:02x})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

named_codes!(
    /// What a request asks for. Unknown values decode fine and are refused by the server.
    Opcode {
        /// Store the value under the key.
        PUT = 0x01,
        /// Fetch the value stored under the key.
        GET = 0x02,
        /// Remove the key.
        DELETE = 0x03,
        /// Keys and bytes stored, per node.
        SIZE = 0x04,
        /// Per-node counters.
        STATS = 0x05,
        /// Liveness check.
        PING = 0x06,
        /// PUT that is applied at most once however often it is sent: the value starts with a
        /// [`payload::WriteTag`] (client id, sequence number), the value to store follows.
        PUT_ONCE = 0x07,
        /// DELETE that is applied at most once: the value is a [`payload::WriteTag`].
        DELETE_ONCE = 0x08,
        /// Internal: the frontend hands a backend the member list.
        VIEW_INSTALL = 0x10,
        /// The view the server holds: the ring's members, routing and placement.
        VIEW_GET = 0x11,
        /// Internal: a chain member passes a PUT it applied to its successor in the key's chain.
        CHAIN_PUT = 0x12,
        /// Internal: a chain member passes a DELETE it applied to its successor in the chain.
        CHAIN_DELETE = 0x13,
        /// Internal: the view keeper's probe; the answer carries the backend's epoch and the
        /// incarnation it was started with.
        HEALTH = 0x14,
        /// Internal: a syncing node asks a chain member for a copy of some partitions; the
        /// member starts recording the keys it writes there.
        SYNC_BEGIN = 0x15,
        /// Internal: the next batch of a transfer's snapshot.
        SYNC_COPY = 0x16,
        /// Internal: the keys a transfer's source wrote since the last batch.
        SYNC_DELTA = 0x17,
        /// Internal: the syncing node is done; the source stops recording.
        SYNC_END = 0x18,
        /// Internal: CHAIN_PUT of a PUT_ONCE, with its write tag.
        CHAIN_PUT_ONCE = 0x19,
        /// Internal: CHAIN_DELETE of a DELETE_ONCE, with its write tag.
        CHAIN_DELETE_ONCE = 0x1a,
        /// Internal: a server that opened the connection presents the cluster token.
        PEER_AUTH = 0x1b,
        /// Internal: CHAIN_PUT of a value that expires: the value starts with the Unix time
        /// in milliseconds it expires at (u64), the value to store follows.
        CHAIN_PUT_EXPIRING = 0x1f,
        /// Asks the view keeper to add the backend at the key's address to the cluster.
        MEMBER_JOIN = 0x1c,
        /// Asks the view keeper to hand off the partitions of the backend at the key's address
        /// and take it out of the cluster.
        MEMBER_LEAVE = 0x1d,
        /// The client presents the password of a server started with `--require-auth`; until
        /// it has, the server answers every other request (but PEER_AUTH) UNAUTHORIZED.
        AUTH = 0x1e,
        /// A read-modify-write of the key at its head ([`crate::update::Update`] in the value):
        /// increment, set if absent or present, swap, get and delete, append.
        UPDATE = 0x20,
        /// The next keys of a walk over every key of the cluster, from a cursor
        /// ([`crate::scan`]).
        SCAN = 0x21,
        /// Internal: one step of a SCAN at a backend, the keys of one part of its store.
        SCAN_PART = 0x22,
        /// Deletes every key, at a frontend started to allow it (Redis's FLUSHALL).
        FLUSH = 0x23,
        /// Internal: CHAIN_PUT_ONCE of a value that expires: the write tag, the u64 expiry time
        /// (Unix milliseconds), then the value (a head completing a retried write of a key that
        /// has a time to live since).
        CHAIN_PUT_ONCE_EXPIRING = 0x24,
    }
);

named_codes!(
    /// The outcome of a request, carried by responses.
    Status {
        /// Done; GET's value is in the value field.
        OK = 0x00,
        /// GET or DELETE of a key that is not stored.
        NOT_FOUND = 0x01,
        /// The frame was malformed (magic, version, lengths, CRC); the connection is closed.
        BAD_FRAME = 0x10,
        /// A key, value or frame over the receiver's limits.
        TOO_LARGE = 0x11,
        /// The opcode is not one this server knows.
        UNKNOWN_OPCODE = 0x12,
        /// The server is at its connection limit; the connection is closed.
        BUSY = 0x13,
        /// A node needed for the request could not be reached; the message names it.
        UNAVAILABLE = 0x14,
        /// The node is at its storage limit; nothing was changed.
        STORAGE_FULL = 0x15,
        /// The request took more relays than its hop limit allows.
        LOOP = 0x16,
        /// The sender's view epoch differs from the receiver's.
        STALE_VIEW = 0x17,
        /// The backend has not been given a view yet.
        NO_VIEW = 0x18,
        /// The request is well formed but makes no sense (empty key, a response sent as request...).
        BAD_REQUEST = 0x19,
        /// The server failed in a way that is not the request's fault.
        INTERNAL = 0x1a,
        /// A tagged write older than what the node remembers of its client: not applied now; an
        /// earlier attempt may have taken effect.
        TOO_OLD = 0x1b,
        /// A request only a cluster member may send, on a connection that did not present the
        /// cluster token, or a wrong token; or any request on a connection that has not yet
        /// presented the password a server requires (AUTH), or a wrong password.
        UNAUTHORIZED = 0x1c,
    }
);

impl Opcode {
    /// Whether it carries a write a chain member applied to the next member of the key's chain.
    pub fn is_chain_write(self) -> bool {
        matches!(
            self,
            Opcode::CHAIN_PUT
                | Opcode::CHAIN_DELETE
                | Opcode::CHAIN_PUT_ONCE
                | Opcode::CHAIN_DELETE_ONCE
                | Opcode::CHAIN_PUT_EXPIRING
                | Opcode::CHAIN_PUT_ONCE_EXPIRING
        )
    }

    /// Whether the value starts with a [`payload::WriteTag`].
    pub fn is_tagged(self) -> bool {
        matches!(
            self,
            Opcode::PUT_ONCE
                | Opcode::DELETE_ONCE
                | Opcode::CHAIN_PUT_ONCE
                | Opcode::CHAIN_DELETE_ONCE
                | Opcode::CHAIN_PUT_ONCE_EXPIRING
        )
    }

    /// Whether the request removes its key (DELETE and its chain and tagged forms).
    pub fn is_delete(self) -> bool {
        matches!(
            self,
            Opcode::DELETE | Opcode::DELETE_ONCE | Opcode::CHAIN_DELETE | Opcode::CHAIN_DELETE_ONCE
        )
    }
}

impl Status {
    /// True for the statuses that mean the operation happened as asked (OK and NOT_FOUND).
    pub fn is_success(self) -> bool {
        self == Status::OK || self == Status::NOT_FOUND
    }
}

/// Whether a frame asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent by a client, a frontend or a relaying backend.
    Request = 0,
    /// The answer to a request, carrying its request id.
    Response = 1,
}

/// One protocol message, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub opcode: Opcode,
    pub status: Status,
    pub hops: u16,
    pub hop_limit: u16,
    pub request_id: u64,
    pub epoch: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("opcode", &self.opcode)
            .field("status", &self.status)
            .field("hops", &self.hops)
            .field("hop_limit", &self.hop_limit)
            .field("request_id", &self.request_id)
            .field("epoch", &self.epoch)
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .finish()
    }
}

impl Frame {
    /// A request with the given opcode, key and value; the other fields zero.
    pub fn request(opcode: Opcode, request_id: u64, key: Vec<u8>, value: Vec<u8>) -> Frame {
        Frame {
            kind: Kind::Request,
            opcode,
            status: Status::OK,
            hops: 0,
            hop_limit: 0,
            request_id,
            epoch: 0,
            key,
            value,
        }
    }

    /// The answer to `self` with the given status and value: same opcode, id, hops and epoch.
    pub fn reply(&self, status: Status, value: Vec<u8>) -> Frame {
        Frame {
            kind: Kind::Response,
            opcode: self.opcode,
            status,
            hops: self.hops,
            hop_limit: self.hop_limit,
            request_id: self.request_id,
            epoch: self.epoch,
            key: Vec::new(),
            value,
        }
    }

    /// An error answer to `self` whose value is the human-readable `message`.
    pub fn error_reply(&self, status: Status, message: impl Into<String>) -> Frame {
        self.reply(status, message.into().into_bytes())
    }

    /// An error answer to a request that could not be decoded: only its id (or 0) is known.
    pub fn error_for_id(request_id: u64, status: Status, message: impl Into<String>) -> Frame {
        Frame {
            kind: Kind::Response,
            opcode: Opcode(0),
            status,
            hops: 0,
            hop_limit: 0,
            request_id,
            epoch: 0,
            key: Vec::new(),
            value: message.into().into_bytes(),
        }
    }

    /// The value read as an error message (lossy UTF-8).
    pub fn message(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }

    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.borrowed().encoded_len()
    }

    /// Appends the frame's wire bytes to `out`.
    ///
    /// # Panics
    /// If the key or value is longer than `u32::MAX` bytes, which no limit allows.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_into_with_id(self.request_id, out)
    }

    /// Appends the frame's wire bytes to `out` as if its request id were `request_id`: a
    /// connection that carries many callers' requests gives each an id of its own.
    ///
    /// # Panics
    /// As [`Frame::encode_into`].
    pub fn encode_into_with_id(&self, request_id: u64, out: &mut Vec<u8>) {
        self.borrowed().encode_into_with_id(request_id, out)
    }

    /// The same frame with its key and value borrowed.
    pub fn borrowed(&self) -> FrameRef<'_> {
        FrameRef {
            kind: self.kind,
            opcode: self.opcode,
            status: self.status,
            hops: self.hops,
            hop_limit: self.hop_limit,
            request_id: self.request_id,
            epoch: self.epoch,
            key: &self.key,
            value_head: &[],
            value: &self.value,
        }
    }

    /// The frame's wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }
}

/// A frame to encode whose key and value are borrowed, the value in two parts: what a frontend
/// sends for a client's request (its own header fields, a write tag before the client's value)
/// is encoded from the request as it arrived, without a copy of its key and value.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub kind: Kind,
    pub opcode: Opcode,
    pub status: Status,
    pub hops: u16,
    pub hop_limit: u16,
    pub request_id: u64,
    pub epoch: u64,
    pub key: &'a [u8],
    /// The value's first bytes (a write tag, or nothing).
    pub value_head: &'a [u8],
    /// The rest of the value.
    pub value: &'a [u8],
}

impl FrameRef<'_> {
    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.key.len() + self.value_len() + CRC_LEN
    }

    fn value_len(&self) -> usize {
        self.value_head.len() + self.value.len()
    }

    /// Appends the frame's wire bytes to `out` with request id `request_id` (see
    /// [`Frame::encode_into_with_id`]).
    ///
    /// # Panics
    /// If the key or value is longer than `u32::MAX` bytes, which no limit allows.
    pub fn encode_into_with_id(&self, request_id: u64, out: &mut Vec<u8>) {
        let start = out.len();
        let total = self.encoded_len();
        let body_len = u32::try_from(total - LEN_PREFIX).expect("frame longer than 4 GiB");
        let mut header = [0u8; HEADER_LEN];
        BigEndian::write_u32(&mut header[0..4], body_len);
        header[4..6].copy_from_slice(&MAGIC);
        header[6] = VERSION;
        header[7] = self.kind as u8;
        header[8] = self.opcode.0;
        header[9] = self.status.0;
        BigEndian::write_u16(&mut header[10..12], self.hops);
        BigEndian::write_u16(&mut header[12..14], self.hop_limit);
        BigEndian::write_u64(&mut header[14..22], request_id);
        BigEndian::write_u64(&mut header[22..30], self.epoch);
        BigEndian::write_u32(&mut header[30..34], self.key.len() as u32);
        BigEndian::write_u32(&mut header[34..38], self.value_len() as u32);
        out.reserve(total);
        out.extend_from_slice(&header);
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value_head);
        out.extend_from_slice(self.value);
        let crc = crc32(&out[start..]);
        let mut trailer = [0u8; CRC_LEN];
        BigEndian::write_u32(&mut trailer, crc);
        out.extend_from_slice(&trailer);
    }

    /// An owned copy.
    pub fn to_frame(&self) -> Frame {
        let mut value = Vec::with_capacity(self.value_len());
        value.extend_from_slice(self.value_head);
        value.extend_from_slice(self.value);
        Frame {
            kind: self.kind,
            opcode: self.opcode,
            status: self.status,
            hops: self.hops,
            hop_limit: self.hop_limit,
            request_id: self.request_id,
            epoch: self.epoch,
            key: self.key.to_vec(),
            value,
        }
    }
}

/// Why a byte sequence is not a frame. Every variant ends the connection it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is over the receiver's frame limit.
    TooLarge { len: u64, limit: usize },
    /// The length prefix is too small to hold a header and a CRC.
    TooShort { len: u64 },
    /// The body does not start with "RK".
    BadMagic { found: [u8; 2] },
    /// A version this implementation does not speak.
    BadVersion { found: u8 },
    /// The kind byte is neither request (0) nor response (1).
    BadKind { found: u8 },
    /// Key and value lengths do not add up to the length prefix.
    LengthMismatch {
        len: u64,
        key_len: u32,
        value_len: u32,
    },
    /// The CRC-32 trailer does not match the bytes before it.
    BadCrc { expected: u32, computed: u32 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, limit } => {
                write!(f, "frame of {len} bytes is over the limit of {limit} bytes")
            }
            FrameError::TooShort { len } => write!(
                f,
                "length prefix {len} is shorter than the smallest body ({} bytes)",
                MIN_FRAME - LEN_PREFIX
            ),
            FrameError::BadMagic { found } => write!(
                f,
                "bad magic 0x{:02x}{:02x} (expected \"RK\")",
                found[0], found[1]
            ),
            FrameError::BadVersion { found } => {
                write!(
                    f,
                    "protocol version {found} is not supported (this is {VERSION})"
                )
            }
            FrameError::BadKind { found } => write!(f, "kind byte {found} is neither 0 nor 1"),
            FrameError::LengthMismatch {
                len,
                key_len,
                value_len,
            } => write!(
                f,
                "key length {key_len} and value length {value_len} do not fit a body of {len} bytes"
            ),
            FrameError::BadCrc { expected, computed } => write!(
                f,
                "CRC mismatch: frame says 0x{expected:08x}, bytes give 0x{computed:08x}"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// The status an error answer to this malformed frame carries.
    pub fn status(&self) -> Status {
        match self {
            FrameError::TooLarge { .. } => Status::TOO_LARGE,
            _ => Status::BAD_FRAME,
        }
    }
}

/// Checks what can be checked of a frame before all of it has arrived: the length against
/// `max_frame`, then magic, version and kind as soon as their bytes are in.
fn check_prefix(buf: &[u8], max_frame: usize) -> Result<(), FrameError> {
    if buf.len() >= LEN_PREFIX {
        let len = u64::from(BigEndian::read_u32(&buf[0..4]));
        let total = len + LEN_PREFIX as u64;
        if total > max_frame as u64 {
            return Err(FrameError::TooLarge {
                len: total,
                limit: max_frame,
            });
        }
        if total < MIN_FRAME as u64 {
            return Err(FrameError::TooShort { len });
        }
    }
    if buf.len() >= 6 && buf[4..6] != MAGIC {
        return Err(FrameError::BadMagic {
            found: [buf[4], buf[5]],
        });
    }
    if buf.len() >= 7 && buf[6] != VERSION {
        return Err(FrameError::BadVersion { found: buf[6] });
    }
    if buf.len() >= 8 && buf[7] > 1 {
        return Err(FrameError::BadKind { found: buf[7] });
    }
    Ok(())
}

/// How many bytes the frame at the start of `buf` takes, once its length prefix is in.
///
/// `Ok(None)` means fewer than four bytes are buffered. The length is checked against
/// `max_frame`, so a caller may reserve it.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    check_prefix(buf, max_frame)?;
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    Ok(Some(BigEndian::read_u32(&buf[0..4]) as usize + LEN_PREFIX))
}

/// The CRC-32 of `bytes` (section 4 of PROTOCOL.md; the log's records use it too).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut hasher = crc32_hasher();
    hasher.update(bytes);
    hasher.finalize()
}

/// A fresh CRC-32 hasher. crc32fast looks up the CPU's features for each new hasher (about 30
/// instructions, four or five times a request); a copy of one made once does not.
pub fn crc32_hasher() -> crc32fast::Hasher {
    static FIRST: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    FIRST.get_or_init(crc32fast::Hasher::new).clone()
}

/// Decodes the frame at the start of `buf`.
///
/// Returns `Ok(Some((frame, consumed)))` when a whole frame is buffered, `Ok(None)` when more
/// bytes are needed, and an error as soon as the bytes cannot be a frame.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_with(buf, max_frame, <[u8]>::to_vec)
}

/// [`decode`], with the frame's key and value copied into buffers `owned` makes of them (a
/// reader that reuses buffers hands out its own).
pub fn decode_with(
    buf: &[u8],
    max_frame: usize,
    mut owned: impl FnMut(&[u8]) -> Vec<u8>,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let total = match frame_len(buf, max_frame)? {
        Some(total) if buf.len() >= total => total,
        _ => return Ok(None),
    };
    let frame = &buf[..total];
    let key_len = BigEndian::read_u32(&frame[30..34]);
    let value_len = BigEndian::read_u32(&frame[34..38]);
    let declared = HEADER_LEN as u64 + u64::from(key_len) + u64::from(value_len) + CRC_LEN as u64;
    if declared != total as u64 {
        return Err(FrameError::LengthMismatch {
            len: (total - LEN_PREFIX) as u64,
            key_len,
            value_len,
        });
    }
    let crc_at = total - CRC_LEN;
    let expected = BigEndian::read_u32(&frame[crc_at..]);
    let computed = crc32(&frame[..crc_at]);
    if expected != computed {
        return Err(FrameError::BadCrc { expected, computed });
    }
    let key_end = HEADER_LEN + key_len as usize;
    let kind = if frame[7] == 0 {
        Kind::Request
    } else {
        Kind::Response
    };
    let decoded = Frame {
        kind,
        opcode: Opcode(frame[8]),
        status: Status(frame[9]),
        hops: BigEndian::read_u16(&frame[10..12]),
        hop_limit: BigEndian::read_u16(&frame[12..14]),
        request_id: BigEndian::read_u64(&frame[14..22]),
        epoch: BigEndian::read_u64(&frame[22..30]),
        key: owned(&frame[HEADER_LEN..key_end]),
        value: owned(&frame[key_end..crc_at]),
    };
    Ok(Some((decoded, total)))
}

/// The request id of a frame whose header is buffered, even if the rest is malformed, so that an
/// error answer can name the request it refuses.
pub fn peek_request_id(buf: &[u8]) -> u64 {
    if buf.len() >= 22 {
        BigEndian::read_u64(&buf[14..22])
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
