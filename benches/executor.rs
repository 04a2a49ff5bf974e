//! The shared inference executor against a session per worker, in the
//! same run: `--workers` threads each score their share of `--rows` rows
//! of the example MLP in batches of each `--batches` size (micro and
//! bulk), handing them to their own session or to the process's one
//! executor, which scores the batches that meet within `--max-delay`
//! together. Printed per batch size: rows/s over all workers, and each
//! batch's latency (from handing it in to having it back scored) at p50
//! and p99, for both; then the shared executor's rows/s as a ratio of the
//! per-worker figure and the latency it adds at p99. The two modes take
//! turns, `--repeats` times; each keeps its fastest round.
//!
//! Run: `cargo bench --bench executor -- --workers 2 --rows 400000`.

use clap::Parser;
use std::time::{Duration, Instant};
use tideflow::batch::Batch;
use tideflow::inference::{Model, Scorer, SharedExecutor};
use tideflow::plan::Device;
use tideflow::spec::ExecutorMode;

#[path = "common.rs"]
mod common;

use common::{WIDTH, mlp_plan, scoring_batch};

#[derive(Debug, Parser)]
struct Args {
    /// Rows scored per round, over all workers.
    #[arg(long, default_value_t = 400_000)]
    rows: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "64,4096")]
    batches: Vec<usize>,
    /// How long the shared executor waits for other workers' batches.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    max_delay: Duration,
    #[arg(long, default_value = "models/fraud_mlp.onnx")]
    model: std::path::PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

/// One round of one mode: wall time and every batch's latency.
struct Round {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn main() {
    common::allocate_as_the_binary_does();
    common::require_onnxruntime();
    let args = Args::parse();
    let device = common::explicit_device(&args.device);
    println!(
        "inference executor: {} rows of {WIDTH} features over {} workers, {}, {}, shared executor waits up to {:?}",
        args.rows,
        args.workers,
        args.model.display(),
        args.device,
        args.max_delay
    );
    println!(
        "{:>6} {:>13} {:>9} {:>9} {:>13} {:>9} {:>9} {:>7} {:>11}",
        "batch",
        "per-worker/s",
        "p50 ms",
        "p99 ms",
        "shared/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "+p99 ms"
    );
    for batch in &args.batches {
        let mut best: [Option<Round>; 2] = [None, None];
        for _ in 0..args.repeats.max(1) {
            for (index, shared) in [false, true].into_iter().enumerate() {
                let round = score_round(&args, device, *batch, shared);
                if best[index]
                    .as_ref()
                    .is_none_or(|kept| round.elapsed < kept.elapsed)
                {
                    best[index] = Some(round);
                }
            }
        }
        let [Some(mut own), Some(mut shared)] = best else {
            unreachable!("every mode ran")
        };
        let rate = |round: &Round| args.rows as f64 / round.elapsed.as_secs_f64();
        let (own_p50, own_p99) = percentiles(&mut own.latencies);
        let (shared_p50, shared_p99) = percentiles(&mut shared.latencies);
        println!(
            "{batch:>6} {:>13.0} {own_p50:>9.2} {own_p99:>9.2} {:>13.0} {shared_p50:>9.2} {shared_p99:>9.2} {:>7.2} {:>11.2}",
            rate(&own),
            rate(&shared),
            rate(&shared) / rate(&own),
            shared_p99 - own_p99
        );
    }
}

/// Scores `args.rows` rows in batches of `batch` rows on `args.workers`
/// threads, each with its own session or through one shared executor.
fn score_round(args: &Args, device: Device, batch: usize, shared: bool) -> Round {
    let mut plan = mlp_plan(&args.model, device, 0);
    plan.executor.mode = if shared {
        ExecutorMode::Shared
    } else {
        ExecutorMode::PerWorker
    };
    plan.executor.max_delay = args.max_delay;
    let executor =
        shared.then(|| SharedExecutor::start(Model::open(&plan).expect("model")).expect("start"));
    let scorers: Vec<Scorer> = (0..args.workers)
        .map(|_| match &executor {
            Some(executor) => Scorer::Shared(executor.handle()),
            None => Scorer::PerWorker(Box::new(Model::open(&plan).expect("model"))),
        })
        .collect();
    let per_worker = args.rows / args.workers.max(1);
    let inputs: Vec<f32> = (0..per_worker * WIDTH)
        .map(|index| ((index * 7919) % 1000) as f32 / 50.0)
        .collect();
    // Every worker's batches are built before the clock starts.
    let batches: Vec<Vec<Batch>> = (0..args.workers)
        .map(|_| inputs.chunks(batch * WIDTH).map(scoring_batch).collect())
        .collect();
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| {
        let running: Vec<_> = scorers
            .into_iter()
            .zip(batches)
            .map(|(mut scorer, batches)| {
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(batches.len());
                    for mut batch in batches {
                        let handed_in = Instant::now();
                        scorer.score(&mut batch).expect("score");
                        latencies.push(handed_in.elapsed());
                        std::hint::black_box(&batch);
                    }
                    latencies
                })
            })
            .collect();
        running
            .into_iter()
            .flat_map(|worker| worker.join().expect("worker"))
            .collect()
    });
    Round {
        elapsed: started.elapsed(),
        latencies,
    }
}

/// (p50, p99) in milliseconds.
fn percentiles(latencies: &mut [Duration]) -> (f64, f64) {
    latencies.sort();
    let at = |fraction: f64| {
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}
