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

    fn take(&self, addr: &str) -> Option<Connection> {
        self.lock().get_mut(addr).and_then(Vec::pop)
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
    /// A pooled connection may have been closed by the peer since its last use (an idle timeout,
    /// a restart); when one fails, the request is tried once more on a fresh connection. A
    /// fresh connection that fails is reported as it is: the peer is down or not answering.
    pub fn call(&self, addr: &str, request: &Frame) -> Result<Frame> {
        if let Some(mut conn) = self.take(addr) {
            match conn.call(request) {
                Ok(answer) => {
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
