//! Batching policies: when accumulated rows are handed to the model and the
//! sinks.
//!
//! Micro-batching (small batches, short deadline) and bulk batching (large
//! batches) are two sets of limits over the same batcher, feeding the same
//! inference code; `adaptive` picks bulk while a source is behind its end
//! (a backfill) and micro once every source has caught up. Batch boundaries
//! never change a row's values, only when it leaves. A dataflow without a
//! model has nothing to batch for: its rows pass through as they come.

use crate::batch::Batch;
use crate::plan::{BatchLimits, BatchingPlan, Policy};
use std::time::{Duration, Instant};

/// The most rows a pending batch makes room for at once (a batch size set
/// far larger grows as rows come, rather than taking its memory up front).
const RESERVED_ROWS_AT_MOST: usize = 1 << 16;

/// Rows waiting to be scored, and the policy that decides when they go.
#[derive(Debug)]
pub struct Batcher {
    plan: BatchingPlan,
    pending: Batch,
    oldest: Option<Instant>,
    /// The batch size last in force, which a new pending batch makes room
    /// for.
    last_max_rows: usize,
    /// Whether rows go on as they come, whatever the policy: without a
    /// model there is nothing to batch for.
    passes_through: bool,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(plan: BatchingPlan, passes_through: bool) -> Self {
        Batcher {
            plan,
            pending: Batch::default(),
            oldest: None,
            last_max_rows: match plan.policy {
                Policy::Micro => plan.micro.max_rows,
                Policy::Bulk | Policy::Adaptive => plan.bulk.max_rows,
            },
            passes_through,
        }
    }

    /// The limits in force: `behind` says whether any source is still
    /// behind its end (only `adaptive` looks at it).
    pub fn limits(&self, behind: bool) -> BatchLimits {
        match (self.plan.policy, behind) {
            (Policy::Micro, _) | (Policy::Adaptive, false) => self.plan.micro,
            (Policy::Bulk, _) | (Policy::Adaptive, true) => self.plan.bulk,
        }
    }

    /// Adds rows to the pending batch.
    pub fn extend(&mut self, rows: Batch, now: Instant) {
        let before = self.pending.len();
        self.pending.append(rows);
        if self.passes_through {
            return;
        }
        if before == 0 && !self.pending.is_empty() {
            self.oldest = Some(now);
            // Room for the whole batch now: large batches grown by
            // doubling would be copied again and again, each time into
            // fresh memory the system must first clear.
            self.pending
                .reserve_rows(self.last_max_rows.min(RESERVED_ROWS_AT_MOST));
        }
    }

    /// The next batch to send, if one is due: a full batch, whatever is
    /// pending once the input has ended, or a batch whose oldest row has
    /// waited `max_delay`.
    pub fn next_batch(&mut self, behind: bool, input_ended: bool, now: Instant) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        if self.passes_through {
            return Some(std::mem::take(&mut self.pending));
        }
        let limits = self.limits(behind);
        self.last_max_rows = limits.max_rows;
        if self.pending.len() >= limits.max_rows {
            let mut rest = self.pending.split_off(limits.max_rows);
            rest.reserve_rows(limits.max_rows.min(RESERVED_ROWS_AT_MOST));
            let batch = std::mem::replace(&mut self.pending, rest);
            if self.pending.is_empty() {
                self.oldest = None;
            } else {
                self.oldest = Some(now);
            }
            return Some(batch);
        }
        let overdue = self
            .oldest
            .is_some_and(|oldest| now.duration_since(oldest) >= limits.max_delay);
        if input_ended || overdue {
            self.oldest = None;
            return Some(std::mem::take(&mut self.pending));
        }
        None
    }

    /// How long until the pending batch is overdue, if rows are pending.
    pub fn time_to_deadline(&self, behind: bool, now: Instant) -> Option<Duration> {
        let oldest = self.oldest?;
        Some(
            self.limits(behind)
                .max_delay
                .saturating_sub(now.duration_since(oldest)),
        )
    }

    /// Rows pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;

    fn plan(policy: Policy) -> BatchingPlan {
        BatchingPlan {
            policy,
            micro: BatchLimits {
                max_rows: 2,
                max_delay: Duration::from_millis(5),
            },
            bulk: BatchLimits {
                max_rows: 4,
                max_delay: Duration::from_secs(1),
            },
        }
    }

    fn rows(count: u64) -> Batch {
        let rows = (0..count)
            .map(|offset| Row {
                partition: 0,
                offset,
                time: 0,
                values: Vec::new(),
                warm_up: false,
            })
            .collect();
        Batch::from_rows(rows)
    }

    /// Without a model, rows leave at once and whole, however many and
    /// whatever the policy's limits.
    #[test]
    fn a_batcher_that_passes_through_holds_nothing_back() {
        let now = Instant::now();
        let mut batcher = Batcher::new(plan(Policy::Micro), true);
        batcher.extend(rows(5), now);
        batcher.extend(rows(3), now);
        assert_eq!(
            batcher.next_batch(false, false, now).map(|b| b.len()),
            Some(8)
        );
        assert!(batcher.is_empty());
        assert_eq!(batcher.next_batch(false, false, now), None);
        assert_eq!(batcher.time_to_deadline(false, now), None);
    }

    #[test]
    fn adaptive_uses_bulk_limits_while_behind_and_micro_after() {
        let now = Instant::now();
        let mut batcher = Batcher::new(plan(Policy::Adaptive), false);
        batcher.extend(rows(5), now);
        assert_eq!(
            batcher.next_batch(true, false, now).map(|b| b.len()),
            Some(4)
        );
        assert_eq!(batcher.next_batch(true, false, now), None);
        batcher.extend(rows(2), now);
        assert_eq!(
            batcher.next_batch(false, false, now).map(|b| b.len()),
            Some(2)
        );
        assert_eq!(
            batcher
                .next_batch(false, false, now + Duration::from_millis(6))
                .map(|b| b.len()),
            Some(1)
        );
    }

    #[test]
    fn the_end_of_input_flushes_whatever_is_pending() {
        let now = Instant::now();
        let mut batcher = Batcher::new(plan(Policy::Bulk), false);
        batcher.extend(rows(3), now);
        assert_eq!(batcher.next_batch(true, false, now), None);
        assert_eq!(
            batcher.next_batch(true, true, now).map(|b| b.len()),
            Some(3)
        );
        assert!(batcher.is_empty());
    }
}
