//! Raw records and the reader interface every source partition implements.
//!
//! A raw record carries its origin (partition and offset) so that whatever
//! happens to it later, an output row or a dead letter, can name where it
//! came from.

pub use compact_str::{CompactString, format_compact};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// One typed value of a record field, a feature, or a model output.
///
/// Floats compare and hash by their bits, so that `Value` can serve as a
/// grouping key and as a member of a distinct-count set with exact,
/// platform-independent semantics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Value {
    /// Absent or JSON `null`.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer; also event times in milliseconds.
    I64(i64),
    /// A 64-bit float.
    F64(f64),
    /// A UTF-8 string (inline up to 24 bytes).
    Str(CompactString),
    /// A list of floats: a model output with several values per row (an
    /// embedding). Shared, so that copying a row does not copy the list.
    F64List(Arc<[f64]>),
    /// A list of integers: a model output with several values per row.
    I64List(Arc<[i64]>),
}

impl Value {
    /// The value as a float, for arithmetic: integers and booleans widen,
    /// strings and nulls give `None`.
    #[inline]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::I64(v) => Some(*v as f64),
            Value::Bool(v) => Some(if *v { 1.0 } else { 0.0 }),
            Value::Null | Value::Str(_) | Value::F64List(_) | Value::I64List(_) => None,
        }
    }

    /// Whether this is `Null`.
    #[inline]
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A stable 64-bit hash, the same in every process and on every run,
    /// used to route records to workers by key.
    pub fn stable_hash(&self) -> u64 {
        let mut hasher = StableHasher::default();
        self.hash(&mut hasher);
        hasher.finish()
    }

    /// [`Value::stable_hash`] of the string `text`, without making the
    /// value (keys held in string columns).
    #[inline]
    pub fn stable_hash_of_text(text: &str) -> u64 {
        let mut hasher = StableHasher::default();
        hasher.write(text.as_bytes());
        hasher.finish()
    }
}

impl PartialEq for Value {
    /// Inlined where keys are looked up, once per record.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::I64(a), Value::I64(b)) => a == b,
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::F64List(a), Value::F64List(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|(a, b)| a.to_bits() == b.to_bits())
            }
            (Value::I64List(a), Value::I64List(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

/// A total order consistent with equality: by kind (null, bool, integer,
/// float, string, float list, integer list), then by value (lists
/// lexicographically), floats in IEEE total order (which tells
/// apart exactly the bit patterns equality does). Where values are kept
/// in a hashed set, it gives them an order that does not depend on how
/// the set was built.
impl Ord for Value {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let kind = |value: &Value| match value {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::I64(_) => 2,
            Value::F64(_) => 3,
            Value::Str(_) => 4,
            Value::F64List(_) => 5,
            Value::I64List(_) => 6,
        };
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::I64(a), Value::I64(b)) => a.cmp(b),
            (Value::F64(a), Value::F64(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::F64List(a), Value::F64List(b)) => a
                .iter()
                .zip(b.iter())
                .map(|(a, b)| a.total_cmp(b))
                .find(|order| order.is_ne())
                .unwrap_or_else(|| a.len().cmp(&b.len())),
            (Value::I64List(a), Value::I64List(b)) => a.cmp(b),
            _ => kind(self).cmp(&kind(other)),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Value {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Null => state.write_u8(0),
            Value::Bool(v) => state.write_u8(if *v { 2 } else { 1 }),
            Value::I64(v) => state.write_u64(*v as u64),
            Value::F64(v) => state.write_u64(v.to_bits() ^ 0x9e37_79b9_7f4a_7c15),
            // As `stable_hash_of_text` hashes a string.
            Value::Str(v) => state.write(v.as_bytes()),
            Value::F64List(list) => {
                state.write_u8(3);
                list.iter().for_each(|v| state.write_u64(v.to_bits()));
            }
            Value::I64List(list) => {
                state.write_u8(4);
                list.iter().for_each(|v| state.write_u64(*v as u64));
            }
        }
    }
}

/// FNV-1a followed by a 64-bit finaliser: deterministic across processes
/// (unlike `std`'s randomly seeded hasher) and well mixed in the low bits
/// that pick a worker.
#[derive(Debug)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The body of a raw record, before decoding against the schema.
#[derive(Clone, Debug, PartialEq)]
pub enum RawBody {
    /// Bytes in a text format (a JSONL line, a Kafka message value).
    Bytes(Vec<u8>),
    /// Fields already typed by the transport, in the order of the column
    /// names the reader was opened with; a missing column is `Null`.
    Fields(Vec<Value>),
    /// A record the transport itself could not deliver whole (a line over
    /// the size limit): it becomes a dead letter with this reason.
    Unreadable {
        /// Why the record is unreadable.
        reason: String,
        /// A prefix of the original bytes, for the dead letter.
        prefix: Vec<u8>,
    },
}

/// One record as a connector delivers it.
#[derive(Clone, Debug)]
pub struct RawRecord {
    /// The source partition (a file's index in name order, a Kafka partition).
    pub partition: u32,
    /// The position within the partition (line or row index, Kafka offset).
    pub offset: u64,
    /// The transport's own timestamp in milliseconds, where it has one
    /// (Kafka message timestamps); files have none.
    pub timestamp_ms: Option<i64>,
    /// The transport's record key, where it has one (Kafka message keys).
    pub key: Option<Vec<u8>>,
    /// The transport's record headers, where it has them (Kafka), for
    /// dead letters: name and value bytes, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record itself.
    pub body: RawBody,
}

/// What a poll of a partition reader produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were appended (perhaps fewer than asked for).
    Ready,
    /// Nothing is available now; poll again after the given time.
    Pending(Duration),
    /// The partition has ended; it will produce nothing more.
    Finished,
}

