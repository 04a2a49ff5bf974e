//! An embedded Kafka-protocol broker: librdkafka's mock cluster, running
//! inside the process. `tideflow demo` uses it so that a Kafka dataflow runs
//! with nothing installed, and fault-injection tests use it to take brokers
//! down and fail requests on purpose. It is not a stand-in for a real broker
//! in the main tests: it answers every offsets-for-times lookup with the
//! high watermark, for one.

use super::ClientOptions;
use super::kafka_error;
use crate::{Error, Result};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

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
