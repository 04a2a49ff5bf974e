//! The watermarks the workers of a process (and, through the gossip
//! dataflow, of a cluster) publish to each other, and the sources that
//! wait for slower ones.
//!
//! A worker publishes the watermark of its partitions that hold it back,
//! or none while they are all idle or finished. A worker whose partitions
//! are all idle follows the slowest active one; a partition too far ahead
//! of the slowest of all (partition skew) waits, and its source is woken
//! as soon as another worker's watermark moves rather than on a timer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Wakes a worker's source from another thread.
#[derive(Clone)]
pub struct Waker(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Waker")
    }
}

/// The workers' published watermarks and the sources waiting on them.
#[derive(Debug, Default)]
pub struct WorkerWatermarks {
    /// Per worker, the watermark of its partitions that hold it back;
    /// absent while all of a worker's partitions are idle or finished.
    active: Mutex<BTreeMap<usize, i64>>,
    /// Per worker whose partitions wait for slower ones, how to wake its
    /// source once another worker's watermark moves.
    aligning: Mutex<BTreeMap<usize, Waker>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WorkerWatermarks {
    /// Publishes worker `worker`'s watermark: `None` when none of its
    /// partitions holds it back. Sources waiting for slower partitions are
    /// woken when it moves.
    pub fn publish(&self, worker: usize, watermark: Option<i64>) {
        let moved = {
            let mut active = lock(&self.active);
            let previous = match watermark {
                Some(watermark) => active.insert(worker, watermark),
                None => active.remove(&worker),
            };
            previous != watermark
        };
        if moved {
            self.wake_aligning(worker);
        }
    }

    /// The slowest watermark published, if any worker holds one.
    pub fn slowest(&self) -> Option<i64> {
        lock(&self.active).values().min().copied()
    }

    /// Registers that worker `worker`'s source waits for other workers'
    /// partitions to catch up, and how to wake it when they move.
    pub fn wait_for_alignment(&self, worker: usize, wake: Waker) {
        lock(&self.aligning).insert(worker, wake);
    }

    /// Wakes the sources waiting for alignment, other than `worker`'s:
    /// without this they would look again only on a timer, and a worker
    /// ahead would sit idle while the others catch up.
    fn wake_aligning(&self, worker: usize) {
        let waiting: Vec<Waker> = {
            let mut aligning = lock(&self.aligning);
            if aligning.is_empty() || aligning.keys().all(|waiting| *waiting == worker) {
                return;
            }
            let own = aligning.remove(&worker);
            let others = std::mem::take(&mut *aligning).into_values().collect();
            if let Some(own) = own {
                aligning.insert(worker, own);
            }
            others
        };
        for wake in waiting {
            (wake.0)();
        }
    }

    /// The watermark worker `worker` last published.
    pub fn of(&self, worker: usize) -> Option<i64> {
        lock(&self.active).get(&worker).copied()
    }

    /// The slowest watermark of the workers whose partitions hold one:
    /// where a worker whose partitions are all idle moves its own to, so
    /// that it does not hold the others back.
    pub fn slowest_active(&self) -> Option<i64> {
        lock(&self.active).values().min().copied()
    }

    /// The slowest watermark of all `workers` workers of the run, when
    /// each has one published (none idle, finished or not yet started).
    pub fn slowest_of_all(&self, workers: usize) -> Option<i64> {
        let active = lock(&self.active);
        (active.len() == workers)
            .then(|| active.values().min().copied())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_slowest_of_all_needs_every_worker_and_idle_ones_are_left_out() {
        let watermarks = WorkerWatermarks::default();
        watermarks.publish(0, Some(50));
        assert_eq!(watermarks.slowest_of_all(2), None);
        watermarks.publish(1, Some(20));
        assert_eq!(watermarks.slowest_of_all(2), Some(20));
        assert_eq!(watermarks.slowest_active(), Some(20));
        // Worker 1 turns idle: the others no longer wait for it.
        watermarks.publish(1, None);
        assert_eq!(watermarks.slowest_of_all(2), None);
        assert_eq!(watermarks.slowest_active(), Some(50));
        assert_eq!(watermarks.of(1), None);
        assert_eq!(watermarks.of(0), Some(50));
    }

    #[test]
    fn a_waiting_source_is_woken_when_another_workers_watermark_moves() {
        let watermarks = WorkerWatermarks::default();
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = woken.clone();
        let wake = Waker(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        watermarks.publish(1, Some(10));
        watermarks.wait_for_alignment(0, wake.clone());
        // Its own move does not wake it, nor a publication that moves nothing.
        watermarks.publish(0, Some(100));
        watermarks.publish(1, Some(10));
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        watermarks.publish(1, Some(30));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // Woken once per wait.
        watermarks.publish(1, Some(40));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }
}
