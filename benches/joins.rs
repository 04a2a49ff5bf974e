//! Joins and training sets, each against a baseline measured in the same
//! run.
//!
//! - `asof`: generator transactions joined as of their time to a merchant
//!   table of `--keys` merchants with `--updates` versions (Parquet files,
//!   two partitions, each in time order), null sink; against a
//!   hand-written loop of the same join: it reads the same Parquet files,
//!   makes the same transactions, sorts both by time and walks them
//!   together, applying versions to a hash map and looking each
//!   transaction's merchant up. Also the engine without the join (the
//!   generator to the null sink), which bounds what the join can reach.
//! - `training`: a training set from Kafka history on the embedded broker
//!   (librdkafka's mock cluster): transactions, a merchant changelog of
//!   each `--tables` size (every merchant a version before the first
//!   transaction, then `--updates-per-key` more during them) and
//!   chargebacks for one transaction in fifty; the spec of
//!   `dataflows/fraud_training.toml` (features + join + label, to
//!   Parquet) against the same spec without its table, join and label
//!   (the features alone, to Parquet).
//!
//! Run: `cargo bench --bench joins -- asof --events 4000000 --keys 1000000 --updates 10000000`,
//! `cargo bench --bench joins -- training --events 1000000 --tables 10000,100000,1000000`.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use clap::{Parser, Subcommand};
use rustc_hash::FxHashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{
    ClientOptions, EmbeddedBroker, GenerateOptions, KafkaProducer, ProducerRecord,
    produce_generated,
};

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    which: Option<Which>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// The as-of join against a hand-written loop.
    Asof {
        #[arg(long, default_value_t = 4_000_000)]
        events: u64,
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 10_000_000)]
        updates: u64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// A training set from Kafka history against the features alone.
    Training {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        tables: Vec<u64>,
        #[arg(long, default_value_t = 1)]
        updates_per_key: u64,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

fn main() {
    common::allocate_as_the_binary_does();
    let args = Args::parse();
    match args.which.unwrap_or(Which::Asof {
        events: 4_000_000,
        keys: 1_000_000,
        updates: 10_000_000,
        repeats: 3,
    }) {
        Which::Asof {
            events,
            keys,
            updates,
            repeats,
        } => as_of(events, keys, updates, repeats),
        Which::Training {
            events,
            tables,
            updates_per_key,
            workers,
            repeats,
        } => training(events, &tables, updates_per_key, workers, repeats),
    }
}

/// Transactions spread over `merchants` merchants, 4 partitions, 1 ms
/// apart.
fn transactions(events: u64, merchants: u64) -> GeneratorConfig {
    GeneratorConfig {
        users: 100_000,
        merchants,
        count: Some(events),
        partitions: 4,
        spacing_ms: 1.0,
        ..GeneratorConfig::default()
    }
}

const AS_OF_SPEC: &str = r#"
name = "asof_bench"
[source]
type = "generator"
key = "user_id"
partitions = 4
spacing_ms = 1.0
[schema]
user_id = "string"
merchant_id = "string"
ts = "timestamp_ms"
[time]
field = "ts"
[[table]]
name = "merchants"
type = "files"
path = "unset"
format = "parquet"
key = "merchant_id"
[table.schema]
merchant_id = "string"
risk = "f64"
updated_at = "timestamp_ms"
[table.time]
field = "updated_at"
[[join]]
table = "merchants"
on = "merchant_id"
columns = ["risk"]
[batching]
policy = "bulk"
[[sink]]
type = "null"
[dead_letters]
type = "null"
"#;

/// The same transactions without the join: what the rest costs.
const NO_JOIN_SPEC: &str = r#"
name = "asof_bench_no_join"
[source]
type = "generator"
key = "user_id"
partitions = 4
spacing_ms = 1.0
[schema]
user_id = "string"
merchant_id = "string"
ts = "timestamp_ms"
[time]
field = "ts"
[batching]
policy = "bulk"
[[sink]]
type = "null"
[dead_letters]
type = "null"
"#;

/// Writes `updates` versions of `keys` merchants into two Parquet files,
/// each in time order, spread from an hour before the first transaction
/// to the last.
fn write_table(dir: &Path, config: &GeneratorConfig, keys: u64, updates: u64) {
    let first = config.start_ms - 3_600_000;
    let last = config.start_ms + config.count.unwrap_or(0) as i64;
    let mut random = 0x243f_6a88_85a3_08d3u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    std::fs::create_dir_all(dir).unwrap();
    for partition in 0..2u64 {
        let count = updates / 2 + if partition == 0 { updates % 2 } else { 0 };
        // Every merchant gets a version before the transactions, then the
        // rest fall anywhere in the span.
        let mut rows: Vec<(i64, u64, f64)> = (0..count)
            .map(|index| {
                let key = if index * 2 + partition < keys {
                    index * 2 + partition
                } else {
                    next() % keys
                };
                let time = if index * 2 + partition < keys {
                    first
                } else {
                    first + (next() % (last - first) as u64) as i64
                };
                (time, key, (next() % 1000) as f64 / 1000.0)
            })
            .collect();
        rows.sort_unstable_by_key(|(time, _, _)| *time);
        let file = std::fs::File::create(dir.join(format!("p{partition}.parquet"))).unwrap();
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("merchant_id", arrow_schema::DataType::Utf8, false),
            arrow_schema::Field::new("risk", arrow_schema::DataType::Float64, false),
            arrow_schema::Field::new("updated_at", arrow_schema::DataType::Int64, false),
        ]));
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        for chunk in rows.chunks(65_536) {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|(_, key, _)| format!("m{key}")),
                )),
                Arc::new(Float64Array::from_iter_values(
                    chunk.iter().map(|(_, _, risk)| *risk),
                )),
                Arc::new(Int64Array::from_iter_values(
                    chunk.iter().map(|(time, _, _)| *time),
                )),
            ];
            writer
                .write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
                .unwrap();
        }
        writer.close().unwrap();
    }
}

