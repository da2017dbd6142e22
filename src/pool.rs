//! A fixed-size thread pool with a bounded queue.
//!
//! Work items are values handed to one shared handler. When every worker is busy and the queue is
//! full, [`ThreadPool::try_submit`] gives the item back, so the caller can answer "busy" instead of
//! letting a queue grow without bound. Dropping the pool closes the queue and joins every worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Workers fed from one bounded queue.
pub struct ThreadPool<T: Send + 'static> {
    sender: Option<SyncSender<T>>,
    workers: Vec<JoinHandle<()>>,
    backlog: Arc<Backlog>,
}

/// How many items wait in a pool's queue, so that a worker holding on to work it could hand
/// back (a connection with nothing to do right now) knows whether others are waiting for it.
#[derive(Debug, Default)]
pub struct Backlog(AtomicUsize);

impl Backlog {
    /// Items queued and not yet taken by a worker.
    pub fn waiting(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl<T: Send + 'static> ThreadPool<T> {
    /// Starts `threads` workers (at least one) that pass each item to `handler`, with the pool's
    /// backlog; at most `queue` items wait for a free worker.
    pub fn new<F>(name: &str, threads: usize, queue: usize, handler: F) -> std::io::Result<Self>
    where
        F: Fn(T, &Backlog) + Send + Sync + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(queue);
        let backlog = Arc::new(Backlog::default());
        let receiver: Arc<Mutex<Receiver<T>>> = Arc::new(Mutex::new(receiver));
        let handler = Arc::new(handler);
        let mut workers = Vec::with_capacity(threads.max(1));
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let handler = Arc::clone(&handler);
            let backlog = Arc::clone(&backlog);
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next item, never while working.
                    let next = match receiver.lock() {
                        Ok(rx) => rx.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match next {
                        Ok(item) => {
                            backlog.0.fetch_sub(1, Ordering::Relaxed);
                            handler(item, &backlog)
                        }
                        Err(_) => return,
                    }
                })?;
            workers.push(worker);
        }
        Ok(ThreadPool {
            sender: Some(sender),
            workers,
            backlog,
        })
    }

    /// Queues `item`, or gives it back when the queue is full.
    pub fn try_submit(&self, item: T) -> Result<(), T> {
        let Some(sender) = &self.sender else {
            return Err(item);
        };
        // Counted before it can be taken, so that the count never goes below zero.
        self.backlog.0.fetch_add(1, Ordering::Relaxed);
        sender.try_send(item).map_err(|e| {
            self.backlog.0.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(item) | TrySendError::Disconnected(item) => item,
            }
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// The items waiting for a worker.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }
}

impl<T: Send + 'static> Drop for ThreadPool<T> {
    fn drop(&mut self) {
        self.sender.take();
        // Dropped by one of its own workers (whose item held the pool's last owner), the pool
        // does not wait for that worker, which could never end while it waits.
        let me = std::thread::current().id();
        for worker in self.workers.drain(..) {
            if worker.thread().id() != me {
                let _ = worker.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn runs_every_item_and_joins_on_drop() {
        let done = Arc::new(AtomicUsize::new(0));
        {
            let counter = Arc::clone(&done);
            let pool = ThreadPool::new("t", 3, 100, move |n: usize, _: &Backlog| {
                counter.fetch_add(n, Ordering::SeqCst);
            })
            .unwrap();
            for _ in 0..100 {
                pool.try_submit(1).unwrap();
            }
        }
        assert_eq!(done.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn a_full_queue_gives_the_item_back() {
        let gate = Arc::new(Barrier::new(2));
        let worker_gate = Arc::clone(&gate);
        let pool = ThreadPool::new("t", 1, 1, move |wait: bool, _: &Backlog| {
            if wait {
                worker_gate.wait();
            }
        })
        .unwrap();
        // Keep the only worker busy until the gate opens.
        pool.try_submit(true).unwrap();
        // Fill the queue: the worker may not have taken the first item yet, so allow one retry.
        let mut queued = 0;
        let mut refused = None;
        for i in 0..3 {
            match pool.try_submit(false) {
                Ok(()) => queued += 1,
                Err(item) => {
                    refused = Some((i, item));
                    break;
                }
            }
        }
        assert!(queued <= 2, "queued {queued}");
        assert_eq!(refused.map(|(_, item)| item), Some(false));
        gate.wait();
    }

    #[test]
    fn the_backlog_counts_items_not_yet_taken() {
        let (started, on_start) = mpsc::channel();
        let gate = Arc::new(Barrier::new(2));
        let worker_gate = Arc::clone(&gate);
        let pool = ThreadPool::new("t", 1, 4, move |first: bool, backlog: &Backlog| {
            if first {
                started.send(backlog.waiting()).unwrap();
                worker_gate.wait();
            }
        })
        .unwrap();
        assert_eq!(pool.backlog().waiting(), 0);
        pool.try_submit(true).unwrap();
        assert_eq!(
            on_start.recv().unwrap(),
            0,
            "the item being worked on is not waiting"
        );
        pool.try_submit(false).unwrap();
        pool.try_submit(false).unwrap();
        assert_eq!(pool.backlog().waiting(), 2);
        gate.wait();
        drop(pool);
    }
}
