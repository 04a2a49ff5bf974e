//! Event-time order: per-partition lateness, and the buffers that release
//! rows in (event time, partition, offset) order once the watermark passes:
//! [`HeldBatches`] for the batches of a feature stage, [`ReorderBuffer`]
//! for rows kept one by one (labels, join inputs).
//!
//! Lateness is decided per partition, from that partition's records alone,
//! so it does not depend on how partitions interleave at run time: a record
//! is late when its event time is more than the out-of-orderness bound
//! behind the newest event time its partition has shown before it.

use crate::batch::Batch;
use crate::row::Row;
use crate::schema::ColumnType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The event-time clock of one source partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    newest: Option<i64>,
}

impl PartitionClock {
    /// Whether a record at `time` is late, given the records seen so far.
    pub fn is_late(&self, time: i64, bound_ms: i64) -> bool {
        self.newest
            .is_some_and(|newest| time < newest.saturating_sub(bound_ms))
    }

    /// Records that a (non-late) record at `time` was seen.
    pub fn observe(&mut self, time: i64) {
        self.newest = Some(self.newest.map_or(time, |newest| newest.max(time)));
    }

    /// Whether any record has been seen.
    pub fn has_seen(&self) -> bool {
        self.newest.is_some()
    }

    /// The partition's watermark: no non-late record from it can be older.
    pub fn watermark(&self, bound_ms: i64) -> i64 {
        self.newest
            .map_or(i64::MIN, |newest| newest.saturating_sub(bound_ms))
    }
}

/// Rows held until the watermark passes them, released in canonical order.
///
/// Each row keeps the dataflow time it arrived at, so that the operator
/// holding the buffer can hold a capability no later than its oldest row:
/// downstream, a frontier past a time then means every row that arrived
/// before it has been written (which offset commits rely on).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReorderBuffer {
    rows: BTreeMap<(i64, u32, u64), (i64, Row)>,
    arrivals: BTreeMap<i64, usize>,
}

impl ReorderBuffer {
    /// Holds a row that arrived at dataflow time `arrival`.
    pub fn push(&mut self, row: Row, arrival: i64) {
        *self.arrivals.entry(arrival).or_default() += 1;
        self.rows.insert(row.canonical_order(), (arrival, row));
    }

    /// The earliest dataflow time a held row arrived at.
    pub fn oldest_arrival(&self) -> Option<i64> {
        self.arrivals.keys().next().copied()
    }

    /// Holds a row until the watermark passes `ready` rather than its
    /// event time (a label waits for its horizon).
    pub fn push_until(&mut self, row: Row, ready: i64, arrival: i64) {
        *self.arrivals.entry(arrival).or_default() += 1;
        self.rows
            .insert((ready, row.partition, row.offset), (arrival, row));
    }

    /// The least time a held row waits for (its event time, or what it
    /// was pushed until).
    pub fn oldest_ready(&self) -> Option<i64> {
        self.rows.keys().next().map(|(ready, _, _)| *ready)
    }

    /// Removes and returns, with the dataflow time each arrived at, every
    /// row waiting for a time before `watermark` (all of them when
    /// `watermark` is `None`), in the order of those times.
    pub fn release_with_arrivals(&mut self, watermark: Option<i64>) -> Vec<(i64, Row)> {
        let kept = match watermark {
            None => BTreeMap::new(),
            Some(watermark) => self.rows.split_off(&(watermark, 0, 0)),
        };
        let released = std::mem::replace(&mut self.rows, kept);
        for (arrival, _) in released.values() {
            if let Some(count) = self.arrivals.get_mut(arrival) {
                *count -= 1;
                if *count == 0 {
                    self.arrivals.remove(arrival);
                }
            }
        }
        released.into_values().collect()
    }

    /// Removes and returns, in canonical order, every row with event time
    /// before `watermark` (all of them when `watermark` is `None`, the end
    /// of input).
    pub fn release(&mut self, watermark: Option<i64>) -> Vec<Row> {
        let kept = match watermark {
            None => BTreeMap::new(),
            Some(watermark) => self.rows.split_off(&(watermark, 0, 0)),
        };
        let released = std::mem::replace(&mut self.rows, kept);
        released
            .into_values()
            .map(|(arrival, row)| {
                if let Some(count) = self.arrivals.get_mut(&arrival) {
                    *count -= 1;
                    if *count == 0 {
                        self.arrivals.remove(&arrival);
                    }
                }
                row
            })
            .collect()
    }

