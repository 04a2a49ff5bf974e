//! The producer behind Kafka sinks: idempotent, never dropping a record,
//! and keeping count of what the brokers have not yet acknowledged.
//!
//! Every record is sent with a *ticket* (the engine uses the dataflow time
//! of the row). The tracker counts unacknowledged records per ticket, so the
//! engine can ask "is everything before time T durable?" without blocking,
//! and commit source offsets only up to there. A record that librdkafka
//! cannot deliver after its own retries is a failure the engine reports and
//! stops on, never a silent drop. It also keeps, per partition, the offset
//! after the last record acknowledged: where records sent after a flush
//! will land, at the earliest.

use super::{ClientOptions, LoggingContext, kafka_error};
use crate::{Error, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts of unacknowledged records per ticket, and the first failure.
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    state: Mutex<DeliveryState>,
    logging: Option<Arc<LoggingContext>>,
}

#[derive(Debug, Default)]
struct DeliveryState {
    outstanding: BTreeMap<i64, u64>,
    failure: Option<String>,
    /// Per partition, the offset after the last acknowledged record.
    delivered_ends: BTreeMap<i32, i64>,
}

impl DeliveryTracker {
    fn state(&self) -> std::sync::MutexGuard<'_, DeliveryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sent(&self, ticket: i64) {
        *self.state().outstanding.entry(ticket).or_default() += 1;
    }

    fn settled(&self, ticket: i64) {
        let mut state = self.state();
        if let Some(count) = state.outstanding.get_mut(&ticket) {
            *count -= 1;
            if *count == 0 {
                state.outstanding.remove(&ticket);
            }
        }
    }

    /// The smallest ticket with a record not yet acknowledged, if any.
    pub fn oldest_outstanding(&self) -> Option<i64> {
        self.state().outstanding.keys().next().copied()
    }

    /// The first delivery failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.state().failure.clone()
    }
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if let Some(logging) = &self.logging {
            logging.log(level, facility, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(logging) = &self.logging {
            logging.error(error, reason);
        }
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        let ticket = ticket as u64 as i64;
        if let Err((error, _)) = result {
            let mut state = self.state();
            if state.failure.is_none() {
                state.failure = Some(error.to_string());
            }
            // The count stays: an undelivered record is never "durable", so
            // no offset past it is committed.
            return;
        }
        if let Ok(message) = result {
            let mut state = self.state();
            let end = state.delivered_ends.entry(message.partition()).or_insert(0);
            *end = (*end).max(message.offset() + 1);
        }
        self.settled(ticket);
    }
}

/// One record to produce.
#[derive(Debug)]
pub struct ProducerRecord<'a> {
    /// The record key (the entity key), if any.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    /// Headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The partition; by default librdkafka's partitioner picks it from
    /// the key.
    pub partition: Option<u32>,
    /// The ticket acknowledgement is tracked under.
    pub ticket: i64,
}

/// An idempotent producer to one topic.
pub struct KafkaProducer {
    producer: ThreadedProducer<DeliveryTracker>,
    topic: String,
    options: ClientOptions,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("topic", &self.topic)
            .field("options", &self.options)
            .finish()
    }
}

impl KafkaProducer {
    /// A producer to `topic` at `brokers`. Idempotence is on unless the
    /// options turn it off; a record undelivered after
    /// `message.timeout.ms` (default here 60 s) fails the producer.
    pub fn open(brokers: &str, topic: &str, options: &ClientOptions) -> Result<Self> {
        let mut with_defaults = ClientOptions::from_pairs([
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "60000"),
            ("linger.ms", "1"),
        ]);
        let mut user_options = options.clone();
        user_options.set("bootstrap.servers", brokers);
        for (key, value) in user_options.pairs() {
            with_defaults.set(key, value);
        }
        let tracker = DeliveryTracker {
            state: Mutex::default(),
            logging: Some(Arc::new(LoggingContext::new(options))),
        };
        let producer = with_defaults
            .client_config(&[])
            .create_with_context(tracker)
            .map_err(|error| {
                kafka_error(
                    options,
                    format!("cannot create a producer for {topic}"),
                    &error,
                )
            })?;
        Ok(KafkaProducer {
            producer,
            topic: topic.to_owned(),
            options: options.clone(),
        })
    }

    /// Queues one record, waiting while librdkafka's queue is full.
    pub fn send(&self, record: &ProducerRecord<'_>) -> Result<()> {
        self.check()?;
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut base = BaseRecord::with_opaque_to(&self.topic, record.ticket as u64 as usize)
            .payload(record.value)
            .headers(headers);
        if let Some(key) = record.key {
            base = base.key(key);
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition as i32);
        }
        self.producer.context().sent(record.ticket);
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Back-pressure: the background thread drains the queue.
                    base = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    self.producer.context().settled(record.ticket);
                    return Err(kafka_error(
                        &self.options,
                        format!("cannot produce to {}", self.topic),
                        &error,
                    ));
                }
            }
        }
    }

    /// The smallest ticket with a record not yet acknowledged, if any.
    pub fn oldest_outstanding(&self) -> Option<i64> {
        self.producer.context().oldest_outstanding()
    }

    /// Per partition written to, the offset after the last record the
    /// brokers acknowledged.
    pub fn delivered_ends(&self) -> BTreeMap<i32, i64> {
        self.producer.context().state().delivered_ends.clone()
    }

    /// The high watermark of each partition of the topic now.
    pub fn partition_ends(&self) -> Result<BTreeMap<i32, i64>> {
        let client = self.producer.client();
        let metadata = client
            .fetch_metadata(Some(&self.topic), super::LOOKUP_TIMEOUT)
            .map_err(|error| {
                kafka_error(
                    &self.options,
                    format!("cannot read metadata of {}", self.topic),
                    &error,
                )
            })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|found| found.name() == self.topic)
            .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
            .collect();
        partitions
            .into_iter()
            .map(|partition| {
                client
                    .fetch_watermarks(&self.topic, partition, super::LOOKUP_TIMEOUT)
                    .map(|(_, high)| (partition, high))
                    .map_err(|error| {
                        kafka_error(
                            &self.options,
                            format!("cannot read offsets of {}", self.topic),
                            &error,
                        )
                    })
            })
            .collect()
    }

    /// Fails if a record could not be delivered.
    pub fn check(&self) -> Result<()> {
        match self.producer.context().failure() {
            None => Ok(()),
            Some(message) => Err(Error::Kafka {
                context: format!("delivery to topic {} failed", self.topic),
                message: self.options.redact(&message),
            }),
        }
    }

    /// Waits until every queued record is acknowledged (or fails).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check()?;
            if self.oldest_outstanding().is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Kafka {
                    context: format!("delivery to topic {}", self.topic),
                    message: format!("records still unacknowledged after {timeout:?}"),
                });
            }
            let _ = self.producer.flush(Duration::from_millis(100));
        }
    }
}
