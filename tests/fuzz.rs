//! Decoder fuzzing that runs on stable Rust: property-based tests (proptest) over everything
//! that reads bytes from a peer, asserting that no input panics and that whatever comes out is
//! consistent.
//!
//! - [`protocol::decode`] and [`protocol::frame_len`] over arbitrary bytes, mutated valid frames
//!   and every truncation of a valid frame;
//! - [`FrameReader`] over the same streams, delivered in random short reads (with interrupted
//!   and would-block reads among them), compared with what `decode` makes of the same bytes;
//! - the payload decoders ([`payload::decode_view`], [`payload::decode_reports`],
//!   [`payload::decode_transfer_batch`], [`payload::decode_points`], [`WriteTag::split`], and
//!   UPDATE's [`ringkv::update::Update::decode`], whose operations are applied at the clock's
//!   extremes too) over
//!   arbitrary bytes, mutated valid encodings and truncations, with the memory each decode
//!   takes measured by a counting allocator: a decoder must not allocate what a count in its
//!   input announces, only what the bytes it was given can hold;
//! - the Redis-protocol [`Parser`] (and [`resp::split_inline`]) over random bytes, RESP-shaped
//!   tokens, mutated valid commands and truncations, fed whole, in chunks and through
//!   `read_from`, which must all agree;
//! - both doors of a [`LocalCluster`] end to end: fuzzed bytes are written to a connection and
//!   its write side closed; the server must answer with well-formed replies (as many as the
//!   decoder says it was sent requests, plus one error answer for malformed input) and close,
//!   no server thread may panic (even one whose panic the server catches), and a fresh
//!   connection still gets its PING answered.
//!
//! Each property runs a fixed number of cases (see [`PROPERTIES`]), so that the file takes
//! seconds in release mode. `examples/fuzz_decoders.rs` runs the same properties with many more
//! cases: `cargo run --release --example fuzz_decoders -- 1000000`. `FUZZ_SEED=<u64>` makes a
//! run repeatable; nothing is written to disk when a case fails (the minimal failing input is
//! in the failure message instead).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use ringkv::connection::{FrameReader, ReadError, Timeouts};
use ringkv::protocol::payload::{self, NodeReport, TransferBatch, TransferEntry, WriteTag};
use ringkv::protocol::{self, Frame, FrameError, Kind, Limits, Opcode, Status};
use ringkv::resp::{self, Parser, ProtocolError, RequestLimits};
use ringkv::{
    BackendConfig, FrontendConfig, LocalCluster, NodeState, Placement, Ring, Routing,
    ServerOptions, View,
};

// ---------------------------------------------------------------------------------------------
// The properties, their case counts, and how they are run.

/// One property: its name, how to run it for a number of cases, and how many cases it gets.
pub struct Property {
    pub name: &'static str,
    pub run: fn(u32) -> Result<Ran, String>,
    /// Cases in `cargo test` (the whole file stays within seconds in release mode).
    pub test_cases: u32,
    /// For a long run of N cases, this property gets N / `long_divisor` of them (at least
    /// `test_cases`): the end-to-end ones cost a few connections per case.
    pub long_divisor: u32,
}

impl Property {
    /// Cases for a long run of `cases`.
    pub fn long_cases(&self, cases: u32) -> u32 {
        (cases / self.long_divisor.max(1)).max(self.test_cases.min(cases))
    }
}

/// Every property of this file, in the order the example runs them.
pub const PROPERTIES: &[Property] = &[
    Property {
        name: "frame_decode_arbitrary_bytes",
        run: frame_decode_arbitrary_bytes,
        test_cases: 20_000,
        long_divisor: 1,
    },
    Property {
        name: "frame_decode_mutated_frames",
        run: frame_decode_mutated_frames,
        test_cases: 20_000,
        long_divisor: 1,
    },
    Property {
        name: "frame_decode_truncations",
        run: frame_decode_truncations,
        test_cases: 2_000,
        long_divisor: 1,
    },
    Property {
        name: "frame_reader_matches_decode",
        run: frame_reader_matches_decode,
        test_cases: 5_000,
        long_divisor: 1,
    },
    Property {
        name: "payload_decoders_arbitrary_bytes",
        run: payload_decoders_arbitrary_bytes,
        test_cases: 20_000,
        long_divisor: 1,
    },
    Property {
        name: "payload_decoders_mutated_encodings",
        run: payload_decoders_mutated_encodings,
        test_cases: 10_000,
        long_divisor: 1,
    },
    Property {
        name: "payload_decoders_truncations",
        run: payload_decoders_truncations,
        test_cases: 2_000,
        long_divisor: 1,
    },
    Property {
        name: "payload_announced_counts",
        run: payload_announced_counts,
        test_cases: 1,
        long_divisor: u32::MAX,
    },
    Property {
        name: "resp_parser_arbitrary_input",
        run: resp_parser_arbitrary_input,
        test_cases: 10_000,
        long_divisor: 1,
    },
    Property {
        name: "resp_parser_valid_commands_and_truncations",
        run: resp_parser_valid_commands_and_truncations,
        test_cases: 2_000,
        long_divisor: 1,
    },
    Property {
        name: "resp_split_inline",
        run: resp_split_inline,
        test_cases: 10_000,
        long_divisor: 1,
    },
    Property {
        name: "end_to_end_native_door",
        run: end_to_end_native_door,
        test_cases: 384,
        long_divisor: 50,
    },
    Property {
        name: "end_to_end_resp_door",
        run: end_to_end_resp_door,
        test_cases: 256,
        long_divisor: 50,
    },
];

/// How a run of one property went.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Cases the test function was called with (shrinking included, if any).
    pub cases: u32,
    pub elapsed: Duration,
    /// How many cases ended which way (a frame decoded, an error, ...): shown, never asserted,
    /// so that a property that has stopped reaching anything interesting is seen to.
    pub tally: Vec<(&'static str, u32)>,
}

impl Ran {
    /// The tally as `label: count, ...`.
    pub fn tally_text(&self) -> String {
        let parts: Vec<String> = self
            .tally
            .iter()
            .map(|(label, n)| format!("{label}: {n}"))
            .collect();
        parts.join(", ")
    }
}

thread_local! {
    static TALLY: RefCell<Vec<(&'static str, u32)>> = const { RefCell::new(Vec::new()) };
}

/// Counts one case under `label` (never inside [`peak_alloc`]: it may allocate).
fn tally(label: &'static str) {
    TALLY.with(|tally| {
        let mut tally = tally.borrow_mut();
        match tally.iter_mut().find(|(l, _)| *l == label) {
            Some(entry) => entry.1 += 1,
            None => tally.push((label, 1)),
        }
    });
}

/// The seed of a repeatable run: `FUZZ_SEED`, if set (else proptest's own
/// `PROPTEST_RNG_SEED`, else a random one).
fn rng_seed() -> Option<RngSeed> {
    let seed = std::env::var("FUZZ_SEED").ok()?;
    Some(RngSeed::Fixed(seed.trim().parse().ok()?))
}

/// Runs `test` on `cases` values of `strategy`; the error is proptest's minimal failing case.
pub fn run_property<S>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<Ran, String>
where
    S: Strategy,
    S::Value: Debug,
{
    mark_fuzzer_thread();
    let mut config = Config {
        cases,
        // A failing case is reported, never written into the source tree.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    if let Some(seed) = rng_seed() {
        config.rng_seed = seed;
    }
    let calls = Cell::new(0u32);
    TALLY.with(|tally| tally.borrow_mut().clear());
    let started = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |value| {
        calls.set(calls.get().saturating_add(1));
        test(value)
    });
    let ran = Ran {
        cases: calls.get(),
        elapsed: started.elapsed(),
        tally: TALLY.with(|tally| std::mem::take(&mut *tally.borrow_mut())),
    };
    match result {
        Ok(()) => Ok(ran),
        Err(TestError::Fail(reason, value)) => Err(format!(
            "{reason}\nminimal failing input ({} cases run): {value:#?}",
            ran.cases
        )),
        Err(TestError::Abort(reason)) => Err(format!("aborted: {reason}")),
    }
}

/// Runs the property called `name` with its test case count, failing the test on a failure.
fn check(name: &str) {
    let property = PROPERTIES
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no property {name}"));
    match (property.run)(property.test_cases) {
        Ok(ran) => eprintln!(
            "{name}: {} cases in {:.2?} ({})",
            ran.cases,
            ran.elapsed,
            ran.tally_text()
        ),
        Err(failure) => panic!("{name} failed: {failure}"),
    }
}

