//! Kafka end to end, against a real Kafka-protocol broker (tansu, started
//! per test on a free loopback port): the same events scored live, as a
//! backfill and as a catch-up give identical rows on any number of
//! workers; every start position starts where it says; bad messages become
//! dead letters with their origin; a killed run restarted from its
//! committed offsets loses nothing; an external client (Python
//! confluent-kafka) reads the scores. The tests take one broker each and run
//! one at a time: live runs depend on timely production, which a loaded
//! 2-core machine does not give when several run at once.

mod common;

use common::broker::Broker;
use common::{now_ms, one_at_a_time, read_lines, read_rows, require_onnxruntime, root};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};
use tideflow::dataflow::{RunOptions, run};
use tideflow::run::Summary;
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{
    ClientOptions, GenerateOptions, KafkaProducer, ProducerRecord, committed_offsets, ensure_topic,
    produce_generated, read_topic,
};

const PARTITIONS: u32 = 4;

fn generator(count: u64, rate: Option<f64>, seed: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed,
        users: 300,
        merchants: 20,
        partitions: PARTITIONS,
        count: Some(count),
        rate,
        spacing_ms: 20.0,
        disorder_fraction: 0.05,
        disorder_max_ms: 3_000,
        ..GeneratorConfig::default()
    }
}

/// Produces the generator's records `offset_from..` of each partition.
fn produce(broker: &Broker, topic: &str, config: GeneratorConfig) -> u64 {
    produce_generated(
        &GenerateOptions {
            brokers: broker.brokers.clone(),
            topic: topic.into(),
            options: ClientOptions::default(),
            generator: config,
            first: 0,
            wall_clock: false,
        },
        &|| false,
    )
    .expect("producing test events")
}

/// Creates the topics a fraud_kafka run writes to, named after `topic`.
fn output_topics(broker: &Broker, topic: &str) {
    for name in [format!("{topic}-scores"), format!("{topic}-dead")] {
        ensure_topic(
            &broker.brokers,
            &ClientOptions::default(),
            &name,
            PARTITIONS,
        )
        .unwrap();
    }
}

