//! State size and checkpoint cost of feature stages: what one key costs
//! in a checkpoint per feature, and how fast a stage's state encodes into
//! checkpoint bytes and decodes back, against cloning it in memory (the
//! least a snapshot can cost) measured in the same run.
//!
//! Workload: `--keys` keys, each with `--records` records one minute
//! apart (amounts with cents), through a stage with one feature over a 1h
//! window (lifetime for `prev` and `since_prev`), then through the fraud
//! workload's four user features together. Bytes are exact and do not
//! drift; the rates are best of `--repeats`.
//!
//! A second table runs the features workload of `benches/features.rs`
//! (generator, four user features, null sink) with a checkpoint every
//! `--interval` against the same run without checkpoints, rounds
//! interleaved, and prints the throughput ratio and what the checkpoints
//! took. A bounded run ends with a last checkpoint of what changed since
//! the one before, which it waits for: the default of 40M events (about
//! ten seconds a run on a 2-core machine) makes that a small part of the
//! run, as it is of a backfill.
//!
//! Run: `cargo bench --bench state -- --keys 100000 --records 20`

use clap::Parser;
use std::time::{Duration, Instant};

#[path = "common.rs"]
mod common;
use tideflow::batch::Batch;
use tideflow::checkpoint;
use tideflow::features::{Agg, StagePlan, StageState, WindowFeature};
use tideflow::row::Row;
use tideflow_connectors::{Value, format_compact};

