//! Fault injection on librdkafka's mock cluster, in process: a broker down
//! for seconds, fetch and produce requests failing with retriable errors,
//! produce requests failing for good, and a broker that cannot look up
//! offsets for times (the mock cluster answers the high watermark). The source resumes without loss, the sink retries
//! without dropping, and a failure that cannot be retried fails the run
//! loudly. The main Kafka tests (tests/kafka.rs) run on a real broker;
//! this file is only about faults the real broker cannot be made to have.

mod common;

use common::{now_ms, one_at_a_time, read_rows, require_onnxruntime, root};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tideflow::dataflow::{RunOptions, run};
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{
    ClientOptions, EmbeddedBroker, EndPosition, GenerateOptions, KafkaProducer, KafkaSourceConfig,
    ProducerRecord, RDKafkaApiKey, RDKafkaRespErr, StartPosition, TopicPartitions, open_partitions,
    produce_generated, read_topic,
};

const PARTITIONS: u32 = 3;

/// A mock cluster of three brokers with `topic` and its output topics, and
/// `count` generated events on `topic`.
fn cluster_with_events(topic: &str, count: u64) -> EmbeddedBroker {
    let cluster = EmbeddedBroker::start(3).unwrap();
    cluster.create_topic(topic, PARTITIONS).unwrap();
    // The mock cluster keeps at most 5 MB per partition, deleting the
    // oldest messages beyond: the scores (rows with every feature, the
    // model's outputs and two headers) get partitions enough to keep all.
    for name in [format!("{topic}-scores"), format!("{topic}-dead")] {
        cluster.create_topic(&name, 4 * PARTITIONS).unwrap();
    }
    let generator = GeneratorConfig {
        seed: 5,
        users: 200,
        merchants: 20,
        partitions: PARTITIONS,
        count: Some(count),
        ..GeneratorConfig::default()
    };
    let produced = produce_generated(
        &GenerateOptions {
            brokers: cluster.bootstrap_servers(),
            topic: topic.into(),
            options: ClientOptions::default(),
            generator,
            first: 0,
            wall_clock: false,
        },
        &|| false,
    )
    .unwrap();
    assert_eq!(produced, count);
    cluster
}

/// `dataflows/fraud_kafka.toml` as a bounded backfill of `topic` on the
/// cluster, scores to `topic-scores` and to files under `out`.
fn backfill(brokers: &str, topic: &str, out: &Path) -> tideflow::Result<tideflow::run::Summary> {
    let overrides = vec![
        format!("source.brokers=\"{brokers}\""),
        format!("source.topic=\"{topic}\""),
        format!("source.group_id=\"{topic}-group\""),
        "source.from=\"earliest\"".into(),
        "source.until=\"now\"".into(),
        "source.commit_interval=\"200ms\"".into(),
        "batching.policy=\"micro\"".into(),
        format!("sink[0].topic=\"{topic}-scores\""),
        format!("sink[1].path=\"{}\"", out.display()),
        format!("dead_letters.topic=\"{topic}-dead\""),
        // One produce request in flight per connection. The mock cluster
        // checks the sequence numbers of transactional producers only, so it
        // appends a request sent after one it refused; librdkafka then takes
        // the later success as proof that the refused records were written
        // too (its implicit acknowledgement) and reports them delivered. A
        // real broker refuses the later request as out of order and nothing
        // is lost: one request at a time gives the mock that behaviour.
        "sink[0].options.\"max.in.flight.requests.per.connection\"=1".into(),
        "dead_letters.options.\"max.in.flight.requests.per.connection\"=1".into(),
        format!(
            "model.path=\"{}\"",
            root().join("models/fraud_mlp.onnx").display()
        ),
    ];
    let plan = tideflow::plan::load(&root().join("dataflows/fraud_kafka.toml"), &overrides)?;
    run(plan, &RunOptions::with_workers(2))
}

