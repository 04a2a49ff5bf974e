//! The demo's last part: a training set from the topic the live run read.
//!
//! The demo reads its transactions back, produces a merchant changelog
//! (a first version of every merchant before any transaction, then new
//! risks for some merchants while the transactions happen) and
//! chargebacks for some transactions (reported up to three seconds after
//! them), then runs `dataflows/fraud_training.toml` over the three topics
//! as a backfill with a two-second horizon, and reads back the Parquet
//! training set it wrote.

use super::TRAINING_SPEC;
use crate::dataflow::{RunOptions, run};
use crate::plan;
use crate::run::Summary;
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use std::path::Path;
use tideflow_connectors::Value;
use tideflow_connectors::kafka::{
    ClientOptions, EmbeddedBroker, KafkaProducer, ProducerRecord, read_topic,
};

const MERCHANTS_TOPIC: &str = "merchants";
const CHARGEBACKS_TOPIC: &str = "chargebacks";
const CATEGORIES: [&str; 4] = ["grocery", "travel", "electronics", "gaming"];

/// What the training set holds.
#[derive(Debug)]
pub struct TrainingReport {
    /// The run's summary.
    pub summary: Summary,
    /// Rows written.
    pub rows: usize,
    /// Rows whose merchant had a version at their time.
    pub joined: usize,
    /// Rows labelled fraudulent.
    pub labelled: usize,
    /// Rows whose horizon had closed.
    pub complete: usize,
}

/// One transaction read back: its id, merchant, amount and time.
struct Transaction {
    id: String,
    merchant: String,
    amount: f64,
    time: i64,
}

/// Produces the changelog and the chargebacks for the transactions on
/// `input_topic`, runs the training spec over them, and reads it back.
pub fn training_set(
    broker: &EmbeddedBroker,
    input_topic: &str,
    out: &Path,
    workers: usize,
) -> Result<TrainingReport> {
    let brokers = broker.bootstrap_servers();
    let transactions = transactions(&brokers, input_topic)?;
    let (Some(first), Some(last)) = (
        transactions.iter().map(|tx| tx.time).min(),
        transactions.iter().map(|tx| tx.time).max(),
    ) else {
        return Err(Error::Runtime("the demo produced no transactions".into()));
    };
    broker.create_topic(MERCHANTS_TOPIC, 2)?;
    broker.create_topic(CHARGEBACKS_TOPIC, 2)?;
    let merchants: std::collections::BTreeSet<&str> =
        transactions.iter().map(|tx| tx.merchant.as_str()).collect();
    let versions = changelog(&merchants, (first, last));
    produce(&brokers, MERCHANTS_TOPIC, &versions)?;
    produce(&brokers, CHARGEBACKS_TOPIC, &chargebacks(&transactions))?;
    println!(
        "training set: {} merchant versions on '{MERCHANTS_TOPIC}', chargebacks on '{CHARGEBACKS_TOPIC}'; {TRAINING_SPEC} as a backfill, horizon 2s ...",
        versions.len()
    );
    let dir = out.join("training");
    let overrides = vec![
        format!("source.brokers=\"{brokers}\""),
        format!("source.topic=\"{input_topic}\""),
        "source.until=\"now\"".into(),
        "source.options.\"fetch.wait.max.ms\"=\"5\"".into(),
        "label[0].horizon=\"2s\"".into(),
        format!("sink[0].path=\"{}\"", dir.display()),
        format!(
            "dead_letters.path=\"{}\"",
            out.join("training-dead").display()
        ),
    ];
    let plan = plan::load(Path::new(TRAINING_SPEC), &overrides)?;
    let summary = run(plan, &RunOptions::with_workers(workers))?;
    print!("{summary}");
    let (rows, joined, labelled, complete) = read_training_set(&dir)?;
    Ok(TrainingReport {
        summary,
        rows,
        joined,
        labelled,
        complete,
    })
}

fn transactions(brokers: &str, topic: &str) -> Result<Vec<Transaction>> {
    Ok(read_topic(brokers, topic, &ClientOptions::default())?
        .iter()
        .filter_map(|record| {
            let row: serde_json::Value = serde_json::from_slice(&record.value).ok()?;
            Some(Transaction {
                id: row["tx_id"].as_str()?.to_owned(),
                merchant: row["merchant_id"].as_str()?.to_owned(),
                amount: row["amount"].as_f64()?,
                time: row["ts"].as_i64()?,
            })
        })
        .collect())
}

