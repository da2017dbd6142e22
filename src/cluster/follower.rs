//! A frontend that follows (`--follow`): another frontend is the view keeper, and this one
//! serves clients by the views the keeper publishes, which it learns from the backends.
//!
//! Every `interval` (and at once when a request met a newer epoch) it asks each backend that is
//! not down in its view for the view it holds (VIEW_GET, on a connection of its own, with the
//! probe timeout), and takes up the newest that names its holder. It never installs a view and
//! never marks a node: two frontends deciding membership could split the cluster into two views
//! of one epoch. When the keeper is down, a follower keeps serving by the last view it learned;
//! failures are then not handled until the keeper is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::keeper::{CurrentView, KeeperOptions};
use crate::connection::{Connection, Timeouts};
use crate::peers::Peers;
use crate::protocol::{payload, Frame, Opcode, Status};
use crate::ring::{NodeState, Ring, View};

/// A running follower. Dropping it stops its thread.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following the views the backends of `view` hold; newer ones replace `view`, and
    /// `peers`' connections to nodes a new view marks down are cut.
    pub fn start(
        options: KeeperOptions,
        view: Arc<CurrentView>,
        peers: Arc<Peers>,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("view-follower".into())
            .spawn(move || {
                let mut links: Vec<Option<Connection>> = Vec::new();
                while !stopping.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let ring = view.get();
                    if let Some(newer) = newest(&ring, &mut links, &options, &peers) {
                        take_up(&view, &peers, newer);
                    }
                    let until = started + options.interval;
                    while !stopping.load(Ordering::SeqCst)
                        && Instant::now() < until
                        && !view.is_newer_epoch_wanted(view.get().view().epoch)
                    {
                        std::thread::sleep(
                            until
                                .saturating_duration_since(Instant::now())
                                .min(Duration::from_millis(5)),
                        );
                    }
                }
            })?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The newest view, above `ring`'s epoch, that a backend not down in `ring` holds and that
/// names it by the address `ring` knows it by.
fn newest(
    ring: &Ring,
    links: &mut Vec<Option<Connection>>,
    options: &KeeperOptions,
    peers: &Peers,
) -> Option<View> {
    let view = ring.view();
    links.resize_with(view.nodes.len(), || None);
    let timeouts = Timeouts {
        connect: options.timeout,
        io: options.timeout,
        ..Timeouts::default()
    };
    let held: Vec<Option<View>> = std::thread::scope(|scope| {
        let asks: Vec<_> = links
            .iter_mut()
            .zip(&view.nodes)
            .zip(&view.states)
            .map(|((link, addr), state)| {
                let timeouts = &timeouts;
                scope.spawn(move || {
                    if *state == NodeState::Down {
                        *link = None;
                        return None;
                    }
                    held_view(link, addr, timeouts, peers)
                })
            })
            .collect();
        asks.into_iter()
            .map(|ask| ask.join().unwrap_or(None))
            .collect()
    });
    held.into_iter()
        .zip(&view.nodes)
        .filter_map(|(held, addr)| held.filter(|v| v.nodes.contains(addr)))
        .filter(|held| held.epoch > view.epoch)
        .max_by_key(|held| held.epoch)
}

/// The view `addr` holds, asked on `link` (opened again if it failed).
fn held_view(
    link: &mut Option<Connection>,
    addr: &str,
    timeouts: &Timeouts,
    peers: &Peers,
) -> Option<View> {
    let ask = Frame::request(Opcode::VIEW_GET, 0, Vec::new(), Vec::new());
    if link.is_none() {
        *link = peers.open_own(addr, timeouts).ok();
    }
    let answer = match link.as_mut()?.call(&ask) {
        Ok(answer) => answer,
        Err(_) => {
            *link = None;
            return None;
        }
    };
    if answer.status != Status::OK {
        return None;
    }
    payload::decode_view(answer.epoch, &answer.value).ok()
}

/// Routes by `view` from now on.
fn take_up(current: &CurrentView, peers: &Peers, view: View) {
    let ring = match Ring::new(view) {
        Ok(ring) => ring,
        Err(e) => {
            log::warn!("a backend holds a view this frontend cannot use: {e}");
            return;
        }
    };
    log::info!("following view epoch {}", ring.view().epoch);
    // Requests still waiting on a node that is now down end at once.
    for (node, addr) in ring.view().nodes.iter().enumerate() {
        if ring.view().states[node] == NodeState::Down {
            peers.sever(addr);
        }
    }
    current.replace_if_newer(ring);
}