/// A reader of one source partition, polled by the engine.
///
/// Implementations deliver records in offset order and never skip one: every
/// offset they pass over reaches the engine, readable or not, so that input
/// counts reconcile.
pub trait PartitionReader: Send {
    /// The partition this reader reads.
    fn partition(&self) -> u32;

    /// Appends at most `max_records` records to `out`.
    fn poll(&mut self, out: &mut Vec<RawRecord>, max_records: usize) -> crate::Result<Poll>;

    /// Whether the reader is still behind the end of the data available
    /// when it started (a backfill), as opposed to keeping up with new data.
    /// The adaptive batching policy uses bulk batches while this is true.
    fn is_behind(&self) -> bool;

    /// Progress as (records or bytes done, total), where a total is known.
    fn progress(&self) -> (u64, Option<u64>);

    /// The first offset whose record is the run's own: records before it
    /// are replayed only to rebuild window state (a Kafka run started after
    /// the beginning of its topic) and produce no output.
    fn first_output_offset(&self) -> u64 {
        0
    }

    /// Records available at the source and not yet read, where the
    /// transport knows (a Kafka partition's lag behind its high watermark).
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Registers a function to call when records become available after a
    /// poll returned [`Poll::Pending`], so the engine need not poll an idle
    /// partition in a tight loop. Readers that are never idle ignore it.
    fn set_wakeup(&mut self, _wake: std::sync::Arc<dyn Fn() + Send + Sync>) {}

    /// Moves the reader to the record at `offset`, where the next poll
    /// starts (a run restored from a checkpoint); `false` when the reader
    /// cannot, and the engine skips the records before it instead.
    fn seek(&mut self, _offset: u64) -> bool {
        false
    }

    /// The reader's records as columns, where its transport is columnar:
    /// the engine then reads them chunk by chunk instead of polling.
    fn columnar(&mut self) -> Option<&mut dyn crate::columnar::ColumnReader> {
        None
    }

    /// The reader's records as lines of its read buffer, where its records
    /// are lines of text: the engine then decodes each line where it lies
    /// rather than polling a copy of it.
    fn lines(&mut self) -> Option<&mut dyn crate::files::LineReader> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_hashes_alike_as_a_value_and_as_text() {
        for text in ["", "u1", "a string longer than twenty-four bytes", "é"] {
            assert_eq!(
                Value::stable_hash_of_text(text),
                Value::Str(text.into()).stable_hash()
            );
        }
        assert_ne!(
            Value::stable_hash_of_text("u1"),
            Value::stable_hash_of_text("u2")
        );
    }
}
