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
    /// The records: seed, users, partitions, rate, and how many (`count`).
    pub generator: GeneratorConfig,
    /// The sequence number of the first record produced (see
    /// [`GeneratorConfig::sequenced_json`]): 0, or where an earlier
    /// production of the same generator stopped, to continue it.
    pub first: u64,
    /// Stamp each record's `ts` with the wall-clock time it is due (its
    /// send time while the producer keeps up) instead of the generated
    /// event time, for live latency measurements: a producer that falls
    /// behind shows as latency (coordinated omission corrected).
    pub wall_clock: bool,
}

/// Produces the generator's records `first..first + count` (unbounded
/// generators: until `stop` returns true); returns how many were produced
/// and acknowledged.
pub fn produce_generated(options: &GenerateOptions, stop: &dyn Fn() -> bool) -> Result<u64> {
    let config = &options.generator;
    ensure_topic(
        &options.brokers,
        &options.options,
        &options.topic,
        config.partitions,
    )?;
    let producer = KafkaProducer::open(&options.brokers, &options.topic, &options.options)?;
    let (started, started_ms) = (Instant::now(), now_ms());
    let mut produced = 0u64;
    loop {
        if config.count.is_some_and(|count| produced >= count) || stop() {
            break;
        }
        let due = config
            .rate
            .map(|rate| Duration::from_secs_f64(produced as f64 / rate));
        if let Some(wait) =
            due.and_then(|due| (started + due).checked_duration_since(Instant::now()))
        {
            std::thread::sleep(wait);
        }
        let time = options.wall_clock.then(|| match due {
            Some(due) => started_ms + due.as_millis() as i64,
            None => now_ms(),
        });
        let (partition, key, value) = config.sequenced_json(options.first + produced, time);
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
