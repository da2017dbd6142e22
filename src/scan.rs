//! Walking every key of the cluster a step at a time: SCAN (0x21) at the frontend, made of
//! SCAN_PART (0x22) steps at the backends.
//!
//! A backend's store is cut into parts ([`Engine::parts`]); a step lists the keys of one part
//! that the backend *heads* in the current view, so that each key is listed by one node only,
//! once. A part too large for one answer is walked in sub-parts: the keys whose hash falls in
//! the sub-part, so a step never holds more than [`MOST_KEYS_PER_STEP`] keys. The frontend walks
//! the backends in view order and hands the client a cursor that says where it stopped: a u64,
//! as Redis's SCAN cursors are, so that `redis-cli --scan` can pass it back unchanged.
//!
//! A cursor is only good in the view it was made in: every key present from the start of a walk
//! to its end is listed exactly once while the view stays the same. After a view change (a
//! failover, a join, a leave) a cursor is refused STALE_VIEW, and the client starts again,
//! rather than risk missing keys that moved to a node already walked.

use crate::error::{Error, Result};
use crate::protocol::{Frame, Opcode, Status};
use crate::ring::Ring;
use crate::store::Engine;

/// Keys one SCAN_PART answer lists at most (a larger part is walked in sub-parts).
pub const MOST_KEYS_PER_STEP: usize = 10_000;

/// Keys a SCAN asks for when it does not say (Redis's default COUNT).
pub const DEFAULT_COUNT: u32 = 10;

/// Bytes of keys one SCAN answer holds at most, whatever its count (well within a frame).
pub const MOST_BYTES_PER_ANSWER: usize = 4 << 20;

/// Where a walk stands: the node (in view order), the part of its store, and the sub-part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The low 24 bits of the epoch of the view the walk is in.
    pub epoch: u32,
    pub node: u16,
    pub part: u8,
    pub sub: u8,
    /// Sub-parts the part is walked in; 0 until the part's size is known.
    pub subs: u8,
}

impl Cursor {
    /// The u64 a client sees; 0 is the start (and the end) of a walk.
    pub fn encode(&self) -> u64 {
        (u64::from(self.epoch & 0xff_ffff) << 40)
            | (u64::from(self.node) << 24)
            | (u64::from(self.part) << 16)
            | (u64::from(self.sub) << 8)
            | u64::from(self.subs)
    }

    pub fn decode(cursor: u64) -> Cursor {
        Cursor {
            epoch: (cursor >> 40) as u32,
            node: (cursor >> 24) as u16,
            part: (cursor >> 16) as u8,
            sub: (cursor >> 8) as u8,
            subs: cursor as u8,
        }
    }
}

/// The epoch bits a cursor keeps.
fn epoch_bits(epoch: u64) -> u32 {
    (epoch & 0xff_ffff) as u32
}

/// The value of a SCAN request: the cursor (0 to start), how many keys to aim for, and the
/// pattern keys must match (empty: every key).
pub fn encode_scan(cursor: u64, count: u32, pattern: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + pattern.len());
    out.extend_from_slice(&cursor.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(pattern);
    out
}

/// Reads a SCAN request's value.
pub fn decode_scan(value: &[u8]) -> Result<(u64, u32, &[u8])> {
    if value.len() < 12 {
        return Err(Error::Payload(format!(
            "SCAN's value is a u64 cursor and a u32 count, then the pattern: {} bytes is too short",
            value.len()
        )));
    }
    let cursor = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(value[8..12].try_into().expect("4 bytes"));
    Ok((cursor, count, &value[12..]))
}

/// The value of a SCAN answer: the next cursor (0: done) and the keys.
pub fn encode_keys(next: u64, keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + keys.iter().map(|k| 4 + k.len()).sum::<usize>());
    out.extend_from_slice(&next.to_be_bytes());
    out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    for key in keys {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
    }
    out
}

/// Reads a SCAN answer's value: the next cursor and the keys.
pub fn decode_keys(value: &[u8]) -> Result<(u64, Vec<Vec<u8>>)> {
    let short = || Error::Payload("a SCAN answer ends early".into());
    let next = u64::from_be_bytes(value.get(..8).ok_or_else(short)?.try_into().expect("8"));
    let count = u32::from_be_bytes(value.get(8..12).ok_or_else(short)?.try_into().expect("4"));
    let mut rest = &value[12..];
    // Never more keys than the bytes could hold: a count is not trusted for an allocation.
    let mut keys = Vec::with_capacity((count as usize).min(rest.len() / 4));
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(..4).ok_or_else(short)?.try_into().expect("4"));
        let key = rest.get(4..4 + len as usize).ok_or_else(short)?;
        keys.push(key.to_vec());
        rest = &rest[4 + len as usize..];
    }
    if !rest.is_empty() {
        return Err(Error::Payload(format!(
            "a SCAN answer has {} trailing bytes",
            rest.len()
        )));
    }
    Ok((next, keys))
}