#[test]
fn frame_decode_over_arbitrary_bytes() {
    check("frame_decode_arbitrary_bytes");
}

#[test]
fn frame_decode_over_mutated_frames() {
    check("frame_decode_mutated_frames");
}

#[test]
fn frame_decode_over_truncations() {
    check("frame_decode_truncations");
}

#[test]
fn frame_reader_over_short_reads() {
    check("frame_reader_matches_decode");
}

#[test]
fn payload_decoders_over_arbitrary_bytes() {
    check("payload_decoders_arbitrary_bytes");
}

#[test]
fn payload_decoders_over_mutated_encodings() {
    check("payload_decoders_mutated_encodings");
}

#[test]
fn payload_decoders_over_truncations() {
    check("payload_decoders_truncations");
}

#[test]
fn payload_decoders_do_not_allocate_announced_counts() {
    check("payload_announced_counts");
}

#[test]
fn resp_parser_over_arbitrary_input() {
    check("resp_parser_arbitrary_input");
}

#[test]
fn resp_parser_over_valid_commands_and_truncations() {
    check("resp_parser_valid_commands_and_truncations");
}

#[test]
fn resp_split_inline_over_arbitrary_lines() {
    check("resp_split_inline");
}

#[test]
fn native_door_survives_fuzzed_input() {
    check("end_to_end_native_door");
}

#[test]
fn resp_door_survives_fuzzed_input() {
    check("end_to_end_resp_door");
}

// ---------------------------------------------------------------------------------------------
// Memory: a counting allocator, per thread.

/// The system allocator, counting per thread the bytes live and the most live since the last
/// [`peak_alloc`] began.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is passed to `System` unchanged; the bookkeeping only touches
// constant-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at once on this
/// thread (what it returns included).
pub fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

/// What a decoder given `input_len` bytes may allocate at most: a small constant (an error
/// message) plus a bounded factor of its input (each decoded item takes a few times the bytes
/// it was read from, and vectors grow by doubling). An announced count decides nothing.
fn payload_budget(input_len: usize) -> usize {
    4096 + 64 * input_len
}

// ---------------------------------------------------------------------------------------------
// Panics on server threads.

thread_local! {
    static FUZZER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Panics of threads that are not running properties: the servers' (recorded even when the
/// server catches them, as it does for its request handlers).
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn mark_fuzzer_thread() {
    FUZZER_THREAD.with(|f| f.set(true));
}

fn watch_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !FUZZER_THREAD.try_with(Cell::get).unwrap_or(false) {
                let thread = std::thread::current();
                let entry = format!("thread {}: {info}", thread.name().unwrap_or("unnamed"));
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(entry);
            }
            previous(info);
        }));
    });
}

fn server_panics() -> Vec<String> {
    SERVER_PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Byte mutations.

/// One edit of a byte string. Positions are proptest indices, scaled to the length at the
/// time the edit is applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    /// A big-endian u32 written over four bytes somewhere.
    Word(Index, u32),
    /// A big-endian u32 written at a fixed offset (a frame's length, key or value length).
    Field(usize, u32),
    Truncate(Index),
    Splice(Index, Vec<u8>),
}

/// Numbers that lengths and counts go wrong with.
fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        select(vec![
            0,
            1,
            2,
            3,
            4,
            33,
            34,
            37,
            38,
            41,
            42,
            255,
            256,
            0xffff,
            0x1_0000,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX - 3,
            u32::MAX
        ]),
        0u32..1024,
        any::<u32>(),
    ]
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        2 => (any::<Index>(), interesting_u32()).prop_map(|(at, w)| Mutation::Word(at, w)),
        2 => (select(vec![0usize, 30, 34]), interesting_u32())
            .prop_map(|(at, w)| Mutation::Field(at, w)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(at, b)| Mutation::Splice(at, b)),
    ]
}

fn arb_mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(arb_mutation(), 1..5)
}

/// Applies `mutations` to `bytes`, in order.
pub fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Flip(at, mask) if len > 0 => bytes[at.index(len)] ^= mask,
            Mutation::Set(at, b) if len > 0 => bytes[at.index(len)] = *b,
            Mutation::Insert(at, b) => bytes.insert(at.index(len + 1), *b),
            Mutation::Remove(at) if len > 0 => {
                bytes.remove(at.index(len));
            }
            Mutation::Word(at, w) if len >= 4 => {
                let at = at.index(len - 3);
                bytes[at..at + 4].copy_from_slice(&w.to_be_bytes());
            }
            Mutation::Field(at, w) if len >= at + 4 => {
                bytes[*at..at + 4].copy_from_slice(&w.to_be_bytes());
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
            Mutation::Splice(at, extra) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            _ => {}
        }
    }
}

/// Rewrites the CRC trailer of the frame at the start of `bytes` (as far as its length prefix
/// says, or the bytes go) to match, so that a mutation gets past the CRC check to what follows.
pub fn fix_crc(bytes: &mut [u8]) {
    if bytes.len() < protocol::LEN_PREFIX {
        return;
    }
    let declared = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let total = declared
        .saturating_add(protocol::LEN_PREFIX)
        .min(bytes.len());
    if total < protocol::LEN_PREFIX + protocol::CRC_LEN {
        return;
    }
    let at = total - protocol::CRC_LEN;
    let crc = crc32fast::hash(&bytes[..at]);
    bytes[at..total].copy_from_slice(&crc.to_be_bytes());
}

/// `bytes` as hex, for failure messages (a frame's Debug shows only its value's length).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Frames.

fn arb_opcode() -> impl Strategy<Value = Opcode> {
    prop_oneof![
        3 => select(Opcode::ALL),
        1 => any::<u8>().prop_map(Opcode),
    ]
}

/// Any frame with a key of at most `max_key` and a value of at most `max_value` bytes; mostly
/// requests.
pub fn arb_frame(max_key: usize, max_value: usize) -> impl Strategy<Value = Frame> {
    (
        prop_oneof![4 => Just(Kind::Request), 1 => Just(Kind::Response)],
        arb_opcode(),
        prop_oneof![4 => Just(Status::OK), 1 => any::<u8>().prop_map(Status)],
        prop_oneof![3 => 0u16..4, 1 => any::<u16>()],
        prop_oneof![3 => 0u16..4, 1 => any::<u16>()],
        any::<u64>(),
        prop_oneof![1 => Just(0u64), 1 => any::<u64>()],
        vec(any::<u8>(), 0..=max_key),
        vec(any::<u8>(), 0..=max_value),
    )
        .prop_map(
            |(kind, opcode, status, hops, hop_limit, request_id, epoch, key, value)| Frame {
                kind,
                opcode,
                status,
                hops,
                hop_limit,
                request_id,
                epoch,
                key,
                value,
            },
        )
}

/// The frame limits decoding is tried under.
fn arb_max_frame() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(usize::MAX),
        2 => Just(protocol::DEFAULT_MAX_FRAME),
        1 => 0usize..400,
    ]
}

/// Bytes for the frame decoder: random, frame-shaped (a plausible header over random bytes),
/// or a valid frame with random bytes after it.
fn arb_frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..128),
        3 => (
            prop_oneof![0u32..300, any::<u32>()],
            prop_oneof![4 => Just(*b"RK"), 1 => any::<[u8; 2]>()],
            prop_oneof![4 => Just(protocol::VERSION), 1 => any::<u8>()],
            prop_oneof![4 => 0u8..2, 1 => any::<u8>()],
            vec(any::<u8>(), 0..300),
            any::<bool>(),
        )
            .prop_map(|(len, magic, version, kind, rest, crc)| {
                let mut bytes = len.to_be_bytes().to_vec();
                bytes.extend_from_slice(&magic);
                bytes.push(version);
                bytes.push(kind);
                bytes.extend_from_slice(&rest);
                if crc {
                    fix_crc(&mut bytes);
                }
                bytes
            }),
        2 => (arb_frame(48, 200), vec(any::<u8>(), 0..48)).prop_map(|(frame, tail)| {
            let mut bytes = frame.encode();
            bytes.extend_from_slice(&tail);
            bytes
        }),
    ]
}

