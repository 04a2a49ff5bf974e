//! Kafka benchmarks, on the embedded broker (librdkafka's mock cluster, in
//! this process): tansu's SQLite storage takes in a few thousand records a
//! second, far too few for millions of events or 50k events/s, and these
//! programs measure tideflow, not the broker. Both sides of each ratio read
//! the same topic from the same broker in the same run. The mock cluster
//! keeps at most 100,000 messages or 5 MB per partition (older ones are
//! deleted), so topics with millions of events are spread over enough
//! partitions to keep every event. A fetch walks the partition's message
//! sets from the oldest, so it costs more as the partition grows: keep the
//! latency runs short for their partition count (see the README).
//!
//! - `ingest`: engine rows/s reading a topic of small JSON events (decode +
//!   one window feature, null sink) against a bare rdkafka `BaseConsumer`
//!   reading the same topic.
//! - `latency`: Kafka → features → MLP → Kafka at fixed rates with an
//!   open-loop producer. Each event's `ts` is the time it was *due* to be
//!   sent, so a producer or engine that falls behind shows as latency
//!   (coordinated omission corrected); latency is the score message's
//!   timestamp (set when tideflow produced it) minus `ts`, in an
//!   HdrHistogram.
//! - `catchup`: a backlog, then live events at a fixed rate: seconds until
//!   the engine keeps up, and the latency after that.
//! - `restart`: a topic of each length holding `--keys` users, read once by
//!   a checkpointed run (the four user features); then `--new` events
//!   more, and a restart that reads them: from the checkpoint, against a
//!   restart without one that replays the whole topic to rebuild its
//!   windows (`source.warm_up`), as every restart did before checkpoints.
//!   Each restart writes its rows to a topic of its own; the time to its
//!   first new row is that row's producer timestamp less the time the
//!   run was started.
//!
//! Run: `cargo bench --bench kafka -- ingest --events 5000000`,
//! `cargo bench --bench kafka -- latency --rates 1000,10000,50000`,
//! `cargo bench --bench kafka -- catchup --backlog 2000000 --rate 5000`,
//! `cargo bench --bench kafka -- restart --keys 1000000 --lengths 1000000,2000000,4000000`.

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tideflow::dataflow::{RunOptions, run};
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::kafka::{
    ClientOptions, EmbeddedBroker, GenerateOptions, produce_generated,
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
    /// Overrides of the engine's spec (as `tideflow run --set`), for
    /// trying settings: `--set 'batching.micro.max_delay="1ms"'`.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
}

/// The `--set` overrides of this run.
static EXTRA_OVERRIDES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

