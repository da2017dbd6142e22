//! Keys with a time to live: the clock expiry is measured by, and the sweep that removes expired
//! keys from a backend.
//!
//! An expiring key carries the absolute time it expires, in Unix milliseconds, which the head of
//! its chain computes once from the client's relative or absolute time to live and passes down the
//! chain, into the log and through state transfers unchanged: every copy expires at the same
//! instant, whoever's clock reads it. A key at or past its time reads as absent everywhere
//! (GET, UPDATE, SCAN) before anything removes it; the head's sweep then deletes it through the
//! chain like any other delete, so that memory and the log follow.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
