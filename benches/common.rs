//! Shared by the benchmark programs: running a spec text and timing it.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tideflow::batch::Batch;
use tideflow::dataflow::{RunOptions, run};
use tideflow::plan::{Device, ExecutorPlan, ModelInputPlan, ModelPlan, OutputPlan, RunRows};
use tideflow::row::Row;
use tideflow::run::Summary;
use tideflow::schema::{Column, ColumnType};
use tideflow::spec::SpecSource;
use tideflow_connectors::Value;
use tideflow_connectors::generator::GeneratorConfig;

/// The repository root: as cargo says when it runs the benchmark (read at
/// run time, since a target directory shared between clones may hold a
/// binary built in another clone), else where the benchmark was built.
pub fn root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        std::path::PathBuf::from,
    )
}

/// The feature workload: generator transactions keyed by user, four
/// window features, no model, bulk batches, null sink (benches/features.rs
/// and benches/scaling.rs).
pub fn feature_spec() -> String {
    format!("{PIPELINE_HEAD}{FOUR_FEATURES}{PIPELINE_TAIL}")
}

/// The generator of [`feature_spec`] with `users` keys and `events`
/// records, for the hand-written loop to read the same records.
pub fn feature_generator(users: u64, events: u64) -> GeneratorConfig {
    GeneratorConfig {
        users,
        count: Some(events),
        partitions: 4,
        spacing_ms: 5.0,
        ..GeneratorConfig::default()
    }
}

/// The same workload without its features: what the rest of the engine
/// (generator, decode, operators, sink) costs on its own.
pub fn pipeline_spec() -> String {
    format!("{PIPELINE_HEAD}{PIPELINE_TAIL}")
}

const PIPELINE_HEAD: &str = r#"
name = "features_bench"
[source]
type = "generator"
key = "user_id"
partitions = 4
spacing_ms = 5.0
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
"#;

/// The four user features of the feature workload (shared with
/// benches/peers.py).
pub const FOUR_FEATURES: &str = include_str!("four_features.toml");

const PIPELINE_TAIL: &str = r#"
[batching]
policy = "bulk"
[[sink]]
type = "null"
[dead_letters]
type = "null"
"#;

/// Per-user state of the hand-written loop: one deque per window length.
#[derive(Default)]
struct UserWindows {
    hour: VecDeque<(i64, f64)>,
    hour_sum: f64,
    hour_max: VecDeque<(i64, f64)>,
    ten_minutes: VecDeque<i64>,
    day: VecDeque<(i64, f64)>,
    day_sum: f64,
}

/// The feature workload's four features computed by hand, one record at
/// a time: the baseline the engine is measured against. Returns a
/// checksum of the features, so that no work can be left out.
pub fn hand_written_loop(config: &GeneratorConfig) -> f64 {
    let mut users: HashMap<u64, UserWindows> = HashMap::new();
    let mut checksum = 0.0;
    let per_partition = config
        .count
        .unwrap_or(0)
        .div_ceil(u64::from(config.partitions));
    for offset in 0..per_partition {
        for partition in 0..config.partitions {
            if config
                .partition_count(partition)
                .is_some_and(|count| offset >= count)
            {
                continue;
            }
            let (user, _merchant, amount, time) = config.record(partition, offset);
            let state = users.entry(user).or_default();
            slide_sum(
                &mut state.hour,
                &mut state.hour_sum,
                time,
                amount,
                3_600_000,
            );
            while state.hour_max.back().is_some_and(|(_, a)| *a <= amount) {
                state.hour_max.pop_back();
            }
            state.hour_max.push_back((time, amount));
            while state
                .hour_max
                .front()
                .is_some_and(|(t, _)| *t <= time - 3_600_000)
            {
                state.hour_max.pop_front();
            }
            state.ten_minutes.push_back(time);
            while state
                .ten_minutes
                .front()
                .is_some_and(|t| *t <= time - 600_000)
            {
                state.ten_minutes.pop_front();
            }
            slide_sum(&mut state.day, &mut state.day_sum, time, amount, 86_400_000);
            let max = state.hour_max.front().map_or(0.0, |(_, a)| *a);
            checksum += state.hour_sum
                + state.ten_minutes.len() as f64
                + state.day_sum / state.day.len() as f64
                + max;
        }
    }
    checksum
}

