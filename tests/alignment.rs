//! Partitions read in step only when holding rows for the watermark calls
//! for it: two files whose event times advance at rates a hundred times
//! apart, a feature keyed by merchant (across partitions, so its rows wait
//! for the watermark). Read freely, the fast partition's rows pile up in
//! the event-time stage; with a budget of held rows (`time.
//! max_buffered_rows`) the fast partition waits for the slow one once the
//! budget is spent, and the most rows held stays near the budget. Every
//! way of reading gives the rows a naive oracle computes.

mod common;

use std::collections::HashMap;
use std::path::Path;

/// Records per file.
const PER_FILE: i64 = 20_000;
const START: i64 = 1_700_000_000_000;
const MERCHANTS: i64 = 7;
/// The merchant feature's window.
const WINDOW_MS: i64 = 600_000;

/// A record: its partition, offset, merchant and event time.
#[derive(Clone, Copy, Debug)]
struct Record {
    partition: u64,
    offset: u64,
    merchant: i64,
    time: i64,
}

/// File 0 advances 20 ms a record (400 s in all), file 1 2 s a record
/// (11 h): its watermark runs far ahead of file 0's. Times are distinct
/// (even in file 0, odd in file 1), so the oracle need not break ties.
fn records() -> Vec<Record> {
    let mut records = Vec::new();
    for (partition, step, odd) in [(0u64, 20, 0), (1, 2_000, 1)] {
        for offset in 0..PER_FILE {
            records.push(Record {
                partition,
                offset: offset as u64,
                merchant: (offset * 3 + partition as i64) % MERCHANTS,
                time: START + offset * step + odd,
            });
        }
    }
    records
}

fn write_files(dir: &Path, records: &[Record]) {
    std::fs::create_dir_all(dir).unwrap();
    for partition in 0..2 {
        let lines: String = records
            .iter()
            .filter(|record| record.partition == partition)
            .map(|record| {
                format!(
                    "{{\"user_id\":\"u{}-{}\",\"merchant_id\":\"m{}\",\"amount\":1.5,\"ts\":{}}}\n",
                    record.partition,
                    record.offset % 50,
                    record.merchant,
                    record.time
                )
            })
            .collect();
        std::fs::write(dir.join(format!("part-{partition}.jsonl")), lines).unwrap();
    }
}

/// Per (partition, offset), the merchant's records in the window ending at
/// the record, itself included: counted from each merchant's sorted times.
fn oracle(records: &[Record]) -> HashMap<(u64, u64), i64> {
    let mut times: HashMap<i64, Vec<i64>> = HashMap::new();
    for record in records {
        times.entry(record.merchant).or_default().push(record.time);
    }
    for list in times.values_mut() {
        list.sort_unstable();
    }
    records
        .iter()
        .map(|record| {
            let list = &times[&record.merchant];
            let through = list.partition_point(|time| *time <= record.time);
            let before = list.partition_point(|time| *time <= record.time - WINDOW_MS);
            ((record.partition, record.offset), (through - before) as i64)
        })
        .collect()
}

const SPEC: &str = r#"
name = "alignment"
[source]
type = "files"
path = "unset"
format = "jsonl"
key = "user_id"
[schema]
user_id = "string"
merchant_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
[[feature]]
name = "merchant_count_10m"
key = "merchant_id"
agg = "count"
window = "10m"
[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

/// Runs the spec over `input` with `buffered` as `max_buffered_rows`
/// (none: the default), returning the most rows held and the rows.
fn run(
    input: &Path,
    out: &Path,
    workers: usize,
    buffered: Option<u64>,
) -> (u64, Vec<serde_json::Value>) {
    let mut overrides = vec![format!("source.path=\"{}\"", input.display())];
    overrides.extend(common::output_overrides(out));
    if let Some(rows) = buffered {
        overrides.push(format!("time.max_buffered_rows={rows}"));
    }
    let summary =
        common::run_text(SPEC, &overrides, workers).unwrap_or_else(|error| panic!("{error}"));
    assert!(summary.counts.reconciles(), "{summary}");
    assert_eq!(summary.counts.rows_out, 2 * PER_FILE as u64, "{summary}");
    (
        summary.counts.most_held,
        common::read_rows(&out.join("rows")),
    )
}

fn assert_oracle(rows: &[serde_json::Value], expected: &HashMap<(u64, u64), i64>, what: &str) {
    assert_eq!(rows.len(), expected.len(), "{what}");
    for row in rows {
        let at = (
            row["_partition"].as_u64().unwrap(),
            row["_offset"].as_u64().unwrap(),
        );
        assert_eq!(
            row["merchant_count_10m"].as_i64(),
            Some(expected[&at]),
            "{what}: the row at {at:?}"
        );
    }
}

#[test]
fn reading_ahead_is_bounded_by_the_held_rows_budget_and_changes_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let records = records();
    write_files(&dir.path().join("in"), &records);
    let expected = oracle(&records);
    for workers in [1, 2] {
        // What reading may add past the bound: a few polls (1024 records)
        // per worker, since a source sees where the others are a round or
        // two late.
        let slack = 4 * 1024 * workers as u64;
        let run_with = |name: &str, buffered: Option<u64>| {
            let out = dir.path().join(format!("{name}-{workers}"));
            let (most_held, rows) = run(&dir.path().join("in"), &out, workers, buffered);
            assert_oracle(&rows, &expected, &format!("{name}, {workers} workers"));
            most_held
        };
        // The default budget is far above these files: the fast file is
        // read freely, and most of it waits for the slow one.
        let free = run_with("free", None);
        assert!(
            free > PER_FILE as u64 / 2,
            "{workers} workers read freely, yet held at most {free} rows"
        );
        // Always in step (a budget of none): only the fast file's rows
        // within the skew (10 s, 5 of its records) and a round's slack.
        let in_step = run_with("in-step", Some(0));
        assert!(
            in_step <= slack,
            "{workers} workers read in step, yet held {in_step} rows"
        );
        // A budget between: free up to it, then in step.
        let budget = 3_000;
        let bounded = run_with("bounded", Some(budget));
        let process_budget = budget * workers as u64;
        eprintln!(
            "{workers} workers: most rows held {free} free, {in_step} in step, {bounded} with a budget of {budget}"
        );
        assert!(
            bounded <= process_budget + slack,
            "{workers} workers held {bounded} rows, above {process_budget} and the slack"
        );
    }
}
