//! The row: what moves between the operators of the dataflow graph.
//!
//! A row is one input record with its origin and event time, and a value
//! slot for every output column: schema fields first, then features, then
//! model outputs. Stages fill their slots in place, so a row is allocated
//! once, when it is decoded.

use serde::{Deserialize, Serialize};
use tideflow_connectors::Value;

/// One record on its way through the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Source partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Event time, epoch ms.
    pub time: i64,
    /// One value per output column.
    pub values: Vec<Value>,
    /// Replayed only to rebuild window state (before the run's start
    /// position): it updates features and is dropped before scoring.
    pub warm_up: bool,
}

impl Row {
    /// The canonical order of records whose key spans partitions.
    #[inline]
    pub fn canonical_order(&self) -> (i64, u32, u64) {
        (self.time, self.partition, self.offset)
    }
}

/// A record that cannot become an output row: why, and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Source partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The reason (`late`, or what is wrong with the record).
    pub error: String,
    /// The original record as text (lossy for non-UTF-8 bytes).
    pub raw: String,
}

/// The reason given to late records.
pub const LATE: &str = "late";
