//! Checkpoints, tested through the `tideflow` command as a user runs it:
//! a run killed with SIGKILL at random points and started again each time
//! ends with exactly the rows and dead letters of one uninterrupted run
//! (none lost, none twice, every value bit for bit), in JSONL and in
//! Parquet; a checkpoint restores onto another number of workers, and
//! a cluster's onto one process and back; a
//! corrupted checkpoint is refused for the one before it; running a
//! finished job again changes no output.
//!
//! The source is the seeded generator, whose records are a function of
//! (seed, partition, offset): the uninterrupted run it is compared with
//! reads the same records without the rate limit that gives the killed
//! runs time to be killed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Two stages: one keyed by the source's key, one by the merchant (held
/// for the watermark, so a cut finds rows waiting); late records make dead
/// letters.
const SPEC: &str = r#"
name = "checkpointed"
[source]
type = "generator"
key = "user_id"
users = 300
merchants = 20
partitions = 4
count = COUNT
RATE
spacing_ms = 50.0
disorder_fraction = 0.05
disorder_max = "3s"
[schema]
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
max_out_of_orderness = "1s"
[[feature]]
name = "amount_sum_1h"
agg = "sum"
field = "amount"
window = "1h"
[[feature]]
name = "gap_ms"
agg = "since_prev"
[[feature]]
name = "merchant_mean_10m"
key = "merchant_id"
agg = "mean"
field = "amount"
window = "10m"
[[sink]]
type = "jsonl"
path = "OUT/rows"
[[sink]]
type = "parquet"
path = "OUT/parquet"
[dead_letters]
type = "jsonl"
path = "OUT/dead"
"#;

/// Environment variables for a run: none, or those of an S3 server.
type Environment<'a> = &'a [(&'static str, String)];

/// No environment variables beyond the test's own.
const NO_ENV: Environment = &[];

/// Writes the spec for `count` records into `out`: with `rate`, the
/// generator paces them; with `state`, checkpoints go to `out/state`.
fn spec(out: &Path, count: u64, rate: Option<u32>, state: bool) -> PathBuf {
    let mut text = SPEC
        .replace("COUNT", &count.to_string())
        .replace(
            "RATE",
            &rate.map_or(String::new(), |rate| format!("rate = {rate}")),
        )
        .replace("OUT", &out.display().to_string());
    if state {
        text.push_str(&format!(
            "[state]\ndir = \"{}\"\ninterval = \"150ms\"\n",
            out.join("state").display()
        ));
    }
    std::fs::create_dir_all(out).unwrap();
    let path = out.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `tideflow run` of `spec` on `workers` workers, with `NO_ENV`
/// or the environment of an S3 server.
fn start(spec: &Path, workers: usize, environment: Environment) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args(["run", &spec.display().to_string(), "--workers"])
        .arg(workers.to_string())
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs to the end and returns its standard error, which must say it
/// succeeded.
fn run_to_end(spec: &Path, workers: usize, environment: Environment) -> String {
    let Output { status, stderr, .. } = start(spec, workers, environment)
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(status.success(), "{stderr}");
    stderr
}

/// Starts a run and kills it with SIGKILL after `delay`; returns whether
/// it was killed (it may have finished first).
fn kill_after(spec: &Path, workers: usize, delay: Duration, environment: Environment) -> bool {
    let mut child = start(spec, workers, environment);
    std::thread::sleep(delay);
    let killed = child.try_wait().unwrap().is_none() && child.kill().is_ok();
    child.wait().unwrap();
    killed
}

/// The rows of a JSONL sink directory by (partition, offset), as written;
/// a row written twice fails the test.
fn jsonl_rows(dir: &Path) -> BTreeMap<(u64, u64), String> {
    let mut rows = BTreeMap::new();
    for line in sink_lines(dir) {
        let row: serde_json::Value = serde_json::from_str(&line).unwrap();
        let origin = (
            row["_partition"].as_u64().unwrap(),
            row["_offset"].as_u64().unwrap(),
        );
        assert!(
            rows.insert(origin, line.clone()).is_none(),
            "{origin:?} written twice in {}",
            dir.display()
        );
    }
    rows
}

/// Every line of a sink directory's files, none of them left pending.
fn sink_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".pending"), "{name} left pending");
        lines.extend(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    lines
}

/// The feature values of a Parquet sink directory by (partition, offset),
/// as bits; a row written twice fails the test.
fn parquet_rows(dir: &Path) -> BTreeMap<(u64, u64), Vec<Option<u64>>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    let mut rows = BTreeMap::new();
    for batch in common::read_parquet_batches(dir) {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (partitions, offsets) = (column("_partition"), column("_offset"));
        let sums = column("amount_sum_1h");
        let gaps = column("gap_ms");
        let means = column("merchant_mean_10m");
        for index in 0..batch.num_rows() {
            let float = |array: &arrow_array::ArrayRef| {
                let floats = array.as_primitive::<Float64Type>();
                floats
                    .is_valid(index)
                    .then(|| floats.value(index).to_bits())
            };
            let gap = gaps.as_primitive::<Int64Type>();
            let origin = (
                partitions.as_primitive::<Int64Type>().value(index) as u64,
                offsets.as_primitive::<Int64Type>().value(index) as u64,
            );
            let values = vec![
                float(&sums),
                gap.is_valid(index).then(|| gap.value(index) as u64),
                float(&means),
            ];
            assert!(rows.insert(origin, values).is_none(), "{origin:?} twice");
        }
    }
    rows
}