/// The hand-written join: reads the table files, makes the transactions,
/// sorts both by time and walks them together. Returns the sum of the
/// risks found (so that nothing is optimized away) and the matches.
fn hand_written_join(dir: &Path, config: &GeneratorConfig) -> (f64, u64) {
    let mut versions: Vec<(i64, u32, u64, String, f64)> = Vec::new();
    for partition in 0..2u32 {
        let file = std::fs::File::open(dir.join(format!("p{partition}.parquet"))).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut offset = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let keys = batch.column(0).as_string::<i32>();
            let risks = batch.column(1).as_primitive::<Float64Type>();
            let times = batch.column(2).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                versions.push((
                    times.value(row),
                    partition,
                    offset,
                    keys.value(row).to_owned(),
                    risks.value(row),
                ));
                offset += 1;
            }
        }
    }
    versions.sort_unstable_by_key(|(time, partition, offset, _, _)| (*time, *partition, *offset));
    let partitions = config.partitions;
    let per_partition = config.count.unwrap_or(0) / u64::from(partitions);
    let mut events: Vec<(i64, String)> = (0..per_partition)
        .flat_map(|offset| (0..partitions).map(move |partition| (partition, offset)))
        .map(|(partition, offset)| {
            let (_, merchant, _, time) = config.record(partition, offset);
            (time, format!("m{merchant}"))
        })
        .collect();
    events.sort_by_key(|(time, _)| *time);
    let mut current: FxHashMap<String, f64> = FxHashMap::default();
    let mut versions = versions.into_iter().peekable();
    let (mut sum, mut matched) = (0.0, 0);
    for (time, merchant) in &events {
        while let Some(version) = versions.next_if(|version| version.0 <= *time) {
            current.insert(version.3, version.4);
        }
        if let Some(risk) = current.get(merchant) {
            sum += risk;
            matched += 1;
        }
    }
    (sum, matched)
}

