//! The real ONNX Runtime: both example models load and score, and a model
//! whose inputs do not match the spec is rejected, by `check` and by `run`,
//! with a message saying what to change.

mod common;

use std::process::Command;

fn tideflow(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tideflow"))
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn both_models_load_and_score() {
    common::require_onnxruntime();
    for model in ["fraud_mlp", "fraud_gbt"] {
        let out = tempfile::tempdir().unwrap();
        let summary = common::run_fraud(model, out.path(), 1).unwrap();
        assert!(
            summary
                .model
                .as_deref()
                .unwrap()
                .contains("rows scored independently"),
            "{summary}"
        );
        let rows = common::read_rows(&out.path().join("rows"));
        assert_eq!(rows.len(), 2000);
        for row in &rows {
            let probability = row["fraud_probability"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&probability), "{model}: {row}");
            let label = row["fraud_label"].as_i64().unwrap();
            assert_eq!(
                label,
                i64::from(probability > 0.5),
                "{model}: label and probability disagree: {row}"
            );
            assert!(
                row["_model"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{model}:v1@"))
            );
        }
        let flagged = rows.iter().filter(|row| row["fraud_label"] == 1).count();
        assert!(flagged < rows.len(), "{model} flags every row");
    }
}

#[test]
fn inspect_lists_the_models_inputs_and_outputs() {
    common::require_onnxruntime();
    let (ok, stdout, stderr) = tideflow(&["inspect", "models/fraud_gbt.onnx"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("features: Float32[?, 8]"), "{stdout}");
    assert!(stdout.contains("probabilities: Float32[?, 2]"), "{stdout}");
}

#[test]
fn a_model_that_does_not_fit_the_spec_is_rejected_by_check_and_run() {
    common::require_onnxruntime();
    let fewer_inputs = "model.inputs=[\"log_amount\", \"amount_ratio\", \"tx_count_1h\"]";
    let (ok, stdout, _) = tideflow(&["check", "dataflows/fraud.toml"]);
    assert!(
        ok && stdout.contains("ok"),
        "the shipped spec checks: {stdout}"
    );
    for command in ["check", "run"] {
        let (ok, _, stderr) = tideflow(&[command, "dataflows/fraud.toml", "--set", fewer_inputs]);
        assert!(
            !ok,
            "{command} accepted a model with 8 inputs fed 3 columns"
        );
        assert!(
            stderr
                .contains("input 'features' has shape Float32[?, 8], but the spec feeds 3 columns (log_amount, amount_ratio, tx_count_1h)"),
            "{command}: {stderr}"
        );
    }
    let (ok, _, stderr) = tideflow(&[
        "check",
        "dataflows/fraud.toml",
        "--set",
        "model.outputs.fraud_probability=\"scores[1]\"",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("has no output 'scores'") && stderr.contains("probabilities"),
        "{stderr}"
    );
}

#[test]
fn device_cuda_on_the_cpu_build_is_refused_with_the_fix_and_auto_scores_on_the_cpu() {
    use ort::ep::ExecutionProvider;
    common::require_onnxruntime();
    tideflow::inference::environment().unwrap();
    assert!(
        !ort::ep::CUDA::is_available().unwrap(),
        "this test needs the CPU build of ONNX Runtime, which scripts/test.sh provides \
         (ORT_DYLIB_PATH=$(scripts/setup-onnxruntime.sh | tail -1)); \
         the CUDA build is tested by scripts/test-cuda.sh"
    );
    let out = tempfile::tempdir().unwrap();
    let error = common::run_fraud_with("fraud_mlp", out.path(), 1, &["model.device=\"cuda\""])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("device cuda:0 is unavailable")
            && error.contains("scripts/setup-onnxruntime.sh --gpu"),
        "{error}"
    );
    let summary =
        common::run_fraud_with("fraud_mlp", out.path(), 1, &["model.device=\"auto\""]).unwrap();
    assert!(
        summary.model.as_deref().unwrap().contains(" on cpu "),
        "{summary}"
    );
}

#[test]
fn runs_of_a_fixed_size_score_every_row_as_one_run_per_batch_does() {
    common::require_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let per_batch = dir.path().join("per-batch");
    let fixed = dir.path().join("fixed");
    common::run_fraud_with("fraud_mlp", &per_batch, 1, &["model.run_rows=0"]).unwrap();
    // 7 rows a run: a 256-row micro-batch is 36 whole runs and a padded one.
    let summary = common::run_fraud_with("fraud_mlp", &fixed, 1, &["model.run_rows=7"]).unwrap();
    assert!(summary.counts.reconciles(), "{summary}");
    let expected = common::read_lines(&per_batch.join("rows"));
    assert_eq!(expected.len(), 2000);
    assert_eq!(expected, common::read_lines(&fixed.join("rows")));
}
