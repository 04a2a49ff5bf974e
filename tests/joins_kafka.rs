//! Training sets over Kafka on the real broker: transactions, a merchant
//! changelog with tombstones, and chargebacks, each its own topic. The
//! rows of a backfill on 1 and 4 workers, of clusters of 1×4 and 2×2
//! processes, of a live run that reads the topics as they are produced,
//! and of a run that catches up from half the history must all equal the
//! oracle's (`tests/common/training.rs`).

mod common;

use common::broker::Broker;
use common::training::{
    Data, Inputs, Shape, assert_rows, event_json, generate, label_json, oracle, spec, version_json,
};
use common::{now_ms, one_at_a_time, output_overrides, read_rows, write_spec};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::path::Path;
use std::time::Duration;
use tideflow::run::Summary;
use tideflow_connectors::kafka::{ClientOptions, ensure_topic};

/// One record to produce: partition, key, value (`None`: a tombstone),
/// timestamp.
type Message = (u64, Option<String>, Option<String>, i64);

/// The data's messages by topic, in the order each partition holds them.
fn messages(data: &Data) -> [(&'static str, u32, Vec<Message>); 3] {
    let events = data
        .events
        .iter()
        .map(|event| {
            (
                event.partition,
                Some(event.user.clone()),
                Some(event_json(event)),
                event.time,
            )
        })
        .collect();
    let versions = data
        .versions
        .iter()
        .map(|version| {
            let key = Some(version.merchant.clone());
            (version.partition, key, version_json(version), version.time)
        })
        .collect();
    let labels = data
        .labels
        .iter()
        .map(|label| {
            (
                label.partition,
                Some(label.tx_id.clone()),
                Some(label_json(label)),
                label.time,
            )
        })
        .collect();
    [
        ("tx", 4, events),
        ("merchants", 2, versions),
        ("chargebacks", 2, labels),
    ]
}

/// Produces `messages` in order, with their timestamps; `keep` picks which.
fn produce(brokers: &str, topic: &str, messages: &[Message], keep: impl Fn(usize) -> bool) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // One request at a time: a retry never reorders a partition.
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("a producer");
    for (index, (partition, key, value, timestamp)) in messages.iter().enumerate() {
        if !keep(index) {
            continue;
        }
        let mut record = BaseRecord::<String, String>::to(topic)
            .partition(*partition as i32)
            .timestamp(*timestamp);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

fn create_topics(brokers: &str, data: &Data) {
    for (topic, partitions, _) in messages(data) {
        ensure_topic(brokers, &ClientOptions::default(), topic, partitions).unwrap();
    }
}

fn produce_all(brokers: &str, data: &Data, keep: impl Fn(usize, usize) -> bool) {
    for (topic, _, messages) in messages(data) {
        let count = messages.len();
        produce(brokers, topic, &messages, |index| keep(index, count));
    }
}

fn overrides(out: &Path, until: &str) -> Vec<String> {
    let mut overrides = output_overrides(out);
    overrides.push(format!("source.until=\"{until}\""));
    overrides
}

fn run_in_process(brokers: &str, out: &Path, until: &str, workers: usize) -> Summary {
    let text = spec(Inputs::Kafka(brokers));
    common::run_text(&text, &overrides(out, until), workers)
        .unwrap_or_else(|error| panic!("{error}"))
}

fn data(start: i64) -> Data {
    generate(
        Shape {
            start,
            partitions: (4, 2, 2),
            events: 150,
            deletions: true,
        },
        0x006b_6166_6b61,
    )
}

#[test]
fn backfills_and_clusters_give_the_oracles_rows() {
    let _turn = one_at_a_time();
    let broker = Broker::start();
    let brokers = broker.brokers.as_str();
    let data = data(1_700_000_000_000);
    assert!(
        data.versions.iter().any(|version| version.risk.is_none()),
        "the changelog deletes"
    );
    create_topics(brokers, &data);
    produce_all(brokers, &data, |_, _| true);
    let expected = oracle(&data);
    let out = tempfile::tempdir().unwrap();
    for workers in [1, 4] {
        let dir = out.path().join(format!("backfill-{workers}"));
        let summary = run_in_process(brokers, &dir, "now", workers);
        assert_rows(
            read_rows(&dir.join("rows")),
            &expected,
            &format!("backfill on {workers}"),
        );
        assert_eq!(
            summary.counts.records_in,
            data.events.len() as u64,
            "{summary}"
        );
        let inputs = (data.versions.len() + data.labels.len()) as u64;
        assert_eq!(summary.counts.inputs_in, inputs, "{summary}");
        assert_eq!(
            summary.counts.inputs_dead + summary.counts.inputs_late,
            0,
            "{summary}"
        );
    }
    let spec_file = write_spec(out.path(), "training.toml", &spec(Inputs::Kafka(brokers)));
    for (processes, workers) in [(1, 4), (2, 2)] {
        let dir = out.path().join(format!("cluster-{processes}x{workers}"));
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"));
        command
            .args(["launch", spec_file.to_str().unwrap(), "--quiet"])
            .args(["--processes", &processes.to_string()])
            .args(["--workers", &workers.to_string()]);
        for value in overrides(&dir, "now") {
            command.args(["--set", &value]);
        }
        let output = command.output().unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{}\n{log}", output.status);
        assert_rows(
            read_rows(&dir.join("rows")),
            &expected,
            &format!("{processes}x{workers} processes"),
        );
    }
}

#[test]
fn live_and_catch_up_runs_give_the_oracles_rows() {
    let _turn = one_at_a_time();
    let out = tempfile::tempdir().unwrap();
    for (name, history) in [("live", 0.0), ("catch-up", 0.5)] {
        // A fresh broker's topics per run: the same offsets as the oracle's.
        let broker = Broker::start();
        let brokers = broker.brokers.clone();
        // Event times from now: the run ends when the clock passes the
        // cut-off, after everything is produced.
        let start = now_ms() + 1_000;
        let data = data(start);
        let cut_off = start + 8_000;
        create_topics(&brokers, &data);
        let before = |index: usize, count: usize| (index as f64) < count as f64 * history;
        produce_all(&brokers, &data, before);
        let dir = out.path().join(name);
        let running = {
            let (brokers, dir) = (brokers.clone(), dir.clone());
            std::thread::spawn(move || run_in_process(&brokers, &dir, &cut_off.to_string(), 2))
        };
        std::thread::sleep(Duration::from_millis(300));
        produce_all(&brokers, &data, |index, count| !before(index, count));
        let summary = running.join().unwrap();
        assert_eq!(
            summary.counts.records_in,
            data.events.len() as u64,
            "{name}: {summary}"
        );
        assert_eq!(summary.counts.inputs_late, 0, "{name}: {summary}");
        assert_rows(read_rows(&dir.join("rows")), &oracle(&data), name);
    }
}