/// The feature values of JSONL rows, as [`parquet_rows`] gives them.
fn as_parquet_values(
    rows: &BTreeMap<(u64, u64), String>,
) -> BTreeMap<(u64, u64), Vec<Option<u64>>> {
    rows.iter()
        .map(|(origin, line)| {
            let float = |name: &str| {
                number_text(line, name).map(|text| text.parse::<f64>().unwrap().to_bits())
            };
            let gap = number_text(line, "gap_ms").map(|text| text.parse::<i64>().unwrap() as u64);
            (
                *origin,
                vec![float("amount_sum_1h"), gap, float("merchant_mean_10m")],
            )
        })
        .collect()
}

/// The text of a number field of a JSON line (`None` for null), read by
/// the standard library's parser: serde_json's own may miss a float's
/// last bit.
fn number_text<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":");
    let start = line.find(&key).unwrap() + key.len();
    let text = line[start..].split([',', '}']).next().unwrap();
    (text != "null").then_some(text)
}

/// Checks that `out` holds exactly what the uninterrupted run in
/// `reference` wrote: every row and dead letter, once, the same bytes.
fn assert_same_outputs(out: &Path, reference: &Path) {
    for sink in ["rows", "dead"] {
        let (got, expected) = (
            jsonl_rows(&out.join(sink)),
            jsonl_rows(&reference.join(sink)),
        );
        assert_eq!(got.len(), expected.len(), "{sink}: row count");
        for (origin, line) in &expected {
            assert_eq!(got.get(origin), Some(line), "{sink} at {origin:?}");
        }
    }
    let expected = as_parquet_values(&jsonl_rows(&reference.join("rows")));
    let got = parquet_rows(&out.join("parquet"));
    assert_eq!(got.len(), expected.len(), "parquet: row count");
    for (origin, values) in &expected {
        assert_eq!(got.get(origin), Some(values), "parquet at {origin:?}");
    }
}

/// The uninterrupted run of `count` records, without checkpoints.
fn reference(dir: &Path, count: u64) -> PathBuf {
    let out = dir.join("reference");
    let stderr = run_to_end(&spec(&out, count, None, false), 2, NO_ENV);
    assert!(stderr.contains("records in"), "{stderr}");
    out
}