/// Checks everything `decode` and `frame_len` promise about one buffer.
fn check_decode(buf: &[u8], max_frame: usize, tail: &[u8]) -> Result<(), TestCaseError> {
    let result = protocol::decode(buf, max_frame);
    tally(match &result {
        Ok(Some(_)) => "frame",
        Ok(None) => "needs more",
        Err(FrameError::BadCrc { .. }) => "bad crc",
        Err(FrameError::LengthMismatch { .. }) => "length mismatch",
        Err(FrameError::TooLarge { .. }) => "too large",
        Err(_) => "other error",
    });
    let len = protocol::frame_len(buf, max_frame);
    let _ = protocol::peek_request_id(buf);
    match &result {
        Ok(Some((frame, used))) => {
            let used = *used;
            prop_assert!(used <= buf.len(), "used {used} of {} bytes", buf.len());
            prop_assert!(used >= protocol::MIN_FRAME);
            prop_assert!(
                used <= max_frame,
                "a frame of {used} over the limit {max_frame}"
            );
            prop_assert_eq!(len, Ok(Some(used)));
            prop_assert_eq!(frame.encoded_len(), used);
            let again = frame.encode();
            prop_assert!(
                again[..] == buf[..used],
                "re-encoding differs: {} from {}",
                hex(&again),
                hex(&buf[..used])
            );
            prop_assert_eq!(
                protocol::decode(&again, max_frame),
                Ok(Some((frame.clone(), used)))
            );
        }
        Ok(None) => match len {
            Ok(None) => prop_assert!(buf.len() < protocol::LEN_PREFIX),
            Ok(Some(total)) => prop_assert!(total > buf.len(), "{total} bytes are buffered"),
            Err(e) => prop_assert!(false, "frame_len says {e} where decode needs more"),
        },
        Err(error) => {
            prop_assert!(!error.to_string().is_empty());
            let _ = error.status();
            match &len {
                Err(len_error) => prop_assert_eq!(len_error, error),
                Ok(Some(total)) => {
                    prop_assert!(
                        matches!(
                            error,
                            FrameError::LengthMismatch { .. } | FrameError::BadCrc { .. }
                        ),
                        "{error:?} from decode, yet frame_len says {total}"
                    );
                    prop_assert!(*total <= buf.len());
                }
                Ok(None) => prop_assert!(false, "{error:?} from fewer than 4 bytes"),
            }
        }
    }
    // More bytes change neither a frame nor an error; fewer bytes than a buffer that needs more
    // need more too.
    if result.as_ref().map_or(true, Option::is_some) {
        let mut longer = buf.to_vec();
        longer.extend_from_slice(tail);
        prop_assert_eq!(&protocol::decode(&longer, max_frame), &result);
    } else if !buf.is_empty() {
        let cut = tail.len() % buf.len();
        prop_assert_eq!(protocol::decode(&buf[..cut], max_frame), Ok(None));
    }
    Ok(())
}

pub fn frame_decode_arbitrary_bytes(cases: u32) -> Result<Ran, String> {
    let strategy = (arb_frame_bytes(), arb_max_frame(), vec(any::<u8>(), 0..16));
    run_property(cases, strategy, |(bytes, max_frame, tail)| {
        check_decode(&bytes, max_frame, &tail)
    })
}

pub fn frame_decode_mutated_frames(cases: u32) -> Result<Ran, String> {
    let strategy = (
        arb_frame(48, 200),
        arb_mutations(),
        any::<bool>(),
        arb_max_frame(),
        vec(any::<u8>(), 0..16),
    );
    run_property(
        cases,
        strategy,
        |(frame, mutations, crc, max_frame, tail)| {
            let original = frame.encode();
            let mut bytes = original.clone();
            mutate(&mut bytes, &mutations);
            if crc {
                fix_crc(&mut bytes);
            }
            check_decode(&bytes, max_frame, &tail)?;
            if bytes == original && max_frame >= original.len() {
                prop_assert_eq!(
                    protocol::decode(&bytes, max_frame),
                    Ok(Some((frame.clone(), original.len())))
                );
            }
            // CRC-32 catches every change confined to 32 bits of the covered bytes: such a
            // change behind an intact length prefix is never a frame (nor "need more").
            if !crc && bytes.len() == original.len() && bytes[..4] == original[..4] {
                let differs: Vec<usize> = (0..bytes.len())
                    .filter(|&i| bytes[i] != original[i])
                    .collect();
                let crc_at = original.len() - protocol::CRC_LEN;
                if let (Some(&first), Some(&last)) = (differs.first(), differs.last()) {
                    if last - first < 4 && (last < crc_at || first >= crc_at) {
                        prop_assert!(
                            protocol::decode(&bytes, max_frame).is_err(),
                            "a change at bytes {first}..={last} went unnoticed: {}",
                            hex(&bytes)
                        );
                    }
                }
            }
            Ok(())
        },
    )
}

pub fn frame_decode_truncations(cases: u32) -> Result<Ran, String> {
    let strategy = (
        arb_frame(64, 300),
        arb_frame(16, 32),
        prop_oneof![3 => Just(usize::MAX), 1 => 0usize..400],
    );
    run_property(cases, strategy, |(frame, next, max_frame)| {
        let bytes = frame.encode();
        let total = bytes.len();
        let mut stream = bytes.clone();
        next.encode_into(&mut stream);
        for cut in 0..total {
            let prefix = &bytes[..cut];
            let decoded = protocol::decode(prefix, max_frame);
            if cut < protocol::LEN_PREFIX {
                prop_assert_eq!(decoded, Ok(None), "cut at {}", cut);
                prop_assert_eq!(protocol::frame_len(prefix, max_frame), Ok(None));
            } else if total <= max_frame {
                prop_assert_eq!(decoded, Ok(None), "cut at {}", cut);
                prop_assert_eq!(protocol::frame_len(prefix, max_frame), Ok(Some(total)));
            } else {
                prop_assert_eq!(
                    decoded,
                    Err(FrameError::TooLarge {
                        len: total as u64,
                        limit: max_frame
                    }),
                    "cut at {}",
                    cut
                );
            }
        }
        let whole = protocol::decode(&bytes, max_frame);
        if total <= max_frame {
            prop_assert_eq!(&whole, &Ok(Some((frame.clone(), total))));
            // With the next frame behind it, every cut that holds the first gives the first.
            for cut in total..stream.len() {
                prop_assert_eq!(&protocol::decode(&stream[..cut], max_frame), &whole);
            }
        } else {
            prop_assert!(whole.is_err());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Streams of frames, and FrameReader.

/// A piece of a byte stream sent to a frame reader or a server.
#[derive(Debug, Clone)]
pub enum Segment {
    Valid(Frame),
    Mutated(Frame, Vec<Mutation>, bool),
    Raw(Vec<u8>),
}

impl Segment {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Segment::Valid(frame) => frame.encode(),
            Segment::Mutated(frame, mutations, crc) => {
                let mut bytes = frame.encode();
                mutate(&mut bytes, mutations);
                if *crc {
                    fix_crc(&mut bytes);
                }
                bytes
            }
            Segment::Raw(bytes) => bytes.clone(),
        }
    }
}

fn arb_segments(
    max_key: usize,
    max_value: usize,
    count: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Segment>> {
    let segment = prop_oneof![
        5 => arb_frame(max_key, max_value).prop_map(Segment::Valid),
        3 => (arb_frame(max_key, max_value), arb_mutations(), any::<bool>())
            .prop_map(|(frame, mutations, crc)| Segment::Mutated(frame, mutations, crc)),
        1 => vec(any::<u8>(), 0..64).prop_map(Segment::Raw),
    ];
    vec(segment, count)
}

fn stream_bytes(segments: &[Segment]) -> Vec<u8> {
    segments.iter().flat_map(Segment::bytes).collect()
}

/// How a byte stream ends, according to `decode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every byte was part of a frame.
    Clean,
    /// This many bytes of an unfinished frame are left.
    Truncated(usize),
    /// The bytes left cannot be a frame; the request id is what the header says of them.
    Malformed(FrameError, u64),
}

/// The frames `decode` finds one after another at the start of `bytes`, and how it ends.
pub fn decode_stream(bytes: &[u8], max_frame: usize) -> (Vec<Frame>, StreamEnd) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        match protocol::decode(rest, max_frame) {
            Ok(Some((frame, used))) => {
                frames.push(frame);
                at += used;
            }
            Ok(None) if rest.is_empty() => return (frames, StreamEnd::Clean),
            Ok(None) => return (frames, StreamEnd::Truncated(rest.len())),
            Err(error) => {
                return (
                    frames,
                    StreamEnd::Malformed(error, protocol::peek_request_id(rest)),
                )
            }
        }
    }
}

