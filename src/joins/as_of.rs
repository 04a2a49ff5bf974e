//! A keyed table versioned by event time, answering "which version of key
//! `k` held at time `t`".
//!
//! Each key keeps its versions in (time, partition, offset) order; a
//! deletion is a version without columns. Once every lookup still to come
//! is at or after a time (the table is *settled* up to it), only the
//! newest version before that time can still be an answer, so the older
//! ones are dropped, and a key whose only version left is a deletion is
//! forgotten. A key is looked at again only when something was superseded
//! in it, through a queue ordered by time: settling costs what it drops.

use super::VersionOrder;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::Entry;
use tideflow_connectors::Value;

/// One version of a key: its place in the order and its columns (`None`:
/// the key is deleted from this version's time on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Where the version sits among the key's versions.
    pub order: VersionOrder,
    /// The joined columns, in the join's order; `None` for a deletion.
    pub columns: Option<Box<[Value]>>,
}

/// The versions of every key of a table, as far back as lookups still need.
#[derive(Clone, Debug, Default)]
pub struct AsOfTable {
    keys: FxHashMap<Value, Vec<Version>>,
    /// No lookup comes before this time any more.
    settled: Option<i64>,
    /// Keys holding a version that a newer one makes unreachable, by the
    /// time of that newer version (or of a deletion, which itself becomes
    /// unreachable).
    superseded: BinaryHeap<Reverse<(i64, Value)>>,
}

impl AsOfTable {
    /// Adds a version of `key` (a deletion when `columns` is `None`).
    pub fn insert(&mut self, key: Value, order: VersionOrder, columns: Option<Box<[Value]>>) {
        let is_deletion = columns.is_none();
        let version = Version { order, columns };
        let mut occupied = match self.keys.entry(key) {
            Entry::Occupied(occupied) => occupied,
            Entry::Vacant(vacant) => {
                if is_deletion {
                    let key = vacant.key().clone();
                    self.superseded.push(Reverse((order.time, key)));
                }
                vacant.insert(vec![version]);
                return;
            }
        };
        let versions = occupied.get_mut();
        let at = versions.partition_point(|version| version.order <= order);
        if at > 0 && versions[at - 1].order == order {
            // The same record again (a source re-read it): the same version.
            versions[at - 1] = version;
            return;
        }
        versions.insert(at, version);
        // A version becomes unreachable once the settled time passes the
        // version after it: this one, when it has an older neighbour; the
        // newer neighbour, when it has one; a deletion, itself.
        let newer = versions.get(at + 1).map(|next| next.order.time);
        if at > 0 || is_deletion {
            self.superseded
                .push(Reverse((order.time, occupied.key().clone())));
        }
        if let Some(newer) = newer {
            self.superseded
                .push(Reverse((newer, occupied.key().clone())));
        }
    }

    /// The columns of `key` as of `time`: those of its version with the
    /// greatest order among versions at or before `time`; `None` when it
    /// has none or that version is a deletion.
    pub fn lookup(&self, key: &Value, time: i64) -> Option<&[Value]> {
        let versions = self.keys.get(key)?;
        let at = versions.partition_point(|version| version.order.time <= time);
        versions.get(at.checked_sub(1)?)?.columns.as_deref()
    }

    /// Records that no lookup comes before `time` any more, and drops the
    /// versions that no lookup at or after it can reach.
    pub fn settle(&mut self, time: i64) {
        // Entries added since the last call may be before the time
        // already settled: look at the queue whatever the time.
        let time = self.settled.map_or(time, |settled| settled.max(time));
        self.settled = Some(time);
        while let Some(Reverse((at, _))) = self.superseded.peek()
            && *at < time
        {
            let Some(Reverse((_, key))) = self.superseded.pop() else {
                break;
            };
            self.compact(key, time);
        }
    }

    /// Keeps, of `key`'s versions before `time`, only the newest, and not
    /// even that one when it is a deletion.
    fn compact(&mut self, key: Value, time: i64) {
        let Some(versions) = self.keys.get_mut(&key) else {
            return;
        };
        let before = versions.partition_point(|version| version.order.time < time);
        if before > 1 {
            versions.drain(..before - 1);
        }
        if before > 0 && versions[0].columns.is_none() {
            versions.remove(0);
        }
        if versions.is_empty() {
            self.keys.remove(&key);
        }
    }

    /// How many keys hold a version.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// How many versions are held over all keys.
    pub fn version_count(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Every key with its versions, in key order (so that the same table
    /// always gives the same checkpoint bytes).
    pub fn entries(&self) -> Vec<(&Value, &[Version])> {
        super::sorted_entries(&self.keys)
    }

    /// A table holding `entries` (from [`AsOfTable::entries`] of one or
    /// more tables), settled up to `settled`.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (Value, Vec<Version>)>,
        settled: Option<i64>,
    ) -> Self {
        let mut table = AsOfTable::default();
        for (key, versions) in entries {
            for version in versions {
                table.insert(key.clone(), version.order, version.columns);
            }
        }
        if let Some(time) = settled {
            table.settle(time);
        }
        table
    }

    /// The time up to which the table is settled.
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

    fn columns(risk: f64) -> Option<Box<[Value]>> {
        Some(vec![Value::F64(risk)].into_boxed_slice())
    }

    fn risk(table: &AsOfTable, key: &str, time: i64) -> Option<f64> {
        table
            .lookup(&Value::Str(key.into()), time)
            .map(|columns| columns[0].as_f64().unwrap_or(f64::NAN))
    }

    #[test]
    fn a_lookup_sees_the_newest_version_at_or_before_its_time() {
        let mut table = AsOfTable::default();
        let key = || Value::Str("m1".into());
        table.insert(key(), order(20, 0, 5), columns(0.2));
        table.insert(key(), order(10, 0, 3), columns(0.1));
        // A tie in time: the greater partition wins, whatever the arrival.
        table.insert(key(), order(20, 1, 0), columns(0.3));
        assert_eq!(risk(&table, "m1", 9), None);
        assert_eq!(risk(&table, "m1", 10), Some(0.1));
        assert_eq!(risk(&table, "m1", 19), Some(0.1));
        assert_eq!(risk(&table, "m1", 20), Some(0.3));
        table.insert(key(), order(30, 0, 9), None);
        assert_eq!(risk(&table, "m1", 30), None);
        assert_eq!(risk(&table, "m1", 29), Some(0.3));
        assert_eq!(risk(&table, "m2", 29), None);
    }

    #[test]
    fn settling_drops_only_what_no_later_lookup_reaches() {
        let mut table = AsOfTable::default();
        let key = || Value::Str("m1".into());
        for (time, value) in [(10, 0.1), (20, 0.2), (30, 0.3)] {
            table.insert(key(), order(time, 0, time as u64), columns(value));
        }
        table.settle(25);
        assert_eq!(table.version_count(), 2);
        assert_eq!(risk(&table, "m1", 25), Some(0.2));
        assert_eq!(risk(&table, "m1", 30), Some(0.3));
        table.insert(key(), order(40, 0, 40), None);
        table.settle(41);
        assert_eq!(table.key_count(), 0, "a deleted key is forgotten");
        assert_eq!(risk(&table, "m1", 50), None);
    }
}
