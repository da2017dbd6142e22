//! Read-modify-write operations that run at a key's head (UPDATE, opcode 0x20): an increment,
//! a conditional set, a swap, an append. The head reads the key, computes the result here,
//! stores it and passes it down the chain as the plain PUT or DELETE it amounts to, all under
//! the key's lock, so two updates of one key never interleave and every copy holds the same
//! bytes.
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
}

const INCR_BY: u8 = 1;
const SET_IF_ABSENT: u8 = 2;
const SET_IF_PRESENT: u8 = 3;
const GET_SET: u8 = 4;
const GET_DELETE: u8 = 5;
const APPEND: u8 = 6;

/// What the head stores for an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing changes (a conditional set whose condition failed, a GETDEL of nothing).
    Nothing,
    Put(Vec<u8>),
    Delete,
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
            GET_DELETE if operand.is_empty() => Update::GetDelete,
            GET_DELETE => {
                return Err(Error::Payload(
                    "UPDATE get-and-delete takes no operand".into(),
                ))
            }
            APPEND => Update::Append(bytes()),
            other => {
                return Err(Error::Payload(format!(
                    "UPDATE operation {other} is not one this server knows"
                )))
            }
        })
    }

    /// True for the operations whose answer carries a value read (GETSET, GETDEL).
    pub fn reads(&self) -> bool {
        matches!(self, Update::GetSet(_) | Update::GetDelete)
    }

    /// What it does to a key that holds `current`, under a value limit of `max_value`.
    pub fn apply(
        &self,
        current: Option<&[u8]>,
        max_value: usize,
    ) -> std::result::Result<Outcome, Refusal> {
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
                let now = match current {
                    None => 0,
                    Some(value) => parse_integer(value).ok_or(Refusal::NotAnInteger)?,
                };
                let sum = now.checked_add(*by).ok_or(Refusal::NotAnInteger)?;
                Outcome {
                    write: Write::Put(sum.to_string().into_bytes()),
                    answer: sum.to_be_bytes().to_vec(),
                }
            }
            Update::SetIfAbsent(value) | Update::SetIfPresent(value) => {
                let wanted = matches!(self, Update::SetIfAbsent(_)) == current.is_none();
                fits(value.len())?;
                Outcome {
                    write: if wanted {
                        Write::Put(value.clone())
                    } else {
                        Write::Nothing
                    },
                    answer: vec![u8::from(wanted)],
                }
            }
            Update::GetSet(value) => {
                fits(value.len())?;
                Outcome {
                    write: Write::Put(value.clone()),
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
                    write: Write::Put(value),
                    answer: len.to_be_bytes().to_vec(),
                }
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 16;

    fn apply(update: Update, current: Option<&[u8]>) -> std::result::Result<Outcome, Refusal> {
        update.apply(current, LIMIT)
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
        ] {
            assert_eq!(Update::decode(&update.encode()).unwrap(), update);
        }
        for bad in [&[][..], &[INCR_BY, 1, 2], &[GET_DELETE, 0], &[99]] {
            assert!(Update::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn increments_count_in_decimal_and_refuse_what_is_not_an_integer() {
        let out = apply(Update::IncrBy(5), None).unwrap();
        assert_eq!(out.write, Write::Put(b"5".to_vec()));
        assert_eq!(decode_sum(&out.answer).unwrap(), 5);
        let out = apply(Update::IncrBy(-10), Some(b"7")).unwrap();
        assert_eq!(out.write, Write::Put(b"-3".to_vec()));
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
            (Write::Put(b"v".to_vec()), true)
        );
        let kept = apply(Update::SetIfAbsent(b"v".to_vec()), Some(b"old")).unwrap();
        assert_eq!(
            (kept.write, decode_stored(&kept.answer).unwrap()),
            (Write::Nothing, false)
        );
        let set = apply(Update::SetIfPresent(b"v".to_vec()), Some(b"old")).unwrap();
        assert_eq!(set.write, Write::Put(b"v".to_vec()));
        let kept = apply(Update::SetIfPresent(b"v".to_vec()), None).unwrap();
        assert_eq!(
            (kept.write, decode_stored(&kept.answer).unwrap()),
            (Write::Nothing, false)
        );
    }

    #[test]
    fn swaps_answer_what_they_replaced() {
        let out = apply(Update::GetSet(b"new".to_vec()), Some(b"old")).unwrap();
        assert_eq!(out.write, Write::Put(b"new".to_vec()));
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
        assert_eq!(out.write, Write::Put(b"abcdef".to_vec()));
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
}