#[derive(Debug, Subcommand)]
enum Which {
    /// Engine vs bare consumer on one topic.
    Ingest {
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        #[arg(long, default_value_t = 128)]
        partitions: u32,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Live latency at fixed rates.
    Latency {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        rates: Vec<u64>,
        /// Seconds of production per rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Backlog, then live.
    Catchup {
        #[arg(long, default_value_t = 2_000_000)]
        backlog: u64,
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Seconds of live production.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        partitions: u32,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Restart from a checkpoint against a restart that replays history.
    Restart {
        /// Users (keys of the features' state).
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Topic lengths (events) before the restart.
        #[arg(long, value_delimiter = ',', default_value = "1000000,2000000,4000000")]
        lengths: Vec<u64>,
        /// Events that arrive before the restart reads them.
        #[arg(long, default_value_t = 10_000)]
        new: u64,
        /// Enough that no partition holds more than the mock cluster's
        /// 100,000 messages or 5 MB.
        #[arg(long, default_value_t = 128)]
        partitions: u32,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

fn main() {
    common::allocate_as_the_binary_does();
    common::require_onnxruntime();
    let args = Args::parse();
    EXTRA_OVERRIDES.get_or_init(|| args.overrides.clone());
    match args.which {
        Some(Which::Ingest {
            events,
            partitions,
            workers,
        }) => ingest(events, partitions, workers),
        Some(Which::Latency {
            rates,
            seconds,
            partitions,
            workers,
        }) => rates
            .iter()
            .for_each(|rate| latency(*rate, seconds, partitions, workers)),
        Some(Which::Catchup {
            backlog,
            rate,
            seconds,
            partitions,
            workers,
        }) => catchup(backlog, rate, seconds, partitions, workers),
        Some(Which::Restart {
            keys,
            lengths,
            new,
            partitions,
            workers,
        }) => restart(keys, &lengths, new, partitions, workers),
        None => {
            ingest(5_000_000, 128, 2);
            for rate in [1_000, 10_000, 50_000] {
                latency(rate, 10, 8, 2);
            }
            catchup(2_000_000, 5_000, 60, 64, 2);
            restart(
                1_000_000,
                &[1_000_000, 2_000_000, 4_000_000],
                10_000,
                128,
                2,
            );
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn generator(count: Option<u64>, partitions: u32) -> GeneratorConfig {
    GeneratorConfig {
        users: 100_000,
        merchants: 1_000,
        partitions,
        count,
        spacing_ms: 1.0,
        ..GeneratorConfig::default()
    }
}

/// A broker with the input topic (`tx`) holding `events` generated events,
/// and an empty `scores` topic.
fn broker_with(events: u64, partitions: u32) -> EmbeddedBroker {
    let broker = EmbeddedBroker::start(1).expect("embedded broker");
    for topic in ["tx", "scores", "dead"] {
        broker.create_topic(topic, partitions).expect("topic");
    }
    if events > 0 {
        let produced = produce_generated(
            &GenerateOptions {
                brokers: broker.bootstrap_servers(),
                topic: "tx".into(),
                options: ClientOptions::default(),
                generator: generator(Some(events), partitions),
                first: 0,
                wall_clock: false,
            },
            &|| false,
        )
        .expect("producing the events");
        assert_eq!(produced, events);
    }
    broker
}

fn ingest(events: u64, partitions: u32, workers: usize) {
    let started = Instant::now();
    let broker = broker_with(events, partitions);
    println!(
        "ingest: {events} events on {partitions} partitions (produced in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let (bytes, bare) = common::best_of(1, || {
        bare_consumer(&broker.bootstrap_servers(), partitions, events)
    });
    let spec = format!(
        r#"
name = "ingest"
[source]
type = "kafka"
brokers = "{brokers}"
topic = "tx"
key = "user_id"
from = "earliest"
until = "now"
{schema}
[[feature]]
name = "tx_count_1h"
agg = "count"
window = "1h"
[batching]
policy = "bulk"
[[sink]]
type = "null"
[dead_letters]
type = "null"
"#,
        brokers = broker.bootstrap_servers(),
        schema = TX_SCHEMA,
    );
    let overrides: Vec<String> = EXTRA_OVERRIDES
        .get()
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let (summary, engine) = common::run_spec(&spec, &overrides, workers);
    assert_eq!(summary.counts.records_in, events, "{summary}");
    let bare_rate = events as f64 / bare.as_secs_f64();
    let engine_rate = events as f64 / engine.as_secs_f64();
    println!(
        "  bare BaseConsumer (1 thread, no decode): {bare_rate:.0} records/s ({:.0} MB/s)",
        bytes as f64 / bare.as_secs_f64() / 1e6
    );
    println!(
        "  engine, {workers} workers (decode + 1 feature, null sink): {engine_rate:.0} records/s; engine / bare = {:.2}",
        engine_rate / bare_rate
    );
}

/// A plain consumer assigned every partition of `topic` from the beginning.
fn consumer_from_beginning(brokers: &str, topic: &str, partitions: u32) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Reads `events` messages of `tx` with a bare consumer; returns the bytes.
fn bare_consumer(brokers: &str, partitions: u32, events: u64) -> u64 {
    let consumer = consumer_from_beginning(brokers, "tx", partitions);
    let (mut read, mut bytes) = (0, 0);
    while read < events {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
            bytes += message.payload().map_or(0, <[u8]>::len) as u64;
        }
    }
    bytes
}

/// How long a fetch may wait for data, for the engine and the bare
/// consumers alike: the mock cluster holds a fetch for its whole wait time
/// when a partition has nothing new (a real broker answers as data arrives).
const FETCH_WAIT_MS: &str = "5";

/// The generator's fields as the Kafka benchmarks' specs declare them,
/// with `ts` as event time.
const TX_SCHEMA: &str = r#"[schema]
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts""#;

/// Overrides that run `dataflows/fraud_kafka.toml` on the broker's `tx`,
/// its file sink writing under `out`.
fn fraud_kafka_overrides(
    brokers: &str,
    from: &str,
    until_ms: i64,
    out: &std::path::Path,
) -> Vec<String> {
    vec![
        format!("source.brokers=\"{brokers}\""),
        "source.topic=\"tx\"".into(),
        "source.group_id=\"bench\"".into(),
        format!("source.from=\"{from}\""),
        format!("source.options.\"fetch.wait.max.ms\"=\"{FETCH_WAIT_MS}\""),
        format!("source.until=\"{until_ms}\""),
        "sink[0].topic=\"scores\"".into(),
        format!("sink[1].path=\"{}\"", out.display()),
        "dead_letters.topic=\"dead\"".into(),
        format!(
            "model.path=\"{}\"",
            common::root().join("models/fraud_mlp.onnx").display()
        ),
    ]
}

/// Starts fraud_kafka on the broker in a thread, until `until_ms`.
fn start_engine(
    brokers: &str,
    from: &str,
    until_ms: i64,
    workers: usize,
) -> std::thread::JoinHandle<tideflow::run::Summary> {
    let out = tempfile::tempdir().expect("temporary directory");
    let mut overrides = fraud_kafka_overrides(brokers, from, until_ms, out.path());
    overrides.extend(EXTRA_OVERRIDES.get().into_iter().flatten().cloned());
    std::thread::spawn(move || {
        let _out = out;
        let plan = tideflow::plan::load(
            &common::root().join("dataflows/fraud_kafka.toml"),
            &overrides,
        )
        .unwrap_or_else(|error| panic!("{error}"));
        run(plan, &RunOptions::with_workers(workers)).unwrap_or_else(|error| panic!("{error}"))
    })
}

/// Produces events `first..first + rate * seconds` open loop at `rate`,
/// each stamped with the time it was due.
fn produce_open_loop(brokers: &str, partitions: u32, first: u64, rate: u64, seconds: u64) {
    // Each event goes out when it is due, not after librdkafka's default
    // 5 ms linger: the latency measured is tideflow's, not the load
    // generator's batching.
    let mut options = ClientOptions::default();
    options.set("linger.ms", "0");
    let mut config = generator(Some(rate * seconds), partitions);
    config.rate = Some(rate as f64);
    let produced = produce_generated(
        &GenerateOptions {
            brokers: brokers.into(),
            topic: "tx".into(),
            options,
            generator: config,
            first,
            wall_clock: true,
        },
        &|| false,
    )
    .expect("producing the live events");
    assert_eq!(produced, rate * seconds);
}

/// Collects (due time, latency ms) of every score until `stop`.
fn collect_scores(
    brokers: &str,
    partitions: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(i64, i64)>> {
    let consumer = consumer_from_beginning(brokers, "scores", partitions);
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let row: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("score JSON");
            let due = row["ts"].as_i64().expect("ts");
            let produced = message.timestamp().to_millis().expect("score timestamp");
            seen.push((due, produced - due));
        }
        seen
    })
}

fn histogram(latencies: impl Iterator<Item = i64>) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram");
    for latency in latencies {
        // Whole milliseconds (message timestamps); 0 ms recorded as 1.
        histogram.saturating_record(latency.max(1) as u64);
    }
    histogram
}

fn describe(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms ({} events)",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        histogram.len()
    )
}

/// Latencies of events due in the steady part of a run: not in its first
/// second (warm-up: allocations, ONNX sessions), nor in its last (the last
/// events wait for the end of the run, since no later event moves the
/// watermark past them).
fn steady(seen: &[(i64, i64)], started_ms: i64, seconds: u64) -> Histogram<u64> {
    let (from, until) = (
        started_ms + 1_000,
        started_ms + (seconds as i64 - 1) * 1_000,
    );
    histogram(
        seen.iter()
            .filter(|(due, _)| (from..until).contains(due))
            .map(|(_, latency)| *latency),
    )
}

/// The baseline: a bare consumer reading the same events from the same
/// broker, latency = when it has the event minus when the event was due.
fn bare_latency(rate: u64, seconds: u64, partitions: u32) -> Histogram<u64> {
    let broker = broker_with(0, partitions);
    let brokers = broker.bootstrap_servers();
    let consumer = consumer_from_beginning(&brokers, "tx", partitions);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let received = now_ms();
            let event: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default()).expect("event JSON");
            let due = event["ts"].as_i64().expect("ts");
            seen.push((due, received - due));
        }
        seen
    });
    std::thread::sleep(Duration::from_secs(1));
    let started_ms = now_ms();
    produce_open_loop(&brokers, partitions, 0, rate, seconds);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    steady(&reader.join().expect("bare reader"), started_ms, seconds)
}

