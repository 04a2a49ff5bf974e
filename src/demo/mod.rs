//! `tideflow demo`: one Kafka dataflow, run live and then as a backfill, on
//! an embedded broker, with nothing to install.
//!
//! Synthetic transactions are produced at a steady rate (each stamped with
//! the wall clock when it is sent) while `dataflows/fraud_kafka.toml` runs
//! live with micro-batches. Once production is over, the same topic is
//! replayed from the start as a bounded backfill with bulk batches. Both
//! runs read exactly the records produced before one cut-off time, so their
//! outputs must be identical, row for row: the demo checks it. Live latency
//! is the score record's Kafka timestamp minus the event's send time (both
//! in whole milliseconds), taken over the steady part of production: the
//! events of the last second wait for the end of the run, since no later
//! event moves the watermark past them, and the first second's include the
//! run's start. Last, the demo builds a training set from the same topic
//! ([`training`]).

mod training;

pub use training::TrainingReport;

use crate::dataflow::{RunOptions, run};
use crate::plan;
use crate::run::Summary;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{
    ClientOptions, EmbeddedBroker, GenerateOptions, produce_generated, read_topic,
};

/// The spec the demo runs.
pub const DEMO_SPEC: &str = "dataflows/fraud_kafka.toml";

/// The spec of the demo's training set.
pub const TRAINING_SPEC: &str = "dataflows/fraud_training.toml";

const INPUT_TOPIC: &str = "transactions";
const LIVE_SCORES: &str = "fraud-scores";
const BACKFILL_SCORES: &str = "fraud-scores-backfill";
const PARTITIONS: u32 = 4;

/// What the demo does.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Transactions produced.
    pub events: u64,
    /// Production rate, events per second.
    pub rate: f64,
    /// Worker threads of each run.
    pub workers: usize,
    /// Where the two runs write their score files.
    pub out: PathBuf,
}

/// What the demo measured.
#[derive(Debug)]
pub struct DemoReport {
    /// The live run's summary.
    pub live: Summary,
    /// The backfill's summary.
    pub backfill: Summary,
    /// Live latency.
    pub latency: LiveLatency,
    /// `None` when the two runs' outputs are identical, else the first
    /// difference.
    pub difference: Option<String>,
    /// The training set built from the same topic.
    pub training: TrainingReport,
}

/// Runs the demo.
pub fn run_demo(options: &DemoOptions) -> Result<DemoReport> {
    let spec = Path::new(DEMO_SPEC);
    if !spec.is_file() {
        return Err(Error::Runtime(format!(
            "{DEMO_SPEC} not found: run the demo from the root of the tideflow checkout"
        )));
    }
    let broker = EmbeddedBroker::start(1)?;
    let brokers = broker.bootstrap_servers();
    for (topic, partitions) in [
        (INPUT_TOPIC, PARTITIONS),
        (LIVE_SCORES, PARTITIONS),
        (BACKFILL_SCORES, PARTITIONS),
        ("fraud-dead-letters", 1),
    ] {
        broker.create_topic(topic, partitions)?;
    }
    let production = Duration::from_secs_f64(options.events as f64 / options.rate);
    // Both runs read every record sent before this time: the producer
    // finishes well before it.
    let cut_off = now_ms() + production.as_millis() as i64 + 2_000;
    let generate = GenerateOptions {
        brokers: brokers.clone(),
        topic: INPUT_TOPIC.into(),
        options: ClientOptions::default(),
        generator: GeneratorConfig {
            users: 10_000,
            merchants: 500,
            partitions: PARTITIONS,
            count: Some(options.events),
            rate: Some(options.rate),
            ..GeneratorConfig::default()
        },
        first: 0,
        wall_clock: true,
    };
    println!(
        "tideflow demo: embedded Kafka broker at {brokers}; producing {} transactions at {:.0}/s to '{INPUT_TOPIC}'",
        options.events, options.rate
    );
    let producer = std::thread::spawn(move || produce_generated(&generate, &|| false));
    println!("live run: {DEMO_SPEC}, micro-batches, scoring while the events arrive ...");
    let run_pass = |policy: &str, scores_topic: &str, dir: &str| {
        let out = options.out.join(dir);
        run_spec(
            &brokers,
            policy,
            scores_topic,
            &out,
            cut_off,
            options.workers,
        )
    };
    let live = run_pass("micro", LIVE_SCORES, "live")?;
    producer
        .join()
        .map_err(|_| Error::Runtime("the demo's producer thread panicked".into()))??;
    println!("backfill: the same topic from the earliest offset, bulk batches ...");
    let backfill = run_pass("bulk", BACKFILL_SCORES, "backfill")?;
    let latency = live_latency(&brokers)?;
    let difference = first_difference(&options.out.join("live"), &options.out.join("backfill"))?;
    let training = training::training_set(&broker, INPUT_TOPIC, &options.out, options.workers)?;
    Ok(DemoReport {
        live,
        backfill,
        latency,
        difference,
        training,
    })
}