/// A test of `count` records paced at `rate`: its directory, the
/// uninterrupted run's outputs, and the checkpointed run's outputs (under
/// `name`) and spec.
struct Case {
    /// Kept until the test ends: dropping it removes the directory.
    _dir: tempfile::TempDir,
    reference: PathBuf,
    out: PathBuf,
    spec: PathBuf,
}

impl Case {
    fn new(name: &str, count: u64, rate: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let reference = reference(dir.path(), count);
        let out = dir.path().join(name);
        let spec = spec(&out, count, Some(rate), true);
        Case {
            _dir: dir,
            reference,
            out,
            spec,
        }
    }
}

/// Delays between 150 and 650 ms from a fixed seed, so that every run
/// of the test kills at the same points.
fn delays() -> impl Iterator<Item = Duration> {
    let mut random = 0x2545_f491_4f6c_dd1du64;
    std::iter::repeat_with(move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        Duration::from_millis(150 + random % 500)
    })
}

#[test]
fn a_run_killed_twenty_times_writes_exactly_the_rows_of_one_uninterrupted_run() {
    let count = 60_000;
    let Case {
        _dir,
        reference,
        out,
        spec,
    } = Case::new("killed", count, 5_000);
    let mut kills = 0;
    for delay in delays().take(200) {
        if kills == 20 {
            break;
        }
        if kill_after(&spec, 2, delay, NO_ENV) {
            kills += 1;
        } else {
            break;
        }
    }
    assert_eq!(kills, 20, "the run ended before it was killed 20 times");
    let stderr = run_to_end(&spec, 2, NO_ENV);
    // Started from a checkpoint, it read only what came after it: no
    // replay of the records before.
    assert!(stderr.contains("restored checkpoint"), "{stderr}");
    let read: u64 = common::summary_number(&stderr, "records in");
    assert!(read < count, "the last run read {read} of {count} records");
    assert!(!stderr.contains("replayed"), "{stderr}");
    assert_same_outputs(&out, &reference);
}

#[test]
fn a_checkpoint_restores_onto_another_number_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let count = 12_000;
    let reference = reference(dir.path(), count);
    for (before, after) in [(2, 4), (4, 1)] {
        let out = dir.path().join(format!("{before}-to-{after}"));
        let spec = spec(&out, count, Some(8_000), true);
        assert!(kill_after(
            &spec,
            before,
            Duration::from_millis(700),
            NO_ENV
        ));
        let stderr = run_to_end(&spec, after, NO_ENV);
        assert!(stderr.contains("restored checkpoint"), "{stderr}");
        assert_same_outputs(&out, &reference);
    }
}

/// Starts one process of `spec` on `workers` workers writing to `out`,
/// waits until it has committed a checkpoint, and kills it with SIGKILL
/// soon after; it must still have been running.
fn kill_after_a_checkpoint(spec: &Path, out: &Path, workers: usize) {
    let mut child = start(spec, workers, NO_ENV);
    common::wait_until(
        Duration::from_secs(60),
        "no checkpoint committed in a minute",
        || !common::committed_checkpoints(out).is_empty(),
    );
    std::thread::sleep(Duration::from_millis(100));
    common::kill_running(&mut child);
}

/// Starts the processes of a cluster running `spec`, one worker each, on
/// free loopback ports.
fn start_cluster(spec: &Path, processes: usize) -> common::Members {
    let hosts = common::hosts_file(spec, processes);
    common::Members::start(&hosts, processes, |_| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tideflow"));
        command
            .args(["run", &spec.display().to_string(), "--workers", "1"])
            .stdout(Stdio::null());
        command
    })
}

/// Runs a cluster of `spec` to the end and returns process 0's standard
/// error; every process must succeed.
fn run_cluster_to_end(spec: &Path, processes: usize) -> String {
    let mut members = start_cluster(spec, processes);
    assert!(members.wait(), "{}", members.logs());
    members.log(0)
}