fn latency(rate: u64, seconds: u64, partitions: u32, workers: usize) {
    let bare = bare_latency(rate, seconds, partitions);
    let broker = broker_with(0, partitions);
    let brokers = broker.bootstrap_servers();
    let stop = Arc::new(AtomicBool::new(false));
    let scores = collect_scores(&brokers, partitions, stop.clone());
    let until = now_ms() + (seconds as i64 + 3) * 1000;
    let engine = start_engine(&brokers, "earliest", until, workers);
    std::thread::sleep(Duration::from_secs(1));
    let started_ms = now_ms();
    produce_open_loop(&brokers, partitions, 0, rate, seconds);
    let summary = engine.join().expect("engine");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = scores.join().expect("collector");
    let measured = steady(&seen, started_ms, seconds);
    println!(
        "latency at {rate} events/s for {seconds} s, {partitions} partitions, {workers} workers:"
    );
    println!(
        "  bare consumer (broker -> client):              {}",
        describe(&bare)
    );
    println!(
        "  engine (Kafka -> features -> MLP -> Kafka):    {}",
        describe(&measured)
    );
    println!(
        "  engine - bare: p50 {} ms, p99 {} ms",
        measured.value_at_quantile(0.5) as i64 - bare.value_at_quantile(0.5) as i64,
        measured.value_at_quantile(0.99) as i64 - bare.value_at_quantile(0.99) as i64
    );
    println!(
        "  {} events scored of {} produced ({} rows out, {} dead, {} late)",
        seen.len(),
        rate * seconds,
        summary.counts.rows_out,
        summary.counts.dead,
        summary.counts.late
    );
}