/// Adds `(time, amount)` to a window of length `window_ms` kept with its
/// running sum, and drops what the window has slid past.
#[inline]
fn slide_sum(
    entries: &mut VecDeque<(i64, f64)>,
    sum: &mut f64,
    time: i64,
    amount: f64,
    window_ms: i64,
) {
    entries.push_back((time, amount));
    *sum += amount;
    while entries.front().is_some_and(|(t, _)| *t <= time - window_ms) {
        *sum -= entries.pop_front().map_or(0.0, |(_, a)| a);
    }
}

/// The time [`hand_written_loop`] takes alone.
pub fn one_loop(config: &GeneratorConfig) -> Duration {
    let started = Instant::now();
    std::hint::black_box(hand_written_loop(config));
    started.elapsed()
}

/// Runs the loop twice at once, on two threads; returns the time both
/// took (each did the whole loop's work). Against [`one_loop`], what this
/// machine gives a second thread at the moment: near 1 when it runs two
/// threads as well as one.
pub fn two_loops_at_once(config: &GeneratorConfig) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let other = scope.spawn(|| std::hint::black_box(hand_written_loop(config)));
        std::hint::black_box(hand_written_loop(config));
        let _ = other.join();
    });
    started.elapsed()
}

/// Runs a spec given as text and returns its summary and wall time.
pub fn run_spec(text: &str, overrides: &[String], workers: usize) -> (Summary, Duration) {
    let plan = plan_of(text, overrides);
    let started = Instant::now();
    let summary =
        run(plan, &RunOptions::with_workers(workers)).unwrap_or_else(|error| panic!("{error}"));
    assert!(summary.counts.reconciles(), "{summary}");
    (summary, started.elapsed())
}

/// The plan of a spec text with overrides.
pub fn plan_of(text: &str, overrides: &[String]) -> tideflow::plan::Plan {
    let source = SpecSource {
        file: "bench.toml".into(),
        text: text.to_owned(),
        overrides: overrides.to_vec(),
    };
    let spec = source.parse().unwrap_or_else(|error| panic!("{error}"));
    tideflow::plan::Plan::from_spec(&spec, &source).unwrap_or_else(|error| panic!("{error}"))
}

/// The best (shortest) of `repeats` timings of `work`, with its result.
pub fn best_of<T>(repeats: usize, mut work: impl FnMut() -> T) -> (T, Duration) {
    let mut best: Option<(T, Duration)> = None;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        let result = work();
        let elapsed = started.elapsed();
        if best.as_ref().is_none_or(|(_, fastest)| elapsed < *fastest) {
            best = Some((result, elapsed));
        }
    }
    best.expect("at least one repeat")
}

/// The fastest of `rounds` timings of each measurement, taken in rounds
/// (each measurement once per round) rather than one after the other, so
/// that noise from other work on a shared machine falls on all of them.
pub fn fastest_interleaved(
    rounds: usize,
    measurements: &mut [&mut dyn FnMut() -> Duration],
) -> Vec<Duration> {
    timed_interleaved(rounds, measurements)
        .iter()
        .map(|timings| timings.best)
        .collect()
}

/// The best and the median of a measurement's timings.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub best: Duration,
    pub median: Duration,
}

impl Timings {
    /// How far the median lies above the best: near 1 when nothing else
    /// ran on the machine, well above it when the best is one lucky round.
    pub fn spread(&self) -> f64 {
        self.median.as_secs_f64() / self.best.as_secs_f64()
    }
}

