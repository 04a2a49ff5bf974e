//! Scaling: the feature workload (benches/features.rs) on 1 worker, on 2
//! worker threads of one process, and on 2 processes of 1 worker each
//! (started with `tideflow launch`, exchanging records by key over
//! loopback TCP), measured in one run. Prints events/s and the ratio to
//! 1 worker: what a second worker gives, and what crossing processes
//! costs against threads.
//!
//! Each figure is the run summary's own rate (records over the time from
//! when the workers started, so a cluster's connection set-up is left
//! out), the best of `--repeats` rounds taken in turn.
//!
//! The same rounds time the features bench's hand-written loop alone and
//! two copies of it at once, one per thread: what this machine gives a
//! second thread while the bench runs (two virtual CPUs may share a core,
//! its caches and memory with other work). The last line sets "vs 1
//! worker" against twice that: near 1, two workers lose what two loops
//! lose; above 1, they lose less (the loop is bound by memory, which two
//! copies share).
//!
//! Run: `cargo bench --bench scaling -- --events 2000000`

use clap::Parser;

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Distinct users (keys).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Rounds of the three measurements, interleaved (each one's best is
    /// kept).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

/// Events/s of the workload in this process on `workers` threads.
fn in_process(overrides: &[String], workers: usize, events: u64) -> f64 {
    let (summary, _) = common::run_spec(&common::feature_spec(), overrides, workers);
    assert_eq!(summary.counts.records_in, events);
    events as f64 / summary.elapsed.as_secs_f64()
}

/// Events/s of the workload on `processes` launched processes of one
/// worker, from process 0's summary of the whole cluster.
fn launched(overrides: &[String], processes: usize, events: u64) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = dir.path().join("features.toml");
    std::fs::write(&spec, common::feature_spec()).expect("writing the spec");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tideflow"));
    command
        .arg("launch")
        .arg(&spec)
        .args(["--processes", &processes.to_string(), "--workers", "1"])
        .arg("--quiet");
    for value in overrides {
        command.args(["--set", value]);
    }
    let output = command.output().expect("starting tideflow launch");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let total = format!("{events} records in = {events} rows out");
    assert!(
        log.contains(&total),
        "no cluster total '{total}' in:\n{log}"
    );
    // "[p0]   1.41 s, 8533 records/s, 2x1 workers; ..."
    let rate = log
        .lines()
        .filter_map(|line| line.strip_prefix("[p0]   "))
        .find_map(|line| {
            let (_, rest) = line.split_once(" s, ")?;
            rest.split_once(" records/s")?.0.parse::<f64>().ok()
        });
    rate.unwrap_or_else(|| panic!("no rate in process 0's summary:\n{log}"))
}

fn main() {
    common::allocate_as_the_binary_does();
    let args = Args::parse();
    common::require_onnxruntime();
    let overrides = vec![
        format!("source.users={}", args.keys),
        format!("source.count={}", args.events),
    ];
    let events = args.events as f64;
    let as_time = |rate: f64| std::time::Duration::from_secs_f64(events / rate);
    let generator = common::feature_generator(args.keys, args.events);
    let fastest = common::fastest_interleaved(
        args.repeats,
        &mut [
            &mut || as_time(in_process(&overrides, 1, args.events)),
            &mut || as_time(in_process(&overrides, 2, args.events)),
            &mut || as_time(launched(&overrides, 2, args.events)),
            &mut || common::one_loop(&generator),
            &mut || common::two_loops_at_once(&generator),
        ],
    );
    let [one, threads, processes, one_loop, two_loops] =
        [0, 1, 2, 3, 4].map(|index| events / fastest[index].as_secs_f64());
    println!(
        "scaling: {} events, {} keys, 4 window features, generator source, null sink",
        args.events, args.keys
    );
    println!(
        "{:<26} {:>14} {:>12}",
        "configuration", "events/s", "vs 1 worker"
    );
    for (name, rate) in [
        ("1 process x 1 worker", one),
        ("1 process x 2 workers", threads),
        ("2 processes x 1 worker", processes),
    ] {
        println!("{name:<26} {rate:>14.0} {:>12.2}", rate / one);
    }
    println!(
        "2 processes / 2 threads: {:.2} (processes exchange rows by key over TCP; the threads of one process keep each partition's rows on the worker that reads it)",
        processes / threads
    );
    // Each of the two loops did the whole workload.
    let second_thread = two_loops / one_loop;
    println!(
        "2 loops at once, each / 1 loop alone: {second_thread:.2} (what the machine gives a second thread now); 2 workers / (1 worker x 2 x that): {:.2} (near 1: two workers lose what two loops lose)",
        threads / (one * 2.0 * second_thread)
    );
}
