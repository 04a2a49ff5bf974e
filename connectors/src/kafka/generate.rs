//! `tideflow gen`: the generator's synthetic transactions, produced to a
//! Kafka topic at a steady rate, for demos, benchmarks and users trying
//! tideflow against their own brokers.
//!
//! Generator partition `p` is produced to Kafka partition `p`, keyed by the
//! user id, so the topic is keyed by `user_id` exactly as the generator
//! source is. The schedule is open-loop: record `i` is due at
//! `start + i / rate`, whatever the brokers' speed, so a slow consumer
//! shows up as latency rather than as a slower producer.

use super::{ClientOptions, KafkaProducer, ProducerRecord, ensure_topic};
use crate::Result;
use crate::generator::GeneratorConfig;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `tideflow gen` produces.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic (created with the generator's partition count if missing).
    pub topic: String,
    /// Producer options.
    pub options: ClientOptions,
    /// The records: seed, users, partitions, count, rate.
    pub generator: GeneratorConfig,
    /// Stamp each record's `ts` with the wall clock at send time instead of
    /// the generated event time (for live latency measurements).
    pub wall_clock: bool,
}

/// Produces the generator's records; returns how many were produced and
/// acknowledged. Unbounded generators run until `stop` returns true.
pub fn produce_generated(options: &GenerateOptions, stop: &dyn Fn() -> bool) -> Result<u64> {
    let config = &options.generator;
    ensure_topic(
        &options.brokers,
        &options.options,
        &options.topic,
        config.partitions,
    )?;
    let producer = KafkaProducer::open(&options.brokers, &options.topic, &options.options)?;
    let started = Instant::now();
    let mut produced = 0u64;
    let partitions = u64::from(config.partitions);
    loop {
        if config.count.is_some_and(|count| produced >= count) || stop() {
            break;
        }
        if let Some(rate) = config.rate {
            let due = started + Duration::from_secs_f64(produced as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let partition = (produced % partitions) as u32;
        let offset = produced / partitions;
        let time = options.wall_clock.then(now_ms);
        let (key, value) = config.record_json(partition, offset, time);
        producer.send(&ProducerRecord {
            key: Some(key.as_bytes()),
            value: value.as_bytes(),
            headers: &[],
            partition: Some(partition),
            ticket: 0,
        })?;
        produced += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(produced)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