/// A source that hands out its bytes in reads of the given sizes (cycled), with the given
/// numbers of interrupted or would-block reads before each (cycled): a slow, jittery socket.
pub struct Chunky<'a> {
    data: &'a [u8],
    at: usize,
    sizes: &'a [usize],
    stalls: &'a [u8],
    would_block: bool,
    step: usize,
    stalled: u8,
    /// Calls of `read` so far.
    pub reads: usize,
}

impl<'a> Chunky<'a> {
    pub fn new(data: &'a [u8], sizes: &'a [usize], stalls: &'a [u8], would_block: bool) -> Self {
        Chunky {
            data,
            at: 0,
            sizes,
            stalls,
            would_block,
            step: 0,
            stalled: 0,
            reads: 0,
        }
    }
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let stall = if self.stalls.is_empty() {
            0
        } else {
            self.stalls[self.step % self.stalls.len()]
        };
        if self.stalled < stall {
            self.stalled += 1;
            let kind = if self.would_block && self.stalled.is_multiple_of(2) {
                ErrorKind::WouldBlock
            } else {
                ErrorKind::Interrupted
            };
            return Err(kind.into());
        }
        self.stalled = 0;
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes[self.step % self.sizes.len()].max(1)
        };
        self.step += 1;
        let n = size.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn arb_read_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(
        prop_oneof![4 => 1usize..8, 2 => 8usize..64, 1 => 64usize..100_000],
        1..8,
    )
}

fn arb_stalls() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => Just(Vec::new()), 1 => vec(0u8..3, 1..6)]
}

pub fn frame_reader_matches_decode(cases: u32) -> Result<Ran, String> {
    let strategy = (
        arb_segments(48, 200, 0..6),
        prop_oneof![6 => Just(None), 1 => (0usize..200_000).prop_map(Some)],
        arb_read_sizes(),
        arb_stalls(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            3 => Just(usize::MAX),
            2 => Just(protocol::DEFAULT_MAX_FRAME),
            1 => 0usize..400,
        ],
    );
    run_property(
        cases,
        strategy,
        |(segments, big, sizes, stalls, would_block, prompt, max_frame)| {
            let mut bytes = stream_bytes(&segments);
            if let Some(len) = big {
                // One large frame in the middle, for the buffer to grow over several reads.
                let frame = Frame::request(Opcode::PUT, 7, b"big".to_vec(), vec![0xa5; len]);
                let at = bytes.len() / 2;
                bytes.splice(at..at, frame.encode());
            }
            let (expected, end) = decode_stream(&bytes, max_frame);
            let mut src = Chunky::new(&bytes, &sizes, &stalls, would_block);
            let mut reader = FrameReader::new(max_frame, Duration::from_secs(3600));
            let mut frames = Vec::new();
            let mut idle = 0u32;
            let (outcome, peak) = peak_alloc(|| loop {
                let buffered = reader.has_buffered_frame();
                let reads = src.reads;
                let result = if prompt {
                    reader.read_frame_if_prompt(&mut src)
                } else {
                    reader.read_frame(&mut src)
                };
                if buffered {
                    if src.reads != reads {
                        break Err(format!(
                            "a buffered frame was read with {} reads",
                            src.reads - reads
                        ));
                    }
                    let ok = matches!(
                        &result,
                        Ok(Some(_))
                            | Err(ReadError::Frame {
                                error: FrameError::BadCrc { .. }
                                    | FrameError::LengthMismatch { .. },
                                ..
                            })
                    );
                    if !ok {
                        break Err(format!("a buffered frame gave {result:?}"));
                    }
                }
                match result {
                    Ok(Some(frame)) => {
                        frames.push(frame);
                        if frames.len() > expected.len() {
                            break Err("more frames than decode finds".into());
                        }
                    }
                    Err(ReadError::Idle) => {
                        idle += 1;
                        if idle > 1_000_000 {
                            break Err("idle forever".into());
                        }
                    }
                    other => break Ok(other),
                }
            });
            let outcome = outcome.map_err(TestCaseError::fail)?;
            tally(match &end {
                StreamEnd::Clean => "clean end",
                StreamEnd::Truncated(_) => "truncated",
                StreamEnd::Malformed(..) => "malformed",
            });
            if expected.len() > 1 {
                tally("several frames");
            }
            prop_assert_eq!(&frames, &expected, "frames of {}", hex(&bytes));
            match (&end, outcome) {
                (StreamEnd::Clean, Ok(None)) => {}
                (StreamEnd::Truncated(left), Err(ReadError::Truncated { buffered })) => {
                    prop_assert_eq!(*left, buffered)
                }
                (
                    StreamEnd::Malformed(error, id),
                    Err(ReadError::Frame {
                        error: got,
                        request_id,
                    }),
                ) => {
                    prop_assert_eq!(error, &got, "stream {}", hex(&bytes));
                    prop_assert!(request_id == 0 || request_id == *id);
                }
                (end, outcome) => prop_assert!(
                    false,
                    "decode ends {:?}, the reader {:?}, on {}",
                    end,
                    outcome,
                    hex(&bytes)
                ),
            }
            // The buffer follows the bytes that arrive, never a length a header announces.
            let budget = 4 * bytes.len() + 256 * 1024;
            prop_assert!(
                peak <= budget,
                "the reader took {peak} bytes for {}",
                bytes.len()
            );
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Payloads.

fn arb_view() -> impl Strategy<Value = View> {
    let placement = prop_oneof![
        (0u16..16).prop_map(|per_node| Placement::Hashed { per_node }),
        (0u32..7).prop_map(|shift| Placement::Partitions { count: 1 << shift }),
    ];
    let node = ("\\PC{0,12}", 0u8..3, prop_oneof![Just(0u64), any::<u64>()]);
    (
        any::<u64>(),
        0u8..3,
        placement,
        0usize..5,
        vec(node, 0..5),
        any::<bool>(),
    )
        .prop_flat_map(|(epoch, routing, placement, replicas, nodes, moving)| {
            let table = match placement {
                Placement::Partitions { count } => count as usize,
                Placement::Hashed { .. } => 0,
            };
            let target = if moving { table } else { 0 };
            let owner = prop_oneof![3 => 0u16..6, 1 => any::<u16>()];
            (vec(owner.clone(), table), vec(owner, target)).prop_map(move |(owners, target)| View {
                epoch,
                routing: Routing::from_u8(routing).expect("a routing byte"),
                placement,
                replicas,
                nodes: nodes.iter().map(|n| n.0.clone()).collect(),
                states: nodes
                    .iter()
                    .map(|n| NodeState::from_u8(n.1).expect("a state byte"))
                    .collect(),
                since: nodes.iter().map(|n| n.2).collect(),
                owners,
                target,
            })
        })
}

fn arb_reports() -> impl Strategy<Value = Vec<NodeReport>> {
    let report = (
        "\\PC{0,10}",
        any::<u8>(),
        "\\PC{0,10}",
        vec(("[a-z_]{0,12}", any::<u64>()), 0..4),
    )
        .prop_map(|(addr, status, message, counters)| NodeReport {
            addr,
            status: Status(status),
            message,
            counters,
        });
    vec(report, 0..4)
}

fn arb_batch() -> impl Strategy<Value = TransferBatch> {
    let entry = (
        vec(any::<u8>(), 0..12),
        proptest::option::of(vec(any::<u8>(), 0..12)),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(key, value, expires_at)| TransferEntry {
            key,
            // Only a present key has an expiry time to carry.
            expires_at: expires_at.filter(|_| value.is_some()),
            value,
        });
    (any::<u64>(), vec(entry, 0..5)).prop_map(|(next, entries)| TransferBatch { next, entries })
}

fn arb_tag() -> impl Strategy<Value = (WriteTag, Vec<u8>)> {
    (
        1..=u64::MAX,
        1..=u64::MAX,
        any::<u64>(),
        any::<u32>(),
        vec(any::<u8>(), 0..16),
    )
        .prop_map(|(client, seq, below, attempt, data)| {
            (
                WriteTag {
                    client,
                    seq,
                    below,
                    attempt,
                },
                data,
            )
        })
}

/// A valid payload of one of the kinds.
#[derive(Debug, Clone)]
pub enum Encoded {
    View(View),
    Reports(Vec<NodeReport>),
    Batch(TransferBatch),
    Points(Vec<u32>),
    Tag(WriteTag, Vec<u8>),
}

impl Encoded {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Encoded::View(view) => payload::encode_view(view),
            Encoded::Reports(reports) => payload::encode_reports(reports),
            Encoded::Batch(batch) => payload::encode_transfer_batch(batch),
            Encoded::Points(points) => payload::encode_points(points),
            Encoded::Tag(tag, data) => tag.prefix(data),
        }
    }
}

fn arb_encoded() -> impl Strategy<Value = Encoded> {
    prop_oneof![
        arb_view().prop_map(Encoded::View),
        arb_reports().prop_map(Encoded::Reports),
        arb_batch().prop_map(Encoded::Batch),
        vec(any::<u32>(), 0..16).prop_map(Encoded::Points),
        arb_tag().prop_map(|(tag, data)| Encoded::Tag(tag, data)),
    ]
}

/// Bytes shaped like the start of a payload with a large count, then a few random bytes.
fn arb_counted_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..5,
        prop_oneof![Just(u32::MAX), Just(0xffff), any::<u32>()],
        vec(any::<u8>(), 0..24),
    )
        .prop_map(|(kind, count, rest)| {
            let mut bytes = match kind {
                // view: routing, placement kind, parameter, replicas, then the node count
                0 => vec![0, 0, 0, 0, 0, 1, 1],
                1 => vec![2, 1, 0, 0, 0x10, 0, 3],
                // transfer batch: next, then the entry count
                2 => vec![0; 8],
                _ => Vec::new(),
            };
            match kind {
                0 | 1 | 3 => bytes.extend_from_slice(&(count as u16).to_be_bytes()),
                _ => bytes.extend_from_slice(&count.to_be_bytes()),
            }
            bytes.extend_from_slice(&rest);
            bytes
        })
}

