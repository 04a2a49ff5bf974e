//! The generator source: deterministic, seeded, fraud-like card
//! transactions for demos, tests and benchmarks.
//!
//! Every record is a pure function of (seed, partition, offset), so a
//! generator partition can be re-read from any offset and two runs with the
//! same settings see the same records. Users are assigned to partitions by
//! their index, so the source is keyed by `user_id` as a Kafka topic keyed by
//! user would be.

use crate::record::{CompactString, PartitionReader, Poll, RawBody, RawRecord, Value};
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// The fields a generator record has, with their tideflow types.
pub const GENERATOR_FIELDS: [(&str, &str); 5] = [
    ("user_id", "string"),
    ("merchant_id", "string"),
    ("amount", "f64"),
    ("ts", "timestamp_ms"),
    ("tx_id", "string"),
];

/// Settings of a generator source.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of distinct users (the key of the source).
    pub users: u64,
    /// Number of distinct merchants.
    pub merchants: u64,
    /// Number of partitions.
    pub partitions: u32,
    /// Total number of records over all partitions; `None` for unbounded.
    pub count: Option<u64>,
    /// Records per second over all partitions; `None` for as fast as read.
    pub rate: Option<f64>,
    /// Event time of the first record, in epoch milliseconds.
    pub start_ms: i64,
    /// Event-time gap between consecutive records (over all partitions), ms.
    pub spacing_ms: f64,
    /// Fraction of records whose event time is moved back (out of order).
    pub disorder_fraction: f64,
    /// How far back such a record may move, in ms (at most).
    pub disorder_max_ms: i64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            users: 1000,
            merchants: 100,
            partitions: 4,
            count: Some(100_000),
            rate: None,
            start_ms: 1_700_000_000_000,
            spacing_ms: 10.0,
            disorder_fraction: 0.0,
            disorder_max_ms: 0,
        }
    }
}