/// Starts a cluster writing to `out`, waits until it has committed a
/// checkpoint newer than `newest` (its processes connect first), then
/// kills every process with SIGKILL after `delay`.
/// Returns the newest checkpoint committed by then; every process must
/// still have been running.
fn kill_cluster_after_a_checkpoint(spec: &Path, out: &Path, newest: u64, delay: Duration) -> u64 {
    let newest_now = || {
        common::committed_checkpoints(out)
            .last()
            .map_or(0, |(id, _)| *id)
    };
    let mut members = start_cluster(spec, 2);
    let started = std::time::Instant::now();
    while newest_now() <= newest {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cluster committed no checkpoint after {newest} in a minute:\n{}",
            members.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(delay);
    assert!(
        members.all_running(),
        "the cluster finished before it was killed:\n{}",
        members.logs()
    );
    members.kill();
    newest_now()
}

#[test]
fn checkpoints_of_a_cluster_restore_onto_one_process_and_back() {
    let dir = tempfile::tempdir().unwrap();
    // Eight seconds of records at 5000/s: each kill comes after a
    // checkpoint the cluster committed (the first after its processes have
    // connected) and must still find it running.
    let count = 40_000;
    let reference = reference(dir.path(), count);

    // Two processes killed twice, each restart restoring the cluster's
    // last checkpoint, then one process of two workers to the end.
    let out = dir.path().join("2-processes-to-1");
    let cluster_spec = spec(&out, count, Some(5_000), true);
    let mut newest = 0;
    for delay in [250, 100] {
        newest = kill_cluster_after_a_checkpoint(
            &cluster_spec,
            &out,
            newest,
            Duration::from_millis(delay),
        );
    }
    let stderr = run_to_end(&cluster_spec, 2, NO_ENV);
    assert!(stderr.contains("restored checkpoint"), "{stderr}");
    let read = common::summary_number(&stderr, "records in");
    assert!(read < count, "the last run read {read} of {count} records");
    assert_same_outputs(&out, &reference);

    // One process killed, then a cluster of two to the end.
    let out = dir.path().join("1-process-to-2");
    let single_spec = spec(&out, count, Some(8_000), true);
    kill_after_a_checkpoint(&single_spec, &out, 2);
    let stderr = run_cluster_to_end(&single_spec, 2);
    assert!(stderr.contains("restored checkpoint"), "{stderr}");
    assert_same_outputs(&out, &reference);
}

/// A worker with no partition, or whose partitions have ended, does not
/// stop the others' checkpoints: it follows them, and the last checkpoint
/// waits until every source has finished.
#[test]
fn sources_that_finish_first_do_not_stop_checkpoints() {
    let case = Case::new("more-workers-than-partitions", 12_000, 8_000);
    // Six workers for four partitions: two read nothing from the start.
    run_to_end(&case.spec, 6, NO_ENV);
    let committed = common::committed_checkpoints(&case.out);
    let (newest, _) = committed.last().expect("checkpoints were taken");
    // The generator paces the run over 1.5 s, ten intervals: more than the
    // last checkpoint alone (all there was when the first source to
    // finish started it).
    assert!(
        *newest >= 2,
        "a run of 1.5 s with checkpoints every 150 ms took only {newest}"
    );
    assert_same_outputs(&case.out, &case.reference);
}

#[test]
fn a_corrupted_checkpoint_is_refused_and_the_one_before_is_used() {
    let Case {
        _dir,
        reference,
        out,
        spec,
    } = Case::new("corrupted", 12_000, 8_000);
    assert!(kill_after(&spec, 2, Duration::from_millis(800), NO_ENV));
    let committed = common::committed_checkpoints(&out);
    assert!(committed.len() >= 2, "{committed:?}");
    let (newest_id, newest) = committed.last().unwrap();
    let part = newest.join("stage1-w0");
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&part, bytes).unwrap();
    let stderr = run_to_end(&spec, 2, NO_ENV);
    assert!(
        stderr.contains(&format!("checkpoint {newest_id} refused"))
            && stderr.contains("part 'stage1-w0' has checksum"),
        "{stderr}"
    );
    assert_same_outputs(&out, &reference);
}