/// A number in `0..bound` decided by `text`, the same on every run.
fn drawn(text: &str, bound: u64) -> u64 {
    Value::Str(text.into()).stable_hash() % bound
}

/// Every merchant's first version a minute before the first transaction,
/// and for a third of them a new risk at a time within the transactions'
/// span: (key, JSON, time), in time order.
fn changelog(
    merchants: &std::collections::BTreeSet<&str>,
    (first, last): (i64, i64),
) -> Vec<(String, String, i64)> {
    let mut versions = Vec::new();
    for merchant in merchants {
        let risk = drawn(merchant, 100) as f64 / 100.0;
        let category = CATEGORIES[drawn(&format!("{merchant}/category"), 4) as usize];
        let version = |risk: f64, time: i64| {
            let json = serde_json::json!({"merchant_id": merchant, "risk": risk, "category": category, "updated_at": time});
            (merchant.to_string(), json.to_string(), time)
        };
        versions.push(version(risk, first - 60_000));
        if drawn(&format!("{merchant}/update"), 3) == 0 {
            let span = (last - first).max(1) as u64;
            let at = first + drawn(&format!("{merchant}/at"), span) as i64;
            versions.push(version((risk + 0.5).min(1.0), at));
        }
    }
    versions.sort_by_key(|(_, _, time)| *time);
    versions
}

/// A chargeback for about one transaction in fifty (one in five above 150),
/// reported up to three seconds after it: (key, JSON, time), in time order.
fn chargebacks(transactions: &[Transaction]) -> Vec<(String, String, i64)> {
    let mut labels: Vec<_> = transactions
        .iter()
        .filter(|tx| drawn(&tx.id, 100) < if tx.amount > 150.0 { 20 } else { 2 })
        .map(|tx| {
            let reported = tx.time + drawn(&format!("{}/delay", tx.id), 3_000) as i64;
            let json = serde_json::json!({"tx_id": tx.id, "fraud": 1, "reported_at": reported});
            (tx.id.clone(), json.to_string(), reported)
        })
        .collect();
    labels.sort_by_key(|(_, _, time)| *time);
    labels
}

fn produce(brokers: &str, topic: &str, records: &[(String, String, i64)]) -> Result<()> {
    let producer = KafkaProducer::open(brokers, topic, &ClientOptions::default())?;
    for (key, value, _) in records {
        producer.send(&ProducerRecord {
            key: Some(key.as_bytes()),
            value: value.as_bytes(),
            headers: &[],
            partition: None,
            ticket: 0,
        })?;
    }
    producer.flush(std::time::Duration::from_secs(30))?;
    Ok(())
}

/// Counts the training set's rows, joined rows, fraudulent rows and rows
/// whose horizon had closed.
fn read_training_set(dir: &Path) -> Result<(usize, usize, usize, usize)> {
    let fail = |message: String| Error::Sink {
        sink: dir.display().to_string(),
        message,
    };
    let (mut rows, mut joined, mut labelled, mut complete) = (0, 0, 0, 0);
    for entry in std::fs::read_dir(dir).map_err(|error| fail(error.to_string()))? {
        let path = entry.map_err(|error| fail(error.to_string()))?.path();
        let file = std::fs::File::open(&path).map_err(|error| fail(error.to_string()))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|builder| builder.build())
            .map_err(|error| fail(format!("{}: {error}", path.display())))?;
        for batch in reader {
            let batch = batch.map_err(|error| fail(error.to_string()))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| fail(format!("no column {name}")))
            };
            rows += batch.num_rows();
            joined += column("merchant_risk")?
                .as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .count();
            labelled += column("is_fraud")?
                .as_primitive::<Int64Type>()
                .iter()
                .filter(|label| *label == Some(1))
                .count();
            complete += column("_label_complete")?
                .as_boolean()
                .iter()
                .filter(|complete| *complete == Some(true))
                .count();
        }
    }
    Ok((rows, joined, labelled, complete))
}
