//! Read-modify-write operations that run at a key's head (UPDATE, opcode 0x20): an increment,
//! a conditional set, a swap, an append, a set with a time to live, and the expiry operations.
//! The head reads the key, computes the result here, stores it and passes it down the chain as
//! the whole PUT (with its expiry time) or DELETE it amounts to, all under the key's lock, so
//! two updates of one key never interleave and every copy holds the same bytes and expires at
//! the same instant.
//!
//! Wire form (the request's value): a u8 operation, then its operand (integers big-endian).
//! See PROTOCOL.md section 7 for the table and the answers.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};

/// What an UPDATE asks the head to do with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Adds to the key's value, a decimal integer (absent: 0); answers the sum (i64).
    IncrBy(i64),
    /// Stores the value only if the key is absent; answers u8 1 if it stored it, else 0.
    SetIfAbsent(Vec<u8>),
    /// Stores the value only if the key is present; answers u8 1 if it stored it, else 0.
    SetIfPresent(Vec<u8>),
    /// Stores the value; answers what it replaced (u8 1 then the old value, or u8 0).
    GetSet(Vec<u8>),
    /// Removes the key; answers what it held (u8 1 then the value, or u8 0).
    GetDelete,
    /// Appends to the key's value (absent: empty); answers the new length (u64).
    Append(Vec<u8>),
    /// Stores the value if `condition` holds, with the time to live `ttl` says (Redis's SET
    /// with NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL); answers u8 1 if it stored it, else 0,
    /// followed with `get_old` by what the key held (u8 1 then the value, or u8 0).
    Set {
        value: Vec<u8>,
        condition: Condition,
        ttl: Ttl,
        get_old: bool,
    },
    /// Gives a present key the expiry time `at` if `condition` holds; a time not after now
    /// deletes the key (Redis's EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT). Answers u8 1 if it did,
    /// 0 if the key is absent or the condition failed.
    Expire {
        at: When,
        condition: ExpireCondition,
    },
    /// Takes the key's time to live away; answers u8 1 if it had one, 0 if the key is absent
    /// or never expired.
    Persist,
    /// Answers the key's time to live: i64 milliseconds left, then i64 the Unix time in
    /// milliseconds it expires at; both -1 for a key that never expires, -2 for an absent one.
    Ttl,
    /// Deletes the key if it is stored but has expired, so that the delete goes down its
    /// chain (the head's sweep sends these); answers u8 1 if it deleted it.
    DeleteIfExpired,
}

/// When [`Update::Set`] stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always = 0,
    /// Only if the key is absent (NX).
    IfAbsent = 1,
    /// Only if the key is present (XX).
    IfPresent = 2,
}

/// A point in time given as a client gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Milliseconds from when the head applies it.
    In(i64),
    /// Unix time in milliseconds.
    At(i64),
}

/// The time to live [`Update::Set`] leaves its key with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// None: the key never expires (a plain SET).
    Clear,
    /// What the key had (KEEPTTL); none for a key that was absent.
    Keep,
    /// Expires then (EX, PX, EXAT, PXAT); the time must be positive.
    Expires(When),
}

/// When [`Update::Expire`] sets its time (Redis 7's EXPIRE options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    Always = 0,
    /// Only if the key has no time to live (NX).
    IfNone = 1,
    /// Only if it has one (XX).
    IfSome = 2,
    /// Only if the new time is later than the one it has; a key without one never (GT).
    IfLater = 3,
    /// Only if the new time is sooner than the one it has; a key without one always (LT).
    IfSooner = 4,
    /// Only if it has one and the new time is sooner (XX and LT together: unlike LT alone, a
    /// key without a time to live is left alone).
    IfSomeAndSooner = 5,
}

const INCR_BY: u8 = 1;
const SET_IF_ABSENT: u8 = 2;
const SET_IF_PRESENT: u8 = 3;
const GET_SET: u8 = 4;
const GET_DELETE: u8 = 5;
const APPEND: u8 = 6;
const SET: u8 = 7;
const EXPIRE: u8 = 8;
const PERSIST: u8 = 9;
const TTL: u8 = 10;
const DELETE_IF_EXPIRED: u8 = 11;

/// A Set's flags byte: its condition in the low two bits, and "answer the old value".
const GET_OLD_FLAG: u8 = 4;
/// A time's kind byte.
const TTL_CLEAR: u8 = 0;
const TTL_KEEP: u8 = 1;
const WHEN_IN: u8 = 2;
const WHEN_AT: u8 = 3;

