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
//! they run, so "2w per w / loop" falls with it. "2w per w / 2 loops" sets
//! each of two workers against each of those two loops: both sides run two
//! threads at once. "noise" is the largest median-to-best ratio among the
//! row's measurements: near 1 when the machine was quiet; well above it,
//! the ratios rest on lucky rounds.
//!
//! Run: `cargo bench --bench features -- --events 2000000`

use clap::Parser;
use std::time::Duration;

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

fn main() {
    common::allocate_as_the_binary_does();
    let args = Args::parse();
    println!(
        "feature throughput: {} events, 4 window features, generator source, null sink",
        args.events
    );
    println!(
        "{:>9} {:>14} {:>15} {:>17} {:>10} {:>16} {:>22} {:>16} {:>19} {:>6}",
        "keys",
        "loop events/s",
        "engine 1w ev/s",
        "engine 2w ev/s/w",
        "1w / loop",
        "2w per w / loop",
        "1w no features / loop",
        "2 loops at once",
        "2w per w / 2 loops",
        "noise"
    );
    for keys in &args.keys {
        let config = common::feature_generator(*keys, args.events);
        let overrides = vec![
            format!("source.users={keys}"),
            format!("source.count={}", args.events),
        ];
        let (features, pipeline) = (common::feature_spec(), common::pipeline_spec());
        let engine = |spec: &str, workers| common::run_spec(spec, &overrides, workers).1;
        let timings = common::timed_interleaved(
            args.repeats,
            &mut [
                &mut || common::one_loop(&config),
                &mut || engine(&features, 1),
                &mut || engine(&features, 2),
                &mut || engine(&pipeline, 1),
                &mut || common::two_loops_at_once(&config),
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
            "{keys:>9} {loop_rate:>14.0} {one_rate:>15.0} {two_rate:>17.0} {:>10.2} {:>16.2} {:>22.2} {:>16.2} {:>19.2} {noise:>6.2}",
            one_rate / loop_rate,
            two_rate / loop_rate,
            pipeline_rate / loop_rate,
            pair_rate / loop_rate,
            two_rate / pair_rate
        );
    }
}
