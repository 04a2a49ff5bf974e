//! The Kafka transport: each row one JSON message keyed by the entity key.

use super::{Layout, MODEL_HEADER, RowWriter};
use crate::Result;
use crate::batch::Batch;
use crate::decode::value_to_json;
use std::time::Duration;
use tideflow_connectors::Value;
use tideflow_connectors::kafka::{KafkaProducer, ProducerRecord};

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
        })
    }
}

impl RowWriter for KafkaWriter {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        let model = self.layout.model.as_deref().map(str::as_bytes);
        let headers: Vec<(&str, &[u8])> = model
            .map(|model| (MODEL_HEADER, model))
            .into_iter()
            .collect();
        let mut key = String::new();
        let readers = batch.readers();
        for index in 0..batch.len() {
            let cells = readers.row(index);
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
                headers: &headers,
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
}