/// What a Kafka test holds: a broker of its own, a scratch directory and
/// its turn (the tests run one at a time). Fields drop in the order
/// declared, so the broker stops before the turn passes on.
struct KafkaTest {
    broker: Broker,
    out: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl KafkaTest {
    /// Waits for the test's turn, checks for ONNX Runtime, starts a broker.
    fn start() -> Self {
        let turn = one_at_a_time();
        require_onnxruntime();
        KafkaTest {
            broker: Broker::start(),
            out: tempfile::tempdir().unwrap(),
            _turn: turn,
        }
    }

    /// As [`KafkaTest::start`], with `count` generator events (seeded by
    /// `seed`) on `topic` and the output topics a fraud_kafka run writes to.
    fn with_events(topic: &str, count: u64, seed: u64) -> Self {
        let test = KafkaTest::start();
        produce(&test.broker, topic, generator(count, None, seed));
        output_topics(&test.broker, topic);
        test
    }
}

/// Runs `dataflows/fraud_kafka.toml` in process against `topic`.
fn run_fraud_kafka(
    brokers: &str,
    topic: &str,
    out: &Path,
    from: &str,
    until: &str,
    workers: usize,
) -> Summary {
    let mut overrides = vec![format!("source.topic=\"{topic}\"")];
    overrides.extend(fraud_kafka_overrides(brokers, topic, out, from, until));
    run_spec(
        &root().join("dataflows/fraud_kafka.toml"),
        &overrides,
        workers,
    )
}

/// Overrides that point a fraud_kafka run at the test broker, with a group
/// and output topics named after `name`.
fn fraud_kafka_overrides(
    brokers: &str,
    name: &str,
    out: &Path,
    from: &str,
    until: &str,
) -> Vec<String> {
    vec![
        format!("source.brokers=\"{brokers}\""),
        format!(
            "source.group_id=\"{name}-{}\"",
            out.file_name().unwrap().to_string_lossy()
        ),
        format!("source.from=\"{from}\""),
        format!("source.until=\"{until}\""),
        "time.max_out_of_orderness=\"2s\"".into(),
        format!("sink[0].topic=\"{name}-scores\""),
        format!("sink[1].path=\"{}\"", out.display()),
        format!("dead_letters.topic=\"{name}-dead\""),
        format!(
            "model.path=\"{}\"",
            root().join("models/fraud_mlp.onnx").display()
        ),
    ]
}

/// Runs a spec in process and checks that its counts reconcile.
fn run_spec(spec: &Path, overrides: &[String], workers: usize) -> Summary {
    let plan = tideflow::plan::load(spec, overrides).expect("the spec loads");
    let summary = run(plan, &RunOptions::with_workers(workers)).expect("the run succeeds");
    assert!(summary.counts.reconciles(), "{summary}");
    summary
}

#[test]
fn live_backfill_and_catch_up_give_identical_rows_on_any_number_of_workers() {
    let test = KafkaTest::start();
    let (broker, out) = (&test.broker, &test.out);
    let count = 2_400;

    // Backfill: everything produced first, then read up to the high
    // watermarks, on 1 and 4 workers.
    let topic = "parity-backfill";
    produce(broker, topic, generator(count, None, 7));
    output_topics(broker, topic);
    let backfill = out.path().join("backfill-1");
    let summary = run_fraud_kafka(&broker.brokers, topic, &backfill, "earliest", "now", 1);
    assert_eq!(summary.counts.records_in, count);
    assert!(
        summary.counts.late > 0,
        "the input should hold late records: {summary}"
    );
    let expected = read_lines(&backfill);
    assert!(!expected.is_empty());
    let four = out.path().join("backfill-4");
    run_fraud_kafka(&broker.brokers, topic, &four, "earliest", "now", 4);
    assert_eq!(read_lines(&four), expected, "backfill on 4 workers differs");

    // Live: the run starts first and consumes while the events are produced.
    // Both live runs stop at a cut-off time after the last event is sent.
    let rate = 1_200.0;
    let cut_off = now_ms() + (count as f64 / rate * 1000.0) as i64 + 3_000;
    let topic = "parity-live";
    ensure_topic(
        &broker.brokers,
        &ClientOptions::default(),
        topic,
        PARTITIONS,
    )
    .unwrap();
    output_topics(broker, topic);
    let live = out.path().join("live");
    let running = run_until_in_background(broker, topic, &live, cut_off);
    produce(broker, topic, generator(count, Some(rate), 7));
    running.join().unwrap();
    assert_eq!(
        read_lines(&live),
        expected,
        "live rows differ from the backfill"
    );

    // Catch-up: half the events are history when the run starts, the rest
    // arrive while it runs.
    let cut_off = now_ms() + (count as f64 / 2.0 / rate * 1000.0) as i64 + 3_000;
    let topic = "parity-catch-up";
    produce(broker, topic, generator(count / 2, None, 7));
    output_topics(broker, topic);
    let catch_up = out.path().join("catch-up");
    let running = run_until_in_background(broker, topic, &catch_up, cut_off);
    let second_half = GenerateOptions {
        brokers: broker.brokers.clone(),
        topic: topic.into(),
        options: ClientOptions::default(),
        generator: generator(count - count / 2, Some(rate), 7),
        first: count / 2,
        wall_clock: false,
    };
    produce_generated(&second_half, &|| false).unwrap();
    running.join().unwrap();
    assert_eq!(
        read_lines(&catch_up),
        expected,
        "catch-up rows differ from the backfill"
    );
}

/// Starts a 2-worker run of `topic` from the earliest offset until the
/// message timestamp `cut_off`, in a thread, so events can be produced
/// while it consumes them.
fn run_until_in_background(
    broker: &Broker,
    topic: &str,
    out: &Path,
    cut_off: i64,
) -> std::thread::JoinHandle<Summary> {
    let (brokers, topic, out) = (broker.brokers.clone(), topic.to_owned(), out.to_owned());
    std::thread::spawn(move || {
        run_fraud_kafka(&brokers, &topic, &out, "earliest", &cut_off.to_string(), 2)
    })
}

/// The rows of a run keyed by (partition, offset).
fn origins(dir: &Path) -> Vec<(u64, u64)> {
    read_rows(dir)
        .iter()
        .map(|row| {
            (
                row["_partition"].as_u64().unwrap(),
                row["_offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_start_position_starts_where_it_says() {
    let test = KafkaTest::start();
    let (broker, out) = (&test.broker, &test.out);
    let topic = "positions";
    output_topics(broker, topic);
    let brokers = broker.brokers.as_str();
    // Phase one: 200 records; the group "committed" reads them all.
    produce(broker, topic, generator(200, None, 3));
    let first = out.path().join("committed-first");
    let summary = run_fraud_kafka(brokers, topic, &first, "earliest", "now", 2);
    assert_eq!(summary.counts.records_in, 200, "{summary}");
    std::thread::sleep(Duration::from_millis(50));
    let middle = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    // Phase two: 200 more, produced after `middle`.
    let phase_two = GenerateOptions {
        brokers: brokers.to_owned(),
        topic: topic.into(),
        options: ClientOptions::default(),
        generator: generator(200, None, 3),
        first: 200,
        wall_clock: false,
    };
    produce_generated(&phase_two, &|| false).unwrap();

    let run_from = |name: &str, from: &str| {
        let dir = out.path().join(name);
        let summary = run_fraud_kafka(brokers, topic, &dir, from, "now", 2);
        (summary, origins(&dir))
    };
    let (summary, all) = run_from("earliest", "earliest");
    assert_eq!(
        summary.counts.records_in, 400,
        "--until now reads up to the high watermarks"
    );
    assert_eq!(all.len() as u64, summary.counts.rows_out);
    for partition in 0..4 {
        let offsets: Vec<u64> = all
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            offsets.first(),
            Some(&0),
            "partition {partition} starts at 0"
        );
    }

    let (summary, _) = run_from("latest", "latest");
    assert_eq!(
        summary.counts.records_in, 0,
        "latest reads nothing already produced"
    );

    let (summary, _) = run_from("time", &middle.to_string());
    assert_eq!(
        summary.counts.records_in, 200,
        "a time starts at the first record after it"
    );
    let rfc3339 = humantime_string(middle);
    let (summary, _) = run_from("time-rfc3339", &rfc3339);
    assert_eq!(
        summary.counts.records_in, 200,
        "{rfc3339} starts at the first record after it"
    );

    let (summary, explicit) = run_from("offsets", "0:10,1:20,2:30");
    assert_eq!(summary.counts.records_in, 400 - 60, "{summary}");
    for (partition, first) in [(0, 10), (1, 20), (2, 30), (3, 0)] {
        let lowest = explicit
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .min();
        assert!(
            lowest.is_none_or(|lowest| lowest >= first),
            "partition {partition} from {first}"
        );
    }

    // The group of the first run (named after its directory) committed
    // everything it read.
    let again = run_fraud_kafka(brokers, topic, &first, "committed", "now", 2);
    assert_eq!(
        again.counts.records_in, 200,
        "committed resumes after what was read: {again}"
    );
}

/// A partition already read to its end when a run starts is replayed all
/// the same: features keyed by another field than the source key (here
/// the merchant's) need its records to rebuild the windows that the other
/// partitions' rows read. The rows of a run resumed part way are those of
/// a run from the earliest offsets, bit for bit.
#[test]
fn a_resumed_run_rebuilds_windows_from_partitions_with_nothing_left_to_read() {
    let topic = "resume-at-ends";
    let test = KafkaTest::with_events(topic, 4_000, 13);
    let (broker, out) = (&test.broker, &test.out);
    let rows_by_origin = |dir: &Path| -> std::collections::BTreeMap<(u64, u64), String> {
        read_rows(dir)
            .into_iter()
            .map(|row| {
                let origin = (
                    row["_partition"].as_u64().unwrap(),
                    row["_offset"].as_u64().unwrap(),
                );
                (origin, row.to_string())
            })
            .collect()
    };
    let earliest = out.path().join("earliest");
    run_fraud_kafka(&broker.brokers, topic, &earliest, "earliest", "now", 2);
    let all = rows_by_origin(&earliest);
    let end = |partition: u64| {
        all.keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, offset)| offset + 1)
            .max()
            .unwrap()
    };
    // Partitions 1 and 3 start at their ends, 0 and 2 half way.
    let from = format!(
        "0:{},1:{},2:{},3:{}",
        end(0) / 2,
        end(1),
        end(2) / 2,
        end(3)
    );
    let resumed = out.path().join("resumed");
    let summary = run_fraud_kafka(&broker.brokers, topic, &resumed, &from, "now", 2);
    assert_eq!(
        summary.counts.records_in,
        end(0) - end(0) / 2 + end(2) - end(2) / 2,
        "{summary}"
    );
    let rows = rows_by_origin(&resumed);
    assert!(!rows.is_empty(), "{summary}");
    for (origin, row) in &rows {
        assert_eq!(Some(row), all.get(origin), "the row of {origin:?}");
    }
}

fn humantime_string(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

#[test]
fn malformed_messages_become_dead_letters_with_their_origin() {
    let _serial = one_at_a_time();
    let broker = Broker::start();
    let brokers = broker.brokers.as_str();
    let (topic, dead_topic) = ("malformed", "malformed-dead");
    for name in [topic, dead_topic] {
        ensure_topic(brokers, &ClientOptions::default(), name, 1).unwrap();
    }
    let producer = KafkaProducer::open(brokers, topic, &ClientOptions::default()).unwrap();
    let messages: [(Option<&str>, &str); 6] = [
        (Some("u1"), r#"{"amount": 1.5, "ts": 1000}"#),
        (Some("u1"), "not json"),
        (Some("u1"), r#"{"amount": "ten", "ts": 1001}"#),
        (Some("u1"), ""),
        (None, r#"{"amount": 2.0, "ts": 1002}"#),
        (Some("u2"), r#"{"amount": 3.0, "ts": 1003}"#),
    ];
    for (key, value) in messages {
        producer
            .send(&ProducerRecord {
                key: key.map(str::as_bytes),
                value: value.as_bytes(),
                headers: &[],
                partition: Some(0),
                ticket: 0,
            })
            .unwrap();
    }
    // Not UTF-8, with headers of its own: its dead letter keeps the value,
    // the key and the headers as they came.
    let (odd_value, odd_header): (&[u8], &[u8]) = (b"\xff\xfe{", b"t-\x01\xff");
    producer
        .send(&ProducerRecord {
            key: Some(b"u3"),
            value: odd_value,
            headers: &[("trace", odd_header)],
            partition: Some(0),
            ticket: 0,
        })
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let spec = format!(
        r#"
name = "malformed"
[source]
type = "kafka"
brokers = "{brokers}"
topic = "{topic}"
key = "kafka_key"
from = "earliest"
until = "now"
[schema]
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[feature]]
name = "amount_sum"
agg = "sum"
field = "amount"
[[sink]]
type = "jsonl"
path = "{}"
[dead_letters]
type = "kafka"
topic = "{dead_topic}"
"#,
        out.path().display()
    );
    let summary = common::run_text(&spec, &[], 1).expect("the run succeeds");
    assert_eq!(summary.counts.records_in, 7, "{summary}");
    assert_eq!(summary.counts.rows_out, 2, "{summary}");
    assert_eq!(summary.counts.dead, 5, "{summary}");
    assert!(summary.counts.reconciles());
    let rows = read_rows(out.path());
    assert_eq!(rows[0]["kafka_key"], "u1");
    assert_eq!(rows[1]["kafka_key"], "u2");

    let letters = read_topic(brokers, dead_topic, &ClientOptions::default()).unwrap();
    let header = |letter: &tideflow_connectors::kafka::TopicRecord, name: &str| {
        let (_, value) = letter.headers.iter().find(|(key, _)| key == name).unwrap();
        String::from_utf8(value.clone()).unwrap()
    };
    let found: Vec<(String, String, String, String)> = letters
        .iter()
        .map(|letter| {
            (
                header(letter, "tideflow-offset"),
                header(letter, "tideflow-error"),
                header(letter, "tideflow-source"),
                String::from_utf8_lossy(&letter.value).into_owned(),
            )
        })
        .collect();
    assert_eq!(found.len(), 5, "{found:?}");
    let reasons: Vec<(&str, &str)> = found
        .iter()
        .map(|(offset, error, ..)| (offset.as_str(), error.as_str()))
        .collect();
    let expected = [
        ("1", "JSON"),
        ("2", "amount"),
        ("3", "empty"),
        ("4", "kafka_key"),
        ("6", "UTF-8"),
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:?}");
    for ((offset, error), (expected_offset, word)) in reasons.iter().zip(expected) {
        assert!(
            *offset == expected_offset && error.contains(word),
            "dead letter at offset {offset} ({error}) should be offset {expected_offset}, mentioning {word}"
        );
    }
    assert!(found.iter().all(|(_, _, source, _)| source == topic));
    assert_eq!(found[0].3, "not json");
    for letter in &letters {
        assert_eq!(header(letter, "tideflow-partition"), "0");
    }
    let odd = &letters[4];
    assert_eq!(odd.value, odd_value);
    assert_eq!(odd.key.as_deref(), Some(&b"u3"[..]));
    assert!(
        odd.headers
            .contains(&("trace".to_owned(), odd_header.to_vec())),
        "{:?}",
        odd.headers
    );
    assert_eq!(letters[0].key.as_deref(), Some(&b"u1"[..]));
}

#[test]
fn a_killed_run_restarted_from_committed_offsets_loses_nothing() {
    let topic = "killed";
    let count = 40_000;
    let test = KafkaTest::with_events(topic, count, 11);
    let (broker, out) = (&test.broker, &test.out);
    let command = |name: &str| {
        let mut command = fraud_kafka_command("run", broker, topic, &out.path().join(name));
        command.args(["--workers", "2"]);
        committing_often_as(&mut command, "killed");
        command
    };
    let mut first = command("first").spawn().unwrap();
    wait_for_a_commit(&mut first, broker, "killed", topic);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    assert_the_restart_resumes(command("second"), &out.path().join("second"), count);
    assert_every_record_has_one_output(broker, topic, count);
}

/// A checkpointed fraud_kafka run over `count` events to kill and start
/// again, writing to files and topics of its own, beside an uninterrupted
/// run of the same events to compare with.
struct KilledKafkaRun {
    test: KafkaTest,
    topic: &'static str,
    count: u64,
    /// The uninterrupted run's file sink.
    reference: std::path::PathBuf,
    /// The killed runs' file sink.
    out: std::path::PathBuf,
    scores: String,
    dead: String,
}

impl KilledKafkaRun {
    /// Produces the events, runs the uninterrupted run, and makes the
    /// killed runs' topics, named after `name`.
    fn new(topic: &'static str, name: &str, count: u64) -> Self {
        let test = KafkaTest::with_events(topic, count, 17);
        let reference = test.out.path().join("reference");
        run_fraud_kafka(
            &test.broker.brokers,
            topic,
            &reference,
            "earliest",
            "now",
            2,
        );
        let (scores, dead) = (
            format!("{topic}-{name}-scores"),
            format!("{topic}-{name}-dead"),
        );
        for topic in [&scores, &dead] {
            ensure_topic(
                &test.broker.brokers,
                &ClientOptions::default(),
                topic,
                PARTITIONS,
            )
            .unwrap();
        }
        KilledKafkaRun {
            out: test.out.path().join(name),
            test,
            topic,
            count,
            reference,
            scores,
            dead,
        }
    }

    /// Where the runs keep their checkpoints.
    fn state(&self) -> &Path {
        self.test.out.path()
    }

    /// The newest committed checkpoint.
    fn newest_checkpoint(&self) -> Option<(u64, std::path::PathBuf)> {
        common::committed_checkpoints(self.state()).pop()
    }

    /// `tideflow run` of the killed runs on `workers` workers, checkpoints
    /// every 100 ms, standard error dropped.
    fn command(&self, workers: usize) -> std::process::Command {
        let mut command = fraud_kafka_command("run", &self.test.broker, self.topic, &self.out);
        command
            .args(["--workers", &workers.to_string()])
            .args(["--set", "source.from=\"earliest\""])
            .args(["--set", "batching.policy=\"micro\""])
            .args(["--set", &format!("sink[0].topic=\"{}\"", self.scores)])
            .args(["--set", &format!("dead_letters.topic=\"{}\"", self.dead)])
            .args([
                "--set",
                &format!("state.dir=\"{}\"", self.state().join("state").display()),
            ])
            .args(["--set", "state.interval=\"100ms\""])
            .stderr(std::process::Stdio::null());
        command
    }

    /// Runs `command` to the end: it must succeed, start from a
    /// checkpoint and read only what came after it.
    fn finish(&self, mut command: std::process::Command) {
        let last = command
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&last.stderr);
        assert!(last.status.success(), "the last run failed: {stderr}");
        assert!(stderr.contains("restored checkpoint"), "{stderr}");
        let read = common::summary_number(&stderr, "records in");
        assert!(
            read < self.count,
            "the last run read {read} of {} records",
            self.count
        );
        assert!(!stderr.contains("replayed"), "{stderr}");
    }

    /// The files, scores topic and dead-letter topic equal the
    /// uninterrupted run's: each row once, the same bytes.
    fn assert_same_as_reference(&self) {
        let (got, expected) = (read_lines(&self.out), read_lines(&self.reference));
        assert_eq!(got.len(), expected.len(), "rows lost or written twice");
        assert_eq!(got, expected);
        let broker = &self.test.broker;
        assert_eq!(
            scores_by_origin(broker, &self.scores),
            scores_by_origin(broker, &format!("{}-scores", self.topic)),
            "the killed runs' topic differs from the uninterrupted run's"
        );
        let dead = dead_letters_by_origin(broker, &self.dead);
        assert!(!dead.is_empty(), "the input has late records");
        assert_eq!(
            dead,
            dead_letters_by_origin(broker, &format!("{}-dead", self.topic)),
            "the killed runs' dead letters differ from the uninterrupted run's"
        );
    }
}

/// The next of a fixed sequence of pseudo-random numbers.
fn next_random(random: &mut u64) -> u64 {
    *random ^= *random << 13;
    *random ^= *random >> 7;
    *random ^= *random << 17;
    *random
}

/// With checkpoints, a Kafka run killed with SIGKILL twenty times at
/// random points and run once more to the end writes exactly the rows of
/// one uninterrupted run into its file sink: none lost, none twice, the
/// same bytes; and the consumer group's offsets follow the checkpoints.
#[test]
fn a_checkpointed_kafka_run_killed_twenty_times_writes_each_row_once() {
    let run = KilledKafkaRun::new("checkpointed", "killed", 30_000);
    // Each run is killed at a random point after it has committed a
    // checkpoint of its own, so that every run gets further.
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    while kills < 20 {
        let before = run.newest_checkpoint();
        let mut child = run.command(2).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while run.newest_checkpoint() == before && child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 120 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(next_random(&mut random) % 300));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    run.finish(run.command(2));
    run.assert_same_as_reference();
    let (broker, topic, count) = (&run.test.broker, run.topic, run.count);
    let committed = committed_offsets(
        &broker.brokers,
        &format!("{topic}-killed"),
        topic,
        &ClientOptions::default(),
    )
    .unwrap();
    let total: u64 = committed.values().sum();
    assert_eq!(total, count, "{committed:?}");
}

/// With checkpoints, a cluster of two processes reading Kafka, killed with
/// SIGKILL three times after checkpoints of its own and finished by one
/// process of two workers, writes exactly the rows of one uninterrupted
/// run, to files and to topics: each process reads back what it wrote
/// after the checkpoint, and the single process what both did.
#[test]
fn a_checkpointed_kafka_cluster_restored_onto_one_process_writes_each_row_once() {
    let run = KilledKafkaRun::new("clustered", "cluster", 30_000);
    let hosts = common::hosts_file(&run.state().join("cluster.toml"), 2);
    let mut random = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..3 {
        let before = run.newest_checkpoint();
        let mut members = common::Members::start(&hosts, 2, |_| run.command(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while run.newest_checkpoint() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 120 s:\n{}",
                members.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(next_random(&mut random) % 300));
        assert!(
            members.all_running(),
            "the cluster ended before it was killed: raise the count\n{}",
            members.logs()
        );
        members.kill();
    }
    run.finish(run.command(2));
    run.assert_same_as_reference();
}

/// The dead letters on a topic (reason and record) by their origin,
/// failing on an origin written twice.
fn dead_letters_by_origin(
    broker: &Broker,
    topic: &str,
) -> std::collections::BTreeMap<(String, String), (String, Vec<u8>)> {
    let mut by_origin = std::collections::BTreeMap::new();
    for record in read_topic(&broker.brokers, topic, &ClientOptions::default()).unwrap() {
        let header = |name: &str| {
            let (_, value) = record.headers.iter().find(|(key, _)| key == name).unwrap();
            String::from_utf8(value.clone()).unwrap()
        };
        let origin = (header("tideflow-partition"), header("tideflow-offset"));
        let letter = (header("tideflow-error"), record.value.clone());
        if by_origin.insert(origin.clone(), letter).is_some() {
            panic!("{topic}: the dead letter of {origin:?} is there twice");
        }
    }
    by_origin
}

/// The rows on a scores topic by their origin (`_partition`, `_offset`),
/// failing on an origin written twice (naming where each copy landed and
/// when, to tell which run wrote it).
fn scores_by_origin(
    broker: &Broker,
    topic: &str,
) -> std::collections::BTreeMap<(u64, u64), String> {
    let mut by_origin = std::collections::BTreeMap::new();
    let mut landed = std::collections::BTreeMap::new();
    for record in read_topic(&broker.brokers, topic, &ClientOptions::default()).unwrap() {
        let row: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let origin = (
            row["_partition"].as_u64().unwrap(),
            row["_offset"].as_u64().unwrap(),
        );
        let place = (record.partition, record.offset, record.timestamp_ms);
        let value = String::from_utf8(record.value).unwrap();
        if let Some(before) = by_origin.insert(origin, value) {
            panic!(
                "{topic}: the row of {origin:?} is there twice, as (partition, offset, \
                 timestamp) {:?} and {place:?}: {before}",
                landed[&origin]
            );
        }
        landed.insert(origin, place);
    }
    by_origin
}

/// Sets the consumer group, and commits and micro-batches often, so that a
/// run can be stopped part way with some of its input committed.
fn committing_often_as(command: &mut std::process::Command, group: &str) {
    command
        .args(["--set", &format!("source.group_id=\"{group}\"")])
        .args(["--set", "source.commit_interval=\"100ms\""])
        .args(["--set", "batching.policy=\"micro\""])
        // Partitions read in step from the start: read freely (these
        // topics are far under the held-rows budget), the slowest
        // partition holds the watermark, and with it the offsets
        // committed, back until near the end, and a kill meant to land
        // after the first commit can land after the run.
        .args(["--set", "time.max_buffered_rows=0"]);
}

/// Waits (up to 120 s) until `group` has committed offsets of `topic`,
/// failing if `run` ends first.
fn wait_for_a_commit(run: &mut std::process::Child, broker: &Broker, group: &str, topic: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while committed_offsets(&broker.brokers, group, topic, &ClientOptions::default())
        .unwrap()
        .is_empty()
    {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the first run ended before it could be killed; raise the event count"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no commit within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `restart` (from the committed offsets) and checks that it
/// succeeds and reads less than the whole input into `out`.
fn assert_the_restart_resumes(mut restart: std::process::Command, out: &Path, count: u64) {
    let status = restart.status().unwrap();
    assert!(status.success(), "the restarted run failed: {status}");
    assert!(
        origins(out).len() < count as usize,
        "the restart read everything again: it did not start from the committed offsets"
    );
}

/// Checks the outputs of `topic` after runs that may have repeated work:
/// every input record has a score or a dead letter, and a row produced
/// twice is the same both times.
fn assert_every_record_has_one_output(broker: &Broker, topic: &str, count: u64) {
    let scores = read_topic(
        &broker.brokers,
        &format!("{topic}-scores"),
        &ClientOptions::default(),
    )
    .unwrap();
    let dead = read_topic(
        &broker.brokers,
        &format!("{topic}-dead"),
        &ClientOptions::default(),
    )
    .unwrap();
    let mut by_origin: std::collections::BTreeMap<(u64, u64), String> = Default::default();
    for record in &scores {
        let row: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let origin = (
            row["_partition"].as_u64().unwrap(),
            row["_offset"].as_u64().unwrap(),
        );
        let text = row.to_string();
        if let Some(earlier) = by_origin.insert(origin, text.clone()) {
            assert_eq!(earlier, text, "a row produced twice differs at {origin:?}");
        }
    }
    for letter in &dead {
        let header = |name: &str| {
            let (_, value) = letter.headers.iter().find(|(key, _)| key == name).unwrap();
            String::from_utf8(value.clone())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        by_origin.insert(
            (header("tideflow-partition"), header("tideflow-offset")),
            String::new(),
        );
    }
    assert_eq!(
        by_origin.len() as u64,
        count,
        "every input record has its output row or dead letter"
    );
}

#[test]
fn an_external_client_reads_every_score_as_json_with_its_fields() {
    let python = common::test_clients_python();
    let topic = "external";
    let test = KafkaTest::with_events(topic, 2_000, 13);
    let (broker, out) = (&test.broker, &test.out);
    let summary = run_fraud_kafka(
        &broker.brokers,
        topic,
        &out.path().join("rows"),
        "earliest",
        "now",
        2,
    );
    assert!(summary.counts.rows_out > 0, "{summary}");
    let fields = [
        "user_id",
        "merchant_id",
        "amount",
        "ts",
        "_partition",
        "_offset",
        "amount_sum_1h",
        "merchant_tx_count_10m",
        "amount_ratio",
        "fraud_probability",
        "fraud_label",
        "_model",
    ];
    let output = std::process::Command::new(&python)
        .arg(root().join("tests/clients/read_scores.py"))
        .args([
            &broker.brokers,
            &format!("{topic}-scores"),
            &summary.counts.rows_out.to_string(),
        ])
        .args(fields)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "the client's report is not JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
    assert_eq!(report["records"], summary.counts.rows_out, "{report}");
    for problem in ["not_json", "missing_fields", "no_model_header"] {
        assert_eq!(report[problem], 0, "{problem}: {report}");
    }
}

#[test]
fn several_topics_read_as_one_source_give_the_rows_of_one_topic() {
    let test = KafkaTest::start();
    let (broker, out) = (&test.broker, &test.out);
    let no_options = ClientOptions::default();
    // The same records on one 4-partition topic, and split over two
    // 2-partition topics: partitions 0 and 1 on `split-a`, 2 and 3 on
    // `split-b`. Read in that order, the two topics number their
    // partitions 0..4 like the single topic.
    let count = 1_600;
    let config = generator(count, None, 11);
    produce(broker, "whole", config.clone());
    for topic in ["split-a", "split-b"] {
        ensure_topic(&broker.brokers, &no_options, topic, 2).unwrap();
    }
    let split = ["split-a", "split-b"]
        .map(|topic| KafkaProducer::open(&broker.brokers, topic, &no_options).unwrap());
    for sequence in 0..count {
        let (partition, key, value) = config.sequenced_json(sequence, None);
        split[partition as usize / 2]
            .send(&ProducerRecord {
                key: Some(key.as_bytes()),
                value: value.as_bytes(),
                headers: &[],
                partition: Some(partition % 2),
                ticket: 0,
            })
            .unwrap();
    }
    for producer in &split {
        producer.flush(Duration::from_secs(60)).unwrap();
    }
    output_topics(broker, "whole");
    output_topics(broker, "split");

    let whole_out = out.path().join("whole");
    let whole = run_fraud_kafka(&broker.brokers, "whole", &whole_out, "earliest", "now", 2);
    let spec_text = std::fs::read_to_string(root().join("dataflows/fraud_kafka.toml")).unwrap();
    let spec = out.path().join("fraud_topics.toml");
    std::fs::write(
        &spec,
        spec_text.replace(
            "topic = \"transactions\"",
            "topics = [\"split-a\", \"split-b\"]",
        ),
    )
    .unwrap();
    let split_out = out.path().join("split");
    let overrides = fraud_kafka_overrides(&broker.brokers, "split", &split_out, "earliest", "now");
    let summary = run_spec(&spec, &overrides, 2);
    // The same records in, out, dead and late (how they were batched
    // depends on when they arrived).
    let reconciled = |counts: &tideflow::run::Counts| {
        (counts.records_in, counts.rows_out, counts.dead, counts.late)
    };
    assert_eq!(
        reconciled(&summary.counts),
        reconciled(&whole.counts),
        "{summary}\n{whole}"
    );
    assert!(summary.counts.late > 0, "{summary}");

    // Every row names its topic and Kafka partition; mapped back to the
    // single topic's partitions, the rows are the same.
    let mut rows = read_rows(&split_out);
    for row in &mut rows {
        let topic = row["_topic"].as_str().unwrap().to_owned();
        let partition = row["_partition"].as_u64().unwrap();
        assert!(partition < 2, "{row}");
        let first = if topic == "split-a" { 0 } else { 2 };
        assert!(topic == "split-a" || topic == "split-b", "{row}");
        row["_partition"] = (first + partition).into();
        row.as_object_mut().unwrap().remove("_topic");
    }
    rows.sort_by_key(|row| (row["_partition"].as_u64(), row["_offset"].as_u64()));
    let rows: Vec<String> = rows.iter().map(|row| row.to_string()).collect();
    assert_eq!(rows, read_lines(&whole_out));

    // Dead letters name the topic they came from; offsets are committed
    // per topic, to the end of each partition.
    let dead = read_topic(&broker.brokers, "split-dead", &no_options).unwrap();
    assert_eq!(dead.len() as u64, summary.counts.dead + summary.counts.late);
    for letter in &dead {
        let source = letter
            .headers
            .iter()
            .find(|(name, _)| name == "tideflow-source")
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned());
        assert!(
            matches!(source.as_deref(), Some("split-a" | "split-b")),
            "{source:?}"
        );
    }
    let group = format!("split-{}", split_out.file_name().unwrap().to_string_lossy());
    for topic in ["split-a", "split-b"] {
        let committed = committed_offsets(&broker.brokers, &group, topic, &no_options).unwrap();
        let total: u64 = committed.values().sum();
        assert_eq!(committed.len(), 2, "{topic}: {committed:?}");
        assert_eq!(total, count / 2, "{topic}: {committed:?}");
    }
}

#[test]
fn a_source_names_topic_or_topics_not_both() {
    let spec = root().join("dataflows/fraud_kafka.toml");
    let both = tideflow::plan::load(&spec, &["source.topics=[\"a\", \"b\"]".into()]);
    let error = both.unwrap_err().to_string();
    assert!(error.contains("both topic and topics"), "{error}");
    let text = std::fs::read_to_string(&spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let twice = dir.path().join("twice.toml");
    std::fs::write(
        &twice,
        text.replace("topic = \"transactions\"", "topics = [\"a\", \"a\"]"),
    )
    .unwrap();
    let error = tideflow::plan::load(&twice, &[]).unwrap_err().to_string();
    assert!(error.contains("listed twice"), "{error}");
    let several = dir.path().join("several.toml");
    std::fs::write(
        &several,
        text.replace("topic = \"transactions\"", "topics = [\"a\", \"b\"]"),
    )
    .unwrap();
    let error = tideflow::plan::load(&several, &["source.from=\"0:5\"".into()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("several"), "{error}");
    tideflow::plan::load(&several, &[]).expect("topics alone is a valid source");
}

/// `tideflow launch` of `dataflows/fraud_kafka.toml` against `topic`:
/// `processes` x `workers`, writing rows under `out`.
fn launch_fraud_kafka(
    broker: &Broker,
    topic: &str,
    out: &Path,
    processes: usize,
    workers: usize,
) -> std::process::Command {
    let mut command = fraud_kafka_command("launch", broker, topic, out);
    command
        .args(["--processes", &processes.to_string()])
        .args(["--workers", &workers.to_string()]);
    command
}

/// `tideflow SUBCOMMAND dataflows/fraud_kafka.toml --quiet` on `topic`,
/// from the committed offsets until now, with rows written under `out`.
fn fraud_kafka_command(
    subcommand: &str,
    broker: &Broker,
    topic: &str,
    out: &Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"));
    command
        .current_dir(root())
        .args([subcommand, "dataflows/fraud_kafka.toml", "--quiet"])
        .args(["--set", &format!("source.topic=\"{topic}\"")]);
    for value in fraud_kafka_overrides(&broker.brokers, topic, out, "committed", "now") {
        command.args(["--set", &value]);
    }
    command
}

#[test]
fn a_cluster_of_processes_gives_the_rows_of_one_process() {
    let topic = "cluster-parity";
    let count = 2_400;
    let test = KafkaTest::with_events(topic, count, 5);
    let (broker, out) = (&test.broker, &test.out);
    let single = out.path().join("single");
    let summary = run_fraud_kafka(&broker.brokers, topic, &single, "earliest", "now", 1);
    assert_eq!(summary.counts.records_in, count);

    for (processes, workers) in [(1, 4), (2, 2)] {
        let name = format!("cluster-{processes}x{workers}");
        let cluster = out.path().join(&name);
        let output = launch_fraud_kafka(broker, topic, &cluster, processes, workers)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{}\n{log}", output.status);
        assert_eq!(
            read_lines(&cluster),
            read_lines(&single),
            "{processes}x{workers} rows differ"
        );
        let total = format!(
            "{count} records in = {} rows out + {} dead letters + {} late",
            summary.counts.rows_out, summary.counts.dead, summary.counts.late
        );
        assert!(log.contains(&total), "no total '{total}' in:\n{log}");
        // Every process committed its partitions for the group.
        let group = format!("{topic}-{name}");
        let committed =
            committed_offsets(&broker.brokers, &group, topic, &ClientOptions::default()).unwrap();
        assert_eq!(committed.values().sum::<u64>(), count, "{committed:?}");
    }
}

#[test]
fn killing_one_process_stops_the_cluster_and_a_restart_loses_nothing() {
    let topic = "cluster-killed";
    let count = 40_000;
    let test = KafkaTest::with_events(topic, count, 13);
    let (broker, out) = (&test.broker, &test.out);
    let group = format!("{topic}-first");
    let command = |name: &str| {
        let mut command = launch_fraud_kafka(broker, topic, &out.path().join(name), 2, 1);
        committing_often_as(&mut command, &group);
        command
    };
    let mut first = command("first")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = first.stderr.take().unwrap();
    let (lines_in, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let _ = lines_in.send(line.unwrap());
        }
    });
    let mut log = Vec::new();
    let pid = loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap();
        log.push(line.clone());
        if let Some(pid) = line.strip_prefix("tideflow launch: process 1 is pid ") {
            break pid.parse::<i32>().unwrap();
        }
    };
    // Kill process 1 once the cluster has committed part of the input.
    wait_for_a_commit(&mut first, broker, &group, topic);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = std::time::Instant::now();
    // The whole run ends, with an error naming the process (not a hang:
    // the wait is bounded only to report one).
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the cluster still runs 60 s after one of its processes was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("the cluster stopped {:?} after the kill", killed.elapsed());
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("process 1 of 2 was killed by signal 9"),
        "the error does not name the killed process:\n{log}"
    );
    assert!(
        log.contains("lost the connection to process 1"),
        "process 0 does not say which peer it lost:\n{log}"
    );

    // The restarted cluster resumes from the committed offsets.
    assert_the_restart_resumes(command("second"), &out.path().join("second"), count);
    assert_every_record_has_one_output(broker, topic, count);
}

#[test]
fn metrics_report_each_partitions_lag_behind_its_high_watermark() {
    let topic = "lagging";
    let count = 40_000;
    let test = KafkaTest::with_events(topic, count, 17);
    let (broker, out) = (&test.broker, &test.out);
    let mut overrides = vec![format!("source.topic=\"{topic}\"")];
    overrides.extend(fraud_kafka_overrides(
        &broker.brokers,
        topic,
        out.path(),
        "earliest",
        "now",
    ));
    let plan = tideflow::plan::load(&root().join("dataflows/fraud_kafka.toml"), &overrides)
        .expect("fraud_kafka.toml loads");
    let metrics = std::sync::Arc::new(tideflow::metrics::Metrics::default());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = RunOptions {
        metrics: Some(metrics.clone()),
        stop: Some(stop.clone()),
        ..RunOptions::with_workers(2)
    };
    let running = std::thread::spawn(move || run(plan, &options));
    // Stop the backfill part-way: what it did not read is its lag.
    while metrics.stats.snapshot().records_in == 0 {
        assert!(!running.is_finished(), "the run ended before reading");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let summary = running.join().unwrap().unwrap();
    let text = metrics.render();
    let lags: Vec<u64> = (0..PARTITIONS)
        .map(|partition| {
            let name = format!("tideflow_partition_lag{{partition=\"{partition}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&name))
                .unwrap_or_else(|| panic!("no lag of partition {partition} in:\n{text}"))
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        summary.counts.records_in < count,
        "the run read everything before it was stopped: raise the count"
    );
    assert_eq!(
        lags.iter().sum::<u64>(),
        count - summary.counts.records_in,
        "lags {lags:?} after reading {} of {count}",
        summary.counts.records_in
    );
}