fn catchup(backlog: u64, rate: u64, seconds: u64, partitions: u32, workers: usize) {
    let started = Instant::now();
    let broker = broker_with(backlog, partitions);
    println!(
        "catch-up: {backlog} events of backlog on {partitions} partitions (produced in {:.1} s), then {rate} events/s for {seconds} s, {workers} workers",
        started.elapsed().as_secs_f64()
    );
    let brokers = broker.bootstrap_servers();
    let stop = Arc::new(AtomicBool::new(false));
    let scores = collect_scores(&brokers, partitions, stop.clone());
    let until = now_ms() + (seconds as i64 + 3) * 1000;
    let engine_started_ms = now_ms();
    let engine = start_engine(&brokers, "earliest", until, workers);
    // Live events continue the generator's sequence after the backlog, so
    // each partition's event times keep increasing.
    produce_open_loop(&brokers, partitions, backlog, rate, seconds);
    let summary = engine.join().expect("engine");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = scores.join().expect("collector");
    let mut live: Vec<(i64, i64)> = seen
        .into_iter()
        .filter(|(due, _)| *due >= engine_started_ms)
        .collect();
    live.sort_unstable();
    // Lag is zero once the backlog and the live events queued behind it
    // are drained: from the first live event scored within 100 ms.
    match live.iter().position(|(_, latency)| *latency <= 100) {
        Some(caught_up) => {
            let (due, _) = live[caught_up];
            println!(
                "  lag zero after {:.1} s; after that: {}",
                (due - engine_started_ms) as f64 / 1000.0,
                describe(&histogram(
                    live[caught_up..].iter().map(|(_, latency)| *latency)
                ))
            );
            let last_seconds = live.last().map_or(0, |(due, _)| *due) - 10_000;
            println!(
                "  last 10 s: {}",
                describe(&histogram(
                    live.iter()
                        .filter(|(due, _)| *due >= last_seconds)
                        .map(|(_, latency)| *latency)
                ))
            );
        }
        None => println!(
            "  never caught up within the {seconds} s of live events; their latency: {}",
            describe(&histogram(live.iter().map(|(_, latency)| *latency)))
        ),
    }
    println!(
        "  {} rows out, {} dead, {} late; {} live events scored",
        summary.counts.rows_out,
        summary.counts.dead,
        summary.counts.late,
        live.len()
    );
}

/// Produces the generator's events `first..first + count` with `keys`
/// users to `tx`, as fast as the broker takes them.
fn produce_users(brokers: &str, keys: u64, partitions: u32, first: u64, count: u64) {
    let mut config = generator(Some(count), partitions);
    config.users = keys;
    let produced = produce_generated(
        &GenerateOptions {
            brokers: brokers.into(),
            topic: "tx".into(),
            options: ClientOptions::default(),
            generator: config,
            first,
            wall_clock: false,
        },
        &|| false,
    )
    .expect("producing the events");
    assert_eq!(produced, count);
}

/// The four user features over `tx`, from `from` until now, into the
/// topic `scores` (none: a null sink), with checkpoints in `state` if
/// given.
fn restart_spec(
    brokers: &str,
    from: &str,
    scores: Option<&str>,
    state: Option<&std::path::Path>,
) -> String {
    let sink = match scores {
        Some(topic) => format!("type = \"kafka\"\ntopic = \"{topic}\""),
        None => "type = \"null\"".into(),
    };
    let mut text = format!(
        r#"
name = "restart"
[source]
type = "kafka"
brokers = "{brokers}"
topic = "tx"
key = "user_id"
group_id = "restart"
from = "{from}"
until = "now"
[source.options]
"fetch.wait.max.ms" = "{FETCH_WAIT_MS}"
{schema}
{features}
[batching]
policy = "adaptive"
[[sink]]
{sink}
[dead_letters]
type = "null"
"#,
        features = common::FOUR_FEATURES,
        schema = TX_SCHEMA,
    );
    if let Some(state) = state {
        text.push_str(&format!(
            "[state]\ndir = \"{}\"\ninterval = \"1h\"\n",
            state.display()
        ));
    }
    text
}

