//! Decoding JSON records: the engine's decoder (records' bytes → typed
//! columns of a batch, dead letters told apart) against three parsers
//! reading the same records into a plain typed struct, which is the most
//! any decoder built on them could do: serde_json, sonic-rs and simd-json (each as the crate
//! builds by default, for the CPU the binary targets rather than the one
//! it runs on, as a released binary is built). Prints records/s and the
//! engine's ratio to the fastest of them, all measured in one run.
//!
//! Run: `cargo bench --bench decode -- --records 1000000`

use clap::Parser;
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;
use tideflow::batch::Batch;
use tideflow::decode::Decoder;
use tideflow::plan::Plan;
use tideflow::row::Row;
use tideflow::spec::SpecSource;
use tideflow_connectors::generator::GeneratorConfig;
use tideflow_connectors::{RawBody, RawRecord};

#[path = "common.rs"]
mod common;

#[derive(Debug, Parser)]
struct Args {
    /// Records decoded per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Rounds (each measurement once per round; the fastest is kept).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Times the engine's decoder alone (for a profiler).
    #[arg(long)]
    engine_only: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

/// One transaction as the parsers read it.
#[derive(Deserialize)]
struct Transaction<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    merchant_id: Cow<'a, str>,
    amount: f64,
    ts: i64,
}

impl Transaction<'_> {
    /// Something of every field, so that no parse is optimised away.
    fn digest(&self) -> u64 {
        (self.user_id.len() + self.merchant_id.len()) as u64
            ^ self.amount.to_bits()
            ^ self.ts as u64
    }
}

const SPEC: &str = r#"
name = "decode_bench"
[source]
type = "files"
path = "unused/"
format = "jsonl"
[schema]
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[sink]]
type = "null"
[dead_letters]
type = "null"
"#;

/// The generator's transactions as JSON lines, as the file connector reads
/// them.
fn lines(records: u64) -> Vec<Vec<u8>> {
    let config = GeneratorConfig {
        users: 100_000,
        merchants: 500,
        count: Some(records),
        partitions: 1,
        ..Default::default()
    };
    (0..records)
        .map(|offset| {
            let (user, merchant, amount, time) = config.record(0, offset);
            format!(r#"{{"user_id":"u{user}","merchant_id":"m{merchant}","amount":{amount},"ts":{time}}}"#)
                .into_bytes()
        })
        .collect()
}

fn decoder() -> Decoder {
    let source = SpecSource {
        file: "decode.toml".into(),
        text: SPEC.to_owned(),
        overrides: Vec::new(),
    };
    let spec = source.parse().unwrap_or_else(|error| panic!("{error}"));
    let plan = Plan::from_spec(&spec, &source).unwrap_or_else(|error| panic!("{error}"));
    Decoder::new(&plan)
}

fn main() {
    common::allocate_as_the_binary_does();
    let args = Args::parse();
    let lines = lines(args.records);
    let decoder = decoder();
    let (mut json_digest, mut sonic_digest, mut simd_digest) = (0u64, 0u64, 0u64);
    let mut rows = 0u64;
    let mut engine = || {
        // The records a reader hands over, made outside the timing: the
        // decoder takes their bytes as the reader allocated them.
        let mut records: Vec<RawRecord> = lines
            .iter()
            .enumerate()
            .map(|(offset, line)| RawRecord {
                partition: 0,
                offset: offset as u64,
                timestamp_ms: None,
                key: None,
                headers: Vec::new(),
                body: RawBody::Bytes(line.clone()),
            })
            .collect();
        // As the source decodes: a record of the common shape scanned
        // straight into the columns of a batch, any other through values.
        let started = std::time::Instant::now();
        let mut batch = Batch::with_fields(&decoder.field_types(), records.len());
        let (mut scanned, mut fields) = (Vec::new(), Vec::new());
        for record in &mut records {
            let (partition, offset) = (record.partition, record.offset);
            let origin = |time| Row {
                partition,
                offset,
                time,
                ..Row::default()
            };
            if let RawBody::Bytes(bytes) = &record.body
                && let Some((time, text)) = decoder.scan_flat(bytes, &mut scanned)
            {
                rows += u64::from(time > 0);
                batch.push_cells(origin(time), scanned.iter().map(|cell| cell.cell(text)));
                continue;
            }
            let time = decoder
                .decode_fields(record, &mut fields)
                .expect("a valid record");
            rows += u64::from(time > 0);
            batch.push_fields(origin(time), &mut fields);
        }
        let elapsed = started.elapsed();
        drop((records, batch));
        elapsed
    };
    let mut serde_json = || {
        let started = std::time::Instant::now();
        for line in &lines {
            let parsed: Transaction = serde_json::from_slice(line).expect("valid JSON");
            json_digest ^= parsed.digest();
        }
        started.elapsed()
    };
    let mut sonic = || {
        let started = std::time::Instant::now();
        for line in &lines {
            let parsed: Transaction = sonic_rs::from_slice(line).expect("valid JSON");
            sonic_digest ^= parsed.digest();
        }
        started.elapsed()
    };
    let mut simd = || {
        // simd-json parses in place: each record is copied into a buffer
        // it may overwrite, as a decoder keeping the record would have to.
        let mut buffer = Vec::new();
        let started = std::time::Instant::now();
        for line in &lines {
            buffer.clear();
            buffer.extend_from_slice(line);
            let parsed: Transaction =
                simd_json::serde::from_slice(&mut buffer).expect("valid JSON");
            simd_digest ^= parsed.digest();
        }
        started.elapsed()
    };
    if args.engine_only {
        let elapsed = common::fastest_interleaved(args.rounds, &mut [&mut engine])[0];
        println!(
            "engine decoder {:.0} records/s",
            args.records as f64 / elapsed.as_secs_f64()
        );
        return;
    }
    let fastest: Vec<Duration> = common::fastest_interleaved(
        args.rounds,
        &mut [&mut engine, &mut serde_json, &mut sonic, &mut simd],
    );
    assert_eq!(rows, args.records * args.rounds as u64);
    assert!(json_digest == sonic_digest && sonic_digest == simd_digest);
    let rate = |elapsed: Duration| args.records as f64 / elapsed.as_secs_f64();
    let names = ["serde_json", "sonic-rs", "simd-json"];
    println!(
        "decode: {} records, best of {} rounds",
        args.records, args.rounds
    );
    println!(
        "  engine decoder (columns)     {:>12.0} records/s",
        rate(fastest[0])
    );
    for (name, elapsed) in names.iter().zip(&fastest[1..]) {
        println!(
            "  {name:<10} typed struct      {:>12.0} records/s",
            rate(*elapsed)
        );
    }
    let (best_name, best) = names
        .iter()
        .zip(&fastest[1..])
        .min_by_key(|(_, elapsed)| **elapsed)
        .expect("three parsers");
    println!(
        "  engine / fastest parser ({best_name}): {:.2}",
        best.as_secs_f64() / fastest[0].as_secs_f64()
    );
}