/// The most bytes an operation's header takes before a value (a Set with a time: op, flags,
/// kind, i64), so that the frame check leaves room for a value at the limit.
pub const LONGEST_HEADER: usize = 1 + 1 + 1 + 8;

/// What the head stores for an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing changes (a conditional set whose condition failed, a GETDEL of nothing).
    Nothing,
    /// The whole value, and the Unix time in milliseconds it expires at (`None`: never).
    Put {
        value: Vec<u8>,
        expires_at: Option<u64>,
    },
    Delete,
}

impl Write {
    fn put(value: Vec<u8>, expires_at: Option<u64>) -> Write {
        Write::Put { value, expires_at }
    }
}

/// The outcome of an update against a key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub write: Write,
    /// The answer's value.
    pub answer: Vec<u8>,
}

/// Why an update cannot be applied; nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The value is not a decimal integer in range, or the sum would overflow.
    NotAnInteger,
    /// The result would be longer than the value limit.
    TooLarge { len: usize, limit: usize },
    /// A time to live that is not positive (SET's), or a time past what a u64 of milliseconds
    /// holds.
    BadExpiry,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAnInteger => {
                f.write_str("value is not an integer or out of range (nothing changed)")
            }
            Refusal::TooLarge { len, limit } => write!(
                f,
                "the value would be {len} bytes, over the limit of {limit} (nothing changed)"
            ),
            Refusal::BadExpiry => f.write_str("invalid expire time (nothing changed)"),
        }
    }
}

impl Update {
    /// The request value that carries it.
    pub fn encode(&self) -> Vec<u8> {
        let (op, operand): (u8, &[u8]) = match self {
            Update::IncrBy(n) => {
                let mut out = vec![INCR_BY];
                out.extend_from_slice(&n.to_be_bytes());
                return out;
            }
            Update::SetIfAbsent(v) => (SET_IF_ABSENT, v),
            Update::SetIfPresent(v) => (SET_IF_PRESENT, v),
            Update::GetSet(v) => (GET_SET, v),
            Update::GetDelete => (GET_DELETE, &[]),
            Update::Append(v) => (APPEND, v),
            Update::Set {
                value,
                condition,
                ttl,
                get_old,
            } => {
                let mut out = Vec::with_capacity(LONGEST_HEADER + value.len());
                out.push(SET);
                out.push(*condition as u8 | if *get_old { GET_OLD_FLAG } else { 0 });
                match ttl {
                    Ttl::Clear => out.push(TTL_CLEAR),
                    Ttl::Keep => out.push(TTL_KEEP),
                    Ttl::Expires(when) => encode_when(&mut out, *when),
                }
                out.extend_from_slice(value);
                return out;
            }
            Update::Expire { at, condition } => {
                let mut out = vec![EXPIRE, *condition as u8];
                encode_when(&mut out, *at);
                return out;
            }
            Update::Persist => (PERSIST, &[]),
            Update::Ttl => (TTL, &[]),
            Update::DeleteIfExpired => (DELETE_IF_EXPIRED, &[]),
        };
        let mut out = Vec::with_capacity(1 + operand.len());
        out.push(op);
        out.extend_from_slice(operand);
        out
    }