    /// Moves the arrival of every row held before `time` up to it: rows a
    /// checkpoint at `time` keeps are sent after it.
    pub fn retime_before(&mut self, time: i64) {
        let mut moved = 0;
        for (arrival, _) in self.rows.values_mut() {
            if *arrival < time {
                *arrival = time;
                moved += 1;
            }
        }
        self.arrivals.retain(|arrival, _| *arrival >= time);
        if moved > 0 {
            *self.arrivals.entry(time).or_default() += moved;
        }
    }

    /// The rows held, in canonical order (for a checkpoint).
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values().map(|(_, row)| row)
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Batches held until the watermark passes their rows, released merged
/// into one batch in canonical order.
///
/// The order of each batch's rows is sorted once as it comes (rows of a
/// partition arrive in offset order, mostly in event-time order too, so
/// it usually is already), and the batch waits as a run in that order; a
/// release takes the prefix of each run the watermark has passed and
/// merges those prefixes. Rows stay in their batch's columns throughout
/// and are copied once, into the batch released: none is held, or
/// copied, one by one.
///
/// Each run keeps the dataflow time its batch arrived at, as
/// [`ReorderBuffer`] does for each row.
#[derive(Debug, Default)]
pub struct HeldBatches {
    runs: Vec<Run>,
    /// The output columns' types, for batches whose rows hold their own
    /// values (those restored from a checkpoint).
    types: Vec<ColumnType>,
}

/// A batch in canonical order, the rows from position `next` in that
/// order on still held.
#[derive(Debug)]
struct Run {
    arrival: i64,
    batch: Batch,
    /// The batch's row indices in canonical order; `None` when its rows
    /// are in that order.
    order: Option<Vec<u32>>,
    next: usize,
}

impl Run {
    /// The index in the batch of the row at `position` in canonical order.
    fn index(&self, position: usize) -> usize {
        self.order
            .as_ref()
            .map_or(position, |order| order[position] as usize)
    }