fn arb_payload_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..200),
        2 => arb_counted_bytes(),
        2 => (arb_encoded(), vec(any::<u8>(), 0..8)).prop_map(|(encoded, tail)| {
            let mut bytes = encoded.bytes();
            bytes.extend_from_slice(&tail);
            bytes
        }),
    ]
}

/// Whether building a ring of `view` is cheap enough to try on every case.
fn cheap_ring(view: &View) -> bool {
    view.nodes.len() <= 64
        && match view.placement {
            Placement::Hashed { per_node } => usize::from(per_node) * view.nodes.len() <= 4096,
            Placement::Partitions { count } => count <= 4096,
        }
}

/// Checks the view decoder on `bytes`: no panic, memory bounded, a consistent view, and one
/// that encodes back to itself; a ring built from it, if one can be, encodes and decodes too.
fn check_view(bytes: &[u8]) -> Result<(), TestCaseError> {
    let epoch = 0x0102_0304_0506_0708;
    let (decoded, peak) = peak_alloc(|| payload::decode_view(epoch, bytes));
    prop_assert!(
        peak <= payload_budget(bytes.len()),
        "decode_view took {peak} bytes for {}: {}",
        bytes.len(),
        hex(bytes)
    );
    let Ok(view) = decoded else {
        return Ok(());
    };
    tally("view");
    prop_assert_eq!(view.epoch, epoch);
    prop_assert_eq!(view.states.len(), view.nodes.len());
    prop_assert_eq!(view.since.len(), view.nodes.len());
    let table = match view.placement {
        Placement::Partitions { count } => count as usize,
        Placement::Hashed { .. } => 0,
    };
    prop_assert!(view.owners.is_empty() || view.owners.len() == table);
    prop_assert!(view.target.is_empty() || view.target.len() == table);
    // A view stored before owner tables were kept (partitions, no table) encodes with the
    // table dealt, so it does not come back the same; every other view does.
    let legacy = table > 0 && view.owners.is_empty();
    if !legacy {
        prop_assert_eq!(
            payload::decode_view(epoch, &payload::encode_view(&view)).ok(),
            Some(view.clone()),
            "from {}",
            hex(bytes)
        );
    }
    if cheap_ring(&view) {
        if let Ok(ring) = Ring::new(view) {
            tally("ring");
            let built = ring.view();
            let again = payload::decode_view(built.epoch, &payload::encode_view(built));
            prop_assert_eq!(again.ok(), Some(built.clone()), "from {}", hex(bytes));
        }
    }
    Ok(())
}

/// Checks every payload decoder on `bytes` (each must refuse what is not its payload without
/// panicking), with its memory bounded and anything decoded encoding back to the same bytes.
fn check_payloads(bytes: &[u8]) -> Result<(), TestCaseError> {
    let budget = payload_budget(bytes.len());
    check_view(bytes)?;

    let (reports, peak) = peak_alloc(|| payload::decode_reports(bytes));
    prop_assert!(
        peak <= budget,
        "decode_reports took {peak} bytes: {}",
        hex(bytes)
    );
    if let Ok(reports) = reports {
        tally("reports");
        prop_assert!(payload::encode_reports(&reports) == bytes, "{}", hex(bytes));
    }

    let (batch, peak) = peak_alloc(|| payload::decode_transfer_batch(bytes));
    prop_assert!(
        peak <= budget,
        "decode_transfer_batch took {peak}: {}",
        hex(bytes)
    );
    if let Ok(batch) = batch {
        tally("transfer batch");
        prop_assert!(
            payload::encode_transfer_batch(&batch) == bytes,
            "{}",
            hex(bytes)
        );
    }

    // UPDATE's operation: what decodes encodes back to the same bytes, and applying it to any
    // stored value at any time (the clock's extremes included) answers or refuses, never
    // panics.
    if let Ok(update) = ringkv::update::Update::decode(bytes) {
        tally("update");
        prop_assert!(update.encode() == bytes, "{}", hex(bytes));
        let held = bytes.get(1..).unwrap_or_default();
        for now in [0, 1_700_000_000_000, i64::MAX as u64, u64::MAX] {
            for current in [
                None,
                Some((held, None)),
                Some((held, Some(0))),
                Some((held, Some(now))),
                Some((held, Some(u64::MAX))),
                Some((&b"-9223372036854775808"[..], Some(now.saturating_add(1)))),
            ] {
                let _ = update.apply(current, now, 64);
            }
        }
    }

    let (points, peak) = peak_alloc(|| payload::decode_points(bytes));
    prop_assert!(
        peak <= budget,
        "decode_points took {peak} bytes: {}",
        hex(bytes)
    );
    if let Ok(points) = points {
        tally("points");
        prop_assert!(payload::encode_points(&points) == bytes, "{}", hex(bytes));
    }

    let (split, peak) = peak_alloc(|| WriteTag::split(bytes).map(|(tag, rest)| (tag, rest.len())));
    prop_assert!(peak <= budget, "WriteTag::split took {peak} bytes");
    match split {
        Ok((tag, rest)) => {
            tally("write tag");
            prop_assert!(tag.client != 0 && tag.seq != 0);
            prop_assert_eq!(rest, bytes.len() - WriteTag::LEN);
            prop_assert!(tag.prefix(&bytes[WriteTag::LEN..]) == bytes);
        }
        Err(_) => prop_assert!(
            bytes.len() < WriteTag::LEN || bytes[..8] == [0; 8] || bytes[8..16] == [0; 8]
        ),
    }
    Ok(())
}

pub fn payload_decoders_arbitrary_bytes(cases: u32) -> Result<Ran, String> {
    run_property(cases, arb_payload_bytes(), |bytes| check_payloads(&bytes))
}

pub fn payload_decoders_mutated_encodings(cases: u32) -> Result<Ran, String> {
    run_property(
        cases,
        (arb_encoded(), arb_mutations()),
        |(encoded, mutations)| {
            let mut bytes = encoded.bytes();
            mutate(&mut bytes, &mutations);
            check_payloads(&bytes)
        },
    )
}

