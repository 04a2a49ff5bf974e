//! Parquet in and out: a Parquet source gives the same rows as the same
//! records in JSONL, and a Parquet sink holds what the JSONL sink holds.

mod common;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use std::sync::Arc;

const SPEC: &str = r#"
name = "parquet"
[source]
type = "files"
path = "unset"
format = "jsonl"
key = "user_id"
[schema]
user_id = "string"
amount = "f64"
ts = "timestamp_ms"
[time]
field = "ts"
max_out_of_orderness = "1s"
[[feature]]
name = "amount_sum_1m"
agg = "sum"
field = "amount"
window = "1m"
[[feature]]
name = "same_time_count"
key = "ts"
agg = "count"
[[sink]]
type = "jsonl"
path = "unset"
[[sink]]
type = "parquet"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;

fn records() -> (Vec<String>, Vec<Option<f64>>, Vec<i64>) {
    let users = (0..500).map(|i| format!("u{}", i % 7)).collect();
    let amounts = (0..500)
        .map(|i| {
            if i % 11 == 0 {
                None
            } else {
                Some(f64::from(i) * 0.25)
            }
        })
        .collect();
    let times = (0..500)
        .map(|i| 1_000_000 + i64::from(i) * 700 - i64::from(i % 3) * 300)
        .collect();
    (users, amounts, times)
}

fn run(
    dir: &std::path::Path,
    input: &std::path::Path,
    format: &str,
) -> (Vec<serde_json::Value>, std::path::PathBuf) {
    let out = dir.join(format!("out-{format}"));
    let overrides = vec![
        format!("source.path=\"{}\"", input.display()),
        format!("source.format=\"{format}\""),
        format!("sink[0].path=\"{}\"", out.join("jsonl").display()),
        format!("sink[1].path=\"{}\"", out.join("parquet").display()),
        format!("dead_letters.path=\"{}\"", out.join("dead").display()),
    ];
    let summary = common::run_text(SPEC, &overrides, 2).unwrap();
    assert_eq!(
        (summary.counts.records_in, summary.counts.rows_out),
        (500, 500),
        "{summary}"
    );
    (common::read_rows(&out.join("jsonl")), out.join("parquet"))
}

#[test]
fn parquet_source_and_sink_agree_with_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (users, amounts, times) = records();
    let jsonl = dir.path().join("in.jsonl");
    let lines: String = users
        .iter()
        .zip(&amounts)
        .zip(&times)
        .map(|((user, amount), ts)| {
            format!(
                "{}\n",
                serde_json::json!({"user_id": user, "amount": amount, "ts": ts})
            )
        })
        .collect();
    std::fs::write(&jsonl, lines).unwrap();
    let parquet = dir.path().join("in.parquet");
    let batch = RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(users.clone())) as _),
        ("amount", Arc::new(Float64Array::from(amounts.clone())) as _),
        ("ts", Arc::new(Int64Array::from(times.clone())) as _),
    ])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let (from_jsonl, _) = run(dir.path(), &jsonl, "jsonl");
    let (from_parquet, parquet_out) = run(dir.path(), &parquet, "parquet");
    assert_eq!(from_jsonl, from_parquet);

    let mut sums = Vec::new();
    for entry in std::fs::read_dir(parquet_out).unwrap() {
        let file = std::fs::File::open(entry.unwrap().path()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partition = batch
                .column_by_name("_offset")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            let sum = batch
                .column_by_name("amount_sum_1m")
                .unwrap()
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
            sums.extend(
                partition
                    .iter()
                    .zip(sum.iter())
                    .map(|(offset, sum)| (offset.unwrap(), sum)),
            );
        }
    }
    sums.sort_by_key(|(offset, _)| *offset);
    let expected: Vec<(i64, Option<f64>)> = from_jsonl
        .iter()
        .map(|row| {
            (
                row["_offset"].as_i64().unwrap(),
                row["amount_sum_1m"].as_f64(),
            )
        })
        .collect();
    assert_eq!(sums, expected);
}
