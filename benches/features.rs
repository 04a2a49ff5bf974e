//! Feature throughput: the engine against a hand-written single-threaded loop
//! computing the same four window features on the same generator records,
//! measured side by side in one run.
//!
//! Workload: generator transactions keyed by user (1k, 100k, 1M users), four
//! window features per user (sum 1h, count 10m, mean 24h, max 1h), no model,
//! bulk batching, null sink. The loop generates the same records and keeps
//! per-user deques with running sums, which is what one would write by hand.
//!
//! The last column runs the engine on the same records without features
//! (generator, decode, operators, null sink): the ratio one worker could
//! reach if features cost nothing, so a gap to the loop shows whether it
//! lies in the feature operator or in the rest of the engine.
//!
//! Two columns say how far to trust a row. "2 loops at once" runs two
//! copies of the loop side by side, one per thread, and gives the speed of
//! each against the loop alone: near 1 when the machine runs two threads as
//! well as one; well below it (two virtual CPUs sharing a core, or its
//! caches, with other work), two workers lose that much per worker wherever
//! they run, so "2w per w / loop" falls with it. "noise" is the largest
//! median-to-best ratio among the row's measurements: near 1 when the
//! machine was quiet; well above it, the ratios rest on lucky rounds.
//!
//! Run: `cargo bench --bench features -- --events 2000000`

use clap::Parser;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tideflow_connectors::generator::GeneratorConfig;

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// User counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    keys: Vec<u64>,
    /// Rounds of the five measurements, interleaved so that a burst of
    /// noise on the machine hits them alike (each one's best is kept).
    /// Five: on a shared machine, repeated runs of one program vary widely.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

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

fn hand_written_loop(config: &GeneratorConfig) -> f64 {
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
            state.hour.push_back((time, amount));
            state.hour_sum += amount;
            while state
                .hour
                .front()
                .is_some_and(|(t, _)| *t <= time - 3_600_000)
            {
                state.hour_sum -= state.hour.pop_front().map_or(0.0, |(_, a)| a);
            }
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
            state.day.push_back((time, amount));
            state.day_sum += amount;
            while state
                .day
                .front()
                .is_some_and(|(t, _)| *t <= time - 86_400_000)
            {
                state.day_sum -= state.day.pop_front().map_or(0.0, |(_, a)| a);
            }
            let max = state.hour_max.front().map_or(0.0, |(_, a)| *a);
            checksum += state.hour_sum
                + state.ten_minutes.len() as f64
                + state.day_sum / state.day.len() as f64
                + max;
        }
    }
    checksum
}

/// Runs the loop twice at once, on two threads; returns the time both
/// took (each did the whole loop's work).
fn two_loops_at_once(config: &GeneratorConfig) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let other = scope.spawn(|| std::hint::black_box(hand_written_loop(config)));
        std::hint::black_box(hand_written_loop(config));
        let _ = other.join();
    });
    started.elapsed()
}

fn main() {
    let args = Args::parse();
    println!(
        "feature throughput: {} events, 4 window features, generator source, null sink",
        args.events
    );
    println!(
        "{:>9} {:>14} {:>15} {:>17} {:>10} {:>16} {:>22} {:>16} {:>6}",
        "keys",
        "loop events/s",
        "engine 1w ev/s",
        "engine 2w ev/s/w",
        "1w / loop",
        "2w per w / loop",
        "1w no features / loop",
        "2 loops at once",
        "noise"
    );
    for keys in &args.keys {
        let config = GeneratorConfig {
            users: *keys,
            count: Some(args.events),
            partitions: 4,
            spacing_ms: 5.0,
            ..GeneratorConfig::default()
        };
        let overrides = vec![
            format!("source.users={keys}"),
            format!("source.count={}", args.events),
        ];
        let (features, pipeline) = (common::feature_spec(), common::pipeline_spec());
        let engine = |spec: &str, workers| common::run_spec(spec, &overrides, workers).1;
        let timings = common::timed_interleaved(
            args.repeats,
            &mut [
                &mut || {
                    let started = Instant::now();
                    std::hint::black_box(hand_written_loop(&config));
                    started.elapsed()
                },
                &mut || engine(&features, 1),
                &mut || engine(&features, 2),
                &mut || engine(&pipeline, 1),
                &mut || two_loops_at_once(&config),
            ],
        );
        let rate = |elapsed: Duration| args.events as f64 / elapsed.as_secs_f64();
        let [loop_rate, one_rate, two_rate, pipeline_rate, pair_rate] =
            [0, 1, 2, 3, 4].map(|index| rate(timings[index].best));
        let two_rate = two_rate / 2.0;
        let noise = timings
            .iter()
            .map(common::Timings::spread)
            .fold(1.0, f64::max);
        println!(
            "{keys:>9} {loop_rate:>14.0} {one_rate:>15.0} {two_rate:>17.0} {:>10.2} {:>16.2} {:>22.2} {:>16.2} {noise:>6.2}",
            one_rate / loop_rate,
            two_rate / loop_rate,
            pipeline_rate / loop_rate,
            pair_rate / loop_rate
        );
    }
}
