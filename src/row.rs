//! The row: one record's place in the dataflow graph.
//!
//! A row is one input record's origin and event time, and a value slot
//! for every output column: schema fields first, then features, then
//! model outputs. In a batch the values live in the batch's columns (see
//! [`crate::batch::Batch`]) and the slots stay empty; they are filled
//! where rows are kept one by one: the inputs of tables and labels, the
//! sides of joins, the rows a checkpoint holds.

use serde::{Deserialize, Serialize};
use tideflow_connectors::Value;
use tideflow_connectors::kafka::TopicPartitions;

/// One record on its way through the graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The value in `slot`; null past the row's end (a row holds its
    /// schema fields, and computed values only once materialized).
    #[inline]
    pub fn cell(&self, slot: usize) -> &Value {
        const NULL: &Value = &Value::Null;
        self.values.get(slot).unwrap_or(NULL)
    }

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
    /// The original record's bytes (for records whose transport gave
    /// typed fields, or whose bytes are gone by the time they fail, its
    /// schema fields as a JSON object).
    pub raw: Vec<u8>,
    /// The transport's record key (Kafka), as it came.
    pub key: Option<Vec<u8>>,
    /// The transport's record headers (Kafka), as they came.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The reason given to late records.
pub const LATE: &str = "late";

/// How outputs name a row's origin. A source partition index is the
/// `_partition` itself, except where a Kafka source reads several topics:
/// there the index is translated back to `_topic` and the Kafka
/// `_partition` within it.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    topics: Option<std::sync::Arc<TopicPartitions>>,
}

impl Origins {
    /// Origins named by source partition index alone.
    pub fn by_index() -> Self {
        Origins::default()
    }

    /// Origins over `partitions`: with `_topic` where there are several
    /// topics.
    pub fn over_topics(partitions: std::sync::Arc<TopicPartitions>) -> Self {
        Origins {
            topics: partitions.is_multi_topic().then_some(partitions),
        }
    }

    /// Whether outputs carry a `_topic` column.
    pub fn has_topic(&self) -> bool {
        self.topics.is_some()
    }

    /// The topic (where outputs carry one) and the partition of source
    /// partition `index`.
    pub fn locate(&self, index: u32) -> (Option<&str>, u32) {
        match self.topics.as_ref().and_then(|topics| topics.locate(index)) {
            Some((topic, partition)) => (Some(topic), partition),
            None => (None, index),
        }
    }
}
