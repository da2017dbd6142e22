//! Persistent, pooled connections to other servers (frontend to backends, backend to backend).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::connection::{Connection, Timeouts};
use crate::error::Result;
use crate::protocol::{Frame, Limits};

/// Idle connections kept per peer; more are opened under load and closed after use.
const MAX_IDLE_PER_PEER: usize = 64;

/// A pool of open connections per peer address.
pub struct Peers {
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    timeouts: Timeouts,
    limits: Limits,
}

impl Peers {
    /// An empty pool whose connections use `timeouts` and accept answers within `limits`.
    pub fn new(timeouts: Timeouts, limits: Limits) -> Peers {
        Peers {
            idle: Mutex::new(HashMap::new()),
            timeouts,
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Connection>>> {
        match self.idle.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A pooled connection to `addr` that is still open, dropping any found dead.
    fn take(&self, addr: &str) -> Option<Connection> {
        loop {
            let mut conn = self.lock().get_mut(addr).and_then(Vec::pop)?;
            if conn.is_reusable() {
                return Some(conn);
            }
            log::debug!("pooled connection to {addr} was closed by the peer; dropping it");
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.lock();
        let list = idle.entry(conn.addr().to_string()).or_default();
        if list.len() < MAX_IDLE_PER_PEER {
            list.push(conn);
        }
    }

    /// Sends `request` to `addr` and returns the answer.
    ///
    /// A pooled connection is checked before use, but the peer may still close it in the
    /// instant before the request goes out; a request whose bytes could not be written is tried
    /// once more on a fresh connection. Once a request is written it is never sent again: the
    /// peer may have carried it out, and a repeated PUT or DELETE could undo a later one.
    pub fn call(&self, addr: &str, request: &Frame) -> Result<Frame> {
        if let Some(mut conn) = self.take(addr) {
            conn.send(request);
            match conn.flush() {
                Ok(()) => {
                    let answer = conn.recv_answer(request)?;
                    self.give_back(conn);
                    return Ok(answer);
                }
                Err(e) => log::debug!("pooled connection to {addr} failed ({e}); reconnecting"),
            }
        }
        let mut conn = Connection::open(addr, &self.timeouts, &self.limits)?;
        let answer = conn.call(request)?;
        self.give_back(conn);
        Ok(answer)
    }

    /// Closes every idle connection to `addr` (after the peer was found dead or restarted).
    pub fn forget(&self, addr: &str) {
        self.lock().remove(addr);
    }
}