#[test]
fn running_a_finished_job_again_changes_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("finished");
    let spec = spec(&out, 5_000, None, true);
    run_to_end(&spec, 2, NO_ENV);
    let before = (
        jsonl_rows(&out.join("rows")),
        jsonl_rows(&out.join("dead")),
        parquet_rows(&out.join("parquet")),
    );
    let stderr = run_to_end(&spec, 2, NO_ENV);
    assert_eq!(common::summary_number(&stderr, "records in"), 0, "{stderr}");
    let after = (
        jsonl_rows(&out.join("rows")),
        jsonl_rows(&out.join("dead")),
        parquet_rows(&out.join("parquet")),
    );
    assert_eq!(before, after);
    assert_eq!(before.0.len() + before.1.len(), 5_000);

    // Without its checkpoints, a run would add a second copy beside the
    // first: it is refused, and says what to do.
    std::fs::remove_dir_all(out.join("state")).unwrap();
    let Output { status, stderr, .. } = start(&spec, 2, NO_ENV).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("holds outputs of an earlier run"),
        "{stderr}"
    );
    assert_eq!(jsonl_rows(&out.join("rows")), before.0);
}

/// The metrics of a checkpointed run say what its newest checkpoint holds:
/// its bytes are those of its parts on disk, and the user stage holds one
/// key per user with a record that was not late (the stage has a
/// `since_prev` feature, so it forgets no key), counted here from the
/// generator's own records.
#[test]
fn checkpoint_metrics_say_what_the_newest_checkpoint_holds() {
    use tideflow::dataflow::{RunOptions, run};
    use tideflow_connectors::generator::GeneratorConfig;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("metrics");
    let count = 6_000;
    let plan = tideflow::plan::load(&spec(&out, count, None, true), &[]).unwrap();
    let metrics = std::sync::Arc::new(tideflow::metrics::Metrics::default());
    let options = RunOptions {
        workers: 2,
        metrics: Some(metrics.clone()),
        ..RunOptions::default()
    };
    let summary = run(plan, &options).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    let text = metrics.render();
    let gauge = |line_start: &str| -> u64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };

    let (newest_id, newest) = common::committed_checkpoints(&out).pop().unwrap();
    let parts_bytes: u64 = std::fs::read_dir(&newest)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name() != "MANIFEST")
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    assert_eq!(gauge("tideflow_checkpoint_bytes "), parts_bytes);
    assert_eq!(gauge("tideflow_checkpoint_id "), newest_id);

    let config = GeneratorConfig {
        users: 300,
        merchants: 20,
        partitions: 4,
        count: Some(count),
        spacing_ms: 50.0,
        disorder_fraction: 0.05,
        disorder_max_ms: 3_000,
        ..GeneratorConfig::default()
    };
    let mut users = std::collections::BTreeSet::new();
    for partition in 0..4 {
        let mut newest_time = i64::MIN;
        for offset in 0..config.partition_count(partition).unwrap() {
            let (user, _, _, time) = config.record(partition, offset);
            // Late: more than max_out_of_orderness behind the partition.
            if time < newest_time.saturating_sub(1_000) {
                continue;
            }
            newest_time = newest_time.max(time);
            users.insert(user);
        }
    }
    assert_eq!(
        gauge("tideflow_state_keys{stage=\"user_id\"}"),
        users.len() as u64
    );
}

