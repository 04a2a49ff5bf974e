//! An embedded Kafka-protocol broker: librdkafka's mock cluster, running
//! inside the process. `tideflow demo` uses it so that a Kafka dataflow runs
//! with nothing installed, and fault-injection tests use it to take brokers
//! down and fail requests on purpose. It is not a stand-in for a real broker
//! in the main tests: it cannot answer offsets-for-times, for one.

use super::kafka_error;
use super::{ClientOptions, LOOKUP_TIMEOUT};
use crate::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// A mock cluster of librdkafka, in this process.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap_servers", &self.cluster.bootstrap_servers())
            .finish()
    }
}

fn mock_error(context: &str, error: &KafkaError) -> Error {
    kafka_error(&ClientOptions::default(), context, error)
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` brokers on loopback ports.
    pub fn start(brokers: i32) -> Result<Self> {
        let cluster = MockCluster::new(brokers)
            .map_err(|error| mock_error("cannot start the embedded broker", &error))?;
        Ok(EmbeddedBroker { cluster })
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.cluster
            .create_topic(topic, partitions as i32, 1)
            .map_err(|error| mock_error(&format!("cannot create topic {topic}"), &error))
    }

    /// Takes broker `id` (1-based) down: its connections close and it
    /// refuses new ones until [`EmbeddedBroker::broker_up`].
    pub fn broker_down(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_down(id)
            .map_err(|error| mock_error("cannot take the broker down", &error))
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<()> {
        self.cluster
            .broker_up(id)
            .map_err(|error| mock_error("cannot bring the broker up", &error))
    }

    /// Makes the next requests of one kind fail with the given errors, in
    /// order (fault injection).
    pub fn fail_requests(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        self.cluster.request_errors(api, errors);
    }
}

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
/// of each partition when called, in (partition, offset) order: for demos and tests that check
/// what a run produced.
pub fn read_topic(brokers: &str, topic: &str, options: &ClientOptions) -> Result<Vec<TopicRecord>> {
    let consumer: BaseConsumer = options
        .client_config(&[
            ("bootstrap.servers", brokers),
            ("group.id", "tideflow-read-topic"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create()
        .map_err(|error| kafka_error(options, "cannot create a consumer", &error))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(|error| {
            kafka_error(options, format!("cannot read metadata of {topic}"), &error)
        })?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic)
        .map_or(0, |found| found.partitions().len());
    // Read each partition up to its high watermark now.
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition as i32, LOOKUP_TIMEOUT)
            .map_err(|error| {
                kafka_error(options, format!("cannot read offsets of {topic}"), &error)
            })?;
        if high > low {
            ends.insert(partition as i32, high);
            assignment
                .add_partition_offset(topic, partition as i32, Offset::Offset(low))
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
                message: "partitions did not reach their end within 60 s".into(),
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
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|header| {
                                    (
                                        header.key.to_owned(),
                                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
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