    /// Reads an update from a request value.
    pub fn decode(value: &[u8]) -> Result<Update> {
        let Some((&op, operand)) = value.split_first() else {
            return Err(Error::Payload(
                "UPDATE's value is empty: no operation".into(),
            ));
        };
        let bytes = || operand.to_vec();
        Ok(match op {
            INCR_BY => {
                if operand.len() != 8 {
                    return Err(Error::Payload(format!(
                        "UPDATE increment needs an 8-byte operand, got {} bytes",
                        operand.len()
                    )));
                }
                Update::IncrBy(BigEndian::read_i64(operand))
            }
            SET_IF_ABSENT => Update::SetIfAbsent(bytes()),
            SET_IF_PRESENT => Update::SetIfPresent(bytes()),
            GET_SET => Update::GetSet(bytes()),
            GET_DELETE | PERSIST | TTL | DELETE_IF_EXPIRED if !operand.is_empty() => {
                return Err(Error::Payload(format!(
                    "UPDATE operation {op} takes no operand, got {} bytes",
                    operand.len()
                )))
            }
            GET_DELETE => Update::GetDelete,
            PERSIST => Update::Persist,
            TTL => Update::Ttl,
            DELETE_IF_EXPIRED => Update::DeleteIfExpired,
            APPEND => Update::Append(bytes()),
            SET => {
                let Some((&flags, rest)) = operand.split_first() else {
                    return Err(Error::Payload("UPDATE set needs a flags byte".into()));
                };
                let condition = match flags & !GET_OLD_FLAG {
                    0 => Condition::Always,
                    1 => Condition::IfAbsent,
                    2 => Condition::IfPresent,
                    other => {
                        return Err(Error::Payload(format!(
                            "UPDATE set flags 0x{flags:02x}: condition {other} is not 0, 1 or 2, \
                             or an unknown flag is set"
                        )))
                    }
                };
                let (ttl, value) = match rest.split_first() {
                    Some((&TTL_CLEAR, value)) => (Ttl::Clear, value),
                    Some((&TTL_KEEP, value)) => (Ttl::Keep, value),
                    _ => {
                        let (when, value) = decode_when(rest, "set")?;
                        (Ttl::Expires(when), value)
                    }
                };
                Update::Set {
                    value: value.to_vec(),
                    condition,
                    ttl,
                    get_old: flags & GET_OLD_FLAG != 0,
                }
            }
            EXPIRE => {
                let Some((&condition, rest)) = operand.split_first() else {
                    return Err(Error::Payload(
                        "UPDATE expire needs a condition byte".into(),
                    ));
                };
                let condition = match condition {
                    0 => ExpireCondition::Always,
                    1 => ExpireCondition::IfNone,
                    2 => ExpireCondition::IfSome,
                    3 => ExpireCondition::IfLater,
                    4 => ExpireCondition::IfSooner,
                    5 => ExpireCondition::IfSomeAndSooner,
                    other => {
                        return Err(Error::Payload(format!(
                            "UPDATE expire condition {other} is not 0 to 5"
                        )))
                    }
                };
                let (at, rest) = decode_when(rest, "expire")?;
                if !rest.is_empty() {
                    return Err(Error::Payload(format!(
                        "UPDATE expire has {} bytes after its time",
                        rest.len()
                    )));
                }
                Update::Expire { at, condition }
            }
            other => {
                return Err(Error::Payload(format!(
                    "UPDATE operation {other} is not one this server knows"
                )))
            }
        })
    }

