//! The Kafka transport: each row one JSON message keyed by the entity key,
//! with its origin (`tideflow-origin: <partition>:<offset>`) in a header.
//!
//! In a checkpointed run the sink writes each row exactly once, without
//! transactions (the test broker has none, and many Kafka-protocol
//! brokers lack them): rows are deterministic, so a restart only has to
//! leave out what the run before it wrote after the restored checkpoint.
//! At each cut a writer waits until the brokers have acknowledged its
//! rows, and the checkpoint records, per partition, an offset at or below
//! where any of its later rows can land. A restart reads the topic from
//! the smallest of these offsets over the workers, collects the origins
//! found there, and skips the rows with those origins when the run makes
//! them again; until it has made every one of them, its cuts record the
//! offsets it restored, so that a restart from them finds those rows too.
//! Before the first checkpoint, the offsets are the topic's
//! ends when the first run started.

use super::{EpochOutput, Layout, MODEL_HEADER, RowWriter};
use crate::batch::Batch;
use crate::decode::value_to_json;
use crate::plan::SinkPlan;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tideflow_connectors::Value;
use tideflow_connectors::kafka::{KafkaProducer, ProducerRecord, read_topic_from};

/// The record header naming a row's origin: its source partition index
/// and offset, as `<partition>:<offset>`.
pub const ORIGIN_HEADER: &str = "tideflow-origin";

/// Per partition of a topic, an offset (the next one to be written at a
/// cut; where a read starts on a restart).
pub type TopicOffsets = BTreeMap<i32, i64>;

/// Where a Kafka sink of a checkpointed run resumes: the offsets at or
/// after which its rows since the restored cut landed, and the origins of
/// the rows an interrupted run already wrote there.
#[derive(Debug, Default)]
pub struct TopicResume {
    /// Per partition, where rows after the restored cut begin at the
    /// earliest.
    pub starts: TopicOffsets,
    written: Mutex<HashSet<(u32, u64)>>,
    /// How many of `written` the run has not yet made again: once none,
    /// rows are written without a look.
    remaining: AtomicUsize,
}

impl TopicResume {
    /// Reads what `sink` holds from `starts` on: the rows written there
    /// after the cut, by origin.
    pub fn read(sink: &SinkPlan, starts: TopicOffsets) -> Result<Self> {
        let SinkPlan::Kafka {
            brokers,
            topic,
            options,
        } = sink
        else {
            return Ok(TopicResume {
                starts,
                ..TopicResume::default()
            });
        };
        let records = read_topic_from(brokers, topic, &starts, options)?;
        let written: HashSet<(u32, u64)> = records
            .iter()
            .filter_map(|record| {
                let (_, origin) = record
                    .headers
                    .iter()
                    .find(|(name, _)| name == ORIGIN_HEADER)?;
                parse_origin(origin)
            })
            .collect();
        Ok(TopicResume {
            starts,
            remaining: AtomicUsize::new(written.len()),
            written: Mutex::new(written),
        })
    }

    /// How many rows an interrupted run wrote after the cut.
    pub fn written(&self) -> usize {
        self.written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether the row from `(partition, offset)` is on the topic already
    /// (each such row is reported once).
    pub(super) fn was_written(&self, partition: u32, offset: u64) -> bool {
        if self.remaining.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let found = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(partition, offset));
        if found {
            self.remaining.fetch_sub(1, Ordering::Relaxed);
        }
        found
    }

    /// Moves a writer's `starts` up to the ends of what it has had
    /// acknowledged (`delivered`), at a cut: later rows land after them.
    /// Not while rows an interrupted run wrote after the restored cut are
    /// still to be made again: those lie below this run's ends, and a
    /// restart from this cut, which makes them again, must find them, so
    /// its reading starts where this run's did. (Moved up regardless, a
    /// run restored, cut before it had made again what the killed run had
    /// written, and killed, left those rows for the next restart to write
    /// twice.) Once none is left, every one of them was made in an epoch
    /// before the cut of any writer that sees none left.
    pub(super) fn move_starts(
        &self,
        starts: &mut TopicOffsets,
        delivered: impl IntoIterator<Item = (i32, i64)>,
    ) {
        if self.remaining.load(Ordering::Relaxed) > 0 {
            return;
        }
        for (partition, end) in delivered {
            let start = starts.entry(partition).or_insert(end);
            *start = (*start).max(end);
        }
    }
}

