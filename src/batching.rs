//! Batching policies: when accumulated rows are handed to the model and the
//! sinks.
//!
//! Micro-batching (small batches, short deadline) and bulk batching (large
//! batches) are two sets of limits over the same batcher, feeding the same
//! inference code; `adaptive` picks bulk while a source is behind its end
//! (a backfill) and micro once every source has caught up. Batch boundaries
//! never change a row's values, only when it leaves. A dataflow without a
//! model has nothing to batch for: its rows pass through as they come.
//!
//! Unless the spec fixes `bulk.max_rows`, the bulk batch size is tuned as
//! the run goes ([`SizeTuner`]) by the worker's pace: the wall time per row
//! between full batches, which counts the model (whose time per row
//! depends on how much of a batch and its intermediate tensors stay in
//! cache: the model, the machine, how many workers share its caches) and
//! everything a batch costs downstream (a Parquet write, a message),
//! so the size is measured rather than guessed.

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
    /// Tunes the bulk batch size, unless the spec fixed it.
    tuner: Option<SizeTuner>,
    /// The size whose pace is being measured, since when, and the rows
    /// sent at it since then.
    pace: Option<(usize, Instant, usize)>,
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
            tuner: plan.tuned_bulk.then(|| SizeTuner::new(plan.bulk.max_rows)),
            pace: None,
        }
    }

    /// Measures the worker's pace at the tuned size: called as a full
    /// batch of `size` rows leaves. A measurement spans at least
    /// [`PACE_ROWS`] rows, so that it covers several rounds of the
    /// worker's operators whatever the size.
    fn pace(&mut self, size: usize) {
        let Some(tuner) = &mut self.tuner else {
            return;
        };
        if size != tuner.size() {
            return;
        }
        let now = Instant::now();
        match &mut self.pace {
            Some((paced, since, rows)) if *paced == size => {
                *rows += size;
                if *rows >= PACE_ROWS {
                    let per_row = now.duration_since(*since).as_secs_f64() / *rows as f64;
                    tuner.observe(size, per_row);
                    self.pace = Some((tuner.size(), now, 0));
                }
            }
            _ => self.pace = Some((size, now, 0)),
        }
    }

    /// The limits in force: `behind` says whether any source is still
    /// behind its end (only `adaptive` looks at it).
    pub fn limits(&self, behind: bool) -> BatchLimits {
        match (self.plan.policy, behind) {
            (Policy::Micro, _) | (Policy::Adaptive, false) => self.plan.micro,
            (Policy::Bulk, _) | (Policy::Adaptive, true) => BatchLimits {
                max_rows: self
                    .tuner
                    .as_ref()
                    .map_or(self.plan.bulk.max_rows, SizeTuner::size),
                ..self.plan.bulk
            },
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
            if limits == self.limits(true) {
                // A bulk batch: the tuner's.
                self.pace(limits.max_rows);
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

/// The smallest bulk batch size tried.
const SMALLEST_TUNED: usize = 512;

/// Rows one measurement of the worker's pace spans, at least.
const PACE_ROWS: usize = 16384;

/// Measurements of a size before it is judged.
const SAMPLES: usize = 3;

/// Measurements between looks at the sizes beside the chosen one.
const RECHECK_EVERY: usize = 64;

/// Chooses the bulk batch size with the least wall time per row, among
/// powers of two from 512 rows to the largest allowed: each is measured
/// a few times, the fastest is kept, and from time to time the sizes
/// beside it are measured again, so the choice follows the load.
#[derive(Debug)]
pub struct SizeTuner {
    /// The sizes tried, smallest first.
    sizes: Vec<usize>,
    /// Per size, seconds per row of its recent full batches.
    samples: Vec<Vec<f64>>,
    /// The size in use, as an index into `sizes`.
    current: usize,
    /// Sizes still to measure before choosing, next last.
    to_measure: Vec<usize>,
    /// Full batches since the choice was last made.
    since_choice: usize,
    /// Whether the first sweep over the sizes is over.
    swept: bool,
}

impl SizeTuner {
    /// A tuner of sizes up to `largest` rows.
    pub fn new(largest: usize) -> Self {
        let mut sizes: Vec<usize> =
            std::iter::successors(Some(SMALLEST_TUNED), |size| size.checked_mul(2))
                .take_while(|size| *size < largest)
                .collect();
        sizes.push(largest);
        let count = sizes.len();
        SizeTuner {
            sizes,
            samples: vec![Vec::new(); count],
            // Measured from the largest down: what an untuned run used.
            current: count - 1,
            to_measure: (0..count).collect(),
            since_choice: 0,
            swept: false,
        }
    }

    /// The batch size to use now.
    pub fn size(&self) -> usize {
        self.sizes[self.current]
    }

    /// Records that at batches of `size` rows the worker took
    /// `seconds_per_row` a row. Only the size in use counts.
    pub fn observe(&mut self, size: usize, seconds_per_row: f64) {
        if size != self.size() {
            return;
        }
        let samples = &mut self.samples[self.current];
        samples.push(seconds_per_row);
        if samples.len() < SAMPLES {
            return;
        }
        if self.to_measure.last() == Some(&self.current) {
            self.to_measure.pop();
            if !self.swept {
                self.skip_smaller_if_slower();
            }
        }
        if let Some(next) = self.to_measure.last() {
            self.current = *next;
            self.samples[self.current].clear();
            return;
        }
        self.since_choice += 1;
        if self.since_choice == 1 {
            self.swept = true;
            self.current = self.fastest();
        } else if self.since_choice >= RECHECK_EVERY {
            // Measure the chosen size and its neighbours again.
            let chosen = self.current;
            self.to_measure = [chosen + 1, chosen.wrapping_sub(1), chosen]
                .into_iter()
                .filter(|index| *index < self.sizes.len())
                .collect();
            self.since_choice = 0;
            self.current = *self.to_measure.last().expect("the chosen size");
            self.samples[self.current].clear();
        } else {
            // Keep the latest samples only.
            let samples = &mut self.samples[self.current];
            samples.remove(0);
        }
    }

    /// Once the size just measured in the first sweep is slower than a
    /// larger one, leaves the smaller sizes unmeasured: time per row falls as batches grow until
    /// they outgrow the caches, and rises below that, so sizes smaller
    /// than a slower one are slower still. Each smaller size measured
    /// costs a run many small batches (a sweep down to 512 rows spends
    /// three measurements at each of six sizes).
    fn skip_smaller_if_slower(&mut self) {
        let Some(time) = self.median(self.current) else {
            return;
        };
        let slower_than_a_larger = (self.current + 1..self.sizes.len())
            .filter_map(|index| self.median(index))
            .any(|larger| larger < time);
        if slower_than_a_larger {
            let current = self.current;
            self.to_measure.retain(|index| *index > current);
        }
    }

    /// The median time per row measured at the size `index`.
    fn median(&self, index: usize) -> Option<f64> {
        let mut sorted = self.samples[index].clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied()
    }

    /// The measured size with the least median time per row.
    fn fastest(&self) -> usize {
        (0..self.sizes.len())
            .filter_map(|index| self.median(index).map(|time| (index, time)))
            .min_by(|(_, a), (_, b)| a.total_cmp(b))
            .map_or(self.current, |(index, _)| index)
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
            tuned_bulk: false,
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

    /// A model whose time per row is least at 2048 rows: the tuner settles
    /// there, having started at the largest size, and measures no size
    /// below the first one slower than a larger one (1024).
    #[test]
    fn the_tuner_settles_on_the_size_with_the_least_time_per_row() {
        let per_row = |rows: usize| {
            let distance = (rows as f64 / 2048.0).log2().abs();
            1e-6 * (1.0 + distance)
        };
        let mut tuner = SizeTuner::new(16384);
        assert_eq!(tuner.size(), 16384);
        let mut sizes_used = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let rows = tuner.size();
            sizes_used.insert(rows);
            tuner.observe(rows, per_row(rows));
        }
        assert_eq!(tuner.size(), 2048);
        assert_eq!(
            sizes_used.into_iter().collect::<Vec<_>>(),
            [1024, 2048, 4096, 8192, 16384]
        );
        // Sizes not in use do not count.
        let mut tuner = SizeTuner::new(16384);
        for _ in 0..100 {
            tuner.observe(100, 1.0);
        }
        assert_eq!(tuner.size(), 16384);
    }

    /// When the machine's load moves the best size, the periodic look at
    /// the neighbours follows it.
    #[test]
    fn the_tuner_follows_a_change_in_the_best_size() {
        let cost = |best: f64| move |rows: usize| 1e-6 * (1.0 + (rows as f64 / best).log2().abs());
        let mut tuner = SizeTuner::new(16384);
        assert_eq!(most_used_size(&mut tuner, cost(8192.0), 100), 8192);
        assert_eq!(most_used_size(&mut tuner, cost(2048.0), 3000), 2048);
    }

    /// Runs `tuner` for `steps` batches at `cost` per row; the size used
    /// most in the last fifth of them (the rest went to settling, and it
    /// still looks at the sizes beside its choice now and then).
    fn most_used_size(tuner: &mut SizeTuner, cost: impl Fn(usize) -> f64, steps: usize) -> usize {
        let mut uses = std::collections::BTreeMap::new();
        for step in 0..steps {
            let rows = tuner.size();
            if step >= steps - steps / 5 {
                *uses.entry(rows).or_insert(0) += 1;
            }
            tuner.observe(rows, cost(rows));
        }
        uses.into_iter()
            .max_by_key(|(_, count)| *count)
            .map_or(0, |(rows, _)| rows)
    }

    /// A fixed size is used as given.
    #[test]
    fn a_fixed_bulk_size_is_not_tuned() {
        let mut batcher = Batcher::new(plan(Policy::Bulk), false);
        for _ in 0..100 {
            batcher.extend(rows(4), Instant::now());
            let batch = batcher.next_batch(true, false, Instant::now());
            assert_eq!(batch.map(|batch| batch.len()), Some(4));
        }
        assert_eq!(batcher.limits(true).max_rows, 4);
        let mut tuned = plan(Policy::Bulk);
        tuned.tuned_bulk = true;
        tuned.bulk.max_rows = 16384;
        assert_eq!(Batcher::new(tuned, false).limits(true).max_rows, 16384);
    }
}
