//! A fixed-size thread pool with a bounded queue.
//!
//! Work items are values handed to one shared handler. When every worker is busy and the queue is
//! full, [`ThreadPool::try_submit`] gives the item back, so the caller can answer "busy" instead of
//! letting a queue grow without bound. Dropping the pool closes the queue and joins every worker.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Workers fed from one bounded queue.
pub struct ThreadPool<T: Send + 'static> {
    sender: Option<SyncSender<T>>,
    workers: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> ThreadPool<T> {
    /// Starts `threads` workers (at least one) that pass each item to `handler`; at most `queue`
    /// items wait for a free worker.
    pub fn new<F>(name: &str, threads: usize, queue: usize, handler: F) -> std::io::Result<Self>
    where
        F: Fn(T) + Send + Sync + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(queue);
        let receiver: Arc<Mutex<Receiver<T>>> = Arc::new(Mutex::new(receiver));
        let handler = Arc::new(handler);
        let mut workers = Vec::with_capacity(threads.max(1));
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let handler = Arc::clone(&handler);
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next item, never while working.
                    let next = match receiver.lock() {
                        Ok(rx) => rx.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match next {
                        Ok(item) => handler(item),
                        Err(_) => return,
                    }
                })?;
            workers.push(worker);
        }
        Ok(ThreadPool {
            sender: Some(sender),
            workers,
        })
    }

    /// Queues `item`, or gives it back when the queue is full.
    pub fn try_submit(&self, item: T) -> Result<(), T> {
        match &self.sender {
            Some(sender) => sender.try_send(item).map_err(|e| match e {
                TrySendError::Full(item) | TrySendError::Disconnected(item) => item,
            }),
            None => Err(item),
        }
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }
}

impl<T: Send + 'static> Drop for ThreadPool<T> {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
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
            let pool = ThreadPool::new("t", 3, 100, move |n: usize| {
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
        let pool = ThreadPool::new("t", 1, 1, move |wait: bool| {
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
}