/// What a backend is asked for in one step: a part, a sub-part of it, how many keys to aim
/// for, and the pattern.
fn encode_part(part: u8, sub: u8, subs: u8, count: u32, pattern: &[u8]) -> Vec<u8> {
    let mut out = vec![part, sub, subs];
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(pattern);
    out
}

/// A backend's answer to one step: where the next step starts (`None`: its store is done) and
/// the keys.
fn encode_part_answer(next: Option<(u8, u8, u8)>, keys: &[Vec<u8>]) -> Vec<u8> {
    let (done, part, sub, subs) = match next {
        None => (1, 0, 0, 0),
        Some((part, sub, subs)) => (0, part, sub, subs),
    };
    let mut out = vec![done, part, sub, subs];
    out.extend_from_slice(&encode_keys(0, keys)[8..]);
    out
}

type PartAnswer = (Option<(u8, u8, u8)>, Vec<Vec<u8>>);

fn decode_part_answer(value: &[u8]) -> Result<PartAnswer> {
    if value.len() < 4 {
        return Err(Error::Payload("a SCAN_PART answer ends early".into()));
    }
    let next = (value[0] == 0).then_some((value[1], value[2], value[3]));
    let mut with_cursor = vec![0u8; 8];
    with_cursor.extend_from_slice(&value[4..]);
    let (_, keys) = decode_keys(&with_cursor)?;
    Ok((next, keys))
}

/// A cheap hash that is the same in every process, to cut a part into sub-parts.
fn sub_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A backend's SCAN_PART: the keys of the asked part (and sub-part) of `store` that `heads`
/// says this node heads and that match the pattern, and where the next step starts. Steps
/// go on through the following parts until `count` keys are found or the store ends.
pub fn serve_part(store: &dyn Engine, heads: &dyn Fn(&[u8]) -> bool, request: &Frame) -> Frame {
    let value = &request.value;
    if value.len() < 7 {
        return request.error_reply(
            Status::BAD_REQUEST,
            "SCAN_PART's value is u8 part, u8 sub-part, u8 sub-parts, u32 count, then the pattern",
        );
    }
    let (mut part, mut sub, mut subs) = (value[0] as usize, value[1], value[2]);
    let count = u32::from_be_bytes(value[3..7].try_into().expect("4 bytes")).max(1) as usize;
    let pattern = &value[7..];
    let parts = store.parts().min(256);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    while part < parts && keys.len() < count {
        let mut found: Vec<Vec<u8>> = Vec::new();
        let mut matching = 0usize;
        let now = crate::expiry::now_ms();
        store.for_each_key_in(part, &mut |key, expires_at| {
            let live = expires_at.is_none_or(|at| at > now);
            if live && heads(key) && glob_match(pattern, key) {
                matching += 1;
                let in_sub = subs <= 1 || (sub_hash(key) % u64::from(subs)) as u8 == sub;
                if in_sub && found.len() <= MOST_KEYS_PER_STEP {
                    found.push(key.to_vec());
                }
            }
        });
        if subs == 0 && matching > MOST_KEYS_PER_STEP {
            // Too many for one answer: this part is walked in sub-parts from now on.
            subs = matching.div_ceil(MOST_KEYS_PER_STEP / 2).min(255) as u8;
            sub = 0;
            continue;
        }
        keys.extend(found);
        if subs > 1 && sub.saturating_add(1) < subs {
            sub += 1;
        } else {
            part += 1;
            sub = 0;
            subs = 0;
        }
        if keys.len() >= MOST_KEYS_PER_STEP {
            break;
        }
    }
    let next = (part < parts).then_some((part as u8, sub, subs));
    request.reply(Status::OK, encode_part_answer(next, &keys))
}