fn as_of(events: u64, keys: u64, updates: u64, repeats: usize) {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("merchants");
    let config = transactions(events, keys);
    let written = Instant::now();
    write_table(&table, &config, keys, updates);
    println!(
        "as-of join: {events} transactions, a table of {keys} merchants with {updates} versions (Parquet, written in {:.1} s), null sink",
        written.elapsed().as_secs_f64()
    );
    let overrides = vec![
        format!("source.count={events}"),
        format!("source.merchants={keys}"),
        format!("table[0].path=\"{}\"", table.display()),
    ];
    let no_join = vec![
        format!("source.count={events}"),
        format!("source.merchants={keys}"),
    ];
    let mut matched = 0;
    let timings = common::timed_interleaved(
        repeats,
        &mut [
            &mut || {
                let started = Instant::now();
                matched = hand_written_join(&table, &config).1;
                started.elapsed()
            },
            &mut || common::run_spec(AS_OF_SPEC, &overrides, 1).1,
            &mut || common::run_spec(AS_OF_SPEC, &overrides, 2).1,
            &mut || common::run_spec(NO_JOIN_SPEC, &no_join, 1).1,
        ],
    );
    let rate = |duration: Duration| events as f64 / duration.as_secs_f64();
    let (hand, one, two, bare) = (
        rate(timings[0].best),
        rate(timings[1].best),
        rate(timings[2].best),
        rate(timings[3].best),
    );
    println!(
        "{:>14} {:>15} {:>17} {:>10} {:>16} {:>22} {:>6}",
        "loop events/s",
        "engine 1w ev/s",
        "engine 2w ev/s/w",
        "1w / loop",
        "2w per w / loop",
        "1w no join / loop",
        "noise"
    );
    let noise = timings
        .iter()
        .map(common::Timings::spread)
        .fold(1.0, f64::max);
    println!(
        "{hand:>14.0} {one:>15.0} {:>17.0} {:>10.2} {:>16.2} {:>22.2} {noise:>6.2}",
        two / 2.0,
        one / hand,
        two / 2.0 / hand,
        bare / hand
    );
    println!("(the loop found a version for {matched} of {events} transactions)");
}

/// The training spec without its table, join and label: the features
/// alone, to Parquet.
fn features_only(spec: &str) -> String {
    let cut = |text: &str, from: &str, to: &str| -> String {
        let start = text.find(from).expect("the section is in the spec");
        let end = start + text[start..].find(to).expect("the end of the section");
        format!("{}{}", &text[..start], &text[end..])
    };
    let spec = cut(spec, "[[table]]", "# Per user");
    let spec = cut(&spec, "# Over the joined column", "# Per merchant");
    cut(&spec, "# A chargeback", "[batching]")
}

