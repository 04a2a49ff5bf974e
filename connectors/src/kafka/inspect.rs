//! Reading back what is on a broker: the records of a topic and the
//! offsets a group has committed. For demos, tests, and users who check
//! what a run produced and how far it got.

use super::kafka_error;
use super::{ClientOptions, LOOKUP_TIMEOUT};
use crate::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One record read back from a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The message timestamp, ms.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers as (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Every record of a topic from the earliest offset to the high watermark
/// of each partition when called, in (partition, offset) order.
pub fn read_topic(brokers: &str, topic: &str, options: &ClientOptions) -> Result<Vec<TopicRecord>> {
    read_topic_from(brokers, topic, &BTreeMap::new(), options)
}

/// The records of a topic from `starts` (per partition; the earliest
/// offset where it names none, or where it names one already deleted) to
/// the high watermark of each partition when called, in (partition,
/// offset) order.
pub fn read_topic_from(
    brokers: &str,
    topic: &str,
    starts: &BTreeMap<i32, i64>,
    options: &ClientOptions,
) -> Result<Vec<TopicRecord>> {
    let consumer: BaseConsumer = options
        .client_config(&[
            ("bootstrap.servers", brokers),
            ("group.id", "tideflow-read-topic"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create()
        .map_err(|error| kafka_error(options, "cannot create a consumer", &error))?;
    // Read each partition up to its high watermark now.
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in partition_ids(&consumer, topic, options)? {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)
            .map_err(|error| {
                kafka_error(options, format!("cannot read offsets of {topic}"), &error)
            })?;
        let start = starts.get(&partition).copied().unwrap_or(low).max(low);
        if high > start {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(|error| kafka_error(options, "cannot build an assignment", &error))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|error| kafka_error(options, "cannot assign", &error))?;
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Kafka {
                context: format!("reading topic {topic}"),
                message: format!(
                    "partitions did not reach their end within 60 s: {} records read, \
                     still waiting for (partition, high watermark) {ends:?}",
                    records.len()
                ),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                if ends
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    ends.remove(&message.partition());
                }
                records.push(TopicRecord {
                    partition: message.partition() as u32,
                    offset: message.offset() as u64,
                    timestamp_ms: message.timestamp().to_millis(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: super::headers_of(&message),
                })
            }
            // The end of a partition as the broker reports it now, which is
            // later than `end` if records arrived since, never earlier.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ends.remove(&partition);
            }
            Some(Err(error)) => {
                eprintln!(
                    "tideflow: reading {topic}: {}",
                    options.redact(&error.to_string())
                );
            }
        }
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    Ok(records)
}

/// The partitions of `topic` (none when it does not exist).
fn partition_ids(
    consumer: &BaseConsumer,
    topic: &str,
    options: &ClientOptions,
) -> Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(|error| {
            kafka_error(options, format!("cannot read metadata of {topic}"), &error)
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map(|found| {
            found
                .partitions()
                .iter()
                .map(|partition| partition.id())
                .collect()
        })
        .unwrap_or_default())
}

/// The offsets group `group` has committed for each partition of `topic`
/// (partitions without a commit are left out).
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    options: &ClientOptions,
) -> Result<BTreeMap<u32, u64>> {
    let consumer: BaseConsumer = options
        .client_config(&[
            ("bootstrap.servers", brokers),
            ("group.id", group),
            ("enable.auto.commit", "false"),
        ])
        .create()
        .map_err(|error| kafka_error(options, "cannot create a consumer", &error))?;
    let partitions = partition_ids(&consumer, topic, options)?;
    let mut wanted = TopicPartitionList::new();
    for partition in partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(wanted, LOOKUP_TIMEOUT)
        .map_err(|error| {
            kafka_error(
                options,
                format!("cannot read group {group}'s offsets"),
                &error,
            )
        })?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|entry| match entry.offset() {
            Offset::Offset(offset) if offset >= 0 => {
                Some((entry.partition() as u32, offset as u64))
            }
            _ => None,
        })
        .collect())
}