/// The frontend's SCAN: walks the backends from the cursor, a step at a time, until `count`
/// keys are found or every backend is done. `call` sends a request to a backend.
pub fn serve_scan(
    ring: &Ring,
    request: &Frame,
    call: &dyn Fn(&str, &Frame) -> Result<Frame>,
) -> Frame {
    let (cursor, count, pattern) = match decode_scan(&request.value) {
        Ok(scan) => scan,
        Err(e) => return request.error_reply(Status::BAD_REQUEST, e.to_string()),
    };
    let count = if count == 0 { DEFAULT_COUNT } else { count } as usize;
    let view = ring.view();
    let epoch = epoch_bits(view.epoch);
    let mut at = if cursor == 0 {
        Cursor {
            epoch,
            ..Cursor::default()
        }
    } else {
        Cursor::decode(cursor)
    };
    if at.epoch != epoch {
        return request.error_reply(
            Status::STALE_VIEW,
            format!(
                "the view changed since this scan began (its cursor is of epoch {} mod 2^24, \
                 the view is at {}): start the scan again from cursor 0",
                at.epoch, view.epoch
            ),
        );
    }
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    while (at.node as usize) < view.nodes.len()
        && keys.len() < count
        && bytes < MOST_BYTES_PER_ANSWER
    {
        let node = at.node as usize;
        if !view.is_up(node) {
            // A node that is not up heads no key in this view.
            at = Cursor {
                epoch,
                node: at.node + 1,
                ..Cursor::default()
            };
            continue;
        }
        let addr = &view.nodes[node];
        let mut step = Frame::request(
            Opcode::SCAN_PART,
            request.request_id,
            Vec::new(),
            encode_part(
                at.part,
                at.sub,
                at.subs,
                (count - keys.len()) as u32,
                pattern,
            ),
        );
        step.epoch = view.epoch;
        let answer = match call(addr, &step) {
            Ok(answer) => answer,
            Err(e) => {
                return request.error_reply(
                    Status::UNAVAILABLE,
                    format!(
                    "backend {addr} is unavailable: {e}; the scan can go on from the same cursor"
                ),
                )
            }
        };
        if answer.status != Status::OK {
            let message = format!(
                "backend {addr}: {}; the scan can go on from the same cursor",
                answer.message()
            );
            return request.error_reply(answer.status, message);
        }
        let (next, found) = match decode_part_answer(&answer.value) {
            Ok(decoded) => decoded,
            Err(e) => return request.error_reply(Status::INTERNAL, format!("{addr}: {e}")),
        };
        bytes += found.iter().map(|k| 4 + k.len()).sum::<usize>();
        keys.extend(found);
        at = match next {
            Some((part, sub, subs)) => Cursor {
                epoch,
                node: at.node,
                part,
                sub,
                subs,
            },
            None => Cursor {
                epoch,
                node: at.node + 1,
                ..Cursor::default()
            },
        };
    }
    let next = if (at.node as usize) < view.nodes.len() {
        // Never 0, which would say "done": the epoch bits of a real view are not all zero,
        // but if they are, the node bits are set.
        at.encode().max(1)
    } else {
        0
    };
    request.reply(Status::OK, encode_keys(next, &keys))
}