/// Each measurement timed `rounds` times in rounds, as
/// [`fastest_interleaved`] does, with its best and median timing.
pub fn timed_interleaved(
    rounds: usize,
    measurements: &mut [&mut dyn FnMut() -> Duration],
) -> Vec<Timings> {
    let mut all = vec![Vec::new(); measurements.len()];
    for _ in 0..rounds.max(1) {
        for (measure, timings) in measurements.iter_mut().zip(&mut all) {
            timings.push(measure());
        }
    }
    all.into_iter()
        .map(|mut timings| {
            timings.sort();
            Timings {
                best: timings[0],
                median: timings[timings.len() / 2],
            }
        })
        .collect()
}

/// The device `--device` names: cpu, cuda or cuda:N. Not `auto`: a
/// bench's sides must run on the same device, named.
pub fn explicit_device(text: &str) -> Device {
    match Device::parse(text) {
        Some(Device::Auto) | None => panic!("--device: cpu, cuda or cuda:N"),
        Some(device) => device,
    }
}

/// Fails with the set-up command when ONNX Runtime is missing.
pub fn require_onnxruntime() {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(tideflow::inference::setup_location);
    assert!(
        path.is_file(),
        "ONNX Runtime not found at {}: run scripts/setup-onnxruntime.sh",
        path.display()
    );
}

/// The allocator the `tideflow` binary uses, so benchmarks measure the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the allocator the binary's settings; every benchmark's `main`
/// calls it first, before any thread starts.
pub fn allocate_as_the_binary_does() {
    tideflow::allocator::apply_memory_settings();
}

pub const WIDTH: usize = 8;
/// Schema fields before the model's input columns (a transaction's four).
pub const FIELDS: usize = 4;

/// The plan of the example MLP (`models/fraud_mlp.onnx`) fed `WIDTH`
/// float columns after `FIELDS` schema fields, reading the fraud
/// probability and the label.
pub fn mlp_plan(path: &std::path::Path, device: Device, run_rows: usize) -> ModelPlan {
    ModelPlan {
        path: path.to_owned(),
        registry: None,
        shadows: Vec::new(),
        canary: None,
        name: "bench".into(),
        inputs: vec![ModelInputPlan {
            name: None,
            columns: (0..WIDTH)
                .map(|index| Column {
                    name: format!("c{index}"),
                    ty: ColumnType::F64,
                })
                .collect(),
            slots: (FIELDS..FIELDS + WIDTH).collect(),
            tokens: None,
        }],
        outputs: vec![
            OutputPlan {
                column: "score".into(),
                slot: FIELDS + WIDTH,
                output: "probabilities".into(),
                index: Some(1),
            },
            OutputPlan {
                column: "label".into(),
                slot: FIELDS + WIDTH + 1,
                output: "label".into(),
                index: None,
            },
        ],
        device,
        executor: ExecutorPlan {
            mode: tideflow::spec::ExecutorMode::PerWorker,
            max_rows: 16384,
            max_delay: std::time::Duration::from_millis(2),
        },
        fill_null: 0.0,
        stop_on_error: true,
        run_rows: match run_rows {
            0 => RunRows::PerBatch,
            rows => RunRows::Fixed(rows),
        },
    }
}

/// A batch as the feature stages leave it for the model: rows of a
/// transaction's schema fields, the model's `WIDTH` inputs (row-major in
/// `chunk`) computed as float columns beside them.
pub fn scoring_batch(chunk: &[f32]) -> Batch {
    let rows: Vec<Row> = (0..chunk.len() / WIDTH)
        .map(|offset| Row {
            partition: 0,
            offset: offset as u64,
            time: offset as i64,
            values: vec![
                Value::Str(format!("u{offset}").into()),
                Value::Str(format!("m{}", offset % 500).into()),
                Value::F64(offset as f64),
                Value::I64(offset as i64),
            ],
            warm_up: false,
        })
        .collect();
    let mut batch = Batch::from_rows(rows);
    for column in 0..WIDTH {
        batch.set_numbers(
            FIELDS + column,
            chunk
                .iter()
                .skip(column)
                .step_by(WIDTH)
                .map(|value| Some(f64::from(*value))),
        );
    }
    batch
}