    /// The position in canonical order of the first held row whose event
    /// time is not before `watermark`.
    fn end_before(&self, watermark: i64) -> usize {
        let rows = self.batch.rows();
        let (mut low, mut high) = (self.next, rows.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if rows[self.index(middle)].time < watermark {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The held rows from position `next` to `end`: their canonical order
    /// and batch index, with `place`, the run's.
    fn picks(
        &self,
        place: usize,
        end: usize,
    ) -> impl Iterator<Item = ((i64, u32, u64), usize, usize)> + '_ {
        (self.next..end).map(move |position| {
            let index = self.index(position);
            (self.batch.rows()[index].canonical_order(), place, index)
        })
    }
}

impl HeldBatches {
    /// An empty buffer of batches whose slots have these `types`.
    pub fn new(types: Vec<ColumnType>) -> Self {
        HeldBatches {
            runs: Vec::new(),
            types,
        }
    }

    /// Holds a batch that arrived at dataflow time `arrival`.
    pub fn push(&mut self, mut batch: Batch, arrival: i64) {
        if batch.is_empty() {
            return;
        }
        if batch.has_row_values() {
            batch = Batch::columns_of_rows(batch.into_rows(), &self.types);
        }
        self.runs.push(Run {
            arrival,
            order: batch.canonical_order(),
            batch,
            next: 0,
        });
    }

    /// The earliest dataflow time a held row arrived at.
    pub fn oldest_arrival(&self) -> Option<i64> {
        self.runs.iter().map(|run| run.arrival).min()
    }

    /// Removes and returns, in canonical order, every row with event time
    /// before `watermark` (all of them when `watermark` is `None`, the end
    /// of input).
    pub fn release(&mut self, watermark: Option<i64>) -> Batch {
        let mut picks = Vec::new();
        for (place, run) in self.runs.iter_mut().enumerate() {
            let end = match watermark {
                Some(watermark) => run.end_before(watermark),
                None => run.batch.len(),
            };
            picks.extend(run.picks(place, end));
            run.next = end;
        }
        let released = self.merge(picks);
        self.runs.retain(|run| run.next < run.batch.len());
        released
    }

    /// The rows `picks` names, in canonical order, as one batch. Each
    /// run's picks are in order already: the sort merges them.
    fn merge(&self, mut picks: Vec<((i64, u32, u64), usize, usize)>) -> Batch {
        picks.sort_by_key(|(order, _, _)| *order);
        let picks: Vec<(u32, u32)> = picks
            .into_iter()
            .map(|(_, run, index)| (run as u32, index as u32))
            .collect();
        let sources: Vec<&Batch> = self.runs.iter().map(|run| &run.batch).collect();
        Batch::gather(&sources, &picks)
    }

    /// Moves the arrival of every row held before `time` up to it: rows a
    /// checkpoint at `time` keeps are sent after it.
    pub fn retime_before(&mut self, time: i64) {
        for run in &mut self.runs {
            run.arrival = run.arrival.max(time);
        }
    }

    /// The rows held, in canonical order, each holding its values (for a
    /// checkpoint).
    pub fn rows(&self) -> Vec<Row> {
        let picks = self
            .runs
            .iter()
            .enumerate()
            .flat_map(|(place, run)| run.picks(place, run.batch.len()))
            .collect();
        self.merge(picks).into_rows()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|run| run.batch.len() - run.next).sum()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tideflow_connectors::Value;

    #[test]
    fn lateness_is_measured_from_the_partitions_newest_record() {
        let mut clock = PartitionClock::default();
        assert!(!clock.is_late(100, 10));
        clock.observe(100);
        assert!(!clock.is_late(90, 10));
        assert!(clock.is_late(89, 10));
        assert_eq!(clock.watermark(10), 90);
    }

    #[test]
    fn rows_leave_in_canonical_order_once_the_watermark_passes() {
        let mut buffer = ReorderBuffer::default();
        for (time, partition, offset) in [(5, 1, 0), (3, 0, 7), (5, 0, 2), (9, 0, 3)] {
            let row = Row {
                partition,
                offset,
                time,
                values: Vec::new(),
                warm_up: false,
            };
            buffer.push(row, time - 3);
        }
        assert_eq!(buffer.oldest_arrival(), Some(0));
        let released: Vec<_> = buffer
            .release(Some(6))
            .iter()
            .map(Row::canonical_order)
            .collect();
        assert_eq!(released, [(3, 0, 7), (5, 0, 2), (5, 1, 0)]);
        assert_eq!(buffer.len(), 1);
        assert_eq!(buffer.oldest_arrival(), Some(6));
        assert_eq!(buffer.release(None).len(), 1);
        assert_eq!(buffer.oldest_arrival(), None);
    }

    /// A row of partition `partition` at `offset` and `time`, its fields
    /// naming it.
    fn row(partition: u32, offset: u64, time: i64) -> Row {
        Row {
            partition,
            offset,
            time,
            values: vec![
                Value::Str(format!("p{partition}o{offset}").into()),
                Value::I64(time),
                Value::F64(offset as f64 / 2.0),
            ],
            warm_up: offset.is_multiple_of(5),
        }
    }

    fn types() -> Vec<ColumnType> {
        vec![ColumnType::Str, ColumnType::TimestampMs, ColumnType::F64]
    }

    proptest! {
        /// Batches held as runs leave exactly as rows held one by one in
        /// a reorder buffer do: the same rows, in the same order, with the
        /// same values, at every watermark; and a checkpoint in between
        /// sees the same rows still held.
        #[test]
        fn held_batches_release_what_a_reorder_buffer_of_rows_releases(
            batches in proptest::collection::vec(
                (0u32..3, 1usize..40, 0i64..50, 0i64..30), 1..12),
            watermarks in proptest::collection::vec(0i64..120, 1..8),
        ) {
            let mut held = HeldBatches::new(types());
            let mut reference = ReorderBuffer::default();
            let mut offsets = [0u64; 3];
            let mut watermarks = watermarks.into_iter();
            for (arrival, (partition, length, start, spread)) in batches.into_iter().enumerate() {
                let arrival = arrival as i64;
                let rows: Vec<Row> = (0..length)
                    .map(|index| {
                        let offset = offsets[partition as usize];
                        offsets[partition as usize] += 1;
                        // Event times wander around `start` within `spread`.
                        let time = start + (offset as i64 * 7919 + index as i64) % (spread + 1);
                        row(partition, offset, time)
                    })
                    .collect();
                for row in &rows {
                    reference.push(row.clone(), arrival);
                }
                // Half the batches hold their fields in columns, as
                // decoded; the others as rows restored from a checkpoint.
                let batch = if arrival % 2 == 0 {
                    Batch::columns_of_rows(rows, &types())
                } else {
                    Batch::from_rows(rows)
                };
                held.push(batch, arrival);
                prop_assert_eq!(held.oldest_arrival(), reference.oldest_arrival());
                let checkpointed: Vec<Row> = reference.rows().cloned().collect();
                prop_assert_eq!(held.rows(), checkpointed);
                if let Some(watermark) = watermarks.next() {
                    let released = held.release(Some(watermark));
                    prop_assert!(!released.has_row_values());
                    prop_assert_eq!(released.into_rows(), reference.release(Some(watermark)));
                    prop_assert_eq!(held.len(), reference.len());
                    prop_assert_eq!(held.oldest_arrival(), reference.oldest_arrival());
                }
            }
            prop_assert_eq!(held.release(None).into_rows(), reference.release(None));
            prop_assert!(held.is_empty());
        }
    }
}