#[derive(Debug, Parser)]
struct Args {
    /// Keys in the stage.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Records per key.
    #[arg(long, default_value_t = 20)]
    records: u64,
    /// Rounds of each measurement (the best is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Events of each run of the checkpointed features workload.
    #[arg(long, default_value_t = 40_000_000)]
    events: u64,
    /// Keys of the checkpointed features workload.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    workload_keys: Vec<u64>,
    /// Time between checkpoints in the checkpointed runs.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Memory touched and freed before each run of the workload, in MiB
    /// (0: none); see [`warm_memory`].
    #[arg(long, default_value_t = 1024)]
    warm_mib: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

const HOUR_MS: i64 = 3_600_000;

/// A stage's features: each an aggregation and its window (`None`:
/// lifetime).
type Features = Vec<(Agg, Option<i64>)>;

/// A stage keyed by slot 0, reading amounts from slot 1.
fn stage(features: &[(Agg, Option<i64>)]) -> StagePlan {
    StagePlan {
        key_name: "user_id".into(),
        key_slot: 0,
        source_keyed: true,
        features: features
            .iter()
            .enumerate()
            .map(|(index, (agg, window))| WindowFeature {
                name: format!("f{index}"),
                slot: 2 + index,
                agg: *agg,
                field: (*agg != Agg::SincePrev && *agg != Agg::Count).then_some(1),
                window: *window,
            })
            .collect(),
        key_ttl_ms: None,
    }
}

/// The stage after every key's records, in batches of 4096 rows.
fn filled(plan: &StagePlan, args: &Args) -> StageState {
    let mut state = StageState::new(plan);
    let mut rows = Vec::new();
    let mut feed = |rows: &mut Vec<Row>| {
        let mut batch = Batch::from_rows(std::mem::take(rows));
        state.apply_batch(plan, 0, &mut batch).unwrap();
    };
    for round in 0..args.records {
        for key in 0..args.keys {
            let cents = (key * 7919 + round * 104_729) % 100_000;
            rows.push(Row {
                partition: 0,
                offset: round * args.keys + key,
                time: 1_700_000_000_000 + (round as i64) * 60_000,
                values: vec![
                    Value::Str(format_compact!("user-{key}")),
                    Value::F64(cents as f64 / 100.0),
                ],
                warm_up: false,
            });
            if rows.len() == 4096 {
                feed(&mut rows);
            }
        }
    }
    feed(&mut rows);
    state
}

/// The best of `repeats` runs of `work`.
fn best(repeats: usize, mut work: impl FnMut()) -> Duration {
    (0..repeats.max(1))
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    common::allocate_as_the_binary_does();
    let args = Args::parse();
    println!(
        "feature state: {} keys, {} records each, one minute apart",
        args.keys, args.records
    );
    println!(
        "{:>28} {:>15} {:>16} {:>16} {:>17} {:>17}",
        "stage", "bytes per key", "encode MB/s", "decode MB/s", "encode / clone", "decode / clone"
    );
    let singles = [
        (Agg::Count, Some(HOUR_MS)),
        (Agg::Sum, Some(HOUR_MS)),
        (Agg::Mean, Some(HOUR_MS)),
        (Agg::Min, Some(HOUR_MS)),
        (Agg::Max, Some(HOUR_MS)),
        (Agg::Std, Some(HOUR_MS)),
        (Agg::DistinctCount, Some(HOUR_MS)),
        (Agg::Prev, None),
        (Agg::SincePrev, None),
    ];
    let fraud = [
        (Agg::Sum, Some(HOUR_MS)),
        (Agg::Count, Some(10 * 60_000)),
        (Agg::Mean, Some(24 * HOUR_MS)),
        (Agg::Max, Some(HOUR_MS)),
    ];
    let mut stages: Vec<(String, Features)> = singles
        .iter()
        .map(|(agg, window)| {
            let length = if window.is_some() { "1h" } else { "lifetime" };
            (format!("{agg:?} {length}"), vec![(*agg, *window)])
        })
        .collect();
    stages.push(("fraud's 4 user features".into(), fraud.to_vec()));
    for (name, features) in stages {
        let plan = stage(&features);
        let state = filled(&plan, &args);
        let bytes = checkpoint::encode(&state);
        let megabytes = bytes.len() as f64 / 1e6;
        let encode = best(args.repeats, || {
            std::hint::black_box(checkpoint::encode(&state));
        });
        let decode = best(args.repeats, || {
            let restored: StageState = checkpoint::decode(&bytes).unwrap();
            std::hint::black_box(restored);
        });
        let clone = best(args.repeats, || {
            std::hint::black_box(state.clone());
        });
        println!(
            "{name:>28} {:>15.1} {:>16.0} {:>16.0} {:>17.2} {:>17.2}",
            bytes.len() as f64 / args.keys as f64,
            megabytes / encode.as_secs_f64(),
            megabytes / decode.as_secs_f64(),
            encode.as_secs_f64() / clone.as_secs_f64(),
            decode.as_secs_f64() / clone.as_secs_f64(),
        );
    }
    checkpointed_workload(&args);
}

/// The features workload with checkpoints against without.
fn checkpointed_workload(args: &Args) {
    println!(
        "\nfeatures workload, {} events, 1 worker, a checkpoint every {} against none",
        args.events, args.interval
    );
    println!(
        "{:>9} {:>16} {:>20} {:>12} {:>13} {:>16}",
        "keys", "plain events/s", "checkpointed ev/s", "ratio", "checkpoints", "newest bytes"
    );
    let state = tempfile::tempdir().expect("a temporary directory");
    for keys in &args.workload_keys {
        let overrides = vec![
            format!("source.users={keys}"),
            format!("source.count={}", args.events),
        ];
        let plain = common::feature_spec();
        let checkpointed = format!(
            "{plain}\n[state]\ndir = \"{}\"\ninterval = \"{}\"\n",
            state.path().display(),
            args.interval
        );
        let mut taken = (0, 0);
        let warm = args.warm_mib << 20;
        let timings = common::timed_interleaved(
            args.repeats,
            &mut [
                &mut || {
                    warm_memory(warm);
                    common::run_spec(&plain, &overrides, 1).1
                },
                &mut || {
                    // Each round starts afresh: a restored run would read
                    // nothing.
                    let _ = std::fs::remove_dir_all(state.path());
                    warm_memory(warm);
                    let elapsed = common::run_spec(&checkpointed, &overrides, 1).1;
                    taken = newest_checkpoint(state.path());
                    elapsed
                },
            ],
        );
        let rate = |elapsed: Duration| args.events as f64 / elapsed.as_secs_f64();
        let (plain_rate, checkpointed_rate) = (rate(timings[0].best), rate(timings[1].best));
        println!(
            "{keys:>9} {plain_rate:>16.0} {checkpointed_rate:>20.0} {:>12.2} {:>13} {:>16}",
            checkpointed_rate / plain_rate,
            taken.0,
            taken.1
        );
    }
}

/// Touches `bytes` of fresh memory and frees it, so that the run after
/// finds the machine's memory ready, whichever run came before. On a
/// virtual machine whose host backs guest memory only once it is touched
/// and takes freed memory back after a few seconds, a run's first touch
/// of memory beyond what was freed just before costs several times the
/// work itself: here the plain run took 3.26 s five idle seconds after
/// another run, against 2.13 s right after one (`tideflow run`, 8M
/// events, 1k keys), and a checkpointed run, which holds a few dozen MB
/// more, paid for that whenever it followed a plain one.
fn warm_memory(bytes: usize) {
    let mut block = vec![0u8; bytes];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
}

/// The number of the newest checkpoint in `dir` (how many a run took)
/// and its size in bytes.
fn newest_checkpoint(dir: &std::path::Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir.join("checkpoints")) else {
        return (0, 0);
    };
    let newest = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let bytes = std::fs::read_dir(dir.join(format!("checkpoints/{newest:020}")))
        .map(|parts| {
            parts
                .filter_map(|part| part.ok()?.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0);
    (newest, bytes)
}