fn run_spec(
    brokers: &str,
    policy: &str,
    scores_topic: &str,
    out: &Path,
    until_ms: i64,
    workers: usize,
) -> Result<Summary> {
    let overrides = vec![
        format!("source.brokers=\"{brokers}\""),
        "source.from=\"earliest\"".into(),
        format!("source.until=\"{until_ms}\""),
        format!("source.group_id=\"tideflow-demo-{policy}\""),
        // The embedded broker holds a fetch for its whole wait time when a
        // partition has nothing new (a real broker answers as data arrives).
        "source.options.\"fetch.wait.max.ms\"=\"5\"".into(),
        format!("batching.policy=\"{policy}\""),
        format!("sink[0].topic=\"{scores_topic}\""),
        format!("sink[1].path=\"{}\"", out.display()),
    ];
    let plan = plan::load(Path::new(DEMO_SPEC), &overrides)?;
    let summary = run(plan, &RunOptions::with_workers(workers))?;
    print!("{summary}");
    Ok(summary)
}

/// Live latency, event sent → score produced, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveLatency {
    /// Events scored.
    pub events: usize,
    /// Events sent in the steady part of production (all of them when
    /// production lasted under three seconds).
    pub steady_events: usize,
    /// p50 and p99 over those events.
    pub p50: i64,
    pub p99: i64,
    /// The largest latency of any event, the last second's included.
    pub max: i64,
}

impl LiveLatency {
    /// The latency of `samples`, each (send time, latency) in ms; `None`
    /// when there are none.
    pub fn of(samples: &[(i64, i64)]) -> Option<Self> {
        let first = samples.iter().map(|(sent, _)| *sent).min()?;
        let last = samples.iter().map(|(sent, _)| *sent).max()?;
        let max = samples.iter().map(|(_, latency)| *latency).max()?;
        let steady = |(sent, _): &&(i64, i64)| {
            last - first < 3_000 || (first + 1_000..=last - 1_000).contains(sent)
        };
        let mut latencies: Vec<i64> = samples
            .iter()
            .filter(steady)
            .map(|(_, latency)| *latency)
            .collect();
        latencies.sort_unstable();
        let at =
            |quantile: f64| latencies[((latencies.len() - 1) as f64 * quantile).round() as usize];
        Some(LiveLatency {
            events: samples.len(),
            steady_events: latencies.len(),
            p50: at(0.5),
            p99: at(0.99),
            max,
        })
    }
}

/// The live run's latency (see [`LiveLatency`]).
fn live_latency(brokers: &str) -> Result<LiveLatency> {
    let samples: Vec<(i64, i64)> = read_topic(brokers, LIVE_SCORES, &ClientOptions::default())?
        .iter()
        .filter_map(|record| {
            let row: serde_json::Value = serde_json::from_slice(&record.value).ok()?;
            let sent = row["ts"].as_i64()?;
            Some((sent, record.timestamp_ms? - sent))
        })
        .collect();
    LiveLatency::of(&samples)
        .ok_or_else(|| Error::Runtime("the live run produced no scores".into()))
}

/// Compares two directories of JSONL score files row by row, in
/// (`_partition`, `_offset`) order.
fn first_difference(left: &Path, right: &Path) -> Result<Option<String>> {
    let (left_rows, right_rows) = (sorted_rows(left)?, sorted_rows(right)?);
    if left_rows.len() != right_rows.len() {
        return Ok(Some(format!(
            "{} rows live, {} rows in the backfill",
            left_rows.len(),
            right_rows.len()
        )));
    }
    Ok(left_rows
        .iter()
        .zip(&right_rows)
        .find(|(live, backfill)| live != backfill)
        .map(|(live, backfill)| format!("live:     {live}\nbackfill: {backfill}")))
}

fn sorted_rows(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let read_error = |error: std::io::Error| Error::Sink {
        sink: dir.display().to_string(),
        message: error.to_string(),
    };
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let text =
            std::fs::read_to_string(entry.map_err(read_error)?.path()).map_err(read_error)?;
        for line in text.lines() {
            let row: serde_json::Value =
                serde_json::from_str(line).map_err(|error| Error::Sink {
                    sink: dir.display().to_string(),
                    message: error.to_string(),
                })?;
            rows.push(row);
        }
    }
    rows.sort_by_key(|row| (row["_partition"].as_u64(), row["_offset"].as_u64()));
    Ok(rows)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first and last second of production are left out of p50 and
    /// p99, not out of the maximum.
    #[test]
    fn latency_is_taken_over_the_steady_part() {
        // Ten seconds of events, one every 10 ms: 5 ms each, except 300 ms
        // in the first second and 2000 ms in the last.
        let samples: Vec<(i64, i64)> = (0..1_000)
            .map(|index| {
                let sent = 10_000 + index * 10;
                let latency = match sent {
                    ..11_000 => 300,
                    19_001.. => 2_000,
                    _ => 5,
                };
                (sent, latency)
            })
            .collect();
        let latency = LiveLatency::of(&samples).unwrap();
        assert_eq!(
            latency,
            LiveLatency {
                events: 1_000,
                steady_events: 800,
                p50: 5,
                p99: 5,
                max: 2_000,
            }
        );
    }

    /// A production too short to have a steady part is taken whole.
    #[test]
    fn a_short_production_is_taken_whole() {
        let samples = [(0, 7), (500, 9), (2_000, 40)];
        let latency = LiveLatency::of(&samples).unwrap();
        assert_eq!(
            (
                latency.events,
                latency.steady_events,
                latency.p50,
                latency.max
            ),
            (3, 3, 9, 40)
        );
        assert_eq!(LiveLatency::of(&[]), None);
    }
}
