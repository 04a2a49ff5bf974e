//! Joins: rows enriched from keyed tables as of their event time, and
//! labels looked up ahead of it.
//!
//! A table is a changelog: each record is a version of one key at an event
//! time, and a record without a value (a Kafka tombstone) deletes the key
//! from its time on. An event at time `t` joins the version of its key
//! with the greatest (time, partition, offset) among versions with time at
//! most `t` ([`AsOfTable`]). A label is the value of the label record of
//! the row's key with the greatest (time, partition, offset) among records
//! with time in `[t, t + horizon]` ([`LabelTable`]).
//!
//! Both answers are functions of the records alone, never of when they
//! arrived: the operator ([`crate::operators::join`]) holds an event until
//! the table's watermark has passed the last time its answer depends on.
//! The state here is plain and serializable; the oracle tests in
//! `tests/joins.rs` compare it with a naive scan of every record.

mod as_of;
mod labels;

pub use as_of::{AsOfTable, Version};
pub use labels::{LabelRecord, LabelTable};

use serde::{Deserialize, Serialize};
use tideflow_connectors::Value;

/// Where a table or label record sits in the order that breaks ties:
/// event time, then the partition and offset it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionOrder {
    /// Event time, epoch ms.
    pub time: i64,
    /// The table's source partition.
    pub partition: u32,
    /// Offset within it.
    pub offset: u64,
}

/// Every key with its held items, in key order: a table's checkpoint
/// bytes are then the same however its hash map grew.
fn sorted_entries<T>(keys: &rustc_hash::FxHashMap<Value, Vec<T>>) -> Vec<(&Value, &[T])> {
    let mut entries: Vec<_> = keys
        .iter()
        .map(|(key, items)| (key, items.as_slice()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}