    /// What it does, at Unix time `now` (milliseconds), to a key that holds `current` (its
    /// value and expiry time; `None` if absent or expired), under a value limit of `max_value`.
    pub fn apply(
        &self,
        current: Option<(&[u8], Option<u64>)>,
        now: u64,
        max_value: usize,
    ) -> std::result::Result<Outcome, Refusal> {
        let expiry = current.and_then(|(_, at)| at);
        let current = current.map(|(value, _)| value);
        let fits = |len: usize| {
            if len > max_value {
                Err(Refusal::TooLarge {
                    len,
                    limit: max_value,
                })
            } else {
                Ok(())
            }
        };
        let old = |current: Option<&[u8]>| match current {
            Some(value) => {
                let mut out = Vec::with_capacity(1 + value.len());
                out.push(1);
                out.extend_from_slice(value);
                out
            }
            None => vec![0],
        };
        Ok(match self {
            Update::IncrBy(by) => {
                let held = match current {
                    None => 0,
                    Some(value) => parse_integer(value).ok_or(Refusal::NotAnInteger)?,
                };
                let sum = held.checked_add(*by).ok_or(Refusal::NotAnInteger)?;
                Outcome {
                    // An increment keeps the key's time to live, as Redis's does.
                    write: Write::put(sum.to_string().into_bytes(), expiry),
                    answer: sum.to_be_bytes().to_vec(),
                }
            }
            Update::SetIfAbsent(value) | Update::SetIfPresent(value) => {
                let wanted = matches!(self, Update::SetIfAbsent(_)) == current.is_none();
                fits(value.len())?;
                Outcome {
                    write: if wanted {
                        Write::put(value.clone(), None)
                    } else {
                        Write::Nothing
                    },
                    answer: vec![u8::from(wanted)],
                }
            }
            Update::GetSet(value) => {
                fits(value.len())?;
                Outcome {
                    write: Write::put(value.clone(), None),
                    answer: old(current),
                }
            }
            Update::GetDelete => Outcome {
                write: if current.is_some() {
                    Write::Delete
                } else {
                    Write::Nothing
                },
                answer: old(current),
            },
            Update::Append(suffix) => {
                let mut value = current.unwrap_or_default().to_vec();
                fits(value.len() + suffix.len())?;
                value.extend_from_slice(suffix);
                let len = value.len() as u64;
                Outcome {
                    write: Write::put(value, expiry),
                    answer: len.to_be_bytes().to_vec(),
                }
            }
            Update::Set {
                value,
                condition,
                ttl,
                get_old,
            } => {
                fits(value.len())?;
                let expires_at = match ttl {
                    Ttl::Clear => None,
                    Ttl::Keep => expiry,
                    Ttl::Expires(when) => {
                        let (When::In(time) | When::At(time)) = *when;
                        if time <= 0 {
                            return Err(Refusal::BadExpiry);
                        }
                        Some(absolute(*when, now)?)
                    }
                };
                let wanted = match condition {
                    Condition::Always => true,
                    Condition::IfAbsent => current.is_none(),
                    Condition::IfPresent => current.is_some(),
                };
                let write = match (wanted, expires_at) {
                    (false, _) => Write::Nothing,
                    // Stored already expired: the key is gone at once.
                    (true, Some(at)) if at <= now => {
                        if current.is_some() {
                            Write::Delete
                        } else {
                            Write::Nothing
                        }
                    }
                    (true, _) => Write::put(value.clone(), expires_at),
                };
                let mut answer = vec![u8::from(wanted)];
                if *get_old {
                    answer.extend_from_slice(&old(current));
                }
                Outcome { write, answer }
            }
            Update::Expire { at, condition } => {
                let at = absolute(*at, now)?;
                let wanted = current.is_some()
                    && match (condition, expiry) {
                        (ExpireCondition::Always, _) => true,
                        (ExpireCondition::IfNone, had) => had.is_none(),
                        (ExpireCondition::IfSome, had) => had.is_some(),
                        // A key without a time to live lives for ever: later than any time.
                        (ExpireCondition::IfLater, had) => had.is_some_and(|had| at > had),
                        (ExpireCondition::IfSooner, had) => had.is_none_or(|had| at < had),
                        (ExpireCondition::IfSomeAndSooner, had) => had.is_some_and(|had| at < had),
                    };
                let write = match current {
                    Some(_) if wanted && at <= now => Write::Delete,
                    Some(value) if wanted => Write::put(value.to_vec(), Some(at)),
                    _ => Write::Nothing,
                };
                Outcome {
                    write,
                    answer: vec![u8::from(wanted)],
                }
            }
            Update::Persist => {
                let wanted = expiry.is_some();
                Outcome {
                    write: match current {
                        Some(value) if wanted => Write::put(value.to_vec(), None),
                        _ => Write::Nothing,
                    },
                    answer: vec![u8::from(wanted)],
                }
            }
            Update::Ttl => {
                let (left, at) = match (current, expiry) {
                    (None, _) => (-2, -2),
                    (Some(_), None) => (-1, -1),
                    (Some(_), Some(at)) => (
                        at.saturating_sub(now).min(i64::MAX as u64) as i64,
                        at.min(i64::MAX as u64) as i64,
                    ),
                };
                let mut answer = left.to_be_bytes().to_vec();
                answer.extend_from_slice(&at.to_be_bytes());
                Outcome {
                    write: Write::Nothing,
                    answer,
                }
            }
            // `current` is `None` for an expired key as for an absent one: either way there is
            // nothing live to keep, and deleting an absent key changes nothing. The head answers
            // whether its delete found the key; a live key is kept and answered 0.
            Update::DeleteIfExpired => Outcome {
                write: if current.is_none() {
                    Write::Delete
                } else {
                    Write::Nothing
                },
                answer: vec![0],
            },
        })
    }
}

/// The Unix time in milliseconds that `when` names, applied at `now`; refused past i64.
fn absolute(when: When, now: u64) -> std::result::Result<u64, Refusal> {
    let at = match when {
        When::In(ms) => (now as i64).checked_add(ms).ok_or(Refusal::BadExpiry)?,
        When::At(ms) => ms,
    };
    Ok(at.max(0) as u64)
}

fn encode_when(out: &mut Vec<u8>, when: When) {
    let (kind, time) = match when {
        When::In(ms) => (WHEN_IN, ms),
        When::At(ms) => (WHEN_AT, ms),
    };
    out.push(kind);
    out.extend_from_slice(&time.to_be_bytes());
}

