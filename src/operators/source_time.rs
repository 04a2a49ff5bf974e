//! Where a source's dataflow time goes after each round, and when it runs
//! again: the decisions of the source operator's shell
//! ([`super::source`]), apart from timely.
//!
//! While reading, a source moves its time up to its partitions' watermark
//! or, when every partition is idle, to the slowest of the other workers
//! still reading, so that one silent worker does not stall the graph. A
//! checkpoint its time crosses is cut on the way; in a cluster agreeing on
//! a cut, its time stays where it is for a moment. Once it has read
//! everything, a source without checkpoints is done; with them it follows
//! the sources still reading, cutting each checkpoint, until it has cut
//! the last one.

use crate::checkpoint::{Coordinator, Cut, FINAL};
use std::time::Duration;

/// How soon a source whose partitions are all idle looks again at the
/// other workers' watermarks at the latest: it is woken as soon as the
/// slowest of them moves (see [`crate::watermarks`]), and this timer only
/// covers a wake it might miss.
pub const IDLE_FOLLOW: Duration = Duration::from_millis(50);

/// How soon a source held by a checkpoint looks again.
pub const CHECKPOINT_WAIT: Duration = Duration::from_millis(5);

/// What the source's shell does after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The time to move to (at least the current one); `None`: the source
    /// is done and drops its capability.
    pub to: Option<i64>,
    /// The checkpoint to cut first, with the source's state as it is.
    pub cut: Option<Cut>,
    /// When to run again (zero: at once).
    pub wait: Duration,
}

/// The step of a source at time `at` after a round that read, with its
/// partitions at `watermark` (`None`: all idle), the sources still
/// reading at `follow` (asked only when all are idle), the round asking
/// to run again after `again` (`None`: at once) and partitions turning
/// idle after `idle_timeout`.
pub fn while_reading(
    checkpoints: Option<&Coordinator>,
    (worker, at): (usize, i64),
    watermark: Option<i64>,
    follow: impl FnOnce() -> Option<i64>,
    (again, idle_timeout): (Option<Duration>, Option<Duration>),
) -> Step {
    let mut again = again;
    if watermark.is_none() {
        // Every partition here is idle: look again soon to keep following
        // the other workers.
        again = Some(soonest(again, IDLE_FOLLOW));
    }
    let mut step = Step {
        to: Some(at),
        cut: None,
        wait: Duration::ZERO,
    };
    if let Some(target) = watermark.or_else(follow)
        && target > at
    {
        step.to = Some(target);
        // Everything emitted so far is before the new time: a checkpoint
        // it crosses is cut now.
        if let Some(coordinator) = checkpoints {
            let moved = coordinator.source_moves(worker, at, target);
            step.cut = moved.cut;
            step.to = Some(moved.to);
            if moved.to < target {
                // Held while a cluster agrees on a cut.
                again = Some(soonest(again, CHECKPOINT_WAIT));
            }
        }
    }
    step.wait = match again {
        Some(Duration::ZERO) | None => Duration::ZERO,
        // A partition about to turn idle must be looked at again when its
        // timeout passes, data or not.
        Some(wait) => idle_timeout.map_or(wait, |timeout| wait.min(timeout / 4)),
    };
    step
}

/// The step of a source at time `at` that has read everything (or
/// stopped), the sources still reading being at `follow`; `checkpoints`
/// is `None` in a run without them or one that is stopping on an error.
pub fn when_finished(
    checkpoints: Option<&Coordinator>,
    (worker, at): (usize, i64),
    follow: Option<i64>,
) -> Step {
    let done = |cut| Step {
        to: None,
        cut,
        wait: Duration::ZERO,
    };
    let Some(coordinator) = checkpoints else {
        return done(None);
    };
    let moved = coordinator.finished_source_moves(worker, at, follow);
    if moved.cut.is_some_and(|cut| cut.time == FINAL) {
        return done(moved.cut);
    }
    Step {
        to: Some(moved.to.max(at)),
        cut: moved.cut,
        // Soon while a cut waits for it, else as often as an idle worker
        // follows the others.
        wait: match coordinator.in_progress() {
            Some(_) => CHECKPOINT_WAIT,
            None => IDLE_FOLLOW,
        },
    }
}

/// The sooner of a wait asked for (`None`: none) and `wait`.
fn soonest(asked: Option<Duration>, wait: Duration) -> Duration {
    asked.map_or(wait, |asked| asked.min(wait))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{CheckpointStore, LocalStorage};
    use std::sync::Arc;

    /// A coordinator of one source that starts a checkpoint whenever none
    /// is in progress.
    fn coordinator(directory: &tempfile::TempDir) -> Arc<Coordinator> {
        let storage = LocalStorage::open(directory.path()).unwrap();
        let store = CheckpointStore::new(Arc::new(storage), 3);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let coordinator = Coordinator::start(store, Duration::ZERO, (1, 1), 0, None, metrics);
        coordinator.source_starts(0, i64::MIN);
        coordinator
    }

    #[test]
    fn a_source_moves_to_its_watermark_or_follows_the_others_when_idle() {
        let nobody = || None;
        let reading = while_reading(None, (0, 10), Some(25), nobody, (None, None));
        assert_eq!(
            reading,
            Step {
                to: Some(25),
                cut: None,
                wait: Duration::ZERO
            }
        );
        // Never back.
        let behind = while_reading(None, (0, 10), Some(5), nobody, (None, None));
        assert_eq!(behind.to, Some(10));
        // All idle: the slowest worker still reading leads, and the
        // source looks again soon, or sooner for a partition's timeout.
        let idle = while_reading(None, (0, 10), None, || Some(40), (None, None));
        assert_eq!((idle.to, idle.wait), (Some(40), IDLE_FOLLOW));
        let timeout = Some(Duration::from_millis(100));
        let idle = while_reading(None, (0, 10), None, nobody, (None, timeout));
        assert_eq!((idle.to, idle.wait), (Some(10), Duration::from_millis(25)));
        // Finished, without checkpoints: done.
        assert_eq!(when_finished(None, (0, 40), Some(50)).to, None);
    }

    #[test]
    fn a_source_cuts_the_checkpoint_its_time_crosses_and_waits_for_the_last() {
        let directory = tempfile::tempdir().unwrap();
        let coordinator = coordinator(&directory);
        let nobody = || None;
        // The first move starts a checkpoint above the source's time...
        let first = while_reading(Some(&coordinator), (0, 0), Some(10), nobody, (None, None));
        assert_eq!((first.to, first.cut), (Some(10), None));
        let cut = coordinator.in_progress().expect("a checkpoint started");
        assert_eq!(cut.time, 11);
        // ... which the next move crosses, and cuts.
        let second = while_reading(Some(&coordinator), (0, 10), Some(20), nobody, (None, None));
        assert_eq!((second.to, second.cut), (Some(20), Some(cut)));
        // Finished while that checkpoint is in progress: the source keeps
        // its time and looks again soon.
        let finished = when_finished(Some(&coordinator), (0, 20), None);
        assert_eq!(
            finished,
            Step {
                to: Some(20),
                cut: None,
                wait: CHECKPOINT_WAIT
            }
        );
    }
}