/// Redis's glob matching (`stringmatchlen`): `*` any run, `?` any byte, `[abc]`, `[^a]` and
/// `[a-z]` sets, `\` to take the next byte as it is. An empty pattern matches every key.
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    if pattern.is_empty() {
        return true;
    }
    // The classic single-star backtrack: on a mismatch, only the last `*` seen takes one more
    // byte, so the work is at most pattern × key however many stars a (hostile) pattern holds,
    // where a recursive match would be exponential in them.
    let (mut p, mut k) = (0, 0);
    // The pattern position after the last `*`, and the key position it has taken up to.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if pattern.get(p) == Some(&b'*') {
            p += 1;
            star = Some((p, k));
            continue;
        }
        if let Some(used) = match_one(&pattern[p..], key[k]) {
            p += used;
            k += 1;
            continue;
        }
        match star {
            Some((after, taken)) => {
                p = after;
                k = taken + 1;
                star = Some((after, taken + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether the pattern element at the start of `pattern` (not `*`) matches `byte`, and if so
/// how many pattern bytes it takes: `?`, a `[...]` set (ending at `]` or the pattern's end), a
/// `\`-escaped byte, or a literal byte.
fn match_one(pattern: &[u8], byte: u8) -> Option<usize> {
    match pattern {
        [] => None,
        [b'?', ..] => Some(1),
        [b'\\', escaped, ..] => (*escaped == byte).then_some(2),
        [b'[', rest @ ..] => {
            let (negate, mut set) = match rest {
                [b'^', set @ ..] => (true, set),
                set => (false, set),
            };
            let mut matched = false;
            loop {
                match set {
                    [] => break,
                    [b']', tail @ ..] => {
                        set = tail;
                        break;
                    }
                    [b'\\', c, tail @ ..] => {
                        matched |= *c == byte;
                        set = tail;
                    }
                    [a, b'-', b, tail @ ..] if *b != b']' => {
                        let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                        matched |= (lo..=hi).contains(&byte);
                        set = tail;
                    }
                    [c, tail @ ..] => {
                        matched |= *c == byte;
                        set = tail;
                    }
                }
            }
            (matched != negate).then_some(pattern.len() - set.len())
        }
        [literal, ..] => (*literal == byte).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn globs_match_as_redis_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("", "anything", true),
            ("*", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hello world", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:age", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*c*", "xaybzc", true),
            ("k[0-9]", "k10", false),
            ("*", "anything", true),
            ("a*", "a", true),
            ("*b", "ab", true),
            ("a?*", "a", false),
            ("[abc", "b", true),
            ("\\", "\\", true),
            ("x\\", "x\\", true),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), key.as_bytes()),
                *expected,
                "{pattern} against {key}"
            );
        }
    }

    #[test]
    fn a_pattern_of_many_stars_is_matched_in_linear_steps() {
        // Exponential for a recursive matcher: this would not finish.
        let pattern = "*a".repeat(30) + "*b";
        let key = vec![b'a'; 16 * 1024];
        assert!(!glob_match(pattern.as_bytes(), &key));
        let mut with_b = key.clone();
        with_b.push(b'b');
        assert!(glob_match(pattern.as_bytes(), &with_b));
    }

    #[test]
    fn cursors_and_payloads_read_back() {
        let cursor = Cursor {
            epoch: 0xab_cdef,
            node: 513,
            part: 63,
            sub: 2,
            subs: 5,
        };
        assert_eq!(Cursor::decode(cursor.encode()), cursor);
        let value = encode_scan(cursor.encode(), 100, b"user:*");
        assert_eq!(
            decode_scan(&value).unwrap(),
            (cursor.encode(), 100, &b"user:*"[..])
        );
        assert!(decode_scan(&value[..11]).is_err());
        let keys = vec![b"a".to_vec(), Vec::new(), vec![0xff; 300]];
        let answer = encode_keys(7, &keys);
        assert_eq!(decode_keys(&answer).unwrap(), (7, keys.clone()));
        assert!(decode_keys(&answer[..answer.len() - 1]).is_err());
        let mut forged = encode_keys(0, &[]);
        forged[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            decode_keys(&forged).is_err(),
            "a count the bytes cannot hold"
        );
        let part = encode_part_answer(Some((3, 1, 4)), &keys);
        assert_eq!(decode_part_answer(&part).unwrap(), (Some((3, 1, 4)), keys));
    }

    fn walk(store: &MemStore, heads: &dyn Fn(&[u8]) -> bool, count: u32) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let (mut part, mut sub, mut subs) = (0u8, 0u8, 0u8);
        for _ in 0..100_000 {
            let request = Frame::request(
                Opcode::SCAN_PART,
                1,
                Vec::new(),
                encode_part(part, sub, subs, count, b""),
            );
            let answer = serve_part(store, heads, &request);
            assert_eq!(answer.status, Status::OK);
            let (next, found) = decode_part_answer(&answer.value).unwrap();
            keys.extend(found);
            match next {
                Some(at) => (part, sub, subs) = at,
                None => return keys,
            }
        }
        panic!("the walk did not end");
    }

    #[test]
    fn a_walk_lists_every_headed_key_once_even_through_sub_parts() {
        let store = MemStore::default();
        // Enough keys that some parts are walked in sub-parts.
        let total = 64 * MOST_KEYS_PER_STEP / 8 + MOST_KEYS_PER_STEP * 2;
        for i in 0..total {
            store.put(format!("key-{i}").as_bytes(), b"v").unwrap();
        }
        // This node heads the keys ending in an even digit.
        let heads = |key: &[u8]| key.last().is_some_and(|d| (d - b'0').is_multiple_of(2));
        for count in [1, 10, 1_000_000] {
            let mut keys = walk(&store, &heads, count);
            let listed = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), listed, "a key was listed twice (count {count})");
            assert_eq!(keys.len(), total / 2, "count {count}");
            assert!(keys.iter().all(|k| heads(k)));
        }
    }
}