/// Runs a backfill in a thread, lets `inject` inject faults once the run
/// has written its first rows, and checks that every event has exactly one
/// row in the files and at least one identical row on the scores topic.
fn backfill_survives(topic: &str, count: u64, inject: impl FnOnce(&EmbeddedBroker)) {
    require_onnxruntime();
    let cluster = cluster_with_events(topic, count);
    let out = tempfile::tempdir().unwrap();
    let running = {
        let (brokers, topic, out) = (
            cluster.bootstrap_servers(),
            topic.to_owned(),
            out.path().to_owned(),
        );
        std::thread::spawn(move || backfill(&brokers, &topic, &out))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read_lines_under(out.path()) == 0 {
        assert!(!running.is_finished(), "the run ended before writing a row");
        assert!(std::time::Instant::now() < deadline, "no row within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !running.is_finished(),
        "the run finished before the faults: raise the event count"
    );
    inject(&cluster);
    let summary = running
        .join()
        .unwrap()
        .expect("the run survives the faults");
    assert!(summary.counts.reconciles(), "{summary}");
    assert_eq!(summary.counts.records_in, count, "{summary}");

    let rows = read_rows(out.path());
    let mut in_files = BTreeMap::new();
    for row in &rows {
        let origin = (
            row["_partition"].as_u64().unwrap(),
            row["_offset"].as_u64().unwrap(),
        );
        assert!(
            in_files.insert(origin, row.clone()).is_none(),
            "{origin:?} written twice"
        );
    }
    assert_eq!(
        in_files.len() as u64 + summary.counts.dead + summary.counts.late,
        count,
        "every event has its row or dead letter"
    );

    let scores = read_topic(
        &cluster.bootstrap_servers(),
        &format!("{topic}-scores"),
        &ClientOptions::default(),
    )
    .unwrap();
    let mut on_topic = BTreeMap::new();
    for record in &scores {
        let row: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let origin = (
            row["_partition"].as_u64().unwrap(),
            row["_offset"].as_u64().unwrap(),
        );
        assert_eq!(
            Some(&row),
            in_files.get(&origin),
            "the topic's row for {origin:?} is not the file's"
        );
        on_topic.insert(origin, ());
    }
    assert_eq!(
        on_topic.len(),
        in_files.len(),
        "the sink dropped rows: the scores topic lacks some"
    );
}

/// Lines written so far to the files under `dir`.
fn read_lines_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
                .map(|bytes| bytes.iter().filter(|&&byte| byte == b'\n').count())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_broker_down_for_seconds_loses_nothing() {
    let _serial = one_at_a_time();
    backfill_survives("down", 20_000, |cluster| {
        cluster.broker_down(1).unwrap();
        cluster.broker_down(2).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        cluster.broker_up(1).unwrap();
        cluster.broker_up(2).unwrap();
    });
}

#[test]
fn retriable_fetch_and_produce_errors_lose_nothing() {
    let _serial = one_at_a_time();
    backfill_survives("flaky", 20_000, |cluster| {
        use RDKafkaRespErr::*;
        cluster.fail_requests(
            RDKafkaApiKey::Fetch,
            &[
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ],
        );
        cluster.fail_requests(
            RDKafkaApiKey::Produce,
            &[
                RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            ],
        );
    });
}

#[test]
fn a_sink_that_cannot_deliver_fails_the_run_loudly() {
    let _serial = one_at_a_time();
    require_onnxruntime();
    let topic = "refused";
    let cluster = cluster_with_events(topic, 500);
    // Every produce request from here on is refused for good.
    cluster.fail_requests(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000],
    );
    let out = tempfile::tempdir().unwrap();
    let error = backfill(&cluster.bootstrap_servers(), topic, out.path())
        .expect_err("a sink that cannot deliver must fail the run")
        .to_string();
    assert!(
        error.contains("refused-scores") || error.contains("refused-dead"),
        "the error names the topic it could not deliver to: {error}"
    );
    assert!(
        error.to_lowercase().contains("authoriz"),
        "the error gives the broker's reason: {error}"
    );
}

#[test]
fn a_time_start_is_found_by_binary_search_where_the_broker_cannot_look_it_up() {
    let _serial = one_at_a_time();
    let cluster = EmbeddedBroker::start(1).unwrap();
    let topic = "searched";
    cluster.create_topic(topic, 2).unwrap();
    let brokers = cluster.bootstrap_servers();
    // Partition p gets `before[p]` records, then the clock passes `mark`,
    // then 50 more: the first record at or after `mark` is at `before[p]`.
    let before = [137u64, 64];
    let producer = KafkaProducer::open(&brokers, topic, &ClientOptions::default()).unwrap();
    let send = |partition: u32, index: u64| {
        producer
            .send(&ProducerRecord {
                key: None,
                value: format!("{{\"index\":{index}}}").as_bytes(),
                headers: &[],
                partition: Some(partition),
                ticket: 0,
            })
            .unwrap();
    };
    for (partition, count) in before.iter().enumerate() {
        (0..*count).for_each(|index| send(partition as u32, index));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mark = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    for partition in 0..2 {
        (0..50).for_each(|index| send(partition, index));
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let config = KafkaSourceConfig {
        brokers,
        topics: vec![topic.into()],
        group_id: "searched".into(),
        options: ClientOptions::default(),
        start: StartPosition::Time(mark),
        end: EndPosition::Now,
        warm_up: false,
    };
    let partitions = std::sync::Arc::new(TopicPartitions::discover(&config).unwrap());
    let (readers, _) = open_partitions(&config, &partitions, &[0, 1]).unwrap();
    let starts: Vec<u64> = readers.iter().map(|reader| reader.start_offset()).collect();
    assert_eq!(starts, before, "the start offsets of time {mark}");
}
