//! Label records by key, answering "which label of key `k` arrived within
//! `[t, t + horizon]`".
//!
//! Each key keeps its records in (time, partition, offset) order. A row at
//! time `t` takes the value of the greatest record in its horizon. Once
//! every row still to come is at or after a time (the labels are settled
//! up to it), records before that time are in no row's horizon and are
//! dropped, oldest first, through a queue ordered by time.

use super::VersionOrder;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use tideflow_connectors::Value;

/// One label record: its place in the order and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    /// Where the record sits among its key's records.
    pub order: VersionOrder,
    /// The label's value.
    pub value: Value,
}

/// The label records of every key that a row still to come may take.
#[derive(Clone, Debug, Default)]
pub struct LabelTable {
    keys: FxHashMap<Value, Vec<LabelRecord>>,
    /// No row comes before this time any more.
    settled: Option<i64>,
    /// Every key with a record, by that record's time.
    expiring: BinaryHeap<Reverse<(i64, Value)>>,
}

impl LabelTable {
    /// Adds a label record of `key`.
    pub fn insert(&mut self, key: Value, order: VersionOrder, value: Value) {
        let records = self.keys.entry(key.clone()).or_default();
        let at = records.partition_point(|record| record.order <= order);
        if at > 0 && records[at - 1].order == order {
            records[at - 1].value = value;
            return;
        }
        records.insert(at, LabelRecord { order, value });
        self.expiring.push(Reverse((order.time, key)));
    }

    /// The label of a row of `key` at `time`: the value of the greatest
    /// record with time in `[time, time + horizon]`, if any.
    pub fn lookup(&self, key: &Value, time: i64, horizon: i64) -> Option<&Value> {
        let records = self.keys.get(key)?;
        let end = time.saturating_add(horizon);
        let at = records.partition_point(|record| record.order.time <= end);
        let record = records.get(at.checked_sub(1)?)?;
        (record.order.time >= time).then_some(&record.value)
    }

    /// Records that no row comes before `time` any more, and drops the
    /// records before it.
    pub fn settle(&mut self, time: i64) {
        // Entries added since the last call may be before the time
        // already settled: look at the queue whatever the time.
        let time = self.settled.map_or(time, |settled| settled.max(time));
        self.settled = Some(time);
        while let Some(Reverse((at, _))) = self.expiring.peek()
            && *at < time
        {
            let Some(Reverse((_, key))) = self.expiring.pop() else {
                break;
            };
            if let Some(records) = self.keys.get_mut(&key) {
                let before = records.partition_point(|record| record.order.time < time);
                records.drain(..before);
                if records.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// How many records are held over all keys.
    pub fn record_count(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Every key with its records, in key order.
    pub fn entries(&self) -> Vec<(&Value, &[LabelRecord])> {
        super::sorted_entries(&self.keys)
    }

    /// A table holding `entries` (from [`LabelTable::entries`] of one or
    /// more tables), settled up to `settled`.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (Value, Vec<LabelRecord>)>,
        settled: Option<i64>,
    ) -> Self {
        let mut table = LabelTable::default();
        for (key, records) in entries {
            for record in records {
                table.insert(key.clone(), record.order, record.value);
            }
        }
        if let Some(time) = settled {
            table.settle(time);
        }
        table
    }

    /// The time up to which the labels are settled.
    pub fn settled(&self) -> Option<i64> {
        self.settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(time: i64, partition: u32, offset: u64) -> VersionOrder {
        VersionOrder {
            time,
            partition,
            offset,
        }
    }

    #[test]
    fn a_row_takes_the_greatest_label_within_its_horizon_bounds_included() {
        let mut labels = LabelTable::default();
        let key = || Value::Str("tx1".into());
        labels.insert(key(), order(100, 0, 1), Value::I64(1));
        labels.insert(key(), order(130, 0, 2), Value::I64(2));
        labels.insert(key(), order(130, 1, 0), Value::I64(3));
        labels.insert(key(), order(200, 0, 3), Value::I64(4));
        let label = |time| labels.lookup(&key(), time, 30).cloned();
        assert_eq!(label(100), Some(Value::I64(3)), "both bounds count");
        assert_eq!(label(101), Some(Value::I64(3)));
        assert_eq!(label(131), None, "a label before the row does not count");
        assert_eq!(label(69), None, "nor one past the horizon");
        assert_eq!(label(70), Some(Value::I64(1)));
        labels.settle(131);
        assert_eq!(labels.record_count(), 1);
        assert_eq!(labels.lookup(&key(), 170, 30), Some(&Value::I64(4)));
    }
}