/// A time (kind byte, i64) at the start of `bytes`, and the bytes after it.
fn decode_when<'a>(bytes: &'a [u8], what: &str) -> Result<(When, &'a [u8])> {
    let (&kind, rest) = bytes
        .split_first()
        .ok_or_else(|| Error::Payload(format!("UPDATE {what} needs a time kind byte")))?;
    if rest.len() < 8 {
        return Err(Error::Payload(format!(
            "UPDATE {what}'s time needs 8 bytes, got {}",
            rest.len()
        )));
    }
    let (time, rest) = rest.split_at(8);
    let time = BigEndian::read_i64(time);
    match kind {
        WHEN_IN => Ok((When::In(time), rest)),
        WHEN_AT => Ok((When::At(time), rest)),
        other => Err(Error::Payload(format!(
            "UPDATE {what}'s time kind {other} is not known"
        ))),
    }
}

/// A stored integer as Redis keeps it: decimal, an optional minus sign, no spaces, no plus
/// sign, no leading zeros, within i64.
pub fn parse_integer(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || text == "-0"
    {
        return None;
    }
    text.parse().ok()
}

/// The 8 bytes of an answer that is one integer, or why not.
fn eight_bytes(answer: &[u8], what: &str) -> Result<[u8; 8]> {
    answer
        .try_into()
        .map_err(|_| Error::Payload(format!("{what}'s answer is 8 bytes, got {}", answer.len())))
}

/// The sum an increment answered.
pub fn decode_sum(answer: &[u8]) -> Result<i64> {
    eight_bytes(answer, "an increment").map(i64::from_be_bytes)
}

/// Whether a conditional set stored its value.
pub fn decode_stored(answer: &[u8]) -> Result<bool> {
    match answer {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(Error::Payload(format!(
            "a conditional set's answer is one byte 0 or 1, got {answer:?}"
        ))),
    }
}

/// The value a GETSET or GETDEL found (`None`: the key was absent).
pub fn decode_old(answer: &[u8]) -> Result<Option<Vec<u8>>> {
    match answer.split_first() {
        Some((0, [])) => Ok(None),
        Some((1, value)) => Ok(Some(value.to_vec())),
        _ => Err(Error::Payload(
            "a swap's answer is u8 0, or u8 1 and the old value".into(),
        )),
    }
}

/// The length an append answered.
pub fn decode_len(answer: &[u8]) -> Result<u64> {
    eight_bytes(answer, "an append").map(u64::from_be_bytes)
}

/// What a Set answered: whether it stored its value, and with `get_old` what the key held.
pub fn decode_set(answer: &[u8], get_old: bool) -> Result<(bool, Option<Vec<u8>>)> {
    match answer.split_first() {
        Some((&stored, [])) if !get_old && stored <= 1 => Ok((stored == 1, None)),
        Some((&stored, old)) if get_old && stored <= 1 => Ok((stored == 1, decode_old(old)?)),
        _ => Err(Error::Payload(
            "a set's answer is u8 0 or 1, then with GET the old value".into(),
        )),
    }
}

/// A key's time to live as a Ttl answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeToLive {
    /// The key is not stored (or has expired).
    Absent,
    /// The key never expires.
    Forever,
    /// Milliseconds left, and the Unix time in milliseconds the key expires at.
    Left { ms: u64, at: u64 },
}