pub fn payload_decoders_truncations(cases: u32) -> Result<Ran, String> {
    run_property(cases, arb_encoded(), |encoded| {
        let bytes = encoded.bytes();
        check_payloads(&bytes)?;
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            match &encoded {
                Encoded::View(view) => match payload::decode_view(view.epoch, prefix) {
                    Err(_) => {}
                    // The one prefix that decodes: the view as kept before owner tables were.
                    Ok(old) => prop_assert!(
                        matches!(old.placement, Placement::Partitions { .. })
                            && old.owners.is_empty()
                            && old.target.is_empty()
                            && old.nodes == view.nodes,
                        "prefix of {} bytes decodes: {:?}",
                        cut,
                        old
                    ),
                },
                Encoded::Reports(_) => {
                    prop_assert!(payload::decode_reports(prefix).is_err(), "cut {}", cut)
                }
                Encoded::Batch(_) => {
                    prop_assert!(
                        payload::decode_transfer_batch(prefix).is_err(),
                        "cut {}",
                        cut
                    )
                }
                Encoded::Points(_) => {
                    prop_assert!(payload::decode_points(prefix).is_err(), "cut {}", cut)
                }
                Encoded::Tag(..) => {
                    prop_assert_eq!(WriteTag::split(prefix).is_err(), cut < WriteTag::LEN)
                }
            }
        }
        match &encoded {
            Encoded::View(view) => {
                prop_assert_eq!(
                    payload::decode_view(view.epoch, &bytes).ok(),
                    Some(view.clone())
                )
            }
            Encoded::Reports(reports) => {
                prop_assert_eq!(payload::decode_reports(&bytes).ok(), Some(reports.clone()))
            }
            Encoded::Batch(batch) => prop_assert_eq!(
                payload::decode_transfer_batch(&bytes).ok(),
                Some(batch.clone())
            ),
            Encoded::Points(points) => {
                prop_assert_eq!(payload::decode_points(&bytes).ok(), Some(points.clone()))
            }
            Encoded::Tag(tag, data) => {
                prop_assert_eq!(WriteTag::split(&bytes).ok(), Some((*tag, &data[..])))
            }
        }
        Ok(())
    })
}

/// Payloads whose counts announce far more than follows: each must be refused, having
/// allocated next to nothing.
pub fn payload_announced_counts(cases: u32) -> Result<Ran, String> {
    type Decode = fn(&[u8]) -> bool;
    let view: Decode = |b| payload::decode_view(1, b).is_err();
    let reports: Decode = |b| payload::decode_reports(b).is_err();
    let batch: Decode = |b| payload::decode_transfer_batch(b).is_err();
    let points: Decode = |b| payload::decode_points(b).is_err();
    let mut one_node = vec![0, 1, 0, 1, 0, 0, 1, 0, 1];
    one_node.extend_from_slice(&[0, 1, b'a', 0]);
    one_node.extend_from_slice(&[0; 8]);
    let mut huge_table = one_node.clone();
    huge_table[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    huge_table.extend_from_slice(&[0, 0]);
    let mut full_table = one_node.clone();
    full_table[2..6].copy_from_slice(&(1u32 << 16).to_be_bytes());
    full_table.extend_from_slice(&[0, 0]);
    let mut many_counters = vec![0, 1, 0, 0, 0, 0, 0];
    many_counters.extend_from_slice(&[0xff, 0xff, 1, b'k']);
    let mut long_key = vec![0; 8];
    long_key.extend_from_slice(&[0, 0, 0, 1, 1, 0xff, 0xff, 0xff, 0xff, b'k']);
    let cases_list: Vec<(&str, Decode, Vec<u8>)> = vec![
        (
            "view of 65535 nodes",
            view,
            vec![0, 0, 0, 0, 0, 1, 1, 0xff, 0xff],
        ),
        ("view of 65535 nodes, one begun", view, {
            let mut b = vec![0, 0, 0, 0, 0, 1, 1, 0xff, 0xff];
            b.extend_from_slice(&[0xff, 0xff, b'a']);
            b
        }),
        ("view of u32::MAX partitions", view, huge_table),
        ("view of 65536 partitions, one owner", view, full_table),
        ("65535 reports", reports, vec![0xff, 0xff]),
        ("a report of 65535 counters", reports, many_counters),
        ("u32::MAX transfer entries", batch, {
            let mut b = vec![0; 8];
            b.extend_from_slice(&u32::MAX.to_be_bytes());
            b
        }),
        ("a transfer key of u32::MAX bytes", batch, long_key),
        ("u32::MAX points", points, u32::MAX.to_be_bytes().to_vec()),
        ("u32::MAX points, two given", points, {
            let mut b = u32::MAX.to_be_bytes().to_vec();
            b.extend_from_slice(&[0; 8]);
            b
        }),
    ];
    run_property(cases.max(1), Just(()), |()| {
        for (what, decode, bytes) in &cases_list {
            let started = Instant::now();
            let (refused, peak) = peak_alloc(|| decode(bytes));
            prop_assert!(refused, "{} was accepted", what);
            prop_assert!(peak <= 4096, "{} took {} bytes to refuse", what, peak);
            // Reported, not asserted: no timing assertions in CI.
            if started.elapsed() > Duration::from_secs(1) {
                eprintln!("{what}: refused, but only after {:?}", started.elapsed());
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// RESP.

/// Small limits, for the parser's limit paths to be reached by small inputs.
const SMALL_RESP: RequestLimits = RequestLimits {
    max_args: 8,
    max_bulk: 40,
    max_inline: 48,
    max_request: 256,
};

fn arb_request_limits() -> impl Strategy<Value = RequestLimits> {
    prop_oneof![
        Just(RequestLimits::for_limits(&Limits::default())),
        Just(SMALL_RESP),
    ]
}

/// A request as a list of arguments.
pub type Args = Vec<Vec<u8>>;

/// What a parser made of some input: the requests, and the error it stopped at, if any.
pub type Parsed = (Vec<Args>, Option<ProtocolError>);

/// The multibulk encoding of a request.
pub fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An argument as an inline request writes it: bare if it is a plain word, else in double
/// quotes with every byte escaped.
fn inline_arg(arg: &[u8], out: &mut Vec<u8>) {
    let plain = !arg.is_empty()
        && arg
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(b));
    if plain {
        out.extend_from_slice(arg);
    } else {
        out.push(b'"');
        for b in arg {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
        out.push(b'"');
    }
}

/// The inline encoding of a request, ended by `\r\n` or `\n`.
pub fn inline(args: &[Vec<u8>], crlf: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        inline_arg(arg, &mut out);
    }
    out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    out
}

/// How a request is written.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    Multibulk,
    Inline { crlf: bool },
}

fn encode_request(args: &[Vec<u8>], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Multibulk => multibulk(args),
        Encoding::Inline { crlf } => inline(args, crlf),
    }
}

fn arb_encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        3 => Just(Encoding::Multibulk),
        1 => any::<bool>().prop_map(|crlf| Encoding::Inline { crlf }),
    ]
}

fn arb_arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-z0-9]{1,8}".prop_map(String::into_bytes),
        2 => vec(any::<u8>(), 0..12),
        1 => vec(any::<u8>(), 200..300),
    ]
}

/// A command the Redis door knows (or nearly), with random arguments.
fn arb_command() -> impl Strategy<Value = Args> {
    let name = prop_oneof![
        20 => select(vec![
            "GET", "SET", "DEL", "EXISTS", "MGET", "MSET", "DBSIZE", "PING", "ECHO", "INFO",
            "COMMAND", "CONFIG", "SELECT", "get", "set", "ping", "Ping", "config", "NOPE", "",
        ]),
        1 => Just("QUIT"),
    ];
    (name, vec(arb_arg(), 0..4)).prop_map(|(name, rest)| {
        let mut args = vec![name.as_bytes().to_vec()];
        args.extend(rest);
        args
    })
}

/// Pieces of RESP syntax, to hit the parser's branches more often than random bytes do.
fn arb_tokens() -> impl Strategy<Value = Vec<u8>> {
    let token = select(vec![
        "*",
        "$",
        "\r\n",
        "\r",
        "\n",
        "0",
        "1",
        "2",
        "3",
        "-1",
        "-",
        "+",
        "01",
        "12",
        "64",
        "1048577",
        "99999999999999999999",
        "PING",
        "SET",
        "k",
        " ",
        "\t",
        "\"",
        "'",
        "\\",
        "\\x",
        "\\x4",
        "\\x41",
        "\\'",
        "\0",
    ]);
    vec(token, 0..40).prop_map(|tokens| tokens.concat().into_bytes())
}

/// A piece of RESP input.
#[derive(Debug, Clone)]
pub enum RespSegment {
    Command(Args, Encoding),
    Mutated(Args, Encoding, Vec<Mutation>),
    Tokens(Vec<u8>),
    Raw(Vec<u8>),
}