/// Runs `spec` and returns its summary, the seconds from its start to
/// the first row on `scores`, and to its end.
fn restart_timed(
    broker: &EmbeddedBroker,
    spec: &str,
    scores: &str,
    partitions: u32,
    workers: usize,
) -> (tideflow::run::Summary, f64, f64) {
    broker.create_topic(scores, partitions).expect("topic");
    let started_ms = now_ms();
    let (summary, took) = common::run_spec(spec, &[], workers);
    let rows = tideflow_connectors::kafka::read_topic(
        &broker.bootstrap_servers(),
        scores,
        &ClientOptions::default(),
    )
    .expect("reading the rows back");
    assert_eq!(rows.len() as u64, summary.counts.rows_out, "{summary}");
    let first_ms = rows
        .iter()
        .filter_map(|row| row.timestamp_ms)
        .min()
        .expect("rows with timestamps");
    (
        summary,
        (first_ms - started_ms) as f64 / 1000.0,
        took.as_secs_f64(),
    )
}

/// The bytes of the newest checkpoint under `state`.
fn newest_checkpoint_bytes(state: &std::path::Path) -> u64 {
    let newest = std::fs::read_dir(state.join("checkpoints"))
        .expect("checkpoints")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.join("MANIFEST").exists())
        .max()
        .expect("a checkpoint");
    std::fs::read_dir(newest)
        .expect("the checkpoint")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .sum()
}

fn restart(keys: u64, lengths: &[u64], new: u64, partitions: u32, workers: usize) {
    println!(
        "restart: {keys} users, four user features, {workers} workers; a restart then reads {new} new events"
    );
    println!(
        "  {:>10} {:>11} {:>22} {:>22} {:>14}",
        "topic", "checkpoint", "from checkpoint (s)", "warm-up replay (s)", "first row"
    );
    println!(
        "  {:>10} {:>11} {:>22} {:>22} {:>14}",
        "events", "bytes", "first row / end", "first row / end", "warm-up / ckpt"
    );
    for &length in lengths {
        let broker = broker_with(0, partitions);
        let brokers = broker.bootstrap_servers();
        produce_users(&brokers, keys, partitions, 0, length);
        let state = tempfile::tempdir().expect("temporary directory");
        // The first run reads the topic and ends with a checkpoint of its
        // state and positions, and commits the positions to the group.
        let (first, _) = common::run_spec(
            &restart_spec(&brokers, "earliest", None, Some(state.path())),
            &[],
            workers,
        );
        assert_eq!(first.counts.records_in, length, "{first}");
        let bytes = newest_checkpoint_bytes(state.path());
        produce_users(&brokers, keys, partitions, length, new);
        // Without a checkpoint: from the committed offsets, replaying the
        // topic before them to rebuild the windows.
        let (replaying, replay_first, replay_end) = restart_timed(
            &broker,
            &restart_spec(&brokers, "committed", Some("scores-replayed"), None),
            "scores-replayed",
            partitions,
            workers,
        );
        assert_eq!(replaying.counts.records_in, new, "{replaying}");
        assert_eq!(replaying.counts.replayed, length, "{replaying}");
        // From the checkpoint: its state, and its positions.
        let (restored, restored_first, restored_end) = restart_timed(
            &broker,
            &restart_spec(
                &brokers,
                "earliest",
                Some("scores-restored"),
                Some(state.path()),
            ),
            "scores-restored",
            partitions,
            workers,
        );
        assert_eq!(restored.counts.records_in, new, "{restored}");
        assert_eq!(restored.counts.replayed, 0, "{restored}");
        // Both restarts give the new events the same rows: none late.
        assert_eq!(
            restored.counts.rows_out, replaying.counts.rows_out,
            "{restored}"
        );
        assert_eq!(restored.counts.late, 0, "{restored}");
        println!(
            "  {length:>10} {:>8.1} MB {:>10.2} / {:>9.2} {:>10.2} / {:>9.2} {:>13.1}x",
            bytes as f64 / 1e6,
            restored_first,
            restored_end,
            replay_first,
            replay_end,
            replay_first / restored_first
        );
    }
}
