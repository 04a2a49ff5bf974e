//! Kafka: the partitions of one or more topics as [`crate::PartitionReader`]s, offset
//! commits for a consumer group, a producer that knows which outputs the
//! brokers have acknowledged, and topic administration for tools and tests.
//!
//! Everything here goes through librdkafka (the `rdkafka` crate, bundled
//! build). Partitions are assigned manually, never by group rebalancing:
//! the engine decides which worker reads which partition, and the group id
//! is used only to commit progress so that standard lag tools work.

mod embedded;
mod generate;
mod inspect;
mod options;
mod position;
mod producer;
mod source;
mod topics;

pub use embedded::EmbeddedBroker;
pub use generate::{GenerateOptions, produce_generated};
pub use inspect::{TopicRecord, committed_offsets, read_topic, read_topic_from};
pub use options::{ClientOptions, REDACTED};
pub use position::{EndPosition, StartPosition, parse_time};
pub use producer::{DeliveryTracker, KafkaProducer, ProducerRecord};
pub use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
pub use source::{KafkaPartitionReader, KafkaSourceConfig, OffsetCommitter, open_partitions};
pub use topics::TopicPartitions;

use crate::{Error, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Mutex;
use std::time::Duration;

/// How long metadata, watermark and offset lookups may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The client context of every tideflow client: librdkafka's errors and
/// warnings go to standard error, with secrets redacted and repeats of the
/// same message suppressed (a broker that is down is reported on every
/// reconnect attempt).
pub struct LoggingContext {
    options: ClientOptions,
    last_message: Mutex<String>,
    /// High watermarks from librdkafka's statistics, by topic and
    /// partition (where `statistics.interval.ms` is set).
    high_watermarks: Mutex<std::collections::HashMap<(String, i32), i64>>,
}

impl LoggingContext {
    pub(crate) fn new(options: &ClientOptions) -> Self {
        LoggingContext {
            options: options.clone(),
            last_message: Mutex::new(String::new()),
            high_watermarks: Mutex::default(),
        }
    }

    /// The high watermark of a partition from the latest statistics.
    pub(crate) fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high_watermarks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    fn report(&self, message: String) {
        let message = self.options.redact(&message);
        let mut last = self
            .last_message
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last != message {
            eprintln!("tideflow: kafka: {message}");
            *last = message;
        }
    }
}

impl std::fmt::Debug for LoggingContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggingContext")
            .field("options", &self.options)
            .finish()
    }
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.report(format!("{facility}: {message}"));
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut known = self
            .high_watermarks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, topic) in statistics.topics {
            for (partition, stats) in topic.partitions {
                // librdkafka reports -1 (and its internal partition -1)
                // until it knows.
                if partition >= 0 && stats.hi_offset >= 0 {
                    known.insert((name.clone(), partition), stats.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is an "error" to librdkafka and news to a
        // reader, which receives it on its own queue.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            self.report(format!("{error}: {reason}"));
        }
    }
}

/// A Kafka error as a connector error, with secrets redacted.
pub(crate) fn kafka_error(
    options: &ClientOptions,
    context: impl Into<String>,
    error: &KafkaError,
) -> Error {
    Error::Kafka {
        context: options.redact(&context.into()),
        message: options.redact(&error.to_string()),
    }
}

/// Creates a topic with `partitions` partitions if it does not exist.
/// Returns whether it was created.
pub fn ensure_topic(
    brokers: &str,
    options: &ClientOptions,
    topic: &str,
    partitions: u32,
) -> Result<bool> {
    let admin: AdminClient<DefaultClientContext> = options
        .client_config(&[("bootstrap.servers", brokers)])
        .create()
        .map_err(|error| kafka_error(options, "cannot create an admin client", &error))?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(|error| kafka_error(options, format!("cannot reach {brokers}"), &error))?;
    let exists = metadata.topics().iter().any(|found| {
        found.name() == topic && found.error().is_none() && !found.partitions().is_empty()
    });
    if exists {
        return Ok(false);
    }
    let new_topic = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    let admin_options = AdminOptions::new().operation_timeout(Some(LOOKUP_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&new_topic], &admin_options))
        .map_err(|error| kafka_error(options, format!("cannot create topic {topic}"), &error))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
            Err((name, code)) => {
                return Err(Error::Kafka {
                    context: format!("cannot create topic {name}"),
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(true)
}

/// A message's headers as (name, value bytes), in order; a header without
/// a value has empty bytes.
pub(crate) fn headers_of(message: &impl rdkafka::message::Message) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