impl RespSegment {
    fn bytes(&self) -> Vec<u8> {
        match self {
            RespSegment::Command(args, encoding) => encode_request(args, *encoding),
            RespSegment::Mutated(args, encoding, mutations) => {
                let mut bytes = encode_request(args, *encoding);
                mutate(&mut bytes, mutations);
                bytes
            }
            RespSegment::Tokens(bytes) | RespSegment::Raw(bytes) => bytes.clone(),
        }
    }
}

fn arb_resp_input() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        4 => (arb_command(), arb_encoding()).prop_map(|(a, e)| RespSegment::Command(a, e)),
        3 => (arb_command(), arb_encoding(), arb_mutations())
            .prop_map(|(a, e, m)| RespSegment::Mutated(a, e, m)),
        2 => arb_tokens().prop_map(RespSegment::Tokens),
        1 => vec(any::<u8>(), 0..64).prop_map(RespSegment::Raw),
    ];
    vec(segment, 1..6).prop_map(|segments| segments.iter().flat_map(RespSegment::bytes).collect())
}

/// Takes every whole request out of `parser`: false when it stopped at an error.
fn drain(parser: &mut Parser, requests: &mut Vec<Args>) -> Result<(), ProtocolError> {
    while let Some(args) = parser.next_request()? {
        requests.push(args);
    }
    Ok(())
}

/// Parses `input` fed in pieces of the given sizes (all of it at once for none).
fn parse_fed(limits: RequestLimits, input: &[u8], sizes: &[usize]) -> (Parsed, bool) {
    let mut parser = Parser::new(limits);
    let mut requests = Vec::new();
    let mut at = 0;
    let mut step = 0;
    while at < input.len() {
        let size = sizes
            .get(step % sizes.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        let end = at + size.max(1).min(input.len() - at);
        step += 1;
        parser.feed(&input[at..end]);
        at = end;
        if let Err(error) = drain(&mut parser, &mut requests) {
            return ((requests, Some(error)), true);
        }
    }
    let partial = parser.has_partial();
    ((requests, None), partial)
}

/// Parses `input` read from a jittery source with `read_from`.
fn parse_read(
    limits: RequestLimits,
    input: &[u8],
    sizes: &[usize],
    stalls: &[u8],
) -> (Parsed, bool) {
    let mut parser = Parser::new(limits);
    let mut requests = Vec::new();
    let mut src = Chunky::new(input, sizes, stalls, true);
    loop {
        // Interrupted and would-block reads are simply tried again.
        if let Ok(0) = parser.read_from(&mut src) {
            break;
        }
        if let Err(error) = drain(&mut parser, &mut requests) {
            return ((requests, Some(error)), true);
        }
    }
    let partial = parser.has_partial();
    ((requests, None), partial)
}

/// Checks what the parser promises of the requests it returns.
fn check_requests(limits: &RequestLimits, requests: &[Args]) -> Result<(), TestCaseError> {
    for args in requests {
        prop_assert!(!args.is_empty(), "an empty request");
        let most_args = limits.max_args.max(limits.max_inline);
        prop_assert!(args.len() <= most_args, "{} arguments", args.len());
        let longest = limits.max_bulk.max(limits.max_inline);
        prop_assert!(
            args.iter().all(|a| a.len() <= longest),
            "an argument over the limits"
        );
    }
    Ok(())
}

pub fn resp_parser_arbitrary_input(cases: u32) -> Result<Ran, String> {
    let strategy = (
        prop_oneof![
            3 => arb_resp_input(),
            1 => arb_tokens(),
            1 => vec(any::<u8>(), 0..256),
        ],
        arb_request_limits(),
        arb_read_sizes(),
        arb_stalls(),
    );
    run_property(cases, strategy, |(input, limits, sizes, stalls)| {
        let ((whole, whole_partial), peak) = peak_alloc(|| parse_fed(limits, &input, &[]));
        prop_assert!(
            peak <= 64 * input.len() + 256 * 1024,
            "the parser took {peak} bytes for {}",
            input.len()
        );
        check_requests(&limits, &whole.0)?;
        tally(match (&whole.0.is_empty(), &whole.1, whole_partial) {
            (_, Some(_), _) => "protocol error",
            (false, None, false) => "requests",
            (false, None, true) => "requests, then a partial one",
            (true, None, true) => "partial",
            (true, None, false) => "nothing",
        });
        let (chunked, chunked_partial) = parse_fed(limits, &input, &sizes);
        prop_assert_eq!(&chunked, &whole, "fed in pieces: {}", hex(&input));
        prop_assert_eq!(chunked_partial, whole_partial);
        let ((read, read_partial), peak) =
            peak_alloc(|| parse_read(limits, &input, &sizes, &stalls));
        prop_assert!(
            peak <= 64 * input.len() + 256 * 1024,
            "read_from took {peak} bytes"
        );
        prop_assert_eq!(&read, &whole, "read with read_from: {}", hex(&input));
        prop_assert_eq!(read_partial, whole_partial);
        if let Some(error) = &whole.1 {
            prop_assert!(!error.to_string().is_empty());
        }
        Ok(())
    })
}

pub fn resp_parser_valid_commands_and_truncations(cases: u32) -> Result<Ran, String> {
    let command = (
        vec(
            prop_oneof![3 => vec(any::<u8>(), 0..10), 1 => vec(any::<u8>(), 10..60)],
            1..5,
        ),
        arb_encoding(),
    );
    let strategy = (vec(command, 1..5), arb_read_sizes());
    run_property(cases, strategy, |(commands, sizes)| {
        let limits = RequestLimits::for_limits(&Limits::default());
        let mut input = Vec::new();
        let mut ends = Vec::new();
        for (args, encoding) in &commands {
            input.extend_from_slice(&encode_request(args, *encoding));
            ends.push(input.len());
        }
        let expected: Vec<Args> = commands.iter().map(|(args, _)| args.clone()).collect();
        let (parsed, partial) = parse_fed(limits, &input, &sizes);
        prop_assert_eq!(&parsed, &(expected.clone(), None), "{}", hex(&input));
        prop_assert!(!partial);
        // Every cut gives the requests wholly before it, nothing else and no error, and leaves
        // a partial request exactly when it falls inside one.
        for cut in 0..input.len() {
            let (parsed, partial) = parse_fed(limits, &input[..cut], &[]);
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            prop_assert_eq!(&parsed.0[..], &expected[..whole], "cut at {}", cut);
            prop_assert_eq!(&parsed.1, &None, "cut at {}", cut);
            prop_assert_eq!(partial, !ends.contains(&cut) && cut > 0, "cut at {}", cut);
        }
        Ok(())
    })
}

pub fn resp_split_inline(cases: u32) -> Result<Ran, String> {
    let strategy = prop_oneof![
        1 => vec(any::<u8>(), 0..64).prop_map(|line| (line, None)),
        1 => arb_tokens().prop_map(|line| (line, None)),
        2 => vec(vec(any::<u8>(), 0..12), 0..5).prop_map(|args| {
            let mut line = inline(&args, false);
            line.pop();
            (line, Some(args))
        }),
    ];
    run_property(cases, strategy, |(line, expected)| {
        let split = resp::split_inline(&line);
        if let Some(args) = expected {
            // Empty arguments survive only quoted, and inline() quotes them.
            prop_assert_eq!(split, Some(args), "line {}", hex(&line));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// End to end, over real sockets.

/// Limits of the cluster the end-to-end properties fuzz: small, so that fuzzed frames and
/// commands break them now and then.
const E2E_LIMITS: Limits = Limits {
    max_key: 32,
    max_value: 256,
    max_frame: 64 * 1024,
};

/// How long the client waits for a reply or a close once it has closed its side.
const CLIENT_WAIT: Duration = Duration::from_secs(10);

fn start_cluster() -> Result<LocalCluster, String> {
    watch_server_panics();
    LocalCluster::start(
        2,
        BackendConfig::default(),
        FrontendConfig {
            threads: 4,
            startup_timeout: Duration::from_secs(10),
            resp_listen: Some("127.0.0.1:0".into()),
            // No view keeper, so MEMBER_JOIN and MEMBER_LEAVE are refused at once (and with it one
            // copy per key, which is all a cluster without a keeper may keep).
            keeper: None,
            replicas: Some(1),
            server: ServerOptions {
                limits: E2E_LIMITS,
                timeouts: Timeouts {
                    frame: Duration::from_secs(2),
                    idle: Duration::from_secs(10),
                    ..Timeouts::default()
                },
                ..ServerOptions::default()
            },
            ..FrontendConfig::default()
        },
    )
    .map_err(|e| format!("cannot start a cluster: {e}"))
}

fn connect(addr: SocketAddr) -> Result<TcpStream, TestCaseError> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_WAIT)
        .map_err(|e| TestCaseError::fail(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_read_timeout(Some(CLIENT_WAIT));
    let _ = stream.set_write_timeout(Some(CLIENT_WAIT));
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends `input` on a fresh connection, closes the write side and reads everything the server
/// sends until it closes. Failing: the server neither closed nor sent anything for
/// [`CLIENT_WAIT`].
fn exchange(addr: SocketAddr, input: &[u8]) -> Result<Vec<u8>, TestCaseError> {
    let mut stream = connect(addr)?;
    // The server may close before taking it all (after a malformed frame): not an error.
    let _ = stream.write_all(input);
    let _ = stream.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(got)
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "the server neither replied nor closed within {CLIENT_WAIT:?} after the \
                     client closed its side ({e}); {} bytes came; input {}",
                    got.len(),
                    hex(input)
                )))
            }
        }
    }
}

