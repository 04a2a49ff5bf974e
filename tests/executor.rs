//! The shared inference executor: one session per process scoring the
//! batches of all its workers together gives every row the scores a
//! session per worker gives it, on any number of workers, with micro and
//! bulk batches; a batch that fails together is scored again alone, so
//! one worker's bad batch does not take another's rows with it.

mod common;

use std::io::Write;

/// Runs the example fraud spec with the MLP under `executor` (`per_worker`
/// or `shared`); its rows as canonical lines and the summary's model line.
fn fraud_rows(executor: &str, workers: usize, batching: &[&str]) -> (Vec<String>, String) {
    let out = tempfile::tempdir().unwrap();
    let mut extra = vec![format!("model.executor.mode=\"{executor}\"")];
    extra.extend(batching.iter().map(|set| set.to_string()));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let summary = common::run_fraud_with("fraud_mlp", out.path(), workers, &extra).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    (
        common::read_lines(&out.path().join("rows")),
        summary.model.clone().unwrap_or_default(),
    )
}

#[test]
fn a_shared_executor_scores_every_row_as_sessions_per_worker_do() {
    common::require_onnxruntime();
    let micro = [
        "batching.policy=\"micro\"",
        "batching.micro={ max_rows = 16, max_delay = \"1ms\" }",
    ];
    let bulk = ["batching.policy=\"bulk\""];
    let (expected, per_worker) = fraud_rows("per_worker", 1, &bulk);
    assert!(!per_worker.contains("shared"), "{per_worker}");
    assert!(expected.len() > 1000, "{} rows", expected.len());
    for workers in [1, 2, 4] {
        for batching in [&micro[..], &bulk[..]] {
            let (rows, model) = fraud_rows("shared", workers, batching);
            assert!(
                model.contains("one executor shared by the process's workers"),
                "{model}"
            );
            assert!(
                rows == expected,
                "{workers} workers, {batching:?}: the shared executor's rows differ"
            );
        }
    }
}

/// 40 records in each of two files (partitions), amounts 0.5 to 9.5 but
/// for the records of partition 0 at `bad` offsets, which hold 12.0: the
/// table model (models/table_lookup.onnx) fails a run on those.
fn two_partitions(dir: &std::path::Path, bad: &[u64]) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    for partition in 0..2u64 {
        let mut file = std::fs::File::create(input.join(format!("p{partition}.jsonl"))).unwrap();
        for offset in 0..40u64 {
            let amount = if partition == 0 && bad.contains(&offset) {
                12.0
            } else {
                (offset % 10) as f64 + 0.5
            };
            writeln!(
                file,
                r#"{{"user_id":"u{partition}-{}","amount":{amount},"ts":{}}}"#,
                offset % 3,
                1000 + offset
            )
            .unwrap();
        }
    }
    input
}

#[test]
fn a_batch_that_fails_together_is_scored_again_alone() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let input = two_partitions(dir.path(), &[5]);
    let spec = r#"
name = "executor_failures"
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
[model]
path = "unset"
inputs = ["amount"]
[model.outputs]
score = "score[0]"
# Batches wait for each other's worker (up to 200 ms), so that they meet.
[model.executor]
mode = "shared"
max_delay = "200ms"
[batching]
policy = "bulk"
bulk = { max_rows = 4, max_delay = "10s" }
[[sink]]
type = "jsonl"
path = "unset"
[dead_letters]
type = "jsonl"
path = "unset"
"#;
    let mut overrides = vec![
        format!("source.path=\"{}\"", input.display()),
        format!(
            "model.path=\"{}\"",
            common::root().join("models/table_lookup.onnx").display()
        ),
    ];
    overrides.extend(common::output_overrides(dir.path()));
    let summary = common::run_text(spec, &overrides, 2).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    assert!(
        summary.model.as_deref().unwrap().contains("shared"),
        "{summary}"
    );
    let dead = common::read_rows(&dir.path().join("dead"));
    let rows = common::read_rows(&dir.path().join("rows"));
    assert_eq!(rows.len() + dead.len(), 80);
    // The bad record's batch of four fails; partition 1's rows, every one
    // good, are all scored, whichever batches of partition 0 they met.
    assert!(!dead.is_empty() && dead.len() <= 4, "{dead:?}");
    for letter in &dead {
        assert_eq!(letter["_partition"], 0, "{letter}");
        let error = letter["_error"].as_str().unwrap();
        assert!(error.contains("out of data bounds"), "{letter}");
    }
    assert!(dead.iter().any(|letter| letter["_offset"] == 5));
    for row in &rows {
        let amount = row["amount"].as_f64().unwrap();
        let expected = f64::from((amount.trunc() / 10.0) as f32);
        assert_eq!(row["score"].as_f64().unwrap(), expected, "{row}");
    }
}
