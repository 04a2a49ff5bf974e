//! Golden test: `dataflows/fraud.toml` on its committed sample data gives
//! the committed rows and dead letters.
//!
//! Features and fields must match exactly. Model outputs are compared to
//! 1e-6, because ONNX Runtime may pick different SIMD kernels on other CPUs
//! (bit-for-bit parity is checked within one machine by tests/parity.rs).
//! After an intended change, regenerate with
//! `TIDEFLOW_BLESS=1 cargo test --test golden` and review the diff.

mod common;

use std::path::Path;

const MODEL_COLUMNS: [&str; 2] = ["fraud_probability", "fraud_label"];

fn compare(actual: &[serde_json::Value], golden_file: &Path) {
    if std::env::var_os("TIDEFLOW_BLESS").is_some() {
        let text: String = actual.iter().map(|row| format!("{row}\n")).collect();
        std::fs::write(golden_file, text).unwrap();
    }
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(golden_file)
        .unwrap_or_else(|error| panic!("{}: {error}", golden_file.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        actual.len(),
        expected.len(),
        "row count differs from {}",
        golden_file.display()
    );
    for (actual, expected) in actual.iter().zip(&expected) {
        let (actual, expected) = (actual.as_object().unwrap(), expected.as_object().unwrap());
        let keys: Vec<_> = actual.keys().collect();
        assert_eq!(keys, expected.keys().collect::<Vec<_>>(), "columns differ");
        for (column, value) in actual {
            let golden = &expected[column];
            if MODEL_COLUMNS.contains(&column.as_str()) {
                let (a, b) = (value.as_f64().unwrap(), golden.as_f64().unwrap());
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{column} at {:?}/{:?}: {a} vs golden {b}",
                    actual["_partition"],
                    actual["_offset"]
                );
            } else {
                assert_eq!(
                    value, golden,
                    "{column} at {:?}/{:?}",
                    actual["_partition"], actual["_offset"]
                );
            }
        }
    }
}

#[test]
fn fraud_dataflow_matches_its_golden_output() {
    common::require_onnxruntime();
    let root = common::root();
    let out = tempfile::tempdir().unwrap();
    let summary = common::run_fraud("fraud_mlp", out.path(), 2).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    assert_eq!(
        (
            summary.counts.records_in,
            summary.counts.dead,
            summary.counts.late
        ),
        (2004, 3, 1),
        "{summary}"
    );
    compare(
        &common::read_rows(&out.path().join("rows")),
        &root.join("tests/golden/fraud_rows.jsonl"),
    );
    compare(
        &common::read_rows(&out.path().join("dead")),
        &root.join("tests/golden/fraud_dead.jsonl"),
    );
}
