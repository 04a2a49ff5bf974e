//! Event-time order: per-partition lateness, and the buffer that releases
//! rows in (event time, partition, offset) order once the watermark passes.
//!
//! Lateness is decided per partition, from that partition's records alone,
//! so it does not depend on how partitions interleave at run time: a record
//! is late when its event time is more than the out-of-orderness bound
//! behind the newest event time its partition has shown before it.

use crate::row::Row;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
