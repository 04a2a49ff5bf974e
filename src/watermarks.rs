//! The watermarks the workers of a process (and, through the gossip
//! dataflow, of a cluster) publish to each other, and the sources that
//! wait for slower ones.
//!
//! A worker publishes the watermark of its partitions that hold it back,
//! or none while they are all idle or finished. A worker whose partitions
//! are all idle (or that has none, or has read them all and still cuts
//! checkpoints) follows the slowest active one; a partition too far ahead
//! of the slowest of all (partition skew) waits. Both are woken as soon as
//! the watermark they wait on moves rather than on a timer: a follower's
//! time is part of the frontier every event-time stage waits for, so a
//! follower that looked only every so often would hold every row of those
//! stages back until it did.
//!
//! Reading in step is what bounds the rows that event-time stages, joins
//! and labels hold until the watermark passes them; where they hold few
//! (every partition of a file backfill readable at once, features keyed
//! by the source's key) it only costs: a worker slowed for a moment holds
//! every other one back. So partitions are read in step only while the
//! process holds more rows for the watermark than its budget
//! (`[time] max_buffered_rows` per worker); below it they read freely.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// Per worker that follows the slowest active watermark, how to wake
    /// its source once that moves.
    following: Mutex<BTreeMap<usize, Waker>>,
    /// Rows the process's operators hold until the watermark passes them.
    held_rows: AtomicI64,
    /// How many held rows the process allows before its partitions are
    /// read in step.
    held_rows_budget: i64,
}

/// What one operator last added to the process's held rows, so that it
/// reports only the change.
#[derive(Debug, Default)]
pub struct HeldRows {
    reported: i64,
}

impl HeldRows {
    /// Reports that the operator now holds `rows` rows for the watermark;
    /// the most the process held at once goes to `most_held`.
    pub fn report(&mut self, watermarks: &WorkerWatermarks, rows: usize, most_held: &AtomicU64) {
        let rows = i64::try_from(rows).unwrap_or(i64::MAX);
        if rows != self.reported {
            let change = rows - self.reported;
            let held = watermarks.held_rows.fetch_add(change, Ordering::Relaxed) + change;
            most_held.fetch_max(held.max(0) as u64, Ordering::Relaxed);
            self.reported = rows;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WorkerWatermarks {
    /// Watermarks of a process whose operators may hold `budget` rows for
    /// the watermark before its partitions are read in step.
    pub fn with_held_rows_budget(budget: u64) -> Self {
        WorkerWatermarks {
            held_rows_budget: i64::try_from(budget).unwrap_or(i64::MAX),
            ..WorkerWatermarks::default()
        }
    }

    /// Whether the process holds more rows for the watermark than its
    /// budget: only then are partitions read in step.
    pub fn over_held_rows_budget(&self) -> bool {
        self.held_rows.load(Ordering::Relaxed) > self.held_rows_budget
    }

    /// Rows the process holds for the watermark now.
    pub fn held_rows(&self) -> u64 {
        self.held_rows.load(Ordering::Relaxed).max(0) as u64
    }

    /// Publishes worker `worker`'s watermark: `None` when none of its
    /// partitions holds it back. Sources waiting for slower partitions are
    /// woken when it moves, and followers when the slowest active one
    /// does.
    pub fn publish(&self, worker: usize, watermark: Option<i64>) {
        let (moved, slowest_moved) = {
            let mut active = lock(&self.active);
            let slowest_before = active.values().min().copied();
            let previous = match watermark {
                Some(watermark) => active.insert(worker, watermark),
                None => active.remove(&worker),
            };
            let moved = previous != watermark;
            (
                moved,
                moved && active.values().min().copied() != slowest_before,
            )
        };
        if moved {
            wake_others(&self.aligning, worker);
        }
        if slowest_moved {
            wake_others(&self.following, worker);
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

    /// Registers that worker `worker`'s source follows the slowest active
    /// watermark (see [`Self::slowest_active`]), and how to wake it when
    /// that moves. Registered before reading it, so that no move between
    /// the read and the registration goes unseen.
    pub fn wait_to_follow(&self, worker: usize, wake: Waker) {
        lock(&self.following).insert(worker, wake);
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

/// Wakes the sources registered in `waiting`, other than `worker`'s, each
/// once per registration: without this they would look again only on a
/// timer, and a worker ahead would sit idle while the others catch up, or
/// a follower would hold back the stages that wait for its time.
fn wake_others(waiting: &Mutex<BTreeMap<usize, Waker>>, worker: usize) {
    let woken: Vec<Waker> = {
        let mut waiting = lock(waiting);
        if waiting.keys().all(|waiter| *waiter == worker) {
            return;
        }
        let own = waiting.remove(&worker);
        let others = std::mem::take(&mut *waiting).into_values().collect();
        if let Some(own) = own {
            waiting.insert(worker, own);
        }
        others
    };
    for wake in woken {
        (wake.0)();
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

    /// A waker and how many times it was called.
    fn counting_waker() -> (Waker, Arc<AtomicUsize>) {
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = woken.clone();
        let wake = Waker(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        (wake, woken)
    }

    #[test]
    fn a_waiting_source_is_woken_when_another_workers_watermark_moves() {
        let watermarks = WorkerWatermarks::default();
        let (wake, woken) = counting_waker();
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

    #[test]
    fn a_follower_is_woken_when_the_slowest_active_watermark_moves() {
        let watermarks = WorkerWatermarks::default();
        let (wake, woken) = counting_waker();
        watermarks.publish(1, Some(10));
        watermarks.publish(2, Some(50));
        watermarks.wait_to_follow(0, wake.clone());
        // A move of a worker ahead of the slowest leaves the slowest where
        // it was: nothing to follow yet.
        watermarks.publish(2, Some(60));
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        watermarks.publish(1, Some(20));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // Woken once per wait; its own publications do not wake it.
        watermarks.publish(1, Some(30));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        watermarks.wait_to_follow(0, wake.clone());
        watermarks.publish(0, Some(5));
        watermarks.publish(0, None);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // The slowest turning idle moves the slowest active one too.
        watermarks.publish(1, None);
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        assert_eq!(watermarks.slowest_active(), Some(60));
    }

    #[test]
    fn partitions_read_in_step_only_over_the_held_rows_budget() {
        let watermarks = WorkerWatermarks::with_held_rows_budget(100);
        let (mut features, mut join) = (HeldRows::default(), HeldRows::default());
        let most = AtomicU64::new(0);
        features.report(&watermarks, 60, &most);
        join.report(&watermarks, 40, &most);
        assert_eq!(watermarks.held_rows(), 100);
        assert!(!watermarks.over_held_rows_budget());
        join.report(&watermarks, 41, &most);
        assert!(watermarks.over_held_rows_budget());
        // Released rows count down again.
        features.report(&watermarks, 0, &most);
        assert_eq!(watermarks.held_rows(), 41);
        assert!(!watermarks.over_held_rows_budget());
        assert_eq!(most.load(Ordering::SeqCst), 101);
    }
}
