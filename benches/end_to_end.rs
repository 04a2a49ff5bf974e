//! End to end: JSONL files → decode → user and merchant features →
//! expressions → fraud MLP → Parquet, on 2 workers; reported as events/s and
//! as a ratio to a single loop that only reads and parses the same JSONL
//! files (the floor any JSONL pipeline pays), measured in the same run.
//!
//! Run: `cargo bench --bench end_to_end -- --events 1000000`

use clap::Parser;
use std::io::{BufRead, Write};
use tideflow_connectors::generator::GeneratorConfig;

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Events in the input files.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

fn write_input(dir: &std::path::Path, events: u64) {
    let config = GeneratorConfig {
        users: 20_000,
        merchants: 500,
        count: Some(events),
        partitions: 4,
        spacing_ms: 20.0,
        ..Default::default()
    };
    for partition in 0..config.partitions {
        let file =
            std::fs::File::create(dir.join(format!("part-{partition}.jsonl"))).expect("input file");
        let mut out = std::io::BufWriter::new(file);
        for offset in 0..config.partition_count(partition).unwrap_or(0) {
            let (user, merchant, amount, time) = config.record(partition, offset);
            writeln!(out, r#"{{"user_id":"u{user}","merchant_id":"m{merchant}","amount":{amount},"ts":{time}}}"#).expect("write");
        }
    }
}

fn parse_only(dir: &std::path::Path) -> u64 {
    let mut parsed = 0;
    for entry in std::fs::read_dir(dir).expect("input dir") {
        let reader = std::io::BufReader::new(
            std::fs::File::open(entry.expect("entry").path()).expect("open"),
        );
        for line in reader.lines() {
            let value: serde_json::Value =
                serde_json::from_str(&line.expect("line")).expect("json");
            parsed += u64::from(value.is_object());
        }
    }
    parsed
}

fn main() {
    common::require_onnxruntime();
    let args = Args::parse();
    let root = common::root();
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("input dir");
    write_input(&input, args.events);
    let (_, parse_time) = common::best_of(1, || parse_only(&input));
    let spec = std::fs::read_to_string(root.join("dataflows/fraud.toml")).expect("fraud.toml");
    let overrides = vec![
        format!("source.path=\"{}\"", input.display()),
        format!(
            "model.path=\"{}\"",
            root.join("models/fraud_mlp.onnx").display()
        ),
        "sink[0].type=\"parquet\"".to_owned(),
        format!("sink[0].path=\"{}\"", dir.path().join("out").display()),
        format!(
            "dead_letters.path=\"{}\"",
            dir.path().join("dead").display()
        ),
        "batching.policy=\"bulk\"".to_owned(),
    ];
    let (summary, elapsed) = common::run_spec(&spec, &overrides, args.workers);
    let rate = args.events as f64 / elapsed.as_secs_f64();
    let parse_rate = args.events as f64 / parse_time.as_secs_f64();
    println!(
        "end to end: {} events, JSONL -> 8 features + 3 expressions -> fraud MLP -> Parquet, {} workers",
        args.events, args.workers
    );
    println!(
        "  engine: {rate:.0} events/s ({} rows out, {} dead, {} late)",
        summary.counts.rows_out, summary.counts.dead, summary.counts.late
    );
    println!(
        "  read+parse-only loop (1 thread): {parse_rate:.0} events/s; engine / loop = {:.2}",
        rate / parse_rate
    );
}