fn no_server_panics() -> Result<(), TestCaseError> {
    let panics = server_panics();
    prop_assert!(panics.is_empty(), "server threads panicked: {:#?}", panics);
    Ok(())
}

/// A fresh connection's PING is answered OK.
fn native_pings(addr: SocketAddr) -> Result<(), TestCaseError> {
    let ping = Frame::request(Opcode::PING, 0x5eed, Vec::new(), Vec::new());
    let mut stream = connect(addr)?;
    stream
        .write_all(&ping.encode())
        .map_err(|e| TestCaseError::fail(format!("PING not sent: {e}")))?;
    let mut reader = FrameReader::new(usize::MAX / 2, CLIENT_WAIT);
    match reader.read_frame(&mut stream) {
        Ok(Some(answer)) => {
            prop_assert_eq!(answer.status, Status::OK, "{:?}", answer);
            prop_assert_eq!(answer.request_id, 0x5eed);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "a fresh connection's PING got {other:?}"
        ))),
    }
}

pub fn end_to_end_native_door(cases: u32) -> Result<Ran, String> {
    let cluster = start_cluster()?;
    let addr = cluster.frontend_addr();
    let strategy = arb_segments(40, 300, 1..6).prop_map(|segments| stream_bytes(&segments));
    run_property(cases, strategy, |input| {
        let (requests, end) = decode_stream(&input, E2E_LIMITS.max_frame);
        let replies = exchange(addr, &input)?;
        let (answers, answers_end) = decode_stream(&replies, usize::MAX / 2);
        prop_assert_eq!(
            &answers_end,
            &StreamEnd::Clean,
            "the server sent bytes that are not frames: {}",
            hex(&replies)
        );
        let expected = requests.len() + usize::from(matches!(end, StreamEnd::Malformed(..)));
        prop_assert_eq!(
            answers.len(),
            expected,
            "{} answers to {} requests ending {:?}; input {}",
            answers.len(),
            requests.len(),
            end,
            hex(&input)
        );
        for (answer, request) in answers.iter().zip(&requests) {
            prop_assert_eq!(answer.kind, Kind::Response);
            prop_assert_eq!(answer.request_id, request.request_id, "answer {:?}", answer);
            if request.kind == Kind::Response {
                prop_assert_eq!(answer.status, Status::BAD_REQUEST);
            } else if E2E_LIMITS.check(request).is_err() {
                prop_assert_eq!(answer.status, Status::TOO_LARGE);
            }
        }
        tally(match (&end, answers.is_empty()) {
            (StreamEnd::Malformed(..), _) => "error answer, close",
            (StreamEnd::Truncated(_), false) => "answers, close mid-frame",
            (StreamEnd::Truncated(_), true) => "close mid-frame",
            (StreamEnd::Clean, false) => "answers",
            (StreamEnd::Clean, true) => "nothing sent",
        });
        if answers.iter().any(|a| a.status == Status::OK) {
            tally("some answer OK");
        }
        if let StreamEnd::Malformed(error, id) = &end {
            let last = answers.last().expect("counted above");
            prop_assert_eq!(last.status, error.status(), "{:?} for {:?}", last, error);
            prop_assert!(last.request_id == 0 || last.request_id == *id);
        }
        no_server_panics()?;
        native_pings(addr)
    })
}

/// The length of the well-formed RESP reply at the start of `buf` (RESP2, and RESP3's null):
/// `Ok(None)` while it is incomplete.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(cr) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[1..cr];
    let after = cr + 2;
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{:?} is not a length", String::from_utf8_lossy(line)))
    };
    match first {
        b'+' | b'-' => {
            if line.iter().any(|&b| b == b'\r' || b == b'\n') {
                return Err("a line break inside a simple reply".into());
            }
            Ok(Some(after))
        }
        b':' => number().map(|_| Some(after)),
        b'_' if line.is_empty() => Ok(Some(after)),
        b'$' => match number()? {
            -1 => Ok(Some(after)),
            n if n >= 0 => {
                let end = after + n as usize;
                if buf.len() < end + 2 {
                    Ok(None)
                } else if &buf[end..end + 2] != b"\r\n" {
                    Err("a bulk string not followed by CRLF".into())
                } else {
                    Ok(Some(end + 2))
                }
            }
            n => Err(format!("bulk length {n}")),
        },
        b'*' => match number()? {
            -1 => Ok(Some(after)),
            n if n >= 0 => {
                let mut used = after;
                for _ in 0..n {
                    match reply_len(&buf[used..])? {
                        Some(len) => used += len,
                        None => return Ok(None),
                    }
                }
                Ok(Some(used))
            }
            n => Err(format!("array length {n}")),
        },
        other => Err(format!("a reply cannot start with 0x{other:02x}")),
    }
}

/// Splits `bytes` into whole replies; an error for anything else, a cut-off reply included.
fn split_replies(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut replies = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match reply_len(&bytes[at..])? {
            Some(len) => {
                replies.push(&bytes[at..at + len]);
                at += len;
            }
            None => return Err(format!("a reply cut off after {} bytes", bytes.len() - at)),
        }
    }
    Ok(replies)
}

fn resp_pings(addr: SocketAddr) -> Result<(), TestCaseError> {
    let mut stream = connect(addr)?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| TestCaseError::fail(format!("PING not sent: {e}")))?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 64];
    while got.len() < 7 {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(TestCaseError::fail(format!("PING unanswered: {e}"))),
        }
    }
    prop_assert_eq!(String::from_utf8_lossy(&got), "+PONG\r\n");
    Ok(())
}

pub fn end_to_end_resp_door(cases: u32) -> Result<Ran, String> {
    let cluster = start_cluster()?;
    let addr = cluster
        .resp_addr()
        .ok_or_else(|| "the RESP door is not open".to_string())?;
    let limits = RequestLimits::for_limits(&E2E_LIMITS);
    run_property(cases, arb_resp_input(), |input| {
        // What the door will make of the input: one reply per request up to a QUIT, and one
        // error reply for malformed input.
        let mut parser = Parser::new(limits);
        parser.feed(&input);
        let (mut requests, mut quit, mut malformed) = (0, false, false);
        loop {
            match parser.next_request() {
                Ok(Some(args)) => {
                    requests += 1;
                    if args[0].eq_ignore_ascii_case(b"quit") {
                        quit = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    malformed = true;
                    break;
                }
            }
        }
        let bytes = exchange(addr, &input)?;
        let replies = split_replies(&bytes).map_err(|e| {
            TestCaseError::fail(format!(
                "not RESP replies ({e}): {:?}; input {}",
                String::from_utf8_lossy(&bytes),
                hex(&input)
            ))
        })?;
        prop_assert_eq!(
            replies.len(),
            requests + usize::from(malformed),
            "replies {:?} to input {:?}",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&input)
        );
        tally(match (quit, malformed, requests) {
            (true, _, _) => "quit",
            (_, true, _) => "protocol error",
            (_, _, 0) => "no request",
            _ => "replies",
        });
        if let Some(last) = replies.last() {
            if quit {
                prop_assert_eq!(*last, &b"+OK\r\n"[..]);
            } else if malformed {
                prop_assert!(
                    last.starts_with(b"-ERR Protocol error"),
                    "last reply {:?}",
                    String::from_utf8_lossy(last)
                );
            }
        }
        no_server_panics()?;
        resp_pings(addr)
    })
}