/// `<partition>:<offset>`, as [`ORIGIN_HEADER`] holds it.
fn parse_origin(bytes: &[u8]) -> Option<(u32, u64)> {
    let (partition, offset) = std::str::from_utf8(bytes).ok()?.split_once(':')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

/// How long finishing a Kafka sink waits for the brokers to acknowledge
/// every record before the run fails.
pub(super) const KAFKA_FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// JSON messages to a Kafka topic, keyed by the entity key, with the
/// model's identity in a header.
pub(super) struct KafkaWriter {
    producer: KafkaProducer,
    /// The current sync epoch: the ticket of records sent now.
    epoch: u64,
    layout: Layout,
    value: Vec<u8>,
    origin: Vec<u8>,
    /// In a checkpointed run: where this writer's rows after the last cut
    /// land at the earliest, and what to leave out after a restart.
    exactly_once: Option<(TopicOffsets, Arc<TopicResume>)>,
}

impl KafkaWriter {
    /// A writer of rows laid out by `layout` to `topic` at `brokers`.
    pub(super) fn open(
        brokers: &str,
        topic: &str,
        options: &tideflow_connectors::kafka::ClientOptions,
        layout: &Layout,
    ) -> Result<Self> {
        Ok(KafkaWriter {
            producer: KafkaProducer::open(brokers, topic, options)?,
            epoch: 1,
            layout: layout.clone(),
            value: Vec::new(),
            origin: Vec::new(),
            exactly_once: None,
        })
    }

    /// Makes this writer write exactly once from `resume` on.
    pub(super) fn exactly_once(mut self, resume: Arc<TopicResume>) -> Self {
        self.exactly_once = Some((resume.starts.clone(), resume));
        self
    }
}

impl RowWriter for KafkaWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let model = self.layout.model.as_deref().map(str::as_bytes);
        let mut key = String::new();
        let readers = batch.readers();
        for index in 0..batch.len() {
            let cells = readers.row(index);
            let row = cells.row();
            if let Some((_, resume)) = &self.exactly_once
                && resume.was_written(row.partition, row.offset)
            {
                continue;
            }
            self.origin.clear();
            write!(self.origin, "{}:{}", row.partition, row.offset)
                .expect("writing to a Vec cannot fail");
            let mut headers: [(&str, &[u8]); 2] = [(ORIGIN_HEADER, &self.origin), ("", &[])];
            let header_count = match model {
                Some(model) => {
                    headers[1] = (MODEL_HEADER, model);
                    2
                }
                None => 1,
            };
            self.value.clear();
            self.layout.json_line(&cells, &mut self.value);
            key.clear();
            let entity = self.layout.key_slot.map(|slot| cells.value(slot));
            let has_key = match entity.as_deref() {
                Some(Value::Str(text)) => {
                    key.push_str(text);
                    true
                }
                Some(Value::Null) | None => false,
                Some(other) => {
                    key.push_str(&value_to_json(other).to_string());
                    true
                }
            };
            self.producer.send(&ProducerRecord {
                key: has_key.then_some(key.as_bytes()),
                value: &self.value,
                headers: &headers[..header_count],
                partition: None,
                ticket: self.epoch as i64,
            })?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.producer.check()?;
        self.epoch += 1;
        Ok(self.epoch - 1)
    }

    fn is_durable(&self, epoch: u64) -> bool {
        self.producer
            .oldest_outstanding()
            .is_none_or(|oldest| oldest > epoch as i64)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.producer.flush(KAFKA_FINISH_TIMEOUT)?)
    }

    /// Waits for the brokers to acknowledge every row so far: rows after
    /// the cut then land after the ends of this writer's rows before it.
    fn close_epoch(&mut self, _id: u64) -> Result<EpochOutput> {
        self.finish()?;
        let Some((starts, resume)) = &mut self.exactly_once else {
            return Ok(EpochOutput::default());
        };
        resume.move_starts(starts, self.producer.delivered_ends());
        Ok(EpochOutput {
            files: Vec::new(),
            topic_starts: Some(starts.clone()),
        })
    }
}

/// The ends of `sink`'s topic now: where a first run's rows begin.
pub fn topic_ends(sink: &SinkPlan) -> Result<TopicOffsets> {
    match sink {
        SinkPlan::Kafka {
            brokers,
            topic,
            options,
        } => Ok(KafkaProducer::open(brokers, topic, options)?.partition_ends()?),
        other => Err(Error::Sink {
            sink: other.describe(),
            message: "not a Kafka sink".into(),
        }),
    }
}