fn training(events: u64, tables: &[u64], updates_per_key: u64, workers: usize, repeats: usize) {
    let spec = std::fs::read_to_string(common::root().join("dataflows/fraud_training.toml"))
        .expect("dataflows/fraud_training.toml");
    let baseline = features_only(&spec);
    println!(
        "training set from Kafka history (embedded broker): {events} transactions, {workers} workers, Parquet out"
    );
    println!(
        "{:>12} {:>20} {:>22} {:>10} {:>6}",
        "table keys", "features ev/s", "training set ev/s", "ratio", "noise"
    );
    for keys in tables {
        let broker = EmbeddedBroker::start(1).expect("embedded broker");
        let brokers = broker.bootstrap_servers();
        // The mock cluster keeps 100,000 messages or 5 MB a partition.
        let partitions = |records: u64| (records / 40_000 + 1) as u32;
        let config = GeneratorConfig {
            partitions: partitions(events).max(4),
            ..transactions(events, *keys)
        };
        broker
            .create_topic("transactions", config.partitions)
            .unwrap();
        produce_generated(
            &GenerateOptions {
                brokers: brokers.clone(),
                topic: "transactions".into(),
                options: ClientOptions::default(),
                generator: config.clone(),
                first: 0,
                wall_clock: false,
            },
            &|| false,
        )
        .unwrap();
        let versions = keys * (1 + updates_per_key);
        broker
            .create_topic("merchants", partitions(versions))
            .unwrap();
        produce_changelog(&brokers, &config, *keys, updates_per_key);
        let chargebacks = events / 50 + 1;
        broker
            .create_topic("chargebacks", partitions(chargebacks))
            .unwrap();
        produce_chargebacks(&brokers, &config);
        let out = tempfile::tempdir().unwrap();
        let overrides = |name: &str| {
            vec![
                format!("source.brokers=\"{brokers}\""),
                "source.options.\"fetch.wait.max.ms\"=\"5\"".to_owned(),
                format!("sink[0].path=\"{}\"", out.path().join(name).display()),
                format!(
                    "dead_letters.path=\"{}\"",
                    out.path().join("dead").display()
                ),
            ]
        };
        let timings = common::timed_interleaved(
            repeats,
            &mut [
                &mut || common::run_spec(&baseline, &overrides("features"), workers).1,
                &mut || common::run_spec(&spec, &overrides("training"), workers).1,
            ],
        );
        let rate = |duration: Duration| events as f64 / duration.as_secs_f64();
        let (features, training) = (rate(timings[0].best), rate(timings[1].best));
        let noise = timings
            .iter()
            .map(common::Timings::spread)
            .fold(1.0, f64::max);
        println!(
            "{keys:>12} {features:>20.0} {training:>22.0} {:>10.2} {noise:>6.2}",
            training / features
        );
    }
}

/// Every merchant's version an hour before the first transaction, then
/// `updates_per_key` more each at a time within the transactions.
fn produce_changelog(brokers: &str, config: &GeneratorConfig, keys: u64, updates_per_key: u64) {
    let first = config.start_ms;
    let span = (config.count.unwrap_or(1) as f64 * config.spacing_ms) as u64 + 1;
    let mut versions: Vec<(i64, u64)> = (0..keys).map(|key| (first - 3_600_000, key)).collect();
    for round in 0..updates_per_key {
        versions.extend((0..keys).map(|key| {
            let drawn = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round) % span;
            (first + drawn as i64, key)
        }));
    }
    versions.sort_unstable();
    let producer = KafkaProducer::open(brokers, "merchants", &ClientOptions::default()).unwrap();
    for (time, key) in versions {
        let merchant = format!("m{key}");
        let value = format!(
            r#"{{"merchant_id":"{merchant}","risk":{},"category":"c{}","updated_at":{time}}}"#,
            (key % 100) as f64 / 100.0,
            key % 7
        );
        send(&producer, &merchant, &value);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// A chargeback for one transaction in fifty, reported a second after it.
fn produce_chargebacks(brokers: &str, config: &GeneratorConfig) {
    let producer = KafkaProducer::open(brokers, "chargebacks", &ClientOptions::default()).unwrap();
    let per_partition = config.count.unwrap_or(0) / u64::from(config.partitions);
    let mut labels: Vec<(i64, String)> = Vec::new();
    for partition in 0..config.partitions {
        for offset in (0..per_partition).step_by(50) {
            let (_, _, _, time) = config.record(partition, offset);
            labels.push((time + 1_000, format!("t{partition}-{offset}")));
        }
    }
    labels.sort_unstable();
    for (time, tx) in labels {
        let value = format!(r#"{{"tx_id":"{tx}","fraud":1,"reported_at":{time}}}"#);
        send(&producer, &tx, &value);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

fn send(producer: &KafkaProducer, key: &str, value: &str) {
    producer
        .send(&ProducerRecord {
            key: Some(key.as_bytes()),
            value: value.as_bytes(),
            headers: &[],
            partition: None,
            ticket: 0,
        })
        .unwrap();
}