#[test]
fn checkpoints_in_s3_restore_killed_runs_and_refuse_a_corrupted_one() {
    let moto = common::moto::Moto::start();
    let environment = moto.environment();
    let dir = tempfile::tempdir().unwrap();
    // Ten seconds of records: each run must commit a checkpoint to the
    // bucket (slower than a disk) before it is killed.
    let count = 40_000;
    let reference = reference(dir.path(), count);
    let out = dir.path().join("s3");
    let spec_path = spec(&out, count, Some(4_000), false);
    let mut text = std::fs::read_to_string(&spec_path).unwrap();
    text.push_str(&format!(
        "[state]\ndir = \"s3://{}/runs/s3\"\ninterval = \"150ms\"\n",
        common::moto::BUCKET
    ));
    std::fs::write(&spec_path, text).unwrap();

    // Five runs, each killed once it has committed a checkpoint of its own.
    let newest_manifest = || {
        moto.keys("runs/s3/checkpoints/")
            .into_iter()
            .rfind(|key| key.ends_with("/MANIFEST"))
    };
    for _ in 0..5 {
        let before = newest_manifest();
        let mut child = start(&spec_path, 2, &environment);
        common::wait_until(
            Duration::from_secs(60),
            "no checkpoint committed to the bucket in a minute",
            || newest_manifest() > before,
        );
        common::kill_running(&mut child);
    }
    // The checkpoints are in the bucket, none on the local disk.
    let manifests: Vec<String> = moto
        .keys("runs/s3/checkpoints/")
        .into_iter()
        .filter(|key| key.ends_with("/MANIFEST"))
        .collect();
    assert!(manifests.len() >= 2, "{manifests:?}");
    assert!(!out.join("state").exists());
    let newest = manifests.last().unwrap().trim_end_matches("MANIFEST");
    let newest_id: u64 = newest
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    moto.flip_a_bit(&format!("{newest}stage1-w0"));

    let stderr = run_to_end(&spec_path, 2, &environment);
    assert!(
        stderr.contains(&format!("checkpoint {newest_id} refused"))
            && stderr.contains("part 'stage1-w0' has checksum")
            && stderr.contains("restored checkpoint"),
        "{stderr}"
    );
    let read = common::summary_number(&stderr, "records in");
    assert!(read < count, "the last run read {read} of {count} records");
    assert_same_outputs(&out, &reference);
}

/// A training set: generator transactions joined to a merchant changelog
/// (files, out of order within the bound) with a feature over the joined
/// risk keyed by the source's key and one keyed by merchant, labelled by
/// chargebacks (files) within a horizon.
const TRAINING: &str = r#"
name = "training_checkpointed"
[source]
type = "generator"
key = "user_id"
users = 300
merchants = 20
partitions = 4
count = COUNT
RATE
spacing_ms = 50.0
[schema]
tx_id = "string"
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[table]]
name = "merchants"
type = "files"
path = "DATA/merchants"
format = "jsonl"
key = "merchant_id"
[table.schema]
merchant_id = "string"
risk = "f64"
updated_at = "timestamp_ms"
[table.time]
field = "updated_at"
max_out_of_orderness = "5s"
[[join]]
table = "merchants"
on = "merchant_id"
columns = ["risk"]
[[feature]]
name = "risk_max_10m"
agg = "max"
field = "risk"
window = "10m"
[[feature]]
name = "merchant_risk_mean_1m"
key = "merchant_id"
agg = "mean"
field = "risk"
window = "1m"
[[label]]
name = "fraud"
type = "files"
path = "DATA/labels"
format = "jsonl"
on = "tx_id"
value = "fraud"
horizon = "2m"
default = 0
[label.schema]
tx_id = "string"
fraud = "i64"
reported_at = "timestamp_ms"
[label.time]
field = "reported_at"
max_out_of_orderness = "10s"
[[sink]]
type = "jsonl"
path = "OUT/rows"
[dead_letters]
type = "jsonl"
path = "OUT/dead"
"#;