impl GeneratorConfig {
    /// Checks the settings for values that cannot generate anything sane.
    pub fn validate(&self) -> Result<()> {
        if self.partitions == 0 {
            return Err(Error::Generator("partitions must be at least 1".into()));
        }
        if self.users < u64::from(self.partitions) {
            return Err(Error::Generator(format!(
                "users ({}) must be at least partitions ({}) so every partition has a user",
                self.users, self.partitions
            )));
        }
        if self.merchants == 0 {
            return Err(Error::Generator("merchants must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.disorder_fraction) {
            return Err(Error::Generator(
                "disorder_fraction must lie in [0, 1]".into(),
            ));
        }
        if self.rate.is_some_and(|rate| rate.is_nan() || rate <= 0.0) {
            return Err(Error::Generator("rate must be positive".into()));
        }
        if self.spacing_ms.is_nan() || self.spacing_ms < 0.0 {
            return Err(Error::Generator("spacing must not be negative".into()));
        }
        Ok(())
    }

    /// The number of records partition `partition` holds, if bounded.
    pub fn partition_count(&self, partition: u32) -> Option<u64> {
        let partitions = u64::from(self.partitions);
        self.count
            .map(|count| count / partitions + u64::from(u64::from(partition) < count % partitions))
    }

    /// The record at `offset` of `partition`, as (user, merchant, amount, event time).
    pub fn record(&self, partition: u32, offset: u64) -> (u64, u64, f64, i64) {
        let partitions = u64::from(self.partitions);
        let mut random = SplitMix::new(
            self.seed ^ (u64::from(partition) << 48) ^ offset.wrapping_mul(0x9e37_79b9),
        );
        let users_here = (self.users - u64::from(partition)).div_ceil(partitions);
        let user = u64::from(partition) + partitions * (random.next() % users_here);
        let merchant = random.next() % self.merchants;
        let amount = fraud_like_amount(&mut random);
        let sequence = offset * partitions + u64::from(partition);
        let mut time = self.start_ms + (sequence as f64 * self.spacing_ms) as i64;
        if self.disorder_max_ms > 0 && random.unit() < self.disorder_fraction {
            time -= 1 + (random.next() % self.disorder_max_ms as u64) as i64;
        }
        (user, merchant, amount, time)
    }
}

/// An id such as `u123`: a prefix and a number, formatted without the
/// `fmt` machinery, which costs more than the rest of a generated record,
/// and appended as text already known to be UTF-8 (inline: a letter and at
/// most 20 digits fit).
fn entity_id(prefix: &str, number: u64) -> CompactString {
    let mut digits = itoa::Buffer::new();
    let mut id = CompactString::new(prefix);
    id.push_str(digits.format(number));
    id
}

impl GeneratorConfig {
    /// The record at `offset` of `partition` as a JSON object with the
    /// generator's fields, and its key (the user id). `time` replaces the
    /// generated event time where given (live demos stamp wall-clock time).
    pub fn record_json(&self, partition: u32, offset: u64, time: Option<i64>) -> (String, String) {
        let (user, merchant, amount, generated_time) = self.record(partition, offset);
        let user = format!("u{user}");
        let object = serde_json::json!({
            "tx_id": transaction_id(partition, offset).as_str(),
            "user_id": user,
            "merchant_id": format!("m{merchant}"),
            "amount": amount,
            "ts": time.unwrap_or(generated_time),
        });
        (user, object.to_string())
    }

    /// Record number `sequence` in production order (the generator's
    /// partitions taken in turn: partition `sequence % partitions`, its
    /// record `sequence / partitions`), as (partition, key, JSON value).
    /// `time` replaces the generated event time where given.
    pub fn sequenced_json(&self, sequence: u64, time: Option<i64>) -> (u32, String, String) {
        let partitions = u64::from(self.partitions.max(1));
        let partition = (sequence % partitions) as u32;
        let (key, value) = self.record_json(partition, sequence / partitions, time);
        (partition, key, value)
    }
}

/// The id of the transaction at `offset` of `partition`: `t<partition>-<offset>`.
pub fn transaction_id(partition: u32, offset: u64) -> CompactString {
    crate::format_compact!("t{partition}-{offset}")
}

/// Card amounts: log-normal around tens of units, with a thin tail of large
/// ones, rounded to cents.
fn fraud_like_amount(random: &mut SplitMix) -> f64 {
    let (u1, u2) = (random.unit().max(1e-12), random.unit());
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let mut amount = (3.2 + 1.1 * normal).exp();
    if random.unit() < 0.01 {
        amount *= 20.0;
    }
    (amount * 100.0).round() / 100.0
}

/// SplitMix64: tiny, fast, and good enough for synthetic data.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        let mut random = SplitMix(seed);
        random.next();
        random
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Reads one generator partition.
#[derive(Debug)]
pub struct GeneratorReader {
    config: GeneratorConfig,
    partition: u32,
    /// For each requested column, which generator field fills it.
    column_fields: Vec<Option<usize>>,
    next_offset: u64,
    end: Option<u64>,
    started: Instant,
    /// The offset the rate counts from: where reading started.
    rate_from: u64,
}

impl GeneratorReader {
    /// Opens partition `partition`, delivering `columns` in order (columns
    /// the generator does not produce are null).
    pub fn open(config: &GeneratorConfig, partition: u32, columns: &[String]) -> Result<Self> {
        config.validate()?;
        let column_fields = columns
            .iter()
            .map(|column| GENERATOR_FIELDS.iter().position(|(name, _)| name == column))
            .collect();
        Ok(GeneratorReader {
            config: config.clone(),
            partition,
            column_fields,
            next_offset: 0,
            end: config.partition_count(partition),
            started: Instant::now(),
            rate_from: 0,
        })
    }

    /// How many records the rate allows by now, if rate-limited.
    fn allowed_by_rate(&self) -> Option<u64> {
        let per_partition = self.config.rate? / f64::from(self.config.partitions);
        Some(self.rate_from + (self.started.elapsed().as_secs_f64() * per_partition) as u64 + 1)
    }

    fn body(&self, offset: u64) -> RawBody {
        let (user, merchant, amount, time) = self.config.record(self.partition, offset);
        let mut fields = Vec::with_capacity(self.column_fields.len());
        fields.extend(self.column_fields.iter().map(|field| match field {
            Some(0) => Value::Str(entity_id("u", user)),
            Some(1) => Value::Str(entity_id("m", merchant)),
            Some(2) => Value::F64(amount),
            Some(3) => Value::I64(time),
            Some(4) => Value::Str(transaction_id(self.partition, offset)),
            _ => Value::Null,
        }));
        RawBody::Fields(fields)
    }
}

impl PartitionReader for GeneratorReader {
    fn seek(&mut self, offset: u64) -> bool {
        // Every record is a function of its offset: reading can start
        // anywhere, and the rate counts from there.
        self.next_offset = offset;
        self.rate_from = offset;
        self.started = Instant::now();
        true
    }

    fn partition(&self) -> u32 {
        self.partition
    }

    fn poll(&mut self, out: &mut Vec<RawRecord>, max_records: usize) -> Result<Poll> {
        let mut limit = self.next_offset + max_records as u64;
        if let Some(end) = self.end {
            if self.next_offset >= end {
                return Ok(Poll::Finished);
            }
            limit = limit.min(end);
        }
        if let Some(allowed) = self.allowed_by_rate() {
            if allowed <= self.next_offset {
                let per_record =
                    f64::from(self.config.partitions) / self.config.rate.unwrap_or(1.0);
                return Ok(Poll::Pending(Duration::from_secs_f64(per_record.min(0.05))));
            }
            limit = limit.min(allowed);
        }
        for offset in self.next_offset..limit {
            out.push(RawRecord {
                partition: self.partition,
                offset,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                body: self.body(offset),
            });
        }
        self.next_offset = limit;
        Ok(Poll::Ready)
    }

    fn is_behind(&self) -> bool {
        let unfinished = self.end.is_none_or(|end| self.next_offset < end);
        unfinished && self.config.rate.is_none()
    }

    fn progress(&self) -> (u64, Option<u64>) {
        (self.next_offset, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<String> {
        GENERATOR_FIELDS
            .iter()
            .map(|(name, _)| name.to_string())
            .collect()
    }

    #[test]
    fn entity_ids_are_the_letter_then_the_number() {
        assert_eq!(entity_id("u", 0), "u0");
        assert_eq!(entity_id("u", 4217), "u4217");
        assert_eq!(entity_id("m", u64::MAX), format!("m{}", u64::MAX));
    }

    #[test]
    fn partitions_split_the_count_and_keep_users_apart() {
        let config = GeneratorConfig {
            count: Some(1003),
            partitions: 4,
            users: 50,
            ..Default::default()
        };
        let mut total = 0;
        let mut users_by_partition = vec![std::collections::BTreeSet::new(); 4];
        for partition in 0..4 {
            let mut reader = GeneratorReader::open(&config, partition, &columns()).unwrap();
            let mut out = Vec::new();
            while reader.poll(&mut out, 100).unwrap() != Poll::Finished {}
            total += out.len();
            for record in &out {
                let RawBody::Fields(fields) = &record.body else {
                    panic!("generator gives fields")
                };
                let Value::Str(user) = &fields[0] else {
                    panic!("user is a string")
                };
                users_by_partition[partition as usize].insert(user.clone());
            }
        }
        assert_eq!(total, 1003);
        for (index, users) in users_by_partition.iter().enumerate() {
            for other in &users_by_partition[index + 1..] {
                assert!(users.is_disjoint(other), "a user appears in two partitions");
            }
        }
    }

    #[test]
    fn records_are_a_function_of_seed_partition_and_offset() {
        let config = GeneratorConfig {
            disorder_fraction: 0.3,
            disorder_max_ms: 500,
            ..Default::default()
        };
        assert_eq!(config.record(2, 77), config.record(2, 77));
        assert_ne!(config.record(2, 77), config.record(3, 77));
        let other_seed = GeneratorConfig {
            seed: 7,
            ..config.clone()
        };
        assert_ne!(config.record(2, 77), other_seed.record(2, 77));
    }

    #[test]
    fn bad_settings_are_rejected() {
        let config = GeneratorConfig {
            users: 2,
            partitions: 4,
            ..Default::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("users (2)")
        );
    }
}