/// The time to live a Ttl answered.
pub fn decode_ttl(answer: &[u8]) -> Result<TimeToLive> {
    if answer.len() != 16 {
        return Err(Error::Payload(format!(
            "a time to live's answer is 16 bytes, got {}",
            answer.len()
        )));
    }
    let left = BigEndian::read_i64(&answer[..8]);
    let at = BigEndian::read_i64(&answer[8..]);
    Ok(match (left, at) {
        (-2, _) => TimeToLive::Absent,
        (-1, _) => TimeToLive::Forever,
        (left, at) if left >= 0 && at >= 0 => TimeToLive::Left {
            ms: left as u64,
            at: at as u64,
        },
        _ => {
            return Err(Error::Payload(format!(
                "a time to live of {left} ms, expiring at {at}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 16;

    const NOW: u64 = 1_000_000;

    fn apply(update: Update, current: Option<&[u8]>) -> std::result::Result<Outcome, Refusal> {
        update.apply(current.map(|value| (value, None)), NOW, LIMIT)
    }

    fn apply_with(
        update: Update,
        current: Option<(&[u8], Option<u64>)>,
    ) -> std::result::Result<Outcome, Refusal> {
        update.apply(current, NOW, LIMIT)
    }

    fn put(value: &[u8], expires_at: Option<u64>) -> Write {
        Write::put(value.to_vec(), expires_at)
    }

    #[test]
    fn every_update_reads_back_from_its_encoding() {
        for update in [
            Update::IncrBy(-42),
            Update::IncrBy(i64::MAX),
            Update::SetIfAbsent(b"v".to_vec()),
            Update::SetIfPresent(Vec::new()),
            Update::GetSet(b"new".to_vec()),
            Update::GetDelete,
            Update::Append(b"tail".to_vec()),
            Update::Set {
                value: b"v".to_vec(),
                condition: Condition::IfPresent,
                ttl: Ttl::Expires(When::In(1_500)),
                get_old: true,
            },
            Update::Set {
                value: Vec::new(),
                condition: Condition::IfAbsent,
                ttl: Ttl::Keep,
                get_old: false,
            },
            Update::Set {
                value: b"x".to_vec(),
                condition: Condition::Always,
                ttl: Ttl::Clear,
                get_old: false,
            },
            Update::Expire {
                at: When::At(-5),
                condition: ExpireCondition::IfSooner,
            },
            Update::Expire {
                at: When::In(7),
                condition: ExpireCondition::IfSomeAndSooner,
            },
            Update::Persist,
            Update::Ttl,
            Update::DeleteIfExpired,
        ] {
            assert_eq!(Update::decode(&update.encode()).unwrap(), update);
        }
        for bad in [
            &[][..],
            &[INCR_BY, 1, 2],
            &[GET_DELETE, 0],
            &[99],
            &[SET],
            &[SET, 3, TTL_CLEAR],
            &[SET, 8, TTL_CLEAR],
            &[SET, 0, WHEN_IN, 0, 0],
            &[SET, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1],
            &[EXPIRE, 6, WHEN_IN, 0, 0, 0, 0, 0, 0, 0, 1],
            &[EXPIRE, 0, WHEN_IN, 0, 0, 0, 0, 0, 0, 0, 1, 7],
            &[TTL, 1],
        ] {
            assert!(Update::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn increments_count_in_decimal_and_refuse_what_is_not_an_integer() {
        let out = apply(Update::IncrBy(5), None).unwrap();
        assert_eq!(out.write, put(b"5", None));
        assert_eq!(decode_sum(&out.answer).unwrap(), 5);
        let out = apply(Update::IncrBy(-10), Some(b"7")).unwrap();
        assert_eq!(out.write, put(b"-3", None));
        assert_eq!(decode_sum(&out.answer).unwrap(), -3);
        for bad in [
            &b"abc"[..],
            b"",
            b" 1",
            b"+1",
            b"01",
            b"-0",
            b"1.5",
            b"99999999999999999999",
        ] {
            assert_eq!(
                apply(Update::IncrBy(1), Some(bad)),
                Err(Refusal::NotAnInteger),
                "{bad:?}"
            );
        }
        let max = i64::MAX.to_string();
        assert_eq!(
            apply(Update::IncrBy(1), Some(max.as_bytes())),
            Err(Refusal::NotAnInteger)
        );
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn conditional_sets_store_only_when_their_condition_holds() {
        let set = apply(Update::SetIfAbsent(b"v".to_vec()), None).unwrap();
        assert_eq!(
            (set.write, decode_stored(&set.answer).unwrap()),
            (put(b"v", None), true)
        );
        let kept = apply(Update::SetIfAbsent(b"v".to_vec()), Some(b"old")).unwrap();
        assert_eq!(
            (kept.write, decode_stored(&kept.answer).unwrap()),
            (Write::Nothing, false)
        );
        let set = apply(Update::SetIfPresent(b"v".to_vec()), Some(b"old")).unwrap();
        assert_eq!(set.write, put(b"v", None));
        let kept = apply(Update::SetIfPresent(b"v".to_vec()), None).unwrap();
        assert_eq!(
            (kept.write, decode_stored(&kept.answer).unwrap()),
            (Write::Nothing, false)
        );
    }

    #[test]
    fn swaps_answer_what_they_replaced() {
        let out = apply(Update::GetSet(b"new".to_vec()), Some(b"old")).unwrap();
        assert_eq!(out.write, put(b"new", None));
        assert_eq!(decode_old(&out.answer).unwrap(), Some(b"old".to_vec()));
        let out = apply(Update::GetSet(b"new".to_vec()), None).unwrap();
        assert_eq!(decode_old(&out.answer).unwrap(), None);
        let out = apply(Update::GetDelete, Some(b"")).unwrap();
        assert_eq!(out.write, Write::Delete);
        assert_eq!(decode_old(&out.answer).unwrap(), Some(Vec::new()));
        let out = apply(Update::GetDelete, None).unwrap();
        assert_eq!(
            (out.write, decode_old(&out.answer).unwrap()),
            (Write::Nothing, None)
        );
    }

    #[test]
    fn appends_grow_the_value_up_to_the_limit() {
        let out = apply(Update::Append(b"def".to_vec()), Some(b"abc")).unwrap();
        assert_eq!(out.write, put(b"abcdef", None));
        assert_eq!(decode_len(&out.answer).unwrap(), 6);
        let out = apply(Update::Append(b"x".to_vec()), None).unwrap();
        assert_eq!(decode_len(&out.answer).unwrap(), 1);
        assert_eq!(
            apply(Update::Append(vec![0; 10]), Some(&[1; 10])),
            Err(Refusal::TooLarge {
                len: 20,
                limit: LIMIT
            })
        );
        assert!(apply(Update::GetSet(vec![0; 17]), None).is_err());
    }

    fn set(value: &[u8], condition: Condition, ttl: Ttl, get_old: bool) -> Update {
        Update::Set {
            value: value.to_vec(),
            condition,
            ttl,
            get_old,
        }
    }

    #[test]
    fn a_set_with_a_time_to_live_stores_the_absolute_time() {
        let out = apply(
            set(b"v", Condition::Always, Ttl::Expires(When::In(500)), false),
            None,
        )
        .unwrap();
        assert_eq!(out.write, put(b"v", Some(NOW + 500)));
        assert_eq!(decode_set(&out.answer, false).unwrap(), (true, None));
        let at = When::At(NOW as i64 + 9);
        let out = apply_with(
            set(b"v", Condition::IfPresent, Ttl::Expires(at), true),
            Some((b"old", Some(NOW + 1))),
        )
        .unwrap();
        assert_eq!(out.write, put(b"v", Some(NOW + 9)));
        assert_eq!(
            decode_set(&out.answer, true).unwrap(),
            (true, Some(b"old".to_vec()))
        );
        // KEEPTTL keeps what the key had; a plain set clears it.
        let held = Some((&b"old"[..], Some(NOW + 77)));
        let out = apply_with(set(b"v", Condition::Always, Ttl::Keep, false), held).unwrap();
        assert_eq!(out.write, put(b"v", Some(NOW + 77)));
        let out = apply_with(set(b"v", Condition::Always, Ttl::Clear, false), held).unwrap();
        assert_eq!(out.write, put(b"v", None));
        // NX on a present key stores nothing and says so.
        let out = apply_with(set(b"v", Condition::IfAbsent, Ttl::Clear, true), held).unwrap();
        assert_eq!(out.write, Write::Nothing);
        assert_eq!(
            decode_set(&out.answer, true).unwrap(),
            (false, Some(b"old".to_vec()))
        );
        // A time in the past removes the key at once; zero or negative is refused.
        let past = Ttl::Expires(When::At(NOW as i64 - 1));
        let out = apply_with(set(b"v", Condition::Always, past, false), held).unwrap();
        assert_eq!(out.write, Write::Delete);
        for bad in [When::In(0), When::In(-1), When::At(0)] {
            assert_eq!(
                apply(set(b"v", Condition::Always, Ttl::Expires(bad), false), None),
                Err(Refusal::BadExpiry)
            );
        }
        assert_eq!(
            apply(
                set(
                    b"v",
                    Condition::Always,
                    Ttl::Expires(When::In(i64::MAX)),
                    false
                ),
                None
            ),
            Err(Refusal::BadExpiry)
        );
    }

    #[test]
    fn increments_and_appends_keep_the_time_to_live_and_swaps_clear_it() {
        let held = Some((&b"7"[..], Some(NOW + 10)));
        assert_eq!(
            apply_with(Update::IncrBy(1), held).unwrap().write,
            put(b"8", Some(NOW + 10))
        );
        assert_eq!(
            apply_with(Update::Append(b"x".to_vec()), held)
                .unwrap()
                .write,
            put(b"7x", Some(NOW + 10))
        );
        assert_eq!(
            apply_with(Update::GetSet(b"n".to_vec()), held)
                .unwrap()
                .write,
            put(b"n", None)
        );
        assert_eq!(
            apply_with(Update::SetIfPresent(b"n".to_vec()), held)
                .unwrap()
                .write,
            put(b"n", None)
        );
    }

    #[test]
    fn expire_follows_its_condition_and_a_past_time_deletes() {
        let expire = |at, condition| Update::Expire { at, condition };
        let forever = Some((&b"v"[..], None));
        let soon = Some((&b"v"[..], Some(NOW + 100)));
        let cases = [
            (
                expire(When::In(50), ExpireCondition::Always),
                forever,
                Some(NOW + 50),
            ),
            (
                expire(When::In(50), ExpireCondition::IfNone),
                forever,
                Some(NOW + 50),
            ),
            (expire(When::In(50), ExpireCondition::IfNone), soon, None),
            (expire(When::In(50), ExpireCondition::IfSome), forever, None),
            (
                expire(When::In(50), ExpireCondition::IfSome),
                soon,
                Some(NOW + 50),
            ),
            (
                expire(When::In(500), ExpireCondition::IfLater),
                soon,
                Some(NOW + 500),
            ),
            (expire(When::In(50), ExpireCondition::IfLater), soon, None),
            (
                expire(When::In(500), ExpireCondition::IfLater),
                forever,
                None,
            ),
            (
                expire(When::In(50), ExpireCondition::IfSooner),
                soon,
                Some(NOW + 50),
            ),
            (expire(When::In(500), ExpireCondition::IfSooner), soon, None),
            (
                expire(When::In(500), ExpireCondition::IfSooner),
                forever,
                Some(NOW + 500),
            ),
            (
                expire(When::In(50), ExpireCondition::IfSomeAndSooner),
                soon,
                Some(NOW + 50),
            ),
            (
                expire(When::In(500), ExpireCondition::IfSomeAndSooner),
                soon,
                None,
            ),
            (
                expire(When::In(50), ExpireCondition::IfSomeAndSooner),
                forever,
                None,
            ),
            (
                expire(When::At(NOW as i64 + 3), ExpireCondition::Always),
                soon,
                Some(NOW + 3),
            ),
        ];
        for (update, held, expected) in cases {
            let out = apply_with(update.clone(), held).unwrap();
            let (write, answer) = match expected {
                Some(at) => (put(b"v", Some(at)), vec![1]),
                None => (Write::Nothing, vec![0]),
            };
            assert_eq!(
                (out.write, out.answer),
                (write, answer),
                "{update:?} on {held:?}"
            );
        }
        let out = apply_with(expire(When::In(-1), ExpireCondition::Always), forever).unwrap();
        assert_eq!((out.write, out.answer), (Write::Delete, vec![1]));
        let out = apply_with(expire(When::In(10), ExpireCondition::Always), None).unwrap();
        assert_eq!((out.write, out.answer), (Write::Nothing, vec![0]));
    }

    #[test]
    fn persist_ttl_and_the_sweeps_delete() {
        let soon = Some((&b"v"[..], Some(NOW + 100)));
        let out = apply_with(Update::Persist, soon).unwrap();
        assert_eq!((out.write, out.answer), (put(b"v", None), vec![1]));
        let out = apply_with(Update::Persist, Some((b"v", None))).unwrap();
        assert_eq!((out.write, out.answer), (Write::Nothing, vec![0]));
        let ttl = |held| decode_ttl(&apply_with(Update::Ttl, held).unwrap().answer).unwrap();
        assert_eq!(
            ttl(soon),
            TimeToLive::Left {
                ms: 100,
                at: NOW + 100
            }
        );
        assert_eq!(ttl(Some((b"v", None))), TimeToLive::Forever);
        assert_eq!(ttl(None), TimeToLive::Absent);
        assert_eq!(
            apply_with(Update::DeleteIfExpired, None).unwrap().write,
            Write::Delete
        );
        let kept = apply_with(Update::DeleteIfExpired, soon).unwrap();
        assert_eq!((kept.write, kept.answer), (Write::Nothing, vec![0]));
    }
}