/// Writes the changelog (two partitions, versions of the 20 merchants
/// every few seconds of event time, out of order within the bound) and
/// the chargebacks (one transaction in seven, up to three minutes later)
/// of `count` generator transactions.
fn training_data(dir: &Path, count: u64) {
    use tideflow_connectors::generator::GeneratorConfig;
    let config = GeneratorConfig {
        users: 300,
        merchants: 20,
        partitions: 4,
        count: Some(count),
        spacing_ms: 50.0,
        ..GeneratorConfig::default()
    };
    let start = config.start_ms;
    let span = (count as f64 * config.spacing_ms) as i64;
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % bound
    };
    for name in ["merchants", "labels"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    for partition in 0..2 {
        let lines: Vec<String> = (0..span / 2_000)
            .map(|step| {
                let time = start - 60_000 + step * 2_000 - next(4_000) as i64;
                format!(
                    r#"{{"merchant_id":"m{}","risk":{},"updated_at":{time}}}"#,
                    next(20),
                    next(1000) as f64 / 1000.0
                )
            })
            .collect();
        std::fs::write(
            dir.join(format!("merchants/p{partition}.jsonl")),
            lines.join("\n") + "\n",
        )
        .unwrap();
    }
    let mut labels: Vec<(i64, String)> = Vec::new();
    for partition in 0..4u32 {
        for offset in (0..count / 4).filter(|offset| offset % 7 == 3) {
            let (_, _, _, time) = config.record(partition, offset);
            let reported = time + next(180_000) as i64;
            labels.push((
                reported,
                format!(
                    r#"{{"tx_id":"t{partition}-{offset}","fraud":{},"reported_at":{reported}}}"#,
                    1 + next(2)
                ),
            ));
        }
    }
    labels.sort();
    let lines: Vec<String> = labels.into_iter().map(|(_, line)| line).collect();
    std::fs::write(dir.join("labels/p0.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn training_spec(data: &Path, out: &Path, count: u64, rate: Option<u32>) -> PathBuf {
    let mut text = TRAINING
        .replace("COUNT", &count.to_string())
        .replace(
            "RATE",
            &rate.map_or(String::new(), |rate| format!("rate = {rate}")),
        )
        .replace("DATA", &data.display().to_string())
        .replace("OUT", &out.display().to_string());
    if rate.is_some() {
        text.push_str(&format!(
            "[state]\ndir = \"{}\"\ninterval = \"150ms\"\n",
            out.join("state").display()
        ));
    }
    std::fs::create_dir_all(out).unwrap();
    let path = out.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Joins and labels hold rows (events waiting for the table, rows waiting
/// for their horizon) and state (versions, label records) at every cut:
/// killed ten times and restored, sometimes onto another number of
/// workers, a training run writes exactly the rows of one uninterrupted
/// run.
#[test]
fn a_training_run_killed_and_restored_writes_the_rows_of_one_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let count = 24_000;
    training_data(dir.path(), count);
    let reference = dir.path().join("reference");
    let stderr = run_to_end(
        &training_spec(dir.path(), &reference, count, None),
        2,
        NO_ENV,
    );
    assert!(stderr.contains("tables and labels"), "{stderr}");
    let expected = jsonl_rows(&reference.join("rows"));
    assert_eq!(expected.len() as u64, count);
    let labelled = expected
        .values()
        .filter(|line| !line.contains(r#""fraud":0"#));
    assert!(labelled.count() > 100, "the data labels some rows");
    let out = dir.path().join("killed");
    let spec = training_spec(dir.path(), &out, count, Some(4_000));
    let mut kills = 0;
    for (attempt, delay) in delays().take(100).enumerate() {
        if kills == 10 {
            break;
        }
        let workers = [2, 1, 3][attempt % 3];
        if kill_after(&spec, workers, delay * 2, NO_ENV) {
            kills += 1;
        } else {
            break;
        }
    }
    assert_eq!(kills, 10, "the run ended before it was killed 10 times");
    let stderr = run_to_end(&spec, 2, NO_ENV);
    assert!(stderr.contains("restored checkpoint"), "{stderr}");
    let got = jsonl_rows(&out.join("rows"));
    assert_eq!(got.len(), expected.len(), "row count");
    for (origin, line) in &expected {
        assert_eq!(got.get(origin), Some(line), "rows at {origin:?}");
    }
}