/// The transactions the file benchmarks read: `events` of them from 20k
/// users at 500 merchants on `partitions` partitions.
pub fn transactions(events: u64, partitions: u32) -> GeneratorConfig {
    GeneratorConfig {
        users: 20_000,
        merchants: 500,
        count: Some(events),
        partitions,
        spacing_ms: 20.0,
        ..Default::default()
    }
}

/// Writes the generator's transactions as JSON lines, one file per
/// partition, as the file source reads them.
pub fn write_transactions(dir: &std::path::Path, config: &GeneratorConfig) {
    use std::io::Write;
    for partition in 0..config.partitions {
        let file = std::fs::File::create(dir.join(format!("part-{partition:02}.jsonl")))
            .expect("input file");
        let mut out = std::io::BufWriter::new(file);
        for offset in 0..config.partition_count(partition).unwrap_or(0) {
            let (user, merchant, amount, time) = config.record(partition, offset);
            writeln!(out, r#"{{"user_id":"u{user}","merchant_id":"m{merchant}","amount":{amount},"ts":{time}}}"#).expect("write");
        }
    }
}

/// Writes the generator's transactions as Parquet (Snappy, row groups of
/// 128k rows), one file per partition, with the values of
/// [`write_transactions`].
pub fn write_transactions_parquet(dir: &std::path::Path, config: &GeneratorConfig) {
    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    const ROWS_PER_WRITE: u64 = 65_536;
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(131_072))
        .build();
    for partition in 0..config.partitions {
        let file = std::fs::File::create(dir.join(format!("part-{partition:02}.parquet")))
            .expect("input file");
        let mut writer: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
        let mut file = Some(file);
        let count = config.partition_count(partition).unwrap_or(0);
        for start in (0..count).step_by(ROWS_PER_WRITE as usize) {
            let records: Vec<_> = (start..count.min(start + ROWS_PER_WRITE))
                .map(|offset| config.record(partition, offset))
                .collect();
            let batch = RecordBatch::try_from_iter([
                (
                    "user_id",
                    Arc::new(StringArray::from_iter_values(
                        records.iter().map(|record| format!("u{}", record.0)),
                    )) as ArrayRef,
                ),
                (
                    "merchant_id",
                    Arc::new(StringArray::from_iter_values(
                        records.iter().map(|record| format!("m{}", record.1)),
                    )),
                ),
                (
                    "amount",
                    Arc::new(Float64Array::from_iter_values(
                        records.iter().map(|record| record.2),
                    )),
                ),
                (
                    "ts",
                    Arc::new(Int64Array::from_iter_values(
                        records.iter().map(|record| record.3),
                    )),
                ),
            ])
            .expect("a batch of transactions");
            let writer = writer.get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    file.take().expect("one file"),
                    batch.schema(),
                    Some(properties.clone()),
                )
                .expect("a Parquet writer")
            });
            writer.write(&batch).expect("write");
        }
        if let Some(writer) = writer {
            writer.close().expect("close");
        }
    }
}

/// A spec without its model: `[model]` and its sub-tables left out.
pub fn without_model(spec: &str) -> String {
    without_tables(spec, &["[model"])
}

/// A spec without its model and with a null sink in place of its sinks:
/// what its features alone cost.
pub fn features_only(spec: &str) -> String {
    null_outputs(&without_model(spec))
}

/// A spec whose sinks and dead letters are null ones.
pub fn null_outputs(spec: &str) -> String {
    without_tables(spec, &["[[sink]]", "[dead_letters]"])
        + "[[sink]]\ntype = \"null\"\n[dead_letters]\ntype = \"null\"\n"
}

/// A spec without the tables whose headers start with any of `prefixes`.
fn without_tables(spec: &str, prefixes: &[&str]) -> String {
    let mut left_out = false;
    spec.lines()
        .filter(|line| {
            if line.starts_with('[') {
                left_out = prefixes.iter().any(|prefix| line.starts_with(prefix));
            }
            !left_out
        })
        .map(|line| format!("{line}\n"))
        .collect()
}
